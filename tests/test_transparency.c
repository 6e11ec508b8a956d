/* SPDX-License-Identifier: MIT */
/*
 * Transparency for real programs (issue "Nothing lost, ever"): what a
 * program that knows nothing of uhmm does must work while another thread
 * moves its memory. Each test is the small program a real program's
 * failure was narrowed down to.
 */
#include <errno.h>
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
#include <sys/wait.h>
#include <unistd.h>

#include <uhmm/dmirror.h>
#include <uhmm/migrate.h>
#include <uhmm/uhmm.h>

#include "harness.h"
#include "util.h"

/* A sanitizer's run is 5 to 20 times slower. */
#define SHORTER (UTIL_ASAN || UTIL_TSAN)

/* ---- fork() racing exclusive access: the child reads its data ---- */

struct excl_churn {
	char *buf;
	unsigned long n;
	_Atomic bool stop;
	unsigned long taken;
};

static void *excl_churner(void *arg)
{
	struct excl_churn *c = arg;
	unsigned int seed = 12345;

	while (!atomic_load(&c->stop)) {
		unsigned long i = (unsigned long)rand_r(&seed) % c->n;
		void *dev;

		if (uhmm_make_device_exclusive((unsigned long)c->buf + i * ps(),
					       c, &dev) == 0)
			c->taken++;
	}
	return NULL;
}

TEST_TIMEOUT(fork_racing_exclusive_child_reads_data, 120)
{
	struct excl_churn c = { .n = 256 };
	int bad = 0, forks = SHORTER ? 30 : 100;
	pthread_t t;

	require_uffd(true);
	c.buf = map_anon(c.n * ps(), RW);
	ASSERT_NOT_NULL(c.buf);
	fill(c.buf, c.n, 7);
	ASSERT_EQ(pthread_create(&t, NULL, excl_churner, &c), 0);
	for (int k = 0; k < forks; k++) {
		pid_t pid = fork();

		if (pid == 0)
			_exit(check(c.buf, c.n, 7) ? 0 : 1);
		ASSERT_GE(pid, 0);
		int st = 0;

		ASSERT_EQ(waitpid(pid, &st, 0), pid);
		if (!WIFEXITED(st) || WEXITSTATUS(st))
			bad++;
	}
	atomic_store(&c.stop, true);
	pthread_join(t, NULL);
	printf("# %d forks, %lu exclusive takings, %d children read wrong data\n",
	       forks, c.taken, bad);
	ASSERT_EQ(bad, 0);
	ASSERT_TRUE(check(c.buf, c.n, 7));
	munmap(c.buf, c.n * ps());
}

/* ---- a program's own SIGSEGV handler, installed after uhmm's ---- */

#if UTIL_ASAN || UTIL_TSAN
#define REQUIRE_CHAINING() \
	SKIP("under a sanitizer its runtime owns sigaction(): uhmm chains no handler (docs/semantics.md)")
#else
#define REQUIRE_CHAINING() require_own_faults()
#endif

/* The tests fault on purpose, which memcheck reports as an error. */
TH_UNUSED static void require_own_faults(void)
{
	struct uhmm_features f = { .size = sizeof(f) };

	if (uhmm_features(&f) == 0 && f.uffd_error == -EDEADLK)
		SKIP("under valgrind: memcheck reports the test's own deliberate faults");
}

static sigjmp_buf own_pad;
static volatile sig_atomic_t own_calls;

static void own_handler(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)si;
	(void)uc;
	own_calls++;
	siglongjmp(own_pad, 1);
}

TEST(program_handler_installed_after_uhmm_gets_only_its_faults)
{
	struct sigaction sa = { .sa_sigaction = own_handler,
				.sa_flags = SA_SIGINFO | SA_NODEFER };
	struct sigaction back, old;
	char buf[64];
	unsigned long at = 0;
	void *hole;

	REQUIRE_CHAINING();
	/* uhmm's handler goes in at runtime start (or the first copy);
	 * its arena is mapped then too. */
	ASSERT_EQ(uhmm_init(), 0);
	hole = unmapped_page();
	ASSERT_NOT_NULL(hole);
	ASSERT_EQ(uhmm_copy_nofault(buf, buf + 32, 8, NULL), 0);
	/* The program installs its own afterwards, as gnulib's c-stack. */
	sigemptyset(&sa.sa_mask);
	ASSERT_EQ(sigaction(SIGSEGV, &sa, &old), 0);
	/* uhmm's deliberate faults stay uhmm's: -EFAULT, no signal seen. */
	ASSERT_EQ(uhmm_copy_nofault(buf, hole, 8, &at), -EFAULT);
	ASSERT_EQ(at, (unsigned long)hole);
	ASSERT_EQ(uhmm_copy_nofault(hole, buf, 8, NULL), -EFAULT);
	ASSERT_EQ(own_calls, 0);
	/* The program's own faults reach its handler. */
	if (!sigsetjmp(own_pad, 1))
		*(volatile char *)hole = 1;
	ASSERT_EQ(own_calls, 1);
	/* And it reads back the handler it installed. */
	ASSERT_EQ(sigaction(SIGSEGV, NULL, &back), 0);
	ASSERT_TRUE(back.sa_sigaction == own_handler);
	ASSERT_EQ(sigaction(SIGSEGV, &old, NULL), 0);
	ASSERT_EQ(uhmm_copy_nofault(buf, hole, 8, NULL), -EFAULT);
}

