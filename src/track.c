/* SPDX-License-Identifier: MIT */
/*
 * What the runtime knows of the address space: the ranges registered on
 * its userfaultfd (so munmap/mremap/madvise raise events), and the access
 * range_fault granted (so changes no event reports, mprotect above all,
 * can be found by comparing with the current mappings). Turns uffd events
 * and such differences into invalidations.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "mirror.h"

/* ---- tracking what range_fault reports ---- */

static unsigned int vma_prot(const struct os_procmap_query *q)
{
	unsigned int p = 0;

	if (q->vma_flags & OS_PROCMAP_QUERY_VMA_READABLE)
		p |= TRACK_R;
	if (q->vma_flags & OS_PROCMAP_QUERY_VMA_WRITABLE)
		p |= TRACK_W;
	if (q->vma_flags & OS_PROCMAP_QUERY_VMA_SHARED)
		p |= TRACK_SHARED;
	return p;
}

/* A small stamp of a VMA's identity, for the cannot-register cache. */
static unsigned int vma_stamp(const struct os_procmap_query *q)
{
	uint64_t h = q->inode * 0x9E3779B97F4A7C15ull ^ q->vma_offset ^
		     ((uint64_t)q->dev_major << 40) ^ q->dev_minor ^
		     (q->vma_flags << 56);

	return (unsigned int)(h ^ (h >> 32)) | 1u;
}

struct change {
	unsigned long start, end;
	enum uhmm_notifier_event event;
};

#define NCHANGES 32

static void fire(struct uhmm_rt *rt, const struct change *c, size_t n)
{
	for (size_t i = 0; i < n; i++)
		uhmm__invalidate(rt, c[i].start, c[i].end, c[i].event, NULL);
}

/*
 * range_fault is about to report pages of the readable VMA @q in
 * [start, end): make sure changes to it raise events (register the whole
 * VMA, so no split) and record the access granted. Access that was
 * granted before and is gone now is invalidated here.
 */
int uhmm__track_vma(struct uhmm_rt *rt, const struct os_procmap_query *q,
		    unsigned long start, unsigned long end)
{
	unsigned long vs = q->vma_start, ve = q->vma_end;
	unsigned int prot = vma_prot(q);
	struct change c[NCHANGES];
	size_t n = 0;
	int r = 0;

	pthread_mutex_lock(&rt->tlock);
	if (rt->uffd >= 0 && !uhmm__ivset_covers(&rt->regs, vs, ve) &&
	    !(uhmm__ivset_covers(&rt->noreg, vs, ve) &&
	      uhmm__ivset_value_at(&rt->noreg, vs) == vma_stamp(q))) {
		r = uhmm__rt_start_threads(rt);
		if (r == 0)
			r = uhmm__os_uffd_register(rt->uffd, vs, ve - vs,
					     UFFDIO_REGISTER_MODE_WP, NULL);
		if (r == 0)
			uhmm__ivset_set(&rt->regs, vs, ve, 1);
		else
			uhmm__ivset_set(&rt->noreg, vs, ve, vma_stamp(q));
		r = 0;
	}
	/* Write access granted before and gone now (mprotect). */
	if (!(prot & TRACK_W)) {
		for (size_t i = uhmm__ivset_first(&rt->grants, start);
		     i < rt->grants.n && rt->grants.v[i].start < end &&
		     n < NCHANGES; i++) {
			const struct ival *g = &rt->grants.v[i];

			if (!(g->prot & TRACK_W))
				continue;
			c[n++] = (struct change){
				g->start > start ? g->start : start,
				g->end < end ? g->end : end,
				UHMM_NOTIFY_PROTECTION_VMA };
		}
	}
	if (uhmm__ivset_set(&rt->grants, start, end, prot) < 0)
		r = -ENOMEM;
	pthread_mutex_unlock(&rt->tlock);
	fire(rt, c, n);
	return r;
}

/*
 * On the reader, right after read() returned the event (with the device
 * pages, uhmm__pst_event()): what is registered follows the mapping
 * before anything that runs after the munmap or mremap returned (a
 * migration of a new mapping at the same address must register it).
 */
