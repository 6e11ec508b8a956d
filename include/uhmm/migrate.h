/* SPDX-License-Identifier: MIT */
/*
 * uhmm device memory and migration: the counterparts of dev_pagemap
 * (include/linux/memremap.h) and migrate_vma (include/linux/migrate.h).
 * Differences from the kernel: docs/semantics.md.
 */
#ifndef UHMM_MIGRATE_H
#define UHMM_MIGRATE_H

#include <stdint.h>
#include <sys/types.h>
#include <uhmm/uhmm.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ */
/* Device memory (dev_pagemap)                                          */
/* ------------------------------------------------------------------ */

enum uhmm_memory_type {
	UHMM_MEMORY_DEVICE_PRIVATE = 1,	/* the CPU cannot address it */
	UHMM_MEMORY_DEVICE_COHERENT = 2,/* the CPU can: mapped like RAM */
};

struct uhmm_page;	/* opaque: one device page */
struct uhmm_pagemap;	/* opaque: a device's memory */

/* What a CPU fault on a device-private page hands migrate_to_ram. */
struct uhmm_fault {
	unsigned long address;	/* page-aligned faulting address */
	struct uhmm_page *page;	/* the device page there; pass it as
				 * uhmm_migrate.fault_page */
	unsigned long ra_start;	/* a window around @address that the */
	unsigned long ra_end;	/* access pattern suggests migrating too,
				 * inside the VMA of @address */
	unsigned int flags;	/* UHMM_FAULT_* */
	/* Added after the fields above (never reordered): */
	pid_t tid;		/* the faulting thread (gettid()); 0 when
				 * the kernel did not say. migrate_to_ram
				 * runs on a uhmm thread: recursion guards
				 * that compare the current task with the
				 * faulting one compare with this */
	unsigned long vm_start;	/* the VMA of @address (vmf->vma's */
	unsigned long vm_end;	/* vm_start, vm_end) when migrate_to_ram
				 * was called: a snapshot (semantics 18);
				 * both 0 if the lookup failed */
};
#define UHMM_FAULT_WRITE (1u << 0)	/* the access was a write */

struct uhmm_pagemap_ops {
	/* The page's reference count dropped to 0: take it back. */
	void (*page_free)(struct uhmm_page *page);
	/*
	 * A CPU access hit a device-private page: migrate it (at least it)
	 * back to system memory with uhmm_migrate_setup(SELECT_DEVICE_PRIVATE,
	 * fault_page = vmf->page) / pages / finalize. Runs on a uhmm
	 * monitor thread. Return 0, or -errno to make the access fail
	 * (SIGBUS, as VM_FAULT_SIGBUS). vmf->tid names the thread whose
	 * access waits (the kernel's current). Returning 0 without migrating
	 * (declining for now) is allowed: the access keeps waiting, and
	 * uhmm calls it again after 1, 2, 4, ... ms (at most 32 ms apart)
	 * until the page has left the device.
	 */
	int (*migrate_to_ram)(struct uhmm_fault *vmf);
};

/**
 * uhmm_pagemap_create() - register a device's memory (memremap_pages)
 * @type: UHMM_MEMORY_DEVICE_PRIVATE or UHMM_MEMORY_DEVICE_COHERENT
 * @owner: cookie compared with uhmm_range.dev_private_owner and
 *         uhmm_migrate.pgmap_owner
 * @ops: page_free is required; migrate_to_ram too for PRIVATE (the CPU
 *       never faults on coherent memory: it may be NULL there)
 * @npages: device pages in the first chunk (> 0)
 * @out: the pagemap
 *
 * Coherent memory is a pool of frames of uhmm's (uhmm_page_addr()): a
 * page migrated to it is its frame mapped at the application's address,
 * which the CPU reads and writes directly; range_fault reports it as
 * present with UHMM_PFN_DEVICE_COHERENT (frame: the virtual page number,
 * as for system memory), and uhmm_pfn_to_page() names the page.
 *
 * Return: 0, -EINVAL, -ENOSYS (COHERENT without userfaultfd MOVE),
 * -ENOMEM, or an error of uhmm_init().
 */
