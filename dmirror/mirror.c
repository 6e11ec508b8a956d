/* SPDX-License-Identifier: MIT */
/*
 * dmirror's mirroring: the interval notifier that keeps the device page
 * table coherent, device fault rounds and SNAPSHOT (test_hmm.c:
 * dmirror_interval_invalidate, dmirror_range_fault, dmirror_fault,
 * dmirror_snapshot).
 */
#include "dmirror_internal.h"

/*
 * SNAPSHOT byte of each combination of flag bits, for pages that are not
 * device memory (whose byte depends on the frame too).
 */
#define DMIRROR_FLAG_SHIFT	50
_Static_assert(UHMM_PFN_FLAGS == ~0ULL << DMIRROR_FLAG_SHIFT,
	       "flag bits are the top 14");
static uint8_t dmirror_snap_bytes[1U << (64 - DMIRROR_FLAG_SHIFT)];

/* ------------------------------------------------------------------ */
/* Invalidation                                                         */
/* ------------------------------------------------------------------ */

static bool dmirror_invalidate(struct uhmm_interval_notifier *sub,
			       const struct uhmm_notifier_range *range,
			       unsigned long cur_seq)
{
	struct uhmm_dmirror *dm = uhmm_interval_notifier_priv(sub);
	/*
	 * The device's own migrations update the entries of its memory
	 * themselves (the kernel ignores its own MIGRATE events), and no
	 * other owner's migration can collect this device's pages: a
	 * MIGRATE event keeps the entries of device memory. Unlike the
	 * kernel, entries of system pages are dropped even for the device's
	 * own migrations: a page moving to this device leaves the
	 * application's address space (pte_none) and a device copy through
	 * a stale entry would fault to uhmm under dm->lock, while the fault
	 * (or the migration's other invalidations) needs dm->lock; and the
	 * sequence moves, so that a fault round that saw a page before the
	 * migration collected it starts again.
	 *
	 * Coherent pages are reached at their application address, where
	 * their frames are mapped: a coherent page of another device is
	 * treated as system memory, and this device's own are dropped too
	 * when the migration is the one that moves them out (a
	 * SELECT_DEVICE_COHERENT migration of this device, on this thread:
	 * uhmm__dmirror_migrate_setup()).
	 */
	const void *keep_dev = range->event == UHMM_NOTIFY_MIGRATE ? dm->dev : NULL;
	bool keep_coherent = uhmm__dmirror_tl_coherent_out != dm->dev;

	if (range->flags & UHMM_NOTIFIER_RANGE_BLOCKABLE)
		pthread_mutex_lock(&dm->lock);
	else if (pthread_mutex_trylock(&dm->lock))
		return false;

	uhmm_interval_set_seq(sub, cur_seq);
	/*
	 * This open taking the page exclusive (the owner is the open, not
	 * the device: other opens of the device drop their entries too).
	 * Its entries go as for any invalidation: the page is about to
	 * leave its address, and a copy through a stale entry would fault
	 * to uhmm under dm->lock, whose revoke needs dm->lock. The EXCLUSIVE
	 * command then installs its entry if no invalidation came after
	 * this one (a CPU revoke clears it; the kernel serializes the two
	 * with the folio lock).
	 */
	dm->inv_calls++;
	if (range->event == UHMM_NOTIFY_EXCLUSIVE && range->owner == dm)
		dm->excl_mark = dm->inv_calls;
	if (uhmm__dmirror_pt_clear(&dm->pt,
				   range->start >> uhmm__dmirror_page_shift,
				   range->end >> uhmm__dmirror_page_shift,
				   keep_dev, keep_coherent))
		dm->inv_count++;
	/* uhmm_shutdown(): the notifier is freed when this returns. */
	if (range->event == UHMM_NOTIFY_RELEASE)
		dm->notifier = NULL;

	pthread_mutex_unlock(&dm->lock);
	return true;
}

const struct uhmm_interval_notifier_ops uhmm__dmirror_notifier_ops = {
	.invalidate = dmirror_invalidate,
};

