/* SPDX-License-Identifier: MIT */
/*
 * The system-call layer (see os.h for the contract). Nothing else in the
 * library calls the kernel directly.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#include "os.h"

/*
 * Memory the kernel writes behind the back of valgrind and MemorySanitizer
 * (PAGEMAP_SCAN's output array, PROCMAP_QUERY's name buffer, pages filled
 * by UFFDIO_COPY/ZEROPAGE/MOVE) is declared defined right after the call.
 * The valgrind client requests cost a few instructions outside valgrind;
 * -DUHMM_NO_VALGRIND drops them.
 */
#if !defined(UHMM_NO_VALGRIND) && defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define OS_VALGRIND 1
#endif
#endif
#if defined(__has_feature)
#if __has_feature(memory_sanitizer)
#include <sanitizer/msan_interface.h>
#define OS_MSAN 1
#endif
#endif

static void mem_defined(const void *p, size_t n)
{
	if (!p || !n)
		return;
#ifdef OS_VALGRIND
	VALGRIND_MAKE_MEM_DEFINED(p, n);
#endif
#ifdef OS_MSAN
	__msan_unpoison(p, n);
#endif
}

void uhmm__os_expect_faults(bool on)
{
#ifdef OS_VALGRIND
	if (on)
		VALGRIND_DISABLE_ERROR_REPORTING;
	else
		VALGRIND_ENABLE_ERROR_REPORTING;
#else
	(void)on;
#endif
}

bool uhmm__os_on_valgrind(void)
{
#ifdef OS_VALGRIND
	return RUNNING_ON_VALGRIND != 0;
#else
	return false;
#endif
}

#define PROCFS_IOCTL_MAGIC 'f'
#define OS_PAGEMAP_SCAN _IOWR(PROCFS_IOCTL_MAGIC, 16, struct os_pm_scan_arg)
#define OS_PROCMAP_QUERY _IOWR(PROCFS_IOCTL_MAGIC, 17, struct os_procmap_query)

/*
 * Fault injection: always built; a counter and one relaxed load per call.
 * inject_nth counts down to the first failure, inject_more is the number
 * of consecutive failures after it.
 */
static _Atomic unsigned long inject_nth[OS_CALL_NR];
static _Atomic unsigned long inject_more[OS_CALL_NR];
static _Atomic int inject_err[OS_CALL_NR];
static _Atomic unsigned long call_count[OS_CALL_NR];

/*
 * What each call can really fail with, given the arguments uhmm passes
 * (valid descriptors, aligned ranges, known requests): the errnos the
 * injection sweep (tests/test_inject.c) walks. Errors that only a bug in
 * uhmm can cause (EBADF, EINVAL for a bad argument) are left out.
 */
