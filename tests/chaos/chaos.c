/* SPDX-License-Identifier: MIT */
/*
 * libuhmm-chaos.so: an LD_PRELOAD library that keeps a program's memory
 * moving between system memory and the dmirror devices while the program
 * runs, on the public API only. tests/chaos/run.sh runs programs with and
 * without it and compares what they print (tests/chaos/README.md).
 *
 * One background thread picks a private anonymous writable mapping of the
 * process from /proc/self/maps, a page range of 1 page to 4 MiB in it, a
 * device and a command, and runs it; it never writes the program's
 * memory. Environment (read once, in the constructor):
 *   UHMM_CHAOS_MODE  migrate (default): every command below; read: READ
 *                    and SNAPSHOT only; off: nothing but loading uhmm
 *   UHMM_CHAOS_SEED  random seed (default: from the clock)
 *   UHMM_CHAOS_RATE  commands per second (default 1000)
 *   UHMM_CHAOS_OPS   to_dev,to_sys,read,excl,release,snap (default all
 *                    the mode allows)
 *   UHMM_CHAOS_MAPS  heap,stack,tstack,bss,anon (default); libc and uhmm
 *                    (the C library's .bss, uhmm's own mappings) are
 *                    opt-in
 *   UHMM_CHAOS_FORK  1 (default): a fork child starts a chaos thread of
 *                    its own, 2 ms after the fork; 0: children run plain
 *   UHMM_CHAOS_CLOSE thread (default): at exit the chaos thread closes the
 *                    devices, which brings their pages home; caller: the
 *                    thread that exits does
 *   UHMM_CHAOS_LOG   a file; each process appends one summary line at exit
 *                    (and one line when it starts: its arguments, its
 *                    descriptors)
 *   UHMM_CHAOS_DEVICES the dmirror devices to use, e.g. 0,1 (default all
 *                    four: 0 and 1 private, 2 and 3 coherent)
 *   UHMM_CHAOS_TRACE 1: each process also writes its last commands, with
 *                    times, ranges and results, to the log's name with
 *                    .<pid> appended (a wrong answer's commands)
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <uhmm/dmirror.h>
#include <uhmm/migrate.h>
#include <uhmm/stats.h>
#include <uhmm/uhmm.h>

#define CHAOS_NDEV		4
#define CHAOS_MAX_PAGES		1024UL		/* 4 MiB of 4 KiB pages */
#define CHAOS_STACK		(256UL << 10)
#define CHAOS_MAPS_BYTES	(1UL << 20)
#define CHAOS_MAX_RANGES	8192
#define CHAOS_MAX_EXCL		512
#define CHAOS_NERR		134
#define CHAOS_MAPS_EVERY_NS	10000000ULL	/* re-read the maps every 10 ms */
#define CHAOS_CHILD_DELAY_NS	2000000ULL
#define CHAOS_TRACE_LEN		8192	/* commands kept by UHMM_CHAOS_TRACE */
#define CHAOS_SLEEP_SLICE_NS	10000000ULL	/* stop is checked this often */

enum chaos_mode { MODE_OFF, MODE_READ, MODE_MIGRATE };

enum chaos_op { OP_TO_DEV, OP_TO_SYS, OP_READ, OP_EXCL, OP_RELEASE, OP_SNAP,
		OP_N };
static const char *const op_name[OP_N] = {
	"to_dev", "to_sys", "read", "excl", "release", "snap",
};
/* Relative frequency of each command. */
static const unsigned int op_weight[OP_N] = { 30, 20, 15, 10, 5, 20 };
static const enum uhmm_dmirror_op op_cmd[OP_N] = {
	UHMM_DMIRROR_MIGRATE_TO_DEV, UHMM_DMIRROR_MIGRATE_TO_SYS,
	UHMM_DMIRROR_READ, UHMM_DMIRROR_EXCLUSIVE, UHMM_DMIRROR_RELEASE,
	UHMM_DMIRROR_SNAPSHOT,
};

/*
 * Kinds of mapping. tstack: an anonymous mapping right above a PROT_NONE
 * one (glibc's thread stacks and their guard); bss: an anonymous mapping
 * right after a file mapping (the part of a .bss past the file's last
 * page); libc: that of the C library or the dynamic loader, whose globals
 * every thread reads, uhmm's own included; uhmm: what libuhmm.so mapped
 * for itself (its arena, staging regions, device memory) and its .bss,
 * which a program cannot name. The last two are opt-in.
 */
enum chaos_kind { KIND_HEAP, KIND_STACK, KIND_TSTACK, KIND_BSS, KIND_ANON,
		  KIND_LIBC, KIND_UHMM, KIND_N };
static const char *const map_name[KIND_N] = {
	"heap", "stack", "tstack", "bss", "anon", "libc", "uhmm",
};
#define KIND_DEFAULT	((1U << KIND_LIBC) - 1)

