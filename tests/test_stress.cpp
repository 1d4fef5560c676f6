// test_stress.cpp — randomized stress of the caching core (fixed seeds, several
// configs, each with the page-mapped pools (vmm:on) and with segments (vmm:off))
// against a shadow model: mf_check after every operation, no two live blocks
// overlap, mf_block_info and the stats agree with the model, the backend's own
// count of memory equals the allocator's reserved bytes, and on the host backend
// every live block keeps the bytes written into it (a granule mapped twice, or
// memory handed out twice, would overwrite another block's).
#include <gtest/gtest.h>
#include <memfit/memfit.h>

#include "test_util.h"

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace {

using namespace memfit_test;

// memfit.h: the stats are sums over live blocks, and a freed block is no longer
// live (mf_block_info and mf_free reject it) even while record_stream events
// hold it back from reuse. Were the core to count such pending blocks until
// their events complete, set this to false: the check then only bounds the
// difference by the bytes freed behind events since the last empty_cache.
constexpr bool kDeferredFreesLeaveTheStatsAtOnce = true;

struct Rng {  // splitmix64: the same sequence on every platform
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) { return next() % n; }
  // Log-uniform in [lo, hi]: as many small sizes as large ones per octave.
  size_t log_uniform(size_t lo, size_t hi) {
    double u = (double)(next() >> 11) / 9007199254740992.0;
    double v = std::exp(std::log((double)lo) + u * (std::log((double)hi) - std::log((double)lo)));
    size_t r = (size_t)v;
    return r < lo ? lo : r > hi ? hi : r;
  }
};

struct Config {
  const char *name;
  const char *conf;
  uint64_t seed;
  int devices;
  int streams;        // streams per device: 1 means stream 0 only
  size_t max_size;    // largest request
  size_t max_live;    // live blocks kept at most
  bool oom_possible;  // a small capacity: NULL is an OOM, not a failure
  bool touch;         // host backend: write and verify the blocks' bytes
};

struct Live {
  uintptr_t ptr;
  size_t requested, size;
  mf_tag tag;
  int device;
  uintptr_t stream;
  bool recorded;  // used on another stream: its free is deferred
};

constexpr uintptr_t kStreams[3] = {0, 0x5000, 0x6000};

class Stress {
 public:
  explicit Stress(const Config &c) : c_(c), rng_{c.seed} {
    mf_allocator *a = nullptr;
    mf_status s = mf_allocator_create(c.conf, &a);
    EXPECT_EQ(s, MF_OK) << c.conf << ": " << mf_last_error();
    a_.reset(s == MF_OK ? a : nullptr);
    for (int i = 0; i < 6; i++)
      layers_.push_back(mf_layer_intern(("stress.layer." + std::to_string(i)).c_str()));
    by_addr_.resize(c.devices);
    pending_bytes_.assign(c.devices, 0);
  }

  // Runs ops operations; stops at the first broken invariant.
  void run(int ops) {
    ASSERT_TRUE(a_);
    completed_ = false;
    for (op_ = 0; op_ < ops; op_++) {
      step();
      if (testing::Test::HasFatalFailure() || testing::Test::HasNonfatalFailure()) {
        ADD_FAILURE() << c_.name << ": stopped at operation " << op_ << " (" << what_ << ")";
        return;
      }
      verify();
      if (testing::Test::HasFatalFailure() || testing::Test::HasNonfatalFailure()) {
        ADD_FAILURE() << c_.name << ": invariant broken after operation " << op_ << " (" << what_ << ")";
        return;
      }
    }
    // Everything goes back: the stats return to zero.
    while (!live_.empty()) free_at(live_.size() - 1);
    ASSERT_EQ(mf_empty_cache(a_.get()), MF_OK);
    for (int d = 0; d < c_.devices; d++) {
      mf_stats s;
      ASSERT_EQ(mf_get_stats(a_.get(), d, &s), MF_OK);
      EXPECT_EQ(s.allocated_bytes.current, 0) << c_.name << " device " << d;
      EXPECT_EQ(s.requested_bytes.current, 0) << c_.name << " device " << d;
      EXPECT_EQ(s.active_blocks.current, 0) << c_.name << " device " << d;
      EXPECT_EQ(s.reserved_bytes.current, 0) << c_.name << " device " << d;
      // Every success hit or missed (a request that ended in an OOM may count as a miss).
      EXPECT_LE(s.allocs, s.cache_hits + s.cache_misses) << c_.name << " device " << d;
      EXPECT_LE(s.cache_hits + s.cache_misses, s.allocs + s.ooms) << c_.name << " device " << d;
      allocs_ += s.allocs;
      ooms_ += s.ooms;
    }
    EXPECT_EQ(mf_check(a_.get()), MF_OK) << mf_last_error();
    completed_ = true;
  }

