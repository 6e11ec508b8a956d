/* SPDX-License-Identifier: MIT */
/*
 * Self-test of tests/harness.h. Every test here must pass: the outcomes
 * that are not a pass (skip, failed assertion, signal, timeout) are
 * produced by running the harness's own th_run_one() on inner tests from
 * inside a test child, and checked from there.
 */
#include "harness.h"

#include <limits.h>

static int evaluations;

static int once(int v)
{
	evaluations++;
	return v;
}

TEST(asserts_pass)
{
	int x = 5;
	const char *s = "abc";

	ASSERT_EQ(x, 5);
	ASSERT_NE(x, 6);
	ASSERT_LT(-1, 1);
	ASSERT_LE(x, 5);
	ASSERT_GT(x, 4);
	ASSERT_GE(x, 5);
	ASSERT_TRUE(x == 5);
	ASSERT_FALSE(x == 6);
	ASSERT_NULL(NULL);
	ASSERT_NOT_NULL(s);
	ASSERT_MEMEQ(s, "abc", 4);
	ASSERT_EQ(s, s);
}

TEST(operands_evaluated_once)
{
	evaluations = 0;
	ASSERT_EQ(once(1), once(1));
	ASSERT_LT(once(1), once(2));
	ASSERT_EQ(evaluations, 4);
}

TEST(signedness)
{
	/* Both unsigned: compared as unsigned. */
	ASSERT_GT((size_t)-1, 0u);
	ASSERT_GT(UINT64_MAX, (uint64_t)1);
	/* Mixed or signed: compared as signed, so -1 < 0u holds here. */
	ASSERT_LT(-1, 0u);
	ASSERT_LT((long)INT_MIN, 0L);
	ASSERT_EQ(-14, -14L);
}

TEST(registration_follows_source_order)
{
	const struct th_test *t;
	unsigned int n = 0;

	for (t = th_tests; t; t = t->next) {
		if (t->next)
			ASSERT_LT(t->line, t->next->line);
		n++;
	}
	ASSERT_EQ(n, th_ntests);
	ASSERT_TRUE(strcmp(th_tests->name, "asserts_pass") == 0);
}

TEST_TIMEOUT(custom_timeout_recorded, 7)
{
	const struct th_test *t;

	for (t = th_tests; t; t = t->next)
		if (!strcmp(t->name, "custom_timeout_recorded"))
			break;
	ASSERT_NOT_NULL(t);
	ASSERT_EQ((int)t->timeout, 7);
}

/* ------------------------------------------------ inner tests, run nested */

/* The inner tests' diagnostics would look like real failures in the log. */
static void quiet(void)
{
	int fd = open("/dev/null", O_WRONLY);

	if (fd >= 0) {
		dup2(fd, STDERR_FILENO);
		close(fd);
	}
}

static void inner_skip(void)
{
	quiet();
	SKIP("no %s here", "widget");
}

#define EXPECTED_RET 0

static void inner_fail_eq(void)
{
	int ret = -22;

	quiet();
	ASSERT_EQ(ret, EXPECTED_RET);
}

static void inner_fail_memeq(void)
{
	char a[8] = "abcdefg", b[8] = "abcxefg";

	quiet();
	ASSERT_MEMEQ(a, b, sizeof(a));
}

static void inner_signal(void)
{
	/* Not SIGSEGV: sanitizers catch that one and exit instead. */
	raise(SIGKILL);
}

#include <sys/mman.h>

static volatile pid_t *grandchild;

static void inner_hang(void)
{
	/* A grandchild in the same process group must be killed too. */
	pid_t pid = fork();

	if (pid == 0)
		for (;;)
			pause();
	*grandchild = pid;
	for (;;)
		pause();
}

/* Gone or a zombie (its reaper is not us). */
static bool dead(pid_t pid)
{
	char path[64], buf[256], *p;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return true;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	p = strrchr(buf, ')');
	return p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X');
}

static void inner_pass(void)
{
}

static enum th_result run_inner(void (*fn)(void), double timeout, char *reason,
				size_t size)
{
	struct th_test t = { .name = "inner", .fn = fn, .timeout = timeout };

	return th_run_one(&t, 1.0, reason, size);
}

TEST(skip_reports_reason)
{
	char reason[512];

	ASSERT_EQ(run_inner(inner_skip, 10, reason, sizeof(reason)), TH_SKIP_R);
	ASSERT_TRUE(strcmp(reason, "no widget here") == 0);
}

TEST(failed_assert_reports_location)
{
	char reason[512];

	ASSERT_EQ(run_inner(inner_fail_eq, 10, reason, sizeof(reason)), TH_FAIL_R);
	/* The expressions are printed as written, macros unexpanded. */
	ASSERT_NOT_NULL(strstr(reason, "ASSERT_EQ(ret, EXPECTED_RET) failed: -22 vs 0"));
	ASSERT_NOT_NULL(strstr(reason, "test_harness.c:"));
}

TEST(failed_memeq_reports_offset)
{
	char reason[512];

	ASSERT_EQ(run_inner(inner_fail_memeq, 10, reason, sizeof(reason)), TH_FAIL_R);
	ASSERT_NOT_NULL(strstr(reason, "at offset 3: 0x64 vs 0x78"));
}

TEST(signal_is_failure)
{
	char reason[512];

	ASSERT_EQ(run_inner(inner_signal, 10, reason, sizeof(reason)), TH_FAIL_R);
	ASSERT_NOT_NULL(strstr(reason, "killed by signal 9"));
}

TEST(timeout_kills_process_group)
{
	char reason[512];
	double t0 = th_now();
	int i;

	grandchild = mmap(NULL, sizeof(*grandchild), PROT_READ | PROT_WRITE,
			  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ASSERT_TRUE(grandchild != MAP_FAILED);
	ASSERT_EQ(run_inner(inner_hang, 0.3, reason, sizeof(reason)), TH_FAIL_R);
	ASSERT_NOT_NULL(strstr(reason, "timeout"));
	ASSERT_TRUE(th_now() - t0 < 5.0);
	/* The inner child was reaped... */
	ASSERT_EQ(waitpid(-1, NULL, WNOHANG), -1);
	/* ...and its grandchild killed with it. */
	ASSERT_GT(*grandchild, 0);
	for (i = 0; i < 200 && !dead(*grandchild); i++)
		usleep(10000);
	ASSERT_TRUE(dead(*grandchild));
}

TEST(pass_is_pass)
{
	char reason[512];

	ASSERT_EQ(run_inner(inner_pass, 10, reason, sizeof(reason)), TH_PASS);
	ASSERT_EQ(reason[0], 0);
}
