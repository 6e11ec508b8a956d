/* SPDX-License-Identifier: MIT */
/*
 * uhmm demo: the motivating case end to end. The CPU builds a large
 * pointer-based structure with plain malloc; a dmirror device chases its
 * pointers through its mirror of the address space (no copy, no
 * re-allocation); the hot part migrates to device memory; the CPU updates
 * nodes (pages fault back transparently); the device sees the updates.
 * Every device traversal is checked against a CPU traversal. Public API
 * only.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <uhmm/uhmm.h>
#include <uhmm/dmirror.h>
#include <uhmm/stats.h>

#include "cli.h"

#define DEMO_DEFAULT_NODES	1000000UL
#define DEMO_MAX_NODES		(1UL << 28)
#define DEMO_STACK		128	/* DFS stack; the tree is complete */

/*
 * A tree node, malloc'ed one by one. The tree is complete, its nodes
 * allocated breadth first (node i has children 2i+1 and 2i+2), and its
 * keys are in in-order (a binary search tree): the top levels, which every
 * lookup goes through, are the hot part and sit together on the heap.
 */
struct node {
	struct node *left;
	struct node *right;
	uint64_t key;
	uint64_t val;
};

struct walk {
	uint64_t nodes;
	uint64_t sum;		/* order-independent checksum */
	uint64_t faults;	/* device fault rounds */
	uint64_t dev_nodes;	/* nodes read from device memory */
};

/* What one step did; the JSON output is built from these. */
struct step {
	const char *name;	/* JSON key */
	char what[96];		/* one line for the terminal */
	double ms;
	uint64_t nodes;
	uint64_t dev_bytes;	/* bytes the device read */
	uint64_t fault_rounds;
	uint64_t pages_to_dev;
	uint64_t pages_to_sys;
	uint64_t fault_backs;	/* CPU faults that brought a page back */
	uint64_t range_faults;	/* uhmm_range_fault() calls */
	int64_t pages_on_dev;	/* -1: not looked at */
	int check;		/* -1: nothing to check, 0 failed, 1 ok */
	uint64_t sum;
	const char *note;
};

#define DEMO_MAX_STEPS 12

struct demo {
	unsigned long n;	/* nodes */
	unsigned int hot_levels;
	bool json, stats, verbose;
	size_t page;
	struct node **nodes;	/* by breadth-first index */
	struct uhmm_dmirror *dm;
	uintptr_t hot_start, hot_end;	/* the pages that migrate */
	struct step steps[DEMO_MAX_STEPS];
	unsigned int nsteps;
	bool failed;
	struct uhmm_stats s0;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t mix(uint64_t key, uint64_t val)
{
	return key * 0x9e3779b97f4a7c15ULL + (val ^ (val >> 29)) * 0xbf58476d1ce4e5b9ULL;
}

/* 1234567 -> "1,234,567" in one of four rotating static buffers. */
static const char *grp(uint64_t v)
{
	static char bufs[4][32];
	static unsigned int k;
	char tmp[32], *out = bufs[k++ % 4];
	int len = snprintf(tmp, sizeof(tmp), "%llu", (unsigned long long)v);
	int o = 0;

	for (int i = 0; i < len; i++) {
		if (i && (len - i) % 3 == 0)
			out[o++] = ',';
		out[o++] = tmp[i];
	}
	out[o] = '\0';
	return out;
}

static const char *mib(uint64_t bytes)
{
	static char bufs[4][32];
	static unsigned int k;
	char *out = bufs[k++ % 4];

	if (bytes >= 10ULL << 20)
		snprintf(out, 32, "%.0f MiB", bytes / 1048576.0);
	else if (bytes >= 1ULL << 20)
		snprintf(out, 32, "%.1f MiB", bytes / 1048576.0);
	else
		snprintf(out, 32, "%.0f KiB", bytes / 1024.0);
	return out;
}

static const char *err_name(int e)
{
	static char buf[64];

	snprintf(buf, sizeof(buf), "%s (%d)", strerror(-e), e);
	return buf;
}

static void stats_now(struct uhmm_stats *s)
{
	memset(s, 0, sizeof(*s));
	uhmm_stats_get(s, sizeof(*s));
}

static struct step *step_begin(struct demo *d, const char *name)
{
	struct step *s = &d->steps[d->nsteps++];

