// test_planner_profile.cpp — the planner's inputs and outputs: profile errors
// name the JSON path, option errors the key; the self-check reproduces a
// profile made from the model; nothing fitting has its status; the plan JSON.
#include <algorithm>

#include "test_planner_util.h"
#include "memfit/memfit.h"

#include <chrono>

using namespace planner_test;

namespace {

Synth small_synth(uint64_t seed = 7, int precisions = 2, int batch_sizes = 2, size_t layers = 5,
                  bool measured_checkpoint = false) {
  std::mt19937_64 rng(seed);
  SynthOptions so;
  so.layers = layers;
  so.precisions = precisions;
  so.batch_sizes = batch_sizes;
  so.negative_bd_slopes = true;
  so.measured_checkpoint = measured_checkpoint;
  return make_synth(rng, so);
}

// Parses a profile that must fail; returns the message.
std::string profile_error(const Json &profile, mfp_status want = MFP_ERR_PROFILE) {
  mfp_profile *p = nullptr;
  mfp_status s = mfp_profile_parse(profile.str().c_str(), &p);
  EXPECT_EQ(s, want) << mfp_last_error();
  EXPECT_EQ(p, nullptr);
  mfp_profile_free(p);
  return mfp_last_error();
}

std::string options_error(const std::string &json) {
  mfp_options o;
  EXPECT_EQ(mfp_options_parse_json(json.c_str(), &o), MFP_ERR_INVALID) << json;
  return mfp_last_error();
}

bool starts_with(const std::string &s, const std::string &prefix) { return s.rfind(prefix, 0) == 0; }

}  // namespace

// ----------------------------------------------------------- self-check

TEST(PlannerSelfCheck, ReproducesAProfileMadeFromTheModel) {
  for (int batch_sizes : {2, 3}) {  // exact line through two points; least squares through three
    for (uint64_t seed = 1; seed <= 20; seed++) {
      Synth synth = small_synth(seed, 3, batch_sizes, 8);
      Profile profile = parse(synth_profile(synth).str());
      ASSERT_TRUE(profile);
      // Each setting's peak, simulated with no checkpoint in its precision, is the measured one.
      for (const SynthPrecision &sp : synth.precisions)
        for (int64_t b : synth.batches) {
          int64_t measured;
          synth_setting(synth, sp, b, &measured);
          std::vector<mfp_decision> d(synth.names.size(), mfp_decision{false, sp.precision, false});
          mfp_simulation sim;
          ASSERT_EQ(mfp_simulate(profile.get(), b, d.data(), d.size(), &sim), MFP_OK);
          EXPECT_EQ(sim.peak_bytes, measured) << "seed " << seed << " batch " << b;
        }
      // ... and at batches never profiled, the model is the generator's.
      const SynthPrecision &sp = synth.precisions[1];
      std::vector<mfp_decision> d(synth.names.size(), mfp_decision{false, sp.precision, false});
      for (int64_t b : {5, 17, 100}) {
        int64_t want;
        synth_setting(synth, sp, b, &want);
        mfp_simulation sim;
        ASSERT_EQ(mfp_simulate(profile.get(), b, d.data(), d.size(), &sim), MFP_OK);
        EXPECT_EQ(sim.peak_bytes, want) << "seed " << seed << " batch " << b;
      }
      mfp_options opts;
      mfp_options_init(&opts);
      opts.budget_bytes = 1ull << 40;
      opts.max_batch = 64;
      mfp_plan_result *raw = nullptr;
      ASSERT_EQ(mfp_plan(profile.get(), &opts, &raw), MFP_OK) << mfp_last_error();
      Plan plan(raw);
      mfp_plan_summary sm;
      mfp_plan_get_summary(plan.get(), &sm);
      EXPECT_EQ(sm.model_error, 0.0);
      EXPECT_EQ(sm.batch_size, 64);
    }
  }
}

// ------------------------------------------------------------ checkpoint check

namespace {

// A budget between the every-layer-checkpointed and the plain peak at `batch`,
// all in the first precision: there checkpointing is what makes the batch fit.
uint64_t between_plain_and_checkpointed(const mfp_profile *p, const Synth &synth, int64_t batch) {
  size_t n = mfp_profile_layer_count(p);
  std::vector<mfp_decision> d(n, mfp_decision{false, synth.precisions[0].precision, false});
  mfp_simulation plain, all;
  EXPECT_EQ(mfp_simulate(p, batch, d.data(), n, &plain), MFP_OK);
  for (auto &x : d) x.checkpoint = true;
  EXPECT_EQ(mfp_simulate(p, batch, d.data(), n, &all), MFP_OK);
  return (uint64_t)(plain.peak_bytes + all.peak_bytes) / 2 + kSynthReserveOverhead;
}

}  // namespace

