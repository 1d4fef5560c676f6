// test_vmm.cpp — the page-mapped pools (vmm): the option and the granule, a pool
// growing at its end, free granules stitched into new addresses before new
// memory, touching runs merged, empty_cache, record_stream'd blocks left alone,
// the OOM ladder, failures of the backend, and the backend calls themselves
// (a synchronize before every unmap, none in the steady state), seen through a
// recording wrapper around the virtual backend.
#include <gtest/gtest.h>
#include <memfit/memfit.h>

#include "test_util.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

namespace {

using namespace memfit_test;

constexpr size_t G = 2 * MiB;  // the virtual backend's granule, CUDA's
// large_split:0 splits every remainder, so block sizes are exact.
constexpr const char *kConf = "backend:virtual,vmm:on,large_split:0";

uintptr_t U(const void *p) { return reinterpret_cast<uintptr_t>(p); }

void *must_malloc(mf_allocator *a, size_t size, uintptr_t stream = 0) {
  void *p = mf_malloc(a, 0, size, stream);
  EXPECT_NE(p, nullptr) << "mf_malloc(" << size << ") failed: " << mf_last_error();
  return p;
}

void must_free(mf_allocator *a, void *p) { EXPECT_EQ(mf_free(a, p), MF_OK) << mf_last_error(); }

void expect_consistent(mf_allocator *a) { EXPECT_EQ(mf_check(a), MF_OK) << mf_last_error(); }

// ------------------------------------------------------- a recording backend

// Forwards to a virtual backend and records the calls in order; can fail maps.
struct Recorder {
  mf_backend base;
  mf_backend *inner;
  std::vector<std::string> calls;
  int fail_vmm_map = 0;  // the next n vmm_map calls fail
  static Recorder *of(mf_backend *b) { return reinterpret_cast<Recorder *>(b); }
};

const mf_backend_ops *inner_ops(mf_backend *b) { return Recorder::of(b)->inner->ops; }

mf_backend_ops recorder_ops() {
  mf_backend_ops o{};
  o.name = "recorder";
  o.device_count = [](mf_backend *b) { return inner_ops(b)->device_count(Recorder::of(b)->inner); };
  o.total_memory = [](mf_backend *b, int d, uint64_t *bytes) {
    return inner_ops(b)->total_memory(Recorder::of(b)->inner, d, bytes);
  };
  o.map = [](mf_backend *b, int d, size_t size, uintptr_t *addr) {
    Recorder::of(b)->calls.push_back("map");
    return inner_ops(b)->map(Recorder::of(b)->inner, d, size, addr);
  };
  o.unmap = [](mf_backend *b, int d, uintptr_t addr, size_t size) {
    Recorder::of(b)->calls.push_back("unmap");
    return inner_ops(b)->unmap(Recorder::of(b)->inner, d, addr, size);
  };
  o.event_record = [](mf_backend *b, int d, uintptr_t s, void **e) {
    return inner_ops(b)->event_record(Recorder::of(b)->inner, d, s, e);
  };
  o.event_query = [](mf_backend *b, int d, void *e, bool *c) {
    return inner_ops(b)->event_query(Recorder::of(b)->inner, d, e, c);
  };
  o.event_synchronize = [](mf_backend *b, int d, void *e) {
    return inner_ops(b)->event_synchronize(Recorder::of(b)->inner, d, e);
  };
  o.event_destroy = [](mf_backend *b, int d, void *e) { inner_ops(b)->event_destroy(Recorder::of(b)->inner, d, e); };
  o.synchronize = [](mf_backend *b, int) {
    Recorder::of(b)->calls.push_back("sync");
    return MF_OK;
  };
  o.destroy = [](mf_backend *b) {
    Recorder *r = Recorder::of(b);
    mf_backend_destroy(r->inner);
    delete r;
  };
  o.vmm_granularity = [](mf_backend *b, int d, size_t *lo, size_t *rec) {
    return inner_ops(b)->vmm_granularity(Recorder::of(b)->inner, d, lo, rec);
  };
  o.vmm_reserve = [](mf_backend *b, int d, size_t size, size_t align, uintptr_t *addr) {
    Recorder::of(b)->calls.push_back("reserve");
    return inner_ops(b)->vmm_reserve(Recorder::of(b)->inner, d, size, align, addr);
  };
  o.vmm_unreserve = [](mf_backend *b, int d, uintptr_t addr, size_t size) {
    Recorder::of(b)->calls.push_back("unreserve");
    return inner_ops(b)->vmm_unreserve(Recorder::of(b)->inner, d, addr, size);
  };
  o.vmm_create = [](mf_backend *b, int d, size_t g, size_t n, uint64_t *h) {
    Recorder::of(b)->calls.push_back("create");
    return inner_ops(b)->vmm_create(Recorder::of(b)->inner, d, g, n, h);
  };
  o.vmm_release = [](mf_backend *b, int d, size_t g, size_t n, const uint64_t *h) {
    Recorder::of(b)->calls.push_back("release");
    inner_ops(b)->vmm_release(Recorder::of(b)->inner, d, g, n, h);
  };
  o.vmm_map = [](mf_backend *b, int d, uintptr_t addr, size_t g, size_t n, const uint64_t *h) {
    Recorder *r = Recorder::of(b);
    r->calls.push_back("vmap");
    if (r->fail_vmm_map > 0) {
      r->fail_vmm_map--;
      return MF_ERR_BACKEND;
    }
    return inner_ops(b)->vmm_map(r->inner, d, addr, g, n, h);
  };
  o.vmm_unmap = [](mf_backend *b, int d, uintptr_t addr, size_t g, size_t n) {
    Recorder::of(b)->calls.push_back("vunmap");
    return inner_ops(b)->vmm_unmap(Recorder::of(b)->inner, d, addr, g, n);
  };
  return o;
}

const mf_backend_ops kRecorderOps = recorder_ops();

// An allocator over a recorder around a virtual backend of `capacity` bytes.
Allocator recorded(uint64_t capacity, Recorder **out, const char *conf = "vmm:on,large_split:0") {
  Recorder *r = new Recorder();
  r->base.ops = &kRecorderOps;
  EXPECT_EQ(mf_backend_virtual_create(1, capacity, &r->inner), MF_OK);
  mf_options *o = mf_options_new();
  EXPECT_EQ(mf_options_parse(o, conf), MF_OK) << mf_last_error();
  mf_allocator *a = nullptr;
  EXPECT_EQ(mf_allocator_create_with(&r->base, o, &a), MF_OK) << mf_last_error();
  mf_options_free(o);
  *out = r;
  return Allocator(a);
}

// ----------------------------------------------------------------- options

TEST(Vmm, GranuleFollowsTheBackendAndTheOption) {
  EXPECT_EQ(mf_allocator_granule(create("backend:virtual").get()), G);  // vmm:auto, on where it can
  EXPECT_EQ(mf_allocator_granule(create("backend:virtual,vmm:off").get()), 0u);
  EXPECT_EQ(mf_allocator_granule(create("backend:virtual,vmm_granule:64KiB").get()), 64 * KiB);
  EXPECT_EQ(mf_allocator_granule(create("backend:host").get()), (size_t)sysconf(_SC_PAGESIZE));
  mf_allocator *bad = nullptr;
  EXPECT_EQ(mf_allocator_create("backend:virtual,vmm_granule:6KiB", &bad), MF_ERR_INVALID);
  EXPECT_NE(std::string(mf_last_error()).find("vmm_granule"), std::string::npos) << mf_last_error();
  EXPECT_EQ(mf_allocator_create("backend:virtual,vmm:sometimes", &bad), MF_ERR_INVALID);
  EXPECT_NE(std::string(mf_last_error()).find("auto, on or off"), std::string::npos) << mf_last_error();
  EXPECT_EQ(bad, nullptr);
}

TEST(Vmm, ABackendWithoutPageMappingUsesSegmentsOrFailsWhenAsked) {
  for (const char *mode : {"vmm:auto", "vmm:on"}) {
    Recorder *r = new Recorder();
    static const mf_backend_ops no_pages = [] {
      mf_backend_ops o = recorder_ops();
      o.vmm_granularity = nullptr;
      return o;
    }();
    r->base.ops = &no_pages;
    ASSERT_EQ(mf_backend_virtual_create(1, 0, &r->inner), MF_OK);
    mf_options *o = mf_options_new();
    ASSERT_EQ(mf_options_parse(o, mode), MF_OK);
    mf_allocator *a = nullptr;
    mf_status st = mf_allocator_create_with(&r->base, o, &a);
    mf_options_free(o);
    Allocator owned(a);
    if (std::string(mode) == "vmm:auto") {
      ASSERT_EQ(st, MF_OK) << mf_last_error();
      EXPECT_EQ(mf_allocator_granule(a), 0u);
      void *p = must_malloc(a, 3 * MiB);
      must_free(a, p);
    } else {
      EXPECT_EQ(st, MF_ERR_INVALID);
      EXPECT_NE(std::string(mf_last_error()).find("cannot map pages"), std::string::npos) << mf_last_error();
    }
  }
}

TEST(Vmm, AutoFallsBackWithOneLineWhereTheDeviceCannotMapPages) {
  static const mf_backend_ops cannot = [] {
    mf_backend_ops o = recorder_ops();
    o.vmm_granularity = [](mf_backend *, int, size_t *, size_t *) { return MF_ERR_NO_DEVICE; };
    return o;
  }();
  for (const char *mode : {"vmm:auto", "vmm:on"}) {
    Recorder *r = new Recorder();
    r->base.ops = &cannot;
    ASSERT_EQ(mf_backend_virtual_create(1, 0, &r->inner), MF_OK);
    mf_options *o = mf_options_new();
    ASSERT_EQ(mf_options_parse(o, mode), MF_OK);
    mf_allocator *a = nullptr;
    testing::internal::CaptureStderr();
    mf_status st = mf_allocator_create_with(&r->base, o, &a);
    std::string err = testing::internal::GetCapturedStderr();
    std::string why = mf_last_error();
    mf_options_free(o);
    Allocator owned(a);
    if (std::string(mode) == "vmm:auto") {
      ASSERT_EQ(st, MF_OK) << why;
      EXPECT_EQ(mf_allocator_granule(a), 0u);
      EXPECT_NE(err.find("memfit: vmm:auto: "), std::string::npos) << err;
      EXPECT_NE(err.find("using segments (vmm:off)"), std::string::npos) << err;
      EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
      void *p = must_malloc(a, 3 * MiB);
      must_free(a, p);
    } else {
      EXPECT_EQ(st, MF_ERR_NO_DEVICE);
      EXPECT_NE(why.find("option vmm:on: backend recorder: vmm_granularity"), std::string::npos) << why;
      EXPECT_TRUE(err.empty()) << err;
    }
  }
}

// ------------------------------------------------------------------ growth

TEST(Vmm, APoolGrowsAtItsEnd) {
  Allocator a = create(kConf);
  void *p = must_malloc(a.get(), 3 * MiB);  // 2 granules, 1 MiB free at the end
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(2 * G));
  void *q = must_malloc(a.get(), 3 * MiB);  // that 1 MiB and one more granule
  EXPECT_EQ(U(q), U(p) + 3 * MiB);
  s = stats(a.get());
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(3 * G));
  EXPECT_EQ(s.segments.current, 1);
  EXPECT_EQ(s.granule_creates, 3);
  EXPECT_EQ(s.granule_unmaps, 0);
  expect_consistent(a.get());
  expect_backend_agrees(a.get());
  must_free(a.get(), p);
  must_free(a.get(), q);
}