struct chaos_range {
	uintptr_t start, end;
	uint64_t cum;		/* pages of this and every earlier range */
	unsigned int kind;
};

/*
 * Everything the chaos thread touches lives here or in the buffers it
 * points to: uhmm_alloc()'s memory, which no migration takes (a page the
 * thread needs on a device while it holds a device lock would be its own
 * deadlock, not uhmm's).
 */
struct chaos {
	/* configuration, set by the constructor */
	enum chaos_mode mode;
	unsigned int ops_mask, maps_mask;
	unsigned long rate;
	bool fork_chaos;
	unsigned int dev_mask;		/* UHMM_CHAOS_DEVICES */
	bool close_by_caller;		/* UHMM_CHAOS_CLOSE=caller */
	uint64_t seed;
	char log[512];
	char cmd[256];			/* argv, '|'-separated, as exec'd */
	struct chaos_trace {
		uint64_t t0_ns, t1_ns, addr, npages, cpages;
		int op, dev, ret;
	} *trace;			/* UHMM_CHAOS_TRACE: a ring */
	uint64_t ntrace;
	unsigned long page;

	char *stack;			/* CHAOS_STACK bytes */
	char *maps;			/* CHAOS_MAPS_BYTES */
	int maps_fd;			/* /proc/self/maps, held (open_high) */
	char *buf;			/* CHAOS_MAX_PAGES pages */
	unsigned char *snap;		/* CHAOS_MAX_PAGES bytes */
	struct chaos_range *ranges;	/* CHAOS_MAX_RANGES */
	unsigned int nranges;

	struct uhmm_dmirror *dm[CHAOS_NDEV];
	pthread_t thread;
	bool running;
	bool in_child;
	_Atomic bool stop;
	/* Held around each command; the atfork prepare handler takes it, so
	 * that no command runs across a fork. */
	pthread_mutex_t oplock;
	uint64_t rng;
	unsigned long generation;	/* forks seen: a child's seed */

	/* counters, read at exit once the thread is joined */
	uint64_t tried[OP_N], ok[OP_N];
	uint64_t by_map[KIND_N];
	uint64_t err[CHAOS_NERR];
	uint64_t scans, maps_truncated, no_target;
	int open_err[CHAOS_NDEV], close_err[CHAOS_NDEV];
};

static struct chaos *chaos_state;

/*
 * Address ranges of a fixed kind, whatever the maps say: this library and
 * the thread's stack (KIND_N: never picked), what libuhmm.so mapped
 * (KIND_UHMM), the C library and the loader (KIND_LIBC). Appended by any
 * thread (mmap() below), never removed: a range uhmm unmapped only costs
 * a few picks. Entries are published by their end.
 */
struct chaos_excl {
	uintptr_t start;
	_Atomic uintptr_t end;
	unsigned int kind;
};
static struct chaos_excl chaos_excl[CHAOS_MAX_EXCL];
static atomic_uint chaos_nexcl;
/* libuhmm.so's extent, found before the chaos thread starts. */
static _Atomic uintptr_t chaos_uhmm_start, chaos_uhmm_end;

static void excl_add(uintptr_t start, uintptr_t end, unsigned int kind)
{
	unsigned int i = atomic_fetch_add(&chaos_nexcl, 1);

	if (i >= CHAOS_MAX_EXCL || start >= end)
		return;
	chaos_excl[i].start = start;
	chaos_excl[i].kind = kind;
	atomic_store_explicit(&chaos_excl[i].end, end, memory_order_release);
}

/*
 * Whether @pc is code of libuhmm.so. The first call asks the dynamic
 * loader (_dl_find_object(), lock-free); later ones read only this
 * library's data: mmap() runs on uhmm's threads too, which must not touch
 * memory the chaos thread may move (the loader's is such memory).
 */
static bool pc_in_uhmm(void *pc)
{
	uintptr_t s = atomic_load_explicit(&chaos_uhmm_start, memory_order_acquire);
	struct dl_find_object f;

	if (!s) {
		if (_dl_find_object((void *)(uintptr_t)uhmm_alloc, &f))
			return false;
		atomic_store_explicit(&chaos_uhmm_end, (uintptr_t)f.dlfo_map_end,
				      memory_order_relaxed);
		s = (uintptr_t)f.dlfo_map_start;
		atomic_store_explicit(&chaos_uhmm_start, s, memory_order_release);
	}
	return (uintptr_t)pc >= s &&
	       (uintptr_t)pc < atomic_load_explicit(&chaos_uhmm_end,
						    memory_order_relaxed);
}

/*
 * mmap() as the C library's, which notes what libuhmm.so maps for itself
 * (its arena, staging regions, coherent pools): memory of uhmm's, not of
 * the program. The system call directly: this runs before any
 * constructor, and on uhmm's own threads.
 */
void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	void *p = (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);

	if (p != MAP_FAILED && pc_in_uhmm(__builtin_return_address(0)))
		excl_add((uintptr_t)p, (uintptr_t)p + len, KIND_UHMM);
	return p;
}
void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
	__attribute__((alias("mmap")));

