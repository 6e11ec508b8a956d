/* SPDX-License-Identifier: MIT */
/*
 * The wiring, in one table (the counterpart of the sequencing in
 * unmap_region and dup_mmap): what each userfaultfd event, CPU fault and
 * fork does, and in which order, and every subsystem's state set up and
 * torn down. The monitor threads and the atfork trampolines (layer 1)
 * call these through rt->hooks; nothing else calls upward. Layer 5.
 *
 * munmap (or MADV_DONTNEED, or mremap) of a registered range: the kernel
 * queues the event and holds the caller until a reader read it. On that
 * reader, before any later fault is served, event_early: the
 * registrations follow the mapping (track) and the per-page entries are
 * dropped or moved (pstate). On the worker, in order, event: the
 * mirrors' invalidation (track), then the dropped device pages go back
 * to their drivers (pstate).
 */
#include <errno.h>

#include "mm.h"

static int rt_init(struct uhmm_rt *rt)
{
	uhmm__monitor_init(rt);
	uhmm__notifier_init(rt);
	uhmm__track_init(rt);
	uhmm__stage_init(rt);
	uhmm__pst_init(rt);
	uhmm__fork_init(rt);
	uhmm__fault_init(rt);
	return 0;
}

static void rt_destroy(struct uhmm_rt *rt)
{
	uhmm__fork_destroy(rt);
	uhmm__pst_destroy(rt);
	uhmm__stage_destroy(rt);
	uhmm__track_destroy(rt);
	uhmm__notifier_destroy(rt);
	uhmm__monitor_destroy(rt);
}

static void event_early(struct uhmm_rt *rt, const struct uffd_msg *m)
{
	uhmm__track_event_early(rt, m);
	uhmm__pst_event(rt, m);
}

static void event(struct uhmm_rt *rt, const struct uffd_msg *m)
{
	uhmm__track_event(rt, m);
	if (m->event == UFFD_EVENT_UNMAP || m->event == UFFD_EVENT_REMOVE)
		uhmm__pst_release_range(rt, m->arg.remove.start,
					m->arg.remove.end);
}

/*
 * A CPU fault: a write-protect fault (the registrations are WP mode so
 * that they raise events; nothing is write-protected) only wakes; a
 * MISSING fault is the fault-back's.
 */
static void fault(struct uhmm_rt *rt, const struct uffd_msg *m,
		  unsigned long read_seq)
{
	unsigned long addr = m->arg.pagefault.address;
	bool write = m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE;
	/* The faulting thread, for migrate_to_ram (UFFD_FEATURE_THREAD_ID). */
	pid_t tid = rt->uffd_features & UFFD_FEATURE_THREAD_ID ?
		    (pid_t)m->arg.pagefault.feat.ptid : 0;

	if (m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
		uhmm__os_uffd_wake(rt->uffd, addr & ~(rt->page_size - 1),
				   rt->page_size);
		return;
	}
	uhmm__stat_fault(addr, write);
	uhmm__handle_fault(rt, addr, write, tid, read_seq);
}

/*
 * Before the kernel copies the page tables: device pages come home first
 * (the child must see their data) with migrations held off, then write
 * access leaves every mirror (PROTECTION_PAGE) and stays gone until fork
 * returns: the invalidations stay open across the fork, as the kernel's
 * invalidate_range_start/end bracket copy_page_range.
 */
static void fork_prepare(struct uhmm_rt *rt)
{
	uhmm__fork_device_pages(rt);
	uhmm__track_fork_prepare(rt);
}

static void fork_parent(struct uhmm_rt *rt)
{
	uhmm__track_fork_parent(rt);
	uhmm__fork_done(rt);
}

const struct uhmm_hooks uhmm__dispatch_hooks = {
	.init = rt_init,
	.destroy = rt_destroy,
	.event_early = event_early,
	.event = event,
	.overflow = uhmm__track_overflow,
	.fault = fault,
	.fork_prepare = fork_prepare,
	.fork_parent = fork_parent,
	.exec_prepare = uhmm__exec_prepare,
	.exec_failed = uhmm__exec_failed,
};

int uhmm_shutdown(void)
{
	struct uhmm_rt *rt = uhmm__rt_unpublish();

	if (!rt)
		return 0;
	/* Events still queued are for a runtime that is going away. */
	uhmm__rt_stop_threads(rt);
	uhmm__release_all(rt);
	uhmm__rt_free(rt);
	return 0;
}
