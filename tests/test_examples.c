/* SPDX-License-Identifier: MIT */
/*
 * The programs in examples/ run and pass their own checks: each is built
 * into <build>/examples/ next to <build>/tests/, exits 0 when every check
 * passed and 77 when the kernel cannot run uhmm.
 */
#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

/* <build>/examples, from this binary's path <build>/tests/test_examples. */
static int examples_dir(char *out, size_t size)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *slash;

	if (n <= 0)
		return -1;
	self[n] = '\0';
	for (int i = 0; i < 2; i++) {
		slash = strrchr(self, '/');
		if (!slash)
			return -1;
		*slash = '\0';
	}
	return (size_t)snprintf(out, size, "%s/examples", self) < size ? 0 : -1;
}

TEST_TIMEOUT(every_example_passes, 120)
{
	char dir[PATH_MAX], path[PATH_MAX + 256], cmd[PATH_MAX + 300];
	int ran = 0, skipped = 0;
	struct dirent *de;
	DIR *dp;

	ASSERT_EQ(examples_dir(dir, sizeof(dir)), 0);
	dp = opendir(dir);
	if (!dp)
		SKIP("no %s (examples not built)", dir);
	while ((de = readdir(dp))) {
		struct stat st;
		int status;

		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		if (de->d_name[0] == '.' || stat(path, &st) ||
		    !S_ISREG(st.st_mode) || !(st.st_mode & S_IXUSR))
			continue;
		snprintf(cmd, sizeof(cmd), "'%s' >/dev/null 2>&1", path);
		status = system(cmd);
		ASSERT_TRUE(WIFEXITED(status));
		TH_LOG("%s: exit %d", de->d_name, WEXITSTATUS(status));
		if (WEXITSTATUS(status) == 77) {
			skipped++;
			continue;
		}
		ASSERT_EQ(WEXITSTATUS(status), 0);
		ran++;
	}
	closedir(dp);
	if (!ran && skipped)
		SKIP("every example skipped (kernel)");
	ASSERT_GT(ran, 0);
}
