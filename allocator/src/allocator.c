/* allocator.c — the caching core: devices, per-stream pools, best fit with
 * splitting and coalescing, deferred reuse behind record_stream events, the OOM
 * ladder of segments, and the public entry points that allocate, free and
 * re-tag. With page-mapped pools (vmm, the default where the backend can map
 * pages) a miss goes to vmm.c instead of the segment growth below.
 *
 * The segment policy (vmm:off), in the spirit of PyTorch's CUDACachingAllocator:
 * - Requests are rounded up to 512 B. Each (device, stream) has a small pool
 *   (requests up to 1 MiB, carved from 2 MiB segments) and a large pool.
 * - A request takes the best fit (smallest free block, then lowest address)
 *   from its pool, found in O(log n) (free_index.c). A block is split when the
 *   remainder is worth keeping: >= 512 B in the small pool, > large_split
 *   (1 MiB) in the large pool; blocks above max_split_size are never split, and such an
 *   oversize block serves only requests within 20 MiB of its size.
 * - Freed blocks coalesce with free neighbours in their segment at once and
 *   are reusable on their own stream at once. A block used on another stream
 *   (mf_record_stream) goes back to the pool only after an event recorded on
 *   each of those streams has completed.
 * - A miss maps a new segment: 2 MiB for the small pool; for a large request
 *   its size rounded to segment_round (2 MiB, the driver's page; at least
 *   large_segment). See Note [Merging free
 *   segments] for how memfit avoids the growth that slowly varying shapes
 *   cause in PyTorch's allocator.
 * - OOM ladder: the pool; then release cached segments that fit and retry;
 *   then wait for pending events, release every cached segment (what
 *   empty_cache releases) and retry; then fail: NULL, an OOM count, and a
 *   report (report.c). Nothing aborts. A request larger than the capacity
 *   fails at once and keeps the cache: no release could make room for it.
 *   Page-mapped pools climb the same ladder (vmm.c, climb_ladder).
 *
 * Note [Draining after an OOM]
 * An OOM usually ends an attempt (a training step at too large a batch): its
 * blocks are freed as the exception unwinds, and the caller tries again with
 * less, in the same process (Accelerate's find_executable_batch_size,
 * Lightning's batch-size finder; on CPU neither calls an empty_cache). Cached,
 * those blocks' segments keep the failed attempt's sizes, and a smaller
 * attempt carving its blocks out of them can run out of memory where a fresh
 * process, mapping segments sized to its own requests, fits. So after an OOM
 * a segment that becomes wholly free is released at once (empty_cache's
 * work, segment by segment), until a miss maps new memory again: from then on
 * the new attempt caches as a fresh process would. Page-mapped pools need no
 * draining: they move free granules to where a request needs them.
 *
 * Note [Merging free segments]
 * Training with a slowly growing batch or sequence length asks, step after
 * step, for blocks slightly larger than the ones cached from the step before.
 * Each such request misses, a new segment is mapped, and the old, now too
 * small, cached segments sit unused: reserved memory creeps up while allocated
 * memory grows only a little. On a miss in a large pool memfit therefore first
 * releases that pool's wholly free segments (each smaller than the request, or
 * best fit would have used it) and maps one segment of max(request, their sum):
 * reserved grows by the deficit only, and the new segment serves the request
 * and the neighbours that the released segments used to serve. It costs
 * backend calls only on misses, which are rare in steady state. Option
 * merge_segments:false turns it off. With merging, segments sized to the
 * request (large_segment 2 MiB) waste less than PyTorch's 20 MiB minimum, since
 * the merge itself, not a padded segment, is what lets neighbours share space:
 * on the bundled traces, peak reserved / peak allocated was 1.046-1.051 with
 * 2 MiB against 1.053-1.094 with 20 MiB (benchmarks/results/).
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <stdatomic.h>

#include "internal.h"

static _Thread_local int device_hint; /* where this thread's last pointer lived */
static _Atomic int live_allocators;      /* created and not yet destroyed: mf_layer_reset needs none */

static inline size_t round_up(size_t size, size_t to) { return (size + to - 1) / to * to; }

/* ------------------------------------------------------------ block metadata */

mf_block *_mf_block_new(mf_device *d) {
  mf_block *b = d->spare_blocks;
  if (b) {
    d->spare_blocks = b->left;
    b->left = NULL;
  } else {
    b = calloc(1, sizeof *b);
    if (!b) return NULL;
  }
  uint32_t x = d->priority_state; /* xorshift32: treap priorities */
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  d->priority_state = x;
  b->priority = x;
  return b;
}

void _mf_block_recycle(mf_device *d, mf_block *b) {
  free(b->used_streams);
  memset(b, 0, sizeof *b);
  b->left = d->spare_blocks;
  d->spare_blocks = b;
}

/* ------------------------------------------------------------------- pools */

