/* SPDX-License-Identifier: MIT */
/*
 * dmirror device memory: MIGRATE_TO_DEV, MIGRATE_TO_SYS, RELEASE, CPU
 * fault-back through migrate_to_ram, SNAPSHOT of device pages; ports of
 * the kernel's hmm-tests migrate* scenarios (tools/testing/selftests/mm/
 * hmm-tests.c) on devices 0 and 1 (device-private memory).
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <sys/wait.h>

#include <uhmm/dmirror.h>
#include <uhmm/uhmm.h>

#include "harness.h"
#include "util.h"

#define LOCAL_W (UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | UHMM_DMIRROR_PROT_WRITE)

static struct uhmm_dmirror *dopen(int dev)
{
	struct uhmm_dmirror *dm = NULL;

	require_uffd(true);
	ASSERT_EQ(uhmm_dmirror_open(dev, &dm), 0);
	return dm;
}

/* The i-th int of a buffer holds i (hmm-tests style). */
static void fill_ints(void *p, unsigned long npages, int base)
{
	int *w = p;

	for (unsigned long i = 0; i < npages * ps() / sizeof(int); i++)
		w[i] = (int)i + base;
}

static bool check_ints(const void *p, unsigned long npages, int base)
{
	const int *w = p;

	for (unsigned long i = 0; i < npages * ps() / sizeof(int); i++)
		if (w[i] != (int)i + base)
			return false;
	return true;
}

static int migrate(struct uhmm_dmirror *dm, void *p, void *mirror,
		   unsigned long npages, struct uhmm_dmirror_cmd *c)
{
	return dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, npages, c);
}

/*
 * migrate() after the CPU faulted the range back. The core can serve a
 * CPU fault late (a spurious fault-back, see test_migrate.c
 * four_threads_fault_same_pages): it then takes a page of the new
 * migration back, and the read-back says -ENOENT. Retried, and logged.
 */
static int migrate_after_cpu(struct uhmm_dmirror *dm, void *p, void *mirror,
			     unsigned long npages, struct uhmm_dmirror_cmd *c)
{
	int r = migrate(dm, p, mirror, npages, c);

	for (int i = 0; i < 5 && r == -ENOENT; i++) {
		TH_LOG("late fault-back took a page: retry %d", i);
		usleep(20000);
		r = migrate(dm, p, mirror, npages, c);
	}
	return r;
}

/* SNAPSHOT of [p, p + npages) into a fresh array (caller frees). */
static unsigned char *snap(struct uhmm_dmirror *dm, void *p, unsigned long npages)
{
	struct uhmm_dmirror_cmd c;
	unsigned char *m = malloc(npages);

	ASSERT_NOT_NULL(m);
	memset(m, 0xaa, npages);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, p, m, npages, &c), 0);
	ASSERT_EQ(c.cpages, npages);
	return m;
}

static bool snap_all(struct uhmm_dmirror *dm, void *p, unsigned long npages,
		     unsigned char v)
{
	unsigned char *m = snap(dm, p, npages);
	bool ok = true;

	for (unsigned long i = 0; i < npages; i++) {
		if (m[i] != v) {
			TH_LOG("page %lu: 0x%02x, want 0x%02x", i, m[i], v);
			ok = false;
			break;
		}
	}
	free(m);
	return ok;
}

