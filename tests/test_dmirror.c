/* SPDX-License-Identifier: MIT */
/*
 * dmirror tests: the interface contract (docs/dmirror-contract.md) and the
 * kernel's hmm-tests semantics for open/close, argument checking, READ,
 * WRITE and SNAPSHOT over anonymous and file memory. Fork, huge pages and
 * races are in test_fork.c, test_huge.c and test_race.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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
/* Poison the reply fields: each command must write them. */
#define UTIL_DCMD_SENTINEL 0xdeadbeef
#include "util.h"

static bool all_bytes(const void *buf, unsigned long len, unsigned char v)
{
	const unsigned char *b = buf;

	for (unsigned long i = 0; i < len; i++)
		if (b[i] != v)
			return false;
	return true;
}

/* ------------------------------------------------------------------ */
/* Open, close and argument checking                                    */
/* ------------------------------------------------------------------ */

TEST(open_bad_device)
{
	struct uhmm_dmirror *dm = (void *)0x1;
	int bad[] = { -1, 4, 5, 100, INT_MAX, INT_MIN };

	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ASSERT_EQ(uhmm_dmirror_open(bad[i], &dm), -ENODEV);
	ASSERT_TRUE(dm == (void *)0x1);
	ASSERT_EQ(uhmm_dmirror_open(0, NULL), -EINVAL);
	ASSERT_EQ(uhmm_dmirror_open(1, NULL), -EINVAL);
}

TEST(open_private_devices)
{
	struct uhmm_dmirror *d0 = NULL, *d1 = NULL;

	ASSERT_EQ(uhmm_dmirror_open(0, &d0), 0);
	ASSERT_NOT_NULL(d0);
	ASSERT_EQ(uhmm_dmirror_open(1, &d1), 0);
	ASSERT_NOT_NULL(d1);
	ASSERT_TRUE(d0 != d1);
	/* Devices 2 and 3 have coherent memory (tests/test_coherent.c). */
	for (int dev = 2; dev <= 3; dev++) {
		struct uhmm_dmirror *d = NULL;

		ASSERT_EQ(uhmm_dmirror_open(dev, &d), 0);
		ASSERT_EQ(uhmm_dmirror_close(d), 0);
	}
	ASSERT_EQ(uhmm_dmirror_close(d0), 0);
	ASSERT_EQ(uhmm_dmirror_close(d1), 0);
}

TEST(close_null)
{
	ASSERT_EQ(uhmm_dmirror_close(NULL), -EINVAL);
}

TEST(cmd_null_args)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	char *p = map_anon(ps(), RW);

	ASSERT_NOT_NULL(p);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	ASSERT_EQ(uhmm_dmirror_cmd(dm, UHMM_DMIRROR_READ, NULL), -EINVAL);
	ASSERT_EQ(uhmm_dmirror_cmd(dm, UHMM_DMIRROR_SNAPSHOT, NULL), -EINVAL);
	memset(&c, 0, sizeof(c));
	c.addr = (uintptr_t)p;
	c.npages = 1;
	ASSERT_EQ(uhmm_dmirror_cmd(NULL, UHMM_DMIRROR_READ, &c), -EINVAL);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, ps());
}

