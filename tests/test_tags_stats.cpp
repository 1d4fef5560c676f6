// test_tags_stats.cpp — tags and the numbers built on them: the thread-local
// tag stack, layer interning, the tag a block takes, re-tagging, per-(category,
// layer) and global stats with peaks, and the JSON export.
#include <gtest/gtest.h>
#include <memfit/memfit.h>

#include "test_util.h"

#include <cctype>
#include <cstdint>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace memfit_test;

constexpr const char *kConf = "backend:virtual,vmm:off,large_segment:2MiB,merge_segments:false";

mf_tag_stats tag_stats(mf_allocator *a, mf_category c, uint32_t layer, int device = 0) {
  mf_tag_stats t;
  memset(&t, 0xA5, sizeof t);
  EXPECT_EQ(mf_get_tag_stats(a, device, c, layer, &t), MF_OK) << mf_last_error();
  return t;
}

mf_tag_stats category_stats(mf_allocator *a, mf_category c, int device = 0) {
  mf_tag_stats t;
  memset(&t, 0xA5, sizeof t);
  EXPECT_EQ(mf_get_category_stats(a, device, c, &t), MF_OK) << mf_last_error();
  return t;
}

mf_tag tag_of(mf_allocator *a, void *p) {
  mf_tag t = {0xFFFFFFFFu, 0xFF, 0xFF};
  EXPECT_EQ(mf_block_info(a, p, &t, nullptr, nullptr), MF_OK) << mf_last_error();
  return t;
}

void expect_tag(const mf_tag &t, uint32_t layer, mf_category c, mf_phase p) {
  EXPECT_EQ(t.layer, layer);
  EXPECT_EQ(t.category, (uint8_t)c);
  EXPECT_EQ(t.phase, (uint8_t)p);
}

void *must_malloc(mf_allocator *a, size_t size, int device = 0) {
  void *p = mf_malloc(a, device, size, 0);
  EXPECT_NE(p, nullptr) << "mf_malloc(" << size << ") failed: " << mf_last_error();
  return p;
}

void *tagged(mf_allocator *a, size_t size, uint32_t layer, mf_category c, mf_phase p = MF_PHASE_FORWARD) {
  void *ptr = mf_malloc_tagged(a, 0, size, 0, mf_tag{layer, (uint8_t)c, (uint8_t)p});
  EXPECT_NE(ptr, nullptr) << mf_last_error();
  return ptr;
}

void must_free(mf_allocator *a, void *p) { EXPECT_EQ(mf_free(a, p), MF_OK) << mf_last_error(); }

void expect_consistent(mf_allocator *a) { EXPECT_EQ(mf_check(a), MF_OK) << mf_last_error(); }

void expect_counter(const mf_counter &c, int64_t current, int64_t peak, const char *what) {
  EXPECT_EQ(c.current, current) << what << ".current";
  EXPECT_EQ(c.peak, peak) << what << ".peak";
}

// Pops whatever a failed test left on this thread's stack.
struct TagStackGuard {
  ~TagStackGuard() {
    while (mf_tag_depth() > 0) mf_tag_pop();
    mf_tag_clear_shared();
  }
};

// A small JSON validator: enough to say that the export parses.
struct Json {
  const char *p;
  bool ok = true;
  explicit Json(const char *text) : p(text) {}
  void ws() {
    while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++;
  }
  bool lit(const char *s) {
    size_t n = strlen(s);
    if (strncmp(p, s, n) != 0) return false;
    p += n;
    return true;
  }
  bool string() {
    if (*p != '"') return false;
    for (p++; *p && *p != '"'; p++) {
      if ((unsigned char)*p < 0x20) return false;
      if (*p == '\\') {
        p++;
        if (*p == 'u') {
          for (int i = 0; i < 4; i++)
            if (!isxdigit((unsigned char)*++p)) return false;
        } else if (!strchr("\"\\/bfnrt", *p) || !*p) {
          return false;
        }
      }
    }
    if (*p != '"') return false;
    p++;
    return true;
  }
  bool number() {
    const char *start = p;
    if (*p == '-') p++;
    if (!isdigit((unsigned char)*p)) return false;
    while (isdigit((unsigned char)*p)) p++;
    if (*p == '.') {
      p++;
      if (!isdigit((unsigned char)*p)) return false;
      while (isdigit((unsigned char)*p)) p++;
    }
    if (*p == 'e' || *p == 'E') {
      p++;
      if (*p == '+' || *p == '-') p++;
      if (!isdigit((unsigned char)*p)) return false;
      while (isdigit((unsigned char)*p)) p++;
    }
    return p > start;
  }
  bool value(int depth = 0) {
    if (depth > 64) return false;
    ws();
    if (*p == '{') {
      p++;
      ws();
      if (*p == '}') return p++, true;
      for (;;) {
        ws();
        if (!string()) return false;
        ws();
        if (*p++ != ':') return false;
        if (!value(depth + 1)) return false;
        ws();
        if (*p == '}') return p++, true;
        if (*p++ != ',') return false;
      }
    }
    if (*p == '[') {
      p++;
      ws();
      if (*p == ']') return p++, true;
      for (;;) {
        if (!value(depth + 1)) return false;
        ws();
        if (*p == ']') return p++, true;
        if (*p++ != ',') return false;
      }
    }
    if (*p == '"') return string();
    if (lit("true") || lit("false") || lit("null")) return true;
    return number();
  }
  bool document() {
    bool v = value();
    ws();
    return v && *p == '\0';
  }
};

