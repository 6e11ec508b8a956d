/* SPDX-License-Identifier: MIT */
/*
 * The DMA engine (include/uhmm/dma.h): argument checks, copies of many
 * sizes on synchronous and threaded engines, faults, completion callbacks,
 * parallel submitters, destroy with batches in flight. Every copy is checked.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "harness.h"
#include "util.h"

#include <uhmm/dma.h>

/* The engines every data test runs on: synchronous, 1, 2 and 8 threads. */
static const unsigned int engines[] = { 0, 1, 2, 8 };
#define NENGINES (sizeof(engines) / sizeof(engines[0]))

/* Byte pattern that differs per seed and per offset, at any alignment. */
static void pat(void *buf, size_t len, uint32_t seed)
{
	unsigned char *c = buf;

	for (size_t i = 0; i < len; i++)
		c[i] = (unsigned char)((i * 131u) ^ (i >> 9) ^ (seed * 0x9e37u) ^ (seed >> 3));
}

static struct uhmm_dma *engine(unsigned int nthreads)
{
	struct uhmm_dma *dma = NULL;

	ASSERT_EQ(uhmm_dma_create(nthreads, &dma), 0);
	ASSERT_NOT_NULL(dma);
	ASSERT_EQ(uhmm_dma_threads(dma), nthreads);
	return dma;
}

/* What a completion callback saw, reached through b->priv. */
struct done_rec {
	int calls;		/* atomic */
	pthread_t thread;
	int status;
	struct uhmm_dma *dma;	/* for callbacks that submit */
	struct uhmm_dma_batch *next;
	int next_rc;
	volatile int release;	/* atomic: a blocking callback waits for it */
	volatile int entered;	/* atomic */
};