/* ------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t rnd(struct chaos *c, uint64_t n)
{
	return n ? splitmix64(&c->rng) % n : 0;
}

static uint64_t mono_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

static void sleep_ns(uint64_t ns)
{
	struct timespec t = { .tv_sec = (time_t)(ns / 1000000000ULL),
			      .tv_nsec = (long)(ns % 1000000000ULL) };

	while (nanosleep(&t, &t) && errno == EINTR)
		;
}

/* ------------------------------------------------------------ the maps */

static uintptr_t parse_hex(const char **p, const char *end)
{
	uintptr_t v = 0;

	for (; *p < end; (*p)++) {
		char ch = **p;
		unsigned int d;

		if (ch >= '0' && ch <= '9')
			d = (unsigned int)(ch - '0');
		else if (ch >= 'a' && ch <= 'f')
			d = (unsigned int)(ch - 'a' + 10);
		else
			break;
		v = v << 4 | d;
	}
	return v;
}

static const char *skip_field(const char *p, const char *end)
{
	while (p < end && *p != ' ' && *p != '\n')
		p++;
	while (p < end && *p == ' ')
		p++;
	return p;
}

static void range_add(struct chaos *c, uintptr_t s, uintptr_t e,
		      unsigned int kind)
{
	struct chaos_range *r;

	if (s >= e || c->nranges == CHAOS_MAX_RANGES ||
	    !(c->maps_mask & 1U << kind))
		return;
	r = &c->ranges[c->nranges];
	r->start = s;
	r->end = e;
	r->kind = kind;
	r->cum = (c->nranges ? c->ranges[c->nranges - 1].cum : 0) +
		 (e - s) / c->page;
	c->nranges++;
}

/* [s, e), the parts in a range of chaos_excl[] of that range's kind. */
static void range_add_cut(struct chaos *c, uintptr_t s, uintptr_t e,
			  unsigned int kind)
{
	unsigned int n = atomic_load(&chaos_nexcl);

	if (n > CHAOS_MAX_EXCL)
		n = CHAOS_MAX_EXCL;
	for (unsigned int i = 0; i < n; i++) {
		uintptr_t xe = atomic_load_explicit(&chaos_excl[i].end,
						    memory_order_acquire);
		uintptr_t xs = chaos_excl[i].start & ~(c->page - 1);

		xe = (xe + c->page - 1) & ~(c->page - 1);
		if (!xe || xs >= e || xe <= s)
			continue;
		if (xs > s)
			range_add_cut(c, s, xs, kind);
		if (chaos_excl[i].kind != KIND_N)
			range_add(c, xs > s ? xs : s, xe < e ? xe : e,
				  chaos_excl[i].kind);
		if (xe < e)
			range_add_cut(c, xe, e, kind);
		return;
	}
	range_add(c, s, e, kind);
}

/*
 * A descriptor held for the process's life, at a number far above the
 * program's (800 on): the program juggles its low numbers from its own
 * thread and closes some twice (bash, a pipe's ends after a fork). A
 * descriptor this thread opened and closed for each scan was once taken
 * by such a second close, the program's next pipe got its number, and the
 * scan read the pipe: the first pipe buffer of `cut | sort -u` never
 * reached sort (issue 11's lost pipe buffers). Opened where the program
 * runs no code: the constructor, and the atfork child handler.
 */
static int open_high(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), h;

	if (fd < 0)
		return fd;
	h = fcntl(fd, F_DUPFD_CLOEXEC, 800);
	if (h < 0)
		return fd;
	close(fd);
	return h;
}

/*
 * Read /proc/self/maps (pread of the held descriptor into a buffer of
 * ours: no stdio, no malloc) and keep the private anonymous writable
 * mappings.
 */
