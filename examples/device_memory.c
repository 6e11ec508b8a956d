/* SPDX-License-Identifier: MIT */
/*
 * A minimal device with private memory on uhmm's device-memory and
 * migration API: it registers its memory (a pagemap), migrates a buffer
 * into it with the three migrate_vma phases, and brings pages back when
 * the CPU touches them (migrate_to_ram). The counters of <uhmm/stats.h>
 * show what happened. Public API only; exit status 0 when every check
 * passed, 77 when the kernel cannot migrate, 1 otherwise.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <uhmm/migrate.h>
#include <uhmm/stats.h>
#include <uhmm/uhmm.h>

#define NPAGES 8		/* the buffer */
#define DEV_PAGES 16		/* the device's memory */

struct my_dev {
	pthread_mutex_t lock;
	struct uhmm_pagemap *pgmap;
	char *storage;		/* the device's memory, DEV_PAGES pages */
	bool used[DEV_PAGES];
	unsigned long page_size;
};

static struct my_dev dev = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* A free device page, its storage as driver data, one reference. */
static struct uhmm_page *my_alloc(struct my_dev *d)
{
	struct uhmm_page *p = NULL;

	pthread_mutex_lock(&d->lock);
	for (unsigned long i = 0; i < DEV_PAGES; i++) {
		if (d->used[i])
			continue;
		d->used[i] = true;
		p = uhmm_pagemap_page(d->pgmap, i);
		uhmm_page_set_data(p, d->storage + i * d->page_size);
		uhmm_page_init(p);
		break;
	}
	pthread_mutex_unlock(&d->lock);
	return p;
}

/* uhmm: the page's last reference is gone. */
static void my_page_free(struct uhmm_page *p)
{
	pthread_mutex_lock(&dev.lock);
	dev.used[uhmm_page_index(p)] = false;
	pthread_mutex_unlock(&dev.lock);
}

/* uhmm: the CPU touched a page that lives on the device: bring it back. */
static int my_migrate_to_ram(struct uhmm_fault *vmf)
{
	uint64_t src[1], dst[1];
	struct uhmm_migrate m = {
		.start = vmf->address, .end = vmf->address + dev.page_size,
		.src = src, .dst = dst, .pgmap_owner = &dev,
		.flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE,
		.fault_page = vmf->page,
	};
	int ret = uhmm_migrate_setup(&m);

	if (ret)
		return ret;
	dst[0] = 0;
	if ((src[0] & UHMM_MIGRATE_PFN_MIGRATE) &&
	    uhmm_migrate_alloc_system(&dst[0]) == 0)
		memcpy(uhmm_migrate_pfn_to_addr(dst[0]),
		       uhmm_page_data(uhmm_migrate_pfn_to_page(src[0])),
		       dev.page_size);
	uhmm_migrate_pages(&m);
	uhmm_migrate_finalize(&m);
	return dst[0] ? 0 : -ENOMEM;
}

static const struct uhmm_pagemap_ops my_ops = {
	.page_free = my_page_free,
	.migrate_to_ram = my_migrate_to_ram,
};

/* Migrate [addr, addr + n pages) into device memory; pages moved. */
static unsigned long my_migrate_to_device(struct my_dev *d, unsigned long addr,
					  unsigned long n)
{
	uint64_t src[NPAGES], dst[NPAGES];
	struct uhmm_migrate m = {
		.start = addr, .end = addr + n * d->page_size,
		.src = src, .dst = dst, .pgmap_owner = d,
		.flags = UHMM_MIGRATE_SELECT_SYSTEM,
	};
	unsigned long moved = 0;

	if (uhmm_migrate_setup(&m))
		return 0;
	for (unsigned long i = 0; i < n; i++) {
		struct uhmm_page *p;

		dst[i] = 0;
		if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE) || !(p = my_alloc(d)))
			continue;
		if (src[i] & UHMM_MIGRATE_PFN_VALID)	/* the device's DMA */
			memcpy(uhmm_page_data(p), uhmm_migrate_pfn_to_addr(src[i]),
			       d->page_size);
		else					/* a hole, or the zero page */
			memset(uhmm_page_data(p), 0, d->page_size);
		dst[i] = uhmm_migrate_pfn_device(p);
		moved++;
	}
	uhmm_migrate_pages(&m);
	uhmm_migrate_finalize(&m);
	return moved;
}

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

int main(void)
{
	struct uhmm_features f = { .size = sizeof(f) };
	struct uhmm_stats st;
	unsigned long ps = (unsigned long)sysconf(_SC_PAGESIZE);
	bool same = true;
	char *buf;
	int ret;

	if (uhmm_features(&f) || !(f.flags & UHMM_FEAT_MOVE) ||
	    !(f.flags & UHMM_FEAT_EVENTS)) {
		printf("skip: migration needs userfaultfd with UFFDIO_MOVE\n");
		return 77;
	}
	dev.page_size = ps;
	dev.storage = mmap(NULL, DEV_PAGES * ps, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	buf = mmap(NULL, NPAGES * ps, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (dev.storage == MAP_FAILED || buf == MAP_FAILED)
		return 1;
	ret = uhmm_pagemap_create(UHMM_MEMORY_DEVICE_PRIVATE, &dev, &my_ops,
				  DEV_PAGES, &dev.pgmap);
	CHECK(ret == 0);
	if (ret)
		return 1;
	for (unsigned long i = 0; i < NPAGES * ps; i++)
		buf[i] = (char)(i * 7 + 1);

	uhmm_stats_reset();
	CHECK(my_migrate_to_device(&dev, (unsigned long)buf, NPAGES) == NPAGES);
	CHECK(uhmm_stats_get(&st, sizeof(st)) == 0 && st.pages_to_device == NPAGES);
	CHECK(st.device_pages_in_use == NPAGES);

	/* The CPU reads the buffer: every page faults back, data intact. */
	for (unsigned long i = 0; i < NPAGES * ps; i++)
		same &= buf[i] == (char)(i * 7 + 1);
	CHECK(same);

	/* The pages return to the device's free list as the fault-backs
	 * finish (each on a uhmm thread): then the memory can go. */
	for (int i = 0; i < 1000 && (ret = uhmm_pagemap_destroy(dev.pgmap)) == -EBUSY; i++)
		usleep(1000);
	CHECK(ret == 0);
	CHECK(uhmm_stats_get(&st, sizeof(st)) == 0 && st.pages_to_system == NPAGES);
	printf("fault-backs %llu, pages to the device %llu, back %llu\n",
	       (unsigned long long)st.faults_back,
	       (unsigned long long)st.pages_to_device,
	       (unsigned long long)st.pages_to_system);
	printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
	return failures ? 1 : 0;
}
