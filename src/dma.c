/* SPDX-License-Identifier: MIT */
/*
 * The DMA engine (include/uhmm/dma.h): a pool of copy threads that share
 * the units of work of submitted batches, claimed with atomics.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <uhmm/dma.h>
#include "base.h"

/*
 * Life of a batch. Submit fills the engine's state in b->_private
 * (struct dma_priv) and, on a threaded engine, appends the batch to the
 * engine's queue under dma->lock. The queue holds the batches that may
 * still have unclaimed units; an engine thread takes the head, pins it
 * (pending++) under the lock, then claims units from its cursor with a
 * compare-and-swap, without the lock, and copies them. When the cursor is
 * exhausted the thread removes the batch from the queue (if still
 * there), under the lock, and drops its pin plus, if it removed the
 * batch, the queue's reference. The one that drops pending to zero has
 * seen every unit finish (acq_rel): it completes the batch. A thread only
 * ever pins the queue's head, and batches are appended at the tail, so a
 * batch still queued is the head.
 *
 * Lock order: dma->lock is a leaf; it is never held while copying or
 * while a completion callback runs.
 */

enum dma_state {
	DMA_NEVER = 0,		/* zeroed by the caller, never submitted */
	DMA_INFLIGHT = 1,
	DMA_DONE = 2,
};

/* What the engine keeps in b->_private. */
struct dma_priv {
	uint64_t next;		/* struct uhmm_dma_batch *: queue link (dma->lock) */
	uint64_t cursor;	/* atomic: next unit, (desc << CUR_SHIFT) | chunk */
	uint64_t pending;	/* atomic: pins + the queue's reference */
	uint64_t err_index;	/* atomic: lowest faulting descriptor, or ERR_NONE */
	uint64_t state;		/* atomic: enum dma_state; DONE stored with release */
	uint64_t owner;		/* struct uhmm_dma *: the engine submitted to */
};

_Static_assert(sizeof(struct dma_priv) <= sizeof(((struct uhmm_dma_batch *)0)->_private),
	       "struct dma_priv must fit in uhmm_dma_batch._private");
_Static_assert(_Alignof(struct dma_priv) <= _Alignof(uint64_t),
	       "struct dma_priv must not need more alignment than _private");

/*
 * The cursor packs the descriptor index (below UHMM_DMA_MAX_DESC, 2^40)
 * and the chunk index inside it (below 2^24: chunk_size() grows the chunk
 * of a descriptor longer than 2^24 chunks) in one word, so a unit is
 * claimed with a single-word CAS.
 */
#define CUR_SHIFT	24
#define CUR_MASK	((1ULL << CUR_SHIFT) - 1)
#define ERR_NONE	UINT64_MAX

_Static_assert(UHMM_DMA_MAX_DESC <= 1ULL << (64 - CUR_SHIFT),
	       "descriptor index must fit in the cursor");

struct uhmm_dma {
	pthread_mutex_t lock;
	pthread_cond_t work;		/* threads: a batch was queued, or stop */
	pthread_cond_t idle;		/* waiters, destroy: a batch completed */
	struct uhmm_dma_batch *head;	/* batches that may have units left */
	struct uhmm_dma_batch *tail;
	uint64_t inflight;		/* submitted, not yet completed */
	bool stopping;			/* destroy: every batch completed */
	unsigned int nthreads;		/* immutable after create */
	unsigned int started;		/* threads created (create's unwind) */
	pthread_t threads[];
};

/* One unit of work: part of one descriptor, or whole descriptors. */
struct dma_unit {
	size_t first, last;	/* descriptors [first, last) */
	size_t off, len;	/* with last == first + 1 and len > 0: a chunk */
};

static struct dma_priv *priv(const struct uhmm_dma_batch *b)
{
	return (struct dma_priv *)(uintptr_t)b->_private;
}