static void chaos_scan(struct chaos *c)
{
	const char *p, *end;
	uintptr_t prev_end = 0;
	unsigned int prev_kind = KIND_N;
	bool prev_file = false, prev_guard = false;
	size_t len = 0;
	int fd;

	c->nranges = 0;
	c->scans++;
	fd = c->maps_fd;
	if (fd < 0)
		return;
	for (;;) {
		ssize_t r = pread(fd, c->maps + len, CHAOS_MAPS_BYTES - len,
				  (off_t)len);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		len += (size_t)r;
		if (len == CHAOS_MAPS_BYTES) {
			c->maps_truncated++;
			break;
		}
	}

	for (p = c->maps, end = c->maps + len; p < end;) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		const char *perms, *path;
		uintptr_t s, e;
		unsigned long inode = 0;
		unsigned int kind;
		bool rw;

		if (!eol)
			break;		/* a line cut by a full buffer */
		s = parse_hex(&p, eol);
		if (p < eol && *p == '-')
			p++;
		e = parse_hex(&p, eol);
		p = skip_field(p, eol);
		perms = p;
		if (eol - perms < 4)
			goto next;
		p = skip_field(p, eol);		/* perms */
		p = skip_field(p, eol);		/* offset */
		p = skip_field(p, eol);		/* device */
		for (; p < eol && *p >= '0' && *p <= '9'; p++)
			inode = inode * 10 + (unsigned long)(*p - '0');
		while (p < eol && *p == ' ')
			p++;
		path = p;
		rw = perms[0] == 'r' && perms[1] == 'w' && perms[3] == 'p';

		if (inode) {
			kind = KIND_N;
		} else if (*path == '[') {
			if (!strncmp(path, "[heap]", 6))
				kind = KIND_HEAP;
			else if (!strncmp(path, "[stack]", 7))
				kind = KIND_STACK;
			else if (!strncmp(path, "[anon:", 6))
				kind = KIND_ANON;
			else
				kind = KIND_N;	/* [vvar], [vdso], [vsyscall] */
		} else if (path != eol) {
			kind = KIND_N;		/* a deleted file, memfd */
		} else if (s == prev_end && (prev_file || prev_kind == KIND_BSS)) {
			/* a .bss may be two mappings once uhmm registered
			 * part of it */
			kind = KIND_BSS;
		} else if (s == prev_end && prev_guard) {
			kind = KIND_TSTACK;
		} else {
			kind = KIND_ANON;
		}
		if (rw && kind != KIND_N)
			range_add_cut(c, s, e, kind);
		prev_end = e;
		prev_kind = kind;
		prev_file = inode != 0;
		prev_guard = !inode && path == eol && perms[0] == '-' &&
			     perms[1] == '-' && perms[2] == '-';
next:
		p = eol + 1;
	}
}

/* ------------------------------------------------------------- commands */

static unsigned int pick_op(struct chaos *c)
{
	unsigned int total = 0, x;

	for (unsigned int i = 0; i < OP_N; i++)
		if (c->ops_mask & 1U << i)
			total += op_weight[i];
	x = (unsigned int)rnd(c, total);
	for (unsigned int i = 0; i < OP_N; i++) {
		if (!(c->ops_mask & 1U << i))
			continue;
		if (x < op_weight[i])
			return i;
		x -= op_weight[i];
	}
	return OP_READ;
}

/* Half the picks by mapping, half by page (so big mappings get theirs). */
static const struct chaos_range *pick_range(struct chaos *c)
{
	unsigned int lo = 0, hi = c->nranges - 1;
	uint64_t pg;

	if (rnd(c, 2))
		return &c->ranges[rnd(c, c->nranges)];
	pg = rnd(c, c->ranges[hi].cum);
	while (lo < hi) {
		unsigned int mid = lo + (hi - lo) / 2;

		if (c->ranges[mid].cum > pg)
			hi = mid;
		else
			lo = mid + 1;
	}
	return &c->ranges[lo];
}

/* One command on a random range of a random mapping. */
static void chaos_step(struct chaos *c)
{
	const struct chaos_range *r;
	struct uhmm_dmirror_cmd cmd = { 0 };
	struct uhmm_dmirror *dm = NULL;
	uint64_t mpages, maxp, npages, first, bits = 0;
	uintptr_t stack = (uintptr_t)c->stack;
	unsigned int op, d;
	int ret;

	if (!c->nranges) {
		c->no_target++;
		return;
	}
	r = pick_range(c);
	mpages = (r->end - r->start) / c->page;
	maxp = mpages < CHAOS_MAX_PAGES ? mpages : CHAOS_MAX_PAGES;
	/* Sizes spread evenly over the powers of two up to maxp. */
	while ((2ULL << bits) <= maxp)
		bits++;
	npages = 1 + rnd(c, 1ULL << rnd(c, bits + 1));
	if (npages > maxp)
		npages = maxp;
	first = rnd(c, mpages - npages + 1);
	cmd.addr = r->start + first * c->page;
	cmd.npages = npages;
	if (cmd.addr < stack + CHAOS_STACK &&
	    cmd.addr + npages * c->page > stack) {
		c->no_target++;
		return;
	}
	op = pick_op(c);
	cmd.ptr = (uintptr_t)(op == OP_SNAP ? (char *)c->snap : c->buf);
	for (unsigned int k = 0; k < CHAOS_NDEV && !dm; k++) {
		d = (unsigned int)rnd(c, CHAOS_NDEV);
		dm = c->dm[d];
	}
	if (!dm) {
		c->no_target++;
		return;
	}

	uint64_t t0 = c->trace ? mono_ns() : 0;

	pthread_mutex_lock(&c->oplock);
	ret = uhmm_dmirror_cmd(dm, op_cmd[op], &cmd);
	pthread_mutex_unlock(&c->oplock);
	if (c->trace)
		c->trace[c->ntrace++ % CHAOS_TRACE_LEN] = (struct chaos_trace){
			.t0_ns = t0, .t1_ns = mono_ns(), .addr = cmd.addr,
			.npages = npages, .cpages = cmd.cpages, .op = (int)op,
			.dev = (int)d, .ret = ret,
		};

	c->tried[op]++;
	c->by_map[r->kind]++;
	if (ret == 0)
		c->ok[op]++;
	else
		c->err[-ret > 0 && -ret < CHAOS_NERR ? -ret : 0]++;
}

