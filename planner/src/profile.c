/* profile.c — reads a profile (planner/PROFILE.md) with jansson, checks every
 * documented field, its type and the windows' bookkeeping, names the JSON path
 * of anything wrong, and keeps what the model fits (then calls fit.c). */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "internal.h"

#define PATH_LEN 256

const char *_mfp_json_type_name(const json_t *v) {
  switch (json_typeof(v)) {
  case JSON_OBJECT: return "an object";
  case JSON_ARRAY: return "a list";
  case JSON_STRING: return "a string";
  case JSON_INTEGER: return "an integer";
  case JSON_REAL: return "a number with a fraction";
  case JSON_TRUE:
  case JSON_FALSE: return "a boolean";
  case JSON_NULL: return "null";
  }
  return "something else";
}

static void join(char *out, const char *path, const char *key) {
  if (path[0]) snprintf(out, PATH_LEN, "%s.%s", path, key);
  else snprintf(out, PATH_LEN, "%s", key);
}

static mfp_status field(const json_t *obj, const char *path, const char *key, json_t **out) {
  *out = json_object_get(obj, key);
  if (*out) return MFP_OK;
  char at[PATH_LEN];
  join(at, path, key);
  return _mfp_error(MFP_ERR_PROFILE, "%s: missing", at);
}

static mfp_status typed(const json_t *obj, const char *path, const char *key, json_type want,
                        const char *want_name, json_t **out) {
  mfp_status s = field(obj, path, key, out);
  if (s != MFP_OK) return s;
  if (json_typeof(*out) == want) return MFP_OK;
  char at[PATH_LEN];
  join(at, path, key);
  return _mfp_error(MFP_ERR_PROFILE, "%s: expected %s, got %s", at, want_name, _mfp_json_type_name(*out));
}

static mfp_status get_string(const json_t *obj, const char *path, const char *key, const char **out) {
  json_t *v;
  mfp_status s = typed(obj, path, key, JSON_STRING, "a string", &v);
  if (s == MFP_OK) *out = json_string_value(v);
  return s;
}

static mfp_status get_int(const json_t *obj, const char *path, const char *key, int64_t min, int64_t *out) {
  json_t *v;
  mfp_status s = typed(obj, path, key, JSON_INTEGER, "an integer", &v);
  if (s != MFP_OK) return s;
  json_int_t n = json_integer_value(v);
  char at[PATH_LEN];
  join(at, path, key);
  if (n < min) return _mfp_error(MFP_ERR_PROFILE, "%s: must be >= %" PRId64 ", got %lld", at, min, (long long)n);
  if (n > MFP_MAX_PROFILE_BYTES)
    return _mfp_error(MFP_ERR_PROFILE, "%s: %lld is too large (the limit is 2^53)", at, (long long)n);
  *out = (int64_t)n;
  return MFP_OK;
}

static mfp_status get_seconds(const json_t *obj, const char *path, const char *key, double *out) {
  json_t *v;
  mfp_status s = field(obj, path, key, &v);
  if (s != MFP_OK) return s;
  char at[PATH_LEN];
  join(at, path, key);
  if (!json_is_number(v)) return _mfp_error(MFP_ERR_PROFILE, "%s: expected a number, got %s", at, _mfp_json_type_name(v));
  double x = json_number_value(v);
  if (!isfinite(x) || x < 0) return _mfp_error(MFP_ERR_PROFILE, "%s: must be a finite number >= 0, got %g", at, x);
  /* Sums of times must stay finite (a fit through 1e308 s gives inf - inf). */
  if (x > MFP_MAX_SECONDS)
    return _mfp_error(MFP_ERR_PROFILE, "%s: %g s is not a measured time (at most %g s)", at, x, MFP_MAX_SECONDS);
  *out = x;
  return MFP_OK;
}

typedef struct window {
  int64_t start, peak, end;
} window;

static mfp_status get_window(const json_t *obj, const char *path, const char *key, window *w) {
  json_t *v;
  mfp_status s = typed(obj, path, key, JSON_OBJECT, "an object {start, peak, end}", &v);
  if (s != MFP_OK) return s;
  char at[PATH_LEN];
  join(at, path, key);
  if ((s = get_int(v, at, "start", 0, &w->start)) != MFP_OK) return s;
  if ((s = get_int(v, at, "peak", 0, &w->peak)) != MFP_OK) return s;
  if ((s = get_int(v, at, "end", 0, &w->end)) != MFP_OK) return s;
  if (w->peak < w->start)
    return _mfp_error(MFP_ERR_PROFILE, "%s.peak: %" PRId64 " is below start %" PRId64, at, w->peak, w->start);
  if (w->peak < w->end)
    return _mfp_error(MFP_ERR_PROFILE, "%s.peak: %" PRId64 " is below end %" PRId64, at, w->peak, w->end);
  return MFP_OK;
}

/* Windows are contiguous (PROFILE.md): each one starts where the previous ended. */
static mfp_status check_follows(const char *path, const char *what, int64_t start, int64_t previous_end,
                                const char *previous) {
  if (start == previous_end) return MFP_OK;
  return _mfp_error(MFP_ERR_PROFILE, "%s.%s.start: %" PRId64 " is not where the previous window ended (%s: %" PRId64 ")",
                    path, what, start, previous, previous_end);
}

static mfp_status get_totals(const json_t *obj, const char *path, const char *key) {
  static const char *categories[] = {"parameter", "gradient", "optimizer_state", "activation",
                                     "temporary", "input", "other"};
  json_t *v;
  mfp_status s = typed(obj, path, key, JSON_OBJECT, "an object", &v);
  if (s != MFP_OK) return s;
  char at[PATH_LEN];
  join(at, path, key);
  int64_t ignored;
  for (size_t i = 0; i < sizeof categories / sizeof categories[0]; i++)
    if ((s = get_int(v, at, categories[i], 0, &ignored)) != MFP_OK) return s;
  return MFP_OK;
}

