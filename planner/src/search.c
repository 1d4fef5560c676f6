/* search.c — mfp_plan: the search over batch sizes for each objective
 * (max-batch, throughput, global-batch) around the exact per-batch solver,
 * then the baselines, the self-check and the plan's figures. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "memfit/memfit.h"

/* The throughput objective evaluates every batch up to this one; above, the
 * grid of THROUGHPUT_DENSE then steps of THROUGHPUT_RATIO (PLAN.md, "Search"). */
#define THROUGHPUT_EVERY_BATCH 1024
#define THROUGHPUT_DENSE 256
#define THROUGHPUT_RATIO 1.01

typedef struct search {
  const mfp_profile *profile;
  const mfp_options *opts;
  int64_t usable;
  bool exact;
  int64_t batches_evaluated, solver_runs;
  size_t largest_front;
  mfp_decision *decisions; /* scratch, n_layers */
} search;

/* May a layer be selectively checkpointed: measured, and not turned off. */
static bool selective(const search *sr) { return sr->profile->measured_selective && !sr->opts->no_selective; }

/* The ladder check's correction at `batch` of a plan with a layer in `mode`
 * (PLAN.md, "The ladder check"). */
static int64_t ladder_correction(const search *sr, int64_t batch, _mfp_mode mode) {
  return _mfp_ladder_correction(sr->profile, sr->opts->precisions, sr->opts->precision_count, mode, batch);
}

/* The solver's request at `batch`: the usable bytes and what each kind of plan
 * keeps free beyond its model peak there. */
static _mfp_solve_request request_at(const search *sr, const _mfp_model *m, int64_t batch, bool timed) {
  _mfp_solve_request req = {m, sr->opts->precisions, sr->opts->precision_count, sr->usable, timed,
                            sr->opts->front_cap, {0}, _mfp_checkpoint_correction(sr->profile, batch), 0,
                            selective(sr)};
  for (int mode = 0; mode < MFP_MODE_COUNT; mode++) req.mode_correction[mode] = ladder_correction(sr, batch, mode);
  return req;
}

/* Runs the solver at one batch; res->decisions must be set by the caller. */
static mfp_status solve_at(search *sr, int64_t batch, bool timed, _mfp_solve_result *res) {
  _mfp_model m;
  mfp_status s = _mfp_model_eval(sr->profile, batch, &m);
  if (s != MFP_OK) return s;
  _mfp_solve_request req = request_at(sr, &m, batch, timed);
  s = _mfp_solve(&req, res);
  _mfp_model_free(&m);
  sr->batches_evaluated++;
  sr->solver_runs++;
  if (!res->exact) sr->exact = false;
  if (res->largest_front > sr->largest_front) sr->largest_front = res->largest_front;
  return s;
}

static mfp_status fits(search *sr, int64_t batch, bool *ok) {
  _mfp_solve_result res = {.decisions = sr->decisions};
  mfp_status s = solve_at(sr, batch, false, &res);
  *ok = res.found;
  return s;
}

/* From a batch `lo` that fits, the largest above it by doubling then bisection
 * (the first batch that fails bounds the search). */
static mfp_status grow(search *sr, int64_t lo, int64_t *out) {
  bool ok;
  mfp_status s;
  int64_t hi = 0, limit = sr->opts->max_batch; /* lo fits; hi (when > 0) does not */
  while (hi == 0 && lo < limit) {
    int64_t next = lo * 2 < limit ? lo * 2 : limit;
    if ((s = fits(sr, next, &ok)) != MFP_OK) return s;
    if (ok) lo = next;
    else hi = next;
  }
  if (hi == 0) hi = limit + 1;
  while (hi - lo > 1) {
    int64_t mid = lo + (hi - lo) / 2;
    if ((s = fits(sr, mid, &ok)) != MFP_OK) return s;
    if (ok) lo = mid;
    else hi = mid;
  }
  *out = lo;
  return MFP_OK;
}

