/* SPDX-License-Identifier: MIT */
/*
 * Eviction by device page, without addresses (the counterpart of
 * mm/migrate_device.c's migrate_device_*): a driver that must free its
 * memory collects its pages wherever they are mapped, copies them to
 * system memory and finalizes; the address of each page comes from the
 * page (where it is mapped), not from a range: a range of a pagemap or
 * a list of pages; the commit is its own phase (dst 0 or not a system
 * page: the entry stays). The finalize of each page
 * is migrate.c's, as the kernel's two finalize functions share
 * __migrate_device_finalize. Layer 4.
 */
#include <errno.h>
#include <string.h>

#include "mm.h"

/* How far above the stack pointer the caller's frames may be. */
#define SELF_STACK_EVICT (1UL << 20)

/* What a collection keeps out of reach: the caller's stack and thread
 * area (it runs on them meanwhile). */
struct self {
	unsigned long sp;
	struct thread_area ta;
	bool gated;		/* counted in the fork gate (fork.c) */
};

/*
 * Collect device page @p wherever it is mapped: BUSY at its address, so
 * a CPU access waits, and *src = frame | DEVICE | VALID | MIGRATE; 0 if
 * it is not mapped (free, or its mapping went away).
 */
static void collect_page(struct uhmm_rt *rt, struct uhmm_page *p,
			 const struct self *self, uint64_t *src)
{
	unsigned long vpn = atomic_load(&p->vpn);
	_Atomic uintptr_t *e;
	struct stripe *s;
	int r;

	*src = 0;
	if (!vpn || !atomic_load(&p->refs))
		return;
	e = uhmm__pst_entry(rt, vpn, false);
	s = pst_stripe(rt, vpn);
	/* As the kernel's eviction: through the notifiers, the
	 * invalidation open while the page is claimed. */
	struct uhmm_notifier_range inv = {
		.start = vpn << rt->page_shift,
		.end = (vpn + 1) << rt->page_shift,
		.event = UHMM_NOTIFY_MIGRATE,
		.flags = UHMM_NOTIFIER_RANGE_BLOCKABLE, .owner = p->pgmap->owner,
	};

	uhmm__inv_begin(rt, &inv);
	uhmm__mover_begin(rt);
	pthread_mutex_lock(&s->lock);
	if (e && atomic_load(e) == (uintptr_t)p) {
		atomic_store(e, (uintptr_t)p | ENT_BUSY);
		*src = uhmm_migrate_pfn_device(p) | UHMM_MIGRATE_PFN_MIGRATE;
		uhmm_page_get(p);	/* until device_finalize */
	}
	pthread_mutex_unlock(&s->lock);
	r = 0;
	while (*src && is_coherent(p)) {
		/* Where the claim is now: an mremap moves it. */
		unsigned long a;
		uintptr_t v;

		vpn = atomic_load(&p->vpn);
		a = vpn << rt->page_shift;
		e = vpn ? uhmm__pst_entry(rt, vpn, false) : NULL;
		v = e ? atomic_load(e) : 0;
		if (!ent_is_claim(v, ent_mk_page(p) | ENT_BUSY) || ent_dropped(v))
			break;	/* finalize gives it back */
		/*
		 * A coherent page of this thread's own stack or descriptor (a
		 * private one would have come home when it ran): out of the
		 * address while the driver copies it, the thread would fault
		 * on it with its own claim held. Kept in place, as a frame
		 * that cannot leave (below).
		 */
		if (thread_area_hits(&self->ta, a, a + rt->page_size) ||
		    (a + rt->page_size + SELF_STACK > self->sp &&
		     a < self->sp + SELF_STACK_EVICT)) {
			r = -EBUSY;
			break;
		}
		r = uhmm__coherent_isolate(rt, p, a);
		if (!(r == -EINTR || (r == -EAGAIN && uhmm__mover_yield(rt))))
			break;
		r = 0;
	}
	if (r) {
		/*
		 * The frame cannot leave the address (shared copy-on-write
		 * with a child): it stops being device memory where it is,
		 * data in place.
		 */
		*src = 0;
		atomic_store(&p->vpn, 0);
		uhmm__pst_set(rt, vpn, e, 0);
	}
	uhmm__mover_end(rt);
	uhmm__inv_end(rt);
	if (r) {
		uhmm_page_put(p);	/* the mapping's */
		uhmm_page_put(p);	/* the collection's */
	}
}

/* Pages a collection claimed, marked (or unmarked: @on false) as
 * holding forks off; each is counted once, whatever the driver did to
 * src[] in between. */
static unsigned long collected(const uint64_t *src, unsigned long npages,
			       bool on)
{
	unsigned long n = 0;

	for (unsigned long i = 0; i < npages; i++) {
		struct uhmm_page *p = uhmm_migrate_pfn_to_page(src[i]);

		if (p && p->evicting != on) {
			p->evicting = on;
			n++;
		}
	}
	return n;
}

