/* fuzz_profile.c — libFuzzer harness of the planner's inputs: the text before
 * the first NUL byte is a profile (mfp_profile_parse), the text after it, if
 * any, the options JSON (mfp_options_parse_json). A profile that parses is
 * planned, with the batch and the search's front kept small so each input
 * stays fast, and simulated; the planner's own self-verification failing
 * (MFP_ERR_INTERNAL) is a crash, as is a plan that breaks its summary. */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <memfit/plan.h>

#include "fuzz_util.h"

#define FUZZ_MAX_BATCH 256 /* the search's work grows with it: keep each input in milliseconds */
#define FUZZ_FRONT_CAP 64

/* Budgets from a few MiB (nothing fits) to the planner's 16 TiB limit. */
static const uint64_t budgets[] = {4ull << 20, 1ull << 30, 16ull << 30, 80ull << 30, 16ull << 40};

static void check_plan(const mfp_profile *p, const mfp_options *o, const mfp_plan_result *plan) {
  mfp_plan_summary s;
  FUZZ_CHECK(mfp_plan_get_summary(plan, &s) == MFP_OK, "summary: %s", mfp_last_error());
  FUZZ_CHECK(s.batch_size >= 1 && s.batch_size <= o->max_batch, "batch %lld, max %lld", (long long)s.batch_size,
             (long long)o->max_batch);
  FUZZ_CHECK(s.grad_accumulation_steps >= 1 && s.global_batch == s.batch_size * s.grad_accumulation_steps,
             "global batch %lld != %lld x %lld", (long long)s.global_batch, (long long)s.batch_size,
             (long long)s.grad_accumulation_steps);
  FUZZ_CHECK(s.usable_bytes <= s.budget_bytes, "usable %llu > budget %llu", (unsigned long long)s.usable_bytes,
             (unsigned long long)s.budget_bytes);
  FUZZ_CHECK(s.predicted_reserved_bytes >= 0 && (uint64_t)s.predicted_reserved_bytes <= s.usable_bytes,
             "predicted reserved %lld > usable %llu", (long long)s.predicted_reserved_bytes,
             (unsigned long long)s.usable_bytes);
  FUZZ_CHECK(s.headroom >= 0 && s.headroom < 1, "headroom %g", s.headroom);
  size_t n = mfp_plan_layer_count(plan);
  FUZZ_CHECK(n == mfp_profile_layer_count(p), "%zu plan layers, %zu profile layers", n, mfp_profile_layer_count(p));
  for (size_t i = 0; i < n; i++) {
    mfp_plan_layer layer;
    FUZZ_CHECK(mfp_plan_get_layer(plan, i, &layer) == MFP_OK, "layer %zu: %s", i, mfp_last_error());
    FUZZ_CHECK(layer.name && strcmp(layer.name, mfp_profile_layer_name(p, i)) == 0, "layer %zu's name", i);
    FUZZ_CHECK(mfp_profile_has_precision(p, layer.decision.precision), "layer %zu: precision %d not profiled", i,
               (int)layer.decision.precision);
  }
  mfp_simulation sim;
  FUZZ_CHECK(mfp_plan_get_simulation(plan, &sim) == MFP_OK, "simulation: %s", mfp_last_error());
  FUZZ_CHECK(sim.peak_bytes == s.predicted_peak_bytes, "simulated peak %lld, summary %lld", (long long)sim.peak_bytes,
             (long long)s.predicted_peak_bytes);
  char *json = NULL;
  FUZZ_CHECK(mfp_plan_to_json(plan, &json) == MFP_OK && json && json[0] == '{', "plan JSON: %s", mfp_last_error());
  mfp_free(json);
}

/* The simulator on its own: nothing and everything checkpointed, in the
 * first profiled precision, at batch 1 and at the largest batch. */
