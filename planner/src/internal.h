/* internal.h — what the planner's source files share and nothing outside them
 * sees: the profile and plan structs, the fitted lines, the model at one batch
 * size, the exact solver's interface. Grouped by the file that defines them. */
#ifndef MEMFIT_PLAN_INTERNAL_H
#define MEMFIT_PLAN_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "memfit/plan.h"

/* Limits that keep every int64 sum of the model far from overflow: a term is
 * at most 16 TiB in magnitude, and a step sums fewer than 3 * 65536 + 16 of
 * them (< 2^62). No device is near 16 TiB. */
#define MFP_MAX_BYTES ((int64_t)1 << 44)
/* The longest time a profile may report (a day and more per layer or step): sums over
 * layers, batches and accumulation steps then stay far from overflow. */
#define MFP_MAX_SECONDS 1e5
#define MFP_MAX_LAYERS 65536
/* Profile byte counts are read into doubles to be fitted: exact up to 2^53. */
#define MFP_MAX_PROFILE_BYTES ((int64_t)1 << 53)
#define MFP_MAX_BATCH_LIMIT ((int64_t)1 << 30)
#define MFP_DEFAULT_MAX_BATCH 65536
/* The automatic headroom's floor (PLAN.md, "Reserved bytes and headroom"):
 * with page-mapped pools, what the profile cannot show (a plan's own partial
 * granules, run-to-run variation); with segments, their holes, which grow with
 * the batch and the plan in ways a small-batch profile does not show (reserved
 * was measured at 1.07-1.31x allocated). */
#define MFP_HEADROOM_FLOOR 0.01
#define MFP_HEADROOM_FLOOR_SEGMENTS 0.25
#define MFP_DEFAULT_FRONT_CAP 16384

/* ---------------------------------------------------------------- errors.c */

