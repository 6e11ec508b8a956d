/* SPDX-License-Identifier: MIT */
/*
 * dmirror's device memory: the pagemap and its ops, page and THP
 * allocation, DMA transfer lists, and the way back to system memory,
 * migrate_to_ram and eviction (test_hmm.c: dmirror_allocate_chunk,
 * dmirror_devmem_alloc_page, dmirror_devmem_free, dmirror_devmem_fault,
 * dmirror_device_evict_chunk).
 */
#include "dmirror_internal.h"

/*
 * Copy engine threads. 0: the engine copies in the submitting thread,
 * which on a 2-vCPU machine beats handing 2 MiB chunks to another
 * thread (bench_dma); raise it where cores are plenty.
 */
#define DMIRROR_DMA_THREADS 0

void uhmm__dmirror_xfer_add(struct dmirror_xfer *x, void *dst, const void *src,
			    size_t len)
{
	struct uhmm_dma_desc *l = x->n ? &x->d[x->n - 1] : NULL;

	if (l && (char *)l->dst + l->len == (char *)dst &&
	    (const char *)l->src + l->len == (const char *)src) {
		l->len += len;
		return;
	}
	x->d[x->n++] = (struct uhmm_dma_desc){ dst, src, len };
}

/* Submit the list as one batch and wait for it; 0 or -EFAULT. */
int uhmm__dmirror_xfer_run(struct dmirror_device *dev, struct dmirror_xfer *x)
{
	struct uhmm_dma_batch b = { .desc = x->d, .n = x->n };
	int r;

	if (!x->n)
		return 0;
	r = uhmm_dma_submit(dev->dma, &b);
	if (r == 0)
		r = uhmm_dma_wait(dev->dma, &b);
	x->n = 0;
	return r;
}

/*
 * The device whose SELECT_DEVICE_COHERENT migration this thread is setting
 * up (uhmm__dmirror_migrate_setup()): its invalidation drops the device's
 * own coherent entries, whose frames it moves out (dmirror_invalidate()).
 */
__thread const struct dmirror_device *uhmm__dmirror_tl_coherent_out
	__attribute__((tls_model("initial-exec")));

/* Device pages in use, all devices: while 0, no buffer can be on a device. */
atomic_ulong uhmm__dmirror_dev_pages;

static void dmirror_page_free(struct uhmm_page *page);
static int dmirror_devmem_fault(struct uhmm_fault *vmf);

static const struct uhmm_pagemap_ops dmirror_devmem_ops = {
	.page_free = dmirror_page_free,
	.migrate_to_ram = dmirror_devmem_fault,
};

static struct dmirror_device *dmirror_page_dev(const struct uhmm_page *page)
{
	return (struct dmirror_device *)(uintptr_t)uhmm_page_owner(page);
}

/* Devices 0 and 1 have private memory, 2 and 3 coherent memory. */
bool uhmm__dmirror_coherent(const struct dmirror_device *dev)
{
	return dev->id >= 2;
}

/*
 * Add a chunk of device memory: the pagemap at the first call, a grown
 * one later (dmirror_allocate_chunk). Under dev->lock.
 */
