/* SPDX-License-Identifier: MIT */
/*
 * Bad input to every public function: NULL, misaligned, overflowing,
 * zero-length, unmapped, a foreign owner (an object of the parent after
 * fork) and use after close where it is detectable. Each must return the
 * -errno its header documents, never crash, and leave the runtime usable.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uhmm/dma.h>
#include <uhmm/dmirror.h>
#include <uhmm/migrate.h>
#include <uhmm/stats.h>
#include <uhmm/uhmm.h>

#include "harness.h"
#include "util.h"

#define TOP (~0UL & ~(ps() - 1))	/* the last page of the address space */

static bool inv(struct uhmm_interval_notifier *sub,
		const struct uhmm_notifier_range *r, unsigned long seq)
{
	(void)r;
	uhmm_interval_set_seq(sub, seq);
	return true;
}

static const struct uhmm_interval_notifier_ops ops = { .invalidate = inv };
static const struct uhmm_interval_notifier_ops no_ops;

static void init_or_skip(void)
{
	int r = uhmm_init();

	if (r == -ENOSYS)
		SKIP("kernel without PROCMAP_QUERY/PAGEMAP_SCAN");
	ASSERT_EQ(r, 0);
}

/* A runtime still usable: insert, range_fault, remove. */
static void still_usable(void)
{
	char *p = map_anon(2 * ps(), RW);
	struct uhmm_interval_notifier *sub = NULL;
	uint64_t pfns[2];

	ASSERT_NOT_NULL(p);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, (unsigned long)p, 2 * ps(),
						&ops, NULL), 0);
	struct uhmm_range r = {
		.notifier = sub, .start = (unsigned long)p,
		.end = (unsigned long)p + 2 * ps(), .hmm_pfns = pfns,
		.default_flags = FAULT_W,
	};
	int ret;

	do {
		r.notifier_seq = uhmm_interval_read_begin(sub);
		ret = uhmm_range_fault(&r);
	} while (ret == -EBUSY);
	ASSERT_EQ(ret, 0);
	ASSERT_TRUE(pfns[0] & UHMM_PFN_WRITE);
	ASSERT_EQ(uhmm_interval_notifier_remove(sub), 0);
	munmap(p, 2 * ps());
}

TEST(runtime_features_bad)
{
	struct uhmm_features f;

	init_or_skip();
	ASSERT_EQ(uhmm_features(NULL), -EINVAL);
	memset(&f, 0, sizeof(f));
	ASSERT_EQ(uhmm_features(&f), -EINVAL);		/* size 0 */
	f.size = sizeof(f) - 1;
	ASSERT_EQ(uhmm_features(&f), -EINVAL);
	f.size = sizeof(f);
	ASSERT_EQ(uhmm_features(&f), 0);
	ASSERT_NOT_NULL(uhmm_version());
	ASSERT_EQ(uhmm_shutdown(), 0);
	ASSERT_EQ(uhmm_shutdown(), 0);			/* twice: nothing to do */
	still_usable();
}

TEST(notifier_insert_bad)
{
	struct uhmm_interval_notifier *sub = (void *)0x1;
	unsigned long a;
	char *p;

	init_or_skip();
	p = map_anon(4 * ps(), RW);
	ASSERT_NOT_NULL(p);
	a = (unsigned long)p;
	ASSERT_EQ(uhmm_interval_notifier_insert(NULL, a, ps(), &ops, NULL), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, a + 1, ps(), &ops, NULL), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, a, ps() + 1, &ops, NULL), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, a, 0, &ops, NULL), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, TOP, 2 * ps(), &ops, NULL), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, a, -ps(), &ops, NULL), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, a, ps(), NULL, NULL), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, a, ps(), &no_ops, NULL), -EINVAL);
	ASSERT_EQ(sub, (void *)0x1);		/* untouched on failure */
	/* Unmapped memory may be watched, as in the kernel. */
	munmap(p, 4 * ps());
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, a, 4 * ps(), &ops, NULL), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(sub), 0);
	still_usable();
}

