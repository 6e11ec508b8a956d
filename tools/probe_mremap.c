/* SPDX-License-Identifier: MIT */
/*
 * probe_mremap: isolation by mremap(MREMAP_DONTUNMAP) (issue 12, cause 1,
 * candidate b). Per batch: the run's page tables move to the staging
 * reservation (the source VMA stays, empty), the device copies from
 * staging, and the staging run is replaced by a fresh mapping (its pages
 * freed). See probe.h and docs/isolation-probes.md.
 */
#include "probe.h"

static int mr_isolate(struct probe_ctx *c, size_t off, size_t len)
{
	uint64_t t0 = probe_now_ns(), t1, t2;

	if (mremap(c->src + off, len, len,
		   MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP,
		   c->stage + off) == MAP_FAILED)
		return -errno;
	probe_pause(off);
	t1 = probe_now_ns();
	memcpy(c->dev + off, c->stage + off, len);
	t2 = probe_now_ns();
	if (mmap(c->stage + off, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
		return -errno;
	c->t[0] += (double)(t1 - t0);
	c->t[1] += (double)(t2 - t1);
	c->t[2] += (double)(probe_now_ns() - t2);
	return 0;
}

static const struct probe_method mr = {
	.name = "mremap(MREMAP_DONTUNMAP) to staging + copy",
	.steps = { "mremap", "copy to device", "staging freed" },
	.isolate = mr_isolate,
};

/* Lines of /proc/self/maps: what the moves leave behind. */
static int count_vmas(void)
{
	FILE *f = fopen("/proc/self/maps", "r");
	int n = 0, ch;

	while (f && (ch = fgetc(f)) != EOF)
		n += ch == '\n';
	if (f)
		fclose(f);
	return n;
}

int main(int argc, char **argv)
{
	struct probe_ctx c = { .ps = (size_t)sysconf(_SC_PAGESIZE) };
	int uffd = probe_uffd_open(), before, after;

	/* VMAs a range of 8 MiB leaves after one isolation, in batches. */
	probe_setup(&c, K_RW, 8UL << 20, false, uffd);
	before = count_vmas();
	probe_isolate_all(&mr, &c);
	after = count_vmas();
	printf("# VMAs: %d before, %d after isolating 8 MiB in %zu batches\n",
	       before, after, (8UL << 20) / c.batch);
	probe_teardown(&c);
	close(uffd);
	return probe_main(argc, argv, &mr, &probe_control);
}
