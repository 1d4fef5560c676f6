/* test_live_order.c — memfit-replay frees the ids still live after a trace's
 * last event newest first (as a program unwinding would), never in the id
 * table's hash order: freed in hash order, 10^6 live ids took 6x as long as
 * the same ids freed in order, each free landing in another part of the heap.
 * Writes a trace with ids reused after frees, loads it with the replayer's
 * parser and checks the order of trace.live_at_end exactly. */
#include <stdio.h>
#include <stdlib.h>

#include "trace.h"

#define N 5000 /* enough ids that a hash order is not also an allocation order */

static int fail(const char *what, size_t i) {
  fprintf(stderr, "test_live_order: %s (at %zu)\n", what, i);
  return 1;
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "live_order.mftrace";
  FILE *f = fopen(path, "w");
  if (!f) return fail("cannot write the trace", 0);
  /* ids 0..N-1; every third is freed and re-allocated later under a new size,
   * so live ids were last allocated in the order: the untouched ones, then
   * the re-allocated ones. */
  for (int i = 0; i < N; i++) fprintf(f, "alloc id%d %d\n", i, 512 * (1 + i % 4));
  for (int i = 0; i < N; i += 3) fprintf(f, "free id%d\n", i);
  for (int i = 0; i < N; i += 3) fprintf(f, "alloc id%d 1024\n", i);
  fprintf(f, "free id1\n"); /* one id is not live at the end */
  fclose(f);

  trace t;
  char err[256];
  if (trace_load(path, &t, err, sizeof err) != TRACE_OK) {
    fprintf(stderr, "test_live_order: %s\n", err);
    return 1;
  }
  remove(path);
  if (t.live_at_end_count != N - 1) return fail("wrong number of live ids", t.live_at_end_count);
  /* The slot of each alloc, by the op index of the last alloc of each id. */
  size_t k = 0, op_allocs = 0;
  uint32_t *expected = malloc((N - 1) * sizeof *expected);
  size_t *last_op = malloc(N * sizeof *last_op);
  if (!expected || !last_op) return fail("out of host memory", 0);
  /* Walk the ops as written: op index of the last alloc of id i. */
  for (size_t i = 0; i < t.count; i++) {
    if (t.ops[i].kind != TRACE_ALLOC) continue;
    int id = op_allocs < N ? (int)op_allocs : (int)((op_allocs - N) * 3);
    last_op[id] = i;
    op_allocs++;
  }
  /* Newest first: descending op index, skipping the freed id1. */
  for (size_t i = t.count; i-- > 0;) {
    if (t.ops[i].kind != TRACE_ALLOC) continue;
    int id = -1;
    for (int j = 0; j < N && id < 0; j++) if (last_op[j] == i) id = j;
    if (id < 0 || id == 1) continue;
    expected[k++] = t.ops[i].slot;
  }
  if (k != N - 1) return fail("test bug: expected list has the wrong length", k);
  for (size_t i = 0; i < k; i++)
    if (t.live_at_end[i] != expected[i]) return fail("live ids are not freed newest first", i);
  free(expected);
  free(last_op);
  trace_free(&t);
  printf("test_live_order: %d live ids, newest first\n", N - 1);
  return 0;
}