UHMM_API int uhmm_pagemap_create(enum uhmm_memory_type type, const void *owner,
				 const struct uhmm_pagemap_ops *ops,
				 unsigned long npages, struct uhmm_pagemap **out);

/* Add a chunk of @npages pages; returns the index of its first page or
 * -errno. Indices of earlier chunks stay valid. */
UHMM_API long uhmm_pagemap_grow(struct uhmm_pagemap *pgmap, unsigned long npages);

/* Total pages. */
UHMM_API unsigned long uhmm_pagemap_npages(const struct uhmm_pagemap *pgmap);

/* Page @index of the pagemap (pfn_to_page), NULL if out of range. */
UHMM_API struct uhmm_page *uhmm_pagemap_page(struct uhmm_pagemap *pgmap,
					     unsigned long index);

/* Unregister; -EBUSY while a page is referenced. */
UHMM_API int uhmm_pagemap_destroy(struct uhmm_pagemap *pgmap);

UHMM_API struct uhmm_pagemap *uhmm_page_pgmap(const struct uhmm_page *page);
UHMM_API unsigned long uhmm_page_index(const struct uhmm_page *page);
UHMM_API const void *uhmm_page_owner(const struct uhmm_page *page);
/*
 * Coherent pages: the address of the page's memory while the application
 * does not map it, i.e. while it is free or collected for a migration
 * (between uhmm_migrate_setup()/uhmm_migrate_device_range() and
 * finalize): where a driver copies to and from. NULL for private pages.
 */
UHMM_API void *uhmm_page_addr(const struct uhmm_page *page);
/* Per-page driver data (zone_device_data). */
UHMM_API void *uhmm_page_data(const struct uhmm_page *page);
UHMM_API void uhmm_page_set_data(struct uhmm_page *page, void *data);
/* Hand a free page out: reference count 1 (zone_device_page_init). */
UHMM_API void uhmm_page_init(struct uhmm_page *page);
UHMM_API void uhmm_page_get(struct uhmm_page *page);
/*
 * 9 when the page is part of a device THP that a migration installed
 * whole (COMPOUND): 512 pages of one chunk, in order, at a 2 MiB-aligned
 * block; 0 otherwise. migrate_to_ram uses it to bring the THP back whole.
 */
UHMM_API unsigned int uhmm_page_order(const struct uhmm_page *page);
/* Drop a reference; at 0 the pagemap's page_free runs. */
UHMM_API void uhmm_page_put(struct uhmm_page *page);
UHMM_API unsigned int uhmm_page_refcount(const struct uhmm_page *page);

/* The page a range_fault value with UHMM_PFN_DEVICE_PRIVATE or
 * UHMM_PFN_DEVICE_COHERENT refers to (NULL if none). */
UHMM_API struct uhmm_page *uhmm_pfn_to_page(uint64_t pfn);

/* ------------------------------------------------------------------ */
/* Migration (migrate_vma)                                              */
/* ------------------------------------------------------------------ */

/*
 * src[] and dst[] entries: flags in the low bits, a frame above. For
 * system memory the frame is the virtual page number of a page the
 * driver can read or write (uhmm_migrate_pfn_to_addr()): during a
 * migration the data sit in uhmm's staging pages, never at the
 * application's address. For device memory (UHMM_MIGRATE_PFN_DEVICE) the
 * frame is the device page (uhmm_migrate_pfn_to_page()).
 */
#define UHMM_MIGRATE_PFN_VALID		(1ULL << 0)
#define UHMM_MIGRATE_PFN_MIGRATE	(1ULL << 1)
#define UHMM_MIGRATE_PFN_WRITE		(1ULL << 3)
#define UHMM_MIGRATE_PFN_COMPOUND	(1ULL << 4)
#define UHMM_MIGRATE_PFN_DEVICE		(1ULL << 5)	/* uhmm */
#define UHMM_MIGRATE_PFN_SHIFT		6