	memset(s, 0, sizeof(*s));
	s->name = name;
	s->pages_on_dev = -1;
	s->check = -1;
	stats_now(&d->s0);
	return s;
}

/* Counters of the step: deltas of uhmm's process-wide statistics. */
static void step_stats(struct demo *d, struct step *s)
{
	struct uhmm_stats s1;

	stats_now(&s1);
	s->pages_to_dev = s1.pages_to_device - d->s0.pages_to_device;
	s->pages_to_sys = s1.pages_to_system - d->s0.pages_to_system;
	s->fault_backs = s1.faults_back - d->s0.faults_back;
	s->range_faults = s1.range_fault_calls - d->s0.range_fault_calls;
}

static void step_print(const struct demo *d, const struct step *s)
{
	unsigned int i = (unsigned int)(s - d->steps) + 1;

	if (d->json)
		return;
	printf("%2u. %-62s %9.1f ms\n", i, s->what, s->ms);
	if (s->nodes && s->dev_bytes)
		printf("    device read %s nodes (%s) through its page table, "
		       "%.0f ns a node\n", grp(s->nodes), mib(s->dev_bytes),
		       s->ms * 1e6 / (double)s->nodes);
	if (s->dev_bytes || s->fault_rounds)
		printf("    device fault rounds: %s (uhmm_range_fault calls: %s)\n",
		       grp(s->fault_rounds), grp(s->range_faults));
	if (s->pages_to_dev || s->pages_to_sys || s->fault_backs)
		printf("    pages migrated: %s to the device (%s), %s back to "
		       "system memory (%s); CPU fault-backs: %s\n",
		       grp(s->pages_to_dev), mib(s->pages_to_dev * d->page),
		       grp(s->pages_to_sys), mib(s->pages_to_sys * d->page),
		       grp(s->fault_backs));
	if (s->pages_on_dev >= 0)
		printf("    hot pages now in device memory: %s of %s\n",
		       grp((uint64_t)s->pages_on_dev),
		       grp((d->hot_end - d->hot_start) / d->page));
	if (s->note)
		printf("    %s\n", s->note);
	if (s->check == 1)
		printf("    result matches the CPU traversal (%s nodes, "
		       "checksum %016llx)\n", grp(s->nodes),
		       (unsigned long long)s->sum);
	else if (s->check == 0)
		printf("    MISMATCH with the CPU traversal\n");
	fflush(stdout);
}

/* ------------------------------------------------------------------ */

static int build(struct demo *d, struct node **root)
{
	unsigned long n = d->n, i, k = 0;
	struct node **st;
	int sp = 0;

	d->nodes = malloc(n * sizeof(*d->nodes));
	if (!d->nodes)
		return -ENOMEM;
	/* One burst of plain malloc, breadth first. */
	for (i = 0; i < n; i++) {
		struct node *nd = malloc(sizeof(*nd));

		if (!nd)
			return -ENOMEM;
		d->nodes[i] = nd;
	}
	for (i = 0; i < n; i++) {
		struct node *nd = d->nodes[i];

		nd->left = 2 * i + 1 < n ? d->nodes[2 * i + 1] : NULL;
		nd->right = 2 * i + 2 < n ? d->nodes[2 * i + 2] : NULL;
		nd->val = i;
	}
	/* In-order keys: a binary search tree of the odd numbers. */
	st = malloc(DEMO_STACK * sizeof(*st));
	if (!st)
		return -ENOMEM;
	for (struct node *c = d->nodes[0]; c || sp;) {
		while (c) {
			st[sp++] = c;
			c = c->left;
		}
		c = st[--sp];
		c->key = 2 * k++ + 1;
		c = c->right;
	}
	free(st);
	*root = d->nodes[0];
	return 0;
}

static void cpu_walk(const struct node *root, struct walk *w)
{
	const struct node *st[DEMO_STACK];
	int sp = 0;

	memset(w, 0, sizeof(*w));
	st[sp++] = root;
	while (sp) {
		const struct node *nd = st[--sp];

		w->nodes++;
		w->sum += mix(nd->key, nd->val);
		if (nd->right)
			st[sp++] = nd->right;
		if (nd->left)
			st[sp++] = nd->left;
	}
}

/*
 * The device's traversal: every node is a device load of 32 bytes at the
 * address the previous load returned.
 */
static int dev_walk(struct demo *d, const struct node *root, struct walk *w)
{
	uint64_t st[DEMO_STACK];
	int sp = 0;

	memset(w, 0, sizeof(*w));
	st[sp++] = (uintptr_t)root;
	while (sp) {
		uint64_t a = st[--sp], f = 0;
		struct node nd;
		int r;

		r = uhmm_dmirror_access(d->dm, a, &nd, sizeof(nd), 0, &f);
		if (r)
			return r;
		w->faults += f;
		w->nodes++;
		w->sum += mix(nd.key, nd.val);
		if (a >= d->hot_start && a < d->hot_end)
			w->dev_nodes++;
		if (sp > DEMO_STACK - 2)
			return -E2BIG;
		if (nd.right)
			st[sp++] = (uintptr_t)nd.right;
		if (nd.left)
			st[sp++] = (uintptr_t)nd.left;
	}
	return 0;
}

/* Pages of [hot_start, hot_end) that SNAPSHOT reports on this device. */
static int64_t pages_on_device(struct demo *d)
{
	size_t np = (d->hot_end - d->hot_start) / d->page;
	struct uhmm_dmirror_cmd c = { 0 };
	unsigned char *b;
	int64_t cnt = 0;

	if (!np)
		return 0;
	b = malloc(np);
	if (!b)
		return -1;
	c.addr = d->hot_start;
	c.ptr = (uintptr_t)b;
	c.npages = np;
	if (uhmm_dmirror_cmd(d->dm, UHMM_DMIRROR_SNAPSHOT, &c)) {
		free(b);
		return -1;
	}
	for (size_t i = 0; i < np; i++)
		if ((b[i] & 0xf0) == UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL)
			cnt++;
	free(b);
	return cnt;
}

/*
 * The pages that hold the hot nodes (the top hot_levels levels) and
 * nothing else: those allocated in one contiguous run, minus the partial
 * pages at its ends, which may hold other data of the heap.
 */
static void find_hot_pages(struct demo *d)
{
	unsigned long hot = (1UL << d->hot_levels) - 1, i;
	uintptr_t first = (uintptr_t)d->nodes[0], last = first, stride;

	if (hot > d->n)
		hot = d->n;
	stride = d->n > 1 ? (uintptr_t)d->nodes[1] - first : 0;
	for (i = 1; i < hot; i++) {
		if ((uintptr_t)d->nodes[i] != last + stride)
			break;
		last = (uintptr_t)d->nodes[i];
	}
	d->hot_start = (first + d->page - 1) & ~(d->page - 1);
	d->hot_end = (last + sizeof(struct node)) & ~(d->page - 1);
	if (d->hot_end < d->hot_start)
		d->hot_end = d->hot_start;
}

static void check_walk(struct demo *d, struct step *s, const struct walk *dev,
		       const struct walk *cpu)
{
	s->nodes = dev->nodes;
	s->sum = dev->sum;
	s->check = dev->nodes == cpu->nodes && dev->sum == cpu->sum;
	if (!s->check)
		d->failed = true;
}

/*
 * A device traversal step, checked against @cpu and printed; with @cpu
 * NULL, the walk is left in @out for the caller to check and print.
 */
static int device_step(struct demo *d, const struct node *root,
		       const struct walk *cpu, const char *name,
		       const char *what, struct walk *out)
{
	struct step *s = step_begin(d, name);
	struct walk w;
	uint64_t t0 = now_ns();
	int r = dev_walk(d, root, &w);

	s->ms = (double)(now_ns() - t0) / 1e6;
	step_stats(d, s);
	snprintf(s->what, sizeof(s->what), "%s", what);
	if (r) {
		fprintf(stderr, "uhmm demo: device load failed: %s\n",
			err_name(r));
		d->failed = true;
		return r;
	}
	s->fault_rounds = w.faults;
	s->dev_bytes = w.nodes * sizeof(struct node);
	if (d->hot_end > d->hot_start) {
		static char note[DEMO_MAX_STEPS][96];

		snprintf(note[d->nsteps - 1], sizeof(note[0]),
			 "%s node loads fell in the hot pages", grp(w.dev_nodes));
		s->note = note[d->nsteps - 1];
	}
	if (out)
		*out = w;
	if (!cpu)
		return 0;
	check_walk(d, s, &w, cpu);
	step_print(d, s);
	return 0;
}

static void cpu_step(struct demo *d, const struct node *root,
		     struct walk *cpu, const char *name, const char *what)
{
	struct step *s = step_begin(d, name);
	uint64_t t0 = now_ns();

