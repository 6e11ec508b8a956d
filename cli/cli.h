/* SPDX-License-Identifier: MIT */
/*
 * The uhmm tool's subcommands and shared helpers. Each subcommand lives in
 * its own cli/<name>.c and gets one line in the table in cli/uhmm.c. The
 * tool uses the public API only.
 */
#ifndef UHMM_CLI_H
#define UHMM_CLI_H

#include <stdio.h>

#include <uhmm/stats.h>

/*
 * A subcommand: argv[0] is its name, argv[1..] its options. Returns the
 * exit status: 0 success, 1 failure, 2 usage error.
 */
typedef int (*cli_cmd_fn)(int argc, char **argv);

struct cli_cmd {
	const char *name;
	cli_cmd_fn fn;
	const char *synopsis;	/* "info [--json]" */
	const char *what;	/* one line for `uhmm help` */
};

/* cli/info.c */
int cmd_info(int argc, char **argv);

/* cli/demo.c */
int cmd_demo(int argc, char **argv);

/* cli/bench.c */
int cmd_bench(int argc, char **argv);

/*
 * cli/stats_json.c: @s as one JSON object (no trailing newline), every
 * counter of UHMM_STAT_FIELDS by name, plus the fault-back latency
 * histogram as "fault_back_ns_log2": [count of [2^i, 2^(i+1)) ns, ...].
 */
void cli_print_stats_json(FILE *f, const struct uhmm_stats *s);

#endif /* UHMM_CLI_H */
