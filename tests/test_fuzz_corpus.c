/* SPDX-License-Identifier: MIT */
/*
 * Replays fuzz/corpus/ through the fuzz target (fuzz/fuzz_api.c, built
 * here with the suite's compiler and sanitizers instead of libFuzzer): the
 * seeds, and the inputs that found bugs once those are fixed. One process
 * runs them all in order, as libFuzzer does, so state left behind by one
 * input meets the next.
 *
 * fuzz/findings/NAME/ holds the inputs of bugs not fixed yet; `make
 * findings` replays them (files in order, repeatedly: most are races)
 * through UHMM_FUZZ_REPLAY=file1:file2:..., which replays those files
 * instead of the corpus. When a bug is fixed, its inputs move to
 * fuzz/corpus/.
 */
#include <dirent.h>

#include "harness.h"
#include "../fuzz/fuzz_api.c"

static int fz_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Runs one input file; false if it cannot be read. */
static bool fz_replay_file(const char *path)
{
	static uint8_t buf[1 << 16];
	FILE *f = fopen(path, "rb");
	size_t n;

	if (!f)
		return false;
	n = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	LLVMFuzzerTestOneInput(buf, n);
	return true;
}

/* The names in @dir (not starting with '.'), sorted; returns the count. */
static unsigned int fz_list(const char *dir, char **names, unsigned int max)
{
	unsigned int n = 0;
	struct dirent *e;
	DIR *d = opendir(dir);

	if (!d)
		return 0;
	while ((e = readdir(d)) && n < max)
		if (e->d_name[0] != '.')
			names[n++] = strdup(e->d_name);
	closedir(d);
	qsort(names, n, sizeof(names[0]), fz_cmp);
	return n;
}

TEST_TIMEOUT(replay_corpus, 300)
{
	/* make check runs from the top of the tree. */
	const char *dir = "fuzz/corpus", *only = getenv("UHMM_FUZZ_REPLAY");
	char *names[4096], path[4096];
	unsigned int n;

	if (uhmm_init())
		SKIP("the runtime cannot start here");
	if (only && *only) {
		char *list = strdup(only), *save = NULL;

		for (char *f = strtok_r(list, ":", &save); f;
		     f = strtok_r(NULL, ":", &save))
			ASSERT_TRUE(fz_replay_file(f));
		free(list);
		return;
	}
	n = fz_list(dir, names, 4096);
	if (!n)
		SKIP("no %s (run from the top of the source tree)", dir);
	for (unsigned int i = 0; i < n; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		ASSERT_TRUE(fz_replay_file(path));
		free(names[i]);
	}
	TH_LOG("%u inputs replayed", n);
}
