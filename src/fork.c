/* SPDX-License-Identifier: MIT */
/*
 * The device side of fork (the counterpart of dup_mmap's device-page
 * handling): the gate that keeps migrations and fork apart, and the
 * device pages brought home before the page tables are copied. The order
 * of a fork's steps is dispatch.c's. Layer 4.
 */
#include <errno.h>

#include "mm.h"

/*
 * fork must not copy the page tables while a migration has pages out of
 * the application's address space (the child would read holes): the
 * kernel excludes the two with mmap_lock. Migrations a thread starts
 * wait while a fork is being prepared, and the fork waits for those in
 * flight. CPU fault-backs (on monitor threads) pass: the fork's own
 * preparation needs them.
 */
void uhmm__gate_enter(struct uhmm_rt *rt)
{
	pthread_mutex_lock(&rt->gate_lock);
	while (rt->fork_pending)
		pthread_cond_wait(&rt->gate_cond, &rt->gate_lock);
	rt->mig_inflight++;
	pthread_mutex_unlock(&rt->gate_lock);
}

void uhmm__gate_exit(struct uhmm_rt *rt)
{
	pthread_mutex_lock(&rt->gate_lock);
	if (--rt->mig_inflight == 0)
		pthread_cond_broadcast(&rt->gate_cond);
	pthread_mutex_unlock(&rt->gate_lock);
}

/* After fork (parent): migrations may start again. */
void uhmm__fork_done(struct uhmm_rt *rt)
{
	pthread_mutex_lock(&rt->gate_lock);
	rt->fork_pending = false;
	pthread_cond_broadcast(&rt->gate_cond);
	pthread_mutex_unlock(&rt->gate_lock);
}

static void fault_in(struct uhmm_rt *rt, unsigned long vpn,
		     _Atomic uintptr_t *e, void *arg)
{
	char c;

	(void)arg;
	if (ent_dropped(atomic_load(e)))
		return;
	/*
	 * A CPU touch from user mode, served by migrate_to_ram as any
	 * access. Not MADV_POPULATE_READ: with a userfaultfd opened with
	 * UFFD_USER_MODE_ONLY (unprivileged users) the kernel's own fault
	 * fails, and the child would read zeros. Retried: a page left on the
	 * device reads as zeros in the child.
	 */
	for (int i = 0; i < 3; i++)
		if (uhmm_copy_nofault(&c, (void *)(vpn << rt->page_shift), 1,
				      NULL) == 0)
			break;
}

/*
 * Before fork: a page on a device is pte_none at its address, so the
 * child would read zeros there. Bring every device page back first
 * (cost: one migration of the device-resident memory per fork).
 */
void uhmm__fork_device_pages(struct uhmm_rt *rt)
{
	pthread_mutex_lock(&rt->gate_lock);
	rt->fork_pending = true;
	while (rt->mig_inflight)
		pthread_cond_wait(&rt->gate_cond, &rt->gate_lock);
	pthread_mutex_unlock(&rt->gate_lock);
	if (atomic_load_explicit(&rt->has_device_pages, memory_order_relaxed))
		uhmm__pst_walk(rt, 0, 1ul << (4 * ST_BITS), fault_in, NULL);
}

int uhmm__fork_init(struct uhmm_rt *rt)
{
	pthread_mutex_init(&rt->gate_lock, NULL);
	pthread_cond_init(&rt->gate_cond, NULL);
	return 0;
}

void uhmm__fork_destroy(struct uhmm_rt *rt)
{
	pthread_mutex_destroy(&rt->gate_lock);
	pthread_cond_destroy(&rt->gate_cond);
}
