/* SPDX-License-Identifier: MIT */
/*
 * uhmm: Heterogeneous Memory Management in user space.
 *
 * The core API: the per-process runtime, interval notifiers with the
 * kernel's sequence protocol, uhmm_range_fault() and the device access
 * primitive. Names follow include/linux/mmu_notifier.h and
 * include/linux/hmm.h; differences from the kernel are listed in
 * docs/semantics.md.
 */
#ifndef UHMM_UHMM_H
#define UHMM_UHMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define UHMM_API __attribute__((visibility("default")))
#else
#define UHMM_API
#endif

#define UHMM_VERSION_MAJOR 0
#define UHMM_VERSION_MINOR 1
#define UHMM_VERSION_PATCH 0

/* "MAJOR.MINOR.PATCH" of the library actually loaded. */
UHMM_API const char *uhmm_version(void);

/* ------------------------------------------------------------------ */
/* The runtime                                                          */
/* ------------------------------------------------------------------ */

/*
 * One runtime per process, the counterpart of the kernel's per-mm state.
 * It starts lazily and thread-safely on the first call that needs it; a
 * process created by fork() starts a runtime of its own on its first call
 * (notifiers inserted by the parent do not exist in the child, as in the
 * kernel where they belong to the parent's mm).
 */

/* How the runtime obtained its userfaultfd. */
enum uhmm_uffd_path {
	UHMM_UFFD_NONE = 0,		/* no userfaultfd: events are not tracked */
	UHMM_UFFD_DEV = 1,		/* /dev/userfaultfd, USERFAULTFD_IOC_NEW */
	UHMM_UFFD_SYSCALL = 2,		/* userfaultfd(2) */
	UHMM_UFFD_SYSCALL_USER_ONLY = 3,/* userfaultfd(2) with UFFD_USER_MODE_ONLY */
};

/* uhmm_features.flags */
#define UHMM_FEAT_PAGEMAP_SCAN	(1u << 0) /* PAGEMAP_SCAN ioctl (6.7) */
#define UHMM_FEAT_PROCMAP_QUERY	(1u << 1) /* PROCMAP_QUERY ioctl (6.11) */
#define UHMM_FEAT_EVENTS	(1u << 2) /* UNMAP/REMOVE/REMAP events tracked */
#define UHMM_FEAT_WP_SHMEM	(1u << 3) /* shmem/hugetlb ranges can be tracked */
#define UHMM_FEAT_MOVE		(1u << 4) /* UFFDIO_MOVE (6.8) */
#define UHMM_FEAT_POPULATE	(1u << 5) /* MADV_POPULATE_READ/WRITE (5.14) */
#define UHMM_FEAT_THP		(1u << 6) /* transparent huge pages enabled */
#define UHMM_FEAT_HUGETLB	(1u << 7) /* hugetlbfs pages configured */

struct uhmm_features {
	uint32_t size;		/* in: sizeof(struct uhmm_features) */
	uint32_t flags;		/* out: UHMM_FEAT_* */
	uint32_t uffd_path;	/* out: enum uhmm_uffd_path */
	int32_t uffd_error;	/* out: -errno of the last failed open, or 0 */
	uint64_t uffd_features;	/* out: UFFD_FEATURE_* the kernel offers */
	uint64_t uffd_ioctls;	/* out: UFFDIO_* the kernel offers */
	uint32_t page_size;	/* out */
	uint32_t reserved32;
	uint64_t reserved[6];
};

/**
 * uhmm_init() - start the runtime now instead of on first use
 *
 * Probes the kernel on a throw-away userfaultfd (/dev/userfaultfd first,
 * then the syscall, then the syscall with UFFD_USER_MODE_ONLY) and opens
 * the runtime's own. A missing userfaultfd is not an error: the runtime
 * then tracks no UNMAP/REMOVE/REMAP events and relies on
 * uhmm_range_revalidate() (uhmm_features() says so).
 *
 * Context: thread-safe, idempotent.
 * Return: 0, or -ENOSYS when neither PAGEMAP_SCAN nor PROCMAP_QUERY is
 * available (kernel older than 6.11), -ENOMEM, or the error of opening
 * /proc/self/maps or /proc/self/pagemap (-ENOENT without procfs,
 * -EMFILE/-ENFILE at the descriptor limits, -EACCES).
 */
