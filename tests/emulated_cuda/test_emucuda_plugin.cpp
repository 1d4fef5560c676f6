// test_emucuda_plugin.cpp — the PyTorch entry points of plugin.h with their
// default backend (cuda, here the emulated driver), called as PyTorch's
// CUDAPluggableAllocator calls them: real device memory on a real stream,
// record_stream, the memory fraction, an OOM that throws "CUDA out of
// memory.", and empty_cache giving everything back. The plugin's allocator
// is process-wide and never destroyed, so only this file calls memfit_*.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>

#include "emu_test_util.h"
#include "memfit/plugin.h"

namespace {

using namespace emutest;

TEST(EmuPlugin, EntryPointsWorkOverTheDriver) {
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  unsetenv("MEMFIT_CONF");  // the default, backend:cuda
  Primary primary;
  CUstream s = make_stream(primary.ctx), other = make_stream(primary.ctx);
  unsigned long long bytes0 = e.bytes_in_use(0), mappings0 = e.live("mappings");

  // As PyTorch calls it: with its current device's primary context current.
  Current cur(primary.ctx);
  void *p = memfit_malloc(3 * MiB, 0, s);
  ASSERT_NE(p, nullptr);
  std::memset(p, 0x5c, 3 * MiB);  // device memory, here host-visible
  ASSERT_EQ(e.MemsetD8(reinterpret_cast<CUdeviceptr>(p), 0x6d, 3 * MiB), CUDA_SUCCESS);
  ASSERT_EQ(e.CtxSynchronize(), CUDA_SUCCESS);
  EXPECT_TRUE(holds(p, 3 * MiB, 0x6d));
  void *z1 = memfit_malloc(0, 0, s), *z2 = memfit_malloc(0, 0, s);
  ASSERT_TRUE(z1 && z2);
  EXPECT_NE(z1, z2) << "size 0 must give unique pointers";
  EXPECT_GT(e.bytes_in_use(0), bytes0) << "no device memory behind the plugin";
  mf_allocator *a = memfit_plugin_allocator();
  ASSERT_NE(a, nullptr) << mf_last_error();
  EXPECT_STREQ(mf_allocator_backend(a)->ops->name, "cuda");

  // record_stream on a held stream defers the reuse.
  ASSERT_EQ(e.hold_stream(other), CUDA_SUCCESS);
  memfit_record_stream(p, other);
  memfit_free(p, 3 * MiB, 0, s);
  void *q = memfit_malloc(3 * MiB, 0, s);
  EXPECT_NE(q, p) << "reused while the other stream may still use it";
  ASSERT_EQ(e.release_stream(other), CUDA_SUCCESS);
  ASSERT_EQ(e.StreamSynchronize(other), CUDA_SUCCESS);

  // An OOM throws "CUDA out of memory." with the report; a bad device throws
  // "memfit: ". Both leave the allocator usable.
  try {
    memfit_malloc(static_cast<size_t>(1) << 40, 0, s);
    ADD_FAILURE() << "1 TiB on a 1 GiB device did not throw";
  } catch (const std::exception &ex) {
    EXPECT_EQ(std::string(ex.what()).rfind("CUDA out of memory.", 0), 0u) << ex.what();
  }
  try {
    memfit_malloc(16, 1, s);
    ADD_FAILURE() << "device 1 of 1 did not throw";
  } catch (const std::exception &ex) {
    EXPECT_EQ(std::string(ex.what()).rfind("memfit: ", 0), 0u) << ex.what();
  }
  // The fraction is of the driver's total: half of 1 GiB.
  memfit_set_memory_fraction(0.5, 0);
  EXPECT_EQ(mf_capacity(a, 0), 512 * MiB);
  try {
    memfit_malloc(600 * MiB, 0, s);
    ADD_FAILURE() << "600 MiB under a 512 MiB fraction did not throw";
  } catch (const std::exception &ex) {
    EXPECT_EQ(std::string(ex.what()).rfind("CUDA out of memory.", 0), 0u) << ex.what();
  }
  void *r = memfit_malloc(400 * MiB, 0, s);
  ASSERT_NE(r, nullptr);
  memfit_set_memory_fraction(1.0, 0);

  // Everything freed: empty_cache gives the driver everything back.
  for (void *x : {q, z1, z2, r}) memfit_free(x, 0, 0, s);
  memfit_empty_cache();
  EXPECT_EQ(e.bytes_in_use(0), bytes0) << "device memory kept after empty_cache";
  EXPECT_EQ(e.live("mappings"), mappings0);
  EXPECT_EQ(mf_check(a), MF_OK) << mf_last_error();
  EXPECT_EQ(e.StreamDestroy(s), CUDA_SUCCESS);
  EXPECT_EQ(e.StreamDestroy(other), CUDA_SUCCESS);
}

}  // namespace
