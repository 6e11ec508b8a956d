/* SPDX-License-Identifier: MIT */
/*
 * The userfaultfd error model (src/uffd.c) on the runtime's own uffd:
 * EEXIST counts as done and wakes, EAGAIN waits for the reader and resumes,
 * ENOENT is returned for the caller to revalidate. Also fault injection in
 * the syscall layer: range_fault degrades or fails cleanly.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "harness.h"
#include "mm.h"

static unsigned long ps;

static struct uhmm_rt *rt_or_skip(void)
{
	int err = 0;
	struct uhmm_rt *rt = uhmm__rt_get(&err);

	ps = (unsigned long)sysconf(_SC_PAGESIZE);
	if (!rt)
		SKIP("no runtime: %s", strerror(-err));
	if (rt->uffd < 0)
		SKIP("no userfaultfd for this process: %s", strerror(-rt->uffd_err));
	return rt;
}

/* An anonymous range registered MISSING on the runtime's uffd. Nothing
 * may touch a missing page of it: the runtime does not serve faults. */
static char *missing_range(struct uhmm_rt *rt, size_t npages)
{
	char *p = mmap(NULL, npages * ps, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ASSERT_NE(p, MAP_FAILED);
	ASSERT_EQ(uhmm__os_uffd_register(rt->uffd, (uintptr_t)p, npages * ps,
				   UFFDIO_REGISTER_MODE_MISSING, NULL), 0);
	return p;
}

static char *pattern_src(size_t npages, int seed)
{
	char *s = mmap(NULL, npages * ps, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ASSERT_NE(s, MAP_FAILED);
	for (size_t i = 0; i < npages * ps; i++)
		s[i] = (char)(i * 7 + seed);
	return s;
}

TEST(copy_installs_pages)
{
	struct uhmm_rt *rt = rt_or_skip();
	char *dst = missing_range(rt, 4), *src = pattern_src(4, 1);

	ASSERT_EQ(uhmm__uffd_copy(rt, (uintptr_t)dst, (uintptr_t)src, 4 * ps, 0), 0);
	ASSERT_MEMEQ(dst, src, 4 * ps);
}

TEST(copy_eexist_counts_as_done)
{
	struct uhmm_rt *rt = rt_or_skip();
	char *dst = missing_range(rt, 3), *a = pattern_src(3, 1), *b = pattern_src(3, 2);

	/* Page 1 present first; then a 3-page copy meets EEXIST on it. */
	ASSERT_EQ(uhmm__uffd_copy(rt, (uintptr_t)dst + ps, (uintptr_t)a + ps, ps, 0), 0);
	ASSERT_EQ(uhmm__uffd_copy(rt, (uintptr_t)dst, (uintptr_t)b, 3 * ps, 0), 0);
	ASSERT_MEMEQ(dst, b, ps);		/* copied */
	ASSERT_MEMEQ(dst + ps, a + ps, ps);	/* kept: already there */
	ASSERT_MEMEQ(dst + 2 * ps, b + 2 * ps, ps); /* resumed after it */
	/* Everything present: the whole call is EEXIST, still success. */
	ASSERT_EQ(uhmm__uffd_copy(rt, (uintptr_t)dst, (uintptr_t)b, 3 * ps, 0), 0);
}

TEST(zeropage_and_eexist)
{
	struct uhmm_rt *rt = rt_or_skip();
	char *dst = missing_range(rt, 2), *a = pattern_src(1, 3);
	char zero[64] = { 0 };

	ASSERT_EQ(uhmm__uffd_copy(rt, (uintptr_t)dst, (uintptr_t)a, ps, 0), 0);
	ASSERT_EQ(uhmm__uffd_zeropage(rt, (uintptr_t)dst, 2 * ps, 0), 0);
	ASSERT_MEMEQ(dst, a, ps);
	ASSERT_MEMEQ(dst + ps, zero, sizeof(zero));
}

TEST(copy_enoent_when_not_registered)
{
	struct uhmm_rt *rt = rt_or_skip();
	char *src = pattern_src(1, 4);
	char *dst = mmap(NULL, ps, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ASSERT_NE(dst, MAP_FAILED);
	ASSERT_EQ(uhmm__uffd_copy(rt, (uintptr_t)dst, (uintptr_t)src, ps, 0), -ENOENT);
	ASSERT_EQ(munmap(dst, ps), 0);
	ASSERT_EQ(uhmm__uffd_copy(rt, (uintptr_t)dst, (uintptr_t)src, ps, 0), -ENOENT);
}

TEST(copy_bad_args)
{
	struct uhmm_rt *rt = rt_or_skip();

	ASSERT_EQ(uhmm__uffd_copy(rt, 1, 0, ps, 0), -EINVAL);
	ASSERT_EQ(uhmm__uffd_copy(rt, 0, 0, 0, 0), -EINVAL);
	ASSERT_EQ(uhmm__uffd_copy(rt, ps, ps, ps + 1, 0), -EINVAL);
}

TEST(copy_eagain_resumes)
{
	struct uhmm_rt *rt = rt_or_skip();
	char *dst = missing_range(rt, 4), *src = pattern_src(4, 5);

	/* The next two COPY calls fail with EAGAIN (an unread event). */
	uhmm__fault_inject(OS_CALL_UFFD_COPY, 1, EAGAIN);
	ASSERT_EQ(uhmm__uffd_copy(rt, (uintptr_t)dst, (uintptr_t)src, 4 * ps, 0), 0);
	ASSERT_MEMEQ(dst, src, 4 * ps);
}

TEST(copy_eagain_with_real_event)
{
	struct uhmm_rt *rt = rt_or_skip();
	char *dst = missing_range(rt, 2), *src = pattern_src(2, 6);
	char *other = missing_range(rt, 1);

	/* An UNMAP event in flight: copies may see EAGAIN; they resume. */
	ASSERT_EQ(uhmm__rt_start_threads(rt), 0);
	ASSERT_EQ(munmap(other, ps), 0);
	ASSERT_EQ(uhmm__uffd_copy(rt, (uintptr_t)dst, (uintptr_t)src, 2 * ps, 0), 0);
	ASSERT_MEMEQ(dst, src, 2 * ps);
}

TEST(move_moves_pages)
{
	struct uhmm_rt *rt = rt_or_skip();
	char *dst, *src, *ref;
	unsigned char vec[2];

	if (!(rt->uffd_features & UFFD_FEATURE_MOVE))
		SKIP("kernel has no UFFDIO_MOVE (6.8)");
	dst = missing_range(rt, 2);
	src = pattern_src(2, 7);
	ref = pattern_src(2, 7);
	ASSERT_EQ(uhmm__uffd_move(rt, (uintptr_t)dst, (uintptr_t)src, 2 * ps, 0), 0);
	ASSERT_MEMEQ(dst, ref, 2 * ps);
	ASSERT_EQ(mincore(src, 2 * ps, vec), 0);
	ASSERT_EQ(vec[0] & 1, 0);	/* the source is empty now */
}

static bool noop_inv(struct uhmm_interval_notifier *sub,
		     const struct uhmm_notifier_range *r, unsigned long seq)
{
	(void)r;
	uhmm_interval_set_seq(sub, seq);
	return true;
}

static const struct uhmm_interval_notifier_ops noop_ops = { .invalidate = noop_inv };

static int fault_once(char *p, size_t npages, uint64_t flags, uint64_t *pfns)
{
	struct uhmm_interval_notifier *n;
	struct uhmm_range r = {
		.start = (uintptr_t)p, .end = (uintptr_t)p + npages * ps,
		.hmm_pfns = pfns, .default_flags = flags,
	};
	int ret;

	ASSERT_EQ(uhmm_interval_notifier_insert(&n, r.start, npages * ps,
						&noop_ops, NULL), 0);
	r.notifier = n;
	r.notifier_seq = uhmm_interval_read_begin(n);
	ret = uhmm_range_fault(&r);
	ASSERT_EQ(uhmm_interval_notifier_remove(n), 0);
	return ret;
}

TEST(inject_register_failure_degrades)
{
	rt_or_skip();
	char *p = mmap(NULL, 4 * ps, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t pfns[4];

	ASSERT_NE(p, MAP_FAILED);
	/* Registration fails: the range is mirrored all the same. */
	uhmm__fault_inject(OS_CALL_UFFD_REGISTER, 1, ENOMEM);
	ASSERT_EQ(fault_once(p, 4, UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE, pfns), 0);
	for (int i = 0; i < 4; i++)
		ASSERT_EQ(pfns[i] & (UHMM_PFN_VALID | UHMM_PFN_WRITE),
			  UHMM_PFN_VALID | UHMM_PFN_WRITE);
}

TEST(inject_scan_and_populate_failures)
{
	rt_or_skip();
	char *p = mmap(NULL, 4 * ps, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t pfns[4];

	ASSERT_NE(p, MAP_FAILED);
	uhmm__fault_inject(OS_CALL_PAGEMAP_SCAN, 1, ENOMEM);
	ASSERT_EQ(fault_once(p, 4, 0, pfns), -ENOMEM);
	uhmm__fault_inject(OS_CALL_MADVISE, 1, ENOMEM);
	ASSERT_EQ(fault_once(p, 4, UHMM_PFN_REQ_FAULT, pfns), -EFAULT);
	uhmm__fault_inject(OS_CALL_PROCMAP_QUERY, 1, EIO);
	ASSERT_EQ(fault_once(p, 4, 0, pfns), -EIO);
	/* And the runtime is still usable. */
	ASSERT_EQ(fault_once(p, 4, UHMM_PFN_REQ_FAULT, pfns), 0);
	ASSERT_TRUE(pfns[0] & UHMM_PFN_VALID);
}
