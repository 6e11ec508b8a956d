/* SPDX-License-Identifier: MIT */
/*
 * Transparency for real programs (issue "Nothing lost, ever"): what a
 * program that knows nothing of uhmm does must work while another thread
 * moves its memory. Each test is the small program a real program's
 * failure was narrowed down to.
 */
#include <errno.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
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
/* What <signal.h> makes of signal() without _DEFAULT_SOURCE (zstd's). */
extern __sighandler_t __sysv_signal(int sig, __sighandler_t handler);

/*
 * The C library's other ways to set a handler: __sysv_signal (zstd's
 * signal(), found by the chaos runner: its SIGSEGV handler replaced
 * uhmm's and ran on uhmm's guarded faults, every time), sysv_signal and
 * sigset. SIG_DFL through them: a guarded fault that reached the
 * disposition would kill the test.
 */
TEST(program_sysv_signal_and_sigset_after_uhmm_keep_copies_fault_free)
{
	char buf[8];
	void *hole;

	REQUIRE_CHAINING();
	ASSERT_EQ(uhmm_init(), 0);
	hole = unmapped_page();
	ASSERT_NOT_NULL(hole);
	ASSERT_EQ(uhmm_copy_nofault(buf, buf, 1, NULL), 0);
	ASSERT_TRUE(__sysv_signal(SIGSEGV, SIG_DFL) != SIG_ERR);
	ASSERT_EQ(uhmm_copy_nofault(buf, hole, 8, NULL), -EFAULT);
	ASSERT_TRUE(sysv_signal(SIGSEGV, SIG_DFL) != SIG_ERR);
	ASSERT_EQ(uhmm_copy_nofault(hole, buf, 8, NULL), -EFAULT);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
	ASSERT_TRUE(sigset(SIGSEGV, SIG_DFL) != SIG_ERR);
	ASSERT_TRUE(sigset(SIGBUS, SIG_DFL) != SIG_ERR);
#pragma GCC diagnostic pop
	ASSERT_EQ(uhmm_copy_nofault(buf, hole, 8, NULL), -EFAULT);
}

/* ---- munmap and mmap at the same address while migrations run ---- */

#define REMAP_PAGES 64

struct remap_churn {
	_Atomic(char *) where;	/* the mapping of the moment, or NULL */
	_Atomic bool stop;
	struct uhmm_dmirror *dm;
	unsigned long ops;
};

/* A migration there and back: uhmm's threads run after it. */
static int warm_up(struct uhmm_dmirror *dm)
{
	char *p = mmap(NULL, ps(), RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *back = uhmm_alloc(ps());
	struct uhmm_dmirror_cmd c;
	int r = -ENOMEM;

	if (p != MAP_FAILED && back) {
		p[0] = 1;
		r = dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, back, 1, &c);
		if (r == 0)
			r = dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, 1, &c);
	}
	if (p != MAP_FAILED)
		munmap(p, ps());
	uhmm_free(back);
	return r;
}

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
	/* uhmm's threads first (see mremap_while_migrating_keeps_data). */
	ASSERT_EQ(warm_up(c.dm), 0);
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

/* ---- mremap of memory while it migrates ---- */

#define MOVE_PAGES 16

struct move_churn {
	_Atomic(char *) where;	/* the buffer's mapping of the moment */
	_Atomic bool stop;
	_Atomic bool busy;	/* a command of the churner's is under way */
	struct uhmm_dmirror *dm[2];	/* private, coherent */
	unsigned long ops;
	struct move_op {	/* the last commands, for a failure's report */
		char *p;
		unsigned long i, n;
		int op, dev, rc, gen;
		unsigned long long cpages;
	} log[64];
	_Atomic int gen;	/* the main thread's move under way */
};

/* Does page @i of a buffer filled with @seed hold its data? */
static bool page_of(const char *pg, unsigned long i, uint32_t seed)
{
	return check_words(pg, ps(), seed, i * ps() / sizeof(uint32_t));
}

