/* SPDX-License-Identifier: MIT */
/*
 * The system-call layer: the only place in the library that issues system
 * calls (mmap, madvise, userfaultfd ioctls, procfs ioctls, signals, ...).
 *
 * Contract for every wrapper: returns >= 0 on success or -errno, never
 * sets errno for the caller, never logs. Addresses are page aligned and
 * lengths > 0 where the kernel requires it; callers check, wrappers do not.
 * Kernel constants newer than the build headers are defined here: features
 * are probed at run time, never taken from the headers.
 */
#ifndef UHMM_OS_H
#define UHMM_OS_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <linux/userfaultfd.h>

/* userfaultfd bits newer than Debian 12's headers (6.1). */
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1ULL << 13)
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1ULL << 14)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1ULL << 15)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1ULL << 16)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif
#ifndef _UFFDIO_MOVE
#define _UFFDIO_MOVE (0x05)
struct uffdio_move {
	uint64_t dst;
	uint64_t src;
	uint64_t len;
	uint64_t mode;
	int64_t move;
};
#define UFFDIO_MOVE _IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)
#endif
#ifndef UFFDIO_MOVE_MODE_DONTWAKE
#define UFFDIO_MOVE_MODE_DONTWAKE ((uint64_t)1 << 0)
#define UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES ((uint64_t)1 << 1)
#endif

/* PAGEMAP_SCAN (6.7), from linux/fs.h. */
#define OS_PAGE_IS_WPALLOWED	(1ULL << 0)
#define OS_PAGE_IS_WRITTEN	(1ULL << 1)
#define OS_PAGE_IS_FILE		(1ULL << 2)
#define OS_PAGE_IS_PRESENT	(1ULL << 3)
#define OS_PAGE_IS_SWAPPED	(1ULL << 4)
#define OS_PAGE_IS_PFNZERO	(1ULL << 5)
#define OS_PAGE_IS_HUGE		(1ULL << 6)
#define OS_PAGE_IS_SOFT_DIRTY	(1ULL << 7)
#define OS_PAGE_IS_GUARD	(1ULL << 8)

struct os_page_region {
	uint64_t start;
	uint64_t end;
	uint64_t categories;
};

struct os_pm_scan_arg {
	uint64_t size;
	uint64_t flags;
	uint64_t start;
	uint64_t end;
	uint64_t walk_end;
	uint64_t vec;
	uint64_t vec_len;
	uint64_t max_pages;
	uint64_t category_inverted;
	uint64_t category_mask;
	uint64_t category_anyof_mask;
	uint64_t return_mask;
};

/* PROCMAP_QUERY (6.11), from linux/fs.h. */
#define OS_PROCMAP_QUERY_VMA_READABLE		0x01
#define OS_PROCMAP_QUERY_VMA_WRITABLE		0x02
#define OS_PROCMAP_QUERY_VMA_EXECUTABLE		0x04
#define OS_PROCMAP_QUERY_VMA_SHARED		0x08
#define OS_PROCMAP_QUERY_COVERING_OR_NEXT_VMA	0x10

struct os_procmap_query {
	uint64_t size;
	uint64_t query_flags;
	uint64_t query_addr;
	uint64_t vma_start;
	uint64_t vma_end;
	uint64_t vma_flags;
	uint64_t vma_page_size;
	uint64_t vma_offset;
	uint64_t inode;
	uint32_t dev_major;
	uint32_t dev_minor;
	uint32_t vma_name_size;
	uint32_t build_id_size;
	uint64_t vma_name_addr;
	uint64_t build_id_addr;
};

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#define MADV_POPULATE_WRITE 23
#endif

/*
 * Fault injection hook points: tests make the Nth call of a kind fail.
 * Each kind counts its calls (uhmm__os_calls()), injected or not. The
 * errnos each call can really return with the arguments uhmm passes are
 * in os.c (os_call_errnos[]); tests/test_inject.c walks them.
 */
enum os_call {
	OS_CALL_MMAP, OS_CALL_MADVISE, OS_CALL_UFFD_OPEN, OS_CALL_UFFD_API,
	OS_CALL_UFFD_REGISTER, OS_CALL_UFFD_COPY, OS_CALL_UFFD_ZEROPAGE,
	OS_CALL_UFFD_MOVE, OS_CALL_UFFD_WAKE, OS_CALL_PAGEMAP_SCAN,
	OS_CALL_PROCMAP_QUERY, OS_CALL_READ,
	OS_CALL_OPEN, OS_CALL_MINCORE, OS_CALL_EVENTFD, OS_CALL_POLL,
	OS_CALL_MUNMAP,
	OS_CALL_NR,
};

