/* SPDX-License-Identifier: MIT */
/*
 * uhmm_range_fault() and uhmm_copy_nofault() tests: argument checking,
 * snapshot versus fault, the per-page request protocol (default_flags,
 * pfn_flags_mask, sticky bits), every kind of mapping a process has, and
 * the copy primitive's fault handling (include/linux/hmm.h semantics).
 * THP and hugetlbfs cases are in test_huge.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uhmm/uhmm.h>

#include "harness.h"
#include "util.h"

#define WAIT_MS 5000
#define OUT_MASK (~UHMM_PFN_INOUT_FLAGS)

static unsigned int page_shift(void)
{
	return (unsigned int)__builtin_ctzl(ps());
}

/* A notifier that counts invalidations and follows the protocol. */
struct cnt {
	pthread_mutex_t lock;
	struct uhmm_interval_notifier *sub;
	atomic_int calls;
	atomic_int last_event;
	atomic_int tid;
};

static bool cnt_invalidate(struct uhmm_interval_notifier *sub,
			   const struct uhmm_notifier_range *range,
			   unsigned long cur_seq)
{
	struct cnt *c = uhmm_interval_notifier_priv(sub);

	pthread_mutex_lock(&c->lock);
	uhmm_interval_set_seq(sub, cur_seq);
	atomic_store(&c->last_event, (int)range->event);
	atomic_store(&c->tid, (int)syscall(SYS_gettid));
	atomic_fetch_add(&c->calls, 1);
	pthread_mutex_unlock(&c->lock);
	return true;
}

static const struct uhmm_interval_notifier_ops cnt_ops = {
	.invalidate = cnt_invalidate,
};

static int cnt_insert(struct cnt *c, unsigned long start, unsigned long len)
{
	memset(c, 0, sizeof(*c));
	pthread_mutex_init(&c->lock, NULL);
	atomic_store(&c->last_event, -1);
	return uhmm_interval_notifier_insert(&c->sub, start, len, &cnt_ops, c);
}

/*
 * range_fault over [start, end) following the driver protocol (retry on
 * -EBUSY, bounded). @pfns holds the per-page input and gets the output.
 */
static int rf(struct uhmm_interval_notifier *sub, unsigned long start,
	      unsigned long end, uint64_t *pfns, uint64_t dflags, uint64_t mask)
{
	unsigned long n = (end - start) / ps();
	uint64_t *in = malloc(n * sizeof(*in));
	struct uhmm_range r = {
		.notifier = sub,
		.start = start,
		.end = end,
		.hmm_pfns = pfns,
		.default_flags = dflags,
		.pfn_flags_mask = mask,
	};
	int rc = -EBUSY;

	if (!in)
		return -ENOMEM;
	memcpy(in, pfns, n * sizeof(*in));
	for (int i = 0; i < 1000 && rc == -EBUSY; i++) {
		memcpy(pfns, in, n * sizeof(*in));
		r.notifier_seq = uhmm_interval_read_begin(sub);
		rc = uhmm_range_fault(&r);
	}
	free(in);
	return rc;
}

static uint64_t frame_of(const void *addr)
{
	return (unsigned long)addr >> page_shift();
}

/* A VALID system-page value for @addr: frame and address round trip. */
static bool frame_ok(uint64_t pfn, const void *addr)
{
	return (pfn & UHMM_PFN_FRAME_MASK) == frame_of(addr) &&
	       uhmm_pfn_to_addr(pfn) == addr;
}

/* ------------------------------------------------------------------ */
/* Arguments                                                            */
/* ------------------------------------------------------------------ */

TEST(bad_args)
{
	struct cnt c;
	unsigned long len = 8 * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;
	uint64_t pfns[8] = { 0 };

	ASSERT_NOT_NULL(p);
	ASSERT_EQ(cnt_insert(&c, a, 4 * ps()), 0);
	unsigned long seq = uhmm_interval_read_begin(c.sub);
	struct uhmm_range ok = {
		.notifier = c.sub, .notifier_seq = seq, .start = a,
		.end = a + 4 * ps(), .hmm_pfns = pfns, .default_flags = FAULT_R,
	};
	struct uhmm_range r;

	ASSERT_EQ(uhmm_range_fault(NULL), -EINVAL);
	r = ok; r.hmm_pfns = NULL;
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	r = ok; r.notifier = NULL;
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	r = ok; r.start = a + 1;
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	r = ok; r.end = a + 4 * ps() - 1;
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	r = ok; r.end = a;
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	r = ok; r.start = a + 2 * ps(); r.end = a + ps();
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	/* Not inside the notifier's range. */
	r = ok; r.end = a + 5 * ps();
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	r = ok; r.start = a - ps();
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	r = ok; r.start = a + 4 * ps(); r.end = a + 6 * ps();
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	/* None of that faulted anything. */
	for (int i = 0; i < 8; i++)
		ASSERT_EQ(page_present(p + (unsigned long)i * ps()), 0);

	/* The valid call works. */
	r = ok;
	ASSERT_EQ(rf(c.sub, a, a + 4 * ps(), pfns, FAULT_R, 0), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
	munmap(p, len);
}

TEST(stale_seq_ebusy)
{
	struct cnt c;
	unsigned long len = 4 * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;
	uint64_t pfns[4] = { 0 };

	ASSERT_NOT_NULL(p);
	ASSERT_EQ(cnt_insert(&c, a, len), 0);
	require_uffd(false);	/* the munmap below must raise an event */
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, FAULT_W, 0), 0);
	unsigned long seq = uhmm_interval_read_begin(c.sub);

	/* Invalidate part of the range and wait for the callback. */
	ASSERT_EQ(munmap(p + 3 * ps(), ps()), 0);
	long stop = now_ms() + WAIT_MS;
	while (atomic_load(&c.calls) == 0 && now_ms() < stop)
		usleep(1000);
	ASSERT_GE(atomic_load(&c.calls), 1);

	struct uhmm_range r = {
		.notifier = c.sub, .notifier_seq = seq, .start = a,
		.end = a + ps(), .hmm_pfns = pfns, .default_flags = FAULT_R,
	};
	ASSERT_EQ(uhmm_range_fault(&r), -EBUSY);
	r.default_flags = 0;
	ASSERT_EQ(uhmm_range_fault(&r), -EBUSY);
	/* With a fresh sequence it works. */
	r.notifier_seq = uhmm_interval_read_begin(c.sub);
	ASSERT_EQ(uhmm_range_fault(&r), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
	munmap(p, 3 * ps());
}

