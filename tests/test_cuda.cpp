// test_cuda.cpp — the cuda backend against a real GPU, and its clean
// MF_ERR_NO_DEVICE where there is none. Every test that needs a device skips
// with the reason (mf_last_error) where mf_backend_cuda_create says there is
// no device, so the suite passes on GPU-less machines and CI.
//
// The test target has no cuda.h on its include path, so the few driver calls
// the tests make themselves (a real stream, contexts) are declared here with
// plain C types, and the driver is dlopen'ed like the backend does.
#include <gtest/gtest.h>

#include <dlfcn.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>

#include "memfit/memfit.h"

namespace {

// Where libcuda.so.1 cannot be loaded, the backend must say "no device" and
// not crash. Only asserted when dlopen itself fails here, so that a machine
// with a driver does not turn this into a false failure; a build without the
// CUDA headers says "no device" everywhere.
TEST(CudaBackend, NoDriverIsNoDevice) {
#ifdef MEMFIT_HAVE_CUDA
  void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib != nullptr) {
    dlclose(lib);
    GTEST_SKIP() << "libcuda.so.1 loads on this machine: nothing to check";
  }
#endif
  mf_backend *b = reinterpret_cast<mf_backend *>(0x1);
  EXPECT_EQ(mf_backend_cuda_create(&b), MF_ERR_NO_DEVICE) << mf_last_error();
  EXPECT_EQ(b, nullptr);
  std::string err = mf_last_error();
#ifdef MEMFIT_HAVE_CUDA
  EXPECT_NE(err.find("libcuda.so.1"), std::string::npos) << err;
#else
  EXPECT_NE(err.find("without CUDA headers"), std::string::npos) << err;
#endif
  // The allocator reports the same through its options string.
  mf_allocator *a = reinterpret_cast<mf_allocator *>(0x1);
  EXPECT_EQ(mf_allocator_create("backend:cuda", &a), MF_ERR_NO_DEVICE) << mf_last_error();
}

#ifdef MEMFIT_HAVE_CUDA

// The driver calls of the tests themselves: CUresult is an enum (int),
// handles are pointers, CUdevice is an int.
using CUres = int;
using CUhandle = void *;
struct Driver {
  void *lib = nullptr;
  CUres (*Init)(unsigned) = nullptr;
  CUres (*DeviceGet)(int *, int) = nullptr;
  CUres (*PrimaryCtxRetain)(CUhandle *, int) = nullptr;
  CUres (*PrimaryCtxRelease)(int) = nullptr;
  CUres (*CtxGetCurrent)(CUhandle *) = nullptr;
  CUres (*CtxPushCurrent)(CUhandle) = nullptr;
  CUres (*CtxPopCurrent)(CUhandle *) = nullptr;
  CUres (*StreamCreate)(CUhandle *, unsigned) = nullptr;
  CUres (*StreamDestroy)(CUhandle) = nullptr;
  CUres (*StreamSynchronize)(CUhandle) = nullptr;
  CUres (*LaunchHostFunc)(CUhandle, void (*)(void *), void *) = nullptr;
  CUres (*MemsetD8)(uintptr_t, unsigned char, size_t) = nullptr;

