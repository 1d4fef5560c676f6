/* memfit.h — the public C API of memfit's caching allocator.
 *
 * A device-agnostic caching allocator whose every live block carries a tag
 * {category, layer, phase}, so that stats answer "which layer and which kind of
 * tensor holds this memory". Intended use:
 *
 *     mf_allocator *a;
 *     if (mf_allocator_create("backend:virtual,capacity:8GiB", &a) != MF_OK)
 *         fprintf(stderr, "%s\n", mf_last_error());
 *     mf_tag_push(mf_layer_intern("blocks.0"), MF_PHASE_FORWARD, MF_CAT_ACTIVATION);
 *     void *p = mf_malloc(a, 0, 1 << 20, 0);          // NULL on OOM: see mf_oom_report()
 *     mf_tag_pop();
 *     mf_free(a, p);
 *     mf_allocator_destroy(a);
 *
 * Conventions: functions that can fail return an mf_status and leave a message
 * in the calling thread's mf_last_error(). Nothing in the library aborts the
 * process for a condition the caller can handle.
 */
#ifndef MEMFIT_MEMFIT_H
#define MEMFIT_MEMFIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(MEMFIT_BUILDING) && defined(__GNUC__)
#define MF_API __attribute__((visibility("default")))
#else
#define MF_API
#endif

#define MF_VERSION_MAJOR 0
#define MF_VERSION_MINOR 1
#define MF_VERSION_PATCH 0

/* ---------------------------------------------------------------- status */

typedef enum mf_status {
  MF_OK = 0,
  MF_ERR_INVALID = 1,     /* bad argument: unknown pointer, bad option, ... */
  MF_ERR_OOM = 2,         /* out of memory after the whole OOM ladder */
  MF_ERR_BACKEND = 3,     /* the backend failed (driver error, ...) */
  MF_ERR_NO_DEVICE = 4,   /* backend unavailable: no driver, no device */
  MF_ERR_HOST_MEMORY = 5, /* host metadata could not be allocated */
  MF_ERR_CORRUPT = 6,     /* mf_check found a broken invariant */
  MF_ERR_IO = 7,          /* a file could not be written */
  MF_ERR_UNSUPPORTED = 8  /* a use memfit refuses: CUDA graph capture on the allocating stream */
} mf_status;

/* The calling thread's message for the last failed call ("" if none). */
MF_API const char *mf_last_error(void);
/* The status that goes with mf_last_error(): tells an OOM (MF_ERR_OOM) from a
 * backend failure after mf_malloc returned NULL. */
MF_API mf_status mf_last_status(void);
MF_API const char *mf_status_name(mf_status s);
MF_API const char *mf_version(void);

/* ------------------------------------------------------------------ tags */

/* Categories follow PyTorch's memory profiler. Keep MF_CAT_COUNT last. */
typedef enum mf_category {
  MF_CAT_PARAMETER = 0,
  MF_CAT_GRADIENT,
  MF_CAT_OPTIMIZER_STATE,
  MF_CAT_ACTIVATION,
  MF_CAT_TEMPORARY,
  MF_CAT_INPUT,
  MF_CAT_OTHER,
  MF_CAT_COUNT
} mf_category;

typedef enum mf_phase {
  MF_PHASE_NONE = 0,
  MF_PHASE_FORWARD,
  MF_PHASE_BACKWARD,
  MF_PHASE_OPTIMIZER,
  MF_PHASE_RECOMPUTE, /* a checkpointed layer's forward run again in backward */
  MF_PHASE_COUNT
} mf_phase;

typedef struct mf_tag {
  uint32_t layer; /* an id from mf_layer_intern; 0 is "no layer" */
  uint8_t category;
  uint8_t phase;
} mf_tag;

MF_API const char *mf_category_name(mf_category c);
MF_API const char *mf_phase_name(mf_phase p);
/* MF_CAT_COUNT and MF_PHASE_COUNT, for bindings that read the names from here
 * instead of copying them: the names are those of ids 0 .. count-1. */
MF_API int mf_category_count(void);
MF_API int mf_phase_count(void);
/* Parse a category / phase name ("activation", "forward"); -1 if unknown. */
MF_API int mf_category_from_name(const char *name);
MF_API int mf_phase_from_name(const char *name);

/* Layer names are interned process-wide: the same name gives the same id.
 * Returns 0 (the "no layer" id) and sets mf_last_error on failure. */
