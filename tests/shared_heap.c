/* SPDX-License-Identifier: MIT */
/*
 * Built as build/tests/test_shared_heap, linked against libuhmm.so (the
 * other tests link libuhmm.a, whose thread-locals are the executable's):
 * the whole heap moves to a device, again and again, while threads fault
 * it back. glibc keeps each thread's TLS vector (DTV) in the creating
 * thread's malloc arena; a shared library's global-dynamic thread-locals
 * are reached through it. Before uhmm's were initial-exec, a monitor
 * thread faulted on its own DTV there and nobody served the fault (seen:
 * reader_main > ... > __tls_get_addr). docs/design.md, "Memory uhmm's
 * threads touch".
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uhmm/dmirror.h>
#include <uhmm/uhmm.h>

#include "harness.h"
#include "util.h"

/* A sanitizer's run is 5 to 20 times slower. */
#define ROUNDS (UTIL_ASAN || UTIL_TSAN ? 5 : 20)

#define SMALL 512	/* heap objects of the test, checked at the end */

struct heapx {
	_Atomic bool stop;
	char *small[SMALL];
	long ops[4];
};

static bool heap_range(unsigned long *s, unsigned long *e)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	bool found = false;

	if (!f)
		return false;
	while (fgets(line, sizeof(line), f))
		if (strstr(line, "[heap]") && sscanf(line, "%lx-%lx", s, e) == 2)
			found = true;
	fclose(f);
	return found;
}

struct toucher_arg {
	struct heapx *h;
	int id;
};

/* malloc and free (the arena's own structures move too), and reads of
 * the test's heap objects: each a fault-back once the heap moved. */
static void *toucher(void *arg)
{
	struct toucher_arg *a = arg;
	unsigned int seed = (unsigned int)a->id + 1;

	while (!atomic_load(&a->h->stop)) {
		char *p = malloc(16 + rand_r(&seed) % 2000);
		unsigned int k = (unsigned int)rand_r(&seed) % SMALL;

		if (p) {
			memset(p, 1, 16);
			free(p);
		}
		if (a->h->small[k][0] != (char)k)
			abort();
		a->h->ops[a->id]++;
	}
	return NULL;
}

TEST_TIMEOUT(whole_heap_migrated_while_faults_are_served, 120)
{
	static struct heapx h;
	struct toucher_arg args[4];
	pthread_t t[4];
	struct uhmm_dmirror *dm;
	unsigned long moved = 0, s, e;
	int rounds = ROUNDS;
	char *back;

	/* The heap is read by the kernel too (write(2) of stdio buffers). */
	require_kernel_faults();
	if (!heap_range(&s, &e))
		SKIP("no [heap] mapping in /proc/self/maps");
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	back = uhmm_alloc(64 * ps());	/* the read-back buffer: never moves */
	ASSERT_NOT_NULL(back);
	for (int i = 0; i < SMALL; i++) {
		h.small[i] = malloc(64);
		ASSERT_NOT_NULL(h.small[i]);
		memset(h.small[i], i, 64);
	}
	for (int i = 0; i < 4; i++) {
		args[i] = (struct toucher_arg){ &h, i };
		ASSERT_EQ(pthread_create(&t[i], NULL, toucher, &args[i]), 0);
	}
	for (int round = 0; round < rounds; round++) {
		ASSERT_TRUE(heap_range(&s, &e));
		for (unsigned long a = s; a < e; a += 64 * ps()) {
			unsigned long n = (e - a) / ps() < 64 ? (e - a) / ps() : 64;
			struct uhmm_dmirror_cmd c = {
				.addr = a, .ptr = (uintptr_t)back, .npages = n,
			};

			/* Pages being faulted back or freed meanwhile: -ENOENT
			 * or a partial move, both fine. */
			if (uhmm_dmirror_cmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, &c) == 0)
				moved += c.cpages;
		}
		usleep(10000);
	}
	atomic_store(&h.stop, true);
	for (int i = 0; i < 4; i++)
		ASSERT_EQ(pthread_join(t[i], NULL), 0);
	for (int i = 0; i < SMALL; i++) {
		for (int j = 0; j < 64; j++)
			ASSERT_EQ(h.small[i][j], (char)i);
		free(h.small[i]);
	}
	printf("# %d rounds, %lu heap pages moved, %ld + %ld + %ld + %ld reads\n",
	       rounds, moved, h.ops[0], h.ops[1], h.ops[2], h.ops[3]);
	ASSERT_GT(moved, 0);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	uhmm_free(back);
}