std::string stats_json(mf_allocator *a, int device = 0) {
  size_t needed = 0;
  EXPECT_EQ(mf_stats_json(a, device, nullptr, 0, &needed), MF_OK) << mf_last_error();
  EXPECT_GT(needed, 1u);
  std::vector<char> buf(needed);
  size_t again = 0;
  EXPECT_EQ(mf_stats_json(a, device, buf.data(), buf.size(), &again), MF_OK) << mf_last_error();
  EXPECT_EQ(again, needed);
  EXPECT_EQ(strlen(buf.data()) + 1, needed);
  return std::string(buf.data());
}

// ----------------------------------------------------------------- tag stack

TEST(TagsStats, TagStackPushPopCurrentDepth) {
  TagStackGuard guard;
  ASSERT_EQ(mf_tag_depth(), 0);
  expect_tag(mf_tag_current(), 0, MF_CAT_OTHER, MF_PHASE_NONE);
  uint32_t l1 = mf_layer_intern("tags.stack.one"), l2 = mf_layer_intern("tags.stack.two");
  ASSERT_EQ(mf_tag_push(l1, MF_PHASE_FORWARD, MF_CAT_ACTIVATION), MF_OK) << mf_last_error();
  EXPECT_EQ(mf_tag_depth(), 1);
  expect_tag(mf_tag_current(), l1, MF_CAT_ACTIVATION, MF_PHASE_FORWARD);
  ASSERT_EQ(mf_tag_push(l2, MF_PHASE_BACKWARD, MF_CAT_GRADIENT), MF_OK) << mf_last_error();
  EXPECT_EQ(mf_tag_depth(), 2);
  expect_tag(mf_tag_current(), l2, MF_CAT_GRADIENT, MF_PHASE_BACKWARD);
  ASSERT_EQ(mf_tag_pop(), MF_OK);
  EXPECT_EQ(mf_tag_depth(), 1);
  expect_tag(mf_tag_current(), l1, MF_CAT_ACTIVATION, MF_PHASE_FORWARD);
  ASSERT_EQ(mf_tag_pop(), MF_OK);
  EXPECT_EQ(mf_tag_depth(), 0);
  expect_tag(mf_tag_current(), 0, MF_CAT_OTHER, MF_PHASE_NONE);
}

TEST(TagsStats, TagStackOverflowAndUnderflowFail) {
  TagStackGuard guard;
  EXPECT_EQ(mf_tag_pop(), MF_ERR_INVALID);
  EXPECT_STRNE(mf_last_error(), "");
  EXPECT_EQ(mf_tag_depth(), 0);
  uint32_t layer = mf_layer_intern("tags.stack.deep");
  for (int i = 0; i < MF_TAG_STACK_DEPTH; i++)
    ASSERT_EQ(mf_tag_push(layer, MF_PHASE_FORWARD, (mf_category)(i % MF_CAT_COUNT)), MF_OK) << "push " << i;
  EXPECT_EQ(mf_tag_depth(), MF_TAG_STACK_DEPTH);
  EXPECT_EQ(mf_tag_push(layer, MF_PHASE_BACKWARD, MF_CAT_GRADIENT), MF_ERR_INVALID);
  EXPECT_STRNE(mf_last_error(), "");
  EXPECT_EQ(mf_tag_depth(), MF_TAG_STACK_DEPTH);
  // The failed push left the top alone.
  expect_tag(mf_tag_current(), layer, (mf_category)((MF_TAG_STACK_DEPTH - 1) % MF_CAT_COUNT), MF_PHASE_FORWARD);
  for (int i = 0; i < MF_TAG_STACK_DEPTH; i++) ASSERT_EQ(mf_tag_pop(), MF_OK) << "pop " << i;
  EXPECT_EQ(mf_tag_pop(), MF_ERR_INVALID);
  EXPECT_EQ(mf_tag_depth(), 0);
}

TEST(TagsStats, TagPushRejectsBadCategoryAndPhase) {
  TagStackGuard guard;
  EXPECT_EQ(mf_tag_push(0, MF_PHASE_FORWARD, MF_CAT_COUNT), MF_ERR_INVALID);
  EXPECT_EQ(mf_tag_push(0, MF_PHASE_COUNT, MF_CAT_ACTIVATION), MF_ERR_INVALID);
  EXPECT_EQ(mf_tag_depth(), 0);
}

TEST(TagsStats, TagStackIsPerThread) {
  TagStackGuard guard;
  uint32_t layer = mf_layer_intern("tags.stack.main");
  ASSERT_EQ(mf_tag_push(layer, MF_PHASE_FORWARD, MF_CAT_PARAMETER), MF_OK);
  int other_depth = -1;
  mf_tag other_top = {};
  std::thread t([&] {
    other_depth = mf_tag_depth();
    other_top = mf_tag_current();
    mf_tag_push(layer, MF_PHASE_BACKWARD, MF_CAT_GRADIENT);
    mf_tag_push(layer, MF_PHASE_BACKWARD, MF_CAT_GRADIENT);
  });
  t.join();
  EXPECT_EQ(other_depth, 0);
  expect_tag(other_top, 0, MF_CAT_OTHER, MF_PHASE_NONE);
  EXPECT_EQ(mf_tag_depth(), 1);
  expect_tag(mf_tag_current(), layer, MF_CAT_PARAMETER, MF_PHASE_FORWARD);
}