/* ------------------------------------------------------------------ */
/* Anonymous private memory                                             */
/* ------------------------------------------------------------------ */

TEST(snapshot_untouched_no_fault)
{
	struct cnt c;
	unsigned long n = 8, len = n * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;
	uint64_t pfns[8];

	ASSERT_NOT_NULL(p);
	ASSERT_EQ(cnt_insert(&c, a, len), 0);
	for (unsigned long i = 0; i < n; i++)
		pfns[i] = 0x1234 + i;	/* junk frame bits: rewritten */
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, 0, 0), 0);
	for (unsigned long i = 0; i < n; i++) {
		ASSERT_EQ(pfns[i], 0ULL);
		ASSERT_EQ(page_present(p + i * ps()), 0);
	}
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
	munmap(p, len);
}

TEST(fault_read_untouched_zero_page)
{
	struct cnt c;
	unsigned long n = 4, len = n * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;
	uint64_t pfns[4] = { 0 };

	ASSERT_NOT_NULL(p);
	ASSERT_EQ(cnt_insert(&c, a, len), 0);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, FAULT_R, 0), 0);
	for (unsigned long i = 0; i < n; i++) {
		uint64_t v = pfns[i];
		ASSERT_TRUE(v & UHMM_PFN_VALID);
		ASSERT_TRUE(v & UHMM_PFN_ZERO);
		ASSERT_FALSE(v & UHMM_PFN_WRITE);
		ASSERT_FALSE(v & UHMM_PFN_ERROR);
		ASSERT_FALSE(v & (UHMM_PFN_DEVICE_PRIVATE | UHMM_PFN_DEVICE_COHERENT));
		ASSERT_EQ(uhmm_pfn_to_map_order(v), 0U);
		ASSERT_TRUE(frame_ok(v, p + i * ps()));
		ASSERT_EQ(page_present(p + i * ps()), 1);
		ASSERT_EQ(*(volatile char *)uhmm_pfn_to_addr(v), 0);
	}
	/* A snapshot now reports the same. */
	uint64_t snap[4] = { 0 };
	ASSERT_EQ(rf(c.sub, a, a + len, snap, 0, 0), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(snap[i], pfns[i]);
	/* Upgrading to write replaces the zero page. */
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, FAULT_W, 0), 0);
	for (unsigned long i = 0; i < n; i++) {
		ASSERT_EQ(pfns[i] & (UHMM_PFN_VALID | UHMM_PFN_WRITE | UHMM_PFN_ZERO),
			  UHMM_PFN_VALID | UHMM_PFN_WRITE);
		ASSERT_TRUE(frame_ok(pfns[i], p + i * ps()));
	}
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
	munmap(p, len);
}

TEST(fault_write_untouched)
{
	struct cnt c;
	unsigned long n = 4, len = n * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;
	uint64_t pfns[4] = { 0 };

	ASSERT_NOT_NULL(p);
	ASSERT_EQ(cnt_insert(&c, a, len), 0);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, FAULT_W, 0), 0);
	for (unsigned long i = 0; i < n; i++) {
		uint64_t v = pfns[i];
		ASSERT_EQ(v & (UHMM_PFN_VALID | UHMM_PFN_WRITE | UHMM_PFN_ZERO |
			       UHMM_PFN_ERROR),
			  UHMM_PFN_VALID | UHMM_PFN_WRITE);
		ASSERT_EQ(uhmm_pfn_to_map_order(v), 0U);
		ASSERT_TRUE(frame_ok(v, p + i * ps()));
		ASSERT_EQ(page_present(p + i * ps()), 1);
		/* The page the device would write is the process's page. */
		*(volatile char *)uhmm_pfn_to_addr(v) = (char)(0x40 + i);
		ASSERT_EQ(p[i * ps()], (char)(0x40 + i));
	}
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
	munmap(p, len);
}

TEST(snapshot_written_and_read_pages)
{
	struct cnt c;
	unsigned long n = 3, len = n * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;
	uint64_t pfns[3] = { 0 };

	ASSERT_NOT_NULL(p);
	p[0] = 1;				/* written */
	(void)*(volatile char *)(p + ps());	/* read: zero page */
	/* page 2 untouched */
	ASSERT_EQ(cnt_insert(&c, a, len), 0);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, 0, 0), 0);
	ASSERT_EQ(pfns[0] & ~UHMM_PFN_FRAME_MASK, UHMM_PFN_VALID | UHMM_PFN_WRITE);
	ASSERT_TRUE(frame_ok(pfns[0], p));
	ASSERT_EQ(pfns[1] & ~UHMM_PFN_FRAME_MASK, UHMM_PFN_VALID | UHMM_PFN_ZERO);
	ASSERT_TRUE(frame_ok(pfns[1], p + ps()));
	ASSERT_EQ(pfns[2], 0ULL);
	ASSERT_EQ(page_present(p + 2 * ps()), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
	munmap(p, len);
}

/*
 * Fork a child that holds the COW-shared copy of [p, p+len) until told
 * to check it still reads @expect; returns its pid, the pipe to it in *wfd.
 */
static pid_t fork_holder(const char *p, unsigned long len, char expect, int *wfd)
{
	int fds[2];

	if (pipe(fds))
		return -1;
	pid_t pid = fork();
	if (pid == 0) {
		char ch;
		close(fds[1]);
		if (read(fds[0], &ch, 1) != 1)
			_exit(1);
		for (unsigned long i = 0; i < len; i++)
			if (p[i] != expect)
				_exit(2);
		_exit(0);
	}
	close(fds[0]);
	*wfd = fds[1];
	return pid;
}

