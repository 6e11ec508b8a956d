/* SPDX-License-Identifier: MIT */
/*
 * dmirror across fork(), as the kernel's hmm-tests do it: a child has
 * devices of its own (an open inherited from the parent answers -EBADF),
 * private memory is copy-on-write between parent and child, shared memory
 * is shared, and a device that mirrored a page writable before fork()
 * needs a new fault round to write it afterwards.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uhmm/dmirror.h>
#include <uhmm/uhmm.h>

#include "harness.h"
#include "util.h"

#define NPAGES 8

/* Wait for @pid at most @ms; kill it if it hangs. Exit status, or -1. */
static int wait_child(pid_t pid, long ms)
{
	long stop = now_ms() + ms;
	int st;

	for (;;) {
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid)
			break;
		if (r < 0)
			return -1;
		if (now_ms() > stop) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			return -2;
		}
		usleep(1000);
	}
	if (WIFSIGNALED(st))
		return 1000 + WTERMSIG(st);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* In a child: fail with the line number (mod 200, never 0). */
#define CHILD_CHECK(x)							\
	do {								\
		if (!(x))						\
			_exit(1 + __LINE__ % 200);			\
	} while (0)

TEST(child_parent_handle_ebadf)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	char *p = map_anon(NPAGES * ps(), RW);
	char *buf = map_anon(NPAGES * ps(), RW);

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	fill(buf, NPAGES, 1);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, NPAGES, &c), 0);
	pid_t pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		unsigned char snap[NPAGES];
		for (int op = UHMM_DMIRROR_READ; op <= UHMM_DMIRROR_FLAGS; op++) {
			void *ptr = op == UHMM_DMIRROR_SNAPSHOT ? (void *)snap : buf;
			CHILD_CHECK(dcmd(dm, (enum uhmm_dmirror_op)op, p, ptr,
					 op == UHMM_DMIRROR_FLAGS ? 1 : NPAGES,
					 &c) == -EBADF);
		}
		CHILD_CHECK(uhmm_dmirror_close(dm) == -EBADF);
		/* The memory itself is the parent's copy. */
		CHILD_CHECK(check(p, NPAGES, 1));
		/* A device of its own works. */
		struct uhmm_dmirror *mine;
		CHILD_CHECK(uhmm_dmirror_open(0, &mine) == 0);
		memset(buf, 0, NPAGES * ps());
		CHILD_CHECK(dcmd(mine, UHMM_DMIRROR_READ, p, buf, NPAGES, &c) == 0);
		CHILD_CHECK(c.cpages == NPAGES && c.faults == 1);
		CHILD_CHECK(check(buf, NPAGES, 1));
		CHILD_CHECK(uhmm_dmirror_close(mine) == 0);
		exit(0);	/* exit(), not _exit(): uhmm's exit path runs */
	}
	ASSERT_EQ(wait_child(pid, 10000), 0);
	/* The parent's open is unaffected. */
	memset(buf, 0, NPAGES * ps());
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, NPAGES, &c), 0);
	ASSERT_TRUE(check(buf, NPAGES, 1));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, NPAGES * ps());
	munmap(buf, NPAGES * ps());
}

/* hmm-tests anon_write_child: the child's device writes its own copy. */
TEST(private_child_device_write)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	char *p = map_anon(NPAGES * ps(), RW);
	char *buf = map_anon(NPAGES * ps(), RW);

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	fill(buf, NPAGES, 2);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, NPAGES, &c), 0);
	ASSERT_EQ(c.faults, 1ULL);
	ASSERT_TRUE(check(p, NPAGES, 2));

	pid_t pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		struct uhmm_dmirror *mine;
		CHILD_CHECK(uhmm_dmirror_open(0, &mine) == 0);
		fill(buf, NPAGES, 3);
		CHILD_CHECK(dcmd(mine, UHMM_DMIRROR_WRITE, p, buf, NPAGES, &c) == 0);
		CHILD_CHECK(c.cpages == NPAGES);
		CHILD_CHECK(c.faults == 1);
		CHILD_CHECK(check(p, NPAGES, 3));
		memset(buf, 0, NPAGES * ps());
		CHILD_CHECK(dcmd(mine, UHMM_DMIRROR_READ, p, buf, NPAGES, &c) == 0);
		CHILD_CHECK(check(buf, NPAGES, 3));
		CHILD_CHECK(uhmm_dmirror_close(mine) == 0);
		_exit(0);
	}
	ASSERT_EQ(wait_child(pid, 10000), 0);
	/* MAP_PRIVATE: the parent does not see the child's device write. */
	ASSERT_TRUE(check(p, NPAGES, 2));
	memset(buf, 0, NPAGES * ps());
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, NPAGES, &c), 0);
	ASSERT_TRUE(check(buf, NPAGES, 2));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, NPAGES * ps());
	munmap(buf, NPAGES * ps());
}

