/* SPDX-License-Identifier: MIT */
/*
 * Device memory and migrate_vma on a minimal driver: migrate to a
 * device-private pagemap and back, CPU fault-back from user code and from
 * the kernel inside read(2)/write(2), holes, shared memory, concurrency.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <sys/wait.h>

#include <uhmm/migrate.h>
#include "harness.h"
#include "util.h"

#define DEV_PAGES 4096
#include "toy.h"

/* A toy device: pages of a pagemap, backed by a buffer of its own. */
struct toy {
	TOY_FIELDS;
	atomic_int to_ram_calls;
	atomic_int freed;
};

static struct toy toy;

#include "toy.h"

static void toy_page_free(struct uhmm_page *p)
{
	toy_give_back(p);
	atomic_fetch_add(&toy.freed, 1);
}

static int toy_to_ram(unsigned long start, unsigned long end,
		      struct uhmm_page *fault_page, unsigned long *moved)
{
	unsigned long n = (end - start) / ps();
	uint64_t *src = calloc(n, 8), *dst = calloc(n, 8);
	struct uhmm_migrate m = {
		.start = start, .end = end, .src = src, .dst = dst,
		.pgmap_owner = &toy,
		.flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE,
		.fault_page = fault_page,
	};
	int r = uhmm_migrate_setup(&m);

	if (r)
		goto out;
	for (unsigned long i = 0; i < n; i++) {
		struct uhmm_page *sp = uhmm_migrate_pfn_to_page(src[i]);

		if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE) || !sp)
			continue;
		if (uhmm_migrate_alloc_system(&dst[i]))
			continue;
		memcpy(uhmm_migrate_pfn_to_addr(dst[i]), toy_mem(sp), ps());
	}
	uhmm_migrate_pages(&m);
	if (moved) {
		*moved = 0;
		for (unsigned long i = 0; i < n; i++)
			*moved += !!(src[i] & UHMM_MIGRATE_PFN_MIGRATE);
	}
	uhmm_migrate_finalize(&m);
out:
	free(src);
	free(dst);
	return r;
}

static int toy_migrate_to_ram(struct uhmm_fault *vmf)
{
	atomic_fetch_add(&toy.to_ram_calls, 1);
	return toy_to_ram(vmf->address, vmf->address + ps(), vmf->page, NULL);
}

static const struct uhmm_pagemap_ops toy_ops = {
	.page_free = toy_page_free,
	.migrate_to_ram = toy_migrate_to_ram,
};

static void toy_init(void)
{
	toy_setup(&toy_ops);
}

static void fill_pattern(char *p, unsigned long n, int seed)
{
	for (unsigned long i = 0; i < n * ps() / 8; i++)
		((uint64_t *)p)[i] = (uint64_t)i * 2654435761u + (uint64_t)seed;
}

static bool check_pattern(const char *p, unsigned long n, int seed)
{
	for (unsigned long i = 0; i < n * ps() / 8; i++)
		if (((const uint64_t *)p)[i] != (uint64_t)i * 2654435761u + (uint64_t)seed)
			return false;
	return true;
}

static bool noop_inv(struct uhmm_interval_notifier *sub,
		     const struct uhmm_notifier_range *r, unsigned long seq)
{
	(void)r;
	uhmm_interval_set_seq(sub, seq);
	return true;
}

static const struct uhmm_interval_notifier_ops noop_ops = { .invalidate = noop_inv };

static bool resident(const char *p)
{
	unsigned char v = 0;

	mincore((void *)p, ps(), &v);
	return v & 1;
}

