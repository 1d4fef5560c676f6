// test_planner_ladder.cpp — the ladder check of PLAN.md, "The ladder check":
// the timing ladder's measured peaks against the model's, per precision and
// mode; a plan is kept below its limit by the under-prediction at its batch
// (between points the larger relative error, past the last also the last
// rise) of the modes it uses; without
// peaks nothing changes; bad peaks are refused by name.
#include <algorithm>
#include <cmath>
#include <functional>

#include "test_planner_util.h"

using namespace planner_test;

namespace {

Synth ladder_synth(uint64_t seed) {
  std::mt19937_64 rng(seed);
  SynthOptions so;
  so.layers = 5;
  so.precisions = 1;
  so.measured_checkpoint = true;
  return make_synth(rng, so);
}

const int64_t kLadder[] = {2, 4, 8, 16, 32};
// The ladder batches with checkpointed points too.
bool checkpointed_point(int64_t b) { return b == 2 || b >= 16; }

// The model's peak at `batch` with every layer as it is or checkpointed.
int64_t model_peak(const mfp_profile *p, const Synth &s, int64_t batch, bool checkpoint) {
  std::vector<mfp_decision> d(s.names.size(), mfp_decision{checkpoint, s.precisions[0].precision, false});
  mfp_simulation sim;
  EXPECT_EQ(mfp_simulate(p, batch, d.data(), d.size(), &sim), MFP_OK) << mfp_last_error();
  return sim.peak_bytes;
}

// The synth profile with ladder points, plain and checkpointed, whose measured
// peaks are the model's plus plain_error(b) / checkpointed_error(b).
Json with_ladder(const Synth &s, const std::function<int64_t(int64_t)> &plain_error,
                 const std::function<int64_t(int64_t)> &checkpointed_error) {
  Json profile = synth_profile(s);
  Profile bare = parse(profile.str());
  Json list = Json::array();
  const char *prec = mfp_precision_name(s.precisions[0].precision);
  for (int64_t b : kLadder) {
    list.push(Json::object().set("precision", prec).set("batch_size", b).set("step_seconds", 1e-3 * (double)b)
                  .set("peak_allocated_bytes", model_peak(bare.get(), s, b, false) + plain_error(b)));
    if (checkpointed_point(b))
      list.push(Json::object().set("precision", prec).set("mode", "checkpointed").set("batch_size", b)
                    .set("step_seconds", 1.3e-3 * (double)b)
                    .set("peak_allocated_bytes", model_peak(bare.get(), s, b, true) + checkpointed_error(b)));
  }
  profile.set("timing", list);
  return profile;
}

// The correction PLAN.md states for one mode at `batch`, from its points'
// errors (measured - model) at kLadder's batches (plain) or its checkpointed
// points, computed here from the rule rather than from ladder.c.
int64_t expected_correction(const mfp_profile *p, const Synth &s, bool checkpoint,
                            const std::function<int64_t(int64_t)> &error, int64_t batch) {
  std::vector<int64_t> at;
  for (int64_t b : kLadder)
    if (!checkpoint || checkpointed_point(b)) at.push_back(b);
  auto model = [&](int64_t b) { return (double)model_peak(p, s, b, checkpoint); };
  auto rel = [&](int64_t b) { return (double)error(b) / model(b); };
  double e;
  if (batch <= at.front() || std::find(at.begin(), at.end(), batch) != at.end()) {
    e = (double)error(batch <= at.front() ? at.front() : batch);
  } else if (batch < at.back()) {
    size_t hi = (size_t)(std::upper_bound(at.begin(), at.end(), batch) - at.begin());
    int64_t b0 = at[hi - 1], b1 = at[hi];
    double w = (double)(batch - b0) / (double)(b1 - b0);
    e = std::max(rel(b0), rel(b1)) * (model(b0) + w * (model(b1) - model(b0)));
  } else {
    int64_t b0 = at[at.size() - 2], b1 = at.back();
    double ahead = (double)(batch - b1), span = (double)(b1 - b0);
    double rise = (double)(error(b1) - error(b0)) / span;
    e = std::max(rel(b1) * (model(b1) + (model(b1) - model(b0)) / span * ahead),
                 (double)error(b1) + (rise > 0 ? rise * ahead : 0));
  }
  e = std::ceil(e);
  return e > 0 ? (int64_t)e : 0;
}

// An under-prediction that starts past the profiled batches and grows: the
// points give back at least it at every batch.
int64_t grows(int64_t b) { return b <= 4 ? 0 : (b - 4) * 512; }
int64_t none(int64_t) { return 0; }

// The plan whose layer i is checkpointed when bit i of `mask` is set, in the
// first precision; whether it keeps and whether it checkpoints any layer.
std::vector<mfp_decision> mix(const Synth &s, unsigned mask, bool *keeps, bool *checkpoints) {
  std::vector<mfp_decision> d(s.names.size());
  *keeps = *checkpoints = false;
  for (size_t i = 0; i < d.size(); i++) {
    d[i] = mfp_decision{(mask >> i & 1u) != 0, s.precisions[0].precision, false};
    *keeps |= !d[i].checkpoint;
    *checkpoints |= d[i].checkpoint;
  }
  return d;
}

}  // namespace