TEST(PlannerCheckpointCheck, PlansThatCheckpointAreKeptBelowTheMeasuredError) {
  Synth synth = small_synth(11, 1);
  // The model misses 1 KiB + 512 B per sample of what checkpointed runs hold.
  Json profile = with_checks(synth, [](int64_t b, int64_t) { return (int64_t)1024 + b * 512; });
  Profile p = parse(profile.str());
  int checkpointing_plans = 0;
  for (int64_t at : {8, 32, 128}) {
    uint64_t budget = between_plain_and_checkpointed(p.get(), synth, at);
    mfp_options opts = exact_options(synth, budget, 1);
    Planned pl;
    if (!plan_at(p.get(), opts, &pl)) continue;
    const mfp_plan_summary &sm = pl.sm;
    bool checkpoints = pl.checkpoints;
    EXPECT_GT(sm.model_error_checkpoint, 0);
    if (checkpoints) {
      checkpointing_plans++;
      EXPECT_EQ(sm.checkpoint_correction_bytes, 1024 + sm.batch_size * 512) << "budget " << budget;
      EXPECT_LE(sm.predicted_peak_bytes + sm.checkpoint_correction_bytes, (int64_t)sm.usable_allocated_bytes);
    } else {
      EXPECT_EQ(sm.checkpoint_correction_bytes, 0);
      EXPECT_LE(sm.predicted_peak_bytes, (int64_t)sm.usable_allocated_bytes);
    }
    EXPECT_EQ(sm.predicted_reserved_bytes,
              sm.predicted_peak_bytes + sm.checkpoint_correction_bytes + kSynthReserveOverhead);
    // The plan is the fastest of its kind: no checkpointing plan of a larger batch
    // fits the corrected limit (largest batch: the corrected one is never larger).
    Json bare = synth_profile(synth);
    Profile q = parse(bare.str());
    mfp_plan_result *raw2 = nullptr;
    ASSERT_EQ(mfp_plan(q.get(), &opts, &raw2), MFP_OK) << mfp_last_error();
    Plan uncorrected(raw2);
    mfp_plan_summary um;
    mfp_plan_get_summary(uncorrected.get(), &um);
    EXPECT_LE(sm.batch_size, um.batch_size);
  }
  EXPECT_GT(checkpointing_plans, 0) << "no budget made the planner checkpoint";
}

// Checks in two precisions, each with its own error line: a plan that
// checkpoints is kept below the larger of the two at its batch (a plan may run
// any layer in either precision).
TEST(PlannerCheckpointCheck, EachPrecisionHasItsLineAndThePlanTakesTheLarger) {
  Synth synth = small_synth(13, 2);
  auto error = [](size_t q, int64_t b) { return q == 0 ? (int64_t)20000 : (int64_t)1024 + b * 512; };
  Profile p = parse(with_checks_in(synth, {0, 1}, [&](size_t q, int64_t b, int64_t) { return error(q, b); }).str());
  ASSERT_TRUE(p);
  int checkpointing_plans = 0;
  for (int64_t at : {8, 32, 128}) {
    Planned pl;
    if (!plan_at(p.get(), exact_options(synth, between_plain_and_checkpointed(p.get(), synth, at), 2), &pl)) continue;
    const mfp_plan_summary &sm = pl.sm;
    if (!sm.checkpoint_correction_bytes) continue;  // this plan checkpoints nothing
    checkpointing_plans++;
    EXPECT_EQ(sm.checkpoint_correction_bytes, std::max(error(0, sm.batch_size), error(1, sm.batch_size)))
        << "batch " << sm.batch_size;
  }
  EXPECT_GT(checkpointing_plans, 0) << "no budget made the planner checkpoint";
}

TEST(PlannerCheckpointCheck, AnOverPredictionCorrectsNothing) {
  Synth synth = small_synth(12, 1);
  Profile p = parse(with_checks(synth, [](int64_t, int64_t) { return (int64_t)-4096; }).str());
  mfp_options opts;
  mfp_options_init(&opts);
  opts.budget_bytes = 1ull << 30;
  mfp_plan_result *raw = nullptr;
  ASSERT_EQ(mfp_plan(p.get(), &opts, &raw), MFP_OK) << mfp_last_error();
  Plan plan(raw);
  mfp_plan_summary sm;
  mfp_plan_get_summary(plan.get(), &sm);
  EXPECT_EQ(sm.checkpoint_correction_bytes, 0);
}

TEST(PlannerCheckpointCheck, BadChecksNameTheirPath) {
  Synth synth = small_synth(13, 1);
  Json good = with_checks(synth, [](int64_t, int64_t) { return (int64_t)0; });
  Json bad = good;
  bad["checkpoint_checks"][0].set("precision", "fp16");
  EXPECT_TRUE(starts_with(profile_error(bad), "checkpoint_checks[0].precision: fp16 has no settings")) << profile_error(bad);
  bad = good;
  bad["checkpoint_checks"][1].set("batch_size", 0);
  EXPECT_TRUE(starts_with(profile_error(bad), "checkpoint_checks[1].batch_size: must be >= 1")) << profile_error(bad);
  bad = good;
  bad.set("checkpoint_checks", "all");
  EXPECT_TRUE(starts_with(profile_error(bad), "checkpoint_checks: expected a list")) << profile_error(bad);
}

TEST(PlannerSelfCheck, ReportsTheErrorOfAModelThatIsOff) {
  Synth synth = small_synth();
  Json profile = synth_profile(synth);
  Json &setting = profile["settings"][1];
  int64_t measured = setting["peak_allocated_bytes"].i;
  setting["peak_allocated_bytes"] = Json((int64_t)(measured * 1.25));
  setting["peak_reserved_bytes"] = Json((int64_t)(measured * 1.25) + kSynthReserveOverhead);
  Profile p = parse(profile.str());
  mfp_options opts;
  mfp_options_init(&opts);
  opts.budget_bytes = 1ull << 40;
  mfp_plan_result *raw = nullptr;
  ASSERT_EQ(mfp_plan(p.get(), &opts, &raw), MFP_OK) << mfp_last_error();
  Plan plan(raw);
  mfp_plan_summary sm;
  mfp_plan_get_summary(plan.get(), &sm);
  EXPECT_NEAR(sm.model_error, 0.2, 1e-6);  // |m - 1.25 m| / 1.25 m
  // The automatic headroom covers that error: 1% + 20%.
  EXPECT_TRUE(sm.headroom_auto);
  EXPECT_NEAR(sm.headroom, 0.21, 1e-6);
  EXPECT_EQ(sm.usable_bytes, (uint64_t)std::floor((double)opts.budget_bytes * (1 - sm.headroom)));
}

// ------------------------------------------------------------ profile errors