static void rec_done(struct uhmm_dma_batch *b)
{
	struct done_rec *r = b->priv;

	r->thread = pthread_self();
	r->status = b->status;
	__atomic_fetch_add(&r->calls, 1, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ */
/* life cycle and arguments                                            */
/* ------------------------------------------------------------------ */

TEST(create_destroy)
{
	static const unsigned int n[] = { 0, 1, 2, 8, UHMM_DMA_MAX_THREADS };

	for (size_t i = 0; i < sizeof(n) / sizeof(n[0]); i++) {
		struct uhmm_dma *dma = engine(n[i]);

		ASSERT_EQ(uhmm_dma_destroy(dma), 0);
	}
	/* Created and destroyed repeatedly: nothing leaks, nothing hangs. */
	for (int i = 0; i < 50; i++)
		ASSERT_EQ(uhmm_dma_destroy(engine((unsigned int)i % 4)), 0);
}

TEST(bad_args)
{
	struct uhmm_dma *dma = NULL, *other = engine(0);
	struct uhmm_dma_desc d = { NULL, NULL, 0 };
	struct uhmm_dma_batch b = { 0 };

	ASSERT_EQ(uhmm_dma_create(1, NULL), -EINVAL);
	ASSERT_EQ(uhmm_dma_create(UHMM_DMA_MAX_THREADS + 1, &dma), -EINVAL);
	ASSERT_EQ(uhmm_dma_create(~0u, &dma), -EINVAL);
	ASSERT_NULL(dma);
	dma = engine(1);

	ASSERT_EQ(uhmm_dma_submit(NULL, &b), -EINVAL);
	ASSERT_EQ(uhmm_dma_submit(dma, NULL), -EINVAL);
	b.n = 1;			/* desc NULL with n > 0 */
	ASSERT_EQ(uhmm_dma_submit(dma, &b), -EINVAL);
	b.desc = &d;
	b.n = (size_t)UHMM_DMA_MAX_DESC;
	ASSERT_EQ(uhmm_dma_submit(dma, &b), -EINVAL);
	b.n = 1;
	ASSERT_FALSE(uhmm_dma_done(&b));	/* rejected: never submitted */

	ASSERT_EQ(uhmm_dma_wait(NULL, &b), -EINVAL);
	ASSERT_EQ(uhmm_dma_wait(dma, NULL), -EINVAL);
	ASSERT_EQ(uhmm_dma_wait(dma, &b), -EINVAL);	/* never submitted */
	ASSERT_FALSE(uhmm_dma_done(NULL));
	ASSERT_EQ(uhmm_dma_threads(NULL), 0);
	ASSERT_EQ(uhmm_dma_destroy(NULL), 0);

	/* A zero-length descriptor with NULL addresses is a no-op. */
	ASSERT_EQ(uhmm_dma_submit(dma, &b), 0);
	ASSERT_EQ(uhmm_dma_wait(dma, &b), 0);
	ASSERT_TRUE(uhmm_dma_done(&b));
	/* Waiting on another engine than the one it went to. */
	ASSERT_EQ(uhmm_dma_wait(other, &b), -EINVAL);
	/* n == 0 with desc NULL completes. */
	struct uhmm_dma_batch e = { 0 };
	ASSERT_EQ(uhmm_dma_submit(dma, &e), 0);
	ASSERT_EQ(uhmm_dma_wait(dma, &e), 0);
	ASSERT_EQ(uhmm_dma_submit(other, &e), 0);	/* resubmit, elsewhere */
	ASSERT_TRUE(uhmm_dma_done(&e));
	ASSERT_EQ(uhmm_dma_wait(other, &e), 0);
	ASSERT_EQ(uhmm_dma_destroy(dma), 0);
	ASSERT_EQ(uhmm_dma_destroy(other), 0);
}

/* n == 0: the callback still runs once, on an engine thread. */
TEST(empty_batch_callback)
{
	for (size_t e = 0; e < NENGINES; e++) {
		struct uhmm_dma *dma = engine(engines[e]);
		struct done_rec r = { 0 };
		struct uhmm_dma_batch b = { .done = rec_done, .priv = &r };

		ASSERT_EQ(uhmm_dma_submit(dma, &b), 0);
		ASSERT_EQ(uhmm_dma_wait(dma, &b), 0);
		ASSERT_EQ(r.calls, 1);
		ASSERT_EQ(r.status, 0);
		ASSERT_EQ(!!pthread_equal(r.thread, pthread_self()), engines[e] == 0);
		ASSERT_EQ(uhmm_dma_destroy(dma), 0);
	}
}

/* ------------------------------------------------------------------ */
/* data                                                                */
/* ------------------------------------------------------------------ */

#define GUARD 64

struct xfer {
	unsigned char *src, *dst;	/* mappings */
	size_t map;			/* their length */
	size_t soff, doff, len;		/* the copy */
};

static void xfer_setup(struct xfer *x, size_t len, size_t soff, size_t doff,
		       uint32_t seed)
{
	x->map = (len + soff + doff + 2 * GUARD + ps() - 1) / ps() * ps();
	x->src = map_anon(x->map, RW);
	x->dst = map_anon(x->map, RW);
	ASSERT_NOT_NULL(x->src);
	ASSERT_NOT_NULL(x->dst);
	x->soff = GUARD + soff;
	x->doff = GUARD + doff;
	x->len = len;
	pat(x->src, x->map, seed);
	memset(x->dst, 0xee, x->map);
}

static void xfer_check(const struct xfer *x)
{
	ASSERT_MEMEQ(x->dst + x->doff, x->src + x->soff, x->len);
	for (size_t i = 0; i < x->doff; i++)
		ASSERT_EQ(x->dst[i], 0xee);
	for (size_t i = x->doff + x->len; i < x->map; i++)
		ASSERT_EQ(x->dst[i], 0xee);
}

static void xfer_free(struct xfer *x)
{
	munmap(x->src, x->map);
	munmap(x->dst, x->map);
}

static const size_t sizes[] = { 0, 1, 4095, 4096, 1 << 20, 16 << 20 };
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))

