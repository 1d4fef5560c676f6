// test_pools.cpp — the pool policy of the caching core on the virtual backend:
// 512 B rounding, the small (<= 1 MiB, 2 MiB segments) and large pools, best
// fit, splitting, coalescing, max_split_size, empty_cache and per-device pools.
#include <gtest/gtest.h>
#include <memfit/memfit.h>

#include "test_util.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace {

using namespace memfit_test;

// Policy constants of allocator/src/internal.h (not exported by the library).
constexpr size_t kRound = 512;
constexpr size_t kSmallSegment = 2 * MiB;

// The segment policy (vmm:off; the page-mapped pools are in test_vmm.cpp):
// with large_segment:2MiB and no merging, every large miss maps exactly
// round_up(size, 2 MiB), so that reserved bytes and segment counts are exact.
constexpr const char *kConf = "backend:virtual,vmm:off,large_segment:2MiB,merge_segments:false";

// Cached bytes: reserved but not in live blocks.
int64_t free_bytes(const mf_stats &s) { return s.reserved_bytes.current - s.allocated_bytes.current; }

uintptr_t U(const void *p) { return reinterpret_cast<uintptr_t>(p); }
void *at(void *base, size_t offset) {  // address arithmetic only: never dereferenced
  return reinterpret_cast<void *>(U(base) + offset);
}

void *must_malloc(mf_allocator *a, size_t size, uintptr_t stream = 0, int device = 0) {
  void *p = mf_malloc(a, device, size, stream);
  EXPECT_NE(p, nullptr) << "mf_malloc(" << size << ") failed: " << mf_last_error();
  return p;
}

void must_free(mf_allocator *a, void *p) {
  EXPECT_EQ(mf_free(a, p), MF_OK) << mf_last_error();
}

// Free two blocks allocated while both were live (so that each has its segment).
void free_both(mf_allocator *a, void *p, void *q) {
  must_free(a, p);
  must_free(a, q);
}

void expect_consistent(mf_allocator *a) { EXPECT_EQ(mf_check(a), MF_OK) << mf_last_error(); }

size_t block_size(mf_allocator *a, void *p) {
  size_t requested = 0, size = 0;
  mf_tag tag;
  EXPECT_EQ(mf_block_info(a, p, &tag, &requested, &size), MF_OK) << mf_last_error();
  return size;
}

std::string lower(std::string s) {
  for (char &c : s) c = (char)std::tolower((unsigned char)c);
  return s;
}

// ------------------------------------------------------------------ rounding

TEST(Pools, RoundsRequestsUpTo512Bytes) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  struct Case {
    size_t request, block;
  } cases[] = {{1, 512},         {511, 512},   {512, 512},
               {513, 1024},      {1000, 1024}, {4096, 4096},
               {100 * KiB + 1, 100 * KiB + 512}, {MiB - 1, MiB}};
  size_t requested = 0, allocated = 0;
  for (const Case &c : cases) {
    void *p = must_malloc(a.get(), c.request);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(U(p) % kRound, 0u) << "request " << c.request;
    mf_tag tag;
    size_t req = 0, size = 0;
    ASSERT_EQ(mf_block_info(a.get(), p, &tag, &req, &size), MF_OK) << mf_last_error();
    EXPECT_EQ(req, c.request);
    EXPECT_EQ(size, c.block) << "request " << c.request;
    requested += c.request;
    allocated += c.block;
  }
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.requested_bytes.current, (int64_t)requested);
  EXPECT_EQ(s.allocated_bytes.current, (int64_t)allocated);
  EXPECT_EQ(s.active_blocks.current, (int64_t)(sizeof cases / sizeof cases[0]));
  EXPECT_EQ(s.segments.current, 1);  // all of them fit one 2 MiB small segment
  expect_consistent(a.get());
}

TEST(Pools, LargeBlockKeepsARemainderAboveOneMiB) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  // 4.5 MiB - 100 rounds to 4.5 MiB in a 6 MiB segment: the 1.5 MiB remainder is split off.
  void *p = must_malloc(a.get(), 4 * MiB + 512 * KiB - 100);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(block_size(a.get(), p), 4 * MiB + 512 * KiB);
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(6 * MiB));
  EXPECT_EQ(free_bytes(s), (int64_t)(1 * MiB + 512 * KiB));
  // A 1 MiB remainder is not above large_split (1 MiB): the block keeps it.
  void *q = must_malloc(a.get(), 3 * MiB);
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(block_size(a.get(), q), 4 * MiB);
  EXPECT_EQ(stats(a.get()).reserved_bytes.current, (int64_t)(10 * MiB));
  expect_consistent(a.get());
}