TEST(PlannerProfile, MissingFieldNamesItsPath) {
  Json profile = synth_profile(small_synth());
  profile["settings"][1]["layers"][3]["forward"].erase("peak");
  EXPECT_EQ(profile_error(profile), "settings[1].layers[3].forward.peak: missing");

  profile = synth_profile(small_synth());
  profile["settings"][0].erase("loss_backward");
  EXPECT_EQ(profile_error(profile), "settings[0].loss_backward: missing");

  profile = synth_profile(small_synth());
  profile.erase("settings");
  EXPECT_EQ(profile_error(profile), "settings: missing");

  profile = synth_profile(small_synth());
  profile["settings"][2]["layers"][0].erase("output_allocated_bytes");
  EXPECT_EQ(profile_error(profile), "settings[2].layers[0].output_allocated_bytes: missing");

  profile = synth_profile(small_synth());
  profile["settings"][0]["totals_allocated"].erase("temporary");
  EXPECT_EQ(profile_error(profile), "settings[0].totals_allocated.temporary: missing");
}

TEST(PlannerProfile, MistypedFieldNamesItsPathAndType) {
  Json profile = synth_profile(small_synth());
  profile["settings"][0]["batch_size"] = Json("4");
  EXPECT_EQ(profile_error(profile), "settings[0].batch_size: expected an integer, got a string");

  profile = synth_profile(small_synth());
  profile["settings"][1]["layers"][2]["backward"]["end"] = Json(1.5);
  EXPECT_EQ(profile_error(profile), "settings[1].layers[2].backward.end: expected an integer, got a number with a fraction");

  profile = synth_profile(small_synth());
  profile["settings"][0]["layers"][1]["forward_seconds"] = Json("fast");
  EXPECT_EQ(profile_error(profile), "settings[0].layers[1].forward_seconds: expected a number, got a string");

  // The batch limit is named as it is (2^30), not as the JSON integer limit.
  profile = synth_profile(small_synth());
  profile["settings"][0]["batch_size"] = Json((int64_t)1 << 40);
  EXPECT_EQ(profile_error(profile), "settings[0].batch_size: 1099511627776 is too large (the limit is 2^30)");

  // A time whose sums would overflow (a fit through 1e308 s is inf - inf = NaN,
  // which turned every time of the plan into 0) is not a measurement.
  profile = synth_profile(small_synth());
  profile["settings"][1]["loss_seconds"] = Json(1.7e308);
  EXPECT_TRUE(starts_with(profile_error(profile), "settings[1].loss_seconds: 1.7e+308 s is not a measured time"))
      << profile_error(profile);

  profile = synth_profile(small_synth());
  profile["settings"][0]["layers"] = Json::object();
  EXPECT_EQ(profile_error(profile), "settings[0].layers: expected a list, got an object");

  profile = synth_profile(small_synth());
  profile["settings"][0]["precision"] = Json("fp8");
  EXPECT_EQ(profile_error(profile), "settings[0].precision: expected \"fp32\", \"bf16\" or \"fp16\", got \"fp8\"");

  profile = synth_profile(small_synth());
  profile["settings"][3]["fixed_bytes"] = Json(-1);
  EXPECT_EQ(profile_error(profile), "settings[3].fixed_bytes: must be >= 0, got -1");
}

TEST(PlannerProfile, SettingsMustListTheSameLayers) {
  Json profile = synth_profile(small_synth());
  profile["settings"][2]["layers"][3]["name"] = Json("layers.x");
  std::string e = profile_error(profile);
  EXPECT_TRUE(starts_with(e, "settings[2].layers[3].name: \"layers.x\", but settings[0].layers[3] is \"layers.3\"")) << e;

  profile = synth_profile(small_synth());
  profile["settings"][1]["layers"].items.pop_back();
  e = profile_error(profile);
  EXPECT_TRUE(starts_with(e, "settings[1].layers: 4 layers, but settings[0] has 5")) << e;

  profile = synth_profile(small_synth());
  for (Json &s : profile["settings"].items) s["layers"][4]["name"] = Json("layers.1");
  e = profile_error(profile);
  EXPECT_TRUE(starts_with(e, "settings[0].layers[4].name: \"layers.1\" repeats layers[1]")) << e;
}

TEST(PlannerProfile, WindowsMustBeConsistent) {
  Json profile = synth_profile(small_synth());
  Json &w = profile["settings"][1]["layers"][2]["forward"];
  w["peak"] = Json(w["start"].i - 1);
  std::string e = profile_error(profile);
  EXPECT_TRUE(starts_with(e, "settings[1].layers[2].forward.peak: ")) << e;
  EXPECT_NE(e.find("is below start"), std::string::npos) << e;

  profile = synth_profile(small_synth());
  Json &b = profile["settings"][0]["layers"][1]["backward"];
  b["start"] = Json(b["start"].i + 512);
  b["peak"] = Json(b["peak"].i + 512);
  b["end"] = Json(b["end"].i + 512);
  e = profile_error(profile);
  EXPECT_TRUE(starts_with(e, "settings[0].layers[1].backward.start: ")) << e;
  EXPECT_NE(e.find("not where the previous window ended (layers[2].backward.end"), std::string::npos) << e;

  profile = synth_profile(small_synth());
  profile["settings"][0]["fixed_bytes"] = Json(profile["settings"][0]["fixed_bytes"].i + 1);
  e = profile_error(profile);
  EXPECT_TRUE(starts_with(e, "settings[0].layers[0].forward.start: ")) << e;
  EXPECT_NE(e.find("fixed_bytes"), std::string::npos) << e;
}