TEST(notifier_null_and_foreign)
{
	struct uhmm_interval_notifier *sub = NULL;
	char *p = map_anon(ps(), RW);
	int status;

	init_or_skip();
	ASSERT_NOT_NULL(p);
	ASSERT_EQ(uhmm_interval_notifier_remove(NULL), -EINVAL);
	ASSERT_NULL(uhmm_interval_notifier_priv(NULL));
	ASSERT_EQ(uhmm_interval_read_begin(NULL), 0UL);
	ASSERT_TRUE(uhmm_interval_read_retry(NULL, 1));
	ASSERT_TRUE(uhmm_interval_read_retry(NULL, 0));
	uhmm_interval_set_seq(NULL, 3);		/* no-op */
	(void)uhmm_interval_check_retry(NULL, 1);	/* must not crash */

	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, (unsigned long)p, ps(),
						&ops, (void *)0x77), 0);
	ASSERT_EQ(uhmm_interval_notifier_priv(sub), (void *)0x77);
	pid_t pid = fork();

	ASSERT_GE(pid, 0);
	if (pid == 0) {
		uint64_t pfn;
		struct uhmm_range r = {
			.notifier = sub, .start = (unsigned long)p,
			.end = (unsigned long)p + ps(), .hmm_pfns = &pfn,
		};

		/* The parent's notifier does not exist in the child. */
		if (uhmm_interval_read_begin(sub) != 0)
			_exit(1);
		if (!uhmm_interval_read_retry(sub, 1))
			_exit(2);
		if (uhmm_range_fault(&r) != -EINVAL)
			_exit(3);
		if (uhmm_interval_notifier_remove(sub) != -EINVAL)
			_exit(4);
		_exit(0);
	}
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(WEXITSTATUS(status), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(sub), 0);
	still_usable();
}

TEST(range_fault_bad)
{
	struct uhmm_interval_notifier *sub = NULL;
	uint64_t pfns[4];
	char *p = map_anon(4 * ps(), RW);
	unsigned long a = (unsigned long)p;

	init_or_skip();
	ASSERT_NOT_NULL(p);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, a, 4 * ps(), &ops, NULL), 0);
	struct uhmm_range good = {
		.notifier = sub, .notifier_seq = uhmm_interval_read_begin(sub),
		.start = a, .end = a + 4 * ps(), .hmm_pfns = pfns,
	}, r;

	ASSERT_EQ(uhmm_range_fault(NULL), -EINVAL);
	r = good; r.notifier = NULL;
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	r = good; r.hmm_pfns = NULL;
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	r = good; r.start = a + 1;
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	r = good; r.end = a + 4 * ps() - 1;
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	r = good; r.end = a;				/* empty */
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	r = good; r.start = a + ps(); r.end = a;	/* reversed */
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	r = good; r.end = a + 5 * ps();			/* outside the notifier */
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	r = good; r.start = a - ps();
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	r = good; r.end = 0;				/* overflowed end */
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	/* Unmapped, requested: -EFAULT; not requested: ERROR per page. */
	munmap(p + 2 * ps(), 2 * ps());
	uhmm_range_revalidate(a, a + 4 * ps());
	r = good; r.default_flags = FAULT_R;
	do {
		r.notifier_seq = uhmm_interval_read_begin(sub);
	} while ((uhmm_range_fault(&r)) == -EBUSY && 0);
	ASSERT_EQ(uhmm_range_fault(&r), -EFAULT);
	r = good; r.default_flags = 0;
	r.notifier_seq = uhmm_interval_read_begin(sub);
	ASSERT_EQ(uhmm_range_fault(&r), 0);
	ASSERT_TRUE(pfns[2] & UHMM_PFN_ERROR);
	ASSERT_TRUE(pfns[3] & UHMM_PFN_ERROR);
	ASSERT_EQ(uhmm_interval_notifier_remove(sub), 0);
	munmap(p, 2 * ps());
	still_usable();
}

