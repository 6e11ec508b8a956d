/* SPDX-License-Identifier: MIT */
/*
 * dmirror: the reference software device, a port of the kernel's
 * lib/test_hmm.c built only on the public API of <uhmm/uhmm.h>. This file:
 * set-up, the devices and their opens, and the command dispatch
 * (test_hmm.c: hmm_dmirror_init, dmirror_fops_open/release,
 * dmirror_fops_unlocked_ioctl). Shared structs: dmirror_internal.h.
 */
#include "dmirror_internal.h"

static struct {
	pthread_mutex_t lock;
	struct dmirror_device *dev[DMIRROR_NDEVICES];
	/* Devices closed while a page was still referenced (a CPU fault
	 * migrating it): freed by a later open or close once idle. */
	struct dmirror_device *orphans;
} dmirror_table = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* Bumped in every child of fork(): opens of an older generation are dead. */
static atomic_ulong dmirror_gen;

static pthread_once_t dmirror_once = PTHREAD_ONCE_INIT;
static int dmirror_once_err;
unsigned long uhmm__dmirror_page_size;
unsigned int uhmm__dmirror_page_shift;

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
	uhmm__dmirror_page_size = (unsigned long)ps;
	uhmm__dmirror_page_shift =
		(unsigned int)__builtin_ctzl(uhmm__dmirror_page_size);
	uhmm__dmirror_snap_bytes_init();
	if (pthread_atfork(NULL, NULL, dmirror_atfork_child))
		dmirror_once_err = -ENOMEM;
}

uint64_t uhmm__dmirror_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
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

	uhmm__dmirror_dev_evict(dev);
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
	dm->nend = ULONG_MAX & ~(uhmm__dmirror_page_size - 1);
	pthread_mutex_init(&dm->lock, NULL);

	ret = uhmm__dmirror_pt_init(&dm->pt);
	if (ret)
		goto err_free;

	ret = dmirror_device_get(device, &dm->dev);
	if (ret)
		goto err_pt;

	ret = uhmm_interval_notifier_insert(&dm->notifier, 0, dm->nend,
					    &uhmm__dmirror_notifier_ops, dm);
	if (ret)
		goto err_dev;
	dmirror_open_link(dm);

	*out = dm;
	return 0;

err_dev:
	dmirror_device_put(dm->dev);
err_pt:
	uhmm__dmirror_pt_destroy(&dm->pt);
err_free:
	pthread_mutex_destroy(&dm->lock);
	uhmm_free(dm);
	return ret;
}

bool uhmm__dmirror_stale(const struct uhmm_dmirror *dm)
{
	return dm->gen != atomic_load(&dmirror_gen);
}

UHMM_API int uhmm_dmirror_close(struct uhmm_dmirror *dm)
{
	if (!dm)
		return -EINVAL;
	if (uhmm__dmirror_stale(dm))
		return -EBADF;

	if (dm->notifier)
		uhmm_interval_notifier_remove(dm->notifier);
	dmirror_open_unlink(dm);
	uhmm__dmirror_pt_destroy(&dm->pt);
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
	if (uhmm__dmirror_stale(dm))
		return -EBADF;

	cmd->cpages = 0;
	cmd->faults = 0;

	if (cmd->addr & (uhmm__dmirror_page_size - 1) || !cmd->npages)
		return -EINVAL;
	if (__builtin_mul_overflow(cmd->npages,
				   (uint64_t)uhmm__dmirror_page_size, &len) ||
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
			uhmm__dmirror_read(dm, cmd, start, end) :
			uhmm__dmirror_write(dm, cmd, start, end);
	case UHMM_DMIRROR_SNAPSHOT:
		if (__builtin_add_overflow(cmd->ptr, cmd->npages, &e))
			return -EFAULT;
		return uhmm__dmirror_snapshot(dm, cmd, start, end);
	case UHMM_DMIRROR_FLAGS:
		pthread_mutex_lock(&dm->lock);
		dm->flags = cmd->npages;
		pthread_mutex_unlock(&dm->lock);
		return 0;
	case UHMM_DMIRROR_RELEASE:
		uhmm__dmirror_dev_evict(dm->dev);
		return 0;
	case UHMM_DMIRROR_MIGRATE_TO_DEV:
		if (__builtin_add_overflow(cmd->ptr, len, &e))
			return -EFAULT;
		return uhmm__dmirror_migrate_to_dev(dm, cmd, start, end);
	case UHMM_DMIRROR_MIGRATE_TO_SYS:
		return uhmm__dmirror_migrate_to_sys(dm, cmd, start, end);
	case UHMM_DMIRROR_EXCLUSIVE:
		if (__builtin_add_overflow(cmd->ptr, len, &e))
			return -EFAULT;
		return uhmm__dmirror_exclusive(dm, cmd, start, end);
	case UHMM_DMIRROR_CHECK_EXCLUSIVE:
		return uhmm__dmirror_check_exclusive(dm, start, end);
	}
	return -EINVAL;
}
