/* SPDX-License-Identifier: MIT */
/*
 * Layer 1 of src/ (docs/design.md, src/LAYERS): the per-process runtime,
 * the counterpart of the kernel's mm_struct with its mmu_notifier
 * subscriptions; the monitor threads that read its userfaultfd; the
 * userfaultfd error model. Includes only layer 0 (base.h).
 *
 * struct uhmm_rt groups its members under the one file that writes each
 * group; that file's init and destroy (called through the hooks, from
 * rt_create and rt_free) own them.
 *
 * The one upward flow: the monitor threads and the atfork trampolines
 * call the hooks table that dispatch.c (layer 5) defines and rt_create
 * stores, as the kernel calls through dev_pagemap_ops. Never installed.
 */
#ifndef UHMM_RT_H
#define UHMM_RT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <linux/userfaultfd.h>

#include "base.h"

struct uhmm_rt;
struct uhmm_interval_notifier;

/*
 * What the layers above do on behalf of the runtime, in one table
 * (dispatch.c). init/destroy: every subsystem's state. event_early: on a
 * reader, right after read() returned a non-fault event, before any later
 * fault is served. event: on the worker, in order. overflow: events were
 * lost. fault: a CPU fault message, on the reader that read it
 * (@read_seq: that read's sequence). fork_prepare/fork_parent: the
 * atfork handlers.
 */
struct uhmm_hooks {
	int (*init)(struct uhmm_rt *rt);
	void (*destroy)(struct uhmm_rt *rt);
	void (*event_early)(struct uhmm_rt *rt, const struct uffd_msg *m);
	void (*event)(struct uhmm_rt *rt, const struct uffd_msg *m);
	void (*overflow)(struct uhmm_rt *rt);
	void (*fault)(struct uhmm_rt *rt, const struct uffd_msg *m,
		      unsigned long read_seq);
	void (*fork_prepare)(struct uhmm_rt *rt);
	void (*fork_parent)(struct uhmm_rt *rt);
	/* Before an exec system call, and after one that failed. */
	void (*exec_prepare)(struct uhmm_rt *rt, const char *path,
			     char *const argv[], char *const envp[]);
	void (*exec_failed)(struct uhmm_rt *rt);
};

/* dispatch.c: the table rt_create stores (the one reference upward). */
extern const struct uhmm_hooks uhmm__dispatch_hooks UHMM_INTERNAL;

#define EVQ_LEN 1024
#define UHMM_STRIPES 64

struct stripe {
	pthread_mutex_t lock;
	pthread_cond_t cond;
};

struct uhmm_rt {
	/* runtime.c: identity, probes, descriptors; constant once created */
	unsigned long page_size;
	unsigned int page_shift;
	unsigned int pmd_order;
	pid_t pid;
	int maps_fd;		/* /proc/self/maps, for PROCMAP_QUERY */
	int pagemap_fd;		/* /proc/self/pagemap, for PAGEMAP_SCAN */
	uint64_t scan_mask;	/* PAGEMAP_SCAN categories this kernel knows */
	unsigned int flags;	/* UHMM_FEAT_* */
	int uffd;		/* -1 when none */
	int uffd_path;
	int uffd_err;
	uint64_t uffd_avail;	/* features the kernel offers */
	uint64_t uffd_features;	/* features enabled on uffd */
	uint64_t uffd_ioctls;
	int evfd;		/* shutdown signal for the readers */
	const struct uhmm_hooks *hooks;

	/* monitor.c: two readers that read the uffd (and serve the CPU
	 * faults they read) and a worker that runs the invalidations, so
	 * that a callback that triggers an event never blocks the only
	 * reader. */
	_Atomic bool threads;
	pthread_t reader;
	pthread_t worker;
	pthread_t reader2;
	void *stacks[3];	/* theirs, from uhmm_alloc()'s arena */
	pthread_mutex_t qlock;
	pthread_cond_t qcond;	/* worker: queue not empty / stop */
	pthread_cond_t qread;	/* a reader has read a batch */
	struct uffd_msg evq[EVQ_LEN];
	unsigned int qhead, qtail;
	bool qoverflow;
	bool qstop;
	int in_read;		/* readers inside read(2) */
	_Atomic unsigned long read_seq;	/* bumped before each read(2) */
	int running;		/* monitor threads that have started */
	uint64_t nread;		/* batches read, under qlock */
	pthread_mutex_t rlock;	/* readers: read() to queueing, in turn */
	pthread_rwlock_t movelock;	/* readers (exclusive) vs movers */

	/* notifier.c: the mmu_notifier_subscriptions counterpart. subs is
	 * sorted by start and changes only while no invalidation runs
	 * (active == 0 or the sequence is even). */
	pthread_mutex_t lock;
	pthread_cond_t wq;
	unsigned long invalidate_seq;
	unsigned long active;
	struct uhmm_interval_notifier **subs;
	size_t nsubs, subs_cap;
	struct uhmm_interval_notifier *deferred;

	/* track.c: what is registered, what range_fault handed out */
	pthread_mutex_t tlock;
	struct ivset grants;	/* access reported, for revalidation */
	struct ivset regs;	/* ranges registered on uffd */
	struct ivset noreg;	/* VMAs that cannot be registered */
	_Atomic bool forked;	/* fork() happened since start */
	unsigned long fork_inv;	/* invalidations held open across fork */

	/* pagemap.c */
	_Atomic bool has_coherent_pages;	/* a coherent page was mapped */