static void chaos_open(struct chaos *c)
{
	for (int d = 0; d < CHAOS_NDEV; d++) {
		if (!(c->dev_mask & 1U << d))
			continue;
		c->open_err[d] = uhmm_dmirror_open(d, &c->dm[d]);
		if (c->open_err[d])
			c->dm[d] = NULL;
	}
}

static void chaos_close(struct chaos *c)
{
	for (int d = 0; d < CHAOS_NDEV; d++) {
		if (!c->dm[d])
			continue;
		c->close_err[d] = uhmm_dmirror_close(c->dm[d]);
		c->dm[d] = NULL;
	}
}

static void *chaos_main(void *arg)
{
	struct chaos *c = arg;
	uint64_t period = 1000000000ULL / c->rate, next, last_scan = 0;

	if (c->in_child) {
		/* A child that execs or exits right away never pays. */
		sleep_ns(CHAOS_CHILD_DELAY_NS);
		if (atomic_load(&c->stop))
			return NULL;
		chaos_open(c);
	}
	next = mono_ns();
	while (!atomic_load(&c->stop)) {
		uint64_t now = mono_ns();

		if (!c->nranges || now - last_scan >= CHAOS_MAPS_EVERY_NS) {
			chaos_scan(c);
			last_scan = now;
		}
		chaos_step(c);
		next += period;
		now = mono_ns();
		if (now > next + 100000000ULL)
			next = now;	/* a long command: no burst after it */
		while (next > now && !atomic_load(&c->stop)) {
			uint64_t ns = next - now;

			sleep_ns(ns < CHAOS_SLEEP_SLICE_NS ? ns : CHAOS_SLEEP_SLICE_NS);
			now = mono_ns();
		}
	}
	/*
	 * Closing brings every device page home, an eviction. Here, not on
	 * the thread that exits: that thread's stack or TLS may be among the
	 * pages, and an evicting thread that touches a page it is moving
	 * waits for itself (UHMM_CHAOS_CLOSE=caller shows it).
	 */
	if (!c->close_by_caller)
		chaos_close(c);
	return NULL;
}

/*
 * The thread on its uhmm_alloc() stack, with every asynchronous signal
 * blocked: the program's signals go to the program's threads. SIGSEGV and
 * SIGBUS stay open: uhmm_copy_nofault() catches them, and a blocked
 * synchronous signal kills the process instead (a READ racing a munmap).
 */
static void chaos_start(struct chaos *c)
{
	pthread_attr_t attr;
	sigset_t all, old;

	atomic_store(&c->stop, false);
	if (pthread_attr_init(&attr))
		return;
	if (!pthread_attr_setstack(&attr, c->stack, CHAOS_STACK)) {
		sigfillset(&all);
		sigdelset(&all, SIGSEGV);
		sigdelset(&all, SIGBUS);
		sigdelset(&all, SIGFPE);
		sigdelset(&all, SIGILL);
		sigdelset(&all, SIGTRAP);
		pthread_sigmask(SIG_SETMASK, &all, &old);
		c->running = !pthread_create(&c->thread, &attr, chaos_main, c);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		if (c->running)
			pthread_setname_np(c->thread, "uhmm-chaos");
	}
	pthread_attr_destroy(&attr);
}

/* ----------------------------------------------------------------- fork */

static void chaos_prepare(void)
{
	struct chaos *c = chaos_state;

	if (c)
		pthread_mutex_lock(&c->oplock);
}

static void chaos_parent(void)
{
	struct chaos *c = chaos_state;

	if (c) {
		c->generation++;
		pthread_mutex_unlock(&c->oplock);
	}
}

/*
 * The chaos thread does not exist here and the parent's opens answer
 * -EBADF (docs/semantics.md row 11): forget them, count afresh, and start
 * a thread on the same stack (the parent's copy is nobody's here) that
 * opens devices of its own after a delay. Registered after dmirror's own
 * handler (the constructor opens first), so dmirror has reset its table.
 */
static void chaos_child(void)
{
	struct chaos *c = chaos_state;
	uint64_t seed;

	if (!c || c->mode == MODE_OFF)
		return;
	pthread_mutex_unlock(&c->oplock);
	seed = c->rng ^ (c->generation + 1) * 0x9e3779b97f4a7c15ULL;
	c->running = false;
	memset(c->dm, 0, sizeof(c->dm));
	memset(c->tried, 0, sizeof(c->tried));
	memset(c->ok, 0, sizeof(c->ok));
	memset(c->by_map, 0, sizeof(c->by_map));
	memset(c->err, 0, sizeof(c->err));
	memset(c->open_err, 0, sizeof(c->open_err));
	memset(c->close_err, 0, sizeof(c->close_err));
	c->scans = c->maps_truncated = c->no_target = 0;
	c->nranges = 0;
	c->ntrace = 0;
	c->generation = 0;
	c->rng = splitmix64(&seed);
	c->in_child = true;
	/* The parent's names the parent's maps. */
	if (c->maps_fd >= 0)
		close(c->maps_fd);
	c->maps_fd = open_high("/proc/self/maps");
	if (c->fork_chaos)
		chaos_start(c);
}

