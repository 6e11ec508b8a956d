/* SPDX-License-Identifier: MIT */
/*
 * `uhmm info` and the tool's dispatcher, run as programs: exit statuses,
 * the JSON object (parsed by python3 when it is there) and the facts it
 * must agree with (uhmm_features(), /proc). The CLI is $UHMM_CLI, or
 * ../uhmm next to this binary's directory.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uhmm/uhmm.h>

#include "harness.h"

static char cli[PATH_MAX];

static void find_cli(void)
{
	const char *env = getenv("UHMM_CLI");
	char self[PATH_MAX - 16], *slash;
	ssize_t n;

	if (env && *env) {
		snprintf(cli, sizeof(cli), "%s", env);
	} else {
		n = readlink("/proc/self/exe", self, sizeof(self) - 1);
		ASSERT_GT(n, 0);
		self[n] = '\0';
		slash = strrchr(self, '/');
		ASSERT_NOT_NULL(slash);
		*slash = '\0';
		snprintf(cli, sizeof(cli), "%s/../uhmm", self);
	}
	if (access(cli, X_OK))
		SKIP("no uhmm tool at %s (make cli)", cli);
}

/* Run `cli ARGS` through the shell; stdout into @out. Exit status or -1. */
static int run(const char *args, char *out, size_t size)
{
	char cmd[PATH_MAX + 512];
	FILE *p;
	size_t len = 0;
	int st;

	snprintf(cmd, sizeof(cmd), "'%s' %s 2>/dev/null", cli, args);
	p = popen(cmd, "r");
	ASSERT_NOT_NULL(p);
	while (len + 1 < size) {
		size_t k = fread(out + len, 1, size - 1 - len, p);

		if (!k)
			break;
		len += k;
	}
	out[len] = '\0';
	st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char out[1 << 16];

TEST(info_plain_says_what_works)
{
	find_cli();
	ASSERT_EQ(run("info", out, sizeof(out)), 0);
	ASSERT_NOT_NULL(strstr(out, "kernel:"));
	ASSERT_NOT_NULL(strstr(out, "userfaultfd:"));
	ASSERT_NOT_NULL(strstr(out, "vm.max_map_count:"));
	ASSERT_NOT_NULL(strstr(out, "vm.unprivileged_userfaultfd:"));
	ASSERT_NOT_NULL(strstr(out, "What works:"));
	ASSERT_TRUE(strstr(out, "What degrades:") ||
		    strstr(out, "Nothing degrades"));
}

TEST(info_json_agrees_with_the_library)
{
	struct uhmm_features f = { .size = sizeof(f) };
	char expect[128];

	find_cli();
	ASSERT_EQ(uhmm_features(&f), 0);
	ASSERT_EQ(run("info --json", out, sizeof(out)), 0);
	ASSERT_EQ(out[0], '{');
	ASSERT_NOT_NULL(strstr(out, "}\n"));
	snprintf(expect, sizeof(expect), "\"version\": \"%s\"", uhmm_version());
	ASSERT_NOT_NULL(strstr(out, expect));
	snprintf(expect, sizeof(expect), "\"page_size\": %u", f.page_size);
	ASSERT_NOT_NULL(strstr(out, expect));
	/* Under valgrind this process opens no userfaultfd (-EDEADLK) while
	 * the CLI, which valgrind does not trace, does. */
	snprintf(expect, sizeof(expect), "\"events\": %s",
		 f.flags & UHMM_FEAT_EVENTS ? "true" : "false");
	if (f.uffd_error != -EDEADLK)
		ASSERT_NOT_NULL(strstr(out, expect));
	snprintf(expect, sizeof(expect), "\"root\": %s",
		 geteuid() == 0 ? "true" : "false");
	ASSERT_NOT_NULL(strstr(out, expect));
	ASSERT_NOT_NULL(strstr(out, "\"max_map_count\": "));
	ASSERT_NOT_NULL(strstr(out, "\"works\": ["));
	ASSERT_NOT_NULL(strstr(out, "\"degrades\": ["));
	/* Well-formed JSON, when there is a parser to say so. */
	if (system("command -v python3 >/dev/null 2>&1") == 0) {
		char cmd[PATH_MAX + 128];

		snprintf(cmd, sizeof(cmd),
			 "'%s' info --json | python3 -c 'import json,sys; json.load(sys.stdin)'",
			 cli);
		ASSERT_EQ(system(cmd), 0);
	}
}

TEST(usage_errors_exit_2)
{
	find_cli();
	ASSERT_EQ(run("info --bogus", out, sizeof(out)), 2);
	ASSERT_EQ(run("no-such-command", out, sizeof(out)), 2);
	ASSERT_EQ(run("", out, sizeof(out)), 2);
}

TEST(help_lists_info_and_version)
{
	find_cli();
	ASSERT_EQ(run("help", out, sizeof(out)), 0);
	ASSERT_NOT_NULL(strstr(out, "info [--json]"));
	ASSERT_EQ(run("version", out, sizeof(out)), 0);
	ASSERT_EQ(strncmp(out, "uhmm ", 5), 0);
	ASSERT_NOT_NULL(strstr(out, uhmm_version()));
}
