/* SPDX-License-Identifier: MIT */
/*
 * The unmap phase of migrate_vma setup (the counterpart of
 * migrate_vma_unmap in mm/migrate_device.c): the pages collect claimed
 * leave the application's address space. The kernel leaves a migration
 * entry in the PTE; here a system page moves with UFFDIO_MOVE into a
 * staging slot (stage.c) set aside beforehand, a whole THP into a 2 MiB
 * slot, a coherent frame home to its pool, all under the mover hold
 * (monitor.c): a mapping change meanwhile makes a move fail with EAGAIN,
 * and the claims are checked again. Layer 4.
 */
#include <errno.h>
#include <string.h>

#include "mstate.h"

/* Let a claimed system page go: it stays where it is. */
static void let_go(struct uhmm_rt *rt, struct uhmm_migrate *m, unsigned long i)
{
	struct mstate *ms = mstate_of(m);

	if (is_resv(ms->slot[i]))
		uhmm__stage_free(rt, resv_slot(ms->slot[i]), false);
	ms->slot[i] = E_SLOT_NONE;
	m->src[i] = 0;
	/* The claim, wherever an mremap took it. */
	uhmm__pst_settle(rt, claim_where(ms, i), claim_of(ms, i), 0);
}

/*
 * Under the mover hold: a claimed page whose mapping went away since the
 * claim (its entry DROP: the event was read and applied) is let go; what
 * is at its address now belongs to a new mapping. So is one an mremap
 * moved (the page went with the mapping, still in place there: as if
 * the mremap came before the setup, which the kernel's mmap lock would
 * have made it).
 */
static void revalidate(struct uhmm_rt *rt, struct uhmm_migrate *m,
		       unsigned long from, unsigned long to)
{
	struct mstate *ms = mstate_of(m);

	for (unsigned long i = from; i < to; i++) {
		unsigned long vpn = atomic_load(&ms->cell[i].vpn);
		_Atomic uintptr_t *e;
		uintptr_t v;

		if (!is_resv(ms->slot[i]) && ms->slot[i] != E_SLOT_CLAIMED)
			continue;
		e = uhmm__pst_entry(rt, vpn, false);
		v = e ? atomic_load(e) : 0;
		if (vpn != (m->start >> rt->page_shift) + i || ent_dropped(v) ||
		    !ent_is_claim(v, claim_of(ms, i)))
			let_go(rt, m, i);
	}
}

/* Whether the 2 MiB block at @b can move whole: one PMD maps it (a THP,
 * the huge zero page), or no page at all. */
static bool block_whole(struct uhmm_rt *rt, unsigned long b)
{
	struct os_page_region reg[2];
	struct os_pm_scan_arg a = {
		.size = sizeof(a), .start = b, .end = b + PMD_BYTES,
		.vec = (uintptr_t)reg, .vec_len = 2,
		.category_anyof_mask = OS_PAGE_IS_PRESENT,
		.return_mask = OS_PAGE_IS_PRESENT | OS_PAGE_IS_HUGE,
	};
	int n = uhmm__os_pagemap_scan(rt->pagemap_fd, &a);

	if (n == 0)
		return true;
	return n == 1 && reg[0].start == b && reg[0].end == b + PMD_BYTES &&
	       (reg[0].categories & OS_PAGE_IS_HUGE);
}

/*
 * Staging for the system pages collect claimed, set aside before the
 * unmap: allocating may empty warm slots with MADV_DONTNEED, which waits
 * for a reader to read its event, so never under the mover hold. A 4 KiB
 * slot for every page claimed, and for SELECT_COMPOUND a 2 MiB slot for
 * each aligned block all claimed that one PMD maps (or nothing). Without
 * room, pages stay.
 */
