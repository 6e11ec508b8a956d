/* SPDX-License-Identifier: MIT */
/*
 * Runtime and interval notifier tests: uhmm_init(), uhmm_features(),
 * uhmm_shutdown(), notifier insert/remove, the read_begin/read_retry
 * sequence protocol and the invalidation events raised for each kind of
 * mapping change (include/linux/mmu_notifier.h semantics).
 *
 * The core tracks only the VMAs uhmm_range_fault() reported pages of, so
 * every event test faults its range in first. UNMAP/CLEAR callbacks run
 * on a monitor thread shortly after the system call returns: the tests
 * wait for them with a bounded poll.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
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

#ifndef MADV_FREE
#define MADV_FREE 8
#endif

#define WAIT_MS 5000	/* bound for waiting on an asynchronous callback */
#define MAXEV 64

static pid_t my_tid(void)
{
	return (pid_t)syscall(SYS_gettid);
}

/* ------------------------------------------------------------------ */
/* A recording notifier                                                 */
/* ------------------------------------------------------------------ */

struct ev {
	int event;
	unsigned int flags;
	unsigned long start, end, seq;
	pid_t tid;
};

struct rec {
	pthread_mutex_t lock;		/* the "driver lock" */
	struct uhmm_interval_notifier *sub;
	unsigned long nstart, nend;	/* the notifier's range */
	struct ev ev[MAXEV];
	atomic_int n;			/* events recorded (capped at MAXEV) */
	atomic_int calls;		/* callbacks run */
	atomic_int bad_overlap;		/* callbacks whose range misses us */
	atomic_int bad_seq;		/* even cur_seq */
	atomic_int bad_sub;		/* sub != the notifier this rec owns */
	/* optional behaviours */
	int sleep_ms;			/* sleep inside the callback */
	bool block;			/* block inside until released */
	pthread_cond_t cond;
	bool released;
	atomic_int in_cb;
	atomic_int done_cb;
};

static void rec_init(struct rec *r)
{
	memset(r, 0, sizeof(*r));
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->cond, NULL);
}

static bool rec_invalidate(struct uhmm_interval_notifier *sub,
			   const struct uhmm_notifier_range *range,
			   unsigned long cur_seq)
{
	struct rec *r = uhmm_interval_notifier_priv(sub);

	atomic_fetch_add(&r->in_cb, 1);
	pthread_mutex_lock(&r->lock);
	uhmm_interval_set_seq(sub, cur_seq);
	if (r->sub && sub != r->sub)
		atomic_fetch_add(&r->bad_sub, 1);
	if (!(cur_seq & 1))
		atomic_fetch_add(&r->bad_seq, 1);
	if (range->end <= r->nstart || range->start >= r->nend ||
	    range->start >= range->end)
		atomic_fetch_add(&r->bad_overlap, 1);
	int i = atomic_load(&r->n);
	if (i < MAXEV) {
		r->ev[i].event = (int)range->event;
		r->ev[i].flags = range->flags;
		r->ev[i].start = range->start;
		r->ev[i].end = range->end;
		r->ev[i].seq = cur_seq;
		r->ev[i].tid = my_tid();
		atomic_store(&r->n, i + 1);
	}
	while (r->block && !r->released)
		pthread_cond_wait(&r->cond, &r->lock);
	pthread_mutex_unlock(&r->lock);
	if (r->sleep_ms)
		usleep((useconds_t)r->sleep_ms * 1000);
	atomic_fetch_add(&r->calls, 1);
	atomic_fetch_add(&r->done_cb, 1);
	return true;
}

static const struct uhmm_interval_notifier_ops rec_ops = {
	.invalidate = rec_invalidate,
};

static int rec_insert(struct rec *r, unsigned long start, unsigned long len)
{
	r->nstart = start;
	r->nend = start + len;
	int rc = uhmm_interval_notifier_insert(&r->sub, start, len, &rec_ops, r);
	return rc;
}

/* Index of the first recorded event of kind @event at or after @from, or -1. */
static int rec_find(struct rec *r, int event, int from)
{
	int n = atomic_load(&r->n);

	for (int i = from; i < n; i++)
		if (r->ev[i].event == event)
			return i;
	return -1;
}

/* Wait up to @ms for an event of kind @event; its index or -1. */
static int rec_wait(struct rec *r, int event, long ms)
{
	long end = now_ms() + ms;

	for (;;) {
		pthread_mutex_lock(&r->lock);
		int i = rec_find(r, event, 0);
		pthread_mutex_unlock(&r->lock);
		if (i < 0 && now_ms() > end)
			require_uffd(false);	/* no events at all: skip */
		if (i >= 0 || now_ms() > end)
			return i;
		usleep(1000);
	}
}

/* Is every page of [start, end) covered by some event of kind @event? */
static bool rec_covers(struct rec *r, int event, unsigned long start,
		       unsigned long end)
{
	int n = atomic_load(&r->n);

	for (unsigned long a = start; a < end; a += ps()) {
		bool hit = false;
		for (int i = 0; i < n; i++)
			if (r->ev[i].event == event && r->ev[i].start <= a &&
			    r->ev[i].end >= a + ps())
				hit = true;
		if (!hit)
			return false;
	}
	return true;
}

/* Wait until [start, end) is covered by events of kind @event. */
static bool rec_wait_covers(struct rec *r, int event, unsigned long start,
			    unsigned long end, long ms)
{
	long stop = now_ms() + ms;

	for (;;) {
		pthread_mutex_lock(&r->lock);
		bool ok = rec_covers(r, event, start, end);
		pthread_mutex_unlock(&r->lock);
		if (!ok && now_ms() > stop)
			require_uffd(false);	/* no events at all: skip */
		if (ok || now_ms() > stop)
			return ok;
		usleep(1000);
	}
}

static bool rec_retry(struct rec *r, unsigned long seq)
{
	pthread_mutex_lock(&r->lock);
	bool b = uhmm_interval_read_retry(r->sub, seq);
	pthread_mutex_unlock(&r->lock);
	return b;
}

/*
 * Fault [start, end) in through @sub with @flags, following the driver
 * protocol; returns the range_fault result and the sequence it ran under.
 */