  bool completed() const { return completed_; }
  int64_t allocs() const { return allocs_; }
  int64_t ooms() const { return ooms_; }

 private:
  size_t gen_size() {
    uint64_t k = rng_.below(100);
    if (k < 3) return 0;
    size_t small_max = c_.max_size < MiB ? c_.max_size : MiB;
    if (k < 60 || c_.max_size <= MiB) return rng_.log_uniform(1, small_max);
    size_t mid_max = c_.max_size < 8 * MiB ? c_.max_size : 8 * MiB;
    if (k < 92 || c_.max_size <= 8 * MiB) return rng_.log_uniform(MiB + 1, mid_max);
    return rng_.log_uniform(8 * MiB, c_.max_size);
  }

  mf_tag gen_tag() {
    return mf_tag{layers_[rng_.below(layers_.size())], (uint8_t)rng_.below(MF_CAT_COUNT),
                  (uint8_t)rng_.below(MF_PHASE_COUNT)};
  }

  uintptr_t gen_stream() { return kStreams[rng_.below(c_.streams)]; }

  static unsigned char pattern(uintptr_t ptr) { return (unsigned char)((ptr >> 9) * 31 + 7); }
  // Touched bytes: one per 4 KiB page and the last, so that any page of a live
  // block that another block shares is caught.
  static constexpr size_t kTouchStride = 4096;

  void step() {
    uint64_t r = rng_.below(1000);
    if (r < 480 && live_.size() < c_.max_live) return do_malloc();
    if (r < 850) return live_.empty() ? do_malloc() : do_free();
    if (r < 900) return live_.empty() ? do_malloc() : do_retag();
    if (r < 950 && c_.streams > 1) return live_.empty() ? do_malloc() : do_record();
    if (r < 985 && c_.streams > 1) return do_complete();
    if (r < 990) return do_empty_cache();
    if (r < 995) return do_bad_free();
    return do_malloc();
  }