/* hmm-tests anon_write_child_shared: shared memory is shared. */
TEST(shared_child_device_write)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	char *p = mmap(NULL, NPAGES * ps(), RW, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	char *buf = map_anon(NPAGES * ps(), RW);

	ASSERT_TRUE(p != MAP_FAILED);
	ASSERT_NOT_NULL(buf);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	fill(buf, NPAGES, 4);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, NPAGES, &c), 0);
	ASSERT_TRUE(check(p, NPAGES, 4));

	pid_t pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		struct uhmm_dmirror *mine;
		CHILD_CHECK(check(p, NPAGES, 4));
		CHILD_CHECK(uhmm_dmirror_open(0, &mine) == 0);
		fill(buf, NPAGES, 5);
		CHILD_CHECK(dcmd(mine, UHMM_DMIRROR_WRITE, p, buf, NPAGES, &c) == 0);
		CHILD_CHECK(c.cpages == NPAGES);
		CHILD_CHECK(check(p, NPAGES, 5));
		CHILD_CHECK(uhmm_dmirror_close(mine) == 0);
		_exit(0);
	}
	ASSERT_EQ(wait_child(pid, 10000), 0);
	ASSERT_TRUE(check(p, NPAGES, 5));
	memset(buf, 0, NPAGES * ps());
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, NPAGES, &c), 0);
	ASSERT_TRUE(check(buf, NPAGES, 5));
	/* Shared memory stays writable for the parent's device. */
	fill(buf, NPAGES, 6);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, NPAGES, &c), 0);
	ASSERT_TRUE(check(p, NPAGES, 6));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, NPAGES * ps());
	munmap(buf, NPAGES * ps());
}

/*
 * After fork the parent's device lost write access (PROTECTION_PAGE): its
 * next WRITE needs a fault round, breaks COW, and the child keeps seeing
 * the pre-fork data.
 */
TEST(parent_device_write_after_fork)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	char *p = map_anon(NPAGES * ps(), RW);
	char *buf = map_anon(NPAGES * ps(), RW);
	int go[2];

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	ASSERT_EQ(pipe(go), 0);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	fill(buf, NPAGES, 7);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, NPAGES, &c), 0);
	ASSERT_EQ(c.faults, 1ULL);
	/* Mirrored writable: a second WRITE needs no fault. */
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, NPAGES, &c), 0);
	ASSERT_EQ(c.faults, 0ULL);

	pid_t pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		char ch;
		close(go[1]);
		CHILD_CHECK(read(go[0], &ch, 1) == 1);
		/* The parent's device wrote by now: not into our copy. */
		CHILD_CHECK(check(p, NPAGES, 7));
		struct uhmm_dmirror *mine;
		CHILD_CHECK(uhmm_dmirror_open(0, &mine) == 0);
		memset(buf, 0, NPAGES * ps());
		CHILD_CHECK(dcmd(mine, UHMM_DMIRROR_READ, p, buf, NPAGES, &c) == 0);
		CHILD_CHECK(check(buf, NPAGES, 7));
		CHILD_CHECK(uhmm_dmirror_close(mine) == 0);
		_exit(0);
	}
	close(go[0]);
	fill(buf, NPAGES, 8);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, NPAGES, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)NPAGES);
	ASSERT_EQ(c.faults, 1ULL);
	ASSERT_TRUE(check(p, NPAGES, 8));
	ASSERT_EQ(write(go[1], "g", 1), 1);
	close(go[1]);
	ASSERT_EQ(wait_child(pid, 10000), 0);
	ASSERT_TRUE(check(p, NPAGES, 8));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, NPAGES * ps());
	munmap(buf, NPAGES * ps());
}

