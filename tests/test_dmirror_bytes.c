/* SPDX-License-Identifier: MIT */
/*
 * uhmm_dmirror_access(): byte-granular device loads and stores through the
 * device page table (unaligned, across pages, on read-only and
 * device-resident pages), the access pointer chasing needs.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <uhmm/dmirror.h>
#include <uhmm/uhmm.h>

#include "harness.h"
#include "util.h"

static struct uhmm_dmirror *dopen(int dev)
{
	struct uhmm_dmirror *dm = NULL;

	ASSERT_EQ(uhmm_dmirror_open(dev, &dm), 0);
	return dm;
}

static uint64_t addr_of(const void *p)
{
	return (uint64_t)(uintptr_t)p;
}

/* Loads at odd offsets and lengths, across page boundaries. */
TEST(bytes_read_unaligned)
{
	unsigned long n = 8, len = n * ps();
	char *p = map_anon(len, RW), *buf = malloc(len);
	struct uhmm_dmirror *dm = dopen(0);
	uint64_t f = 99;
	uint32_t v;

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	fill_bytes(p, len, 7);

	/* 20 bytes straddling the boundary of pages 0 and 1. */
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(p + ps() - 7), buf, 20, 0,
				      &f), 0);
	ASSERT_GE(f, 1ULL);
	ASSERT_MEMEQ(buf, p + ps() - 7, 20);
	/* The same again: the entries are there, no fault round. */
	memset(buf, 0, 20);
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(p + ps() - 7), buf, 20, 0,
				      &f), 0);
	ASSERT_EQ(f, 0ULL);
	ASSERT_MEMEQ(buf, p + ps() - 7, 20);

	/* One unaligned word, and a long load over many bounce chunks. */
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(p + 3 * ps() + 1), &v,
				      sizeof(v), 0, NULL), 0);
	ASSERT_EQ(memcmp(&v, p + 3 * ps() + 1, sizeof(v)), 0);
	memset(buf, 0, len);
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(p + 13), buf, len - 29, 0,
				      &f), 0);
	ASSERT_MEMEQ(buf, p + 13, len - 29);
	/* A single byte at the very end of the range. */
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(p + len - 1), buf, 1, 0,
				      NULL), 0);
	ASSERT_EQ(buf[0], p[len - 1]);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	free(buf);
}

/* Stores land where the CPU sees them; neighbouring bytes stay. */
TEST(bytes_write_visible)
{
	unsigned long n = 4, len = n * ps();
	char *p = map_anon(len, RW), *expect = malloc(len);
	struct uhmm_dmirror *dm = dopen(1);
	char src[1000];
	uint64_t f;

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(expect);
	fill_bytes(p, len, 3);
	memcpy(expect, p, len);
	for (unsigned int i = 0; i < sizeof(src); i++)
		src[i] = (char)(i * 7 + 1);

	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(p + 2 * ps() - 500), src,
				      sizeof(src), 1, &f), 0);
	ASSERT_GE(f, 1ULL);
	memcpy(expect + 2 * ps() - 500, src, sizeof(src));
	ASSERT_MEMEQ(p, expect, len);

	/* Never-touched memory: a store faults it in writable. */
	char *q = map_anon(len, RW);

	ASSERT_NOT_NULL(q);
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(q + 3), "hello", 5, 1, &f),
		  0);
	ASSERT_EQ(memcmp(q + 3, "hello", 5), 0);
	ASSERT_EQ(q[0], 0);
	/* And a load of an untouched page reads zeros (the zero page). */
	memset(src, 1, 16);
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(q + 2 * ps() + 5), src, 16,
				      0, NULL), 0);
	for (int i = 0; i < 16; i++)
		ASSERT_EQ(src[i], 0);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	free(expect);
}

