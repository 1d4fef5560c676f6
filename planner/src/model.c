/* model.c — the memory model of planner/PLAN.md: every fitted term at one
 * batch size in whole bytes, the simulator that walks one training step with
 * a plan's decisions, and the check that feasibility is monotone in the batch. */
#include <math.h>
#include <stdlib.h>

#include "internal.h"

/* A byte term at batch b. Peak deltas, outputs and the fixed bytes are >= 0 by
 * definition, so a fit extrapolated below zero is clamped there. */
static int64_t bytes_at(const _mfp_line *line, int64_t batch, bool non_negative, bool *in_range) {
  double v = _mfp_line_at(line, batch);
  if (non_negative && v < 0) v = 0;
  if (!(fabs(v) <= (double)MFP_MAX_BYTES)) {
    *in_range = false;
    return v < 0 ? -MFP_MAX_BYTES : MFP_MAX_BYTES;
  }
  return (int64_t)llround(v);
}

/* Times are >= 0: a fit extrapolated below zero is clamped. */
static double seconds_at(const _mfp_line *line, int64_t batch) {
  double v = _mfp_line_at(line, batch);
  return v > 0 ? v : 0.0;
}

/* Beyond the largest profiled batch the fits are extrapolations, and a term
 * that falls with the batch (activations that shrink: a profile no real model
 * gives) eventually makes the memory held during the step negative: every
 * batch would then "fit". The model is out of range there. Checked on the walk
 * that holds the least, each layer in the precision and checkpoint choice that
 * keeps least, through the forward and the loss. Each prefix is a concave function of the batch that is
 * >= 0 where measured, so once negative it stays so: feasibility stays
 * monotone (Note [Monotone feasibility]). */
static void extrapolation_check(const mfp_profile *p, _mfp_model *m) {
  int64_t largest = 0;
  for (size_t k = 0; k < p->n_settings; k++)
    if (p->settings[k].batch > largest) largest = p->settings[k].batch;
  if (m->batch <= largest || !m->in_range) return;
  int64_t held = m->fixed, least_ld = INT64_MAX;
  for (size_t i = 0; i < m->n_layers && m->in_range; i++) {
    int64_t least = INT64_MAX;
    for (int k = 0; k < p->n_precisions; k++) {
      const _mfp_layer_terms *t = &m->layer[p->precisions[k]][i];
      if (t->kept < least) least = t->kept;
      if (t->ckept < least) least = t->ckept;
      if (p->measured_selective && t->skept < least) least = t->skept;
    }
    held += least;
    if (held < 0) m->in_range = false;
  }
  for (int k = 0; k < p->n_precisions; k++)
    for (int mode = 0; mode < MFP_MODE_COUNT; mode++)
      if (m->step[p->precisions[k]][mode].ld < least_ld) least_ld = m->step[p->precisions[k]][mode].ld;
  if (m->in_range && held + least_ld < 0) m->in_range = false;
}

/* Where a precision's times come from: its fits (share NULL), or, with
 * timing points, each term's share times the basis of its mode: the layer
 * terms of the checkpointed (MFP_T_C*) and selective (MFP_T_S*) runs take
 * step[MFP_MODE_CHECKPOINT] and step[MFP_MODE_SELECTIVE], every other term
 * step[MFP_MODE_KEEP], the measured untraced step (PLAN.md, "Step times");
 * share is indexed like the fits. */
typedef struct times {
  const double *share;
  const double *step; /* MFP_MODE_COUNT bases */
  bool layer;         /* share and term are a layer's (else a step's or the optimizer's) */
} times;

static double time_at(const times *tm, const _mfp_line *f, size_t term, int64_t batch) {
  if (!tm->share) return seconds_at(&f[term], batch);
  int mode = !tm->layer ? MFP_MODE_KEEP : term >= MFP_T_SFPK ? MFP_MODE_SELECTIVE
                                         : term >= MFP_T_CFPK ? MFP_MODE_CHECKPOINT : MFP_MODE_KEEP;
  return tm->share[term] * tm->step[mode];
}

