/* SPDX-License-Identifier: MIT */
/*
 * dmirror's device accesses: READ and WRITE through the device page table,
 * the read-back of MIGRATE_TO_DEV and EXCLUSIVE, and the byte-granular
 * uhmm_dmirror_access() (test_hmm.c: dmirror_read, dmirror_write,
 * dmirror_do_read, dmirror_do_write).
 */
#include "dmirror_internal.h"

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
void uhmm__dmirror_buf_prefault(uint64_t ptr, uint64_t len)
{
	uint64_t a = ptr, end = ptr + len;
	char b;

	if (!len || !atomic_load_explicit(&uhmm__dmirror_dev_pages,
					  memory_order_relaxed))
		return;
	/* Up to the first page that faults: the copy fails there anyway
	 * (and a hostile length of unmapped pages costs a signal each). */
	while (a < end &&
	       !uhmm_copy_nofault(&b, (const void *)(uintptr_t)a, 1, NULL))
		a = (a & ~(uint64_t)(uhmm__dmirror_page_size - 1)) +
		    uhmm__dmirror_page_size;
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
	char *buf = (char *)((uintptr_t)c->buf +
			     (i << uhmm__dmirror_page_shift));
	size_t len = (size_t)(n << uhmm__dmirror_page_shift);
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
		c->done = i + ((fa - (uintptr_t)dev) >>
			       uhmm__dmirror_page_shift);
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
	char *buf = (char *)((uintptr_t)c->buf +
			     (i << uhmm__dmirror_page_shift));
	unsigned long fa = 0;
	int ret;

	if (!mem || uhmm_page_owner(page) != dm->dev) {
		c->done = i;
		return -EFAULT;
	}
	if (c->write)
		ret = uhmm_copy_nofault(mem, buf, uhmm__dmirror_page_size, &fa);
	else
		ret = uhmm_copy_nofault(buf, mem, uhmm__dmirror_page_size, &fa);
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
		const uint64_t *leaf = uhmm__dmirror_pt_leaf(&dm->pt, vpn + i);
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
int uhmm__dmirror_read(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd,
		       unsigned long start, unsigned long end)
{
	uint64_t npages = cmd->npages;
	uint64_t vpn = start >> uhmm__dmirror_page_shift;
	uint64_t ok = 0, gen = 0;
	unsigned int copy_faults = 0, restarts = 0;
	bool first = true;
	int ret;

	ret = uhmm__dmirror_notifier_get(dm);
	if (ret)
		return ret;
	ret = uhmm_range_revalidate(start, end);
	if (ret)
		return ret;
	uhmm__dmirror_buf_prefault(cmd->ptr,
				   npages << uhmm__dmirror_page_shift);

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
		ok += uhmm__dmirror_pt_scan(&dm->pt, vpn + ok, npages - ok,
					    UHMM_PFN_VALID);
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
			uhmm_range_revalidate(start +
					      (c.done << uhmm__dmirror_page_shift),
					      end);
			continue;
		}
		pthread_mutex_unlock(&dm->lock);

		ret = uhmm__dmirror_fault(dm,
					  start + (ok << uhmm__dmirror_page_shift),
					  end, false);
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
int uhmm__dmirror_write(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd,
			unsigned long start, unsigned long end)
{
	uint64_t npages = cmd->npages;
	uint64_t vpn = start >> uhmm__dmirror_page_shift;
	uint64_t done = 0;
	unsigned int copy_faults = 0;
	int ret;

	ret = uhmm__dmirror_notifier_get(dm);
	if (ret)
		return ret;
	ret = uhmm_range_revalidate(start, end);
	if (ret)
		return ret;
	uhmm__dmirror_buf_prefault(cmd->ptr,
				   npages << uhmm__dmirror_page_shift);

	for (;;) {
		uint64_t n;

		pthread_mutex_lock(&dm->lock);
		n = uhmm__dmirror_pt_scan(&dm->pt, vpn + done, npages - done,
					  UHMM_PFN_VALID | UHMM_PFN_WRITE);
		if (n) {
			struct dmirror_copy c = {
				/* Through uintptr_t: ptr may be NULL. */
				.buf = (char *)(uintptr_t)(cmd->ptr +
					(done << uhmm__dmirror_page_shift)),
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
				uhmm_range_revalidate(start +
					(done << uhmm__dmirror_page_shift),
					end);
				continue;
			}
			done += n;
		}
		pthread_mutex_unlock(&dm->lock);
		if (done == npages)
			break;

		ret = uhmm__dmirror_fault(dm,
					  start + (done << uhmm__dmirror_page_shift),
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

/*
 * The read-back of MIGRATE_TO_DEV (dmirror_do_read): through the device
 * page table only, nothing is faulted; -ENOENT when a page has no entry.
 */
int uhmm__dmirror_read_back(struct uhmm_dmirror *dm,
			    struct uhmm_dmirror_cmd *cmd, unsigned long start)
{
	uint64_t npages = cmd->npages, n;
	uint64_t vpn = start >> uhmm__dmirror_page_shift;
	struct dmirror_copy c = {
		.buf = (char *)(uintptr_t)cmd->ptr,
		.write = false,
	};
	int ret;

	uhmm__dmirror_buf_prefault(cmd->ptr,
				   npages << uhmm__dmirror_page_shift);
	pthread_mutex_lock(&dm->lock);
	n = uhmm__dmirror_pt_scan(&dm->pt, vpn, npages, UHMM_PFN_VALID);
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
		uint64_t vpn = addr >> uhmm__dmirror_page_shift;
		size_t off = (size_t)(addr & (uhmm__dmirror_page_size - 1));
		size_t n = uhmm__dmirror_page_size - off;
		const uint64_t *leaf = uhmm__dmirror_pt_leaf(&dm->pt, vpn);
		uint64_t e = leaf ? leaf[vpn & PT_MASK] : 0;
		char *mem;

		if (n > len)
			n = len;
		*miss = addr;
		if ((e & need) != need)
			return -ENOENT;
		/* Coherent memory is mapped at its address (its frame's pool
		 * slot is empty meanwhile): reached there, as system memory. */
		if (e & UHMM_PFN_DEVICE_PRIVATE) {
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
	uint64_t pmask = uhmm__dmirror_page_size - 1, e, nfaults = 0;
	unsigned int copy_faults = 0, rounds = 0;
	char bounce[DMIRROR_ACCESS_BOUNCE];
	char *b = buf;
	int ret = 0;

	if (faults)
		*faults = 0;
	if (!dm || !buf || !len)
		return -EINVAL;
	if (uhmm__dmirror_stale(dm))
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
		ret = uhmm__dmirror_notifier_get(dm);
		if (ret)
			break;
		ret = uhmm__dmirror_fault(dm, (unsigned long)miss,
					  (unsigned long)fend, write);
		if (ret)
			break;
		nfaults++;
	}
	if (faults)
		*faults = nfaults;
	return ret;
}
