/* SPDX-License-Identifier: MIT */
/*
 * make check's short chaos run (build/tests/test_chaos): tests/chaos/run.sh
 * on a few fast programs from Debian, plainly and under libuhmm-chaos.so,
 * outputs compared byte for byte (tests/chaos/README.md). First the
 * control (MODE=off: the preload loaded, nothing moving; a failure there
 * is the runner's or the preload's), then one seed with their memory
 * moving (migrate). .ci/run runs the long version (make chaos).
 *
 * A FAIL or a HANG of any program fails the test. It skips, saying why,
 * where the run does not apply: the programs are not installed
 * (scripts/deps.sh --chaos), the preload was not built, a sanitizer build
 * (an ASan or TSan runtime cannot be preloaded into the uninstrumented
 * programs), valgrind (the programs would not run under it), and, for the
 * migrate run, a runtime without device memory or with UFFD_USER_MODE_ONLY
 * (an unprivileged user: a program's read(2) into a page on a device fails
 * with EFAULT, as docs/semantics.md says).
 *
 * env: UHMM_CHAOS_RUNNER  the runner (default tests/chaos/run.sh from the
 *                         working directory, or from this binary's
 *                         ../../tests/chaos)
 *      UHMM_CHAOS_CHECK_SEED  the migrate run's seed (default 1)
 *      UHMM_CHAOS_CHECK_PROGRAMS  the workloads (default below)
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uhmm/uhmm.h>

#include "harness.h"
#include "util.h"

/*
 * Fast, and between them: fork and exec (git: 40 processes, make: 130),
 * threads (python3-threads), pipes between processes (gzip), and the
 * bigger single-process heaps of sqlite3 and jq. About 15 s of the
 * runner's time per mode on 2 CPUs.
 */
#define CHECK_PROGRAMS	"git make python3-threads sqlite3 jq gzip"
#define CHECK_LIMIT	"60"	/* the runner's limit per program run, s */

/* Path of @rel beside this binary's directory, in @buf; NULL if absent. */
static const char *near_self(const char *rel, char *buf, size_t size)
{
	char self[PATH_MAX - 64], *slash;
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

	if (n <= 0)
		return NULL;
	self[n] = '\0';
	slash = strrchr(self, '/');
	if (!slash)
		return NULL;
	*slash = '\0';
	snprintf(buf, size, "%s/%s", self, rel);
	return access(buf, F_OK) ? NULL : buf;
}

static const char *runner_path(void)
{
	static char buf[PATH_MAX];
	const char *env = getenv("UHMM_CHAOS_RUNNER");

	if (env && *env)
		return access(env, R_OK) ? NULL : env;
	if (!access("tests/chaos/run.sh", R_OK))
		return "tests/chaos/run.sh";
	return near_self("../../tests/chaos/run.sh", buf, sizeof(buf));
}

/* What does not apply anywhere: skips the test, with the reason. */
static void require_runner(const char **runner, const char **lib)
{
	static char libbuf[PATH_MAX];
	struct uhmm_features f = { .size = sizeof(f) };

	if (UTIL_ASAN || UTIL_TSAN)
		SKIP("a sanitizer build: its libuhmm-chaos.so needs the %s runtime loaded first, which the programs from Debian do not have (the plain suite runs this)",
		     UTIL_ASAN ? "ASan" : "TSan");
	if (uhmm_features(&f) == 0 && f.uffd_path == UHMM_UFFD_NONE &&
	    f.uffd_error == -EDEADLK)
		SKIP("under valgrind: the programs would run outside it (the plain suite runs this)");
	if (access("/bin/bash", X_OK))
		SKIP("no /bin/bash (the runner is a bash script)");
	*runner = runner_path();
	if (!*runner)
		SKIP("tests/chaos/run.sh not found (run from the source tree, or set UHMM_CHAOS_RUNNER)");
	*lib = near_self("../libuhmm-chaos.so", libbuf, sizeof(libbuf));
	if (!*lib)
		SKIP("libuhmm-chaos.so not built beside this build's libuhmm.so");
}

