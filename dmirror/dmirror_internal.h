/* SPDX-License-Identifier: MIT */
/*
 * dmirror's private header, included only by the .c files of dmirror/:
 * the structs the device's files share, its shared globals and the
 * prototypes of its cross-file functions. Never installed; dmirror itself
 * uses only the public API (the headers of include/uhmm/), nothing from
 * src/.
 */
#ifndef UHMM_DMIRROR_INTERNAL_H
#define UHMM_DMIRROR_INTERNAL_H

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <uhmm/uhmm.h>
#include <uhmm/migrate.h>
#include <uhmm/dma.h>
#include <uhmm/dmirror.h>

/*
 * Every non-static symbol of dmirror carries the uhmm__dmirror_ prefix
 * (libuhmm.a exports every non-static symbol) and stays out of libuhmm.so.
 */
#define DMIRROR_INTERNAL __attribute__((visibility("hidden")))

#define DMIRROR_NDEVICES	4

/* Pages per uhmm_range_fault() call in a fault round (kernel: 32). */
#define DMIRROR_FAULT_CHUNK	512
/*
 * Pages per uhmm_range_fault() call in a SNAPSHOT: its cost per call is
 * microseconds, per THP page a fraction of a nanosecond. The array stays
 * below malloc's mmap threshold (128 KiB), so that it comes from the heap
 * and never lands in a hole the application left in its address space.
 */
#define DMIRROR_SNAP_CHUNK	8192
/* HMM_RANGE_DEFAULT_TIMEOUT: bound on -EBUSY retries, in nanoseconds. */
#define DMIRROR_TIMEOUT_NS	1000000000ULL
/* Copies that fault under the device before READ/WRITE give up. */
#define DMIRROR_COPY_RETRIES	3
/* Passes of a READ whose checked pages were invalidated before -EBUSY. */
#define DMIRROR_READ_RESTARTS	64

/* Device memory comes and grows in chunks of this size (kernel: 256 MiB). */
#define DMIRROR_CHUNK_BYTES	(64UL << 20)
/* uhmm pagemaps hold at most 64 chunks. */
#define DMIRROR_MAX_CHUNKS	64
/* Pages per migrate_vma call (kernel: PTRS_PER_PTE). */
#define DMIRROR_MIGRATE_CHUNK	512
/* A device THP: pages per block of device memory. */
#define DMIRROR_BLOCK_PAGES	512UL
/* Pages per uhmm_migrate_device_range() call when evicting. */
#define DMIRROR_EVICT_CHUNK	2048
/* Allocation attempts for the faulting page, which must not be skipped. */
#define DMIRROR_FAULT_ALLOC_TRIES 4

/*
 * An entry for a page the device holds exclusively (the kernel's
 * DPT_XA_TAG_ATOMIC): a sticky bit the core leaves to drivers. Its frame
 * is where uhmm_make_device_exclusive() put the page.
 */
#define DMIRROR_PFN_ATOMIC	UHMM_PFN_P2PDMA_BUS

/* Entries that name device memory rather than a system page. */
#define DMIRROR_PFN_DEVICE	(UHMM_PFN_DEVICE_PRIVATE | \
				 UHMM_PFN_DEVICE_COHERENT)

/*
 * The device page table: a radix tree keyed by virtual page number, whose
 * leaves hold the uhmm_range_fault() value of each page (0: no entry).
 * Every node has PT_FANOUT slots; the root has 1 << top_bits. Addresses
 * at or above 1 << DMIRROR_VA_BITS cannot be mapped on Linux (LA57 user
 * space ends at 1 << 56), so the table does not cover them.
 */
#define DMIRROR_VA_BITS		57
#define PT_BITS			9
#define PT_FANOUT		(1UL << PT_BITS)
#define PT_MASK			(PT_FANOUT - 1)

struct dmirror_pt {
	void **root;
	unsigned int levels;	/* inner levels, the root included, >= 1 */
	uint64_t limit;		/* VPNs covered: [0, limit) */
};

/*
 * One device, shared by every open of its number in this process (the
 * kernel's struct dmirror_device). Its address is the owner cookie for
 * uhmm_range_fault() and for MIGRATE invalidations.
 */
struct uhmm_dmirror;