static mfp_status parse_precision(const json_t *obj, const char *path, mfp_precision *out) {
  const char *name;
  mfp_status s = get_string(obj, path, "precision", &name);
  if (s != MFP_OK) return s;
  for (int p = 0; p < MFP_PRECISION_COUNT; p++)
    if (strcmp(name, mfp_precision_name((mfp_precision)p)) == 0) {
      *out = (mfp_precision)p;
      return MFP_OK;
    }
  return _mfp_error(MFP_ERR_PROFILE, "%s.precision: expected \"fp32\", \"bf16\" or \"fp16\", got \"%s\"", path, name);
}

static char *copy_string(const char *s) {
  size_t n = strlen(s) + 1;
  char *c = malloc(n);
  if (c) memcpy(c, s, n);
  return c;
}

/* The optional "output_held_bytes" of a layer in one run; absent: noted. */
static mfp_status get_held(const json_t *layer, const char *path, _mfp_setting *st, double *out) {
  *out = 0;
  if (!json_object_get(layer, "output_held_bytes")) {
    st->held_missing = true;
    return MFP_OK;
  }
  int64_t held;
  mfp_status s = get_int(layer, path, "output_held_bytes", 0, &held);
  if (s == MFP_OK) *out = (double)held;
  return s;
}

static mfp_status parse_layer(const json_t *layer, const char *path, size_t i, _mfp_setting *st,
                              window *fwd, window *bwd) {
  mfp_status s;
  const char *text;
  int64_t ignored, out_bytes;
  if ((s = get_string(layer, path, "name", &text)) != MFP_OK) return s;
  if (!text[0]) return _mfp_error(MFP_ERR_PROFILE, "%s.name: empty (the root module is not a layer)", path);
  if ((s = get_string(layer, path, "type", &text)) != MFP_OK) return s;
  static const char *counts[] = {"parameter_bytes", "gradient_bytes", "optimizer_state_bytes",
                                 "activation_bytes", "output_bytes", "forward_temporary_peak_bytes",
                                 "backward_temporary_peak_bytes"};
  for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++)
    if ((s = get_int(layer, path, counts[k], 0, &ignored)) != MFP_OK) return s;
  if ((s = get_int(layer, path, "output_allocated_bytes", 0, &out_bytes)) != MFP_OK) return s;
  double *v = st->layer_values + i * MFP_LAYER_TERMS;
  if ((s = get_held(layer, path, st, &v[MFP_T_HELD])) != MFP_OK) return s;
  if ((s = get_seconds(layer, path, "forward_seconds", &v[MFP_T_TF])) != MFP_OK) return s;
  if ((s = get_seconds(layer, path, "backward_seconds", &v[MFP_T_TB])) != MFP_OK) return s;
  if ((s = get_window(layer, path, "forward", fwd)) != MFP_OK) return s;
  if ((s = get_window(layer, path, "backward", bwd)) != MFP_OK) return s;
  v[MFP_T_FPK] = (double)(fwd->peak - fwd->start);
  v[MFP_T_KEPT] = (double)(fwd->end - fwd->start);
  v[MFP_T_OUT] = (double)out_bytes;
  v[MFP_T_BPK] = (double)(bwd->peak - bwd->start);
  v[MFP_T_BD] = (double)(bwd->end - bwd->start);
  return MFP_OK;
}

/* The windows' chain of one run: forward 1..n, loss, loss_backward, backward
 * n..1, optimizer, each starting where the previous ended, the first at fixed. */
static mfp_status check_chain(const char *path, size_t n, const window *fwd, const window *bwd, const window *loss,
                              const window *loss_backward, const window *optimizer, int64_t fixed) {
  mfp_status s = MFP_OK;
  char at[PATH_LEN];
  char prev[64];
  for (size_t i = 0; i < n && s == MFP_OK; i++) {
    snprintf(at, sizeof at, "%.200s.layers[%zu]", path, i);
    if (i == 0) s = check_follows(at, "forward", fwd[0].start, fixed, "fixed_bytes");
    else {
      snprintf(prev, sizeof prev, "layers[%zu].forward.end", i - 1);
      s = check_follows(at, "forward", fwd[i].start, fwd[i - 1].end, prev);
    }
  }
  if (s == MFP_OK) {
    snprintf(prev, sizeof prev, "layers[%zu].forward.end", n - 1);
    s = check_follows(path, "loss", loss->start, fwd[n - 1].end, prev);
  }
  if (s == MFP_OK) s = check_follows(path, "loss_backward", loss_backward->start, loss->end, "loss.end");
  for (size_t i = n; i-- > 0 && s == MFP_OK;) {
    snprintf(at, sizeof at, "%.200s.layers[%zu]", path, i);
    if (i == n - 1) s = check_follows(at, "backward", bwd[i].start, loss_backward->end, "loss_backward.end");
    else {
      snprintf(prev, sizeof prev, "layers[%zu].backward.end", i + 1);
      s = check_follows(at, "backward", bwd[i].start, bwd[i + 1].end, prev);
    }
  }
  if (s == MFP_OK) s = check_follows(path, "optimizer", optimizer->start, bwd[0].end, "layers[0].backward.end");
  return s;
}

/* The layers of setting `index`; the first setting names them, the others
 * must name the same layers in the same order. */