/* What each wrong page of generation @k holds, and the last commands. */
static void move_report(struct move_churn *c, const char *buf, int k)
{
	static const char *const names[] = {
		[UHMM_DMIRROR_MIGRATE_TO_DEV] = "to_dev",
		[UHMM_DMIRROR_MIGRATE_TO_SYS] = "to_sys",
		[UHMM_DMIRROR_EXCLUSIVE] = "exclusive",
	};

	for (unsigned long i = 0; i < MOVE_PAGES; i++) {
		const char *pg = buf + i * ps();

		if (page_of(pg, i, (uint32_t)k))
			continue;
		printf("# page %lu of generation %d holds %s\n", i, k,
		       page_of(pg, i, (uint32_t)k - 1) ? "the previous generation" :
		       all_zero(pg, ps()) ? "zeros" : "other data");
	}
	for (unsigned long j = c->ops > 64 ? c->ops - 64 : 0; j < c->ops; j++) {
		const struct move_op *o = &c->log[j % 64];

		printf("#   op %lu (move %d): %s dev %d at %p, pages %lu+%lu: %d, %llu\n",
		       j, o->gen, names[o->op], o->dev, (void *)o->p, o->i, o->n,
		       o->rc, o->cpages);
	}
}

/* Migrates random ranges of the buffer to either device and back, or
 * makes them exclusive; never writes it (the read-back buffer is
 * uhmm's). Commands on a range that moved meanwhile fail: fine. */
static void *move_churner(void *arg)
{
	struct move_churn *c = arg;
	char *back = uhmm_alloc(MOVE_PAGES * ps());
	unsigned int seed = 7;
	static const enum uhmm_dmirror_op ops[] = {
		UHMM_DMIRROR_MIGRATE_TO_DEV, UHMM_DMIRROR_MIGRATE_TO_DEV,
		UHMM_DMIRROR_MIGRATE_TO_SYS, UHMM_DMIRROR_EXCLUSIVE,
	};

	while (back && !atomic_load(&c->stop)) {
		unsigned long i = (unsigned long)rand_r(&seed) % MOVE_PAGES;
		unsigned long n = 1 + (unsigned long)rand_r(&seed) % (MOVE_PAGES - i);
		struct uhmm_dmirror_cmd cmd;
		char *p;

		atomic_store(&c->busy, true);
		p = atomic_load(&c->where);
		if (p) {
			struct move_op *o = &c->log[c->ops % 64];

			o->p = p;
			o->i = i;
			o->n = n;
			o->dev = rand_r(&seed) & 1;
			o->op = ops[rand_r(&seed) % 4];
			memset(&cmd, 0, sizeof(cmd));
			o->rc = dcmd(c->dm[o->dev], o->op, p + i * ps(), back, n, &cmd);
			o->cpages = cmd.cpages;
			o->gen = atomic_load(&c->gen);
			c->ops++;
		}
		atomic_store(&c->busy, false);
	}
	uhmm_free(back);
	return NULL;
}

