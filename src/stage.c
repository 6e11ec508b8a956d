/* SPDX-License-Identifier: MIT */
/*
 * Staging slots: where a system page waits outside the application's
 * address space while a migration runs, and where a page coming back from
 * a device is filled before it is put in place. The kernel isolates pages
 * in place (a migration entry in the PTE); user space cannot, so pages
 * move with UFFDIO_MOVE between the application and these regions of
 * uhmm's, and circulate warm: a page moved out to go to a device is the
 * page the next migration back to system memory fills. Layer 3.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "devmem.h"

/*
 * A region of uhmm's, registered (write-protect mode, so nothing traps)
 * so that it can be the destination of UFFDIO_MOVE. Slot states: EMPTY
 * (pte_none: a MOVE destination) or FULL (a page: a copy destination).
 */
/*
 * Staging for whole THPs: 2 MiB-aligned slots in a MADV_HUGEPAGE region,
 * so that UFFDIO_MOVE moves a PMD in or out whole, and a copy into an
 * empty slot gets a huge page. Same states as the 4 KiB slots.
 */

static void hstage_init(struct uhmm_rt *rt)
{
	size_t len = HSTAGE_SLOTS * PMD_BYTES;
	uintptr_t a, b;
	int err;
	void *p;

	if (rt->page_size != 4096)
		return;
	p = uhmm__os_mmap(NULL, len + PMD_BYTES, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0, &err);
	if (p == MAP_FAILED)
		return;
	a = (uintptr_t)p;
	b = (a + PMD_BYTES - 1) & ~(PMD_BYTES - 1);
	if (b > a)
		uhmm__os_munmap(p, b - a);
	if (a + PMD_BYTES > b)
		uhmm__os_munmap((void *)(b + len), a + PMD_BYTES - b);
	rt->hstage_state = uhmm_calloc(HSTAGE_SLOTS, 1);
	if (!rt->hstage_state ||
	    uhmm__os_madvise((void *)b, len, MADV_HUGEPAGE) ||
	    uhmm__os_uffd_register(rt->uffd, b, len, UFFDIO_REGISTER_MODE_WP, NULL)) {
		uhmm_free(rt->hstage_state);
		rt->hstage_state = NULL;
		uhmm__os_munmap((void *)b, len);
		return;
	}
	rt->hstage = (void *)b;
}

static long hstage_reclaim(struct uhmm_rt *rt);

long uhmm__hstage_alloc(struct uhmm_rt *rt, int want)
{
	long r = -ENOMEM;

	if (!rt->hstage)
		return -ENOMEM;
	pthread_mutex_lock(&rt->stage_lock);
	for (int pass = 0; pass < 2 && r < 0; pass++) {
		for (unsigned long k = 0; k < HSTAGE_SLOTS; k++) {
			unsigned long i = (rt->hstage_hint + k) % HSTAGE_SLOTS;
			uint8_t st = __atomic_load_n(&rt->hstage_state[i], __ATOMIC_ACQUIRE);

			if ((st & SLOT_USED) || (pass == 0 && st != want))
				continue;
			if (pass == 1 && want == SLOT_EMPTY)
				break;
			__atomic_store_n(&rt->hstage_state[i], st | SLOT_USED,
					 __ATOMIC_RELAXED);
			rt->hstage_hint = i + 1;
			r = (long)i;
			break;
		}
	}
	pthread_mutex_unlock(&rt->stage_lock);
	if (r < 0 && want == SLOT_EMPTY)
		r = hstage_reclaim(rt);
	return r;
}

/* No EMPTY slot: empty a FULL one (its warm huge page goes). */
static long hstage_reclaim(struct uhmm_rt *rt)
{
	long r = -ENOMEM;

	pthread_mutex_lock(&rt->stage_lock);
	for (unsigned long i = 0; i < HSTAGE_SLOTS; i++) {
		if (__atomic_load_n(&rt->hstage_state[i], __ATOMIC_ACQUIRE) == SLOT_FULL) {
			__atomic_store_n(&rt->hstage_state[i], SLOT_FULL | SLOT_USED,
					 __ATOMIC_RELAXED);
			r = (long)i;
			break;
		}
	}
	pthread_mutex_unlock(&rt->stage_lock);
	if (r >= 0)
		uhmm__os_madvise((void *)hstage_addr(rt, (unsigned long)r), PMD_BYTES,
			   MADV_DONTNEED);
	return r;
}

