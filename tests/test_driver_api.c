/* SPDX-License-Identifier: MIT */
/*
 * What a driver ported from the kernel relies on (issue 14): a
 * migrate_to_ram that declines for a while, the order range_fault reports
 * for a device THP once its mapping changed, the VMA lookup, the
 * notifier accessors. A minimal driver of its own (the "toy") for the
 * fault-back cases; dmirror for the THP ones.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <unistd.h>

#include <uhmm/migrate.h>
#include "harness.h"
#include "util.h"

#define DEV_PAGES 256
#include "toy.h"

/* A toy device: pages of a pagemap, backed by a buffer of its own. */
struct toy {
	TOY_FIELDS;
	atomic_int to_ram_calls;
	atomic_long decline_until_ms;	/* migrate_to_ram returns 0 until */
	int fault_lookup;		/* uhmm_vma_lookup() in migrate_to_ram */
	struct uhmm_vma fault_vma;	/* and what it found */
	struct uhmm_fault fault_seen;	/* the first call's argument */
	pid_t fault_runs_on;		/* and the thread it ran on */
	/* Set after the four above: the access woken through the kernel
	 * is no happens-before edge ThreadSanitizer can see. */
	atomic_int fault_recorded;
};

static struct toy toy;

#include "toy.h"

static void toy_page_free(struct uhmm_page *p)
{
	toy_give_back(p);
}

/* Device -> system for the faulting page. */
static int toy_to_ram(unsigned long addr, struct uhmm_page *fault_page)
{
	uint64_t src = 0, dst = 0;
	struct uhmm_migrate m = {
		.start = addr, .end = addr + ps(), .src = &src, .dst = &dst,
		.pgmap_owner = &toy,
		.flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE,
		.fault_page = fault_page,
	};
	int r = uhmm_migrate_setup(&m);

	if (r)
		return r;
	if ((src & UHMM_MIGRATE_PFN_MIGRATE) && uhmm_migrate_pfn_to_page(src) &&
	    uhmm_migrate_alloc_system(&dst) == 0)
		memcpy(uhmm_migrate_pfn_to_addr(dst),
		       toy_mem(uhmm_migrate_pfn_to_page(src)), ps());
	uhmm_migrate_pages(&m);
	uhmm_migrate_finalize(&m);
	return 0;
}

/*
 * Declines (returns 0 without migrating) until decline_until_ms, as xe's
 * timeslice or one of amdkfd's early returns does; then migrates.
 */
static int toy_migrate_to_ram(struct uhmm_fault *vmf)
{
	if (atomic_fetch_add(&toy.to_ram_calls, 1) == 0) {
		toy.fault_lookup = uhmm_vma_lookup(vmf->address, &toy.fault_vma);
		toy.fault_seen = *vmf;
		toy.fault_runs_on = gettid();
		atomic_store_explicit(&toy.fault_recorded, 1, memory_order_release);
	}
	if (now_ms() < atomic_load(&toy.decline_until_ms))
		return 0;
	return toy_to_ram(vmf->address, vmf->page);
}

static const struct uhmm_pagemap_ops toy_ops = {
	.page_free = toy_page_free,
	.migrate_to_ram = toy_migrate_to_ram,
};

static void toy_init(void)
{
	toy_setup(&toy_ops);
}

static bool resident(const char *p)
{
	unsigned char v = 0;

	mincore((void *)p, ps(), &v);
	return v & 1;
}

/* ------------------------------------------- a migrate_to_ram that declines */

struct access {
	volatile uint64_t *addr;
	bool write;
	uint64_t value;		/* read, or written */
	atomic_bool done;
};

static void *access_main(void *arg)
{
	struct access *a = arg;

	if (a->write)
		*a->addr = a->value;
	else
		a->value = *a->addr;
	atomic_store(&a->done, true);
	return NULL;
}

/* Waits up to @ms for the access; true if it completed. */
static bool access_wait(struct access *a, long ms)
{
	long deadline = now_ms() + ms;

	while (!atomic_load(&a->done) && now_ms() < deadline)
		usleep(1000);
	return atomic_load(&a->done);
}

/*
 * The kernel retries the access after a migrate_to_ram that returned 0
 * without migrating (do_swap_page returns, the access faults again) for
 * as long as the driver declines. uhmm called it again in a tight loop,
 * up to 1000 times, and then left the faulting thread asleep for good.
 */