TEST(cmd_bad_args_every_op)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = 2;
	char *p = map_anon(n * ps(), RW);
	char *buf = map_anon(n * ps(), RW);
	unsigned long top = ULONG_MAX & ~(ps() - 1);

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	memset(buf, 0x5c, n * ps());
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	for (int op = UHMM_DMIRROR_READ; op <= UHMM_DMIRROR_FLAGS; op++) {
		enum uhmm_dmirror_op o = (enum uhmm_dmirror_op)op;

		TH_LOG("op %d", op);
		/* Not page aligned. */
		ASSERT_EQ(dcmd(dm, o, p + 1, buf, n, &c), -EINVAL);
		ASSERT_EQ(c.cpages, 0ULL);
		ASSERT_EQ(c.faults, 0ULL);
		ASSERT_EQ(dcmd(dm, o, p + ps() / 2, buf, n, &c), -EINVAL);
		ASSERT_EQ(c.cpages, 0ULL);
		ASSERT_EQ(c.faults, 0ULL);
		/* npages == 0 (for FLAGS: flags value 0). */
		ASSERT_EQ(dcmd(dm, o, p, buf, 0, &c), -EINVAL);
		ASSERT_EQ(c.cpages, 0ULL);
		ASSERT_EQ(c.faults, 0ULL);
		/* addr + npages * page overflows. */
		ASSERT_EQ(dcmd(dm, o, (void *)top, buf, 2, &c), -EINVAL);
		ASSERT_EQ(c.cpages, 0ULL);
		ASSERT_EQ(c.faults, 0ULL);
		ASSERT_EQ(dcmd(dm, o, (void *)(top - ps()), buf, 4, &c), -EINVAL);
		ASSERT_EQ(dcmd(dm, o, p, buf, ULONG_MAX, &c), -EINVAL);
		ASSERT_EQ(c.cpages, 0ULL);
		ASSERT_EQ(c.faults, 0ULL);
		/* npages * page itself overflows (wraps to 0). */
		ASSERT_EQ(dcmd(dm, o, p, buf, (ULONG_MAX / ps()) + 1, &c), -EINVAL);
		ASSERT_EQ(c.cpages, 0ULL);
		ASSERT_EQ(c.faults, 0ULL);
	}
	/* Nothing was written anywhere. */
	ASSERT_TRUE(all_bytes(buf, n * ps(), 0x5c));
	ASSERT_EQ(page_present(p), 0);
	/* FLAGS and RELEASE with valid arguments. */
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_FLAGS, p, NULL, 0, &c), -EINVAL);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_FLAGS, p, NULL, UHMM_DMIRROR_FLAG_FAIL_ALLOC, &c), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_RELEASE, p, NULL, 1, &c), 0);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, n * ps());
	munmap(buf, n * ps());
}

TEST(cmd_unknown_op)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	char *p = map_anon(ps(), RW);
	char *buf = map_anon(ps(), RW);

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	int ops[] = { 9, 10, 64, 1000, -1, INT_MIN };
	for (unsigned i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
		ASSERT_EQ(dcmd(dm, (enum uhmm_dmirror_op)ops[i], p, buf, 1, &c), -EINVAL);
		ASSERT_EQ(c.cpages, 0ULL);
		ASSERT_EQ(c.faults, 0ULL);
	}
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, ps());
	munmap(buf, ps());
}

TEST(open_close_many)
{
	unsigned long n = 4;
	char *p = map_anon(n * ps(), RW);
	char *buf = map_anon(n * ps(), RW);
	struct uhmm_dmirror_cmd c;

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	fill(p, n, 9);
	for (int i = 0; i < 200; i++) {
		struct uhmm_dmirror *dm = NULL;
		ASSERT_EQ(uhmm_dmirror_open(i & 1, &dm), 0);
		if (i % 20 == 0) {
			memset(buf, 0, n * ps());
			ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), 0);
			ASSERT_EQ(c.cpages, (uint64_t)n);
			ASSERT_EQ(c.faults, 1ULL);
			ASSERT_TRUE(check(buf, n, 9));
		}
		ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	}
	/* Many at once. */
	struct uhmm_dmirror *dms[32];
	for (int i = 0; i < 32; i++)
		ASSERT_EQ(uhmm_dmirror_open(i & 1, &dms[i]), 0);
	for (int i = 31; i >= 0; i--)
		ASSERT_EQ(uhmm_dmirror_close(dms[i]), 0);
	munmap(p, n * ps());
	munmap(buf, n * ps());
}

