/* emucuda.c — an emulated CUDA driver, built as libcuda.so.1, so that memfit's
 * cuda backend runs and is tested on machines without a GPU. It exports the
 * driver calls memfit and its tests make, by their versioned names and with
 * the real driver's ABI, over host memory, and enforces the rules the real
 * driver enforces (contexts, the VMM mapping rules, stream order, events of
 * one context, stream capture). Tests steer it through the emucuda_* control
 * functions; emucuda.h documents them and the EMUCUDA_* settings.
 *
 * Design: one lock (g_lock) guards every table; each stream has a worker
 * thread that runs its queue in order (host functions run without the lock).
 * Handles are addresses of slots in static tables, so a bad handle is caught
 * by a range check instead of being dereferenced. Device memory is real: the
 * cuMemAlloc kind is an anonymous mapping, the cuMemCreate kind an extent of
 * one memfd per device, mapped MAP_SHARED into PROT_NONE reservations, so data
 * moves with its pages and unmapped or unprotected memory really faults.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "emucuda.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* cuda.h maps these names to newer versions; the emulator exports the exact
 * symbols, old ABIs included where a caller may look them up. */
#undef cuStreamGetCaptureInfo

/* Prototypes for exported symbols that cuda.h (13) declares only under other
 * names, written to the driver's ABI. */
CUresult CUDAAPI cuStreamGetCaptureInfo(CUstream hStream, CUstreamCaptureStatus *captureStatus_out, cuuint64_t *id_out);
CUresult CUDAAPI cuStreamGetCaptureInfo_v2(CUstream hStream, CUstreamCaptureStatus *captureStatus_out,
                                           cuuint64_t *id_out, CUgraph *graph_out,
                                           const CUgraphNode **dependencies_out, size_t *numDependencies_out);
CUresult CUDAAPI cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev);

/* ------------------------------------------------------------- limits */

#define EMU_MAX_DEVICES 16
#define EMU_MAX_CONTEXTS (EMU_MAX_DEVICES + 64) /* primary ones first, then cuCtxCreate's */
#define EMU_MAX_STREAMS 512
#define EMU_MAX_EVENTS 16384
#define EMU_CTX_STACK 64
#define EMU_TRACE_MAX 65536
#define EMU_MAX_INJECTIONS 32

/* ------------------------------------------------------ the entry points */

/* Every exported driver call, for the call counters, failure injection and
 * the trace. The names are the exported symbols. */
#define EMU_CALLS(X)                                                                                   \
  X(cuInit) X(cuDriverGetVersion) X(cuDeviceGetCount) X(cuDeviceGet) X(cuDeviceGetName)               \
  X(cuDeviceTotalMem_v2) X(cuDeviceGetAttribute) X(cuDevicePrimaryCtxRetain)                          \
  X(cuDevicePrimaryCtxRelease_v2) X(cuCtxCreate_v2) X(cuCtxDestroy_v2) X(cuCtxGetCurrent)             \
  X(cuCtxSetCurrent) X(cuCtxPushCurrent_v2) X(cuCtxPopCurrent_v2) X(cuCtxGetDevice)                   \
  X(cuCtxSynchronize) X(cuMemAlloc_v2) X(cuMemFree_v2) X(cuMemGetInfo_v2) X(cuMemsetD8_v2)            \
  X(cuStreamCreate) X(cuStreamDestroy_v2) X(cuStreamSynchronize) X(cuStreamQuery) X(cuStreamGetCtx)   \
  X(cuStreamIsCapturing) X(cuStreamGetCaptureInfo) X(cuStreamGetCaptureInfo_v2)                      \
  X(cuStreamGetCaptureInfo_v3) X(cuThreadExchangeStreamCaptureMode) X(cuLaunchHostFunc)               \
  X(cuEventCreate) X(cuEventRecord) X(cuEventQuery) X(cuEventSynchronize) X(cuEventDestroy_v2)        \
  X(cuMemGetAllocationGranularity) X(cuMemCreate) X(cuMemRelease) X(cuMemAddressReserve)              \
  X(cuMemAddressFree) X(cuMemMap) X(cuMemUnmap) X(cuMemSetAccess) X(cuGetErrorName)                   \
  X(cuGetErrorString)

enum {
#define EMU_X_ENUM(name) EMU_CALL_##name,
  EMU_CALLS(EMU_X_ENUM)
#undef EMU_X_ENUM
      EMU_CALL_COUNT
};

static const char *const g_call_names[EMU_CALL_COUNT] = {
#define EMU_X_NAME(name) #name,
    EMU_CALLS(EMU_X_NAME)
#undef EMU_X_NAME
};

/* ------------------------------------------------------------- settings */

typedef struct emu_settings {
  int devices;
  size_t total;          /* bytes per device */
  size_t granule;        /* minimum granularity */
  size_t granule_rec;    /* recommended granularity */
  bool vmm;              /* CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED */
  CUresult init_error;   /* what cuInit returns, CUDA_SUCCESS for none */
  long wait_timeout_ms;  /* a synchronizing call gives up after this */
} emu_settings;

/* ----------------------------------------------------------------- state */

typedef struct emu_stream emu_stream;

typedef struct emu_ctx {
  bool in_use;   /* primary: created on the first retain; others: until destroyed */
  bool primary;
  int device;
  int refcount;  /* primary: retains; a created context: 1 */
  emu_stream *default_stream; /* stream 0 of this context, created on first use */
  CUresult sticky;            /* an illegal access by this context's work */
} emu_ctx;

enum { EMU_STREAM_FREE = 0, EMU_STREAM_LIVE, EMU_STREAM_DESTROYED /* draining its queue */ };
enum { EMU_WORK_HOST_FUNC, EMU_WORK_MEMSET, EMU_WORK_EVENT };

typedef struct emu_event {
  bool in_use;
  emu_ctx *ctx;
  uint64_t recorded; /* generation of the latest record */
  uint64_t done;     /* generation of the latest record that ran */
  int pending;       /* records queued and not run: the slot is not reused before 0 */
  bool captured;     /* last recorded into a capture */
} emu_event;

typedef struct emu_work {
  struct emu_work *next;
  int kind;
  CUhostFn fn;
  void *data;
  uintptr_t dst;
  size_t n;
  unsigned char value;
  emu_event *event;
  uint64_t gen;
} emu_work;

struct emu_stream {
  int state;
  emu_ctx *ctx;
  unsigned flags;
  bool is_default;
  bool held;
  emu_work *head, *tail;
  uint64_t submitted, completed;
  CUstreamCaptureStatus capture;
  CUstreamCaptureMode capture_mode;
  pthread_t capture_thread;
  uint64_t capture_id;
};

typedef struct emu_alloc { /* cuMemAlloc */
  uintptr_t addr;
  size_t size, charged;
  int device;
} emu_alloc;

typedef struct emu_reservation { /* cuMemAddressReserve */
  uintptr_t addr;
  size_t size;
} emu_reservation;

typedef struct emu_phys { /* cuMemCreate */
  bool in_use;
  bool released; /* cuMemRelease called; freed when also unmapped */
  int device;
  uint32_t gen;  /* in the handle, so a stale handle is told from a new one */
  size_t offset, size; /* extent of the device's memfd */
  int maps;
} emu_phys;

typedef struct emu_mapping { /* cuMemMap */
  uintptr_t addr;
  size_t size;
  size_t phys; /* index into g_phys */
  int prot;
} emu_mapping;

typedef struct emu_device {
  size_t used; /* cuMemAlloc + cuMemCreate bytes */
  int memfd;   /* the device's physical memory for cuMemCreate, -1 until used */
  uint8_t *unit_used; /* one byte per minimum granule of the memfd */
  size_t units;
} emu_device;

/* A growable array of T, for the tables that have no fixed bound. */
#define EMU_VEC(T) struct { T *at; size_t len, cap; }
#define EMU_PUSH(v, item)                                                              \
  (((v).len < (v).cap || emu_grow((void **)&(v).at, &(v).cap, sizeof *(v).at)) &&     \
   ((v).at[(v).len++] = (item), true))

static bool emu_grow(void **at, size_t *cap, size_t elem) {
  size_t n = *cap ? *cap * 2 : 16;
  void *p = realloc(*at, n * elem);
  if (!p) return false;
  *at = p;
  *cap = n;
  return true;
}

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_work = PTHREAD_COND_INITIALIZER;     /* workers wait for items here */
static pthread_cond_t g_progress = PTHREAD_COND_INITIALIZER; /* synchronizing calls wait here */

static bool g_settings_read;
static CUresult g_settings_error = CUDA_SUCCESS;
static emu_settings g_set;
static atomic_bool g_initialized;

static emu_device g_devices[EMU_MAX_DEVICES];
static emu_ctx g_ctx[EMU_MAX_CONTEXTS];
static emu_stream g_streams[EMU_MAX_STREAMS];
static emu_event g_events[EMU_MAX_EVENTS];
static EMU_VEC(emu_alloc) g_allocs;
static EMU_VEC(emu_reservation) g_reservations;
static EMU_VEC(emu_mapping) g_mappings;
static EMU_VEC(emu_phys) g_phys;
static int g_active_captures;
static uint64_t g_capture_ids;

static _Thread_local emu_ctx *tls_stack[EMU_CTX_STACK];
static _Thread_local int tls_depth;
static _Thread_local CUstreamCaptureMode tls_capture_mode = CU_STREAM_CAPTURE_MODE_GLOBAL;

/* Counters of the control API. */
static atomic_ullong g_calls[EMU_CALL_COUNT];
static atomic_ullong g_violations, g_illegal, g_unsafe_unmaps, g_timeouts;

/* Failure injection and the call trace, under their own lock: every entry
 * point passes through them before it takes g_lock. */
static pthread_mutex_t g_meta_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int g_armed; /* injections armed: the fast path skips the lock at 0 */
static struct {
  int call, skip, remaining;
  CUresult result;
} g_inject[EMU_MAX_INJECTIONS];
static atomic_bool g_tracing;
static uint16_t g_trace[EMU_TRACE_MAX];
static size_t g_trace_len;

/* --------------------------------------------------------------- helpers */

static size_t page_size(void) { return (size_t)sysconf(_SC_PAGESIZE); }

