/* SPDX-License-Identifier: MIT */
/*
 * The per-process runtime: lazy thread-safe start, kernel feature probes on
 * a throw-away userfaultfd, the monitor threads, fork and shutdown.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <poll.h>

#include "internal.h"

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
		rt->uffd = fd;
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

	rt->maps_fd = uhmm__os_open("/proc/self/maps", O_RDONLY);
	if (rt->maps_fd < 0)
		return rt->maps_fd;
	rt->pagemap_fd = uhmm__os_open("/proc/self/pagemap", O_RDONLY);
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

static void cond_init_mono(pthread_cond_t *c)
{
	pthread_condattr_t a;

	pthread_condattr_init(&a);
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	pthread_cond_init(c, &a);
	pthread_condattr_destroy(&a);
}

static void rt_free(struct uhmm_rt *rt)
{
	rt_close_fds(rt);
	pthread_mutex_destroy(&rt->lock);
	pthread_mutex_destroy(&rt->tlock);
	pthread_mutex_destroy(&rt->qlock);
	pthread_cond_destroy(&rt->wq);
	pthread_cond_destroy(&rt->qcond);
	pthread_cond_destroy(&rt->qread);
	uhmm_free(rt->subs);
	uhmm__ivset_free(&rt->grants);
	uhmm__ivset_free(&rt->regs);
	uhmm__ivset_free(&rt->noreg);
	uhmm__ivset_free(&rt->missing);
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
	rt->invalidate_seq = 2;
	pthread_mutex_init(&rt->lock, NULL);
	pthread_mutex_init(&rt->tlock, NULL);
	pthread_mutex_init(&rt->qlock, NULL);
	pthread_mutex_init(&rt->mlock, NULL);
	pthread_mutex_init(&rt->rlock, NULL);
	pthread_mutex_init(&rt->stage_lock, NULL);
	pthread_mutex_init(&rt->gate_lock, NULL);
	pthread_cond_init(&rt->gate_cond, NULL);
	for (int i = 0; i < UHMM_STRIPES; i++) {
		pthread_mutex_init(&rt->stripes[i].lock, NULL);
		pthread_cond_init(&rt->stripes[i].cond, NULL);
	}
	rt->ra_pages = 1;
	cond_init_mono(&rt->wq);
	cond_init_mono(&rt->qcond);
	cond_init_mono(&rt->qread);

	r = probe_procfs(rt);
	if (r < 0)
		goto err;
	probe_pages(rt);
	probe_uffd(rt);
	rt->evfd = uhmm__os_eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
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
	rt_free(rt);
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

/* ---- monitor threads ---- */

/* Tell uhmm__rt_start_threads() that this thread is up and running. */
static void thread_running(struct uhmm_rt *rt)
{
	tl_monitor_rt = rt;
	pthread_mutex_lock(&rt->qlock);
	rt->running++;
	pthread_cond_broadcast(&rt->qread);
	pthread_mutex_unlock(&rt->qlock);
}

static void block_signals(void)
{
	sigset_t all;

	sigfillset(&all);
	/* Faults must still be delivered (and kill the process). */
	sigdelset(&all, SIGSEGV);
	sigdelset(&all, SIGBUS);
	sigdelset(&all, SIGILL);
	sigdelset(&all, SIGFPE);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
}

/*
 * The reader: reads the uffd and queues events. It never frees, unmaps or
 * discards memory, so it can never block on an event of its own; every
 * read releases the threads that wait for their event to be read.
 */
