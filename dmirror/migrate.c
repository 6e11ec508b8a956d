/* SPDX-License-Identifier: MIT */
/*
 * dmirror's migration commands: MIGRATE_TO_DEV, MIGRATE_TO_SYS, EXCLUSIVE
 * and CHECK_EXCLUSIVE (test_hmm.c: dmirror_migrate_to_device,
 * dmirror_migrate_to_system, dmirror_exclusive, dmirror_check_atomic).
 */
#include "dmirror_internal.h"

/*
 * -EINVAL if a page of [start, end) has no mapping or is not readable
 * (a snapshot: nothing is faulted).
 */
static int dmirror_error_chunk(struct uhmm_dmirror *dm,
			       const struct uhmm_range *range, unsigned long n,
			       void *arg)
{
	(void)dm;
	(void)arg;
	for (unsigned long i = 0; i < n; i++)
		if (range->hmm_pfns[i] & UHMM_PFN_ERROR)
			return -EINVAL;
	return 0;
}

static int dmirror_check_mapped(struct uhmm_dmirror *dm, unsigned long start,
				unsigned long end)
{
	int ret;

	/*
	 * Invalidations of munmaps and madvises that returned have run
	 * (they run on uhmm's worker): one landing later would clear the
	 * entries this command is about to install.
	 */
	ret = uhmm_range_revalidate(start, end);
	if (ret)
		return ret;
	ret = uhmm__dmirror_walk(dm, start, end, 0, dmirror_error_chunk, NULL);

	return ret == -EFAULT ? -EINVAL : ret;
}

/*
 * EXCLUSIVE (dmirror_exclusive): each page becomes exclusive to the
 * device, with an ATOMIC entry; then the data are read back through the
 * device page table. The CPU's next touch revokes it (an EXCLUSIVE
 * invalidation clears the entry).
 */
int uhmm__dmirror_exclusive(struct uhmm_dmirror *dm,
			    struct uhmm_dmirror_cmd *cmd,
			    unsigned long start, unsigned long end)
{
	unsigned long addr;
	int ret;

	ret = uhmm__dmirror_notifier_get(dm);
	if (ret)
		return ret;
	ret = dmirror_check_mapped(dm, start, end);
	if (ret)
		return ret;
	for (addr = start; addr < end; addr += uhmm__dmirror_page_size) {
		uint64_t vpn = addr >> uhmm__dmirror_page_shift, *leaf = NULL;
		uint64_t deadline = uhmm__dmirror_now_ns() + DMIRROR_TIMEOUT_NS;
		void *dev_addr;

		/*
		 * A CPU touch between make_device_exclusive() and the entry
		 * revokes it (an EXCLUSIVE invalidation): the sequence says
		 * so, and the page is taken again, or the entry would stay
		 * ATOMIC with the CPU owning the page. Any invalidation
		 * callback after the taking's own (dmirror_invalidate()
		 * counts them) may be a revoke. Not the sequence: a revoke
		 * open at the same time as another invalidation gets that
		 * one's sequence, which may be the taking's own.
		 */
		for (;;) {
			ret = uhmm_make_device_exclusive(addr, dm, &dev_addr);
			if (ret)
				return ret;
			pthread_mutex_lock(&dm->lock);
			if (dm->notifier && dm->excl_mark == dm->inv_calls)
				break;
			pthread_mutex_unlock(&dm->lock);
			if (uhmm__dmirror_now_ns() > deadline)
				return -EBUSY;
		}
		leaf = uhmm__dmirror_pt_leaf_alloc(&dm->pt, vpn);
		if (leaf)
			leaf[vpn & PT_MASK] = UHMM_PFN_VALID | UHMM_PFN_WRITE |
				DMIRROR_PFN_ATOMIC |
				(((uintptr_t)dev_addr >>
				  uhmm__dmirror_page_shift) &
				 UHMM_PFN_FRAME_MASK);
		pthread_mutex_unlock(&dm->lock);
		if (!leaf)
			return -ENOMEM;
	}
	return uhmm__dmirror_read_back(dm, cmd, start);
}