TEST(PlannerProfile, TopLevelAndFitErrors) {
  Json profile = synth_profile(small_synth());
  profile["format"] = Json("memfit-trace");
  EXPECT_EQ(profile_error(profile), "format: expected \"memfit-profile\", got \"memfit-trace\"");
  profile = synth_profile(small_synth());
  profile["version"] = Json(2);
  EXPECT_EQ(profile_error(profile), "version: 2 is not supported (this planner reads version 1)");
  profile = synth_profile(small_synth());
  profile["settings"] = Json::array();
  EXPECT_EQ(profile_error(profile), "settings: empty");
  EXPECT_EQ(profile_error(Json(3)), "(root): expected an object, got an integer");

  // One batch size for a precision: intercept and slope cannot be told apart.
  Synth synth = small_synth(3, 2, 2);
  profile = synth_profile(synth);
  for (Json &s : profile["settings"].items)
    if (s["precision"].s == mfp_precision_name(synth.precisions[1].precision)) s["batch_size"] = Json(synth.batches[0]);
  std::string e = profile_error(profile);
  EXPECT_TRUE(starts_with(e, std::string("settings: every ") + mfp_precision_name(synth.precisions[1].precision) +
                                 " setting has batch size")) << e;

  mfp_profile *p = nullptr;
  EXPECT_EQ(mfp_profile_parse("{\"format\": ", &p), MFP_ERR_PROFILE);
  EXPECT_TRUE(starts_with(mfp_last_error(), "profile: not valid JSON at line 1")) << mfp_last_error();
  EXPECT_EQ(mfp_profile_parse("{\"a\": 1, \"a\": 2}", &p), MFP_ERR_PROFILE);
  EXPECT_EQ(mfp_profile_load("/no/such/profile.json", &p), MFP_ERR_IO);
  EXPECT_TRUE(starts_with(mfp_last_error(), "/no/such/profile.json: cannot open")) << mfp_last_error();
  EXPECT_EQ(mfp_profile_parse(nullptr, &p), MFP_ERR_INVALID);
  EXPECT_EQ(p, nullptr);
}

TEST(PlannerProfile, UnknownKeysAreIgnoredAndAccessorsWork) {
  Synth synth = small_synth(11, 2);
  Json profile = synth_profile(synth);
  profile["settings"][0]["timeline"] = Json::array();
  profile.set("comment", "extra keys are for other tools");
  Profile p = parse(profile.str());
  ASSERT_TRUE(p);
  EXPECT_EQ(mfp_profile_layer_count(p.get()), 5u);
  EXPECT_STREQ(mfp_profile_layer_name(p.get(), 4), "layers.4");
  EXPECT_EQ(mfp_profile_layer_name(p.get(), 5), nullptr);
  EXPECT_TRUE(mfp_profile_has_precision(p.get(), synth.precisions[0].precision));
  EXPECT_TRUE(mfp_profile_has_precision(p.get(), synth.precisions[1].precision));
  int present = 0;
  for (int k = 0; k < MFP_PRECISION_COUNT; k++) present += mfp_profile_has_precision(p.get(), (mfp_precision)k);
  EXPECT_EQ(present, 2);

  std::vector<mfp_decision> d(4);
  mfp_simulation sim;
  EXPECT_EQ(mfp_simulate(p.get(), 1, d.data(), d.size(), &sim), MFP_ERR_INVALID);
  EXPECT_NE(std::string(mfp_last_error()).find("4 decisions for a profile of 5 layers"), std::string::npos);
  mfp_precision missing = MFP_FP32;
  for (int k = 0; k < MFP_PRECISION_COUNT; k++)
    if (!mfp_profile_has_precision(p.get(), (mfp_precision)k)) missing = (mfp_precision)k;
  d.assign(5, mfp_decision{false, synth.precisions[0].precision, false});
  d[2].precision = missing;
  EXPECT_EQ(mfp_simulate(p.get(), 1, d.data(), d.size(), &sim), MFP_ERR_INVALID);
  EXPECT_NE(std::string(mfp_last_error()).find("layer 2 (layers.2)"), std::string::npos) << mfp_last_error();
  d[2].precision = synth.precisions[0].precision;
  EXPECT_EQ(mfp_simulate(p.get(), 0, d.data(), d.size(), &sim), MFP_ERR_INVALID);
  ASSERT_EQ(mfp_simulate(p.get(), 3, d.data(), d.size(), &sim), MFP_OK);
  EXPECT_EQ(sim.size, sizeof sim);
  EXPECT_EQ(sim.peak_fixed_bytes + sim.peak_kept_bytes + sim.peak_transient_bytes, sim.peak_bytes);
}

// ------------------------------------------------------------------ options

// The planner reads sizes with memfit's one parser (mf_parse_size), as the
// allocator's options and Python do: the same text is the same bytes in all
// three ("8GB" is 8 GiB everywhere, "0.5" bytes nowhere), up to 2^63.
TEST(PlannerOptions, SizesAreDecimalWithBinaryUnits) {
  struct { const char *text; uint64_t bytes; } good[] = {
      {"512", 512}, {"8GiB", 8ull << 30}, {"8g", 8ull << 30}, {"1.5G", 3ull << 29}, {"64 MiB", 64ull << 20},
      {"2K", 2048}, {"3kib", 3072}, {"1T", 1ull << 40}, {"7B", 7}, {"0", 0}, {"  12M  ", 12ull << 20},
      {"8GB", 8ull << 30}};
  for (auto &g : good) {
    uint64_t v = 1;
    EXPECT_EQ(mfp_parse_size(g.text, &v), MFP_OK) << g.text << ": " << mfp_last_error();
    EXPECT_EQ(v, g.bytes) << g.text;
  }
  for (const char *bad : {"", "GiB", "-1G", "8XB", "0.5", "1e9", "0x10", "8 GiB x", "1.2.3G",
                          "99999999999999999999", "9223372036854775808"}) {
    uint64_t v;
    EXPECT_EQ(mfp_parse_size(bad, &v), MFP_ERR_INVALID) << bad;
    EXPECT_TRUE(starts_with(mfp_last_error(), "bad size '")) << mfp_last_error();
  }
  for (auto &g : good) {
    uint64_t mine = 0, allocators = 1;
    ASSERT_EQ(mfp_parse_size(g.text, &mine), MFP_OK);
    ASSERT_EQ(mf_parse_size(g.text, &allocators), MF_OK) << g.text;
    EXPECT_EQ(mine, allocators) << g.text;
  }
}