static void *reader_main(void *arg)
{
	struct uhmm_rt *rt = arg;
	/*
	 * One message per read: a fault read with others waits behind them,
	 * and by the time it is served the page may have been resolved and
	 * migrated again (a spurious fault-back). Alone, it is served at
	 * once; a thread woken by an install drops its unread message.
	 */
	struct uffd_msg msg[1];
	unsigned long rseq;

	block_signals();
	thread_running(rt);
	for (;;) {
		short ru = 0, re = 0;
		ssize_t n;
		int r = uhmm__os_poll2(rt->uffd, rt->evfd, -1, &ru, &re);

		/* Transient: a reader that stopped would leave every later
		 * fault on a device page waiting forever. */
		if (r == -EINTR || r == -ENOMEM || r == -EAGAIN) {
			if (r != -EINTR)
				uhmm__os_yield();
			continue;
		}
		if (r < 0 || re)
			break;
		if (!(ru & POLLIN)) {
			if (ru & (POLLERR | POLLHUP | POLLNVAL))
				break;
			continue;
		}
		/*
		 * A thread waiting for its event is released inside read(),
		 * before the event is queued: say a read is under way, so
		 * that uhmm__sync_events() in that thread waits for it.
		 */
		/*
		 * Readers take turns from read() to queueing, so events are
		 * applied in the order the kernel gave them (mremap sends
		 * REMAP, then UNMAP of the old range: swapped, the pages
		 * would be dropped, then moved).
		 */
		pthread_mutex_lock(&rt->rlock);
		pthread_mutex_lock(&rt->qlock);
		rt->in_read++;
		pthread_mutex_unlock(&rt->qlock);
		rseq = atomic_fetch_add(&rt->read_seq, 1) + 1;
		n = uhmm__os_read(rt->uffd, msg, sizeof(msg));
		/* Device pages follow the mapping before any later fault. */
		for (ssize_t i = 0; n > 0 && i < n / (ssize_t)sizeof(msg[0]); i++) {
			if (msg[i].event == UFFD_EVENT_PAGEFAULT)
				continue;
			uhmm__track_event_early(rt, &msg[i]);
			uhmm__device_event(rt, &msg[i]);
		}
		pthread_mutex_lock(&rt->qlock);
		rt->in_read--;
		pthread_cond_broadcast(&rt->qread);
		if (n < 0) {
			pthread_cond_broadcast(&rt->qread);
			pthread_mutex_unlock(&rt->qlock);
			pthread_mutex_unlock(&rt->rlock);
			if (n == -EAGAIN || n == -EINTR)
				continue;
			break;
		}
		for (size_t i = 0; i < (size_t)n / sizeof(msg[0]); i++) {
			if (msg[i].event == UFFD_EVENT_PAGEFAULT)
				continue;	/* handled below, unlocked */
			if (rt->qtail - rt->qhead == EVQ_LEN) {
				rt->qoverflow = true;
				continue;
			}
			rt->evq[rt->qtail++ % EVQ_LEN] = msg[i];
		}
		rt->nread++;
		pthread_cond_broadcast(&rt->qcond);
		pthread_cond_broadcast(&rt->qread);
		pthread_mutex_unlock(&rt->qlock);
		pthread_mutex_unlock(&rt->rlock);
		/*
		 * CPU faults on device pages, served here: one wake-up, no
		 * hand-off. While this reader serves one (possibly waiting
		 * for an event to be read), the other reader reads.
		 */
		for (size_t i = 0; i < (size_t)n / sizeof(msg[0]); i++) {
			if (msg[i].event != UFFD_EVENT_PAGEFAULT)
				continue;
			if (msg[i].arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
				uhmm__os_uffd_wake(rt->uffd, msg[i].arg.pagefault.address &
					     ~(rt->page_size - 1), rt->page_size);
				continue;
			}
			uhmm__stat_fault(msg[i].arg.pagefault.address, !!(msg[i].arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE));
			uhmm__handle_fault(rt, msg[i].arg.pagefault.address,
					   msg[i].arg.pagefault.flags &
					   UFFD_PAGEFAULT_FLAG_WRITE, rseq);
		}
	}
	pthread_mutex_lock(&rt->qlock);
	rt->qstop = true;
	pthread_cond_broadcast(&rt->qcond);
	pthread_cond_broadcast(&rt->qread);
	pthread_mutex_unlock(&rt->qlock);
	return NULL;
}

static _Thread_local bool on_worker;