static mf_stream_pools *stream_pools(mf_device *d, uintptr_t stream) {
  for (int i = 0; i < d->stream_count; i++)
    if (d->streams[i]->stream == stream) return d->streams[i];
  if (d->stream_count == d->stream_cap) {
    int cap = d->stream_cap ? d->stream_cap * 2 : 4;
    mf_stream_pools **grown = realloc(d->streams, (size_t)cap * sizeof *grown);
    if (!grown) return NULL;
    d->streams = grown;
    d->stream_cap = cap;
  }
  mf_stream_pools *sp = calloc(1, sizeof *sp);
  if (!sp) return NULL;
  sp->stream = stream;
  sp->small = (mf_pool){.stream = stream, .small = true, .device = d};
  sp->large = (mf_pool){.stream = stream, .small = false, .device = d};
  d->streams[d->stream_count++] = sp;
  return sp;
}

/* Put a segment on, or take it off, its pool's list of wholly free segments. */
void _mf_segment_set_free(mf_segment *s, bool now) {
  if (now == s->wholly_free) return;
  mf_pool *pool = s->pool;
  if (now) {
    s->free_prev = NULL;
    s->free_next = pool->free_segments;
    if (pool->free_segments) pool->free_segments->free_prev = s;
    pool->free_segments = s;
  } else {
    if (s->free_prev) s->free_prev->free_next = s->free_next;
    else pool->free_segments = s->free_next;
    if (s->free_next) s->free_next->free_prev = s->free_prev;
    s->free_prev = s->free_next = NULL;
  }
  s->wholly_free = now;
}

/* Keep the list in step with the segment's first block. */
void _mf_segment_update_free(mf_segment *s) {
  _mf_segment_set_free(s, s->first->state == MF_BLOCK_FREE && s->first->size == s->size);
}

void _mf_segment_link(mf_device *d, mf_segment *s) {
  s->prev = NULL;
  s->next = d->segments;
  if (d->segments) d->segments->prev = s;
  d->segments = s;
}

void _mf_segment_unlink(mf_device *d, mf_segment *s) {
  if (s->prev) s->prev->next = s->next;
  else d->segments = s->next;
  if (s->next) s->next->prev = s->prev;
  s->prev = s->next = NULL;
}

/* ---------------------------------------------------------------- segments */

static mf_status map_segment(mf_device *d, mf_pool *pool, size_t size, mf_segment **out) {
  mf_allocator *a = d->allocator;
  if (d->capacity && (uint64_t)d->stats.reserved_bytes.current + size > d->capacity)
    return _mf_error(MF_ERR_OOM, "capacity reached");
  mf_segment *s = calloc(1, sizeof *s);
  mf_block *b = _mf_block_new(d);
  if (!s || !b) {
    free(s);
    if (b) _mf_block_recycle(d, b);
    return _mf_error(MF_ERR_HOST_MEMORY, "out of host memory for segment metadata");
  }
  uintptr_t addr = 0;
  mf_status st = a->backend->ops->map(a->backend, d->index, size, &addr);
  if (st != MF_OK) {
    free(s);
    _mf_block_recycle(d, b);
    return st;
  }
  s->addr = addr;
  s->size = size;
  s->pool = pool;
  s->first = s->last = b;
  _mf_segment_link(d, s);
  b->addr = addr;
  b->size = size;
  b->segment = s;
  b->state = MF_BLOCK_FREE;
  _mf_index_insert(pool, b);
  _mf_segment_update_free(s);
  _mf_counter_add(&d->stats.reserved_bytes, (int64_t)size);
  _mf_counter_add(&d->stats.segments, 1);
  d->stats.segment_maps++;
  _mf_log_event(a, d->index, MF_LOG_SEGMENT_MAP, addr, size, size, pool->stream, (mf_tag){0});
  *out = s;
  return MF_OK;
}

/* Release a wholly free segment to the backend. */
static mf_status unmap_segment(mf_device *d, mf_segment *s) {
  mf_allocator *a = d->allocator;
  mf_status st = a->backend->ops->unmap(a->backend, d->index, s->addr, s->size);
  if (st != MF_OK) return st; /* keep it cached: still consistent */
  mf_pool *pool = s->pool;
  _mf_index_remove(pool, s->first);
  _mf_segment_set_free(s, false);
  _mf_segment_unlink(d, s);
  _mf_counter_add(&d->stats.reserved_bytes, -(int64_t)s->size);
  _mf_counter_add(&d->stats.segments, -1);
  d->stats.segment_unmaps++;
  _mf_log_event(a, d->index, MF_LOG_SEGMENT_UNMAP, s->addr, s->size, s->size, pool->stream, (mf_tag){0});
  _mf_block_recycle(d, s->first);
  free(s);
  return MF_OK;
}

/* --------------------------------------------------- splitting, coalescing */

static bool should_split(const mf_allocator *a, const mf_pool *pool, size_t block_size, size_t size) {
  size_t remaining = block_size - size;
  if (pool->small) return remaining >= MF_ROUND;
  return block_size <= a->max_split_size && remaining > a->large_split;
}

