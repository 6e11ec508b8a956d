/* SPDX-License-Identifier: MIT */
/*
 * Library-internal declarations: the per-process runtime (the counterpart
 * of the kernel's mm plus its mmu_notifier_subscriptions) and the helpers
 * shared between runtime.c, notifier.c, track.c, range.c, guard.c, uffd.c.
 * Never installed.
 */
#ifndef UHMM_INTERNAL_H
#define UHMM_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <linux/userfaultfd.h>

#include <uhmm/uhmm.h>
#include "os.h"
#include "stats.h"

#define UHMM_INTERNAL __attribute__((visibility("hidden")))

/* Access granted by range_fault in a tracked interval (track.c). */
#define TRACK_R		1u
#define TRACK_W		2u
#define TRACK_SHARED	4u

struct ival {
	unsigned long start;
	unsigned long end;
	unsigned int prot;	/* TRACK_* */
};

/* A sorted set of disjoint intervals, each with a value. */
struct ivset {
	struct ival *v;
	size_t n;
	size_t cap;
};

struct uhmm_interval_notifier {
	unsigned long start;
	unsigned long end;	/* exclusive; start + length */
	const struct uhmm_interval_notifier_ops *ops;
	void *priv;
	struct uhmm_rt *rt;
	_Atomic unsigned long invalidate_seq;
	bool in_tree;		/* in rt->subs (not a deferred add) */
	bool deferred_add;
	bool deferred_remove;
	struct uhmm_interval_notifier *dnext;	/* rt->deferred list */
};

#define EVQ_LEN 1024
#define UHMM_STRIPES 64

struct stripe {
	pthread_mutex_t lock;
	pthread_cond_t cond;
};

struct uhmm_rt {
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
	int evfd;		/* shutdown signal for the reader */

	/* Monitor threads (runtime.c): a reader that only reads the uffd
	 * and a worker that runs the invalidations, so that a callback
	 * that triggers an event can never block the only reader. */
	_Atomic bool threads;
	pthread_t reader;
	pthread_t worker;
	pthread_t reader2;
	void *stacks[3];	/* theirs, from the heap */
	pthread_mutex_t qlock;
	pthread_cond_t qcond;	/* worker: queue not empty / stop */
	pthread_cond_t qread;	/* the reader has read a batch */
	struct uffd_msg evq[EVQ_LEN];
	unsigned int qhead, qtail;
	bool qoverflow;
	bool qstop;
	int in_read;		/* readers inside read(2) */
	_Atomic unsigned long read_seq;	/* bumped before each read(2) */
	int running;		/* monitor threads that have started */
	uint64_t nread;		/* batches read, under qlock */

	/* Interval notifiers (notifier.c), the mmu_notifier_subscriptions
	 * counterpart. subs is sorted by start and changes only while no
	 * invalidation runs (active == 0 or the sequence is even). */
	pthread_mutex_t lock;
	pthread_cond_t wq;
	unsigned long invalidate_seq;
	unsigned long active;
	struct uhmm_interval_notifier **subs;
	size_t nsubs, subs_cap;
	struct uhmm_interval_notifier *deferred;

	/* What range_fault handed out (track.c). */
	pthread_mutex_t tlock;
	struct ivset grants;	/* access reported, for revalidation */
	struct ivset regs;	/* ranges registered on uffd */
	struct ivset noreg;	/* VMAs that cannot be registered */
	_Atomic bool forked;	/* fork() happened since start */
	struct ivset missing;	/* ranges registered MISSING (migration) */

	/* Device memory and migration (migrate.c). */
	void *_Atomic st_root;	/* VPN -> device page | BUSY */
	struct stripe stripes[UHMM_STRIPES];
	_Atomic bool has_device_pages;
	_Atomic bool has_coherent_pages;	/* a coherent page was mapped */
	/* Migrations in flight, and a fork waiting for them (gate). */
	pthread_mutex_t gate_lock;
	pthread_cond_t gate_cond;
	unsigned long mig_inflight;
	bool fork_pending;
	pthread_mutex_t mlock;	/* staging set-up */
	pthread_mutex_t rlock;	/* readers: read() to queueing, in turn */
	pthread_mutex_t stage_lock;
	void *stage;		/* staging pages, registered WP */
	uint8_t *stage_state;
	unsigned long stage_hint;
	/* 2 MiB staging slots (MADV_HUGEPAGE) for whole THPs (COMPOUND) */
	void *hstage;
	uint8_t *hstage_state;
	unsigned long hstage_hint;
	_Atomic unsigned long last_fault_vpn;	/* read-ahead */
	_Atomic unsigned long ra_pages;
	unsigned long fork_inv;	/* invalidations held open across fork */
};

/* runtime.c */
UHMM_INTERNAL struct uhmm_rt *uhmm__rt_get(int *err);
UHMM_INTERNAL struct uhmm_rt *uhmm__rt_peek(void);
UHMM_INTERNAL int uhmm__rt_start_threads(struct uhmm_rt *rt);