enum uhmm_migrate_select {
	UHMM_MIGRATE_SELECT_SYSTEM = 1 << 0,
	UHMM_MIGRATE_SELECT_DEVICE_PRIVATE = 1 << 1,
	UHMM_MIGRATE_SELECT_DEVICE_COHERENT = 1 << 2,
	UHMM_MIGRATE_SELECT_COMPOUND = 1 << 3,
};

struct uhmm_migrate {
	unsigned long start;		/* in: page aligned, one VMA */
	unsigned long end;		/* in */
	uint64_t *src;			/* in/out: (end-start)/page entries */
	uint64_t *dst;			/* in: set by the driver after setup */
	unsigned long cpages;		/* out: entries collected (MIGRATE) */
	unsigned long npages;		/* out: entries filled */
	const void *pgmap_owner;	/* in: device pages of this owner;
					 * owner of the MIGRATE invalidation */
	unsigned long flags;		/* in: UHMM_MIGRATE_SELECT_* */
	struct uhmm_page *fault_page;	/* in: from migrate_to_ram, or NULL */
	uint64_t _private[4];		/* uhmm's; zero before setup */
};

/**
 * uhmm_migrate_setup() - collect and isolate the pages of a range
 *
 * SELECT_SYSTEM: present pages, holes and the zero page of a private
 * anonymous VMA are collected: a present page is moved out of the
 * application's address space (UFFDIO_MOVE, no copy) into a staging page
 * whose frame src[i] carries; holes and the zero page get MIGRATE without
 * VALID. Pages that cannot be isolated (shared with another process,
 * pinned, in a shared or file mapping) lose MIGRATE and stay where they
 * are. SELECT_DEVICE_PRIVATE / SELECT_DEVICE_COHERENT: device pages of
 * that type and of @pgmap_owner are collected (src[i] = their frame |
 * DEVICE; a coherent page's data are at uhmm_page_addr() until finalize).
 * SELECT_COMPOUND: a 2 MiB-aligned block inside the range that one PMD
 * maps (a THP, the huge zero page) or that is empty moves whole, with one
 * UFFDIO_MOVE of the PMD: src[head] = frame of a 2 MiB staging page |
 * COMPOUND (VALID unless empty), the 511 tail entries 0; likewise a
 * device THP (uhmm_page_order() 9) is src[head] = its head page |
 * DEVICE | COMPOUND. The driver gives dst[head] a COMPOUND destination
 * (a device THP head: 512 pages of one chunk, consecutive indices, each
 * uhmm_page_init()ed; or uhmm_migrate_alloc_system_compound()), or base
 * pages in dst[head .. head + 511], and uhmm_migrate_pages() splits the
 * source. Other THPs are split (base pages).
 * Coherent pages are never collected as system memory. In a read-only
 * VMA only device-private pages are collected. A CPU access to a
 * collected page waits until finalize. Sends MIGRATE invalidations with
 * owner = pgmap_owner.
 *
 * Return: 0 (cpages may be 0), -EINVAL (bad range, arrays, not one VMA,
 * hugetlb or special VMA, fault_page not a device page being faulted),
 * -ENOSYS without userfaultfd, -ENOMEM.
 */
UHMM_API int uhmm_migrate_setup(struct uhmm_migrate *m);

/* Commit: entries whose dst is 0 lose MIGRATE (migration to system
 * memory must not skip pages). */
UHMM_API void uhmm_migrate_pages(struct uhmm_migrate *m);

/* Install the destinations of migrated entries, restore the sources of
 * the others, release staging pages and wake CPU accesses that waited. */
UHMM_API void uhmm_migrate_finalize(struct uhmm_migrate *m);

/*
 * A system page for a migration's dst[] (the kernel driver's
 * alloc_page): *mpfn = frame | VALID. Taken from uhmm's warm staging
 * pool. Return 0 or -ENOMEM.
 */
UHMM_API int uhmm_migrate_alloc_system(uint64_t *mpfn);

/*
 * A 2 MiB system page for a COMPOUND entry's dst[] (the driver's
 * large-folio allocation): *mpfn = frame | VALID | COMPOUND, 512
 * contiguous pages from uhmm's huge staging pool. -ENOMEM when none is
 * free: fall back to 512 uhmm_migrate_alloc_system() pages, filling
 * dst[i .. i + 511] (uhmm_migrate_pages() then splits the source).
 */