static int dmirror_devmem_grow(struct dmirror_device *dev)
{
	unsigned long n = DMIRROR_CHUNK_BYTES >> uhmm__dmirror_page_shift;
	unsigned long i, *fl;
	void *mem;
	long first;
	int ret;

	if (dev->nchunks >= DMIRROR_MAX_CHUNKS)
		return -ENOMEM;
	dev->chunk_pages = n;
	/* Coherent pages are their own storage (BACKING_PAGE()): uhmm's
	 * pool, uhmm_page_addr(). Private ones get a buffer. */
	mem = NULL;
	if (!uhmm__dmirror_coherent(dev) &&
	    !(mem = uhmm_alloc(n << uhmm__dmirror_page_shift)))
		return -ENOMEM;
	fl = uhmm_realloc(dev->free, (dev->nchunks + 1) * n * sizeof(*fl));
	if (!fl) {
		uhmm_free(mem);
		return -ENOMEM;
	}
	dev->free = fl;
	{
		unsigned long nb = (dev->nchunks + 1) * (n / DMIRROR_BLOCK_PAGES);
		unsigned long *bf = uhmm_realloc(dev->blk_free, nb * sizeof(*bf));
		uint16_t *bo;

		if (bf)
			dev->blk_free = bf;
		bo = bf ? uhmm_realloc(dev->blk_out, nb * sizeof(*bo)) : NULL;
		if (!bo) {
			uhmm_free(mem);
			return -ENOMEM;
		}
		dev->blk_out = bo;
	}
	if (!dev->dma && uhmm_dma_create(DMIRROR_DMA_THREADS, &dev->dma)) {
		uhmm_free(mem);
		return -ENOMEM;
	}
	if (!dev->pgmap) {
		ret = uhmm_pagemap_create(uhmm__dmirror_coherent(dev) ?
					  UHMM_MEMORY_DEVICE_COHERENT :
					  UHMM_MEMORY_DEVICE_PRIVATE, dev,
					  &dmirror_devmem_ops, n, &dev->pgmap);
		first = ret ? ret : 0;
	} else {
		first = uhmm_pagemap_grow(dev->pgmap, n);
	}
	if (first < 0) {
		uhmm_free(mem);
		return (int)first;
	}
	for (i = 0; i < n; i++) {
		struct uhmm_page *page = uhmm_pagemap_page(dev->pgmap,
							   (unsigned long)first + i);

		uhmm_page_set_data(page, mem ? (char *)mem +
				   (i << uhmm__dmirror_page_shift) :
				   uhmm_page_addr(page));
	}
	/* Whole blocks, lowest indices on top. */
	for (i = n / DMIRROR_BLOCK_PAGES; i-- > 0;) {
		unsigned long b = (unsigned long)first / DMIRROR_BLOCK_PAGES + i;

		dev->blk_out[b] = 0;
		dev->blk_free[dev->nblk_free++] = b;
	}
	dev->mem[dev->nchunks++] = mem;
	return 0;
}

/* A free device page with reference count 1 (dmirror_devmem_alloc_page). */
struct uhmm_page *uhmm__dmirror_page_alloc(struct dmirror_device *dev)
{
	struct uhmm_page *page;

	pthread_mutex_lock(&dev->lock);
	if (!dev->nfree && !dev->nblk_free && dmirror_devmem_grow(dev)) {
		pthread_mutex_unlock(&dev->lock);
		return NULL;
	}
	if (!dev->nfree) {
		/* Break a block into base pages, lowest on top. */
		unsigned long b = dev->blk_free[--dev->nblk_free];

		for (unsigned long i = DMIRROR_BLOCK_PAGES; i-- > 0;)
			dev->free[dev->nfree++] = b * DMIRROR_BLOCK_PAGES + i;
	}
	page = uhmm_pagemap_page(dev->pgmap, dev->free[--dev->nfree]);
	dev->calloc++;
	pthread_mutex_unlock(&dev->lock);
	atomic_fetch_add_explicit(&uhmm__dmirror_dev_pages, 1,
				  memory_order_relaxed);
	uhmm_page_init(page);
	return page;
}

/*
 * A device THP (dmirror_devmem_alloc_page(..., is_large)): a free block,
 * its pages each with reference count 1, or NULL.
 */
struct uhmm_page *uhmm__dmirror_folio_alloc(struct dmirror_device *dev)
{
	struct uhmm_page *head;
	unsigned long b;

	pthread_mutex_lock(&dev->lock);
	if (!dev->nblk_free && dmirror_devmem_grow(dev)) {
		pthread_mutex_unlock(&dev->lock);
		return NULL;
	}
	b = dev->blk_free[--dev->nblk_free];
	dev->blk_out[b] = DMIRROR_BLOCK_PAGES;
	dev->calloc += DMIRROR_BLOCK_PAGES;
	pthread_mutex_unlock(&dev->lock);
	atomic_fetch_add_explicit(&uhmm__dmirror_dev_pages, DMIRROR_BLOCK_PAGES,
				  memory_order_relaxed);
	head = uhmm_pagemap_page(dev->pgmap, b * DMIRROR_BLOCK_PAGES);
	for (unsigned long i = 0; i < DMIRROR_BLOCK_PAGES; i++)
		uhmm_page_init(uhmm_pagemap_page(dev->pgmap,
						 b * DMIRROR_BLOCK_PAGES + i));
	return head;
}

static void dmirror_page_free(struct uhmm_page *page)
{
	struct dmirror_device *dev = dmirror_page_dev(page);
	unsigned long idx = uhmm_page_index(page);
	unsigned long b = idx / DMIRROR_BLOCK_PAGES;

	pthread_mutex_lock(&dev->lock);
	if (dev->blk_out[b]) {
		/* The last page of a THP block brings the block back. */
		if (--dev->blk_out[b] == 0)
			dev->blk_free[dev->nblk_free++] = b;
	} else {
		dev->free[dev->nfree++] = idx;
	}
	dev->cfree++;
	pthread_mutex_unlock(&dev->lock);
	atomic_fetch_sub_explicit(&uhmm__dmirror_dev_pages, 1,
				  memory_order_relaxed);
}

