/* SPDX-License-Identifier: MIT */
/*
 * A CPU fault on a registered page (the counterpart of do_swap_page's
 * device branches in mm/memory.c): a MISSING fault, read by a monitor
 * thread, is decoded from the page's entry (pstate.c) and served by one
 * function per entry kind: a hole gets the zero page as a first touch
 * would, an exclusive entry is revoked (exclusive.c), a device-private
 * page comes back through its owner's migrate_to_ram (a failure retried,
 * then poisoned; a decline asked again, backing off, until it agrees;
 * the callback learns the faulting thread and the VMA's bounds),
 * a claimed page is left to its claimer. Read-ahead widens
 * migrate_to_ram's window on sequential faults. Layer 4.
 */
#include <errno.h>
#include <time.h>

#include "mm.h"

/* migrate_to_ram attempts for one CPU fault before it gets SIGBUS. */
#define FAULT_BACK_TRIES 4
/* Retries of one fault for other reasons (EINTR, a claim let go) before
 * the thread is woken to fault again. Declines do not count. */
#define FAULT_TRIES 1000
/* The longest wait between two calls of a migrate_to_ram that declines. */
#define FAULT_DECLINE_MAX_MS 32

/*
 * DONE: the fault is settled (the thread woken, or left to whoever will
 * wake it). AGAIN: decode the entry again now. DECLINED: migrate_to_ram
 * returned 0 and the page is still on the device, unclaimed.
 */
enum fault_ret { FAULT_DONE, FAULT_AGAIN, FAULT_DECLINED };

/*
 * A hole: the zero page, as a first touch would. Called with the stripe
 * lock held, so that no migration claims the page in between: a stale
 * message (its page came back, then went again) would else map the zero
 * page where the migration just took the data out. One attempt: a retry
 * on EAGAIN waits for the reader, which takes stripe locks.
 */
static enum fault_ret fault_hole(struct uhmm_rt *rt, unsigned long addr,
				 struct stripe *s, int *counted)
{
	int64_t done;
	int r;

	/* Counted before the zero page wakes the thread. */
	if (!(*counted)++)
		uhmm__stat_fault_missing(addr);
	r = uhmm__os_uffd_zeropage(rt->uffd, addr, rt->page_size, 0, &done);
	pthread_mutex_unlock(&s->lock);
	if (r == -EINTR)
		return FAULT_AGAIN;
	if (r == -EAGAIN) {
		/* An unread event (this reader is the one to read it): the
		 * thread faults again later. */
		uhmm__os_uffd_wake(rt->uffd, addr, rt->page_size);
		return FAULT_DONE;
	}
	if (r == 0)
		return FAULT_DONE;
	/*
	 * EEXIST: the page is there. ENOENT: the mapping is gone (unmapped
	 * since the fault was read); the kernel wakes nobody at munmap, and
	 * a thread faulting from kernel mode (MADV_POPULATE_READ under
	 * uhmm_range_fault) would wait for good: it retries and fails
	 * (tests/chaos/repro/populate_vs_munmap.c). Wake whoever waits.
	 */
	uhmm__os_uffd_wake(rt->uffd, addr, rt->page_size);
	return FAULT_DONE;
}

/*
 * Sequential faults widen the window, up to 2 MiB, in the direction of
 * the access (memcpy may copy backwards). The window stays inside the
 * fault's 2 MiB block and inside vmf->vm_start/vm_end, as a kernel
 * driver's fault-around stays inside vmf->vma: beyond lies other memory
 * (a library's .bss next to a heap mapping), which a driver trying
 * smaller ranges would migrate and register, though nothing of it is on
 * a device. No VMA known: the page alone.
 */
static void fault_window(struct uhmm_rt *rt, unsigned long addr,
			 struct uhmm_fault *vmf)
{
	unsigned long vpn = addr >> rt->page_shift;
	unsigned long last = atomic_load_explicit(&rt->last_fault_vpn, memory_order_relaxed);
	unsigned long ra = atomic_load_explicit(&rt->ra_pages, memory_order_relaxed);
	unsigned long lo = addr & ~((512ul << rt->page_shift) - 1);
	unsigned long hi = lo + (512ul << rt->page_shift);
	bool down = vpn + 1 == last || vpn + ra == last;

