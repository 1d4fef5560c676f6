// test_planner_selective.cpp — selective checkpointing as the planner's third
// choice per layer (PLAN.md, "Selective checkpointing"): the "selective" runs
// are read and self-checked, the simulator takes their terms, the option turns
// the choice off, and bad profiles and decisions are refused by name. That the
// exact search finds the optimum over all three modes is the brute-force test's.
#include "test_planner_util.h"
#include "memfit/memfit.h"

using namespace planner_test;

namespace {

Synth selective_synth(uint64_t seed, size_t layers = 5) {
  std::mt19937_64 rng(seed);
  SynthOptions so;
  so.layers = layers;
  so.precisions = 1;
  so.measured_checkpoint = true;
  so.measured_selective = true;
  return make_synth(rng, so);
}

std::string error_of(const Json &profile) {
  mfp_profile *p = nullptr;
  EXPECT_EQ(mfp_profile_parse(profile.str().c_str(), &p), MFP_ERR_PROFILE);
  mfp_profile_free(p);
  return mfp_last_error();
}

mfp_plan_result *plan_at(const mfp_profile *p, uint64_t budget, bool selective) {
  mfp_options o;
  mfp_options_init(&o);
  o.budget_bytes = budget;
  o.headroom = 0.0;
  o.no_selective = !selective;
  mfp_plan_result *r = nullptr;
  mfp_status s = mfp_plan(p, &o, &r);
  return s == MFP_OK ? r : nullptr;
}

// The plan of `profile` at a budget that fits it, as JSON ("" and a failure if none).
std::string plan_json(const Json &profile) {
  Profile p = parse(profile.str());
  if (!p) return "";
  Plan plan(plan_at(p.get(), 64u << 20, true));
  EXPECT_TRUE(plan) << mfp_last_error();
  char *json = nullptr;
  if (!plan || mfp_plan_to_json(plan.get(), &json) != MFP_OK) return "";
  std::string text(json);
  free(json);
  return text;
}

size_t selective_layers(const mfp_plan_result *r) {
  size_t k = 0;
  for (size_t i = 0; i < mfp_plan_layer_count(r); i++) {
    mfp_plan_layer l;
    EXPECT_EQ(mfp_plan_get_layer(r, i, &l), MFP_OK);
    k += l.decision.checkpoint && l.decision.selective;
  }
  return k;
}

}  // namespace

TEST(PlannerSelective, SimulatorReproducesTheSelectiveRun) {
  Synth synth = selective_synth(3);
  Profile p = parse(synth_profile(synth).str());
  ASSERT_TRUE(p);
  size_t n = synth.names.size();
  for (int64_t b : synth.batches) {
    std::vector<mfp_decision> d(n, mfp_decision{true, synth.precisions[0].precision, true});
    mfp_simulation sim;
    ASSERT_EQ(mfp_simulate(p.get(), b, d.data(), n, &sim), MFP_OK) << mfp_last_error();
    EXPECT_EQ(sim.peak_bytes, synth_run(synth, synth.precisions[0], b, 2).peak) << "batch " << b;
    // The selective terms are not the checkpointed ones.
    for (auto &x : d) x.selective = false;
    mfp_simulation full;
    ASSERT_EQ(mfp_simulate(p.get(), b, d.data(), n, &full), MFP_OK);
    EXPECT_EQ(full.peak_bytes, synth_run(synth, synth.precisions[0], b, 1).peak) << "batch " << b;
  }
}

TEST(PlannerSelective, SelfCheckCoversTheSelectiveRuns) {
  std::string all = plan_json(synth_profile(selective_synth(5)));
  size_t from = all.find("\"self_check\"");
  ASSERT_NE(from, std::string::npos);
  std::string text = all.substr(from, all.find("\"lr_scale\"") - from);
  // 2 settings x (plain, checkpointed, selective), each exact.
  size_t runs = 0, at = 0;
  while ((at = text.find("\"selective\": true", at)) != std::string::npos) runs++, at++;
  EXPECT_EQ(runs, 2u) << text;
  EXPECT_NE(all.find("\"model_error\": 0.0,"), std::string::npos) << all.substr(0, 1500);
}