  void do_malloc() {
    if (live_.size() >= c_.max_live) return do_free();
    size_t size = gen_size();
    int device = (int)rng_.below(c_.devices);
    uintptr_t stream = gen_stream();
    mf_tag tag = gen_tag();
    bool use_context = rng_.below(2) == 0;
    what_ = "malloc " + std::to_string(size) + " on device " + std::to_string(device);
    mf_stats before;
    ASSERT_EQ(mf_get_stats(a_.get(), device, &before), MF_OK);
    void *p;
    if (use_context) {
      ASSERT_EQ(mf_tag_push(tag.layer, (mf_phase)tag.phase, (mf_category)tag.category), MF_OK);
      p = mf_malloc(a_.get(), device, size, stream);
      ASSERT_EQ(mf_tag_pop(), MF_OK);
    } else {
      p = mf_malloc_tagged(a_.get(), device, size, stream, tag);
    }
    mf_stats after;
    ASSERT_EQ(mf_get_stats(a_.get(), device, &after), MF_OK);
    if (!p) {
      ASSERT_TRUE(c_.oom_possible) << "unexpected NULL for " << size << " bytes: " << mf_last_error();
      EXPECT_EQ(after.ooms, before.ooms + 1);
      EXPECT_STRNE(mf_last_error(), "");
      EXPECT_LE(after.reserved_bytes.current, (int64_t)capacity(device));
      return;
    }
    EXPECT_EQ(after.allocs, before.allocs + 1);
    Live l{(uintptr_t)p, size, 0, tag, device, stream, false};
    size_t requested = 0;
    mf_tag got;
    ASSERT_EQ(mf_block_info(a_.get(), p, &got, &requested, &l.size), MF_OK) << mf_last_error();
    EXPECT_EQ(requested, size);
    EXPECT_GE(l.size, size);
    EXPECT_EQ(l.size % 512, 0u);
    EXPECT_GT(l.size, 0u);
    EXPECT_EQ(l.ptr % 512, 0u);
    EXPECT_EQ(mf_device_of(a_.get(), p), device);
    // No overlap with any live block of the device: check both neighbours.
    auto &m = by_addr_[device];
    auto next = m.lower_bound(l.ptr);
    ASSERT_TRUE(next == m.end() || next->first >= l.ptr + l.size)
        << "block 0x" << std::hex << l.ptr << "+" << l.size << " overlaps live 0x" << next->first;
    if (next != m.begin()) {
      auto prev = std::prev(next);
      ASSERT_LE(prev->first + live_[prev->second].size, l.ptr)
          << "block 0x" << std::hex << l.ptr << " overlaps live 0x" << prev->first;
    }
    if (c_.touch && size) {
      unsigned char *b = static_cast<unsigned char *>(p);
      for (size_t k = 0; k < size; k += kTouchStride) b[k] = pattern(l.ptr);
      b[size - 1] = pattern(l.ptr);
    }
    m[l.ptr] = live_.size();
    live_.push_back(l);
  }

  void free_at(size_t i) {
    Live l = live_[i];
    what_ = "free block of " + std::to_string(l.requested) + " bytes";
    if (c_.touch) check_bytes(l);
    ASSERT_EQ(mf_free(a_.get(), reinterpret_cast<void *>(l.ptr)), MF_OK) << mf_last_error();
    if (l.recorded) pending_bytes_[l.device] += (int64_t)l.requested;
    by_addr_[l.device].erase(l.ptr);
    if (i != live_.size() - 1) {
      live_[i] = live_.back();
      by_addr_[live_[i].device][live_[i].ptr] = i;
    }
    live_.pop_back();
    last_freed_ = l.ptr;
  }

  void do_free() {
    free_at(rng_.below(live_.size()));
    if (rng_.below(50) == 0) {  // a double free right away is rejected
      what_ = "double free";
      EXPECT_EQ(mf_free(a_.get(), reinterpret_cast<void *>(last_freed_)), MF_ERR_INVALID);
    }
  }

  void do_retag() {
    Live &l = live_[rng_.below(live_.size())];
    mf_tag tag = gen_tag();
    what_ = "retag";
    ASSERT_EQ(mf_retag(a_.get(), reinterpret_cast<void *>(l.ptr), tag), MF_OK) << mf_last_error();
    l.tag = tag;
  }

  void do_record() {
    Live &l = live_[rng_.below(live_.size())];
    uintptr_t other = gen_stream();
    what_ = "record_stream";
    ASSERT_EQ(mf_record_stream(a_.get(), reinterpret_cast<void *>(l.ptr), other), MF_OK) << mf_last_error();
    if (other != l.stream) l.recorded = true;
  }

  void do_complete() {
    int device = (int)rng_.below(c_.devices);
    uintptr_t stream = rng_.below(4) == 0 ? UINTPTR_MAX : gen_stream();
    what_ = "sim_complete";
    ASSERT_EQ(mf_backend_sim_complete(mf_allocator_backend(a_.get()), device, stream), MF_OK);
  }

