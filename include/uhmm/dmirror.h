/* SPDX-License-Identifier: MIT */
/*
 * dmirror: uhmm's reference software device, the user-space counterpart of
 * the kernel's lib/test_hmm.c. A fixed contract (docs/dmirror-contract.md):
 * names, numbers and semantics do not change; additions are allowed.
 * Built only on the public API of <uhmm/uhmm.h>.
 */
#ifndef UHMM_DMIRROR_H
#define UHMM_DMIRROR_H

#include <stdint.h>
#include <uhmm/uhmm.h>

#ifdef __cplusplus
extern "C" {
#endif

struct uhmm_dmirror;	/* opaque: one open of one device */

/*
 * Open device 0..3 for the calling process. Devices 0 and 1 have
 * device-private memory (not addressable by the CPU); devices 2 and 3
 * have device-coherent memory (CPU-addressable). Returns 0 or -errno
 * (-ENODEV for a device number that does not exist or is not supported,
 * -EINVAL for a NULL @out, -ENOMEM).
 */
UHMM_API int uhmm_dmirror_open(int device, struct uhmm_dmirror **out);

/*
 * Close; device memory that this open still holds is migrated back to
 * system memory first, so no data is lost. Returns 0 or -errno (-EINVAL
 * for NULL; -EBADF for an open made by another process, i.e. inherited
 * through fork()).
 */
UHMM_API int uhmm_dmirror_close(struct uhmm_dmirror *dm);

struct uhmm_dmirror_cmd {
	uint64_t addr;   /* in: page-aligned virtual address in this process */
	uint64_t ptr;    /* in: address of a buffer of npages pages (READ, WRITE,
	                  * MIGRATE_TO_DEV read-back, EXCLUSIVE read-back) or
	                  * of npages bytes (SNAPSHOT) */
	uint64_t npages; /* in: number of pages; for FLAGS: the flags value */
	uint64_t cpages; /* out: pages read, written, migrated or snapshotted */
	uint64_t faults; /* out: device fault rounds that were needed */
};

enum uhmm_dmirror_op {
	UHMM_DMIRROR_READ           = 0,
	UHMM_DMIRROR_WRITE          = 1,
	UHMM_DMIRROR_MIGRATE_TO_DEV = 2,
	UHMM_DMIRROR_MIGRATE_TO_SYS = 3,
	UHMM_DMIRROR_SNAPSHOT       = 4,
	UHMM_DMIRROR_EXCLUSIVE      = 5,
	UHMM_DMIRROR_CHECK_EXCLUSIVE= 6,
	UHMM_DMIRROR_RELEASE        = 7,
	UHMM_DMIRROR_FLAGS          = 8,
};

/* FLAGS value: the next device- or system-side page allocation in a
 * migration fails once. */
#define UHMM_DMIRROR_FLAG_FAIL_ALLOC 1

/* SNAPSHOT bytes: a kind OR-ed with READ or WRITE and with PMD or PUD. */
#define UHMM_DMIRROR_PROT_ERROR               0xFF
#define UHMM_DMIRROR_PROT_NONE                0x00
#define UHMM_DMIRROR_PROT_READ                0x01
#define UHMM_DMIRROR_PROT_WRITE               0x02
#define UHMM_DMIRROR_PROT_PMD                 0x04
#define UHMM_DMIRROR_PROT_PUD                 0x08
#define UHMM_DMIRROR_PROT_ZERO                0x10
#define UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL   0x20
#define UHMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE  0x30
#define UHMM_DMIRROR_PROT_DEV_COHERENT_LOCAL  0x40
#define UHMM_DMIRROR_PROT_DEV_COHERENT_REMOTE 0x50

/*
 * Run one command. Returns 0 or -errno; fills cpages and faults.
 * Errors common to every command: -EINVAL for a NULL argument, an unknown
 * op, an addr that is not page aligned, npages == 0, or
 * addr + npages * page overflowing; -EBADF for an open inherited through
 * fork(). READ: -EFAULT when a page is not readable by the process.
 * WRITE: -EPERM when the mapping is not writable, -EFAULT when not
 * mapped. The buffer at ptr is a process address like addr: -EFAULT when
 * the device cannot load from it (WRITE) or store to it (READ, SNAPSHOT:
 * NULL, unmapped, PROT_NONE, or read-only for a store). With a userfaultfd
 * in UFFD_USER_MODE_ONLY (unprivileged users), READ and WRITE of pages
 * that must be faulted back from another device, or of never-touched
 * pages of a range that was migrated, give -EFAULT (docs/semantics.md).
 * Commands of issue B return -EOPNOTSUPP until implemented.
 */
UHMM_API int uhmm_dmirror_cmd(struct uhmm_dmirror *dm, enum uhmm_dmirror_op op,
			      struct uhmm_dmirror_cmd *cmd);

/*
 * Byte-granular device access (an addition to the contract): a device
 * load (@write == 0) of @len bytes at @addr into @buf, or a device store
 * (@write != 0) of @len bytes from @buf to @addr. As READ and WRITE, but
 * @addr needs no alignment and the access may cross page boundaries: it
 * goes through the device page table, and pages that have no entry (or,
 * for a store, no writable one) are faulted in through the mirror first,
 * one fault round each pass (read-only mappings and the zero page are
 * fine for loads). Pages that live in this device's memory are accessed
 * there, without a migration. An access whose pages all have entries
 * does not call uhmm_range_fault(): this is the path for pointer chasing
 * (a few hundred nanoseconds per access).
 *
 * @faults: out, may be NULL: fault rounds that were needed (0 when every
 * page had an entry).
 *
 * Context: thread-safe; @buf may be anywhere in the process (a device page
 * in it is brought back first). The device never uses access the process
 * lost: an entry made stale by mprotect() or munmap() is found at the
 * access and faulted again, or the access fails.
 * Return: 0, or a negative errno (the contents of @buf, or of the target
 * of a store, are unspecified on failure):
 *   -EINVAL  NULL @dm or @buf, @len == 0, @addr + @len overflowing
 *   -EBADF   an open inherited through fork()
 *   -EFAULT  a page is not readable by the process (no mapping,
 *            PROT_NONE), or @buf is not accessible
 *   -EPERM   a store to a mapping that is not writable
 *   -EBUSY   the range kept being invalidated (retry)
 *   -ENOMEM
 */
UHMM_API int uhmm_dmirror_access(struct uhmm_dmirror *dm, uint64_t addr,
				 void *buf, size_t len, int write,
				 uint64_t *faults);

#ifdef __cplusplus
}
#endif

#endif /* UHMM_DMIRROR_H */