UHMM_API int uhmm_init(void);

/**
 * uhmm_features() - what the running kernel and this process allow
 * @f: out; f->size must be set by the caller.
 *
 * Return: 0, -EINVAL (NULL or size too small), or an error of uhmm_init().
 */
UHMM_API int uhmm_features(struct uhmm_features *f);

/**
 * uhmm_shutdown() - tear the runtime down as the kernel does at exit_mmap
 *
 * Every notifier still inserted gets one RELEASE invalidation (start 0,
 * end ULONG_MAX, as the kernel's) and is then removed (its memory is freed: the caller must
 * not use it again). The monitor threads stop. The next call that needs
 * the runtime starts a new one. RELEASE is not sent at exit(): other
 * threads still run then and may hold the locks callbacks take (see
 * docs/semantics.md).
 *
 * Context: must not be called from an invalidate callback.
 * Return: 0.
 */
UHMM_API int uhmm_shutdown(void);

/* ------------------------------------------------------------------ */
/* Interval notifiers (include/linux/mmu_notifier.h)                    */
/* ------------------------------------------------------------------ */

/* Same order and values as enum mmu_notifier_event. */
enum uhmm_notifier_event {
	UHMM_NOTIFY_UNMAP = 0,		/* munmap, mremap move/shrink, MAP_FIXED over */
	UHMM_NOTIFY_CLEAR,		/* MADV_DONTNEED / MADV_FREE / MADV_REMOVE */
	UHMM_NOTIFY_PROTECTION_VMA,	/* access to the range was reduced (mprotect) */
	UHMM_NOTIFY_PROTECTION_PAGE,	/* per-page write protection (fork) */
	UHMM_NOTIFY_SOFT_DIRTY,		/* reserved, never sent */
	UHMM_NOTIFY_RELEASE,		/* runtime teardown: the range is gone */
	UHMM_NOTIFY_MIGRATE,		/* migration; owner = pgmap owner */
	UHMM_NOTIFY_EXCLUSIVE,		/* device-exclusive entry; owner set */
};

/* uhmm_notifier_range.flags */
#define UHMM_NOTIFIER_RANGE_BLOCKABLE (1u << 0)

struct uhmm_notifier_range {
	unsigned long start;		/* page aligned, inclusive */
	unsigned long end;		/* page aligned, exclusive */
	enum uhmm_notifier_event event;
	unsigned int flags;		/* UHMM_NOTIFIER_RANGE_* */
	const void *owner;		/* MIGRATE/EXCLUSIVE: the owner cookie */
};

struct uhmm_interval_notifier;	/* opaque */

struct uhmm_interval_notifier_ops {
	/*
	 * Called when the process's mapping of [range->start, range->end),
	 * which overlaps the notifier, changes. Must call
	 * uhmm_interval_set_seq(sub, cur_seq) unconditionally, under the
	 * driver's lock, and tear down device entries for the range. Returns
	 * false only if the range is not blockable and it would have to
	 * sleep (uhmm always passes blockable ranges).
	 *
	 * Context: runs on a uhmm monitor thread (UNMAP/CLEAR events), in the
	 * thread calling fork() (PROTECTION_PAGE), or in the thread that
	 * discovered the change (uhmm_range_revalidate(),
	 * uhmm_copy_nofault()). It must not unmap, remap or discard
	 * (MADV_DONTNEED/FREE/REMOVE) memory uhmm tracks, and must not call
	 * uhmm_interval_notifier_remove() or uhmm_shutdown().
	 */
	bool (*invalidate)(struct uhmm_interval_notifier *sub,
			   const struct uhmm_notifier_range *range,
			   unsigned long cur_seq);
};

