/* emucuda.h — the test side of the emulated CUDA driver (emucuda.c, built as
 * libcuda.so.1 in <build>/tests/emulated_cuda/lib): its control functions, and
 * for C++ a loader that dlopens "libcuda.so.1" (the same handle memfit's cuda
 * backend gets) and resolves both the control functions and the driver calls
 * the tests make. The emulator is found only by processes whose
 * LD_LIBRARY_PATH names that directory; ctest sets it for the emulated-cuda
 * label.
 *
 *     emucuda::Emu emu;                       // dlopen + dlsym, cuInit(0)
 *     ASSERT_TRUE(emu.ok()) << emu.why();
 *     emu.hold_stream(s);                     // s runs nothing more ...
 *     ... record an event on s: deterministically not ready ...
 *     emu.release_stream(s);
 *     emu.fail_next("cuMemAlloc", CUDA_ERROR_ILLEGAL_ADDRESS);
 *     EXPECT_EQ(emu.calls("cuCtxSynchronize"), 1u);
 *
 * Process-wide settings, read from the environment at the first cuInit:
 *   EMUCUDA_DEVICES=N         devices, 0 to 16 (default 1); 0 makes cuInit
 *                             return CUDA_ERROR_NO_DEVICE.
 *   EMUCUDA_TOTAL_MEMORY=SZ   memory of each device in bytes, K/M/G/T suffixes
 *                             allowed (default 1GiB). cuMemAlloc and cuMemCreate
 *                             bytes count against it together.
 *   EMUCUDA_INIT_ERROR=CODE   cuInit returns this CUresult (a number or a name
 *                             such as CUDA_ERROR_UNKNOWN) and the driver stays
 *                             uninitialized.
 *   EMUCUDA_NO_VMM=1          the device does not support virtual memory
 *                             management: the attribute is 0, and
 *                             cuMemGetAllocationGranularity, cuMemCreate and
 *                             cuMemMap return CUDA_ERROR_NOT_SUPPORTED.
 *   EMUCUDA_GRANULE=MIN[,REC] the minimum and recommended allocation
 *                             granularity (default 2MiB both); MIN a power of
 *                             two multiple of the page size, REC a multiple of
 *                             MIN.
 *   EMUCUDA_WAIT_TIMEOUT_MS=N a synchronizing call that waits longer than this
 *                             (default 30000) prints why on stderr and returns
 *                             CUDA_ERROR_LAUNCH_TIMEOUT, so that a test which
 *                             waits on a held stream fails instead of hanging.
 * A bad value makes cuInit print it and return CUDA_ERROR_INVALID_VALUE.
 *
 * What the emulator enforces (as the real driver does): every call but
 * cuDriverGetVersion and cuGetErrorName/String fails with
 * CUDA_ERROR_NOT_INITIALIZED before cuInit; calls that need a context get
 * CUDA_ERROR_INVALID_CONTEXT without one, CUDA_ERROR_CONTEXT_IS_DESTROYED under
 * a primary context whose last reference was released (the VMM calls other
 * than cuMemGetAllocationGranularity need one too, which may be stricter than
 * the driver); an event recorded on a stream of another context is
 * CUDA_ERROR_INVALID_HANDLE; the VMM rules (granule multiples, offset 0, maps
 * inside a reservation and over nothing mapped, unmaps of whole mappings, no
 * cuMemAddressFree while mapped, memory gone only when released and unmapped,
 * PROT_NONE until cuMemSetAccess); stream capture (below). cuMemFree, like the
 * driver's, waits for the device's work first; cuMemUnmap does not, and an
 * unmap while the device's streams have work pending is counted (unsafe_unmaps).
 * Device work that touches memory no longer mapped is counted (illegal
 * accesses) and makes the context's next synchronize return
 * CUDA_ERROR_ILLEGAL_ADDRESS.
 *
 * Simplifications: stream 0, CU_STREAM_LEGACY and CU_STREAM_PER_THREAD are all
 * the current context's one default stream, and it does not synchronize with
 * the other streams; a released primary context keeps what it held.
 *
 * Stream capture is begun and ended through this API (no graph is built):
 * work queued on a capturing stream is captured, not run; an event recorded on
 * it is allowed (and is then CUDA_ERROR_CAPTURED_EVENT to query). While a
 * capture forbids unsafe calls for the calling thread (global mode: any
 * thread whose own mode, cuThreadExchangeStreamCaptureMode, is global;
 * thread-local: the capturing thread; relaxed: none), cuEventQuery,
 * cuEventSynchronize, cuCtxSynchronize, cuStreamSynchronize, cuStreamQuery,
 * cuMemAlloc, cuMemFree, cuMemUnmap and cuMemCreate return
 * CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, invalidate the capture and count a
 * violation. Synchronizing the capturing stream itself is always a violation.
 * Using the legacy stream while a blocking stream of its context captures is
 * CUDA_ERROR_STREAM_CAPTURE_IMPLICIT (a violation too, except for the
 * cuStreamIsCapturing / cuStreamGetCaptureInfo queries).
 */