  template <typename F>
  bool sym(F &f, const char *name) {
    void *p = dlsym(lib, name);
    std::memcpy(&f, &p, sizeof p);
    return p != nullptr;
  }
  bool load() {
    lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    return lib && sym(Init, "cuInit") && sym(DeviceGet, "cuDeviceGet") &&
           sym(PrimaryCtxRetain, "cuDevicePrimaryCtxRetain") &&
           sym(PrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2") && sym(CtxGetCurrent, "cuCtxGetCurrent") &&
           sym(CtxPushCurrent, "cuCtxPushCurrent_v2") && sym(CtxPopCurrent, "cuCtxPopCurrent_v2") &&
           sym(StreamCreate, "cuStreamCreate") && sym(StreamDestroy, "cuStreamDestroy_v2") &&
           sym(StreamSynchronize, "cuStreamSynchronize") && sym(LaunchHostFunc, "cuLaunchHostFunc") &&
           sym(MemsetD8, "cuMemsetD8_v2") && Init(0) == 0;
  }
  ~Driver() {
    if (lib) dlclose(lib);
  }
};

constexpr unsigned kStreamNonBlocking = 0x1;  // CU_STREAM_NON_BLOCKING

// Each test gets its own backend; no device: skip with the reason.
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    mf_status st = mf_backend_cuda_create(&b_);
    if (st == MF_ERR_NO_DEVICE) GTEST_SKIP() << "no CUDA device: " << mf_last_error();
    ASSERT_EQ(st, MF_OK) << mf_last_error();
    ASSERT_NE(b_, nullptr);
    ASSERT_TRUE(drv_.load()) << "libcuda.so.1 loaded for memfit but not for the test: " << dlerror();
    ASSERT_EQ(drv_.DeviceGet(&dev_, 0), 0);
    ASSERT_EQ(drv_.PrimaryCtxRetain(&ctx_, dev_), 0);
  }
  void TearDown() override {
    if (ctx_) drv_.PrimaryCtxRelease(dev_);
    if (b_) mf_backend_destroy(b_);
  }
  // A stream of device 0's primary context, as PyTorch would make.
  CUhandle make_stream() {
    CUhandle s = nullptr;
    EXPECT_EQ(drv_.CtxPushCurrent(ctx_), 0);
    EXPECT_EQ(drv_.StreamCreate(&s, kStreamNonBlocking), 0);
    CUhandle popped;
    EXPECT_EQ(drv_.CtxPopCurrent(&popped), 0);
    return s;
  }
  CUhandle current_context() {
    CUhandle c = reinterpret_cast<CUhandle>(0x1);
    EXPECT_EQ(drv_.CtxGetCurrent(&c), 0);
    return c;
  }

  mf_backend *b_ = nullptr;
  Driver drv_;
  int dev_ = 0;
  CUhandle ctx_ = nullptr;
};

TEST_F(CudaTest, DeviceCountAndTotalMemory) {
  EXPECT_STREQ(b_->ops->name, "cuda");
  int n = b_->ops->device_count(b_);
  EXPECT_GE(n, 1);
  uint64_t total = 0;
  ASSERT_EQ(b_->ops->total_memory(b_, 0, &total), MF_OK) << mf_last_error();
  EXPECT_GE(total, 256ull << 20);
  EXPECT_EQ(b_->ops->total_memory(b_, n, &total), MF_ERR_INVALID);
  uintptr_t addr = 0;
  EXPECT_EQ(b_->ops->map(b_, -1, 1 << 20, &addr), MF_ERR_INVALID);
}

TEST_F(CudaTest, MapUnmapLeavesThreadContextAlone) {
  // A fresh thread has no current context: the backend must push the
  // primary context for the call and pop it again.
  std::thread([&] {
    EXPECT_EQ(current_context(), nullptr);
    uintptr_t addr = 0;
    ASSERT_EQ(b_->ops->map(b_, 0, 2 << 20, &addr), MF_OK) << mf_last_error();
    EXPECT_NE(addr, 0u);
    EXPECT_EQ(current_context(), nullptr) << "map left a context pushed";
    // The memory is real: the driver can write it.
    EXPECT_EQ(drv_.CtxPushCurrent(ctx_), 0);
    EXPECT_EQ(drv_.MemsetD8(addr, 0xab, 2 << 20), 0);
    CUhandle popped;
    EXPECT_EQ(drv_.CtxPopCurrent(&popped), 0);
    EXPECT_EQ(b_->ops->unmap(b_, 0, addr, 2 << 20), MF_OK) << mf_last_error();
    EXPECT_EQ(current_context(), nullptr);
  }).join();

  // With the primary context already current (PyTorch's case) nothing is
  // pushed, and it stays current.
  ASSERT_EQ(drv_.CtxPushCurrent(ctx_), 0);
  uintptr_t addr = 0;
  ASSERT_EQ(b_->ops->map(b_, 0, 4 << 20, &addr), MF_OK) << mf_last_error();
  EXPECT_EQ(current_context(), ctx_);
  ASSERT_EQ(b_->ops->synchronize(b_, 0), MF_OK) << mf_last_error();
  ASSERT_EQ(b_->ops->unmap(b_, 0, addr, 4 << 20), MF_OK) << mf_last_error();
  CUhandle popped;
  ASSERT_EQ(drv_.CtxPopCurrent(&popped), 0);
}

