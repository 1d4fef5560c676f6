// test_snapshot.cpp — mf_snapshot_json: segments and blocks of one device or of
// all, parsed back and held against the allocator's own stats; block states
// (allocated, free, pending behind record_stream) and tags; the (buf, len,
// needed) convention; with segments (vmm:off) and page-mapped pools (vmm:on).
#include <gtest/gtest.h>
#include <memfit/memfit.h>

#include "test_util.h"

#include <atomic>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace memfit_test;

constexpr uintptr_t kS1 = 0x1001, kS2 = 0x2002;

// ------------------------------------------------------------ a JSON reader

// Just enough JSON to walk the snapshot: numbers keep their text so that
// 64-bit addresses compare exactly.
struct JValue {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  bool boolean = false;
  std::string text;  // a number's digits or a string's value
  std::vector<JValue> items;
  std::map<std::string, JValue> fields;

  bool has(const std::string &key) const { return kind == Object && fields.count(key); }
  const JValue &operator[](const std::string &key) const {
    static const JValue missing;
    auto it = fields.find(key);
    EXPECT_TRUE(kind == Object && it != fields.end()) << "no field " << key;
    return it == fields.end() ? missing : it->second;
  }
  uint64_t u64() const {
    EXPECT_EQ(kind, Number);
    return strtoull(text.c_str(), nullptr, 10);
  }
  int64_t i64() const {
    EXPECT_EQ(kind, Number);
    return strtoll(text.c_str(), nullptr, 10);
  }
  const std::string &str() const {
    EXPECT_EQ(kind, String);
    return text;
  }
};

struct JParser {
  const char *p;
  bool ok = true;
  void ws() {
    while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++;
  }
  bool fail() { return ok = false; }
  bool string(std::string *out) {
    if (*p != '"') return fail();
    for (p++; *p && *p != '"'; p++) {
      if ((unsigned char)*p < 0x20) return fail();
      if (*p != '\\') {
        out->push_back(*p);
        continue;
      }
      p++;
      if (*p == 'u') {
        char hex[5] = {0};
        for (int i = 0; i < 4; i++) {
          if (!isxdigit((unsigned char)p[1])) return fail();
          hex[i] = *++p;
        }
        long code = strtol(hex, nullptr, 16);
        if (code >= 0x80) return fail();  // memfit escapes only control characters
        out->push_back((char)code);
      } else if (*p == '"' || *p == '\\' || *p == '/') {
        out->push_back(*p);
      } else {
        return fail();
      }
    }
    if (*p != '"') return fail();
    p++;
    return true;
  }
  bool value(JValue *v, int depth = 0) {
    if (depth > 32) return fail();
    ws();
    if (*p == '{') {
      v->kind = JValue::Object;
      p++;
      ws();
      if (*p == '}') return p++, true;
      for (;;) {
        ws();
        std::string key;
        if (!string(&key)) return false;
        ws();
        if (*p++ != ':') return fail();
        if (!value(&v->fields[key], depth + 1)) return false;
        ws();
        if (*p == '}') return p++, true;
        if (*p++ != ',') return fail();
      }
    }
    if (*p == '[') {
      v->kind = JValue::Array;
      p++;
      ws();
      if (*p == ']') return p++, true;
      for (;;) {
        v->items.emplace_back();
        if (!value(&v->items.back(), depth + 1)) return false;
        ws();
        if (*p == ']') return p++, true;
        if (*p++ != ',') return fail();
      }
    }
    if (*p == '"') {
      v->kind = JValue::String;
      return string(&v->text);
    }
    if (!strncmp(p, "true", 4) || !strncmp(p, "false", 5)) {
      v->kind = JValue::Bool;
      v->boolean = *p == 't';
      p += v->boolean ? 4 : 5;
      return true;
    }
    if (!strncmp(p, "null", 4)) return p += 4, true;
    v->kind = JValue::Number;
    if (*p == '-') v->text.push_back(*p++);
    if (!isdigit((unsigned char)*p)) return fail();
    while (isdigit((unsigned char)*p)) v->text.push_back(*p++);
    return true;  // memfit writes integers only
  }
};

