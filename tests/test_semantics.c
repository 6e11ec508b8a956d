/* SPDX-License-Identifier: MIT */
/*
 * Each test pins one documented difference from kernel HMM
 * (docs/semantics.md): what a user of uhmm sees where user space cannot
 * do what the kernel does.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uhmm/uhmm.h>
#include "harness.h"
#include "util.h"

struct rec {
	atomic_int calls;
	atomic_int last_event;
	pthread_t thread;
	atomic_bool other_thread;
};

static bool rec_inv(struct uhmm_interval_notifier *sub,
		    const struct uhmm_notifier_range *r, unsigned long seq)
{
	struct rec *c = uhmm_interval_notifier_priv(sub);

	uhmm_interval_set_seq(sub, seq);
	atomic_store(&c->last_event, (int)r->event);
	if (!pthread_equal(pthread_self(), c->thread))
		atomic_store(&c->other_thread, true);
	atomic_fetch_add(&c->calls, 1);
	return true;
}

static const struct uhmm_interval_notifier_ops rec_ops = { .invalidate = rec_inv };

/* Insert a notifier over [p, p+len) and fault it in with @flags. */
static struct uhmm_interval_notifier *mirror(struct rec *c, char *p, size_t len,
					     uint64_t flags, uint64_t *pfns)
{
	struct uhmm_interval_notifier *n;
	struct uhmm_range r = {
		.start = (unsigned long)p, .end = (unsigned long)p + len,
		.hmm_pfns = pfns, .default_flags = flags,
	};
	int ret;

	memset(c, 0, sizeof(*c));
	c->thread = pthread_self();
	ASSERT_EQ(uhmm_interval_notifier_insert(&n, r.start, len, &rec_ops, c), 0);
	r.notifier = n;
	do {
		r.notifier_seq = uhmm_interval_read_begin(n);
		ret = uhmm_range_fault(&r);
	} while (ret == -EBUSY);
	ASSERT_EQ(ret, 0);
	return n;
}

static char *anon(size_t len)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ASSERT_NE(p, MAP_FAILED);
	return p;
}

/*
 * Kernel: munmap() calls invalidate before it returns. uhmm: the callback
 * runs on uhmm's worker thread once the UNMAP event is read, which may be
 * after munmap() returned; uhmm_range_revalidate() is the sync point after
 * which it has run.
 */
TEST(unmap_callback_async_revalidate_syncs)
{
	struct uhmm_features f = { .size = sizeof(f) };
	size_t len = 4 * ps();
	char *p = anon(len);
	uint64_t pfns[4];
	struct rec c;
	struct uhmm_interval_notifier *n;

	ASSERT_EQ(uhmm_features(&f), 0);
	if (!(f.flags & UHMM_FEAT_EVENTS))
		SKIP("no userfaultfd events for this process");
	n = mirror(&c, p, len, UHMM_PFN_REQ_FAULT, pfns);
	ASSERT_EQ(munmap(p, len), 0);
	ASSERT_EQ(uhmm_range_revalidate((unsigned long)p, (unsigned long)p + len), 0);
	ASSERT_GE(atomic_load(&c.calls), 1);
	ASSERT_EQ(atomic_load(&c.last_event), UHMM_NOTIFY_UNMAP);
	/* It ran on another thread than the one that unmapped. */
	ASSERT_TRUE(atomic_load(&c.other_thread));
	ASSERT_EQ(uhmm_interval_notifier_remove(n), 0);
}

/*
 * Kernel: mprotect() sends PROTECTION_VMA. uhmm: no event exists; the
 * invalidation comes from uhmm_range_revalidate() (or range_fault), so
 * nothing is called before that.
 */
TEST(mprotect_no_callback_until_revalidate)
{
	size_t len = 2 * ps();
	char *p = anon(len);
	uint64_t pfns[2];
	struct rec c;
	struct uhmm_interval_notifier *n;

	n = mirror(&c, p, len, UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE, pfns);
	ASSERT_EQ(mprotect(p, len, PROT_READ), 0);
	usleep(20000);
	ASSERT_EQ(atomic_load(&c.calls), 0);
	ASSERT_EQ(uhmm_range_revalidate((unsigned long)p, (unsigned long)p + len), 0);
	ASSERT_EQ(atomic_load(&c.calls), 1);
	ASSERT_EQ(atomic_load(&c.last_event), UHMM_NOTIFY_PROTECTION_VMA);
	/* Once: the lost access is recorded. */
	ASSERT_EQ(uhmm_range_revalidate((unsigned long)p, (unsigned long)p + len), 0);
	ASSERT_EQ(atomic_load(&c.calls), 1);
	ASSERT_EQ(uhmm_interval_notifier_remove(n), 0);
}

