/* SPDX-License-Identifier: MIT */
/*
 * dmirror: the reference software device, a port of the kernel's
 * lib/test_hmm.c built only on the public API of <uhmm/uhmm.h>.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <uhmm/uhmm.h>
#include <uhmm/migrate.h>
#include <uhmm/dma.h>
#include <uhmm/dmirror.h>

#define DMIRROR_NDEVICES	4

/* Pages per uhmm_range_fault() call in a fault round (kernel: 32). */
#define DMIRROR_FAULT_CHUNK	512
/*
 * Pages per uhmm_range_fault() call in a SNAPSHOT: its cost per call is
 * microseconds, per THP page a fraction of a nanosecond. The array stays
 * below malloc's mmap threshold (128 KiB), so that it comes from the heap
 * and never lands in a hole the application left in its address space.
 */
#define DMIRROR_SNAP_CHUNK	8192
/* HMM_RANGE_DEFAULT_TIMEOUT: bound on -EBUSY retries, in nanoseconds. */
#define DMIRROR_TIMEOUT_NS	1000000000ULL
/* Copies that fault under the device before READ/WRITE give up. */
#define DMIRROR_COPY_RETRIES	3
/* Passes of a READ whose checked pages were invalidated before -EBUSY. */
#define DMIRROR_READ_RESTARTS	64

/* Device memory comes and grows in chunks of this size (kernel: 256 MiB). */
#define DMIRROR_CHUNK_BYTES	(64UL << 20)
/* uhmm pagemaps hold at most 64 chunks. */
#define DMIRROR_MAX_CHUNKS	64
/* Pages per migrate_vma call (kernel: PTRS_PER_PTE). */
#define DMIRROR_MIGRATE_CHUNK	512
/* A device THP: pages per block of device memory. */
#define DMIRROR_BLOCK_PAGES	512UL
/* Pages per uhmm_migrate_device_range() call when evicting. */
#define DMIRROR_EVICT_CHUNK	2048
/* Allocation attempts for the faulting page, which must not be skipped. */
#define DMIRROR_FAULT_ALLOC_TRIES 4

/*
 * An entry for a page the device holds exclusively (the kernel's
 * DPT_XA_TAG_ATOMIC): a sticky bit the core leaves to drivers. Its frame
 * is where uhmm_make_device_exclusive() put the page.
 */
#define DMIRROR_PFN_ATOMIC	UHMM_PFN_P2PDMA_BUS

/* Entries that name device memory rather than a system page. */
#define DMIRROR_PFN_DEVICE	(UHMM_PFN_DEVICE_PRIVATE | \
				 UHMM_PFN_DEVICE_COHERENT)

/*
 * The device page table: a radix tree keyed by virtual page number, whose
 * leaves hold the uhmm_range_fault() value of each page (0: no entry).
 * Every node has PT_FANOUT slots; the root has 1 << top_bits. Addresses
 * at or above 1 << DMIRROR_VA_BITS cannot be mapped on Linux (LA57 user
 * space ends at 1 << 56), so the table does not cover them.
 */
#define DMIRROR_VA_BITS		57
#define PT_BITS			9
#define PT_FANOUT		(1UL << PT_BITS)
#define PT_MASK			(PT_FANOUT - 1)

struct dmirror_pt {
	void **root;
	unsigned int levels;	/* inner levels, the root included, >= 1 */
	uint64_t limit;		/* VPNs covered: [0, limit) */
};

/*
 * One device, shared by every open of its number in this process (the
 * kernel's struct dmirror_device). Its address is the owner cookie for
 * uhmm_range_fault() and for MIGRATE invalidations.
 */
struct uhmm_dmirror;

struct dmirror_device {
	int id;
	unsigned int refs;	/* opens; under dmirror_table.lock */
	/*
	 * Device memory and the list of opens. Lock order: dev->lock, then
	 * an open's dm->lock; never the other way, and never held across a
	 * call into uhmm that can run callbacks or free pages.
	 */
	pthread_mutex_t lock;
	struct uhmm_dmirror *opens;	/* linked through dm->dev_next */
	/*
	 * Device-private memory, created at the first migration: a uhmm
	 * pagemap (owner: this object) and, per chunk, a buffer that holds
	 * the pages' data (the kernel's dmirror backs private pages with
	 * system RAM too). uhmm_page_data() of a page is its storage.
	 */
	struct uhmm_pagemap *pgmap;
	unsigned long chunk_pages;
	unsigned int nchunks;
	char *mem[DMIRROR_MAX_CHUNKS];
	unsigned long *free;	/* stack of free page indices */
	unsigned long nfree;
	/*
	 * Memory comes in blocks of DMIRROR_BLOCK_PAGES (a THP's worth):
	 * free whole blocks are handed out as device THPs, or broken into
	 * base pages when the free stack runs out. A block out as a THP
	 * comes back when its last page does (blk_out).
	 */
	unsigned long *blk_free;
	unsigned long nblk_free;
	uint16_t *blk_out;	/* per block: THP pages still out, or 0 */
	uint64_t calloc;	/* pages handed out */
	uint64_t cfree;		/* pages given back */
	/* The device's DMA engine: every migration copy goes through it. */
	struct uhmm_dma *dma;
	struct dmirror_device *orphan_next;	/* on dmirror_table.orphans */
};

/*
 * Copy engine threads. 0: the engine copies in the submitting thread,
 * which on a 2-vCPU machine beats handing 2 MiB chunks to another
 * thread (bench_dma); raise it where cores are plenty.
 */
#define DMIRROR_DMA_THREADS 0

/* A transfer list: copies coalesce when both sides run on. */
struct dmirror_xfer {
	struct uhmm_dma_desc *d;
	size_t n;
};

static void xfer_add(struct dmirror_xfer *x, void *dst, const void *src,
		     size_t len)
{
	struct uhmm_dma_desc *l = x->n ? &x->d[x->n - 1] : NULL;

	if (l && (char *)l->dst + l->len == (char *)dst &&
	    (const char *)l->src + l->len == (const char *)src) {
		l->len += len;
		return;
	}
	x->d[x->n++] = (struct uhmm_dma_desc){ dst, src, len };
}

/* Submit the list as one batch and wait for it; 0 or -EFAULT. */
static int xfer_run(struct dmirror_device *dev, struct dmirror_xfer *x)
{
	struct uhmm_dma_batch b = { .desc = x->d, .n = x->n };
	int r;

	if (!x->n)
		return 0;
	r = uhmm_dma_submit(dev->dma, &b);
	if (r == 0)
		r = uhmm_dma_wait(dev->dma, &b);
	x->n = 0;
	return r;
}

/* One open (the kernel's per-file struct dmirror). */
struct uhmm_dmirror {
	struct dmirror_device *dev;
	struct uhmm_dmirror *dev_next;	/* under dev->lock */
	/* NULL once uhmm_shutdown() has released and freed it. */
	struct uhmm_interval_notifier *notifier;	/* under dm->lock */
	unsigned long nend;	/* end of the notifier's range */
	unsigned long gen;	/* dmirror_gen at open */
	struct dmirror_pt pt;	/* under dm->lock */
	uint64_t inv_count;	/* under dm->lock: invalidations that
				 * cleared entries */
	uint64_t flags;		/* under dm->lock: the FLAGS value */
	/*
	 * Under dm->lock: invalidation callbacks run so far, and that count
	 * at the last EXCLUSIVE invalidation this open asked for
	 * (uhmm_make_device_exclusive() with owner dm). Not the sequence:
	 * invalidations open at the same time share one.
	 */
	uint64_t inv_calls, excl_mark;
	/*
	 * A SNAPSHOT chunk's pfns, kept between commands (fresh memory of
	 * that size costs more page faults than the snapshot itself); NULL
	 * while a command uses it. Under dm->lock.
	 */
	uint64_t *snap_pfns;
	/*
	 * The driver lock of the read_begin/read_retry protocol (the
	 * kernel's dmirror->mutex). The device copies through its page
	 * table with it held, so an invalidation waits for device accesses
	 * in flight.
	 */
	pthread_mutex_t lock;
};

static struct {
	pthread_mutex_t lock;
	struct dmirror_device *dev[DMIRROR_NDEVICES];
	/* Devices closed while a page was still referenced (a CPU fault
	 * migrating it): freed by a later open or close once idle. */
	struct dmirror_device *orphans;
} dmirror_table = { .lock = PTHREAD_MUTEX_INITIALIZER };

/*
 * The device whose SELECT_DEVICE_COHERENT migration this thread is setting
 * up (dmirror_migrate_setup()): its invalidation drops the device's own
 * coherent entries, whose frames it moves out (dmirror_invalidate()).
 */
static __thread const struct dmirror_device *dmirror_tl_coherent_out;

/* Device pages in use, all devices: while 0, no buffer can be on a device. */
static atomic_ulong dmirror_dev_pages;

/* Bumped in every child of fork(): opens of an older generation are dead. */
static atomic_ulong dmirror_gen;

/*
 * SNAPSHOT byte of each combination of flag bits, for pages that are not
 * device memory (whose byte depends on the frame too).
 */
#define DMIRROR_FLAG_SHIFT	50
_Static_assert(UHMM_PFN_FLAGS == ~0ULL << DMIRROR_FLAG_SHIFT,
	       "flag bits are the top 14");
static uint8_t dmirror_snap_bytes[1U << (64 - DMIRROR_FLAG_SHIFT)];
static void dmirror_snap_bytes_init(void);

static pthread_once_t dmirror_once = PTHREAD_ONCE_INIT;
static int dmirror_once_err;
static unsigned long dmirror_page_size;
static unsigned int dmirror_page_shift;

/*
 * The child has devices of its own. The parent's device objects are left
 * to the opens that still point at them; those answer -EBADF. The table
 * lock is made anew: a thread of the parent may have held it.
 */
static void dmirror_atfork_child(void)
{
	atomic_fetch_add(&dmirror_gen, 1);
	memset(dmirror_table.dev, 0, sizeof(dmirror_table.dev));
	pthread_mutex_init(&dmirror_table.lock, NULL);
}

