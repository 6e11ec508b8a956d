/* SPDX-License-Identifier: MIT */
/*
 * Soak test: CPU threads, dmirror devices, a migrator, an unmapper, an
 * mprotect toggler, a forker and EXCLUSIVE takers work on the same
 * buffers at the same time for a given duration, against a per-page model
 * of what each page must hold. `make soak DURATION=s` runs it alone
 * (build/soak [seconds [MiB]]); tests/test_soak.c runs a short one inside
 * `make check`.
 *
 * Every page holds a stamp {magic, buffer, page index, version} and a
 * checksum word, repeated over the page: a torn, lost (stale), misplaced
 * or zeroed page is told apart from the right one. Version 0 is a page of
 * zeros (never written, or unmapped and mapped again). Locked migrations
 * check their data (MIGRATE_TO_DEV read-backs, CPU reads after
 * MIGRATE_TO_SYS); at the end, uhmm's stats must count no device page in
 * use once every device is closed.
 *
 * Locks, in order: the gate (shared by everything that changes page
 * contents or mappings, exclusive for the forker's snapshot), a buffer's
 * map lock (exclusive while it is unmapped, remapped or discarded), its
 * write lock (exclusive while a range of it is read-only), page locks in
 * ascending order. The model of a page changes only under its page lock
 * together with the memory. Migrations and exclusive grants do not change
 * contents: half of them run without page locks, racing CPU and device
 * accesses, which is the point.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uhmm/dmirror.h>
#include <uhmm/stats.h>
#include <uhmm/uhmm.h>

#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SOAK_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SOAK_SANITIZED 1
#endif
#endif
#ifndef SOAK_SANITIZED
#define SOAK_SANITIZED 0
#endif

#if defined(__SANITIZE_ADDRESS__)
#define SOAK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SOAK_ASAN 1
#endif
#endif
#ifndef SOAK_ASAN
#define SOAK_ASAN 0
#endif

#define SOAK_PAGE 4096UL
#define SOAK_WORDS (SOAK_PAGE / sizeof(uint64_t))
#define SOAK_THP_PAGES 512UL
#define SOAK_NBUF 6
#define SOAK_MAXDEV 4
#define SOAK_MAX_BOUNCE 512UL	/* pages: a whole THP block */
#define SOAK_MAX_FAILS 20	/* messages printed before going quiet */
#define SOAK_MAGIC 0x5aULL

struct soak_opts {
	double seconds;		/* how long the workers run */
	unsigned long mib;	/* total size of the buffers */
	double hang_s;		/* an operation longer than this is a hang */
	uint64_t seed;
	bool quiet;		/* no progress lines */
	bool fork_racy;		/* fork with migrations in flight (see
				 * soak_gate_in) */
	bool migrate_racy;	/* half the migrations without page locks
				 * (see soak_step_migrate) */
	bool ro_write_probe;	/* device WRITE into a read-only range
				 * (see soak_step_mprotect) */
	bool unmap_racy;	/* unmap with other buffers in use (see
				 * soak_step_unmap) */
};

enum soak_kind {
	K_CPU_READ, K_CPU_WRITE, K_DEV_READ, K_DEV_WRITE, K_TO_DEV, K_TO_SYS,
	K_REMAP, K_MUNMAP, K_DONTNEED, K_MREMAP, K_MPROTECT, K_FORK,
	K_EXCL, K_CHECKPOINT, K_NKINDS
};

static const char *const soak_kind_name[K_NKINDS] = {
	"cpu_read", "cpu_write", "dev_read", "dev_write", "to_dev", "to_sys",
	"remap", "munmap", "dontneed", "mremap", "mprotect", "fork",
	"exclusive", "checkpoint",
};

struct soak_buf {
	char *base;
	unsigned long npages;
	bool thp;			/* 2 MiB aligned, MADV_HUGEPAGE */
	pthread_rwlock_t map;		/* exclusive: (un)mapping, discarding */
	pthread_rwlock_t wr;		/* exclusive: part of it read-only */
	pthread_mutex_t *plock;		/* per page (stripes: soak_lock_pages) */
	uint32_t *ver;			/* the model: per page, 0 = zeros */
	uint32_t *snap;			/* the forker's copy of ver[] */
};

struct soak_thread {
	const char *name;
	void (*step)(struct soak_thread *t);
	pthread_t tid;
	int dev;			/* index into soak.devs, for devices */
	uint64_t rng;
	char *bounce;			/* SOAK_MAX_BOUNCE pages */
	atomic_long op_start;		/* ms, 0 when between operations */
	atomic_int kind;
	struct soak_buf *cur;		/* the range of the operation under way */
	unsigned long cur_first, cur_n;
};

/*
 * The last operations of every thread, printed for a page found corrupt:
 * which ones covered it, by whom, and when (a diagnosis starts there).
 */
#define SOAK_HIST 8192
struct soak_hist {
	long t0, t1;			/* ms since the start */
	unsigned long first, n;
	short kind, buf, thread;
};

struct soak_dev {
	int id;				/* dmirror device number */
	struct uhmm_dmirror *dm;
};

static struct {
	struct soak_opts o;
	struct soak_buf buf[SOAK_NBUF];
	struct soak_dev devs[SOAK_MAXDEV];
	int ndevs;
	pthread_rwlock_t gate;
	atomic_uint next_ver;
	atomic_int stop;
	atomic_ulong ops[K_NKINDS];
	atomic_ulong pages[K_NKINDS];
	struct soak_hist hist[SOAK_HIST];
	atomic_ulong nhist;
	atomic_ulong fails;
	/* Outcomes that are allowed but worth counting. */
	atomic_ulong busy;		/* a device command gave up: -EBUSY */
	atomic_ulong to_dev_partial;	/* MIGRATE_TO_DEV -ENOENT, allowed */
	atomic_ulong to_dev_ro;		/* locked MIGRATE_TO_DEV while part of
					 * the buffer may be read-only */
	atomic_ulong home_busy;		/* bringing a range home: -EBUSY */
	/* Verified data, in pages. */
	atomic_ulong homed;		/* ranges brought home before a locked
					 * MIGRATE_TO_DEV (MIGRATE_TO_SYS runs) */
	atomic_ulong home_touched;	/* ... pages the CPU wrote for it */
	atomic_ulong home_left;		/* ... still on a device after it */
	atomic_ulong to_dev_folio;	/* locked MIGRATE_TO_DEV -ENOENT: pages
					 * of a THP split since a fork
					 * (soak_to_dev_enoent) */
	atomic_ulong to_dev_folio_pages;
	atomic_ulong to_dev_read_verified; /* ... then read by a device READ */
	atomic_ulong to_dev_retry;	/* ... M4: migrated once more */
	atomic_ulong to_dev_retry_ok;	/* ... and then all landed */
	atomic_ulong to_dev_verified;	/* MIGRATE_TO_DEV read-backs checked */
	atomic_ulong to_sys_verified;	/* pages read by the CPU after a
					 * locked MIGRATE_TO_SYS */
	atomic_ulong excl_held;		/* CHECK_EXCLUSIVE -EPERM before touch */
	atomic_ulong excl_busy;		/* EXCLUSIVE -EBUSY */
	atomic_ulong ro_eperm;		/* WRITE to a read-only range: -EPERM */
	atomic_ulong write_failed;	/* WRITE failed, contents re-read */
	atomic_ulong nosys;		/* migration/exclusive: -ENOSYS */
	struct soak_thread *threads;
	int nthreads;
	bool no_devmem;			/* no migration nor EXCLUSIVE */
	long t0;
} soak;

/* ------------------------------------------------------------ helpers */

static long soak_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static void soak_sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

static uint64_t soak_mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static uint64_t soak_rnd(struct soak_thread *t)
{
	t->rng ^= t->rng << 13;
	t->rng ^= t->rng >> 7;
	t->rng ^= t->rng << 17;
	return t->rng;
}

static bool soak_stopped(void)
{
	return atomic_load_explicit(&soak.stop, memory_order_relaxed);
}

__attribute__((format(printf, 1, 2)))
static void soak_fail(const char *fmt, ...)
{
	unsigned long n = atomic_fetch_add(&soak.fails, 1);
	char msg[512];
	va_list ap;

	atomic_store(&soak.stop, 1);
	if (n >= SOAK_MAX_FAILS)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "soak: FAIL at %.3f s: %s\n",
		(soak_now_ms() - soak.t0) / 1000.0, msg);
}

static void soak_op_begin(struct soak_thread *t, enum soak_kind k)
{
	atomic_store(&t->kind, (int)k);
	atomic_store(&t->op_start, soak_now_ms());
}

static void soak_op_end(struct soak_thread *t, enum soak_kind k,
			unsigned long npages)
{
	unsigned long h = atomic_fetch_add_explicit(&soak.nhist, 1,
						    memory_order_relaxed);
	struct soak_hist *r = &soak.hist[h % SOAK_HIST];

	if (t->cur) {
		r->t0 = atomic_load(&t->op_start) - soak.t0;
		r->t1 = soak_now_ms() - soak.t0;
		r->first = t->cur_first;
		r->n = k == K_MREMAP ? npages : t->cur_n;
		r->kind = (short)k;
		r->buf = (short)(t->cur - soak.buf);
		r->thread = (short)(t - soak.threads);
		t->cur = NULL;
	} else {
		r->n = 0;
	}
	atomic_fetch_add_explicit(&soak.ops[k], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&soak.pages[k], npages, memory_order_relaxed);
	atomic_store(&t->op_start, 0);
}

/* The recorded operations near page @pg of buffer @bi (within 256
 * pages; '*': they covered it), oldest first. Racy by design: printed
 * after a failure, for a diagnosis. */
__attribute__((no_sanitize_thread))
static void soak_print_history(int bi, unsigned long pg)
{
	unsigned long end = atomic_load(&soak.nhist);
	unsigned long h = end > SOAK_HIST ? end - SOAK_HIST : 0;

	for (; h < end; h++) {
		const struct soak_hist *r = &soak.hist[h % SOAK_HIST];

		if (r->n && r->buf == bi && pg + 256 >= r->first &&
		    pg < r->first + r->n + 256)
			fprintf(stderr, "soak:   page history:%c%.3f-%.3f s %s (%s) pages %lu+%lu\n",
				pg >= r->first && pg < r->first + r->n ? '*' : ' ',
				r->t0 / 1000.0, r->t1 / 1000.0, soak_kind_name[r->kind],
				soak.threads[r->thread].name, r->first, r->n);
	}
}