/* The smallest batch of a measured ladder point above `batch`; 0 if none. */
static int64_t next_ladder_batch(const mfp_profile *p, int64_t batch) {
  int64_t next = 0;
  for (size_t k = 0; k < p->n_timing; k++) {
    const _mfp_timing_point *t = &p->timing[k];
    if (t->measured_peak >= 0 && t->batch > batch && (next == 0 || t->batch < next)) next = t->batch;
  }
  return next;
}

/* The largest batch in [1, max_batch] that fits; 0 when batch 1 does not.
 * Doubling then bisection, and then every ladder point above the result: the
 * ladder check corrects a batch at a measured point by that point's error and
 * between points by the larger relative error of the two (PLAN.md, "The ladder
 * check"), so a point can fit where the batches just below it do not, and
 * fitting is monotone only between points (even batch 1, below the first
 * point, may fail where a point fits). */
static mfp_status largest_batch(search *sr, int64_t *out) {
  bool ok;
  mfp_status s = fits(sr, 1, &ok);
  int64_t lo = 0;
  *out = 0;
  if (s != MFP_OK) return s;
  if (ok && (s = grow(sr, 1, &lo)) != MFP_OK) return s;
  for (int64_t p = next_ladder_batch(sr->profile, lo); p > 0 && p <= sr->opts->max_batch;
       p = next_ladder_batch(sr->profile, p)) {
    if ((s = fits(sr, p, &ok)) != MFP_OK) return s;
    if (ok && (s = grow(sr, p, &lo)) != MFP_OK) return s;
    if (ok) p = lo;
  }
  *out = lo;
  return MFP_OK;
}

typedef struct choice {
  int64_t batch;
  double step_seconds;
  bool found;
} choice;

/* The fastest plan at `batch` into best_decisions when its score beats
 * *best_score (lower is better): score = weight * step time. The bound
 * weight * (fastest time ignoring memory) skips batches that cannot win. */
static mfp_status consider(search *sr, int64_t batch, double weight, bool maximize, double *best_score,
                           choice *best, mfp_decision *best_decisions) {
  _mfp_model m;
  mfp_status s = _mfp_model_eval(sr->profile, batch, &m);
  if (s != MFP_OK) return s;
  sr->batches_evaluated++;
  double fastest;
  _mfp_fastest_plan(&m, sr->opts->precisions, sr->opts->precision_count, sr->decisions, &fastest);
  double bound = maximize ? weight / fastest : weight * fastest;
  bool may_win = !best->found || (maximize ? bound > *best_score : bound < *best_score);
  if (may_win) {
    _mfp_solve_request req = request_at(sr, &m, batch, true);
    _mfp_solve_result res = {.decisions = sr->decisions};
    s = _mfp_solve(&req, &res);
    sr->solver_runs++;
    if (!res.exact) sr->exact = false;
    if (res.largest_front > sr->largest_front) sr->largest_front = res.largest_front;
    if (s == MFP_OK && res.found) {
      double score = maximize ? weight / res.step_seconds : weight * res.step_seconds;
      if (!best->found || (maximize ? score > *best_score : score < *best_score)) {
        *best_score = score;
        *best = (choice){batch, res.step_seconds, true};
        memcpy(best_decisions, sr->decisions, sr->profile->n_layers * sizeof *best_decisions);
      }
    }
  }
  _mfp_model_free(&m);
  return s;
}

/* Batches the throughput objective tries, ascending, up to `largest`. */
static int64_t *throughput_batches(int64_t largest, size_t *count) {
  size_t cap = 64, n = 0;
  int64_t *list = malloc(cap * sizeof *list);
  for (int64_t b = 1; list && b <= largest;) {
    if (n == cap) {
      int64_t *grown = realloc(list, 2 * cap * sizeof *list);
      if (!grown) {
        free(list);
        return NULL;
      }
      list = grown;
      cap *= 2;
    }
    list[n++] = b;
    if (largest <= THROUGHPUT_EVERY_BATCH || b < THROUGHPUT_DENSE) {
      b++;
    } else {
      int64_t next = (int64_t)ceil((double)b * THROUGHPUT_RATIO);
      b = next > b ? next : b + 1;
      if (b > largest && list[n - 1] != largest) b = largest;
    }
  }
  *count = n;
  return list;
}

