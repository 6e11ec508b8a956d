/* SPDX-License-Identifier: MIT */
/*
 * A shared-virtual-memory driver laid out like nouveau's
 * (drivers/gpu/drm/nouveau/nouveau_svm.c and nouveau_dmem.c), on uhmm.
 * The "GPU" has a page table of its own over a managed range of this
 * process and memory of its own (VRAM, a pagemap of device-private
 * pages); it copies with uhmm's DMA engine.
 *
 *   svm_fault()            nouveau_svm_fault() + nouveau_range_fault():
 *                          look up the VMA, range_fault under the
 *                          notifier sequence within the default timeout,
 *                          then map under the driver's lock
 *   svm_invalidate()       the notifier callback: zap GPU entries
 *   dmem_migrate_to_vram() nouveau_dmem_migrate_vma(): per VMA, in
 *                          chunks, migrate_vma setup / copy / pages /
 *                          finalize
 *   dmem_migrate_to_ram()  nouveau_dmem_migrate_to_ram(): a CPU access
 *                          to VRAM, with fault_page
 *   dmem_evict_bo(),       nouveau_dmem_evict_chunk() at teardown
 *   dmem_fini()            (migrate_device_range), and xe's eviction of
 *                          a buffer's pages (migrate_device_pfns)
 *
 * What differs from the kernel driver: the GPU reaches system memory by
 * virtual address (uhmm_pfn_to_addr(), uhmm_copy_nofault()), not by a
 * DMA address; VRAM is addressed by page index. Public API only; exit
 * status 0 when every check passed, 77 when the kernel cannot migrate,
 * 1 otherwise.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <uhmm/dma.h>
#include <uhmm/migrate.h>
#include <uhmm/uhmm.h>

#define NPAGES		64	/* the managed range */
#define VRAM_PAGES	64	/* the device's memory */
#define CHUNK		16	/* pages per migrate_vma call */
#define FAULT_PAGES	8	/* pages per GPU fault, at most */

/* A GPU page-table entry: what nouveau_hmm_convert_pfn() produces. */
struct gpu_pte {
	bool valid, write;
	struct uhmm_page *vram;	/* in VRAM: the page */
	void *sys;		/* in system memory: where the GPU reaches it */
};

struct svm {
	pthread_mutex_t lock;		/* svmm->mutex: the GPU page table */
	struct uhmm_interval_notifier *notifier;
	unsigned long start, end;	/* the managed range */
	struct gpu_pte pt[NPAGES];
	unsigned long ps;
	/* nouveau_dmem: VRAM and its free list, the copy engine. */
	struct uhmm_pagemap *pgmap;
	char *vram;			/* VRAM_PAGES pages */
	pthread_mutex_t free_lock;
	unsigned long free[VRAM_PAGES], nfree;
	struct uhmm_dma *dma;
	unsigned long to_ram_calls;
};

static struct svm svm = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.free_lock = PTHREAD_MUTEX_INITIALIZER,
};

static long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *vram_addr(struct svm *s, const struct uhmm_page *p)
{
	return s->vram + uhmm_page_index(p) * s->ps;
}

/* ------------------------------------------------------------ the mirror */

/* Drop the GPU's entries for [start, end). Called with s->lock held. */
static void svm_zap_locked(struct svm *s, unsigned long start, unsigned long end)
{
	if (start < s->start)
		start = s->start;
	if (end > s->end)
		end = s->end;
	for (unsigned long a = start; a < end; a += s->ps)
		memset(&s->pt[(a - s->start) / s->ps], 0, sizeof(struct gpu_pte));
}

static void svm_zap(struct svm *s, unsigned long start, unsigned long end)
{
	pthread_mutex_lock(&s->lock);
	svm_zap_locked(s, start, end);
	pthread_mutex_unlock(&s->lock);
}

/*
 * The CPU's mapping changed (nouveau_svmm_invalidate_range_start). nouveau
 * skips its own MIGRATE events because it re-maps migrated pages itself
 * (nouveau_pfns_map); this driver zaps on every event and lets the GPU
 * fault again.
 */