TEST(two_opens_same_device)
{
	struct uhmm_dmirror *d1, *d2;
	struct uhmm_dmirror_cmd c;
	unsigned long n = 4;
	char *p = map_anon(n * ps(), RW);
	char *buf = map_anon(n * ps(), RW);
	unsigned char snap[4];

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	ASSERT_EQ(uhmm_dmirror_open(0, &d1), 0);
	ASSERT_EQ(uhmm_dmirror_open(0, &d2), 0);
	ASSERT_TRUE(d1 != d2);
	fill(buf, n, 21);
	ASSERT_EQ(dcmd(d1, UHMM_DMIRROR_WRITE, p, buf, n, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)n);
	memset(buf, 0, n * ps());
	ASSERT_EQ(dcmd(d2, UHMM_DMIRROR_READ, p, buf, n, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)n);
	ASSERT_EQ(c.faults, 1ULL);	/* each open has its own page table */
	ASSERT_TRUE(check(buf, n, 21));
	ASSERT_TRUE(check(p, n, 21));
	ASSERT_EQ(dcmd(d1, UHMM_DMIRROR_SNAPSHOT, p, snap, n, &c), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(snap[i], UHMM_DMIRROR_PROT_WRITE);
	ASSERT_EQ(dcmd(d2, UHMM_DMIRROR_SNAPSHOT, p, snap, n, &c), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(snap[i], UHMM_DMIRROR_PROT_WRITE);
	/* Closing one leaves the other working. */
	ASSERT_EQ(uhmm_dmirror_close(d1), 0);
	fill(buf, n, 22);
	ASSERT_EQ(dcmd(d2, UHMM_DMIRROR_WRITE, p, buf, n, &c), 0);
	ASSERT_TRUE(check(p, n, 22));
	ASSERT_EQ(uhmm_dmirror_close(d2), 0);
	/* Data survives the close. */
	ASSERT_TRUE(check(p, n, 22));
	munmap(p, n * ps());
	munmap(buf, n * ps());
}

/* ------------------------------------------------------------------ */
/* READ                                                                 */
/* ------------------------------------------------------------------ */

TEST(read_untouched)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = 16;
	char *p = map_anon(n * ps(), RW);
	char *buf = map_anon(n * ps(), RW);

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	memset(buf, 0xab, n * ps());
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)n);
	ASSERT_EQ(c.faults, 1ULL);
	ASSERT_TRUE(all_bytes(buf, n * ps(), 0));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, n * ps());
	munmap(buf, n * ps());
}

TEST(read_cpu_written)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = 16;
	char *p = map_anon(n * ps(), RW);
	char *buf = map_anon(n * ps(), RW);

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	fill(p, n, 1);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)n);
	ASSERT_EQ(c.faults, 1ULL);
	ASSERT_TRUE(check(buf, n, 1));
	/* The device reads through its mirror: a later CPU store shows. */
	fill(p, n, 2);
	memset(buf, 0, n * ps());
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), 0);
	ASSERT_EQ(c.faults, 0ULL);
	ASSERT_TRUE(check(buf, n, 2));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, n * ps());
	munmap(buf, n * ps());
}

TEST(read_twice_no_fault)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = 8;
	char *p = map_anon(n * ps(), RW);
	char *buf = map_anon(n * ps(), RW);

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	fill(p, n, 3);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), 0);
	ASSERT_EQ(c.faults, 1ULL);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)n);
	ASSERT_EQ(c.faults, 0ULL);
	ASSERT_TRUE(check(buf, n, 3));
	/* A sub-range is mirrored too; a larger range faults once more. */
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p + 2 * ps(), buf, 3, &c), 0);
	ASSERT_EQ(c.cpages, 3ULL);
	ASSERT_EQ(c.faults, 0ULL);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, n * ps());
	munmap(buf, n * ps());
}

TEST(read_large_range)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = 100;	/* spans several 32-page fault chunks */
	char *p = map_anon(n * ps(), RW);
	char *buf = map_anon(n * ps(), RW);

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	fill(p, n, 4);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)n);
	ASSERT_GE(c.faults, 1ULL);
	ASSERT_TRUE(check(buf, n, 4));
	fill(buf, n, 5);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, n, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)n);
	ASSERT_TRUE(check(p, n, 5));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, n * ps());
	munmap(buf, n * ps());
}