/* A PROT_NONE reservation of the buffer's size, to mremap into. */
static char *move_reserve(char *at)
{
	char *r = mmap(at, MOVE_PAGES * ps(), PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS |
		       (at ? MAP_FIXED_NOREPLACE : 0), -1, 0);

	if (r == MAP_FAILED || (at && r != at)) {
		if (r != MAP_FAILED)
			munmap(r, MOVE_PAGES * ps());
		r = mmap(NULL, MOVE_PAGES * ps(), PROT_NONE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	}
	return r == MAP_FAILED ? NULL : r;
}

/*
 * The kernel moves migration entries and device-private entries with the
 * page tables, and a migration finalizes where its pages are then; a CPU
 * access at the new address gets the data. Moved one page at a time
 * (uhmm's registrations split the VMA, semantics row 16), back and
 * forth between two places, while a thread migrates it to a private and
 * a coherent device and back and makes it exclusive. Before claims
 * followed their mappings, this lost data or hung at the first few
 * moves.
 */
TEST_TIMEOUT(mremap_while_migrating_keeps_data, 180)
{
	struct move_churn c = { 0 };
	int iters = SHORTER ? 150 : 600, bad_data = 0, failed = 0;
	char *cur, *other;
	pthread_t t;

	require_uffd(true);
	ASSERT_EQ(uhmm_dmirror_open(0, &c.dm[0]), 0);
	ASSERT_EQ(uhmm_dmirror_open(2, &c.dm[1]), 0);
	/*
	 * uhmm's threads started first. The churner's commands may name a
	 * range the buffer has just left (a hole): what the kernel maps into
	 * it then is migrated too. Started later, a thread's sanitizer state
	 * (its AsanThread and signal stack, mapped at thread start) landed in
	 * such a hole, went to a device, and the thread hung in malloc on
	 * it: uhmm's threads cannot serve their own faults.
	 */
	ASSERT_EQ(warm_up(c.dm[0]), 0);
	cur = mmap(NULL, MOVE_PAGES * ps(), RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_TRUE(cur != MAP_FAILED);
	other = move_reserve(NULL);
	ASSERT_NOT_NULL(other);
	fill(cur, MOVE_PAGES, 1);
	atomic_store(&c.where, cur);
	ASSERT_EQ(pthread_create(&t, NULL, move_churner, &c), 0);
	for (int k = 1; k <= iters; k++) {
		char *tmp;

		usleep((unsigned int)(k % 7) * 50);
		atomic_store(&c.gen, k);
		for (unsigned long i = 0; i < MOVE_PAGES; i++)
			if (mremap(cur + i * ps(), ps(), ps(),
				   MREMAP_MAYMOVE | MREMAP_FIXED,
				   other + i * ps()) != other + i * ps())
				failed++;
		atomic_store(&c.where, other);
		if (!check(other, MOVE_PAGES, (uint32_t)k)) {
			bad_data++;
			/* The churner stops first: its log is read. */
			atomic_store(&c.where, NULL);
			while (atomic_load(&c.busy))
				sched_yield();
			move_report(&c, other, k);
		}
		/* Written with the churner off it (its device reads would
		 * race the stores); the moves above raced its migrations. */
		atomic_store(&c.where, NULL);
		while (atomic_load(&c.busy))
			sched_yield();
		fill(other, MOVE_PAGES, (uint32_t)k + 1);
		atomic_store(&c.gen, -k);	/* filled, not moved yet */
		atomic_store(&c.where, other);
		tmp = move_reserve(cur);
		ASSERT_NOT_NULL(tmp);
		cur = other;
		other = tmp;
	}
	atomic_store(&c.stop, true);
	pthread_join(t, NULL);
	printf("# %d moves of %d pages, %lu commands: %d lost data, %d mremaps failed\n",
	       iters, MOVE_PAGES, c.ops, bad_data, failed);
	ASSERT_EQ(uhmm_dmirror_close(c.dm[0]), 0);
	ASSERT_EQ(uhmm_dmirror_close(c.dm[1]), 0);
	ASSERT_EQ(failed, 0);
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

/* ---- a thread that migrates its own signal stack ---- */

#define ALT_PAGES 8

struct alt_run {
	struct uhmm_dmirror *dm;
	char *alt;
	int mig_rc, excl_rc, present, handled;
	unsigned long long cpages;
};

static _Atomic int alt_handled;

static void alt_handler(int sig)
{
	volatile char frame[512];

	(void)sig;
	frame[0] = 1;
	atomic_store(&alt_handled, frame[0]);
}

static void *alt_main(void *arg)
{
	struct alt_run *a = arg;
	char *back = uhmm_alloc(ALT_PAGES * ps());
	struct uhmm_dmirror_cmd c = { 0 };
	stack_t ss = { .ss_sp = a->alt, .ss_size = ALT_PAGES * ps() };
	struct sigaction sa = { .sa_handler = alt_handler, .sa_flags = SA_ONSTACK };

	if (!back || sigaltstack(&ss, NULL) || sigaction(SIGUSR1, &sa, NULL))
		return NULL;
	a->mig_rc = dcmd(a->dm, UHMM_DMIRROR_MIGRATE_TO_DEV, a->alt, back,
			 ALT_PAGES, &c);
	a->cpages = c.cpages;
	a->excl_rc = dcmd(a->dm, UHMM_DMIRROR_EXCLUSIVE, a->alt, back, 1, &c);
	for (int i = 0; i < ALT_PAGES; i++)
		a->present += page_present(a->alt + i * ps());
	raise(SIGUSR1);
	a->handled = atomic_load(&alt_handled);
	ss.ss_flags = SS_DISABLE;
	sigaltstack(&ss, NULL);
	uhmm_free(back);
	return NULL;
}

/*
 * The thread's alternate signal stack (sanitizers give every thread one)
 * is never taken by its own migrations (semantics M14): a signal taken
 * under a driver's lock (uhmm_copy_nofault's guard in a dmirror command)
 * writes its frame there, and a fault on a page taken away would wait
 * for a reader that waits for that lock (a hang of that shape was seen
 * under ASan in mremap_while_migrating_keeps_data; which page the frame
 * met was not captured).
 */
TEST_TIMEOUT(thread_migrates_its_own_signal_stack, 60)
{
	struct alt_run a = { 0 };
	pthread_t t;

	require_uffd(true);
	ASSERT_EQ(uhmm_dmirror_open(0, &a.dm), 0);
	a.alt = mmap(NULL, ALT_PAGES * ps(), RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_TRUE(a.alt != MAP_FAILED);
	memset(a.alt, 0x3c, ALT_PAGES * ps());
	ASSERT_EQ(pthread_create(&t, NULL, alt_main, &a), 0);
	ASSERT_EQ(pthread_join(t, NULL), 0);
	printf("# MIGRATE_TO_DEV of its signal stack: %d, %llu moved; EXCLUSIVE: %d\n",
	       a.mig_rc, a.cpages, a.excl_rc);
	ASSERT_EQ(a.cpages, 0);
	ASSERT_EQ(a.excl_rc, -EBUSY);
	ASSERT_EQ(a.present, ALT_PAGES);
	ASSERT_EQ(a.handled, 1);
	/* Another thread may move them: they are memory like any other. */
	{
		struct uhmm_dmirror_cmd c;
		char *back = uhmm_alloc(ALT_PAGES * ps());

		ASSERT_NOT_NULL(back);
		ASSERT_EQ(dcmd(a.dm, UHMM_DMIRROR_MIGRATE_TO_DEV, a.alt, back,
			       ALT_PAGES, &c), 0);
		ASSERT_EQ(c.cpages, ALT_PAGES);
		uhmm_free(back);
	}
	ASSERT_EQ((unsigned char)a.alt[0], 0x3c);
	ASSERT_EQ(uhmm_dmirror_close(a.dm), 0);
	munmap(a.alt, ALT_PAGES * ps());
}

/* ---- exec with the caller's thread descriptor on a device ---- */

static uintptr_t tcb_page;
static _Atomic int tcb_moved;

static void *move_tcb(void *arg)
{
	struct uhmm_dmirror *dm = arg;
	struct uhmm_dmirror_cmd c = { 0 };
	char *back = uhmm_alloc(ps());
	int r = -ENOMEM;

	/* Again while a touch brought it back (under TSan the runtime reads
	 * its thread state next to the descriptor: the page comes home as
	 * soon as it left, and -ENOENT says so). */
	for (int i = 0; back && i < 50; i++) {
		r = dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, (void *)tcb_page,
			 back, 1, &c);
		if (r == 0 && c.cpages == 1)
			break;
	}
	if (r || c.cpages != 1)
		fprintf(stderr, "# MIGRATE_TO_DEV of the descriptor's page: %d, %llu moved\n",
			r, (unsigned long long)c.cpages);
	atomic_store(&tcb_moved, r == 0 && c.cpages == 1 ? 1 : -1);
	return NULL;
}

/* Waits for @pid at most @secs seconds: its status, or -1 (killed). */
static int wait_deadline(pid_t pid, int secs)
{
	int st = 0;

	for (int i = 0; i < secs * 100; i++) {
		pid_t r = waitpid(pid, &st, WNOHANG);

		if (r == pid)
			return st;
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	return -1;
}

/* tcb_page: the page of the robust list's head, in the calling
 * thread's descriptor. */
static void tcb_page_find(void)
{
	void *head;
	size_t len;

	ASSERT_EQ(syscall(SYS_get_robust_list, 0, &head, &len), 0);
	tcb_page = (uintptr_t)head & ~(ps() - 1);
}

/*
 * In a forked child: execve bound first (a first call binds the C
 * library's execve lazily, which would touch the descriptor's page and
 * bring it home), then @fn started on a thread with device 0.
 */
static void tcb_child_start(void *(*fn)(void *))
{
	char *const argv[] = { "/nonexistent/uhmm-test", NULL };
	struct uhmm_dmirror *dm;
	pthread_t t;

	execve(argv[0], argv, environ);
	if (uhmm_dmirror_open(0, &dm))
		_exit(2);
	if (pthread_create(&t, NULL, fn, dm))
		_exit(3);
}

/*
 * Another thread moves the page of the main thread's struct pthread (its
 * robust-futex list head) to device-private memory; the main thread
 * calls execve(). After killing the other threads, uhmm's among them,
 * the kernel reads the robust list (exec_mm_release): with the page on
 * the device, a fault nobody serves. Before uhmm's execve brought those
 * pages home first, the exec hung 11 runs in 12 (found by the chaos
 * runner: bash's exec of the last command of a script under jq).
 */
TEST_TIMEOUT(exec_with_tcb_on_device, 60)
{
	int st;
	pid_t pid;

	require_uffd(true);
	tcb_page_find();
	pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		char *const argv[] = { "/bin/sh", "-c", "exit 7", NULL };

		tcb_child_start(move_tcb);
		while (!atomic_load(&tcb_moved))
			;
		if (atomic_load(&tcb_moved) != 1)
			_exit(4);
		execve(argv[0], argv, environ);
		_exit(5);
	}
	st = wait_deadline(pid, 20);
	if (st == -1)
		printf("# the exec hung (killed after 20 s)\n");
	ASSERT_NE(st, -1);
	ASSERT_TRUE(WIFEXITED(st));
	/* 4: the page did not move, and the test tested nothing. */
	if (UTIL_TSAN && WEXITSTATUS(st) == 4)
		SKIP("under TSan the descriptor's page never stays on the device (the runtime's thread state shares it)");
	ASSERT_EQ(WEXITSTATUS(st), 7);
}

static _Atomic int tcb_go;

/* From tcb_go on: the descriptor's page to the device and back, until
 * the exec kills this thread. */
static void *race_tcb(void *arg)
{
	struct uhmm_dmirror *dm = arg;
	struct uhmm_dmirror_cmd c;
	char *back = uhmm_alloc(ps());

	while (!atomic_load(&tcb_go))
		;
	for (;;) {
		dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, (void *)tcb_page, back, 1, &c);
		dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_SYS, (void *)tcb_page, NULL, 1, &c);
	}
	return NULL;
}

/*
 * The same, with the process's first migration racing the exec: the
 * main thread calls execve() as another thread starts moving its
 * descriptor's page. uhmm's execve looked at whether any page was on a
 * device before it held migrations off, so a first migration that began
 * after that look was not waited for, and the exec hung in
 * exec_mm_release (found by the chaos runner: `env -u LD_PRELOAD tee`
 * in a pipeline, 1 run in about 300).
 */
TEST_TIMEOUT(exec_racing_first_migration_of_tcb, 120)
{
	int hung = 0, bad = 0;

	require_uffd(true);
	tcb_page_find();
	for (int i = 0; i < 60 && !hung; i++) {
		pid_t pid = fork();
		int st;

		ASSERT_GE(pid, 0);
		if (pid == 0) {
			char *const argv[] = { "/bin/sh", "-c", "exit 7", NULL };

			tcb_child_start(race_tcb);
			atomic_store(&tcb_go, 1);
			/* Spread the exec over the migration's phases. */
			for (volatile int k = 0; k < (i % 30) * 20000; k++)
				;
			execve(argv[0], argv, environ);
			_exit(5);
		}
		st = wait_deadline(pid, 10);
		if (st == -1)
			hung++;
		else if (!WIFEXITED(st) || WEXITSTATUS(st) != 7)
			bad++;
	}
	if (hung)
		printf("# an exec hung (killed after 10 s)\n");
	ASSERT_EQ(hung, 0);
	ASSERT_EQ(bad, 0);
}

/*
 * vfork() and execve() in a process with pages on a device: the child
 * shares the parent's memory, and with it uhmm's runtime, until the exec.
 * Its execve must leave the runtime as it found it: holding migrations
 * off for the exec (as an exec of the process itself does) would hold
 * the parent's off for good, since the exec succeeds and nothing in the
 * parent undoes it.
 */
static char vfork_stack[64 * 1024] __attribute__((aligned(16)));

static int vfork_child(void *arg)
{
	char *const *argv = arg;

	execve(argv[0], argv, environ);
	_exit(127);
}

TEST_TIMEOUT(vfork_exec_leaves_the_parent_migrating, 60)
{
	char *p = map_anon(4 * ps(), RW), *mirror = map_anon(4 * ps(), RW);
	char *const argv[] = { "/bin/sh", "-c", "exit 7", NULL };
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	int st;
	pid_t pid;

	require_uffd(true);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	fill(p, 4, 3);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, 4, &c), 0);
	ASSERT_EQ(c.cpages, 4ULL);
	/* vfork, on a stack of its own (as posix_spawn does it). */
	pid = clone(vfork_child, vfork_stack + sizeof(vfork_stack),
		    CLONE_VM | CLONE_VFORK | SIGCHLD, (void *)argv);
	ASSERT_GE(pid, 0);
	ASSERT_EQ(waitpid(pid, &st, 0), pid);
	ASSERT_TRUE(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 7);
	/* The parent migrates on, and its data came through. */
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, 4, &c), 0);
	ASSERT_TRUE(check(p, 4, 3));
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, 4, &c), 0);
	ASSERT_EQ(c.cpages, 4ULL);
	ASSERT_TRUE(check(p, 4, 3));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/*
 * uhmm's own descriptors (its userfaultfd, /proc/self/maps and pagemap)
 * sit far above the program's (docs/semantics.md row 19): a program that
 * closes one of its low numbers twice, as bash does after a fork, never
 * meets one of uhmm's, whichever thread opened it meanwhile.
 */