/* No mapping: -EFAULT, also for an entry made stale by munmap. */
TEST(bytes_unmapped_efault)
{
	unsigned long len = 3 * ps();
	char *p = map_anon(len, RW);
	struct uhmm_dmirror *dm = dopen(0);
	char buf[64];

	ASSERT_NOT_NULL(p);
	memset(p, 5, len);
	ASSERT_EQ(munmap(p + ps(), ps()), 0);
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(p + ps() + 8), buf, 8, 0,
				      NULL), -EFAULT);
	/* Crossing from a mapped page into the hole. */
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(p + ps() - 4), buf, 8, 0,
				      NULL), -EFAULT);
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(p + ps() - 4), buf, 8, 1,
				      NULL), -EFAULT);

	/* Mirrored, then unmapped: the device must lose access. */
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(p + 2 * ps()), buf, 8, 0,
				      NULL), 0);
	ASSERT_EQ(buf[0], 5);
	ASSERT_EQ(munmap(p + 2 * ps(), ps()), 0);
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(p + 2 * ps()), buf, 8, 0,
				      NULL), -EFAULT);

	/* PROT_NONE. */
	char *q = map_anon(ps(), PROT_NONE);

	ASSERT_NOT_NULL(q);
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(q), buf, 1, 0, NULL),
		  -EFAULT);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* Read-only mappings: loads work, stores give -EPERM. */
TEST(bytes_readonly_eperm)
{
	unsigned long len = 2 * ps();
	char *p = map_anon(len, RW);
	struct uhmm_dmirror *dm = dopen(0);
	char buf[32];

	ASSERT_NOT_NULL(p);
	memset(p, 0x5a, ps());		/* page 1 stays the zero page */
	ASSERT_EQ(mprotect(p, len, PROT_READ), 0);
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(p + ps() - 16), buf, 32, 0,
				      NULL), 0);
	ASSERT_EQ(buf[0], 0x5a);
	ASSERT_EQ(buf[31], 0);
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(p + 1), buf, 4, 1, NULL),
		  -EPERM);
	ASSERT_EQ(p[1], 0x5a);

	/* Mirrored writable, then made read-only: the store is refused. */
	char *q = map_anon(ps(), RW);

	ASSERT_NOT_NULL(q);
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(q + 10), "ab", 2, 1, NULL),
		  0);
	ASSERT_EQ(mprotect(q, ps(), PROT_READ), 0);
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(q + 10), "cd", 2, 1, NULL),
		  -EPERM);
	ASSERT_EQ(memcmp(q + 10, "ab", 2), 0);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* Pages in device memory are read and written there, not brought back. */
TEST(bytes_device_resident)
{
	unsigned long n = 4, len = n * ps();
	char *p = map_anon(len, RW), *mirror = map_anon(len, RW);
	char buf[256], expect[256];
	struct uhmm_dmirror *dm = dopen(0);
	struct uhmm_dmirror_cmd c;
	uint64_t f = 1;
	struct uhmm_features feat = { .size = sizeof(feat) };

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(mirror);
	ASSERT_EQ(uhmm_features(&feat), 0);
	if (!(feat.flags & UHMM_FEAT_MOVE))
		SKIP("no UFFDIO_MOVE: no device memory");
	fill_bytes(p, len, 11);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	ASSERT_EQ(page_present(p), 0);
	ASSERT_TRUE(check_bytes(mirror, len, 11));

	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(p + ps() - 100), buf,
				      sizeof(buf), 0, &f), 0);
	ASSERT_EQ(f, 0ULL);
	ASSERT_MEMEQ(buf, mirror + ps() - 100, sizeof(buf));
	ASSERT_EQ(page_present(p + ps() - 1), 0);
	ASSERT_EQ(page_present(p + ps()), 0);

	/* A device store to device memory, then the CPU faults it back. */
	for (unsigned int i = 0; i < sizeof(expect); i++)
		expect[i] = (char)(0xc3 ^ i);
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(p + 3 * ps() - 50), expect,
				      sizeof(expect), 1, &f), 0);
	ASSERT_EQ(f, 0ULL);
	ASSERT_EQ(page_present(p + 3 * ps()), 0);
	ASSERT_EQ(memcmp(p + 3 * ps() - 50, expect, sizeof(expect)), 0);

	/* After the fault-back the device reads the system page again. */
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(p + 3 * ps() - 50), buf,
				      sizeof(buf), 0, NULL), 0);
	ASSERT_MEMEQ(buf, expect, sizeof(buf));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* The caller's buffer itself on the device: brought back, no deadlock. */