/* The worker: turns events into invalidations, callbacks included. */
static void *worker_main(void *arg)
{
	struct uhmm_rt *rt = arg;

	on_worker = true;
	block_signals();
	thread_running(rt);
	pthread_mutex_lock(&rt->qlock);
	for (;;) {
		struct uffd_msg m;
		bool overflow;

		while (!rt->qstop && rt->qhead == rt->qtail && !rt->qoverflow)
			pthread_cond_wait(&rt->qcond, &rt->qlock);
		if (rt->qhead == rt->qtail && !rt->qoverflow)
			break;	/* stopped and drained */
		overflow = rt->qoverflow;
		rt->qoverflow = false;
		if (overflow) {
			unsigned int tail = rt->qtail;

			pthread_mutex_unlock(&rt->qlock);
			uhmm__track_overflow(rt);
			pthread_mutex_lock(&rt->qlock);
			rt->qhead = tail;
			pthread_cond_broadcast(&rt->qread);
			continue;
		}
		m = rt->evq[rt->qhead % EVQ_LEN];
		pthread_mutex_unlock(&rt->qlock);
		uhmm__track_event(rt, &m);
		pthread_mutex_lock(&rt->qlock);
		/* Consumed only once its invalidation has run. */
		rt->qhead++;
		pthread_cond_broadcast(&rt->qread);
	}
	pthread_mutex_unlock(&rt->qlock);
	return NULL;
}

/*
 * The monitor threads run on stacks from uhmm_alloc()'s arena: a default
 * stack is an mmap of its own, which could land in a hole the application
 * left and means to fill with mmap(MAP_FIXED_NOREPLACE) (dmirror
 * contract), and a stack in the application's heap could be migrated to
 * a device under the thread that serves the faults.
 */
#define MONITOR_STACK (112 * 1024)

/* ThreadSanitizer needs ~900 KiB of stack and refuses smaller ones. */
#if defined(__SANITIZE_THREAD__)
#define MONITOR_OWN_STACK 0
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MONITOR_OWN_STACK 0
#endif
#endif
#ifndef MONITOR_OWN_STACK
#define MONITOR_OWN_STACK 1
#endif

static int thread_start(struct uhmm_rt *rt, int i, void *(*fn)(void *))
{
	pthread_attr_t attr;
	pthread_t *t = i == 0 ? &rt->reader : i == 1 ? &rt->worker : &rt->reader2;
	void *stack = NULL;
	int r;

	if (!MONITOR_OWN_STACK) {
		r = pthread_create(t, NULL, fn, rt);
		return -r;
	}
	/* Page aligned (uhmm_alloc of more than a page), never migrated. */
	stack = uhmm_alloc(MONITOR_STACK);
	if (!stack)
		return -ENOMEM;
	pthread_attr_init(&attr);
	r = pthread_attr_setstack(&attr, stack, MONITOR_STACK);
	if (r == 0)
		r = pthread_create(t, &attr, fn, rt);
	pthread_attr_destroy(&attr);
	if (r) {
		/* A runtime that refuses a caller's stack: take its own. */
		uhmm_free(stack);
		stack = NULL;
		r = pthread_create(t, NULL, fn, rt);
		if (r)
			return -r;
	}
	rt->stacks[i] = stack;
	return 0;
}

/* Called with rt->tlock held, before the first registration. */
static void threads_stop(struct uhmm_rt *rt, int started)
{
	uint64_t one = 1;
	pthread_t *t[3] = { &rt->reader, &rt->worker, &rt->reader2 };

	uhmm__os_write(rt->evfd, &one, sizeof(one));
	pthread_mutex_lock(&rt->qlock);
	rt->qstop = true;
	pthread_cond_broadcast(&rt->qcond);
	pthread_mutex_unlock(&rt->qlock);
	for (int i = 0; i < started; i++) {
		pthread_join(*t[i], NULL);
		uhmm_free(rt->stacks[i]);
		rt->stacks[i] = NULL;
	}
	uhmm__os_read(rt->evfd, &one, sizeof(one));	/* re-arm */
	rt->running = 0;
}

/*
 * Called with rt->tlock held, before the first registration: two readers
 * (each serves the CPU faults it reads; while one is busy, the other
 * reads) and the worker.
 */