/* memory */
void *uhmm__os_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off,
	      int *err);
int uhmm__os_munmap(void *addr, size_t len);
int uhmm__os_madvise(void *addr, size_t len, int advice);

/* files and descriptors */
int uhmm__os_open(const char *path, int flags);
int uhmm__os_close(int fd);
int uhmm__os_fd_high(int fd);
ssize_t uhmm__os_read(int fd, void *buf, size_t len);
ssize_t uhmm__os_write(int fd, const void *buf, size_t len);
ssize_t uhmm__os_pread(int fd, void *buf, size_t len, off_t off);
int uhmm__os_eventfd(unsigned int initval, int flags);
int uhmm__os_poll2(int fd1, int fd2, int timeout_ms, short *rev1, short *rev2);

/* userfaultfd */
int uhmm__os_uffd_open_dev(int flags);
int uhmm__os_uffd_open_syscall(int flags);
int uhmm__os_uffd_api(int fd, uint64_t features, uint64_t *out_features,
		uint64_t *out_ioctls);
int uhmm__os_uffd_register(int fd, uint64_t start, uint64_t len, uint64_t mode,
		     uint64_t *out_ioctls);
/* The three return 0 or -errno and always set *done (bytes done). */
int uhmm__os_uffd_copy(int fd, uint64_t dst, uint64_t src, uint64_t len,
		 uint64_t mode, int64_t *done);
int uhmm__os_uffd_zeropage(int fd, uint64_t start, uint64_t len, uint64_t mode,
		     int64_t *done);
int uhmm__os_uffd_move(int fd, uint64_t dst, uint64_t src, uint64_t len,
		 uint64_t mode, int64_t *done);
int uhmm__os_uffd_wake(int fd, uint64_t start, uint64_t len);
int uhmm__os_uffd_poison(int fd, uint64_t start, uint64_t len);
int uhmm__os_mincore(void *addr, size_t len, unsigned char *vec);

/* procfs */
int uhmm__os_pagemap_scan(int fd, struct os_pm_scan_arg *arg);
int uhmm__os_procmap_query(int fd, struct os_procmap_query *q);

/* signals and processes */
int uhmm__os_sigaction(int sig, const struct sigaction *sa, struct sigaction *old);
pid_t uhmm__os_getpid(void);
/* The calling thread's robust-futex list head (get_robust_list), and the
 * word the kernel clears at its exit (PR_GET_TID_ADDRESS); -errno. */
int uhmm__os_robust_list(void **head, size_t *len);
int uhmm__os_tid_address(void **addr);
int uhmm__os_raise(int sig);
/* The calling thread's signal mask (pthread_sigmask); -errno. */
int uhmm__os_sigmask(int how, const sigset_t *set, sigset_t *old);
int uhmm__os_yield(void);
/* The calling thread's alternate signal stack, [*lo, *hi): 0, or
 * -ENOENT when it has none (or it is disabled). */
int uhmm__os_altstack(unsigned long *lo, unsigned long *hi);

/* True when running under valgrind (uhmm then opens no userfaultfd:
 * valgrind holds its lock across munmap and page faults, which would
 * wait for uhmm's reader thread forever). */
bool uhmm__os_on_valgrind(void);
/* Around a copy that may fault on purpose (uhmm_copy_nofault): valgrind
 * must not report its invalid reads or writes. Per thread. */
void uhmm__os_expect_faults(bool on);

/* Make the @nth next call of @call fail with -@err (nth = 1 is the next;
 * 0 disarms). Internal, for tests. */
void uhmm__fault_inject(enum os_call call, unsigned long nth, int err);
/* The same, failing @count consecutive calls from the @nth on. */
void uhmm__fault_inject_n(enum os_call call, unsigned long nth,
			  unsigned long count, int err);
/* Call @fn(@arg) once, at the next call of @call, before it is made (a
 * test's pause point: another thread changes the address space there).
 * NULL disarms. Internal, for tests. */
void uhmm__os_before(enum os_call call, void (*fn)(void *), void *arg);
/* Calls of @call since the last uhmm__os_calls_reset() (injected ones
 * included); the name of a kind; the realistic errnos of a kind (positive,
 * 0-terminated). Internal, for tests. */
unsigned long uhmm__os_calls(enum os_call call);
void uhmm__os_calls_reset(void);
const char *uhmm__os_call_name(enum os_call call);
const int *uhmm__os_call_errnos(enum os_call call);

#endif /* UHMM_OS_H */
