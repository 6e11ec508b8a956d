/* SPDX-License-Identifier: MIT */
/*
 * uhmm_range_fault(): the hmm_range_fault() walk on public interfaces.
 * PROCMAP_QUERY gives each VMA and its protection, PAGEMAP_SCAN the state
 * of its pages in runs, MADV_POPULATE_READ/WRITE faults in what is
 * requested (a CPU fault, copy-on-write included), and the walk repeats
 * until the requests are met, as hmm_range_fault re-walks after a fault.
 * Layer 4.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "mm.h"

#define SCAN_VEC_STACK 256
#define SCAN_VEC_BIG 4096

/*
 * Each thread's region vector for PAGEMAP_SCAN, allocated on its first
 * large walk (fewer ioctls on fragmented ranges) and kept. 96 KiB: below
 * malloc's mmap threshold, so it comes from the heap and never lands in a
 * hole the application left in its address space.
 */
static _Thread_local struct os_page_region *scan_vec_big;
static pthread_key_t scan_key;
static pthread_once_t scan_key_once = PTHREAD_ONCE_INIT;

static void scan_key_init(void)
{
	pthread_key_create(&scan_key, uhmm_free);
}
#define FAULT_TRIES 16

struct uhmm_page *uhmm_pfn_to_page(uint64_t pfn)
{
	struct uhmm_rt *rt;

	if (pfn & UHMM_PFN_DEVICE_PRIVATE)
		return frame_page(pfn & UHMM_PFN_FRAME_MASK);
	/* A coherent page's frame is its virtual page number. */
	if (!(pfn & UHMM_PFN_DEVICE_COHERENT) || !(rt = uhmm__rt_peek()))
		return NULL;
	return uhmm__coherent_page_at(rt, (pfn & UHMM_PFN_FRAME_MASK) << rt->page_shift);
}

void *uhmm_pfn_to_addr(uint64_t pfn)
{
	struct uhmm_rt *rt = uhmm__rt_peek();
	unsigned int shift = rt ? rt->page_shift : 12;

	return (void *)(uintptr_t)((pfn & UHMM_PFN_FRAME_MASK) << shift);
}

static inline uint64_t request(const struct uhmm_range *range, size_t i)
{
	return ((range->hmm_pfns[i] & range->pfn_flags_mask) |
		range->default_flags) & (UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE);
}

/* Pages that cannot be accessed at all: a hole, PROT_NONE, VM_PFNMAP. */
static int fill_error(const struct uhmm_range *range, size_t i, size_t n)
{
	for (size_t k = i; k < i + n; k++)
		if (request(range, k) & UHMM_PFN_REQ_FAULT)
			return -EFAULT;
	for (size_t k = i; k < i + n; k++)
		range->hmm_pfns[k] = (range->hmm_pfns[k] & UHMM_PFN_INOUT_FLAGS) |
				     UHMM_PFN_ERROR;
	return 0;
}

struct vma_ctx {
	struct uhmm_rt *rt;
	struct uhmm_range *range;
	bool writable;
	bool shared;
	bool cow_check;		/* private, writable, and the process forked */
	bool devices;		/* some pages live on devices */
	bool coherent;		/* some pages are coherent device memory */
	uint64_t order_bits;	/* for huge pages */
	unsigned long vma_start, vma_end;
	/* device_order()'s last 2 MiB block and its answer. */
	unsigned long thp_blk;
	uint64_t thp_order;
	bool thp_valid;
};

#define PM_MMAP_EXCLUSIVE (1ULL << 56)
#define PM_PRESENT (1ULL << 63)
#define PM_CHUNK 512

/*
 * After fork(), anonymous pages of private mappings may be shared
 * copy-on-write with a child: their PTEs are read-only and PAGEMAP_SCAN
 * cannot tell. /proc/self/pagemap's "exclusively mapped" bit can: clear
 * WRITE in pfns[i..i+n) for pages that are not. Costs 8 bytes of pagemap
 * per page, only in processes that forked.
 */