void uhmm__migrate_prepare(struct uhmm_rt *rt, struct uhmm_migrate *m)
{
	struct mstate *ms = mstate_of(m);
	unsigned int shift = rt->page_shift;
	unsigned long first = (m->start + PMD_BYTES - 1) & ~(PMD_BYTES - 1);
	unsigned long n = m->npages;

	if ((m->flags & UHMM_MIGRATE_SELECT_COMPOUND) &&
	    (m->flags & UHMM_MIGRATE_SELECT_SYSTEM) && rt->hstage) {
		for (unsigned long b = first; b >= first && b + PMD_BYTES <= m->end;
		     b += PMD_BYTES) {
			unsigned long i = (b - m->start) >> shift, k;

			for (k = 0; k < PMD_PAGES && ms->slot[i + k] == E_SLOT_CLAIMED; k++)
				;
			if (k == PMD_PAGES && block_whole(rt, b))
				ms->hres[(b - first) / PMD_BYTES] =
					uhmm__hstage_alloc(rt, SLOT_EMPTY);
		}
	}
	for (unsigned long i = 0; i < n;) {
		unsigned long j = i;
		long slot;

		if (ms->slot[i] != E_SLOT_CLAIMED) {
			i++;
			continue;
		}
		while (j < n && ms->slot[j] == E_SLOT_CLAIMED)
			j++;
		slot = uhmm__stage_alloc(rt, j - i, SLOT_EMPTY);
		for (unsigned long k = i; k < j; k++) {
			if (slot < 0)
				let_go(rt, m, k);	/* no staging room */
			else
				ms->slot[k] = E_SLOT_RESV | ((unsigned long)slot + k - i);
		}
		i = j;
	}
}

/* src[] of entries [from, to) moved into 4 KiB slots: a page, or a hole. */
static void note_moved(struct uhmm_rt *rt, struct uhmm_migrate *m,
		       unsigned long from, unsigned long to, bool writable)
{
	struct mstate *ms = mstate_of(m);
	unsigned int shift = rt->page_shift;

	for (unsigned long i = from; i < to;) {
		unsigned long s0 = ms->slot[i], j = i + 1;
		unsigned char vbuf[512];

		if (s0 == E_SLOT_NONE || is_resv(s0) || s0 >= E_SLOT_COH) {
			i++;
			continue;
		}
		while (j < to && j - i < sizeof(vbuf) && ms->slot[j] == s0 + (j - i))
			j++;
		/* Which slots got a page? One mincore for the run. */
		if (uhmm__os_mincore((void *)stage_addr(rt, s0), (j - i) << shift, vbuf))
			memset(vbuf, 1, j - i);
		for (unsigned long k = i; k < j; k++) {
			m->src[k] = UHMM_MIGRATE_PFN_MIGRATE;
			if (vbuf[k - i] & 1)
				m->src[k] |= ((stage_addr(rt, ms->slot[k]) >> shift)
					      << UHMM_MIGRATE_PFN_SHIFT) |
					     UHMM_MIGRATE_PFN_VALID |
					     (writable ? UHMM_MIGRATE_PFN_WRITE : 0);
			m->cpages++;
		}
		i = j;
	}
}

/*
 * After a move that failed part-way: how many pages from @a left (a hole
 * of the mapping counts, as the kernel migrates pte_none). An address
 * with no mapping stops the count: the page went with an mremap, or a
 * munmap took it, and nothing of it moved. Counted as moved, it went to
 * the device as zeros, recorded where the page was then put back.
 */
static unsigned long count_moved(struct uhmm_rt *rt, unsigned long a,
				 unsigned long n)
{
	unsigned long moved = 0;

	while (moved < n) {
		unsigned char vec;

		if (uhmm__os_mincore((void *)(a + (moved << rt->page_shift)),
				     rt->page_size, &vec) || (vec & 1))
			break;
		moved++;
	}
	return moved;
}

/*
 * Under the mover hold: the claimed system pages of [from, to) with
 * slots set aside move out, one UFFDIO_MOVE per run of consecutive
 * slots. A page that cannot move (shared, pinned) stays. EAGAIN (an
 * event is pending: the address space is changing): the readers read it,
 * the claims are checked again, and the rest moves.
 */
