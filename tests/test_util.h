// test_util.h — helpers shared by the GoogleTest files: size constants, an
// owning handle for allocators, and checked creation and stats reads.
#ifndef MEMFIT_TEST_UTIL_H
#define MEMFIT_TEST_UTIL_H

#include <gtest/gtest.h>
#include <memfit/memfit.h>

#include <cstdint>
#include <cstring>
#include <memory>

namespace memfit_test {

constexpr size_t KiB = 1024;
constexpr size_t MiB = 1024 * KiB;

struct AllocatorDeleter {
  void operator()(mf_allocator *a) const { mf_allocator_destroy(a); }
};
using Allocator = std::unique_ptr<mf_allocator, AllocatorDeleter>;

// Creates an allocator from an options string; a failure fails the test and
// gives an empty handle.
inline Allocator create(const char *conf) {
  mf_allocator *a = nullptr;
  mf_status s = mf_allocator_create(conf, &a);
  EXPECT_EQ(s, MF_OK) << conf << ": " << mf_last_error();
  return Allocator(s == MF_OK ? a : nullptr);
}

// A device's stats; the struct is poisoned first so a getter that leaves a
// field unset shows up.
inline mf_stats stats(mf_allocator *a, int device = 0) {
  mf_stats s;
  memset(&s, 0xA5, sizeof s);
  EXPECT_EQ(mf_get_stats(a, device, &s), MF_OK) << mf_last_error();
  return s;
}

// Reserved bytes are what the simulated backend holds on device 0, all of it
// mapped (the page-mapped pools' bookkeeping against the backend's own).
inline void expect_backend_agrees(mf_allocator *a) {
  uint64_t physical = 0, mapped = 0;
  ASSERT_EQ(mf_backend_sim_usage(mf_allocator_backend(a), 0, &physical, &mapped), MF_OK);
  mf_stats s = stats(a);
  EXPECT_EQ((int64_t)physical, s.reserved_bytes.current);
  EXPECT_EQ((int64_t)mapped, s.reserved_bytes.current);
}

}  // namespace memfit_test

#endif  // MEMFIT_TEST_UTIL_H
