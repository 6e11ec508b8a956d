/* SPDX-License-Identifier: MIT */
/*
 * Library-internal side of <uhmm/stats.h>: the counter indices and the
 * one-line hooks the fault, range_fault, invalidation and migration paths
 * call. Each hook is a relaxed atomic add on the calling thread's stripe
 * (no lock) plus, where a USDT probe belongs, the probe.
 */
#ifndef UHMM_STATS_INTERNAL_H
#define UHMM_STATS_INTERNAL_H

#include <stdint.h>

#include <uhmm/stats.h>
#include <uhmm/uhmm.h>
#include "probes.h"

#define UHMM_INTERNAL_STATS __attribute__((visibility("hidden")))

enum uhmm__stat {
#define UHMM__STAT_ENUM_(name) UHMM__STAT_##name,
	UHMM_STAT_FIELDS(UHMM__STAT_ENUM_)
#undef UHMM__STAT_ENUM_
	UHMM__STAT_NR
};

struct uhmm_range;
struct uhmm_migrate;
struct uhmm_notifier_range;

UHMM_INTERNAL_STATS void uhmm__stat_add(enum uhmm__stat s, uint64_t n);

static inline void uhmm__stat_inc(enum uhmm__stat s)
{
	uhmm__stat_add(s, 1);
}

/* A CPU fault message a reader is about to serve. */
UHMM_INTERNAL_STATS void uhmm__stat_fault(unsigned long addr, int write);
/* A fault on a hole: the zero page is mapped (first touch). */
UHMM_INTERNAL_STATS void uhmm__stat_fault_missing(unsigned long addr);
/* Around the owner's migrate_to_ram, on the same thread. */
UHMM_INTERNAL_STATS void uhmm__stat_fault_back_begin(unsigned long addr);
UHMM_INTERNAL_STATS void uhmm__stat_fault_back_end(unsigned long addr, int ret);
/* uhmm_range_fault() entry (a device fault round). */
UHMM_INTERNAL_STATS void uhmm__stat_range_fault(const struct uhmm_range *r);
/* range_fault faults [start, end) in. */
UHMM_INTERNAL_STATS void uhmm__stat_populate(unsigned long start,
					     unsigned long end,
					     unsigned long page_size);
/* An invalidation that reached at least one notifier. */
UHMM_INTERNAL_STATS void uhmm__stat_invalidate(const struct uhmm_notifier_range *r);
/* uhmm_migrate_setup() got a valid range. */
UHMM_INTERNAL_STATS void uhmm__stat_migrate_begin(const struct uhmm_migrate *m);
/* Finalize: count the committed entries of src[]/dst[] (MIGRATE set,
 * dst VALID) by direction; @page_size is the runtime's. */
UHMM_INTERNAL_STATS void uhmm__stat_migrate_end(unsigned long start,
						const uint64_t *src,
						const uint64_t *dst,
						unsigned long npages,
						unsigned long page_size);

#endif /* UHMM_STATS_INTERNAL_H */
