/* SPDX-License-Identifier: MIT */
/*
 * bench_mirror: what mirroring an address space costs, each figure next to
 * the physical limit of the same operation measured in the same run
 * (docs/DESIGN.md, "Mechanisms on a stock kernel").
 *
 *   snapshot_4k, snapshot_thp        dmirror SNAPSHOT, ns/page, against one
 *                                    raw PAGEMAP_SCAN of the same range
 *   range_fault_4k, range_fault_thp  uhmm_range_fault() snapshot (the core
 *                                    without dmirror), against the same
 *   read_warm                        dmirror READ of a mirrored range, GB/s,
 *                                    against memcpy of the same bytes
 *   read_cold                        the first READ (mirror + fault round)
 *   munmap_mirrored                  munmap of a range a device mirrors, ms,
 *                                    against munmap of an unmirrored one
 *
 * Layouts of the snapshot: 4k alternates written pages and zero pages
 * (MADV_NOHUGEPAGE), so every page is a PAGEMAP_SCAN region of its own;
 * thp is 2 MiB aligned, MADV_HUGEPAGE, all written. The baseline is the
 * raw scan that answers what uhmm asks of anonymous memory:
 * PRESENT|PFNZERO|HUGE|SWAPPED. Two more limits are reported beside it,
 * without a target: the same scan with PAGE_IS_FILE (which makes the
 * kernel look up every page's struct page; uhmm asks it only for private
 * file mappings), and the scan followed by writing one value a page (the least any
 * per-page snapshot does: a THP range is one region to the scan but 512
 * values a huge page to range_fault).
 *
 * One warm-up, then N repetitions; median and best. Every buffer is
 * written right before the measurement that uses it (guest memory freed
 * goes back to the host within ~2 s). Every result is checked: a wrong
 * snapshot byte, a wrong pfn, data that differs from the source, or a READ
 * that still succeeds after munmap exits 1. Public API only.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <uhmm/uhmm.h>
#include <uhmm/dmirror.h>

#include "bench.h"

/* PAGEMAP_SCAN (6.7), from linux/fs.h: the build headers may be older. */
#define PM_FILE		(1ull << 2)
#define PM_PRESENT	(1ull << 3)
#define PM_SWAPPED	(1ull << 4)
#define PM_PFNZERO	(1ull << 5)
#define PM_HUGE		(1ull << 6)
#define PM_RETURN_MASK	(PM_PRESENT | PM_FILE | PM_PFNZERO | PM_HUGE | \
			 PM_SWAPPED)

#define HPAGE_SIZE	(2ul << 20)

static struct bench_opts opt;
static size_t pg;
static unsigned int pg_shift;
static size_t size;			/* bytes of each measured range */
static int pagemap_fd = -1;
static struct uhmm_dmirror *dm;
static volatile unsigned char sink;

/* ------------------------------------------------------------------ */
/* Helpers                                                              */
/* ------------------------------------------------------------------ */