void uhmm__track_event_early(struct uhmm_rt *rt, const struct uffd_msg *m)
{
	unsigned long s, e, to;

	switch (m->event) {
	case UFFD_EVENT_UNMAP:
		s = m->arg.remove.start;
		e = m->arg.remove.end;
		pthread_mutex_lock(&rt->tlock);
		uhmm__ivset_set(&rt->regs, s, e, 0);
		uhmm__ivset_set(&rt->noreg, s, e, 0);
		uhmm__ivset_set(&rt->grants, s, e, 0);
		pthread_mutex_unlock(&rt->tlock);
		break;
	case UFFD_EVENT_REMAP:
		s = m->arg.remap.from;
		e = s + m->arg.remap.len;
		to = m->arg.remap.to;
		pthread_mutex_lock(&rt->tlock);
		/*
		 * The registration moves with the VMA (EVENT_REMAP on): a
		 * VMA that raised REMAP was registered, in WP mode at least
		 * (every registration includes it).
		 */
		if (uhmm__ivset_covers(&rt->regs, s, e))
			uhmm__ivset_set(&rt->regs, to, to + (e - s), 1);
		uhmm__ivset_set(&rt->regs, s, e, 0);
		uhmm__ivset_set(&rt->grants, s, e, 0);
		pthread_mutex_unlock(&rt->tlock);
		break;
	default:
		break;
	}
}

void uhmm__track_event(struct uhmm_rt *rt, const struct uffd_msg *m)
{
	unsigned long s, e;

	switch (m->event) {
	case UFFD_EVENT_UNMAP:
		s = m->arg.remove.start;
		e = m->arg.remove.end;
		uhmm__invalidate(rt, s, e, UHMM_NOTIFY_UNMAP, NULL);
		break;
	case UFFD_EVENT_REMOVE:
		uhmm__invalidate(rt, m->arg.remove.start, m->arg.remove.end,
				 UHMM_NOTIFY_CLEAR, NULL);
		break;
	case UFFD_EVENT_REMAP:
		s = m->arg.remap.from;
		e = s + m->arg.remap.len;
		uhmm__invalidate(rt, s, e, UHMM_NOTIFY_UNMAP, NULL);
		break;
	default:
		break;
	}
}

/*
 * Events were lost (the queue overflowed): forget what is registered (it
 * is registered again on use) and tell every mirror that anything may
 * have gone.
 */
void uhmm__track_overflow(struct uhmm_rt *rt)
{
	pthread_mutex_lock(&rt->tlock);
	rt->regs.n = 0;
	rt->noreg.n = 0;
	pthread_mutex_unlock(&rt->tlock);
	uhmm__invalidate(rt, 0, ULONG_MAX & ~(rt->page_size - 1),
			 UHMM_NOTIFY_UNMAP, NULL);
}

/* Compare one granted interval with the mappings; queue what was lost. */
static size_t diff_grant(struct uhmm_rt *rt, const struct ival *g,
			 unsigned long s, unsigned long e,
			 struct change *c, size_t n)
{
	unsigned long addr = s;

	while (addr < e && n < NCHANGES) {
		struct os_procmap_query q;
		unsigned long seg_end;
		unsigned int cur;
		int r = uhmm__vma_query(rt, addr, &q);

		if (r < 0 || q.vma_start >= e) {
			c[n++] = (struct change){ addr, e, UHMM_NOTIFY_UNMAP };
			break;
		}
		if (q.vma_start > addr) {
			c[n++] = (struct change){ addr, q.vma_start,
						  UHMM_NOTIFY_UNMAP };
			addr = q.vma_start;
			continue;
		}
		seg_end = q.vma_end < e ? q.vma_end : e;
		cur = vma_prot(&q);
		if (!(cur & TRACK_R) ||
		    ((g->prot & TRACK_W) && !(cur & TRACK_W)))
			c[n++] = (struct change){ addr, seg_end,
						  UHMM_NOTIFY_PROTECTION_VMA };
		addr = seg_end;
	}
	return n;
}

int uhmm__revalidate(struct uhmm_rt *rt, unsigned long start,
		     unsigned long end)
{
	struct change c[NCHANGES];
	size_t n;

	do {
		n = 0;
		pthread_mutex_lock(&rt->tlock);
		for (size_t i = uhmm__ivset_first(&rt->grants, start);
		     i < rt->grants.n && rt->grants.v[i].start < end &&
		     n < NCHANGES; i++) {
			const struct ival *g = &rt->grants.v[i];

			n = diff_grant(rt, g, g->start > start ? g->start : start,
				       g->end < end ? g->end : end, c, n);
		}
		/* Record the access that remains. */
		for (size_t i = 0; i < n; i++) {
			unsigned int keep = 0;

			if (c[i].event == UHMM_NOTIFY_PROTECTION_VMA)
				keep = uhmm__ivset_value_at(&rt->grants, c[i].start);
			/* Keep read access if the mapping is still readable. */
			if (keep) {
				struct os_procmap_query q;

				if (uhmm__vma_query(rt, c[i].start, &q) == 0 &&
				    q.vma_start <= c[i].start &&
				    (q.vma_flags & OS_PROCMAP_QUERY_VMA_READABLE))
					keep &= ~TRACK_W;
				else
					keep = 0;
			}
			uhmm__ivset_set(&rt->grants, c[i].start, c[i].end, keep);
			if (c[i].event == UHMM_NOTIFY_UNMAP) {
				uhmm__ivset_set(&rt->regs, c[i].start, c[i].end, 0);
				uhmm__ivset_set(&rt->noreg, c[i].start, c[i].end, 0);
			}
		}
		pthread_mutex_unlock(&rt->tlock);
		fire(rt, c, n);
	} while (n == NCHANGES);
	return 0;
}

