/* SPDX-License-Identifier: MIT */
/*
 * Layer 4 of src/ (docs/design.md): the operations on the address space
 * built on device memory and the per-page state: range_fault (range.c),
 * the device side of fork (fork.c), migrate_vma (migrate.c), eviction
 * (evict.c), exclusive access (exclusive.c), the CPU fault-back
 * (fault.c). What one of them needs of another, in the order of
 * src/LAYERS. Includes only devmem.h (layer 3) and below. Never installed.
 */
#ifndef UHMM_MM_H
#define UHMM_MM_H

#include "devmem.h"

/* ---- fork.c ---- */

UHMM_INTERNAL int uhmm__fork_init(struct uhmm_rt *rt);
UHMM_INTERNAL void uhmm__fork_destroy(struct uhmm_rt *rt);
/* A migration started by a thread: waits while a fork is prepared. */
UHMM_INTERNAL void uhmm__gate_enter(struct uhmm_rt *rt);
UHMM_INTERNAL void uhmm__gate_exit(struct uhmm_rt *rt);
/*
 * An eviction (evict.c): its collection waits while a fork is prepared
 * (not on a monitor thread), and the pages it collected hold a fork off
 * until each is finalized; @n pages collected, then given back.
 */
UHMM_INTERNAL bool uhmm__gate_evict_begin(struct uhmm_rt *rt);
UHMM_INTERNAL void uhmm__gate_evict_end(struct uhmm_rt *rt, bool gated,
					unsigned long n);
UHMM_INTERNAL void uhmm__gate_evict_put(struct uhmm_rt *rt, unsigned long n);
/* Before fork: close the gate, wait for migrations, bring pages home. */
UHMM_INTERNAL void uhmm__fork_device_pages(struct uhmm_rt *rt);
/* After fork (parent): migrations may start again. */
UHMM_INTERNAL void uhmm__fork_done(struct uhmm_rt *rt);
UHMM_INTERNAL void uhmm__exec_prepare(struct uhmm_rt *rt, const char *path,
				      char *const argv[], char *const envp[]);
UHMM_INTERNAL void uhmm__exec_failed(struct uhmm_rt *rt);

/* ---- migrate.c ---- */

/* How far below its stack pointer the calling thread's live stack goes
 * (uhmm's and a driver's frames): never collected by its migrations. */
#define SELF_STACK (256UL << 10)

/*
 * What the calling thread needs to run uhmm's and a driver's code, never
 * collected nor registered by its own migrations: [lo[0], hi[0]) its
 * descriptor and static TLS; [lo[1], hi[1]) its alternate signal stack,
 * if any (sanitizers give every thread one): a signal taken under a
 * driver's lock (uhmm_copy_nofault's guard) writes its frame there, and a
 * fault on it would wait for a reader that waits for that lock.
 */
struct thread_area {
	unsigned long lo[2], hi[2];
};
UHMM_INTERNAL void uhmm__thread_area(struct uhmm_rt *rt, struct thread_area *ta);

static inline bool thread_area_hits(const struct thread_area *ta,
				    unsigned long start, unsigned long end)
{
	return (start < ta->hi[0] && end > ta->lo[0]) ||
	       (start < ta->hi[1] && end > ta->lo[1]);
}

/*
 * The one finalize of a device page collected (claimed BUSY), wherever
 * its claim is now (p->vpn: an mremap moves it): to system memory in
 * staging slot @slot when @migrate, else it stays on the device; a
 * dropped or replaced entry gives the page back. @slot (-1: none) is
 * given back either way. Waiters on the entry are woken; the faulting
 * threads are the caller's to wake, at the address returned (0: none).
 * Under the mover hold; *put is a page reference for the caller to drop
 * after it (or NULL).
 */
UHMM_INTERNAL unsigned long uhmm__finalize_device_page(struct uhmm_rt *rt,
						       struct uhmm_page *p,
						       long slot, bool migrate,
						       struct uhmm_page **put);

/* ---- exclusive.c ---- */

/* A CPU access to an exclusive entry @v at @addr: the page comes back.
 * Called with the stripe lock held; returns with it released. */
UHMM_INTERNAL void uhmm__exclusive_revoke(struct uhmm_rt *rt,
					  unsigned long addr,
					  _Atomic uintptr_t *e, uintptr_t v);

/* ---- fault.c ---- */

UHMM_INTERNAL int uhmm__fault_init(struct uhmm_rt *rt);
/* A MISSING fault at @addr, on the reader that read it. */
UHMM_INTERNAL void uhmm__handle_fault(struct uhmm_rt *rt, unsigned long addr,
				      bool write, pid_t tid,
				      unsigned long read_seq);

#endif /* UHMM_MM_H */