/* Both sides see COW-shared pages as readable, not writable (0x01). */
TEST(snapshot_after_fork_read_only)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	char *p = map_anon(NPAGES * ps(), RW);
	char *buf = map_anon(NPAGES * ps(), RW);
	unsigned char snap[NPAGES];
	int go[2];

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	ASSERT_EQ(pipe(go), 0);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	fill(buf, NPAGES, 9);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, NPAGES, &c), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, p, snap, NPAGES, &c), 0);
	for (int i = 0; i < NPAGES; i++)
		ASSERT_EQ(snap[i], UHMM_DMIRROR_PROT_WRITE);

	pid_t pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		char ch;
		struct uhmm_dmirror *mine;
		close(go[1]);
		int bad = 0;
		CHILD_CHECK(uhmm_dmirror_open(0, &mine) == 0);
		CHILD_CHECK(dcmd(mine, UHMM_DMIRROR_SNAPSHOT, p, snap, NPAGES, &c) == 0);
		for (int i = 0; i < NPAGES; i++)
			if (snap[i] != UHMM_DMIRROR_PROT_READ)
				bad = 100 + snap[i];
		/* Keep the pages shared until the parent has looked too. */
		CHILD_CHECK(read(go[0], &ch, 1) == 1);
		CHILD_CHECK(uhmm_dmirror_close(mine) == 0);
		_exit(bad);
	}
	close(go[0]);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, p, snap, NPAGES, &c), 0);
	for (int i = 0; i < NPAGES; i++)
		ASSERT_EQ(snap[i], UHMM_DMIRROR_PROT_READ);
	ASSERT_EQ(write(go[1], "g", 1), 1);
	close(go[1]);
	/* 0, or 100 + the byte the child's device saw (102: PROT_WRITE). */
	ASSERT_EQ(wait_child(pid, 10000), 0);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, NPAGES * ps());
	munmap(buf, NPAGES * ps());
}

TEST(many_children)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	char *p = map_anon(NPAGES * ps(), RW);
	char *buf = map_anon(NPAGES * ps(), RW);
	pid_t pids[6];

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	fill(buf, NPAGES, 10);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, NPAGES, &c), 0);
	for (int k = 0; k < 6; k++) {
		pids[k] = fork();
		ASSERT_GE(pids[k], 0);
		if (pids[k] == 0) {
			struct uhmm_dmirror *mine;
			CHILD_CHECK(check(p, NPAGES, 10));
			CHILD_CHECK(uhmm_dmirror_open(k & 1, &mine) == 0);
			fill(buf, NPAGES, 100 + (uint32_t)k);
			CHILD_CHECK(dcmd(mine, UHMM_DMIRROR_WRITE, p, buf, NPAGES, &c) == 0);
			CHILD_CHECK(check(p, NPAGES, 100 + (uint32_t)k));
			/* Grandchild: the same again, one level down. */
			pid_t g = fork();
			CHILD_CHECK(g >= 0);
			if (g == 0) {
				struct uhmm_dmirror *gm;
				CHILD_CHECK(uhmm_dmirror_open(0, &gm) == 0);
				fill(buf, NPAGES, 200 + (uint32_t)k);
				CHILD_CHECK(dcmd(gm, UHMM_DMIRROR_WRITE, p, buf, NPAGES, &c) == 0);
				CHILD_CHECK(check(p, NPAGES, 200 + (uint32_t)k));
				_exit(0);
			}
			CHILD_CHECK(wait_child(g, 10000) == 0);
			CHILD_CHECK(check(p, NPAGES, 100 + (uint32_t)k));
			_exit(0);
		}
		/* The parent writes between forks too. */
		fill(buf, NPAGES, 10);
		ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, NPAGES, &c), 0);
		ASSERT_EQ(c.faults, 1ULL);
	}
	for (int k = 0; k < 6; k++)
		ASSERT_EQ(wait_child(pids[k], 20000), 0);
	ASSERT_TRUE(check(p, NPAGES, 10));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, NPAGES * ps());
	munmap(buf, NPAGES * ps());
}

struct busy {
	struct uhmm_dmirror *dm;
	char *p;
	char *buf;
	atomic_int stop;
	atomic_int errors;
	atomic_long iters;
};

static void *busy_thread(void *arg)
{
	struct busy *b = arg;
	struct uhmm_dmirror_cmd c;

	while (!atomic_load(&b->stop)) {
		if (dcmd(b->dm, UHMM_DMIRROR_READ, b->p, b->buf, NPAGES, &c) != 0)
			atomic_fetch_add(&b->errors, 1);
		/* Force fault rounds: drop the mirror with a discard. */
		madvise(b->p, ps(), MADV_DONTNEED);
		atomic_fetch_add(&b->iters, 1);
	}
	return NULL;
}

/*
 * fork() while another thread is inside dmirror and the core: the child
 * must not inherit a held lock (it must be able to use uhmm at once).
 */
