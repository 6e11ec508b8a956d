/* SPDX-License-Identifier: MIT */
/*
 * uhmm_copy_nofault(): a memcpy whose faults become -EFAULT, the user-space
 * counterpart of the kernel's exception-table fixups for copy_from_user.
 * SIGSEGV/SIGBUS handlers check a per-thread landing pad; a fault outside
 * a guarded copy goes to the program's own handler (signal chaining, as
 * a JVM's libjsig does it): the one installed before uhmm's, or one the
 * program installs afterwards through sigaction() or signal(), which
 * this file defines in front of the C library's.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>

#include <pthread.h>

#include "base.h"

static _Thread_local sigjmp_buf *guard_pad;
static _Thread_local unsigned long guard_addr;
static struct sigaction prev_segv, prev_bus;
static bool installed;
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;

static void chain(int sig, siginfo_t *si, void *uc)
{
	struct sigaction *prev = sig == SIGSEGV ? &prev_segv : &prev_bus;
	struct sigaction h = *prev;

	if (h.sa_handler != SIG_DFL && h.sa_handler != SIG_IGN) {
		sigset_t mask = h.sa_mask;

		/* As the kernel delivers it: the handler's mask, the signal
		 * itself unless SA_NODEFER, a one-shot handler reset. */
		if (!(h.sa_flags & SA_NODEFER))
			sigaddset(&mask, sig);
		pthread_sigmask(SIG_BLOCK, &mask, NULL);
		if (h.sa_flags & SA_RESETHAND) {
			prev->sa_handler = SIG_DFL;
			prev->sa_flags &= ~SA_SIGINFO;
		}
		if (h.sa_flags & SA_SIGINFO)
			h.sa_sigaction(sig, si, uc);
		else
			h.sa_handler(sig);
		return;		/* the return restores the interrupted mask */
	}
	/*
	 * Default action: restore it and let the access fault again (or,
	 * for a signal sent by kill(), raise it again).
	 */
	struct sigaction dfl;

	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	uhmm__os_sigaction(sig, &dfl, NULL);
	if (si->si_code <= 0)
		uhmm__os_raise(sig);
}

static void guard_handler(int sig, siginfo_t *si, void *uc)
{
	sigjmp_buf *pad = guard_pad;

	if (pad && si->si_code > 0) {
		guard_pad = NULL;
		guard_addr = (unsigned long)si->si_addr;
		siglongjmp(*pad, 1);
	}
	chain(sig, si, uc);
}

int uhmm__guard_install(void)
{
	struct sigaction sa;
	int r = 0;

	if (__atomic_load_n(&installed, __ATOMIC_ACQUIRE))
		return 0;
	pthread_mutex_lock(&install_lock);
	if (installed)
		goto out;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = guard_handler;
	/* NODEFER: the landing pad is left with siglongjmp without
	 * restoring the mask, so the signal must not stay blocked. */
	sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	r = uhmm__os_sigaction(SIGSEGV, &sa, &prev_segv);
	if (r == 0) {
		r = uhmm__os_sigaction(SIGBUS, &sa, &prev_bus);
		if (r < 0)
			uhmm__os_sigaction(SIGSEGV, &prev_segv, NULL);
	}
	__atomic_store_n(&installed, r == 0, __ATOMIC_RELEASE);
out:
	pthread_mutex_unlock(&install_lock);
	return r;
}

#ifndef UHMM_SANITIZED
/*
 * Signal chaining. Once uhmm's handler is in, a program's disposition for
 * SIGSEGV or SIGBUS is recorded as the one to chain to (faults outside a
 * guarded copy go there), and reading it back gives the program's own:
 * uhmm's deliberate faults never reach a handler the program installed
 * after uhmm's (GNU diff's, through gnulib's c-stack). Under a sanitizer
 * its runtime's interceptors own sigaction(): not defined there.
 */
__attribute__((visibility("default")))
int sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
	bool guarded = sig == SIGSEGV || sig == SIGBUS;
	int r;

	/*
	 * Under install_lock whether or not uhmm's handler is in: checked
	 * unlocked, a program's sigaction() racing uhmm__guard_install()
	 * could put the program's handler in the kernel over uhmm's
	 * (tests/chaos/repro/sigaction_race.c, 1 to 2 tries in 10,000).
	 */
	if (guarded) {
		pthread_mutex_lock(&install_lock);
		if (installed) {
			struct sigaction *prev = sig == SIGSEGV ? &prev_segv : &prev_bus;

			if (old)
				*old = *prev;
			if (act)
				*prev = *act;
			pthread_mutex_unlock(&install_lock);
			return 0;
		}
	}
	r = uhmm__os_sigaction(sig, act, old);
	if (guarded)
		pthread_mutex_unlock(&install_lock);
	if (r < 0) {
		errno = -r;
		return -1;
	}
	return 0;
}

/*
 * A handler set through sigaction() (this file's): signal()'s BSD
 * semantics (SA_RESTART, the signal blocked in its handler), or System
 * V's (one-shot, not blocked).
 */