TEST(Vmm, FreeGranulesAreStitchedBeforeNewMemory) {
  // One 10 MiB run (or segment), then A, B, C carved from it; A and C freed:
  // 8 MiB free, in two pieces around B.
  auto carve = [](mf_allocator *a, void **A, void **B, void **C) {
    must_free(a, must_malloc(a, 10 * MiB));
    *A = must_malloc(a, 4 * MiB);
    *B = must_malloc(a, 2 * MiB);
    *C = must_malloc(a, 4 * MiB);
    must_free(a, *A);
    must_free(a, *C);
  };
  Allocator a = create("backend:virtual,vmm:on,large_split:0,capacity:10MiB");
  void *A, *B, *C;
  carve(a.get(), &A, &B, &C);
  mf_stats before = stats(a.get());
  EXPECT_EQ(before.reserved_bytes.current, (int64_t)(10 * MiB));
  // 8 MiB fit: C is free at the end of the run, so A's two granules move
  // there, after it; nothing new is mapped.
  void *D = must_malloc(a.get(), 8 * MiB);
  EXPECT_EQ(U(D), U(C));
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(10 * MiB));
  EXPECT_EQ(s.reserved_bytes.peak, (int64_t)(10 * MiB));
  EXPECT_EQ(s.granule_unmaps, 2);
  EXPECT_EQ(s.granule_maps - before.granule_maps, 2);
  EXPECT_EQ(s.granule_creates, before.granule_creates);
  EXPECT_EQ(s.ooms, 0);
  expect_consistent(a.get());
  expect_backend_agrees(a.get());
  must_free(a.get(), B);
  must_free(a.get(), D);
  // The segment policy cannot: the free memory sits in B's segment.
  Allocator seg = create("backend:virtual,vmm:off,large_split:0,capacity:10MiB");
  carve(seg.get(), &A, &B, &C);
  EXPECT_EQ(mf_malloc(seg.get(), 0, 8 * MiB, 0), nullptr);
  EXPECT_EQ(mf_last_status(), MF_ERR_OOM);
  must_free(seg.get(), B);
}

