/* SPDX-License-Identifier: MIT */
/*
 * migrate_vma (the counterpart of mm/migrate_device.c's migrate_vma_*):
 * setup collects the pages of a range and takes them out of the address
 * space (collect, then unmap), the driver allocates and copies, pages
 * commits, finalize installs the destinations or puts the sources back.
 *
 * The kernel isolates a page in place (a migration entry in its PTE);
 * here a claimed page is BUSY in the per-page state (pstate.c) and a
 * system page waits in a staging slot (stage.c), moved there with
 * UFFDIO_MOVE, so that a CPU access faults to uhmm and waits. A device
 * page is pte_none at its address, in a range registered MISSING: a CPU
 * touch faults to a monitor thread (fault.c). Layer 4.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "mstate.h"

static void mstate_free(struct uhmm_rt *rt, struct mstate *ms)
{
	if (ms->gated)
		uhmm__gate_exit(rt);
	uhmm_free(ms->held);
	uhmm_free(ms->hres);
	uhmm_free(ms->puts);
	uhmm_free(ms->slot);
	uhmm_free(ms->cell);
	uhmm_free(ms->hs);
	uhmm_free(ms->hs_fate);
	uhmm_free(ms);
}

/*
 * SELECT_COMPOUND, device memory: a device THP installed whole at an
 * aligned block (its 512 pages in order, all collected) is reported as
 * its head with COMPOUND, the tail entries 0.
 */
static void collect_device_blocks(struct uhmm_rt *rt, struct uhmm_migrate *m)
{
	unsigned int shift = rt->page_shift;
	unsigned long first = (m->start + PMD_BYTES - 1) & ~(PMD_BYTES - 1);

	for (unsigned long b = first; b >= first && b + PMD_BYTES <= m->end;
	     b += PMD_BYTES) {
		unsigned long i = (b - m->start) >> shift, k;
		struct uhmm_page *p0 = uhmm_migrate_pfn_to_page(m->src[i]);

		if (!p0 || !(m->src[i] & UHMM_MIGRATE_PFN_MIGRATE) || p0->head != p0)
			continue;
		for (k = 1; k < PMD_PAGES; k++) {
			struct uhmm_page *pk = uhmm_migrate_pfn_to_page(m->src[i + k]);

			if (!pk || !(m->src[i + k] & UHMM_MIGRATE_PFN_MIGRATE) ||
			    pk->head != p0 || pk->index != p0->index + k)
				break;
		}
		if (k < PMD_PAGES)
			continue;
		m->src[i] |= UHMM_MIGRATE_PFN_COMPOUND;
		for (k = 1; k < PMD_PAGES; k++)
			m->src[i + k] = 0;
	}
}

/*
 * A COMPOUND entry that does not move whole becomes 512 base entries
 * (the kernel splits the folio): src, and dst when it is compound too.
 */
static void split_entry(struct uhmm_rt *rt, struct uhmm_migrate *m,
			unsigned long i)
{
	struct mstate *ms = mstate_of(m);
	uint64_t s = m->src[i] & ~UHMM_MIGRATE_PFN_COMPOUND;
	uint64_t d = m->dst[i];
	struct uhmm_page *sp = uhmm_migrate_pfn_to_page(s);
	struct uhmm_page *dp = uhmm_migrate_pfn_to_page(d);
	unsigned long n = m->npages - i < PMD_PAGES ? m->npages - i : PMD_PAGES;

	for (unsigned long k = 0; k < n; k++) {
		if (sp) {
			sp[k].head = NULL;
			m->src[i + k] = uhmm_migrate_pfn_device(&sp[k]) |
				(s & (UHMM_MIGRATE_PFN_MIGRATE | UHMM_MIGRATE_PFN_WRITE));
		} else {
			m->src[i + k] = (s & UHMM_MIGRATE_PFN_VALID) ?
				s + ((uint64_t)k << UHMM_MIGRATE_PFN_SHIFT) : s;
			if (hslot_of(ms->slot[i]))
				ms->slot[i + k] = ms->slot[i] + k;
		}
		if (!(d & UHMM_MIGRATE_PFN_COMPOUND))
			continue;
		if (dp)
			m->dst[i + k] = uhmm_migrate_pfn_device(&dp[k]) |
				(d & UHMM_MIGRATE_PFN_WRITE);
		else
			m->dst[i + k] = (d & ~UHMM_MIGRATE_PFN_COMPOUND) +
				((uint64_t)k << UHMM_MIGRATE_PFN_SHIFT);
	}
	if (!dp && (d & UHMM_MIGRATE_PFN_COMPOUND)) {
		long h = hstage_index(rt, (uintptr_t)uhmm_migrate_pfn_to_addr(d &
						~UHMM_MIGRATE_PFN_COMPOUND));

		if (h >= 0)
			hs_note(ms, h, HS_DONTNEED);
	}
}

