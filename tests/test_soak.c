/* SPDX-License-Identifier: MIT */
/*
 * A short run of the soak test (tests/soak.c) inside `make check`: every
 * worker of the long soak, for a few seconds, on a smaller set of buffers.
 * UHMM_SOAK_SECONDS overrides the duration.
 */
#define SOAK_NO_MAIN
#include "harness.h"
#include "soak.c"

TEST_TIMEOUT(soak_short, 150)
{
	struct soak_opts o = {
		.seconds = SOAK_SANITIZED ? 4 : 12,
		.mib = SOAK_SANITIZED ? 16 : 32,
		.hang_s = 30 * soak_timeout_scale(),
		.seed = (uint64_t)time(NULL),
		.quiet = true,
	};
	const char *env = getenv("UHMM_SOAK_SECONDS");
	const char *pre = getenv("LD_PRELOAD");
	int ret;

	/* Under valgrind (make check-valgrind) as under the sanitizers. */
	if (pre && strstr(pre, "vgpreload")) {
		o.seconds = 4;
		o.mib = 16;
	}

	if (env && strtod(env, NULL) > 0)
		o.seconds = strtod(env, NULL);
	TH_LOG("seed %" PRIu64 " (UHMM_SOAK_SEED is for build/soak)", o.seed);
	ret = soak_run(&o);
	if (ret == 77)
		SKIP("the runtime cannot start here");
	ASSERT_EQ(ret, 0);
}