#ifndef MEMFIT_TESTS_EMUCUDA_H
#define MEMFIT_TESTS_EMUCUDA_H

#include <cuda.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The control functions; CUresult-valued ones return an int. Streams may be
 * 0, CU_STREAM_LEGACY or CU_STREAM_PER_THREAD (the current context's). */
/* Hold: the stream's worker starts nothing more (the item running finishes).
 * Release: it goes on. */
int emucuda_hold_stream(CUstream s);
int emucuda_release_stream(CUstream s);
/* Begin capture in a CUstreamCaptureMode, by the calling thread. End: CUDA_SUCCESS,
 * or CUDA_ERROR_STREAM_CAPTURE_INVALIDATED if a violation invalidated it. */
int emucuda_begin_capture(CUstream s, int mode);
int emucuda_end_capture(CUstream s);
/* After `skip` more calls of `call` (its exported name, or that name without
 * _vN), the next `count` return `result` and do nothing else. Count 0 disarms;
 * arming a call again replaces what was armed for it. */
int emucuda_fail(const char *call, int result, int count, int skip);
/* Calls of `call` since the start or the last reset (~0 for an unknown name). */
unsigned long long emucuda_calls(const char *call);
/* Zero the counters and the trace, disarm injections, clear sticky errors. */
void emucuda_reset(void);
unsigned long long emucuda_capture_violations(void);
unsigned long long emucuda_illegal_accesses(void);
unsigned long long emucuda_unsafe_unmaps(void);
/* Synchronizing calls that gave up (EMUCUDA_WAIT_TIMEOUT_MS). */
unsigned long long emucuda_wait_timeouts(void);
/* cuMemAlloc + cuMemCreate bytes held on a device. */
unsigned long long emucuda_bytes_in_use(int device);
/* Live driver objects: "allocations" (cuMemAlloc), "handles" (cuMemCreate
 * memory not yet gone), "mappings", "reservations", "streams" (created, not
 * destroyed), "events". ~0 for an unknown kind. */
unsigned long long emucuda_live(const char *what);
int emucuda_primary_refcount(int device);
/* Items queued on a stream and not finished. */
unsigned long long emucuda_stream_pending(CUstream s);
/* A trace of the driver calls made (names, one a line) from start to stop;
 * read returns the length the whole trace needs, NUL included. */
void emucuda_trace_start(void);
void emucuda_trace_stop(void);
size_t emucuda_trace_read(char *buf, size_t len);

#ifdef __cplusplus
}  // extern "C"

#include <dlfcn.h>

#include <cstring>
#include <string>
#include <vector>

namespace emucuda {

// The emulator, loaded the way memfit loads a driver. Every pointer is
// resolved by dlsym on the handle of libcuda.so.1; ok() says whether all were,
// and cuInit(0) succeeded (init = false skips it).
struct Emu {
  void *lib = nullptr;
  std::string error;

