/* SPDX-License-Identifier: MIT */
/*
 * Layer 0 of src/ (docs/design.md, src/LAYERS): what every file may use
 * and that knows nothing of the runtime. os.h (every system call),
 * stats.h (counters and probes), alloc.c (memory uhmm never migrates),
 * guard.c (the fault-safe copy), ivset.c (sorted interval sets).
 * Includes only system headers, the public headers and layer 0.
 * Never installed.
 */
#ifndef UHMM_BASE_H
#define UHMM_BASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uhmm/uhmm.h>
#include "os.h"
#include "stats.h"

#define UHMM_INTERNAL __attribute__((visibility("hidden")))

/* Built with AddressSanitizer or ThreadSanitizer, whose runtimes own
 * sigaction() (their interceptors). */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UHMM_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define UHMM_SANITIZED 1
#endif
#endif

/* ---- ivset.c: a sorted set of disjoint intervals, each with a value ---- */

struct ival {
	unsigned long start;
	unsigned long end;
	unsigned int prot;	/* the value: TRACK_* for grants (track.c) */
};

struct ivset {
	struct ival *v;
	size_t n;
	size_t cap;
};

/* Set [start, end) to @prot (0 removes it); -ENOMEM. */
UHMM_INTERNAL int uhmm__ivset_set(struct ivset *s, unsigned long start,
				  unsigned long end, unsigned int prot);
/* Whether intervals with a non-zero value cover all of [start, end). */
UHMM_INTERNAL bool uhmm__ivset_covers(const struct ivset *s,
				      unsigned long start, unsigned long end);
/* First index whose interval ends after @addr. */
UHMM_INTERNAL size_t uhmm__ivset_first(const struct ivset *s,
				       unsigned long addr);
/* The value at @addr, 0 when none. */
UHMM_INTERNAL unsigned int uhmm__ivset_value_at(const struct ivset *s,
						unsigned long addr);
UHMM_INTERNAL void uhmm__ivset_free(struct ivset *s);

/* ---- alloc.c ---- */

/* Whether [start, end) overlaps uhmm_alloc()'s arena (never migrated). */
UHMM_INTERNAL bool uhmm__alloc_owns(unsigned long start, unsigned long end);
/* [start, end) overlaps the writable data of the C library, the loader
 * or libuhmm, which is never migrated either. */
UHMM_INTERNAL bool uhmm__alloc_libdata(unsigned long start, unsigned long end);
/* Around the calling thread's pointer: its descriptor (struct pthread,
 * with the stack-protector canary and the robust list) and static TLS. */
UHMM_INTERNAL void uhmm__alloc_thread_area(unsigned long *lo, unsigned long *hi);

/* ---- guard.c ---- */

/* The SIGSEGV/SIGBUS handler behind uhmm_copy_nofault(); idempotent. */
UHMM_INTERNAL int uhmm__guard_install(void);

#endif /* UHMM_BASE_H */