MF_API uint32_t mf_layer_intern(const char *name);
/* The name of a layer id, or NULL if unknown. Id 0 is "". */
MF_API const char *mf_layer_name(uint32_t layer);
MF_API uint32_t mf_layer_count(void);
/* Forget every layer name, so that ids start again from 1 (for tests, and for
 * a process that profiles model after model). MF_ERR_INVALID, changing
 * nothing, while any allocator exists (their stats are indexed by layer id) or
 * while the calling thread's tag stack or the shared tag holds an id; other
 * threads' stacks must be empty too. Pointers from mf_layer_name die with it. */
MF_API mf_status mf_layer_reset(void);

/* The calling thread's tag context: new blocks take the tag on top of its
 * stack; when the stack is empty, the shared tag (below) if one is set, else
 * {0, MF_CAT_OTHER, MF_PHASE_NONE}. The stack holds
 * MF_TAG_STACK_DEPTH entries; push fails with MF_ERR_INVALID beyond it, pop
 * fails on an empty stack. */
#define MF_TAG_STACK_DEPTH 64
MF_API mf_status mf_tag_push(uint32_t layer, mf_phase phase, mf_category category);
MF_API mf_status mf_tag_pop(void);
MF_API mf_tag mf_tag_current(void);
MF_API int mf_tag_depth(void);
/* The process-wide shared tag, which allocations from any thread with an
 * empty stack take. For work that PyTorch runs on threads of its own: on CUDA,
 * autograd runs backward on a device thread, so a tag that the training thread
 * pushes never reaches backward's allocations, while the shared one does. Set
 * replaces it; clear unsets it. */
MF_API mf_status mf_tag_set_shared(mf_tag tag);
MF_API void mf_tag_clear_shared(void);

/* ---------------------------------------------------------------- options */

/* One table of options. Every allocator has its own copy, filled from the
 * defaults, then from the string given to mf_allocator_create. Sizes accept
 * B, K/KiB, M/MiB, G/GiB, T/TiB; booleans true/false/1/0/yes/no/on/off.
 * See allocator/README.md for the table. */
typedef struct mf_options mf_options;

MF_API mf_options *mf_options_new(void); /* defaults; NULL if out of host memory */
MF_API void mf_options_free(mf_options *o);
MF_API mf_options *mf_options_clone(const mf_options *o);
/* Set one key. An unknown key or a bad value is MF_ERR_INVALID naming it. */
MF_API mf_status mf_options_set(mf_options *o, const char *key, const char *value);
/* Parse "key:value,key:value". Stops at the first error. */
MF_API mf_status mf_options_parse(mf_options *o, const char *conf);
/* Parse the MEMFIT_CONF environment variable, if set. */
MF_API mf_status mf_options_parse_env(mf_options *o);
/* Read one option as text into buf. */
MF_API mf_status mf_options_get(const mf_options *o, const char *key, char *buf, size_t len);
/* Number of option keys and their names/descriptions, for help screens. */
MF_API int mf_options_count(void);
MF_API const char *mf_options_key(int i);
MF_API const char *mf_options_help(int i);
/* Whether key i selects the backend (backend, devices): the CUDA plugin's
 * backend is cuda, so these are not keys to take from PyTorch's variables. */
MF_API int mf_options_selects_backend(int i);
/* Parse a size such as "1.5GiB" or "512" (integers exactly, up to 2^64-1). */
MF_API mf_status mf_parse_size(const char *text, uint64_t *out);
/* The one byte formatter (allocator, planner, replayer and Python print sizes
 * with it): "512 B" below 1 KiB, else two decimals of the largest binary unit
 * up to PiB ("1.50 MiB"); negative amounts (differences) keep their sign.
 * Writes into buf (NUL-terminated, cut to len) and returns buf. */
MF_API const char *mf_format_bytes(double bytes, char *buf, size_t len);

/* ---------------------------------------------------------------- backend */

/* A backend maps and unmaps segments of device memory and provides events.
 * The vtable is public so that tests and embedders can supply their own. All
 * functions return mf_status; a backend never aborts. */
