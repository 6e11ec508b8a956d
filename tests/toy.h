/* SPDX-License-Identifier: MIT */
/*
 * A toy device for the tests of the migration API (test_migrate,
 * test_driver_api): the pages of a pagemap, backed by a buffer of the
 * test's own, and its migration of system pages to them. Included
 * twice: first (with DEV_PAGES defined) for TOY_FIELDS, which begins the
 * includer's struct toy; then, after the global `toy`, for the
 * functions. The includer's page_free calls toy_give_back(), and its
 * toy_init() calls toy_setup() with its ops.
 */
#ifndef TOY_FIELDS

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <uhmm/migrate.h>
#include "harness.h"
#include "util.h"

#define TOY_FIELDS							\
	struct uhmm_pagemap *pg;					\
	char *mem;			/* DEV_PAGES pages of memory */	\
	pthread_mutex_t lock;						\
	unsigned long free[DEV_PAGES];					\
	unsigned long nfree

#elif !defined(UHMM_TESTS_TOY_FUNCS)
#define UHMM_TESTS_TOY_FUNCS

TH_UNUSED static void toy_give_back(struct uhmm_page *p)
{
	pthread_mutex_lock(&toy.lock);
	toy.free[toy.nfree++] = uhmm_page_index(p);
	pthread_mutex_unlock(&toy.lock);
}

/* Free pages now (page_free runs on uhmm's threads). */
TH_UNUSED static unsigned long toy_nfree(void)
{
	unsigned long n;

	pthread_mutex_lock(&toy.lock);
	n = toy.nfree;
	pthread_mutex_unlock(&toy.lock);
	return n;
}

TH_UNUSED static char *toy_mem(struct uhmm_page *p)
{
	return toy.mem + uhmm_page_index(p) * ps();
}

TH_UNUSED static struct uhmm_page *toy_alloc(void)
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

/* A fresh device with @ops (skips where there is no userfaultfd). */
TH_UNUSED static void toy_setup(const struct uhmm_pagemap_ops *ops)
{
	require_uffd(true);
	memset(&toy, 0, sizeof(toy));
	pthread_mutex_init(&toy.lock, NULL);
	toy.mem = map_anon(DEV_PAGES * ps(), RW);
	ASSERT_NOT_NULL(toy.mem);
	ASSERT_EQ(uhmm_pagemap_create(UHMM_MEMORY_DEVICE_PRIVATE, &toy, ops,
				      DEV_PAGES, &toy.pg), 0);
	for (unsigned long i = 0; i < DEV_PAGES; i++)
		toy.free[toy.nfree++] = DEV_PAGES - 1 - i;
}

/* System -> device for [p, p + n pages); returns pages migrated. */
TH_UNUSED static long toy_to_dev(char *p, unsigned long n)
{
	uint64_t *src = calloc(n, 8), *dst = calloc(n, 8);
	struct uhmm_migrate m = {
		.start = (unsigned long)p, .end = (unsigned long)p + n * ps(),
		.src = src, .dst = dst, .pgmap_owner = &toy,
		.flags = UHMM_MIGRATE_SELECT_SYSTEM,
	};
	long moved = 0;
	int r = uhmm_migrate_setup(&m);

	if (r) {
		free(src);
		free(dst);
		return r;
	}
	for (unsigned long i = 0; i < n; i++) {
		struct uhmm_page *dp;

		if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			continue;
		dp = toy_alloc();
		if (!dp)
			continue;
		if (src[i] & UHMM_MIGRATE_PFN_VALID)
			memcpy(toy_mem(dp), uhmm_migrate_pfn_to_addr(src[i]), ps());
		else
			memset(toy_mem(dp), 0, ps());
		dst[i] = uhmm_migrate_pfn_device(dp);
	}
	uhmm_migrate_pages(&m);
	for (unsigned long i = 0; i < n; i++)
		moved += !!(src[i] & UHMM_MIGRATE_PFN_MIGRATE);
	uhmm_migrate_finalize(&m);
	/* Pages the driver allocated but that did not move. */
	for (unsigned long i = 0; i < n; i++)
		if (dst[i] && !(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			uhmm_page_put(uhmm_migrate_pfn_to_page(dst[i]));
	free(src);
	free(dst);
	return moved;
}

#endif /* TOY_FIELDS, UHMM_TESTS_TOY_FUNCS */