TEST(uhmm_descriptors_sit_above_the_programs)
{
	char *p = map_anon(ps(), RW), *mirror = map_anon(ps(), RW);
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	struct rlimit rl;
	long base = 900;
	int seen = 0;
	char path[64], to[256];

	require_uffd(true);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, 1, &c), 0);
	ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &rl), 0);
	if (rl.rlim_cur != RLIM_INFINITY && (long)rl.rlim_cur < base + 16)
		base = (long)rl.rlim_cur - 16;
	for (int fd = 0; fd < 4096; fd++) {
		ssize_t n;

		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		n = readlink(path, to, sizeof(to) - 1);
		if (n <= 0)
			continue;
		to[n] = 0;
		if (!strstr(to, "[userfaultfd]") &&
		    !(strstr(to, "/maps") && !strncmp(to, "/proc/", 6)) &&
		    !(strstr(to, "/pagemap") && !strncmp(to, "/proc/", 6)))
			continue;
		TH_LOG("descriptor %d: %s", fd, to);
		ASSERT_GE(fd, base);
		seen++;
	}
	ASSERT_GE(seen, 3);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* ---- a thread that migrates its own descriptor, or libc's data ---- */

struct libc_data {
	unsigned long lo, hi;
};

static int find_libc_data(struct dl_phdr_info *info, size_t size, void *arg)
{
	struct libc_data *d = arg;
	const char *base = strrchr(info->dlpi_name, '/');

	(void)size;
	if (!strstr(base ? base : info->dlpi_name, "libc.so"))
		return 0;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];

		if (ph->p_type == PT_LOAD && (ph->p_flags & PF_W)) {
			d->lo = info->dlpi_addr + ph->p_vaddr;
			d->hi = d->lo + ph->p_memsz;
		}
	}
	return 1;
}

