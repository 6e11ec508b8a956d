/* SPDX-License-Identifier: MIT */
/*
 * bench_migrate: what device memory and migrate_vma cost, each figure next
 * to the physical limit of the same operation measured in the same run
 * (docs/DESIGN.md, "Mechanisms on a stock kernel").
 *
 *   migrate_to_dev_<S>m_<L>_dma<T>   migration of S MiB of written anonymous
 *   migrate_to_sys_<S>m_<L>_dma<T>   memory to a device and back, GB/s, in
 *                                    chunks of 512 pages (2 MiB) per setup /
 *                                    pages / finalize, the copies done by a
 *                                    uhmm DMA engine of T threads (one batch
 *                                    per chunk, waited for before pages()),
 *                                    against memcpy of the same bytes. L is
 *                                    4k (MADV_NOHUGEPAGE) or thp (2 MiB
 *                                    aligned, MADV_HUGEPAGE, migrated with
 *                                    SELECT_COMPOUND: whole, to device THPs)
 *   seq_read_device_64m              memcpy out of a 64 MiB range resident
 *                                    on the device, every page brought back
 *                                    by CPU faults (the driver migrates the
 *                                    window [ra_start, ra_end) the core
 *                                    proposes), GB/s, against memcpy of
 *                                    64 MiB between warm buffers
 *   fault_back_4k                    one CPU write fault on ONE device page
 *                                    (the driver migrates just that page),
 *                                    us/fault, 2048 pages in random order,
 *                                    against a native anonymous first-touch
 *                                    write fault in the same order
 *   first_touch_managed              first-touch write faults of a 64 MiB
 *                                    range uhmm tracks (an interval notifier
 *                                    and a range_fault snapshot registered
 *                                    it) but never migrated, ns/page,
 *                                    against an identical unmanaged range
 *   first_touch_after_migration      the same for a range that went to the
 *                                    device and back once (its registration
 *                                    then traps holes): no target
 *
 * Each figure also reports where its time goes (setup, copy, pages,
 * finalize; for faults the time inside migrate_to_ram and the rest, which
 * is the userfaultfd round trip between the faulting thread and uhmm's
 * reader).
 *
 * One warm-up, then N repetitions (default 5); median and best. Every
 * buffer is written right before the measurement that uses it (guest
 * memory freed goes back to the host within ~2 s). Every result is
 * checked: data that differ from the pattern written (a new pattern each
 * repetition), a page that did not migrate, a page left resident or not
 * brought back, a device page not given back, exit 1. Public API only.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <uhmm/uhmm.h>
#include <uhmm/migrate.h>
#include <uhmm/dma.h>

#include "bench.h"

/* PAGEMAP_SCAN (6.7), from linux/fs.h: the build headers may be older. */
#define PM_HUGE		(1ull << 6)

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define HPAGE_SIZE	(2ul << 20)
#define CHUNK		512u		/* pages per setup/pages/finalize */
#define THP_PAGES	512UL		/* pages of a THP (4 KiB pages) */
#define FB_PAGES	2048u		/* pages of the fault-back figure */
#define SEQ_MIB		64u		/* seq_read and first_touch ranges */

static struct bench_opts opt;
static size_t pg;
static unsigned int pg_shift;
static size_t mig_len;			/* bytes of each migration */
static bool mig_compound;		/* migrate with SELECT_COMPOUND */
static size_t seq_len;			/* bytes of seq_read / first_touch */
static volatile uint64_t sink;
static int pagemap_fd = -1;

/* ------------------------------------------------------------------ */
/* Helpers                                                              */
/* ------------------------------------------------------------------ */



/* An anonymous mapping of @len bytes aligned to 2 MiB, with @advice. */
static char *map_range(size_t len, int advice)
{
	char *p = map_anon(len + HPAGE_SIZE);
	uintptr_t a = ((uintptr_t)p + HPAGE_SIZE - 1) & ~(HPAGE_SIZE - 1);
	size_t head = a - (uintptr_t)p;

	if (head)
		munmap(p, head);
	if (HPAGE_SIZE - head)
		munmap((char *)a + len, HPAGE_SIZE - head);
	if (madvise((void *)a, len, advice))
		die(BENCH_EXIT_SETUP, "madvise: %s", strerror(errno));
	return (char *)a;
}

/* A pattern that differs in every word and every repetition. */
static inline uint64_t pat(size_t i, uint64_t seed)
{
	return (i * 0x9e3779b97f4a7c15ull) ^ seed;
}

static void fill_pattern(void *p, size_t len, uint64_t seed)
{
	uint64_t *w = p;

	for (size_t i = 0; i < len / sizeof(*w); i++)
		w[i] = pat(i, seed);
}

static void check_pattern(const char *what, const void *p, size_t len,
			  uint64_t seed)
{
	const uint64_t *w = p;

	for (size_t i = 0; i < len / sizeof(*w); i++)
		if (w[i] != pat(i, seed))
			die(BENCH_EXIT_DATA, "%s: word %zu (page %zu) is %#llx, "
			    "want %#llx", what, i, i * 8 / pg,
			    (unsigned long long)w[i],
			    (unsigned long long)pat(i, seed));
}

/* Pages of [p, p + len) resident in the process's page tables. */
static size_t resident_pages(const void *p, size_t len)
{
	size_t n = len / pg, r = 0;
	unsigned char *v = malloc(n);

	if (!v)
		die(BENCH_EXIT_SETUP, "out of memory");
	if (mincore((void *)p, len, v))
		die(BENCH_EXIT_SETUP, "mincore: %s", strerror(errno));
	for (size_t i = 0; i < n; i++)
		r += v[i] & 1;
	free(v);
	return r;
}

/* Bytes of [p, p + len) mapped by huge pages (PAGEMAP_SCAN), or -1. */
static long huge_bytes(const void *p, size_t len)
{
	struct pm_page_region vec[64];
	uintptr_t a = (uintptr_t)p, end = a + len;
	long total = 0;

	while (a < end) {
		struct pm_scan_arg arg = {
			.size = sizeof(arg),
			.start = a, .end = end,
			.vec = (uintptr_t)vec, .vec_len = 64,
			.category_mask = PM_HUGE,
			.return_mask = PM_HUGE,
		};
		long n = ioctl(pagemap_fd, PM_SCAN_IOC, &arg);

		if (n < 0)
			return -1;
		for (long k = 0; k < n; k++)
			total += (long)(vec[k].end - vec[k].start);
		if (n < 64 || arg.walk_end <= a)
			break;
		a = arg.walk_end;
	}
	return total;
}

/* ------------------------------------------------------------------ */
/* The device: a pagemap backed by a buffer of its own                  */
/* ------------------------------------------------------------------ */

