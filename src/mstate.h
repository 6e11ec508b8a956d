/* SPDX-License-Identifier: MIT */
/*
 * Layer 4 of src/ (docs/design.md): the state of one migrate_vma between
 * setup and finalize, shared by migrate.c (collect, pages, finalize) and
 * isolate.c (unmap). Includes only mm.h and below. Never installed.
 */
#ifndef UHMM_MSTATE_H
#define UHMM_MSTATE_H

#include "mm.h"

/* What uhmm keeps per entry between setup and finalize. */
#define E_SLOT_NONE (~0UL)
#define E_SLOT_CLAIMED (~0UL - 1)	/* a system page to isolate */
#define E_SLOT_COH (~0UL - 2)	/* a coherent page to isolate */
#define E_SLOT_RESV (1UL << 40)	/* | slot: set aside, not moved yet */

/* What finalize does with a 2 MiB slot the migration used. */
enum { HS_DONTNEED, HS_EMPTY, HS_FULL };

/*
 * Where an entry's claim is now (devmem.h: claims follow mremap): the
 * device page's vpn for a device page, else the cell, which a system
 * page's claim names. Starts at the entry's own VPN.
 */
struct mcell {
	_Alignas(16) _Atomic unsigned long vpn;
	struct uhmm_page *page;		/* a device page claimed, or NULL */
};

struct mstate {
	unsigned long *slot;	/* staging slot holding the source, per entry */
	struct mcell *cell;	/* per entry */
	unsigned long nhs;	/* 2 MiB slots in use, and their fate */
	long *hs;
	uint8_t *hs_fate;
	/*
	 * Device pages collected: referenced from setup to the end of
	 * finalize (the kernel's folio_get on collection), so that their
	 * pagemap cannot go while the driver copies them.
	 */
	struct uhmm_page **held;
	unsigned long nheld;
	unsigned long ndropped;	/* released entries, at the end of held[] */
	long *hres;		/* 2 MiB slot set aside per aligned block, or -1 */
	struct uhmm_page **puts;	/* references to drop after the hold */
	unsigned long nputs;
	bool gated;		/* counted in rt->mig_inflight */
	unsigned long vma_start, vma_end;	/* the range's VMA */
	struct thread_area ta;	/* the caller's, found once at setup */
};

static inline struct mstate *mstate_of(struct uhmm_migrate *m)
{
	return (struct mstate *)(uintptr_t)m->_private[0];
}

static inline void hs_note(struct mstate *ms, long h, uint8_t fate)
{
	for (unsigned long k = 0; k < ms->nhs; k++) {
		if (ms->hs[k] == h) {
			ms->hs_fate[k] = fate;
			return;
		}
	}
	ms->hs[ms->nhs] = h;
	ms->hs_fate[ms->nhs++] = fate;
}

/*
 * During setup, an entry's ms->slot[] is E_SLOT_NONE (not collected, or
 * let go), E_SLOT_CLAIMED (a system page claimed), E_SLOT_COH (a
 * coherent page claimed), E_SLOT_RESV | s (staging slot s set aside for
 * it, not moved yet) or s (moved into slot s).
 */
static inline bool is_resv(unsigned long x)
{
	return x < E_SLOT_COH && (x & E_SLOT_RESV);
}

static inline unsigned long resv_slot(unsigned long x)
{
	return x & ~E_SLOT_RESV;
}

/* Where entry @i's claim is now, and the claim that says it is ours. */
static inline _Atomic unsigned long *claim_where(struct mstate *ms,
						 unsigned long i)
{
	return ms->cell[i].page ? &ms->cell[i].page->vpn : &ms->cell[i].vpn;
}
static inline uintptr_t claim_of(struct mstate *ms, unsigned long i)
{
	return ms->cell[i].page ? ent_mk_page(ms->cell[i].page) | ENT_BUSY :
				  ent_mk_cell(&ms->cell[i].vpn);
}

/* isolate.c: the unmap phase of setup (migrate_vma_unmap). */
UHMM_INTERNAL void uhmm__migrate_prepare(struct uhmm_rt *rt,
					 struct uhmm_migrate *m);
UHMM_INTERNAL void uhmm__migrate_unmap(struct uhmm_rt *rt,
				       struct uhmm_migrate *m, bool writable);

#endif /* UHMM_MSTATE_H */
