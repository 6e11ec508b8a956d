/* SPDX-License-Identifier: MIT */
/*
 * Device memory (pagemaps, device pages), the per-page state of the
 * address space (which pages live on a device), migrate_vma and the CPU
 * fault-back of device-private pages.
 *
 * A page on a device is pte_none at its application address, in a range
 * registered MISSING on the runtime's userfaultfd: a CPU access faults to
 * a monitor thread (uhmm__handle_fault), which calls the owner's
 * migrate_to_ram. Isolation and installation move pages with UFFDIO_MOVE
 * between the application and uhmm's staging pages: no CPU copy, and the
 * staging pages circulate warm (a page moved out to go to a device is the
 * page the next migration back to system memory fills).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <uhmm/migrate.h>
#include "internal.h"

/* ---- device pages ---- */

struct uhmm_page {
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
	_Atomic unsigned long mig_seq;	/* rt->read_seq when it went there */
};

#define PGMAP_MAX_CHUNKS 64

struct uhmm_pagemap {
	enum uhmm_memory_type type;
	const void *owner;
	const struct uhmm_pagemap_ops *ops;
	pthread_mutex_t lock;
	_Atomic unsigned long putting;	/* uhmm_page_put()s in progress */
	unsigned long npages;
	unsigned int nchunks;
	struct {
		struct uhmm_page *pages;
		unsigned long first, n;
		void *pool;		/* coherent: the chunk's frames */
	} chunk[PGMAP_MAX_CHUNKS];
};

/*
 * Coherent device memory is a pool of anonymous frames of uhmm's, one
 * slot per device page, registered on the runtime's userfaultfd (WP
 * mode: nothing traps) so that UFFDIO_MOVE can put a frame in and take
 * it out. A page on the device is its frame mapped at the application's
 * address (the CPU addresses it directly); while the page is free or
 * isolated for a migration, the frame sits in its pool slot, which
 * uhmm_page_addr() names. Pool slots of mapped pages are empty.
 */
static void *pool_create(struct uhmm_rt *rt, unsigned long n, int *err)
{
	size_t len = n << rt->page_shift;
	void *p = uhmm__os_mmap(NULL, len, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0, err);

	if (p == MAP_FAILED)
		return NULL;
	uhmm__os_madvise(p, len, MADV_NOHUGEPAGE);
	*err = uhmm__os_uffd_register(rt->uffd, (uintptr_t)p, len,
				UFFDIO_REGISTER_MODE_WP, NULL);
	if (*err) {
		uhmm__os_munmap(p, len);
		return NULL;
	}
	return p;
}

static int chunk_add(struct uhmm_pagemap *pg, unsigned long n, long *first)
{
	struct uhmm_rt *rt = uhmm__rt_peek();
	struct uhmm_page *p;
	void *pool = NULL;
	int err = 0;

	if (pg->nchunks == PGMAP_MAX_CHUNKS)
		return -ENOSPC;
	if (n > (SIZE_MAX >> 16))
		return -EINVAL;
	p = uhmm_calloc(n, sizeof(*p));
	if (!p)
		return -ENOMEM;
	if (pg->type == UHMM_MEMORY_DEVICE_COHERENT) {
		pool = pool_create(rt, n, &err);
		if (!pool) {
			uhmm_free(p);
			return err;
		}
	}
	for (unsigned long i = 0; i < n; i++) {
		p[i].pgmap = pg;
		p[i].index = pg->npages + i;
		if (pool)
			p[i].mem = (char *)pool + (i << rt->page_shift);
	}
	pg->chunk[pg->nchunks].pool = pool;
	pg->chunk[pg->nchunks].pages = p;
	pg->chunk[pg->nchunks].first = pg->npages;
	pg->chunk[pg->nchunks].n = n;
	*first = (long)pg->npages;
	pg->nchunks++;
	pg->npages += n;
	return 0;
}

int uhmm_pagemap_create(enum uhmm_memory_type type, const void *owner,
			const struct uhmm_pagemap_ops *ops, unsigned long npages,
			struct uhmm_pagemap **out)
{
	struct uhmm_pagemap *pg;
	long first;
	int err = 0;

	struct uhmm_rt *rt;

	if (!out || !ops || !ops->page_free || !npages)
		return -EINVAL;
	if (type != UHMM_MEMORY_DEVICE_PRIVATE &&
	    type != UHMM_MEMORY_DEVICE_COHERENT)
		return -EINVAL;
	/* The CPU never faults on coherent memory: no migrate_to_ram. */
	if (type == UHMM_MEMORY_DEVICE_PRIVATE && !ops->migrate_to_ram)
		return -EINVAL;
	rt = uhmm__rt_get(&err);
	if (!rt)
		return err;
	if (type == UHMM_MEMORY_DEVICE_COHERENT) {
		if (rt->uffd < 0 || !(rt->uffd_features & UFFD_FEATURE_MOVE))
			return -ENOSYS;
		pthread_mutex_lock(&rt->tlock);
		err = uhmm__rt_start_threads(rt);
		pthread_mutex_unlock(&rt->tlock);
		if (err)
			return err;
	}
	pg = uhmm_calloc(1, sizeof(*pg));
	if (!pg)
		return -ENOMEM;
	pg->type = type;
	pg->owner = owner;
	pg->ops = ops;
	pthread_mutex_init(&pg->lock, NULL);
	err = chunk_add(pg, npages, &first);
	if (err) {
		uhmm_free(pg);
		return err;
	}
	*out = pg;
	return 0;
}

long uhmm_pagemap_grow(struct uhmm_pagemap *pg, unsigned long npages)
{
	long first;
	int r;

	if (!pg || !npages)
		return -EINVAL;
	pthread_mutex_lock(&pg->lock);
	r = chunk_add(pg, npages, &first);
	pthread_mutex_unlock(&pg->lock);
	return r ? r : first;
}

unsigned long uhmm_pagemap_npages(const struct uhmm_pagemap *pg)
{
	return pg ? pg->npages : 0;
}

struct uhmm_page *uhmm_pagemap_page(struct uhmm_pagemap *pg, unsigned long index)
{
	if (!pg)
		return NULL;
	for (unsigned int c = 0; c < pg->nchunks; c++)
		if (index >= pg->chunk[c].first &&
		    index - pg->chunk[c].first < pg->chunk[c].n)
			return &pg->chunk[c].pages[index - pg->chunk[c].first];
	return NULL;
}

int uhmm_pagemap_destroy(struct uhmm_pagemap *pg)
{
	if (!pg)
		return -EINVAL;
	for (unsigned int c = 0; c < pg->nchunks; c++)
		for (unsigned long i = 0; i < pg->chunk[c].n; i++)
			if (atomic_load(&pg->chunk[c].pages[i].refs))
				return -EBUSY;
	while (atomic_load_explicit(&pg->putting, memory_order_acquire))
		uhmm__os_yield();
	for (unsigned int c = 0; c < pg->nchunks; c++) {
		uhmm_free(pg->chunk[c].pages);
		if (pg->chunk[c].pool)
			uhmm__os_munmap(pg->chunk[c].pool, pg->chunk[c].n << uhmm__rt_peek()->page_shift);
	}
	pthread_mutex_destroy(&pg->lock);
	uhmm_free(pg);
	return 0;
}

struct uhmm_pagemap *uhmm_page_pgmap(const struct uhmm_page *p)
{
	return p ? p->pgmap : NULL;
}

unsigned long uhmm_page_index(const struct uhmm_page *p)
{
	return p ? p->index : 0;
}

const void *uhmm_page_owner(const struct uhmm_page *p)
{
	return p ? p->pgmap->owner : NULL;
}

void *uhmm_page_data(const struct uhmm_page *p)
{
	return p ? p->data : NULL;
}

void *uhmm_page_addr(const struct uhmm_page *p)
{
	return p ? p->mem : NULL;
}

void uhmm_page_set_data(struct uhmm_page *p, void *data)
{
	if (p)
		p->data = data;
}

void uhmm_page_init(struct uhmm_page *p)
{
	uhmm__stat_add(UHMM__STAT_device_pages_in_use, p != NULL);
	if (p) {
		p->head = NULL;
		atomic_store(&p->refs, 1);
	}
}

unsigned int uhmm_page_order(const struct uhmm_page *p)
{
	return p && p->head ? 9 : 0;
}

void uhmm_page_get(struct uhmm_page *p)
{
	if (p)
		atomic_fetch_add(&p->refs, 1);
}

/*
 * The pagemap counts puts in progress: a page_free callback still running
 * when the last reference is gone must finish before
 * uhmm_pagemap_destroy() frees the pages (the kernel's pgmap reference).
 */
void uhmm_page_put(struct uhmm_page *p)
{
	struct uhmm_pagemap *pg;

	if (!p)
		return;
	pg = p->pgmap;
	atomic_fetch_add(&pg->putting, 1);
	if (atomic_fetch_sub(&p->refs, 1) == 1) {
		uhmm__stat_add(UHMM__STAT_device_pages_in_use, (uint64_t)-1);
		pg->ops->page_free(p);
	}
	atomic_fetch_sub_explicit(&pg->putting, 1, memory_order_release);
}

unsigned int uhmm_page_refcount(const struct uhmm_page *p)
{
	return p ? atomic_load(&p->refs) : 0;
}

/* A device page as a frame: its address / 8 (structs are 8-aligned). */
static inline uint64_t page_frame(const struct uhmm_page *p)
{
	return (uint64_t)(uintptr_t)p >> 3;
}

static struct uhmm_page *coherent_at(struct uhmm_rt *rt, unsigned long vpn);

struct uhmm_page *uhmm_pfn_to_page(uint64_t pfn)
{
	struct uhmm_rt *rt;

	if (pfn & UHMM_PFN_DEVICE_PRIVATE)
		return (struct uhmm_page *)(uintptr_t)((pfn & UHMM_PFN_FRAME_MASK) << 3);
	/* A coherent page's frame is its virtual page number. */
	if (!(pfn & UHMM_PFN_DEVICE_COHERENT) || !(rt = uhmm__rt_peek()))
		return NULL;
	return coherent_at(rt, pfn & UHMM_PFN_FRAME_MASK);
}

uint64_t uhmm_migrate_pfn_device(const struct uhmm_page *p)
{
	return (page_frame(p) << UHMM_MIGRATE_PFN_SHIFT) |
	       UHMM_MIGRATE_PFN_DEVICE | UHMM_MIGRATE_PFN_VALID;
}

struct uhmm_page *uhmm_migrate_pfn_to_page(uint64_t mpfn)
{
	if (!(mpfn & UHMM_MIGRATE_PFN_DEVICE) || !(mpfn & UHMM_MIGRATE_PFN_VALID))
		return NULL;
	return (struct uhmm_page *)(uintptr_t)((mpfn >> UHMM_MIGRATE_PFN_SHIFT) << 3);
}

void *uhmm_migrate_pfn_to_addr(uint64_t mpfn)
{
	struct uhmm_rt *rt = uhmm__rt_peek();

	if ((mpfn & UHMM_MIGRATE_PFN_DEVICE) || !(mpfn & UHMM_MIGRATE_PFN_VALID) || !rt)
		return NULL;
	return (void *)(uintptr_t)((mpfn >> UHMM_MIGRATE_PFN_SHIFT) << rt->page_shift);
}

/* ---- per-page state: VPN -> device page, with a BUSY bit ---- */

