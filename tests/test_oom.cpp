// test_oom.cpp — running out of memory: the OOM ladder on a capacity-limited
// virtual backend, injected map failures, the OOM and memory reports, capacity
// changes, and the host backend under a small budget (real, writable memory).
#include <gtest/gtest.h>
#include <memfit/memfit.h>

#include "test_util.h"

#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace {

using namespace memfit_test;

constexpr uint64_t TiB = (uint64_t)1 << 40;
constexpr uintptr_t kS1 = 0x1001, kS2 = 0x2002;

void *must_malloc(mf_allocator *a, size_t size, uintptr_t stream = 0, int device = 0) {
  void *p = mf_malloc(a, device, size, stream);
  EXPECT_NE(p, nullptr) << "mf_malloc(" << size << ") failed: " << mf_last_error();
  return p;
}

void must_free(mf_allocator *a, void *p) { EXPECT_EQ(mf_free(a, p), MF_OK) << mf_last_error(); }

void expect_consistent(mf_allocator *a) { EXPECT_EQ(mf_check(a), MF_OK) << mf_last_error(); }

// A request that must fail after the whole ladder: NULL, one more OOM, a message.
void expect_oom(mf_allocator *a, size_t size, uintptr_t stream = 0, int device = 0) {
  int64_t before = stats(a, device).ooms;
  void *p = mf_malloc(a, device, size, stream);
  EXPECT_EQ(p, nullptr) << "mf_malloc(" << size << ") should fail";
  EXPECT_EQ(stats(a, device).ooms, before + 1);
  EXPECT_STRNE(mf_last_error(), "");
  EXPECT_EQ(mf_last_status(), MF_ERR_OOM);
}

using ReportFn = mf_status (*)(mf_allocator *, char *, size_t, size_t *);

std::string oom_report(mf_allocator *a) {
  size_t needed = 0;
  EXPECT_EQ(mf_oom_report(a, nullptr, 0, &needed), MF_OK);
  EXPECT_GE(needed, 1u);
  std::vector<char> buf(needed + 8, 'X');
  size_t again = 0;
  EXPECT_EQ(mf_oom_report(a, buf.data(), buf.size(), &again), MF_OK);
  EXPECT_EQ(again, needed);
  EXPECT_EQ(strlen(buf.data()) + 1, needed);
  return buf.data();
}

std::string memory_report(mf_allocator *a, int device) {
  size_t needed = 0;
  EXPECT_EQ(mf_memory_report(a, device, nullptr, 0, &needed), MF_OK) << mf_last_error();
  std::vector<char> buf(needed + 8, 'X');
  EXPECT_EQ(mf_memory_report(a, device, buf.data(), buf.size(), nullptr), MF_OK);
  EXPECT_EQ(strlen(buf.data()) + 1, needed);
  return buf.data();
}

std::string lower(std::string s) {
  for (char &c : s) c = (char)std::tolower((unsigned char)c);
  return s;
}

// Sizes as people read them in the reports: "64.00 MiB".
std::string human(uint64_t bytes) {
  const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = (double)bytes;
  int u = 0;
  while (v >= 1024.0 && u < 4) v /= 1024.0, u++;
  char buf[32];
  if (u == 0) snprintf(buf, sizeof buf, "%llu B", (unsigned long long)bytes);
  else snprintf(buf, sizeof buf, "%.2f %s", v, units[u]);
  return buf;
}