/* Take a free block out of its pool for a request of `size` rounded bytes. */
static mf_status take_block(mf_device *d, mf_pool *pool, mf_block *b, size_t size, size_t requested, mf_tag tag) {
  _mf_index_remove(pool, b);
  if (should_split(d->allocator, pool, b->size, size)) {
    mf_block *rest = _mf_block_new(d); /* without metadata the block is simply not split */
    if (rest) {
      rest->addr = b->addr + size;
      rest->size = b->size - size;
      rest->segment = b->segment;
      rest->state = MF_BLOCK_FREE;
      rest->prev = b;
      rest->next = b->next;
      if (b->next) b->next->prev = rest;
      else b->segment->last = rest;
      b->next = rest;
      b->size = size;
      _mf_index_insert(pool, rest);
    }
  }
  b->state = MF_BLOCK_LIVE;
  _mf_segment_update_free(b->segment);
  b->requested = requested;
  if (!_mf_stats_reserve_layer(d, tag.layer)) tag.layer = 0; /* count it as "no layer" rather than fail */
  b->tag = tag;
  mf_status st = _mf_map_insert(&d->live, b);
  if (st != MF_OK) return st;
  _mf_stats_account(d, b, +1);
  return MF_OK;
}

void _mf_release_block(mf_device *d, mf_block *b) {
  mf_pool *pool = b->segment->pool;
  b->state = MF_BLOCK_FREE;
  b->requested = 0;
  free(b->used_streams);
  b->used_streams = NULL;
  b->used_stream_count = b->used_stream_cap = 0;
  mf_block *prev = b->prev;
  if (prev && prev->state == MF_BLOCK_FREE) {
    _mf_index_remove(pool, prev);
    prev->size += b->size;
    prev->next = b->next;
    if (b->next) b->next->prev = prev;
    else b->segment->last = prev;
    _mf_block_recycle(d, b);
    b = prev;
  }
  mf_block *next = b->next;
  if (next && next->state == MF_BLOCK_FREE) {
    _mf_index_remove(pool, next);
    b->size += next->size;
    b->next = next->next;
    if (next->next) next->next->prev = b;
    else b->segment->last = b;
    _mf_block_recycle(d, next);
  }
  _mf_index_insert(pool, b);
  _mf_segment_update_free(b->segment);
  /* Note [Draining after an OOM] */
  if (MF_UNLIKELY(d->draining) && b->segment->wholly_free) unmap_segment(d, b->segment);
}

/* Best fit under the oversize rules. */
static mf_block *find_block(const mf_allocator *a, const mf_pool *pool, size_t size) {
  mf_block *b = _mf_index_lower_bound(pool, size);
  if (!b || a->max_split_size == SIZE_MAX) return b;
  if (size <= a->max_split_size && b->size > a->max_split_size) return NULL; /* keep oversize blocks whole */
  if (size > a->max_split_size && b->size >= size + MF_OVERSIZE_SLACK) return NULL; /* too wasteful */
  return b;
}

/* ------------------------------------------------------------------ events */

void _mf_process_pending(mf_device *d, bool wait) {
  mf_allocator *a = d->allocator;
  const mf_backend_ops *ops = a->backend->ops;
  mf_pending_event **link = &d->pending;
  while (*link) {
    mf_pending_event *p = *link;
    bool complete = false;
    mf_status st = wait ? ops->event_synchronize(a->backend, d->index, p->event)
                        : ops->event_query(a->backend, d->index, p->event, &complete);
    /* A CUDA graph capture is under way (on another stream): every further
     * query or wait would be refused too, and would count against the capture.
     * The blocks stay pending until a later call. */
    if (st == MF_ERR_UNSUPPORTED) break;
    if (wait || st != MF_OK) {
      /* A failed query would otherwise pin the block forever: wait instead. */
      if (!wait) ops->event_synchronize(a->backend, d->index, p->event);
      complete = true;
    }
    if (!complete) {
      link = &p->next;
      continue;
    }
    *link = p->next;
    d->pending_count--;
    ops->event_destroy(a->backend, d->index, p->event);
    mf_block *b = p->block;
    free(p);
    if (--b->pending_events == 0) _mf_release_block(d, b);
  }
}

/* ------------------------------------------------------------- the ladder */

static uint64_t release_segments(mf_device *d, size_t at_least_one_of, uint64_t enough);

static mf_status try_map(mf_device *d, mf_pool *pool, size_t size, size_t fallback, mf_segment **out) {
  mf_status st = map_segment(d, pool, size, out);
  if (st == MF_ERR_OOM && fallback < size) st = map_segment(d, pool, fallback, out);
  return st;
}

/* Release the large pool's wholly free segments that may be merged (oversize
 * ones stay cached whole); returns the bytes released. */
static uint64_t release_mergeable(mf_device *d, mf_pool *pool) {
  uint64_t released = 0;
  for (mf_segment *s = pool->free_segments, *next; s; s = next) {
    next = s->free_next;
    size_t size = s->size;
    if (size <= d->allocator->max_split_size && unmap_segment(d, s) == MF_OK) released += size;
  }
  return released;
}

/* A request missed the pool: map a segment for it, climbing the OOM ladder.
 * On failure *status says whether it was an OOM or a backend/host failure. */