TEST(pagemap_bad_args)
{
	struct uhmm_pagemap *pg;

	ASSERT_EQ(uhmm_pagemap_create(UHMM_MEMORY_DEVICE_PRIVATE, &toy, NULL, 1, &pg), -EINVAL);
	ASSERT_EQ(uhmm_pagemap_create(UHMM_MEMORY_DEVICE_PRIVATE, &toy, &toy_ops, 0, &pg), -EINVAL);
	ASSERT_EQ(uhmm_pagemap_create(UHMM_MEMORY_DEVICE_PRIVATE, &toy, &toy_ops, 1, NULL), -EINVAL);
	ASSERT_EQ(uhmm_pagemap_create(7, &toy, &toy_ops, 1, &pg), -EINVAL);
	ASSERT_EQ(uhmm_pagemap_create(UHMM_MEMORY_DEVICE_PRIVATE, &toy, &toy_ops, 8, &pg), 0);
	ASSERT_EQ(uhmm_pagemap_npages(pg), 8);
	ASSERT_EQ(uhmm_pagemap_grow(pg, 8), 8);
	ASSERT_EQ(uhmm_pagemap_npages(pg), 16);
	ASSERT_NOT_NULL(uhmm_pagemap_page(pg, 15));
	ASSERT_NULL(uhmm_pagemap_page(pg, 16));
	uhmm_page_init(uhmm_pagemap_page(pg, 3));
	ASSERT_EQ(uhmm_pagemap_destroy(pg), -EBUSY);
	ASSERT_EQ(uhmm_page_refcount(uhmm_pagemap_page(pg, 3)), 1);
	/* The last put gives the page back to the driver. */
	memset(&toy, 0, sizeof(toy));
	pthread_mutex_init(&toy.lock, NULL);
	uhmm_page_put(uhmm_pagemap_page(pg, 3));
	ASSERT_EQ(atomic_load(&toy.freed), 1);
	ASSERT_EQ(uhmm_pagemap_destroy(pg), 0);
}

TEST(migrate_setup_bad_args)
{
	uint64_t src[2], dst[2];
	char *p = map_anon(2 * ps(), RW);
	struct uhmm_migrate m = { .start = (unsigned long)p, .end = (unsigned long)p + 2 * ps(),
				  .src = src, .dst = dst,
				  .flags = UHMM_MIGRATE_SELECT_SYSTEM };

	ASSERT_EQ(uhmm_migrate_setup(NULL), -EINVAL);
	m.start++;
	ASSERT_EQ(uhmm_migrate_setup(&m), -EINVAL);
	m.start--;
	m.src = NULL;
	ASSERT_EQ(uhmm_migrate_setup(&m), -EINVAL);
	m.src = src;
	m.end = m.start;
	ASSERT_EQ(uhmm_migrate_setup(&m), -EINVAL);
	/* Beyond the VMA (looked at only with userfaultfd: else -ENOSYS). */
	require_uffd(true);
	m.end = m.start + 2 * ps();
	ASSERT_EQ(munmap(p + ps(), ps()), 0);
	ASSERT_EQ(uhmm_migrate_setup(&m), -EINVAL);
}

TEST(migrate_to_device_and_fault_back)
{
	unsigned long n = 64;
	char *p = map_anon(n * ps(), RW);
	uint64_t pfns[64] = { 0 };	/* DMA_MAPPED, P2PDMA* are sticky inputs */
	struct uhmm_interval_notifier *sub;

	toy_init();
	fill_pattern(p, n, 1);
	ASSERT_EQ(toy_to_dev(p, n), (long)n);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_FALSE(resident(p + i * ps()));

	/* range_fault: the owner sees device pages; a snapshot faults nothing. */
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, (unsigned long)p, n * ps(),
						&noop_ops, NULL), 0);
	struct uhmm_range r = { .notifier = sub, .start = (unsigned long)p,
				.end = (unsigned long)p + n * ps(), .hmm_pfns = pfns,
				.dev_private_owner = &toy };
	r.notifier_seq = uhmm_interval_read_begin(sub);
	ASSERT_EQ(uhmm_range_fault(&r), 0);
	for (unsigned long i = 0; i < n; i++) {
		ASSERT_TRUE(pfns[i] & UHMM_PFN_VALID);
		ASSERT_TRUE(pfns[i] & UHMM_PFN_DEVICE_PRIVATE);
		ASSERT_EQ(uhmm_page_owner(uhmm_pfn_to_page(pfns[i])), &toy);
	}
	r.dev_private_owner = NULL;
	r.notifier_seq = uhmm_interval_read_begin(sub);
	ASSERT_EQ(uhmm_range_fault(&r), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(pfns[i], 0);
	ASSERT_FALSE(resident(p));
	ASSERT_EQ(atomic_load(&toy.to_ram_calls), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(sub), 0);

	/* A CPU read migrates back, transparently. */
	ASSERT_TRUE(check_pattern(p, n, 1));
	ASSERT_GE(atomic_load(&toy.to_ram_calls), 1);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_TRUE(resident(p + i * ps()));
	/* Every device page went back to the driver. */
	ASSERT_EQ(atomic_load(&toy.freed), (int)n);
}