/* An anonymous mapping of exactly @len bytes aligned to @align. */
static void *map_aligned(size_t len, size_t align)
{
	char *p = map_anon(len + align);
	uintptr_t a = ((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1);
	size_t head = a - (uintptr_t)p;

	if (head)
		munmap(p, head);
	if (align - head)
		munmap((char *)a + len, align - head);
	return (void *)a;
}

static int dm_cmd(enum uhmm_dmirror_op op, const void *addr, void *ptr,
		  size_t npages, struct uhmm_dmirror_cmd *c)
{
	memset(c, 0, sizeof(*c));
	c->addr = (uintptr_t)addr;
	c->ptr = (uintptr_t)ptr;
	c->npages = npages;
	return uhmm_dmirror_cmd(dm, op, c);
}

/* ------------------------------------------------------------------ */
/* 1. Snapshot                                                          */
/* ------------------------------------------------------------------ */

static pthread_mutex_t nlock = PTHREAD_MUTEX_INITIALIZER;

static bool bench_invalidate(struct uhmm_interval_notifier *sub,
			     const struct uhmm_notifier_range *range,
			     unsigned long cur_seq)
{
	(void)range;
	pthread_mutex_lock(&nlock);
	uhmm_interval_set_seq(sub, cur_seq);
	pthread_mutex_unlock(&nlock);
	return true;
}

static const struct uhmm_interval_notifier_ops bench_ops = {
	.invalidate = bench_invalidate,
};

/*
 * One PAGEMAP_SCAN of [start, end) returning @mask; the number of
 * regions, or -errno. The vector holds a region a page, so one call walks
 * the whole range. walk_end is not looked at: after the kernel restarted
 * its walk internally (its bounce buffer holds 512 regions), a walk that
 * completes reports the walk_end of the restart (seen on 6.18);
 * check_snapshot() checks that the regions reach @end instead.
 */
static long raw_scan(uintptr_t start, uintptr_t end, uint64_t mask,
		     struct pm_page_region *vec, size_t vec_len)
{
	struct pm_scan_arg a = {
		.size = sizeof(a),
		.start = start,
		.end = end,
		.vec = (uintptr_t)vec,
		.vec_len = vec_len,
		.return_mask = mask,
	};
	long n = ioctl(pagemap_fd, PM_SCAN_IOC, &a);

	return n < 0 ? -errno : n;
}

/* The uhmm_range_fault() value a page of scan categories @cat has. */
static uint64_t cat_pfn_flags(uint64_t cat)
{
	uint64_t f = UHMM_PFN_VALID |
		     (cat & PM_PFNZERO ? UHMM_PFN_ZERO : UHMM_PFN_WRITE);

	if (cat & PM_HUGE)
		f |= (uint64_t)(pg_shift - 3) << UHMM_PFN_ORDER_SHIFT;
	return f;
}

/*
 * The least any per-page snapshot must do after the scan: one value per
 * page. Regions are present pages of a writable private mapping here.
 */
static void expand(const struct pm_page_region *vec, long n,
		   uintptr_t start, uint64_t *out)
{
	for (long k = 0; k < n; k++) {
		uint64_t f = cat_pfn_flags(vec[k].categories);
		uint64_t vpn = vec[k].start >> pg_shift;
		uint64_t *o = out + ((vec[k].start - start) >> pg_shift);
		size_t cnt = (vec[k].end - vec[k].start) >> pg_shift;

		for (size_t i = 0; i < cnt; i++)
			o[i] = f | (vpn + i);
	}
}

/* The read_begin / range_fault / read_retry loop of a driver. */
static int direct_snapshot(struct uhmm_interval_notifier *sub,
			   uintptr_t start, uintptr_t end, uint64_t *pfns)
{
	struct uhmm_range r = {
		.notifier = sub,
		.start = start,
		.end = end,
		.hmm_pfns = pfns,
		.default_flags = 0,
		.pfn_flags_mask = 0,
	};

	for (int tries = 0; tries < 1000; tries++) {
		bool retry;
		int ret;

		r.notifier_seq = uhmm_interval_read_begin(sub);
		ret = uhmm_range_fault(&r);
		if (ret == -EBUSY)
			continue;
		if (ret)
			return ret;
		pthread_mutex_lock(&nlock);
		retry = uhmm_interval_read_retry(sub, r.notifier_seq);
		pthread_mutex_unlock(&nlock);
		if (!retry)
			return 0;
	}
	return -EBUSY;
}

/*
 * Give the range its layout, or touch it again the same way (idempotent):
 * 4k writes even pages and read-faults odd ones (the shared zero page);
 * thp writes every page.
 */
static void layout(char *p, size_t len, bool thp)
{
	for (size_t o = 0; o < len; o += pg) {
		if (thp || !((o / pg) & 1))
			p[o] = (char)(o >> pg_shift | 1);
		else
			sink += ((volatile char *)p)[o];
	}
}

struct snap_out {
	const struct pm_page_region *vec;	/* raw scan */
	long nreg;
	const struct pm_page_region *vec_nf;	/* raw scan without FILE */
	long nreg_nf;
	const uint8_t *bytes;			/* dmirror SNAPSHOT */
	const uint64_t *pfns;			/* uhmm_range_fault() */
	const uint64_t *exp;			/* expand() of a raw scan */
};

/*
 * Check the raw scan against the layout, then everything else against the
 * raw scan, page by page. Returns the number of pages mapped by huge
 * pages.
 */
static size_t check_snapshot(bool thp, uintptr_t start, uintptr_t end,
			     const struct snap_out *o)
{
	const char *lay = thp ? "thp" : "4k";
	size_t npages = (end - start) >> pg_shift, huge = 0;
	uintptr_t addr = start;

	if (o->nreg < 0 || o->nreg_nf < 0)
		die(BENCH_EXIT_DATA, "%s: PAGEMAP_SCAN: %s", lay,
		    bench_err_name((int)(o->nreg < 0 ? o->nreg : o->nreg_nf)));
	if (!thp && (size_t)o->nreg != npages)
		die(BENCH_EXIT_DATA, "4k: PAGEMAP_SCAN gave %ld regions for "
		    "%zu alternating pages", o->nreg, npages);
	if (o->nreg_nf != o->nreg ||
	    memcmp(o->vec, o->vec_nf, (size_t)o->nreg * sizeof(*o->vec)))
		die(BENCH_EXIT_DATA, "%s: PAGEMAP_SCAN without PAGE_IS_FILE "
		    "differs (%ld regions, want %ld)", lay, o->nreg_nf,
		    o->nreg);
	for (long k = 0; k < o->nreg; k++) {
		const struct pm_page_region *r = &o->vec[k];
		uint64_t cat = r->categories, want_cat, f;
		uint8_t want_b;

		if (r->start != addr || r->end <= r->start || r->end > end)
			die(BENCH_EXIT_DATA, "%s: PAGEMAP_SCAN region %ld "
			    "[%#llx, %#llx) does not continue at %#lx", lay, k,
			    (unsigned long long)r->start,
			    (unsigned long long)r->end, (unsigned long)addr);
		if (thp)
			want_cat = PM_PRESENT | (cat & PM_HUGE);
		else
			want_cat = PM_PRESENT | (k & 1 ? PM_PFNZERO : 0);
		if (cat != want_cat)
			die(BENCH_EXIT_DATA, "%s: page %#lx has PAGEMAP_SCAN "
			    "categories %#llx, the layout needs %#llx", lay,
			    (unsigned long)addr, (unsigned long long)cat,
			    (unsigned long long)want_cat);

		want_b = cat & PM_PFNZERO ?
			 UHMM_DMIRROR_PROT_ZERO | UHMM_DMIRROR_PROT_READ :
			 UHMM_DMIRROR_PROT_WRITE;
		if (cat & PM_HUGE) {
			want_b |= UHMM_DMIRROR_PROT_PMD;
			huge += (r->end - r->start) >> pg_shift;
		}
		f = cat_pfn_flags(cat);
		for (; addr < r->end; addr += pg) {
			size_t i = (addr - start) >> pg_shift;
			uint64_t want_f = f | (addr >> pg_shift);

			if (o->bytes[i] != want_b)
				die(BENCH_EXIT_DATA, "%s: SNAPSHOT byte of "
				    "page %zu is %#04x, want %#04x", lay, i,
				    o->bytes[i], want_b);
			if (o->pfns[i] != want_f)
				die(BENCH_EXIT_DATA, "%s: range_fault value of "
				    "page %zu is %#llx, want %#llx", lay, i,
				    (unsigned long long)o->pfns[i],
				    (unsigned long long)want_f);
			if (o->exp[i] != want_f)
				die(BENCH_EXIT_DATA, "%s: expanded scan of "
				    "page %zu is %#llx, want %#llx", lay, i,
				    (unsigned long long)o->exp[i],
				    (unsigned long long)want_f);
		}
	}
	if (addr != end)
		die(BENCH_EXIT_DATA, "%s: PAGEMAP_SCAN stopped at %#lx of "
		    "[%#lx, %#lx)", lay, (unsigned long)addr,
		    (unsigned long)start, (unsigned long)end);
	return huge;
}

/* What each repetition times, in a rotating order. */
enum snap_method {
	SNAP_RAW,		/* PAGEMAP_SCAN, the brief's return mask */
	SNAP_DMIRROR,		/* dmirror SNAPSHOT */
	SNAP_DIRECT,		/* uhmm_range_fault(), default_flags 0 */
	SNAP_RAW_NOFILE,	/* PAGEMAP_SCAN without PAGE_IS_FILE */
	SNAP_RAW_EXPAND,	/* PAGEMAP_SCAN, then one value per page */
	SNAP_NMETHODS,
};

static void bench_snapshot(bool thp)
{
	size_t len = thp ? size & ~(HPAGE_SIZE - 1) : size;
	size_t npages = len >> pg_shift;
	size_t vec_bytes = npages * sizeof(struct pm_page_region);
	char *p = thp ? map_aligned(len, HPAGE_SIZE) : map_anon(len);
	uintptr_t start = (uintptr_t)p, end = start + len;
	struct pm_page_region *vec = map_anon(vec_bytes);
	struct pm_page_region *vec_nf = map_anon(vec_bytes);
	struct pm_page_region *vec_x = map_anon(vec_bytes);
	uint8_t *bytes = map_anon(npages);
	uint64_t *pfns = map_anon(npages * sizeof(*pfns));
	uint64_t *exp = map_anon(npages * sizeof(*exp));
	double *t[SNAP_NMETHODS];
	struct uhmm_interval_notifier *sub;
	size_t huge = 0;
	char extra_json[256], extra_text[256];
	int ret;

	for (int m = 0; m < SNAP_NMETHODS; m++)
		t[m] = bench_times(&opt);
	if (madvise(p, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE))
		die(BENCH_EXIT_SETUP, "madvise: %s", strerror(errno));
	ret = uhmm_interval_notifier_insert(&sub, start, len, &bench_ops,
					    NULL);
	if (ret)
		die(BENCH_EXIT_SETUP, "uhmm_interval_notifier_insert: %s",
		    bench_err_name(ret));

	for (int rep = -1; rep < (int)opt.n; rep++) {
		struct snap_out o = {
			.vec = vec, .vec_nf = vec_nf, .bytes = bytes,
			.pfns = pfns, .exp = exp,
		};
		uint64_t dt[SNAP_NMETHODS] = { 0 };
		struct uhmm_dmirror_cmd c;
		long nx = 0;

		/* Pre-warm: the range's layout and every output buffer. */
		layout(p, len, thp);
		bench_prewarm(vec, vec_bytes, 0);
		bench_prewarm(vec_nf, vec_bytes, 0);
		bench_prewarm(vec_x, vec_bytes, 0);
		memset(bytes, 0xee, npages);
		memset(pfns, 0, npages * sizeof(*pfns));
		memset(exp, 0, npages * sizeof(*exp));

		/* Rotate the order so no method always runs first. */
		for (int k = 0; k < SNAP_NMETHODS; k++) {
			enum snap_method m = (enum snap_method)
				((k + rep + 1) % SNAP_NMETHODS);
			uint64_t t0 = bench_now_ns();

			switch (m) {
			case SNAP_RAW:
				o.nreg = raw_scan(start, end, PM_RETURN_MASK,
						  vec, npages);
				break;
			case SNAP_DMIRROR:
				ret = dm_cmd(UHMM_DMIRROR_SNAPSHOT, p, bytes,
					     npages, &c);
				break;
			case SNAP_DIRECT:
				ret = direct_snapshot(sub, start, end, pfns);
				break;
			case SNAP_RAW_NOFILE:
				o.nreg_nf = raw_scan(start, end,
						     PM_RETURN_MASK & ~PM_FILE,
						     vec_nf, npages);
				break;
			case SNAP_RAW_EXPAND:
				nx = raw_scan(start, end, PM_RETURN_MASK,
					      vec_x, npages);
				if (nx > 0)
					expand(vec_x, nx, start, exp);
				break;
			default:
				break;
			}
			dt[m] = bench_now_ns() - t0;
			if (m == SNAP_DMIRROR && (ret || c.cpages != npages))
				die(BENCH_EXIT_DATA, "SNAPSHOT: %s, cpages "
				    "%llu of %zu", bench_err_name(ret),
				    (unsigned long long)c.cpages, npages);
			if (m == SNAP_DIRECT && ret)
				die(BENCH_EXIT_DATA, "uhmm_range_fault: %s",
				    bench_err_name(ret));
		}
		huge = check_snapshot(thp, start, end, &o);
		if (rep >= 0)
			for (int m = 0; m < SNAP_NMETHODS; m++)
				t[m][rep] = (double)dt[m] / (double)npages;
	}
	uhmm_interval_notifier_remove(sub);

	struct bench_stat st[SNAP_NMETHODS];

	for (int m = 0; m < SNAP_NMETHODS; m++)
		st[m] = bench_stat(t[m], opt.n);

	double raw = st[SNAP_RAW].median, nf = st[SNAP_RAW_NOFILE].median;
	double ex = st[SNAP_RAW_EXPAND].median;
	double thp_frac = (double)huge / (double)npages;
	struct bench_fig f = {
		.unit = "ns/page",
		.baseline_name = "raw PAGEMAP_SCAN",
		.baseline = nf,
		.baseline_best = st[SNAP_RAW_NOFILE].min,
		.kind = BENCH_AT_MOST,
		.target = 1.5,
		.extra_json = extra_json,
		.extra_text = extra_text,
	};

	for (int m = SNAP_DMIRROR; m <= SNAP_DIRECT; m++) {
		double v = st[m].median;

		f.name = m == SNAP_DMIRROR ?
			 (thp ? "snapshot_thp" : "snapshot_4k") :
			 (thp ? "range_fault_thp" : "range_fault_4k");
		f.value = v;
		f.value_best = st[m].min;
		f.ratio = v / nf;
		snprintf(extra_json, sizeof(extra_json),
			 ",\"layout\":\"%s\","
			 "\"baseline_file\":%.4g,\"ratio_file\":%.4g,"
			 "\"baseline_expand\":%.4g,\"ratio_expand\":%.4g",
			 thp ? "thp" : "4k", raw, v / raw, ex, v / ex);
		if (thp)
			snprintf(extra_json + strlen(extra_json),
				 sizeof(extra_json) - strlen(extra_json),
				 ",\"thp_fraction\":%.3g", thp_frac);
		snprintf(extra_text, sizeof(extra_text),
			 "ratio %.2f to a scan with PAGE_IS_FILE "
			 "(%.3g ns/page), %.2f to scan + one value a page "
			 "(%.3g ns/page)", v / raw, raw, v / ex, ex);
		if (thp)
			snprintf(extra_text + strlen(extra_text),
				 sizeof(extra_text) - strlen(extra_text),
				 "; THP for %.0f%% of the range",
				 thp_frac * 100);
		bench_report(&opt, &f);
	}

	munmap(p, len);
	munmap(vec, vec_bytes);
	munmap(vec_nf, vec_bytes);
	munmap(vec_x, vec_bytes);
	munmap(bytes, npages);
	munmap(pfns, npages * sizeof(*pfns));
	munmap(exp, npages * sizeof(*exp));
	for (int m = 0; m < SNAP_NMETHODS; m++)
		free(t[m]);
}

/* ------------------------------------------------------------------ */
/* 2. Device READ                                                       */
/* ------------------------------------------------------------------ */

/* A pattern that differs in every word and every repetition. */
static void fill_pattern(void *p, size_t len, uint64_t seed)
{
	uint64_t *w = p;

	for (size_t i = 0; i < len / sizeof(*w); i++)
		w[i] = (i * 0x9e3779b97f4a7c15ull) ^ seed;
}

static void check_read(const char *what, int ret,
		       const struct uhmm_dmirror_cmd *c, size_t npages,
		       bool cold, const void *dst, const void *src, size_t len)
{
	if (ret || c->cpages != npages)
		die(BENCH_EXIT_DATA, "%s READ: %s, cpages %llu of %zu", what,
		    bench_err_name(ret), (unsigned long long)c->cpages, npages);
	if (cold ? c->faults < 1 : c->faults != 0)
		die(BENCH_EXIT_DATA, "%s READ took %llu fault rounds, want %s",
		    what, (unsigned long long)c->faults, cold ? ">= 1" : "0");
	if (memcmp(dst, src, len))
		die(BENCH_EXIT_DATA, "%s READ: data differs from the source",
		    what);
}

static void bench_read(char *dst)
{
	size_t len = size, npages = len >> pg_shift;
	double *t_cold = bench_times(&opt), *t_warm = bench_times(&opt);
	double *t_cpy = bench_times(&opt);
	uint64_t cold_faults = 0;
	char extra_json[64], extra_text[64];

	for (int rep = -1; rep < (int)opt.n; rep++) {
		/* A fresh range each time, so the first READ is cold. */
		char *src = map_anon(len);
		struct uhmm_dmirror_cmd c;
		uint64_t t0, t_c = 0, t_w = 0, t_m = 0;
		int ret;

		fill_pattern(src, len, (uint64_t)(rep + 2) << 32);
		memset(dst, 0, len);
		t0 = bench_now_ns();
		ret = dm_cmd(UHMM_DMIRROR_READ, src, dst, npages, &c);
		t_c = bench_now_ns() - t0;
		check_read("cold", ret, &c, npages, true, dst, src, len);
		cold_faults = c.faults;

		for (int k = 0; k < 2; k++) {
			memset(dst, 0, len);
			if ((k + rep) & 1) {
				t0 = bench_now_ns();
				memcpy(dst, src, len);
				t_m = bench_now_ns() - t0;
				sink += (unsigned char)dst[len - 1];
			} else {
				t0 = bench_now_ns();
				ret = dm_cmd(UHMM_DMIRROR_READ, src, dst,
					     npages, &c);
				t_w = bench_now_ns() - t0;
				check_read("warm", ret, &c, npages, false, dst,
					   src, len);
			}
		}
		munmap(src, len);
		if (rep >= 0) {
			t_cold[rep] = (double)t_c;
			t_warm[rep] = (double)t_w;
			t_cpy[rep] = (double)t_m;
		}
	}

	struct bench_stat cold = bench_stat(t_cold, opt.n);
	struct bench_stat warm = bench_stat(t_warm, opt.n);
	struct bench_stat cpy = bench_stat(t_cpy, opt.n);
	double b = (double)len;	/* bytes per ns = GB/s */

	struct bench_fig f = {
		.name = "read_warm",
		.unit = "GB/s",
		.value = b / warm.median,
		.value_best = b / warm.min,
		.baseline_name = "memcpy, 1 thread",
		.baseline = b / cpy.median,
		.baseline_best = b / cpy.min,
		.ratio = cpy.median / warm.median,
		.kind = BENCH_AT_LEAST,
		.target = 0.9,
	};
	bench_report(&opt, &f);

	snprintf(extra_json, sizeof(extra_json), ",\"fault_rounds\":%llu",
		 (unsigned long long)cold_faults);
	snprintf(extra_text, sizeof(extra_text), "%llu fault round(s)",
		 (unsigned long long)cold_faults);
	f.name = "read_cold";
	f.value = b / cold.median;
	f.value_best = b / cold.min;
	f.ratio = cpy.median / cold.median;
	f.kind = BENCH_NO_TARGET;
	f.extra_json = extra_json;
	f.extra_text = extra_text;
	bench_report(&opt, &f);
	free(t_cold);
	free(t_warm);
	free(t_cpy);
}

/* ------------------------------------------------------------------ */
/* 3. munmap of a mirrored range                                        */
/* ------------------------------------------------------------------ */

/* Map and populate a range, mirror it if asked, and time its munmap. */
static uint64_t timed_munmap(bool mirror, char *dst, int rep)
{
	size_t len = size, npages = len >> pg_shift;
	char *p = map_anon(len);
	struct uhmm_dmirror_cmd c;
	uint64_t t0, t;
	int ret;

	bench_prewarm(p, len, (unsigned char)(rep + 2));
	if (mirror) {
		memset(dst, 0, len);
		ret = dm_cmd(UHMM_DMIRROR_READ, p, dst, npages, &c);
		check_read("munmap setup", ret, &c, npages, true, dst, p, len);
	}
	t0 = bench_now_ns();
	if (munmap(p, len))
		die(BENCH_EXIT_SETUP, "munmap: %s", strerror(errno));
	t = bench_now_ns() - t0;
	if (mirror) {
		/* The device must have lost access with the mapping. */
		ret = dm_cmd(UHMM_DMIRROR_READ, p, dst, npages, &c);
		if (ret != -EFAULT)
			die(BENCH_EXIT_DATA, "READ after munmap: %s, want "
			    "-EFAULT", bench_err_name(ret));
	}
	return t;
}

static void bench_munmap(char *dst)
{
	double *t_mir = bench_times(&opt), *t_plain = bench_times(&opt);

	for (int rep = -1; rep < (int)opt.n; rep++) {
		uint64_t t_m = 0, t_p = 0;

		for (int k = 0; k < 2; k++) {
			if ((k + rep) & 1)
				t_p = timed_munmap(false, dst, rep);
			else
				t_m = timed_munmap(true, dst, rep);
		}
		if (rep >= 0) {
			t_mir[rep] = (double)t_m / 1e6;
			t_plain[rep] = (double)t_p / 1e6;
		}
	}

	struct bench_stat mir = bench_stat(t_mir, opt.n);
	struct bench_stat plain = bench_stat(t_plain, opt.n);
	struct bench_fig f = {
		.name = "munmap_mirrored",
		.unit = "ms",
		.value = mir.median,
		.value_best = mir.min,
		.baseline_name = "munmap of an unmirrored range",
		.baseline = plain.median,
		.baseline_best = plain.min,
		.ratio = mir.median / plain.median,
		.kind = BENCH_AT_MOST,
		.target = 2.0,
		.extra_json = ",\"read_after_munmap\":\"-EFAULT\"",
		.extra_text = "READ after munmap: -EFAULT",
	};
	bench_report(&opt, &f);
	free(t_mir);
	free(t_plain);
}

/* ------------------------------------------------------------------ */

static const char *uffd_path_name(uint32_t path)
{
	switch (path) {
	case UHMM_UFFD_DEV: return "/dev/userfaultfd";
	case UHMM_UFFD_SYSCALL: return "userfaultfd(2)";
	case UHMM_UFFD_SYSCALL_USER_ONLY: return "userfaultfd(2) user-only";
	}
	return "none";
}

/* `uhmm bench` links this file with BENCH_ENTRY=bench_mirror_main. */
#ifndef BENCH_ENTRY
#define BENCH_ENTRY main
#endif

int BENCH_ENTRY(int argc, char **argv)
{
	bench_prog = "bench_mirror";
	struct uhmm_features feat = { .size = sizeof(feat) };
	char *dst;
	int ret;

	ret = bench_parse(argc, argv, &opt);
	if (ret)
		return ret > 0 ? BENCH_EXIT_OK : BENCH_EXIT_SETUP;
	pg = bench_page_size();
	pg_shift = (unsigned int)__builtin_ctzl(pg);
	size = opt.size_mib << 20;

	ret = uhmm_init();
	if (!ret)
		ret = uhmm_features(&feat);
	if (ret)
		die(BENCH_EXIT_SETUP, "uhmm_init: %s", bench_err_name(ret));
	pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (pagemap_fd < 0)
		die(BENCH_EXIT_SETUP, "/proc/self/pagemap: %s",
		    strerror(errno));
	ret = uhmm_dmirror_open(0, &dm);
	if (ret)
		die(BENCH_EXIT_SETUP, "uhmm_dmirror_open(0): %s",
		    bench_err_name(ret));
	if (!opt.json)
		printf("# bench_mirror: uhmm %s, n=%u (+1 warm-up), %zu MiB "
		       "ranges, page %zu, uffd %s, events %s, THP %s\n",
		       uhmm_version(), opt.n, opt.size_mib, pg,
		       uffd_path_name(feat.uffd_path),
		       feat.flags & UHMM_FEAT_EVENTS ? "yes" : "no",
		       feat.flags & UHMM_FEAT_THP ? "yes" : "no");

	/* The destination of every READ, mapped once for the whole run. */
	dst = map_anon(size);

	if (bench_want(&opt, "snapshot")) {
		bench_snapshot(false);
		if (size >= HPAGE_SIZE)
			bench_snapshot(true);
		else
			fprintf(stderr, "bench_mirror: --size below 2 MiB: no "
				"THP snapshot\n");
	}
	if (bench_want(&opt, "read"))
		bench_read(dst);
	if (bench_want(&opt, "munmap"))
		bench_munmap(dst);

	munmap(dst, size);
	uhmm_dmirror_close(dm);
	close(pagemap_fd);
	return BENCH_EXIT_OK;
}
