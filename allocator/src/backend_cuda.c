/* backend_cuda.c — the cuda backend: mf_backend_ops over the CUDA driver API.
 *
 * The driver is loaded at run time (dlopen "libcuda.so.1") so that one
 * libmemfit.so has no link-time CUDA dependency: it works inside any PyTorch
 * build and still loads, and reports MF_ERR_NO_DEVICE, on a machine without a
 * GPU. Every operation runs in the device's primary context, the one that the
 * CUDA runtime (and so PyTorch) uses. See allocator/CUDA.md.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#ifdef MEMFIT_NO_CUDA

mf_status mf_backend_cuda_create(mf_backend **out) {
  if (out) *out = NULL;
  return _mf_error(MF_ERR_NO_DEVICE, "memfit was built without its cuda backend (MEMFIT_CUDA=OFF)");
}

mf_status mf_backend_cuda_probe(void) {
  return _mf_error(MF_ERR_NO_DEVICE, "memfit was built without its cuda backend (MEMFIT_CUDA=OFF)");
}

#else /* !MEMFIT_NO_CUDA */

#include "cuda_driver.h"
#include <dlfcn.h>
#include <stdatomic.h>

typedef struct cuda_api {
  pfn_cuInit Init;
  pfn_cuDeviceGetCount DeviceGetCount;
  pfn_cuDeviceGet DeviceGet;
  pfn_cuDeviceTotalMem DeviceTotalMem;
  pfn_cuDevicePrimaryCtxRetain PrimaryCtxRetain;
  pfn_cuDevicePrimaryCtxRelease PrimaryCtxRelease;
  pfn_cuCtxGetCurrent CtxGetCurrent;
  pfn_cuCtxPushCurrent CtxPushCurrent;
  pfn_cuCtxPopCurrent CtxPopCurrent;
  pfn_cuCtxSynchronize CtxSynchronize;
  pfn_cuMemAlloc MemAlloc;
  pfn_cuMemFree MemFree;
  pfn_cuEventCreate EventCreate;
  pfn_cuEventRecord EventRecord;
  pfn_cuEventQuery EventQuery;
  pfn_cuEventSynchronize EventSynchronize;
  pfn_cuEventDestroy EventDestroy;
  /* Optional: only used to make messages better. */
  pfn_cuMemGetInfo MemGetInfo;
  pfn_cuGetErrorName GetErrorName;
  pfn_cuGetErrorString GetErrorString;
  /* Optional: the context of a stream (for events of a stream that belongs to
   * another device) and capture status (to refuse CUDA graph capture). */
  pfn_cuStreamGetCtx StreamGetCtx;
  pfn_cuStreamIsCapturing StreamIsCapturing;
  /* Optional: page mapping (vmm); all or none. */
  pfn_cuDeviceGetAttribute DeviceGetAttribute;
  pfn_cuMemGetAllocationGranularity MemGetAllocationGranularity;
  pfn_cuMemCreate MemCreate;
  pfn_cuMemRelease MemRelease;
  pfn_cuMemAddressReserve MemAddressReserve;
  pfn_cuMemAddressFree MemAddressFree;
  pfn_cuMemMap MemMap;
  pfn_cuMemUnmap MemUnmap;
  pfn_cuMemSetAccess MemSetAccess;
} cuda_api;

static const struct {
  const char *name;
  size_t offset;
} cuda_vmm_symbols[] = {
    {"cuDeviceGetAttribute", offsetof(cuda_api, DeviceGetAttribute)},
    {"cuMemGetAllocationGranularity", offsetof(cuda_api, MemGetAllocationGranularity)},
    {"cuMemCreate", offsetof(cuda_api, MemCreate)},
    {"cuMemRelease", offsetof(cuda_api, MemRelease)},
    {"cuMemAddressReserve", offsetof(cuda_api, MemAddressReserve)},
    {"cuMemAddressFree", offsetof(cuda_api, MemAddressFree)},
    {"cuMemMap", offsetof(cuda_api, MemMap)},
    {"cuMemUnmap", offsetof(cuda_api, MemUnmap)},
    {"cuMemSetAccess", offsetof(cuda_api, MemSetAccess)},
};

/* Required symbols, in the order of the fields above (all but the optional
 * ones). cuEventRecord is the legacy-default-stream flavour on purpose: stream
 * 0 means the legacy default stream, as in the runtime without
 * --default-stream per-thread; the _ptsz variants would reinterpret it. */