TEST(PlannerOptions, JsonKeysAndDefaults) {
  mfp_options o;
  ASSERT_EQ(mfp_options_parse_json("{\"budget\": \"8GiB\"}", &o), MFP_OK) << mfp_last_error();
  EXPECT_EQ(o.budget_bytes, 8ull << 30);
  EXPECT_EQ(o.objective, MFP_OBJECTIVE_MAX_BATCH);
  EXPECT_EQ(o.max_batch, 65536);
  EXPECT_EQ(o.headroom, MFP_HEADROOM_AUTO);
  EXPECT_EQ(o.precision_count, 0);
  ASSERT_EQ(mfp_options_parse_json("{\"budget\": 1000000, \"objective\": \"global-batch\", \"global_batch\": 96,"
                                   " \"precisions\": [\"bf16\", \"fp32\"], \"max_batch\": 512, \"headroom\": 0}",
                                   &o),
            MFP_OK)
      << mfp_last_error();
  EXPECT_EQ(o.budget_bytes, 1000000u);
  EXPECT_EQ(o.objective, MFP_OBJECTIVE_GLOBAL_BATCH);
  EXPECT_EQ(o.global_batch, 96);
  ASSERT_EQ(o.precision_count, 2);
  EXPECT_EQ(o.precisions[0], MFP_BF16);
  EXPECT_EQ(o.precisions[1], MFP_FP32);
  EXPECT_EQ(o.max_batch, 512);
  EXPECT_EQ(o.headroom, 0.0);
}

TEST(PlannerOptions, BadOptionsNameTheKey) {
  struct { const char *json, *prefix; } cases[] = {
      {"{\"budgte\": \"8GiB\"}", "budgte: unknown option"},
      {"{}", "budget: missing"},
      {"{\"budget\": \"8XB\"}", "budget: bad size '8XB': unknown unit"},
      {"{\"budget\": 1.5}", "budget: expected an integer number of bytes or a size string"},
      {"{\"budget\": -5}", "budget: must be positive"},
      {"{\"budget\": \"32TiB\"}", "budget: "},
      {"{\"budget\": \"8GiB\", \"objective\": \"fast\"}", "objective: unknown objective \"fast\""},
      {"{\"budget\": \"8GiB\", \"objective\": 1}", "objective: expected"},
      {"{\"budget\": \"8GiB\", \"objective\": \"global-batch\"}", "global_batch: "},
      {"{\"budget\": \"8GiB\", \"global_batch\": 64}", "global_batch: given, but the objective is max-batch"},
      {"{\"budget\": \"8GiB\", \"objective\": \"global-batch\", \"global_batch\": \"64\"}", "global_batch: expected an integer"},
      {"{\"budget\": \"8GiB\", \"precisions\": \"bf16\"}", "precisions: expected a list"},
      {"{\"budget\": \"8GiB\", \"precisions\": []}", "precisions: empty"},
      {"{\"budget\": \"8GiB\", \"precisions\": [\"fp64\"]}", "precisions[0]: expected \"fp32\", \"bf16\" or \"fp16\""},
      {"{\"budget\": \"8GiB\", \"precisions\": [\"bf16\", \"bf16\"]}", "precisions[1]: bf16 is listed twice"},
      {"{\"budget\": \"8GiB\", \"max_batch\": 0}", "max_batch: must be in 1..2^30"},
      {"{\"budget\": \"8GiB\", \"max_batch\": 1.5}", "max_batch: expected an integer"},
      {"{\"budget\": \"8GiB\", \"headroom\": 1}", "headroom: must be a fraction in [0, 1) or \"auto\""},
      {"{\"budget\": \"8GiB\", \"headroom\": -1}", "headroom: must be a fraction in [0, 1) or \"auto\""},
      {"{\"budget\": \"8GiB\", \"headroom\": \"3%\"}", "headroom: expected a fraction or \"auto\""},
      {"[1]", "options: expected a JSON object"},
      {"{\"budget\": ", "options: not valid JSON"},
  };
  for (auto &c : cases) {
    std::string e = options_error(c.json);
    EXPECT_TRUE(starts_with(e, c.prefix)) << c.json << " -> " << e;
  }
  mfp_options o;
  mfp_options_init(&o);
  o.budget_bytes = 1 << 30;
  o.size = 8;  // a caller with another layout
  Synth synth = small_synth();
  Profile p = parse(synth_profile(synth).str());
  mfp_plan_result *plan = nullptr;
  EXPECT_EQ(mfp_plan(p.get(), &o, &plan), MFP_ERR_INVALID);
  EXPECT_TRUE(starts_with(mfp_last_error(), "options: struct size 8")) << mfp_last_error();
  EXPECT_EQ(plan, nullptr);
}

TEST(PlannerOptions, PrecisionNotInTheProfile) {
  Synth synth = small_synth(5, 1);
  mfp_precision other = synth.precisions[0].precision == MFP_BF16 ? MFP_FP16 : MFP_BF16;
  std::string options = std::string("{\"budget\": \"1TiB\", \"precisions\": [\"") + mfp_precision_name(other) + "\"]}";
  char *out = nullptr;
  EXPECT_EQ(mfp_plan_json(synth_profile(synth).str().c_str(), options.c_str(), &out), MFP_ERR_INVALID);
  EXPECT_EQ(out, nullptr);
  EXPECT_TRUE(starts_with(mfp_last_error(), std::string("precisions: ") + mfp_precision_name(other) +
                                                " is not in the profile (it has " +
                                                mfp_precision_name(synth.precisions[0].precision) + ")"))
      << mfp_last_error();
}

// ---------------------------------------------------------------- planning