/* Whether an entry of @leaf [from, to) is ATOMIC (stops the walk). */
static bool pt_atomic_leaf(uint64_t *leaf, uint64_t from, uint64_t to,
			   void *arg)
{
	(void)arg;
	for (uint64_t j = from; j < to; j++)
		if (leaf[j] & DMIRROR_PFN_ATOMIC)
			return true;
	return false;
}

/* CHECK_EXCLUSIVE: -EPERM while an ATOMIC entry remains in the range. */
int uhmm__dmirror_check_exclusive(struct uhmm_dmirror *dm, unsigned long start,
				  unsigned long end)
{
	int ret = 0;

	/* A walk of what is mapped: npages may be huge. */
	pthread_mutex_lock(&dm->lock);
	if (uhmm__dmirror_pt_walk(&dm->pt, start >> uhmm__dmirror_page_shift,
				  end >> uhmm__dmirror_page_shift,
				  pt_atomic_leaf, NULL))
		ret = -EPERM;
	pthread_mutex_unlock(&dm->lock);
	return ret;
}

/* Pages of the next migration chunk: at most DMIRROR_MIGRATE_CHUNK, and
 * ending at a 2 MiB boundary, so that THPs fall in one chunk. */
static unsigned long dmirror_chunk_pages(unsigned long addr, unsigned long end)
{
	unsigned long blk = DMIRROR_BLOCK_PAGES << uhmm__dmirror_page_shift;
	unsigned long next = (addr | (blk - 1)) + 1;

	if (next > end || next < addr)
		next = end;
	return (next - addr) >> uhmm__dmirror_page_shift;
}

/*
 * A COMPOUND source entry of MIGRATE_TO_DEV: a device THP, or, when that
 * allocation fails (FAIL_ALLOC forces it once), base pages for each of
 * its pages (dmirror_migrate_alloc_and_copy). Coherent memory has no
 * device THPs here (uhmm installs coherent frames per page): base pages
 * always, FAIL_ALLOC used up by the THP attempt as in the kernel. Returns
 * the entries used.
 */
static unsigned long dmirror_to_dev_folio(struct uhmm_dmirror *dm,
					  struct dmirror_xfer *x,
					  const uint64_t *src, uint64_t *dst,
					  unsigned long left)
{
	struct dmirror_device *dev = dm->dev;
	unsigned long n = left < DMIRROR_BLOCK_PAGES ? left : DMIRROR_BLOCK_PAGES;
	size_t ps = uhmm__dmirror_page_size;
	char *from = uhmm_migrate_pfn_to_addr(src[0]);
	struct uhmm_page *head = NULL;

	if (!uhmm__dmirror_fail_alloc(dm) && n == DMIRROR_BLOCK_PAGES &&
	    !uhmm__dmirror_coherent(dev))
		head = uhmm__dmirror_folio_alloc(dev);
	if (head) {
		char *mem = uhmm_page_data(head);

		if (from)
			uhmm__dmirror_xfer_add(x, mem, from, n * ps);
		else
			memset(mem, 0, n * ps);
		dst[0] = uhmm_migrate_pfn_device(head) | UHMM_MIGRATE_PFN_COMPOUND |
			 (src[0] & UHMM_MIGRATE_PFN_WRITE);
		return n;
	}
	for (unsigned long k = 0; k < n; k++) {
		struct uhmm_page *page = uhmm__dmirror_page_alloc(dev);
		char *mem;

		if (!page)
			break;
		mem = uhmm_page_data(page);
		if (from)
			uhmm__dmirror_xfer_add(x, mem, from + k * ps, ps);
		else
			memset(mem, 0, ps);
		dst[k] = uhmm_migrate_pfn_device(page) |
			 (src[0] & UHMM_MIGRATE_PFN_WRITE);
	}
	return n;
}