static void sizes_on(unsigned int nthreads)
{
	struct uhmm_dma *dma = engine(nthreads);
	struct xfer x[NSIZES];
	struct uhmm_dma_desc d[NSIZES];

	/* One batch per size, odd offsets on both sides. */
	for (size_t i = 0; i < NSIZES; i++) {
		struct uhmm_dma_batch b = { .desc = d, .n = 1 };

		xfer_setup(&x[i], sizes[i], 3, 5 + i, (uint32_t)i + 1);
		d[0] = (struct uhmm_dma_desc){ x[i].dst + x[i].doff,
					       x[i].src + x[i].soff, x[i].len };
		ASSERT_EQ(uhmm_dma_submit(dma, &b), 0);
		ASSERT_EQ(uhmm_dma_wait(dma, &b), 0);
		ASSERT_TRUE(uhmm_dma_done(&b));
		xfer_check(&x[i]);
		xfer_free(&x[i]);
	}
	/* Every size in one batch. */
	for (size_t i = 0; i < NSIZES; i++) {
		xfer_setup(&x[i], sizes[i], 7 + i, 1, (uint32_t)i + 100);
		d[i] = (struct uhmm_dma_desc){ x[i].dst + x[i].doff,
					       x[i].src + x[i].soff, x[i].len };
	}
	struct uhmm_dma_batch all = { .desc = d, .n = NSIZES };
	ASSERT_EQ(uhmm_dma_submit(dma, &all), 0);
	ASSERT_EQ(uhmm_dma_wait(dma, &all), 0);
	for (size_t i = 0; i < NSIZES; i++) {
		xfer_check(&x[i]);
		xfer_free(&x[i]);
	}
	ASSERT_EQ(uhmm_dma_destroy(dma), 0);
}

TEST(sizes_sync)     { sizes_on(0); }
TEST(sizes_1thread)  { sizes_on(1); }
TEST(sizes_2threads) { sizes_on(2); }
TEST(sizes_8threads) { sizes_on(8); }

/* A descriptor so large that it has more than one chunk per thread. */
TEST(one_large_descriptor_many_threads)
{
	struct uhmm_dma *dma = engine(8);
	struct xfer x;
	struct uhmm_dma_desc d;
	struct uhmm_dma_batch b = { .desc = &d, .n = 1 };

	xfer_setup(&x, 64 << 20, 1, 0, 77);
	d = (struct uhmm_dma_desc){ x.dst + x.doff, x.src + x.soff, x.len };
	for (int rep = 0; rep < 3; rep++) {
		memset(x.dst, 0xee, x.map);
		ASSERT_EQ(uhmm_dma_submit(dma, &b), 0);	/* resubmitted as is */
		ASSERT_EQ(uhmm_dma_wait(dma, &b), 0);
		xfer_check(&x);
	}
	xfer_free(&x);
	ASSERT_EQ(uhmm_dma_destroy(dma), 0);
}

#define NSMALL 10000

/* 10,000 small descriptors of 0..999 bytes, scattered, in one batch. */
TEST(many_small_descriptors)
{
	size_t slot = 1024, len = NSMALL * slot;
	unsigned char *src = map_anon(len, RW), *dst = map_anon(len, RW);
	struct uhmm_dma_desc *d = calloc(NSMALL, sizeof(*d));

	ASSERT_NOT_NULL(src);
	ASSERT_NOT_NULL(dst);
	ASSERT_NOT_NULL(d);
	pat(src, len, 9);
	for (size_t e = 0; e < NENGINES; e++) {
		struct uhmm_dma *dma = engine(engines[e]);
		struct uhmm_dma_batch b = { .desc = d, .n = NSMALL };

		memset(dst, 0xee, len);
		/* Descriptor i copies source slot (i * 7919) % N to slot i. */
		for (size_t i = 0; i < NSMALL; i++)
			d[i] = (struct uhmm_dma_desc){
				dst + i * slot + i % 13,
				src + (i * 7919) % NSMALL * slot + i % 11,
				(i * 37 + e) % 1000 };
		ASSERT_EQ(uhmm_dma_submit(dma, &b), 0);
		ASSERT_EQ(uhmm_dma_wait(dma, &b), 0);
		for (size_t i = 0; i < NSMALL; i++) {
			unsigned char *s = dst + i * slot;

			ASSERT_MEMEQ(d[i].dst, d[i].src, d[i].len);
			for (size_t k = 0; k < i % 13; k++)
				ASSERT_EQ(s[k], 0xee);
			for (size_t k = i % 13 + d[i].len; k < slot; k++)
				ASSERT_EQ(s[k], 0xee);
		}
		ASSERT_EQ(uhmm_dma_destroy(dma), 0);
	}
	free(d);
	munmap(src, len);
	munmap(dst, len);
}

/* ------------------------------------------------------------------ */
/* faults                                                              */
/* ------------------------------------------------------------------ */

/*
 * Small descriptors in one group, two of which fault (an unmapped source
 * and a NULL destination): status -EFAULT, error_index the lower one,
 * every other descriptor copied, nothing outside them written.
 */