	if (vpn == last + 1 || vpn == last + ra || down)
		ra = ra < 512 ? ra * 2 : 512;
	else
		ra = 1;
	atomic_store_explicit(&rt->ra_pages, ra, memory_order_relaxed);
	atomic_store_explicit(&rt->last_fault_vpn, vpn, memory_order_relaxed);
	if (!vmf->vm_end) {
		lo = addr;
		hi = addr + rt->page_size;
	}
	if (lo < vmf->vm_start)
		lo = vmf->vm_start;
	if (hi > vmf->vm_end)
		hi = vmf->vm_end;
	if (down) {
		vmf->ra_end = addr + rt->page_size;
		vmf->ra_start = addr - ((ra - 1) << rt->page_shift);
		if (vmf->ra_start < lo || vmf->ra_start > addr)
			vmf->ra_start = lo;
	} else {
		vmf->ra_start = addr;
		vmf->ra_end = addr + (ra << rt->page_shift);
		if (vmf->ra_end > hi || vmf->ra_end < addr)
			vmf->ra_end = hi;
	}
}

/* Wait for a retry of a failed migrate_to_ram: 2, 4, 8 ms, or a wake. */
static void fault_backoff(struct stripe *s, int failures)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += 1000 * 1000L << failures;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&s->lock);
	pthread_cond_timedwait(&s->cond, &s->lock, &ts);
	pthread_mutex_unlock(&s->lock);
}

/*
 * Give up the claim of fault @read_seq on @p where it is now (p->vpn: an
 * mremap moves it, devmem.h; 0 once a migration took the page), unless
 * a migration collected it, keeping DROP (a munmap meanwhile released the
 * page; left BUSY, the entry stayed claimed for good and the access was
 * never woken: tests/chaos/repro/populate_vs_munmap.c), and wake the
 * entry's waiters. Returns the entry there, *at its VPN.
 */
static uintptr_t fault_give_up(struct uhmm_rt *rt, struct uhmm_page *p,
			       unsigned long read_seq, unsigned long *at)
{
	for (;;) {
		unsigned long vpn = atomic_load(&p->vpn);
		_Atomic uintptr_t *e = vpn ? uhmm__pst_entry(rt, vpn, false) : NULL;
		struct stripe *s = pst_stripe(rt, vpn);
		uintptr_t v;

		pthread_mutex_lock(&s->lock);
		v = e ? atomic_load(e) : 0;
		if (ent_is_claim(v, ent_mk_page(p) | ENT_BUSY) &&
		    p->fault_claim == read_seq) {
			p->fault_claim = 0;
			v &= ~ENT_BUSY;
			atomic_store(e, v);
		}
		pthread_cond_broadcast(&s->cond);
		pthread_mutex_unlock(&s->lock);
		if (atomic_load(&p->vpn) == vpn) {
			*at = vpn;
			return v;
		}
	}
}

/*
 * A device-private page: claimed for this fault (BUSY, fault_claim) and
 * brought back by its owner's migrate_to_ram, whose setup collects it.
 * Called with the stripe lock held; returns with it released.
 */
