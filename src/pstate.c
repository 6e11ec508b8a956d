/* SPDX-License-Identifier: MIT */
/*
 * The per-page state of the address space: for each virtual page, what
 * the kernel would keep in a non-present PTE (a device-private entry, a
 * device-exclusive entry) or in the page of a device-coherent mapping.
 * The entry encoding and its named helpers are in devmem.h. The entries
 * follow the address space: munmap and MADV_DONTNEED drop them, mremap
 * moves them, as zap_pte_range and move_ptes do. Layer 3.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "devmem.h"

/*
 * A radix tree over virtual page numbers, 4 levels of 512. Nodes are
 * added with compare-and-swap and never freed while the runtime lives,
 * so lookups take no lock. Values change under the stripe lock of their
 * 2 MiB block; waiters for a BUSY page sleep on the stripe's condition.
 */
struct st_node {
	_Atomic(void *) slot[ST_FAN];
};

_Atomic uintptr_t *uhmm__pst_entry(struct uhmm_rt *rt, unsigned long vpn,
				   bool alloc)
{
	_Atomic(void *) *slot = (_Atomic(void *) *)&rt->st_root;

	for (int l = 3; l >= 0; l--) {
		void *n = atomic_load_explicit(slot, memory_order_acquire);

		if (!n) {
			void *fresh;

			if (!alloc)
				return NULL;
			fresh = uhmm_calloc(1, sizeof(struct st_node));
			if (!fresh)
				return NULL;
			if (!atomic_compare_exchange_strong(slot, &n, fresh))
				uhmm_free(fresh);
			else
				n = fresh;
		}
		if (l == 0)
			return (_Atomic uintptr_t *)&((struct st_node *)n)
				->slot[vpn & (ST_FAN - 1)];
		slot = &((struct st_node *)n)->slot[(vpn >> (ST_BITS * l)) & (ST_FAN - 1)];
	}
	return NULL;
}

uintptr_t uhmm__pst_get(struct uhmm_rt *rt, unsigned long vpn)
{
	_Atomic uintptr_t *e = uhmm__pst_entry(rt, vpn, false);

	return e ? atomic_load_explicit(e, memory_order_acquire) : 0;
}

/* Call @fn for every leaf slot in [lo, hi) under existing nodes. */
static void st_walk_node(struct uhmm_rt *rt, void *n, int l, unsigned long base,
			 unsigned long lo, unsigned long hi, st_fn fn, void *arg)
{
	unsigned long span = 1ul << (ST_BITS * l);

	for (unsigned long i = 0; i < ST_FAN; i++) {
		unsigned long b = base + i * span;
		_Atomic(void *) *slot = &((struct st_node *)n)->slot[i];

		if (b + span <= lo || b >= hi)
			continue;
		if (l == 0) {
			if (atomic_load_explicit((_Atomic uintptr_t *)slot,
						 memory_order_acquire))
				fn(rt, b, (_Atomic uintptr_t *)slot, arg);
			continue;
		}
		void *c = atomic_load_explicit(slot, memory_order_acquire);

		if (c)
			st_walk_node(rt, c, l - 1, b, lo, hi, fn, arg);
	}
}

void uhmm__pst_walk(struct uhmm_rt *rt, unsigned long lo, unsigned long hi,
		    st_fn fn, void *arg)
{
	void *root = atomic_load_explicit(&rt->st_root, memory_order_acquire);

	if (root && lo < hi)
		st_walk_node(rt, root, 3, 0, lo, hi, fn, arg);
}

/* The device-private page at @addr, for range_fault (NULL when none or
 * busy). */
struct uhmm_page *uhmm__device_page_at(struct uhmm_rt *rt, unsigned long addr)
{
	struct uhmm_page *p;

	if (!atomic_load_explicit(&rt->has_device_pages, memory_order_relaxed))
		return NULL;
	p = ent_plain_page(uhmm__pst_get(rt, addr >> rt->page_shift));
	return p && !is_coherent(p) ? p : NULL;
}

/* The coherent page mapped at @addr, or NULL. */
struct uhmm_page *uhmm__coherent_page_at(struct uhmm_rt *rt, unsigned long addr)
{
	struct uhmm_page *p;

