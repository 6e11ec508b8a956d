/* SPDX-License-Identifier: MIT */
/*
 * Eviction by device page, without addresses (the counterpart of
 * mm/migrate_device.c's migrate_device_*): a driver that must free its
 * memory collects its pages wherever they are mapped, copies them to
 * system memory and finalizes; the address of each page comes from the
 * page (where it is mapped), not from a range. The finalize of each page
 * is migrate.c's, as the kernel's two finalize functions share
 * __migrate_device_finalize. Layer 4.
 */
#include <errno.h>
#include <string.h>

#include "mm.h"

/* How far above the stack pointer the caller's frames may be. */
#define SELF_STACK_EVICT (1UL << 20)

/*
 * Collect the mapped pages [first, first + npages) of @pg, wherever they
 * are mapped (migrate_device_range): BUSY at their address, so a CPU
 * access waits, and src[i] = frame | DEVICE | MIGRATE.
 */
int uhmm_migrate_device_range(uint64_t *src, struct uhmm_pagemap *pg,
			      unsigned long first, unsigned long npages)
{
	struct uhmm_rt *rt = uhmm__rt_peek();

	if (!src || !pg || !npages || first + npages < first ||
	    first + npages > pg->npages)
		return -EINVAL;
	memset(src, 0, npages * sizeof(*src));
	if (!rt)
		return 0;
	/* A munmap or madvise that returned has dropped its device pages
	 * (as in uhmm_migrate_setup()): those are not collected. */
	uhmm__wait_readers(rt);
	/* This thread's stack and descriptor: it runs on them meanwhile. */
	unsigned long sp = (uintptr_t)__builtin_frame_address(0), tlo, thi;

	uhmm__thread_area(rt, &tlo, &thi);
	for (unsigned long i = 0; i < npages; i++) {
		struct uhmm_page *p = uhmm_pagemap_page(pg, first + i);
		unsigned long vpn = atomic_load(&p->vpn);
		_Atomic uintptr_t *e;
		struct stripe *s;
		int r;

		if (!vpn || !atomic_load(&p->refs))
			continue;
		e = uhmm__pst_entry(rt, vpn, false);
		s = pst_stripe(rt, vpn);
		/* As the kernel's eviction: through the notifiers, the
		 * invalidation open while the page is claimed. */
		struct uhmm_notifier_range inv = {
			.start = vpn << rt->page_shift,
			.end = (vpn + 1) << rt->page_shift,
			.event = UHMM_NOTIFY_MIGRATE,
			.flags = UHMM_NOTIFIER_RANGE_BLOCKABLE, .owner = pg->owner,
		};

		uhmm__inv_begin(rt, &inv);
		uhmm__mover_begin(rt);
		pthread_mutex_lock(&s->lock);
		if (e && atomic_load(e) == (uintptr_t)p) {
			atomic_store(e, (uintptr_t)p | ENT_BUSY);
			src[i] = uhmm_migrate_pfn_device(p) | UHMM_MIGRATE_PFN_MIGRATE;
			uhmm_page_get(p);	/* until device_finalize */
		}
		pthread_mutex_unlock(&s->lock);
		r = 0;
		/*
		 * A coherent page of this thread's own stack or descriptor
		 * (a private one would have come home when it ran): out of
		 * the address while the driver copies it, the thread would
		 * fault on it with its own claim held. Kept in place, as a
		 * frame that cannot leave (below).
		 */
		if (src[i] && is_coherent(p)) {
			unsigned long a = vpn << rt->page_shift;

			if ((a < thi && a + rt->page_size > tlo) ||
			    (a + rt->page_size + (256UL << 10) > sp &&
			     a < sp + SELF_STACK_EVICT))
				r = -EBUSY;
		}
		while (!r && src[i] && is_coherent(p) && !ent_dropped(atomic_load(e)) &&
		       (r = uhmm__coherent_isolate(rt, p, vpn << rt->page_shift)) &&
		       (r == -EINTR || (r == -EAGAIN && uhmm__mover_yield(rt))))
			;
		uhmm__mover_end(rt);
		uhmm__inv_end(rt);
		if (r) {
			/*
			 * The frame cannot leave the address (shared
			 * copy-on-write with a child): it stops being device
			 * memory where it is, data in place.
			 */
			src[i] = 0;
			atomic_store(&p->vpn, 0);
			uhmm__pst_set(rt, vpn, e, 0);
			uhmm_page_put(p);	/* the mapping's */
			uhmm_page_put(p);	/* the collection's */
		}
	}
	return 0;
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

		if (!p || !(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			continue;
		addr = atomic_load(&p->vpn) << rt->page_shift;
		uhmm__mover_begin(rt);
		uhmm__finalize_device_page(rt, p, addr,
			uhmm__pst_entry(rt, addr >> rt->page_shift, false),
			stage_index(rt, (uintptr_t)uhmm_migrate_pfn_to_addr(dst[i])),
			true, &put);
		uhmm__mover_end(rt);
		if (put)
			uhmm_page_put(put);
		uhmm__os_uffd_wake(rt->uffd, addr, rt->page_size);
	}
	/* The references the collection took. */
	for (unsigned long i = 0; i < npages; i++) {
		struct uhmm_page *p = uhmm_migrate_pfn_to_page(src[i]);

		if (p && (src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			uhmm_page_put(p);
	}
}