TEST(fault_small_descriptors)
{
	size_t len = 4 * ps();
	unsigned char *src = map_anon(len, RW), *dst = map_anon(len, RW);

	ASSERT_NOT_NULL(src);
	ASSERT_NOT_NULL(dst);
	pat(src, len, 5);
	ASSERT_EQ(munmap(src + 2 * ps(), ps()), 0);	/* the hole */
	for (size_t e = 0; e < NENGINES; e++) {
		struct uhmm_dma *dma = engine(engines[e]);
		struct done_rec r = { 0 };
		struct uhmm_dma_desc d[] = {
			{ dst + 0, src + 1, 100 },
			{ dst + 200, src + 300, 3000 },
			{ dst + 3300, src + 2 * ps() + 8, 64 },	/* hole: faults */
			{ dst + 3400, src + 3 * ps(), 500 },
			{ NULL, src, 10 },			/* faults */
			{ dst + ps(), src + ps() - 50, 100 },	/* across pages */
		};
		struct uhmm_dma_batch b = { .desc = d, .n = 6, .done = rec_done,
					    .priv = &r };

		memset(dst, 0xee, len);
		ASSERT_EQ(uhmm_dma_submit(dma, &b), 0);
		ASSERT_EQ(uhmm_dma_wait(dma, &b), -EFAULT);
		ASSERT_EQ(b.status, -EFAULT);
		ASSERT_EQ(b.error_index, 2);
		ASSERT_EQ(r.calls, 1);
		ASSERT_EQ(r.status, -EFAULT);	/* set before the callback */
		ASSERT_MEMEQ(d[0].dst, d[0].src, d[0].len);
		ASSERT_MEMEQ(d[1].dst, d[1].src, d[1].len);
		ASSERT_MEMEQ(d[3].dst, d[3].src, d[3].len);
		ASSERT_MEMEQ(d[5].dst, d[5].src, d[5].len);
		for (size_t i = 3300; i < 3400; i++)	/* the faulting copy */
			ASSERT_EQ(dst[i], 0xee);
		for (size_t i = 3900; i < ps(); i++)
			ASSERT_EQ(dst[i], 0xee);

		/* The same batch without the faults: clean status again. */
		d[2].src = src + 8;
		d[4].dst = dst + 2 * ps();
		r.calls = 0;
		ASSERT_EQ(uhmm_dma_submit(dma, &b), 0);
		ASSERT_EQ(uhmm_dma_wait(dma, &b), 0);
		ASSERT_EQ(r.calls, 1);
		ASSERT_MEMEQ(d[2].dst, d[2].src, 64);
		ASSERT_MEMEQ(d[4].dst, d[4].src, 10);
		d[2].src = src + 2 * ps() + 8;
		d[4].dst = NULL;
		ASSERT_EQ(uhmm_dma_destroy(dma), 0);
	}
	munmap(src, 2 * ps());
	munmap(src + 3 * ps(), ps());
	munmap(dst, len);
}

/*
 * A large descriptor with a hole in its source, between two good ones:
 * the chunks of it away from the hole, and the other descriptors, are
 * still copied; error_index names it.
 */
TEST(fault_large_descriptor)
{
	size_t len = 4 << 20, hole = (1 << 20) + 4096;
	size_t cs = UHMM_DMA_CHUNK, hole_chunk = hole / cs * cs;
	unsigned char *src = map_anon(len, RW), *dst = map_anon(len, RW);
	unsigned char *a = map_anon(ps(), RW), *ad = map_anon(ps(), RW);

	ASSERT_NOT_NULL(src);
	ASSERT_NOT_NULL(dst);
	ASSERT_NOT_NULL(a);
	ASSERT_NOT_NULL(ad);
	pat(src, len, 21);
	pat(a, ps(), 22);
	ASSERT_EQ(munmap(src + hole, ps()), 0);
	for (size_t e = 0; e < NENGINES; e++) {
		struct uhmm_dma *dma = engine(engines[e]);
		struct uhmm_dma_desc d[] = {
			{ ad, a, 100 },
			{ dst, src, len },
			{ ad + 100, a + 100, ps() - 100 },
		};
		struct uhmm_dma_batch b = { .desc = d, .n = 3 };

		memset(dst, 0xee, len);
		memset(ad, 0xee, ps());
		ASSERT_EQ(uhmm_dma_submit(dma, &b), 0);
		ASSERT_EQ(uhmm_dma_wait(dma, &b), -EFAULT);
		ASSERT_EQ(b.error_index, 1);
		ASSERT_MEMEQ(ad, a, ps());
		ASSERT_MEMEQ(dst, src, hole_chunk);
		ASSERT_MEMEQ(dst + hole_chunk + cs, src + hole_chunk + cs,
			     len - hole_chunk - cs);
		ASSERT_EQ(uhmm_dma_destroy(dma), 0);
	}
	munmap(src, hole);
	munmap(src + hole + ps(), len - hole - ps());
	munmap(dst, len);
	munmap(a, ps());
	munmap(ad, ps());
}