// The shared tag reaches threads whose own stack is empty (autograd's device
// thread on CUDA), a thread's own stack still wins, and clear unsets it.
TEST(TagsStats, SharedTagReachesOtherThreadsWithAnEmptyStack) {
  TagStackGuard guard;
  uint32_t layer = mf_layer_intern("tags.shared.block");
  uint32_t own = mf_layer_intern("tags.shared.own");
  ASSERT_EQ(mf_tag_set_shared({layer, MF_CAT_TEMPORARY, MF_PHASE_BACKWARD}), MF_OK);
  mf_tag seen = {}, seen_own = {}, seen_popped = {};
  std::thread t([&] {
    seen = mf_tag_current();
    mf_tag_push(own, MF_PHASE_RECOMPUTE, MF_CAT_TEMPORARY);
    seen_own = mf_tag_current();
    mf_tag_pop();
    seen_popped = mf_tag_current();
  });
  t.join();
  expect_tag(seen, layer, MF_CAT_TEMPORARY, MF_PHASE_BACKWARD);
  expect_tag(seen_own, own, MF_CAT_TEMPORARY, MF_PHASE_RECOMPUTE);
  expect_tag(seen_popped, layer, MF_CAT_TEMPORARY, MF_PHASE_BACKWARD);
  // A block allocated on another thread takes it.
  mf_allocator *a = nullptr;
  ASSERT_EQ(mf_allocator_create("backend:virtual,capacity:64MiB", &a), MF_OK) << mf_last_error();
  void *p = nullptr;
  std::thread([&] { p = mf_malloc(a, 0, 4096, 0); }).join();
  ASSERT_NE(p, nullptr) << mf_last_error();
  mf_tag block_tag = {};
  ASSERT_EQ(mf_block_info(a, p, &block_tag, nullptr, nullptr), MF_OK);
  expect_tag(block_tag, layer, MF_CAT_TEMPORARY, MF_PHASE_BACKWARD);
  mf_tag_clear_shared();
  std::thread([&] { seen = mf_tag_current(); }).join();
  expect_tag(seen, 0, MF_CAT_OTHER, MF_PHASE_NONE);
  EXPECT_EQ(mf_free(a, p), MF_OK);
  mf_allocator_destroy(a);
  // Bad tags are refused and leave it unset.
  EXPECT_EQ(mf_tag_set_shared({layer, MF_CAT_COUNT, MF_PHASE_NONE}), MF_ERR_INVALID);
  EXPECT_EQ(mf_tag_set_shared({layer, MF_CAT_OTHER, MF_PHASE_COUNT}), MF_ERR_INVALID);
  EXPECT_EQ(mf_tag_set_shared({0xffffff, MF_CAT_OTHER, MF_PHASE_NONE}), MF_ERR_INVALID);
  expect_tag(mf_tag_current(), 0, MF_CAT_OTHER, MF_PHASE_NONE);
}

// ----------------------------------------------------------------- interning

TEST(TagsStats, LayerInterning) {
  uint32_t before = mf_layer_count();
  uint32_t a = mf_layer_intern("tags.intern.alpha");
  uint32_t b = mf_layer_intern("tags.intern.beta");
  EXPECT_NE(a, 0u);
  EXPECT_NE(b, 0u);
  EXPECT_NE(a, b);
  EXPECT_EQ(mf_layer_intern("tags.intern.alpha"), a);
  std::string copy = "tags.intern.beta";  // same name, another buffer
  EXPECT_EQ(mf_layer_intern(copy.c_str()), b);
  EXPECT_EQ(mf_layer_count(), before + 2);
  ASSERT_NE(mf_layer_name(a), nullptr);
  EXPECT_STREQ(mf_layer_name(a), "tags.intern.alpha");
  EXPECT_STREQ(mf_layer_name(b), "tags.intern.beta");
  EXPECT_STREQ(mf_layer_name(0), "");
  EXPECT_EQ(mf_layer_name(mf_layer_count() + 1000), nullptr);
  EXPECT_EQ(mf_layer_intern(""), 0u);
  EXPECT_EQ(mf_layer_intern(nullptr), 0u);
  EXPECT_STRNE(mf_last_error(), "");
  // Names that differ in one character, and a prefix, are distinct.
  std::set<uint32_t> ids;
  for (const char *n : {"tags.x.layer1", "tags.x.layer2", "tags.x.layer", "tags.x.Layer1"})
    ids.insert(mf_layer_intern(n));
  EXPECT_EQ(ids.size(), 4u);
  EXPECT_EQ(ids.count(0), 0u);
}