UHMM_API int uhmm_migrate_alloc_system_compound(uint64_t *mpfn);

UHMM_API void *uhmm_migrate_pfn_to_addr(uint64_t mpfn);
UHMM_API struct uhmm_page *uhmm_migrate_pfn_to_page(uint64_t mpfn);
/* dst[] value for device page @page: frame | DEVICE | VALID. */
UHMM_API uint64_t uhmm_migrate_pfn_device(const struct uhmm_page *page);

/**
 * uhmm_migrate_device_range() - evict device pages without their addresses
 * @src: out: npages entries, as after setup
 * @pgmap, @first, @npages: pages [first, first + npages) of @pgmap
 *
 * Collects the in-use pages of the range for migration to system memory
 * (migrate_device_range). The driver fills dst[] with
 * uhmm_migrate_alloc_system() pages, copies, then calls
 * uhmm_migrate_device_finalize() (uhmm_migrate_device_pages() first
 * to see which entries commit).
 * Return: 0 or -EINVAL.
 */
UHMM_API int uhmm_migrate_device_range(uint64_t *src, struct uhmm_pagemap *pgmap,
				       unsigned long first, unsigned long npages);
UHMM_API void uhmm_migrate_device_finalize(uint64_t *src, uint64_t *dst,
					   unsigned long npages);

/**
 * uhmm_migrate_device_pfns() - evict a list of device pages
 * @src: in: npages entries, each uhmm_migrate_pfn_device(page) or 0 (skip);
 *       out: as after uhmm_migrate_device_range()
 *
 * migrate_device_pfns: uhmm_migrate_device_range() for pages named one
 * by one, of any pagemaps, in any order (a driver's buffer whose blocks
 * are scattered over its memory). A page that is free, or named twice,
 * gets 0 (the second time). Then dst[], the copy and
 * uhmm_migrate_device_finalize(), as for a range.
 * Return: 0, or -EINVAL (NULL @src, @npages 0, an entry that is neither
 * 0 nor a device page; then nothing is collected).
 */
UHMM_API int uhmm_migrate_device_pfns(uint64_t *src, unsigned long npages);

/*
 * migrate_device_pages: commit an eviction's dst[] before finalize.
 * Entries whose dst is 0 or not a page of uhmm_migrate_alloc_system()
 * lose MIGRATE: after it, src[i] & MIGRATE says which pages will move,
 * and finalize leaves the others on the device (at their address,
 * unchanged). Optional: finalize does the same for entries it was not
 * called on.
 */
UHMM_API void uhmm_migrate_device_pages(uint64_t *src, uint64_t *dst,
					unsigned long npages);

/* ------------------------------------------------------------------ */
/* Exclusive access (make_device_exclusive)                             */
/* ------------------------------------------------------------------ */

/**
 * uhmm_make_device_exclusive() - give a device exclusive access to a page
 * @addr: page-aligned address of a page of private anonymous memory
 * @owner: the device; owner of the EXCLUSIVE invalidation sent now, so
 *         that it can ignore its own
 * @dev_addr: out: where the device accesses the page (atomics) while it
 *            is exclusive
 *
 * The page is faulted in writable, then taken from the CPU: its address
 * becomes inaccessible to the CPU, the page lives at *dev_addr. The
 * CPU's next touch revokes it: an EXCLUSIVE invalidation (owner NULL)
 * tells the mirrors to drop their entry, the page returns to @addr, and
 * the access completes with the device's updates visible.
 *
 * Return: 0, -EINVAL (bad address, not private anonymous writable
 * memory), -EBUSY (the page is on a device or being migrated), -EFAULT
 * (cannot be faulted in), -ENOSYS without userfaultfd, -ENOMEM.
 */
UHMM_API int uhmm_make_device_exclusive(unsigned long addr, const void *owner,
					void **dev_addr);

#ifdef __cplusplus
}
#endif

#endif /* UHMM_MIGRATE_H */
