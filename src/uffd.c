/* SPDX-License-Identifier: MIT */
/*
 * The userfaultfd error model, in one place (userfaultfd-notes.md §4):
 *   EAGAIN  an event is queued and unread: wait for the reader to read it,
 *           then resume from the partial count the kernel reported;
 *   EEXIST  the page is already there: count it as done, but wake the
 *           range, since the kernel did not;
 *   ENOENT  the mapping changed under the call: the caller revalidates.
 */
#include <errno.h>

#include "rt.h"

enum uffd_op { OP_COPY, OP_ZEROPAGE, OP_MOVE };

static int uffd_do(struct uhmm_rt *rt, enum uffd_op op, unsigned long dst,
		   unsigned long src, unsigned long len, uint64_t mode)
{
	unsigned long ps = rt->page_size;
	int spins = 0;

	if (rt->uffd < 0)
		return -ENOSYS;
	if (!len || !uhmm__aligned(rt, dst) || !uhmm__aligned(rt, len) ||
	    (op != OP_ZEROPAGE && !uhmm__aligned(rt, src)))
		return -EINVAL;
	while (len) {
		int64_t done = 0;
		int r;

		switch (op) {
		case OP_COPY:
			r = uhmm__os_uffd_copy(rt->uffd, dst, src, len, mode, &done);
			break;
		case OP_ZEROPAGE:
			r = uhmm__os_uffd_zeropage(rt->uffd, dst, len, mode, &done);
			break;
		default:
			r = uhmm__os_uffd_move(rt->uffd, dst, src, len, mode, &done);
			break;
		}
		if ((unsigned long)done > len)
			done = (int64_t)len;
		done &= ~(int64_t)(ps - 1);
		dst += (unsigned long)done;
		src += (unsigned long)done;
		len -= (unsigned long)done;
		if (r == 0)
			return 0;
		switch (r) {
		case -EAGAIN:
			uhmm__stat_inc(UHMM__STAT_uffd_eagain);
			/* Bounded: a reader that never reads is a bug. */
			if (++spins > 100000)
				return -EAGAIN;
			/* A mover must not wait for a read (the readers wait
			 * for it): the caller yields and re-checks. */
			if (uhmm__on_monitor() || uhmm__in_mover()) {
				uhmm__note_eagain();
				return -EAGAIN;
			}
			uhmm__wait_events_read(rt);
			break;
		case -EEXIST: {
			uhmm__stat_inc(UHMM__STAT_uffd_eexist);
			/* MOVE: the destination is not empty; not ours to skip. */
			if (op == OP_MOVE)
				return r;
			/* The page at dst is present; skip it, wake waiters. */
			int w = uhmm__os_uffd_wake(rt->uffd, dst, ps);

			if (w < 0 && w != -ENOENT)
				return w;
			dst += ps;
			src += ps;
			len -= ps;
			break;
		}
		case -EINTR:
			break;
		default:
			return r;	/* -ENOENT, -ESRCH, -ENOMEM, -EBUSY, ... */
		}
	}
	return 0;
}

int uhmm__uffd_copy(struct uhmm_rt *rt, unsigned long dst, unsigned long src,
		    unsigned long len, uint64_t mode)
{
	return uffd_do(rt, OP_COPY, dst, src, len, mode);
}

int uhmm__uffd_zeropage(struct uhmm_rt *rt, unsigned long dst,
			unsigned long len, uint64_t mode)
{
	return uffd_do(rt, OP_ZEROPAGE, dst, 0, len, mode);
}

int uhmm__uffd_move(struct uhmm_rt *rt, unsigned long dst, unsigned long src,
		    unsigned long len, uint64_t mode)
{
	return uffd_do(rt, OP_MOVE, dst, src, len, mode);
}