TEST(TagsStats, ManyLayersRoundTrip) {
  std::vector<uint32_t> ids;
  for (int i = 0; i < 1000; i++) ids.push_back(mf_layer_intern(("tags.many." + std::to_string(i)).c_str()));
  for (int i = 0; i < 1000; i++) {
    ASSERT_NE(ids[i], 0u);
    EXPECT_STREQ(mf_layer_name(ids[i]), ("tags.many." + std::to_string(i)).c_str());
    EXPECT_EQ(mf_layer_intern(("tags.many." + std::to_string(i)).c_str()), ids[i]);
  }
  EXPECT_EQ(std::set<uint32_t>(ids.begin(), ids.end()).size(), 1000u);
}

TEST(TagsStats, CategoryAndPhaseNamesRoundTrip) {
  std::set<std::string> names;
  for (int c = 0; c < MF_CAT_COUNT; c++) {
    const char *n = mf_category_name((mf_category)c);
    ASSERT_NE(n, nullptr);
    EXPECT_STRNE(n, "");
    EXPECT_EQ(mf_category_from_name(n), c) << n;
    names.insert(n);
  }
  EXPECT_EQ(names.size(), (size_t)MF_CAT_COUNT);
  names.clear();
  for (int p = 0; p < MF_PHASE_COUNT; p++) {
    const char *n = mf_phase_name((mf_phase)p);
    ASSERT_NE(n, nullptr);
    EXPECT_EQ(mf_phase_from_name(n), p) << n;
    names.insert(n);
  }
  EXPECT_EQ(names.size(), (size_t)MF_PHASE_COUNT);
  EXPECT_EQ(mf_category_from_name("activation"), MF_CAT_ACTIVATION);
  EXPECT_EQ(mf_category_from_name("parameter"), MF_CAT_PARAMETER);
  EXPECT_EQ(mf_phase_from_name("forward"), MF_PHASE_FORWARD);
  EXPECT_EQ(mf_phase_from_name("recompute"), MF_PHASE_RECOMPUTE);
  EXPECT_EQ(mf_category_from_name("no-such-category"), -1);
  EXPECT_EQ(mf_phase_from_name("no-such-phase"), -1);
  EXPECT_EQ(mf_category_from_name(""), -1);
  EXPECT_EQ(mf_category_from_name(nullptr), -1);
}

TEST(TagsStats, StatusNamesAndVersion) {
  std::set<std::string> names;
  for (int s = MF_OK; s <= MF_ERR_UNSUPPORTED; s++) {
    const char *n = mf_status_name((mf_status)s);
    ASSERT_NE(n, nullptr);
    EXPECT_STRNE(n, "");
    names.insert(n);
  }
  EXPECT_EQ(names.size(), (size_t)(MF_ERR_UNSUPPORTED + 1));
  std::string v = std::to_string(MF_VERSION_MAJOR) + "." + std::to_string(MF_VERSION_MINOR) + "." +
                  std::to_string(MF_VERSION_PATCH);
  EXPECT_STREQ(mf_version(), v.c_str());
}

// ------------------------------------------------------------- block tagging

TEST(TagsStats, BlocksTakeTheTagOnTopOfTheStack) {
  TagStackGuard guard;
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  uint32_t outer = mf_layer_intern("tags.block.outer"), inner = mf_layer_intern("tags.block.inner");
  void *untagged = must_malloc(a.get(), 4 * KiB);
  ASSERT_EQ(mf_tag_push(outer, MF_PHASE_FORWARD, MF_CAT_ACTIVATION), MF_OK);
  void *p_outer = must_malloc(a.get(), 4 * KiB);
  ASSERT_EQ(mf_tag_push(inner, MF_PHASE_RECOMPUTE, MF_CAT_TEMPORARY), MF_OK);
  void *p_inner = must_malloc(a.get(), 4 * MiB);
  ASSERT_EQ(mf_tag_pop(), MF_OK);
  void *p_outer2 = must_malloc(a.get(), 8 * KiB);
  ASSERT_EQ(mf_tag_pop(), MF_OK);
  expect_tag(tag_of(a.get(), untagged), 0, MF_CAT_OTHER, MF_PHASE_NONE);
  expect_tag(tag_of(a.get(), p_outer), outer, MF_CAT_ACTIVATION, MF_PHASE_FORWARD);
  expect_tag(tag_of(a.get(), p_inner), inner, MF_CAT_TEMPORARY, MF_PHASE_RECOMPUTE);
  expect_tag(tag_of(a.get(), p_outer2), outer, MF_CAT_ACTIVATION, MF_PHASE_FORWARD);
  // mf_malloc_tagged ignores the context.
  ASSERT_EQ(mf_tag_push(outer, MF_PHASE_FORWARD, MF_CAT_ACTIVATION), MF_OK);
  void *explicit_tag = mf_malloc_tagged(a.get(), 0, 4 * KiB, 0, mf_tag{inner, MF_CAT_PARAMETER, MF_PHASE_OPTIMIZER});
  ASSERT_NE(explicit_tag, nullptr);
  ASSERT_EQ(mf_tag_pop(), MF_OK);
  expect_tag(tag_of(a.get(), explicit_tag), inner, MF_CAT_PARAMETER, MF_PHASE_OPTIMIZER);
  expect_consistent(a.get());
}