/* One command; *cpages (if not NULL) gets the pages it handled. */
static int soak_cmd_n(struct soak_dev *d, enum uhmm_dmirror_op op,
		      const void *addr, void *ptr, unsigned long npages,
		      unsigned long *cpages)
{
	struct uhmm_dmirror_cmd c = {
		.addr = (uint64_t)(uintptr_t)addr,
		.ptr = (uint64_t)(uintptr_t)ptr,
		.npages = npages,
	};
	int rc = uhmm_dmirror_cmd(d->dm, op, &c);

	if (cpages)
		*cpages = (unsigned long)c.cpages;
	return rc;
}

static int soak_cmd(struct soak_dev *d, enum uhmm_dmirror_op op, const void *addr,
		    void *ptr, unsigned long npages)
{
	return soak_cmd_n(d, op, addr, ptr, npages, NULL);
}

/* ------------------------------------------------------------- stamps */

static uint64_t soak_hdr(int b, unsigned long pg, uint32_t v)
{
	return SOAK_MAGIC << 56 | (uint64_t)(b & 0xff) << 48 |
	       (uint64_t)(pg & 0xffff) << 32 | v;
}

static void soak_fill(void *p, int b, unsigned long pg, uint32_t v)
{
	uint64_t *w = p, h = soak_hdr(b, pg, v);

	if (!v) {
		memset(p, 0, SOAK_PAGE);
		return;
	}
	for (unsigned long k = 0; k < SOAK_WORDS; k += 2) {
		w[k] = h;
		w[k + 1] = soak_mix(h + k);
	}
}

static bool soak_page_ok(const void *p, int b, unsigned long pg, uint32_t v)
{
	const uint64_t *w = p;
	uint64_t h = soak_hdr(b, pg, v);

	if (!v) {
		for (unsigned long k = 0; k < SOAK_WORDS; k++)
			if (w[k])
				return false;
		return true;
	}
	for (unsigned long k = 0; k < SOAK_WORDS; k += 2)
		if (w[k] != h || w[k + 1] != soak_mix(h + k))
			return false;
	return true;
}

/* What a wrong page holds instead, in words. */
static void soak_describe(const void *p, int b, unsigned long pg, uint32_t v,
			  char *out, size_t size)
{
	const uint64_t *w = p;
	uint64_t h = w[0];
	unsigned long bad = 0, zero = 0, first = SOAK_WORDS;
	int fb = (int)(h >> 48 & 0xff);
	unsigned long fpg = (unsigned long)(h >> 32 & 0xffff);
	uint32_t fv = (uint32_t)h;
	const char *what;

	for (unsigned long k = 0; k < SOAK_WORDS; k += 2) {
		bool okw = w[k] == h && w[k + 1] == soak_mix(h + k);

		zero += !w[k] && !w[k + 1];
		if (!okw) {
			bad++;
			if (first == SOAK_WORDS)
				first = k;
		}
	}
	if (zero == SOAK_WORDS / 2)
		what = "zeros (lost page)";
	else if (h >> 56 != SOAK_MAGIC)
		what = "garbage";
	else if (bad)
		what = "torn (records of the page disagree)";
	else if (fb != b || fpg != (pg & 0xffff))
		what = "misplaced (another page's data)";
	else if (fv < v)
		what = "stale version (lost write)";
	else
		what = "version the model never saw committed";
	snprintf(out, size,
		 "buf %d page %lu: expected version %u, found %s: buf %d page %lu version %u, %lu/%lu records differ from record 0 (first at word %lu)",
		 b, pg, v, what, fb, fpg, fv, bad, SOAK_WORDS / 2, first);
}

/*
 * uhmm's own state of a page, for a diagnosis (the soak links libuhmm.a:
 * its internal symbols resolve).
 */
static char *soak_addr(struct soak_buf *b, unsigned long pg);
struct uhmm_rt;
struct uhmm_rt *uhmm__rt_peek(void);
_Atomic uintptr_t *uhmm__pst_entry(struct uhmm_rt *rt, unsigned long vpn,
				   bool create);

/* The page at @addr as the kernel and uhmm see it now. */
__attribute__((no_sanitize_thread))
static void soak_print_state(const char *addr)
{
	unsigned long a = (uintptr_t)addr, vpn = a / SOAK_PAGE;
	struct uhmm_rt *rt = uhmm__rt_peek();
	_Atomic uintptr_t *e = rt ? uhmm__pst_entry(rt, vpn, false) : NULL;
	uint64_t pm = 0;
	char line[256];
	FILE *f;
	int fd = open("/proc/self/pagemap", O_RDONLY);

	if (fd >= 0) {
		if (pread(fd, &pm, sizeof(pm), (off_t)(vpn * sizeof(pm))) != sizeof(pm))
			pm = 0;
		close(fd);
	}
	fprintf(stderr, "soak:   state of %#lx: pagemap %#llx (present %d, uffd-wp %d, exclusive %d), uhmm entry %#lx\n",
		a, (unsigned long long)pm, (int)(pm >> 63 & 1), (int)(pm >> 57 & 1),
		(int)(pm >> 56 & 1), e ? (unsigned long)atomic_load(e) : 0UL);
	f = fopen("/proc/self/maps", "r");
	while (f && fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;

		if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && a + 64 * SOAK_PAGE >= lo &&
		    a < hi + 64 * SOAK_PAGE)
			fprintf(stderr, "soak:   maps: %s", line);
	}
	if (f)
		fclose(f);
}

static bool soak_verify(const void *p, int b, unsigned long pg, uint32_t v,
			const char *who)
{
	char d[400];

	if (soak_page_ok(p, b, pg, v))
		return true;
	soak_describe(p, b, pg, v, d, sizeof(d));
	soak_fail("%s: corruption: %s", who, d);
	soak_print_history(b, pg);
	soak_print_state(soak_addr(&soak.buf[b], pg));
	return false;
}

/* ------------------------------------------------------------- locking */

/*
 * Page locks come in stripes of SOAK_STRIPE pages (the lock of a stripe is
 * that of its first page): a 512-page operation holds 32 of them, which
 * ThreadSanitizer's deadlock detector can follow (at most 64 per thread).
 */
#define SOAK_STRIPE 16UL

static void soak_lock_pages(struct soak_buf *b, unsigned long first,
			    unsigned long n)
{
	for (unsigned long s = first / SOAK_STRIPE;
	     s <= (first + n - 1) / SOAK_STRIPE; s++)
		pthread_mutex_lock(&b->plock[s * SOAK_STRIPE]);
}

static void soak_unlock_pages(struct soak_buf *b, unsigned long first,
			      unsigned long n)
{
	for (unsigned long s = (first + n - 1) / SOAK_STRIPE + 1;
	     s-- > first / SOAK_STRIPE;)
		pthread_mutex_unlock(&b->plock[s * SOAK_STRIPE]);
}

