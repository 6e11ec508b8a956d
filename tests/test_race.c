/* SPDX-License-Identifier: MIT */
/*
 * Races between mapping changes and device access: munmap and mprotect
 * against dmirror READ/WRITE, uhmm_range_fault() and uhmm_copy_nofault(),
 * and notifier insert/remove against invalidations. Each loop is bounded
 * in time and iterations; the checks are on data and return codes, never
 * on timing.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <uhmm/dmirror.h>
#include <uhmm/uhmm.h>

#include "harness.h"

/*
 * Under AddressSanitizer or ThreadSanitizer the sanitizer's own mmaps
 * (stack depot, allocator regions, shadow), made on behalf of any malloc,
 * can land in an application's hole; uhmm cannot steer them, so hole
 * checks only log there, and a READ that found the sanitizer's memory in
 * the hole is not a wrong answer.
 */
#define UNDER_ASAN (UTIL_ASAN || UTIL_TSAN)
#include "util.h"

#define NP 4			/* pages in the racing region */
#define RUN_MS 2000		/* each race runs at most this long */
#define MAX_ITERS 5000

/*
 * An address for the racing region: reserved, then freed, between two
 * PROT_NONE guard mappings that stay, so the hole is exactly NP pages.
 */
static char *reserve_hole(char **guard)
{
	unsigned long len = (NP + 2) * ps();
	char *g = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (g == MAP_FAILED)
		return NULL;
	if (munmap(g + ps(), NP * ps()))
		return NULL;
	*guard = g;
	return g + ps();
}

static void release_hole(char *guard)
{
	munmap(guard, (NP + 2) * ps());
}

/* ------------------------------------------------------------------ */
/* The mapper: maps, fills with its generation, unmaps, again           */
/* ------------------------------------------------------------------ */

struct mapper {
	char *addr;
	atomic_long gen;	/* generation mapped (or last mapped) */
	atomic_int stop;
	atomic_int eexist;	/* MAP_FIXED_NOREPLACE found something there */
	atomic_int other_err;
	atomic_long iters;
	bool fill;
};

static uint64_t word(long gen, unsigned long k)
{
	return ((uint64_t)gen << 32) | (uint32_t)k;
}

/*
 * With @fill, a generation's data appears at once: it is written in a
 * staging mapping and mremap()ed over a PROT_NONE placeholder, so that a
 * device copy never races the CPU stores that fill the page (that would
 * tear words, as it would for a kernel device too).
 */