std::string snapshot_text(mf_allocator *a, int device) {
  size_t needed = 0;
  EXPECT_EQ(mf_snapshot_json(a, device, nullptr, 0, &needed), MF_OK) << mf_last_error();
  std::vector<char> buf(needed + 1);
  for (;;) {  // another thread may grow the state between the calls
    EXPECT_EQ(mf_snapshot_json(a, device, buf.data(), buf.size(), &needed), MF_OK) << mf_last_error();
    if (needed <= buf.size()) break;
    buf.resize(needed * 2);
  }
  EXPECT_EQ(strlen(buf.data()) + 1, needed);
  return std::string(buf.data());
}

JValue snapshot(mf_allocator *a, int device = -1) {
  std::string text = snapshot_text(a, device);
  JValue v;
  JParser parser{text.c_str()};
  EXPECT_TRUE(parser.value(&v)) << "does not parse near offset " << parser.p - text.c_str() << ":\n" << text;
  parser.ws();
  EXPECT_EQ(*parser.p, '\0') << "text after the JSON value";
  return v;
}

void *must_malloc(mf_allocator *a, size_t size, uintptr_t stream = 0, int device = 0) {
  void *p = mf_malloc(a, device, size, stream);
  EXPECT_NE(p, nullptr) << "mf_malloc(" << size << ") failed: " << mf_last_error();
  return p;
}

void *tagged(mf_allocator *a, size_t size, uint32_t layer, mf_category c, mf_phase p, int device = 0) {
  void *ptr = mf_malloc_tagged(a, device, size, 0, mf_tag{layer, (uint8_t)c, (uint8_t)p});
  EXPECT_NE(ptr, nullptr) << mf_last_error();
  return ptr;
}

void must_free(mf_allocator *a, void *p) { EXPECT_EQ(mf_free(a, p), MF_OK) << mf_last_error(); }

uint64_t U(const void *p) { return reinterpret_cast<uintptr_t>(p); }

// The block at addr in a parsed snapshot (a default JValue if none).
const JValue &block_at(const JValue &snap, uint64_t addr) {
  static const JValue none;
  for (const JValue &seg : snap["segments"].items)
    for (const JValue &b : seg["blocks"].items)
      if (b["address"].u64() == addr) return b;
  ADD_FAILURE() << "no block at " << addr;
  return none;
}

struct Sums {
  int64_t allocated = 0, requested = 0, reserved = 0, segments = 0, live = 0, pending = 0;
};

// Walks the snapshot of one device, checks that blocks tile their segments
// and that a block's fields fit its state, and sums what the stats count.
Sums walk(const JValue &snap, int device, bool page_mapped) {
  Sums s;
  uint64_t last_end = 0;
  for (const JValue &seg : snap["segments"].items) {
    if (seg["device"].i64() != device) continue;
    s.segments++;
    s.reserved += seg["size"].i64();
    EXPECT_EQ(seg["page_mapped"].boolean, page_mapped);
    EXPECT_TRUE(seg["pool"].str() == "small" || seg["pool"].str() == "large") << seg["pool"].str();
    EXPECT_GE(seg["address"].u64(), last_end) << "segments out of address order";
    uint64_t at = seg["address"].u64();
    for (const JValue &b : seg["blocks"].items) {
      EXPECT_EQ(b["address"].u64(), at) << "a gap or an overlap in the segment at " << seg["address"].u64();
      at += b["size"].u64();
      const std::string &state = b["state"].str();
      if (state == "free") {
        EXPECT_FALSE(b.has("layer") || b.has("requested"));
        continue;
      }
      EXPECT_TRUE(state == "allocated" || state == "pending_free") << state;
      EXPECT_LE(b["requested"].u64(), b["size"].u64());
      EXPECT_GE(mf_category_from_name(b["category"].str().c_str()), 0) << b["category"].str();
      EXPECT_GE(mf_phase_from_name(b["phase"].str().c_str()), 0) << b["phase"].str();
      EXPECT_TRUE(b.has("layer") && b.has("layer_id"));
      if (state == "allocated") {
        s.live++;
        s.allocated += b["size"].i64();
        s.requested += b["requested"].i64();
      } else {
        s.pending++;
        EXPECT_GT(b["pending_events"].u64(), 0u);
      }
    }
    EXPECT_EQ(at, seg["address"].u64() + seg["size"].u64()) << "blocks do not end at the segment's end";
    last_end = seg["address"].u64() + seg["size"].u64();
  }
  return s;
}