TEST(PlannerPlan, NothingFitsHasItsStatus) {
  Synth synth = small_synth();
  std::string profile = synth_profile(synth).str();
  char *out = nullptr;
  EXPECT_EQ(mfp_plan_json(profile.c_str(), "{\"budget\": 1024, \"headroom\": 0.03}", &out), MFP_ERR_NO_FIT);
  EXPECT_EQ(out, nullptr);
  std::string e = mfp_last_error();
  EXPECT_TRUE(starts_with(e, "nothing fits: even batch 1 with everything checkpointed in the cheapest precision ("))
      << e;
  // floor(1024 * 0.97) less the profile's 4096 bytes of reserve overhead leaves nothing
  EXPECT_NE(e.find("allocated > the usable 0 B (0 bytes: the budget less the headroom and the reserve model"),
            std::string::npos)
      << e;
  EXPECT_STREQ(mfp_status_name(MFP_ERR_NO_FIT), "nothing fits");
}

// A profile from segments whose reserve overhead (1 TiB) exceeds the usable
// bytes: the allocated bound is 0 at once. It used to be found by stepping
// down from usable / ratio one byte at a time (2^31 steps here, seconds; hours
// for larger budgets). Found by tests/fuzz/fuzz_profile,
// corpus/profile/timeout_overhead_above_usable.json.
TEST(PlannerPlan, AReserveOverheadAboveTheUsableBytesIsNoFitAtOnce) {
  Synth synth = small_synth();
  Json profile = synth_profile(synth);
  profile.erase("granule_bytes");  // segments: reserved = max(allocated + overhead, allocated x ratio)
  const int64_t overhead = int64_t(1) << 40;
  const int64_t allocated = int64_t(8) << 40;  // ratio 9/8
  profile["settings"][1].set("peak_allocated_bytes", allocated).set("peak_reserved_bytes", allocated + overhead);
  Profile p = parse(profile.str());
  mfp_options opts;
  mfp_options_init(&opts);
  opts.headroom = 0.03;
  opts.budget_bytes = 2500000000ull;  // usable / ratio ~ 2^31
  mfp_plan_result *raw = nullptr;
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(mfp_plan(p.get(), &opts, &raw), MFP_ERR_NO_FIT) << mfp_last_error();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 1.0);
  EXPECT_NE(std::string(mfp_last_error()).find("the usable 0 B"), std::string::npos) << mfp_last_error();
  Plan none(raw);

  // Where both bounds leave room, the smaller one: the ratio's here.
  opts.budget_bytes = uint64_t(1) << 44;
  ASSERT_EQ(mfp_plan(p.get(), &opts, &raw), MFP_OK) << mfp_last_error();
  Plan plan(raw);
  mfp_plan_summary sm;
  ASSERT_EQ(mfp_plan_get_summary(plan.get(), &sm), MFP_OK);
  int64_t usable = usable_bytes(opts.budget_bytes, opts.headroom);
  int64_t by_ratio = (int64_t)std::floor((double)usable / 1.125);
  while (std::ceil((double)by_ratio * 1.125) > (double)usable) by_ratio--;
  EXPECT_LT(by_ratio, usable - overhead);
  EXPECT_EQ((int64_t)sm.usable_allocated_bytes, by_ratio);
}

TEST(PlannerPlan, JsonHasTheDocumentedKeys) {
  Synth synth = small_synth(21, 2);
  std::string profile = synth_profile(synth).str();
  char *out = nullptr;
  ASSERT_EQ(mfp_plan_json(profile.c_str(),
                          "{\"budget\": \"1GiB\", \"objective\": \"global-batch\", \"global_batch\": 48, \"max_batch\": 32, "
                          "\"headroom\": 0.03}",
                          &out),
            MFP_OK)
      << mfp_last_error();
  std::string json = out;
  mfp_free(out);
  for (const char *key :
       {"\"format\": \"memfit-plan\"", "\"version\": 1", "\"batch_size\": ", "\"budget_bytes\": 1073741824",
        "\"usable_bytes\": 1041529569", "\"headroom\": 0.03", "\"objective\": \"global-batch\"",
        "\"predicted_peak_bytes\": ", "\"predicted_breakdown\": {", "\"fixed_bytes\": ", "\"kept_bytes\": ",
        "\"transient_bytes\": ", "\"phase\": ", "\"layer\": ", "\"predicted_step_seconds\": ",
        "\"predicted_recompute_seconds\": ", "\"recompute_overhead_percent\": ", "\"throughput_samples_per_second\": ",
        "\"model_error\": 0", "\"self_check\": [", "\"measured\": ", "\"predicted\": ", "\"error\": ",
        "\"grad_accumulation_steps\": ", "\"global_batch\": 48", "\"lr_scale\": {", "\"rule\": \"linear\"",
        "\"suggestion\": true", "\"exact\": true", "\"monotone\": true", "\"baselines\": {", "\"no_checkpoint\": {",
        "\"all_checkpoint\": {", "\"planning_seconds\": ", "\"layers\": [", "\"name\": \"layers.0\"",
        "\"checkpoint\": ", "\"precision\": ", "\"recompute_seconds\": "})
    EXPECT_NE(json.find(key), std::string::npos) << key << " not in\n" << json;
}