static struct uhmm_dma_batch *qnext(const struct uhmm_dma_batch *b)
{
	return (struct uhmm_dma_batch *)(uintptr_t)priv(b)->next;
}

static size_t chunk_size(size_t len)
{
	size_t per = len / (1ULL << CUR_SHIFT) + !!(len & CUR_MASK);

	return per > UHMM_DMA_CHUNK ? per : UHMM_DMA_CHUNK;
}

/*
 * Claim the next unit of @b. The descriptors are immutable while the
 * batch is in flight and were published by the lock that queued it, so
 * the cursor itself needs no ordering: relaxed.
 */
static bool claim(const struct uhmm_dma_batch *b, struct dma_unit *u)
{
	struct dma_priv *p = priv(b);
	uint64_t c = __atomic_load_n(&p->cursor, __ATOMIC_RELAXED), next;

	do {
		size_t i = (size_t)(c >> CUR_SHIFT), j = (size_t)(c & CUR_MASK);
		size_t len, cs;

		if (i >= b->n)
			return false;
		len = b->desc[i].len;
		cs = chunk_size(len);
		if (len > cs) {
			u->first = i;
			u->last = i + 1;
			u->off = j * cs;
			u->len = len - u->off < cs ? len - u->off : cs;
			next = u->off + u->len == len ?
			       (uint64_t)(i + 1) << CUR_SHIFT : c + 1;
		} else {
			size_t k = i + 1, bytes = len;

			while (k < b->n && k - i < UHMM_DMA_GROUP &&
			       b->desc[k].len <= UHMM_DMA_CHUNK - bytes)
				bytes += b->desc[k++].len;
			u->first = i;
			u->last = k;
			u->off = 0;
			u->len = 0;
			next = (uint64_t)k << CUR_SHIFT;
		}
	} while (!__atomic_compare_exchange_n(&p->cursor, &c, next, true,
					      __ATOMIC_RELAXED,
					      __ATOMIC_RELAXED));
	return true;
}

