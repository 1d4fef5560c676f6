// emu_test_util.h — helpers of the emulated-driver tests: the process's one
// emucuda::Emu, a retained primary context, a context made current for a
// scope, streams, checks for code that runs in a child process, and a
// snapshot of the emulator's live objects for leak checks.
#ifndef MEMFIT_TESTS_EMU_TEST_UTIL_H
#define MEMFIT_TESTS_EMU_TEST_UTIL_H

#include <gtest/gtest.h>
#include <memfit/memfit.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include <unistd.h>

#include "emucuda.h"
#include "test_util.h"

namespace emutest {

using memfit_test::KiB;
using memfit_test::MiB;
constexpr size_t GiB = 1024 * MiB;
constexpr size_t G = 2 * MiB;  // the emulator's default granule

// The emulator, loaded and initialized once per process.
inline emucuda::Emu &emu() {
  static emucuda::Emu e;
  return e;
}

// Every test here needs the emulator: without it (a run outside ctest, which
// sets LD_LIBRARY_PATH) they fail saying so, they do not skip.
#define REQUIRE_EMU()                                                                                   \
  do {                                                                                                  \
    ASSERT_TRUE(::emutest::emu().ok()) << ::emutest::emu().why()                                        \
                                       << " (run through ctest -L emulated-cuda, which puts the "      \
                                          "emulator on LD_LIBRARY_PATH)";                               \
  } while (0)

// For code that runs in a death test's child, where gtest's assertions do not
// reach the parent: a failed check prints and exits 1.
#define CHILD_CHECK(cond)                                                              \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      std::fprintf(stderr, "child check failed (line %d): %s\n", __LINE__, #cond);     \
      std::fflush(stderr);                                                             \
      _exit(1);                                                                        \
    }                                                                                  \
  } while (0)

// Device d's primary context, retained for the scope.
struct Primary {
  CUcontext ctx = nullptr;
  int dev;
  explicit Primary(int d = 0) : dev(d) { EXPECT_EQ(emu().PrimaryCtxRetain(&ctx, d), CUDA_SUCCESS); }
  ~Primary() {
    if (ctx) {
      EXPECT_EQ(emu().PrimaryCtxRelease(dev), CUDA_SUCCESS);
    }
  }
  Primary(const Primary &) = delete;
  Primary &operator=(const Primary &) = delete;
};

// ctx current on this thread for the scope.
struct Current {
  explicit Current(CUcontext c) { EXPECT_EQ(emu().CtxPushCurrent(c), CUDA_SUCCESS); }
  ~Current() {
    CUcontext popped = nullptr;
    EXPECT_EQ(emu().CtxPopCurrent(&popped), CUDA_SUCCESS);
  }
  Current(const Current &) = delete;
  Current &operator=(const Current &) = delete;
};

inline CUcontext current_context() {
  CUcontext c = reinterpret_cast<CUcontext>(0x1);
  EXPECT_EQ(emu().CtxGetCurrent(&c), CUDA_SUCCESS);
  return c;
}

// A stream of ctx (made current for the call only).
inline CUstream make_stream(CUcontext ctx, unsigned flags = CU_STREAM_NON_BLOCKING) {
  Current cur(ctx);
  CUstream s = nullptr;
  EXPECT_EQ(emu().StreamCreate(&s, flags), CUDA_SUCCESS);
  return s;
}

inline uintptr_t U(const void *p) { return reinterpret_cast<uintptr_t>(p); }
inline uintptr_t S(CUstream s) { return reinterpret_cast<uintptr_t>(s); }

// What the emulator holds now; a test compares the state after its work with
// the one before (other tests of the process may hold things of their own).
struct Live {
  unsigned long long bytes0, allocations, handles, mappings, reservations, events, streams;
  int refcount0;
  unsigned long long timeouts; // not a live object: waits that gave up in between
  static Live now() {
    emucuda::Emu &e = emu();
    return Live{e.bytes_in_use(0),  e.live("allocations"),  e.live("handles"), e.live("mappings"),
                e.live("reservations"), e.live("events"), e.live("streams"),  e.primary_refcount(0),
                e.wait_timeouts()};
  }
};

inline void expect_same(const Live &before, const Live &after) {
  EXPECT_EQ(after.bytes0, before.bytes0) << "device memory left in use";
  EXPECT_EQ(after.allocations, before.allocations) << "cuMemAlloc allocations left";
  EXPECT_EQ(after.handles, before.handles) << "cuMemCreate memory left";
  EXPECT_EQ(after.mappings, before.mappings) << "mappings left";
  EXPECT_EQ(after.reservations, before.reservations) << "address reservations left";
  EXPECT_EQ(after.events, before.events) << "events left";
  EXPECT_EQ(after.streams, before.streams) << "streams left";
  EXPECT_EQ(after.refcount0, before.refcount0) << "primary context references left";
  EXPECT_EQ(after.timeouts, before.timeouts) << "a synchronizing call waited on a held stream and gave up";
}

// Allocator handles, checked creation and stats reads: the suite's own (test_util.h).
using memfit_test::Allocator;
using memfit_test::create;
using memfit_test::stats;

inline bool holds(const void *p, size_t n, unsigned char v) {
  const unsigned char *b = static_cast<const unsigned char *>(p);
  for (size_t i = 0; i < n; i++)
    if (b[i] != v) return false;
  return true;
}

}  // namespace emutest

#endif  // MEMFIT_TESTS_EMU_TEST_UTIL_H
