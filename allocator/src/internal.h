/* internal.h — declarations shared between memfit's source files, grouped by
 * the file that defines them. Nothing here is exported from libmemfit.so;
 * everything not listed here is static to its file. */
#ifndef MEMFIT_INTERNAL_H
#define MEMFIT_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "memfit/memfit.h"

#if defined(__GNUC__)
#define MF_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define MF_LIKELY(x) __builtin_expect(!!(x), 1)
#define MF_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define MF_PRINTF(f, a)
#define MF_LIKELY(x) (x)
#define MF_UNLIKELY(x) (x)
#endif

#define MF_KiB ((size_t)1024)
#define MF_MiB ((size_t)1024 * 1024)
#define MF_GiB ((size_t)1024 * 1024 * 1024)

/* Policy constants, each with its reason. */
#define MF_ROUND 512                     /* device kernels like 512 B alignment; keeps block count low */
#define MF_SMALL_REQUEST (1 * MF_MiB)    /* requests up to this come from the small pool */
#define MF_MAX_ROUNDING (1ull << 48)     /* largest large_segment, segment_round, vmm_granule: 256 TiB */
#define MF_SMALL_SEGMENT (2 * MF_MiB)    /* small pool segments: many small tensors per map */
#define MF_OVERSIZE_SLACK (20 * MF_MiB)  /* an oversize block may serve a request this much smaller */

/* ---------------------------------------------------------------- errors.c */
/* Set the calling thread's last error and return status. */
mf_status _mf_error(mf_status status, const char *fmt, ...) MF_PRINTF(2, 3);
void _mf_clear_error(void);

/* --------------------------------------------------------------- options.c */
typedef enum mf_option_id {
  MF_OPT_BACKEND,          /* string: virtual | host | cuda */
  MF_OPT_DEVICES,          /* int: devices of a simulated backend */
  MF_OPT_CAPACITY,         /* size: budget per device, 0 = backend total */
  MF_OPT_MAX_SPLIT_SIZE,   /* size: cached blocks above it are not split */
  MF_OPT_LARGE_SEGMENT,    /* size: minimum segment for a large request */
  MF_OPT_LARGE_SPLIT,      /* size: a large block is split when the remainder exceeds it */
  MF_OPT_SEGMENT_ROUND,    /* size: large segments are multiples of it */
  MF_OPT_MERGE_SEGMENTS,   /* bool: merge free whole segments on a miss */
  MF_OPT_VMM,              /* string: auto | on | off: page-mapped pools */
  MF_OPT_VMM_GRANULE,      /* size: the pools' granule, 0 = the backend's */
  MF_OPT_EVENT_LOG,        /* string: path of the event log, "" = off */
  MF_OPT_CHECK,            /* bool: run mf_check after every operation */
  MF_OPT_COUNT
} mf_option_id;

uint64_t _mf_opt_u64(const mf_options *o, mf_option_id id);
bool _mf_opt_bool(const mf_options *o, mf_option_id id);
const char *_mf_opt_str(const mf_options *o, mf_option_id id);

/* Allocators created and not yet destroyed (allocator.c). */
int _mf_live_allocators(void);

/* ------------------------------------------------------------------ tags.c */
/* A snapshot of layer names for reports, read under the intern lock. */
const char *_mf_layer_name_or(uint32_t layer, const char *fallback);

/* --------------------------------------------------------- string builder */
typedef struct mf_sbuf {
  char *data;
  size_t len, cap;
  bool failed; /* out of host memory: contents are truncated */
} mf_sbuf;
void _mf_sbuf_printf(mf_sbuf *s, const char *fmt, ...) MF_PRINTF(2, 3);
/* Append text as a JSON string, quoted and escaped (layer names come from users). */
void _mf_sbuf_json_string(mf_sbuf *s, const char *text);
void _mf_sbuf_free(mf_sbuf *s);
/* Copy into a caller buffer with the public (buf, len, needed) convention. */
mf_status _mf_sbuf_export(const mf_sbuf *s, char *buf, size_t len, size_t *needed);


/* ------------------------------------------------------ the core's structs */
typedef struct mf_segment mf_segment;
typedef struct mf_pool mf_pool;
typedef struct mf_device mf_device;

typedef enum { MF_BLOCK_FREE = 0, MF_BLOCK_LIVE = 1, MF_BLOCK_PENDING = 2 } mf_block_state;