/* A checkpointed layer's terms (PLAN.md, "What a checkpointed layer keeps").
 * Measured: the profile's every-layer-checkpointed runs, fitted like the other
 * terms; the backward window holds the recomputation, so crpk is that window's
 * transient and crd 0; the time is at least the uncheckpointed one plus
 * its forward again (the recomputation repeats it: a faster measurement is
 * noise, and would make checkpointing look free). Derived
 * (older profiles): the layer keeps only its output, and its recomputation
 * restores what it kept on top of that output. */
static void checkpointed_terms(const mfp_profile *p, const _mfp_line *f, const times *tm, int64_t batch,
                               _mfp_layer_terms *t, bool *in_range) {
  double plain = t->tf + t->tb;
  if (p->measured_checkpoint) {
    t->cfpk = bytes_at(&f[MFP_T_CFPK], batch, true, in_range);
    t->ckept = bytes_at(&f[MFP_T_CKEPT], batch, false, in_range);
    t->cbpk = t->crpk = bytes_at(&f[MFP_T_CBPK], batch, true, in_range);
    t->crd = 0;
    t->cbd = bytes_at(&f[MFP_T_CBD], batch, false, in_range);
    double measured = time_at(tm, f, MFP_T_CTF, batch);
    measured += time_at(tm, f, MFP_T_CTB, batch);
    double floor = plain + t->tf; /* the recomputation repeats the layer's forward */
    t->ct = measured > floor ? measured : floor;
    t->crt = t->ct - plain;
  } else {
    t->cfpk = t->fpk;
    t->ckept = t->out;
    t->crpk = t->fpk > t->out ? t->fpk - t->out : 0;
    t->crd = t->kept - t->out;
    t->cbpk = t->bpk;
    t->cbd = t->bd;
    t->ct = plain + t->tf;
    t->crt = t->tf;
  }
}

/* A selectively checkpointed layer's terms (PLAN.md, "Selective
 * checkpointing"): the profile's every-layer-selective runs, fitted; the
 * backward window holds the recomputation of the operations it did not keep.
 * Its time is at least the layer's own: recomputing more is never faster. */
static void selective_terms(const mfp_profile *p, const _mfp_line *f, const times *tm, int64_t batch,
                            _mfp_layer_terms *t, bool *in_range) {
  if (!p->measured_selective) return;
  double plain = t->tf + t->tb;
  t->sfpk = bytes_at(&f[MFP_T_SFPK], batch, true, in_range);
  t->skept = bytes_at(&f[MFP_T_SKEPT], batch, false, in_range);
  t->sbpk = bytes_at(&f[MFP_T_SBPK], batch, true, in_range);
  t->sbd = bytes_at(&f[MFP_T_SBD], batch, false, in_range);
  double measured = time_at(tm, f, MFP_T_STF, batch);
  measured += time_at(tm, f, MFP_T_STB, batch);
  t->st = measured > plain ? measured : plain;
  t->srt = t->st - plain;
}

/* The step of every layer as it is in precision prec at batch b, by the
 * traced times' fits (the optimizer's from the first precision). */
static double fitted_plain_seconds(const mfp_profile *p, mfp_precision prec, int64_t batch) {
  const _mfp_line *f = p->layer_fit[prec];
  double plain = 0;
  for (size_t i = 0; i < p->n_layers; i++) {
    plain += seconds_at(&f[i * MFP_LAYER_TERMS + MFP_T_TF], batch);
    plain += seconds_at(&f[i * MFP_LAYER_TERMS + MFP_T_TB], batch);
  }
  plain += seconds_at(&p->step_fit[prec][MFP_MODE_KEEP][MFP_S_TL], batch);
  plain += seconds_at(&p->step_fit[prec][MFP_MODE_KEEP][MFP_S_TLB], batch);
  return plain + seconds_at(&p->global_fit[MFP_G_TO], batch);
}