/* The largest batch a fixed plan (every layer alike) fits; peak at it, or at 1. */
static mfp_status baseline(search *sr, bool checkpoint, _mfp_baseline *out) {
  const mfp_profile *p = sr->profile;
  for (size_t i = 0; i < p->n_layers; i++) sr->decisions[i] = (mfp_decision){checkpoint, sr->opts->precisions[0], false};
  int64_t lo = 0, hi = 0, peak_lo = 0, peak_1 = 0, limit = sr->opts->max_batch;
  for (int64_t b = 1;;) {
    _mfp_model m;
    mfp_status s = _mfp_model_eval(p, b, &m);
    if (s != MFP_OK) return s;
    mfp_simulation sim;
    _mfp_model_simulate(&m, sr->decisions, &sim);
    int64_t keep_free = checkpoint ? ladder_correction(sr, b, MFP_MODE_CHECKPOINT) + _mfp_checkpoint_correction(p, b)
                                   : ladder_correction(sr, b, MFP_MODE_KEEP);
    bool ok = m.in_range && sim.peak_bytes <= sr->usable - keep_free;
    _mfp_model_free(&m);
    if (b == 1) peak_1 = sim.peak_bytes;
    if (ok) {
      lo = b;
      peak_lo = sim.peak_bytes;
    } else {
      hi = b;
    }
    if (hi == 0 && lo == limit) break;
    if (lo == 0 && hi > 0) break;
    if (hi == 0) b = lo * 2 < limit ? lo * 2 : limit;
    else if (hi - lo > 1) b = lo + (hi - lo) / 2;
    else break;
  }
  out->batch = lo;
  out->peak = lo ? peak_lo : peak_1;
  return MFP_OK;
}

/* Reserved bytes for an allocated peak: the profile's overhead on top and,
 * where the allocator mapped segments (whose waste grows with what they
 * hold), at least its largest reserved / allocated ratio. */
static int64_t reserved_for(const mfp_profile *p, int64_t allocated) {
  int64_t reserved = allocated + p->reserve_overhead;
  if (p->granule == 0) {
    double scaled = ceil((double)allocated * p->reserve_ratio);
    if (scaled > (double)reserved) reserved = (int64_t)scaled;
  }
  return reserved;
}

/* The largest allocated peak whose reserved bytes fit `usable`. */
static int64_t allocated_within(const mfp_profile *p, int64_t usable) {
  int64_t allocated = usable - p->reserve_overhead;
  if (p->granule == 0 && p->reserve_ratio > 1) {
    int64_t scaled = (int64_t)floor((double)usable / p->reserve_ratio);
    if (scaled < allocated) allocated = scaled;
  }
  /* The floor of a double quotient can round up: step down the byte or two
   * it is off by. (Stepping before taking the smaller bound walked down from
   * the ratio's bound byte by byte when the overhead left less: seconds to
   * hours in a profile whose overhead exceeds the usable bytes.) */
  while (allocated > 0 && reserved_for(p, allocated) > usable) allocated--;
  return allocated > 0 ? allocated : 0;
}

/* Each profiled run against the model's peak for it: the setting's (no layer
 * checkpointed) and, when the profile has them, its runs with every layer
 * checkpointed and every layer selectively checkpointed (PLAN.md, "Self-check"). */
