// test_oom.cpp — running out of memory: the OOM ladder on a capacity-limited
// virtual backend (segments, and page-mapped pools releasing their cache
// before they fail), injected map failures, the OOM and memory reports,
// capacity changes, the host backend under a small budget (real, writable
// memory), and threads running into the capacity together.
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
#include <thread>
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

// ----------------------------------------- the ladder of page-mapped pools

TEST(Oom, PageMappedLadderReleasesTheCacheBeforeFailing) {
  // 2 MiB granules, capacity 9 of them. Moving granules takes those of free
  // blocks, but not of the free blocks the chosen site's run takes in: here
  // the cheapest site is the one-granule hole between two free blocks (b and
  // d), the only free granules left are theirs, and the capacity is reached,
  // so the request failed although it fits once the cache is released (a
  // fresh allocator with the same live blocks serves it).
  Allocator a = create("backend:virtual,vmm:on,capacity:18MiB");
  ASSERT_TRUE(a);
  ASSERT_EQ(mf_allocator_granule(a.get()), 2 * MiB);
  void *pa = must_malloc(a.get(), 4 * MiB);  // granules [0,2) of one segment, live
  void *pb = must_malloc(a.get(), 2 * MiB);  // [2,3): freed below, the run's left neighbour
  void *pc = must_malloc(a.get(), 2 * MiB);  // [3,4): freed, its granule moves away: the hole
  void *pd = must_malloc(a.get(), 4 * MiB);  // [4,6): freed below, the run's right neighbour
  void *pe = must_malloc(a.get(), 4 * MiB);  // [6,8), live
  ASSERT_TRUE(pa && pb && pc && pd && pe);
  must_free(a.get(), pc);
  void *pf = must_malloc(a.get(), 3 * MiB);  // c's granule + a new one at [8,10): 1 MiB free tail
  ASSERT_NE(pf, nullptr);
  must_free(a.get(), pb);
  must_free(a.get(), pd);
  mf_stats before = stats(a.get());
  ASSERT_EQ(before.reserved_bytes.current, (int64_t)(18 * MiB));  // the capacity: nothing new
  ASSERT_EQ(before.allocated_bytes.current, (int64_t)(11 * MiB));
  ASSERT_EQ(before.ooms, 0);
  expect_consistent(a.get());

  // 4.5 MiB: no cached block is that large (b 2, d 4, the tail 1 MiB), and
  // 11 + 4.5 <= 18.
  void *pg = mf_malloc(a.get(), 0, 4 * MiB + 512 * KiB, 0);
  ASSERT_NE(pg, nullptr) << mf_last_error();
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.ooms, 0);
  EXPECT_EQ(s.ladder_releases, before.ladder_releases + 1);
  EXPECT_GT(s.granule_unmaps, before.granule_unmaps);
  EXPECT_LE(s.reserved_bytes.current, (int64_t)(18 * MiB));
  EXPECT_EQ(s.allocated_bytes.current, (int64_t)(15 * MiB + 512 * KiB));
  EXPECT_EQ(oom_report(a.get()), "");
  expect_consistent(a.get());
  expect_backend_agrees(a.get());

  // What does not fit still fails cleanly, as an error with the whole report.
  expect_oom(a.get(), 8 * MiB);  // 15.5 + 8 > 18
  std::string headline = mf_last_error();
  EXPECT_EQ(headline.rfind("memfit: out of memory on device 0: tried to allocate 8.00 MiB", 0), 0u) << headline;
  EXPECT_NE(headline.find("capacity 18.00 MiB"), std::string::npos) << headline;
  std::string r = oom_report(a.get());
  EXPECT_EQ(r.rfind(headline, 0), 0u) << r;
  EXPECT_NE(line_starting(r, "capacity").find(human(18 * MiB)), std::string::npos) << r;
  EXPECT_NE(line_starting(r, "allocated").find(human(15 * MiB + 512 * KiB)), std::string::npos) << r;
  s = stats(a.get());
  EXPECT_LE(s.reserved_bytes.current, (int64_t)(18 * MiB));
  EXPECT_EQ(s.allocated_bytes.current, (int64_t)(15 * MiB + 512 * KiB));
  expect_consistent(a.get());
  expect_backend_agrees(a.get());
  // Larger than the capacity: fails at once, and the cache stays.
  must_free(a.get(), pf);
  before = stats(a.get());
  expect_oom(a.get(), 19 * MiB);
  s = stats(a.get());
  EXPECT_EQ(s.reserved_bytes.current, before.reserved_bytes.current);
  EXPECT_EQ(s.ladder_releases, before.ladder_releases);
  for (void *p : {pa, pe, pg}) must_free(a.get(), p);
  // Everything free: the whole capacity serves one block again.
  void *all = must_malloc(a.get(), 18 * MiB);
  EXPECT_NE(all, nullptr);
  must_free(a.get(), all);
  expect_consistent(a.get());
  expect_backend_agrees(a.get());
}