void uhmm__hstage_free(struct uhmm_rt *rt, unsigned long i, bool full)
{
	__atomic_store_n(&rt->hstage_state[i], full ? SLOT_FULL : SLOT_EMPTY,
			 __ATOMIC_RELEASE);
}

static int stage_setup(struct uhmm_rt *rt)
{
	int err;
	void *p;

	if (rt->stage)
		return 0;
	p = uhmm__os_mmap(NULL, STAGE_PAGES << rt->page_shift, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0, &err);
	if (p == MAP_FAILED)
		return err;
	uhmm__os_madvise(p, STAGE_PAGES << rt->page_shift, MADV_NOHUGEPAGE);
	rt->stage_state = uhmm_calloc(STAGE_PAGES, 1);
	if (!rt->stage_state) {
		uhmm__os_munmap(p, STAGE_PAGES << rt->page_shift);
		return -ENOMEM;
	}
	err = uhmm__os_uffd_register(rt->uffd, (uintptr_t)p, STAGE_PAGES << rt->page_shift,
			       UFFDIO_REGISTER_MODE_WP, NULL);
	if (err) {
		uhmm_free(rt->stage_state);
		rt->stage_state = NULL;
		uhmm__os_munmap(p, STAGE_PAGES << rt->page_shift);
		return err;
	}
	rt->stage = p;
	hstage_init(rt);	/* without it, THPs migrate as base pages */
	return 0;
}

static inline uint8_t slot_get(struct uhmm_rt *rt, unsigned long i)
{
	return __atomic_load_n(&rt->stage_state[i], __ATOMIC_ACQUIRE);
}

static inline void slot_set(struct uhmm_rt *rt, unsigned long i, uint8_t v)
{
	__atomic_store_n(&rt->stage_state[i], v, __ATOMIC_RELAXED);
}

static long stage_find(struct uhmm_rt *rt, unsigned long n, int want)
{
	unsigned long run = 0;

	for (unsigned long k = 0; k < STAGE_PAGES; k++) {
		unsigned long i = (rt->stage_hint + k) % STAGE_PAGES;
		uint8_t s = slot_get(rt, i);
		bool ok = !(s & SLOT_USED) && (want < 0 || s == want);

		if (i == 0)
			run = 0;
		run = ok ? run + 1 : 0;
		if (run == n) {
			unsigned long first = i + 1 - n;

			for (unsigned long j = first; j <= i; j++)
				slot_set(rt, j, slot_get(rt, j) | SLOT_USED);
			rt->stage_hint = i + 1;
			return (long)first;
		}
	}
	return -ENOMEM;
}

/*
 * Staging slots whose page went to a device keep it (FULL): those are
 * the warm pages copies into system memory want. When a MOVE finds no
 * empty slots, give FULL ones back (one MADV_DONTNEED per run).
 */
static void stage_reclaim(struct uhmm_rt *rt)
{
	unsigned long i = 0;

	while (i < STAGE_PAGES) {
		unsigned long j = i;

		while (j < STAGE_PAGES && slot_get(rt, j) == SLOT_FULL)
			j++;
		if (j > i) {
			for (unsigned long k = i; k < j; k++)
				slot_set(rt, k, SLOT_USED);
			pthread_mutex_unlock(&rt->stage_lock);
			uhmm__os_madvise((void *)stage_addr(rt, i), (j - i) << rt->page_shift,
				   MADV_DONTNEED);
			pthread_mutex_lock(&rt->stage_lock);
			for (unsigned long k = i; k < j; k++)
				slot_set(rt, k, SLOT_EMPTY);
		}
		i = j + 1;
	}
}

/*
 * @n contiguous slots: EMPTY ones for a MOVE into them, or, for a copy
 * destination (SLOT_FULL), warm ones first and any after.
 */