static mf_block *grow_pool(mf_device *d, mf_pool *pool, size_t size, mf_status *status) {
  mf_allocator *a = d->allocator;
  if (d->capacity && size > d->capacity) { /* nothing released could make room: keep the cache */
    *status = _mf_error(MF_ERR_OOM, "larger than the capacity");
    return NULL;
  }
  size_t minimum = pool->small ? MF_SMALL_SEGMENT : round_up(size, a->segment_round);
  size_t wanted = minimum;
  if (!pool->small && size <= a->max_split_size) {
    wanted = round_up(size > a->large_segment ? size : a->large_segment, a->segment_round);
    if (a->merge_segments && pool->free_segments) {
      uint64_t released = release_mergeable(d, pool);
      if (released > wanted) wanted = round_up((size_t)released, a->segment_round);
    }
  }
  mf_segment *s = NULL;
  mf_status st = try_map(d, pool, wanted, minimum, &s);
  if (st == MF_ERR_OOM) {
    /* Step 2: release cached segments that would make room, then retry. */
    if (release_segments(d, minimum, minimum) > 0) {
      d->stats.ladder_releases++;
      st = try_map(d, pool, wanted, minimum, &s);
    }
  }
  if (st == MF_ERR_OOM) {
    /* Step 3: wait for deferred frees, release everything cached, retry. */
    _mf_process_pending(d, true);
    if (release_segments(d, 0, UINT64_MAX) > 0) d->stats.ladder_releases++;
    st = try_map(d, pool, wanted, minimum, &s);
  }
  if (st == MF_OK) d->draining = false; /* Note [Draining after an OOM] */
  *status = st;
  return st == MF_OK ? s->first : NULL;
}

/* Release wholly free segments of any pool of the device. With
 * at_least_one_of > 0, first look for the smallest single segment of at least
 * that size; otherwise (or if none) release largest first until `enough`
 * bytes went back. Returns the bytes released. */
static uint64_t release_segments(mf_device *d, size_t at_least_one_of, uint64_t enough) {
  uint64_t released = 0;
  if (at_least_one_of) {
    mf_segment *best = NULL;
    for (mf_segment *s = d->segments; s; s = s->next)
      if (s->wholly_free && s->size >= at_least_one_of &&
          (!best || s->size < best->size))
        best = s;
    if (best) {
      size_t size = best->size;
      return unmap_segment(d, best) == MF_OK ? size : 0;
    }
  }
  while (released < enough) {
    mf_segment *largest = NULL;
    for (mf_segment *s = d->segments; s; s = s->next)
      if (s->wholly_free && (!largest || s->size > largest->size)) largest = s;
    if (!largest) break;
    size_t size = largest->size;
    if (unmap_segment(d, largest) != MF_OK) break;
    released += size;
  }
  return released;
}

/* ---------------------------------------------------------- create, destroy */

static mf_status make_backend(const mf_options *o, mf_backend **out) {
  const char *name = _mf_opt_str(o, MF_OPT_BACKEND);
  int devices = (int)_mf_opt_u64(o, MF_OPT_DEVICES);
  uint64_t capacity = _mf_opt_u64(o, MF_OPT_CAPACITY);
  if (strcmp(name, "virtual") == 0) return mf_backend_virtual_create(devices, capacity, out);
  if (strcmp(name, "host") == 0) return mf_backend_host_create(devices, capacity, out);
  if (strcmp(name, "cuda") == 0) return mf_backend_cuda_create(out);
  return _mf_error(MF_ERR_INVALID, "option backend: bad value '%s' (expected cuda, host or virtual)", name);
}

MF_API mf_status mf_allocator_create(const char *conf, mf_allocator **out) {
  if (!out) return _mf_error(MF_ERR_INVALID, "mf_allocator_create: NULL out");
  *out = NULL;
  mf_options *o = mf_options_new();
  if (!o) return MF_ERR_HOST_MEMORY;
  mf_status st = mf_options_parse(o, conf);
  mf_backend *backend = NULL;
  if (st == MF_OK) st = make_backend(o, &backend);
  if (st == MF_OK) st = mf_allocator_create_with(backend, o, out);
  mf_options_free(o);
  return st;
}

