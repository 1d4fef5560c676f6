// test_options.cpp — the options table: defaults, mf_options_set/parse of
// "key:value,...", size and boolean syntax, MEMFIT_CONF, errors that name the
// key and value at fault, and how mf_allocator_create applies them.
#include <gtest/gtest.h>
#include <memfit/memfit.h>

#include "test_util.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace {

using namespace memfit_test;

constexpr uint64_t KiB = 1024;
constexpr uint64_t MiB = 1024 * KiB;
constexpr uint64_t GiB = 1024 * MiB;
constexpr uint64_t TiB = 1024 * GiB;

struct OptionsDeleter {
  void operator()(mf_options *o) const { mf_options_free(o); }
};
using Options = std::unique_ptr<mf_options, OptionsDeleter>;

Options fresh() {
  Options o(mf_options_new());
  EXPECT_TRUE(o) << mf_last_error();
  return o;
}

std::string get(const mf_options *o, const char *key) {
  char buf[512];
  memset(buf, 'X', sizeof buf);
  mf_status s = mf_options_get(o, key, buf, sizeof buf);
  EXPECT_EQ(s, MF_OK) << key << ": " << mf_last_error();
  return s == MF_OK ? std::string(buf) : std::string("<error>");
}

// A size option read back as bytes, whatever the text form.
uint64_t get_size(const mf_options *o, const char *key) {
  uint64_t bytes = 0xDEADBEEF;
  std::string text = get(o, key);
  EXPECT_EQ(mf_parse_size(text.c_str(), &bytes), MF_OK) << key << " = '" << text << "'";
  return bytes;
}

// A boolean option read back, accepting every spelling the parser accepts.
int get_bool(const mf_options *o, const char *key) {
  std::string v = get(o, key);
  for (const char *t : {"true", "1", "yes", "on"})
    if (v == t) return 1;
  for (const char *f : {"false", "0", "no", "off"})
    if (v == f) return 0;
  ADD_FAILURE() << key << " = '" << v << "' is not a boolean";
  return -1;
}

uint64_t parse_size(const char *text) {
  uint64_t out = 0xDEADBEEF;
  EXPECT_EQ(mf_parse_size(text, &out), MF_OK) << "'" << text << "': " << mf_last_error();
  return out;
}

