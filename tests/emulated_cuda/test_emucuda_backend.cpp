// test_emucuda_backend.cpp — memfit's cuda backend and an allocator over it,
// run on the emulated driver: contexts left as found, the driver's OOM and
// other errors mapped to memfit's statuses, page-mapped pools (stitching,
// data that moves with its pages, a synchronize before every unmap, no driver
// call in the steady state, empty_cache giving every granule back), segments
// over cuMemAlloc, record_stream on a held stream, stream capture, and no
// driver object left after destroy. Public API only (memfit/memfit.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "emu_test_util.h"

namespace {

using namespace emutest;

// The cuda backend over the emulator, destroyed with the scope.
struct Backend {
  mf_backend *b = nullptr;
  Backend() {
    mf_status st = mf_backend_cuda_create(&b);
    EXPECT_EQ(st, MF_OK) << mf_last_error();
  }
  ~Backend() {
    if (b) mf_backend_destroy(b);
  }
  const mf_backend_ops *operator->() const { return b->ops; }
  Backend(const Backend &) = delete;
  Backend &operator=(const Backend &) = delete;
};

std::string last_error() { return mf_last_error(); }

bool contains(const std::string &s, const std::string &what) { return s.find(what) != std::string::npos; }

TEST(EmuBackend, DeviceCountAndTotalMemoryAreTheDrivers) {
  REQUIRE_EMU();
  Live before = Live::now();
  {
    Backend be;
    ASSERT_NE(be.b, nullptr);
    EXPECT_STREQ(be->name, "cuda");
    EXPECT_EQ(be->device_count(be.b), 1);
    uint64_t total = 0;
    ASSERT_EQ(be->total_memory(be.b, 0, &total), MF_OK) << last_error();
    EXPECT_EQ(total, 1 * GiB);
    EXPECT_EQ(be->total_memory(be.b, 1, &total), MF_ERR_INVALID);
    size_t lo = 0, rec = 0;
    ASSERT_NE(be->vmm_granularity, nullptr);
    ASSERT_EQ(be->vmm_granularity(be.b, 0, &lo, &rec), MF_OK) << last_error();
    EXPECT_EQ(lo, G);
    EXPECT_EQ(rec, G);
    uintptr_t addr = 0;
    ASSERT_EQ(be->map(be.b, 0, 1 * MiB, &addr), MF_OK) << last_error();
    EXPECT_EQ(emu().primary_refcount(0), before.refcount0 + 1) << "the backend holds one reference";
    ASSERT_EQ(be->unmap(be.b, 0, addr, 1 * MiB), MF_OK) << last_error();
  }
  expect_same(before, Live::now());
}

// Every operation runs in the device's primary context and leaves the
// thread's context stack as it was: empty, another context of its own, or
// the primary one already (then nothing is pushed).
TEST(EmuBackend, OperationsLeaveTheThreadsContextAsTheyFoundIt) {
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  Primary primary;
  CUstream s = make_stream(primary.ctx);
  Live before = Live::now();
  {
    Backend be;
    ASSERT_NE(be.b, nullptr);
    auto exercise = [&](CUcontext expect_current) {
      uintptr_t addr = 0, va = 0;
      ASSERT_EQ(be->map(be.b, 0, 2 * MiB, &addr), MF_OK) << last_error();
      EXPECT_EQ(current_context(), expect_current) << "map";
      void *ev = nullptr;
      ASSERT_EQ(be->event_record(be.b, 0, S(s), &ev), MF_OK) << last_error();
      EXPECT_EQ(current_context(), expect_current) << "event_record";
      ASSERT_EQ(be->event_synchronize(be.b, 0, ev), MF_OK) << last_error();
      bool done = false;
      ASSERT_EQ(be->event_query(be.b, 0, ev, &done), MF_OK) << last_error();
      EXPECT_TRUE(done);
      be->event_destroy(be.b, 0, ev);
      ASSERT_EQ(be->synchronize(be.b, 0), MF_OK) << last_error();
      uint64_t handle = 0;
      ASSERT_EQ(be->vmm_reserve(be.b, 0, 4 * G, G, &va), MF_OK) << last_error();
      ASSERT_EQ(be->vmm_create(be.b, 0, G, 1, &handle), MF_OK) << last_error();
      ASSERT_EQ(be->vmm_map(be.b, 0, va, G, 1, &handle), MF_OK) << last_error();
      std::memset(reinterpret_cast<void *>(va), 0x3c, G);  // read-write after vmm_map
      ASSERT_EQ(be->vmm_unmap(be.b, 0, va, G, 1), MF_OK) << last_error();
      be->vmm_release(be.b, 0, G, 1, &handle);
      ASSERT_EQ(be->vmm_unreserve(be.b, 0, va, 4 * G), MF_OK) << last_error();
      EXPECT_EQ(current_context(), expect_current) << "vmm";
      ASSERT_EQ(be->unmap(be.b, 0, addr, 2 * MiB), MF_OK) << last_error();
      EXPECT_EQ(current_context(), expect_current) << "unmap";
    };
    // A fresh thread: nothing current.
    std::thread([&] {
      ASSERT_EQ(current_context(), nullptr);
      exercise(nullptr);
    }).join();
    // A context of the caller's own: the primary one is pushed over it.
    CUcontext own = nullptr;
    ASSERT_EQ(e.CtxCreate(&own, 0, 0), CUDA_SUCCESS);
    e.reset();
    exercise(own);
    EXPECT_GT(e.calls("cuCtxPushCurrent"), 0u);
    EXPECT_EQ(e.calls("cuCtxPushCurrent"), e.calls("cuCtxPopCurrent"));
    ASSERT_EQ(e.CtxDestroy(own), CUDA_SUCCESS);
    // The primary context current (PyTorch's case): nothing pushed.
    {
      Current cur(primary.ctx);
      e.reset();
      exercise(primary.ctx);
      EXPECT_EQ(e.calls("cuCtxPushCurrent"), 0u) << "pushed the context that was already current";
    }
  }
  expect_same(before, Live::now());
  EXPECT_EQ(e.StreamDestroy(s), CUDA_SUCCESS);
}

TEST(EmuBackend, DriverOomIsOomWithTheDriversFreeAndTotal) {
  REQUIRE_EMU();
  Live before = Live::now();
  {
    Backend be;
    ASSERT_NE(be.b, nullptr);
    uintptr_t addr = 0;
    EXPECT_EQ(be->map(be.b, 0, 2 * GiB, &addr), MF_ERR_OOM);
    std::string err = last_error();
    EXPECT_TRUE(contains(err, "cuMemAlloc")) << err;
    EXPECT_TRUE(contains(err, "out of memory")) << err;
    EXPECT_TRUE(contains(err, "free of 1.00 GiB")) << "no driver free/total in: " << err;
    uint64_t handles[4] = {0, 0, 0, 0};
    // Granules: the ones made before the driver ran out are given back.
    size_t rest = 1 * GiB - emu().bytes_in_use(0) - 3 * G;  // room for 3 granules
    ASSERT_EQ(be->map(be.b, 0, rest, &addr), MF_OK) << last_error();
    EXPECT_EQ(be->vmm_create(be.b, 0, G, 4, handles), MF_ERR_OOM);
    EXPECT_TRUE(contains(last_error(), "cuMemCreate")) << last_error();
    EXPECT_EQ(emu().live("handles"), before.handles) << "the granules made before the OOM were kept";
    ASSERT_EQ(be->unmap(be.b, 0, addr, rest), MF_OK);
  }
  // Through an allocator whose capacity is beyond the device: the driver's
  // OOM is the allocator's OOM, for segments and for pages.
  for (const char *conf : {"backend:cuda,vmm:off,capacity:4GiB", "backend:cuda,vmm:on,capacity:4GiB"}) {
    SCOPED_TRACE(conf);
    Allocator a = create(conf);
    ASSERT_TRUE(a);
    void *small = mf_malloc(a.get(), 0, 1 * MiB, 0);
    ASSERT_NE(small, nullptr) << last_error();
    EXPECT_EQ(mf_malloc(a.get(), 0, static_cast<size_t>(1.5 * GiB), 0), nullptr);
    EXPECT_EQ(mf_last_status(), MF_ERR_OOM) << last_error();
    EXPECT_EQ(stats(a.get()).ooms, 1);
    EXPECT_EQ(mf_check(a.get()), MF_OK) << last_error();
    void *after = mf_malloc(a.get(), 0, 64 * MiB, 0);
    EXPECT_NE(after, nullptr) << "unusable after a driver OOM: " << last_error();
    EXPECT_EQ(mf_free(a.get(), after), MF_OK);
    EXPECT_EQ(mf_free(a.get(), small), MF_OK);
  }
  expect_same(before, Live::now());
}

TEST(EmuBackend, AnotherDriverErrorIsABackendErrorNamingTheCall) {
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  Live before = Live::now();
  {
    Backend be;
    ASSERT_NE(be.b, nullptr);
    uintptr_t addr = 0;
    ASSERT_EQ(e.fail_next("cuMemAlloc", CUDA_ERROR_ILLEGAL_ADDRESS), CUDA_SUCCESS);
    EXPECT_EQ(be->map(be.b, 0, 1 * MiB, &addr), MF_ERR_BACKEND);
    std::string err = last_error();
    EXPECT_TRUE(contains(err, "cuMemAlloc on device 0 failed: CUDA_ERROR_ILLEGAL_ADDRESS (")) << err;
    // A granule creation that fails part way: the ones made are released.
    uint64_t handles[5] = {0, 0, 0, 0, 0};
    ASSERT_EQ(e.fail_after("cuMemCreate", 2, CUDA_ERROR_UNKNOWN), CUDA_SUCCESS);
    EXPECT_EQ(be->vmm_create(be.b, 0, G, 5, handles), MF_ERR_BACKEND);
    EXPECT_TRUE(contains(last_error(), "cuMemCreate")) << last_error();
    EXPECT_TRUE(contains(last_error(), "CUDA_ERROR_UNKNOWN")) << last_error();
    EXPECT_EQ(e.live("handles"), before.handles);
    EXPECT_EQ(e.bytes_in_use(0), before.bytes0);
    // A failed map gives back what it mapped.
    uintptr_t va = 0;
    ASSERT_EQ(be->vmm_reserve(be.b, 0, 4 * G, G, &va), MF_OK);
    ASSERT_EQ(be->vmm_create(be.b, 0, G, 3, handles), MF_OK);
    ASSERT_EQ(e.fail_after("cuMemMap", 1, CUDA_ERROR_INVALID_VALUE), CUDA_SUCCESS);
    EXPECT_EQ(be->vmm_map(be.b, 0, va, G, 3, handles), MF_ERR_BACKEND);
    EXPECT_TRUE(contains(last_error(), "cuMemMap")) << last_error();
    EXPECT_EQ(e.live("mappings"), before.mappings) << "a failed vmm_map left a mapping";
    ASSERT_EQ(e.fail_next("cuMemSetAccess", CUDA_ERROR_UNKNOWN), CUDA_SUCCESS);
    EXPECT_EQ(be->vmm_map(be.b, 0, va, G, 3, handles), MF_ERR_BACKEND);
    EXPECT_TRUE(contains(last_error(), "cuMemSetAccess")) << last_error();
    EXPECT_EQ(e.live("mappings"), before.mappings) << "a failed cuMemSetAccess left its mappings";
    be->vmm_release(be.b, 0, G, 3, handles);
    ASSERT_EQ(be->vmm_unreserve(be.b, 0, va, 4 * G), MF_OK);
  }
  // Through the allocator: NULL, MF_ERR_BACKEND (not an OOM), usable after.
  Allocator a = create("backend:cuda,vmm:off");
  ASSERT_TRUE(a);
  ASSERT_EQ(e.fail_next("cuMemAlloc", CUDA_ERROR_ILLEGAL_ADDRESS), CUDA_SUCCESS);
  EXPECT_EQ(mf_malloc(a.get(), 0, 4 * MiB, 0), nullptr);
  EXPECT_EQ(mf_last_status(), MF_ERR_BACKEND);
  EXPECT_TRUE(contains(last_error(), "cuMemAlloc")) << last_error();
  EXPECT_EQ(stats(a.get()).ooms, 0) << "a driver failure counted as an OOM";
  void *p = mf_malloc(a.get(), 0, 4 * MiB, 0);
  EXPECT_NE(p, nullptr) << last_error();
  EXPECT_EQ(mf_free(a.get(), p), MF_OK);
  a.reset();
  expect_same(before, Live::now());
}

// ------------------------------------------------------------- allocator

// Free granules move to where a request needs them, and what they hold moves
// with them; a live block between them is not touched.
TEST(EmuAllocator, PagesStitchAndTheirDataMovesWithThem) {
  REQUIRE_EMU();
  Live before = Live::now();
  {
    Allocator a = create("backend:cuda,vmm:on,large_split:0,capacity:10MiB");
    ASSERT_TRUE(a);
    ASSERT_EQ(mf_allocator_granule(a.get()), G);
    ASSERT_EQ(mf_free(a.get(), mf_malloc(a.get(), 0, 10 * MiB, 0)), MF_OK);  // one run of 5 granules
    auto *A = static_cast<unsigned char *>(mf_malloc(a.get(), 0, 4 * MiB, 0));
    auto *B = static_cast<unsigned char *>(mf_malloc(a.get(), 0, 2 * MiB, 0));
    auto *C = static_cast<unsigned char *>(mf_malloc(a.get(), 0, 4 * MiB, 0));
    ASSERT_TRUE(A && B && C) << last_error();
    std::memset(A, 0xA1, 4 * MiB);
    std::memset(B, 0xB2, 2 * MiB);
    std::memset(C, 0xC3, 4 * MiB);
    ASSERT_EQ(mf_free(a.get(), A), MF_OK);
    ASSERT_EQ(mf_free(a.get(), C), MF_OK);
    mf_stats s0 = stats(a.get());
    // 8 MiB at C: C's granules in place, then A's two, moved.
    auto *D = static_cast<unsigned char *>(mf_malloc(a.get(), 0, 8 * MiB, 0));
    ASSERT_NE(D, nullptr) << last_error();
    EXPECT_EQ(D, C);
    mf_stats s1 = stats(a.get());
    EXPECT_EQ(s1.granule_unmaps - s0.granule_unmaps, 2);
    EXPECT_EQ(s1.granule_creates, s0.granule_creates) << "new memory instead of the free granules";
    EXPECT_EQ(s1.reserved_bytes.current, (int64_t)(10 * MiB));
    EXPECT_TRUE(holds(B, 2 * MiB, 0xB2)) << "the live block between them changed";
    EXPECT_TRUE(holds(D, 4 * MiB, 0xC3)) << "C's granules lost their data in place";
    EXPECT_TRUE(holds(D + 4 * MiB, 4 * MiB, 0xA1)) << "A's granules did not carry their data to the new address";
    std::memset(D, 0xD4, 8 * MiB);
    EXPECT_TRUE(holds(B, 2 * MiB, 0xB2)) << "the stitched pages alias a live block";
    // The driver holds exactly what the allocator reserved, all mapped.
    EXPECT_EQ(emu().bytes_in_use(0) - before.bytes0, (unsigned long long)s1.reserved_bytes.current);
    EXPECT_EQ(emu().live("mappings") - before.mappings, 5u);
    EXPECT_EQ(emu().unsafe_unmaps(), 0u);
    EXPECT_EQ(emu().illegal_accesses(), 0u);
    EXPECT_EQ(mf_check(a.get()), MF_OK) << last_error();
    EXPECT_EQ(mf_free(a.get(), B), MF_OK);
    EXPECT_EQ(mf_free(a.get(), D), MF_OK);
  }
  expect_same(before, Live::now());
}

TEST(EmuAllocator, EveryUnmapComesAfterACtxSynchronize) {
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  Primary primary;
  CUstream s1 = make_stream(primary.ctx), s2 = make_stream(primary.ctx);
  {
    Allocator a = create("backend:cuda,vmm:on,large_split:0,capacity:16MiB");
    ASSERT_TRUE(a);
    void *p = mf_malloc(a.get(), 0, 4 * MiB, S(s1));
    void *q = mf_malloc(a.get(), 0, 4 * MiB, S(s1));
    ASSERT_TRUE(p && q) << last_error();
    ASSERT_EQ(mf_free(a.get(), p), MF_OK);
    e.trace_start();
    void *t = mf_malloc(a.get(), 0, 10 * MiB, S(s2));  // another stream's pool: p's granules move
    e.trace_stop();
    ASSERT_NE(t, nullptr) << last_error();
    std::vector<std::string> calls = e.trace();
    int syncs = 0, unmaps = 0;
    bool synced = false;
    for (const std::string &c : calls) {
      if (c == "cuCtxSynchronize") {
        syncs++;
        synced = true;
      } else if (c == "cuMemUnmap") {
        unmaps++;
        EXPECT_TRUE(synced) << "a cuMemUnmap before any cuCtxSynchronize";
      } else if (c == "cuLaunchHostFunc" || c == "cuEventRecord" || c == "cuMemsetD8_v2") {
        synced = false;  // new work: the next unmap needs a new synchronize
      }
    }
    EXPECT_EQ(unmaps, 2) << "p's two granules";
    EXPECT_EQ(syncs, 1) << "one synchronize for the operation";
    EXPECT_EQ(stats(a.get()).syncs, 1);
    EXPECT_EQ(e.unsafe_unmaps(), 0u);
    EXPECT_EQ(mf_free(a.get(), q), MF_OK);
    EXPECT_EQ(mf_free(a.get(), t), MF_OK);
    // destroy: synchronize, then unmap everything
    e.trace_start();
  }
  e.trace_stop();
  std::vector<std::string> calls = e.trace();
  auto first_unmap = std::find(calls.begin(), calls.end(), "cuMemUnmap");
  ASSERT_NE(first_unmap, calls.end()) << "destroy unmapped nothing";
  EXPECT_NE(std::find(calls.begin(), first_unmap, "cuCtxSynchronize"), first_unmap)
      << "destroy unmapped before synchronizing";
  EXPECT_EQ(e.StreamDestroy(s1), CUDA_SUCCESS);
  EXPECT_EQ(e.StreamDestroy(s2), CUDA_SUCCESS);
}

// Cache hits: no call that touches memory, synchronizes or records.
TEST(EmuAllocator, SteadyStateHitsMakeNoMemoryOrSynchronizingCall) {
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  for (const char *conf : {"backend:cuda,vmm:on", "backend:cuda,vmm:off"}) {
    SCOPED_TRACE(conf);
    Allocator a = create(conf);
    ASSERT_TRUE(a);
    const size_t sizes[] = {300 * KiB, 5 * MiB, 17 * MiB, 3 * MiB + 1, 100 * MiB};
    std::vector<std::string> calls;
    for (int step = 0; step < 3; step++) {
      if (step == 2) e.trace_start();
      std::vector<void *> live;
      for (size_t s : sizes) live.push_back(mf_malloc(a.get(), 0, s, 0));
      for (void *p : live) EXPECT_EQ(mf_free(a.get(), p), MF_OK) << last_error();
    }
    e.trace_stop();
    for (const std::string &c : e.trace())
      EXPECT_TRUE(c.rfind("cuMem", 0) != 0 && c.rfind("cuEvent", 0) != 0 && c.find("Synchronize") == std::string::npos)
          << "steady state called " << c;
  }
}

// The stricter bar: a cache hit makes no driver call at all.
// In the steady state each allocation makes exactly one driver call, the
// CUDA graph capture check (cuStreamIsCapturing), with the device's context
// current as PyTorch has it; frees make none.
TEST(EmuAllocator, SteadyStateHitsMakeOnlyTheCaptureCheck) {
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  Primary primary(0);
  Current current(primary.ctx);
  Allocator a = create("backend:cuda,vmm:on");
  ASSERT_TRUE(a);
  const size_t sizes[] = {300 * KiB, 5 * MiB, 17 * MiB, 3 * MiB + 1, 100 * MiB};
  for (int step = 0; step < 3; step++) {
    if (step == 2) e.trace_start();
    std::vector<void *> live;
    for (size_t s : sizes) live.push_back(mf_malloc(a.get(), 0, s, 0));
    for (void *p : live) EXPECT_EQ(mf_free(a.get(), p), MF_OK) << last_error();
  }
  e.trace_stop();
  std::vector<std::string> calls = e.trace();
  std::string names;
  size_t other = 0;
  for (const std::string &c : calls)
    if (c != "cuStreamIsCapturing") {
      other++;
      if (other <= 6) names += " " + c;
    }
  EXPECT_EQ(other, 0u) << other << " driver calls beside the capture checks for 5 cache hits and 5 frees:" << names;
  EXPECT_EQ(calls.size(), sizeof sizes / sizeof sizes[0]) << "one capture check per allocation";
}

TEST(EmuAllocator, EmptyCacheGivesEveryGranuleBack) {
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  Live before = Live::now();
  Allocator a = create("backend:cuda,vmm:on,large_split:0");
  ASSERT_TRUE(a);
  std::vector<void *> live;
  for (size_t s : {4 * KiB, 700 * KiB, 3 * MiB, 5 * MiB, 64 * MiB + 5}) live.push_back(mf_malloc(a.get(), 0, s, 0));
  for (void *p : live) ASSERT_NE(p, nullptr) << last_error();
  mf_stats s = stats(a.get());
  EXPECT_EQ(e.bytes_in_use(0) - before.bytes0, (unsigned long long)s.reserved_bytes.current);
  EXPECT_EQ((e.live("mappings") - before.mappings) * G, (unsigned long long)s.reserved_bytes.current)
      << "one mapping per granule";
  // Only free memory goes: with a block live, its granules stay.
  ASSERT_EQ(mf_free(a.get(), live[3]), MF_OK);
  ASSERT_EQ(mf_empty_cache(a.get()), MF_OK) << last_error();
  s = stats(a.get());
  EXPECT_GT(s.reserved_bytes.current, 0);
  EXPECT_EQ(e.bytes_in_use(0) - before.bytes0, (unsigned long long)s.reserved_bytes.current);
  for (size_t i = 0; i < live.size(); i++)
    if (i != 3) {
      ASSERT_EQ(mf_free(a.get(), live[i]), MF_OK);
    }
  ASSERT_EQ(mf_empty_cache(a.get()), MF_OK) << last_error();
  s = stats(a.get());
  EXPECT_EQ(s.reserved_bytes.current, 0);
  EXPECT_EQ(s.granule_creates, s.granule_releases);
  EXPECT_EQ(e.bytes_in_use(0), before.bytes0) << "granules kept after empty_cache";
  EXPECT_EQ(e.live("mappings"), before.mappings);
  EXPECT_EQ(e.live("handles"), before.handles);
  EXPECT_EQ(e.live("reservations"), before.reservations) << "empty ranges kept after empty_cache";
  EXPECT_EQ(e.unsafe_unmaps(), 0u);
  EXPECT_EQ(mf_check(a.get()), MF_OK) << last_error();
}

// Segments: each one cuMemAlloc, which the driver counts as the allocator does.
TEST(EmuAllocator, SegmentsAreCuMemAllocsTheDriverAgreesWith) {
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  Live before = Live::now();
  {
    Allocator a = create("backend:cuda,vmm:off");
    ASSERT_TRUE(a);
    EXPECT_EQ(mf_allocator_granule(a.get()), 0u);
    e.reset();
    std::vector<void *> live;
    for (size_t s : {4 * KiB, 700 * KiB, 3 * MiB, 5 * MiB, 64 * MiB + 5}) live.push_back(mf_malloc(a.get(), 0, s, 0));
    mf_stats s = stats(a.get());
    EXPECT_EQ(e.live("allocations") - before.allocations, (unsigned long long)s.segments.current);
    EXPECT_EQ(e.bytes_in_use(0) - before.bytes0, (unsigned long long)s.reserved_bytes.current);
    EXPECT_EQ(e.calls("cuMemCreate"), 0u);
    std::memset(live[4], 0x42, 64 * MiB + 5);
    for (void *p : live) ASSERT_EQ(mf_free(a.get(), p), MF_OK);
    ASSERT_EQ(mf_empty_cache(a.get()), MF_OK);
    EXPECT_EQ(e.calls("cuMemFree"), (unsigned long long)stats(a.get()).segment_unmaps);
    EXPECT_EQ(e.live("allocations"), before.allocations);
  }
  expect_same(before, Live::now());
}

// A block used on a held stream is not reused before that stream gets past
// the free, and nothing waits for it meanwhile.
TEST(EmuAllocator, RecordStreamOnAHeldStreamDefersReuse) {
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  Primary primary;
  CUstream s1 = make_stream(primary.ctx), s2 = make_stream(primary.ctx);
  for (const char *conf : {"backend:cuda,vmm:on", "backend:cuda,vmm:off"}) {
    SCOPED_TRACE(conf);
    Live before = Live::now();
    {
      Allocator a = create(conf);
      ASSERT_TRUE(a);
      void *p = mf_malloc(a.get(), 0, 4 * MiB, S(s1));
      ASSERT_NE(p, nullptr) << last_error();
      ASSERT_EQ(mf_record_stream(a.get(), p, S(s2)), MF_OK) << last_error();
      ASSERT_EQ(e.hold_stream(s2), CUDA_SUCCESS);
      e.reset();
      ASSERT_EQ(mf_free(a.get(), p), MF_OK) << last_error();
      EXPECT_EQ(stats(a.get()).deferred_frees, 1) << "the free was not deferred";
      EXPECT_EQ(e.calls("cuEventRecord"), 1u);
      EXPECT_EQ(e.stream_pending(s2), 1u) << "the event is not behind the held stream";
      void *p2 = mf_malloc(a.get(), 0, 4 * MiB, S(s1));
      ASSERT_NE(p2, nullptr) << last_error();
      EXPECT_NE(p2, p) << "reused while s2 may still use it";
      EXPECT_EQ(e.calls("cuEventSynchronize"), 0u) << "waited on the held stream";
      EXPECT_EQ(e.calls("cuCtxSynchronize"), 0u) << "synchronized with the held stream";
      EXPECT_EQ(mf_check(a.get()), MF_OK) << last_error();
      // Let s2 go: the block comes back.
      ASSERT_EQ(e.release_stream(s2), CUDA_SUCCESS);
      ASSERT_EQ(e.StreamSynchronize(s2), CUDA_SUCCESS);
      ASSERT_EQ(mf_free(a.get(), p2), MF_OK);
      mf_stats s = stats(a.get());
      void *p3 = mf_malloc(a.get(), 0, 4 * MiB, S(s1));
      void *p4 = mf_malloc(a.get(), 0, 4 * MiB, S(s1));
      ASSERT_TRUE(p3 && p4) << last_error();
      EXPECT_EQ(stats(a.get()).reserved_bytes.current, s.reserved_bytes.current) << "p's memory did not come back";
      EXPECT_EQ(mf_free(a.get(), p3), MF_OK);
      EXPECT_EQ(mf_free(a.get(), p4), MF_OK);
    }
    expect_same(before, Live::now());
  }
  EXPECT_EQ(e.StreamDestroy(s1), CUDA_SUCCESS);
  EXPECT_EQ(e.StreamDestroy(s2), CUDA_SUCCESS);
}

// After destroy nothing of the allocator's is left in the driver: memory,
// mappings, reservations, events (pooled ones too), context references.
TEST(EmuAllocator, DestroyLeavesNothingInTheDriver) {
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  Primary primary;
  CUstream s = make_stream(primary.ctx);
  Live before = Live::now();
  for (const char *conf : {"backend:cuda,vmm:on", "backend:cuda,vmm:off", "backend:cuda"}) {
    SCOPED_TRACE(conf);
    mf_allocator *a = nullptr;
    ASSERT_EQ(mf_allocator_create(conf, &a), MF_OK) << last_error();
    std::vector<void *> live;
    for (int i = 0; i < 40; i++) live.push_back(mf_malloc(a, 0, (size_t)(i + 1) * 123457, S(s)));
    for (size_t i = 0; i < live.size(); i += 2) ASSERT_EQ(mf_record_stream(a, live[i], 0), MF_OK);
    for (size_t i = 0; i < live.size(); i += 3) ASSERT_EQ(mf_free(a, live[i]), MF_OK);
    // live blocks and pending frees are left for destroy to clean up
    mf_allocator_destroy(a);
    EXPECT_EQ(current_context(), nullptr);
    expect_same(before, Live::now());
  }
  EXPECT_EQ(e.StreamDestroy(s), CUDA_SUCCESS);
}

// ---------------------------------------------------------------- capture

// An allocation on a capturing stream is refused before anything reaches the
// driver that would invalidate the capture.
TEST(EmuCapture, MallocOnACapturingStreamIsRefusedAndTheCaptureSurvives) {
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  Primary primary;
  CUstream s = make_stream(primary.ctx);
  Allocator a = create("backend:cuda,vmm:on");
  ASSERT_TRUE(a);
  void *warm = mf_malloc(a.get(), 0, 4 * MiB, S(s));  // a cached block of this stream's pool
  ASSERT_NE(warm, nullptr) << last_error();
  ASSERT_EQ(mf_free(a.get(), warm), MF_OK);
  unsigned long long violations = e.capture_violations();
  ASSERT_EQ(e.begin_capture(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);
  for (size_t size : {4 * MiB, 64 * MiB}) {  // a hit and a miss
    EXPECT_EQ(mf_malloc(a.get(), 0, size, S(s)), nullptr) << "allocated on a capturing stream";
    EXPECT_EQ(mf_last_status(), MF_ERR_UNSUPPORTED) << last_error();
  }
  EXPECT_EQ(e.capture_violations(), violations) << "the allocator made a call that capture forbids";
  EXPECT_EQ(e.end_capture(s), CUDA_SUCCESS) << "the capture was invalidated";
  void *after = mf_malloc(a.get(), 0, 4 * MiB, S(s));
  EXPECT_NE(after, nullptr) << last_error();
  EXPECT_EQ(mf_free(a.get(), after), MF_OK);
  a.reset();
  EXPECT_EQ(e.StreamDestroy(s), CUDA_SUCCESS);
}

// While another stream captures in global mode, work on other streams must
// not make calls that the capture forbids: a free with a pending
// record_stream event, then allocations, then empty_cache's turn comes after.
TEST(EmuCapture, AllocationsBesideAGlobalCaptureMakeNoForbiddenCall) {
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  Primary primary;
  CUstream s = make_stream(primary.ctx), side = make_stream(primary.ctx), capturing = make_stream(primary.ctx);
  Allocator a = create("backend:cuda,vmm:on");
  ASSERT_TRUE(a);
  void *p = mf_malloc(a.get(), 0, 4 * MiB, S(s));
  void *cached = mf_malloc(a.get(), 0, 8 * MiB, S(s));
  ASSERT_TRUE(p && cached) << last_error();
  ASSERT_EQ(mf_free(a.get(), cached), MF_OK);
  ASSERT_EQ(mf_record_stream(a.get(), p, S(side)), MF_OK);
  unsigned long long violations = e.capture_violations();
  ASSERT_EQ(e.begin_capture(capturing, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);
  e.trace_start();
  EXPECT_EQ(mf_free(a.get(), p), MF_OK) << last_error();  // records an event on `side`: allowed
  void *hit = mf_malloc(a.get(), 0, 8 * MiB, S(s));      // a cache hit, with a pending event about
  e.trace_stop();
  EXPECT_NE(hit, nullptr) << last_error();
  std::string calls;
  for (const std::string &c : e.trace()) calls += " " + c;
  EXPECT_EQ(e.capture_violations(), violations) << "forbidden driver calls beside a global capture; the calls:"
                                                << calls;
  EXPECT_EQ(e.end_capture(capturing), CUDA_SUCCESS) << "the capture was invalidated";
  EXPECT_EQ(mf_free(a.get(), hit), MF_OK);
  a.reset();
  for (CUstream x : {s, side, capturing}) EXPECT_EQ(e.StreamDestroy(x), CUDA_SUCCESS);
}

}  // namespace