static int release_holder(pid_t pid, int wfd)
{
	int st;

	if (write(wfd, "x", 1) != 1)
		return -1;
	close(wfd);
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
		return -1;
	return WEXITSTATUS(st);
}

/* pagemap bit 56: the page is mapped by this process only. */
static int page_exclusive(const void *addr)
{
	uint64_t e = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY);

	if (fd < 0)
		return -1;
	ssize_t n = pread(fd, &e, sizeof(e),
			  (off_t)(((unsigned long)addr / ps()) * sizeof(e)));
	close(fd);
	if (n != (ssize_t)sizeof(e))
		return -1;
	return (int)((e >> 56) & 1);
}

/* After fork the parent's anonymous pages are COW-shared: the CPU PTE is
 * read-only, so hmm_range_fault reports them VALID without WRITE. */
TEST(cow_after_fork_snapshot_not_writable)
{
	struct cnt c;
	unsigned long n = 2, len = n * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;
	uint64_t pfns[2] = { 0 };
	int wfd;

	ASSERT_NOT_NULL(p);
	memset(p, 'A', len);
	ASSERT_EQ(cnt_insert(&c, a, len), 0);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, 0, 0), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_TRUE(pfns[i] & UHMM_PFN_WRITE);
	pid_t pid = fork_holder(p, len, 'A', &wfd);
	ASSERT_GT(pid, 0);
	ASSERT_EQ(page_exclusive(p), 0);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, 0, 0), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(pfns[i] & (UHMM_PFN_VALID | UHMM_PFN_WRITE | UHMM_PFN_ZERO),
			  UHMM_PFN_VALID);
	/* A read request is satisfied as is. */
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, FAULT_R, 0), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_FALSE(pfns[i] & UHMM_PFN_WRITE);
	ASSERT_EQ(release_holder(pid, wfd), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
	munmap(p, len);
}

/* REQ_WRITE breaks COW as a CPU write would: the parent gets its own
 * page (pagemap: exclusively mapped) before any CPU store. */
TEST(cow_after_fork_fault_write_breaks)
{
	struct cnt c;
	unsigned long n = 2, len = n * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;
	uint64_t pfns[2] = { 0 };
	int wfd;

	ASSERT_NOT_NULL(p);
	memset(p, 'A', len);
	ASSERT_EQ(page_exclusive(p), 1);
	ASSERT_EQ(cnt_insert(&c, a, len), 0);
	pid_t pid = fork_holder(p, len, 'A', &wfd);
	ASSERT_GT(pid, 0);
	ASSERT_EQ(page_exclusive(p), 0);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, FAULT_W, 0), 0);
	for (unsigned long i = 0; i < n; i++) {
		ASSERT_EQ(pfns[i] & (UHMM_PFN_VALID | UHMM_PFN_WRITE | UHMM_PFN_ZERO),
			  UHMM_PFN_VALID | UHMM_PFN_WRITE);
		ASSERT_TRUE(frame_ok(pfns[i], p + i * ps()));
		ASSERT_EQ(page_exclusive(p + i * ps()), 1);
	}
	for (unsigned long i = 0; i < n; i++)
		memset(uhmm_pfn_to_addr(pfns[i]), 'B', ps());
	ASSERT_EQ(release_holder(pid, wfd), 0);
	ASSERT_EQ(p[0], 'B');
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
	munmap(p, len);
}

/* The same when the process forked before it first used uhmm: what the
 * kernel reports does not depend on when the runtime started. */
TEST(cow_fork_before_runtime)
{
	struct cnt c;
	unsigned long n = 2, len = n * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;
	uint64_t pfns[2] = { 0 };
	int wfd;

	ASSERT_NOT_NULL(p);
	memset(p, 'A', len);
	pid_t pid = fork_holder(p, len, 'A', &wfd);	/* no uhmm call yet */
	ASSERT_GT(pid, 0);
	ASSERT_EQ(page_exclusive(p), 0);
	ASSERT_EQ(cnt_insert(&c, a, len), 0);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, 0, 0), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(pfns[i] & (UHMM_PFN_VALID | UHMM_PFN_WRITE | UHMM_PFN_ZERO),
			  UHMM_PFN_VALID);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, FAULT_W, 0), 0);
	for (unsigned long i = 0; i < n; i++) {
		ASSERT_TRUE(pfns[i] & UHMM_PFN_WRITE);
		ASSERT_EQ(page_exclusive(p + i * ps()), 1);
	}
	ASSERT_EQ(release_holder(pid, wfd), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
	munmap(p, len);
}

TEST(prot_read_write_eperm)
{
	struct cnt c;
	unsigned long n = 2, len = n * ps();
	char *p = map_anon(len, PROT_READ);
	unsigned long a = (unsigned long)p;
	uint64_t pfns[2] = { 0 };

	ASSERT_NOT_NULL(p);
	ASSERT_EQ(cnt_insert(&c, a, len), 0);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, FAULT_W, 0), -EPERM);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, FAULT_R, 0), 0);
	for (unsigned long i = 0; i < n; i++) {
		ASSERT_EQ(pfns[i] & (UHMM_PFN_VALID | UHMM_PFN_WRITE | UHMM_PFN_ERROR),
			  UHMM_PFN_VALID);
		ASSERT_TRUE(frame_ok(pfns[i], p + i * ps()));
	}
	/* Present now, still not writable. */
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, FAULT_W, 0), -EPERM);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, 0, 0), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(pfns[i] & (UHMM_PFN_VALID | UHMM_PFN_WRITE), UHMM_PFN_VALID);
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
	munmap(p, len);
}