TEST(Oom, PageMappedLadderRetriesABackendOomAfterReleasingTheCache) {
  // The backend itself refuses the new granule (a device full of other
  // processes' memory, here an injected failure) while memfit holds cached
  // granules: they go back and the request is tried once more.
  Allocator a = create("backend:virtual,vmm:on");
  ASSERT_TRUE(a);
  void *x = must_malloc(a.get(), 4 * MiB);  // [0,2)
  void *y = must_malloc(a.get(), 2 * MiB);  // [2,3), live
  must_free(a.get(), x);                    // 2 cached granules
  ASSERT_EQ(mf_backend_sim_fail_maps(mf_allocator_backend(a.get()), 1), MF_OK);
  mf_stats before = stats(a.get());
  void *p = mf_malloc(a.get(), 0, 6 * MiB, 0);  // x's 2 granules + 1 new: refused, then 3 new
  ASSERT_NE(p, nullptr) << mf_last_error();
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.ooms, 0);
  EXPECT_EQ(s.ladder_releases, before.ladder_releases + 1);
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(8 * MiB));
  expect_consistent(a.get());
  expect_backend_agrees(a.get());
  // Every creation refused: after the ladder, an OOM that leaves no trace.
  ASSERT_EQ(mf_backend_sim_fail_maps(mf_allocator_backend(a.get()), 1000), MF_OK);
  expect_oom(a.get(), 12 * MiB);
  s = stats(a.get());
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(8 * MiB));
  expect_consistent(a.get());
  expect_backend_agrees(a.get());
  ASSERT_EQ(mf_backend_sim_fail_maps(mf_allocator_backend(a.get()), -1), MF_OK);
  must_free(a.get(), p);
  must_free(a.get(), y);
  expect_consistent(a.get());
}

