/* plan_json.c — the plan as JSON (format "memfit-plan", version 1; keys in
 * planner/PLAN.md, "The plan"), and mfp_plan_json, the one call that goes from
 * profile and options text to plan text for Python's ctypes. */
#include <math.h>
#include <stdlib.h>

#include <jansson.h>

#include "internal.h"

/* Adds key: value, remembering a failure (NULL value: out of memory). */
static void put(json_t *obj, const char *key, json_t *value, bool *ok) {
  if (!value || json_object_set_new(obj, key, value) != 0) *ok = false;
}

/* JSON has no infinity: a step of zero seconds gives a null throughput. */
static json_t *real_or_null(double x) { return isfinite(x) ? json_real(x) : json_null(); }

/* A measured peak against the model's: the fields a self-check item, a
 * checkpoint-check item and a ladder-check item share. */
static json_t *peak_check_json(int64_t batch, mfp_precision precision, int64_t measured, int64_t predicted,
                               bool *ok) {
  json_t *item = json_object();
  if (!item) {
    *ok = false;
    return NULL;
  }
  put(item, "batch_size", json_integer(batch), ok);
  put(item, "precision", json_string(mfp_precision_name(precision)), ok);
  put(item, "measured", json_integer(measured), ok);
  put(item, "predicted", json_integer(predicted), ok);
  put(item, "error", json_real(fabs((double)(measured - predicted)) / (measured > 0 ? (double)measured : 1.0)), ok);
  return item;
}

static json_t *baseline_json(const _mfp_baseline *b, mfp_precision precision, bool *ok) {
  json_t *obj = json_object();
  if (!obj) {
    *ok = false;
    return NULL;
  }
  put(obj, "batch_size", json_integer(b->batch), ok);
  put(obj, "predicted_peak_bytes", json_integer(b->peak), ok);
  put(obj, "precision", json_string(mfp_precision_name(precision)), ok);
  return obj;
}