/* Where the driver's migrate_to_ram spends its time (ns, totals). */
struct fault_acct {
	atomic_ullong inflight, calls, pages, handler, setup, copy, mpages, final;
};

static struct dev {
	struct uhmm_pagemap *pgmap;
	char *mem;
	size_t npages;
	pthread_mutex_t lock;
	unsigned long *free;
	size_t nfree;
	/* Pages [npages, 2 * npages): 512-page blocks, device THPs. */
	unsigned long *blk_free;
	size_t nblk_free;
	unsigned int *blk_out;		/* pages of a THP block still out */
	atomic_ulong freed;		/* page_free calls */
	atomic_int ra;			/* migrate_to_ram takes the window */
	atomic_int errors;		/* failures inside migrate_to_ram */
	struct fault_acct acct;
} dev;

static char *dev_mem(const struct uhmm_page *p)
{
	return dev.mem + uhmm_page_index(p) * pg;
}

static void dev_page_free(struct uhmm_page *p)
{
	unsigned long idx = uhmm_page_index(p);

	pthread_mutex_lock(&dev.lock);
	if (idx < dev.npages) {
		dev.free[dev.nfree++] = idx;
	} else {
		unsigned long b = (idx - dev.npages) / THP_PAGES;

		if (--dev.blk_out[b] == 0)
			dev.blk_free[dev.nblk_free++] = b;
	}
	pthread_mutex_unlock(&dev.lock);
	atomic_fetch_add(&dev.freed, 1);
}

/* Free device memory in pages, counted against dev.npages: base pages
 * and whole THP blocks (the two pools are the same size). */
static size_t dev_nfree(void)
{
	size_t n, nblk = dev.npages / THP_PAGES;

	pthread_mutex_lock(&dev.lock);
	n = dev.nfree + dev.nblk_free * THP_PAGES;
	pthread_mutex_unlock(&dev.lock);
	return n - nblk * THP_PAGES;
}

/* Up to @n free device pages, reference count 1; how many. */
static size_t dev_alloc(struct uhmm_page **out, size_t n)
{
	size_t k = 0;

	pthread_mutex_lock(&dev.lock);
	for (; k < n && dev.nfree; k++)
		out[k] = uhmm_pagemap_page(dev.pgmap, dev.free[--dev.nfree]);
	pthread_mutex_unlock(&dev.lock);
	for (size_t i = 0; i < k; i++)
		uhmm_page_init(out[i]);
	return k;
}

/* A device THP: the head of a free block, its pages referenced. */
static struct uhmm_page *dev_alloc_thp(void)
{
	unsigned long b;

	pthread_mutex_lock(&dev.lock);
	if (!dev.nblk_free) {
		pthread_mutex_unlock(&dev.lock);
		return NULL;
	}
	b = dev.blk_free[--dev.nblk_free];
	dev.blk_out[b] = THP_PAGES;
	pthread_mutex_unlock(&dev.lock);
	for (unsigned long k = 0; k < THP_PAGES; k++)
		uhmm_page_init(uhmm_pagemap_page(dev.pgmap,
						 dev.npages + b * THP_PAGES + k));
	return uhmm_pagemap_page(dev.pgmap, dev.npages + b * THP_PAGES);
}

/*
 * CPU fault on a device page. No read-ahead: just the faulting page;
 * with dev.ra set, the window the core proposes. Runs on a uhmm reader
 * thread: allocation-free, with per-thread arrays.
 */
static int dev_migrate_to_ram(struct uhmm_fault *vmf)
{
	static _Thread_local uint64_t src[CHUNK], dst[CHUNK];
	unsigned long start = vmf->address, end = vmf->address + pg;
	uint64_t t0 = bench_now_ns(), t1, t2, t3, t4;
	unsigned long moved = 0, n;
	struct uhmm_migrate m;
	int r;

	atomic_fetch_add(&dev.acct.inflight, 1);

	if (atomic_load_explicit(&dev.ra, memory_order_relaxed) &&
	    vmf->ra_start <= vmf->address && vmf->ra_end > vmf->address &&
	    (vmf->ra_end - vmf->ra_start) / pg <= CHUNK) {
		start = vmf->ra_start;
		end = vmf->ra_end;
	}
	for (;;) {
		n = (end - start) / pg;
		memset(&m, 0, sizeof(m));
		m.start = start;
		m.end = end;
		m.src = src;
		m.dst = dst;
		m.pgmap_owner = &dev;
		m.flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE;
		m.fault_page = vmf->page;
		r = uhmm_migrate_setup(&m);
		if (r == -EINVAL && n > 1) {
			/* The window left the VMA: just the page. */
			start = vmf->address;
			end = start + pg;
			continue;
		}
		break;
	}
	t1 = bench_now_ns();
	if (r) {
		atomic_fetch_add(&dev.errors, 1);
		atomic_fetch_sub(&dev.acct.inflight, 1);
		return r;
	}
	memset(dst, 0, n * sizeof(*dst));
	for (unsigned long i = 0; i < n; i++) {
		struct uhmm_page *sp = uhmm_migrate_pfn_to_page(src[i]);

		if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE) || !sp)
			continue;
		if (uhmm_migrate_alloc_system(&dst[i])) {
			dst[i] = 0;
			continue;
		}
		memcpy(uhmm_migrate_pfn_to_addr(dst[i]), dev_mem(sp), pg);
	}
	t2 = bench_now_ns();
	uhmm_migrate_pages(&m);
	t3 = bench_now_ns();
	for (unsigned long i = 0; i < n; i++)
		moved += !!(src[i] & UHMM_MIGRATE_PFN_MIGRATE);
	uhmm_migrate_finalize(&m);
	t4 = bench_now_ns();
	atomic_fetch_add(&dev.acct.calls, 1);
	atomic_fetch_add(&dev.acct.pages, moved);
	atomic_fetch_add(&dev.acct.setup, t1 - t0);
	atomic_fetch_add(&dev.acct.copy, t2 - t1);
	atomic_fetch_add(&dev.acct.mpages, t3 - t2);
	atomic_fetch_add(&dev.acct.final, t4 - t3);
	atomic_fetch_add(&dev.acct.handler, t4 - t0);
	/* The faulting thread may run on before this: see acct_take(). */
	atomic_fetch_sub(&dev.acct.inflight, 1);
	return 0;
}

static const struct uhmm_pagemap_ops dev_ops = {
	.page_free = dev_page_free,
	.migrate_to_ram = dev_migrate_to_ram,
};