static void soak_rwlock_init(pthread_rwlock_t *l)
{
	pthread_rwlockattr_t a;

	pthread_rwlockattr_init(&a);
	/* Unmapper, toggler and forker must not starve behind readers. */
	pthread_rwlockattr_setkind_np(&a,
				      PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(l, &a);
	pthread_rwlockattr_destroy(&a);
}

/*
 * Accesses that change no contents take the gate too, unless
 * UHMM_SOAK_FORK_RACY=1: a fork() while a migration (or a fault-back) is
 * in flight gives the child holes where the migrating pages are (a uhmm
 * bug: the atfork handler brings device pages home but does not wait for
 * migrations in flight).
 */
static void soak_gate_in(void)
{
	if (!soak.o.fork_racy)
		pthread_rwlock_rdlock(&soak.gate);
}

static void soak_gate_out(void)
{
	if (!soak.o.fork_racy)
		pthread_rwlock_unlock(&soak.gate);
}

static int soak_pick_buf(struct soak_thread *t)
{
	return (int)(soak_rnd(t) % SOAK_NBUF);
}

/* A range of 1..maxn pages of @b; in THP buffers sometimes a whole block. */
static void soak_pick(struct soak_thread *t, struct soak_buf *b,
		      unsigned long maxn, unsigned long *first, unsigned long *n)
{
	unsigned long nn = 1 + soak_rnd(t) % maxn;

	if (b->thp && maxn >= SOAK_THP_PAGES && soak_rnd(t) % 4 == 0) {
		*n = SOAK_THP_PAGES;
		*first = (soak_rnd(t) % (b->npages / SOAK_THP_PAGES)) *
			 SOAK_THP_PAGES;
	} else {
		if (nn > b->npages)
			nn = b->npages;
		*n = nn;
		*first = soak_rnd(t) % (b->npages - nn + 1);
	}
	t->cur = b;
	t->cur_first = *first;
	t->cur_n = *n;
}

static char *soak_addr(struct soak_buf *b, unsigned long pg)
{
	return b->base + pg * SOAK_PAGE;
}

static void soak_advise(struct soak_buf *b, char *p, unsigned long len)
{
	madvise(p, len, b->thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
}

/* ------------------------------------------------------------- workers */

static void soak_step_cpu_read(struct soak_thread *t)
{
	int bi = soak_pick_buf(t);
	struct soak_buf *b = &soak.buf[bi];
	unsigned long first, n;

	soak_pick(t, b, 16, &first, &n);
	soak_op_begin(t, K_CPU_READ);
	soak_gate_in();
	pthread_rwlock_rdlock(&b->map);
	soak_lock_pages(b, first, n);
	for (unsigned long i = first; i < first + n; i++)
		soak_verify(soak_addr(b, i), bi, i, b->ver[i], "cpu read");
	soak_unlock_pages(b, first, n);
	pthread_rwlock_unlock(&b->map);
	soak_gate_out();
	soak_op_end(t, K_CPU_READ, n);
}

/* Under gate, map, wr and the page locks. */
static void soak_cpu_write_locked(struct soak_buf *b, int bi,
				  unsigned long first, unsigned long n)
{
	for (unsigned long i = first; i < first + n; i++) {
		uint32_t v = atomic_fetch_add(&soak.next_ver, 1);

		soak_fill(soak_addr(b, i), bi, i, v);
		b->ver[i] = v;
	}
}

static void soak_step_cpu_write(struct soak_thread *t)
{
	int bi = soak_pick_buf(t);
	struct soak_buf *b = &soak.buf[bi];
	unsigned long first, n;

	soak_pick(t, b, 8, &first, &n);
	soak_op_begin(t, K_CPU_WRITE);
	pthread_rwlock_rdlock(&soak.gate);
	pthread_rwlock_rdlock(&b->map);
	pthread_rwlock_rdlock(&b->wr);
	soak_lock_pages(b, first, n);
	soak_cpu_write_locked(b, bi, first, n);
	soak_unlock_pages(b, first, n);
	pthread_rwlock_unlock(&b->wr);
	pthread_rwlock_unlock(&b->map);
	pthread_rwlock_unlock(&soak.gate);
	soak_op_end(t, K_CPU_WRITE, n);
}

static void soak_dev_read(struct soak_thread *t, struct soak_dev *d)
{
	int bi = soak_pick_buf(t), rc;
	struct soak_buf *b = &soak.buf[bi];
	unsigned long first, n;
	char who[32];

	soak_pick(t, b, 32, &first, &n);
	snprintf(who, sizeof(who), "device %d READ", d->id);
	soak_op_begin(t, K_DEV_READ);
	soak_gate_in();
	pthread_rwlock_rdlock(&b->map);
	soak_lock_pages(b, first, n);
	rc = soak_cmd(d, UHMM_DMIRROR_READ, soak_addr(b, first), t->bounce, n);
	if (rc == 0) {
		for (unsigned long i = 0; i < n; i++)
			if (!soak_verify(t->bounce + i * SOAK_PAGE, bi, first + i,
					 b->ver[first + i], who))
				break;
	} else if (rc == -EBUSY) {
		atomic_fetch_add(&soak.busy, 1);
	} else {
		soak_fail("%s of buf %d pages %lu+%lu: %d (%s)", who, bi, first,
			  n, rc, strerror(-rc));
	}
	soak_unlock_pages(b, first, n);
	pthread_rwlock_unlock(&b->map);
	soak_gate_out();
	soak_op_end(t, K_DEV_READ, n);
}

static void soak_dev_write(struct soak_thread *t, struct soak_dev *d)
{
	int bi = soak_pick_buf(t), rc;
	struct soak_buf *b = &soak.buf[bi];
	unsigned long first, n;
	uint32_t v0;

	soak_pick(t, b, 32, &first, &n);
	soak_op_begin(t, K_DEV_WRITE);
	pthread_rwlock_rdlock(&soak.gate);
	pthread_rwlock_rdlock(&b->map);
	pthread_rwlock_rdlock(&b->wr);
	soak_lock_pages(b, first, n);
	v0 = atomic_fetch_add(&soak.next_ver, (unsigned int)n);
	for (unsigned long i = 0; i < n; i++)
		soak_fill(t->bounce + i * SOAK_PAGE, bi, first + i, v0 + (uint32_t)i);
	rc = soak_cmd(d, UHMM_DMIRROR_WRITE, soak_addr(b, first), t->bounce, n);
	if (rc == 0) {
		for (unsigned long i = 0; i < n; i++)
			b->ver[first + i] = v0 + (uint32_t)i;
	} else if (rc == -EBUSY) {
		/* Some pages may have been written: each holds old or new. */
		atomic_fetch_add(&soak.busy, 1);
		atomic_fetch_add(&soak.write_failed, 1);
		for (unsigned long i = first; i < first + n; i++) {
			uint32_t nv = v0 + (uint32_t)(i - first);

			if (soak_page_ok(soak_addr(b, i), bi, i, nv))
				b->ver[i] = nv;
			else
				soak_verify(soak_addr(b, i), bi, i, b->ver[i],
					    "device WRITE that failed");
		}
	} else {
		soak_fail("device %d WRITE of buf %d pages %lu+%lu: %d (%s)",
			  d->id, bi, first, n, rc, strerror(-rc));
	}
	soak_unlock_pages(b, first, n);
	pthread_rwlock_unlock(&b->wr);
	pthread_rwlock_unlock(&b->map);
	pthread_rwlock_unlock(&soak.gate);
	soak_op_end(t, K_DEV_WRITE, n);
}

static void soak_step_device(struct soak_thread *t)
{
	struct soak_dev *d = &soak.devs[t->dev];

	if (soak_rnd(t) % 2)
		soak_dev_read(t, d);
	else
		soak_dev_write(t, d);
}

/*
 * Under the page locks of the range: every page of it back in system
 * memory, whichever device holds it, and movable, so that a
 * MIGRATE_TO_DEV of it must move every page. The contract's -ENOENT is
 * for a page that lives on another device or in shared memory, and
 * (docs/semantics.md M3, M6, M12) for pages UFFDIO_MOVE cannot take: a
 * read-only range, a page (or a coherent frame) still copy-on-write
 * since a fork, until the CPU writes it.
 *
 * First, when @rw (no range of the buffer can be read-only), the CPU
 * writes, with the value it holds, one word of every present system or
 * coherent page (not the zero page, not private device pages): that
 * breaks copy-on-write without changing the contents; holes stay holes.
 * Then MIGRATE_TO_SYS on each device that may hold a page of the range:
 * SNAPSHOT through @d shows @d's own pages (LOCAL) and other devices'
 * coherent pages (COHERENT_REMOTE); another device's private page reads
 * as not present, like a hole, so a not-present page asks the other
 * private devices. Returns true when every MIGRATE_TO_SYS returned 0 and
 * a second SNAPSHOT shows no page on a device.
 */
struct soak_home {
	unsigned char s1[SOAK_MAX_BOUNCE];	/* SNAPSHOT before */
	unsigned char s2[SOAK_MAX_BOUNCE];	/* after MIGRATE_TO_SYS */
	unsigned int to_sys;			/* bit per device id asked */
	uint64_t faults_back;			/* stats before MIGRATE_TO_DEV */
};

static bool soak_dev_kind(unsigned char byte)
{
	unsigned int kind = byte & 0xf0;

	return kind >= UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL &&
	       kind <= UHMM_DMIRROR_PROT_DEV_COHERENT_REMOTE;
}

static bool soak_bring_home(struct soak_dev *d, struct soak_buf *b,
			    unsigned long first, unsigned long n, bool rw,
			    struct soak_home *h)
{
	unsigned char *s = h->s1;
	bool self = false, priv = false, coh = false, ok = true;
	int rc;

	rc = soak_cmd(d, UHMM_DMIRROR_SNAPSHOT, soak_addr(b, first), s, n);
	if (rc) {
		soak_fail("device %d SNAPSHOT of %lu pages: %d (%s)", d->id, n,
			  rc, strerror(-rc));
		return false;
	}
	for (unsigned long i = 0; i < n; i++) {
		unsigned int kind = s[i] & 0xf0;
		volatile uint64_t *w = (volatile uint64_t *)soak_addr(b, first + i);

		if (kind == UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL ||
		    kind == UHMM_DMIRROR_PROT_DEV_COHERENT_LOCAL)
			self = true;
		else if (kind == UHMM_DMIRROR_PROT_DEV_COHERENT_REMOTE)
			coh = true;
		else if (kind == UHMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE ||
			 s[i] == UHMM_DMIRROR_PROT_NONE)
			priv = true;
		if (!rw || s[i] == UHMM_DMIRROR_PROT_ERROR ||
		    !(s[i] & (UHMM_DMIRROR_PROT_READ | UHMM_DMIRROR_PROT_WRITE)) ||
		    kind == UHMM_DMIRROR_PROT_ZERO ||
		    kind == UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL ||
		    kind == UHMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE)
			continue;
		*w = *w;
		atomic_fetch_add_explicit(&soak.home_touched, 1,
					  memory_order_relaxed);
	}
	for (int j = 0; j < soak.ndevs; j++) {
		struct soak_dev *o = &soak.devs[j];

		if (o == d ? !self : o->id >= 2 ? !coh : !priv)
			continue;
		rc = soak_cmd(o, UHMM_DMIRROR_MIGRATE_TO_SYS, soak_addr(b, first),
			      NULL, n);
		h->to_sys |= 1u << o->id;
		if (rc == -EBUSY) {
			atomic_fetch_add(&soak.home_busy, 1);
			ok = false;
		} else if (rc == -ENOSYS) {
			atomic_fetch_add(&soak.nosys, 1);
			ok = false;
		} else if (rc) {
			soak_fail("device %d MIGRATE_TO_SYS of buf %d pages %lu+%lu (bringing them home): %d (%s)",
				  o->id, (int)(b - soak.buf), first, n, rc,
				  strerror(-rc));
			ok = false;
		}
	}
	s = h->s2;
	rc = soak_cmd(d, UHMM_DMIRROR_SNAPSHOT, soak_addr(b, first), s, n);
	if (rc) {
		soak_fail("device %d SNAPSHOT of %lu pages: %d (%s)", d->id, n,
			  rc, strerror(-rc));
		return false;
	}
	/*
	 * MIGRATE_TO_SYS may leave a coherent frame (M6): in a read-only
	 * mapping, shared since a fork, or a page of a THP split since a
	 * fork (see soak_to_dev_enoent). Then -ENOENT stays allowed.
	 */
	for (unsigned long i = 0; i < n && ok; i++)
		if (soak_dev_kind(s[i])) {
			atomic_fetch_add(&soak.home_left, 1);
			ok = false;
		}
	if (ok)
		atomic_fetch_add(&soak.homed, 1);
	return ok;
}

/*
 * /proc/self/pagemap and /proc/kpageflags of a page: 0 where they cannot
 * be read (the frame number needs CAP_SYS_ADMIN). No stdio: nothing is
 * allocated (an mmap could land in the unmapper's holes).
 */
#define SOAK_PM_PRESENT (1ULL << 63)
#define SOAK_PM_EXCLUSIVE (1ULL << 56)
#define SOAK_PM_PFN ((1ULL << 55) - 1)
#define SOAK_KPF_HEAD (1ULL << 15)
#define SOAK_KPF_TAIL (1ULL << 16)
#define SOAK_KPF_THP (1ULL << 22)

static void soak_pagemap(int pmfd, int kffd, const void *p, uint64_t *pm,
			 uint64_t *kf)
{
	*pm = *kf = 0;
	if (pmfd < 0 || pread(pmfd, pm, 8, (off_t)((uintptr_t)p / SOAK_PAGE * 8)) != 8)
		*pm = 0;
	if (kffd < 0 || !(*pm & SOAK_PM_PRESENT) || !(*pm & SOAK_PM_PFN) ||
	    pread(kffd, kf, 8, (off_t)((*pm & SOAK_PM_PFN) * 8)) != 8)
		*kf = 0;
}

/*
 * The VMA around @p from /proc/self/smaps, its range and VmFlags (um:
 * registered for missing pages on a userfaultfd), into @out. No stdio.
 */
static void soak_vma_of(const void *p, char *out, size_t size)
{
	static char buf[8192];
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	uintptr_t a = (uintptr_t)p;
	size_t have = 0;
	bool in = false;
	int fd;

	snprintf(out, size, "(no VMA)");
	pthread_mutex_lock(&lock);
	fd = open("/proc/self/smaps", O_RDONLY | O_CLOEXEC);
	while (fd >= 0) {
		ssize_t r = read(fd, buf + have, sizeof(buf) - 1 - have);
		char *line = buf, *nl;

		if (r <= 0)
			break;
		have += (size_t)r;
		buf[have] = 0;
		while ((nl = strchr(line, '\n'))) {
			unsigned long lo, hi;

			*nl = 0;
			if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 &&
			    strchr(line, ' ') == line + strcspn(line, " ")) {
				in = a >= lo && a < hi;
				if (in)
					snprintf(out, size, "%lx-%lx (%lu pages)", lo,
						 hi, (hi - lo) / SOAK_PAGE);
			} else if (in && !strncmp(line, "VmFlags:", 8)) {
				size_t l = strlen(out);

				snprintf(out + l, size - l, " %.200s", line);
				in = false;
			}
			line = nl + 1;
		}
		have -= (size_t)(line - buf);
		memmove(buf, line, have);
	}
	if (fd >= 0)
		close(fd);
	pthread_mutex_unlock(&lock);
}

static uint64_t soak_faults_back(void)
{
	struct uhmm_stats st;

	memset(&st, 0, sizeof(st));
	uhmm_stats_get(&st, sizeof(st));
	return st.faults_back;
}

/*
 * A locked MIGRATE_TO_DEV of pages that were all home, in a buffer that
 * had no read-only range, gave -ENOENT. One case is allowed (M3): a page
 * of a large folio that a PMD split left mapped by PTEs (a VMA split by
 * mprotect or uhmm, a partial migration) cannot be moved while the
 * folio's first page is not exclusive since a fork. UFFDIO_MOVE must
 * split the folio and checks PageAnonExclusive on its head page only:
 * -EBUSY, though this page is exclusive and was written since. The
 * CPU's write to the head page (shared then, or copied away while the
 * child lived) cannot be done here: it may be outside the range, and a
 * copied-away head never comes back. So: every page that did not land
 * must still be a THP page (kpageflags) in a buffer that can have THPs;
 * without the frame numbers (not root), any page of such a buffer.
 *
 * Another page that did not land may be M4 (a fault message read before
 * the page went back to a device, served meanwhile as a spurious
 * fault-back, leaves the page in place: one page in a round, under heavy
 * faulting): not @last, the caller brings the range home and migrates it
 * once more (SOAK_ENOENT_RETRY). Anything else fails the soak.
 */
enum { SOAK_ENOENT_OK, SOAK_ENOENT_RETRY, SOAK_ENOENT_FAIL };

static int soak_to_dev_enoent(struct soak_dev *d, int bi, unsigned long first,
			      unsigned long n, unsigned long cpages,
			      const struct soak_home *h, bool last)
{
	struct soak_buf *b = &soak.buf[bi];
	unsigned char s[SOAK_MAX_BOUNCE];
	unsigned long local = 0, firstbad = n, nbad = 0, thp = 0, other = n;
	uint64_t fb = soak_faults_back() - h->faults_back, pm = 0, kf = 0;
	int rc = soak_cmd(d, UHMM_DMIRROR_SNAPSHOT, soak_addr(b, first), s, n);
	int pmfd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	int kffd = open("/proc/kpageflags", O_RDONLY | O_CLOEXEC);
	bool thp_buf = b->thp || bi == 5;	/* 5: the system's policy */
	char vma[256];

	for (unsigned long i = 0; rc == 0 && i < n; i++) {
		unsigned int kind = s[i] & 0xf0;
		uint64_t ipm, ikf;

		if (kind == UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL ||
		    kind == UHMM_DMIRROR_PROT_DEV_COHERENT_LOCAL) {
			local++;
			continue;
		}
		nbad++;
		if (firstbad == n)
			firstbad = i;
		soak_pagemap(pmfd, kffd, soak_addr(b, first + i), &ipm, &ikf);
		if (thp_buf && ((ikf & SOAK_KPF_THP) ||
				((ipm & SOAK_PM_PRESENT) && !(ipm & SOAK_PM_PFN))))
			thp++;
		else if (other == n)
			other = i;
	}
	if (firstbad == n)
		firstbad = 0;
	if (other == n && rc == 0 && nbad) {
		if (pmfd >= 0)
			close(pmfd);
		if (kffd >= 0)
			close(kffd);
		atomic_fetch_add(&soak.to_dev_folio, 1);
		atomic_fetch_add(&soak.to_dev_folio_pages, nbad);
		return SOAK_ENOENT_OK;
	}
	if (!last && rc == 0) {
		if (pmfd >= 0)
			close(pmfd);
		if (kffd >= 0)
			close(kffd);
		return SOAK_ENOENT_RETRY;
	}
	if (other < n)
		firstbad = other;
	soak_pagemap(pmfd, kffd, soak_addr(b, first + firstbad), &pm, &kf);
	soak_vma_of(soak_addr(b, first + firstbad), vma, sizeof(vma));
	if (pmfd >= 0)
		close(pmfd);
	if (kffd >= 0)
		close(kffd);
	soak_fail("device %d MIGRATE_TO_DEV (locked) of buf %d pages %lu+%lu%s, all brought home first (MIGRATE_TO_SYS on devices mask 0x%x), no range read-only: -ENOENT, %lu pages read back; SNAPSHOT after: %lu pages on device %d, %lu not (%lu of them in THPs); page %lu: byte 0x%02x before, 0x%02x after bringing home, 0x%02x after the migration, pagemap 0x%" PRIx64 " (exclusive %d), kpageflags 0x%" PRIx64 " (thp %d, head %d, tail %d), VMA %s; %" PRIu64 " fault-backs (process-wide) meanwhile%s",
		  d->id, bi, first, n, b->thp ? " (THP buffer)" : "", h->to_sys,
		  cpages, local, d->id, nbad, thp, first + firstbad,
		  h->s1[firstbad], h->s2[firstbad], s[firstbad], pm,
		  !!(pm & SOAK_PM_EXCLUSIVE), kf, !!(kf & SOAK_KPF_THP),
		  !!(kf & SOAK_KPF_HEAD), !!(kf & SOAK_KPF_TAIL), vma, fb,
		  rc ? " (SNAPSHOT failed)" : "");
	soak_print_history(bi, first + firstbad);
	soak_print_state(soak_addr(b, first + firstbad));
	return SOAK_ENOENT_FAIL;
}

/*
 * Migrations hold the page locks and check the data: a locked
 * MIGRATE_TO_DEV first brings the range home (soak_bring_home) and then
 * must move every page and read it back right; after a locked
 * MIGRATE_TO_SYS the CPU reads every page. With UHMM_SOAK_MIGRATE_RACY=1
 * half of them race CPU and device accesses and EXCLUSIVE takers of the
 * same pages instead. That found EXCLUSIVE read-backs of zeros and pages
 * still exclusive after a CPU touch (fixed in e291f0f), and a hang: a
 * device copy through a stale entry faulted under dm->lock while both
 * uhmm readers waited for dm->lock (fixed in 3918502; tests/test_soak.c
 * racing_migrations).
 */
static void soak_step_migrate(struct soak_thread *t)
{
	struct soak_dev *d = &soak.devs[soak_rnd(t) % (unsigned)soak.ndevs];
	int bi = soak_pick_buf(t), rc;
	struct soak_buf *b = &soak.buf[bi];
	bool locked = !soak.o.migrate_racy || soak_rnd(t) % 2;
	bool to_dev = soak_rnd(t) % 5 < 3;
	bool rw = false, home = false;
	struct soak_home h = { .to_sys = 0 };
	enum soak_kind k = to_dev ? K_TO_DEV : K_TO_SYS;
	unsigned long first, n, cpages = 0;
	int verdict = -1;

	/*
	 * A range_fault of more than 256 pages leaves a thread-local 96 KiB
	 * buffer (src/range.c scan_vec_big) that is never freed when the
	 * thread exits: LeakSanitizer fails the run. Until that is fixed,
	 * ASan builds migrate at most 256 pages at a time
	 * (UHMM_SOAK_BIG_MIGRATIONS=1 lifts it).
	 */
	soak_pick(t, b, SOAK_ASAN && !getenv("UHMM_SOAK_BIG_MIGRATIONS") ?
		  SOAK_MAX_BOUNCE / 2 : SOAK_MAX_BOUNCE, &first, &n);
	soak_op_begin(t, k);
	soak_gate_in();
	pthread_rwlock_rdlock(&b->map);
	if (locked) {
		/*
		 * The toggler makes part of the buffer read-only under wr
		 * (M12: -ENOENT allowed): held shared, nothing is read-only
		 * meanwhile. Only tried, so that read-only ranges still
		 * migrate.
		 */
		rw = to_dev && pthread_rwlock_tryrdlock(&b->wr) == 0;
		soak_lock_pages(b, first, n);
		if (to_dev) {
			home = soak_bring_home(d, b, first, n, rw, &h);
			h.faults_back = soak_faults_back();
		}
	}
	rc = soak_cmd_n(d, to_dev ? UHMM_DMIRROR_MIGRATE_TO_DEV :
			UHMM_DMIRROR_MIGRATE_TO_SYS, soak_addr(b, first),
			t->bounce, n, &cpages);
	/*
	 * Pages that were all home, with nothing read-only: -ENOENT only as
	 * soak_to_dev_enoent allows (fork_racy: the atfork handler may take
	 * pages home meanwhile).
	 */
	if (rc == -ENOENT && to_dev && locked && home && rw &&
	    !soak.o.fork_racy) {
		verdict = soak_to_dev_enoent(d, bi, first, n, cpages, &h, false);
		if (verdict == SOAK_ENOENT_RETRY) {
			atomic_fetch_add(&soak.to_dev_retry, 1);
			home = soak_bring_home(d, b, first, n, rw, &h);
			h.faults_back = soak_faults_back();
			rc = soak_cmd_n(d, UHMM_DMIRROR_MIGRATE_TO_DEV,
					soak_addr(b, first), t->bounce, n,
					&cpages);
			if (rc == 0)
				atomic_fetch_add(&soak.to_dev_retry_ok, 1);
			verdict = rc == -ENOENT && home ?
				  soak_to_dev_enoent(d, bi, first, n, cpages,
						     &h, true) : -1;
		}
	}
	if (rc == 0 && to_dev && locked) {
		char who[48];
		unsigned long i;

		snprintf(who, sizeof(who), "device %d MIGRATE_TO_DEV read-back",
			 d->id);
		for (i = 0; i < n; i++)
			if (!soak_verify(t->bounce + i * SOAK_PAGE, bi, first + i,
					 b->ver[first + i], who))
				break;
		atomic_fetch_add(&soak.to_dev_verified, i);
	} else if (rc == -ENOENT && to_dev && locked) {
		/*
		 * Judged above when the pages were all home; otherwise (a
		 * read-only range possible, bringing home gave up) allowed.
		 * Either way, what landed and what did not reads right
		 * through the device.
		 */
		if (verdict == SOAK_ENOENT_FAIL) {
			goto unlock;
		} else if (verdict != SOAK_ENOENT_OK) {
			atomic_fetch_add(&soak.to_dev_partial, 1);
			if (!rw)
				atomic_fetch_add(&soak.to_dev_ro, 1);
		}
		rc = soak_cmd(d, UHMM_DMIRROR_READ, soak_addr(b, first),
			      t->bounce, n);
		if (rc == 0) {
			char who[64];
			unsigned long i;

			snprintf(who, sizeof(who),
				 "device %d READ after a partial MIGRATE_TO_DEV",
				 d->id);
			for (i = 0; i < n; i++)
				if (!soak_verify(t->bounce + i * SOAK_PAGE, bi,
						 first + i, b->ver[first + i], who))
					break;
			atomic_fetch_add(&soak.to_dev_read_verified, i);
		} else if (rc == -EBUSY) {
			atomic_fetch_add(&soak.busy, 1);
		} else {
			soak_fail("device %d READ of buf %d pages %lu+%lu after a partial MIGRATE_TO_DEV: %d (%s)",
				  d->id, bi, first, n, rc, strerror(-rc));
		}
	} else if (rc == -ENOENT && to_dev) {
		/* Racing: a page raced back to the CPU, sits on another
		 * device or in a read-only range: allowed. */
		atomic_fetch_add(&soak.to_dev_partial, 1);
	} else if (rc == -EBUSY) {
		atomic_fetch_add(&soak.busy, 1);
	} else if (rc == -ENOSYS) {
		/* No userfaultfd (valgrind, seccomp): no migration. */
		atomic_fetch_add(&soak.nosys, 1);
	} else if (rc) {
		soak_fail("device %d %s of buf %d pages %lu+%lu (%s): %d (%s)",
			  d->id, soak_kind_name[k], bi, first, n,
			  locked ? "locked" : "racing", rc, strerror(-rc));
	}
	if (locked && !to_dev && (rc == 0 || rc == -EBUSY)) {
		/* What came home (or stayed) reads right from the CPU. */
		char who[48];
		unsigned long i;

		snprintf(who, sizeof(who), "cpu read after device %d MIGRATE_TO_SYS",
			 d->id);
		for (i = first; i < first + n; i++)
			if (!soak_verify(soak_addr(b, i), bi, i, b->ver[i], who))
				break;
		atomic_fetch_add(&soak.to_sys_verified, i - first);
	}
unlock:
	if (locked)
		soak_unlock_pages(b, first, n);
	if (rw)
		pthread_rwlock_unlock(&b->wr);
	pthread_rwlock_unlock(&b->map);
	soak_gate_out();
	soak_op_end(t, k, n);
}

/*
 * EXCLUSIVE, then CHECK_EXCLUSIVE, then a CPU touch of every page (a read
 * or a write), after which no page may still be exclusive.
 */
static void soak_step_exclusive(struct soak_thread *t)
{
	struct soak_dev *d = &soak.devs[soak_rnd(t) % (unsigned)soak.ndevs];
	int bi = soak_pick_buf(t), rc;
	struct soak_buf *b = &soak.buf[bi];
	bool write = soak_rnd(t) % 2;
	unsigned long first, n;

	soak_pick(t, b, 8, &first, &n);
	soak_op_begin(t, K_EXCL);
	pthread_rwlock_rdlock(&soak.gate);
	pthread_rwlock_rdlock(&b->map);
	pthread_rwlock_rdlock(&b->wr);
	soak_lock_pages(b, first, n);
	rc = soak_cmd(d, UHMM_DMIRROR_EXCLUSIVE, soak_addr(b, first), t->bounce, n);
	if (rc == 0) {
		for (unsigned long i = 0; i < n; i++)
			if (!soak_verify(t->bounce + i * SOAK_PAGE, bi, first + i,
					 b->ver[first + i], "EXCLUSIVE read-back"))
				break;
	} else if (rc == -EBUSY || rc == -ENOENT) {
		/* A racing migration holds a page, or took it to a device. */
		atomic_fetch_add(&soak.excl_busy, 1);
	} else if (rc == -ENOSYS) {
		atomic_fetch_add(&soak.nosys, 1);
	} else {
		soak_fail("device %d EXCLUSIVE of buf %d pages %lu+%lu: %d (%s)",
			  d->id, bi, first, n, rc, strerror(-rc));
	}
	rc = soak_cmd(d, UHMM_DMIRROR_CHECK_EXCLUSIVE, soak_addr(b, first), NULL, n);
	if (rc == -EPERM)
		atomic_fetch_add(&soak.excl_held, 1);
	else if (rc)
		soak_fail("CHECK_EXCLUSIVE before the touch: %d", rc);
	if (write) {
		soak_cpu_write_locked(b, bi, first, n);
	} else {
		for (unsigned long i = first; i < first + n; i++)
			soak_verify(soak_addr(b, i), bi, i, b->ver[i],
				    "cpu read after EXCLUSIVE");
	}
	rc = soak_cmd(d, UHMM_DMIRROR_CHECK_EXCLUSIVE, soak_addr(b, first), NULL, n);
	if (rc)
		soak_fail("device %d: buf %d pages %lu+%lu still exclusive after a CPU %s of each: %d",
			  d->id, bi, first, n, write ? "write" : "read", rc);
	soak_unlock_pages(b, first, n);
	pthread_rwlock_unlock(&b->wr);
	pthread_rwlock_unlock(&b->map);
	pthread_rwlock_unlock(&soak.gate);
	soak_op_end(t, K_EXCL, n);
}

/*
 * Unmap and map again (zeros), discard (zeros), or move away and back
 * with mremap (contents kept), under the buffer's map lock: no thread
 * touches the range meanwhile; uhmm and the devices see the events.
 */
static void soak_step_unmap(struct soak_thread *t)
{
	int bi = soak_pick_buf(t), how = (int)(soak_rnd(t) % 4);
	struct soak_buf *b = &soak.buf[bi];
	unsigned long first, n, len;
	enum soak_kind k;
	bool zero = true;
	char *p, *q;

	soak_sleep_ms(20 + (long)(soak_rnd(t) % 40));
	if (soak_stopped())
		return;
	soak_pick(t, b, SOAK_MAX_BOUNCE, &first, &n);
	/* munmap leaves a hole a sanitizer's own mmap may take. */
	if (how == 1 && SOAK_SANITIZED)
		how = 0;
	k = how == 0 ? K_REMAP : how == 1 ? K_MUNMAP : how == 2 ? K_DONTNEED :
	    K_MREMAP;
	p = soak_addr(b, first);
	len = n * SOAK_PAGE;
	soak_op_begin(t, k);
	pthread_rwlock_rdlock(&soak.gate);
	/*
	 * Quiesced (the default): every buffer's map lock, so no CPU or
	 * device access, hence no fault-back, is in flight while the event
	 * is pending. Racing (UHMM_SOAK_UNMAP_RACY=1): this buffer's only,
	 * which hangs uhmm when both of its readers serve fault-backs whose
	 * installs meet the pending event (EAGAIN): nobody reads it.
	 */
	for (int i = 0; i < SOAK_NBUF; i++)
		if (soak.o.unmap_racy ? i == bi : true)
			pthread_rwlock_wrlock(&soak.buf[i].map);
	switch (how) {
	case 0:
		q = mmap(p, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		if (q != p)
			soak_fail("mmap MAP_FIXED over buf %d: %s", bi, strerror(errno));
		soak_advise(b, p, len);
		break;
	case 1:
		if (munmap(p, len))
			soak_fail("munmap: %s", strerror(errno));
		q = mmap(p, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
		if (q != p) {
			soak_fail("mmap into the hole left by munmap of buf %d pages %lu+%lu: %s (something was mapped in the application's hole)",
				  bi, first, n, q == MAP_FAILED ? strerror(errno) :
				  "another address");
			if (q != MAP_FAILED)
				munmap(q, len);
			/* Whatever is there now, the model cannot follow. */
			atomic_store(&soak.stop, 1);
		}
		soak_advise(b, p, len);
		break;
	case 2:
		if (madvise(p, len, MADV_DONTNEED))
			soak_fail("MADV_DONTNEED: %s", strerror(errno));
		break;
	default:
		zero = false;
		q = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (q == MAP_FAILED) {
			soak_fail("mmap: %s", strerror(errno));
			break;
		}
		/*
		 * DONTUNMAP: the source stays mapped (empty), no hole. One
		 * VMA at a time (mprotect and uhmm split them): across VMAs
		 * the kernel moves those before the first it cannot move and
		 * then fails with EFAULT (since 6.17; semantics.md row 16),
		 * and halving the range then moved the emptied source over
		 * what had moved (zeros the model took for data: the lost
		 * pages of racing_unmap_vs_fault_back under TSan).
		 */
		{
			struct uhmm_vma v;

			if (uhmm_vma_lookup((uintptr_t)p, &v) == 0 &&
			    v.end < (uintptr_t)p + len)
				len = v.end - (uintptr_t)p;
		}
		if (mremap(p, len, len, MREMAP_MAYMOVE | MREMAP_FIXED |
			   MREMAP_DONTUNMAP, q) != q) {
			/* EINVAL: no DONTUNMAP here (valgrind): skipped. */
			if (errno != EINVAL)
				soak_fail("mremap DONTUNMAP of buf %d pages %lu+%lu: %s",
					  bi, first, len / SOAK_PAGE, strerror(errno));
			len = 0;
		}
		if (len && mremap(q, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, p) != p)
			soak_fail("mremap back: %s", strerror(errno));
		/* What is left of the scratch mapping beyond the moved part. */
		if (n * SOAK_PAGE > len)
			munmap(q + len, n * SOAK_PAGE - len);
		n = len / SOAK_PAGE;
		break;
	}
	if (zero)
		for (unsigned long i = first; i < first + n; i++)
			b->ver[i] = 0;
	/* Sometimes a zeroed range is written again at once. */
	if (zero && soak_rnd(t) % 2 && !soak_stopped())
		soak_cpu_write_locked(b, bi, first, n);
	for (int i = SOAK_NBUF; i-- > 0;)
		if (soak.o.unmap_racy ? i == bi : true)
			pthread_rwlock_unlock(&soak.buf[i].map);
	pthread_rwlock_unlock(&soak.gate);
	soak_op_end(t, k, n);
}

/*
 * A range becomes read-only for a few milliseconds (writers wait);
 * readers, devices and migrations go on. A device WRITE to it must fail
 * with -EPERM and leave the page alone (UHMM_SOAK_RO_WRITE_PROBE=0 skips
 * it; it once landed, with the working tree of 21:20: a device page's
 * WRITE entry that survived the mprotect).
 */
static void soak_step_mprotect(struct soak_thread *t)
{
	int bi = soak_pick_buf(t), rc;
	struct soak_buf *b = &soak.buf[bi];
	struct soak_dev *d = &soak.devs[soak_rnd(t) % (unsigned)soak.ndevs];
	unsigned long first, n, len;
	char *p;

	soak_sleep_ms(20 + (long)(soak_rnd(t) % 40));
	if (soak_stopped())
		return;
	soak_pick(t, b, 128, &first, &n);
	p = soak_addr(b, first);
	len = n * SOAK_PAGE;
	soak_op_begin(t, K_MPROTECT);
	soak_gate_in();
	pthread_rwlock_rdlock(&b->map);
	pthread_rwlock_wrlock(&b->wr);
	if (mprotect(p, len, PROT_READ)) {
		soak_fail("mprotect RO: %s", strerror(errno));
	} else {
		unsigned long pg = first + soak_rnd(t) % n;

		soak_sleep_ms(1 + (long)(soak_rnd(t) % 4));
		if (!soak.o.ro_write_probe)
			goto restore;
		soak_lock_pages(b, pg, 1);
		soak_fill(t->bounce, bi, pg, 0xffffffffu);
		rc = soak_cmd(d, UHMM_DMIRROR_WRITE, soak_addr(b, pg), t->bounce, 1);
		if (rc == -EPERM)
			atomic_fetch_add(&soak.ro_eperm, 1);
		else
			soak_fail("device %d WRITE to a read-only page: %d, expected -EPERM",
				  d->id, rc);
		soak_verify(soak_addr(b, pg), bi, pg, b->ver[pg],
			    "read-only page after a refused device WRITE");
		soak_unlock_pages(b, pg, 1);
restore:
		if (mprotect(p, len, PROT_READ | PROT_WRITE))
			soak_fail("mprotect RW: %s", strerror(errno));
	}
	pthread_rwlock_unlock(&b->wr);
	pthread_rwlock_unlock(&b->map);
	soak_gate_out();
	soak_op_end(t, K_MPROTECT, n);
}

/* The child: every page against the snapshot; write(2) only. */
__attribute__((noreturn))
static void soak_child_verify(void)
{
	for (int bi = 0; bi < SOAK_NBUF; bi++) {
		struct soak_buf *b = &soak.buf[bi];

		for (unsigned long i = 0; i < b->npages; i++) {
			char d[400], line[480];
			int len;

			if (soak_page_ok(soak_addr(b, i), bi, i, b->snap[i]))
				continue;
			soak_describe(soak_addr(b, i), bi, i, b->snap[i], d,
				      sizeof(d));
			len = snprintf(line, sizeof(line),
				       "soak: FAIL: fork child: corruption: %s\n", d);
			if (write(2, line, (size_t)len) < 0)
				_exit(2);
			_exit(1);
		}
	}
	_exit(0);
}

static void soak_step_fork(struct soak_thread *t)
{
	long limit = (long)(soak.o.hang_s * 1000 / 2), start;
	int status = 0;
	pid_t pid, r;

	soak_sleep_ms(100 + (long)(soak_rnd(t) % 200));
	if (soak_stopped())
		return;
	soak_op_begin(t, K_FORK);
	pthread_rwlock_wrlock(&soak.gate);
	for (int bi = 0; bi < SOAK_NBUF; bi++)
		memcpy(soak.buf[bi].snap, soak.buf[bi].ver,
		       soak.buf[bi].npages * sizeof(uint32_t));
	pid = fork();
	if (pid == 0)
		soak_child_verify();
	pthread_rwlock_unlock(&soak.gate);
	if (pid < 0) {
		soak_fail("fork: %s", strerror(errno));
		soak_op_end(t, K_FORK, 0);
		return;
	}
	start = soak_now_ms();
	while ((r = waitpid(pid, &status, WNOHANG)) == 0 &&
	       soak_now_ms() - start < limit)
		soak_sleep_ms(2);
	if (r == 0) {
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		soak_fail("fork child did not finish its check in %ld ms", limit);
	} else if (r < 0) {
		soak_fail("waitpid: %s", strerror(errno));
	} else if (WIFSIGNALED(status)) {
		soak_fail("fork child killed by signal %d (%s)", WTERMSIG(status),
			  strsignal(WTERMSIG(status)));
	} else if (WEXITSTATUS(status)) {
		soak_fail("fork child found its inherited memory wrong (exit %d)",
			  WEXITSTATUS(status));
	}
	soak_op_end(t, K_FORK, 0);
}

static void *soak_thread_main(void *arg)
{
	struct soak_thread *t = arg;
	const char *only = getenv("UHMM_SOAK_THREADS");

	/* Without device memory, nothing for these to do. */
	if (soak.no_devmem && (t->step == soak_step_migrate ||
			       t->step == soak_step_exclusive))
		return NULL;
	/* UHMM_SOAK_THREADS=migrator,forker runs only those (to bisect). */
	if (only && *only && !strstr(only, t->name))
		return NULL;
	while (!soak_stopped())
		t->step(t);
	return NULL;
}

/* Every page of every buffer against the model, with the CPU. */
static void soak_check_all(struct soak_thread *t, const char *who)
{
	for (int bi = 0; bi < SOAK_NBUF && !soak_stopped(); bi++) {
		struct soak_buf *b = &soak.buf[bi];

		soak_op_begin(t, K_CHECKPOINT);
		soak_gate_in();
		pthread_rwlock_rdlock(&b->map);
		for (unsigned long f = 0; f < b->npages; f += SOAK_STRIPE) {
			bool ok = true;

			/* Progress, for the watchdog: a check of every page
			 * is slow on a loaded machine (TSan), not stuck. */
			atomic_store(&t->op_start, soak_now_ms());
			soak_lock_pages(b, f, SOAK_STRIPE);
			for (unsigned long i = f; i < f + SOAK_STRIPE && ok; i++)
				ok = soak_verify(soak_addr(b, i), bi, i, b->ver[i], who);
			soak_unlock_pages(b, f, SOAK_STRIPE);
			if (!ok)
				break;
		}
		pthread_rwlock_unlock(&b->map);
		soak_gate_out();
		soak_op_end(t, K_CHECKPOINT, b->npages);
	}
}

/* ------------------------------------------------------------ watchdog */

static atomic_int soak_watch_stop;
static long soak_hard_deadline;

/*
 * Every thread's kernel stack and wait channel, and gdb's backtraces
 * where gdb is installed: a hang's diagnosis. posix_spawn, not fork:
 * uhmm's fork handler would wait for the stuck migration.
 */
static void soak_print_stacks(void)
{
	char cmd[1024];
	char *argv[] = { "/bin/sh", "-c", cmd, NULL };
	pid_t pid;
	int st;

	snprintf(cmd, sizeof(cmd),
		 "for t in /proc/%d/task/*; do echo \"soak: task ${t##*/} $(cat $t/comm) wchan $(cat $t/wchan 2>/dev/null)\"; "
		 "sed 's/^/soak:     /' $t/stack 2>/dev/null; done >&2; "
		 "command -v gdb >/dev/null && timeout 60 gdb -p %d -batch -nx "
		 "-ex 'thread apply all bt 16' 2>/dev/null | grep -E '^(Thread|#)' | sed 's/^/soak: gdb: /' >&2",
		 (int)getpid(), (int)getpid());
	fflush(stderr);
	if (posix_spawn(&pid, argv[0], NULL, NULL, argv, environ) == 0)
		waitpid(pid, &st, 0);
}

static void *soak_watchdog(void *arg)
{
	long hang = (long)(soak.o.hang_s * 1000);

	(void)arg;
	while (!atomic_load(&soak_watch_stop)) {
		long now = soak_now_ms();
		bool hung = now > soak_hard_deadline;

		for (int i = 0; i < soak.nthreads && !hung; i++) {
			long s = atomic_load(&soak.threads[i].op_start);

			hung = s && now - s > hang;
		}
		if (hung) {
			fprintf(stderr, "soak: FAIL: hang at %.3f s (an operation took more than %.0f s, or the run passed its hard deadline); threads:\n",
				(now - soak.t0) / 1000.0, soak.o.hang_s);
			for (int i = 0; i < soak.nthreads; i++) {
				long s = atomic_load(&soak.threads[i].op_start);

				fprintf(stderr, "soak:   %-12s %s\n", soak.threads[i].name,
					s ? soak_kind_name[atomic_load(&soak.threads[i].kind)] :
					"(between operations)");
				if (s)
					fprintf(stderr, "soak:   %-12s   for %.3f s\n", "",
						(now - s) / 1000.0);
			}
			soak_print_stacks();
			fflush(stderr);
			abort();
		}
		soak_sleep_ms(200);
	}
	return NULL;
}

/* ------------------------------------------------------------- setup */

static char *soak_map_buf(unsigned long len, bool thp)
{
	unsigned long al = thp ? SOAK_THP_PAGES * SOAK_PAGE : SOAK_PAGE;
	char *p = mmap(NULL, len + al, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), *a;

	if (p == MAP_FAILED)
		return NULL;
	a = (char *)(((uintptr_t)p + al - 1) & ~(uintptr_t)(al - 1));
	if (a > p)
		munmap(p, (unsigned long)(a - p));
	if (a + len < p + len + al)
		munmap(a + len, (unsigned long)(p + len + al - (a + len)));
	return a;
}

static int soak_setup(void)
{
	/* Sizes in 2 MiB blocks: two THP buffers, four 4 KiB ones. */
	static const unsigned int share[SOAK_NBUF] = { 2, 2, 1, 1, 1, 1 };
	unsigned long blocks = soak.o.mib / 2, unit = blocks / 8;

	if (unit < 1)
		unit = 1;
	soak_rwlock_init(&soak.gate);
	atomic_store(&soak.next_ver, 1);
	for (int bi = 0; bi < SOAK_NBUF; bi++) {
		struct soak_buf *b = &soak.buf[bi];

		b->thp = bi < 2;
		b->npages = share[bi] * unit * SOAK_THP_PAGES;
		b->base = soak_map_buf(b->npages * SOAK_PAGE, b->thp);
		b->plock = calloc(b->npages, sizeof(*b->plock));
		b->ver = calloc(b->npages, sizeof(*b->ver));
		b->snap = calloc(b->npages, sizeof(*b->snap));
		if (!b->base || !b->plock || !b->ver || !b->snap)
			return -ENOMEM;
		/* Buffer 5 keeps the system's THP policy. */
		if (bi < 5)
			soak_advise(b, b->base, b->npages * SOAK_PAGE);
		soak_rwlock_init(&b->map);
		soak_rwlock_init(&b->wr);
		for (unsigned long i = 0; i < b->npages; i++) {
			pthread_mutex_init(&b->plock[i], NULL);
			/* Every 7th page stays a hole (version 0). */
			if (i % 7 == 3)
				continue;
			b->ver[i] = atomic_fetch_add(&soak.next_ver, 1);
			soak_fill(soak_addr(b, i), bi, i, b->ver[i]);
		}
	}
	return 0;
}

static void soak_teardown(void)
{
	for (int bi = 0; bi < SOAK_NBUF; bi++) {
		struct soak_buf *b = &soak.buf[bi];

		if (b->base)
			munmap(b->base, b->npages * SOAK_PAGE);
		if (b->plock)
			for (unsigned long i = 0; i < b->npages; i++)
				pthread_mutex_destroy(&b->plock[i]);
		free(b->plock);
		free(b->ver);
		free(b->snap);
		if (b->base) {
			pthread_rwlock_destroy(&b->map);
			pthread_rwlock_destroy(&b->wr);
		}
	}
	pthread_rwlock_destroy(&soak.gate);
	for (int i = 0; i < soak.nthreads; i++)
		if (soak.threads[i].bounce)
			munmap(soak.threads[i].bounce, SOAK_MAX_BOUNCE * SOAK_PAGE);
	free(soak.threads);
}

static void soak_add_thread(const char *name, void (*step)(struct soak_thread *),
			    int dev)
{
	struct soak_thread *t = &soak.threads[soak.nthreads];

	t->name = name;
	t->step = step;
	t->dev = dev;
	t->rng = soak_mix(soak.o.seed + (uint64_t)soak.nthreads * 7919) | 1;
	/* Bounce buffers before the unmapper runs: no mmap in its holes. */
	t->bounce = mmap(NULL, SOAK_MAX_BOUNCE * SOAK_PAGE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (t->bounce == MAP_FAILED)
		t->bounce = NULL;
	soak.nthreads++;
}

/* uhmm's gauge of device pages handed out and not freed, or -1. */
static int64_t soak_dev_pages_in_use(void)
{
	struct uhmm_stats st;

	memset(&st, 0, sizeof(st));
	if (uhmm_stats_get(&st, sizeof(st)) ||
	    st.size < offsetof(struct uhmm_stats, device_pages_in_use) +
		      sizeof(st.device_pages_in_use))
		return -1;
	return (int64_t)st.device_pages_in_use;
}

/*
 * At the end: every device page reads right through device 0, the
 * devices close (their memory migrates back), every page reads right with
 * the CPU, a fresh open's SNAPSHOT shows no page left on a device, and
 * uhmm's stats count no device page in use (the SNAPSHOT of device 0
 * cannot see device 1's private pages: they read as not present).
 */
static void soak_final(struct soak_thread *self)
{
	unsigned long on_dev = 0, left = 0;
	unsigned char *snap;
	int64_t in_use, before;

	soak_op_begin(self, K_CHECKPOINT);
	for (int bi = 0; bi < SOAK_NBUF && !soak_stopped(); bi++) {
		struct soak_buf *b = &soak.buf[bi];

		for (unsigned long f = 0; f < b->npages; f += SOAK_MAX_BOUNCE) {
			unsigned long n = b->npages - f < SOAK_MAX_BOUNCE ?
					  b->npages - f : SOAK_MAX_BOUNCE;
			unsigned char *s = (unsigned char *)self->bounce;
			int rc = soak_cmd(&soak.devs[0], UHMM_DMIRROR_SNAPSHOT,
					  soak_addr(b, f), s, n);

			for (unsigned long i = 0; rc == 0 && i < n; i++)
				on_dev += (s[i] & 0xf0) >= 0x20 && (s[i] & 0xf0) <= 0x50;
			rc = soak_cmd(&soak.devs[0], UHMM_DMIRROR_READ,
				      soak_addr(b, f), self->bounce, n);
			if (rc) {
				soak_fail("final device 0 READ of buf %d pages %lu+%lu: %d",
					  bi, f, n, rc);
				break;
			}
			for (unsigned long i = 0; i < n; i++)
				if (!soak_verify(self->bounce + i * SOAK_PAGE, bi,
						 f + i, b->ver[f + i],
						 "final device READ"))
					break;
		}
	}
	soak_op_end(self, K_CHECKPOINT, 0);
	before = soak_dev_pages_in_use();
	printf("soak: %lu pages on devices at the end (SNAPSHOT of device 0), %" PRId64 " device pages in use (uhmm_stats)\n",
	       on_dev, before);

	soak_op_begin(self, K_CHECKPOINT);
	for (int i = 0; i < soak.ndevs; i++) {
		int rc = uhmm_dmirror_close(soak.devs[i].dm);

		if (rc)
			soak_fail("uhmm_dmirror_close(device %d): %d", soak.devs[i].id, rc);
		soak.devs[i].dm = NULL;
	}
	soak_op_end(self, K_CHECKPOINT, 0);
	soak_check_all(self, "cpu check after closing the devices");

	/* Nothing may still live on a device. */
	if (soak_stopped())
		return;
	soak_op_begin(self, K_CHECKPOINT);
	if (uhmm_dmirror_open(0, &soak.devs[0].dm)) {
		soak_fail("reopening device 0 failed");
		return;
	}
	snap = (unsigned char *)self->bounce;
	for (int bi = 0; bi < SOAK_NBUF; bi++) {
		struct soak_buf *b = &soak.buf[bi];

		for (unsigned long f = 0; f < b->npages; f += SOAK_MAX_BOUNCE) {
			unsigned long n = b->npages - f < SOAK_MAX_BOUNCE ?
					  b->npages - f : SOAK_MAX_BOUNCE;

			if (soak_cmd(&soak.devs[0], UHMM_DMIRROR_SNAPSHOT,
				     soak_addr(b, f), snap, n))
				soak_fail("final SNAPSHOT failed");
			for (unsigned long i = 0; i < n; i++)
				left += (snap[i] & 0xf0) >= 0x20 &&
					(snap[i] & 0xf0) <= 0x50;
		}
	}
	if (left)
		soak_fail("%lu pages still on a device after every device was closed (leaked device pages)",
			  left);
	if (uhmm_dmirror_close(soak.devs[0].dm))
		soak_fail("closing the reopened device 0 failed");
	soak.devs[0].dm = NULL;

	/* Every device closed: no device page may be left in use. */
	in_use = soak_dev_pages_in_use();
	printf("soak: device pages in use after closing every device (uhmm_stats device_pages_in_use): %" PRId64 "\n",
	       in_use);
	if (in_use < 0)
		soak_fail("uhmm_stats_get gave no device_pages_in_use");
	else if (in_use)
		soak_fail("uhmm_stats device_pages_in_use is %" PRId64 " after every device was closed and every page checked (leaked device pages; %" PRId64 " in use before the devices closed)",
			  in_use, before);
	soak_op_end(self, K_CHECKPOINT, 0);
}

static void soak_report(double secs)
{
	unsigned long total = 0;
	char line[1024];
	size_t off = 0;

	printf("soak: ops by kind (ops, ops/s, pages):\n");
	for (int k = 0; k < K_NKINDS; k++) {
		unsigned long n = atomic_load(&soak.ops[k]);

		total += n;
		printf("soak:   %-11s %9lu %10.1f/s %10lu pages\n", soak_kind_name[k],
		       n, n / secs, (unsigned long)atomic_load(&soak.pages[k]));
		off += (size_t)snprintf(line + off, sizeof(line) - off, "%s%s=%lu",
					k ? " " : "", soak_kind_name[k], n);
	}
	printf("soak: allowed outcomes: -EBUSY %lu, MIGRATE_TO_DEV partial %lu, exclusive busy %lu, still exclusive before touch %lu, read-only WRITE -EPERM %lu, failed WRITE re-read %lu, no userfaultfd (-ENOSYS) %lu\n",
	       (unsigned long)atomic_load(&soak.busy),
	       (unsigned long)atomic_load(&soak.to_dev_partial),
	       (unsigned long)atomic_load(&soak.excl_busy),
	       (unsigned long)atomic_load(&soak.excl_held),
	       (unsigned long)atomic_load(&soak.ro_eperm),
	       (unsigned long)atomic_load(&soak.write_failed),
	       (unsigned long)atomic_load(&soak.nosys));
	printf("soak: locked to_dev: %lu ranges brought home first (%lu pages written in place for it; gave up: -EBUSY %lu, left on a device %lu); -ENOENT: %lu with a read-only range possible, %lu (%lu pages) THP split since a fork (M3), %lu migrated again (M4; %lu then landed whole)\n",
	       (unsigned long)atomic_load(&soak.homed),
	       (unsigned long)atomic_load(&soak.home_touched),
	       (unsigned long)atomic_load(&soak.home_busy),
	       (unsigned long)atomic_load(&soak.home_left),
	       (unsigned long)atomic_load(&soak.to_dev_ro),
	       (unsigned long)atomic_load(&soak.to_dev_folio),
	       (unsigned long)atomic_load(&soak.to_dev_folio_pages),
	       (unsigned long)atomic_load(&soak.to_dev_retry),
	       (unsigned long)atomic_load(&soak.to_dev_retry_ok));
	printf("soak: to_dev verified %lu pages (MIGRATE_TO_DEV read-backs), %lu more by a device READ after a partial one; to_sys verified %lu pages (CPU reads after locked MIGRATE_TO_SYS)\n",
	       (unsigned long)atomic_load(&soak.to_dev_verified),
	       (unsigned long)atomic_load(&soak.to_dev_read_verified),
	       (unsigned long)atomic_load(&soak.to_sys_verified));
	printf("soak: %lu ops in %.1f s (%s), corruptions=%lu\n", total, secs, line,
	       (unsigned long)atomic_load(&soak.fails));
}

/*
 * Runs the soak. Returns 0 when nothing went wrong, 1 on any failure,
 * 77 when the kernel or process cannot run it.
 */
static int soak_run(const struct soak_opts *o)
{
	pthread_t wd;
	long end, next_cp, cp_every;
	double secs;
	int ret = 1;

	memset(&soak, 0, sizeof(soak));
	soak.o = *o;
	/* On by default (the bug it found at first is fixed); =0 off. */
	soak.o.ro_write_probe = true;
	/* UHMM_SOAK_STRICT=1: every mode that finds a known uhmm bug. */
	if (getenv("UHMM_SOAK_STRICT") && atoi(getenv("UHMM_SOAK_STRICT")))
		soak.o.fork_racy = soak.o.unmap_racy = soak.o.migrate_racy = true;
	if (getenv("UHMM_SOAK_RO_WRITE_PROBE"))
		soak.o.ro_write_probe = atoi(getenv("UHMM_SOAK_RO_WRITE_PROBE")) != 0;
	if (getenv("UHMM_SOAK_FORK_RACY"))
		soak.o.fork_racy = atoi(getenv("UHMM_SOAK_FORK_RACY")) != 0;
	if (getenv("UHMM_SOAK_MIGRATE_RACY"))
		soak.o.migrate_racy = atoi(getenv("UHMM_SOAK_MIGRATE_RACY")) != 0;
	if (getenv("UHMM_SOAK_UNMAP_RACY"))
		soak.o.unmap_racy = atoi(getenv("UHMM_SOAK_UNMAP_RACY")) != 0;
	if (soak.o.mib < 16)
		soak.o.mib = 16;
	if (uhmm_init()) {
		printf("soak: uhmm_init failed: skipped\n");
		return 77;
	}
	{
		struct uhmm_features f = { .size = sizeof(f) };

		/*
		 * UFFD_USER_MODE_ONLY (unprivileged): the kernel's own faults
		 * on device pages and migrated ranges fail with EFAULT, so
		 * device commands on them do (docs/semantics.md).
		 */
		if (uhmm_features(&f) == 0 &&
		    f.uffd_path == UHMM_UFFD_SYSCALL_USER_ONLY) {
			soak.no_devmem = true;
			printf("soak: userfaultfd in UFFD_USER_MODE_ONLY: migrator and EXCLUSIVE taker skipped\n");
		}
	}
	for (int id = 0; id < SOAK_MAXDEV; id++) {
		const char *only = getenv("UHMM_SOAK_DEVICES");
		int rc;

		/* UHMM_SOAK_DEVICES=0,2 opens only those (to bisect). */
		if (only && *only && id > 0 && !strchr(only, '0' + id))
			continue;
		rc = uhmm_dmirror_open(id, &soak.devs[soak.ndevs].dm);

		if (rc == 0) {
			soak.devs[soak.ndevs++].id = id;
		} else if (rc == -ENODEV && id >= 2) {
			printf("soak: device %d (coherent): -ENODEV, skipped\n", id);
		} else {
			printf("soak: uhmm_dmirror_open(%d): %d (%s)\n", id, rc,
			       strerror(-rc));
			if (id < 2)
				return rc == -ENOSYS ? 77 : 1;
		}
	}
	soak.threads = calloc(16 + SOAK_MAXDEV, sizeof(*soak.threads));
	if (!soak.threads || soak_setup()) {
		printf("soak: out of memory\n");
		soak_teardown();
		return 1;
	}
	soak_add_thread("main", NULL, 0);
	soak_add_thread("cpu-read", soak_step_cpu_read, 0);
	soak_add_thread("cpu-write-0", soak_step_cpu_write, 0);
	soak_add_thread("cpu-write-1", soak_step_cpu_write, 0);
	for (int i = 0; i < soak.ndevs; i++) {
		static const char *const names[SOAK_MAXDEV] = {
			"device-0", "device-1", "device-2", "device-3" };

		soak_add_thread(names[soak.devs[i].id], soak_step_device, i);
	}
	soak_add_thread("migrator", soak_step_migrate, 0);
	soak_add_thread("unmapper", soak_step_unmap, 0);
	soak_add_thread("mprotect", soak_step_mprotect, 0);
	soak_add_thread("forker", soak_step_fork, 0);
	soak_add_thread("exclusive", soak_step_exclusive, 0);
	for (int i = 0; i < soak.nthreads; i++)
		if (!soak.threads[i].bounce) {
			printf("soak: out of memory\n");
			goto out;
		}

	/* Device memory and DMA engines exist before holes appear. */
	for (int i = 0; i < soak.ndevs && !soak.no_devmem; i++)
		soak_cmd(&soak.devs[i], UHMM_DMIRROR_MIGRATE_TO_DEV,
			 soak_addr(&soak.buf[2], (unsigned long)i),
			 soak.threads[0].bounce, 1);

	printf("soak: %.0f s, %lu MiB in %d buffers (2 THP), %d devices, seed %" PRIu64 "\n",
	       soak.o.seconds, soak.o.mib, SOAK_NBUF, soak.ndevs, soak.o.seed);
	fflush(stdout);
	soak.t0 = soak_now_ms();
	end = soak.t0 + (long)(soak.o.seconds * 1000);
	soak_hard_deadline = end + (long)(soak.o.hang_s * 1000) * 2;
	atomic_store(&soak_watch_stop, 0);
	if (pthread_create(&wd, NULL, soak_watchdog, NULL)) {
		printf("soak: cannot start the watchdog\n");
		goto out;
	}
	for (int i = 1; i < soak.nthreads; i++)
		if (pthread_create(&soak.threads[i].tid, NULL, soak_thread_main,
				   &soak.threads[i])) {
			soak_fail("pthread_create failed");
			soak.nthreads = i;	/* join only those started */
			break;
		}

	cp_every = (long)(soak.o.seconds * 1000 / 4);
	if (cp_every < 1000)
		cp_every = 1000;
	next_cp = soak.t0 + cp_every;
	while (!soak_stopped() && soak_now_ms() < end) {
		soak_sleep_ms(50);
		if (soak_now_ms() >= next_cp && soak_now_ms() < end) {
			soak_check_all(&soak.threads[0], "checkpoint");
			if (!o->quiet)
				printf("soak: checkpoint at %.1f s: %lu cpu writes, %lu device writes, %lu migrations, %lu forks so far\n",
				       (soak_now_ms() - soak.t0) / 1000.0,
				       (unsigned long)atomic_load(&soak.ops[K_CPU_WRITE]),
				       (unsigned long)atomic_load(&soak.ops[K_DEV_WRITE]),
				       (unsigned long)(atomic_load(&soak.ops[K_TO_DEV]) +
						       atomic_load(&soak.ops[K_TO_SYS])),
				       (unsigned long)atomic_load(&soak.ops[K_FORK]));
			next_cp += cp_every;
		}
	}
	secs = (soak_now_ms() - soak.t0) / 1000.0;
	atomic_store(&soak.stop, 1);
	for (int i = 1; i < soak.nthreads; i++)
		pthread_join(soak.threads[i].tid, NULL);
	if (!atomic_load(&soak.fails)) {
		/*
		 * The workers stopped: stop refusing new work for the end
		 * (soak_final's loops end at soak_stopped(), which a failure
		 * sets again).
		 */
		atomic_store(&soak.stop, 0);
		soak_final(&soak.threads[0]);
	}
	atomic_store(&soak_watch_stop, 1);
	pthread_join(wd, NULL);
	soak_report(secs);
	ret = atomic_load(&soak.fails) ? 1 : 0;
out:
	for (int i = 0; i < soak.ndevs; i++)
		if (soak.devs[i].dm)
			uhmm_dmirror_close(soak.devs[i].dm);
	soak_teardown();
	return ret;
}

/* UHMM_TEST_TIMEOUT_SCALE, as the harness reads it (1 if unset or bad). */
static double soak_timeout_scale(void)
{
	const char *env = getenv("UHMM_TEST_TIMEOUT_SCALE");
	double v = env ? strtod(env, NULL) : 1.0;

	return v > 0 ? v : 1.0;
}

#ifndef SOAK_NO_MAIN
int main(int argc, char **argv)
{
	struct soak_opts o = {
		.seconds = 60, .mib = 64, .hang_s = 60 * soak_timeout_scale(),
		.seed = (uint64_t)time(NULL),
	};
	const char *seed = getenv("UHMM_SOAK_SEED");
	int ret;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
		printf("usage: %s [seconds [MiB]]   (env: UHMM_SOAK_SEED, UHMM_TEST_TIMEOUT_SCALE)\n",
		       argv[0]);
		return 0;
	}
	if (argc > 1)
		o.seconds = strtod(argv[1], NULL);
	if (argc > 2)
		o.mib = strtoul(argv[2], NULL, 0);
	if (seed)
		o.seed = strtoull(seed, NULL, 0);
	if (!(o.seconds > 0) || o.mib > 1024) {
		fprintf(stderr, "%s: bad arguments\n", argv[0]);
		return 2;
	}
	ret = soak_run(&o);
	printf("# soak: %d passed, %d failed, %d skipped\n", ret == 0,
	       ret != 0 && ret != 77, ret == 77);
	return ret == 77 ? 0 : ret;
}
#endif
