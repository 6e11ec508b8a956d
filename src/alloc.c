/* SPDX-License-Identifier: MIT */
/*
 * Memory uhmm never migrates: its own structures, and drivers' (the
 * kernel's kmalloc, from a driver's point of view).
 *
 * uhmm's state tree, migration bookkeeping and a driver's device page
 * table must not live in pages an application migrates to a device: the
 * thread that serves CPU faults would fault on them itself. malloc'ed
 * memory shares pages with the application's heap, which the application
 * may migrate (the demo does). So they come from one arena uhmm reserves
 * (NORESERVE: untouched pages cost nothing), which uhmm_migrate_setup()
 * and uhmm_make_device_exclusive() refuse to touch.
 *
 * Small sizes (up to 4 KiB) come from size classes in 64 KiB slabs;
 * larger ones are page-aligned blocks of whole slabs, given back to the
 * system on free (MADV_DONTNEED) and reused. One mutex: nothing here is
 * on a per-page path.
 *
 * Under a sanitizer or valgrind, or when the reservation fails, these
 * are malloc and free, so that the tools see every allocation.
 */
#include <errno.h>
#include <link.h>
#include <pthread.h>
#include <stdint.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <uhmm/uhmm.h>
#include "base.h"

#define ARENA_BYTES	(64UL << 30)	/* address space only */
#define SLAB		(64UL << 10)
#define HDR		4096UL		/* block header; keeps blocks page aligned */
#define NCLASS		9		/* 16 << 0 .. 16 << 8 = 4096 bytes */
#define MAGIC_SMALL	0x75686d53u	/* "uhmS" */
#define MAGIC_BIG	0x75686d42u	/* "uhmB" */

struct slab_hdr {
	uint32_t magic;
	uint32_t cls;
	size_t len;		/* big blocks: bytes of the block, header included */
	struct slab_hdr *next;	/* big blocks on the free list */
};

struct free_obj {
	struct free_obj *next;
};

static struct {
	pthread_mutex_t lock;
	pthread_once_t once;
	bool libc;		/* malloc/free instead of the arena */
	char *base, *brk, *end;
	struct free_obj *free_small[NCLASS];
	struct slab_hdr *free_big;
} A = { .lock = PTHREAD_MUTEX_INITIALIZER, .once = PTHREAD_ONCE_INIT };

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
	__has_feature(memory_sanitizer)
#define UNDER_SANITIZER 1
#endif
#endif
#ifndef UNDER_SANITIZER
#define UNDER_SANITIZER 0
#endif

static void arena_init(void)
{
	int err;
	void *p;

	if (UNDER_SANITIZER || uhmm__os_on_valgrind() || getenv("UHMM_ALLOC_LIBC")) {
		A.libc = true;
		return;
	}
	p = uhmm__os_mmap(NULL, ARENA_BYTES + SLAB, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0, &err);
	if (p == MAP_FAILED) {
		A.libc = true;
		return;
	}
	A.base = (char *)(((uintptr_t)p + SLAB - 1) & ~(SLAB - 1));
	A.brk = A.base;
	A.end = A.base + ARENA_BYTES;
}

static inline bool arena_ready(void)
{
	pthread_once(&A.once, arena_init);
	return !A.libc;
}

bool uhmm__alloc_owns(unsigned long start, unsigned long end)
{
	pthread_once(&A.once, arena_init);
	return !A.libc && start < (uintptr_t)A.end && end > (uintptr_t)A.base;
}

/*
 * The writable data (.data, .bss) of the C library, the dynamic loader
 * and libuhmm itself: every thread reads it, uhmm's monitor threads and a
 * migrating thread included (glibc's pthread_mutex_lock() reads
 * __libc_single_threaded; libuhmm's globals are its state). A page of it
 * on a device would be a fault the thread that serves it waits on. Never
 * collected by a migration, as a pinned page is not (docs/semantics.md,
 * M15). With libuhmm.a linked in, libuhmm's data is the program's.
 */
#define LIBDATA_MAX 8
static struct {
	pthread_once_t once;
	int n;
	unsigned long lo[LIBDATA_MAX], hi[LIBDATA_MAX];
	unsigned long tls;	/* the modules' TLS blocks, loaded at start */
} L = { .once = PTHREAD_ONCE_INIT };

