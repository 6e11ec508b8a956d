/* SPDX-License-Identifier: MIT */
/*
 * Counters behind <uhmm/stats.h>. Each thread adds to one of NSTRIPES
 * cache-line-aligned stripes (picked round-robin at its first update), with
 * relaxed atomics: no lock and, with up to NSTRIPES threads, no shared
 * cache line on the fault path. uhmm_stats_get() sums the stripes.
 */
#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include <uhmm/migrate.h>

#include "base.h"

#define NSTRIPES 16
#define NSLOTS (UHMM__STAT_NR + UHMM_STATS_LAT_BUCKETS)
#define SLOT_LAT(i) (UHMM__STAT_NR + (i))

struct stat_stripe {
	_Atomic uint64_t v[NSLOTS];
} __attribute__((aligned(64)));

static struct stat_stripe stripes[NSTRIPES];
static _Atomic unsigned int next_stripe;
static _Thread_local struct stat_stripe *my_stripe;
static _Thread_local uint64_t fault_back_t0;

_Static_assert(sizeof(struct uhmm_stats) ==
	       8 + 8 * UHMM_STATS_LAT_BUCKETS + 8 * UHMM__STAT_NR,
	       "struct uhmm_stats is the header, the histogram and the counters");
_Static_assert(UHMM_STATS_LAT_BUCKETS == 32, "ABI: 32 histogram buckets");
_Static_assert(UHMM__STAT_inv_exclusive - UHMM__STAT_inv_unmap ==
	       UHMM_NOTIFY_EXCLUSIVE - UHMM_NOTIFY_UNMAP,
	       "inv_* counters follow enum uhmm_notifier_event");

static struct stat_stripe *stripe(void)
{
	struct stat_stripe *s = my_stripe;

	if (__builtin_expect(!s, 0)) {
		unsigned int i = atomic_fetch_add_explicit(&next_stripe, 1,
							   memory_order_relaxed);

		s = my_stripe = &stripes[i % NSTRIPES];
	}
	return s;
}

static inline void slot_add(unsigned int slot, uint64_t n)
{
	atomic_fetch_add_explicit(&stripe()->v[slot], n, memory_order_relaxed);
}

void uhmm__stat_add(enum uhmm__stat s, uint64_t n)
{
	slot_add((unsigned int)s, n);
}

/* The monotonic clock is a vDSO read, not a system call. */
static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static unsigned int lat_bucket(uint64_t ns)
{
	unsigned int b = ns ? 63u - (unsigned int)__builtin_clzll(ns) : 0;

	return b < UHMM_STATS_LAT_BUCKETS ? b : UHMM_STATS_LAT_BUCKETS - 1;
}

void uhmm__stat_fault(unsigned long addr, int write)
{
	slot_add(UHMM__STAT_faults, 1);
	UHMM_PROBE2(fault, addr, write);
}

void uhmm__stat_fault_missing(unsigned long addr)
{
	slot_add(UHMM__STAT_faults_first_touch, 1);
	UHMM_PROBE1(fault_missing, addr);
}

void uhmm__stat_fault_back_begin(unsigned long addr)
{
	UHMM_PROBE1(fault_back_begin, addr);
	fault_back_t0 = now_ns();
}

void uhmm__stat_fault_back_end(unsigned long addr, int ret)
{
	uint64_t ns = now_ns() - fault_back_t0;

	slot_add(UHMM__STAT_faults_back, 1);
	slot_add(SLOT_LAT(lat_bucket(ns)), 1);
	UHMM_PROBE3(fault_back_end, addr, ret, ns);
}

void uhmm__stat_range_fault(const struct uhmm_range *r)
{
	slot_add(UHMM__STAT_range_fault_calls, 1);
	UHMM_PROBE3(range_fault, r->start, r->end, r->default_flags);
}

