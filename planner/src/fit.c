/* fit.c — fits every term of the model as intercept + slope * batch from the
 * settings of one precision: the line through the points with two batch
 * sizes, least squares with more. Lines are kept centred on the mean batch.
 * With timing points, also each time term's share of its setting's step. */
#include <stdlib.h>

#include "internal.h"

/* Least squares over the settings listed in idx, of the value get(setting). */
static _mfp_line fit_line(const mfp_profile *p, const size_t *idx, size_t n,
                          double (*get)(const _mfp_setting *, size_t), size_t which) {
  double mean_b = 0, mean_v = 0;
  for (size_t k = 0; k < n; k++) {
    mean_b += (double)p->settings[idx[k]].batch;
    mean_v += get(&p->settings[idx[k]], which);
  }
  mean_b /= (double)n;
  mean_v /= (double)n;
  double sxy = 0, sxx = 0;
  for (size_t k = 0; k < n; k++) {
    double db = (double)p->settings[idx[k]].batch - mean_b;
    sxy += db * (get(&p->settings[idx[k]], which) - mean_v);
    sxx += db * db;
  }
  _mfp_line line = {mean_b, mean_v, sxx > 0 ? sxy / sxx : 0.0};
  return line;
}

static double layer_value(const _mfp_setting *st, size_t which) { return st->layer_values[which]; }
static double step_value(const _mfp_setting *st, size_t which) {
  return st->step_values[which / MFP_STEP_TERMS][which % MFP_STEP_TERMS];
}
static double global_value(const _mfp_setting *st, size_t which) { return st->global_values[which]; }

double _mfp_line_at(const _mfp_line *line, int64_t batch) {
  return line->center_value + line->slope * ((double)batch - line->center_batch);
}

/* The time terms: PLAN.md, "Step times". */
static const size_t layer_times[] = {MFP_T_TF, MFP_T_TB, MFP_T_CTF, MFP_T_CTB, MFP_T_STF, MFP_T_STB};

/* A time that falls with the batch is warm-up or noise (a larger batch never
 * takes less time): such a line is held flat at its mean, the least-squares
 * line among those that do not fall (PLAN.md, "Step times"). Extrapolated,
 * a falling line reached zero, and every layer's time with it. */
static void never_falls(_mfp_line *line) {
  if (line->slope < 0) line->slope = 0;
}

/* The settings of one precision, in profile order; MFP_ERR_PROFILE unless they
 * span two batch sizes. */
static mfp_status settings_of(const mfp_profile *p, mfp_precision precision, size_t *idx, size_t *n) {
  *n = 0;
  int64_t first_batch = -1;
  bool two = false;
  for (size_t i = 0; i < p->n_settings; i++) {
    if (p->settings[i].precision != precision) continue;
    idx[(*n)++] = i;
    if (first_batch < 0) first_batch = p->settings[i].batch;
    else two |= p->settings[i].batch != first_batch;
  }
  if (!two)
    return _mfp_error(MFP_ERR_PROFILE,
                      "settings: every %s setting has batch size %lld: fitting intercept + slope per term needs "
                      "%s settings at two batch sizes or more",
                      mfp_precision_name(precision), (long long)first_batch, mfp_precision_name(precision));
  return MFP_OK;
}

mfp_status _mfp_fit_profile(mfp_profile *p) {
  size_t *idx = malloc(p->n_settings * sizeof *idx), n;
  if (!idx) return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory fitting the profile");
  mfp_status s = MFP_OK;
  for (int k = 0; k < p->n_precisions && s == MFP_OK; k++) {
    mfp_precision prec = p->precisions[k];
    if ((s = settings_of(p, prec, idx, &n)) != MFP_OK) break;
    p->layer_fit[prec] = malloc(p->n_layers * MFP_LAYER_TERMS * sizeof *p->layer_fit[prec]);
    if (!p->layer_fit[prec]) {
      s = _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory fitting the profile");
      break;
    }
    for (size_t t = 0; t < p->n_layers * MFP_LAYER_TERMS; t++)
      p->layer_fit[prec][t] = fit_line(p, idx, n, layer_value, t);
    for (size_t i = 0; i < p->n_layers; i++)
      for (size_t t = 0; t < sizeof layer_times / sizeof layer_times[0]; t++)
        never_falls(&p->layer_fit[prec][i * MFP_LAYER_TERMS + layer_times[t]]);
    for (size_t mode = 0; mode < MFP_MODE_COUNT; mode++) {
      for (size_t t = 0; t < MFP_STEP_TERMS; t++)
        p->step_fit[prec][mode][t] = fit_line(p, idx, n, step_value, mode * MFP_STEP_TERMS + t);
      never_falls(&p->step_fit[prec][mode][MFP_S_TL]);
      never_falls(&p->step_fit[prec][mode][MFP_S_TLB]);
    }
    p->fitted[prec] = true;
    if (prec == p->first_precision) {
      for (size_t t = 0; t < MFP_GLOBAL_TERMS; t++) p->global_fit[t] = fit_line(p, idx, n, global_value, t);
      never_falls(&p->global_fit[MFP_G_TO]);
    }
  }
  free(idx);
  return s;
}


