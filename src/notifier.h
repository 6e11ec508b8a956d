/* SPDX-License-Identifier: MIT */
/*
 * Layer 2 of src/ (docs/design.md): interval notifiers and the
 * invalidation sequence (notifier.c, the counterpart of
 * mm/mmu_notifier.c). Includes only rt.h (layer 1) and below.
 * Never installed.
 */
#ifndef UHMM_NOTIFIER_H
#define UHMM_NOTIFIER_H

#include "rt.h"

struct uhmm_interval_notifier {
	unsigned long start;
	unsigned long end;	/* exclusive; start + length */
	const struct uhmm_interval_notifier_ops *ops;
	void *priv;
	struct uhmm_rt *rt;
	_Atomic unsigned long invalidate_seq;
	bool in_tree;		/* in rt->subs (not a deferred add) */
	bool deferred_add;
	bool deferred_remove;
	struct uhmm_interval_notifier *dnext;	/* rt->deferred list */
};

UHMM_INTERNAL int uhmm__notifier_init(struct uhmm_rt *rt);
UHMM_INTERNAL void uhmm__notifier_destroy(struct uhmm_rt *rt);
/* One invalidation of [start, end): begin, then end. */
UHMM_INTERNAL void uhmm__invalidate(struct uhmm_rt *rt, unsigned long start,
				    unsigned long end,
				    enum uhmm_notifier_event event,
				    const void *owner);
/* invalidate_range_start: calls back the notifiers it hits; returns with
 * the invalidation open (whether one was hit); uhmm__inv_end() closes. */
UHMM_INTERNAL bool uhmm__inv_begin(struct uhmm_rt *rt,
				   const struct uhmm_notifier_range *r);
UHMM_INTERNAL void uhmm__inv_end(struct uhmm_rt *rt);
/* Shutdown: every notifier gets a RELEASE invalidation. */
UHMM_INTERNAL void uhmm__release_all(struct uhmm_rt *rt);
UHMM_INTERNAL bool uhmm__sub_valid(const struct uhmm_interval_notifier *sub,
				   struct uhmm_rt *rt);

#endif /* UHMM_NOTIFIER_H */