TEST(revalidate_and_copy_bad)
{
	char *p = map_anon(2 * ps(), RW);
	unsigned long a = (unsigned long)p, fa = 1;
	char buf[64];

	init_or_skip();
	ASSERT_NOT_NULL(p);
	ASSERT_EQ(uhmm_range_revalidate(a + 1, a + ps()), -EINVAL);
	ASSERT_EQ(uhmm_range_revalidate(a, a + ps() + 1), -EINVAL);
	ASSERT_EQ(uhmm_range_revalidate(a, a), -EINVAL);
	ASSERT_EQ(uhmm_range_revalidate(a + ps(), a), -EINVAL);
	munmap(p, 2 * ps());
	ASSERT_EQ(uhmm_range_revalidate(a, a + 2 * ps()), 0);	/* unmapped: fine */
	p = unmapped_page();
	ASSERT_NOT_NULL(p);
	a = (unsigned long)p;

	ASSERT_EQ(uhmm_copy_nofault(buf, NULL, 1, &fa), -EFAULT);
	ASSERT_EQ(fa, 0UL);
	ASSERT_EQ(uhmm_copy_nofault(NULL, buf, 1, NULL), -EFAULT);
	ASSERT_EQ(uhmm_copy_nofault(NULL, NULL, 0, NULL), 0);
	ASSERT_EQ(uhmm_copy_nofault(buf, p, sizeof(buf), &fa), -EFAULT);
	ASSERT_EQ(fa, a);
	ASSERT_EQ(uhmm_copy_nofault(p, buf, sizeof(buf), &fa), -EFAULT);
	/* Ranges running off the end of the address space. */
	ASSERT_EQ(uhmm_copy_nofault(buf, (void *)(TOP + ps() - 8), 16, &fa), -EFAULT);
	ASSERT_EQ(fa, TOP + ps() - 8);
	ASSERT_EQ(uhmm_copy_nofault((void *)(TOP + ps() - 8), buf, 16, &fa), -EFAULT);
	ASSERT_EQ(uhmm_copy_nofault(buf, buf, ~(size_t)0, NULL), -EFAULT);
	still_usable();
}

static void pf(struct uhmm_page *page)
{
	(void)page;
}

static int m2r(struct uhmm_fault *vmf)
{
	(void)vmf;
	return -EIO;
}