MF_API mf_status mf_allocator_create_with(mf_backend *backend, const mf_options *options, mf_allocator **out) {
  if (!out) return _mf_error(MF_ERR_INVALID, "mf_allocator_create_with: NULL out");
  *out = NULL;
  if (!backend || !backend->ops) return _mf_error(MF_ERR_INVALID, "mf_allocator_create_with: NULL backend");
  uint64_t segment_round = options ? _mf_opt_u64(options, MF_OPT_SEGMENT_ROUND) : 0;
  if (options && (segment_round == 0 || segment_round % MF_ROUND)) {
    backend->ops->destroy(backend);
    return _mf_error(MF_ERR_INVALID, "option segment_round: %llu is not a positive multiple of %d bytes",
                     (unsigned long long)segment_round, MF_ROUND);
  }
  int count = backend->ops->device_count(backend);
  if (count <= 0) {
    backend->ops->destroy(backend);
    return _mf_error(MF_ERR_NO_DEVICE, "backend %s has no device", backend->ops->name);
  }
  mf_allocator *a = calloc(1, sizeof *a);
  mf_options *o = mf_options_clone(options);
  mf_device *devices = calloc((size_t)count, sizeof *devices);
  if (!a || !o || !devices) {
    free(a);
    mf_options_free(o);
    free(devices);
    backend->ops->destroy(backend);
    return _mf_error(MF_ERR_HOST_MEMORY, "mf_allocator_create: out of host memory");
  }
  a->backend = backend;
  a->options = o;
  a->device_count = count;
  a->devices = devices;
  atomic_fetch_add_explicit(&live_allocators, 1, memory_order_relaxed); /* mf_allocator_destroy takes it back */
  uint64_t max_split = _mf_opt_u64(o, MF_OPT_MAX_SPLIT_SIZE);
  a->max_split_size = max_split ? (size_t)max_split : SIZE_MAX;
  a->large_segment = (size_t)_mf_opt_u64(o, MF_OPT_LARGE_SEGMENT);
  a->large_split = (size_t)_mf_opt_u64(o, MF_OPT_LARGE_SPLIT);
  a->segment_round = (size_t)_mf_opt_u64(o, MF_OPT_SEGMENT_ROUND);
  a->merge_segments = _mf_opt_bool(o, MF_OPT_MERGE_SEGMENTS);
  a->check_every_op = _mf_opt_bool(o, MF_OPT_CHECK);
  pthread_mutex_init(&a->report_lock, NULL);
  pthread_mutex_init(&a->log_lock, NULL);
  uint64_t capacity = _mf_opt_u64(o, MF_OPT_CAPACITY);
  for (int i = 0; i < count; i++) {
    mf_device *d = &devices[i];
    pthread_mutex_init(&d->lock, NULL);
    d->index = i;
    d->allocator = a;
    d->priority_state = 2463534242u + (uint32_t)i;
    d->stats.struct_size = sizeof(mf_stats);
    d->stats.version = MF_STATS_VERSION;
    if (backend->ops->total_memory(backend, i, &d->total_memory) != MF_OK) d->total_memory = 0;
    d->capacity = capacity ? capacity : d->total_memory;
  }
  mf_status vst = _mf_vmm_setup(a);
  if (vst != MF_OK) {
    char why[1024];
    snprintf(why, sizeof why, "%s", mf_last_error());
    mf_allocator_destroy(a);
    return _mf_error(vst, "%s", why);
  }
  const char *log_path = _mf_opt_str(o, MF_OPT_EVENT_LOG);
  if (*log_path) {
    mf_status st = mf_event_log_start(a, log_path);
    if (st != MF_OK) {
      mf_allocator_destroy(a);
      return st;
    }
  }
  *out = a;
  return MF_OK;
}

MF_API void mf_allocator_destroy(mf_allocator *a) {
  if (!a) return;
  for (int i = 0; i < a->device_count; i++) {
    mf_device *d = &a->devices[i];
    pthread_mutex_lock(&d->lock);
    while (d->pending) {
      mf_pending_event *p = d->pending;
      d->pending = p->next;
      a->backend->ops->event_destroy(a->backend, i, p->event);
      free(p);
    }
    if (a->granule) _mf_vmm_destroy_device(d); /* unmaps every segment, keeps their metadata */
    while (d->segments) {
      mf_segment *s = d->segments;
      d->segments = s->next;
      if (!a->granule) a->backend->ops->unmap(a->backend, i, s->addr, s->size);
      for (mf_block *b = s->first; b;) {
        mf_block *next = b->next;
        free(b->used_streams);
        free(b);
        b = next;
      }
      free(s);
    }
    while (d->spare_blocks) {
      mf_block *b = d->spare_blocks;
      d->spare_blocks = b->left;
      free(b);
    }
    for (int j = 0; j < d->stream_count; j++) free(d->streams[j]);
    free(d->streams);
    free(d->spare_handles);
    _mf_map_free(&d->live);
    free(d->tag_stats);
    pthread_mutex_unlock(&d->lock);
    pthread_mutex_destroy(&d->lock);
  }
  mf_event_log_stop(a);
  _mf_trace_free(a);
  a->backend->ops->destroy(a->backend);
  mf_options_free(a->options);
  free(a->oom_report);
  pthread_mutex_destroy(&a->report_lock);
  pthread_mutex_destroy(&a->log_lock);
  free(a->devices);
  free(a);
  atomic_fetch_sub_explicit(&live_allocators, 1, memory_order_relaxed);
}

int _mf_live_allocators(void) { return atomic_load_explicit(&live_allocators, memory_order_relaxed); }

MF_API int mf_allocator_device_count(const mf_allocator *a) { return a ? a->device_count : 0; }
MF_API const mf_options *mf_allocator_options(const mf_allocator *a) { return a ? a->options : NULL; }
MF_API size_t mf_allocator_granule(const mf_allocator *a) { return a ? a->granule : 0; }
MF_API mf_backend *mf_allocator_backend(mf_allocator *a) { return a ? a->backend : NULL; }

/* --------------------------------------------------------- malloc and free */

