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

/*
 * Regression tests for the bugs the soak's racing modes found, with the
 * fewest workers that found them; all three are fixed and each runs a
 * short soak in its racing mode. build/soak takes the same knobs:
 * UHMM_SOAK_UNMAP_RACY=1, UHMM_SOAK_FORK_RACY=1, UHMM_SOAK_MIGRATE_RACY=1
 * (UHMM_SOAK_STRICT=1: all three at once).
 */
static void racing(const char *threads, const char *devices, const char *knob)
{
	struct soak_opts o = {
		.seconds = SOAK_SANITIZED ? 3 : 6,
		.mib = SOAK_SANITIZED ? 16 : 32,
		.hang_s = 30 * soak_timeout_scale(),
		.seed = (uint64_t)time(NULL), .quiet = true,
	};
	const char *pre = getenv("LD_PRELOAD");
	int ret;

	if (pre && strstr(pre, "vgpreload"))
		o.seconds = 3;
	TH_LOG("seed %" PRIu64, o.seed);
	setenv("UHMM_SOAK_THREADS", threads, 1);
	setenv("UHMM_SOAK_DEVICES", devices, 1);
	setenv(knob, "1", 1);
	ret = soak_run(&o);
	if (ret == 77)
		SKIP("the runtime cannot start here");
	ASSERT_EQ(ret, 0);
}

/*
 * fork() while a migration is in flight. The bug: the child inherited
 * holes (zeros) where the migrating pages were (fork now waits for
 * migrations in flight and holds new ones).
 */
TEST_TIMEOUT(racing_fork_during_migration, 120)
{
	racing("migrator,forker", "0", "UHMM_SOAK_FORK_RACY");
}

/*
 * munmap/MAP_FIXED/MADV_DONTNEED/mremap while CPU threads fault device
 * pages back elsewhere. The bug: both uhmm readers served fault-backs
 * whose installs met the pending event (UFFDIO_MOVE: EAGAIN) and waited
 * for it to be read, which only a reader does: a hang (a monitor thread
 * now returns at once and the thread faults again).
 */
TEST_TIMEOUT(racing_unmap_vs_fault_back, 120)
{
	racing("cpu-read,cpu-write-0,cpu-write-1,device-0,migrator,unmapper",
	      "0", "UHMM_SOAK_UNMAP_RACY");
}

/*
 * Migrations racing CPU, device and EXCLUSIVE accesses of the same pages.
 * The bug, a hang in one run of four: a device copy through a stale entry
 * faulted to uhmm under dm->lock, and both uhmm readers waited for
 * dm->lock in invalidations. The entries were stale because a migration
 * (and EXCLUSIVE) closed its invalidation before moving the pages out,
 * EXCLUSIVE's own invalidation skipped every open of the device, and a
 * device kept its coherent entries across its own migration of them.
 */
TEST_TIMEOUT(racing_migrations, 120)
{
	/* Every worker and device. */
	racing("", "", "UHMM_SOAK_MIGRATE_RACY");
}