TEST(pagemap_bad)
{
	static const struct uhmm_pagemap_ops good = { .page_free = pf, .migrate_to_ram = m2r };
	static const struct uhmm_pagemap_ops no_free = { .migrate_to_ram = m2r };
	static const struct uhmm_pagemap_ops no_m2r = { .page_free = pf };
	struct uhmm_pagemap *pg = (void *)0x1;
	int owner;

	init_or_skip();
	ASSERT_EQ(uhmm_pagemap_create(UHMM_MEMORY_DEVICE_PRIVATE, &owner, &good, 4, NULL), -EINVAL);
	ASSERT_EQ(uhmm_pagemap_create(UHMM_MEMORY_DEVICE_PRIVATE, &owner, NULL, 4, &pg), -EINVAL);
	ASSERT_EQ(uhmm_pagemap_create(UHMM_MEMORY_DEVICE_PRIVATE, &owner, &no_free, 4, &pg), -EINVAL);
	ASSERT_EQ(uhmm_pagemap_create(UHMM_MEMORY_DEVICE_PRIVATE, &owner, &no_m2r, 4, &pg), -EINVAL);
	ASSERT_EQ(uhmm_pagemap_create(UHMM_MEMORY_DEVICE_PRIVATE, &owner, &good, 0, &pg), -EINVAL);
	ASSERT_EQ(uhmm_pagemap_create((enum uhmm_memory_type)0, &owner, &good, 4, &pg), -EINVAL);
	ASSERT_EQ(uhmm_pagemap_create((enum uhmm_memory_type)77, &owner, &good, 4, &pg), -EINVAL);
	int r = uhmm_pagemap_create(UHMM_MEMORY_DEVICE_PRIVATE, &owner, &good, ~0UL / 2, &pg);

	ASSERT_TRUE(r == -EINVAL || r == -ENOMEM);
	ASSERT_EQ(pg, (void *)0x1);		/* untouched on failure */

	ASSERT_EQ(uhmm_pagemap_grow(NULL, 1), -EINVAL);
	ASSERT_EQ(uhmm_pagemap_npages(NULL), 0UL);
	ASSERT_NULL(uhmm_pagemap_page(NULL, 0));
	ASSERT_EQ(uhmm_pagemap_destroy(NULL), -EINVAL);
	ASSERT_NULL(uhmm_page_pgmap(NULL));
	ASSERT_EQ(uhmm_page_index(NULL), 0UL);
	ASSERT_NULL(uhmm_page_owner(NULL));
	ASSERT_NULL(uhmm_page_data(NULL));
	ASSERT_NULL(uhmm_page_addr(NULL));
	ASSERT_EQ(uhmm_page_order(NULL), 0u);
	ASSERT_EQ(uhmm_page_refcount(NULL), 0u);
	uhmm_page_set_data(NULL, NULL);
	uhmm_page_init(NULL);
	uhmm_page_get(NULL);
	uhmm_page_put(NULL);
	ASSERT_NULL(uhmm_pfn_to_page(0));
	ASSERT_NULL(uhmm_pfn_to_page(UHMM_PFN_VALID | 1234));	/* a system page */
	ASSERT_NULL(uhmm_migrate_pfn_to_page(0));
	ASSERT_NULL(uhmm_migrate_pfn_to_addr(0));
	ASSERT_NULL(uhmm_pfn_to_addr(0));
	ASSERT_EQ(uhmm_migrate_pfn_device(NULL) & UHMM_MIGRATE_PFN_MIGRATE, 0ULL);

	ASSERT_EQ(uhmm_pagemap_create(UHMM_MEMORY_DEVICE_PRIVATE, &owner, &good, 4, &pg), 0);
	ASSERT_EQ(uhmm_pagemap_npages(pg), 4UL);
	ASSERT_NULL(uhmm_pagemap_page(pg, 4));
	ASSERT_NULL(uhmm_pagemap_page(pg, ~0UL));
	ASSERT_EQ(uhmm_pagemap_grow(pg, 0), -EINVAL);
	struct uhmm_page *page = uhmm_pagemap_page(pg, 1);

	ASSERT_NOT_NULL(page);
	ASSERT_EQ(uhmm_page_pgmap(page), pg);
	ASSERT_EQ(uhmm_page_owner(page), (const void *)&owner);
	uhmm_page_init(page);
	ASSERT_EQ(uhmm_pagemap_destroy(pg), -EBUSY);	/* a page in use */
	uhmm_page_put(page);
	ASSERT_EQ(uhmm_pagemap_destroy(pg), 0);
	still_usable();
}