static void *mapper_thread(void *arg)
{
	struct mapper *m = arg;
	unsigned long len = NP * ps();
	long stop = now_ms() + RUN_MS;

	for (long g = 1; g <= MAX_ITERS && now_ms() < stop &&
	     !atomic_load(&m->stop); g++) {
		char *q = mmap(m->addr, len, m->fill ? PROT_NONE : RW,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
		if (q == MAP_FAILED || q != m->addr) {
			if (q == MAP_FAILED && errno == EEXIST)
				atomic_fetch_add(&m->eexist, 1);
			else
				atomic_fetch_add(&m->other_err, 1);
			if (q != MAP_FAILED)
				munmap(q, len);
			break;
		}
		if (m->fill) {
			uint64_t *w = mmap(NULL, len, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (w == MAP_FAILED) {
				atomic_fetch_add(&m->other_err, 1);
				break;
			}
			for (unsigned long k = 0; k < len / sizeof(uint64_t); k++)
				w[k] = word(g, k);
			atomic_store(&m->gen, g);
			if (mremap(w, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, q) != q) {
				atomic_fetch_add(&m->other_err, 1);
				munmap(w, len);
				munmap(q, len);
				break;
			}
		} else {
			atomic_store(&m->gen, g);
		}
		munmap(q, len);
		atomic_fetch_add(&m->iters, 1);
	}
	atomic_store(&m->stop, 1);
	return NULL;
}

/* ------------------------------------------------------------------ */
/* dmirror READ against munmap                                          */
/* ------------------------------------------------------------------ */

struct reader {
	struct mapper *m;
	struct uhmm_dmirror *dm;
	uint64_t *buf;		/* NP pages, mapped before the hole is made */
	long ok, efault, badrc, lastrc;
	long bad_word;		/* a word no generation wrote (zeros included) */
	long stale;		/* data of a generation unmapped before the READ */
	long torn;		/* one page mixing two generations */
	uint64_t first_bad, first_bad_k;
	long first_bad_g0, first_bad_g1;
};

static void *reader_thread(void *arg)
{
	struct reader *r = arg;
	uint64_t *buf = r->buf;
	struct uhmm_dmirror_cmd c;

	while (!atomic_load(&r->m->stop)) {
		long g0 = atomic_load(&r->m->gen);
		int rc = dcmd(r->dm, UHMM_DMIRROR_READ, r->m->addr, buf, NP, &c);
		long g1 = atomic_load(&r->m->gen);

		if (rc == -EFAULT) {
			r->efault++;
			continue;
		}
		if (rc != 0) {
			r->badrc++;
			r->lastrc = rc;
			continue;
		}
		r->ok++;
		for (unsigned long pg = 0; pg < NP; pg++) {
			long page_gen = 0;
			for (unsigned long k = pg * ps() / 8; k < (pg + 1) * ps() / 8; k++) {
				uint64_t w = buf[k];
				long g = (long)(w >> 32);
				if ((uint32_t)w != (uint32_t)k || g < 1 || g > g1) {
					if (!r->bad_word++) {
						r->first_bad = w;
						r->first_bad_k = k;
						r->first_bad_g0 = g0;
						r->first_bad_g1 = g1;
					}
					continue;
				}
				if (g < g0)
					r->stale++;
				if (page_gen && g != page_gen)
					r->torn++;
				page_gen = g;
			}
		}
	}
	return NULL;
}

TEST_TIMEOUT(munmap_vs_dmirror_read, 60)
{
	struct mapper m = { .fill = true };
	struct reader r[2];
	pthread_t tm, tr[2];
	struct uhmm_dmirror *dm;
	char *guard;

	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	for (int i = 0; i < 2; i++) {
		memset(&r[i], 0, sizeof(r[i]));
		r[i].m = &m;
		r[i].dm = dm;
		r[i].buf = mmap(NULL, NP * ps(), RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		ASSERT_TRUE(r[i].buf != MAP_FAILED);
	}
	m.addr = reserve_hole(&guard);
	ASSERT_NOT_NULL(m.addr);
	ASSERT_EQ(pthread_create(&tm, NULL, mapper_thread, &m), 0);
	for (int i = 0; i < 2; i++)
		ASSERT_EQ(pthread_create(&tr[i], NULL, reader_thread, &r[i]), 0);
	ASSERT_EQ(pthread_join(tm, NULL), 0);
	for (int i = 0; i < 2; i++)
		ASSERT_EQ(pthread_join(tr[i], NULL), 0);

	for (int i = 0; i < 2; i++) {
		TH_LOG("reader %d: %ld ok, %ld -EFAULT, %ld other (last %ld), %ld torn pages",
		       i, r[i].ok, r[i].efault, r[i].badrc, r[i].lastrc, r[i].torn);
		if (r[i].bad_word)
			TH_LOG("reader %d: %ld bad words; first: word %lu = 0x%016llx, "
			       "generations %ld..%ld", i, r[i].bad_word,
			       (unsigned long)r[i].first_bad_k,
			       (unsigned long long)r[i].first_bad, r[i].first_bad_g0,
			       r[i].first_bad_g1);
		ASSERT_EQ(r[i].badrc, 0);
		if (!UNDER_ASAN || atomic_load(&m.eexist) == 0) {
			ASSERT_EQ(r[i].bad_word, 0);
			ASSERT_EQ(r[i].stale, 0);
		}
	}
	TH_LOG("%ld map/unmap generations", atomic_load(&m.iters));
	/* uhmm never puts its own memory in the application's hole. */
	if (!UNDER_ASAN)
		ASSERT_EQ(atomic_load(&m.eexist), 0);
	ASSERT_EQ(atomic_load(&m.other_err), 0);
	ASSERT_GT(atomic_load(&m.iters), 0);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	release_hole(guard);
	for (int i = 0; i < 2; i++)
		munmap(r[i].buf, NP * ps());
}

/* ------------------------------------------------------------------ */
/* dmirror WRITE against munmap                                         */
/* ------------------------------------------------------------------ */

struct writer {
	struct mapper *m;
	struct uhmm_dmirror *dm;
	char *buf;		/* NP pages, mapped before the hole is made */
	long ok, efault, eperm, badrc, lastrc;
};

static void *writer_thread(void *arg)
{
	struct writer *w = arg;
	char *buf = w->buf;
	struct uhmm_dmirror_cmd c;

	memset(buf, 0x6b, NP * ps());
	while (!atomic_load(&w->m->stop)) {
		int rc = dcmd(w->dm, UHMM_DMIRROR_WRITE, w->m->addr, buf, NP, &c);
		if (rc == 0)
			w->ok++;
		else if (rc == -EFAULT)
			w->efault++;
		else if (rc == -EPERM && UNDER_ASAN)
			w->eperm++;	/* a sanitizer's read-only map in the hole */
		else {
			w->badrc++;
			w->lastrc = rc;
		}
	}
	return NULL;
}

TEST_TIMEOUT(munmap_vs_dmirror_write, 60)
{
	struct mapper m = { .fill = false };
	struct writer w = { 0 };
	pthread_t tm, tw;
	char *guard;

	ASSERT_EQ(uhmm_dmirror_open(1, &w.dm), 0);
	w.m = &m;
	w.buf = mmap(NULL, NP * ps(), RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_TRUE(w.buf != MAP_FAILED);
	m.addr = reserve_hole(&guard);
	ASSERT_NOT_NULL(m.addr);
	ASSERT_EQ(pthread_create(&tm, NULL, mapper_thread, &m), 0);
	ASSERT_EQ(pthread_create(&tw, NULL, writer_thread, &w), 0);
	ASSERT_EQ(pthread_join(tm, NULL), 0);
	ASSERT_EQ(pthread_join(tw, NULL), 0);
	TH_LOG("writer: %ld ok, %ld -EFAULT, %ld -EPERM, %ld other (last %ld); %ld generations, %d holes taken",
	       w.ok, w.efault, w.eperm, w.badrc, w.lastrc, atomic_load(&m.iters),
	       (int)atomic_load(&m.eexist));
	ASSERT_EQ(w.badrc, 0);
	if (!UNDER_ASAN)
		ASSERT_EQ(atomic_load(&m.eexist), 0);
	ASSERT_EQ(atomic_load(&m.other_err), 0);
	/* The guards were never written through. */
	ASSERT_EQ(mprotect(guard, ps(), PROT_READ), 0);
	ASSERT_EQ(*(volatile char *)guard, 0);
	ASSERT_EQ(uhmm_dmirror_close(w.dm), 0);
	release_hole(guard);
	munmap(w.buf, NP * ps());
}

/* ------------------------------------------------------------------ */
/* dmirror WRITE against mprotect: no store lands on a read-only page   */
/* ------------------------------------------------------------------ */

struct prot_race {
	char *p;
	struct uhmm_dmirror *dm;
	atomic_int stop;
	long ok, eperm, badrc, lastrc;
	long changed_while_ro;	/* content moved while PROT_READ */
	long rounds;
};

static void *prot_writer(void *arg)
{
	struct prot_race *pr = arg;
	unsigned long len = NP * ps();
	char *buf = mmap(NULL, len, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct uhmm_dmirror_cmd c;
	unsigned char seed = 1;

	if (buf == MAP_FAILED) {
		pr->badrc++;
		return NULL;
	}
	while (!atomic_load(&pr->stop)) {
		memset(buf, seed++, len);
		int rc = dcmd(pr->dm, UHMM_DMIRROR_WRITE, pr->p, buf, NP, &c);
		if (rc == 0)
			pr->ok++;
		else if (rc == -EPERM || rc == -EFAULT)
			pr->eperm++;
		else {
			pr->badrc++;
			pr->lastrc = rc;
		}
	}
	munmap(buf, len);
	return NULL;
}

TEST_TIMEOUT(mprotect_vs_dmirror_write, 60)
{
	struct prot_race pr = { 0 };
	unsigned long len = NP * ps();
	char *snap = mmap(NULL, len, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	pthread_t t;

	pr.p = mmap(NULL, len, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_TRUE(pr.p != MAP_FAILED);
	ASSERT_TRUE(snap != MAP_FAILED);
	memset(pr.p, 0, len);
	ASSERT_EQ(uhmm_dmirror_open(0, &pr.dm), 0);
	ASSERT_EQ(pthread_create(&t, NULL, prot_writer, &pr), 0);
	long stop = now_ms() + RUN_MS;
	for (int i = 0; i < MAX_ITERS && now_ms() < stop; i++) {
		ASSERT_EQ(mprotect(pr.p, len, PROT_READ), 0);
		/* Once mprotect returned, nothing may change the pages. */
		memcpy(snap, pr.p, len);
		for (int spin = 0; spin < 3; spin++) {
			usleep(50);
			if (memcmp(snap, pr.p, len)) {
				pr.changed_while_ro++;
				break;
			}
		}
		ASSERT_EQ(mprotect(pr.p, len, RW), 0);
		usleep(50);
		pr.rounds++;
	}
	atomic_store(&pr.stop, 1);
	ASSERT_EQ(pthread_join(t, NULL), 0);
	TH_LOG("%ld rounds; writes: %ld ok, %ld refused, %ld other (last %ld)",
	       pr.rounds, pr.ok, pr.eperm, pr.badrc, pr.lastrc);
	ASSERT_EQ(pr.changed_while_ro, 0);
	ASSERT_EQ(pr.badrc, 0);
	ASSERT_EQ(uhmm_dmirror_close(pr.dm), 0);
	munmap(pr.p, len);
	munmap(snap, len);
}

/* ------------------------------------------------------------------ */
/* uhmm_range_fault and uhmm_copy_nofault against munmap                */
/* ------------------------------------------------------------------ */

struct drv {
	pthread_mutex_t lock;
	atomic_long calls;
};

static bool drv_invalidate(struct uhmm_interval_notifier *sub,
			   const struct uhmm_notifier_range *range,
			   unsigned long cur_seq)
{
	struct drv *d = uhmm_interval_notifier_priv(sub);

	(void)range;
	pthread_mutex_lock(&d->lock);
	uhmm_interval_set_seq(sub, cur_seq);
	pthread_mutex_unlock(&d->lock);
	atomic_fetch_add(&d->calls, 1);
	return true;
}

static const struct uhmm_interval_notifier_ops drv_ops = {
	.invalidate = drv_invalidate,
};

struct faulter {
	struct mapper *m;
	struct uhmm_interval_notifier *sub;
	struct drv *d;
	long ok, busy, efault, badrc, lastrc, bad_out, copies, copy_bad;
};

static void *faulter_thread(void *arg)
{
	struct faulter *f = arg;
	unsigned long a = (unsigned long)f->m->addr;
	uint64_t pfns[NP];
	char tmp[64];

	while (!atomic_load(&f->m->stop)) {
		struct uhmm_range r = {
			.notifier = f->sub,
			.start = a,
			.end = a + NP * ps(),
			.hmm_pfns = pfns,
			.default_flags = UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE,
		};
		memset(pfns, 0, sizeof(pfns));
		r.notifier_seq = uhmm_interval_read_begin(f->sub);
		int rc = uhmm_range_fault(&r);
		if (rc == -EBUSY) {
			f->busy++;
			continue;
		}
		if (rc == -EFAULT) {
			f->efault++;
			continue;
		}
		if (rc != 0) {
			f->badrc++;
			f->lastrc = rc;
			continue;
		}
		pthread_mutex_lock(&f->d->lock);
		if (!uhmm_interval_read_retry(f->sub, r.notifier_seq)) {
			f->ok++;
			/* The translations are valid under the lock. */
			for (int i = 0; i < NP; i++)
				if ((pfns[i] & (UHMM_PFN_VALID | UHMM_PFN_WRITE)) !=
				    (UHMM_PFN_VALID | UHMM_PFN_WRITE) ||
				    uhmm_pfn_to_addr(pfns[i]) != (char *)a + (unsigned long)i * ps())
					f->bad_out++;
		}
		pthread_mutex_unlock(&f->d->lock);
		/* Device access through the translation: never a signal. */
		int c = uhmm_copy_nofault(tmp, uhmm_pfn_to_addr(pfns[NP - 1]), sizeof(tmp), NULL);
		if (c != 0 && c != -EFAULT)
			f->copy_bad++;
		f->copies++;
	}
	return NULL;
}

TEST_TIMEOUT(munmap_vs_range_fault, 60)
{
	struct mapper m = { .fill = true };
	struct drv d = { .lock = PTHREAD_MUTEX_INITIALIZER };
	struct faulter f[2];
	pthread_t tm, tf[2];
	struct uhmm_interval_notifier *sub;
	char *guard;

	m.addr = reserve_hole(&guard);
	ASSERT_NOT_NULL(m.addr);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, (unsigned long)m.addr,
						NP * ps(), &drv_ops, &d), 0);
	for (int i = 0; i < 2; i++) {
		memset(&f[i], 0, sizeof(f[i]));
		f[i].m = &m;
		f[i].sub = sub;
		f[i].d = &d;
	}
	ASSERT_EQ(pthread_create(&tm, NULL, mapper_thread, &m), 0);
	for (int i = 0; i < 2; i++)
		ASSERT_EQ(pthread_create(&tf[i], NULL, faulter_thread, &f[i]), 0);
	ASSERT_EQ(pthread_join(tm, NULL), 0);
	for (int i = 0; i < 2; i++)
		ASSERT_EQ(pthread_join(tf[i], NULL), 0);
	for (int i = 0; i < 2; i++) {
		TH_LOG("faulter %d: %ld ok, %ld -EBUSY, %ld -EFAULT, %ld other (last %ld)",
		       i, f[i].ok, f[i].busy, f[i].efault, f[i].badrc, f[i].lastrc);
		/*
		 * Under ASan its allocator may map into the hole (eexist):
		 * a read-only mapping of its there gives -EPERM, as the
		 * kernel's hmm_range_fault() does for a write request.
		 */
		if (!UNDER_ASAN || atomic_load(&m.eexist) == 0)
			ASSERT_EQ(f[i].badrc, 0);
		else if (f[i].badrc)
			ASSERT_EQ(f[i].lastrc, -EPERM);
		ASSERT_EQ(f[i].bad_out, 0);
		ASSERT_EQ(f[i].copy_bad, 0);
	}
	TH_LOG("%ld generations, %ld invalidations", atomic_load(&m.iters),
	       atomic_load(&d.calls));
	if (!UNDER_ASAN)
		ASSERT_EQ(atomic_load(&m.eexist), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(sub), 0);
	release_hole(guard);
}

/* ------------------------------------------------------------------ */
/* Notifier insert/remove against invalidations                         */
/* ------------------------------------------------------------------ */

#define NSUB 4

struct churn_sub {
	atomic_int removed;	/* set once remove() returned */
	atomic_int late;	/* callbacks after that */
	atomic_int in_cb;
};

static bool churn_invalidate(struct uhmm_interval_notifier *sub,
			     const struct uhmm_notifier_range *range,
			     unsigned long cur_seq)
{
	struct churn_sub *cs = uhmm_interval_notifier_priv(sub);

	(void)range;
	atomic_fetch_add(&cs->in_cb, 1);
	uhmm_interval_set_seq(sub, cur_seq);
	if (atomic_load(&cs->removed))
		atomic_fetch_add(&cs->late, 1);
	usleep(20);	/* widen the window for remove() to race with us */
	if (atomic_load(&cs->removed))
		atomic_fetch_add(&cs->late, 1);
	atomic_fetch_sub(&cs->in_cb, 1);
	return true;
}

static const struct uhmm_interval_notifier_ops churn_ops = {
	.invalidate = churn_invalidate,
};

struct churner {
	struct mapper *m;
	struct churn_sub subs[64];
	long inserts, bad;
};

static void *churner_thread(void *arg)
{
	struct churner *ch = arg;
	unsigned long a = (unsigned long)ch->m->addr;
	uint64_t pfns[NP];

	for (int i = 0; i < 64 && !atomic_load(&ch->m->stop); i++) {
		struct churn_sub *cs = &ch->subs[i];
		struct uhmm_interval_notifier *sub;

		if (uhmm_interval_notifier_insert(&sub, a, NP * ps(), &churn_ops, cs)) {
			ch->bad++;
			continue;
		}
		ch->inserts++;
		/* Fault it so that invalidations reach this notifier. */
		for (int k = 0; k < 20; k++) {
			struct uhmm_range r = {
				.notifier = sub, .start = a, .end = a + NP * ps(),
				.hmm_pfns = pfns, .default_flags = UHMM_PFN_REQ_FAULT,
			};
			r.notifier_seq = uhmm_interval_read_begin(sub);
			int rc = uhmm_range_fault(&r);
			if (rc && rc != -EBUSY && rc != -EFAULT)
				ch->bad++;
		}
		if (uhmm_interval_notifier_remove(sub))
			ch->bad++;
		/* No callback of this notifier runs any more. */
		if (atomic_load(&cs->in_cb))
			ch->bad++;
		atomic_store(&cs->removed, 1);
	}
	return NULL;
}

TEST_TIMEOUT(notifier_churn_vs_munmap, 60)
{
	struct mapper m = { .fill = false };
	struct churner *ch = calloc(NSUB, sizeof(*ch));
	pthread_t tm, tc[NSUB];
	char *guard;

	ASSERT_NOT_NULL(ch);
	m.addr = reserve_hole(&guard);
	ASSERT_NOT_NULL(m.addr);
	ASSERT_EQ(uhmm_init(), 0);
	ASSERT_EQ(pthread_create(&tm, NULL, mapper_thread, &m), 0);
	for (int i = 0; i < NSUB; i++) {
		ch[i].m = &m;
		ASSERT_EQ(pthread_create(&tc[i], NULL, churner_thread, &ch[i]), 0);
	}
	for (int i = 0; i < NSUB; i++)
		ASSERT_EQ(pthread_join(tc[i], NULL), 0);
	atomic_store(&m.stop, 1);
	ASSERT_EQ(pthread_join(tm, NULL), 0);
	long inserts = 0;
	for (int i = 0; i < NSUB; i++) {
		ASSERT_EQ(ch[i].bad, 0);
		inserts += ch[i].inserts;
		for (int k = 0; k < 64; k++)
			ASSERT_EQ(atomic_load(&ch[i].subs[k].late), 0);
	}
	TH_LOG("%ld notifiers inserted and removed, %ld generations", inserts,
	       atomic_load(&m.iters));
	if (!UNDER_ASAN)
		ASSERT_EQ(atomic_load(&m.eexist), 0);
	release_hole(guard);
	free(ch);
}

/* Many threads share one open: concurrent READ/WRITE of disjoint pages. */
struct sharer {
	struct uhmm_dmirror *dm;
	char *p;
	int idx;
	long bad;
};

static void *sharer_thread(void *arg)
{
	struct sharer *s = arg;
	char *page = s->p + (unsigned long)s->idx * ps();
	char *buf = mmap(NULL, ps(), RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct uhmm_dmirror_cmd c;

	if (buf == MAP_FAILED) {
		s->bad++;
		return NULL;
	}
	for (int i = 0; i < 300; i++) {
		memset(buf, (char)(s->idx * 16 + i % 16), ps());
		if (dcmd(s->dm, UHMM_DMIRROR_WRITE, page, buf, 1, &c))
			s->bad++;
		memset(buf, 0, ps());
		if (dcmd(s->dm, UHMM_DMIRROR_READ, page, buf, 1, &c))
			s->bad++;
		for (unsigned long k = 0; k < ps(); k++)
			if (buf[k] != (char)(s->idx * 16 + i % 16)) {
				s->bad++;
				break;
			}
		if (i % 50 == 0)
			madvise(page, ps(), MADV_DONTNEED);
	}
	munmap(buf, ps());
	return NULL;
}

TEST_TIMEOUT(threads_share_one_open, 60)
{
	struct sharer s[6];
	pthread_t t[6];
	struct uhmm_dmirror *dm;
	char *p = mmap(NULL, 6 * ps(), RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ASSERT_TRUE(p != MAP_FAILED);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	for (int i = 0; i < 6; i++) {
		s[i] = (struct sharer){ .dm = dm, .p = p, .idx = i };
		ASSERT_EQ(pthread_create(&t[i], NULL, sharer_thread, &s[i]), 0);
	}
	for (int i = 0; i < 6; i++) {
		ASSERT_EQ(pthread_join(t[i], NULL), 0);
		ASSERT_EQ(s[i].bad, 0);
	}
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(p, 6 * ps());
}