std::vector<std::string> lines(const std::string &text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

// The first line that starts (after blanks) with `word` and names it as a word.
std::string line_starting(const std::string &text, const std::string &word) {
  for (const std::string &l : lines(text)) {
    size_t i = l.find_first_not_of(" \t");
    if (i != std::string::npos && l.compare(i, word.size(), word) == 0 &&
        (i + word.size() == l.size() || !std::isalnum((unsigned char)l[i + word.size()]) ||
         l[i + word.size()] == ' '))
      return l;
  }
  return "";
}

// ----------------------------------------------------------------- the ladder

TEST(Oom, LadderReleasesACachedSegmentThatMakesRoom) {
  Allocator a = create("backend:virtual,vmm:off,capacity:64MiB,large_segment:2MiB,merge_segments:false");
  ASSERT_TRUE(a);
  must_free(a.get(), must_malloc(a.get(), 40 * MiB, kS1));
  // Stream 2 cannot use stream 1's cached 40 MiB, and 40 + 40 > 64.
  void *p = mf_malloc(a.get(), 0, 40 * MiB, kS2);
  ASSERT_NE(p, nullptr) << mf_last_error();
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.ooms, 0);
  EXPECT_GE(s.ladder_releases, 1);
  EXPECT_EQ(s.segments.current, 1);
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(40 * MiB));
  EXPECT_EQ(s.segment_unmaps, 1);
  EXPECT_EQ(oom_report(a.get()), "");
  expect_consistent(a.get());
}

TEST(Oom, LadderReleasesSeveralCachedSegments) {
  Allocator a = create("backend:virtual,vmm:off,capacity:64MiB,large_segment:2MiB,merge_segments:false");
  ASSERT_TRUE(a);
  void *x = must_malloc(a.get(), 16 * MiB, kS1);
  void *y = must_malloc(a.get(), 16 * MiB, kS1);
  void *z = must_malloc(a.get(), 16 * MiB, kS1);
  must_free(a.get(), x);
  must_free(a.get(), y);
  must_free(a.get(), z);
  // No single cached segment is large enough: they go together.
  void *p = mf_malloc(a.get(), 0, 40 * MiB, kS2);
  ASSERT_NE(p, nullptr) << mf_last_error();
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.ooms, 0);
  EXPECT_GE(s.ladder_releases, 1);
  EXPECT_LE(s.reserved_bytes.current, (int64_t)(64 * MiB));
  EXPECT_GE(s.segment_unmaps, 2);
  expect_consistent(a.get());
}

TEST(Oom, LadderKeepsCachedSegmentsOfLiveBlocks) {
  Allocator a = create("backend:virtual,vmm:off,capacity:64MiB,large_segment:2MiB,merge_segments:false");
  ASSERT_TRUE(a);
  void *big = must_malloc(a.get(), 32 * MiB, kS1);
  must_free(a.get(), big);
  void *part = must_malloc(a.get(), 8 * MiB, kS1);  // splits the cached 32 MiB: not releasable
  ASSERT_EQ(part, big);
  expect_oom(a.get(), 40 * MiB, kS2);  // 32 + 40 > 64 and nothing can go
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(32 * MiB));
  EXPECT_EQ(s.segment_unmaps, 0);
  expect_consistent(a.get());
  // Once the block is freed, the ladder can release its segment.
  must_free(a.get(), part);
  EXPECT_NE(mf_malloc(a.get(), 0, 40 * MiB, kS2), nullptr) << mf_last_error();
}

TEST(Oom, PaddedSegmentFallsBackToTheRequestNearTheCapacity) {
  // large_segment pads a 3 MiB request to 20 MiB; with 20 of 30 MiB reserved
  // by another stream, the padding no longer fits but the request does.
  Allocator a = create("backend:virtual,vmm:off,capacity:30MiB,large_segment:20MiB");
  ASSERT_TRUE(a);
  void *p = must_malloc(a.get(), 3 * MiB, kS1);
  EXPECT_EQ(stats(a.get()).reserved_bytes.current, (int64_t)(20 * MiB));
  void *q = mf_malloc(a.get(), 0, 3 * MiB, kS2);
  ASSERT_NE(q, nullptr) << mf_last_error();
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.ooms, 0);
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(24 * MiB));
  EXPECT_EQ(s.segments.current, 2);
  must_free(a.get(), p);
  must_free(a.get(), q);
  expect_consistent(a.get());
}

// ------------------------------------------------------------------ reports