static mfp_status self_check(const mfp_profile *p, mfp_plan_result *r, mfp_decision *scratch) {
  size_t runs = p->measured_selective ? 3 : p->measured_checkpoint ? 2 : 1;
  r->checks = calloc(p->n_settings * runs, sizeof *r->checks);
  if (!r->checks) return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory");
  r->n_checks = 0;
  double worst = 0, worst_reserved = 0;
  for (size_t k = 0; k < p->n_settings; k++) {
    const _mfp_setting *st = &p->settings[k];
    _mfp_model m;
    mfp_status s = _mfp_model_eval(p, st->batch, &m);
    if (s != MFP_OK) return s;
    for (size_t run = 0; run < runs; run++) {
      bool checkpointed = run >= 1, selective = run == 2;
      for (size_t i = 0; i < p->n_layers; i++) scratch[i] = (mfp_decision){checkpointed, st->precision, selective};
      mfp_simulation sim;
      _mfp_model_simulate(&m, scratch, &sim);
      int64_t measured_bytes = selective ? st->sel_peak_allocated
                               : checkpointed ? st->ckpt_peak_allocated : st->peak_allocated;
      int64_t measured_reserved_bytes = selective ? st->sel_peak_reserved
                                        : checkpointed ? st->ckpt_peak_reserved : st->peak_reserved;
      double measured_seconds = selective ? st->sel_step_seconds
                                : checkpointed ? st->ckpt_step_seconds : st->step_seconds;
      double measured = (double)measured_bytes;
      double error = fabs((double)sim.peak_bytes - measured) / (measured > 0 ? measured : 1.0);
      int64_t reserved = reserved_for(p, sim.peak_bytes);
      double measured_reserved = (double)measured_reserved_bytes;
      double reserved_error =
          fabs((double)reserved - measured_reserved) / (measured_reserved > 0 ? measured_reserved : 1.0);
      r->checks[r->n_checks++] = (_mfp_self_check){
          st->batch, st->precision, measured_bytes, sim.peak_bytes, error, measured_reserved_bytes, reserved,
          reserved_error, measured_seconds, sim.step_seconds, checkpointed, selective};
      if (error > worst) worst = error;
      if (reserved_error > worst_reserved) worst_reserved = reserved_error;
    }
    _mfp_model_free(&m);
  }
  r->summary.model_error = worst;
  r->summary.model_error_reserved = worst_reserved;
  return MFP_OK;
}

/* Nothing fits: say what even the leanest simple plan needs. */
static mfp_status nothing_fits(search *sr) {
  const mfp_profile *p = sr->profile;
  _mfp_model m;
  mfp_status s = _mfp_model_eval(p, 1, &m);
  if (s != MFP_OK) return s;
  int64_t best = INT64_MAX;
  mfp_precision cheapest = sr->opts->precisions[0];
  for (int k = 0; k < sr->opts->precision_count; k++) {
    for (size_t i = 0; i < p->n_layers; i++) sr->decisions[i] = (mfp_decision){true, sr->opts->precisions[k], false};
    mfp_simulation sim;
    _mfp_model_simulate(&m, sr->decisions, &sim);
    if (sim.peak_bytes < best) {
      best = sim.peak_bytes;
      cheapest = sr->opts->precisions[k];
    }
  }
  int64_t fixed = m.fixed;
  bool in_range = m.in_range;
  _mfp_model_free(&m);
  char need[32], usable[32], fixed_text[32];
  mf_format_bytes((double)best, need, sizeof need);
  mf_format_bytes((double)sr->usable, usable, sizeof usable);
  mf_format_bytes((double)fixed, fixed_text, sizeof fixed_text);
  if (!in_range)
    return _mfp_error(MFP_ERR_NO_FIT, "nothing fits: at batch 1 a term of the model is beyond 16 TiB");
  return _mfp_error(MFP_ERR_NO_FIT,
                    "nothing fits: even batch 1 with everything checkpointed in the cheapest precision (%s) needs "
                    "%s (%" PRId64 " bytes) allocated > the usable %s (%" PRId64 " bytes: the budget less the "
                    "headroom and the reserve model; fixed bytes alone: %s)",
                    mfp_precision_name(cheapest), need, best, usable, sr->usable, fixed_text);
}