static enum fault_ret fault_device_held(struct uhmm_rt *rt, unsigned long addr,
					_Atomic uintptr_t *e, struct uhmm_page *p,
					bool write, pid_t tid, unsigned long read_seq,
					int *failures)
{
	struct stripe *s = pst_stripe(rt, addr >> rt->page_shift);
	struct uhmm_fault vmf = { 0 };
	struct os_procmap_query q;
	unsigned long at;
	uintptr_t v;
	int r;

	atomic_store(e, ent_mk_page(p) | ENT_BUSY);
	p->fault_claim = read_seq;
	pthread_mutex_unlock(&s->lock);

	vmf.address = addr;
	vmf.page = p;
	vmf.flags = write ? UHMM_FAULT_WRITE : 0;
	vmf.tid = tid;
	/* vmf->vma's bounds: the VMA as it is now (the faulting thread
	 * waits, with no mmap lock held). */
	if (uhmm__vma_query(rt, addr, &q) == 0 && q.vma_start <= addr &&
	    addr < q.vma_end) {
		vmf.vm_start = q.vma_start;
		vmf.vm_end = q.vma_end;
	}
	fault_window(rt, addr, &vmf);
	uhmm__take_eagain();
	uhmm__stat_fault_back_begin(addr);
	r = p->pgmap->ops->migrate_to_ram(&vmf);
	uhmm__stat_fault_back_end(addr, r);

	/*
	 * Not collected: the claim is still this fault's, given up.
	 * Collected: the migration's finalize settled the entry, and a BUSY
	 * there now is another claim's. Moved away (an mremap before the
	 * migration collected it), or taken home (p->vpn 0): the faulting
	 * thread faults again, at an address no longer mapped or mapped
	 * anew (as after the kernel's mremap), or on the page installed.
	 */
	v = fault_give_up(rt, p, read_seq, &at);
	if (at != addr >> rt->page_shift) {
		if (at)
			uhmm__os_uffd_wake(rt->uffd, at << rt->page_shift,
					   rt->page_size);
		uhmm__os_uffd_wake(rt->uffd, addr, rt->page_size);
		return FAULT_DONE;
	}
	if (v && uhmm__take_eagain()) {
		/*
		 * The install met an unread event (a munmap, an mremap): the
		 * page stays on the device, and this reader goes back to
		 * reading; the thread is woken and faults again, after the
		 * event.
		 */
		uhmm__os_uffd_wake(rt->uffd, addr, rt->page_size);
		return FAULT_DONE;
	}
	if (r < 0 && v && ++*failures < FAULT_BACK_TRIES) {
		/* A transient failure (memory, a racing mapping change): the
		 * kernel would retry at the next access; the access is still
		 * waiting here, so retry now. */
		fault_backoff(s, *failures);
		return FAULT_AGAIN;
	}
	if (r < 0 && v) {
		/*
		 * VM_FAULT_SIGBUS: a poisoned page makes the access fail.
		 * Unlike the kernel's one-shot SIGBUS, the marker stays
		 * (semantics M13). A mapping gone meanwhile takes no
		 * marker: the thread is woken, and its access fails or finds
		 * what is there now.
		 */
		if (uhmm__os_uffd_poison(rt->uffd, addr, rt->page_size))
			uhmm__os_uffd_wake(rt->uffd, addr, rt->page_size);
		return FAULT_DONE;
	}
	/* Installed: the MOVE woke the faulting threads. */
	if (!v)
		return FAULT_DONE;
	/* migrate_to_ram declined (returned 0 and left the page where it
	 * is): the kernel would retry the access; ask again, later. */
	if (r == 0 && v == ent_mk_page(p))
		return FAULT_DECLINED;
	/* Claimed by another migration, or dropped: decode it again. */
	return FAULT_AGAIN;
}

/*
 * fault_device_held() with @p's pagemap held for its duration (its
 * puts-in-progress count, which uhmm_pagemap_destroy() waits for): once
 * the migration took the page, the page may be freed and the device
 * closed, and the fault still reads where its claim went (p->vpn). Not a
 * page reference: the page goes back to its driver before the faulting
 * thread runs on, as in the kernel. Called with the stripe lock held
 * (the entry's reference keeps p alive until then).
 */
static enum fault_ret fault_device(struct uhmm_rt *rt, unsigned long addr,
				   _Atomic uintptr_t *e, struct uhmm_page *p,
				   bool write, pid_t tid, unsigned long read_seq,
				   int *failures)
{
	struct uhmm_pagemap *pg = p->pgmap;
	enum fault_ret r;

	atomic_fetch_add(&pg->putting, 1);
	r = fault_device_held(rt, addr, e, p, write, tid, read_seq, failures);
	atomic_fetch_sub_explicit(&pg->putting, 1, memory_order_release);
	return r;
}

/*
 * After migrate_to_ram declined for the @declines-th time in a row: wait
 * 1, 2, 4, ... up to FAULT_DECLINE_MAX_MS ms, or until the entry changes
 * (a migration took the page, a munmap dropped it), and until no reader
 * is applying an event. The kernel re-executes the access at once and
 * calls migrate_to_ram again, as often as the driver declines; here the
 * faulting thread sleeps in the kernel, so the retries need not burn a
 * CPU. Returns false when the runtime is stopping: the caller wakes the
 * thread, which faults again (on a runtime that is going away).
 */
static bool fault_decline_wait(struct uhmm_rt *rt, struct stripe *s,
			       _Atomic uintptr_t *e, uintptr_t v, int declines)
{
	long ms = declines < 16 ? 1L << (declines - 1) : FAULT_DECLINE_MAX_MS;
	struct timespec ts;
	bool stop;

	if (ms > FAULT_DECLINE_MAX_MS)
		ms = FAULT_DECLINE_MAX_MS;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += ms * 1000 * 1000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&s->lock);
	while (atomic_load(e) == v &&
	       pthread_cond_timedwait(&s->cond, &s->lock, &ts) == 0)
		;
	pthread_mutex_unlock(&s->lock);
	pthread_mutex_lock(&rt->qlock);
	stop = rt->qstop;
	pthread_mutex_unlock(&rt->qlock);
	if (stop)
		return false;
	uhmm__wait_readers(rt);
	return true;
}

