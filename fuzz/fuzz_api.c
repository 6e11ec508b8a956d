/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the input is a sequence of API operations on a small
 * region (FZ_PAGES pages) — notifier insert/remove, uhmm_range_fault()
 * with random flags and ranges (hostile ones included: unaligned,
 * overflowing, NULL), migrate setup/pages/finalize to a toy device with
 * random destination decisions, dmirror commands with random and hostile
 * arguments, munmap/mprotect/mremap/madvise/fork of the region — checked
 * against a model of what each page must hold. `make fuzz DURATION=s`
 * runs it; tests/test_fuzz_corpus.c replays fuzz/corpus/ in `make check`
 * (FUZZ_NO_MAIN is not needed: libFuzzer provides main, the test its own).
 *
 * Each input cleans up after itself: notifiers removed, devices closed,
 * toy device pages back, the region unmapped. A finding aborts with a
 * "fuzz: FINDING:" line.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uhmm/dmirror.h>
#include <uhmm/migrate.h>
#include <uhmm/uhmm.h>

#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif

#define FZ_PS 4096UL
#define FZ_PAGES 16UL		/* the region */
#define FZ_BOUNCE 64UL		/* pages of the command buffer */
#define FZ_NOTIFIERS 4
#define FZ_TOY_PAGES 64UL
#define FZ_MAX_OPS 64
#define FZ_GUARD_LO 2UL		/* PROT_NONE pages below the region */
#define FZ_GUARD_HI (FZ_PAGES + 4)	/* and above: no range can leave them */

/* Model states of a page of the region. */
enum fz_state {
	FZ_GONE = 0,		/* unmapped */
	FZ_MAPPED = 1,		/* ours, contents per the model */
	FZ_FOREIGN = 2,		/* someone else's mapping took the hole */
	FZ_LIMBO = 3,		/* ours, contents unknown (failed mremap) */
};

struct fz_page {
	uint8_t state;		/* enum fz_state */
	uint8_t prot;		/* PROT_* while mapped */
	uint32_t seed;		/* contents: 0 = zeros */
	bool unknown;		/* failed WRITEs: the old seed or one of alt[] */
	uint8_t nalt;
	uint32_t alt[4];	/* the failed WRITEs' seeds, when unknown */
};

struct fz_in {
	const uint8_t *p;
	size_t n;
};

static struct {
	char *region;
	struct fz_page pg[FZ_PAGES];
	char *bounce;
	struct uhmm_dmirror *dm[2];
	struct uhmm_interval_notifier *sub[FZ_NOTIFIERS];
	atomic_ulong inv[FZ_NOTIFIERS];
	uint32_t next_seed;
	uint32_t first_seed;	/* next_seed when this input began */
} fz;

static bool fz_trace;		/* UHMM_FUZZ_TRACE=1: each op on stderr */

/* ------------------------------------------------------------ helpers */

__attribute__((noreturn, format(printf, 1, 2)))
static void fz_finding(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "fuzz: FINDING: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	fflush(stderr);
	abort();
}

static uint8_t fz_u8(struct fz_in *in)
{
	uint8_t v;

	if (!in->n)
		return 0;
	v = *in->p++;
	in->n--;
	return v;
}

static uint64_t fz_u64(struct fz_in *in)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v |= (uint64_t)fz_u8(in) << (8 * i);
	return v;
}

static uint64_t fz_word(uint32_t seed, unsigned long pg, unsigned long k)
{
	uint64_t x = ((uint64_t)seed << 32 | (uint32_t)(pg << 12 | k)) +
		     0x9e3779b97f4a7c15ULL;

	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	return x ^ (x >> 27);
}

/*
 * Which stamp word @w is (fz_word() inverted): its seed, page and word
 * index, for findings. False for a word no stamp has (k past a page).
 */
static bool fz_unword(uint64_t w, uint32_t *seed, unsigned long *pg)
{
	uint64_t m = 0xbf58476d1ce4e5b9ULL, inv = m, x = w;

	for (int i = 0; i < 6; i++)
		inv *= 2 - m * inv;
	x ^= x >> 27 ^ x >> 54;
	x *= inv;
	x ^= x >> 30 ^ x >> 60;
	x -= 0x9e3779b97f4a7c15ULL;
	*seed = (uint32_t)(x >> 32);
	*pg = (uint32_t)x >> 12;
	return (x & 0xfff) < FZ_PS / 8 && *pg < FZ_PAGES;
}

static void fz_fill(void *p, unsigned long pg, uint32_t seed)
{
	uint64_t *w = p;

	for (unsigned long k = 0; k < FZ_PS / 8; k++)
		w[k] = seed ? fz_word(seed, pg, k) : 0;
}

static bool fz_holds(const void *p, unsigned long pg, uint32_t seed)
{
	const uint64_t *w = p;

	for (unsigned long k = 0; k < FZ_PS / 8; k++)
		if (w[k] != (seed ? fz_word(seed, pg, k) : 0))
			return false;
	return true;
}

static char *fz_addr(unsigned long pg)
{
	return fz.region + pg * FZ_PS;
}

/* Whether @p holds what model page @m may hold, stamped for page @pg;
 * the seed it holds in *seed. */
static bool fz_holds_any(const void *p, unsigned long pg,
			 const struct fz_page *m, uint32_t *seed)
{
	*seed = m->seed;
	if (fz_holds(p, pg, m->seed))
		return true;
	for (unsigned int i = 0; m->unknown && i < m->nalt; i++)
		if (fz_holds(p, pg, m->alt[i])) {
			*seed = m->alt[i];
			return true;
		}
	return false;
}