TEST(PlannerSelective, ChosenWhereItIsFasterAndOffWhenAsked) {
  // Budgets between every layer checkpointed and none: some plan there must
  // recompute, and in a few of those selective is the faster way to fit.
  int with = 0;
  for (uint64_t seed = 1; seed <= 40; seed++) {
    Synth synth = selective_synth(seed);
    Profile p = parse(synth_profile(synth).str());
    ASSERT_TRUE(p);
    size_t n = synth.names.size();
    int64_t b = synth.batches.back();
    std::vector<mfp_decision> d(n, mfp_decision{false, synth.precisions[0].precision, false});
    mfp_simulation plain, all;
    ASSERT_EQ(mfp_simulate(p.get(), b, d.data(), n, &plain), MFP_OK);
    for (auto &x : d) x.checkpoint = true;
    ASSERT_EQ(mfp_simulate(p.get(), b, d.data(), n, &all), MFP_OK);
    uint64_t budget = (uint64_t)(plain.peak_bytes + all.peak_bytes) / 2 + kSynthReserveOverhead;
    mfp_plan_result *on = plan_at(p.get(), budget, true), *off = plan_at(p.get(), budget, false);
    Plan a(on), c(off);
    if (!on || !off) continue;
    EXPECT_EQ(selective_layers(off), 0u) << "seed " << seed;
    mfp_plan_summary sa, sc;
    mfp_plan_get_summary(on, &sa);
    mfp_plan_get_summary(off, &sc);
    // More choices never make the plan worse: the batch first, then the step.
    EXPECT_GE(sa.batch_size, sc.batch_size) << "seed " << seed;
    if (sa.batch_size == sc.batch_size) {
      EXPECT_LE(sa.predicted_step_seconds, sc.predicted_step_seconds * (1 + 1e-12)) << "seed " << seed;
    }
    with += selective_layers(on) > 0;
  }
  EXPECT_GT(with, 0) << "no budget made the planner choose selective checkpointing";
}

TEST(PlannerSelective, OptionParses) {
  mfp_options o;
  ASSERT_EQ(mfp_options_parse_json("{\"budget\": \"1GiB\", \"selective\": false}", &o), MFP_OK) << mfp_last_error();
  EXPECT_TRUE(o.no_selective);
  ASSERT_EQ(mfp_options_parse_json("{\"budget\": \"1GiB\"}", &o), MFP_OK);
  EXPECT_FALSE(o.no_selective);
  EXPECT_EQ(mfp_options_parse_json("{\"budget\": \"1GiB\", \"selective\": 1}", &o), MFP_ERR_INVALID);
  EXPECT_NE(std::string(mfp_last_error()).find("selective: expected true or false"), std::string::npos)
      << mfp_last_error();
}

TEST(PlannerSelective, BadProfilesAreRefusedByName) {
  Synth synth = selective_synth(7);
  {
    Json j = synth_profile(synth);
    j["settings"][1].erase("selective");
    EXPECT_NE(error_of(j).find("settings[1].selective: missing, but settings[0] has one"), std::string::npos)
        << mfp_last_error();
  }
  {
    Json j = synth_profile(synth);
    for (size_t k = 0; k < j["settings"].items.size(); k++) j["settings"][k].erase("checkpointed");
    EXPECT_NE(error_of(j).find("settings[0].selective: present without a \"checkpointed\" run"), std::string::npos)
        << mfp_last_error();
  }
  {
    Json j = synth_profile(synth);
    j["settings"][0]["selective"]["layers"][2].set("name", "elsewhere");
    EXPECT_NE(error_of(j).find("settings[0].selective.layers[2].name: \"elsewhere\""), std::string::npos)
        << mfp_last_error();
  }
  {
    Synth plain = synth;
    plain.measured_selective = false;
    Json j = synth_profile(plain);
    j.set("checkpoint_checks", Json::array());
    Json check = Json::object()
                     .set("batch_size", 2)
                     .set("precision", mfp_precision_name(plain.precisions[0].precision))
                     .set("peak_allocated_bytes", 1000000)
                     .set("peak_reserved_bytes", 1004096)
                     .set("checkpointed_layers", Json::array());
    Json names = Json::array();
    names.push("layers.1");
    check.set("selective_layers", names);
    j["checkpoint_checks"].push(check);
    EXPECT_NE(error_of(j).find("checkpoint_checks[0].selective_layers: the profile's settings have no \"selective\" runs"),
              std::string::npos)
        << mfp_last_error();
  }
}

TEST(PlannerSelective, ChecksNameTheirSelectiveLayers) {
  Synth synth = selective_synth(9);
  Json j = synth_profile(synth);
  Json check = Json::object()
                   .set("batch_size", synth.batches[0])
                   .set("precision", mfp_precision_name(synth.precisions[0].precision))
                   .set("peak_allocated_bytes", 1000000)
                   .set("peak_reserved_bytes", 1004096);
  Json full = Json::array(), sel = Json::array();
  full.push("layers.0");
  sel.push("layers.2");
  sel.push("layers.3");
  check.set("checkpointed_layers", full).set("selective_layers", sel);
  j.set("checkpoint_checks", Json::array());
  j["checkpoint_checks"].push(check);
  std::string text = plan_json(j);
  EXPECT_NE(text.find("\"checkpointed_layers\": 3"), std::string::npos) << text.substr(0, 2000);
  EXPECT_NE(text.find("\"selective_layers\": 2"), std::string::npos);
  // A layer in both lists is refused.
  j["checkpoint_checks"][0]["checkpointed_layers"].push("layers.2");
  EXPECT_NE(error_of(j).find("layer \"layers.2\" is in both checkpointed_layers and selective_layers"),
            std::string::npos)
      << mfp_last_error();
}

