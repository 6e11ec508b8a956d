/* SPDX-License-Identifier: MIT */
/*
 * The per-process runtime (the counterpart of the kernel's mm_struct
 * lifetime): lazy thread-safe start, kernel feature probes on a
 * throw-away userfaultfd, the VMA query, and the atfork trampolines. What
 * a fork does, and each subsystem's state, are the hooks' (dispatch.c).
 * Layer 1.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <poll.h>

#include "rt.h"

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct uhmm_rt *_Atomic g_rt;
/* A fork happened since the library was loaded: pages may be shared
 * copy-on-write with another process (range.c: cow_filter). */
static _Atomic bool g_forked;

/* Features uhmm enables when the kernel offers them. */
#define WANT_FEATURES (UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMOVE | \
		       UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM | \
		       UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MISSING_HUGETLBFS | \
		       UFFD_FEATURE_MOVE | UFFD_FEATURE_THREAD_ID)
#define NEED_FEATURES (UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMOVE | \
		       UFFD_FEATURE_EVENT_REMAP)

const char *uhmm_version(void)
{
#define STR2(x) #x
#define STR(x) STR2(x)
	return STR(UHMM_VERSION_MAJOR) "." STR(UHMM_VERSION_MINOR) "."
	       STR(UHMM_VERSION_PATCH);
}

static int uffd_open(int path, int flags)
{
	switch (path) {
	case UHMM_UFFD_DEV:
		return uhmm__os_uffd_open_dev(flags);
	case UHMM_UFFD_SYSCALL:
		return uhmm__os_uffd_open_syscall(flags);
	default:
		return uhmm__os_uffd_open_syscall(flags | UFFD_USER_MODE_ONLY);
	}
}

/*
 * Probe on a throw-away fd (UFFDIO_API may be called once per fd), then
 * open the runtime's own with the features this kernel has.
 */
static void probe_uffd(struct uhmm_rt *rt)
{
	static const int paths[] = { UHMM_UFFD_DEV, UHMM_UFFD_SYSCALL,
				     UHMM_UFFD_SYSCALL_USER_ONLY };
	int flags = O_CLOEXEC | O_NONBLOCK;

	rt->uffd = -1;
	/* valgrind runs one thread at a time and keeps running it through
	 * munmap and page faults that would wait for uhmm's reader: a
	 * deadlock. Work as without userfaultfd (docs/semantics.md). */
	if (uhmm__os_on_valgrind()) {
		rt->uffd_err = -EDEADLK;
		return;
	}
	for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
		uint64_t avail, ioctls;
		int fd = uffd_open(paths[i], flags);
		int r;

		if (fd < 0) {
			rt->uffd_err = fd;
			continue;
		}
		r = uhmm__os_uffd_api(fd, 0, &avail, &ioctls);
		uhmm__os_close(fd);
		if (r < 0) {
			rt->uffd_err = r;
			continue;
		}
		if ((avail & NEED_FEATURES) != NEED_FEATURES) {
			rt->uffd_err = -EOPNOTSUPP;
			continue;
		}
		fd = uffd_open(paths[i], flags);
		if (fd < 0) {
			rt->uffd_err = fd;
			continue;
		}
		r = uhmm__os_uffd_api(fd, avail & WANT_FEATURES, NULL, &ioctls);
		if (r < 0) {
			uhmm__os_close(fd);
			rt->uffd_err = r;
			continue;
		}
		rt->uffd = uhmm__os_fd_high(fd);
		rt->uffd_path = paths[i];
		rt->uffd_avail = avail;
		rt->uffd_features = avail & WANT_FEATURES;
		rt->uffd_ioctls = ioctls;
		rt->uffd_err = 0;
		rt->flags |= UHMM_FEAT_EVENTS;
		if (avail & UFFD_FEATURE_WP_HUGETLBFS_SHMEM)
			rt->flags |= UHMM_FEAT_WP_SHMEM;
		if (avail & UFFD_FEATURE_MOVE)
			rt->flags |= UHMM_FEAT_MOVE;
		return;
	}
}

