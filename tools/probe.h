/* SPDX-License-Identifier: MIT */
/*
 * probe.h: what the isolation probes of tools/ share (issue 12, cause 1:
 * taking pages UFFDIO_MOVE refuses out of the address space). Header-only;
 * each probe_*.c defines one way to isolate a batch of pages and calls
 * probe_main(). docs/isolation-probes.md says what they found.
 *
 * A probe, for each page kind (private anonymous read-write, read-only,
 * shared copy-on-write with a live child, the anonymous pages of a
 * MAP_PRIVATE file mapping; 4 KiB pages and THPs):
 *   - whether the method works: the source no longer maps the pages, the
 *     device buffer holds their data, the child still reads its own, and
 *     the source range is still registered with the userfaultfd (a touch
 *     is a MISSING fault);
 *   - its cost per page, median of -n repetitions on pre-warmed memory,
 *     next to UFFDIO_MOVE and memcpy() measured in the same run;
 *   - whether a CPU write racing the isolation can be lost: a thread
 *     increments words of the last batch while the range is isolated
 *     again and again (the method holds its copy-to-release window open
 *     until the writer wrote or 2 ms passed); faults are served with the
 *     device's copy; a negative control must lose writes.
 * Only the probe's own memory is touched; nothing here is uhmm.
 */
#ifndef UHMM_PROBE_H
#define UHMM_PROBE_H

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Newer than the build headers (Debian 12): as src/os.h. */
#ifndef _UFFDIO_MOVE
#define _UFFDIO_MOVE (0x05)
struct uffdio_move {
	uint64_t dst;
	uint64_t src;
	uint64_t len;
	uint64_t mode;
	int64_t move;
};
#define UFFDIO_MOVE _IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1ULL << 16)
#endif
#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif

#define PROBE_HUGE	(2UL << 20)
#define PROBE_MAGIC	0x9e3779b97f4a7c15ULL

enum probe_kind { K_RW, K_RO, K_COW, K_FILE, K_NKINDS };

static const char *const probe_kind_name[K_NKINDS] = {
	"anon rw (exclusive)", "anon read-only", "anon COW, live child",
	"MAP_PRIVATE file, written",
};

/* One measured range and what the method needs around it. */
struct probe_ctx {
	char *src, *src_raw;	/* the application's range (aligned) */
	char *stage, *stage_raw; /* staging reservation, same size, aligned */
	char *dev;		/* "device memory": a pre-warmed buffer */
	size_t len, raw_len, stage_len, batch;
	size_t ps;
	int uffd;		/* src registered MISSING|WP when it can be */
	int reg_err;		/* 0, or the errno of UFFDIO_REGISTER */
	int file_fd;
	pid_t child;
	int child_pipe;		/* closing it lets the child check and exit */
	enum probe_kind kind;
	bool thp;
	double t[3];		/* ns spent in the method's three steps */
};

/* The method: take [off, off + len) of c->src out of the address space,
 * its data ending in c->dev + off; times in c->t[]. 0 or -errno. */
typedef int (*probe_isolate_fn)(struct probe_ctx *c, size_t off, size_t len);

struct probe_method {
	const char *name;
	const char *steps[3];	/* what t[0..2] time */
	probe_isolate_fn isolate;
	/* Set up before a racing run (a SIGSEGV handler for mprotect). */
	void (*race_prepare)(struct probe_ctx *c);
};

/* Set by the racing run: isolation of the current round is complete. */
static atomic_bool probe_done;
/*
 * During the racing run only, a method waits between taking its copy and
 * letting the pages go until the writer has written 100 more times (or
 * probe_pause_us passed): a window the writer surely runs in, even on a
 * busy machine. A writer held off (as it must be) uses up the time.
 */
static atomic_uint probe_pause_us;
static atomic_ulong *_Atomic probe_pause_progress;
/* Windows, and windows in which the writer wrote 100 times. */
static atomic_ulong probe_pauses, probe_pause_writes;
static size_t probe_pause_at;	/* the writer's batch */