TEST(Pools, SegmentRoundSetsTheLargeSegmentGranularity) {
  Allocator a = create("backend:virtual,vmm:off,capacity:1GiB,segment_round:64KiB,large_segment:0");
  ASSERT_TRUE(a);
  void *p = must_malloc(a.get(), 3 * MiB + 100);  // rounds to 3 MiB + 512, in a 3 MiB + 64 KiB segment
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(stats(a.get()).reserved_bytes.current, (int64_t)(3 * MiB + 64 * KiB));
  expect_consistent(a.get());
  mf_allocator *bad = nullptr;
  EXPECT_EQ(mf_allocator_create("backend:virtual,segment_round:1000", &bad), MF_ERR_INVALID);
  EXPECT_NE(std::string(mf_last_error()).find("segment_round"), std::string::npos) << mf_last_error();
  EXPECT_EQ(mf_allocator_create("backend:virtual,segment_round:0", &bad), MF_ERR_INVALID);
}

TEST(Pools, LargeSplitZeroSplitsEveryRemainder) {
  Allocator a = create("backend:virtual,capacity:1GiB,large_split:0");
  ASSERT_TRUE(a);
  // 3 MiB in a 4 MiB segment: with large_split 0 the 1 MiB remainder is split off,
  // so allocated bytes equal the rounded request.
  void *q = must_malloc(a.get(), 3 * MiB);
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(block_size(a.get(), q), 3 * MiB);
  void *r = must_malloc(a.get(), 1 * MiB + 512);  // large pool; fits the remainder? no: 1 MiB free only
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(block_size(a.get(), r), 1 * MiB + 512);
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.allocated_bytes.current, (int64_t)(4 * MiB + 512));
  expect_consistent(a.get());
}

// ------------------------------------------------------------- small / large

TEST(Pools, SmallRequestsShareTwoMiBSegments) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  void *p1 = must_malloc(a.get(), 1000);
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.segments.current, 1);
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)kSmallSegment);
  void *p2 = must_malloc(a.get(), 100 * KiB);
  s = stats(a.get());
  EXPECT_EQ(s.segments.current, 1);
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)kSmallSegment);
  uintptr_t d = U(p1) > U(p2) ? U(p1) - U(p2) : U(p2) - U(p1);
  EXPECT_LT(d, kSmallSegment);

  // Four 512 KiB requests fill one segment exactly; the fifth maps another.
  Allocator b = create(kConf);
  ASSERT_TRUE(b);
  for (int i = 0; i < 4; i++) must_malloc(b.get(), 512 * KiB);
  s = stats(b.get());
  EXPECT_EQ(s.segments.current, 1);
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)kSmallSegment);
  must_malloc(b.get(), 512 * KiB);
  s = stats(b.get());
  EXPECT_EQ(s.segments.current, 2);
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(2 * kSmallSegment));

  // Exactly 1 MiB is still a small request: two share one segment.
  Allocator c = create(kConf);
  ASSERT_TRUE(c);
  void *m1 = must_malloc(c.get(), MiB);
  void *m2 = must_malloc(c.get(), MiB);
  s = stats(c.get());
  EXPECT_EQ(s.segments.current, 1);
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)kSmallSegment);
  EXPECT_EQ(U(m2), U(m1) + MiB);
  expect_consistent(a.get());
  expect_consistent(b.get());
  expect_consistent(c.get());
}