/*
 * The calling thread moves the page that holds its own struct pthread
 * (the stack-protector canary every call reads), then the pages of
 * libc's .bss (pthread_mutex_lock() reads __libc_single_threaded) that
 * lie in an anonymous mapping. Either would fault while the migration
 * holds uhmm's readers off: both hung every time before. They are not
 * collected (semantics M15): the commands return with nothing moved.
 */
TEST_TIMEOUT(thread_migrates_its_own_descriptor_and_libc_data, 60)
{
	struct libc_data d = { 0, 0 };
	struct uhmm_dmirror_cmd c;
	struct uhmm_dmirror *dm;
	unsigned long a, first, last;
	char *back;
	int r;

	require_uffd(true);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	back = uhmm_alloc(64 * ps());
	ASSERT_NOT_NULL(back);
	a = (uintptr_t)__builtin_thread_pointer() & ~(ps() - 1);
	r = dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, (void *)a, back, 1, &c);
	printf("# MIGRATE_TO_DEV of its own descriptor's page: %d, %llu moved\n",
	       r, (unsigned long long)c.cpages);
	ASSERT_TRUE(r == 0 || r == -ENOENT);
	ASSERT_TRUE(r == -ENOENT || c.cpages == 0);

	dl_iterate_phdr(find_libc_data, &d);
	ASSERT_NE(d.hi, 0);
	first = (d.lo + ps() - 1) & ~(ps() - 1);
	last = (d.hi + ps() - 1) & ~(ps() - 1);
	/* The whole pages past the file's end: an anonymous mapping (the
	 * .bss pages in the file's mapping are not anonymous memory). */
	for (a = first; a < last; a += ps()) {
		r = dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, (void *)a, back, 1, &c);
		ASSERT_TRUE(r == 0 || r == -ENOENT || r == -EINVAL);
		ASSERT_TRUE(r != 0 || c.cpages == 0);
	}
	printf("# libc's writable data: %lu pages tried, none moved\n",
	       (last - first) / ps());
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	uhmm_free(back);
}