/* Short names of the errnos the methods meet. */
static const char *probe_errname(int e)
{
	switch (e < 0 ? -e : e) {
	case 0: return "yes";
	case EINVAL: return "EINVAL";
	case EBUSY: return "EBUSY";
	case ENOENT: return "ENOENT";
	case EPERM: return "EPERM";
	case EFAULT: return "EFAULT";
	case EAGAIN: return "EAGAIN";
	case ENOMEM: return "ENOMEM";
	default: return "E?";
	}
}

static inline uint64_t probe_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void probe_pause(size_t off)
{
	unsigned int us = off == probe_pause_at ?
		atomic_load_explicit(&probe_pause_us, memory_order_relaxed) : 0;
	atomic_ulong *pr = atomic_load(&probe_pause_progress);
	uint64_t end = us ? probe_now_ns() + us * 1000ull : 0;
	unsigned long p0 = pr ? atomic_load(pr) : 0;

	/* Yielding: on a busy machine the writer may share this CPU. */
	while (probe_now_ns() < end && (!pr || atomic_load(pr) - p0 < 100))
		sched_yield();
	if (us && pr) {
		atomic_fetch_add(&probe_pauses, 1);
		if (atomic_load(pr) - p0 >= 100)
			atomic_fetch_add(&probe_pause_writes, 1);
	}
}

static inline uint64_t probe_word(size_t off)
{
	return (off * PROBE_MAGIC) ^ (off >> 12);
}

static void probe_fill(char *p, size_t len)
{
	for (size_t o = 0; o < len; o += 8)
		*(uint64_t *)(p + o) = probe_word(o);
}

static bool probe_check(const char *p, size_t len)
{
	for (size_t o = 0; o < len; o += 8)
		if (*(const uint64_t *)(p + o) != probe_word(o))
			return false;
	return true;
}

/* Pages of [p, p + len) present in the page tables (/proc/self/pagemap). */
static size_t probe_present(const void *p, size_t len, size_t ps)
{
	static int fd = -1;
	uint64_t e[512];
	size_t n = len / ps, got = 0;

	if (fd < 0)
		fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	for (size_t i = 0; fd >= 0 && i < n;) {
		size_t k = n - i < 512 ? n - i : 512;
		off_t at = (off_t)(((uintptr_t)p / ps + i) * 8);

		if (pread(fd, e, k * 8, at) != (ssize_t)(k * 8))
			return (size_t)-1;
		for (size_t j = 0; j < k; j++)
			got += e[j] >> 63;
		i += k;
	}
	return got;
}

/* AnonHugePages of the whole process, in kB (smaps_rollup). */
static long probe_anon_huge_kb(void)
{
	FILE *f = fopen("/proc/self/smaps_rollup", "r");
	char line[256];
	long kb = -1;

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "AnonHugePages: %ld kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb;
}

/* @events: also uhmm's event features (munmap, madvise, mremap). */
static int probe_uffd_open_ev(bool events)
{
	struct uffdio_api api = {
		.api = UFFD_API,
		.features = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_MOVE |
			(events ? UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMOVE |
			 UFFD_FEATURE_EVENT_REMAP : 0),
	};
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd < 0)
		fd = (int)syscall(SYS_userfaultfd,
				  O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (fd < 0 || ioctl(fd, UFFDIO_API, &api)) {
		perror("userfaultfd");
		exit(2);
	}
	return fd;
}

static int probe_uffd_open(void)
{
	return probe_uffd_open_ev(false);
}

static int probe_register(int uffd, void *p, size_t len, uint64_t mode)
{
	struct uffdio_register r = {
		.range = { (uintptr_t)p, len }, .mode = mode,
	};

	return ioctl(uffd, UFFDIO_REGISTER, &r) ? errno : 0;
}