/**
 * uhmm_interval_notifier_insert() - subscribe to invalidations of a range
 * @out: out: the new notifier
 * @start: page aligned
 * @length: page aligned, > 0, start + length must not overflow
 * @ops: ops->invalidate must be set
 * @priv: cookie returned by uhmm_interval_notifier_priv()
 *
 * Inserting while an invalidation runs defers the insertion to its end,
 * as the kernel does; the first uhmm_interval_read_begin() then waits.
 *
 * Return: 0, -EINVAL (bad argument), -ENOMEM, or an error of uhmm_init().
 */
UHMM_API int uhmm_interval_notifier_insert(struct uhmm_interval_notifier **out,
					   unsigned long start,
					   unsigned long length,
					   const struct uhmm_interval_notifier_ops *ops,
					   void *priv);

/**
 * uhmm_interval_notifier_remove() - unsubscribe and free the notifier
 *
 * Waits for a running invalidation of this notifier to finish, so that no
 * callback runs once it returns.
 *
 * Context: not from an invalidate callback.
 * Return: 0, or -EINVAL for NULL or a notifier of another runtime (one
 * inserted by the parent before fork(), or before uhmm_shutdown()).
 */
UHMM_API int uhmm_interval_notifier_remove(struct uhmm_interval_notifier *sub);

/* The cookie given to insert; NULL for NULL. */
UHMM_API void *uhmm_interval_notifier_priv(const struct uhmm_interval_notifier *sub);

/*
 * The range the notifier was inserted for: [start, end), end exclusive
 * (the kernel's interval_tree.start and .last + 1). 0 for NULL.
 */
UHMM_API unsigned long uhmm_interval_notifier_start(const struct uhmm_interval_notifier *sub);
UHMM_API unsigned long uhmm_interval_notifier_end(const struct uhmm_interval_notifier *sub);

/*
 * The notifier's current sequence (the kernel's mni->invalidate_seq): the
 * value uhmm_interval_read_begin() would return once no invalidation of
 * it runs, the last one the invalidate callback set. Lockless, as
 * uhmm_interval_check_retry(); 0 for NULL.
 */
UHMM_API unsigned long uhmm_interval_notifier_seq(const struct uhmm_interval_notifier *sub);

/**
 * uhmm_interval_read_begin() - begin a read-side critical section
 *
 * Waits while an invalidation that collides with @sub is running. The
 * returned sequence is odd. For NULL or a notifier of another runtime it
 * returns 0, which uhmm_interval_read_retry() always rejects.
 */
UHMM_API unsigned long uhmm_interval_read_begin(struct uhmm_interval_notifier *sub);

/*
 * True when an invalidation collided since @seq was read (and for NULL or
 * a notifier of another runtime). Call under the same driver lock that
 * the invalidate callback takes.
 */
UHMM_API bool uhmm_interval_read_retry(struct uhmm_interval_notifier *sub,
				       unsigned long seq);

/* Lockless, unreliable early-out for loops (may say false wrongly). */
UHMM_API bool uhmm_interval_check_retry(struct uhmm_interval_notifier *sub,
					unsigned long seq);

/* From invalidate only, under the driver lock, unconditionally. NULL: no-op. */
UHMM_API void uhmm_interval_set_seq(struct uhmm_interval_notifier *sub,
				    unsigned long cur_seq);

/* ------------------------------------------------------------------ */
/* uhmm_range_fault (include/linux/hmm.h)                               */
/* ------------------------------------------------------------------ */