/*
 * A coherent page: the CPU addresses it, so it never migrates on a
 * fault. Its frame is mapped at @addr (a stale message: nothing to do),
 * or sits in its pool slot (a finalize could not put it back), or the
 * slot is empty (a page of zeros): uhmm__coherent_install() tells them
 * apart. Installed like any page going in, under the mover hold and the
 * stripe lock, and only while the entry is still @v: a migration that
 * claims the page and takes its frame out meanwhile must not find
 * another page there on its way back: the data would read as zeros
 * (test_inject, inject_coherent_frame_not_back_keeps_data). Called with
 * the stripe lock held; returns with it released.
 */
static void fault_coherent(struct uhmm_rt *rt, unsigned long addr,
			   _Atomic uintptr_t *e, uintptr_t v, struct stripe *s)
{
	pthread_mutex_unlock(&s->lock);
	uhmm__mover_begin(rt);
	pthread_mutex_lock(&s->lock);
	if (atomic_load(e) == v)
		uhmm__coherent_install(rt, ent_page(v), addr);
	pthread_mutex_unlock(&s->lock);
	uhmm__mover_end(rt);
	uhmm__os_uffd_wake(rt->uffd, addr, rt->page_size);
}

/*
 * A MISSING fault at @addr, on a monitor thread. Device page: its owner's
 * migrate_to_ram. Page being migrated: wait for the migration. Nothing:
 * a hole of a registered range; map the zero page, as a first touch
 * would.
 */
void uhmm__handle_fault(struct uhmm_rt *rt, unsigned long addr, bool write,
			pid_t tid, unsigned long read_seq)
{
	unsigned long vpn = addr >> rt->page_shift;
	struct stripe *s = pst_stripe(rt, vpn);
	int failures = 0, counted = 0, declines = 0, tries = 0;

	addr &= ~(rt->page_size - 1);
	uhmm__wait_readers(rt);
	while (tries++ < FAULT_TRIES) {
		_Atomic uintptr_t *e = uhmm__pst_entry(rt, vpn, false);
		struct uhmm_page *p;
		uintptr_t v;

		pthread_mutex_lock(&s->lock);
		v = e ? atomic_load(e) : 0;
		if (ent_released(v))
			v = 0;		/* released: a fresh page */
		if (ent_exclusive(v) && !ent_busy(v)) {
			uhmm__exclusive_revoke(rt, addr, e, v);
			return;
		}
		if (ent_busy(v)) {
			/*
			 * Being migrated (or faulted back by another reader).
			 * Not waited for here: a reader that sleeps on it
			 * stops reading events, and the migration may need one
			 * read (its UFFDIO_MOVE meets an unread munmap). Whoever
			 * holds the claim wakes the range when it lets go, and
			 * the thread faults again then.
			 */
			pthread_mutex_unlock(&s->lock);
			return;
		}
		if (!v) {
			if (fault_hole(rt, addr, s, &counted) == FAULT_AGAIN)
				continue;
			return;
		}
		p = ent_page(v);
		if (is_coherent(p)) {
			fault_coherent(rt, addr, e, v, s);
			return;
		}
		if (atomic_load(&p->mig_seq) >= read_seq) {
			/*
			 * The page went to the device after this message was
			 * read: the thread that faulted got its page before
			 * (a stale message). Wake only; a thread that really
			 * waits faults again and is served then.
			 */
			pthread_mutex_unlock(&s->lock);
			uhmm__os_uffd_wake(rt->uffd, addr, rt->page_size);
			return;
		}
		switch (fault_device(rt, addr, e, p, write, tid, read_seq,
				     &failures)) {
		case FAULT_DONE:
			return;
		case FAULT_DECLINED:
			/* For as long as the driver declines: the access
			 * waits for it, as in the kernel. */
			tries = 0;
			if (!fault_decline_wait(rt, s, e, ent_mk_page(p),
						++declines)) {
				uhmm__os_uffd_wake(rt->uffd, addr, rt->page_size);
				return;
			}
			break;
		case FAULT_AGAIN:
			break;
		}
	}
	/* Never leave the thread asleep: it faults again, and a reader
	 * serves the new message. */
	uhmm__os_uffd_wake(rt->uffd, addr, rt->page_size);
}

int uhmm__fault_init(struct uhmm_rt *rt)
{
	rt->ra_pages = 1;
	return 0;
}
