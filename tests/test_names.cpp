// test_names.cpp — what bindings read from libmemfit instead of copying: the
// category and phase names, the stats field lists (which lay out mf_stats),
// the keys that select the backend, and the one byte formatter.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "memfit/memfit.h"

TEST(Names, CategoriesAndPhasesAreTheEnums) {
  ASSERT_EQ(mf_category_count(), MF_CAT_COUNT);
  ASSERT_EQ(mf_phase_count(), MF_PHASE_COUNT);
  for (int i = 0; i < mf_category_count(); i++) {
    std::string name = mf_category_name((mf_category)i);
    EXPECT_NE(name, "unknown") << i;
    EXPECT_EQ(mf_category_from_name(name.c_str()), i) << name;
  }
  for (int i = 0; i < mf_phase_count(); i++) EXPECT_EQ(mf_phase_from_name(mf_phase_name((mf_phase)i)), i);
  EXPECT_STREQ(mf_category_name(MF_CAT_ACTIVATION), "activation");
  EXPECT_STREQ(mf_phase_name(MF_PHASE_RECOMPUTE), "recompute");
}

TEST(Names, StatsFieldListsLayOutTheStruct) {
  // The bindings build mf_stats from these lists: they must give its size.
  const int counters = mf_stats_counter_count(), events = mf_stats_event_count();
  EXPECT_EQ(2 * sizeof(uint32_t) + counters * sizeof(mf_counter) + events * sizeof(int64_t), sizeof(mf_stats));
  EXPECT_STREQ(mf_stats_counter_name(0), "requested_bytes");
  EXPECT_STREQ(mf_stats_counter_name(counters - 1), "segments");
  EXPECT_EQ(mf_stats_counter_name(counters), nullptr);
  EXPECT_EQ(mf_stats_counter_name(-1), nullptr);
  EXPECT_STREQ(mf_stats_event_name(0), "allocs");
  EXPECT_STREQ(mf_stats_event_name(events - 1), "syncs");
  EXPECT_EQ(mf_stats_event_name(events), nullptr);
  // Each name is a field at the offset its place in the lists gives.
  EXPECT_EQ(offsetof(mf_stats, reserved_bytes), 8 + 2 * sizeof(mf_counter));
  EXPECT_EQ(std::string(mf_stats_counter_name(2)), "reserved_bytes");
  EXPECT_EQ(offsetof(mf_stats, ooms), 8 + counters * sizeof(mf_counter) + 4 * sizeof(int64_t));
  EXPECT_EQ(std::string(mf_stats_event_name(4)), "ooms");
}

TEST(Names, OnlyBackendAndDevicesSelectTheBackend) {
  std::vector<std::string> selecting;
  for (int i = 0; i < mf_options_count(); i++)
    if (mf_options_selects_backend(i)) selecting.push_back(mf_options_key(i));
  EXPECT_EQ(selecting, (std::vector<std::string>{"backend", "devices"}));
  EXPECT_EQ(mf_options_selects_backend(-1), 0);
  EXPECT_EQ(mf_options_selects_backend(mf_options_count()), 0);
}

TEST(Names, OneByteFormatter) {
  char buf[48];
  EXPECT_STREQ(mf_format_bytes(0, buf, sizeof buf), "0 B");
  EXPECT_STREQ(mf_format_bytes(1023, buf, sizeof buf), "1023 B");
  EXPECT_STREQ(mf_format_bytes(1024, buf, sizeof buf), "1.00 KiB");
  EXPECT_STREQ(mf_format_bytes(1.5 * 1024 * 1024, buf, sizeof buf), "1.50 MiB");
  EXPECT_STREQ(mf_format_bytes(-3.0 * 1024 * 1024 * 1024, buf, sizeof buf), "-3.00 GiB");
  EXPECT_STREQ(mf_format_bytes(-512, buf, sizeof buf), "-512 B");
  EXPECT_STREQ(mf_format_bytes(18446744073709551615.0, buf, sizeof buf), "16384.00 PiB");
  char tiny[5];
  EXPECT_STREQ(mf_format_bytes(1024, tiny, sizeof tiny), "1.00");  // cut to the buffer, NUL-terminated
  EXPECT_EQ(mf_format_bytes(1024, nullptr, 0), nullptr);
}