static void record_oom(mf_device *d, size_t size, size_t requested, uintptr_t stream) {
  mf_allocator *a = d->allocator;
  d->stats.ooms++;
  char wanted[32], cap[32], headline[256];
  snprintf(headline, sizeof headline,
           "memfit: out of memory on device %d: tried to allocate %s (%zu bytes requested) on stream 0x%llx, "
           "capacity %s",
           d->index, mf_format_bytes(size, wanted, sizeof wanted), requested, (unsigned long long)stream,
           mf_format_bytes(d->capacity, cap, sizeof cap));
  mf_sbuf report = {0};
  _mf_report_build(d, &report, headline);
  pthread_mutex_lock(&a->report_lock);
  free(a->oom_report);
  a->oom_report = report.data; /* ownership moves */
  pthread_mutex_unlock(&a->report_lock);
  _mf_error(MF_ERR_OOM, "%s", headline);
}

static void after_operation(mf_device *d) {
  if (MF_UNLIKELY(d->allocator->check_every_op) && _mf_check_device(d) != MF_OK) {
    char why[1024];
    snprintf(why, sizeof why, "%s", mf_last_error());
    fprintf(stderr, "memfit: check failed after an operation: %s\n", why);
  }
}

/* A cached block for `rounded` bytes: with page-mapped pools a small request
 * may take a large-pool fragment (*pool then becomes the large pool). */
static mf_block *lookup(const mf_allocator *a, mf_stream_pools *sp, mf_pool **pool, size_t rounded) {
  mf_block *b = NULL;
  if (a->granule && (*pool)->small && (b = _mf_vmm_fragment(&sp->large, rounded))) *pool = &sp->large;
  if (!b) b = find_block(a, *pool, rounded);
  return b;
}

/* True (with the error set) when `stream` is capturing a CUDA graph, or when
 * the backend cannot tell. Checked before the device lock and before pending
 * events are queried: a query during capture would invalidate it. */
static bool refuse_capture(mf_allocator *a, int device, uintptr_t stream) {
  bool capturing = false;
  mf_status st = a->backend->ops->stream_capturing(a->backend, device, stream, &capturing);
  if (st != MF_OK) return true; /* the backend's message stands */
  if (!capturing) return false;
  _mf_error(MF_ERR_UNSUPPORTED,
            "memfit: stream 0x%" PRIxPTR " of device %d is capturing a CUDA graph, and memfit does not allocate "
            "for CUDA graphs (torch.cuda.graph, torch.cuda.make_graphed_callables, "
            "torch.compile(mode=\"reduce-overhead\")): use torch.compile(mode=\"max-autotune-no-cudagraphs\") "
            "or mode=\"default\", or run without memfit (PyTorch's allocator keeps graph pools private)",
            stream, device);
  return true;
}

MF_API void *mf_malloc_tagged(mf_allocator *a, int device, size_t size, uintptr_t stream, mf_tag tag) {
  if (MF_UNLIKELY(!a)) {
    _mf_error(MF_ERR_INVALID, "mf_malloc: NULL allocator");
    return NULL;
  }
  if (MF_UNLIKELY(device < 0 || device >= a->device_count)) {
    _mf_error(MF_ERR_INVALID, "mf_malloc: device %d out of range (the allocator has %d)", device,
              a->device_count);
    return NULL;
  }
  if (MF_UNLIKELY(size > SIZE_MAX / 2)) {
    _mf_error(MF_ERR_INVALID, "mf_malloc: size %zu is not a possible allocation", size);
    return NULL;
  }
  if (MF_UNLIKELY(tag.category >= MF_CAT_COUNT || tag.phase >= MF_PHASE_COUNT)) {
    _mf_error(MF_ERR_INVALID, "mf_malloc: bad tag (category %u, phase %u)", tag.category, tag.phase);
    return NULL;
  }
  if (a->backend->ops->stream_capturing && MF_UNLIKELY(refuse_capture(a, device, stream))) return NULL;
  size_t rounded = size ? round_up(size, MF_ROUND) : MF_ROUND; /* 0 bytes: a unique smallest block */
  mf_device *d = &a->devices[device];
  pthread_mutex_lock(&d->lock);
  void *result = NULL;
  mf_stream_pools *sp = stream_pools(d, stream);
  if (!sp) {
    _mf_error(MF_ERR_HOST_MEMORY, "mf_malloc: out of host memory for a stream's pools");
    goto out;
  }
  mf_pool *pool = rounded <= MF_SMALL_REQUEST ? &sp->small : &sp->large;
  mf_block *b = lookup(a, sp, &pool, rounded);
  /* Blocks held back by record_stream events are looked at only when the
   * cache has nothing: a hit then makes no backend call at all (a query
   * during another stream's CUDA graph capture would invalidate it). */
  if (!b && d->pending_count) {
    _mf_process_pending(d, false);
    pool = rounded <= MF_SMALL_REQUEST ? &sp->small : &sp->large;
    b = lookup(a, sp, &pool, rounded);
  }
  if (b) {
    d->stats.cache_hits++;
  } else {
    mf_status st;
    b = a->granule ? _mf_vmm_grow(d, pool, rounded, &st) : grow_pool(d, pool, rounded, &st);
    if (!b) {
      if (st == MF_ERR_OOM) {
        record_oom(d, rounded, size, stream);
        if (!a->granule) d->draining = true; /* Note [Draining after an OOM] */
      } /* else the backend's message stands */
      goto out;
    }
    d->stats.cache_misses++;
  }
  if (take_block(d, pool, b, rounded, size, tag) != MF_OK) {
    _mf_release_block(d, b);
    goto out;
  }
  d->stats.allocs++;
  _mf_log_event(a, device, MF_LOG_ALLOC, b->addr, size, b->size, stream, tag);
  result = (void *)b->addr;
  if (a->device_count > 1) device_hint = device;
out:
  after_operation(d);
  pthread_mutex_unlock(&d->lock);
  return result;
}