/* ---- a program's signal(SIGSEGV) racing uhmm's first guarded copy ---- */

static pthread_barrier_t race_go;
static int race_delay;

static void race_program_handler(int sig)
{
	(void)sig;
	_exit(3);
}

static void *race_first_copy(void *arg)
{
	char src[64] = { 1 }, dst[64];

	(void)arg;
	pthread_barrier_wait(&race_go);
	for (volatile int k = 0; k < race_delay; k++)
		;
	uhmm_copy_nofault(dst, src, sizeof(dst), NULL);
	return NULL;
}

/*
 * Each try, a fresh child: one thread's first uhmm_copy_nofault()
 * installs uhmm's handler while the main thread calls signal(SIGSEGV).
 * guard.c's sigaction() checked whether uhmm's handler was in without
 * its lock: the program's handler could land in the kernel over uhmm's,
 * and a guarded copy's fault went to it (1 to 2 tries in 10,000 before;
 * tests/chaos/repro/sigaction_race.c).
 */
TEST_TIMEOUT(program_signal_racing_first_guarded_copy, 120)
{
	int lost = 0, tries = SHORTER ? 500 : 3000;

	REQUIRE_CHAINING();
	for (int i = 0; i < tries; i++) {
		int st;
		pid_t p;

		race_delay = i % 150;
		p = fork();
		ASSERT_GE(p, 0);
		if (p == 0) {
			char buf[64];
			pthread_t t;

			pthread_barrier_init(&race_go, NULL, 2);
			pthread_create(&t, NULL, race_first_copy, NULL);
			pthread_barrier_wait(&race_go);
			signal(SIGSEGV, race_program_handler);
			pthread_join(t, NULL);
			/* Unmapped: -EFAULT, or the program's handler (3). */
			_exit(uhmm_copy_nofault(buf, (void *)8192, 64, NULL) == -EFAULT ? 0 : 4);
		}
		ASSERT_EQ(waitpid(p, &st, 0), p);
		if (!WIFEXITED(st) || WEXITSTATUS(st))
			lost++;
	}
	printf("# %d tries, %d guarded faults went to the program's handler\n",
	       tries, lost);
	ASSERT_EQ(lost, 0);
}