static const struct {
  const char *name;
  size_t offset;
} cuda_required[] = {
    {"cuInit", offsetof(cuda_api, Init)},
    {"cuDeviceGetCount", offsetof(cuda_api, DeviceGetCount)},
    {"cuDeviceGet", offsetof(cuda_api, DeviceGet)},
    {"cuDeviceTotalMem_v2", offsetof(cuda_api, DeviceTotalMem)},
    {"cuDevicePrimaryCtxRetain", offsetof(cuda_api, PrimaryCtxRetain)},
    {"cuDevicePrimaryCtxRelease_v2", offsetof(cuda_api, PrimaryCtxRelease)},
    {"cuCtxGetCurrent", offsetof(cuda_api, CtxGetCurrent)},
    {"cuCtxPushCurrent_v2", offsetof(cuda_api, CtxPushCurrent)},
    {"cuCtxPopCurrent_v2", offsetof(cuda_api, CtxPopCurrent)},
    {"cuCtxSynchronize", offsetof(cuda_api, CtxSynchronize)},
    {"cuMemAlloc_v2", offsetof(cuda_api, MemAlloc)},
    {"cuMemFree_v2", offsetof(cuda_api, MemFree)},
    {"cuEventCreate", offsetof(cuda_api, EventCreate)},
    {"cuEventRecord", offsetof(cuda_api, EventRecord)},
    {"cuEventQuery", offsetof(cuda_api, EventQuery)},
    {"cuEventSynchronize", offsetof(cuda_api, EventSynchronize)},
    {"cuEventDestroy_v2", offsetof(cuda_api, EventDestroy)},
};

/* Events are created once and reused: cuEventCreate/Destroy cost a driver
 * call each, and the allocator records one event per record_stream'd block
 * per free. A bounded pool keeps a burst from pinning driver objects. */
#define CUDA_EVENT_POOL_MAX 1024

/* An event as the allocator holds it: the driver's event and the context it
 * was created in, which is the context of the stream it was recorded on (the
 * driver refuses to record an event on another context's stream). Events of
 * the device's own context are pooled; those of another device's streams
 * (record_stream across devices, rare) are destroyed after use. */
typedef struct cuda_event {
  mf_cu_event ev;
  mf_cu_context ctx;
  bool foreign;
} cuda_event;

typedef struct cuda_device {
  mf_cu_device dev;
  /* The retained primary context, NULL until first use. Read without the
   * lock on the fast path, so atomic; written once under init_lock. */
  _Atomic(mf_cu_context) ctx;
  pthread_mutex_t pool_lock; /* the allocator may call event_destroy without its device lock */
  cuda_event **pool;
  size_t pool_len;
} cuda_device;

typedef struct cuda_backend {
  mf_backend base; /* first: the allocator sees only this */
  void *lib;
  cuda_api api;
  int count;
  pthread_mutex_t init_lock; /* serializes lazy context retains across devices */
  cuda_device *devices;
  const char *vmm_missing; /* the first vmm symbol the driver lacks, NULL if it has them all */
} cuda_backend;

static cuda_backend *cuda_of(mf_backend *b) { return (cuda_backend *)b; }

/* "MF_CU_ERROR_OUT_OF_MEMORY (out of memory)"; works with a driver that lacks
 * the name functions or does not know the code. */
static void cuda_describe(const cuda_api *api, mf_cu_result r, char *buf, size_t len) {
  const char *name = NULL, *text = NULL;
  if (api->GetErrorName && api->GetErrorName(r, &name) != MF_CU_SUCCESS) name = NULL;
  if (api->GetErrorString && api->GetErrorString(r, &text) != MF_CU_SUCCESS) text = NULL;
  if (name && text)
    snprintf(buf, len, "%s (%s)", name, text);
  else if (name)
    snprintf(buf, len, "%s", name);
  else
    snprintf(buf, len, "mf_cu_result %d", (int)r);
}

static mf_status cuda_fail(cuda_backend *cb, mf_status status, mf_cu_result r, const char *what,
                           int device) {
  char desc[256];
  cuda_describe(&cb->api, r, desc, sizeof desc);
  return _mf_error(status, "cuda backend: %s on device %d failed: %s", what, device, desc);
}

static mf_status cuda_check_device(cuda_backend *cb, int device) {
  if (device < 0 || device >= cb->count)
    return _mf_error(MF_ERR_INVALID, "cuda backend: device %d out of range (0..%d)", device,
                     cb->count - 1);
  return MF_OK;
}

/* The device's primary context, retained on first use. A mutex rather than
 * pthread_once per device: the device count is only known at run time, and
 * a failed retain must be retried by the next call, not remembered. */