static int fault_range(struct uhmm_interval_notifier *sub, unsigned long start,
		       unsigned long end, uint64_t flags, unsigned long *seq)
{
	unsigned long n = (end - start) / ps();
	uint64_t *pfns = calloc(n, sizeof(*pfns));
	struct uhmm_range r = {
		.notifier = sub,
		.start = start,
		.end = end,
		.hmm_pfns = pfns,
		.default_flags = flags,
		.pfn_flags_mask = 0,
	};
	int rc = -EBUSY;

	if (!pfns)
		return -ENOMEM;
	for (int i = 0; i < 1000 && rc == -EBUSY; i++) {
		r.notifier_seq = uhmm_interval_read_begin(sub);
		rc = uhmm_range_fault(&r);
	}
	if (seq)
		*seq = r.notifier_seq;
	free(pfns);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Runtime                                                              */
/* ------------------------------------------------------------------ */

TEST(version_string)
{
	char want[32];

	snprintf(want, sizeof(want), "%d.%d.%d", UHMM_VERSION_MAJOR,
		 UHMM_VERSION_MINOR, UHMM_VERSION_PATCH);
	ASSERT_NOT_NULL(uhmm_version());
	ASSERT_EQ(strcmp(uhmm_version(), want), 0);
}

TEST(init_idempotent)
{
	ASSERT_EQ(uhmm_init(), 0);
	ASSERT_EQ(uhmm_init(), 0);
	ASSERT_EQ(uhmm_init(), 0);
}

static void *init_thread(void *arg)
{
	(void)arg;
	return (void *)(intptr_t)uhmm_init();
}

TEST(init_concurrent)
{
	pthread_t t[8];

	for (int i = 0; i < 8; i++)
		ASSERT_EQ(pthread_create(&t[i], NULL, init_thread, NULL), 0);
	for (int i = 0; i < 8; i++) {
		void *ret;
		ASSERT_EQ(pthread_join(t[i], &ret), 0);
		ASSERT_EQ((int)(intptr_t)ret, 0);
	}
	ASSERT_EQ(uhmm_init(), 0);
}

TEST(features_bad_args)
{
	struct uhmm_features f;

	ASSERT_EQ(uhmm_features(NULL), -EINVAL);
	memset(&f, 0, sizeof(f));
	f.size = 0;
	ASSERT_EQ(uhmm_features(&f), -EINVAL);
	f.size = sizeof(f) - 1;
	ASSERT_EQ(uhmm_features(&f), -EINVAL);
	f.size = 8;
	ASSERT_EQ(uhmm_features(&f), -EINVAL);
}

static int thp_mode_never(void)
{
	char buf[128] = { 0 };
	int fd = open("/sys/kernel/mm/transparent_hugepage/enabled", O_RDONLY);

	if (fd < 0)
		return 1;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 1;
	return strstr(buf, "[never]") != NULL;
}

TEST(features_sane)
{
	struct uhmm_features f;

	memset(&f, 0xa5, sizeof(f));
	f.size = sizeof(f);
	ASSERT_EQ(uhmm_features(&f), 0);
	ASSERT_EQ((unsigned long)f.page_size, ps());
	/* This project targets 6.18: both ioctls exist. */
	ASSERT_TRUE(f.flags & UHMM_FEAT_PAGEMAP_SCAN);
	ASSERT_TRUE(f.flags & UHMM_FEAT_PROCMAP_QUERY);
	ASSERT_LE(f.uffd_path, (uint32_t)UHMM_UFFD_SYSCALL_USER_ONLY);
	ASSERT_LE(f.uffd_error, 0);
	/* Events are tracked exactly when a userfaultfd was obtained. */
	ASSERT_EQ(!!(f.flags & UHMM_FEAT_EVENTS), f.uffd_path != UHMM_UFFD_NONE);
	if (f.uffd_path != UHMM_UFFD_NONE) {
		ASSERT_NE(f.uffd_features, 0);
		ASSERT_NE(f.uffd_ioctls, 0);
	}
	/* Root always gets one (/dev/userfaultfd or the syscall), except
	 * under valgrind, where uhmm opens none (-EDEADLK). */
	if (geteuid() == 0 && f.uffd_error != -EDEADLK)
		ASSERT_NE(f.uffd_path, (uint32_t)UHMM_UFFD_NONE);
	ASSERT_EQ(!!(f.flags & UHMM_FEAT_THP), !thp_mode_never());
	/* A second call gives the same answer. */
	struct uhmm_features g;
	memset(&g, 0, sizeof(g));
	g.size = sizeof(g);
	ASSERT_EQ(uhmm_features(&g), 0);
	ASSERT_EQ(g.flags, f.flags);
	ASSERT_EQ(g.uffd_path, f.uffd_path);
	ASSERT_EQ(g.page_size, f.page_size);
}

/* ------------------------------------------------------------------ */
/* Insert / remove                                                      */
/* ------------------------------------------------------------------ */

static bool noop_invalidate(struct uhmm_interval_notifier *sub,
			    const struct uhmm_notifier_range *range,
			    unsigned long cur_seq)
{
	(void)range;
	uhmm_interval_set_seq(sub, cur_seq);
	return true;
}

static const struct uhmm_interval_notifier_ops noop_ops = {
	.invalidate = noop_invalidate,
};
static const struct uhmm_interval_notifier_ops null_ops = {
	.invalidate = NULL,
};

TEST(insert_remove)
{
	struct uhmm_interval_notifier *sub = NULL;
	int cookie;
	unsigned long len = 16 * ps();
	char *p = map_anon(len, RW);

	ASSERT_NOT_NULL(p);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, (unsigned long)p, len,
						&noop_ops, &cookie), 0);
	ASSERT_NOT_NULL(sub);
	ASSERT_TRUE(uhmm_interval_notifier_priv(sub) == &cookie);
	ASSERT_EQ(uhmm_interval_notifier_remove(sub), 0);
	ASSERT_NULL(uhmm_interval_notifier_priv(NULL));

	/* Many notifiers, also on overlapping and unmapped ranges. */
	struct uhmm_interval_notifier *subs[64];
	for (int i = 0; i < 64; i++)
		ASSERT_EQ(uhmm_interval_notifier_insert(&subs[i],
				(unsigned long)p + (unsigned long)(i % 8) * ps(),
				(unsigned long)(1 + i % 5) * ps(), &noop_ops,
				(void *)(intptr_t)i), 0);
	for (int i = 0; i < 64; i++)
		ASSERT_TRUE(uhmm_interval_notifier_priv(subs[i]) == (void *)(intptr_t)i);
	for (int i = 63; i >= 0; i--)
		ASSERT_EQ(uhmm_interval_notifier_remove(subs[i]), 0);

	/* A range with nothing mapped and the top of the address space. */
	unsigned long top = (ULONG_MAX & ~(ps() - 1)) - 16 * ps();
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, top, 16 * ps(), &noop_ops,
						NULL), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(sub), 0);
	munmap(p, len);
}