	/* stage.c: 4 KiB and 2 MiB staging slots */
	pthread_mutex_t mlock;	/* staging set-up */
	pthread_mutex_t stage_lock;
	void *stage;		/* staging pages, registered WP */
	uint8_t *stage_state;
	unsigned long stage_hint;
	void *hstage;		/* 2 MiB slots (MADV_HUGEPAGE), whole THPs */
	uint8_t *hstage_state;
	unsigned long hstage_hint;

	/* pstate.c: VPN -> device page | flags, and its stripe locks */
	void *_Atomic st_root;
	struct stripe stripes[UHMM_STRIPES];
	_Atomic bool has_device_pages;

	/* fork.c: migrations in flight, and a fork waiting for them */
	pthread_mutex_t gate_lock;
	pthread_cond_t gate_cond;
	unsigned long mig_inflight;
	unsigned long evict_pages;	/* collected by evictions, not finalized */
	unsigned int fork_pending;	/* forks and execs being prepared */

	/* fault.c: read-ahead */
	_Atomic unsigned long last_fault_vpn;
	_Atomic unsigned long ra_pages;
};

static inline bool uhmm__aligned(const struct uhmm_rt *rt, unsigned long a)
{
	return (a & (rt->page_size - 1)) == 0;
}

/* ---- runtime.c ---- */

/* The runtime, created on first use; NULL with *err set on failure. */
UHMM_INTERNAL struct uhmm_rt *uhmm__rt_get(int *err);
/* The runtime if there is one (a monitor thread's own, first). */
UHMM_INTERNAL struct uhmm_rt *uhmm__rt_peek(void);
/* uhmm_shutdown(): unpublish the runtime (NULL if none), then free it. */
UHMM_INTERNAL struct uhmm_rt *uhmm__rt_unpublish(void);
UHMM_INTERNAL void uhmm__rt_free(struct uhmm_rt *rt);
/* The VMA that contains @addr or the next one (PROCMAP_QUERY). */
UHMM_INTERNAL int uhmm__vma_query(struct uhmm_rt *rt, unsigned long addr,
				  struct os_procmap_query *q);
/* A monitor thread of @rt starts (its uhmm__rt_peek() is @rt). */
UHMM_INTERNAL void uhmm__rt_enter_monitor(struct uhmm_rt *rt);
/* On a monitor thread (a reader or the worker). There, a userfaultfd
 * call that meets an unread event (EAGAIN) must not wait for a reader to
 * read it (it may be the only one free): it fails, noted for the caller. */
UHMM_INTERNAL bool uhmm__on_monitor(void);
UHMM_INTERNAL void uhmm__note_eagain(void);
UHMM_INTERNAL bool uhmm__take_eagain(void);

/* ---- monitor.c ---- */

UHMM_INTERNAL int uhmm__monitor_init(struct uhmm_rt *rt);
UHMM_INTERNAL void uhmm__monitor_destroy(struct uhmm_rt *rt);
/* Start the readers and the worker; with rt->tlock held. */
UHMM_INTERNAL int uhmm__rt_start_threads(struct uhmm_rt *rt);
UHMM_INTERNAL void uhmm__rt_stop_threads(struct uhmm_rt *rt);
/* Until no reader is between read() and the end of its early event. */
UHMM_INTERNAL void uhmm__wait_readers(struct uhmm_rt *rt);
/* Until a reader has read one more batch (after EAGAIN), or 10 ms. */
UHMM_INTERNAL void uhmm__wait_events_read(struct uhmm_rt *rt);
/* Until every event read so far has run its invalidations. */
UHMM_INTERNAL void uhmm__sync_events(struct uhmm_rt *rt);
/*
 * A mover takes pages into or out of the application's address space;
 * while it holds this no reader reads, so a mapping change meanwhile
 * makes its userfaultfd calls fail with EAGAIN rather than act on a new
 * mapping (monitor.c). Nests. No driver callback, no madvise or munmap
 * of a registered range, no wait for a reader inside.
 */
UHMM_INTERNAL void uhmm__mover_begin(struct uhmm_rt *rt);
UHMM_INTERNAL void uhmm__mover_end(struct uhmm_rt *rt);
UHMM_INTERNAL bool uhmm__in_mover(void);
/* After EAGAIN, outermost mover on an application thread: let the
 * readers read and apply what is pending, then hold again (the caller
 * re-checks its entries). False elsewhere: the caller gives up. */
UHMM_INTERNAL bool uhmm__mover_yield(struct uhmm_rt *rt);
/* Let the hold go for something that may wait for a reader (false when
 * nested: the caller does without), then take it again. */
UHMM_INTERNAL bool uhmm__mover_pause(struct uhmm_rt *rt);
UHMM_INTERNAL void uhmm__mover_resume(struct uhmm_rt *rt);

/* ---- uffd.c: the userfaultfd error model (EAGAIN, EEXIST, ENOENT) ---- */

UHMM_INTERNAL int uhmm__uffd_copy(struct uhmm_rt *rt, unsigned long dst,
				  unsigned long src, unsigned long len,
				  uint64_t mode);
UHMM_INTERNAL int uhmm__uffd_zeropage(struct uhmm_rt *rt, unsigned long dst,
				      unsigned long len, uint64_t mode);
UHMM_INTERNAL int uhmm__uffd_move(struct uhmm_rt *rt, unsigned long dst,
				  unsigned long src, unsigned long len,
				  uint64_t mode);

#endif /* UHMM_RT_H */