static json_t *plan_json(const mfp_plan_result *r, bool *ok) {
  const mfp_plan_summary *sm = &r->summary;
  const mfp_options *o = &r->opts;
  json_t *root = json_object();
  if (!root) {
    *ok = false;
    return NULL;
  }
  put(root, "format", json_string("memfit-plan"), ok);
  put(root, "version", json_integer(1), ok);
  put(root, "job", json_string(r->job), ok);
  put(root, "objective", json_string(mfp_objective_name(o->objective)), ok);
  put(root, "batch_size", json_integer(sm->batch_size), ok);
  put(root, "grad_accumulation_steps", json_integer(sm->grad_accumulation_steps), ok);
  put(root, "global_batch", json_integer(sm->global_batch), ok);
  put(root, "budget_bytes", json_integer((json_int_t)sm->budget_bytes), ok);
  put(root, "usable_bytes", json_integer((json_int_t)sm->usable_bytes), ok);
  put(root, "usable_allocated_bytes", json_integer((json_int_t)sm->usable_allocated_bytes), ok);
  put(root, "headroom", json_real(sm->headroom), ok);
  put(root, "headroom_rule", json_string(sm->headroom_auto ? "auto" : "option"), ok);
  json_t *reserve = json_object();
  if (reserve) {
    put(reserve, "granule_bytes", json_integer(sm->granule_bytes), ok);
    put(reserve, "overhead_bytes", json_integer(sm->reserve_overhead_bytes), ok);
    put(reserve, "ratio", json_real(sm->reserve_ratio), ok);
    put(reserve, "rule", json_string(sm->granule_bytes ? "allocated + overhead" : "max(allocated + overhead, allocated * ratio)"), ok);
  }
  put(root, "reserve_model", reserve, ok);
  json_t *precisions = json_array();
  for (int k = 0; precisions && k < o->precision_count; k++)
    if (json_array_append_new(precisions, json_string(mfp_precision_name(o->precisions[k]))) != 0) *ok = false;
  put(root, "precisions", precisions, ok);
  put(root, "max_batch", json_integer(o->max_batch), ok);

  put(root, "predicted_peak_bytes", json_integer(sm->predicted_peak_bytes), ok);
  put(root, "predicted_reserved_bytes", json_integer(sm->predicted_reserved_bytes), ok);
  json_t *breakdown = json_object();
  if (breakdown) {
    put(breakdown, "fixed_bytes", json_integer(r->sim.peak_fixed_bytes), ok);
    put(breakdown, "kept_bytes", json_integer(r->sim.peak_kept_bytes), ok);
    put(breakdown, "transient_bytes", json_integer(r->sim.peak_transient_bytes), ok);
    put(breakdown, "phase", json_string(mfp_phase_name(r->sim.peak_phase)), ok);
    put(breakdown, "layer", r->sim.peak_layer >= 0 ? json_string(r->layer_names[r->sim.peak_layer]) : json_null(), ok);
  }
  put(root, "predicted_breakdown", breakdown, ok);
  double step = sm->predicted_step_seconds, recompute = sm->predicted_recompute_seconds;
  put(root, "predicted_step_seconds", json_real(step), ok);
  put(root, "predicted_recompute_seconds", json_real(recompute), ok);
  put(root, "recompute_overhead_percent", json_real(step - recompute > 0 ? 100.0 * recompute / (step - recompute) : 0.0),
      ok);
  put(root, "throughput_samples_per_second", real_or_null(sm->throughput_samples_per_second), ok);

  put(root, "model_error", json_real(sm->model_error), ok);
  put(root, "model_error_reserved", json_real(sm->model_error_reserved), ok);
  put(root, "model_error_checkpoint", json_real(sm->model_error_checkpoint), ok);
  put(root, "checkpoint_correction_bytes", json_integer(sm->checkpoint_correction_bytes), ok);
  json_t *ckpt = json_array();
  for (size_t k = 0; ckpt && k < r->profile_checks_n; k++) {
    const _mfp_checkpoint_check *c = &r->profile_checks[k];
    json_t *item = peak_check_json(c->batch, c->precision, c->measured, c->predicted, ok);
    if (item) put(item, "checkpointed_layers", json_integer((json_int_t)c->n_checkpointed), ok);
    if (item) put(item, "selective_layers", json_integer((json_int_t)c->n_selective), ok);
    if (!item || json_array_append_new(ckpt, item) != 0) *ok = false;
  }
  put(root, "checkpoint_checks", ckpt, ok);
  put(root, "ladder_correction_bytes", json_integer(sm->ladder_correction_bytes), ok);
  json_t *ladder = json_array(); /* PLAN.md, "The ladder check" */
  for (size_t k = 0; ladder && k < r->n_timing; k++) {
    const _mfp_timing_point *t = &r->timing[k];
    if (t->measured_peak < 0) continue;
    json_t *item = peak_check_json(t->batch, t->precision, t->measured_peak, t->model_peak, ok);
    if (item) put(item, "mode", json_string(_mfp_mode_name(t->mode)), ok);
    if (!item || json_array_append_new(ladder, item) != 0) *ok = false;
  }
  put(root, "ladder_checks", ladder, ok);
  json_t *checks = json_array();
  for (size_t k = 0; checks && k < r->n_checks; k++) {
    const _mfp_self_check *c = &r->checks[k];
    json_t *item = peak_check_json(c->batch, c->precision, c->measured, c->predicted, ok);
    if (item) {
      put(item, "measured_reserved", json_integer(c->measured_reserved), ok);
      put(item, "predicted_reserved", json_integer(c->predicted_reserved), ok);
      put(item, "reserved_error", json_real(c->reserved_error), ok);
      put(item, "measured_step_seconds", json_real(c->measured_seconds), ok);
      put(item, "predicted_step_seconds", json_real(c->predicted_seconds), ok);
      put(item, "checkpointed", json_boolean(c->checkpointed), ok);
      put(item, "selective", json_boolean(c->selective), ok);
    }
    if (!item || json_array_append_new(checks, item) != 0) *ok = false;
  }
  put(root, "self_check", checks, ok);
  if (r->n_timing) { /* PLAN.md, "Step times" */
    json_t *timing = json_object();
    json_t *points = json_array();
    for (size_t k = 0; points && k < r->n_timing; k++) {
      const _mfp_timing_point *t = &r->timing[k];
      json_t *item = json_object();
      if (item) {
        put(item, "batch_size", json_integer(t->batch), ok);
        put(item, "precision", json_string(mfp_precision_name(t->precision)), ok);
        put(item, "mode", json_string(_mfp_mode_name(t->mode)), ok);
        put(item, "measured_step_seconds", json_real(t->seconds), ok);
        if (t->mode == MFP_MODE_KEEP) put(item, "traced_model_step_seconds", json_real(t->model_seconds), ok);
      }
      if (!item || json_array_append_new(points, item) != 0) *ok = false;
    }
    json_t *steps = json_object(); /* at the plan's batch, per allowed precision with points */
    for (int k = 0; steps && k < o->precision_count; k++)
      if (r->measured_step_seconds[o->precisions[k]] > 0)
        put(steps, mfp_precision_name(o->precisions[k]), json_real(r->measured_step_seconds[o->precisions[k]]), ok);
    if (timing) {
      put(timing, "points", points, ok);
      put(timing, "plain_step_seconds", steps, ok);
    } else {
      json_decref(points);
      json_decref(steps);
    }
    put(root, "time_calibration", timing, ok);
  }

  json_t *lr = json_object();
  if (lr) {
    put(lr, "value", json_real((double)sm->global_batch / (double)r->largest_profiled_batch), ok);
    put(lr, "rule", json_string("linear"), ok);
    put(lr, "suggestion", json_true(), ok);
  }
  put(root, "lr_scale", lr, ok);
  put(root, "exact", json_boolean(sm->exact), ok);
  put(root, "monotone", json_boolean(sm->monotone), ok);
  json_t *baselines = json_object();
  if (baselines) {
    put(baselines, "no_checkpoint", baseline_json(&r->no_checkpoint, o->precisions[0], ok), ok);
    put(baselines, "all_checkpoint", baseline_json(&r->all_checkpoint, o->precisions[0], ok), ok);
  }
  put(root, "baselines", baselines, ok);
  json_t *search = json_object();
  if (search) {
    put(search, "batches_evaluated", json_integer(sm->batches_evaluated), ok);
    put(search, "solver_runs", json_integer(sm->solver_runs), ok);
    put(search, "largest_front", json_integer(sm->largest_front), ok);
  }
  put(root, "search", search, ok);
  put(root, "planning_seconds", json_real(sm->planning_seconds), ok);

  json_t *layers = json_array();
  for (size_t i = 0; layers && i < r->n_layers; i++) {
    json_t *item = json_object();
    if (item) {
      put(item, "name", json_string(r->layer_names[i]), ok);
      put(item, "checkpoint", json_boolean(r->decisions[i].checkpoint), ok);
      put(item, "selective", json_boolean(r->decisions[i].checkpoint && r->decisions[i].selective), ok);
      put(item, "precision", json_string(mfp_precision_name(r->decisions[i].precision)), ok);
      put(item, "kept_bytes", json_integer(r->kept_bytes[i]), ok);
      put(item, "recompute_seconds", json_real(r->recompute_seconds[i]), ok);
    }
    if (!item || json_array_append_new(layers, item) != 0) *ok = false;
  }
  put(root, "layers", layers, ok);
  return root;
}