/* ---------------------------------------------------------------- setup */

static unsigned int parse_list(const char *v, const char *const *names,
			       unsigned int n, const char *var)
{
	unsigned int mask = 0;

	while (*v) {
		size_t l = strcspn(v, ",");
		unsigned int i;

		for (i = 0; i < n; i++)
			if (strlen(names[i]) == l && !strncmp(v, names[i], l))
				break;
		if (i < n)
			mask |= 1U << i;
		else if (l)
			fprintf(stderr, "uhmm-chaos: %s: unknown name '%.*s'\n",
				var, (int)l, v);
		v += l;
		if (*v == ',')
			v++;
	}
	return mask;
}

static int chaos_config(struct chaos *c)
{
	const char *v;
	uint64_t mix;

	v = getenv("UHMM_CHAOS_LOG");
	if (v)
		snprintf(c->log, sizeof(c->log), "%s", v);
	v = getenv("UHMM_CHAOS_MODE");
	c->mode = MODE_MIGRATE;
	if (v && !strcmp(v, "off"))
		c->mode = MODE_OFF;
	else if (v && !strcmp(v, "read"))
		c->mode = MODE_READ;
	else if (v && *v && strcmp(v, "migrate"))
		fprintf(stderr, "uhmm-chaos: UHMM_CHAOS_MODE: unknown mode '%s'\n", v);

	c->ops_mask = c->mode == MODE_READ ?
		      1U << OP_READ | 1U << OP_SNAP : (1U << OP_N) - 1;
	v = getenv("UHMM_CHAOS_OPS");
	if (v && *v)
		c->ops_mask &= parse_list(v, op_name, OP_N, "UHMM_CHAOS_OPS");
	if (!c->ops_mask)
		c->mode = MODE_OFF;
	c->maps_mask = KIND_DEFAULT;
	v = getenv("UHMM_CHAOS_MAPS");
	if (v && *v)
		c->maps_mask = parse_list(v, map_name, KIND_N, "UHMM_CHAOS_MAPS");

	v = getenv("UHMM_CHAOS_SEED");
	c->seed = v && *v ? strtoull(v, NULL, 0) : (uint64_t)time(NULL);
	v = getenv("UHMM_CHAOS_RATE");
	c->rate = v && *v ? strtoul(v, NULL, 0) : 1000;
	if (!c->rate)
		c->rate = 1;
	if (c->rate > 1000000000UL)
		c->rate = 1000000000UL;
	v = getenv("UHMM_CHAOS_FORK");
	c->fork_chaos = !(v && !strcmp(v, "0"));
	v = getenv("UHMM_CHAOS_CLOSE");
	c->close_by_caller = v && !strcmp(v, "caller");
	c->dev_mask = (1U << CHAOS_NDEV) - 1;
	v = getenv("UHMM_CHAOS_DEVICES");
	if (v && *v) {
		c->dev_mask = 0;
		for (; *v; v++)
			if (*v >= '0' && *v < '0' + CHAOS_NDEV)
				c->dev_mask |= 1U << (*v - '0');
	}
	v = getenv("UHMM_CHAOS_TRACE");
	if (v && !strcmp(v, "1") && c->log[0])
		c->trace = uhmm_calloc(CHAOS_TRACE_LEN, sizeof(*c->trace));

	/* Each program of a run draws its own sequence from the one seed. */
	mix = c->seed;
	for (v = program_invocation_short_name; *v; v++)
		mix = (mix ^ (unsigned char)*v) * 0x100000001b3ULL;
	c->rng = splitmix64(&mix);
	return c->mode == MODE_OFF ? -1 : 0;
}

/* The extents of the C library and the dynamic loader: KIND_LIBC. */
static int find_libc(struct dl_phdr_info *info, size_t size, void *arg)
{
	const char *name = strrchr(info->dlpi_name, '/');
	uintptr_t lo = UINTPTR_MAX, hi = 0;

	(void)size;
	(void)arg;
	name = name ? name + 1 : info->dlpi_name;
	if (strncmp(name, "libc.so", 7) && strncmp(name, "ld-linux", 8))
		return 0;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];

		if (ph->p_type != PT_LOAD)
			continue;
		if (info->dlpi_addr + ph->p_vaddr < lo)
			lo = info->dlpi_addr + ph->p_vaddr;
		if (info->dlpi_addr + ph->p_vaddr + ph->p_memsz > hi)
			hi = info->dlpi_addr + ph->p_vaddr + ph->p_memsz;
	}
	excl_add(lo, hi, KIND_LIBC);
	return 0;
}