/* Give back the claims setup made on entries [0, upto) (it failed). */
static void unclaim(struct uhmm_rt *rt, struct uhmm_migrate *m, unsigned long upto)
{
	struct mstate *ms = mstate_of(m);

	for (unsigned long i = 0; i < upto; i++) {
		struct uhmm_page *p = ms->cell[i].page;

		/* The faulting page stays its handler's claim. */
		if (ms->slot[i] == E_SLOT_CLAIMED)
			uhmm__pst_settle(rt, claim_where(ms, i), claim_of(ms, i), 0);
		else if (p && p != m->fault_page)
			uhmm__pst_settle(rt, claim_where(ms, i), claim_of(ms, i),
					 ent_mk_page(p));
	}
	if (upto)
		uhmm__os_uffd_wake(rt->uffd, m->start, upto << rt->page_shift);
}
/*
 * The checks of uhmm_migrate_setup(): the range lies in one VMA of base
 * pages. Says whether its pages can move at all (*anon: private
 * anonymous, not uhmm's arena) and whether the mapping is writable.
 */
static int setup_check(struct uhmm_rt *rt, const struct uhmm_migrate *m,
		       bool *anon, bool *writable, struct os_procmap_query *qp)
{
	struct os_procmap_query q;
	int r;

	if (m->start >= m->end || !uhmm__aligned(rt, m->start) ||
	    !uhmm__aligned(rt, m->end))
		return -EINVAL;
	if (rt->uffd < 0)
		return -ENOSYS;
	/* A munmap or madvise that returned has dropped its device pages
	 * (its event is read; applied right after the read). */
	if (atomic_load_explicit(&rt->has_device_pages, memory_order_relaxed))
		uhmm__wait_readers(rt);
	uhmm__stat_migrate_begin(m);
	r = uhmm__vma_query(rt, m->start, &q);
	if (r < 0 || q.vma_start > m->start || q.vma_end < m->end)
		return -EINVAL;
	if (q.vma_page_size > rt->page_size)
		return -EINVAL;		/* hugetlb */
	if (m->fault_page && !(m->flags & UHMM_MIGRATE_SELECT_DEVICE_PRIVATE))
		return -EINVAL;
	/* uhmm_alloc()'s arena is never migrated: as unmovable pages. */
	*anon = q.inode == 0 && q.dev_major == 0 && q.dev_minor == 0 &&
		!(q.vma_flags & OS_PROCMAP_QUERY_VMA_SHARED) &&
		!uhmm__alloc_owns(m->start, m->end);
	*writable = q.vma_flags & OS_PROCMAP_QUERY_VMA_WRITABLE;
	*qp = q;
	return 0;
}

static struct mstate *mstate_new(struct uhmm_rt *rt, struct uhmm_migrate *m,
				 unsigned long n)
{
	struct mstate *ms = uhmm_calloc(1, sizeof(*ms));

	if (!ms)
		return NULL;
	ms->slot = uhmm_alloc(n * sizeof(*ms->slot));
	ms->cell = uhmm_alloc(n * sizeof(*ms->cell));
	/* A 2 MiB slot per block, the driver's compound destinations too. */
	ms->hs = uhmm_alloc((n / 512 + 2) * sizeof(*ms->hs));
	ms->hs_fate = uhmm_alloc(n / 512 + 2);
	ms->held = uhmm_alloc(n * sizeof(*ms->held));
	ms->hres = uhmm_alloc((n / 512 + 2) * sizeof(*ms->hres));
	ms->puts = uhmm_alloc(n * sizeof(*ms->puts));
	if (!ms->slot || !ms->cell || !ms->hs || !ms->hs_fate || !ms->held ||
	    !ms->hres || !ms->puts) {
		mstate_free(rt, ms);
		return NULL;
	}
	if (!m->fault_page && !uhmm__on_monitor()) {
		uhmm__gate_enter(rt);
		ms->gated = true;
	}
	for (unsigned long i = 0; i < n; i++) {
		ms->slot[i] = E_SLOT_NONE;
		atomic_init(&ms->cell[i].vpn, (m->start >> rt->page_shift) + i);
		ms->cell[i].page = NULL;
	}
	for (unsigned long k = 0; k < n / 512 + 2; k++)
		ms->hres[k] = -1;
	memset(m->src, 0, n * sizeof(*m->src));
	m->cpages = 0;
	m->npages = n;
	m->_private[0] = (uintptr_t)ms;
	return ms;
}

/*
 * Collect (migrate_vma_collect): claim each page the flags select, BUSY
 * in its entry; src[] names the device pages collected. A leaf of the
 * state tree and a stripe both cover one 2 MiB block: one lookup and one
 * lock per block. Entries dropped since (their mapping went away) are
 * given back here: what is at their address now is new.
 */
/*
 * What the migrating thread itself touches until finalize returns: its
 * stack from below the call (uhmm's frames and the driver's callbacks
 * go deeper) to the top (the callers' frames), its descriptor and static
 * TLS (the canary every call reads, errno), its signal stack (a signal's
 * frame), the struct uhmm_migrate and the src and dst arrays; and what
 * every thread touches, the writable
 * data of the C library, the loader and libuhmm. Taken away, such a page
 * would fault while the thread's own claim (or the mover lock) holds it
 * (the kernel's thread runs in the kernel meanwhile, not on these
 * pages). They are not collected, like pinned pages (semantics M14, M15).
 */
#define SELF_N 6
struct self_ranges {
	unsigned long lo[SELF_N], hi[SELF_N];
	bool libdata;		/* the range meets the libraries' data */
};