TEST(read_zero_page)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = 4;
	char *p = map_anon(n * ps(), RW);
	char *buf = map_anon(n * ps(), RW);
	unsigned char snap[4];

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(*(volatile char *)(p + i * ps()), 0);
	memset(buf, 0xee, n * ps());
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, p, snap, n, &c), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(snap[i], UHMM_DMIRROR_PROT_ZERO | UHMM_DMIRROR_PROT_READ);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)n);
	ASSERT_EQ(c.faults, 1ULL);
	ASSERT_TRUE(all_bytes(buf, n * ps(), 0));
	/* Reading did not make them writable. */
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, p, snap, n, &c), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(snap[i], UHMM_DMIRROR_PROT_ZERO | UHMM_DMIRROR_PROT_READ);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, n * ps());
	munmap(buf, n * ps());
}

TEST(read_prot_none_efault)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = 4;
	char *p = map_anon(n * ps(), RW);
	char *buf = map_anon(n * ps(), RW);

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	memset(p, 0x11, n * ps());
	ASSERT_EQ(mprotect(p, n * ps(), PROT_NONE), 0);
	memset(buf, 0x5a, n * ps());
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), -EFAULT);
	ASSERT_TRUE(all_bytes(buf, n * ps(), 0x5a));
	/* One PROT_NONE page at the end of a readable range. */
	ASSERT_EQ(mprotect(p, (n - 1) * ps(), PROT_READ), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), -EFAULT);
	ASSERT_TRUE(all_bytes(buf, n * ps(), 0x5a));
	/* The readable part alone works. */
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n - 1, &c), 0);
	ASSERT_TRUE(all_bytes(buf, (n - 1) * ps(), 0x11));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, n * ps());
	munmap(buf, n * ps());
}

TEST(read_hole_efault)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = 3;
	char *p = map_anon(n * ps(), RW);
	char *buf = map_anon(n * ps(), RW);

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	memset(p, 0x22, n * ps());
	ASSERT_EQ(munmap(p + ps(), ps()), 0);
	memset(buf, 0x5a, n * ps());
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), -EFAULT);
	ASSERT_TRUE(all_bytes(buf, n * ps(), 0x5a));
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p + ps(), buf, 1, &c), -EFAULT);
	ASSERT_TRUE(all_bytes(buf, n * ps(), 0x5a));
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p + 2 * ps(), buf, 1, &c), 0);
	ASSERT_TRUE(all_bytes(buf, ps(), 0x22));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, ps());
	munmap(p + 2 * ps(), ps());
	munmap(buf, n * ps());
}

/* The device must never read what the process can no longer read. */
TEST(read_after_mprotect_none_efault)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = 4;
	char *p = map_anon(n * ps(), RW);
	char *buf = map_anon(n * ps(), RW);

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	fill(p, n, 6);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), 0);
	ASSERT_EQ(c.faults, 1ULL);
	ASSERT_EQ(mprotect(p + ps(), ps(), PROT_NONE), 0);
	memset(buf, 0x5a, n * ps());
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), -EFAULT);
	ASSERT_TRUE(all_bytes(buf, n * ps(), 0x5a));
	/* Restored, it reads again (after a new fault round). */
	ASSERT_EQ(mprotect(p + ps(), ps(), PROT_READ), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), 0);
	ASSERT_TRUE(check(buf, n, 6));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, n * ps());
	munmap(buf, n * ps());
}

TEST(read_after_munmap_efault)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = 4;
	char *p = map_anon(n * ps(), RW);
	char *buf = map_anon(n * ps(), RW);

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	fill(p, n, 7);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), 0);
	ASSERT_EQ(munmap(p, n * ps()), 0);
	memset(buf, 0x5a, n * ps());
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), -EFAULT);
	ASSERT_TRUE(all_bytes(buf, n * ps(), 0x5a));
	/* A fresh mapping at the same place reads as fresh memory. */
	char *q = mmap(p, n * ps(), RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
		       -1, 0);
	ASSERT_TRUE(q == p);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)n);
	ASSERT_EQ(c.faults, 1ULL);
	ASSERT_TRUE(all_bytes(buf, n * ps(), 0));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, n * ps());
	munmap(buf, n * ps());
}