/*
 * The command line this process was exec'd with, read before main runs
 * (a program may rewrite its argv): the summary names it, so that a
 * wrong answer can be traced to the process that gave it, and to the
 * arguments it got.
 */
static void chaos_read_cmd(struct chaos *c)
{
	int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : read(fd, c->cmd, sizeof(c->cmd) - 1);

	if (fd >= 0)
		close(fd);
	if (n <= 0) {
		c->cmd[0] = 0;
		return;
	}
	while (n > 0 && c->cmd[n - 1] == 0)
		n--;
	for (ssize_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)c->cmd[i];

		c->cmd[i] = ch == 0 ? '|' : (ch <= ' ' || ch >= 127) ? '?' : (char)ch;
	}
	c->cmd[n] = 0;
}

/* The open descriptors (0-15) and what they are, "0=pipe:[123],1=...". */
static void chaos_fds(char *b, size_t size)
{
	size_t at = 0;

	b[0] = 0;
	for (int fd = 0; fd < 16 && at + 1 < size; fd++) {
		char path[32], target[64];
		ssize_t n;

		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		n = readlink(path, target, sizeof(target) - 1);
		if (n <= 0)
			continue;
		target[n] = 0;
		n = snprintf(b + at, size - at, "%s%d=%s", at ? "," : "", fd, target);
		if (n < 0 || (size_t)n >= size - at)
			break;
		at += (size_t)n;
	}
}

/* A line at start, so that a process that never reaches its summary
 * (killed, crashed) is still seen, with its arguments and descriptors. */