static size_t round_up(size_t x, size_t g) { return (x + g - 1) / g * g; }
static bool is_pow2(size_t x) { return x && !(x & (x - 1)); }

static CUresult emu_enter(int call, bool needs_init) {
  atomic_fetch_add_explicit(&g_calls[call], 1, memory_order_relaxed);
  CUresult r = CUDA_SUCCESS;
  if (atomic_load_explicit(&g_tracing, memory_order_relaxed) ||
      atomic_load_explicit(&g_armed, memory_order_relaxed)) {
    pthread_mutex_lock(&g_meta_lock);
    if (atomic_load(&g_tracing) && g_trace_len < EMU_TRACE_MAX) g_trace[g_trace_len++] = (uint16_t)call;
    for (int i = 0; i < EMU_MAX_INJECTIONS; i++) {
      if (g_inject[i].call != call || g_inject[i].remaining <= 0) continue;
      if (g_inject[i].skip > 0) {
        g_inject[i].skip--;
        break;
      }
      r = g_inject[i].result;
      if (--g_inject[i].remaining == 0) {
        g_inject[i].call = -1;
        atomic_fetch_sub(&g_armed, 1);
      }
      break;
    }
    pthread_mutex_unlock(&g_meta_lock);
  }
  if (r == CUDA_SUCCESS && needs_init && !atomic_load_explicit(&g_initialized, memory_order_acquire))
    r = CUDA_ERROR_NOT_INITIALIZED;
  return r;
}

#define EMU_ENTER(name)                                                  \
  do {                                                                   \
    CUresult emu_entered_ = emu_enter(EMU_CALL_##name, true);            \
    if (emu_entered_ != CUDA_SUCCESS) return emu_entered_;               \
  } while (0)
#define EMU_ENTER_NO_INIT(name)                                          \
  do {                                                                   \
    CUresult emu_entered_ = emu_enter(EMU_CALL_##name, false);           \
    if (emu_entered_ != CUDA_SUCCESS) return emu_entered_;               \
  } while (0)

/* Handles are slot addresses: recognised by range and alignment, never
 * dereferenced before that. */
static emu_ctx *ctx_of(CUcontext h) {
  uintptr_t p = (uintptr_t)h, base = (uintptr_t)g_ctx;
  if (p < base || p >= base + sizeof g_ctx || (p - base) % sizeof g_ctx[0]) return NULL;
  return (emu_ctx *)h;
}

static emu_stream *stream_slot(CUstream h) {
  uintptr_t p = (uintptr_t)h, base = (uintptr_t)g_streams;
  if (p < base || p >= base + sizeof g_streams || (p - base) % sizeof g_streams[0]) return NULL;
  return (emu_stream *)h;
}

static emu_event *event_of(CUevent h) {
  uintptr_t p = (uintptr_t)h, base = (uintptr_t)g_events;
  if (p < base || p >= base + sizeof g_events || (p - base) % sizeof g_events[0]) return NULL;
  emu_event *e = (emu_event *)h;
  return e->in_use ? e : NULL;
}

static bool device_ok(CUdevice d) { return d >= 0 && d < g_set.devices; }

/* The calling thread's current context; g_lock held. */
static CUresult current_ctx(emu_ctx **out) {
  emu_ctx *c = tls_depth ? tls_stack[tls_depth - 1] : NULL;
  if (!c) return CUDA_ERROR_INVALID_CONTEXT;
  if (!c->in_use || c->refcount <= 0) return CUDA_ERROR_CONTEXT_IS_DESTROYED;
  *out = c;
  return CUDA_SUCCESS;
}

/* ------------------------------------------------------------- settings */

/* "1073741824", "64MiB", "2G", "512K": binary units. */
static bool parse_size(const char *s, size_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s) return false;
  unsigned shift = 0;
  switch (*end) {
    case 'K': case 'k': shift = 10; end++; break;
    case 'M': case 'm': shift = 20; end++; break;
    case 'G': case 'g': shift = 30; end++; break;
    case 'T': case 't': shift = 40; end++; break;
    default: break;
  }
  if (shift && *end == 'i') end++;
  if (*end == 'B') end++;
  if (*end) return false;
  if (shift && v > (~0ull >> shift)) return false;
  *out = (size_t)(v << shift);
  return true;
}

static CUresult code_from_name(const char *s, bool *ok);

static CUresult settings_fail(const char *var, const char *value, const char *why) {
  fprintf(stderr, "emucuda: %s=%s: %s\n", var, value, why);
  return CUDA_ERROR_INVALID_VALUE;
}

/* Read the EMUCUDA_* variables (emucuda.h has the list); g_lock held. */
static CUresult read_settings(void) {
  emu_settings s = {.devices = 1,
                    .total = (size_t)1 << 30,
                    .granule = (size_t)2 << 20,
                    .granule_rec = (size_t)2 << 20,
                    .vmm = true,
                    .init_error = CUDA_SUCCESS,
                    .wait_timeout_ms = 30000};
  const char *v;
  if ((v = getenv("EMUCUDA_DEVICES")) && *v) {
    char *end;
    long n = strtol(v, &end, 10);
    if (*end || n < 0 || n > EMU_MAX_DEVICES) return settings_fail("EMUCUDA_DEVICES", v, "not a count from 0 to 16");
    s.devices = (int)n;
  }
  if ((v = getenv("EMUCUDA_TOTAL_MEMORY")) && *v) {
    if (!parse_size(v, &s.total) || s.total == 0)
      return settings_fail("EMUCUDA_TOTAL_MEMORY", v, "not a size in bytes (K/M/G/T suffixes allowed)");
  }
  if ((v = getenv("EMUCUDA_GRANULE")) && *v) {
    char buf[64];
    snprintf(buf, sizeof buf, "%s", v);
    char *comma = strchr(buf, ',');
    if (comma) *comma = '\0';
    if (!parse_size(buf, &s.granule) || !is_pow2(s.granule) || s.granule % page_size())
      return settings_fail("EMUCUDA_GRANULE", v, "the minimum granule is not a power of two multiple of the page size");
    s.granule_rec = s.granule;
    if (comma && (!parse_size(comma + 1, &s.granule_rec) || s.granule_rec % s.granule || !s.granule_rec))
      return settings_fail("EMUCUDA_GRANULE", v, "the recommended granule is not a multiple of the minimum");
  }
  if ((v = getenv("EMUCUDA_NO_VMM")) && *v && strcmp(v, "0") != 0) s.vmm = false;
  if ((v = getenv("EMUCUDA_INIT_ERROR")) && *v) {
    bool ok;
    s.init_error = code_from_name(v, &ok);
    if (!ok) return settings_fail("EMUCUDA_INIT_ERROR", v, "not a CUresult (a number or a CUDA_ERROR_* name)");
  }
  if ((v = getenv("EMUCUDA_WAIT_TIMEOUT_MS")) && *v) {
    char *end;
    long n = strtol(v, &end, 10);
    if (*end || n <= 0) return settings_fail("EMUCUDA_WAIT_TIMEOUT_MS", v, "not a positive number of milliseconds");
    s.wait_timeout_ms = n;
  }
  g_set = s;
  for (int i = 0; i < EMU_MAX_DEVICES; i++) g_devices[i].memfd = -1;
  return CUDA_SUCCESS;
}

/* --------------------------------------------------------------- streams */

static void *stream_worker(void *arg);

static bool stream_idle(const emu_stream *s) { return s->completed == s->submitted; }

/* Wait, with g_lock held, until done(arg); gives up after the timeout so that
 * a test that forgets to release a held stream fails instead of hanging. */
static CUresult wait_for(bool (*done)(const void *), const void *arg, const char *call) {
  if (done(arg)) return CUDA_SUCCESS;
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += g_set.wait_timeout_ms / 1000;
  deadline.tv_nsec += (g_set.wait_timeout_ms % 1000) * 1000000L;
  if (deadline.tv_nsec >= 1000000000L) {
    deadline.tv_sec++;
    deadline.tv_nsec -= 1000000000L;
  }
  while (!done(arg)) {
    if (pthread_cond_timedwait(&g_progress, &g_lock, &deadline) == ETIMEDOUT && !done(arg)) {
      atomic_fetch_add(&g_timeouts, 1);
      fprintf(stderr,
              "emucuda: %s gave up after %ld ms: the work it waits for did not finish (a held stream, or a host "
              "function that blocks)\n",
              call, g_set.wait_timeout_ms);
      return CUDA_ERROR_LAUNCH_TIMEOUT;
    }
  }
  return CUDA_SUCCESS;
}

static bool stream_done(const void *arg) { return stream_idle((const emu_stream *)arg); }

static bool ctx_done(const void *arg) {
  for (int i = 0; i < EMU_MAX_STREAMS; i++)
    if (g_streams[i].state != EMU_STREAM_FREE && g_streams[i].ctx == arg && !stream_idle(&g_streams[i])) return false;
  return true;
}

static bool device_busy(int device) {
  for (int i = 0; i < EMU_MAX_STREAMS; i++)
    if (g_streams[i].state != EMU_STREAM_FREE && g_streams[i].ctx->device == device && !stream_idle(&g_streams[i]))
      return true;
  return false;
}

static bool device_done(const void *arg) { return !device_busy(*(const int *)arg); }

static bool event_done(const void *arg) {
  const emu_event *e = arg;
  return e->done >= e->recorded;
}

/* A new stream with its worker; g_lock held. */
static emu_stream *stream_new(emu_ctx *ctx, unsigned flags, bool is_default, CUresult *r) {
  emu_stream *s = NULL;
  for (int i = 0; i < EMU_MAX_STREAMS && !s; i++)
    if (g_streams[i].state == EMU_STREAM_FREE) s = &g_streams[i];
  if (!s) {
    *r = CUDA_ERROR_OUT_OF_MEMORY;
    return NULL;
  }
  memset(s, 0, sizeof *s);
  s->state = EMU_STREAM_LIVE;
  s->ctx = ctx;
  s->flags = flags;
  s->is_default = is_default;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_t t;
  int e = pthread_create(&t, &attr, stream_worker, s);
  pthread_attr_destroy(&attr);
  if (e != 0) {
    s->state = EMU_STREAM_FREE;
    *r = CUDA_ERROR_OUT_OF_MEMORY;
    return NULL;
  }
  return s;
}

static emu_stream *default_stream(emu_ctx *c, CUresult *r) {
  if (!c->default_stream) c->default_stream = stream_new(c, CU_STREAM_DEFAULT, true, r);
  return c->default_stream;
}

/* The stream a handle means; 0, CU_STREAM_LEGACY and CU_STREAM_PER_THREAD are
 * the current context's default stream (*legacy: one of the first two).
 * g_lock held. */
static CUresult resolve_stream(CUstream h, emu_stream **out, bool *legacy) {
  uintptr_t v = (uintptr_t)h;
  if (legacy) *legacy = false;
  if (v == 0 || h == CU_STREAM_LEGACY || h == CU_STREAM_PER_THREAD) {
    emu_ctx *c;
    CUresult r = current_ctx(&c);
    if (r != CUDA_SUCCESS) return r;
    emu_stream *s = default_stream(c, &r);
    if (!s) return r;
    if (legacy) *legacy = h != CU_STREAM_PER_THREAD;
    *out = s;
    return CUDA_SUCCESS;
  }
  emu_stream *s = stream_slot(h);
  if (!s || s->state != EMU_STREAM_LIVE || s->is_default) return CUDA_ERROR_INVALID_HANDLE;
  *out = s;
  return CUDA_SUCCESS;
}

/* Whether a blocking stream of the context captures: then the legacy stream
 * is unusable (CUDA_ERROR_STREAM_CAPTURE_IMPLICIT). */
static bool blocking_capture_in(const emu_ctx *c) {
  for (int i = 0; i < EMU_MAX_STREAMS; i++) {
    const emu_stream *s = &g_streams[i];
    if (s->state == EMU_STREAM_LIVE && s->ctx == c && !s->is_default && !(s->flags & CU_STREAM_NON_BLOCKING) &&
        s->capture != CU_STREAM_CAPTURE_STATUS_NONE)
      return true;
  }
  return false;
}

/* Is a potentially unsafe call prohibited for this thread by a capture in
 * progress (the driver's rules for global, thread-local and relaxed modes)?
 * If so, the captures that prohibit it are invalidated and it is counted as
 * a violation. g_lock held. */
static bool capture_forbids(void) {
  if (g_active_captures == 0 || tls_capture_mode == CU_STREAM_CAPTURE_MODE_RELAXED) return false;
  bool hit = false;
  pthread_t self = pthread_self();
  for (int i = 0; i < EMU_MAX_STREAMS; i++) {
    emu_stream *s = &g_streams[i];
    if (s->state == EMU_STREAM_FREE || s->capture == CU_STREAM_CAPTURE_STATUS_NONE) continue;
    bool own = pthread_equal(s->capture_thread, self);
    if ((own && s->capture_mode != CU_STREAM_CAPTURE_MODE_RELAXED) ||
        (!own && s->capture_mode == CU_STREAM_CAPTURE_MODE_GLOBAL && tls_capture_mode == CU_STREAM_CAPTURE_MODE_GLOBAL)) {
      s->capture = CU_STREAM_CAPTURE_STATUS_INVALIDATED;
      hit = true;
    }
  }
  if (hit) atomic_fetch_add(&g_violations, 1);
  return hit;
}

/* An operation on the legacy stream while a blocking stream captures: it would
 * depend on the capture, which the driver refuses and which invalidates it. */
static bool legacy_use_forbidden(const emu_ctx *c) {
  if (!blocking_capture_in(c)) return false;
  for (int i = 0; i < EMU_MAX_STREAMS; i++) {
    emu_stream *s = &g_streams[i];
    if (s->state == EMU_STREAM_LIVE && s->ctx == c && !s->is_default && !(s->flags & CU_STREAM_NON_BLOCKING) &&
        s->capture != CU_STREAM_CAPTURE_STATUS_NONE)
      s->capture = CU_STREAM_CAPTURE_STATUS_INVALIDATED;
  }
  atomic_fetch_add(&g_violations, 1);
  return true;
}

static void enqueue(emu_stream *s, emu_work *w) {
  w->next = NULL;
  if (s->tail) s->tail->next = w;
  else s->head = w;
  s->tail = w;
  s->submitted++;
  pthread_cond_broadcast(&g_work);
}

/* --------------------------------------------------------------- memory */

static emu_alloc *alloc_containing(uintptr_t p) {
  for (size_t i = 0; i < g_allocs.len; i++)
    if (p >= g_allocs.at[i].addr && p < g_allocs.at[i].addr + g_allocs.at[i].size) return &g_allocs.at[i];
  return NULL;
}

static emu_mapping *mapping_containing(uintptr_t p) {
  for (size_t i = 0; i < g_mappings.len; i++)
    if (p >= g_mappings.at[i].addr && p < g_mappings.at[i].addr + g_mappings.at[i].size) return &g_mappings.at[i];
  return NULL;
}

static emu_mapping *mapping_at(uintptr_t p) {
  for (size_t i = 0; i < g_mappings.len; i++)
    if (g_mappings.at[i].addr == p) return &g_mappings.at[i];
  return NULL;
}

/* Is [p, p + n) device memory that device work may write? */
static bool writable_device_range(uintptr_t p, size_t n) {
  if (n == 0) return true;
  emu_alloc *a = alloc_containing(p);
  if (a) return n <= a->addr + a->size - p;
  uintptr_t end = p + n;
  while (p < end) {
    emu_mapping *m = mapping_containing(p);
    if (!m || !(m->prot & PROT_WRITE)) return false;
    p = m->addr + m->size;
  }
  return true;
}

/* Do whole mappings tile [p, p + n) exactly? Puts their count in *count. */
static bool whole_mappings(uintptr_t p, size_t n, size_t *count) {
  uintptr_t end = p + n;
  size_t k = 0;
  if (n == 0 || end < p) return false;
  while (p < end) {
    emu_mapping *m = mapping_at(p);
    if (!m || m->addr + m->size > end) return false;
    p += m->size;
    k++;
  }
  *count = k;
  return true;
}

static emu_phys *phys_of(CUmemGenericAllocationHandle h) {
  uint64_t index = (h & 0xffffffffu);
  if (index == 0 || index > g_phys.len) return NULL;
  emu_phys *p = &g_phys.at[index - 1];
  if (!p->in_use || p->gen != (uint32_t)(h >> 32)) return NULL;
  return p;
}

/* Give a physical allocation's extent back: released and no longer mapped. */
static void phys_free(emu_phys *p) {
  emu_device *d = &g_devices[p->device];
  fallocate(d->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)p->offset, (off_t)p->size);
  memset(d->unit_used + p->offset / g_set.granule, 0, p->size / g_set.granule);
  d->used -= p->size;
  p->in_use = false;
  p->gen++;
}

