// test_threads.cpp — one allocator shared by several threads: concurrent
// malloc/free on one device and on several, each thread with its own tag
// context, frees from other threads, readers racing writers, then consistency.
#include <gtest/gtest.h>
#include <memfit/memfit.h>

#include "test_util.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace memfit_test;

constexpr int kThreads = 4;

struct Rng {
  uint64_t s;
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  uint64_t below(uint64_t n) { return next() % n; }
};

size_t gen_size(Rng &r, bool large) {
  uint64_t k = r.below(10);
  if (!large || k < 7) return 1 + r.below(256 * KiB);
  return MiB + r.below(6 * MiB);
}

struct Block {
  void *ptr;
  size_t size;
  int device;
};

unsigned char pattern(const void *p) { return (unsigned char)(((uintptr_t)p >> 9) * 13 + 1); }

// One worker: its own layer and category on its tag stack, random malloc/free
// on `device`, each new block checked through mf_block_info. Leaves `keep`
// blocks live in `kept`.
void worker(mf_allocator *a, int id, int device, int iterations, bool large, bool touch, size_t keep,
            std::vector<Block> *kept) {
  std::string name = "threads.worker." + std::to_string(id);
  uint32_t layer = mf_layer_intern(name.c_str());
  mf_category cat = (mf_category)(id % MF_CAT_COUNT);
  EXPECT_EQ(mf_tag_push(layer, MF_PHASE_FORWARD, cat), MF_OK);
  Rng rng{0x7EA0000ull + (uint64_t)id * 7919};
  std::vector<Block> live;
  auto release = [&](size_t i) {
    Block b = live[i];
    if (touch) {
      const unsigned char *c = static_cast<const unsigned char *>(b.ptr);
      EXPECT_EQ(c[0], pattern(b.ptr)) << "thread " << id << ": block head overwritten";
      EXPECT_EQ(c[b.size - 1], pattern(b.ptr)) << "thread " << id << ": block tail overwritten";
    }
    EXPECT_EQ(mf_free(a, b.ptr), MF_OK) << mf_last_error();
    live[i] = live.back();
    live.pop_back();
  };
  for (int it = 0; it < iterations; it++) {
    if (live.size() < 48 && (live.empty() || rng.below(100) < 55)) {
      size_t size = gen_size(rng, large);
      void *p = mf_malloc(a, device, size, 0);
      EXPECT_NE(p, nullptr) << "thread " << id << ": " << mf_last_error();
      if (!p) break;
      mf_tag tag;
      size_t requested = 0;
      EXPECT_EQ(mf_block_info(a, p, &tag, &requested, nullptr), MF_OK);
      EXPECT_EQ(tag.layer, layer) << "thread " << id;
      EXPECT_EQ(tag.category, (uint8_t)cat) << "thread " << id;
      EXPECT_EQ(requested, size);
      EXPECT_EQ(mf_device_of(a, p), device);
      if (touch) {
        unsigned char *c = static_cast<unsigned char *>(p);
        c[0] = c[size - 1] = pattern(p);
      }
      live.push_back({p, size, device});
    } else {
      release(rng.below(live.size()));
    }
  }
  while (live.size() > keep) release(live.size() - 1);
  if (kept) *kept = live;
  else
    while (!live.empty()) release(live.size() - 1);
  EXPECT_EQ(mf_tag_pop(), MF_OK);
  EXPECT_EQ(mf_tag_depth(), 0);
}

// Live blocks from every thread: no two overlap on one device.
void expect_disjoint(mf_allocator *a, const std::vector<std::vector<Block>> &sets) {
  std::vector<std::map<uintptr_t, size_t>> by_device(8);
  for (const auto &set : sets)
    for (const Block &b : set) {
      size_t size = 0;
      ASSERT_EQ(mf_block_info(a, b.ptr, nullptr, nullptr, &size), MF_OK);
      auto [it, fresh] = by_device[b.device].emplace((uintptr_t)b.ptr, size);
      ASSERT_TRUE(fresh) << "two threads hold " << b.ptr;
    }
  for (const auto &m : by_device) {
    uintptr_t end = 0;
    for (const auto &[ptr, size] : m) {
      EXPECT_GE(ptr, end) << "overlapping live blocks at " << std::hex << ptr;
      end = ptr + size;
    }
  }
}