/* notifier.c */
UHMM_INTERNAL void uhmm__invalidate(struct uhmm_rt *rt, unsigned long start,
				    unsigned long end,
				    enum uhmm_notifier_event event,
				    const void *owner);
UHMM_INTERNAL bool uhmm__inv_begin(struct uhmm_rt *rt,
				   const struct uhmm_notifier_range *r);
UHMM_INTERNAL void uhmm__inv_end(struct uhmm_rt *rt);
UHMM_INTERNAL void uhmm__release_all(struct uhmm_rt *rt);
UHMM_INTERNAL bool uhmm__sub_valid(const struct uhmm_interval_notifier *sub,
				   struct uhmm_rt *rt);

/* track.c */
UHMM_INTERNAL int uhmm__ivset_set(struct ivset *s, unsigned long start,
				  unsigned long end, unsigned int prot);
UHMM_INTERNAL bool uhmm__ivset_covers(const struct ivset *s,
				      unsigned long start, unsigned long end);
UHMM_INTERNAL void uhmm__ivset_free(struct ivset *s);
UHMM_INTERNAL int uhmm__track_vma(struct uhmm_rt *rt,
				  const struct os_procmap_query *q,
				  unsigned long start, unsigned long end);
UHMM_INTERNAL void uhmm__track_event_early(struct uhmm_rt *rt, const struct uffd_msg *m);
UHMM_INTERNAL void uhmm__track_event(struct uhmm_rt *rt,
				     const struct uffd_msg *m);
UHMM_INTERNAL void uhmm__track_overflow(struct uhmm_rt *rt);
UHMM_INTERNAL int uhmm__revalidate(struct uhmm_rt *rt, unsigned long start,
				   unsigned long end);
UHMM_INTERNAL void uhmm__fork_prepare(struct uhmm_rt *rt);
UHMM_INTERNAL void uhmm__fork_parent(struct uhmm_rt *rt);

/* range.c */
UHMM_INTERNAL int uhmm__vma_query(struct uhmm_rt *rt, unsigned long addr,
				  struct os_procmap_query *q);

/* migrate.c */
struct uhmm_page;
UHMM_INTERNAL void uhmm__handle_fault(struct uhmm_rt *rt, unsigned long addr,
				      bool write, unsigned long read_seq);
UHMM_INTERNAL struct uhmm_page *uhmm__device_page_at(struct uhmm_rt *rt,
						     unsigned long addr);
/* Whether [start, end) overlaps uhmm_alloc()'s arena (never migrated). */
UHMM_INTERNAL bool uhmm__alloc_owns(unsigned long start, unsigned long end);
UHMM_INTERNAL struct uhmm_page *uhmm__coherent_page_at(struct uhmm_rt *rt,
						    unsigned long addr);
UHMM_INTERNAL void uhmm__device_event(struct uhmm_rt *rt, const struct uffd_msg *m);
UHMM_INTERNAL void uhmm__device_release(struct uhmm_rt *rt, unsigned long start,
					unsigned long end);
UHMM_INTERNAL void uhmm__device_fork(struct uhmm_rt *rt);

/* guard.c */
UHMM_INTERNAL int uhmm__guard_install(void);

/* uffd.c: the userfaultfd error model (EAGAIN, EEXIST, ENOENT) */
UHMM_INTERNAL int uhmm__uffd_copy(struct uhmm_rt *rt, unsigned long dst,
				  unsigned long src, unsigned long len,
				  uint64_t mode);
UHMM_INTERNAL int uhmm__uffd_zeropage(struct uhmm_rt *rt, unsigned long dst,
				      unsigned long len, uint64_t mode);
UHMM_INTERNAL int uhmm__uffd_move(struct uhmm_rt *rt, unsigned long dst,
				  unsigned long src, unsigned long len,
				  uint64_t mode);
UHMM_INTERNAL void uhmm__wait_events_read(struct uhmm_rt *rt);
/* On a monitor thread (a reader or the worker). There, a userfaultfd
 * call that meets an unread event (EAGAIN) must not wait for a reader to
 * read it (it may be the only one free): it fails, noted for the caller. */
/* After fork (parent): migrations may start again. */
UHMM_INTERNAL void uhmm__device_fork_done(struct uhmm_rt *rt);
UHMM_INTERNAL bool uhmm__on_monitor(void);
UHMM_INTERNAL void uhmm__note_eagain(void);
UHMM_INTERNAL bool uhmm__take_eagain(void);
UHMM_INTERNAL void uhmm__sync_events(struct uhmm_rt *rt);
UHMM_INTERNAL void uhmm__wait_readers(struct uhmm_rt *rt);

static inline bool uhmm__aligned(const struct uhmm_rt *rt, unsigned long a)
{
	return (a & (rt->page_size - 1)) == 0;
}

#endif /* UHMM_INTERNAL_H */