typedef struct mf_backend mf_backend;
typedef struct mf_backend_ops {
  const char *name;
  int (*device_count)(mf_backend *b);
  /* Total memory of the device in bytes (what a capacity of 0 means). */
  mf_status (*total_memory)(mf_backend *b, int device, uint64_t *bytes);
  /* Map a segment. MF_ERR_OOM when the device has no room. */
  mf_status (*map)(mf_backend *b, int device, size_t size, uintptr_t *addr);
  mf_status (*unmap)(mf_backend *b, int device, uintptr_t addr, size_t size);
  /* Events: record on a stream, query, wait. */
  mf_status (*event_record)(mf_backend *b, int device, uintptr_t stream, void **event);
  mf_status (*event_query)(mf_backend *b, int device, void *event, bool *complete);
  mf_status (*event_synchronize)(mf_backend *b, int device, void *event);
  void (*event_destroy)(mf_backend *b, int device, void *event);
  /* Wait for all work on the device (before memory goes back). May be NULL. */
  mf_status (*synchronize)(mf_backend *b, int device);
  void (*destroy)(mf_backend *b);

  /* Page mapping ("vmm", see allocator/README.md, Note [Page-mapped pools]):
   * physical granules mapped into reserved virtual ranges. All optional: a
   * backend that leaves vmm_granularity NULL is used with segments (map/unmap
   * above). Sizes and addresses are multiples of the granule. */
  /* The smallest granule the device can map and the one it recommends (bytes;
   * the recommended one is a multiple of the minimum), or an error saying why
   * it cannot map pages (no memfd, a driver without virtual memory). */
  mf_status (*vmm_granularity)(mf_backend *b, int device, size_t *minimum, size_t *recommended);
  /* Reserve / free a range of addresses with no memory behind it. */
  mf_status (*vmm_reserve)(mf_backend *b, int device, size_t size, size_t align, uintptr_t *addr);
  mf_status (*vmm_unreserve)(mf_backend *b, int device, uintptr_t addr, size_t size);
  /* Create n physical granules (all or none; MF_ERR_OOM when the device has no
   * room); their handles go to handles[0..n). Release gives them back. */
  mf_status (*vmm_create)(mf_backend *b, int device, size_t granule, size_t n, uint64_t *handles);
  void (*vmm_release)(mf_backend *b, int device, size_t granule, size_t n, const uint64_t *handles);
  /* Map handles[i] at addr + i * granule, readable and writable (all or none);
   * unmap n granules from addr. Unmapping needs the device idle on those pages:
   * the allocator calls synchronize (when not NULL) first. */
  mf_status (*vmm_map)(mf_backend *b, int device, uintptr_t addr, size_t granule, size_t n,
                       const uint64_t *handles);
  mf_status (*vmm_unmap)(mf_backend *b, int device, uintptr_t addr, size_t granule, size_t n);

  /* Whether the stream is capturing a CUDA graph (optional; NULL: never).
   * mf_malloc refuses such a stream before it touches anything: memory handed
   * to a graph is the graph's until the graph is destroyed, and queries,
   * synchronizations and unmaps during capture invalidate the capture. */
  mf_status (*stream_capturing)(mf_backend *b, int device, uintptr_t stream, bool *capturing);
} mf_backend_ops;

struct mf_backend {
  const mf_backend_ops *ops;
};

/* Addresses only: nothing is touched, so traces larger than this machine's
 * memory replay. capacity 0 means 1 TiB per device. */
MF_API mf_status mf_backend_virtual_create(int devices, uint64_t capacity, mf_backend **out);
/* Real host memory from jemalloc (loaded at run time), capped at capacity
 * (0: the machine's physical memory) to simulate a device budget. */
MF_API mf_status mf_backend_host_create(int devices, uint64_t capacity, mf_backend **out);
/* CUDA through the driver API loaded at run time (dlopen libcuda.so.1).
 * MF_ERR_NO_DEVICE where there is no driver or no device, or where memfit was
 * built without the CUDA headers. */
MF_API mf_status mf_backend_cuda_create(mf_backend **out);
/* Whether mf_backend_cuda_create can load the driver: libcuda.so.1 loads and
 * has every required entry point. Calls nothing in it (no cuInit), so CUDA is
 * not initialized: safe before fork or before CUDA_VISIBLE_DEVICES is final.
 * MF_ERR_NO_DEVICE with the reason otherwise. */
MF_API mf_status mf_backend_cuda_probe(void);
MF_API void mf_backend_destroy(mf_backend *b);

/* The simulated backends (virtual, host) complete their events by hand:
 * mf_backend_sim_complete(b, device, stream) completes every event recorded so
 * far on that stream of that device; stream UINTPTR_MAX: on every stream of
 * that device. */