static int cow_filter(const struct vma_ctx *v, unsigned long addr, size_t n,
		      uint64_t *out, bool *need_write)
{
	uint64_t pm[PM_CHUNK];
	unsigned int shift = v->rt->page_shift;

	for (size_t done = 0; done < n;) {
		size_t k = n - done < PM_CHUNK ? n - done : PM_CHUNK;
		off_t off = (off_t)(((addr >> shift) + done) * sizeof(uint64_t));
		ssize_t r = uhmm__os_pread(v->rt->pagemap_fd, pm, k * sizeof(uint64_t), off);

		if (r < (ssize_t)(k * sizeof(uint64_t)))
			return -EBUSY;
		for (size_t x = 0; x < k; x++) {
			/* Gone since the scan: the mapping changed under us,
			 * as a moved sequence would say in the kernel. */
			if (!(pm[x] & PM_PRESENT))
				return -EBUSY;
			if (pm[x] & PM_MMAP_EXCLUSIVE)
				continue;
			if (out)
				out[done + x] &= ~UHMM_PFN_WRITE;
			if (need_write)
				need_write[done + x] = true;
		}
		done += k;
	}
	return 0;
}

/* The output flags for a run of pages with PAGEMAP_SCAN categories @cat. */
static uint64_t cat_flags(const struct vma_ctx *v, uint64_t cat)
{
	uint64_t f;

	if (cat & OS_PAGE_IS_GUARD)
		return UHMM_PFN_ERROR;
	if (!(cat & OS_PAGE_IS_PRESENT))
		return 0;
	f = UHMM_PFN_VALID;
	if (cat & OS_PAGE_IS_PFNZERO)
		f |= UHMM_PFN_ZERO;
	/* Writable PTE: a writable VMA, not the zero page, and for private
	 * mappings a page of our own rather than the file's page cache. */
	else if (v->writable && (v->shared || !(cat & OS_PAGE_IS_FILE)))
		f |= UHMM_PFN_WRITE;
	if (cat & OS_PAGE_IS_HUGE)
		f |= v->order_bits;
	return f;
}

/*
 * A page that is not present may live on a device: reported (VALID, the
 * page as frame) to its owner, 0 to anyone else (asking REQ_FAULT then
 * faults it back like a CPU access, through the owner's migrate_to_ram).
 */
static uint64_t device_flags(const struct vma_ctx *v, unsigned long addr)
{
	struct uhmm_page *p = uhmm__device_page_at(v->rt, addr);

	if (!p || uhmm_page_owner(p) != v->range->dev_private_owner ||
	    !v->range->dev_private_owner)
		return 0;
	return UHMM_PFN_VALID | UHMM_PFN_DEVICE_PRIVATE |
	       (v->writable ? UHMM_PFN_WRITE : 0) |
	       (((uint64_t)(uintptr_t)p >> 3) & UHMM_PFN_FRAME_MASK);
}

/*
 * The order bits of the device page @df names, at @addr. A device THP
 * maps at PMD order, as the kernel reports it, only while its PMD would
 * still be whole: the 2 MiB block around @addr lies inside this VMA (one
 * protection) and holds the THP's 512 pages in order. A munmap,
 * MADV_DONTNEED or mprotect of part of it, or an mremap of it (or of
 * part) to an address that is not 2 MiB-aligned, splits the kernel's
 * PMD: base pages. Checked once per block (512 entry lookups).
 */
static uint64_t device_order(struct vma_ctx *v, unsigned long addr, uint64_t df)
{
	struct uhmm_page *p = frame_page(df & UHMM_PFN_FRAME_MASK), *head;
	unsigned long blk = addr & ~(PMD_BYTES - 1);
	unsigned int shift = v->rt->page_shift;

	if (!(df & UHMM_PFN_DEVICE_PRIVATE) || !uhmm_page_order(p))
		return 0;
	if (v->thp_valid && v->thp_blk == blk)
		return v->thp_order;
	v->thp_valid = true;
	v->thp_blk = blk;
	v->thp_order = 0;
	head = p->head;
	if (!head || blk < v->vma_start || blk + PMD_BYTES > v->vma_end ||
	    (PMD_BYTES >> shift) != PMD_PAGES)
		return 0;
	for (unsigned long i = 0; i < PMD_PAGES; i++)
		if (uhmm__device_page_at(v->rt, blk + (i << shift)) != head + i)
			return 0;
	v->thp_order = (uint64_t)uhmm_page_order(p) << UHMM_PFN_ORDER_SHIFT;
	return v->thp_order;
}