/* ------------------------------------------------------------------ */
/* completion callbacks                                                */
/* ------------------------------------------------------------------ */

#define NCB 100

/* Each batch's callback runs exactly once, on an engine thread. */
TEST(done_once_on_engine_thread)
{
	size_t len = NCB * 8192;
	unsigned char *src = map_anon(len, RW), *dst = map_anon(len, RW);

	ASSERT_NOT_NULL(src);
	ASSERT_NOT_NULL(dst);
	pat(src, len, 3);
	for (size_t e = 0; e < NENGINES; e++) {
		struct uhmm_dma *dma = engine(engines[e]);
		static struct done_rec r[NCB];
		static struct uhmm_dma_batch b[NCB];
		static struct uhmm_dma_desc d[NCB];

		memset(r, 0, sizeof(r));
		memset(b, 0, sizeof(b));
		memset(dst, 0, len);
		for (size_t i = 0; i < NCB; i++) {
			d[i] = (struct uhmm_dma_desc){ dst + i * 8192,
						       src + i * 8192,
						       1 + i * 81 };
			b[i] = (struct uhmm_dma_batch){ .desc = &d[i], .n = 1,
							.done = rec_done,
							.priv = &r[i] };
			ASSERT_EQ(uhmm_dma_submit(dma, &b[i]), 0);
		}
		/* Wait in reverse: completion order is the engine's. */
		for (size_t i = NCB; i-- > 0;) {
			ASSERT_EQ(uhmm_dma_wait(dma, &b[i]), 0);
			ASSERT_EQ(r[i].calls, 1);
			ASSERT_EQ(!!pthread_equal(r[i].thread, pthread_self()),
				  engines[e] == 0);
			ASSERT_MEMEQ(d[i].dst, d[i].src, d[i].len);
		}
		ASSERT_EQ(uhmm_dma_destroy(dma), 0);
		for (size_t i = 0; i < NCB; i++)
			ASSERT_EQ(r[i].calls, 1);	/* and not again */
	}
	munmap(src, len);
	munmap(dst, len);
}

/* The callback submits the next batch of a chain. */
#define CHAIN 50

struct chain {
	struct uhmm_dma *dma;
	struct uhmm_dma_batch b[CHAIN];
	struct uhmm_dma_desc d[CHAIN];
	int calls[CHAIN];
	int rc[CHAIN];
};

static void chain_done(struct uhmm_dma_batch *b)
{
	struct chain *c = b->priv;
	size_t i = (size_t)(b - c->b);

	c->calls[i]++;
	if (i + 1 < CHAIN)
		c->rc[i + 1] = uhmm_dma_submit(c->dma, &c->b[i + 1]);
}