TEST(prot_none_error_efault)
{
	struct cnt c;
	unsigned long n = 3, len = n * ps();
	char *p = map_anon(len, PROT_NONE);
	unsigned long a = (unsigned long)p;
	uint64_t pfns[3] = { 0 };

	ASSERT_NOT_NULL(p);
	ASSERT_EQ(cnt_insert(&c, a, len), 0);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, 0, 0), 0);
	for (unsigned long i = 0; i < n; i++) {
		ASSERT_TRUE(pfns[i] & UHMM_PFN_ERROR);
		ASSERT_FALSE(pfns[i] & (UHMM_PFN_VALID | UHMM_PFN_WRITE));
	}
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, FAULT_R, 0), -EFAULT);
	ASSERT_EQ(rf(c.sub, a + ps(), a + 2 * ps(), pfns, FAULT_W, 0), -EFAULT);
	/* Made accessible, it faults in. */
	ASSERT_EQ(mprotect(p, len, RW), 0);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, FAULT_W, 0), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_TRUE(pfns[i] & UHMM_PFN_WRITE);
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
	munmap(p, len);
}

TEST(hole_error_efault)
{
	struct cnt c;
	unsigned long n = 3, len = n * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;
	uint64_t pfns[3] = { 0 };

	ASSERT_NOT_NULL(p);
	p[0] = 1;
	ASSERT_EQ(munmap(p + ps(), ps()), 0);
	ASSERT_EQ(cnt_insert(&c, a, len), 0);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, 0, 0), 0);
	ASSERT_EQ(pfns[0] & (UHMM_PFN_VALID | UHMM_PFN_WRITE), UHMM_PFN_VALID | UHMM_PFN_WRITE);
	ASSERT_TRUE(pfns[1] & UHMM_PFN_ERROR);
	ASSERT_FALSE(pfns[1] & UHMM_PFN_VALID);
	ASSERT_EQ(pfns[2], 0ULL);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, FAULT_R, 0), -EFAULT);
	ASSERT_EQ(rf(c.sub, a + ps(), a + 2 * ps(), pfns, FAULT_R, 0), -EFAULT);
	/* The pages around the hole still fault. */
	ASSERT_EQ(rf(c.sub, a + 2 * ps(), a + 3 * ps(), pfns, FAULT_W, 0), 0);
	ASSERT_TRUE(pfns[0] & UHMM_PFN_WRITE);
	/* Entirely unmapped range. */
	ASSERT_EQ(rf(c.sub, a + ps(), a + 2 * ps(), pfns, 0, 0), 0);
	ASSERT_TRUE(pfns[0] & UHMM_PFN_ERROR);
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
	munmap(p, len);
}

TEST(pfn_flags_mask_per_page)
{
	struct cnt c;
	unsigned long n = 4, len = n * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;
	uint64_t pfns[4] = { 0, 0, UHMM_PFN_REQ_WRITE, 0 };

	ASSERT_NOT_NULL(p);
	ASSERT_EQ(cnt_insert(&c, a, len), 0);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, UHMM_PFN_REQ_FAULT, UHMM_PFN_REQ_WRITE), 0);
	for (unsigned long i = 0; i < n; i++) {
		ASSERT_TRUE(pfns[i] & UHMM_PFN_VALID);
		ASSERT_TRUE(frame_ok(pfns[i], p + i * ps()));
		if (i == 2) {
			ASSERT_TRUE(pfns[i] & UHMM_PFN_WRITE);
			ASSERT_FALSE(pfns[i] & UHMM_PFN_ZERO);
		} else {
			ASSERT_FALSE(pfns[i] & UHMM_PFN_WRITE);
			ASSERT_TRUE(pfns[i] & UHMM_PFN_ZERO);
		}
	}
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
	munmap(p, len);
}

TEST(pfn_flags_mask_sparse_requests)
{
	struct cnt c;
	unsigned long n = 5, len = n * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;
	uint64_t pfns[5] = { 0, FAULT_R, 0, FAULT_W, 0 };

	ASSERT_NOT_NULL(p);
	ASSERT_EQ(cnt_insert(&c, a, len), 0);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, 0, FAULT_W), 0);
	ASSERT_EQ(pfns[0], 0ULL);
	ASSERT_EQ(pfns[1] & (UHMM_PFN_VALID | UHMM_PFN_WRITE | UHMM_PFN_ZERO),
		  UHMM_PFN_VALID | UHMM_PFN_ZERO);
	ASSERT_EQ(pfns[2], 0ULL);
	ASSERT_EQ(pfns[3] & (UHMM_PFN_VALID | UHMM_PFN_WRITE | UHMM_PFN_ZERO),
		  UHMM_PFN_VALID | UHMM_PFN_WRITE);
	ASSERT_EQ(pfns[4], 0ULL);
	ASSERT_EQ(page_present(p), 0);
	ASSERT_EQ(page_present(p + 2 * ps()), 0);
	ASSERT_EQ(page_present(p + 4 * ps()), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
	munmap(p, len);
}

TEST(pfn_flags_mask_zero_ignores_input)
{
	struct cnt c;
	unsigned long n = 4, len = n * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;
	uint64_t pfns[4];

	ASSERT_NOT_NULL(p);
	ASSERT_EQ(cnt_insert(&c, a, len), 0);
	for (unsigned long i = 0; i < n; i++)
		pfns[i] = FAULT_W;
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, 0, 0), 0);
	for (unsigned long i = 0; i < n; i++) {
		ASSERT_EQ(pfns[i], 0ULL);
		ASSERT_EQ(page_present(p + i * ps()), 0);
	}
	/* Even on PROT_NONE: a call with no REQ_FAULT reports, never fails. */
	ASSERT_EQ(mprotect(p, len, PROT_NONE), 0);
	for (unsigned long i = 0; i < n; i++)
		pfns[i] = FAULT_W;
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, 0, 0), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_TRUE(pfns[i] & UHMM_PFN_ERROR);
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
	munmap(p, len);
}

