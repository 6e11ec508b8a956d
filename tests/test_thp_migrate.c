/* SPDX-License-Identifier: MIT */
/*
 * Migration of transparent huge pages through dmirror: the hmm-tests
 * migrate_anon_huge_* scenarios (empty, zero page, MADV_FREE after
 * migration, fault-back, partial munmap, mremap before and after, an
 * allocation failure each way, a range covering part of a THP). A
 * 2 MiB-aligned THP moves whole (SELECT_COMPOUND), a partly covered one is
 * split; the data must be right in every case.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <uhmm/dmirror.h>
#include <uhmm/uhmm.h>

#include "harness.h"
#include "util.h"

#define TWOMEG (2UL << 20)
#define LOCAL_W (UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | UHMM_DMIRROR_PROT_WRITE)

/* A 2 MiB-aligned, MADV_HUGEPAGE range of 2 MiB inside a 4 MiB mapping. */
static char *thp_area(char **base)
{
	char *b = map_anon(2 * TWOMEG, RW);
	char *p = (char *)(((uintptr_t)b + TWOMEG - 1) & ~(TWOMEG - 1));

	ASSERT_EQ(madvise(p, TWOMEG, MADV_HUGEPAGE), 0);
	*base = b;
	return p;
}

static unsigned long npg(void)
{
	return TWOMEG / ps();
}

static void tfill(char *p, unsigned long len, unsigned int seed)
{
	for (unsigned long i = 0; i < len / sizeof(uint32_t); i++)
		((uint32_t *)p)[i] = (uint32_t)i * 2654435761u + seed;
}

static bool tcheck(const char *p, unsigned long len, unsigned int seed)
{
	for (unsigned long i = 0; i < len / sizeof(uint32_t); i++)
		if (((const uint32_t *)p)[i] != (uint32_t)i * 2654435761u + seed)
			return false;
	return true;
}

static unsigned char snap1(struct uhmm_dmirror *dm, void *p)
{
	struct uhmm_dmirror_cmd c;
	unsigned char b = 0xaa;

	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, p, &b, 1, &c), 0);
	return b;
}

static bool thp_backed(struct uhmm_dmirror *dm, void *p)
{
	return snap1(dm, p) & UHMM_DMIRROR_PROT_PMD;
}

static struct uhmm_dmirror *dopen0(void)
{
	struct uhmm_dmirror *dm = NULL;

	require_uffd(true);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	return dm;
}

/* An untouched THP-eligible range migrates (as zeros). */
TEST(thp_empty)
{
	char *base, *p = thp_area(&base), *mirror = map_anon(TWOMEG, RW);
	struct uhmm_dmirror *dm = dopen0();
	struct uhmm_dmirror_cmd c;

	memset(mirror, 0x77, TWOMEG);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, npg(), &c), 0);
	ASSERT_EQ(c.cpages, npg());
	for (unsigned long i = 0; i < TWOMEG; i++)
		ASSERT_EQ(mirror[i], 0);
	/* An empty aligned block becomes a device THP. */
	ASSERT_EQ(snap1(dm, p), LOCAL_W | UHMM_DMIRROR_PROT_PMD);
	ASSERT_EQ(p[TWOMEG - 1], 0);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* The huge zero page (read faults on a THP range) migrates as zeros. */
TEST(thp_zero_page)
{
	char *base, *p = thp_area(&base), *mirror = map_anon(TWOMEG, RW);
	struct uhmm_dmirror *dm = dopen0();
	struct uhmm_dmirror_cmd c;
	volatile char x;

	for (unsigned long i = 0; i < TWOMEG; i += ps())
		x = p[i];
	(void)x;
	memset(mirror, 0x77, TWOMEG);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, npg(), &c), 0);
	ASSERT_EQ(c.cpages, npg());
	for (unsigned long i = 0; i < TWOMEG; i++)
		ASSERT_EQ(mirror[i], 0);
	p[5] = 5;
	ASSERT_EQ(p[5], 5);
	ASSERT_EQ(p[ps() + 5], 0);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* A written THP goes to the device whole (a device THP: PMD in the
 * snapshot) and a CPU touch brings it back whole (a THP again). */
