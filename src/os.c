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
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include "os.h"

#define PROCFS_IOCTL_MAGIC 'f'
#define OS_PAGEMAP_SCAN _IOWR(PROCFS_IOCTL_MAGIC, 16, struct os_pm_scan_arg)
#define OS_PROCMAP_QUERY _IOWR(PROCFS_IOCTL_MAGIC, 17, struct os_procmap_query)

/* Fault injection: always built; one relaxed load per call. */
static _Atomic unsigned long inject_nth[OS_CALL_NR];
static _Atomic int inject_err[OS_CALL_NR];

__attribute__((visibility("hidden")))
void uhmm__fault_inject(enum os_call call, unsigned long nth, int err)
{
	atomic_store(&inject_err[call], err);
	atomic_store(&inject_nth[call], nth);
}

static int injected(enum os_call call)
{
	unsigned long n = atomic_load_explicit(&inject_nth[call],
					       memory_order_relaxed);

	while (n) {
		if (atomic_compare_exchange_weak(&inject_nth[call], &n, n - 1))
			return n == 1 ? -atomic_load(&inject_err[call]) : 0;
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

void *os_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off,
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

int os_munmap(void *addr, size_t len)
{
	return ret_err(munmap(addr, len));
}

int os_madvise(void *addr, size_t len, int advice)
{
	INJECT(OS_CALL_MADVISE);
	return ret_err(madvise(addr, len, advice));
}

int os_open(const char *path, int flags)
{
	return ret_err(open(path, flags | O_CLOEXEC));
}

int os_close(int fd)
{
	return ret_err(close(fd));
}

ssize_t os_read(int fd, void *buf, size_t len)
{
	INJECT(OS_CALL_READ);
	ssize_t r = read(fd, buf, len);

	return r < 0 ? -errno : r;
}

ssize_t os_write(int fd, const void *buf, size_t len)
{
	ssize_t r = write(fd, buf, len);

	return r < 0 ? -errno : r;
}

ssize_t os_pread(int fd, void *buf, size_t len, off_t off)
{
	ssize_t r = pread(fd, buf, len, off);

	return r < 0 ? -errno : r;
}

int os_eventfd(unsigned int initval, int flags)
{
	return ret_err(eventfd(initval, flags));
}

int os_poll2(int fd1, int fd2, int timeout_ms, short *rev1, short *rev2)
{
	struct pollfd p[2] = {
		{ .fd = fd1, .events = POLLIN },
		{ .fd = fd2, .events = POLLIN },
	};
	int r = poll(p, 2, timeout_ms);

	if (r < 0)
		return -errno;
	*rev1 = p[0].revents;
	*rev2 = p[1].revents;
	return r;
}

int os_uffd_open_dev(int flags)
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

int os_uffd_open_syscall(int flags)
{
	INJECT(OS_CALL_UFFD_OPEN);
	return ret_err(syscall(SYS_userfaultfd, flags));
}

int os_uffd_api(int fd, uint64_t features, uint64_t *out_features,
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

int os_uffd_register(int fd, uint64_t start, uint64_t len, uint64_t mode,
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

int os_uffd_copy(int fd, uint64_t dst, uint64_t src, uint64_t len,
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
	return r;
}

int os_uffd_zeropage(int fd, uint64_t start, uint64_t len, uint64_t mode,
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
	return r;
}

int os_uffd_move(int fd, uint64_t dst, uint64_t src, uint64_t len,
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
	return r;
}

int os_uffd_wake(int fd, uint64_t start, uint64_t len)
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

int os_uffd_poison(int fd, uint64_t start, uint64_t len)
{
	struct uffdio_poison p = { .range = { .start = start, .len = len } };

	return ret_err(ioctl(fd, UFFDIO_POISON, &p));
}

int os_mincore(void *addr, size_t len, unsigned char *vec)
{
	return ret_err(mincore(addr, len, vec));
}

int os_pagemap_scan(int fd, struct os_pm_scan_arg *arg)
{
	INJECT(OS_CALL_PAGEMAP_SCAN);
	return ret_err(ioctl(fd, OS_PAGEMAP_SCAN, arg));
}

int os_procmap_query(int fd, struct os_procmap_query *q)
{
	INJECT(OS_CALL_PROCMAP_QUERY);
	return ret_err(ioctl(fd, OS_PROCMAP_QUERY, q));
}

int os_sigaction(int sig, const struct sigaction *sa, struct sigaction *old)
{
	return ret_err(sigaction(sig, sa, old));
}

int os_raise(int sig)
{
	return raise(sig) ? -EINVAL : 0;
}

int os_yield(void)
{
	return sched_yield();
}

pid_t os_getpid(void)
{
	return getpid();
}