static void dev_init(size_t npages)
{
	int r;

	size_t nblk = npages / THP_PAGES;

	pthread_mutex_init(&dev.lock, NULL);
	dev.npages = npages;
	dev.mem = map_range(2 * npages * pg, MADV_NOHUGEPAGE);
	bench_prewarm(dev.mem, 2 * npages * pg, 1);
	dev.free = malloc(npages * sizeof(*dev.free));
	dev.blk_free = malloc((nblk + 1) * sizeof(*dev.blk_free));
	dev.blk_out = calloc(nblk + 1, sizeof(*dev.blk_out));
	if (!dev.free || !dev.blk_free || !dev.blk_out)
		die(BENCH_EXIT_SETUP, "out of memory");
	for (size_t i = 0; i < npages; i++)
		dev.free[dev.nfree++] = npages - 1 - i;
	for (size_t b = 0; b < nblk; b++)
		dev.blk_free[dev.nblk_free++] = nblk - 1 - b;
	r = uhmm_pagemap_create(UHMM_MEMORY_DEVICE_PRIVATE, &dev, &dev_ops,
				2 * npages, &dev.pgmap);
	if (r)
		die(BENCH_EXIT_SETUP, "uhmm_pagemap_create: %s", bench_err_name(r));
}

static void acct_reset(void)
{
	struct fault_acct *a = &dev.acct;

	atomic_store(&a->calls, 0);
	atomic_store(&a->pages, 0);
	atomic_store(&a->handler, 0);
	atomic_store(&a->setup, 0);
	atomic_store(&a->copy, 0);
	atomic_store(&a->mpages, 0);
	atomic_store(&a->final, 0);
}

/* Every device page back on the free list (page_free may come late). */
static void dev_settle(const char *what)
{
	for (int w = 0; w < 300 && dev_nfree() != dev.npages; w++)
		usleep(10000);
	if (dev_nfree() != dev.npages)
		die(BENCH_EXIT_DATA, "%s: %zu device pages never given back",
		    what, dev.npages - dev_nfree());
	if (atomic_load(&dev.errors))
		die(BENCH_EXIT_DATA, "%s: migrate_to_ram failed %d times",
		    what, atomic_load(&dev.errors));
}

/* ------------------------------------------------------------------ */
/* Chunked migration with a DMA engine                                  */
/* ------------------------------------------------------------------ */

/* Time per phase, summed over the chunks of one migration (ns). */
struct phases {
	uint64_t setup, alloc, copy, pages, final;
};

enum { PH_SETUP, PH_ALLOC, PH_COPY, PH_PAGES, PH_FINAL, PH_N };

static const char *const ph_name[PH_N] = {
	"setup", "alloc", "copy", "pages", "finalize",
};

static uint64_t ph_get(const struct phases *p, int k)
{
	const uint64_t v[PH_N] = { p->setup, p->alloc, p->copy, p->pages,
				   p->final };

	return v[k];
}

/*
 * Migrate [p, p + len) to the device (@to_dev) or back, in chunks of
 * CHUNK pages, copies on @dma. Every page must move.
 */
static void migrate_range(char *p, size_t len, bool to_dev,
			  struct uhmm_dma *dma, struct phases *ph)
{
	static uint64_t src[CHUNK], dst[CHUNK];
	static struct uhmm_page *dp[CHUNK];
	static struct uhmm_dma_desc desc[CHUNK];
	const char *what = to_dev ? "to device" : "to system";

	memset(ph, 0, sizeof(*ph));
	for (size_t off = 0; off < len; off += (size_t)CHUNK * pg) {
		size_t n = (len - off) / pg < CHUNK ? (len - off) / pg : CHUNK;
		struct uhmm_migrate m = {
			.start = (uintptr_t)p + off,
			.end = (uintptr_t)p + off + n * pg,
			.src = src, .dst = dst,
			.pgmap_owner = &dev,
			.flags = (to_dev ? UHMM_MIGRATE_SELECT_SYSTEM :
				  UHMM_MIGRATE_SELECT_DEVICE_PRIVATE) |
				 (mig_compound ? UHMM_MIGRATE_SELECT_COMPOUND : 0),
		};
		struct uhmm_dma_batch b = { 0 };
		size_t nd = 0, ndp = 0, moved = 0;
		uint64_t t0, t1, t2, t3, t4, t5;
		int r;

		t0 = bench_now_ns();
		r = uhmm_migrate_setup(&m);
		t1 = bench_now_ns();
		if (r)
			die(BENCH_EXIT_DATA, "%s: uhmm_migrate_setup at +%zu: "
			    "%s", what, off, bench_err_name(r));
		if (m.cpages != n)
			die(BENCH_EXIT_DATA, "%s: setup collected %lu of %zu "
			    "pages at +%zu", what, m.cpages, n, off);
		memset(dst, 0, n * sizeof(*dst));
		if (to_dev && (src[0] & UHMM_MIGRATE_PFN_COMPOUND) && n == THP_PAGES) {
			/* A whole THP: one device THP, one 2 MiB copy. */
			struct uhmm_page *h = dev_alloc_thp();

			if (!h)
				die(BENCH_EXIT_SETUP, "device THP memory full");
			if (src[0] & UHMM_MIGRATE_PFN_VALID)
				desc[nd++] = (struct uhmm_dma_desc){ dev_mem(h),
					uhmm_migrate_pfn_to_addr(src[0]), n * pg };
			else
				memset(dev_mem(h), 0, n * pg);
			dst[0] = uhmm_migrate_pfn_device(h) | UHMM_MIGRATE_PFN_COMPOUND;
		} else if (!to_dev && (src[0] & UHMM_MIGRATE_PFN_COMPOUND) &&
			   n == THP_PAGES) {
			r = uhmm_migrate_alloc_system_compound(&dst[0]);
			if (r)
				die(BENCH_EXIT_DATA, "%s: uhmm_migrate_alloc_system_"
				    "compound: %s", what, bench_err_name(r));
			desc[nd++] = (struct uhmm_dma_desc){
				uhmm_migrate_pfn_to_addr(dst[0]),
				dev_mem(uhmm_migrate_pfn_to_page(src[0])), n * pg };
		} else if (to_dev) {
			ndp = dev_alloc(dp, n);
			if (ndp != n)
				die(BENCH_EXIT_SETUP, "device memory full");
			for (size_t i = 0; i < n; i++) {
				if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
					continue;
				if (src[i] & UHMM_MIGRATE_PFN_VALID)
					desc[nd++] = (struct uhmm_dma_desc){
						dev_mem(dp[i]),
						uhmm_migrate_pfn_to_addr(src[i]),
						pg };
				else
					memset(dev_mem(dp[i]), 0, pg);
				dst[i] = uhmm_migrate_pfn_device(dp[i]);
			}
		} else {
			for (size_t i = 0; i < n; i++) {
				struct uhmm_page *sp =
					uhmm_migrate_pfn_to_page(src[i]);

				if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE) || !sp)
					continue;
				r = uhmm_migrate_alloc_system(&dst[i]);
				if (r)
					die(BENCH_EXIT_DATA, "%s: "
					    "uhmm_migrate_alloc_system: %s",
					    what, bench_err_name(r));
				desc[nd++] = (struct uhmm_dma_desc){
					uhmm_migrate_pfn_to_addr(dst[i]),
					dev_mem(sp), pg };
			}
		}
		t2 = bench_now_ns();
		b.desc = desc;
		b.n = nd;
		r = uhmm_dma_submit(dma, &b);
		if (!r)
			r = uhmm_dma_wait(dma, &b);
		t3 = bench_now_ns();
		if (r)
			die(BENCH_EXIT_DATA, "%s: DMA: %s (descriptor %zu)",
			    what, bench_err_name(r), b.error_index);
		uhmm_migrate_pages(&m);
		t4 = bench_now_ns();
		for (size_t i = 0; i < n; i++)
			moved += !(src[i] & UHMM_MIGRATE_PFN_MIGRATE) ? 0 :
				 (src[i] & UHMM_MIGRATE_PFN_COMPOUND) ? THP_PAGES : 1;
		uhmm_migrate_finalize(&m);
		t5 = bench_now_ns();
		if (moved != n)
			die(BENCH_EXIT_DATA, "%s: %zu of %zu pages migrated at "
			    "+%zu", what, moved, n, off);
		ph->setup += t1 - t0;
		ph->alloc += t2 - t1;
		ph->copy += t3 - t2;
		ph->pages += t4 - t3;
		ph->final += t5 - t4;
	}
}

