/* SPDX-License-Identifier: MIT */
/*
 * uhmm DMA engine: a device submits batches of copies and is told of their
 * completion. The CPU implementation is a pool of copy threads.
 */
#ifndef UHMM_DMA_H
#define UHMM_DMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uhmm/uhmm.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * One engine: a pool of copy threads (or none, for a synchronous engine
 * that copies in the submitting thread). Every copy goes through
 * uhmm_copy_nofault(), so a DMA to or from memory the process lost ends
 * the batch with -EFAULT, never with a signal.
 *
 * A batch is split into units of work: a descriptor larger than
 * UHMM_DMA_CHUNK is cut into UHMM_DMA_CHUNK pieces, and consecutive
 * smaller descriptors are grouped, up to UHMM_DMA_CHUNK bytes or
 * UHMM_DMA_GROUP descriptors a unit. Every thread of the engine takes
 * units of the oldest batch that has some left, so one large batch uses
 * every thread, and batches start in submission order but may complete
 * in any order.
 */
struct uhmm_dma;	/* opaque */

#define UHMM_DMA_MAX_THREADS	64
#define UHMM_DMA_CHUNK		(256u * 1024)	/* bytes per unit of work */
#define UHMM_DMA_GROUP		64u		/* descriptors per unit, at most */
#define UHMM_DMA_MAX_DESC	(1ULL << 40)	/* n must be below this */

/* One copy of @len bytes from @src to @dst. The two must not overlap. */
struct uhmm_dma_desc {
	void *dst;		/* in; NULL with len > 0 faults (-EFAULT) */
	const void *src;	/* in; NULL with len > 0 faults (-EFAULT) */
	size_t len;		/* in: bytes; 0 is a no-op */
};

/*
 * A batch of copies. The caller owns the memory; from uhmm_dma_submit()
 * until uhmm_dma_done() is true (or uhmm_dma_wait() returned) it belongs
 * to the engine: the caller must not change, free or reuse it, nor the
 * descriptor array, nor read status or error_index. A completed batch
 * may be submitted again as it is.
 *
 * The completion callback @done runs once per submission on one of the
 * engine's threads (in the submitting thread for a synchronous engine),
 * with no lock of uhmm held, after every copy of the batch finished and
 * status and error_index were set. It may submit other batches. It must
 * not free, reuse or resubmit @b (the engine marks @b done after it
 * returns; resubmitting gives -EBUSY), must not wait for another batch
 * (uhmm_dma_wait()), and must not destroy the engine.
 */
struct uhmm_dma_batch {
	const struct uhmm_dma_desc *desc; /* in: n descriptors; NULL only if n == 0 */
	size_t n;			/* in: < UHMM_DMA_MAX_DESC; 0: nothing to copy */
	void (*done)(struct uhmm_dma_batch *b); /* in, optional: see above */
	void *priv;			/* in: for the caller; the engine ignores it */
	int status;			/* out at completion: 0, or -EFAULT if a copy faulted */
	size_t error_index;		/* out at completion: the lowest index of a
					 * descriptor whose copy faulted (valid when
					 * status == -EFAULT); every other
					 * descriptor was still copied, this one
					 * in part */
	uint64_t _private[6];		/* the engine's: zero before the first
					 * submit (an initializer does it), then
					 * leave it alone */
};

/**
 * uhmm_dma_create() - start a DMA engine
 * @nthreads: copy threads, 1..UHMM_DMA_MAX_THREADS; 0 makes a synchronous
 *            engine, whose uhmm_dma_submit() copies in the calling thread
 * @out: out: the engine
 *
 * The threads are created with default attributes and block every
 * asynchronous signal; they sleep while there is no work. Also installs
 * uhmm's SIGSEGV/SIGBUS handlers that uhmm_copy_nofault() relies on.
 *
 * Context: may block (thread creation).
 * Return: 0, or a negative errno:
 *   -EINVAL  @out NULL, @nthreads > UHMM_DMA_MAX_THREADS
 *   -ENOMEM
 *   -EAGAIN  a thread could not be created (resource limits)
 *   an error of uhmm_copy_nofault()'s handler installation
 */
