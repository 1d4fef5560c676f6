// test_planner_timing.cpp — the step-time calibration of PLAN.md, "Step times":
// with the profile's untraced "timing" points, every time term is its share of
// the setting's traced step times the measured step at the batch (interpolated,
// extended within bounds); without them the fitted lines stand and plans are
// unchanged; bad "timing" entries are refused by name.
#include "test_planner_util.h"

using namespace planner_test;

namespace {

Synth timing_synth(uint64_t seed, bool selective = false) {
  std::mt19937_64 rng(seed);
  SynthOptions so;
  so.layers = 5;
  so.precisions = 1;
  so.measured_checkpoint = true;
  so.measured_selective = selective;
  return make_synth(rng, so);
}

Json point(const char *precision, int64_t batch, double seconds) {
  return Json::object().set("precision", precision).set("batch_size", batch).set("step_seconds", seconds);
}

Json with_timing(const Synth &s, std::vector<std::pair<int64_t, double>> points) {
  Json profile = synth_profile(s);
  Json list = Json::array();
  for (auto [b, t] : points) list.push(point(mfp_precision_name(s.precisions[0].precision), b, t));
  profile.set("timing", list);
  return profile;
}

double num(const Json &j) { return j.kind == Json::Int ? (double)j.i : j.r; }

// The step of `decisions` at `batch` by the model (mfp_simulate).
double step_of(const mfp_profile *p, int64_t batch, const std::vector<mfp_decision> &decisions) {
  mfp_simulation sim;
  EXPECT_EQ(mfp_simulate(p, batch, decisions.data(), decisions.size(), &sim), MFP_OK) << mfp_last_error();
  return sim.step_seconds;
}

std::vector<mfp_decision> every(const Synth &s, bool checkpoint, bool selective = false) {
  return std::vector<mfp_decision>(s.names.size(), mfp_decision{checkpoint, s.precisions[0].precision, selective});
}

// Each time term's share of its setting's traced step (every layer as it is:
// their forward and backward, the loss, loss-backward and optimizer times),
// the mean over the settings, computed from the profile's JSON (PLAN.md,
// "Step times"): forward, backward, checkpointed and selective (forward +
// backward) per layer, and the loss, loss-backward and optimizer ones.
struct Shares {
  std::vector<double> fs, bs, cs, ss;
  double tl = 0, tlb = 0, to = 0;
};

Shares shares_of(Json &profile, const Synth &s) {
  Json &settings = profile["settings"];
  size_t n = s.names.size(), ns = settings.items.size();
  Shares sh{std::vector<double>(n, 0), std::vector<double>(n, 0), std::vector<double>(n, 0),
            std::vector<double>(n, 0)};
  for (size_t k = 0; k < ns; k++) {
    Json &st = settings[k];
    double traced = num(st["loss_seconds"]) + num(st["loss_backward_seconds"]) + num(st["optimizer_seconds"]);
    for (size_t i = 0; i < n; i++)
      traced += num(st["layers"][i]["forward_seconds"]) + num(st["layers"][i]["backward_seconds"]);
    for (size_t i = 0; i < n; i++) {
      sh.fs[i] += num(st["layers"][i]["forward_seconds"]) / traced / ns;
      sh.bs[i] += num(st["layers"][i]["backward_seconds"]) / traced / ns;
      Json &c = st["checkpointed"]["layers"][i];
      sh.cs[i] += (num(c["forward_seconds"]) + num(c["backward_seconds"])) / traced / ns;
      if (s.measured_selective) {
        Json &sl = st["selective"]["layers"][i];
        sh.ss[i] += (num(sl["forward_seconds"]) + num(sl["backward_seconds"])) / traced / ns;
      }
    }
    // The loss windows' times are the setting's own in every mode (PLAN.md).
    sh.tl += num(st["loss_seconds"]) / traced / ns;
    sh.tlb += num(st["loss_backward_seconds"]) / traced / ns;
    sh.to += num(st["optimizer_seconds"]) / traced / ns;
  }
  return sh;
}

std::string error_of(const Json &profile) {
  mfp_profile *p = nullptr;
  EXPECT_EQ(mfp_profile_parse(profile.str().c_str(), &p), MFP_ERR_PROFILE);
  mfp_profile_free(p);
  return mfp_last_error();
}

std::string plan_text(const mfp_profile *p, uint64_t budget, mfp_objective objective = MFP_OBJECTIVE_MAX_BATCH) {
  mfp_options o;
  mfp_options_init(&o);
  o.budget_bytes = budget;
  o.headroom = 0.0;
  o.objective = objective;
  mfp_plan_result *r = nullptr;
  EXPECT_EQ(mfp_plan(p, &o, &r), MFP_OK) << mfp_last_error();
  Plan plan(r);
  char *json = nullptr;
  if (!plan || mfp_plan_to_json(plan.get(), &json) != MFP_OK) return "";
  std::string text(json);
  free(json);
  // planning_seconds is wall time: it differs between any two plans.
  size_t at = text.find("\"planning_seconds\":");
  if (at != std::string::npos) text.erase(at, text.find_first_of(",}", at) - at);
  return text;
}

}  // namespace

