/* SPDX-License-Identifier: MIT */
/*
 * bench.h: the helpers every benchmark shares (docs/house-style.md §17).
 *
 * A benchmark does a warm-up, then N repetitions, and reports the median
 * and the best repetition of each figure next to a physical limit (its
 * baseline) measured in the same run, as the ratio of the two medians
 * (docs/DESIGN.md: performance is a ratio, never an absolute). One line
 * per figure, human-readable or, with --json, one JSON object per line.
 * Benchmarks never decide pass or fail on performance; they fail (exit 1)
 * only when the data they measured is wrong.
 *
 * Header-only: each benchmark is one .c file linked on its own.
 */
#ifndef UHMM_BENCH_H
#define UHMM_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BENCH_EXIT_OK		0
#define BENCH_EXIT_DATA		1	/* a measured result is wrong */
#define BENCH_EXIT_SETUP	2	/* bad usage, or cannot run */

/*
 * A benchmark's entry point: main() for its own program; `uhmm bench`
 * builds it again with -DBENCH_ENTRY=bench_<name>_main and runs it in a
 * child process with --json --only SCENARIO.
 */
#ifdef BENCH_ENTRY
int BENCH_ENTRY(int argc, char **argv);
#endif

static inline uint64_t bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline size_t bench_page_size(void)
{
	long ps = sysconf(_SC_PAGESIZE);

	return ps > 0 ? (size_t)ps : 4096;
}

/*
 * Write one byte in every page of [p, p + len). Guest memory the process
 * has not touched, or freed more than ~2 s ago, is first backed by the
 * host on its first touch, 5-10x slower than a warm page: buffers are
 * pre-warmed with this right before each measurement.
 */
static inline void bench_prewarm(void *p, size_t len, unsigned char v)
{
	volatile unsigned char *c = p;
	size_t pg = bench_page_size();

	for (size_t o = 0; o < len; o += pg)
		c[o] = v;
}

/* ---- statistics over repetitions ---- */

struct bench_stat {
	double median;
	double min;
	double max;
};

static inline int bench_cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* @v is left sorted. */
static inline struct bench_stat bench_stat(double *v, size_t n)
{
	struct bench_stat s = { 0, 0, 0 };

	if (!n)
		return s;
	qsort(v, n, sizeof(*v), bench_cmp_double);
	s.min = v[0];
	s.max = v[n - 1];
	s.median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
	return s;
}

/* ---- options ---- */

struct bench_opts {
	unsigned int n;		/* repetitions after the warm-up */
	bool json;
	size_t size_mib;
	const char *only;	/* --only: comma-separated scenarios, or NULL */
};

/* Whether scenario @name runs: every one unless --only names some. */
static inline bool bench_want(const struct bench_opts *o, const char *name)
{
	size_t len = strlen(name);
	const char *p = o->only;

	if (!p)
		return true;
	while (*p) {
		if (!strncmp(p, name, len) && (p[len] == ',' || !p[len]))
			return true;
		p = strchr(p, ',');
		if (!p)
			break;
		p++;
	}
	return false;
}

static inline void bench_usage(const char *prog, FILE *f)
{
	fprintf(f,
		"usage: %s [-n N] [--size MiB] [--quick] [--json] [--only LIST]\n"
		"  -n N        repetitions after one warm-up (default 7)\n"
		"  --size MiB  size of each measured range (default 64)\n"
		"  --quick     n=3, 16 MiB (explicit -n/--size still win)\n"
		"  --json      one JSON object per figure instead of text\n"
		"  --only LIST run only these scenarios (comma-separated)\n",
		prog);
}

/*
 * Parse the common options. Returns 0, 1 after --help (exit 0), or -1 on
 * a usage error (already reported).
 */
static inline int bench_parse(int argc, char **argv, struct bench_opts *o)
{
	long n = -1, size = -1;
	bool quick = false;

	o->json = false;
	o->only = NULL;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		char *end;

		if (!strcmp(a, "--json")) {
			o->json = true;
		} else if (!strcmp(a, "--quick")) {
			quick = true;
		} else if (!strcmp(a, "--only") && i + 1 < argc) {
			o->only = argv[++i];
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			bench_usage(argv[0], stdout);
			return 1;
		} else if ((!strcmp(a, "-n") || !strcmp(a, "--size")) &&
			   i + 1 < argc) {
			long v = strtol(argv[++i], &end, 10);

			if (*end || v < 1 || v > 1 << 20) {
				fprintf(stderr, "%s: bad value for %s: %s\n",
					argv[0], a, argv[i]);
				return -1;
			}
			if (a[1] == 'n')
				n = v;
			else
				size = v;
		} else {
			fprintf(stderr, "%s: unknown option %s\n", argv[0], a);
			bench_usage(argv[0], stderr);
			return -1;
		}
	}
	o->n = n > 0 ? (unsigned int)n : quick ? 3 : 7;
	o->size_mib = size > 0 ? (size_t)size : quick ? 16 : 64;
	return 0;
}

/* ---- reporting ---- */

enum bench_target {
	BENCH_NO_TARGET = 0,	/* informational figure */
	BENCH_AT_MOST,		/* ratio <= target */
	BENCH_AT_LEAST,		/* ratio >= target */
};