TEST(read_after_madv_dontneed)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = 4;
	char *p = map_anon(n * ps(), RW);
	char *buf = map_anon(n * ps(), RW);

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	fill(p, n, 8);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), 0);
	ASSERT_TRUE(check(buf, n, 8));
	ASSERT_EQ(madvise(p, n * ps(), MADV_DONTNEED), 0);
	memset(buf, 0x5a, n * ps());
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)n);
	ASSERT_TRUE(all_bytes(buf, n * ps(), 0));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, n * ps());
	munmap(buf, n * ps());
}

/* ------------------------------------------------------------------ */
/* WRITE                                                                */
/* ------------------------------------------------------------------ */

TEST(write_basic)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = 16;
	char *p = map_anon(n * ps(), RW);
	char *buf = map_anon(n * ps(), RW);

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	fill(buf, n, 10);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, n, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)n);
	ASSERT_EQ(c.faults, 1ULL);
	ASSERT_TRUE(check(p, n, 10));
	/* Mirrored writable now: no further fault, for READ neither. */
	fill(buf, n, 11);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, n, &c), 0);
	ASSERT_EQ(c.faults, 0ULL);
	ASSERT_TRUE(check(p, n, 11));
	memset(buf, 0, n * ps());
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), 0);
	ASSERT_EQ(c.faults, 0ULL);
	ASSERT_TRUE(check(buf, n, 11));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	ASSERT_TRUE(check(p, n, 11));
	munmap(p, n * ps());
	munmap(buf, n * ps());
}

TEST(write_after_read_needs_fault)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = 4;
	char *p = map_anon(n * ps(), RW);
	char *buf = map_anon(n * ps(), RW);

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	/* READ of untouched pages mirrors the zero page, read-only. */
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), 0);
	ASSERT_EQ(c.faults, 1ULL);
	fill(buf, n, 12);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, n, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)n);
	ASSERT_EQ(c.faults, 1ULL);
	ASSERT_TRUE(check(p, n, 12));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, n * ps());
	munmap(buf, n * ps());
}

TEST(write_prot_read_eperm)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = 4;
	char *p = map_anon(n * ps(), PROT_READ);
	char *buf = map_anon(n * ps(), RW);

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	fill(buf, n, 13);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, n, &c), -EPERM);
	ASSERT_TRUE(all_bytes(p, n * ps(), 0));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, n * ps());
	munmap(buf, n * ps());
}

/* hmm-tests anon_write_prot. */
TEST(anon_write_prot)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = 4;
	char *p = map_anon(n * ps(), PROT_READ);
	char *buf = map_anon(n * ps(), RW);

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	/* Simulate a device reading the zero page. */
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, 1, &c), 0);
	ASSERT_EQ(c.cpages, 1ULL);
	ASSERT_EQ(c.faults, 1ULL);
	ASSERT_TRUE(all_bytes(buf, ps(), 0));
	/* Writing fails: the mapping is read-only. */
	fill(buf, n, 14);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, n, &c), -EPERM);
	ASSERT_TRUE(all_bytes(p, n * ps(), 0));
	/* Made writable, the device write works after one fault round. */
	ASSERT_EQ(mprotect(p, n * ps(), RW), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, n, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)n);
	ASSERT_EQ(c.faults, 1ULL);
	ASSERT_TRUE(check(p, n, 14));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, n * ps());
	munmap(buf, n * ps());
}