TEST(migrate_bad)
{
	uint64_t src[4], dst[4], mpfn = 0;
	char *p = map_anon(4 * ps(), RW), *ro = map_anon(ps(), PROT_READ);
	unsigned long a = (unsigned long)p;
	int owner, r;
	void *dev = (void *)0x1;

	init_or_skip();
	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(ro);
	struct uhmm_migrate good = {
		.start = a, .end = a + 4 * ps(), .src = src, .dst = dst,
		.pgmap_owner = &owner, .flags = UHMM_MIGRATE_SELECT_SYSTEM,
	}, m;

	ASSERT_EQ(uhmm_migrate_setup(NULL), -EINVAL);
	m = good; m.src = NULL;
	ASSERT_EQ(uhmm_migrate_setup(&m), -EINVAL);
	m = good; m.dst = NULL;
	ASSERT_EQ(uhmm_migrate_setup(&m), -EINVAL);
	m = good; m.start = a + 1;
	ASSERT_EQ(uhmm_migrate_setup(&m), -EINVAL);
	m = good; m.end = a + 1;
	ASSERT_EQ(uhmm_migrate_setup(&m), -EINVAL);
	m = good; m.end = a;
	ASSERT_EQ(uhmm_migrate_setup(&m), -EINVAL);
	m = good; m.end = 0;
	ASSERT_EQ(uhmm_migrate_setup(&m), -EINVAL);
	/* Selects nothing: the kernel returns 0 with nothing collected. */
	m = good; m.flags = 0;
	r = uhmm_migrate_setup(&m);
	ASSERT_TRUE(r == 0 || r == -EINVAL);
	if (r == 0) {
		ASSERT_EQ(m.cpages, 0UL);
		uhmm_migrate_pages(&m);
		uhmm_migrate_finalize(&m);
	}
	/* The VMA is looked at only with userfaultfd (else -ENOSYS). */
	struct uhmm_features f = { .size = sizeof(f) };

	ASSERT_EQ(uhmm_features(&f), 0);
	if (f.uffd_path == UHMM_UFFD_NONE) {
		m = good;
		ASSERT_EQ(uhmm_migrate_setup(&m), -ENOSYS);
		ASSERT_EQ(uhmm_make_device_exclusive(a, &owner, &dev), -ENOSYS);
		ASSERT_EQ(uhmm_make_device_exclusive(0, &owner, &dev), -EINVAL);
		ASSERT_EQ(uhmm_make_device_exclusive(a + 1, &owner, &dev), -EINVAL);
		ASSERT_EQ(uhmm_make_device_exclusive(a, &owner, NULL), -EINVAL);
		still_usable();
		return;
	}
	m = good; m.start = TOP - ps(); m.end = TOP;	/* unmapped */
	ASSERT_EQ(uhmm_migrate_setup(&m), -EINVAL);
	/* Not one VMA: the range runs into an unmapped page. */
	munmap(p + 3 * ps(), ps());
	m = good;
	ASSERT_EQ(uhmm_migrate_setup(&m), -EINVAL);
	/* A fault_page that is a device page no CPU access is faulting on. */
	static const struct uhmm_pagemap_ops pops = { .page_free = pf, .migrate_to_ram = m2r };
	struct uhmm_pagemap *pg = NULL;

	ASSERT_EQ(uhmm_pagemap_create(UHMM_MEMORY_DEVICE_PRIVATE, &owner, &pops, 1, &pg), 0);
	m = good; m.end = a + ps(); m.fault_page = uhmm_pagemap_page(pg, 0);
	m.flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE;
	r = uhmm_migrate_setup(&m);
	ASSERT_TRUE(r == -EINVAL || (r == 0 && m.cpages == 0));
	if (r == 0) {
		uhmm_migrate_pages(&m);
		uhmm_migrate_finalize(&m);
	}
	ASSERT_EQ(uhmm_pagemap_destroy(pg), 0);
	uhmm_migrate_pages(NULL);
	uhmm_migrate_finalize(NULL);

	ASSERT_EQ(uhmm_migrate_alloc_system(NULL), -EINVAL);
	ASSERT_EQ(uhmm_migrate_alloc_system_compound(NULL), -EINVAL);
	r = uhmm_migrate_alloc_system(&mpfn);

	if (r == 0) {
		ASSERT_TRUE(mpfn & UHMM_MIGRATE_PFN_VALID);
		uint64_t none = 0;

		/* Give it back: a finalize with nothing migrated frees dst. */
		uhmm_migrate_device_finalize(&none, &mpfn, 1);
	} else {
		ASSERT_EQ(r, -ENOSYS);
	}
	ASSERT_EQ(uhmm_migrate_device_range(NULL, NULL, 0, 1), -EINVAL);
	ASSERT_EQ(uhmm_migrate_device_range(src, NULL, 0, 1), -EINVAL);
	uhmm_migrate_device_finalize(NULL, NULL, 0);
	uhmm_migrate_device_finalize(NULL, NULL, 4);

	ASSERT_EQ(uhmm_make_device_exclusive(0, &owner, &dev), -EINVAL);
	ASSERT_EQ(uhmm_make_device_exclusive(a + 1, &owner, &dev), -EINVAL);
	ASSERT_EQ(uhmm_make_device_exclusive(a, &owner, NULL), -EINVAL);
	ASSERT_EQ(uhmm_make_device_exclusive(a + 3 * ps(), &owner, &dev), -EINVAL);
	ASSERT_EQ(uhmm_make_device_exclusive((unsigned long)ro, &owner, &dev), -EINVAL);
	ASSERT_EQ(dev, (void *)0x1);
	still_usable();
}

