/* SPDX-License-Identifier: MIT */
/*
 * Found by the chaos runner (zstd seed 3 at 176cc79: a hang, with
 * "Caught SIGSEGV signal, printing stack:" on zstd's stderr): libuhmm
 * interposes sigaction() and signal() (signal chaining, semantics row
 * 17), but not the C library's other ways in. zstd 1.5.4 is built with
 * strict POSIX flags, so its signal(SIGSEGV, ABRThandler) is a call of
 * __sysv_signal (nm -D /usr/bin/zstd), which goes to the kernel through
 * glibc's internal __sigaction. Installed after uhmm's handler (zstd does
 * it when it starts on a file, after the chaos thread's first guarded
 * copy), it replaces uhmm's handler in the kernel, and the next fault of
 * a uhmm_copy_nofault() runs the program's handler on uhmm's thread
 * instead of returning -EFAULT: zstd's prints a backtrace, which hangs
 * (the chaos thread is in the middle of a device command). Likewise
 * sysv_signal, bsd_signal and sigset. Happens every time, at 176cc79
 * and 72f71ac.
 *
 * Fixed: libuhmm defines __sysv_signal, sysv_signal, bsd_signal and
 * sigset too (tests/test_transparency.c,
 * program_sysv_signal_and_sigset_after_uhmm_keep_copies_fault_free).
 *
 *   cc -O2 -Iinclude tests/chaos/repro/sysv_signal.c -Lbuild -luhmm \
 *	-Wl,-rpath,$PWD/build -o /tmp/sysv_signal && /tmp/sysv_signal
 * prints "ok: -EFAULT" when uhmm's handler stays in, "program's handler
 * ran" (exit 3) when it does not.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <uhmm/uhmm.h>

/* What zstd's signal() is: <signal.h> without _DEFAULT_SOURCE. */
extern __sighandler_t __sysv_signal(int sig, __sighandler_t handler);

static void program_handler(int sig)
{
	static const char msg[] = "program's handler ran\n";

	(void)sig;
	write(1, msg, sizeof(msg) - 1);
	_exit(3);
}

int main(void)
{
	char src[64] = { 1 }, dst[64];
	int r;

	/* uhmm's handler in (a copy that does not fault installs it) */
	if (uhmm_copy_nofault(dst, src, sizeof(dst), NULL) != 0)
		return 2;
	__sysv_signal(SIGSEGV, program_handler);
	/* unmapped: -EFAULT from uhmm's handler, or the program's runs */
	r = uhmm_copy_nofault(dst, (void *)8192, sizeof(dst), NULL);
	printf("%s: %d\n", r == -14 ? "ok: -EFAULT" : "unexpected", r);
	return r == -14 ? 0 : 4;
}