static void isolate_runs(struct uhmm_rt *rt, struct uhmm_migrate *m,
			 unsigned long from, unsigned long to, bool writable)
{
	struct mstate *ms = mstate_of(m);
	unsigned int shift = rt->page_shift;

	for (unsigned long i = from; i < to;) {
		unsigned long s0, j, moved;
		int r;

		if (!is_resv(ms->slot[i])) {
			i++;
			continue;
		}
		s0 = resv_slot(ms->slot[i]);
		for (j = i + 1; j < to && is_resv(ms->slot[j]) &&
		     resv_slot(ms->slot[j]) == s0 + (j - i); j++)
			;
		r = uhmm__uffd_move(rt, stage_addr(rt, s0), m->start + (i << shift),
				    (j - i) << shift, UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES);
		moved = r == 0 ? j - i : count_moved(rt, m->start + (i << shift), j - i);
		for (unsigned long k = i; k < i + moved; k++)
			ms->slot[k] = resv_slot(ms->slot[k]);
		note_moved(rt, m, i, i + moved, writable);
		i += moved;
		if (i == j)
			continue;
		if (r == -EAGAIN && uhmm__mover_yield(rt)) {
			revalidate(rt, m, i, to);
			continue;
		}
		let_go(rt, m, i++);
	}
}

/*
 * Under the mover hold, SELECT_COMPOUND, system memory: each block with a
 * 2 MiB slot set aside moves whole, one UFFDIO_MOVE of the PMD: src[head]
 * = frame | COMPOUND (VALID unless it was empty), the tail entries 0, as
 * the kernel has it. A move that fails part-way leaves what moved in the
 * 2 MiB slot, page by page (its 4 KiB slot numbers), and the rest goes
 * with the base pages.
 */
static void isolate_blocks(struct uhmm_rt *rt, struct uhmm_migrate *m,
			   bool writable)
{
	struct mstate *ms = mstate_of(m);
	unsigned int shift = rt->page_shift;
	unsigned long first = (m->start + PMD_BYTES - 1) & ~(PMD_BYTES - 1);

	for (unsigned long b = first; b >= first && b + PMD_BYTES <= m->end;
	     b += PMD_BYTES) {
		unsigned long bi = (b - first) / PMD_BYTES;
		unsigned long i = (b - m->start) >> shift, k;
		long h = ms->hres[bi];
		unsigned char vec[PMD_PAGES];
		unsigned long ha;
		bool any = false;
		int r = 0;

		if (h < 0)
			continue;
		ms->hres[bi] = -1;
		ha = hstage_addr(rt, (unsigned long)h);
		do {
			for (k = 0; k < PMD_PAGES && is_resv(ms->slot[i + k]); k++)
				;
			if (k < PMD_PAGES) {
				/* Part of it was let go: page by page. */
				uhmm__hstage_free(rt, (unsigned long)h, false);
				break;
			}
			r = uhmm__uffd_move(rt, ha, b, PMD_BYTES,
					    UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES);
		} while (r == -EAGAIN && uhmm__mover_yield(rt) &&
			 (revalidate(rt, m, i, i + PMD_PAGES), true));
		if (k < PMD_PAGES)
			continue;
		if (uhmm__os_mincore((void *)ha, PMD_BYTES, vec))
			memset(vec, 1, sizeof(vec));
		for (k = 0; k < PMD_PAGES && !any; k++)
			any = vec[k] & 1;
		if (r) {
			/* What moved stays in the 2 MiB slot, per page. */
			for (k = 0; k < PMD_PAGES; k++) {
				if (!(vec[k] & 1))
					continue;
				uhmm__stage_free(rt, resv_slot(ms->slot[i + k]), false);
				ms->slot[i + k] = STAGE_PAGES + (unsigned long)h * PMD_PAGES + k;
			}
			hs_note(ms, h, any ? HS_DONTNEED : HS_EMPTY);
			note_moved(rt, m, i, i + PMD_PAGES, writable);
			continue;
		}
		for (k = 0; k < PMD_PAGES; k++) {
			uhmm__stage_free(rt, resv_slot(ms->slot[i + k]), false);
			ms->slot[i + k] = E_SLOT_NONE;
			m->src[i + k] = 0;
		}
		ms->slot[i] = STAGE_PAGES + (unsigned long)h * PMD_PAGES;
		hs_note(ms, h, any ? HS_DONTNEED : HS_EMPTY);
		m->src[i] = UHMM_MIGRATE_PFN_MIGRATE | UHMM_MIGRATE_PFN_COMPOUND;
		if (any)
			m->src[i] |= ((ha >> shift) << UHMM_MIGRATE_PFN_SHIFT) |
				     UHMM_MIGRATE_PFN_VALID |
				     (writable ? UHMM_MIGRATE_PFN_WRITE : 0);
		m->cpages += PMD_PAGES;
	}
}