// An error must name what was wrong: each needle must be in mf_last_error().
void expect_error_names(std::initializer_list<const char *> needles) {
  std::string msg = mf_last_error();
  for (const char *n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
}

void expect_invalid_size(const char *text) {
  uint64_t out = 12345;
  EXPECT_EQ(mf_parse_size(text, &out), MF_ERR_INVALID) << "'" << text << "' parsed as " << out;
  EXPECT_STRNE(mf_last_error(), "") << "'" << text << "'";
}

// Restores MEMFIT_CONF to its value before the test.
struct EnvGuard {
  std::string saved;
  bool had;
  EnvGuard() {
    const char *v = getenv("MEMFIT_CONF");
    had = v != nullptr;
    if (had) saved = v;
  }
  ~EnvGuard() {
    if (had) setenv("MEMFIT_CONF", saved.c_str(), 1);
    else unsetenv("MEMFIT_CONF");
  }
};

// ------------------------------------------------------------------ the table

TEST(Options, TheTableListsEveryKeyWithHelp) {
  const std::set<std::string> expected = {"backend",       "devices",     "capacity",      "max_split_size",
                                          "large_segment", "large_split", "segment_round", "merge_segments",
                                          "vmm",           "vmm_granule", "event_log",     "check"};
  ASSERT_EQ(mf_options_count(), (int)expected.size());
  std::set<std::string> keys;
  for (int i = 0; i < mf_options_count(); i++) {
    ASSERT_NE(mf_options_key(i), nullptr);
    ASSERT_NE(mf_options_help(i), nullptr);
    EXPECT_GT(strlen(mf_options_help(i)), 10u) << mf_options_key(i);
    keys.insert(mf_options_key(i));
  }
  EXPECT_EQ(keys, expected);
}

TEST(Options, Defaults) {
  Options o = fresh();
  ASSERT_TRUE(o);
  EXPECT_EQ(get(o.get(), "backend"), "cuda");
  EXPECT_EQ(get(o.get(), "devices"), "1");
  EXPECT_EQ(get_size(o.get(), "capacity"), 0u);         // the device's total
  EXPECT_EQ(get_size(o.get(), "max_split_size"), 0u);   // no limit
  EXPECT_EQ(get_size(o.get(), "large_segment"), 2 * MiB);
  EXPECT_EQ(get_bool(o.get(), "merge_segments"), 1);
  EXPECT_EQ(get(o.get(), "event_log"), "");
  EXPECT_EQ(get_bool(o.get(), "check"), 0);
  for (int i = 0; i < mf_options_count(); i++) get(o.get(), mf_options_key(i));  // every key reads
}

// ----------------------------------------------------------------- each key

TEST(Options, SetEachKey) {
  Options o = fresh();
  ASSERT_TRUE(o);
  for (const char *b : {"virtual", "host", "cuda"}) {
    ASSERT_EQ(mf_options_set(o.get(), "backend", b), MF_OK) << mf_last_error();
    EXPECT_EQ(get(o.get(), "backend"), b);
  }
  ASSERT_EQ(mf_options_set(o.get(), "devices", "4"), MF_OK) << mf_last_error();
  EXPECT_EQ(get(o.get(), "devices"), "4");
  ASSERT_EQ(mf_options_set(o.get(), "capacity", "1.5GiB"), MF_OK) << mf_last_error();
  EXPECT_EQ(get_size(o.get(), "capacity"), 3 * GiB / 2);
  ASSERT_EQ(mf_options_set(o.get(), "max_split_size", "64MiB"), MF_OK) << mf_last_error();
  EXPECT_EQ(get_size(o.get(), "max_split_size"), 64 * MiB);
  ASSERT_EQ(mf_options_set(o.get(), "large_segment", "4M"), MF_OK) << mf_last_error();
  EXPECT_EQ(get_size(o.get(), "large_segment"), 4 * MiB);
  for (const char *f : {"false", "0", "no", "off"}) {
    ASSERT_EQ(mf_options_set(o.get(), "merge_segments", f), MF_OK) << f;
    EXPECT_EQ(get_bool(o.get(), "merge_segments"), 0) << f;
    ASSERT_EQ(mf_options_set(o.get(), "merge_segments", "true"), MF_OK);
  }
  for (const char *t : {"true", "1", "yes", "on"}) {
    ASSERT_EQ(mf_options_set(o.get(), "check", "false"), MF_OK);
    ASSERT_EQ(mf_options_set(o.get(), "check", t), MF_OK) << t;
    EXPECT_EQ(get_bool(o.get(), "check"), 1) << t;
  }
  ASSERT_EQ(mf_options_set(o.get(), "event_log", "/tmp/memfit-options-test.log"), MF_OK);
  EXPECT_EQ(get(o.get(), "event_log"), "/tmp/memfit-options-test.log");
  ASSERT_EQ(mf_options_set(o.get(), "event_log", ""), MF_OK);
  EXPECT_EQ(get(o.get(), "event_log"), "");
}

TEST(Options, UnknownKeyIsInvalidAndNamed) {
  Options o = fresh();
  ASSERT_TRUE(o);
  EXPECT_EQ(mf_options_set(o.get(), "no_such_option", "1"), MF_ERR_INVALID);
  expect_error_names({"no_such_option"});
  EXPECT_EQ(mf_options_parse(o.get(), "devices:2,capacty:8GiB"), MF_ERR_INVALID);
  expect_error_names({"capacty"});
  char buf[64];
  EXPECT_EQ(mf_options_get(o.get(), "no_such_option", buf, sizeof buf), MF_ERR_INVALID);
  expect_error_names({"no_such_option"});
}

TEST(Options, BadValuesAreInvalidAndNamed) {
  struct Case {
    const char *key, *value;
  } cases[] = {{"backend", "tpu"},         {"devices", "zero"},       {"devices", "0"},
               {"devices", "-2"},          {"devices", "2x"},         {"capacity", "lots"},
               {"capacity", "-1GiB"},      {"capacity", "12 parsecs"}, {"max_split_size", "1.5XiB"},
               {"large_segment", "MiB"},   {"merge_segments", "maybe"}, {"check", "2"}};
  for (const Case &c : cases) {
    SCOPED_TRACE(testing::Message() << c.key << ":" << c.value);
    Options o = fresh();
    ASSERT_TRUE(o);
    std::string before = get(o.get(), c.key);
    EXPECT_EQ(mf_options_set(o.get(), c.key, c.value), MF_ERR_INVALID);
    expect_error_names({c.key, c.value});
    EXPECT_EQ(get(o.get(), c.key), before);  // a bad value leaves the option alone
    std::string conf = std::string(c.key) + ":" + c.value;
    EXPECT_EQ(mf_options_parse(o.get(), conf.c_str()), MF_ERR_INVALID);
    expect_error_names({c.key, c.value});
  }
}

// ---------------------------------------------------------------- parsing

TEST(Options, ParseSetsEveryPair) {
  Options o = fresh();
  ASSERT_TRUE(o);
  ASSERT_EQ(mf_options_parse(o.get(),
                             "backend:host,devices:3,capacity:2GiB,max_split_size:256MiB,large_segment:32MiB,"
                             "merge_segments:off,event_log:/tmp/x.log,check:yes"),
            MF_OK)
      << mf_last_error();
  EXPECT_EQ(get(o.get(), "backend"), "host");
  EXPECT_EQ(get(o.get(), "devices"), "3");
  EXPECT_EQ(get_size(o.get(), "capacity"), 2 * GiB);
  EXPECT_EQ(get_size(o.get(), "max_split_size"), 256 * MiB);
  EXPECT_EQ(get_size(o.get(), "large_segment"), 32 * MiB);
  EXPECT_EQ(get_bool(o.get(), "merge_segments"), 0);
  EXPECT_EQ(get(o.get(), "event_log"), "/tmp/x.log");
  EXPECT_EQ(get_bool(o.get(), "check"), 1);
  // A later pair wins; empty strings and NULL change nothing.
  ASSERT_EQ(mf_options_parse(o.get(), "devices:5,devices:6"), MF_OK);
  EXPECT_EQ(get(o.get(), "devices"), "6");
  EXPECT_EQ(mf_options_parse(o.get(), ""), MF_OK);
  EXPECT_EQ(mf_options_parse(o.get(), nullptr), MF_OK);
  EXPECT_EQ(get(o.get(), "devices"), "6");
}

TEST(Options, ParseStopsAtTheFirstError) {
  Options o = fresh();
  ASSERT_TRUE(o);
  EXPECT_EQ(mf_options_parse(o.get(), "devices:3,bogus:1,capacity:1GiB"), MF_ERR_INVALID);
  expect_error_names({"bogus"});
  EXPECT_EQ(get_size(o.get(), "capacity"), 0u);  // after the error: not applied
}

TEST(Options, ParseRejectsAPairWithoutAColon) {
  Options o = fresh();
  ASSERT_TRUE(o);
  EXPECT_EQ(mf_options_parse(o.get(), "backend"), MF_ERR_INVALID);
  expect_error_names({"backend"});
  EXPECT_EQ(mf_options_parse(o.get(), "capacity=8GiB"), MF_ERR_INVALID);
  expect_error_names({"capacity=8GiB"});
}

TEST(Options, CloneIsIndependent) {
  Options o = fresh();
  ASSERT_TRUE(o);
  ASSERT_EQ(mf_options_parse(o.get(), "devices:2,capacity:1GiB"), MF_OK);
  Options c(mf_options_clone(o.get()));
  ASSERT_TRUE(c);
  EXPECT_EQ(get(c.get(), "devices"), "2");
  EXPECT_EQ(get_size(c.get(), "capacity"), GiB);
  ASSERT_EQ(mf_options_set(o.get(), "devices", "7"), MF_OK);
  ASSERT_EQ(mf_options_set(c.get(), "event_log", "/tmp/clone.log"), MF_OK);
  EXPECT_EQ(get(c.get(), "devices"), "2");
  EXPECT_EQ(get(o.get(), "event_log"), "");
  mf_options_free(nullptr);  // a no-op
}

// --------------------------------------------------------------- MEMFIT_CONF

TEST(Options, ParseEnvReadsMemfitConf) {
  EnvGuard env;
  Options o = fresh();
  ASSERT_TRUE(o);
  unsetenv("MEMFIT_CONF");
  EXPECT_EQ(mf_options_parse_env(o.get()), MF_OK);
  EXPECT_EQ(get(o.get(), "devices"), "1");
  setenv("MEMFIT_CONF", "devices:3,capacity:2GiB,backend:virtual", 1);
  ASSERT_EQ(mf_options_parse_env(o.get()), MF_OK) << mf_last_error();
  EXPECT_EQ(get(o.get(), "devices"), "3");
  EXPECT_EQ(get_size(o.get(), "capacity"), 2 * GiB);
  EXPECT_EQ(get(o.get(), "backend"), "virtual");
  setenv("MEMFIT_CONF", "capacity:fourGiB", 1);
  EXPECT_EQ(mf_options_parse_env(o.get()), MF_ERR_INVALID);
  expect_error_names({"capacity", "fourGiB"});
  EXPECT_EQ(get_size(o.get(), "capacity"), 2 * GiB);
  setenv("MEMFIT_CONF", "", 1);
  EXPECT_EQ(mf_options_parse_env(o.get()), MF_OK);
}

// ------------------------------------------------------------------- sizes

TEST(Options, ParseSizeUnits) {
  EXPECT_EQ(parse_size("0"), 0u);
  EXPECT_EQ(parse_size("512"), 512u);
  EXPECT_EQ(parse_size("512B"), 512u);
  EXPECT_EQ(parse_size("1K"), KiB);
  EXPECT_EQ(parse_size("1KiB"), KiB);
  EXPECT_EQ(parse_size("3M"), 3 * MiB);
  EXPECT_EQ(parse_size("3MiB"), 3 * MiB);
  EXPECT_EQ(parse_size("8G"), 8 * GiB);
  EXPECT_EQ(parse_size("8GiB"), 8 * GiB);
  EXPECT_EQ(parse_size("2T"), 2 * TiB);
  EXPECT_EQ(parse_size("2TiB"), 2 * TiB);
  EXPECT_EQ(parse_size("1.5GiB"), 3 * GiB / 2);
  EXPECT_EQ(parse_size("0.5KiB"), 512u);
  EXPECT_EQ(parse_size("2.25MiB"), 9 * MiB / 4);
  EXPECT_EQ(parse_size("123456789012"), 123456789012u);
  EXPECT_EQ(parse_size("16384TiB"), 16384 * TiB);  // 2^54: still fits
}

TEST(Options, ParseSizeIsExactUpToTheLargestValue) {
  // Sizes are uint64: integers must not go through a double on the way.
  EXPECT_EQ(parse_size("9007199254740993"), 9007199254740993u);  // 2^53 + 1
  EXPECT_EQ(parse_size("18446744073709551615"), UINT64_MAX);
  expect_invalid_size("18446744073709551616");  // 2^64
}

TEST(Options, ParseSizeRejectsBadText) {
  for (const char *bad : {"", "-1", "-0.5GiB", "abc", "GiB", "12XB", "1.2.3GiB", "1GiBs", "99999999999TiB",
                          "1e30", "1e3", "0x100", "5 6"})
    expect_invalid_size(bad);
  uint64_t out;
  EXPECT_EQ(mf_parse_size(nullptr, &out), MF_ERR_INVALID);
  EXPECT_EQ(mf_parse_size("1GiB", nullptr), MF_ERR_INVALID);
}

// ------------------------------------------------------ allocator creation

TEST(Options, AllocatorTakesItsOptionsFromTheString) {
  mf_allocator *raw = nullptr;
  ASSERT_EQ(mf_allocator_create("backend:virtual,devices:3,capacity:1GiB,max_split_size:128MiB", &raw), MF_OK)
      << mf_last_error();
  Allocator a(raw);
  EXPECT_EQ(mf_allocator_device_count(a.get()), 3);
  for (int d = 0; d < 3; d++) EXPECT_EQ(mf_capacity(a.get(), d), GiB) << d;
  const mf_options *o = mf_allocator_options(a.get());
  ASSERT_NE(o, nullptr);
  EXPECT_EQ(get(o, "backend"), "virtual");
  EXPECT_EQ(get(o, "devices"), "3");
  EXPECT_EQ(get_size(o, "max_split_size"), 128 * MiB);
  EXPECT_EQ(get_size(o, "large_segment"), 2 * MiB);  // untouched: the default
}

TEST(Options, CheckOptionRunsTheAllocatorAsUsual) {
  mf_allocator *raw = nullptr;
  ASSERT_EQ(mf_allocator_create("backend:virtual,check:true", &raw), MF_OK) << mf_last_error();
  Allocator a(raw);
  std::vector<void *> ptrs;
  for (int i = 0; i < 200; i++) {
    void *p = mf_malloc(a.get(), 0, (size_t)(i * 37 % 300 + 1) * 1000, 0);
    ASSERT_NE(p, nullptr) << mf_last_error();
    ptrs.push_back(p);
    if (i % 3 == 0) {
      ASSERT_EQ(mf_free(a.get(), ptrs[i / 2]), MF_OK);
      ptrs[i / 2] = nullptr;
    }
  }
  for (void *p : ptrs) ASSERT_EQ(mf_free(a.get(), p), MF_OK);
  EXPECT_EQ(mf_check(a.get()), MF_OK) << mf_last_error();
}

TEST(Options, AllocatorWithABadConfFailsCleanly) {
  struct Case {
    const char *conf, *named;
  } cases[] = {{"backend:virtual,bogus_key:1", "bogus_key"},
               {"backend:virtual,capacity:huge", "huge"},
               {"backend:quantum", "quantum"},
               {"backend:virtual,devices:0", "devices"}};
  for (const Case &c : cases) {
    SCOPED_TRACE(c.conf);
    mf_allocator *a = reinterpret_cast<mf_allocator *>(0x1);
    EXPECT_EQ(mf_allocator_create(c.conf, &a), MF_ERR_INVALID);
    EXPECT_EQ(a, nullptr);
    expect_error_names({c.named});
  }
}

TEST(Options, AllocatorCreateWithCopiesTheOptions) {
  Options o = fresh();
  ASSERT_TRUE(o);
  ASSERT_EQ(mf_options_parse(o.get(), "capacity:64MiB,large_segment:8MiB,vmm:off"), MF_OK);
  mf_backend *b = nullptr;
  ASSERT_EQ(mf_backend_virtual_create(2, 0, &b), MF_OK) << mf_last_error();
  mf_allocator *raw = nullptr;
  ASSERT_EQ(mf_allocator_create_with(b, o.get(), &raw), MF_OK) << mf_last_error();
  Allocator a(raw);
  ASSERT_EQ(mf_options_set(o.get(), "capacity", "1GiB"), MF_OK);  // after creation: no effect
  EXPECT_EQ(mf_allocator_device_count(a.get()), 2);
  EXPECT_EQ(mf_capacity(a.get(), 1), 64 * MiB);
  EXPECT_EQ(get_size(mf_allocator_options(a.get()), "capacity"), 64 * MiB);
  EXPECT_EQ(mf_allocator_backend(a.get()), b);
  EXPECT_EQ(mf_malloc(a.get(), 0, 100 * MiB, 0), nullptr);  // over the 64 MiB budget
  void *p = mf_malloc(a.get(), 0, 3 * MiB, 0);
  EXPECT_NE(p, nullptr) << mf_last_error();
  mf_stats s;
  ASSERT_EQ(mf_get_stats(a.get(), 0, &s), MF_OK);
  EXPECT_EQ(s.reserved_bytes.current, (int64_t)(8 * MiB));  // large_segment applied
}

TEST(Options, AllocatorCreateWithNullOptionsUsesDefaults) {
  mf_backend *b = nullptr;
  ASSERT_EQ(mf_backend_virtual_create(1, 0, &b), MF_OK);
  mf_allocator *raw = nullptr;
  ASSERT_EQ(mf_allocator_create_with(b, nullptr, &raw), MF_OK) << mf_last_error();
  Allocator a(raw);
  EXPECT_EQ(get_size(mf_allocator_options(a.get()), "large_segment"), 2 * MiB);
  EXPECT_EQ(mf_capacity(a.get(), 0), TiB);  // the virtual backend's total
}

TEST(Options, AllocatorCreateWithoutABackendFails) {
  mf_allocator *a = reinterpret_cast<mf_allocator *>(0x1);
  EXPECT_NE(mf_allocator_create_with(nullptr, nullptr, &a), MF_OK);
  EXPECT_EQ(a, nullptr);
  EXPECT_STRNE(mf_last_error(), "");
}

}  // namespace