static void chain_run(unsigned int nthreads, bool destroy_at_once)
{
	size_t seg = 300 * 1024, len = CHAIN * seg;
	unsigned char *src = map_anon(len, RW), *dst = map_anon(len, RW);
	struct chain *c = calloc(1, sizeof(*c));

	ASSERT_NOT_NULL(src);
	ASSERT_NOT_NULL(dst);
	ASSERT_NOT_NULL(c);
	pat(src, len, 44);
	c->dma = engine(nthreads);
	for (size_t i = 0; i < CHAIN; i++) {
		/* Each copies one segment; more than one chunk. */
		c->d[i] = (struct uhmm_dma_desc){ dst + i * seg, src + i * seg,
						  seg - i };
		c->b[i] = (struct uhmm_dma_batch){ .desc = &c->d[i], .n = 1,
						   .done = chain_done, .priv = c };
		c->rc[i] = -1;
	}
	c->rc[0] = uhmm_dma_submit(c->dma, &c->b[0]);
	ASSERT_EQ(c->rc[0], 0);
	if (destroy_at_once) {
		/* Destroy waits for the whole chain, follow-ups included. */
		ASSERT_EQ(uhmm_dma_destroy(c->dma), 0);
	}
	for (size_t i = 0; i < CHAIN; i++) {
		if (!destroy_at_once) {
			/* b[i] was submitted once b[i - 1] completed. */
			if (i)
				ASSERT_EQ(uhmm_dma_wait(c->dma, &c->b[i - 1]), 0);
			ASSERT_EQ(c->rc[i], 0);
			ASSERT_EQ(uhmm_dma_wait(c->dma, &c->b[i]), 0);
		}
		ASSERT_EQ(c->rc[i], 0);
		ASSERT_TRUE(uhmm_dma_done(&c->b[i]));
		ASSERT_EQ(c->calls[i], 1);
		ASSERT_MEMEQ(c->d[i].dst, c->d[i].src, c->d[i].len);
	}
	if (!destroy_at_once)
		ASSERT_EQ(uhmm_dma_destroy(c->dma), 0);
	free(c);
	munmap(src, len);
	munmap(dst, len);
}

TEST(done_submits_followup_sync)     { chain_run(0, false); }
TEST(done_submits_followup_1thread)  { chain_run(1, false); }
TEST(done_submits_followup_2threads) { chain_run(2, false); }

/* A callback that blocks until released: done stays false, resubmit -EBUSY. */
static void blocking_done(struct uhmm_dma_batch *b)
{
	struct done_rec *r = b->priv;

	__atomic_store_n(&r->entered, 1, __ATOMIC_RELEASE);
	while (!__atomic_load_n(&r->release, __ATOMIC_ACQUIRE))
		sched_yield();
	/* Still in flight: resubmitting itself is refused. */
	r->next_rc = uhmm_dma_submit(r->dma, b);
	r->calls++;
}

TEST(done_polling_and_busy)
{
	struct uhmm_dma *dma = engine(2);
	struct xfer x;
	struct uhmm_dma_desc d;
	struct done_rec r = { .dma = dma };
	struct uhmm_dma_batch b = { .desc = &d, .n = 1, .done = blocking_done,
				    .priv = &r };
	unsigned long polls = 0;

	xfer_setup(&x, 16 << 20, 0, 1, 12);
	d = (struct uhmm_dma_desc){ x.dst + x.doff, x.src + x.soff, x.len };
	ASSERT_FALSE(uhmm_dma_done(&b));
	ASSERT_EQ(uhmm_dma_submit(dma, &b), 0);
	ASSERT_EQ(uhmm_dma_submit(dma, &b), -EBUSY);	/* in flight */
	while (!__atomic_load_n(&r.entered, __ATOMIC_ACQUIRE))
		sched_yield();
	/* Copies finished, callback running: not done yet. */
	ASSERT_FALSE(uhmm_dma_done(&b));
	ASSERT_EQ(uhmm_dma_submit(dma, &b), -EBUSY);
	__atomic_store_n(&r.release, 1, __ATOMIC_RELEASE);
	while (!uhmm_dma_done(&b)) {
		polls++;
		sched_yield();
	}
	ASSERT_EQ(b.status, 0);
	ASSERT_EQ(r.calls, 1);
	ASSERT_EQ(r.next_rc, -EBUSY);
	xfer_check(&x);
	TH_LOG("%lu polls", polls);

	/* Plain polling of a batch without callback, on every engine. */
	for (size_t e = 0; e < NENGINES; e++) {
		struct uhmm_dma *p = engine(engines[e]);
		struct uhmm_dma_batch pb = { .desc = &d, .n = 1 };

		memset(x.dst, 0xee, x.map);
		ASSERT_EQ(uhmm_dma_submit(p, &pb), 0);
		while (!uhmm_dma_done(&pb))
			sched_yield();
		ASSERT_EQ(pb.status, 0);
		xfer_check(&x);
		ASSERT_EQ(uhmm_dma_wait(p, &pb), 0);	/* done: returns at once */
		ASSERT_EQ(uhmm_dma_destroy(p), 0);
	}
	xfer_free(&x);
	ASSERT_EQ(uhmm_dma_destroy(dma), 0);
}