MFP_API mfp_status mfp_plan_to_json(const mfp_plan_result *plan, char **json) {
  if (!json) return _mfp_error(MFP_ERR_INVALID, "mfp_plan_to_json: json is NULL");
  *json = NULL;
  if (!plan) return _mfp_error(MFP_ERR_INVALID, "mfp_plan_to_json: plan is NULL");
  bool ok = true;
  json_t *root = plan_json(plan, &ok);
  if (root && ok) *json = json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(15));
  json_decref(root);
  if (!*json) return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory writing the plan JSON");
  return MFP_OK;
}

MFP_API mfp_status mfp_plan_json(const char *profile_json, const char *options_json, char **plan_json_out) {
  if (!plan_json_out) return _mfp_error(MFP_ERR_INVALID, "mfp_plan_json: plan_json is NULL");
  *plan_json_out = NULL;
  if (!profile_json || !options_json) return _mfp_error(MFP_ERR_INVALID, "mfp_plan_json: NULL argument");
  mfp_options opts;
  mfp_status s = mfp_options_parse_json(options_json, &opts);
  if (s != MFP_OK) return s;
  mfp_profile *profile;
  if ((s = mfp_profile_parse(profile_json, &profile)) != MFP_OK) return s;
  mfp_plan_result *plan;
  s = mfp_plan(profile, &opts, &plan);
  mfp_profile_free(profile);
  if (s != MFP_OK) return s;
  s = mfp_plan_to_json(plan, plan_json_out);
  mfp_plan_free(plan);
  return s;
}
