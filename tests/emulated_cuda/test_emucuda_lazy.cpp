// test_emucuda_lazy.cpp — the plugin before and at PyTorch's first CUDA
// allocation, over the emulated driver, in a process of its own (ctest entry
// emucuda.env.lazy: the plugin's allocator is process-wide): validating
// creates nothing and calls nothing in the driver, so CUDA stays
// uninitialized until the first allocation; a capturing stream is refused with
// a message that names the PyTorch features that capture; and the allocator
// goes on afterwards with the capture intact.
#include <gtest/gtest.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "emu_test_util.h"
#include "memfit/plugin.h"

namespace {

using namespace emutest;

TEST(EmuLazy, ValidateAndProbeTouchNoDriverCallAndCreateNothing) {
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  unsetenv("MEMFIT_CONF");  // the default, backend:cuda
  e.reset();
  ASSERT_EQ(mf_backend_cuda_probe(), MF_OK) << mf_last_error();
  EXPECT_EQ(memfit_plugin_validate(), 0) << memfit_plugin_last_error();
  EXPECT_EQ(memfit_plugin_allocator_if_created(), nullptr) << "validate created the allocator";
  for (const char *call : {"cuInit", "cuDeviceGetCount", "cuDevicePrimaryCtxRetain", "cuMemAlloc"})
    EXPECT_EQ(e.calls(call), 0u) << call << " called before the first allocation";

  // A bad option is named, and still nothing is created.
  setenv("MEMFIT_CONF", "vmm:sometimes", 1);
  EXPECT_NE(memfit_plugin_validate(), 0);
  EXPECT_NE(std::string(memfit_plugin_last_error()).find("vmm"), std::string::npos) << memfit_plugin_last_error();
  EXPECT_EQ(memfit_plugin_allocator_if_created(), nullptr);
  unsetenv("MEMFIT_CONF");

  // The first allocation creates it, over the driver.
  Primary primary;
  Current cur(primary.ctx);
  void *p = memfit_malloc(1 * MiB, 0, nullptr);
  ASSERT_NE(p, nullptr);
  EXPECT_NE(memfit_plugin_allocator_if_created(), nullptr);
  EXPECT_GE(e.calls("cuDeviceGetCount"), 1u);
  memfit_free(p, 1 * MiB, 0, nullptr);
}

TEST(EmuLazy, CaptureIsRefusedNamingReduceOverheadAndTheCaptureSurvives) {
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  Primary primary;
  CUstream s = make_stream(primary.ctx);
  Current cur(primary.ctx);
  void *warm = memfit_malloc(2 * MiB, 0, s);  // a cached block the capture must not get
  ASSERT_NE(warm, nullptr);
  memfit_free(warm, 2 * MiB, 0, s);
  unsigned long long violations = e.capture_violations();
  ASSERT_EQ(e.begin_capture(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);
  std::string message;
  try {
    memfit_malloc(2 * MiB, 0, s);
  } catch (const std::runtime_error &err) {
    message = err.what();
  }
  EXPECT_NE(message.find("capturing a CUDA graph"), std::string::npos) << message;
  EXPECT_NE(message.find("reduce-overhead"), std::string::npos) << message;
  EXPECT_EQ(message.rfind("memfit: ", 0), 0u) << message;
  EXPECT_EQ(e.capture_violations(), violations) << "the refusal itself made a call that capture forbids";
  EXPECT_EQ(e.end_capture(s), CUDA_SUCCESS) << "the capture was invalidated";
  void *after = memfit_malloc(2 * MiB, 0, s);
  EXPECT_NE(after, nullptr);
  memfit_free(after, 2 * MiB, 0, s);
  EXPECT_EQ(e.StreamDestroy(s), CUDA_SUCCESS);
}

}  // namespace