TEST(migrate_holes_and_zero_page)
{
	unsigned long n = 8;
	char *p = map_anon(n * ps(), RW);
	volatile char c;

	toy_init();
	c = p[0];		/* zero page */
	(void)c;
	p[ps()] = 7;		/* written */
	ASSERT_EQ(toy_to_dev(p, n), (long)n);
	ASSERT_EQ(p[0], 0);
	ASSERT_EQ(p[ps()], 7);
	for (unsigned long i = 2; i < n; i++)
		ASSERT_EQ(p[i * ps() + 5], 0);
}

TEST(shared_memory_does_not_migrate)
{
	unsigned long n = 4;
	char *p = mmap(NULL, n * ps(), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	ASSERT_NE(p, MAP_FAILED);
	toy_init();
	memset(p, 3, n * ps());
	ASSERT_EQ(toy_to_dev(p, n), 0);
	ASSERT_EQ(p[0], 3);
}

TEST(migrate_back_explicitly)
{
	unsigned long n = 32, moved = 0;
	char *p = map_anon(n * ps(), RW);

	toy_init();
	fill_pattern(p, n, 2);
	ASSERT_EQ(toy_to_dev(p, n), (long)n);
	ASSERT_EQ(toy_to_ram((unsigned long)p, (unsigned long)p + n * ps(), NULL, &moved), 0);
	ASSERT_EQ(moved, n);
	ASSERT_EQ(atomic_load(&toy.to_ram_calls), 0);	/* no CPU fault was needed */
	for (unsigned long i = 0; i < n; i++)
		ASSERT_TRUE(resident(p + i * ps()));
	ASSERT_TRUE(check_pattern(p, n, 2));
	/* Again, ten rounds. */
	for (int r = 0; r < 10; r++) {
		ASSERT_EQ(toy_to_dev(p, n), (long)n);
		ASSERT_EQ(toy_to_ram((unsigned long)p, (unsigned long)p + n * ps(), NULL, &moved), 0);
		ASSERT_EQ(moved, n);
	}
	ASSERT_TRUE(check_pattern(p, n, 2));
}

TEST(kernel_access_read_write_syscalls)
{
	unsigned long n = 4;
	char *p = map_anon(n * ps(), RW);
	char *buf = map_anon(ps(), RW);
	int fds[2];

	require_kernel_faults();

	toy_init();
	fill_pattern(p, n, 3);
	ASSERT_EQ(toy_to_dev(p, n), (long)n);
	/* write(2) from a device page: the kernel reads it. */
	ASSERT_EQ(pipe(fds), 0);
	ASSERT_EQ(write(fds[1], p, ps()), (ssize_t)ps());
	ASSERT_EQ(read(fds[0], buf, ps()), (ssize_t)ps());
	ASSERT_MEMEQ(buf, p, ps());
	/* read(2) into a device page: the kernel writes it. */
	memset(buf, 0x5a, ps());
	ASSERT_EQ(write(fds[1], buf, ps()), (ssize_t)ps());
	ASSERT_EQ(read(fds[0], p + 2 * ps(), ps()), (ssize_t)ps());
	ASSERT_MEMEQ(p + 2 * ps(), buf, ps());
	ASSERT_TRUE(check_pattern(p + 3 * ps(), 0, 3));
	close(fds[0]);
	close(fds[1]);
}

struct reader_arg {
	char *p;
	unsigned long n;
	atomic_int bad;
};

static void *reader(void *a)
{
	struct reader_arg *r = a;

	if (!check_pattern(r->p, r->n, 4))
		atomic_fetch_add(&r->bad, 1);
	return NULL;
}

TEST(four_threads_fault_same_pages)
{
	unsigned long n = 16;
	char *p = map_anon(n * ps(), RW);
	struct reader_arg a = { .p = p, .n = n };
	pthread_t t[4];

	long total = 0;

	toy_init();
	for (int round = 0; round < 20; round++) {
		long moved;

		fill_pattern(p, n, 4);
		/*
		 * A fault another thread already saw resolved can still be
		 * served after the next migration (a spurious fault-back):
		 * a page busy at that moment does not move this round.
		 */
		moved = toy_to_dev(p, n);
		ASSERT_GE(moved, (long)n - 2);
		total += moved;
		for (int i = 0; i < 4; i++)
			ASSERT_EQ(pthread_create(&t[i], NULL, reader, &a), 0);
		for (int i = 0; i < 4; i++)
			ASSERT_EQ(pthread_join(t[i], NULL), 0);
		ASSERT_EQ(atomic_load(&a.bad), 0);
	}
	/* No page leaked: all given back (late fault-backs settle). */
	for (int w = 0; w < 200 && atomic_load(&toy.freed) < total; w++)
		usleep(10000);
	ASSERT_EQ(atomic_load(&toy.freed), total);
}

TEST(write_fault_back_keeps_data)
{
	unsigned long n = 8;
	char *p = map_anon(n * ps(), RW);

	toy_init();
	fill_pattern(p, n, 5);
	ASSERT_EQ(toy_to_dev(p, n), (long)n);
	p[3 * ps() + 1] = 'w';		/* a store migrates back first */
	ASSERT_EQ(p[3 * ps() + 1], 'w');
	p[3 * ps() + 1] = (char)((uint64_t)(3 * ps() + 1) / 8 * 0);
	/* Everything else is intact. */
	ASSERT_TRUE(check_pattern(p, 3, 5));
	ASSERT_TRUE(check_pattern(p + 4 * ps(), 0, 5));
}

/* Evict every page of the device without knowing their addresses. */
TEST(evict_with_migrate_device_range)
{
	unsigned long n = 24;
	char *p = map_anon(n * ps(), RW);
	uint64_t *src = calloc(DEV_PAGES, 8), *dst = calloc(DEV_PAGES, 8);
	unsigned long evicted = 0;

	toy_init();
	fill_pattern(p, n, 6);
	ASSERT_EQ(toy_to_dev(p, n), (long)n);
	ASSERT_EQ(uhmm_migrate_device_range(NULL, toy.pg, 0, 1), -EINVAL);
	ASSERT_EQ(uhmm_migrate_device_range(src, toy.pg, 0, DEV_PAGES + 1), -EINVAL);
	ASSERT_EQ(uhmm_migrate_device_range(src, toy.pg, 0, DEV_PAGES), 0);
	for (unsigned long i = 0; i < DEV_PAGES; i++) {
		struct uhmm_page *sp = uhmm_migrate_pfn_to_page(src[i]);

		if (!sp)
			continue;
		ASSERT_EQ(uhmm_migrate_alloc_system(&dst[i]), 0);
		memcpy(uhmm_migrate_pfn_to_addr(dst[i]), toy_mem(sp), ps());
		evicted++;
	}
	ASSERT_EQ(evicted, n);
	uhmm_migrate_device_finalize(src, dst, DEV_PAGES);
	ASSERT_EQ(atomic_load(&toy.freed), (int)n);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_TRUE(resident(p + i * ps()));
	ASSERT_EQ(atomic_load(&toy.to_ram_calls), 0);
	ASSERT_TRUE(check_pattern(p, n, 6));
	free(src);
	free(dst);
}

static void wait_freed(int want)
{
	for (int w = 0; w < 300 && atomic_load(&toy.freed) < want; w++)
		usleep(10000);
}

TEST(munmap_releases_device_pages)
{
	unsigned long n = 16;
	char *p = map_anon(n * ps(), RW);

	toy_init();
	fill_pattern(p, n, 7);
	ASSERT_EQ(toy_to_dev(p, n), (long)n);
	ASSERT_EQ(munmap(p, n * ps()), 0);
	wait_freed((int)n);
	ASSERT_EQ(atomic_load(&toy.freed), (int)n);
	ASSERT_EQ(atomic_load(&toy.to_ram_calls), 0);
}

TEST(madv_dontneed_of_device_pages_reads_zeros)
{
	unsigned long n = 8;
	char *p = map_anon(n * ps(), RW);

	toy_init();
	fill_pattern(p, n, 8);
	ASSERT_EQ(toy_to_dev(p, n), (long)n);
	ASSERT_EQ(madvise(p, 4 * ps(), MADV_DONTNEED), 0);
	for (unsigned long i = 0; i < 4; i++)
		ASSERT_EQ(((uint64_t *)(p + i * ps()))[1], 0);
	ASSERT_TRUE(check_pattern(p + 4 * ps(), 0, 8));
	/* The other half is still on the device, intact. */
	ASSERT_EQ(p[4 * ps() + 8], (char)((uint64_t)(4 * ps() / 8 + 1) * 2654435761u + 8));
	wait_freed(4);
	ASSERT_GE(atomic_load(&toy.freed), 4);
}

TEST(mremap_moves_device_pages)
{
	unsigned long n = 8;
	char *p = map_anon(n * ps(), RW), *q;
	char *dst = mmap(NULL, n * ps(), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	toy_init();
	fill_pattern(p, n, 9);
	ASSERT_EQ(toy_to_dev(p, n), (long)n);
	q = mremap(p, n * ps(), n * ps(), MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	ASSERT_TRUE(q == dst);
	/* Still on the device until touched, then right. */
	ASSERT_FALSE(resident(q));
	ASSERT_TRUE(check_pattern(q, n, 9));
	ASSERT_GE(atomic_load(&toy.to_ram_calls), 1);
}

/*
 * mremap of a range while its pages migrate (between setup and finalize,
 * while the driver copies): the kernel's migration entries move with the
 * page tables and finalize finds the pages where they are now (rmap), so
 * the data end up at the new address. Found by the chaos runner: the
 * claims moved with the mapping while finalize installed at the old
 * address, and a touch of the new one waited for good.
 */
static char *mremap_away(char *p, unsigned long n)
{
	char *dst = mmap(NULL, n * ps(), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *q;

	ASSERT_TRUE(dst != MAP_FAILED);
	q = mremap(p, n * ps(), n * ps(), MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	ASSERT_TRUE(q == dst);
	return q;
}

/* n pages filled with @seed (on the device first if @flags selects
 * device pages), a migration of them set up, and the range moved away:
 * returns the new address. */
static char *setup_then_mremap(struct uhmm_migrate *m, uint64_t *src,
			       uint64_t *dst, unsigned long n, uint64_t flags,
			       int seed)
{
	char *p = map_anon(n * ps(), RW);

	toy_init();
	fill_pattern(p, n, seed);
	if (flags & UHMM_MIGRATE_SELECT_DEVICE_PRIVATE)
		ASSERT_EQ(toy_to_dev(p, n), (long)n);
	*m = (struct uhmm_migrate){
		.start = (unsigned long)p, .end = (unsigned long)p + n * ps(),
		.src = src, .dst = dst, .pgmap_owner = &toy, .flags = flags,
	};
	ASSERT_EQ(uhmm_migrate_setup(m), 0);
	ASSERT_EQ(m->cpages, n);
	return mremap_away(p, n);
}

TEST_TIMEOUT(mremap_during_migration_to_device_follows_pages, 30)
{
	unsigned long n = 8;
	uint64_t src[8] = { 0 }, dst[8] = { 0 };
	struct uhmm_migrate m;
	char *q = setup_then_mremap(&m, src, dst, n, UHMM_MIGRATE_SELECT_SYSTEM, 21);

	for (unsigned long i = 0; i < n; i++) {
		struct uhmm_page *dp = toy_alloc();

		ASSERT_TRUE(src[i] & UHMM_MIGRATE_PFN_VALID);
		ASSERT_NOT_NULL(dp);
		memcpy(toy_mem(dp), uhmm_migrate_pfn_to_addr(src[i]), ps());
		dst[i] = uhmm_migrate_pfn_device(dp);
	}
	uhmm_migrate_pages(&m);
	uhmm_migrate_finalize(&m);
	for (unsigned long i = 0; i < n; i++)
		if (dst[i] && !(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			uhmm_page_put(uhmm_migrate_pfn_to_page(dst[i]));
	ASSERT_TRUE(check_pattern(q, n, 21));
	/* Nothing left behind at the old address. */
	ASSERT_EQ(munmap(q, n * ps()), 0);
	wait_freed((int)n);
	ASSERT_EQ(toy_nfree(), (unsigned long)DEV_PAGES);
}

TEST_TIMEOUT(mremap_during_migration_to_system_follows_pages, 30)
{
	unsigned long n = 8;
	uint64_t src[8] = { 0 }, dst[8] = { 0 };
	struct uhmm_migrate m;
	char *q = setup_then_mremap(&m, src, dst, n,
				    UHMM_MIGRATE_SELECT_DEVICE_PRIVATE, 22);

	for (unsigned long i = 0; i < n; i++) {
		struct uhmm_page *sp = uhmm_migrate_pfn_to_page(src[i]);

		ASSERT_NOT_NULL(sp);
		ASSERT_EQ(uhmm_migrate_alloc_system(&dst[i]), 0);
		memcpy(uhmm_migrate_pfn_to_addr(dst[i]), toy_mem(sp), ps());
	}
	uhmm_migrate_pages(&m);
	uhmm_migrate_finalize(&m);
	ASSERT_EQ(atomic_load(&toy.to_ram_calls), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_TRUE(resident(q + i * ps()));
	ASSERT_TRUE(check_pattern(q, n, 22));
	wait_freed((int)n);
	ASSERT_EQ(toy_nfree(), (unsigned long)DEV_PAGES);
}

TEST(fork_child_sees_device_pages)
{
	unsigned long n = 8;
	char *p = map_anon(n * ps(), RW);
	pid_t pid;
	int st;

	toy_init();
	fill_pattern(p, n, 10);
	ASSERT_EQ(toy_to_dev(p, n), (long)n);
	pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0)
		_exit(check_pattern(p, n, 10) ? 0 : 1);
	ASSERT_EQ(waitpid(pid, &st, 0), pid);
	ASSERT_TRUE(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	/* Copy-on-write isolated: the parent's store does not reach a child. */
	ASSERT_TRUE(check_pattern(p, n, 10));
}

struct exrec {
	atomic_int excl_own, excl_revoke;
};

static bool ex_inv(struct uhmm_interval_notifier *sub,
		   const struct uhmm_notifier_range *r, unsigned long seq)
{
	struct exrec *x = uhmm_interval_notifier_priv(sub);

	uhmm_interval_set_seq(sub, seq);
	if (r->event == UHMM_NOTIFY_EXCLUSIVE) {
		if (r->owner == &toy)
			atomic_fetch_add(&x->excl_own, 1);
		else
			atomic_fetch_add(&x->excl_revoke, 1);
	}
	return true;
}

static const struct uhmm_interval_notifier_ops ex_ops = { .invalidate = ex_inv };

TEST(exclusive_access_then_cpu_touch)
{
	unsigned long n = 4;
	uint64_t *p = (uint64_t *)map_anon(n * ps(), RW);
	struct exrec x = { 0 };
	struct uhmm_interval_notifier *sub;
	void *dev[4];

	require_uffd(true);
	ASSERT_EQ(uhmm_make_device_exclusive((unsigned long)p + 1, &toy, &dev[0]), -EINVAL);
	ASSERT_EQ(uhmm_make_device_exclusive((unsigned long)p, &toy, NULL), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, (unsigned long)p, n * ps(), &ex_ops, &x), 0);
	for (unsigned long i = 0; i < n; i++) {
		p[i * ps() / 8] = i;
		ASSERT_EQ(uhmm_make_device_exclusive((unsigned long)p + i * ps(), &toy, &dev[i]), 0);
		ASSERT_FALSE(resident((char *)p + i * ps()));
		/* The device's atomics. */
		__atomic_fetch_add((uint64_t *)dev[i], 100, __ATOMIC_SEQ_CST);
	}
	ASSERT_EQ(atomic_load(&x.excl_own), (int)n);
	ASSERT_EQ(atomic_load(&x.excl_revoke), 0);
	/* The CPU's next touch revokes, then sees the device's updates. */
	for (unsigned long i = 0; i < n; i++) {
		p[i * ps() / 8] += 1;
		ASSERT_EQ(p[i * ps() / 8], i + 101);
	}
	ASSERT_EQ(atomic_load(&x.excl_revoke), (int)n);
	ASSERT_EQ(uhmm_interval_notifier_remove(sub), 0);
	/* Shared memory cannot be made exclusive. */
	char *sh = mmap(NULL, ps(), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ASSERT_EQ(uhmm_make_device_exclusive((unsigned long)sh, &toy, &dev[0]), -EINVAL);
}

TEST(exclusive_then_fork_both_increment)
{
	uint64_t *p = (uint64_t *)map_anon(ps(), RW);
	void *dev;
	pid_t pid;
	int st;

	require_uffd(true);
	p[0] = 5;
	ASSERT_EQ(uhmm_make_device_exclusive((unsigned long)p, &toy, &dev), 0);
	__atomic_fetch_add((uint64_t *)dev, 1, __ATOMIC_SEQ_CST);
	pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		p[0]++;
		_exit(p[0] == 7 ? 0 : 1);
	}
	p[0] += 10;
	ASSERT_EQ(waitpid(pid, &st, 0), pid);
	ASSERT_TRUE(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	ASSERT_EQ(p[0], 16);
}