TEST(Pools, LargeRequestsGetTheirOwnSegments) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  void *small = must_malloc(a.get(), 512);
  ASSERT_NE(small, nullptr);
  // 1 MiB + 1 is large: it does not go into the small segment's free 2 MiB - 512.
  void *big = must_malloc(a.get(), MiB + 1);
  ASSERT_NE(big, nullptr);
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.segments.current, 2);
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(4 * MiB));
  void *big2 = must_malloc(a.get(), 3 * MiB);
  ASSERT_NE(big2, nullptr);
  s = stats(a.get());
  EXPECT_EQ(s.segments.current, 3);
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(8 * MiB));

  // A cached large block does not serve a small request: it is carved from
  // the small segment, right after the first block.
  must_free(a.get(), big);
  void *s2 = must_malloc(a.get(), 256 * KiB);
  EXPECT_EQ(U(s2), U(small) + 512);
  EXPECT_EQ(stats(a.get()).segments.current, 3);

  // Everything free: a large request takes the cached 2 MiB large block, a
  // small one the (whole, free) small segment, and no segment is mapped.
  must_free(a.get(), small);
  must_free(a.get(), s2);
  must_free(a.get(), big2);
  void *l = must_malloc(a.get(), MiB + 512 * KiB);
  EXPECT_EQ(U(l), U(big));
  void *m = must_malloc(a.get(), 800 * KiB);
  EXPECT_EQ(U(m), U(small));
  EXPECT_EQ(stats(a.get()).segments.current, 3);
  EXPECT_EQ(stats(a.get()).segment_maps, 3);
  expect_consistent(a.get());
}

TEST(Pools, LargeSegmentOptionIsTheMinimumLargeSegment) {
  Allocator a = create("backend:virtual,vmm:off,large_segment:20MiB,merge_segments:false");
  ASSERT_TRUE(a);
  void *p1 = must_malloc(a.get(), 3 * MiB);
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.segments.current, 1);
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(20 * MiB));
  void *p2 = must_malloc(a.get(), 3 * MiB);  // carved from the same segment
  EXPECT_EQ(U(p2), U(p1) + 3 * MiB);
  EXPECT_EQ(stats(a.get()).segments.current, 1);
  must_malloc(a.get(), 30 * MiB);  // above the minimum: its own rounded size
  s = stats(a.get());
  EXPECT_EQ(s.segments.current, 2);
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(50 * MiB));
  must_malloc(a.get(), 4 * KiB);  // small: a 2 MiB small segment, not the large one
  s = stats(a.get());
  EXPECT_EQ(s.segments.current, 3);
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(52 * MiB));
  expect_consistent(a.get());
}

// ------------------------------------------------------------------ best fit

TEST(Pools, BestFitTakesTheSmallestLargeBlockThatFits) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  void *p4 = must_malloc(a.get(), 4 * MiB);
  void *p8 = must_malloc(a.get(), 8 * MiB);
  void *p6 = must_malloc(a.get(), 6 * MiB);
  must_free(a.get(), p8);
  must_free(a.get(), p4);
  must_free(a.get(), p6);
  EXPECT_EQ(stats(a.get()).reserved_bytes.current, (int64_t)(18 * MiB));
  EXPECT_EQ(U(must_malloc(a.get(), 5 * MiB + 512 * KiB)), U(p6));
  EXPECT_EQ(U(must_malloc(a.get(), 7 * MiB)), U(p8));
  EXPECT_EQ(U(must_malloc(a.get(), 3 * MiB + 512 * KiB)), U(p4));
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.segments.current, 3);
  EXPECT_EQ(s.segment_maps, 3);
  EXPECT_EQ(s.cache_hits, 3);
  EXPECT_EQ(s.cache_misses, 3);
  expect_consistent(a.get());
}

TEST(Pools, BestFitTakesTheSmallestSmallBlockThatFits) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  // Free holes of 64, 16 and 32 KiB, kept apart by live 512 B guards, and the
  // large free tail of the segment.
  void *A = must_malloc(a.get(), 64 * KiB);
  must_malloc(a.get(), 512);
  void *B = must_malloc(a.get(), 16 * KiB);
  must_malloc(a.get(), 512);
  void *C = must_malloc(a.get(), 32 * KiB);
  must_malloc(a.get(), 512);
  must_free(a.get(), A);
  must_free(a.get(), B);
  must_free(a.get(), C);
  expect_consistent(a.get());
  EXPECT_EQ(U(must_malloc(a.get(), 10 * KiB)), U(B));
  EXPECT_EQ(U(must_malloc(a.get(), 20 * KiB)), U(C));
  EXPECT_EQ(U(must_malloc(a.get(), 40 * KiB)), U(A));
  // The 16 KiB hole is now a 6 KiB remainder: a 6 KiB request fits it exactly.
  EXPECT_EQ(U(must_malloc(a.get(), 6 * KiB)), U(B) + 10 * KiB);
  EXPECT_EQ(stats(a.get()).segments.current, 1);
  expect_consistent(a.get());
}