TEST(insert_bad_args)
{
	struct uhmm_interval_notifier *sub = NULL;
	unsigned long len = 4 * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;
	unsigned long top = ULONG_MAX & ~(ps() - 1);

	ASSERT_NOT_NULL(p);
	ASSERT_EQ(uhmm_interval_notifier_insert(NULL, a, len, &noop_ops, NULL), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, a, len, NULL, NULL), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, a, len, &null_ops, NULL), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, a + 1, len, &noop_ops, NULL), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, a + ps() / 2, len, &noop_ops, NULL), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, a, len - 1, &noop_ops, NULL), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, a, ps() + 8, &noop_ops, NULL), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, a, 0, &noop_ops, NULL), -EINVAL);
	/* start + length overflows */
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, top, 2 * ps(), &noop_ops, NULL), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, a, top, &noop_ops, NULL), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, top - ps(), ULONG_MAX & ~(ps() - 1),
						&noop_ops, NULL), -EINVAL);
	munmap(p, len);
}

TEST(remove_null)
{
	ASSERT_EQ(uhmm_interval_notifier_remove(NULL), -EINVAL);
}

TEST(read_begin_odd_no_retry)
{
	struct rec r;
	unsigned long len = 4 * ps();
	char *p = map_anon(len, RW);

	ASSERT_NOT_NULL(p);
	rec_init(&r);
	ASSERT_EQ(rec_insert(&r, (unsigned long)p, len), 0);
	unsigned long seq = uhmm_interval_read_begin(r.sub);
	ASSERT_EQ(seq & 1, 1UL);
	ASSERT_FALSE(rec_retry(&r, seq));
	ASSERT_FALSE(uhmm_interval_check_retry(r.sub, seq));
	/* Faulting in is not an invalidation. */
	ASSERT_EQ(fault_range(r.sub, (unsigned long)p, (unsigned long)p + len,
			      FAULT_W, NULL), 0);
	p[0] = 1;
	ASSERT_FALSE(rec_retry(&r, seq));
	unsigned long seq2 = uhmm_interval_read_begin(r.sub);
	ASSERT_EQ(seq2 & 1, 1UL);
	ASSERT_EQ(seq2, seq);
	ASSERT_EQ(atomic_load(&r.calls), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(r.sub), 0);
	munmap(p, len);
}

/* ------------------------------------------------------------------ */
/* Events                                                               */
/* ------------------------------------------------------------------ */

TEST(munmap_unmap_event)
{
	struct rec r;
	unsigned long len = 4 * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p, seq;

	ASSERT_NOT_NULL(p);
	rec_init(&r);
	ASSERT_EQ(rec_insert(&r, a, len), 0);
	ASSERT_EQ(fault_range(r.sub, a, a + len, FAULT_R, NULL), 0);
	seq = uhmm_interval_read_begin(r.sub);
	ASSERT_FALSE(rec_retry(&r, seq));

	ASSERT_EQ(munmap(p + ps(), 2 * ps()), 0);
	int i = rec_wait(&r, UHMM_NOTIFY_UNMAP, WAIT_MS);
	ASSERT_GE(i, 0);
	ASSERT_LE(r.ev[i].start, a + ps());
	ASSERT_GE(r.ev[i].end, a + 3 * ps());
	ASSERT_EQ(r.ev[i].seq & 1, 1UL);
	ASSERT_TRUE(r.ev[i].flags & UHMM_NOTIFIER_RANGE_BLOCKABLE);
	ASSERT_TRUE(rec_retry(&r, seq));
	ASSERT_TRUE(uhmm_interval_check_retry(r.sub, seq));
	ASSERT_EQ(atomic_load(&r.bad_overlap), 0);
	ASSERT_EQ(atomic_load(&r.bad_seq), 0);
	ASSERT_EQ(atomic_load(&r.bad_sub), 0);

	/* A new read section is clean again. */
	unsigned long seq2 = uhmm_interval_read_begin(r.sub);
	ASSERT_EQ(seq2 & 1, 1UL);
	ASSERT_NE(seq2, seq);
	ASSERT_FALSE(rec_retry(&r, seq2));

	/* The rest of the range still faults in. */
	ASSERT_EQ(fault_range(r.sub, a, a + ps(), FAULT_W, NULL), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(r.sub), 0);
	munmap(p, len);
}

TEST(munmap_whole_and_larger)
{
	struct rec r;
	unsigned long len = 8 * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;

	ASSERT_NOT_NULL(p);
	rec_init(&r);
	/* Notifier over the middle; unmap the whole mapping. */
	ASSERT_EQ(rec_insert(&r, a + 2 * ps(), 4 * ps()), 0);
	ASSERT_EQ(fault_range(r.sub, a + 2 * ps(), a + 6 * ps(), FAULT_W, NULL), 0);
	unsigned long seq = uhmm_interval_read_begin(r.sub);
	ASSERT_EQ(munmap(p, len), 0);
	ASSERT_TRUE(rec_wait_covers(&r, UHMM_NOTIFY_UNMAP, a + 2 * ps(),
				    a + 6 * ps(), WAIT_MS));
	ASSERT_TRUE(rec_retry(&r, seq));
	ASSERT_EQ(atomic_load(&r.bad_overlap), 0);
	/* Now nothing is mapped: REQ_FAULT fails. */
	int rc = fault_range(r.sub, a + 2 * ps(), a + 6 * ps(), FAULT_R, NULL);
	if (!UNDER_ASAN)
		ASSERT_EQ(rc, -EFAULT);
	ASSERT_EQ(uhmm_interval_notifier_remove(r.sub), 0);
}