	cpu_walk(root, cpu);
	s->ms = (double)(now_ns() - t0) / 1e6;
	step_stats(d, s);
	s->nodes = cpu->nodes;
	s->sum = cpu->sum;
	snprintf(s->what, sizeof(s->what), "%s", what);
}

static void print_json(const struct demo *d, int ret)
{
	printf("{\"demo\":\"tree\",\"device\":0,\"nodes\":%lu,"
	       "\"node_bytes\":%zu,\"hot_levels\":%u,\"page\":%zu,"
	       "\"hot_pages\":%zu,\"ok\":%s,\"error\":%d,\"steps\":[",
	       d->n, sizeof(struct node), d->hot_levels, d->page,
	       (size_t)((d->hot_end - d->hot_start) / d->page),
	       !d->failed && !ret ? "true" : "false", ret);
	for (unsigned int i = 0; i < d->nsteps; i++) {
		const struct step *s = &d->steps[i];

		printf("%s{\"step\":\"%s\",\"ms\":%.3f,\"nodes\":%llu,"
		       "\"device_bytes\":%llu,\"fault_rounds\":%llu,"
		       "\"range_fault_calls\":%llu,"
		       "\"pages_to_device\":%llu,\"pages_to_system\":%llu,"
		       "\"bytes_to_device\":%llu,\"bytes_to_system\":%llu,"
		       "\"fault_backs\":%llu",
		       i ? "," : "", s->name, s->ms,
		       (unsigned long long)s->nodes,
		       (unsigned long long)s->dev_bytes,
		       (unsigned long long)s->fault_rounds,
		       (unsigned long long)s->range_faults,
		       (unsigned long long)s->pages_to_dev,
		       (unsigned long long)s->pages_to_sys,
		       (unsigned long long)(s->pages_to_dev * d->page),
		       (unsigned long long)(s->pages_to_sys * d->page),
		       (unsigned long long)s->fault_backs);
		if (s->pages_on_dev >= 0)
			printf(",\"hot_pages_on_device\":%lld",
			       (long long)s->pages_on_dev);
		if (s->check >= 0)
			printf(",\"checksum\":\"%016llx\",\"matches_cpu\":%s",
			       (unsigned long long)s->sum,
			       s->check ? "true" : "false");
		printf("}");
	}
	printf("]");
	if (d->stats) {
		struct uhmm_stats st;

		stats_now(&st);
		printf(",\"stats\":");
		cli_print_stats_json(stdout, &st);
	}
	printf("}\n");
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: uhmm demo [--nodes N] [--hot-levels L] [--json] [--stats]\n"
		"  The CPU builds a binary tree of N malloc'ed nodes (default %lu);\n"
		"  dmirror device 0 traverses it by chasing pointers through its\n"
		"  mirror of the address space; the top L levels (the hot part)\n"
		"  migrate to device memory; the CPU updates nodes; the device\n"
		"  traverses again. Every traversal is checked against the CPU's.\n"
		"  --json   one JSON object instead of text\n"
		"  --stats  uhmm's counters at the end (JSON)\n"
		"Exit status: 0 all checks passed, 1 a check or the device\n"
		"failed, 2 usage.\n", DEMO_DEFAULT_NODES);
}