// ----------------------------------------------------------------- splitting

TEST(Pools, AFreedLargeBlockIsSplitForTwoRequests) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  void *p = must_malloc(a.get(), 8 * MiB);
  must_free(a.get(), p);
  void *q = must_malloc(a.get(), 3 * MiB);
  EXPECT_EQ(U(q), U(p));
  EXPECT_EQ(block_size(a.get(), q), 3 * MiB);
  EXPECT_EQ(free_bytes(stats(a.get())), (int64_t)(5 * MiB));
  void *r = must_malloc(a.get(), 4 * MiB);
  EXPECT_EQ(U(r), U(p) + 3 * MiB);
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.segments.current, 1);
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(8 * MiB));
  EXPECT_EQ(s.segment_maps, 1);
  expect_consistent(a.get());
}

TEST(Pools, SmallBlocksAreCarvedBackToBack) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  void *p = must_malloc(a.get(), 1000);
  void *q = must_malloc(a.get(), 1000);
  void *r = must_malloc(a.get(), 3000);
  void *t = must_malloc(a.get(), 1);
  EXPECT_EQ(U(q), U(p) + 1024);
  EXPECT_EQ(U(r), U(p) + 2048);
  EXPECT_EQ(U(t), U(p) + 2048 + 3072);
  mf_stats s = stats(a.get());
  EXPECT_EQ(free_bytes(s), (int64_t)(kSmallSegment - 2048 - 3072 - 512));
  expect_consistent(a.get());
}

// ---------------------------------------------------------------- coalescing

TEST(Pools, FreeSmallNeighboursCoalesceInAnyOrder) {
  const size_t sizes[3] = {8 * KiB, 24 * KiB, 16 * KiB};
  int order[3] = {0, 1, 2};
  do {
    SCOPED_TRACE(testing::Message() << "free order " << order[0] << order[1] << order[2]);
    Allocator a = create(kConf);
    ASSERT_TRUE(a);
    void *blk[3];
    for (int i = 0; i < 3; i++) blk[i] = must_malloc(a.get(), sizes[i]);
    EXPECT_EQ(U(blk[1]), U(blk[0]) + sizes[0]);
    EXPECT_EQ(U(blk[2]), U(blk[1]) + sizes[1]);
    must_malloc(a.get(), 4 * KiB);  // guard: keeps the three apart from the free tail
    for (int i : order) {
      must_free(a.get(), blk[i]);
      expect_consistent(a.get());
    }
    void *all = must_malloc(a.get(), sizes[0] + sizes[1] + sizes[2]);
    EXPECT_EQ(U(all), U(blk[0]));
    EXPECT_EQ(block_size(a.get(), all), sizes[0] + sizes[1] + sizes[2]);
    mf_stats s = stats(a.get());
    EXPECT_EQ(s.segments.current, 1);
    EXPECT_EQ(s.segment_maps, 1);
  } while (std::next_permutation(order, order + 3));
}

TEST(Pools, FreeLargeNeighboursCoalesceInAnyOrder) {
  int order[3] = {0, 1, 2};
  do {
    SCOPED_TRACE(testing::Message() << "free order " << order[0] << order[1] << order[2]);
    Allocator a = create(kConf);
    ASSERT_TRUE(a);
    void *seg = must_malloc(a.get(), 12 * MiB);
    must_free(a.get(), seg);
    void *blk[4];
    for (int i = 0; i < 4; i++) {
      blk[i] = must_malloc(a.get(), 3 * MiB);
      EXPECT_EQ(U(blk[i]), U(seg) + i * 3 * MiB);
    }
    for (int i : order) {
      must_free(a.get(), blk[i]);
      expect_consistent(a.get());
    }
    void *all = must_malloc(a.get(), 9 * MiB);
    EXPECT_EQ(U(all), U(seg));
    mf_stats s = stats(a.get());
    EXPECT_EQ(s.segments.current, 1);
    EXPECT_EQ(s.segment_maps, 1);
    EXPECT_EQ(s.reserved_bytes.current, (int64_t)(12 * MiB));
  } while (std::next_permutation(order, order + 3));
}