static void note_error(struct dma_priv *p, size_t i)
{
	uint64_t cur = __atomic_load_n(&p->err_index, __ATOMIC_RELAXED);

	while (i < cur &&
	       !__atomic_compare_exchange_n(&p->err_index, &cur, i, true,
					    __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
}

static void copy_one(struct dma_priv *p, const struct uhmm_dma_desc *d,
		     size_t i, size_t off, size_t len)
{
	if (!len)
		return;
	/* No arithmetic on NULL: it is undefined even before the copy. */
	if (!d->dst || !d->src) {
		note_error(p, i);
		return;
	}
	if (uhmm_copy_nofault((char *)d->dst + off, (const char *)d->src + off,
			      len, NULL))
		note_error(p, i);
}

/* Copy units of @b until its cursor is exhausted. */
static void run_units(const struct uhmm_dma_batch *b)
{
	struct dma_priv *p = priv(b);
	struct dma_unit u;

	while (claim(b, &u)) {
		if (u.len) {
			copy_one(p, &b->desc[u.first], u.first, u.off, u.len);
			continue;
		}
		for (size_t i = u.first; i < u.last; i++)
			copy_one(p, &b->desc[i], i, 0, b->desc[i].len);
	}
}

/*
 * Every unit finished (the caller dropped pending to zero with acq_rel,
 * so every copy happens before this). Nothing touches @b after the
 * release store of DMA_DONE: its owner may free it from then on.
 */
static void complete(struct uhmm_dma *dma, struct uhmm_dma_batch *b)
{
	struct dma_priv *p = priv(b);
	uint64_t e = __atomic_load_n(&p->err_index, __ATOMIC_RELAXED);

	b->status = e == ERR_NONE ? 0 : -EFAULT;
	b->error_index = e == ERR_NONE ? 0 : (size_t)e;
	if (b->done)
		b->done(b);
	__atomic_store_n(&p->state, DMA_DONE, __ATOMIC_RELEASE);

	pthread_mutex_lock(&dma->lock);
	dma->inflight--;
	pthread_cond_broadcast(&dma->idle);
	pthread_mutex_unlock(&dma->lock);
}

static void put(struct uhmm_dma *dma, struct uhmm_dma_batch *b, uint64_t refs)
{
	if (__atomic_sub_fetch(&priv(b)->pending, refs, __ATOMIC_ACQ_REL) == 0)
		complete(dma, b);
}

static void *dma_thread(void *arg)
{
	struct uhmm_dma *dma = arg;

	pthread_mutex_lock(&dma->lock);
	for (;;) {
		struct uhmm_dma_batch *b = dma->head;
		uint64_t refs = 1;

		if (!b) {
			if (dma->stopping)
				break;
			pthread_cond_wait(&dma->work, &dma->lock);
			continue;
		}
		/* The queue's reference keeps @b alive while we pin it. */
		__atomic_fetch_add(&priv(b)->pending, 1, __ATOMIC_RELAXED);
		pthread_mutex_unlock(&dma->lock);

		run_units(b);

		pthread_mutex_lock(&dma->lock);
		if (dma->head == b) {
			dma->head = qnext(b);
			if (!dma->head)
				dma->tail = NULL;
			refs++;
		}
		pthread_mutex_unlock(&dma->lock);
		put(dma, b, refs);
		pthread_mutex_lock(&dma->lock);
	}
	pthread_mutex_unlock(&dma->lock);
	return NULL;
}

/* Exactly: does @b make more than one unit (worth waking every thread)? */
static bool many_units(const struct uhmm_dma_batch *b)
{
	size_t bytes = 0;

	if (b->n > UHMM_DMA_GROUP)
		return true;
	for (size_t i = 0; i < b->n; i++) {
		if (b->desc[i].len > UHMM_DMA_CHUNK - bytes)
			return true;
		bytes += b->desc[i].len;
	}
	return false;
}

static void stop_threads(struct uhmm_dma *dma)
{
	pthread_mutex_lock(&dma->lock);
	dma->stopping = true;
	pthread_cond_broadcast(&dma->work);
	pthread_mutex_unlock(&dma->lock);
	for (unsigned int i = 0; i < dma->started; i++)
		pthread_join(dma->threads[i], NULL);
}

static void dma_free(struct uhmm_dma *dma)
{
	pthread_cond_destroy(&dma->idle);
	pthread_cond_destroy(&dma->work);
	pthread_mutex_destroy(&dma->lock);
	uhmm_free(dma);
}

int uhmm_dma_create(unsigned int nthreads, struct uhmm_dma **out)
{
	struct uhmm_dma *dma;
	sigset_t all, old;
	int ret;

	if (!out || nthreads > UHMM_DMA_MAX_THREADS)
		return -EINVAL;
	ret = uhmm__guard_install();
	if (ret)
		return ret;
	dma = uhmm_calloc(1, sizeof(*dma) + nthreads * sizeof(dma->threads[0]));
	if (!dma)
		return -ENOMEM;
	dma->nthreads = nthreads;
	pthread_mutex_init(&dma->lock, NULL);
	pthread_cond_init(&dma->work, NULL);
	pthread_cond_init(&dma->idle, NULL);

	/*
	 * Threads inherit the creator's mask: block every asynchronous
	 * signal before they start, so none is ever delivered to them.
	 * Faults must still be delivered (uhmm_copy_nofault() needs them).
	 */
	sigfillset(&all);
	sigdelset(&all, SIGSEGV);
	sigdelset(&all, SIGBUS);
	sigdelset(&all, SIGILL);
	sigdelset(&all, SIGFPE);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	for (; dma->started < nthreads; dma->started++) {
		ret = -pthread_create(&dma->threads[dma->started], NULL,
				      dma_thread, dma);
		if (ret)
			break;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret)
		goto err_stop;
	*out = dma;
	return 0;

err_stop:
	stop_threads(dma);
	dma_free(dma);
	return ret;
}

int uhmm_dma_destroy(struct uhmm_dma *dma)
{
	pthread_t self = pthread_self();

	if (!dma)
		return 0;
	for (unsigned int i = 0; i < dma->nthreads; i++)
		if (pthread_equal(self, dma->threads[i]))
			return -EDEADLK;
	/* Callbacks submit before their batch's inflight-- : no early zero. */
	pthread_mutex_lock(&dma->lock);
	while (dma->inflight)
		pthread_cond_wait(&dma->idle, &dma->lock);
	pthread_mutex_unlock(&dma->lock);
	stop_threads(dma);
	dma_free(dma);
	return 0;
}

int uhmm_dma_submit(struct uhmm_dma *dma, struct uhmm_dma_batch *b)
{
	struct dma_priv *p;
	uint64_t st;
	bool many;

	if (!dma || !b || (b->n && !b->desc) || b->n >= UHMM_DMA_MAX_DESC)
		return -EINVAL;
	p = priv(b);
	st = __atomic_load_n(&p->state, __ATOMIC_RELAXED);
	/* A CAS, so two racing submits of one batch cannot both win. */
	if (st == DMA_INFLIGHT ||
	    !__atomic_compare_exchange_n(&p->state, &st, DMA_INFLIGHT, false,
					 __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
		return -EBUSY;
	p->next = 0;
	p->cursor = 0;
	p->pending = 1;		/* the queue's reference */
	p->err_index = ERR_NONE;
	/* Atomic: uhmm_dma_wait() from another thread may read it now. */
	__atomic_store_n(&p->owner, (uint64_t)(uintptr_t)dma, __ATOMIC_RELAXED);
	many = dma->nthreads && many_units(b);

	pthread_mutex_lock(&dma->lock);
	if (dma->stopping) {
		pthread_mutex_unlock(&dma->lock);
		__atomic_store_n(&p->state, st, __ATOMIC_RELAXED);
		return -ESHUTDOWN;
	}
	dma->inflight++;
	if (dma->nthreads) {
		if (dma->tail)
			priv(dma->tail)->next = (uint64_t)(uintptr_t)b;
		else
			dma->head = b;
		dma->tail = b;
		if (many)
			pthread_cond_broadcast(&dma->work);
		else
			pthread_cond_signal(&dma->work);
	}
	pthread_mutex_unlock(&dma->lock);

	if (!dma->nthreads) {
		run_units(b);
		put(dma, b, 1);
	}
	return 0;
}

int uhmm_dma_wait(struct uhmm_dma *dma, struct uhmm_dma_batch *b)
{
	struct dma_priv *p;
	uint64_t st;

	if (!dma || !b)
		return -EINVAL;
	p = priv(b);
	st = __atomic_load_n(&p->state, __ATOMIC_ACQUIRE);
	if (st != DMA_INFLIGHT && st != DMA_DONE)
		return -EINVAL;
	if (__atomic_load_n(&p->owner, __ATOMIC_RELAXED) !=
	    (uint64_t)(uintptr_t)dma)
		return -EINVAL;
	if (st != DMA_DONE) {
		/* complete() stores DONE before it takes the lock to wake us. */
		pthread_mutex_lock(&dma->lock);
		while (__atomic_load_n(&p->state, __ATOMIC_ACQUIRE) != DMA_DONE)
			pthread_cond_wait(&dma->idle, &dma->lock);
		pthread_mutex_unlock(&dma->lock);
	}
	return b->status;
}

bool uhmm_dma_done(const struct uhmm_dma_batch *b)
{
	return b && __atomic_load_n(&priv(b)->state, __ATOMIC_ACQUIRE) ==
		    DMA_DONE;
}

unsigned int uhmm_dma_threads(const struct uhmm_dma *dma)
{
	return dma ? dma->nthreads : 0;
}