TEST(nonoverlapping_no_callback)
{
	struct rec ra, rb;
	unsigned long len = 4 * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;

	ASSERT_NOT_NULL(p);
	rec_init(&ra);
	rec_init(&rb);
	ASSERT_EQ(rec_insert(&ra, a, 2 * ps()), 0);
	ASSERT_EQ(rec_insert(&rb, a + 2 * ps(), 2 * ps()), 0);
	ASSERT_EQ(fault_range(ra.sub, a, a + 2 * ps(), FAULT_W, NULL), 0);
	ASSERT_EQ(fault_range(rb.sub, a + 2 * ps(), a + 4 * ps(), FAULT_W, NULL), 0);
	unsigned long seqa = uhmm_interval_read_begin(ra.sub);

	ASSERT_EQ(munmap(p + 2 * ps(), 2 * ps()), 0);
	ASSERT_GE(rec_wait(&rb, UHMM_NOTIFY_UNMAP, WAIT_MS), 0);
	/* Give a stray callback a moment to show up, then check none did. */
	usleep(100 * 1000);
	ASSERT_EQ(atomic_load(&ra.calls), 0);
	ASSERT_FALSE(rec_retry(&ra, seqa));
	ASSERT_EQ(atomic_load(&rb.bad_overlap), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(ra.sub), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(rb.sub), 0);
	munmap(p, 2 * ps());
}

static int clear_case(int advice, int *line)
{
	struct rec r;
	unsigned long len = 4 * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;

#define CK(x) do { if (!(x)) { *line = __LINE__; return -1; } } while (0)
	CK(p != NULL);
	rec_init(&r);
	memset(p, 0x5a, len);
	CK(rec_insert(&r, a, len) == 0);
	CK(fault_range(r.sub, a, a + len, FAULT_W, NULL) == 0);
	unsigned long seq = uhmm_interval_read_begin(r.sub);
	CK(madvise(p + ps(), ps(), advice) == 0);
	int i = rec_wait(&r, UHMM_NOTIFY_CLEAR, WAIT_MS);
	CK(i >= 0);
	CK(r.ev[i].start <= a + ps());
	CK(r.ev[i].end >= a + 2 * ps());
	CK(r.ev[i].seq & 1);
	CK(rec_retry(&r, seq));
	CK(atomic_load(&r.bad_overlap) == 0);
	/* A discard is not an unmap. */
	CK(rec_find(&r, UHMM_NOTIFY_UNMAP, 0) < 0);
	CK(uhmm_interval_notifier_remove(r.sub) == 0);
	munmap(p, len);
#undef CK
	return 0;
}

TEST(madv_dontneed_clear_event)
{
	int line = 0;

	ASSERT_EQ(clear_case(MADV_DONTNEED, &line), 0);
	ASSERT_EQ(line, 0);
}

TEST(madv_free_clear_event)
{
	int line = 0;

	ASSERT_EQ(clear_case(MADV_FREE, &line), 0);
	ASSERT_EQ(line, 0);
}

static bool feat(uint32_t bit)
{
	struct uhmm_features f;

	memset(&f, 0, sizeof(f));
	f.size = sizeof(f);
	return uhmm_features(&f) == 0 && (f.flags & bit);
}