UHMM_API int uhmm_dma_create(unsigned int nthreads, struct uhmm_dma **out);

/**
 * uhmm_dma_destroy() - wait for every batch, stop the threads, free
 * @dma: the engine; NULL is a no-op
 *
 * Waits until every submitted batch completed, including batches that
 * completion callbacks submit meanwhile, then joins the threads and frees
 * the engine. Nothing may be submitted to @dma once it returns.
 *
 * Context: may block; not from a completion callback; no other thread may
 * submit to @dma meanwhile, except callbacks of its own batches.
 * Return: 0, or -EDEADLK when called on one of @dma's own threads (from a
 * completion callback; nothing is done).
 */
UHMM_API int uhmm_dma_destroy(struct uhmm_dma *dma);

/**
 * uhmm_dma_submit() - queue a batch of copies
 * @dma: the engine
 * @b: the batch; desc, n, done and priv set, _private zero or left as a
 *     previous completion left it
 *
 * Allocates nothing. On a threaded engine the copies start on the
 * engine's threads and the call returns at once; the completion callback
 * always runs on an engine thread, even for n == 0. On a synchronous
 * engine the copies and the callback run in the calling thread, and the
 * batch is complete when the call returns. A descriptor whose copy faults
 * (a NULL or unmapped address) does not stop the others: it sets status
 * to -EFAULT and error_index.
 *
 * Context: any thread, completion callbacks included; several threads
 * may submit to one engine at once. May block briefly on the engine's
 * lock (a synchronous engine: for the whole copy).
 * Return: 0 (the batch was accepted; its result is in b->status at
 * completion), or a negative errno, in which case @b was not queued and
 * its callback will not run:
 *   -EINVAL    @dma or @b NULL, desc NULL with n > 0, n >= UHMM_DMA_MAX_DESC
 *   -EBUSY     @b is still in flight (submitted and not completed)
 *   -ESHUTDOWN uhmm_dma_destroy() of @dma has finished waiting (a bug)
 */
UHMM_API int uhmm_dma_submit(struct uhmm_dma *dma, struct uhmm_dma_batch *b);

/**
 * uhmm_dma_wait() - wait for a batch to complete
 * @dma: the engine @b was submitted to
 * @b: the batch
 *
 * Returns once @b is complete: its copies are done, its callback has
 * returned and its memory is the caller's again.
 *
 * Context: may block; not from a completion callback (a callback that
 * waits can hold the only thread its batch needs).
 * Return: b->status (0 or -EFAULT), or -EINVAL when @dma or @b is NULL,
 * @b was never submitted, or was last submitted to another engine.
 */
UHMM_API int uhmm_dma_wait(struct uhmm_dma *dma, struct uhmm_dma_batch *b);

/**
 * uhmm_dma_done() - has a submitted batch completed?
 * @b: the batch
 *
 * Non-blocking. True means the same as a return of uhmm_dma_wait(): with
 * acquire ordering, status, error_index and every copied byte are
 * visible, and @b is the caller's again.
 *
 * Context: any thread.
 * Return: true when @b completed, false while in flight and for NULL or a
 * batch never submitted.
 */
UHMM_API bool uhmm_dma_done(const struct uhmm_dma_batch *b);

/**
 * uhmm_dma_threads() - number of copy threads of an engine
 * @dma: the engine
 *
 * Context: any thread.
 * Return: the nthreads given to uhmm_dma_create() (0: synchronous), or 0
 * for NULL.
 */
UHMM_API unsigned int uhmm_dma_threads(const struct uhmm_dma *dma);

#ifdef __cplusplus
}
#endif

#endif /* UHMM_DMA_H */