	if (!atomic_load_explicit(&rt->has_coherent_pages, memory_order_relaxed))
		return NULL;
	p = ent_plain_page(uhmm__pst_get(rt, addr >> rt->page_shift));
	return p && is_coherent(p) ? p : NULL;
}

/*
 * Give back what a dropped entry (its mapping went away) still holds: a
 * device page to its driver, or the staging slot of an exclusive page.
 * The entry itself is the caller's to clear.
 */
void uhmm__pst_release(struct uhmm_rt *rt, uintptr_t v)
{
	struct uhmm_page *p = ent_page(v);

	if (ent_exclusive(v)) {
		uhmm__stage_free(rt, ent_excl_slot(v), true);
	} else if (p) {
		atomic_store(&p->vpn, 0);
		uhmm_page_put(p);
	}
}

/* Wake faults waiting on BUSY pages of [start, end): each 2 MiB block. */
void uhmm__pst_wake(struct uhmm_rt *rt, unsigned long start, unsigned long end)
{
	unsigned long last = (end - 1) >> (rt->page_shift + 9);

	for (unsigned long b = start >> (rt->page_shift + 9); b <= last; b++) {
		struct stripe *s = pst_stripe(rt, b << 9);

		pthread_mutex_lock(&s->lock);
		pthread_cond_broadcast(&s->cond);
		pthread_mutex_unlock(&s->lock);
	}
}

/* ---- the address space changing under device pages ---- */

static void mark_drop(struct uhmm_rt *rt, unsigned long vpn,
		      _Atomic uintptr_t *e, void *arg)
{
	struct stripe *s = pst_stripe(rt, vpn);

	(void)arg;
	pthread_mutex_lock(&s->lock);
	if (atomic_load(e))
		atomic_store(e, atomic_load(e) | ENT_DROP);
	pthread_mutex_unlock(&s->lock);
}

struct remap_arg {
	unsigned long from, to;	/* VPNs */
};

static void move_entry(struct uhmm_rt *rt, unsigned long vpn,
		       _Atomic uintptr_t *e, void *arg)
{
	struct remap_arg *a = arg;
	unsigned long nvpn = vpn - a->from + a->to;
	_Atomic uintptr_t *ne = uhmm__pst_entry(rt, nvpn, true);
	uintptr_t v, old;

	if (!ne)
		return;
	struct stripe *s = pst_stripe(rt, vpn), *ns = pst_stripe(rt, nvpn);

	/* One stripe at a time; the worker's put_dropped takes them too. */
	pthread_mutex_lock(&s->lock);
	v = atomic_exchange(e, 0);
	pthread_mutex_unlock(&s->lock);
	if (!v)
		return;
	/* The claim follows the mapping (devmem.h): its owner looks there. */
	if (ent_cell(v))
		atomic_store(ent_cell(v), nvpn);
	else if (ent_page(v))
		atomic_store(&ent_page(v)->vpn, nvpn);
	pthread_mutex_lock(&ns->lock);
	old = atomic_exchange(ne, v);
	pthread_cond_broadcast(&ns->cond);
	pthread_mutex_unlock(&ns->lock);
	/*
	 * mremap over pages that were on a device: the destination's UNMAP
	 * came first and marked them DROP; the worker would give them back,
	 * but this entry no longer names them. Given back here.
	 */
	if ((old & ENT_DROP) && !(old & ENT_BUSY))
		uhmm__pst_release(rt, old);
}

/*
 * On the reader, right after read() returned the event and before any
 * fault read later is served (uhmm__handle_fault waits for readers in
 * read()): munmap and MADV_DONTNEED/FREE/REMOVE release the device pages
 * of the range (a later touch sees a fresh page, as in the kernel);
 * mremap moves them with the mapping.
 */