static const struct {
	const char *name;
	int err[6];
} os_calls[OS_CALL_NR] = {
	/* mmap: out of address space or map count (EAGAIN needs MAP_LOCKED
	 * or mlockall(MCL_FUTURE) and is left out). */
	[OS_CALL_MMAP] = { "mmap", { ENOMEM } },
	/* MADV_POPULATE_*: no memory, signal pending, the range went away
	 * or a page cannot be faulted (EFAULT); MADV_DONTNEED: unmapped. */
	[OS_CALL_MADVISE] = { "madvise", { ENOMEM, EINTR, EFAULT, EAGAIN } },
	/* open(/dev/userfaultfd) + USERFAULTFD_IOC_NEW, userfaultfd(2):
	 * no access, descriptor limit, no memory. */
	[OS_CALL_UFFD_OPEN] = { "uffd_open", { EPERM, EACCES, EMFILE, ENOMEM } },
	/* UFFDIO_API: feature not offered (EINVAL), EVENT_FORK unprivileged. */
	[OS_CALL_UFFD_API] = { "uffd_api", { EINVAL, EPERM } },
	/* UFFDIO_REGISTER: VMA split needs memory or map count; a VMA
	 * registered on another userfaultfd (EBUSY); a VMA that cannot be
	 * registered (file mappings, VM_PFNMAP: EINVAL). */
	[OS_CALL_UFFD_REGISTER] = { "uffd_register", { ENOMEM, EBUSY, EINVAL } },
	/* UFFDIO_COPY/ZEROPAGE: an event is pending (EAGAIN), the page is
	 * there (EEXIST), the VMA changed (ENOENT), no memory, the source
	 * cannot be read (EFAULT). */
	[OS_CALL_UFFD_COPY] = { "uffd_copy", { EAGAIN, EEXIST, ENOENT, ENOMEM, EFAULT } },
	[OS_CALL_UFFD_ZEROPAGE] = { "uffd_zeropage", { EAGAIN, EEXIST, ENOENT, ENOMEM } },
	/* UFFDIO_MOVE: as COPY, plus EBUSY (page pinned, shared, or under
	 * migration) and EEXIST for a populated destination. */
	[OS_CALL_UFFD_MOVE] = { "uffd_move", { EAGAIN, EEXIST, ENOENT, ENOMEM, EBUSY } },
	/* UFFDIO_WAKE cannot fail with a valid range: not walked. */
	[OS_CALL_UFFD_WAKE] = { "uffd_wake", { 0 } },
	/* PAGEMAP_SCAN: mmap lock wait interrupted (EINTR), no memory
	 * (EFAULT needs a bad output buffer: uhmm's own). */
	[OS_CALL_PAGEMAP_SCAN] = { "pagemap_scan", { EINTR, ENOMEM } },
	/* PROCMAP_QUERY: no VMA at or after the address (ENOENT), lock wait
	 * interrupted (EINTR), no memory. */
	[OS_CALL_PROCMAP_QUERY] = { "procmap_query", { ENOENT, EINTR, ENOMEM } },
	/* read(2) of the uffd (O_NONBLOCK: EAGAIN) and of small procfs
	 * files; a signal. */
	[OS_CALL_READ] = { "read", { EAGAIN, EINTR } },
	/* open of procfs/sysfs files: descriptor limits, no memory. */
	[OS_CALL_OPEN] = { "open", { EMFILE, ENFILE, ENOMEM } },
	/* mincore: a hole in the range (ENOMEM), no memory (EAGAIN). */
	[OS_CALL_MINCORE] = { "mincore", { ENOMEM, EAGAIN } },
	[OS_CALL_EVENTFD] = { "eventfd", { EMFILE, ENFILE, ENOMEM } },
	[OS_CALL_POLL] = { "poll", { EINTR, ENOMEM } },
	/* munmap: splitting a VMA exceeds vm.max_map_count. */
	[OS_CALL_MUNMAP] = { "munmap", { ENOMEM } },
};

__attribute__((visibility("hidden")))
void uhmm__fault_inject_n(enum os_call call, unsigned long nth,
			  unsigned long count, int err)
{
	atomic_store(&inject_nth[call], 0);
	atomic_store(&inject_err[call], err);
	atomic_store(&inject_more[call], nth && count ? count - 1 : 0);
	atomic_store(&inject_nth[call], nth);
}

__attribute__((visibility("hidden")))
void uhmm__fault_inject(enum os_call call, unsigned long nth, int err)
{
	uhmm__fault_inject_n(call, nth, 1, err);
}

__attribute__((visibility("hidden")))
unsigned long uhmm__os_calls(enum os_call call)
{
	return atomic_load(&call_count[call]);
}

__attribute__((visibility("hidden")))
void uhmm__os_calls_reset(void)
{
	for (int i = 0; i < OS_CALL_NR; i++)
		atomic_store(&call_count[i], 0);
}

__attribute__((visibility("hidden")))
const char *uhmm__os_call_name(enum os_call call)
{
	return call < OS_CALL_NR ? os_calls[call].name : "?";
}

__attribute__((visibility("hidden")))
const int *uhmm__os_call_errnos(enum os_call call)
{
	static const int none[1];

	return call < OS_CALL_NR ? os_calls[call].err : none;
}