/* Migrate to the device untimed (setup of other figures), checked. */
static void to_device(char *p, size_t len, struct uhmm_dma *dma)
{
	struct phases ph;

	migrate_range(p, len, true, dma, &ph);
	if (resident_pages(p, len))
		die(BENCH_EXIT_DATA, "pages still resident after a migration "
		    "to the device");
}

static void phases_text(char *buf, size_t sz, const struct phases *med,
			size_t npages, bool json)
{
	size_t o = 0;

	buf[0] = 0;
	for (int k = 0; k < PH_N && o < sz; k++) {
		double v = (double)ph_get(med, k) / (double)npages;

		if (json)
			o += (size_t)snprintf(buf + o, sz - o,
					      ",\"%s_ns_per_page\":%.4g",
					      ph_name[k], v);
		else
			o += (size_t)snprintf(buf + o, sz - o, "%s%s %.0f",
					      k ? ", " : "", ph_name[k], v);
	}
	if (!json && o < sz)
		snprintf(buf + o, sz - o, " ns/page");
}

/* The median of each phase over the repetitions. */
static struct phases phases_median(const struct phases *v, unsigned int n)
{
	struct phases m;
	uint64_t out[PH_N];
	double *t = bench_times(&opt);

	for (int k = 0; k < PH_N; k++) {
		for (unsigned int r = 0; r < n; r++)
			t[r] = (double)ph_get(&v[r], k);
		out[k] = (uint64_t)bench_stat(t, n).median;
	}
	free(t);
	m.setup = out[0];
	m.alloc = out[1];
	m.copy = out[2];
	m.pages = out[3];
	m.final = out[4];
	return m;
}

/* ------------------------------------------------------------------ */
/* 1. Migration to the device and back                                  */
/* ------------------------------------------------------------------ */

static char *bsrc, *bdst;		/* memcpy baselines, warm */
static size_t blen;

static uint64_t timed_memcpy(size_t len)
{
	uint64_t t0;

	bench_prewarm(bsrc, len, 3);
	bench_prewarm(bdst, len, 4);
	t0 = bench_now_ns();
	memcpy(bdst, bsrc, len);
	t0 = bench_now_ns() - t0;
	sink += (unsigned char)bdst[len - 1];
	return t0;
}

static void bench_migrate(bool thp, struct uhmm_dma *dma)
{
	size_t len = mig_len, npages = len / pg;
	unsigned int nt = uhmm_dma_threads(dma);
	double *t_dev = bench_times(&opt), *t_sys = bench_times(&opt);
	double *t_cpy = bench_times(&opt);
	struct phases *ph_dev = calloc(opt.n, sizeof(*ph_dev));
	struct phases *ph_sys = calloc(opt.n, sizeof(*ph_sys));
	double thp_frac = 0;
	char *p = thp ? NULL : map_range(len, MADV_NOHUGEPAGE);

	if (!ph_dev || !ph_sys)
		die(BENCH_EXIT_SETUP, "out of memory");
	mig_compound = thp;
	for (int rep = -1; rep < (int)opt.n; rep++) {
		uint64_t seed = ((uint64_t)(rep + 2) << 40) | (thp ? 7 : 3) |
				(uint64_t)nt << 8;
		unsigned long to_ram0 = atomic_load(&dev.acct.calls);
		struct phases pd, ps;
		uint64_t td, ts, tm = 0;
		long hb;

		if (thp) {
			/* A fresh range: the last round left 4 KiB pages. */
			p = map_range(len, MADV_HUGEPAGE);
		}
		/* Baseline first or last, alternately. */
		if (rep & 1)
			tm = timed_memcpy(len);
		fill_pattern(p, len, seed);
		hb = thp ? huge_bytes(p, len) : 0;
		if (thp && rep >= 0)
			thp_frac += hb < 0 ? 0 : (double)hb / (double)len /
				    opt.n;
		td = bench_now_ns();
		migrate_range(p, len, true, dma, &pd);
		td = bench_now_ns() - td;
		if (resident_pages(p, len))
			die(BENCH_EXIT_DATA, "to device: pages still resident");
		if (dev_nfree() != dev.npages - npages)
			die(BENCH_EXIT_DATA, "to device: %zu device pages in "
			    "use, want %zu", dev.npages - dev_nfree(), npages);
		bench_prewarm(bsrc, len, 5);	/* keeps the baseline warm */
		ts = bench_now_ns();
		migrate_range(p, len, false, dma, &ps);
		ts = bench_now_ns() - ts;
		if (resident_pages(p, len) != npages)
			die(BENCH_EXIT_DATA, "to system: %zu of %zu pages "
			    "resident", resident_pages(p, len), npages);
		check_pattern("after a round trip", p, len, seed);
		if (atomic_load(&dev.acct.calls) != to_ram0)
			die(BENCH_EXIT_DATA, "the check faulted pages back: "
			    "they were not all migrated");
		dev_settle("round trip");
		if (!(rep & 1))
			tm = timed_memcpy(len);
		if (thp)
			munmap(p, len);
		if (rep >= 0) {
			t_dev[rep] = (double)td;
			t_sys[rep] = (double)ts;
			t_cpy[rep] = (double)tm;
			ph_dev[rep] = pd;
			ph_sys[rep] = ps;
		}
	}
	if (!thp)
		munmap(p, len);

	struct bench_stat sd = bench_stat(t_dev, opt.n);
	struct bench_stat ss = bench_stat(t_sys, opt.n);
	struct bench_stat sc = bench_stat(t_cpy, opt.n);
	struct phases md = phases_median(ph_dev, opt.n);
	struct phases ms = phases_median(ph_sys, opt.n);
	double b = (double)len;
	char name[64], xj[512], xt[512], ph[256];
	struct bench_fig f = {
		.name = name,
		.unit = "GB/s",
		.baseline_name = "memcpy, 1 thread",
		.baseline = b / sc.median,
		.baseline_best = b / sc.min,
		.kind = BENCH_AT_LEAST,
		.target = 0.8,
		.extra_json = xj,
		.extra_text = xt,
	};

	for (int dir = 0; dir < 2; dir++) {
		struct bench_stat *s = dir ? &ss : &sd;
		struct phases *m = dir ? &ms : &md;

		snprintf(name, sizeof(name), "migrate_to_%s_%zum_%s_dma%u",
			 dir ? "sys" : "dev", len >> 20, thp ? "thp" : "4k",
			 nt);
		f.value = b / s->median;
		f.value_best = b / s->min;
		f.ratio = sc.median / s->median;
		phases_text(ph, sizeof(ph), m, npages, true);
		snprintf(xj, sizeof(xj), ",\"layout\":\"%s\",\"dma_threads\":"
			 "%u,\"chunk_pages\":%u%s", thp ? "thp" : "4k", nt,
			 CHUNK, ph);
		phases_text(ph, sizeof(ph), m, npages, false);
		snprintf(xt, sizeof(xt), "%u DMA thread(s), %u-page chunks; %s",
			 nt, CHUNK, ph);
		if (thp) {
			snprintf(xj + strlen(xj), sizeof(xj) - strlen(xj),
				 ",\"thp_fraction\":%.3g,\"compound\":true",
				 thp_frac);
			snprintf(xt + strlen(xt), sizeof(xt) - strlen(xt),
				 "; source %.0f%% THP, moved whole "
				 "(SELECT_COMPOUND, device THPs)",
				 thp_frac * 100);
		}
		bench_report(&opt, &f);
	}
	free(t_dev);
	free(t_sys);
	free(t_cpy);
	free(ph_dev);
	free(ph_sys);
	mig_compound = false;
}