/* Appends @s (to its newline) to @buf, after a "; " if @buf has text. */
static void append(char *buf, size_t size, const char *s)
{
	size_t n = strlen(buf);

	if (n && n + 2 < size) {
		memcpy(buf + n, "; ", 2);
		n += 2;
	}
	while (*s && *s != '\n' && n + 1 < size)
		buf[n++] = *s++;
	buf[n] = '\0';
}

/*
 * Runs the runner in @mode with @seed on the check's programs, its
 * output to stderr as comments. Fails on any FAIL or HANG (or a runner
 * that says nothing); skips when every program is missing.
 */
static void run_chaos(const char *runner, const char *lib, const char *mode,
		      const char *seed)
{
	const char *progs = getenv("UHMM_CHAOS_CHECK_PROGRAMS");
	char line[4096], cmd[PATH_MAX * 2 + 512], missing[1024] = "";
	unsigned int passed = 0, bad = 0, skipped = 0, totals = 0;
	FILE *p;
	int status;

	if (!progs || !*progs)
		progs = CHECK_PROGRAMS;
	/* The names are the runner's workload names, checked by it. */
	snprintf(cmd, sizeof(cmd),
		 "exec /bin/bash '%s' --lib '%s' --mode %s --seeds 1 --first-seed %s --timeout %s %s 2>&1",
		 runner, lib, mode, seed, CHECK_LIMIT, progs);
	fflush(NULL);
	p = popen(cmd, "r");
	ASSERT_NOT_NULL(p);
	while (fgets(line, sizeof(line), p)) {
		unsigned int a, b;

		fprintf(stderr, "#   %s", line);
		if (!strchr(line, '\n'))
			fputc('\n', stderr);
		if (!strncmp(line, "PASS ", 5))
			passed++;
		else if (!strncmp(line, "FAIL ", 5) || !strncmp(line, "HANG ", 5))
			bad++;
		else if (!strncmp(line, "SKIP ", 5)) {
			skipped++;
			append(missing, sizeof(missing), line + 5);
		} else if (sscanf(line, "%u passed, %u failed", &a, &b) == 2)
			totals++;
	}
	status = pclose(p);
	ASSERT_EQ(bad, 0u);
	ASSERT_EQ(totals, 1u);	/* the runner ran to its end */
	if (!passed && skipped)
		SKIP("%s", missing);
	ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	ASSERT_GT(passed, 0u);
	if (skipped)
		TH_LOG("not run: %s", missing);
}

/* The control: the preload loaded, nothing moving. */
TEST_TIMEOUT(chaos_control_off, 300)
{
	const char *runner, *lib;

	require_runner(&runner, &lib);
	run_chaos(runner, lib, "off", "1");
}

/* One seed of constant migration. */
TEST_TIMEOUT(chaos_migrate, 400)
{
	struct uhmm_features f = { .size = sizeof(f) };
	const char *seed = getenv("UHMM_CHAOS_CHECK_SEED");
	const char *runner, *lib;

	require_runner(&runner, &lib);
	ASSERT_EQ(uhmm_features(&f), 0);
	if (f.uffd_path == UHMM_UFFD_NONE)
		SKIP("no userfaultfd (error %d): no device memory", f.uffd_error);
	if (!(f.flags & UHMM_FEAT_MOVE))
		SKIP("no UFFDIO_MOVE: no device memory");
	if (f.uffd_path == UHMM_UFFD_SYSCALL_USER_ONLY)
		SKIP("userfaultfd in UFFD_USER_MODE_ONLY (unprivileged): a program's read(2) into a page on a device fails with EFAULT (docs/semantics.md); the control ran");
	if (!seed || !*seed || strspn(seed, "0123456789") != strlen(seed))
		seed = "1";
	run_chaos(runner, lib, "migrate", seed);
}