/*
 * The calling thread's descriptor and static TLS: around its thread
 * pointer (alloc.c's estimate), within the mapping that holds it (the
 * main thread's is a small mapping of its own, which the application's
 * next mmap may sit right against). Once per thread.
 */
void uhmm__thread_area(struct uhmm_rt *rt, struct thread_area *ta)
{
	static _Thread_local unsigned long t_lo, t_hi;
	struct os_procmap_query q;
	unsigned long ss_lo, ss_hi;

	if (!t_hi) {
		unsigned long tp = (uintptr_t)__builtin_thread_pointer();

		uhmm__alloc_thread_area(&t_lo, &t_hi);
		if (uhmm__vma_query(rt, tp, &q) == 0 && q.vma_start <= tp) {
			if (t_lo < q.vma_start)
				t_lo = q.vma_start;
			if (t_hi > q.vma_end)
				t_hi = q.vma_end;
		}
	}
	ta->lo[0] = t_lo;
	ta->hi[0] = t_hi;
	/* Asked each time: a program may change it (one system call). */
	ta->lo[1] = ta->hi[1] = 0;
	if (uhmm__os_altstack(&ss_lo, &ss_hi) == 0) {
		ta->lo[1] = ss_lo & ~(rt->page_size - 1);
		ta->hi[1] = (ss_hi + rt->page_size - 1) & ~(rt->page_size - 1);
	}
}

static void self_ranges(const struct uhmm_migrate *m, struct self_ranges *r)
{
	const struct mstate *ms = (const struct mstate *)(uintptr_t)m->_private[0];
	unsigned long sp = (uintptr_t)__builtin_frame_address(0);
	unsigned long n = m->npages * sizeof(uint64_t);

	/* In the VMA of this thread's stack, everything from below the
	 * stack pointer to the top: every frame until finalize returns. */
	r->lo[0] = r->hi[0] = 0;
	if (sp >= ms->vma_start && sp < ms->vma_end) {
		r->lo[0] = sp > SELF_STACK ? sp - SELF_STACK : 0;
		r->hi[0] = ms->vma_end;
	}
	r->lo[1] = (uintptr_t)m;
	r->hi[1] = (uintptr_t)m + sizeof(*m);
	r->lo[2] = (uintptr_t)m->src;
	r->hi[2] = (uintptr_t)m->src + n;
	r->lo[3] = (uintptr_t)m->dst;
	r->hi[3] = (uintptr_t)m->dst + n;
	for (int k = 0; k < 2; k++) {
		r->lo[4 + k] = ms->ta.lo[k];
		r->hi[4 + k] = ms->ta.hi[k];
	}
	r->libdata = uhmm__alloc_libdata(m->start, m->end);
}

static bool is_self(const struct self_ranges *r, unsigned long a,
		    unsigned long ps)
{
	for (int k = 0; k < SELF_N; k++)
		if (a < r->hi[k] && a + ps > r->lo[k])
			return true;
	return r->libdata && uhmm__alloc_libdata(a, a + ps);
}

/*
 * Register [start, end) for missing-page faults, less the pages collect
 * never takes (the caller's descriptor, the libraries' data): a hole
 * there would fault to uhmm on first touch, and a reader of the process
 * whose threads are all stopped (LeakSanitizer's exit scan, gdb) would
 * wait for good on uhmm's stopped readers.
 */
static int register_missing(struct uhmm_rt *rt, unsigned long start,
			    unsigned long end, const struct thread_area *ta)
{
	unsigned long ps = rt->page_size, run = start;
	int err = 0;

	if (end <= start)
		return 0;
	if (!thread_area_hits(ta, start, end) && !uhmm__alloc_libdata(start, end))
		return uhmm__track_missing(rt, start, end);
	for (unsigned long a = start; a < end && !err; a += ps) {
		if (!thread_area_hits(ta, a, a + ps) && !uhmm__alloc_libdata(a, a + ps))
			continue;
		if (a > run)
			err = uhmm__track_missing(rt, run, a);
		run = a + ps;
	}
	if (!err && end > run)
		err = uhmm__track_missing(rt, run, end);
	return err;
}