class OomReport : public testing::Test {
 protected:
  // Seven layers of 14, 12, ..., 2 MiB (56 MiB), and a 1000 B untagged block
  // whose 2 MiB small segment is reserved but mostly free: 58 MiB of 64.
  void SetUp() override {
    a_ = create("backend:virtual,vmm:off,capacity:64MiB,large_segment:2MiB,merge_segments:false");
    ASSERT_TRUE(a_);
    const mf_category cats[7] = {MF_CAT_PARAMETER,       MF_CAT_GRADIENT,  MF_CAT_ACTIVATION, MF_CAT_ACTIVATION,
                                 MF_CAT_OPTIMIZER_STATE, MF_CAT_TEMPORARY, MF_CAT_INPUT};
    for (int i = 0; i < 7; i++) {
      size_t size = (size_t)(14 - 2 * i) * MiB;
      names_.push_back("oomreport_layer_" + std::string(1, (char)('a' + i)));
      uint32_t layer = mf_layer_intern(names_.back().c_str());
      void *p = mf_malloc_tagged(a_.get(), 0, size, 0, mf_tag{layer, (uint8_t)cats[i], MF_PHASE_FORWARD});
      ASSERT_NE(p, nullptr) << mf_last_error();
      live_.push_back(p);
    }
    live_.push_back(must_malloc(a_.get(), 1000));
    ASSERT_EQ(stats(a_.get()).reserved_bytes.current, (int64_t)(58 * MiB));
  }
  void TearDown() override {
    for (void *p : live_) mf_free(a_.get(), p);
  }
  Allocator a_;
  std::vector<std::string> names_;
  std::vector<void *> live_;
};

TEST_F(OomReport, ReportIsEmptyBeforeAnyOom) {
  size_t needed = 99;
  char buf[8] = "XXXXXXX";
  EXPECT_EQ(mf_oom_report(a_.get(), buf, sizeof buf, &needed), MF_OK);
  EXPECT_EQ(needed, 1u);
  EXPECT_STREQ(buf, "");
}

TEST_F(OomReport, FailedRequestLeavesACompleteReport) {
  expect_oom(a_.get(), 16 * MiB);
  std::string error = lower(mf_last_error());
  EXPECT_NE(error.find("out of memory"), std::string::npos) << error;
  std::string r = oom_report(a_.get());
  ASSERT_NE(r, "");
  // Capacity.
  std::string cap = line_starting(r, "capacity");
  EXPECT_NE(cap.find(human(64 * MiB)), std::string::npos) << r;
  // Allocated by category, by name, with the bytes each holds.
  for (auto [cat, bytes] : {std::pair<const char *, size_t>{"parameter", 14 * MiB},
                            {"gradient", 12 * MiB},
                            {"activation", 18 * MiB},
                            {"optimizer_state", 6 * MiB},
                            {"temporary", 4 * MiB},
                            {"input", 2 * MiB}}) {
    std::string l = line_starting(r, cat);
    EXPECT_NE(l.find(human(bytes)), std::string::npos) << cat << " in:\n" << r;
  }
  // The five layers holding the most, largest first; the two smallest left out.
  size_t last = 0;
  for (int i = 0; i < 5; i++) {
    size_t at = r.find(names_[i]);
    ASSERT_NE(at, std::string::npos) << names_[i] << " missing from:\n" << r;
    EXPECT_GT(at, last) << names_[i] << " out of order in:\n" << r;
    last = at;
  }
  EXPECT_EQ(r.find(names_[5]), std::string::npos) << r;
  EXPECT_EQ(r.find(names_[6]), std::string::npos) << r;
  // Reserved but free: the small segment's 2 MiB - 1 KiB.
  bool found = false;
  for (const std::string &l : lines(r))
    if (lower(l).find("free") != std::string::npos && l.find(human(2 * MiB - 1024)) != std::string::npos) found = true;
  EXPECT_TRUE(found) << "no reserved-but-free line with " << human(2 * MiB - 1024) << " in:\n" << r;
}