/*
 * A radix tree over virtual page numbers, 4 levels of 512. Nodes are
 * added with compare-and-swap and never freed while the runtime lives,
 * so lookups take no lock. Values change under the stripe lock of their
 * 2 MiB block; waiters for a BUSY page sleep on the stripe's condition.
 */
#define ST_BITS 9
#define ST_FAN (1u << ST_BITS)
#define ST_BUSY ((uintptr_t)1)
/* The mapping at this address went away (munmap, MADV_DONTNEED): the
 * device page is released, never installed here again. */
#define ST_DROP ((uintptr_t)2)
/* Exclusive to a device: the page sits in staging slot (value >> 3). */
#define ST_EXCL ((uintptr_t)4)
#define ST_FLAGS (ST_BUSY | ST_DROP | ST_EXCL)

struct st_node {
	_Atomic(void *) slot[ST_FAN];
};

static _Atomic uintptr_t *st_entry(struct uhmm_rt *rt, unsigned long vpn, bool alloc)
{
	_Atomic(void *) *slot = (_Atomic(void *) *)&rt->st_root;

	for (int l = 3; l >= 0; l--) {
		void *n = atomic_load_explicit(slot, memory_order_acquire);

		if (!n) {
			void *fresh;

			if (!alloc)
				return NULL;
			fresh = uhmm_calloc(1, sizeof(struct st_node));
			if (!fresh)
				return NULL;
			if (!atomic_compare_exchange_strong(slot, &n, fresh))
				uhmm_free(fresh);
			else
				n = fresh;
		}
		if (l == 0)
			return (_Atomic uintptr_t *)&((struct st_node *)n)
				->slot[vpn & (ST_FAN - 1)];
		slot = &((struct st_node *)n)->slot[(vpn >> (ST_BITS * l)) & (ST_FAN - 1)];
	}
	return NULL;
}

static uintptr_t st_get(struct uhmm_rt *rt, unsigned long vpn)
{
	_Atomic uintptr_t *e = st_entry(rt, vpn, false);

	return e ? atomic_load_explicit(e, memory_order_acquire) : 0;
}

static struct stripe *stripe_of(struct uhmm_rt *rt, unsigned long vpn)
{
	return &rt->stripes[(vpn >> 9) % UHMM_STRIPES];
}

typedef void (*st_fn)(struct uhmm_rt *rt, unsigned long vpn,
		      _Atomic uintptr_t *e, void *arg);

/* Call @fn for every leaf slot in [lo, hi) under existing nodes. */
static void st_walk_node(struct uhmm_rt *rt, void *n, int l, unsigned long base,
			 unsigned long lo, unsigned long hi, st_fn fn, void *arg)
{
	unsigned long span = 1ul << (ST_BITS * l);

	for (unsigned long i = 0; i < ST_FAN; i++) {
		unsigned long b = base + i * span;
		_Atomic(void *) *slot = &((struct st_node *)n)->slot[i];

		if (b + span <= lo || b >= hi)
			continue;
		if (l == 0) {
			if (atomic_load_explicit((_Atomic uintptr_t *)slot,
						 memory_order_acquire))
				fn(rt, b, (_Atomic uintptr_t *)slot, arg);
			continue;
		}
		void *c = atomic_load_explicit(slot, memory_order_acquire);

		if (c)
			st_walk_node(rt, c, l - 1, b, lo, hi, fn, arg);
	}
}

static void st_walk(struct uhmm_rt *rt, unsigned long lo, unsigned long hi,
		    st_fn fn, void *arg)
{
	void *root = atomic_load_explicit(&rt->st_root, memory_order_acquire);

	if (root && lo < hi)
		st_walk_node(rt, root, 3, 0, lo, hi, fn, arg);
}

static inline bool is_coherent(const struct uhmm_page *p)
{
	return p->pgmap->type == UHMM_MEMORY_DEVICE_COHERENT;
}

/* The device-private page at @addr, for range_fault (NULL when none or
 * busy). */
struct uhmm_page *uhmm__device_page_at(struct uhmm_rt *rt, unsigned long addr)
{
	uintptr_t v;

	if (!atomic_load_explicit(&rt->has_device_pages, memory_order_relaxed))
		return NULL;
	v = st_get(rt, addr >> rt->page_shift);
	if (!v || (v & ST_FLAGS) || is_coherent((struct uhmm_page *)v))
		return NULL;
	return (struct uhmm_page *)v;
}

/* The coherent page mapped at @vpn, or NULL. */
static struct uhmm_page *coherent_at(struct uhmm_rt *rt, unsigned long vpn)
{
	uintptr_t v;

	if (!atomic_load_explicit(&rt->has_coherent_pages, memory_order_relaxed))
		return NULL;
	v = st_get(rt, vpn);
	if (!v || (v & ST_FLAGS) || !is_coherent((struct uhmm_page *)v))
		return NULL;
	return (struct uhmm_page *)v;
}

struct uhmm_page *uhmm__coherent_page_at(struct uhmm_rt *rt, unsigned long addr)
{
	return coherent_at(rt, addr >> rt->page_shift);
}

/* ---- staging pages ---- */

/*
 * A region of uhmm's, registered (write-protect mode, so nothing traps)
 * so that it can be the destination of UFFDIO_MOVE. Slot states: EMPTY
 * (pte_none: a MOVE destination) or FULL (a page: a copy destination).
 */
#define STAGE_PAGES (1024UL * 1024)	/* 4 GiB of address space (no memory) */
enum { SLOT_EMPTY = 0, SLOT_FULL = 1, SLOT_USED = 2 };

/*
 * Staging for whole THPs: 2 MiB-aligned slots in a MADV_HUGEPAGE region,
 * so that UFFDIO_MOVE moves a PMD in or out whole, and a copy into an
 * empty slot gets a huge page. Same states as the 4 KiB slots.
 */
#define HSTAGE_SLOTS 1024UL	/* 2 GiB of address space (no memory) */
#define PMD_BYTES (2UL << 20)
#define PMD_PAGES 512UL

static void hstage_init(struct uhmm_rt *rt)
{
	size_t len = HSTAGE_SLOTS * PMD_BYTES;
	uintptr_t a, b;
	int err;
	void *p;

	if (rt->page_size != 4096)
		return;
	p = uhmm__os_mmap(NULL, len + PMD_BYTES, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0, &err);
	if (p == MAP_FAILED)
		return;
	a = (uintptr_t)p;
	b = (a + PMD_BYTES - 1) & ~(PMD_BYTES - 1);
	if (b > a)
		uhmm__os_munmap(p, b - a);
	if (a + PMD_BYTES > b)
		uhmm__os_munmap((void *)(b + len), a + PMD_BYTES - b);
	rt->hstage_state = uhmm_calloc(HSTAGE_SLOTS, 1);
	if (!rt->hstage_state ||
	    uhmm__os_madvise((void *)b, len, MADV_HUGEPAGE) ||
	    uhmm__os_uffd_register(rt->uffd, b, len, UFFDIO_REGISTER_MODE_WP, NULL)) {
		uhmm_free(rt->hstage_state);
		rt->hstage_state = NULL;
		uhmm__os_munmap((void *)b, len);
		return;
	}
	rt->hstage = (void *)b;
}

static inline unsigned long hstage_addr(struct uhmm_rt *rt, unsigned long i)
{
	return (uintptr_t)rt->hstage + i * PMD_BYTES;
}

static inline long hstage_index(struct uhmm_rt *rt, unsigned long addr)
{
	unsigned long base = (uintptr_t)rt->hstage;

	if (!rt->hstage || addr < base || addr >= base + HSTAGE_SLOTS * PMD_BYTES)
		return -1;
	return (long)((addr - base) / PMD_BYTES);
}

/* A 2 MiB slot: EMPTY for a MOVE into it, FULL (warm) first for a copy. */
static long hstage_reclaim(struct uhmm_rt *rt);

static long hstage_alloc(struct uhmm_rt *rt, int want)
{
	long r = -ENOMEM;

	if (!rt->hstage)
		return -ENOMEM;
	pthread_mutex_lock(&rt->stage_lock);
	for (int pass = 0; pass < 2 && r < 0; pass++) {
		for (unsigned long k = 0; k < HSTAGE_SLOTS; k++) {
			unsigned long i = (rt->hstage_hint + k) % HSTAGE_SLOTS;
			uint8_t st = __atomic_load_n(&rt->hstage_state[i], __ATOMIC_ACQUIRE);

			if ((st & SLOT_USED) || (pass == 0 && st != want))
				continue;
			if (pass == 1 && want == SLOT_EMPTY)
				break;
			__atomic_store_n(&rt->hstage_state[i], st | SLOT_USED,
					 __ATOMIC_RELAXED);
			rt->hstage_hint = i + 1;
			r = (long)i;
			break;
		}
	}
	pthread_mutex_unlock(&rt->stage_lock);
	if (r < 0 && want == SLOT_EMPTY)
		r = hstage_reclaim(rt);
	return r;
}

/* No EMPTY slot: empty a FULL one (its warm huge page goes). */
static long hstage_reclaim(struct uhmm_rt *rt)
{
	long r = -ENOMEM;

	pthread_mutex_lock(&rt->stage_lock);
	for (unsigned long i = 0; i < HSTAGE_SLOTS; i++) {
		if (__atomic_load_n(&rt->hstage_state[i], __ATOMIC_ACQUIRE) == SLOT_FULL) {
			__atomic_store_n(&rt->hstage_state[i], SLOT_FULL | SLOT_USED,
					 __ATOMIC_RELAXED);
			r = (long)i;
			break;
		}
	}
	pthread_mutex_unlock(&rt->stage_lock);
	if (r >= 0)
		uhmm__os_madvise((void *)hstage_addr(rt, (unsigned long)r), PMD_BYTES,
			   MADV_DONTNEED);
	return r;
}

static void hstage_free(struct uhmm_rt *rt, unsigned long i, bool full)
{
	__atomic_store_n(&rt->hstage_state[i], full ? SLOT_FULL : SLOT_EMPTY,
			 __ATOMIC_RELEASE);
}

static int stage_init(struct uhmm_rt *rt)
{
	int err;
	void *p;

	if (rt->stage)
		return 0;
	p = uhmm__os_mmap(NULL, STAGE_PAGES << rt->page_shift, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0, &err);
	if (p == MAP_FAILED)
		return err;
	uhmm__os_madvise(p, STAGE_PAGES << rt->page_shift, MADV_NOHUGEPAGE);
	rt->stage_state = uhmm_calloc(STAGE_PAGES, 1);
	if (!rt->stage_state) {
		uhmm__os_munmap(p, STAGE_PAGES << rt->page_shift);
		return -ENOMEM;
	}
	err = uhmm__os_uffd_register(rt->uffd, (uintptr_t)p, STAGE_PAGES << rt->page_shift,
			       UFFDIO_REGISTER_MODE_WP, NULL);
	if (err) {
		uhmm_free(rt->stage_state);
		rt->stage_state = NULL;
		uhmm__os_munmap(p, STAGE_PAGES << rt->page_shift);
		return err;
	}
	rt->stage = p;
	hstage_init(rt);	/* without it, THPs migrate as base pages */
	return 0;
}

static inline unsigned long stage_addr(struct uhmm_rt *rt, unsigned long i);

static inline uint8_t slot_get(struct uhmm_rt *rt, unsigned long i)
{
	return __atomic_load_n(&rt->stage_state[i], __ATOMIC_ACQUIRE);
}

static inline void slot_set(struct uhmm_rt *rt, unsigned long i, uint8_t v)
{
	__atomic_store_n(&rt->stage_state[i], v, __ATOMIC_RELAXED);
}