static mfp_status parse_layers(mfp_profile *p, const json_t *setting, const char *path, size_t index,
                               _mfp_setting *st, const window *loss, const window *loss_backward,
                               const window *optimizer, int64_t fixed) {
  json_t *layers;
  mfp_status s = typed(setting, path, "layers", JSON_ARRAY, "a list", &layers);
  if (s != MFP_OK) return s;
  size_t n = json_array_size(layers);
  if (n == 0) return _mfp_error(MFP_ERR_PROFILE, "%s.layers: empty (a model has at least one layer)", path);
  if (n > MFP_MAX_LAYERS)
    return _mfp_error(MFP_ERR_PROFILE, "%s.layers: %zu layers, more than the planner's limit of %d", path, n,
                      MFP_MAX_LAYERS);
  if (index == 0) {
    p->n_layers = n;
    p->layer_names = calloc(n, sizeof *p->layer_names);
    if (!p->layer_names) return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory reading the profile");
  } else if (n != p->n_layers) {
    return _mfp_error(MFP_ERR_PROFILE, "%s.layers: %zu layers, but settings[0] has %zu (every setting must list the same layers)",
                      path, n, p->n_layers);
  }
  st->layer_values = calloc(n * MFP_LAYER_TERMS, sizeof *st->layer_values);
  window *fwd = malloc(n * sizeof *fwd), *bwd = malloc(n * sizeof *bwd);
  if (!st->layer_values || !fwd || !bwd) {
    free(fwd);
    free(bwd);
    return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory reading the profile");
  }
  char at[PATH_LEN];
  for (size_t i = 0; i < n && s == MFP_OK; i++) {
    snprintf(at, sizeof at, "%.200s.layers[%zu]", path, i);
    json_t *layer = json_array_get(layers, i);
    if (!json_is_object(layer)) {
      s = _mfp_error(MFP_ERR_PROFILE, "%s: expected an object, got %s", at, _mfp_json_type_name(layer));
      break;
    }
    s = parse_layer(layer, at, i, st, &fwd[i], &bwd[i]);
    if (s != MFP_OK) break;
    const char *name = json_string_value(json_object_get(layer, "name"));
    if (index == 0) {
      if (!(p->layer_names[i] = copy_string(name)))
        s = _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory reading the profile");
    } else if (strcmp(name, p->layer_names[i]) != 0) {
      s = _mfp_error(MFP_ERR_PROFILE, "%s.name: \"%s\", but settings[0].layers[%zu] is \"%s\" (every setting must list the same layers in the same order)",
                     at, name, i, p->layer_names[i]);
    }
  }
  if (s == MFP_OK) s = check_chain(path, n, fwd, bwd, loss, loss_backward, optimizer, fixed);
  free(fwd);
  free(bwd);
  return s;
}

/* Where one of a setting's optional runs (PROFILE.md) goes: "checkpointed"
 * (every layer checkpointed) or "selective" (every layer selectively
 * checkpointed), each traced like the setting itself. */
typedef struct run_spec {
  const char *key;
  _mfp_mode mode;    /* its loss windows become the step terms of this mode of the last layer */
  size_t first_term; /* MFP_T_CFPK or MFP_T_SFPK: its six terms follow in MFP_RUN_* order */
  int64_t *peak_allocated, *peak_reserved;
  double *step_seconds;
} run_spec;

/* One optional run of a setting. Its layers are the setting's, in the same
 * order, and its windows form their own chain. Absent: *peak_allocated stays -1. */
static mfp_status parse_run(const mfp_profile *p, const json_t *setting, const char *setting_path, _mfp_setting *st,
                            const run_spec *run) {
  *run->peak_allocated = -1;
  json_t *c = json_object_get(setting, run->key);
  if (!c) return MFP_OK;
  char path[PATH_LEN];
  snprintf(path, sizeof path, "%.200s.%s", setting_path, run->key);
  if (!json_is_object(c))
    return _mfp_error(MFP_ERR_PROFILE, "%s: expected an object, got %s", path, _mfp_json_type_name(c));
  mfp_status s;
  int64_t fixed, allocated, reserved;
  if ((s = get_int(c, path, "peak_allocated_bytes", 0, &allocated)) != MFP_OK) return s;
  if ((s = get_int(c, path, "peak_reserved_bytes", 0, &reserved)) != MFP_OK) return s;
  if (reserved < allocated)
    return _mfp_error(MFP_ERR_PROFILE, "%s.peak_reserved_bytes: %" PRId64 " is below peak_allocated_bytes (%" PRId64
                      "): reserved memory holds every allocated block", path, reserved, allocated);
  if ((s = get_seconds(c, path, "step_seconds", run->step_seconds)) != MFP_OK) return s;
  if ((s = get_int(c, path, "fixed_bytes", 0, &fixed)) != MFP_OK) return s;
  window loss, loss_backward, optimizer;
  if ((s = get_window(c, path, "loss", &loss)) != MFP_OK) return s;
  if ((s = get_window(c, path, "loss_backward", &loss_backward)) != MFP_OK) return s;
  if ((s = get_window(c, path, "optimizer", &optimizer)) != MFP_OK) return s;
  json_t *layers;
  if ((s = typed(c, path, "layers", JSON_ARRAY, "a list", &layers)) != MFP_OK) return s;
  size_t n = json_array_size(layers);
  if (n != p->n_layers)
    return _mfp_error(MFP_ERR_PROFILE, "%s.layers: %zu layers, but the setting has %zu (the same layers, %s)",
                      path, n, p->n_layers, run->key);
  window *fwd = malloc(n * sizeof *fwd), *bwd = malloc(n * sizeof *bwd);
  if (!fwd || !bwd) {
    free(fwd);
    free(bwd);
    return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory reading the profile");
  }
  char at[PATH_LEN];
  for (size_t i = 0; i < n && s == MFP_OK; i++) {
    snprintf(at, sizeof at, "%.200s.layers[%zu]", path, i);
    json_t *layer = json_array_get(layers, i);
    const char *name;
    double *v = st->layer_values + i * MFP_LAYER_TERMS + run->first_term;
    if (!json_is_object(layer)) {
      s = _mfp_error(MFP_ERR_PROFILE, "%s: expected an object, got %s", at, _mfp_json_type_name(layer));
      break;
    }
    if ((s = get_string(layer, at, "name", &name)) != MFP_OK) break;
    if (strcmp(name, p->layer_names[i]) != 0) {
      s = _mfp_error(MFP_ERR_PROFILE, "%s.name: \"%s\", but the setting's layers[%zu] is \"%s\"", at, name, i,
                     p->layer_names[i]);
      break;
    }
    if ((s = get_seconds(layer, at, "forward_seconds", &v[MFP_RUN_TF])) != MFP_OK) break;
    if ((s = get_seconds(layer, at, "backward_seconds", &v[MFP_RUN_TB])) != MFP_OK) break;
    if ((s = get_held(layer, at, st, &v[MFP_RUN_HELD])) != MFP_OK) break;
    if ((s = get_window(layer, at, "forward", &fwd[i])) != MFP_OK) break;
    if ((s = get_window(layer, at, "backward", &bwd[i])) != MFP_OK) break;
    v[MFP_RUN_FPK] = (double)(fwd[i].peak - fwd[i].start);
    v[MFP_RUN_KEPT] = (double)(fwd[i].end - fwd[i].start);
    v[MFP_RUN_BPK] = (double)(bwd[i].peak - bwd[i].start);
    v[MFP_RUN_BD] = (double)(bwd[i].end - bwd[i].start);
  }
  if (s == MFP_OK) s = check_chain(path, n, fwd, bwd, &loss, &loss_backward, &optimizer, fixed);
  free(fwd);
  free(bwd);
  if (s != MFP_OK) return s;
  double *step = st->step_values[run->mode];
  step[MFP_S_LPK] = (double)(loss.peak - loss.start);
  step[MFP_S_LD] = (double)(loss.end - loss.start);
  step[MFP_S_LBPK] = (double)(loss_backward.peak - loss_backward.start);
  step[MFP_S_LBD] = (double)(loss_backward.end - loss_backward.start);
  *run->peak_allocated = allocated;
  *run->peak_reserved = reserved;
  return MFP_OK;
}

