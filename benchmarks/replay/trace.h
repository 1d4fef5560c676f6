/* trace.h — an allocation trace parsed into memory: the replayer's input.
 * Parsing resolves every id to a dense slot, checks that allocs and frees
 * pair up, and computes the exact peak of live requested bytes, so that the
 * timed replay loops only walk an array. The format is in benchmarks/README.md. */
#ifndef MEMFIT_REPLAY_TRACE_H
#define MEMFIT_REPLAY_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "memfit/memfit.h"

typedef enum trace_op_kind { TRACE_ALLOC = 0, TRACE_FREE = 1 } trace_op_kind;

/* One event, laid out for the replay loop: 32 bytes, no pointers to chase. */
typedef struct trace_op {
  uint64_t size;    /* requested bytes (alloc only) */
  uintptr_t stream; /* alloc only; 0 by default */
  uint32_t slot;    /* the allocation's dense index, < trace.slots */
  uint8_t kind;     /* trace_op_kind */
  uint8_t device;   /* from "dev=N" in an event log line's comment; 0 by default */
  mf_tag tag;       /* from "cat= layer= phase=" in the comment; "other" by default */
} trace_op;

typedef struct trace {
  char *name; /* the path as given, "<stdin>" for "-": messages start with it */
  trace_op *ops;
  uint32_t *lines; /* source line of each op, for messages about it */
  size_t count, capacity;
  size_t allocs, frees;
  uint32_t slots;          /* most allocations live at once: pointer arrays need this many */
  uint64_t peak_requested; /* exact peak of the sum of live requested sizes */
  uint64_t total_requested;
  uint32_t *live_at_end; /* slots still live after the last op (freed untimed) */
  size_t live_at_end_count;
  int devices; /* 1 + the highest device seen */
  bool tagged; /* some alloc carried a category, layer or phase */
} trace;

typedef enum trace_status {
  TRACE_OK = 0,
  TRACE_BAD_INPUT, /* unreadable file, malformed line, unpaired alloc/free */
  TRACE_NO_MEMORY  /* host memory ran out while parsing */
} trace_status;

/* Parse the file at path ("-" for standard input) into *out. On failure the
 * message, starting with "path:line:" where a line is at fault, is in err,
 * and *out holds nothing to free. */
trace_status trace_load(const char *path, trace *out, char *err, size_t errlen);
void trace_free(trace *t);

#endif /* MEMFIT_REPLAY_TRACE_H */
