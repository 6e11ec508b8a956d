/* SPDX-License-Identifier: MIT */
/*
 * DMA engine throughput: one batch of 4 KiB or of 2 MiB descriptors on the
 * synchronous engine and on engines of 1 and 2 threads, as a ratio to a
 * single-thread memcpy() of the same bytes measured in the same run.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <uhmm/dma.h>

#include "bench.h"

struct cfg {
	size_t desc_len;
	unsigned int nthreads;
};

static const struct cfg cfgs[] = {
	{ 4096, 0 }, { 4096, 1 }, { 4096, 2 },
	{ 2 << 20, 0 }, { 2 << 20, 1 }, { 2 << 20, 2 },
};

static void usage(const char *prog, FILE *f)
{
	fprintf(f,
		"usage: %s [-n N] [--size MiB] [--quick]\n"
		"  -n N        repetitions after one warm-up (default 5)\n"
		"  --size MiB  bytes copied by each batch (default 256)\n"
		"  --quick     n=3, 32 MiB (explicit -n/--size still win)\n",
		prog);
}

/*
 * Write both buffers right before a measurement: guest memory untouched
 * for ~2 s goes back to the host (docs/DESIGN.md). The source differs per
 * repetition so a copy that did not happen cannot pass the check.
 */
static void prepare(uint64_t *src, unsigned char *dst, size_t len,
		    uint64_t seed)
{
	for (size_t i = 0; i < len / sizeof(*src); i++)
		src[i] = (i * 0x9e3779b97f4a7c15ull) ^ seed;
	memset(dst, 0, len);
}

static double gbps(size_t bytes, uint64_t ns)
{
	return ns ? (double)bytes / (double)ns : 0;
}

int main(int argc, char **argv)
{
	long n = -1, size = -1;
	bool quick = false;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!strcmp(a, "--quick")) {
			quick = true;
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(argv[0], stdout);
			return BENCH_EXIT_OK;
		} else if ((!strcmp(a, "-n") || !strcmp(a, "--size")) &&
			   i + 1 < argc) {
			char *end;
			long v = strtol(argv[++i], &end, 10);

			if (*end || v < 1 || v > 1 << 16) {
				fprintf(stderr, "%s: bad value for %s: %s\n",
					argv[0], a, argv[i]);
				return BENCH_EXIT_SETUP;
			}
			if (a[1] == 'n')
				n = v;
			else
				size = v;
		} else {
			usage(argv[0], stderr);
			return BENCH_EXIT_SETUP;
		}
	}
	unsigned int reps = n > 0 ? (unsigned int)n : quick ? 3 : 5;
	size_t len = (size_t)(size > 0 ? size : quick ? 32 : 256) << 20;

	void *sm = mmap(NULL, len, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	void *dm = mmap(NULL, len, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	size_t maxdesc = len / 4096;
	struct uhmm_dma_desc *desc = calloc(maxdesc, sizeof(*desc));
	double *v = calloc(reps, sizeof(double));
	double *base = calloc(reps, sizeof(double));

	if (sm == MAP_FAILED || dm == MAP_FAILED || !desc || !v || !base) {
		fprintf(stderr, "%s: out of memory\n", argv[0]);
		return BENCH_EXIT_SETUP;
	}
	uint64_t *src = sm;
	unsigned char *dst = dm;

	printf("# %zu MiB per batch, median of %u after one warm-up\n",
	       len >> 20, reps);
	for (size_t c = 0; c < sizeof(cfgs) / sizeof(cfgs[0]); c++) {
		const struct cfg *cf = &cfgs[c];
		size_t nd = len / cf->desc_len;
		struct uhmm_dma *dma;
		char name[64];
		int err;

		err = uhmm_dma_create(cf->nthreads, &dma);
		if (err) {
			fprintf(stderr, "uhmm_dma_create(%u): %s\n",
				cf->nthreads, strerror(-err));
			return BENCH_EXIT_SETUP;
		}
		for (size_t i = 0; i < nd; i++)
			desc[i] = (struct uhmm_dma_desc){
				dst + i * cf->desc_len,
				(unsigned char *)src + i * cf->desc_len,
				cf->desc_len };

		/* Repetition 0 is the warm-up; memcpy and engine alternate. */
		for (unsigned int r = 0; r <= reps; r++) {
			struct uhmm_dma_batch b = { .desc = desc, .n = nd };
			uint64_t t0, t1;

			prepare(src, dst, len, 2 * r + c * 1000);
			t0 = bench_now_ns();
			memcpy(dst, src, len);
			t1 = bench_now_ns();
			if (memcmp(dst, src, len)) {
				fprintf(stderr, "memcpy: data mismatch\n");
				return BENCH_EXIT_DATA;
			}
			if (r)
				base[r - 1] = gbps(len, t1 - t0);

			prepare(src, dst, len, 2 * r + 1 + c * 1000);
			t0 = bench_now_ns();
			err = uhmm_dma_submit(dma, &b);
			if (!err)
				err = uhmm_dma_wait(dma, &b);
			t1 = bench_now_ns();
			if (err) {
				fprintf(stderr, "dma: %s\n", strerror(-err));
				return BENCH_EXIT_DATA;
			}
			if (memcmp(dst, src, len)) {
				fprintf(stderr, "dma %zu/%u: data mismatch\n",
					cf->desc_len, cf->nthreads);
				return BENCH_EXIT_DATA;
			}
			if (r)
				v[r - 1] = gbps(len, t1 - t0);
		}
		uhmm_dma_destroy(dma);

		struct bench_stat s = bench_stat(v, reps);
		struct bench_stat bs = bench_stat(base, reps);

		if (cf->nthreads)
			snprintf(name, sizeof(name), "dma_%s_%uthread%s",
				 cf->desc_len == 4096 ? "4k" : "2m",
				 cf->nthreads, cf->nthreads > 1 ? "s" : "");
		else
			snprintf(name, sizeof(name), "dma_%s_sync",
				 cf->desc_len == 4096 ? "4k" : "2m");
		printf("%s: %.2f GB/s (baseline memcpy %.2f GB/s, ratio %.2f) "
		       "[%zu descriptors of %zu KiB; best %.2f, baseline best %.2f]\n",
		       name, s.median, bs.median,
		       bs.median ? s.median / bs.median : 0, nd,
		       cf->desc_len >> 10, s.max, bs.max);
		fflush(stdout);
	}
	free(desc);
	free(v);
	free(base);
	munmap(sm, len);
	munmap(dm, len);
	return BENCH_EXIT_OK;
}