static long stage_find(struct uhmm_rt *rt, unsigned long n, int want)
{
	unsigned long run = 0;

	for (unsigned long k = 0; k < STAGE_PAGES; k++) {
		unsigned long i = (rt->stage_hint + k) % STAGE_PAGES;
		uint8_t s = slot_get(rt, i);
		bool ok = !(s & SLOT_USED) && (want < 0 || s == want);

		if (i == 0)
			run = 0;
		run = ok ? run + 1 : 0;
		if (run == n) {
			unsigned long first = i + 1 - n;

			for (unsigned long j = first; j <= i; j++)
				slot_set(rt, j, slot_get(rt, j) | SLOT_USED);
			rt->stage_hint = i + 1;
			return (long)first;
		}
	}
	return -ENOMEM;
}

/*
 * Staging slots whose page went to a device keep it (FULL): those are
 * the warm pages copies into system memory want. When a MOVE finds no
 * empty slots, give FULL ones back (one MADV_DONTNEED per run).
 */
static void stage_reclaim(struct uhmm_rt *rt)
{
	unsigned long i = 0;

	while (i < STAGE_PAGES) {
		unsigned long j = i;

		while (j < STAGE_PAGES && slot_get(rt, j) == SLOT_FULL)
			j++;
		if (j > i) {
			for (unsigned long k = i; k < j; k++)
				slot_set(rt, k, SLOT_USED);
			pthread_mutex_unlock(&rt->stage_lock);
			uhmm__os_madvise((void *)stage_addr(rt, i), (j - i) << rt->page_shift,
				   MADV_DONTNEED);
			pthread_mutex_lock(&rt->stage_lock);
			for (unsigned long k = i; k < j; k++)
				slot_set(rt, k, SLOT_EMPTY);
		}
		i = j + 1;
	}
}

/*
 * @n contiguous slots: EMPTY ones for a MOVE into them, or, for a copy
 * destination (SLOT_FULL), warm ones first and any after.
 */
static long stage_alloc(struct uhmm_rt *rt, unsigned long n, int want)
{
	long r;

	pthread_mutex_lock(&rt->stage_lock);
	if (want == SLOT_EMPTY) {
		r = stage_find(rt, n, SLOT_EMPTY);
		if (r < 0) {
			stage_reclaim(rt);
			r = stage_find(rt, n, SLOT_EMPTY);
		}
	} else {
		r = stage_find(rt, n, SLOT_FULL);
		if (r < 0)
			r = stage_find(rt, n, -1);
	}
	pthread_mutex_unlock(&rt->stage_lock);
	return r;
}

/*
 * Give a slot back. No lock: only its holder writes a USED slot, and a
 * finder (under stage_lock) that reads it a moment early skips it.
 */
/*
 * Slot numbers from STAGE_PAGES on name the 4 KiB pages of the 2 MiB
 * slots: per-page code handles a THP split after isolation like any
 * page; its 2 MiB slot is given back as a whole (finalize).
 */
static void stage_free(struct uhmm_rt *rt, unsigned long i, bool full)
{
	if (i >= STAGE_PAGES)
		return;
	__atomic_store_n(&rt->stage_state[i], full ? SLOT_FULL : SLOT_EMPTY,
			 __ATOMIC_RELEASE);
}

/*
 * Give back what a dropped entry (its mapping went away) still holds: a
 * device page to its driver, or the staging slot of an exclusive page.
 * The entry itself is the caller's to clear.
 */
static void release_dropped(struct uhmm_rt *rt, uintptr_t v)
{
	struct uhmm_page *p = (struct uhmm_page *)(v & ~ST_FLAGS);

	if (v & ST_EXCL) {
		stage_free(rt, v >> 3, true);
	} else if (p) {
		atomic_store(&p->vpn, 0);
		uhmm_page_put(p);
	}
}

static inline unsigned long stage_addr(struct uhmm_rt *rt, unsigned long i)
{
	if (i >= STAGE_PAGES)
		return (uintptr_t)rt->hstage + ((i - STAGE_PAGES) << rt->page_shift);
	return (uintptr_t)rt->stage + (i << rt->page_shift);
}

static inline long stage_index(struct uhmm_rt *rt, unsigned long addr)
{
	unsigned long base = (uintptr_t)rt->stage;

	if (addr >= base && addr < base + (STAGE_PAGES << rt->page_shift))
		return (long)((addr - base) >> rt->page_shift);
	if (hstage_index(rt, addr) >= 0)
		return (long)(STAGE_PAGES + ((addr - (uintptr_t)rt->hstage) >> rt->page_shift));
	return -1;
}

/*
 * A coherent page's frame from @addr to its pool slot (isolation): the
 * address becomes pte_none, so CPU accesses fault to uhmm and wait. A
 * slot that still holds a frame (its page was installed by copy) is
 * emptied first. A hole at @addr leaves the slot empty: zeros.
 */
static int coherent_isolate(struct uhmm_rt *rt, struct uhmm_page *p,
			    unsigned long addr)
{
	int r = uhmm__uffd_move(rt, (uintptr_t)p->mem, addr, rt->page_size,
				UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES);

	if (r == -EEXIST) {
		uhmm__os_madvise(p->mem, rt->page_size, MADV_DONTNEED);
		r = uhmm__uffd_move(rt, (uintptr_t)p->mem, addr, rt->page_size,
				    UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES);
	}
	return r;
}

/*
 * Map a coherent page's frame at @addr (pte_none there), no wake. A
 * mapping made read-only meanwhile gets a copy (the slot keeps its
 * frame); an empty slot is a page of zeros.
 */
static int coherent_install(struct uhmm_rt *rt, struct uhmm_page *p,
			    unsigned long addr)
{
	int r = uhmm__uffd_move(rt, addr, (uintptr_t)p->mem, rt->page_size,
				UFFDIO_MOVE_MODE_DONTWAKE);

	if (r == -EINVAL || r == -EBUSY || r == -EPERM)
		r = uhmm__uffd_copy(rt, addr, (uintptr_t)p->mem, rt->page_size,
				    UFFDIO_COPY_MODE_DONTWAKE);
	else if (r == -ENOENT)
		r = uhmm__uffd_zeropage(rt, addr, rt->page_size,
					UFFDIO_ZEROPAGE_MODE_DONTWAKE);
	if (r == 0)
		atomic_store_explicit(&rt->has_coherent_pages, true,
				      memory_order_relaxed);
	return r;
}

int uhmm_migrate_alloc_system(uint64_t *mpfn)
{
	struct uhmm_rt *rt = uhmm__rt_peek();
	long i;

	if (!mpfn || !rt || !rt->stage)
		return -EINVAL;
	i = stage_alloc(rt, 1, SLOT_FULL);
	if (i < 0)
		return (int)i;
	*mpfn = ((stage_addr(rt, (unsigned long)i) >> rt->page_shift)
		 << UHMM_MIGRATE_PFN_SHIFT) | UHMM_MIGRATE_PFN_VALID;
	return 0;
}

int uhmm_migrate_alloc_system_compound(uint64_t *mpfn)
{
	struct uhmm_rt *rt = uhmm__rt_peek();
	long h;

	if (!mpfn || !rt || !rt->stage)
		return -EINVAL;
	h = hstage_alloc(rt, SLOT_FULL);
	if (h < 0)
		return (int)h;
	*mpfn = ((hstage_addr(rt, (unsigned long)h) >> rt->page_shift)
		 << UHMM_MIGRATE_PFN_SHIFT) | UHMM_MIGRATE_PFN_VALID |
		UHMM_MIGRATE_PFN_COMPOUND;
	return 0;
}

/* ---- migrate_vma ---- */

/* What uhmm keeps per entry between setup and finalize. */
#define E_SLOT_NONE (~0UL)
#define E_SLOT_COH (~0UL - 2)	/* a coherent page to isolate */

/* What finalize does with a 2 MiB slot the migration used. */
enum { HS_DONTNEED, HS_EMPTY, HS_FULL };

struct mstate {
	unsigned long *slot;	/* staging slot holding the source, per entry */
	bool registered;
	unsigned long nhs;	/* 2 MiB slots in use, and their fate */
	long *hs;
	uint8_t *hs_fate;
	/*
	 * Device pages collected: referenced from setup to the end of
	 * finalize (the kernel's folio_get on collection), so that their
	 * pagemap cannot go while the driver copies them.
	 */
	struct uhmm_page **held;
	unsigned long nheld;
	bool gated;		/* counted in rt->mig_inflight */
};

/*
 * fork must not copy the page tables while a migration has pages out of
 * the application's address space (the child would read holes): the
 * kernel excludes the two with mmap_lock. Migrations a thread starts
 * wait while a fork is being prepared, and the fork waits for those in
 * flight. CPU fault-backs (on monitor threads) pass: the fork's own
 * preparation needs them.
 */
static void gate_enter(struct uhmm_rt *rt)
{
	pthread_mutex_lock(&rt->gate_lock);
	while (rt->fork_pending)
		pthread_cond_wait(&rt->gate_cond, &rt->gate_lock);
	rt->mig_inflight++;
	pthread_mutex_unlock(&rt->gate_lock);
}

static void gate_exit(struct uhmm_rt *rt)
{
	pthread_mutex_lock(&rt->gate_lock);
	if (--rt->mig_inflight == 0)
		pthread_cond_broadcast(&rt->gate_cond);
	pthread_mutex_unlock(&rt->gate_lock);
}

void uhmm__device_fork_done(struct uhmm_rt *rt)
{
	pthread_mutex_lock(&rt->gate_lock);
	rt->fork_pending = false;
	pthread_cond_broadcast(&rt->gate_cond);
	pthread_mutex_unlock(&rt->gate_lock);
}

static void mstate_free(struct uhmm_rt *rt, struct mstate *ms)
{
	if (ms->gated)
		gate_exit(rt);
	uhmm_free(ms->held);
	uhmm_free(ms->slot);
	uhmm_free(ms->hs);
	uhmm_free(ms->hs_fate);
	uhmm_free(ms);
}

static void hs_note(struct mstate *ms, long h, uint8_t fate)
{
	for (unsigned long k = 0; k < ms->nhs; k++) {
		if (ms->hs[k] == h) {
			ms->hs_fate[k] = fate;
			return;
		}
	}
	ms->hs[ms->nhs] = h;
	ms->hs_fate[ms->nhs++] = fate;
}

static struct mstate *mstate_of(struct uhmm_migrate *m)
{
	return (struct mstate *)(uintptr_t)m->_private[0];
}

/* Register [start, end) MISSING|WP once, so device pages fault to us. */
static int ensure_missing(struct uhmm_rt *rt, unsigned long start, unsigned long end)
{
	int r = 0;

	pthread_mutex_lock(&rt->tlock);
	if (!uhmm__ivset_covers(&rt->missing, start, end)) {
		r = uhmm__rt_start_threads(rt);
		if (r == 0)
			r = uhmm__os_uffd_register(rt->uffd, start, end - start,
					     UFFDIO_REGISTER_MODE_MISSING |
					     UFFDIO_REGISTER_MODE_WP, NULL);
		if (r == 0) {
			uhmm__ivset_set(&rt->missing, start, end, 1);
			uhmm__ivset_set(&rt->regs, start, end, 1);
		}
	}
	pthread_mutex_unlock(&rt->tlock);
	return r;
}