/* ------------------------------------------------------------------ */
/* 2. Sequential CPU read of a range on the device                      */
/* ------------------------------------------------------------------ */

static void fault_text(char *xj, size_t szj, char *xt, size_t szt,
		       const double *calls, const double *pages,
		       const double *handler, const double *setup,
		       const double *copy, const double *mpages,
		       const double *final, double total_per_fault_ns)
{
	/*
	 * All per fault (migrate_to_ram call), medians, wall clock: on a
	 * machine with few CPUs the reader is often preempted by the thread
	 * finalize just woke, so migrate_to_ram can outlast the fault.
	 */
	double h = *handler, rest = total_per_fault_ns - h;

	snprintf(xj, szj, ",\"faults\":%.0f,\"pages_per_fault\":%.4g,"
		 "\"us_per_fault\":%.4g,\"handler_us\":%.4g,"
		 "\"setup_us\":%.4g,\"copy_us\":%.4g,\"pages_us\":%.4g,"
		 "\"finalize_us\":%.4g,\"total_minus_handler_us\":%.4g",
		 *calls, *pages, total_per_fault_ns / 1e3, h / 1e3,
		 *setup / 1e3, *copy / 1e3, *mpages / 1e3, *final / 1e3,
		 rest / 1e3);
	snprintf(xt, szt, "%.0f faults, %.3g pages each; per fault %.3g us: "
		 "migrate_to_ram %.3g us (setup %.3g, copy %.3g, pages %.3g, "
		 "finalize %.3g, which wakes the faulting thread: wall time, "
		 "preemption by the woken thread included), total minus "
		 "migrate_to_ram %.3g us (uffd round trip, reader wake-up)",
		 *calls, *pages, total_per_fault_ns / 1e3, h / 1e3,
		 *setup / 1e3, *copy / 1e3, *mpages / 1e3, *final / 1e3,
		 rest / 1e3);
}

/* Per-fault accounting of one repetition. */
struct fault_rep {
	double calls, pages, handler, setup, copy, mpages, final;
};

static struct fault_rep acct_take(void)
{
	struct fault_acct *a = &dev.acct;
	double c;

	/*
	 * finalize wakes the faulting thread before migrate_to_ram returns:
	 * wait for the last handler to finish its accounting.
	 */
	for (int w = 0; atomic_load(&a->inflight) && w < 100000; w++)
		usleep(10);
	c = (double)atomic_load(&a->calls);
	struct fault_rep r = { .calls = c };

	if (c > 0) {
		r.pages = (double)atomic_load(&a->pages) / c;
		r.handler = (double)atomic_load(&a->handler) / c;
		r.setup = (double)atomic_load(&a->setup) / c;
		r.copy = (double)atomic_load(&a->copy) / c;
		r.mpages = (double)atomic_load(&a->mpages) / c;
		r.final = (double)atomic_load(&a->final) / c;
	}
	return r;
}

static struct fault_rep fault_median(const struct fault_rep *v)
{
	double *t = bench_times(&opt);
	struct fault_rep m;
	double *out[7] = { &m.calls, &m.pages, &m.handler, &m.setup, &m.copy,
			   &m.mpages, &m.final };

	for (int k = 0; k < 7; k++) {
		for (unsigned int r = 0; r < opt.n; r++) {
			const double *f = &v[r].calls;

			t[r] = f[k];
		}
		*out[k] = bench_stat(t, opt.n).median;
	}
	free(t);
	return m;
}

/*
 * Read [p, p + len) into @dst: forward page by page (every page's first
 * access in ascending order), or one memcpy (glibc picks the direction:
 * with source and destination congruent modulo 4 KiB it copies
 * backward, so the faults descend).
 */
static uint64_t timed_read(char *dst, const char *p, size_t len, bool whole)
{
	uint64_t t0 = bench_now_ns();

	if (whole)
		memcpy(dst, p, len);
	else
		for (size_t o = 0; o < len; o += pg)
			memcpy(dst + o, p + o, pg);
	return bench_now_ns() - t0;
}

