/* SPDX-License-Identifier: MIT */
/*
 * uhmm bench [SCENARIO...]: the project's benchmarks, each figure beside
 * the physical limit of the same operation measured in the same run. The
 * scenario code is that of bench/bench_mirror.c and bench/bench_migrate.c
 * (linked in with their main() renamed); each scenario runs in a child
 * process of its own (a fresh uhmm runtime, and a wrong result, which
 * ends a benchmark, ends only its child), whose JSON lines this command
 * collects, shows and turns into a table or a plot. Public API only.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uhmm/uhmm.h>
#include <uhmm/stats.h>

#include "cli.h"

/* bench/bench_mirror.c and bench/bench_migrate.c, built for the CLI. */
int bench_mirror_main(int argc, char **argv);
int bench_migrate_main(int argc, char **argv);

#define BENCH_EXIT_DATA		1	/* as bench/bench.h */
#define BENCH_EXIT_SETUP	2

/* This command's exit statuses. */
#define EXIT_OK		0
#define EXIT_DATA	1	/* a result was wrong, or a scenario crashed */
#define EXIT_USAGE	2
#define EXIT_CANNOT	3	/* a scenario cannot run on this machine */

struct scenario {
	const char *name;
	int (*entry)(int argc, char **argv);
	const char *prog;
	const char *what;
};

static const struct scenario scenarios[] = {
	{ "snapshot", bench_mirror_main, "bench_mirror",
	  "range_fault and dmirror SNAPSHOT, 4 KiB pages and THP, vs raw PAGEMAP_SCAN" },
	{ "read", bench_mirror_main, "bench_mirror",
	  "device READ of a mirrored range (warm, and cold: one fault round) vs memcpy" },
	{ "migrate", bench_migrate_main, "bench_migrate",
	  "migration to device memory and back, 4 KiB pages and THP, 1 and 2 DMA threads, vs memcpy" },
	{ "fault_back", bench_migrate_main, "bench_migrate",
	  "CPU fault-back of one device page vs a native first-touch fault" },
	{ "seq_read", bench_migrate_main, "bench_migrate",
	  "sequential CPU read of a device-resident range (fault-back throughput) vs memcpy" },
	{ "first_touch", bench_migrate_main, "bench_migrate",
	  "first touch of managed memory vs unmanaged memory" },
	{ "munmap", bench_mirror_main, "bench_mirror",
	  "munmap of a mirrored range vs munmap of an unmirrored one" },
};

#define NSCEN (sizeof(scenarios) / sizeof(scenarios[0]))

struct opts {
	bool quick, json, markdown, stats, progress;
	const char *plot;
	const char *n;		/* -n, passed on */
	const char *size;	/* --size, passed on */
	bool want[NSCEN];
};

/* One figure, from one JSON line of a benchmark. */
struct fig {
	unsigned int scen;
	char name[64];
	char unit[16];
	char baseline_name[96];
	char target_op[4];	/* "<=", ">=" or "" */
	double value, baseline, ratio, target;
	bool met;
	unsigned int n;
	unsigned int size_mib;
	char *line;		/* the JSON line, without its newline */
};

static struct fig *figs;
static size_t nfigs, capfigs;

/* ------------------------------------------------------------------ */
/* The benchmarks' JSON lines: flat objects written by bench_report()   */
/* ------------------------------------------------------------------ */

static const char *json_find(const char *line, const char *key)
{
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\":", key);
	p = strstr(line, pat);
	return p ? p + strlen(pat) : NULL;
}

static bool json_num(const char *line, const char *key, double *out)
{
	const char *p = json_find(line, key);
	char *end;

	if (!p)
		return false;
	*out = strtod(p, &end);
	return end != p;
}

static bool json_str(const char *line, const char *key, char *buf,
		     size_t size)
{
	const char *p = json_find(line, key), *e;
	size_t len;

	if (!p || *p != '"')
		return false;
	p++;
	e = strchr(p, '"');
	if (!e)
		return false;
	len = (size_t)(e - p);
	if (len >= size)
		len = size - 1;
	memcpy(buf, p, len);
	buf[len] = '\0';
	return true;
}