TEST(Pools, AFullyFreedSegmentCoalescesIntoOneBlock) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  std::vector<void *> ptrs;
  for (int i = 0; i < 20; i++) ptrs.push_back(must_malloc(a.get(), (i % 5 + 1) * 4 * KiB));
  // Free every other block first, then the rest.
  for (size_t i = 0; i < ptrs.size(); i += 2) must_free(a.get(), ptrs[i]);
  for (size_t i = 1; i < ptrs.size(); i += 2) must_free(a.get(), ptrs[i]);
  expect_consistent(a.get());
  // The segment is one free 2 MiB block again: two 1 MiB requests tile it from
  // its start (fragments would leave the first one to the free tail).
  EXPECT_EQ(U(must_malloc(a.get(), MiB)), U(ptrs[0]));
  EXPECT_EQ(U(must_malloc(a.get(), MiB)), U(ptrs[0]) + MiB);
  EXPECT_EQ(stats(a.get()).segments.current, 1);
}

// -------------------------------------------------------------- hits, misses

TEST(Pools, CountsCacheHitsAndMisses) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.cache_hits, 0);
  EXPECT_EQ(s.cache_misses, 0);
  void *p = must_malloc(a.get(), 4 * KiB);
  s = stats(a.get());
  EXPECT_EQ(s.cache_misses, 1);
  EXPECT_EQ(s.cache_hits, 0);
  EXPECT_EQ(s.segment_maps, 1);
  must_malloc(a.get(), 4 * KiB);  // from the segment's cached remainder
  s = stats(a.get());
  EXPECT_EQ(s.cache_misses, 1);
  EXPECT_EQ(s.cache_hits, 1);
  must_free(a.get(), p);
  EXPECT_EQ(U(must_malloc(a.get(), 4 * KiB)), U(p));
  EXPECT_EQ(stats(a.get()).cache_hits, 2);
  void *l = must_malloc(a.get(), 4 * MiB);
  s = stats(a.get());
  EXPECT_EQ(s.cache_misses, 2);
  EXPECT_EQ(s.segment_maps, 2);
  must_free(a.get(), l);
  EXPECT_EQ(U(must_malloc(a.get(), 4 * MiB)), U(l));
  s = stats(a.get());
  EXPECT_EQ(s.cache_hits, 3);
  EXPECT_EQ(s.cache_misses, 2);
  EXPECT_EQ(s.allocs, 5);
  EXPECT_EQ(s.frees, 2);
  EXPECT_EQ(s.allocs, s.cache_hits + s.cache_misses);
}

// ------------------------------------------------------------ max_split_size

TEST(Pools, MaxSplitSizeKeepsOversizeBlocksWhole) {
  const char *conf = "backend:virtual,vmm:off,large_segment:2MiB,merge_segments:false,max_split_size:8MiB";
  Allocator a = create(conf);
  ASSERT_TRUE(a);
  void *big = must_malloc(a.get(), 16 * MiB);
  must_free(a.get(), big);
  // A 12 MiB request may use the 16 MiB oversize block, but does not split it.
  void *q = must_malloc(a.get(), 12 * MiB);
  EXPECT_EQ(U(q), U(big));
  EXPECT_EQ(block_size(a.get(), q), 16 * MiB);
  mf_stats s = stats(a.get());
  EXPECT_EQ(free_bytes(s), 0);
  EXPECT_EQ(s.segments.current, 1);
  expect_consistent(a.get());
}

TEST(Pools, BlockOfExactlyMaxSplitSizeStillSplits) {
  // "cached blocks larger than this are never split": 8 MiB is not larger.
  Allocator b = create("backend:virtual,vmm:off,large_segment:2MiB,merge_segments:false,max_split_size:8MiB");
  ASSERT_TRUE(b);
  void *m = must_malloc(b.get(), 8 * MiB);
  must_free(b.get(), m);
  void *n = must_malloc(b.get(), 3 * MiB);
  EXPECT_EQ(U(n), U(m));
  EXPECT_EQ(block_size(b.get(), n), 3 * MiB);
  EXPECT_EQ(free_bytes(stats(b.get())), (int64_t)(5 * MiB));
  EXPECT_EQ(stats(b.get()).segments.current, 1);
  expect_consistent(b.get());
}