TEST(thp_fault_back_whole)
{
	char *base, *p = thp_area(&base), *mirror = map_anon(TWOMEG, RW);
	struct uhmm_dmirror *dm = dopen0();
	struct uhmm_dmirror_cmd c;

	tfill(p, TWOMEG, 1);
	if (!thp_backed(dm, p))
		SKIP("no THP here (THP disabled, or no huge page free)");
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, npg(), &c), 0);
	ASSERT_EQ(c.cpages, npg());
	ASSERT_TRUE(tcheck(mirror, TWOMEG, 1));
	ASSERT_EQ(snap1(dm, p), LOCAL_W | UHMM_DMIRROR_PROT_PMD);
	ASSERT_EQ(snap1(dm, p + TWOMEG - ps()), LOCAL_W | UHMM_DMIRROR_PROT_PMD);
	/* One byte read brings the whole THP back. */
	ASSERT_EQ(((volatile uint32_t *)p)[1000], (uint32_t)1000 * 2654435761u + 1);
	ASSERT_EQ(page_present(p + TWOMEG - ps()), 1);
	ASSERT_TRUE(thp_backed(dm, p));
	ASSERT_TRUE(tcheck(p, TWOMEG, 1));
	/* And again, by MIGRATE_TO_SYS this time. */
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, npg(), &c), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, npg(), &c), 0);
	ASSERT_EQ(c.cpages, npg());
	ASSERT_TRUE(thp_backed(dm, p));
	ASSERT_TRUE(tcheck(p, TWOMEG, 1));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* A range that covers part of a THP only: the THP is split, the pages
 * of the range move as base pages, the rest stays. */
TEST(thp_partial_range_splits)
{
	char *base, *p = thp_area(&base), *mirror = map_anon(TWOMEG, RW);
	struct uhmm_dmirror *dm = dopen0();
	struct uhmm_dmirror_cmd c;
	unsigned long n = 16;

	tfill(p, TWOMEG, 7);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p + 8 * ps(), mirror, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	ASSERT_EQ(snap1(dm, p + 8 * ps()), LOCAL_W);
	ASSERT_EQ(snap1(dm, p), UHMM_DMIRROR_PROT_WRITE);
	ASSERT_EQ(memcmp(mirror, p + 8 * ps(), n * ps()), 0);
	ASSERT_TRUE(tcheck(p, TWOMEG, 7));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* MADV_FREE of a device-resident THP range: its pages are released. */
TEST(thp_madv_free_after_migration)
{
	char *base, *p = thp_area(&base), *mirror = map_anon(TWOMEG, RW);
	struct uhmm_dmirror *dm = dopen0();
	struct uhmm_dmirror_cmd c;

	tfill(p, TWOMEG, 2);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, npg(), &c), 0);
	ASSERT_EQ(madvise(p, TWOMEG, MADV_FREE), 0);
	/* Gone from the device; a touch sees a fresh (zero) page. */
	ASSERT_EQ(snap1(dm, p), UHMM_DMIRROR_PROT_NONE);
	ASSERT_EQ(p[0], 0);
	tfill(p, TWOMEG, 3);
	ASSERT_TRUE(tcheck(p, TWOMEG, 3));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* munmap of half a device-resident THP range; the rest comes back. */
TEST(thp_partial_munmap)
{
	char *base, *p = thp_area(&base), *mirror = map_anon(TWOMEG, RW);
	struct uhmm_dmirror *dm = dopen0();
	struct uhmm_dmirror_cmd c;

	tfill(p, TWOMEG, 4);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, npg(), &c), 0);
	ASSERT_EQ(munmap(p + TWOMEG / 2, TWOMEG / 2), 0);
	ASSERT_EQ(memcmp(p, mirror, TWOMEG / 2), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p + TWOMEG / 2, mirror, 1, &c),
		  -EFAULT);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* mremap of a THP range before the migration, and of the device-resident
 * range after it: the data follow the mapping. */
TEST(thp_mremap_before_and_after)
{
	char *base, *p = thp_area(&base), *mirror = map_anon(TWOMEG, RW);
	char *dst = map_anon(4 * TWOMEG, RW);
	char *t1 = (char *)(((uintptr_t)dst + TWOMEG - 1) & ~(TWOMEG - 1));
	char *t2 = t1 + TWOMEG;
	struct uhmm_dmirror *dm = dopen0();
	struct uhmm_dmirror_cmd c;

	tfill(p, TWOMEG, 5);
	ASSERT_EQ(mremap(p, TWOMEG, TWOMEG, MREMAP_MAYMOVE | MREMAP_FIXED, t1),
		  (void *)t1);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, t1, mirror, npg(), &c), 0);
	ASSERT_EQ(c.cpages, npg());
	ASSERT_TRUE(tcheck(mirror, TWOMEG, 5));
	ASSERT_EQ(mremap(t1, TWOMEG, TWOMEG, MREMAP_MAYMOVE | MREMAP_FIXED, t2),
		  (void *)t2);
	/* Still aligned: still a device THP, and it comes back whole. */
	ASSERT_EQ(snap1(dm, t2), LOCAL_W | UHMM_DMIRROR_PROT_PMD);
	ASSERT_TRUE(tcheck(t2, TWOMEG, 5));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* FLAG_FAIL_ALLOC: the THP allocation fails once, each way, and the
 * migration falls back to base pages (hmm-tests migrate_anon_huge_err). */