  void do_empty_cache() {
    what_ = "empty_cache";
    ASSERT_EQ(mf_empty_cache(a_.get()), MF_OK) << mf_last_error();
    pending_bytes_.assign(c_.devices, 0);  // empty_cache waits for every event
  }

  void do_bad_free() {
    what_ = "free of a foreign pointer";
    EXPECT_EQ(mf_free(a_.get(), reinterpret_cast<void *>(0x40 + 512 * rng_.below(1000))), MF_ERR_INVALID);
  }

  void check_bytes(const Live &l) {
    if (!l.requested) return;
    const unsigned char *b = reinterpret_cast<const unsigned char *>(l.ptr);
    for (size_t k = 0; k < l.requested; k += kTouchStride)
      ASSERT_EQ(b[k], pattern(l.ptr)) << "block 0x" << std::hex << l.ptr << " overwritten at +0x" << k;
    ASSERT_EQ(b[l.requested - 1], pattern(l.ptr)) << "block 0x" << std::hex << l.ptr << " tail overwritten";
  }

  uint64_t capacity(int device) { return mf_capacity(a_.get(), device); }

  void verify() {
    ASSERT_EQ(mf_check(a_.get()), MF_OK) << mf_last_error();
    std::vector<int64_t> requested(c_.devices, 0), allocated(c_.devices, 0), blocks(c_.devices, 0);
    for (const Live &l : live_) {
      requested[l.device] += (int64_t)l.requested;
      allocated[l.device] += (int64_t)l.size;
      blocks[l.device]++;
    }
    for (int d = 0; d < c_.devices; d++) {
      mf_stats s;
      ASSERT_EQ(mf_get_stats(a_.get(), d, &s), MF_OK);
      if (kDeferredFreesLeaveTheStatsAtOnce) {
        ASSERT_EQ(s.requested_bytes.current, requested[d]) << "device " << d;
        ASSERT_EQ(s.allocated_bytes.current, allocated[d]) << "device " << d;
        ASSERT_EQ(s.active_blocks.current, blocks[d]) << "device " << d;
      } else {
        ASSERT_GE(s.requested_bytes.current, requested[d]) << "device " << d;
        ASSERT_LE(s.requested_bytes.current, requested[d] + pending_bytes_[d]) << "device " << d;
      }
      ASSERT_GE(s.reserved_bytes.current, s.allocated_bytes.current);
      ASSERT_LE(s.reserved_bytes.current, (int64_t)capacity(d));
      ASSERT_GE(s.requested_bytes.peak, s.requested_bytes.current);
      // Reserved is what the backend really holds: with vmm, every granule it
      // made is mapped, and nothing else.
      uint64_t physical = 0, mapped = 0;
      ASSERT_EQ(mf_backend_sim_usage(mf_allocator_backend(a_.get()), d, &physical, &mapped), MF_OK);
      ASSERT_EQ((int64_t)physical, s.reserved_bytes.current) << "device " << d;
      if (mf_allocator_granule(a_.get())) {
        ASSERT_EQ((int64_t)mapped, s.reserved_bytes.current) << "device " << d;
      }
    }
    // With real memory, every live block still holds its bytes (a sweep every
    // few operations and after each empty_cache).
    if (c_.touch && (op_ % 16 == 0 || what_ == "empty_cache"))
      for (const Live &l : live_) {
        check_bytes(l);
        if (testing::Test::HasFatalFailure()) return;
      }
    // Every live block as the model has it (a full sweep every few operations:
    // blocks do not change between their own operations).
    if (op_ % 8 == 0 || live_.size() < 16) {
      for (const Live &l : live_) {
        mf_tag tag;
        size_t requested_out = 0, size_out = 0;
        ASSERT_EQ(mf_block_info(a_.get(), reinterpret_cast<void *>(l.ptr), &tag, &requested_out, &size_out), MF_OK)
            << mf_last_error();
        ASSERT_EQ(requested_out, l.requested);
        ASSERT_EQ(size_out, l.size);
        ASSERT_EQ(tag.layer, l.tag.layer);
        ASSERT_EQ(tag.category, l.tag.category);
        ASSERT_EQ(tag.phase, l.tag.phase);
      }
    }
  }

