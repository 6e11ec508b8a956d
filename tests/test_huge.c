/* SPDX-License-Identifier: MIT */
/*
 * Huge pages: transparent huge pages and hugetlbfs, through
 * uhmm_range_fault() (the order field) and dmirror (SNAPSHOT's PMD bit,
 * READ and WRITE across a huge page). Skipped, with the reason, where the
 * kernel gives no huge page.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uhmm/dmirror.h>
#include <uhmm/uhmm.h>

#include "harness.h"
#include "util.h"

#ifndef MAP_HUGETLB
#define MAP_HUGETLB 0x40000
#endif

#define HUGE (2UL << 20)

static unsigned int pmd_order(void)
{
	return (unsigned int)(__builtin_ctzl(HUGE) - __builtin_ctzl(ps()));
}

/* @len bytes of anonymous memory aligned to @align. */
static void *map_aligned(unsigned long len, unsigned long align)
{
	char *p = mmap(NULL, len + align, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	unsigned long a = ((unsigned long)p + align - 1) & ~(align - 1);
	if (a > (unsigned long)p)
		munmap(p, a - (unsigned long)p);
	unsigned long tail = (unsigned long)p + len + align - (a + len);
	if (tail)
		munmap((char *)(a + len), tail);
	return (void *)a;
}

static int read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY);

	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	return 0;
}

static bool thp_never(void)
{
	char buf[256];

	if (read_file("/sys/kernel/mm/transparent_hugepage/enabled", buf, sizeof(buf)))
		return true;
	return strstr(buf, "[never]") != NULL;
}

/* AnonHugePages (kB) of the VMA containing @addr, from /proc/self/smaps. */
static long anon_huge_kb(const void *addr)
{
	char line[512];
	long kb = -1;

	if (smaps_line(addr, "AnonHugePages:", line, sizeof(line)))
		sscanf(line, "AnonHugePages: %ld kB", &kb);
	return kb;
}

static int noop_calls;

static bool noop_invalidate(struct uhmm_interval_notifier *sub,
			    const struct uhmm_notifier_range *range,
			    unsigned long cur_seq)
{
	(void)range;
	uhmm_interval_set_seq(sub, cur_seq);
	__atomic_add_fetch(&noop_calls, 1, __ATOMIC_RELAXED);
	return true;
}

static const struct uhmm_interval_notifier_ops noop_ops = {
	.invalidate = noop_invalidate,
};

static int rf(struct uhmm_interval_notifier *sub, unsigned long start,
	      unsigned long end, uint64_t *pfns, uint64_t dflags)
{
	struct uhmm_range r = {
		.notifier = sub,
		.start = start,
		.end = end,
		.hmm_pfns = pfns,
		.default_flags = dflags,
	};
	int rc = -EBUSY;

	for (int i = 0; i < 1000 && rc == -EBUSY; i++) {
		r.notifier_seq = uhmm_interval_read_begin(sub);
		rc = uhmm_range_fault(&r);
	}
	return rc;
}

/* Every page of [p, p+HUGE) reported VALID|WRITE, order 9, its frame. */
static int check_huge_pfns(const char *p, const uint64_t *pfns)
{
	unsigned long n = HUGE / ps();

	for (unsigned long i = 0; i < n; i++) {
		uint64_t v = pfns[i];
		if ((v & (UHMM_PFN_VALID | UHMM_PFN_WRITE | UHMM_PFN_ERROR |
			  UHMM_PFN_ZERO)) != (UHMM_PFN_VALID | UHMM_PFN_WRITE))
			return 1000 + (int)i;
		if (uhmm_pfn_to_map_order(v) != pmd_order())
			return 2000 + (int)i;
		if (uhmm_pfn_to_addr(v) != p + i * ps())
			return 3000 + (int)i;
	}
	return 0;
}

/* A touched THP at a 2 MiB aligned address, or a reason to skip. */
static char *thp_region(const char **why)
{
	if (thp_never()) {
		*why = "transparent huge pages are disabled ([never])";
		return NULL;
	}
	char *p = map_aligned(HUGE, HUGE);
	if (!p) {
		*why = "mmap failed";
		return NULL;
	}
	if (madvise(p, HUGE, MADV_HUGEPAGE)) {
		*why = "MADV_HUGEPAGE refused";
		munmap(p, HUGE);
		return NULL;
	}
	memset(p, 0x3c, HUGE);
	if (anon_huge_kb(p) < (long)(HUGE >> 10)) {
		*why = "the kernel gave no huge page (AnonHugePages 0)";
		munmap(p, HUGE);
		return NULL;
	}
	return p;
}

