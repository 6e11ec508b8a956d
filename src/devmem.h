/* SPDX-License-Identifier: MIT */
/*
 * Layer 3 of src/ (docs/design.md): device memory and the per-page state
 * of the address space.
 *
 *   pagemap.c  pagemaps, chunks, device pages and their references,
 *              coherent frames (mm/memremap.c)
 *   stage.c    staging slots, where a page waits outside the address
 *              space during a migration, and putting one back
 *   pstate.c   the per-page state table, VPN -> entry: what the kernel
 *              keeps in non-present PTEs (device-private and
 *              device-exclusive entries, include/linux/leafops.h); its
 *              stripe locks; the entries following munmap and mremap
 *
 * Includes only mirror.h (layer 3: notifier, track) and below.
 * Never installed.
 */
#ifndef UHMM_DEVMEM_H
#define UHMM_DEVMEM_H

#include <uhmm/migrate.h>
#include "mirror.h"

/* ---- pagemap.c ---- */

/* 16-aligned: bit 3 of a state entry tells a page from a claim cell. */
struct __attribute__((aligned(16))) uhmm_page {
	struct uhmm_pagemap *pgmap;
	unsigned long index;
	_Atomic unsigned int refs;
	void *data;
	void *mem;			/* coherent: its frame's home (pool) */
	struct uhmm_page *head;		/* of the device THP it is part of */
	/* The fault (its message's read sequence) that claimed it (BUSY)
	 * and whose migrate_to_ram has not collected it yet, or 0; under
	 * the stripe lock of its address. */
	unsigned long fault_claim;
	_Atomic unsigned long vpn;	/* where it is mapped; 0 when not */
	bool evicting;			/* collected by an eviction (fork.c) */
	_Atomic unsigned long mig_seq;	/* rt->read_seq when it went there */
};

#define PGMAP_MAX_CHUNKS 64

struct uhmm_pagemap {
	enum uhmm_memory_type type;
	const void *owner;
	const struct uhmm_pagemap_ops *ops;
	pthread_mutex_t lock;
	_Atomic unsigned long putting;	/* uhmm_page_put()s and fault-backs in progress */
	unsigned long npages;
	unsigned int nchunks;
	struct {
		struct uhmm_page *pages;
		unsigned long first, n;
		void *pool;		/* coherent: the chunk's frames */
	} chunk[PGMAP_MAX_CHUNKS];
};

static inline bool is_coherent(const struct uhmm_page *p)
{
	return p->pgmap->type == UHMM_MEMORY_DEVICE_COHERENT;
}

/* A device-private page as a frame: its address / 8 (8-aligned). */
static inline uint64_t page_frame(const struct uhmm_page *p)
{
	return (uint64_t)(uintptr_t)p >> 3;
}

static inline struct uhmm_page *frame_page(uint64_t frame)
{
	return (struct uhmm_page *)(uintptr_t)(frame << 3);
}

/* A coherent page's frame from @addr to its pool slot (isolation). */
UHMM_INTERNAL int uhmm__coherent_isolate(struct uhmm_rt *rt,
					 struct uhmm_page *p,
					 unsigned long addr);
/* Map a coherent page's frame at @addr (pte_none there), no wake. */
UHMM_INTERNAL int uhmm__coherent_install(struct uhmm_rt *rt,
					 struct uhmm_page *p,
					 unsigned long addr);

/* ---- stage.c ---- */

#define STAGE_PAGES (1024UL * 1024)	/* 4 GiB of address space (no memory) */
#define HSTAGE_SLOTS 1024UL		/* 2 GiB of address space (no memory) */
#define PMD_BYTES (2UL << 20)
#define PMD_PAGES 512UL

/* Slot states: EMPTY (pte_none: a MOVE destination), FULL (a page: a
 * copy destination), USED (held by a migration) with either. */
enum { SLOT_EMPTY = 0, SLOT_FULL = 1, SLOT_USED = 2 };

UHMM_INTERNAL int uhmm__stage_init(struct uhmm_rt *rt);
UHMM_INTERNAL void uhmm__stage_destroy(struct uhmm_rt *rt);
/* Set the staging regions up on first use (under rt->mlock). */
UHMM_INTERNAL int uhmm__stage_setup(struct uhmm_rt *rt);
/* @n contiguous 4 KiB slots in state @want (SLOT_EMPTY or SLOT_FULL). */
UHMM_INTERNAL long uhmm__stage_alloc(struct uhmm_rt *rt, unsigned long n,
				     int want);
UHMM_INTERNAL void uhmm__stage_free(struct uhmm_rt *rt, unsigned long i,
				    bool full);