TEST_F(OomReport, ReportBufferConvention) {
  expect_oom(a_.get(), 16 * MiB);
  std::string full = oom_report(a_.get());
  char small[16];
  size_t needed = 0;
  mf_oom_report(a_.get(), small, sizeof small, &needed);
  EXPECT_EQ(needed, full.size() + 1);
  EXPECT_EQ(std::string(small), full.substr(0, sizeof small - 1));
}

TEST_F(OomReport, AllocatorKeepsWorkingAfterAnOom) {
  mf_stats before = stats(a_.get());
  expect_oom(a_.get(), 16 * MiB);
  expect_oom(a_.get(), 7 * MiB);  // 58 + 8 > 64
  mf_stats s = stats(a_.get());
  EXPECT_EQ(s.ooms, before.ooms + 2);
  EXPECT_EQ(s.allocs, before.allocs);
  EXPECT_EQ(s.allocated_bytes.current, before.allocated_bytes.current);
  EXPECT_EQ(s.reserved_bytes.current, before.reserved_bytes.current);
  expect_consistent(a_.get());
  // Small requests still fit the small segment; 6 MiB fits the budget.
  void *small = must_malloc(a_.get(), 64 * KiB);
  void *six = must_malloc(a_.get(), 6 * MiB);
  ASSERT_NE(six, nullptr);
  must_free(a_.get(), six);
  must_free(a_.get(), small);
  // Free the largest layer: a 16 MiB request now succeeds through the ladder.
  must_free(a_.get(), live_[0]);
  live_[0] = nullptr;
  void *p = must_malloc(a_.get(), 16 * MiB);
  ASSERT_NE(p, nullptr);
  live_.push_back(p);
  EXPECT_LE(stats(a_.get()).reserved_bytes.current, (int64_t)(64 * MiB));
  expect_consistent(a_.get());
}

TEST_F(OomReport, MemoryReportDescribesTheDevice) {
  std::string r = memory_report(a_.get(), 0);
  EXPECT_NE(line_starting(r, "capacity").find(human(64 * MiB)), std::string::npos) << r;
  EXPECT_NE(line_starting(r, "activation").find(human(18 * MiB)), std::string::npos) << r;
  EXPECT_NE(r.find(names_[0]), std::string::npos) << r;
  EXPECT_LT(r.find(names_[0]), r.find(names_[1])) << r;
  EXPECT_EQ(r.find(names_[6]), std::string::npos) << r;
  EXPECT_EQ(oom_report(a_.get()), "");  // a memory report is not an OOM
  size_t needed = 0;
  EXPECT_EQ(mf_memory_report(a_.get(), 1, nullptr, 0, &needed), MF_ERR_INVALID);
  // The report follows the state: after freeing the largest layer it is gone.
  must_free(a_.get(), live_[0]);
  live_[0] = nullptr;
  r = memory_report(a_.get(), 0);
  EXPECT_EQ(r.find(names_[0]), std::string::npos) << r;
  EXPECT_NE(r.find(names_[5]), std::string::npos) << r;  // now in the top five
}

// ---------------------------------------------------------- injected failures