static void bench_seq_read(struct uhmm_dma *dma)
{
	size_t len = seq_len, npages = len / pg;
	char *p = map_range(len, MADV_NOHUGEPAGE);
	char *dst = map_range(len, MADV_NOHUGEPAGE);
	double *t_dev[2] = { bench_times(&opt), bench_times(&opt) };
	double *t_cpy = bench_times(&opt);
	struct fault_rep *fr[2] = { calloc(opt.n, sizeof(struct fault_rep)),
				    calloc(opt.n, sizeof(struct fault_rep)) };
	char xj[512], xt[768];

	if (!fr[0] || !fr[1])
		die(BENCH_EXIT_SETUP, "out of memory");
	for (int rep = -1; rep < (int)opt.n; rep++) {
		uint64_t tm = 0;

		if (rep & 1)
			tm = timed_memcpy(len);
		for (int v = 0; v < 2; v++) {
			uint64_t seed = ((uint64_t)(rep + 2) << 40) |
					(uint64_t)v << 32 | 0x5e9;
			struct fault_rep frep;
			uint64_t tr;

			fill_pattern(p, len, seed);
			to_device(p, len, dma);
			bench_prewarm(dst, len, 6);
			atomic_store(&dev.ra, 1);
			acct_reset();
			tr = timed_read(dst, p, len, v == 1);
			frep = acct_take();
			atomic_store(&dev.ra, 0);
			check_pattern("seq_read: copy out of the device", dst,
				      len, seed);
			if (resident_pages(p, len) != npages)
				die(BENCH_EXIT_DATA, "seq_read: %zu of %zu "
				    "pages back", resident_pages(p, len),
				    npages);
			if (atomic_load(&dev.acct.pages) != npages)
				die(BENCH_EXIT_DATA, "seq_read: migrate_to_ram "
				    "moved %llu pages, want %zu",
				    (unsigned long long)
				    atomic_load(&dev.acct.pages), npages);
			check_pattern("seq_read: the range itself", p, len,
				      seed);
			dev_settle("seq_read");
			if (rep >= 0) {
				t_dev[v][rep] = (double)tr;
				fr[v][rep] = frep;
			}
		}
		if (!(rep & 1))
			tm = timed_memcpy(len);
		if (rep >= 0)
			t_cpy[rep] = (double)tm;
	}
	munmap(p, len);
	munmap(dst, len);

	struct bench_stat sc = bench_stat(t_cpy, opt.n);
	double b = (double)len;
	char name[64];

	for (int v = 0; v < 2; v++) {
		struct bench_stat sd = bench_stat(t_dev[v], opt.n);
		struct fault_rep m = fault_median(fr[v]);
		struct bench_fig f = {
			.name = name,
			.unit = "GB/s",
			.value = b / sd.median,
			.value_best = b / sd.min,
			.baseline_name = "memcpy, 1 thread",
			.baseline = b / sc.median,
			.baseline_best = b / sc.min,
			.ratio = sc.median / sd.median,
			.kind = v ? BENCH_NO_TARGET : BENCH_AT_LEAST,
			.target = 0.3,
			.extra_json = xj,
			.extra_text = xt,
		};
		size_t o;

		fault_text(xj, sizeof(xj), xt, sizeof(xt), &m.calls, &m.pages,
			   &m.handler, &m.setup, &m.copy, &m.mpages, &m.final,
			   m.calls > 0 ? sd.median / m.calls : 0);
		o = strlen(xt);
		snprintf(xt + o, sizeof(xt) - o, v ?
			 "; one memcpy of the range (glibc copies it backward "
			 "here: the faults descend)" :
			 "; pages read in ascending order (4 KiB memcpy each)");
		o = strlen(xj);
		snprintf(xj + o, sizeof(xj) - o, ",\"access\":\"%s\"",
			 v ? "memcpy_whole" : "ascending_pages");
		snprintf(name, sizeof(name), v ? "seq_read_device_%zum_memcpy" :
			 "seq_read_device_%zum", len >> 20);
		bench_report(&opt, &f);
		free(t_dev[v]);
		free(fr[v]);
	}
	free(t_cpy);
}

/* ------------------------------------------------------------------ */
/* 3. Fault-back latency of one 4 KiB page                              */
/* ------------------------------------------------------------------ */

static void bench_fault_back(struct uhmm_dma *dma)
{
	size_t len = (size_t)FB_PAGES * pg;
	char *p = map_range(len, MADV_NOHUGEPAGE);
	char *q = map_range(len, MADV_NOHUGEPAGE);
	unsigned int *perm = malloc(FB_PAGES * sizeof(*perm));
	double *t_dev = bench_times(&opt), *t_nat = bench_times(&opt);
	struct fault_rep *fr = calloc(opt.n, sizeof(*fr));
	uint64_t x = 0x2545f4914f6cdd1dull;
	char xj[512], xt[512];

	if (!perm || !fr)
		die(BENCH_EXIT_SETUP, "out of memory");
	/* A random order, so that no access looks sequential. */
	for (unsigned int i = 0; i < FB_PAGES; i++)
		perm[i] = i;
	for (unsigned int i = FB_PAGES - 1; i > 0; i--) {
		unsigned int j, t;

		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		j = (unsigned int)(x % (i + 1));
		t = perm[i];
		perm[i] = perm[j];
		perm[j] = t;
	}
	for (int rep = -1; rep < (int)opt.n; rep++) {
		uint64_t seed = ((uint64_t)(rep + 2) << 40) | 0xfb;
		uint64_t tdv = 0, tn = 0;
		struct fault_rep frep;

		fill_pattern(p, len, seed);
		to_device(p, len, dma);
		for (int k = 0; k < 2; k++) {
			if ((k + rep) & 1) {
				/* Native: warm, then dropped, then touched. */
				bench_prewarm(q, len, 7);
				if (madvise(q, len, MADV_DONTNEED))
					die(BENCH_EXIT_SETUP, "madvise: %s",
					    strerror(errno));
				tn = bench_now_ns();
				for (unsigned int i = 0; i < FB_PAGES; i++)
					*(volatile uint64_t *)(q + (size_t)perm[i] * pg) =
						seed + perm[i];
				tn = bench_now_ns() - tn;
				continue;
			}
			acct_reset();
			tdv = bench_now_ns();
			for (unsigned int i = 0; i < FB_PAGES; i++)
				*(volatile uint64_t *)(p + (size_t)perm[i] * pg) =
					seed + perm[i];
			tdv = bench_now_ns() - tdv;
			frep = acct_take();
		}
		if (rep >= 0)
			fr[rep] = frep;
		if (atomic_load(&dev.acct.pages) != FB_PAGES)
			die(BENCH_EXIT_DATA, "fault_back: migrate_to_ram moved "
			    "%llu pages, want %u (one a fault)",
			    (unsigned long long)atomic_load(&dev.acct.pages),
			    FB_PAGES);
		for (unsigned int i = 0; i < FB_PAGES; i++) {
			const uint64_t *w = (const uint64_t *)(p + (size_t)i * pg);
			const uint64_t *v = (const uint64_t *)(q + (size_t)i * pg);
			size_t base = (size_t)i * pg / 8;

			if (w[0] != seed + i || v[0] != seed + i)
				die(BENCH_EXIT_DATA, "fault_back: the store to "
				    "page %u was lost", i);
			for (size_t k = 1; k < pg / 8; k++) {
				if (w[k] != pat(base + k, seed))
					die(BENCH_EXIT_DATA, "fault_back: page "
					    "%u word %zu differs from the data "
					    "migrated", i, k);
				if (v[k])
					die(BENCH_EXIT_DATA, "fault_back: native "
					    "page %u is not zero-filled", i);
			}
		}
		dev_settle("fault_back");
		if (rep >= 0) {
			t_dev[rep] = (double)tdv / FB_PAGES / 1e3;
			t_nat[rep] = (double)tn / FB_PAGES / 1e3;
		}
	}
	munmap(p, len);
	munmap(q, len);

	struct bench_stat sd = bench_stat(t_dev, opt.n);
	struct bench_stat sn = bench_stat(t_nat, opt.n);
	struct fault_rep m = fault_median(fr);

	fault_text(xj, sizeof(xj), xt, sizeof(xt), &m.calls, &m.pages,
		   &m.handler, &m.setup, &m.copy, &m.mpages, &m.final,
		   sd.median * 1e3 * FB_PAGES / (m.calls > 0 ? m.calls : 1));

	struct bench_fig f = {
		.name = "fault_back_4k",
		.unit = "us",
		.value = sd.median,
		.value_best = sd.min,
		.baseline_name = "native anonymous first-touch write fault",
		.baseline = sn.median,
		.baseline_best = sn.min,
		.ratio = sd.median / sn.median,
		.kind = BENCH_AT_MOST,
		.target = 2.0,
		.extra_json = xj,
		.extra_text = xt,
	};
	bench_report(&opt, &f);
	free(perm);
	free(t_dev);
	free(t_nat);
	free(fr);
}