static void plan_result_free(mfp_plan_result *r) {
  if (!r) return;
  if (r->layer_names)
    for (size_t i = 0; i < r->n_layers; i++) free(r->layer_names[i]);
  free(r->layer_names);
  free(r->decisions);
  free(r->kept_bytes);
  free(r->recompute_seconds);
  free(r->job);
  free(r->checks);
  free(r->profile_checks);
  free(r->timing);
  free(r);
}

MFP_API void mfp_plan_free(mfp_plan_result *plan) { plan_result_free(plan); }

static char *copy_string(const char *s) {
  size_t n = strlen(s) + 1;
  char *c = malloc(n);
  if (c) memcpy(c, s, n);
  return c;
}

/* The plan's figures at the chosen batch and decisions. */
static mfp_status finish(const mfp_profile *p, mfp_plan_result *r, int64_t batch, int64_t steps) {
  _mfp_model m;
  mfp_status s = _mfp_model_eval(p, batch, &m);
  if (s != MFP_OK) return s;
  _mfp_model_simulate(&m, r->decisions, &r->sim);
  for (int k = 0; k < MFP_PRECISION_COUNT; k++) r->measured_step_seconds[k] = m.measured_step_seconds[k];
  for (size_t i = 0; i < p->n_layers; i++) {
    const _mfp_layer_terms *t = &m.layer[r->decisions[i].precision][i];
    switch (_mfp_decision_mode(&r->decisions[i])) {
      case MFP_MODE_SELECTIVE: r->kept_bytes[i] = t->skept, r->recompute_seconds[i] = t->srt; break;
      case MFP_MODE_CHECKPOINT: r->kept_bytes[i] = t->ckept, r->recompute_seconds[i] = t->crt; break;
      default: r->kept_bytes[i] = t->kept, r->recompute_seconds[i] = 0.0; break;
    }
    if (!(r->layer_names[i] = copy_string(p->layer_names[i]))) s = MFP_ERR_HOST_MEMORY;
  }
  _mfp_model_free(&m);
  if (s != MFP_OK || !(r->job = copy_string(p->job))) return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory");
  mfp_plan_summary *sm = &r->summary;
  sm->batch_size = batch;
  sm->grad_accumulation_steps = steps;
  sm->global_batch = batch * steps;
  sm->predicted_peak_bytes = r->sim.peak_bytes;
  sm->predicted_step_seconds = r->sim.step_seconds;
  sm->predicted_recompute_seconds = r->sim.recompute_seconds;
  sm->throughput_samples_per_second = r->sim.step_seconds > 0 ? (double)batch / r->sim.step_seconds : INFINITY;
  r->largest_profiled_batch = p->largest_batch;
  return MFP_OK;
}

static mfp_status run(const mfp_profile *p, search *sr, mfp_plan_result *r) {
  const mfp_options *o = sr->opts;
  int64_t largest;
  mfp_status s = largest_batch(sr, &largest);
  if (s != MFP_OK) return s;
  if (largest == 0) return nothing_fits(sr);

  int64_t batch = largest, steps = 1;
  if (o->objective == MFP_OBJECTIVE_MAX_BATCH) {
    _mfp_solve_result res = {.decisions = r->decisions};
    if ((s = solve_at(sr, largest, true, &res)) != MFP_OK) return s;
    if (!res.found) return _mfp_error(MFP_ERR_INTERNAL, "batch %" PRId64 " fit, then found no plan", largest);
  } else {
    /* Larger batches first: with ties the larger batch wins (fewer steps). */
    choice best = {0};
    double score = 0;
    if (o->objective == MFP_OBJECTIVE_THROUGHPUT) {
      size_t count;
      int64_t *batches = throughput_batches(largest, &count);
      if (!batches) return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory");
      for (size_t k = count; k-- > 0 && s == MFP_OK;)
        s = consider(sr, batches[k], (double)batches[k], true, &score, &best, r->decisions);
      free(batches);
    } else {
      int64_t n = o->global_batch;
      for (int64_t micro = largest < n ? largest : n; micro >= 1 && s == MFP_OK; micro--)
        if (n % micro == 0) s = consider(sr, micro, (double)(n / micro), false, &score, &best, r->decisions);
    }
    if (s != MFP_OK) return s;
    if (!best.found) return nothing_fits(sr);
    batch = best.batch;
    if (o->objective == MFP_OBJECTIVE_GLOBAL_BATCH) steps = o->global_batch / batch;
  }
  if ((s = finish(p, r, batch, steps)) != MFP_OK) return s;
  if ((s = baseline(sr, false, &r->no_checkpoint)) != MFP_OK) return s;
  return baseline(sr, true, &r->all_checkpoint);
}