static __sighandler_t set_handler(int sig, __sighandler_t handler, bool bsd)
{
	struct sigaction sa, old;

	if (sig <= 0 || sig >= NSIG || handler == SIG_ERR) {
		errno = EINVAL;
		return SIG_ERR;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = handler;
	sa.sa_flags = bsd ? SA_RESTART : SA_RESETHAND | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	if (bsd)
		sigaddset(&sa.sa_mask, sig);
	if (sigaction(sig, &sa, &old) < 0)
		return SIG_ERR;
	return old.sa_handler;
}

/* The C library's signal() calls its own sigaction() directly: signal()
 * too. */
__attribute__((visibility("default")))
void (*signal(int sig, void (*handler)(int)))(int)
{
	return set_handler(sig, handler, true);
}

/*
 * The C library's other ways to set a handler, which call its own
 * sigaction() directly too: signal() as <signal.h> names it without
 * _DEFAULT_SOURCE (__sysv_signal: zstd's; one-shot, not blocked),
 * sysv_signal, bsd_signal (signal()'s semantics) and sigset (System V:
 * SIG_HOLD blocks). tests/chaos/repro/sysv_signal.c: zstd's SIGSEGV
 * handler replaced uhmm's and ran on uhmm's guarded faults.
 */
__attribute__((visibility("default")))
__sighandler_t __sysv_signal(int sig, __sighandler_t handler)
{
	return set_handler(sig, handler, false);
}

__attribute__((visibility("default")))
__sighandler_t sysv_signal(int sig, __sighandler_t handler)
{
	return set_handler(sig, handler, false);
}

__sighandler_t bsd_signal(int sig, __sighandler_t handler);

__attribute__((visibility("default")))
__sighandler_t bsd_signal(int sig, __sighandler_t handler)
{
	return signal(sig, handler);
}

__attribute__((visibility("default")))
__sighandler_t sigset(int sig, __sighandler_t disp)
{
	struct sigaction sa, old;
	sigset_t set, prev;

	if (sig <= 0 || sig >= NSIG || disp == SIG_ERR) {
		errno = EINVAL;
		return SIG_ERR;
	}
	sigemptyset(&set);
	sigaddset(&set, sig);
	if (disp == SIG_HOLD) {
		if (uhmm__os_sigmask(SIG_BLOCK, &set, &prev) ||
		    sigaction(sig, NULL, &old) < 0)
			return SIG_ERR;
		return sigismember(&prev, sig) ? SIG_HOLD : old.sa_handler;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = disp;
	sigemptyset(&sa.sa_mask);
	if (sigaction(sig, &sa, &old) < 0 ||
	    uhmm__os_sigmask(SIG_UNBLOCK, &set, &prev))
		return SIG_ERR;
	return sigismember(&prev, sig) ? SIG_HOLD : old.sa_handler;
}
#endif

#if defined(__SANITIZE_ADDRESS__)
#define GUARD_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GUARD_ASAN 1
#endif
#endif

/*
 * Kept out of line so the compiler cannot move the copy around the pad.
 * memmove: the two ranges may overlap (a device buffer inside the range
 * it reads). Under AddressSanitizer an uninstrumented loop: the
 * interceptor checks a wild address itself (and aborts) where the copy
 * is meant to fault and report -EFAULT.
 */
#ifdef GUARD_ASAN
__attribute__((noinline, no_sanitize("address")))
static void guarded_memcpy(void *dst, const void *src, size_t len)
{
	volatile unsigned char *d = dst;
	const volatile unsigned char *s = src;

	if (d < s || d >= s + len) {
		size_t i = 0;

		if (!(((uintptr_t)d | (uintptr_t)s) & 7) && (d + len <= s || d >= s + len))
			for (; i + 8 <= len; i += 8)
				*(volatile uint64_t *)(d + i) = *(const volatile uint64_t *)(s + i);
		for (; i < len; i++)
			d[i] = s[i];
	} else {
		for (size_t i = len; i-- > 0;)
			d[i] = s[i];
	}
	__asm__ volatile("" ::: "memory");
}
#else
__attribute__((noinline)) static void guarded_memcpy(void *dst, const void *src,
						     size_t len)
{
	memmove(dst, src, len);
	__asm__ volatile("" ::: "memory");
}
#endif

int uhmm_copy_nofault(void *dst, const void *src, size_t len,
		      unsigned long *fault_addr)
{
	sigjmp_buf pad;
	int err;

	if (!len)
		return 0;
	/* Page 0 is never mapped (vm.mmap_min_addr): no need to try. */
	if (!dst || !src) {
		if (fault_addr)
			*fault_addr = 0;
		return -EFAULT;
	}
	/* A range past the end of the address space (access_ok() fails). */
	if ((uintptr_t)src + len < (uintptr_t)src ||
	    (uintptr_t)dst + len < (uintptr_t)dst) {
		if (fault_addr)
			*fault_addr = (uintptr_t)src + len < (uintptr_t)src ?
				      (unsigned long)(uintptr_t)src :
				      (unsigned long)(uintptr_t)dst;
		return -EFAULT;
	}
	err = uhmm__guard_install();
	if (err)
		return err;
	/*
	 * No invalidation from here: the caller may hold its driver lock,
	 * and another driver's callback taking its own lock while holding
	 * that one would invert lock order. The caller revalidates.
	 */
	if (sigsetjmp(pad, 0)) {
		sigset_t ss;

		/*
		 * SA_NODEFER keeps the signal unblocked, but a sanitizer or
		 * another wrapper around the handler may have blocked it:
		 * make sure the next fault is delivered, not fatal.
		 */
		sigemptyset(&ss);
		sigaddset(&ss, SIGSEGV);
		sigaddset(&ss, SIGBUS);
		pthread_sigmask(SIG_UNBLOCK, &ss, NULL);
		uhmm__os_expect_faults(false);
		if (fault_addr)
			*fault_addr = guard_addr;
		return -EFAULT;
	}
	guard_pad = &pad;
	uhmm__os_expect_faults(true);
	guarded_memcpy(dst, src, len);
	uhmm__os_expect_faults(false);
	guard_pad = NULL;
	return 0;
}