/*
 * A per-page value (uint64_t). Flag bits as in enum hmm_pfn_flags for
 * 64-bit longs; bits 50-52 are uhmm's additions; bits 0-49 hold the page
 * frame.
 *
 * What the page frame is, for a user-space device:
 *   - ordinary system memory (neither DEVICE bit set): the page's virtual
 *     page number in this process, addr >> page shift. uhmm_pfn_to_addr()
 *     turns it into the address the device reads and writes, with
 *     uhmm_copy_nofault(), which goes through the CPU's page tables at
 *     every access: a device can never use access the process has lost,
 *     and a mapping that vanishes under it gives -EFAULT, never a signal.
 *   - device-private memory (UHMM_PFN_DEVICE_PRIVATE, reported to its
 *     owner only): a handle of the device page (uhmm_pfn_to_page());
 *   - device-coherent memory (UHMM_PFN_DEVICE_COHERENT): mapped like
 *     system memory, so the frame is the virtual page number, as above;
 *     uhmm_pfn_to_page() names the device page.
 *
 * Output bits other than the sticky ones (DMA_MAPPED, P2PDMA*) are
 * rewritten for every page; the sticky bits are preserved.
 */
#define UHMM_PFN_VALID		(1ULL << 63) /* out: readable; frame valid */
#define UHMM_PFN_WRITE		(1ULL << 62) /* out: writable; needs VALID */
#define UHMM_PFN_ERROR		(1ULL << 61) /* out: the device must fail the access */
#define UHMM_PFN_DMA_MAPPED	(1ULL << 60) /* sticky, for the driver's use */
#define UHMM_PFN_P2PDMA		(1ULL << 59) /* sticky, for the driver's use */
#define UHMM_PFN_P2PDMA_BUS	(1ULL << 58) /* sticky, for the driver's use */
#define UHMM_PFN_ORDER_SHIFT	53	     /* 5 bits: log2 of the mapping size in pages */
#define UHMM_PFN_ZERO		(1ULL << 52) /* out (uhmm): the shared zero page */
#define UHMM_PFN_DEVICE_PRIVATE	(1ULL << 51) /* out (uhmm): frame is a device page handle */
#define UHMM_PFN_DEVICE_COHERENT (1ULL << 50)/* out (uhmm): coherent device page */
#define UHMM_PFN_REQ_FAULT	UHMM_PFN_VALID /* in: make the page VALID */
#define UHMM_PFN_REQ_WRITE	UHMM_PFN_WRITE /* in: make it WRITE (with REQ_FAULT) */
#define UHMM_PFN_INOUT_FLAGS	(UHMM_PFN_DMA_MAPPED | UHMM_PFN_P2PDMA | UHMM_PFN_P2PDMA_BUS)
#define UHMM_PFN_FLAGS		(~0ULL << 50)
#define UHMM_PFN_FRAME_MASK	(~UHMM_PFN_FLAGS)

/*
 * How long a driver keeps retrying uhmm_range_fault() on -EBUSY before it
 * gives up, in milliseconds (HMM_RANGE_DEFAULT_TIMEOUT).
 */
#define UHMM_RANGE_DEFAULT_TIMEOUT 1000

struct uhmm_range {
	struct uhmm_interval_notifier *notifier; /* in: covers [start, end) */
	unsigned long notifier_seq;	/* in: from uhmm_interval_read_begin() */
	unsigned long start;		/* in: page aligned, inclusive */
	unsigned long end;		/* in: page aligned, exclusive */
	uint64_t *hmm_pfns;		/* in: requests; out: per-page values */
	uint64_t default_flags;		/* in: UHMM_PFN_REQ_* for every page */
	uint64_t pfn_flags_mask;	/* in: request = (pfns[i] & mask) | default_flags */
	const void *dev_private_owner;	/* in: device pages of this owner are reported */
};