int uhmm_range_revalidate(unsigned long start, unsigned long end)
{
	struct uhmm_rt *rt;
	int err = 0;

	rt = uhmm__rt_get(&err);
	if (!rt)
		return err;
	if (start >= end || !uhmm__aligned(rt, start) || !uhmm__aligned(rt, end))
		return -EINVAL;
	uhmm__sync_events(rt);
	return uhmm__revalidate(rt, start, end);
}

/* ---- fork ---- */

void uhmm__track_fork_prepare(struct uhmm_rt *rt)
{
	struct uhmm_notifier_range r = {
		.event = UHMM_NOTIFY_PROTECTION_PAGE,
		.flags = UHMM_NOTIFIER_RANGE_BLOCKABLE,
	};
	static struct ival all;
	struct ival *v = NULL;
	size_t n = 0;

	pthread_mutex_lock(&rt->tlock);
	rt->forked = true;
	if (rt->grants.n) {
		v = uhmm_alloc(rt->grants.n * sizeof(*v));
		for (size_t i = 0; v && i < rt->grants.n; i++) {
			const struct ival *g = &rt->grants.v[i];

			/* Copy-on-write applies to private writable VMAs. */
			if ((g->prot & TRACK_W) && !(g->prot & TRACK_SHARED))
				v[n++] = *g;
		}
		if (!v) {
			/* No memory: write-protect everything instead. */
			all = (struct ival){ 0, ULONG_MAX, TRACK_W };
			v = &all;
			n = 1;
		}
	}
	pthread_mutex_unlock(&rt->tlock);
	rt->fork_inv = 0;
	for (size_t i = 0; i < n; i++) {
		r.start = v[i].start;
		r.end = v[i].end;
		uhmm__inv_begin(rt, &r);
		rt->fork_inv++;
	}
	if (v != &all)
		uhmm_free(v);
}

void uhmm__track_fork_parent(struct uhmm_rt *rt)
{
	while (rt->fork_inv) {
		rt->fork_inv--;
		uhmm__inv_end(rt);
	}
}

/*
 * Register [start, end) MISSING|WP, so that a page taken out faults to
 * uhmm. Every time, never from a cache of what was registered: the
 * kernel registers the VMAs in the range and succeeds over holes, so a
 * VMA that an mremap moved away just before (its event not read yet:
 * the mover hold keeps it unread) or that a munmap took, replaced since
 * by a new mapping, is not registered though the range was. A page
 * taken out of such a VMA read as zeros, with no fault (issue 11's
 * mremap loss). The same registration again costs 0.8 us (mmap write
 * lock, no change) on this machine kind.
 */
int uhmm__track_missing(struct uhmm_rt *rt, unsigned long start,
			unsigned long end)
{
	int r;

	pthread_mutex_lock(&rt->tlock);
	r = uhmm__rt_start_threads(rt);
	if (r == 0)
		r = uhmm__os_uffd_register(rt->uffd, start, end - start,
					   UFFDIO_REGISTER_MODE_MISSING |
					   UFFDIO_REGISTER_MODE_WP, NULL);
	if (r == 0)
		uhmm__ivset_set(&rt->regs, start, end, 1);
	pthread_mutex_unlock(&rt->tlock);
	return r;
}

int uhmm__track_init(struct uhmm_rt *rt)
{
	pthread_mutex_init(&rt->tlock, NULL);
	return 0;
}

void uhmm__track_destroy(struct uhmm_rt *rt)
{
	uhmm__ivset_free(&rt->grants);
	uhmm__ivset_free(&rt->regs);
	uhmm__ivset_free(&rt->noreg);
	pthread_mutex_destroy(&rt->tlock);
}