/* Block metadata lives on the host, never in device memory. */
typedef struct mf_block {
  uintptr_t addr;
  size_t size;                 /* block size: a multiple of MF_ROUND */
  size_t requested;            /* live/pending: the caller's size */
  mf_segment *segment;
  struct mf_block *prev, *next; /* address neighbours inside the segment */
  struct mf_block *left, *right; /* free index (treap) children, or free-list link */
  struct mf_block *parent;     /* free index (treap) parent: NULL at the root or when not indexed */
  struct mf_block *map_next;   /* pointer-map chain */
  uintptr_t *used_streams;     /* streams from mf_record_stream (rare: heap array) */
  uint32_t priority;           /* treap heap priority */
  uint16_t used_stream_count, used_stream_cap;
  uint16_t pending_events;     /* events still to complete before reuse */
  uint8_t state;               /* mf_block_state */
  mf_tag tag;
} mf_block;

typedef struct mf_vrange mf_vrange;

/* A segment is a contiguous mapped range that blocks tile: a backend map
 * (vmm:off), or a maximal run of mapped granules in one of its pool's reserved
 * ranges (vmm). */
struct mf_segment {
  uintptr_t addr;
  size_t size;
  mf_pool *pool;
  mf_block *first, *last;
  mf_segment *prev, *next;           /* all segments of the device */
  mf_segment *free_prev, *free_next; /* the pool's list of wholly free segments */
  mf_vrange *range;                  /* vmm: the reserved range it lies in */
  mf_segment *range_prev, *range_next; /* vmm: the range's segments by address */
  bool wholly_free;
};

/* vmm: a range of reserved addresses owned by one pool; granules are mapped
 * into it where its segments are. */
struct mf_vrange {
  uintptr_t base;
  size_t size;          /* a multiple of the granule */
  uint64_t *handles;    /* [granule index]: the handle mapped there (valid inside segments) */
  size_t handles_cap;   /* granule indexes the array has room for (grown on demand) */
  mf_segment *first;    /* its segments, by address */
  mf_vrange *next;      /* the pool's other ranges */
};

struct mf_pool {
  mf_block *root;          /* free blocks ordered by (size, addr) */
  size_t free_blocks;
  uint64_t free_bytes;
  mf_segment *free_segments; /* wholly free segments: candidates to release or merge */
  mf_vrange *ranges;       /* vmm: its reserved ranges */
  uintptr_t stream;
  bool small;
  mf_device *device;
};

typedef struct mf_stream_pools {
  uintptr_t stream;
  mf_pool small, large;
} mf_stream_pools;

typedef struct mf_pending_event {
  void *event;
  mf_block *block;
  struct mf_pending_event *next;
} mf_pending_event;

typedef struct mf_block_map {
  mf_block **buckets;
  size_t bucket_count; /* a power of two */
  size_t count;
} mf_block_map;

struct mf_device {
  pthread_mutex_t lock;
  int index;
  mf_allocator *allocator;
  uint64_t capacity;        /* effective budget in bytes */
  uint64_t total_memory;    /* the device's own size, read once at creation (0: unknown) */
  mf_stream_pools **streams;
  int stream_count, stream_cap;
  mf_block_map live;        /* live blocks by address */
  mf_segment *segments;
  mf_pending_event *pending; /* frees waiting on record_stream events */
  size_t pending_count;
  mf_block *spare_blocks;   /* recycled metadata: no host allocation in steady state */
  uint64_t *spare_handles;  /* vmm: granules held but unmapped, only inside one operation */
  size_t spare_len, spare_cap;
  bool synced;              /* vmm: the device was synchronized in this operation */
  bool draining;            /* segments: an OOM happened and no miss has mapped memory since */
  uint32_t priority_state;  /* xorshift state for treap priorities */
  mf_stats stats;
  mf_tag_stats *tag_stats;  /* [layer * MF_CAT_COUNT + category] */
  uint32_t tag_layers;      /* layers the table has room for */
  mf_tag_stats category_stats[MF_CAT_COUNT];
};