/* The untraced step of every layer as it is, in precision prec at batch b,
 * from the profile's timing points (PLAN.md, "Step times"): interpolated
 * between the two around b; above the last, along the last two but not below
 * the last point's; below the first, along the first two, between the first
 * point's time and its time per sample times b. A single point scales with
 * the fitted step (`fitted` at b), within the same bounds. */
static double measured_step(const mfp_profile *p, mfp_precision prec, int64_t batch, double fitted) {
  const _mfp_timing_point *q = NULL;
  size_t k = 0;
  for (size_t j = 0; j < p->n_timing; j++)
    if (p->timing[j].precision == prec && p->timing[j].mode == MFP_MODE_KEEP) {
      if (!q) q = &p->timing[j];
      k++;
    }
  const _mfp_timing_point *first = &q[0], *last = &q[k - 1];
  double b = (double)batch, t;
  if (k == 1) {
    t = first->model_seconds > 0 ? first->seconds * fitted / first->model_seconds : first->seconds;
  } else {
    size_t hi = 1; /* the first point at or above batch, within [1, k - 1] */
    while (hi < k - 1 && q[hi].batch < batch) hi++;
    const _mfp_timing_point *lo = &q[hi - 1], *up = &q[hi];
    double x = (b - (double)lo->batch) / (double)(up->batch - lo->batch);
    t = lo->seconds + x * (up->seconds - lo->seconds);
  }
  if (batch > last->batch && t < last->seconds) t = last->seconds;
  if (batch < first->batch) {
    double proportional = first->seconds * b / (double)first->batch;
    if (t > first->seconds) t = first->seconds;
    if (t < proportional) t = proportional;
  }
  return t;
}

/* The untraced step with every layer in `mode` (checkpointed or selective),
 * in precision prec at batch b: the plain step times the ratio the profile's
 * points of that mode measured to the plain step at their batches, that ratio
 * interpolated between them and held beyond; 0 without such points. */
static double mode_step(const mfp_profile *p, mfp_precision prec, int mode, int64_t batch, double plain) {
  const _mfp_timing_point *prev = NULL; /* points are sorted by precision, mode, batch */
  double prev_ratio = 0;
  for (size_t j = 0; j < p->n_timing; j++) {
    const _mfp_timing_point *q = &p->timing[j];
    if (q->precision != prec || (int)q->mode != mode) continue;
    double base = measured_step(p, prec, q->batch, fitted_plain_seconds(p, prec, q->batch));
    double ratio = base > 0 ? q->seconds / base : 0;
    if (batch <= q->batch) {
      if (!prev) return ratio * plain; /* at or below the first point: its ratio */
      double x = (double)(batch - prev->batch) / (double)(q->batch - prev->batch);
      return (prev_ratio + x * (ratio - prev_ratio)) * plain;
    }
    prev = q, prev_ratio = ratio;
  }
  return prev ? prev_ratio * plain : 0.0; /* above every point: the last one's ratio */
}

/* Each mode's basis (times: step[mode]) in precision prec: the plain step;
 * with points of a mode, what its every-layer step leaves after the loss and
 * the optimizer (at their plain shares), split in its layers' shares. */
static void mode_bases(const mfp_profile *p, const _mfp_model *m, mfp_precision prec, double *basis) {
  double plain = m->measured_step_seconds[prec];
  double rest = (p->step_share[prec][MFP_MODE_KEEP][MFP_S_TL] + p->step_share[prec][MFP_MODE_KEEP][MFP_S_TLB]) * plain;
  if (p->timed[p->first_precision]) rest += p->global_share[MFP_G_TO] * m->measured_step_seconds[p->first_precision];
  for (int mode = 0; mode < MFP_MODE_COUNT; mode++) {
    basis[mode] = plain;
    if (mode == MFP_MODE_KEEP) continue;
    double whole = mode_step(p, prec, mode, m->batch, plain), layers = whole - rest;
    if (whole > 0 && layers > 0 && p->mode_share_sum[prec][mode] > 0) basis[mode] = layers / p->mode_share_sum[prec][mode];
  }
}