static bool satisfied(uint64_t req, uint64_t out)
{
	if (!(req & UHMM_PFN_REQ_FAULT))
		return true;
	if (!(out & UHMM_PFN_VALID))
		return false;
	return !(req & UHMM_PFN_REQ_WRITE) || (out & UHMM_PFN_WRITE);
}

/* Fault in [a, b) of the range, as a CPU access would. */
static int populate(struct uhmm_rt *rt, unsigned long a, unsigned long b,
		    bool write)
{
	int r;

	do {
		r = uhmm__os_madvise((void *)a, b - a,
			       write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ);
	} while (r == -EINTR || r == -EAGAIN);
	(void)rt;
	if (r == -EPERM)
		return -EPERM;
	return r < 0 ? -EFAULT : 0;
}

struct run {
	unsigned long start, end;
	bool write;
	int faulted;
};

static int run_flush(struct uhmm_rt *rt, struct run *run)
{
	int r;

	if (run->start == run->end)
		return 0;
	uhmm__stat_populate(run->start, run->end, rt->page_size);
	r = populate(rt, run->start, run->end, run->write);
	run->start = run->end = 0;
	run->write = false;
	run->faulted = 1;
	return r;
}

/* Add [a, b) to the run of pages to fault; flush when not contiguous. */
static int run_add(struct uhmm_rt *rt, struct run *run, unsigned long a,
		   unsigned long b, bool write)
{
	int r = 0;

	/* A run is contiguous and of one kind: a read fault must not
	 * become a write fault (it would replace the zero page). */
	if (run->start != run->end && (run->end != a || run->write != write))
		r = run_flush(rt, run);
	if (run->start == run->end) {
		run->start = a;
		run->write = write;
	}
	run->end = b;
	return r;
}

/*
 * Decide what must be faulted among the regions of [from, to) and fault
 * it. Returns 1 when something was faulted (the chunk must be scanned
 * again), 0 when every request is met, or -errno.
 */
static int fault_regions(const struct vma_ctx *v, const struct os_page_region *reg,
			 size_t nreg, unsigned long from, unsigned long to)
{
	struct uhmm_range *range = v->range;
	unsigned int shift = v->rt->page_shift;
	unsigned long pg = 1ul << shift, addr = from;
	bool uniform = !range->pfn_flags_mask;
	struct run run = { 0 };
	int r;

	if (uniform && !(range->default_flags & UHMM_PFN_REQ_FAULT))
		return 0;
	for (size_t k = 0; k <= nreg; k++) {
		unsigned long rs = k < nreg ? reg[k].start : to;
		unsigned long re = k < nreg ? reg[k].end : to;
		uint64_t f;

		/* Pages between regions were not walked: errors. */
		for (unsigned long a = addr; a < rs; a += pg)
			if (request(range, (a - range->start) >> shift) &
			    UHMM_PFN_REQ_FAULT)
				return -EFAULT;
		if (k == nreg)
			break;
		f = cat_flags(v, reg[k].categories);
		if (!f && v->devices) {
			for (unsigned long a = rs; a < re; a += pg) {
				uint64_t req = request(range, (a - range->start) >> shift);

				if (satisfied(req, device_flags(v, a)))
					continue;
				r = run_add(v->rt, &run, a, a + pg,
					    req & UHMM_PFN_REQ_WRITE);
				if (r)
					return r;
			}
		} else if (v->cow_check && (f & UHMM_PFN_WRITE)) {
			/* Per page: some may be shared copy-on-write. */
			for (unsigned long a = rs; a < re; a += pg) {
				uint64_t req = request(range, (a - range->start) >> shift);
				bool shared_cow = false;

				if (!(req & UHMM_PFN_REQ_WRITE) || !(req & UHMM_PFN_REQ_FAULT))
					continue;
				r = cow_filter(v, a, 1, NULL, &shared_cow);
				if (r)
					return r;
				if (!shared_cow)
					continue;
				r = run_add(v->rt, &run, a, a + pg, true);
				if (r)
					return r;
			}
		} else if (uniform) {
			uint64_t req = request(range, (rs - range->start) >> shift);

			if (!satisfied(req, f)) {
				if (f & UHMM_PFN_ERROR)
					return -EFAULT;
				r = run_add(v->rt, &run, rs, re,
					    req & UHMM_PFN_REQ_WRITE);
				if (r)
					return r;
			}
		} else {
			for (unsigned long a = rs; a < re; a += pg) {
				uint64_t req = request(range, (a - range->start) >> shift);

				if (satisfied(req, f))
					continue;
				if (f & UHMM_PFN_ERROR)
					return -EFAULT;
				r = run_add(v->rt, &run, a, a + pg,
					    req & UHMM_PFN_REQ_WRITE);
				if (r)
					return r;
			}
		}
		addr = re;
	}
	r = run_flush(v->rt, &run);
	return r ? r : run.faulted;
}

