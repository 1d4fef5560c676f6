/* replay.c — the replay loops. Both loops do the same work per event (load
 * the op, call the allocator through a pointer or the PLT, store or load one
 * pointer) and touch none of the memory they get, so their times compare
 * the allocators and nothing else. */
#include "replay.h"

#include <time.h>

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

replay_status replay_memfit_release(mf_allocator *a, const trace *t, void **ptrs,
                                   replay_pass *out) {
  for (size_t i = 0; i < t->live_at_end_count; i++) {
    mf_status st = mf_free(a, ptrs[t->live_at_end[i]]);
    if (st != MF_OK) {
      out->failed_op = t->count; /* not an event of the trace */
      out->error = st;
      return REPLAY_FREE_FAILED;
    }
  }
  return REPLAY_OK;
}

/* One event through memfit; shared by the checked and the timed loop, and
 * inlined so the timed loop pays no call for it. */
static inline replay_status memfit_step(mf_allocator *a, const trace_op *op, void **ptrs, mf_status *error) {
  if (op->kind == TRACE_ALLOC) {
    /* The tagged entry point: a trace carries its tags explicitly, and an
     * untagged event gets the same tag mf_malloc would give it. */
    void *p = mf_malloc_tagged(a, op->device, (size_t)op->size, op->stream, op->tag);
    if (!p) {
      *error = mf_last_status();
      return REPLAY_OOM;
    }
    ptrs[op->slot] = p;
    return REPLAY_OK;
  }
  mf_status st = mf_free(a, ptrs[op->slot]);
  if (st != MF_OK) {
    *error = st;
    return REPLAY_FREE_FAILED;
  }
  return REPLAY_OK;
}

replay_status replay_memfit(mf_allocator *a, const trace *t, void **ptrs, bool check_each,
                            replay_pass *out) {
  const trace_op *ops = t->ops;
  const size_t n = t->count;
  out->seconds = 0;
  out->failed_op = 0;
  out->error = MF_OK;

  if (check_each) {
    /* A separate loop, so the timed one below has no per-event branch for it. */
    for (size_t i = 0; i < n; i++) {
      replay_status rs = memfit_step(a, &ops[i], ptrs, &out->error);
      if (rs == REPLAY_OK && (out->error = mf_check(a)) != MF_OK) rs = REPLAY_CORRUPT;
      if (rs != REPLAY_OK) {
        out->failed_op = i;
        return rs;
      }
    }
    return REPLAY_OK;
  }

  double start = now_seconds();
  for (size_t i = 0; i < n; i++) {
    replay_status rs = memfit_step(a, &ops[i], ptrs, &out->error);
    if (rs != REPLAY_OK) {
      out->seconds = now_seconds() - start;
      out->failed_op = i;
      return rs;
    }
  }
  out->seconds = now_seconds() - start;
  return REPLAY_OK;
}

replay_status replay_baseline(const baseline *b, const trace *t, void **ptrs, replay_pass *out) {
  const trace_op *ops = t->ops;
  const size_t n = t->count;
  void *(*const malloc_fn)(size_t) = b->malloc_fn;
  void (*const free_fn)(void *) = b->free_fn;
  out->seconds = 0;
  out->failed_op = 0;
  out->error = MF_OK;

  double start = now_seconds();
  for (size_t i = 0; i < n; i++) {
    const trace_op *op = &ops[i];
    if (op->kind == TRACE_ALLOC) {
      /* Streams, devices and tags mean nothing to a host allocator. */
      void *p = malloc_fn((size_t)op->size);
      if (!p && op->size) {
        out->seconds = now_seconds() - start;
        out->failed_op = i;
        /* What this pass got so far stays allocated: the caller gives up
         * on the run, and the process exits. */
        return REPLAY_OOM;
      }
      ptrs[op->slot] = p;
    } else {
      free_fn(ptrs[op->slot]);
    }
  }
  out->seconds = now_seconds() - start;
  return REPLAY_OK;
}

void replay_baseline_release(const baseline *b, const trace *t, void **ptrs) {
  for (size_t i = 0; i < t->live_at_end_count; i++) b->free_fn(ptrs[t->live_at_end[i]]);
}