void expect_all_returned(mf_allocator *a, int devices) {
  EXPECT_EQ(mf_check(a), MF_OK) << mf_last_error();
  for (int d = 0; d < devices; d++) {
    mf_stats s = stats(a, d);
    EXPECT_EQ(s.allocated_bytes.current, 0) << "device " << d;
    EXPECT_EQ(s.requested_bytes.current, 0) << "device " << d;
    EXPECT_EQ(s.active_blocks.current, 0) << "device " << d;
    EXPECT_EQ(s.allocs, s.frees) << "device " << d;
    EXPECT_GT(s.allocs, 0) << "device " << d;
  }
}

// ------------------------------------------------------------------- tests

TEST(Threads, FourThreadsOnOneDevice) {
  Allocator a = create("backend:virtual");
  ASSERT_TRUE(a);
  std::vector<std::vector<Block>> kept(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; t++)
    threads.emplace_back(worker, a.get(), 100 + t, 0, 20000, true, false, 24, &kept[t]);
  for (auto &t : threads) t.join();
  EXPECT_EQ(mf_check(a.get()), MF_OK) << mf_last_error();
  expect_disjoint(a.get(), kept);
  // Each thread's blocks carry its own tag; the per-layer stats agree.
  for (int t = 0; t < kThreads; t++) {
    uint32_t layer = mf_layer_intern(("threads.worker." + std::to_string(100 + t)).c_str());
    mf_category cat = (mf_category)((100 + t) % MF_CAT_COUNT);
    int64_t bytes = 0;
    for (const Block &b : kept[t]) {
      mf_tag tag;
      size_t size = 0;
      ASSERT_EQ(mf_block_info(a.get(), b.ptr, &tag, nullptr, &size), MF_OK);
      EXPECT_EQ(tag.layer, layer);
      bytes += (int64_t)size;
    }
    mf_tag_stats ts;
    ASSERT_EQ(mf_get_tag_stats(a.get(), 0, cat, layer, &ts), MF_OK);
    EXPECT_EQ(ts.bytes.current, bytes) << "thread " << t;
    EXPECT_EQ(ts.blocks.current, (int64_t)kept[t].size()) << "thread " << t;
  }
  // Free everything from other threads than the ones that allocated it.
  threads.clear();
  for (int t = 0; t < kThreads; t++)
    threads.emplace_back([&, t] {
      for (const Block &b : kept[(t + 1) % kThreads]) EXPECT_EQ(mf_free(a.get(), b.ptr), MF_OK) << mf_last_error();
    });
  for (auto &t : threads) t.join();
  expect_all_returned(a.get(), 1);
}

TEST(Threads, OneDevicePerThread) {
  Allocator a = create("backend:virtual,devices:4");
  ASSERT_TRUE(a);
  std::vector<std::vector<Block>> kept(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; t++)
    threads.emplace_back(worker, a.get(), 200 + t, t, 20000, true, false, 16, &kept[t]);
  for (auto &t : threads) t.join();
  EXPECT_EQ(mf_check(a.get()), MF_OK) << mf_last_error();
  expect_disjoint(a.get(), kept);
  for (int t = 0; t < kThreads; t++) {
    mf_stats s = stats(a.get(), t);
    EXPECT_EQ(s.active_blocks.current, (int64_t)kept[t].size()) << "device " << t;
    for (const Block &b : kept[t]) EXPECT_EQ(mf_device_of(a.get(), b.ptr), t);
  }
  // One thread frees every device's blocks.
  std::thread freer([&] {
    for (const auto &set : kept)
      for (const Block &b : set) EXPECT_EQ(mf_free(a.get(), b.ptr), MF_OK) << mf_last_error();
  });
  freer.join();
  expect_all_returned(a.get(), kThreads);
}

TEST(Threads, TwoThreadsPerDeviceOnTheHostBackend) {
  // Real memory: every block's first and last bytes are written and checked.
  Allocator a = create("backend:host,devices:2,capacity:1GiB");
  ASSERT_TRUE(a);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; t++)
    threads.emplace_back(worker, a.get(), 300 + t, t % 2, 10000, true, true, 0, nullptr);
  for (auto &t : threads) t.join();
  expect_all_returned(a.get(), 2);
}