TEST(sticky_bits_preserved)
{
	struct cnt c;
	unsigned long n = 4, len = n * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;
	uint64_t in[4] = {
		UHMM_PFN_DMA_MAPPED,
		UHMM_PFN_P2PDMA | UHMM_PFN_ERROR | 0x777,
		UHMM_PFN_DMA_MAPPED | UHMM_PFN_P2PDMA_BUS | UHMM_PFN_ZERO,
		UHMM_PFN_INOUT_FLAGS | UHMM_PFN_WRITE | 0x12345,
	};
	uint64_t pfns[4];

	ASSERT_NOT_NULL(p);
	ASSERT_EQ(cnt_insert(&c, a, len), 0);
	/* Snapshot of untouched pages: only the sticky bits remain. */
	memcpy(pfns, in, sizeof(in));
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, 0, 0), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(pfns[i], in[i] & UHMM_PFN_INOUT_FLAGS);
	/* Faulted: sticky bits survive, everything else is rewritten. */
	memcpy(pfns, in, sizeof(in));
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, FAULT_W, 0), 0);
	for (unsigned long i = 0; i < n; i++) {
		ASSERT_EQ(pfns[i] & UHMM_PFN_INOUT_FLAGS, in[i] & UHMM_PFN_INOUT_FLAGS);
		ASSERT_EQ(pfns[i] & OUT_MASK & ~UHMM_PFN_FRAME_MASK,
			  UHMM_PFN_VALID | UHMM_PFN_WRITE);
		ASSERT_EQ(pfns[i] & UHMM_PFN_FRAME_MASK, frame_of(p + i * ps()));
		ASSERT_TRUE(uhmm_pfn_to_addr(pfns[i]) == p + i * ps());
	}
	/* Errors keep them too. */
	ASSERT_EQ(mprotect(p, len, PROT_NONE), 0);
	memcpy(pfns, in, sizeof(in));
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, 0, 0), 0);
	for (unsigned long i = 0; i < n; i++) {
		ASSERT_EQ(pfns[i] & UHMM_PFN_INOUT_FLAGS, in[i] & UHMM_PFN_INOUT_FLAGS);
		ASSERT_TRUE(pfns[i] & UHMM_PFN_ERROR);
		ASSERT_FALSE(pfns[i] & UHMM_PFN_VALID);
	}
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
	munmap(p, len);
}

/* ------------------------------------------------------------------ */
/* Mapping kinds                                                        */
/* ------------------------------------------------------------------ */

/* Fault [s, e) writable, check frames, write through the pfns. */
static int fault_write_through(struct uhmm_interval_notifier *sub,
			       unsigned long s, unsigned long e, char tag)
{
	unsigned long n = (e - s) / ps();
	uint64_t *pfns = calloc(n, sizeof(*pfns));
	int rc;

	if (!pfns)
		return -ENOMEM;
	rc = rf(sub, s, e, pfns, FAULT_W, 0);
	if (rc)
		goto out;
	for (unsigned long i = 0; i < n; i++) {
		char *addr = (char *)(s + i * ps());
		if ((pfns[i] & (UHMM_PFN_VALID | UHMM_PFN_WRITE | UHMM_PFN_ERROR |
				UHMM_PFN_ZERO)) != (UHMM_PFN_VALID | UHMM_PFN_WRITE) ||
		    !frame_ok(pfns[i], addr)) {
			rc = 1000 + (int)i;
			goto out;
		}
		memset(uhmm_pfn_to_addr(pfns[i]), tag, ps());
		if (addr[0] != tag || addr[ps() - 1] != tag) {
			rc = 2000 + (int)i;
			goto out;
		}
	}
out:
	free(pfns);
	return rc;
}

TEST(kind_malloc_heap)
{
	struct cnt c;
	size_t sz = 64 * 1024;	/* below the mmap threshold: brk heap */
	char *m = malloc(sz);

	ASSERT_NOT_NULL(m);
	unsigned long s = ((unsigned long)m + ps() - 1) & ~(ps() - 1);
	unsigned long e = ((unsigned long)m + sz) & ~(ps() - 1);
	ASSERT_GT(e, s);
	ASSERT_EQ(cnt_insert(&c, s, e - s), 0);
	/* Snapshot first: the heap pages are a valid mix of states. */
	unsigned long n = (e - s) / ps();
	uint64_t *pfns = calloc(n, sizeof(*pfns));
	ASSERT_NOT_NULL(pfns);
	ASSERT_EQ(rf(c.sub, s, e, pfns, 0, 0), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_FALSE(pfns[i] & UHMM_PFN_ERROR);
	ASSERT_EQ(fault_write_through(c.sub, s, e, 'h'), 0);
	ASSERT_EQ(m[s - (unsigned long)m], 'h');
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
	free(pfns);
	free(m);
}

struct stack_arg {
	int rc;
	int line;
};

static void *stack_thread(void *arg)
{
	struct stack_arg *sa = arg;
	volatile char buf[8 * 4096 + 8192];
	struct cnt c;

	memset((char *)buf, 0, sizeof(buf));
	unsigned long s = ((unsigned long)buf + ps() - 1) & ~(ps() - 1);
	unsigned long e = ((unsigned long)buf + sizeof(buf)) & ~(ps() - 1);
	if (e <= s) {
		sa->line = __LINE__;
		return NULL;
	}
	if (cnt_insert(&c, s, e - s)) {
		sa->line = __LINE__;
		return NULL;
	}
	sa->rc = fault_write_through(c.sub, s, e, 's');
	if (sa->rc == 0 && buf[s - (unsigned long)buf] != 's')
		sa->line = __LINE__;
	if (uhmm_interval_notifier_remove(c.sub))
		sa->line = __LINE__;
	return NULL;
}

TEST(kind_thread_stack)
{
	pthread_t t;
	struct stack_arg sa = { 0, 0 };

	ASSERT_EQ(pthread_create(&t, NULL, stack_thread, &sa), 0);
	ASSERT_EQ(pthread_join(t, NULL), 0);
	ASSERT_EQ(sa.line, 0);
	ASSERT_EQ(sa.rc, 0);
}

TEST(kind_main_stack)
{
	volatile char buf[6 * 4096 + 8192];
	struct cnt c;

	memset((char *)buf, 0, sizeof(buf));
	unsigned long s = ((unsigned long)buf + ps() - 1) & ~(ps() - 1);
	unsigned long e = ((unsigned long)buf + sizeof(buf)) & ~(ps() - 1);
	ASSERT_GT(e, s);
	ASSERT_EQ(cnt_insert(&c, s, e - s), 0);
	ASSERT_EQ(fault_write_through(c.sub, s, e, 'm'), 0);
	ASSERT_EQ(buf[s - (unsigned long)buf], 'm');
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
}

TEST(kind_shared_anon)
{
	struct cnt c;
	unsigned long n = 4, len = n * ps();
	char *p = mmap(NULL, len, RW, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	unsigned long a = (unsigned long)p;
	uint64_t pfns[4] = { 0 };

	ASSERT_TRUE(p != MAP_FAILED);
	ASSERT_EQ(cnt_insert(&c, a, len), 0);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, 0, 0), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(pfns[i], 0ULL);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, FAULT_R, 0), 0);
	for (unsigned long i = 0; i < n; i++) {
		ASSERT_TRUE(pfns[i] & UHMM_PFN_VALID);
		ASSERT_FALSE(pfns[i] & UHMM_PFN_ERROR);
		ASSERT_TRUE(frame_ok(pfns[i], p + i * ps()));
	}
	ASSERT_EQ(fault_write_through(c.sub, a, a + len, 'S'), 0);
	/* Shared: a child sees the device's write. */
	pid_t pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0)
		_exit(p[len - 1] == 'S' ? 0 : 1);
	int st;
	ASSERT_EQ(waitpid(pid, &st, 0), pid);
	ASSERT_TRUE(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
	munmap(p, len);
}