/* ---- a device READ's kernel-mode faults racing munmap ---- */

#define PVM_PAGES 64
static char *pvm_buf;
static _Atomic int pvm_go;
static int pvm_delay;

static void *pvm_unmapper(void *arg)
{
	(void)arg;
	while (!atomic_load(&pvm_go))
		;
	for (volatile int k = 0; k < pvm_delay; k++)
		;
	munmap(pvm_buf, PVM_PAGES * ps());
	return NULL;
}

static int pvm_try(void)
{
	struct uhmm_dmirror *d0, *d1;
	struct uhmm_dmirror_cmd c;
	char *back = uhmm_alloc(PVM_PAGES * ps());
	pthread_t t;

	if (!back || uhmm_dmirror_open(0, &d0) || uhmm_dmirror_open(1, &d1))
		return 2;
	pvm_buf = map_anon(PVM_PAGES * ps(), RW);
	if (!pvm_buf)
		return 2;
	memset(pvm_buf, 7, PVM_PAGES * ps());
	if (dcmd(d1, UHMM_DMIRROR_MIGRATE_TO_DEV, pvm_buf, back, PVM_PAGES, &c))
		return 2;
	pthread_create(&t, NULL, pvm_unmapper, NULL);
	atomic_store(&pvm_go, 1);
	dcmd(d0, UHMM_DMIRROR_READ, pvm_buf, back, PVM_PAGES, &c);	/* any result */
	pthread_join(t, NULL);
	return 0;
}

