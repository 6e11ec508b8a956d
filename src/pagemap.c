/* SPDX-License-Identifier: MIT */
/*
 * Device memory (the counterpart of mm/memremap.c): a pagemap is a
 * driver's device memory, grown in chunks of struct uhmm_page; pages are
 * reference counted and go back to their driver (page_free) at the last
 * put. Coherent device memory is a pool of frames the CPU addresses,
 * moved in and out of the application's address space. Layer 3.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "devmem.h"


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


uint64_t uhmm_migrate_pfn_device(const struct uhmm_page *p)
{
	return (page_frame(p) << UHMM_MIGRATE_PFN_SHIFT) |
	       UHMM_MIGRATE_PFN_DEVICE | UHMM_MIGRATE_PFN_VALID;
}

struct uhmm_page *uhmm_migrate_pfn_to_page(uint64_t mpfn)
{
	if (!(mpfn & UHMM_MIGRATE_PFN_DEVICE) || !(mpfn & UHMM_MIGRATE_PFN_VALID))
		return NULL;
	return frame_page(mpfn >> UHMM_MIGRATE_PFN_SHIFT);
}

void *uhmm_migrate_pfn_to_addr(uint64_t mpfn)
{
	struct uhmm_rt *rt = uhmm__rt_peek();

	if ((mpfn & UHMM_MIGRATE_PFN_DEVICE) || !(mpfn & UHMM_MIGRATE_PFN_VALID) || !rt)
		return NULL;
	return (void *)(uintptr_t)((mpfn >> UHMM_MIGRATE_PFN_SHIFT) << rt->page_shift);
}


/*
 * A coherent page's frame from @addr to its pool slot (isolation): the
 * address becomes pte_none, so CPU accesses fault to uhmm and wait. A
 * slot that still holds a frame (its page was installed by copy) is
 * emptied first. A hole at @addr leaves the slot empty: zeros. In a
 * mover, -EINTR: the slot was emptied with the hold let go; check the
 * entry, then call again.
 */
int uhmm__coherent_isolate(struct uhmm_rt *rt, struct uhmm_page *p,
			   unsigned long addr)
{
	int r = uhmm__uffd_move(rt, (uintptr_t)p->mem, addr, rt->page_size,
				UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES);

	if (r != -EEXIST)
		return r;
	/*
	 * MADV_DONTNEED of the pool (registered) waits for a reader to read
	 * its event: in a mover, with the hold let go, and -EINTR tells the
	 * caller to check its entry again.
	 */
	if (uhmm__in_mover()) {
		if (!uhmm__mover_pause(rt))
			return -EBUSY;
		uhmm__os_madvise(p->mem, rt->page_size, MADV_DONTNEED);
		uhmm__mover_resume(rt);
		return -EINTR;
	}
	uhmm__os_madvise(p->mem, rt->page_size, MADV_DONTNEED);
	return uhmm__uffd_move(rt, (uintptr_t)p->mem, addr, rt->page_size,
			       UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES);
}

/* Whether a coherent page's pool slot holds no frame. */
static bool slot_empty(struct uhmm_rt *rt, struct uhmm_page *p)
{
	unsigned char vec = 1;

	return uhmm__os_mincore(p->mem, rt->page_size, &vec) == 0 && !(vec & 1);
}

/*
 * Map a coherent page's frame at @addr (pte_none there), no wake. A
 * mapping made read-only meanwhile gets a copy (the slot keeps its
 * frame); an empty slot is a page of zeros. -EEXIST: something is
 * mapped there. -ENOENT with a frame in the slot: no mapping there.
 */
int uhmm__coherent_install(struct uhmm_rt *rt, struct uhmm_page *p,
			   unsigned long addr)
{
	int r = uhmm__uffd_move(rt, addr, (uintptr_t)p->mem, rt->page_size,
				UFFDIO_MOVE_MODE_DONTWAKE);

	if (r == -EINVAL || r == -EBUSY || r == -EPERM)
		r = uhmm__uffd_copy(rt, addr, (uintptr_t)p->mem, rt->page_size,
				    UFFDIO_COPY_MODE_DONTWAKE);
	else if (r == -ENOENT && slot_empty(rt, p))
		r = uhmm__uffd_zeropage(rt, addr, rt->page_size,
					UFFDIO_ZEROPAGE_MODE_DONTWAKE);
	if (r == 0)
		atomic_store_explicit(&rt->has_coherent_pages, true,
				      memory_order_relaxed);
	return r;
}
