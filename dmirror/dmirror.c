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
struct dmirror_device {
	int id;
	unsigned int refs;	/* opens; under dmirror_table.lock */
};

/* One open (the kernel's per-file struct dmirror). */
struct uhmm_dmirror {
	struct dmirror_device *dev;
	/* NULL once uhmm_shutdown() has released and freed it. */
	struct uhmm_interval_notifier *notifier;	/* under dm->lock */
	unsigned long nend;	/* end of the notifier's range */
	unsigned long gen;	/* dmirror_gen at open */
	struct dmirror_pt pt;	/* under dm->lock */
	uint64_t inv_count;	/* under dm->lock: invalidations that
				 * cleared entries */
	uint64_t flags;		/* under dm->lock: the FLAGS value */
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
} dmirror_table = { .lock = PTHREAD_MUTEX_INITIALIZER };

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
	pt->root = calloc(1UL << top_bits, sizeof(void *));
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
			*slot = calloc(PT_FANOUT, l > 1 ? sizeof(void *) :
					 sizeof(uint64_t));
			if (!*slot)
				return NULL;
		}
		node = *slot;
	}
	return (uint64_t *)node;
}

/*
 * Clear the entries of [s, e) below @node, an inner node whose slots each
 * cover 1 << (PT_BITS * l) pages from @base. Absent subtrees are skipped
 * and no node is freed: this runs in invalidate callbacks, where free()
 * could trim the heap. Returns whether an entry was cleared.
 */
static bool pt_clear_node(void **node, unsigned int l, uint64_t base,
			  uint64_t s, uint64_t e)
{
	unsigned int shift = PT_BITS * l;
	uint64_t span = 1ULL << shift;
	uint64_t i = (s - base) >> shift;
	uint64_t last = (e - 1 - base) >> shift;
	bool hit = false;

	for (; i <= last; i++) {
		uint64_t cb = base + (i << shift);
		uint64_t cs = s > cb ? s : cb;
		uint64_t ce = e - cb > span ? cb + span : e;

		if (!node[i])
			continue;
		if (l > 1) {
			hit |= pt_clear_node(node[i], l - 1, cb, cs, ce);
		} else {
			uint64_t *leaf = node[i];
			uint64_t j;

			for (j = cs - cb; j < ce - cb; j++) {
				if (leaf[j]) {
					leaf[j] = 0;
					hit = true;
				}
			}
		}
	}
	return hit;
}

static bool pt_clear(struct dmirror_pt *pt, uint64_t s, uint64_t e)
{
	if (e > pt->limit)
		e = pt->limit;
	if (s >= e)
		return false;
	return pt_clear_node(pt->root, pt->levels, 0, s, e);
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
			free(node[i]);
	}
	free(node);
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
			free(pt->root[i]);
	}
	free(pt->root);
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

	/* The device's own migrations update its page table themselves. */
	if (range->event == UHMM_NOTIFY_MIGRATE && range->owner == dm->dev)
		return true;

	if (range->flags & UHMM_NOTIFIER_RANGE_BLOCKABLE)
		pthread_mutex_lock(&dm->lock);
	else if (pthread_mutex_trylock(&dm->lock))
		return false;

	uhmm_interval_set_seq(sub, cur_seq);
	if (pt_clear(&dm->pt, range->start >> dmirror_page_shift,
		     range->end >> dmirror_page_shift))
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

/* One device fault round over [start, end) (dmirror_fault). */
static int dmirror_fault(struct uhmm_dmirror *dm, unsigned long start,
			 unsigned long end, bool write)
{
	uint64_t pfns[DMIRROR_FAULT_CHUNK];
	struct uhmm_range range = {
		.notifier = dm->notifier,
		.hmm_pfns = pfns,
		.default_flags = UHMM_PFN_REQ_FAULT |
				 (write ? UHMM_PFN_REQ_WRITE : 0),
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
		ret = dmirror_install(dm, &range, write);
		pthread_mutex_unlock(&dm->lock);
		if (ret)
			return ret;
	}
	return 0;
}

/*
 * Whether a device page is memory of this device. Issue B: ask the device
 * memory of dm->dev. Until then no page is: uhmm_range_fault() reports
 * private pages of other owners as not present anyway.
 */