static mfp_status parse_setting(mfp_profile *p, const json_t *setting, size_t index) {
  char path[PATH_LEN];
  snprintf(path, sizeof path, "settings[%zu]", index);
  if (!json_is_object(setting))
    return _mfp_error(MFP_ERR_PROFILE, "%s: expected an object, got %s", path, _mfp_json_type_name(setting));
  _mfp_setting *st = &p->settings[index];
  mfp_status s;
  int64_t ignored, fixed;
  double seconds;
  if ((s = get_int(setting, path, "batch_size", 1, &st->batch)) != MFP_OK) return s;
  if (st->batch > MFP_MAX_BATCH_LIMIT)
    return _mfp_error(MFP_ERR_PROFILE, "%s.batch_size: %" PRId64 " is too large (the limit is 2^30)", path, st->batch);
  if ((s = parse_precision(setting, path, &st->precision)) != MFP_OK) return s;
  if ((s = get_int(setting, path, "peak_allocated_bytes", 0, &st->peak_allocated)) != MFP_OK) return s;
  if ((s = get_int(setting, path, "peak_reserved_bytes", 0, &st->peak_reserved)) != MFP_OK) return s;
  if (st->peak_reserved < st->peak_allocated)
    return _mfp_error(MFP_ERR_PROFILE, "%s.peak_reserved_bytes: %" PRId64 " is below peak_allocated_bytes (%" PRId64
                      "): reserved memory holds every allocated block", path, st->peak_reserved, st->peak_allocated);
  if ((s = get_int(setting, path, "peak_requested_bytes", 0, &ignored)) != MFP_OK) return s;
  if ((s = get_int(setting, path, "fixed_bytes", 0, &fixed)) != MFP_OK) return s;
  if ((s = get_int(setting, path, "input_bytes", 0, &ignored)) != MFP_OK) return s;
  if ((s = get_totals(setting, path, "totals")) != MFP_OK) return s;
  if ((s = get_totals(setting, path, "totals_allocated")) != MFP_OK) return s;
  if ((s = get_seconds(setting, path, "step_seconds", &st->step_seconds)) != MFP_OK) return s;
  window loss, loss_backward, optimizer;
  if ((s = get_window(setting, path, "loss", &loss)) != MFP_OK) return s;
  if ((s = get_window(setting, path, "loss_backward", &loss_backward)) != MFP_OK) return s;
  if ((s = get_window(setting, path, "optimizer", &optimizer)) != MFP_OK) return s;
  double *step = st->step_values[MFP_MODE_KEEP];
  if ((s = get_seconds(setting, path, "loss_seconds", &step[MFP_S_TL])) != MFP_OK) return s;
  if ((s = get_seconds(setting, path, "loss_backward_seconds", &step[MFP_S_TLB])) != MFP_OK) return s;
  if ((s = get_seconds(setting, path, "optimizer_seconds", &seconds)) != MFP_OK) return s;
  step[MFP_S_LPK] = (double)(loss.peak - loss.start);
  step[MFP_S_LD] = (double)(loss.end - loss.start);
  step[MFP_S_LBPK] = (double)(loss_backward.peak - loss_backward.start);
  step[MFP_S_LBD] = (double)(loss_backward.end - loss_backward.start);
  /* A mode without its own run takes the setting's loss windows; times always. */
  for (int mode = 1; mode < MFP_MODE_COUNT; mode++) memcpy(st->step_values[mode], step, sizeof st->step_values[mode]);
  st->global_values[MFP_G_FIXED] = (double)fixed;
  st->global_values[MFP_G_OPK] = (double)(optimizer.peak - optimizer.start);
  st->global_values[MFP_G_OD] = (double)(optimizer.end - optimizer.start);
  st->global_values[MFP_G_TO] = seconds;
  if ((s = parse_layers(p, setting, path, index, st, &loss, &loss_backward, &optimizer, fixed)) != MFP_OK) return s;
  run_spec runs[] = {
      {"checkpointed", MFP_MODE_CHECKPOINT, MFP_T_CFPK, &st->ckpt_peak_allocated, &st->ckpt_peak_reserved,
       &st->ckpt_step_seconds},
      {"selective", MFP_MODE_SELECTIVE, MFP_T_SFPK, &st->sel_peak_allocated, &st->sel_peak_reserved,
       &st->sel_step_seconds},
  };
  for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++)
    if ((s = parse_run(p, setting, path, st, &runs[r])) != MFP_OK) return s;
  if (st->sel_peak_allocated >= 0 && st->ckpt_peak_allocated < 0)
    return _mfp_error(MFP_ERR_PROFILE, "%s.selective: present without a \"checkpointed\" run (a profile with "
                      "selective runs has both)", path);
  return MFP_OK;
}

static int compare_names(const void *a, const void *b) {
  return strcmp(**(char *const *const *)a, **(char *const *const *)b);
}

