/* SPDX-License-Identifier: MIT */
/*
 * <uhmm/stats.h>: the counters move by what was done. Every test runs in a
 * fresh forked child, so the process-wide counters start from the work of
 * that test alone.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include <uhmm/dmirror.h>
#include <uhmm/stats.h>
#include <uhmm/uhmm.h>

#include "harness.h"
#include "util.h"

static struct uhmm_stats get(void)
{
	struct uhmm_stats s;

	memset(&s, 0xff, sizeof(s));
	ASSERT_EQ(uhmm_stats_get(&s, sizeof(s)), 0);
	ASSERT_EQ(s.version, (uint32_t)UHMM_STATS_VERSION);
	ASSERT_EQ(s.size, (uint32_t)sizeof(s));
	return s;
}

static uint64_t hist_sum(const struct uhmm_stats *s)
{
	uint64_t n = 0;

	for (unsigned int i = 0; i < UHMM_STATS_LAT_BUCKETS; i++)
		n += s->fault_back_ns_log2[i];
	return n;
}

static bool have_events(void)
{
	struct uhmm_features f = { .size = sizeof(f) };

	return uhmm_features(&f) == 0 && (f.flags & UHMM_FEAT_EVENTS) &&
	       (f.flags & UHMM_FEAT_MOVE);
}

#define NEED_MIGRATION()						\
	do {								\
		if (!have_events())					\
			SKIP("needs userfaultfd events and UFFDIO_MOVE"); \
	} while (0)

static bool noop_invalidate(struct uhmm_interval_notifier *sub,
			    const struct uhmm_notifier_range *r,
			    unsigned long seq)
{
	(void)r;
	uhmm_interval_set_seq(sub, seq);
	return true;
}

static const struct uhmm_interval_notifier_ops noop_ops = {
	.invalidate = noop_invalidate,
};

TEST(get_bad_args_and_prefix)
{
	struct uhmm_stats s;

	ASSERT_EQ(uhmm_stats_get(NULL, sizeof(s)), -EINVAL);
	ASSERT_EQ(uhmm_stats_get(&s, 7), -EINVAL);
	/* An older, shorter structure gets its prefix, nothing beyond. */
	memset(&s, 0xab, sizeof(s));
	ASSERT_EQ(uhmm_stats_get(&s, 16), 0);
	ASSERT_EQ(s.version, (uint32_t)UHMM_STATS_VERSION);
	ASSERT_EQ(s.size, 16u);
	ASSERT_EQ(s.fault_back_ns_log2[1], 0xababababababababULL);
	ASSERT_EQ(s.faults, 0xababababababababULL);
	/* A larger one is filled up to what the library knows. */
	unsigned char big[sizeof(s) + 64];

	ASSERT_EQ(uhmm_stats_get((struct uhmm_stats *)(void *)big, sizeof(big)), 0);
	ASSERT_EQ(((struct uhmm_stats *)(void *)big)->size, (uint32_t)sizeof(s));
}

/* Nothing done yet: every counter is 0 (a fresh child process). */
TEST(starts_at_zero)
{
	struct uhmm_stats s = get();

	ASSERT_EQ(s.faults, 0ULL);
	ASSERT_EQ(s.range_fault_calls, 0ULL);
	ASSERT_EQ(s.pages_to_device, 0ULL);
	ASSERT_EQ(s.device_pages_in_use, 0ULL);
	ASSERT_EQ(hist_sum(&s), 0ULL);
}