TEST(thp_fail_alloc_both_ways)
{
	char *base, *p = thp_area(&base), *mirror = map_anon(TWOMEG, RW);
	struct uhmm_dmirror *dm = dopen0();
	struct uhmm_dmirror_cmd c;

	tfill(p, TWOMEG, 6);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_FLAGS, p, NULL,
		       UHMM_DMIRROR_FLAG_FAIL_ALLOC, &c), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, npg(), &c), 0);
	ASSERT_EQ(c.cpages, npg());
	ASSERT_TRUE(tcheck(mirror, TWOMEG, 6));
	/* Base device pages: no PMD. */
	ASSERT_EQ(snap1(dm, p), LOCAL_W);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, npg(), &c), 0);
	ASSERT_TRUE(tcheck(p, TWOMEG, 6));
	/* Whole to the device, then the system THP allocation fails. A
	 * fresh THP: the range above is registered for missing pages now,
	 * and uhmm fills holes there with base pages (semantics M11). */
	p = thp_area(&base);
	tfill(p, TWOMEG, 8);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, npg(), &c), 0);
	ASSERT_EQ(snap1(dm, p), LOCAL_W | UHMM_DMIRROR_PROT_PMD);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_FLAGS, p, NULL,
		       UHMM_DMIRROR_FLAG_FAIL_ALLOC, &c), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, npg(), &c), 0);
	ASSERT_EQ(c.cpages, npg());
	ASSERT_EQ(snap1(dm, p) & ~UHMM_DMIRROR_PROT_PMD, UHMM_DMIRROR_PROT_WRITE);
	ASSERT_TRUE(tcheck(p, TWOMEG, 8));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/*
 * hmm-tests migrate_anon_huge_err, coherent variant (device 2), the
 * kernel's set-up exactly: the THP allocation fails once, the migration
 * falls back to base pages and moves everything; then a THP goes to the
 * device and MIGRATE_TO_SYS with FAIL_ALLOC brings it back.
 */
TEST(coherent_thp_fail_alloc_both_ways)
{
	unsigned long size = TWOMEG, npages = npg(), i;
	char *old = map_anon(2 * size, RW), *mirror = map_anon(2 * size, RW);
	struct uhmm_dmirror *dm = NULL;
	struct uhmm_dmirror_cmd c;
	char *map;
	int *w;

	require_uffd(true);
	ASSERT_EQ(uhmm_dmirror_open(2, &dm), 0);
	memset(mirror, 0xff, 2 * size);
	map = (char *)(((uintptr_t)old + size - 1) & ~(size - 1));
	ASSERT_EQ(madvise(map, size, MADV_HUGEPAGE), 0);
	w = (int *)map;
	for (i = 0; i < size / sizeof(*w); i++)
		w[i] = (int)i;
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_FLAGS, map, NULL,
		       UHMM_DMIRROR_FLAG_FAIL_ALLOC, &c), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, map, mirror, npages, &c), 0);
	ASSERT_EQ(c.cpages, npages);
	for (i = 0, w = (int *)mirror; i < size / sizeof(*w); i++)
		ASSERT_EQ(w[i], (int)i);
	ASSERT_EQ(snap1(dm, map), UHMM_DMIRROR_PROT_DEV_COHERENT_LOCAL |
		  UHMM_DMIRROR_PROT_WRITE);
	w = (int *)map;
	ASSERT_EQ(w[2048], 2048);

	ASSERT_EQ(munmap(old, 2 * size), 0);
	old = map_anon(2 * size, RW);
	map = (char *)(((uintptr_t)old + size - 1) & ~(size - 1));
	ASSERT_EQ(madvise(map, size, MADV_HUGEPAGE), 0);
	w = (int *)map;
	for (i = 0; i < size / sizeof(*w); i++)
		w[i] = (int)i;
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, map, mirror, npages, &c), 0);
	ASSERT_EQ(c.cpages, npages);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_FLAGS, map, NULL,
		       UHMM_DMIRROR_FLAG_FAIL_ALLOC, &c), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_SYS, map, NULL, npages, &c), 0);
	ASSERT_EQ(w[2048], 2048);
	for (i = 0; i < size / sizeof(*w); i++)
		ASSERT_EQ(w[i], (int)i);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(old, 2 * size);
}

/*
 * Coherent device, 2 MiB-aligned THP-eligible blocks: empty, the huge
 * zero page (read in a read-write mapping), a THP. The collect reports
 * each as one COMPOUND entry (SELECT_COMPOUND); coherent memory takes it
 * as 512 base pages, mapped at the block, and MIGRATE_TO_SYS brings them
 * back with the CPU's writes.
 */