static int fill_regions(struct vma_ctx *v, const struct os_page_region *reg,
			size_t nreg, unsigned long from, unsigned long to)
{
	struct uhmm_range *range = v->range;
	uint64_t *pfns = range->hmm_pfns;
	unsigned int shift = v->rt->page_shift;
	unsigned long addr = from;

	for (size_t k = 0; k <= nreg; k++) {
		unsigned long rs = k < nreg ? reg[k].start : to;
		unsigned long re = k < nreg ? reg[k].end : to;
		size_t i = (addr - range->start) >> shift;
		size_t n = (rs - addr) >> shift;
		uint64_t f, frame;

		for (size_t x = i; x < i + n; x++)
			pfns[x] = (pfns[x] & UHMM_PFN_INOUT_FLAGS) |
				  UHMM_PFN_ERROR;
		if (k == nreg)
			break;
		f = cat_flags(v, reg[k].categories);
		i = (rs - range->start) >> shift;
		n = (re - rs) >> shift;
		if (f & UHMM_PFN_VALID) {
			frame = rs >> shift;
			for (size_t x = 0; x < n; x++)
				pfns[i + x] = (pfns[i + x] & UHMM_PFN_INOUT_FLAGS) |
					      f | (frame + x);
			if (v->cow_check && (f & UHMM_PFN_WRITE) &&
			    cow_filter(v, rs, n, &pfns[i], NULL))
				return -EBUSY;
			/* Coherent device pages are mapped like RAM. */
			if (v->coherent)
				for (size_t x = 0; x < n; x++)
					if (uhmm__coherent_page_at(v->rt, rs + (x << shift)))
						pfns[i + x] |= UHMM_PFN_DEVICE_COHERENT;
		} else if (!f && v->devices) {
			for (size_t x = 0; x < n; x++) {
				uint64_t df = device_flags(v, rs + (x << shift));

				/*
				 * A device page claimed for migration since the
				 * decision (the fault-back claims it before its
				 * invalidation runs): as a moved sequence.
				 */
				if (!satisfied(request(range, i + x), df))
					return -EBUSY;
				df |= device_order(v, rs + (x << shift), df);
				pfns[i + x] = (pfns[i + x] & UHMM_PFN_INOUT_FLAGS) | df;
			}
		} else {
			for (size_t x = 0; x < n; x++)
				pfns[i + x] = (pfns[i + x] & UHMM_PFN_INOUT_FLAGS) | f;
		}
		addr = re;
	}
	return 0;
}

