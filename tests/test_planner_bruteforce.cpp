// test_planner_bruteforce.cpp — the planner's optimum against brute force:
// random synthetic chains of 1..12 layers, every checkpoint/precision
// assignment simulated with mfp_simulate at every batch, for each objective.
#include <algorithm>
#include <chrono>
#include <functional>

#include "test_planner_util.h"

using namespace planner_test;

namespace {

struct BatchBest {
  bool found = false;
  double seconds = 0;
};

// For each batch 1..max_batch: the fastest assignment that fits, or none.
// Feasibility is monotone in these profiles (asserted through the planner's
// "monotone"), so the enumeration stops one batch after the first that fails.
// A plan that checkpoints a layer must also fit usable - correction(batch)
// (the checkpoint check, PLAN.md).
// modes: 2 (keep, checkpoint) or 3 (and selective). Every layer of a plan is in
// one precision.
std::vector<BatchBest> enumerate(const mfp_profile *p, const std::vector<mfp_precision> &allowed, int64_t usable,
                                 int64_t max_batch, int64_t *largest,
                                 const std::function<int64_t(int64_t)> &correction, size_t modes) {
  size_t n = mfp_profile_layer_count(p), options = modes * allowed.size(), total = 1;
  for (size_t i = 0; i < n; i++) total *= options;
  std::vector<BatchBest> best(max_batch + 1);
  std::vector<mfp_decision> d(n);
  *largest = 0;
  for (int64_t b = 1; b <= max_batch; b++) {
    for (size_t code = 0; code < total; code++) {
      size_t c = code;
      for (size_t i = 0; i < n; i++, c /= options)
        d[i] = mfp_decision{(c % options) % modes != 0, allowed[(c % options) / modes], (c % options) % modes == 2};
      // A plan keeps every layer in one precision (PLAN.md, "One precision per plan").
      if (std::any_of(d.begin(), d.end(), [&](const mfp_decision &x) { return x.precision != d[0].precision; }))
        continue;
      mfp_simulation sim;
      EXPECT_EQ(mfp_simulate(p, b, d.data(), n, &sim), MFP_OK) << mfp_last_error();
      bool checkpoints = std::any_of(d.begin(), d.end(), [](const mfp_decision &x) { return x.checkpoint; });
      int64_t limit = checkpoints ? usable - correction(b) : usable;
      if (sim.peak_bytes <= limit && (!best[b].found || sim.step_seconds < best[b].seconds)) {
        best[b].found = true;
        best[b].seconds = sim.step_seconds;
      }
    }
    if (best[b].found) {
      EXPECT_EQ(*largest, b - 1) << "feasibility is not monotone at batch " << b;
      *largest = b;
    } else if (b > *largest + 1) {
      break;
    }
  }
  return best;
}

mfp_simulation simulate_plan(const mfp_profile *p, const mfp_plan_result *plan, int64_t batch) {
  size_t n = mfp_plan_layer_count(plan);
  std::vector<mfp_decision> d(n);
  for (size_t i = 0; i < n; i++) {
    mfp_plan_layer l;
    EXPECT_EQ(mfp_plan_get_layer(plan, i, &l), MFP_OK);
    d[i] = l.decision;
  }
  mfp_simulation sim{};
  EXPECT_EQ(mfp_simulate(p, batch, d.data(), n, &sim), MFP_OK) << mfp_last_error();
  return sim;
}

void expect_close(double got, double want, const std::string &what) {
  EXPECT_LE(std::fabs(got - want), 1e-9 * std::fabs(want)) << what << ": planner " << got << ", brute force " << want;
}

struct Tally {
  int cases = 0, plans = 0, nothing_fits = 0, capped = 0, checkpointing = 0, mixed = 0, corrected = 0, measured = 0,
      selective = 0;
  size_t assignments = 0;
};

void run_case(uint64_t seed, Tally &tally) {
  std::mt19937_64 rng(seed);
  auto uni = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  SynthOptions so;
  so.precisions = (int)uni(1, 3);
  so.batch_sizes = (int)uni(2, 3);
  so.negative_bd_slopes = seed % 2 == 0;
  so.measured_checkpoint = seed % 4 >= 2;  // half the cases: checkpointed terms measured, not derived
  so.measured_selective = seed % 4 == 3;   // a quarter: selective runs too (a third mode per layer)
  size_t modes = so.measured_selective ? 3 : 2;
  int n_allowed = (int)uni(1, so.precisions);
  // Layers: 1..12 with one precision, fewer with more (6^4 = 1296 assignments);
  // with three modes 1..8, 4, 3 (9^3 = 729).
  static const size_t max_layers[2][4] = {{0, 12, 6, 4}, {0, 8, 4, 3}};
  so.layers = (size_t)uni(1, (int64_t)max_layers[modes == 3][n_allowed]);
  Synth synth = make_synth(rng, so);
  std::vector<mfp_precision> allowed;
  for (const SynthPrecision &sp : synth.precisions) allowed.push_back(sp.precision);
  std::shuffle(allowed.begin(), allowed.end(), rng);
  allowed.resize(n_allowed);

  // Every third case: checkpoint checks that measure the model under by
  // c0 + c1 * batch (a line, so the planner's fit is exact).
  int64_t c0 = 0, c1 = 0;
  bool checked = seed % 3 == 0;
  if (checked) {
    c0 = uni(0, 1 << 12);
    c1 = uni(0, 1 << 8);
  }
  std::function<int64_t(int64_t)> correction = [&](int64_t b) { return checked ? c0 + c1 * b : 0; };
  std::string json = checked ? with_checks(synth, [&](int64_t b, int64_t) { return c0 + c1 * b; }).str()
                             : synth_profile(synth).str();
  Profile profile = parse(json);
  ASSERT_TRUE(profile) << "seed " << seed;
  const mfp_profile *p = profile.get();
  size_t n = so.layers;

  int64_t max_batch = uni(3, 16);
  static const double headrooms[] = {0.0, 0.03, 0.1};
  double headroom = headrooms[uni(0, 2)];
  // A budget between the leanest plan at batch 1 and the fattest at max_batch.
  int64_t lean = INT64_MAX, fat = 0;
  std::vector<mfp_decision> d(n);
  for (mfp_precision prec : allowed) {
    mfp_simulation sim;
    for (auto &x : d) x = {true, prec, false};
    ASSERT_EQ(mfp_simulate(p, 1, d.data(), n, &sim), MFP_OK);
    lean = std::min(lean, sim.peak_bytes);
    for (auto &x : d) x = {false, prec, false};
    ASSERT_EQ(mfp_simulate(p, max_batch, d.data(), n, &sim), MFP_OK);
    fat = std::max(fat, sim.peak_bytes);
  }
  int64_t target = uni(lean - lean / 20, fat + fat / 20);
  uint64_t budget = (uint64_t)std::ceil((double)target / (1.0 - headroom));
  int64_t usable = usable_bytes(budget, headroom), limit = allocated_limit(budget, headroom);

  int64_t largest;
  std::vector<BatchBest> best = enumerate(p, allowed, limit, max_batch, &largest, correction, modes);
  size_t per_batch = 1;
  for (size_t i = 0; i < n; i++) per_batch *= modes * allowed.size();
  tally.assignments += per_batch * (size_t)std::min<int64_t>(max_batch, largest + 2);
  tally.cases++;
  if (largest == max_batch) tally.capped++;

  static const int64_t globals[] = {6, 12, 16, 18, 20, 24, 30, 36, 7};
  for (mfp_objective objective : {MFP_OBJECTIVE_MAX_BATCH, MFP_OBJECTIVE_THROUGHPUT, MFP_OBJECTIVE_GLOBAL_BATCH}) {
    SCOPED_TRACE("seed " + std::to_string(seed) + ", objective " + mfp_objective_name(objective) + ", " +
                 std::to_string(n) + " layers, " + std::to_string(allowed.size()) + " precisions");
    mfp_options opts;
    mfp_options_init(&opts);
    opts.budget_bytes = budget;
    opts.headroom = headroom;
    opts.max_batch = max_batch;
    opts.objective = objective;
    opts.precision_count = (int32_t)allowed.size();
    for (size_t k = 0; k < allowed.size(); k++) opts.precisions[k] = allowed[k];
    int64_t N = globals[uni(0, 8)];
    if (objective == MFP_OBJECTIVE_GLOBAL_BATCH) opts.global_batch = N;
    mfp_plan_result *raw = nullptr;
    mfp_status status = mfp_plan(p, &opts, &raw);
    Plan plan(raw);
    if (largest == 0) {
      EXPECT_EQ(status, MFP_ERR_NO_FIT) << mfp_last_error();
      EXPECT_NE(std::string(mfp_last_error()).find("even batch 1"), std::string::npos) << mfp_last_error();
      tally.nothing_fits++;
      continue;
    }
    ASSERT_EQ(status, MFP_OK) << mfp_last_error();
    tally.plans++;
    mfp_plan_summary sm;
    ASSERT_EQ(mfp_plan_get_summary(plan.get(), &sm), MFP_OK);
    EXPECT_TRUE(sm.exact);
    EXPECT_TRUE(sm.monotone);
    EXPECT_EQ(sm.usable_bytes, (uint64_t)usable);
    EXPECT_EQ(sm.usable_allocated_bytes, (uint64_t)limit);
    EXPECT_FALSE(sm.headroom_auto);
    // The plan is what the simulator says it is, and it fits.
    mfp_simulation sim = simulate_plan(p, plan.get(), sm.batch_size);
    EXPECT_EQ(sim.peak_bytes, sm.predicted_peak_bytes);
    EXPECT_EQ(sim.step_seconds, sm.predicted_step_seconds);
    EXPECT_LE(sim.peak_bytes + sm.checkpoint_correction_bytes, limit);
    EXPECT_EQ(sm.predicted_reserved_bytes, sim.peak_bytes + sm.checkpoint_correction_bytes + kSynthReserveOverhead);
    EXPECT_LE(sm.predicted_reserved_bytes, usable);
    bool any_checkpoint = false, any_selective = false, any_other_precision = false;
    for (size_t i = 0; i < n; i++) {
      mfp_plan_layer l, first;
      mfp_plan_get_layer(plan.get(), i, &l);
      mfp_plan_get_layer(plan.get(), 0, &first);
      any_checkpoint |= l.decision.checkpoint;
      any_selective |= l.decision.checkpoint && l.decision.selective;
      any_other_precision |= l.decision.precision != first.decision.precision;
    }
    tally.checkpointing += any_checkpoint;
    tally.measured += any_checkpoint && so.measured_checkpoint;
    tally.corrected += any_checkpoint && sm.checkpoint_correction_bytes > 0;
    tally.mixed += any_other_precision;
    tally.selective += any_selective;
    EXPECT_TRUE(!any_selective || so.measured_selective) << "a selective layer in a profile without selective runs";

    if (objective == MFP_OBJECTIVE_MAX_BATCH) {
      EXPECT_EQ(sm.batch_size, largest);
      expect_close(sm.predicted_step_seconds, best[largest].seconds, "step at the largest batch");
    } else if (objective == MFP_OBJECTIVE_THROUGHPUT) {
      int64_t want = 0;
      double top = 0;
      for (int64_t b = 1; b <= largest; b++)  // ties: the larger batch
        if (best[b].found && (double)b / best[b].seconds >= top) {
          top = (double)b / best[b].seconds;
          want = b;
        }
      EXPECT_EQ(sm.batch_size, want);
      expect_close((double)sm.batch_size / sm.predicted_step_seconds, top, "throughput");
      expect_close(sm.throughput_samples_per_second, top, "reported throughput");
    } else {
      int64_t want = 0;
      double cost = INFINITY;
      for (int64_t m = 1; m <= std::min(largest, N); m++)  // ties: the larger micro-batch
        if (N % m == 0 && best[m].found && (double)(N / m) * best[m].seconds <= cost) {
          cost = (double)(N / m) * best[m].seconds;
          want = m;
        }
      EXPECT_EQ(sm.batch_size, want);
      EXPECT_EQ(sm.grad_accumulation_steps, N / want);
      EXPECT_EQ(sm.global_batch, N);
      expect_close((double)sm.grad_accumulation_steps * sm.predicted_step_seconds, cost, "time per global batch");
    }
  }
}

}  // namespace