TEST(Threads, ReadersRaceWriters) {
  Allocator a = create("backend:virtual,devices:2");
  ASSERT_TRUE(a);
  std::atomic<bool> done{false};
  std::atomic<int> reads{0};
  std::thread reader([&] {
    std::vector<char> buf(1 << 16);
    while (!done.load()) {
      mf_stats s;
      EXPECT_EQ(mf_get_stats(a.get(), reads % 2, &s), MF_OK);
      EXPECT_GE(s.reserved_bytes.current, s.allocated_bytes.current);
      EXPECT_EQ(mf_stats_json(a.get(), 0, buf.data(), buf.size(), nullptr), MF_OK);
      EXPECT_EQ(mf_memory_report(a.get(), 1, buf.data(), buf.size(), nullptr), MF_OK);
      EXPECT_EQ(mf_check(a.get()), MF_OK) << mf_last_error();
      reads++;
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; t++)
    threads.emplace_back(worker, a.get(), 400 + t, t % 2, 10000, true, false, 0, nullptr);
  for (auto &t : threads) t.join();
  done = true;
  reader.join();
  EXPECT_GT(reads.load(), 0);
  expect_all_returned(a.get(), 2);
}

TEST(Threads, EmptyCacheRacesWriters) {
  Allocator a = create("backend:virtual");
  ASSERT_TRUE(a);
  std::atomic<bool> done{false};
  std::thread cleaner([&] {
    while (!done.load()) EXPECT_EQ(mf_empty_cache(a.get()), MF_OK);
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; t++)
    threads.emplace_back(worker, a.get(), 500 + t, 0, 10000, true, false, 0, nullptr);
  for (auto &t : threads) t.join();
  done = true;
  cleaner.join();
  expect_all_returned(a.get(), 1);
  ASSERT_EQ(mf_empty_cache(a.get()), MF_OK);
  EXPECT_EQ(stats(a.get()).reserved_bytes.current, 0);
}

TEST(Threads, EventLogUnderThreads) {
  std::string path = testing::TempDir() + "memfit_threads_" + std::to_string(getpid()) + ".log";
  Allocator a = create("backend:virtual,devices:2");
  ASSERT_TRUE(a);
  ASSERT_EQ(mf_event_log_start(a.get(), path.c_str()), MF_OK) << mf_last_error();
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; t++)
    threads.emplace_back(worker, a.get(), 600 + t, t % 2, 3000, true, false, 0, nullptr);
  for (auto &t : threads) t.join();
  ASSERT_EQ(mf_event_log_stop(a.get()), MF_OK);
  int64_t allocs = 0, frees = 0;
  for (int d = 0; d < 2; d++) allocs += stats(a.get(), d).allocs, frees += stats(a.get(), d).frees;
  // Every event is one whole line: none lost, none interleaved.
  std::ifstream in(path);
  int64_t alloc_lines = 0, free_lines = 0;
  for (std::string l; std::getline(in, l);) {
    if (l.rfind("alloc ", 0) == 0) alloc_lines++;
    else if (l.rfind("free ", 0) == 0) free_lines++;
    else EXPECT_EQ(l.rfind("#", 0), 0u) << "malformed line: " << l;
  }
  EXPECT_EQ(alloc_lines, allocs);
  EXPECT_EQ(free_lines, frees);
  unlink(path.c_str());
  expect_all_returned(a.get(), 2);
}

TEST(Threads, InterningFromManyThreadsAgrees) {
  constexpr int kNames = 200;
  std::vector<std::vector<uint32_t>> ids(8, std::vector<uint32_t>(kNames));
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; t++)
    threads.emplace_back([&, t] {
      for (int k = 0; k < kNames; k++) {
        int n = (t % 2) ? kNames - 1 - k : (k * 7 + t) % kNames;  // different orders
        ids[t][n] = mf_layer_intern(("threads.intern." + std::to_string(n)).c_str());
      }
    });
  for (auto &t : threads) t.join();
  for (int n = 0; n < kNames; n++) {
    ASSERT_NE(ids[0][n], 0u);
    for (int t = 1; t < 8; t++) EXPECT_EQ(ids[t][n], ids[0][n]) << "name " << n;
    EXPECT_STREQ(mf_layer_name(ids[0][n]), ("threads.intern." + std::to_string(n)).c_str());
  }
  std::vector<uint32_t> sorted = ids[0];
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(std::unique(sorted.begin(), sorted.end()), sorted.end());
}

TEST(Threads, LastErrorIsPerThread) {
  Allocator a = create("backend:virtual");
  ASSERT_TRUE(a);
  EXPECT_EQ(mf_free(a.get(), reinterpret_cast<void *>(0x1234000)), MF_ERR_INVALID);
  std::string mine = mf_last_error();
  ASSERT_NE(mine, "");
  std::string other_before, other_after;
  std::thread t([&] {
    other_before = mf_last_error();
    mf_options *o = mf_options_new();
    mf_options_set(o, "no_such_key_in_thread", "1");
    other_after = mf_last_error();
    mf_options_free(o);
  });
  t.join();
  EXPECT_EQ(other_before, "");
  EXPECT_NE(other_after.find("no_such_key_in_thread"), std::string::npos);
  EXPECT_EQ(std::string(mf_last_error()), mine);
}

}  // namespace
