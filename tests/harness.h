/* SPDX-License-Identifier: MIT */
/*
 * uhmm's test harness, in the spirit of the kernel's kselftest_harness.h:
 * every TEST runs in a forked child, in its own process group, under a
 * timeout. Include it once per test binary; it defines main().
 *
 *   TEST(name) { ... }                  default timeout 60 s
 *   TEST_TIMEOUT(name, seconds) { ... }
 *   SKIP(fmt, ...);                     ends the test as skipped (exit 77)
 *   ASSERT_EQ/NE/LT/LE/GT/GE(a, b);     each operand evaluated once
 *   ASSERT_TRUE(x); ASSERT_FALSE(x); ASSERT_NULL(p); ASSERT_NOT_NULL(p);
 *   ASSERT_MEMEQ(a, b, n);
 *   TH_LOG(fmt, ...);                   "# ..." on stderr
 *
 * A test passes when it returns (or the child exits 0), is skipped when
 * the child exits 77 and fails otherwise, including death by a signal
 * and the timeout. A failing ASSERT ends the calling *process*: in a
 * grandchild the test must check the grandchild's exit status itself.
 *
 * Usage: test_x [-l] [name-substring...]; UHMM_TEST_TIMEOUT_SCALE (a
 * float, default 1) multiplies every timeout.
 */
#ifndef UHMM_TESTS_HARNESS_H
#define UHMM_TESTS_HARNESS_H

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Helpers a test binary may not use must not trip -Wunused-function. */
#define TH_UNUSED __attribute__((unused))

#define TH_SKIP_STATUS 77
#define TH_DEFAULT_TIMEOUT 60

struct th_test {
	const char *name;
	void (*fn)(void);
	double timeout;		/* seconds, before scaling */
	int line;		/* registration order = source order */
	struct th_test *next;
};

static struct th_test *th_tests;
static unsigned int th_ntests;
/* In a test child: the write end of the pipe carrying the reason line. */
static int th_reason_fd = -1;
/* In the parent: the process group of the running test, for SIGTERM. */
static volatile pid_t th_running_pgid;

/*
 * Constructors of one translation unit do not run in a documented order,
 * so tests are kept sorted by source line, which is the order they are
 * written in.
 */
TH_UNUSED static void th_register(struct th_test *t)
{
	struct th_test **p = &th_tests;

	while (*p && (*p)->line <= t->line)
		p = &(*p)->next;
	t->next = *p;
	*p = t;
	th_ntests++;
}

#define TEST(th_name_) TEST_TIMEOUT(th_name_, TH_DEFAULT_TIMEOUT)