/* Shared memory (shmem): MADV_REMOVE discards -> CLEAR; munmap -> UNMAP. */
TEST(shmem_remove_and_unmap_events)
{
	struct rec r;
	unsigned long len = 4 * ps();

	if (!feat(UHMM_FEAT_WP_SHMEM))
		SKIP("shmem ranges cannot be tracked here (no UHMM_FEAT_WP_SHMEM)");
	char *p = mmap(NULL, len, RW, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ASSERT_TRUE(p != MAP_FAILED);
	unsigned long a = (unsigned long)p;
	memset(p, 0x44, len);
	rec_init(&r);
	ASSERT_EQ(rec_insert(&r, a, len), 0);
	ASSERT_EQ(fault_range(r.sub, a, a + len, FAULT_W, NULL), 0);
	unsigned long seq = uhmm_interval_read_begin(r.sub);
	ASSERT_EQ(madvise(p + ps(), ps(), MADV_REMOVE), 0);
	ASSERT_TRUE(rec_wait_covers(&r, UHMM_NOTIFY_CLEAR, a + ps(), a + 2 * ps(), WAIT_MS));
	ASSERT_TRUE(rec_retry(&r, seq));
	ASSERT_EQ(p[ps()], 0);
	ASSERT_EQ(fault_range(r.sub, a, a + len, FAULT_W, NULL), 0);
	ASSERT_EQ(munmap(p, len), 0);
	ASSERT_TRUE(rec_wait_covers(&r, UHMM_NOTIFY_UNMAP, a, a + len, WAIT_MS));
	ASSERT_EQ(atomic_load(&r.bad_overlap), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(r.sub), 0);
}

TEST(memfd_munmap_unmap_event)
{
	struct rec r;
	unsigned long len = 4 * ps();

	if (!feat(UHMM_FEAT_WP_SHMEM))
		SKIP("shmem ranges cannot be tracked here (no UHMM_FEAT_WP_SHMEM)");
	int fd = memfd_create("uhmm-test", 0);
	ASSERT_GE(fd, 0);
	ASSERT_EQ(ftruncate(fd, (off_t)len), 0);
	char *p = mmap(NULL, len, RW, MAP_SHARED, fd, 0);
	ASSERT_TRUE(p != MAP_FAILED);
	unsigned long a = (unsigned long)p;
	rec_init(&r);
	ASSERT_EQ(rec_insert(&r, a, len), 0);
	ASSERT_EQ(fault_range(r.sub, a, a + len, FAULT_R, NULL), 0);
	unsigned long seq = uhmm_interval_read_begin(r.sub);
	ASSERT_EQ(munmap(p + 2 * ps(), 2 * ps()), 0);
	ASSERT_TRUE(rec_wait_covers(&r, UHMM_NOTIFY_UNMAP, a + 2 * ps(), a + len, WAIT_MS));
	ASSERT_TRUE(rec_retry(&r, seq));
	ASSERT_EQ(uhmm_interval_notifier_remove(r.sub), 0);
	munmap(p, 2 * ps());
	close(fd);
}

TEST(mremap_move_unmap_event)
{
	struct rec r;
	unsigned long len = 4 * ps();
	char *p = map_anon(len, RW);
	char *dst = map_anon(len, PROT_NONE);
	unsigned long a = (unsigned long)p;

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(dst);
	rec_init(&r);
	for (unsigned long i = 0; i < len; i += ps())
		p[i] = (char)(i / ps() + 1);
	ASSERT_EQ(rec_insert(&r, a, len), 0);
	ASSERT_EQ(fault_range(r.sub, a, a + len, FAULT_W, NULL), 0);
	unsigned long seq = uhmm_interval_read_begin(r.sub);

	char *q = mremap(p, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	ASSERT_TRUE(q == dst);
	ASSERT_TRUE(rec_wait_covers(&r, UHMM_NOTIFY_UNMAP, a, a + len, WAIT_MS));
	ASSERT_TRUE(rec_retry(&r, seq));
	ASSERT_EQ(atomic_load(&r.bad_overlap), 0);
	/* The data moved with the mapping. */
	for (unsigned long i = 0; i < len; i += ps())
		ASSERT_EQ(q[i], (char)(i / ps() + 1));
	ASSERT_EQ(uhmm_interval_notifier_remove(r.sub), 0);
	munmap(q, len);
}

TEST(mremap_shrink_unmap_event)
{
	struct rec r;
	unsigned long len = 4 * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;

	ASSERT_NOT_NULL(p);
	rec_init(&r);
	ASSERT_EQ(rec_insert(&r, a, len), 0);
	ASSERT_EQ(fault_range(r.sub, a, a + len, FAULT_W, NULL), 0);
	unsigned long seq = uhmm_interval_read_begin(r.sub);
	ASSERT_TRUE(mremap(p, len, 2 * ps(), 0) == p);
	ASSERT_TRUE(rec_wait_covers(&r, UHMM_NOTIFY_UNMAP, a + 2 * ps(), a + len, WAIT_MS));
	ASSERT_TRUE(rec_retry(&r, seq));
	ASSERT_EQ(uhmm_interval_notifier_remove(r.sub), 0);
	munmap(p, 2 * ps());
}

TEST(map_fixed_unmap_event)
{
	struct rec r;
	unsigned long len = 4 * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;

	ASSERT_NOT_NULL(p);
	rec_init(&r);
	memset(p, 0x33, len);
	ASSERT_EQ(rec_insert(&r, a, len), 0);
	ASSERT_EQ(fault_range(r.sub, a, a + len, FAULT_W, NULL), 0);
	unsigned long seq = uhmm_interval_read_begin(r.sub);

	void *q = mmap(p + ps(), ps(), RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	ASSERT_TRUE(q == p + ps());
	ASSERT_TRUE(rec_wait_covers(&r, UHMM_NOTIFY_UNMAP, a + ps(), a + 2 * ps(), WAIT_MS));
	ASSERT_TRUE(rec_retry(&r, seq));
	ASSERT_EQ(p[ps()], 0);
	ASSERT_EQ(atomic_load(&r.bad_overlap), 0);

	/* The new mapping is tracked too once faulted: unmapping it raises UNMAP. */
	ASSERT_EQ(fault_range(r.sub, a, a + len, FAULT_W, NULL), 0);
	int before = atomic_load(&r.n);
	ASSERT_EQ(munmap(p + ps(), ps()), 0);
	long stop = now_ms() + WAIT_MS;
	int found = -1;
	while (found < 0 && now_ms() < stop) {
		pthread_mutex_lock(&r.lock);
		found = rec_find(&r, UHMM_NOTIFY_UNMAP, before);
		pthread_mutex_unlock(&r.lock);
		if (found < 0)
			usleep(1000);
	}
	ASSERT_GE(found, 0);
	ASSERT_LE(r.ev[found].start, a + ps());
	ASSERT_GE(r.ev[found].end, a + 2 * ps());
	ASSERT_EQ(uhmm_interval_notifier_remove(r.sub), 0);
	munmap(p, len);
}

TEST(mprotect_revalidate_protection_vma)
{
	struct rec r;
	unsigned long len = 4 * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;

	ASSERT_NOT_NULL(p);
	rec_init(&r);
	ASSERT_EQ(rec_insert(&r, a, len), 0);
	ASSERT_EQ(fault_range(r.sub, a, a + len, FAULT_W, NULL), 0);
	unsigned long seq = uhmm_interval_read_begin(r.sub);

	/* Nothing changed: revalidate raises nothing. */
	ASSERT_EQ(uhmm_range_revalidate(a, a + len), 0);
	ASSERT_EQ(atomic_load(&r.calls), 0);
	ASSERT_FALSE(rec_retry(&r, seq));

	ASSERT_EQ(mprotect(p, len, PROT_READ), 0);
	ASSERT_EQ(uhmm_range_revalidate(a, a + len), 0);
	/* Raised in the calling thread, before revalidate returns. */
	int i = rec_find(&r, UHMM_NOTIFY_PROTECTION_VMA, 0);
	ASSERT_GE(i, 0);
	ASSERT_EQ(r.ev[i].tid, my_tid());
	ASSERT_TRUE(rec_covers(&r, UHMM_NOTIFY_PROTECTION_VMA, a, a + len));
	ASSERT_EQ(r.ev[i].seq & 1, 1UL);
	ASSERT_TRUE(rec_retry(&r, seq));
	ASSERT_EQ(atomic_load(&r.bad_overlap), 0);

	/* Write access is gone, read access is not. */
	ASSERT_EQ(fault_range(r.sub, a, a + len, FAULT_W, NULL), -EPERM);
	ASSERT_EQ(fault_range(r.sub, a, a + len, FAULT_R, NULL), 0);

	/* Revalidating again with no further change raises nothing more. */
	int calls = atomic_load(&r.calls);
	ASSERT_EQ(uhmm_range_revalidate(a, a + len), 0);
	ASSERT_EQ(atomic_load(&r.calls), calls);

	/* Dropping read access too is another reduction. */
	ASSERT_EQ(mprotect(p, len, PROT_NONE), 0);
	ASSERT_EQ(uhmm_range_revalidate(a, a + len), 0);
	ASSERT_GT(atomic_load(&r.calls), calls);
	ASSERT_EQ(fault_range(r.sub, a, a + len, FAULT_R, NULL), -EFAULT);
	ASSERT_EQ(uhmm_interval_notifier_remove(r.sub), 0);
	munmap(p, len);
}

/*
 * uhmm_range_revalidate() is a sync point: the invalidations of every
 * munmap/mremap/madvise that returned before it have run when it returns.
 */
TEST(revalidate_is_event_sync_point)
{
	struct rec r;
	unsigned long len = 8 * ps();
	char *p = map_anon(len, RW);
	char *dst = map_anon(2 * ps(), PROT_NONE);
	unsigned long a = (unsigned long)p;

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(dst);
	rec_init(&r);
	memset(p, 1, len);
	ASSERT_EQ(rec_insert(&r, a, len), 0);
	require_uffd(false);	/* events to wait for */
	ASSERT_EQ(fault_range(r.sub, a, a + len, FAULT_W, NULL), 0);

	ASSERT_EQ(madvise(p + ps(), ps(), MADV_DONTNEED), 0);
	ASSERT_EQ(uhmm_range_revalidate(a, a + ps()), 0);	/* another page */
	ASSERT_GE(rec_find(&r, UHMM_NOTIFY_CLEAR, 0), 0);

	ASSERT_EQ(munmap(p + 3 * ps(), ps()), 0);
	ASSERT_EQ(uhmm_range_revalidate(a, a + ps()), 0);
	ASSERT_TRUE(rec_covers(&r, UHMM_NOTIFY_UNMAP, a + 3 * ps(), a + 4 * ps()));

	int n = atomic_load(&r.n);
	ASSERT_TRUE(mremap(p + 6 * ps(), 2 * ps(), 2 * ps(),
			   MREMAP_MAYMOVE | MREMAP_FIXED, dst) == dst);
	ASSERT_EQ(uhmm_range_revalidate(a, a + ps()), 0);
	pthread_mutex_lock(&r.lock);
	ASSERT_GE(rec_find(&r, UHMM_NOTIFY_UNMAP, n), 0);
	ASSERT_TRUE(rec_covers(&r, UHMM_NOTIFY_UNMAP, a + 6 * ps(), a + 8 * ps()));
	pthread_mutex_unlock(&r.lock);
	ASSERT_EQ(atomic_load(&r.bad_overlap), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(r.sub), 0);
	munmap(p, 6 * ps());
	munmap(dst, 2 * ps());
}

TEST(sequence_helpers_null)
{
	ASSERT_EQ(uhmm_interval_read_begin(NULL), 0UL);
	ASSERT_TRUE(uhmm_interval_read_retry(NULL, 0));
	ASSERT_TRUE(uhmm_interval_read_retry(NULL, 1));
	uhmm_interval_set_seq(NULL, 1);	/* no-op, no crash */
}

TEST(revalidate_bad_args)
{
	unsigned long a = 64 * ps();

	ASSERT_EQ(uhmm_range_revalidate(a, a), -EINVAL);
	ASSERT_EQ(uhmm_range_revalidate(a + ps(), a), -EINVAL);
	ASSERT_EQ(uhmm_range_revalidate(a + 1, a + ps()), -EINVAL);
	ASSERT_EQ(uhmm_range_revalidate(a, a + ps() + 1), -EINVAL);
	/* A range nobody faulted is fine. */
	ASSERT_EQ(uhmm_range_revalidate(a, a + ps()), 0);
}

TEST(file_private_munmap_revalidate_unmap)
{
	struct rec r;
	unsigned long len = 4 * ps();
	int fd = make_tmp_file(len);

	ASSERT_GE(fd, 0);
	char *p = mmap(NULL, len, RW, MAP_PRIVATE, fd, 0);
	ASSERT_TRUE(p != MAP_FAILED);
	unsigned long a = (unsigned long)p;
	rec_init(&r);
	ASSERT_EQ(rec_insert(&r, a, len), 0);
	ASSERT_EQ(fault_range(r.sub, a, a + len, FAULT_R, NULL), 0);
	unsigned long seq = uhmm_interval_read_begin(r.sub);
	ASSERT_EQ(munmap(p, len), 0);
	ASSERT_EQ(uhmm_range_revalidate(a, a + len), 0);
	ASSERT_TRUE(rec_wait_covers(&r, UHMM_NOTIFY_UNMAP, a, a + len, WAIT_MS));
	ASSERT_TRUE(rec_retry(&r, seq));
	ASSERT_EQ(atomic_load(&r.bad_overlap), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(r.sub), 0);
	close(fd);
}

TEST(file_private_mprotect_revalidate)
{
	struct rec r;
	unsigned long len = 2 * ps();
	int fd = make_tmp_file(len);

	ASSERT_GE(fd, 0);
	char *p = mmap(NULL, len, RW, MAP_PRIVATE, fd, 0);
	ASSERT_TRUE(p != MAP_FAILED);
	unsigned long a = (unsigned long)p;
	rec_init(&r);
	ASSERT_EQ(rec_insert(&r, a, len), 0);
	ASSERT_EQ(fault_range(r.sub, a, a + len, FAULT_W, NULL), 0);
	unsigned long seq = uhmm_interval_read_begin(r.sub);
	ASSERT_EQ(mprotect(p, len, PROT_READ), 0);
	ASSERT_EQ(uhmm_range_revalidate(a, a + len), 0);
	ASSERT_TRUE(rec_covers(&r, UHMM_NOTIFY_PROTECTION_VMA, a, a + len));
	ASSERT_TRUE(rec_retry(&r, seq));
	ASSERT_EQ(uhmm_interval_notifier_remove(r.sub), 0);
	munmap(p, len);
	close(fd);
}

TEST(fork_protection_page)
{
	struct rec r, rro;
	unsigned long len = 4 * ps();
	char *p = map_anon(len, RW);
	char *ro = map_anon(len, RW);
	unsigned long a = (unsigned long)p;

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(ro);
	rec_init(&r);
	rec_init(&rro);
	memset(p, 0x77, len);
	ASSERT_EQ(rec_insert(&r, a, len), 0);
	ASSERT_EQ(fault_range(r.sub, a, a + len, FAULT_W, NULL), 0);
	/* A second notifier on memory faulted read-only (zero pages). */
	ASSERT_EQ(rec_insert(&rro, (unsigned long)ro, len), 0);
	ASSERT_EQ(fault_range(rro.sub, (unsigned long)ro, (unsigned long)ro + len,
			      FAULT_R, NULL), 0);
	unsigned long seq = uhmm_interval_read_begin(r.sub);

	pid_t pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		/* The parent's notifier belongs to the parent's runtime. */
		int ok = p[0] == 0x77;
		struct uhmm_range rg = {
			.notifier = r.sub, .notifier_seq = seq, .start = a,
			.end = a + ps(), .hmm_pfns = (uint64_t[1]){ 0 },
			.default_flags = FAULT_R,
		};
		if (uhmm_range_fault(&rg) != -EINVAL)
			_exit(2);
		if (uhmm_interval_notifier_remove(r.sub) != -EINVAL)
			_exit(3);
		_exit(ok ? 0 : 1);
	}
	/* Delivered before fork() returned, in the forking thread. */
	int n = atomic_load(&r.n);
	ASSERT_GE(n, 1);
	ASSERT_TRUE(rec_covers(&r, UHMM_NOTIFY_PROTECTION_PAGE, a, a + len));
	int i = rec_find(&r, UHMM_NOTIFY_PROTECTION_PAGE, 0);
	ASSERT_GE(i, 0);
	ASSERT_EQ(r.ev[i].tid, my_tid());
	ASSERT_EQ(r.ev[i].seq & 1, 1UL);
	ASSERT_TRUE(rec_retry(&r, seq));
	ASSERT_EQ(atomic_load(&r.bad_overlap), 0);

	int st;
	ASSERT_EQ(waitpid(pid, &st, 0), pid);
	ASSERT_TRUE(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	/* The parent still works with its notifier; write access refaults. */
	ASSERT_EQ(fault_range(r.sub, a, a + len, FAULT_W, NULL), 0);
	p[0] = 1;
	ASSERT_EQ(uhmm_interval_notifier_remove(r.sub), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(rro.sub), 0);
	munmap(p, len);
	munmap(ro, len);
}

TEST(fork_child_own_runtime)
{
	unsigned long len = 4 * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;
	struct rec r;

	ASSERT_NOT_NULL(p);
	rec_init(&r);
	ASSERT_EQ(rec_insert(&r, a, len), 0);
	require_uffd(false);
	ASSERT_EQ(fault_range(r.sub, a, a + len, FAULT_W, NULL), 0);
	pid_t pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		/* The child starts its own runtime and gets its own events. */
		struct rec c;
		rec_init(&c);
		if (rec_insert(&c, a, len) != 0)
			_exit(1);
		if (fault_range(c.sub, a, a + len, FAULT_W, NULL) != 0)
			_exit(2);
		if (munmap(p, ps()) != 0)
			_exit(3);
		if (rec_wait(&c, UHMM_NOTIFY_UNMAP, WAIT_MS) < 0)
			_exit(4);
		/* The parent's notifier heard nothing of the child's munmap. */
		if (rec_find(&r, UHMM_NOTIFY_UNMAP, 0) >= 0)
			_exit(5);
		if (uhmm_interval_notifier_remove(c.sub) != 0)
			_exit(6);
		_exit(0);
	}
	int st;
	ASSERT_EQ(waitpid(pid, &st, 0), pid);
	ASSERT_TRUE(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	/* Nor did the parent's, about the child's munmap. */
	usleep(50 * 1000);
	ASSERT_LT(rec_find(&r, UHMM_NOTIFY_UNMAP, 0), 0);
	ASSERT_EQ(p[0], 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(r.sub), 0);
	munmap(p, len);
}

TEST(shutdown_release)
{
	struct rec r1, r2, r3;
	unsigned long len = 4 * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;

	ASSERT_NOT_NULL(p);
	rec_init(&r1);
	rec_init(&r2);
	rec_init(&r3);
	ASSERT_EQ(rec_insert(&r1, a, len), 0);
	ASSERT_EQ(rec_insert(&r2, a + ps(), ps()), 0);
	ASSERT_EQ(rec_insert(&r3, 1UL << 40, 16 * ps()), 0); /* nothing mapped */
	ASSERT_EQ(fault_range(r1.sub, a, a + len, FAULT_W, NULL), 0);
	unsigned long seq = uhmm_interval_read_begin(r1.sub);

	ASSERT_EQ(uhmm_shutdown(), 0);
	/* Every notifier got one RELEASE over its whole range. */
	struct rec *all[3] = { &r1, &r2, &r3 };
	for (int k = 0; k < 3; k++) {
		struct rec *r = all[k];
		int i = rec_find(r, UHMM_NOTIFY_RELEASE, 0);
		ASSERT_GE(i, 0);
		ASSERT_LE(r->ev[i].start, r->nstart);
		ASSERT_GE(r->ev[i].end, r->nend);
		ASSERT_EQ(r->ev[i].seq & 1, 1UL);
		ASSERT_EQ(rec_find(r, UHMM_NOTIFY_RELEASE, i + 1), -1);
	}
	(void)seq; /* the notifiers are gone: no read_retry on them */

	/* The runtime restarts and works. */
	ASSERT_EQ(uhmm_init(), 0);
	struct rec r4;
	rec_init(&r4);
	ASSERT_EQ(rec_insert(&r4, a, len), 0);
	ASSERT_EQ(fault_range(r4.sub, a, a + len, FAULT_W, NULL), 0);
	ASSERT_EQ(munmap(p, ps()), 0);
	ASSERT_GE(rec_wait(&r4, UHMM_NOTIFY_UNMAP, WAIT_MS), 0);
	/* The old notifiers hear nothing of the new runtime's events. */
	ASSERT_EQ(atomic_load(&r1.calls), 1);
	ASSERT_EQ(atomic_load(&r2.calls), 1);
	ASSERT_EQ(uhmm_interval_notifier_remove(r4.sub), 0);
	ASSERT_EQ(uhmm_shutdown(), 0);
	ASSERT_EQ(uhmm_shutdown(), 0); /* nothing to do is fine */
	munmap(p, len);
}

/* ------------------------------------------------------------------ */
/* Concurrency of callbacks with remove and read_begin                  */
/* ------------------------------------------------------------------ */

struct unmap_arg {
	void *addr;
	unsigned long len;
	atomic_int done;
};

static void *unmap_thread(void *arg)
{
	struct unmap_arg *u = arg;

	munmap(u->addr, u->len);
	atomic_store(&u->done, 1);
	return NULL;
}

static bool wait_flag(atomic_int *f, int val, long ms)
{
	long stop = now_ms() + ms;

	while (atomic_load(f) < val) {
		if (now_ms() > stop) {
			require_uffd(false);	/* no events at all: skip */
			return false;
		}
		usleep(1000);
	}
	return true;
}

TEST(remove_waits_for_callback)
{
	struct rec r;
	unsigned long len = 4 * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;

	ASSERT_NOT_NULL(p);
	rec_init(&r);
	r.sleep_ms = 200;
	ASSERT_EQ(rec_insert(&r, a, len), 0);
	ASSERT_EQ(fault_range(r.sub, a, a + len, FAULT_W, NULL), 0);

	struct unmap_arg u = { .addr = p, .len = len };
	pthread_t t;
	ASSERT_EQ(pthread_create(&t, NULL, unmap_thread, &u), 0);
	/* Wait until the callback is running (it then sleeps 200 ms). */
	ASSERT_TRUE(wait_flag(&r.in_cb, 1, WAIT_MS));
	ASSERT_EQ(uhmm_interval_notifier_remove(r.sub), 0);
	/* No callback is running once remove returned. */
	ASSERT_EQ(atomic_load(&r.done_cb), atomic_load(&r.in_cb));
	ASSERT_GE(atomic_load(&r.done_cb), 1);
	ASSERT_EQ(pthread_join(t, NULL), 0);
	ASSERT_EQ(atomic_load(&u.done), 1);
}

struct rb_arg {
	struct uhmm_interval_notifier *sub;
	unsigned long seq;
	atomic_int returned;
};

static void *read_begin_thread(void *arg)
{
	struct rb_arg *b = arg;

	b->seq = uhmm_interval_read_begin(b->sub);
	atomic_store(&b->returned, 1);
	return NULL;
}

TEST(read_begin_blocks_during_invalidation)
{
	struct rec r;
	unsigned long len = 4 * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;

	ASSERT_NOT_NULL(p);
	rec_init(&r);
	r.block = true;
	ASSERT_EQ(rec_insert(&r, a, len), 0);
	ASSERT_EQ(fault_range(r.sub, a, a + len, FAULT_W, NULL), 0);
	unsigned long seq0 = uhmm_interval_read_begin(r.sub);

	struct unmap_arg u = { .addr = p + ps(), .len = ps() };
	pthread_t tu, tb;
	ASSERT_EQ(pthread_create(&tu, NULL, unmap_thread, &u), 0);
	ASSERT_TRUE(wait_flag(&r.in_cb, 1, WAIT_MS));

	struct rb_arg b = { .sub = r.sub };
	ASSERT_EQ(pthread_create(&tb, NULL, read_begin_thread, &b), 0);
	usleep(150 * 1000);
	/* The colliding invalidation is still running: read_begin waits. */
	ASSERT_EQ(atomic_load(&b.returned), 0);
	ASSERT_TRUE(uhmm_interval_check_retry(r.sub, seq0));

	pthread_mutex_lock(&r.lock);
	r.released = true;
	pthread_cond_broadcast(&r.cond);
	pthread_mutex_unlock(&r.lock);

	ASSERT_TRUE(wait_flag(&b.returned, 1, WAIT_MS));
	ASSERT_EQ(pthread_join(tb, NULL), 0);
	ASSERT_EQ(b.seq & 1, 1UL);
	ASSERT_NE(b.seq, seq0);
	ASSERT_TRUE(rec_retry(&r, seq0));
	ASSERT_FALSE(rec_retry(&r, b.seq));
	ASSERT_EQ(pthread_join(tu, NULL), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(r.sub), 0);
	munmap(p, len);
}

TEST(insert_during_invalidation_deferred)
{
	struct rec r, r2;
	unsigned long len = 4 * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;

	ASSERT_NOT_NULL(p);
	rec_init(&r);
	rec_init(&r2);
	r.block = true;
	ASSERT_EQ(rec_insert(&r, a, len), 0);
	ASSERT_EQ(fault_range(r.sub, a, a + len, FAULT_W, NULL), 0);

	struct unmap_arg u = { .addr = p + ps(), .len = ps() };
	pthread_t tu, tb;
	ASSERT_EQ(pthread_create(&tu, NULL, unmap_thread, &u), 0);
	ASSERT_TRUE(wait_flag(&r.in_cb, 1, WAIT_MS));

	/* Inserting does not wait for the running invalidation... */
	ASSERT_EQ(rec_insert(&r2, a, len), 0);
	/* ...but the new notifier's first read_begin does. */
	struct rb_arg b = { .sub = r2.sub };
	ASSERT_EQ(pthread_create(&tb, NULL, read_begin_thread, &b), 0);
	usleep(150 * 1000);
	ASSERT_EQ(atomic_load(&b.returned), 0);

	pthread_mutex_lock(&r.lock);
	r.released = true;
	pthread_cond_broadcast(&r.cond);
	pthread_mutex_unlock(&r.lock);

	ASSERT_TRUE(wait_flag(&b.returned, 1, WAIT_MS));
	ASSERT_EQ(pthread_join(tb, NULL), 0);
	ASSERT_EQ(b.seq & 1, 1UL);
	ASSERT_FALSE(rec_retry(&r2, b.seq));
	ASSERT_EQ(pthread_join(tu, NULL), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(r2.sub), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(r.sub), 0);
	munmap(p, len);
}

TEST(remove_then_no_callback)
{
	struct rec r;
	unsigned long len = 4 * ps();
	char *p = map_anon(len, RW);
	unsigned long a = (unsigned long)p;

	ASSERT_NOT_NULL(p);
	rec_init(&r);
	ASSERT_EQ(rec_insert(&r, a, len), 0);
	ASSERT_EQ(fault_range(r.sub, a, a + len, FAULT_W, NULL), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(r.sub), 0);
	/* A sentinel notifier proves the event was processed. */
	struct rec s;
	rec_init(&s);
	ASSERT_EQ(rec_insert(&s, a, len), 0);
	ASSERT_EQ(fault_range(s.sub, a, a + len, FAULT_W, NULL), 0);
	ASSERT_EQ(munmap(p, len), 0);
	ASSERT_GE(rec_wait(&s, UHMM_NOTIFY_UNMAP, WAIT_MS), 0);
	ASSERT_EQ(atomic_load(&r.calls), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(s.sub), 0);
}