mfp_status _mfp_model_eval(const mfp_profile *p, int64_t batch, _mfp_model *m) {
  *m = (_mfp_model){.batch = batch, .n_layers = p->n_layers, .in_range = true};
  for (int k = 0; k < p->n_precisions; k++) { /* the plain steps first: the bases need the first precision's */
    mfp_precision prec = p->precisions[k];
    m->plain_seconds[prec] = fitted_plain_seconds(p, prec, batch);
    if (p->timing_ready && p->timed[prec])
      m->measured_step_seconds[prec] = measured_step(p, prec, batch, m->plain_seconds[prec]);
  }
  for (int k = 0; k < p->n_precisions; k++) {
    mfp_precision prec = p->precisions[k];
    _mfp_layer_terms *terms = calloc(p->n_layers, sizeof *terms); /* terms a profile lacks stay 0 */
    if (!terms) {
      _mfp_model_free(m);
      return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory evaluating the model");
    }
    m->layer[prec] = terms;
    bool timed = p->timing_ready && p->timed[prec];
    double basis[MFP_MODE_COUNT] = {0};
    if (timed) mode_bases(p, m, prec, basis);
    for (size_t i = 0; i < p->n_layers; i++) {
      const _mfp_line *f = p->layer_fit[prec] + i * MFP_LAYER_TERMS;
      const times tm = {timed ? p->layer_share[prec] + i * MFP_LAYER_TERMS : NULL, basis, true};
      terms[i].fpk = bytes_at(&f[MFP_T_FPK], batch, true, &m->in_range);
      terms[i].kept = bytes_at(&f[MFP_T_KEPT], batch, false, &m->in_range);
      terms[i].out = bytes_at(&f[MFP_T_OUT], batch, true, &m->in_range);
      terms[i].bpk = bytes_at(&f[MFP_T_BPK], batch, true, &m->in_range);
      terms[i].bd = bytes_at(&f[MFP_T_BD], batch, false, &m->in_range);
      terms[i].tf = time_at(&tm, f, MFP_T_TF, batch);
      terms[i].tb = time_at(&tm, f, MFP_T_TB, batch);
      checkpointed_terms(p, f, &tm, batch, &terms[i], &m->in_range);
      selective_terms(p, f, &tm, batch, &terms[i], &m->in_range);
      static const int held_term[MFP_MODE_COUNT] = {MFP_T_HELD, MFP_T_CHELD, MFP_T_SHELD};
      for (int mode = 0; mode < MFP_MODE_COUNT && p->measured_held; mode++)
        terms[i].held[mode] = bytes_at(&f[held_term[mode]], batch, true, &m->in_range);
    }
    for (int mode = 0; mode < MFP_MODE_COUNT; mode++) {
      const _mfp_line *s = p->step_fit[prec][mode];
      const times tm = {timed ? p->step_share[prec][mode] : NULL, basis, false};
      _mfp_step_terms *st = &m->step[prec][mode];
      st->lpk = bytes_at(&s[MFP_S_LPK], batch, true, &m->in_range);
      st->ld = bytes_at(&s[MFP_S_LD], batch, false, &m->in_range);
      st->lbpk = bytes_at(&s[MFP_S_LBPK], batch, true, &m->in_range);
      st->lbd = bytes_at(&s[MFP_S_LBD], batch, false, &m->in_range);
      st->tl = time_at(&tm, s, MFP_S_TL, batch);
      st->tlb = time_at(&tm, s, MFP_S_TLB, batch);
    }
  }
  m->boundaries = p->measured_checkpoint;
  m->held_measured = p->measured_held;
  m->fixed = bytes_at(&p->global_fit[MFP_G_FIXED], batch, true, &m->in_range);
  m->opk = bytes_at(&p->global_fit[MFP_G_OPK], batch, true, &m->in_range);
  m->od = bytes_at(&p->global_fit[MFP_G_OD], batch, false, &m->in_range);
  const double first[MFP_MODE_COUNT] = {m->measured_step_seconds[p->first_precision]};
  const times optimizer = {p->timing_ready && p->timed[p->first_precision] ? p->global_share : NULL, first, false};
  m->to = time_at(&optimizer, p->global_fit, MFP_G_TO, batch);
  extrapolation_check(p, m);
  return MFP_OK;
}