static int collect(struct uhmm_rt *rt, struct uhmm_migrate *m, bool writable)
{
	struct mstate *ms = mstate_of(m);
	unsigned int shift = rt->page_shift;
	unsigned long n = m->npages, ndropped = 0;
	struct stripe *s = NULL;
	_Atomic uintptr_t *e = NULL;
	struct self_ranges self;

	self_ranges(m, &self);
	for (unsigned long i = 0; i < n; i++) {
		unsigned long vpn = (m->start >> shift) + i;
		struct uhmm_page *p;
		uintptr_t v;

		if (!s || !(vpn & (ST_FAN - 1))) {
			if (s)
				pthread_mutex_unlock(&s->lock);
			s = NULL;
			e = uhmm__pst_entry(rt, vpn, true);
			if (!e) {
				unclaim(rt, m, i);
				return -ENOMEM;
			}
			s = pst_stripe(rt, vpn);
			pthread_mutex_lock(&s->lock);
		} else {
			e++;
		}
		if (is_self(&self, vpn << shift, rt->page_size))
			continue;
		v = atomic_load(e);
		if (ent_released(v)) {
			/* Kept at the end of held[] until the locks are off. */
			ms->held[n - 1 - ndropped++] = (struct uhmm_page *)v;
			atomic_store(e, 0);
			v = 0;
		}
		p = ent_page(v);
		if (ent_busy(v)) {
			/* Only the page being faulted, by its handler. */
			if (p && p == m->fault_page && p->fault_claim) {
				ms->cell[i].page = p;
				m->src[i] = uhmm_migrate_pfn_device(p) |
					    UHMM_MIGRATE_PFN_MIGRATE |
					    (writable ? UHMM_MIGRATE_PFN_WRITE : 0);
				m->cpages++;
			}
		} else if (ent_exclusive(v) || ent_dropped(v)) {
			/* Exclusive to a device, or going away: stays. */
		} else if (p) {
			if (p->pgmap->owner != m->pgmap_owner) {
				/* Another device's: stays. */
			} else if (!is_coherent(p)) {
				if (m->flags & UHMM_MIGRATE_SELECT_DEVICE_PRIVATE) {
					atomic_store(e, v | ENT_BUSY);
					ms->cell[i].page = p;
					m->src[i] = uhmm_migrate_pfn_device(p) |
						    UHMM_MIGRATE_PFN_MIGRATE |
						    (writable ? UHMM_MIGRATE_PFN_WRITE : 0);
					m->cpages++;
				}
			} else if ((m->flags & UHMM_MIGRATE_SELECT_DEVICE_COHERENT) &&
				   writable) {
				atomic_store(e, v | ENT_BUSY);
				ms->cell[i].page = p;
				ms->slot[i] = E_SLOT_COH;	/* to isolate */
			}
		} else if ((m->flags & UHMM_MIGRATE_SELECT_SYSTEM) && writable) {
			atomic_store(e, ent_mk_cell(&ms->cell[i].vpn));
			ms->slot[i] = E_SLOT_CLAIMED;	/* to isolate */
		}
	}
	if (s)
		pthread_mutex_unlock(&s->lock);
	if (m->flags & UHMM_MIGRATE_SELECT_SYSTEM)
		uhmm__pst_note_device(rt);
	ms->ndropped = ndropped;
	return 0;
}

/* The released entries collect met, given back after the hold. */
static void release_dropped(struct uhmm_rt *rt, struct mstate *ms,
			    unsigned long n)
{
	for (unsigned long k = 0; k < ms->ndropped; k++) {
		uintptr_t dv = (uintptr_t)ms->held[n - 1 - k];

		ms->held[n - 1 - k] = NULL;
		uhmm__pst_release(rt, dv);
	}
	ms->ndropped = 0;
}

/*
 * The device pages collected are referenced until the end of finalize
 * (the kernel's folio_get on collection), so that their pagemap cannot
 * go while the driver copies them; a device THP collected whole is
 * reported as one COMPOUND entry.
 */
static void hold_pages(struct uhmm_rt *rt, struct uhmm_migrate *m)
{
	struct mstate *ms = mstate_of(m);

	for (unsigned long i = 0; i < m->npages; i++) {
		struct uhmm_page *p = uhmm_migrate_pfn_to_page(m->src[i]);

		if (p && (m->src[i] & UHMM_MIGRATE_PFN_MIGRATE)) {
			uhmm_page_get(p);
			ms->held[ms->nheld++] = p;
		}
	}
	if ((m->flags & UHMM_MIGRATE_SELECT_COMPOUND) && rt->hstage &&
	    (m->flags & UHMM_MIGRATE_SELECT_DEVICE_PRIVATE))
		collect_device_blocks(rt, m);
}

/* The page references dropped under the mover hold, given back after
 * it: a driver's page_free never runs with the readers held off. */
static void flush_puts(struct mstate *ms)
{
	for (unsigned long k = 0; k < ms->nputs; k++)
		uhmm_page_put(ms->puts[k]);
	ms->nputs = 0;
}

