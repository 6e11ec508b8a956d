/* SPDX-License-Identifier: MIT */
/*
 * Found by the chaos runner at 72f71ac (sort seed 6, and make seed 7 in
 * its sort: hangs; no thread of the program ran, the exiting main thread
 * joined the chaos thread, which sat in madvise(MADV_POPULATE_READ)
 * (uhmm_range_fault() with REQ_FAULT under a dmirror READ) in
 * handle_userfault, state D, on a range that the maps taken at the hang
 * no longer had: sort had unmapped its buffer meanwhile). This tries that
 * race: a buffer on device 1, a READ of it through device 0 (its pages
 * come back through kernel-mode faults), and another thread's munmap of
 * the buffer at a varying moment. Each try is a fresh child; one that does
 * not end in 5 s is a hang. It hangs as the chaos runs did: the READ's
 * thread in madvise(MADV_POPULATE_READ) in handle_userfault, the munmap
 * done, uhmm's readers idle in poll(): the fault of a range unmapped
 * while it waited is never woken (UFFDIO_WAKE) nor served. About 4 tries
 * in 10 at 72f71ac (18 of the first 44) and at 176cc79 (not new); the
 * first hang prints its threads' kernel stacks.
 *
 * Fixed: a failed fault-back gives up its claim on a dropped entry,
 * and a fault whose mapping is gone is woken (0 hangs in 300 tries;
 * tests/test_transparency.c, device_read_racing_munmap_never_hangs).
 *
 *   cc -O2 -pthread -Iinclude tests/chaos/repro/populate_vs_munmap.c \
 *	-Lbuild -luhmm -Wl,-rpath,$PWD/build -o /tmp/populate_vs_munmap
 *   /tmp/populate_vs_munmap [tries]
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uhmm/dmirror.h>

#define NPAGES	64

static char *buf;
static volatile int go;
static int delay;

static void *unmapper(void *arg)
{
	(void)arg;
	while (!go)
		;
	for (volatile int k = 0; k < delay; k++)
		;
	munmap(buf, NPAGES * 4096);
	return NULL;
}

static int one_try(void)
{
	struct uhmm_dmirror *d0, *d1;
	struct uhmm_dmirror_cmd c = { 0 };
	static char back[NPAGES * 4096];
	pthread_t t;

	if (uhmm_dmirror_open(0, &d0) || uhmm_dmirror_open(1, &d1))
		return 2;
	buf = mmap(NULL, NPAGES * 4096, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		return 2;
	memset(buf, 7, NPAGES * 4096);
	c.addr = (uintptr_t)buf;
	c.ptr = (uintptr_t)back;
	c.npages = NPAGES;
	if (uhmm_dmirror_cmd(d1, UHMM_DMIRROR_MIGRATE_TO_DEV, &c))
		return 2;
	pthread_create(&t, NULL, unmapper, NULL);
	go = 1;
	memset(&c, 0, sizeof(c));
	c.addr = (uintptr_t)buf;
	c.ptr = (uintptr_t)back;
	c.npages = NPAGES;
	uhmm_dmirror_cmd(d0, UHMM_DMIRROR_READ, &c);	/* any result */
	pthread_join(t, NULL);
	return 0;
}

int main(int argc, char **argv)
{
	int tries = argc > 1 ? atoi(argv[1]) : 2000, hangs = 0, other = 0;

	for (int i = 0; i < tries; i++) {
		struct timespec ts = { 0, 1000000 };
		int st = 0, w = 0;
		pid_t p;

		delay = (i * 37) % 20000;
		p = fork();
		if (p == 0)
			_exit(one_try());
		while (w < 5000 && waitpid(p, &st, WNOHANG) == 0) {
			nanosleep(&ts, NULL);
			w++;
		}
		if (w == 5000) {
			hangs++;
			printf("try %d (delay %d): hang\n", i, delay);
			if (hangs == 1) {	/* the first one's threads */
				char cmd[160];

				snprintf(cmd, sizeof(cmd), "cd /proc/%d/task && for t in *; do echo \"thread $t: $(cat $t/syscall)\"; cat $t/stack; done", (int)p);
				fflush(stdout);
				if (system(cmd) != 0)
					printf("(no stacks)\n");
			}
			fflush(stdout);
			kill(p, SIGKILL);
			waitpid(p, &st, 0);
		} else if (!WIFEXITED(st) || WEXITSTATUS(st)) {
			other++;
			printf("try %d: %s %d\n", i, WIFEXITED(st) ? "exit" : "signal",
			       WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
		}
	}
	printf("%d hangs, %d other failures in %d tries\n", hangs, other, tries);
	return hangs || other;
}