/* Layer names are module paths: unique, or a plan could not be applied by name. */
static mfp_status check_unique_names(const mfp_profile *p) {
  char ***sorted = malloc(p->n_layers * sizeof *sorted);
  if (!sorted) return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory reading the profile");
  for (size_t i = 0; i < p->n_layers; i++) sorted[i] = &p->layer_names[i];
  qsort(sorted, p->n_layers, sizeof *sorted, compare_names);
  mfp_status s = MFP_OK;
  for (size_t i = 1; i < p->n_layers && s == MFP_OK; i++)
    if (strcmp(*sorted[i - 1], *sorted[i]) == 0) {
      size_t a = (size_t)(sorted[i - 1] - p->layer_names), b = (size_t)(sorted[i] - p->layer_names);
      s = _mfp_error(MFP_ERR_PROFILE, "settings[0].layers[%zu].name: \"%s\" repeats layers[%zu]", a > b ? a : b,
                     *sorted[i], a < b ? a : b);
    }
  free(sorted);
  return s;
}

/* A check's "checkpointed_layers" (or "selective_layers"): the names of the
 * layers its plan checkpointed (selectively), each a layer of the profile.
 * Absent: every layer (none). */
static mfp_status check_layers(const mfp_profile *p, const json_t *c, const char *path, const char *key,
                               bool absent, bool *out) {
  const json_t *list = json_object_get(c, key);
  for (size_t i = 0; i < p->n_layers; i++) out[i] = !list && absent;
  if (!list) return MFP_OK;
  if (!json_is_array(list))
    return _mfp_error(MFP_ERR_PROFILE, "%s.%s: expected a list of layer names, got %s", path, key,
                      _mfp_json_type_name(list));
  for (size_t k = 0; k < json_array_size(list); k++) {
    const json_t *name = json_array_get(list, k);
    if (!json_is_string(name))
      return _mfp_error(MFP_ERR_PROFILE, "%s.%s[%zu]: expected a layer name, got %s", path, key, k,
                        _mfp_json_type_name(name));
    size_t i = 0;
    while (i < p->n_layers && strcmp(p->layer_names[i], json_string_value(name)) != 0) i++;
    if (i == p->n_layers)
      return _mfp_error(MFP_ERR_PROFILE, "%s.%s[%zu]: \"%s\" is not a layer of the profile", path, key, k,
                        json_string_value(name));
    out[i] = true;
  }
  return MFP_OK;
}

/* The optional checkpoint_checks: each a plan checkpointing the layers it names
 * (every layer by default) in one profiled precision, run at one batch; the
 * model's peak for it is simulated here (the profile is fitted by now) and the
 * differences fitted. */
static mfp_status parse_checkpoint_checks(mfp_profile *p, const json_t *root) {
  const json_t *list = json_object_get(root, "checkpoint_checks");
  if (!list) return MFP_OK;
  if (!json_is_array(list))
    return _mfp_error(MFP_ERR_PROFILE, "checkpoint_checks: expected a list, got %s", _mfp_json_type_name(list));
  size_t n = json_array_size(list);
  if (!n) return MFP_OK;
  p->checks = calloc(n, sizeof *p->checks);
  mfp_decision *all = calloc(p->n_layers, sizeof *all);
  if (!p->checks || !all) {
    free(all);
    return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory reading the profile");
  }
  mfp_status s = MFP_OK;
  double nn[MFP_PRECISION_COUNT] = {0}, sb[MFP_PRECISION_COUNT] = {0}, se[MFP_PRECISION_COUNT] = {0},
         sbb[MFP_PRECISION_COUNT] = {0}, sbe[MFP_PRECISION_COUNT] = {0};
  for (size_t k = 0; k < n && s == MFP_OK; k++) {
    char path[PATH_LEN];
    snprintf(path, sizeof path, "checkpoint_checks[%zu]", k);
    const json_t *c = json_array_get(list, k);
    _mfp_checkpoint_check *ck = &p->checks[k];
    int64_t reserved;
    if (!json_is_object(c)) {
      s = _mfp_error(MFP_ERR_PROFILE, "%s: expected an object, got %s", path, _mfp_json_type_name(c));
      break;
    }
    if ((s = get_int(c, path, "batch_size", 1, &ck->batch)) != MFP_OK) break;
    if ((s = parse_precision(c, path, &ck->precision)) != MFP_OK) break;
    if ((s = get_int(c, path, "peak_allocated_bytes", 0, &ck->measured)) != MFP_OK) break;
    if ((s = get_int(c, path, "peak_reserved_bytes", 0, &reserved)) != MFP_OK) break;
    ck->checkpointed = malloc(p->n_layers * sizeof *ck->checkpointed);
    ck->selective = malloc(p->n_layers * sizeof *ck->selective);
    p->n_checks = k + 1; /* freed with the profile from here on */
    if (!ck->checkpointed || !ck->selective) {
      s = _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory reading the profile");
      break;
    }
    if ((s = check_layers(p, c, path, "checkpointed_layers", true, ck->checkpointed)) != MFP_OK) break;
    if ((s = check_layers(p, c, path, "selective_layers", false, ck->selective)) != MFP_OK) break;
    for (size_t i = 0; i < p->n_layers && s == MFP_OK; i++) {
      if (ck->selective[i] && ck->checkpointed[i] && json_object_get(c, "checkpointed_layers"))
        s = _mfp_error(MFP_ERR_PROFILE, "%s: layer \"%s\" is in both checkpointed_layers and selective_layers", path,
                       p->layer_names[i]);
      if (ck->selective[i] && !p->measured_selective)
        s = _mfp_error(MFP_ERR_PROFILE, "%s.selective_layers: the profile's settings have no \"selective\" runs", path);
      ck->checkpointed[i] |= ck->selective[i];
      ck->n_checkpointed += ck->checkpointed[i];
      ck->n_selective += ck->selective[i];
    }
    if (s != MFP_OK) break;
    if (!p->fitted[ck->precision]) {
      s = _mfp_error(MFP_ERR_PROFILE, "%s.precision: %s has no settings", path, mfp_precision_name(ck->precision));
      break;
    }
    if (ck->batch > MFP_MAX_BATCH_LIMIT) {
      s = _mfp_error(MFP_ERR_PROFILE, "%s.batch_size: %" PRId64 " is too large (the limit is 2^30)", path, ck->batch);
      break;
    }
    _mfp_model m;
    if ((s = _mfp_model_eval(p, ck->batch, &m)) != MFP_OK) break;
    for (size_t i = 0; i < p->n_layers; i++) all[i] = (mfp_decision){ck->checkpointed[i], ck->precision, ck->selective[i]};
    mfp_simulation sim;
    _mfp_model_simulate(&m, all, &sim);
    _mfp_model_free(&m);
    ck->predicted = sim.peak_bytes;
    double b = (double)ck->batch, e = (double)(ck->measured - ck->predicted);
    int q = ck->precision;
    nn[q] += 1, sb[q] += b, se[q] += e, sbb[q] += b * b, sbe[q] += b * e;
  }
  free(all);
  if (s != MFP_OK) return s;
  /* Least squares through each precision's checks; one batch (or one distinct): a constant. */
  for (int q = 0; q < MFP_PRECISION_COUNT; q++) {
    if (!nn[q]) continue;
    double den = nn[q] * sbb[q] - sb[q] * sb[q];
    p->check_slope[q] = den > 0.5 ? (nn[q] * sbe[q] - sb[q] * se[q]) / den : 0.0;
    p->check_intercept[q] = (se[q] - p->check_slope[q] * sb[q]) / nn[q];
    p->checked[q] = true;
  }
  return MFP_OK;
}