// Without points (absent or empty) the times are the fitted lines: the same
// plans to the byte, and no time_calibration in them.
TEST(PlannerTiming, NoPointsKeepTheFittedTimes) {
  for (uint64_t seed = 1; seed <= 5; seed++) {
    Synth s = timing_synth(seed);
    Profile plain = parse(synth_profile(s).str());
    Json empty = synth_profile(s);
    empty.set("timing", Json::array());
    Profile none = parse(empty.str());
    ASSERT_TRUE(plain && none);
    for (uint64_t budget : {1u << 20, 4u << 20}) {
      std::string a = plan_text(plain.get(), budget), b = plan_text(none.get(), budget);
      EXPECT_EQ(a, b);
      EXPECT_EQ(a.find("time_calibration"), std::string::npos);
    }
    for (int64_t batch : {1, 5, 40})
      EXPECT_EQ(step_of(plain.get(), batch, every(s, true)), step_of(none.get(), batch, every(s, true)));
  }
}

// A plan of every layer as it is takes the measured step at each point, the
// line between two points between them, and the last two's line beyond.
TEST(PlannerTiming, APlainPlanTakesTheMeasuredSteps) {
  Synth s = timing_synth(7);
  Profile p = parse(with_timing(s, {{8, 0.040}, {16, 0.050}, {32, 0.090}}).str());
  ASSERT_TRUE(p);
  auto plain = every(s, false);
  EXPECT_NEAR(step_of(p.get(), 8, plain), 0.040, 1e-12);
  EXPECT_NEAR(step_of(p.get(), 16, plain), 0.050, 1e-12);
  EXPECT_NEAR(step_of(p.get(), 32, plain), 0.090, 1e-12);
  EXPECT_NEAR(step_of(p.get(), 12, plain), 0.045, 1e-12);
  EXPECT_NEAR(step_of(p.get(), 24, plain), 0.070, 1e-12);
  EXPECT_NEAR(step_of(p.get(), 64, plain), 0.090 + 32 * (0.040 / 16), 1e-12);
  // Below the first point: along the first two, here 0.040 - 7 * 0.00125 at batch 1,
  // above the first point's time per sample times the batch (0.005).
  EXPECT_NEAR(step_of(p.get(), 1, plain), 0.040 - 7 * 0.00125, 1e-12);
}

