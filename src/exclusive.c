/* SPDX-License-Identifier: MIT */
/*
 * Exclusive device access (the counterpart of make_device_exclusive()):
 * a page leaves the CPU's page tables for a device's atomic access, and a
 * CPU touch takes it back (the device-exclusive entry's fault path). The
 * page waits in a staging slot, which the device addresses. Layer 4.
 */
#include <errno.h>
#include <sys/mman.h>

#include "mm.h"

static int make_exclusive(struct uhmm_rt *rt, unsigned long addr,
			  const void *owner, void **dev_addr)
{
	struct os_procmap_query q;
	_Atomic uintptr_t *e;
	struct stripe *s;
	unsigned long vpn;
	/* The claim's cell while the page is taken (devmem.h). */
	_Alignas(16) _Atomic unsigned long where;
	long slot;
	int err = 0, r;

	r = uhmm__vma_query(rt, addr, &q);
	if (r < 0 && r != -ENOENT)
		return r;	/* -ENOMEM: not the caller's fault */
	if (r < 0 || q.vma_start > addr || q.inode || q.dev_major || q.dev_minor ||
	    uhmm__alloc_owns(addr, addr + rt->page_size) ||
	    (q.vma_flags & OS_PROCMAP_QUERY_VMA_SHARED) ||
	    !(q.vma_flags & OS_PROCMAP_QUERY_VMA_WRITABLE) ||
	    q.vma_page_size > rt->page_size)
		return -EINVAL;
	/* A page of this thread's live stack, descriptor or static TLS, or
	 * of the libraries' data (see migrate.c's self_ranges): taken away,
	 * the thread would fault on it with its claim held. */
	unsigned long sp = (uintptr_t)__builtin_frame_address(0);
	struct thread_area ta;

	uhmm__thread_area(rt, &ta);
	if ((sp >= q.vma_start && sp < q.vma_end && addr + rt->page_size > sp - SELF_STACK) ||
	    thread_area_hits(&ta, addr, addr + rt->page_size) ||
	    uhmm__alloc_libdata(addr, addr + rt->page_size))
		return -EBUSY;
	err = uhmm__stage_setup(rt);
	if (err)
		return err;
	/* Writable and present first, as make_device_exclusive faults it
	 * (before the page is claimed: the fault may come to uhmm). */
	if (uhmm__os_madvise((void *)addr, rt->page_size, MADV_POPULATE_WRITE))
		return -EFAULT;
	vpn = addr >> rt->page_shift;
	atomic_init(&where, vpn);
	e = uhmm__pst_entry(rt, vpn, true);
	if (!e)
		return -ENOMEM;
	/* The staging slot first: allocating may wait for a reader. */
	slot = uhmm__stage_alloc(rt, 1, SLOT_EMPTY);
	if (slot < 0)
		return (int)slot;

	/*
	 * As the kernel's: the EXCLUSIVE invalidation is open around the
	 * taking, until the page is out (see uhmm_migrate_setup()), and the
	 * claim and the move hold the readers off (the mover hold): a
	 * mapping change in between makes the move fail with EAGAIN, never
	 * take a page of a new mapping.
	 */
	struct uhmm_notifier_range inv = {
		.start = addr, .end = addr + rt->page_size,
		.event = UHMM_NOTIFY_EXCLUSIVE,
		.flags = UHMM_NOTIFIER_RANGE_BLOCKABLE, .owner = owner,
	};

	uhmm__inv_begin(rt, &inv);
	uhmm__mover_begin(rt);
	/* Registered under the hold: see uhmm_migrate_setup(). */
	err = uhmm__track_missing(rt, addr, addr + rt->page_size);
	if (err) {
		uhmm__mover_end(rt);
		uhmm__inv_end(rt);
		uhmm__stage_free(rt, (unsigned long)slot, false);
		return err;
	}
	s = pst_stripe(rt, vpn);
	pthread_mutex_lock(&s->lock);
	if (atomic_load(e)) {
		uintptr_t v = atomic_load(e);

		pthread_mutex_unlock(&s->lock);
		uhmm__mover_end(rt);
		uhmm__inv_end(rt);
		uhmm__stage_free(rt, (unsigned long)slot, false);
		if (ent_exclusive(v) && !ent_busy(v)) {
			/* Already exclusive (the invalidation above said
			 * so to its owner again): same page. */
			*dev_addr = (void *)stage_addr(rt, ent_excl_slot(v));
			return 0;
		}
		return -EBUSY;
	}
	atomic_store(e, ent_mk_cell(&where));
	pthread_mutex_unlock(&s->lock);
	uhmm__pst_note_device(rt);
	for (;;) {
		r = uhmm__uffd_move(rt, stage_addr(rt, (unsigned long)slot), addr,
				    rt->page_size, 0);
		if (r != -EAGAIN || !uhmm__mover_yield(rt))
			break;
		/* Its mapping went away meanwhile, or moved (the page with
		 * it: as if the mremap came first). */
		if (atomic_load(&where) != vpn || ent_dropped(atomic_load(e))) {
			r = -EBUSY;
			break;
		}
	}
	if (r)
		uhmm__stage_free(rt, (unsigned long)slot, false);
	uhmm__pst_settle(rt, &where, ent_mk_cell(&where),
			 r == 0 ? ent_mk_excl((unsigned long)slot) : 0);
	uhmm__mover_end(rt);
	uhmm__inv_end(rt);
	/* A CPU access that came meanwhile faults again (and revokes). */
	uhmm__os_uffd_wake(rt->uffd, addr, rt->page_size);
	if (r)
		return r == -EBUSY || r == -ENOMEM ? r : -EBUSY;
	*dev_addr = (void *)stage_addr(rt, (unsigned long)slot);
	return 0;
}

