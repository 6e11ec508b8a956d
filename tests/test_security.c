/* SPDX-License-Identifier: MIT */
/*
 * The device never reads or writes memory the process cannot: unmapped,
 * PROT_NONE, read-only memory, after mprotect() and munmap(), also while
 * they race with device commands in a loop (errors, never a signal, never
 * data of an unmapped page, never a store into a read-only page: checked
 * with a checksum). The command's own buffer (ptr) is held to the same
 * rules. Plus the degraded userfaultfd mode of unprivileged users
 * (UFFD_USER_MODE_ONLY): a system call that touches a device page fails
 * with EFAULT, and the data stay intact.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uhmm/dmirror.h>
#include <uhmm/uhmm.h>

#include "harness.h"
#include "util.h"
#include "os.h"

#define NP 4
#define RUN_MS 1500

static struct uhmm_dmirror *dopen_or_skip(void)
{
	struct uhmm_dmirror *dm = NULL;
	int r = uhmm_init();

	if (r == -ENOSYS)
		SKIP("kernel without PROCMAP_QUERY/PAGEMAP_SCAN");
	ASSERT_EQ(r, 0);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	return dm;
}

static uint64_t sum(const void *p, unsigned long len)
{
	const uint64_t *w = p;
	uint64_t h = 1469598103934665603ULL;

	for (unsigned long i = 0; i < len / 8; i++)
		h = (h ^ w[i]) * 1099511628211ULL;
	return h;
}

TEST(device_respects_protection)
{
	struct uhmm_dmirror *dm = dopen_or_skip();
	struct uhmm_dmirror_cmd c;
	char *p = map_anon(NP * ps(), RW), *buf = map_anon(NP * ps(), RW);
	uint64_t s;

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(buf);
	fill(p, NP, 1);
	fill(buf, NP, 2);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, NP, &c), 0);
	ASSERT_TRUE(check(buf, NP, 1));

	/* Read-only: reads work, writes are refused and change nothing. */
	ASSERT_EQ(mprotect(p, NP * ps(), PROT_READ), 0);
	s = sum(p, NP * ps());
	fill(buf, NP, 3);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, NP, &c), -EPERM);
	ASSERT_EQ(sum(p, NP * ps()), s);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, NP, &c), 0);
	ASSERT_TRUE(check(buf, NP, 1));
	/* One read-only page in a writable range: the whole WRITE fails
	 * there, and that page is untouched. */
	ASSERT_EQ(mprotect(p, NP * ps(), RW), 0);
	ASSERT_EQ(mprotect(p + 2 * ps(), ps(), PROT_READ), 0);
	s = sum(p + 2 * ps(), ps());
	ASSERT_NE(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, NP, &c), 0);
	ASSERT_EQ(sum(p + 2 * ps(), ps()), s);

	/* PROT_NONE: neither. */
	ASSERT_EQ(mprotect(p, NP * ps(), PROT_NONE), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, NP, &c), -EFAULT);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, NP, &c), -EFAULT);
	ASSERT_EQ(mprotect(p, NP * ps(), PROT_READ), 0);
	ASSERT_EQ(sum(p + 2 * ps(), ps()), s);
	ASSERT_TRUE(check(p, 2, 1));

	/* Unmapped: neither, and a new mapping there is seen fresh. */
	ASSERT_EQ(munmap(p, NP * ps()), 0);
	unsigned char vec[NP];

	if (mincore(p, NP * ps(), vec) == 0) {
		/* A sanitizer's own mmap took the hole at once. */
		TH_LOG("hole reused by another mapping: unmapped checks skipped");
		ASSERT_EQ(uhmm_dmirror_close(dm), 0);
		return;
	}
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, NP, &c), -EFAULT);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, NP, &c), -EFAULT);
	char *q = mmap(p, NP * ps(), RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
		       -1, 0);

	if (q == p) {
		memset(buf, 0xee, NP * ps());
		ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, NP, &c), 0);
		for (unsigned long i = 0; i < NP * ps(); i++)
			ASSERT_EQ(buf[i], 0);	/* never the old pages' data */
		munmap(q, NP * ps());
	} else {
		TH_LOG("address reused meanwhile: fresh-mapping check skipped");
	}
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* The command's buffer is a process address like any other. */
TEST(device_respects_protection_of_ptr)
{
	struct uhmm_dmirror *dm = dopen_or_skip();
	struct uhmm_dmirror_cmd c;
	char *p = map_anon(NP * ps(), RW), *ro = map_anon(NP * ps(), RW);
	char *none = map_anon(NP * ps(), PROT_NONE);
	uint64_t s;

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(ro);
	ASSERT_NOT_NULL(none);
	fill(p, NP, 4);
	fill(ro, NP, 5);
	ASSERT_EQ(mprotect(ro, NP * ps(), PROT_READ), 0);
	s = sum(ro, NP * ps());
	/* READ stores into ptr: a read-only ptr is refused. */
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, ro, NP, &c), -EFAULT);
	ASSERT_EQ(sum(ro, NP * ps()), s);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, none, NP, &c), -EFAULT);
	/* WRITE loads from ptr: PROT_NONE is refused, p unchanged. */
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, none, NP, &c), -EFAULT);
	ASSERT_TRUE(check(p, NP, 4));
	/* A read-only ptr is fine for WRITE. */
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, ro, NP, &c), 0);
	ASSERT_TRUE(check(p, NP, 5));
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* ------------------------------------------------------------- races */