TEST(Oom, SegmentsFreedAfterAnOomGoBackSoASmallerAttemptFitsAsAFreshOne) {
  // memfit's CPU policy with segments: each segment sized to its request,
  // every remainder split. An attempt runs out of memory, frees its blocks,
  // and a smaller one follows in the same allocator (a batch-size finder).
  // Cached, the failed attempt's 20 and 30 MiB segments would be carved by
  // the 12 and 18 MiB blocks, and their remainders (8, 12 MiB) fit neither
  // 15 nor 14 MiB: 50 + 15 > 64, an OOM, where a fresh allocator maps
  // 12 + 18 + 15 + 14 = 59 MiB. Note [Draining after an OOM] releases them.
  const char *conf = "backend:virtual,vmm:off,capacity:64MiB,segment_round:64KiB,large_segment:0,large_split:0";
  const size_t smaller[] = {12 * MiB, 18 * MiB, 15 * MiB, 14 * MiB};
  auto attempt = [&](mf_allocator *a, std::vector<void *> &live) {
    for (size_t size : smaller) {
      void *p = mf_malloc(a, 0, size, 0);
      EXPECT_NE(p, nullptr) << size / MiB << " MiB: " << mf_last_error();
      if (p) live.push_back(p);
    }
  };
  {
    Allocator fresh = create(conf);
    ASSERT_TRUE(fresh);
    std::vector<void *> live;
    attempt(fresh.get(), live);
    EXPECT_EQ(stats(fresh.get()).reserved_bytes.current, (int64_t)(59 * MiB));
    for (void *p : live) must_free(fresh.get(), p);
  }
  Allocator a = create(conf);
  ASSERT_TRUE(a);
  void *x = must_malloc(a.get(), 20 * MiB);
  void *y = must_malloc(a.get(), 30 * MiB);
  expect_oom(a.get(), 25 * MiB);  // 50 + 25 > 64
  mf_stats before = stats(a.get());
  must_free(a.get(), x);
  must_free(a.get(), y);
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.reserved_bytes.current, 0) << "segments freed after an OOM go back";
  EXPECT_EQ(s.segment_unmaps, before.segment_unmaps + 2);
  expect_consistent(a.get());
  std::vector<void *> live;
  attempt(a.get(), live);
  s = stats(a.get());
  EXPECT_EQ(s.ooms, 1);
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(59 * MiB));
  // The misses that mapped memory ended the draining: freed blocks are cached again.
  must_free(a.get(), live.back());
  live.pop_back();
  EXPECT_EQ(stats(a.get()).reserved_bytes.current, (int64_t)(59 * MiB));
  live.push_back(must_malloc(a.get(), 14 * MiB));
  EXPECT_EQ(stats(a.get()).cache_hits, s.cache_hits + 1);
  for (void *p : live) must_free(a.get(), p);
  EXPECT_EQ(stats(a.get()).reserved_bytes.current, (int64_t)(59 * MiB));
  expect_consistent(a.get());
}

TEST(Oom, AfterAnOomWhatFitsAFreshAllocatorFits) {
  // A trial-based batch-size finder: a "step" at a batch allocates blocks of
  // sizes that grow with the batch; one that runs out of memory frees what it
  // made, and the finder tries a smaller batch in the same allocator. The
  // largest batch that fits must be the one that fits a fresh allocator.
  for (const char *conf : {"backend:virtual,vmm:on,capacity:64MiB", "backend:virtual,vmm:off,capacity:64MiB",
                           "backend:host,vmm:on,capacity:64MiB"}) {
    SCOPED_TRACE(conf);
    auto step = [](mf_allocator *a, int batch) {
      std::vector<void *> live;
      bool ok = true;
      // Layers whose activations scale with the batch, and per-step temporaries.
      for (int layer = 0; layer < 6 && ok; layer++) {
        void *act = mf_malloc(a, 0, (size_t)batch * (48 + 16 * layer) * KiB + 3 * KiB, 0);
        void *tmp = act ? mf_malloc(a, 0, (size_t)batch * 40 * KiB + 7 * KiB, 0) : nullptr;
        if (tmp) mf_free(a, tmp);
        ok = act && tmp;
        if (act) live.push_back(act);
      }
      for (void *p : live) mf_free(a, p);
      return ok;
    };
    auto largest = [&](mf_allocator *a, int from) {
      for (int batch = from; batch > 0; batch = batch * 9 / 10)  // Accelerate's 0.9 steps
        if (step(a, batch)) return batch;
      return 0;
    };
    Allocator reused = create(conf);
    ASSERT_TRUE(reused);
    void *params = must_malloc(reused.get(), 5 * MiB + 123 * KiB);  // lives through every trial
    int found = largest(reused.get(), 400);
    EXPECT_GT(stats(reused.get()).ooms, 0);
    expect_consistent(reused.get());
    ASSERT_GT(found, 0);
    // The same batch and the next larger one in the 0.9 sequence, each in a fresh allocator.
    int larger = found;
    for (int batch = 400; batch > found; batch = batch * 9 / 10) larger = batch;
    for (int batch : {found, larger}) {
      Allocator fresh = create(conf);
      ASSERT_TRUE(fresh);
      void *fp = must_malloc(fresh.get(), 5 * MiB + 123 * KiB);
      EXPECT_EQ(step(fresh.get(), batch), batch == found) << "batch " << batch << " (found " << found << ")";
      must_free(fresh.get(), fp);
    }
    must_free(reused.get(), params);
  }
}