/**
 * uhmm_range_fault() - snapshot a range, faulting in what is requested
 * @range: see struct uhmm_range; hmm_pfns has (end - start) / page entries
 *
 * For each page, request = (hmm_pfns[i] & pfn_flags_mask) | default_flags.
 * A page whose request is satisfied by its current state is only
 * reported; otherwise it is faulted in (readable, or writable for
 * REQ_WRITE, breaking copy-on-write as a CPU write would). A call with no
 * REQ_FAULT anywhere never faults. Output per page: 0 (not present, can be
 * faulted), VALID [| WRITE] [| ZERO] with the order field, or ERROR
 * (PROT_NONE, no mapping) when not requested.
 *
 * Every VMA the call reports pages of is tracked: later munmap, mremap,
 * MAP_FIXED and MADV_DONTNEED/FREE/REMOVE of it raise invalidations
 * (anonymous, shmem and hugetlbfs memory; see docs/semantics.md for file
 * mappings), and the access granted is remembered for
 * uhmm_range_revalidate().
 *
 * Return: 0, or a negative errno:
 *   -EINVAL  NULL, misaligned, empty or overflowing range, a range not
 *            inside the notifier's, a notifier of another runtime
 *   -EBUSY   the notifier's sequence moved: restart at read_begin
 *   -EFAULT  a requested page cannot be made valid (no mapping,
 *            PROT_NONE, an I/O mapping, SIGBUS on a file past EOF)
 *   -EPERM   write requested on a mapping without write permission
 *   -ENOMEM
 */
UHMM_API int uhmm_range_fault(struct uhmm_range *range);

/* The address of a system page's value (ordinary memory, VALID set). */
UHMM_API void *uhmm_pfn_to_addr(uint64_t pfn);

static inline unsigned int uhmm_pfn_to_map_order(uint64_t pfn)
{
	return (unsigned int)((pfn >> UHMM_PFN_ORDER_SHIFT) & 0x1f);
}

/**
 * uhmm_range_revalidate() - raise the invalidations user space cannot get
 * @start, @end: page aligned range, start < end
 *
 * The kernel gives userfaultfd no event for mprotect(), nor for changes of
 * file mappings it cannot register. This compares the access that
 * uhmm_range_fault() granted in [start, end) with the process's current
 * mappings, and raises on every overlapping notifier the invalidation the
 * kernel would have sent: UNMAP where nothing is mapped any more,
 * PROTECTION_VMA where read or write permission was removed. A driver
 * calls it before it uses translations it cached (dmirror does at every
 * command), and after uhmm_copy_nofault() failed. It is also a sync
 * point: the invalidations of every munmap, mremap and madvise that
 * returned before the call have run when it returns (otherwise their
 * callbacks run on uhmm's worker thread just after those calls return).
 * Cost: one PROCMAP_QUERY per mapping granted in the range (~0.6 us).
 *
 * Context: not from an invalidate callback; do not hold locks that
 * invalidate callbacks take.
 * Return: 0, -EINVAL (bad range), or an error of uhmm_init().
 */
UHMM_API int uhmm_range_revalidate(unsigned long start, unsigned long end);

/* ------------------------------------------------------------------ */
/* VMA lookup (vma_lookup, find_vma_intersection)                       */
/* ------------------------------------------------------------------ */

/* uhmm_vma.flags */
#define UHMM_VMA_READ		(1u << 0) /* VM_READ */
#define UHMM_VMA_WRITE		(1u << 1) /* VM_WRITE */
#define UHMM_VMA_EXEC		(1u << 2) /* VM_EXEC */
#define UHMM_VMA_SHARED		(1u << 3) /* VM_SHARED: MAP_SHARED */
#define UHMM_VMA_ANON		(1u << 4) /* vma_is_anonymous(): private anonymous
					   * memory, the heap, stacks (not
					   * shared anonymous memory: shmem) */
#define UHMM_VMA_HUGETLB	(1u << 5) /* is_vm_hugetlb_page(): page_size is
					   * the huge page size */

/* One mapping (VMA) of the process, as the kernel had it when asked. */
struct uhmm_vma {
	unsigned long start;		/* vm_start, page aligned */
	unsigned long end;		/* vm_end, exclusive */
	unsigned int flags;		/* UHMM_VMA_* */
	unsigned int reserved32;	/* 0 */
	unsigned long page_size;	/* vma_kernel_pagesize() */
	uint64_t reserved[4];		/* 0 */
};