TEST(thp_range_fault_order)
{
	const char *why = NULL;
	char *p = thp_region(&why);
	struct uhmm_interval_notifier *sub;
	unsigned long n = HUGE / ps();
	uint64_t *pfns = calloc(n, sizeof(*pfns));

	if (!p)
		SKIP("%s", why);
	ASSERT_NOT_NULL(pfns);
	unsigned long a = (unsigned long)p;
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, a, HUGE, &noop_ops, NULL), 0);
	ASSERT_EQ(rf(sub, a, a + HUGE, pfns, 0), 0);
	ASSERT_EQ(check_huge_pfns(p, pfns), 0);
	memset(pfns, 0, n * sizeof(*pfns));
	ASSERT_EQ(rf(sub, a, a + HUGE, pfns, FAULT_W), 0);
	ASSERT_EQ(check_huge_pfns(p, pfns), 0);
	/* A part of the huge page reports the mapping's order too. */
	uint64_t part[8] = { 0 };
	ASSERT_EQ(rf(sub, a + 100 * ps(), a + 108 * ps(), part, UHMM_PFN_REQ_FAULT), 0);
	for (int i = 0; i < 8; i++) {
		ASSERT_EQ(uhmm_pfn_to_map_order(part[i]), pmd_order());
		ASSERT_TRUE(uhmm_pfn_to_addr(part[i]) == p + (100 + (unsigned long)i) * ps());
	}
	/* The walk did not split it. */
	ASSERT_EQ(anon_huge_kb(p), (long)(HUGE >> 10));
	ASSERT_EQ(uhmm_interval_notifier_remove(sub), 0);
	free(pfns);
	munmap(p, HUGE);
}

TEST(thp_fault_write_untouched)
{
	struct uhmm_interval_notifier *sub;
	unsigned long n = HUGE / ps();
	uint64_t *pfns = calloc(n, sizeof(*pfns));

	if (thp_never())
		SKIP("transparent huge pages are disabled ([never])");
	char *p = map_aligned(HUGE, HUGE);
	ASSERT_NOT_NULL(p);
	ASSERT_NOT_NULL(pfns);
	ASSERT_EQ(madvise(p, HUGE, MADV_HUGEPAGE), 0);
	unsigned long a = (unsigned long)p;
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, a, HUGE, &noop_ops, NULL), 0);
	ASSERT_EQ(rf(sub, a, a + HUGE, pfns, 0), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(pfns[i], 0ULL);
	ASSERT_EQ(rf(sub, a, a + HUGE, pfns, FAULT_W), 0);
	if (anon_huge_kb(p) < (long)(HUGE >> 10))
		SKIP("the kernel gave no huge page on a write fault");
	ASSERT_EQ(check_huge_pfns(p, pfns), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(sub), 0);
	free(pfns);
	munmap(p, HUGE);
}

TEST(thp_dmirror_snapshot_read_write)
{
	const char *why = NULL;
	char *p = thp_region(&why);
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = HUGE / ps();

	if (!p)
		SKIP("%s", why);
	unsigned char *snap = malloc(n);
	char *buf = mmap(NULL, HUGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NOT_NULL(snap);
	ASSERT_TRUE(buf != MAP_FAILED);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, p, snap, n, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)n);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(snap[i], UHMM_DMIRROR_PROT_WRITE | UHMM_DMIRROR_PROT_PMD);

	fill_bytes(buf, HUGE, 31);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, n, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)n);
	ASSERT_GE(c.faults, 1ULL);
	ASSERT_TRUE(check_bytes(p, HUGE, 31));
	fill_bytes(p, HUGE, 32);
	memset(buf, 0, HUGE);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)n);
	ASSERT_EQ(c.faults, 0ULL);
	ASSERT_TRUE(check_bytes(buf, HUGE, 32));
	/* Still one huge page. */
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, p, snap, n, &c), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(snap[i], UHMM_DMIRROR_PROT_WRITE | UHMM_DMIRROR_PROT_PMD);
	/* Read-only after mprotect: 0x05. */
	ASSERT_EQ(mprotect(p, HUGE, PROT_READ), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, p, snap, n, &c), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(snap[i], UHMM_DMIRROR_PROT_READ | UHMM_DMIRROR_PROT_PMD);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, n, &c), -EPERM);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	free(snap);
	munmap(buf, HUGE);
	munmap(p, HUGE);
}

/*
 * The huge zero page, set up as hmm-tests migrate_anon_huge_zero does (a
 * PROT_READ mapping, MADV_HUGEPAGE, one read). The kernel's dmirror says
 * READ | PMD for it, without ZERO: dmirror_mkentry() tests is_zero_pfn(),
 * which is the 4 KiB zero page only (hmm2 snapshot's ZERO | READ is
 * test_dmirror_migrate's hmm2_snapshot).
 */