TEST(Vmm, TouchingRunsMerge) {
  Allocator a = create("backend:virtual,vmm:on,large_split:0,capacity:18MiB");
  void *A = must_malloc(a.get(), 4 * MiB), *B = must_malloc(a.get(), 4 * MiB), *C = must_malloc(a.get(), 4 * MiB);
  EXPECT_EQ(stats(a.get()).segments.current, 1);
  must_free(a.get(), B);
  // 6 MiB: B's granules and one new one, after C; the run splits around B's hole.
  void *D = must_malloc(a.get(), 6 * MiB);
  EXPECT_EQ(U(D), U(C) + 4 * MiB);
  EXPECT_EQ(stats(a.get()).segments.current, 2);
  EXPECT_EQ(stats(a.get()).reserved_bytes.current, (int64_t)(14 * MiB));
  // 4 MiB: two new granules fill the hole exactly (the lowest of the equal
  // sites), and A's run, the new granules and C's run are one again.
  void *E = must_malloc(a.get(), 4 * MiB);
  EXPECT_EQ(U(E), U(A) + 4 * MiB);
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.segments.current, 1);
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(18 * MiB));
  expect_consistent(a.get());
  expect_backend_agrees(a.get());
  for (void *p : {A, C, D, E}) must_free(a.get(), p);
}