// Sizes that segments and granules are rounded to are bounded (256 TiB), so
// that rounding a request cannot wrap to a 0-byte segment: these used to
// crash the allocator at the first allocation (segfault, double free).
TEST(Options, RoundingSizesNearTwoToThe64AreRefusedNamingTheKey) {
  for (const char *key : {"large_segment", "segment_round", "vmm_granule"}) {
    for (const char *value : {"18446744073709551615", "9223372036854775808", "300TiB"}) {
      std::string conf = std::string("backend:virtual,") + key + ":" + value;
      mf_allocator *a = reinterpret_cast<mf_allocator *>(0x1);
      EXPECT_EQ(mf_allocator_create(conf.c_str(), &a), MF_ERR_INVALID) << conf;
      std::string err = mf_last_error();
      EXPECT_NE(err.find(key), std::string::npos) << err;
      EXPECT_NE(err.find("256TiB"), std::string::npos) << err;
    }
  }
  // At the bound the allocator works.
  for (const char *conf : {"backend:virtual,vmm:off,large_segment:256TiB,capacity:1TiB",
                           "backend:virtual,vmm:off,segment_round:1TiB,capacity:1TiB"}) {
    mf_allocator *a = nullptr;
    ASSERT_EQ(mf_allocator_create(conf, &a), MF_OK) << conf << ": " << mf_last_error();
    void *p = mf_malloc(a, 0, 3 << 20, 0);
    EXPECT_EQ(mf_check(a), MF_OK) << mf_last_error();
    if (p) {
      EXPECT_EQ(mf_free(a, p), MF_OK);
    }
    EXPECT_EQ(mf_check(a), MF_OK) << mf_last_error();
    mf_allocator_destroy(a);
  }
}

