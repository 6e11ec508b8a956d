/* SPDX-License-Identifier: MIT */
/*
 * uhmm counters: one versioned structure, read with uhmm_stats_get().
 * Counters are process-wide (all runtimes since the library was loaded or
 * since uhmm_stats_reset()), updated with relaxed atomics on per-thread
 * stripes: reading them is exact once the counted operations have
 * returned, and approximate while they run.
 */
#ifndef UHMM_STATS_H
#define UHMM_STATS_H

#include <stddef.h>
#include <stdint.h>
#include <uhmm/uhmm.h>

#ifdef __cplusplus
extern "C" {
#endif

#define UHMM_STATS_VERSION 1

/* Buckets of the fault-back latency histogram: bucket i counts fault-backs
 * that took [2^i, 2^(i+1)) ns (bucket 0 also counts 0 ns, the last one
 * everything longer). */
#define UHMM_STATS_LAT_BUCKETS 32

/*
 * Every counter, in structure order. New counters are only ever appended
 * (the structure's size tells a caller which ones it got). The same list
 * generates the CLI's JSON printer.
 */
#define UHMM_STAT_FIELDS(X)						\
	/* CPU faults on uhmm's userfaultfd served by its readers */	\
	X(faults)							\
	/* ... of them on a hole of a tracked range (first touch):	\
	 * the zero page was mapped */					\
	X(faults_first_touch)						\
	/* ... on a device-private page: the owner's migrate_to_ram	\
	 * ran (fault-back) */						\
	X(faults_back)							\
	/* ... on a page a device had exclusive access to: revoked */	\
	X(faults_exclusive_revoke)					\
	/* uhmm_range_fault() calls (device fault rounds and		\
	 * snapshots) */						\
	X(range_fault_calls)						\
	/* MADV_POPULATE runs range_fault issued to fault pages in */	\
	X(range_fault_populates)					\
	/* pages in those runs */					\
	X(range_fault_pages_faulted)					\
	/* range_fault re-scans of a chunk after faulting it in */	\
	X(range_fault_rewalks)						\
	/* uhmm_interval_check_retry() that saw the sequence move	\
	 * (range_fault's -EBUSY comes from there) */			\
	X(check_retries)						\
	/* uhmm_interval_read_retry() that told a driver to retry */	\
	X(read_retries)							\
	/* uhmm_migrate_finalize() and uhmm_migrate_device_finalize() \
	 * calls */							\
	X(migrations)							\
	/* pages and bytes committed to device memory */		\
	X(pages_to_device)						\
	X(bytes_to_device)						\
	/* pages and bytes committed back to system memory */		\
	X(pages_to_system)						\
	X(bytes_to_system)						\
	/* invalidations that reached at least one notifier, by event */ \
	X(inv_unmap)							\
	X(inv_clear)							\
	X(inv_protection_vma)						\
	X(inv_protection_page)						\
	X(inv_soft_dirty)						\
	X(inv_release)							\
	X(inv_migrate)							\
	X(inv_exclusive)						\
	/* UFFDIO_COPY/ZEROPAGE/MOVE that met an unread event (EAGAIN) \
	 * and had to wait for the reader */				\
	X(uffd_eagain)							\
	/* ... that found the page already there (EEXIST) */		\
	X(uffd_eexist)							\
	/* device pages handed out (uhmm_page_init()) and not yet	\
	 * freed: a gauge, not cleared by uhmm_stats_reset() */		\
	X(device_pages_in_use)

struct uhmm_stats {
	uint32_t version;	/* out: UHMM_STATS_VERSION */
	uint32_t size;		/* out: bytes filled in */
	/* out: time in migrate_to_ram per fault-back (the driver's copy
	 * and the install), on the uhmm thread serving the fault */
	uint64_t fault_back_ns_log2[UHMM_STATS_LAT_BUCKETS];
#define UHMM_STAT_FIELD_(name) uint64_t name;
	UHMM_STAT_FIELDS(UHMM_STAT_FIELD_)
#undef UHMM_STAT_FIELD_
};

/**
 * uhmm_stats_get() - read every counter
 * @out: out: the counters
 * @size: sizeof(*out) as the caller knows it; at least 8
 *
 * Fills min(@size, sizeof(struct uhmm_stats)) bytes and sets out->size
 * to that, so a program built against an older header gets the prefix
 * it knows.
 *
 * Context: any thread, lock-free; does not start the runtime.
 * Return: 0, or -EINVAL (NULL, @size < 8).
 */
UHMM_API int uhmm_stats_get(struct uhmm_stats *out, size_t size);

/**
 * uhmm_stats_reset() - set every counter to 0
 *
 * Gauges (device_pages_in_use) keep their value. Updates racing the
 * reset may survive it.
 */
UHMM_API void uhmm_stats_reset(void);

#ifdef __cplusplus
}
#endif

#endif /* UHMM_STATS_H */