  // Driver calls, by the versioned names the real driver exports.
  decltype(&::cuInit) Init = nullptr;
  decltype(&::cuDeviceGet) DeviceGet = nullptr;
  decltype(&::cuDeviceGetCount) DeviceGetCount = nullptr;
  decltype(&::cuDeviceGetAttribute) DeviceGetAttribute = nullptr;
  decltype(&::cuDeviceTotalMem_v2) DeviceTotalMem = nullptr;
  decltype(&::cuDevicePrimaryCtxRetain) PrimaryCtxRetain = nullptr;
  decltype(&::cuDevicePrimaryCtxRelease_v2) PrimaryCtxRelease = nullptr;
  CUresult (*CtxCreate)(CUcontext *, unsigned, CUdevice) = nullptr;  // cuCtxCreate_v2
  decltype(&::cuCtxDestroy_v2) CtxDestroy = nullptr;
  decltype(&::cuCtxGetCurrent) CtxGetCurrent = nullptr;
  decltype(&::cuCtxSetCurrent) CtxSetCurrent = nullptr;
  decltype(&::cuCtxPushCurrent_v2) CtxPushCurrent = nullptr;
  decltype(&::cuCtxPopCurrent_v2) CtxPopCurrent = nullptr;
  decltype(&::cuCtxGetDevice) CtxGetDevice = nullptr;
  decltype(&::cuCtxSynchronize) CtxSynchronize = nullptr;
  decltype(&::cuMemAlloc_v2) MemAlloc = nullptr;
  decltype(&::cuMemFree_v2) MemFree = nullptr;
  decltype(&::cuMemGetInfo_v2) MemGetInfo = nullptr;
  decltype(&::cuMemsetD8_v2) MemsetD8 = nullptr;
  decltype(&::cuStreamCreate) StreamCreate = nullptr;
  decltype(&::cuStreamDestroy_v2) StreamDestroy = nullptr;
  decltype(&::cuStreamSynchronize) StreamSynchronize = nullptr;
  decltype(&::cuStreamGetCtx) StreamGetCtx = nullptr;
  decltype(&::cuStreamIsCapturing) StreamIsCapturing = nullptr;
  decltype(&::cuStreamGetCaptureInfo_v3) StreamGetCaptureInfo = nullptr;
  decltype(&::cuThreadExchangeStreamCaptureMode) ThreadExchangeStreamCaptureMode = nullptr;
  decltype(&::cuLaunchHostFunc) LaunchHostFunc = nullptr;
  decltype(&::cuEventCreate) EventCreate = nullptr;
  decltype(&::cuEventRecord) EventRecord = nullptr;
  decltype(&::cuEventQuery) EventQuery = nullptr;
  decltype(&::cuEventSynchronize) EventSynchronize = nullptr;
  decltype(&::cuEventDestroy_v2) EventDestroy = nullptr;
  decltype(&::cuMemGetAllocationGranularity) MemGetAllocationGranularity = nullptr;
  decltype(&::cuMemCreate) MemCreate = nullptr;
  decltype(&::cuMemRelease) MemRelease = nullptr;
  decltype(&::cuMemAddressReserve) MemAddressReserve = nullptr;
  decltype(&::cuMemAddressFree) MemAddressFree = nullptr;
  decltype(&::cuMemMap) MemMap = nullptr;
  decltype(&::cuMemUnmap) MemUnmap = nullptr;
  decltype(&::cuMemSetAccess) MemSetAccess = nullptr;
  decltype(&::cuGetErrorName) GetErrorName = nullptr;
  decltype(&::cuGetErrorString) GetErrorString = nullptr;

  // Control.
  decltype(&::emucuda_hold_stream) hold_stream = nullptr;
  decltype(&::emucuda_release_stream) release_stream = nullptr;
  decltype(&::emucuda_begin_capture) begin_capture = nullptr;
  decltype(&::emucuda_end_capture) end_capture = nullptr;
  decltype(&::emucuda_fail) fail = nullptr;
  decltype(&::emucuda_calls) calls = nullptr;
  decltype(&::emucuda_reset) reset = nullptr;
  decltype(&::emucuda_capture_violations) capture_violations = nullptr;
  decltype(&::emucuda_illegal_accesses) illegal_accesses = nullptr;
  decltype(&::emucuda_unsafe_unmaps) unsafe_unmaps = nullptr;
  decltype(&::emucuda_wait_timeouts) wait_timeouts = nullptr;
  decltype(&::emucuda_bytes_in_use) bytes_in_use = nullptr;
  decltype(&::emucuda_live) live = nullptr;
  decltype(&::emucuda_primary_refcount) primary_refcount = nullptr;
  decltype(&::emucuda_stream_pending) stream_pending = nullptr;
  decltype(&::emucuda_trace_start) trace_start = nullptr;
  decltype(&::emucuda_trace_stop) trace_stop = nullptr;
  decltype(&::emucuda_trace_read) trace_read_raw = nullptr;