static int probe_procfs(struct uhmm_rt *rt)
{
	struct os_procmap_query q;
	struct os_page_region reg[2];
	struct os_pm_scan_arg a;
	int r;

	/* Held for the runtime's life: out of the program's way (os.c). */
	rt->maps_fd = uhmm__os_fd_high(uhmm__os_open("/proc/self/maps", O_RDONLY));
	if (rt->maps_fd < 0)
		return rt->maps_fd;
	rt->pagemap_fd = uhmm__os_fd_high(uhmm__os_open("/proc/self/pagemap", O_RDONLY));
	if (rt->pagemap_fd < 0)
		return rt->pagemap_fd;

	memset(&q, 0, sizeof(q));
	q.size = sizeof(q);
	q.query_addr = (uintptr_t)rt & ~(rt->page_size - 1);
	r = uhmm__os_procmap_query(rt->maps_fd, &q);
	if (r == -ENOTTY || r == -EINVAL || r == -EOPNOTSUPP)
		return -ENOSYS;
	if (r < 0)
		return r;
	rt->flags |= UHMM_FEAT_PROCMAP_QUERY;

	rt->scan_mask = OS_PAGE_IS_PRESENT | OS_PAGE_IS_FILE |
			OS_PAGE_IS_SWAPPED | OS_PAGE_IS_PFNZERO |
			OS_PAGE_IS_HUGE | OS_PAGE_IS_GUARD;
	for (int tries = 0; tries < 2; tries++) {
		memset(&a, 0, sizeof(a));
		a.size = sizeof(a);
		a.start = q.query_addr;
		a.end = q.query_addr + rt->page_size;
		a.vec = (uintptr_t)reg;
		a.vec_len = 2;
		a.return_mask = rt->scan_mask;
		r = uhmm__os_pagemap_scan(rt->pagemap_fd, &a);
		if (r >= 0)
			break;
		/* Kernels before 6.14 do not know PAGE_IS_GUARD. */
		rt->scan_mask &= ~OS_PAGE_IS_GUARD;
	}
	if (r == -ENOTTY || r == -EINVAL)
		return -ENOSYS;
	if (r < 0)
		return r;
	rt->flags |= UHMM_FEAT_PAGEMAP_SCAN | UHMM_FEAT_POPULATE;
	return 0;
}

static void probe_pages(struct uhmm_rt *rt)
{
	char buf[64];
	int fd = uhmm__os_open("/sys/kernel/mm/transparent_hugepage/enabled",
			 O_RDONLY);
	ssize_t n;

	if (fd >= 0) {
		n = uhmm__os_read(fd, buf, sizeof(buf) - 1);
		uhmm__os_close(fd);
		if (n > 0) {
			buf[n] = 0;
			if (!strstr(buf, "[never]"))
				rt->flags |= UHMM_FEAT_THP;
		}
	}
	fd = uhmm__os_open("/proc/sys/vm/nr_hugepages", O_RDONLY);
	if (fd >= 0) {
		n = uhmm__os_read(fd, buf, sizeof(buf) - 1);
		uhmm__os_close(fd);
		if (n > 0) {
			buf[n] = 0;
			if (strtoul(buf, NULL, 10) > 0)
				rt->flags |= UHMM_FEAT_HUGETLB;
		}
	}
}

static void rt_close_fds(struct uhmm_rt *rt)
{
	if (rt->uffd >= 0)
		uhmm__os_close(rt->uffd);
	if (rt->evfd >= 0)
		uhmm__os_close(rt->evfd);
	if (rt->maps_fd >= 0)
		uhmm__os_close(rt->maps_fd);
	if (rt->pagemap_fd >= 0)
		uhmm__os_close(rt->pagemap_fd);
}