struct race {
	struct uhmm_dmirror *dm;
	char *p;		/* NP pages */
	char *buf;		/* the device's buffer */
	_Atomic int stop;
	_Atomic uint64_t gen;	/* see munmap race */
	long ok, refused, other, lastrc, stale;
	bool reused;		/* another mapping took the hole */
};

static void *writer(void *arg)
{
	struct race *r = arg;
	struct uhmm_dmirror_cmd c;

	for (uint32_t k = 10; !atomic_load(&r->stop); k++) {
		fill(r->buf, NP, k);
		int rc = dcmd(r->dm, UHMM_DMIRROR_WRITE, r->p, r->buf, NP, &c);

		if (rc == 0)
			r->ok++;
		else if (rc == -EPERM || rc == -EFAULT)
			r->refused++;
		else
			r->other++, r->lastrc = rc;
	}
	return NULL;
}

/* mprotect(PROT_READ) and PROT_NONE vs device WRITEs in a loop. */
TEST_TIMEOUT(mprotect_race_never_writes_read_only, 60)
{
	struct race r = { 0 };
	unsigned long len = NP * ps();
	long rounds = 0, changed = 0;
	pthread_t t;

	r.dm = dopen_or_skip();
	r.p = map_anon(len, RW);
	r.buf = map_anon(len, RW);
	ASSERT_NOT_NULL(r.p);
	ASSERT_NOT_NULL(r.buf);
	ASSERT_EQ(pthread_create(&t, NULL, writer, &r), 0);
	for (long stop = now_ms() + RUN_MS; now_ms() < stop; rounds++) {
		int prot = rounds & 1 ? PROT_NONE : PROT_READ;

		ASSERT_EQ(mprotect(r.p, len, prot), 0);
		if (prot == PROT_NONE) {
			usleep(100);
			ASSERT_EQ(mprotect(r.p, len, PROT_READ), 0);
		}
		uint64_t s = sum(r.p, len);

		for (int i = 0; i < 3; i++) {
			usleep(100);
			if (sum(r.p, len) != s)
				changed++;
		}
		ASSERT_EQ(mprotect(r.p, len, RW), 0);
		usleep(100);
	}
	atomic_store(&r.stop, 1);
	ASSERT_EQ(pthread_join(t, NULL), 0);
	TH_LOG("%ld rounds; writes %ld ok, %ld refused, %ld other (last %ld)",
	       rounds, r.ok, r.refused, r.other, r.lastrc);
	ASSERT_EQ(changed, 0);
	ASSERT_EQ(r.other, 0);
	ASSERT_EQ(uhmm_dmirror_close(r.dm), 0);
}

#define UNMAPPED (1ULL << 63)