TEST(PlannerPlan, DefaultPrecisionsAreTheProfilesAndBaselinesUseTheFirst) {
  Synth synth = small_synth(9, 3);
  Profile p = parse(synth_profile(synth).str());
  mfp_options o;
  mfp_options_init(&o);
  o.budget_bytes = 1ull << 40;
  o.max_batch = 8;
  mfp_plan_result *raw = nullptr;
  ASSERT_EQ(mfp_plan(p.get(), &o, &raw), MFP_OK) << mfp_last_error();
  Plan plan(raw);
  mfp_plan_summary sm;
  mfp_plan_get_summary(plan.get(), &sm);
  EXPECT_EQ(sm.baseline_precision, synth.precisions[0].precision);  // settings[0]'s
  EXPECT_EQ(sm.batch_size, 8);
  EXPECT_EQ(sm.no_checkpoint_batch, 8);
  EXPECT_EQ(sm.all_checkpoint_batch, 8);
  EXPECT_EQ(sm.predicted_recompute_seconds, 0.0);  // everything fits: the fastest plan
  mfp_plan_layer l;
  EXPECT_EQ(mfp_plan_get_layer(plan.get(), 5, &l), MFP_ERR_INVALID);
  ASSERT_EQ(mfp_plan_get_layer(plan.get(), 4, &l), MFP_OK);
  EXPECT_STREQ(l.name, "layers.4");
  EXPECT_FALSE(l.decision.checkpoint);
}

// ------------------------------------------------------- extrapolation range

// A profile whose activations shrink with the batch (no real model gives one:
// a measurement gone wrong) extrapolates, past its largest batch, to a step
// that holds negative bytes, and every batch up to max_batch then "fit". The
// model is out of range where the memory it holds would be negative, so the
// plan stops there.
TEST(PlannerModel, ActivationsThatShrinkWithTheBatchDoNotPlanPastZero) {
  Synth synth = small_synth(11, 1, 2, 4);
  SynthPrecision &sp = synth.precisions[0];
  // Layer 1 keeps 2 MB at batch 0 and 40 KB less per sample: at the profiled
  // batches (<= 8) it is still positive; from batch 50 the walk's held bytes
  // would be negative.
  sp.layers[1].kept = {2000000, -40000};
  sp.layers[1].out = {0, 0};
  sp.layers[1].fpk = {sp.layers[1].kept.a + 1000, 0};
  sp.layers[1].bd = {-sp.layers[1].kept.a, 40000};
  sp.layers[1].bpk = {1000, 40000};
  Profile profile = parse(synth_profile(synth).str());
  ASSERT_TRUE(profile);
  mfp_options opts;
  mfp_options_init(&opts);
  opts.budget_bytes = 1ull << 40;  // nothing but the model's range limits the batch
  opts.max_batch = 65536;
  mfp_plan_result *raw = nullptr;
  ASSERT_EQ(mfp_plan(profile.get(), &opts, &raw), MFP_OK) << mfp_last_error();
  Plan plan(raw);
  mfp_plan_summary sm;
  mfp_plan_get_summary(plan.get(), &sm);
  EXPECT_LT(sm.batch_size, 65536) << "planned the whole range on negative bytes";
  EXPECT_GT(sm.predicted_peak_bytes, 0);
  // At the planned batch, the held bytes of the least-holding walk are still >= 0.
  int64_t held = synth.fixed.at(sm.batch_size);
  for (const SynthLayer &l : sp.layers) {
    held += l.kept.at(sm.batch_size);
    EXPECT_GE(held, 0) << "batch " << sm.batch_size;
  }
}

// ------------------------------------------- measured checkpointed terms

namespace {

// A synthetic profile whose settings carry their every-layer-checkpointed runs.
Synth measured_synth(uint64_t seed, int precisions = 2, int batch_sizes = 2, size_t layers = 6) {
  return small_synth(seed, precisions, batch_sizes, layers, true);
}

}  // namespace

TEST(PlannerCheckpointed, EveryLayerCheckpointedReproducesTheCheckpointedRun) {
  for (int batch_sizes : {2, 3}) {
    for (uint64_t seed = 1; seed <= 20; seed++) {
      Synth synth = measured_synth(seed, 2, batch_sizes);
      Profile profile = parse(synth_profile(synth).str());
      ASSERT_TRUE(profile);
      for (const SynthPrecision &sp : synth.precisions)
        for (int64_t b : {synth.batches[0], synth.batches.back(), (int64_t)11}) {  // 11: never profiled
          SynthRun run = synth_run(synth, sp, b, 1);
          std::vector<mfp_decision> d(synth.names.size(), mfp_decision{true, sp.precision, false});
          mfp_simulation sim;
          ASSERT_EQ(mfp_simulate(profile.get(), b, d.data(), d.size(), &sim), MFP_OK);
          EXPECT_EQ(sim.peak_bytes, run.peak) << "seed " << seed << " batch " << b;
        }
    }
  }
}

TEST(PlannerCheckpointed, TheSelfCheckCoversBothRunsAndTheTermsAreNotDerived) {
  Synth synth = measured_synth(3);
  Json json = synth_profile(synth);
  Plan plan;
  {
    Profile profile = parse(json.str());
    mfp_options o;
    mfp_options_init(&o);
    o.budget_bytes = 64 << 20;
    mfp_plan_result *r = nullptr;
    ASSERT_EQ(mfp_plan(profile.get(), &o, &r), MFP_OK) << mfp_last_error();
    plan.reset(r);
  }
  char *text = nullptr;
  ASSERT_EQ(mfp_plan_to_json(plan.get(), &text), MFP_OK);
  std::string out = text;
  mfp_free(text);
  size_t runs = synth.precisions.size() * synth.batches.size();
  size_t checkpointed = 0, plain = 0;
  for (size_t at = 0; (at = out.find("\"checkpointed\": ", at)) != std::string::npos; at++)
    (out.compare(at + 16, 4, "true") == 0 ? checkpointed : plain)++;
  EXPECT_EQ(checkpointed, runs) << out;
  EXPECT_EQ(plain, runs) << out;
  EXPECT_NE(out.find("\"model_error\": 0.0,"), std::string::npos) << "both runs are reproduced exactly";

  // Without the checkpointed runs, the every-layer-checkpointed peak comes from
  // the derived terms: a different number for this profile.
  Json bare = json;
  for (auto &setting : bare["settings"].items) setting.erase("checkpointed");
  Profile with = parse(json.str()), without = parse(bare.str());
  const SynthPrecision &sp = synth.precisions[0];
  std::vector<mfp_decision> d(synth.names.size(), mfp_decision{true, sp.precision, false});
  mfp_simulation a, b;
  ASSERT_EQ(mfp_simulate(with.get(), synth.batches[0], d.data(), d.size(), &a), MFP_OK);
  ASSERT_EQ(mfp_simulate(without.get(), synth.batches[0], d.data(), d.size(), &b), MFP_OK);
  EXPECT_EQ(a.peak_bytes, synth_run(synth, sp, synth.batches[0], 1).peak);
  EXPECT_NE(a.peak_bytes, b.peak_bytes);
}