TEST_F(CudaTest, MapBeyondTheDeviceIsOom) {
  uint64_t total = 0;
  ASSERT_EQ(b_->ops->total_memory(b_, 0, &total), MF_OK);
  uintptr_t addr = 0;
  EXPECT_EQ(b_->ops->map(b_, 0, static_cast<size_t>(total) * 4, &addr), MF_ERR_OOM);
  EXPECT_NE(std::string(mf_last_error()).find("out of memory"), std::string::npos) << mf_last_error();
}

// A host function that holds the stream until the test lets it go, so that
// an event recorded after it is deterministically not ready. The gates are
// static: a failed ASSERT returns while the host function may still read one.
std::atomic<bool> g_event_gate{false}, g_alloc_gate{false};
void wait_for_gate(void *gate) {
  auto *g = static_cast<std::atomic<bool> *>(gate);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!g->load() && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
}

TEST_F(CudaTest, EventsOnARealStream) {
  CUhandle s = make_stream();
  ASSERT_NE(s, nullptr);
  std::atomic<bool> &gate = g_event_gate;
  gate.store(false);
  ASSERT_EQ(drv_.LaunchHostFunc(s, wait_for_gate, &gate), 0);
  void *ev = nullptr;
  ASSERT_EQ(b_->ops->event_record(b_, 0, reinterpret_cast<uintptr_t>(s), &ev), MF_OK) << mf_last_error();
  ASSERT_NE(ev, nullptr);
  bool done = true;
  ASSERT_EQ(b_->ops->event_query(b_, 0, ev, &done), MF_OK) << mf_last_error();
  EXPECT_FALSE(done) << "event complete while its stream is held";
  gate.store(true);
  ASSERT_EQ(b_->ops->event_synchronize(b_, 0, ev), MF_OK) << mf_last_error();
  ASSERT_EQ(b_->ops->event_query(b_, 0, ev, &done), MF_OK) << mf_last_error();
  EXPECT_TRUE(done);
  b_->ops->event_destroy(b_, 0, ev);

  // Stream 0 is the legacy default stream; a pooled event is reused.
  void *ev2 = nullptr;
  ASSERT_EQ(b_->ops->event_record(b_, 0, 0, &ev2), MF_OK) << mf_last_error();
  ASSERT_EQ(b_->ops->event_synchronize(b_, 0, ev2), MF_OK) << mf_last_error();
  ASSERT_EQ(b_->ops->event_query(b_, 0, ev2, &done), MF_OK);
  EXPECT_TRUE(done);
  b_->ops->event_destroy(b_, 0, ev2);
  EXPECT_EQ(drv_.StreamDestroy(s), 0);
}

