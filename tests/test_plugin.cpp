// test_plugin.cpp — the PyTorch entry points of plugin.h, run without a GPU
// over the virtual backend (MEMFIT_CONF=backend:virtual,...), as PyTorch's
// CUDAPluggableAllocator would call them.
//
// The plugin's allocator is process-global and created once, so every test
// that uses it is in the PluginTest fixture, which sets MEMFIT_CONF before
// the first call; only this file calls memfit_* entry points.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "memfit/memfit.h"
#include "memfit/plugin.h"

namespace {

constexpr uint64_t kMiB = 1024ull * 1024;
constexpr uint64_t kCapacity = 64 * kMiB;
const char kConf[] = "backend:virtual,capacity:64MiB";

void *stream_of(uintptr_t s) { return reinterpret_cast<void *>(s); }

// Creation failure must not be cached: this runs in a fresh process (the
// "threadsafe" death-test style re-executes the binary with only this test),
// since in this one the fixture below has created the allocator for good.
TEST(PluginDeathTest, CreationFailureIsReportedAndRetried) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        auto fail = [](const char *why) {
          std::fprintf(stderr, "child check failed: %s\n", why);
          std::_Exit(1);
        };
        setenv("MEMFIT_CONF", "backend:nonsense", 1);
        // The void hooks have nothing to act on yet: no throw, no crash.
        memfit_free(reinterpret_cast<void *>(0x1000), 16, 0, nullptr);
        memfit_record_stream(reinterpret_cast<void *>(0x1000), nullptr);
        memfit_empty_cache();
        memfit_set_memory_fraction(0.5, 0);  // creation fails: stderr only
        if (memfit_plugin_allocator() != nullptr) fail("allocator created from a bad conf");
        if (std::strstr(mf_last_error(), "nonsense") == nullptr) fail("mf_last_error does not name the bad value");
        bool threw = false;
        try {
          memfit_malloc(16, 0, nullptr);
        } catch (const std::runtime_error &e) {
          threw = std::strncmp(e.what(), "memfit: ", 8) == 0 && std::strstr(e.what(), "nonsense");
          if (!threw) std::fprintf(stderr, "what(): %s\n", e.what());
        }
        if (!threw) fail("malloc with a bad conf did not throw a 'memfit: ' runtime_error");
        // Fixed configuration: the next call creates it.
        setenv("MEMFIT_CONF", kConf, 1);
        void *p = memfit_malloc(16, 0, nullptr);
        if (p == nullptr) fail("malloc after fixing MEMFIT_CONF returned NULL");
        memfit_free(p, 16, 0, nullptr);
        std::_Exit(0);
      },
      ::testing::ExitedWithCode(0), "");
}

// Options given in code come after MEMFIT_CONF's, are checked when given, and
// can no longer change once the allocator exists (a fresh process, as above).
TEST(PluginDeathTest, ConfigureInCodeBeforeTheFirstAllocation) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        auto fail = [](const char *why) {
          std::fprintf(stderr, "child check failed: %s (%s)\n", why, memfit_plugin_last_error());
          std::_Exit(1);
        };
        setenv("MEMFIT_CONF", "backend:virtual,capacity:32MiB", 1);
        if (memfit_plugin_configure("capacity:48MiB,max_split_size:4MiB") != 0) fail("good options refused");
        if (memfit_plugin_configure("capacty:1GiB") == 0) fail("a misspelt key was accepted");
        if (!std::strstr(memfit_plugin_last_error(), "capacty")) fail("the error does not name the bad key");
        if (memfit_plugin_validate() != 0) fail("validate failed after a refused configure");
        char before[32];
        if (memfit_plugin_option("capacity", before, sizeof before) != 0 || std::strcmp(before, "50331648") != 0)
          fail("memfit_plugin_option does not see configure's capacity before creation");
        if (memfit_plugin_option("capacty", before, sizeof before) == 0) fail("an unknown key was read");
        if (memfit_plugin_allocator_if_created() != nullptr) fail("configure or option created the allocator");
        void *p = memfit_malloc(16, 0, nullptr);
        mf_allocator *a = memfit_plugin_allocator_if_created();
        if (!p || !a) fail("the first allocation created no allocator");
        // The earlier good options hold: after MEMFIT_CONF's, not replaced by the refused ones.
        if (mf_capacity(a, 0) != 48 * kMiB) fail("configure's capacity did not win over MEMFIT_CONF's");
        char text[32];
        if (mf_options_get(mf_allocator_options(a), "max_split_size", text, sizeof text) != MF_OK ||
            std::strcmp(text, "4194304") != 0)
          fail("configure's max_split_size was lost");
        if (memfit_plugin_configure("capacity:1GiB") == 0) fail("configure after creation was accepted");
        if (!std::strstr(memfit_plugin_last_error(), "exists already")) fail("the late configure's error is unclear");
        if (mf_capacity(a, 0) != 48 * kMiB) fail("a late configure changed the capacity");
        memfit_free(p, 16, 0, nullptr);
        std::_Exit(0);
      },
      ::testing::ExitedWithCode(0), "");
}

class PluginTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // Before the first memfit_* call of this process (see the file comment).
    setenv("MEMFIT_CONF", kConf, 1);
  }

  void SetUp() override {
    a_ = memfit_plugin_allocator();
    ASSERT_NE(a_, nullptr) << "plugin allocator not created: " << mf_last_error();
    mf_backend *b = mf_allocator_backend(a_);
    ASSERT_NE(b, nullptr);
    ASSERT_STREQ(b->ops->name, "virtual")
        << "the plugin allocator was created before MEMFIT_CONF was set; only test_plugin.cpp may call memfit_*";
    // Tests may run in any order (--gtest_shuffle): undo what others changed.
    ASSERT_EQ(mf_set_capacity(a_, 0, kCapacity), MF_OK) << mf_last_error();
    ASSERT_EQ(mf_backend_sim_complete(b, 0, UINTPTR_MAX), MF_OK) << mf_last_error();
    memfit_empty_cache();
  }

  void TearDown() override {
    if (a_) {
      EXPECT_EQ(mf_check(a_), MF_OK) << mf_last_error();
    }
  }

  mf_allocator *a_ = nullptr;
};

TEST_F(PluginTest, MallocFreeRoundTrip) {
  void *p = memfit_malloc(1000, 0, stream_of(0));
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(mf_device_of(a_, p), 0);
  size_t requested = 0, size = 0;
  mf_tag tag;
  ASSERT_EQ(mf_block_info(a_, p, &tag, &requested, &size), MF_OK) << mf_last_error();
  EXPECT_EQ(requested, 1000u);
  EXPECT_GE(size, 1000u);
  memfit_free(p, 1000, 0, stream_of(0));
  EXPECT_EQ(mf_device_of(a_, p), -1) << "freed pointer still live";
}

TEST_F(PluginTest, ZeroSizeGetsDistinctPointers) {
  // PyTorch keys its bookkeeping on the pointer: two empty tensors must not
  // share one, and NULL would be a tensor at address 0.
  void *p = memfit_malloc(0, 0, nullptr);
  void *q = memfit_malloc(0, 0, nullptr);
  ASSERT_NE(p, nullptr);
  ASSERT_NE(q, nullptr);
  EXPECT_NE(p, q);
  memfit_free(p, 0, 0, nullptr);
  memfit_free(q, 0, 0, nullptr);
}

TEST_F(PluginTest, OomThrowsWithReportAndProcessGoesOn) {
  void *held = memfit_malloc(4096, 0, nullptr);
  ASSERT_NE(held, nullptr);
  bool threw = false;
  try {
    void *p = memfit_malloc(1024 * kMiB, 0, nullptr);
    ADD_FAILURE() << "1 GiB with a 64 MiB capacity returned " << p;
  } catch (const std::runtime_error &e) {
    threw = true;
    std::string what = e.what();
    EXPECT_EQ(what.rfind("CUDA out of memory.", 0), 0u) << what;
    EXPECT_NE(what.find("capacity"), std::string::npos) << "no OOM report in: " << what;
  }
  EXPECT_TRUE(threw);
  void *p = memfit_malloc(1 << 20, 0, nullptr);
  ASSERT_NE(p, nullptr) << "allocator unusable after an OOM";
  memfit_free(p, 1 << 20, 0, nullptr);
  memfit_free(held, 4096, 0, nullptr);
}

TEST_F(PluginTest, BadDeviceThrowsMemfitError) {
  try {
    memfit_malloc(16, 7, nullptr);
    ADD_FAILURE() << "device 7 of 1 did not throw";
  } catch (const std::runtime_error &e) {
    EXPECT_EQ(std::string(e.what()).rfind("memfit: ", 0), 0u) << e.what();
  }
}

TEST_F(PluginTest, UnknownFreeDoesNotThrowAndReportsOnce) {
  int x = 0;
  testing::internal::CaptureStderr();
  EXPECT_NO_THROW(memfit_free(&x, sizeof x, 0, nullptr));
  EXPECT_NO_THROW(memfit_free(&x, sizeof x, 0, nullptr));
  EXPECT_NO_THROW(memfit_free(nullptr, 0, 0, nullptr));
  std::string err = testing::internal::GetCapturedStderr();
  // Once per process: an earlier test may already have used the one line.
  size_t first = err.find("memfit_free");
  if (first != std::string::npos) {
    EXPECT_EQ(err.find("memfit_free", first + 1), std::string::npos) << err;
  }
  // A double free is an unknown pointer too.
  void *p = memfit_malloc(256, 0, nullptr);
  ASSERT_NE(p, nullptr);
  memfit_free(p, 256, 0, nullptr);
  EXPECT_NO_THROW(memfit_free(p, 256, 0, nullptr));
}

