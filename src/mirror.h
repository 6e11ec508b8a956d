/* SPDX-License-Identifier: MIT */
/*
 * Layer 3 of src/ (docs/design.md): what the runtime knows of the
 * address space (track.c): the ranges registered on its userfaultfd, the
 * access range_fault granted; the MISSING registration of what migrates
 * (made every time, never cached: track_missing()); uffd events and found
 * differences turned into invalidations.
 * Includes only notifier.h (layer 2) and below. Never installed.
 */
#ifndef UHMM_MIRROR_H
#define UHMM_MIRROR_H

#include "notifier.h"

/* Access granted by range_fault in a tracked interval. */
#define TRACK_R		1u
#define TRACK_W		2u
#define TRACK_SHARED	4u

UHMM_INTERNAL int uhmm__track_init(struct uhmm_rt *rt);
UHMM_INTERNAL void uhmm__track_destroy(struct uhmm_rt *rt);
/* range_fault is about to report pages of VMA @q in [start, end). */
UHMM_INTERNAL int uhmm__track_vma(struct uhmm_rt *rt,
				  const struct os_procmap_query *q,
				  unsigned long start, unsigned long end);
/* Register [start, end) MISSING|WP once, so device pages fault to us. */
UHMM_INTERNAL int uhmm__track_missing(struct uhmm_rt *rt, unsigned long start,
				      unsigned long end);
/* On a reader: registrations follow munmap/mremap at once. */
UHMM_INTERNAL void uhmm__track_event_early(struct uhmm_rt *rt,
					   const struct uffd_msg *m);
/* On the worker: the event's invalidation. */
UHMM_INTERNAL void uhmm__track_event(struct uhmm_rt *rt,
				     const struct uffd_msg *m);
UHMM_INTERNAL void uhmm__track_overflow(struct uhmm_rt *rt);
UHMM_INTERNAL int uhmm__revalidate(struct uhmm_rt *rt, unsigned long start,
				   unsigned long end);
/* fork: write access leaves every mirror, invalidations held open. */
UHMM_INTERNAL void uhmm__track_fork_prepare(struct uhmm_rt *rt);
UHMM_INTERNAL void uhmm__track_fork_parent(struct uhmm_rt *rt);

#endif /* UHMM_MIRROR_H */