TEST(pagemap_device_range_bad)
{
	static const struct uhmm_pagemap_ops good = { .page_free = pf, .migrate_to_ram = m2r };
	struct uhmm_pagemap *pg = NULL;
	uint64_t src[8];
	int owner;

	init_or_skip();
	ASSERT_EQ(uhmm_pagemap_create(UHMM_MEMORY_DEVICE_PRIVATE, &owner, &good, 4, &pg), 0);
	ASSERT_EQ(uhmm_migrate_device_range(src, pg, 0, 0), -EINVAL);
	ASSERT_EQ(uhmm_migrate_device_range(src, pg, 3, 2), -EINVAL);
	ASSERT_EQ(uhmm_migrate_device_range(src, pg, 4, 1), -EINVAL);
	ASSERT_EQ(uhmm_migrate_device_range(src, pg, ~0UL, 2), -EINVAL);
	ASSERT_EQ(uhmm_migrate_device_range(src, pg, 0, 4), 0);	/* nothing in use */
	for (int i = 0; i < 4; i++)
		ASSERT_EQ(src[i] & UHMM_MIGRATE_PFN_MIGRATE, 0ULL);
	ASSERT_EQ(uhmm_pagemap_destroy(pg), 0);
}

static struct uhmm_dmirror *dm_or_skip(void)
{
	struct uhmm_dmirror *dm = NULL;
	int r;

	init_or_skip();
	r = uhmm_dmirror_open(0, &dm);
	if (r == -ENOSYS)
		SKIP("dmirror device 0 needs userfaultfd");
	ASSERT_EQ(r, 0);
	return dm;
}

TEST(dmirror_open_close_bad)
{
	struct uhmm_dmirror *dm = (void *)0x1;
	int status;

	init_or_skip();
	ASSERT_EQ(uhmm_dmirror_open(0, NULL), -EINVAL);
	ASSERT_EQ(uhmm_dmirror_open(-1, &dm), -ENODEV);
	ASSERT_EQ(uhmm_dmirror_open(4, &dm), -ENODEV);
	ASSERT_EQ(uhmm_dmirror_open(1 << 30, &dm), -ENODEV);
	ASSERT_EQ(dm, (void *)0x1);
	ASSERT_EQ(uhmm_dmirror_close(NULL), -EINVAL);
	dm = dm_or_skip();

	pid_t pid = fork();

	ASSERT_GE(pid, 0);
	if (pid == 0) {
		char *p = map_anon(ps(), RW);
		struct uhmm_dmirror_cmd c;

		/* The parent's open is not the child's. */
		if (dcmd(dm, UHMM_DMIRROR_READ, p, p, 1, &c) != -EBADF)
			_exit(1);
		if (uhmm_dmirror_close(dm) != -EBADF)
			_exit(2);
		_exit(0);
	}
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(WEXITSTATUS(status), 0);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	still_usable();
}