// The extensions stay within bounds: above the last point never below its
// time (a falling last segment is noise), below the first point never below
// its time per sample times the batch nor above its time.
TEST(PlannerTiming, ExtensionsAreBounded) {
  Synth s = timing_synth(8);
  auto plain = every(s, false);
  Profile falling = parse(with_timing(s, {{8, 0.040}, {16, 0.030}}).str());
  ASSERT_TRUE(falling);
  EXPECT_NEAR(step_of(falling.get(), 64, plain), 0.030, 1e-12);  // not 0.030 - 48 * 0.00125 < 0
  EXPECT_NEAR(step_of(falling.get(), 4, plain), 0.040, 1e-12);   // not 0.045: above the first point's
  Profile steep = parse(with_timing(s, {{8, 0.040}, {16, 0.120}}).str());
  ASSERT_TRUE(steep);
  EXPECT_NEAR(step_of(steep.get(), 2, plain), 0.040 * 2 / 8, 1e-12);  // not 0.040 - 6 * 0.01 < 0
}

// One point: the fitted step's shape through it.
TEST(PlannerTiming, OnePointScalesTheFittedStep) {
  Synth s = timing_synth(9);
  Profile fitted = parse(synth_profile(s).str());
  Profile p = parse(with_timing(s, {{8, 0.25}}).str());
  ASSERT_TRUE(fitted && p);
  auto plain = every(s, false);
  double at8 = step_of(fitted.get(), 8, plain);
  EXPECT_NEAR(step_of(p.get(), 8, plain), 0.25, 1e-12);
  for (int64_t b : {12, 30}) {
    double expect = 0.25 * step_of(fitted.get(), b, plain) / at8;
    if (expect < 0.25) expect = 0.25;
    EXPECT_NEAR(step_of(p.get(), b, plain), expect, 1e-12) << b;
  }
}

// Repeated points of one batch are averaged; the plan lists them sorted, with
// the fitted step at each and the measured step at its own batch.
TEST(PlannerTiming, RepeatedPointsAreAveragedAndThePlanSaysSo) {
  Synth s = timing_synth(10);
  Profile p = parse(with_timing(s, {{16, 0.06}, {8, 0.03}, {16, 0.08}}).str());
  ASSERT_TRUE(p);
  EXPECT_NEAR(step_of(p.get(), 16, every(s, false)), 0.07, 1e-12);
  std::string plan = plan_text(p.get(), 4u << 20);
  size_t at = plan.find("\"time_calibration\":");
  ASSERT_NE(at, std::string::npos) << plan;
  std::string part = plan.substr(at);
  part.erase(std::remove_if(part.begin(), part.end(), [](char c) { return c == ' ' || c == '\n'; }), part.end());
  size_t first = part.find("\"batch_size\":8,"), second = part.find("\"batch_size\":16,");
  EXPECT_NE(first, std::string::npos);
  EXPECT_NE(second, std::string::npos);
  EXPECT_LT(first, second);
  EXPECT_NE(part.find("\"traced_model_step_seconds\":"), std::string::npos);
  EXPECT_NE(part.find("\"plain_step_seconds\":{\"" + std::string(mfp_precision_name(s.precisions[0].precision))),
            std::string::npos);
}

// Every time term is its share of the traced step: a plan of every layer
// checkpointed takes T(b) times the mean over settings of its traced terms'
// sum over the traced plain step, each layer at least its forward twice and
// its backward once (the floor of PLAN.md).
TEST(PlannerTiming, CheckpointedTimesAreSharesOfTheMeasuredStep) {
  for (uint64_t seed = 11; seed <= 16; seed++) {
    Synth s = timing_synth(seed, seed % 2 == 0);
    Json profile = with_timing(s, {{8, 0.05}, {32, 0.11}});
    Profile p = parse(profile.str());
    ASSERT_TRUE(p);
    size_t n = s.names.size();
    Shares sh = shares_of(profile, s);
    const auto &fs = sh.fs, &bs = sh.bs, &cs = sh.cs, &ss = sh.ss;
    double tl = sh.tl, tlb = sh.tlb, to = sh.to;
    for (int64_t b : {8, 20, 32}) {
      double T = b == 8 ? 0.05 : b == 32 ? 0.11 : 0.05 + 12 * (0.06 / 24);
      double ckpt = 0, sel = 0;
      for (size_t i = 0; i < n; i++) {
        ckpt += std::max(cs[i] * T, fs[i] * T + bs[i] * T + fs[i] * T);
        sel += std::max(ss[i] * T, fs[i] * T + bs[i] * T);
      }
      double rest = tl * T + tlb * T + to * T;
      EXPECT_NEAR(step_of(p.get(), b, every(s, true)), ckpt + rest, 1e-9 * T) << "seed " << seed << " batch " << b;
      if (s.measured_selective) {
        EXPECT_NEAR(step_of(p.get(), b, every(s, true, true)), sel + rest, 1e-9 * T) << "seed " << seed;
      }
    }
  }
}