struct dmirror_device {
	int id;
	unsigned int refs;	/* opens; under dmirror_table.lock */
	/*
	 * Device memory and the list of opens. Lock order: dev->lock, then
	 * an open's dm->lock; never the other way, and never held across a
	 * call into uhmm that can run callbacks or free pages.
	 */
	pthread_mutex_t lock;
	struct uhmm_dmirror *opens;	/* linked through dm->dev_next */
	/*
	 * Device-private memory, created at the first migration: a uhmm
	 * pagemap (owner: this object) and, per chunk, a buffer that holds
	 * the pages' data (the kernel's dmirror backs private pages with
	 * system RAM too). uhmm_page_data() of a page is its storage.
	 */
	struct uhmm_pagemap *pgmap;
	unsigned long chunk_pages;
	unsigned int nchunks;
	char *mem[DMIRROR_MAX_CHUNKS];
	unsigned long *free;	/* stack of free page indices */
	unsigned long nfree;
	/*
	 * Memory comes in blocks of DMIRROR_BLOCK_PAGES (a THP's worth):
	 * free whole blocks are handed out as device THPs, or broken into
	 * base pages when the free stack runs out. A block out as a THP
	 * comes back when its last page does (blk_out).
	 */
	unsigned long *blk_free;
	unsigned long nblk_free;
	uint16_t *blk_out;	/* per block: THP pages still out, or 0 */
	uint64_t calloc;	/* pages handed out */
	uint64_t cfree;		/* pages given back */
	/* The device's DMA engine: every migration copy goes through it. */
	struct uhmm_dma *dma;
	struct dmirror_device *orphan_next;	/* on dmirror_table.orphans */
};

/* A transfer list: copies coalesce when both sides run on. */
struct dmirror_xfer {
	struct uhmm_dma_desc *d;
	size_t n;
};

/* One open (the kernel's per-file struct dmirror). */
struct uhmm_dmirror {
	struct dmirror_device *dev;
	struct uhmm_dmirror *dev_next;	/* under dev->lock */
	/* NULL once uhmm_shutdown() has released and freed it. */
	struct uhmm_interval_notifier *notifier;	/* under dm->lock */
	unsigned long nend;	/* end of the notifier's range */
	unsigned long gen;	/* dmirror_gen at open */
	struct dmirror_pt pt;	/* under dm->lock */
	uint64_t inv_count;	/* under dm->lock: invalidations that
				 * cleared entries */
	uint64_t flags;		/* under dm->lock: the FLAGS value */
	/*
	 * Under dm->lock: invalidation callbacks run so far, and that count
	 * at the last EXCLUSIVE invalidation this open asked for
	 * (uhmm_make_device_exclusive() with owner dm). Not the sequence:
	 * invalidations open at the same time share one.
	 */
	uint64_t inv_calls, excl_mark;
	/*
	 * A SNAPSHOT chunk's pfns, kept between commands (fresh memory of
	 * that size costs more page faults than the snapshot itself); NULL
	 * while a command uses it. Under dm->lock.
	 */
	uint64_t *snap_pfns;
	/*
	 * The driver lock of the read_begin/read_retry protocol (the
	 * kernel's dmirror->mutex). The device copies through its page
	 * table with it held, so an invalidation waits for device accesses
	 * in flight.
	 */
	pthread_mutex_t lock;
};

/* Entries [from, to) of @leaf; true stops the walk. */
typedef bool (*pt_leaf_fn)(uint64_t *leaf, uint64_t from, uint64_t to,
			   void *arg);

typedef int (*dmirror_chunk_fn)(struct uhmm_dmirror *dm,
				const struct uhmm_range *range, unsigned long n,
				void *arg);

/* ---- dmirror.c: set-up, devices and opens, commands ---- */

DMIRROR_INTERNAL extern unsigned long uhmm__dmirror_page_size;
DMIRROR_INTERNAL extern unsigned int uhmm__dmirror_page_shift;
DMIRROR_INTERNAL uint64_t uhmm__dmirror_now_ns(void);
DMIRROR_INTERNAL bool uhmm__dmirror_stale(const struct uhmm_dmirror *dm);

/* ---- pt.c: the device page table ---- */

DMIRROR_INTERNAL int uhmm__dmirror_pt_init(struct dmirror_pt *pt);
DMIRROR_INTERNAL uint64_t *uhmm__dmirror_pt_leaf(const struct dmirror_pt *pt,
						 uint64_t vpn);
DMIRROR_INTERNAL uint64_t *uhmm__dmirror_pt_leaf_alloc(struct dmirror_pt *pt,
						       uint64_t vpn);
DMIRROR_INTERNAL bool uhmm__dmirror_pt_walk(const struct dmirror_pt *pt,
					    uint64_t s, uint64_t e,
					    pt_leaf_fn fn, void *arg);
DMIRROR_INTERNAL bool uhmm__dmirror_pt_clear(struct dmirror_pt *pt,
					     uint64_t s, uint64_t e,
					     const void *keep_dev,
					     bool keep_coherent);
DMIRROR_INTERNAL bool uhmm__dmirror_pt_clear_dev(struct dmirror_pt *pt);
DMIRROR_INTERNAL void uhmm__dmirror_pt_destroy(struct dmirror_pt *pt);
DMIRROR_INTERNAL uint64_t uhmm__dmirror_pt_scan(const struct dmirror_pt *pt,
						uint64_t vpn, uint64_t n,
						uint64_t need);