void uhmm__rt_free(struct uhmm_rt *rt)
{
	/* The userfaultfd first: unmapping a region registered on it would
	 * wait for a reader to read the event, and the readers are gone. */
	rt_close_fds(rt);
	rt->hooks->destroy(rt);
	uhmm_free(rt);
}

static int rt_create(struct uhmm_rt **out)
{
	struct uhmm_rt *rt = uhmm_calloc(1, sizeof(*rt));
	long ps = sysconf(_SC_PAGESIZE);
	int r;

	if (!rt)
		return -ENOMEM;
	rt->maps_fd = rt->pagemap_fd = rt->uffd = rt->evfd = -1;
	rt->page_size = (unsigned long)ps;
	rt->page_shift = (unsigned int)__builtin_ctzl(rt->page_size);
	/* A PMD maps one page table of 8-byte entries. */
	rt->pmd_order = rt->page_shift - 3;
	rt->pid = uhmm__os_getpid();
	/* The libraries' data segments, looked up once (the loader's lock),
	 * here rather than in a migration's first collect. */
	uhmm__alloc_libdata(0, 0);
	rt->hooks = &uhmm__dispatch_hooks;
	r = rt->hooks->init(rt);
	if (r < 0) {
		uhmm_free(rt);
		return r;
	}

	r = probe_procfs(rt);
	if (r < 0)
		goto err;
	probe_pages(rt);
	probe_uffd(rt);
	rt->evfd = uhmm__os_fd_high(uhmm__os_eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
	if (rt->evfd < 0) {
		r = rt->evfd;
		goto err;
	}
	r = uhmm__guard_install();
	if (r < 0)
		goto err;
	rt->forked = atomic_load(&g_forked);
	*out = rt;
	return 0;
err:
	uhmm__rt_free(rt);
	return r;
}

/*
 * The runtime a monitor thread serves. uhmm_shutdown() unpublishes the
 * runtime before it stops the threads: work they finish meanwhile (a
 * fault-back's finalize, a driver's migrate_to_ram calling back into
 * uhmm) must go to their runtime, not find none or start a new one.
 */
static _Thread_local struct uhmm_rt *tl_monitor_rt;
/* A userfaultfd call on this monitor thread met an unread event. */
static _Thread_local bool tl_eagain;

void uhmm__rt_enter_monitor(struct uhmm_rt *rt)
{
	tl_monitor_rt = rt;
}

bool uhmm__on_monitor(void)
{
	return tl_monitor_rt != NULL;
}

void uhmm__note_eagain(void)
{
	tl_eagain = true;
}

bool uhmm__take_eagain(void)
{
	bool r = tl_eagain;

	tl_eagain = false;
	return r;
}

struct uhmm_rt *uhmm__rt_peek(void)
{
	if (tl_monitor_rt)
		return tl_monitor_rt;
	return atomic_load_explicit(&g_rt, memory_order_acquire);
}

struct uhmm_rt *uhmm__rt_get(int *err)
{
	struct uhmm_rt *rt = uhmm__rt_peek();
	int r = 0;

	if (rt)
		return rt;
	pthread_mutex_lock(&g_lock);
	rt = atomic_load_explicit(&g_rt, memory_order_relaxed);
	if (!rt) {
		r = rt_create(&rt);
		if (r == 0)
			atomic_store_explicit(&g_rt, rt, memory_order_release);
	}
	pthread_mutex_unlock(&g_lock);
	if (r < 0) {
		if (err)
			*err = r;
		return NULL;
	}
	return rt;
}

/* uhmm_shutdown(): the runtime is no longer found; the caller frees it. */
struct uhmm_rt *uhmm__rt_unpublish(void)
{
	struct uhmm_rt *rt;

	pthread_mutex_lock(&g_lock);
	rt = atomic_load_explicit(&g_rt, memory_order_relaxed);
	atomic_store_explicit(&g_rt, NULL, memory_order_release);
	pthread_mutex_unlock(&g_lock);
	return rt;
}

int uhmm__vma_query(struct uhmm_rt *rt, unsigned long addr,
		    struct os_procmap_query *q)
{
	memset(q, 0, sizeof(*q));
	q->size = sizeof(*q);
	q->query_flags = OS_PROCMAP_QUERY_COVERING_OR_NEXT_VMA;
	q->query_addr = addr;
	return uhmm__os_procmap_query(rt->maps_fd, q);
}

int uhmm_init(void)
{
	int err = 0;

	return uhmm__rt_get(&err) ? 0 : err;
}

int uhmm_features(struct uhmm_features *f)
{
	struct uhmm_rt *rt;
	int err = 0;

	if (!f || f->size < sizeof(*f))
		return -EINVAL;
	rt = uhmm__rt_get(&err);
	if (!rt)
		return err;
	memset(f, 0, sizeof(*f));
	f->size = sizeof(*f);
	f->flags = rt->flags;
	f->uffd_path = rt->uffd >= 0 ? (uint32_t)rt->uffd_path : UHMM_UFFD_NONE;
	f->uffd_error = rt->uffd_err;
	f->uffd_features = rt->uffd_avail;
	f->uffd_ioctls = rt->uffd_ioctls;
	f->page_size = (uint32_t)rt->page_size;
	return 0;
}

/* ---- fork ---- */

/*
 * Before the kernel copies the page tables, write access must be gone from
 * every mirror (PROTECTION_PAGE), and stay gone until fork returns: the
 * invalidations stay open across the fork, as the kernel's
 * invalidate_range_start/end bracket copy_page_range.
 */
static void atfork_prepare(void)
{
	struct uhmm_rt *rt = uhmm__rt_peek();

	atomic_store(&g_forked, true);
	if (rt)
		rt->hooks->fork_prepare(rt);
	pthread_mutex_lock(&g_lock);
}

static void atfork_parent(void)
{
	struct uhmm_rt *rt = uhmm__rt_peek();

	pthread_mutex_unlock(&g_lock);
	if (rt)
		rt->hooks->fork_parent(rt);
}

/*
 * The child has a new mm with no notifiers: the parent's runtime (its
 * memory stays, unused) is forgotten and a new one starts on first use.
 * Locks of the old runtime may be held by threads that do not exist here,
 * so nothing of it is touched but its descriptors, which refer to the
 * parent (its uffd, its /proc files).
 */
static void atfork_child(void)
{
	struct uhmm_rt *rt = uhmm__rt_peek();

	/* This thread took it in atfork_prepare. */
	pthread_mutex_unlock(&g_lock);
	atomic_store(&g_forked, true);
	if (rt) {
		rt_close_fds(rt);
		rt->uffd = rt->evfd = rt->maps_fd = rt->pagemap_fd = -1;
	}
	atomic_store_explicit(&g_rt, NULL, memory_order_release);
}

/* ---- exec ---- */

/*
 * execve and its kin stand in front of the C library's (exported from
 * libuhmm.so unversioned, as sigaction: src/uhmm.map): the device part of
 * an exec (fork.c's uhmm__exec_prepare, through the hooks) runs first,
 * and is undone when the call fails. The C library's own function does
 * the work: its execvp searches PATH and falls back to /bin/sh as it
 * always does. posix_spawn, system and popen exec from a child that
 * shares nothing uhmm must bring home (its robust list is empty) and are
 * left alone.
 */
#define UHMM_EXPORT __attribute__((visibility("default")))

static void *libc_fn(const char *name)
{
	void *f = dlsym(RTLD_NEXT, name);

	if (!f)
		errno = ENOSYS;
	return f;
}

static struct uhmm_rt *exec_begin(const char *path, char *const argv[],
				  char *const envp[])
{
	struct uhmm_rt *rt = uhmm__rt_peek();

	/*
	 * A vfork child (or posix_spawn's, calling execve by name) shares
	 * its parent's memory and runtime: its robust list is empty and its
	 * arguments are the parent's memory, served by the parent's
	 * threads. Left alone: a gate closed here would stay closed in the
	 * parent (tests/test_transparency.c,
	 * vfork_exec_leaves_the_parent_migrating).
	 */
	if (rt && rt->pid != uhmm__os_getpid())
		rt = NULL;
	if (rt)
		rt->hooks->exec_prepare(rt, path, argv, envp);
	return rt;
}

static int exec_end(struct uhmm_rt *rt, int r)
{
	int e = errno;

	if (rt)
		rt->hooks->exec_failed(rt);
	errno = e;
	return r;
}

#define EXEC_CALL(name, type, path, argv, envp, ...)			\
	do {								\
		static type fn;						\
		struct uhmm_rt *rt;					\
									\
		if (!fn && !(fn = (type)libc_fn(name)))			\
			return -1;					\
		rt = exec_begin(path, argv, envp);			\
		return exec_end(rt, fn(__VA_ARGS__));			\
	} while (0)

typedef int (*execve_fn)(const char *, char *const[], char *const[]);
typedef int (*execv_fn)(const char *, char *const[]);
typedef int (*fexecve_fn)(int, char *const[], char *const[]);
typedef int (*execveat_fn)(int, const char *, char *const[], char *const[], int);

UHMM_EXPORT int execve(const char *path, char *const argv[], char *const envp[])
{
	EXEC_CALL("execve", execve_fn, path, argv, envp, path, argv, envp);
}

UHMM_EXPORT int execv(const char *path, char *const argv[])
{
	EXEC_CALL("execv", execv_fn, path, argv, environ, path, argv);
}

UHMM_EXPORT int execvp(const char *file, char *const argv[])
{
	EXEC_CALL("execvp", execv_fn, file, argv, environ, file, argv);
}

UHMM_EXPORT int execvpe(const char *file, char *const argv[], char *const envp[])
{
	EXEC_CALL("execvpe", execve_fn, file, argv, envp, file, argv, envp);
}

UHMM_EXPORT int fexecve(int fd, char *const argv[], char *const envp[])
{
	EXEC_CALL("fexecve", fexecve_fn, NULL, argv, envp, fd, argv, envp);
}

UHMM_EXPORT int execveat(int dirfd, const char *path, char *const argv[],
			 char *const envp[], int flags)
{
	EXEC_CALL("execveat", execveat_fn, path, argv, envp, dirfd, path, argv,
		  envp, flags);
}

/* The list forms: their arguments in an array, then the array forms. */
#define EXEC_LIST(arg, ap, argv)					\
	size_t n_ = 1;							\
	va_start(ap, arg);						\
	while (va_arg(ap, const char *))				\
		n_++;							\
	va_end(ap);							\
	char *argv[n_ + 1];						\
	argv[0] = (char *)arg;						\
	va_start(ap, arg);						\
	for (size_t i_ = 1; i_ <= n_; i_++)				\
		argv[i_] = va_arg(ap, char *)

UHMM_EXPORT int execl(const char *path, const char *arg, ...)
{
	va_list ap;
	EXEC_LIST(arg, ap, argv);
	va_end(ap);
	return execv(path, argv);
}

UHMM_EXPORT int execlp(const char *file, const char *arg, ...)
{
	va_list ap;
	EXEC_LIST(arg, ap, argv);
	va_end(ap);
	return execvp(file, argv);
}

UHMM_EXPORT int execle(const char *path, const char *arg, ...)
{
	va_list ap;
	EXEC_LIST(arg, ap, argv);
	char *const *envp = va_arg(ap, char *const *);

	va_end(ap);
	return execve(path, argv, envp);
}

/*
 * Registered at load, not at runtime start, so that a fork before the
 * first uhmm call is seen too (its pages are shared copy-on-write).
 */
__attribute__((constructor)) static void uhmm_load(void)
{
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}