MF_API mf_status mf_backend_sim_complete(mf_backend *b, int device, uintptr_t stream);
/* Fault injection for tests: the next n maps (segment maps, or granule
 * creations with vmm) of the simulated backend fail with MF_ERR_OOM (n < 0:
 * never fail). */
MF_API mf_status mf_backend_sim_fail_maps(mf_backend *b, int n);
/* What a simulated backend holds on a device, by its own count: the bytes of
 * physical memory it gave out (segments, or granules created) and, with vmm,
 * the bytes of granules mapped. Tests hold the allocator's reserved bytes
 * against these. */
MF_API mf_status mf_backend_sim_usage(mf_backend *b, int device, uint64_t *physical_bytes,
                                      uint64_t *mapped_bytes);

/* -------------------------------------------------------------- allocator */

typedef struct mf_allocator mf_allocator;

/* Create an allocator from an options string (may be NULL or ""): the
 * backend is chosen by the option "backend" (cuda by default; virtual, host). */
MF_API mf_status mf_allocator_create(const char *conf, mf_allocator **out);
/* Create an allocator over a given backend, which it then owns (it is
 * destroyed with the allocator, or at once if creation fails). options may be
 * NULL for the defaults; it is copied. */
MF_API mf_status mf_allocator_create_with(mf_backend *backend, const mf_options *options,
                                          mf_allocator **out);
/* Releases every segment. Live blocks are forgotten (their memory returned). */
MF_API void mf_allocator_destroy(mf_allocator *a);
MF_API int mf_allocator_device_count(const mf_allocator *a);
MF_API const mf_options *mf_allocator_options(const mf_allocator *a);
MF_API mf_backend *mf_allocator_backend(mf_allocator *a);
/* The granule of the page-mapped pools in bytes, or 0 when the allocator uses
 * segments (vmm:off, or vmm:auto on a backend that cannot map pages). */
MF_API size_t mf_allocator_granule(const mf_allocator *a);

/* Allocate size bytes on device for stream. Returns NULL when the OOM ladder
 * fails (mf_last_error and mf_oom_report say why) or on bad arguments. A
 * request of 0 bytes gets a unique pointer of the smallest block. */
MF_API void *mf_malloc(mf_allocator *a, int device, size_t size, uintptr_t stream);
/* Like mf_malloc with an explicit tag instead of the thread's context. */
MF_API void *mf_malloc_tagged(mf_allocator *a, int device, size_t size, uintptr_t stream,
                              mf_tag tag);
/* Free a block from mf_malloc. An unknown pointer is MF_ERR_INVALID. NULL is a no-op. */
MF_API mf_status mf_free(mf_allocator *a, void *ptr);
/* Mark a live block as used on another stream: when freed, it is reused only
 * after an event recorded on that stream has completed. */
MF_API mf_status mf_record_stream(mf_allocator *a, void *ptr, uintptr_t stream);
/* Release every cached (free, whole) segment to the backend. */
MF_API mf_status mf_empty_cache(mf_allocator *a);
/* Re-tag a live block by its pointer (category, layer and phase). */
MF_API mf_status mf_retag(mf_allocator *a, void *ptr, mf_tag tag);
/* Re-tag every live block of a device (all devices when device < 0) whose
 * phase is `phase` and category `from` to category `to`; *count, if not NULL,
 * gets how many. A profiler calls it at the end of a forward pass: forward
 * allocations still alive then are activations. */
MF_API mf_status mf_retag_live(mf_allocator *a, int device, mf_phase phase, mf_category from, mf_category to,
                               size_t *count);
/* The tag, requested size and block size of a live block. */
MF_API mf_status mf_block_info(mf_allocator *a, void *ptr, mf_tag *tag, size_t *requested,
                               size_t *size);
/* Which device a live pointer belongs to, or -1. */
MF_API int mf_device_of(mf_allocator *a, void *ptr);
/* Change the capacity of one device (bytes; 0: the backend's total). */
MF_API mf_status mf_set_capacity(mf_allocator *a, int device, uint64_t bytes);
MF_API uint64_t mf_capacity(mf_allocator *a, int device);

/* Walk every segment and block of every device and check the invariants:
 * blocks tile their segment without overlap, free neighbours are coalesced,
 * the free-block index holds exactly the free blocks, and the stats equal the
 * sums over live blocks; with vmm also: segments are whole granules inside
 * their pool's reserved ranges, no granule is mapped twice, and reserved bytes
 * are the mapped granules. MF_ERR_CORRUPT with the first violation in
 * mf_last_error. */