/* MIGRATE_TO_DEV of n pages, then MIGRATE_TO_SYS: n each way. */
TEST(migrate_counts_pages_each_way)
{
	unsigned long n = 32;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm = NULL;
	struct uhmm_dmirror_cmd c;
	struct uhmm_stats s;

	NEED_MIGRATION();
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	fill(p, n, 1);
	uhmm_stats_reset();
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	s = get();
	ASSERT_EQ(s.pages_to_device, (uint64_t)n);
	ASSERT_EQ(s.bytes_to_device, (uint64_t)n * ps());
	ASSERT_EQ(s.pages_to_system, 0ULL);
	ASSERT_EQ(s.device_pages_in_use, (uint64_t)n);
	ASSERT_GE(s.migrations, 1ULL);
	ASSERT_GE(s.inv_migrate, 1ULL);

	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	s = get();
	ASSERT_EQ(s.pages_to_device, (uint64_t)n);
	ASSERT_EQ(s.pages_to_system, (uint64_t)n);
	ASSERT_EQ(s.bytes_to_system, (uint64_t)n * ps());
	ASSERT_EQ(s.device_pages_in_use, 0ULL);
	/* Nothing was touched by the CPU. */
	ASSERT_EQ(s.faults_back, 0ULL);
	ASSERT_TRUE(check(p, n, 1));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* CPU touches of device pages: fault-backs, each with a latency sample. */
TEST(fault_back_counted_with_latency)
{
	unsigned long n = 16;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm = NULL;
	struct uhmm_dmirror_cmd c;
	struct uhmm_stats s;

	NEED_MIGRATION();
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	fill(p, n, 2);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	uhmm_stats_reset();
	ASSERT_TRUE(check(p, n, 2));	/* the CPU reads every page */
	/*
	 * The faulting thread resumes when its page is installed, before the
	 * uhmm thread serving it returns from migrate_to_ram and counts it:
	 * wait (bounded) until the last one is counted.
	 */
	for (int i = 0; i < 5000; i++) {
		s = get();
		if (s.pages_to_system == n && s.faults_back >= 1 &&
		    hist_sum(&s) == s.faults_back &&
		    s.device_pages_in_use == 0)
			break;
		usleep(1000);
	}
	/* Read-ahead may bring several pages per fault-back. */
	ASSERT_GE(s.faults_back, 1ULL);
	ASSERT_LE(s.faults_back, (uint64_t)n);
	ASSERT_GE(s.faults, s.faults_back);
	ASSERT_EQ(hist_sum(&s), s.faults_back);
	ASSERT_EQ(s.pages_to_system, (uint64_t)n);
	ASSERT_EQ(s.device_pages_in_use, 0ULL);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* Reset clears counters but not the device-memory gauge. */
TEST(reset_keeps_gauge)
{
	unsigned long n = 8;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm = NULL;
	struct uhmm_dmirror_cmd c;
	struct uhmm_stats s;

	NEED_MIGRATION();
	ASSERT_EQ(uhmm_dmirror_open(1, &dm), 0);
	fill(p, n, 3);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, n, &c), 0);
	uhmm_stats_reset();
	s = get();
	ASSERT_EQ(s.pages_to_device, 0ULL);
	ASSERT_EQ(s.migrations, 0ULL);
	ASSERT_EQ(s.device_pages_in_use, (uint64_t)n);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	s = get();
	ASSERT_EQ(s.device_pages_in_use, 0ULL);
}

/* range_fault: one call, n pages faulted in; munmap and madvise counted
 * by event. */
TEST(range_fault_and_invalidations)
{
	unsigned long n = 16;
	char *p = map_anon(n * ps(), RW);
	uint64_t pfns[16];
	struct uhmm_interval_notifier *sub = NULL;
	struct uhmm_range r;
	struct uhmm_stats s;
	int ret;

	ASSERT_NOT_NULL(p);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, (unsigned long)p, n * ps(),
						&noop_ops, NULL), 0);
	memset(&r, 0, sizeof(r));
	r.notifier = sub;
	r.start = (unsigned long)p;
	r.end = r.start + n * ps();
	r.hmm_pfns = pfns;
	r.default_flags = FAULT_W;
	uhmm_stats_reset();
	do {
		r.notifier_seq = uhmm_interval_read_begin(sub);
		ret = uhmm_range_fault(&r);
	} while (ret == -EBUSY);
	ASSERT_EQ(ret, 0);
	s = get();
	ASSERT_GE(s.range_fault_calls, 1ULL);
	ASSERT_GE(s.range_fault_populates, 1ULL);
	ASSERT_EQ(s.range_fault_pages_faulted, (uint64_t)n);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_TRUE(pfns[i] & UHMM_PFN_WRITE);

	if (!have_events()) {
		ASSERT_EQ(uhmm_interval_notifier_remove(sub), 0);
		SKIP("invalidation counts need userfaultfd events");
	}
	/* A read section that an invalidation interrupts must retry. */
	unsigned long seq = uhmm_interval_read_begin(sub);

	ASSERT_EQ(madvise(p, ps(), MADV_DONTNEED), 0);
	ASSERT_EQ(uhmm_range_revalidate(r.start, r.end), 0);
	ASSERT_TRUE(uhmm_interval_read_retry(sub, seq));
	ASSERT_EQ(munmap(p + ps(), ps()), 0);
	ASSERT_EQ(uhmm_range_revalidate(r.start, r.end), 0);
	s = get();
	ASSERT_GE(s.inv_clear, 1ULL);
	ASSERT_GE(s.inv_unmap, 1ULL);
	ASSERT_EQ(s.inv_release, 0ULL);
	ASSERT_GE(s.read_retries, 1ULL);
	ASSERT_EQ(uhmm_interval_notifier_remove(sub), 0);
}