struct bench_fig {
	const char *name;
	const char *unit;
	double value;		/* median */
	double value_best;	/* from the best repetition */
	const char *baseline_name;
	double baseline;	/* median */
	double baseline_best;
	double ratio;		/* value / baseline, medians */
	enum bench_target kind;
	double target;
	const char *extra_json;	/* ",\"key\":value..." or NULL */
	const char *extra_text;	/* appended to the text line, or NULL */
};

static inline bool bench_met(const struct bench_fig *f)
{
	return f->kind == BENCH_AT_MOST ? f->ratio <= f->target :
	       f->kind == BENCH_AT_LEAST ? f->ratio >= f->target : true;
}

/*
 * Text:  name: V unit (baseline: B unit, ratio R, target <= T: met) [...]
 * JSON:  {"bench":name,"value":V,"unit":...,"baseline":B,"ratio":R,
 *         "target":T,"target_op":"<=","met":true,...}
 * "best" is the figure of the fastest repetition (the minimum time: the
 * lowest ns/page or ms, the highest GB/s).
 */
static inline void bench_report(const struct bench_opts *o,
				const struct bench_fig *f)
{
	const char *op = f->kind == BENCH_AT_MOST ? "<=" :
			 f->kind == BENCH_AT_LEAST ? ">=" : NULL;
	bool met = bench_met(f);

	if (o->json) {
		printf("{\"bench\":\"%s\",\"value\":%.4g,\"unit\":\"%s\","
		       "\"baseline\":%.4g,\"ratio\":%.4g,",
		       f->name, f->value, f->unit, f->baseline, f->ratio);
		if (op)
			printf("\"target\":%.4g,\"target_op\":\"%s\","
			       "\"met\":%s,", f->target, op,
			       met ? "true" : "false");
		else
			printf("\"target\":null,\"target_op\":null,"
			       "\"met\":null,");
		printf("\"value_best\":%.4g,\"baseline_best\":%.4g,"
		       "\"baseline_name\":\"%s\",\"n\":%u,"
		       "\"size_mib\":%zu%s}\n",
		       f->value_best, f->baseline_best, f->baseline_name,
		       o->n, o->size_mib, f->extra_json ? f->extra_json : "");
	} else {
		printf("%s: %.3g %s (baseline: %.3g %s, ratio %.2f, ",
		       f->name, f->value, f->unit, f->baseline, f->unit,
		       f->ratio);
		if (op)
			printf("target %s %.2g: %s)", op, f->target,
			       met ? "met" : "MISSED");
		else
			printf("no target)");
		printf(" [best %.3g / %.3g %s; baseline: %s%s%s]\n",
		       f->value_best, f->baseline_best, f->unit,
		       f->baseline_name, f->extra_text ? "; " : "",
		       f->extra_text ? f->extra_text : "");
	}
	fflush(stdout);
}


/* ---- shared by the benchmark programs ---- */

#include <errno.h>
#include <stdarg.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

/* The program's name in messages; each main() sets it. */
static const char *bench_prog = "bench";

/* PAGEMAP_SCAN (6.7), for raw baselines: uapi linux/fs.h. */
struct pm_page_region {
	uint64_t start;
	uint64_t end;
	uint64_t categories;
};

struct pm_scan_arg {
	uint64_t size;
	uint64_t flags;
	uint64_t start;
	uint64_t end;
	uint64_t walk_end;
	uint64_t vec;
	uint64_t vec_len;
	uint64_t max_pages;
	uint64_t category_inverted;
	uint64_t category_mask;
	uint64_t category_anyof_mask;
	uint64_t return_mask;
};

#define PM_SCAN_IOC	_IOWR('f', 16, struct pm_scan_arg)

__attribute__((format(printf, 2, 3), noreturn, unused))
static void die(int code, const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fprintf(stderr, "%s: %s: ", bench_prog,
		code == BENCH_EXIT_DATA ? "error" : "cannot run");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(code);
}

__attribute__((unused)) static void *map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		die(BENCH_EXIT_SETUP, "mmap of %zu bytes: %s", len,
		    strerror(errno));
	return p;
}

/* A zeroed array of one time per repetition. */
__attribute__((unused)) static double *bench_times(const struct bench_opts *o)
{
	double *t = calloc(o->n, sizeof(*t));

	if (!t)
		die(BENCH_EXIT_SETUP, "out of memory");
	return t;
}

/* "-EFAULT" and the like, for messages. */
__attribute__((unused)) static const char *bench_err_name(int e)
{
	static char buf[32];

	switch (e) {
	case 0: return "0";
	case -EFAULT: return "-EFAULT";
	case -EINVAL: return "-EINVAL";
	case -EBUSY: return "-EBUSY";
	case -EPERM: return "-EPERM";
	case -ENOMEM: return "-ENOMEM";
	case -ENOSYS: return "-ENOSYS";
	case -EOPNOTSUPP: return "-EOPNOTSUPP";
	case -ENODEV: return "-ENODEV";
	}
	snprintf(buf, sizeof(buf), "%d", e);
	return buf;
}

#endif /* UHMM_BENCH_H */