/* Basic migrate: data read back through the device and by the CPU. */
TEST(migrate)
{
	unsigned long n = 64;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm = dopen(0);
	struct uhmm_dmirror_cmd c;

	fill_ints(p, n, 0);
	ASSERT_EQ(migrate(dm, p, mirror, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	ASSERT_EQ(c.faults, 0ULL);
	ASSERT_TRUE(check_ints(mirror, n, 0));
	/* The pages left the application's address space. */
	ASSERT_EQ(page_present(p), 0);
	ASSERT_EQ(page_present(p + (n - 1) * ps()), 0);
	ASSERT_TRUE(snap_all(dm, p, n, LOCAL_W));
	/* READ through the device: its own memory, no fault round. */
	memset(mirror, 0, n * ps());
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, mirror, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	ASSERT_EQ(c.faults, 0ULL);
	ASSERT_TRUE(check_ints(mirror, n, 0));
	/* The CPU faults them back. */
	ASSERT_TRUE(check_ints(p, n, 0));
	ASSERT_EQ(page_present(p), 1);
	ASSERT_TRUE(snap_all(dm, p, n, UHMM_DMIRROR_PROT_WRITE));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* Holes and the zero page migrate too (as zeros). */
TEST(migrate_holes_zero_page)
{
	unsigned long n = 8;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm = dopen(0);
	struct uhmm_dmirror_cmd c;
	volatile char v = p[0];		/* zero page */

	(void)v;
	p[ps()] = 7;
	memset(mirror, 0x33, n * ps());
	ASSERT_EQ(migrate(dm, p, mirror, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	ASSERT_EQ(mirror[0], 0);
	ASSERT_EQ(mirror[ps()], 7);
	ASSERT_EQ(mirror[5 * ps() + 9], 0);
	ASSERT_TRUE(snap_all(dm, p, n, LOCAL_W));
	ASSERT_EQ(p[ps()], 7);
	ASSERT_EQ(p[6 * ps()], 0);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* Device WRITE to its own memory, seen by the CPU after fault-back. */
TEST(migrate_device_write)
{
	unsigned long n = 16;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm = dopen(1);
	struct uhmm_dmirror_cmd c;

	fill_ints(p, n, 0);
	ASSERT_EQ(migrate(dm, p, mirror, n, &c), 0);
	fill_ints(mirror, n, 100);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, mirror, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	ASSERT_EQ(c.faults, 0ULL);
	ASSERT_EQ(page_present(p), 0);
	ASSERT_TRUE(check_ints(p, n, 100));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* hmm-tests migrate_fault: migrate, the CPU reads, migrate again. */
TEST(migrate_fault)
{
	unsigned long n = 32;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm = dopen(0);
	struct uhmm_dmirror_cmd c;

	fill_ints(p, n, 0);
	ASSERT_EQ(migrate(dm, p, mirror, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	ASSERT_TRUE(check_ints(mirror, n, 0));
	ASSERT_TRUE(check_ints(p, n, 0));
	memset(mirror, 0, n * ps());
	ASSERT_EQ(migrate_after_cpu(dm, p, mirror, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	ASSERT_TRUE(check_ints(mirror, n, 0));
	ASSERT_TRUE(check_ints(p, n, 0));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* hmm-tests migrate_release: RELEASE brings everything back. */
TEST(migrate_release)
{
	unsigned long n = 48;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm = dopen(0);
	struct uhmm_dmirror_cmd c;

	fill_ints(p, n, 3);
	ASSERT_EQ(migrate(dm, p, mirror, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	ASSERT_TRUE(snap_all(dm, p, n, LOCAL_W));
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_RELEASE, p, NULL, 1, &c), 0);
	/* Back without a CPU fault: present, ordinary pages. */
	ASSERT_EQ(page_present(p), 1);
	ASSERT_EQ(page_present(p + (n - 1) * ps()), 1);
	ASSERT_TRUE(snap_all(dm, p, n, UHMM_DMIRROR_PROT_WRITE));
	ASSERT_TRUE(check_ints(p, n, 3));
	/* The device reads system memory again. */
	memset(mirror, 0, n * ps());
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, mirror, n, &c), 0);
	ASSERT_TRUE(check_ints(mirror, n, 3));
	/* And can migrate again. */
	ASSERT_EQ(migrate_after_cpu(dm, p, mirror, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	ASSERT_TRUE(check_ints(p, n, 3));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* hmm-tests migrate_shared: shared anonymous memory does not migrate. */
TEST(migrate_shared)
{
	unsigned long n = 4;
	char *p = mmap(NULL, n * ps(), RW, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	char *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm = dopen(0);
	struct uhmm_dmirror_cmd c;

	ASSERT_NE(p, MAP_FAILED);
	memset(p, 5, n * ps());
	memset(mirror, 0x11, n * ps());
	ASSERT_EQ(migrate(dm, p, mirror, n, &c), -ENOENT);
	/* Nothing written to ptr on failure. */
	ASSERT_EQ(mirror[0], 0x11);
	ASSERT_EQ(p[0], 5);
	ASSERT_TRUE(snap_all(dm, p, n, UHMM_DMIRROR_PROT_WRITE));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* hmm-tests migrate_multiple: ten rounds of migrate / verify. */
TEST(migrate_multiple)
{
	unsigned long n = 40;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm = dopen(0);
	struct uhmm_dmirror_cmd c;

	for (int r = 0; r < 10; r++) {
		fill_ints(p, n, r);
		memset(mirror, 0, n * ps());
		ASSERT_EQ(migrate_after_cpu(dm, p, mirror, n, &c), 0);
		ASSERT_EQ(c.cpages, n);
		ASSERT_TRUE(check_ints(mirror, n, r));
		ASSERT_TRUE(check_ints(p, n, r));
	}
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* Half faulted back by the CPU, then the mixed range migrates again. */
TEST(migrate_mixed_residency)
{
	unsigned long n = 32;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm = dopen(0);
	struct uhmm_dmirror_cmd c;
	unsigned char *m;

	fill_ints(p, n, 9);
	ASSERT_EQ(migrate(dm, p, mirror, n, &c), 0);
	/* The CPU touches every other page. */
	for (unsigned long i = 0; i < n; i += 2)
		ASSERT_EQ(((int *)(p + i * ps()))[1], (int)(i * ps() / sizeof(int)) + 1 + 9);
	m = snap(dm, p, n);
	for (unsigned long i = 1; i < n; i += 2)
		ASSERT_EQ(m[i], LOCAL_W);
	free(m);
	memset(mirror, 0, n * ps());
	ASSERT_EQ(migrate_after_cpu(dm, p, mirror, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	ASSERT_TRUE(check_ints(mirror, n, 9));
	ASSERT_TRUE(snap_all(dm, p, n, LOCAL_W));
	ASSERT_TRUE(check_ints(p, n, 9));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* MIGRATE_TO_SYS: cpages = pages migrated, data intact, no CPU fault. */
TEST(migrate_to_sys)
{
	unsigned long n = 24;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm = dopen(0);
	struct uhmm_dmirror_cmd c;

	fill_ints(p, n, 4);
	ASSERT_EQ(migrate(dm, p, mirror, n, &c), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	ASSERT_EQ(page_present(p), 1);
	ASSERT_TRUE(snap_all(dm, p, n, UHMM_DMIRROR_PROT_WRITE));
	ASSERT_TRUE(check_ints(p, n, 4));
	/* Nothing left on the device: 0 pages. */
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, n, &c), 0);
	ASSERT_EQ(c.cpages, 0ULL);
	/* Unmapped range: -EINVAL. */
	ASSERT_EQ(munmap(p + (n - 1) * ps(), ps()), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, n, &c), -EINVAL);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/*
 * Two devices (hmm-tests hmm2 snapshot, double_map): a page on device 0 is
 * not present for device 1 (PROT_NONE in its SNAPSHOT); a READ by device 1
 * faults it back to system memory and gets the data.
 */
TEST(two_devices)
{
	unsigned long n = 16;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *d0 = dopen(0), *d1 = dopen(1);

	require_kernel_faults();	/* d1 faults d0's pages back */
	struct uhmm_dmirror_cmd c;
	unsigned char *m;

	fill_ints(p, n, 11);
	ASSERT_EQ(migrate(d0, p, mirror, n / 2, &c), 0);
	ASSERT_EQ(migrate(d1, p + n / 2 * ps(), mirror, n / 2, &c), 0);
	m = snap(d0, p, n);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(m[i], i < n / 2 ? LOCAL_W : UHMM_DMIRROR_PROT_NONE);
	free(m);
	m = snap(d1, p, n);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(m[i], i < n / 2 ? UHMM_DMIRROR_PROT_NONE : LOCAL_W);
	free(m);
	/* A page on device 1 does not migrate to device 0. */
	ASSERT_EQ(migrate(d0, p + (n - 1) * ps(), mirror, 1, &c), -ENOENT);
	/* Device 1 reads everything: device 0's pages come back. */
	memset(mirror, 0, n * ps());
	ASSERT_EQ(dcmd(d1, UHMM_DMIRROR_READ, p, mirror, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	ASSERT_EQ(c.faults, 1ULL);
	ASSERT_TRUE(check_ints(mirror, n, 11));
	m = snap(d1, p, n);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(m[i], i < n / 2 ? UHMM_DMIRROR_PROT_WRITE : LOCAL_W);
	free(m);
	ASSERT_TRUE(snap_all(d0, p, n / 2, UHMM_DMIRROR_PROT_WRITE));
	ASSERT_TRUE(check_ints(p, n, 11));
	ASSERT_EQ(uhmm_dmirror_close(d0), 0);
	ASSERT_EQ(uhmm_dmirror_close(d1), 0);
}

/*
 * hmm-tests hmm2 snapshot, the kernel's set-up exactly: a PROT_NONE
 * reservation, a hole, a read-only zero page (mprotect PROT_READ, then a
 * read), a read-only page with data, a written page, one page on each
 * device. SNAPSHOT by device 0 faults nothing.
 */
TEST(hmm2_snapshot)
{
	unsigned long n = 7;
	char *p = mmap(NULL, n * ps(), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct uhmm_dmirror *d0 = dopen(0), *d1 = dopen(1);
	char *mirror = map_anon(ps(), RW);	/* MIGRATE_TO_DEV reads back */
	struct uhmm_dmirror_cmd c;
	unsigned char *m;
	int val;

	ASSERT_NE(p, MAP_FAILED);
	/* Pages 1-4 as the kernel sets them up; 5 and 6 go to devices. */
	val = hmm2_snapshot_layout(p);
	ASSERT_EQ(val, 3);
	ASSERT_EQ(migrate(d0, p + 5 * ps(), mirror, 1, &c), 0);
	ASSERT_EQ(c.cpages, 1ULL);
	ASSERT_EQ(migrate(d1, p + 6 * ps(), mirror, 1, &c), 0);
	ASSERT_EQ(c.cpages, 1ULL);
	m = snap(d0, p, n);
	for (unsigned long i = 0; i < n; i++)
		TH_LOG("page %lu: 0x%02x", i, m[i]);
	ASSERT_EQ(m[0], UHMM_DMIRROR_PROT_ERROR);
	ASSERT_EQ(m[1], UHMM_DMIRROR_PROT_ERROR);
	ASSERT_EQ(m[2], UHMM_DMIRROR_PROT_ZERO | UHMM_DMIRROR_PROT_READ);
	ASSERT_EQ(m[3], UHMM_DMIRROR_PROT_READ);
	ASSERT_EQ(m[4], UHMM_DMIRROR_PROT_WRITE);
	ASSERT_EQ(m[5], LOCAL_W);
	ASSERT_EQ(m[6], UHMM_DMIRROR_PROT_NONE);
	free(m);
	ASSERT_EQ(uhmm_dmirror_close(d0), 0);
	ASSERT_EQ(uhmm_dmirror_close(d1), 0);
}

/* Two opens of one device share its memory: LOCAL through both. */
TEST(two_opens_same_device)
{
	unsigned long n = 8;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *a = dopen(0), *b = dopen(0);
	struct uhmm_dmirror_cmd c;

	fill_ints(p, n, 12);
	ASSERT_EQ(dcmd(b, UHMM_DMIRROR_READ, p, mirror, n, &c), 0);
	ASSERT_EQ(migrate(a, p, mirror, n, &c), 0);
	ASSERT_TRUE(snap_all(b, p, n, LOCAL_W));
	/* b's old entries (system pages) were dropped: it reads device memory. */
	memset(mirror, 0, n * ps());
	ASSERT_EQ(dcmd(b, UHMM_DMIRROR_READ, p, mirror, n, &c), 0);
	ASSERT_TRUE(check_ints(mirror, n, 12));
	ASSERT_EQ(page_present(p), 0);
	/* Closing a (not the last open) loses nothing. */
	ASSERT_EQ(uhmm_dmirror_close(a), 0);
	ASSERT_TRUE(snap_all(b, p, n, LOCAL_W));
	ASSERT_TRUE(check_ints(p, n, 12));
	ASSERT_EQ(uhmm_dmirror_close(b), 0);
}

/* hmm-tests migrate_mixed (the parts uhmm supports). */
TEST(migrate_bad_ranges)
{
	unsigned long n = 6;
	char *p = mmap(NULL, n * ps(), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *d0 = dopen(0), *d1 = dopen(1);
	struct uhmm_dmirror_cmd c;

	ASSERT_NE(p, MAP_FAILED);
	memset(mirror, 0x44, n * ps());
	/* PROT_NONE. */
	ASSERT_EQ(migrate(d1, p, mirror, n, &c), -EINVAL);
	/* A hole after the first page. */
	ASSERT_EQ(munmap(p + ps(), ps()), 0);
	ASSERT_EQ(mprotect(p, ps(), RW), 0);
	ASSERT_EQ(migrate(d1, p, mirror, 3, &c), -EINVAL);
	ASSERT_EQ(mirror[0], 0x44);
	/*
	 * Pages 3-5 read-write, in two VMAs (3 and 4-5). Not told apart by
	 * protection: UFFDIO_MOVE needs the protection of uhmm's staging
	 * area (read-write), so read-only or executable memory does not
	 * migrate in uhmm (it does in the kernel).
	 */
	ASSERT_EQ(mprotect(p + 3 * ps(), 3 * ps(), RW), 0);
	ASSERT_EQ(madvise(p + 4 * ps(), 2 * ps(), MADV_HUGEPAGE), 0);
	fill_ints(p + 3 * ps(), 3, 7);
	/* Across a VMA boundary: split into chunks of one VMA each. */
	ASSERT_EQ(migrate(d1, p + 3 * ps(), mirror, 3, &c), 0);
	ASSERT_EQ(c.cpages, 3ULL);
	ASSERT_TRUE(check_ints(mirror, 3, 7));
	/* Page 5 is on device 1: -ENOENT for device 0. */
	ASSERT_EQ(migrate(d0, p + 5 * ps(), mirror, 1, &c), -ENOENT);
	/* One PROT_NONE page inside: -EINVAL. */
	ASSERT_EQ(mprotect(p + 4 * ps(), ps(), PROT_NONE), 0);
	ASSERT_EQ(migrate(d0, p + 3 * ps(), mirror, 3, &c), -EINVAL);
	ASSERT_TRUE(check_ints(p + 3 * ps(), 1, 7));
	ASSERT_EQ(uhmm_dmirror_close(d0), 0);
	ASSERT_EQ(uhmm_dmirror_close(d1), 0);
}

/* FLAGS FAIL_ALLOC: one device page allocation fails, that page stays. */
TEST(migrate_fail_alloc)
{
	unsigned long n = 8;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm = dopen(0);
	struct uhmm_dmirror_cmd c;
	unsigned char *m;
	int on_dev = 0;

	fill_ints(p, n, 21);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_FLAGS, p, NULL, UHMM_DMIRROR_FLAG_FAIL_ALLOC, &c), 0);
	ASSERT_EQ(migrate(dm, p, mirror, n, &c), -ENOENT);
	m = snap(dm, p, n);
	/* Not migrated: back in place, not in the device page table. */
	ASSERT_EQ(m[0], UHMM_DMIRROR_PROT_WRITE);
	for (unsigned long i = 1; i < n; i++)
		on_dev += m[i] == LOCAL_W;
	ASSERT_EQ(on_dev, (int)n - 1);
	free(m);
	ASSERT_EQ(page_present(p), 1);
	/* The flag was used up: the next migration succeeds. */
	ASSERT_EQ(migrate(dm, p, mirror, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	ASSERT_TRUE(check_ints(mirror, n, 21));
	/* MIGRATE_TO_SYS with FAIL_ALLOC: one page stays on the device. */
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_FLAGS, p, NULL, UHMM_DMIRROR_FLAG_FAIL_ALLOC, &c), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, n, &c), 0);
	ASSERT_EQ(c.cpages, n - 1);
	ASSERT_TRUE(check_ints(p, n, 21));
	/* CPU fault with FAIL_ALLOC: the faulting page is never skipped. */
	ASSERT_EQ(migrate_after_cpu(dm, p, mirror, n, &c), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_FLAGS, p, NULL, UHMM_DMIRROR_FLAG_FAIL_ALLOC, &c), 0);
	ASSERT_TRUE(check_ints(p, n, 21));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* read(2) into and write(2) from device pages: the kernel's accesses. */
TEST(migrate_syscalls)
{
	unsigned long n = 4;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	char *buf = map_anon(ps(), RW);

	require_kernel_faults();
	struct uhmm_dmirror *dm = dopen(0);
	struct uhmm_dmirror_cmd c;
	int fds[2];

	fill_ints(p, n, 30);
	ASSERT_EQ(migrate(dm, p, mirror, n, &c), 0);
	ASSERT_EQ(pipe(fds), 0);
	/* write(2) from a device page. */
	ASSERT_EQ(write(fds[1], p, ps()), (ssize_t)ps());
	ASSERT_EQ(read(fds[0], buf, ps()), (ssize_t)ps());
	ASSERT_TRUE(check_ints(buf, 1, 30));
	/* read(2) into a device page. */
	memset(buf, 0x5a, ps());
	ASSERT_EQ(write(fds[1], buf, ps()), (ssize_t)ps());
	ASSERT_EQ(read(fds[0], p + 2 * ps(), ps()), (ssize_t)ps());
	ASSERT_MEMEQ(p + 2 * ps(), buf, ps());
	ASSERT_TRUE(check_ints(p + 3 * ps(), 1, 30 + (int)(3 * ps() / sizeof(int))));
	close(fds[0]);
	close(fds[1]);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* Closing the last open migrates everything back. */
TEST(migrate_close)
{
	unsigned long n = 32;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm = dopen(0);
	struct uhmm_dmirror_cmd c;

	fill_ints(p, n, 40);
	ASSERT_EQ(migrate(dm, p, mirror, n, &c), 0);
	ASSERT_EQ(page_present(p), 0);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	ASSERT_EQ(page_present(p), 1);
	ASSERT_EQ(page_present(p + (n - 1) * ps()), 1);
	ASSERT_TRUE(check_ints(p, n, 40));
	/* A new device of the same number works from scratch. */
	dm = dopen(0);
	ASSERT_EQ(migrate_after_cpu(dm, p, mirror, n, &c), 0);
	ASSERT_TRUE(check_ints(mirror, n, 40));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	ASSERT_TRUE(check_ints(p, n, 40));
}

/* munmap of a device-resident range. */
TEST(migrate_munmap)
{
	unsigned long n = 16;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm = dopen(0);
	struct uhmm_dmirror_cmd c;
	char *q;

	fill_ints(p, n, 50);
	ASSERT_EQ(migrate(dm, p, mirror, n, &c), 0);
	ASSERT_EQ(munmap(p, n * ps()), 0);
	/* The device lost the range. */
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, mirror, n, &c), -EFAULT);
	ASSERT_TRUE(snap_all(dm, p, n, UHMM_DMIRROR_PROT_ERROR));
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_RELEASE, p, NULL, 1, &c), 0);
	/* New memory at the same place is new memory. */
	q = mmap(p, n * ps(), RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	ASSERT_TRUE(q == p);
	ASSERT_TRUE(snap_all(dm, q, n, UHMM_DMIRROR_PROT_NONE));
	ASSERT_EQ(q[0], 0);
	ASSERT_EQ(q[(n - 1) * ps() + 3], 0);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	dm = dopen(0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_RELEASE, q, NULL, 1, &c), 0);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* MADV_DONTNEED of a device-resident range: it reads as zeros. */
TEST(migrate_dontneed)
{
	unsigned long n = 8;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm = dopen(0);

	require_kernel_faults();	/* READ populates a migrated range */
	struct uhmm_dmirror_cmd c;

	fill_ints(p, n, 60);
	ASSERT_EQ(migrate(dm, p, mirror, n, &c), 0);
	ASSERT_EQ(madvise(p, n * ps(), MADV_DONTNEED), 0);
	/*
	 * No SNAPSHOT right here: the core drops the device pages when its
	 * monitor has handled the REMOVE event, after madvise() returned.
	 * READ revalidates first (a sync point).
	 */
	memset(mirror, 0x77, n * ps());
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, mirror, n, &c), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(mirror[i * ps() + 17], 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(p[i * ps() + 17], 0);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* More than one migrate chunk (512 pages) and a 2 MiB read-ahead. */
TEST(migrate_large)
{
	unsigned long n = 1536;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm = dopen(1);
	struct uhmm_dmirror_cmd c;

	fill_ints(p, n, 70);
	ASSERT_EQ(migrate(dm, p, mirror, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	ASSERT_TRUE(check_ints(mirror, n, 70));
	ASSERT_TRUE(check_ints(p, n, 70));
	ASSERT_EQ(migrate_after_cpu(dm, p, mirror, n, &c), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	ASSERT_TRUE(check_ints(p, n, 70));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/*
 * Faults walking down a migrated buffer widen the read-ahead window
 * below each fault; at the buffer's first pages it reaches into the VMA
 * below (here: the same kind of memory, split off by MADV_DONTDUMP; in
 * a program, a library's .bss). The kernel's fault-around stays in
 * vmf->vma: nothing of the VMA below is migrated or registered. It was
 * registered for missing pages (dmirror tried halves of the window),
 * and a reader of the process with every thread stopped, LeakSanitizer
 * scanning a library's .bss at exit, waited for good on a first touch.
 */
TEST(fault_back_window_stays_in_the_vma)
{
	unsigned long n = 32, blk = 512 * ps();
	char *raw = map_anon(2 * blk, RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm = dopen(0);
	struct uhmm_dmirror_cmd c;
	char *below, *p;

	ASSERT_NOT_NULL(raw);
	below = (char *)(((uintptr_t)raw + blk - 1) & ~(blk - 1));
	p = below + n * ps();
	ASSERT_EQ(madvise(below, n * ps(), MADV_DONTDUMP), 0);
	fill_ints(below, n, 40);
	fill_ints(p, n, 41);
	ASSERT_EQ(migrate(dm, p, mirror, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	ASSERT_EQ(vma_registered_missing(below), 0);
	/* Page by page from the top: the window doubles downwards. */
	for (unsigned long i = n; i-- > 0;)
		ASSERT_EQ(((volatile int *)(p + i * ps()))[0],
			  (int)(41 + i * (ps() / sizeof(int))));
	ASSERT_TRUE(check_ints(p, n, 41));
	ASSERT_TRUE(check_ints(below, n, 40));
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(vma_registered_missing(below + i * ps()), 0);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(raw, 2 * blk);
	munmap(mirror, n * ps());
}

/* EXCLUSIVE stays unsupported (not in the core). */
/* EXCLUSIVE of an untouched page faults it in first; CHECK of a range
 * never made exclusive is 0. */
TEST(exclusive_untouched_page)
{
	char *p = map_anon(ps(), RW), *mirror = map_anon(ps(), RW);
	struct uhmm_dmirror *dm = dopen(0);
	struct uhmm_dmirror_cmd c;

	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_CHECK_EXCLUSIVE, p, mirror, 1, &c), 0);
	memset(mirror, 1, ps());
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_EXCLUSIVE, p, mirror, 1, &c), 0);
	ASSERT_EQ(c.cpages, 1);
	ASSERT_EQ(mirror[0], 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_CHECK_EXCLUSIVE, p, mirror, 1, &c), -EPERM);
	ASSERT_EQ(p[0], 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_CHECK_EXCLUSIVE, p, mirror, 1, &c), 0);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/*
 * The command's buffer itself lives on a device: READ into it and WRITE
 * from it, through the same device and another (no deadlock between the
 * copy under the device lock and migrate_to_ram).
 */
TEST(buffer_on_device)
{
	unsigned long n = 4;
	char *p = map_anon(n * ps(), RW), *buf = map_anon(n * ps(), RW);
	char *tmp = map_anon(n * ps(), RW);
	struct uhmm_dmirror *d0 = dopen(0), *d1 = dopen(1);
	struct uhmm_dmirror_cmd c;

	for (int dev = 0; dev < 2; dev++) {
		struct uhmm_dmirror *dm = dev ? d1 : d0;

		fill_ints(p, n, 80 + dev);
		fill_ints(buf, n, 90);
		ASSERT_EQ(migrate(d0, buf, tmp, n, &c), 0);
		ASSERT_EQ(page_present(buf), 0);
		ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), 0);
		ASSERT_TRUE(check_ints(buf, n, 80 + dev));
		fill_ints(buf, n, 95);
		ASSERT_EQ(migrate(d0, buf, tmp, n, &c), 0);
		ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, n, &c), 0);
		ASSERT_TRUE(check_ints(p, n, 95));
		/* The read-back of a migration into a device-resident buffer. */
		ASSERT_EQ(migrate(d1, buf, tmp, n, &c), 0);
		fill_ints(p, n, 99);
		ASSERT_EQ(migrate(dm, p, buf, n, &c), 0);
		ASSERT_TRUE(check_ints(buf, n, 99));
	}
	ASSERT_EQ(uhmm_dmirror_close(d0), 0);
	ASSERT_EQ(uhmm_dmirror_close(d1), 0);
}

/* CPU threads fault device pages back while the device reads them. */
struct toucher {
	char *p;
	unsigned long n;
	int base;
	int bad;
};

static void *touch_thread(void *a)
{
	struct toucher *t = a;

	if (!check_ints(t->p, t->n, t->base))
		t->bad = 1;
	return NULL;
}

TEST(migrate_concurrent_cpu_and_device)
{
	unsigned long n = 64;
	char *p, *mirror;
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;

	/* The device READ faults device pages back from the kernel: with
	 * UFFD_USER_MODE_ONLY it gets -EFAULT unless the CPU thread was
	 * first (it passed or failed by the race). */
	require_kernel_faults();
	p = map_anon(n * ps(), RW);
	mirror = map_anon(n * ps(), RW);
	dm = dopen(0);

	for (int r = 0; r < 20; r++) {
		struct toucher t = { .p = p, .n = n, .base = r };
		pthread_t th;
		int ret;

		fill_ints(p, n, r);
		ret = migrate(dm, p, mirror, n, &c);
		/* A page the CPU took back between collection and read-back. */
		ASSERT_TRUE(ret == 0 || ret == -ENOENT);
		ASSERT_EQ(pthread_create(&th, NULL, touch_thread, &t), 0);
		memset(mirror, 0, n * ps());
		ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, mirror, n, &c), 0);
		ASSERT_TRUE(check_ints(mirror, n, r));
		ASSERT_EQ(pthread_join(th, NULL), 0);
		ASSERT_EQ(t.bad, 0);
	}
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* hmm-tests "exclusive": atomic access, then the CPU increments every word. */
TEST(exclusive_then_cpu_increments)
{
	unsigned long n = 16, words = n * ps() / 8;
	uint64_t *p = (uint64_t *)map_anon(n * ps(), RW);
	uint64_t *buf = (uint64_t *)map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;

	require_uffd(true);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	for (unsigned long i = 0; i < words; i++)
		p[i] = i;
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_EXCLUSIVE, p, buf, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	for (unsigned long i = 0; i < words; i++)
		ASSERT_EQ(buf[i], i);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_CHECK_EXCLUSIVE, p, NULL, n, &c), -EPERM);
	/* The CPU's touches revoke the device's access, then complete. */
	for (unsigned long i = 0; i < words; i++)
		p[i]++;
	for (unsigned long i = 0; i < words; i++)
		ASSERT_EQ(p[i], i + 1);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_CHECK_EXCLUSIVE, p, NULL, n, &c), 0);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* hmm-tests "exclusive_mprotect": read-only afterwards: WRITE -> -EPERM. */
TEST(exclusive_then_mprotect_write_eperm)
{
	unsigned long n = 4;
	char *p = map_anon(n * ps(), RW), *buf = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;

	require_uffd(true);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	memset(p, 9, n * ps());
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_EXCLUSIVE, p, buf, n, &c), 0);
	ASSERT_EQ(mprotect(p, n * ps(), PROT_READ), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, n, &c), -EPERM);
	ASSERT_EQ(p[0], 9);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* hmm-tests "exclusive_cow": after fork both sides increment. */
TEST(exclusive_then_fork_both_increment)
{
	unsigned long n = 4, words = n * ps() / 8;
	uint64_t *p = (uint64_t *)map_anon(n * ps(), RW);
	char *buf = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	pid_t pid;
	int st;

	require_uffd(true);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	for (unsigned long i = 0; i < words; i++)
		p[i] = i;
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_EXCLUSIVE, p, buf, n, &c), 0);
	pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		for (unsigned long i = 0; i < words; i++)
			if (++p[i] != i + 1)
				_exit(1);
		_exit(0);
	}
	for (unsigned long i = 0; i < words; i++)
		p[i] += 2;
	ASSERT_EQ(waitpid(pid, &st, 0), pid);
	ASSERT_TRUE(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	for (unsigned long i = 0; i < words; i++)
		ASSERT_EQ(p[i], i + 2);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* Device pages of a mapping made read-only come back on a CPU read
 * (installed by copy: UFFDIO_MOVE needs a writable mapping). */
TEST(migrate_then_mprotect_readonly)
{
	unsigned long n = 16;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm = dopen(0);
	struct uhmm_dmirror_cmd c;

	fill_ints(p, n, 21);
	ASSERT_EQ(migrate(dm, p, mirror, n, &c), 0);
	ASSERT_EQ(mprotect(p, n * ps(), PROT_READ), 0);
	ASSERT_TRUE(snap_all(dm, p, n / 2, UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL |
			     UHMM_DMIRROR_PROT_READ));
	/* The first half by the CPU, the second by MIGRATE_TO_SYS. */
	ASSERT_TRUE(check_ints(p, n / 2, 21));
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, n, &c), 0);
	ASSERT_TRUE(snap_all(dm, p, n, UHMM_DMIRROR_PROT_READ));
	ASSERT_TRUE(check_ints(p, n, 21));
	/* System pages of a read-only mapping stay (semantics M12). */
	ASSERT_EQ(migrate(dm, p, mirror, n, &c), -ENOENT);
	ASSERT_TRUE(snap_all(dm, p, n, UHMM_DMIRROR_PROT_READ));
	ASSERT_TRUE(check_ints(p, n, 21));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/*
 * A migrated range is registered for missing-page faults on its own
 * (semantics.md row 16): mremap(MAYMOVE | FIXED) of a range that spans it
 * and an untouched neighbour, which the kernel moves when both are one
 * VMA, fails with EFAULT. Since 6.17 the neighbour before the registered
 * part has moved by then; before, nothing moved. The pages on the device
 * stay where they were, and nothing is lost.
 */
TEST(mremap_across_migrated_range_efault)
{
	unsigned long n = 8;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	char *dst = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm = dopen(0);
	struct uhmm_dmirror_cmd c;
	unsigned char in_src = 0;
	void *q;

	fill_ints(p, n, 70);
	ASSERT_EQ(migrate(dm, p + 2 * ps(), mirror, 2, &c), 0);
	q = mremap(p, 6 * ps(), 6 * ps(), MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	ASSERT_EQ(q, MAP_FAILED);
	ASSERT_EQ(errno, EFAULT);
	/* The migrated pages: still there, on the device, data kept. */
	ASSERT_TRUE(snap_all(dm, p + 2 * ps(), 2, LOCAL_W));
	ASSERT_TRUE(check_ints(p + 2 * ps(), 2, 70 + (int)(2 * ps() / sizeof(int))));
	/* Pages 0 and 1: moved (6.17 and later) or not, never lost. */
	ASSERT_TRUE(check_ints(mincore(p, ps(), &in_src) == 0 ? p : dst, 2, 70));
	/* Pages 4..7 never left. */
	ASSERT_TRUE(check_ints(p + 4 * ps(), 4, 70 + (int)(4 * ps() / sizeof(int))));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, n * ps());
	munmap(dst, n * ps());
	munmap(mirror, n * ps());
}

/*
 * mremap(MREMAP_DONTUNMAP) of a range on the device: the pages move with
 * the mapping (the kernel moves the device-private entries), and the
 * source, still mapped, reads zeros as an anonymous range never touched.
 */
TEST(mremap_dontunmap_device_pages)
{
	unsigned long n = 4;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	char *dst = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm = dopen(0);
	struct uhmm_dmirror_cmd c;
	void *q;

	fill_ints(p, n, 90);
	ASSERT_EQ(migrate(dm, p, mirror, n, &c), 0);
	q = mremap(p, n * ps(), n * ps(),
		   MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, dst);
	if (q == MAP_FAILED && errno == EINVAL)
		SKIP("no MREMAP_DONTUNMAP for this mapping");
	ASSERT_TRUE(q == dst);
	/* The source: mapped, empty. */
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(p[i * ps() + 5], 0);
	ASSERT_TRUE(check_ints(dst, n, 90));
	/* The source again after the destination came home. */
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(p[i * ps() + 7], 0);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, n * ps());
	munmap(dst, n * ps());
	munmap(mirror, n * ps());
}

/*
 * MADV_DONTNEED of part of a range on the device, then the device closes
 * at once (its memory is evicted to system memory): the discarded pages
 * stay discarded (zeros), the others come back with their data.
 */
TEST(dontneed_then_close_evicts_the_rest)
{
	unsigned long n = 11;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm0 = dopen(0), *dm1 = dopen(1);
	struct uhmm_dmirror_cmd c;

	fill_ints(p, n, 30);
	ASSERT_EQ(migrate(dm1, p, mirror, n, &c), 0);
	ASSERT_EQ(migrate(dm1, p, mirror, n, &c), 0);
	ASSERT_EQ(madvise(p + 6 * ps(), 3 * ps(), MADV_DONTNEED), 0);
	ASSERT_EQ(uhmm_dmirror_close(dm0), 0);
	ASSERT_EQ(uhmm_dmirror_close(dm1), 0);
	ASSERT_TRUE(check_ints(p, 6, 30));
	for (unsigned long i = 6; i < 9; i++)
		ASSERT_EQ(p[i * ps() + 17], 0);
	ASSERT_TRUE(check_ints(p + 9 * ps(), 2, 30 + (int)(9 * ps() / sizeof(int))));
	munmap(p, n * ps());
	munmap(mirror, n * ps());
}