TEST(kind_memfd_shared)
{
	struct cnt c;
	unsigned long n = 4, len = n * ps();
	int fd = memfd_create("uhmm-test", 0);

	ASSERT_GE(fd, 0);
	ASSERT_EQ(ftruncate(fd, (off_t)len), 0);
	char *p = mmap(NULL, len, RW, MAP_SHARED, fd, 0);
	ASSERT_TRUE(p != MAP_FAILED);
	unsigned long a = (unsigned long)p;
	ASSERT_EQ(cnt_insert(&c, a, len), 0);
	ASSERT_EQ(fault_write_through(c.sub, a, a + len, 'M'), 0);
	char *buf = malloc(len);
	ASSERT_NOT_NULL(buf);
	ASSERT_EQ(pread(fd, buf, len, 0), (ssize_t)len);
	for (unsigned long i = 0; i < len; i++)
		ASSERT_EQ(buf[i], 'M');
	/* And the other way round. */
	memset(buf, 'w', ps());
	ASSERT_EQ(pwrite(fd, buf, ps(), (off_t)ps()), (ssize_t)ps());
	uint64_t pfn = 0;
	ASSERT_EQ(rf(c.sub, a + ps(), a + 2 * ps(), &pfn, FAULT_R, 0), 0);
	ASSERT_EQ(((char *)uhmm_pfn_to_addr(pfn))[0], 'w');
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
	munmap(p, len);
	close(fd);
	free(buf);
}

TEST(kind_file_private)
{
	struct cnt c;
	unsigned long n = 4, len = n * ps();
	int fd = make_tmp_file(0);
	char *buf = malloc(len);

	ASSERT_GE(fd, 0);
	ASSERT_NOT_NULL(buf);
	memset(buf, 'f', len);
	ASSERT_EQ(pwrite(fd, buf, len, 0), (ssize_t)len);
	char *p = mmap(NULL, len, RW, MAP_PRIVATE, fd, 0);
	ASSERT_TRUE(p != MAP_FAILED);
	unsigned long a = (unsigned long)p;
	uint64_t pfns[4] = { 0 };
	ASSERT_EQ(cnt_insert(&c, a, len), 0);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, FAULT_R, 0), 0);
	for (unsigned long i = 0; i < n; i++) {
		/* The page cache page, mapped read-only until written. */
		ASSERT_EQ(pfns[i] & (UHMM_PFN_VALID | UHMM_PFN_WRITE | UHMM_PFN_ZERO |
				     UHMM_PFN_ERROR), UHMM_PFN_VALID);
		ASSERT_TRUE(frame_ok(pfns[i], p + i * ps()));
		ASSERT_EQ(((char *)uhmm_pfn_to_addr(pfns[i]))[7], 'f');
	}
	/* Write breaks COW: the file does not change. */
	ASSERT_EQ(fault_write_through(c.sub, a, a + len, 'P'), 0);
	ASSERT_EQ(pread(fd, buf, len, 0), (ssize_t)len);
	for (unsigned long i = 0; i < len; i++)
		ASSERT_EQ(buf[i], 'f');
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
	munmap(p, len);
	close(fd);
	free(buf);
}

TEST(kind_file_shared)
{
	struct cnt c;
	unsigned long n = 4, len = n * ps();
	int fd = make_tmp_file(len);
	char *buf = malloc(len);

	ASSERT_GE(fd, 0);
	ASSERT_NOT_NULL(buf);
	char *p = mmap(NULL, len, RW, MAP_SHARED, fd, 0);
	ASSERT_TRUE(p != MAP_FAILED);
	unsigned long a = (unsigned long)p;
	uint64_t pfns[4] = { 0 };
	ASSERT_EQ(cnt_insert(&c, a, len), 0);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, FAULT_R, 0), 0);
	for (unsigned long i = 0; i < n; i++) {
		ASSERT_TRUE(pfns[i] & UHMM_PFN_VALID);
		ASSERT_FALSE(pfns[i] & (UHMM_PFN_ERROR | UHMM_PFN_ZERO));
		ASSERT_TRUE(frame_ok(pfns[i], p + i * ps()));
	}
	ASSERT_EQ(fault_write_through(c.sub, a, a + len, 'F'), 0);
	ASSERT_EQ(pread(fd, buf, len, 0), (ssize_t)len);
	for (unsigned long i = 0; i < len; i++)
		ASSERT_EQ(buf[i], 'F');
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
	munmap(p, len);
	close(fd);
	free(buf);
}