static int parse(struct demo *d, int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		char *end;

		if (!strcmp(a, "--json")) {
			d->json = true;
		} else if (!strcmp(a, "--stats")) {
			d->stats = true;
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			return 1;
		} else if ((!strcmp(a, "--nodes") || !strcmp(a, "-n") ||
			    !strcmp(a, "--hot-levels")) && i + 1 < argc) {
			unsigned long v = strtoul(argv[++i], &end, 10);

			if (*end || !v || argv[i][0] == '-' ||
			    (a[2] == 'h' ? v > 30 : v > DEMO_MAX_NODES)) {
				fprintf(stderr, "uhmm demo: bad value for %s: "
					"%s\n", a, argv[i]);
				return -1;
			}
			if (a[2] == 'h')
				d->hot_levels = (unsigned int)v;
			else
				d->n = v;
		} else {
			fprintf(stderr, "uhmm demo: unknown option %s\n", a);
			usage(stderr);
			return -1;
		}
	}
	return 0;
}

/* Default hot part: about 1/16 of the nodes, the top levels. */
static unsigned int default_hot_levels(unsigned long n)
{
	unsigned int l = 1;

	while (l < 30 && (1UL << (l + 1)) - 1 <= n / 16)
		l++;
	return l;
}

static int migrate_hot(struct demo *d)
{
	struct step *s = step_begin(d, "migrate_hot_to_device");
	size_t np = (d->hot_end - d->hot_start) / d->page;
	struct uhmm_dmirror_cmd c = { 0 };
	uint64_t t0;
	void *rb;
	int r;

	snprintf(s->what, sizeof(s->what),
		 "hot part (top %u levels, %s pages) -> device memory",
		 d->hot_levels, grp(np));
	if (!np) {
		s->note = "no page holds only hot nodes: nothing to migrate";
		step_print(d, s);
		return 0;
	}
	/* The read-back buffer of the command, off the heap. */
	rb = mmap(NULL, np * d->page, PROT_READ | PROT_WRITE,
		  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (rb == MAP_FAILED)
		return -ENOMEM;
	c.addr = d->hot_start;
	c.ptr = (uintptr_t)rb;
	c.npages = np;
	t0 = now_ns();
	r = uhmm_dmirror_cmd(d->dm, UHMM_DMIRROR_MIGRATE_TO_DEV, &c);
	s->ms = (double)(now_ns() - t0) / 1e6;
	munmap(rb, np * d->page);
	step_stats(d, s);
	if (!s->pages_to_dev && !r)
		s->pages_to_dev = c.cpages;
	s->pages_on_dev = pages_on_device(d);
	if (r) {
		fprintf(stderr, "uhmm demo: MIGRATE_TO_DEV: %s (%llu pages)\n",
			err_name(r), (unsigned long long)c.cpages);
		d->failed = true;
	}
	step_print(d, s);
	return r;
}

/* The CPU updates the top levels' values: their pages fault back. */
static void cpu_update(struct demo *d, unsigned int levels)
{
	struct step *s = step_begin(d, "cpu_update");
	unsigned long cnt = (1UL << levels) - 1, i;
	uint64_t t0;

	if (cnt > d->n)
		cnt = d->n;
	snprintf(s->what, sizeof(s->what),
		 "CPU updates the top %u levels (%s nodes) in place", levels,
		 grp(cnt));
	t0 = now_ns();
	for (i = 0; i < cnt; i++)
		d->nodes[i]->val = d->nodes[i]->val * 3 + 1;
	s->ms = (double)(now_ns() - t0) / 1e6;
	s->nodes = cnt;
	step_stats(d, s);
	s->pages_on_dev = d->hot_end > d->hot_start ? pages_on_device(d) : -1;
	s->note = "plain stores: device pages came back on touch (each fault-back\n"
		  "    takes a read-ahead window of neighbouring pages with it)";
	step_print(d, s);
}

int cmd_demo(int argc, char **argv)
{
	struct uhmm_features feat = { .size = sizeof(feat) };
	struct demo d = { .n = DEMO_DEFAULT_NODES };
	struct node *root = NULL;
	struct walk cpu, dw;
	struct step *s;
	uint64_t t0;
	int r;

	r = parse(&d, argc, argv);
	if (r)
		return r > 0 ? 0 : 2;
	d.page = (size_t)sysconf(_SC_PAGESIZE);
	if (!d.hot_levels)
		d.hot_levels = default_hot_levels(d.n);

	if (!d.json)
		printf("uhmm demo: a dmirror device chases pointers through a "
		       "tree the CPU built with malloc\n\n");

	/* 1. Build, before any uhmm activity: nothing of uhmm's own is
	 * allocated between the nodes. */
	s = step_begin(&d, "cpu_build");
	t0 = now_ns();
	r = build(&d, &root);
	s->ms = (double)(now_ns() - t0) / 1e6;
	if (r) {
		fprintf(stderr, "uhmm demo: out of memory building %lu nodes\n",
			d.n);
		return 1;
	}
	s->nodes = d.n;
	snprintf(s->what, sizeof(s->what),
		 "CPU builds a binary tree: %s nodes, each malloc'ed", grp(d.n));
	step_print(&d, s);

	cpu_step(&d, root, &cpu, "cpu_traverse", "CPU traversal (the reference)");
	step_print(&d, &d.steps[d.nsteps - 1]);

	r = uhmm_init();
	if (!r)
		r = uhmm_features(&feat);
	if (!r)
		r = uhmm_dmirror_open(0, &d.dm);
	if (r) {
		fprintf(stderr, "uhmm demo: cannot start uhmm here: %s; see "
			"`uhmm info`\n", err_name(r));
		return 1;
	}
	find_hot_pages(&d);

	r = device_step(&d, root, &cpu, "device_traverse_cold",
			"device traversal, cold mirror (faults pages in)", NULL);
	if (r)
		goto out;
	r = device_step(&d, root, &cpu, "device_traverse_warm",
			"device traversal again, warm mirror", NULL);
	if (r)
		goto out;

	if (!(feat.flags & UHMM_FEAT_MOVE)) {
		if (!d.json)
			printf("\nno UFFDIO_MOVE on this kernel (6.8+): device "
			       "memory and migration are skipped\n");
		goto out;
	}
	r = migrate_hot(&d);
	if (r)
		goto out;
	r = device_step(&d, root, &cpu, "device_traverse_migrated",
			"device traversal, hot part in device memory", NULL);
	if (r)
		goto out;

	cpu_update(&d, d.hot_levels > 2 ? d.hot_levels - 2 : d.hot_levels);

	/*
	 * The device first, while part of the hot part is still in device
	 * memory; then the CPU's reference traversal, which touches every
	 * node and so brings the rest back.
	 */
	r = device_step(&d, root, NULL, "device_traverse_updated",
			"device traversal sees the CPU's updates", &dw);
	if (r)
		goto out;
	cpu_step(&d, root, &cpu, "cpu_traverse_updated",
		 "CPU traversal of the updated tree (the reference)");
	check_walk(&d, &d.steps[d.nsteps - 2], &dw, &cpu);
	step_print(&d, &d.steps[d.nsteps - 2]);
	d.steps[d.nsteps - 1].note = "its touches brought the rest of the "
		"hot part back from device memory";
	if (!d.steps[d.nsteps - 1].pages_to_sys)
		d.steps[d.nsteps - 1].note = NULL;
	d.steps[d.nsteps - 1].pages_on_dev = pages_on_device(&d);
	step_print(&d, &d.steps[d.nsteps - 1]);
out:
	if (d.json) {
		print_json(&d, r);
	} else {
		printf("\n%s\n", d.failed ? "FAILED: see above" :
		       "every device traversal matched the CPU's");
		if (d.stats) {
			struct uhmm_stats st;

			stats_now(&st);
			cli_print_stats_json(stdout, &st);
			printf("\n");
		}
	}
	if (d.dm)
		uhmm_dmirror_close(d.dm);
	for (unsigned long i = 0; i < d.n; i++)
		free(d.nodes[i]);
	free(d.nodes);
	return d.failed || r ? 1 : 0;
}
