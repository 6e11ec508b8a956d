/* SPDX-License-Identifier: MIT */
/*
 * Device-coherent memory: dmirror devices 2 and 3 (the kernel's
 * hmm_device_coherent variant of hmm-tests). A page migrated there is a
 * frame of the device's pool mapped at the application's address: the
 * CPU reads and writes it in place (no fault-back), SNAPSHOT says
 * DEV_COHERENT_LOCAL/REMOTE, MIGRATE_TO_SYS and RELEASE bring it back.
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
#include <uhmm/migrate.h>
#include <uhmm/uhmm.h>

#include "harness.h"
#include "util.h"

#define COH_LOCAL_W (UHMM_DMIRROR_PROT_DEV_COHERENT_LOCAL | UHMM_DMIRROR_PROT_WRITE)
#define COH_REMOTE_W (UHMM_DMIRROR_PROT_DEV_COHERENT_REMOTE | UHMM_DMIRROR_PROT_WRITE)

static struct uhmm_dmirror *dopen(int dev)
{
	struct uhmm_dmirror *dm = NULL;

	require_uffd(true);
	ASSERT_EQ(uhmm_dmirror_open(dev, &dm), 0);
	return dm;
}

static void fill_ints(void *p, unsigned long npages, int base)
{
	int *w = p;

	for (unsigned long i = 0; i < npages * ps() / sizeof(int); i++)
		w[i] = (int)i + base;
}

static bool check_ints(const void *p, unsigned long npages, int base)
{
	const int *w = p;

	for (unsigned long i = 0; i < npages * ps() / sizeof(int); i++)
		if (w[i] != (int)i + base)
			return false;
	return true;
}

static bool snap_all(struct uhmm_dmirror *dm, void *p, unsigned long npages,
		     unsigned char v)
{
	struct uhmm_dmirror_cmd c;
	unsigned char *m = malloc(npages);
	bool ok = true;

	ASSERT_NOT_NULL(m);
	ASSERT_EQ(dcmd(dm, UHMM_DMIRROR_SNAPSHOT, p, m, npages, &c), 0);
	for (unsigned long i = 0; i < npages && ok; i++) {
		if (m[i] != v) {
			TH_LOG("page %lu: 0x%02x, want 0x%02x", i, m[i], v);
			ok = false;
		}
	}
	free(m);
	return ok;
}

static int to_dev(struct uhmm_dmirror *dm, void *p, void *mirror,
		  unsigned long n, struct uhmm_dmirror_cmd *c)
{
	return dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, n, c);
}

static int to_sys(struct uhmm_dmirror *dm, void *p, unsigned long n,
		  struct uhmm_dmirror_cmd *c)
{
	return dcmd(dm, UHMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, n, c);
}

/* Migrate to device 2: the CPU keeps reading and writing in place. */
TEST(coherent_migrate_cpu_in_place)
{
	unsigned long n = 64;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *d2 = dopen(2), *d3 = dopen(3), *d0 = dopen(0);
	struct uhmm_dmirror_cmd c;

	fill_ints(p, n, 0);
	ASSERT_EQ(to_dev(d2, p, mirror, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	ASSERT_TRUE(check_ints(mirror, n, 0));
	/* Mapped: present for the CPU, coherent for every device. */
	ASSERT_EQ(page_present(p), 1);
	ASSERT_TRUE(snap_all(d2, p, n, COH_LOCAL_W));
	ASSERT_TRUE(snap_all(d3, p, n, COH_REMOTE_W));
	ASSERT_TRUE(snap_all(d0, p, n, COH_REMOTE_W));
	/* The CPU reads and writes it where it is: no migration back. */
	ASSERT_TRUE(check_ints(p, n, 0));
	fill_ints(p, n, 7);
	ASSERT_TRUE(snap_all(d2, p, n, COH_LOCAL_W));
	/* The device sees the CPU's stores, and the CPU the device's. */
	memset(mirror, 0, n * ps());
	ASSERT_EQ(dcmd(d2, UHMM_DMIRROR_READ, p, mirror, n, &c), 0);
	ASSERT_TRUE(check_ints(mirror, n, 7));
	fill_ints(mirror, n, 11);
	ASSERT_EQ(dcmd(d3, UHMM_DMIRROR_WRITE, p, mirror, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	ASSERT_TRUE(check_ints(p, n, 11));
	ASSERT_TRUE(snap_all(d2, p, n, COH_LOCAL_W));
	/* Back to system memory. */
	ASSERT_EQ(to_sys(d2, p, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	ASSERT_TRUE(check_ints(p, n, 11));
	ASSERT_TRUE(snap_all(d2, p, n, UHMM_DMIRROR_PROT_WRITE));
	ASSERT_EQ(uhmm_dmirror_close(d0), 0);
	ASSERT_EQ(uhmm_dmirror_close(d3), 0);
	ASSERT_EQ(uhmm_dmirror_close(d2), 0);
}

static bool inv_cb(struct uhmm_interval_notifier *sub,
		   const struct uhmm_notifier_range *range, unsigned long seq)
{
	(void)range;
	uhmm_interval_set_seq(sub, seq);
	return true;
}

/* range_fault names the page and its owner; its frame is the address. */
TEST(coherent_range_fault_reports_page)
{
	unsigned long n = 4;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *d2 = dopen(2);
	struct uhmm_interval_notifier *sub;
	struct uhmm_dmirror_cmd c;
	uint64_t pfns[4] = { 0 };

	fill_ints(p, n, 3);
	ASSERT_EQ(to_dev(d2, p, mirror, n, &c), 0);
	ASSERT_EQ(uhmm_interval_notifier_insert(&sub, (uintptr_t)p, n * ps(),
						&(struct uhmm_interval_notifier_ops){ .invalidate = inv_cb },
						NULL), 0);
	struct uhmm_range r = {
		.notifier = sub, .start = (uintptr_t)p,
		.end = (uintptr_t)p + n * ps(), .hmm_pfns = pfns,
		.default_flags = UHMM_PFN_REQ_FAULT,
	};
	do {
		r.notifier_seq = uhmm_interval_read_begin(sub);
	} while (uhmm_range_fault(&r) == -EBUSY);
	for (unsigned long i = 0; i < n; i++) {
		struct uhmm_page *pg = uhmm_pfn_to_page(pfns[i]);

		ASSERT_TRUE(pfns[i] & UHMM_PFN_VALID);
		ASSERT_TRUE(pfns[i] & UHMM_PFN_WRITE);
		ASSERT_TRUE(pfns[i] & UHMM_PFN_DEVICE_COHERENT);
		ASSERT_FALSE(pfns[i] & UHMM_PFN_DEVICE_PRIVATE);
		ASSERT_EQ(uhmm_pfn_to_addr(pfns[i]), (void *)(p + i * ps()));
		ASSERT_NOT_NULL(pg);
		ASSERT_NOT_NULL(uhmm_page_owner(pg));
		/* Mapped: its pool slot is not where the data are. */
		ASSERT_NOT_NULL(uhmm_page_addr(pg));
	}
	uhmm_interval_notifier_remove(sub);
	ASSERT_EQ(uhmm_dmirror_close(d2), 0);
	/* Closed: back in system memory, data kept. */
	ASSERT_TRUE(check_ints(p, n, 3));
}

/* migrate_fault / migrate_multiple of hmm-tests, coherent variant. */
TEST(coherent_migrate_rounds)
{
	unsigned long n = 32;
	struct uhmm_dmirror *d2 = dopen(2);
	struct uhmm_dmirror_cmd c;

	for (int round = 0; round < 10; round++) {
		char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);

		fill_ints(p, n, round);
		ASSERT_EQ(to_dev(d2, p, mirror, n, &c), 0);
		ASSERT_EQ(c.cpages, n);
		ASSERT_TRUE(check_ints(mirror, n, round));
		/* CPU reads half, then the range migrates again: the pages
		 * already there stay, all readable through the mirror. */
		ASSERT_TRUE(check_ints(p, n / 2, round));
		ASSERT_EQ(to_dev(d2, p, mirror, n, &c), 0);
		ASSERT_EQ(c.cpages, n);
		ASSERT_EQ(to_sys(d2, p, n, &c), 0);
		ASSERT_EQ(c.cpages, n);
		ASSERT_TRUE(check_ints(p, n, round));
		munmap(p, n * ps());
		munmap(mirror, n * ps());
	}
	ASSERT_EQ(uhmm_dmirror_close(d2), 0);
}

/* A page on one device is -ENOENT for the others. */
TEST(coherent_other_device_enoent)
{
	unsigned long n = 8;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *d2 = dopen(2), *d3 = dopen(3), *d0 = dopen(0);
	struct uhmm_dmirror_cmd c;

	fill_ints(p, n, 5);
	ASSERT_EQ(to_dev(d2, p, mirror, n, &c), 0);
	ASSERT_EQ(to_dev(d3, p, mirror, n, &c), -ENOENT);
	ASSERT_EQ(to_dev(d0, p, mirror, n, &c), -ENOENT);
	ASSERT_TRUE(snap_all(d2, p, n, COH_LOCAL_W));
	/* MIGRATE_TO_SYS of another device takes nothing. */
	ASSERT_EQ(to_sys(d3, p, n, &c), 0);
	ASSERT_EQ(c.cpages, 0ULL);
	ASSERT_TRUE(check_ints(p, n, 5));
	/* And a private page is -ENOENT for a coherent device. */
	ASSERT_EQ(to_sys(d2, p, n, &c), 0);
	ASSERT_EQ(to_dev(d0, p, mirror, n, &c), 0);
	ASSERT_EQ(to_dev(d2, p, mirror, n, &c), -ENOENT);
	ASSERT_TRUE(check_ints(p, n, 5));
	ASSERT_EQ(uhmm_dmirror_close(d0), 0);
	ASSERT_EQ(uhmm_dmirror_close(d3), 0);
	ASSERT_EQ(uhmm_dmirror_close(d2), 0);
}

/* RELEASE and close evict: data stay, the pages are system memory. */
TEST(coherent_release_and_close)
{
	unsigned long n = 16;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *d2 = dopen(2), *d3 = dopen(3);
	struct uhmm_dmirror_cmd c;

	fill_ints(p, n, 9);
	ASSERT_EQ(to_dev(d2, p, mirror, n, &c), 0);
	ASSERT_EQ(dcmd(d2, UHMM_DMIRROR_RELEASE, p, NULL, n, &c), 0);
	ASSERT_TRUE(snap_all(d2, p, n, UHMM_DMIRROR_PROT_WRITE));
	ASSERT_TRUE(check_ints(p, n, 9));
	ASSERT_EQ(to_dev(d3, p, mirror, n, &c), 0);
	ASSERT_TRUE(snap_all(d2, p, n, COH_REMOTE_W));
	fill_ints(p, n, 10);
	ASSERT_EQ(uhmm_dmirror_close(d3), 0);
	ASSERT_TRUE(snap_all(d2, p, n, UHMM_DMIRROR_PROT_WRITE));
	ASSERT_TRUE(check_ints(p, n, 10));
	ASSERT_EQ(uhmm_dmirror_close(d2), 0);
}

/* munmap, MADV_DONTNEED and mremap of coherent pages. */
TEST(coherent_munmap_dontneed_mremap)
{
	unsigned long n = 16;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	char *q = map_anon(2 * n * ps(), RW);
	struct uhmm_dmirror *d2 = dopen(2);
	struct uhmm_dmirror_cmd c;

	fill_ints(p, n, 1);
	ASSERT_EQ(to_dev(d2, p, mirror, n, &c), 0);
	/* DONTNEED of the first half: zeros, no longer device memory. */
	ASSERT_EQ(madvise(p, n / 2 * ps(), MADV_DONTNEED), 0);
	ASSERT_TRUE(snap_all(d2, p, n / 2, UHMM_DMIRROR_PROT_NONE));
	ASSERT_TRUE(snap_all(d2, p + n / 2 * ps(), n / 2, COH_LOCAL_W));
	for (unsigned long i = 0; i < n / 2 * ps(); i++)
		ASSERT_EQ(p[i], 0);
	/* mremap moves the rest with the mapping, still on the device. */
	char *r = mremap(p + n / 2 * ps(), n / 2 * ps(), n / 2 * ps(),
			 MREMAP_MAYMOVE | MREMAP_FIXED, q + n * ps());
	ASSERT_EQ(r, q + n * ps());
	ASSERT_TRUE(snap_all(d2, r, n / 2, COH_LOCAL_W));
	ASSERT_TRUE(check_ints(mirror, n, 1));
	ASSERT_EQ(memcmp(r, mirror + n / 2 * ps(), n / 2 * ps()), 0);
	ASSERT_EQ(to_sys(d2, r, n / 2, &c), 0);
	ASSERT_EQ(c.cpages, n / 2);
	ASSERT_EQ(memcmp(r, mirror + n / 2 * ps(), n / 2 * ps()), 0);
	/* munmap of device-resident pages gives them back; the device
	 * memory is reused by the next migration. */
	fill_ints(q, n, 4);
	ASSERT_EQ(to_dev(d2, q, mirror, n, &c), 0);
	ASSERT_EQ(munmap(q, n * ps()), 0);
	char *s = map_anon(n * ps(), RW);

	fill_ints(s, n, 6);
	ASSERT_EQ(to_dev(d2, s, mirror, n, &c), 0);
	ASSERT_TRUE(check_ints(s, n, 6));
	ASSERT_EQ(uhmm_dmirror_close(d2), 0);
	ASSERT_TRUE(check_ints(s, n, 6));
}

/* read(2) and write(2) on coherent pages need nothing of uhmm. */
TEST(coherent_syscalls)
{
	unsigned long n = 4;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *d2 = dopen(2);
	struct uhmm_dmirror_cmd c;
	int fds[2];

	fill_ints(p, n, 2);
	ASSERT_EQ(to_dev(d2, p, mirror, n, &c), 0);
	ASSERT_EQ(pipe(fds), 0);
	ASSERT_EQ(write(fds[1], p, ps()), (ssize_t)ps());
	ASSERT_EQ(read(fds[0], p + ps(), ps()), (ssize_t)ps());
	ASSERT_EQ(memcmp(p, p + ps(), ps()), 0);
	close(fds[0]);
	close(fds[1]);
	ASSERT_TRUE(snap_all(d2, p, n, COH_LOCAL_W));
	ASSERT_EQ(uhmm_dmirror_close(d2), 0);
}

/* fork: the child reads the data; parent and child stay isolated. */
TEST(coherent_fork)
{
	unsigned long n = 8;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *d2 = dopen(2);
	struct uhmm_dmirror_cmd c;
	int status;
	pid_t pid;

	fill_ints(p, n, 8);
	ASSERT_EQ(to_dev(d2, p, mirror, n, &c), 0);
	pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		bool ok = check_ints(p, n, 8);

		fill_ints(p, n, 100);
		_exit(ok && check_ints(p, n, 100) ? 0 : 1);
	}
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	ASSERT_TRUE(check_ints(p, n, 8));
	/* The parent's pages, once exclusive again, migrate back. */
	fill_ints(p, n, 9);
	ASSERT_EQ(to_sys(d2, p, n, &c), 0);
	ASSERT_TRUE(check_ints(p, n, 9));
	ASSERT_EQ(uhmm_dmirror_close(d2), 0);
	ASSERT_TRUE(check_ints(p, n, 9));
}

/* Read-only after migration: stays put for MIGRATE_TO_SYS, RELEASE
 * turns it into system memory in place; data never change. */
TEST(coherent_mprotect_readonly)
{
	unsigned long n = 8;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *d2 = dopen(2);
	struct uhmm_dmirror_cmd c;

	fill_ints(p, n, 12);
	ASSERT_EQ(to_dev(d2, p, mirror, n, &c), 0);
	ASSERT_EQ(mprotect(p, n * ps(), PROT_READ), 0);
	ASSERT_TRUE(snap_all(d2, p, n, UHMM_DMIRROR_PROT_DEV_COHERENT_LOCAL |
			     UHMM_DMIRROR_PROT_READ));
	ASSERT_EQ(to_sys(d2, p, n, &c), 0);
	ASSERT_EQ(c.cpages, 0ULL);
	ASSERT_EQ(dcmd(d2, UHMM_DMIRROR_RELEASE, p, NULL, n, &c), 0);
	ASSERT_TRUE(snap_all(d2, p, n, UHMM_DMIRROR_PROT_READ));
	ASSERT_TRUE(check_ints(p, n, 12));
	ASSERT_EQ(uhmm_dmirror_close(d2), 0);
}

/* Holes and the zero page migrate as zeros. */
TEST(coherent_holes)
{
	unsigned long n = 8;
	char *p = map_anon(n * ps(), RW), *mirror = map_anon(n * ps(), RW);
	struct uhmm_dmirror *d2 = dopen(2);
	struct uhmm_dmirror_cmd c;
	volatile char x = p[ps()];	/* the zero page */

	(void)x;
	memset(mirror, 0x5a, n * ps());
	ASSERT_EQ(to_dev(d2, p, mirror, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	for (unsigned long i = 0; i < n * ps(); i++)
		ASSERT_EQ(mirror[i], 0);
	ASSERT_TRUE(snap_all(d2, p, n, COH_LOCAL_W));
	p[3 * ps()] = 1;
	ASSERT_EQ(to_sys(d2, p, n, &c), 0);
	ASSERT_EQ(p[3 * ps()], 1);
	ASSERT_EQ(p[4 * ps()], 0);
	ASSERT_EQ(uhmm_dmirror_close(d2), 0);
}


/*
 * hmm-tests hmm2 snapshot, coherent variant (devices 2 and 3), the
 * kernel's set-up exactly: a PROT_NONE reservation, a hole, a read-only
 * zero page (mprotect PROT_READ, then a read), a read-only page with
 * data, a written page, one page on each device.
 */
TEST(coherent_hmm2_snapshot)
{
	unsigned long n = 7;
	char *p = mmap(NULL, n * ps(), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *mirror = map_anon(ps(), RW);	/* MIGRATE_TO_DEV reads back */
	struct uhmm_dmirror *d2 = dopen(2), *d3 = dopen(3);
	struct uhmm_dmirror_cmd c;
	unsigned char m[7];
	int val;

	ASSERT_NE(p, MAP_FAILED);
	/* Pages 1-4 as the kernel sets them up; 5 and 6 go to devices. */
	val = hmm2_snapshot_layout(p);
	ASSERT_EQ(val, 3);
	ASSERT_EQ(to_dev(d2, p + 5 * ps(), mirror, 1, &c), 0);
	ASSERT_EQ(c.cpages, 1ULL);
	ASSERT_EQ(to_dev(d3, p + 6 * ps(), mirror, 1, &c), 0);
	ASSERT_EQ(c.cpages, 1ULL);
	memset(m, 0xaa, sizeof(m));
	ASSERT_EQ(dcmd(d2, UHMM_DMIRROR_SNAPSHOT, p, m, n, &c), 0);
	ASSERT_EQ(c.cpages, n);
	for (unsigned long i = 0; i < n; i++)
		TH_LOG("page %lu: 0x%02x", i, m[i]);
	ASSERT_EQ(m[0], UHMM_DMIRROR_PROT_ERROR);
	ASSERT_EQ(m[1], UHMM_DMIRROR_PROT_ERROR);
	ASSERT_EQ(m[2], UHMM_DMIRROR_PROT_ZERO | UHMM_DMIRROR_PROT_READ);
	ASSERT_EQ(m[3], UHMM_DMIRROR_PROT_READ);
	ASSERT_EQ(m[4], UHMM_DMIRROR_PROT_WRITE);
	ASSERT_EQ(m[5], COH_LOCAL_W);
	ASSERT_EQ(m[6], COH_REMOTE_W);
	ASSERT_EQ(uhmm_dmirror_close(d2), 0);
	ASSERT_EQ(uhmm_dmirror_close(d3), 0);
}

struct race_arg {
	char *p;
	unsigned long n;
	struct uhmm_dmirror *d2, *d3;
	void *mirror;
	_Atomic bool stop;
	unsigned long ops;
};

static void *race_migrator(void *a_)
{
	struct race_arg *a = a_;
	struct uhmm_dmirror_cmd c;

	while (!atomic_load(&a->stop)) {
		unsigned long k = a->ops++ % 5;

		if (k == 4)
			to_sys(a->d2, a->p, a->n, &c);
		else
			to_dev(k & 1 ? a->d3 : a->d2, a->p, a->mirror, a->n, &c);
	}
	return NULL;
}

/*
 * The program writes its pages (by a pipe's read() into them, as a
 * reader of a pipeline does, and by stores) while another thread keeps
 * moving them between the two coherent devices and system memory. Every
 * write stays. (The fault handler once served a fault on a coherent page
 * with the zero page, unlocked: a migration taking the frame out in
 * between found the zero page in its place on the way back. That window
 * is narrow; test_inject's inject_coherent_frame_not_back_keeps_data
 * reaches the same code deterministically.) With UFFD_USER_MODE_ONLY
 * (unprivileged) the kernel's own write into a page on its way fails
 * with EFAULT (semantics): stores only, then.
 */
TEST_TIMEOUT(coherent_writes_racing_migrations_stay, 60)
{
	unsigned long n = 4, seq = 0, bad = 0;
	struct race_arg a = { .n = n };
	bool by_read = kernel_faults_served();
	char *buf = malloc(ps());
	int fd[2];
	pthread_t t;
	long end;

	ASSERT_NOT_NULL(buf);
	a.p = map_anon(n * ps(), RW);
	a.mirror = map_anon(n * ps(), RW);
	a.d2 = dopen(2);
	a.d3 = dopen(3);
	ASSERT_EQ(pipe(fd), 0);
	memset(a.p, 0, n * ps());
	ASSERT_EQ(pthread_create(&t, NULL, race_migrator, &a), 0);
	end = now_ms() + 3000;
	while (now_ms() < end && !bad) {
		seq++;
		for (unsigned long i = 0; i < n; i++) {
			char *pg = a.p + i * ps();

			memset(buf, (int)(seq * n + i) | 1, ps());
			if ((seq & 1) && by_read) {
				ASSERT_EQ(write(fd[1], buf, ps()), (ssize_t)ps());
				ASSERT_EQ(read(fd[0], pg, ps()), (ssize_t)ps());
			} else {
				memcpy(pg, buf, ps());
			}
		}
		for (unsigned long i = 0; i < n; i++) {
			memset(buf, (int)(seq * n + i) | 1, ps());
			if (memcmp(a.p + i * ps(), buf, ps())) {
				TH_LOG("round %lu, page %lu: 0x%02x, want 0x%02x",
				       seq, i, (unsigned char)a.p[i * ps()],
				       (unsigned char)buf[0]);
				bad++;
			}
		}
	}
	atomic_store(&a.stop, true);
	ASSERT_EQ(pthread_join(t, NULL), 0);
	TH_LOG("%lu rounds, %lu migrations%s", seq, a.ops,
	       by_read ? "" : " (stores only: UFFD_USER_MODE_ONLY)");
	ASSERT_EQ(bad, 0UL);
	ASSERT_TRUE(a.ops > 0);
	close(fd[0]);
	close(fd[1]);
	free(buf);
	ASSERT_EQ(uhmm_dmirror_close(a.d2), 0);
	ASSERT_EQ(uhmm_dmirror_close(a.d3), 0);
}