static int timing_order(const void *x, const void *y) {
  const _mfp_timing_point *a = x, *b = y;
  if (a->precision != b->precision) return a->precision < b->precision ? -1 : 1;
  if (a->mode != b->mode) return a->mode < b->mode ? -1 : 1;
  return a->batch < b->batch ? -1 : a->batch > b->batch;
}

/* The optional "timing": step times measured without the tracer, every layer
 * as it is (PROFILE.md), which the model's times are calibrated to (PLAN.md,
 * "Step times"). Sorted by precision and batch; repeated pairs averaged; each
 * point's uncalibrated model step computed here (the profile is fitted). */
static mfp_status parse_timing(mfp_profile *p, const json_t *root) {
  const json_t *list = json_object_get(root, "timing");
  if (!list) return MFP_OK;
  if (!json_is_array(list))
    return _mfp_error(MFP_ERR_PROFILE, "timing: expected a list, got %s", _mfp_json_type_name(list));
  size_t n = json_array_size(list);
  if (n > MFP_MAX_TIMING_POINTS)
    return _mfp_error(MFP_ERR_PROFILE, "timing: %zu entries (at most %d)", n, MFP_MAX_TIMING_POINTS);
  if (!n) return MFP_OK;
  _mfp_timing_point *t = calloc(n, sizeof *t);
  if (!t) return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory reading the profile");
  p->timing = t;
  mfp_status s;
  for (size_t k = 0; k < n; k++) {
    char path[PATH_LEN];
    snprintf(path, sizeof path, "timing[%zu]", k);
    const json_t *e = json_array_get(list, k);
    if (!json_is_object(e))
      return _mfp_error(MFP_ERR_PROFILE, "%s: expected an object, got %s", path, _mfp_json_type_name(e));
    if ((s = get_int(e, path, "batch_size", 1, &t[k].batch)) != MFP_OK) return s;
    if (t[k].batch > MFP_MAX_BATCH_LIMIT)
      return _mfp_error(MFP_ERR_PROFILE, "%s.batch_size: %" PRId64 " is too large (the limit is 2^30)", path,
                        t[k].batch);
    if ((s = parse_precision(e, path, &t[k].precision)) != MFP_OK) return s;
    if (!p->fitted[t[k].precision])
      return _mfp_error(MFP_ERR_PROFILE, "%s.precision: %s has no settings", path,
                        mfp_precision_name(t[k].precision));
    if ((s = get_seconds(e, path, "step_seconds", &t[k].seconds)) != MFP_OK) return s;
    t[k].measured_peak = -1;
    if (json_object_get(e, "peak_allocated_bytes") &&
        (s = get_int(e, path, "peak_allocated_bytes", 0, &t[k].measured_peak)) != MFP_OK)
      return s;
    const json_t *mode = json_object_get(e, "mode");
    if (mode) {
      const char *name = json_string_value(mode);
      int found = -1;
      for (int m = 0; name && m < MFP_MODE_COUNT; m++)
        if (strcmp(name, _mfp_mode_name(m)) == 0) found = m;
      if (found < 0)
        return _mfp_error(MFP_ERR_PROFILE, "%s.mode: expected \"plain\", \"checkpointed\" or \"selective\"", path);
      if ((found == MFP_MODE_CHECKPOINT && !p->measured_checkpoint) ||
          (found == MFP_MODE_SELECTIVE && !p->measured_selective))
        return _mfp_error(MFP_ERR_PROFILE, "%s.mode: the profile's settings have no \"%s\" runs", path, _mfp_mode_name(found));
      t[k].mode = (_mfp_mode)found;
    }
    if (!(t[k].seconds > 0))
      return _mfp_error(MFP_ERR_PROFILE, "%s.step_seconds: must be > 0 (a measured step), got %g", path,
                        t[k].seconds);
  }
  qsort(t, n, sizeof *t, timing_order);
  size_t kept = 0;
  for (size_t k = 0; k < n;) {
    size_t j = k;
    double sum = 0;
    int64_t peak = -1;
    for (; j < n && timing_order(&t[j], &t[k]) == 0; j++) {
      sum += t[j].seconds;
      if (t[j].measured_peak > peak) peak = t[j].measured_peak;
    }
    t[kept] = t[k];
    t[kept].measured_peak = peak;
    t[kept++].seconds = sum / (double)(j - k);
    k = j;
  }
  p->n_timing = kept;
  for (size_t k = 0; k < kept; k++) {
    bool plain = false;
    for (size_t j = 0; j < kept; j++) plain |= t[j].precision == t[k].precision && t[j].mode == MFP_MODE_KEEP;
    if (!plain)
      return _mfp_error(MFP_ERR_PROFILE, "timing: %s has checkpointed or selective entries but no plain ones (the "
                        "others are measured against those)", mfp_precision_name(t[k].precision));
  }
  if ((s = _mfp_fit_time_shares(p)) != MFP_OK) return s;
  mfp_decision *every = calloc(p->n_layers ? p->n_layers : 1, sizeof *every);
  if (!every) return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory reading the profile");
  for (size_t k = 0; k < kept && s == MFP_OK; k++) {
    _mfp_model m;
    if ((s = _mfp_model_eval(p, t[k].batch, &m)) != MFP_OK) break;
    t[k].model_seconds = m.plain_seconds[t[k].precision];
    if (!m.in_range) t[k].measured_peak = -1; /* a term beyond 16 TiB there: nothing to compare */
    if (t[k].measured_peak >= 0) { /* the ladder check (ladder.c): every layer in the point's mode */
      for (size_t i = 0; i < p->n_layers; i++)
        every[i] = (mfp_decision){t[k].mode != MFP_MODE_KEEP, t[k].precision, t[k].mode == MFP_MODE_SELECTIVE};
      mfp_simulation sim;
      _mfp_model_simulate(&m, every, &sim);
      t[k].model_peak = sim.peak_bytes;
    }
    _mfp_model_free(&m);
  }
  free(every);
  if (s != MFP_OK) return s;
  p->timing_ready = true;
  return MFP_OK;
}

