// test_trace.cpp — the in-memory trace: every alloc, free, re-tag and mark in
// order with its sizes and tags, each mark with its window's rise, bounded
// capacity with a dropped count, and
// the file event log and the trace on at the same time.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <vector>

#include "test_util.h"

using namespace memfit_test;

namespace {

std::vector<mf_trace_event> read_all(mf_allocator *a) {
  size_t n = 0, dropped = 0;
  EXPECT_EQ(mf_trace_count(a, &n, &dropped), MF_OK);
  std::vector<mf_trace_event> out(n);
  size_t copied = 0;
  EXPECT_EQ(mf_trace_read(a, 0, out.data(), n, &copied), MF_OK);
  EXPECT_EQ(copied, n);
  return out;
}

}  // namespace

TEST(TraceTest, RecordsAllocFreeRetagAndMarksInOrder) {
  Allocator a = create("backend:virtual,capacity:1GiB");
  ASSERT_TRUE(a);
  void *before = mf_malloc(a.get(), 0, 1000, 0);  // not traced: before the start
  ASSERT_EQ(mf_trace_start(a.get(), 100), MF_OK);
  uint32_t layer = mf_layer_intern("blocks.0");
  ASSERT_EQ(mf_tag_push(layer, MF_PHASE_FORWARD, MF_CAT_TEMPORARY), MF_OK);
  ASSERT_EQ(mf_trace_mark(a.get(), 7), MF_OK);
  void *p = mf_malloc(a.get(), 0, 3000, 0);
  ASSERT_EQ(mf_tag_pop(), MF_OK);
  mf_tag act = {layer, MF_CAT_ACTIVATION, MF_PHASE_FORWARD};
  ASSERT_EQ(mf_retag(a.get(), p, act), MF_OK);
  ASSERT_EQ(mf_free(a.get(), p), MF_OK);
  ASSERT_EQ(mf_free(a.get(), before), MF_OK);
  ASSERT_EQ(mf_trace_stop(a.get()), MF_OK);
  void *after = mf_malloc(a.get(), 0, 100, 0);  // not traced: after the stop
  ASSERT_EQ(mf_free(a.get(), after), MF_OK);

  std::vector<mf_trace_event> ev = read_all(a.get());
  std::vector<int> kinds;
  for (const mf_trace_event &e : ev)
    if (e.kind != MF_TRACE_SEGMENT_MAP && e.kind != MF_TRACE_SEGMENT_UNMAP) kinds.push_back(e.kind);
  std::vector<int> want = {MF_TRACE_MARK, MF_TRACE_ALLOC, MF_TRACE_RETAG, MF_TRACE_FREE, MF_TRACE_FREE};
  EXPECT_EQ(kinds, want);
  uint64_t last_t = 0;
  for (const mf_trace_event &e : ev) {
    EXPECT_GE(e.t_ns, last_t);
    last_t = e.t_ns;
    if (e.kind == MF_TRACE_MARK) {
      EXPECT_EQ(e.addr, 7u);
      EXPECT_EQ(e.device, -1);
    } else if (e.kind == MF_TRACE_ALLOC) {
      EXPECT_EQ(e.addr, (uint64_t)(uintptr_t)p);
      EXPECT_EQ(e.requested, 3000u);
      EXPECT_EQ(e.size, 3072u);  // rounded to 512 B
      EXPECT_EQ(e.layer, layer);
      EXPECT_EQ(e.category, MF_CAT_TEMPORARY);
      EXPECT_EQ(e.phase, MF_PHASE_FORWARD);
    } else if (e.kind == MF_TRACE_RETAG) {
      EXPECT_EQ(e.category, MF_CAT_ACTIVATION);
      EXPECT_EQ(e.old_category, MF_CAT_TEMPORARY);
      EXPECT_EQ(e.old_layer, layer);
      EXPECT_EQ(e.requested, 3000u);
    }
  }
  // The free of the traced block carries its tag at free time (the re-tag).
  for (const mf_trace_event &e : ev) {
    if (e.kind == MF_TRACE_FREE && e.addr == (uint64_t)(uintptr_t)p) {
      EXPECT_EQ(e.category, MF_CAT_ACTIVATION);
    }
  }
}