MF_API void *mf_malloc(mf_allocator *a, int device, size_t size, uintptr_t stream) {
  return mf_malloc_tagged(a, device, size, stream, mf_tag_current());
}

/* Find the device holding a live pointer and return with its lock held. */
static mf_device *lock_owner(mf_allocator *a, uintptr_t addr, mf_block **block) {
  int n = a->device_count, start = n > 1 && device_hint < n ? device_hint : 0;
  for (int k = 0; k < n; k++) {
    int i = start + k < n ? start + k : start + k - n;
    mf_device *d = &a->devices[i];
    pthread_mutex_lock(&d->lock);
    mf_block *b = _mf_map_find(&d->live, addr);
    if (b) {
      *block = b;
      if (n > 1) device_hint = d->index;
      return d;
    }
    pthread_mutex_unlock(&d->lock);
  }
  return NULL;
}

MF_API mf_status mf_free(mf_allocator *a, void *ptr) {
  if (!ptr) return MF_OK;
  if (!a) return _mf_error(MF_ERR_INVALID, "mf_free: NULL allocator");
  mf_block *b;
  mf_device *d = lock_owner(a, (uintptr_t)ptr, &b);
  if (!d)
    return _mf_error(MF_ERR_INVALID, "mf_free: %p is not a live block of this allocator (double free or foreign pointer)",
                     ptr);
  _mf_map_remove(&d->live, b->addr);
  _mf_stats_account(d, b, -1); /* no longer allocated, even if its reuse must wait */
  d->stats.frees++;
  _mf_log_event(a, d->index, MF_LOG_FREE, b->addr, b->requested, b->size, b->segment->pool->stream, b->tag);
  const mf_backend_ops *ops = a->backend->ops;
  for (uint16_t i = 0; i < b->used_stream_count; i++) {
    mf_pending_event *p = malloc(sizeof *p);
    void *event = NULL;
    if (!p || ops->event_record(a->backend, d->index, b->used_streams[i], &event) != MF_OK) {
      /* Without an event the only safe order is to wait for the device. */
      free(p);
      if (ops->synchronize) ops->synchronize(a->backend, d->index);
      continue;
    }
    p->event = event;
    p->block = b;
    p->next = d->pending;
    d->pending = p;
    d->pending_count++;
    b->pending_events++;
  }
  if (b->pending_events) {
    b->state = MF_BLOCK_PENDING;
    d->stats.deferred_frees++;
  } else {
    _mf_release_block(d, b);
  }
  after_operation(d);
  pthread_mutex_unlock(&d->lock);
  return MF_OK;
}

MF_API mf_status mf_record_stream(mf_allocator *a, void *ptr, uintptr_t stream) {
  if (!a || !ptr) return _mf_error(MF_ERR_INVALID, "mf_record_stream: NULL argument");
  mf_block *b;
  mf_device *d = lock_owner(a, (uintptr_t)ptr, &b);
  if (!d) return _mf_error(MF_ERR_INVALID, "mf_record_stream: %p is not a live block of this allocator", ptr);
  mf_status st = MF_OK;
  bool known = stream == b->segment->pool->stream;
  for (uint16_t i = 0; !known && i < b->used_stream_count; i++) known = b->used_streams[i] == stream;
  if (!known) {
    if (b->used_stream_count == b->used_stream_cap) {
      uint16_t cap = b->used_stream_cap ? (uint16_t)(b->used_stream_cap * 2) : 2;
      uintptr_t *grown = cap > b->used_stream_cap ? realloc(b->used_streams, cap * sizeof *grown) : NULL;
      if (!grown) {
        st = _mf_error(MF_ERR_HOST_MEMORY, "mf_record_stream: out of host memory");
        goto out;
      }
      b->used_streams = grown;
      b->used_stream_cap = cap;
    }
    b->used_streams[b->used_stream_count++] = stream;
  }
out:
  pthread_mutex_unlock(&d->lock);
  return st;
}

MF_API mf_status mf_empty_cache(mf_allocator *a) {
  if (!a) return _mf_error(MF_ERR_INVALID, "mf_empty_cache: NULL allocator");
  for (int i = 0; i < a->device_count; i++) {
    mf_device *d = &a->devices[i];
    pthread_mutex_lock(&d->lock);
    _mf_process_pending(d, true);
    if (a->granule) _mf_vmm_release_cached(d);
    else release_segments(d, 0, UINT64_MAX);
    after_operation(d);
    pthread_mutex_unlock(&d->lock);
  }
  return MF_OK;
}