void _mfp_model_free(_mfp_model *m) {
  for (int k = 0; k < MFP_PRECISION_COUNT; k++) {
    free(m->layer[k]);
    m->layer[k] = NULL;
  }
}

typedef struct peak_tracker {
  int64_t fixed, peak;
  mfp_simulation *out;
} peak_tracker;

/* A window opening at `cur` with `transient` on top; the first maximum wins. */
static void window_at(peak_tracker *pt, mfp_phase phase, int32_t layer, int64_t cur, int64_t transient) {
  if (cur + transient <= pt->peak) return;
  pt->peak = cur + transient;
  pt->out->peak_phase = phase;
  pt->out->peak_layer = layer;
  pt->out->peak_kept_bytes = cur - pt->fixed;
  pt->out->peak_transient_bytes = transient;
}

/* PLAN.md's walk, line by line. The step time is summed in the order the
 * solver sums it, so both give the same double. */
void _mfp_model_simulate(const _mfp_model *m, const mfp_decision *d, mfp_simulation *out) {
  *out = (mfp_simulation){.size = sizeof *out, .version = MFP_STRUCT_VERSION, .peak_phase = MFP_PHASE_START,
                          .peak_layer = -1, .peak_fixed_bytes = m->fixed};
  size_t n = m->n_layers;
  peak_tracker pt = {m->fixed, m->fixed, out};
  int64_t cur = m->fixed;
  for (size_t i = 0; i < n; i++) {
    const _mfp_layer_terms *t = &m->layer[d[i].precision][i];
    /* Held from here to the end of the step: never given back (PLAN.md). */
    if (i > 0) cur += _mfp_boundary(m, i, d[i - 1].precision, (int)_mfp_decision_mode(&d[i - 1]),
                                    (int)_mfp_decision_mode(&d[i]));
    if (d[i].checkpoint && d[i].selective) {
      window_at(&pt, MFP_PHASE_FORWARD, (int32_t)i, cur, t->sfpk);
      cur += t->skept;
    } else if (d[i].checkpoint) {
      window_at(&pt, MFP_PHASE_FORWARD, (int32_t)i, cur, t->cfpk);
      cur += t->ckept;
    } else {
      window_at(&pt, MFP_PHASE_FORWARD, (int32_t)i, cur, t->fpk);
      cur += t->kept;
    }
  }
  const _mfp_step_terms *st = &m->step[d[n - 1].precision][_mfp_decision_mode(&d[n - 1])];
  window_at(&pt, MFP_PHASE_LOSS, -1, cur, st->lpk);
  cur += st->ld;
  window_at(&pt, MFP_PHASE_LOSS_BACKWARD, -1, cur, st->lbpk);
  cur += st->lbd;
  for (size_t i = n; i-- > 0;) {
    const _mfp_layer_terms *t = &m->layer[d[i].precision][i];
    if (d[i].checkpoint && d[i].selective) { /* one window: its recomputation and its backward */
      window_at(&pt, MFP_PHASE_RECOMPUTE, (int32_t)i, cur, t->sbpk);
      cur += t->sbd;
    } else if (d[i].checkpoint) {
      window_at(&pt, MFP_PHASE_RECOMPUTE, (int32_t)i, cur, t->crpk);
      cur += t->crd;
      window_at(&pt, MFP_PHASE_BACKWARD, (int32_t)i, cur, t->cbpk);
      cur += t->cbd;
    } else {
      window_at(&pt, MFP_PHASE_BACKWARD, (int32_t)i, cur, t->bpk);
      cur += t->bd;
    }
  }
  window_at(&pt, MFP_PHASE_OPTIMIZER, -1, cur, m->opk);
  cur += m->od;
  out->peak_bytes = pt.peak;
  out->end_bytes = cur;

  double seconds = 0, recompute = 0;
  for (size_t i = 0; i < n; i++) {
    const _mfp_layer_terms *t = &m->layer[d[i].precision][i];
    double dt = t->tf + t->tb;
    if (d[i].checkpoint && d[i].selective) {
      dt = t->st;
      recompute += t->srt;
    } else if (d[i].checkpoint) {
      dt = t->ct;
      recompute += t->crt;
    }
    seconds += dt;
  }
  seconds += st->tl;
  seconds += st->tlb;
  seconds += m->to;
  out->step_seconds = seconds;
  out->recompute_seconds = recompute;
}