/* Several threads wait for one batch. */
struct waiter {
	struct uhmm_dma *dma;
	struct uhmm_dma_batch *b;
	int rc;
};

static void *waiter_main(void *arg)
{
	struct waiter *w = arg;

	w->rc = uhmm_dma_wait(w->dma, w->b);
	return NULL;
}

TEST(several_waiters)
{
	struct uhmm_dma *dma = engine(1);
	struct xfer x;
	struct uhmm_dma_desc d;
	struct uhmm_dma_batch b = { .desc = &d, .n = 1 };
	struct waiter w[4];
	pthread_t t[4];

	xfer_setup(&x, 16 << 20, 2, 2, 13);
	d = (struct uhmm_dma_desc){ x.dst + x.doff, x.src + x.soff, x.len };
	ASSERT_EQ(uhmm_dma_submit(dma, &b), 0);
	for (int i = 0; i < 4; i++) {
		w[i] = (struct waiter){ dma, &b, 1 };
		ASSERT_EQ(pthread_create(&t[i], NULL, waiter_main, &w[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		ASSERT_EQ(pthread_join(t[i], NULL), 0);
		ASSERT_EQ(w[i].rc, 0);
	}
	xfer_check(&x);
	xfer_free(&x);
	ASSERT_EQ(uhmm_dma_destroy(dma), 0);
}

static struct uhmm_dma *self_dma;
static int self_destroy_rc = 1;

static void destroy_done(struct uhmm_dma_batch *b)
{
	(void)b;
	self_destroy_rc = uhmm_dma_destroy(self_dma);
}

TEST(destroy_from_callback_refused)
{
	struct uhmm_dma_batch b = { .done = destroy_done };

	self_dma = engine(2);
	ASSERT_EQ(uhmm_dma_submit(self_dma, &b), 0);
	ASSERT_EQ(uhmm_dma_wait(self_dma, &b), 0);
	ASSERT_EQ(self_destroy_rc, -EDEADLK);
	ASSERT_EQ(uhmm_dma_destroy(self_dma), 0);
}

/* ------------------------------------------------------------------ */
/* destroy with work in flight                                         */
/* ------------------------------------------------------------------ */

#define NFLIGHT 24

static void destroy_in_flight_on(unsigned int nthreads)
{
	size_t seg = (2 << 20) + 123, len = NFLIGHT * seg;
	unsigned char *src = map_anon(len, RW), *dst = map_anon(len, RW);
	struct uhmm_dma *dma = engine(nthreads);
	struct done_rec r[NFLIGHT] = { { 0 } };
	struct uhmm_dma_batch b[NFLIGHT];
	struct uhmm_dma_desc d[NFLIGHT][3];

	ASSERT_NOT_NULL(src);
	ASSERT_NOT_NULL(dst);
	pat(src, len, 31);
	memset(dst, 0xee, len);
	for (size_t i = 0; i < NFLIGHT; i++) {
		unsigned char *s = src + i * seg, *t = dst + i * seg;

		/* A large piece and two small ones per batch. */
		d[i][0] = (struct uhmm_dma_desc){ t, s, seg - 200 };
		d[i][1] = (struct uhmm_dma_desc){ t + seg - 200, s + seg - 200, 100 };
		d[i][2] = (struct uhmm_dma_desc){ t + seg - 100, s + seg - 100, 100 };
		b[i] = (struct uhmm_dma_batch){ .desc = d[i], .n = 3,
						.done = rec_done, .priv = &r[i] };
		ASSERT_EQ(uhmm_dma_submit(dma, &b[i]), 0);
	}
	ASSERT_EQ(uhmm_dma_destroy(dma), 0);
	for (size_t i = 0; i < NFLIGHT; i++) {
		ASSERT_TRUE(uhmm_dma_done(&b[i]));
		ASSERT_EQ(b[i].status, 0);
		ASSERT_EQ(r[i].calls, 1);
	}
	ASSERT_MEMEQ(dst, src, len);
	munmap(src, len);
	munmap(dst, len);
}

TEST(destroy_in_flight_1thread)  { destroy_in_flight_on(1); }
TEST(destroy_in_flight_4threads) { destroy_in_flight_on(4); }
TEST(destroy_in_flight_chain)    { chain_run(2, true); }

/* ------------------------------------------------------------------ */
/* stress: parallel submitters                                         */
/* ------------------------------------------------------------------ */

#define SUBMITTERS 4
#define PER_SUBMITTER 200
#define MAXDESC 24
#define SBUF (4 << 20)

struct submitter {
	struct uhmm_dma *dma;
	uint32_t seed;
	unsigned char *src, *dst;	/* SBUF each; dst in two halves */
	unsigned long bytes;
};

static uint32_t xorshift(uint32_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

/*
 * Fill half @h of the destination with a batch of random copies: random
 * source offsets, mostly small sizes, sometimes several chunks.
 */
static void stress_batch(struct submitter *s, struct uhmm_dma_batch *b,
			 struct uhmm_dma_desc *d, int h)
{
	size_t n = 1 + xorshift(&s->seed) % MAXDESC, at = 0, half = SBUF / 2;
	unsigned char *base = s->dst + h * half;

	for (size_t i = 0; i < n; i++) {
		uint32_t r = xorshift(&s->seed);
		size_t len = r % 8 == 0 ? (r >> 8) % (600 << 10) :
			     (r >> 8) % (16 << 10);

		if (at + len > half)
			len = half - at;
		d[i].dst = base + at;
		d[i].src = s->src + xorshift(&s->seed) % (SBUF - len + 1);
		d[i].len = len;
		at += len;
	}
	memset(base, (int)(s->seed & 0xff), at);
	memset(b, 0, sizeof(*b));
	b->desc = d;
	b->n = n;
}

static void stress_check(struct submitter *s, struct uhmm_dma_batch *b)
{
	ASSERT_EQ(uhmm_dma_wait(s->dma, b), 0);
	for (size_t i = 0; i < b->n; i++) {
		ASSERT_MEMEQ(b->desc[i].dst, b->desc[i].src, b->desc[i].len);
		s->bytes += b->desc[i].len;
	}
}

static void *submitter_main(void *arg)
{
	struct submitter *s = arg;
	struct uhmm_dma_batch b[2];
	struct uhmm_dma_desc d[2][MAXDESC];

	/* Two batches in flight: submit one half while the other runs. */
	for (int k = 0; k < PER_SUBMITTER; k++) {
		int h = k & 1;

		if (k >= 2)
			stress_check(s, &b[h]);
		stress_batch(s, &b[h], d[h], h);
		ASSERT_EQ(uhmm_dma_submit(s->dma, &b[h]), 0);
	}
	stress_check(s, &b[PER_SUBMITTER & 1]);
	stress_check(s, &b[(PER_SUBMITTER + 1) & 1]);
	return NULL;
}

static void stress_on(unsigned int nthreads)
{
	struct uhmm_dma *dma = engine(nthreads);
	struct submitter s[SUBMITTERS];
	pthread_t t[SUBMITTERS];
	unsigned long total = 0;

	for (int i = 0; i < SUBMITTERS; i++) {
		s[i] = (struct submitter){ .dma = dma, .seed = 2463534242u + (uint32_t)i };
		s[i].src = map_anon(SBUF, RW);
		s[i].dst = map_anon(SBUF, RW);
		ASSERT_NOT_NULL(s[i].src);
		ASSERT_NOT_NULL(s[i].dst);
		pat(s[i].src, SBUF, (uint32_t)i + 1000);
	}
	for (int i = 0; i < SUBMITTERS; i++)
		ASSERT_EQ(pthread_create(&t[i], NULL, submitter_main, &s[i]), 0);
	for (int i = 0; i < SUBMITTERS; i++) {
		ASSERT_EQ(pthread_join(t[i], NULL), 0);
		total += s[i].bytes;
		munmap(s[i].src, SBUF);
		munmap(s[i].dst, SBUF);
	}
	TH_LOG("%u threads: %lu MiB copied and checked", nthreads, total >> 20);
	ASSERT_GT(total, 0);
	ASSERT_EQ(uhmm_dma_destroy(dma), 0);
}

TEST_TIMEOUT(stress_submitters_sync, 120)     { stress_on(0); }
TEST_TIMEOUT(stress_submitters_2threads, 120) { stress_on(2); }
TEST_TIMEOUT(stress_submitters_8threads, 120) { stress_on(8); }