/* A 2 MiB slot in state @want. */
UHMM_INTERNAL long uhmm__hstage_alloc(struct uhmm_rt *rt, int want);
UHMM_INTERNAL void uhmm__hstage_free(struct uhmm_rt *rt, unsigned long i,
				     bool full);
/* Put the page of slot @slot at @addr (pte_none there), no wake. */
UHMM_INTERNAL int uhmm__stage_install(struct uhmm_rt *rt, unsigned long addr,
				      unsigned long slot, bool *emptied);

static inline unsigned long hstage_addr(const struct uhmm_rt *rt,
					unsigned long i)
{
	return (uintptr_t)rt->hstage + i * PMD_BYTES;
}

static inline long hstage_index(const struct uhmm_rt *rt, unsigned long addr)
{
	unsigned long base = (uintptr_t)rt->hstage;

	if (!rt->hstage || addr < base || addr >= base + HSTAGE_SLOTS * PMD_BYTES)
		return -1;
	return (long)((addr - base) / PMD_BYTES);
}

/*
 * Slot numbers from STAGE_PAGES on name the 4 KiB pages of the 2 MiB
 * slots: per-page code handles a THP split after isolation like any
 * page; its 2 MiB slot is given back as a whole (finalize).
 */
static inline unsigned long stage_addr(const struct uhmm_rt *rt,
				       unsigned long i)
{
	if (i >= STAGE_PAGES)
		return (uintptr_t)rt->hstage + ((i - STAGE_PAGES) << rt->page_shift);
	return (uintptr_t)rt->stage + (i << rt->page_shift);
}

static inline long stage_index(const struct uhmm_rt *rt, unsigned long addr)
{
	unsigned long base = (uintptr_t)rt->stage;

	if (addr >= base && addr < base + (STAGE_PAGES << rt->page_shift))
		return (long)((addr - base) >> rt->page_shift);
	if (hstage_index(rt, addr) >= 0)
		return (long)(STAGE_PAGES + ((addr - (uintptr_t)rt->hstage) >> rt->page_shift));
	return -1;
}

static inline bool hslot_of(unsigned long slot)
{
	return slot >= STAGE_PAGES && slot - STAGE_PAGES < HSTAGE_SLOTS * PMD_PAGES;
}

/* ---- pstate.c: the per-page state entry ----
 *
 *   0                       nothing of uhmm's: the page tables decide
 *   page                    a device page (struct uhmm_page *, 16-aligned)
 *                           mapped here: device-private (pte_none here,
 *                           MISSING faults to uhmm) or coherent (its frame
 *                           mapped here)
 *   slot << 3 | EXCL        exclusive to a device; the page waits in
 *                           staging slot `slot` (device-exclusive entry)
 *   | BUSY                  claimed by a migration or a fault-back: CPU
 *                           faults wait
 *   cell | CELL | BUSY      a claim of a page that is not a device page (a
 *                           system page being isolated or migrated, an
 *                           exclusive page being taken or given back):
 *                           cell is the claim's owner's _Atomic unsigned
 *                           long, 16-aligned, holding the claim's VPN
 *
 * A claim follows its mapping: mremap moves the entry, and the claim's
 * VPN with it (a device page's vpn, a cell), as the kernel's migration
 * entries move with the page tables and remove_migration_ptes() finds
 * them by rmap. The owner looks its claim up there, never at the address
 * it claimed; an entry there that is not its claim (replaced by a
 * MAP_FIXED mremap) counts as dropped.
 *   | DROP                  its mapping went away (munmap, MADV_DONTNEED);
 *                           what it holds is given back, never installed
 *                           here again
 */
#define ENT_BUSY ((uintptr_t)1)
#define ENT_DROP ((uintptr_t)2)
#define ENT_EXCL ((uintptr_t)4)
#define ENT_FLAGS (ENT_BUSY | ENT_DROP | ENT_EXCL)
#define ENT_CELL ((uintptr_t)8)		/* not with EXCL: bit 3 of a slot */