static bool json_true(const char *line, const char *key)
{
	const char *p = json_find(line, key);

	return p && !strncmp(p, "true", 4);
}

/* Parse a figure line; false when the line is not one. */
static bool fig_parse(const char *line, unsigned int scen, struct fig *f)
{
	double v;

	memset(f, 0, sizeof(*f));
	f->scen = scen;
	if (!json_str(line, "bench", f->name, sizeof(f->name)) ||
	    !json_num(line, "value", &f->value) ||
	    !json_num(line, "baseline", &f->baseline) ||
	    !json_num(line, "ratio", &f->ratio))
		return false;
	json_str(line, "unit", f->unit, sizeof(f->unit));
	json_str(line, "baseline_name", f->baseline_name,
		 sizeof(f->baseline_name));
	if (json_str(line, "target_op", f->target_op, sizeof(f->target_op)))
		json_num(line, "target", &f->target);
	f->met = json_true(line, "met");
	if (json_num(line, "n", &v))
		f->n = (unsigned int)v;
	if (json_num(line, "size_mib", &v))
		f->size_mib = (unsigned int)v;
	return true;
}

static int fig_add(const struct fig *f, const char *line)
{
	if (nfigs == capfigs) {
		size_t cap = capfigs ? 2 * capfigs : 32;
		struct fig *nf = realloc(figs, cap * sizeof(*nf));

		if (!nf)
			return -ENOMEM;
		figs = nf;
		capfigs = cap;
	}
	figs[nfigs] = *f;
	figs[nfigs].line = strdup(line);
	if (!figs[nfigs].line)
		return -ENOMEM;
	nfigs++;
	return 0;
}

/* A value for people: 3 significant digits, no exponent. */
static const char *num(double v)
{
	static char bufs[4][32];
	static unsigned int k;
	char *b = bufs[k++ % 4];

	if (v >= 1000 || v <= -1000)
		snprintf(b, 32, "%.0f", v);
	else
		snprintf(b, 32, "%.3g", v);
	return b;
}

/* Speed of the figure relative to its baseline: > 1 is faster. */
static double fig_speed(const struct fig *f)
{
	bool rate = strstr(f->unit, "/s") != NULL;

	if (f->value <= 0 || f->baseline <= 0)
		return 0;
	return rate ? f->value / f->baseline : f->baseline / f->value;
}

/* ------------------------------------------------------------------ */
/* Output                                                               */
/* ------------------------------------------------------------------ */

static void fig_print_text(const struct fig *f)
{
	printf("  %-30s %9s %-8s | %-42s %9s %-8s | ratio %6.2f",
	       f->name, num(f->value), f->unit, f->baseline_name,
	       num(f->baseline), f->unit, f->ratio);
	if (f->target_op[0])
		printf(" | target %s %g: %s", f->target_op, f->target,
		       f->met ? "met" : "MISSED");
	printf("\n");
}

/* The line of @f with "scenario" and "verified" added at the front. */
static void fig_print_json(const struct fig *f)
{
	printf("{\"scenario\":\"%s\",\"verified\":true,%s\n",
	       scenarios[f->scen].name, f->line + 1);
}

static void print_markdown(void)
{
	printf("| figure | uhmm | baseline (same run) | ratio | target |\n");
	printf("|---|---|---|---|---|\n");
	for (size_t i = 0; i < nfigs; i++) {
		const struct fig *f = &figs[i];

		printf("| %s | %s %s | %s %s %s | %.2f | ", f->name,
		       num(f->value), f->unit, f->baseline_name,
		       num(f->baseline), f->unit, f->ratio);
		if (f->target_op[0])
			printf("%s %g (%s)", f->target_op, f->target,
			       f->met ? "met" : "missed");
		printf(" |\n");
	}
}

/* ------------------------------------------------------------------ */
/* Plot                                                                 */
/* ------------------------------------------------------------------ */