TEST(dmirror_cmd_bad)
{
	struct uhmm_dmirror *dm = dm_or_skip();
	struct uhmm_dmirror_cmd c;
	char *p = map_anon(4 * ps(), RW), *buf = map_anon(4 * ps(), RW);
	char *none = map_anon(ps(), PROT_NONE), *ro = map_anon(ps(), PROT_READ);
	char *gone = unmapped_page();
	unsigned char snap[4];

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	ASSERT_NOT_NULL(none);
	ASSERT_NOT_NULL(ro);
	ASSERT_NOT_NULL(gone);
	ASSERT_EQ(uhmm_dmirror_cmd(NULL, UHMM_DMIRROR_READ, &c), -EINVAL);
	ASSERT_EQ(uhmm_dmirror_cmd(dm, UHMM_DMIRROR_READ, NULL), -EINVAL);
	ASSERT_EQ(dcmd(dm, (enum uhmm_dmirror_op)99, p, buf, 1, &c), -EINVAL);
	ASSERT_EQ(dcmd(dm, (enum uhmm_dmirror_op)-1, p, buf, 1, &c), -EINVAL);
	for (int op = UHMM_DMIRROR_READ; op <= UHMM_DMIRROR_CHECK_EXCLUSIVE; op++) {
		if (op == UHMM_DMIRROR_MIGRATE_TO_SYS)
			continue;	/* takes no buffer */
		ASSERT_EQ(dcmd(dm, (enum uhmm_dmirror_op)op, p + 1, buf, 1, &c), -EINVAL);
		ASSERT_EQ(dcmd(dm, (enum uhmm_dmirror_op)op, p, buf, 0, &c), -EINVAL);
		ASSERT_EQ(dcmd(dm, (enum uhmm_dmirror_op)op, (void *)TOP, buf, 2, &c), -EINVAL);
		ASSERT_EQ(dcmd(dm, (enum uhmm_dmirror_op)op, p, buf, ~0UL / 2, &c), -EINVAL);
	}
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_SYS, p + 1, NULL, 1, &c), -EINVAL);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, 0, &c), -EINVAL);

	/* Memory the process cannot access. */
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, gone, buf, 1, &c), -EFAULT);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, none, buf, 1, &c), -EFAULT);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, gone, buf, 1, &c), -EFAULT);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, none, buf, 1, &c), -EFAULT);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, ro, buf, 1, &c), -EPERM);
	/* A buffer (ptr) the process cannot access. */
	fill(p, 1, 5);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, NULL, 1, &c), -EFAULT);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, gone, 1, &c), -EFAULT);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, ro, 1, &c), -EFAULT);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, none, 1, &c), -EFAULT);
	ASSERT_TRUE(check(p, 1, 5));		/* nothing written */
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, p, gone, 1, &c), -EFAULT);
	/* SNAPSHOT of unmapped memory: per-page ERROR, not a failure. */
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, gone, snap, 1, &c), 0);
	ASSERT_EQ(snap[0], UHMM_DMIRROR_PROT_ERROR);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	still_usable();
}

static void noop_done(struct uhmm_dma_batch *b)
{
	(void)b;
}

TEST(dma_bad)
{
	struct uhmm_dma *dma = (void *)0x1, *other = NULL;
	char a[64], b[64];
	struct uhmm_dma_desc d = { .dst = a, .src = b, .len = sizeof(a) };
	struct uhmm_dma_batch bt = { .desc = &d, .n = 1 }, never = { .desc = &d, .n = 1 };

	ASSERT_EQ(uhmm_dma_create(1, NULL), -EINVAL);
	ASSERT_EQ(uhmm_dma_create(UHMM_DMA_MAX_THREADS + 1, &dma), -EINVAL);
	ASSERT_EQ(uhmm_dma_create(~0u, &dma), -EINVAL);
	ASSERT_EQ(dma, (void *)0x1);
	ASSERT_EQ(uhmm_dma_destroy(NULL), 0);
	ASSERT_FALSE(uhmm_dma_done(NULL));
	ASSERT_FALSE(uhmm_dma_done(&never));
	ASSERT_EQ(uhmm_dma_threads(NULL), 0u);
	ASSERT_EQ(uhmm_dma_create(1, &dma), 0);
	ASSERT_EQ(uhmm_dma_create(0, &other), 0);
	ASSERT_EQ(uhmm_dma_submit(NULL, &bt), -EINVAL);
	ASSERT_EQ(uhmm_dma_submit(dma, NULL), -EINVAL);
	struct uhmm_dma_batch nodesc = { .n = 1 }, huge = { .desc = &d, .n = UHMM_DMA_MAX_DESC };

	ASSERT_EQ(uhmm_dma_submit(dma, &nodesc), -EINVAL);
	ASSERT_EQ(uhmm_dma_submit(dma, &huge), -EINVAL);
	ASSERT_EQ(uhmm_dma_wait(NULL, &bt), -EINVAL);
	ASSERT_EQ(uhmm_dma_wait(dma, NULL), -EINVAL);
	ASSERT_EQ(uhmm_dma_wait(dma, &never), -EINVAL);	/* never submitted */
	bt.done = noop_done;
	ASSERT_EQ(uhmm_dma_submit(dma, &bt), 0);
	ASSERT_EQ(uhmm_dma_wait(dma, &bt), 0);
	ASSERT_EQ(uhmm_dma_wait(other, &bt), -EINVAL);	/* another engine's */
	/* Faulting descriptors: -EFAULT in the batch, never a signal. */
	struct uhmm_dma_desc bad[2] = {
		{ .dst = a, .src = NULL, .len = 8 },
		{ .dst = (void *)TOP, .src = b, .len = 8 },
	};
	struct uhmm_dma_batch bb = { .desc = bad, .n = 2 };

	ASSERT_EQ(uhmm_dma_submit(dma, &bb), 0);
	ASSERT_EQ(uhmm_dma_wait(dma, &bb), -EFAULT);
	ASSERT_EQ(bb.error_index, 0UL);
	ASSERT_EQ(uhmm_dma_destroy(other), 0);
	ASSERT_EQ(uhmm_dma_destroy(dma), 0);
}