TEST(Pools, OversizeBlockIsNotUsedForARequestBelowMaxSplitSize) {
  Allocator a = create("backend:virtual,vmm:off,large_segment:2MiB,merge_segments:false,max_split_size:8MiB");
  ASSERT_TRUE(a);
  void *big = must_malloc(a.get(), 16 * MiB);
  must_free(a.get(), big);
  // 2 MiB would pin a whole unsplittable 16 MiB block: a new segment instead.
  void *r = must_malloc(a.get(), 2 * MiB);
  EXPECT_NE(U(r), U(big));
  EXPECT_EQ(stats(a.get()).segments.current, 2);
  expect_consistent(a.get());
}

TEST(Pools, OversizeBlockServesOnlyRequestsWithinTheSlack) {
  Allocator a = create("backend:virtual,vmm:off,large_segment:2MiB,merge_segments:false,max_split_size:8MiB");
  ASSERT_TRUE(a);
  void *big = must_malloc(a.get(), 64 * MiB);
  must_free(a.get(), big);
  void *r = must_malloc(a.get(), 40 * MiB);  // 24 MiB smaller: beyond the 20 MiB slack
  EXPECT_NE(U(r), U(big));
  EXPECT_EQ(stats(a.get()).segments.current, 2);
  void *t = must_malloc(a.get(), 48 * MiB);  // 16 MiB smaller: within it
  EXPECT_EQ(U(t), U(big));
  EXPECT_EQ(block_size(a.get(), t), 64 * MiB);
  EXPECT_EQ(stats(a.get()).segments.current, 2);
  expect_consistent(a.get());
}

// ------------------------------------------------------------ merge_segments

TEST(Pools, MergeSegmentsReplacesWhollyFreeSegmentsOnAMiss) {
  const char *conf = "backend:virtual,vmm:off,large_segment:2MiB,merge_segments:true";
  // A miss for 12 MiB with 4 + 6 MiB wholly free: both go, one 12 MiB segment comes.
  Allocator a = create(conf);
  ASSERT_TRUE(a);
  free_both(a.get(), must_malloc(a.get(), 4 * MiB), must_malloc(a.get(), 6 * MiB));
  EXPECT_EQ(stats(a.get()).segments.current, 2);
  void *r = must_malloc(a.get(), 12 * MiB);
  ASSERT_NE(r, nullptr);
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.segments.current, 1);
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(12 * MiB));
  EXPECT_EQ(s.segment_unmaps, 2);
  expect_consistent(a.get());

  // A miss for 8 MiB: the merged segment covers the released 10 MiB, and its
  // remainder serves the next request.
  Allocator b = create(conf);
  ASSERT_TRUE(b);
  free_both(b.get(), must_malloc(b.get(), 4 * MiB), must_malloc(b.get(), 6 * MiB));
  EXPECT_EQ(stats(b.get()).segments.current, 2);
  void *q = must_malloc(b.get(), 8 * MiB);
  s = stats(b.get());
  EXPECT_EQ(s.segments.current, 1);
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(10 * MiB));
  EXPECT_EQ(block_size(b.get(), q), 8 * MiB);
  EXPECT_EQ(U(must_malloc(b.get(), 2 * MiB)), U(q) + 8 * MiB);
  EXPECT_EQ(stats(b.get()).segments.current, 1);
  expect_consistent(b.get());
}

TEST(Pools, MergeSegmentsLeavesOversizeSegmentsAlone) {
  Allocator a = create("backend:virtual,vmm:off,large_segment:2MiB,merge_segments:true,max_split_size:8MiB");
  ASSERT_TRUE(a);
  free_both(a.get(), must_malloc(a.get(), 16 * MiB), must_malloc(a.get(), 4 * MiB));
  EXPECT_EQ(stats(a.get()).segments.current, 2);  // the 16 MiB one is oversize: cached whole
  // 6 MiB misses (the 16 MiB block is oversize): the 4 MiB segment may be merged
  // into the new one, but the request must not end up in an unsplittable block.
  void *r = must_malloc(a.get(), 6 * MiB);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(block_size(a.get(), r), 6 * MiB);
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(16 * MiB + 6 * MiB));
  EXPECT_EQ(s.segments.current, 2);
  expect_consistent(a.get());
}

// --------------------------------------------------------------- empty_cache