void expect_sums_match_stats(mf_allocator *a, const JValue &snap, int device) {
  mf_stats st = stats(a, device);
  Sums s = walk(snap, device, mf_allocator_granule(a) != 0);
  EXPECT_EQ(s.allocated, st.allocated_bytes.current);
  EXPECT_EQ(s.requested, st.requested_bytes.current);
  EXPECT_EQ(s.reserved, st.reserved_bytes.current);
  EXPECT_EQ(s.segments, st.segments.current);
  EXPECT_EQ(s.live, st.active_blocks.current);
  bool found = false;
  for (const JValue &d : snap["devices"].items) {
    if (d["device"].i64() != device) continue;
    found = true;
    EXPECT_EQ(d["allocated_bytes"].i64(), s.allocated);
    EXPECT_EQ(d["reserved_bytes"].i64(), s.reserved);
    EXPECT_EQ(d["requested_bytes"].i64(), s.requested);
    EXPECT_EQ(d["active_blocks"].i64(), s.live);
    EXPECT_EQ(d["segments"].i64(), s.segments);
    EXPECT_EQ(d["pending_blocks"].i64(), s.pending);
    EXPECT_EQ(d["capacity"].u64(), mf_capacity(a, device));
  }
  EXPECT_TRUE(found) << "device " << device << " missing from \"devices\"";
}

// --------------------------------------------------- both segment policies

class SnapshotPolicy : public testing::TestWithParam<const char *> {};

INSTANTIATE_TEST_SUITE_P(VmmOffAndOn, SnapshotPolicy,
                         testing::Values("backend:virtual,vmm:off,merge_segments:false", "backend:virtual,vmm:on"),
                         [](const testing::TestParamInfo<const char *> &info) {
                           return std::string(strstr(info.param, "vmm:on") ? "Vmm" : "Segments");
                         });

TEST_P(SnapshotPolicy, SumsEqualTheStatsThroughAllocationsAndFrees) {
  Allocator a = create(GetParam());
  ASSERT_TRUE(a);
  EXPECT_EQ(mf_allocator_granule(a.get()) != 0, strstr(GetParam(), "vmm:on") != nullptr);
  expect_sums_match_stats(a.get(), snapshot(a.get(), 0), 0);  // empty: no segments
  EXPECT_TRUE(snapshot(a.get(), 0)["segments"].items.empty());
  std::vector<void *> live;
  const size_t sizes[] = {1, 700, 4 * KiB, 100 * KiB, 1 * MiB, 1 * MiB + 1, 3 * MiB, 7 * MiB + 123, 40 * MiB};
  for (int round = 0; round < 3; round++)
    for (size_t size : sizes) live.push_back(must_malloc(a.get(), size + round * 512));
  JValue full = snapshot(a.get());
  expect_sums_match_stats(a.get(), full, 0);
  bool small = false, large = false;
  for (const JValue &seg : full["segments"].items) (seg["pool"].str() == "small" ? small : large) = true;
  EXPECT_TRUE(small && large) << "expected segments of both pools";
  for (size_t i = 0; i < live.size(); i += 2) must_free(a.get(), live[i]);  // holes between live blocks
  JValue holes = snapshot(a.get());
  expect_sums_match_stats(a.get(), holes, 0);
  EXPECT_EQ(block_at(holes, U(live[0]))["state"].str(), "free");
  EXPECT_EQ(block_at(holes, U(live[1]))["state"].str(), "allocated");
  EXPECT_EQ(block_at(holes, U(live[1]))["requested"].u64(), 700u);
  for (size_t i = 1; i < live.size(); i += 2) must_free(a.get(), live[i]);
  expect_sums_match_stats(a.get(), snapshot(a.get()), 0);
  EXPECT_EQ(mf_empty_cache(a.get()), MF_OK);
  expect_sums_match_stats(a.get(), snapshot(a.get()), 0);
  EXPECT_EQ(mf_check(a.get()), MF_OK) << mf_last_error();
}

