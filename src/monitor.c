/* SPDX-License-Identifier: MIT */
/*
 * The monitor threads (the read side of fs/userfaultfd.c): two readers
 * that read the runtime's userfaultfd, apply each non-fault event's early
 * part at once and serve the CPU faults they read, and a worker that runs
 * the events' invalidations in order, so that a callback that triggers an
 * event never blocks the only reader; the waits on them. What an event or
 * a fault does is the hooks' (dispatch.c): this file calls upward only
 * through rt->hooks. Layer 1.
 */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <poll.h>

#include "rt.h"

/* Tell uhmm__rt_start_threads() that this thread is up and running. */
static void thread_running(struct uhmm_rt *rt)
{
	uhmm__rt_enter_monitor(rt);
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
		/* No mover between read() and the event's early part. */
		pthread_rwlock_wrlock(&rt->movelock);
		pthread_mutex_lock(&rt->qlock);
		rt->in_read++;
		pthread_mutex_unlock(&rt->qlock);
		rseq = atomic_fetch_add(&rt->read_seq, 1) + 1;
		n = uhmm__os_read(rt->uffd, msg, sizeof(msg));
		/* Device pages follow the mapping before any later fault. */
		for (ssize_t i = 0; n > 0 && i < n / (ssize_t)sizeof(msg[0]); i++) {
			if (msg[i].event == UFFD_EVENT_PAGEFAULT)
				continue;
			rt->hooks->event_early(rt, &msg[i]);
		}
		pthread_mutex_lock(&rt->qlock);
		rt->in_read--;
		pthread_cond_broadcast(&rt->qread);
		if (n < 0) {
			pthread_cond_broadcast(&rt->qread);
			pthread_mutex_unlock(&rt->qlock);
			pthread_rwlock_unlock(&rt->movelock);
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
		pthread_rwlock_unlock(&rt->movelock);
		pthread_mutex_unlock(&rt->rlock);
		/*
		 * CPU faults on device pages, served here: one wake-up, no
		 * hand-off. While this reader serves one (possibly waiting
		 * for an event to be read), the other reader reads.
		 */
		for (size_t i = 0; i < (size_t)n / sizeof(msg[0]); i++) {
			if (msg[i].event == UFFD_EVENT_PAGEFAULT)
				rt->hooks->fault(rt, &msg[i], rseq);
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
			rt->hooks->overflow(rt);
			pthread_mutex_lock(&rt->qlock);
			rt->qhead = tail;
			pthread_cond_broadcast(&rt->qread);
			continue;
		}
		m = rt->evq[rt->qhead % EVQ_LEN];
		pthread_mutex_unlock(&rt->qlock);
		rt->hooks->event(rt, &m);
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

void uhmm__rt_stop_threads(struct uhmm_rt *rt)
{
	if (!rt->threads)
		return;
	threads_stop(rt, 3);
	rt->threads = false;
}


static void cond_init_mono(pthread_cond_t *c)
{
	pthread_condattr_t a;

	pthread_condattr_init(&a);
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	pthread_cond_init(c, &a);
	pthread_condattr_destroy(&a);
}

/*
 * Movers (migrate.c, evict.c, exclusive.c, fault-back installs) take
 * pages into or out of the application's address space. While one holds
 * the lock, no reader reads: a munmap, mremap or madvise that happens
 * meanwhile leaves its event unread, the kernel's mmap_changing stays
 * set, and every UFFDIO_MOVE, COPY and ZEROPAGE fails with EAGAIN. So a
 * mover never takes a page of a new mapping for one of the old (after
 * munmap and mmap at the same address), and never installs into one:
 * an event read before the hold was taken has been applied (entries
 * DROP), one not read yet makes the move fail. The readers' side (the
 * rwlock's writer) is preferred: a stream of migrations cannot starve
 * them.
 */
static _Thread_local unsigned int mover_depth;

bool uhmm__in_mover(void)
{
	return mover_depth != 0;
}

void uhmm__mover_begin(struct uhmm_rt *rt)
{
	if (mover_depth++ == 0)
		pthread_rwlock_rdlock(&rt->movelock);
}

void uhmm__mover_end(struct uhmm_rt *rt)
{
	if (--mover_depth == 0)
		pthread_rwlock_unlock(&rt->movelock);
}

bool uhmm__mover_yield(struct uhmm_rt *rt)
{
	if (mover_depth != 1 || uhmm__on_monitor())
		return false;
	pthread_rwlock_unlock(&rt->movelock);
	uhmm__wait_events_read(rt);
	pthread_rwlock_rdlock(&rt->movelock);
	return true;
}

bool uhmm__mover_pause(struct uhmm_rt *rt)
{
	if (mover_depth != 1)
		return false;
	pthread_rwlock_unlock(&rt->movelock);
	mover_depth = 0;
	return true;
}

void uhmm__mover_resume(struct uhmm_rt *rt)
{
	pthread_rwlock_rdlock(&rt->movelock);
	mover_depth = 1;
}

int uhmm__monitor_init(struct uhmm_rt *rt)
{
	pthread_rwlockattr_t ra;

	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&rt->movelock, &ra);
	pthread_rwlockattr_destroy(&ra);
	pthread_mutex_init(&rt->qlock, NULL);
	pthread_mutex_init(&rt->rlock, NULL);
	/* uhmm__wait_events_read() waits with a deadline on this clock. */
	cond_init_mono(&rt->qcond);
	cond_init_mono(&rt->qread);
	return 0;
}

void uhmm__monitor_destroy(struct uhmm_rt *rt)
{
	pthread_rwlock_destroy(&rt->movelock);
	pthread_mutex_destroy(&rt->qlock);
	pthread_mutex_destroy(&rt->rlock);
	pthread_cond_destroy(&rt->qcond);
	pthread_cond_destroy(&rt->qread);
}