/* Wake faults waiting on BUSY pages of [start, end): each 2 MiB block. */
static void wake_stripes(struct uhmm_rt *rt, unsigned long start, unsigned long end)
{
	unsigned long last = (end - 1) >> (rt->page_shift + 9);

	for (unsigned long b = start >> (rt->page_shift + 9); b <= last; b++) {
		struct stripe *s = stripe_of(rt, b << 9);

		pthread_mutex_lock(&s->lock);
		pthread_cond_broadcast(&s->cond);
		pthread_mutex_unlock(&s->lock);
	}
}

/* Move system pages [a, a + n pages) out into slots [slot, slot + n). */
static void isolate_run(struct uhmm_rt *rt, struct uhmm_migrate *m,
			unsigned long a, unsigned long n, unsigned long slot,
			bool writable)
{
	struct mstate *ms = mstate_of(m);
	unsigned int shift = rt->page_shift;
	unsigned long ps = rt->page_size;
	unsigned long done = 0;

	while (done < n) {
		unsigned long src = a + (done << shift);
		unsigned long dst = stage_addr(rt, slot + done);
		int r = uhmm__uffd_move(rt, dst, src, (n - done) << shift,
					UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES);
		unsigned long moved;

		if (r == 0) {
			moved = n - done;
		} else {
			/* Find how far it got: the first page still at src. */
			moved = 0;
			while (moved < n - done) {
				unsigned char vec;
				unsigned long p = src + (moved << shift);

				if (uhmm__os_mincore((void *)p, ps, &vec) == 0 && (vec & 1))
					break;
				moved++;
			}
		}
		for (unsigned long k = 0; k < moved; k++) {
			unsigned long i = ((src - m->start) >> shift) + k;

			ms->slot[i] = slot + done + k;
		}
		done += moved;
		if (done < n && r != 0) {
			/* This page cannot move (shared, pinned): it stays. */
			unsigned long i = ((a - m->start) >> shift) + done;
			_Atomic uintptr_t *e = st_entry(rt, (a >> shift) + done, false);

			m->src[i] = 0;
			if (e)
				atomic_store(e, 0);
			stage_free(rt, slot + done, false);
			done++;
		}
	}
	/* Which slots got a page? One mincore for the run of slots. */
	unsigned char vbuf[512], *vec = n <= sizeof(vbuf) ? vbuf : uhmm_alloc(n);

	if (!vec || uhmm__os_mincore((void *)stage_addr(rt, slot), n << shift, vec))
		vec = NULL;
	for (unsigned long k = 0; k < n; k++) {
		unsigned long i = ((a - m->start) >> shift) + k;
		unsigned long s = ms->slot[i];
		unsigned char v1 = 0;

		if (s == E_SLOT_NONE)
			continue;
		if (vec && s == slot + k)
			v1 = vec[k];
		else
			uhmm__os_mincore((void *)stage_addr(rt, s), ps, &v1);
		m->src[i] = UHMM_MIGRATE_PFN_MIGRATE;
		if (v1 & 1)
			m->src[i] |= ((stage_addr(rt, s) >> shift) << UHMM_MIGRATE_PFN_SHIFT) |
				     UHMM_MIGRATE_PFN_VALID |
				     (writable ? UHMM_MIGRATE_PFN_WRITE : 0);
		m->cpages++;
	}
	if (vec && vec != vbuf)
		uhmm_free(vec);
}

/* Whether the 2 MiB block at @b can move whole: one PMD maps it (a THP,
 * the huge zero page), or no page at all. */
static bool block_whole(struct uhmm_rt *rt, unsigned long b)
{
	struct os_page_region reg[2];
	struct os_pm_scan_arg a = {
		.size = sizeof(a), .start = b, .end = b + PMD_BYTES,
		.vec = (uintptr_t)reg, .vec_len = 2,
		.category_anyof_mask = OS_PAGE_IS_PRESENT,
		.return_mask = OS_PAGE_IS_PRESENT | OS_PAGE_IS_HUGE,
	};
	int n = uhmm__os_pagemap_scan(rt->pagemap_fd, &a);

	if (n == 0)
		return true;
	return n == 1 && reg[0].start == b && reg[0].end == b + PMD_BYTES &&
	       (reg[0].categories & OS_PAGE_IS_HUGE);
}

static inline bool hslot_of(unsigned long slot)
{
	return slot >= STAGE_PAGES && slot - STAGE_PAGES < HSTAGE_SLOTS * PMD_PAGES;
}

/*
 * SELECT_COMPOUND, system memory: every 2 MiB-aligned block of the range
 * whose pages were all claimed and that one PMD maps (or nothing) moves
 * whole into a 2 MiB slot, one UFFDIO_MOVE: src[head] = frame | COMPOUND
 * (VALID unless it was empty), the tail entries 0, as the kernel has it.
 */
static void isolate_blocks(struct uhmm_rt *rt, struct uhmm_migrate *m,
			   bool writable)
{
	struct mstate *ms = mstate_of(m);
	unsigned int shift = rt->page_shift;
	unsigned long first = (m->start + PMD_BYTES - 1) & ~(PMD_BYTES - 1);

	for (unsigned long b = first; b >= first && b + PMD_BYTES <= m->end;
	     b += PMD_BYTES) {
		unsigned long i = (b - m->start) >> shift, k;
		unsigned long ha;
		unsigned char vec[PMD_PAGES];
		bool any = false;
		long h;

		for (k = 0; k < PMD_PAGES && ms->slot[i + k] == E_SLOT_NONE - 1; k++)
			;
		if (k < PMD_PAGES || !block_whole(rt, b))
			continue;
		h = hstage_alloc(rt, SLOT_EMPTY);
		if (h < 0)
			return;
		ha = hstage_addr(rt, (unsigned long)h);
		if (uhmm__uffd_move(rt, ha, b, PMD_BYTES,
				    UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES)) {
			/* Put back what moved; the block goes page by page. */
			uhmm__uffd_move(rt, b, ha, PMD_BYTES,
					UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES |
					UFFDIO_MOVE_MODE_DONTWAKE);
			uhmm__os_madvise((void *)ha, PMD_BYTES, MADV_DONTNEED);
			hstage_free(rt, (unsigned long)h, false);
			continue;
		}
		if (uhmm__os_mincore((void *)ha, PMD_BYTES, vec) == 0) {
			for (k = 0; k < PMD_PAGES && !any; k++)
				any = vec[k] & 1;
		} else {
			any = true;
		}
		for (k = 1; k < PMD_PAGES; k++) {
			ms->slot[i + k] = E_SLOT_NONE;
			m->src[i + k] = 0;
		}
		ms->slot[i] = STAGE_PAGES + (unsigned long)h * PMD_PAGES;
		hs_note(ms, h, any ? HS_DONTNEED : HS_EMPTY);
		m->src[i] = UHMM_MIGRATE_PFN_MIGRATE | UHMM_MIGRATE_PFN_COMPOUND;
		if (any)
			m->src[i] |= ((ha >> shift) << UHMM_MIGRATE_PFN_SHIFT) |
				     UHMM_MIGRATE_PFN_VALID |
				     (writable ? UHMM_MIGRATE_PFN_WRITE : 0);
		m->cpages += PMD_PAGES;
	}
}

/*
 * SELECT_COMPOUND, device memory: a device THP installed whole at an
 * aligned block (its 512 pages in order, all collected) is reported as
 * its head with COMPOUND, the tail entries 0.
 */
static void collect_device_blocks(struct uhmm_rt *rt, struct uhmm_migrate *m)
{
	unsigned int shift = rt->page_shift;
	unsigned long first = (m->start + PMD_BYTES - 1) & ~(PMD_BYTES - 1);

	for (unsigned long b = first; b >= first && b + PMD_BYTES <= m->end;
	     b += PMD_BYTES) {
		unsigned long i = (b - m->start) >> shift, k;
		struct uhmm_page *p0 = uhmm_migrate_pfn_to_page(m->src[i]);

		if (!p0 || !(m->src[i] & UHMM_MIGRATE_PFN_MIGRATE) || p0->head != p0)
			continue;
		for (k = 1; k < PMD_PAGES; k++) {
			struct uhmm_page *pk = uhmm_migrate_pfn_to_page(m->src[i + k]);

			if (!pk || !(m->src[i + k] & UHMM_MIGRATE_PFN_MIGRATE) ||
			    pk->head != p0 || pk->index != p0->index + k)
				break;
		}
		if (k < PMD_PAGES)
			continue;
		m->src[i] |= UHMM_MIGRATE_PFN_COMPOUND;
		for (k = 1; k < PMD_PAGES; k++)
			m->src[i + k] = 0;
	}
}

/*
 * A COMPOUND entry that does not move whole becomes 512 base entries
 * (the kernel splits the folio): src, and dst when it is compound too.
 */
static void split_entry(struct uhmm_rt *rt, struct uhmm_migrate *m,
			unsigned long i)
{
	struct mstate *ms = mstate_of(m);
	uint64_t s = m->src[i] & ~UHMM_MIGRATE_PFN_COMPOUND;
	uint64_t d = m->dst[i];
	struct uhmm_page *sp = uhmm_migrate_pfn_to_page(s);
	struct uhmm_page *dp = uhmm_migrate_pfn_to_page(d);
	unsigned long n = m->npages - i < PMD_PAGES ? m->npages - i : PMD_PAGES;

	for (unsigned long k = 0; k < n; k++) {
		if (sp) {
			sp[k].head = NULL;
			m->src[i + k] = uhmm_migrate_pfn_device(&sp[k]) |
				(s & (UHMM_MIGRATE_PFN_MIGRATE | UHMM_MIGRATE_PFN_WRITE));
		} else {
			m->src[i + k] = (s & UHMM_MIGRATE_PFN_VALID) ?
				s + ((uint64_t)k << UHMM_MIGRATE_PFN_SHIFT) : s;
			if (hslot_of(ms->slot[i]))
				ms->slot[i + k] = ms->slot[i] + k;
		}
		if (!(d & UHMM_MIGRATE_PFN_COMPOUND))
			continue;
		if (dp)
			m->dst[i + k] = uhmm_migrate_pfn_device(&dp[k]) |
				(d & UHMM_MIGRATE_PFN_WRITE);
		else
			m->dst[i + k] = (d & ~UHMM_MIGRATE_PFN_COMPOUND) +
				((uint64_t)k << UHMM_MIGRATE_PFN_SHIFT);
	}
	if (!dp && (d & UHMM_MIGRATE_PFN_COMPOUND)) {
		long h = hstage_index(rt, (uintptr_t)uhmm_migrate_pfn_to_addr(d &
						~UHMM_MIGRATE_PFN_COMPOUND));

		if (h >= 0)
			hs_note(ms, h, HS_DONTNEED);
	}
}

/* Give back the claims setup made on entries [0, upto) (it failed). */
static void unclaim(struct uhmm_rt *rt, struct uhmm_migrate *m, unsigned long upto)
{
	struct mstate *ms = mstate_of(m);

	for (unsigned long i = 0; i < upto; i++) {
		unsigned long vpn = (m->start >> rt->page_shift) + i;
		_Atomic uintptr_t *e = st_entry(rt, vpn, false);
		struct uhmm_page *p = uhmm_migrate_pfn_to_page(m->src[i]);
		struct stripe *s = stripe_of(rt, vpn);

		if (!e)
			continue;
		pthread_mutex_lock(&s->lock);
		if (ms->slot[i] == E_SLOT_NONE - 1)
			atomic_store(e, 0);
		else if (ms->slot[i] == E_SLOT_COH || (p && p != m->fault_page))
			atomic_store(e, atomic_load(e) & ~ST_BUSY);
		/* The faulting page stays its handler's claim. */
		pthread_cond_broadcast(&s->cond);
		pthread_mutex_unlock(&s->lock);
	}
	if (upto)
		uhmm__os_uffd_wake(rt->uffd, m->start, upto << rt->page_shift);
}