static void chaos_start_line(const struct chaos *c)
{
	char line[1024], fds[512];
	int n, fd;

	if (!c->log[0])
		return;
	chaos_fds(fds, sizeof(fds));
	n = snprintf(line, sizeof(line), "uhmm-chaos-start pid=%d ppid=%d cmd=%s fds=%s\n",
		     (int)getpid(), (int)getppid(), c->cmd, fds);
	if (n <= 0)
		return;
	if ((size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	fd = open(c->log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	if (write(fd, line, (size_t)n) < 0) {
		/* best effort, as the summary */
	}
	close(fd);
}

__attribute__((constructor)) static void chaos_init(void)
{
	struct dl_find_object self;
	struct chaos *c = uhmm_calloc(1, sizeof(*c));
	long ps = sysconf(_SC_PAGESIZE);

	if (!c || ps <= 0)
		return;
	c->maps_fd = -1;
	c->page = (unsigned long)ps;
	chaos_read_cmd(c);
	if (chaos_config(c)) {
		/* off: only the summary at exit, which says the library was
		 * loaded in this process */
		chaos_start_line(c);
		chaos_state = c;
		return;
	}
	chaos_start_line(c);
	c->stack = uhmm_alloc(CHAOS_STACK);
	c->maps = uhmm_alloc(CHAOS_MAPS_BYTES);
	c->maps_fd = open_high("/proc/self/maps");
	c->buf = uhmm_alloc(CHAOS_MAX_PAGES * c->page);
	c->snap = uhmm_alloc(CHAOS_MAX_PAGES);
	c->ranges = uhmm_calloc(CHAOS_MAX_RANGES, sizeof(*c->ranges));
	if (!c->stack || !c->maps || !c->buf || !c->snap || !c->ranges ||
	    ((uintptr_t)c->stack & (c->page - 1)))
		return;		/* leaked: a few allocations, once */
	pthread_mutex_init(&c->oplock, NULL);

	/* This library (code, data, .bss) and the thread's stack. */
	if (!_dl_find_object((void *)(uintptr_t)chaos_init, &self))
		excl_add((uintptr_t)self.dlfo_map_start,
			 (uintptr_t)self.dlfo_map_end, KIND_N);
	excl_add((uintptr_t)c->stack, (uintptr_t)c->stack + CHAOS_STACK,
		 KIND_N);
	/* libuhmm.so's own .bss (its code and data are file mappings). */
	pc_in_uhmm((void *)(uintptr_t)uhmm_alloc);
	excl_add(atomic_load(&chaos_uhmm_start), atomic_load(&chaos_uhmm_end),
		 KIND_UHMM);
	dl_iterate_phdr(find_libc, NULL);

	chaos_open(c);
	chaos_state = c;
	pthread_atfork(chaos_prepare, chaos_parent, chaos_child);
	chaos_start(c);
}

/* ----------------------------------------------------------------- exit */

static int put(char *b, size_t size, size_t *at, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static int put(char *b, size_t size, size_t *at, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (*at >= size)
		return 0;
	va_start(ap, fmt);
	n = vsnprintf(b + *at, size - *at, fmt, ap);
	va_end(ap);
	if (n > 0)
		*at = *at + (size_t)n < size ? *at + (size_t)n : size;
	return n;
}

/* One line: what ran, what failed (by errno), what uhmm counted. */
static void chaos_summary(const struct chaos *c)
{
	static const char *const mode_name[] = { "off", "read", "migrate" };
	struct uhmm_stats st = { 0 };
	char line[2048];
	size_t at = 0;
	uint64_t total = 0;
	int fd;

	if (!c->log[0])
		return;
	for (int i = 0; i < OP_N; i++)
		total += c->tried[i];
	put(line, sizeof(line), &at,
	    "uhmm-chaos pid=%d ppid=%d comm=%s mode=%s seed=%llu child=%d ops=%llu",
	    (int)getpid(), (int)getppid(), program_invocation_short_name,
	    mode_name[c->mode], (unsigned long long)c->seed, c->in_child,
	    (unsigned long long)total);
	for (int i = 0; i < OP_N; i++)
		if (c->ops_mask & 1U << i)
			put(line, sizeof(line), &at, " %s=%llu/%llu", op_name[i],
			    (unsigned long long)c->ok[i],
			    (unsigned long long)c->tried[i]);
	put(line, sizeof(line), &at, " maps:");
	for (int i = 0; i < KIND_N; i++)
		if (c->by_map[i])
			put(line, sizeof(line), &at, " %s=%llu", map_name[i],
			    (unsigned long long)c->by_map[i]);
	put(line, sizeof(line), &at, " errors:");
	for (int i = 0; i < CHAOS_NERR; i++) {
		const char *n = i ? strerrorname_np(i) : "other";

		if (c->err[i])
			put(line, sizeof(line), &at, " %s=%llu", n ? n : "?",
			    (unsigned long long)c->err[i]);
	}
	for (int d = 0; d < CHAOS_NDEV; d++) {
		if (c->open_err[d])
			put(line, sizeof(line), &at, " open%d=%d", d, c->open_err[d]);
		if (c->close_err[d])
			put(line, sizeof(line), &at, " close%d=%d", d, c->close_err[d]);
	}
	put(line, sizeof(line), &at, " scans=%llu no_target=%llu",
	    (unsigned long long)c->scans, (unsigned long long)c->no_target);
	if (c->maps_truncated)
		put(line, sizeof(line), &at, " maps_truncated=%llu",
		    (unsigned long long)c->maps_truncated);
	if (!uhmm_stats_get(&st, sizeof(st)))
		put(line, sizeof(line), &at,
		    " uhmm: to_device=%llu to_system=%llu faults_back=%llu"
		    " revokes=%llu",
		    (unsigned long long)st.pages_to_device,
		    (unsigned long long)st.pages_to_system,
		    (unsigned long long)st.faults_back,
		    (unsigned long long)st.faults_exclusive_revoke);
	put(line, sizeof(line), &at, " cmd=%s", c->cmd);
	if (at >= sizeof(line))
		at = sizeof(line) - 1;
	line[at++] = '\n';
	fd = open(c->log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	if (write(fd, line, at) < 0) {
		/* nothing to do: the summary is best effort */
	}
	close(fd);
}

/* UHMM_CHAOS_TRACE: the commands kept, oldest first, one a line. */
static void chaos_write_trace(const struct chaos *c)
{
	char path[600], line[256];
	uint64_t from;
	int fd;

	if (!c->trace || !c->ntrace)
		return;
	snprintf(path, sizeof(path), "%s.%d", c->log, (int)getpid());
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	from = c->ntrace > CHAOS_TRACE_LEN ? c->ntrace - CHAOS_TRACE_LEN : 0;
	for (uint64_t i = from; i < c->ntrace; i++) {
		const struct chaos_trace *t = &c->trace[i % CHAOS_TRACE_LEN];
		int n = snprintf(line, sizeof(line),
				 "%llu.%06llu %llu.%06llu %s dev=%d addr=%#llx npages=%llu ret=%d cpages=%llu\n",
				 (unsigned long long)(t->t0_ns / 1000000000ULL),
				 (unsigned long long)(t->t0_ns / 1000 % 1000000),
				 (unsigned long long)(t->t1_ns / 1000000000ULL),
				 (unsigned long long)(t->t1_ns / 1000 % 1000000),
				 op_name[t->op], t->dev, (unsigned long long)t->addr,
				 (unsigned long long)t->npages, t->ret,
				 (unsigned long long)t->cpages);

		if (n > 0 && write(fd, line, (size_t)n) < 0)
			break;
	}
	close(fd);
}

/* Stop the thread, close the devices (their pages come home), report. */
__attribute__((destructor)) static void chaos_fini(void)
{
	struct chaos *c = chaos_state;

	if (!c)
		return;
	if (c->running) {
		atomic_store(&c->stop, true);
		pthread_join(c->thread, NULL);
		c->running = false;
	}
	chaos_close(c);		/* UHMM_CHAOS_CLOSE=caller, or no thread */
	chaos_summary(c);
	chaos_write_trace(c);
}