static void *reader(void *arg)
{
	struct race *r = arg;
	struct uhmm_dmirror_cmd c;

	while (!atomic_load(&r->stop)) {
		uint64_t g0 = atomic_load(&r->gen);
		/* Oldest generation a READ starting now may see. */
		uint64_t min = g0 & UNMAPPED ? (g0 & ~UNMAPPED) + 1 : g0;
		int rc = dcmd(r->dm, UHMM_DMIRROR_READ, r->p, r->buf, 1, &c);

		if (rc == -EFAULT) {
			r->refused++;
			continue;
		}
		if (rc) {
			r->other++, r->lastrc = rc;
			continue;
		}
		r->ok++;
		const uint64_t *w = (const uint64_t *)r->buf;

		for (unsigned long i = 0; i < ps() / 8; i++) {
			if (w[i] && w[i] < min) {
				r->stale++;	/* data of a page already unmapped */
				break;
			}
		}
	}
	return NULL;
}

/*
 * munmap, then a new page at the same address: a device READ that starts
 * after the munmap returned never returns the old page's data.
 */
TEST_TIMEOUT(munmap_race_never_reads_old_data, 60)
{
	struct race r = { 0 };
	long gens = 0;
	pthread_t t;
	char *hole;

	r.dm = dopen_or_skip();
	r.buf = map_anon(ps(), RW);
	hole = map_anon(3 * ps(), PROT_NONE);	/* a guarded slot */
	ASSERT_NOT_NULL(r.buf);
	ASSERT_NOT_NULL(hole);
	r.p = hole + ps();
	ASSERT_EQ(munmap(r.p, ps()), 0);
	atomic_store(&r.gen, 0 | UNMAPPED);
	ASSERT_EQ(pthread_create(&t, NULL, reader, &r), 0);
	for (long stop = now_ms() + RUN_MS; now_ms() < stop;) {
		uint64_t g = (uint64_t)++gens;
		char *q = mmap(r.p, ps(), RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
			       -1, 0);

		if (q == MAP_FAILED && errno == EEXIST) {
			/* A sanitizer's own mmap took the hole: what the
			 * device reads there is not ours to check. */
			r.reused = true;
			break;
		}
		ASSERT_EQ(q, r.p);
		for (unsigned long i = 0; i < ps() / 8; i++)
			((uint64_t *)q)[i] = g;
		atomic_store(&r.gen, g);
		usleep(200);
		ASSERT_EQ(munmap(q, ps()), 0);
		atomic_store(&r.gen, g | UNMAPPED);
		usleep(100);
	}
	atomic_store(&r.stop, 1);
	ASSERT_EQ(pthread_join(t, NULL), 0);
	TH_LOG("%ld generations; reads %ld ok, %ld -EFAULT, %ld other (last %ld)%s",
	       gens, r.ok, r.refused, r.other, r.lastrc,
	       r.reused ? "; hole reused by another mapping: stopped" : "");
	if (!r.reused)
		ASSERT_EQ(r.stale, 0);
	ASSERT_EQ(r.other, 0);
	ASSERT_EQ(uhmm_dmirror_close(r.dm), 0);
}

/*
 * The mapping replaced (MAP_FIXED, an unmap for the kernel: UNMAP
 * invalidation) by PROT_NONE and back while the device writes: errors,
 * never a signal. The slot never becomes a hole, so no other mapping can
 * land where the device writes.
 */
TEST_TIMEOUT(unmap_race_write_no_signal, 60)
{
	struct race r = { 0 };
	long gens = 0;
	pthread_t t;
	char *hole;

	r.dm = dopen_or_skip();
	r.buf = map_anon(NP * ps(), RW);
	hole = map_anon((NP + 2) * ps(), PROT_NONE);
	ASSERT_NOT_NULL(r.buf);
	ASSERT_NOT_NULL(hole);
	r.p = hole + ps();
	ASSERT_EQ(pthread_create(&t, NULL, writer, &r), 0);
	for (long stop = now_ms() + RUN_MS; now_ms() < stop; gens++) {
		ASSERT_EQ(mmap(r.p, NP * ps(), RW,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0),
			  (void *)r.p);
		usleep(200);
		ASSERT_EQ(mmap(r.p, NP * ps(), PROT_NONE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0),
			  (void *)r.p);
		usleep(200);
	}
	atomic_store(&r.stop, 1);
	ASSERT_EQ(pthread_join(t, NULL), 0);
	TH_LOG("%ld generations; writes %ld ok, %ld refused, %ld other (last %ld)",
	       gens, r.ok, r.refused, r.other, r.lastrc);
	ASSERT_EQ(r.other, 0);
	ASSERT_EQ(uhmm_dmirror_close(r.dm), 0);
}