TEST(kind_file_past_eof)
{
	struct cnt c;
	unsigned long len = 2 * ps();
	int fd = make_tmp_file(ps());	/* one page of file, two mapped */

	ASSERT_GE(fd, 0);
	char *p = mmap(NULL, len, RW, MAP_SHARED, fd, 0);
	ASSERT_TRUE(p != MAP_FAILED);
	unsigned long a = (unsigned long)p;
	uint64_t pfns[2] = { 0 };
	ASSERT_EQ(cnt_insert(&c, a, len), 0);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, 0, 0), 0);
	ASSERT_FALSE(pfns[1] & UHMM_PFN_VALID);
	/* Faulting the page past EOF would be SIGBUS for the CPU. */
	ASSERT_EQ(rf(c.sub, a + ps(), a + len, pfns, FAULT_R, 0), -EFAULT);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, FAULT_R, 0), -EFAULT);
	ASSERT_EQ(rf(c.sub, a, a + ps(), pfns, FAULT_W, 0), 0);
	ASSERT_TRUE(pfns[0] & UHMM_PFN_WRITE);
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
	munmap(p, len);
	close(fd);
}

/* ------------------------------------------------------------------ */
/* uhmm_copy_nofault                                                    */
/* ------------------------------------------------------------------ */

TEST(copy_nofault_basic)
{
	unsigned long len = 4 * ps();
	unsigned char *src = map_anon(len, RW), *dst = map_anon(len, RW);

	ASSERT_NOT_NULL(src);
	ASSERT_NOT_NULL(dst);
	for (unsigned long i = 0; i < len; i++)
		src[i] = (unsigned char)(i * 7 + 3);
	unsigned long fa = 12345;
	ASSERT_EQ(uhmm_copy_nofault(dst, src, len, &fa), 0);
	ASSERT_MEMEQ(dst, src, len);
	/* Unaligned, odd sizes, into untouched memory. */
	unsigned char *d2 = map_anon(len, RW);
	ASSERT_NOT_NULL(d2);
	ASSERT_EQ(uhmm_copy_nofault(d2 + 3, src + 5, len - 100, NULL), 0);
	ASSERT_MEMEQ(d2 + 3, src + 5, len - 100);
	ASSERT_EQ(d2[0], 0);
	ASSERT_EQ(uhmm_copy_nofault(d2, src, 1, NULL), 0);
	ASSERT_EQ(d2[0], src[0]);
	/* From the zero page. */
	unsigned char *z = map_anon(ps(), RW);
	ASSERT_NOT_NULL(z);
	ASSERT_EQ(uhmm_copy_nofault(dst, z, ps(), NULL), 0);
	for (unsigned long i = 0; i < ps(); i++)
		ASSERT_EQ(dst[i], 0);
	munmap(src, len);
	munmap(dst, len);
	munmap(d2, len);
	munmap(z, ps());
}

TEST(copy_nofault_len0_null)
{
	char b[8] = "abcdefg";

	ASSERT_EQ(uhmm_copy_nofault(NULL, NULL, 0, NULL), 0);
	ASSERT_EQ(uhmm_copy_nofault(b, NULL, 0, NULL), 0);
	ASSERT_EQ(uhmm_copy_nofault(NULL, b, 0, NULL), 0);
	unsigned long fa = 0;
	/* NULL is never mapped: a fault, not a crash. */
	ASSERT_EQ(uhmm_copy_nofault(b, NULL, 8, &fa), -EFAULT);
	ASSERT_LT(fa, ps());
	ASSERT_EQ(strcmp(b, "abcdefg"), 0);
	ASSERT_EQ(uhmm_copy_nofault(NULL, b, 8, NULL), -EFAULT);
}

TEST(copy_nofault_unmapped_src)
{
	unsigned long len = 3 * ps();
	char *p = map_anon(len, RW), *dst = map_anon(len, RW);
	unsigned long fa = 0;

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(dst);
	memset(p, 'x', len);
	ASSERT_EQ(munmap(p + ps(), ps()), 0);
	ASSERT_EQ(uhmm_copy_nofault(dst, p + ps(), ps(), &fa), -EFAULT);
	ASSERT_GE(fa, (unsigned long)p + ps());
	ASSERT_LT(fa, (unsigned long)p + 2 * ps());
	/* Spanning the hole: the fault is at the hole. */
	fa = 0;
	ASSERT_EQ(uhmm_copy_nofault(dst, p, len, &fa), -EFAULT);
	ASSERT_GE(fa, (unsigned long)p + ps());
	ASSERT_LT(fa, (unsigned long)p + 2 * ps());
	/* Repeated faults are fine; NULL fault_addr is fine. */
	for (int i = 0; i < 100; i++)
		ASSERT_EQ(uhmm_copy_nofault(dst, p + ps() + 8, 64, NULL), -EFAULT);
	/* And copying still works afterwards. */
	ASSERT_EQ(uhmm_copy_nofault(dst, p + 2 * ps(), ps(), NULL), 0);
	ASSERT_EQ(dst[ps() - 1], 'x');
	munmap(p, ps());
	munmap(p + 2 * ps(), ps());
	munmap(dst, len);
}

TEST(copy_nofault_prot_none_src)
{
	char *p = map_anon(ps(), RW), *dst = map_anon(ps(), RW);
	unsigned long fa = 0;

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(dst);
	memset(p, 'n', ps());
	ASSERT_EQ(mprotect(p, ps(), PROT_NONE), 0);
	ASSERT_EQ(uhmm_copy_nofault(dst, p, ps(), &fa), -EFAULT);
	ASSERT_GE(fa, (unsigned long)p);
	ASSERT_LT(fa, (unsigned long)p + ps());
	ASSERT_EQ(mprotect(p, ps(), PROT_READ), 0);
	ASSERT_EQ(uhmm_copy_nofault(dst, p, ps(), NULL), 0);
	ASSERT_EQ(dst[100], 'n');
	munmap(p, ps());
	munmap(dst, ps());
}