/* The device's memfd and its extent map, made on the first cuMemCreate. */
static CUresult device_memfd(emu_device *d, int device) {
  if (d->memfd >= 0) return CUDA_SUCCESS;
  char name[32];
  snprintf(name, sizeof name, "emucuda-device%d", device);
  d->units = g_set.total / g_set.granule;
  d->unit_used = calloc(d->units ? d->units : 1, 1);
  if (!d->unit_used) return CUDA_ERROR_OUT_OF_MEMORY;
  int fd = memfd_create(name, MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, (off_t)(d->units * g_set.granule)) != 0) {
    if (fd >= 0) close(fd);
    free(d->unit_used);
    d->unit_used = NULL;
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  d->memfd = fd;
  return CUDA_SUCCESS;
}

static bool prop_ok(const CUmemAllocationProp *prop) {
  return prop && prop->type == CU_MEM_ALLOCATION_TYPE_PINNED && prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE;
}

/* ------------------------------------------------------------ the worker */

static void *stream_worker(void *arg) {
  emu_stream *s = arg;
  pthread_mutex_lock(&g_lock);
  for (;;) {
    if (s->held || (s->head == NULL && s->state == EMU_STREAM_LIVE)) {
      pthread_cond_wait(&g_work, &g_lock);
      continue;
    }
    if (s->head == NULL) break; /* destroyed and drained */
    emu_work *w = s->head;
    s->head = w->next;
    if (!s->head) s->tail = NULL;
    switch (w->kind) {
      case EMU_WORK_HOST_FUNC:
        pthread_mutex_unlock(&g_lock);
        w->fn(w->data);
        pthread_mutex_lock(&g_lock);
        break;
      case EMU_WORK_MEMSET:
        /* Under the lock: the memory cannot be unmapped halfway. Memory that
         * went away since the call is what a GPU would fault on. */
        if (writable_device_range(w->dst, w->n)) {
          memset((void *)w->dst, w->value, w->n);
        } else {
          atomic_fetch_add(&g_illegal, 1);
          s->ctx->sticky = CUDA_ERROR_ILLEGAL_ADDRESS;
          fprintf(stderr, "emucuda: illegal address: a memset of %zu bytes at %#lx ran after its memory was unmapped\n",
                  w->n, (unsigned long)w->dst);
        }
        break;
      case EMU_WORK_EVENT:
        if (w->gen > w->event->done) w->event->done = w->gen;
        w->event->pending--;
        break;
    }
    free(w);
    s->completed++;
    pthread_cond_broadcast(&g_progress);
  }
  s->state = EMU_STREAM_FREE;
  pthread_cond_broadcast(&g_progress);
  pthread_mutex_unlock(&g_lock);
  return NULL;
}

/* =================================================== initialization, devices */

CUresult CUDAAPI cuInit(unsigned int flags) {
  EMU_ENTER_NO_INIT(cuInit);
  if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&g_lock);
  if (!g_settings_read) {
    g_settings_error = read_settings();
    g_settings_read = true;
  }
  CUresult r = g_settings_error;
  if (r == CUDA_SUCCESS) r = g_set.init_error;
  if (r == CUDA_SUCCESS && g_set.devices == 0) r = CUDA_ERROR_NO_DEVICE;
  if (r == CUDA_SUCCESS) atomic_store_explicit(&g_initialized, true, memory_order_release);
  pthread_mutex_unlock(&g_lock);
  return r;
}