int uhmm_migrate_setup(struct uhmm_migrate *m)
{
	struct os_procmap_query q;
	struct uhmm_rt *rt;
	struct mstate *ms;
	bool anon, writable;
	int err = 0;

	if (!m || !m->src || !m->dst || !m->flags)
		return -EINVAL;
	rt = uhmm__rt_get(&err);
	if (!rt)
		return err;
	err = setup_check(rt, m, &anon, &writable, &q);
	if (err)
		return err;
	ms = mstate_new(rt, m, (m->end - m->start) >> rt->page_shift);
	if (!ms)
		return -ENOMEM;
	ms->vma_start = q.vma_start;
	ms->vma_end = q.vma_end;
	/*
	 * This thread's area (a VMA query once per thread, its signal stack
	 * every time) found now, once for the registration and the
	 * collection, not in collect: under the mover hold, a wait for a thread that
	 * faulted on a device page would be a deadlock. The libraries'
	 * segments were found when the runtime started (rt_create).
	 */
	uhmm__thread_area(rt, &ms->ta);
	/*
	 * The live part of this thread's stack is never collected (see
	 * self_ranges()), nor registered: a registration would split the
	 * stack's VMA, and the kernel's own faults on its fresh pages would
	 * go to uhmm (or fail, with UFFD_USER_MODE_ONLY).
	 */
	unsigned long sp = (uintptr_t)__builtin_frame_address(0);
	unsigned long reg_end = m->end;

	if (sp >= q.vma_start && sp < q.vma_end && sp > SELF_STACK &&
	    reg_end > sp - SELF_STACK)
		reg_end = (sp - SELF_STACK) & ~(rt->page_size - 1);
	if (reg_end < m->start)
		reg_end = m->start;
	/*
	 * Shared or file-backed VMAs: nothing moves (device migration needs
	 * anonymous memory in the kernel too). Read-only ones: device-private
	 * pages come back (installed by copy), but system and coherent pages
	 * stay: UFFDIO_MOVE takes pages out of writable mappings only.
	 */
	if (!anon)
		return 0;
	err = uhmm__stage_setup(rt);
	if (err)
		goto fail;

	/*
	 * Mirrors drop the range before anything moves, and the invalidation
	 * stays open (the sequence odd) until every page claimed is out of
	 * the address space: a range_fault that began before saw the old
	 * state and must retry, and one that begins meanwhile waits in
	 * read_begin (the kernel's invalidate_range_start/end around the
	 * collection). Closed after the claims only, a device round could
	 * map a claimed page still present, and the move then took it from
	 * under the device's entry: its copy through that entry faulted,
	 * with the driver lock held that the fault needed.
	 *
	 * The claims and the moves hold the readers off (the mover hold):
	 * no mapping change is applied in the middle of either, and one
	 * that happens makes the moves fail with EAGAIN. In between, the
	 * staging is set aside, which may have to wait for a reader.
	 */
	struct uhmm_notifier_range inv = {
		.start = m->start, .end = m->end, .event = UHMM_NOTIFY_MIGRATE,
		.flags = UHMM_NOTIFIER_RANGE_BLOCKABLE, .owner = m->pgmap_owner,
	};

	uhmm__inv_begin(rt, &inv);
	uhmm__mover_begin(rt);
	/*
	 * Registered MISSING under the hold, every time (track_missing()):
	 * a move out of a mapping uhmm does not watch would leave a hole a
	 * CPU touch fills with zeros. Not for device-private pages coming
	 * home: they left a VMA registered then, whose mode moved with it.
	 */
	if (m->flags & (UHMM_MIGRATE_SELECT_SYSTEM |
			UHMM_MIGRATE_SELECT_DEVICE_COHERENT))
		err = register_missing(rt, m->start, reg_end, &ms->ta);
	if (!err)
		err = collect(rt, m, writable);
	uhmm__mover_end(rt);
	release_dropped(rt, ms, m->npages);
	if (!err) {
		uhmm__migrate_prepare(rt, m);
		uhmm__mover_begin(rt);
		uhmm__migrate_unmap(rt, m, writable);
		uhmm__mover_end(rt);
		flush_puts(ms);
		hold_pages(rt, m);
	}
	uhmm__inv_end(rt);
	if (err)
		goto fail;
	/* 2 MiB slots set aside and not used (a block let go). */
	for (unsigned long k = 0; k < m->npages / PMD_PAGES + 2; k++)
		if (ms->hres[k] >= 0)
			uhmm__hstage_free(rt, (unsigned long)ms->hres[k], false);
	/* The faulting page is this migration's now, no longer a claim its
	 * handler has to give up. */
	if (m->fault_page) {
		unsigned long fvpn = atomic_load(&m->fault_page->vpn);
		struct stripe *fs = pst_stripe(rt, fvpn);

		pthread_mutex_lock(&fs->lock);
		for (unsigned long i = 0; i < m->npages; i++)
			if (uhmm_migrate_pfn_to_page(m->src[i]) == m->fault_page)
				m->fault_page->fault_claim = 0;
		pthread_mutex_unlock(&fs->lock);
	}
	return 0;
fail:
	mstate_free(rt, ms);
	m->_private[0] = 0;
	m->cpages = 0;
	return err;
}

/* A COMPOUND source with a COMPOUND destination of the other kind. */
static bool moves_whole(const struct uhmm_migrate *m, unsigned long i)
{
	uint64_t s = m->src[i], d = m->dst[i];
	uint64_t both = UHMM_MIGRATE_PFN_COMPOUND | UHMM_MIGRATE_PFN_VALID;

	return (s & UHMM_MIGRATE_PFN_COMPOUND) && (s & UHMM_MIGRATE_PFN_MIGRATE) &&
	       (d & both) == both && m->npages - i >= PMD_PAGES &&
	       !(s & d & UHMM_MIGRATE_PFN_DEVICE);
}