TEST(Vmm, ARequestLargerThanTheFirstRangeGetsARangeOfItsOwn) {
  Allocator a = create("backend:virtual,vmm:on,capacity:1GiB");  // the backend's own limit
  ASSERT_EQ(mf_set_capacity(a.get(), 0, 64 * MiB), MF_OK);
  void *p = must_malloc(a.get(), 16 * MiB);
  ASSERT_EQ(mf_set_capacity(a.get(), 0, 512 * MiB), MF_OK);
  void *q = must_malloc(a.get(), 200 * MiB);  // the pool's first range holds 64 MiB
  expect_consistent(a.get());
  expect_backend_agrees(a.get());
  must_free(a.get(), p);
  must_free(a.get(), q);
  ASSERT_EQ(mf_empty_cache(a.get()), MF_OK);
  EXPECT_EQ(stats(a.get()).reserved_bytes.current, 0);
}

// ---------------------------------------------------------------- the cache

TEST(Vmm, EmptyCacheReleasesEveryWholeFreeGranule) {
  Allocator a = create(kConf);
  void *p = must_malloc(a.get(), 3 * MiB);
  void *q = must_malloc(a.get(), 5 * MiB);
  void *small = must_malloc(a.get(), 4 * KiB);  // its own 2 MiB small segment
  must_free(a.get(), q);
  ASSERT_EQ(mf_empty_cache(a.get()), MF_OK);
  // p's 3 MiB keep 2 granules (1 MiB of them free); the small segment stays.
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(2 * G + 2 * MiB));
  expect_consistent(a.get());
  expect_backend_agrees(a.get());
  must_free(a.get(), p);
  must_free(a.get(), small);
  ASSERT_EQ(mf_empty_cache(a.get()), MF_OK);
  s = stats(a.get());
  EXPECT_EQ(s.reserved_bytes.current, 0);
  EXPECT_EQ(s.segments.current, 0);
  EXPECT_EQ(s.granule_creates, s.granule_releases);
  expect_consistent(a.get());
  expect_backend_agrees(a.get());
}