/* Works before cuInit, as in the real driver. */
CUresult CUDAAPI cuDriverGetVersion(int *driverVersion) {
  EMU_ENTER_NO_INIT(cuDriverGetVersion);
  if (!driverVersion) return CUDA_ERROR_INVALID_VALUE;
  *driverVersion = CUDA_VERSION;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetCount(int *count) {
  EMU_ENTER(cuDeviceGetCount);
  if (!count) return CUDA_ERROR_INVALID_VALUE;
  *count = g_set.devices;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGet(CUdevice *device, int ordinal) {
  EMU_ENTER(cuDeviceGet);
  if (!device) return CUDA_ERROR_INVALID_VALUE;
  if (!device_ok(ordinal)) return CUDA_ERROR_INVALID_DEVICE;
  *device = ordinal;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetName(char *name, int len, CUdevice dev) {
  EMU_ENTER(cuDeviceGetName);
  if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
  if (!device_ok(dev)) return CUDA_ERROR_INVALID_DEVICE;
  snprintf(name, (size_t)len, "emucuda emulated device %d", dev);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
  EMU_ENTER(cuDeviceTotalMem_v2);
  if (!bytes) return CUDA_ERROR_INVALID_VALUE;
  if (!device_ok(dev)) return CUDA_ERROR_INVALID_DEVICE;
  *bytes = g_set.total;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev) {
  EMU_ENTER(cuDeviceGetAttribute);
  if (!pi) return CUDA_ERROR_INVALID_VALUE;
  if (!device_ok(dev)) return CUDA_ERROR_INVALID_DEVICE;
  if ((int)attrib <= 0 || attrib >= CU_DEVICE_ATTRIBUTE_MAX) return CUDA_ERROR_INVALID_VALUE;
  switch (attrib) {
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED: *pi = g_set.vmm ? 1 : 0; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *pi = 9; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *pi = 0; break;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *pi = 1; break;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *pi = 32; break;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *pi = 1024; break;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *pi = 1; break;
    case CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID: *pi = dev; break;
    default: *pi = 0; break; /* a real attribute the emulator does not model */
  }
  return CUDA_SUCCESS;
}

/* ============================================================== contexts */

CUresult CUDAAPI cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev) {
  EMU_ENTER(cuDevicePrimaryCtxRetain);
  if (!pctx) return CUDA_ERROR_INVALID_VALUE;
  if (!device_ok(dev)) return CUDA_ERROR_INVALID_DEVICE;
  pthread_mutex_lock(&g_lock);
  emu_ctx *c = &g_ctx[dev];
  if (!c->in_use) {
    c->in_use = true;
    c->primary = true;
    c->device = dev;
  }
  c->refcount++;
  pthread_mutex_unlock(&g_lock);
  *pctx = (CUcontext)c;
  return CUDA_SUCCESS;
}

/* The last release makes the primary context inactive: calls made under it
 * get CUDA_ERROR_CONTEXT_IS_DESTROYED until it is retained again. Unlike the
 * real driver, what it held is kept (and counted), so leak checks see it. */
CUresult CUDAAPI cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
  EMU_ENTER(cuDevicePrimaryCtxRelease_v2);
  if (!device_ok(dev)) return CUDA_ERROR_INVALID_DEVICE;
  pthread_mutex_lock(&g_lock);
  CUresult r = CUDA_SUCCESS;
  if (g_ctx[dev].refcount <= 0) r = CUDA_ERROR_INVALID_CONTEXT; /* released more often than retained */
  else g_ctx[dev].refcount--;
  pthread_mutex_unlock(&g_lock);
  return r;
}

/* A context of its own (not the primary one), pushed on the caller's stack. */
CUresult CUDAAPI cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev) {
  EMU_ENTER(cuCtxCreate_v2);
  (void)flags;
  if (!pctx) return CUDA_ERROR_INVALID_VALUE;
  if (!device_ok(dev)) return CUDA_ERROR_INVALID_DEVICE;
  if (tls_depth == EMU_CTX_STACK) return CUDA_ERROR_OUT_OF_MEMORY;
  pthread_mutex_lock(&g_lock);
  emu_ctx *c = NULL;
  for (int i = EMU_MAX_DEVICES; i < EMU_MAX_CONTEXTS && !c; i++)
    if (!g_ctx[i].in_use) c = &g_ctx[i];
  if (c) {
    memset(c, 0, sizeof *c);
    c->in_use = true;
    c->device = dev;
    c->refcount = 1;
    tls_stack[tls_depth++] = c;
  }
  pthread_mutex_unlock(&g_lock);
  if (!c) return CUDA_ERROR_OUT_OF_MEMORY;
  *pctx = (CUcontext)c;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxDestroy_v2(CUcontext ctx) {
  EMU_ENTER(cuCtxDestroy_v2);
  emu_ctx *c = ctx_of(ctx);
  pthread_mutex_lock(&g_lock);
  CUresult r = CUDA_SUCCESS;
  if (!c || !c->in_use || c->primary) {
    r = CUDA_ERROR_INVALID_CONTEXT;
  } else {
    for (int i = 0; i < EMU_MAX_STREAMS; i++)
      if (g_streams[i].state == EMU_STREAM_LIVE && g_streams[i].ctx == c) {
        if (g_streams[i].capture != CU_STREAM_CAPTURE_STATUS_NONE) g_active_captures--;
        g_streams[i].capture = CU_STREAM_CAPTURE_STATUS_NONE;
        g_streams[i].state = EMU_STREAM_DESTROYED;
      }
    for (int i = 0; i < EMU_MAX_EVENTS; i++)
      if (g_events[i].in_use && g_events[i].ctx == c) g_events[i].in_use = false;
    c->in_use = false;
    c->default_stream = NULL;
    if (tls_depth && tls_stack[tls_depth - 1] == c) tls_depth--;
    pthread_cond_broadcast(&g_work);
  }
  pthread_mutex_unlock(&g_lock);
  return r;
}

CUresult CUDAAPI cuCtxGetCurrent(CUcontext *pctx) {
  EMU_ENTER(cuCtxGetCurrent);
  if (!pctx) return CUDA_ERROR_INVALID_VALUE;
  *pctx = tls_depth ? (CUcontext)tls_stack[tls_depth - 1] : NULL;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxSetCurrent(CUcontext ctx) {
  EMU_ENTER(cuCtxSetCurrent);
  if (ctx == NULL) {
    if (tls_depth) tls_depth--;
    return CUDA_SUCCESS;
  }
  emu_ctx *c = ctx_of(ctx);
  pthread_mutex_lock(&g_lock);
  bool ok = c && c->in_use;
  pthread_mutex_unlock(&g_lock);
  if (!ok) return CUDA_ERROR_INVALID_CONTEXT;
  if (tls_depth) tls_stack[tls_depth - 1] = c;
  else tls_stack[tls_depth++] = c;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxPushCurrent_v2(CUcontext ctx) {
  EMU_ENTER(cuCtxPushCurrent_v2);
  if (ctx == NULL) return CUDA_ERROR_INVALID_VALUE;
  emu_ctx *c = ctx_of(ctx);
  pthread_mutex_lock(&g_lock);
  bool ok = c && c->in_use;
  pthread_mutex_unlock(&g_lock);
  if (!ok) return CUDA_ERROR_INVALID_CONTEXT;
  if (tls_depth == EMU_CTX_STACK) return CUDA_ERROR_OUT_OF_MEMORY;
  tls_stack[tls_depth++] = c;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxPopCurrent_v2(CUcontext *pctx) {
  EMU_ENTER(cuCtxPopCurrent_v2);
  if (tls_depth == 0) return CUDA_ERROR_INVALID_CONTEXT;
  emu_ctx *c = tls_stack[--tls_depth];
  if (pctx) *pctx = (CUcontext)c;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxGetDevice(CUdevice *device) {
  EMU_ENTER(cuCtxGetDevice);
  if (!device) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&g_lock);
  emu_ctx *c;
  CUresult r = current_ctx(&c);
  if (r == CUDA_SUCCESS) *device = c->device;
  pthread_mutex_unlock(&g_lock);
  return r;
}

/* Waits for the work of every stream of the current context. A capture in
 * the context forbids it in any mode: it would wait for captured work. */
CUresult CUDAAPI cuCtxSynchronize(void) {
  EMU_ENTER(cuCtxSynchronize);
  pthread_mutex_lock(&g_lock);
  emu_ctx *c;
  CUresult r = current_ctx(&c);
  if (r == CUDA_SUCCESS && capture_forbids()) r = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  if (r == CUDA_SUCCESS) r = wait_for(ctx_done, c, "cuCtxSynchronize");
  if (r == CUDA_SUCCESS) r = c->sticky;
  pthread_mutex_unlock(&g_lock);
  return r;
}

/* ============================================================ cuMemAlloc */

CUresult CUDAAPI cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) {
  EMU_ENTER(cuMemAlloc_v2);
  if (!dptr || bytesize == 0) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&g_lock);
  emu_ctx *c;
  CUresult r = current_ctx(&c);
  if (r == CUDA_SUCCESS && capture_forbids()) r = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  size_t charged = round_up(bytesize, page_size());
  if (r == CUDA_SUCCESS && (charged < bytesize || charged > g_set.total - g_devices[c->device].used))
    r = CUDA_ERROR_OUT_OF_MEMORY;
  void *p = MAP_FAILED;
  if (r == CUDA_SUCCESS) {
    p = mmap(NULL, charged, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    emu_alloc a = {(uintptr_t)p, bytesize, charged, c->device};
    if (p == MAP_FAILED) {
      r = CUDA_ERROR_OUT_OF_MEMORY;
    } else if (!EMU_PUSH(g_allocs, a)) {
      munmap(p, charged);
      r = CUDA_ERROR_OUT_OF_MEMORY;
    } else {
      g_devices[c->device].used += charged;
      *dptr = (CUdeviceptr)(uintptr_t)p;
    }
  }
  pthread_mutex_unlock(&g_lock);
  return r;
}

/* Like the real driver, waits for the device's work first: that work may
 * still use the memory. */
CUresult CUDAAPI cuMemFree_v2(CUdeviceptr dptr) {
  EMU_ENTER(cuMemFree_v2);
  pthread_mutex_lock(&g_lock);
  emu_ctx *c;
  CUresult r = current_ctx(&c);
  if (r == CUDA_SUCCESS && capture_forbids()) r = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  size_t i = 0;
  if (r == CUDA_SUCCESS) {
    while (i < g_allocs.len && g_allocs.at[i].addr != (uintptr_t)dptr) i++;
    if (i == g_allocs.len) r = CUDA_ERROR_INVALID_VALUE;
  }
  if (r == CUDA_SUCCESS) {
    int device = g_allocs.at[i].device;
    r = wait_for(device_done, &device, "cuMemFree");
  }
  if (r == CUDA_SUCCESS) {
    /* The wait let other threads in: find it again. */
    for (i = 0; i < g_allocs.len && g_allocs.at[i].addr != (uintptr_t)dptr; i++) {
    }
    if (i == g_allocs.len) {
      r = CUDA_ERROR_INVALID_VALUE;
    } else {
      emu_alloc a = g_allocs.at[i];
      munmap((void *)a.addr, a.charged);
      g_devices[a.device].used -= a.charged;
      g_allocs.at[i] = g_allocs.at[--g_allocs.len];
    }
  }
  pthread_mutex_unlock(&g_lock);
  return r;
}

CUresult CUDAAPI cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes) {
  EMU_ENTER(cuMemGetInfo_v2);
  if (!free_bytes || !total_bytes) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&g_lock);
  emu_ctx *c;
  CUresult r = current_ctx(&c);
  if (r == CUDA_SUCCESS) {
    *free_bytes = g_set.total - g_devices[c->device].used;
    *total_bytes = g_set.total;
  }
  pthread_mutex_unlock(&g_lock);
  return r;
}

/* Asynchronous, on the legacy default stream of the current context. */
CUresult CUDAAPI cuMemsetD8_v2(CUdeviceptr dstDevice, unsigned char uc, size_t N) {
  EMU_ENTER(cuMemsetD8_v2);
  pthread_mutex_lock(&g_lock);
  emu_ctx *c;
  emu_stream *s = NULL;
  CUresult r = current_ctx(&c);
  if (r == CUDA_SUCCESS && !writable_device_range((uintptr_t)dstDevice, N)) r = CUDA_ERROR_INVALID_VALUE;
  if (r == CUDA_SUCCESS && legacy_use_forbidden(c)) r = CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
  if (r == CUDA_SUCCESS) s = default_stream(c, &r);
  emu_work *w = NULL;
  if (s && !(w = calloc(1, sizeof *w))) r = CUDA_ERROR_OUT_OF_MEMORY;
  if (w) {
    w->kind = EMU_WORK_MEMSET;
    w->dst = (uintptr_t)dstDevice;
    w->n = N;
    w->value = uc;
    enqueue(s, w);
  }
  pthread_mutex_unlock(&g_lock);
  return r;
}

/* =============================================================== streams */

CUresult CUDAAPI cuStreamCreate(CUstream *phStream, unsigned int Flags) {
  EMU_ENTER(cuStreamCreate);
  if (!phStream || (Flags & ~(unsigned)CU_STREAM_NON_BLOCKING)) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&g_lock);
  emu_ctx *c;
  CUresult r = current_ctx(&c);
  emu_stream *s = r == CUDA_SUCCESS ? stream_new(c, Flags, false, &r) : NULL;
  if (s) *phStream = (CUstream)s;
  pthread_mutex_unlock(&g_lock);
  return r;
}