TEST(Oom, ThreadsRunningIntoTheCapacityKeepTheAllocatorConsistent) {
  for (const char *conf : {"backend:virtual,vmm:on,capacity:48MiB", "backend:virtual,vmm:off,capacity:48MiB"}) {
    SCOPED_TRACE(conf);
    Allocator a = create(conf);
    ASSERT_TRUE(a);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; t++)
      threads.emplace_back([&a, t] {
        uint32_t x = 2463534242u + (uint32_t)t;
        std::vector<void *> live;
        for (int i = 0; i < 1500; i++) {
          x ^= x << 13, x ^= x >> 17, x ^= x << 5;
          if (x % 3 != 0 || live.empty()) {
            void *p = mf_malloc(a.get(), 0, 1 + x % (6 * MiB), 0);
            if (p) live.push_back(p);
            else if (mf_last_status() != MF_ERR_OOM) ADD_FAILURE() << mf_last_error();
            else {  // like a finder after an OOM: drop everything, go on
              for (void *q : live) mf_free(a.get(), q);
              live.clear();
            }
          } else {
            mf_free(a.get(), live[x % live.size()]);
            live.erase(live.begin() + (long)(x % live.size()));
          }
        }
        for (void *q : live) mf_free(a.get(), q);
      });
    for (std::thread &t : threads) t.join();
    mf_stats s = stats(a.get());
    EXPECT_GT(s.ooms, 0);
    EXPECT_EQ(s.allocated_bytes.current, 0);
    EXPECT_LE(s.reserved_bytes.peak, (int64_t)(48 * MiB));
    expect_consistent(a.get());
    ASSERT_EQ(mf_empty_cache(a.get()), MF_OK);
    EXPECT_EQ(stats(a.get()).reserved_bytes.current, 0);
  }
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
  // After an OOM a segment that becomes wholly free goes back at once (Note
  // [Draining after an OOM]): p's does, so its size needs a map again.
  must_free(a.get(), p);
  EXPECT_EQ(stats(a.get()).reserved_bytes.current, 0);
  expect_consistent(a.get());
  expect_oom(a.get(), 8 * MiB, kS2);
  // Back to normal: a miss maps memory, which ends the draining, and requests
  // served from the cache need no map.
  ASSERT_EQ(mf_backend_sim_fail_maps(b, -1), MF_OK);
  void *q = must_malloc(a.get(), 4 * MiB, kS1);
  EXPECT_NE(q, nullptr);
  void *r = must_malloc(a.get(), 8 * MiB, kS2);
  must_free(a.get(), r);
  EXPECT_EQ(stats(a.get()).reserved_bytes.current, (int64_t)(12 * MiB));
  ASSERT_EQ(mf_backend_sim_fail_maps(b, 1000), MF_OK);
  EXPECT_EQ(mf_malloc(a.get(), 0, 8 * MiB, kS2), r);
  ASSERT_EQ(mf_backend_sim_fail_maps(b, -1), MF_OK);
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.ooms, 3);
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
  // After the OOM q's segment goes back as soon as it is free (Note [Draining
  // after an OOM]); the next 8 MiB maps again, which ends the draining.
  must_free(a.get(), q);
  EXPECT_EQ(stats(a.get()).reserved_bytes.current, (int64_t)(6 * MiB));
  char *r = static_cast<char *>(must_malloc(a.get(), 8 * MiB));
  ASSERT_NE(r, nullptr);
  memset(r, 0x11, 8 * MiB);
  must_free(a.get(), r);
  EXPECT_EQ(stats(a.get()).reserved_bytes.current, (int64_t)(14 * MiB));  // cached again
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