static void decline_then_migrate(bool write, long decline_ms)
{
	char *p = map_anon(4 * ps(), RW);
	struct access a = { .write = write };
	pthread_t t;
	int calls;

	toy_init();
	ASSERT_NOT_NULL(p);
	for (int i = 0; i < 4; i++)
		((uint64_t *)(p + i * ps()))[1] = 0x5eed0000u + (uint64_t)i;
	ASSERT_EQ(toy_to_dev(p, 4), 4);
	ASSERT_FALSE(resident(p + ps()));

	a.addr = (volatile uint64_t *)(p + ps()) + 1;
	a.value = write ? 0xfeedfaceull : 0;
	atomic_store(&toy.decline_until_ms, now_ms() + decline_ms);
	ASSERT_EQ(pthread_create(&t, NULL, access_main, &a), 0);
	/* Done once the driver agrees, well within a few seconds. */
	if (!access_wait(&a, decline_ms + 5000)) {
		calls = atomic_load(&toy.to_ram_calls);
		TH_LOG("access not completed after %ld ms; migrate_to_ram called %d times",
		       decline_ms + 5000, calls);
		ASSERT_TRUE(atomic_load(&a.done));
	}
	pthread_join(t, NULL);
	calls = atomic_load(&toy.to_ram_calls);
	TH_LOG("migrate_to_ram called %d times over a %ld ms decline", calls,
	       decline_ms);
	/* Backed off: a few calls, not a tight loop. */
	ASSERT_GE(calls, 2);
	ASSERT_LT(calls, 50);
	if (write) {
		ASSERT_EQ(((uint64_t *)(p + ps()))[1], 0xfeedfaceull);
	} else {
		ASSERT_EQ(a.value, 0x5eed0001ull);
	}
	ASSERT_TRUE(resident(p + ps()));
	/* The other pages are still on the device, with their data. */
	ASSERT_FALSE(resident(p));
	for (int i = 0; i < 4; i++) {
		if (i == 1)
			continue;
		ASSERT_EQ(((uint64_t *)(p + i * ps()))[1], 0x5eed0000u + (uint64_t)i);
	}
	munmap(p, 4 * ps());
}

TEST_TIMEOUT(migrate_to_ram_declines_then_read_completes, 20)
{
	decline_then_migrate(false, 300);
}

TEST_TIMEOUT(migrate_to_ram_declines_then_write_completes, 20)
{
	decline_then_migrate(true, 300);
}

/* A short decline costs little: the first retries come within ms. */
TEST_TIMEOUT(migrate_to_ram_declines_briefly_completes_soon, 20)
{
	char *p = map_anon(ps(), RW);
	struct access a = { 0 };
	pthread_t t;
	long t0;

	toy_init();
	ASSERT_NOT_NULL(p);
	((uint64_t *)p)[0] = 42;
	ASSERT_EQ(toy_to_dev(p, 1), 1);
	a.addr = (volatile uint64_t *)p;
	t0 = now_ms();
	atomic_store(&toy.decline_until_ms, t0 + 2);
	ASSERT_EQ(pthread_create(&t, NULL, access_main, &a), 0);
	ASSERT_TRUE(access_wait(&a, 5000));
	pthread_join(t, NULL);
	TH_LOG("completed after %ld ms, %d calls", now_ms() - t0,
	       atomic_load(&toy.to_ram_calls));
	ASSERT_EQ(a.value, 42);
	ASSERT_LT(now_ms() - t0, 1000);
}

/*
 * Pages [p, p + n) on the toy device (the first word 7), a driver that
 * declines for an hour, and a thread reading p, asked at least twice.
 */
static void start_declined_access(char *p, long n, struct access *a,
				  pthread_t *t)
{
	toy_init();
	ASSERT_NOT_NULL(p);
	((uint64_t *)p)[0] = 7;
	ASSERT_EQ(toy_to_dev(p, n), n);
	a->addr = (volatile uint64_t *)p;
	atomic_store(&toy.decline_until_ms, now_ms() + 3600 * 1000L);
	ASSERT_EQ(pthread_create(t, NULL, access_main, a), 0);
	while (atomic_load(&toy.to_ram_calls) < 2)
		usleep(1000);
}

/*
 * munmap while the driver declines: the access cannot complete (the
 * thread would read a fresh page, but it is not the one that touches it
 * here), and the reader that keeps asking must notice the page is gone
 * rather than keep calling migrate_to_ram for a page that no longer is.
 */
TEST_TIMEOUT(migrate_to_ram_declining_page_unmapped_stops_calls, 20)
{
	char *p = map_anon(2 * ps(), RW);
	struct access a = { 0 };
	pthread_t t;
	int calls;

	start_declined_access(p, 2, &a, &t);
	/* MADV_DONTNEED: the page is dropped; the access reads zeros. */
	ASSERT_EQ(madvise(p, ps(), MADV_DONTNEED), 0);
	ASSERT_TRUE(access_wait(&a, 5000));
	pthread_join(t, NULL);
	ASSERT_EQ(a.value, 0);
	calls = atomic_load(&toy.to_ram_calls);
	usleep(200 * 1000);
	ASSERT_EQ(atomic_load(&toy.to_ram_calls), calls);
	munmap(p, 2 * ps());
}

/* A driver that never agrees does not keep uhmm_shutdown() waiting. */
TEST_TIMEOUT(migrate_to_ram_declining_forever_shutdown_returns, 20)
{
	char *p = map_anon(ps(), RW);
	struct access a = { 0 };
	pthread_t t;
	long t0;

	start_declined_access(p, 1, &a, &t);
	t0 = now_ms();
	ASSERT_EQ(uhmm_shutdown(), 0);
	ASSERT_LT(now_ms() - t0, 2000);
	/* The access completes once the runtime is gone (its data went
	 * with the device page: what is read is not checked). */
	ASSERT_TRUE(access_wait(&a, 5000));
	pthread_join(t, NULL);
}

/* ------------------------------------------- the order of a device THP */

#define TWOMEG (2UL << 20)
#define LOCAL_R UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL
#define LOCAL_W (UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | UHMM_DMIRROR_PROT_WRITE)