/* Returns at once; the stream's queued work still runs, then its worker ends. */
CUresult CUDAAPI cuStreamDestroy_v2(CUstream hStream) {
  EMU_ENTER(cuStreamDestroy_v2);
  pthread_mutex_lock(&g_lock);
  emu_stream *s = stream_slot(hStream);
  CUresult r = CUDA_SUCCESS;
  if (!s || s->state != EMU_STREAM_LIVE || s->is_default) {
    r = CUDA_ERROR_INVALID_HANDLE;
  } else {
    if (s->capture != CU_STREAM_CAPTURE_STATUS_NONE) g_active_captures--;
    s->capture = CU_STREAM_CAPTURE_STATUS_NONE;
    s->state = EMU_STREAM_DESTROYED;
    pthread_cond_broadcast(&g_work);
  }
  pthread_mutex_unlock(&g_lock);
  return r;
}

/* Forbidden on a capturing stream in any mode, and wherever a capture
 * forbids unsafe calls. */
static CUresult stream_wait_check(emu_stream *s) {
  if (s->capture != CU_STREAM_CAPTURE_STATUS_NONE) {
    s->capture = CU_STREAM_CAPTURE_STATUS_INVALIDATED;
    atomic_fetch_add(&g_violations, 1);
    return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  }
  return capture_forbids() ? CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED : CUDA_SUCCESS;
}

CUresult CUDAAPI cuStreamSynchronize(CUstream hStream) {
  EMU_ENTER(cuStreamSynchronize);
  pthread_mutex_lock(&g_lock);
  emu_stream *s;
  bool legacy;
  CUresult r = resolve_stream(hStream, &s, &legacy);
  if (r == CUDA_SUCCESS && legacy && legacy_use_forbidden(s->ctx)) r = CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
  if (r == CUDA_SUCCESS) r = stream_wait_check(s);
  if (r == CUDA_SUCCESS) r = wait_for(stream_done, s, "cuStreamSynchronize");
  if (r == CUDA_SUCCESS) r = s->ctx->sticky;
  pthread_mutex_unlock(&g_lock);
  return r;
}

CUresult CUDAAPI cuStreamQuery(CUstream hStream) {
  EMU_ENTER(cuStreamQuery);
  pthread_mutex_lock(&g_lock);
  emu_stream *s;
  bool legacy;
  CUresult r = resolve_stream(hStream, &s, &legacy);
  if (r == CUDA_SUCCESS && legacy && legacy_use_forbidden(s->ctx)) r = CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
  if (r == CUDA_SUCCESS) r = stream_wait_check(s);
  if (r == CUDA_SUCCESS && !stream_idle(s)) r = CUDA_ERROR_NOT_READY;
  pthread_mutex_unlock(&g_lock);
  return r;
}

CUresult CUDAAPI cuStreamGetCtx(CUstream hStream, CUcontext *pctx) {
  EMU_ENTER(cuStreamGetCtx);
  if (!pctx) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&g_lock);
  emu_stream *s;
  CUresult r = resolve_stream(hStream, &s, NULL);
  if (r == CUDA_SUCCESS) *pctx = (CUcontext)s->ctx;
  pthread_mutex_unlock(&g_lock);
  return r;
}

/* The capture status of a stream; the legacy stream while a blocking stream
 * of its context captures is CUDA_ERROR_STREAM_CAPTURE_IMPLICIT (not an
 * invalidation). g_lock held. */
static CUresult capture_status(CUstream h, CUstreamCaptureStatus *status, cuuint64_t *id) {
  if (!status) return CUDA_ERROR_INVALID_VALUE;
  emu_stream *s;
  bool legacy;
  CUresult r = resolve_stream(h, &s, &legacy);
  if (r != CUDA_SUCCESS) return r;
  if (legacy && blocking_capture_in(s->ctx)) return CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
  *status = s->capture;
  if (id && s->capture == CU_STREAM_CAPTURE_STATUS_ACTIVE) *id = s->capture_id;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuStreamIsCapturing(CUstream hStream, CUstreamCaptureStatus *captureStatus) {
  EMU_ENTER(cuStreamIsCapturing);
  pthread_mutex_lock(&g_lock);
  CUresult r = capture_status(hStream, captureStatus, NULL);
  pthread_mutex_unlock(&g_lock);
  return r;
}

CUresult CUDAAPI cuStreamGetCaptureInfo(CUstream hStream, CUstreamCaptureStatus *captureStatus_out, cuuint64_t *id_out) {
  EMU_ENTER(cuStreamGetCaptureInfo);
  pthread_mutex_lock(&g_lock);
  CUresult r = capture_status(hStream, captureStatus_out, id_out);
  pthread_mutex_unlock(&g_lock);
  return r;
}

/* No graph is built: the graph and dependency outputs are empty. */
CUresult CUDAAPI cuStreamGetCaptureInfo_v2(CUstream hStream, CUstreamCaptureStatus *captureStatus_out,
                                           cuuint64_t *id_out, CUgraph *graph_out,
                                           const CUgraphNode **dependencies_out, size_t *numDependencies_out) {
  EMU_ENTER(cuStreamGetCaptureInfo_v2);
  pthread_mutex_lock(&g_lock);
  CUresult r = capture_status(hStream, captureStatus_out, id_out);
  pthread_mutex_unlock(&g_lock);
  if (r == CUDA_SUCCESS) {
    if (graph_out) *graph_out = NULL;
    if (dependencies_out) *dependencies_out = NULL;
    if (numDependencies_out) *numDependencies_out = 0;
  }
  return r;
}

CUresult CUDAAPI cuStreamGetCaptureInfo_v3(CUstream hStream, CUstreamCaptureStatus *captureStatus_out,
                                           cuuint64_t *id_out, CUgraph *graph_out,
                                           const CUgraphNode **dependencies_out, const CUgraphEdgeData **edgeData_out,
                                           size_t *numDependencies_out) {
  EMU_ENTER(cuStreamGetCaptureInfo_v3);
  if (edgeData_out && !dependencies_out) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&g_lock);
  CUresult r = capture_status(hStream, captureStatus_out, id_out);
  pthread_mutex_unlock(&g_lock);
  if (r == CUDA_SUCCESS) {
    if (graph_out) *graph_out = NULL;
    if (dependencies_out) *dependencies_out = NULL;
    if (edgeData_out) *edgeData_out = NULL;
    if (numDependencies_out) *numDependencies_out = 0;
  }
  return r;
}

CUresult CUDAAPI cuThreadExchangeStreamCaptureMode(CUstreamCaptureMode *mode) {
  EMU_ENTER(cuThreadExchangeStreamCaptureMode);
  if (!mode || (unsigned)*mode > CU_STREAM_CAPTURE_MODE_RELAXED) return CUDA_ERROR_INVALID_VALUE;
  CUstreamCaptureMode old = tls_capture_mode;
  tls_capture_mode = *mode;
  *mode = old;
  return CUDA_SUCCESS;
}