#define TEST_TIMEOUT(th_name_, th_seconds_)				\
	static void th_fn_##th_name_(void);				\
	static struct th_test th_desc_##th_name_ = {			\
		.name = #th_name_, .fn = th_fn_##th_name_,		\
		.timeout = (th_seconds_), .line = __LINE__,		\
	};								\
	__attribute__((constructor)) static void th_reg_##th_name_(void) \
	{								\
		th_register(&th_desc_##th_name_);			\
	}								\
	static void th_fn_##th_name_(void)

/* ------------------------------------------------------------ reporting */

/* Sends the one-line reason to the parent (first line wins there). */
__attribute__((format(printf, 1, 2)))
TH_UNUSED static void th_reason(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n;

	if (th_reason_fd < 0)
		return;
	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	if (write(th_reason_fd, buf, (size_t)n) < 0) {
		/* Nothing to do: the exit status still tells the result. */
	}
}

__attribute__((noreturn))
TH_UNUSED static void th_exit(int status)
{
	fflush(stdout);
	fflush(stderr);
	_exit(status);
}

#define TH_LOG(fmt, ...)						\
	fprintf(stderr, "# " fmt "\n", ##__VA_ARGS__)

#define SKIP(fmt, ...)							\
	do {								\
		fprintf(stderr, "# SKIP: " fmt "\n", ##__VA_ARGS__);	\
		th_reason(fmt, ##__VA_ARGS__);				\
		th_exit(TH_SKIP_STATUS);				\
	} while (0)

#define TH_FAIL(fmt, ...)						\
	do {								\
		fprintf(stderr, "%s:%d: " fmt "\n", __FILE__, __LINE__,	\
			##__VA_ARGS__);					\
		th_reason("%s:%d: " fmt, __FILE__, __LINE__,		\
			  ##__VA_ARGS__);				\
		th_exit(1);						\
	} while (0)

/* ---------------------------------------------------------- comparisons */

/* Both operands unsigned: compare as uintmax_t, else as intmax_t. */
#define TH_IS_UNSIGNED(x) _Generic((x),					\
	_Bool: 1, unsigned char: 1, unsigned short: 1, unsigned int: 1,	\
	unsigned long: 1, unsigned long long: 1, default: 0)

/*
 * Pointers and integers alike go through uintmax_t, which evaluates the
 * operand exactly once; the signed view is the same bits.
 */
#define TH_TO_UMAX(x) ((uintmax_t)(x))

TH_UNUSED static inline bool th_cmp(int op, bool is_unsigned, uintmax_t a, uintmax_t b)
{
	if (is_unsigned) {
		switch (op) {
		case 0: return a == b;
		case 1: return a != b;
		case 2: return a < b;
		case 3: return a <= b;
		case 4: return a > b;
		default: return a >= b;
		}
	} else {
		intmax_t sa = (intmax_t)a, sb = (intmax_t)b;

		switch (op) {
		case 0: return sa == sb;
		case 1: return sa != sb;
		case 2: return sa < sb;
		case 3: return sa <= sb;
		case 4: return sa > sb;
		default: return sa >= sb;
		}
	}
}

__attribute__((noreturn))
TH_UNUSED static void th_cmp_failed(const char *file, int line, const char *what,
			  const char *ea, const char *eb, bool is_unsigned,
			  uintmax_t a, uintmax_t b)
{
	if (is_unsigned) {
		fprintf(stderr, "%s:%d: %s(%s, %s) failed: %ju (0x%jx) vs %ju (0x%jx)\n",
			file, line, what, ea, eb, a, a, b, b);
		th_reason("%s:%d: %s(%s, %s) failed: %ju vs %ju",
			  file, line, what, ea, eb, a, b);
	} else {
		fprintf(stderr, "%s:%d: %s(%s, %s) failed: %jd (0x%jx) vs %jd (0x%jx)\n",
			file, line, what, ea, eb, (intmax_t)a, a, (intmax_t)b, b);
		th_reason("%s:%d: %s(%s, %s) failed: %jd vs %jd",
			  file, line, what, ea, eb, (intmax_t)a, (intmax_t)b);
	}
	th_exit(1);
}

/* Stringified by the ASSERT_* macro itself, before macro expansion. */
#define TH_ASSERT_CMP(op, what, ea, eb, a, b)				\
	do {								\
		const bool th_u_ = TH_IS_UNSIGNED(a) && TH_IS_UNSIGNED(b); \
		const uintmax_t th_a_ = TH_TO_UMAX(a);			\
		const uintmax_t th_b_ = TH_TO_UMAX(b);			\
		if (!th_cmp(op, th_u_, th_a_, th_b_))			\
			th_cmp_failed(__FILE__, __LINE__, what, ea, eb,	\
				      th_u_, th_a_, th_b_);		\
	} while (0)

#define ASSERT_EQ(a, b) TH_ASSERT_CMP(0, "ASSERT_EQ", #a, #b, a, b)
#define ASSERT_NE(a, b) TH_ASSERT_CMP(1, "ASSERT_NE", #a, #b, a, b)
#define ASSERT_LT(a, b) TH_ASSERT_CMP(2, "ASSERT_LT", #a, #b, a, b)
#define ASSERT_LE(a, b) TH_ASSERT_CMP(3, "ASSERT_LE", #a, #b, a, b)
#define ASSERT_GT(a, b) TH_ASSERT_CMP(4, "ASSERT_GT", #a, #b, a, b)
#define ASSERT_GE(a, b) TH_ASSERT_CMP(5, "ASSERT_GE", #a, #b, a, b)

#define ASSERT_TRUE(x)							\
	do {								\
		if (!(x))						\
			TH_FAIL("ASSERT_TRUE(%s) failed", #x);		\
	} while (0)

#define ASSERT_FALSE(x)							\
	do {								\
		if (x)							\
			TH_FAIL("ASSERT_FALSE(%s) failed", #x);		\
	} while (0)

#define ASSERT_NULL(p)							\
	do {								\
		const void *th_p_ = (p);				\
		if (th_p_ != NULL)					\
			TH_FAIL("ASSERT_NULL(%s) failed: %p", #p, th_p_); \
	} while (0)

#define ASSERT_NOT_NULL(p)						\
	do {								\
		const void *th_p_ = (p);				\
		if (th_p_ == NULL)					\
			TH_FAIL("ASSERT_NOT_NULL(%s) failed", #p);	\
	} while (0)

TH_UNUSED static void th_memeq(const char *file, int line, const char *ea,
		     const char *eb, const char *en, const void *a,
		     const void *b, size_t n)
{
	const unsigned char *pa = a, *pb = b;
	size_t i, j, diffs = 0, first;

	if (memcmp(pa, pb, n) == 0)
		return;
	for (i = 0; pa[i] == pb[i]; i++)
		;
	first = i;
	for (j = i; j < n; j++)
		diffs += pa[j] != pb[j];
	fprintf(stderr, "%s:%d: ASSERT_MEMEQ(%s, %s, %s) failed: first difference at offset %zu (0x%zx) of %zu: 0x%02x vs 0x%02x (%zu bytes differ)\n",
		file, line, ea, eb, en, first, first, n, pa[first], pb[first],
		diffs);
	fprintf(stderr, "#   %s[%zu..]:", ea, first);
	for (j = first; j < n && j < first + 16; j++)
		fprintf(stderr, " %02x", pa[j]);
	fprintf(stderr, "\n#   %s[%zu..]:", eb, first);
	for (j = first; j < n && j < first + 16; j++)
		fprintf(stderr, " %02x", pb[j]);
	fprintf(stderr, "\n");
	th_reason("%s:%d: ASSERT_MEMEQ(%s, %s, %s) failed at offset %zu: 0x%02x vs 0x%02x",
		  file, line, ea, eb, en, first, pa[first], pb[first]);
	th_exit(1);
}

#define ASSERT_MEMEQ(a, b, n)						\
	th_memeq(__FILE__, __LINE__, #a, #b, #n, (a), (b), (n))

/* --------------------------------------------------------------- runner */

TH_UNUSED static double th_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

TH_UNUSED static void th_on_term(int sig)
{
	pid_t pg = th_running_pgid;

	if (pg > 0)
		kill(-pg, SIGKILL);
	signal(sig, SIG_DFL);
	raise(sig);
}

/*
 * Waits for @pid up to @timeout seconds. Returns true with *status set,
 * or false on timeout. A pidfd gives an exact wake-up; without one, poll.
 */
TH_UNUSED static bool th_wait(pid_t pid, double timeout, int *status)
{
	double deadline = th_now() + timeout;
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);

	for (;;) {
		pid_t r = waitpid(pid, status, WNOHANG);
		double left;

		if (r == pid)
			break;
		if (r < 0 && errno != EINTR) {
			*status = 0xff00; /* exit 255: lost the child */
			break;
		}
		left = deadline - th_now();
		if (left <= 0) {
			if (pidfd >= 0)
				close(pidfd);
			return false;
		}
		if (pidfd >= 0) {
			struct pollfd pfd = { .fd = pidfd, .events = POLLIN };
			double ms = left * 1000 + 1;

			poll(&pfd, 1, ms > 1000 ? 1000 : (int)ms);
		} else {
			struct timespec ts = { 0, 5 * 1000 * 1000 };

			nanosleep(&ts, NULL);
		}
	}
	if (pidfd >= 0)
		close(pidfd);
	return true;
}

/* The first line the child sent, without its newline ("" if none). */
TH_UNUSED static void th_read_reason(int fd, char *buf, size_t size)
{
	ssize_t n = read(fd, buf, size - 1);
	char *nl;

	if (n < 0)
		n = 0;
	buf[n] = '\0';
	nl = strchr(buf, '\n');
	if (nl)
		*nl = '\0';
}

enum th_result { TH_PASS, TH_FAIL_R, TH_SKIP_R };

TH_UNUSED static enum th_result th_run_one(const struct th_test *t, double scale,
				 char *reason, size_t rsize)
{
	int fds[2], status = 0;
	pid_t pid;

	reason[0] = '\0';
	if (pipe2(fds, O_CLOEXEC) < 0) {
		snprintf(reason, rsize, "pipe: %s", strerror(errno));
		return TH_FAIL_R;
	}
	fcntl(fds[0], F_SETFL, O_NONBLOCK);
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		snprintf(reason, rsize, "fork: %s", strerror(errno));
		close(fds[0]);
		close(fds[1]);
		return TH_FAIL_R;
	}
	if (pid == 0) {
		struct rlimit no_core = { 0, 0 };

		setpgid(0, 0);
		signal(SIGTERM, SIG_DFL);
		signal(SIGINT, SIG_DFL);
		/* A crash must not leave a core file in the working tree. */
		if (!getenv("UHMM_TEST_CORE"))
			setrlimit(RLIMIT_CORE, &no_core);
		close(fds[0]);
		th_reason_fd = fds[1];
		t->fn();
		fflush(NULL);
		exit(0);	/* atexit handlers (uhmm_shutdown) run */
	}
	setpgid(pid, pid);	/* also here: no race with the child */
	th_running_pgid = pid;
	close(fds[1]);

	if (!th_wait(pid, t->timeout * scale, &status)) {
		kill(-pid, SIGKILL);
		waitpid(pid, &status, 0);
		th_running_pgid = 0;
		close(fds[0]);
		snprintf(reason, rsize, "timeout after %g s", t->timeout * scale);
		return TH_FAIL_R;
	}
	/* Whatever the test left behind in its process group goes too. */
	kill(-pid, SIGKILL);
	th_running_pgid = 0;
	th_read_reason(fds[0], reason, rsize);
	close(fds[0]);

	if (WIFSIGNALED(status)) {
		snprintf(reason, rsize, "killed by signal %d (%s)",
			 WTERMSIG(status), strsignal(WTERMSIG(status)));
		return TH_FAIL_R;
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return TH_PASS;
	if (WIFEXITED(status) && WEXITSTATUS(status) == TH_SKIP_STATUS)
		return TH_SKIP_R;
	if (!reason[0])
		snprintf(reason, rsize, "exit status %d", WEXITSTATUS(status));
	return TH_FAIL_R;
}

TH_UNUSED static bool th_selected(const struct th_test *t, int argc, char **argv, int first)
{
	int i;

	if (first >= argc)
		return true;
	for (i = first; i < argc; i++)
		if (strstr(t->name, argv[i]))
			return true;
	return false;
}

int main(int argc, char **argv)
{
	const char *prog = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
	const char *env = getenv("UHMM_TEST_TIMEOUT_SCALE");
	unsigned int n = 0, passed = 0, failed = 0, skipped = 0;
	double scale = 1.0;
	bool list = false;
	int first = 1;
	struct th_test *t;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
		printf("usage: %s [-l] [name-substring...]\n", prog);
		return 0;
	}
	if (argc > 1 && !strcmp(argv[1], "-l")) {
		list = true;
		first = 2;
	}
	if (env && *env) {
		char *end;
		double v = strtod(env, &end);

		if (*end || !(v > 0)) {
			fprintf(stderr, "%s: bad UHMM_TEST_TIMEOUT_SCALE '%s'\n",
				prog, env);
			return 2;
		}
		scale = v;
	}
	for (t = th_tests; t; t = t->next)
		if (th_selected(t, argc, argv, first))
			n++;
	if (list) {
		for (t = th_tests; t; t = t->next)
			if (th_selected(t, argc, argv, first))
				printf("%s\n", t->name);
		return 0;
	}
	if (n == 0 && first < argc) {
		fprintf(stderr, "%s: no test matches\n", prog);
		return 1;
	}

	signal(SIGTERM, th_on_term);
	signal(SIGINT, th_on_term);
	printf("1..%u\n", n);
	n = 0;
	for (t = th_tests; t; t = t->next) {
		char reason[512];
		enum th_result r;

		if (!th_selected(t, argc, argv, first))
			continue;
		n++;
		r = th_run_one(t, scale, reason, sizeof(reason));
		switch (r) {
		case TH_PASS:
			passed++;
			printf("ok %u %s\n", n, t->name);
			break;
		case TH_SKIP_R:
			skipped++;
			printf("ok %u %s # SKIP %s\n", n, t->name, reason);
			break;
		default:
			failed++;
			printf("not ok %u %s # %s\n", n, t->name, reason);
			break;
		}
		fflush(stdout);
	}
	printf("# %s: %u passed, %u failed, %u skipped\n", prog, passed,
	       failed, skipped);
	return failed ? 1 : 0;
}

#endif /* UHMM_TESTS_HARNESS_H */
