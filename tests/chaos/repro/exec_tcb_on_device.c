/* SPDX-License-Identifier: MIT */
/*
 * Found by the chaos runner (jq, bash's exec of the last command: a hang):
 * another thread moves the page that holds the main thread's struct
 * pthread (with its robust-futex list head) to device-private memory; the
 * main thread, touching nothing there, calls execve(2). The kernel reads
 * the robust list in exec_mm_release() (futex_exit_release, __get_user_8)
 * after de_thread() killed every other thread, uhmm's readers included:
 * the fault waits in handle_userfault() for good. Hung 11 runs in 12
 * at 6ec5a8a and 3200d74. uhmm's execve (and its kin) now hold
 * migrations off and bring those pages home first; a raw system call
 * (RAW=1) still hangs (docs/semantics.md). Regression test:
 * tests/test_transparency.c, exec_with_tcb_on_device.
 *
 *   cc -O2 -fno-stack-protector -pthread -Iinclude \
 *	tests/chaos/repro/exec_tcb_on_device.c -Lbuild -luhmm \
 *	-Wl,-rpath,$PWD/build -o /tmp/exec_tcb && timeout 10 /tmp/exec_tcb
 * prints "exec done" when it does not hang (x86-64 only).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <uhmm/dmirror.h>

static volatile int moved;
static uintptr_t tcb_page;
static char *const args[] = { "/bin/echo", "exec done", NULL };
static char back[4096] __attribute__((aligned(4096)));

static void *mover(void *arg)
{
	struct uhmm_dmirror_cmd c = { .addr = tcb_page,
				      .ptr = (uintptr_t)back, .npages = 1 };
	struct uhmm_dmirror *dm;

	(void)arg;
	if (!uhmm_dmirror_open(0, &dm))
		printf("MIGRATE_TO_DEV of the main thread's TCB page: %d\n",
		       uhmm_dmirror_cmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, &c));
	fflush(stdout);
	moved = 1;
	return NULL;
}

int main(void)
{
	uintptr_t fs;
	pthread_t t;
	long ret;

	__asm__("mov %%fs:0, %0" : "=r"(fs));
	tcb_page = fs & ~4095UL;
	pthread_create(&t, NULL, mover, NULL);
	while (!moved)
		;
	if (getenv("RAW")) {
		/* A raw system call, which uhmm cannot see: hangs. */
		__asm__ volatile("syscall" : "=a"(ret)
				 : "0"(SYS_execve), "D"(args[0]), "S"(args), "d"(environ)
				 : "rcx", "r11", "memory");
	} else {
		ret = execve(args[0], args, environ);
	}
	return (int)ret;
}