static void (*_Atomic before_fn[OS_CALL_NR])(void *);
static void *_Atomic before_arg[OS_CALL_NR];

__attribute__((visibility("hidden")))
void uhmm__os_before(enum os_call call, void (*fn)(void *), void *arg)
{
	atomic_store(&before_arg[call], arg);
	atomic_store(&before_fn[call], fn);
}

static int injected(enum os_call call)
{
	void (*fn)(void *);
	unsigned long n;

	if (atomic_load_explicit(&before_fn[call], memory_order_relaxed) &&
	    (fn = atomic_exchange(&before_fn[call], NULL)))
		fn(atomic_load(&before_arg[call]));

	atomic_fetch_add_explicit(&call_count[call], 1, memory_order_relaxed);
	n = atomic_load_explicit(&inject_nth[call], memory_order_relaxed);
	while (n) {
		if (atomic_compare_exchange_weak(&inject_nth[call], &n, n - 1))
			return n == 1 ? -atomic_load(&inject_err[call]) : 0;
	}
	n = atomic_load_explicit(&inject_more[call], memory_order_relaxed);
	while (n) {
		if (atomic_compare_exchange_weak(&inject_more[call], &n, n - 1))
			return -atomic_load(&inject_err[call]);
	}
	return 0;
}
#define INJECT(call)                       \
	do {                               \
		int ij_ = injected(call);  \
		if (ij_)                   \
			return ij_;        \
	} while (0)

static inline int ret_err(long r)
{
	return r < 0 ? -errno : (int)r;
}

void *uhmm__os_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off,
	      int *err)
{
	int ij = injected(OS_CALL_MMAP);
	void *p;

	if (ij) {
		*err = ij;
		return MAP_FAILED;
	}
	p = mmap(addr, len, prot, flags, fd, off);

	*err = p == MAP_FAILED ? -errno : 0;
	return p;
}

int uhmm__os_munmap(void *addr, size_t len)
{
	INJECT(OS_CALL_MUNMAP);
	return ret_err(munmap(addr, len));
}

/*
 * MADV_POPULATE_*, PAGEMAP_SCAN and PROCMAP_QUERY fail with EINTR only
 * when a signal interrupted their wait for the mmap lock (a handler has
 * run by the time the call returns): the call is simply made again.
 */
int uhmm__os_madvise(void *addr, size_t len, int advice)
{
	int r;

	do {
		r = injected(OS_CALL_MADVISE);
		if (!r)
			r = ret_err(madvise(addr, len, advice));
	} while (r == -EINTR);
	return r;
}

int uhmm__os_open(const char *path, int flags)
{
	INJECT(OS_CALL_OPEN);
	return ret_err(open(path, flags | O_CLOEXEC));
}

/*
 * @fd moved to a number at or above 900 (or 16 below the descriptor
 * limit, where that is lower), close-on-exec; @fd itself where no number
 * up there is free. A program juggles its own low numbers, and closes
 * some twice (bash closes a pipe's ends twice after forking): harmless
 * alone, but with uhmm's descriptor opened on another thread in between,
 * the second close took uhmm's, and the number's next owner (the
 * program's next pipe) got read in its place.
 */
int uhmm__os_fd_high(int fd)
{
	struct rlimit rl;
	long base = 900;
	int h;

	if (fd < 0)
		return fd;
	if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur != RLIM_INFINITY &&
	    (long)rl.rlim_cur < base + 16)
		base = (long)rl.rlim_cur - 16;
	if (base <= fd)
		return fd;
	h = fcntl(fd, F_DUPFD_CLOEXEC, (int)base);
	if (h < 0)
		return fd;
	close(fd);
	return h;
}

int uhmm__os_close(int fd)
{
	return ret_err(close(fd));
}

ssize_t uhmm__os_read(int fd, void *buf, size_t len)
{
	INJECT(OS_CALL_READ);
	ssize_t r = read(fd, buf, len);

	return r < 0 ? -errno : r;
}

