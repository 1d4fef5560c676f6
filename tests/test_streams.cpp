// test_streams.cpp — stream semantics of the caching core: a freed block is
// reused at once on its own stream and never by another stream's pool, and
// mf_record_stream defers reuse until the simulated events complete.
#include <gtest/gtest.h>
#include <memfit/memfit.h>

#include "test_util.h"

#include <cstdint>
#include <cstring>
#include <memory>

namespace {

using namespace memfit_test;

constexpr uintptr_t kS1 = 0x1001, kS2 = 0x2002, kS3 = 0x3003;
constexpr const char *kConf = "backend:virtual,vmm:off,large_segment:2MiB,merge_segments:false";  // segments: exact counts

uintptr_t U(const void *p) { return reinterpret_cast<uintptr_t>(p); }

void *must_malloc(mf_allocator *a, size_t size, uintptr_t stream, int device = 0) {
  void *p = mf_malloc(a, device, size, stream);
  EXPECT_NE(p, nullptr) << "mf_malloc(" << size << ") failed: " << mf_last_error();
  return p;
}

void must_free(mf_allocator *a, void *p) { EXPECT_EQ(mf_free(a, p), MF_OK) << mf_last_error(); }

void record(mf_allocator *a, void *p, uintptr_t stream) {
  EXPECT_EQ(mf_record_stream(a, p, stream), MF_OK) << mf_last_error();
}

void complete(mf_allocator *a, int device, uintptr_t stream) {
  EXPECT_EQ(mf_backend_sim_complete(mf_allocator_backend(a), device, stream), MF_OK) << mf_last_error();
}

void expect_consistent(mf_allocator *a) { EXPECT_EQ(mf_check(a), MF_OK) << mf_last_error(); }

// ---------------------------------------------------------------- own stream

TEST(Streams, AFreedBlockIsReusedAtOnceOnItsOwnStream) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  for (uintptr_t stream : {(uintptr_t)0, kS1, (uintptr_t)0x7f00deadbeef}) {
    for (size_t size : {4 * KiB, 4 * MiB}) {
      SCOPED_TRACE(testing::Message() << "stream " << stream << " size " << size);
      void *p = must_malloc(a.get(), size, stream);
      must_free(a.get(), p);
      EXPECT_EQ(U(must_malloc(a.get(), size, stream)), U(p));
    }
  }
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.deferred_frees, 0);
  EXPECT_EQ(s.cache_hits, 6);
  EXPECT_EQ(s.segments.current, 6);  // a small and a large segment per stream
  expect_consistent(a.get());
}

TEST(Streams, AnotherStreamDoesNotReuseAFreedBlock) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  void *p = must_malloc(a.get(), 4 * MiB, kS1);
  must_free(a.get(), p);
  void *q = must_malloc(a.get(), 4 * MiB, kS2);
  EXPECT_NE(U(q), U(p));
  EXPECT_EQ(stats(a.get()).segments.current, 2);
  // Small pools are per stream too: stream 2 does not carve stream 1's segment.
  void *s = must_malloc(a.get(), 4 * KiB, kS1);
  must_free(a.get(), s);
  void *t = must_malloc(a.get(), 4 * KiB, kS2);
  EXPECT_NE(U(t), U(s));
  uintptr_t d = U(t) > U(s) ? U(t) - U(s) : U(s) - U(t);
  EXPECT_GE(d, 2 * MiB);
  EXPECT_EQ(stats(a.get()).segments.current, 4);
  // Stream 1 still gets its own cached blocks back.
  EXPECT_EQ(U(must_malloc(a.get(), 4 * MiB, kS1)), U(p));
  EXPECT_EQ(U(must_malloc(a.get(), 4 * KiB, kS1)), U(s));
  EXPECT_EQ(stats(a.get()).segments.current, 4);
  expect_consistent(a.get());
}

// ------------------------------------------------------------- record_stream

TEST(Streams, RecordStreamDefersReuseUntilTheEventCompletes) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  void *p = must_malloc(a.get(), 4 * MiB, kS1);
  record(a.get(), p, kS2);
  must_free(a.get(), p);
  EXPECT_EQ(stats(a.get()).deferred_frees, 1);
  expect_consistent(a.get());
  void *q = must_malloc(a.get(), 4 * MiB, kS1);  // p is not reusable yet
  EXPECT_NE(U(q), U(p));
  EXPECT_EQ(stats(a.get()).segments.current, 2);
  complete(a.get(), 0, kS2);
  EXPECT_EQ(U(must_malloc(a.get(), 4 * MiB, kS1)), U(p));
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.segments.current, 2);
  EXPECT_EQ(s.deferred_frees, 1);
  expect_consistent(a.get());
}