mfp_status _mfp_error(mfp_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void _mfp_clear_error(void);
/* "1.50 GiB" into buf. */
double _mfp_now_seconds(void);

/* --------------------------------------------------------------- profile.c */

/* "an object", "a list", ...: a JSON value's type for error messages (jansson's json_t). */
struct json_t;
const char *_mfp_json_type_name(const struct json_t *v);

/* The measured value of every model term in one setting, before fitting. */
/* MFP_T_C*: the same layer measured with every layer checkpointed (the
 * setting's optional "checkpointed" run; PLAN.md, "What a checkpointed layer
 * keeps"): its forward transient and what it keeps, its backward window with
 * the recomputation inside, and their times. MFP_T_S*: the same six from the
 * optional "selective" run (every layer under selective checkpointing;
 * PLAN.md, "Selective checkpointing"). Each run's six are in this order, so
 * a run's terms are its first term + MFP_RUN_*. */
/* MFP_T_HELD, MFP_T_CHELD, MFP_T_SHELD: the bytes of the layer's output that
 * its own backward frees in that run, i.e. that the layer itself holds
 * (optional "output_held_bytes"; PLAN.md, "The boundary term"). */
enum {
  MFP_T_FPK, MFP_T_KEPT, MFP_T_OUT, MFP_T_BPK, MFP_T_BD, MFP_T_TF, MFP_T_TB, MFP_T_HELD,
  MFP_T_CFPK, MFP_T_CKEPT, MFP_T_CBPK, MFP_T_CBD, MFP_T_CTF, MFP_T_CTB, MFP_T_CHELD,
  MFP_T_SFPK, MFP_T_SKEPT, MFP_T_SBPK, MFP_T_SBD, MFP_T_STF, MFP_T_STB, MFP_T_SHELD,
  MFP_LAYER_TERMS
};
enum { MFP_RUN_FPK, MFP_RUN_KEPT, MFP_RUN_BPK, MFP_RUN_BD, MFP_RUN_TF, MFP_RUN_TB, MFP_RUN_HELD };

/* A layer's three ways to run (PLAN.md): as it is, checkpointed, selectively
 * checkpointed. The solver's options are precision x mode. */
typedef enum { MFP_MODE_KEEP, MFP_MODE_CHECKPOINT, MFP_MODE_SELECTIVE, MFP_MODE_COUNT } _mfp_mode;
/* A mode's name in a profile's "timing" entries and the plan's time_calibration. */
static inline const char *_mfp_mode_name(int mode) {
  static const char *const names[MFP_MODE_COUNT] = {"plain", "checkpointed", "selective"};
  return mode >= 0 && mode < MFP_MODE_COUNT ? names[mode] : NULL;
}
static inline _mfp_mode _mfp_decision_mode(const mfp_decision *d) {
  return !d->checkpoint ? MFP_MODE_KEEP : d->selective ? MFP_MODE_SELECTIVE : MFP_MODE_CHECKPOINT;
}
enum { MFP_S_LPK, MFP_S_LD, MFP_S_LBPK, MFP_S_LBD, MFP_S_TL, MFP_S_TLB, MFP_STEP_TERMS };
enum { MFP_G_FIXED, MFP_G_OPK, MFP_G_OD, MFP_G_TO, MFP_GLOBAL_TERMS };

typedef struct _mfp_setting {
  int64_t batch;
  mfp_precision precision;
  int64_t peak_allocated;
  int64_t peak_reserved;
  double step_seconds;
  /* The setting's run with every layer checkpointed, when the profile has it
   * (peak -1: it has none), and with every layer selectively checkpointed. */
  int64_t ckpt_peak_allocated, ckpt_peak_reserved;
  double ckpt_step_seconds;
  int64_t sel_peak_allocated, sel_peak_reserved;
  double sel_step_seconds;
  double *layer_values; /* n_layers * MFP_LAYER_TERMS */
  bool held_missing;    /* some layer of one of its runs has no "output_held_bytes" */
  /* The loss windows per mode of the last layer: its optional runs' own (what
   * the last layer keeps changes what the loss frees); times from the setting. */
  double step_values[MFP_MODE_COUNT][MFP_STEP_TERMS];
  double global_values[MFP_GLOBAL_TERMS];
} _mfp_setting;

/* A plan with every layer checkpointed, run while profiling: its measured peak
 * against the model's (PLAN.md, "The checkpoint check"). */
typedef struct _mfp_checkpoint_check {
  int64_t batch;
  mfp_precision precision;
  int64_t measured, predicted;
  bool *checkpointed; /* per layer: the plan that ran (every layer when the profile does not say);
                        NULL in a plan's copy */
  bool *selective;    /* per layer, of those checkpointed: selectively; NULL in a plan's copy */
  size_t n_checkpointed, n_selective;
} _mfp_checkpoint_check;

/* A step time measured without the tracer (the profile's optional "timing"):
 * in one precision, at one batch, every layer in one mode (as it is: the
 * ladder; or checkpointed, selectively); what the traced per-layer times are
 * calibrated to (PLAN.md, "Step times"). */
typedef struct _mfp_timing_point {
  mfp_precision precision;
  _mfp_mode mode; /* every layer as it is (the ladder), or every layer checkpointed / selectively */
  int64_t batch;
  double seconds;       /* measured (the mean of a profile's entries for this precision, mode and batch) */
  double model_seconds; /* plain points: the uncalibrated model's step for it (the traced times' fits) */
  int64_t measured_peak; /* the untraced steps' peak allocated bytes (the largest of a triple's entries); -1: not recorded */
  int64_t model_peak;    /* with a measured peak: the model's peak, every layer in the point's mode */
} _mfp_timing_point;
#define MFP_MAX_TIMING_POINTS 4096

/* value(b) = center_value + slope * (b - center_batch): centred, so that the
 * fit reproduces a two-batch profile exactly. */
typedef struct _mfp_line {
  double center_batch, center_value, slope;
} _mfp_line;

struct mfp_profile {
  size_t n_layers;
  char **layer_names;
  char *job, *device_name;
  size_t n_settings;
  _mfp_setting *settings;
  int n_precisions;                        /* present, in the order of first appearance */
  mfp_precision precisions[MFP_PRECISION_COUNT];
  mfp_precision first_precision;           /* settings[0]'s: fixed and optimizer terms */
  int64_t largest_batch;
  bool measured_checkpoint; /* every setting has its "checkpointed" run: the MFP_T_C* terms are measured */
  bool measured_selective;  /* every setting has its "selective" run: layers may be selectively checkpointed */
  bool measured_held;       /* every layer of every run has "output_held_bytes" (else boundaries charge all of out) */
  int64_t granule;          /* the allocator's page-mapped granule; 0: segments (or not recorded) */
  int64_t reserve_overhead; /* max over settings of peak reserved - peak allocated */
  double reserve_ratio;     /* max over settings of peak reserved / peak allocated */
  _mfp_checkpoint_check *checks; /* measured plans with every layer checkpointed (optional) */
  size_t n_checks;
  /* Per precision, their measured - predicted peak, fitted over the batch. */
  double check_intercept[MFP_PRECISION_COUNT], check_slope[MFP_PRECISION_COUNT];
  bool checked[MFP_PRECISION_COUNT];
  _mfp_timing_point *timing; /* sorted by precision, mode, batch; one per triple (optional) */
  size_t n_timing;
  bool timing_ready;         /* model_seconds filled in: _mfp_model_eval calibrates the times */
  /* With timing points, each time term of a precision is its share of the
   * setting's traced step (the mean over the precision's settings) times the
   * measured untraced step (PLAN.md, "Step times"); timed[prec] says which
   * precisions have points. Indexed like layer_values, step_values and
   * global_values; only the time terms are filled. */
  bool timed[MFP_PRECISION_COUNT];
  double *layer_share[MFP_PRECISION_COUNT]; /* n_layers * MFP_LAYER_TERMS */
  double step_share[MFP_PRECISION_COUNT][MFP_MODE_COUNT][MFP_STEP_TERMS];
  double global_share[MFP_GLOBAL_TERMS];    /* of the first precision's settings */
  /* Per precision and mode, the sum over layers of that mode's time shares
   * (forward + backward): with points of the mode, its layers' times split the
   * measured step of the mode less the loss and optimizer in these proportions. */
  double mode_share_sum[MFP_PRECISION_COUNT][MFP_MODE_COUNT];
  bool fitted[MFP_PRECISION_COUNT];
  _mfp_line *layer_fit[MFP_PRECISION_COUNT]; /* n_layers * MFP_LAYER_TERMS */
  _mfp_line step_fit[MFP_PRECISION_COUNT][MFP_MODE_COUNT][MFP_STEP_TERMS]; /* by the last layer's precision and mode */
  _mfp_line global_fit[MFP_GLOBAL_TERMS];
};

/* ------------------------------------------------------------------- fit.c */

/* Fits every term of every precision; MFP_ERR_PROFILE when a precision has
 * fewer than two distinct batch sizes. */
mfp_status _mfp_fit_profile(mfp_profile *p);
/* The time terms' shares of their setting's traced step, for each precision
 * the profile has timing points of (PLAN.md, "Step times"). */
mfp_status _mfp_fit_time_shares(mfp_profile *p);
double _mfp_line_at(const _mfp_line *line, int64_t batch);

/* ----------------------------------------------------------------- model.c */

/* A layer's terms at one batch. Not checkpointed: forward transient fpk, then
 * it keeps `kept`; its backward has transient bpk and changes the live bytes
 * by bd. Checkpointed: forward transient cfpk, keeps ckept; its backward opens
 * with the recomputation (transient crpk, then the live bytes change by crd)
 * and then has transient cbpk and change cbd; step time ct of which crt is
 * recomputation. From a profile without measured checkpointed runs these are
 * derived from the uncheckpointed terms (PLAN.md, "What a checkpointed layer
 * keeps"). */
typedef struct _mfp_layer_terms {
  int64_t fpk, kept, out, bpk, bd;
  double tf, tb;
  int64_t cfpk, ckept, crpk, crd, cbpk, cbd;
  double ct, crt;
  /* Selectively checkpointed (profile with "selective" runs only): forward
   * transient, kept, backward window (recomputation inside) and change, time
   * and the part of it that is recomputation. */
  int64_t sfpk, skept, sbpk, sbd;
  double st, srt;
  /* By mode: what of its output the layer holds until its own backward (0
   * when the profile does not say: _mfp_boundary then charges all of out). */
  int64_t held[MFP_MODE_COUNT];
} _mfp_layer_terms;

typedef struct _mfp_step_terms {
  int64_t lpk, ld, lbpk, lbd;
  double tl, tlb;
} _mfp_step_terms;

/* Every term at one batch size, rounded to bytes (PLAN.md, "The memory model"). */
typedef struct _mfp_model {
  int64_t batch;
  size_t n_layers;
  _mfp_layer_terms *layer[MFP_PRECISION_COUNT]; /* NULL for a precision not profiled */
  _mfp_step_terms step[MFP_PRECISION_COUNT][MFP_MODE_COUNT]; /* by the last layer's precision and mode */
  int64_t fixed, opk, od;
  double to;
  /* Whether boundaries between layers of different modes are charged
   * (PLAN.md, "The boundary term"): with measured checkpointed runs; the older
   * model and its check stand as they were. */
  bool boundaries;
  bool held_measured; /* the profile says what each layer holds; else every boundary is charged the whole output */
  bool in_range; /* every term within +-MFP_MAX_BYTES; else the batch does not fit */
  /* Per precision: the step of every layer as it is by the traced times' fits,
   * and the measured untraced step its times are shares of (0: the precision
   * has no timing points and its times are the fits'; PLAN.md, "Step times"). */
  double plain_seconds[MFP_PRECISION_COUNT];
  double measured_step_seconds[MFP_PRECISION_COUNT];
} _mfp_model;

/* The boundary term charged before layer i's forward (i >= 1): what of layer
 * i - 1's output it holds in its own mode and not in layer i's, which the
 * model would otherwise free twice (PLAN.md, "The boundary term"). */
static inline int64_t _mfp_boundary(const _mfp_model *m, size_t i, mfp_precision before_precision, int mode_before,
                                    int mode_here) {
  if (i == 0 || !m->boundaries || mode_before == mode_here || mode_before < 0) return 0;
  const _mfp_layer_terms *t = &m->layer[before_precision][i - 1];
  if (!m->held_measured) return t->out;
  int64_t c = t->held[mode_before] - t->held[mode_here];
  return c > 0 ? c : 0;
}

mfp_status _mfp_model_eval(const mfp_profile *p, int64_t batch, _mfp_model *m);
void _mfp_model_free(_mfp_model *m);
/* Decisions must name precisions the model has. */
void _mfp_model_simulate(const _mfp_model *m, const mfp_decision *d, mfp_simulation *out);
/* Would every batch below a fitting one fit too? (PLAN.md, "Search"). */
bool _mfp_model_monotone(const mfp_profile *p, const mfp_precision *allowed, int n_allowed);

/* What a plan that checkpoints any layer must keep free at `batch` beyond the
 * model's peak: the checkpoint checks' under-prediction, fitted (0 without checks). */
int64_t _mfp_checkpoint_correction(const mfp_profile *p, int64_t batch);

/* ---------------------------------------------------------------- ladder.c */

/* What a plan at `batch` with layers in `mode` must keep free beyond the
 * model's peak: the largest, over the allowed precisions, of the model's
 * under-prediction of the timing ladder's peaks of that mode (every layer as
 * it is, checkpointed or selectively checkpointed), interpolated in the batch;
 * a precision without points of the mode takes its plain points' (PLAN.md,
 * "The ladder check"; 0 without recorded peaks). */
int64_t _mfp_ladder_correction(const mfp_profile *p, const mfp_precision *allowed, int n_allowed, _mfp_mode mode,
                               int64_t batch);

/* ----------------------------------------------------------------- solve.c */

typedef struct _mfp_solve_request {
  const _mfp_model *model;
  const mfp_precision *allowed;
  int n_allowed;
  int64_t usable;      /* the peak must be <= usable, less the corrections below of what the plan uses */
  bool timed;          /* false: only whether some plan fits */
  uint32_t front_cap;
  /* A plan with any layer in mode m keeps mode_correction[m] free (>= 0; PLAN.md,
   * "The ladder check"), the largest of its modes'; one that checkpoints any
   * layer also checkpoint_correction ("The checkpoint check"). */
  int64_t mode_correction[MFP_MODE_COUNT];
  int64_t checkpoint_correction;
  unsigned modes;        /* internal to solve.c: the modes a pass may use, a bit per mode */
  bool selective;        /* layers may be selectively checkpointed (the profile measured it) */
} _mfp_solve_request;

typedef struct _mfp_solve_result {
  bool found;
  bool exact;          /* no front was coarsened */
  double step_seconds; /* the plan's, when timed */
  int64_t peak_bytes;
  size_t largest_front;
  mfp_decision *decisions; /* caller's array of n_layers, filled when found */
} _mfp_solve_result;

/* The fastest plan (timed) or any plan (untimed) whose peak fits. */
mfp_status _mfp_solve(const _mfp_solve_request *req, _mfp_solve_result *res);
/* The fastest plan ignoring memory (no checkpoint, fastest precisions). */
void _mfp_fastest_plan(const _mfp_model *m, const mfp_precision *allowed, int n_allowed,
                       mfp_decision *out, double *step_seconds);

/* ---------------------------------------------------------------- search.c */

typedef struct _mfp_self_check {
  int64_t batch;
  mfp_precision precision;
  int64_t measured, predicted;
  double error;
  int64_t measured_reserved, predicted_reserved;
  double reserved_error;
  double measured_seconds, predicted_seconds;
  bool checkpointed; /* the setting's run with every layer checkpointed */
  bool selective;    /* ... selectively (checkpointed is true too) */
} _mfp_self_check;

typedef struct _mfp_baseline {
  int64_t batch;  /* 0: not even batch 1 fits */
  int64_t peak;   /* at that batch (at batch 1 when 0) */
} _mfp_baseline;

struct mfp_plan_result {
  mfp_options opts;            /* resolved: precisions filled in */
  mfp_plan_summary summary;
  mfp_simulation sim;
  size_t n_layers;
  char **layer_names;
  mfp_decision *decisions;
  int64_t *kept_bytes;
  double *recompute_seconds;
  char *job;
  int64_t largest_profiled_batch;
  _mfp_baseline no_checkpoint, all_checkpoint;
  size_t n_checks;
  _mfp_self_check *checks;
  _mfp_checkpoint_check *profile_checks; /* a copy of the profile's checkpoint checks */
  size_t profile_checks_n;
  _mfp_timing_point *timing; /* a copy of the profile's timing points */
  size_t n_timing;
  double measured_step_seconds[MFP_PRECISION_COUNT]; /* at the plan's batch (the model's) */
};

/* ------------------------------------------------------------- options.c */

/* Checks an options struct and fills in the default precisions. */
mfp_status _mfp_options_resolve(const mfp_profile *p, const mfp_options *in, mfp_options *out);

#endif /* MEMFIT_PLAN_INTERNAL_H */
