/* SPDX-License-Identifier: MIT */
/*
 * The device side of fork (the counterpart of dup_mmap's device-page
 * handling): the gate that keeps migrations and fork apart, and the
 * device pages brought home before the page tables are copied; and of
 * exec (exec_mm_release): the pages the kernel reads during an exec.
 * The order of a fork's steps is dispatch.c's. Layer 4.
 */
#include <errno.h>
#include <linux/futex.h>
#include <stdint.h>
#include <string.h>

#include "mm.h"

/* What execve reads of its arguments, at most (MAX_ARG_STRLEN; the
 * strings of argv and envp together fit in ARG_MAX). */
#define EXEC_MAX_STRLEN (32UL * 4096)
#define EXEC_MAX_STRINGS (1UL << 20)

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

/*
 * Evictions (migrate_device_range/pfns) too: a coherent frame collected
 * is out of the address space until finalize puts the new page in, and
 * a fork that copied the page tables meanwhile gave the child a hole
 * (the kernel's child inherits the migration entry and waits on it).
 * Counted per page, from collection to finalize, so that a driver's
 * collect, copy and finalize need not run on one thread.
 */
bool uhmm__gate_evict_begin(struct uhmm_rt *rt)
{
	if (uhmm__on_monitor())
		return false;
	uhmm__gate_enter(rt);
	return true;
}

void uhmm__gate_evict_end(struct uhmm_rt *rt, bool gated, unsigned long n)
{
	pthread_mutex_lock(&rt->gate_lock);
	rt->evict_pages += n;
	pthread_mutex_unlock(&rt->gate_lock);
	if (gated)
		uhmm__gate_exit(rt);
}

void uhmm__gate_evict_put(struct uhmm_rt *rt, unsigned long n)
{
	if (!n)
		return;
	pthread_mutex_lock(&rt->gate_lock);
	rt->evict_pages -= n < rt->evict_pages ? n : rt->evict_pages;
	if (rt->evict_pages == 0)
		pthread_cond_broadcast(&rt->gate_cond);
	pthread_mutex_unlock(&rt->gate_lock);
}

/* Migrations held off, and those in flight waited for (fork and exec). */
static void gate_close(struct uhmm_rt *rt)
{
	pthread_mutex_lock(&rt->gate_lock);
	rt->fork_pending++;
	while (rt->mig_inflight || rt->evict_pages)
		pthread_cond_wait(&rt->gate_cond, &rt->gate_lock);
	pthread_mutex_unlock(&rt->gate_lock);
}

/* After fork (parent): migrations may start again. */
void uhmm__fork_done(struct uhmm_rt *rt)
{
	pthread_mutex_lock(&rt->gate_lock);
	if (rt->fork_pending)
		rt->fork_pending--;
	pthread_cond_broadcast(&rt->gate_cond);
	pthread_mutex_unlock(&rt->gate_lock);
}

/* A CPU touch of @len bytes at @p, page by page (a fault-back where a
 * page is on a device); false where the memory cannot be read. */
static bool touch(struct uhmm_rt *rt, const void *p, size_t len)
{
	unsigned long a = (uintptr_t)p, end = a + len;
	char c;

	if (!len || end < a)
		return len == 0;
	for (a &= ~(rt->page_size - 1); a < end; a += rt->page_size) {
		int r = -EFAULT;

		for (int i = 0; i < 3 && r; i++)
			r = uhmm_copy_nofault(&c, (void *)a, 1, NULL);
		if (r)
			return false;
	}
	return true;
}

static void fault_in(struct uhmm_rt *rt, unsigned long vpn,
		     _Atomic uintptr_t *e, void *arg)
{
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
	touch(rt, (void *)(vpn << rt->page_shift), 1);
}

/*
 * Before fork: a page on a device is pte_none at its address, so the
 * child would read zeros there. Bring every device page back first
 * (cost: one migration of the device-resident memory per fork).
 */
void uhmm__fork_device_pages(struct uhmm_rt *rt)
{
	gate_close(rt);
	if (atomic_load_explicit(&rt->has_device_pages, memory_order_relaxed))
		uhmm__pst_walk(rt, 0, 1ul << (4 * ST_BITS), fault_in, NULL);
}