static mf_status cuda_context(cuda_backend *cb, int device, mf_cu_context *out) {
  cuda_device *d = &cb->devices[device];
  mf_cu_context ctx = atomic_load_explicit(&d->ctx, memory_order_acquire);
  if (MF_LIKELY(ctx != NULL)) {
    *out = ctx;
    return MF_OK;
  }
  pthread_mutex_lock(&cb->init_lock);
  ctx = atomic_load_explicit(&d->ctx, memory_order_relaxed);
  mf_status st = MF_OK;
  if (ctx == NULL) {
    mf_cu_result r = cb->api.PrimaryCtxRetain(&ctx, d->dev);
    if (r != MF_CU_SUCCESS || ctx == NULL) {
      st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuDevicePrimaryCtxRetain", device);
    } else {
      atomic_store_explicit(&d->ctx, ctx, memory_order_release);
    }
  }
  pthread_mutex_unlock(&cb->init_lock);
  if (st == MF_OK) *out = ctx;
  return st;
}

/* Make the device's primary context current for one operation. The context
 * stack is per thread, so this is safe across threads; *pushed says whether
 * cuda_leave must pop. When the caller (PyTorch) already has that context
 * current, nothing is pushed: the common case costs one cuCtxGetCurrent. */
/* Push `ctx` unless it is current; *pushed says whether to pop. */
static mf_status cuda_enter_ctx(cuda_backend *cb, int device, mf_cu_context ctx, bool *pushed) {
  *pushed = false;
  mf_cu_context cur = NULL;
  mf_cu_result r = cb->api.CtxGetCurrent(&cur);
  if (r != MF_CU_SUCCESS) return cuda_fail(cb, MF_ERR_BACKEND, r, "cuCtxGetCurrent", device);
  if (cur == ctx) return MF_OK;
  r = cb->api.CtxPushCurrent(ctx);
  if (r != MF_CU_SUCCESS) return cuda_fail(cb, MF_ERR_BACKEND, r, "cuCtxPushCurrent", device);
  *pushed = true;
  return MF_OK;
}

static mf_status cuda_enter(cuda_backend *cb, int device, bool *pushed) {
  *pushed = false;
  mf_status st = cuda_check_device(cb, device);
  if (st != MF_OK) return st;
  mf_cu_context want;
  st = cuda_context(cb, device, &want);
  if (st != MF_OK) return st;
  return cuda_enter_ctx(cb, device, want, pushed);
}

/* Pop what cuda_enter pushed. A failed pop leaves the thread's context stack
 * one deeper than it was, which nothing can repair from here: it is reported
 * only if the operation itself succeeded, so that the first error wins. */
static mf_status cuda_leave(cuda_backend *cb, int device, bool pushed, mf_status st) {
  if (!pushed) return st;
  mf_cu_context popped = NULL;
  mf_cu_result r = cb->api.CtxPopCurrent(&popped);
  if (r != MF_CU_SUCCESS && st == MF_OK)
    return cuda_fail(cb, MF_ERR_BACKEND, r, "cuCtxPopCurrent", device);
  return st;
}

/* ------------------------------------------------------------- the ops */

static int cuda_device_count(mf_backend *b) { return cuda_of(b)->count; }

static mf_status cuda_total_memory(mf_backend *b, int device, uint64_t *bytes) {
  cuda_backend *cb = cuda_of(b);
  mf_status st = cuda_check_device(cb, device);
  if (st != MF_OK) return st;
  size_t total = 0; /* a device property: no context needed */
  mf_cu_result r = cb->api.DeviceTotalMem(&total, cb->devices[device].dev);
  if (r != MF_CU_SUCCESS) return cuda_fail(cb, MF_ERR_BACKEND, r, "cuDeviceTotalMem", device);
  *bytes = (uint64_t)total;
  return MF_OK;
}

static mf_status cuda_map(mf_backend *b, int device, size_t size, uintptr_t *addr) {
  cuda_backend *cb = cuda_of(b);
  bool pushed;
  mf_status st = cuda_enter(cb, device, &pushed);
  if (st != MF_OK) return st;
  mf_cu_deviceptr p = 0;
  mf_cu_result r = cb->api.MemAlloc(&p, size);
  if (r == MF_CU_SUCCESS) {
    *addr = (uintptr_t)p;
  } else if (r == MF_CU_ERROR_OUT_OF_MEMORY) {
    /* Say what the driver still has: other processes and other allocators
     * in this process (cuBLAS workspaces, NCCL) share the device. */
    size_t free_b = 0, total_b = 0;
    char want[32], fb[32], tb[32];
    mf_format_bytes(size, want, sizeof want);
    if (cb->api.MemGetInfo && cb->api.MemGetInfo(&free_b, &total_b) == MF_CU_SUCCESS)
      st = _mf_error(MF_ERR_OOM,
                     "cuda backend: cuMemAlloc of %s on device %d: out of memory (driver reports "
                     "%s free of %s)",
                     want, device, mf_format_bytes(free_b, fb, sizeof fb),
                     mf_format_bytes(total_b, tb, sizeof tb));
    else
      st = _mf_error(MF_ERR_OOM, "cuda backend: cuMemAlloc of %s on device %d: out of memory",
                     want, device);
  } else {
    st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuMemAlloc", device);
  }
  return cuda_leave(cb, device, pushed, st);
}