TEST(TagsStats, MallocTaggedRejectsABadTag) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  EXPECT_EQ(mf_malloc_tagged(a.get(), 0, 4 * KiB, 0, mf_tag{0, MF_CAT_COUNT, MF_PHASE_NONE}), nullptr);
  EXPECT_STRNE(mf_last_error(), "");
  EXPECT_EQ(mf_malloc_tagged(a.get(), 0, 4 * KiB, 0, mf_tag{0, MF_CAT_OTHER, MF_PHASE_COUNT}), nullptr);
  EXPECT_EQ(stats(a.get()).allocs, 0);
}

TEST(TagsStats, BlockInfoReportsTagRequestedAndSize) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  uint32_t layer = mf_layer_intern("tags.info.layer");
  void *p = tagged(a.get(), 3000, layer, MF_CAT_INPUT, MF_PHASE_NONE);
  mf_tag t;
  size_t requested = 0, size = 0;
  ASSERT_EQ(mf_block_info(a.get(), p, &t, &requested, &size), MF_OK);
  expect_tag(t, layer, MF_CAT_INPUT, MF_PHASE_NONE);
  EXPECT_EQ(requested, 3000u);
  EXPECT_EQ(size, 3072u);
  // Each output may be NULL.
  size = 0;
  ASSERT_EQ(mf_block_info(a.get(), p, nullptr, nullptr, &size), MF_OK);
  EXPECT_EQ(size, 3072u);
  EXPECT_EQ(mf_block_info(a.get(), reinterpret_cast<void *>(0x2000), &t, &requested, &size), MF_ERR_INVALID);
  EXPECT_STRNE(mf_last_error(), "");
  must_free(a.get(), p);
  EXPECT_EQ(mf_block_info(a.get(), p, &t, &requested, &size), MF_ERR_INVALID);
}

// ----------------------------------------------------------------- re-tagging

TEST(TagsStats, RetagMovesBytesBetweenTagStats) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  uint32_t l1 = mf_layer_intern("tags.retag.one"), l2 = mf_layer_intern("tags.retag.two");
  void *p = tagged(a.get(), 4 * MiB - 100, l1, MF_CAT_ACTIVATION);
  void *q = tagged(a.get(), 1000, l1, MF_CAT_ACTIVATION);
  expect_counter(tag_stats(a.get(), MF_CAT_ACTIVATION, l1).bytes, 4 * MiB + 1024, 4 * MiB + 1024, "act/l1 bytes");
  ASSERT_EQ(mf_retag(a.get(), p, mf_tag{l2, MF_CAT_GRADIENT, MF_PHASE_BACKWARD}), MF_OK) << mf_last_error();
  expect_tag(tag_of(a.get(), p), l2, MF_CAT_GRADIENT, MF_PHASE_BACKWARD);
  mf_tag_stats from = tag_stats(a.get(), MF_CAT_ACTIVATION, l1);
  expect_counter(from.bytes, 1024, 4 * MiB + 1024, "act/l1 bytes");
  expect_counter(from.requested, 1000, 4 * MiB - 100 + 1000, "act/l1 requested");
  expect_counter(from.blocks, 1, 2, "act/l1 blocks");
  mf_tag_stats to = tag_stats(a.get(), MF_CAT_GRADIENT, l2);
  expect_counter(to.bytes, 4 * MiB, 4 * MiB, "grad/l2 bytes");
  expect_counter(to.requested, 4 * MiB - 100, 4 * MiB - 100, "grad/l2 requested");
  expect_counter(to.blocks, 1, 1, "grad/l2 blocks");
  EXPECT_EQ(category_stats(a.get(), MF_CAT_ACTIVATION).bytes.current, 1024);
  EXPECT_EQ(category_stats(a.get(), MF_CAT_GRADIENT).bytes.current, (int64_t)(4 * MiB));
  // Only the layer changes: the category total stays, the layers swap.
  ASSERT_EQ(mf_retag(a.get(), q, mf_tag{l2, MF_CAT_ACTIVATION, MF_PHASE_FORWARD}), MF_OK);
  EXPECT_EQ(tag_stats(a.get(), MF_CAT_ACTIVATION, l1).bytes.current, 0);
  EXPECT_EQ(tag_stats(a.get(), MF_CAT_ACTIVATION, l2).bytes.current, 1024);
  EXPECT_EQ(category_stats(a.get(), MF_CAT_ACTIVATION).bytes.current, 1024);
  // The global stats do not move.
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.allocated_bytes.current, (int64_t)(4 * MiB + 1024));
  EXPECT_EQ(s.active_blocks.current, 2);
  expect_consistent(a.get());
  // Freeing after a retag takes the bytes from the new tag.
  must_free(a.get(), p);
  EXPECT_EQ(tag_stats(a.get(), MF_CAT_GRADIENT, l2).bytes.current, 0);
  EXPECT_EQ(category_stats(a.get(), MF_CAT_GRADIENT).bytes.current, 0);
  expect_consistent(a.get());
}