ssize_t uhmm__os_write(int fd, const void *buf, size_t len)
{
	ssize_t r = write(fd, buf, len);

	return r < 0 ? -errno : r;
}

ssize_t uhmm__os_pread(int fd, void *buf, size_t len, off_t off)
{
	ssize_t r = pread(fd, buf, len, off);

	return r < 0 ? -errno : r;
}

int uhmm__os_eventfd(unsigned int initval, int flags)
{
	INJECT(OS_CALL_EVENTFD);
	return ret_err(eventfd(initval, flags));
}

int uhmm__os_poll2(int fd1, int fd2, int timeout_ms, short *rev1, short *rev2)
{
	struct pollfd p[2] = {
		{ .fd = fd1, .events = POLLIN },
		{ .fd = fd2, .events = POLLIN },
	};
	int r = injected(OS_CALL_POLL);

	if (r == 0)
		r = poll(p, 2, timeout_ms);
	else
		errno = -r;
	if (r < 0)
		return -errno;
	*rev1 = p[0].revents;
	*rev2 = p[1].revents;
	return r;
}

int uhmm__os_uffd_open_dev(int flags)
{
	INJECT(OS_CALL_UFFD_OPEN);
	int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	int fd;

	if (dev < 0)
		return -errno;
	fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
	fd = ret_err(fd);
	close(dev);
	return fd;
}

int uhmm__os_uffd_open_syscall(int flags)
{
	INJECT(OS_CALL_UFFD_OPEN);
	return ret_err(syscall(SYS_userfaultfd, flags));
}

int uhmm__os_uffd_api(int fd, uint64_t features, uint64_t *out_features,
		uint64_t *out_ioctls)
{
	INJECT(OS_CALL_UFFD_API);
	struct uffdio_api api = { .api = UFFD_API, .features = features };

	if (ioctl(fd, UFFDIO_API, &api) < 0)
		return -errno;
	if (out_features)
		*out_features = api.features;
	if (out_ioctls)
		*out_ioctls = api.ioctls;
	return 0;
}

int uhmm__os_uffd_register(int fd, uint64_t start, uint64_t len, uint64_t mode,
		     uint64_t *out_ioctls)
{
	INJECT(OS_CALL_UFFD_REGISTER);
	struct uffdio_register r = {
		.range = { .start = start, .len = len },
		.mode = mode,
	};

	if (ioctl(fd, UFFDIO_REGISTER, &r) < 0)
		return -errno;
	if (out_ioctls)
		*out_ioctls = r.ioctls;
	return 0;
}

int uhmm__os_uffd_copy(int fd, uint64_t dst, uint64_t src, uint64_t len,
		 uint64_t mode, int64_t *done)
{
	struct uffdio_copy c = {
		.dst = dst, .src = src, .len = len, .mode = mode,
	};
	int r;

	*done = 0;
	INJECT(OS_CALL_UFFD_COPY);
	r = ret_err(ioctl(fd, UFFDIO_COPY, &c));
	*done = c.copy > 0 ? c.copy : 0;
	mem_defined((void *)(uintptr_t)dst, (size_t)*done);
	return r;
}

int uhmm__os_uffd_zeropage(int fd, uint64_t start, uint64_t len, uint64_t mode,
		     int64_t *done)
{
	struct uffdio_zeropage z = {
		.range = { .start = start, .len = len }, .mode = mode,
	};
	int r;

	*done = 0;
	INJECT(OS_CALL_UFFD_ZEROPAGE);
	r = ret_err(ioctl(fd, UFFDIO_ZEROPAGE, &z));
	*done = z.zeropage > 0 ? z.zeropage : 0;
	mem_defined((void *)(uintptr_t)start, (size_t)*done);
	return r;
}

int uhmm__os_uffd_move(int fd, uint64_t dst, uint64_t src, uint64_t len,
		 uint64_t mode, int64_t *done)
{
	struct uffdio_move m = {
		.dst = dst, .src = src, .len = len, .mode = mode,
	};
	int r;

	*done = 0;
	INJECT(OS_CALL_UFFD_MOVE);
	r = ret_err(ioctl(fd, UFFDIO_MOVE, &m));
	*done = m.move > 0 ? m.move : 0;
	mem_defined((void *)(uintptr_t)dst, (size_t)*done);
	return r;
}