static mf_status cuda_unmap(mf_backend *b, int device, uintptr_t addr, size_t size) {
  (void)size;
  cuda_backend *cb = cuda_of(b);
  bool pushed;
  mf_status st = cuda_enter(cb, device, &pushed);
  if (st != MF_OK) return st;
  mf_cu_result r = cb->api.MemFree((mf_cu_deviceptr)addr);
  if (r != MF_CU_SUCCESS) st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuMemFree", device);
  return cuda_leave(cb, device, pushed, st);
}

/* The context of `stream`: the device's primary context for the default
 * streams (0, legacy, per-thread: the default stream of whichever context is
 * current, and the allocator makes the block's device current), else the
 * driver's answer. Without cuStreamGetCtx (very old drivers), the device's. */
static mf_status cuda_stream_context(cuda_backend *cb, int device, uintptr_t stream, mf_cu_context home,
                                     mf_cu_context *out) {
  *out = home;
  if (stream == 0 || stream == MF_CU_STREAM_LEGACY || stream == MF_CU_STREAM_PER_THREAD || !cb->api.StreamGetCtx)
    return MF_OK;
  mf_cu_context ctx = NULL;
  mf_cu_result r = cb->api.StreamGetCtx((mf_cu_stream)stream, &ctx);
  if (r != MF_CU_SUCCESS) return cuda_fail(cb, MF_ERR_BACKEND, r, "cuStreamGetCtx", device);
  if (ctx) *out = ctx;
  return MF_OK;
}

static mf_status cuda_event_record(mf_backend *b, int device, uintptr_t stream, void **event) {
  cuda_backend *cb = cuda_of(b);
  mf_status st = cuda_check_device(cb, device);
  if (st != MF_OK) return st;
  mf_cu_context home, ctx;
  if ((st = cuda_context(cb, device, &home)) != MF_OK) return st;
  if ((st = cuda_stream_context(cb, device, stream, home, &ctx)) != MF_OK) return st;
  bool pushed;
  if ((st = cuda_enter_ctx(cb, device, ctx, &pushed)) != MF_OK) return st;
  cuda_device *d = &cb->devices[device];
  cuda_event *e = NULL;
  if (ctx == home) {
    pthread_mutex_lock(&d->pool_lock);
    if (d->pool_len > 0) e = d->pool[--d->pool_len];
    pthread_mutex_unlock(&d->pool_lock);
  }
  mf_cu_result r = MF_CU_SUCCESS;
  if (e == NULL) {
    e = calloc(1, sizeof *e);
    if (e == NULL) {
      st = _mf_error(MF_ERR_HOST_MEMORY, "cuda backend: out of host memory for an event");
      return cuda_leave(cb, device, pushed, st);
    }
    /* No timing: such events are cheaper to record and to query. */
    r = cb->api.EventCreate(&e->ev, MF_CU_EVENT_DISABLE_TIMING);
    if (r != MF_CU_SUCCESS) {
      free(e);
      st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuEventCreate", device);
      return cuda_leave(cb, device, pushed, st);
    }
    e->ctx = ctx;
    e->foreign = ctx != home;
  }
  r = cb->api.EventRecord(e->ev, (mf_cu_stream)stream);
  if (r != MF_CU_SUCCESS) {
    st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuEventRecord", device);
    cb->api.EventDestroy(e->ev); /* possibly broken: do not pool it */
    free(e);
  } else {
    *event = e;
  }
  return cuda_leave(cb, device, pushed, st);
}

static mf_status cuda_event_query(mf_backend *b, int device, void *event, bool *complete) {
  cuda_backend *cb = cuda_of(b);
  cuda_event *e = event;
  bool pushed;
  mf_status st = cuda_enter_ctx(cb, device, e->ctx, &pushed);
  if (st != MF_OK) return st;
  mf_cu_result r = cb->api.EventQuery(e->ev);
  if (r == MF_CU_SUCCESS)
    *complete = true;
  else if (r == MF_CU_ERROR_NOT_READY)
    *complete = false;
  else if (r == MF_CU_ERROR_STREAM_CAPTURE_UNSUPPORTED || r == MF_CU_ERROR_STREAM_CAPTURE_IMPLICIT ||
           r == MF_CU_ERROR_CAPTURED_EVENT)
    st = cuda_fail(cb, MF_ERR_UNSUPPORTED, r, "cuEventQuery during a CUDA graph capture", device);
  else
    st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuEventQuery", device);
  return cuda_leave(cb, device, pushed, st);
}