  Config c_;
  Rng rng_;
  Allocator a_;
  std::vector<uint32_t> layers_;
  std::vector<Live> live_;
  std::vector<std::map<uintptr_t, size_t>> by_addr_;  // per device: ptr -> index in live_
  std::vector<int64_t> pending_bytes_;
  uintptr_t last_freed_ = 0;
  int op_ = 0;
  std::string what_;
  int64_t allocs_ = 0, ooms_ = 0;
  bool completed_ = false;
};

constexpr int kOps = 20000;

void run_config(const Config &c, bool expect_ooms) {
  auto start = std::chrono::steady_clock::now();
  Stress s(c);
  s.run(kOps);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  testing::Test::RecordProperty("seconds", std::to_string(secs));
  if (!s.completed()) return;
  EXPECT_GT(s.allocs(), kOps / 4) << c.name;
  if (expect_ooms) EXPECT_GT(s.ooms(), 0) << c.name << ": the capacity never bit";
  else EXPECT_EQ(s.ooms(), 0) << c.name;
}

// Each configuration runs twice: page-mapped pools, then segments.
void run_both(const char *test, Config c, bool expect_ooms, const char *vmm) {
  std::string conf = std::string(c.conf) + ",vmm:" + vmm;
  std::string name = std::string(c.name) + "-vmm-" + vmm;
  c.conf = conf.c_str();
  c.name = name.c_str();
  SCOPED_TRACE(test);
  run_config(c, expect_ooms);
}

#define STRESS(test, expect_ooms, ...)                                                              \
  TEST(Stress, test##Vmm) { run_both(#test, Config{__VA_ARGS__}, expect_ooms, "on"); }      \
  TEST(Stress, test##Segments) { run_both(#test, Config{__VA_ARGS__}, expect_ooms, "off"); }

STRESS(VirtualSmallBlocks, false, "virtual-small", "backend:virtual", 0x5EED0001, 1, 1, 64 * KiB, 300, false, false)
STRESS(VirtualLargeBlocksWithMaxSplitSize, false, "virtual-large", "backend:virtual,max_split_size:32MiB",
       0x5EED0002, 1, 1, 96 * MiB, 120, false, false)
STRESS(VirtualLargeSegmentsWithoutMerging, false, "virtual-20MiB",
       "backend:virtual,large_segment:20MiB,merge_segments:false", 0x5EED0003, 1, 1, 24 * MiB, 150, false, false)
STRESS(VirtualTwoDevicesTwoStreams, false, "virtual-streams", "backend:virtual,devices:2", 0x5EED0004, 2, 2,
       8 * MiB, 200, false, false)
STRESS(VirtualSmallCapacityWithStreams, true, "virtual-oom", "backend:virtual,capacity:192MiB,max_split_size:24MiB",
       0x5EED0005, 1, 3, 40 * MiB, 100, true, false)
STRESS(HostSmallCapacity, true, "host-oom", "backend:host,capacity:96MiB,merge_segments:false", 0x5EED0006, 1, 2,
       12 * MiB, 80, true, true)

// vmm only: granules smaller than most requests, so that nearly every miss
// stitches granules from several free blocks, on real memory and with streams.
TEST(Stress, HostPageGranulesWithStreams) {
  run_config({"host-4KiB", "backend:host,vmm:on,vmm_granule:4KiB,capacity:24MiB", 0x5EED0007, 1, 3, 3 * MiB, 120,
              true, true},
             true);
}

TEST(Stress, VirtualTightCapacityTwoDevices) {
  run_config({"virtual-64KiB", "backend:virtual,vmm:on,vmm_granule:64KiB,devices:2,capacity:64MiB", 0x5EED0008, 2,
              3, 16 * MiB, 150, true, false},
             true);
}

}  // namespace