/* ------------------------------------------------------------------ */
/* 4. First touch of a managed range                                    */
/* ------------------------------------------------------------------ */

static pthread_mutex_t nlock = PTHREAD_MUTEX_INITIALIZER;
static atomic_ulong ninval;

static bool bench_invalidate(struct uhmm_interval_notifier *sub,
			     const struct uhmm_notifier_range *range,
			     unsigned long cur_seq)
{
	(void)range;
	pthread_mutex_lock(&nlock);
	uhmm_interval_set_seq(sub, cur_seq);
	pthread_mutex_unlock(&nlock);
	atomic_fetch_add(&ninval, 1);
	return true;
}

static const struct uhmm_interval_notifier_ops bench_ops = {
	.invalidate = bench_invalidate,
};

static uint64_t first_touch(char *p, size_t len, uint64_t seed)
{
	uint64_t t0 = bench_now_ns();

	for (size_t o = 0; o < len; o += pg)
		*(volatile uint64_t *)(p + o) = seed + o;
	return bench_now_ns() - t0;
}

static void check_touched(const char *what, const char *p, size_t len,
			  uint64_t seed)
{
	for (size_t o = 0; o < len; o += pg) {
		const uint64_t *w = (const uint64_t *)(p + o);

		if (w[0] != seed + o || w[1] || w[pg / 8 - 1])
			die(BENCH_EXIT_DATA, "%s: page %zu holds %#llx %#llx "
			    "after its first touch", what, o / pg,
			    (unsigned long long)w[0], (unsigned long long)w[1]);
	}
}

static void bench_first_touch(struct uhmm_dma *dma)
{
	size_t len = seq_len, npages = len / pg;
	char *a = map_range(len, MADV_NOHUGEPAGE);	/* managed */
	char *b = map_range(len, MADV_NOHUGEPAGE);	/* native */
	char *c = map_range(len, MADV_NOHUGEPAGE);	/* migrated once */
	char *r[3] = { a, b, c };
	const char *rn[3] = { "managed", "native", "after migration" };
	double *t[3] = { bench_times(&opt), bench_times(&opt), bench_times(&opt) };
	uint64_t *pfns = calloc(npages, sizeof(*pfns));
	struct uhmm_interval_notifier *sub;
	struct uhmm_range rg;
	int ret;

	if (!pfns)
		die(BENCH_EXIT_SETUP, "out of memory");
	/* Managed: a notifier and a snapshot, which registers the range. */
	bench_prewarm(a, len, 1);
	ret = uhmm_interval_notifier_insert(&sub, (uintptr_t)a, len,
					    &bench_ops, NULL);
	if (ret)
		die(BENCH_EXIT_SETUP, "uhmm_interval_notifier_insert: %s",
		    bench_err_name(ret));
	for (;;) {
		memset(&rg, 0, sizeof(rg));
		rg.notifier = sub;
		rg.start = (uintptr_t)a;
		rg.end = (uintptr_t)a + len;
		rg.hmm_pfns = pfns;
		rg.notifier_seq = uhmm_interval_read_begin(sub);
		ret = uhmm_range_fault(&rg);
		if (ret != -EBUSY)
			break;
	}
	if (ret)
		die(BENCH_EXIT_DATA, "uhmm_range_fault: %s", bench_err_name(ret));
	for (size_t i = 0; i < npages; i++)
		if (!(pfns[i] & UHMM_PFN_VALID) ||
		    uhmm_pfn_to_addr(pfns[i]) != a + i * pg)
			die(BENCH_EXIT_DATA, "range_fault: page %zu is %#llx",
			    i, (unsigned long long)pfns[i]);
	/* Migrated once, to the device and back: its holes now trap. */
	{
		struct phases ph;

		fill_pattern(c, len, 0xc);
		migrate_range(c, len, true, dma, &ph);
		migrate_range(c, len, false, dma, &ph);
		check_pattern("first_touch: migrated range", c, len, 0xc);
		dev_settle("first_touch");
	}

	for (int rep = -1; rep < (int)opt.n; rep++) {
		uint64_t seed = ((uint64_t)(rep + 2) << 40) | 0xf7;
		unsigned long inv0 = atomic_load(&ninval);
		uint64_t dt[3];

		/* Warm, then dropped, right before. */
		for (int k = 0; k < 3; k++) {
			bench_prewarm(r[k], len, 8);
			if (madvise(r[k], len, MADV_DONTNEED))
				die(BENCH_EXIT_SETUP, "madvise: %s",
				    strerror(errno));
		}
		/* Sync point: the CLEAR invalidations have run. */
		uhmm_range_revalidate((uintptr_t)a, (uintptr_t)a + len);
		uhmm_range_revalidate((uintptr_t)c, (uintptr_t)c + len);
		if (atomic_load(&ninval) == inv0)
			die(BENCH_EXIT_DATA, "first_touch: MADV_DONTNEED of "
			    "the managed range raised no invalidation");
		for (int k = 0; k < 3; k++) {
			int w = (k + rep + 3) % 3;

			dt[w] = first_touch(r[w], len, seed);
		}
		for (int k = 0; k < 3; k++)
			check_touched(rn[k], r[k], len, seed);
		if (rep >= 0)
			for (int k = 0; k < 3; k++)
				t[k][rep] = (double)dt[k] / (double)npages;
	}
	uhmm_interval_notifier_remove(sub);
	munmap(a, len);
	munmap(b, len);
	munmap(c, len);
	free(pfns);

	struct bench_stat sa = bench_stat(t[0], opt.n);
	struct bench_stat sb = bench_stat(t[1], opt.n);
	struct bench_stat sc = bench_stat(t[2], opt.n);
	struct bench_fig f = {
		.name = "first_touch_managed",
		.unit = "ns/page",
		.value = sa.median,
		.value_best = sa.min,
		.baseline_name = "native first touch, unmanaged range",
		.baseline = sb.median,
		.baseline_best = sb.min,
		.ratio = sa.median / sb.median,
		.kind = BENCH_AT_MOST,
		.target = 1.2,
		.extra_text = "write faults, MADV_NOHUGEPAGE",
	};
	bench_report(&opt, &f);
	f.name = "first_touch_after_migration";
	f.value = sc.median;
	f.value_best = sc.min;
	f.ratio = sc.median / sb.median;
	f.kind = BENCH_NO_TARGET;
	f.extra_text = "a range that went to the device and back once: its "
		       "MISSING registration makes each first touch a "
		       "userfaultfd fault served by uhmm";
	f.extra_json = ",\"note\":\"registered MISSING after a migration\"";
	bench_report(&opt, &f);
	for (int k = 0; k < 3; k++)
		free(t[k]);
}