TEST(bytes_buffer_on_device)
{
	char *p = map_anon(ps(), RW), *b = map_anon(ps(), RW);
	char *mirror = map_anon(ps(), RW);
	struct uhmm_dmirror *dm = dopen(0);
	struct uhmm_dmirror_cmd c;
	struct uhmm_features feat = { .size = sizeof(feat) };

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(b);
	ASSERT_EQ(uhmm_features(&feat), 0);
	if (!(feat.flags & UHMM_FEAT_MOVE))
		SKIP("no UFFDIO_MOVE: no device memory");
	memset(p, 0x11, ps());
	memset(b, 0x22, ps());
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, b, mirror, 1, &c), 0);
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(p + 5), b + 100, 64, 0,
				      NULL), 0);
	ASSERT_EQ(b[100], 0x11);
	ASSERT_EQ(b[99], 0x22);
	ASSERT_EQ(b[164], 0x22);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* Arguments. */
TEST(bytes_einval)
{
	struct uhmm_dmirror *dm = dopen(0);
	char buf[8], *p = map_anon(ps(), RW);

	ASSERT_NOT_NULL(p);
	ASSERT_EQ(uhmm_dmirror_access(NULL, addr_of(p), buf, 1, 0, NULL),
		  -EINVAL);
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(p), NULL, 1, 0, NULL),
		  -EINVAL);
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(p), buf, 0, 0, NULL),
		  -EINVAL);
	ASSERT_EQ(uhmm_dmirror_access(dm, UINT64_MAX - 2, buf, 8, 0, NULL),
		  -EINVAL);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

struct node {
	struct node *next;
	uint64_t key;
};

/* Pointer chasing through a malloc'ed list: the device follows next. */
TEST(bytes_pointer_chase)
{
	unsigned long n = 100000, count = 0;
	uint64_t sum = 0, dsum = 0, faults = 0;
	struct node *head = NULL, *cur;
	struct uhmm_dmirror *dm = dopen(0);

	for (unsigned long i = 0; i < n; i++) {
		struct node *nd = malloc(sizeof(*nd));

		ASSERT_NOT_NULL(nd);
		nd->key = i * 2654435761u;
		nd->next = head;
		head = nd;
		sum += nd->key;
	}
	for (int pass = 0; pass < 2; pass++) {
		uint64_t a = addr_of(head);

		count = 0;
		dsum = 0;
		faults = 0;
		while (a) {
			struct node nd;
			uint64_t f = 0;

			ASSERT_EQ(uhmm_dmirror_access(dm, a, &nd, sizeof(nd), 0,
						      &f), 0);
			faults += f;
			dsum += nd.key;
			count++;
			a = addr_of(nd.next);
		}
		ASSERT_EQ(count, n);
		ASSERT_EQ(dsum, sum);
		if (pass == 1)
			ASSERT_EQ(faults, 0ULL);
	}
	while (head) {
		cur = head->next;
		free(head);
		head = cur;
	}
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/*
 * Loads and stores on pages resident on a coherent device: the data are
 * in the frame mapped at the address (the CPU reads and writes it there),
 * not in the frame's pool slot, which is empty while the page is mapped.
 * A store went to the slot and was lost (a load read zeros).
 */
TEST(bytes_coherent_resident)
{
	unsigned long n = 4, len = n * ps();
	char *p = map_anon(len, RW), *buf = malloc(len), src[300];
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;

	require_uffd(true);
	dm = dopen(2);
	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	fill_bytes(p, len, 11);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, buf, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	memset(buf, 0, len);
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(p + ps() - 40), buf, 100, 0,
				      NULL), 0);
	ASSERT_MEMEQ(buf, p + ps() - 40, 100);
	for (unsigned int i = 0; i < sizeof(src); i++)
		src[i] = (char)(i * 5 + 3);
	ASSERT_EQ(uhmm_dmirror_access(dm, addr_of(p + 2 * ps() + 9), src,
				      sizeof(src), 1, NULL), 0);
	ASSERT_EQ(memcmp(p + 2 * ps() + 9, src, sizeof(src)), 0);
	/* Still there once the pages come home. */
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_SYS, p, buf, n, &c), 0);
	ASSERT_EQ(memcmp(p + 2 * ps() + 9, src, sizeof(src)), 0);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	free(buf);
}