/* ---- mirror.c: invalidation, fault rounds, SNAPSHOT ---- */

DMIRROR_INTERNAL extern const struct uhmm_interval_notifier_ops
	uhmm__dmirror_notifier_ops;
DMIRROR_INTERNAL int uhmm__dmirror_notifier_get(struct uhmm_dmirror *dm);
DMIRROR_INTERNAL int uhmm__dmirror_walk(struct uhmm_dmirror *dm,
					unsigned long start, unsigned long end,
					uint64_t default_flags,
					dmirror_chunk_fn fn, void *arg);
DMIRROR_INTERNAL int uhmm__dmirror_fault(struct uhmm_dmirror *dm,
					 unsigned long start,
					 unsigned long end, bool write);
DMIRROR_INTERNAL void uhmm__dmirror_snap_bytes_init(void);
DMIRROR_INTERNAL int uhmm__dmirror_snapshot(struct uhmm_dmirror *dm,
					    struct uhmm_dmirror_cmd *cmd,
					    unsigned long start,
					    unsigned long end);

/* ---- rw.c: READ, WRITE, read-back, byte-granular access ---- */

DMIRROR_INTERNAL void uhmm__dmirror_buf_prefault(uint64_t ptr, uint64_t len);
DMIRROR_INTERNAL int uhmm__dmirror_read(struct uhmm_dmirror *dm,
					struct uhmm_dmirror_cmd *cmd,
					unsigned long start, unsigned long end);
DMIRROR_INTERNAL int uhmm__dmirror_write(struct uhmm_dmirror *dm,
					 struct uhmm_dmirror_cmd *cmd,
					 unsigned long start,
					 unsigned long end);
DMIRROR_INTERNAL int uhmm__dmirror_read_back(struct uhmm_dmirror *dm,
					     struct uhmm_dmirror_cmd *cmd,
					     unsigned long start);

/* ---- devmem.c: device memory, DMA transfers, migrate_to_ram, eviction ---- */

DMIRROR_INTERNAL extern atomic_ulong uhmm__dmirror_dev_pages;
/* Initial-exec, as every thread-local of the library: no __tls_get_addr. */
DMIRROR_INTERNAL extern __thread const struct dmirror_device
	*uhmm__dmirror_tl_coherent_out
	__attribute__((tls_model("initial-exec")));
DMIRROR_INTERNAL void uhmm__dmirror_xfer_add(struct dmirror_xfer *x, void *dst,
					     const void *src, size_t len);
DMIRROR_INTERNAL int uhmm__dmirror_xfer_run(struct dmirror_device *dev,
					    struct dmirror_xfer *x);
DMIRROR_INTERNAL bool uhmm__dmirror_coherent(const struct dmirror_device *dev);
DMIRROR_INTERNAL struct uhmm_page *
uhmm__dmirror_page_alloc(struct dmirror_device *dev);
DMIRROR_INTERNAL struct uhmm_page *
uhmm__dmirror_folio_alloc(struct dmirror_device *dev);
DMIRROR_INTERNAL bool uhmm__dmirror_fail_alloc(struct uhmm_dmirror *dm);
DMIRROR_INTERNAL int uhmm__dmirror_to_sys_copy(struct dmirror_device *dev,
					       struct uhmm_dmirror *dm,
					       struct uhmm_migrate *m,
					       struct uhmm_page *fault_page);
DMIRROR_INTERNAL int uhmm__dmirror_migrate_setup(struct uhmm_migrate *m,
						 unsigned long start,
						 unsigned long end,
						 uint64_t *src, uint64_t *dst,
						 const void *owner,
						 unsigned long flags,
						 struct uhmm_page *fault_page);
DMIRROR_INTERNAL int uhmm__dmirror_dev_evict(struct dmirror_device *dev);

/* ---- migrate.c: MIGRATE_TO_DEV/SYS, EXCLUSIVE, CHECK_EXCLUSIVE ---- */

DMIRROR_INTERNAL int uhmm__dmirror_exclusive(struct uhmm_dmirror *dm,
					     struct uhmm_dmirror_cmd *cmd,
					     unsigned long start,
					     unsigned long end);
DMIRROR_INTERNAL int uhmm__dmirror_check_exclusive(struct uhmm_dmirror *dm,
						   unsigned long start,
						   unsigned long end);
DMIRROR_INTERNAL int uhmm__dmirror_migrate_to_dev(struct uhmm_dmirror *dm,
						  struct uhmm_dmirror_cmd *cmd,
						  unsigned long start,
						  unsigned long end);
DMIRROR_INTERNAL int uhmm__dmirror_migrate_to_sys(struct uhmm_dmirror *dm,
						  struct uhmm_dmirror_cmd *cmd,
						  unsigned long start,
						  unsigned long end);

#endif /* UHMM_DMIRROR_INTERNAL_H */