TEST(Pools, EmptyCacheReleasesOnlyWholeFreeSegments) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  void *s = must_malloc(a.get(), 4 * KiB);
  void *l1 = must_malloc(a.get(), 12 * MiB);
  void *l2 = must_malloc(a.get(), 6 * MiB);
  void *l3 = must_malloc(a.get(), 10 * MiB);
  must_free(a.get(), l1);
  must_free(a.get(), l2);
  must_free(a.get(), l3);
  void *part = must_malloc(a.get(), 8 * MiB);  // best fit: splits l3's 10 MiB segment
  EXPECT_EQ(U(part), U(l3));
  mf_stats st = stats(a.get());
  EXPECT_EQ(st.reserved_bytes.current, (int64_t)(30 * MiB));
  EXPECT_EQ(st.segments.current, 4);

  ASSERT_EQ(mf_empty_cache(a.get()), MF_OK) << mf_last_error();
  st = stats(a.get());
  EXPECT_EQ(st.reserved_bytes.current, (int64_t)(12 * MiB));  // small 2 + l3's 10
  EXPECT_EQ(st.segments.current, 2);
  EXPECT_EQ(st.segment_unmaps, 2);
  EXPECT_EQ(st.reserved_bytes.peak, (int64_t)(30 * MiB));
  expect_consistent(a.get());

  must_free(a.get(), s);
  must_free(a.get(), part);
  ASSERT_EQ(mf_empty_cache(a.get()), MF_OK) << mf_last_error();
  st = stats(a.get());
  EXPECT_EQ(st.reserved_bytes.current, 0);
  EXPECT_EQ(st.segments.current, 0);
  EXPECT_EQ(st.segment_unmaps, 4);
  EXPECT_EQ(st.allocated_bytes.current, 0);
  expect_consistent(a.get());

  // The allocator maps again afterwards.
  must_malloc(a.get(), 4 * MiB);
  EXPECT_EQ(stats(a.get()).segments.current, 1);
  EXPECT_EQ(stats(a.get()).segment_maps, 5);
}

// ------------------------------------------------------------- edge requests

TEST(Pools, ZeroByteRequestsGetUniqueSmallestBlocks) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  void *p = mf_malloc(a.get(), 0, 0, 0);
  void *q = mf_malloc(a.get(), 0, 0, 0);
  ASSERT_NE(p, nullptr) << mf_last_error();
  ASSERT_NE(q, nullptr) << mf_last_error();
  EXPECT_NE(p, q);
  mf_tag tag;
  size_t req = 99, size = 0;
  ASSERT_EQ(mf_block_info(a.get(), p, &tag, &req, &size), MF_OK);
  EXPECT_EQ(req, 0u);
  EXPECT_EQ(size, kRound);
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.requested_bytes.current, 0);
  EXPECT_EQ(s.allocated_bytes.current, (int64_t)(2 * kRound));
  EXPECT_EQ(s.active_blocks.current, 2);
  must_free(a.get(), p);
  must_free(a.get(), q);
  EXPECT_EQ(stats(a.get()).active_blocks.current, 0);
  expect_consistent(a.get());
}

TEST(Pools, ImpossibleSizesFailAsBadArguments) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  EXPECT_EQ(mf_malloc(a.get(), 0, SIZE_MAX, 0), nullptr);
  EXPECT_STRNE(mf_last_error(), "");
  EXPECT_EQ(mf_malloc(a.get(), 0, SIZE_MAX - 100, 0), nullptr);  // must not wrap when rounded
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.allocs, 0);
  EXPECT_EQ(s.segments.current, 0);
  EXPECT_NE(mf_malloc(a.get(), 0, 4 * KiB, 0), nullptr);  // and it still works
  expect_consistent(a.get());
}

TEST(Pools, FreeOfNullIsANoOp) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  EXPECT_EQ(mf_free(a.get(), nullptr), MF_OK);
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.frees, 0);
  EXPECT_EQ(s.segments.current, 0);
}