/* Note [Monotone feasibility]: every peak candidate of the walk is a sum of
 * terms (PLAN.md, "The exact search"): fixed; a prefix of K (kept or out); a
 * transient (fpk, bpk, lpk, lbpk, opk) or a layer's local max(fpk, out,
 * kept + bpk); ld; and the backward suffix ld + lbd + sum_{j>i} (kept_j + bd_j).
 * When each of them is non-decreasing in the batch for every choice of
 * precisions, so is the peak of every plan, and a batch that fits means every
 * smaller one fits. Clamped terms (max(0, line)) are non-decreasing when their
 * slope is >= 0. A suffix telescopes: a layer's backward frees the gradient of
 * its output and makes the gradient of its input, so one layer's kept + bd may
 * shrink with the batch (a head whose logits are wider than its input) while
 * the suffix does not: the check takes the smallest slope of each suffix. */
bool _mfp_model_monotone(const mfp_profile *p, const mfp_precision *allowed, int n_allowed) {
  if (p->global_fit[MFP_G_FIXED].slope < 0 || p->global_fit[MFP_G_OPK].slope < 0) return false;
  size_t n = p->n_layers;
  double suffix = INFINITY; /* smallest slope of ld + lbd + kept + bd of the last layer */
  double loss_only = INFINITY;
  for (int k = 0; k < n_allowed; k++) {
    const _mfp_line *f = p->layer_fit[allowed[k]] + (n - 1) * MFP_LAYER_TERMS;
    for (int mode = 0; mode < MFP_MODE_COUNT; mode++) { /* the loss terms come with the last layer's mode */
      if (mode == MFP_MODE_SELECTIVE && !p->measured_selective) continue;
      const _mfp_line *s = p->step_fit[allowed[k]][mode];
      if (s[MFP_S_LPK].slope < 0 || s[MFP_S_LD].slope < 0 || s[MFP_S_LBPK].slope < 0) return false;
      double loss = s[MFP_S_LD].slope + s[MFP_S_LBD].slope, last;
      if (mode == MFP_MODE_SELECTIVE) last = f[MFP_T_SKEPT].slope + f[MFP_T_SBD].slope;
      else if (mode == MFP_MODE_CHECKPOINT && p->measured_checkpoint) last = f[MFP_T_CKEPT].slope + f[MFP_T_CBD].slope;
      else last = f[MFP_T_KEPT].slope + f[MFP_T_BD].slope; /* derived checkpointed terms add what plain ones do */
      if (loss < loss_only) loss_only = loss;
      if (loss + last < suffix) suffix = loss + last;
    }
  }
  if (loss_only < 0) return false; /* the suffix of the last layer's backward */
  /* A boundary term max(0, held_a - held_b) that is positive at batch 1 and
   * falls with the batch would make a larger batch need less. */
  static const int held_term[MFP_MODE_COUNT] = {MFP_T_HELD, MFP_T_CHELD, MFP_T_SHELD};
  int modes = p->measured_selective ? MFP_MODE_COUNT : MFP_MODE_SELECTIVE;
  for (size_t i = 0; p->measured_checkpoint && p->measured_held && i + 1 < n; i++)
    for (int k = 0; k < n_allowed; k++) {
      const _mfp_line *f = p->layer_fit[allowed[k]] + i * MFP_LAYER_TERMS;
      for (int a = 0; a < modes; a++)
        for (int b = 0; b < modes; b++) {
          const _mfp_line *ha = &f[held_term[a]], *hb = &f[held_term[b]];
          if (ha->slope < hb->slope && _mfp_line_at(ha, 1) > _mfp_line_at(hb, 1)) return false;
        }
    }
  for (size_t i = n; i-- > 0;) {
    double smallest_add = INFINITY;
    for (int k = 0; k < n_allowed; k++) {
      const _mfp_line *f = p->layer_fit[allowed[k]] + i * MFP_LAYER_TERMS;
      if (f[MFP_T_FPK].slope < 0 || f[MFP_T_KEPT].slope < 0 || f[MFP_T_OUT].slope < 0 || f[MFP_T_BPK].slope < 0)
        return false;
      if (f[MFP_T_KEPT].slope + f[MFP_T_BD].slope < smallest_add) smallest_add = f[MFP_T_KEPT].slope + f[MFP_T_BD].slope;
      if (p->measured_checkpoint) { /* the checkpointed choice's terms, measured (derived ones follow from the above) */
        if (f[MFP_T_CFPK].slope < 0 || f[MFP_T_CKEPT].slope < 0 || f[MFP_T_CBPK].slope < 0) return false;
        if (f[MFP_T_CKEPT].slope + f[MFP_T_CBD].slope < smallest_add)
          smallest_add = f[MFP_T_CKEPT].slope + f[MFP_T_CBD].slope;
      }
      if (p->measured_selective) {
        if (f[MFP_T_SFPK].slope < 0 || f[MFP_T_SKEPT].slope < 0 || f[MFP_T_SBPK].slope < 0) return false;
        if (f[MFP_T_SKEPT].slope + f[MFP_T_SBD].slope < smallest_add)
          smallest_add = f[MFP_T_SKEPT].slope + f[MFP_T_SBD].slope;
      }
    }
    if (i + 1 < n) suffix += smallest_add;
    if (suffix < 0) return false; /* the suffix of layer i - 1's backward, or the optimizer's for i = 0 */
  }
  return true;
}