TEST(PlannerCheckpointed, ACheckedMixedPlanIsSimulatedAsNamed) {
  Synth synth = measured_synth(5, 1);
  Json json = synth_profile(synth);
  int64_t b = synth.batches[0];
  // Only layers.1 and layers.4 checkpointed, measured 1000 bytes above the model.
  Profile bare = parse(json.str());
  std::vector<mfp_decision> d(synth.names.size(), mfp_decision{false, synth.precisions[0].precision, false});
  d[1].checkpoint = d[4].checkpoint = true;
  mfp_simulation sim;
  ASSERT_EQ(mfp_simulate(bare.get(), b, d.data(), d.size(), &sim), MFP_OK);
  Json names = Json::array();
  names.push("layers.1");
  names.push("layers.4");
  Json checks = Json::array();
  checks.push(Json::object()
                  .set("batch_size", b)
                  .set("precision", mfp_precision_name(synth.precisions[0].precision))
                  .set("checkpointed_layers", names)
                  .set("peak_allocated_bytes", sim.peak_bytes + 1000)
                  .set("peak_reserved_bytes", sim.peak_bytes + 1000 + kSynthReserveOverhead));
  json.set("checkpoint_checks", checks);
  mfp_options o;
  mfp_options_init(&o);
  o.budget_bytes = 64 << 20;
  mfp_plan_result *r = nullptr;
  Profile profile = parse(json.str());
  ASSERT_EQ(mfp_plan(profile.get(), &o, &r), MFP_OK) << mfp_last_error();
  Plan plan(r);
  char *text = nullptr;
  ASSERT_EQ(mfp_plan_to_json(plan.get(), &text), MFP_OK);
  std::string out = text;
  mfp_free(text);
  EXPECT_NE(out.find("\"predicted\": " + std::to_string(sim.peak_bytes)), std::string::npos) << out;
  EXPECT_NE(out.find("\"checkpointed_layers\": 2"), std::string::npos) << out;
}

TEST(PlannerCheckpointed, BadCheckpointedRunsNameTheirPath) {
  Synth synth = measured_synth(9);
  {
    Json j = synth_profile(synth);
    j["settings"][1].erase("checkpointed");
    EXPECT_PRED2(starts_with, profile_error(j), "settings[1].checkpointed: missing, but settings[0] has one");
  }
  {
    Json j = synth_profile(synth);
    j["settings"][0]["checkpointed"]["layers"][2].set("name", "elsewhere");
    EXPECT_PRED2(starts_with, profile_error(j), "settings[0].checkpointed.layers[2].name: \"elsewhere\"");
  }
  {
    Json j = synth_profile(synth);
    Json &w = j["settings"][0]["checkpointed"]["layers"][3]["forward"];
    w.set("start", w["start"].i + 1).set("peak", w["peak"].i + 1);
    EXPECT_PRED2(starts_with, profile_error(j), "settings[0].checkpointed.layers[3].forward.start:");
  }
  {
    Json j = synth_profile(synth);
    j["settings"][0]["checkpointed"]["layers"].items.pop_back();
    EXPECT_PRED2(starts_with, profile_error(j), "settings[0].checkpointed.layers: 5 layers, but the setting has 6");
  }
  {
    Json j = synth_profile(synth);
    j["settings"][0]["checkpointed"].set("peak_reserved_bytes", 0);
    EXPECT_PRED2(starts_with, profile_error(j), "settings[0].checkpointed.peak_reserved_bytes: 0 is below");
  }
  {
    Json j = with_checks(synth, [](int64_t, int64_t) { return 0; });
    Json names = Json::array();
    names.push("nowhere");
    j["checkpoint_checks"][0].set("checkpointed_layers", names);
    EXPECT_PRED2(starts_with, profile_error(j),
                 "checkpoint_checks[0].checkpointed_layers[0]: \"nowhere\" is not a layer of the profile");
  }
}

TEST(PlannerCheckpointed, ACheckpointedLayerCostsAtLeastItsForwardAgain) {
  Synth synth = measured_synth(11, 1);
  for (auto &l : synth.precisions[0].layers) {  // checkpointed runs measured faster than the plain ones: noise
    l.ctf = {l.tf.a / 4, l.tf.s / 4};
    l.ctb = {l.tb.a / 4, l.tb.s / 4};
  }
  Profile profile = parse(synth_profile(synth).str());
  int64_t b = synth.batches[0];
  std::vector<mfp_decision> none(synth.names.size(), mfp_decision{false, synth.precisions[0].precision, false});
  std::vector<mfp_decision> all(synth.names.size(), mfp_decision{true, synth.precisions[0].precision, false});
  mfp_simulation plain, ckpt;
  ASSERT_EQ(mfp_simulate(profile.get(), b, none.data(), none.size(), &plain), MFP_OK);
  ASSERT_EQ(mfp_simulate(profile.get(), b, all.data(), all.size(), &ckpt), MFP_OK);
  double forward = 0;
  for (const auto &l : synth.precisions[0].layers) forward += l.tf.at(b);
  EXPECT_NEAR(ckpt.recompute_seconds, forward, 1e-12);
  EXPECT_NEAR(ckpt.step_seconds - plain.step_seconds, forward, 1e-12);
}