TEST(stats_bad)
{
	struct uhmm_stats st;

	ASSERT_EQ(uhmm_stats_get(NULL, sizeof(st)), -EINVAL);
	ASSERT_EQ(uhmm_stats_get(&st, 0), -EINVAL);
	ASSERT_EQ(uhmm_stats_get(&st, 7), -EINVAL);
	ASSERT_EQ(uhmm_stats_get(&st, 8), 0);
	ASSERT_EQ(st.size, 8u);
	ASSERT_EQ(uhmm_stats_get(&st, sizeof(st) + 100), 0);
	ASSERT_EQ(st.size, (uint32_t)sizeof(st));
	uhmm_stats_reset();
}

TEST(dmirror_access_bad)
{
	struct uhmm_dmirror *dm = dm_or_skip();
	char *p = map_anon(2 * ps(), RW), *ro = map_anon(ps(), PROT_READ);
	char *gone = unmapped_page(), buf[64];
	uint64_t f = 7, a;

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(ro);
	ASSERT_NOT_NULL(gone);
	a = (uint64_t)(uintptr_t)p;
	ASSERT_EQ(uhmm_dmirror_access(NULL, a, buf, 8, 0, &f), -EINVAL);
	ASSERT_EQ(f, 0ULL);			/* cleared even on failure */
	ASSERT_EQ(uhmm_dmirror_access(dm, a, NULL, 8, 0, NULL), -EINVAL);
	ASSERT_EQ(uhmm_dmirror_access(dm, a, buf, 0, 0, NULL), -EINVAL);
	ASSERT_EQ(uhmm_dmirror_access(dm, ~0ULL - 4, buf, 8, 0, NULL), -EINVAL);
	/* Device loads and stores the process could not do. */
	ASSERT_EQ(uhmm_dmirror_access(dm, (uint64_t)(uintptr_t)gone, buf, 8, 0, NULL), -EFAULT);
	ASSERT_EQ(uhmm_dmirror_access(dm, (uint64_t)(uintptr_t)gone, buf, 8, 1, NULL), -EFAULT);
	ASSERT_EQ(uhmm_dmirror_access(dm, (uint64_t)(uintptr_t)ro, buf, 8, 1, NULL), -EPERM);
	/* A buffer the process cannot access. */
	p[5] = 42;
	ASSERT_EQ(uhmm_dmirror_access(dm, a, gone, 8, 0, NULL), -EFAULT);
	ASSERT_EQ(uhmm_dmirror_access(dm, a, ro, 8, 0, NULL), -EFAULT);
	ASSERT_EQ(uhmm_dmirror_access(dm, a, gone, 8, 1, NULL), -EFAULT);
	ASSERT_EQ(p[5], 42);
	/* Unaligned and across a page boundary: fine. */
	memset(buf, 9, sizeof(buf));
	ASSERT_EQ(uhmm_dmirror_access(dm, a + ps() - 3, buf, 6, 1, NULL), 0);
	ASSERT_EQ(p[ps() - 1], 9);
	ASSERT_EQ(p[ps() + 2], 9);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	still_usable();
}
