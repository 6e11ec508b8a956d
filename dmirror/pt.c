/* SPDX-License-Identifier: MIT */
/*
 * dmirror's device page table: a radix tree keyed by virtual page number
 * (test_hmm.c keeps an xarray, dmirror->pt).
 */
#include "dmirror_internal.h"

int uhmm__dmirror_pt_init(struct dmirror_pt *pt)
{
	unsigned int vbits = DMIRROR_VA_BITS - uhmm__dmirror_page_shift;
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
uint64_t *uhmm__dmirror_pt_leaf(const struct dmirror_pt *pt, uint64_t vpn)
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

/* As uhmm__dmirror_pt_leaf(), allocating missing nodes. */
uint64_t *uhmm__dmirror_pt_leaf_alloc(struct dmirror_pt *pt, uint64_t vpn)
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
bool uhmm__dmirror_pt_walk(const struct dmirror_pt *pt, uint64_t s, uint64_t e,
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
bool uhmm__dmirror_pt_clear(struct dmirror_pt *pt, uint64_t s, uint64_t e,
			    const void *keep_dev, bool keep_coherent)
{
	struct pt_clear_arg a = { keep_dev, keep_coherent, 0, false };

	uhmm__dmirror_pt_walk(pt, s, e, pt_clear_leaf, &a);
	return a.hit;
}

/* Clear every device-memory entry (RELEASE, eviction). */
bool uhmm__dmirror_pt_clear_dev(struct dmirror_pt *pt)
{
	struct pt_clear_arg a = { NULL, false, DMIRROR_PFN_DEVICE, false };

	uhmm__dmirror_pt_walk(pt, 0, pt->limit, pt_clear_leaf, &a);
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

void uhmm__dmirror_pt_destroy(struct dmirror_pt *pt)
{
	unsigned long i, n = 1UL << (DMIRROR_VA_BITS -
				     uhmm__dmirror_page_shift -
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
uint64_t uhmm__dmirror_pt_scan(const struct dmirror_pt *pt, uint64_t vpn,
			       uint64_t n, uint64_t need)
{
	uint64_t i = 0;

	while (i < n) {
		const uint64_t *leaf = uhmm__dmirror_pt_leaf(pt, vpn + i);
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