long uhmm__stage_alloc(struct uhmm_rt *rt, unsigned long n, int want)
{
	long r;

	pthread_mutex_lock(&rt->stage_lock);
	if (want == SLOT_EMPTY) {
		r = stage_find(rt, n, SLOT_EMPTY);
		if (r < 0) {
			stage_reclaim(rt);
			r = stage_find(rt, n, SLOT_EMPTY);
		}
	} else {
		r = stage_find(rt, n, SLOT_FULL);
		if (r < 0)
			r = stage_find(rt, n, -1);
	}
	pthread_mutex_unlock(&rt->stage_lock);
	return r;
}

/*
 * Give a slot back. No lock: only its holder writes a USED slot, and a
 * finder (under stage_lock) that reads it a moment early skips it.
 */
void uhmm__stage_free(struct uhmm_rt *rt, unsigned long i, bool full)
{
	if (i >= STAGE_PAGES)
		return;
	__atomic_store_n(&rt->stage_state[i], full ? SLOT_FULL : SLOT_EMPTY,
			 __ATOMIC_RELEASE);
}


/*
 * Put the page of staging slot @slot at @addr (pte_none there). MOVE
 * needs the two mappings to have the same protection: a mapping made
 * read-only meanwhile gets a copy instead, and the slot stays full.
 * *emptied says which happened.
 */
int uhmm__stage_install(struct uhmm_rt *rt, unsigned long addr,
			unsigned long slot, bool *emptied)
{
	/* No wake yet: finalize wakes once the page is accounted for. */
	int r = uhmm__uffd_move(rt, addr, stage_addr(rt, slot), rt->page_size,
				UFFDIO_MOVE_MODE_DONTWAKE);

	*emptied = r == 0;
	if (r == -EINVAL || r == -EBUSY || r == -EPERM)
		r = uhmm__uffd_copy(rt, addr, stage_addr(rt, slot), rt->page_size,
				    UFFDIO_COPY_MODE_DONTWAKE);
	return r;
}


int uhmm_migrate_alloc_system(uint64_t *mpfn)
{
	struct uhmm_rt *rt = uhmm__rt_peek();
	long i;

	if (!mpfn || !rt || !rt->stage)
		return -EINVAL;
	i = uhmm__stage_alloc(rt, 1, SLOT_FULL);
	if (i < 0)
		return (int)i;
	*mpfn = ((stage_addr(rt, (unsigned long)i) >> rt->page_shift)
		 << UHMM_MIGRATE_PFN_SHIFT) | UHMM_MIGRATE_PFN_VALID;
	return 0;
}

int uhmm_migrate_alloc_system_compound(uint64_t *mpfn)
{
	struct uhmm_rt *rt = uhmm__rt_peek();
	long h;

	if (!mpfn || !rt || !rt->stage)
		return -EINVAL;
	h = uhmm__hstage_alloc(rt, SLOT_FULL);
	if (h < 0)
		return (int)h;
	*mpfn = ((hstage_addr(rt, (unsigned long)h) >> rt->page_shift)
		 << UHMM_MIGRATE_PFN_SHIFT) | UHMM_MIGRATE_PFN_VALID |
		UHMM_MIGRATE_PFN_COMPOUND;
	return 0;
}

/* Set up on first use: the regions cost address space only. */
int uhmm__stage_setup(struct uhmm_rt *rt)
{
	int err;

	pthread_mutex_lock(&rt->mlock);
	err = stage_setup(rt);
	pthread_mutex_unlock(&rt->mlock);
	return err;
}

int uhmm__stage_init(struct uhmm_rt *rt)
{
	pthread_mutex_init(&rt->mlock, NULL);
	pthread_mutex_init(&rt->stage_lock, NULL);
	return 0;
}

void uhmm__stage_destroy(struct uhmm_rt *rt)
{
	if (rt->stage)
		uhmm__os_munmap(rt->stage, STAGE_PAGES << rt->page_shift);
	if (rt->hstage)
		uhmm__os_munmap(rt->hstage, HSTAGE_SLOTS * PMD_BYTES);
	uhmm_free(rt->stage_state);
	uhmm_free(rt->hstage_state);
	rt->stage = rt->hstage = NULL;
	rt->stage_state = rt->hstage_state = NULL;
	pthread_mutex_destroy(&rt->mlock);
	pthread_mutex_destroy(&rt->stage_lock);
}