MF_API mf_status mf_retag(mf_allocator *a, void *ptr, mf_tag tag) {
  if (!a || !ptr) return _mf_error(MF_ERR_INVALID, "mf_retag: NULL argument");
  if (tag.category >= MF_CAT_COUNT || tag.phase >= MF_PHASE_COUNT || tag.layer >= mf_layer_count())
    return _mf_error(MF_ERR_INVALID, "mf_retag: bad tag (category %u, phase %u, layer %u)", tag.category, tag.phase,
                     tag.layer);
  mf_block *b;
  mf_device *d = lock_owner(a, (uintptr_t)ptr, &b);
  if (!d) return _mf_error(MF_ERR_INVALID, "mf_retag: %p is not a live block of this allocator", ptr);
  if (!_mf_stats_reserve_layer(d, tag.layer)) tag.layer = 0;
  _mf_stats_account(d, b, -1);
  mf_tag old = b->tag;
  b->tag = tag;
  _mf_stats_account(d, b, +1);
  if (MF_UNLIKELY(__atomic_load_n(&a->log_sinks, __ATOMIC_RELAXED)))
    _mf_log_retag(a, d->index, b->addr, b->requested, b->size, old, tag);
  pthread_mutex_unlock(&d->lock);
  return MF_OK;
}

MF_API mf_status mf_retag_live(mf_allocator *a, int device, mf_phase phase, mf_category from, mf_category to,
                               size_t *count) {
  if (!a || device >= a->device_count || phase >= MF_PHASE_COUNT || from >= MF_CAT_COUNT || to >= MF_CAT_COUNT)
    return _mf_error(MF_ERR_INVALID, "mf_retag_live: bad allocator, device %d, phase %d or category %d/%d", device,
                     (int)phase, (int)from, (int)to);
  size_t n = 0;
  bool logging = __atomic_load_n(&a->log_sinks, __ATOMIC_RELAXED) != 0;
  for (int i = device < 0 ? 0 : device; i < (device < 0 ? a->device_count : device + 1); i++) {
    mf_device *d = &a->devices[i];
    pthread_mutex_lock(&d->lock);
    for (mf_segment *s = d->segments; s; s = s->next)
      for (mf_block *b = s->first; b; b = b->next) {
        if (b->state != MF_BLOCK_LIVE || b->tag.phase != phase || b->tag.category != from) continue;
        mf_tag old = b->tag, tag = old;
        tag.category = (uint8_t)to;
        _mf_stats_account(d, b, -1);
        b->tag = tag;
        _mf_stats_account(d, b, +1);
        if (logging) _mf_log_retag(a, d->index, b->addr, b->requested, b->size, old, tag);
        n++;
      }
    pthread_mutex_unlock(&d->lock);
  }
  if (count) *count = n;
  return MF_OK;
}

MF_API mf_status mf_block_info(mf_allocator *a, void *ptr, mf_tag *tag, size_t *requested, size_t *size) {
  if (!a || !ptr) return _mf_error(MF_ERR_INVALID, "mf_block_info: NULL argument");
  mf_block *b;
  mf_device *d = lock_owner(a, (uintptr_t)ptr, &b);
  if (!d) return _mf_error(MF_ERR_INVALID, "mf_block_info: %p is not a live block of this allocator", ptr);
  if (tag) *tag = b->tag;
  if (requested) *requested = b->requested;
  if (size) *size = b->size;
  pthread_mutex_unlock(&d->lock);
  return MF_OK;
}

MF_API int mf_device_of(mf_allocator *a, void *ptr) {
  if (!a || !ptr) return -1;
  mf_block *b;
  mf_device *d = lock_owner(a, (uintptr_t)ptr, &b);
  if (!d) return -1;
  int index = d->index;
  pthread_mutex_unlock(&d->lock);
  return index;
}

MF_API mf_status mf_set_capacity(mf_allocator *a, int device, uint64_t bytes) {
  if (!a || device < 0 || device >= a->device_count)
    return _mf_error(MF_ERR_INVALID, "mf_set_capacity: bad allocator or device %d", device);
  if (!bytes) {
    mf_status st = a->backend->ops->total_memory(a->backend, device, &bytes);
    if (st != MF_OK) return st;
  }
  mf_device *d = &a->devices[device];
  pthread_mutex_lock(&d->lock);
  d->capacity = bytes;
  pthread_mutex_unlock(&d->lock);
  return MF_OK;
}

MF_API uint64_t mf_capacity(mf_allocator *a, int device) {
  if (!a || device < 0 || device >= a->device_count) return 0;
  mf_device *d = &a->devices[device];
  pthread_mutex_lock(&d->lock);
  uint64_t c = d->capacity;
  pthread_mutex_unlock(&d->lock);
  return c;
}

MF_API mf_status mf_check(mf_allocator *a) {
  if (!a) return _mf_error(MF_ERR_INVALID, "mf_check: NULL allocator");
  for (int i = 0; i < a->device_count; i++) {
    mf_device *d = &a->devices[i];
    pthread_mutex_lock(&d->lock);
    mf_status st = _mf_check_device(d);
    pthread_mutex_unlock(&d->lock);
    if (st != MF_OK) return st;
  }
  return MF_OK;
}