TEST(program_signal_call_after_uhmm_keeps_copies_fault_free)
{
	char buf[8];
	void *hole;

	REQUIRE_CHAINING();
	ASSERT_EQ(uhmm_init(), 0);
	hole = unmapped_page();
	ASSERT_NOT_NULL(hole);
	ASSERT_EQ(uhmm_copy_nofault(buf, buf, 1, NULL), 0);
	/* signal() with SIG_DFL: a deliberate fault would kill the test. */
	ASSERT_TRUE(signal(SIGSEGV, SIG_DFL) != SIG_ERR);
	ASSERT_TRUE(signal(SIGBUS, SIG_DFL) != SIG_ERR);
	ASSERT_EQ(uhmm_copy_nofault(buf, hole, 8, NULL), -EFAULT);
	ASSERT_EQ(uhmm_copy_nofault(hole, buf, 8, NULL), -EFAULT);
}
/* ---- munmap and mmap at the same address while migrations run ---- */

#define REMAP_PAGES 64

struct remap_churn {
	_Atomic(char *) where;	/* the mapping of the moment, or NULL */
	_Atomic bool stop;
	struct uhmm_dmirror *dm;
	unsigned long ops;
};

/* Moves random ranges of whatever is mapped there to the device and
 * back; never writes the memory (its read-back buffer is uhmm's). */
static void *remap_churner(void *arg)
{
	struct remap_churn *c = arg;
	char *back = uhmm_alloc(REMAP_PAGES * ps());
	unsigned int seed = 99;

	while (back && !atomic_load(&c->stop)) {
		char *p = atomic_load(&c->where);
		unsigned long i = (unsigned long)rand_r(&seed) % REMAP_PAGES;
		unsigned long n = 1 + (unsigned long)rand_r(&seed) % (REMAP_PAGES - i);
		struct uhmm_dmirror_cmd cmd;

		if (!p)
			continue;
		dcmd(c->dm, (rand_r(&seed) & 1) ? UHMM_DMIRROR_MIGRATE_TO_DEV :
			     UHMM_DMIRROR_MIGRATE_TO_SYS, p + i * ps(), back, n, &cmd);
		c->ops++;
	}
	uhmm_free(back);
	return NULL;
}

static bool all_zero(const char *p, unsigned long len)
{
	for (unsigned long i = 0; i < len; i++)
		if (p[i])
			return false;
	return true;
}

TEST_TIMEOUT(remap_same_address_while_migrating_keeps_data, 180)
{
	struct remap_churn c = { 0 };
	int iters = SHORTER ? 300 : 2000, bad_zero = 0, bad_data = 0;
	pthread_t t;

	require_uffd(true);
	ASSERT_EQ(uhmm_dmirror_open(0, &c.dm), 0);
	ASSERT_EQ(pthread_create(&t, NULL, remap_churner, &c), 0);
	for (int k = 0; k < iters; k++) {
		char *p = mmap(NULL, REMAP_PAGES * ps(), RW,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		ASSERT_TRUE(p != MAP_FAILED);
		atomic_store(&c.where, p);
		if (!all_zero(p, REMAP_PAGES * ps()))
			bad_zero++;
		fill(p, REMAP_PAGES, (uint32_t)k + 1);
		usleep(200);
		if (!check(p, REMAP_PAGES, (uint32_t)k + 1))
			bad_data++;
		atomic_store(&c.where, NULL);
		ASSERT_EQ(munmap(p, REMAP_PAGES * ps()), 0);
	}
	atomic_store(&c.stop, true);
	pthread_join(t, NULL);
	printf("# %d iterations, %lu migrations: %d fresh mappings not zero, %d lost data\n",
	       iters, c.ops, bad_zero, bad_data);
	ASSERT_EQ(uhmm_dmirror_close(c.dm), 0);
	ASSERT_EQ(bad_zero, 0);
	ASSERT_EQ(bad_data, 0);
}

/* ---- a thread that migrates its own stack ---- */

static __attribute__((noinline)) int migrate_own_stack(struct uhmm_dmirror *dm,
						       char *back)
{
	char mine[3 * 4096];
	unsigned long a = ((uintptr_t)mine & ~(ps() - 1)) - 16 * ps();
	struct uhmm_dmirror_cmd c;
	int r;

	memset(mine, 0x5c, sizeof(mine));
	/* 64 KiB below this array (the frames uhmm and dmirror push) and
	 * the array's first pages. */
	r = dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, (void *)a, back, 18, &c);
	for (size_t i = 0; i < sizeof(mine); i++)
		if (mine[i] != 0x5c)
			return -1000;
	return r;
}

TEST_TIMEOUT(thread_migrates_its_own_stack, 60)
{
	struct uhmm_dmirror *dm;
	char *back;
	int r;

	require_uffd(true);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	back = uhmm_alloc(32 * ps());
	ASSERT_NOT_NULL(back);
	/* Whatever moves or stays (-ENOENT for pages that stayed), the
	 * thread goes on and its stack holds its data. */
	r = migrate_own_stack(dm, back);
	printf("# MIGRATE_TO_DEV around the stack pointer: %d\n", r);
	ASSERT_NE(r, -1000);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	uhmm_free(back);
}