/* A device that mirrored a page writable loses that on mprotect. */
TEST(write_then_mprotect_read)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = 4;
	char *p = map_anon(n * ps(), RW);
	char *buf = map_anon(n * ps(), RW);
	unsigned char snap[4];

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	fill(buf, n, 15);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, n, &c), 0);
	ASSERT_EQ(c.faults, 1ULL);
	ASSERT_TRUE(check(p, n, 15));
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, p, snap, n, &c), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(snap[i], UHMM_DMIRROR_PROT_WRITE);

	ASSERT_EQ(mprotect(p, n * ps(), PROT_READ), 0);
	fill(buf, n, 16);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, n, &c), -EPERM);
	ASSERT_TRUE(check(p, n, 15));
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, p, snap, n, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)n);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(snap[i], UHMM_DMIRROR_PROT_READ);
	/* Reading still works. */
	memset(buf, 0, n * ps());
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), 0);
	ASSERT_TRUE(check(buf, n, 15));
	/* Only one page made read-only: the whole WRITE fails, nothing lands. */
	ASSERT_EQ(mprotect(p, n * ps(), RW), 0);
	ASSERT_EQ(mprotect(p + 3 * ps(), ps(), PROT_READ), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p + 3 * ps(), buf, 1, &c), -EPERM);
	ASSERT_TRUE(check(p, n, 15));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, n * ps());
	munmap(buf, n * ps());
}

TEST(write_unmapped_efault)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = 2;
	char *p = map_anon(n * ps(), RW);
	char *buf = map_anon(n * ps(), RW);

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	ASSERT_EQ(munmap(p, n * ps()), 0);
	fill(buf, n, 17);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, n, &c), -EFAULT);
	/* PROT_NONE is not writable either. */
	char *q = map_anon(ps(), PROT_NONE);
	ASSERT_NOT_NULL(q);
	int rc = dcmd(dm, UHMM_DMIRROR_WRITE, q, buf, 1, &c);
	ASSERT_TRUE(rc == -EFAULT || rc == -EPERM);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(q, ps());
	munmap(buf, n * ps());
}

/* ------------------------------------------------------------------ */
/* File-backed shared memory                                            */
/* ------------------------------------------------------------------ */

TEST(file_shared_write_read)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = 8;
	int fd = make_tmp_file(n * ps());
	char *buf = map_anon(n * ps(), RW);
	char *fbuf = map_anon(n * ps(), RW);

	ASSERT_GE(fd, 0);
	ASSERT_NOT_NULL(buf);
	ASSERT_NOT_NULL(fbuf);
	char *p = mmap(NULL, n * ps(), RW, MAP_SHARED, fd, 0);
	ASSERT_TRUE(p != MAP_FAILED);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);

	fill(buf, n, 18);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, n, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)n);
	ASSERT_EQ(c.faults, 1ULL);
	ASSERT_EQ(pread(fd, fbuf, n * ps(), 0), (ssize_t)(n * ps()));
	ASSERT_TRUE(check(fbuf, n, 18));

	fill(fbuf, n, 19);
	ASSERT_EQ(pwrite(fd, fbuf, n * ps(), 0), (ssize_t)(n * ps()));
	memset(buf, 0, n * ps());
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)n);
	ASSERT_TRUE(check(buf, n, 19));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, n * ps());
	close(fd);
	munmap(buf, n * ps());
	munmap(fbuf, n * ps());
}

TEST(file_read_before_write)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = 4;
	int fd = make_tmp_file(0);
	char *buf = map_anon(n * ps(), RW);

	ASSERT_GE(fd, 0);
	ASSERT_NOT_NULL(buf);
	fill(buf, n, 20);
	ASSERT_EQ(pwrite(fd, buf, n * ps(), 0), (ssize_t)(n * ps()));
	char *p = mmap(NULL, n * ps(), RW, MAP_SHARED, fd, 0);
	ASSERT_TRUE(p != MAP_FAILED);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	memset(buf, 0, n * ps());
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), 0);
	ASSERT_EQ(c.faults, 1ULL);
	ASSERT_TRUE(check(buf, n, 20));
	/* Private file mapping: device writes do not reach the file. */
	char *q = mmap(NULL, n * ps(), RW, MAP_PRIVATE, fd, 0);
	ASSERT_TRUE(q != MAP_FAILED);
	fill(buf, n, 21);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, q, buf, n, &c), 0);
	ASSERT_TRUE(check(q, n, 21));
	ASSERT_TRUE(check(p, n, 20));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, n * ps());
	munmap(q, n * ps());
	close(fd);
	munmap(buf, n * ps());
}