TEST(PlannerSelective, SimulateRefusesBadDecisions) {
  Synth with = selective_synth(11);
  Profile p = parse(synth_profile(with).str());
  ASSERT_TRUE(p);
  size_t n = with.names.size();
  std::vector<mfp_decision> d(n, mfp_decision{false, with.precisions[0].precision, false});
  d[1].selective = true;
  mfp_simulation sim;
  EXPECT_EQ(mfp_simulate(p.get(), 2, d.data(), n, &sim), MFP_ERR_INVALID);
  EXPECT_NE(std::string(mfp_last_error()).find("layer 1 (layers.1): selective without checkpoint"), std::string::npos)
      << mfp_last_error();
  Synth without = with;
  without.measured_selective = false;
  Profile q = parse(synth_profile(without).str());
  ASSERT_TRUE(q);
  d[1].checkpoint = true;
  EXPECT_EQ(mfp_simulate(q.get(), 2, d.data(), n, &sim), MFP_ERR_INVALID);
  EXPECT_NE(std::string(mfp_last_error()).find("selective, but the profile has no \"selective\" runs"),
            std::string::npos)
      << mfp_last_error();
}

// The boundary term (PLAN.md): before layer i's forward, a plan whose layers i - 1
// and i run in different modes holds what layer i - 1 holds of its output in its
// own mode and not in layer i's, to the end of the step; nothing for equal modes,
// nothing when the other mode holds more. With every mode's terms made equal,
// the end of the step differs between plans by exactly those charges.
TEST(PlannerSelective, BoundariesChargeWhatTheModelWouldFreeTwice) {
  Synth synth = selective_synth(13, 3);
  SynthPrecision &sp = synth.precisions[0];
  for (SynthLayer &l : sp.layers) {
    l.cfpk = l.sfpk = l.fpk;
    l.ckept = l.skept = l.kept;
    l.cbpk = l.sbpk = l.bpk;
    l.cbd = l.sbd = l.bd;
  }
  sp.cld = sp.sld = sp.ld;
  SynthLayer &first = sp.layers[0];
  first.out = {4096, 1024};
  first.held[0] = {4096, 1024};  // kept as it is, it holds its whole output (a ReLU)
  first.held[1] = {0, 0};        // checkpointed, none
  first.held[2] = {1024, 256};   // selectively, a part
  Profile p = parse(synth_profile(synth).str());
  ASSERT_TRUE(p);
  mfp_precision prec = synth.precisions[0].precision;
  const mfp_decision K{false, prec, false}, C{true, prec, false}, S{true, prec, true};
  for (int64_t b : {2, 16}) {
    auto end = [&](std::vector<mfp_decision> d) {
      mfp_simulation sim;
      EXPECT_EQ(mfp_simulate(p.get(), b, d.data(), d.size(), &sim), MFP_OK) << mfp_last_error();
      return sim.end_bytes;
    };
    int64_t base = end({K, K, K});
    EXPECT_EQ(end({C, C, C}), base);
    EXPECT_EQ(end({S, S, S}), base);
    EXPECT_EQ(end({K, C, C}) - base, 4096 + 1024 * b) << "K -> C: all it holds, batch " << b;
    EXPECT_EQ(end({K, S, S}) - base, 3072 + 768 * b) << "K -> S: what S does not hold, batch " << b;
    EXPECT_EQ(end({S, C, C}) - base, 1024 + 256 * b) << "S -> C, batch " << b;
    EXPECT_EQ(end({C, K, K}), base) << "C -> K: C holds nothing";
    EXPECT_EQ(end({S, K, K}), base) << "S -> K: K holds more";
  }
}

// A boundary term that falls with the batch (what a layer holds in one mode
// shrinking against another) would let a larger batch need less: the plan then
// does not claim that feasibility is monotone.
TEST(PlannerSelective, AFallingBoundaryTermIsNotMonotone) {
  for (bool falling : {false, true}) {
    Synth synth = selective_synth(17, 3);
    for (SynthLayer &l : synth.precisions[0].layers)
      for (auto &h : l.held) h = l.out;
    SynthLayer &first = synth.precisions[0].layers[0];
    first.out = {8192, 1024};
    first.held[0] = falling ? ByteLine{8192, 0} : ByteLine{8192, 1024};
    first.held[1] = falling ? ByteLine{0, 1024} : ByteLine{0, 0};
    Profile p = parse(synth_profile(synth).str());
    ASSERT_TRUE(p);
    Plan plan(plan_at(p.get(), 64u << 20, true));
    ASSERT_TRUE(plan) << mfp_last_error();
    mfp_plan_summary sm;
    ASSERT_EQ(mfp_plan_get_summary(plan.get(), &sm), MFP_OK);
    EXPECT_EQ(sm.monotone, !falling) << (falling ? "falling" : "steady");
  }
}