int uhmm_make_device_exclusive(unsigned long addr, const void *owner,
			       void **dev_addr)
{
	struct uhmm_rt *rt;
	int err = 0;
	bool gated;

	if (!dev_addr)
		return -EINVAL;
	rt = uhmm__rt_get(&err);
	if (!rt)
		return err;
	if (!addr || !uhmm__aligned(rt, addr))
		return -EINVAL;
	if (rt->uffd < 0)
		return -ENOSYS;
	/*
	 * The page leaves the address space: a fork must not copy the page
	 * tables meanwhile (the child would read a hole), as for a
	 * migration (fork.c). A monitor thread passes: the fork's own
	 * preparation needs it.
	 */
	gated = !uhmm__on_monitor();
	if (gated)
		uhmm__gate_enter(rt);
	err = make_exclusive(rt, addr, owner, dev_addr);
	if (gated)
		uhmm__gate_exit(rt);
	return err;
}

/*
 * A CPU access to an exclusive entry @v: the device's access is revoked
 * (its notifiers see EXCLUSIVE) and the page goes back to @addr.
 */
void uhmm__exclusive_revoke(struct uhmm_rt *rt, unsigned long addr,
			    _Atomic uintptr_t *e, uintptr_t v)
{
	unsigned long vpn = addr >> rt->page_shift, to;
	unsigned long slot = ent_excl_slot(v);
	_Alignas(16) _Atomic unsigned long where;
	const uintptr_t claim = ent_mk_cell(&where);
	bool emptied = false;
	uintptr_t cur;
	int r = -EAGAIN;

	/* Claimed with a cell: an mremap meanwhile moves the claim, and
	 * the page goes back where the mapping is then. */
	atomic_init(&where, vpn);
	atomic_store(e, claim);
	pthread_mutex_unlock(&pst_stripe(rt, vpn)->lock);
	uhmm__invalidate(rt, addr, addr + rt->page_size,
			 UHMM_NOTIFY_EXCLUSIVE, NULL);
	uhmm__stat_inc(UHMM__STAT_faults_exclusive_revoke);
	uhmm__mover_begin(rt);
	for (;;) {
		to = atomic_load(&where);
		e = uhmm__pst_entry(rt, to, false);
		cur = e ? atomic_load(e) : 0;
		if (!ent_is_claim(cur, claim) || ent_dropped(cur)) {
			/* Its mapping went away meanwhile: the page with it. */
			uhmm__stage_free(rt, slot, true);
			uhmm__pst_settle(rt, &where, claim, 0);
			break;
		}
		r = uhmm__stage_install(rt, to << rt->page_shift, slot, &emptied);
		if (r != -EAGAIN || !uhmm__mover_yield(rt)) {
			uhmm__pst_settle(rt, &where, claim, r == 0 ? 0 : v);
			break;
		}
	}
	uhmm__mover_end(rt);
	if (r == 0)
		uhmm__stage_free(rt, slot, !emptied);
	uhmm__os_uffd_wake(rt->uffd, addr, rt->page_size);
	if (to != vpn)
		uhmm__os_uffd_wake(rt->uffd, to << rt->page_shift, rt->page_size);
}