/*
 * The open's notifier, inserted again if uhmm_shutdown() released it (the
 * next runtime starts on use, and the open keeps working with it).
 */
int uhmm__dmirror_notifier_get(struct uhmm_dmirror *dm)
{
	struct uhmm_interval_notifier *n;
	int ret;

	pthread_mutex_lock(&dm->lock);
	n = dm->notifier;
	pthread_mutex_unlock(&dm->lock);
	if (n)
		return 0;

	ret = uhmm_interval_notifier_insert(&n, 0, dm->nend,
					    &uhmm__dmirror_notifier_ops, dm);
	if (ret)
		return ret;
	pthread_mutex_lock(&dm->lock);
	if (!dm->notifier) {
		dm->notifier = n;
		n = NULL;
	}
	pthread_mutex_unlock(&dm->lock);
	if (n)
		uhmm_interval_notifier_remove(n);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Mirroring: fault rounds and snapshots                                */
/* ------------------------------------------------------------------ */

/*
 * The read_begin / range_fault / lock / read_retry loop of
 * dmirror_range_fault(). Returns 0 with dm->lock held and
 * range->hmm_pfns valid until it is dropped, or an error without the lock.
 */
static int dmirror_range_lock(struct uhmm_dmirror *dm, struct uhmm_range *range)
{
	uint64_t deadline = uhmm__dmirror_now_ns() + DMIRROR_TIMEOUT_NS;
	int ret;

	for (;;) {
		if (uhmm__dmirror_now_ns() > deadline)
			return -EBUSY;
		range->notifier_seq = uhmm_interval_read_begin(range->notifier);
		ret = uhmm_range_fault(range);
		if (ret == -EBUSY)
			continue;
		if (ret)
			return ret;
		pthread_mutex_lock(&dm->lock);
		if (!uhmm_interval_read_retry(range->notifier,
					      range->notifier_seq))
			return 0;
		pthread_mutex_unlock(&dm->lock);
	}
}

/* Install range_fault results in the device page table (dmirror_do_fault). */
static int dmirror_install(struct uhmm_dmirror *dm,
			   const struct uhmm_range *range, bool write)
{
	uint64_t vpn = range->start >> uhmm__dmirror_page_shift;
	uint64_t n = (range->end - range->start) >> uhmm__dmirror_page_shift;
	uint64_t need = UHMM_PFN_VALID | (write ? UHMM_PFN_WRITE : 0);
	uint64_t *leaf = NULL;
	uint64_t i;

	for (i = 0; i < n; i++, vpn++) {
		uint64_t v = range->hmm_pfns[i];

		if ((v & need) != need || (v & UHMM_PFN_ERROR))
			return -EFAULT;
		if (!leaf || !(vpn & PT_MASK)) {
			leaf = uhmm__dmirror_pt_leaf_alloc(&dm->pt, vpn);
			if (!leaf)
				return vpn >= dm->pt.limit ? -EFAULT : -ENOMEM;
		}
		leaf[vpn & PT_MASK] = v & ~UHMM_PFN_INOUT_FLAGS;
	}
	return 0;
}

/*
 * Walk [start, end) in chunks of DMIRROR_FAULT_CHUNK pages: for each, the
 * read_begin / range_fault / lock / read_retry protocol with
 * @default_flags, then @fn with dm->lock held and the values valid.
 */
int uhmm__dmirror_walk(struct uhmm_dmirror *dm, unsigned long start,
		       unsigned long end, uint64_t default_flags,
		       dmirror_chunk_fn fn, void *arg)
{
	uint64_t pfns[DMIRROR_FAULT_CHUNK];
	struct uhmm_range range = {
		.notifier = dm->notifier,
		.hmm_pfns = pfns,
		.default_flags = default_flags,
		.pfn_flags_mask = 0,
		.dev_private_owner = dm->dev,
	};
	unsigned long addr;
	int ret;

	for (addr = start; addr < end; addr = range.end) {
		unsigned long n = (end - addr) >> uhmm__dmirror_page_shift;

		if (n > DMIRROR_FAULT_CHUNK)
			n = DMIRROR_FAULT_CHUNK;
		range.start = addr;
		range.end = addr + (n << uhmm__dmirror_page_shift);
		memset(pfns, 0, n * sizeof(pfns[0]));
		ret = dmirror_range_lock(dm, &range);
		if (ret)
			return ret;
		ret = fn(dm, &range, n, arg);
		pthread_mutex_unlock(&dm->lock);
		if (ret)
			return ret;
	}
	return 0;
}

static int dmirror_install_chunk(struct uhmm_dmirror *dm,
				 const struct uhmm_range *range, unsigned long n,
				 void *arg)
{
	(void)n;
	return dmirror_install(dm, range, *(bool *)arg);
}

/* One device fault round over [start, end) (dmirror_fault). */
int uhmm__dmirror_fault(struct uhmm_dmirror *dm, unsigned long start,
			unsigned long end, bool write)
{
	return uhmm__dmirror_walk(dm, start, end, UHMM_PFN_REQ_FAULT |
				  (write ? UHMM_PFN_REQ_WRITE : 0),
				  dmirror_install_chunk, &write);
}

/*
 * Whether a device page is memory of this device. uhmm_range_fault()
 * reports private pages of other owners as not present, so REMOTE shows
 * only for pages it reports to another owner (none today).
 */
static bool dmirror_page_is_local(const struct uhmm_dmirror *dm, uint64_t pfn)
{
	struct uhmm_page *page;

	if (!dm || !(pfn & DMIRROR_PFN_DEVICE))
		return false;
	page = uhmm_pfn_to_page(pfn);
	return page && uhmm_page_owner(page) == dm->dev;
}

/* One SNAPSHOT byte (dmirror_mkentry). */
static uint8_t dmirror_mkentry(const struct uhmm_dmirror *dm, uint64_t pfn)
{
	unsigned int shift;
	uint8_t b;

	if (pfn & UHMM_PFN_ERROR)
		return UHMM_DMIRROR_PROT_ERROR;
	if (!(pfn & UHMM_PFN_VALID))
		return UHMM_DMIRROR_PROT_NONE;

	if (pfn & UHMM_PFN_DEVICE_PRIVATE)
		b = dmirror_page_is_local(dm, pfn) ?
			UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL :
			UHMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE;
	else if (pfn & UHMM_PFN_DEVICE_COHERENT)
		b = dmirror_page_is_local(dm, pfn) ?
			UHMM_DMIRROR_PROT_DEV_COHERENT_LOCAL :
			UHMM_DMIRROR_PROT_DEV_COHERENT_REMOTE;
	/* The kernel's is_zero_pfn(): the 4 KiB zero page only. The huge
	 * zero page (ZERO at PMD order) is READ | PMD there. */
	else if ((pfn & UHMM_PFN_ZERO) && !uhmm_pfn_to_map_order(pfn))
		b = UHMM_DMIRROR_PROT_ZERO;
	else
		b = 0;

	b |= (pfn & UHMM_PFN_WRITE) ? UHMM_DMIRROR_PROT_WRITE :
				      UHMM_DMIRROR_PROT_READ;

	/* PMD and PUD shifts: a page table page holds page size / 8 slots. */
	shift = uhmm_pfn_to_map_order(pfn) + uhmm__dmirror_page_shift;
	if (shift == 2 * uhmm__dmirror_page_shift - 3)
		b |= UHMM_DMIRROR_PROT_PMD;
	else if (shift == 3 * uhmm__dmirror_page_shift - 6)
		b |= UHMM_DMIRROR_PROT_PUD;
	return b;
}

void uhmm__dmirror_snap_bytes_init(void)
{
	uint64_t f;

	for (f = 0; f < sizeof(dmirror_snap_bytes); f++)
		if (!((f << DMIRROR_FLAG_SHIFT) & DMIRROR_PFN_DEVICE))
			dmirror_snap_bytes[f] =
				dmirror_mkentry(NULL, f << DMIRROR_FLAG_SHIFT);
}

/* SNAPSHOT bytes of @n pages, under dm->lock. */
static void dmirror_snap_convert(const struct uhmm_dmirror *dm,
				 const uint64_t *pfns, uint8_t *bytes,
				 uint64_t n)
{
	uint64_t i = 0;

	while (i < n) {
		uint64_t v = pfns[i];
		uint64_t b8;

		if (v & DMIRROR_PFN_DEVICE) {
			bytes[i++] = dmirror_mkentry(dm, v);
			continue;
		}
		bytes[i++] = dmirror_snap_bytes[v >> DMIRROR_FLAG_SHIFT];
		/* Pages with the same flags (a THP, an untouched range) get
		 * the same byte: skip them 8 at a time. */
		b8 = 0x0101010101010101ULL * bytes[i - 1];
		while (i + 8 <= n &&
		       !(((pfns[i] ^ v) | (pfns[i + 1] ^ v) |
			  (pfns[i + 2] ^ v) | (pfns[i + 3] ^ v) |
			  (pfns[i + 4] ^ v) | (pfns[i + 5] ^ v) |
			  (pfns[i + 6] ^ v) | (pfns[i + 7] ^ v)) &
			 UHMM_PFN_FLAGS)) {
			memcpy(bytes + i, &b8, 8);
			i += 8;
		}
	}
}

int uhmm__dmirror_snapshot(struct uhmm_dmirror *dm,
			   struct uhmm_dmirror_cmd *cmd,
			   unsigned long start, unsigned long end)
{
	uint64_t npages = cmd->npages;
	uint64_t chunk = DMIRROR_SNAP_CHUNK;
	struct uhmm_range range = {
		.default_flags = 0,
		.pfn_flags_mask = 0,
		.dev_private_owner = dm->dev,
	};
	uint64_t off = 0;
	uint8_t *bytes;
	uint64_t *pfns;
	unsigned long addr;
	int ret = 0;

	if (npages > SIZE_MAX)
		return -ENOMEM;
	ret = uhmm__dmirror_notifier_get(dm);
	if (ret)
		return ret;
	range.notifier = dm->notifier;
	/* One chunk's bytes at a time, copied out per chunk as the kernel's
	 * dmirror_snapshot() does: npages is the caller's and may be huge. */
	bytes = uhmm_alloc((size_t)(npages < chunk ? npages : chunk));
	/*
	 * Zeroed once: with no request bits, outputs carry no sticky bits,
	 * so they are valid (empty) inputs for the next chunk and command.
	 */
	pthread_mutex_lock(&dm->lock);
	pfns = dm->snap_pfns;
	dm->snap_pfns = NULL;
	pthread_mutex_unlock(&dm->lock);
	if (!pfns)
		pfns = uhmm_calloc(DMIRROR_SNAP_CHUNK, sizeof(*pfns));
	if (!bytes || !pfns) {
		ret = -ENOMEM;
		goto out_free;
	}
	range.hmm_pfns = pfns;

	for (addr = start; addr < end; addr = range.end) {
		uint64_t n = (end - addr) >> uhmm__dmirror_page_shift;

		if (n > chunk)
			n = chunk;
		range.start = addr;
		range.end = addr + (n << uhmm__dmirror_page_shift);

		ret = dmirror_range_lock(dm, &range);
		if (ret)
			goto out_free;
		dmirror_snap_convert(dm, pfns, bytes, n);
		pthread_mutex_unlock(&dm->lock);
		ret = uhmm_copy_nofault((void *)(uintptr_t)(cmd->ptr + off),
					bytes, (size_t)n, NULL);
		if (ret)
			goto out_free;
		off += n;
	}
	cmd->cpages = npages;

out_free:
	if (pfns) {
		pthread_mutex_lock(&dm->lock);
		if (!dm->snap_pfns) {
			dm->snap_pfns = pfns;
			pfns = NULL;
		}
		pthread_mutex_unlock(&dm->lock);
	}
	/* Not under dm->lock: uhmm_free() may unmap memory. */
	uhmm_free(pfns);
	uhmm_free(bytes);
	return ret;
}
