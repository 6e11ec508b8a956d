/* SPDX-License-Identifier: MIT */
/*
 * `uhmm demo`, the main job (make run), run as a program: its exit status
 * and its JSON. The CLI is $UHMM_CLI, or ../uhmm next to this binary's
 * directory (the build directory's tool).
 */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uhmm/uhmm.h>

#include "harness.h"

/* The uhmm tool's path; NULL when it is not there. */
static const char *cli_path(void)
{
	static char path[PATH_MAX];
	const char *env = getenv("UHMM_CLI");
	char self[PATH_MAX - 16], *slash;
	ssize_t n;

	if (env && *env)
		return access(env, X_OK) ? NULL : env;
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		return NULL;
	self[n] = '\0';
	slash = strrchr(self, '/');
	if (!slash)
		return NULL;
	*slash = '\0';
	snprintf(path, sizeof(path), "%s/../uhmm", self);
	return access(path, X_OK) ? NULL : path;
}

/*
 * Run the tool with @argv (argv[0] is replaced), its stdout into @out (at
 * most @size - 1 bytes, NUL-terminated). Returns the exit status, or -1.
 */
static int run_cli(char **argv, char *out, size_t size)
{
	const char *cli = cli_path();
	int fds[2], status;
	size_t len = 0;
	pid_t pid;

	if (!cli)
		SKIP("no uhmm tool (set UHMM_CLI, or build it: make cli)");
	if (pipe(fds))
		return -1;
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		dup2(fds[1], 1);
		close(fds[0]);
		close(fds[1]);
		argv[0] = (char *)cli;
		execv(cli, argv);
		_exit(127);
	}
	close(fds[1]);
	for (;;) {
		ssize_t n = read(fds[0], out + len, size - 1 - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
		if (len == size - 1)
			break;
	}
	out[len] = '\0';
	close(fds[0]);
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}

static void need_uhmm(void)
{
	struct uhmm_features f = { .size = sizeof(f) };

	if (uhmm_init() || uhmm_features(&f))
		SKIP("uhmm cannot start on this kernel");
}

static unsigned int count(const char *s, const char *what)
{
	unsigned int n = 0;

	while ((s = strstr(s, what))) {
		n++;
		s += strlen(what);
	}
	return n;
}

TEST(demo_json_small)
{
	static char out[1 << 16];
	char *argv[] = { NULL, "demo", "--nodes", "20000", "--json", NULL };
	struct uhmm_features f = { .size = sizeof(f) };

	need_uhmm();
	ASSERT_EQ(uhmm_features(&f), 0);
	ASSERT_EQ(run_cli(argv, out, sizeof(out)), 0);
	/* One JSON object on one line. */
	ASSERT_EQ(out[0], '{');
	ASSERT_NOT_NULL(strstr(out, "}\n"));
	ASSERT_EQ(count(out, "\n"), 1U);
	ASSERT_NOT_NULL(strstr(out, "\"demo\":\"tree\""));
	ASSERT_NOT_NULL(strstr(out, "\"nodes\":20000,"));
	ASSERT_NOT_NULL(strstr(out, "\"ok\":true"));
	ASSERT_EQ(count(out, "\"matches_cpu\":false"), 0U);
	ASSERT_NOT_NULL(strstr(out, "\"step\":\"device_traverse_cold\""));
	/* The CLI may have device memory where this process has none: under
	 * valgrind (not traced into the CLI), uhmm opens no userfaultfd. */
	if ((f.flags & UHMM_FEAT_MOVE) ||
	    (f.uffd_error == -EDEADLK && strstr(out, "\"step\":\"migrate_hot_to_device\""))) {
		/* Three traversals before the update, one after. */
		ASSERT_EQ(count(out, "\"matches_cpu\":true"), 4U);
		ASSERT_NOT_NULL(strstr(out, "\"step\":\"migrate_hot_to_device\""));
		ASSERT_NOT_NULL(strstr(out, "\"step\":\"device_traverse_updated\""));
	} else {
		ASSERT_EQ(count(out, "\"matches_cpu\":true"), 2U);
	}
}

TEST(demo_text_and_stats)
{
	static char out[1 << 16];
	char *argv[] = { NULL, "demo", "--nodes", "3000", "--stats", NULL };

	need_uhmm();
	ASSERT_EQ(run_cli(argv, out, sizeof(out)), 0);
	ASSERT_NOT_NULL(strstr(out, "matched the CPU's"));
	ASSERT_NULL(strstr(out, "MISMATCH"));
	ASSERT_NOT_NULL(strstr(out, "\"faults\""));
}

TEST(demo_usage_errors)
{
	static char out[4096];
	char *a1[] = { NULL, "demo", "--nodes", "0", NULL };
	char *a2[] = { NULL, "demo", "--bogus", NULL };
	char *a3[] = { NULL, "demo", "--help", NULL };

	ASSERT_EQ(run_cli(a1, out, sizeof(out)), 2);
	ASSERT_EQ(run_cli(a2, out, sizeof(out)), 2);
	ASSERT_EQ(run_cli(a3, out, sizeof(out)), 0);
	ASSERT_NOT_NULL(strstr(out, "usage: uhmm demo"));
}