TEST(Oom, InjectedMapFailures) {
  Allocator a = create("backend:virtual,vmm:off,large_segment:2MiB,merge_segments:false");
  ASSERT_TRUE(a);
  mf_backend *b = mf_allocator_backend(a.get());
  ASSERT_NE(b, nullptr);
  // One failure with a cached segment around: the ladder releases it and retries.
  must_free(a.get(), must_malloc(a.get(), 8 * MiB, kS1));
  ASSERT_EQ(mf_backend_sim_fail_maps(b, 1), MF_OK);
  void *p = mf_malloc(a.get(), 0, 8 * MiB, kS2);
  EXPECT_NE(p, nullptr) << mf_last_error();
  EXPECT_EQ(stats(a.get()).ooms, 0);
  EXPECT_GE(stats(a.get()).ladder_releases, 1);
  // Every map failing: NULL and an OOM, small and large alike.
  ASSERT_EQ(mf_backend_sim_fail_maps(b, 1000), MF_OK);
  expect_oom(a.get(), 4 * MiB, kS1);
  expect_oom(a.get(), 4 * KiB, kS1);
  EXPECT_NE(oom_report(a.get()), "");
  expect_consistent(a.get());
  // Requests served from the cache need no map.
  must_free(a.get(), p);
  EXPECT_EQ(mf_malloc(a.get(), 0, 8 * MiB, kS2), p);
  // Back to normal.
  ASSERT_EQ(mf_backend_sim_fail_maps(b, -1), MF_OK);
  void *q = must_malloc(a.get(), 4 * MiB, kS1);
  EXPECT_NE(q, nullptr);
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.ooms, 2);
  EXPECT_EQ(s.active_blocks.current, 2);
  expect_consistent(a.get());
}

TEST(Oom, SimHooksRejectOtherBackends) {
  // A backend of our own: the sim hooks must not treat it as theirs.
  static const mf_backend_ops ops = [] {
    mf_backend_ops o{};  // every operation NULL
    o.name = "test-null";
    return o;
  }();
  mf_backend own = {&ops};
  EXPECT_EQ(mf_backend_sim_fail_maps(&own, 1), MF_ERR_INVALID);
  EXPECT_EQ(mf_backend_sim_complete(&own, 0, 0), MF_ERR_INVALID);
  EXPECT_NE(mf_backend_sim_complete(nullptr, 0, 0), MF_OK);
}

TEST(Oom, LastStatusTellsAnOomFromOtherFailures) {
  // The virtual backend has 64 TiB of addresses per device: with a larger
  // budget, a 65 TiB request fails in the backend, which is not an OOM.
  Allocator a = create("backend:virtual,capacity:128TiB");
  ASSERT_TRUE(a);
  EXPECT_EQ(mf_malloc(a.get(), 0, (size_t)65 * TiB, 0), nullptr);
  EXPECT_EQ(mf_last_status(), MF_ERR_BACKEND) << mf_last_error();
  EXPECT_STRNE(mf_last_error(), "");
  EXPECT_EQ(stats(a.get()).ooms, 0);
  EXPECT_EQ(oom_report(a.get()), "");
  // A bad argument is MF_ERR_INVALID; a real OOM is MF_ERR_OOM.
  EXPECT_EQ(mf_malloc(a.get(), 3, 4 * KiB, 0), nullptr);
  EXPECT_EQ(mf_last_status(), MF_ERR_INVALID);
  ASSERT_EQ(mf_set_capacity(a.get(), 0, 8 * MiB), MF_OK);
  expect_oom(a.get(), 16 * MiB);
  expect_consistent(a.get());
}

// ------------------------------------------------------------------ capacity

TEST(Oom, CapacityCanChange) {
  Allocator a = create("backend:virtual,devices:2,large_segment:2MiB,merge_segments:false");
  ASSERT_TRUE(a);
  EXPECT_EQ(mf_capacity(a.get(), 0), TiB);  // virtual: 0 means 1 TiB
  ASSERT_EQ(mf_set_capacity(a.get(), 0, 32 * MiB), MF_OK);
  EXPECT_EQ(mf_capacity(a.get(), 0), 32 * MiB);
  EXPECT_EQ(mf_capacity(a.get(), 1), TiB);  // per device
  expect_oom(a.get(), 40 * MiB, 0, 0);
  EXPECT_NE(mf_malloc(a.get(), 1, 40 * MiB, 0), nullptr);
  void *p = must_malloc(a.get(), 30 * MiB);
  expect_oom(a.get(), 4 * MiB);  // 30 + 4 > 32
  ASSERT_EQ(mf_set_capacity(a.get(), 0, 0), MF_OK);  // back to the backend's total
  EXPECT_EQ(mf_capacity(a.get(), 0), TiB);
  EXPECT_NE(mf_malloc(a.get(), 0, 40 * MiB, 0), nullptr) << mf_last_error();
  must_free(a.get(), p);
  EXPECT_EQ(mf_set_capacity(a.get(), 2, MiB), MF_ERR_INVALID);
  EXPECT_EQ(mf_set_capacity(a.get(), -1, MiB), MF_ERR_INVALID);
  EXPECT_EQ(mf_capacity(a.get(), 5), 0u);
  expect_consistent(a.get());
}