TEST(Streams, ADeferredFreeLeavesTheLiveStatsAtOnce) {
  // The stats count live blocks; a freed block waiting on an event is no longer
  // live (mf_block_info and mf_free reject it), whatever the cache does with it.
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  uint32_t layer = mf_layer_intern("streams.deferred.layer");
  mf_tag tag = {layer, MF_CAT_ACTIVATION, MF_PHASE_FORWARD};
  void *p = mf_malloc_tagged(a.get(), 0, 3 * MiB, kS1, tag);
  ASSERT_NE(p, nullptr);
  record(a.get(), p, kS2);
  must_free(a.get(), p);
  EXPECT_EQ(mf_block_info(a.get(), p, nullptr, nullptr, nullptr), MF_ERR_INVALID);
  EXPECT_EQ(mf_free(a.get(), p), MF_ERR_INVALID);
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.requested_bytes.current, 0);
  EXPECT_EQ(s.allocated_bytes.current, 0);
  EXPECT_EQ(s.active_blocks.current, 0);
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(4 * MiB));  // still cached, not reusable
  mf_tag_stats t;
  ASSERT_EQ(mf_get_tag_stats(a.get(), 0, MF_CAT_ACTIVATION, layer, &t), MF_OK);
  EXPECT_EQ(t.bytes.current, 0);
  EXPECT_EQ(t.blocks.current, 0);
  expect_consistent(a.get());
  complete(a.get(), 0, kS2);
  must_free(a.get(), must_malloc(a.get(), 4 * KiB, kS1));  // lets the core see the event
  s = stats(a.get());
  EXPECT_EQ(s.allocated_bytes.current, 0);
  EXPECT_EQ(s.active_blocks.current, 0);
  expect_consistent(a.get());
}

TEST(Streams, RecordStreamOnTheBlocksOwnStreamDoesNotDefer) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  void *p = must_malloc(a.get(), 4 * MiB, kS1);
  record(a.get(), p, kS1);
  must_free(a.get(), p);
  EXPECT_EQ(stats(a.get()).deferred_frees, 0);
  EXPECT_EQ(U(must_malloc(a.get(), 4 * MiB, kS1)), U(p));
}

TEST(Streams, EveryRecordedStreamMustComplete) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  void *p = must_malloc(a.get(), 4 * MiB, kS1);
  record(a.get(), p, kS2);
  record(a.get(), p, kS3);
  record(a.get(), p, kS3);  // twice on one stream: still one wait
  must_free(a.get(), p);
  EXPECT_EQ(stats(a.get()).deferred_frees, 1);
  complete(a.get(), 0, kS2);
  EXPECT_NE(U(must_malloc(a.get(), 4 * MiB, kS1)), U(p));  // kS3 still pending
  complete(a.get(), 0, kS3);
  EXPECT_EQ(U(must_malloc(a.get(), 4 * MiB, kS1)), U(p));
  expect_consistent(a.get());
}

TEST(Streams, TheEventIsRecordedWhenTheBlockIsFreed) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  void *p = must_malloc(a.get(), 4 * MiB, kS1);
  record(a.get(), p, kS2);
  complete(a.get(), 0, kS2);  // nothing recorded yet: completes nothing of p's
  must_free(a.get(), p);
  EXPECT_NE(U(must_malloc(a.get(), 4 * MiB, kS1)), U(p));
  complete(a.get(), 0, kS2);
  EXPECT_EQ(U(must_malloc(a.get(), 4 * MiB, kS1)), U(p));
  expect_consistent(a.get());
}

TEST(Streams, CompletingEveryStreamReleasesEveryDeferredFree) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  void *p = must_malloc(a.get(), 4 * MiB, kS1);
  void *q = must_malloc(a.get(), 6 * MiB, kS1);
  record(a.get(), p, kS2);
  record(a.get(), q, kS3);
  must_free(a.get(), p);
  must_free(a.get(), q);
  EXPECT_EQ(stats(a.get()).deferred_frees, 2);
  complete(a.get(), 0, UINTPTR_MAX);
  EXPECT_EQ(U(must_malloc(a.get(), 6 * MiB, kS1)), U(q));
  EXPECT_EQ(U(must_malloc(a.get(), 4 * MiB, kS1)), U(p));
  EXPECT_EQ(stats(a.get()).segments.current, 2);
  expect_consistent(a.get());
}

TEST(Streams, CompletionIsPerDevice) {
  Allocator a = create("backend:virtual,vmm:off,large_segment:2MiB,merge_segments:false,devices:2");
  ASSERT_TRUE(a);
  void *p = must_malloc(a.get(), 4 * MiB, kS1, 1);
  record(a.get(), p, kS2);
  must_free(a.get(), p);
  EXPECT_EQ(stats(a.get(), 1).deferred_frees, 1);
  EXPECT_EQ(stats(a.get(), 0).deferred_frees, 0);
  complete(a.get(), 0, kS2);  // the other device's stream of the same handle
  EXPECT_NE(U(must_malloc(a.get(), 4 * MiB, kS1, 1)), U(p));
  complete(a.get(), 1, kS2);
  EXPECT_EQ(U(must_malloc(a.get(), 4 * MiB, kS1, 1)), U(p));
  expect_consistent(a.get());
}

