/* SPDX-License-Identifier: MIT */
/*
 * probe_mprotect: isolation by copying under a read-only mprotect (issue
 * 12, cause 1, candidate c). Per batch: mprotect(PROT_READ) (a CPU write
 * now gets SIGSEGV), copy into device memory, MADV_DONTNEED, mprotect
 * back. The racing writer's SIGSEGV is caught here and waits for the
 * isolation, as uhmm would have to do with the application's signals.
 * See probe.h and docs/isolation-probes.md.
 */
#include "probe.h"

static char *mp_lo, *mp_hi;

static int mp_isolate(struct probe_ctx *c, size_t off, size_t len)
{
	uint64_t t0 = probe_now_ns(), t1, t2;
	bool rw = c->kind != K_RO;

	if (rw && mprotect(c->src + off, len, PROT_READ))
		return -errno;
	t1 = probe_now_ns();
	memcpy(c->dev + off, c->src + off, len);
	probe_pause(off);
	t2 = probe_now_ns();
	if (madvise(c->src + off, len, MADV_DONTNEED))
		return -errno;
	if (rw && mprotect(c->src + off, len, PROT_READ | PROT_WRITE))
		return -errno;
	c->t[0] += (double)(t1 - t0);
	c->t[1] += (double)(t2 - t1);
	c->t[2] += (double)(probe_now_ns() - t2);
	return 0;
}

/* A write into the range while it is read-only: wait, then retry it. */
static void mp_segv(int sig, siginfo_t *si, void *uc)
{
	char *a = si->si_addr;

	(void)uc;
	if (a < mp_lo || a >= mp_hi) {
		signal(sig, SIG_DFL);
		return;
	}
	while (!atomic_load(&probe_done))
		sched_yield();
}

static void mp_race_prepare(struct probe_ctx *c)
{
	struct sigaction sa = { .sa_sigaction = mp_segv, .sa_flags = SA_SIGINFO };

	mp_lo = c->src;
	mp_hi = c->src + c->len;
	sigaction(SIGSEGV, &sa, NULL);
}

static const struct probe_method mp = {
	.name = "mprotect(PROT_READ) + copy + MADV_DONTNEED + mprotect back",
	.steps = { "mprotect ro", "copy to device", "zap + mprotect rw" },
	.isolate = mp_isolate,
	.race_prepare = mp_race_prepare,
};

int main(int argc, char **argv)
{
	return probe_main(argc, argv, &mp, &probe_control);
}