static void dmirror_init_once(void)
{
	long ps = sysconf(_SC_PAGESIZE);

	if (ps <= 0 || (ps & (ps - 1))) {
		dmirror_once_err = -EINVAL;
		return;
	}
	dmirror_page_size = (unsigned long)ps;
	dmirror_page_shift = (unsigned int)__builtin_ctzl(dmirror_page_size);
	dmirror_snap_bytes_init();
	if (pthread_atfork(NULL, NULL, dmirror_atfork_child))
		dmirror_once_err = -ENOMEM;
}

static uint64_t dmirror_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------ */
/* Device page table                                                    */
/* ------------------------------------------------------------------ */

static int pt_init(struct dmirror_pt *pt)
{
	unsigned int vbits = DMIRROR_VA_BITS - dmirror_page_shift;
	unsigned int levels = (vbits - PT_BITS + PT_BITS - 1) / PT_BITS;
	unsigned int top_bits = vbits - PT_BITS * levels;

	if (vbits <= PT_BITS || levels < 1)
		return -EINVAL;
	pt->levels = levels;
	pt->limit = 1ULL << vbits;
	pt->root = uhmm_calloc(1UL << top_bits, sizeof(void *));
	return pt->root ? 0 : -ENOMEM;
}

/* The leaf holding @vpn's entry, or NULL when there is none. */
static uint64_t *pt_leaf(const struct dmirror_pt *pt, uint64_t vpn)
{
	void **node = pt->root;
	unsigned int l;

	if (vpn >= pt->limit)
		return NULL;
	for (l = pt->levels; l > 0; l--) {
		node = node[(vpn >> (PT_BITS * l)) & PT_MASK];
		if (!node)
			return NULL;
	}
	return (uint64_t *)node;
}

/* As pt_leaf(), allocating missing nodes. */
static uint64_t *pt_leaf_alloc(struct dmirror_pt *pt, uint64_t vpn)
{
	void **node = pt->root;
	unsigned int l;

	if (vpn >= pt->limit)
		return NULL;
	for (l = pt->levels; l > 0; l--) {
		void **slot = &node[(vpn >> (PT_BITS * l)) & PT_MASK];

		if (!*slot) {
			*slot = uhmm_calloc(PT_FANOUT, l > 1 ? sizeof(void *) :
					 sizeof(uint64_t));
			if (!*slot)
				return NULL;
		}
		node = *slot;
	}
	return (uint64_t *)node;
}

/*
 * Whether entry @v names memory of device @owner: its private pages
 * (range_fault reports only the owner's), or, with @coherent, coherent
 * pages it owns (coherent pages of any device are reported).
 */
static bool pt_entry_of(uint64_t v, const void *owner, bool coherent)
{
	struct uhmm_page *page;

	if (v & UHMM_PFN_DEVICE_PRIVATE)
		return true;
	if (!coherent || !(v & UHMM_PFN_DEVICE_COHERENT))
		return false;
	page = uhmm_pfn_to_page(v);
	return page && uhmm_page_owner(page) == owner;
}

/* Entries [from, to) of @leaf; true stops the walk. */
typedef bool (*pt_leaf_fn)(uint64_t *leaf, uint64_t from, uint64_t to,
			   void *arg);

/*
 * @fn on the leaf slices of [s, e) below @node, an inner node whose slots
 * each cover 1 << (PT_BITS * l) pages from @base. Absent subtrees are
 * skipped and nothing is allocated or freed: this runs in invalidate
 * callbacks, where uhmm_free() could trim the heap. True if @fn stopped it.
 */
static bool pt_walk_node(void *const *node, unsigned int l, uint64_t base,
			 uint64_t s, uint64_t e, pt_leaf_fn fn, void *arg)
{
	unsigned int shift = PT_BITS * l;
	uint64_t span = 1ULL << shift;
	uint64_t i = (s - base) >> shift;
	uint64_t last = (e - 1 - base) >> shift;

	for (; i <= last; i++) {
		uint64_t cb = base + (i << shift);
		uint64_t cs = s > cb ? s : cb;
		uint64_t ce = e - cb > span ? cb + span : e;

		if (!node[i])
			continue;
		if (l > 1 ? pt_walk_node(node[i], l - 1, cb, cs, ce, fn, arg) :
			    fn(node[i], cs - cb, ce - cb, arg))
			return true;
	}
	return false;
}

/* pt_walk_node() over the VPNs [s, e) of @pt. */
static bool pt_walk(const struct dmirror_pt *pt, uint64_t s, uint64_t e,
		    pt_leaf_fn fn, void *arg)
{
	if (e > pt->limit)
		e = pt->limit;
	if (!pt->root || s >= e)
		return false;
	return pt_walk_node(pt->root, pt->levels, 0, s, e, fn, arg);
}

struct pt_clear_arg {
	const void *keep_dev;
	bool keep_coherent;
	uint64_t only;		/* nonzero: clear entries with these bits */
	bool hit;
};

static bool pt_clear_leaf(uint64_t *leaf, uint64_t from, uint64_t to,
			  void *arg)
{
	struct pt_clear_arg *a = arg;

	for (uint64_t j = from; j < to; j++) {
		if (a->keep_dev &&
		    pt_entry_of(leaf[j], a->keep_dev, a->keep_coherent))
			continue;
		if (a->only ? (leaf[j] & a->only) : leaf[j]) {
			leaf[j] = 0;
			a->hit = true;
		}
	}
	return false;
}

/*
 * Clear the entries of VPNs [s, e); with @keep_dev, entries of its private
 * memory stay (the device's own migrations manage those), and with
 * @keep_coherent those of its coherent pages too. Returns whether an entry
 * was cleared.
 */
static bool pt_clear(struct dmirror_pt *pt, uint64_t s, uint64_t e,
		     const void *keep_dev, bool keep_coherent)
{
	struct pt_clear_arg a = { keep_dev, keep_coherent, 0, false };

	pt_walk(pt, s, e, pt_clear_leaf, &a);
	return a.hit;
}

/* Clear every device-memory entry (RELEASE, eviction). */
static bool pt_clear_dev(struct dmirror_pt *pt)
{
	struct pt_clear_arg a = { NULL, false, DMIRROR_PFN_DEVICE, false };

	pt_walk(pt, 0, pt->limit, pt_clear_leaf, &a);
	return a.hit;
}

static void pt_free_node(void **node, unsigned int l)
{
	unsigned long i;

	if (l > 1) {
		for (i = 0; i < PT_FANOUT; i++)
			if (node[i])
				pt_free_node(node[i], l - 1);
	} else {
		for (i = 0; i < PT_FANOUT; i++)
			uhmm_free(node[i]);
	}
	uhmm_free(node);
}

static void pt_destroy(struct dmirror_pt *pt)
{
	unsigned long i, n = 1UL << (DMIRROR_VA_BITS - dmirror_page_shift -
				     PT_BITS * pt->levels);

	if (!pt->root)
		return;
	for (i = 0; i < n; i++) {
		if (!pt->root[i])
			continue;
		if (pt->levels > 1)
			pt_free_node(pt->root[i], pt->levels - 1);
		else
			uhmm_free(pt->root[i]);
	}
	uhmm_free(pt->root);
	pt->root = NULL;
}

/*
 * How many pages from @vpn on, at most @n, have an entry with all bits of
 * @need set.
 */
static uint64_t pt_scan(const struct dmirror_pt *pt, uint64_t vpn, uint64_t n,
			uint64_t need)
{
	uint64_t i = 0;

	while (i < n) {
		const uint64_t *leaf = pt_leaf(pt, vpn + i);
		uint64_t j = (vpn + i) & PT_MASK;
		uint64_t m = PT_FANOUT - j;

		if (!leaf)
			return i;
		if (m > n - i)
			m = n - i;
		for (; m; m--, j++, i++)
			if ((leaf[j] & need) != need)
				return i;
	}
	return n;
}

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
	 * dmirror_migrate_setup()).
	 */
	const void *keep_dev = range->event == UHMM_NOTIFY_MIGRATE ? dm->dev : NULL;
	bool keep_coherent = dmirror_tl_coherent_out != dm->dev;

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
	if (pt_clear(&dm->pt, range->start >> dmirror_page_shift,
		     range->end >> dmirror_page_shift, keep_dev, keep_coherent))
		dm->inv_count++;
	/* uhmm_shutdown(): the notifier is freed when this returns. */
	if (range->event == UHMM_NOTIFY_RELEASE)
		dm->notifier = NULL;

	pthread_mutex_unlock(&dm->lock);
	return true;
}

static const struct uhmm_interval_notifier_ops dmirror_notifier_ops = {
	.invalidate = dmirror_invalidate,
};

/*
 * The open's notifier, inserted again if uhmm_shutdown() released it (the
 * next runtime starts on use, and the open keeps working with it).
 */