TEST(Vmm, WhollyFreeSmallSegmentsServeLargeRequests) {
  Allocator a = create("backend:virtual,vmm:on,large_split:0,capacity:6MiB");
  std::vector<void *> smalls;
  for (int i = 0; i < 8; i++) smalls.push_back(must_malloc(a.get(), 512 * KiB));  // two small segments
  void *big = must_malloc(a.get(), 2 * MiB);
  for (void *p : smalls) must_free(a.get(), p);
  EXPECT_EQ(stats(a.get()).reserved_bytes.current, (int64_t)(6 * MiB));
  void *bigger = must_malloc(a.get(), 4 * MiB);  // the small segments' granules
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(6 * MiB));
  EXPECT_EQ(s.ooms, 0);
  expect_consistent(a.get());
  must_free(a.get(), big);
  must_free(a.get(), bigger);
}

// ------------------------------------------------------ streams and events

TEST(Vmm, ABlockWaitingOnAnotherStreamKeepsItsGranules) {
  constexpr uintptr_t kS1 = 0x1000, kS2 = 0x2000;
  Allocator a = create("backend:virtual,vmm:on,large_split:0,capacity:8MiB");
  void *p = must_malloc(a.get(), 4 * MiB, kS1);
  void *q = must_malloc(a.get(), 4 * MiB, kS1);
  ASSERT_EQ(mf_record_stream(a.get(), p, kS2), MF_OK);
  must_free(a.get(), p);  // pending behind an event on kS2
  must_free(a.get(), q);  // free at once
  mf_stats before = stats(a.get());
  // A request on kS2 takes q's granules, never p's while its event is pending.
  void *r = must_malloc(a.get(), 4 * MiB, kS2);
  EXPECT_EQ(stats(a.get()).ladder_releases, before.ladder_releases);
  expect_consistent(a.get());
  // The next must wait for p's event: the ladder does, then p's granules move.
  void *t = must_malloc(a.get(), 4 * MiB, kS2);
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.ladder_releases, before.ladder_releases + 1);
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(8 * MiB));
  expect_consistent(a.get());
  must_free(a.get(), r);
  must_free(a.get(), t);
}

TEST(Vmm, EveryUnmapFollowsASynchronize) {
  Recorder *r = nullptr;
  Allocator a = recorded(16 * MiB, &r);
  ASSERT_TRUE(a);
  void *p = must_malloc(a.get(), 4 * MiB, 0x10);
  void *q = must_malloc(a.get(), 4 * MiB, 0x10);
  must_free(a.get(), p);
  r->calls.clear();
  void *t = must_malloc(a.get(), 10 * MiB, 0x20);  // another stream: p's granules move
  int syncs = 0;
  bool synced = false;
  for (const std::string &c : r->calls) {
    if (c == "sync") {
      syncs++;
      synced = true;
    }
    if (c == "vunmap") {
      EXPECT_TRUE(synced) << "an unmap before any synchronize";
    }
  }
  EXPECT_EQ(syncs, 1) << "one synchronize per operation";
  EXPECT_EQ(stats(a.get()).syncs, 1);
  must_free(a.get(), q);
  must_free(a.get(), t);
}

TEST(Vmm, TheSteadyStateMakesNoBackendCall) {
  Recorder *r = nullptr;
  Allocator a = recorded(1024 * MiB, &r);
  ASSERT_TRUE(a);
  const size_t sizes[] = {300 * KiB, 5 * MiB, 17 * MiB, 3 * MiB + 1, 100 * MiB};
  for (int step = 0; step < 3; step++) {
    if (step == 2) r->calls.clear();
    std::vector<void *> live;
    for (size_t s : sizes) live.push_back(must_malloc(a.get(), s));
    for (void *p : live) must_free(a.get(), p);
  }
  EXPECT_TRUE(r->calls.empty()) << r->calls.size() << " calls, the first: " << r->calls.front();
}