static bool libdata_wanted(const struct dl_phdr_info *info)
{
	const char *name = info->dlpi_name, *base = strrchr(name, '/');
	unsigned long self = (uintptr_t)&libdata_wanted;

	base = base ? base + 1 : name;
	if (!strncmp(base, "libc.so", 7) || !strncmp(base, "ld-linux", 8) ||
	    !strncmp(base, "ld64.so", 7) || !strncmp(base, "ld-musl", 7))
		return true;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		unsigned long a = info->dlpi_addr + ph->p_vaddr;

		if (ph->p_type == PT_LOAD && self >= a && self < a + ph->p_memsz)
			return true;
	}
	return false;
}

static int libdata_one(struct dl_phdr_info *info, size_t size, void *arg)
{
	unsigned long ps = (unsigned long)sysconf(_SC_PAGESIZE);

	(void)size;
	(void)arg;
	for (int i = 0; i < info->dlpi_phnum; i++)
		if (info->dlpi_phdr[i].p_type == PT_TLS)
			L.tls += info->dlpi_phdr[i].p_memsz + info->dlpi_phdr[i].p_align;
	if (!libdata_wanted(info))
		return 0;
	for (int i = 0; i < info->dlpi_phnum && L.n < LIBDATA_MAX; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		unsigned long a = info->dlpi_addr + ph->p_vaddr;

		if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_W))
			continue;
		L.lo[L.n] = a & ~(ps - 1);
		L.hi[L.n] = (a + ph->p_memsz + ps - 1) & ~(ps - 1);
		L.n++;
	}
	return 0;
}

static void libdata_init(void)
{
	dl_iterate_phdr(libdata_one, NULL);
}

void uhmm__alloc_thread_area(unsigned long *lo, unsigned long *hi)
{
	unsigned long tp = (uintptr_t)__builtin_thread_pointer(), span;

	pthread_once(&L.once, libdata_init);
	/* Static TLS below the thread pointer and the thread's descriptor
	 * above it (x86-64; the other way round on arm64): the modules' TLS
	 * and a page for the C library's surplus and alignment, a page for
	 * the descriptor (about 2.3 KiB with its rseq area). */
	span = L.tls + 4096;
	*lo = tp > span ? tp - span : 0;
	*hi = tp + span;
}

bool uhmm__alloc_libdata(unsigned long start, unsigned long end)
{
	pthread_once(&L.once, libdata_init);
	for (int i = 0; i < L.n; i++)
		if (start < L.hi[i] && end > L.lo[i])
			return true;
	return false;
}

static void *carve(size_t len)
{
	char *p;

	if ((size_t)(A.end - A.brk) < len)
		return NULL;
	p = A.brk;
	A.brk += len;
	return p;
}

static unsigned int size_class(size_t size)
{
	unsigned int c = 0;

	while ((16UL << c) < size)
		c++;
	return c;
}

static void *alloc_small(unsigned int c)
{
	size_t sz = 16UL << c;
	struct free_obj *o = A.free_small[c];

	if (!o) {
		struct slab_hdr *h = carve(SLAB);
		size_t first = sz > sizeof(*h) ? sz : 64;

		if (!h)
			return NULL;
		h->magic = MAGIC_SMALL;
		h->cls = c;
		/* Thread the slab's objects, lowest first. */
		for (size_t off = SLAB - sz; off >= first; off -= sz) {
			struct free_obj *f = (struct free_obj *)((char *)h + off);

			f->next = A.free_small[c];
			A.free_small[c] = f;
		}
		o = A.free_small[c];
	}
	A.free_small[c] = o->next;
	return o;
}

static void *alloc_big(size_t size)
{
	size_t len = (size + HDR + SLAB - 1) & ~(SLAB - 1);
	struct slab_hdr **pp, *h;

	if (len < size)
		return NULL;
	for (pp = &A.free_big; (h = *pp); pp = &h->next) {
		if (h->len >= len) {
			*pp = h->next;
			return (char *)h + HDR;
		}
	}
	h = carve(len);
	if (!h)
		return NULL;
	h->magic = MAGIC_BIG;
	h->len = len;
	return (char *)h + HDR;
}