/* The largest of the precisions' corrections: a plan may run any layer in any
 * allowed precision, and what checkpointing keeps differs between them (PLAN.md,
 * "Checkpoint checks"). */
int64_t _mfp_checkpoint_correction(const mfp_profile *p, int64_t batch) {
  double worst = 0;
  for (int q = 0; q < MFP_PRECISION_COUNT; q++) {
    if (!p->checked[q]) continue;
    double e = ceil(p->check_intercept[q] + p->check_slope[q] * (double)batch);
    if (e > worst) worst = e;
  }
  if (!(worst > 0)) return 0;
  return worst > (double)MFP_MAX_BYTES ? MFP_MAX_BYTES : (int64_t)worst;
}

static mfp_status parse_root(mfp_profile *p, const json_t *root) {
  if (!json_is_object(root))
    return _mfp_error(MFP_ERR_PROFILE, "(root): expected an object, got %s", _mfp_json_type_name(root));
  mfp_status s;
  const char *text;
  int64_t version, ignored;
  if ((s = get_string(root, "", "format", &text)) != MFP_OK) return s;
  if (strcmp(text, "memfit-profile") != 0)
    return _mfp_error(MFP_ERR_PROFILE, "format: expected \"memfit-profile\", got \"%s\"", text);
  if ((s = get_int(root, "", "version", 0, &version)) != MFP_OK) return s;
  if (version != 1)
    return _mfp_error(MFP_ERR_PROFILE, "version: %" PRId64 " is not supported (this planner reads version 1)", version);
  if ((s = get_string(root, "", "memfit_version", &text)) != MFP_OK) return s;
  if ((s = get_string(root, "", "torch_version", &text)) != MFP_OK) return s;
  if ((s = get_string(root, "", "device", &text)) != MFP_OK) return s;
  if (strcmp(text, "cpu") != 0 && strcmp(text, "cuda") != 0)
    return _mfp_error(MFP_ERR_PROFILE, "device: expected \"cpu\" or \"cuda\", got \"%s\"", text);
  if ((s = get_string(root, "", "device_name", &text)) != MFP_OK) return s;
  if (!(p->device_name = copy_string(text))) return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory");
  if ((s = get_string(root, "", "job", &text)) != MFP_OK) return s;
  if (!(p->job = copy_string(text))) return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory");
  if ((s = get_string(root, "", "optimizer", &text)) != MFP_OK) return s;
  if ((s = get_int(root, "", "rounding_bytes", 1, &ignored)) != MFP_OK) return s;
  if ((s = get_int(root, "", "warmup_steps", 0, &ignored)) != MFP_OK) return s;
  if ((s = get_int(root, "", "steps", 1, &ignored)) != MFP_OK) return s;
  if (json_object_get(root, "granule_bytes") && (s = get_int(root, "", "granule_bytes", 0, &p->granule)) != MFP_OK)
    return s;
  json_t *settings;
  if ((s = typed(root, "", "settings", JSON_ARRAY, "a list", &settings)) != MFP_OK) return s;
  p->n_settings = json_array_size(settings);
  if (p->n_settings == 0) return _mfp_error(MFP_ERR_PROFILE, "settings: empty");
  p->settings = calloc(p->n_settings, sizeof *p->settings);
  if (!p->settings) return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory reading the profile");
  for (size_t i = 0; i < p->n_settings; i++) {
    if ((s = parse_setting(p, json_array_get(settings, i), i)) != MFP_OK) return s;
    const _mfp_setting *st = &p->settings[i];
    bool seen = false;
    for (int k = 0; k < p->n_precisions; k++) seen |= p->precisions[k] == st->precision;
    if (!seen) p->precisions[p->n_precisions++] = st->precision;
    if (st->batch > p->largest_batch) p->largest_batch = st->batch;
    /* What the allocator reserved beyond its blocks: PLAN.md, "Reserved bytes and headroom". */
    int64_t over = st->peak_reserved - st->peak_allocated;
    if (over > p->reserve_overhead) p->reserve_overhead = over;
    double ratio = st->peak_allocated > 0 ? (double)st->peak_reserved / (double)st->peak_allocated : 1.0;
    if (ratio > p->reserve_ratio) p->reserve_ratio = ratio;
    const int64_t run_allocated[2] = {st->ckpt_peak_allocated, st->sel_peak_allocated};
    const int64_t run_reserved[2] = {st->ckpt_peak_reserved, st->sel_peak_reserved};
    for (int r = 0; r < 2; r++) {
      if (run_allocated[r] < 0) continue;
      over = run_reserved[r] - run_allocated[r];
      if (over > p->reserve_overhead) p->reserve_overhead = over;
      ratio = run_allocated[r] > 0 ? (double)run_reserved[r] / (double)run_allocated[r] : 1.0;
      if (ratio > p->reserve_ratio) p->reserve_ratio = ratio;
    }
  }
  /* The checkpointed runs are used only when every setting has one: terms are
   * fitted over a precision's settings, all measured the same way. */
  p->measured_checkpoint = p->settings[0].ckpt_peak_allocated >= 0;
  for (size_t i = 1; i < p->n_settings; i++)
    if ((p->settings[i].ckpt_peak_allocated >= 0) != p->measured_checkpoint)
      return _mfp_error(MFP_ERR_PROFILE, "settings[%zu].checkpointed: %s, but settings[0] %s (every setting has one, or none)",
                        i, p->measured_checkpoint ? "missing" : "present", p->measured_checkpoint ? "has one" : "has none");
  p->measured_held = true;
  for (size_t i = 0; i < p->n_settings; i++) p->measured_held &= !p->settings[i].held_missing;
  p->measured_selective = p->settings[0].sel_peak_allocated >= 0;
  for (size_t i = 1; i < p->n_settings; i++)
    if ((p->settings[i].sel_peak_allocated >= 0) != p->measured_selective)
      return _mfp_error(MFP_ERR_PROFILE, "settings[%zu].selective: %s, but settings[0] %s (every setting has one, or none)",
                        i, p->measured_selective ? "missing" : "present", p->measured_selective ? "has one" : "has none");
  p->first_precision = p->settings[0].precision;
  if ((s = check_unique_names(p)) != MFP_OK) return s;
  if ((s = _mfp_fit_profile(p)) != MFP_OK) return s;
  if ((s = parse_timing(p, root)) != MFP_OK) return s;
  return parse_checkpoint_checks(p, root);
}