struct mf_allocator {
  mf_backend *backend;
  mf_options *options;
  int device_count;
  mf_device *devices;
  size_t max_split_size;    /* SIZE_MAX when unlimited */
  size_t large_segment;
  size_t large_split;       /* split a large block when the remainder exceeds this */
  size_t segment_round;     /* large segments are multiples of this */
  bool merge_segments;
  bool check_every_op;
  size_t granule;           /* vmm: the pools' granule; 0 with segments (vmm off) */
  pthread_mutex_t report_lock;
  char *oom_report;         /* last OOM report, owned */
  pthread_mutex_t log_lock;
  int log_sinks;            /* MF_SINK_* bits, read without the lock on the hot path */
  FILE *log;
  uint64_t log_start_ns;
  mf_trace_event *trace;    /* the in-memory trace (trace.c), NULL when off */
  size_t trace_len, trace_cap, trace_dropped;
  uint64_t trace_start_ns;
  /* Window counters over the recorded alloc and free events (trace.c): the
   * allocated bytes since the trace's start, their value at the last mark and
   * their peak since it. */
  int64_t trace_value, trace_mark_value, trace_peak;
};

/* ------------------------------------------------------------- allocator.c */
/* Block metadata from the device's recycled list (NULL: out of host memory). */
mf_block *_mf_block_new(mf_device *d);
void _mf_block_recycle(mf_device *d, mf_block *b);
/* The device's list of every segment. */
void _mf_segment_link(mf_device *d, mf_segment *s);
void _mf_segment_unlink(mf_device *d, mf_segment *s);
/* Keep the pool's wholly-free list in step with the segment's blocks. */
void _mf_segment_update_free(mf_segment *s);
void _mf_segment_set_free(mf_segment *s, bool now);
/* Complete the frees that waited on events; with wait, block until all have. */
void _mf_process_pending(mf_device *d, bool wait);
/* Return a block to its pool's free index, merged with free neighbours. */
void _mf_release_block(mf_device *d, mf_block *b);

/* ------------------------------------------------------------------- vmm.c */
/* Decide, at creation, whether the allocator maps pages (sets a->granule). */
mf_status _mf_vmm_setup(mf_allocator *a);
/* A request of `size` rounded bytes missed `pool`: map granules (moved from
 * free blocks first, then new ones) so that a free block of at least size
 * exists, climbing the OOM ladder. NULL with *status on failure. */
mf_block *_mf_vmm_grow(mf_device *d, mf_pool *pool, size_t size, mf_status *status);
/* A free block of the large pool that holds no whole granule (so nothing
 * could move it) and fits a small request, or NULL. */
mf_block *_mf_vmm_fragment(const mf_pool *large, size_t size);
/* empty_cache: unmap and release every whole free granule. */
void _mf_vmm_release_cached(mf_device *d);
/* Destruction: give every granule and range of the device back. */
void _mf_vmm_destroy_device(mf_device *d);

/* ------------------------------------------------------------ free_index.c */
void _mf_index_insert(mf_pool *pool, mf_block *block);
void _mf_index_remove(mf_pool *pool, mf_block *block);
/* The best fit: the smallest free block of at least size (ties: lowest address). */
mf_block *_mf_index_lower_bound(const mf_pool *pool, size_t size);
/* Visit every block in order; stops early when fn returns false. */
bool _mf_index_walk(const mf_pool *pool, bool (*fn)(const mf_block *b, void *ctx), void *ctx);
/* The same from the largest block down. */
bool _mf_index_walk_desc(const mf_pool *pool, bool (*fn)(const mf_block *b, void *ctx), void *ctx);

/* ------------------------------------------------------------- block_map.c */
mf_status _mf_map_insert(mf_block_map *m, mf_block *block);
mf_block *_mf_map_find(const mf_block_map *m, uintptr_t addr);
mf_block *_mf_map_remove(mf_block_map *m, uintptr_t addr);
void _mf_map_free(mf_block_map *m);

/* ------------------------------------------------------------ debug checks */
/* Graded as mimalloc's MI_DEBUG. MEMFIT_DEBUG=0 (the default): none.
 * 1: cheap asserts on the counters (a current value never below zero).
 * 2: also mf_check after every operation by default (the check option).
 * A failed assert is a bug in memfit, not a condition a caller can handle: it
 * prints what and where, and aborts. Only debug builds have them (the test
 * suite's sanitizer build is level 1): a release build never aborts. */
#ifndef MEMFIT_DEBUG
#define MEMFIT_DEBUG 0
#endif
#if MEMFIT_DEBUG >= 1
void _mf_debug_fail(const char *what, const char *file, int line, long long value) __attribute__((noreturn));
#define MF_DEBUG_ASSERT(cond, what, value) \
  (MF_LIKELY(cond) ? (void)0 : _mf_debug_fail(what, __FILE__, __LINE__, (long long)(value)))