/* Page @pg (of the region) as read at @p: against the model. */
static void fz_check(const void *p, unsigned long pg, const char *who)
{
	struct fz_page *m = &fz.pg[pg];
	uint32_t seed;

	if (!fz_holds_any(p, pg, m, &seed)) {
		uint64_t w = *(const uint64_t *)p;
		unsigned long wpg;
		uint32_t wseed;
		bool stamp = fz_unword(w, &wseed, &wpg);

		fz_finding("%s: page %lu does not hold seed %u%s (word 0 = 0x%016llx: %s page %lu seed %u, %s input)",
			   who, pg, m->seed,
			   m->unknown ? " nor a failed write's" : "",
			   (unsigned long long)w,
			   !w ? "zeros, not" : stamp ? "the stamp of" : "no stamp, not",
			   stamp ? wpg : 0, stamp ? wseed : 0,
			   !stamp ? "no" : wseed > fz.first_seed ? "this" : "an earlier");
	}
	m->seed = seed;
	m->unknown = false;
	m->nalt = 0;
}

static bool fz_readable(unsigned long pg)
{
	return fz.pg[pg].state == FZ_MAPPED && (fz.pg[pg].prot & PROT_READ);
}

static bool fz_writable(unsigned long pg)
{
	return fz.pg[pg].state == FZ_MAPPED && (fz.pg[pg].prot & PROT_WRITE);
}

/* Pages [first, first + n) all in state @st (n may run past the end). */
static bool fz_all(unsigned long first, unsigned long n, int st)
{
	if (first + n > FZ_PAGES)
		return false;
	for (unsigned long i = first; i < first + n; i++)
		if (fz.pg[i].state != st)
			return false;
	return true;
}

/*
 * Is anything mapped at page @pg? mincore() fails with ENOMEM where
 * nothing is (msync would do too, but valgrind flags it).
 */
static bool fz_mapped(unsigned long pg)
{
	unsigned char v;

	return mincore(fz_addr(pg), FZ_PS, &v) == 0;
}

/* Whether a hostile buffer at @p may be used: unmapped, or ours. */
static bool fz_wild_ok(const char *p)
{
	uintptr_t a = (uintptr_t)p & ~(FZ_PS - 1);
	uintptr_t lo = (uintptr_t)fz.region - FZ_GUARD_LO * FZ_PS;
	uintptr_t hi = (uintptr_t)fz.region + (FZ_PAGES + FZ_GUARD_HI) * FZ_PS;
	unsigned char v;

	if (a >= lo && a < hi)
		return true;
	return mincore((void *)a, FZ_PS, &v) != 0;
}

/*
 * A page the model has unmapped may have been taken since by a mapping of
 * someone else (a sanitizer's): then it is FOREIGN and never touched.
 * Returns true if any page of [first, first + n) is FOREIGN.
 */
static bool fz_foreign(unsigned long first, unsigned long n)
{
	bool any = false;

	for (unsigned long i = first; i < first + n && i < FZ_PAGES; i++) {
		if (fz.pg[i].state == FZ_GONE &&
		    fz_mapped(i))
			fz.pg[i].state = FZ_FOREIGN;
		any |= fz.pg[i].state == FZ_FOREIGN;
	}
	return any;
}

/* An address: mostly in the region, sometimes hostile. */
static uint64_t fz_pick_addr(struct fz_in *in, unsigned long *pgout)
{
	uint8_t k = fz_u8(in), pg = fz_u8(in) % (FZ_PAGES + 2);

	*pgout = ULONG_MAX;
	switch (k % 16) {
	case 12: return (uint64_t)(uintptr_t)fz.region + pg * FZ_PS + 1 + k;
	case 13: return 0;
	case 14: return ~0ULL & ~(FZ_PS - 1);
	/* Never a mapped address of this process: not canonical. */
	case 15: return fz_u64(in) | 1ULL << 63;
	default:
		if (pg < FZ_PAGES)
			*pgout = pg;
		return (uint64_t)(uintptr_t)fz.region + pg * FZ_PS;
	}
}

static uint64_t fz_pick_npages(struct fz_in *in)
{
	uint8_t k = fz_u8(in);

	switch (k % 16) {
	case 14: return 0;
	case 15: return 1ULL << (40 + k % 24);
	default: return 1 + k % FZ_PAGES;
	}
}

/* ------------------------------------------------------------ toy device */

static struct {
	struct uhmm_pagemap *pg;
	char *mem;
	pthread_mutex_t lock;
	unsigned long free[FZ_TOY_PAGES];
	unsigned long nfree;
	bool fail_to_ram;
} toy;

static char *toy_mem(struct uhmm_page *p)
{
	return toy.mem + uhmm_page_index(p) * FZ_PS;
}

static void toy_page_free(struct uhmm_page *p)
{
	pthread_mutex_lock(&toy.lock);
	if (toy.nfree >= FZ_TOY_PAGES)
		fz_finding("toy device: page %lu freed twice",
			   uhmm_page_index(p));
	toy.free[toy.nfree++] = uhmm_page_index(p);
	pthread_mutex_unlock(&toy.lock);
}

static struct uhmm_page *toy_alloc(void)
{
	struct uhmm_page *p = NULL;

	pthread_mutex_lock(&toy.lock);
	if (toy.nfree)
		p = uhmm_pagemap_page(toy.pg, toy.free[--toy.nfree]);
	pthread_mutex_unlock(&toy.lock);
	if (p)
		uhmm_page_init(p);
	return p;
}

/* Device -> system over [start, end); @skip: per-page "leave it" bits. */
static int toy_to_ram(unsigned long start, unsigned long end,
		      struct uhmm_page *fault_page, uint64_t skip)
{
	uint64_t src[FZ_PAGES + 2] = { 0 }, dst[FZ_PAGES + 2] = { 0 };
	unsigned long n = (end - start) / FZ_PS;
	struct uhmm_migrate m = {
		.start = start, .end = end, .src = src, .dst = dst,
		.pgmap_owner = &toy, .fault_page = fault_page,
		.flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE,
	};
	int r;