/* Give back the device page(s) of a dst[] entry (a THP: all of them). */
static void dmirror_put_dst(struct dmirror_device *dev, uint64_t dst)
{
	struct uhmm_page *page = uhmm_migrate_pfn_to_page(dst);
	unsigned long n = (dst & UHMM_MIGRATE_PFN_COMPOUND) ? DMIRROR_BLOCK_PAGES : 1;

	for (unsigned long k = 0; page && k < n; k++)
		uhmm_page_put(uhmm_pagemap_page(dev->pgmap, uhmm_page_index(page) + k));
}

/* MIGRATE_TO_DEV (dmirror_migrate_to_device). */
int uhmm__dmirror_migrate_to_dev(struct uhmm_dmirror *dm,
				 struct uhmm_dmirror_cmd *cmd,
				 unsigned long start, unsigned long end)
{
	struct dmirror_device *dev = dm->dev;
	uint64_t src[DMIRROR_MIGRATE_CHUNK], dst[DMIRROR_MIGRATE_CHUNK];
	struct uhmm_dma_desc d[DMIRROR_MIGRATE_CHUNK];
	struct dmirror_xfer x = { .d = d };
	struct uhmm_migrate m;
	unsigned long addr, i;
	int ret;

	ret = uhmm__dmirror_notifier_get(dm);
	if (ret)
		return ret;
	ret = dmirror_check_mapped(dm, start, end);
	if (ret)
		return ret;
	/*
	 * The read-back buffer off the devices first: faulting it back
	 * after the migration could take pages of the range with it (the
	 * core's fault-back read-ahead).
	 */
	uhmm__dmirror_buf_prefault(cmd->ptr,
				   cmd->npages << uhmm__dmirror_page_shift);

	for (addr = start; addr < end; addr = m.end) {
		unsigned long n = dmirror_chunk_pages(addr, end);
		uint64_t vpn = addr >> uhmm__dmirror_page_shift;
		uint64_t *leaf = NULL;
		uint64_t left = 0, cflags = 0;
		struct uhmm_page *chead = NULL;

		/* SELECT_COMPOUND for both kinds, as the kernel's dmirror:
		 * a THP's FAIL_ALLOC falls back to base pages. */
		ret = uhmm__dmirror_migrate_setup(&m, addr,
				addr + (n << uhmm__dmirror_page_shift),
				src, dst, dev,
				UHMM_MIGRATE_SELECT_SYSTEM |
				UHMM_MIGRATE_SELECT_COMPOUND, NULL);
		if (ret)
			return ret;
		memset(dst, 0, m.npages * sizeof(*dst));
		for (i = 0; i < m.npages; i++) {
			struct uhmm_page *page;
			char *mem;

			if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
				continue;
			if (src[i] & UHMM_MIGRATE_PFN_COMPOUND) {
				i += dmirror_to_dev_folio(dm, &x, &src[i], &dst[i],
							  m.npages - i) - 1;
				continue;
			}
			if (uhmm__dmirror_fail_alloc(dm))
				continue;
			page = uhmm__dmirror_page_alloc(dev);
			if (!page)
				continue;
			mem = uhmm_page_data(page);
			if (src[i] & UHMM_MIGRATE_PFN_VALID)
				uhmm__dmirror_xfer_add(&x, mem,
					uhmm_migrate_pfn_to_addr(src[i]),
					uhmm__dmirror_page_size);
			else
				memset(mem, 0, uhmm__dmirror_page_size);
			dst[i] = uhmm_migrate_pfn_device(page) |
				 (src[i] & UHMM_MIGRATE_PFN_WRITE);
		}
		if (uhmm__dmirror_xfer_run(dev, &x)) {
			/* Nothing moves: the pages go back to the device. */
			for (i = 0; i < m.npages; i++) {
				dmirror_put_dst(dev, dst[i]);
				dst[i] = 0;
			}
		}
		uhmm_migrate_pages(&m);

		/*
		 * The migrated pages in this open's page table, as
		 * uhmm_range_fault() reports them to their owner
		 * (dmirror_migrate_finalize_and_map).
		 */
		pthread_mutex_lock(&dm->lock);
		for (i = 0; i < m.npages; i++, vpn++) {
			uint64_t dd = dst[i], sf = src[i];

			if (!leaf || !(vpn & PT_MASK))
				leaf = uhmm__dmirror_pt_leaf_alloc(&dm->pt,
								   vpn);
			if (left) {
				/* A tail page of a device THP. */
				left--;
				chead = uhmm_pagemap_page(dev->pgmap,
						uhmm_page_index(chead) + 1);
				dd = uhmm_migrate_pfn_device(chead);
				sf = cflags;
			} else if ((sf & UHMM_MIGRATE_PFN_MIGRATE) &&
				   (dd & UHMM_MIGRATE_PFN_COMPOUND)) {
				chead = uhmm_migrate_pfn_to_page(dd);
				left = DMIRROR_BLOCK_PAGES - 1;
				cflags = sf;
			}
			if (!leaf || !(sf & UHMM_MIGRATE_PFN_MIGRATE) || !dd)
				continue;
			/* Coherent memory is mapped at its address: the
			 * device reaches it there, as the CPU does. */
			leaf[vpn & PT_MASK] = UHMM_PFN_VALID |
				((sf & UHMM_MIGRATE_PFN_WRITE) ?
				 UHMM_PFN_WRITE : 0) |
				(uhmm__dmirror_coherent(dev) ?
				 UHMM_PFN_DEVICE_COHERENT | (vpn & UHMM_PFN_FRAME_MASK) :
				 UHMM_PFN_DEVICE_PRIVATE |
				 ((dd >> UHMM_MIGRATE_PFN_SHIFT) &
				  UHMM_PFN_FRAME_MASK));
		}
		pthread_mutex_unlock(&dm->lock);
		uhmm_migrate_finalize(&m);
		/* Pages allocated for entries that did not move. */
		for (i = 0; i < m.npages; i++)
			if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
				dmirror_put_dst(dev, dst[i]);
	}

	/* Return the migrated data for verification. */
	return uhmm__dmirror_read_back(dm, cmd, start);
}