static void simulate_extremes(const mfp_profile *p, int64_t max_batch) {
  size_t n = mfp_profile_layer_count(p);
  mfp_decision *d = calloc(n ? n : 1, sizeof *d);
  FUZZ_CHECK(d, "out of host memory");
  mfp_precision first = MFP_FP32;
  while (!mfp_profile_has_precision(p, first)) first = (mfp_precision)(first + 1);
  for (int all = 0; all < 2; all++) {
    for (size_t i = 0; i < n; i++) d[i] = (mfp_decision){.checkpoint = all, .precision = first, false};
    const int64_t batches[] = {1, max_batch};
    for (int b = 0; b < 2; b++) {
      mfp_simulation sim;
      mfp_status st = mfp_simulate(p, batches[b], d, n, &sim);
      FUZZ_CHECK(st == MFP_OK, "mfp_simulate(batch %lld, %s): %s", (long long)batches[b],
                 all ? "all checkpointed" : "none", mfp_last_error());
      FUZZ_CHECK(sim.recompute_seconds >= 0 && sim.recompute_seconds <= sim.step_seconds + 1e-9 * sim.step_seconds,
                 "recompute %g s of a %g s step", sim.recompute_seconds, sim.step_seconds);
      FUZZ_CHECK(sim.peak_layer >= -1 && sim.peak_layer < (int32_t)n, "peak layer %d of %zu", sim.peak_layer, n);
    }
  }
  free(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = fuzz_text(data, size);
  if (!text) return 0;
  const char *options_text = fuzz_second_text(text, size);

  mfp_options o;
  bool options_ok = false;
  if (options_text) {
    mfp_status st = mfp_options_parse_json(options_text, &o);
    FUZZ_CHECK(st == MFP_OK || st == MFP_ERR_INVALID, "mfp_options_parse_json: %s", mfp_status_name(st));
    FUZZ_CHECK(st == MFP_OK || *mfp_last_error(), "mfp_options_parse_json failed with no message");
    options_ok = st == MFP_OK;
    if (!options_ok) FUZZ_SAY("options refused: %s\n", mfp_last_error());
  }
  if (!options_ok) {
    mfp_options_init(&o);
    o.budget_bytes = budgets[fuzz_hash(data, size) % (sizeof budgets / sizeof budgets[0])];
  }
  if (o.max_batch > FUZZ_MAX_BATCH) o.max_batch = FUZZ_MAX_BATCH;
  if (o.front_cap == 0 || o.front_cap > FUZZ_FRONT_CAP) o.front_cap = FUZZ_FRONT_CAP;
  if (o.objective == MFP_OBJECTIVE_GLOBAL_BATCH && o.global_batch > 4 * FUZZ_MAX_BATCH)
    o.global_batch = 4 * FUZZ_MAX_BATCH;

  mfp_profile *p = NULL;
  mfp_status st = mfp_profile_parse(text, &p);
  if (st != MFP_OK) {
    FUZZ_CHECK(st == MFP_ERR_PROFILE || st == MFP_ERR_HOST_MEMORY, "mfp_profile_parse: %s: %s", mfp_status_name(st),
               mfp_last_error());
    FUZZ_CHECK(!p && *mfp_last_error(), "a failed parse left a profile or no message");
    FUZZ_SAY("profile refused: %s\n", mfp_last_error());
    free(text);
    return 0;
  }
  size_t n = mfp_profile_layer_count(p);
  FUZZ_CHECK(n >= 1, "a profile with no layer parsed");
  for (size_t i = 0; i < n; i++) FUZZ_CHECK(mfp_profile_layer_name(p, i), "layer %zu has no name", i);
  FUZZ_CHECK(!mfp_profile_layer_name(p, n), "a layer name past the end");

  simulate_extremes(p, o.max_batch);
  mfp_plan_result *plan = NULL;
  st = mfp_plan(p, &o, &plan);
  FUZZ_CHECK(st != MFP_ERR_INTERNAL, "the planner's self-verification failed: %s", mfp_last_error());
  if (st == MFP_OK) {
    mfp_plan_summary summary;
    mfp_plan_get_summary(plan, &summary);
    FUZZ_SAY("planned (%s options): batch %lld x %lld, %zu layers\n", options_ok ? "given" : "default",
             (long long)summary.batch_size, (long long)summary.grad_accumulation_steps, n);
    check_plan(p, &o, plan);
    mfp_plan_free(plan);
  } else {
    FUZZ_CHECK(!plan && *mfp_last_error(), "mfp_plan failed (%s) with a plan or no message", mfp_status_name(st));
    FUZZ_SAY("not planned (%s options): %s\n", options_ok ? "given" : "default", mfp_last_error());
  }
  mfp_profile_free(p);
  free(text);
  return 0;
}
