/* SPDX-License-Identifier: MIT */
/*
 * USDT probes (provider "uhmm") for perf and bpftrace; see
 * docs/observability.md. With <sys/sdt.h> (systemtap-sdt-dev) each probe
 * is a nop plus an ELF note; without it, or with -DUHMM_NO_SDT, nothing.
 */
#ifndef UHMM_PROBES_H
#define UHMM_PROBES_H

#if !defined(UHMM_NO_SDT) && defined(__has_include)
#if __has_include(<sys/sdt.h>)
#include <sys/sdt.h>
#define UHMM_HAVE_SDT 1
#endif
#endif

#ifdef UHMM_HAVE_SDT
#define UHMM_PROBE1(name, a)		DTRACE_PROBE1(uhmm, name, a)
#define UHMM_PROBE2(name, a, b)		DTRACE_PROBE2(uhmm, name, a, b)
#define UHMM_PROBE3(name, a, b, c)	DTRACE_PROBE3(uhmm, name, a, b, c)
#define UHMM_PROBE4(name, a, b, c, d)	DTRACE_PROBE4(uhmm, name, a, b, c, d)
#else
#define UHMM_PROBE1(name, a)		((void)(a))
#define UHMM_PROBE2(name, a, b)		((void)(a), (void)(b))
#define UHMM_PROBE3(name, a, b, c)	((void)(a), (void)(b), (void)(c))
#define UHMM_PROBE4(name, a, b, c, d)	((void)(a), (void)(b), (void)(c), (void)(d))
#endif

#endif /* UHMM_PROBES_H */