/* ---- exec ---- */

/* A NUL-terminated string, at most @max bytes, in page-sized reads. */
static void touch_str(struct uhmm_rt *rt, const char *s, size_t max)
{
	char buf[256];

	while (s && max) {
		unsigned long room = rt->page_size - ((uintptr_t)s & (rt->page_size - 1));
		size_t n = room < sizeof(buf) ? room : sizeof(buf);

		if (n > max)
			n = max;
		if (uhmm_copy_nofault(buf, s, n, NULL) &&
		    (!touch(rt, s, 1) || uhmm_copy_nofault(buf, s, n, NULL)))
			return;
		if (memchr(buf, 0, n))
			return;
		s += n;
		max -= n;
	}
}

/* A NULL-terminated array of strings (argv, envp), as execve reads it. */
static void touch_strv(struct uhmm_rt *rt, char *const v[])
{
	for (unsigned long i = 0; v && i < EXEC_MAX_STRINGS; i++) {
		char *s;

		if (!touch(rt, &v[i], sizeof(v[i])) ||
		    uhmm_copy_nofault(&s, &v[i], sizeof(s), NULL) || !s)
			return;
		touch_str(rt, s, EXEC_MAX_STRLEN);
	}
}

/* The calling thread's robust-futex list: its head, the entry being
 * changed, and each entry with its futex word, as exit_robust_list()
 * walks them (at most ROBUST_LIST_LIMIT entries). */
static void touch_robust_list(struct uhmm_rt *rt)
{
	struct robust_list_head h, *head;
	struct robust_list *e;
	size_t len;

	if (uhmm__os_robust_list((void **)&head, &len) || !head ||
	    len < sizeof(h) || !touch(rt, head, sizeof(h)) ||
	    uhmm_copy_nofault(&h, head, sizeof(h), NULL))
		return;
	if (h.list_op_pending)
		touch(rt, (char *)h.list_op_pending + h.futex_offset, sizeof(uint32_t));
	e = h.list.next;
	for (int i = 0; e && e != &head->list && i < 2048; i++) {
		touch(rt, (char *)e + h.futex_offset, sizeof(uint32_t));
		if (!touch(rt, e, sizeof(*e)) ||
		    uhmm_copy_nofault(&e, &e->next, sizeof(e), NULL))
			return;
	}
}

static _Thread_local bool exec_gated;

/*
 * Before execve and its kin (runtime.c's trampolines). The kernel reads
 * the caller's arguments and environment before it kills the other
 * threads (from kernel mode: with UFFD_USER_MODE_ONLY a page of them on a
 * device fails the exec with EFAULT), and the caller's robust-futex list
 * after (exec_mm_release): by then uhmm's monitor threads are gone, and a
 * page of it on a device is a fault nobody serves (the exec hangs:
 * tests/test_transparency.c, exec_with_tcb_on_device). Migrations are
 * held off as for fork, so nothing leaves again before the exec, and
 * those pages are brought home. The rest stays: the exec discards it.
 */
void uhmm__exec_prepare(struct uhmm_rt *rt, const char *path,
			char *const argv[], char *const envp[])
{
	void *tid;

	/* The gate first, then the look, as fork's: a first migration that
	 * began after the look was else not waited for, and took the
	 * descriptor's page away during the exec (test_transparency,
	 * exec_racing_first_migration_of_tcb). */
	gate_close(rt);
	exec_gated = true;
	if (!atomic_load_explicit(&rt->has_device_pages, memory_order_relaxed))
		return;
	touch_robust_list(rt);
	if (!uhmm__os_tid_address(&tid) && tid)
		touch(rt, tid, sizeof(int));
	touch_str(rt, path, EXEC_MAX_STRLEN);
	touch_strv(rt, argv);
	touch_strv(rt, envp);
}

/* The exec failed: migrations may start again. */
void uhmm__exec_failed(struct uhmm_rt *rt)
{
	if (!exec_gated)
		return;
	exec_gated = false;
	uhmm__fork_done(rt);
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