MF_API mf_status mf_check(mf_allocator *a);

/* ------------------------------------------------------------------ stats */

/* A counter: current value, its peak since the last reset, and the running
 * total of increments. */
typedef struct mf_counter {
  int64_t current;
  int64_t peak;
  int64_t total;
} mf_counter;

/* The global stats of one device. The field list is one X-macro so the
 * struct, the printer and the JSON cannot drift apart. The struct starts with
 * its size and version so a foreign caller (ctypes) can check the layout. */
#define MF_STATS_COUNTERS(X)                                                        \
  X(requested_bytes) /* sum of requested sizes of live blocks */                    \
  X(allocated_bytes) /* sum of block sizes of live blocks (after rounding) */       \
  X(reserved_bytes)  /* sum of mapped segments */                                   \
  X(active_blocks)   /* live blocks */                                              \
  X(segments)        /* mapped segments */

#define MF_STATS_EVENTS(X)                                                         \
  X(allocs)          /* successful mf_malloc calls */                              \
  X(frees)                                                                         \
  X(cache_hits)      /* allocations served from a cached block */                  \
  X(cache_misses)    /* allocations that needed a new segment */                   \
  X(ooms)            /* requests that failed after the whole ladder */             \
  X(segment_maps)                                                                  \
  X(segment_unmaps)                                                                \
  X(ladder_releases) /* times the OOM ladder released cached memory or waited */   \
  X(deferred_frees)  /* frees held back by record_stream events */                 \
  X(granule_maps)    /* vmm: granules mapped (new, or moved from a free block) */  \
  X(granule_unmaps)  /* vmm: granules unmapped from free blocks */                 \
  X(granule_creates) /* vmm: physical granules taken from the backend */           \
  X(granule_releases) /* vmm: physical granules given back */                      \
  X(syncs)           /* device synchronizations before unmapping */

#define MF_STATS_VERSION 2
typedef struct mf_stats {
  uint32_t struct_size; /* sizeof(mf_stats) */
  uint32_t version;     /* MF_STATS_VERSION */
#define MF_X_COUNTER(name) mf_counter name;
  MF_STATS_COUNTERS(MF_X_COUNTER)
#undef MF_X_COUNTER
#define MF_X_EVENT(name) int64_t name;
  MF_STATS_EVENTS(MF_X_EVENT)
#undef MF_X_EVENT
} mf_stats;

/* Per (category, layer) stats: bytes (block sizes) and requested bytes with
 * their peaks, and the live block count. */
typedef struct mf_tag_stats {
  mf_counter bytes;
  mf_counter requested;
  mf_counter blocks;
} mf_tag_stats;

MF_API mf_status mf_get_stats(mf_allocator *a, int device, mf_stats *out);
/* The fields of mf_stats in order, for bindings that lay the struct out from
 * here: the mf_counter fields (MF_STATS_COUNTERS), then the int64_t event
 * fields (MF_STATS_EVENTS). Names of indexes past the end are NULL. */
MF_API int mf_stats_counter_count(void);
MF_API const char *mf_stats_counter_name(int i);
MF_API int mf_stats_event_count(void);
MF_API const char *mf_stats_event_name(int i);
/* Stats of one (category, layer) pair; zero if the pair never allocated. */
MF_API mf_status mf_get_tag_stats(mf_allocator *a, int device, mf_category category,
                                  uint32_t layer, mf_tag_stats *out);
/* Per-category totals over every layer. */
MF_API mf_status mf_get_category_stats(mf_allocator *a, int device, mf_category category,
                                       mf_tag_stats *out);
/* Peaks restart from the current values (all devices when device < 0). */
MF_API mf_status mf_reset_peaks(mf_allocator *a, int device);
/* Write the stats of a device as JSON (per category and per layer too). */
MF_API mf_status mf_stats_json(mf_allocator *a, int device, char *buf, size_t len,
                               size_t *needed);

/* ------------------------------------------------------------- OOM report */

/* The report of the last OOM on this allocator (any device), "" if none:
 * capacity, allocated by category, the 5 layers that hold the most,
 * reserved-but-free. Copied into buf (always NUL-terminated); *needed, if not
 * NULL, gets the full length plus one. */
MF_API mf_status mf_oom_report(mf_allocator *a, char *buf, size_t len, size_t *needed);
/* Write a report of the current state of a device in the same form. */
MF_API mf_status mf_memory_report(mf_allocator *a, int device, char *buf, size_t len,
                                  size_t *needed);

