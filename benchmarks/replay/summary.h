/* summary.h — what one memfit-replay run measured, and its two printers: an
 * aligned table for people and one JSON object for scripts. */
#ifndef MEMFIT_REPLAY_SUMMARY_H
#define MEMFIT_REPLAY_SUMMARY_H

#include <stdbool.h>
#include <stdio.h>

#include "baseline.h"
#include "memfit/memfit.h"
#include "native.h"
#include "trace.h"

#define SUMMARY_MAX_REPEAT 1000

typedef struct replay_summary {
  const trace *trace;
  char backend[64];  /* as the allocator's options resolved it */
  uint64_t granule;  /* the page-mapped pools' granule, 0 with segments (vmm off) */
  char conf[4096];   /* the string given to mf_allocator_create */
  int repeat;
  bool check_each;

  /* A fresh allocator after one pass: what a training job that ran this
   * trace once would see (summed over devices if the trace has several). */
  mf_stats first;
  mf_tag_stats category[MF_CAT_COUNT];
  /* The warm allocator after its warm-up pass and `repeat`
   * timed passes: whether the cache keeps growing from pass to pass. */
  mf_stats warm;

  /* Seconds per pass. */
  double first_pass[SUMMARY_MAX_REPEAT]; /* each on a fresh allocator */
  double warm_pass[SUMMARY_MAX_REPEAT];
  double baseline_pass[SUMMARY_MAX_REPEAT];
  const baseline *base; /* NULL without --baseline */

  /* --compare native: PyTorch's caching allocator emulated on the same
   * trace, once with segments, once with expandable_segments:True, with
   * memfit's capacity and max_split_size (native_conf, expandable unset). */
  bool compare_native;
  native_config native_conf;
  native_result native, native_expandable;
} replay_summary;

void summary_print_table(const replay_summary *s, FILE *out);
void summary_print_json(const replay_summary *s, FILE *out);

#endif /* MEMFIT_REPLAY_SUMMARY_H */