/* Work on a capturing stream is captured, not run: nothing is queued. */
CUresult CUDAAPI cuLaunchHostFunc(CUstream hStream, CUhostFn fn, void *userData) {
  EMU_ENTER(cuLaunchHostFunc);
  if (!fn) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&g_lock);
  emu_stream *s;
  bool legacy;
  CUresult r = resolve_stream(hStream, &s, &legacy);
  if (r == CUDA_SUCCESS && legacy && legacy_use_forbidden(s->ctx)) r = CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
  if (r == CUDA_SUCCESS && s->capture == CU_STREAM_CAPTURE_STATUS_NONE) {
    emu_work *w = calloc(1, sizeof *w);
    if (!w) {
      r = CUDA_ERROR_OUT_OF_MEMORY;
    } else {
      w->kind = EMU_WORK_HOST_FUNC;
      w->fn = fn;
      w->data = userData;
      enqueue(s, w);
    }
  }
  pthread_mutex_unlock(&g_lock);
  return r;
}

/* ================================================================ events */

CUresult CUDAAPI cuEventCreate(CUevent *phEvent, unsigned int Flags) {
  EMU_ENTER(cuEventCreate);
  const unsigned known = CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS;
  if (!phEvent || (Flags & ~known)) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&g_lock);
  emu_ctx *c;
  CUresult r = current_ctx(&c);
  if (r == CUDA_SUCCESS) {
    emu_event *e = NULL;
    for (int i = 0; i < EMU_MAX_EVENTS && !e; i++)
      if (!g_events[i].in_use && g_events[i].pending == 0) e = &g_events[i];
    if (!e) {
      r = CUDA_ERROR_OUT_OF_MEMORY;
    } else {
      memset(e, 0, sizeof *e);
      e->in_use = true;
      e->ctx = c;
      *phEvent = (CUevent)e;
    }
  }
  pthread_mutex_unlock(&g_lock);
  return r;
}

/* The event and the stream must belong to the same context (for stream 0:
 * the current one), as the real driver requires. */
CUresult CUDAAPI cuEventRecord(CUevent hEvent, CUstream hStream) {
  EMU_ENTER(cuEventRecord);
  pthread_mutex_lock(&g_lock);
  emu_event *e = event_of(hEvent);
  emu_stream *s = NULL;
  bool legacy = false;
  CUresult r = e ? resolve_stream(hStream, &s, &legacy) : CUDA_ERROR_INVALID_HANDLE;
  if (r == CUDA_SUCCESS && s->ctx != e->ctx) r = CUDA_ERROR_INVALID_HANDLE;
  if (r == CUDA_SUCCESS && legacy && legacy_use_forbidden(s->ctx)) r = CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
  if (r == CUDA_SUCCESS) {
    if (s->capture != CU_STREAM_CAPTURE_STATUS_NONE) {
      e->captured = true; /* a node of the capture, nothing runs now */
    } else {
      emu_work *w = calloc(1, sizeof *w);
      if (!w) {
        r = CUDA_ERROR_OUT_OF_MEMORY;
      } else {
        e->captured = false;
        w->kind = EMU_WORK_EVENT;
        w->event = e;
        w->gen = ++e->recorded;
        e->pending++;
        enqueue(s, w);
      }
    }
  }
  pthread_mutex_unlock(&g_lock);
  return r;
}

CUresult CUDAAPI cuEventQuery(CUevent hEvent) {
  EMU_ENTER(cuEventQuery);
  pthread_mutex_lock(&g_lock);
  emu_event *e = event_of(hEvent);
  CUresult r = e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
  if (r == CUDA_SUCCESS && capture_forbids()) r = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  if (r == CUDA_SUCCESS && e->captured) r = CUDA_ERROR_CAPTURED_EVENT;
  if (r == CUDA_SUCCESS && !event_done(e)) r = CUDA_ERROR_NOT_READY;
  pthread_mutex_unlock(&g_lock);
  return r;
}

CUresult CUDAAPI cuEventSynchronize(CUevent hEvent) {
  EMU_ENTER(cuEventSynchronize);
  pthread_mutex_lock(&g_lock);
  emu_event *e = event_of(hEvent);
  CUresult r = e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
  if (r == CUDA_SUCCESS && capture_forbids()) r = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  if (r == CUDA_SUCCESS && e->captured) r = CUDA_ERROR_CAPTURED_EVENT;
  if (r == CUDA_SUCCESS) r = wait_for(event_done, e, "cuEventSynchronize");
  if (r == CUDA_SUCCESS) r = e->ctx->sticky;
  pthread_mutex_unlock(&g_lock);
  return r;
}

/* Returns at once; a record still queued completes without the event. */
CUresult CUDAAPI cuEventDestroy_v2(CUevent hEvent) {
  EMU_ENTER(cuEventDestroy_v2);
  pthread_mutex_lock(&g_lock);
  emu_event *e = event_of(hEvent);
  if (e) e->in_use = false;
  pthread_mutex_unlock(&g_lock);
  return e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

/* =================================================== virtual memory (VMM) */

CUresult CUDAAPI cuMemGetAllocationGranularity(size_t *granularity, const CUmemAllocationProp *prop,
                                               CUmemAllocationGranularity_flags option) {
  EMU_ENTER(cuMemGetAllocationGranularity);
  if (!granularity || !prop_ok(prop)) return CUDA_ERROR_INVALID_VALUE;
  if (!device_ok(prop->location.id)) return CUDA_ERROR_INVALID_DEVICE;
  if (!g_set.vmm) return CUDA_ERROR_NOT_SUPPORTED;
  if (option == CU_MEM_ALLOC_GRANULARITY_MINIMUM) *granularity = g_set.granule;
  else if (option == CU_MEM_ALLOC_GRANULARITY_RECOMMENDED) *granularity = g_set.granule_rec;
  else return CUDA_ERROR_INVALID_VALUE;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp *prop,
                             unsigned long long flags) {
  EMU_ENTER(cuMemCreate);
  if (!handle || !prop_ok(prop) || flags != 0) return CUDA_ERROR_INVALID_VALUE;
  if (!device_ok(prop->location.id)) return CUDA_ERROR_INVALID_DEVICE;
  if (!g_set.vmm) return CUDA_ERROR_NOT_SUPPORTED;
  if (size == 0 || size % g_set.granule) return CUDA_ERROR_INVALID_VALUE;
  int device = prop->location.id;
  pthread_mutex_lock(&g_lock);
  emu_ctx *c;
  emu_device *d = &g_devices[device];
  CUresult r = current_ctx(&c);
  if (r == CUDA_SUCCESS && capture_forbids()) r = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  if (r == CUDA_SUCCESS && size > g_set.total - d->used) r = CUDA_ERROR_OUT_OF_MEMORY;
  if (r == CUDA_SUCCESS) r = device_memfd(d, device);
  size_t need = size / g_set.granule, first = 0, run = 0;
  if (r == CUDA_SUCCESS) {
    for (size_t u = 0; u < d->units && run < need; u++) {
      if (d->unit_used[u]) run = 0;
      else if (run++ == 0) first = u;
    }
    if (run < need) r = CUDA_ERROR_OUT_OF_MEMORY; /* no extent that long: fragmented */
  }
  size_t slot = 0;
  if (r == CUDA_SUCCESS) {
    while (slot < g_phys.len && g_phys.at[slot].in_use) slot++;
    emu_phys fresh = {0};
    if (slot == g_phys.len && !EMU_PUSH(g_phys, fresh)) r = CUDA_ERROR_OUT_OF_MEMORY;
  }
  if (r == CUDA_SUCCESS) {
    emu_phys *p = &g_phys.at[slot];
    uint32_t gen = p->gen + 1;
    *p = (emu_phys){.in_use = true, .device = device, .gen = gen, .offset = first * g_set.granule, .size = size};
    memset(d->unit_used + first, 1, need);
    d->used += size;
    *handle = ((CUmemGenericAllocationHandle)gen << 32) | (CUmemGenericAllocationHandle)(slot + 1);
  }
  pthread_mutex_unlock(&g_lock);
  return r;
}

/* The memory goes when it is released and no longer mapped. */
CUresult CUDAAPI cuMemRelease(CUmemGenericAllocationHandle handle) {
  EMU_ENTER(cuMemRelease);
  pthread_mutex_lock(&g_lock);
  emu_ctx *c;
  CUresult r = current_ctx(&c);
  emu_phys *p = r == CUDA_SUCCESS ? phys_of(handle) : NULL;
  if (r == CUDA_SUCCESS && (!p || p->released)) r = CUDA_ERROR_INVALID_VALUE;
  if (r == CUDA_SUCCESS) {
    p->released = true;
    if (p->maps == 0) phys_free(p);
  }
  pthread_mutex_unlock(&g_lock);
  return r;
}

CUresult CUDAAPI cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment, CUdeviceptr addr,
                                     unsigned long long flags) {
  EMU_ENTER(cuMemAddressReserve);
  (void)addr; /* a hint, which the emulator does not follow */
  if (!ptr || flags != 0 || size == 0 || size % g_set.granule) return CUDA_ERROR_INVALID_VALUE;
  if (alignment == 0) alignment = g_set.granule;
  if (!is_pow2(alignment)) return CUDA_ERROR_INVALID_VALUE;
  if (alignment < page_size()) alignment = page_size();
  if (size + alignment < size) return CUDA_ERROR_OUT_OF_MEMORY;
  pthread_mutex_lock(&g_lock);
  emu_ctx *c;
  CUresult r = current_ctx(&c);
  if (r == CUDA_SUCCESS) {
    size_t span = size + alignment;
    void *raw = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED) {
      r = CUDA_ERROR_OUT_OF_MEMORY;
    } else {
      uintptr_t start = (uintptr_t)raw, base = (start + alignment - 1) & ~(uintptr_t)(alignment - 1);
      if (base > start) munmap(raw, base - start);
      if (start + span > base + size) munmap((void *)(base + size), start + span - (base + size));
      emu_reservation res = {base, size};
      if (!EMU_PUSH(g_reservations, res)) {
        munmap((void *)base, size);
        r = CUDA_ERROR_OUT_OF_MEMORY;
      } else {
        *ptr = (CUdeviceptr)base;
      }
    }
  }
  pthread_mutex_unlock(&g_lock);
  return r;
}

