// test_emucuda_env.cpp — the cuda backend under process-wide driver settings:
// no device, a failing cuInit, a device without virtual memory management,
// two devices, a small granule. Each suite runs in its own ctest entry with
// its EMUCUDA_* variables set (tests.cmake) and is left out of the discovered
// tests; run elsewhere, a test skips, which that entry counts as a failure.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "emu_test_util.h"
#include "memfit/plugin.h"

namespace {

using namespace emutest;

#define REQUIRE_SETTING(var, value)                                                              \
  do {                                                                                           \
    const char *v_ = std::getenv(var);                                                           \
    if (!v_ || std::string(v_) != (value)) GTEST_SKIP() << "needs " var "=" value " (ctest sets it)"; \
  } while (0)

bool contains(const std::string &s, const std::string &what) { return s.find(what) != std::string::npos; }

TEST(EmuEnv, NoDeviceIsNoDevice) {
  REQUIRE_SETTING("EMUCUDA_DEVICES", "0");
  emucuda::Emu e(/*init=*/false);
  ASSERT_TRUE(e.lib && e.error.empty()) << e.why();
  EXPECT_EQ(e.Init(0), CUDA_ERROR_NO_DEVICE);
  mf_backend *b = reinterpret_cast<mf_backend *>(0x1);
  EXPECT_EQ(mf_backend_cuda_create(&b), MF_ERR_NO_DEVICE) << mf_last_error();
  EXPECT_EQ(b, nullptr);
  EXPECT_TRUE(contains(mf_last_error(), "no CUDA device")) << mf_last_error();
  mf_allocator *a = nullptr;
  EXPECT_EQ(mf_allocator_create("backend:cuda", &a), MF_ERR_NO_DEVICE) << mf_last_error();
  // The plugin reports it as a "memfit: " error, not as an OOM.
  unsetenv("MEMFIT_CONF");
  try {
    memfit_malloc(16, 0, nullptr);
    ADD_FAILURE() << "memfit_malloc without a device did not throw";
  } catch (const std::exception &ex) {
    EXPECT_EQ(std::string(ex.what()).rfind("memfit: ", 0), 0u) << ex.what();
  }
}

TEST(EmuEnv, InitFailureIsABackendErrorNamingTheCall) {
  REQUIRE_SETTING("EMUCUDA_INIT_ERROR", "CUDA_ERROR_UNKNOWN");
  emucuda::Emu e(/*init=*/false);
  ASSERT_TRUE(e.lib && e.error.empty()) << e.why();
  EXPECT_EQ(e.Init(0), CUDA_ERROR_UNKNOWN);
  mf_backend *b = nullptr;
  EXPECT_EQ(mf_backend_cuda_create(&b), MF_ERR_BACKEND) << mf_last_error();
  EXPECT_EQ(b, nullptr);
  std::string err = mf_last_error();
  EXPECT_TRUE(contains(err, "cuInit")) << err;
  EXPECT_TRUE(contains(err, "CUDA_ERROR_UNKNOWN")) << err;
  int n = -1;
  EXPECT_EQ(e.DeviceGetCount(&n), CUDA_ERROR_NOT_INITIALIZED) << "the driver initialized after a failed cuInit";
}

// vmm:auto falls back to cuMemAlloc segments with one line on stderr; vmm:on
// fails naming why.
TEST(EmuEnv, NoVmmAutoFallsBackToSegments) {
  REQUIRE_SETTING("EMUCUDA_NO_VMM", "1");
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  int vmm = -1;
  ASSERT_EQ(e.DeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 0), CUDA_SUCCESS);
  EXPECT_EQ(vmm, 0);
  Live before = Live::now();
  {
    testing::internal::CaptureStderr();
    Allocator a = create("backend:cuda");
    std::string err = testing::internal::GetCapturedStderr();
    ASSERT_TRUE(a);
    EXPECT_EQ(mf_allocator_granule(a.get()), 0u);
    EXPECT_TRUE(contains(err, "memfit: vmm:auto: ")) << err;
    EXPECT_TRUE(contains(err, "virtual memory")) << err;
    EXPECT_TRUE(contains(err, "using segments (vmm:off)")) << err;
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
    e.reset();
    void *p = mf_malloc(a.get(), 0, 5 * MiB, 0);
    ASSERT_NE(p, nullptr) << mf_last_error();
    std::memset(p, 1, 5 * MiB);
    EXPECT_EQ(e.calls("cuMemAlloc"), 1u);
    EXPECT_EQ(e.calls("cuMemCreate"), 0u) << "a device without VMM was asked for granules";
    EXPECT_EQ(e.calls("cuMemAddressReserve"), 0u);
    EXPECT_EQ(mf_free(a.get(), p), MF_OK);
  }
  mf_allocator *a = nullptr;
  EXPECT_EQ(mf_allocator_create("backend:cuda,vmm:on", &a), MF_ERR_NO_DEVICE);
  std::string why = mf_last_error();
  EXPECT_TRUE(contains(why, "vmm:on")) << why;
  EXPECT_TRUE(contains(why, "virtual memory")) << why;
  expect_same(before, Live::now());
}