// Plain under-prediction only: a plan that keeps a layer is kept below it at
// its batch (between the points and past the last), one that checkpoints every
// layer is not, and every plan's corrected peak fits its limit.
TEST(PlannerLadderCheck, PlansThatKeepLayersAreKeptBelowThePlainError) {
  Synth s = ladder_synth(21);
  Profile p = parse(with_ladder(s, grows, none).str());
  ASSERT_TRUE(p);
  int keeping = 0, all_checkpointed = 0;
  for (int64_t at : {6, 12, 24, 48, 96}) {
    // At most `at`: from the budget that fits every layer kept there, corrected,
    // down to budgets where only some layers, or none, can be kept.
    int64_t corrected = model_peak(p.get(), s, at, false) + expected_correction(p.get(), s, false, grows, at);
    uint64_t budget = (uint64_t)corrected + kSynthReserveOverhead;
    for (double scale : {1.0, 0.97, 0.9, 0.6}) {
      Planned pl;
      mfp_options opts = exact_options(s, (uint64_t)(scale * (double)budget), 1);
      opts.max_batch = at;
      if (!plan_at(p.get(), opts, &pl)) continue;
      if (pl.keeps) {
        keeping++;
        int64_t b = pl.sm.batch_size;
        EXPECT_EQ(pl.sm.ladder_correction_bytes, expected_correction(p.get(), s, false, grows, b)) << "batch " << b;
        EXPECT_GE(pl.sm.ladder_correction_bytes, grows(b)) << "batch " << b;
      } else {
        all_checkpointed++;
        EXPECT_EQ(pl.sm.ladder_correction_bytes, 0) << "batch " << pl.sm.batch_size;
      }
      EXPECT_LE(pl.sm.predicted_peak_bytes + pl.sm.ladder_correction_bytes, (int64_t)pl.sm.usable_allocated_bytes);
      EXPECT_EQ(pl.sm.predicted_reserved_bytes,
                pl.sm.predicted_peak_bytes + pl.sm.ladder_correction_bytes + kSynthReserveOverhead);
    }
  }
  EXPECT_GT(keeping, 0) << "no plan kept a layer";
}

// The corrected search is exact: no plan of a larger batch fits its corrected
// limit. Brute force over every keep/checkpoint mix at the next batch.
TEST(PlannerLadderCheck, NoLargerBatchFitsItsCorrectedLimit) {
  Synth s = ladder_synth(22);
  auto per_sample = [](int64_t b) { return b * 256; };
  Profile p = parse(with_ladder(s, grows, per_sample).str());
  ASSERT_TRUE(p);
  size_t n = s.names.size();
  for (int64_t at : {12, 40}) {
    uint64_t budget = (uint64_t)(model_peak(p.get(), s, at, false) + model_peak(p.get(), s, at, true)) / 2 +
                      kSynthReserveOverhead;
    Planned pl;
    ASSERT_TRUE(plan_at(p.get(), exact_options(s, budget, 1), &pl));
    int64_t next = pl.sm.batch_size + 1, usable = (int64_t)pl.sm.usable_allocated_bytes;
    for (unsigned mask = 0; mask < (1u << n); mask++) {
      bool keeps, checkpoints;
      std::vector<mfp_decision> d = mix(s, mask, &keeps, &checkpoints);
      mfp_simulation sim;
      ASSERT_EQ(mfp_simulate(p.get(), next, d.data(), n, &sim), MFP_OK);
      int64_t keep_free = std::max(keeps ? expected_correction(p.get(), s, false, grows, next) : 0,
                                   checkpoints ? expected_correction(p.get(), s, true, per_sample, next) : 0);
      EXPECT_GT(sim.peak_bytes + keep_free, usable) << "mask " << mask << " fits batch " << next;
    }
  }
}

