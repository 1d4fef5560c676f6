// test_event_log.cpp — the event log: alloc/free lines in the trace format
// memfit-replay reads ("alloc <id> <bytes> <stream>", "free <id>", tag after a
// '#'), segment events as comments, I/O errors, and the event_log option.
#include <gtest/gtest.h>
#include <memfit/memfit.h>

#include "test_util.h"

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace {

using namespace memfit_test;

Allocator create(const std::string &conf) {
  mf_allocator *a = nullptr;
  mf_status s = mf_allocator_create(conf.c_str(), &a);
  EXPECT_EQ(s, MF_OK) << conf << ": " << mf_last_error();
  return Allocator(s == MF_OK ? a : nullptr);
}

// A fresh path under the test temp dir, removed when the test ends.
struct TempFile {
  std::string path;
  explicit TempFile(const char *stem) {
    path = testing::TempDir() + "memfit_" + stem + "_" + std::to_string(getpid()) + ".log";
    unlink(path.c_str());
  }
  ~TempFile() { unlink(path.c_str()); }
};

std::vector<std::string> read_lines(const std::string &path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  std::vector<std::string> out;
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

std::vector<std::string> words(const std::string &s) {
  std::istringstream in(s);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

// One parsed line of the log.
struct Event {
  std::string kind;            // "alloc", "free" or "#"
  std::vector<std::string> w;  // the words before '#'
  std::string comment;         // after '#'
};

std::vector<Event> parse(const std::vector<std::string> &lines) {
  std::vector<Event> out;
  for (const std::string &l : lines) {
    if (l.empty()) continue;
    size_t hash = l.find('#');
    Event e;
    e.w = words(l.substr(0, hash));
    e.comment = hash == std::string::npos ? "" : l.substr(hash + 1);
    e.kind = e.w.empty() ? "#" : e.w[0];
    out.push_back(e);
  }
  return out;
}

std::vector<Event> of_kind(const std::vector<Event> &events, const std::string &kind) {
  std::vector<Event> out;
  for (const Event &e : events)
    if (e.kind == kind) out.push_back(e);
  return out;
}

bool has_word(const std::string &text, const std::string &w) {
  for (const std::string &x : words(text))
    if (x == w) return true;
  return false;
}

// ------------------------------------------------------------------- tests

TEST(EventLog, AllocsFreesAndSegmentsInTraceFormat) {
  TempFile log("basic");
  Allocator a = create("backend:virtual");
  ASSERT_TRUE(a);
  uint32_t layer = mf_layer_intern("eventlog.blocks.0");
  ASSERT_EQ(mf_event_log_start(a.get(), log.path.c_str()), MF_OK) << mf_last_error();
  void *p = mf_malloc_tagged(a.get(), 0, 3000, 7, mf_tag{layer, MF_CAT_ACTIVATION, MF_PHASE_FORWARD});
  void *q = mf_malloc(a.get(), 0, 5 * MiB, 0);
  void *r = mf_malloc(a.get(), 0, 0, 7);
  ASSERT_TRUE(p && q && r) << mf_last_error();
  ASSERT_EQ(mf_free(a.get(), p), MF_OK);
  ASSERT_EQ(mf_free(a.get(), q), MF_OK);
  ASSERT_EQ(mf_empty_cache(a.get()), MF_OK);  // unmaps q's segment
  ASSERT_EQ(mf_event_log_stop(a.get()), MF_OK);
  void *after = mf_malloc(a.get(), 0, 4 * KiB, 0);  // not logged
  ASSERT_NE(after, nullptr);

  std::vector<Event> events = parse(read_lines(log.path));
  std::vector<Event> allocs = of_kind(events, "alloc"), frees = of_kind(events, "free");
  ASSERT_EQ(allocs.size(), 3u);
  ASSERT_EQ(frees.size(), 2u);
  for (const Event &e : events)
    EXPECT_TRUE(e.kind == "alloc" || e.kind == "free" || e.kind == "#") << "unexpected line kind " << e.kind;
  // alloc <id> <bytes> <stream>
  for (const Event &e : allocs) ASSERT_EQ(e.w.size(), 4u);
  EXPECT_EQ(allocs[0].w[2], "3000");
  EXPECT_EQ(allocs[0].w[3], "7");
  EXPECT_EQ(allocs[1].w[2], std::to_string(5 * MiB));
  EXPECT_EQ(allocs[1].w[3], "0");
  EXPECT_EQ(allocs[2].w[2], "0");
  std::set<std::string> ids = {allocs[0].w[1], allocs[1].w[1], allocs[2].w[1]};
  EXPECT_EQ(ids.size(), 3u);  // live blocks have distinct ids
  // free <id>, naming the blocks in order.
  for (const Event &e : frees) ASSERT_EQ(e.w.size(), 2u);
  EXPECT_EQ(frees[0].w[1], allocs[0].w[1]);
  EXPECT_EQ(frees[1].w[1], allocs[1].w[1]);
  // The tag, device and block size after the '#'.
  EXPECT_TRUE(has_word(allocs[0].comment, "cat=activation")) << allocs[0].comment;
  EXPECT_TRUE(has_word(allocs[0].comment, "layer=eventlog.blocks.0")) << allocs[0].comment;
  EXPECT_TRUE(has_word(allocs[0].comment, "phase=forward")) << allocs[0].comment;
  EXPECT_TRUE(has_word(allocs[0].comment, "dev=0")) << allocs[0].comment;
  EXPECT_TRUE(has_word(allocs[0].comment, "size=3072")) << allocs[0].comment;
  EXPECT_TRUE(has_word(allocs[1].comment, "cat=other")) << allocs[1].comment;
  EXPECT_TRUE(has_word(frees[0].comment, "layer=eventlog.blocks.0")) << frees[0].comment;
  // Segment maps and unmaps are comment lines.
  int maps = 0, unmaps = 0;
  for (const Event &e : of_kind(events, "#")) {
    if (e.comment.find("unmap") != std::string::npos) unmaps++;
    else if (e.comment.find("map") != std::string::npos) maps++;
  }
  EXPECT_EQ(maps, 2);    // the small segment and q's
  EXPECT_EQ(unmaps, 1);  // q's, by empty_cache
  // The order is the order of the calls: allocs before their frees.
  std::vector<std::string> order;
  for (const Event &e : events)
    if (e.kind != "#") order.push_back(e.kind);
  EXPECT_EQ(order, (std::vector<std::string>{"alloc", "alloc", "alloc", "free", "free"}));
  mf_free(a.get(), r);
  mf_free(a.get(), after);
}

TEST(EventLog, DeviceOfEachEventIsInTheComment) {
  TempFile log("devices");
  Allocator a = create("backend:virtual,devices:2");
  ASSERT_TRUE(a);
  ASSERT_EQ(mf_event_log_start(a.get(), log.path.c_str()), MF_OK);
  void *p = mf_malloc(a.get(), 1, 4 * KiB, 0);
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(mf_free(a.get(), p), MF_OK);
  ASSERT_EQ(mf_event_log_stop(a.get()), MF_OK);
  std::vector<Event> events = parse(read_lines(log.path));
  std::vector<Event> allocs = of_kind(events, "alloc"), frees = of_kind(events, "free");
  ASSERT_EQ(allocs.size(), 1u);
  ASSERT_EQ(frees.size(), 1u);
  EXPECT_TRUE(has_word(allocs[0].comment, "dev=1")) << allocs[0].comment;
  EXPECT_TRUE(has_word(frees[0].comment, "dev=1")) << frees[0].comment;
}

TEST(EventLog, UnwritablePathIsAnIoError) {
  Allocator a = create("backend:virtual");
  ASSERT_TRUE(a);
  const char *bad = "/nonexistent-memfit-dir/sub/events.log";
  EXPECT_EQ(mf_event_log_start(a.get(), bad), MF_ERR_IO);
  EXPECT_NE(std::string(mf_last_error()).find(bad), std::string::npos) << mf_last_error();
  // The allocator still works, and stopping a log that never started is fine.
  void *p = mf_malloc(a.get(), 0, 4 * KiB, 0);
  EXPECT_NE(p, nullptr);
  EXPECT_EQ(mf_free(a.get(), p), MF_OK);
  EXPECT_EQ(mf_event_log_stop(a.get()), MF_OK);
}

TEST(EventLog, OptionStartsTheLog) {
  TempFile log("option");
  {
    Allocator a = create("backend:virtual,event_log:" + log.path);
    ASSERT_TRUE(a);
    void *p = mf_malloc(a.get(), 0, 12345, 3);
    ASSERT_NE(p, nullptr);
    ASSERT_EQ(mf_free(a.get(), p), MF_OK);
  }  // destroying the allocator closes (and flushes) the log
  std::vector<Event> events = parse(read_lines(log.path));
  std::vector<Event> allocs = of_kind(events, "alloc");
  ASSERT_EQ(allocs.size(), 1u);
  ASSERT_EQ(allocs[0].w.size(), 4u);
  EXPECT_EQ(allocs[0].w[2], "12345");
  EXPECT_EQ(allocs[0].w[3], "3");
  EXPECT_EQ(of_kind(events, "free").size(), 1u);
}

TEST(EventLog, OptionWithAnUnwritablePathFailsCreation) {
  mf_allocator *a = reinterpret_cast<mf_allocator *>(0x1);
  EXPECT_EQ(mf_allocator_create("backend:virtual,event_log:/nonexistent-memfit-dir/x.log", &a), MF_ERR_IO);
  EXPECT_EQ(a, nullptr);
  EXPECT_NE(std::string(mf_last_error()).find("/nonexistent-memfit-dir/x.log"), std::string::npos);
}

TEST(EventLog, RestartingTruncatesAndSwitchesFiles) {
  TempFile first("first"), second("second");
  Allocator a = create("backend:virtual");
  ASSERT_TRUE(a);
  ASSERT_EQ(mf_event_log_start(a.get(), first.path.c_str()), MF_OK);
  void *p = mf_malloc(a.get(), 0, 1000, 0);
  ASSERT_EQ(mf_event_log_start(a.get(), second.path.c_str()), MF_OK);  // switches
  ASSERT_EQ(mf_free(a.get(), p), MF_OK);
  ASSERT_EQ(mf_event_log_stop(a.get()), MF_OK);
  std::vector<Event> one = parse(read_lines(first.path)), two = parse(read_lines(second.path));
  EXPECT_EQ(of_kind(one, "alloc").size(), 1u);
  EXPECT_EQ(of_kind(one, "free").size(), 0u);
  EXPECT_EQ(of_kind(two, "alloc").size(), 0u);
  EXPECT_EQ(of_kind(two, "free").size(), 1u);
  // Starting again on the first file starts it afresh.
  ASSERT_EQ(mf_event_log_start(a.get(), first.path.c_str()), MF_OK);
  ASSERT_EQ(mf_event_log_stop(a.get()), MF_OK);
  EXPECT_EQ(of_kind(parse(read_lines(first.path)), "alloc").size(), 0u);
}

TEST(EventLog, ManyEventsAllArrive) {
  TempFile log("many");
  Allocator a = create("backend:virtual");
  ASSERT_TRUE(a);
  ASSERT_EQ(mf_event_log_start(a.get(), log.path.c_str()), MF_OK);
  std::map<std::string, int> balance;
  for (int i = 0; i < 2000; i++) {
    void *p = mf_malloc(a.get(), 0, (size_t)(i % 50 + 1) * 4096, 0);
    ASSERT_NE(p, nullptr);
    ASSERT_EQ(mf_free(a.get(), p), MF_OK);
  }
  ASSERT_EQ(mf_event_log_stop(a.get()), MF_OK);
  std::vector<Event> events = parse(read_lines(log.path));
  EXPECT_EQ(of_kind(events, "alloc").size(), 2000u);
  EXPECT_EQ(of_kind(events, "free").size(), 2000u);
  // Every free names a block that is live at that point of the trace.
  for (const Event &e : events) {
    if (e.kind == "alloc") {
      EXPECT_EQ(balance[e.w[1]]++, 0) << "id " << e.w[1] << " allocated twice";
    } else if (e.kind == "free") {
      EXPECT_EQ(balance[e.w[1]]--, 1) << "id " << e.w[1] << " freed while not live";
    }
  }
}

}  // namespace