static int walk_vma(struct uhmm_rt *rt, struct uhmm_range *range,
		    const struct os_procmap_query *q, unsigned long s,
		    unsigned long e)
{
	struct os_page_region stack_reg[SCAN_VEC_STACK], *reg = stack_reg;
	uint64_t vec_len = SCAN_VEC_STACK;
	struct vma_ctx v = {
		.rt = rt,
		.range = range,
		.writable = q->vma_flags & OS_PROCMAP_QUERY_VMA_WRITABLE,
		.shared = q->vma_flags & OS_PROCMAP_QUERY_VMA_SHARED,
		.vma_start = q->vma_start,
		.vma_end = q->vma_end,
	};

	v.cow_check = rt->forked && v.writable && !v.shared;
	v.devices = atomic_load_explicit(&rt->has_device_pages, memory_order_relaxed);
	v.coherent = atomic_load_explicit(&rt->has_coherent_pages, memory_order_relaxed);
	unsigned long cur = s;
	unsigned int shift = rt->page_shift;
	uint64_t scan_mask;
	int tries = 0, r;

	if (q->vma_page_size > rt->page_size)
		v.order_bits = (uint64_t)(__builtin_ctzll(q->vma_page_size) - shift)
			       << UHMM_PFN_ORDER_SHIFT;
	else
		v.order_bits = (uint64_t)rt->pmd_order << UHMM_PFN_ORDER_SHIFT;

	/* A write request on a mapping that cannot be written. */
	if (!v.writable) {
		size_t i = (s - range->start) >> shift;

		for (size_t k = 0; k < (e - s) >> shift; k++) {
			uint64_t req = request(range, i + k);

			if ((req & UHMM_PFN_REQ_FAULT) && (req & UHMM_PFN_REQ_WRITE))
				return -EPERM;
			if (!range->pfn_flags_mask)
				break;
		}
	}
	r = uhmm__track_vma(rt, q, s, e);
	if (r < 0)
		return r;
	/*
	 * PAGE_IS_FILE makes the kernel look up every page (3x the scan
	 * cost); it only matters for private mappings of a file.
	 */
	scan_mask = rt->scan_mask;
	if (v.shared || (q->inode == 0 && q->dev_major == 0 && q->dev_minor == 0))
		scan_mask &= ~OS_PAGE_IS_FILE;
	if (((e - s) >> shift) > SCAN_VEC_STACK) {
		if (!scan_vec_big) {
			scan_vec_big = uhmm_alloc(SCAN_VEC_BIG * sizeof(*scan_vec_big));
			/* Given back when the thread exits. */
			pthread_once(&scan_key_once, scan_key_init);
			if (scan_vec_big)
				pthread_setspecific(scan_key, scan_vec_big);
		}
		if (scan_vec_big) {
			reg = scan_vec_big;
			vec_len = SCAN_VEC_BIG;
		}
	}

	while (cur < e) {
		struct os_pm_scan_arg a = {
			.size = sizeof(a),
			.start = cur,
			.end = e,
			.vec = (uintptr_t)reg,
			.vec_len = vec_len,
			.return_mask = scan_mask,
		};
		unsigned long to;
		int n = uhmm__os_pagemap_scan(rt->pagemap_fd, &a);

		if (n < 0)
			return n == -ENOMEM ? -ENOMEM : -EFAULT;
		/*
		 * A short vector means the walk reached @e; a full one, that
		 * it stopped after the last region. walk_end is not used: it
		 * can be stale (seen on 6.18 when the kernel's own buffer of
		 * 512 regions filled). Every page matches (no category
		 * mask), so the regions cover what was walked.
		 */
		to = (uint64_t)n == vec_len ? reg[n - 1].end : e;
		if (to <= cur || to > e)
			to = e;
		r = fault_regions(&v, reg, (size_t)n, cur, to);
		if (r < 0)
			return r;
		if (r > 0) {
			uhmm__stat_inc(UHMM__STAT_range_fault_rewalks);
			if (++tries > FAULT_TRIES)
				return -EBUSY;
			continue;	/* scan the same chunk again */
		}
		v.thp_valid = false;	/* a fault may have changed it */
		r = fill_regions(&v, reg, (size_t)n, cur, to);
		if (r)
			return r;
		cur = to;
	}
	return 0;
}

int uhmm_range_fault(struct uhmm_range *range)
{
	struct uhmm_rt *rt = uhmm__rt_peek();
	unsigned long addr, start, end;
	unsigned int shift;
	int r;

	if (!range || !range->hmm_pfns || !uhmm__sub_valid(range->notifier, rt))
		return -EINVAL;
	start = range->start;
	end = range->end;
	if (start >= end || !uhmm__aligned(rt, start) || !uhmm__aligned(rt, end) ||
	    start < range->notifier->start || end > range->notifier->end)
		return -EINVAL;
	uhmm__stat_range_fault(range);
	shift = rt->page_shift;
	if (uhmm_interval_check_retry(range->notifier, range->notifier_seq))
		return -EBUSY;
	/* A munmap or madvise that returned has dropped its device pages. */
	if (atomic_load_explicit(&rt->has_device_pages, memory_order_relaxed))
		uhmm__wait_readers(rt);

	for (addr = start; addr < end;) {
		struct os_procmap_query q;
		unsigned long seg_end;
		bool bad;

		r = uhmm__vma_query(rt, addr, &q);
		if (r < 0 && r != -ENOENT)
			return r;
		if (r == -ENOENT || q.vma_start >= end) {
			seg_end = end;
			bad = true;
		} else if (q.vma_start > addr) {
			seg_end = q.vma_start;
			bad = true;
		} else {
			seg_end = q.vma_end < end ? q.vma_end : end;
			bad = !(q.vma_flags & OS_PROCMAP_QUERY_VMA_READABLE);
		}
		if (bad)
			r = fill_error(range, (addr - start) >> shift,
				       (seg_end - addr) >> shift);
		else
			r = walk_vma(rt, range, &q, addr, seg_end);
		if (r < 0)
			return r;
		addr = seg_end;
		if (uhmm_interval_check_retry(range->notifier,
					      range->notifier_seq))
			return -EBUSY;
	}
	return 0;
}