// At a point the error is its own; between points the larger relative error of
// the two, scaled to the model's peak; past the last the larger of that scaled
// and the last rise; an over-prediction corrects nothing. An error that falls
// between two points (a temporary that changes shape) is not interpolated.
TEST(PlannerLadderCheck, TheErrorIsHeldBetweenPointsAndExtendedAlongTheLastRise) {
  Synth s = ladder_synth(23);
  auto falls = [](int64_t b) { return b <= 16 ? b * 1000 : 16000 - (b - 16) * 100; };
  auto over = [](int64_t b) { return -b * 1000; };
  for (int kind = 0; kind < 3; kind++) {
    const std::function<int64_t(int64_t)> error = kind == 0 ? std::function<int64_t(int64_t)>(grows)
                                                 : kind == 1 ? std::function<int64_t(int64_t)>(falls)
                                                             : std::function<int64_t(int64_t)>(over);
    Profile p = parse(with_ladder(s, error, grows).str());
    ASSERT_TRUE(p);
    for (int64_t at : {3, 8, 12, 24, 64}) {
      // A budget that fits `at` and no more, every layer kept: the plain plan.
      Planned pl;
      int64_t expected = expected_correction(p.get(), s, false, error, at);
      if (kind == 0) {
        EXPECT_GE(expected, grows(at));
      }
      if (kind == 1 && at == 24) {
        EXPECT_GT(expected, falls(16)) << "held at 16's relative error, not interpolated";
      }
      if (kind == 1 && at == 64) {
        EXPECT_GE(expected, falls(32)) << "never shrinks past the last point";
      }
      if (kind == 0 && at == 8) {
        EXPECT_EQ(expected, grows(8)) << "at a point, its own error";
      }
      if (kind == 2) {
        EXPECT_EQ(expected, 0);
      }
      uint64_t budget = (uint64_t)(model_peak(p.get(), s, at, false) + expected) + kSynthReserveOverhead;
      mfp_options opts = exact_options(s, budget, 1);
      opts.max_batch = at;
      ASSERT_TRUE(plan_at(p.get(), opts, &pl));
      ASSERT_EQ(pl.sm.batch_size, at);
      EXPECT_TRUE(pl.keeps);
      EXPECT_EQ(pl.sm.ladder_correction_bytes, expected) << kind << " at " << at;
    }
  }
}

TEST(PlannerLadderCheck, WithoutPeaksNothingChanges) {
  Synth s = ladder_synth(24);
  Json with = with_ladder(s, grows, grows);
  for (Json &e : with["timing"].items) e.erase("peak_allocated_bytes");
  Profile p = parse(with.str()), bare = parse(synth_profile(s).str());
  ASSERT_TRUE(p && bare);
  uint64_t budget = (uint64_t)model_peak(bare.get(), s, 30, false);
  Planned a, b;
  ASSERT_TRUE(plan_at(p.get(), exact_options(s, budget, 1), &a));
  ASSERT_TRUE(plan_at(bare.get(), exact_options(s, budget, 1), &b));
  EXPECT_EQ(a.sm.ladder_correction_bytes, 0);
  EXPECT_EQ(a.sm.batch_size, b.sm.batch_size);
  EXPECT_EQ(a.sm.predicted_peak_bytes, b.sm.predicted_peak_bytes);
}