TEST_F(CudaTest, AllocatorOverCuda) {
  CUhandle s1 = make_stream(), s2 = make_stream();
  mf_allocator *a = nullptr;
  mf_backend *b = b_;
  b_ = nullptr;  // the allocator owns it now
  ASSERT_EQ(mf_allocator_create_with(b, nullptr, &a), MF_OK) << mf_last_error();

  void *p = mf_malloc(a, 0, 3 << 20, reinterpret_cast<uintptr_t>(s1));
  void *q = mf_malloc(a, 0, 1000, reinterpret_cast<uintptr_t>(s1));
  void *z = mf_malloc(a, 0, 0, reinterpret_cast<uintptr_t>(s1));
  ASSERT_NE(p, nullptr) << mf_last_error();
  ASSERT_NE(q, nullptr) << mf_last_error();
  ASSERT_NE(z, nullptr) << mf_last_error();
  EXPECT_EQ(drv_.CtxPushCurrent(ctx_), 0);
  EXPECT_EQ(drv_.MemsetD8(reinterpret_cast<uintptr_t>(p), 1, 3 << 20), 0);
  CUhandle popped;
  EXPECT_EQ(drv_.CtxPopCurrent(&popped), 0);

  // p used on s2, which is held: its memory must not be reused before s2
  // gets past the free.
  std::atomic<bool> &gate = g_alloc_gate;
  gate.store(false);
  ASSERT_EQ(drv_.LaunchHostFunc(s2, wait_for_gate, &gate), 0);
  ASSERT_EQ(mf_record_stream(a, p, reinterpret_cast<uintptr_t>(s2)), MF_OK) << mf_last_error();
  ASSERT_EQ(mf_free(a, p), MF_OK) << mf_last_error();
  mf_stats st{};
  ASSERT_EQ(mf_get_stats(a, 0, &st), MF_OK);
  EXPECT_GE(st.deferred_frees, 1);
  void *p2 = mf_malloc(a, 0, 3 << 20, reinterpret_cast<uintptr_t>(s1));
  ASSERT_NE(p2, nullptr) << mf_last_error();
  EXPECT_NE(p2, p) << "reused while s2 may still use it";
  EXPECT_EQ(mf_check(a), MF_OK) << mf_last_error();
  gate.store(true);
  EXPECT_EQ(drv_.StreamSynchronize(s2), 0);
  ASSERT_EQ(mf_free(a, p2), MF_OK) << mf_last_error();
  ASSERT_EQ(mf_free(a, q), MF_OK) << mf_last_error();
  ASSERT_EQ(mf_free(a, z), MF_OK) << mf_last_error();
  // Everything free and every event done: empty_cache gives all back.
  ASSERT_EQ(mf_empty_cache(a), MF_OK) << mf_last_error();
  EXPECT_EQ(mf_check(a), MF_OK) << mf_last_error();
  ASSERT_EQ(mf_get_stats(a, 0, &st), MF_OK);
  EXPECT_EQ(st.reserved_bytes.current, 0);

  // A request far beyond the device: NULL, with a report.
  void *huge = mf_malloc(a, 0, static_cast<size_t>(1) << 50, 0);
  EXPECT_EQ(huge, nullptr);
  char report[4096];
  ASSERT_EQ(mf_oom_report(a, report, sizeof report, nullptr), MF_OK);
  EXPECT_NE(std::strlen(report), 0u) << "no OOM report";
  EXPECT_EQ(mf_check(a), MF_OK) << mf_last_error();
  void *after = mf_malloc(a, 0, 1 << 20, 0);
  EXPECT_NE(after, nullptr) << "allocator unusable after an OOM: " << mf_last_error();
  EXPECT_EQ(mf_free(a, after), MF_OK);
  mf_allocator_destroy(a);
  EXPECT_EQ(drv_.StreamDestroy(s1), 0);
  EXPECT_EQ(drv_.StreamDestroy(s2), 0);
}

TEST_F(CudaTest, AllocatorFromOptionsString) {
  mf_allocator *a = nullptr;
  ASSERT_EQ(mf_allocator_create("backend:cuda,capacity:64MiB", &a), MF_OK) << mf_last_error();
  EXPECT_EQ(mf_capacity(a, 0), 64ull << 20);
  void *p = mf_malloc(a, 0, 1 << 20, 0);
  EXPECT_NE(p, nullptr) << mf_last_error();
  EXPECT_EQ(mf_malloc(a, 0, 128ull << 20, 0), nullptr) << "capacity not enforced";
  EXPECT_EQ(mf_free(a, p), MF_OK);
  mf_allocator_destroy(a);
}

#endif  // MEMFIT_HAVE_CUDA

}  // namespace