TEST(thp_huge_zero_page_snapshot)
{
	char buf[64];
	unsigned long n = HUGE / ps();
	char *raw, *p;
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned char *snap = malloc(n);

	ASSERT_NOT_NULL(snap);
	if (thp_never())
		SKIP("transparent huge pages are disabled");
	if (read_file("/sys/kernel/mm/transparent_hugepage/use_zero_page", buf,
		      sizeof(buf)) || buf[0] != '1')
		SKIP("the huge zero page is disabled (use_zero_page)");
	raw = mmap(NULL, 2 * HUGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_TRUE(raw != MAP_FAILED);
	p = (char *)(((unsigned long)raw + HUGE - 1) & ~(HUGE - 1));
	ASSERT_EQ(madvise(p, HUGE, MADV_HUGEPAGE), 0);
	ASSERT_EQ(*(volatile int *)p, 0);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, p, snap, n, &c), 0);
	ASSERT_EQ(c.cpages, (uint64_t)n);
	TH_LOG("page 0: 0x%02x, page %lu: 0x%02x", snap[0], n - 1, snap[n - 1]);
	if (snap[0] == (UHMM_DMIRROR_PROT_ZERO | UHMM_DMIRROR_PROT_READ))
		SKIP("no huge zero page here: the read mapped 4 KiB zero pages");
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(snap[i], UHMM_DMIRROR_PROT_READ | UHMM_DMIRROR_PROT_PMD);
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	free(snap);
	munmap(raw, 2 * HUGE);
}

/* ------------------------------------------------------------------ */
/* hugetlbfs                                                            */
/* ------------------------------------------------------------------ */

