/* SPDX-License-Identifier: MIT */
/*
 * uhmm: the command-line tool's entry point, a table of subcommands. Each
 * subcommand is in cli/<name>.c; add one line to cmds[] for a new one.
 */
#include <stdio.h>
#include <string.h>

#include <uhmm/uhmm.h>

#include "cli.h"

static const struct cli_cmd cmds[] = {
	{ "info", cmd_info, "info [--json]",
	  "what this kernel and process allow, and what works or degrades" },
	{ "demo", cmd_demo, "demo [--nodes N] [--json] [--stats]",
	  "a device chases pointers through a CPU-built tree (make run)" },
	{ "bench", cmd_bench, "bench [--quick] [--json] [SCENARIO...]",
	  "benchmarks, each figure against its physical limit (make bench)" },
};

#define NCMDS (sizeof(cmds) / sizeof(cmds[0]))

static void usage(FILE *out)
{
	fprintf(out,
		"usage: uhmm <command> [options]\n"
		"\n"
		"Heterogeneous Memory Management in user space.\n"
		"\n"
		"commands:\n");
	for (size_t i = 0; i < NCMDS; i++)
		fprintf(out, "  %-40s %s\n", cmds[i].synopsis, cmds[i].what);
	fprintf(out, "  %-40s %s\n", "version", "print the library version");
	fprintf(out, "  %-40s %s\n", "help", "this text (also --help, -h)");
}

int main(int argc, char **argv)
{
	const char *cmd = argc > 1 ? argv[1] : NULL;

	if (!cmd) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
		printf("uhmm %s\n", uhmm_version());
		return 0;
	}
	for (size_t i = 0; i < NCMDS; i++)
		if (!strcmp(cmd, cmds[i].name))
			return cmds[i].fn(argc - 1, argv + 1);
	fprintf(stderr, "uhmm: unknown command '%s'\n\n", cmd);
	usage(stderr);
	return 2;
}