/* -------------------------------------------------------------- event log */

/* Log every alloc, free, segment map and unmap to a text file. The log is a
 * trace that memfit-replay accepts ("alloc <ptr> <bytes> <stream>", "free
 * <ptr>"), with time, device, block size and tag after a '#'; segment events
 * are comment lines. Also started by the option event_log:PATH. */
MF_API mf_status mf_event_log_start(mf_allocator *a, const char *path);
MF_API mf_status mf_event_log_stop(mf_allocator *a);

/* ------------------------------------------------------------------ trace */

/* An in-memory trace of every alloc, free, re-tag and segment map / unmap, plus
 * marks the caller inserts (a profiler marks the start and end of each layer's
 * forward and backward). Read back in one copy; this is what the Python
 * profile is computed from. The events of one thread are in program order.
 * Window counters: a mark's `requested` is how far the allocated bytes of the
 * recorded alloc and free events rose, at their peak since the previous mark
 * (or the trace's start), above their value there; so the peak of any window
 * between two marks is, over the marks after its first up to its last, the
 * largest of (the value at the mark before + that mark's rise), without
 * replaying the events in between. */
typedef enum mf_trace_kind {
  MF_TRACE_ALLOC = 0,
  MF_TRACE_FREE,          /* tag: the block's tag when freed */
  MF_TRACE_RETAG,         /* tag: the new tag; old_*: the one before */
  MF_TRACE_MARK,          /* addr: the caller's mark id; requested: the window's rise (below); device -1 */
  MF_TRACE_SEGMENT_MAP,   /* addr, size: the segment */
  MF_TRACE_SEGMENT_UNMAP
} mf_trace_kind;

typedef struct mf_trace_event {
  uint64_t t_ns;      /* since mf_trace_start */
  uint64_t addr;      /* block or segment address; a mark's id */
  uint64_t requested; /* requested bytes of the block */
  uint64_t size;      /* block (allocated) bytes, or segment bytes */
  uint32_t layer;
  uint8_t kind;       /* mf_trace_kind */
  uint8_t category;
  uint8_t phase;
  int8_t device;
  uint32_t old_layer;
  uint8_t old_category;
  uint8_t old_phase;
  uint16_t reserved;
} mf_trace_event; /* 48 bytes, no padding: ctypes and numpy read it as is */

/* Start (or restart, dropping what was recorded) a trace of at most
 * max_events events; later events are counted as dropped, not recorded. */
MF_API mf_status mf_trace_start(mf_allocator *a, size_t max_events);
/* Stop recording; the events stay readable until the next start. */
MF_API mf_status mf_trace_stop(mf_allocator *a);
/* Insert a mark with the caller's id (recorded only while tracing). */
MF_API mf_status mf_trace_mark(mf_allocator *a, uint64_t id);
/* How many events are recorded and how many were dropped. */
MF_API mf_status mf_trace_count(mf_allocator *a, size_t *events, size_t *dropped);
/* Copy events [first, first + max) into out; *copied gets how many. */
MF_API mf_status mf_trace_read(mf_allocator *a, size_t first, mf_trace_event *out, size_t max, size_t *copied);

/* --------------------------------------------------------------- snapshot */

/* Every segment of a device (device -1: of all devices) and the blocks that
 * tile it, as JSON, taken with the device locks held so that it is one
 * consistent instant: per segment its device, address, size, pool ("small" /
 * "large"), stream and whether it is page-mapped (vmm); per block its address,
 * size and state ("allocated", "free", or "pending_free": freed but held back
 * by record_stream events), and for allocated and pending blocks the requested
 * size and the tag (layer name, category, phase). Also the devices' stats and
 * the length of the in-memory trace at that instant (the events that lead to
 * this state). The bindings build PyTorch's memory_viz snapshot from it
 * (memfit.snapshot). Same (buf, len, needed) convention as mf_stats_json:
 * when len is too small the text is cut (always NUL-terminated) and *needed
 * says how much to give; the state can change before a second call, so
 * callers retry until *needed <= len. See allocator/README.md, "Snapshots". */
MF_API mf_status mf_snapshot_json(mf_allocator *a, int device, char *buf, size_t len, size_t *needed);

#ifdef __cplusplus
}
#endif
#endif /* MEMFIT_MEMFIT_H */