static unsigned long npg(void)
{
	return TWOMEG / ps();
}

/*
 * A device THP at a 2 MiB-aligned block in the middle of a 6 MiB
 * mapping (so that the block has neighbours on both sides): an empty,
 * THP-eligible block migrates whole (SELECT_COMPOUND), without needing a
 * huge page from the kernel. *dmp: the open dmirror device.
 */
static char *device_thp(struct uhmm_dmirror **dmp)
{
	char *b, *p, *mirror;
	struct uhmm_dmirror_cmd c;

	require_uffd(true);
	b = map_anon(3 * TWOMEG, RW);
	ASSERT_NOT_NULL(b);
	p = (char *)(((uintptr_t)b + TWOMEG - 1) & ~(TWOMEG - 1));
	ASSERT_EQ(madvise(p, TWOMEG, MADV_HUGEPAGE), 0);
	mirror = map_anon(TWOMEG, RW);
	ASSERT_NOT_NULL(mirror);
	ASSERT_EQ(uhmm_dmirror_open(0, dmp), 0);
	ASSERT_EQ(dcmd(*dmp, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, npg(), &c), 0);
	ASSERT_EQ(c.cpages, npg());
	munmap(mirror, TWOMEG);
	return p;
}

/* SNAPSHOT of @n pages at @p: every byte must be @want. */
static void snap_all(struct uhmm_dmirror *dm, char *p, unsigned long n,
		     unsigned char want)
{
	unsigned char *b = calloc(n, 1);
	struct uhmm_dmirror_cmd c;

	ASSERT_NOT_NULL(b);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, p, b, n, &c), 0);
	for (unsigned long i = 0; i < n; i++) {
		if (b[i] != want)
			TH_LOG("page %lu of %lu: 0x%02x, want 0x%02x", i, n,
			       b[i], want);
		ASSERT_EQ(b[i], want);
	}
	free(b);
}