/* FLAG_FAIL_ALLOC of @dm: whether this allocation must fail (once). */
bool uhmm__dmirror_fail_alloc(struct uhmm_dmirror *dm)
{
	bool fail;

	pthread_mutex_lock(&dm->lock);
	fail = dm->flags & UHMM_DMIRROR_FLAG_FAIL_ALLOC;
	dm->flags &= ~(uint64_t)UHMM_DMIRROR_FLAG_FAIL_ALLOC;
	pthread_mutex_unlock(&dm->lock);
	return fail;
}

/*
 * The same for a CPU fault, which belongs to no open: the flag of any
 * open of the device (the kernel takes the open that migrated the page).
 */
static bool dmirror_dev_fail_alloc(struct dmirror_device *dev)
{
	struct uhmm_dmirror *o;
	bool fail = false;

	pthread_mutex_lock(&dev->lock);
	for (o = dev->opens; o && !fail; o = o->dev_next)
		fail = uhmm__dmirror_fail_alloc(o);
	pthread_mutex_unlock(&dev->lock);
	return fail;
}

/*
 * Drop the entries of the collected device pages of @m from the page
 * table of every open of the device: the device loses access before the
 * data move (the MIGRATE invalidation of the owner keeps them).
 */
static void dmirror_dev_unmap(struct dmirror_device *dev,
			      const struct uhmm_migrate *m)
{
	uint64_t vpn0 = m->start >> uhmm__dmirror_page_shift;
	struct uhmm_dmirror *o;
	unsigned long i;

	pthread_mutex_lock(&dev->lock);
	for (o = dev->opens; o; o = o->dev_next) {
		bool hit = false;

		pthread_mutex_lock(&o->lock);
		for (i = 0; i < m->npages; i++) {
			unsigned long k, nk = 1;

			if (!(m->src[i] & UHMM_MIGRATE_PFN_MIGRATE))
				continue;
			if (m->src[i] & UHMM_MIGRATE_PFN_COMPOUND)
				nk = DMIRROR_BLOCK_PAGES;
			for (k = 0; k < nk && i + k < m->npages; k++) {
				uint64_t *leaf = uhmm__dmirror_pt_leaf(&o->pt,
								       vpn0 + i + k);
				uint64_t j = (vpn0 + i + k) & PT_MASK;

				if (leaf && (leaf[j] & DMIRROR_PFN_DEVICE)) {
					leaf[j] = 0;
					hit = true;
				}
			}
		}
		if (hit)
			o->inv_count++;
		pthread_mutex_unlock(&o->lock);
	}
	pthread_mutex_unlock(&dev->lock);
}

/* Every device-memory entry of every open (eviction without addresses). */
static void dmirror_dev_unmap_all(struct dmirror_device *dev)
{
	struct uhmm_dmirror *o;

	pthread_mutex_lock(&dev->lock);
	for (o = dev->opens; o; o = o->dev_next) {
		pthread_mutex_lock(&o->lock);
		if (uhmm__dmirror_pt_clear_dev(&o->pt))
			o->inv_count++;
		pthread_mutex_unlock(&o->lock);
	}
	pthread_mutex_unlock(&dev->lock);
}

/*
 * Device -> system for the collected entries of @m: a system page each,
 * filled from the device's storage (dmirror_devmem_fault_alloc_and_copy).
 * FAIL_ALLOC (of @dm, or of the device for a CPU fault) makes one
 * allocation fail: that page stays on the device, unless it is
 * @fault_page, which must not be skipped. Returns -ENOMEM when
 * @fault_page could not be given a page.
 */
int uhmm__dmirror_to_sys_copy(struct dmirror_device *dev,
			      struct uhmm_dmirror *dm, struct uhmm_migrate *m,
			      struct uhmm_page *fault_page)
{
	struct uhmm_dma_desc d[DMIRROR_MIGRATE_CHUNK];
	struct dmirror_xfer x = { .d = d };
	unsigned long i;
	int ret = 0;