TEST(TagsStats, RetagRejectsUnknownPointersAndBadTags) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  void *p = must_malloc(a.get(), 4 * KiB);
  EXPECT_EQ(mf_retag(a.get(), reinterpret_cast<void *>(0x3000), mf_tag{0, MF_CAT_INPUT, 0}), MF_ERR_INVALID);
  EXPECT_STRNE(mf_last_error(), "");
  EXPECT_EQ(mf_retag(a.get(), p, mf_tag{0, MF_CAT_COUNT, 0}), MF_ERR_INVALID);
  EXPECT_EQ(mf_retag(a.get(), p, mf_tag{0, MF_CAT_INPUT, MF_PHASE_COUNT}), MF_ERR_INVALID);
  expect_tag(tag_of(a.get(), p), 0, MF_CAT_OTHER, MF_PHASE_NONE);
  expect_consistent(a.get());
}

// --------------------------------------------------------------------- stats

TEST(TagsStats, PerTagAndPerCategoryStats) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  uint32_t l1 = mf_layer_intern("tags.stats.l1"), l2 = mf_layer_intern("tags.stats.l2");
  void *a1 = tagged(a.get(), 4 * MiB, l1, MF_CAT_ACTIVATION);
  void *a2 = tagged(a.get(), 1000, l1, MF_CAT_ACTIVATION);
  void *a3 = tagged(a.get(), 2 * MiB, l2, MF_CAT_ACTIVATION);
  void *p1 = tagged(a.get(), 6 * MiB, l1, MF_CAT_PARAMETER);
  mf_tag_stats t = tag_stats(a.get(), MF_CAT_ACTIVATION, l1);
  expect_counter(t.bytes, 4 * MiB + 1024, 4 * MiB + 1024, "act/l1 bytes");
  expect_counter(t.requested, 4 * MiB + 1000, 4 * MiB + 1000, "act/l1 requested");
  expect_counter(t.blocks, 2, 2, "act/l1 blocks");
  EXPECT_EQ(t.blocks.total, 2);
  expect_counter(tag_stats(a.get(), MF_CAT_ACTIVATION, l2).bytes, 2 * MiB, 2 * MiB, "act/l2 bytes");
  expect_counter(tag_stats(a.get(), MF_CAT_PARAMETER, l1).bytes, 6 * MiB, 6 * MiB, "param/l1 bytes");
  mf_tag_stats never = tag_stats(a.get(), MF_CAT_GRADIENT, l2);
  expect_counter(never.bytes, 0, 0, "grad/l2 bytes");
  expect_counter(never.blocks, 0, 0, "grad/l2 blocks");
  EXPECT_EQ(never.bytes.total, 0);
  mf_tag_stats unknown_layer = tag_stats(a.get(), MF_CAT_ACTIVATION, mf_layer_intern("tags.stats.never"));
  EXPECT_EQ(unknown_layer.bytes.current, 0);
  mf_tag_stats act = category_stats(a.get(), MF_CAT_ACTIVATION);
  expect_counter(act.bytes, 6 * MiB + 1024, 6 * MiB + 1024, "activation bytes");
  expect_counter(act.blocks, 3, 3, "activation blocks");
  expect_counter(category_stats(a.get(), MF_CAT_PARAMETER).bytes, 6 * MiB, 6 * MiB, "parameter bytes");

  must_free(a.get(), a1);
  t = tag_stats(a.get(), MF_CAT_ACTIVATION, l1);
  expect_counter(t.bytes, 1024, 4 * MiB + 1024, "act/l1 bytes after free");
  expect_counter(t.blocks, 1, 2, "act/l1 blocks after free");
  EXPECT_EQ(t.bytes.total, (int64_t)(4 * MiB + 1024));
  act = category_stats(a.get(), MF_CAT_ACTIVATION);
  expect_counter(act.bytes, 2 * MiB + 1024, 6 * MiB + 1024, "activation bytes after free");
  // Allocating again below the peak leaves it; total keeps counting.
  void *a4 = tagged(a.get(), 2 * MiB, l1, MF_CAT_ACTIVATION);
  t = tag_stats(a.get(), MF_CAT_ACTIVATION, l1);
  expect_counter(t.bytes, 2 * MiB + 1024, 4 * MiB + 1024, "act/l1 bytes again");
  EXPECT_EQ(t.bytes.total, (int64_t)(6 * MiB + 1024));
  expect_consistent(a.get());
  for (void *p : {a2, a3, p1, a4}) must_free(a.get(), p);
  for (int c = 0; c < MF_CAT_COUNT; c++) {
    mf_tag_stats cs = category_stats(a.get(), (mf_category)c);
    EXPECT_EQ(cs.bytes.current, 0) << mf_category_name((mf_category)c);
    EXPECT_EQ(cs.blocks.current, 0) << mf_category_name((mf_category)c);
  }
  EXPECT_EQ(mf_get_tag_stats(a.get(), 0, MF_CAT_COUNT, l1, &t), MF_ERR_INVALID);
  EXPECT_EQ(mf_get_category_stats(a.get(), 0, MF_CAT_COUNT, &t), MF_ERR_INVALID);
  EXPECT_EQ(mf_get_tag_stats(a.get(), 3, MF_CAT_INPUT, l1, &t), MF_ERR_INVALID);
}