TEST(coherent_thp_blocks_as_base_pages)
{
	struct uhmm_dmirror *dm = NULL;
	unsigned char *m = malloc(npg());

	require_uffd(true);
	ASSERT_NOT_NULL(m);
	ASSERT_EQ(uhmm_dmirror_open(2, &dm), 0);
	for (int kind = 0; kind < 3; kind++) {
		char *base, *p = thp_area(&base), *mirror = map_anon(TWOMEG, RW);
		struct uhmm_dmirror_cmd c;
		char old;

		if (kind == 1)
			ASSERT_EQ(*(volatile char *)p, 0);
		if (kind == 2)
			tfill(p, TWOMEG, 12);
		memset(mirror, 0x55, TWOMEG);
		ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, npg(), &c), 0);
		ASSERT_EQ(c.cpages, npg());
		if (kind == 2) {
			ASSERT_TRUE(tcheck(mirror, TWOMEG, 12));
		} else {
			for (unsigned long i = 0; i < TWOMEG; i++)
				ASSERT_EQ(mirror[i], 0);
		}
		ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, p, m, npg(), &c), 0);
		for (unsigned long i = 0; i < npg(); i++)
			ASSERT_EQ(m[i], UHMM_DMIRROR_PROT_DEV_COHERENT_LOCAL |
				  UHMM_DMIRROR_PROT_WRITE);
		old = p[5];
		p[5] = 9;	/* the CPU writes the device's frame in place */
		ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, npg(), &c), 0);
		ASSERT_EQ(c.cpages, npg());
		ASSERT_EQ(p[5], 9);
		if (kind == 2) {
			p[5] = old;
			ASSERT_TRUE(tcheck(p, TWOMEG, 12));
		} else {
			ASSERT_EQ(p[TWOMEG - 1], 0);
		}
		munmap(base, 2 * TWOMEG);
		munmap(mirror, TWOMEG);
	}
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	free(m);
}

struct toucher {
	char *p;
	unsigned int seed;
	atomic_bool *stop;
	atomic_ulong bad;
};

static void *touch_thp(void *arg)
{
	struct toucher *t = arg;
	unsigned int r = t->seed;

	while (!atomic_load(t->stop)) {
		unsigned long w;

		r = r * 1103515245u + 12345u;
		w = (r >> 4) % (TWOMEG / sizeof(uint32_t));
		uint32_t v = ((volatile uint32_t *)t->p)[w];

		if (v != (uint32_t)w * 2654435761u + 9) {
			if (atomic_fetch_add(&t->bad, 1) == 0)
				fprintf(stderr, "# word %lu: 0x%x, want 0x%x\n", w, v,
					(uint32_t)w * 2654435761u + 9);
		}
	}
	return NULL;
}

/*
 * Four threads read 2 MiB while it goes to the device and comes back,
 * over and over: every read sees the right data. Their fault-backs and
 * the migrations overlap (each may take part of the pages the other
 * wants): none may touch the other's pages.
 */
static void readers_during_migrations(bool thp)
{
	char *base, *p = thp_area(&base), *mirror = map_anon(TWOMEG, RW);
	struct uhmm_dmirror *dm = dopen0();
	struct uhmm_dmirror_cmd c;
	atomic_bool stop = false;
	struct toucher t[4];
	pthread_t th[4];
	int rounds = UNDER_ASAN ? 20 : 100;

	if (!thp)
		ASSERT_EQ(madvise(p, TWOMEG, MADV_NOHUGEPAGE), 0);
	tfill(p, TWOMEG, 9);
	for (int i = 0; i < 4; i++) {
		t[i] = (struct toucher){ .p = p, .seed = 77u * (unsigned)i + 1, .stop = &stop };
		ASSERT_EQ(pthread_create(&th[i], NULL, touch_thp, &t[i]), 0);
	}
	for (int i = 0; i < rounds; i++) {
		int r = dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, npg(), &c);

		/* A reader can take pages back before the read-back. */
		ASSERT_TRUE(r == 0 || r == -ENOENT);
		ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, npg(), &c), 0);
	}
	atomic_store(&stop, true);
	for (int i = 0; i < 4; i++) {
		ASSERT_EQ(pthread_join(th[i], NULL), 0);
		ASSERT_EQ(atomic_load(&t[i].bad), 0UL);
	}
	ASSERT_TRUE(tcheck(p, TWOMEG, 9));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

TEST(thp_readers_during_migrations)
{
	readers_during_migrations(true);
}

TEST(base_pages_readers_during_migrations)
{
	readers_during_migrations(false);
}
