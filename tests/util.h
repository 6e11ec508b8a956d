/* SPDX-License-Identifier: MIT */
/*
 * Small helpers several test binaries share. Include it after harness.h;
 * each tests/test_*.c is a binary of its own, so the definitions here are
 * static, and TH_UNUSED keeps a binary that does not use one quiet.
 *
 * Knobs a test file may set before including it:
 *   UNDER_ASAN            its own definition, e.g. (UTIL_ASAN ||
 *                         UTIL_TSAN) as test_race.c has it; by default
 *                         UTIL_ASAN: 1 under AddressSanitizer only.
 *   UTIL_DCMD_SENTINEL    what dcmd() stores in the reply fields cpages and
 *                         faults before the command (default 0, as the
 *                         memset leaves them); test_dmirror.c sets
 *                         0xdeadbeef to see the command write them.
 */
#ifndef UHMM_TESTS_UTIL_H
#define UHMM_TESTS_UTIL_H

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <uhmm/dmirror.h>
#include <uhmm/uhmm.h>

/*
 * Under AddressSanitizer the sanitizer's own mmaps (stack depot, allocator
 * regions), made on behalf of any malloc, can land in an application's
 * hole; uhmm cannot steer them, so hole checks only log there. UTIL_ASAN
 * and UTIL_TSAN say which sanitizer this binary runs under (0 or 1).
 */
#if defined(__SANITIZE_ADDRESS__)
#define UTIL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UTIL_ASAN 1
#endif
#endif
#ifndef UTIL_ASAN
#define UTIL_ASAN 0
#endif

#if defined(__SANITIZE_THREAD__)
#define UTIL_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UTIL_TSAN 1
#endif
#endif
#ifndef UTIL_TSAN
#define UTIL_TSAN 0
#endif

#ifndef UNDER_ASAN
#define UNDER_ASAN UTIL_ASAN
#endif

#define RW (PROT_READ | PROT_WRITE)
#define FAULT_R UHMM_PFN_REQ_FAULT
#define FAULT_W (UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE)

TH_UNUSED static unsigned long ps(void)
{
	return (unsigned long)sysconf(_SC_PAGESIZE);
}

TH_UNUSED static long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* Private anonymous memory, never THP-backed; NULL on failure. */
TH_UNUSED static void *map_anon(unsigned long len, int prot)
{
	void *p = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	madvise(p, len, MADV_NOHUGEPAGE);
	return p;
}

/* /proc/self/pagemap present bit (63) of the page at @addr; -1 on error. */
TH_UNUSED static int page_present(const void *addr)
{
	uint64_t e = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY);

	if (fd < 0)
		return -1;
	off_t off = (off_t)(((unsigned long)addr / ps()) * sizeof(e));
	ssize_t n = pread(fd, &e, sizeof(e), off);
	close(fd);
	if (n != (ssize_t)sizeof(e))
		return -1;
	return (int)((e >> 63) & 1);
}

/*
 * The line starting with @key of the VMA around @addr in
 * /proc/self/smaps, into @out; false if there is none.
 */
TH_UNUSED static bool smaps_line(const void *addr, const char *key,
				 char *out, size_t size)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	bool in = false, found = false;

	if (!f)
		return false;
	while (!found && fgets(out, (int)size, f)) {
		unsigned long lo, hi;
		char c;

		if (sscanf(out, "%lx-%lx %c", &lo, &hi, &c) == 3)
			in = (uintptr_t)addr >= lo && (uintptr_t)addr < hi;
		else
			found = in && !strncmp(out, key, strlen(key));
	}
	fclose(f);
	return found;
}

/*
 * Is the VMA around @addr registered on a userfaultfd for missing pages
 * ("um" in its VmFlags)? 1, 0, or -1 (no such VMA).
 */
TH_UNUSED static int vma_registered_missing(const void *addr)
{
	char line[512];

	if (!smaps_line(addr, "VmFlags:", line, sizeof(line)))
		return -1;
	return strstr(line, " um") != NULL;
}