  explicit Emu(bool init = true) {
    lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char *why = dlerror();
      error = std::string("libcuda.so.1 not loadable: ") + (why ? why : "?");
      return;
    }
    if (!dlsym(lib, "emucuda_calls")) {
      error = "libcuda.so.1 is not the emulator (a real driver is on the library path first)";
      return;
    }
    bool all = sym(Init, "cuInit") && sym(DeviceGet, "cuDeviceGet") && sym(DeviceGetCount, "cuDeviceGetCount") &&
               sym(DeviceGetAttribute, "cuDeviceGetAttribute") && sym(DeviceTotalMem, "cuDeviceTotalMem_v2") &&
               sym(PrimaryCtxRetain, "cuDevicePrimaryCtxRetain") &&
               sym(PrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2") && sym(CtxCreate, "cuCtxCreate_v2") &&
               sym(CtxDestroy, "cuCtxDestroy_v2") && sym(CtxGetCurrent, "cuCtxGetCurrent") &&
               sym(CtxSetCurrent, "cuCtxSetCurrent") && sym(CtxPushCurrent, "cuCtxPushCurrent_v2") &&
               sym(CtxPopCurrent, "cuCtxPopCurrent_v2") && sym(CtxGetDevice, "cuCtxGetDevice") &&
               sym(CtxSynchronize, "cuCtxSynchronize") && sym(MemAlloc, "cuMemAlloc_v2") &&
               sym(MemFree, "cuMemFree_v2") && sym(MemGetInfo, "cuMemGetInfo_v2") &&
               sym(MemsetD8, "cuMemsetD8_v2") && sym(StreamCreate, "cuStreamCreate") &&
               sym(StreamDestroy, "cuStreamDestroy_v2") && sym(StreamSynchronize, "cuStreamSynchronize") &&
               sym(StreamGetCtx, "cuStreamGetCtx") && sym(StreamIsCapturing, "cuStreamIsCapturing") &&
               sym(StreamGetCaptureInfo, "cuStreamGetCaptureInfo_v3") &&
               sym(ThreadExchangeStreamCaptureMode, "cuThreadExchangeStreamCaptureMode") &&
               sym(LaunchHostFunc, "cuLaunchHostFunc") && sym(EventCreate, "cuEventCreate") &&
               sym(EventRecord, "cuEventRecord") && sym(EventQuery, "cuEventQuery") &&
               sym(EventSynchronize, "cuEventSynchronize") && sym(EventDestroy, "cuEventDestroy_v2") &&
               sym(MemGetAllocationGranularity, "cuMemGetAllocationGranularity") && sym(MemCreate, "cuMemCreate") &&
               sym(MemRelease, "cuMemRelease") && sym(MemAddressReserve, "cuMemAddressReserve") &&
               sym(MemAddressFree, "cuMemAddressFree") && sym(MemMap, "cuMemMap") && sym(MemUnmap, "cuMemUnmap") &&
               sym(MemSetAccess, "cuMemSetAccess") && sym(GetErrorName, "cuGetErrorName") &&
               sym(GetErrorString, "cuGetErrorString") && sym(hold_stream, "emucuda_hold_stream") &&
               sym(release_stream, "emucuda_release_stream") && sym(begin_capture, "emucuda_begin_capture") &&
               sym(end_capture, "emucuda_end_capture") && sym(fail, "emucuda_fail") && sym(calls, "emucuda_calls") &&
               sym(reset, "emucuda_reset") && sym(capture_violations, "emucuda_capture_violations") &&
               sym(illegal_accesses, "emucuda_illegal_accesses") && sym(unsafe_unmaps, "emucuda_unsafe_unmaps") &&
               sym(wait_timeouts, "emucuda_wait_timeouts") &&
               sym(bytes_in_use, "emucuda_bytes_in_use") && sym(live, "emucuda_live") &&
               sym(primary_refcount, "emucuda_primary_refcount") && sym(stream_pending, "emucuda_stream_pending") &&
               sym(trace_start, "emucuda_trace_start") && sym(trace_stop, "emucuda_trace_stop") &&
               sym(trace_read_raw, "emucuda_trace_read");
    if (!all) return;
    if (init) {
      CUresult r = Init(0);
      if (r != CUDA_SUCCESS) error = "cuInit failed: " + name(r);
    }
  }
  ~Emu() {
    if (lib) dlclose(lib);
  }
  Emu(const Emu &) = delete;
  Emu &operator=(const Emu &) = delete;

  bool ok() const { return error.empty(); }
  const std::string &why() const { return error; }

  // The next `count` calls of `call` fail with `result`.
  int fail_next(const char *call, CUresult result, int count = 1) { return fail(call, result, count, 0); }
  // Failure on the (skip+1)-th call from now.
  int fail_after(const char *call, int skip, CUresult result, int count = 1) { return fail(call, result, count, skip); }

  std::string name(CUresult r) const {
    const char *n = nullptr;
    if (!GetErrorName || GetErrorName(r, &n) != CUDA_SUCCESS || !n) return "CUresult " + std::to_string((int)r);
    return n;
  }

  std::vector<std::string> trace() const {
    std::vector<std::string> out;
    std::string buf(trace_read_raw(nullptr, 0), '\0');
    trace_read_raw(&buf[0], buf.size());
    size_t at = 0;
    for (size_t nl; (nl = buf.find('\n', at)) != std::string::npos; at = nl + 1) out.push_back(buf.substr(at, nl - at));
    return out;
  }

 private:
  template <typename F>
  bool sym(F &f, const char *symbol) {
    void *p = dlsym(lib, symbol);
    if (!p) {
      error = std::string("libcuda.so.1 has no ") + symbol;
      return false;
    }
    std::memcpy(&f, &p, sizeof p);
    return true;
  }
};

}  // namespace emucuda

#endif  // __cplusplus
#endif  // MEMFIT_TESTS_EMUCUDA_H