static mf_status cuda_event_synchronize(mf_backend *b, int device, void *event) {
  cuda_backend *cb = cuda_of(b);
  cuda_event *e = event;
  bool pushed;
  mf_status st = cuda_enter_ctx(cb, device, e->ctx, &pushed);
  if (st != MF_OK) return st;
  mf_cu_result r = cb->api.EventSynchronize(e->ev);
  if (r != MF_CU_SUCCESS) st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuEventSynchronize", device);
  return cuda_leave(cb, device, pushed, st);
}

static void cuda_event_destroy(mf_backend *b, int device, void *event) {
  cuda_backend *cb = cuda_of(b);
  cuda_event *e = event;
  if (e == NULL || device < 0 || device >= cb->count) return;
  cuda_device *d = &cb->devices[device];
  if (!e->foreign) {
    pthread_mutex_lock(&d->pool_lock);
    if (d->pool_len < CUDA_EVENT_POOL_MAX) {
      d->pool[d->pool_len++] = e;
      e = NULL;
    }
    pthread_mutex_unlock(&d->pool_lock);
  }
  if (e) { /* a void op: nothing to report to */
    cb->api.EventDestroy(e->ev);
    free(e);
  }
}

/* Whether `stream` is capturing a CUDA graph. A driver without
 * cuStreamIsCapturing has no graphs to capture into. */
static mf_status cuda_stream_capturing(mf_backend *b, int device, uintptr_t stream, bool *capturing) {
  cuda_backend *cb = cuda_of(b);
  *capturing = false;
  if (!cb->api.StreamIsCapturing) return MF_OK;
  /* One driver call on every allocation: a stream knows its own context, and
   * under PyTorch the device's context is current for the default streams.
   * Only without a current context is the device's pushed for the call. */
  int status = MF_CU_STREAM_CAPTURE_STATUS_NONE;
  mf_cu_result r = cb->api.StreamIsCapturing((mf_cu_stream)stream, &status);
  mf_status st = MF_OK;
  if (r == MF_CU_ERROR_INVALID_CONTEXT) {
    bool pushed;
    if ((st = cuda_enter(cb, device, &pushed)) != MF_OK) return st;
    r = cb->api.StreamIsCapturing((mf_cu_stream)stream, &status);
    if (r != MF_CU_SUCCESS) st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuStreamIsCapturing", device);
    st = cuda_leave(cb, device, pushed, st);
  } else if (r == MF_CU_ERROR_STREAM_CAPTURE_IMPLICIT) {
    status = MF_CU_STREAM_CAPTURE_STATUS_ACTIVE; /* the legacy stream, while a blocking stream captures */
  } else if (r != MF_CU_SUCCESS) {
    st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuStreamIsCapturing", device);
  }
  if (st == MF_OK) *capturing = status != MF_CU_STREAM_CAPTURE_STATUS_NONE;
  return st;
}

static mf_status cuda_synchronize(mf_backend *b, int device) {
  cuda_backend *cb = cuda_of(b);
  bool pushed;
  mf_status st = cuda_enter(cb, device, &pushed);
  if (st != MF_OK) return st;
  mf_cu_result r = cb->api.CtxSynchronize();
  if (r != MF_CU_SUCCESS) st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuCtxSynchronize", device);
  return cuda_leave(cb, device, pushed, st);
}

/* ------------------------------------------------------ page mapping (vmm) */

static mf_cu_mem_prop cuda_pinned_on(const cuda_device *d) {
  mf_cu_mem_prop prop;
  memset(&prop, 0, sizeof prop);
  prop.type = MF_CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = MF_CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = d->dev;
  return prop;
}