static int dmirror_notifier_get(struct uhmm_dmirror *dm)
{
	struct uhmm_interval_notifier *n;
	int ret;

	pthread_mutex_lock(&dm->lock);
	n = dm->notifier;
	pthread_mutex_unlock(&dm->lock);
	if (n)
		return 0;

	ret = uhmm_interval_notifier_insert(&n, 0, dm->nend,
					    &dmirror_notifier_ops, dm);
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
	uint64_t deadline = dmirror_now_ns() + DMIRROR_TIMEOUT_NS;
	int ret;

	for (;;) {
		if (dmirror_now_ns() > deadline)
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
	uint64_t vpn = range->start >> dmirror_page_shift;
	uint64_t n = (range->end - range->start) >> dmirror_page_shift;
	uint64_t need = UHMM_PFN_VALID | (write ? UHMM_PFN_WRITE : 0);
	uint64_t *leaf = NULL;
	uint64_t i;

	for (i = 0; i < n; i++, vpn++) {
		uint64_t v = range->hmm_pfns[i];

		if ((v & need) != need || (v & UHMM_PFN_ERROR))
			return -EFAULT;
		if (!leaf || !(vpn & PT_MASK)) {
			leaf = pt_leaf_alloc(&dm->pt, vpn);
			if (!leaf)
				return vpn >= dm->pt.limit ? -EFAULT : -ENOMEM;
		}
		leaf[vpn & PT_MASK] = v & ~UHMM_PFN_INOUT_FLAGS;
	}
	return 0;
}

typedef int (*dmirror_chunk_fn)(struct uhmm_dmirror *dm,
				const struct uhmm_range *range, unsigned long n,
				void *arg);

/*
 * Walk [start, end) in chunks of DMIRROR_FAULT_CHUNK pages: for each, the
 * read_begin / range_fault / lock / read_retry protocol with
 * @default_flags, then @fn with dm->lock held and the values valid.
 */
static int dmirror_walk(struct uhmm_dmirror *dm, unsigned long start,
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
		unsigned long n = (end - addr) >> dmirror_page_shift;

		if (n > DMIRROR_FAULT_CHUNK)
			n = DMIRROR_FAULT_CHUNK;
		range.start = addr;
		range.end = addr + (n << dmirror_page_shift);
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
static int dmirror_fault(struct uhmm_dmirror *dm, unsigned long start,
			 unsigned long end, bool write)
{
	return dmirror_walk(dm, start, end, UHMM_PFN_REQ_FAULT |
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
	else if (pfn & UHMM_PFN_ZERO)
		b = UHMM_DMIRROR_PROT_ZERO;
	else
		b = 0;

	b |= (pfn & UHMM_PFN_WRITE) ? UHMM_DMIRROR_PROT_WRITE :
				      UHMM_DMIRROR_PROT_READ;

	/* PMD and PUD shifts: a page table page holds page size / 8 slots. */
	shift = uhmm_pfn_to_map_order(pfn) + dmirror_page_shift;
	if (shift == 2 * dmirror_page_shift - 3)
		b |= UHMM_DMIRROR_PROT_PMD;
	else if (shift == 3 * dmirror_page_shift - 6)
		b |= UHMM_DMIRROR_PROT_PUD;
	return b;
}

static void dmirror_snap_bytes_init(void)
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

static int dmirror_snapshot(struct uhmm_dmirror *dm,
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
	ret = dmirror_notifier_get(dm);
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
		uint64_t n = (end - addr) >> dmirror_page_shift;

		if (n > chunk)
			n = chunk;
		range.start = addr;
		range.end = addr + (n << dmirror_page_shift);

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

/* ------------------------------------------------------------------ */
/* Device accesses: READ and WRITE                                      */
/* ------------------------------------------------------------------ */

/*
 * Fault the caller's buffer [ptr, ptr + len) back from device memory
 * before dm->lock is taken for a copy into or out of it. A copy under
 * dm->lock that hits a device-private page would wait for migrate_to_ram,
 * which needs the locks of the device's opens (and the MIGRATE
 * invalidation the lock of every open): a deadlock. One byte per page is
 * read (a read fault migrates the page back); skipped while no device
 * page exists. A page that goes to a device again before the copy is a
 * race of the application with itself.
 */
static void dmirror_buf_prefault(uint64_t ptr, uint64_t len)
{
	uint64_t a = ptr, end = ptr + len;
	char b;

	if (!len || !atomic_load_explicit(&dmirror_dev_pages,
					  memory_order_relaxed))
		return;
	/* Up to the first page that faults: the copy fails there anyway
	 * (and a hostile length of unmapped pages costs a signal each). */
	while (a < end &&
	       !uhmm_copy_nofault(&b, (const void *)(uintptr_t)a, 1, NULL))
		a = (a & ~(uint64_t)(dmirror_page_size - 1)) + dmirror_page_size;
}

struct dmirror_copy {
	char *buf;		/* the caller's buffer for page 0 */
	bool write;		/* buffer -> pages (WRITE) or back (READ) */
	uint64_t done;		/* out on error: pages copied in full */
	bool buf_fault;		/* out on -EFAULT: the buffer faulted */
};

/* Copy @n pages of a run that starts at page @i with entry @pfn. */
static int dmirror_copy_run(struct dmirror_copy *c, uint64_t i, uint64_t pfn,
			    uint64_t n)
{
	char *dev = uhmm_pfn_to_addr(pfn);
	/* Through uintptr_t: the buffer may be NULL (-EFAULT then). */
	char *buf = (char *)((uintptr_t)c->buf + (i << dmirror_page_shift));
	size_t len = (size_t)(n << dmirror_page_shift);
	unsigned long fa = 0;
	int ret;

	if (c->write)
		ret = uhmm_copy_nofault(dev, buf, len, &fa);
	else
		ret = uhmm_copy_nofault(buf, dev, len, &fa);
	if (!ret)
		return 0;

	c->done = i;
	if (fa >= (uintptr_t)dev && fa - (uintptr_t)dev < len)
		c->done = i + ((fa - (uintptr_t)dev) >> dmirror_page_shift);
	else
		c->buf_fault = true;
	return ret;
}

/*
 * Copy page @i of a command between the caller's buffer and this
 * device's memory: the device accesses its own storage directly. A page
 * of another device is never in this device's page table.
 */
static int dmirror_copy_devpage(struct uhmm_dmirror *dm, struct dmirror_copy *c,
				uint64_t i, uint64_t e)
{
	struct uhmm_page *page = uhmm_pfn_to_page(e);
	char *mem = page ? uhmm_page_data(page) : NULL;
	/* Through uintptr_t: the buffer may be NULL (-EFAULT then). */
	char *buf = (char *)((uintptr_t)c->buf + (i << dmirror_page_shift));
	unsigned long fa = 0;
	int ret;

	if (!mem || uhmm_page_owner(page) != dm->dev) {
		c->done = i;
		return -EFAULT;
	}
	if (c->write)
		ret = uhmm_copy_nofault(mem, buf, dmirror_page_size, &fa);
	else
		ret = uhmm_copy_nofault(buf, mem, dmirror_page_size, &fa);
	if (ret) {
		c->done = i;
		c->buf_fault = true;
	}
	return ret;
}

/*
 * Copy pages [0, n) of a command starting at @vpn between the caller's
 * buffer and the memory the device page table points at, all entries
 * present. Runs of virtually contiguous system pages go in one copy.
 * Called with dm->lock held: an invalidation waits for the copy.
 */
static int dmirror_copy_pages(struct uhmm_dmirror *dm, uint64_t vpn,
			      uint64_t n, struct dmirror_copy *c)
{
	uint64_t i = 0, run_i = 0, run_pfn = 0, run_n = 0;
	int ret;

	while (i < n) {
		const uint64_t *leaf = pt_leaf(&dm->pt, vpn + i);
		uint64_t j = (vpn + i) & PT_MASK;
		uint64_t m = PT_FANOUT - j;

		if (!leaf) {
			c->done = run_n ? run_i : i;
			return -EFAULT;
		}
		if (m > n - i)
			m = n - i;
		for (; m; m--, j++, i++) {
			uint64_t e = leaf[j];

			if (run_n && !(e & UHMM_PFN_DEVICE_PRIVATE) &&
			    (e & UHMM_PFN_FRAME_MASK) ==
			    (run_pfn & UHMM_PFN_FRAME_MASK) + run_n) {
				run_n++;
				continue;
			}
			if (run_n) {
				ret = dmirror_copy_run(c, run_i, run_pfn,
						       run_n);
				if (ret)
					return ret;
			}
			if (e & UHMM_PFN_DEVICE_PRIVATE) {
				run_n = 0;
				ret = dmirror_copy_devpage(dm, c, i, e);
				if (ret)
					return ret;
				continue;
			}
			run_i = i;
			run_pfn = e;
			run_n = 1;
		}
	}
	if (run_n)
		return dmirror_copy_run(c, run_i, run_pfn, run_n);
	return 0;
}

/*
 * READ (dmirror_read). Nothing may reach cmd->ptr unless the command
 * succeeds, so every page is checked present, in the same critical
 * section as the copy, before anything is copied. Pages checked in an
 * earlier pass count only while no invalidation has cleared an entry.
 */
static int dmirror_read(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd,
			unsigned long start, unsigned long end)
{
	uint64_t npages = cmd->npages;
	uint64_t vpn = start >> dmirror_page_shift;
	uint64_t ok = 0, gen = 0;
	unsigned int copy_faults = 0, restarts = 0;
	bool first = true;
	int ret;

	ret = dmirror_notifier_get(dm);
	if (ret)
		return ret;
	ret = uhmm_range_revalidate(start, end);
	if (ret)
		return ret;
	dmirror_buf_prefault(cmd->ptr, npages << dmirror_page_shift);

	for (;;) {
		pthread_mutex_lock(&dm->lock);
		if (first || dm->inv_count != gen) {
			/* Unlike the kernel's bounce buffer, progress can be
			 * lost here: bound it. */
			if (ok && ++restarts > DMIRROR_READ_RESTARTS) {
				pthread_mutex_unlock(&dm->lock);
				cmd->cpages = 0;
				return -EBUSY;
			}
			ok = 0;
			gen = dm->inv_count;
			first = false;
		}
		ok += pt_scan(&dm->pt, vpn + ok, npages - ok, UHMM_PFN_VALID);
		if (ok == npages) {
			struct dmirror_copy c = {
				.buf = (char *)(uintptr_t)cmd->ptr,
				.write = false,
			};

			ret = dmirror_copy_pages(dm, vpn, npages, &c);
			pthread_mutex_unlock(&dm->lock);
			if (!ret) {
				cmd->cpages = npages;
				return 0;
			}
			/*
			 * A mapping vanished or lost access under the
			 * device: revalidating drops the stale entries
			 * (outside the lock: it runs the callbacks), and
			 * the next pass faults them again or fails.
			 */
			if (ret != -EFAULT || c.buf_fault ||
			    ++copy_faults > DMIRROR_COPY_RETRIES) {
				cmd->cpages = c.done;
				return ret;
			}
			uhmm_range_revalidate(start + (c.done << dmirror_page_shift),
					      end);
			continue;
		}
		pthread_mutex_unlock(&dm->lock);

		ret = dmirror_fault(dm, start + (ok << dmirror_page_shift), end,
				    false);
		if (ret) {
			cmd->cpages = ok;
			return ret;
		}
		cmd->faults++;
	}
}

/*
 * WRITE (dmirror_write). As in the kernel, pages are written in order as
 * long as they are present and writable; pages before a failing one stay
 * written.
 */
static int dmirror_write(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd,
			 unsigned long start, unsigned long end)
{
	uint64_t npages = cmd->npages;
	uint64_t vpn = start >> dmirror_page_shift;
	uint64_t done = 0;
	unsigned int copy_faults = 0;
	int ret;

	ret = dmirror_notifier_get(dm);
	if (ret)
		return ret;
	ret = uhmm_range_revalidate(start, end);
	if (ret)
		return ret;
	dmirror_buf_prefault(cmd->ptr, npages << dmirror_page_shift);

	for (;;) {
		uint64_t n;

		pthread_mutex_lock(&dm->lock);
		n = pt_scan(&dm->pt, vpn + done, npages - done,
			    UHMM_PFN_VALID | UHMM_PFN_WRITE);
		if (n) {
			struct dmirror_copy c = {
				/* Through uintptr_t: ptr may be NULL. */
				.buf = (char *)(uintptr_t)(cmd->ptr +
					(done << dmirror_page_shift)),
				.write = true,
			};

			ret = dmirror_copy_pages(dm, vpn + done, n, &c);
			if (ret) {
				pthread_mutex_unlock(&dm->lock);
				done += c.done;
				if (ret != -EFAULT || c.buf_fault ||
				    ++copy_faults > DMIRROR_COPY_RETRIES) {
					cmd->cpages = done;
					return ret;
				}
				uhmm_range_revalidate(start + (done << dmirror_page_shift),
						      end);
				continue;
			}
			done += n;
		}
		pthread_mutex_unlock(&dm->lock);
		if (done == npages)
			break;

		ret = dmirror_fault(dm, start + (done << dmirror_page_shift),
				    end, true);
		if (ret) {
			cmd->cpages = done;
			return ret;
		}
		cmd->faults++;
	}
	cmd->cpages = npages;
	return 0;
}

/* ------------------------------------------------------------------ */
/* Device memory                                                        */
/* ------------------------------------------------------------------ */

static void dmirror_page_free(struct uhmm_page *page);
static int dmirror_devmem_fault(struct uhmm_fault *vmf);

static const struct uhmm_pagemap_ops dmirror_devmem_ops = {
	.page_free = dmirror_page_free,
	.migrate_to_ram = dmirror_devmem_fault,
};

static struct dmirror_device *dmirror_page_dev(const struct uhmm_page *page)
{
	return (struct dmirror_device *)(uintptr_t)uhmm_page_owner(page);
}

/* Devices 0 and 1 have private memory, 2 and 3 coherent memory. */
static bool dmirror_coherent(const struct dmirror_device *dev)
{
	return dev->id >= 2;
}

/*
 * Add a chunk of device memory: the pagemap at the first call, a grown
 * one later (dmirror_allocate_chunk). Under dev->lock.
 */
static int dmirror_devmem_grow(struct dmirror_device *dev)
{
	unsigned long n = DMIRROR_CHUNK_BYTES >> dmirror_page_shift;
	unsigned long i, *fl;
	void *mem;
	long first;
	int ret;

	if (dev->nchunks >= DMIRROR_MAX_CHUNKS)
		return -ENOMEM;
	dev->chunk_pages = n;
	/* Coherent pages are their own storage (BACKING_PAGE()): uhmm's
	 * pool, uhmm_page_addr(). Private ones get a buffer. */
	mem = NULL;
	if (!dmirror_coherent(dev) &&
	    !(mem = uhmm_alloc(n << dmirror_page_shift)))
		return -ENOMEM;
	fl = uhmm_realloc(dev->free, (dev->nchunks + 1) * n * sizeof(*fl));
	if (!fl) {
		uhmm_free(mem);
		return -ENOMEM;
	}
	dev->free = fl;
	{
		unsigned long nb = (dev->nchunks + 1) * (n / DMIRROR_BLOCK_PAGES);
		unsigned long *bf = uhmm_realloc(dev->blk_free, nb * sizeof(*bf));
		uint16_t *bo;

		if (bf)
			dev->blk_free = bf;
		bo = bf ? uhmm_realloc(dev->blk_out, nb * sizeof(*bo)) : NULL;
		if (!bo) {
			uhmm_free(mem);
			return -ENOMEM;
		}
		dev->blk_out = bo;
	}
	if (!dev->dma && uhmm_dma_create(DMIRROR_DMA_THREADS, &dev->dma)) {
		uhmm_free(mem);
		return -ENOMEM;
	}
	if (!dev->pgmap) {
		ret = uhmm_pagemap_create(dmirror_coherent(dev) ?
					  UHMM_MEMORY_DEVICE_COHERENT :
					  UHMM_MEMORY_DEVICE_PRIVATE, dev,
					  &dmirror_devmem_ops, n, &dev->pgmap);
		first = ret ? ret : 0;
	} else {
		first = uhmm_pagemap_grow(dev->pgmap, n);
	}
	if (first < 0) {
		uhmm_free(mem);
		return (int)first;
	}
	for (i = 0; i < n; i++) {
		struct uhmm_page *page = uhmm_pagemap_page(dev->pgmap,
							   (unsigned long)first + i);

		uhmm_page_set_data(page, mem ? (char *)mem + (i << dmirror_page_shift) :
				   uhmm_page_addr(page));
	}
	/* Whole blocks, lowest indices on top. */
	for (i = n / DMIRROR_BLOCK_PAGES; i-- > 0;) {
		unsigned long b = (unsigned long)first / DMIRROR_BLOCK_PAGES + i;

		dev->blk_out[b] = 0;
		dev->blk_free[dev->nblk_free++] = b;
	}
	dev->mem[dev->nchunks++] = mem;
	return 0;
}

/* A free device page with reference count 1 (dmirror_devmem_alloc_page). */
static struct uhmm_page *dmirror_page_alloc(struct dmirror_device *dev)
{
	struct uhmm_page *page;

	pthread_mutex_lock(&dev->lock);
	if (!dev->nfree && !dev->nblk_free && dmirror_devmem_grow(dev)) {
		pthread_mutex_unlock(&dev->lock);
		return NULL;
	}
	if (!dev->nfree) {
		/* Break a block into base pages, lowest on top. */
		unsigned long b = dev->blk_free[--dev->nblk_free];

		for (unsigned long i = DMIRROR_BLOCK_PAGES; i-- > 0;)
			dev->free[dev->nfree++] = b * DMIRROR_BLOCK_PAGES + i;
	}
	page = uhmm_pagemap_page(dev->pgmap, dev->free[--dev->nfree]);
	dev->calloc++;
	pthread_mutex_unlock(&dev->lock);
	atomic_fetch_add_explicit(&dmirror_dev_pages, 1, memory_order_relaxed);
	uhmm_page_init(page);
	return page;
}

/*
 * A device THP (dmirror_devmem_alloc_page(..., is_large)): a free block,
 * its pages each with reference count 1, or NULL.
 */
static struct uhmm_page *dmirror_folio_alloc(struct dmirror_device *dev)
{
	struct uhmm_page *head;
	unsigned long b;

	pthread_mutex_lock(&dev->lock);
	if (!dev->nblk_free && dmirror_devmem_grow(dev)) {
		pthread_mutex_unlock(&dev->lock);
		return NULL;
	}
	b = dev->blk_free[--dev->nblk_free];
	dev->blk_out[b] = DMIRROR_BLOCK_PAGES;
	dev->calloc += DMIRROR_BLOCK_PAGES;
	pthread_mutex_unlock(&dev->lock);
	atomic_fetch_add_explicit(&dmirror_dev_pages, DMIRROR_BLOCK_PAGES,
				  memory_order_relaxed);
	head = uhmm_pagemap_page(dev->pgmap, b * DMIRROR_BLOCK_PAGES);
	for (unsigned long i = 0; i < DMIRROR_BLOCK_PAGES; i++)
		uhmm_page_init(uhmm_pagemap_page(dev->pgmap,
						 b * DMIRROR_BLOCK_PAGES + i));
	return head;
}

static void dmirror_page_free(struct uhmm_page *page)
{
	struct dmirror_device *dev = dmirror_page_dev(page);
	unsigned long idx = uhmm_page_index(page);
	unsigned long b = idx / DMIRROR_BLOCK_PAGES;

	pthread_mutex_lock(&dev->lock);
	if (dev->blk_out[b]) {
		/* The last page of a THP block brings the block back. */
		if (--dev->blk_out[b] == 0)
			dev->blk_free[dev->nblk_free++] = b;
	} else {
		dev->free[dev->nfree++] = idx;
	}
	dev->cfree++;
	pthread_mutex_unlock(&dev->lock);
	atomic_fetch_sub_explicit(&dmirror_dev_pages, 1, memory_order_relaxed);
}

/* FLAG_FAIL_ALLOC of @dm: whether this allocation must fail (once). */
static bool dmirror_fail_alloc(struct uhmm_dmirror *dm)
{
	bool fail;

	pthread_mutex_lock(&dm->lock);
	fail = dm->flags & UHMM_DMIRROR_FLAG_FAIL_ALLOC;
	dm->flags &= ~(uint64_t)UHMM_DMIRROR_FLAG_FAIL_ALLOC;
	pthread_mutex_unlock(&dm->lock);
	return fail;
}

/*
 * The same for a CPU fault, which belongs to no open: the flag of any
 * open of the device (the kernel takes the open that migrated the page).
 */
static bool dmirror_dev_fail_alloc(struct dmirror_device *dev)
{
	struct uhmm_dmirror *o;
	bool fail = false;

	pthread_mutex_lock(&dev->lock);
	for (o = dev->opens; o && !fail; o = o->dev_next)
		fail = dmirror_fail_alloc(o);
	pthread_mutex_unlock(&dev->lock);
	return fail;
}

/*
 * Drop the entries of the collected device pages of @m from the page
 * table of every open of the device: the device loses access before the
 * data move (the MIGRATE invalidation of the owner keeps them).
 */
static void dmirror_dev_unmap(struct dmirror_device *dev,
			      const struct uhmm_migrate *m)
{
	uint64_t vpn0 = m->start >> dmirror_page_shift;
	struct uhmm_dmirror *o;
	unsigned long i;

	pthread_mutex_lock(&dev->lock);
	for (o = dev->opens; o; o = o->dev_next) {
		bool hit = false;

		pthread_mutex_lock(&o->lock);
		for (i = 0; i < m->npages; i++) {
			unsigned long k, nk = 1;

			if (!(m->src[i] & UHMM_MIGRATE_PFN_MIGRATE))
				continue;
			if (m->src[i] & UHMM_MIGRATE_PFN_COMPOUND)
				nk = DMIRROR_BLOCK_PAGES;
			for (k = 0; k < nk && i + k < m->npages; k++) {
				uint64_t *leaf = pt_leaf(&o->pt, vpn0 + i + k);
				uint64_t j = (vpn0 + i + k) & PT_MASK;

				if (leaf && (leaf[j] & DMIRROR_PFN_DEVICE)) {
					leaf[j] = 0;
					hit = true;
				}
			}
		}
		if (hit)
			o->inv_count++;
		pthread_mutex_unlock(&o->lock);
	}
	pthread_mutex_unlock(&dev->lock);
}

/* Every device-memory entry of every open (eviction without addresses). */
static void dmirror_dev_unmap_all(struct dmirror_device *dev)
{
	struct uhmm_dmirror *o;

	pthread_mutex_lock(&dev->lock);
	for (o = dev->opens; o; o = o->dev_next) {
		pthread_mutex_lock(&o->lock);
		if (pt_clear_dev(&o->pt))
			o->inv_count++;
		pthread_mutex_unlock(&o->lock);
	}
	pthread_mutex_unlock(&dev->lock);
}

/*
 * Device -> system for the collected entries of @m: a system page each,
 * filled from the device's storage (dmirror_devmem_fault_alloc_and_copy).
 * FAIL_ALLOC (of @dm, or of the device for a CPU fault) makes one
 * allocation fail: that page stays on the device, unless it is
 * @fault_page, which must not be skipped. Returns -ENOMEM when
 * @fault_page could not be given a page.
 */
static int dmirror_to_sys_copy(struct dmirror_device *dev,
			       struct uhmm_dmirror *dm, struct uhmm_migrate *m,
			       struct uhmm_page *fault_page)
{
	struct uhmm_dma_desc d[DMIRROR_MIGRATE_CHUNK];
	struct dmirror_xfer x = { .d = d };
	unsigned long i;
	int ret = 0;

	if (m->npages > DMIRROR_MIGRATE_CHUNK)
		return -EINVAL;
	memset(m->dst, 0, m->npages * sizeof(*m->dst));
	dmirror_dev_unmap(dev, m);
	for (i = 0; i < m->npages; i++) {
		struct uhmm_page *page = uhmm_migrate_pfn_to_page(m->src[i]);
		int tries = page == fault_page ? DMIRROR_FAULT_ALLOC_TRIES : 1;
		bool fail;
		int r = -ENOMEM;

		if (!(m->src[i] & UHMM_MIGRATE_PFN_MIGRATE) || !page)
			continue;
		fail = dm ? dmirror_fail_alloc(dm) : dmirror_dev_fail_alloc(dev);
		if (m->src[i] & UHMM_MIGRATE_PFN_COMPOUND) {
			/* A device THP: a system THP, or base pages. */
			if (!fail && !uhmm_migrate_alloc_system_compound(&m->dst[i])) {
				xfer_add(&x, uhmm_migrate_pfn_to_addr(m->dst[i]),
					 uhmm_page_data(page),
					 DMIRROR_BLOCK_PAGES << dmirror_page_shift);
			} else {
				unsigned long idx = uhmm_page_index(page);

				for (unsigned long k = 0; k < DMIRROR_BLOCK_PAGES &&
				     i + k < m->npages; k++) {
					struct uhmm_page *pk = uhmm_pagemap_page(
						dev->pgmap, idx + k);

					r = -ENOMEM;
					for (tries = DMIRROR_FAULT_ALLOC_TRIES;
					     tries-- > 0 && r;)
						r = uhmm_migrate_alloc_system(&m->dst[i + k]);
					if (r) {
						m->dst[i + k] = 0;
						if (pk == fault_page)
							ret = r;
						continue;
					}
					xfer_add(&x, uhmm_migrate_pfn_to_addr(m->dst[i + k]),
						 uhmm_page_data(pk), dmirror_page_size);
				}
			}
			i += DMIRROR_BLOCK_PAGES - 1;
			continue;
		}
		if (fail && page != fault_page)
			continue;
		while (tries-- > 0 && r)
			r = uhmm_migrate_alloc_system(&m->dst[i]);
		if (r) {
			m->dst[i] = 0;
			if (page == fault_page)
				ret = r;
			continue;
		}
		xfer_add(&x, uhmm_migrate_pfn_to_addr(m->dst[i]),
			 uhmm_page_data(page), dmirror_page_size);
	}
	/* Device memory and staging pages do not fault: a failure here
	 * means a page must stay where it is. */
	if (xfer_run(dev, &x)) {
		memset(m->dst, 0, m->npages * sizeof(*m->dst));
		ret = -EFAULT;
	}
	return ret;
}

/*
 * uhmm_migrate_setup() of at most [start, end): a range that crosses a
 * VMA boundary is -EINVAL, and the public API has no VMA lookup, so the
 * chunk is halved until it fits (a boundary costs a few failed setups,
 * which check the range before doing anything). m->end says how far it
 * got.
 */
static int dmirror_migrate_setup(struct uhmm_migrate *m, unsigned long start,
				 unsigned long end, uint64_t *src, uint64_t *dst,
				 const void *owner, unsigned long flags,
				 struct uhmm_page *fault_page)
{
	unsigned long n = (end - start) >> dmirror_page_shift;
	int ret;

	for (;;) {
		memset(m, 0, sizeof(*m));
		m->start = start;
		m->end = start + (n << dmirror_page_shift);
		m->src = src;
		m->dst = dst;
		m->pgmap_owner = owner;
		m->flags = flags;
		m->fault_page = fault_page;
		if (flags & UHMM_MIGRATE_SELECT_DEVICE_COHERENT)
			dmirror_tl_coherent_out = owner;
		ret = uhmm_migrate_setup(m);
		dmirror_tl_coherent_out = NULL;
		if (ret != -EINVAL || n == 1)
			return ret;
		n /= 2;
	}
}

/*
 * migrate_to_ram (dmirror_devmem_fault), on a uhmm monitor thread: the
 * core's read-ahead window, or the faulting page alone when the window
 * does not fit one VMA.
 */
static int dmirror_devmem_fault(struct uhmm_fault *vmf)
{
	struct dmirror_device *dev = dmirror_page_dev(vmf->page);
	uint64_t src[DMIRROR_MIGRATE_CHUNK], dst[DMIRROR_MIGRATE_CHUNK];
	unsigned long start = vmf->ra_start, end = vmf->ra_end;
	struct uhmm_migrate m;
	unsigned long flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE;
	int ret;

	/* A device THP comes back whole (the kernel's SELECT_COMPOUND). */
	if (uhmm_page_order(vmf->page)) {
		start = vmf->address & ~((DMIRROR_BLOCK_PAGES << dmirror_page_shift) - 1);
		end = start + (DMIRROR_BLOCK_PAGES << dmirror_page_shift);
		flags |= UHMM_MIGRATE_SELECT_COMPOUND;
	}
	if (start > vmf->address || end <= vmf->address || start & (dmirror_page_size - 1) ||
	    end & (dmirror_page_size - 1) ||
	    (end - start) >> dmirror_page_shift > DMIRROR_MIGRATE_CHUNK) {
		start = vmf->address;
		end = start + dmirror_page_size;
	}
	ret = dmirror_migrate_setup(&m, start, end, src, dst, dev, flags,
				    vmf->page);
	if (ret == 0 && (vmf->address < m.start || vmf->address >= m.end)) {
		/* Halving lost the faulting page: that page alone. */
		uhmm_migrate_finalize(&m);
		ret = -EINVAL;
	}
	if (ret == -EINVAL && end - start > dmirror_page_size)
		ret = dmirror_migrate_setup(&m, vmf->address,
					    vmf->address + dmirror_page_size,
					    src, dst, dev,
					    UHMM_MIGRATE_SELECT_DEVICE_PRIVATE,
					    vmf->page);
	if (ret)
		return ret;
	ret = dmirror_to_sys_copy(dev, NULL, &m, vmf->page);
	uhmm_migrate_pages(&m);
	uhmm_migrate_finalize(&m);
	return ret;
}

/*
 * Evict every page of the device to system memory (dmirror_device_evict_
 * chunk): RELEASE, and the close of the last open. Pages a CPU fault is
 * migrating at that moment are left to it.
 */
static int dmirror_dev_evict(struct dmirror_device *dev)
{
	struct uhmm_pagemap *pgmap;
	unsigned long npages, first, i, n;
	struct dmirror_xfer x = { 0 };
	uint64_t *src, *dst;

	pthread_mutex_lock(&dev->lock);
	pgmap = dev->pgmap;
	npages = pgmap ? uhmm_pagemap_npages(pgmap) : 0;
	pthread_mutex_unlock(&dev->lock);
	if (!npages)
		return 0;
	src = uhmm_alloc(DMIRROR_EVICT_CHUNK * sizeof(*src));
	dst = uhmm_alloc(DMIRROR_EVICT_CHUNK * sizeof(*dst));
	x.d = uhmm_alloc(DMIRROR_EVICT_CHUNK * sizeof(*x.d));
	if (!src || !dst || !x.d) {
		uhmm_free(src);
		uhmm_free(dst);
		uhmm_free(x.d);
		return -ENOMEM;
	}
	for (first = 0; first < npages; first += n) {
		bool any = false;

		n = npages - first;
		if (n > DMIRROR_EVICT_CHUNK)
			n = DMIRROR_EVICT_CHUNK;
		if (uhmm_migrate_device_range(src, pgmap, first, n))
			continue;
		for (i = 0; i < n && !any; i++)
			any = src[i] & UHMM_MIGRATE_PFN_MIGRATE;
		if (!any)
			continue;
		/*
		 * uhmm_migrate_device_range() raises no invalidation and the
		 * addresses are unknown here: drop every device entry.
		 */
		dmirror_dev_unmap_all(dev);
		memset(dst, 0, n * sizeof(*dst));
		for (i = 0; i < n; i++) {
			struct uhmm_page *page = uhmm_migrate_pfn_to_page(src[i]);
			int tries = DMIRROR_FAULT_ALLOC_TRIES, r = -ENOMEM;

			if (!page || !(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
				continue;
			while (tries-- > 0 && r)
				r = uhmm_migrate_alloc_system(&dst[i]);
			if (r) {
				dst[i] = 0;
				continue;
			}
			xfer_add(&x, uhmm_migrate_pfn_to_addr(dst[i]),
				 uhmm_page_data(page), dmirror_page_size);
		}
		if (xfer_run(dev, &x))
			memset(dst, 0, n * sizeof(*dst));
		uhmm_migrate_device_finalize(src, dst, n);
	}
	uhmm_free(src);
	uhmm_free(dst);
	uhmm_free(x.d);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Migration commands                                                   */
/* ------------------------------------------------------------------ */

/*
 * -EINVAL if a page of [start, end) has no mapping or is not readable
 * (a snapshot: nothing is faulted).
 */
static int dmirror_error_chunk(struct uhmm_dmirror *dm,
			       const struct uhmm_range *range, unsigned long n,
			       void *arg)
{
	(void)dm;
	(void)arg;
	for (unsigned long i = 0; i < n; i++)
		if (range->hmm_pfns[i] & UHMM_PFN_ERROR)
			return -EINVAL;
	return 0;
}

static int dmirror_check_mapped(struct uhmm_dmirror *dm, unsigned long start,
				unsigned long end)
{
	int ret;

	/*
	 * Invalidations of munmaps and madvises that returned have run
	 * (they run on uhmm's worker): one landing later would clear the
	 * entries this command is about to install.
	 */
	ret = uhmm_range_revalidate(start, end);
	if (ret)
		return ret;
	ret = dmirror_walk(dm, start, end, 0, dmirror_error_chunk, NULL);

	return ret == -EFAULT ? -EINVAL : ret;
}

/*
 * The read-back of MIGRATE_TO_DEV (dmirror_do_read): through the device
 * page table only, nothing is faulted; -ENOENT when a page has no entry.
 */
static int dmirror_read_back(struct uhmm_dmirror *dm,
			     struct uhmm_dmirror_cmd *cmd, unsigned long start)
{
	uint64_t npages = cmd->npages, n;
	uint64_t vpn = start >> dmirror_page_shift;
	struct dmirror_copy c = {
		.buf = (char *)(uintptr_t)cmd->ptr,
		.write = false,
	};
	int ret;

	dmirror_buf_prefault(cmd->ptr, npages << dmirror_page_shift);
	pthread_mutex_lock(&dm->lock);
	n = pt_scan(&dm->pt, vpn, npages, UHMM_PFN_VALID);
	if (n < npages) {
		pthread_mutex_unlock(&dm->lock);
		cmd->cpages = n;
		return -ENOENT;
	}
	ret = dmirror_copy_pages(dm, vpn, npages, &c);
	pthread_mutex_unlock(&dm->lock);
	cmd->cpages = ret ? c.done : npages;
	return ret;
}

/*
 * EXCLUSIVE (dmirror_exclusive): each page becomes exclusive to the
 * device, with an ATOMIC entry; then the data are read back through the
 * device page table. The CPU's next touch revokes it (an EXCLUSIVE
 * invalidation clears the entry).
 */
static int dmirror_exclusive(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd,
			     unsigned long start, unsigned long end)
{
	unsigned long addr;
	int ret;

	ret = dmirror_notifier_get(dm);
	if (ret)
		return ret;
	ret = dmirror_check_mapped(dm, start, end);
	if (ret)
		return ret;
	for (addr = start; addr < end; addr += dmirror_page_size) {
		uint64_t vpn = addr >> dmirror_page_shift, *leaf = NULL;
		uint64_t deadline = dmirror_now_ns() + DMIRROR_TIMEOUT_NS;
		void *dev_addr;

		/*
		 * A CPU touch between make_device_exclusive() and the entry
		 * revokes it (an EXCLUSIVE invalidation): the sequence says
		 * so, and the page is taken again, or the entry would stay
		 * ATOMIC with the CPU owning the page. Any invalidation
		 * callback after the taking's own (dmirror_invalidate()
		 * counts them) may be a revoke. Not the sequence: a revoke
		 * open at the same time as another invalidation gets that
		 * one's sequence, which may be the taking's own.
		 */
		for (;;) {
			ret = uhmm_make_device_exclusive(addr, dm, &dev_addr);
			if (ret)
				return ret;
			pthread_mutex_lock(&dm->lock);
			if (dm->notifier && dm->excl_mark == dm->inv_calls)
				break;
			pthread_mutex_unlock(&dm->lock);
			if (dmirror_now_ns() > deadline)
				return -EBUSY;
		}
		leaf = pt_leaf_alloc(&dm->pt, vpn);
		if (leaf)
			leaf[vpn & PT_MASK] = UHMM_PFN_VALID | UHMM_PFN_WRITE |
				DMIRROR_PFN_ATOMIC |
				(((uintptr_t)dev_addr >> dmirror_page_shift) &
				 UHMM_PFN_FRAME_MASK);
		pthread_mutex_unlock(&dm->lock);
		if (!leaf)
			return -ENOMEM;
	}
	return dmirror_read_back(dm, cmd, start);
}

/* Whether an entry of @leaf [from, to) is ATOMIC (stops the walk). */
static bool pt_atomic_leaf(uint64_t *leaf, uint64_t from, uint64_t to,
			   void *arg)
{
	(void)arg;
	for (uint64_t j = from; j < to; j++)
		if (leaf[j] & DMIRROR_PFN_ATOMIC)
			return true;
	return false;
}

/* CHECK_EXCLUSIVE: -EPERM while an ATOMIC entry remains in the range. */
static int dmirror_check_exclusive(struct uhmm_dmirror *dm, unsigned long start,
				   unsigned long end)
{
	int ret = 0;

	/* A walk of what is mapped: npages may be huge. */
	pthread_mutex_lock(&dm->lock);
	if (pt_walk(&dm->pt, start >> dmirror_page_shift,
		    end >> dmirror_page_shift, pt_atomic_leaf, NULL))
		ret = -EPERM;
	pthread_mutex_unlock(&dm->lock);
	return ret;
}

/* Pages of the next migration chunk: at most DMIRROR_MIGRATE_CHUNK, and
 * ending at a 2 MiB boundary, so that THPs fall in one chunk. */
static unsigned long dmirror_chunk_pages(unsigned long addr, unsigned long end)
{
	unsigned long blk = DMIRROR_BLOCK_PAGES << dmirror_page_shift;
	unsigned long next = (addr | (blk - 1)) + 1;

	if (next > end || next < addr)
		next = end;
	return (next - addr) >> dmirror_page_shift;
}

/*
 * A COMPOUND source entry of MIGRATE_TO_DEV: a device THP, or, when that
 * allocation fails (FAIL_ALLOC forces it once), base pages for each of
 * its pages (dmirror_migrate_alloc_and_copy). Returns the entries used.
 */
static unsigned long dmirror_to_dev_folio(struct uhmm_dmirror *dm,
					  struct dmirror_xfer *x,
					  const uint64_t *src, uint64_t *dst,
					  unsigned long left)
{
	struct dmirror_device *dev = dm->dev;
	unsigned long n = left < DMIRROR_BLOCK_PAGES ? left : DMIRROR_BLOCK_PAGES;
	size_t ps = dmirror_page_size;
	char *from = uhmm_migrate_pfn_to_addr(src[0]);
	struct uhmm_page *head = NULL;

	if (!dmirror_fail_alloc(dm) && n == DMIRROR_BLOCK_PAGES)
		head = dmirror_folio_alloc(dev);
	if (head) {
		char *mem = uhmm_page_data(head);

		if (from)
			xfer_add(x, mem, from, n * ps);
		else
			memset(mem, 0, n * ps);
		dst[0] = uhmm_migrate_pfn_device(head) | UHMM_MIGRATE_PFN_COMPOUND |
			 (src[0] & UHMM_MIGRATE_PFN_WRITE);
		return n;
	}
	for (unsigned long k = 0; k < n; k++) {
		struct uhmm_page *page = dmirror_page_alloc(dev);
		char *mem;

		if (!page)
			break;
		mem = uhmm_page_data(page);
		if (from)
			xfer_add(x, mem, from + k * ps, ps);
		else
			memset(mem, 0, ps);
		dst[k] = uhmm_migrate_pfn_device(page) |
			 (src[0] & UHMM_MIGRATE_PFN_WRITE);
	}
	return n;
}

/* Give back the device page(s) of a dst[] entry (a THP: all of them). */
static void dmirror_put_dst(struct dmirror_device *dev, uint64_t dst)
{
	struct uhmm_page *page = uhmm_migrate_pfn_to_page(dst);
	unsigned long n = (dst & UHMM_MIGRATE_PFN_COMPOUND) ? DMIRROR_BLOCK_PAGES : 1;

	for (unsigned long k = 0; page && k < n; k++)
		uhmm_page_put(uhmm_pagemap_page(dev->pgmap, uhmm_page_index(page) + k));
}

/* MIGRATE_TO_DEV (dmirror_migrate_to_device). */
static int dmirror_migrate_to_dev(struct uhmm_dmirror *dm,
				  struct uhmm_dmirror_cmd *cmd,
				  unsigned long start, unsigned long end)
{
	struct dmirror_device *dev = dm->dev;
	uint64_t src[DMIRROR_MIGRATE_CHUNK], dst[DMIRROR_MIGRATE_CHUNK];
	struct uhmm_dma_desc d[DMIRROR_MIGRATE_CHUNK];
	struct dmirror_xfer x = { .d = d };
	struct uhmm_migrate m;
	unsigned long addr, i;
	int ret;

	ret = dmirror_notifier_get(dm);
	if (ret)
		return ret;
	ret = dmirror_check_mapped(dm, start, end);
	if (ret)
		return ret;
	/*
	 * The read-back buffer off the devices first: faulting it back
	 * after the migration could take pages of the range with it (the
	 * core's fault-back read-ahead).
	 */
	dmirror_buf_prefault(cmd->ptr, cmd->npages << dmirror_page_shift);

	for (addr = start; addr < end; addr = m.end) {
		unsigned long n = dmirror_chunk_pages(addr, end);
		uint64_t vpn = addr >> dmirror_page_shift;
		uint64_t *leaf = NULL;
		uint64_t left = 0, cflags = 0;
		struct uhmm_page *chead = NULL;

		ret = dmirror_migrate_setup(&m, addr,
					    addr + (n << dmirror_page_shift),
					    src, dst, dev,
					    UHMM_MIGRATE_SELECT_SYSTEM |
					    (dmirror_coherent(dev) ? 0 :
					     UHMM_MIGRATE_SELECT_COMPOUND), NULL);
		if (ret)
			return ret;
		memset(dst, 0, m.npages * sizeof(*dst));
		for (i = 0; i < m.npages; i++) {
			struct uhmm_page *page;
			char *mem;

			if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
				continue;
			if (src[i] & UHMM_MIGRATE_PFN_COMPOUND) {
				i += dmirror_to_dev_folio(dm, &x, &src[i], &dst[i],
							  m.npages - i) - 1;
				continue;
			}
			if (dmirror_fail_alloc(dm))
				continue;
			page = dmirror_page_alloc(dev);
			if (!page)
				continue;
			mem = uhmm_page_data(page);
			if (src[i] & UHMM_MIGRATE_PFN_VALID)
				xfer_add(&x, mem, uhmm_migrate_pfn_to_addr(src[i]),
					 dmirror_page_size);
			else
				memset(mem, 0, dmirror_page_size);
			dst[i] = uhmm_migrate_pfn_device(page) |
				 (src[i] & UHMM_MIGRATE_PFN_WRITE);
		}
		if (xfer_run(dev, &x)) {
			/* Nothing moves: the pages go back to the device. */
			for (i = 0; i < m.npages; i++) {
				dmirror_put_dst(dev, dst[i]);
				dst[i] = 0;
			}
		}
		uhmm_migrate_pages(&m);

		/*
		 * The migrated pages in this open's page table, as
		 * uhmm_range_fault() reports them to their owner
		 * (dmirror_migrate_finalize_and_map).
		 */
		pthread_mutex_lock(&dm->lock);
		for (i = 0; i < m.npages; i++, vpn++) {
			uint64_t dd = dst[i], sf = src[i];

			if (!leaf || !(vpn & PT_MASK))
				leaf = pt_leaf_alloc(&dm->pt, vpn);
			if (left) {
				/* A tail page of a device THP. */
				left--;
				chead = uhmm_pagemap_page(dev->pgmap,
						uhmm_page_index(chead) + 1);
				dd = uhmm_migrate_pfn_device(chead);
				sf = cflags;
			} else if ((sf & UHMM_MIGRATE_PFN_MIGRATE) &&
				   (dd & UHMM_MIGRATE_PFN_COMPOUND)) {
				chead = uhmm_migrate_pfn_to_page(dd);
				left = DMIRROR_BLOCK_PAGES - 1;
				cflags = sf;
			}
			if (!leaf || !(sf & UHMM_MIGRATE_PFN_MIGRATE) || !dd)
				continue;
			/* Coherent memory is mapped at its address: the
			 * device reaches it there, as the CPU does. */
			leaf[vpn & PT_MASK] = UHMM_PFN_VALID |
				((sf & UHMM_MIGRATE_PFN_WRITE) ?
				 UHMM_PFN_WRITE : 0) |
				(dmirror_coherent(dev) ?
				 UHMM_PFN_DEVICE_COHERENT | (vpn & UHMM_PFN_FRAME_MASK) :
				 UHMM_PFN_DEVICE_PRIVATE |
				 ((dd >> UHMM_MIGRATE_PFN_SHIFT) &
				  UHMM_PFN_FRAME_MASK));
		}
		pthread_mutex_unlock(&dm->lock);
		uhmm_migrate_finalize(&m);
		/* Pages allocated for entries that did not move. */
		for (i = 0; i < m.npages; i++)
			if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
				dmirror_put_dst(dev, dst[i]);
	}

	/* Return the migrated data for verification. */
	return dmirror_read_back(dm, cmd, start);
}

/* MIGRATE_TO_SYS (dmirror_migrate_to_system). */
static int dmirror_migrate_to_sys(struct uhmm_dmirror *dm,
				  struct uhmm_dmirror_cmd *cmd,
				  unsigned long start, unsigned long end)
{
	struct dmirror_device *dev = dm->dev;
	uint64_t src[DMIRROR_MIGRATE_CHUNK], dst[DMIRROR_MIGRATE_CHUNK];
	struct uhmm_migrate m;
	unsigned long addr, i;
	int ret;

	ret = dmirror_notifier_get(dm);
	if (ret)
		return ret;
	ret = dmirror_check_mapped(dm, start, end);
	if (ret)
		return ret;

	for (addr = start; addr < end; addr = m.end) {
		unsigned long n = dmirror_chunk_pages(addr, end);

		ret = dmirror_migrate_setup(&m, addr,
					    addr + (n << dmirror_page_shift),
					    src, dst, dev,
					    dmirror_coherent(dev) ?
					    UHMM_MIGRATE_SELECT_DEVICE_COHERENT :
					    UHMM_MIGRATE_SELECT_DEVICE_PRIVATE |
					    UHMM_MIGRATE_SELECT_COMPOUND,
					    NULL);
		if (ret)
			return ret;
		dmirror_to_sys_copy(dev, dm, &m, NULL);
		uhmm_migrate_pages(&m);
		for (i = 0; i < m.npages; i++)
			if ((src[i] & UHMM_MIGRATE_PFN_MIGRATE) &&
			    (src[i] & UHMM_MIGRATE_PFN_VALID))
				cmd->cpages += (src[i] & UHMM_MIGRATE_PFN_COMPOUND) ?
					DMIRROR_BLOCK_PAGES : 1;
		uhmm_migrate_finalize(&m);
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Devices and opens                                                    */
/* ------------------------------------------------------------------ */

static bool dmirror_device_supported(int device)
{
	return device >= 0 && device < DMIRROR_NDEVICES;
}

static int dmirror_device_get(int device, struct dmirror_device **out)
{
	struct dmirror_device *dev;

	pthread_mutex_lock(&dmirror_table.lock);
	dev = dmirror_table.dev[device];
	if (!dev) {
		dev = uhmm_calloc(1, sizeof(*dev));
		if (!dev) {
			pthread_mutex_unlock(&dmirror_table.lock);
			return -ENOMEM;
		}
		dev->id = device;
		pthread_mutex_init(&dev->lock, NULL);
		dmirror_table.dev[device] = dev;
	}
	dev->refs++;
	pthread_mutex_unlock(&dmirror_table.lock);
	*out = dev;
	return 0;
}

/*
 * Drop an open's reference. The last one migrates the device's memory back
 * (no data lost) and frees it, unless pages are still referenced (a CPU
 * fault migrating one right now): then the device object stays, as the
 * owner of those pages.
 */
/* Free a device nobody opens whose pages are all back; false if busy. */
static bool dmirror_device_free(struct dmirror_device *dev)
{
	unsigned int i;
	bool idle;

	pthread_mutex_lock(&dev->lock);
	idle = dev->calloc == dev->cfree;
	pthread_mutex_unlock(&dev->lock);
	if (dev->pgmap && (!idle || uhmm_pagemap_destroy(dev->pgmap)))
		return false;
	for (i = 0; i < dev->nchunks; i++)
		uhmm_free(dev->mem[i]);
	if (dev->dma)
		uhmm_dma_destroy(dev->dma);
	uhmm_free(dev->free);
	uhmm_free(dev->blk_free);
	uhmm_free(dev->blk_out);
	pthread_mutex_destroy(&dev->lock);
	uhmm_free(dev);
	return true;
}

/* Free the orphans that are idle now (never from a page_free callback). */
static void dmirror_orphans_sweep(void)
{
	struct dmirror_device **pp, *dev, *busy = NULL;

	pthread_mutex_lock(&dmirror_table.lock);
	dev = dmirror_table.orphans;
	dmirror_table.orphans = NULL;
	pthread_mutex_unlock(&dmirror_table.lock);
	while (dev) {
		struct dmirror_device *next = dev->orphan_next;

		if (!dmirror_device_free(dev)) {
			dev->orphan_next = busy;
			busy = dev;
		}
		dev = next;
	}
	if (!busy)
		return;
	pthread_mutex_lock(&dmirror_table.lock);
	for (pp = &busy; *pp; pp = &(*pp)->orphan_next)
		;
	*pp = dmirror_table.orphans;
	dmirror_table.orphans = busy;
	pthread_mutex_unlock(&dmirror_table.lock);
}

static void dmirror_device_put(struct dmirror_device *dev)
{
	bool last;

	pthread_mutex_lock(&dmirror_table.lock);
	last = --dev->refs == 0;
	if (last && dmirror_table.dev[dev->id] == dev)
		dmirror_table.dev[dev->id] = NULL;
	pthread_mutex_unlock(&dmirror_table.lock);
	if (!last)
		return;

	dmirror_dev_evict(dev);
	if (!dmirror_device_free(dev)) {
		/* A page still referenced: the device stays its owner. */
		pthread_mutex_lock(&dmirror_table.lock);
		dev->orphan_next = dmirror_table.orphans;
		dmirror_table.orphans = dev;
		pthread_mutex_unlock(&dmirror_table.lock);
	}
	dmirror_orphans_sweep();
}

static void dmirror_open_link(struct uhmm_dmirror *dm)
{
	pthread_mutex_lock(&dm->dev->lock);
	dm->dev_next = dm->dev->opens;
	dm->dev->opens = dm;
	pthread_mutex_unlock(&dm->dev->lock);
}

static void dmirror_open_unlink(struct uhmm_dmirror *dm)
{
	struct uhmm_dmirror **pp;

	pthread_mutex_lock(&dm->dev->lock);
	for (pp = &dm->dev->opens; *pp; pp = &(*pp)->dev_next) {
		if (*pp == dm) {
			*pp = dm->dev_next;
			break;
		}
	}
	pthread_mutex_unlock(&dm->dev->lock);
}

UHMM_API int uhmm_dmirror_open(int device, struct uhmm_dmirror **out)
{
	struct uhmm_dmirror *dm;
	int ret;

	if (!out)
		return -EINVAL;
	if (device < 0 || device >= DMIRROR_NDEVICES ||
	    !dmirror_device_supported(device))
		return -ENODEV;
	pthread_once(&dmirror_once, dmirror_init_once);
	if (dmirror_once_err)
		return dmirror_once_err;

	dm = uhmm_calloc(1, sizeof(*dm));
	if (!dm)
		return -ENOMEM;
	dmirror_orphans_sweep();
	dm->gen = atomic_load(&dmirror_gen);
	dm->nend = ULONG_MAX & ~(dmirror_page_size - 1);
	pthread_mutex_init(&dm->lock, NULL);

	ret = pt_init(&dm->pt);
	if (ret)
		goto err_free;

	ret = dmirror_device_get(device, &dm->dev);
	if (ret)
		goto err_pt;

	ret = uhmm_interval_notifier_insert(&dm->notifier, 0, dm->nend,
					    &dmirror_notifier_ops, dm);
	if (ret)
		goto err_dev;
	dmirror_open_link(dm);

	*out = dm;
	return 0;

err_dev:
	dmirror_device_put(dm->dev);
err_pt:
	pt_destroy(&dm->pt);
err_free:
	pthread_mutex_destroy(&dm->lock);
	uhmm_free(dm);
	return ret;
}

static bool dmirror_stale(const struct uhmm_dmirror *dm)
{
	return dm->gen != atomic_load(&dmirror_gen);
}

UHMM_API int uhmm_dmirror_close(struct uhmm_dmirror *dm)
{
	if (!dm)
		return -EINVAL;
	if (dmirror_stale(dm))
		return -EBADF;

	if (dm->notifier)
		uhmm_interval_notifier_remove(dm->notifier);
	dmirror_open_unlink(dm);
	pt_destroy(&dm->pt);
	uhmm_free(dm->snap_pfns);
	dmirror_device_put(dm->dev);
	pthread_mutex_destroy(&dm->lock);
	uhmm_free(dm);
	return 0;
}

UHMM_API int uhmm_dmirror_cmd(struct uhmm_dmirror *dm, enum uhmm_dmirror_op op,
			      struct uhmm_dmirror_cmd *cmd)
{
	unsigned long start, end;
	uint64_t len, e;

	if (!dm || !cmd)
		return -EINVAL;
	if (dmirror_stale(dm))
		return -EBADF;

	cmd->cpages = 0;
	cmd->faults = 0;

	if (cmd->addr & (dmirror_page_size - 1) || !cmd->npages)
		return -EINVAL;
	if (__builtin_mul_overflow(cmd->npages, (uint64_t)dmirror_page_size,
				   &len) ||
	    __builtin_add_overflow(cmd->addr, len, &e) || e > dm->nend)
		return -EINVAL;
	start = (unsigned long)cmd->addr;
	end = (unsigned long)e;

	switch (op) {
	case UHMM_DMIRROR_READ:
	case UHMM_DMIRROR_WRITE:
		if (__builtin_add_overflow(cmd->ptr, len, &e))
			return -EFAULT;
		return op == UHMM_DMIRROR_READ ?
			dmirror_read(dm, cmd, start, end) :
			dmirror_write(dm, cmd, start, end);
	case UHMM_DMIRROR_SNAPSHOT:
		if (__builtin_add_overflow(cmd->ptr, cmd->npages, &e))
			return -EFAULT;
		return dmirror_snapshot(dm, cmd, start, end);
	case UHMM_DMIRROR_FLAGS:
		pthread_mutex_lock(&dm->lock);
		dm->flags = cmd->npages;
		pthread_mutex_unlock(&dm->lock);
		return 0;
	case UHMM_DMIRROR_RELEASE:
		dmirror_dev_evict(dm->dev);
		return 0;
	case UHMM_DMIRROR_MIGRATE_TO_DEV:
		if (__builtin_add_overflow(cmd->ptr, len, &e))
			return -EFAULT;
		return dmirror_migrate_to_dev(dm, cmd, start, end);
	case UHMM_DMIRROR_MIGRATE_TO_SYS:
		return dmirror_migrate_to_sys(dm, cmd, start, end);
	case UHMM_DMIRROR_EXCLUSIVE:
		if (__builtin_add_overflow(cmd->ptr, len, &e))
			return -EFAULT;
		return dmirror_exclusive(dm, cmd, start, end);
	case UHMM_DMIRROR_CHECK_EXCLUSIVE:
		return dmirror_check_exclusive(dm, start, end);
	}
	return -EINVAL;
}

/* ------------------------------------------------------------------ */
/* Byte-granular device access (uhmm_dmirror_access)                    */
/* ------------------------------------------------------------------ */

/*
 * Bytes moved per critical section. They go through a bounce buffer on
 * the stack, so that the caller's buffer is touched only outside dm->lock
 * (a device page in it is brought back by migrate_to_ram, which takes the
 * locks of the device's opens).
 */
#define DMIRROR_ACCESS_BOUNCE	512

/*
 * Copy [addr, addr + len) between the pages the device page table points
 * at and @bounce, under dm->lock: device memory of this device directly,
 * system pages through the CPU's page tables. Returns 0, -ENOENT when a
 * page has no entry (for a store: no writable one), or -EFAULT when a
 * copy faulted (a stale entry); *miss is the address of that page.
 */
static int dmirror_access_locked(struct uhmm_dmirror *dm, uint64_t addr,
				 char *bounce, size_t len, bool write,
				 uint64_t *miss)
{
	uint64_t need = UHMM_PFN_VALID | (write ? UHMM_PFN_WRITE : 0);

	while (len) {
		uint64_t vpn = addr >> dmirror_page_shift;
		size_t off = (size_t)(addr & (dmirror_page_size - 1));
		size_t n = dmirror_page_size - off;
		const uint64_t *leaf = pt_leaf(&dm->pt, vpn);
		uint64_t e = leaf ? leaf[vpn & PT_MASK] : 0;
		char *mem;

		if (n > len)
			n = len;
		*miss = addr;
		if ((e & need) != need)
			return -ENOENT;
		if (e & DMIRROR_PFN_DEVICE) {
			struct uhmm_page *page = uhmm_pfn_to_page(e);

			if (!page || uhmm_page_owner(page) != dm->dev)
				return -EFAULT;
			mem = (char *)uhmm_page_data(page) + off;
			if (write)
				memcpy(mem, bounce, n);
			else
				memcpy(bounce, mem, n);
		} else {
			int r;

			mem = (char *)uhmm_pfn_to_addr(e) + off;
			r = write ? uhmm_copy_nofault(mem, bounce, n, NULL) :
				    uhmm_copy_nofault(bounce, mem, n, NULL);
			if (r)
				return -EFAULT;
		}
		addr += n;
		bounce += n;
		len -= n;
	}
	return 0;
}

UHMM_API int uhmm_dmirror_access(struct uhmm_dmirror *dm, uint64_t addr,
				 void *buf, size_t len, int write,
				 uint64_t *faults)
{
	uint64_t pmask = dmirror_page_size - 1, e, nfaults = 0;
	unsigned int copy_faults = 0, rounds = 0;
	char bounce[DMIRROR_ACCESS_BOUNCE];
	char *b = buf;
	int ret = 0;

	if (faults)
		*faults = 0;
	if (!dm || !buf || !len)
		return -EINVAL;
	if (dmirror_stale(dm))
		return -EBADF;
	if (__builtin_add_overflow(addr, (uint64_t)len, &e) || e > dm->nend)
		return -EINVAL;
	if ((uintptr_t)b + len < (uintptr_t)b)
		return -EFAULT;

	while (len) {
		size_t n = len < sizeof(bounce) ? len : sizeof(bounce);
		uint64_t miss = addr, fend;

		if (write && uhmm_copy_nofault(bounce, b, n, NULL)) {
			ret = -EFAULT;
			break;
		}
		pthread_mutex_lock(&dm->lock);
		ret = dmirror_access_locked(dm, addr, bounce, n, write, &miss);
		pthread_mutex_unlock(&dm->lock);
		if (!ret) {
			if (!write && uhmm_copy_nofault(b, bounce, n, NULL)) {
				ret = -EFAULT;
				break;
			}
			addr += n;
			b += n;
			len -= n;
			rounds = 0;
			continue;
		}

		/*
		 * The slow path, as READ's: a stale entry (the mapping
		 * vanished or lost access under the device) is dropped by
		 * revalidating, outside the lock since it runs the
		 * callbacks; then a fault round over the rest of this piece.
		 */
		fend = (addr + n + pmask) & ~pmask;
		miss &= ~pmask;
		if (ret == -EFAULT) {
			if (++copy_faults > DMIRROR_COPY_RETRIES)
				break;
			uhmm_range_revalidate((unsigned long)miss,
					      (unsigned long)fend);
		}
		if (++rounds > DMIRROR_READ_RESTARTS) {
			ret = -EBUSY;
			break;
		}
		ret = dmirror_notifier_get(dm);
		if (ret)
			break;
		ret = dmirror_fault(dm, (unsigned long)miss,
				    (unsigned long)fend, write);
		if (ret)
			break;
		nfaults++;
	}
	if (faults)
		*faults = nfaults;
	return ret;
}