TEST(TagsStats, TagStatsArePerDevice) {
  Allocator a = create("backend:virtual,vmm:off,devices:2,large_segment:2MiB,merge_segments:false");
  ASSERT_TRUE(a);
  uint32_t layer = mf_layer_intern("tags.device.layer");
  void *p = mf_malloc_tagged(a.get(), 1, 4 * MiB, 0, mf_tag{layer, MF_CAT_GRADIENT, MF_PHASE_BACKWARD});
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(tag_stats(a.get(), MF_CAT_GRADIENT, layer, 1).bytes.current, (int64_t)(4 * MiB));
  EXPECT_EQ(tag_stats(a.get(), MF_CAT_GRADIENT, layer, 0).bytes.current, 0);
  EXPECT_EQ(category_stats(a.get(), MF_CAT_GRADIENT, 0).bytes.current, 0);
  EXPECT_EQ(stats(a.get(), 0).allocated_bytes.current, 0);
  EXPECT_EQ(stats(a.get(), 1).allocated_bytes.current, (int64_t)(4 * MiB));
}

TEST(TagsStats, GlobalStatsWithPeaks) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  mf_stats s = stats(a.get());
  EXPECT_EQ(s.struct_size, sizeof(mf_stats));
  EXPECT_EQ(s.version, (uint32_t)MF_STATS_VERSION);
  expect_counter(s.requested_bytes, 0, 0, "requested");
  expect_counter(s.reserved_bytes, 0, 0, "reserved");
  void *p = must_malloc(a.get(), 4 * MiB - 100);  // a 4 MiB segment
  void *q = must_malloc(a.get(), 6 * MiB);        // a 6 MiB segment
  void *r = must_malloc(a.get(), 1000);           // a 2 MiB small segment
  s = stats(a.get());
  expect_counter(s.requested_bytes, 10 * MiB - 100 + 1000, 10 * MiB - 100 + 1000, "requested");
  expect_counter(s.allocated_bytes, 10 * MiB + 1024, 10 * MiB + 1024, "allocated");
  expect_counter(s.reserved_bytes, 12 * MiB, 12 * MiB, "reserved");
  expect_counter(s.active_blocks, 3, 3, "active_blocks");
  expect_counter(s.segments, 3, 3, "segments");
  EXPECT_EQ(s.allocs, 3);
  must_free(a.get(), q);
  ASSERT_EQ(mf_empty_cache(a.get()), MF_OK);
  s = stats(a.get());
  expect_counter(s.requested_bytes, 4 * MiB - 100 + 1000, 10 * MiB - 100 + 1000, "requested after free");
  expect_counter(s.allocated_bytes, 4 * MiB + 1024, 10 * MiB + 1024, "allocated after free");
  expect_counter(s.reserved_bytes, 6 * MiB, 12 * MiB, "reserved after empty_cache");
  expect_counter(s.active_blocks, 2, 3, "active_blocks after free");
  EXPECT_EQ(s.allocated_bytes.total, (int64_t)(10 * MiB + 1024));
  EXPECT_EQ(s.reserved_bytes.total, (int64_t)(12 * MiB));
  EXPECT_EQ(s.frees, 1);
  EXPECT_EQ(s.segment_unmaps, 1);

  // Peaks restart from the current values, for the tag stats too.
  uint32_t layer = mf_layer_intern("tags.peaks.layer");
  void *t = tagged(a.get(), 8 * MiB, layer, MF_CAT_OPTIMIZER_STATE);
  must_free(a.get(), t);
  EXPECT_EQ(tag_stats(a.get(), MF_CAT_OPTIMIZER_STATE, layer).bytes.peak, (int64_t)(8 * MiB));
  ASSERT_EQ(mf_reset_peaks(a.get(), 0), MF_OK);
  s = stats(a.get());
  expect_counter(s.allocated_bytes, 4 * MiB + 1024, 4 * MiB + 1024, "allocated after reset");
  expect_counter(s.reserved_bytes, 14 * MiB, 14 * MiB, "reserved after reset");
  EXPECT_EQ(s.allocated_bytes.total, (int64_t)(18 * MiB + 1024));  // totals are not reset
  expect_counter(tag_stats(a.get(), MF_CAT_OPTIMIZER_STATE, layer).bytes, 0, 0, "optimizer/layer after reset");
  expect_counter(category_stats(a.get(), MF_CAT_OPTIMIZER_STATE).bytes, 0, 0, "optimizer after reset");
  must_free(a.get(), p);
  must_free(a.get(), r);
  s = stats(a.get());
  expect_counter(s.allocated_bytes, 0, 4 * MiB + 1024, "allocated at the end");
  EXPECT_EQ(mf_reset_peaks(a.get(), 1), MF_ERR_INVALID);
  expect_consistent(a.get());
}

TEST(TagsStats, ResetPeaksOfEveryDevice) {
  Allocator a = create("backend:virtual,vmm:off,devices:2,large_segment:2MiB,merge_segments:false");
  ASSERT_TRUE(a);
  for (int d = 0; d < 2; d++) must_free(a.get(), must_malloc(a.get(), 4 * MiB, d));
  ASSERT_EQ(stats(a.get(), 1).allocated_bytes.peak, (int64_t)(4 * MiB));
  ASSERT_EQ(mf_reset_peaks(a.get(), -1), MF_OK);
  for (int d = 0; d < 2; d++) {
    EXPECT_EQ(stats(a.get(), d).allocated_bytes.peak, 0) << "device " << d;
    EXPECT_EQ(stats(a.get(), d).reserved_bytes.peak, (int64_t)(4 * MiB)) << "device " << d;
  }
}