TEST_P(SnapshotPolicy, BlocksCarryTheirTags) {
  Allocator a = create(GetParam());
  ASSERT_TRUE(a);
  uint32_t attn = mf_layer_intern("snapshot.blocks.0.attn");
  uint32_t odd = mf_layer_intern("snapshot \"quoted\\layer\"\n");
  void *p = tagged(a.get(), 3 * MiB, attn, MF_CAT_ACTIVATION, MF_PHASE_FORWARD);
  void *q = tagged(a.get(), 8 * KiB, odd, MF_CAT_GRADIENT, MF_PHASE_BACKWARD);
  void *r = must_malloc(a.get(), 512);  // the empty tag stack: no layer, other, none
  JValue snap = snapshot(a.get(), 0);
  const JValue &bp = block_at(snap, U(p)), &bq = block_at(snap, U(q)), &br = block_at(snap, U(r));
  EXPECT_EQ(bp["layer"].str(), "snapshot.blocks.0.attn");
  EXPECT_EQ(bp["layer_id"].u64(), attn);
  EXPECT_EQ(bp["category"].str(), "activation");
  EXPECT_EQ(bp["phase"].str(), "forward");
  EXPECT_EQ(bp["requested"].u64(), 3 * MiB);
  EXPECT_EQ(bq["layer"].str(), "snapshot \"quoted\\layer\"\n");
  EXPECT_EQ(bq["category"].str(), "gradient");
  EXPECT_EQ(bq["phase"].str(), "backward");
  EXPECT_EQ(br["layer"].str(), "");
  EXPECT_EQ(br["layer_id"].u64(), 0u);
  EXPECT_EQ(br["category"].str(), "other");
  EXPECT_EQ(br["phase"].str(), "none");
  // A re-tag shows at once.
  ASSERT_EQ(mf_retag(a.get(), p, mf_tag{attn, MF_CAT_PARAMETER, MF_PHASE_OPTIMIZER}), MF_OK) << mf_last_error();
  const JValue after = snapshot(a.get(), 0);
  EXPECT_EQ(block_at(after, U(p))["category"].str(), "parameter");
  EXPECT_EQ(block_at(after, U(p))["phase"].str(), "optimizer");
  for (void *x : {p, q, r}) must_free(a.get(), x);
}