/* malloc's, keeping the promise that big blocks are page aligned. */
static void *libc_alloc(size_t size)
{
	void *p = NULL;

	if (size <= 16UL << (NCLASS - 1))
		return malloc(size ? size : 1);
	return posix_memalign(&p, 4096, size) ? NULL : p;
}

void *uhmm_alloc(size_t size)
{
	void *p;

	if (!arena_ready())
		return libc_alloc(size);
	pthread_mutex_lock(&A.lock);
	p = size <= (16UL << (NCLASS - 1)) ? alloc_small(size_class(size)) :
					      alloc_big(size);
	pthread_mutex_unlock(&A.lock);
	return p;
}

void *uhmm_calloc(size_t n, size_t size)
{
	size_t total;
	void *p;

	if (__builtin_mul_overflow(n, size, &total))
		return NULL;
	if (!arena_ready()) {
		p = libc_alloc(total);
		if (p)
			memset(p, 0, total);
		return p;
	}
	p = uhmm_alloc(total);
	/* Big blocks are fresh or were given back (zero); objects reused. */
	if (p && total <= (16UL << (NCLASS - 1)))
		memset(p, 0, total);
	return p;
}

static struct slab_hdr *hdr_of(const void *p)
{
	struct slab_hdr *h = (struct slab_hdr *)((uintptr_t)p & ~(SLAB - 1));

	/* A big block's pointer is HDR past its (slab-aligned) start. */
	if (h->magic != MAGIC_SMALL && h->magic != MAGIC_BIG)
		return NULL;
	return h;
}

/* Usable bytes at @p. */
static size_t usable(const struct slab_hdr *h)
{
	return h->magic == MAGIC_SMALL ? 16UL << h->cls : h->len - HDR;
}

void uhmm_free(void *p)
{
	struct slab_hdr *h;

	if (!p)
		return;
	if (!arena_ready() || !uhmm__alloc_owns((uintptr_t)p, (uintptr_t)p + 1)) {
		free(p);
		return;
	}
	h = hdr_of(p);
	if (!h)
		return;		/* not ours: a bug of the caller, ignored */
	if (h->magic == MAGIC_BIG) {
		/* Memory back to the system; the block's header stays. */
		uhmm__os_madvise((char *)h + HDR, h->len - HDR, MADV_DONTNEED);
		pthread_mutex_lock(&A.lock);
		h->next = A.free_big;
		A.free_big = h;
		pthread_mutex_unlock(&A.lock);
		return;
	}
	pthread_mutex_lock(&A.lock);
	((struct free_obj *)p)->next = A.free_small[h->cls];
	A.free_small[h->cls] = p;
	pthread_mutex_unlock(&A.lock);
}

void *uhmm_realloc(void *p, size_t size)
{
	struct slab_hdr *h;
	void *q;

	if (!p)
		return uhmm_alloc(size);
	if (!arena_ready() || !uhmm__alloc_owns((uintptr_t)p, (uintptr_t)p + 1)) {
		size_t old = malloc_usable_size(p);

		if (size <= 16UL << (NCLASS - 1) && old <= 16UL << (NCLASS - 1))
			return realloc(p, size);
		q = libc_alloc(size);
		if (!q)
			return NULL;
		memcpy(q, p, old < size ? old : size);
		free(p);
		return q;
	}
	h = hdr_of(p);
	if (!h)
		return NULL;
	if (size <= usable(h))
		return p;
	q = uhmm_alloc(size);
	if (!q)
		return NULL;
	memcpy(q, p, usable(h));
	uhmm_free(p);
	return q;
}

/* fork: the child must not inherit the lock held by another thread. */
static void alloc_prepare(void)
{
	pthread_mutex_lock(&A.lock);
}

static void alloc_release(void)
{
	pthread_mutex_unlock(&A.lock);
}

/*
 * Registered before the runtime's handlers (a lower priority number
 * runs first), so that this prepare handler runs after theirs, which
 * allocate.
 */
__attribute__((constructor(101))) static void alloc_load(void)
{
	pthread_atfork(alloc_prepare, alloc_release, alloc_release);
}
