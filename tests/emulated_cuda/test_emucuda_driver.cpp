// test_emucuda_driver.cpp — the emulated driver itself, through the driver
// ABI: that it enforces what the real driver enforces (initialization,
// contexts, memory limits, the VMM mapping rules, stream order, events of one
// context, stream capture), so that the backend tests over it can catch
// misuse; and its control API (hold, failure injection, counters, trace).
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>

#include "emu_test_util.h"

namespace {

using namespace emutest;

// Before cuInit every call but the version and the error names is refused.
// In a fresh process ("threadsafe" death tests re-execute the binary), since
// this one has initialized the driver for good.
[[noreturn]] void child_calls_before_cuinit() {
  emucuda::Emu e(/*init=*/false);
  CHILD_CHECK(e.ok());
  int n = 0, version = 0;
  CUdevice dev = 0;
  size_t bytes = 0;
  CUcontext ctx = nullptr;
  CUdeviceptr p = 0;
  CUstream s = nullptr;
  CUevent ev = nullptr;
  CHILD_CHECK(e.DeviceGetCount(&n) == CUDA_ERROR_NOT_INITIALIZED);
  CHILD_CHECK(e.DeviceGet(&dev, 0) == CUDA_ERROR_NOT_INITIALIZED);
  CHILD_CHECK(e.DeviceTotalMem(&bytes, 0) == CUDA_ERROR_NOT_INITIALIZED);
  CHILD_CHECK(e.PrimaryCtxRetain(&ctx, 0) == CUDA_ERROR_NOT_INITIALIZED);
  CHILD_CHECK(e.CtxGetCurrent(&ctx) == CUDA_ERROR_NOT_INITIALIZED);
  CHILD_CHECK(e.MemAlloc(&p, 4096) == CUDA_ERROR_NOT_INITIALIZED);
  CHILD_CHECK(e.StreamCreate(&s, 0) == CUDA_ERROR_NOT_INITIALIZED);
  CHILD_CHECK(e.EventCreate(&ev, 0) == CUDA_ERROR_NOT_INITIALIZED);
  CHILD_CHECK(e.MemAddressReserve(&p, G, 0, 0, 0) == CUDA_ERROR_NOT_INITIALIZED);
  // As in the real driver, these work before cuInit.
  CHILD_CHECK(e.GetErrorName(CUDA_ERROR_NOT_INITIALIZED, nullptr) == CUDA_ERROR_INVALID_VALUE);
  CHILD_CHECK(e.name(CUDA_ERROR_NOT_INITIALIZED) == "CUDA_ERROR_NOT_INITIALIZED");
  auto version_of = reinterpret_cast<CUresult (*)(int *)>(dlsym(e.lib, "cuDriverGetVersion"));
  CHILD_CHECK(version_of != nullptr);
  CHILD_CHECK(version_of(&version) == CUDA_SUCCESS && version >= 12000);
  CHILD_CHECK(e.Init(0) == CUDA_SUCCESS);
  CHILD_CHECK(e.DeviceGetCount(&n) == CUDA_SUCCESS && n == 1);
  _exit(0);
}

TEST(EmuDriverDeathTest, EveryCallBeforeCuInitIsNotInitialized) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(child_calls_before_cuinit(), ::testing::ExitedWithCode(0), "");
}

