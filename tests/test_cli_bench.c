/* SPDX-License-Identifier: MIT */
/*
 * `uhmm bench`, run as a program on one cheap scenario: exit status, JSON
 * lines (each figure verified), the Markdown table, usage errors. The CLI
 * is $UHMM_CLI, or ../uhmm next to this binary's directory. Nothing here
 * looks at the figures' values: benchmarks never decide pass or fail.
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

/* Every line of @s is one flat JSON object with "verified":true. */
static bool lines_verified(char *s, unsigned int *n)
{
	char *line, *save = NULL;

	*n = 0;
	for (line = strtok_r(s, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		size_t len = strlen(line);

		if (line[0] != '{' || line[len - 1] != '}' ||
		    !strstr(line, "\"verified\":true") ||
		    !strstr(line, "\"bench\":\"") ||
		    !strstr(line, "\"baseline\":") ||
		    !strstr(line, "\"ratio\":"))
			return false;
		(*n)++;
	}
	return true;
}

TEST_TIMEOUT(bench_quick_read_json, 120)
{
	static char out[1 << 16];
	char *argv[] = { NULL, "bench", "--quick", "read", "--json", NULL };
	unsigned int n;

	need_uhmm();
	ASSERT_EQ(run_cli(argv, out, sizeof(out)), 0);
	ASSERT_NOT_NULL(strstr(out, "\"scenario\":\"read\""));
	ASSERT_NOT_NULL(strstr(out, "\"bench\":\"read_warm\""));
	ASSERT_NOT_NULL(strstr(out, "\"bench\":\"read_cold\""));
	ASSERT_EQ(count(out, "\"verified\":false"), 0U);
	ASSERT_TRUE(lines_verified(out, &n));
	ASSERT_EQ(n, 2U);
}

TEST_TIMEOUT(bench_quick_munmap_markdown, 120)
{
	static char out[1 << 16];
	char *argv[] = { NULL, "bench", "--quick", "-n", "1", "munmap",
			 "--markdown", NULL };

	need_uhmm();
	ASSERT_EQ(run_cli(argv, out, sizeof(out)), 0);
	ASSERT_EQ(strncmp(out, "| figure | uhmm | baseline (same run) | ratio "
			  "| target |\n|---|---|---|---|---|\n| "
			  "munmap_mirrored | ", 90), 0);
}

TEST(bench_usage)
{
	static char out[4096];
	char *a1[] = { NULL, "bench", "no_such_scenario", NULL };
	char *a2[] = { NULL, "bench", "--json", "--markdown", "read", NULL };
	char *a3[] = { NULL, "bench", "-n", "0", "read", NULL };
	char *a4[] = { NULL, "bench", "--list", NULL };

	ASSERT_EQ(run_cli(a1, out, sizeof(out)), 2);
	ASSERT_EQ(run_cli(a2, out, sizeof(out)), 2);
	ASSERT_EQ(run_cli(a3, out, sizeof(out)), 2);
	ASSERT_EQ(run_cli(a4, out, sizeof(out)), 0);
	ASSERT_EQ(strcmp(out, "snapshot\nread\nmigrate\nfault_back\n"
			 "seq_read\nfirst_touch\nmunmap\n"), 0);
}