/* A device's exclusive access revoked by a CPU touch. */
TEST(exclusive_revoke_counted)
{
	char *p = map_anon(ps(), RW), *buf = map_anon(ps(), RW);
	struct uhmm_dmirror *dm = NULL;
	struct uhmm_dmirror_cmd c;
	struct uhmm_stats s;

	NEED_MIGRATION();
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	p[0] = 5;
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_EXCLUSIVE, p, buf, 1, &c), 0);
	ASSERT_EQ(c.cpages, 1ULL);
	uhmm_stats_reset();
	ASSERT_EQ(p[0], 5);
	s = get();
	ASSERT_EQ(s.faults_exclusive_revoke, 1ULL);
	ASSERT_GE(s.inv_exclusive, 1ULL);
	ASSERT_EQ(s.faults_back, 0ULL);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* A page dropped while on the device (MADV_DONTNEED) reads as a fresh
 * zero page on the next touch: a first-touch fault served by uhmm. */
TEST(first_touch_after_drop_counted)
{
	unsigned long n = 4;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *dm = NULL;
	struct uhmm_dmirror_cmd c;
	struct uhmm_stats s;

	NEED_MIGRATION();
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	fill(p, n, 4);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, n, &c), 0);
	ASSERT_EQ(madvise(p, ps(), MADV_DONTNEED), 0);
	ASSERT_EQ(uhmm_range_revalidate((unsigned long)p,
					(unsigned long)p + n * ps()), 0);
	uhmm_stats_reset();
	ASSERT_EQ(p[0], 0);
	s = get();
	ASSERT_EQ(s.faults_first_touch, 1ULL);
	ASSERT_EQ(s.faults_back, 0ULL);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* A 2 MiB THP migrates (whole, with SELECT_COMPOUND, or as base pages):
 * the counters say 512 pages each way either way. */
TEST(thp_migration_counts_every_page)
{
	const unsigned long two_mb = 2UL << 20;
	unsigned long n = two_mb / ps();
	char *b = map_anon(2 * two_mb, RW), *mirror = map_anon(two_mb, RW);
	char *p = (char *)(((uintptr_t)b + two_mb - 1) & ~(two_mb - 1));
	struct uhmm_features f = { .size = sizeof(f) };
	struct uhmm_dmirror *dm = NULL;
	struct uhmm_dmirror_cmd c;
	struct uhmm_stats s;

	NEED_MIGRATION();
	ASSERT_EQ(uhmm_features(&f), 0);
	if (!(f.flags & UHMM_FEAT_THP))
		SKIP("transparent huge pages are off");
	ASSERT_NOT_NULL(b);
	ASSERT_EQ(madvise(p, two_mb, MADV_HUGEPAGE), 0);
	fill(p, n, 6);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	uhmm_stats_reset();
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	s = get();
	ASSERT_EQ(s.pages_to_device, (uint64_t)n);
	ASSERT_EQ(s.bytes_to_device, (uint64_t)two_mb);
	ASSERT_EQ(s.device_pages_in_use, (uint64_t)n);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	s = get();
	ASSERT_EQ(s.pages_to_system, (uint64_t)n);
	ASSERT_EQ(s.bytes_to_system, (uint64_t)two_mb);
	ASSERT_EQ(s.device_pages_in_use, 0ULL);
	ASSERT_TRUE(check(p, n, 6));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}