// A capacity above what the device has (here 2^64 - 1 on a 1 TiB device):
// a request larger than the device fails at once as an OOM. It used to ask
// the host for a handle per granule of the request first, 32 TiB for 2^63
// bytes, which AddressSanitizer aborts on (found by tests/fuzz/fuzz_options,
// corpus/options/crash_capacity_above_device.txt).
TEST(Options, CapacityAboveTheDeviceRefusesALargerRequestAsOom) {
  for (const char *vmm : {"on", "off"}) {
    mf_options *o = mf_options_new();
    ASSERT_TRUE(o);
    ASSERT_EQ(mf_options_parse(o, (std::string("capacity:18446744073709551615,vmm:") + vmm).c_str()), MF_OK)
        << mf_last_error();
    mf_backend *b = nullptr;
    ASSERT_EQ(mf_backend_virtual_create(1, TiB, &b), MF_OK) << mf_last_error();
    mf_allocator *a = nullptr;
    ASSERT_EQ(mf_allocator_create_with(b, o, &a), MF_OK) << mf_last_error();
    mf_options_free(o);
    void *small = mf_malloc(a, 0, 3 << 20, 0);
    ASSERT_TRUE(small) << mf_last_error();
    for (uint64_t size : {(uint64_t)SIZE_MAX / 2, uint64_t(1) << 62, TiB + 1}) {
      EXPECT_EQ(mf_malloc(a, 0, (size_t)size, 0), nullptr) << vmm << ": " << size;
      EXPECT_EQ(mf_last_status(), MF_ERR_OOM) << vmm << ": " << size << ": " << mf_last_error();
      EXPECT_EQ(mf_check(a), MF_OK) << mf_last_error();
    }
    void *again = mf_malloc(a, 0, 5 << 20, 0);  // the allocator goes on as before
    EXPECT_TRUE(again) << mf_last_error();
    EXPECT_EQ(mf_free(a, again), MF_OK);
    EXPECT_EQ(mf_free(a, small), MF_OK);
    EXPECT_EQ(mf_check(a), MF_OK) << mf_last_error();
    mf_allocator_destroy(a);
  }
}