/*
 * A buffer on device 1 is read through device 0 (its pages come back
 * through kernel-mode faults: MADV_POPULATE_READ under uhmm_range_fault)
 * while another thread unmaps it. The fault whose mapping went away was
 * never woken: a failed fault-back left its entry claimed for good, and
 * the zero page that could not be placed (ENOENT) woke nobody. Found by
 * the chaos runner (sort seed 6: the chaos thread in handle_userfault at
 * exit); about 4 tries in 10 hung before (tests/chaos/repro/
 * populate_vs_munmap.c).
 */
TEST_TIMEOUT(device_read_racing_munmap_never_hangs, 240)
{
	int hangs = 0, other = 0, tries = SHORTER ? 40 : 150;

	require_uffd(true);
	for (int i = 0; i < tries; i++) {
		pid_t p;
		int st;

		pvm_delay = (i * 37) % 20000;
		p = fork();
		ASSERT_GE(p, 0);
		if (p == 0)
			_exit(pvm_try());
		st = wait_deadline(p, 10);
		if (st == -1)
			hangs++;
		else if (!WIFEXITED(st) || WEXITSTATUS(st))
			other++;
	}
	printf("# %d tries: %d hangs, %d other failures\n", tries, hangs, other);
	ASSERT_EQ(hangs, 0);
	ASSERT_EQ(other, 0);
}