TEST(TagsStats, GetStatsRejectsBadArguments) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  mf_stats s;
  EXPECT_EQ(mf_get_stats(a.get(), 0, nullptr), MF_ERR_INVALID);
  EXPECT_EQ(mf_get_stats(a.get(), -1, &s), MF_ERR_INVALID);
  EXPECT_EQ(mf_get_stats(nullptr, 0, &s), MF_ERR_INVALID);
}

// ---------------------------------------------------------------------- JSON

TEST(TagsStats, StatsJsonParsesAndHasTheKeys) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  uint32_t layer = mf_layer_intern("tags.json.\"quoted\\layer\"");
  void *p = tagged(a.get(), 4 * MiB, layer, MF_CAT_ACTIVATION);
  void *q = tagged(a.get(), 2000, mf_layer_intern("tags.json.plain"), MF_CAT_PARAMETER);
  std::string json = stats_json(a.get());
  Json parser(json.c_str());
  EXPECT_TRUE(parser.document()) << "invalid JSON near offset " << (parser.p - json.c_str()) << ": " << json;
  for (const char *key :
       {"\"requested_bytes\"", "\"allocated_bytes\"", "\"reserved_bytes\"", "\"active_blocks\"", "\"segments\"",
        "\"current\"", "\"peak\"", "\"allocs\"", "\"frees\"", "\"cache_hits\"", "\"ooms\"", "\"deferred_frees\"",
        "\"activation\"", "\"parameter\"", "\"tags.json.plain\"", "\\\"quoted\\\\layer\\\""})
    EXPECT_NE(json.find(key), std::string::npos) << key << " missing from " << json;
  // The current allocated bytes appear as a number.
  EXPECT_NE(json.find(std::to_string(4 * MiB + 2048)), std::string::npos) << json;
  must_free(a.get(), p);
  must_free(a.get(), q);
  EXPECT_TRUE(Json(stats_json(a.get()).c_str()).document());
}

TEST(TagsStats, StatsJsonBufferConvention) {
  Allocator a = create(kConf);
  ASSERT_TRUE(a);
  must_malloc(a.get(), 4 * KiB);
  std::string full = stats_json(a.get());
  ASSERT_GT(full.size(), 40u);
  char small[32];
  memset(small, 'X', sizeof small);
  size_t needed = 0;
  mf_stats_json(a.get(), 0, small, sizeof small, &needed);
  EXPECT_EQ(needed, full.size() + 1);
  EXPECT_GT(needed, sizeof small);
  EXPECT_EQ(small[sizeof small - 1], '\0');
  EXPECT_EQ(std::string(small), full.substr(0, sizeof small - 1));
  // A one-byte buffer holds just the terminator; needed may be NULL.
  char one = 'X';
  mf_stats_json(a.get(), 0, &one, 1, nullptr);
  EXPECT_EQ(one, '\0');
  EXPECT_EQ(mf_stats_json(a.get(), 9, small, sizeof small, &needed), MF_ERR_INVALID);
}

}  // namespace

// The layer table can start again (for tests, and a process profiling model
// after model), but never under an allocator or a tag that holds an id.
TEST(LayerTable, ResetOnlyWhenNothingHoldsAnId) {
  if (mf_layer_reset() != MF_OK)  // e.g. the whole binary in one process: another test's allocator lives
    GTEST_SKIP() << "an allocator of another test is alive in this process: " << mf_last_error();
  uint32_t a = mf_layer_intern("reset.a"), b = mf_layer_intern("reset.b");
  ASSERT_EQ(a, 1u);
  ASSERT_EQ(b, 2u);
  mf_allocator *alloc = nullptr;
  ASSERT_EQ(mf_allocator_create("backend:virtual", &alloc), MF_OK) << mf_last_error();
  EXPECT_EQ(mf_layer_reset(), MF_ERR_INVALID);
  EXPECT_NE(std::string(mf_last_error()).find("1 allocator still exists"), std::string::npos) << mf_last_error();
  EXPECT_STREQ(mf_layer_name(b), "reset.b");  // refused: nothing changed
  mf_allocator_destroy(alloc);
  ASSERT_EQ(mf_tag_push(b, MF_PHASE_FORWARD, MF_CAT_ACTIVATION), MF_OK);
  EXPECT_EQ(mf_layer_reset(), MF_ERR_INVALID);
  EXPECT_NE(std::string(mf_last_error()).find("a tag holds a layer id"), std::string::npos) << mf_last_error();
  ASSERT_EQ(mf_tag_pop(), MF_OK);
  ASSERT_EQ(mf_tag_set_shared(mf_tag{a, MF_CAT_PARAMETER, MF_PHASE_NONE}), MF_OK);
  EXPECT_EQ(mf_layer_reset(), MF_ERR_INVALID);
  mf_tag_clear_shared();
  ASSERT_EQ(mf_layer_reset(), MF_OK) << mf_last_error();
  EXPECT_EQ(mf_layer_count(), 1u);
  EXPECT_EQ(mf_layer_name(a), nullptr);
  EXPECT_EQ(mf_layer_intern("reset.b"), 1u);  // ids start again
  EXPECT_STREQ(mf_layer_name(1), "reset.b");
}