// Each mark's rise is the peak of allocated bytes since the previous mark above
// their value there, as a replay of the recorded events computes it, including
// frees of blocks from before the trace (the running value goes below 0).
TEST(TraceTest, MarksCarryTheirWindowsRise) {
  Allocator a = create("backend:virtual,capacity:1GiB");
  ASSERT_TRUE(a);
  std::vector<void *> before;
  for (int i = 0; i < 4; i++) before.push_back(mf_malloc(a.get(), 0, 5000, 0));
  ASSERT_EQ(mf_trace_start(a.get(), 100000), MF_OK);
  std::mt19937 rng(11);
  std::vector<void *> live;
  uint64_t id = 0;
  for (int k = 0; k < 2000; k++) {
    unsigned r = rng() % 10;
    if (r < 4) {
      live.push_back(mf_malloc(a.get(), 0, 1 + rng() % 100000, 0));
    } else if (r < 7 && !live.empty()) {
      size_t at = rng() % live.size();
      ASSERT_EQ(mf_free(a.get(), live[at]), MF_OK);
      live.erase(live.begin() + (long)at);
    } else if (r == 7 && !before.empty()) {
      ASSERT_EQ(mf_free(a.get(), before.back()), MF_OK);
      before.pop_back();
    } else {
      ASSERT_EQ(mf_trace_mark(a.get(), id++), MF_OK);
    }
  }
  ASSERT_EQ(mf_trace_mark(a.get(), id++), MF_OK);
  ASSERT_EQ(mf_trace_stop(a.get()), MF_OK);
  int64_t value = 0, at_mark = 0, peak = 0;
  size_t marks = 0, risen = 0;
  for (const mf_trace_event &e : read_all(a.get())) {
    if (e.kind == MF_TRACE_ALLOC) {
      value += (int64_t)e.size;
      peak = std::max(peak, value);
    } else if (e.kind == MF_TRACE_FREE) {
      value -= (int64_t)e.size;
    } else if (e.kind == MF_TRACE_MARK) {
      EXPECT_EQ((int64_t)e.requested, peak - at_mark) << "mark " << e.addr;
      marks++;
      risen += e.requested > 0;
      at_mark = peak = value;
    }
  }
  EXPECT_EQ(marks, id);
  EXPECT_GT(risen, marks / 4);  // the windows did rise: the check compares something
  for (void *p : live) ASSERT_EQ(mf_free(a.get(), p), MF_OK);
  for (void *p : before) ASSERT_EQ(mf_free(a.get(), p), MF_OK);
}

TEST(TraceTest, FullBufferCountsDroppedEventsAndRestartClears) {
  Allocator a = create("backend:virtual,capacity:1GiB");
  ASSERT_TRUE(a);
  ASSERT_EQ(mf_trace_start(a.get(), 4), MF_OK);
  for (int i = 0; i < 10; i++) ASSERT_EQ(mf_trace_mark(a.get(), (uint64_t)i), MF_OK);
  size_t n = 0, dropped = 0;
  ASSERT_EQ(mf_trace_count(a.get(), &n, &dropped), MF_OK);
  EXPECT_EQ(n, 4u);
  EXPECT_EQ(dropped, 6u);
  mf_trace_event ev[4];
  size_t copied = 0;
  ASSERT_EQ(mf_trace_read(a.get(), 2, ev, 4, &copied), MF_OK);  // from an offset
  EXPECT_EQ(copied, 2u);
  EXPECT_EQ(ev[0].addr, 2u);
  ASSERT_EQ(mf_trace_start(a.get(), 4), MF_OK);
  ASSERT_EQ(mf_trace_count(a.get(), &n, &dropped), MF_OK);
  EXPECT_EQ(n, 0u);
  EXPECT_EQ(dropped, 0u);
}

TEST(TraceTest, MarksOutsideATraceAreIgnoredAndBadArgumentsFail) {
  Allocator a = create("backend:virtual,capacity:1GiB");
  ASSERT_TRUE(a);
  EXPECT_EQ(mf_trace_mark(a.get(), 1), MF_OK);
  size_t n = 99;
  ASSERT_EQ(mf_trace_count(a.get(), &n, nullptr), MF_OK);
  EXPECT_EQ(n, 0u);
  EXPECT_EQ(mf_trace_start(a.get(), 0), MF_ERR_INVALID);
  EXPECT_EQ(mf_trace_start(nullptr, 10), MF_ERR_INVALID);
  EXPECT_EQ(mf_trace_read(a.get(), 0, nullptr, 5, nullptr), MF_ERR_INVALID);
}

