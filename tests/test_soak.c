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
 * The bugs the soak's racing modes find, with the fewest workers that
 * still find them. They fail while the bug is open, so they run only with
 * UHMM_SOAK_REPRO=1 (`make check` skips them). build/soak takes the same
 * knobs: UHMM_SOAK_UNMAP_RACY=1, UHMM_SOAK_FORK_RACY=1,
 * UHMM_SOAK_MIGRATE_RACY=1 (UHMM_SOAK_STRICT=1: all three).
 */
static void repro(const char *threads, const char *devices, const char *knob)
{
	struct soak_opts o = {
		.seconds = 12, .mib = 32, .hang_s = 30 * soak_timeout_scale(),
		.seed = (uint64_t)time(NULL), .quiet = true,
	};

	if (!getenv("UHMM_SOAK_REPRO"))
		SKIP("a known bug: set UHMM_SOAK_REPRO=1 to run it");
	setenv("UHMM_SOAK_THREADS", threads, 1);
	setenv("UHMM_SOAK_DEVICES", devices, 1);
	setenv(knob, "1", 1);
	ASSERT_EQ(soak_run(&o), 0);
}

/*
 * fork() while a migration is in flight: the child inherits holes (zeros)
 * where the migrating pages are; the atfork handler brings device pages
 * home but does not wait for migrations in progress.
 */
TEST_TIMEOUT(repro_fork_during_migration, 120)
{
	repro("migrator,forker", "0", "UHMM_SOAK_FORK_RACY");
}

/*
 * munmap/MAP_FIXED/MADV_DONTNEED/mremap while CPU threads fault device
 * pages back elsewhere: both uhmm readers serve fault-backs whose installs
 * meet the pending event (UFFDIO_MOVE: EAGAIN) and wait for it to be
 * read, which only a reader does: everything hangs (the watchdog aborts).
 */
TEST_TIMEOUT(repro_unmap_vs_fault_back_hang, 120)
{
	repro("cpu-read,cpu-write-0,cpu-write-1,device-0,migrator,unmapper",
	      "0", "UHMM_SOAK_UNMAP_RACY");
}

/*
 * Migrations racing CPU, device and EXCLUSIVE accesses of the same pages:
 * a hang (about one run in two of 12 s). Seen: a device WRITE's
 * copy through a system entry (dmirror_copy_run) faults under dm->lock
 * and waits in handle_userfault; one uhmm reader waits for dm->lock in
 * dmirror_invalidate, the other in uhmm__handle_fault; a MIGRATE_TO_SYS
 * waits for dm->lock in its inv_end; an EXCLUSIVE is in
 * uhmm_make_device_exclusive.
 */
TEST_TIMEOUT(repro_racing_migrations, 120)
{
	/* Every worker and device: fewer do not hang reliably. */
	repro("", "", "UHMM_SOAK_MIGRATE_RACY");
}