int uhmm_migrate_setup(struct uhmm_migrate *m)
{
	struct uhmm_rt *rt;
	struct os_procmap_query q;
	struct mstate *ms;
	unsigned long n, start, end;
	unsigned int shift;
	bool anon, writable;
	int err = 0, r;

	if (!m || !m->src || !m->dst || !m->flags)
		return -EINVAL;
	rt = uhmm__rt_get(&err);
	if (!rt)
		return err;
	start = m->start;
	end = m->end;
	if (start >= end || !uhmm__aligned(rt, start) || !uhmm__aligned(rt, end))
		return -EINVAL;
	if (rt->uffd < 0)
		return -ENOSYS;
	/* A munmap or madvise that returned has dropped its device pages
	 * (its event is read; applied right after the read). */
	if (atomic_load_explicit(&rt->has_device_pages, memory_order_relaxed))
		uhmm__wait_readers(rt);
	uhmm__stat_migrate_begin(m);
	shift = rt->page_shift;
	n = (end - start) >> shift;
	r = uhmm__vma_query(rt, start, &q);
	if (r < 0 || q.vma_start > start || q.vma_end < end)
		return -EINVAL;
	if (q.vma_page_size > rt->page_size)
		return -EINVAL;		/* hugetlb */
	if (m->fault_page && !(m->flags & UHMM_MIGRATE_SELECT_DEVICE_PRIVATE))
		return -EINVAL;
	/* uhmm_alloc()'s arena is never migrated: as unmovable pages. */
	anon = q.inode == 0 && q.dev_major == 0 && q.dev_minor == 0 &&
	       !(q.vma_flags & OS_PROCMAP_QUERY_VMA_SHARED) &&
	       !uhmm__alloc_owns(start, end);
	writable = q.vma_flags & OS_PROCMAP_QUERY_VMA_WRITABLE;

	ms = uhmm_calloc(1, sizeof(*ms));
	if (!ms)
		return -ENOMEM;
	ms->slot = uhmm_alloc(n * sizeof(*ms->slot));
	/* A 2 MiB slot per block, the driver's compound destinations too. */
	ms->hs = uhmm_alloc((n / 512 + 2) * sizeof(*ms->hs));
	ms->hs_fate = uhmm_alloc(n / 512 + 2);
	ms->held = uhmm_alloc(n * sizeof(*ms->held));
	if (!ms->slot || !ms->hs || !ms->hs_fate || !ms->held) {
		mstate_free(rt, ms);
		return -ENOMEM;
	}
	if (!m->fault_page && !uhmm__on_monitor()) {
		gate_enter(rt);
		ms->gated = true;
	}
	for (unsigned long i = 0; i < n; i++)
		ms->slot[i] = E_SLOT_NONE;
	memset(m->src, 0, n * sizeof(*m->src));
	m->cpages = 0;
	m->npages = n;
	m->_private[0] = (uintptr_t)ms;

	/*
	 * Shared or file-backed VMAs: nothing moves (device migration needs
	 * anonymous memory in the kernel too). Read-only ones: device-private
	 * pages come back (installed by copy), but system and coherent pages
	 * stay: UFFDIO_MOVE takes pages out of writable mappings only.
	 */
	if (!anon)
		return 0;

	pthread_mutex_lock(&rt->mlock);
	err = stage_init(rt);
	pthread_mutex_unlock(&rt->mlock);
	if (err)
		goto fail;
	err = ensure_missing(rt, start, end);
	if (err)
		goto fail;
	ms->registered = true;

	/*
	 * Mirrors drop the range before anything moves, and the invalidation
	 * stays open (the sequence odd) until every page claimed is out of
	 * the address space: a range_fault that began before saw the old
	 * state and must retry, and one that begins meanwhile waits in
	 * read_begin (the kernel's invalidate_range_start/end around the
	 * collection). Closed after the claims only, a device round could
	 * map a claimed page still present, and the move then took it from
	 * under the device's entry: its copy through that entry faulted,
	 * with the driver lock held that the fault needed.
	 */
	struct uhmm_notifier_range inv = {
		.start = start, .end = end, .event = UHMM_NOTIFY_MIGRATE,
		.flags = UHMM_NOTIFIER_RANGE_BLOCKABLE, .owner = m->pgmap_owner,
	};

	uhmm__inv_begin(rt, &inv);

	/*
	 * Claim each page: BUSY; remember device pages we collect. A leaf
	 * of the state tree and a stripe both cover one 2 MiB block: one
	 * lookup and one lock per block.
	 */
	struct stripe *s = NULL;
	_Atomic uintptr_t *e = NULL;
	unsigned long ndropped = 0;

	for (unsigned long i = 0; i < n; i++) {
		unsigned long vpn = (start >> shift) + i;
		uintptr_t v;

		if (!s || !(vpn & (ST_FAN - 1))) {
			if (s)
				pthread_mutex_unlock(&s->lock);
			s = NULL;
			e = st_entry(rt, vpn, true);
			if (!e) {
				unclaim(rt, m, i);
				uhmm__inv_end(rt);
				err = -ENOMEM;
				goto fail;
			}
			s = stripe_of(rt, vpn);
			pthread_mutex_lock(&s->lock);
		} else {
			e++;
		}
		v = atomic_load(e);
		if ((v & ST_DROP) && !(v & ST_BUSY)) {
			/*
			 * The mapping it belonged to went away (munmap,
			 * MADV_DONTNEED), and the worker has not given it
			 * back yet: what is here now is new. Given back here.
			 */
			ms->held[n - 1 - ndropped++] = (struct uhmm_page *)v;
			atomic_store(e, 0);
			v = 0;
		}
		if (v & ST_BUSY) {
			struct uhmm_page *p = (struct uhmm_page *)(v & ~ST_BUSY);

			/* Only the page being faulted, by its handler. */
			if (p && p == m->fault_page && p->fault_claim) {
				m->src[i] = uhmm_migrate_pfn_device(p) |
					    UHMM_MIGRATE_PFN_MIGRATE |
					    (writable ? UHMM_MIGRATE_PFN_WRITE : 0);
				m->cpages++;
			}
		} else if (v & (ST_EXCL | ST_DROP)) {
			/* Exclusive to a device, or going away: stays. */
		} else if (v) {
			struct uhmm_page *p = (struct uhmm_page *)v;

			if (p->pgmap->owner != m->pgmap_owner) {
				/* Another device's: stays. */
			} else if (!is_coherent(p)) {
				if (m->flags & UHMM_MIGRATE_SELECT_DEVICE_PRIVATE) {
					atomic_store(e, v | ST_BUSY);
					m->src[i] = uhmm_migrate_pfn_device(p) |
						    UHMM_MIGRATE_PFN_MIGRATE |
						    (writable ? UHMM_MIGRATE_PFN_WRITE : 0);
					m->cpages++;
				}
			} else if ((m->flags & UHMM_MIGRATE_SELECT_DEVICE_COHERENT) &&
				   writable) {
				atomic_store(e, v | ST_BUSY);
				ms->slot[i] = E_SLOT_COH;	/* to isolate */
			}
		} else if ((m->flags & UHMM_MIGRATE_SELECT_SYSTEM) && writable) {
			atomic_store(e, ST_BUSY);
			ms->slot[i] = E_SLOT_NONE - 1;	/* to isolate */
		}
	}
	if (s)
		pthread_mutex_unlock(&s->lock);
	if (m->flags & UHMM_MIGRATE_SELECT_SYSTEM)
		atomic_store(&rt->has_device_pages, true);
	/* The dropped entries met above, kept at the end of held[]. */
	for (unsigned long k = 0; k < ndropped; k++) {
		uintptr_t dv = (uintptr_t)ms->held[n - 1 - k];

		ms->held[n - 1 - k] = NULL;
		release_dropped(rt, dv);
	}

	/* Coherent pages: their frames go home to the pool. */
	for (unsigned long i = 0; i < n; i++) {
		if (ms->slot[i] != E_SLOT_COH)
			continue;
		unsigned long vpn = (start >> shift) + i;
		_Atomic uintptr_t *ce = st_entry(rt, vpn, false);
		struct uhmm_page *p = (struct uhmm_page *)(atomic_load(ce) & ~ST_BUSY);
		struct stripe *cs = stripe_of(rt, vpn);

		ms->slot[i] = E_SLOT_NONE;
		if (coherent_isolate(rt, p, vpn << shift) == 0) {
			m->src[i] = uhmm_migrate_pfn_device(p) |
				    UHMM_MIGRATE_PFN_MIGRATE | UHMM_MIGRATE_PFN_WRITE;
			m->cpages++;
			continue;
		}
		/* Shared copy-on-write with a child, pinned: it stays. */
		pthread_mutex_lock(&cs->lock);
		atomic_store(ce, (uintptr_t)p);
		pthread_cond_broadcast(&cs->cond);
		pthread_mutex_unlock(&cs->lock);
	}

	/* References on the device pages collected (compound: 512). */
	for (unsigned long i = 0; i < n; i++) {
		struct uhmm_page *p = uhmm_migrate_pfn_to_page(m->src[i]);

		if (p && (m->src[i] & UHMM_MIGRATE_PFN_MIGRATE)) {
			uhmm_page_get(p);
			ms->held[ms->nheld++] = p;
		}
	}
	if ((m->flags & UHMM_MIGRATE_SELECT_COMPOUND) && rt->hstage) {
		if (m->flags & UHMM_MIGRATE_SELECT_SYSTEM)
			isolate_blocks(rt, m, writable);
		if (m->flags & UHMM_MIGRATE_SELECT_DEVICE_PRIVATE)
			collect_device_blocks(rt, m);
	}

	/* Move runs of claimed system pages out, in one ioctl each. */
	for (unsigned long i = 0; i < n;) {
		unsigned long j = i;
		long slot;

		if (ms->slot[i] != E_SLOT_NONE - 1) {
			i++;
			continue;
		}
		while (j < n && ms->slot[j] == E_SLOT_NONE - 1)
			j++;
		for (unsigned long k = i; k < j; k++)
			ms->slot[k] = E_SLOT_NONE;
		slot = stage_alloc(rt, j - i, SLOT_EMPTY);
		if (slot < 0) {
			/* No staging room: these pages stay. */
			for (unsigned long k = i; k < j; k++) {
				atomic_store(st_entry(rt, (start >> shift) + k, false), 0);
			}
			i = j;
			continue;
		}
		isolate_run(rt, m, start + (i << shift), j - i, (unsigned long)slot,
			    writable);
		i = j;
	}
	uhmm__inv_end(rt);
	/* The faulting page is this migration's now, no longer a claim its
	 * handler has to give up. */
	if (m->fault_page) {
		unsigned long fvpn = atomic_load(&m->fault_page->vpn);
		struct stripe *fs = stripe_of(rt, fvpn);

		pthread_mutex_lock(&fs->lock);
		for (unsigned long i = 0; i < n; i++)
			if (uhmm_migrate_pfn_to_page(m->src[i]) == m->fault_page)
				m->fault_page->fault_claim = 0;
		pthread_mutex_unlock(&fs->lock);
	}
	return 0;
fail:
	mstate_free(rt, ms);
	m->_private[0] = 0;
	m->cpages = 0;
	return err;
}