MFP_API mfp_status mfp_plan(const mfp_profile *profile, const mfp_options *opts, mfp_plan_result **out) {
  double started = _mfp_now_seconds();
  if (!out) return _mfp_error(MFP_ERR_INVALID, "mfp_plan: out is NULL");
  *out = NULL;
  if (!profile || !opts) return _mfp_error(MFP_ERR_INVALID, "mfp_plan: NULL argument");
  mfp_plan_result *r = calloc(1, sizeof *r);
  if (!r) return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory");
  mfp_status s = _mfp_options_resolve(profile, opts, &r->opts);
  if (s != MFP_OK) {
    plan_result_free(r);
    return s;
  }
  size_t n = profile->n_layers;
  r->n_layers = n;
  r->layer_names = calloc(n, sizeof *r->layer_names);
  r->decisions = calloc(n, sizeof *r->decisions);
  r->kept_bytes = calloc(n, sizeof *r->kept_bytes);
  r->recompute_seconds = calloc(n, sizeof *r->recompute_seconds);
  search sr = {profile, &r->opts, 0, true, 0, 0, 0, calloc(n, sizeof(mfp_decision))};
  if (!r->layer_names || !r->decisions || !r->kept_bytes || !r->recompute_seconds || !sr.decisions) {
    free(sr.decisions);
    plan_result_free(r);
    return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory");
  }
  /* The self-check first: the automatic headroom is derived from its error. */
  s = self_check(profile, r, sr.decisions);
  mfp_plan_summary *sm = &r->summary;
  sm->headroom_auto = r->opts.headroom < 0;
  if (sm->headroom_auto)
    r->opts.headroom = (profile->granule ? MFP_HEADROOM_FLOOR : MFP_HEADROOM_FLOOR_SEGMENTS) + sm->model_error;
  if (s == MFP_OK && !(r->opts.headroom < 1))
    s = _mfp_error(MFP_ERR_PROFILE, "the model's self-check error (%.1f%%) leaves no budget: the profile does not "
                   "describe its own peaks", 100 * sm->model_error);
  /* Exact: budget <= 2^44 is exact in a double. */
  int64_t usable = (int64_t)floor((double)r->opts.budget_bytes * (1.0 - r->opts.headroom));
  sr.usable = allocated_within(profile, usable);
  if (s == MFP_OK) s = run(profile, &sr, r);
  free(sr.decisions);
  if (s != MFP_OK) {
    plan_result_free(r);
    return s;
  }
  sm->size = sizeof *sm;
  sm->version = MFP_STRUCT_VERSION;
  sm->budget_bytes = r->opts.budget_bytes;
  sm->usable_bytes = (uint64_t)usable;
  sm->usable_allocated_bytes = (uint64_t)sr.usable;
  sm->headroom = r->opts.headroom;
  bool checkpoints = false;
  for (size_t i = 0; i < profile->n_layers; i++) checkpoints |= r->decisions[i].checkpoint;
  sm->checkpoint_correction_bytes = checkpoints ? _mfp_checkpoint_correction(profile, sm->batch_size) : 0;
  bool used[MFP_MODE_COUNT] = {false};
  for (size_t i = 0; i < profile->n_layers; i++)
    used[!r->decisions[i].checkpoint ? MFP_MODE_KEEP : r->decisions[i].selective ? MFP_MODE_SELECTIVE
                                                                                 : MFP_MODE_CHECKPOINT] = true;
  sm->ladder_correction_bytes = 0;
  for (int mode = 0; sm->batch_size && mode < MFP_MODE_COUNT; mode++) {
    int64_t c = used[mode] ? ladder_correction(&sr, sm->batch_size, mode) : 0;
    if (c > sm->ladder_correction_bytes) sm->ladder_correction_bytes = c;
  }
  sm->predicted_reserved_bytes = reserved_for(
      profile, sm->predicted_peak_bytes + sm->checkpoint_correction_bytes + sm->ladder_correction_bytes);
  sm->model_error_checkpoint = 0;
  if (profile->n_checks && (r->profile_checks = malloc(profile->n_checks * sizeof *r->profile_checks))) {
    memcpy(r->profile_checks, profile->checks, profile->n_checks * sizeof *r->profile_checks);
    for (size_t k = 0; k < profile->n_checks; k++) /* the profile's */
      r->profile_checks[k].checkpointed = r->profile_checks[k].selective = NULL;
    r->profile_checks_n = profile->n_checks;
  }
  if (profile->n_timing && (r->timing = malloc(profile->n_timing * sizeof *r->timing))) {
    memcpy(r->timing, profile->timing, profile->n_timing * sizeof *r->timing);
    r->n_timing = profile->n_timing;
  }
  for (size_t k = 0; k < profile->n_checks; k++) {
    const _mfp_checkpoint_check *c = &profile->checks[k];
    double e = fabs((double)(c->measured - c->predicted)) / (c->measured > 0 ? (double)c->measured : 1.0);
    if (e > sm->model_error_checkpoint) sm->model_error_checkpoint = e;
  }
  sm->reserve_overhead_bytes = profile->reserve_overhead;
  sm->reserve_ratio = profile->reserve_ratio;
  sm->granule_bytes = profile->granule;
  sm->exact = sr.exact;
  sm->no_checkpoint_batch = r->no_checkpoint.batch;
  sm->no_checkpoint_peak_bytes = r->no_checkpoint.peak;
  sm->all_checkpoint_batch = r->all_checkpoint.batch;
  sm->all_checkpoint_peak_bytes = r->all_checkpoint.peak;
  sm->baseline_precision = r->opts.precisions[0];
  sm->monotone = _mfp_model_monotone(profile, r->opts.precisions, r->opts.precision_count);
  sm->batches_evaluated = sr.batches_evaluated;
  sm->solver_runs = sr.solver_runs;
  sm->largest_front = (int64_t)sr.largest_front;
  sm->planning_seconds = _mfp_now_seconds() - started;
  _mfp_clear_error();
  *out = r;
  return MFP_OK;
}