static inline bool ent_busy(uintptr_t v) { return v & ENT_BUSY; }
static inline bool ent_dropped(uintptr_t v) { return v & ENT_DROP; }
static inline bool ent_exclusive(uintptr_t v) { return v & ENT_EXCL; }
/* Dropped and no longer claimed: what is here now is new. */
static inline bool ent_released(uintptr_t v)
{
	return (v & ENT_DROP) && !(v & ENT_BUSY);
}
/* The claim cell it names, or NULL. */
static inline _Atomic unsigned long *ent_cell(uintptr_t v)
{
	return (v & (ENT_EXCL | ENT_CELL)) == ENT_CELL ?
	       (_Atomic unsigned long *)(v & ~(ENT_FLAGS | ENT_CELL)) : NULL;
}
static inline uintptr_t ent_mk_cell(_Atomic unsigned long *cell)
{
	return (uintptr_t)cell | ENT_CELL | ENT_BUSY;
}
/* The device page it names, or NULL (none, exclusive, or a cell). */
static inline struct uhmm_page *ent_page(uintptr_t v)
{
	return (v & (ENT_EXCL | ENT_CELL)) ? NULL :
	       (struct uhmm_page *)(v & ~ENT_FLAGS);
}
/* Whether @v is the claim @claim (a munmap may have added DROP). */
static inline bool ent_is_claim(uintptr_t v, uintptr_t claim)
{
	return (v & ~ENT_DROP) == claim;
}
/* A device page mapped here and nothing else (no flag). */
static inline struct uhmm_page *ent_plain_page(uintptr_t v)
{
	return (v & ENT_FLAGS) ? NULL : (struct uhmm_page *)v;
}
static inline unsigned long ent_excl_slot(uintptr_t v) { return v >> 3; }
static inline uintptr_t ent_mk_excl(unsigned long slot)
{
	return ((uintptr_t)slot << 3) | ENT_EXCL;
}
static inline uintptr_t ent_mk_page(const struct uhmm_page *p)
{
	return (uintptr_t)p;
}

#define ST_BITS 9
#define ST_FAN (1u << ST_BITS)

typedef void (*st_fn)(struct uhmm_rt *rt, unsigned long vpn,
		      _Atomic uintptr_t *e, void *arg);

UHMM_INTERNAL int uhmm__pst_init(struct uhmm_rt *rt);
UHMM_INTERNAL void uhmm__pst_destroy(struct uhmm_rt *rt);
/* The entry of @vpn; with @alloc, its leaf is created (NULL: -ENOMEM).
 * Entries of one 2 MiB block are consecutive in one leaf. */
UHMM_INTERNAL _Atomic uintptr_t *uhmm__pst_entry(struct uhmm_rt *rt,
						 unsigned long vpn, bool alloc);
UHMM_INTERNAL uintptr_t uhmm__pst_get(struct uhmm_rt *rt, unsigned long vpn);
/* @fn for every non-zero entry of [lo, hi) (VPNs), no lock held. */
UHMM_INTERNAL void uhmm__pst_walk(struct uhmm_rt *rt, unsigned long lo,
				  unsigned long hi, st_fn fn, void *arg);
/* Update an entry: under its stripe lock, waking its waiters. */
UHMM_INTERNAL void uhmm__pst_set(struct uhmm_rt *rt, unsigned long vpn,
				 _Atomic uintptr_t *e, uintptr_t v);
/*
 * Give up (v 0) or settle (v) the claim @claim wherever it is now: *where
 * is its VPN (a claim cell, a device page's vpn), which mremap changes.
 * A DROP the entry got meanwhile stays on a non-zero @v. Returns the
 * entry it replaced, 0 if the claim is no longer in the table (replaced).
 */
UHMM_INTERNAL uintptr_t uhmm__pst_settle(struct uhmm_rt *rt,
					 _Atomic unsigned long *where,
					 uintptr_t claim, uintptr_t v);
/* Wake the faults waiting on entries of [start, end) (addresses). */
UHMM_INTERNAL void uhmm__pst_wake(struct uhmm_rt *rt, unsigned long start,
				  unsigned long end);
/* Device pages are (or were) in the table: lookups are worth doing. */
UHMM_INTERNAL void uhmm__pst_note_device(struct uhmm_rt *rt);
/* Give back what a dropped entry held (device page or staging slot). */
UHMM_INTERNAL void uhmm__pst_release(struct uhmm_rt *rt, uintptr_t v);
/* range_fault: the device-private / coherent page at @addr, or NULL. */
UHMM_INTERNAL struct uhmm_page *uhmm__device_page_at(struct uhmm_rt *rt,
						     unsigned long addr);
UHMM_INTERNAL struct uhmm_page *uhmm__coherent_page_at(struct uhmm_rt *rt,
						    unsigned long addr);
/* On a reader: munmap/madvise drop the entries, mremap moves them. */
UHMM_INTERNAL void uhmm__pst_event(struct uhmm_rt *rt, const struct uffd_msg *m);
/* On the worker: give dropped entries of [start, end) back. */
UHMM_INTERNAL void uhmm__pst_release_range(struct uhmm_rt *rt,
					   unsigned long start,
					   unsigned long end);

/* The stripe lock of @vpn's 2 MiB block. */
static inline struct stripe *pst_stripe(struct uhmm_rt *rt, unsigned long vpn)
{
	return &rt->stripes[(vpn >> 9) % UHMM_STRIPES];
}

#endif /* UHMM_DEVMEM_H */