// With points of the every-layer-checkpointed step, the checkpointed layers'
// times split that step, less the loss and the optimizer (at their plain
// shares), in their traced proportions; between its points the ratio to the
// plain step is interpolated, beyond them held.
TEST(PlannerTiming, CheckpointedPointsSetTheCheckpointedStep) {
  for (uint64_t seed = 21; seed <= 24; seed++) {
    Synth s = timing_synth(seed);
    const char *prec = mfp_precision_name(s.precisions[0].precision);
    Json profile = with_timing(s, {{8, 0.05}, {32, 0.11}});
    profile["timing"].push(point(prec, 8, 0.20).set("mode", "checkpointed"));
    profile["timing"].push(point(prec, 32, 0.33).set("mode", "checkpointed"));
    Profile p = parse(profile.str());
    ASSERT_TRUE(p);
    size_t n = s.names.size();
    Shares sh = shares_of(profile, s);
    const auto &fs = sh.fs, &bs = sh.bs, &cs = sh.cs;
    double rest_share = sh.tl + sh.tlb + sh.to;
    double sum_cs = 0;
    for (double c : cs) sum_cs += c;
    for (int64_t b : {8, 20, 32, 64}) {
      double T = b == 8 ? 0.05 : b == 20 ? 0.08 : b == 32 ? 0.11 : 0.11 + 32 * (0.06 / 24);
      double ratio = b == 8 ? 4.0 : b >= 32 ? 3.0 : 4.0 + (3.0 - 4.0) * 12 / 24;
      double layers = ratio * T - rest_share * T, expect = rest_share * T;
      for (size_t i = 0; i < n; i++) expect += std::max(cs[i] / sum_cs * layers, (2 * fs[i] + bs[i]) * T);
      EXPECT_NEAR(step_of(p.get(), b, every(s, true)), expect, 1e-9 * T) << "seed " << seed << " batch " << b;
      EXPECT_NEAR(step_of(p.get(), b, every(s, false)), T, 1e-12);  // the plain step is unchanged
    }
  }
}

// The measured step decides the throughput objective: with the same memory
// terms, a ladder whose time per sample keeps falling plans a larger batch
// than one whose steps grow in proportion from the first point on.
TEST(PlannerTiming, TheThroughputObjectiveFollowsTheMeasuredSteps) {
  Synth s = timing_synth(17);
  Profile flat = parse(with_timing(s, {{2, 0.10}, {64, 0.11}}).str());
  Profile proportional = parse(with_timing(s, {{2, 0.10}, {4, 0.30}}).str());
  ASSERT_TRUE(flat && proportional);
  auto batch_of = [](const std::string &plan) {
    size_t at = plan.find("\"batch_size\":");
    return std::stoll(plan.substr(plan.find_first_of("0123456789", at + 13)));
  };
  int64_t big = batch_of(plan_text(flat.get(), 8u << 20, MFP_OBJECTIVE_THROUGHPUT));
  int64_t small = batch_of(plan_text(proportional.get(), 8u << 20, MFP_OBJECTIVE_THROUGHPUT));
  EXPECT_GT(big, small);
}