/* ------------------------------------------------------------------ */
/* SNAPSHOT                                                             */
/* ------------------------------------------------------------------ */

TEST(snapshot_mixed)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = 6;
	char *p = map_anon(n * ps(), RW);
	unsigned char snap[6];
	const unsigned char want[6] = {
		UHMM_DMIRROR_PROT_ERROR,	/* unmapped */
		UHMM_DMIRROR_PROT_ERROR,	/* PROT_NONE */
		UHMM_DMIRROR_PROT_NONE,		/* untouched */
		UHMM_DMIRROR_PROT_ZERO | UHMM_DMIRROR_PROT_READ, /* zero page */
		UHMM_DMIRROR_PROT_READ,		/* read-only with data */
		UHMM_DMIRROR_PROT_WRITE,	/* written */
	};

	ASSERT_NOT_NULL(p);
	ASSERT_EQ(munmap(p, ps()), 0);
	ASSERT_EQ(mprotect(p + ps(), ps(), PROT_NONE), 0);
	(void)*(volatile char *)(p + 3 * ps());
	p[4 * ps()] = 1;
	ASSERT_EQ(mprotect(p + 4 * ps(), ps(), PROT_READ), 0);
	p[5 * ps()] = 1;
	memset(snap, 0x77, sizeof(snap));
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, p, snap, n, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)n);
	for (unsigned long i = 0; i < n; i++) {
		TH_LOG("page %lu: 0x%02x (want 0x%02x)", i, snap[i], want[i]);
		ASSERT_EQ(snap[i], want[i]);
	}
	/* Nothing was faulted. */
	ASSERT_EQ(page_present(p + 2 * ps()), 0);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p + ps(), (n - 1) * ps());
}

TEST(snapshot_untouched_and_unmapped)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = 40;	/* more than one 32-page chunk */
	char *p = map_anon(n * ps(), RW);
	unsigned char *snap = map_anon(ps(), RW);

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(snap);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	memset(snap, 0x77, ps());
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, p, snap, n, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)n);
	ASSERT_EQ(c.faults, 0ULL);
	ASSERT_TRUE(all_bytes(snap, n, UHMM_DMIRROR_PROT_NONE));
	ASSERT_EQ(snap[n], 0x77);	/* exactly npages bytes written */
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(page_present(p + i * ps()), 0);
	ASSERT_EQ(munmap(p, n * ps()), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, p, snap, n, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)n);
	for (unsigned long i = 0; i < n; i++)
		if (snap[i] != UHMM_DMIRROR_PROT_ERROR) {
			/* Something was mapped into the application's hole. */
			TH_LOG("page %lu of the hole at %p: 0x%02x", i, (void *)p, snap[i]);
			break;
		}
	if (!UNDER_ASAN)
		ASSERT_TRUE(all_bytes(snap, n, UHMM_DMIRROR_PROT_ERROR));
	ASSERT_EQ(snap[n], 0x77);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(snap, ps());
}

TEST(snapshot_shared_and_file)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = 2;
	unsigned char snap[2];
	char *s = mmap(NULL, n * ps(), RW, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int fd = make_tmp_file(n * ps());

	ASSERT_TRUE(s != MAP_FAILED);
	ASSERT_GE(fd, 0);
	char *f = mmap(NULL, n * ps(), PROT_READ, MAP_PRIVATE, fd, 0);
	ASSERT_TRUE(f != MAP_FAILED);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	s[0] = 1;
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, s, snap, n, &c), 0);
	ASSERT_EQ(snap[0], UHMM_DMIRROR_PROT_WRITE);
	ASSERT_EQ(snap[1], UHMM_DMIRROR_PROT_NONE);
	/* A load whose value is used: valgrind drops unused ones. */
	ASSERT_EQ(*(volatile char *)f, 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, f, snap, 1, &c), 0);
	ASSERT_EQ(snap[0], UHMM_DMIRROR_PROT_READ);	/* page cache, not zero page */
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(s, n * ps());
	munmap(f, n * ps());
	close(fd);
}