// ----------------------------------------------------------- OOM, failures

TEST(Vmm, AnOomReturnsNullWithAReportAndReleasesTheCache) {
  Allocator a = create("backend:virtual,vmm:on,large_split:0,capacity:16MiB");
  void *p = must_malloc(a.get(), 6 * MiB);
  void *q = must_malloc(a.get(), 6 * MiB);
  must_free(a.get(), q);
  mf_stats before = stats(a.get());
  EXPECT_EQ(mf_malloc(a.get(), 0, 12 * MiB, 0), nullptr);  // 6 + 12 > 16
  EXPECT_EQ(mf_last_status(), MF_ERR_OOM);
  char report[4096];
  ASSERT_EQ(mf_oom_report(a.get(), report, sizeof report, nullptr), MF_OK);
  EXPECT_NE(std::string(report).find("out of memory"), std::string::npos) << report;
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.ooms, before.ooms + 1);
  // The ladder released the cached 6 MiB before it gave up, as empty_cache would.
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(6 * MiB)) << "an OOM releases the cache";
  EXPECT_EQ(s.granule_unmaps, before.granule_unmaps + 3);
  EXPECT_EQ(s.ladder_releases, before.ladder_releases + 1);
  expect_consistent(a.get());
  // A request larger than the capacity fails at once and keeps what is cached.
  void *r = must_malloc(a.get(), 2 * MiB);
  must_free(a.get(), r);
  before = stats(a.get());
  EXPECT_EQ(mf_malloc(a.get(), 0, 17 * MiB, 0), nullptr);
  EXPECT_EQ(mf_last_status(), MF_ERR_OOM);
  s = stats(a.get());
  EXPECT_EQ(s.ooms, before.ooms + 1);
  EXPECT_EQ(s.reserved_bytes.current, before.reserved_bytes.current);
  EXPECT_EQ(s.ladder_releases, before.ladder_releases);
  expect_consistent(a.get());
  void *t = must_malloc(a.get(), 10 * MiB);  // what does fit still does
  expect_consistent(a.get());
  must_free(a.get(), p);
  must_free(a.get(), t);
}

TEST(Vmm, InjectedCreateFailuresAreOomsAndLeaveNoTrace) {
  Allocator a = create(kConf);
  mf_backend *b = mf_allocator_backend(a.get());
  ASSERT_EQ(mf_backend_sim_fail_maps(b, 2), MF_OK);
  EXPECT_EQ(mf_malloc(a.get(), 0, 5 * MiB, 0), nullptr);
  EXPECT_EQ(mf_last_status(), MF_ERR_OOM);
  EXPECT_EQ(mf_malloc(a.get(), 0, 5 * KiB, 0), nullptr);
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.ooms, 2);
  EXPECT_EQ(s.reserved_bytes.current, 0);
  expect_consistent(a.get());
  expect_backend_agrees(a.get());
  void *p = must_malloc(a.get(), 5 * MiB);
  expect_consistent(a.get());
  must_free(a.get(), p);
}

TEST(Vmm, AFailedMapIsABackendErrorAndGivesTheGranulesBack) {
  Recorder *r = nullptr;
  Allocator a = recorded(64 * MiB, &r);
  ASSERT_TRUE(a);
  void *p = must_malloc(a.get(), 4 * MiB);
  must_free(a.get(), p);
  void *live = must_malloc(a.get(), 1 * MiB + 512);  // keeps the first granule
  r->fail_vmm_map = 1;
  EXPECT_EQ(mf_malloc(a.get(), 0, 9 * MiB, 0), nullptr);
  EXPECT_EQ(mf_last_status(), MF_ERR_BACKEND);
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.ooms, 0) << "a backend failure is not an OOM";
  EXPECT_EQ(s.granule_creates - s.granule_releases, s.reserved_bytes.current / (int64_t)G);
  expect_consistent(a.get());
  uint64_t physical = 0, mapped = 0;
  ASSERT_EQ(mf_backend_sim_usage(r->inner, 0, &physical, &mapped), MF_OK);
  EXPECT_EQ((int64_t)physical, s.reserved_bytes.current);
  EXPECT_EQ((int64_t)mapped, s.reserved_bytes.current);
  void *q = must_malloc(a.get(), 9 * MiB);  // and the next try works
  expect_consistent(a.get());
  must_free(a.get(), q);
  must_free(a.get(), live);
}