TEST(PlannerTiming, BadEntriesAreRefusedByName) {
  Synth s = timing_synth(18);
  const char *prec = mfp_precision_name(s.precisions[0].precision);
  const char *other = s.precisions[0].precision == MFP_FP32 ? "bf16" : "fp32";
  auto with = [&](Json entry) {
    Json profile = synth_profile(s);
    Json list = Json::array();
    list.push(point(prec, 4, 0.01));
    list.push(std::move(entry));
    profile.set("timing", list);
    return profile;
  };
  Json not_list = synth_profile(s);
  not_list.set("timing", Json::object());
  EXPECT_NE(error_of(not_list).find("timing: expected a list"), std::string::npos) << mfp_last_error();
  EXPECT_NE(error_of(with(Json(3))).find("timing[1]: expected an object"), std::string::npos) << mfp_last_error();
  EXPECT_NE(error_of(with(point(prec, 0, 0.01))).find("timing[1].batch_size"), std::string::npos) << mfp_last_error();
  EXPECT_NE(error_of(with(point(prec, 4, 0.0))).find("timing[1].step_seconds: must be > 0"), std::string::npos)
      << mfp_last_error();
  EXPECT_NE(error_of(with(point(prec, 4, -1.0))).find("timing[1].step_seconds"), std::string::npos) << mfp_last_error();
  EXPECT_NE(error_of(with(point(other, 4, 0.01))).find("timing[1].precision: "), std::string::npos) << mfp_last_error();
  EXPECT_NE(error_of(with(point(prec, 4, 0.01).set("mode", "sometimes"))).find("timing[1].mode: expected"),
            std::string::npos) << mfp_last_error();
  EXPECT_NE(error_of(with(point(prec, 4, 0.01).set("mode", "selective"))).find("no \"selective\" runs"),
            std::string::npos) << mfp_last_error();
  Json only = synth_profile(s);
  Json list = Json::array();
  list.push(point(prec, 4, 0.01).set("mode", "checkpointed"));
  only.set("timing", list);
  EXPECT_NE(error_of(only).find("but no plain ones"), std::string::npos) << mfp_last_error();
  Json missing = Json::object().set("precision", prec).set("batch_size", 4);
  EXPECT_NE(error_of(with(missing)).find("timing[1].step_seconds: missing"), std::string::npos) << mfp_last_error();
}

// Without points, a time that falls with the batch (warm-up or noise between
// two small batches) is held flat at its mean, never extrapolated down to 0:
// every layer as it is takes the settings' mean traced step at any batch.
TEST(PlannerTiming, AFallingFittedTimeIsHeldAtItsMean) {
  for (uint64_t seed = 1; seed <= 5; seed++) {
    Synth s = timing_synth(seed);
    Json profile = synth_profile(s);
    Json &settings = profile["settings"];
    double mean = 0;
    for (size_t k = 0; k < settings.items.size(); k++) {
      Json &st = settings[k];
      double b = num(st["batch_size"]), traced = 0;
      auto falls = [&](Json &node, const char *key, double at_one) {
        node.set(key, at_one / b);
        traced += at_one / b;
      };
      falls(st, "loss_seconds", 0.004);
      falls(st, "loss_backward_seconds", 0.006);
      falls(st, "optimizer_seconds", 0.010);
      for (size_t i = 0; i < s.names.size(); i++) {
        falls(st["layers"][i], "forward_seconds", 0.002 * (double)(i + 1));
        falls(st["layers"][i], "backward_seconds", 0.003 * (double)(i + 1));
      }
      mean += traced / (double)settings.items.size();
    }
    Profile p = parse(profile.str());
    ASSERT_TRUE(p);
    for (int64_t batch : {1, 64, 4096}) EXPECT_NEAR(step_of(p.get(), batch, every(s, false)), mean, 1e-12 * mean);
  }
}