/* ------------------------------------------------------------------ */

static void usage(const char *prog, FILE *f)
{
	fprintf(f,
		"usage: %s [-n N] [--size MiB] [--quick] [--json] [--only LIST]\n"
		"  -n N        repetitions after one warm-up (default 5)\n"
		"  --size MiB  size of each migration (default 256; a multiple "
		"of 2)\n"
		"  --quick     n=3, 64 MiB migrations (explicit -n/--size "
		"still win)\n"
		"  --json      one JSON object per figure instead of text\n"
		"  --only LIST run only these scenarios (comma-separated):\n"
		"              migrate, seq_read, fault_back, first_touch\n",
		prog);
}

/* `uhmm bench` links this file with BENCH_ENTRY=bench_migrate_main. */
#ifndef BENCH_ENTRY
#define BENCH_ENTRY main
#endif

int BENCH_ENTRY(int argc, char **argv)
{
	bench_prog = "bench_migrate";
	struct uhmm_features feat = { .size = sizeof(feat) };
	struct uhmm_dma *dma1, *dma2;
	bool n_given = false, size_given = false, quick = false;
	size_t dev_pages;
	int ret;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			usage(argv[0], stdout);
			return BENCH_EXIT_OK;
		}
		n_given |= !strcmp(argv[i], "-n");
		size_given |= !strcmp(argv[i], "--size");
		quick |= !strcmp(argv[i], "--quick");
	}
	ret = bench_parse(argc, argv, &opt);
	if (ret)
		return ret > 0 ? BENCH_EXIT_OK : BENCH_EXIT_SETUP;
	if (!n_given)
		opt.n = quick ? 3 : 5;
	if (!size_given)
		opt.size_mib = quick ? 64 : 256;
	if (opt.size_mib % 2)
		die(BENCH_EXIT_SETUP, "--size must be a multiple of 2 MiB");
	pg = bench_page_size();
	pg_shift = (unsigned int)__builtin_ctzl(pg);
	mig_len = opt.size_mib << 20;
	seq_len = (size_t)SEQ_MIB << 20;
	if (seq_len > mig_len)
		seq_len = mig_len;

	ret = uhmm_init();
	if (!ret)
		ret = uhmm_features(&feat);
	if (ret)
		die(BENCH_EXIT_SETUP, "uhmm_init: %s", bench_err_name(ret));
	if (!(feat.flags & UHMM_FEAT_MOVE))
		die(BENCH_EXIT_SETUP, "no UFFDIO_MOVE: device memory needs it");
	pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	ret = uhmm_dma_create(1, &dma1);
	if (!ret)
		ret = uhmm_dma_create(2, &dma2);
	if (ret)
		die(BENCH_EXIT_SETUP, "uhmm_dma_create: %s", bench_err_name(ret));
	dev_pages = mig_len / pg;
	if (dev_pages < FB_PAGES)
		dev_pages = FB_PAGES;
	dev_init(dev_pages);
	blen = mig_len > seq_len ? mig_len : seq_len;
	bsrc = map_range(blen, MADV_NOHUGEPAGE);
	bdst = map_range(blen, MADV_NOHUGEPAGE);
	bench_prewarm(bsrc, blen, 1);
	bench_prewarm(bdst, blen, 2);

	if (!opt.json)
		printf("# bench_migrate: uhmm %s, n=%u (+1 warm-up), %zu MiB "
		       "migrations, %zu MiB seq_read/first_touch, page %zu, "
		       "%ld CPUs\n", uhmm_version(), opt.n, opt.size_mib,
		       seq_len >> 20, pg, sysconf(_SC_NPROCESSORS_ONLN));

	/*
	 * The big migrations first: every page on the device holds a uhmm
	 * staging slot, and the staging area is finite.
	 */
	if (bench_want(&opt, "migrate")) {
		bench_migrate(false, dma1);
		bench_migrate(false, dma2);
		bench_migrate(true, dma1);
		bench_migrate(true, dma2);
	}
	if (bench_want(&opt, "seq_read"))
		bench_seq_read(dma2);
	if (bench_want(&opt, "fault_back"))
		bench_fault_back(dma2);
	if (bench_want(&opt, "first_touch"))
		bench_first_touch(dma2);

	uhmm_dma_destroy(dma1);
	uhmm_dma_destroy(dma2);
	munmap(bsrc, blen);
	munmap(bdst, blen);
	return BENCH_EXIT_OK;
}