/* ---- VMA lookup ---- */

/*
 * vma_is_anonymous() of a VMA with no file behind it: false for the
 * kernel's special mappings ([vdso], [vvar], [vsyscall], ...), which
 * PROCMAP_QUERY tells by their name only.
 */
static bool vma_anonymous(struct uhmm_rt *rt, const struct os_procmap_query *q)
{
	struct os_procmap_query n;
	char name[128];

	if (q->inode || q->dev_major || q->dev_minor)
		return false;
	memset(&n, 0, sizeof(n));
	n.size = sizeof(n);
	n.query_addr = q->vma_start;
	n.vma_name_addr = (uintptr_t)name;
	n.vma_name_size = sizeof(name);
	/* A name too long for [anon:...] is no special mapping's. */
	if (uhmm__os_procmap_query(rt->maps_fd, &n) < 0 || !n.vma_name_size)
		return true;
	name[sizeof(name) - 1] = 0;
	return name[0] != '[' || !strcmp(name, "[heap]") ||
	       !strcmp(name, "[stack]") || !strncmp(name, "[anon:", 6);
}

/* The lowest VMA that ends above @addr (find_vma), into @vma. */
static int vma_find(unsigned long addr, struct uhmm_vma *vma)
{
	struct os_procmap_query q;
	struct uhmm_rt *rt;
	int err = 0, r;

	rt = uhmm__rt_get(&err);
	if (!rt)
		return err;
	r = uhmm__vma_query(rt, addr, &q);
	if (r < 0)
		return r;
	memset(vma, 0, sizeof(*vma));
	vma->start = q.vma_start;
	vma->end = q.vma_end;
	vma->page_size = q.vma_page_size;
	if (q.vma_flags & OS_PROCMAP_QUERY_VMA_READABLE)
		vma->flags |= UHMM_VMA_READ;
	if (q.vma_flags & OS_PROCMAP_QUERY_VMA_WRITABLE)
		vma->flags |= UHMM_VMA_WRITE;
	if (q.vma_flags & OS_PROCMAP_QUERY_VMA_EXECUTABLE)
		vma->flags |= UHMM_VMA_EXEC;
	if (q.vma_flags & OS_PROCMAP_QUERY_VMA_SHARED)
		vma->flags |= UHMM_VMA_SHARED;
	if (q.vma_page_size > rt->page_size)
		vma->flags |= UHMM_VMA_HUGETLB;
	if (!(q.vma_flags & OS_PROCMAP_QUERY_VMA_SHARED) && vma_anonymous(rt, &q))
		vma->flags |= UHMM_VMA_ANON;
	return 0;
}

int uhmm_vma_lookup(unsigned long addr, struct uhmm_vma *vma)
{
	int r;

	if (!vma)
		return -EINVAL;
	r = vma_find(addr, vma);
	if (r == 0 && vma->start > addr)
		r = -ENOENT;
	if (r)
		memset(vma, 0, sizeof(*vma));
	return r;
}

int uhmm_find_vma_intersection(unsigned long start, unsigned long end,
			       struct uhmm_vma *vma)
{
	int r;

	if (!vma || start >= end)
		return -EINVAL;
	r = vma_find(start, vma);
	if (r == 0 && vma->start >= end)
		r = -ENOENT;
	if (r)
		memset(vma, 0, sizeof(*vma));
	return r;
}