TEST_F(PluginTest, RecordStreamFreeEmptyCache) {
  mf_backend *b = mf_allocator_backend(a_);
  void *p = memfit_malloc(3 * kMiB, 0, stream_of(0x10));
  ASSERT_NE(p, nullptr);
  memfit_record_stream(p, stream_of(0x20));
  memfit_free(p, 3 * kMiB, 0, stream_of(0x10));
  mf_stats s{};
  ASSERT_EQ(mf_get_stats(a_, 0, &s), MF_OK) << mf_last_error();
  EXPECT_GE(s.deferred_frees, 1) << "free did not wait for the 0x20 stream";
  // Not reused while the 0x20 event is pending.
  void *q = memfit_malloc(3 * kMiB, 0, stream_of(0x10));
  ASSERT_NE(q, nullptr);
  EXPECT_NE(q, p);
  memfit_free(q, 3 * kMiB, 0, stream_of(0x10));
  ASSERT_EQ(mf_backend_sim_complete(b, 0, UINTPTR_MAX), MF_OK);
  memfit_empty_cache();
  EXPECT_EQ(mf_check(a_), MF_OK) << mf_last_error();
  ASSERT_EQ(mf_get_stats(a_, 0, &s), MF_OK) << mf_last_error();
  EXPECT_EQ(s.reserved_bytes.current, 0) << "empty_cache kept segments with nothing live";
  // An unknown pointer is reported, not thrown.
  int x = 0;
  testing::internal::CaptureStderr();
  EXPECT_NO_THROW(memfit_record_stream(&x, stream_of(0x20)));
  testing::internal::GetCapturedStderr();
}

TEST_F(PluginTest, SetMemoryFractionChangesCapacity) {
  mf_backend *b = mf_allocator_backend(a_);
  uint64_t total = 0;
  ASSERT_EQ(b->ops->total_memory(b, 0, &total), MF_OK) << mf_last_error();
  memfit_set_memory_fraction(0.5, 0);
  EXPECT_EQ(mf_capacity(a_, 0), static_cast<uint64_t>(0.5 * static_cast<double>(total)));
  memfit_set_memory_fraction(1.0, 0);
  EXPECT_EQ(mf_capacity(a_, 0), total);

  // Out of range: a message on stderr, no throw, capacity unchanged.
  ASSERT_EQ(mf_set_capacity(a_, 0, kCapacity), MF_OK);
  testing::internal::CaptureStderr();
  EXPECT_NO_THROW(memfit_set_memory_fraction(0.0, 0));
  EXPECT_NO_THROW(memfit_set_memory_fraction(1.5, 0));
  EXPECT_NO_THROW(memfit_set_memory_fraction(-1.0, 0));
  EXPECT_NO_THROW(memfit_set_memory_fraction(std::nan(""), 0));
  EXPECT_NO_THROW(memfit_set_memory_fraction(0.5, 3));
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("(0, 1]"), std::string::npos) << err;
  EXPECT_NE(err.find("device out of range"), std::string::npos) << err;
  EXPECT_EQ(mf_capacity(a_, 0), kCapacity);
}

TEST_F(PluginTest, ManyThreads) {
  // The hooks are called from every thread that frees a tensor.
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; t++) {
    threads.emplace_back([t] {
      std::vector<void *> live;
      uint32_t rng = 0x9e3779b9u * static_cast<uint32_t>(t + 1);
      for (int i = 0; i < 2000; i++) {
        rng ^= rng << 13, rng ^= rng >> 17, rng ^= rng << 5;
        if (live.size() < 16 && (rng & 1)) {
          try {
            live.push_back(memfit_malloc(rng % (256 * 1024), 0, stream_of(static_cast<uintptr_t>(t % 2))));
          } catch (const std::runtime_error &) {
            // 8 threads x 16 blocks x 256 KiB fit in 64 MiB, but do not
            // depend on the fragmentation policy here.
          }
        } else if (!live.empty()) {
          memfit_free(live.back(), 0, 0, nullptr);
          live.pop_back();
        }
      }
      for (void *p : live) memfit_free(p, 0, 0, nullptr);
    });
  }
  for (auto &th : threads) th.join();
  mf_stats s{};
  ASSERT_EQ(mf_get_stats(a_, 0, &s), MF_OK);
  EXPECT_EQ(s.active_blocks.current, 0);
}

}  // namespace