/* Unchanged, the whole block reports PMD order (the control). */
TEST(device_thp_order_whole_block)
{
	struct uhmm_dmirror *dm;
	char *p = device_thp(&dm);

	snap_all(dm, p, npg(), LOCAL_W | UHMM_DMIRROR_PROT_PMD);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* munmap of half the block: the kernel splits the PMD; the rest are base
 * pages. */
TEST(device_thp_order_after_partial_munmap)
{
	struct uhmm_dmirror *dm;
	char *p = device_thp(&dm);

	ASSERT_EQ(munmap(p + TWOMEG / 2, TWOMEG / 2), 0);
	snap_all(dm, p, npg() / 2, LOCAL_W);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* MADV_DONTNEED of one page inside the block: the others are base pages. */
TEST(device_thp_order_after_dontneed_of_one_page)
{
	struct uhmm_dmirror *dm;
	char *p = device_thp(&dm);

	ASSERT_EQ(madvise(p + 7 * ps(), ps(), MADV_DONTNEED), 0);
	snap_all(dm, p, 7, LOCAL_W);
	snap_all(dm, p + 8 * ps(), npg() - 8, LOCAL_W);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* mprotect of part of the block splits the VMA and the PMD: base pages
 * on both sides, each with its own protection. */
TEST(device_thp_order_after_partial_mprotect)
{
	struct uhmm_dmirror *dm;
	char *p = device_thp(&dm);

	ASSERT_EQ(mprotect(p, TWOMEG / 4, PROT_READ), 0);
	snap_all(dm, p, npg() / 4, LOCAL_R | UHMM_DMIRROR_PROT_READ);
	snap_all(dm, p + TWOMEG / 4, npg() - npg() / 4, LOCAL_W);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* mprotect of the whole block keeps the PMD (change_huge_pmd): still a
 * device THP, read-only (the control). */
TEST(device_thp_order_after_whole_mprotect)
{
	struct uhmm_dmirror *dm;
	char *p = device_thp(&dm);

	ASSERT_EQ(mprotect(p, TWOMEG, PROT_READ), 0);
	/* The block is a VMA of its own now, still aligned and whole. */
	snap_all(dm, p, npg(), LOCAL_R | UHMM_DMIRROR_PROT_READ |
		 UHMM_DMIRROR_PROT_PMD);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* mremap of the block to an address that is not 2 MiB-aligned: the
 * kernel splits the PMD on the move; base pages at the new address. */
TEST(device_thp_order_after_unaligned_mremap)
{
	struct uhmm_dmirror *dm;
	char *p = device_thp(&dm);
	char *dst = map_anon(3 * TWOMEG, RW);
	char *t = (char *)(((uintptr_t)dst + TWOMEG - 1) & ~(TWOMEG - 1)) + ps();

	ASSERT_NOT_NULL(dst);
	ASSERT_EQ(mremap(p, TWOMEG, TWOMEG, MREMAP_MAYMOVE | MREMAP_FIXED, t),
		  (void *)t);
	snap_all(dm, t, npg(), LOCAL_W);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* mremap of the block to another aligned address keeps the PMD (the
 * control); moving half of it away splits it. */
TEST(device_thp_order_after_aligned_and_half_mremap)
{
	struct uhmm_dmirror *dm;
	char *p = device_thp(&dm);
	char *dst = map_anon(4 * TWOMEG, RW);
	char *t = (char *)(((uintptr_t)dst + TWOMEG - 1) & ~(TWOMEG - 1));

	ASSERT_NOT_NULL(dst);
	ASSERT_EQ(mremap(p, TWOMEG, TWOMEG, MREMAP_MAYMOVE | MREMAP_FIXED, t),
		  (void *)t);
	snap_all(dm, t, npg(), LOCAL_W | UHMM_DMIRROR_PROT_PMD);
	/* The second half goes to the next aligned block, at its start. */
	ASSERT_EQ(mremap(t + TWOMEG / 2, TWOMEG / 2, TWOMEG / 2,
			 MREMAP_MAYMOVE | MREMAP_FIXED, t + TWOMEG),
		  (void *)(t + TWOMEG));
	snap_all(dm, t, npg() / 2, LOCAL_W);
	snap_all(dm, t + TWOMEG, npg() / 2, LOCAL_W);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/*
 * A block split, then restored exactly (moved to an unaligned address and
 * back to an aligned one): the kernel's PTEs stay split (base pages);
 * uhmm sees the THP's pages whole and in order again and reports PMD
 * order (docs/semantics.md M18).
 */
TEST(device_thp_order_split_then_restored_reports_pmd_again)
{
	struct uhmm_dmirror *dm;
	char *p = device_thp(&dm);
	char *dst = map_anon(4 * TWOMEG, RW);
	char *t = (char *)(((uintptr_t)dst + TWOMEG - 1) & ~(TWOMEG - 1));

	ASSERT_NOT_NULL(dst);
	ASSERT_EQ(mremap(p, TWOMEG, TWOMEG, MREMAP_MAYMOVE | MREMAP_FIXED,
			 t + ps()), (void *)(t + ps()));
	snap_all(dm, t + ps(), npg(), LOCAL_W);
	ASSERT_EQ(mremap(t + ps(), TWOMEG, TWOMEG, MREMAP_MAYMOVE | MREMAP_FIXED,
			 t + 2 * TWOMEG), (void *)(t + 2 * TWOMEG));
	snap_all(dm, t + 2 * TWOMEG, npg(), LOCAL_W | UHMM_DMIRROR_PROT_PMD);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* ------------------------------------------------------- the VMA lookup */

#define VMA_RO_ANON (UHMM_VMA_READ | UHMM_VMA_ANON)
#define VMA_RW_ANON (UHMM_VMA_READ | UHMM_VMA_WRITE | UHMM_VMA_ANON)

/* Four pages, the middle two read-only: a VMA of its own there. */
static char *three_vmas(void)
{
	char *p = map_anon(4 * ps(), RW);

	ASSERT_NOT_NULL(p);
	ASSERT_EQ(mprotect(p + ps(), 2 * ps(), PROT_READ), 0);
	return p;
}

static bool zeroed(const struct uhmm_vma *v)
{
	static const struct uhmm_vma z;

	return !memcmp(v, &z, sizeof(z));
}

TEST(vma_lookup_anonymous)
{
	char *p = three_vmas();
	struct uhmm_vma v;

	/* Any address inside, its first and last byte included. */
	for (unsigned long off = ps(); off < 3 * ps(); off += ps() - 1) {
		memset(&v, 0xa5, sizeof(v));
		ASSERT_EQ(uhmm_vma_lookup((unsigned long)p + off, &v), 0);
		ASSERT_EQ(v.start, (unsigned long)p + ps());
		ASSERT_EQ(v.end, (unsigned long)p + 3 * ps());
		ASSERT_EQ(v.flags, VMA_RO_ANON);
		ASSERT_EQ(v.page_size, ps());
		ASSERT_EQ(v.reserved32, 0);
		for (int i = 0; i < 4; i++)
			ASSERT_EQ(v.reserved[i], 0);
	}
	/* The neighbours: writable. */
	ASSERT_EQ(uhmm_vma_lookup((unsigned long)p, &v), 0);
	ASSERT_EQ(v.end, (unsigned long)p + ps());
	ASSERT_EQ(v.flags & VMA_RW_ANON, VMA_RW_ANON);
	ASSERT_EQ(uhmm_vma_lookup((unsigned long)p + 3 * ps(), &v), 0);
	ASSERT_EQ(v.start, (unsigned long)p + 3 * ps());
	/* A snapshot: after munmap, nothing there. */
	ASSERT_EQ(munmap(p + ps(), 2 * ps()), 0);
	memset(&v, 0xa5, sizeof(v));
	ASSERT_EQ(uhmm_vma_lookup((unsigned long)p + ps(), &v), -ENOENT);
	ASSERT_TRUE(zeroed(&v));
	munmap(p, 4 * ps());
}

TEST(vma_lookup_hole_and_bad_args)
{
	struct uhmm_vma v;
	char *hole;

	/* The runtime first: its own mappings must not land in the hole. */
	ASSERT_EQ(uhmm_init(), 0);
	hole = unmapped_page();
	ASSERT_NOT_NULL(hole);
	ASSERT_EQ(uhmm_vma_lookup((unsigned long)hole, &v), -ENOENT);
	ASSERT_EQ(uhmm_vma_lookup((unsigned long)hole, NULL), -EINVAL);
	ASSERT_EQ(uhmm_vma_lookup(~0UL, &v), -ENOENT);
	ASSERT_EQ(uhmm_find_vma_intersection((unsigned long)hole,
					     (unsigned long)hole + ps(), &v), -ENOENT);
	ASSERT_EQ(uhmm_find_vma_intersection(1, 1, &v), -EINVAL);
	ASSERT_EQ(uhmm_find_vma_intersection(2, 1, &v), -EINVAL);
	ASSERT_EQ(uhmm_find_vma_intersection(1, 2, NULL), -EINVAL);
}

TEST(find_vma_intersection_walks_a_range)
{
	char *p = three_vmas();
	struct uhmm_vma v;
	unsigned long a = (unsigned long)p, end = a + 4 * ps();
	unsigned int want[3] = { VMA_RW_ANON, VMA_RO_ANON, VMA_RW_ANON };
	int n = 0;

	/* A hole before: the first VMA in the range is found. */
	ASSERT_EQ(munmap(p, ps()), 0);
	ASSERT_EQ(uhmm_find_vma_intersection(a, a + ps(), &v), -ENOENT);
	ASSERT_EQ(uhmm_find_vma_intersection(a, a + ps() + 1, &v), 0);
	ASSERT_EQ(v.start, a + ps());
	/* Walk the range's VMAs, each from the last one's end. */
	for (unsigned long at = a; uhmm_find_vma_intersection(at, end, &v) == 0;
	     at = v.end) {
		ASSERT_LT(n, 2);
		ASSERT_EQ(v.flags & VMA_RW_ANON, want[n + 1]);
		n++;
		if (v.end >= end)
			break;
	}
	ASSERT_EQ(n, 2);
	munmap(p + ps(), 3 * ps());
}

TEST(vma_lookup_shared_file_stack_vdso)
{
	struct uhmm_vma v;
	int fd = make_tmp_file(2 * ps()), local = 0;
	char *sh = mmap(NULL, ps(), RW, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	char *f, *fs;
	unsigned long vdso = getauxval(AT_SYSINFO_EHDR);

	ASSERT_NE(sh, MAP_FAILED);
	ASSERT_GE(fd, 0);
	f = mmap(NULL, 2 * ps(), PROT_READ, MAP_PRIVATE, fd, 0);
	fs = mmap(NULL, 2 * ps(), RW, MAP_SHARED, fd, 0);
	ASSERT_NE(f, MAP_FAILED);
	ASSERT_NE(fs, MAP_FAILED);

	/* Shared anonymous memory is shmem: not anonymous. */
	ASSERT_EQ(uhmm_vma_lookup((unsigned long)sh, &v), 0);
	ASSERT_EQ(v.flags, UHMM_VMA_READ | UHMM_VMA_WRITE | UHMM_VMA_SHARED);
	ASSERT_EQ(uhmm_vma_lookup((unsigned long)f + ps(), &v), 0);
	ASSERT_EQ(v.start, (unsigned long)f);
	ASSERT_EQ(v.end, (unsigned long)f + 2 * ps());
	ASSERT_EQ(v.flags, UHMM_VMA_READ);
	ASSERT_EQ(uhmm_vma_lookup((unsigned long)fs, &v), 0);
	ASSERT_EQ(v.flags, UHMM_VMA_READ | UHMM_VMA_WRITE | UHMM_VMA_SHARED);
	/* The stack and the heap are anonymous; code is executable. */
	ASSERT_EQ(uhmm_vma_lookup((unsigned long)&local, &v), 0);
	ASSERT_EQ(v.flags & VMA_RW_ANON, VMA_RW_ANON);
	ASSERT_EQ(uhmm_vma_lookup((unsigned long)(uintptr_t)&uhmm_vma_lookup, &v), 0);
	ASSERT_TRUE(v.flags & UHMM_VMA_EXEC);
	ASSERT_FALSE(v.flags & UHMM_VMA_ANON);
	/* The vDSO is a special mapping, no file behind it: not anonymous. */
	if (vdso) {
		ASSERT_EQ(uhmm_vma_lookup(vdso, &v), 0);
		ASSERT_TRUE(v.flags & UHMM_VMA_EXEC);
		ASSERT_FALSE(v.flags & UHMM_VMA_ANON);
	}
	munmap(sh, ps());
	munmap(f, 2 * ps());
	munmap(fs, 2 * ps());
	close(fd);
}

/* A driver looks the VMA up in migrate_to_ram, as amdkfd and xe do. */
TEST(vma_lookup_in_migrate_to_ram)
{
	char *p = map_anon(2 * ps(), RW);

	toy_init();
	ASSERT_NOT_NULL(p);
	p[0] = 3;
	ASSERT_EQ(toy_to_dev(p, 2), 2);
	ASSERT_EQ(((volatile char *)p)[0], 3);
	ASSERT_TRUE(atomic_load_explicit(&toy.fault_recorded, memory_order_acquire));
	ASSERT_EQ(toy.fault_lookup, 0);
	ASSERT_LE(toy.fault_vma.start, (unsigned long)p);
	ASSERT_GE(toy.fault_vma.end, (unsigned long)p + 2 * ps());
	ASSERT_EQ(toy.fault_vma.flags & VMA_RW_ANON, VMA_RW_ANON);
}

/* ------------------------------------------------ migrate_to_ram's context */

struct tid_access {
	struct access a;
	pid_t tid;
};

static void *tid_access_main(void *arg)
{
	struct tid_access *ta = arg;

	ta->tid = gettid();
	return access_main(&ta->a);
}

/*
 * struct vm_fault tells the driver which task faults (current), the VMA
 * (vmf->vma) and the access (FAULT_FLAG_WRITE). uhmm's migrate_to_ram
 * runs on a uhmm thread: uhmm_fault carries the faulting thread's id,
 * the VMA's bounds and the write flag.
 */
static void fault_context(bool write)
{
	char *p = map_anon(4 * ps(), RW);
	struct tid_access ta = { .a.write = write, .a.value = 0x77 };
	pthread_t t;

	toy_init();
	ASSERT_NOT_NULL(p);
	/* The VMA of the access: [p, p + 3 pages); the last page is a VMA
	 * of its own. */
	ASSERT_EQ(mprotect(p + 3 * ps(), ps(), PROT_READ), 0);
	((uint64_t *)(p + ps()))[0] = 0x55;
	ASSERT_EQ(toy_to_dev(p, 3), 3);
	ta.a.addr = (volatile uint64_t *)(p + ps());
	ASSERT_EQ(pthread_create(&t, NULL, tid_access_main, &ta), 0);
	ASSERT_TRUE(access_wait(&ta.a, 5000));
	pthread_join(t, NULL);
	ASSERT_EQ(atomic_load(&toy.to_ram_calls), 1);
	ASSERT_TRUE(atomic_load_explicit(&toy.fault_recorded, memory_order_acquire));
	ASSERT_EQ(toy.fault_seen.address, (unsigned long)p + ps());
	ASSERT_EQ(toy.fault_seen.tid, ta.tid);
	ASSERT_NE(toy.fault_seen.tid, toy.fault_runs_on);
	ASSERT_EQ(toy.fault_seen.vm_start, (unsigned long)p);
	ASSERT_EQ(toy.fault_seen.vm_end, (unsigned long)p + 3 * ps());
	ASSERT_EQ(!!(toy.fault_seen.flags & UHMM_FAULT_WRITE), write);
	/* The window the driver migrates stays inside the VMA here. */
	ASSERT_LE(toy.fault_seen.ra_start, toy.fault_seen.address);
	ASSERT_GT(toy.fault_seen.ra_end, toy.fault_seen.address);
	if (write)
		ASSERT_EQ(((uint64_t *)(p + ps()))[0], 0x77);
	else
		ASSERT_EQ(ta.a.value, 0x55);
	munmap(p, 4 * ps());
}

TEST(migrate_to_ram_context_read)
{
	fault_context(false);
}

TEST(migrate_to_ram_context_write)
{
	fault_context(true);
}

/* ------------------------------------------- eviction by a list of pages */

/* The toy's page that holds page @i of a range filled by mark_pages(). */
static struct uhmm_page *toy_page_of(unsigned long i)
{
	for (unsigned long k = 0; k < DEV_PAGES; k++) {
		struct uhmm_page *dp = uhmm_pagemap_page(toy.pg, k);

		if (uhmm_page_refcount(dp) &&
		    ((uint64_t *)toy_mem(dp))[0] == 0xd0d0000u + i)
			return dp;
	}
	return NULL;
}

static void mark_pages(char *p, unsigned long n)
{
	for (unsigned long i = 0; i < n; i++)
		((uint64_t *)(p + i * ps()))[0] = 0xd0d0000u + i;
}

static bool marked(const char *p, unsigned long i)
{
	return ((const uint64_t *)(p + i * ps()))[0] == 0xd0d0000u + i;
}

/* Copy the collected entries to system pages where want[i]. */
static unsigned long evict_copy(uint64_t *src, uint64_t *dst, unsigned long n,
				const bool *want)
{
	unsigned long copied = 0;

	for (unsigned long i = 0; i < n; i++) {
		struct uhmm_page *sp = uhmm_migrate_pfn_to_page(src[i]);

		if (!sp || !(src[i] & UHMM_MIGRATE_PFN_MIGRATE) || (want && !want[i]))
			continue;
		if (uhmm_migrate_alloc_system(&dst[i]))
			continue;
		memcpy(uhmm_migrate_pfn_to_addr(dst[i]), toy_mem(sp), ps());
		copied++;
	}
	return copied;
}

/*
 * migrate_device_pfns (xe's drm_pagemap_evict_to_ram): the pages of a
 * buffer, scattered over the device's memory, named one by one; a free
 * page, a 0 entry and a page named twice are not collected.
 */
TEST(device_pfns_evicts_a_list_of_pages)
{
	unsigned long n = 8, nfree;
	char *p = map_anon(n * ps(), RW);
	uint64_t src[6] = { 0 }, dst[6] = { 0 };
	struct uhmm_page *free_page;

	toy_init();
	ASSERT_NOT_NULL(p);
	mark_pages(p, n);
	ASSERT_EQ(toy_to_dev(p, n), (long)n);
	pthread_mutex_lock(&toy.lock);
	free_page = uhmm_pagemap_page(toy.pg, toy.free[toy.nfree - 1]);
	pthread_mutex_unlock(&toy.lock);
	ASSERT_EQ(uhmm_page_refcount(free_page), 0u);
	src[0] = uhmm_migrate_pfn_device(toy_page_of(6));
	src[1] = uhmm_migrate_pfn_device(toy_page_of(1));
	src[2] = 0;
	src[3] = uhmm_migrate_pfn_device(toy_page_of(3));
	src[4] = src[0];
	src[5] = uhmm_migrate_pfn_device(free_page);
	nfree = toy_nfree();

	ASSERT_EQ(uhmm_migrate_device_pfns(src, 6), 0);
	for (int i = 0; i < 4; i += 1 + (i == 1))
		ASSERT_EQ(src[i] & (UHMM_MIGRATE_PFN_MIGRATE | UHMM_MIGRATE_PFN_DEVICE |
				    UHMM_MIGRATE_PFN_VALID),
			  UHMM_MIGRATE_PFN_MIGRATE | UHMM_MIGRATE_PFN_DEVICE |
			  UHMM_MIGRATE_PFN_VALID);
	ASSERT_EQ(src[2], 0u);
	ASSERT_EQ(src[4], 0u);	/* named twice: collected once */
	ASSERT_EQ(src[5], 0u);	/* free */
	ASSERT_EQ(evict_copy(src, dst, 6, NULL), 3u);
	uhmm_migrate_device_pages(src, dst, 6);
	for (int i = 0; i < 4; i += 1 + (i == 1))
		ASSERT_TRUE(src[i] & UHMM_MIGRATE_PFN_MIGRATE);
	uhmm_migrate_device_finalize(src, dst, 6);
	ASSERT_EQ(toy_nfree(), nfree + 3);
	/* Home without a fault; the rest still on the device. */
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(resident(p + i * ps()), i == 1 || i == 3 || i == 6);
	ASSERT_EQ(atomic_load(&toy.to_ram_calls), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_TRUE(marked(p, i));
	ASSERT_EQ(atomic_load(&toy.to_ram_calls), (int)n - 3);
	munmap(p, n * ps());
}

/*
 * migrate_device_pages as its own phase: entries without a system
 * destination lose MIGRATE before finalize, and those pages stay on the
 * device, at their address, with their data.
 */
TEST(device_pages_commits_before_finalize)
{
	unsigned long n = 6, nfree;
	char *p = map_anon(n * ps(), RW);
	uint64_t src[DEV_PAGES] = { 0 }, dst[DEV_PAGES] = { 0 };
	bool want[DEV_PAGES] = { false };
	unsigned long moved = 0;
	struct uhmm_page *dp;

	toy_init();
	ASSERT_NOT_NULL(p);
	mark_pages(p, n);
	ASSERT_EQ(toy_to_dev(p, n), (long)n);
	ASSERT_EQ(uhmm_migrate_device_range(src, toy.pg, 0, DEV_PAGES), 0);
	/* Destinations for the pages of addresses 0, 2 and 4 only. */
	for (unsigned long i = 0; i < DEV_PAGES; i++) {
		struct uhmm_page *sp = uhmm_migrate_pfn_to_page(src[i]);

		if (sp)
			want[i] = ((uint64_t *)toy_mem(sp))[0] % 2 == 0;
	}
	ASSERT_EQ(evict_copy(src, dst, DEV_PAGES, want), 3u);
	/* A device page is no destination of an eviction. */
	dp = toy_alloc();
	ASSERT_NOT_NULL(dp);
	for (unsigned long i = 0; i < DEV_PAGES; i++)
		if (src[i] && !want[i]) {
			dst[i] = uhmm_migrate_pfn_device(dp);
			break;
		}
	uhmm_migrate_device_pages(src, dst, DEV_PAGES);
	for (unsigned long i = 0; i < DEV_PAGES; i++) {
		if (!src[i])
			continue;
		ASSERT_TRUE(src[i] & UHMM_MIGRATE_PFN_VALID);
		ASSERT_EQ(!!(src[i] & UHMM_MIGRATE_PFN_MIGRATE), want[i]);
		moved += !!(src[i] & UHMM_MIGRATE_PFN_MIGRATE);
	}
	ASSERT_EQ(moved, 3u);
	nfree = toy_nfree();
	uhmm_migrate_device_finalize(src, dst, DEV_PAGES);
	ASSERT_EQ(toy_nfree(), nfree + 3);
	uhmm_page_put(dp);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(resident(p + i * ps()), i % 2 == 0);
	ASSERT_EQ(atomic_load(&toy.to_ram_calls), 0);
	/* The pages that stayed come back through migrate_to_ram. */
	for (unsigned long i = 0; i < n; i++)
		ASSERT_TRUE(marked(p, i));
	ASSERT_EQ(atomic_load(&toy.to_ram_calls), 3);
	munmap(p, n * ps());
}

TEST(device_pfns_bad_input)
{
	char *p = map_anon(ps(), RW);
	uint64_t src[2] = { 0 }, sys;

	toy_init();
	ASSERT_NOT_NULL(p);
	ASSERT_EQ(uhmm_migrate_device_pfns(NULL, 1), -EINVAL);
	ASSERT_EQ(uhmm_migrate_device_pfns(src, 0), -EINVAL);
	/* A system frame is no device page: nothing is collected. */
	mark_pages(p, 1);
	ASSERT_EQ(toy_to_dev(p, 1), 1);
	sys = ((uint64_t)(uintptr_t)p / ps()) << UHMM_MIGRATE_PFN_SHIFT |
	      UHMM_MIGRATE_PFN_VALID;
	src[0] = uhmm_migrate_pfn_device(toy_page_of(0));
	src[1] = sys;
	ASSERT_EQ(uhmm_migrate_device_pfns(src, 2), -EINVAL);
	ASSERT_EQ(src[1], sys);
	ASSERT_FALSE(resident(p));
	ASSERT_TRUE(marked(p, 0));
	/* Nothing to collect: all 0. */
	src[0] = src[1] = 0;
	ASSERT_EQ(uhmm_migrate_device_pfns(src, 2), 0);
	munmap(p, ps());
}

/* ------------------------------------------------- notifier accessors */

struct seen {
	atomic_ulong cur_seq;
	atomic_int calls;
};

static bool seen_inv(struct uhmm_interval_notifier *sub,
		     const struct uhmm_notifier_range *r, unsigned long seq)
{
	struct seen *s = uhmm_interval_notifier_priv(sub);

	(void)r;
	uhmm_interval_set_seq(sub, seq);
	atomic_store(&s->cur_seq, seq);
	atomic_fetch_add(&s->calls, 1);
	return true;
}

static const struct uhmm_interval_notifier_ops seen_ops = { .invalidate = seen_inv };

TEST(notifier_bounds_and_sequence)
{
	char *p = map_anon(8 * ps(), RW);
	struct uhmm_interval_notifier *sub;
	struct seen s = { 0 };
	unsigned long seq, a = (unsigned long)p;
	uint64_t pfns[8] = { 0 };

	require_uffd(false);
	ASSERT_NOT_NULL(p);
	ASSERT_EQ(uhmm_interval_notifier_start(NULL), 0);
	ASSERT_EQ(uhmm_interval_notifier_end(NULL), 0);
	ASSERT_EQ(uhmm_interval_notifier_seq(NULL), 0);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, a + ps(), 6 * ps(),
						&seen_ops, &s), 0);
	ASSERT_EQ(uhmm_interval_notifier_start(sub), a + ps());
	ASSERT_EQ(uhmm_interval_notifier_end(sub), a + 7 * ps());

	/* Idle: the sequence read_begin returns, odd. */
	seq = uhmm_interval_read_begin(sub);
	ASSERT_EQ(uhmm_interval_notifier_seq(sub), seq);
	ASSERT_EQ(seq & 1, 1);

	/* Tracked by a range_fault, then an invalidation: the sequence is
	 * the one the callback set, and read_begin returns it. */
	struct uhmm_range r = { .notifier = sub, .start = a + ps(),
				.end = a + 7 * ps(), .hmm_pfns = pfns,
				.default_flags = FAULT_W };
	r.notifier_seq = seq;
	ASSERT_EQ(uhmm_range_fault(&r), 0);
	ASSERT_EQ(madvise(p + 2 * ps(), ps(), MADV_DONTNEED), 0);
	ASSERT_EQ(uhmm_range_revalidate(a, a + 8 * ps()), 0);
	ASSERT_GE(atomic_load(&s.calls), 1);
	ASSERT_NE(uhmm_interval_notifier_seq(sub), seq);
	ASSERT_EQ(uhmm_interval_notifier_seq(sub), atomic_load(&s.cur_seq));
	ASSERT_EQ(uhmm_interval_read_begin(sub), uhmm_interval_notifier_seq(sub));
	ASSERT_TRUE(uhmm_interval_read_retry(sub, seq));
	ASSERT_EQ(uhmm_interval_notifier_remove(sub), 0);
	munmap(p, 8 * ps());
}

/* The -EBUSY loop of a kernel driver, with the kernel's timeout. */
TEST(range_fault_default_timeout_loop)
{
	char *p = map_anon(4 * ps(), RW);
	struct uhmm_interval_notifier *sub;
	struct seen s = { 0 };
	uint64_t pfns[4] = { 0 };
	long timeout = now_ms() + UHMM_RANGE_DEFAULT_TIMEOUT;
	int ret;

	ASSERT_EQ(UHMM_RANGE_DEFAULT_TIMEOUT, 1000);
	ASSERT_NOT_NULL(p);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, (unsigned long)p, 4 * ps(),
						&seen_ops, &s), 0);
	struct uhmm_range r = { .notifier = sub, .start = (unsigned long)p,
				.end = (unsigned long)p + 4 * ps(),
				.hmm_pfns = pfns, .default_flags = FAULT_R };
	do {
		ASSERT_LT(now_ms(), timeout);
		r.notifier_seq = uhmm_interval_read_begin(sub);
		ret = uhmm_range_fault(&r);
	} while (ret == -EBUSY);
	ASSERT_EQ(ret, 0);
	for (int i = 0; i < 4; i++)
		ASSERT_TRUE(pfns[i] & UHMM_PFN_VALID);
	ASSERT_EQ(uhmm_interval_notifier_remove(sub), 0);
	munmap(p, 4 * ps());
}