/* MIGRATE_TO_SYS (dmirror_migrate_to_system). */
int uhmm__dmirror_migrate_to_sys(struct uhmm_dmirror *dm,
				 struct uhmm_dmirror_cmd *cmd,
				 unsigned long start, unsigned long end)
{
	struct dmirror_device *dev = dm->dev;
	uint64_t src[DMIRROR_MIGRATE_CHUNK], dst[DMIRROR_MIGRATE_CHUNK];
	struct uhmm_migrate m;
	unsigned long addr, i;
	int ret;

	ret = uhmm__dmirror_notifier_get(dm);
	if (ret)
		return ret;
	ret = dmirror_check_mapped(dm, start, end);
	if (ret)
		return ret;

	for (addr = start; addr < end; addr = m.end) {
		unsigned long n = dmirror_chunk_pages(addr, end);

		ret = uhmm__dmirror_migrate_setup(&m, addr,
				addr + (n << uhmm__dmirror_page_shift),
				src, dst, dev,
				uhmm__dmirror_coherent(dev) ?
				UHMM_MIGRATE_SELECT_DEVICE_COHERENT :
				UHMM_MIGRATE_SELECT_DEVICE_PRIVATE |
				UHMM_MIGRATE_SELECT_COMPOUND,
				NULL);
		if (ret)
			return ret;
		uhmm__dmirror_to_sys_copy(dev, dm, &m, NULL);
		uhmm_migrate_pages(&m);
		for (i = 0; i < m.npages; i++)
			if ((src[i] & UHMM_MIGRATE_PFN_MIGRATE) &&
			    (src[i] & UHMM_MIGRATE_PFN_VALID))
				cmd->cpages += (src[i] & UHMM_MIGRATE_PFN_COMPOUND) ?
					DMIRROR_BLOCK_PAGES : 1;
		uhmm_migrate_finalize(&m);
	}
	return 0;
}