TEST_TIMEOUT(fork_while_device_busy, 120)
{
	struct busy b = { 0 };
	pthread_t t;

	b.p = map_anon(NPAGES * ps(), RW);
	b.buf = map_anon(NPAGES * ps(), RW);
	ASSERT_NOT_NULL(b.p);
	ASSERT_NOT_NULL(b.buf);
	ASSERT_EQ(uhmm_dmirror_open(0, &b.dm), 0);
	ASSERT_EQ(pthread_create(&t, NULL, busy_thread, &b), 0);
	long stop = now_ms() + 3000;
	int forks = 0;
	for (; forks < 40 && now_ms() < stop; forks++) {
		pid_t pid = fork();
		ASSERT_GE(pid, 0);
		if (pid == 0) {
			struct uhmm_dmirror *mine;
			struct uhmm_dmirror_cmd c;
			CHILD_CHECK(uhmm_dmirror_open(0, &mine) == 0);
			CHILD_CHECK(dcmd(mine, UHMM_DMIRROR_READ, b.p, b.buf, NPAGES, &c) == 0);
			CHILD_CHECK(c.cpages == NPAGES);
			CHILD_CHECK(uhmm_dmirror_close(mine) == 0);
			_exit(0);
		}
		int st = wait_child(pid, 5000);
		if (st != 0)
			TH_LOG("child %d: status %d (-2: hung)", forks, st);
		ASSERT_EQ(st, 0);
	}
	atomic_store(&b.stop, 1);
	ASSERT_EQ(pthread_join(t, NULL), 0);
	ASSERT_EQ(atomic_load(&b.errors), 0);
	TH_LOG("%d forks, %ld device reads", forks, atomic_load(&b.iters));
	ASSERT_EQ(uhmm_dmirror_close(b.dm), 0);
}

#define EV_PAGES 256

struct evictor {
	char *p;
	struct uhmm_dmirror *dm;
	_Atomic bool stop;
	atomic_long rounds;
};

/* Moves the buffer to a coherent device and evicts it (RELEASE), again
 * and again; never writes it (its read-back buffer is uhmm's). */
static void *evict_thread(void *arg)
{
	struct evictor *ev = arg;
	char *back = uhmm_alloc(EV_PAGES * ps());
	struct uhmm_dmirror_cmd c;

	while (back && !atomic_load(&ev->stop)) {
		dcmd(ev->dm, UHMM_DMIRROR_MIGRATE_TO_DEV, ev->p, back, EV_PAGES, &c);
		dcmd(ev->dm, UHMM_DMIRROR_RELEASE, ev->p, back, EV_PAGES, &c);
		atomic_fetch_add(&ev->rounds, 1);
	}
	uhmm_free(back);
	return NULL;
}

/*
 * fork() while a device evicts its coherent pages (migrate_device_range,
 * RELEASE): in the kernel the child inherits the migration entries and
 * waits on them. Here a frame being evicted is out of the address space
 * until finalize puts the new page in; a fork that copied the page
 * tables meanwhile gave the child a hole, which it read as zeros (bash's
 * forked children lost their variables in the chaos runs). Eviction is
 * held off by a fork like any migration.
 */
TEST_TIMEOUT(fork_racing_coherent_eviction_child_reads_data, 120)
{
	struct evictor ev = { 0 };
	int forks = (UTIL_ASAN || UTIL_TSAN) ? 100 : 300, bad = 0, hung = 0;
	pthread_t t;

	require_uffd(true);
	ev.p = map_anon(EV_PAGES * ps(), RW);
	ASSERT_NOT_NULL(ev.p);
	fill(ev.p, EV_PAGES, 5);
	/* Mappings below the buffer (mmap goes down), which fork copies
	 * first: the window between the fork's preparation and the copy
	 * of the buffer's page tables is a few milliseconds wide. */
	for (int i = 0; i < 3000; i++)
		mmap(NULL, ps(), (i & 1) ? PROT_READ : RW,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	ASSERT_EQ(uhmm_dmirror_open(2, &ev.dm), 0);
	ASSERT_EQ(pthread_create(&t, NULL, evict_thread, &ev), 0);
	for (int k = 0; k < forks; k++) {
		pid_t pid = fork();

		ASSERT_GE(pid, 0);
		if (pid == 0)
			_exit(check(ev.p, EV_PAGES, 5) ? 0 : 1);
		int st = wait_child(pid, 10000);

		bad += st == 1;
		hung += st == -2;
		ASSERT_TRUE(st == 0 || st == 1 || st == -2);
		/* Exclusive again (UFFDIO_MOVE takes no page shared
		 * copy-on-write), so that it migrates. */
		fill(ev.p, EV_PAGES, 5);
	}
	atomic_store(&ev.stop, true);
	ASSERT_EQ(pthread_join(t, NULL), 0);
	TH_LOG("%d forks, %ld eviction rounds: %d children read wrong data, %d hung",
	       forks, atomic_load(&ev.rounds), bad, hung);
	ASSERT_TRUE(check(ev.p, EV_PAGES, 5));
	ASSERT_EQ(uhmm_dmirror_close(ev.dm), 0);
	ASSERT_EQ(bad, 0);
	ASSERT_EQ(hung, 0);
}