TEST(Streams, RecordStreamOfAnUnknownPointerIsInvalid) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  EXPECT_EQ(mf_record_stream(a.get(), reinterpret_cast<void *>(0x4000), kS2), MF_ERR_INVALID);
  EXPECT_STRNE(mf_last_error(), "");
  void *p = must_malloc(a.get(), 4 * KiB, kS1);
  must_free(a.get(), p);
  EXPECT_EQ(mf_record_stream(a.get(), p, kS2), MF_ERR_INVALID);  // already freed
  EXPECT_STRNE(mf_last_error(), "");
}

// ------------------------------------------------ waiting on pending events

TEST(Streams, EmptyCacheWaitsForPendingEvents) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  void *p = must_malloc(a.get(), 4 * MiB, kS1);
  void *s = must_malloc(a.get(), 4 * KiB, kS1);
  record(a.get(), p, kS2);
  record(a.get(), s, kS2);
  must_free(a.get(), p);
  must_free(a.get(), s);
  EXPECT_EQ(stats(a.get()).reserved_bytes.current, (int64_t)(6 * MiB));
  ASSERT_EQ(mf_empty_cache(a.get()), MF_OK) << mf_last_error();
  mf_stats st = stats(a.get());
  EXPECT_EQ(st.reserved_bytes.current, 0);
  EXPECT_EQ(st.segments.current, 0);
  EXPECT_EQ(st.allocated_bytes.current, 0);
  expect_consistent(a.get());
}

TEST(Streams, EmptyCacheReleasesTheCacheOfEveryStream) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  for (uintptr_t s : {(uintptr_t)0, kS1, kS2, kS3}) {
    void *small = must_malloc(a.get(), 4 * KiB, s);
    void *large = must_malloc(a.get(), 4 * MiB, s);
    must_free(a.get(), small);
    must_free(a.get(), large);
  }
  EXPECT_EQ(stats(a.get()).segments.current, 8);
  ASSERT_EQ(mf_empty_cache(a.get()), MF_OK);
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.segments.current, 0);
  EXPECT_EQ(s.reserved_bytes.current, 0);
  expect_consistent(a.get());
}

TEST(Streams, DestroyForgetsLiveAndPendingBlocks) {
  // Run under ASan/LSan: destroying with live blocks and pending events leaks nothing.
  for (const char *conf : {kConf, "backend:host,capacity:64MiB"}) {
    SCOPED_TRACE(conf);
    mf_allocator *a = nullptr;
    ASSERT_EQ(mf_allocator_create(conf, &a), MF_OK) << mf_last_error();
    void *live = mf_malloc(a, 0, 4 * MiB, kS1);
    void *pending = mf_malloc(a, 0, 64 * KiB, kS1);
    ASSERT_TRUE(live && pending);
    EXPECT_EQ(mf_record_stream(a, pending, kS2), MF_OK);
    EXPECT_EQ(mf_record_stream(a, live, kS3), MF_OK);
    EXPECT_EQ(mf_free(a, pending), MF_OK);
    mf_allocator_destroy(a);
  }
}

TEST(Streams, OomLadderWaitsForPendingEvents) {
  Allocator a = create("backend:virtual,vmm:off,large_segment:2MiB,merge_segments:false,capacity:8MiB");
  ASSERT_TRUE(a);
  // On the same stream: after the wait the block itself may serve the request.
  void *p = must_malloc(a.get(), 6 * MiB, kS1);
  record(a.get(), p, kS2);
  must_free(a.get(), p);
  void *q = mf_malloc(a.get(), 0, 6 * MiB, kS1);
  ASSERT_NE(q, nullptr) << mf_last_error();
  EXPECT_EQ(stats(a.get()).ooms, 0);
  EXPECT_LE(stats(a.get()).reserved_bytes.current, (int64_t)(8 * MiB));
  // On another stream: the waited-for segment must also be released.
  record(a.get(), q, kS2);
  must_free(a.get(), q);
  void *r = mf_malloc(a.get(), 0, 6 * MiB, kS3);
  ASSERT_NE(r, nullptr) << mf_last_error();
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.ooms, 0);
  EXPECT_EQ(s.segments.current, 1);
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(6 * MiB));
  EXPECT_GE(s.ladder_releases, 1);
  expect_consistent(a.get());
}

TEST(Streams, HostBackendDefersReuseToo) {
  Allocator a = create("backend:host,vmm:off,large_segment:2MiB,merge_segments:false,capacity:64MiB");
  ASSERT_TRUE(a);
  void *p = must_malloc(a.get(), 4 * MiB, kS1);
  ASSERT_NE(p, nullptr);
  memset(p, 0x11, 4 * MiB);
  record(a.get(), p, kS2);
  must_free(a.get(), p);
  void *q = must_malloc(a.get(), 4 * MiB, kS1);
  ASSERT_NE(q, nullptr);
  EXPECT_NE(U(q), U(p));
  memset(q, 0x22, 4 * MiB);
  complete(a.get(), 0, kS2);
  void *r = must_malloc(a.get(), 4 * MiB, kS1);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(U(r), U(p));
  memset(r, 0x33, 4 * MiB);
  expect_consistent(a.get());
}

}  // namespace