int uhmm__os_uffd_wake(int fd, uint64_t start, uint64_t len)
{
	INJECT(OS_CALL_UFFD_WAKE);
	struct uffdio_range r = { .start = start, .len = len };

	return ret_err(ioctl(fd, UFFDIO_WAKE, &r));
}

#ifndef UFFDIO_POISON
struct uffdio_poison {
	struct uffdio_range range;
	uint64_t mode;
	int64_t updated;
};
#define UFFDIO_POISON _IOWR(UFFDIO, 0x08, struct uffdio_poison)
#endif

int uhmm__os_uffd_poison(int fd, uint64_t start, uint64_t len)
{
	struct uffdio_poison p = { .range = { .start = start, .len = len } };

	return ret_err(ioctl(fd, UFFDIO_POISON, &p));
}

int uhmm__os_mincore(void *addr, size_t len, unsigned char *vec)
{
	INJECT(OS_CALL_MINCORE);
	return ret_err(mincore(addr, len, vec));
}

int uhmm__os_pagemap_scan(int fd, struct os_pm_scan_arg *arg)
{
	int r;

	do {
		r = injected(OS_CALL_PAGEMAP_SCAN);
		if (!r)
			r = ret_err(ioctl(fd, OS_PAGEMAP_SCAN, arg));
	} while (r == -EINTR);
	if (r > 0)
		mem_defined((void *)(uintptr_t)arg->vec,
			    (size_t)r * sizeof(struct os_page_region));
	mem_defined(arg, sizeof(*arg));
	return r;
}

int uhmm__os_procmap_query(int fd, struct os_procmap_query *q)
{
	int r;

	do {
		r = injected(OS_CALL_PROCMAP_QUERY);
		if (!r)
			r = ret_err(ioctl(fd, OS_PROCMAP_QUERY, q));
	} while (r == -EINTR);
	if (r == 0) {
		mem_defined(q, sizeof(*q));
		mem_defined((void *)(uintptr_t)q->vma_name_addr, q->vma_name_size);
		mem_defined((void *)(uintptr_t)q->build_id_addr, q->build_id_size);
	}
	return r;
}

#ifndef UHMM_SANITIZED
/* The C library's sigaction() under its other name: guard.c defines
 * sigaction() itself (signal chaining), and a call by that name from
 * here would come back there. */
extern int __sigaction(int sig, const struct sigaction *sa, struct sigaction *old);
#define libc_sigaction __sigaction
#else
#define libc_sigaction sigaction
#endif

int uhmm__os_sigaction(int sig, const struct sigaction *sa, struct sigaction *old)
{
	return ret_err(libc_sigaction(sig, sa, old));
}

int uhmm__os_sigmask(int how, const sigset_t *set, sigset_t *old)
{
	return -pthread_sigmask(how, set, old);
}

int uhmm__os_raise(int sig)
{
	return raise(sig) ? -EINVAL : 0;
}

int uhmm__os_yield(void)
{
	return sched_yield();
}

int uhmm__os_altstack(unsigned long *lo, unsigned long *hi)
{
	stack_t ss;

	if (sigaltstack(NULL, &ss))
		return -errno;
	if ((ss.ss_flags & SS_DISABLE) || !ss.ss_size)
		return -ENOENT;
	*lo = (uintptr_t)ss.ss_sp;
	*hi = (uintptr_t)ss.ss_sp + ss.ss_size;
	return 0;
}

pid_t uhmm__os_getpid(void)
{
	return getpid();
}

int uhmm__os_robust_list(void **head, size_t *len)
{
	return ret_err((int)syscall(SYS_get_robust_list, 0, head, len));
}

int uhmm__os_tid_address(void **addr)
{
	return ret_err(prctl(PR_GET_TID_ADDRESS, addr, 0, 0, 0));
}