/*
 * Under the mover hold: coherent pages claimed have their frames go home
 * to the pool. A frame whose mapping went away went with it: the page
 * goes back to its driver (after the hold).
 */
static void unmap_coherent(struct uhmm_rt *rt, struct uhmm_migrate *m)
{
	struct mstate *ms = mstate_of(m);
	unsigned int shift = rt->page_shift;

	for (unsigned long i = 0; i < m->npages; i++) {
		if (ms->slot[i] != E_SLOT_COH)
			continue;
		struct uhmm_page *p = ms->cell[i].page;
		const uintptr_t claim = ent_mk_page(p) | ENT_BUSY;
		int r;

		ms->slot[i] = E_SLOT_NONE;
		for (;;) {
			/* Where the claim is now: an mremap moves it. */
			unsigned long vpn = atomic_load(&p->vpn);
			_Atomic uintptr_t *ce = vpn ? uhmm__pst_entry(rt, vpn, false) : NULL;
			uintptr_t v = ce ? atomic_load(ce) : 0;

			if (!ent_is_claim(v, claim) || ent_dropped(v)) {
				atomic_store(&p->vpn, 0);
				if (ent_is_claim(v, claim))
					uhmm__pst_set(rt, vpn, ce, 0);
				ms->puts[ms->nputs++] = p;
				break;
			}
			r = uhmm__coherent_isolate(rt, p, vpn << shift);
			if (r == -EINTR || (r == -EAGAIN && uhmm__mover_yield(rt)))
				continue;	/* the hold was let go: again */
			if (r == 0) {
				m->src[i] = uhmm_migrate_pfn_device(p) |
					    UHMM_MIGRATE_PFN_MIGRATE | UHMM_MIGRATE_PFN_WRITE;
				m->cpages++;
			} else {
				/* Shared copy-on-write with a child, pinned: it
				 * stays. */
				uhmm__pst_set(rt, vpn, ce, ent_mk_page(p));
			}
			break;
		}
	}
}

/*
 * Unmap (migrate_vma_unmap), under the mover hold: every page claimed
 * leaves the address space (coherent frames to their pool, system pages
 * to the staging slots set aside, whole THPs to 2 MiB slots). Claims
 * whose mapping went away since collect are let go first.
 */
void uhmm__migrate_unmap(struct uhmm_rt *rt, struct uhmm_migrate *m,
			 bool writable)
{
	revalidate(rt, m, 0, m->npages);
	unmap_coherent(rt, m);
	if ((m->flags & UHMM_MIGRATE_SELECT_COMPOUND) && rt->hstage &&
	    (m->flags & UHMM_MIGRATE_SELECT_SYSTEM))
		isolate_blocks(rt, m, writable);
	isolate_runs(rt, m, 0, m->npages, writable);
}