MFP_API mfp_status mfp_simulate(const mfp_profile *profile, int64_t batch, const mfp_decision *decisions,
                                size_t n_layers, mfp_simulation *out) {
  if (!profile || !decisions || !out) return _mfp_error(MFP_ERR_INVALID, "mfp_simulate: NULL argument");
  if (n_layers != profile->n_layers)
    return _mfp_error(MFP_ERR_INVALID, "mfp_simulate: %zu decisions for a profile of %zu layers", n_layers,
                      profile->n_layers);
  if (batch < 1 || batch > MFP_MAX_BATCH_LIMIT)
    return _mfp_error(MFP_ERR_INVALID, "mfp_simulate: batch %lld out of range 1..%lld", (long long)batch,
                      (long long)MFP_MAX_BATCH_LIMIT);
  for (size_t i = 0; i < n_layers; i++) {
    unsigned prec = (unsigned)decisions[i].precision;
    if (prec >= MFP_PRECISION_COUNT || !profile->fitted[prec])
      return _mfp_error(MFP_ERR_INVALID, "mfp_simulate: layer %zu (%s): precision %s is not in the profile", i,
                        profile->layer_names[i], mfp_precision_name((mfp_precision)prec));
    if (decisions[i].selective && !decisions[i].checkpoint)
      return _mfp_error(MFP_ERR_INVALID, "mfp_simulate: layer %zu (%s): selective without checkpoint (selective "
                        "checkpointing is a kind of checkpointing)", i, profile->layer_names[i]);
    if (decisions[i].selective && !profile->measured_selective)
      return _mfp_error(MFP_ERR_INVALID, "mfp_simulate: layer %zu (%s): selective, but the profile has no "
                        "\"selective\" runs", i, profile->layer_names[i]);
  }
  _mfp_model m;
  mfp_status s = _mfp_model_eval(profile, batch, &m);
  if (s != MFP_OK) return s;
  _mfp_model_simulate(&m, decisions, out);
  _mfp_model_free(&m);
  return MFP_OK;
}