	if (n > FZ_PAGES + 2)
		return -EINVAL;
	r = uhmm_migrate_setup(&m);
	if (r)
		return r;
	for (unsigned long i = 0; i < n; i++) {
		struct uhmm_page *sp = uhmm_migrate_pfn_to_page(src[i]);

		if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE) || !sp)
			continue;
		if ((skip >> i & 1) && uhmm_migrate_pfn_to_page(src[i]) != fault_page)
			continue;
		if (uhmm_migrate_alloc_system(&dst[i]))
			continue;
		memcpy(uhmm_migrate_pfn_to_addr(dst[i]), toy_mem(sp), FZ_PS);
	}
	uhmm_migrate_pages(&m);
	uhmm_migrate_finalize(&m);
	return 0;
}

static int toy_migrate_to_ram(struct uhmm_fault *vmf)
{
	return toy_to_ram(vmf->address, vmf->address + FZ_PS, vmf->page, 0);
}

static const struct uhmm_pagemap_ops toy_ops = {
	.page_free = toy_page_free,
	.migrate_to_ram = toy_migrate_to_ram,
};

static void toy_init_once(void)
{
	static bool done;

	if (done)
		return;
	done = true;
	pthread_mutex_init(&toy.lock, NULL);
	toy.mem = mmap(NULL, FZ_TOY_PAGES * FZ_PS, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (toy.mem == MAP_FAILED ||
	    uhmm_pagemap_create(UHMM_MEMORY_DEVICE_PRIVATE, &toy, &toy_ops,
				FZ_TOY_PAGES, &toy.pg))
		fz_finding("toy device: cannot create");
	for (unsigned long i = 0; i < FZ_TOY_PAGES; i++)
		toy.free[toy.nfree++] = FZ_TOY_PAGES - 1 - i;
}

/* ------------------------------------------------------------ operations */

static bool fz_invalidate(struct uhmm_interval_notifier *sub,
			  const struct uhmm_notifier_range *r, unsigned long seq)
{
	atomic_ulong *count = uhmm_interval_notifier_priv(sub);

	if (r->start >= r->end && r->event != UHMM_NOTIFY_RELEASE)
		fz_finding("invalidation of an empty range [%#lx, %#lx) event %d",
			   r->start, r->end, r->event);
	uhmm_interval_set_seq(sub, seq);
	atomic_fetch_add(count, 1);
	return true;
}

static const struct uhmm_interval_notifier_ops fz_ops = {
	.invalidate = fz_invalidate,
};

static void op_cpu_write(struct fz_in *in)
{
	unsigned long pg = fz_u8(in) % FZ_PAGES;

	if (!fz_writable(pg))
		return;
	fz.pg[pg].seed = ++fz.next_seed;
	fz.pg[pg].unknown = false;
	fz.pg[pg].nalt = 0;
	fz_fill(fz_addr(pg), pg, fz.pg[pg].seed);
}

static void op_cpu_read(struct fz_in *in)
{
	unsigned long pg = fz_u8(in) % FZ_PAGES;

	if (fz_readable(pg))
		fz_check(fz_addr(pg), pg, "cpu read");
}

static void op_notifier_insert(struct fz_in *in)
{
	unsigned int i = fz_u8(in) % FZ_NOTIFIERS;
	unsigned long pg, start = (unsigned long)fz_pick_addr(in, &pg);
	uint8_t k = fz_u8(in);
	unsigned long len = (k % 8 == 7) ? (unsigned long)fz_u64(in) :
			    (1 + k % FZ_PAGES) * FZ_PS;
	bool bad = start % FZ_PS || len % FZ_PS || !len || start + len < start;
	int r;

	if (fz.sub[i])
		return;
	if (k % 32 == 31) {
		r = uhmm_interval_notifier_insert(NULL, start, len, &fz_ops, &fz.inv[i]);
		if (r != -EINVAL)
			fz_finding("notifier insert with NULL out: %d", r);
		return;
	}
	r = uhmm_interval_notifier_insert(&fz.sub[i], start, len, &fz_ops,
					  &fz.inv[i]);
	if (bad ? r != -EINVAL : r != 0)
		fz_finding("notifier insert [%#lx, +%#lx): %d", start, len, r);
	if (r)
		fz.sub[i] = NULL;
}

static void op_notifier_remove(struct fz_in *in)
{
	unsigned int i = fz_u8(in) % FZ_NOTIFIERS;
	int r;

	if (!fz.sub[i])
		return;
	r = uhmm_interval_notifier_remove(fz.sub[i]);
	if (r)
		fz_finding("notifier remove: %d", r);
	fz.sub[i] = NULL;
}

static void op_range_fault(struct fz_in *in)
{
	uint64_t pfns[FZ_PAGES + 2];
	unsigned int i = fz_u8(in) % FZ_NOTIFIERS;
	unsigned long pg, start = (unsigned long)fz_pick_addr(in, &pg);
	uint8_t k = fz_u8(in), fl = fz_u8(in);
	unsigned long n = 1 + k % (FZ_PAGES + 2);
	struct uhmm_range r = {
		.notifier = fz.sub[i],
		.start = start,
		.end = start + n * FZ_PS,
		.hmm_pfns = pfns,
		.default_flags = (fl & 1 ? UHMM_PFN_REQ_FAULT : 0) |
				 (fl & 2 ? UHMM_PFN_REQ_WRITE : 0),
		.pfn_flags_mask = fl & 4 ? ~0ULL : 0,
		.dev_private_owner = fl & 8 ? (const void *)&toy : NULL,
	};
	int ret, tries = 0;

	for (unsigned long j = 0; j < n; j++)
		pfns[j] = fl & 16 ? fz_u64(in) : 0;
	if (k % 16 == 15)
		r.end = (unsigned long)fz_u64(in);
	if (fl & 32)
		r.hmm_pfns = NULL;
	if (fl & 64 && fl & 128) {
		ret = uhmm_range_fault(NULL);
		if (ret != -EINVAL)
			fz_finding("range_fault(NULL): %d", ret);
		return;
	}
	do {
		r.notifier_seq = uhmm_interval_read_begin(r.notifier);
		ret = uhmm_range_fault(&r);
	} while (ret == -EBUSY && ++tries < 100);
	if (ret != 0 && ret != -EBUSY && ret != -EFAULT && ret != -EPERM &&
	    ret != -EINVAL)
		fz_finding("range_fault [%#lx, %#lx) flags %#x: unexpected %d",
			   r.start, r.end, fl, ret);
	if ((!r.notifier || !r.hmm_pfns || r.start % FZ_PS || r.end % FZ_PS ||
	     r.end <= r.start) && ret != -EINVAL)
		fz_finding("range_fault with bad arguments [%#lx, %#lx) pfns %p notifier %p: %d",
			   r.start, r.end, (void *)r.hmm_pfns, (void *)r.notifier, ret);
	if (ret || pg == ULONG_MAX)
		return;
	/* Success: requested pages are valid, unmapped ones are errors. */
	for (unsigned long j = 0; j < n && pg + j < FZ_PAGES; j++) {
		uint64_t req = (fl & 4 ? 0 : 0) | r.default_flags;
		uint64_t v = pfns[j];
		unsigned long p = pg + j;

		if (fl & 4)
			break;	/* requests came from the random input */
		if (fz.pg[p].state == FZ_GONE && !(v & UHMM_PFN_ERROR) &&
		    !fz_foreign(p, 1))
			fz_finding("range_fault: unmapped page %lu reported %#llx",
				   p, (unsigned long long)v);
		if ((req & UHMM_PFN_REQ_FAULT) && !(v & UHMM_PFN_VALID) &&
		    !(v & (UHMM_PFN_DEVICE_PRIVATE | UHMM_PFN_DEVICE_COHERENT)))
			fz_finding("range_fault: page %lu requested but not valid: %#llx",
				   p, (unsigned long long)v);
		if ((req & UHMM_PFN_REQ_WRITE) && (req & UHMM_PFN_REQ_FAULT) &&
		    (v & UHMM_PFN_VALID) && !(v & UHMM_PFN_WRITE) &&
		    !(v & (UHMM_PFN_DEVICE_PRIVATE | UHMM_PFN_DEVICE_COHERENT)))
			fz_finding("range_fault: page %lu write requested, not writable: %#llx",
				   p, (unsigned long long)v);
		if ((v & UHMM_PFN_VALID) && !(v & (UHMM_PFN_DEVICE_PRIVATE |
						    UHMM_PFN_DEVICE_COHERENT)) &&
		    uhmm_pfn_to_addr(v) != fz_addr(p))
			fz_finding("range_fault: page %lu frame %p, not its address %p",
				   p, uhmm_pfn_to_addr(v), (void *)fz_addr(p));
	}
}

/* System -> toy device over a range, random destination decisions. */
static void op_migrate_to_dev(struct fz_in *in)
{
	uint64_t src[FZ_PAGES + 2] = { 0 }, dst[FZ_PAGES + 2] = { 0 };
	unsigned long pg, start = (unsigned long)fz_pick_addr(in, &pg);
	uint8_t k = fz_u8(in), fl = fz_u8(in);
	uint64_t decide = fz_u64(in);
	unsigned long n = 1 + k % (FZ_PAGES + 2);
	struct uhmm_migrate m = {
		.start = start, .end = start + n * FZ_PS, .src = src, .dst = dst,
		.pgmap_owner = &toy,
		.flags = fl & 0xf ? fl & 0xf : UHMM_MIGRATE_SELECT_SYSTEM,
	};
	int r;

	if (fl & 0x10)
		m.dst = NULL;
	r = uhmm_migrate_setup(&m);
	if (r == -EINVAL || r == -ENOSYS)
		return;
	if (r)
		fz_finding("migrate_setup [%#lx, +%lu): %d", start, n, r);
	if (!m.dst)
		fz_finding("migrate_setup accepted a NULL dst");
	for (unsigned long i = 0; i < n; i++) {
		struct uhmm_page *dp;

		if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE) || (decide >> i & 1))
			continue;
		if (src[i] & UHMM_MIGRATE_PFN_DEVICE)
			continue;	/* already a device page */
		dp = toy_alloc();
		if (!dp)
			continue;
		if (src[i] & UHMM_MIGRATE_PFN_VALID)
			memcpy(toy_mem(dp), uhmm_migrate_pfn_to_addr(src[i]), FZ_PS);
		else
			memset(toy_mem(dp), 0, FZ_PS);
		dst[i] = uhmm_migrate_pfn_device(dp);
	}
	uhmm_migrate_pages(&m);
	uhmm_migrate_finalize(&m);
	if (fz_trace) {
		fprintf(stderr, "fuzz: migrate_to_dev %lu+%lu flags %#lx:", pg, n,
			(unsigned long)m.flags);
		for (unsigned long i = 0; i < n; i++)
			fprintf(stderr, " %c", src[i] & UHMM_MIGRATE_PFN_MIGRATE ?
				(dst[i] ? 'D' : 'm') : '-');
		fprintf(stderr, "\n");
	}
	for (unsigned long i = 0; i < n; i++)
		if (dst[i] && !(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			uhmm_page_put(uhmm_migrate_pfn_to_page(dst[i]));
}

static void op_migrate_to_ram(struct fz_in *in)
{
	unsigned long pg, start = (unsigned long)fz_pick_addr(in, &pg);
	uint8_t k = fz_u8(in);
	uint64_t skip = fz_u64(in);
	unsigned long n = 1 + k % (FZ_PAGES + 2);
	int r;

	if (start % FZ_PS || start + n * FZ_PS < start)
		return;
	r = toy_to_ram(start, start + n * FZ_PS, NULL, skip);
	if (fz_trace)
		fprintf(stderr, "fuzz: migrate_to_ram %lu+%lu skip %#llx: %d\n",
			pg, n, (unsigned long long)skip, r);
	if (r && r != -EINVAL && r != -ENOSYS)
		fz_finding("migrate to ram [%#lx, +%lu): %d", start, n, r);
}

/* Model update after a successful or failed WRITE of bounce pages. */
static void fz_write_result(unsigned long pg, uint64_t n, int r,
			    const uint32_t *seeds)
{
	for (uint64_t i = 0; i < n && pg + i < FZ_PAGES; i++) {
		struct fz_page *m = &fz.pg[pg + i];

		if (r == 0) {
			m->seed = seeds[i];
			m->unknown = false;
			m->nalt = 0;
		} else if (m->state == FZ_MAPPED) {
			/* Written or not: any failed WRITE since the last
			 * known state may have left its data. */
			if (m->nalt == sizeof(m->alt) / sizeof(m->alt[0])) {
				m->state = FZ_LIMBO;
				continue;
			}
			m->unknown = true;
			m->alt[m->nalt++] = seeds[i];
		}
	}
}

static void op_dmirror(struct fz_in *in)
{
	uint8_t k = fz_u8(in), op = fz_u8(in) % 11, pk = fz_u8(in);
	struct uhmm_dmirror *dm = fz.dm[k & 1];
	unsigned long pg;
	uint64_t addr = fz_pick_addr(in, &pg), npages = fz_pick_npages(in);
	uint32_t seeds[FZ_BOUNCE];
	struct uhmm_dmirror_cmd c = { .addr = addr, .npages = npages };
	bool region = pg != ULONG_MAX, fits = region && pg + npages <= FZ_PAGES;
	char *ptr = fz.bounce;
	int r;

	if (!dm)
		return;
	/* A hostile buffer, or the bounce buffer only when it is big enough. */
	switch (pk % 8) {
	case 6: ptr = NULL; break;
	case 7:
		ptr = (char *)(uintptr_t)fz_u64(in);
		/*
		 * Wild, but never into the rest of the process: libFuzzer
		 * learns heap addresses from comparisons, and a READ there
		 * overwrites the caller's own memory (dmirror's page table,
		 * as the kernel would a user buffer): self-inflicted, not a
		 * bug. Unmapped addresses, the region and its guards stay.
		 */
		if (!fz_wild_ok(ptr))
			ptr = (char *)(uintptr_t)(1ULL << 63 | 1ULL << 40);
		break;
	default:
		if (npages > FZ_BOUNCE)
			ptr = (char *)(uintptr_t)(1ULL << 63 | 1ULL << 40);
		break;
	}
	if (op == UHMM_DMIRROR_FLAGS && npages)
		c.npages = k >> 1 & 1 ? UHMM_DMIRROR_FLAG_FAIL_ALLOC : 2;
	c.ptr = (uint64_t)(uintptr_t)ptr;
	if (op == UHMM_DMIRROR_WRITE && ptr == fz.bounce)
		for (uint64_t i = 0; i < npages; i++) {
			seeds[i] = ++fz.next_seed;
			fz_fill(fz.bounce + i * FZ_PS, region ? pg + i : 0, seeds[i]);
		}
	r = uhmm_dmirror_cmd(dm, (enum uhmm_dmirror_op)op, k & 0x80 ? NULL : &c);
	if (fz_trace)
		fprintf(stderr, "fuzz: dmirror %d op %u addr %#llx npages %llu ptr %p: %d\n",
			k & 1, op, (unsigned long long)addr,
			(unsigned long long)npages, (void *)ptr, r);
	/*
	 * A wild buffer inside the region (libFuzzer learns its addresses
	 * from comparisons): every command but WRITE may have stored into
	 * the pages it overlaps, whatever it returned. Their contents are
	 * unknown now.
	 */
	if (op == UHMM_DMIRROR_WRITE && ptr != fz.bounce && region)
		/* What a hostile buffer held, if readable (ASan's shadow
		 * is), landed in the pages before the fault. */
		for (uint64_t i = pg; i < FZ_PAGES && i - pg < npages; i++)
			if (fz.pg[i].state == FZ_MAPPED)
				fz.pg[i].state = FZ_LIMBO;
	if (op != UHMM_DMIRROR_WRITE && ptr != fz.bounce && ptr)
		for (unsigned long i = 0; i < FZ_PAGES; i++) {
			uintptr_t a = (uintptr_t)fz_addr(i), b = (uintptr_t)ptr;

			if (fz.pg[i].state == FZ_MAPPED && b < a + FZ_PS &&
			    (b >= a || a - b < npages * FZ_PS))
				fz.pg[i].state = FZ_LIMBO;
		}
	if (k & 0x80) {
		if (r != -EINVAL)
			fz_finding("dmirror cmd with NULL cmd: %d", r);
		return;
	}
	if (op > UHMM_DMIRROR_FLAGS && r != -EINVAL)
		fz_finding("dmirror unknown op %u: %d", op, r);
	if ((addr % FZ_PS || !c.npages) && r != -EINVAL)
		fz_finding("dmirror op %u addr %#llx npages %llu: %d, expected -EINVAL",
			   op, (unsigned long long)addr, (unsigned long long)npages, r);
	switch (r) {
	case 0: case -EINVAL: case -EFAULT: case -EPERM: case -ENOENT:
	case -EBUSY: case -ENOMEM:
	case -ENOSYS:	/* no userfaultfd (valgrind, seccomp) */
		break;
	default:
		fz_finding("dmirror op %u addr %#llx npages %llu: unexpected %d",
			   op, (unsigned long long)addr, (unsigned long long)npages, r);
	}
	/* A WRITE that fails part-way may have written pages before it. */
	if (op == UHMM_DMIRROR_WRITE && region && ptr == fz.bounce)
		fz_write_result(pg, npages, r, seeds);
	if (r == 0 && fits && ptr == fz.bounce &&
	    (op == UHMM_DMIRROR_READ || op == UHMM_DMIRROR_MIGRATE_TO_DEV ||
	     op == UHMM_DMIRROR_EXCLUSIVE))
		for (uint64_t i = 0; i < npages; i++) {
			/* LIMBO and FOREIGN pages are mapped, contents unknown. */
			if (fz.pg[pg + i].state == FZ_LIMBO ||
			    fz.pg[pg + i].state == FZ_FOREIGN)
				continue;
			if (!fz_readable(pg + i))
				fz_finding("dmirror op %u read page %llu, which the process cannot read",
					   op, (unsigned long long)(pg + i));
			fz_check(fz.bounce + i * FZ_PS, pg + i, "dmirror read-back");
		}
	if (r == 0 && fits && op == UHMM_DMIRROR_WRITE)
		for (uint64_t i = 0; i < npages; i++)
			if (fz.pg[pg + i].state != FZ_LIMBO &&
			    fz.pg[pg + i].state != FZ_FOREIGN && !fz_writable(pg + i))
				fz_finding("dmirror WRITE landed on page %llu, which the process cannot write",
					   (unsigned long long)(pg + i));
	if (op == UHMM_DMIRROR_FLAGS && r == 0) {
		c.npages = 2;	/* no FAIL_ALLOC left behind for the next input */
		uhmm_dmirror_cmd(dm, UHMM_DMIRROR_FLAGS, &c);
	}
}

/* munmap (GONE), then sometimes map again at once (zeros). */
static void op_unmap(struct fz_in *in)
{
	unsigned long first = fz_u8(in) % FZ_PAGES, n = 1 + fz_u8(in) % 4;
	uint8_t how = fz_u8(in);
	char *p = fz_addr(first), *q;

	if (first + n > FZ_PAGES)
		n = FZ_PAGES - first;
	if (fz_foreign(first, n))
		return;
	if (how & 1) {
		/* MAP_FIXED over: an UNMAP event and zeros, no hole. */
		q = mmap(p, n * FZ_PS, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		if (q != p)
			fz_finding("mmap MAP_FIXED: %s", strerror(errno));
		for (unsigned long i = first; i < first + n; i++)
			fz.pg[i] = (struct fz_page){ .state = FZ_MAPPED, .prot = PROT_READ | PROT_WRITE };
		return;
	}
	if (munmap(p, n * FZ_PS))
		fz_finding("munmap: %s", strerror(errno));
	for (unsigned long i = first; i < first + n; i++)
		fz.pg[i] = (struct fz_page){ .state = FZ_GONE };
}

static void op_map(struct fz_in *in)
{
	unsigned long first = fz_u8(in) % FZ_PAGES, n = 1 + fz_u8(in) % 4;
	char *p = fz_addr(first), *q;

	if (!fz_all(first, n, FZ_GONE))
		return;
	q = mmap(p, n * FZ_PS, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (q == MAP_FAILED && errno == EEXIST) {
		/* Someone else's mapping (a sanitizer's) took the hole. */
		for (unsigned long i = first; i < first + n; i++)
			fz.pg[i].state = FZ_FOREIGN;
		return;
	}
	if (q != p)
		fz_finding("mmap into the region's hole: %s",
			   q == MAP_FAILED ? strerror(errno) : "elsewhere");
	for (unsigned long i = first; i < first + n; i++)
		fz.pg[i] = (struct fz_page){ .state = FZ_MAPPED, .prot = PROT_READ | PROT_WRITE };
}

static void op_mprotect(struct fz_in *in)
{
	static const int prots[] = { PROT_NONE, PROT_READ, PROT_READ | PROT_WRITE,
				     PROT_READ | PROT_WRITE };
	unsigned long first = fz_u8(in) % FZ_PAGES, n = 1 + fz_u8(in) % 4;
	int prot = prots[fz_u8(in) % 4];

	if (!fz_all(first, n, FZ_MAPPED))
		return;
	if (mprotect(fz_addr(first), n * FZ_PS, prot))
		fz_finding("mprotect (line %d): %s", __LINE__, strerror(errno));
	for (unsigned long i = first; i < first + n; i++)
		fz.pg[i].prot = (uint8_t)prot;
}

/* Move [a, a+n) to [b, b+n) (both in the region, disjoint). */
static void op_mremap(struct fz_in *in)
{
	unsigned long a = fz_u8(in) % FZ_PAGES, b = fz_u8(in) % FZ_PAGES;
	unsigned long n = 1 + fz_u8(in) % 3;
	uint8_t how = fz_u8(in);
	struct fz_page save[4];
	int flags = MREMAP_MAYMOVE | MREMAP_FIXED;
	char *q;

	if (!fz_all(a, n, FZ_MAPPED) || b + n > FZ_PAGES ||
	    (a < b + n && b < a + n))
		return;
	if (fz_foreign(b, n))
		return;
	if (how & 1)
		flags |= MREMAP_DONTUNMAP;
	errno = 0;
	q = mremap(fz_addr(a), n * FZ_PS, n * FZ_PS, flags, fz_addr(b));
	if (fz_trace)
		fprintf(stderr, "fuzz: mremap %lu+%lu -> %lu%s: %s\n", a, n, b,
			flags & MREMAP_DONTUNMAP ? " DONTUNMAP" : "",
			q == fz_addr(b) ? "ok" : strerror(errno));
	if (q != fz_addr(b)) {
		int err = errno;

		/*
		 * Across VMAs (EFAULT), or DONTUNMAP refused. Part of either
		 * range may be gone or changed after the failure (seen:
		 * EFAULT with the source's first page unmapped and a
		 * destination page of zeros: fuzz/findings/
		 * mremap-efault-partial): follow what is mapped now; pages
		 * still mapped are LIMBO, never checked.
		 */
		for (unsigned long i = 0; i < n; i++) {
			unsigned long pp[2] = { a + i, b + i };

			for (int j = 0; j < 2; j++) {
				bool mapped = fz_mapped(pp[j]);
				struct fz_page *m = &fz.pg[pp[j]];

				if (m->state == FZ_FOREIGN)
					continue;
				if (!mapped)
					*m = (struct fz_page){ .state = FZ_GONE };
				else if (m->state == FZ_GONE)
					m->state = FZ_FOREIGN;
				else
					m->state = FZ_LIMBO;
			}
		}
		if (err == EFAULT || err == EINVAL)
			return;
		fz_finding("mremap: %s", strerror(err));
	}
	memcpy(save, &fz.pg[a], n * sizeof(save[0]));
	for (unsigned long i = 0; i < n; i++) {
		fz.pg[a + i] = (struct fz_page){ .state = FZ_GONE };
		if (flags & MREMAP_DONTUNMAP)
			fz.pg[a + i] = (struct fz_page){ .state = FZ_MAPPED, .prot = save[i].prot };
	}
	for (unsigned long i = 0; i < n; i++) {
		fz.pg[b + i] = save[i];
		/* The contents moved: their stamps still name page a + i.
		 * LIMBO pages (a failed mremap before) are never checked. */
		if (save[i].state != FZ_LIMBO && (save[i].seed || save[i].unknown)) {
			char tmp[FZ_PS];
			bool rd = save[i].prot & PROT_READ;

			if (!rd && mprotect(fz_addr(b + i), FZ_PS, PROT_READ))
				fz_finding("mprotect (line %d): %s", __LINE__, strerror(errno));
			memcpy(tmp, fz_addr(b + i), FZ_PS);
			uint32_t seed;

			if (!fz_holds_any(tmp, a + i, &save[i], &seed))
				fz_finding("mremap moved page %lu to %lu: contents lost (word 0 = 0x%016llx)",
					   a + i, b + i,
					   (unsigned long long)*(uint64_t *)tmp);
			/* Restamp for its new index, as a CPU write would. */
			if (!(save[i].prot & PROT_WRITE) &&
			    mprotect(fz_addr(b + i), FZ_PS, PROT_READ | PROT_WRITE))
				fz_finding("mprotect (line %d): %s", __LINE__, strerror(errno));
			fz.pg[b + i].seed = ++fz.next_seed;
			fz.pg[b + i].unknown = false;
			fz.pg[b + i].nalt = 0;
			fz_fill(fz_addr(b + i), b + i, fz.pg[b + i].seed);
			if (mprotect(fz_addr(b + i), FZ_PS, save[i].prot))
				fz_finding("mprotect (line %d): %s", __LINE__, strerror(errno));
		}
	}
}

static void op_madvise(struct fz_in *in)
{
	unsigned long first = fz_u8(in) % FZ_PAGES, n = 1 + fz_u8(in) % 4;
	uint8_t how = fz_u8(in) % 3;
	int advice = how == 0 ? MADV_DONTNEED : how == 1 ? MADV_POPULATE_READ :
		     MADV_POPULATE_WRITE;
	int r;

	if (!fz_all(first, n, FZ_MAPPED))
		return;
	r = madvise(fz_addr(first), n * FZ_PS, advice);
	if (fz_trace)
		fprintf(stderr, "fuzz: madvise %lu+%lu %s: %d\n", first, n,
			how == 0 ? "DONTNEED" : how == 1 ? "POPULATE_READ" :
			"POPULATE_WRITE", r);
	if (advice == MADV_DONTNEED) {
		if (r)
			fz_finding("MADV_DONTNEED: %s", strerror(errno));
		for (unsigned long i = first; i < first + n; i++) {
			fz.pg[i].seed = 0;
			fz.pg[i].unknown = false;
			fz.pg[i].nalt = 0;
		}
	}
}

static void op_fork(void)
{
	pid_t pid = fork(), w;
	int status = 0;

	if (pid < 0)
		return;
	if (pid == 0) {
		for (unsigned long i = 0; i < FZ_PAGES; i++) {
			struct fz_page *m = &fz.pg[i];

			if (!fz_readable(i))
				continue;
			uint32_t seed;

			if (!fz_holds_any(fz_addr(i), i, m, &seed)) {
				char line[128];
				int len = snprintf(line, sizeof(line),
						   "fuzz: FINDING: fork child: page %lu wrong\n", i);

				if (write(2, line, (size_t)len) < 0)
					_exit(3);
				_exit(1);
			}
		}
		_exit(0);
	}
	/* libFuzzer's -timeout timer interrupts the wait (EINTR). */
	do
		w = waitpid(pid, &status, 0);
	while (w < 0 && errno == EINTR);
	if (w != pid)
		fz_finding("waitpid of the fork child: %s", strerror(errno));
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		fz_finding("fork child found inherited memory wrong (status %#x)",
			   status);
}

static void op_revalidate(struct fz_in *in)
{
	unsigned long pg;
	unsigned long start = (unsigned long)fz_pick_addr(in, &pg);
	unsigned long end = start + (1 + fz_u8(in) % FZ_PAGES) * FZ_PS;
	int r = uhmm_range_revalidate(start, end);

	if (r && r != -EINVAL)
		fz_finding("revalidate: %d", r);
	if (!r && (start % FZ_PS || end <= start))
		fz_finding("revalidate accepted [%#lx, %#lx)", start, end);
}

static void op_copy_nofault(struct fz_in *in)
{
	unsigned long pg;
	uint64_t a = fz_pick_addr(in, &pg);
	size_t len = 1 + fz_u8(in) % FZ_PS;
	unsigned long fa = 0;
	int r;

	r = uhmm_copy_nofault(fz.bounce, (const void *)(uintptr_t)a, len, &fa);

	if (r && r != -EFAULT)
		fz_finding("copy_nofault: %d", r);
	if (pg != ULONG_MAX && fz_readable(pg) && r)
		fz_finding("copy_nofault from readable page %lu: %d", pg, r);
	if (r == 0 && pg != ULONG_MAX && len == FZ_PS && fz_readable(pg))
		fz_check(fz.bounce, pg, "copy_nofault");
}

/* ------------------------------------------------------------ one input */

static void fz_setup(void)
{
	static bool once;
	int r;

	if (!once) {
		once = true;
		fz_trace = getenv("UHMM_FUZZ_TRACE") != NULL;
		if (uhmm_init())
			fz_finding("uhmm_init failed");
		fz.bounce = mmap(NULL, FZ_BOUNCE * FZ_PS, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (fz.bounce == MAP_FAILED)
			fz_finding("mmap");
		toy_init_once();
	}
	fz.region = mmap(NULL, (FZ_GUARD_LO + FZ_PAGES + FZ_GUARD_HI) * FZ_PS,
			 PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (fz.region == MAP_FAILED)
		fz_finding("mmap");
	fz.region += FZ_GUARD_LO * FZ_PS;
	if (mprotect(fz.region, FZ_PAGES * FZ_PS, PROT_READ | PROT_WRITE))
		fz_finding("mprotect");
	madvise(fz.region, FZ_PAGES * FZ_PS, MADV_NOHUGEPAGE);
	fz.first_seed = fz.next_seed;
	if (fz_trace)
		fprintf(stderr, "fuzz: input: region %p, seeds from %u\n",
			(void *)fz.region, fz.first_seed + 1);
	for (unsigned long i = 0; i < FZ_PAGES; i++) {
		fz.pg[i] = (struct fz_page){ .state = FZ_MAPPED, .prot = PROT_READ | PROT_WRITE };
		if (i % 3) {
			fz.pg[i].seed = ++fz.next_seed;
			fz_fill(fz_addr(i), i, fz.pg[i].seed);
		}
	}
	for (int d = 0; d < 2; d++) {
		r = uhmm_dmirror_open(d, &fz.dm[d]);
		if (r)
			fz.dm[d] = NULL;
	}
}

static void fz_teardown(void)
{
	for (int i = 0; i < FZ_NOTIFIERS; i++) {
		if (fz.sub[i] && uhmm_interval_notifier_remove(fz.sub[i]))
			fz_finding("notifier remove at teardown");
		fz.sub[i] = NULL;
		atomic_store(&fz.inv[i], 0);
	}
	for (int d = 0; d < 2; d++) {
		if (fz.dm[d] && uhmm_dmirror_close(fz.dm[d]))
			fz_finding("dmirror close of device %d failed", d);
		fz.dm[d] = NULL;
	}
	/*
	 * Toy pages home, one page at a time (VMAs may be split): from our
	 * pages, known or not, and from mappings of others that took a
	 * hole of the region (a migration may have taken their pages too).
	 */
	fz_foreign(0, FZ_PAGES);
	for (unsigned long i = 0; i < FZ_PAGES; i++) {
		if (fz.pg[i].state == FZ_GONE)
			continue;
		if (fz.pg[i].state != FZ_FOREIGN &&
		    mprotect(fz_addr(i), FZ_PS, PROT_READ | PROT_WRITE))
			fz_finding("mprotect (line %d): %s", __LINE__, strerror(errno));
		toy_to_ram((unsigned long)fz_addr(i),
			   (unsigned long)fz_addr(i) + FZ_PS, NULL, 0);
	}
	/* Every page holds what the model says. */
	for (unsigned long i = 0; i < FZ_PAGES; i++)
		if (fz.pg[i].state == FZ_MAPPED)
			fz_check(fz_addr(i), i, "final check");
	/* Again: the teardown's own allocations may have taken a hole. */
	fz_foreign(0, FZ_PAGES);
	for (unsigned long i = 0; i < FZ_PAGES; i++)
		if (fz.pg[i].state != FZ_FOREIGN)
			munmap(fz_addr(i), FZ_PS);
	munmap(fz.region - FZ_GUARD_LO * FZ_PS, FZ_GUARD_LO * FZ_PS);
	munmap(fz.region + FZ_PAGES * FZ_PS, FZ_GUARD_HI * FZ_PS);
	/* Page frees run on uhmm's worker after munmap: wait for them. */
	for (int tries = 0; tries < 2000; tries++) {
		unsigned long nfree;

		pthread_mutex_lock(&toy.lock);
		nfree = toy.nfree;
		pthread_mutex_unlock(&toy.lock);
		if (nfree == FZ_TOY_PAGES)
			return;
		uhmm_range_revalidate((unsigned long)fz.bounce,
				      (unsigned long)fz.bounce + FZ_PS);
		usleep(1000);
	}
	fz_finding("toy device pages leaked: %lu of %lu free after the input",
		   toy.nfree, FZ_TOY_PAGES);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz_in in = { data, size };
	int nops = 0;

	fz_setup();
	while (in.n && nops++ < FZ_MAX_OPS) {
		uint8_t op = fz_u8(&in);

		if (fz_trace) {
			fprintf(stderr, "fuzz: op %2d (%u) pages:", nops, op % 16);
			for (unsigned long i = 0; i < FZ_PAGES; i++)
				fprintf(stderr, " %c%c%s", "-MFL"[fz.pg[i].state],
					"n.rrwwww"[fz.pg[i].prot & 7],
					fz_mapped(i) !=
					(fz.pg[i].state != FZ_GONE) ? "!" : "");
			fprintf(stderr, "\n");
		}
		switch (op % 16) {
		case 0: op_cpu_write(&in); break;
		case 1: op_cpu_read(&in); break;
		case 2: op_notifier_insert(&in); break;
		case 3: op_notifier_remove(&in); break;
		case 4: op_range_fault(&in); break;
		case 5: op_migrate_to_dev(&in); break;
		case 6: op_migrate_to_ram(&in); break;
		case 7: case 8: op_dmirror(&in); break;
		case 9: op_unmap(&in); break;
		case 10: op_map(&in); break;
		case 11: op_mprotect(&in); break;
		case 12: op_mremap(&in); break;
		case 13: op_madvise(&in); break;
		case 14:
			if (fz_u8(&in) % 8 == 0)
				op_fork();
			else
				op_revalidate(&in);
			break;
		default: op_copy_nofault(&in); break;
		}
	}
	fz_teardown();
	return 0;
}
