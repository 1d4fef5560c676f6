/* replay.h — the timed loops: one pass of a parsed trace through memfit or
 * through a baseline allocator. Only the events are timed; what the trace
 * leaves live is freed by a separate call, after the clock has stopped. */
#ifndef MEMFIT_REPLAY_REPLAY_H
#define MEMFIT_REPLAY_REPLAY_H

#include <stdbool.h>
#include <stddef.h>

#include "baseline.h"
#include "memfit/memfit.h"
#include "trace.h"

typedef enum replay_status {
  REPLAY_OK = 0,
  REPLAY_OOM,          /* an alloc returned NULL; failed_op says which, error why
                          (MF_ERR_OOM: the ladder failed; else a backend or
                          argument failure) */
  REPLAY_FREE_FAILED,  /* mf_free refused a pointer mf_malloc gave */
  REPLAY_CORRUPT       /* mf_check found a broken invariant */
} replay_status;

typedef struct replay_pass {
  double seconds;   /* wall time of the events alone */
  size_t failed_op; /* index into trace.ops when status is not REPLAY_OK */
  mf_status error;  /* the library's status (mf_last_status) when a call failed */
} replay_pass;

/* Replay every event of t; ptrs must hold t->slots entries. With check_each,
 * mf_check runs after every event (the time then measures nothing). On
 * failure the allocations made so far stay live: destroy the allocator. */
replay_status replay_memfit(mf_allocator *a, const trace *t, void **ptrs, bool check_each,
                            replay_pass *out);
/* After a successful pass, untimed: free what the trace left live, so that
 * the next pass starts from the same state. */
replay_status replay_memfit_release(mf_allocator *a, const trace *t, void **ptrs,
                                    replay_pass *out);

/* The same for a baseline. On REPLAY_OOM (malloc returned NULL) the pass's
 * memory is not freed: the caller gives up on the run. */
replay_status replay_baseline(const baseline *b, const trace *t, void **ptrs, replay_pass *out);
void replay_baseline_release(const baseline *b, const trace *t, void **ptrs);

#endif /* MEMFIT_REPLAY_REPLAY_H */
