/* SPDX-License-Identifier: MIT */
/*
 * A minimal device driver on uhmm's core API: a "device" with its own
 * page table mirrors part of this process's address space. It subscribes
 * with an interval notifier, fills its page table with uhmm_range_fault()
 * under the read_begin/read_retry protocol, drops entries when the
 * invalidate callback says so, and reads memory through its entries with
 * uhmm_copy_nofault(). Public API only; exit status 0 when every check
 * passed, 77 when the kernel cannot run uhmm, 1 otherwise.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <uhmm/uhmm.h>

#define NPAGES 16

struct my_dev {
	pthread_mutex_t lock;		/* the device page table's lock */
	struct uhmm_interval_notifier *sub;
	unsigned long start;		/* the mirrored range */
	unsigned long page_size;
	uint64_t pt[NPAGES];		/* device page table: 0 or a pfn value */
	unsigned long invalidations;
};

/* Called by uhmm when the process's mapping of the range changes. */
static bool my_invalidate(struct uhmm_interval_notifier *sub,
			  const struct uhmm_notifier_range *r,
			  unsigned long cur_seq)
{
	struct my_dev *d = uhmm_interval_notifier_priv(sub);
	unsigned long a = r->start > d->start ? r->start : d->start;
	unsigned long end = d->start + NPAGES * d->page_size;
	unsigned long b = r->end < end ? r->end : end;

	pthread_mutex_lock(&d->lock);
	uhmm_interval_set_seq(sub, cur_seq);
	for (; a < b; a += d->page_size)
		d->pt[(a - d->start) / d->page_size] = 0;
	d->invalidations++;
	pthread_mutex_unlock(&d->lock);
	return true;
}

static const struct uhmm_interval_notifier_ops my_ops = {
	.invalidate = my_invalidate,
};

/* A device fault round: make [addr, addr + n pages) present, install it. */
static int my_fault(struct my_dev *d, unsigned long addr, unsigned long n)
{
	uint64_t pfns[NPAGES];
	struct uhmm_range r = {
		.notifier = d->sub,
		.start = addr,
		.end = addr + n * d->page_size,
		.hmm_pfns = pfns,
		.default_flags = UHMM_PFN_REQ_FAULT,
	};
	unsigned long first = (addr - d->start) / d->page_size;
	int ret;

again:
	r.notifier_seq = uhmm_interval_read_begin(d->sub);
	ret = uhmm_range_fault(&r);
	if (ret == -EBUSY)
		goto again;
	if (ret)
		return ret;
	pthread_mutex_lock(&d->lock);
	if (uhmm_interval_read_retry(d->sub, r.notifier_seq)) {
		pthread_mutex_unlock(&d->lock);
		goto again;
	}
	for (unsigned long i = 0; i < n; i++)
		d->pt[first + i] = pfns[i];	/* valid until the next invalidate */
	pthread_mutex_unlock(&d->lock);
	return 0;
}

/* A device read of one page through its page table. */
static int my_read_page(struct my_dev *d, unsigned long addr, void *buf)
{
	unsigned long i = (addr - d->start) / d->page_size;
	int ret;

	/* Revalidation raises what user space gets no event for (mprotect). */
	ret = uhmm_range_revalidate(addr, addr + d->page_size);
	if (ret)
		return ret;
	for (int tries = 0; tries < 8; tries++) {
		pthread_mutex_lock(&d->lock);
		if (d->pt[i] & UHMM_PFN_VALID) {
			ret = uhmm_copy_nofault(buf, uhmm_pfn_to_addr(d->pt[i]),
						d->page_size, NULL);
			pthread_mutex_unlock(&d->lock);
			return ret;
		}
		pthread_mutex_unlock(&d->lock);
		ret = my_fault(d, addr, 1);
		if (ret)
			return ret;
	}
	return -EAGAIN;
}

static unsigned long valid_entries(struct my_dev *d)
{
	unsigned long n = 0;

	pthread_mutex_lock(&d->lock);
	for (int i = 0; i < NPAGES; i++)
		n += !!(d->pt[i] & UHMM_PFN_VALID);
	pthread_mutex_unlock(&d->lock);
	return n;
}

static int failures;

#define CHECK(cond)							\
	do {								\
		if (cond) {						\
			printf("ok: %s\n", #cond);			\
		} else {						\
			printf("FAILED: %s (line %d)\n", #cond, __LINE__); \
			failures++;					\
		}							\
	} while (0)

int main(void)
{
	static struct my_dev dev = { .lock = PTHREAD_MUTEX_INITIALIZER };
	struct my_dev *d = &dev;
	unsigned long ps = (unsigned long)sysconf(_SC_PAGESIZE);
	struct uhmm_features f = { .size = sizeof(f) };
	char *mem, *buf;
	int ret;

	ret = uhmm_init();
	if (!ret)
		ret = uhmm_features(&f);
	if (ret) {
		printf("skip: uhmm cannot run here: %s\n", strerror(-ret));
		return 77;
	}
	mem = mmap(NULL, NPAGES * ps, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	buf = mmap(NULL, ps, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED || buf == MAP_FAILED)
		return 1;
	for (unsigned long i = 0; i < NPAGES; i++)
		memset(mem + i * ps, 'a' + (int)i, ps);

	d->start = (unsigned long)mem;
	d->page_size = ps;
	ret = uhmm_interval_notifier_insert(&d->sub, d->start, NPAGES * ps,
					    &my_ops, d);
	CHECK(ret == 0);
	if (ret)
		return 1;

	/* One fault round maps the whole range on the device. */
	CHECK(my_fault(d, d->start, NPAGES) == 0);
	CHECK(valid_entries(d) == NPAGES);
	CHECK(my_read_page(d, d->start + 3 * ps, buf) == 0 && buf[0] == 'd');

	/* The CPU discards two pages: the device loses its entries for them
	 * and then reads what the CPU would, zeros. (Without userfaultfd,
	 * uhmm hears of madvise only at the next range_fault.) */
	CHECK(madvise(mem + 4 * ps, 2 * ps, MADV_DONTNEED) == 0);
	CHECK(uhmm_range_revalidate(d->start, d->start + NPAGES * ps) == 0);
	if (f.flags & UHMM_FEAT_EVENTS) {
		CHECK(valid_entries(d) <= NPAGES - 2);
		CHECK(d->invalidations >= 1);
		CHECK(my_read_page(d, d->start + 4 * ps, buf) == 0 && buf[0] == 0);
	}

	/* A CPU write is seen by the device: same page, same page tables. */
	mem[5 * ps] = 'Z';
	CHECK(my_read_page(d, d->start + 5 * ps, buf) == 0 && buf[0] == 'Z');

	/* Read-only now: revalidation drops the writable entries (no event
	 * exists for mprotect); the device faults the page in again. */
	CHECK(mprotect(mem, NPAGES * ps, PROT_READ) == 0);
	CHECK(my_read_page(d, d->start, buf) == 0 && buf[0] == 'a');

	/* munmap: entries dropped, the device's read fails cleanly. */
	CHECK(munmap(mem, NPAGES * ps) == 0);
	CHECK(uhmm_range_revalidate(d->start, d->start + NPAGES * ps) == 0);
	CHECK(valid_entries(d) == 0);
	CHECK(my_read_page(d, d->start, buf) == -EFAULT);

	CHECK(uhmm_interval_notifier_remove(d->sub) == 0);
	printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
	return failures ? 1 : 0;
}