// A nonzero size below one byte truncated to 0, which capacity reads as "no
// limit": "--capacity 0.1" silently removed the cap.
TEST(Options, ASizeBelowOneByteIsRefusedNotZero) {
  uint64_t out = 7;
  for (const char *text : {"0.1", "0.5B", "0.0000000001KiB"}) {
    EXPECT_EQ(mf_parse_size(text, &out), MF_ERR_INVALID) << text;
    EXPECT_NE(std::string(mf_last_error()).find("less than one byte"), std::string::npos) << mf_last_error();
  }
  EXPECT_EQ(out, 7u);
  ASSERT_EQ(mf_parse_size("0", &out), MF_OK);
  EXPECT_EQ(out, 0u);
  ASSERT_EQ(mf_parse_size("0.0", &out), MF_OK);
  EXPECT_EQ(out, 0u);
  ASSERT_EQ(mf_parse_size("0.5KiB", &out), MF_OK);
  EXPECT_EQ(out, 512u);
  mf_allocator *a = reinterpret_cast<mf_allocator *>(0x1);
  EXPECT_EQ(mf_allocator_create("backend:virtual,capacity:0.1", &a), MF_ERR_INVALID);
  EXPECT_NE(std::string(mf_last_error()).find("capacity"), std::string::npos) << mf_last_error();
}