MFP_API mfp_status mfp_profile_parse(const char *json, mfp_profile **out) {
  if (!out) return _mfp_error(MFP_ERR_INVALID, "mfp_profile_parse: out is NULL");
  *out = NULL;
  if (!json) return _mfp_error(MFP_ERR_INVALID, "mfp_profile_parse: json is NULL");
  json_error_t err;
  json_t *root = json_loads(json, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &err);
  if (!root)
    return _mfp_error(MFP_ERR_PROFILE, "profile: not valid JSON at line %d, column %d: %s", err.line, err.column,
                      err.text);
  mfp_profile *p = calloc(1, sizeof *p);
  if (!p) {
    json_decref(root);
    return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory reading the profile");
  }
  mfp_status s = parse_root(p, root);
  json_decref(root);
  if (s != MFP_OK) {
    mfp_profile_free(p);
    return s;
  }
  _mfp_clear_error();
  *out = p;
  return MFP_OK;
}

/* The whole file, NUL-terminated; "-" is standard input. */
static mfp_status read_file(const char *path, char **text) {
  bool is_stdin = strcmp(path, "-") == 0;
  FILE *f = is_stdin ? stdin : fopen(path, "rb");
  if (!f) return _mfp_error(MFP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  size_t len = 0, cap = 1 << 16;
  char *buf = malloc(cap);
  mfp_status s = MFP_OK;
  while (buf) {
    if (cap - len < 2) {
      char *grown = realloc(buf, cap * 2);
      if (!grown) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = grown;
      cap *= 2;
    }
    size_t got = fread(buf + len, 1, cap - len - 1, f);
    len += got;
    if (got == 0) break;
  }
  if (!buf) s = _mfp_error(MFP_ERR_HOST_MEMORY, "%s: out of host memory reading it", path);
  else if (ferror(f)) s = _mfp_error(MFP_ERR_IO, "%s: read error: %s", path, strerror(errno));
  if (!is_stdin) fclose(f);
  if (s != MFP_OK) {
    free(buf);
    return s;
  }
  buf[len] = '\0';
  if (strlen(buf) != len) {
    free(buf);
    return _mfp_error(MFP_ERR_PROFILE, "%s: contains a NUL byte: not a JSON text", path);
  }
  *text = buf;
  return MFP_OK;
}

MFP_API mfp_status mfp_profile_load(const char *path, mfp_profile **out) {
  if (!out) return _mfp_error(MFP_ERR_INVALID, "mfp_profile_load: out is NULL");
  *out = NULL;
  if (!path) return _mfp_error(MFP_ERR_INVALID, "mfp_profile_load: path is NULL");
  char *text = NULL;
  mfp_status s = read_file(path, &text);
  if (s != MFP_OK) return s;
  s = mfp_profile_parse(text, out);
  free(text);
  if (s == MFP_ERR_PROFILE) {
    char message[1024];
    snprintf(message, sizeof message, "%s", mfp_last_error());
    return _mfp_error(s, "%s: %s", path, message);
  }
  return s;
}

MFP_API void mfp_profile_free(mfp_profile *p) {
  if (!p) return;
  if (p->layer_names)
    for (size_t i = 0; i < p->n_layers; i++) free(p->layer_names[i]);
  free(p->layer_names);
  if (p->settings)
    for (size_t i = 0; i < p->n_settings; i++) free(p->settings[i].layer_values);
  free(p->settings);
  for (int k = 0; k < MFP_PRECISION_COUNT; k++) free(p->layer_fit[k]), free(p->layer_share[k]);
  free(p->job);
  free(p->device_name);
  for (size_t k = 0; p->checks && k < p->n_checks; k++) {
    free(p->checks[k].checkpointed);
    free(p->checks[k].selective);
  }
  free(p->checks);
  free(p->timing);
  free(p);
}

MFP_API size_t mfp_profile_layer_count(const mfp_profile *p) { return p ? p->n_layers : 0; }

MFP_API const char *mfp_profile_layer_name(const mfp_profile *p, size_t i) {
  return p && i < p->n_layers ? p->layer_names[i] : NULL;
}

MFP_API bool mfp_profile_has_precision(const mfp_profile *p, mfp_precision precision) {
  if (!p) return false;
  for (int k = 0; k < p->n_precisions; k++)
    if (p->precisions[k] == precision) return true;
  return false;
}