TEST(copy_nofault_ro_dst)
{
	unsigned long len = 2 * ps();
	char *src = map_anon(len, RW), *ro = map_anon(len, RW);
	unsigned long fa = 0;

	ASSERT_NOT_NULL(src);
	ASSERT_NOT_NULL(ro);
	memset(src, 's', len);
	memset(ro, 'r', len);
	ASSERT_EQ(mprotect(ro + ps(), ps(), PROT_READ), 0);
	ASSERT_EQ(uhmm_copy_nofault(ro + ps(), src, ps(), &fa), -EFAULT);
	ASSERT_GE(fa, (unsigned long)ro + ps());
	ASSERT_LT(fa, (unsigned long)ro + 2 * ps());
	for (unsigned long i = ps(); i < len; i++)
		ASSERT_EQ(ro[i], 'r');
	/* Spanning: the writable first page may be written, the second not. */
	fa = 0;
	ASSERT_EQ(uhmm_copy_nofault(ro, src, len, &fa), -EFAULT);
	ASSERT_GE(fa, (unsigned long)ro + ps());
	ASSERT_LT(fa, (unsigned long)ro + 2 * ps());
	for (unsigned long i = ps(); i < len; i++)
		ASSERT_EQ(ro[i], 'r');
	/* A read-only zero page too. */
	char *z = map_anon(ps(), PROT_READ);
	ASSERT_NOT_NULL(z);
	ASSERT_EQ(uhmm_copy_nofault(z, src, 16, NULL), -EFAULT);
	ASSERT_EQ(z[0], 0);
	munmap(src, len);
	munmap(ro, len);
	munmap(z, ps());
}

/*
 * A faulting copy raises no invalidation itself (its caller may hold a
 * driver lock); the driver revalidates the faulting page after dropping
 * it, and that invalidates in the calling thread.
 */
TEST(copy_nofault_then_revalidate)
{
	struct cnt c;
	unsigned long len = 2 * ps();
	char *p = map_anon(len, RW), *dst = map_anon(len, RW);
	unsigned long a = (unsigned long)p;
	uint64_t pfns[2] = { 0 };

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(dst);
	ASSERT_EQ(cnt_insert(&c, a, len), 0);
	ASSERT_EQ(rf(c.sub, a, a + len, pfns, FAULT_W, 0), 0);
	unsigned long seq = uhmm_interval_read_begin(c.sub);
	/* mprotect raises no userfaultfd event... */
	ASSERT_EQ(mprotect(p, len, PROT_NONE), 0);
	/* ...the faulting copy reports where it faulted, nothing more... */
	unsigned long fa = 0;
	ASSERT_EQ(uhmm_copy_nofault(dst, uhmm_pfn_to_addr(pfns[0]), ps(), &fa), -EFAULT);
	ASSERT_EQ(atomic_load(&c.calls), 0);
	/* ...and revalidating that page invalidates, in this thread. */
	fa &= ~(ps() - 1);
	ASSERT_EQ(uhmm_range_revalidate(fa, fa + ps()), 0);
	ASSERT_GE(atomic_load(&c.calls), 1);
	ASSERT_EQ(atomic_load(&c.last_event), (int)UHMM_NOTIFY_PROTECTION_VMA);
	ASSERT_EQ(atomic_load(&c.tid), (int)syscall(SYS_gettid));
	pthread_mutex_lock(&c.lock);
	ASSERT_TRUE(uhmm_interval_read_retry(c.sub, seq));
	pthread_mutex_unlock(&c.lock);
	ASSERT_EQ(uhmm_interval_notifier_remove(c.sub), 0);
	munmap(p, len);
	munmap(dst, len);
}

static sigjmp_buf jb;
static volatile sig_atomic_t my_handler_ran;

static void my_segv(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)si;
	(void)uc;
	my_handler_ran++;
	siglongjmp(jb, 1);
}

TEST(copy_nofault_chains_sigsegv)
{
	struct sigaction sa;
	static char *p, *dst;

	p = map_anon(ps(), PROT_READ);
	dst = map_anon(ps(), RW);
	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(dst);
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = my_segv;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	/* Installed before uhmm_init(): uhmm must chain to it. */
	ASSERT_EQ(sigaction(SIGSEGV, &sa, NULL), 0);
	ASSERT_EQ(uhmm_init(), 0);
	ASSERT_EQ(uhmm_copy_nofault(p, dst, 8, NULL), -EFAULT);
	ASSERT_EQ(my_handler_ran, 0);
	if (sigsetjmp(jb, 1) == 0) {
		*(volatile char *)p = 1;	/* a real fault outside a copy */
		ASSERT_TRUE(0);
	}
	ASSERT_EQ(my_handler_ran, 1);
	/* uhmm's handling still works after that. */
	ASSERT_EQ(uhmm_copy_nofault(p, dst, 8, NULL), -EFAULT);
	ASSERT_EQ(uhmm_copy_nofault(dst, p, 8, NULL), 0);
	ASSERT_EQ(my_handler_ran, 1);
	munmap(p, ps());
	munmap(dst, ps());
}

struct copy_thr {
	char *ro;
	char *src;
	int bad;
};

static void *copy_fault_thread(void *arg)
{
	struct copy_thr *t = arg;

	for (int i = 0; i < 2000; i++) {
		unsigned long fa = 0;
		if (uhmm_copy_nofault(t->ro, t->src, 64, &fa) != -EFAULT ||
		    fa < (unsigned long)t->ro || fa >= (unsigned long)t->ro + ps())
			t->bad++;
		if (uhmm_copy_nofault(t->src + 64, t->src, 64, NULL) != 0)
			t->bad++;
	}
	return NULL;
}

TEST(copy_nofault_threads)
{
	struct copy_thr t[4];
	pthread_t th[4];

	for (int i = 0; i < 4; i++) {
		t[i].ro = map_anon(ps(), PROT_READ);
		t[i].src = map_anon(ps(), RW);
		t[i].bad = 0;
		ASSERT_NOT_NULL(t[i].ro);
		ASSERT_NOT_NULL(t[i].src);
		ASSERT_EQ(pthread_create(&th[i], NULL, copy_fault_thread, &t[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		ASSERT_EQ(pthread_join(th[i], NULL), 0);
		ASSERT_EQ(t[i].bad, 0);
	}
}
