/* SPDX-License-Identifier: MIT */
/*
 * uhmm_alloc(): memory uhmm never migrates. Sizes across the classes and
 * big blocks, alignment, zeroing, reuse, realloc, threads; and that
 * migration refuses it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <uhmm/dmirror.h>
#include <uhmm/migrate.h>
#include <uhmm/uhmm.h>

#include "harness.h"
#include "util.h"

/* Internal (the tests link the static library): the arena's range. */
bool uhmm__alloc_owns(unsigned long start, unsigned long end);

TEST(alloc_sizes_alignment_and_zeroing)
{
	static const size_t sizes[] = { 0, 1, 15, 16, 17, 100, 1000, 4095, 4096,
					4097, 65536, 1 << 20, 64 << 20 };

	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		size_t n = sizes[k];
		unsigned char *p = uhmm_alloc(n), *z = uhmm_calloc(1, n);

		ASSERT_NOT_NULL(p);
		ASSERT_NOT_NULL(z);
		ASSERT_EQ((uintptr_t)p % 16, 0UL);
		if (n > 4096)
			ASSERT_EQ((uintptr_t)p % 4096, 0UL);
		for (size_t i = 0; i < n; i++)
			ASSERT_EQ(z[i], 0);
		memset(p, 0xa5, n);
		memset(z, 0x5a, n);
		for (size_t i = 0; i < n; i += 4093)
			ASSERT_EQ(p[i], 0xa5);
		uhmm_free(p);
		uhmm_free(z);
	}
	uhmm_free(NULL);
	ASSERT_NULL(uhmm_calloc(SIZE_MAX / 2, 4));
}

/* Reused memory comes back zeroed from calloc, and realloc keeps data. */
TEST(alloc_reuse_and_realloc)
{
	for (int round = 0; round < 3; round++) {
		unsigned char *a = uhmm_alloc(200), *b = uhmm_alloc(100 << 10);

		ASSERT_NOT_NULL(a);
		ASSERT_NOT_NULL(b);
		memset(a, 0xff, 200);
		memset(b, 0xff, 100 << 10);
		uhmm_free(a);
		uhmm_free(b);
		a = uhmm_calloc(200, 1);
		b = uhmm_calloc(100 << 10, 1);
		for (size_t i = 0; i < 200; i++)
			ASSERT_EQ(a[i], 0);
		for (size_t i = 0; i < (100 << 10); i++)
			ASSERT_EQ(b[i], 0);
		for (size_t i = 0; i < 200; i++)
			a[i] = (unsigned char)i;
		a = uhmm_realloc(a, 5000);
		ASSERT_NOT_NULL(a);
		for (size_t i = 0; i < 200; i++)
			ASSERT_EQ(a[i], (unsigned char)i);
		a = uhmm_realloc(a, 300000);
		ASSERT_NOT_NULL(a);
		for (size_t i = 0; i < 200; i++)
			ASSERT_EQ(a[i], (unsigned char)i);
		uhmm_free(a);
		uhmm_free(b);
	}
	void *q = uhmm_realloc(NULL, 10);

	ASSERT_NOT_NULL(q);
	uhmm_free(q);
}

static void *churn(void *arg)
{
	unsigned int seed = (unsigned int)(uintptr_t)arg;
	void *keep[64] = { 0 };
	uintptr_t bad = 0;

	for (int i = 0; i < 20000; i++) {
		int k = (int)((seed = seed * 1103515245u + 12345u) >> 16) % 64;
		size_t n = ((seed >> 8) % 3 == 0) ? 9000 : (seed >> 4) % 3000 + sizeof(unsigned int);

		if (keep[k]) {
			if (*(unsigned int *)keep[k] != (unsigned int)k)
				bad++;
			uhmm_free(keep[k]);
		}
		keep[k] = uhmm_alloc(n);
		if (!keep[k])
			return (void *)1;
		*(unsigned int *)keep[k] = (unsigned int)k;
	}
	for (int k = 0; k < 64; k++)
		uhmm_free(keep[k]);
	return (void *)bad;
}

TEST(alloc_threads)
{
	pthread_t t[4];

	for (uintptr_t i = 0; i < 4; i++)
		ASSERT_EQ(pthread_create(&t[i], NULL, churn, (void *)(i + 1)), 0);
	for (int i = 0; i < 4; i++) {
		void *r;

		ASSERT_EQ(pthread_join(t[i], &r), 0);
		ASSERT_NULL(r);
	}
}

/* Migration leaves uhmm_alloc() memory where it is. */
TEST(alloc_memory_is_never_migrated)
{
	size_t n = 8;
	char *p = uhmm_alloc(n * ps()), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm = NULL;
	struct uhmm_dmirror_cmd c;
	void *dev_addr;

	require_uffd(true);
	if (!uhmm__alloc_owns((uintptr_t)p, (uintptr_t)p + 1))
		SKIP("uhmm_alloc is malloc here (sanitizer or valgrind)");
	memset(p, 7, n * ps());
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, n, &c), -ENOENT);
	ASSERT_EQ(page_present(p), 1);
	ASSERT_EQ(uhmm_make_device_exclusive((uintptr_t)p, dm, &dev_addr), -EINVAL);
	for (size_t i = 0; i < n * ps(); i++)
		ASSERT_EQ(p[i], 7);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	uhmm_free(p);
}
