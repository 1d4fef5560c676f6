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

#ifndef MEMFIT_HAVE_CUDA

mf_status mf_backend_cuda_create(mf_backend **out) {
  if (out) *out = NULL;
  return _mf_error(MF_ERR_NO_DEVICE,
                   "memfit was built without CUDA headers (MEMFIT_CUDA=OFF or cuda.h not found)");
}

#else /* MEMFIT_HAVE_CUDA */

#include <cuda.h>
#include <dlfcn.h>
#include <stdatomic.h>

/* Our own pointer types, one per driver entry point. They are looked up by the
 * versioned names that cuda.h's macros map to (cuMemAlloc -> cuMemAlloc_v2):
 * the unversioned symbols still exported by the driver are the old ABIs
 * (32-bit sizes), which would be silently wrong. */
typedef CUresult(CUDAAPI *pfn_cuInit)(unsigned int);
typedef CUresult(CUDAAPI *pfn_cuDeviceGetCount)(int *);
typedef CUresult(CUDAAPI *pfn_cuDeviceGet)(CUdevice *, int);
typedef CUresult(CUDAAPI *pfn_cuDeviceTotalMem)(size_t *, CUdevice);
typedef CUresult(CUDAAPI *pfn_cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
typedef CUresult(CUDAAPI *pfn_cuDevicePrimaryCtxRelease)(CUdevice);
typedef CUresult(CUDAAPI *pfn_cuCtxGetCurrent)(CUcontext *);
typedef CUresult(CUDAAPI *pfn_cuCtxPushCurrent)(CUcontext);
typedef CUresult(CUDAAPI *pfn_cuCtxPopCurrent)(CUcontext *);
typedef CUresult(CUDAAPI *pfn_cuCtxSynchronize)(void);
typedef CUresult(CUDAAPI *pfn_cuMemAlloc)(CUdeviceptr *, size_t);
typedef CUresult(CUDAAPI *pfn_cuMemFree)(CUdeviceptr);
typedef CUresult(CUDAAPI *pfn_cuMemGetInfo)(size_t *, size_t *);
typedef CUresult(CUDAAPI *pfn_cuEventCreate)(CUevent *, unsigned int);
typedef CUresult(CUDAAPI *pfn_cuEventRecord)(CUevent, CUstream);
typedef CUresult(CUDAAPI *pfn_cuEventQuery)(CUevent);
typedef CUresult(CUDAAPI *pfn_cuEventSynchronize)(CUevent);
typedef CUresult(CUDAAPI *pfn_cuEventDestroy)(CUevent);
typedef CUresult(CUDAAPI *pfn_cuGetErrorName)(CUresult, const char **);
typedef CUresult(CUDAAPI *pfn_cuGetErrorString)(CUresult, const char **);
/* Virtual memory management (vmm): optional, CUDA >= 10.2 drivers. */
typedef CUresult(CUDAAPI *pfn_cuDeviceGetAttribute)(int *, CUdevice_attribute, CUdevice);
typedef CUresult(CUDAAPI *pfn_cuMemGetAllocationGranularity)(size_t *, const CUmemAllocationProp *,
                                                             CUmemAllocationGranularity_flags);
typedef CUresult(CUDAAPI *pfn_cuMemCreate)(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *,
                                           unsigned long long);
typedef CUresult(CUDAAPI *pfn_cuMemRelease)(CUmemGenericAllocationHandle);
typedef CUresult(CUDAAPI *pfn_cuMemAddressReserve)(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);
typedef CUresult(CUDAAPI *pfn_cuMemAddressFree)(CUdeviceptr, size_t);
typedef CUresult(CUDAAPI *pfn_cuMemMap)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
typedef CUresult(CUDAAPI *pfn_cuMemUnmap)(CUdeviceptr, size_t);
typedef CUresult(CUDAAPI *pfn_cuMemSetAccess)(CUdeviceptr, size_t, const CUmemAccessDesc *, size_t);

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

typedef struct cuda_device {
  CUdevice dev;
  /* The retained primary context, NULL until first use. Read without the
   * lock on the fast path, so atomic; written once under init_lock. */
  _Atomic(CUcontext) ctx;
  pthread_mutex_t pool_lock; /* the allocator may call event_destroy without its device lock */
  CUevent *pool;
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

/* "CUDA_ERROR_OUT_OF_MEMORY (out of memory)"; works with a driver that lacks
 * the name functions or does not know the code. */
static void cuda_describe(const cuda_api *api, CUresult r, char *buf, size_t len) {
  const char *name = NULL, *text = NULL;
  if (api->GetErrorName && api->GetErrorName(r, &name) != CUDA_SUCCESS) name = NULL;
  if (api->GetErrorString && api->GetErrorString(r, &text) != CUDA_SUCCESS) text = NULL;
  if (name && text)
    snprintf(buf, len, "%s (%s)", name, text);
  else if (name)
    snprintf(buf, len, "%s", name);
  else
    snprintf(buf, len, "CUresult %d", (int)r);
}

static mf_status cuda_fail(cuda_backend *cb, mf_status status, CUresult r, const char *what,
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
static mf_status cuda_context(cuda_backend *cb, int device, CUcontext *out) {
  cuda_device *d = &cb->devices[device];
  CUcontext ctx = atomic_load_explicit(&d->ctx, memory_order_acquire);
  if (MF_LIKELY(ctx != NULL)) {
    *out = ctx;
    return MF_OK;
  }
  pthread_mutex_lock(&cb->init_lock);
  ctx = atomic_load_explicit(&d->ctx, memory_order_relaxed);
  mf_status st = MF_OK;
  if (ctx == NULL) {
    CUresult r = cb->api.PrimaryCtxRetain(&ctx, d->dev);
    if (r != CUDA_SUCCESS || ctx == NULL) {
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
static mf_status cuda_enter(cuda_backend *cb, int device, bool *pushed) {
  *pushed = false;
  mf_status st = cuda_check_device(cb, device);
  if (st != MF_OK) return st;
  CUcontext want, cur = NULL;
  st = cuda_context(cb, device, &want);
  if (st != MF_OK) return st;
  CUresult r = cb->api.CtxGetCurrent(&cur);
  if (r != CUDA_SUCCESS) return cuda_fail(cb, MF_ERR_BACKEND, r, "cuCtxGetCurrent", device);
  if (cur == want) return MF_OK;
  r = cb->api.CtxPushCurrent(want);
  if (r != CUDA_SUCCESS) return cuda_fail(cb, MF_ERR_BACKEND, r, "cuCtxPushCurrent", device);
  *pushed = true;
  return MF_OK;
}

/* Pop what cuda_enter pushed. A failed pop leaves the thread's context stack
 * one deeper than it was, which nothing can repair from here: it is reported
 * only if the operation itself succeeded, so that the first error wins. */
static mf_status cuda_leave(cuda_backend *cb, int device, bool pushed, mf_status st) {
  if (!pushed) return st;
  CUcontext popped = NULL;
  CUresult r = cb->api.CtxPopCurrent(&popped);
  if (r != CUDA_SUCCESS && st == MF_OK)
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
  CUresult r = cb->api.DeviceTotalMem(&total, cb->devices[device].dev);
  if (r != CUDA_SUCCESS) return cuda_fail(cb, MF_ERR_BACKEND, r, "cuDeviceTotalMem", device);
  *bytes = (uint64_t)total;
  return MF_OK;
}

static mf_status cuda_map(mf_backend *b, int device, size_t size, uintptr_t *addr) {
  cuda_backend *cb = cuda_of(b);
  bool pushed;
  mf_status st = cuda_enter(cb, device, &pushed);
  if (st != MF_OK) return st;
  CUdeviceptr p = 0;
  CUresult r = cb->api.MemAlloc(&p, size);
  if (r == CUDA_SUCCESS) {
    *addr = (uintptr_t)p;
  } else if (r == CUDA_ERROR_OUT_OF_MEMORY) {
    /* Say what the driver still has: other processes and other allocators
     * in this process (cuBLAS workspaces, NCCL) share the device. */
    size_t free_b = 0, total_b = 0;
    char want[32], fb[32], tb[32];
    _mf_format_size(size, want, sizeof want);
    if (cb->api.MemGetInfo && cb->api.MemGetInfo(&free_b, &total_b) == CUDA_SUCCESS)
      st = _mf_error(MF_ERR_OOM,
                     "cuda backend: cuMemAlloc of %s on device %d: out of memory (driver reports "
                     "%s free of %s)",
                     want, device, _mf_format_size(free_b, fb, sizeof fb),
                     _mf_format_size(total_b, tb, sizeof tb));
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
  CUresult r = cb->api.MemFree((CUdeviceptr)addr);
  if (r != CUDA_SUCCESS) st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuMemFree", device);
  return cuda_leave(cb, device, pushed, st);
}

static mf_status cuda_event_record(mf_backend *b, int device, uintptr_t stream, void **event) {
  cuda_backend *cb = cuda_of(b);
  bool pushed;
  mf_status st = cuda_enter(cb, device, &pushed);
  if (st != MF_OK) return st;
  cuda_device *d = &cb->devices[device];
  CUevent ev = NULL;
  pthread_mutex_lock(&d->pool_lock);
  if (d->pool_len > 0) ev = d->pool[--d->pool_len];
  pthread_mutex_unlock(&d->pool_lock);
  CUresult r = CUDA_SUCCESS;
  if (ev == NULL) {
    /* No timing: such events are cheaper to record and to query. */
    r = cb->api.EventCreate(&ev, CU_EVENT_DISABLE_TIMING);
    if (r != CUDA_SUCCESS) {
      st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuEventCreate", device);
      return cuda_leave(cb, device, pushed, st);
    }
  }
  r = cb->api.EventRecord(ev, (CUstream)stream);
  if (r != CUDA_SUCCESS) {
    st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuEventRecord", device);
    cb->api.EventDestroy(ev); /* possibly broken: do not pool it */
  } else {
    *event = ev;
  }
  return cuda_leave(cb, device, pushed, st);
}

static mf_status cuda_event_query(mf_backend *b, int device, void *event, bool *complete) {
  cuda_backend *cb = cuda_of(b);
  bool pushed;
  mf_status st = cuda_enter(cb, device, &pushed);
  if (st != MF_OK) return st;
  CUresult r = cb->api.EventQuery((CUevent)event);
  if (r == CUDA_SUCCESS)
    *complete = true;
  else if (r == CUDA_ERROR_NOT_READY)
    *complete = false;
  else
    st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuEventQuery", device);
  return cuda_leave(cb, device, pushed, st);
}

static mf_status cuda_event_synchronize(mf_backend *b, int device, void *event) {
  cuda_backend *cb = cuda_of(b);
  bool pushed;
  mf_status st = cuda_enter(cb, device, &pushed);
  if (st != MF_OK) return st;
  CUresult r = cb->api.EventSynchronize((CUevent)event);
  if (r != CUDA_SUCCESS) st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuEventSynchronize", device);
  return cuda_leave(cb, device, pushed, st);
}

static void cuda_event_destroy(mf_backend *b, int device, void *event) {
  cuda_backend *cb = cuda_of(b);
  if (event == NULL || device < 0 || device >= cb->count) return;
  cuda_device *d = &cb->devices[device];
  pthread_mutex_lock(&d->pool_lock);
  if (d->pool_len < CUDA_EVENT_POOL_MAX) {
    d->pool[d->pool_len++] = (CUevent)event;
    event = NULL;
  }
  pthread_mutex_unlock(&d->pool_lock);
  if (event) cb->api.EventDestroy((CUevent)event); /* a void op: nothing to report to */
}

static mf_status cuda_synchronize(mf_backend *b, int device) {
  cuda_backend *cb = cuda_of(b);
  bool pushed;
  mf_status st = cuda_enter(cb, device, &pushed);
  if (st != MF_OK) return st;
  CUresult r = cb->api.CtxSynchronize();
  if (r != CUDA_SUCCESS) st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuCtxSynchronize", device);
  return cuda_leave(cb, device, pushed, st);
}

/* ------------------------------------------------------ page mapping (vmm) */

static CUmemAllocationProp cuda_pinned_on(const cuda_device *d) {
  CUmemAllocationProp prop;
  memset(&prop, 0, sizeof prop);
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
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
  CUresult r = cb->api.DeviceGetAttribute(&supported, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
                                          cb->devices[device].dev);
  if (r != CUDA_SUCCESS) return cuda_fail(cb, MF_ERR_BACKEND, r, "cuDeviceGetAttribute", device);
  if (!supported)
    return _mf_error(MF_ERR_NO_DEVICE, "cuda backend: device %d does not support virtual memory management", device);
  CUmemAllocationProp prop = cuda_pinned_on(&cb->devices[device]);
  r = cb->api.MemGetAllocationGranularity(minimum, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
  if (r == CUDA_SUCCESS) r = cb->api.MemGetAllocationGranularity(recommended, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);
  if (r != CUDA_SUCCESS) return cuda_fail(cb, MF_ERR_BACKEND, r, "cuMemGetAllocationGranularity", device);
  return MF_OK;
}

static mf_status cuda_reserve(mf_backend *b, int device, size_t size, size_t align, uintptr_t *addr) {
  cuda_backend *cb = cuda_of(b);
  bool pushed;
  mf_status st = cuda_enter(cb, device, &pushed);
  if (st != MF_OK) return st;
  CUdeviceptr p = 0;
  CUresult r = cb->api.MemAddressReserve(&p, size, align, 0, 0);
  if (r == CUDA_SUCCESS) *addr = (uintptr_t)p;
  else st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuMemAddressReserve", device);
  return cuda_leave(cb, device, pushed, st);
}

static mf_status cuda_unreserve(mf_backend *b, int device, uintptr_t addr, size_t size) {
  cuda_backend *cb = cuda_of(b);
  bool pushed;
  mf_status st = cuda_enter(cb, device, &pushed);
  if (st != MF_OK) return st;
  CUresult r = cb->api.MemAddressFree((CUdeviceptr)addr, size);
  if (r != CUDA_SUCCESS) st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuMemAddressFree", device);
  return cuda_leave(cb, device, pushed, st);
}

static void cuda_release(mf_backend *b, int device, size_t granule, size_t n, const uint64_t *handles) {
  (void)granule;
  cuda_backend *cb = cuda_of(b);
  bool pushed;
  if (cuda_enter(cb, device, &pushed) != MF_OK) return;
  for (size_t i = 0; i < n; i++) cb->api.MemRelease((CUmemGenericAllocationHandle)handles[i]);
  cuda_leave(cb, device, pushed, MF_OK);
}

static mf_status cuda_create(mf_backend *b, int device, size_t granule, size_t n, uint64_t *handles) {
  cuda_backend *cb = cuda_of(b);
  bool pushed;
  mf_status st = cuda_enter(cb, device, &pushed);
  if (st != MF_OK) return st;
  CUmemAllocationProp prop = cuda_pinned_on(&cb->devices[device]);
  size_t made = 0;
  for (; made < n; made++) {
    CUmemGenericAllocationHandle h = 0;
    CUresult r = cb->api.MemCreate(&h, granule, &prop, 0);
    if (r == CUDA_ERROR_OUT_OF_MEMORY) {
      char want[32];
      st = _mf_error(MF_ERR_OOM, "cuda backend: cuMemCreate of %zu granules (%s) on device %d: out of memory", n,
                     _mf_format_size((uint64_t)n * granule, want, sizeof want), device);
      break;
    }
    if (r != CUDA_SUCCESS) {
      st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuMemCreate", device);
      break;
    }
    handles[made] = (uint64_t)h;
  }
  if (st != MF_OK)
    for (size_t i = 0; i < made; i++) cb->api.MemRelease((CUmemGenericAllocationHandle)handles[i]);
  return cuda_leave(cb, device, pushed, st);
}

static mf_status cuda_vunmap(mf_backend *b, int device, uintptr_t addr, size_t granule, size_t n) {
  cuda_backend *cb = cuda_of(b);
  bool pushed;
  mf_status st = cuda_enter(cb, device, &pushed);
  if (st != MF_OK) return st;
  /* Each granule was mapped on its own: cuMemUnmap takes whole mappings only. */
  for (size_t i = 0; i < n; i++) {
    CUresult r = cb->api.MemUnmap((CUdeviceptr)(addr + i * granule), granule);
    if (r != CUDA_SUCCESS && st == MF_OK) st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuMemUnmap", device);
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
  CUresult r = CUDA_SUCCESS;
  for (; mapped < n; mapped++) {
    r = cb->api.MemMap((CUdeviceptr)(addr + mapped * granule), granule, 0,
                       (CUmemGenericAllocationHandle)handles[mapped], 0);
    if (r != CUDA_SUCCESS) break;
  }
  if (r == CUDA_SUCCESS) {
    CUmemAccessDesc access;
    memset(&access, 0, sizeof access);
    access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    access.location.id = cb->devices[device].dev;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    r = cb->api.MemSetAccess((CUdeviceptr)addr, n * granule, &access, 1); /* one call for the whole run */
    if (r != CUDA_SUCCESS) st = cuda_fail(cb, MF_ERR_BACKEND, r, "cuMemSetAccess", device);
  } else {
    st = cuda_fail(cb, r == CUDA_ERROR_OUT_OF_MEMORY ? MF_ERR_OOM : MF_ERR_BACKEND, r, "cuMemMap", device);
  }
  if (st != MF_OK)
    for (size_t i = 0; i < mapped; i++) cb->api.MemUnmap((CUdeviceptr)(addr + i * granule), granule);
  return cuda_leave(cb, device, pushed, st);
}

static void cuda_destroy(mf_backend *b) {
  cuda_backend *cb = cuda_of(b);
  if (cb == NULL) return;
  for (int i = 0; cb->devices && i < cb->count; i++) {
    cuda_device *d = &cb->devices[i];
    CUcontext ctx = atomic_load(&d->ctx);
    if (ctx) {
      /* Pooled events belong to this context: destroy them while it is
       * still retained, then drop our reference to it. */
      for (size_t k = 0; k < d->pool_len; k++) cb->api.EventDestroy(d->pool[k]);
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
  CUresult r = cb->api.Init(0);
  if (r == CUDA_ERROR_NO_DEVICE)
    return _mf_error(MF_ERR_NO_DEVICE, "cuda backend: no CUDA device (cuInit: CUDA_ERROR_NO_DEVICE)");
  if (r != CUDA_SUCCESS) {
    cuda_describe(&cb->api, r, desc, sizeof desc);
    return _mf_error(MF_ERR_BACKEND, "cuda backend: cuInit failed: %s", desc);
  }
  int count = 0;
  r = cb->api.DeviceGetCount(&count);
  if (r == CUDA_ERROR_NO_DEVICE || (r == CUDA_SUCCESS && count <= 0))
    return _mf_error(MF_ERR_NO_DEVICE, "cuda backend: no CUDA device (the driver reports 0)");
  if (r != CUDA_SUCCESS) {
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
    if (r != CUDA_SUCCESS) {
      cuda_describe(&cb->api, r, desc, sizeof desc);
      return _mf_error(MF_ERR_BACKEND, "cuda backend: cuDeviceGet(%d) failed: %s", i, desc);
    }
  }
  return MF_OK;
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

#endif /* MEMFIT_HAVE_CUDA */
