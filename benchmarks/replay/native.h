/* native.h — an emulation of PyTorch's native CUDA caching allocator
 * (c10/cuda/CUDACachingAllocator.cpp, DeviceCachingAllocator), for
 * `memfit-replay --compare native`: the same parsed trace replayed through
 * PyTorch's policy, so that memfit's peak reserved can be put beside the
 * allocator every PyTorch user has today. Only what decides reserved and
 * allocated bytes is emulated (rounding, pools, best fit, splitting,
 * coalescing, the OOM retries, expandable segments); the policy, point by
 * point, and what is left out are in benchmarks/README.md. No memory is
 * touched: blocks are address arithmetic. */
#ifndef MEMFIT_REPLAY_NATIVE_H
#define MEMFIT_REPLAY_NATIVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "trace.h"

typedef struct native_config {
  uint64_t capacity;       /* bytes each device may reserve; 0: unlimited */
  uint64_t max_split_size; /* PyTorch's max_split_size, bytes; 0: unset (no limit) */
  bool expandable;         /* expandable_segments:True */
} native_config;

typedef struct native_result {
  /* Sums over the devices of each device's peak, as memfit's figures are. */
  uint64_t peak_reserved;
  uint64_t peak_allocated;
  uint64_t segment_maps;   /* cudaMalloc calls, or page-range maps when expandable */
  uint64_t segment_unmaps; /* cudaFree calls, or page-range unmaps */
  uint64_t alloc_retries;  /* release_cached_blocks before a retry (num_alloc_retries) */
  uint64_t ooms;           /* 0, or 1: the emulation stops at its first OOM */
  size_t oom_op;           /* index into trace.ops of that alloc (ooms == 1) */
  double seconds;          /* wall time of the whole emulation */
} native_result;

/* Replays every event of t through the emulation. Returns 0 (an OOM of the
 * emulation is a result, not a failure: out->ooms), or -1 if host memory ran
 * out. Deterministic: the same trace and config give the same result. */
int native_replay(const trace *t, const native_config *c, native_result *out);

#endif /* MEMFIT_REPLAY_NATIVE_H */
