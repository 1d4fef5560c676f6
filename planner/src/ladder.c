/* ladder.c — the ladder check: the model's peak against the peaks the
 * profile's timing ladder measured at batches far above the profiled ones
 * (every layer as it is, checkpointed, selectively checkpointed), and the
 * correction a plan is kept below its limit for (PLAN.md, "The ladder check").
 * The points' model peaks are computed where the profile is read. */
#include <math.h>

#include "internal.h"

/* One precision's correction at `batch`: its points' errors (measured - model)
 * joined by straight lines, held at the first point's below it, and past the
 * last continued along the last segment when that rises (held when it falls:
 * the correction never shrinks on a guess); 0 without points (*found false). */
static double precision_correction(const mfp_profile *p, mfp_precision prec, _mfp_mode mode, int64_t batch,
                                   bool *found) {
  const _mfp_timing_point *prev = NULL, *last = NULL;
  double e_prev = 0, e_last = 0;
  for (size_t k = 0; k < p->n_timing; k++) { /* sorted by precision, mode, batch */
    const _mfp_timing_point *t = &p->timing[k];
    if (t->precision != prec || t->mode != mode || t->measured_peak < 0) continue;
    *found = true;
    double e = (double)(t->measured_peak - t->model_peak);
    if (t->batch >= batch) {
      if (!last) return e; /* at or below the first point */
      double w = (double)(batch - last->batch) / (double)(t->batch - last->batch);
      return e_last + w * (e - e_last);
    }
    prev = last, e_prev = e_last;
    last = t, e_last = e;
  }
  if (!last) return 0;
  double rise = prev ? (e_last - e_prev) / (double)(last->batch - prev->batch) : 0;
  return e_last + (rise > 0 ? rise * (double)(batch - last->batch) : 0);
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