static mf_status cuda_granularity(mf_backend *b, int device, size_t *minimum, size_t *recommended) {
  cuda_backend *cb = cuda_of(b);
  mf_status st = cuda_check_device(cb, device);
  if (st != MF_OK) return st;
  if (cb->vmm_missing)
    return _mf_error(MF_ERR_NO_DEVICE, "cuda backend: the NVIDIA driver has no %s (virtual memory management)",
                     cb->vmm_missing);
  int supported = 0;
  mf_cu_result r = cb->api.DeviceGetAttribute(&supported, MF_CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
                                          cb->devices[device].dev);
  if (r != MF_CU_SUCCESS) return cuda_fail(cb, MF_ERR_BACKEND, r, "cuDeviceGetAttribute", device);
  if (!supported)
    return _mf_error(MF_ERR_NO_DEVICE, "cuda backend: device %d does not support virtual memory management", device);
  mf_cu_mem_prop prop = cuda_pinned_on(&cb->devices[device]);
  r = cb->api.MemGetAllocationGranularity(minimum, &prop, MF_CU_MEM_ALLOC_GRANULARITY_MINIMUM);
  if (r == MF_CU_SUCCESS) r = cb->api.MemGetAllocationGranularity(recommended, &prop, MF_CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);
  if (r != MF_CU_SUCCESS) return cuda_fail(cb, MF_ERR_BACKEND, r, "cuMemGetAllocationGranularity", device);
  return MF_OK;
}

static mf_status cuda_reserve(mf_backend *b, int device, size_t size, size_t align, uintptr_t *addr) {
  cuda_backend *cb = cuda_of(b);
  bool pushed;
  mf_status st = cuda_enter(cb, device, &pushed);
  if (st != MF_OK) return st;
  mf_cu_deviceptr p = 0;
  mf_cu_result r = cb->api.MemAddressReserve(&p, size, align, 0, 0);
  if (r == MF_CU_SUCCESS) *addr = (uintptr_t)p;
  else st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuMemAddressReserve", device);
  return cuda_leave(cb, device, pushed, st);
}

static mf_status cuda_unreserve(mf_backend *b, int device, uintptr_t addr, size_t size) {
  cuda_backend *cb = cuda_of(b);
  bool pushed;
  mf_status st = cuda_enter(cb, device, &pushed);
  if (st != MF_OK) return st;
  mf_cu_result r = cb->api.MemAddressFree((mf_cu_deviceptr)addr, size);
  if (r != MF_CU_SUCCESS) st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuMemAddressFree", device);
  return cuda_leave(cb, device, pushed, st);
}

static void cuda_release(mf_backend *b, int device, size_t granule, size_t n, const uint64_t *handles) {
  (void)granule;
  cuda_backend *cb = cuda_of(b);
  bool pushed;
  if (cuda_enter(cb, device, &pushed) != MF_OK) return;
  for (size_t i = 0; i < n; i++) cb->api.MemRelease((mf_cu_mem_handle)handles[i]);
  cuda_leave(cb, device, pushed, MF_OK);
}

static mf_status cuda_create(mf_backend *b, int device, size_t granule, size_t n, uint64_t *handles) {
  cuda_backend *cb = cuda_of(b);
  bool pushed;
  mf_status st = cuda_enter(cb, device, &pushed);
  if (st != MF_OK) return st;
  mf_cu_mem_prop prop = cuda_pinned_on(&cb->devices[device]);
  size_t made = 0;
  for (; made < n; made++) {
    mf_cu_mem_handle h = 0;
    mf_cu_result r = cb->api.MemCreate(&h, granule, &prop, 0);
    if (r == MF_CU_ERROR_OUT_OF_MEMORY) {
      char want[32];
      st = _mf_error(MF_ERR_OOM, "cuda backend: cuMemCreate of %zu granules (%s) on device %d: out of memory", n,
                     mf_format_bytes((uint64_t)n * granule, want, sizeof want), device);
      break;
    }
    if (r != MF_CU_SUCCESS) {
      st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuMemCreate", device);
      break;
    }
    handles[made] = (uint64_t)h;
  }
  if (st != MF_OK)
    for (size_t i = 0; i < made; i++) cb->api.MemRelease((mf_cu_mem_handle)handles[i]);
  return cuda_leave(cb, device, pushed, st);
}

static mf_status cuda_vunmap(mf_backend *b, int device, uintptr_t addr, size_t granule, size_t n) {
  cuda_backend *cb = cuda_of(b);
  bool pushed;
  mf_status st = cuda_enter(cb, device, &pushed);
  if (st != MF_OK) return st;
  /* Each granule was mapped on its own: cuMemUnmap takes whole mappings only. */
  for (size_t i = 0; i < n; i++) {
    mf_cu_result r = cb->api.MemUnmap((mf_cu_deviceptr)(addr + i * granule), granule);
    if (r != MF_CU_SUCCESS && st == MF_OK) st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuMemUnmap", device);
  }
  return cuda_leave(cb, device, pushed, st);
}