static long meminfo(const char *key)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[256];
	long v = -1;
	size_t kl = strlen(key);

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, kl) && line[kl] == ':') {
			v = strtol(line + kl + 1, NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

static long read_nr_hugepages(void)
{
	char buf[64];

	if (read_file("/proc/sys/vm/nr_hugepages", buf, sizeof(buf)))
		return -1;
	return strtol(buf, NULL, 10);
}

static int write_nr_hugepages(long v)
{
	char buf[32];
	int fd = open("/proc/sys/vm/nr_hugepages", O_WRONLY);

	if (fd < 0)
		return -1;
	int n = snprintf(buf, sizeof(buf), "%ld\n", v);
	ssize_t w = write(fd, buf, (size_t)n);
	close(fd);
	return w == n ? 0 : -1;
}

/*
 * Run @fn in a child with at least @need free 2 MiB hugetlb pages,
 * reserving some (root only, when none are configured) and restoring the
 * setting afterwards whatever the child did. Returns the child's exit
 * status, 77 with *why set when there are no pages to be had.
 */
static int with_hugetlb(void (*fn)(void), long need, const char **why)
{
	long saved = -1;

	if (meminfo("Hugepagesize") != 2048) {
		*why = "the default huge page size is not 2 MiB";
		return 77;
	}
	if (meminfo("HugePages_Free") < need) {
		long nr = read_nr_hugepages();
		if (geteuid() != 0 || nr != 0) {
			*why = "no free hugetlbfs pages (and not root with nr_hugepages 0)";
			return 77;
		}
		saved = nr;
		if (write_nr_hugepages(need + 2) || meminfo("HugePages_Free") < need) {
			write_nr_hugepages(saved);
			*why = "the kernel could not reserve hugetlbfs pages";
			return 77;
		}
	}
	pid_t pid = fork();
	int st = -1;
	if (pid == 0) {
		fn();
		_exit(0);
	}
	if (pid > 0 && waitpid(pid, &st, 0) == pid)
		st = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	if (saved >= 0)
		write_nr_hugepages(saved);
	if (st == 77)
		*why = "skipped in the child";
	return st;
}

static char *map_hugetlb(int shared)
{
	char *p = mmap(NULL, HUGE, RW,
		       (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS | MAP_HUGETLB,
		       -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

static void hugetlb_range_fault_body(void)
{
	struct uhmm_interval_notifier *sub;
	unsigned long n = HUGE / ps();
	uint64_t *pfns = calloc(n, sizeof(*pfns));
	char *p = map_hugetlb(0);

	if (!p)
		SKIP("mmap(MAP_HUGETLB) failed: %s", strerror(errno));
	ASSERT_NOT_NULL(pfns);
	unsigned long a = (unsigned long)p;
	ASSERT_EQ(a & (HUGE - 1), 0UL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, a, HUGE, &noop_ops, NULL), 0);
	/* Untouched: not present, nothing faulted. */
	ASSERT_EQ(rf(sub, a, a + HUGE, pfns, 0), 0);
	for (unsigned long i = 0; i < n; i++)
		ASSERT_EQ(pfns[i], 0ULL);
	p[0] = 1;
	ASSERT_EQ(rf(sub, a, a + HUGE, pfns, 0), 0);
	ASSERT_EQ(check_huge_pfns(p, pfns), 0);
	ASSERT_EQ(rf(sub, a, a + HUGE, pfns, FAULT_W), 0);
	ASSERT_EQ(check_huge_pfns(p, pfns), 0);
	/* Unmapping it raises an invalidation. */
	require_uffd(false);
	ASSERT_EQ(munmap(p, HUGE), 0);
	for (int i = 0; i < 5000 && !__atomic_load_n(&noop_calls, __ATOMIC_RELAXED); i++)
		usleep(1000);
	ASSERT_GT(__atomic_load_n(&noop_calls, __ATOMIC_RELAXED), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(sub), 0);
	free(pfns);
}

TEST(hugetlb_range_fault_order)
{
	const char *why = "";
	int st = with_hugetlb(hugetlb_range_fault_body, 1, &why);

	if (st == 77)
		SKIP("%s", why);
	ASSERT_EQ(st, 0);
}

static void hugetlb_fault_untouched_body(void)
{
	struct uhmm_interval_notifier *sub;
	unsigned long n = HUGE / ps();
	uint64_t *pfns = calloc(n, sizeof(*pfns));
	char *p = map_hugetlb(0);

	if (!p)
		SKIP("mmap(MAP_HUGETLB) failed: %s", strerror(errno));
	ASSERT_NOT_NULL(pfns);
	unsigned long a = (unsigned long)p;
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, a, HUGE, &noop_ops, NULL), 0);
	/* A read fault of a part: the whole huge page comes in. */
	ASSERT_EQ(rf(sub, a + 8 * ps(), a + 16 * ps(), pfns, UHMM_PFN_REQ_FAULT), 0);
	for (int i = 0; i < 8; i++) {
		ASSERT_TRUE(pfns[i] & UHMM_PFN_VALID);
		ASSERT_EQ(uhmm_pfn_to_map_order(pfns[i]), pmd_order());
	}
	ASSERT_EQ(rf(sub, a, a + HUGE, pfns, FAULT_W), 0);
	ASSERT_EQ(check_huge_pfns(p, pfns), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(sub), 0);
	munmap(p, HUGE);
	free(pfns);
}

TEST(hugetlb_fault_untouched)
{
	const char *why = "";
	int st = with_hugetlb(hugetlb_fault_untouched_body, 1, &why);

	if (st == 77)
		SKIP("%s", why);
	ASSERT_EQ(st, 0);
}

static void hugetlb_dmirror_body(void)
{
	struct uhmm_dmirror *dm;
	struct uhmm_dmirror_cmd c;
	unsigned long n = HUGE / ps();
	unsigned char *snap = malloc(n);
	char *buf = mmap(NULL, HUGE, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ASSERT_NOT_NULL(snap);
	ASSERT_TRUE(buf != MAP_FAILED);
	ASSERT_EQ(uhmm_dmirror_open(0, &dm), 0);
	for (int shared = 0; shared <= 1; shared++) {
		char *p = map_hugetlb(shared);
		if (!p)
			SKIP("mmap(MAP_HUGETLB) failed: %s", strerror(errno));
		TH_LOG("%s", shared ? "MAP_SHARED" : "MAP_PRIVATE");
		ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, p, snap, n, &c), 0);
		for (unsigned long i = 0; i < n; i++)
			ASSERT_EQ(snap[i], UHMM_DMIRROR_PROT_NONE);
		memset(p, 0x11, HUGE);
		ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, p, snap, n, &c), 0);
		ASSERT_EQ(c.cpages, (uint64_t)n);
		for (unsigned long i = 0; i < n; i++)
			ASSERT_EQ(snap[i], UHMM_DMIRROR_PROT_WRITE | UHMM_DMIRROR_PROT_PMD);
		fill_bytes(buf, HUGE, 40 + (uint32_t)shared);
		ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_WRITE, p, buf, n, &c), 0);
		ASSERT_EQ(c.cpages, (uint64_t)n);
		ASSERT_TRUE(check_bytes(p, HUGE, 40 + (uint32_t)shared));
		memset(buf, 0, HUGE);
		ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), 0);
		ASSERT_EQ(c.faults, 0ULL);
		ASSERT_TRUE(check_bytes(buf, HUGE, 40 + (uint32_t)shared));
		ASSERT_EQ(munmap(p, HUGE), 0);
		ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_READ, p, buf, n, &c), -EFAULT);
	}
	ASSERT_EQ(uhmm_dmirror_close(dm), 0);
	munmap(buf, HUGE);
	free(snap);
}

TEST(hugetlb_dmirror_snapshot_read_write)
{
	const char *why = "";
	int st = with_hugetlb(hugetlb_dmirror_body, 2, &why);

	if (st == 77)
		SKIP("%s", why);
	ASSERT_EQ(st, 0);
}