void uhmm_migrate_pages(struct uhmm_migrate *m)
{
	struct uhmm_rt *rt = uhmm__rt_peek();

	if (!m || !m->src || !m->dst || !mstate_of(m) || !rt)
		return;
	for (unsigned long i = 0; i < m->npages; i++) {
		if (!(m->src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			continue;
		if (m->src[i] & UHMM_MIGRATE_PFN_COMPOUND) {
			if (moves_whole(m, i)) {
				i += PMD_PAGES - 1;
				continue;
			}
			split_entry(rt, m, i);
		}
		if (!(m->dst[i] & UHMM_MIGRATE_PFN_VALID))
			m->src[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
		/* Device to device is not supported. */
		else if ((m->src[i] & UHMM_MIGRATE_PFN_DEVICE) &&
			 (m->dst[i] & UHMM_MIGRATE_PFN_DEVICE))
			m->src[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
	}
}

/* Claims an mremap moved out of the range: their waiters, woken there. */
static void wake_moved(struct uhmm_rt *rt, unsigned long addr, unsigned long len)
{
	uhmm__pst_wake(rt, addr, addr + len);
	uhmm__os_uffd_wake(rt->uffd, addr, len);
}

/*
 * Device -> system entries [i, j) whose destinations are consecutive
 * staging slots: one MOVE for the run (a MOVE per page costs a system
 * call each). Returns the entries installed from i, 0 if none.
 */
static unsigned long install_run(struct uhmm_rt *rt, struct uhmm_migrate *m,
				 unsigned long i)
{
	struct mstate *ms = mstate_of(m);
	unsigned int shift = rt->page_shift;
	long first = -1;
	unsigned long j = i, vpn0 = 0;

	while (j < m->npages) {
		uint64_t src = m->src[j];
		struct uhmm_page *sp = uhmm_migrate_pfn_to_page(src);
		unsigned long vpn;
		long slot;
		_Atomic uintptr_t *e;
		uintptr_t v;

		if (!(src & UHMM_MIGRATE_PFN_MIGRATE) || !sp)
			break;
		slot = stage_index(rt, (uintptr_t)uhmm_migrate_pfn_to_addr(m->dst[j]));
		if (slot < 0 || (first >= 0 && slot != first + (long)(j - i)))
			break;
		/* Where the claims are now: consecutive too. */
		vpn = atomic_load(&sp->vpn);
		if (first >= 0 && vpn != vpn0 + (j - i))
			break;
		e = uhmm__pst_entry(rt, vpn, false);
		v = e ? atomic_load(e) : 0;
		if (!e || ent_dropped(v) || !ent_is_claim(v, claim_of(ms, j)))
			break;
		if (first < 0) {
			first = slot;
			vpn0 = vpn;
		}
		j++;
	}
	if (j - i < 2)
		return 0;
	if (uhmm__uffd_move(rt, vpn0 << shift, stage_addr(rt, (unsigned long)first),
			    (j - i) << shift, UFFDIO_MOVE_MODE_DONTWAKE))
		return 0;	/* per page, below, finds what moved */
	for (unsigned long k = i; k < j; k++) {
		unsigned long vpn = vpn0 + (k - i);
		struct uhmm_page *sp = uhmm_migrate_pfn_to_page(m->src[k]);

		uhmm__stage_free(rt, (unsigned long)first + (k - i), false);
		atomic_store(&sp->vpn, 0);
		uhmm__pst_set(rt, vpn, uhmm__pst_entry(rt, vpn, false), 0);
		ms->puts[ms->nputs++] = sp;
	}
	if (vpn0 != (m->start >> shift) + i)
		wake_moved(rt, vpn0 << shift, (j - i) << shift);
	return j - i;
}

/*
 * Finalize a COMPOUND entry as a whole: a THP to a device THP (the 512
 * device pages take the block, the source's huge page stays in its slot,
 * warm) or back (one UFFDIO_MOVE of the PMD). Returns false after
 * splitting the entry when it cannot go whole: it did not migrate, the
 * destination is not compound, or part of the mapping went away.
 */
static bool finalize_whole(struct uhmm_rt *rt, struct uhmm_migrate *m,
			   unsigned long i)
{
	struct mstate *ms = mstate_of(m);
	unsigned int shift = rt->page_shift;
	unsigned long addr, vpn0;
	_Atomic uintptr_t *e;
	struct stripe *s;
	struct uhmm_page *sp = uhmm_migrate_pfn_to_page(m->src[i]);
	struct uhmm_page *dp = uhmm_migrate_pfn_to_page(m->dst[i]);
	bool drop;
again:
	/* Where the claims are now (an mremap moves them): whole, aligned,
	 * ours and mapped, or the block splits. */
	vpn0 = atomic_load(claim_where(ms, i));
	addr = vpn0 << shift;
	e = (vpn0 & (PMD_PAGES - 1)) ? NULL : uhmm__pst_entry(rt, vpn0, false);
	s = pst_stripe(rt, vpn0);
	drop = !e;
	for (unsigned long k = 0; e && k < PMD_PAGES && !drop; k++) {
		uintptr_t v = atomic_load(&e[k]);

		drop = atomic_load(claim_where(ms, i + k)) != vpn0 + k ||
		       ent_dropped(v) || !ent_is_claim(v, claim_of(ms, i + k));
	}
	if (drop || !moves_whole(m, i)) {
		split_entry(rt, m, i);
		return false;
	}
	if (!sp) {
		/* System THP (or empty block) -> a device THP. */
		unsigned long rs = atomic_load(&rt->read_seq);

		pthread_mutex_lock(&s->lock);
		for (unsigned long k = 0; k < PMD_PAGES; k++) {
			dp[k].head = dp;
			atomic_store(&dp[k].vpn, vpn0 + k);
			atomic_store(&dp[k].mig_seq, rs);
			atomic_store(&e[k], (uintptr_t)&dp[k]);
		}
		pthread_mutex_unlock(&s->lock);
		hs_note(ms, (long)((ms->slot[i] - STAGE_PAGES) / PMD_PAGES),
			(m->src[i] & UHMM_MIGRATE_PFN_VALID) ? HS_FULL : HS_EMPTY);
		if (vpn0 != (m->start >> shift) + i)
			wake_moved(rt, addr, PMD_BYTES);
		return true;
	}
	/* Device THP -> a system THP: the PMD moves in whole. */
	unsigned long da = (uintptr_t)uhmm_migrate_pfn_to_addr(m->dst[i] &
					~UHMM_MIGRATE_PFN_COMPOUND);
	long h = hstage_index(rt, da);
	uint8_t fate = HS_EMPTY;
	int r = uhmm__uffd_move(rt, addr, da, PMD_BYTES, UFFDIO_MOVE_MODE_DONTWAKE);

	if (r == -EAGAIN && uhmm__mover_yield(rt))
		goto again;	/* a mapping change pending: applied, check */
	if (r) {
		/* A mapping made read-only meanwhile: a copy. */
		r = uhmm__uffd_copy(rt, addr, da, PMD_BYTES, UFFDIO_COPY_MODE_DONTWAKE);
		fate = HS_DONTNEED;
	}
	if (h >= 0)
		hs_note(ms, h, r ? HS_DONTNEED : fate);
	pthread_mutex_lock(&s->lock);
	for (unsigned long k = 0; k < PMD_PAGES; k++) {
		if (r) {
			atomic_store(&e[k], (uintptr_t)&sp[k]);	/* stays */
			continue;
		}
		sp[k].head = NULL;
		atomic_store(&sp[k].vpn, 0);
		atomic_store(&e[k], 0);
	}
	pthread_mutex_unlock(&s->lock);
	if (!r)
		for (unsigned long k = 0; k < PMD_PAGES; k++)
			ms->puts[ms->nputs++] = &sp[k];
	if (vpn0 != (m->start >> shift) + i)
		wake_moved(rt, addr, PMD_BYTES);
	return true;
}

unsigned long uhmm__finalize_device_page(struct uhmm_rt *rt, struct uhmm_page *p,
					 long slot, bool migrate,
					 struct uhmm_page **put)
{
	const uintptr_t claim = ent_mk_page(p) | ENT_BUSY;
	bool emptied = false, back = false;
	unsigned long vpn, addr;
	_Atomic uintptr_t *e;
	int r;

	*put = NULL;
	for (;;) {
		uintptr_t v;

		/* Where the claim is now: an mremap moves it. */
		vpn = atomic_load(&p->vpn);
		addr = vpn << rt->page_shift;
		e = vpn ? uhmm__pst_entry(rt, vpn, false) : NULL;
		v = e ? atomic_load(e) : 0;
		if (!ent_is_claim(v, claim) || ent_dropped(v)) {
			/* The mapping went away during the migration (or a
			 * MAP_FIXED mremap replaced it): the entry is not ours. */
			if (slot >= 0)
				uhmm__stage_free(rt, (unsigned long)slot, true);
			atomic_store(&p->vpn, 0);
			if (ent_is_claim(v, claim))
				uhmm__pst_set(rt, vpn, e, 0);
			*put = p;
			return 0;
		}
		if (back) {
			/* It stays on the device: a coherent frame goes back
			 * to the address. */
			if (!is_coherent(p) ||
			    uhmm__coherent_install(rt, p, addr) != -EAGAIN ||
			    !uhmm__mover_yield(rt))
				break;
			continue;
		}
		if (!migrate || slot < 0) {
			back = true;
			continue;
		}
		r = uhmm__stage_install(rt, addr, (unsigned long)slot, &emptied);
		if (r == 0) {
			uhmm__stage_free(rt, (unsigned long)slot, !emptied);
			atomic_store(&p->vpn, 0);
			uhmm__pst_set(rt, vpn, e, 0);
			*put = p;
			return addr;
		}
		/* A mapping change pending: applied, then checked again. */
		if (r != -EAGAIN || !uhmm__mover_yield(rt)) {
			uhmm__stage_free(rt, (unsigned long)slot, true);
			slot = -1;
			back = true;
		}
	}
	if (slot >= 0)
		uhmm__stage_free(rt, (unsigned long)slot, true);
	uhmm__pst_set(rt, vpn, e, ent_mk_page(p));
	return addr;
}

/* A system page (or hole) collected, entry @i, to the device page
 * dst[i], or back where it was: where its claim is now (an mremap moves
 * it). Returns the address it settled at, 0 if its mapping went away. */
static unsigned long finalize_system_page(struct uhmm_rt *rt,
					  struct uhmm_migrate *m,
					  unsigned long i)
{
	struct mstate *ms = mstate_of(m);
	struct uhmm_page *dp = uhmm_migrate_pfn_to_page(m->dst[i]);
	unsigned long slot = ms->slot[i], vpn, addr;
	uint64_t src = m->src[i];
	bool migrate = src & UHMM_MIGRATE_PFN_MIGRATE;
	bool full = src & UHMM_MIGRATE_PFN_VALID;
	bool emptied = false;
	_Atomic uintptr_t *e;
	uintptr_t v;
	int r = 0;

again:
	vpn = atomic_load(&ms->cell[i].vpn);
	addr = vpn << rt->page_shift;
	e = uhmm__pst_entry(rt, vpn, false);
	v = e ? atomic_load(e) : 0;
	if (!ent_is_claim(v, claim_of(ms, i)) || ent_dropped(v)) {
		/* The mapping went away during the migration (or a
		 * MAP_FIXED mremap replaced it: the entry is not ours). */
		if (slot != E_SLOT_NONE)
			uhmm__stage_free(rt, slot, full);
		if (ent_is_claim(v, claim_of(ms, i)))
			uhmm__pst_set(rt, vpn, e, 0);
		if (migrate && dp)
			ms->puts[ms->nputs++] = dp;
		return 0;
	}
	/* Coherent: the device's frame, with the data the driver copied, is
	 * mapped at the address. */
	if (migrate && dp && is_coherent(dp) &&
	    (r = uhmm__coherent_install(rt, dp, addr))) {
		if (r == -EAGAIN && uhmm__mover_yield(rt))
			goto again;
		/* Not migrated: the driver puts dp. */
		m->src[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
		migrate = false;
	}
	if (migrate && dp) {
		atomic_store(&dp->vpn, vpn);
		atomic_store(&dp->mig_seq, atomic_load(&rt->read_seq));
		uhmm__pst_set(rt, vpn, e, ent_mk_page(dp));
		if (slot != E_SLOT_NONE)
			uhmm__stage_free(rt, slot, full);
		return addr;
	}
	if (slot != E_SLOT_NONE && full) {
		/* Put the page back where it was. */
		r = uhmm__stage_install(rt, addr, slot, &emptied);
		if (r == -EAGAIN && uhmm__mover_yield(rt))
			goto again;
		if (r == 0)
			full = !emptied;
	}
	if (slot != E_SLOT_NONE)
		uhmm__stage_free(rt, slot, full);
	uhmm__pst_set(rt, vpn, e, 0);
	return addr;
}

void uhmm_migrate_finalize(struct uhmm_migrate *m)
{
	struct uhmm_rt *rt = uhmm__rt_peek();
	struct mstate *ms;

	if (!m || !rt || !(ms = mstate_of(m)))
		return;
	uhmm__stat_migrate_end(m->start, m->src, m->dst, m->npages,
			       rt->page_size);
	/* Pages go in with the readers held off (setup's unmap). */
	uhmm__mover_begin(rt);
	for (unsigned long i = 0; i < m->npages; i++) {
		if ((m->src[i] & UHMM_MIGRATE_PFN_COMPOUND) && finalize_whole(rt, m, i)) {
			i += PMD_PAGES - 1;
			continue;
		}
		unsigned long run = install_run(rt, m, i);

		if (run) {
			i += run - 1;
			continue;
		}
		unsigned long addr = m->start + (i << rt->page_shift), at;
		struct uhmm_page *sp = uhmm_migrate_pfn_to_page(m->src[i]);

		/*
		 * Not collected by this migration. A BUSY entry here belongs
		 * to another one (a fault-back of an overlapping window, a
		 * migration of the same pages by another thread): not ours to
		 * touch.
		 */
		if (!sp && ms->slot[i] == E_SLOT_NONE)
			continue;
		if (sp) {
			struct uhmm_page *put;

			at = uhmm__finalize_device_page(rt, sp,
				stage_index(rt, (uintptr_t)uhmm_migrate_pfn_to_addr(m->dst[i])),
				m->src[i] & UHMM_MIGRATE_PFN_MIGRATE, &put);
			if (put)
				ms->puts[ms->nputs++] = put;
		} else {
			at = finalize_system_page(rt, m, i);
		}
		if (at && at != addr)
			wake_moved(rt, at, rt->page_size);
	}
	uhmm__mover_end(rt);
	flush_puts(ms);
	/* The 2 MiB slots: warm huge pages stay, others are emptied. */
	for (unsigned long k = 0; k < ms->nhs; k++) {
		if (ms->hs_fate[k] == HS_DONTNEED)
			uhmm__os_madvise((void *)hstage_addr(rt, (unsigned long)ms->hs[k]),
					 PMD_BYTES, MADV_DONTNEED);
		uhmm__hstage_free(rt, (unsigned long)ms->hs[k], ms->hs_fate[k] == HS_FULL);
	}
	/* Pages that left the device go back to their driver before the
	 * faulting threads run on, as in the kernel. */
	for (unsigned long k = 0; k < ms->nheld; k++)
		uhmm_page_put(ms->held[k]);
	uhmm__pst_wake(rt, m->start, m->end);
	/* Threads that faulted on pages that stayed holes fault again. */
	uhmm__os_uffd_wake(rt->uffd, m->start, m->end - m->start);
	mstate_free(rt, ms);
	m->_private[0] = 0;
}
