/* ladder.c — the ladder check: the model's peak against the peaks the
 * profile's timing ladder measured at batches far above the profiled ones
 * (every layer as it is, checkpointed, selectively checkpointed), and the
 * correction a plan is kept below its limit for (PLAN.md, "The ladder check").
 * The points' model peaks are computed where the profile is read. */
#include <math.h>

#include "internal.h"

/* A point's error (measured - model), and relative to the model's peak there. */
static double point_error(const _mfp_timing_point *t) { return (double)(t->measured_peak - t->model_peak); }

static double relative_error(const _mfp_timing_point *t) {
  return t->model_peak > 0 ? point_error(t) / (double)t->model_peak : 0;
}

/* One precision's correction at `batch` from its points' errors (measured -
 * model): at a point, its error; below the first, the first's; between two,
 * the larger of their errors relative to the model's peak, times the model's
 * peak there (the peaks joined by a line): an error is a kernel's temporary
 * that scales with the batch and changes shape between points (it changed sign
 * between 16 and 64 on GPT-2 in bf16 and was larger at 40 than at either),
 * so it is never interpolated toward the smaller one; past the last, the
 * larger of the last relative error so scaled (the peaks' last segment
 * continued) and the last segment of errors continued where it rises. 0
 * without points (*found false). */
static double precision_correction(const mfp_profile *p, mfp_precision prec, _mfp_mode mode, int64_t batch,
                                   bool *found) {
  const _mfp_timing_point *prev = NULL, *last = NULL;
  for (size_t k = 0; k < p->n_timing; k++) { /* sorted by precision, mode, batch */
    const _mfp_timing_point *t = &p->timing[k];
    if (t->precision != prec || t->mode != mode || t->measured_peak < 0) continue;
    *found = true;
    if (t->batch == batch || (t->batch > batch && !last)) return point_error(t); /* at a point, or below the first */
    if (t->batch > batch) {
      double w = (double)(batch - last->batch) / (double)(t->batch - last->batch);
      double model = (double)last->model_peak + w * (double)(t->model_peak - last->model_peak);
      return fmax(relative_error(last), relative_error(t)) * model;
    }
    prev = last;
    last = t;
  }
  if (!last) return 0;
  double e_last = point_error(last);
  if (!prev) return e_last;
  double span = (double)(last->batch - prev->batch), ahead = (double)(batch - last->batch);
  double model = (double)last->model_peak + (double)(last->model_peak - prev->model_peak) / span * ahead;
  double rise = (e_last - point_error(prev)) / span;
  return fmax(relative_error(last) * model, e_last + (rise > 0 ? rise * ahead : 0));
}

int64_t _mfp_ladder_correction(const mfp_profile *p, const mfp_precision *allowed, int n_allowed, _mfp_mode mode,
                               int64_t batch) {
  double worst = 0;
  for (int k = 0; k < n_allowed; k++) {
    bool found = false;
    double e = precision_correction(p, allowed[k], mode, batch, &found);
    if (!found && mode != MFP_MODE_KEEP) e = precision_correction(p, allowed[k], MFP_MODE_KEEP, batch, &found);
    e = ceil(e);
    if (e > worst) worst = e;
  }
  if (!(worst > 0)) return 0;
  return worst > (double)MFP_MAX_BYTES ? MFP_MAX_BYTES : (int64_t)worst;
}