/*
 * Kernel: a clean page of a shared file mapping has a read-only PTE
 * (write-notify) and no HMM_PFN_WRITE. uhmm reports WRITE for present
 * pages of writable shared mappings: a device write through
 * uhmm_copy_nofault() takes the write fault as a CPU store would.
 */
TEST(shared_file_clean_page_reported_writable)
{
	char path[] = "/tmp/uhmm-sem-XXXXXX";
	int fd = mkstemp(path);
	uint64_t pfns[1] = { 0 };
	struct rec c;
	struct uhmm_interval_notifier *n;
	char *p;

	ASSERT_GE(fd, 0);
	unlink(path);
	ASSERT_EQ(ftruncate(fd, (off_t)ps()), 0);
	p = mmap(NULL, ps(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ASSERT_NE(p, MAP_FAILED);
	n = mirror(&c, p, ps(), UHMM_PFN_REQ_FAULT, pfns);
	ASSERT_TRUE(pfns[0] & UHMM_PFN_VALID);
	ASSERT_TRUE(pfns[0] & UHMM_PFN_WRITE);
	ASSERT_EQ(uhmm_copy_nofault(uhmm_pfn_to_addr(pfns[0]), "x", 1, NULL), 0);
	ASSERT_EQ(p[0], 'x');
	ASSERT_EQ(uhmm_interval_notifier_remove(n), 0);
	close(fd);
}

/*
 * Kernel: after fork the parent's PTEs stay read-only until its next
 * write fault, even once the child has exited. uhmm reads "exclusively
 * mapped" from /proc/self/pagemap, so once the child is gone the page is
 * reported writable again.
 */
TEST(cow_page_writable_again_after_child_exit)
{
	size_t len = ps();
	char *p = anon(len);
	uint64_t pfns[1] = { 0 };
	struct rec c;
	struct uhmm_interval_notifier *n;
	pid_t pid;
	int st;

	memset(p, 1, len);
	n = mirror(&c, p, len, 0, pfns);
	ASSERT_TRUE(pfns[0] & UHMM_PFN_WRITE);
	pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0)
		_exit(0);
	ASSERT_EQ(waitpid(pid, &st, 0), pid);
	ASSERT_EQ(uhmm_interval_notifier_remove(n), 0);
	n = mirror(&c, p, len, 0, pfns);
	ASSERT_TRUE(pfns[0] & UHMM_PFN_VALID);
	ASSERT_TRUE(pfns[0] & UHMM_PFN_WRITE);
	ASSERT_EQ(uhmm_interval_notifier_remove(n), 0);
}

/*
 * Kernel: every fork write-protects through the notifier. uhmm learns of
 * a fork from pthread_atfork, so a raw clone() without CLONE_VM sends no
 * PROTECTION_PAGE. Data stay isolated all the same: the device writes
 * through the CPU's page tables, which break copy-on-write.
 */
static int clone_child(void *arg)
{
	volatile char *p = arg;

	usleep(100000);
	_exit(p[0] == 'A' ? 0 : 1);
}

TEST(raw_clone_no_protection_page_but_isolated)
{
	size_t len = ps();
	char *p = anon(len);
	uint64_t pfns[1];
	struct rec c;
	struct uhmm_interval_notifier *n;
	size_t stack_len = 64 * 1024;
	char *stack = anon(stack_len);
	pid_t pid;
	int st;

	memset(p, 'A', len);
	n = mirror(&c, p, len, UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE, pfns);
	pid = clone(clone_child, stack + stack_len, SIGCHLD, p);
	ASSERT_GT(pid, 0);
	ASSERT_EQ(atomic_load(&c.calls), 0);
	/* The device writes through its (still writable) entry. */
	ASSERT_EQ(uhmm_copy_nofault(uhmm_pfn_to_addr(pfns[0]), "B", 1, NULL), 0);
	ASSERT_EQ(waitpid(pid, &st, 0), pid);
	ASSERT_TRUE(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);	/* the child still saw 'A' */
	ASSERT_EQ(p[0], 'B');
	ASSERT_EQ(uhmm_interval_notifier_remove(n), 0);
}

/* uhmm checks what the kernel leaves to the caller: a range outside the
 * notifier is -EINVAL. */
TEST(range_outside_notifier_einval)
{
	size_t len = 2 * ps();
	char *p = anon(len);
	uint64_t pfns[2];
	struct rec c;
	struct uhmm_interval_notifier *n = mirror(&c, p, ps(), 0, pfns);
	struct uhmm_range r = {
		.notifier = n, .start = (unsigned long)p,
		.end = (unsigned long)p + len, .hmm_pfns = pfns,
	};

	r.notifier_seq = uhmm_interval_read_begin(n);
	ASSERT_EQ(uhmm_range_fault(&r), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_remove(n), 0);
}