	if (m->npages > DMIRROR_MIGRATE_CHUNK)
		return -EINVAL;
	memset(m->dst, 0, m->npages * sizeof(*m->dst));
	dmirror_dev_unmap(dev, m);
	for (i = 0; i < m->npages; i++) {
		struct uhmm_page *page = uhmm_migrate_pfn_to_page(m->src[i]);
		int tries = page == fault_page ? DMIRROR_FAULT_ALLOC_TRIES : 1;
		bool fail;
		int r = -ENOMEM;

		if (!(m->src[i] & UHMM_MIGRATE_PFN_MIGRATE) || !page)
			continue;
		fail = dm ? uhmm__dmirror_fail_alloc(dm) :
			    dmirror_dev_fail_alloc(dev);
		if (m->src[i] & UHMM_MIGRATE_PFN_COMPOUND) {
			/* A device THP: a system THP, or base pages. */
			if (!fail && !uhmm_migrate_alloc_system_compound(&m->dst[i])) {
				uhmm__dmirror_xfer_add(&x,
					uhmm_migrate_pfn_to_addr(m->dst[i]),
					uhmm_page_data(page),
					DMIRROR_BLOCK_PAGES <<
					uhmm__dmirror_page_shift);
			} else {
				unsigned long idx = uhmm_page_index(page);

				for (unsigned long k = 0; k < DMIRROR_BLOCK_PAGES &&
				     i + k < m->npages; k++) {
					struct uhmm_page *pk = uhmm_pagemap_page(
						dev->pgmap, idx + k);

					r = -ENOMEM;
					for (tries = DMIRROR_FAULT_ALLOC_TRIES;
					     tries-- > 0 && r;)
						r = uhmm_migrate_alloc_system(&m->dst[i + k]);
					if (r) {
						m->dst[i + k] = 0;
						if (pk == fault_page)
							ret = r;
						continue;
					}
					uhmm__dmirror_xfer_add(&x,
						uhmm_migrate_pfn_to_addr(m->dst[i + k]),
						uhmm_page_data(pk),
						uhmm__dmirror_page_size);
				}
			}
			i += DMIRROR_BLOCK_PAGES - 1;
			continue;
		}
		if (fail && page != fault_page)
			continue;
		while (tries-- > 0 && r)
			r = uhmm_migrate_alloc_system(&m->dst[i]);
		if (r) {
			m->dst[i] = 0;
			if (page == fault_page)
				ret = r;
			continue;
		}
		uhmm__dmirror_xfer_add(&x, uhmm_migrate_pfn_to_addr(m->dst[i]),
				       uhmm_page_data(page),
				       uhmm__dmirror_page_size);
	}
	/* Device memory and staging pages do not fault: a failure here
	 * means a page must stay where it is. */
	if (uhmm__dmirror_xfer_run(dev, &x)) {
		memset(m->dst, 0, m->npages * sizeof(*m->dst));
		ret = -EFAULT;
	}
	return ret;
}

/*
 * uhmm_migrate_setup() of at most [start, end): a range that crosses a
 * VMA boundary is -EINVAL, and the public API has no VMA lookup, so the
 * chunk is halved until it fits (a boundary costs a few failed setups,
 * which check the range before doing anything). m->end says how far it
 * got.
 */
int uhmm__dmirror_migrate_setup(struct uhmm_migrate *m, unsigned long start,
				unsigned long end, uint64_t *src, uint64_t *dst,
				const void *owner, unsigned long flags,
				struct uhmm_page *fault_page)
{
	unsigned long n = (end - start) >> uhmm__dmirror_page_shift;
	int ret;

	for (;;) {
		memset(m, 0, sizeof(*m));
		m->start = start;
		m->end = start + (n << uhmm__dmirror_page_shift);
		m->src = src;
		m->dst = dst;
		m->pgmap_owner = owner;
		m->flags = flags;
		m->fault_page = fault_page;
		if (flags & UHMM_MIGRATE_SELECT_DEVICE_COHERENT)
			uhmm__dmirror_tl_coherent_out = owner;
		ret = uhmm_migrate_setup(m);
		uhmm__dmirror_tl_coherent_out = NULL;
		if (ret != -EINVAL || n == 1)
			return ret;
		n /= 2;
	}
}

/*
 * migrate_to_ram (dmirror_devmem_fault), on a uhmm monitor thread: the
 * core's read-ahead window, or the faulting page alone when the window
 * does not fit one VMA.
 */