#else
#define MF_DEBUG_ASSERT(cond, what, value) ((void)0)
#endif

/* ----------------------------------------------------------------- stats.c */
static inline void _mf_counter_add(mf_counter *c, int64_t delta) {
  c->current += delta;
  if (delta > 0) c->total += delta;
  if (c->current > c->peak) c->peak = c->current;
  MF_DEBUG_ASSERT(c->current >= 0, "a stats counter fell below zero", c->current);
}
/* The hot-path halves of _mf_counter_add: growth moves peak and total, a
 * decrease only the current value. */
static inline void _mf_counter_inc(mf_counter *c, int64_t delta) {
  int64_t current = c->current + delta;
  c->current = current;
  c->total += delta;
  c->peak = current > c->peak ? current : c->peak;
}
static inline void _mf_counter_dec(mf_counter *c, int64_t delta) {
  c->current -= delta;
  MF_DEBUG_ASSERT(c->current >= 0, "a stats counter fell below zero", c->current);
}
/* Account a block entering (+1) or leaving (-1) the live set under its tag. */
void _mf_stats_account(mf_device *d, const mf_block *b, int sign);
/* Make the tag table hold layer; false if host memory ran out. */
bool _mf_stats_reserve_layer(mf_device *d, uint32_t layer);
mf_tag_stats *_mf_stats_tag(mf_device *d, uint32_t layer, unsigned category);

/* ---------------------------------------------------------------- report.c */
/* Build the human-readable report of a device's state (lock held). */
void _mf_report_build(mf_device *d, mf_sbuf *out, const char *headline);

/* ------------------------------------------------------------- event_log.c */
/* Where events go: the text log file and the in-memory trace (trace.c). */
enum { MF_SINK_FILE = 1, MF_SINK_TRACE = 2 };
typedef enum { MF_LOG_ALLOC, MF_LOG_FREE, MF_LOG_SEGMENT_MAP, MF_LOG_SEGMENT_UNMAP } mf_log_kind;
void _mf_log_write(mf_allocator *a, int device, mf_log_kind kind, uintptr_t addr, size_t requested,
                   size_t size, uintptr_t stream, mf_tag tag);
/* Log an event if a sink is on: one relaxed load when none is. */
#define _mf_log_event(a, ...)                                              \
  do {                                                                     \
    if (MF_UNLIKELY(__atomic_load_n(&(a)->log_sinks, __ATOMIC_RELAXED)))   \
      _mf_log_write((a), __VA_ARGS__);                                     \
  } while (0)
uint64_t _mf_now_ns(void);

/* ------------------------------------------------------------------ trace.c */
/* Append one event to the in-memory trace (log_lock held). */
void _mf_trace_append(mf_allocator *a, uint8_t kind, int device, uintptr_t addr, size_t requested, size_t size,
                      mf_tag tag, mf_tag old);
/* Record a re-tag in the sinks that are on. */
void _mf_log_retag(mf_allocator *a, int device, uintptr_t addr, size_t requested, size_t size, mf_tag old,
                   mf_tag tag);
void _mf_trace_free(mf_allocator *a);

/* ------------------------------------------------------------ host_pages.c */
/* The host backend's granules: memfd pages, reserved ranges, fork safety. */
typedef struct mf_host_pages mf_host_pages;
mf_status _mf_host_pages_new(int devices, mf_host_pages **out);
void _mf_host_pages_free(mf_host_pages *p);
mf_status _mf_host_pages_granularity(mf_host_pages *p, int device, size_t *minimum, size_t *recommended);
mf_status _mf_host_pages_reserve(size_t size, size_t align, uintptr_t *addr);
mf_status _mf_host_pages_unreserve(uintptr_t addr, size_t size);
mf_status _mf_host_pages_create(mf_host_pages *p, int device, size_t granule, size_t n, uint64_t *handles);
void _mf_host_pages_release(mf_host_pages *p, int device, size_t granule, size_t n, const uint64_t *handles);
mf_status _mf_host_pages_map(mf_host_pages *p, int device, uintptr_t addr, size_t granule, size_t n,
                             const uint64_t *handles);
mf_status _mf_host_pages_unmap(uintptr_t addr, size_t granule, size_t n);

/* ----------------------------------------------------------------- check.c */
mf_status _mf_check_device(mf_device *d);

#endif /* MEMFIT_INTERNAL_H */
