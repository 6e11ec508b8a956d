/* SPDX-License-Identifier: MIT */
/*
 * probe_wp_zap: isolation by write-protect, copy, zap (issue 12, cause 1,
 * candidate a). Per batch: UFFDIO_WRITEPROTECT the pages (a CPU write now
 * waits in a WP fault), copy them straight into device memory, then
 * MADV_DONTNEED them (a later touch is a MISSING fault). See probe.h and
 * docs/isolation-probes.md.
 */
#include "probe.h"

static int wp_isolate(struct probe_ctx *c, size_t off, size_t len)
{
	struct uffdio_writeprotect wp = {
		.range = { (uintptr_t)c->src + off, len },
		.mode = UFFDIO_WRITEPROTECT_MODE_WP,
	};
	uint64_t t0 = probe_now_ns(), t1, t2;

	if (ioctl(c->uffd, UFFDIO_WRITEPROTECT, &wp))
		return -errno;
	t1 = probe_now_ns();
	memcpy(c->dev + off, c->src + off, len);
	probe_pause(off);
	t2 = probe_now_ns();
	if (madvise(c->src + off, len, MADV_DONTNEED))
		return -errno;
	c->t[0] += (double)(t1 - t0);
	c->t[1] += (double)(t2 - t1);
	c->t[2] += (double)(probe_now_ns() - t2);
	return 0;
}

static const struct probe_method wp_zap = {
	.name = "UFFDIO_WRITEPROTECT + copy + MADV_DONTNEED",
	.steps = { "writeprotect", "copy to device", "zap" },
	.isolate = wp_isolate,
};

int main(int argc, char **argv)
{
	return probe_main(argc, argv, &wp_zap, &probe_control);
}