/* An unlinked temporary file of @size bytes; its fd, or -1. */
TH_UNUSED static int make_tmp_file(unsigned long size)
{
	char path[] = "/tmp/uhmm-test-XXXXXX";
	int fd = mkstemp(path);

	if (fd < 0)
		return -1;
	unlink(path);
	if (ftruncate(fd, (off_t)size) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * Skips the test when the runtime has no userfaultfd: no UNMAP/REMOVE/
 * REMAP events (only uhmm_range_revalidate() sees changes) and no device
 * memory. That is so under valgrind (uhmm opens none there, it would
 * deadlock: docs/semantics.md), under a seccomp filter that blocks
 * userfaultfd, or with no access to it at all. @move: device memory and
 * migration are needed too (UFFDIO_MOVE).
 */
TH_UNUSED static void require_uffd(bool move)
{
	struct uhmm_features f = { .size = sizeof(f) };

	if (uhmm_features(&f) != 0)
		return;		/* the test's own checks say why */
	if (f.uffd_path == UHMM_UFFD_NONE)
		SKIP("no userfaultfd%s (error %d): no events, no device memory",
		     f.uffd_error == -EDEADLK ? " under valgrind" : "",
		     f.uffd_error);
	if (move && !(f.flags & UHMM_FEAT_MOVE))
		SKIP("no UFFDIO_MOVE: no device memory");
}

/*
 * Skips the test when the kernel's own faults on device pages and on
 * ranges registered for migration cannot be served: a userfaultfd opened
 * with UFFD_USER_MODE_ONLY (an unprivileged user with
 * vm.unprivileged_userfaultfd=0) makes read(2) into such a page, write(2)
 * from it and MADV_POPULATE_* (range_fault with REQ_FAULT) fail with
 * EFAULT (docs/semantics.md).
 */
TH_UNUSED static bool kernel_faults_served(void)
{
	struct uhmm_features f = { .size = sizeof(f) };

	return !(uhmm_features(&f) == 0 && f.uffd_path == UHMM_UFFD_SYSCALL_USER_ONLY);
}

TH_UNUSED static void require_kernel_faults(void)
{
	require_uffd(true);
	if (!kernel_faults_served())
		SKIP("userfaultfd in UFFD_USER_MODE_ONLY (unprivileged): kernel-mode faults on device pages fail with EFAULT");
}

/*
 * An address with nothing mapped at it that nothing is likely to map
 * meanwhile: far below a fresh mapping (mmap allocates top-down), or far
 * above it (valgrind maps bottom-up), checked with mincore(). A hole left
 * by munmap() is not enough under ASan, whose own mmaps can land in it.
 * NULL if none was found.
 */
TH_UNUSED static void *unmapped_page(void)
{
	unsigned char v;
	char *q = mmap(NULL, ps(), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (q == MAP_FAILED)
		return NULL;
	munmap(q, ps());
	for (unsigned long off = 64UL << 30; off <= 1024UL << 30; off += 64UL << 30) {
		if ((uintptr_t)q > off + (1UL << 32) &&
		    mincore(q - off, ps(), &v) == -1 && errno == ENOMEM)
			return q - off;
		if ((uintptr_t)q + off < (1UL << 46) &&
		    mincore(q + off, ps(), &v) == -1 && errno == ENOMEM)
			return q + off;
	}
	return NULL;
}

#ifndef UTIL_DCMD_SENTINEL
#define UTIL_DCMD_SENTINEL 0
#endif

/* One dmirror command on [addr, addr + npages pages) with buffer @ptr. */
TH_UNUSED static int dcmd(struct uhmm_dmirror *dm, enum uhmm_dmirror_op op,
			  const void *addr, void *ptr, unsigned long npages,
			  struct uhmm_dmirror_cmd *c)
{
	memset(c, 0, sizeof(*c));
	c->addr = (uint64_t)(uintptr_t)addr;
	c->ptr = (uint64_t)(uintptr_t)ptr;
	c->npages = npages;
	c->cpages = UTIL_DCMD_SENTINEL;
	c->faults = UTIL_DCMD_SENTINEL;
	return uhmm_dmirror_cmd(dm, op, c);
}

/* Distinct per seed, per page, per word: any misplaced word shows. */
TH_UNUSED static void fill_bytes(void *buf, unsigned long len, uint32_t seed)
{
	uint32_t *w = buf;

	for (unsigned long i = 0; i < len / sizeof(*w); i++)
		w[i] = seed * 0x01000193u + (uint32_t)i;
}

/* Does [buf, buf + len) hold what fill_bytes() with @seed wrote there,
 * @buf being its word @first on? */
TH_UNUSED static bool check_words(const void *buf, unsigned long len,
				  uint32_t seed, unsigned long first)
{
	const uint32_t *w = buf;

	for (unsigned long i = 0; i < len / sizeof(*w); i++)
		if (w[i] != seed * 0x01000193u + (uint32_t)(first + i))
			return false;
	return true;
}

/* Does [buf, buf + len) hold what fill_bytes(buf, len, seed) wrote? */
TH_UNUSED static bool check_bytes(const void *buf, unsigned long len,
				  uint32_t seed)
{
	return check_words(buf, len, seed, 0);
}

/* fill_bytes() and check_bytes() over @npages pages. */
TH_UNUSED static void fill(void *buf, unsigned long npages, uint32_t seed)
{
	fill_bytes(buf, npages * ps(), seed);
}

TH_UNUSED static bool check(const void *buf, unsigned long npages,
			    uint32_t seed)
{
	return check_bytes(buf, npages * ps(), seed);
}

/*
 * The kernel's hmm2 snapshot set-up (hmm-tests.c, "snapshot") on 7 pages
 * at @p: page 1 unmapped, page 2 the read-only zero page, page 3
 * read-only with data, pages 4-6 read-write with data in page 4; pages 5
 * and 6 are the caller's to migrate. Returns the value written, or -1.
 */
TH_UNUSED static int hmm2_snapshot_layout(char *p)
{
	int val;

	if (munmap(p + ps(), ps()) ||
	    mprotect(p + 2 * ps(), ps(), PROT_READ))
		return -1;
	val = *(volatile int *)(p + 2 * ps()) + 3;
	if (mprotect(p + 3 * ps(), ps(), RW))
		return -1;
	*(int *)(p + 3 * ps()) = val;
	if (mprotect(p + 3 * ps(), ps(), PROT_READ) ||
	    mprotect(p + 4 * ps(), 3 * ps(), RW))
		return -1;
	*(int *)(p + 4 * ps()) = val;
	return val;
}

#endif /* UHMM_TESTS_UTIL_H */