/**
 * uhmm_vma_lookup() - the mapping that contains an address (vma_lookup)
 * @addr: any address
 * @vma: out: the mapping
 *
 * A snapshot, read with PROCMAP_QUERY: the kernel's VMA at the moment of
 * the call. No lock is held afterwards (there is no mmap_lock in user
 * space): a munmap, mremap or mprotect may change it right after. A
 * driver that acts on it does so under a notifier's sequence
 * (uhmm_interval_read_begin() before the lookup, uhmm_range_fault()'s
 * -EBUSY or uhmm_interval_read_retry() after), as it would under the
 * mmap_lock (docs/semantics.md). uhmm's own tracking splits VMAs where
 * the kernel would merge them (row 13): the bounds are the kernel's.
 *
 * Context: any thread, also in migrate_to_ram and invalidate callbacks.
 * Return: 0, -ENOENT (no mapping contains @addr), -EINVAL (@vma NULL),
 * or an error of uhmm_init().
 */
UHMM_API int uhmm_vma_lookup(unsigned long addr, struct uhmm_vma *vma);

/**
 * uhmm_find_vma_intersection() - the first mapping that overlaps a range
 * @start, @end: any addresses, start < end
 * @vma: out: the lowest mapping that overlaps [start, end)
 *
 * The counterpart of find_vma_intersection(); a snapshot as
 * uhmm_vma_lookup(). To walk the mappings of a range, call it again from
 * vma->end.
 *
 * Return: 0, -ENOENT (nothing mapped in [start, end)), -EINVAL (@vma
 * NULL, start >= end), or an error of uhmm_init().
 */
UHMM_API int uhmm_find_vma_intersection(unsigned long start, unsigned long end,
					struct uhmm_vma *vma);

/**
 * uhmm_copy_nofault() - copy with the CPU's page tables as the arbiter
 * @dst, @src: process addresses; either may be device-mirrored memory
 * @len: bytes
 * @fault_addr: out, may be NULL: the faulting address on -EFAULT
 *
 * memcpy() that turns SIGSEGV/SIGBUS inside the copy into -EFAULT, the
 * user-space counterpart of copy_from_user()'s exception tables. Bytes
 * before the fault may have been copied. It raises no invalidation
 * itself (the caller may hold its driver lock): a driver whose copy
 * faulted drops its lock and calls uhmm_range_revalidate() on the
 * faulting page, which invalidates the entry that led there.
 *
 * Context: any thread; not async-signal-safe. Relies on uhmm's SIGSEGV
 * and SIGBUS handlers, which chain to the handlers installed before
 * uhmm_init(); a handler installed later must chain to uhmm's.
 * Return: 0 (also for @len 0, whatever the pointers), or -EFAULT: a
 * fault, a NULL @dst or @src, or a range that runs past the end of the
 * address space (nothing is copied then; *fault_addr is its start).
 */
UHMM_API int uhmm_copy_nofault(void *dst, const void *src, size_t len,
			       unsigned long *fault_addr);

/*
 * Memory uhmm never migrates (a driver's kmalloc): uhmm's own structures
 * and a driver's (its device page table, its device memory buffers) must
 * not share pages with an application's heap, which the application may
 * migrate to a device: the thread that serves CPU faults would then
 * fault on them itself. malloc/calloc/realloc/free semantics; blocks of
 * more than 4 KiB are page aligned. uhmm_migrate_setup() and
 * uhmm_make_device_exclusive() never take these pages. Under a sanitizer
 * or valgrind they are malloc's, so that the tools see them. Thread-safe,
 * fork-safe; not async-signal-safe.
 */
UHMM_API void *uhmm_alloc(size_t size);
UHMM_API void *uhmm_calloc(size_t n, size_t size);
UHMM_API void *uhmm_realloc(void *p, size_t size);
UHMM_API void uhmm_free(void *p);

#ifdef __cplusplus
}
#endif

#endif /* UHMM_UHMM_H */
