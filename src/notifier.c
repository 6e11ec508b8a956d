/* SPDX-License-Identifier: MIT */
/*
 * Interval notifiers with the kernel's sequence protocol
 * (mm/mmu_notifier.c: mn_itree_*, mmu_interval_*). The runtime sequence is
 * even when idle and odd while an invalidation that hit a notifier runs; a
 * notifier's own sequence is always odd. The notifier array only changes
 * while the sequence is even: inserts and removes that arrive during an
 * invalidation are deferred to its end, so invalidations walk the array
 * without holding the lock while they call back.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "notifier.h"

static bool is_invalidating(const struct uhmm_rt *rt)
{
	return rt->invalidate_seq & 1;
}

bool uhmm__sub_valid(const struct uhmm_interval_notifier *sub,
		     struct uhmm_rt *rt)
{
	return sub && rt && sub->rt == rt;
}

/* Index of the first notifier with start >= @start. */
static size_t subs_lower(const struct uhmm_rt *rt, unsigned long start)
{
	size_t lo = 0, hi = rt->nsubs;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (rt->subs[mid]->start < start)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int subs_add(struct uhmm_rt *rt, struct uhmm_interval_notifier *sub)
{
	size_t i;

	if (rt->nsubs == rt->subs_cap) {
		size_t cap = rt->subs_cap ? rt->subs_cap * 2 : 16;
		void *p = uhmm_realloc(rt->subs, cap * sizeof(*rt->subs));

		if (!p)
			return -ENOMEM;
		rt->subs = p;
		rt->subs_cap = cap;
	}
	i = subs_lower(rt, sub->start);
	memmove(&rt->subs[i + 1], &rt->subs[i],
		(rt->nsubs - i) * sizeof(*rt->subs));
	rt->subs[i] = sub;
	rt->nsubs++;
	sub->in_tree = true;
	return 0;
}

static void subs_del(struct uhmm_rt *rt, struct uhmm_interval_notifier *sub)
{
	for (size_t i = subs_lower(rt, sub->start); i < rt->nsubs; i++) {
		if (rt->subs[i] == sub) {
			memmove(&rt->subs[i], &rt->subs[i + 1],
				(rt->nsubs - i - 1) * sizeof(*rt->subs));
			rt->nsubs--;
			sub->in_tree = false;
			return;
		}
	}
}

/* The deferred list is threaded through the notifiers: no allocation. */
static void deferred_push(struct uhmm_rt *rt, struct uhmm_interval_notifier *sub)
{
	sub->dnext = rt->deferred;
	rt->deferred = sub;
}

static void deferred_drop(struct uhmm_rt *rt, struct uhmm_interval_notifier *sub)
{
	for (struct uhmm_interval_notifier **pp = &rt->deferred; *pp;
	     pp = &(*pp)->dnext) {
		if (*pp == sub) {
			*pp = sub->dnext;
			return;
		}
	}
}

static bool overlaps_any(const struct uhmm_rt *rt, unsigned long start,
			 unsigned long end)
{
	for (size_t i = 0; i < rt->nsubs && rt->subs[i]->start < end; i++)
		if (rt->subs[i]->end > start)
			return true;
	return false;
}

/*
 * Start an invalidation of @r and run the callbacks of the notifiers it
 * hits. Returns with the invalidation open: uhmm__inv_end() closes it.
 */
bool uhmm__inv_begin(struct uhmm_rt *rt, const struct uhmm_notifier_range *r)
{
	unsigned long seq;
	bool hit;

	pthread_mutex_lock(&rt->lock);
	rt->active++;
	hit = overlaps_any(rt, r->start, r->end);
	if (hit)
		rt->invalidate_seq |= 1;
	seq = rt->invalidate_seq;
	pthread_mutex_unlock(&rt->lock);
	if (!hit)
		return false;
	uhmm__stat_invalidate(r);

	/* The array is frozen while the sequence is odd. */
	for (size_t i = 0; i < rt->nsubs && rt->subs[i]->start < r->end; i++) {
		struct uhmm_interval_notifier *sub = rt->subs[i];

		if (sub->end <= r->start)
			continue;
		sub->ops->invalidate(sub, r, seq);
	}
	return true;
}

void uhmm__inv_end(struct uhmm_rt *rt)
{
	pthread_mutex_lock(&rt->lock);
	if (--rt->active || !is_invalidating(rt)) {
		pthread_mutex_unlock(&rt->lock);
		return;
	}
	rt->invalidate_seq++;
	/* Apply the inserts and removes that waited for the end; nothing
	 * walks the array now, so it may grow. An add that finds no memory
	 * stays deferred until the next end. */
	struct uhmm_interval_notifier *sub = rt->deferred, *keep = NULL;

	rt->deferred = NULL;
	while (sub) {
		struct uhmm_interval_notifier *next = sub->dnext;

		if (sub->deferred_remove) {
			subs_del(rt, sub);
			sub->deferred_remove = false;
		} else if (sub->deferred_add) {
			if (subs_add(rt, sub) == 0) {
				sub->deferred_add = false;
			} else {
				sub->dnext = keep;
				keep = sub;
			}
		}
		sub = next;
	}
	rt->deferred = keep;
	pthread_cond_broadcast(&rt->wq);
	pthread_mutex_unlock(&rt->lock);
}

void uhmm__invalidate(struct uhmm_rt *rt, unsigned long start,
		      unsigned long end, enum uhmm_notifier_event event,
		      const void *owner)
{
	struct uhmm_notifier_range r = {
		.start = start, .end = end, .event = event,
		.flags = UHMM_NOTIFIER_RANGE_BLOCKABLE, .owner = owner,
	};

	if (start >= end)
		return;
	uhmm__inv_begin(rt, &r);
	uhmm__inv_end(rt);
}

int uhmm_interval_notifier_insert(struct uhmm_interval_notifier **out,
				  unsigned long start, unsigned long length,
				  const struct uhmm_interval_notifier_ops *ops,
				  void *priv)
{
	struct uhmm_interval_notifier *sub;
	struct uhmm_rt *rt;
	unsigned long end;
	int err = 0;

	if (!out || !ops || !ops->invalidate || !length ||
	    __builtin_add_overflow(start, length, &end))
		return -EINVAL;
	rt = uhmm__rt_get(&err);
	if (!rt)
		return err;
	if (!uhmm__aligned(rt, start) || !uhmm__aligned(rt, length))
		return -EINVAL;
	sub = uhmm_calloc(1, sizeof(*sub));
	if (!sub)
		return -ENOMEM;
	sub->start = start;
	sub->end = end;
	sub->ops = ops;
	sub->priv = priv;
	sub->rt = rt;

	pthread_mutex_lock(&rt->lock);
	if (rt->active) {
		if (is_invalidating(rt)) {
			deferred_push(rt, sub);
			sub->deferred_add = true;
		} else {
			rt->invalidate_seq |= 1;
			err = subs_add(rt, sub);
			if (err)
				goto out_unlock;
		}
		atomic_store(&sub->invalidate_seq, rt->invalidate_seq);
	} else {
		atomic_store(&sub->invalidate_seq, rt->invalidate_seq - 1);
		err = subs_add(rt, sub);
		if (err)
			goto out_unlock;
	}
	pthread_mutex_unlock(&rt->lock);
	*out = sub;
	return 0;

out_unlock:
	pthread_mutex_unlock(&rt->lock);
	uhmm_free(sub);
	return err;
}

int uhmm_interval_notifier_remove(struct uhmm_interval_notifier *sub)
{
	struct uhmm_rt *rt = uhmm__rt_peek();

	if (!uhmm__sub_valid(sub, rt))
		return -EINVAL;
	pthread_mutex_lock(&rt->lock);
	if (sub->deferred_add) {
		deferred_drop(rt, sub);
	} else if (is_invalidating(rt)) {
		unsigned long seq = rt->invalidate_seq;

		if (!sub->deferred_remove) {
			deferred_push(rt, sub);
			sub->deferred_remove = true;
		}
		/* Wait for the running invalidation(s) to end; their end
		 * takes the notifier out of the array. */
		while (rt->invalidate_seq == seq)
			pthread_cond_wait(&rt->wq, &rt->lock);
	} else {
		subs_del(rt, sub);
	}
	pthread_mutex_unlock(&rt->lock);
	sub->rt = NULL;
	uhmm_free(sub);
	return 0;
}

void *uhmm_interval_notifier_priv(const struct uhmm_interval_notifier *sub)
{
	return sub ? sub->priv : NULL;
}

unsigned long uhmm_interval_notifier_start(const struct uhmm_interval_notifier *sub)
{
	return sub ? sub->start : 0;
}

unsigned long uhmm_interval_notifier_end(const struct uhmm_interval_notifier *sub)
{
	return sub ? sub->end : 0;
}

unsigned long uhmm_interval_notifier_seq(const struct uhmm_interval_notifier *sub)
{
	return sub ? atomic_load_explicit(&sub->invalidate_seq,
					  memory_order_relaxed) : 0;
}

unsigned long uhmm_interval_read_begin(struct uhmm_interval_notifier *sub)
{
	struct uhmm_rt *rt = sub ? sub->rt : NULL;
	unsigned long seq;

	/* 0 is even: never a valid sequence, so read_retry() says retry.
	 * A notifier of another runtime (the parent's, after fork) is not
	 * touched: its locks may be held by threads that are not here. */
	if (!rt || !uhmm__sub_valid(sub, uhmm__rt_peek()))
		return 0;

	pthread_mutex_lock(&rt->lock);
	seq = atomic_load(&sub->invalidate_seq);
	/* Equal to the runtime's odd sequence: an invalidation of this
	 * notifier is running; wait for it to end. */
	while (seq == rt->invalidate_seq)
		pthread_cond_wait(&rt->wq, &rt->lock);
	pthread_mutex_unlock(&rt->lock);
	return seq;
}

bool uhmm_interval_read_retry(struct uhmm_interval_notifier *sub,
			      unsigned long seq)
{
	bool retry = !sub || atomic_load(&sub->invalidate_seq) != seq ||
		     !uhmm__sub_valid(sub, uhmm__rt_peek());

	if (retry)
		uhmm__stat_inc(UHMM__STAT_read_retries);
	return retry;
}

bool uhmm_interval_check_retry(struct uhmm_interval_notifier *sub,
			       unsigned long seq)
{
	bool retry = !sub || atomic_load_explicit(&sub->invalidate_seq,
						  memory_order_relaxed) != seq;

	if (retry)
		uhmm__stat_inc(UHMM__STAT_check_retries);
	return retry;
}

void uhmm_interval_set_seq(struct uhmm_interval_notifier *sub,
			   unsigned long cur_seq)
{
	if (sub)
		atomic_store(&sub->invalidate_seq, cur_seq);
}

/* Teardown: RELEASE to every notifier (kernel: mn_itree_release), then free. */
void uhmm__release_all(struct uhmm_rt *rt)
{
	struct uhmm_notifier_range r = {
		.start = 0, .end = ULONG_MAX, .event = UHMM_NOTIFY_RELEASE,
		.flags = UHMM_NOTIFIER_RANGE_BLOCKABLE,
	};

	pthread_mutex_lock(&rt->lock);
	/* Deferred adds become real: they get RELEASE too. */
	for (struct uhmm_interval_notifier *sub = rt->deferred; sub;
	     sub = sub->dnext)
		if (sub->deferred_add && subs_add(rt, sub) == 0)
			sub->deferred_add = false;
	rt->deferred = NULL;
	pthread_mutex_unlock(&rt->lock);

	uhmm__inv_begin(rt, &r);
	uhmm__inv_end(rt);
	for (size_t i = 0; i < rt->nsubs; i++) {
		rt->subs[i]->rt = NULL;
		uhmm_free(rt->subs[i]);
	}
	rt->nsubs = 0;
}

int uhmm__notifier_init(struct uhmm_rt *rt)
{
	rt->invalidate_seq = 2;	/* even: idle */
	pthread_mutex_init(&rt->lock, NULL);
	pthread_cond_init(&rt->wq, NULL);
	return 0;
}

void uhmm__notifier_destroy(struct uhmm_rt *rt)
{
	pthread_mutex_destroy(&rt->lock);
	pthread_cond_destroy(&rt->wq);
	uhmm_free(rt->subs);
	rt->subs = NULL;
	rt->nsubs = rt->subs_cap = 0;
}