/* A COMPOUND source with a COMPOUND destination of the other kind. */
static bool moves_whole(const struct uhmm_migrate *m, unsigned long i)
{
	uint64_t s = m->src[i], d = m->dst[i];
	uint64_t both = UHMM_MIGRATE_PFN_COMPOUND | UHMM_MIGRATE_PFN_VALID;

	return (s & UHMM_MIGRATE_PFN_COMPOUND) && (s & UHMM_MIGRATE_PFN_MIGRATE) &&
	       (d & both) == both && m->npages - i >= PMD_PAGES &&
	       !(s & d & UHMM_MIGRATE_PFN_DEVICE);
}

void uhmm_migrate_pages(struct uhmm_migrate *m)
{
	struct uhmm_rt *rt = uhmm__rt_peek();

	if (!m || !m->src || !m->dst || !mstate_of(m) || !rt)
		return;
	for (unsigned long i = 0; i < m->npages; i++) {
		if (!(m->src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			continue;
		if (m->src[i] & UHMM_MIGRATE_PFN_COMPOUND) {
			if (moves_whole(m, i)) {
				i += PMD_PAGES - 1;
				continue;
			}
			split_entry(rt, m, i);
		}
		if (!(m->dst[i] & UHMM_MIGRATE_PFN_VALID))
			m->src[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
		/* Device to device is not supported. */
		else if ((m->src[i] & UHMM_MIGRATE_PFN_DEVICE) &&
			 (m->dst[i] & UHMM_MIGRATE_PFN_DEVICE))
			m->src[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
	}
}

/*
 * Put the page of staging slot @slot at @addr (pte_none there). MOVE
 * needs the two mappings to have the same protection: a mapping made
 * read-only meanwhile gets a copy instead, and the slot stays full.
 * *emptied says which happened.
 */
static int install(struct uhmm_rt *rt, unsigned long addr, unsigned long slot,
		   bool *emptied)
{
	/* No wake yet: finalize wakes once the page is accounted for. */
	int r = uhmm__uffd_move(rt, addr, stage_addr(rt, slot), rt->page_size,
				UFFDIO_MOVE_MODE_DONTWAKE);

	*emptied = r == 0;
	if (r == -EINVAL || r == -EBUSY || r == -EPERM)
		r = uhmm__uffd_copy(rt, addr, stage_addr(rt, slot), rt->page_size,
				    UFFDIO_COPY_MODE_DONTWAKE);
	return r;
}


/*
 * Device -> system entries [i, j) whose destinations are consecutive
 * staging slots: one MOVE for the run (a MOVE per page costs a system
 * call each). Returns the entries installed from i, 0 if none.
 */
static unsigned long install_run(struct uhmm_rt *rt, struct uhmm_migrate *m,
				 unsigned long i)
{
	unsigned int shift = rt->page_shift;
	long first = -1;
	unsigned long j = i;

	while (j < m->npages) {
		uint64_t src = m->src[j];
		long slot;
		_Atomic uintptr_t *e;

		if (!(src & UHMM_MIGRATE_PFN_MIGRATE) || !uhmm_migrate_pfn_to_page(src))
			break;
		slot = stage_index(rt, (uintptr_t)uhmm_migrate_pfn_to_addr(m->dst[j]));
		if (slot < 0 || (first >= 0 && slot != first + (long)(j - i)))
			break;
		e = st_entry(rt, (m->start >> shift) + j, false);
		if (!e || (atomic_load(e) & ST_DROP))
			break;
		if (first < 0)
			first = slot;
		j++;
	}
	if (j - i < 2)
		return 0;
	if (uhmm__uffd_move(rt, m->start + (i << shift), stage_addr(rt, (unsigned long)first),
			    (j - i) << shift, UFFDIO_MOVE_MODE_DONTWAKE))
		return 0;	/* per page, below, finds what moved */
	for (unsigned long k = i; k < j; k++) {
		unsigned long vpn = (m->start >> shift) + k;
		struct uhmm_page *sp = uhmm_migrate_pfn_to_page(m->src[k]);
		_Atomic uintptr_t *e = st_entry(rt, vpn, false);
		struct stripe *s = stripe_of(rt, vpn);

		stage_free(rt, (unsigned long)first + (k - i), false);
		atomic_store(&sp->vpn, 0);
		pthread_mutex_lock(&s->lock);
		atomic_store(e, 0);
		pthread_mutex_unlock(&s->lock);
		uhmm_page_put(sp);
	}
	return j - i;
}

/*
 * Finalize a COMPOUND entry as a whole: a THP to a device THP (the 512
 * device pages take the block, the source's huge page stays in its slot,
 * warm) or back (one UFFDIO_MOVE of the PMD). Returns false after
 * splitting the entry when it cannot go whole: it did not migrate, the
 * destination is not compound, or part of the mapping went away.
 */
static bool finalize_whole(struct uhmm_rt *rt, struct uhmm_migrate *m,
			   unsigned long i)
{
	struct mstate *ms = mstate_of(m);
	unsigned int shift = rt->page_shift;
	unsigned long addr = m->start + (i << shift), vpn0 = addr >> shift;
	_Atomic uintptr_t *e = st_entry(rt, vpn0, false);
	struct stripe *s = stripe_of(rt, vpn0);
	struct uhmm_page *sp = uhmm_migrate_pfn_to_page(m->src[i]);
	struct uhmm_page *dp = uhmm_migrate_pfn_to_page(m->dst[i]);
	bool drop = !e;

	for (unsigned long k = 0; e && k < PMD_PAGES && !drop; k++)
		drop = atomic_load(&e[k]) & ST_DROP;
	if (drop || !moves_whole(m, i)) {
		split_entry(rt, m, i);
		return false;
	}
	if (!sp) {
		/* System THP (or empty block) -> a device THP. */
		unsigned long rs = atomic_load(&rt->read_seq);

		pthread_mutex_lock(&s->lock);
		for (unsigned long k = 0; k < PMD_PAGES; k++) {
			dp[k].head = dp;
			atomic_store(&dp[k].vpn, vpn0 + k);
			atomic_store(&dp[k].mig_seq, rs);
			atomic_store(&e[k], (uintptr_t)&dp[k]);
		}
		pthread_mutex_unlock(&s->lock);
		hs_note(ms, (long)((ms->slot[i] - STAGE_PAGES) / PMD_PAGES),
			(m->src[i] & UHMM_MIGRATE_PFN_VALID) ? HS_FULL : HS_EMPTY);
		return true;
	}
	/* Device THP -> a system THP: the PMD moves in whole. */
	unsigned long da = (uintptr_t)uhmm_migrate_pfn_to_addr(m->dst[i] &
					~UHMM_MIGRATE_PFN_COMPOUND);
	long h = hstage_index(rt, da);
	uint8_t fate = HS_EMPTY;
	int r = uhmm__uffd_move(rt, addr, da, PMD_BYTES, UFFDIO_MOVE_MODE_DONTWAKE);

	if (r) {
		/* A mapping made read-only meanwhile: a copy. */
		r = uhmm__uffd_copy(rt, addr, da, PMD_BYTES, UFFDIO_COPY_MODE_DONTWAKE);
		fate = HS_DONTNEED;
	}
	if (h >= 0)
		hs_note(ms, h, r ? HS_DONTNEED : fate);
	pthread_mutex_lock(&s->lock);
	for (unsigned long k = 0; k < PMD_PAGES; k++) {
		if (r) {
			atomic_store(&e[k], (uintptr_t)&sp[k]);	/* stays */
			continue;
		}
		sp[k].head = NULL;
		atomic_store(&sp[k].vpn, 0);
		atomic_store(&e[k], 0);
	}
	pthread_mutex_unlock(&s->lock);
	if (!r)
		for (unsigned long k = 0; k < PMD_PAGES; k++)
			uhmm_page_put(&sp[k]);
	return true;
}

void uhmm_migrate_finalize(struct uhmm_migrate *m)
{
	struct uhmm_rt *rt = uhmm__rt_peek();
	struct mstate *ms;
	unsigned int shift;

	if (!m || !rt || !(ms = mstate_of(m)))
		return;
	uhmm__stat_migrate_end(m->start, m->src, m->dst, m->npages);
	shift = rt->page_shift;
	for (unsigned long i = 0; i < m->npages; i++) {
		if ((m->src[i] & UHMM_MIGRATE_PFN_COMPOUND) && finalize_whole(rt, m, i)) {
			i += PMD_PAGES - 1;
			continue;
		}
		unsigned long run = install_run(rt, m, i);

		if (run) {
			i += run - 1;
			continue;
		}
		unsigned long addr = m->start + (i << shift);
		unsigned long vpn = addr >> shift;
		_Atomic uintptr_t *e = st_entry(rt, vpn, false);
		struct stripe *s = stripe_of(rt, vpn);
		uint64_t src = m->src[i];
		bool migrate = src & UHMM_MIGRATE_PFN_MIGRATE;
		struct uhmm_page *sp = uhmm_migrate_pfn_to_page(src);
		uintptr_t v = e ? atomic_load(e) : 0;

		/*
		 * Not collected by this migration. A BUSY entry here belongs
		 * to another one (a fault-back of an overlapping window, a
		 * migration of the same pages by another thread): not ours to
		 * touch.
		 */
		if (!sp && ms->slot[i] == E_SLOT_NONE)
			continue;
		if (v & ST_DROP) {
			/* The mapping went away during the migration. */
			struct uhmm_page *dp = uhmm_migrate_pfn_to_page(m->dst[i]);
			long slot = sp ? stage_index(rt, (uintptr_t)
					uhmm_migrate_pfn_to_addr(m->dst[i])) : -1;

			if (slot >= 0)
				stage_free(rt, (unsigned long)slot, true);
			if (!sp && ms->slot[i] != E_SLOT_NONE)
				stage_free(rt, ms->slot[i], src & UHMM_MIGRATE_PFN_VALID);
			pthread_mutex_lock(&s->lock);
			atomic_store(e, 0);
			pthread_mutex_unlock(&s->lock);
			if (sp) {
				atomic_store(&sp->vpn, 0);
				uhmm_page_put(sp);
			} else if (migrate && dp) {
				uhmm_page_put(dp);
			}
			continue;
		}
		if (sp) {
			/* Device page -> system memory. */
			long slot = migrate ? stage_index(rt, (uintptr_t)
					uhmm_migrate_pfn_to_addr(m->dst[i])) : -1;
			int ir = -1;

			bool emptied = false;

			if (migrate && slot >= 0)
				ir = install(rt, addr, (unsigned long)slot, &emptied);
			if (ir == 0) {
				stage_free(rt, (unsigned long)slot, !emptied);
				atomic_store(&sp->vpn, 0);
				pthread_mutex_lock(&s->lock);
				atomic_store(e, 0);
				pthread_mutex_unlock(&s->lock);
				uhmm_page_put(sp);
			} else {
				if (slot >= 0)
					stage_free(rt, (unsigned long)slot, true);
				/* It stays on the device: a coherent frame goes
				 * back to the address. */
				if (is_coherent(sp))
					coherent_install(rt, sp, addr);
				pthread_mutex_lock(&s->lock);
				atomic_store(e, (uintptr_t)sp);
				pthread_mutex_unlock(&s->lock);
			}
			continue;
		}
		/* System page (or hole) -> device. */
		{
			struct uhmm_page *dp = uhmm_migrate_pfn_to_page(m->dst[i]);
			unsigned long slot = ms->slot[i];

			/* Coherent: the device's frame, with the data the
			 * driver copied, is mapped at the address. */
			if (migrate && dp && is_coherent(dp) &&
			    coherent_install(rt, dp, addr)) {
				/* Not migrated: the driver puts dp. */
				m->src[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
				migrate = false;
			}
			if (migrate && dp) {
				atomic_store(&dp->vpn, vpn);
				atomic_store(&dp->mig_seq, atomic_load(&rt->read_seq));
				pthread_mutex_lock(&s->lock);
				atomic_store(e, (uintptr_t)dp);
				pthread_mutex_unlock(&s->lock);
				if (slot != E_SLOT_NONE)
					stage_free(rt, slot, src & UHMM_MIGRATE_PFN_VALID);
			} else {
				if (slot != E_SLOT_NONE) {
					bool full = src & UHMM_MIGRATE_PFN_VALID;

					/* Put the page back where it was. */
					bool emptied = false;

					if (full && install(rt, addr, slot, &emptied) == 0)
						full = !emptied;
					stage_free(rt, slot, full);
				}
				if (e) {
					pthread_mutex_lock(&s->lock);
					atomic_store(e, 0);
					pthread_mutex_unlock(&s->lock);
				}
			}
		}
	}
	/* The 2 MiB slots: warm huge pages stay, others are emptied. */
	for (unsigned long k = 0; k < ms->nhs; k++) {
		if (ms->hs_fate[k] == HS_DONTNEED)
			uhmm__os_madvise((void *)hstage_addr(rt, (unsigned long)ms->hs[k]),
				   PMD_BYTES, MADV_DONTNEED);
		hstage_free(rt, (unsigned long)ms->hs[k], ms->hs_fate[k] == HS_FULL);
	}
	/* Pages that left the device go back to their driver before the
	 * faulting threads run on, as in the kernel. */
	for (unsigned long k = 0; k < ms->nheld; k++)
		uhmm_page_put(ms->held[k]);
	wake_stripes(rt, m->start, m->end);
	/* Threads that faulted on pages that stayed holes fault again. */
	uhmm__os_uffd_wake(rt->uffd, m->start, m->end - m->start);
	mstate_free(rt, ms);
	m->_private[0] = 0;
}

/* ---- eviction without addresses ---- */

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
	for (unsigned long i = 0; i < npages; i++) {
		struct uhmm_page *p = uhmm_pagemap_page(pg, first + i);
		unsigned long vpn = atomic_load(&p->vpn);
		_Atomic uintptr_t *e;
		struct stripe *s;

		if (!vpn || !atomic_load(&p->refs))
			continue;
		e = st_entry(rt, vpn, false);
		s = stripe_of(rt, vpn);
		/* As the kernel's eviction: through the notifiers, the
		 * invalidation open while the page is claimed. */
		struct uhmm_notifier_range inv = {
			.start = vpn << rt->page_shift,
			.end = (vpn + 1) << rt->page_shift,
			.event = UHMM_NOTIFY_MIGRATE,
			.flags = UHMM_NOTIFIER_RANGE_BLOCKABLE, .owner = pg->owner,
		};

		uhmm__inv_begin(rt, &inv);
		pthread_mutex_lock(&s->lock);
		if (e && atomic_load(e) == (uintptr_t)p) {
			atomic_store(e, (uintptr_t)p | ST_BUSY);
			src[i] = uhmm_migrate_pfn_device(p) | UHMM_MIGRATE_PFN_MIGRATE;
			uhmm_page_get(p);	/* until device_finalize */
		}
		pthread_mutex_unlock(&s->lock);
		uhmm__inv_end(rt);
		if (src[i] && is_coherent(p) &&
		    coherent_isolate(rt, p, vpn << rt->page_shift)) {
			/*
			 * The frame cannot leave the address (shared
			 * copy-on-write with a child): it stops being device
			 * memory where it is, data in place.
			 */
			src[i] = 0;
			atomic_store(&p->vpn, 0);
			pthread_mutex_lock(&s->lock);
			atomic_store(e, 0);
			pthread_cond_broadcast(&s->cond);
			pthread_mutex_unlock(&s->lock);
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
	uhmm__stat_migrate_end(0, src, dst, npages);
	for (unsigned long i = 0; i < npages; i++) {
		struct uhmm_page *p = uhmm_migrate_pfn_to_page(src[i]);
		unsigned long vpn, addr;
		_Atomic uintptr_t *e;
		struct stripe *s;
		long slot;

		if (!p || !(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			continue;
		vpn = atomic_load(&p->vpn);
		addr = vpn << rt->page_shift;
		e = st_entry(rt, vpn, false);
		s = stripe_of(rt, vpn);
		slot = stage_index(rt, (uintptr_t)uhmm_migrate_pfn_to_addr(dst[i]));
		if (e && (atomic_load(e) & ST_DROP)) {
			if (slot >= 0)
				stage_free(rt, (unsigned long)slot, true);
			atomic_store(&p->vpn, 0);
			pthread_mutex_lock(&s->lock);
			atomic_store(e, 0);
			pthread_cond_broadcast(&s->cond);
			pthread_mutex_unlock(&s->lock);
			uhmm_page_put(p);
			continue;
		}
		bool emptied = false;

		if (slot >= 0 && install(rt, addr, (unsigned long)slot, &emptied) == 0) {
			stage_free(rt, (unsigned long)slot, !emptied);
			atomic_store(&p->vpn, 0);
			pthread_mutex_lock(&s->lock);
			atomic_store(e, 0);
			pthread_cond_broadcast(&s->cond);
			pthread_mutex_unlock(&s->lock);
			uhmm_page_put(p);
		} else {
			if (slot >= 0)
				stage_free(rt, (unsigned long)slot, true);
			if (is_coherent(p))
				coherent_install(rt, p, addr);
			pthread_mutex_lock(&s->lock);
			atomic_store(e, (uintptr_t)p);
			pthread_cond_broadcast(&s->cond);
			pthread_mutex_unlock(&s->lock);
		}
		uhmm__os_uffd_wake(rt->uffd, addr, rt->page_size);
	}
	/* The references the collection took. */
	for (unsigned long i = 0; i < npages; i++) {
		struct uhmm_page *p = uhmm_migrate_pfn_to_page(src[i]);

		if (p && (src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			uhmm_page_put(p);
	}
}

/* ---- CPU fault-back ---- */

/* migrate_to_ram attempts for one CPU fault before it gets SIGBUS. */
#define FAULT_BACK_TRIES 4

/*
 * A MISSING fault at @addr, on a monitor thread. Device page: its
 * owner's migrate_to_ram. Page being migrated: wait for the migration.
 * Nothing: a hole of a registered range; map the zero page, as a first
 * touch would.
 */
void uhmm__handle_fault(struct uhmm_rt *rt, unsigned long addr, bool write,
			unsigned long read_seq)
{
	unsigned long vpn = addr >> rt->page_shift;
	struct stripe *s = stripe_of(rt, vpn);

	int failures = 0, counted = 0;

	addr &= ~(rt->page_size - 1);
	uhmm__wait_readers(rt);
	for (int tries = 0; tries < 1000; tries++) {
		_Atomic uintptr_t *e = st_entry(rt, vpn, false);
		uintptr_t v;
		struct uhmm_page *p;
		struct uhmm_fault vmf;
		int r;

		pthread_mutex_lock(&s->lock);
		v = e ? atomic_load(e) : 0;
		if ((v & ST_DROP) && !(v & ST_BUSY))
			v = 0;		/* released: a fresh page */
		if ((v & ST_EXCL) && !(v & ST_BUSY)) {
			/* Revoke the device's exclusive access. */
			unsigned long slot = v >> 3;

			atomic_store(e, v | ST_BUSY);
			pthread_mutex_unlock(&s->lock);
			uhmm__invalidate(rt, addr, addr + rt->page_size,
					 UHMM_NOTIFY_EXCLUSIVE, NULL);
			uhmm__stat_inc(UHMM__STAT_faults_exclusive_revoke);
			bool emptied = false;

			r = install(rt, addr, slot, &emptied);
			pthread_mutex_lock(&s->lock);
			atomic_store(e, r == 0 ? 0 : v);
			pthread_cond_broadcast(&s->cond);
			pthread_mutex_unlock(&s->lock);
			if (r == 0)
				stage_free(rt, slot, !emptied);
			uhmm__os_uffd_wake(rt->uffd, addr, rt->page_size);
			return;
		}
		if (v & ST_BUSY) {
			/*
			 * Being migrated (or faulted back by another reader).
			 * Not waited for here: a reader that sleeps on it
			 * stops reading events, and the migration may need one
			 * read (its UFFDIO_MOVE meets an unread munmap). Whoever
			 * holds the claim wakes the range when it lets go, and
			 * the thread faults again then.
			 */
			pthread_mutex_unlock(&s->lock);
			return;
		}
		if (!v) {
			/*
			 * A hole: the zero page, as a first touch would. Under
			 * the stripe lock, so that no migration claims the page
			 * in between: a stale message (its page came back, then
			 * went again) would else map the zero page where the
			 * migration just took the data out. One attempt: a
			 * retry on EAGAIN waits for the reader, which takes
			 * stripe locks.
			 */
			int64_t done;

			/* Counted before the zero page wakes the thread. */
			if (!counted++)
				uhmm__stat_fault_missing(addr);
			r = uhmm__os_uffd_zeropage(rt->uffd, addr, rt->page_size, 0, &done);
			pthread_mutex_unlock(&s->lock);
			if (r == -EINTR)
				continue;
			if (r == -EAGAIN) {
				/* An unread event (this reader is the one to
				 * read it): the thread faults again later. */
				uhmm__os_uffd_wake(rt->uffd, addr, rt->page_size);
				return;
			}
			if (r == 0 || r == -ENOENT)
				return;
			/* EEXIST: the page is there; wake whoever waits. */
			uhmm__os_uffd_wake(rt->uffd, addr, rt->page_size);
			return;
		}
		p = (struct uhmm_page *)v;
		if (is_coherent(p)) {
			/* The CPU addresses it: mapped, or a page of zeros
			 * (an empty pool slot), never a migration. */
			pthread_mutex_unlock(&s->lock);
			uhmm__uffd_zeropage(rt, addr, rt->page_size, 0);
			return;
		}
		if (atomic_load(&p->mig_seq) >= read_seq) {
			/*
			 * The page went to the device after this message was
			 * read: the thread that faulted got its page before
			 * (a stale message). Wake only; a thread that really
			 * waits faults again and is served then.
			 */
			pthread_mutex_unlock(&s->lock);
			uhmm__os_uffd_wake(rt->uffd, addr, rt->page_size);
			return;
		}
		/* Claimed for this fault; migrate_to_ram's setup collects it. */
		atomic_store(e, v | ST_BUSY);
		p->fault_claim = read_seq;
		pthread_mutex_unlock(&s->lock);

		/*
		 * Sequential faults widen the window, up to 2 MiB, in the
		 * direction of the access (memcpy may copy backwards). The
		 * window stays inside the fault's 2 MiB block.
		 */
		{
			unsigned long last = atomic_load_explicit(&rt->last_fault_vpn, memory_order_relaxed);
			unsigned long ra = atomic_load_explicit(&rt->ra_pages, memory_order_relaxed);
			unsigned long blk_lo = addr & ~((512ul << rt->page_shift) - 1);
			unsigned long blk_hi = blk_lo + (512ul << rt->page_shift);
			bool down = vpn + 1 == last || vpn + ra == last;

			if (vpn == last + 1 || vpn == last + ra || down)
				ra = ra < 512 ? ra * 2 : 512;
			else
				ra = 1;
			atomic_store_explicit(&rt->ra_pages, ra, memory_order_relaxed);
			atomic_store_explicit(&rt->last_fault_vpn, vpn, memory_order_relaxed);
			if (down) {
				vmf.ra_end = addr + rt->page_size;
				vmf.ra_start = addr - ((ra - 1) << rt->page_shift);
				if (vmf.ra_start < blk_lo || vmf.ra_start > addr)
					vmf.ra_start = blk_lo;
			} else {
				vmf.ra_start = addr;
				vmf.ra_end = addr + (ra << rt->page_shift);
				if (vmf.ra_end > blk_hi || vmf.ra_end < addr)
					vmf.ra_end = blk_hi;
			}
		}
		vmf.address = addr;
		vmf.page = p;
		vmf.flags = write ? UHMM_FAULT_WRITE : 0;
		uhmm__take_eagain();
		uhmm__stat_fault_back_begin(addr);
		r = p->pgmap->ops->migrate_to_ram(&vmf);
		uhmm__stat_fault_back_end(addr, r);

		/*
		 * Not collected: the claim is still this fault's, give it
		 * up. Collected: the migration's finalize settled the entry,
		 * and a BUSY there now is another claim's.
		 */
		pthread_mutex_lock(&s->lock);
		v = atomic_load(e);
		if (v == ((uintptr_t)p | ST_BUSY) && p->fault_claim == read_seq) {
			p->fault_claim = 0;
			atomic_store(e, (uintptr_t)p);
		}
		v = atomic_load(e);
		pthread_cond_broadcast(&s->cond);
		pthread_mutex_unlock(&s->lock);
		if (v && uhmm__take_eagain()) {
			/*
			 * The install met an unread event (a munmap, an
			 * mremap): the page stays on the device, and this
			 * reader goes back to reading; the thread is woken and
			 * faults again, after the event.
			 */
			uhmm__os_uffd_wake(rt->uffd, addr, rt->page_size);
			return;
		}
		if (r < 0 && v && ++failures < FAULT_BACK_TRIES) {
			/* A transient failure (memory, a racing mapping
			 * change): the kernel would retry at the next access;
			 * the access is still waiting here, so retry now. */
			struct timespec ts;

			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 1000 * 1000L << failures;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_mutex_lock(&s->lock);
			pthread_cond_timedwait(&s->cond, &s->lock, &ts);
			pthread_mutex_unlock(&s->lock);
			continue;
		}
		if (r < 0 && v) {
			/*
			 * VM_FAULT_SIGBUS: a poisoned page makes the access
			 * fail. Unlike the kernel's one-shot SIGBUS, the
			 * marker stays (semantics M13).
			 */
			uhmm__os_uffd_poison(rt->uffd, addr, rt->page_size);
			return;
		}
		if (!v)
			return;	/* installed; the MOVE woke the faulting threads */
	}
}

/* ---- the address space changing under device pages ---- */

static void mark_drop(struct uhmm_rt *rt, unsigned long vpn,
		      _Atomic uintptr_t *e, void *arg)
{
	struct stripe *s = stripe_of(rt, vpn);

	(void)arg;
	pthread_mutex_lock(&s->lock);
	if (atomic_load(e))
		atomic_store(e, atomic_load(e) | ST_DROP);
	pthread_mutex_unlock(&s->lock);
}

struct remap_arg {
	unsigned long from, to;	/* VPNs */
};

static void move_entry(struct uhmm_rt *rt, unsigned long vpn,
		       _Atomic uintptr_t *e, void *arg)
{
	struct remap_arg *a = arg;
	unsigned long nvpn = vpn - a->from + a->to;
	_Atomic uintptr_t *ne = st_entry(rt, nvpn, true);
	uintptr_t v, old;

	if (!ne)
		return;
	struct stripe *s = stripe_of(rt, vpn), *ns = stripe_of(rt, nvpn);

	/* One stripe at a time; the worker's put_dropped takes them too. */
	pthread_mutex_lock(&s->lock);
	v = atomic_exchange(e, 0);
	pthread_mutex_unlock(&s->lock);
	if (!v)
		return;
	if (!(v & ST_FLAGS))
		atomic_store(&((struct uhmm_page *)v)->vpn, nvpn);
	pthread_mutex_lock(&ns->lock);
	old = atomic_exchange(ne, v);
	pthread_cond_broadcast(&ns->cond);
	pthread_mutex_unlock(&ns->lock);
	/*
	 * mremap over pages that were on a device: the destination's UNMAP
	 * came first and marked them DROP; the worker would give them back,
	 * but this entry no longer names them. Given back here.
	 */
	if ((old & ST_DROP) && !(old & ST_BUSY))
		release_dropped(rt, old);
}

/*
 * On the reader, right after read() returned the event and before any
 * fault read later is served (uhmm__handle_fault waits for readers in
 * read()): munmap and MADV_DONTNEED/FREE/REMOVE release the device pages
 * of the range (a later touch sees a fresh page, as in the kernel);
 * mremap moves them with the mapping.
 */
void uhmm__device_event(struct uhmm_rt *rt, const struct uffd_msg *m)
{
	unsigned int shift = rt->page_shift;

	if (!atomic_load_explicit(&rt->has_device_pages, memory_order_relaxed))
		return;
	switch (m->event) {
	case UFFD_EVENT_UNMAP:
	case UFFD_EVENT_REMOVE:
		st_walk(rt, m->arg.remove.start >> shift, m->arg.remove.end >> shift,
			mark_drop, NULL);
		break;
	case UFFD_EVENT_REMAP: {
		struct remap_arg a = { m->arg.remap.from >> shift,
				       m->arg.remap.to >> shift };
		unsigned long n = m->arg.remap.len >> shift;

		/* Overlapping moves go page by page in the safe direction. */
		for (unsigned long k = 0; k < n; k++) {
			unsigned long j = a.to > a.from ? n - 1 - k : k;
			_Atomic uintptr_t *e = st_entry(rt, a.from + j, false);

			if (e && atomic_load(e))
				move_entry(rt, a.from + j, e, &a);
		}
		break;
	}
	default:
		break;
	}
}

static void put_dropped(struct uhmm_rt *rt, unsigned long vpn,
			_Atomic uintptr_t *e, void *arg)
{
	struct stripe *s = stripe_of(rt, vpn);
	uintptr_t v;

	(void)arg;
	pthread_mutex_lock(&s->lock);
	v = atomic_load(e);
	if ((v & ST_DROP) && !(v & ST_BUSY))
		atomic_store(e, 0);
	else
		v = 0;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	release_dropped(rt, v);
}

/* On the worker: give the released pages back to their drivers. */
void uhmm__device_release(struct uhmm_rt *rt, unsigned long start, unsigned long end)
{
	if (atomic_load_explicit(&rt->has_device_pages, memory_order_relaxed))
		st_walk(rt, start >> rt->page_shift, end >> rt->page_shift,
			put_dropped, NULL);
}

int uhmm_make_device_exclusive(unsigned long addr, const void *owner,
			       void **dev_addr)
{
	struct os_procmap_query q;
	struct uhmm_rt *rt;
	_Atomic uintptr_t *e;
	struct stripe *s;
	unsigned long vpn;
	long slot;
	int err = 0, r;

	if (!dev_addr)
		return -EINVAL;
	rt = uhmm__rt_get(&err);
	if (!rt)
		return err;
	if (!addr || !uhmm__aligned(rt, addr))
		return -EINVAL;
	if (rt->uffd < 0)
		return -ENOSYS;
	r = uhmm__vma_query(rt, addr, &q);
	if (r < 0 && r != -ENOENT)
		return r;	/* -ENOMEM: not the caller's fault */
	if (r < 0 || q.vma_start > addr || q.inode || q.dev_major || q.dev_minor ||
	    uhmm__alloc_owns(addr, addr + rt->page_size) ||
	    (q.vma_flags & OS_PROCMAP_QUERY_VMA_SHARED) ||
	    !(q.vma_flags & OS_PROCMAP_QUERY_VMA_WRITABLE) ||
	    q.vma_page_size > rt->page_size)
		return -EINVAL;
	pthread_mutex_lock(&rt->mlock);
	err = stage_init(rt);
	pthread_mutex_unlock(&rt->mlock);
	if (err)
		return err;
	/* Writable and present first, as make_device_exclusive faults it
	 * (before the page is claimed: the fault may come to uhmm). */
	if (uhmm__os_madvise((void *)addr, rt->page_size, MADV_POPULATE_WRITE))
		return -EFAULT;
	err = ensure_missing(rt, addr, addr + rt->page_size);
	if (err)
		return err;
	vpn = addr >> rt->page_shift;
	e = st_entry(rt, vpn, true);
	if (!e)
		return -ENOMEM;
	s = stripe_of(rt, vpn);
	pthread_mutex_lock(&s->lock);
	if (atomic_load(e)) {
		uintptr_t v = atomic_load(e);

		pthread_mutex_unlock(&s->lock);
		if ((v & ST_EXCL) && !(v & ST_BUSY)) {
			/* Already exclusive: same page. */
			*dev_addr = (void *)stage_addr(rt, v >> 3);
			uhmm__invalidate(rt, addr, addr + rt->page_size,
					 UHMM_NOTIFY_EXCLUSIVE, owner);
			return 0;
		}
		return -EBUSY;
	}
	atomic_store(e, ST_BUSY);
	pthread_mutex_unlock(&s->lock);
	atomic_store(&rt->has_device_pages, true);

	/* Open until the page is out: see uhmm_migrate_setup(). */
	struct uhmm_notifier_range inv = {
		.start = addr, .end = addr + rt->page_size,
		.event = UHMM_NOTIFY_EXCLUSIVE,
		.flags = UHMM_NOTIFIER_RANGE_BLOCKABLE, .owner = owner,
	};

	uhmm__inv_begin(rt, &inv);
	slot = stage_alloc(rt, 1, SLOT_EMPTY);
	r = slot < 0 ? (int)slot :
	    uhmm__uffd_move(rt, stage_addr(rt, (unsigned long)slot), addr,
			    rt->page_size, 0);
	uhmm__inv_end(rt);
	if (r && slot >= 0)
		stage_free(rt, (unsigned long)slot, false);
	pthread_mutex_lock(&s->lock);
	atomic_store(e, r == 0 ? (((uintptr_t)slot << 3) | ST_EXCL) : 0);
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	/* A CPU access that came meanwhile faults again (and revokes). */
	uhmm__os_uffd_wake(rt->uffd, addr, rt->page_size);
	if (r)
		return r == -EBUSY || r == -ENOMEM ? r : -EBUSY;
	*dev_addr = (void *)stage_addr(rt, (unsigned long)slot);
	return 0;
}

static void fault_in(struct uhmm_rt *rt, unsigned long vpn,
		     _Atomic uintptr_t *e, void *arg)
{
	char c;

	(void)arg;
	if (atomic_load(e) & ST_DROP)
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
void uhmm__device_fork(struct uhmm_rt *rt)
{
	pthread_mutex_lock(&rt->gate_lock);
	rt->fork_pending = true;
	while (rt->mig_inflight)
		pthread_cond_wait(&rt->gate_cond, &rt->gate_lock);
	pthread_mutex_unlock(&rt->gate_lock);
	if (atomic_load_explicit(&rt->has_device_pages, memory_order_relaxed))
		st_walk(rt, 0, 1ul << (4 * ST_BITS), fault_in, NULL);
}