TEST(Oom, CapacityOptionCapsReservedMemory) {
  Allocator a = create("backend:virtual,capacity:100MiB,large_segment:2MiB");
  ASSERT_TRUE(a);
  EXPECT_EQ(mf_capacity(a.get(), 0), 100 * MiB);
  std::vector<void *> ptrs;
  for (int i = 0; i < 40; i++) {
    void *p = mf_malloc(a.get(), 0, 3 * MiB + (size_t)i * 100 * KiB, 0);
    if (!p) break;
    ptrs.push_back(p);
    ASSERT_LE(stats(a.get()).reserved_bytes.current, (int64_t)(100 * MiB));
  }
  EXPECT_LT(ptrs.size(), 40u);  // ran out before 40 * 3 MiB+
  EXPECT_GE(ptrs.size(), 20u);  // but only near the budget
  EXPECT_EQ(stats(a.get()).ooms, 1);
  for (void *p : ptrs) must_free(a.get(), p);
  expect_consistent(a.get());
}

// --------------------------------------------------------------- host backend

TEST(Oom, HostBackendUnderASmallCapacity) {
  Allocator a = create("backend:host,vmm:off,capacity:16MiB,large_segment:2MiB,merge_segments:false");
  ASSERT_TRUE(a);
  EXPECT_EQ(mf_capacity(a.get(), 0), 16 * MiB);
  char *p = static_cast<char *>(must_malloc(a.get(), 4 * MiB));
  char *q = static_cast<char *>(must_malloc(a.get(), 8 * MiB));
  char *s = static_cast<char *>(must_malloc(a.get(), 64 * KiB));
  ASSERT_TRUE(p && q && s);
  memset(p, 0x5A, 4 * MiB);
  memset(q, 0xA5, 8 * MiB);
  memset(s, 0x3C, 64 * KiB);
  EXPECT_EQ(p[4 * MiB - 1], 0x5A);
  EXPECT_EQ((unsigned char)q[0], 0xA5);
  expect_oom(a.get(), 8 * MiB);  // 4 + 8 + 2 + 8 > 16
  EXPECT_EQ(stats(a.get()).reserved_bytes.current, (int64_t)(14 * MiB));
  // Writes to one block leave the others alone.
  EXPECT_EQ(p[0], 0x5A);
  EXPECT_EQ(s[64 * KiB - 1], 0x3C);
  must_free(a.get(), q);
  char *r = static_cast<char *>(must_malloc(a.get(), 8 * MiB));
  ASSERT_EQ(r, q);
  memset(r, 0x11, 8 * MiB);
  must_free(a.get(), r);
  must_free(a.get(), p);
  // The cached 4 + 8 MiB go back to make room for 12 MiB.
  char *big = static_cast<char *>(must_malloc(a.get(), 12 * MiB));
  ASSERT_NE(big, nullptr);
  memset(big, 0x77, 12 * MiB);
  EXPECT_LE(stats(a.get()).reserved_bytes.current, (int64_t)(16 * MiB));
  must_free(a.get(), big);
  must_free(a.get(), s);
  ASSERT_EQ(mf_empty_cache(a.get()), MF_OK);
  EXPECT_EQ(stats(a.get()).reserved_bytes.current, 0);
  expect_consistent(a.get());
}

}  // namespace