int uhmm__rt_start_threads(struct uhmm_rt *rt)
{
	void *(*fn[3])(void *) = { reader_main, worker_main, reader_main };
	int r;

	if (rt->threads)
		return 0;
	if (rt->uffd < 0)
		return -ENOSYS;
	rt->qstop = false;
	for (int i = 0; i < 3; i++) {
		r = thread_start(rt, i, fn[i]);
		if (r) {
			threads_stop(rt, i);
			return r;
		}
	}
	/*
	 * Return only once the threads run: a fork() while a thread is
	 * still being set up (by libc or a sanitizer runtime, holding their
	 * locks) can leave those locks held forever in the child.
	 */
	pthread_mutex_lock(&rt->qlock);
	while (rt->running < 3)
		pthread_cond_wait(&rt->qread, &rt->qlock);
	pthread_mutex_unlock(&rt->qlock);
	rt->threads = true;
	return 0;
}

/*
 * Before serving a fault: wait until no reader is between read() and the
 * end of its event's device-page update, so that a fault that follows a
 * munmap or MADV_DONTNEED sees its effect.
 */
void uhmm__wait_readers(struct uhmm_rt *rt)
{
	pthread_mutex_lock(&rt->qlock);
	while (rt->in_read && !rt->qstop)
		pthread_cond_wait(&rt->qread, &rt->qlock);
	pthread_mutex_unlock(&rt->qlock);
}

/* Wait until the reader has read at least one more batch (EAGAIN). */
void uhmm__wait_events_read(struct uhmm_rt *rt)
{
	struct timespec ts;
	uint64_t seen;

	pthread_mutex_lock(&rt->qlock);
	if (!rt->threads || rt->qstop) {
		pthread_mutex_unlock(&rt->qlock);
		uhmm__os_yield();
		return;
	}
	seen = rt->nread;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_nsec += 10 * 1000 * 1000;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	while (rt->nread == seen && !rt->qstop) {
		if (pthread_cond_timedwait(&rt->qread, &rt->qlock, &ts))
			break;
	}
	pthread_mutex_unlock(&rt->qlock);
}

/*
 * Wait until every event read so far has been turned into invalidations.
 * A munmap that returned was read (the kernel holds the caller until
 * then), so after this its callbacks have run. Not on the worker itself.
 */
void uhmm__sync_events(struct uhmm_rt *rt)
{
	unsigned int target;

	if (on_worker || !rt->threads)
		return;
	pthread_mutex_lock(&rt->qlock);
	while (rt->in_read && !rt->qstop)
		pthread_cond_wait(&rt->qread, &rt->qlock);
	target = rt->qtail;
	while ((int)(target - rt->qhead) > 0 && !rt->qstop)
		pthread_cond_wait(&rt->qread, &rt->qlock);
	pthread_mutex_unlock(&rt->qlock);
}

static void rt_stop_threads(struct uhmm_rt *rt)
{
	if (!rt->threads)
		return;
	threads_stop(rt, 3);
	rt->threads = false;
}

int uhmm_shutdown(void)
{
	struct uhmm_rt *rt;

	pthread_mutex_lock(&g_lock);
	rt = atomic_load_explicit(&g_rt, memory_order_relaxed);
	atomic_store_explicit(&g_rt, NULL, memory_order_release);
	pthread_mutex_unlock(&g_lock);
	if (!rt)
		return 0;
	/* Events still queued are for a runtime that is going away. */
	rt_stop_threads(rt);
	uhmm__release_all(rt);
	rt_free(rt);
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
		uhmm__fork_prepare(rt);
	pthread_mutex_lock(&g_lock);
}

static void atfork_parent(void)
{
	struct uhmm_rt *rt = uhmm__rt_peek();

	pthread_mutex_unlock(&g_lock);
	if (rt) {
		uhmm__fork_parent(rt);
		uhmm__device_fork_done(rt);
	}
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

/*
 * Registered at load, not at runtime start, so that a fork before the
 * first uhmm call is seen too (its pages are shared copy-on-write).
 */
__attribute__((constructor)) static void uhmm_load(void)
{
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}