/* The whole reservation, and nothing may still be mapped in it. */
CUresult CUDAAPI cuMemAddressFree(CUdeviceptr ptr, size_t size) {
  EMU_ENTER(cuMemAddressFree);
  pthread_mutex_lock(&g_lock);
  emu_ctx *c;
  CUresult r = current_ctx(&c);
  size_t i = 0;
  if (r == CUDA_SUCCESS) {
    while (i < g_reservations.len && g_reservations.at[i].addr != (uintptr_t)ptr) i++;
    if (i == g_reservations.len || g_reservations.at[i].size != size) r = CUDA_ERROR_INVALID_VALUE;
  }
  for (size_t k = 0; r == CUDA_SUCCESS && k < g_mappings.len; k++)
    if (g_mappings.at[k].addr >= (uintptr_t)ptr && g_mappings.at[k].addr < (uintptr_t)ptr + size)
      r = CUDA_ERROR_INVALID_VALUE; /* still mapped inside */
  if (r == CUDA_SUCCESS) {
    munmap((void *)(uintptr_t)ptr, size);
    g_reservations.at[i] = g_reservations.at[--g_reservations.len];
  }
  pthread_mutex_unlock(&g_lock);
  return r;
}

/* Offset 0, granule multiples, inside one reservation, over nothing already
 * mapped. The pages stay inaccessible until cuMemSetAccess. */
CUresult CUDAAPI cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                          unsigned long long flags) {
  EMU_ENTER(cuMemMap);
  if (!g_set.vmm) return CUDA_ERROR_NOT_SUPPORTED;
  if (flags != 0 || offset != 0 || size == 0 || size % g_set.granule || (uintptr_t)ptr % g_set.granule)
    return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&g_lock);
  emu_ctx *c;
  CUresult r = current_ctx(&c);
  emu_phys *p = r == CUDA_SUCCESS ? phys_of(handle) : NULL;
  uintptr_t start = (uintptr_t)ptr, end = start + size;
  if (r == CUDA_SUCCESS && (!p || p->released || size > p->size)) r = CUDA_ERROR_INVALID_VALUE;
  if (r == CUDA_SUCCESS) {
    bool inside = false;
    for (size_t i = 0; i < g_reservations.len && !inside; i++)
      inside = start >= g_reservations.at[i].addr && end <= g_reservations.at[i].addr + g_reservations.at[i].size &&
               end > start;
    if (!inside) r = CUDA_ERROR_INVALID_VALUE;
  }
  for (size_t i = 0; r == CUDA_SUCCESS && i < g_mappings.len; i++)
    if (g_mappings.at[i].addr < end && start < g_mappings.at[i].addr + g_mappings.at[i].size)
      r = CUDA_ERROR_INVALID_VALUE; /* overlaps a mapping */
  if (r == CUDA_SUCCESS) {
    emu_mapping m = {start, size, (size_t)(p - g_phys.at), PROT_NONE};
    if (!EMU_PUSH(g_mappings, m)) {
      r = CUDA_ERROR_OUT_OF_MEMORY;
    } else if (mmap((void *)start, size, PROT_NONE, MAP_SHARED | MAP_FIXED, g_devices[p->device].memfd,
                    (off_t)p->offset) == MAP_FAILED) {
      g_mappings.len--;
      r = CUDA_ERROR_OUT_OF_MEMORY;
    } else {
      p->maps++;
    }
  }
  pthread_mutex_unlock(&g_lock);
  return r;
}

/* Whole contiguous mappings only. The most permissive descriptor wins: the
 * host is every device here. */
CUresult CUDAAPI cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count) {
  EMU_ENTER(cuMemSetAccess);
  if (!desc || count == 0) return CUDA_ERROR_INVALID_VALUE;
  int prot = PROT_NONE;
  for (size_t i = 0; i < count; i++) {
    if (desc[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE) return CUDA_ERROR_INVALID_VALUE;
    if (!device_ok(desc[i].location.id)) return CUDA_ERROR_INVALID_DEVICE;
    switch (desc[i].flags) {
      case CU_MEM_ACCESS_FLAGS_PROT_NONE: break;
      case CU_MEM_ACCESS_FLAGS_PROT_READ: prot |= PROT_READ; break;
      case CU_MEM_ACCESS_FLAGS_PROT_READWRITE: prot |= PROT_READ | PROT_WRITE; break;
      default: return CUDA_ERROR_INVALID_VALUE;
    }
  }
  pthread_mutex_lock(&g_lock);
  emu_ctx *c;
  size_t n = 0;
  CUresult r = current_ctx(&c);
  if (r == CUDA_SUCCESS && !whole_mappings((uintptr_t)ptr, size, &n)) r = CUDA_ERROR_INVALID_VALUE;
  for (uintptr_t at = (uintptr_t)ptr; r == CUDA_SUCCESS && at < (uintptr_t)ptr + size;) {
    emu_mapping *m = mapping_at(at);
    if (mprotect((void *)m->addr, m->size, prot) != 0) r = CUDA_ERROR_UNKNOWN;
    else m->prot = prot;
    at += m->size;
  }
  pthread_mutex_unlock(&g_lock);
  return r;
}

/* Whole mappings, exactly; the range goes back to being reserved. An unmap
 * while work of the device is still pending is counted as unsafe: on a GPU
 * that work could touch the pages (the caller should synchronize first). */
CUresult CUDAAPI cuMemUnmap(CUdeviceptr ptr, size_t size) {
  EMU_ENTER(cuMemUnmap);
  pthread_mutex_lock(&g_lock);
  emu_ctx *c;
  size_t n = 0;
  CUresult r = current_ctx(&c);
  if (r == CUDA_SUCCESS && capture_forbids()) r = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  if (r == CUDA_SUCCESS && !whole_mappings((uintptr_t)ptr, size, &n)) r = CUDA_ERROR_INVALID_VALUE;
  if (r == CUDA_SUCCESS) {
    bool busy = false;
    for (uintptr_t at = (uintptr_t)ptr; at < (uintptr_t)ptr + size && !busy;) {
      emu_mapping *m = mapping_at(at);
      busy = device_busy(g_phys.at[m->phys].device);
      at += m->size;
    }
    if (busy) atomic_fetch_add(&g_unsafe_unmaps, 1);
    if (mmap((void *)(uintptr_t)ptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1,
             0) == MAP_FAILED)
      r = CUDA_ERROR_UNKNOWN;
  }
  if (r == CUDA_SUCCESS) {
    for (size_t i = 0; i < g_mappings.len;) {
      emu_mapping *m = &g_mappings.at[i];
      if (m->addr >= (uintptr_t)ptr && m->addr < (uintptr_t)ptr + size) {
        emu_phys *p = &g_phys.at[m->phys];
        if (--p->maps == 0 && p->released) phys_free(p);
        *m = g_mappings.at[--g_mappings.len];
      } else {
        i++;
      }
    }
  }
  pthread_mutex_unlock(&g_lock);
  return r;
}

/* ================================================================ errors */

/* Names are the enum's; the descriptions are the emulator's own words. */
#define EMU_ERRORS(X)                                                                                      \
  X(CUDA_SUCCESS, "no error")                                                                              \
  X(CUDA_ERROR_INVALID_VALUE, "an argument is invalid or out of range")                                    \
  X(CUDA_ERROR_OUT_OF_MEMORY, "the device has too little memory left for the request")                     \
  X(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not succeeded yet")                                            \
  X(CUDA_ERROR_DEINITIALIZED, "the driver is shutting down")                                               \
  X(CUDA_ERROR_NO_DEVICE, "there is no CUDA device")                                                       \
  X(CUDA_ERROR_INVALID_DEVICE, "no device has that ordinal")                                               \
  X(CUDA_ERROR_INVALID_CONTEXT, "no valid context is current on this thread")                              \
  X(CUDA_ERROR_CONTEXT_IS_DESTROYED, "the current context was destroyed or its last reference released")   \
  X(CUDA_ERROR_INVALID_HANDLE, "the handle is invalid or belongs to another context")                      \
  X(CUDA_ERROR_NOT_FOUND, "the named object does not exist")                                               \
  X(CUDA_ERROR_NOT_READY, "the work has not completed yet")                                                \
  X(CUDA_ERROR_ILLEGAL_ADDRESS, "device work touched memory that is not mapped for it")                    \
  X(CUDA_ERROR_LAUNCH_TIMEOUT, "the wait for device work timed out")                                       \
  X(CUDA_ERROR_NOT_SUPPORTED, "the device does not support the operation")                                 \
  X(CUDA_ERROR_ILLEGAL_STATE, "the object is in the wrong state for the operation")                        \
  X(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "the operation is not allowed while a stream captures")         \
  X(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, "an earlier error invalidated the capture")                     \
  X(CUDA_ERROR_STREAM_CAPTURE_UNMATCHED, "the capture did not begin on this stream")                       \
  X(CUDA_ERROR_STREAM_CAPTURE_IMPLICIT, "the legacy stream cannot be used while a blocking stream captures") \
  X(CUDA_ERROR_CAPTURED_EVENT, "the event was last recorded into a capture")                               \
  X(CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD, "the capture must be ended by the thread that began it")       \
  X(CUDA_ERROR_UNKNOWN, "an unknown error occurred")

static const struct {
  CUresult code;
  const char *name, *text;
} g_errors[] = {
#define EMU_X_ERROR(code, text) {code, #code, text},
    EMU_ERRORS(EMU_X_ERROR)
#undef EMU_X_ERROR
};

static CUresult code_from_name(const char *s, bool *ok) {
  char *end;
  long v = strtol(s, &end, 10);
  *ok = true;
  if (end != s && *end == '\0') return (CUresult)v;
  for (size_t i = 0; i < sizeof g_errors / sizeof g_errors[0]; i++)
    if (strcmp(g_errors[i].name, s) == 0) return g_errors[i].code;
  *ok = false;
  return CUDA_ERROR_INVALID_VALUE;
}

CUresult CUDAAPI cuGetErrorName(CUresult error, const char **pStr) {
  EMU_ENTER_NO_INIT(cuGetErrorName);
  if (!pStr) return CUDA_ERROR_INVALID_VALUE;
  for (size_t i = 0; i < sizeof g_errors / sizeof g_errors[0]; i++)
    if (g_errors[i].code == error) {
      *pStr = g_errors[i].name;
      return CUDA_SUCCESS;
    }
  *pStr = NULL;
  return CUDA_ERROR_INVALID_VALUE;
}

CUresult CUDAAPI cuGetErrorString(CUresult error, const char **pStr) {
  EMU_ENTER_NO_INIT(cuGetErrorString);
  if (!pStr) return CUDA_ERROR_INVALID_VALUE;
  for (size_t i = 0; i < sizeof g_errors / sizeof g_errors[0]; i++)
    if (g_errors[i].code == error) {
      *pStr = g_errors[i].text;
      return CUDA_SUCCESS;
    }
  *pStr = NULL;
  return CUDA_ERROR_INVALID_VALUE;
}

/* =========================================================== control API */

/* A call's index by its exported name, or by the name without its _vN
 * suffix ("cuMemAlloc" is cuMemAlloc_v2); -1 if unknown. */
static int call_index(const char *name) {
  if (!name) return -1;
  for (int i = 0; i < EMU_CALL_COUNT; i++)
    if (strcmp(g_call_names[i], name) == 0) return i;
  size_t n = strlen(name);
  for (int i = 0; i < EMU_CALL_COUNT; i++) {
    const char *full = g_call_names[i];
    if (strncmp(full, name, n) == 0 && full[n] == '_' && full[n + 1] == 'v') return i;
  }
  return -1;
}

int emucuda_hold_stream(CUstream h) {
  pthread_mutex_lock(&g_lock);
  emu_stream *s;
  CUresult r = resolve_stream(h, &s, NULL);
  if (r == CUDA_SUCCESS) s->held = true;
  pthread_mutex_unlock(&g_lock);
  return r;
}

/* Also works on a stream destroyed while held, which still drains. */
int emucuda_release_stream(CUstream h) {
  pthread_mutex_lock(&g_lock);
  emu_stream *s = stream_slot(h);
  CUresult r = CUDA_SUCCESS;
  if (!s || s->state == EMU_STREAM_FREE) r = resolve_stream(h, &s, NULL);
  if (r == CUDA_SUCCESS) {
    s->held = false;
    pthread_cond_broadcast(&g_work);
  }
  pthread_mutex_unlock(&g_lock);
  return r;
}

int emucuda_begin_capture(CUstream h, int mode) {
  if (mode < CU_STREAM_CAPTURE_MODE_GLOBAL || mode > CU_STREAM_CAPTURE_MODE_RELAXED) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&g_lock);
  emu_stream *s;
  bool legacy;
  CUresult r = resolve_stream(h, &s, &legacy);
  if (r == CUDA_SUCCESS && (s->is_default || legacy)) r = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  if (r == CUDA_SUCCESS && s->capture != CU_STREAM_CAPTURE_STATUS_NONE) r = CUDA_ERROR_ILLEGAL_STATE;
  if (r == CUDA_SUCCESS) {
    s->capture = CU_STREAM_CAPTURE_STATUS_ACTIVE;
    s->capture_mode = (CUstreamCaptureMode)mode;
    s->capture_thread = pthread_self();
    s->capture_id = ++g_capture_ids;
    g_active_captures++;
  }
  pthread_mutex_unlock(&g_lock);
  return r;
}

int emucuda_end_capture(CUstream h) {
  pthread_mutex_lock(&g_lock);
  emu_stream *s;
  CUresult r = resolve_stream(h, &s, NULL);
  if (r == CUDA_SUCCESS && s->capture == CU_STREAM_CAPTURE_STATUS_NONE) r = CUDA_ERROR_STREAM_CAPTURE_UNMATCHED;
  if (r == CUDA_SUCCESS && s->capture_mode != CU_STREAM_CAPTURE_MODE_RELAXED &&
      !pthread_equal(s->capture_thread, pthread_self()))
    r = CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD;
  if (r == CUDA_SUCCESS) {
    if (s->capture == CU_STREAM_CAPTURE_STATUS_INVALIDATED) r = CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    s->capture = CU_STREAM_CAPTURE_STATUS_NONE;
    g_active_captures--;
  }
  pthread_mutex_unlock(&g_lock);
  return r;
}

int emucuda_fail(const char *call, int result, int count, int skip) {
  int index = call_index(call);
  if (index < 0 || count < 0 || skip < 0) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&g_meta_lock);
  int slot = -1;
  for (int i = 0; i < EMU_MAX_INJECTIONS; i++) {
    if (g_inject[i].call == index && g_inject[i].remaining > 0) { /* replace the call's armed one */
      g_inject[i].remaining = 0;
      atomic_fetch_sub(&g_armed, 1);
    }
    if (slot < 0 && g_inject[i].remaining <= 0) slot = i;
  }
  CUresult r = CUDA_SUCCESS;
  if (count > 0 && slot < 0) {
    r = CUDA_ERROR_OUT_OF_MEMORY;
  } else if (count > 0) {
    g_inject[slot].call = index;
    g_inject[slot].skip = skip;
    g_inject[slot].remaining = count;
    g_inject[slot].result = (CUresult)result;
    atomic_fetch_add(&g_armed, 1);
  }
  pthread_mutex_unlock(&g_meta_lock);
  return r;
}