static bool svm_invalidate(struct uhmm_interval_notifier *sub,
			   const struct uhmm_notifier_range *r, unsigned long seq)
{
	struct svm *s = uhmm_interval_notifier_priv(sub);

	pthread_mutex_lock(&s->lock);
	uhmm_interval_set_seq(sub, seq);
	svm_zap_locked(s, r->start, r->end);
	pthread_mutex_unlock(&s->lock);
	return true;
}

static const struct uhmm_interval_notifier_ops svm_notifier_ops = {
	.invalidate = svm_invalidate,
};

/* nouveau_hmm_convert_pfn(): a range_fault value to a GPU entry. */
static struct gpu_pte svm_convert(uint64_t pfn)
{
	struct gpu_pte pte = { 0 };

	if (!(pfn & UHMM_PFN_VALID) || (pfn & UHMM_PFN_ERROR))
		return pte;
	pte.valid = true;
	pte.write = pfn & UHMM_PFN_WRITE;
	if (pfn & UHMM_PFN_DEVICE_PRIVATE)
		pte.vram = uhmm_pfn_to_page(pfn);	/* our own VRAM */
	else
		pte.sys = uhmm_pfn_to_addr(pfn);
	return pte;
}

/*
 * A GPU fault at @addr (nouveau_svm_fault): the VMA decides whether the
 * access is allowed and bounds the window; uhmm_range_fault() makes the
 * pages present (our own VRAM pages are reported, not faulted back), and
 * the result is mapped only if no invalidation ran since read_begin.
 */
