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
 * mapped. Commands of issue B return -EOPNOTSUPP until implemented.
 */
UHMM_API int uhmm_dmirror_cmd(struct uhmm_dmirror *dm, enum uhmm_dmirror_op op,
			      struct uhmm_dmirror_cmd *cmd);

#ifdef __cplusplus
}
#endif

#endif /* UHMM_DMIRROR_H */