static bool have_gnuplot(void)
{
	const char *path = getenv("PATH");
	char buf[4096];

	if (!path || !*path)
		path = "/usr/local/bin:/usr/bin:/bin";
	while (*path) {
		const char *e = strchr(path, ':');
		size_t len = e ? (size_t)(e - path) : strlen(path);

		snprintf(buf, sizeof(buf), "%.*s/gnuplot", (int)len, path);
		if (len && !access(buf, X_OK))
			return true;
		path += len + (e ? 1 : 0);
	}
	return false;
}

static const char *plot_terminal(const char *file)
{
	const char *dot = strrchr(file, '.');

	if (dot && !strcmp(dot, ".png"))
		return "png size 1200,600";
	if (dot && !strcmp(dot, ".pdf"))
		return "pdfcairo size 12in,6in";
	if (dot && !strcmp(dot, ".txt"))
		return "dumb size 160,50";
	return "svg size 1200,600 dynamic";
}

/* A gnuplot string: single quotes, no quote inside. */
static void gp_quoted(FILE *f, const char *s)
{
	fputc('\'', f);
	for (; *s; s++)
		fputc(*s == '\'' ? '_' : *s, f);
	fputc('\'', f);
}

static int plot(const char *file)
{
	char dat[] = "/tmp/uhmm-bench-XXXXXX", gp[] = "/tmp/uhmm-bench-XXXXXX";
	int dfd = mkstemp(dat), gfd = mkstemp(gp), status = -1;
	FILE *d = dfd >= 0 ? fdopen(dfd, "w") : NULL;
	FILE *g = gfd >= 0 ? fdopen(gfd, "w") : NULL;
	pid_t pid;

	if (!d || !g) {
		fprintf(stderr, "uhmm bench: --plot: temporary files: %s\n",
			strerror(errno));
		goto out;
	}
	for (size_t i = 0; i < nfigs; i++)
		fprintf(d, "\"%s\" 1 %.4g\n", figs[i].name, fig_speed(&figs[i]));
	fclose(d);
	d = NULL;

	fprintf(g, "set terminal %s\nset termoption noenhanced\nset output ",
		plot_terminal(file));
	gp_quoted(g, file);
	fprintf(g,
		"\nset title 'uhmm bench: each figure against its physical "
		"limit, measured in the same run (median of repeated runs)'\n"
		"set ylabel 'speed relative to the baseline (baseline = 1, "
		"higher is faster)'\n"
		"set style data histograms\n"
		"set style histogram clustered gap 1\n"
		"set style fill solid 0.85 border -1\n"
		"set boxwidth 0.9\n"
		"set xtics rotate by 35 right scale 0 nomirror\n"
		"set grid ytics\n"
		"set yrange [0:*]\n"
		"set offsets 0, 0, 0.15, 0\n"
		"set key outside top center horizontal\n"
		"set bmargin 12\n"
		"set lmargin 12\n"
		"plot ");
	gp_quoted(g, dat);
	fprintf(g, " using 2:xtic(1) title 'baseline (physical limit)' "
		   "lc rgb '#9e9e9e', '' using 3 title 'uhmm' lc rgb '#1f77b4', "
		   "'' using ($0 + 0.18):3:(sprintf('%%.2f', $3)) with labels "
		   "offset 0,0.7 notitle\n");
	fclose(g);
	g = NULL;

	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		char *argv[] = { "gnuplot", gp, NULL };

		execvp("gnuplot", argv);
		_exit(127);
	}
	if (pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
	    WEXITSTATUS(status) == 0) {
		status = 0;
		fprintf(stderr, "uhmm bench: plot written to %s\n", file);
	} else {
		fprintf(stderr, "uhmm bench: gnuplot failed to draw %s\n", file);
		status = -1;
	}
out:
	if (d)
		fclose(d);
	if (g)
		fclose(g);
	if (dfd >= 0)
		unlink(dat);
	if (gfd >= 0)
		unlink(gp);
	return status;
}

