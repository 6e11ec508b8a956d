/* SPDX-License-Identifier: MIT */
/*
 * Found by the chaos runner (UHMM_CHAOS_CLOSE=caller and
 * UHMM_CHAOS_MAPS=libc, hangs): a thread that migrates a page it touches
 * itself while it moves it deadlocks. Here the page holding the calling
 * thread's TCB: right after the UFFDIO_MOVE in isolate_runs(), glibc's
 * ioctl() wrapper reads the stack-protector canary at %fs:0x28, the page
 * is gone, and the reader that would serve the fault waits for
 * rt->movelock, which this thread holds shared. 725315f keeps the live
 * part of the caller's stack out of its migration; its TCB and static TLS
 * are not, nor libc's .bss (__libc_single_threaded, which
 * pthread_mutex_lock() reads), nor the pages of an eviction
 * (uhmm_dmirror_close() of a coherent device that holds such a page).
 * Hung every time at 3200d74. Fixed: a migration does not collect its
 * caller's descriptor and static TLS, nor libc's, the loader's and
 * libuhmm's data (semantics M14, M15): the command returns -ENOENT.
 * Regression test: tests/test_transparency.c,
 * thread_migrates_its_own_descriptor_and_libc_data.
 *
 *   cc -O2 -Iinclude tests/chaos/repro/migrate_own_tls.c -Lbuild -luhmm \
 *	-Wl,-rpath,$PWD/build -o /tmp/own_tls && timeout 10 /tmp/own_tls
 * prints "moved" when it does not hang (x86-64 only).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>

#include <uhmm/dmirror.h>

static char back[4096] __attribute__((aligned(4096)));

int main(void)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c = { .ptr = (uintptr_t)back, .npages = 1 };
	uintptr_t fs;
	int r;

	__asm__("mov %%fs:0, %0" : "=r"(fs));
	c.addr = fs & ~4095UL;
	if (uhmm_dmirror_open(0, &dm))
		return 1;
	r = uhmm_dmirror_cmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, &c);
	printf("moved: %d\n", r);
	return 0;
}