/* ------------------------------------------------ UFFD_USER_MODE_ONLY */

/*
 * What an unprivileged user gets with vm.unprivileged_userfaultfd=0: a
 * userfaultfd that only serves faults from user mode. Forced here by
 * making the first two opens (/dev/userfaultfd, userfaultfd(2)) fail with
 * EPERM, as they do for such a user. A device page touched by the kernel
 * inside read(2)/write(2) then makes the call fail with EFAULT instead of
 * migrating the page back; the data stay on the device and a CPU access
 * brings them back intact.
 */
TEST(user_mode_only_syscall_on_device_page_efault)
{
	struct uhmm_features f = { .size = sizeof(f) };
	struct uhmm_dmirror *dm = NULL;
	struct uhmm_dmirror_cmd c;
	char *p = map_anon(2 * ps(), RW), *mirror = map_anon(2 * ps(), RW);
	int pfd[2];

	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(mirror);
	uhmm__fault_inject_n(OS_CALL_UFFD_OPEN, 1, 2, EPERM);
	int r = uhmm_init();

	uhmm__fault_inject(OS_CALL_UFFD_OPEN, 0, 0);
	if (r == -ENOSYS)
		SKIP("kernel without PROCMAP_QUERY/PAGEMAP_SCAN");
	ASSERT_EQ(r, 0);
	ASSERT_EQ(uhmm_features(&f), 0);
	if (f.uffd_path != UHMM_UFFD_SYSCALL_USER_ONLY)
		SKIP("userfaultfd(UFFD_USER_MODE_ONLY) not available (path %u, error %d)",
		     f.uffd_path, f.uffd_error);
	if (!(f.flags & UHMM_FEAT_MOVE))
		SKIP("no UFFDIO_MOVE: no device memory");
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	fill(p, 2, 7);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, 2, &c), 0);
	ASSERT_EQ(c.cpages, 2ULL);

	ASSERT_EQ(pipe(pfd), 0);
	/* write(2) from a device page: the kernel's read of it faults. */
	errno = 0;
	ASSERT_EQ(write(pfd[1], p, 64), -1);
	ASSERT_EQ(errno, EFAULT);
	/* read(2) into a device page: the kernel's store faults. */
	ASSERT_EQ(write(pfd[1], "abcdefgh", 8), 8);
	errno = 0;
	ASSERT_EQ(read(pfd[0], p + ps(), 8), -1);
	ASSERT_EQ(errno, EFAULT);
	/* Nothing was lost: the CPU brings both pages back intact. */
	ASSERT_TRUE(check(p, 2, 7));
	/* Home again: system calls work on the pages. */
	ASSERT_EQ(read(pfd[0], p + ps(), 8), 8);
	ASSERT_EQ(memcmp(p + ps(), "abcdefgh", 8), 0);
	ASSERT_EQ(write(pfd[1], p, 64), 64);
	close(pfd[0]);
	close(pfd[1]);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}

/* The same calls with the privileged path work (docs/semantics.md M1). */
TEST(privileged_syscall_on_device_page_migrates_back)
{
	struct uhmm_features f = { .size = sizeof(f) };
	struct uhmm_dmirror *dm = dopen_or_skip();
	struct uhmm_dmirror_cmd c;
	char *p = map_anon(ps(), RW), *mirror = map_anon(ps(), RW);
	char tmp[64];
	int pfd[2];

	ASSERT_EQ(uhmm_features(&f), 0);
	if (f.uffd_path == UHMM_UFFD_SYSCALL_USER_ONLY || f.uffd_path == UHMM_UFFD_NONE)
		SKIP("userfaultfd path %u: kernel accesses to device pages fail (EFAULT)",
		     f.uffd_path);
	fill(p, 1, 8);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, 1, &c), 0);
	ASSERT_EQ(pipe(pfd), 0);
	ASSERT_EQ(write(pfd[1], p, sizeof(tmp)), (ssize_t)sizeof(tmp));
	ASSERT_EQ(read(pfd[0], tmp, sizeof(tmp)), (ssize_t)sizeof(tmp));
	ASSERT_EQ(memcmp(tmp, p, sizeof(tmp)), 0);
	ASSERT_TRUE(check(p, 1, 8));
	close(pfd[0]);
	close(pfd[1]);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
}