/* A setting's traced step by its own terms, every layer as it is: what its
 * time terms are shares of. */
static double traced_step(const mfp_profile *p, const _mfp_setting *st) {
  double step = 0;
  for (size_t i = 0; i < p->n_layers; i++)
    step += st->layer_values[i * MFP_LAYER_TERMS + MFP_T_TF] + st->layer_values[i * MFP_LAYER_TERMS + MFP_T_TB];
  return step + st->step_values[MFP_MODE_KEEP][MFP_S_TL] + st->step_values[MFP_MODE_KEEP][MFP_S_TLB] +
         st->global_values[MFP_G_TO];
}

mfp_status _mfp_fit_time_shares(mfp_profile *p) {
  const size_t n_layer_times = sizeof layer_times / sizeof layer_times[0];
  for (int k = 0; k < p->n_precisions; k++) {
    mfp_precision prec = p->precisions[k];
    bool points = false;
    for (size_t j = 0; j < p->n_timing; j++) points |= p->timing[j].precision == prec && p->timing[j].mode == MFP_MODE_KEEP;
    if (!points) continue;
    double *share = calloc(p->n_layers * MFP_LAYER_TERMS, sizeof *share);
    if (!share) return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory fitting the profile");
    p->layer_share[prec] = share;
    double *step = &p->step_share[prec][0][0];
    size_t n = 0;
    for (size_t s = 0; s < p->n_settings; s++) {
      const _mfp_setting *st = &p->settings[s];
      double traced = traced_step(p, st);
      if (st->precision != prec || !(traced > 0)) continue;
      n++;
      for (size_t i = 0; i < p->n_layers; i++)
        for (size_t t = 0; t < n_layer_times; t++) {
          size_t at = i * MFP_LAYER_TERMS + layer_times[t];
          share[at] += st->layer_values[at] / traced;
        }
      for (int mode = 0; mode < MFP_MODE_COUNT; mode++) {
        step[mode * MFP_STEP_TERMS + MFP_S_TL] += st->step_values[mode][MFP_S_TL] / traced;
        step[mode * MFP_STEP_TERMS + MFP_S_TLB] += st->step_values[mode][MFP_S_TLB] / traced;
      }
      if (prec == p->first_precision) p->global_share[MFP_G_TO] += st->global_values[MFP_G_TO] / traced;
    }
    if (!n) continue; /* no setting took time: the fits stand */
    for (size_t at = 0; at < p->n_layers * MFP_LAYER_TERMS; at++) share[at] /= (double)n;
    for (size_t t = 0; t < MFP_MODE_COUNT * MFP_STEP_TERMS; t++) step[t] /= (double)n;
    if (prec == p->first_precision) p->global_share[MFP_G_TO] /= (double)n;
    static const size_t run_forward[MFP_MODE_COUNT] = {MFP_T_TF, MFP_T_CTF, MFP_T_STF};
    for (int mode = 0; mode < MFP_MODE_COUNT; mode++)
      for (size_t i = 0; i < p->n_layers; i++) /* forward + backward: MFP_RUN_TB follows MFP_RUN_TF */
        p->mode_share_sum[prec][mode] += share[i * MFP_LAYER_TERMS + run_forward[mode]] +
                                         share[i * MFP_LAYER_TERMS + run_forward[mode] + 1];
    p->timed[prec] = true;
  }
  return MFP_OK;
}