static bool dmirror_page_is_local(const struct uhmm_dmirror *dm, uint64_t pfn)
{
	(void)dm;
	(void)pfn;
	return false;
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
	bytes = malloc((size_t)npages);
	/*
	 * Zeroed once: with no request bits, outputs carry no sticky bits,
	 * so they are valid (empty) inputs for the next chunk and command.
	 */
	pthread_mutex_lock(&dm->lock);
	pfns = dm->snap_pfns;
	dm->snap_pfns = NULL;
	pthread_mutex_unlock(&dm->lock);
	if (!pfns)
		pfns = calloc(DMIRROR_SNAP_CHUNK, sizeof(*pfns));
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
		dmirror_snap_convert(dm, pfns, bytes + off, n);
		pthread_mutex_unlock(&dm->lock);
		off += n;
	}

	ret = uhmm_copy_nofault((void *)(uintptr_t)cmd->ptr, bytes,
				(size_t)npages, NULL);
	if (!ret)
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
	/* Not under dm->lock: free() may unmap memory. */
	free(pfns);
	free(bytes);
	return ret;
}

/* ------------------------------------------------------------------ */
/* Device accesses: READ and WRITE                                      */
/* ------------------------------------------------------------------ */

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
	char *buf = c->buf + (i << dmirror_page_shift);
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

			if (run_n && !(e & DMIRROR_PFN_DEVICE) &&
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
			/* Device memory comes with issue B. */
			if (e & DMIRROR_PFN_DEVICE) {
				c->done = i;
				return -EOPNOTSUPP;
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

	for (;;) {
		uint64_t n;

		pthread_mutex_lock(&dm->lock);
		n = pt_scan(&dm->pt, vpn + done, npages - done,
			    UHMM_PFN_VALID | UHMM_PFN_WRITE);
		if (n) {
			struct dmirror_copy c = {
				.buf = (char *)(uintptr_t)cmd->ptr +
				       (done << dmirror_page_shift),
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
/* Devices and opens                                                    */
/* ------------------------------------------------------------------ */

static bool dmirror_device_supported(int device)
{
	/* Devices 2 and 3 (coherent memory) come with issue B. */
	return device == 0 || device == 1;
}

static int dmirror_device_get(int device, struct dmirror_device **out)
{
	struct dmirror_device *dev;

	pthread_mutex_lock(&dmirror_table.lock);
	dev = dmirror_table.dev[device];
	if (!dev) {
		dev = calloc(1, sizeof(*dev));
		if (!dev) {
			pthread_mutex_unlock(&dmirror_table.lock);
			return -ENOMEM;
		}
		dev->id = device;
		dmirror_table.dev[device] = dev;
	}
	dev->refs++;
	pthread_mutex_unlock(&dmirror_table.lock);
	*out = dev;
	return 0;
}

static void dmirror_device_put(struct dmirror_device *dev)
{
	bool last;

	pthread_mutex_lock(&dmirror_table.lock);
	last = --dev->refs == 0;
	if (last)
		dmirror_table.dev[dev->id] = NULL;
	pthread_mutex_unlock(&dmirror_table.lock);
	if (last)
		free(dev);
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

	dm = calloc(1, sizeof(*dm));
	if (!dm)
		return -ENOMEM;
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

	*out = dm;
	return 0;

err_dev:
	dmirror_device_put(dm->dev);
err_pt:
	pt_destroy(&dm->pt);
err_free:
	pthread_mutex_destroy(&dm->lock);
	free(dm);
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

	/* Issue B: migrate this open's device memory back first. */
	if (dm->notifier)
		uhmm_interval_notifier_remove(dm->notifier);
	pt_destroy(&dm->pt);
	free(dm->snap_pfns);
	dmirror_device_put(dm->dev);
	pthread_mutex_destroy(&dm->lock);
	free(dm);
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
		/* No device memory yet (issue B). */
		return 0;
	case UHMM_DMIRROR_MIGRATE_TO_DEV:
	case UHMM_DMIRROR_MIGRATE_TO_SYS:
	case UHMM_DMIRROR_EXCLUSIVE:
	case UHMM_DMIRROR_CHECK_EXCLUSIVE:
		return -EOPNOTSUPP;
	}
	return -EINVAL;
}
