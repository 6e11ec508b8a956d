/* SPDX-License-Identifier: MIT */
/*
 * The counters of <uhmm/stats.h> as JSON, generated from the same
 * UHMM_STAT_FIELDS list as the structure, so the two cannot drift apart.
 */
#include <inttypes.h>
#include <stdio.h>

#include <uhmm/stats.h>

#include "cli.h"

void cli_print_stats_json(FILE *f, const struct uhmm_stats *s)
{
	fprintf(f, "{\"version\": %" PRIu32, s->version);
#define PRINT_(name) fprintf(f, ", \"" #name "\": %" PRIu64, s->name);
	UHMM_STAT_FIELDS(PRINT_)
#undef PRINT_
	fprintf(f, ", \"fault_back_ns_log2\": [");
	for (unsigned int i = 0; i < UHMM_STATS_LAT_BUCKETS; i++)
		fprintf(f, "%s%" PRIu64, i ? ", " : "", s->fault_back_ns_log2[i]);
	fprintf(f, "]}");
}