static mf_status cuda_vmap(mf_backend *b, int device, uintptr_t addr, size_t granule, size_t n,
                           const uint64_t *handles) {
  cuda_backend *cb = cuda_of(b);
  bool pushed;
  mf_status st = cuda_enter(cb, device, &pushed);
  if (st != MF_OK) return st;
  size_t mapped = 0;
  mf_cu_result r = MF_CU_SUCCESS;
  for (; mapped < n; mapped++) {
    r = cb->api.MemMap((mf_cu_deviceptr)(addr + mapped * granule), granule, 0,
                       (mf_cu_mem_handle)handles[mapped], 0);
    if (r != MF_CU_SUCCESS) break;
  }
  if (r == MF_CU_SUCCESS) {
    mf_cu_access_desc access;
    memset(&access, 0, sizeof access);
    access.location.type = MF_CU_MEM_LOCATION_TYPE_DEVICE;
    access.location.id = cb->devices[device].dev;
    access.flags = MF_CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    r = cb->api.MemSetAccess((mf_cu_deviceptr)addr, n * granule, &access, 1); /* one call for the whole run */
    if (r != MF_CU_SUCCESS) st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuMemSetAccess", device);
  } else {
    st = cuda_fail(cb, r == MF_CU_ERROR_OUT_OF_MEMORY ? MF_ERR_OOM : MF_ERR_BACKEND, r, "cuMemMap", device);
  }
  if (st != MF_OK)
    for (size_t i = 0; i < mapped; i++) cb->api.MemUnmap((mf_cu_deviceptr)(addr + i * granule), granule);
  return cuda_leave(cb, device, pushed, st);
}

static void cuda_destroy(mf_backend *b) {
  cuda_backend *cb = cuda_of(b);
  if (cb == NULL) return;
  for (int i = 0; cb->devices && i < cb->count; i++) {
    cuda_device *d = &cb->devices[i];
    mf_cu_context ctx = atomic_load(&d->ctx);
    if (ctx) {
      /* Pooled events belong to this context: destroy them while it is
       * still retained, then drop our reference to it. */
      for (size_t k = 0; k < d->pool_len; k++) {
        cb->api.EventDestroy(d->pool[k]->ev);
        free(d->pool[k]);
      }
      cb->api.PrimaryCtxRelease(d->dev);
    }
    free(d->pool);
    pthread_mutex_destroy(&d->pool_lock);
  }
  free(cb->devices);
  pthread_mutex_destroy(&cb->init_lock);
  /* dlclose only drops our reference: the runtime in the same process
   * (PyTorch) keeps the driver loaded. */
  if (cb->lib) dlclose(cb->lib);
  free(cb);
}

static const mf_backend_ops cuda_ops = {
    .name = "cuda",
    .device_count = cuda_device_count,
    .total_memory = cuda_total_memory,
    .map = cuda_map,
    .unmap = cuda_unmap,
    .event_record = cuda_event_record,
    .event_query = cuda_event_query,
    .event_synchronize = cuda_event_synchronize,
    .event_destroy = cuda_event_destroy,
    .synchronize = cuda_synchronize,
    .destroy = cuda_destroy,
    .stream_capturing = cuda_stream_capturing,
    .vmm_granularity = cuda_granularity,
    .vmm_reserve = cuda_reserve,
    .vmm_unreserve = cuda_unreserve,
    .vmm_create = cuda_create,
    .vmm_release = cuda_release,
    .vmm_map = cuda_vmap,
    .vmm_unmap = cuda_vunmap,
};

/* ------------------------------------------------------------- creation */

static mf_status cuda_load(cuda_backend *cb) {
  dlerror(); /* clear a stale message */
  cb->lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (cb->lib == NULL) {
    const char *why = dlerror();
    return _mf_error(MF_ERR_NO_DEVICE,
                     "cuda backend: libcuda.so.1 not found (no NVIDIA driver): %s",
                     why ? why : "dlopen failed");
  }
  /* dlsym gives a void*; POSIX guarantees it converts to a function pointer,
   * spelled as memcpy so that ISO C (-Wpedantic) has nothing to object to. */
  for (size_t i = 0; i < sizeof cuda_required / sizeof cuda_required[0]; i++) {
    void *f = dlsym(cb->lib, cuda_required[i].name);
    if (f == NULL)
      return _mf_error(MF_ERR_NO_DEVICE,
                       "cuda backend: the NVIDIA driver is too old: libcuda.so.1 has no %s",
                       cuda_required[i].name);
    memcpy((char *)&cb->api + cuda_required[i].offset, &f, sizeof f);
  }
  void *f;
  if ((f = dlsym(cb->lib, "cuMemGetInfo_v2"))) memcpy(&cb->api.MemGetInfo, &f, sizeof f);
  if ((f = dlsym(cb->lib, "cuGetErrorName"))) memcpy(&cb->api.GetErrorName, &f, sizeof f);
  if ((f = dlsym(cb->lib, "cuGetErrorString"))) memcpy(&cb->api.GetErrorString, &f, sizeof f);
  /* The plain (not _ptsz) flavours: stream 0 is the legacy default stream. */
  if ((f = dlsym(cb->lib, "cuStreamGetCtx"))) memcpy(&cb->api.StreamGetCtx, &f, sizeof f);
  if ((f = dlsym(cb->lib, "cuStreamIsCapturing"))) memcpy(&cb->api.StreamIsCapturing, &f, sizeof f);
  for (size_t i = 0; i < sizeof cuda_vmm_symbols / sizeof cuda_vmm_symbols[0]; i++) {
    if (!(f = dlsym(cb->lib, cuda_vmm_symbols[i].name))) {
      cb->vmm_missing = cuda_vmm_symbols[i].name; /* vmm:auto falls back to cuMemAlloc segments */
      break;
    }
    memcpy((char *)&cb->api + cuda_vmm_symbols[i].offset, &f, sizeof f);
  }
  return MF_OK;
}