TEST_P(SnapshotPolicy, APendingFreeIsHeldBackUntilItsEventCompletes) {
  Allocator a = create(GetParam());
  ASSERT_TRUE(a);
  uint32_t layer = mf_layer_intern("snapshot.pending");
  void *p = mf_malloc_tagged(a.get(), 0, 2 * MiB, kS1, mf_tag{layer, MF_CAT_TEMPORARY, MF_PHASE_BACKWARD});
  ASSERT_NE(p, nullptr) << mf_last_error();
  void *keep = must_malloc(a.get(), 4 * KiB, kS1);
  ASSERT_EQ(mf_record_stream(a.get(), p, kS2), MF_OK) << mf_last_error();
  must_free(a.get(), p);
  JValue snap = snapshot(a.get(), 0);
  const JValue &b = block_at(snap, U(p));
  EXPECT_EQ(b["state"].str(), "pending_free");
  EXPECT_EQ(b["layer"].str(), "snapshot.pending");
  EXPECT_EQ(b["category"].str(), "temporary");
  EXPECT_EQ(b["pending_events"].u64(), 1u);
  expect_sums_match_stats(a.get(), snap, 0);  // pending bytes are not allocated bytes
  bool on_stream = false;
  for (const JValue &seg : snap["segments"].items) on_stream |= seg["stream"].u64() == kS1;
  EXPECT_TRUE(on_stream) << "no segment names stream " << kS1;
  ASSERT_EQ(mf_backend_sim_complete(mf_allocator_backend(a.get()), 0, kS2), MF_OK) << mf_last_error();
  // A request the cache cannot serve makes the allocator look at what has waited.
  must_free(a.get(), must_malloc(a.get(), 2 * MiB, kS1));
  JValue later = snapshot(a.get(), 0);
  EXPECT_EQ(block_at(later, U(p))["state"].str(), "free");
  expect_sums_match_stats(a.get(), later, 0);
  must_free(a.get(), keep);
}

// ------------------------------------------------------------- conventions

TEST(Snapshot, TooSmallABufferGetsATerminatedPrefixAndTheSizeNeeded) {
  Allocator a = create("backend:virtual,vmm:off");
  ASSERT_TRUE(a);
  void *p = must_malloc(a.get(), 3 * MiB);
  std::string full = snapshot_text(a.get(), 0);
  ASSERT_GT(full.size(), 64u);
  size_t needed = 0;
  EXPECT_EQ(mf_snapshot_json(a.get(), 0, nullptr, 0, &needed), MF_OK);
  EXPECT_EQ(needed, full.size() + 1);
  std::vector<char> small(32, 'x');
  needed = 0;
  EXPECT_EQ(mf_snapshot_json(a.get(), 0, small.data(), small.size(), &needed), MF_OK);
  EXPECT_EQ(needed, full.size() + 1);
  EXPECT_EQ(small[31], '\0');
  EXPECT_EQ(std::string(small.data()), full.substr(0, 31));
  std::vector<char> exact(full.size() + 1);
  EXPECT_EQ(mf_snapshot_json(a.get(), 0, exact.data(), exact.size(), nullptr), MF_OK);  // needed may be NULL
  EXPECT_EQ(std::string(exact.data()), full);
  must_free(a.get(), p);
}

TEST(Snapshot, BadArgumentsAreInvalid) {
  Allocator a = create("backend:virtual,devices:2");
  ASSERT_TRUE(a);
  char buf[16];
  size_t needed = 0;
  EXPECT_EQ(mf_snapshot_json(nullptr, 0, buf, sizeof buf, &needed), MF_ERR_INVALID);
  EXPECT_EQ(mf_snapshot_json(a.get(), 2, buf, sizeof buf, &needed), MF_ERR_INVALID);
  EXPECT_NE(std::string(mf_last_error()).find("device 2"), std::string::npos) << mf_last_error();
  EXPECT_EQ(mf_snapshot_json(a.get(), -2, buf, sizeof buf, &needed), MF_ERR_INVALID);
}