// -------------------------------------------------------------- real memory

TEST(Vmm, HostGranulesAreRealMemoryThatMovesWithoutAliasing) {
  Allocator a = create("backend:host,vmm:on,vmm_granule:64KiB,large_split:0,capacity:8MiB");
  ASSERT_TRUE(a);
  ASSERT_EQ(mf_allocator_granule(a.get()), 64 * KiB);
  auto fill = [](void *p, size_t n, unsigned char v) { memset(p, v, n); };
  auto holds = [](const void *p, size_t n, unsigned char v) {
    const unsigned char *b = static_cast<const unsigned char *>(p);
    for (size_t i = 0; i < n; i++)
      if (b[i] != v) return false;
    return true;
  };
  void *A = must_malloc(a.get(), 3 * MiB), *B = must_malloc(a.get(), 2 * MiB), *C = must_malloc(a.get(), 3 * MiB);
  fill(A, 3 * MiB, 0xA1);
  fill(B, 2 * MiB, 0xB2);
  fill(C, 3 * MiB, 0xC3);
  must_free(a.get(), A);
  must_free(a.get(), C);
  void *D = must_malloc(a.get(), 6 * MiB);  // A's and C's pages, stitched
  ASSERT_NE(D, nullptr);
  fill(D, 6 * MiB, 0xD4);
  EXPECT_TRUE(holds(B, 2 * MiB, 0xB2)) << "the stitched pages alias a live block";
  EXPECT_TRUE(holds(D, 6 * MiB, 0xD4));
  EXPECT_EQ(stats(a.get()).reserved_bytes.peak, (int64_t)(8 * MiB));
  expect_consistent(a.get());
  expect_backend_agrees(a.get());
  must_free(a.get(), B);
  must_free(a.get(), D);
}


// ---------------------------------------------------------------- fork

// A forked child (a DataLoader worker) works on its own copy: what it writes
// into an inherited block, and the blocks it allocates and frees, never reach
// the parent's memory, though both map pages of the same memfd file.
TEST(Vmm, AForkedChildNeverWritesTheParentsMemory) {
  Allocator a = create("backend:host,vmm:on,large_split:0,capacity:32MiB");
  ASSERT_TRUE(a);
  unsigned char *kept = static_cast<unsigned char *>(must_malloc(a.get(), 3 * MiB));
  unsigned char *freed = static_cast<unsigned char *>(must_malloc(a.get(), 4 * MiB));
  memset(kept, 0x11, 3 * MiB);
  must_free(a.get(), freed);  // cached, free in both processes after the fork
  fflush(nullptr);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // In the child: overwrite the inherited block, take the free memory (the
    // parent's cache hands out the same addresses) and more, write it all.
    memset(kept, 0x22, 3 * MiB);
    unsigned char *mine = static_cast<unsigned char *>(mf_malloc(a.get(), 0, 4 * MiB, 0));
    unsigned char *more = static_cast<unsigned char *>(mf_malloc(a.get(), 0, 9 * MiB, 0));
    if (!mine || !more) _exit(2);
    memset(mine, 0x33, 4 * MiB);
    memset(more, 0x44, 9 * MiB);
    if (mf_free(a.get(), more) != MF_OK || mf_empty_cache(a.get()) != MF_OK) _exit(3);  // punches nothing of the parent's
    _exit(mf_check(a.get()) == MF_OK ? 0 : 4);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  for (size_t i = 0; i < 3 * MiB; i += 4096) ASSERT_EQ(kept[i], 0x11) << "the child's write reached the parent at +" << i;
  // The parent's cache is intact and its memory its own.
  unsigned char *again = static_cast<unsigned char *>(must_malloc(a.get(), 4 * MiB));
  memset(again, 0x55, 4 * MiB);
  EXPECT_EQ(kept[0], 0x11);
  EXPECT_EQ(kept[3 * MiB - 1], 0x11);
  expect_consistent(a.get());
  expect_backend_agrees(a.get());
  must_free(a.get(), again);
  must_free(a.get(), kept);
}

}  // namespace