/* ------------------------------------------------------------------ */
/* Running a scenario                                                   */
/* ------------------------------------------------------------------ */

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * The scenario's benchmark, its JSON lines on stdout: `uhmm bench
 * --run-child SCENARIO [--quick] [-n N] [--size MiB] [--stats]`, which
 * run_scenario() executes in a fresh process. A fresh image rather than
 * the forked parent: after fork(), uhmm checks pages for copy-on-write
 * sharing (docs/semantics.md), which is not what is measured here.
 */
static int run_child(int argc, char **argv)
{
	const struct scenario *sc = NULL;
	char *bargv[16];
	bool stats = false;
	int bargc = 0, r;

	if (argc < 3)
		return BENCH_EXIT_SETUP;
	for (size_t s = 0; s < NSCEN; s++)
		if (!strcmp(argv[2], scenarios[s].name))
			sc = &scenarios[s];
	if (!sc)
		return BENCH_EXIT_SETUP;
	bargv[bargc++] = (char *)sc->prog;
	bargv[bargc++] = "--json";
	bargv[bargc++] = "--only";
	bargv[bargc++] = (char *)sc->name;
	for (int i = 3; i < argc && bargc < 14; i++) {
		if (!strcmp(argv[i], "--stats"))
			stats = true;
		else
			bargv[bargc++] = argv[i];
	}
	bargv[bargc] = NULL;
	r = sc->entry(bargc, bargv);
	if (r == 0 && stats) {
		struct uhmm_stats st;

		memset(&st, 0, sizeof(st));
		uhmm_stats_get(&st, sizeof(st));
		printf("{\"stats\":");
		cli_print_stats_json(stdout, &st);
		printf("}\n");
	}
	fflush(stdout);
	return r;
}

/* In the forked child: this program again, as run_child(). */
__attribute__((noreturn))
static void exec_child(const struct scenario *sc, const struct opts *o, int wfd)
{
	char *argv[16];
	int argc = 0;

	if (dup2(wfd, STDOUT_FILENO) < 0)
		_exit(BENCH_EXIT_SETUP);
	close(wfd);
	argv[argc++] = "uhmm";
	argv[argc++] = "bench";
	argv[argc++] = "--run-child";
	argv[argc++] = (char *)sc->name;
	if (o->quick)
		argv[argc++] = "--quick";
	if (o->n) {
		argv[argc++] = "-n";
		argv[argc++] = (char *)o->n;
	}
	if (o->size) {
		argv[argc++] = "--size";
		argv[argc++] = (char *)o->size;
	}
	if (o->stats)
		argv[argc++] = "--stats";
	argv[argc] = NULL;
	execv("/proc/self/exe", argv);
	fprintf(stderr, "uhmm bench: cannot run /proc/self/exe: %s\n",
		strerror(errno));
	_exit(BENCH_EXIT_SETUP);
}

/* Whether a progress line is on the terminal now. */
static bool progress_shown;

static void progress(const struct opts *o, unsigned int k, unsigned int total,
		     const char *name, double t, size_t nf)
{
	if (!o->progress)
		return;
	fprintf(stderr, "\r\033[K[%u/%u] %s: %.0f s, %zu figure%s so far",
		k, total, name, t, nf, nf == 1 ? "" : "s");
	fflush(stderr);
	progress_shown = true;
}

static void progress_clear(void)
{
	if (!progress_shown)
		return;
	fprintf(stderr, "\r\033[K");
	fflush(stderr);
	progress_shown = false;
}

/* One input line of scenario @si. */
static void handle_line(const struct opts *o, unsigned int si, char *line,
			size_t *nf)
{
	struct fig f;

	progress_clear();
	if (!strncmp(line, "{\"stats\":", 9)) {
		if (o->json)
			printf("{\"scenario\":\"%s\",%s\n", scenarios[si].name,
			       line + 1);
		else if (!o->markdown)
			printf("  stats after %s: %s\n", scenarios[si].name,
			       line + 9);
		return;
	}
	if (!fig_parse(line, si, &f)) {
		/* Not a figure: pass it on as is (stderr in JSON mode). */
		fprintf(o->json || o->markdown ? stderr : stdout, "%s\n", line);
		return;
	}
	if (fig_add(&f, line))
		return;
	(*nf)++;
	if (o->json)
		fig_print_json(&figs[nfigs - 1]);
	else if (!o->markdown)
		fig_print_text(&figs[nfigs - 1]);
	fflush(stdout);
}

/*
 * Run scenario @si in a child; returns its exit status (128 + signal when
 * it was killed).
 */
static int run_scenario(const struct opts *o, unsigned int si, unsigned int k,
			unsigned int total)
{
	const struct scenario *sc = &scenarios[si];
	char buf[8192];
	size_t len = 0, nf = 0;
	double t0 = now_s(), shown = 0;
	int fds[2], status;
	pid_t pid;

	if (pipe(fds))
		return BENCH_EXIT_SETUP;
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0) {
		close(fds[0]);
		close(fds[1]);
		return BENCH_EXIT_SETUP;
	}
	if (pid == 0) {
		close(fds[0]);
		exec_child(sc, o, fds[1]);
	}
	close(fds[1]);

	for (;;) {
		struct pollfd pfd = { .fd = fds[0], .events = POLLIN };
		int pr = poll(&pfd, 1, 250);
		double t = now_s() - t0;
		ssize_t n;
		char *nl;

		/* Progress on a terminal once a run takes over a second. */
		if (t >= 1.0 && t - shown >= 1.0) {
			progress(o, k, total, sc->name, t, nf);
			shown = t;
		}
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr <= 0)
			continue;
		n = read(fds[0], buf + len, sizeof(buf) - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
		buf[len] = '\0';
		while ((nl = strchr(buf, '\n'))) {
			*nl = '\0';
			handle_line(o, si, buf, &nf);
			if (shown)
				progress(o, k, total, sc->name, t, nf);
			len -= (size_t)(nl + 1 - buf);
			memmove(buf, nl + 1, len + 1);
		}
		if (len == sizeof(buf) - 1)
			len = 0;	/* an overlong line: dropped */
	}
	close(fds[0]);
	progress_clear();
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return BENCH_EXIT_SETUP;
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return WEXITSTATUS(status);
}

/* ------------------------------------------------------------------ */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: uhmm bench [options] [SCENARIO...]\n"
		"Each figure beside its physical limit (baseline) measured in the\n"
		"same run, and their ratio: the median of repeated runs after a\n"
		"warm-up, memory pre-warmed, every result verified.\n"
		"\n"
		"scenarios (default: all, in this order):\n");
	for (size_t i = 0; i < NSCEN; i++)
		fprintf(f, "  %-12s %s\n", scenarios[i].name, scenarios[i].what);
	fprintf(f,
		"\n"
		"options:\n"
		"  --quick      fewer repetitions and smaller ranges (seconds)\n"
		"  -n N         repetitions after the warm-up\n"
		"  --size MiB   size of each measured range (migration: a multiple of 2)\n"
		"  --json       one JSON object per figure (with \"verified\")\n"
		"  --markdown   a Markdown table of the figures (the README's)\n"
		"  --plot FILE  draw the figures against their baselines with\n"
		"               gnuplot (.svg, .png, .pdf or .txt)\n"
		"  --stats      uhmm's counters after each scenario (JSON)\n"
		"  --list       the scenario names\n"
		"exit status: 0 every figure measured and verified, 1 a result\n"
		"was wrong, 2 usage, 3 a scenario cannot run on this machine\n");
}

static bool number_arg(const char *s, long max)
{
	char *end;
	long v = strtol(s, &end, 10);

	return !*end && v >= 1 && v <= max;
}

int cmd_bench(int argc, char **argv)
{
	struct opts o = { 0 };
	unsigned int total = 0, k = 0;
	bool any = false, data_err = false, cannot = false;
	double t0 = now_s();

	if (argc > 1 && !strcmp(argv[1], "--run-child"))
		return run_child(argc, argv);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		size_t s;

		if (!strcmp(a, "--quick")) {
			o.quick = true;
		} else if (!strcmp(a, "--json")) {
			o.json = true;
		} else if (!strcmp(a, "--markdown")) {
			o.markdown = true;
		} else if (!strcmp(a, "--stats")) {
			o.stats = true;
		} else if (!strcmp(a, "--list")) {
			for (s = 0; s < NSCEN; s++)
				printf("%s\n", scenarios[s].name);
			return EXIT_OK;
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			return EXIT_OK;
		} else if (!strcmp(a, "--plot") && i + 1 < argc) {
			o.plot = argv[++i];
		} else if ((!strcmp(a, "-n") || !strcmp(a, "--size")) &&
			   i + 1 < argc) {
			if (!number_arg(argv[++i], 1 << 20)) {
				fprintf(stderr, "uhmm bench: bad value for %s: "
					"%s\n", a, argv[i]);
				return EXIT_USAGE;
			}
			if (a[1] == 'n')
				o.n = argv[i];
			else
				o.size = argv[i];
		} else if (a[0] == '-') {
			fprintf(stderr, "uhmm bench: unknown option %s\n", a);
			usage(stderr);
			return EXIT_USAGE;
		} else {
			bool all = !strcmp(a, "all"), found = all;

			for (s = 0; s < NSCEN; s++) {
				if (all || !strcmp(a, scenarios[s].name)) {
					o.want[s] = true;
					found = true;
				}
			}
			if (!found) {
				fprintf(stderr, "uhmm bench: unknown scenario "
					"'%s' (uhmm bench --list)\n", a);
				return EXIT_USAGE;
			}
			any = true;
		}
	}
	if (o.json && o.markdown) {
		fprintf(stderr, "uhmm bench: --json or --markdown, not both\n");
		return EXIT_USAGE;
	}
	if (o.plot && !have_gnuplot()) {
		fprintf(stderr,
			"uhmm bench: --plot needs gnuplot, which is not "
			"installed.\nInstall it with: apt-get install -y "
			"gnuplot-nox (as root), or: make plot-deps\n");
		return EXIT_USAGE;
	}
	for (size_t s = 0; s < NSCEN; s++) {
		if (!any)
			o.want[s] = true;
		total += o.want[s];
	}
	o.progress = isatty(STDERR_FILENO);

	if (!o.json && !o.markdown)
		printf("# uhmm bench: uhmm %s, %s run; each figure is the "
		       "median of repeated runs after a warm-up, beside its "
		       "baseline measured in the same run\n"
		       "  %-30s %18s | %-42s %18s | ratio\n", uhmm_version(),
		       o.quick ? "quick" : "full", "figure", "uhmm",
		       "baseline (physical limit)", "");

	for (unsigned int s = 0; s < NSCEN; s++) {
		int r;

		if (!o.want[s])
			continue;
		k++;
		if (!o.json && !o.markdown)
			printf("%s: %s\n", scenarios[s].name, scenarios[s].what);
		fflush(stdout);
		r = run_scenario(&o, s, k, total);
		if (r == 0)
			continue;
		if (r == BENCH_EXIT_SETUP)
			cannot = true;
		else
			data_err = true;
		if (o.json)
			printf("{\"scenario\":\"%s\",\"verified\":false,"
			       "\"exit\":%d,\"error\":\"%s\"}\n", scenarios[s].name,
			       r, r == BENCH_EXIT_SETUP ? "cannot run here" :
			       r == BENCH_EXIT_DATA ? "wrong result" : "crashed");
		else
			fprintf(stderr, "uhmm bench: %s %s (exit %d)\n",
				scenarios[s].name,
				r == BENCH_EXIT_SETUP ? "cannot run here" :
				r == BENCH_EXIT_DATA ? "measured a wrong result" :
				"crashed", r);
	}

	if (o.markdown)
		print_markdown();
	else if (!o.json)
		printf("# %zu figures in %.0f s%s\n", nfigs, now_s() - t0,
		       data_err ? ", SOME RESULTS WRONG" :
		       ", every result verified");
	fflush(stdout);
	if (o.plot && nfigs && plot(o.plot))
		cannot = true;
	for (size_t i = 0; i < nfigs; i++)
		free(figs[i].line);
	free(figs);
	return data_err ? EXIT_DATA : cannot ? EXIT_CANNOT : EXIT_OK;
}