TEST(Snapshot, MinusOneMeansEveryDevice) {
  for (const char *conf : {"backend:virtual,devices:2,vmm:off", "backend:virtual,devices:2,vmm:on"}) {
    SCOPED_TRACE(conf);
    Allocator a = create(conf);
    ASSERT_TRUE(a);
    void *d0 = must_malloc(a.get(), 5 * MiB, 0, 0);
    void *d1 = must_malloc(a.get(), 64 * KiB, 0, 1);
    void *d1b = must_malloc(a.get(), 9 * MiB, 0, 1);
    JValue all = snapshot(a.get(), -1);
    ASSERT_EQ(all["devices"].items.size(), 2u);
    expect_sums_match_stats(a.get(), all, 0);
    expect_sums_match_stats(a.get(), all, 1);
    EXPECT_EQ(block_at(all, U(d1))["state"].str(), "allocated");
    for (int device : {0, 1}) {
      JValue one = snapshot(a.get(), device);
      ASSERT_EQ(one["devices"].items.size(), 1u);
      EXPECT_EQ(one["devices"].items[0]["device"].i64(), device);
      for (const JValue &seg : one["segments"].items) EXPECT_EQ(seg["device"].i64(), device);
      expect_sums_match_stats(a.get(), one, device);
    }
    for (void *p : {d0, d1, d1b}) must_free(a.get(), p);
  }
}

TEST(Snapshot, ReportsTheTraceLengthAtItsInstant) {
  Allocator a = create("backend:virtual,vmm:on");
  ASSERT_TRUE(a);
  JValue before = snapshot(a.get());
  EXPECT_FALSE(before["trace"]["recording"].boolean);
  EXPECT_EQ(before["trace"]["events"].u64(), 0u);
  ASSERT_EQ(mf_trace_start(a.get(), 1000), MF_OK) << mf_last_error();
  void *p = must_malloc(a.get(), 3 * MiB);
  must_free(a.get(), must_malloc(a.get(), 4 * KiB));
  size_t events = 0, dropped = 0;
  ASSERT_EQ(mf_trace_count(a.get(), &events, &dropped), MF_OK);
  JValue during = snapshot(a.get());
  EXPECT_TRUE(during["trace"]["recording"].boolean);
  EXPECT_EQ(during["trace"]["events"].u64(), events);
  EXPECT_GE(events, 3u);  // at least the allocs and the free (and segment maps)
  EXPECT_EQ(during["trace"]["dropped"].u64(), 0u);
  ASSERT_EQ(mf_trace_stop(a.get()), MF_OK);
  EXPECT_FALSE(snapshot(a.get())["trace"]["recording"].boolean);
  EXPECT_EQ(snapshot(a.get())["format"].str(), "memfit-snapshot");
  must_free(a.get(), p);
}

// Each snapshot is one instant: while another thread allocates and frees,
// every snapshot's blocks still sum to the stats it carries.
TEST(Snapshot, IsConsistentWhileAnotherThreadAllocates) {
  Allocator a = create("backend:virtual,devices:2,vmm:on");
  ASSERT_TRUE(a);
  std::atomic<bool> stop{false};
  std::thread worker([&] {
    std::vector<void *> held;
    for (unsigned i = 0; !stop.load(); i++) {
      int device = (int)(i % 2);
      size_t size = (i * 7919u) % (3 * MiB) + 1;
      if (void *p = mf_malloc(a.get(), device, size, 0)) held.push_back(p);
      if (held.size() > 40 || (i % 3 == 0 && !held.empty())) {
        mf_free(a.get(), held.front());
        held.erase(held.begin());
      }
    }
    for (void *p : held) mf_free(a.get(), p);
  });
  for (int i = 0; i < 1000; i++) {
    JValue snap = snapshot(a.get(), -1);
    for (const JValue &d : snap["devices"].items) {
      int device = (int)d["device"].i64();
      Sums s = walk(snap, device, true);
      ASSERT_EQ(s.allocated, d["allocated_bytes"].i64()) << "snapshot " << i << " device " << device;
      ASSERT_EQ(s.reserved, d["reserved_bytes"].i64()) << "snapshot " << i << " device " << device;
      ASSERT_EQ(s.live, d["active_blocks"].i64()) << "snapshot " << i << " device " << device;
    }
  }
  stop = true;
  worker.join();
  EXPECT_EQ(mf_check(a.get()), MF_OK) << mf_last_error();
}

}  // namespace