TEST(PlannerLadderCheck, BadPeaksAreRefusedByNameAndRepeatsTakeTheLarger) {
  Synth s = ladder_synth(25);
  Json bad = with_ladder(s, grows, none);
  bad["timing"][0].set("peak_allocated_bytes", (int64_t)-1);
  mfp_profile *raw = nullptr;
  EXPECT_NE(mfp_profile_parse(bad.str().c_str(), &raw), MFP_OK);
  EXPECT_NE(std::string(mfp_last_error()).find("timing[0].peak_allocated_bytes"), std::string::npos) << mfp_last_error();
  Json typed = with_ladder(s, grows, none);
  typed["timing"][1].set("peak_allocated_bytes", "lots");
  EXPECT_NE(mfp_profile_parse(typed.str().c_str(), &raw), MFP_OK);
  EXPECT_NE(std::string(mfp_last_error()).find("timing[1].peak_allocated_bytes"), std::string::npos) << mfp_last_error();

  // The same point twice, one with a higher peak: the plan's ladder_checks list it once, the larger.
  Json twice = with_ladder(s, none, none);
  Json extra = twice["timing"][0];
  int64_t measured = extra["peak_allocated_bytes"].i;
  extra.set("peak_allocated_bytes", measured + 4096);
  twice["timing"].push(extra);
  Profile p = parse(twice.str());
  ASSERT_TRUE(p);
  mfp_plan_result *plan_raw = nullptr;
  mfp_options opts = exact_options(s, 1ull << 30, 1);
  ASSERT_EQ(mfp_plan(p.get(), &opts, &plan_raw), MFP_OK) << mfp_last_error();
  Plan plan(plan_raw);
  char *json = nullptr;
  ASSERT_EQ(mfp_plan_to_json(plan.get(), &json), MFP_OK);
  std::string text(json);
  mfp_free(json);
  size_t at = text.find("\"ladder_checks\"");
  ASSERT_NE(at, std::string::npos);
  text = text.substr(at, text.find(']', at) - at);
  EXPECT_NE(text.find("\"measured\": " + std::to_string(measured + 4096)), std::string::npos) << text;
  EXPECT_EQ(text.find("\"measured\": " + std::to_string(measured) + ","), std::string::npos);
}

// A point where the model is exact between points where it is far off: the
// correction drops at the point (its own error) below the held one around it,
// so a point can fit where the batches just below it do not. The search still
// finds the largest batch that fits, checked by brute force over every
// keep/checkpoint mix at every batch up to its limit.
TEST(PlannerLadderCheck, APointThatFitsAboveBatchesThatDoNotIsFound) {
  Synth s = ladder_synth(26);
  Profile bare = parse(synth_profile(s).str());
  ASSERT_TRUE(bare);
  const int64_t m16 = model_peak(bare.get(), s, 16, false);
  // Plain: exact up to 4 and at 16; checkpointed (points 2, 16, 32): exact at 16 only.
  auto off = [m16](int64_t b) { return b <= 4 || b == 16 ? (int64_t)0 : m16; };
  auto off_checkpointed = [m16](int64_t b) { return b == 16 ? (int64_t)0 : m16; };
  Profile p = parse(with_ladder(s, off, off_checkpointed).str());
  ASSERT_TRUE(p);
  const int64_t max_batch = 40;
  mfp_options opts = exact_options(s, (uint64_t)m16 + kSynthReserveOverhead, 1);
  opts.max_batch = max_batch;
  Planned pl;
  ASSERT_TRUE(plan_at(p.get(), opts, &pl));
  size_t n = s.names.size();
  int64_t largest = 0, usable = (int64_t)pl.sm.usable_allocated_bytes;
  for (int64_t b = 1; b <= max_batch; b++) {
    int64_t keep_free = expected_correction(p.get(), s, false, off, b);
    int64_t checkpoint_free = expected_correction(p.get(), s, true, off_checkpointed, b);
    for (unsigned mask = 0; mask < (1u << n) && largest < b; mask++) {
      bool keeps, checkpoints;
      std::vector<mfp_decision> d = mix(s, mask, &keeps, &checkpoints);
      mfp_simulation sim;
      ASSERT_EQ(mfp_simulate(p.get(), b, d.data(), n, &sim), MFP_OK);
      if (sim.peak_bytes + std::max(keeps ? keep_free : 0, checkpoints ? checkpoint_free : 0) <= usable) largest = b;
    }
  }
  EXPECT_GE(largest, 16) << "the plain plan fits at the point by construction";
  EXPECT_EQ(pl.sm.batch_size, largest);
}