static int svm_fault(struct svm *s, unsigned long addr, bool write)
{
	unsigned long start = addr & ~(s->ps - 1), end;
	uint64_t pfns[FAULT_PAGES];
	struct uhmm_vma vma;
	long timeout;
	int ret;

	if (uhmm_vma_lookup(start, &vma))
		return -EFAULT;			/* no VMA: the GPU faults */
	if (!(vma.flags & UHMM_VMA_READ) || (write && !(vma.flags & UHMM_VMA_WRITE)))
		return -EPERM;
	end = start + FAULT_PAGES * s->ps;
	if (end > vma.end)
		end = vma.end;
	if (end > s->end)
		end = s->end;

	struct uhmm_range range = {
		.notifier = s->notifier,
		.start = start, .end = end, .hmm_pfns = pfns,
		.default_flags = UHMM_PFN_REQ_FAULT | (write ? UHMM_PFN_REQ_WRITE : 0),
		.dev_private_owner = s,
	};

	timeout = now_ms() + UHMM_RANGE_DEFAULT_TIMEOUT;
	for (;;) {
		if (now_ms() > timeout)
			return -EBUSY;
		range.notifier_seq = uhmm_interval_read_begin(s->notifier);
		ret = uhmm_range_fault(&range);
		if (ret == -EBUSY)
			continue;
		if (ret)
			return ret;
		pthread_mutex_lock(&s->lock);
		if (!uhmm_interval_read_retry(s->notifier, range.notifier_seq))
			break;
		pthread_mutex_unlock(&s->lock);
	}
	/* Map: the GPU page-table update, under the lock. */
	for (unsigned long a = start; a < end; a += s->ps)
		s->pt[(a - s->start) / s->ps] = svm_convert(pfns[(a - start) / s->ps]);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

/*
 * The GPU reads or writes 8 bytes at @addr: through its page table, which
 * it fills by faulting. uhmm_range_revalidate() first: user space gets
 * no event for some changes (mprotect) until something looks.
 */
static int gpu_access(struct svm *s, unsigned long addr, bool write, uint64_t *val)
{
	int ret = uhmm_range_revalidate(addr & ~(s->ps - 1),
					(addr & ~(s->ps - 1)) + s->ps);

	for (int tries = 0; !ret && tries < 8; tries++) {
		pthread_mutex_lock(&s->lock);
		struct gpu_pte pte = s->pt[(addr - s->start) / s->ps];

		if (pte.valid && (!write || pte.write)) {
			unsigned long off = addr & (s->ps - 1);

			if (pte.vram) {
				char *v = vram_addr(s, pte.vram) + off;

				if (write)
					memcpy(v, val, sizeof(*val));
				else
					memcpy(val, v, sizeof(*val));
			} else if (write) {
				ret = uhmm_copy_nofault((char *)pte.sys + off, val,
							sizeof(*val), NULL);
			} else {
				ret = uhmm_copy_nofault(val, (char *)pte.sys + off,
							sizeof(*val), NULL);
			}
			pthread_mutex_unlock(&s->lock);
			return ret;
		}
		pthread_mutex_unlock(&s->lock);
		ret = svm_fault(s, addr, write);
	}
	return ret ? ret : -EAGAIN;
}

/* ------------------------------------------------------------- the dmem */

/* nouveau_dmem_page_alloc_locked(): a free VRAM page, one reference. */
static struct uhmm_page *dmem_page_alloc(struct svm *s)
{
	struct uhmm_page *p = NULL;

	pthread_mutex_lock(&s->free_lock);
	if (s->nfree)
		p = uhmm_pagemap_page(s->pgmap, s->free[--s->nfree]);
	pthread_mutex_unlock(&s->free_lock);
	if (p)
		uhmm_page_init(p);
	return p;
}

/* The page's last reference went (nouveau_dmem_page_free). */
static void dmem_page_free(struct uhmm_page *p)
{
	struct svm *s = &svm;

	pthread_mutex_lock(&s->free_lock);
	s->free[s->nfree++] = uhmm_page_index(p);
	pthread_mutex_unlock(&s->free_lock);
}

/* Copy n pages by descriptors with the DMA engine and wait (the fence). */
static int dmem_copy(struct svm *s, struct uhmm_dma_desc *desc, size_t n)
{
	struct uhmm_dma_batch b = { .desc = desc, .n = n };
	int ret;

	if (!n)
		return 0;
	ret = uhmm_dma_submit(s->dma, &b);
	return ret ? ret : uhmm_dma_wait(s->dma, &b);
}

/*
 * A CPU access to VRAM (nouveau_dmem_migrate_to_ram). nouveau moves the
 * faulting page (or its folio); drm_pagemap moves a window clamped to
 * vmf->vma: here uhmm's read-ahead window clamped to the VMA's bounds.
 * vmf->tid is the thread whose access waits, for a driver that must tell
 * a fault of its own thread (recursion guards); this one needs none.
 */
static int dmem_migrate_to_ram(struct uhmm_fault *vmf)
{
	struct svm *s = &svm;	/* uhmm_page_owner(vmf->page) */
	unsigned long start = vmf->address, end = vmf->address + s->ps;
	uint64_t src[FAULT_PAGES * 2], dst[FAULT_PAGES * 2];
	struct uhmm_dma_desc desc[FAULT_PAGES * 2];
	size_t n = 0;
	int ret;

	if (vmf->vm_start && vmf->ra_start >= vmf->vm_start &&
	    vmf->ra_end <= vmf->vm_end &&
	    vmf->ra_end - vmf->ra_start <= sizeof(src) / sizeof(src[0]) * s->ps) {
		start = vmf->ra_start;
		end = vmf->ra_end;
	}
	struct uhmm_migrate m = {
		.start = start, .end = end, .src = src, .dst = dst,
		.pgmap_owner = s, .flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE,
		.fault_page = vmf->page,
	};

	__atomic_add_fetch(&s->to_ram_calls, 1, __ATOMIC_RELAXED);
	unsigned long npages = (end - start) / s->ps;

	ret = uhmm_migrate_setup(&m);
	if (ret)
		return ret;
	for (unsigned long i = 0; i < npages; i++) {
		struct uhmm_page *p = uhmm_migrate_pfn_to_page(src[i]);

		dst[i] = 0;
		if (!p || !(src[i] & UHMM_MIGRATE_PFN_MIGRATE) ||
		    uhmm_migrate_alloc_system(&dst[i]))
			continue;
		desc[n++] = (struct uhmm_dma_desc){
			.dst = uhmm_migrate_pfn_to_addr(dst[i]),
			.src = vram_addr(s, p), .len = s->ps,
		};
	}
	svm_zap(s, start, end);		/* nouveau_svmm_invalidate() */
	if (dmem_copy(s, desc, n))
		memset(dst, 0, npages * sizeof(dst[0]));	/* stays */
	uhmm_migrate_pages(&m);
	uhmm_migrate_finalize(&m);
	return 0;
}

static const struct uhmm_pagemap_ops dmem_ops = {
	.page_free = dmem_page_free,
	.migrate_to_ram = dmem_migrate_to_ram,
};

/* One migrate_vma call over [start, end) inside one VMA; pages moved.
 * The VRAM pages used are appended to bo[] (a buffer object). */
static unsigned long dmem_migrate_chunk(struct svm *s, unsigned long start,
					unsigned long end, struct uhmm_page **bo)
{
	uint64_t src[CHUNK], dst[CHUNK];
	struct uhmm_dma_desc desc[CHUNK];
	struct uhmm_migrate m = {
		.start = start, .end = end, .src = src, .dst = dst,
		.pgmap_owner = s, .flags = UHMM_MIGRATE_SELECT_SYSTEM,
	};
	unsigned long moved = 0, npages = (end - start) / s->ps;
	size_t n = 0;

	if (uhmm_migrate_setup(&m))
		return 0;
	for (unsigned long i = 0; i < npages; i++) {
		struct uhmm_page *p;

		dst[i] = 0;
		if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE) || !(p = dmem_page_alloc(s)))
			continue;
		if (src[i] & UHMM_MIGRATE_PFN_VALID)
			desc[n++] = (struct uhmm_dma_desc){
				.dst = vram_addr(s, p),
				.src = uhmm_migrate_pfn_to_addr(src[i]), .len = s->ps,
			};
		else		/* a hole: nouveau clears it with the copy engine */
			memset(vram_addr(s, p), 0, s->ps);
		dst[i] = uhmm_migrate_pfn_device(p);
	}
	if (dmem_copy(s, desc, n))
		for (unsigned long i = 0; i < npages; i++)
			if (dst[i]) {
				uhmm_page_put(uhmm_migrate_pfn_to_page(dst[i]));
				dst[i] = 0;
			}
	uhmm_migrate_pages(&m);
	svm_zap(s, start, end);	/* nouveau pre-maps here (nouveau_pfns_map) */
	for (unsigned long i = 0; i < npages; i++)
		if (dst[i] && (src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			bo[moved++] = uhmm_migrate_pfn_to_page(dst[i]);
	uhmm_migrate_finalize(&m);
	for (unsigned long i = 0; i < npages; i++)
		if (dst[i] && !(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			uhmm_page_put(uhmm_migrate_pfn_to_page(dst[i]));
	return moved;
}

/*
 * Migrate [start, end) to VRAM (nouveau_dmem_migrate_vma, from the bind
 * ioctl): VMA by VMA, since a migration stays inside one; anonymous
 * memory only. Returns the pages moved, recorded in bo[].
 */
static unsigned long dmem_migrate_to_vram(struct svm *s, unsigned long start,
					  unsigned long end, struct uhmm_page **bo)
{
	unsigned long moved = 0;
	struct uhmm_vma vma;

	while (start < end && uhmm_find_vma_intersection(start, end, &vma) == 0) {
		unsigned long a = vma.start > start ? vma.start : start;
		unsigned long b = vma.end < end ? vma.end : end;

		for (; (vma.flags & UHMM_VMA_ANON) && a < b; a += CHUNK * s->ps) {
			unsigned long e = a + CHUNK * s->ps < b ? a + CHUNK * s->ps : b;

			moved += dmem_migrate_chunk(s, a, e, bo + moved);
		}
		start = vma.end;
	}
	return moved;
}

/*
 * After an eviction's collection (src[]): copy the collected pages to
 * system memory, commit, finalize (nouveau_dmem_evict_chunk). Returns
 * the pages that moved.
 */
static unsigned long dmem_evict(struct svm *s, uint64_t *src, unsigned long npages)
{
	uint64_t *dst = calloc(npages, sizeof(*dst));
	struct uhmm_dma_desc *desc = calloc(npages, sizeof(*desc));
	unsigned long moved = 0;
	size_t n = 0;

	if (!dst || !desc) {
		/* Nothing copied: every page stays where it is. */
		uint64_t none = 0;

		for (unsigned long i = 0; i < npages; i++)
			uhmm_migrate_device_finalize(&src[i], &none, 1);
		free(dst);
		free(desc);
		return 0;
	}
	for (unsigned long i = 0; i < npages; i++) {
		struct uhmm_page *p = uhmm_migrate_pfn_to_page(src[i]);

		if (!p || !(src[i] & UHMM_MIGRATE_PFN_MIGRATE) ||
		    uhmm_migrate_alloc_system(&dst[i]))
			continue;
		desc[n++] = (struct uhmm_dma_desc){
			.dst = uhmm_migrate_pfn_to_addr(dst[i]),
			.src = vram_addr(s, p), .len = s->ps,
		};
	}
	if (dmem_copy(s, desc, n))
		memset(dst, 0, npages * sizeof(*dst));
	uhmm_migrate_device_pages(src, dst, npages);
	for (unsigned long i = 0; i < npages; i++)
		moved += !!(src[i] & UHMM_MIGRATE_PFN_MIGRATE);
	uhmm_migrate_device_finalize(src, dst, npages);
	free(dst);
	free(desc);
	return moved;
}

/* Evict a buffer's VRAM pages, wherever they are (xe: migrate_device_pfns). */
static unsigned long dmem_evict_bo(struct svm *s, struct uhmm_page **bo,
				   unsigned long n)
{
	uint64_t src[VRAM_PAGES];

	for (unsigned long i = 0; i < n; i++)
		src[i] = uhmm_migrate_pfn_device(bo[i]);
	if (uhmm_migrate_device_pfns(src, n))
		return 0;
	return dmem_evict(s, src, n);
}

/* Teardown (nouveau_dmem_fini): everything still in VRAM goes home. */
static int dmem_fini(struct svm *s)
{
	uint64_t src[VRAM_PAGES];

	if (uhmm_migrate_device_range(src, s->pgmap, 0, VRAM_PAGES))
		return -1;
	dmem_evict(s, src, VRAM_PAGES);
	return uhmm_pagemap_destroy(s->pgmap);
}

/* ----------------------------------------------------------------- main */

static int failures;

#define CHECK(cond)							\
	do {								\
		if (cond) {						\
			printf("ok: %s\n", #cond);			\
		} else {						\
			printf("FAILED: %s (line %d)\n", #cond, __LINE__); \
			failures++;					\
		}							\
	} while (0)

static uint64_t pattern(unsigned long i)
{
	return 0x5e0000000ull + i;
}

int main(void)
{
	struct uhmm_features f = { .size = sizeof(f) };
	struct uhmm_page *bo[NPAGES];
	unsigned long ps = (unsigned long)sysconf(_SC_PAGESIZE), nbo, in_vram = 0, to_ram;
	struct svm *s = &svm;
	uint64_t v = 0;
	bool same = true;
	char *mem;

	if (uhmm_features(&f) || !(f.flags & UHMM_FEAT_MOVE) ||
	    !(f.flags & UHMM_FEAT_EVENTS)) {
		printf("skip: migration needs userfaultfd with UFFDIO_MOVE\n");
		return 77;
	}
	s->ps = ps;
	/* The driver's own memory comes from uhmm_alloc(): never migrated. */
	s->vram = uhmm_alloc(VRAM_PAGES * ps);
	mem = mmap(NULL, NPAGES * ps, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (!s->vram || mem == MAP_FAILED)
		return 1;
	for (unsigned long i = 0; i < VRAM_PAGES; i++)
		s->free[s->nfree++] = VRAM_PAGES - 1 - i;
	s->start = (unsigned long)mem;
	s->end = s->start + NPAGES * ps;
	for (unsigned long i = 0; i < NPAGES; i++)
		*(uint64_t *)(mem + i * ps) = pattern(i);
	/* The last 8 pages are read-only: a VMA of their own. */
	CHECK(mprotect(mem + (NPAGES - 8) * ps, 8 * ps, PROT_READ) == 0);

	CHECK(uhmm_dma_create(2, &s->dma) == 0);
	CHECK(uhmm_pagemap_create(UHMM_MEMORY_DEVICE_PRIVATE, s, &dmem_ops,
				  VRAM_PAGES, &s->pgmap) == 0);
	CHECK(uhmm_interval_notifier_insert(&s->notifier, s->start, NPAGES * ps,
					    &svm_notifier_ops, s) == 0);
	if (failures)
		return 1;

	/* The GPU reads and writes system memory through its page table. */
	CHECK(gpu_access(s, s->start + 2 * ps, false, &v) == 0 && v == pattern(2));
	v = 0xabcdef;
	CHECK(gpu_access(s, s->start + 3 * ps + 8, true, &v) == 0);
	CHECK(((uint64_t *)(mem + 3 * ps))[1] == 0xabcdef);
	/* A write to the read-only VMA is refused, a read is not. */
	CHECK(gpu_access(s, s->end - ps, true, &v) == -EPERM);
	CHECK(gpu_access(s, s->end - ps, false, &v) == 0 && v == pattern(NPAGES - 1));

	/* Bind the whole range: its writable VMA moves to VRAM, the
	 * read-only one stays (system memory in a read-only VMA is not
	 * collected). */
	nbo = dmem_migrate_to_vram(s, s->start, s->end, bo);
	CHECK(nbo == NPAGES - 8);
	/* The GPU now finds its own VRAM pages through range_fault. */
	CHECK(gpu_access(s, s->start + 5 * ps, false, &v) == 0 && v == pattern(5));
	pthread_mutex_lock(&s->lock);
	CHECK(s->pt[5].valid && s->pt[5].vram);
	pthread_mutex_unlock(&s->lock);
	v = 0x1234;
	CHECK(gpu_access(s, s->start + 6 * ps + 16, true, &v) == 0);

	/* The CPU touches VRAM: migrate_to_ram brings the pages home. */
	CHECK(((volatile uint64_t *)(mem + 6 * ps))[2] == 0x1234);
	CHECK(((volatile uint64_t *)(mem + 7 * ps))[0] == pattern(7));
	CHECK(__atomic_load_n(&s->to_ram_calls, __ATOMIC_RELAXED) >= 1);
	pthread_mutex_lock(&s->lock);
	CHECK(!s->pt[6].valid);
	pthread_mutex_unlock(&s->lock);

	/* Evict one buffer's pages (the first 16 migrated) by list, the
	 * rest at teardown by range; the CPU reads everything back. */
	to_ram = __atomic_load_n(&s->to_ram_calls, __ATOMIC_RELAXED);
	for (unsigned long i = 0; i < 16; i++)
		in_vram += uhmm_page_refcount(bo[i]) > 0;
	CHECK(in_vram >= 8 && dmem_evict_bo(s, bo, 16) == in_vram);
	CHECK(dmem_fini(s) == 0);
	for (unsigned long i = 0; i < NPAGES; i++)
		same &= *(uint64_t *)(mem + i * ps) == pattern(i);
	CHECK(same);
	CHECK(((uint64_t *)(mem + 3 * ps))[1] == 0xabcdef);
	CHECK(__atomic_load_n(&s->to_ram_calls, __ATOMIC_RELAXED) == to_ram);	/* evicted: no CPU fault */

	CHECK(uhmm_interval_notifier_remove(s->notifier) == 0);
	CHECK(uhmm_dma_destroy(s->dma) == 0);
	printf("migrate_to_ram called %lu times\n",
	       __atomic_load_n(&s->to_ram_calls, __ATOMIC_RELAXED));
	printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
	return failures ? 1 : 0;
}