TEST(Pools, FreeOfAnUnknownPointerIsInvalid) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  void *p = must_malloc(a.get(), 4 * KiB);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(mf_free(a.get(), reinterpret_cast<void *>(0x1000)), MF_ERR_INVALID);
  EXPECT_STRNE(mf_last_error(), "");
  EXPECT_EQ(mf_free(a.get(), at(p, 512)), MF_ERR_INVALID);  // inside a live block
  EXPECT_STRNE(mf_last_error(), "");
  must_free(a.get(), p);
  EXPECT_EQ(mf_free(a.get(), p), MF_ERR_INVALID);  // double free
  EXPECT_STRNE(mf_last_error(), "");
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.frees, 1);
  EXPECT_EQ(s.active_blocks.current, 0);
  expect_consistent(a.get());
}

TEST(Pools, DeviceOutOfRangeFailsWithAMessage) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  ASSERT_EQ(mf_allocator_device_count(a.get()), 1);
  EXPECT_EQ(mf_malloc(a.get(), 1, 4 * KiB, 0), nullptr);
  EXPECT_NE(lower(mf_last_error()).find("device"), std::string::npos) << mf_last_error();
  EXPECT_EQ(mf_malloc(a.get(), -1, 4 * KiB, 0), nullptr);
  EXPECT_STRNE(mf_last_error(), "");
  mf_tag tag = {0, MF_CAT_OTHER, MF_PHASE_NONE};
  EXPECT_EQ(mf_malloc_tagged(a.get(), 7, 4 * KiB, 0, tag), nullptr);
  EXPECT_STRNE(mf_last_error(), "");
  mf_stats out;
  EXPECT_EQ(mf_get_stats(a.get(), 1, &out), MF_ERR_INVALID);
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.allocs, 0);
  EXPECT_EQ(s.ooms, 0);
  EXPECT_EQ(s.segments.current, 0);
}

// ------------------------------------------------------------------ devices

TEST(Pools, DevicesHaveIndependentPools) {
  Allocator a = create("backend:virtual,vmm:off,large_segment:2MiB,merge_segments:false,devices:2");
  ASSERT_TRUE(a);
  ASSERT_EQ(mf_allocator_device_count(a.get()), 2);
  void *p0 = must_malloc(a.get(), 4 * MiB, 0, 0);
  void *p1 = must_malloc(a.get(), 4 * MiB, 0, 1);
  EXPECT_EQ(mf_device_of(a.get(), p0), 0);
  EXPECT_EQ(mf_device_of(a.get(), p1), 1);
  for (int d = 0; d < 2; d++) {
    mf_stats s = stats(a.get(), d);
    EXPECT_EQ(s.segments.current, 1) << "device " << d;
    EXPECT_EQ(s.reserved_bytes.current, (int64_t)(4 * MiB)) << "device " << d;
    EXPECT_EQ(s.allocs, 1) << "device " << d;
  }
  // Device 0's cached block does not serve device 1.
  must_free(a.get(), p0);
  void *q = must_malloc(a.get(), 4 * MiB, 0, 1);
  EXPECT_NE(U(q), U(p0));
  EXPECT_EQ(mf_device_of(a.get(), q), 1);
  EXPECT_EQ(stats(a.get(), 1).segments.current, 2);
  EXPECT_EQ(stats(a.get(), 0).segments.current, 1);
  EXPECT_EQ(U(must_malloc(a.get(), 4 * MiB, 0, 0)), U(p0));
  // Each device has its own small segments.
  void *s0 = must_malloc(a.get(), KiB, 0, 0);
  void *s1 = must_malloc(a.get(), KiB, 0, 1);
  EXPECT_EQ(mf_device_of(a.get(), s0), 0);
  EXPECT_EQ(mf_device_of(a.get(), s1), 1);
  EXPECT_EQ(stats(a.get(), 0).segments.current, 2);
  EXPECT_EQ(stats(a.get(), 1).segments.current, 3);
  EXPECT_EQ(mf_device_of(a.get(), reinterpret_cast<void *>(0x1000)), -1);
  must_free(a.get(), s0);
  EXPECT_EQ(mf_device_of(a.get(), s0), -1);
  expect_consistent(a.get());
  // empty_cache covers every device.
  must_free(a.get(), s1);
  must_free(a.get(), q);
  ASSERT_EQ(mf_empty_cache(a.get()), MF_OK);
  EXPECT_EQ(stats(a.get(), 0).segments.current, 1);  // p0 is live again
  EXPECT_EQ(stats(a.get(), 1).segments.current, 1);  // p1
  expect_consistent(a.get());
}

}  // namespace