TEST(EmuDriver, ContextsAreAPerThreadStackOfRefcountedPrimaries) {
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  // No context current: calls that need one say so.
  ASSERT_EQ(current_context(), nullptr);
  CUdevice dev = -1;
  CUdeviceptr p = 0;
  CUstream s = nullptr;
  CUevent ev = nullptr;
  size_t free_b = 0, total_b = 0;
  EXPECT_EQ(e.CtxGetDevice(&dev), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_EQ(e.MemAlloc(&p, 4096), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_EQ(e.MemGetInfo(&free_b, &total_b), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_EQ(e.StreamCreate(&s, 0), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_EQ(e.EventCreate(&ev, 0), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_EQ(e.CtxSynchronize(), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_EQ(e.MemAddressReserve(&p, G, 0, 0, 0), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_EQ(e.EventRecord(nullptr, nullptr), CUDA_ERROR_INVALID_HANDLE);
  CUcontext popped = nullptr;
  EXPECT_EQ(e.CtxPopCurrent(&popped), CUDA_ERROR_INVALID_CONTEXT);
  // Device properties need no context.
  size_t total = 0;
  EXPECT_EQ(e.DeviceTotalMem(&total, 0), CUDA_SUCCESS);
  EXPECT_EQ(total, 1 * GiB);
  EXPECT_EQ(e.DeviceTotalMem(&total, 1), CUDA_ERROR_INVALID_DEVICE);

  // Retains of the primary context give the same handle and count.
  int base = e.primary_refcount(0);
  CUcontext c1 = nullptr, c2 = nullptr;
  ASSERT_EQ(e.PrimaryCtxRetain(&c1, 0), CUDA_SUCCESS);
  ASSERT_EQ(e.PrimaryCtxRetain(&c2, 0), CUDA_SUCCESS);
  EXPECT_EQ(c1, c2);
  EXPECT_EQ(e.primary_refcount(0), base + 2);
  EXPECT_EQ(e.PrimaryCtxRetain(&c1, 1), CUDA_ERROR_INVALID_DEVICE);

  // Push / pop / set on this thread only.
  ASSERT_EQ(e.CtxPushCurrent(c1), CUDA_SUCCESS);
  EXPECT_EQ(current_context(), c1);
  EXPECT_EQ(e.CtxGetDevice(&dev), CUDA_SUCCESS);
  EXPECT_EQ(dev, 0);
  std::thread([&] { EXPECT_EQ(current_context(), nullptr) << "a context leaked to another thread"; }).join();
  EXPECT_EQ(e.CtxPushCurrent(reinterpret_cast<CUcontext>(&base)), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_EQ(e.CtxPushCurrent(nullptr), CUDA_ERROR_INVALID_VALUE);
  // A context of its own is pushed by its creation and popped by its destruction.
  CUcontext own = nullptr;
  ASSERT_EQ(e.CtxCreate(&own, 0, 0), CUDA_SUCCESS);
  EXPECT_NE(own, c1);
  EXPECT_EQ(current_context(), own);
  EXPECT_EQ(e.CtxDestroy(own), CUDA_SUCCESS);
  EXPECT_EQ(current_context(), c1);
  EXPECT_EQ(e.CtxPushCurrent(own), CUDA_ERROR_INVALID_CONTEXT) << "a destroyed context is pushable";
  EXPECT_EQ(e.CtxDestroy(c1), CUDA_ERROR_INVALID_CONTEXT) << "the primary context is not destroyed";
  // SetCurrent replaces the top; NULL pops.
  EXPECT_EQ(e.CtxSetCurrent(nullptr), CUDA_SUCCESS);
  EXPECT_EQ(current_context(), nullptr);
  EXPECT_EQ(e.CtxSetCurrent(c1), CUDA_SUCCESS);
  EXPECT_EQ(current_context(), c1);
  ASSERT_EQ(e.CtxPopCurrent(&popped), CUDA_SUCCESS);
  EXPECT_EQ(popped, c1);
  EXPECT_EQ(current_context(), nullptr);

  EXPECT_EQ(e.PrimaryCtxRelease(0), CUDA_SUCCESS);
  EXPECT_EQ(e.PrimaryCtxRelease(0), CUDA_SUCCESS);
  EXPECT_EQ(e.primary_refcount(0), base);
}

// The last release makes the primary context unusable, and a release too many
// is an error. In a fresh process, where nothing else holds the context.
[[noreturn]] void child_releases_the_primary_context() {
  emucuda::Emu e;
  CHILD_CHECK(e.ok());
  CUcontext c = nullptr;
  CHILD_CHECK(e.PrimaryCtxRetain(&c, 0) == CUDA_SUCCESS);
  CHILD_CHECK(e.CtxPushCurrent(c) == CUDA_SUCCESS);
  CUdeviceptr p = 0;
  CHILD_CHECK(e.MemAlloc(&p, 4096) == CUDA_SUCCESS);
  CHILD_CHECK(e.MemFree(p) == CUDA_SUCCESS);
  CHILD_CHECK(e.PrimaryCtxRelease(0) == CUDA_SUCCESS);
  CHILD_CHECK(e.primary_refcount(0) == 0);
  CHILD_CHECK(e.MemAlloc(&p, 4096) == CUDA_ERROR_CONTEXT_IS_DESTROYED);
  CHILD_CHECK(e.PrimaryCtxRelease(0) == CUDA_ERROR_INVALID_CONTEXT);
  CUcontext again = nullptr;
  CHILD_CHECK(e.PrimaryCtxRetain(&again, 0) == CUDA_SUCCESS && again == c);
  CHILD_CHECK(e.MemAlloc(&p, 4096) == CUDA_SUCCESS);
  _exit(0);
}

TEST(EmuDriverDeathTest, AReleasedPrimaryContextIsDestroyedAndOverReleaseFails) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(child_releases_the_primary_context(), ::testing::ExitedWithCode(0), "");
}

TEST(EmuDriver, MemAllocIsRealMemoryCountedAgainstTheDevice) {
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  Primary primary;
  Current cur(primary.ctx);
  size_t free0 = 0, total = 0;
  ASSERT_EQ(e.MemGetInfo(&free0, &total), CUDA_SUCCESS);
  EXPECT_EQ(total, 1 * GiB);
  unsigned long long used0 = e.bytes_in_use(0);
  EXPECT_EQ(free0, total - used0);

  CUdeviceptr p = 0;
  ASSERT_EQ(e.MemAlloc(&p, 3 * MiB), CUDA_SUCCESS);
  std::memset(reinterpret_cast<void *>(p), 0x7e, 3 * MiB);  // host memory behind it
  EXPECT_EQ(e.bytes_in_use(0), used0 + 3 * MiB);
  size_t free1 = 0;
  ASSERT_EQ(e.MemGetInfo(&free1, &total), CUDA_SUCCESS);
  EXPECT_EQ(free1, free0 - 3 * MiB);
  CUdeviceptr big = 0;
  EXPECT_EQ(e.MemAlloc(&big, free1 + 1), CUDA_ERROR_OUT_OF_MEMORY);
  EXPECT_EQ(e.MemAlloc(&big, 0), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(e.MemFree(p + 4096), CUDA_ERROR_INVALID_VALUE) << "freed by an inner pointer";
  EXPECT_EQ(e.MemFree(0x1234000), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(e.MemFree(p), CUDA_SUCCESS);
  EXPECT_EQ(e.MemFree(p), CUDA_ERROR_INVALID_VALUE) << "double free accepted";
  EXPECT_EQ(e.bytes_in_use(0), used0);

  // cuMemCreate and cuMemAlloc draw on the same memory.
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = 0;
  size_t half = free0 / 2 / G * G;
  CUmemGenericAllocationHandle h = 0;
  ASSERT_EQ(e.MemCreate(&h, half, &prop, 0), CUDA_SUCCESS);
  EXPECT_EQ(e.bytes_in_use(0), used0 + half);
  EXPECT_EQ(e.MemAlloc(&big, free0 - half + 4096), CUDA_ERROR_OUT_OF_MEMORY);
  ASSERT_EQ(e.MemAlloc(&big, free0 - half), CUDA_SUCCESS) << "the exact rest does not fit";
  CUmemGenericAllocationHandle h2 = 0;
  EXPECT_EQ(e.MemCreate(&h2, G, &prop, 0), CUDA_ERROR_OUT_OF_MEMORY);
  EXPECT_EQ(e.MemFree(big), CUDA_SUCCESS);
  EXPECT_EQ(e.MemRelease(h), CUDA_SUCCESS);
  EXPECT_EQ(e.bytes_in_use(0), used0);
}

CUmemAllocationProp pinned(int device = 0) {
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = device;
  return prop;
}

CUresult set_rw(CUdeviceptr at, size_t size) {
  CUmemAccessDesc d{};
  d.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  d.location.id = 0;
  d.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  return emu().MemSetAccess(at, size, &d, 1);
}

TEST(EmuDriver, VirtualMemoryFollowsTheDriversRules) {
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  Primary primary;
  Current cur(primary.ctx);
  Live before = Live::now();
  CUmemAllocationProp prop = pinned();
  size_t lo = 0, rec = 0;
  ASSERT_EQ(e.MemGetAllocationGranularity(&lo, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM), CUDA_SUCCESS);
  ASSERT_EQ(e.MemGetAllocationGranularity(&rec, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED), CUDA_SUCCESS);
  EXPECT_EQ(lo, G);
  EXPECT_EQ(rec, G);
  int vmm = 0;
  ASSERT_EQ(e.DeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 0), CUDA_SUCCESS);
  EXPECT_EQ(vmm, 1);

  // Physical memory: whole granules on a real device.
  CUmemGenericAllocationHandle h1 = 0, h2 = 0, bad = 0;
  EXPECT_EQ(e.MemCreate(&bad, G + 4096, &prop, 0), CUDA_ERROR_INVALID_VALUE);
  CUmemAllocationProp nowhere = pinned(7);
  EXPECT_EQ(e.MemCreate(&bad, G, &nowhere, 0), CUDA_ERROR_INVALID_DEVICE);
  ASSERT_EQ(e.MemCreate(&h1, G, &prop, 0), CUDA_SUCCESS);
  ASSERT_EQ(e.MemCreate(&h2, G, &prop, 0), CUDA_SUCCESS);

  // Addresses: granule multiples, aligned as asked.
  CUdeviceptr base = 0, none = 0;
  EXPECT_EQ(e.MemAddressReserve(&none, G + 4096, 0, 0, 0), CUDA_ERROR_INVALID_VALUE);
  ASSERT_EQ(e.MemAddressReserve(&base, 8 * G, 64 * MiB, 0, 0), CUDA_SUCCESS);
  EXPECT_EQ(base % (64 * MiB), 0u);

  // Mapping: offset 0, whole granules, inside the reservation, over nothing.
  EXPECT_EQ(e.MemMap(base, G, 4096, h1, 0), CUDA_ERROR_INVALID_VALUE) << "offset";
  EXPECT_EQ(e.MemMap(base, G / 2, 0, h1, 0), CUDA_ERROR_INVALID_VALUE) << "half a granule";
  EXPECT_EQ(e.MemMap(base + 7 * G, 2 * G, 0, h1, 0), CUDA_ERROR_INVALID_VALUE) << "past the reservation";
  EXPECT_EQ(e.MemMap(base + 8 * G, G, 0, h1, 0), CUDA_ERROR_INVALID_VALUE) << "outside the reservation";
  EXPECT_EQ(e.MemMap(base, 2 * G, 0, h1, 0), CUDA_ERROR_INVALID_VALUE) << "larger than the allocation";
  ASSERT_EQ(e.MemMap(base, G, 0, h1, 0), CUDA_SUCCESS);
  EXPECT_EQ(e.MemMap(base, G, 0, h2, 0), CUDA_ERROR_INVALID_VALUE) << "over a mapping";
  ASSERT_EQ(e.MemMap(base + G, G, 0, h2, 0), CUDA_SUCCESS);
  EXPECT_EQ(e.live("mappings"), before.mappings + 2);

  // Access: whole mappings; then the memory is real.
  EXPECT_EQ(set_rw(base, G / 2), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(set_rw(base, 3 * G), CUDA_ERROR_INVALID_VALUE) << "over an unmapped granule";
  ASSERT_EQ(set_rw(base, 2 * G), CUDA_SUCCESS);
  std::memset(reinterpret_cast<void *>(base), 0x11, G);
  std::memset(reinterpret_cast<void *>(base + G), 0x22, G);

  // Unmapping: whole mappings exactly; no address free while mapped.
  EXPECT_EQ(e.MemUnmap(base, G / 2), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(e.MemUnmap(base + G / 2, G), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(e.MemUnmap(base, 3 * G), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(e.MemAddressFree(base, 8 * G), CUDA_ERROR_INVALID_VALUE) << "freed with mappings inside";
  EXPECT_EQ(e.MemAddressFree(base, 4 * G), CUDA_ERROR_INVALID_VALUE) << "part of a reservation";

  // Released while mapped: the memory stays until unmapped.
  unsigned long long bytes = e.bytes_in_use(0);
  ASSERT_EQ(e.MemRelease(h1), CUDA_SUCCESS);
  EXPECT_EQ(e.MemRelease(h1), CUDA_ERROR_INVALID_VALUE) << "released twice";
  EXPECT_EQ(e.bytes_in_use(0), bytes);
  EXPECT_EQ(e.live("handles"), before.handles + 2);
  EXPECT_TRUE(holds(reinterpret_cast<void *>(base), G, 0x11));
  EXPECT_EQ(e.MemMap(base + 2 * G, G, 0, h1, 0), CUDA_ERROR_INVALID_VALUE) << "a released handle mapped";

  // The data belongs to the physical memory: it moves with the mapping.
  ASSERT_EQ(e.MemUnmap(base + G, G), CUDA_SUCCESS);
  ASSERT_EQ(e.MemMap(base + 5 * G, G, 0, h2, 0), CUDA_SUCCESS);
  ASSERT_EQ(set_rw(base + 5 * G, G), CUDA_SUCCESS);
  EXPECT_TRUE(holds(reinterpret_cast<void *>(base + 5 * G), G, 0x22)) << "the data did not move with its pages";

  ASSERT_EQ(e.MemUnmap(base, G), CUDA_SUCCESS);  // h1: released and unmapped, so gone
  EXPECT_EQ(e.bytes_in_use(0), bytes - G);
  EXPECT_EQ(e.live("handles"), before.handles + 1);
  ASSERT_EQ(e.MemUnmap(base + 5 * G, G), CUDA_SUCCESS);
  EXPECT_EQ(e.bytes_in_use(0), bytes - G) << "unmapped but not released memory went";
  ASSERT_EQ(e.MemRelease(h2), CUDA_SUCCESS);
  ASSERT_EQ(e.MemAddressFree(base, 8 * G), CUDA_SUCCESS);
  EXPECT_EQ(e.MemAddressFree(base, 8 * G), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(e.unsafe_unmaps(), 0u);
  expect_same(before, Live::now());
}

// Mapped memory really is inaccessible before cuMemSetAccess, and so is an
// unmapped range: the emulator catches host-side use of such pointers.
void map_one_granule(emucuda::Emu &e, CUdeviceptr *base, bool accessible) {
  CUcontext c = nullptr;
  CHILD_CHECK(e.ok());
  CHILD_CHECK(e.PrimaryCtxRetain(&c, 0) == CUDA_SUCCESS && e.CtxPushCurrent(c) == CUDA_SUCCESS);
  CUmemAllocationProp prop = pinned();
  CUmemGenericAllocationHandle h = 0;
  CHILD_CHECK(e.MemCreate(&h, G, &prop, 0) == CUDA_SUCCESS);
  CHILD_CHECK(e.MemAddressReserve(base, 2 * G, 0, 0, 0) == CUDA_SUCCESS);
  CHILD_CHECK(e.MemMap(*base, G, 0, h, 0) == CUDA_SUCCESS);
  if (accessible) {
    CUmemAccessDesc d{};
    d.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    d.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    CHILD_CHECK(e.MemSetAccess(*base, G, &d, 1) == CUDA_SUCCESS);
  }
}

// 0: write before cuMemSetAccess; 1: write after cuMemUnmap; 2: the control,
// writes that are allowed.
[[noreturn]] void child_writes_mapped_memory(int how) {
  emucuda::Emu e;
  CUdeviceptr base = 0;
  map_one_granule(e, &base, how != 0);
  *reinterpret_cast<volatile char *>(base) = 1;
  if (how == 1) {
    CHILD_CHECK(e.MemUnmap(base, G) == CUDA_SUCCESS);
    *reinterpret_cast<volatile char *>(base) = 2;
  }
  *reinterpret_cast<volatile char *>(base + G - 1) = 3;
  std::fprintf(stderr, "the writes went through\n");
  _exit(how == 2 ? 0 : 3);
}

// Killed by SIGSEGV, or (under AddressSanitizer, which catches it) exited
// with an error: anything but getting through.
bool faulted(int status) {
  return WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) != 0 && WEXITSTATUS(status) != 3);
}

TEST(EmuDriverDeathTest, MappedMemoryFaultsBeforeSetAccessAndAfterUnmap) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(child_writes_mapped_memory(0), faulted, "");
  EXPECT_EXIT(child_writes_mapped_memory(1), faulted, "");
  EXPECT_EXIT(child_writes_mapped_memory(2), ::testing::ExitedWithCode(0), "");
}

// Host functions append here, with the thread they ran on.
struct Log {
  std::mutex lock;
  std::vector<int> order;
  std::vector<std::thread::id> threads;
};
struct Item {
  Log *log;
  int value;
};
void append(void *arg) {
  Item *it = static_cast<Item *>(arg);
  std::lock_guard<std::mutex> g(it->log->lock);
  it->log->order.push_back(it->value);
  it->log->threads.push_back(std::this_thread::get_id());
}

TEST(EmuDriver, StreamsRunTheirWorkInOrderOnTheirOwnThreadAndHoldStopsThem) {
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  Primary primary;
  Current cur(primary.ctx);
  CUstream s = nullptr;
  ASSERT_EQ(e.StreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  EXPECT_EQ(e.StreamCreate(&s, 0x80), CUDA_ERROR_INVALID_VALUE);
  CUevent ev = nullptr;
  ASSERT_EQ(e.EventCreate(&ev, CU_EVENT_DISABLE_TIMING), CUDA_SUCCESS);
  EXPECT_EQ(e.EventQuery(ev), CUDA_SUCCESS) << "a never recorded event is complete";

  Log log;
  Item items[5];
  ASSERT_EQ(e.hold_stream(s), CUDA_SUCCESS);
  for (int i = 0; i < 5; i++) {
    items[i] = {&log, i};
    ASSERT_EQ(e.LaunchHostFunc(s, append, &items[i]), CUDA_SUCCESS);
  }
  ASSERT_EQ(e.EventRecord(ev, s), CUDA_SUCCESS);
  EXPECT_EQ(e.stream_pending(s), 6u);
  EXPECT_EQ(e.EventQuery(ev), CUDA_ERROR_NOT_READY);
  {
    std::lock_guard<std::mutex> g(log.lock);
    EXPECT_TRUE(log.order.empty()) << "a held stream ran work";
  }
  ASSERT_EQ(e.release_stream(s), CUDA_SUCCESS);
  ASSERT_EQ(e.EventSynchronize(ev), CUDA_SUCCESS);
  EXPECT_EQ(e.EventQuery(ev), CUDA_SUCCESS);
  ASSERT_EQ(e.StreamSynchronize(s), CUDA_SUCCESS);
  EXPECT_EQ(e.stream_pending(s), 0u);
  EXPECT_EQ(log.order, (std::vector<int>{0, 1, 2, 3, 4}));
  ASSERT_EQ(log.threads.size(), 5u);
  EXPECT_NE(log.threads[0], std::this_thread::get_id()) << "stream work ran on the caller's thread";

  // Memsets run on the default stream, in order, on the memory itself.
  CUdeviceptr p = 0;
  ASSERT_EQ(e.MemAlloc(&p, 1 * MiB), CUDA_SUCCESS);
  ASSERT_EQ(e.MemsetD8(p, 0x5a, 1 * MiB), CUDA_SUCCESS);
  ASSERT_EQ(e.CtxSynchronize(), CUDA_SUCCESS);
  EXPECT_TRUE(holds(reinterpret_cast<void *>(p), 1 * MiB, 0x5a));
  ASSERT_EQ(e.hold_stream(nullptr), CUDA_SUCCESS);  // stream 0: the context's default stream
  ASSERT_EQ(e.MemsetD8(p, 0x6b, 1 * MiB), CUDA_SUCCESS);
  EXPECT_TRUE(holds(reinterpret_cast<void *>(p), 1 * MiB, 0x5a)) << "a memset ran on a held stream";
  ASSERT_EQ(e.release_stream(nullptr), CUDA_SUCCESS);
  ASSERT_EQ(e.StreamSynchronize(CU_STREAM_LEGACY), CUDA_SUCCESS);
  EXPECT_TRUE(holds(reinterpret_cast<void *>(p), 1 * MiB, 0x6b));
  EXPECT_EQ(e.MemsetD8(p + 1 * MiB, 0, 1), CUDA_ERROR_INVALID_VALUE) << "a memset past the allocation";
  ASSERT_EQ(e.MemFree(p), CUDA_SUCCESS);

  // The special handles are the current context's; a stream keeps its own.
  CUcontext c = nullptr;
  for (CUstream special : {static_cast<CUstream>(nullptr), CU_STREAM_LEGACY, CU_STREAM_PER_THREAD}) {
    ASSERT_EQ(e.StreamGetCtx(special, &c), CUDA_SUCCESS);
    EXPECT_EQ(c, primary.ctx);
  }
  std::thread([&] {
    CUcontext of = nullptr;
    EXPECT_EQ(e.StreamGetCtx(s, &of), CUDA_SUCCESS);
    EXPECT_EQ(of, primary.ctx);
    EXPECT_EQ(e.StreamGetCtx(nullptr, &of), CUDA_ERROR_INVALID_CONTEXT);
  }).join();

  // Destroy returns at once; the queued work still runs.
  Item last{&log, 99};
  ASSERT_EQ(e.hold_stream(s), CUDA_SUCCESS);
  ASSERT_EQ(e.LaunchHostFunc(s, append, &last), CUDA_SUCCESS);
  ASSERT_EQ(e.StreamDestroy(s), CUDA_SUCCESS);
  EXPECT_EQ(e.StreamDestroy(s), CUDA_ERROR_INVALID_HANDLE);
  EXPECT_EQ(e.LaunchHostFunc(s, append, &last), CUDA_ERROR_INVALID_HANDLE);
  ASSERT_EQ(e.release_stream(s), CUDA_SUCCESS);
  ASSERT_EQ(e.CtxSynchronize(), CUDA_SUCCESS);
  EXPECT_EQ(log.order.back(), 99) << "work queued before the destroy did not run";
  EXPECT_EQ(e.EventDestroy(ev), CUDA_SUCCESS);
  EXPECT_EQ(e.EventQuery(ev), CUDA_ERROR_INVALID_HANDLE);
}

TEST(EmuDriver, EventsBelongToTheContextTheyWereCreatedIn) {
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  Primary primary;
  CUstream in_primary = make_stream(primary.ctx);
  CUevent ev = nullptr;
  {
    Current cur(primary.ctx);
    ASSERT_EQ(e.EventCreate(&ev, CU_EVENT_DISABLE_TIMING), CUDA_SUCCESS);
    EXPECT_EQ(e.EventCreate(&ev, 0x100), CUDA_ERROR_INVALID_VALUE);
  }
  CUcontext other = nullptr;
  ASSERT_EQ(e.CtxCreate(&other, 0, 0), CUDA_SUCCESS);  // current now
  CUstream in_other = nullptr;
  ASSERT_EQ(e.StreamCreate(&in_other, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  EXPECT_EQ(e.EventRecord(ev, in_other), CUDA_ERROR_INVALID_HANDLE) << "recorded on another context's stream";
  EXPECT_EQ(e.EventRecord(ev, nullptr), CUDA_ERROR_INVALID_HANDLE) << "recorded on another context's stream 0";
  EXPECT_EQ(e.EventRecord(ev, in_primary), CUDA_SUCCESS) << "the stream's context is what counts";
  EXPECT_EQ(e.EventSynchronize(ev), CUDA_SUCCESS);
  EXPECT_EQ(e.CtxDestroy(other), CUDA_SUCCESS);
  {
    Current cur(primary.ctx);
    EXPECT_EQ(e.EventRecord(ev, nullptr), CUDA_SUCCESS);
    EXPECT_EQ(e.EventRecord(ev, CU_STREAM_PER_THREAD), CUDA_SUCCESS);
    EXPECT_EQ(e.EventSynchronize(ev), CUDA_SUCCESS);
    EXPECT_EQ(e.EventRecord(ev, reinterpret_cast<CUstream>(0x5000)), CUDA_ERROR_INVALID_HANDLE);
  }
  EXPECT_EQ(e.EventRecord(ev, nullptr), CUDA_ERROR_INVALID_CONTEXT) << "stream 0 with no context current";
  // A re-record replaces the pending one: the latest one decides.
  ASSERT_EQ(e.hold_stream(in_primary), CUDA_SUCCESS);
  ASSERT_EQ(e.EventRecord(ev, in_primary), CUDA_SUCCESS);
  EXPECT_EQ(e.EventQuery(ev), CUDA_ERROR_NOT_READY);
  ASSERT_EQ(e.release_stream(in_primary), CUDA_SUCCESS);
  EXPECT_EQ(e.EventSynchronize(ev), CUDA_SUCCESS);
  EXPECT_EQ(e.EventDestroy(ev), CUDA_SUCCESS);
  EXPECT_EQ(e.EventDestroy(ev), CUDA_ERROR_INVALID_HANDLE);
  EXPECT_EQ(e.StreamDestroy(in_primary), CUDA_SUCCESS);
}

// Each unsafe call during a global capture: refused, the capture invalidated,
// one violation counted.
TEST(EmuDriver, CaptureForbidsUnsafeCallsAndInvalidatesTheCapture) {
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  Primary primary;
  Current cur(primary.ctx);
  CUstream s = make_stream(primary.ctx), other = make_stream(primary.ctx);
  CUevent ev = nullptr, on_capture = nullptr;
  ASSERT_EQ(e.EventCreate(&ev, 0), CUDA_SUCCESS);
  ASSERT_EQ(e.EventCreate(&on_capture, 0), CUDA_SUCCESS);
  ASSERT_EQ(e.EventRecord(ev, other), CUDA_SUCCESS);
  CUdeviceptr freeable = 0, reserved = 0;
  ASSERT_EQ(e.MemAlloc(&freeable, 4096), CUDA_SUCCESS);
  CUmemAllocationProp prop = pinned();
  CUmemGenericAllocationHandle h = 0;
  ASSERT_EQ(e.MemCreate(&h, G, &prop, 0), CUDA_SUCCESS);
  ASSERT_EQ(e.MemAddressReserve(&reserved, G, 0, 0, 0), CUDA_SUCCESS);
  ASSERT_EQ(e.MemMap(reserved, G, 0, h, 0), CUDA_SUCCESS);

  // Allowed during capture: queries of the status, an event record on the
  // capturing stream, work queued on it (captured, not run).
  ASSERT_EQ(e.begin_capture(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);
  EXPECT_EQ(e.begin_capture(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_ERROR_ILLEGAL_STATE);
  unsigned long long violations = e.capture_violations();
  CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
  cuuint64_t id = 0;
  ASSERT_EQ(e.StreamIsCapturing(s, &status), CUDA_SUCCESS);
  EXPECT_EQ(status, CU_STREAM_CAPTURE_STATUS_ACTIVE);
  ASSERT_EQ(e.StreamGetCaptureInfo(s, &status, &id, nullptr, nullptr, nullptr, nullptr), CUDA_SUCCESS);
  EXPECT_EQ(status, CU_STREAM_CAPTURE_STATUS_ACTIVE);
  EXPECT_NE(id, 0u);
  ASSERT_EQ(e.StreamIsCapturing(other, &status), CUDA_SUCCESS);
  EXPECT_EQ(status, CU_STREAM_CAPTURE_STATUS_NONE);
  EXPECT_EQ(e.EventRecord(on_capture, s), CUDA_SUCCESS);
  Log log;
  Item item{&log, 1};
  EXPECT_EQ(e.LaunchHostFunc(s, append, &item), CUDA_SUCCESS);
  EXPECT_EQ(e.stream_pending(s), 0u) << "captured work was queued to run";
  EXPECT_EQ(e.capture_violations(), violations);
  ASSERT_EQ(e.end_capture(s), CUDA_SUCCESS);
  EXPECT_EQ(e.EventQuery(on_capture), CUDA_ERROR_CAPTURED_EVENT);

  struct Unsafe {
    const char *what;
    std::function<CUresult()> call;
  };
  CUdeviceptr p = 0;
  CUmemGenericAllocationHandle h2 = 0;
  const Unsafe calls[] = {
      {"cuEventQuery", [&] { return e.EventQuery(ev); }},
      {"cuEventSynchronize", [&] { return e.EventSynchronize(ev); }},
      {"cuCtxSynchronize", [&] { return e.CtxSynchronize(); }},
      {"cuStreamSynchronize", [&] { return e.StreamSynchronize(other); }},
      {"cuStreamSynchronize of the capturing stream", [&] { return e.StreamSynchronize(s); }},
      {"cuMemAlloc", [&] { return e.MemAlloc(&p, 4096); }},
      {"cuMemFree", [&] { return e.MemFree(freeable); }},
      {"cuMemUnmap", [&] { return e.MemUnmap(reserved, G); }},
      {"cuMemCreate", [&] { return e.MemCreate(&h2, G, &prop, 0); }},
  };
  for (const Unsafe &u : calls) {
    SCOPED_TRACE(u.what);
    ASSERT_EQ(e.begin_capture(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);
    unsigned long long v = e.capture_violations();
    EXPECT_EQ(u.call(), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    EXPECT_EQ(e.capture_violations(), v + 1);
    ASSERT_EQ(e.StreamIsCapturing(s, &status), CUDA_SUCCESS);
    EXPECT_EQ(status, CU_STREAM_CAPTURE_STATUS_INVALIDATED);
    EXPECT_EQ(e.end_capture(s), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    EXPECT_EQ(e.StreamIsCapturing(s, &status), CUDA_SUCCESS);
    EXPECT_EQ(status, CU_STREAM_CAPTURE_STATUS_NONE);
  }
  // All of them work again once no capture runs.
  EXPECT_EQ(e.EventSynchronize(ev), CUDA_SUCCESS);
  EXPECT_EQ(e.CtxSynchronize(), CUDA_SUCCESS);

  // Global mode reaches other threads, unless they relax their own mode.
  ASSERT_EQ(e.begin_capture(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);
  std::thread([&] {
    Current in(primary.ctx);
    CUdeviceptr q = 0;
    CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_RELAXED;
    ASSERT_EQ(e.ThreadExchangeStreamCaptureMode(&mode), CUDA_SUCCESS);
    EXPECT_EQ(mode, CU_STREAM_CAPTURE_MODE_GLOBAL);
    EXPECT_EQ(e.MemAlloc(&q, 4096), CUDA_SUCCESS) << "a relaxed thread was refused";
    EXPECT_EQ(e.MemFree(q), CUDA_SUCCESS);
    ASSERT_EQ(e.ThreadExchangeStreamCaptureMode(&mode), CUDA_SUCCESS);
    EXPECT_EQ(e.MemAlloc(&q, 4096), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED) << "global capture, other thread";
  }).join();
  EXPECT_EQ(e.end_capture(s), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
  // Thread-local mode: only the capturing thread is refused.
  ASSERT_EQ(e.begin_capture(s, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), CUDA_SUCCESS);
  std::thread([&] {
    Current in(primary.ctx);
    CUdeviceptr q = 0;
    EXPECT_EQ(e.MemAlloc(&q, 4096), CUDA_SUCCESS);
    EXPECT_EQ(e.MemFree(q), CUDA_SUCCESS);
    EXPECT_EQ(e.end_capture(s), CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD);
  }).join();
  EXPECT_EQ(e.MemAlloc(&p, 4096), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
  EXPECT_EQ(e.end_capture(s), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
  // Relaxed: allowed, except synchronizing the capturing stream.
  ASSERT_EQ(e.begin_capture(s, CU_STREAM_CAPTURE_MODE_RELAXED), CUDA_SUCCESS);
  ASSERT_EQ(e.MemAlloc(&p, 4096), CUDA_SUCCESS);
  EXPECT_EQ(e.MemFree(p), CUDA_SUCCESS);
  EXPECT_EQ(e.end_capture(s), CUDA_SUCCESS);

  // The legacy stream is unusable while a blocking stream of its context
  // captures: a query says so, a use is refused and invalidates the capture.
  CUstream blocking = make_stream(primary.ctx, CU_STREAM_DEFAULT);
  ASSERT_EQ(e.begin_capture(blocking, CU_STREAM_CAPTURE_MODE_RELAXED), CUDA_SUCCESS);
  EXPECT_EQ(e.StreamIsCapturing(nullptr, &status), CUDA_ERROR_STREAM_CAPTURE_IMPLICIT);
  EXPECT_EQ(e.StreamIsCapturing(blocking, &status), CUDA_SUCCESS);
  EXPECT_EQ(status, CU_STREAM_CAPTURE_STATUS_ACTIVE) << "a query invalidated the capture";
  EXPECT_EQ(e.StreamIsCapturing(CU_STREAM_PER_THREAD, &status), CUDA_SUCCESS);
  EXPECT_EQ(e.EventRecord(ev, CU_STREAM_LEGACY), CUDA_ERROR_STREAM_CAPTURE_IMPLICIT);
  EXPECT_EQ(e.end_capture(blocking), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);

  EXPECT_EQ(e.MemUnmap(reserved, G), CUDA_SUCCESS);
  EXPECT_EQ(e.MemRelease(h), CUDA_SUCCESS);
  EXPECT_EQ(e.MemAddressFree(reserved, G), CUDA_SUCCESS);
  EXPECT_EQ(e.MemFree(freeable), CUDA_SUCCESS);
  EXPECT_EQ(e.EventDestroy(ev), CUDA_SUCCESS);
  EXPECT_EQ(e.EventDestroy(on_capture), CUDA_SUCCESS);
  for (CUstream x : {s, other, blocking}) EXPECT_EQ(e.StreamDestroy(x), CUDA_SUCCESS);
}

TEST(EmuDriver, FailureInjectionCountersAndTrace) {
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  Primary primary;
  Current cur(primary.ctx);
  e.reset();
  EXPECT_EQ(e.calls("cuMemAlloc_v2"), 0u);
  EXPECT_EQ(e.calls("cuNoSuchCall"), ~0ull);
  EXPECT_EQ(e.fail_next("cuNoSuchCall", CUDA_ERROR_UNKNOWN), CUDA_ERROR_INVALID_VALUE);

  unsigned long long used = e.bytes_in_use(0);
  ASSERT_EQ(e.fail_next("cuMemAlloc", CUDA_ERROR_ILLEGAL_ADDRESS, 2), CUDA_SUCCESS);  // unversioned name
  CUdeviceptr p = 0;
  EXPECT_EQ(e.MemAlloc(&p, 4096), CUDA_ERROR_ILLEGAL_ADDRESS);
  EXPECT_EQ(e.MemAlloc(&p, 4096), CUDA_ERROR_ILLEGAL_ADDRESS);
  EXPECT_EQ(e.bytes_in_use(0), used) << "a failed call had an effect";
  ASSERT_EQ(e.MemAlloc(&p, 4096), CUDA_SUCCESS);
  EXPECT_EQ(e.calls("cuMemAlloc"), 3u);
  EXPECT_EQ(e.calls("cuMemAlloc_v2"), 3u);

  CUmemAllocationProp prop = pinned();
  CUmemGenericAllocationHandle h[3] = {0, 0, 0};
  ASSERT_EQ(e.fail_after("cuMemCreate", 1, CUDA_ERROR_OUT_OF_MEMORY), CUDA_SUCCESS);
  EXPECT_EQ(e.MemCreate(&h[0], G, &prop, 0), CUDA_SUCCESS);
  EXPECT_EQ(e.MemCreate(&h[1], G, &prop, 0), CUDA_ERROR_OUT_OF_MEMORY);
  EXPECT_EQ(e.MemCreate(&h[2], G, &prop, 0), CUDA_SUCCESS);
  ASSERT_EQ(e.fail_next("cuMemRelease", CUDA_ERROR_UNKNOWN), CUDA_SUCCESS);
  ASSERT_EQ(e.fail_next("cuMemRelease", CUDA_ERROR_UNKNOWN, 0), CUDA_SUCCESS);  // disarmed again

  e.trace_start();
  EXPECT_EQ(e.MemRelease(h[0]), CUDA_SUCCESS);
  EXPECT_EQ(e.MemRelease(h[2]), CUDA_SUCCESS);
  EXPECT_EQ(e.MemFree(p), CUDA_SUCCESS);
  CUcontext c = nullptr;
  EXPECT_EQ(e.CtxGetCurrent(&c), CUDA_SUCCESS);
  e.trace_stop();
  EXPECT_EQ(e.MemGetInfo(nullptr, nullptr), CUDA_ERROR_INVALID_VALUE);  // not traced
  EXPECT_EQ(e.trace(), (std::vector<std::string>{"cuMemRelease", "cuMemRelease", "cuMemFree_v2", "cuCtxGetCurrent"}));
  char small[20];
  size_t need = e.trace_read_raw(small, sizeof small);
  EXPECT_EQ(need, std::strlen("cuMemRelease\ncuMemRelease\ncuMemFree_v2\ncuCtxGetCurrent\n") + 1);
  EXPECT_STREQ(small, "cuMemRelease\n") << "a cut trace ends with a whole name";
  e.reset();
  EXPECT_EQ(e.calls("cuMemRelease"), 0u);
  EXPECT_TRUE(e.trace().empty());
}

TEST(EmuDriver, ErrorNamesAndStrings) {
  REQUIRE_EMU();
  emucuda::Emu &e = emu();
  for (CUresult r : {CUDA_SUCCESS, CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_OUT_OF_MEMORY, CUDA_ERROR_NOT_INITIALIZED,
                     CUDA_ERROR_NO_DEVICE, CUDA_ERROR_INVALID_CONTEXT, CUDA_ERROR_INVALID_HANDLE, CUDA_ERROR_NOT_READY,
                     CUDA_ERROR_ILLEGAL_ADDRESS, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                     CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, CUDA_ERROR_STREAM_CAPTURE_IMPLICIT, CUDA_ERROR_UNKNOWN}) {
    const char *name = nullptr, *text = nullptr;
    ASSERT_EQ(e.GetErrorName(r, &name), CUDA_SUCCESS) << r;
    ASSERT_EQ(e.GetErrorString(r, &text), CUDA_SUCCESS) << r;
    EXPECT_EQ(std::string(name).rfind("CUDA_", 0), 0u) << name;
    EXPECT_GT(std::strlen(text), 5u);
  }
  const char *name = nullptr;
  EXPECT_EQ(e.GetErrorName(CUDA_ERROR_OUT_OF_MEMORY, &name), CUDA_SUCCESS);
  EXPECT_STREQ(name, "CUDA_ERROR_OUT_OF_MEMORY");
  name = "stale";
  EXPECT_EQ(e.GetErrorName(static_cast<CUresult>(12345), &name), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(name, nullptr);
}

}  // namespace