void uhmm__stat_populate(unsigned long start, unsigned long end,
			 unsigned long page_size)
{
	slot_add(UHMM__STAT_range_fault_populates, 1);
	slot_add(UHMM__STAT_range_fault_pages_faulted, (end - start) / page_size);
}

void uhmm__stat_invalidate(const struct uhmm_notifier_range *r)
{
	if ((unsigned int)r->event <= UHMM_NOTIFY_EXCLUSIVE)
		slot_add(UHMM__STAT_inv_unmap + (unsigned int)r->event, 1);
	UHMM_PROBE4(invalidate, r->start, r->end, (int)r->event, r->owner);
}

void uhmm__stat_migrate_begin(const struct uhmm_migrate *m)
{
	UHMM_PROBE3(migrate_begin, m->start, m->end, m->flags);
}

void uhmm__stat_migrate_end(unsigned long start, const uint64_t *src,
			    const uint64_t *dst, unsigned long npages,
			    unsigned long ps)
{
	/* A PMD maps one page table of 8-byte entries. */
	unsigned long thp = ps / 8;
	uint64_t to_dev = 0, to_sys = 0;

	for (unsigned long i = 0; i < npages; i++) {
		/* A COMPOUND entry stands for the whole THP (the entries after
		 * it are empty); its destination may be split. */
		unsigned long n = src[i] & UHMM_MIGRATE_PFN_COMPOUND ? thp : 1;

		if (n > npages - i)
			n = npages - i;
		if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			continue;
		for (unsigned long k = 0; k < n; k++) {
			uint64_t d = dst[i + k];

			if (!(d & UHMM_MIGRATE_PFN_VALID))
				continue;
			/* A compound destination is the whole THP. */
			unsigned long pages = d & UHMM_MIGRATE_PFN_COMPOUND ? n : 1;

			if (d & UHMM_MIGRATE_PFN_DEVICE)
				to_dev += pages;
			else
				to_sys += pages;
			if (d & UHMM_MIGRATE_PFN_COMPOUND)
				break;
		}
		i += n - 1;
	}
	slot_add(UHMM__STAT_migrations, 1);
	if (to_dev) {
		slot_add(UHMM__STAT_pages_to_device, to_dev);
		slot_add(UHMM__STAT_bytes_to_device, to_dev * ps);
	}
	if (to_sys) {
		slot_add(UHMM__STAT_pages_to_system, to_sys);
		slot_add(UHMM__STAT_bytes_to_system, to_sys * ps);
	}
	UHMM_PROBE4(migrate_end, start, npages, to_dev, to_sys);
}

int uhmm_stats_get(struct uhmm_stats *out, size_t size)
{
	struct uhmm_stats st;
	uint64_t sum[NSLOTS] = { 0 };

	if (!out || size < 8)
		return -EINVAL;
	for (unsigned int s = 0; s < NSTRIPES; s++)
		for (unsigned int i = 0; i < NSLOTS; i++)
			sum[i] += atomic_load_explicit(&stripes[s].v[i],
						       memory_order_relaxed);
	memset(&st, 0, sizeof(st));
	if (size > sizeof(st))
		size = sizeof(st);
	st.version = UHMM_STATS_VERSION;
	st.size = (uint32_t)size;
	for (unsigned int i = 0; i < UHMM_STATS_LAT_BUCKETS; i++)
		st.fault_back_ns_log2[i] = sum[SLOT_LAT(i)];
#define GET_(name) st.name = sum[UHMM__STAT_##name];
	UHMM_STAT_FIELDS(GET_)
#undef GET_
	memcpy(out, &st, size);
	return 0;
}

void uhmm_stats_reset(void)
{
	for (unsigned int s = 0; s < NSTRIPES; s++)
		for (unsigned int i = 0; i < NSLOTS; i++)
			if (i != UHMM__STAT_device_pages_in_use)
				atomic_store_explicit(&stripes[s].v[i], 0,
						      memory_order_relaxed);
}