/* Before a collection: forks held off, readers caught up, the caller's
 * own memory. */
static void collect_begin(struct uhmm_rt *rt, struct self *self)
{
	self->gated = uhmm__gate_evict_begin(rt);
	/* A munmap or madvise that returned has dropped its device pages
	 * (as in uhmm_migrate_setup()): those are not collected. */
	uhmm__wait_readers(rt);
	self->sp = (uintptr_t)__builtin_frame_address(0);
	uhmm__thread_area(rt, &self->ta);
}

/* After it: the pages collected hold forks off until their finalize. */
static void collect_end(struct uhmm_rt *rt, const struct self *self,
			const uint64_t *src, unsigned long npages)
{
	uhmm__gate_evict_end(rt, self->gated, collected(src, npages, true));
}

/*
 * Collect the mapped pages [first, first + npages) of @pg, wherever they
 * are mapped (migrate_device_range).
 */
int uhmm_migrate_device_range(uint64_t *src, struct uhmm_pagemap *pg,
			      unsigned long first, unsigned long npages)
{
	struct uhmm_rt *rt = uhmm__rt_peek();
	struct self self;

	if (!src || !pg || !npages || first + npages < first ||
	    first + npages > pg->npages)
		return -EINVAL;
	memset(src, 0, npages * sizeof(*src));
	if (!rt)
		return 0;
	collect_begin(rt, &self);
	for (unsigned long i = 0; i < npages; i++)
		collect_page(rt, uhmm_pagemap_page(pg, first + i), &self, &src[i]);
	collect_end(rt, &self, src, npages);
	return 0;
}

/*
 * Collect the device pages that src[] names, of any pagemaps, in any
 * order (migrate_device_pfns: xe's eviction of a buffer's blocks).
 */
int uhmm_migrate_device_pfns(uint64_t *src, unsigned long npages)
{
	struct uhmm_rt *rt = uhmm__rt_peek();
	struct self self;

	if (!src || !npages)
		return -EINVAL;
	for (unsigned long i = 0; i < npages; i++)
		if (src[i] && !uhmm_migrate_pfn_to_page(src[i]))
			return -EINVAL;
	if (!rt) {
		memset(src, 0, npages * sizeof(*src));
		return 0;
	}
	collect_begin(rt, &self);
	for (unsigned long i = 0; i < npages; i++) {
		struct uhmm_page *p = uhmm_migrate_pfn_to_page(src[i]);

		/* The same page twice: the second entry finds it claimed. */
		if (p)
			collect_page(rt, p, &self, &src[i]);
	}
	collect_end(rt, &self, src, npages);
	return 0;
}

/*
 * The commit (migrate_device_pages): an entry migrates only to a system
 * page; one whose dst is 0, or not a page of uhmm_migrate_alloc_system(),
 * loses MIGRATE and stays on the device at finalize.
 */
void uhmm_migrate_device_pages(uint64_t *src, uint64_t *dst, unsigned long npages)
{
	struct uhmm_rt *rt = uhmm__rt_peek();

	if (!src || !dst || !rt)
		return;
	for (unsigned long i = 0; i < npages; i++) {
		if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			continue;
		if (!(dst[i] & UHMM_MIGRATE_PFN_VALID) ||
		    (dst[i] & UHMM_MIGRATE_PFN_DEVICE) ||
		    stage_index(rt, (uintptr_t)uhmm_migrate_pfn_to_addr(dst[i])) < 0)
			src[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
	}
}

/* Install dst[i] at the collected pages' addresses; restore the rest. */
void uhmm_migrate_device_finalize(uint64_t *src, uint64_t *dst, unsigned long npages)
{
	struct uhmm_rt *rt = uhmm__rt_peek();

	if (!src || !dst || !rt)
		return;
	uhmm__stat_migrate_end(0, src, dst, npages, rt->page_size);
	for (unsigned long i = 0; i < npages; i++) {
		struct uhmm_page *p = uhmm_migrate_pfn_to_page(src[i]);
		struct uhmm_page *put;
		unsigned long addr;

		/* Collected: a page, whether or not it kept MIGRATE. */
		if (!p)
			continue;
		uhmm__mover_begin(rt);
		addr = uhmm__finalize_device_page(rt, p,
			stage_index(rt, (uintptr_t)uhmm_migrate_pfn_to_addr(dst[i])),
			src[i] & UHMM_MIGRATE_PFN_MIGRATE, &put);
		uhmm__mover_end(rt);
		if (put)
			uhmm_page_put(put);
		if (addr)
			uhmm__os_uffd_wake(rt->uffd, addr, rt->page_size);
	}
	/* The references the collection took, and its hold on forks. */
	for (unsigned long i = 0; i < npages; i++) {
		struct uhmm_page *p = uhmm_migrate_pfn_to_page(src[i]);

		if (p)
			uhmm_page_put(p);
	}
	uhmm__gate_evict_put(rt, collected(src, npages, false));
}