unsigned long long emucuda_calls(const char *call) {
  int index = call_index(call);
  return index < 0 ? ~0ull : atomic_load(&g_calls[index]);
}

void emucuda_reset(void) {
  for (int i = 0; i < EMU_CALL_COUNT; i++) atomic_store(&g_calls[i], 0);
  atomic_store(&g_violations, 0);
  atomic_store(&g_illegal, 0);
  atomic_store(&g_unsafe_unmaps, 0);
  atomic_store(&g_timeouts, 0);
  pthread_mutex_lock(&g_meta_lock);
  for (int i = 0; i < EMU_MAX_INJECTIONS; i++) g_inject[i].remaining = 0;
  atomic_store(&g_armed, 0);
  g_trace_len = 0;
  atomic_store(&g_tracing, false);
  pthread_mutex_unlock(&g_meta_lock);
  pthread_mutex_lock(&g_lock);
  for (int i = 0; i < EMU_MAX_CONTEXTS; i++) g_ctx[i].sticky = CUDA_SUCCESS;
  pthread_mutex_unlock(&g_lock);
}

unsigned long long emucuda_capture_violations(void) { return atomic_load(&g_violations); }
unsigned long long emucuda_illegal_accesses(void) { return atomic_load(&g_illegal); }
unsigned long long emucuda_unsafe_unmaps(void) { return atomic_load(&g_unsafe_unmaps); }
unsigned long long emucuda_wait_timeouts(void) { return atomic_load(&g_timeouts); }

unsigned long long emucuda_bytes_in_use(int device) {
  if (device < 0 || device >= EMU_MAX_DEVICES) return 0;
  pthread_mutex_lock(&g_lock);
  unsigned long long used = g_devices[device].used;
  pthread_mutex_unlock(&g_lock);
  return used;
}

/* How many of a kind of driver object are alive: "allocations" (cuMemAlloc),
 * "handles" (cuMemCreate memory not yet gone), "mappings", "reservations",
 * "streams" (cuStreamCreate'd, not destroyed), "events". ~0 if unknown. */
unsigned long long emucuda_live(const char *what) {
  unsigned long long n = ~0ull;
  if (!what) return n;
  pthread_mutex_lock(&g_lock);
  if (strcmp(what, "allocations") == 0) {
    n = g_allocs.len;
  } else if (strcmp(what, "mappings") == 0) {
    n = g_mappings.len;
  } else if (strcmp(what, "reservations") == 0) {
    n = g_reservations.len;
  } else if (strcmp(what, "handles") == 0) {
    n = 0;
    for (size_t i = 0; i < g_phys.len; i++) n += g_phys.at[i].in_use;
  } else if (strcmp(what, "streams") == 0) {
    n = 0;
    for (int i = 0; i < EMU_MAX_STREAMS; i++) n += g_streams[i].state == EMU_STREAM_LIVE && !g_streams[i].is_default;
  } else if (strcmp(what, "events") == 0) {
    n = 0;
    for (int i = 0; i < EMU_MAX_EVENTS; i++) n += g_events[i].in_use;
  }
  pthread_mutex_unlock(&g_lock);
  return n;
}

int emucuda_primary_refcount(int device) {
  if (device < 0 || device >= EMU_MAX_DEVICES) return -1;
  pthread_mutex_lock(&g_lock);
  int n = g_ctx[device].refcount;
  pthread_mutex_unlock(&g_lock);
  return n;
}

unsigned long long emucuda_stream_pending(CUstream h) {
  pthread_mutex_lock(&g_lock);
  emu_stream *s;
  unsigned long long n = resolve_stream(h, &s, NULL) == CUDA_SUCCESS ? s->submitted - s->completed : ~0ull;
  pthread_mutex_unlock(&g_lock);
  return n;
}

void emucuda_trace_start(void) {
  pthread_mutex_lock(&g_meta_lock);
  g_trace_len = 0;
  atomic_store(&g_tracing, true);
  pthread_mutex_unlock(&g_meta_lock);
}

void emucuda_trace_stop(void) { atomic_store(&g_tracing, false); }

/* The traced calls' names, one a line; returns the length the whole trace
 * needs (plus its NUL), like snprintf. */
size_t emucuda_trace_read(char *buf, size_t len) {
  pthread_mutex_lock(&g_meta_lock);
  size_t need = 0, written = 0;
  bool fits = true;
  for (size_t i = 0; i < g_trace_len; i++) {
    const char *name = g_call_names[g_trace[i]];
    size_t n = strlen(name);
    fits = fits && buf && written + n + 1 < len; /* whole names only */
    if (fits) {
      memcpy(buf + written, name, n);
      buf[written + n] = '\n';
      written += n + 1;
    }
    need += n + 1;
  }
  if (buf && len) buf[written] = '\0';
  pthread_mutex_unlock(&g_meta_lock);
  return need + 1;
}