/* @len bytes at a @align boundary inside a larger mapping (*raw). */
static char *probe_map_aligned(size_t len, size_t align, int prot, int flags,
			       int fd, char **raw, size_t *raw_len)
{
	size_t rl = len + align;
	char *b = mmap(NULL, rl, prot, flags, fd, 0);

	if (b == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	*raw = b;
	*raw_len = rl;
	return (char *)(((uintptr_t)b + align - 1) & ~(uintptr_t)(align - 1));
}

/*
 * A range of @kind, filled with the pattern, registered MISSING|WP where
 * userfaultfd allows; the staging reservation and the device buffer.
 * A file mapping is of a file on /var/tmp (not tmpfs, which is shmem):
 * its pages hold 0xee until the process writes them.
 */
static void probe_setup(struct probe_ctx *c, enum probe_kind kind, size_t len,
			bool thp, int uffd)
{
	size_t align = thp ? PROBE_HUGE : c->ps;
	int flags = MAP_PRIVATE | MAP_ANONYMOUS;

	c->kind = kind;
	c->thp = thp;
	c->len = len;
	c->uffd = uffd;
	c->file_fd = -1;
	c->child = 0;
	c->child_pipe = -1;
	c->batch = thp ? PROBE_HUGE : 64 * c->ps;
	if (kind == K_FILE) {
		char *ee = malloc(len);

		c->file_fd = open("/var/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
		memset(ee, 0xee, len);
		if (c->file_fd < 0 || pwrite(c->file_fd, ee, len, 0) != (ssize_t)len) {
			perror("/var/tmp file");
			exit(2);
		}
		free(ee);
		/* Offsets keep the file aligned with the range. */
		c->src_raw = mmap(NULL, len + align, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (c->src_raw == MAP_FAILED) {
			perror("mmap");
			exit(2);
		}
		c->raw_len = len + align;
		c->src = (char *)(((uintptr_t)c->src_raw + align - 1) &
				  ~(uintptr_t)(align - 1));
		if (mmap(c->src, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_FIXED, c->file_fd, 0) == MAP_FAILED) {
			perror("mmap file");
			exit(2);
		}
	} else {
		c->src = probe_map_aligned(len, align, PROT_READ | PROT_WRITE,
					   flags, -1, &c->src_raw, &c->raw_len);
	}
	if (thp)
		madvise(c->src, len, MADV_HUGEPAGE);
	probe_fill(c->src, len);
	if (kind == K_RO)
		mprotect(c->src, len, PROT_READ);
	c->reg_err = probe_register(uffd, c->src, len,
				    UFFDIO_REGISTER_MODE_MISSING |
				    UFFDIO_REGISTER_MODE_WP);
	if (kind == K_COW) {
		int pfd[2];
		char b;

		if (pipe(pfd)) {
			perror("pipe");
			exit(2);
		}
		c->child = fork();
		if (c->child == 0) {
			close(pfd[1]);
			while (read(pfd[0], &b, 1) < 0 && errno == EINTR)
				;
			_exit(probe_check(c->src, len) ? 0 : 1);
		}
		close(pfd[0]);
		c->child_pipe = pfd[1];
	}
	c->stage = probe_map_aligned(len, align, PROT_READ | PROT_WRITE, flags,
				     -1, &c->stage_raw, &c->stage_len);
	if (thp)
		madvise(c->stage, len, MADV_HUGEPAGE);
	c->dev = malloc(len);
	memset(c->dev, 0, len);		/* pre-warmed */
	memset(c->t, 0, sizeof(c->t));
}

/* The child's verdict: 1 its copy is intact, 0 not, -1 no child. */
static int probe_teardown(struct probe_ctx *c)
{
	int st = 0, ok = -1;

	if (c->child > 0) {
		close(c->child_pipe);
		waitpid(c->child, &st, 0);
		ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
	}
	munmap(c->src_raw, c->raw_len);
	munmap(c->stage_raw, c->stage_len);
	if (c->file_fd >= 0)
		close(c->file_fd);
	free(c->dev);
	return ok;
}

/*
 * Whether a touch of the source is a userfaultfd MISSING fault (the range
 * still registered): a thread reads page 0, the fault is served with the
 * device's copy. Returns 1 (fault seen, data right), 0 (no fault: what
 * the thread read is in *seen), -1 (fault seen, data wrong).
 */
struct probe_toucher {
	const char *p;
	uint64_t v;
	atomic_bool done;
};

static void *probe_touch(void *arg)
{
	struct probe_toucher *t = arg;

	t->v = *(volatile const uint64_t *)(t->p + 8);
	atomic_store(&t->done, true);
	return NULL;
}

static int probe_registered(struct probe_ctx *c, uint64_t *seen)
{
	struct probe_toucher t = { .p = c->src };
	struct pollfd pfd = { .fd = c->uffd, .events = POLLIN };
	struct uffd_msg msg;
	pthread_t th;
	int fault = 0;

	pthread_create(&th, NULL, probe_touch, &t);
	for (int i = 0; i < 50 && !atomic_load(&t.done) && !fault; i++) {
		if (poll(&pfd, 1, 20) == 1 &&
		    read(c->uffd, &msg, sizeof(msg)) == sizeof(msg) &&
		    msg.event == UFFD_EVENT_PAGEFAULT) {
			struct uffdio_copy cp = {
				.dst = msg.arg.pagefault.address & ~(uint64_t)(c->ps - 1),
				.src = (uintptr_t)c->dev +
				       (msg.arg.pagefault.address & ~(uint64_t)(c->ps - 1)) -
				       (uintptr_t)c->src,
				.len = c->ps,
			};

			fault = 1;
			if (ioctl(c->uffd, UFFDIO_COPY, &cp) && errno != EEXIST)
				perror("UFFDIO_COPY");
		}
	}
	pthread_join(th, NULL);
	*seen = t.v;
	if (!fault)
		return 0;
	return t.v == probe_word(8) ? 1 : -1;
}

/* Isolate all of c's range in batches; -errno of the first failure. */
static int probe_isolate_all(const struct probe_method *m, struct probe_ctx *c)
{
	for (size_t off = 0; off < c->len; off += c->batch) {
		int r = m->isolate(c, off, c->batch);

		if (r)
			return r;
	}
	return 0;
}

/* UFFDIO_MOVE of c's range to its (registered, empty) staging: 0 or errno. */
static int probe_move_all(struct probe_ctx *c)
{
	for (size_t off = 0; off < c->len; off += c->batch) {
		struct uffdio_move mv = {
			.dst = (uintptr_t)c->stage + off,
			.src = (uintptr_t)c->src + off, .len = c->batch,
		};

		if (ioctl(c->uffd, UFFDIO_MOVE, &mv))
			return errno;
	}
	return 0;
}

static int probe_dcmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double probe_median(double *v, unsigned int n)
{
	qsort(v, n, sizeof(*v), probe_dcmp);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* ---- the racing writer ---- */

struct probe_race {
	struct probe_ctx *c;
	const struct probe_method *m;
	atomic_bool stop;	/* the writer */
	atomic_bool stop_server;
	atomic_ulong progress;	/* increments done, in all */
	uint64_t *count;	/* increments done, per page */
	unsigned long faults_missing, faults_wp;
};

/*
 * Increments the first word of each page of the last batch, in turn: the
 * batch isolated last, so that the writer runs during the whole round
 * (a touch of an isolated page waits for the round's end).
 */
static void *probe_writer(void *arg)
{
	struct probe_race *r = arg;
	size_t n = r->c->len / r->c->ps, nb = r->c->batch / r->c->ps, k = n - nb;

	while (!atomic_load(&r->stop)) {
		volatile uint64_t *w = (volatile uint64_t *)(r->c->src + k * r->c->ps);

		*w += 1;
		r->count[k]++;
		atomic_fetch_add_explicit(&r->progress, 1, memory_order_relaxed);
		k = k + 1 < n ? k + 1 : n - nb;
	}
	return NULL;
}

/* Serves the range's faults: MISSING with the device's copy of the page
 * (once the round's isolation is done), WP by waiting for it. */
static void *probe_server(void *arg)
{
	struct probe_race *r = arg;
	struct probe_ctx *c = r->c;
	struct pollfd pfd = { .fd = c->uffd, .events = POLLIN };
	struct uffd_msg msg;

	while (!atomic_load(&r->stop_server)) {
		uint64_t a;

		if (poll(&pfd, 1, 10) != 1 ||
		    read(c->uffd, &msg, sizeof(msg)) != sizeof(msg) ||
		    msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		a = msg.arg.pagefault.address & ~(uint64_t)(c->ps - 1);
		while (!atomic_load(&probe_done))
			sched_yield();
		if (msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
			struct uffdio_range rg = { a, c->ps };

			r->faults_wp++;
			ioctl(c->uffd, UFFDIO_WAKE, &rg);
		} else {
			struct uffdio_copy cp = {
				.dst = a, .src = (uintptr_t)c->dev + (a - (uintptr_t)c->src),
				.len = c->ps,
			};

			r->faults_missing++;
			if (ioctl(c->uffd, UFFDIO_COPY, &cp) && errno != EEXIST) {
				struct uffdio_range rg = { a, c->ps };

				ioctl(c->uffd, UFFDIO_WAKE, &rg);
			}
		}
	}
	return NULL;
}

/*
 * @rounds isolations of a range of @kind while a thread increments words
 * of its last batch; between rounds every page is faulted back. Returns
 * the increments lost (0: none), or -1 if it could not run; *child: the
 * COW child's verdict (probe_teardown()).
 */
static long probe_race_run(const struct probe_method *m, enum probe_kind kind,
			   bool thp, size_t len, unsigned int rounds, int uffd,
			   unsigned long *faults, unsigned long *windows,
			   unsigned long *written, int *child)
{
	struct probe_ctx c = { .ps = (size_t)sysconf(_SC_PAGESIZE) };
	struct probe_race r = { .c = &c, .m = m };
	pthread_t wt, st;
	size_t n;
	long lost = 0;

	probe_setup(&c, kind, len, thp, uffd);
	if (c.reg_err) {
		*child = probe_teardown(&c);
		return -1;
	}
	if (m->race_prepare)
		m->race_prepare(&c);
	n = len / c.ps;
	r.count = calloc(n, sizeof(*r.count));
	atomic_store(&probe_pauses, 0);
	atomic_store(&probe_pause_writes, 0);
	probe_pause_at = len - c.batch;
	atomic_store(&probe_done, true);
	pthread_create(&st, NULL, probe_server, &r);
	pthread_create(&wt, NULL, probe_writer, &r);
	for (unsigned int i = 0; i < rounds; i++) {
		unsigned long p0 = atomic_load(&r.progress);
		uint64_t give_up = probe_now_ns() + 100000000ull;

		/* The writer running before the round starts. */
		while (atomic_load(&r.progress) - p0 < 1000 && probe_now_ns() < give_up)
			sched_yield();
		atomic_store(&probe_pause_progress, &r.progress);
		atomic_store(&probe_pause_us, 2000);
		atomic_store(&probe_done, false);
		if (probe_isolate_all(m, &c)) {
			lost = -1;
			atomic_store(&probe_pause_us, 0);
			atomic_store(&probe_done, true);
			break;
		}
		atomic_store(&probe_pause_us, 0);
		atomic_store(&probe_done, true);
		/* Everything back (MISSING faults), for the next round. */
		madvise(c.src, len, MADV_POPULATE_WRITE);
	}
	atomic_store(&r.stop, true);
	pthread_join(wt, NULL);		/* its last fault served first */
	atomic_store(&r.stop_server, true);
	pthread_join(st, NULL);
	if (lost == 0)
		for (size_t k = 0; k < n; k++) {
			uint64_t want = probe_word(k * c.ps) + r.count[k];
			uint64_t got;

			if (!probe_present(c.src + k * c.ps, c.ps, c.ps)) {
				/* Absent: its data are the device's copy. */
				got = *(uint64_t *)(c.dev + k * c.ps);
			} else {
				got = *(uint64_t *)(c.src + k * c.ps);
			}
			lost += (long)(want - got);
		}
	*faults = r.faults_missing + r.faults_wp;
	*windows = atomic_load(&probe_pauses);
	*written = atomic_load(&probe_pause_writes);
	atomic_store(&probe_pause_progress, NULL);
	free(r.count);
	*child = probe_teardown(&c);
	return lost;
}

/* ---- with uhmm's event features ---- */

struct probe_drain {
	int uffd;
	atomic_bool stop;
	unsigned long events;
};

/* Reads every message, as uhmm's readers would (nothing faults here). */
static void *probe_drainer(void *arg)
{
	struct probe_drain *d = arg;
	struct pollfd pfd = { .fd = d->uffd, .events = POLLIN };
	struct uffd_msg msg;

	while (!atomic_load(&d->stop))
		if (poll(&pfd, 1, 5) == 1 &&
		    read(d->uffd, &msg, sizeof(msg)) == sizeof(msg))
			d->events++;
	return NULL;
}

/*
 * The method on anon rw memory (4 KiB, THP) through a userfaultfd with
 * uhmm's features (EVENT_UNMAP, REMOVE, REMAP): MADV_DONTNEED and mremap
 * of a registered range then queue an event and wait until it is read.
 */
static void probe_events_cost(const struct probe_method *m, size_t len,
			      unsigned int reps)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);

	for (int thp = 0; thp < 2; thp++) {
		struct probe_drain d = { .uffd = probe_uffd_open_ev(true) };
		double tot[64];
		pthread_t th;
		unsigned long ev = 0;
		int err = 0;

		pthread_create(&th, NULL, probe_drainer, &d);
		for (unsigned int i = 0; i < reps && i < 64 && !err; i++) {
			struct probe_ctx c = { .ps = ps };
			unsigned long e0 = d.events;
			uint64_t t0;

			probe_setup(&c, K_RW, len, thp, d.uffd);
			t0 = probe_now_ns();
			err = probe_isolate_all(m, &c);
			tot[i] = (double)(probe_now_ns() - t0) / (double)(len / ps);
			ev = d.events - e0;
			probe_teardown(&c);
		}
		atomic_store(&d.stop, true);
		pthread_join(th, NULL);
		close(d.uffd);
		if (err)
			printf("with uhmm's event features, anon rw %s: %s\n",
			       thp ? "THP" : "4 KiB", probe_errname(err));
		else
			printf("with uhmm's event features, anon rw %s: total %.0f ns/page "
			       "(~%lu events per %zu-page batch read meanwhile)\n",
			       thp ? "THP" : "4 KiB", probe_median(tot, reps < 64 ? reps : 64),
			       ev / (len / (thp ? PROBE_HUGE : 64 * ps)),
			       thp ? PROBE_HUGE / ps : (size_t)64);
	}
}

/* ---- the program ---- */

static void probe_usage(const char *prog)
{
	fprintf(stderr, "usage: %s [-n REPS] [--size MiB] [--rounds N]\n"
		"  -n REPS     timed repetitions per figure (default 5)\n"
		"  --size MiB  range per kind (default 8; a multiple of 2)\n"
		"  --rounds N  isolations during the racing-write check (default 50)\n",
		prog);
}

/*
 * Everything, for one method: the kinds table (works? cost) and the
 * racing-write check, with @control (copy then zap, nothing held) as the
 * negative control that shows the check can see a lost write.
 */
static int probe_main(int argc, char **argv, const struct probe_method *m,
		      const struct probe_method *control)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	unsigned int reps = 5, rounds = 50;
	size_t len = 8UL << 20;
	int uffd = probe_uffd_open();
	unsigned long faults;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-n") && i + 1 < argc)
			reps = (unsigned int)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--size") && i + 1 < argc)
			len = (size_t)atol(argv[++i]) << 20;
		else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
			rounds = (unsigned int)atoi(argv[++i]);
		else {
			probe_usage(argv[0]);
			return 2;
		}
	}
	if (!reps || len < PROBE_HUGE || len % PROBE_HUGE) {
		probe_usage(argv[0]);
		return 2;
	}
	printf("# %s: %zu MiB per kind, %u reps, page %zu, batches of 64 pages or 1 THP\n",
	       m->name, len >> 20, reps, ps);
	printf("# steps: t0=%s t1=%s t2=%s (ns/page, medians)\n",
	       m->steps[0], m->steps[1], m->steps[2]);
	printf("%-27s %-3s %-6s %-4s %-4s %-10s %-5s %-6s %6s %6s %6s %6s | %6s %6s %6s\n",
	       "kind", "thp", "works", "gone", "data", "registered", "child",
	       "MOVE", "t0", "t1", "t2", "total", "move", "memcpy", "free");
	for (int thp = 0; thp < 2; thp++) {
		for (int k = 0; k < K_NKINDS; k++) {
			double tt[3][64], tot[64], mv[64], cp[64], fr[64];
			struct probe_ctx c = { .ps = ps };
			int err, reg, child, move_err;
			size_t gone;
			bool data;
			uint64_t seen = 0;
			char regs[32];
			long huge0;

			if (thp && k == K_FILE)
				continue;	/* file COW pages are 4 KiB */
			if (reps > 64)
				reps = 64;
			/* Does it work (one run, checked). */
			huge0 = probe_anon_huge_kb();
			probe_setup(&c, (enum probe_kind)k, len, thp, uffd);
			if (thp && probe_anon_huge_kb() - huge0 < (long)(len >> 10) / 2)
				printf("# (THP: only %ld kB of %zu kB huge)\n",
				       probe_anon_huge_kb() - huge0, len >> 10);
			err = probe_isolate_all(m, &c);
			gone = probe_present(c.src, len, ps);
			data = probe_check(c.dev, len);
			if (c.reg_err) {
				/* Not registrable: what a touch reads now. */
				reg = 0;
				seen = *(volatile uint64_t *)(c.src + 8);
			} else {
				reg = probe_registered(&c, &seen);
			}
			if (reg)
				snprintf(regs, sizeof(regs), reg > 0 ? "yes" : "yes,bad");
			else
				snprintf(regs, sizeof(regs), "no:%s%s",
					 seen == 0xeeeeeeeeeeeeeeeeULL ? "file" :
					 seen == 0 ? "zero" :
					 seen == probe_word(8) ? "old" : "?",
					 c.reg_err ? "*" : "");
			child = probe_teardown(&c);
			/* Does UFFDIO_MOVE take this kind? */
			probe_setup(&c, (enum probe_kind)k, len, thp, uffd);
			move_err = probe_register(uffd, c.stage, len,
						  UFFDIO_REGISTER_MODE_MISSING);
			if (!move_err)
				move_err = probe_move_all(&c);
			probe_teardown(&c);
			/* Cost: the method on this kind, MOVE and memcpy on anon rw. */
			for (unsigned int i = 0; i < reps && !err; i++) {
				uint64_t t0;

				probe_setup(&c, (enum probe_kind)k, len, thp, uffd);
				t0 = probe_now_ns();
				probe_isolate_all(m, &c);
				tot[i] = (double)(probe_now_ns() - t0) / (double)(len / ps);
				for (int s = 0; s < 3; s++)
					tt[s][i] = c.t[s] / (double)(len / ps);
				probe_teardown(&c);
				probe_setup(&c, K_RW, len, thp, uffd);
				probe_register(uffd, c.stage, len, UFFDIO_REGISTER_MODE_MISSING);
				t0 = probe_now_ns();
				probe_move_all(&c);
				mv[i] = (double)(probe_now_ns() - t0) / (double)(len / ps);
				t0 = probe_now_ns();
				memcpy(c.dev, c.stage, len);
				cp[i] = (double)(probe_now_ns() - t0) / (double)(len / ps);
				/* The moved pages freed, as a zap frees them. */
				t0 = probe_now_ns();
				madvise(c.stage, len, MADV_DONTNEED);
				fr[i] = (double)(probe_now_ns() - t0) / (double)(len / ps);
				probe_teardown(&c);
			}
			printf("%-27s %-3s %-6s %-4s %-4s %-10s %-5s %-6s",
			       probe_kind_name[k], thp ? "yes" : "no",
			       probe_errname(err), gone == 0 ? "yes" : "NO",
			       data ? "yes" : "NO", regs,
			       child < 0 ? "-" : child ? "ok" : "BAD",
			       probe_errname(move_err));
			if (err)
				printf(" %6s %6s %6s %6s |", "-", "-", "-", "-");
			else
				printf(" %6.0f %6.0f %6.0f %6.0f |",
				       probe_median(tt[0], reps), probe_median(tt[1], reps),
				       probe_median(tt[2], reps), probe_median(tot, reps));
			if (err)
				printf(" %6s %6s %6s\n", "-", "-", "-");
			else
				printf(" %6.0f %6.0f %6.0f\n", probe_median(mv, reps),
				       probe_median(cp, reps), probe_median(fr, reps));
			fflush(stdout);
		}
	}
	probe_events_cost(m, len, reps);
	printf("# racing writer: increments lost; windows (copy to release of "
	       "the writer's batch) in which it went on writing; faults served; "
	       "control: %s\n", control->name);
	for (int rc = 0; rc < 3; rc++) {
		enum probe_kind kind = rc == 1 ? K_COW : K_RW;
		bool thp = rc == 2;
		size_t rl = thp ? (len >= 2 * PROBE_HUGE ? 2 * PROBE_HUGE : PROBE_HUGE) :
			    len / 4;
		unsigned long faults_c, win, wr, win_c, wr_c;
		int child, child_c;
		long lost = probe_race_run(m, kind, thp, rl, rounds, uffd, &faults,
					   &win, &wr, &child);
		long lost_c = probe_race_run(control, kind, thp, rl, rounds, uffd,
					     &faults_c, &win_c, &wr_c, &child_c);

		printf("racing writer, %-21s %s, %u rounds over %zu KiB: %ld lost, "
		       "writes in %lu of %lu windows, %lu faults%s (control: %ld lost, "
		       "writes in %lu of %lu windows)\n",
		       probe_kind_name[kind], thp ? "THP" : "4 KiB", rounds, rl >> 10,
		       lost, wr, win, faults,
		       child < 0 ? "" : child ? ", child intact" : ", CHILD CHANGED",
		       lost_c, wr_c, win_c);
	}
	close(uffd);
	return 0;
}

/* The negative control: copy, then zap, nothing holding writes off. */
static int probe_copy_zap(struct probe_ctx *c, size_t off, size_t len)
{
	memcpy(c->dev + off, c->src + off, len);
	probe_pause(off);
	return madvise(c->src + off, len, MADV_DONTNEED) ? -errno : 0;
}

static const struct probe_method probe_control = {
	.name = "copy+zap, unprotected",
	.steps = { "-", "-", "-" },
	.isolate = probe_copy_zap,
};

#endif /* UHMM_PROBE_H */