// Each device has its own memory and primary context; the backend makes the
// block's device current, and an event lives in its stream's context.
TEST(EmuEnv, TwoDevicesKeepTheirMemoryAndContextsApart) {
  REQUIRE_SETTING("EMUCUDA_DEVICES", "2");
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  Primary p0(0), p1(1);
  CUstream s0 = make_stream(p0.ctx), s1 = make_stream(p1.ctx);
  Live before = Live::now();
  unsigned long long bytes1 = e.bytes_in_use(1);
  {
    Allocator a = create("backend:cuda,vmm:on");
    ASSERT_TRUE(a);
    ASSERT_EQ(mf_allocator_device_count(a.get()), 2);
    EXPECT_EQ(mf_capacity(a.get(), 1), 256 * MiB);
    // PyTorch's current device is 0; the block is on device 1.
    Current cur(p0.ctx);
    void *b1 = mf_malloc(a.get(), 1, 8 * MiB, S(s1));
    ASSERT_NE(b1, nullptr) << mf_last_error();
    EXPECT_EQ(current_context(), p0.ctx) << "device 1's context left current";
    EXPECT_EQ(e.bytes_in_use(1) - bytes1, (unsigned long long)stats(a.get(), 1).reserved_bytes.current);
    EXPECT_EQ(e.bytes_in_use(0), before.bytes0) << "device 1's block took device 0's memory";
    EXPECT_EQ(mf_device_of(a.get(), b1), 1);
    std::memset(b1, 0x77, 8 * MiB);
    // Device 1 full: an OOM of device 1, device 0 untouched.
    EXPECT_EQ(mf_malloc(a.get(), 1, 250 * MiB, S(s1)), nullptr);
    EXPECT_EQ(mf_last_status(), MF_ERR_OOM);
    void *b0 = mf_malloc(a.get(), 0, 250 * MiB, S(s0));
    EXPECT_NE(b0, nullptr) << mf_last_error();

    EXPECT_EQ(mf_free(a.get(), b0), MF_OK);
    // A block of device 0 used on a stream of device 1 (PyTorch creates the
    // event on the stream's device): the event is recorded in device 1's
    // context and defers the reuse until that stream gets past the free.
    ASSERT_EQ(e.hold_stream(s1), CUDA_SUCCESS);
    void *x = mf_malloc(a.get(), 0, 4 * MiB, S(s0));
    ASSERT_NE(x, nullptr) << mf_last_error();
    ASSERT_EQ(mf_record_stream(a.get(), x, S(s1)), MF_OK);
    e.reset();
    ASSERT_EQ(mf_free(a.get(), x), MF_OK) << mf_last_error();
    EXPECT_EQ(stats(a.get(), 0).deferred_frees, 1) << "the event on device 1's stream failed: "
                                                  << e.calls("cuEventRecord") << " records";
    EXPECT_EQ(e.calls("cuCtxSynchronize"), 0u) << "fell back to synchronizing instead of an event";
    void *y = mf_malloc(a.get(), 0, 4 * MiB, S(s0));
    EXPECT_NE(y, x) << "reused while device 1's stream may still use it";
    ASSERT_EQ(e.release_stream(s1), CUDA_SUCCESS);
    ASSERT_EQ(e.StreamSynchronize(s1), CUDA_SUCCESS);
    for (void *q : {b1, y}) EXPECT_EQ(mf_free(a.get(), q), MF_OK);
    EXPECT_EQ(mf_check(a.get()), MF_OK) << mf_last_error();
  }
  expect_same(before, Live::now());
  EXPECT_EQ(e.bytes_in_use(1), bytes1);
  EXPECT_EQ(e.primary_refcount(1), 1) << "device 1's context references left";
  EXPECT_EQ(e.StreamDestroy(s0), CUDA_SUCCESS);
  EXPECT_EQ(e.StreamDestroy(s1), CUDA_SUCCESS);
}

// The allocator's granule is the driver's recommended one, and capacity is
// the driver's total.
TEST(EmuEnv, SmallGranuleIsTheAllocatorsGranule) {
  REQUIRE_SETTING("EMUCUDA_GRANULE", "64KiB,256KiB");
  REQUIRE_EMU();
  Live before = Live::now();
  {
    Allocator a = create("backend:cuda");
    ASSERT_TRUE(a);
    EXPECT_EQ(mf_allocator_granule(a.get()), 256 * KiB);
    EXPECT_EQ(mf_capacity(a.get(), 0), 64 * MiB);
    void *p = mf_malloc(a.get(), 0, 300 * KiB, 0);
    ASSERT_NE(p, nullptr) << mf_last_error();
    EXPECT_EQ(stats(a.get()).reserved_bytes.current % (int64_t)(256 * KiB), 0);
    EXPECT_EQ(emu().bytes_in_use(0) - before.bytes0, (unsigned long long)stats(a.get()).reserved_bytes.current);
    EXPECT_EQ(mf_malloc(a.get(), 0, 70 * MiB, 0), nullptr);
    EXPECT_EQ(mf_last_status(), MF_ERR_OOM);
    void *q = mf_malloc(a.get(), 0, 60 * MiB, 0);
    EXPECT_NE(q, nullptr) << mf_last_error();
    EXPECT_EQ(mf_free(a.get(), p), MF_OK);
    EXPECT_EQ(mf_free(a.get(), q), MF_OK);
  }
  expect_same(before, Live::now());
}

}  // namespace