void uhmm__pst_event(struct uhmm_rt *rt, const struct uffd_msg *m)
{
	unsigned int shift = rt->page_shift;

	if (!atomic_load_explicit(&rt->has_device_pages, memory_order_relaxed))
		return;
	switch (m->event) {
	case UFFD_EVENT_UNMAP:
	case UFFD_EVENT_REMOVE:
		uhmm__pst_walk(rt, m->arg.remove.start >> shift, m->arg.remove.end >> shift,
			mark_drop, NULL);
		break;
	case UFFD_EVENT_REMAP: {
		struct remap_arg a = { m->arg.remap.from >> shift,
				       m->arg.remap.to >> shift };
		unsigned long n = m->arg.remap.len >> shift;

		/* Overlapping moves go page by page in the safe direction. */
		for (unsigned long k = 0; k < n; k++) {
			unsigned long j = a.to > a.from ? n - 1 - k : k;
			_Atomic uintptr_t *e = uhmm__pst_entry(rt, a.from + j, false);

			if (e && atomic_load(e))
				move_entry(rt, a.from + j, e, &a);
		}
		break;
	}
	default:
		break;
	}
}

static void put_dropped(struct uhmm_rt *rt, unsigned long vpn,
			_Atomic uintptr_t *e, void *arg)
{
	struct stripe *s = pst_stripe(rt, vpn);
	uintptr_t v;

	(void)arg;
	pthread_mutex_lock(&s->lock);
	v = atomic_load(e);
	if ((v & ENT_DROP) && !(v & ENT_BUSY))
		atomic_store(e, 0);
	else
		v = 0;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	uhmm__pst_release(rt, v);
}

/* On the worker: give the released pages back to their drivers. */
void uhmm__pst_release_range(struct uhmm_rt *rt, unsigned long start,
			     unsigned long end)
{
	if (atomic_load_explicit(&rt->has_device_pages, memory_order_relaxed))
		uhmm__pst_walk(rt, start >> rt->page_shift, end >> rt->page_shift,
			put_dropped, NULL);
}


/* Update an entry: under its stripe lock, waking its waiters. */
void uhmm__pst_set(struct uhmm_rt *rt, unsigned long vpn, _Atomic uintptr_t *e,
		   uintptr_t v)
{
	struct stripe *s = pst_stripe(rt, vpn);

	pthread_mutex_lock(&s->lock);
	atomic_store(e, v);
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
}

uintptr_t uhmm__pst_settle(struct uhmm_rt *rt, _Atomic unsigned long *where,
			    uintptr_t claim, uintptr_t v)
{
	for (;;) {
		unsigned long vpn = atomic_load(where);
		_Atomic uintptr_t *e = uhmm__pst_entry(rt, vpn, false);
		struct stripe *s = pst_stripe(rt, vpn);
		uintptr_t cur;

		pthread_mutex_lock(&s->lock);
		cur = e ? atomic_load(e) : 0;
		if (ent_is_claim(cur, claim)) {
			atomic_store(e, v ? v | (cur & ENT_DROP) : 0);
			pthread_cond_broadcast(&s->cond);
			pthread_mutex_unlock(&s->lock);
			return cur;
		}
		pthread_mutex_unlock(&s->lock);
		/* Not there: moved meanwhile (look again), or replaced. */
		if (atomic_load(where) == vpn)
			return 0;
	}
}

void uhmm__pst_note_device(struct uhmm_rt *rt)
{
	atomic_store(&rt->has_device_pages, true);
}

int uhmm__pst_init(struct uhmm_rt *rt)
{
	for (int i = 0; i < UHMM_STRIPES; i++) {
		pthread_mutex_init(&rt->stripes[i].lock, NULL);
		pthread_cond_init(&rt->stripes[i].cond, NULL);
	}
	return 0;
}

static void free_node(void *n, int l)
{
	for (unsigned long i = 0; l > 0 && i < ST_FAN; i++) {
		void *c = atomic_load_explicit(&((struct st_node *)n)->slot[i],
						memory_order_relaxed);

		if (c)
			free_node(c, l - 1);
	}
	uhmm_free(n);
}

void uhmm__pst_destroy(struct uhmm_rt *rt)
{
	void *root = atomic_exchange(&rt->st_root, NULL);

	if (root)
		free_node(root, 3);
	for (int i = 0; i < UHMM_STRIPES; i++) {
		pthread_mutex_destroy(&rt->stripes[i].lock);
		pthread_cond_destroy(&rt->stripes[i].cond);
	}
}
