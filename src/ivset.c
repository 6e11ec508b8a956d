/* SPDX-License-Identifier: MIT */
/*
 * Sorted sets of disjoint intervals, each with a non-zero value: what the
 * runtime has registered on its userfaultfd, what range_fault granted,
 * which ranges are registered MISSING (track.c). Layer 0.
 */
#include <errno.h>
#include <string.h>

#include "base.h"

/* First index whose interval ends after @addr. */
size_t uhmm__ivset_first(const struct ivset *s, unsigned long addr)
{
	size_t lo = 0, hi = s->n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (s->v[mid].end <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Make [start, end) carry @prot (0 removes it), splitting neighbours. */
int uhmm__ivset_set(struct ivset *s, unsigned long start, unsigned long end,
		    unsigned int prot)
{
	size_t i = uhmm__ivset_first(s, start), j = i, k = 0, lo, hi;
	struct ival repl[3];

	if (start >= end)
		return 0;
	while (j < s->n && s->v[j].start < end)
		j++;
	if (i < j && s->v[i].start < start)
		repl[k++] = (struct ival){ s->v[i].start, start, s->v[i].prot };
	if (prot)
		repl[k++] = (struct ival){ start, end, prot };
	if (i < j && s->v[j - 1].end > end)
		repl[k++] = (struct ival){ end, s->v[j - 1].end, s->v[j - 1].prot };
	if (s->n - (j - i) + k > s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 16;
		void *p = uhmm_realloc(s->v, cap * sizeof(*s->v));

		if (!p)
			return -ENOMEM;
		s->v = p;
		s->cap = cap;
	}
	if (s->n > j)
		memmove(&s->v[i + k], &s->v[j], (s->n - j) * sizeof(*s->v));
	if (k)
		memcpy(&s->v[i], repl, k * sizeof(*s->v));
	s->n = s->n - (j - i) + k;

	/* Merge touching intervals of equal value around the change. */
	lo = i ? i : 1;
	hi = i + k + 1 < s->n ? i + k + 1 : s->n;
	for (size_t x = lo; x < hi;) {
		if (s->v[x - 1].end == s->v[x].start &&
		    s->v[x - 1].prot == s->v[x].prot) {
			s->v[x - 1].end = s->v[x].end;
			if (s->n > x + 1)
				memmove(&s->v[x], &s->v[x + 1],
					(s->n - x - 1) * sizeof(*s->v));
			s->n--;
			hi--;
		} else {
			x++;
		}
	}
	return 0;
}

bool uhmm__ivset_covers(const struct ivset *s, unsigned long start,
			unsigned long end)
{
	unsigned long cur = start;

	for (size_t i = uhmm__ivset_first(s, start); i < s->n && cur < end; i++) {
		if (s->v[i].start > cur)
			return false;
		cur = s->v[i].end;
	}
	return cur >= end;
}

unsigned int uhmm__ivset_value_at(const struct ivset *s, unsigned long addr)
{
	size_t i = uhmm__ivset_first(s, addr);

	return i < s->n && s->v[i].start <= addr ? s->v[i].prot : 0;
}

void uhmm__ivset_free(struct ivset *s)
{
	uhmm_free(s->v);
	s->v = NULL;
	s->n = s->cap = 0;
}