TEST(TraceTest, FileLogAndTraceTogether) {
  Allocator a = create("backend:virtual,capacity:1GiB");
  ASSERT_TRUE(a);
  char path[] = "/tmp/memfit_trace_test_XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  ASSERT_EQ(mf_event_log_start(a.get(), path), MF_OK);
  ASSERT_EQ(mf_trace_start(a.get(), 100), MF_OK);
  void *p = mf_malloc(a.get(), 0, 4096, 0);
  ASSERT_EQ(mf_event_log_stop(a.get()), MF_OK);  // the trace goes on without the file
  ASSERT_EQ(mf_free(a.get(), p), MF_OK);
  size_t n = 0;
  ASSERT_EQ(mf_trace_count(a.get(), &n, nullptr), MF_OK);
  std::vector<mf_trace_event> ev = read_all(a.get());
  int allocs = 0, frees = 0;
  for (const mf_trace_event &e : ev) {
    allocs += e.kind == MF_TRACE_ALLOC;
    frees += e.kind == MF_TRACE_FREE;
  }
  EXPECT_EQ(allocs, 1);
  EXPECT_EQ(frees, 1);
  FILE *f = fopen(path, "r");
  ASSERT_TRUE(f);
  char line[512];
  int alloc_lines = 0, free_lines = 0;
  while (fgets(line, sizeof line, f)) {
    alloc_lines += strncmp(line, "alloc ", 6) == 0;
    free_lines += strncmp(line, "free ", 5) == 0;
  }
  fclose(f);
  remove(path);
  EXPECT_EQ(alloc_lines, 1);
  EXPECT_EQ(free_lines, 0);
}

TEST(TraceTest, RetagLiveMovesOnlyMatchingLiveBlocks) {
  Allocator a = create("backend:virtual,capacity:1GiB");
  ASSERT_TRUE(a);
  uint32_t layer = mf_layer_intern("blocks.1");
  mf_tag fwd_tmp = {layer, MF_CAT_TEMPORARY, MF_PHASE_FORWARD};
  mf_tag bwd_tmp = {layer, MF_CAT_TEMPORARY, MF_PHASE_BACKWARD};
  void *kept = mf_malloc_tagged(a.get(), 0, 2048, 0, fwd_tmp);
  void *freed = mf_malloc_tagged(a.get(), 0, 4096, 0, fwd_tmp);
  void *other = mf_malloc_tagged(a.get(), 0, 1024, 0, bwd_tmp);
  ASSERT_EQ(mf_free(a.get(), freed), MF_OK);
  ASSERT_EQ(mf_trace_start(a.get(), 16), MF_OK);
  size_t n = 0;
  ASSERT_EQ(mf_retag_live(a.get(), -1, MF_PHASE_FORWARD, MF_CAT_TEMPORARY, MF_CAT_ACTIVATION, &n), MF_OK);
  EXPECT_EQ(n, 1u);
  mf_tag t;
  ASSERT_EQ(mf_block_info(a.get(), kept, &t, nullptr, nullptr), MF_OK);
  EXPECT_EQ(t.category, MF_CAT_ACTIVATION);
  ASSERT_EQ(mf_block_info(a.get(), other, &t, nullptr, nullptr), MF_OK);
  EXPECT_EQ(t.category, MF_CAT_TEMPORARY);
  mf_tag_stats act, tmp;
  ASSERT_EQ(mf_get_category_stats(a.get(), 0, MF_CAT_ACTIVATION, &act), MF_OK);
  ASSERT_EQ(mf_get_category_stats(a.get(), 0, MF_CAT_TEMPORARY, &tmp), MF_OK);
  EXPECT_EQ(act.requested.current, 2048);
  EXPECT_EQ(tmp.requested.current, 1024);
  std::vector<mf_trace_event> ev = read_all(a.get());
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].kind, MF_TRACE_RETAG);
  EXPECT_EQ(mf_check(a.get()), MF_OK) << mf_last_error();
  EXPECT_EQ(mf_retag_live(a.get(), 5, MF_PHASE_FORWARD, MF_CAT_TEMPORARY, MF_CAT_ACTIVATION, nullptr), MF_ERR_INVALID);
  ASSERT_EQ(mf_free(a.get(), kept), MF_OK);
  ASSERT_EQ(mf_free(a.get(), other), MF_OK);
}