MFP_API mfp_status mfp_plan_get_summary(const mfp_plan_result *plan, mfp_plan_summary *out) {
  if (!plan || !out) return _mfp_error(MFP_ERR_INVALID, "mfp_plan_get_summary: NULL argument");
  *out = plan->summary;
  return MFP_OK;
}

MFP_API size_t mfp_plan_layer_count(const mfp_plan_result *plan) { return plan ? plan->n_layers : 0; }

MFP_API mfp_status mfp_plan_get_layer(const mfp_plan_result *plan, size_t i, mfp_plan_layer *out) {
  if (!plan || !out) return _mfp_error(MFP_ERR_INVALID, "mfp_plan_get_layer: NULL argument");
  if (i >= plan->n_layers)
    return _mfp_error(MFP_ERR_INVALID, "mfp_plan_get_layer: layer %zu of %zu", i, plan->n_layers);
  *out = (mfp_plan_layer){plan->layer_names[i], plan->decisions[i], plan->kept_bytes[i], plan->recompute_seconds[i]};
  return MFP_OK;
}

MFP_API mfp_status mfp_plan_get_simulation(const mfp_plan_result *plan, mfp_simulation *out) {
  if (!plan || !out) return _mfp_error(MFP_ERR_INVALID, "mfp_plan_get_simulation: NULL argument");
  *out = plan->sim;
  return MFP_OK;
}