static int dmirror_devmem_fault(struct uhmm_fault *vmf)
{
	struct dmirror_device *dev = dmirror_page_dev(vmf->page);
	uint64_t src[DMIRROR_MIGRATE_CHUNK], dst[DMIRROR_MIGRATE_CHUNK];
	unsigned long start = vmf->ra_start, end = vmf->ra_end;
	struct uhmm_migrate m;
	unsigned long flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE;
	int ret;

	/* A device THP comes back whole (the kernel's SELECT_COMPOUND). */
	if (uhmm_page_order(vmf->page)) {
		start = vmf->address &
			~((DMIRROR_BLOCK_PAGES << uhmm__dmirror_page_shift) - 1);
		end = start + (DMIRROR_BLOCK_PAGES << uhmm__dmirror_page_shift);
		flags |= UHMM_MIGRATE_SELECT_COMPOUND;
	}
	if (start > vmf->address || end <= vmf->address ||
	    start & (uhmm__dmirror_page_size - 1) ||
	    end & (uhmm__dmirror_page_size - 1) ||
	    (end - start) >> uhmm__dmirror_page_shift > DMIRROR_MIGRATE_CHUNK) {
		start = vmf->address;
		end = start + uhmm__dmirror_page_size;
	}
	ret = uhmm__dmirror_migrate_setup(&m, start, end, src, dst, dev, flags,
					  vmf->page);
	if (ret == 0 && (vmf->address < m.start || vmf->address >= m.end)) {
		/*
		 * Halving lost the faulting page: that page alone. Nothing of
		 * this setup migrates: no destination (dst[] is still the last
		 * migration's, whose slots finalize would install and free).
		 */
		memset(dst, 0, sizeof(dst));
		uhmm_migrate_pages(&m);
		uhmm_migrate_finalize(&m);
		ret = -EINVAL;
	}
	if (ret == -EINVAL && end - start > uhmm__dmirror_page_size)
		ret = uhmm__dmirror_migrate_setup(&m, vmf->address,
				vmf->address + uhmm__dmirror_page_size,
				src, dst, dev,
				UHMM_MIGRATE_SELECT_DEVICE_PRIVATE,
				vmf->page);
	if (ret)
		return ret;
	ret = uhmm__dmirror_to_sys_copy(dev, NULL, &m, vmf->page);
	uhmm_migrate_pages(&m);
	uhmm_migrate_finalize(&m);
	return ret;
}

/*
 * Evict every page of the device to system memory (dmirror_device_evict_
 * chunk): RELEASE, and the close of the last open. Pages a CPU fault is
 * migrating at that moment are left to it.
 */
int uhmm__dmirror_dev_evict(struct dmirror_device *dev)
{
	struct uhmm_pagemap *pgmap;
	unsigned long npages, first, i, n;
	struct dmirror_xfer x = { 0 };
	uint64_t *src, *dst;

	pthread_mutex_lock(&dev->lock);
	pgmap = dev->pgmap;
	npages = pgmap ? uhmm_pagemap_npages(pgmap) : 0;
	pthread_mutex_unlock(&dev->lock);
	if (!npages)
		return 0;
	src = uhmm_alloc(DMIRROR_EVICT_CHUNK * sizeof(*src));
	dst = uhmm_alloc(DMIRROR_EVICT_CHUNK * sizeof(*dst));
	x.d = uhmm_alloc(DMIRROR_EVICT_CHUNK * sizeof(*x.d));
	if (!src || !dst || !x.d) {
		uhmm_free(src);
		uhmm_free(dst);
		uhmm_free(x.d);
		return -ENOMEM;
	}
	for (first = 0; first < npages; first += n) {
		bool any = false;

		n = npages - first;
		if (n > DMIRROR_EVICT_CHUNK)
			n = DMIRROR_EVICT_CHUNK;
		if (uhmm_migrate_device_range(src, pgmap, first, n))
			continue;
		for (i = 0; i < n && !any; i++)
			any = src[i] & UHMM_MIGRATE_PFN_MIGRATE;
		if (!any)
			continue;
		/*
		 * uhmm_migrate_device_range() raises no invalidation and the
		 * addresses are unknown here: drop every device entry.
		 */
		dmirror_dev_unmap_all(dev);
		memset(dst, 0, n * sizeof(*dst));
		for (i = 0; i < n; i++) {
			struct uhmm_page *page = uhmm_migrate_pfn_to_page(src[i]);
			int tries = DMIRROR_FAULT_ALLOC_TRIES, r = -ENOMEM;

			if (!page || !(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
				continue;
			while (tries-- > 0 && r)
				r = uhmm_migrate_alloc_system(&dst[i]);
			if (r) {
				dst[i] = 0;
				continue;
			}
			uhmm__dmirror_xfer_add(&x,
					       uhmm_migrate_pfn_to_addr(dst[i]),
					       uhmm_page_data(page),
					       uhmm__dmirror_page_size);
		}
		if (uhmm__dmirror_xfer_run(dev, &x))
			memset(dst, 0, n * sizeof(*dst));
		uhmm_migrate_device_finalize(src, dst, n);
	}
	uhmm_free(src);
	uhmm_free(dst);
	uhmm_free(x.d);
	return 0;
}