TEST(PlannerBruteForce, OptimumEqualsEnumeration) {
  auto started = std::chrono::steady_clock::now();
  Tally tally;
  for (uint64_t seed = 1; seed <= 1000; seed++) {
    run_case(seed, tally);
    if (HasFatalFailure() || HasFailure()) break;
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  printf("[          ] %d cases: %d plans (%d checkpoint, %d of them under a correction, %d mixing precisions), %d with "
         "nothing fitting, %d capped by max_batch, %d checkpointing with measured terms, %d selective; %zu assignments simulated, in %.2f s\n",
         tally.cases, tally.plans, tally.checkpointing, tally.corrected, tally.mixed, tally.nothing_fits, tally.capped, tally.measured,
         tally.selective, tally.assignments, seconds);
  EXPECT_GT(tally.plans, 1500);
  EXPECT_GT(tally.checkpointing, 500);
  EXPECT_GT(tally.corrected, 100) << "plans under a checkpoint check's correction";
  EXPECT_GT(tally.measured, 200) << "plans that checkpoint with measured checkpointed terms";
  EXPECT_GT(tally.selective, 50) << "plans with a selectively checkpointed layer";
  EXPECT_EQ(tally.mixed, 0) << "plans that mix precisions across layers";
  EXPECT_GT(tally.nothing_fits, 0);
}

// With a tiny front the search coarsens: still a plan that fits, never faster
// than the exact one, and marked inexact when it did coarsen.
TEST(PlannerBruteForce, CoarsenedFrontStillFits) {
  int coarsened = 0;
  for (uint64_t seed = 1000; seed < 1040; seed++) {
    std::mt19937_64 rng(seed);
    SynthOptions so;
    so.layers = 24;
    so.precisions = 3;
    so.negative_bd_slopes = true;
    Synth synth = make_synth(rng, so);
    Profile profile = parse(synth_profile(synth).str());
    ASSERT_TRUE(profile);
    std::vector<mfp_decision> d(so.layers, mfp_decision{false, synth.precisions[0].precision, false});
    mfp_simulation sim;
    ASSERT_EQ(mfp_simulate(profile.get(), 8, d.data(), d.size(), &sim), MFP_OK);
    mfp_options opts;
    mfp_options_init(&opts);
    opts.budget_bytes = (uint64_t)sim.peak_bytes * 3 / 4;
    opts.headroom = 0.03;
    opts.max_batch = 64;
    opts.objective = MFP_OBJECTIVE_MAX_BATCH;
    mfp_plan_result *exact_raw = nullptr, *coarse_raw = nullptr;
    mfp_status s1 = mfp_plan(profile.get(), &opts, &exact_raw);
    opts.front_cap = 4;
    mfp_status s2 = mfp_plan(profile.get(), &opts, &coarse_raw);
    Plan exact(exact_raw), coarse(coarse_raw);
    ASSERT_EQ(s1, MFP_OK) << mfp_last_error();
    ASSERT_EQ(s2, MFP_OK) << mfp_last_error();
    mfp_plan_summary a, b;
    mfp_plan_get_summary(exact.get(), &a);
    mfp_plan_get_summary(coarse.get(), &b);
    EXPECT_TRUE(a.exact);
    EXPECT_LE(b.batch_size, a.batch_size);
    EXPECT_LE(b.predicted_reserved_bytes, (int64_t)b.usable_bytes);
    if (b.batch_size == a.batch_size) {
      EXPECT_GE(b.predicted_step_seconds, a.predicted_step_seconds);
    }
    if (b.exact) {
      EXPECT_EQ(b.predicted_step_seconds, a.predicted_step_seconds);
    } else {
      coarsened++;
    }
  }
  EXPECT_GT(coarsened, 10);
}