static mf_status cuda_init(cuda_backend *cb) {
  char desc[256];
  /* cuInit may be called any number of times; PyTorch's runtime has usually
   * called it already. */
  mf_cu_result r = cb->api.Init(0);
  if (r == MF_CU_ERROR_NO_DEVICE)
    return _mf_error(MF_ERR_NO_DEVICE, "cuda backend: no CUDA device (cuInit: MF_CU_ERROR_NO_DEVICE)");
  if (r != MF_CU_SUCCESS) {
    cuda_describe(&cb->api, r, desc, sizeof desc);
    return _mf_error(MF_ERR_BACKEND, "cuda backend: cuInit failed: %s", desc);
  }
  int count = 0;
  r = cb->api.DeviceGetCount(&count);
  if (r == MF_CU_ERROR_NO_DEVICE || (r == MF_CU_SUCCESS && count <= 0))
    return _mf_error(MF_ERR_NO_DEVICE, "cuda backend: no CUDA device (the driver reports 0)");
  if (r != MF_CU_SUCCESS) {
    cuda_describe(&cb->api, r, desc, sizeof desc);
    return _mf_error(MF_ERR_BACKEND, "cuda backend: cuDeviceGetCount failed: %s", desc);
  }
  cb->devices = calloc((size_t)count, sizeof *cb->devices);
  if (cb->devices == NULL)
    return _mf_error(MF_ERR_HOST_MEMORY, "cuda backend: out of host memory for %d devices", count);
  for (int i = 0; i < count; i++) {
    cuda_device *d = &cb->devices[i];
    atomic_init(&d->ctx, NULL);
    pthread_mutex_init(&d->pool_lock, NULL);
    cb->count = i + 1; /* from here on, cuda_destroy cleans device i up */
    d->pool = malloc(CUDA_EVENT_POOL_MAX * sizeof *d->pool);
    if (d->pool == NULL)
      return _mf_error(MF_ERR_HOST_MEMORY, "cuda backend: out of host memory for event pools");
    r = cb->api.DeviceGet(&d->dev, i);
    if (r != MF_CU_SUCCESS) {
      cuda_describe(&cb->api, r, desc, sizeof desc);
      return _mf_error(MF_ERR_BACKEND, "cuda backend: cuDeviceGet(%d) failed: %s", i, desc);
    }
  }
  return MF_OK;
}

mf_status mf_backend_cuda_probe(void) {
  cuda_backend probe;
  memset(&probe, 0, sizeof probe);
  mf_status st = cuda_load(&probe);
  if (probe.lib) dlclose(probe.lib);
  return st;
}

mf_status mf_backend_cuda_create(mf_backend **out) {
  if (out == NULL) return _mf_error(MF_ERR_INVALID, "mf_backend_cuda_create: out is NULL");
  *out = NULL;
  cuda_backend *cb = calloc(1, sizeof *cb);
  if (cb == NULL) return _mf_error(MF_ERR_HOST_MEMORY, "cuda backend: out of host memory");
  cb->base.ops = &cuda_ops;
  pthread_mutex_init(&cb->init_lock, NULL);
  mf_status st = cuda_load(cb);
  if (st == MF_OK) st = cuda_init(cb);
  if (st != MF_OK) {
    cuda_destroy(&cb->base); /* keeps the message: it calls no _mf_error */
    return st;
  }
  *out = &cb->base;
  return MF_OK;
}

#endif /* MEMFIT_NO_CUDA */
