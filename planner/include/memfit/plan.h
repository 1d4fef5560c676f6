/* plan.h — the public C API of memfit's memory planner (libmemfit_plan.so).
 *
 * The planner reads a profile (planner/PROFILE.md) measured in a few real
 * training steps, fits every memory and time term of each layer as
 * intercept + slope * batch, and picks the batch size and, per layer, whether
 * to checkpoint it and its precision, so that the predicted peak fits a budget
 * (the model and the plan JSON: planner/PLAN.md). Intended use:
 *
 *     mfp_profile *profile;
 *     if (mfp_profile_load("profile.json", &profile) != MFP_OK)
 *         fprintf(stderr, "%s\n", mfp_last_error());   // names the JSON path
 *     mfp_options opts;
 *     mfp_options_init(&opts);
 *     opts.budget_bytes = 8ull << 30;
 *     mfp_plan_result *plan;
 *     if (mfp_plan(profile, &opts, &plan) == MFP_OK) {   // MFP_ERR_NO_FIT: nothing fits
 *         char *json;
 *         if (mfp_plan_to_json(plan, &json) == MFP_OK) { puts(json); mfp_free(json); }
 *         mfp_plan_free(plan);
 *     }
 *     mfp_profile_free(profile);
 *
 * From Python (ctypes) one call does it all: mfp_plan_json(profile, options, &plan).
 *
 * Conventions: functions that can fail return an mfp_status and leave a message
 * in the calling thread's mfp_last_error(). Nothing in the library aborts the
 * process. Handles are immutable once made: one handle may be used from many
 * threads at a time.
 */
#ifndef MEMFIT_PLAN_H
#define MEMFIT_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(MEMFIT_PLAN_BUILDING) && defined(__GNUC__)
#define MFP_API __attribute__((visibility("default")))
#else
#define MFP_API
#endif

#define MFP_VERSION_MAJOR 0
#define MFP_VERSION_MINOR 1
#define MFP_VERSION_PATCH 0

/* The public structs start with {size, version} so that a foreign caller
 * (ctypes) can check that its layout matches the library's. */
#define MFP_STRUCT_VERSION 3 /* 3: mfp_decision.selective, mfp_options.no_selective */

/* ---------------------------------------------------------------- status */

typedef enum mfp_status {
  MFP_OK = 0,
  MFP_ERR_INVALID = 1,     /* bad argument or option: NULL, unknown key, bad value */
  MFP_ERR_PROFILE = 2,     /* the profile is not valid JSON, breaks PROFILE.md, or cannot be fitted */
  MFP_ERR_NO_FIT = 3,      /* nothing fits the budget, not even batch 1 */
  MFP_ERR_IO = 4,          /* a file could not be read */
  MFP_ERR_HOST_MEMORY = 5, /* out of host memory */
  MFP_ERR_INTERNAL = 6     /* the planner's self-verification failed: a bug */
} mfp_status;

/* The calling thread's message for the last failed call ("" if none). */
MFP_API const char *mfp_last_error(void);
MFP_API const char *mfp_status_name(mfp_status s);
MFP_API const char *mfp_version(void);
/* Frees what the library returned as char* (JSON text). */
MFP_API void mfp_free(void *p);

/* ----------------------------------------------------- enums and names */

typedef enum mfp_precision {
  MFP_FP32 = 0, /* no autocast */
  MFP_BF16 = 1,
  MFP_FP16 = 2,
  MFP_PRECISION_COUNT = 3
} mfp_precision;

typedef enum mfp_objective {
  MFP_OBJECTIVE_MAX_BATCH = 0,   /* largest batch that fits; then the fastest plan for it */
  MFP_OBJECTIVE_THROUGHPUT = 1,  /* largest batch / step time */
  MFP_OBJECTIVE_GLOBAL_BATCH = 2 /* micro-batch m | N minimizing (N/m) * step time(m) */
} mfp_objective;

/* Where in the step a peak is (mfp_simulation.peak_phase). */
typedef enum mfp_phase {
  MFP_PHASE_START = 0,     /* the fixed bytes alone */
  MFP_PHASE_FORWARD,       /* a layer's forward */
  MFP_PHASE_LOSS,
  MFP_PHASE_LOSS_BACKWARD,
  MFP_PHASE_RECOMPUTE,     /* a checkpointed layer's forward, run again in backward */
  MFP_PHASE_BACKWARD,      /* a layer's backward */
  MFP_PHASE_OPTIMIZER
} mfp_phase;

/* "fp32", "bf16", "fp16"; "max-batch", "throughput", "global-batch";
 * "start", "forward", "loss", "loss_backward", "recompute", "backward", "optimizer". */
MFP_API const char *mfp_precision_name(mfp_precision p);
MFP_API const char *mfp_objective_name(mfp_objective o);
MFP_API const char *mfp_phase_name(mfp_phase p);

/* Sizes, read by memfit's one size parser (libmemfit's mf_parse_size, which
 * the allocator's options and Python use too): a plain decimal number of
 * bytes, optionally with a fraction, and an optional unit B, K/KiB/KB,
 * M/MiB/MB, G/GiB/GB, T/TiB/TB (all binary, case-insensitive): "8GiB", "1.5G",
 * "512". At most 2^63 bytes; a nonzero size below one byte is refused. */
MFP_API mfp_status mfp_parse_size(const char *text, uint64_t *bytes);

/* --------------------------------------------------------------- profile */

typedef struct mfp_profile mfp_profile;

/* Parses and validates a profile (PROFILE.md) and fits its terms. A missing or
 * mistyped field is an MFP_ERR_PROFILE whose message names its JSON path,
 * e.g. "settings[2].layers[5].forward.peak: missing". */
MFP_API mfp_status mfp_profile_parse(const char *json, mfp_profile **out);
/* The same from a file ("-": standard input); MFP_ERR_IO when it cannot be read. */
MFP_API mfp_status mfp_profile_load(const char *path, mfp_profile **out);
MFP_API void mfp_profile_free(mfp_profile *profile);

MFP_API size_t mfp_profile_layer_count(const mfp_profile *profile);
/* The layer's name (module path), NULL when i is out of range. */
MFP_API const char *mfp_profile_layer_name(const mfp_profile *profile, size_t i);
MFP_API bool mfp_profile_has_precision(const mfp_profile *profile, mfp_precision p);

/* --------------------------------------------------------------- options */

typedef struct mfp_options {
  uint32_t size;          /* sizeof(mfp_options): set by mfp_options_init */
  uint32_t version;       /* MFP_STRUCT_VERSION */
  uint64_t budget_bytes;  /* the device's budget; required (0 is an error) */
  double headroom;        /* fraction of the budget kept free: predicted reserved <= budget * (1 - headroom);
                             MFP_HEADROOM_AUTO (the default): 1% (25% for a profile from segments)
                             + the model's self-check error (PLAN.md) */
  mfp_objective objective;
  int64_t global_batch;   /* N, for MFP_OBJECTIVE_GLOBAL_BATCH only */
  int64_t max_batch;      /* the largest batch considered; 65536 */
  int32_t precision_count; /* 0: every precision the profile has, in the order of its settings */
  mfp_precision precisions[MFP_PRECISION_COUNT]; /* allowed; the first one is the baselines' */
  uint32_t front_cap;     /* states per layer in the exact search before it coarsens; 0: default */
  bool no_selective;      /* true: no layer selectively checkpointed, even where the profile measured it
                             (JSON "selective": false); by default a choice wherever it was measured */
} mfp_options;

#define MFP_HEADROOM_AUTO (-1.0)

/* Sets the defaults above (budget 0: the caller must set it). */
MFP_API void mfp_options_init(mfp_options *opts);
/* Parses the options JSON object (PLAN.md, "Options") on top of the defaults:
 * {"budget": "8GiB", "objective": "throughput", "precisions": ["bf16"], ...}.
 * An unknown key or a bad value is an MFP_ERR_INVALID naming the key. */
MFP_API mfp_status mfp_options_parse_json(const char *json, mfp_options *opts);

/* ------------------------------------------------------------- simulator */

/* One layer's decision. */
typedef struct mfp_decision {
  bool checkpoint;          /* recompute its forward in backward, keeping only its inputs */
  mfp_precision precision;
  /* With checkpoint: selective activation checkpointing (PLAN.md, "Selective
   * checkpointing"): its matmul and attention outputs are kept, only its other
   * operations are recomputed. Needs the profile's "selective" runs. */
  bool selective;
} mfp_decision;

typedef struct mfp_simulation {
  uint32_t size, version;      /* filled by the library */
  int64_t peak_bytes;          /* predicted peak, allocated bytes */
  int64_t peak_fixed_bytes;    /* at the peak: the step's fixed bytes */
  int64_t peak_kept_bytes;     /* + what the step holds beyond them when the peak's window opens */
  int64_t peak_transient_bytes; /* + the window's transient on top */
  mfp_phase peak_phase;
  int32_t peak_layer;          /* the layer of the peak's window, -1 for none */
  int64_t end_bytes;           /* live bytes at the end of the step */
  double step_seconds;         /* predicted step time, recomputation included */
  double recompute_seconds;    /* of which recomputation */
} mfp_simulation;

/* Runs PLAN.md's simulator for one step at `batch` with one decision per
 * layer (n_layers must be the profile's layer count). */
MFP_API mfp_status mfp_simulate(const mfp_profile *profile, int64_t batch,
                                const mfp_decision *decisions, size_t n_layers,
                                mfp_simulation *out);

/* ------------------------------------------------------------------ plan */

typedef struct mfp_plan_result mfp_plan_result;

typedef struct mfp_plan_summary {
  uint32_t size, version;          /* filled by the library */
  int64_t batch_size;              /* the micro-batch */
  int64_t grad_accumulation_steps; /* 1 unless the objective is global-batch */
  int64_t global_batch;            /* batch_size * grad_accumulation_steps */
  uint64_t budget_bytes;
  uint64_t usable_bytes;           /* what the plan's reserved bytes may reach: budget * (1 - headroom) */
  uint64_t usable_allocated_bytes; /* what its allocated peak may reach: usable less the reserve model */
  double headroom;                 /* the fraction applied (resolved when automatic) */
  bool headroom_auto;              /* derived from the profile, not given */
  int64_t predicted_peak_bytes;    /* allocated bytes at the peak */
  int64_t predicted_reserved_bytes; /* reserved bytes the allocator will hold then */
  int64_t reserve_overhead_bytes;  /* reserved beyond allocated, calibrated on the profile */
  double reserve_ratio;            /* peak reserved / peak allocated, largest profiled (segments) */
  int64_t granule_bytes;           /* the profiled allocator's granule; 0: segments */
  double model_error_reserved;     /* largest relative self-check error of reserved bytes */
  /* The checkpoint check (PLAN.md): the largest relative error of the model on
   * the profile's measured every-layer-checkpointed plans, and what a plan that
   * checkpoints was kept below its limit for it (0: the plan checkpoints none). */
  double model_error_checkpoint;
  int64_t checkpoint_correction_bytes;
  double predicted_step_seconds, predicted_recompute_seconds;
  double throughput_samples_per_second;
  double model_error;              /* largest relative self-check error */
  double planning_seconds;
  bool exact;                      /* proved optimal: no search had to coarsen its front */
  bool monotone;                   /* provably, every batch below a fitting one fits (PLAN.md) */
  /* The largest batch that fits with no layer / every layer checkpointed, all
   * in the first allowed precision (0: not even 1), and its peak (at batch 1 if 0). */
  int64_t no_checkpoint_batch, no_checkpoint_peak_bytes;
  int64_t all_checkpoint_batch, all_checkpoint_peak_bytes;
  mfp_precision baseline_precision;
  /* The search's work: batch sizes at which the model was evaluated, runs of
   * the per-batch solver, states in the largest Pareto front. */
  int64_t batches_evaluated, solver_runs, largest_front;
  /* The ladder check (PLAN.md): what every plan was kept below its limit for,
   * the model's under-prediction of the plain steps the timing ladder measured,
   * at the plan's batch (0: none, or the profile recorded no ladder peaks). */
  int64_t ladder_correction_bytes;
} mfp_plan_summary;

/* One layer of a plan. */
typedef struct mfp_plan_layer {
  const char *name;          /* owned by the plan */
  mfp_decision decision;
  int64_t kept_bytes;        /* what its forward keeps until its backward: its output when checkpointed */
  double recompute_seconds;  /* its forward time when checkpointed, else 0 */
} mfp_plan_layer;

/* Plans; MFP_ERR_NO_FIT when not even batch 1 fits (the message gives the
 * peak of every layer checkpointed at batch 1 in the cheapest precision). */
MFP_API mfp_status mfp_plan(const mfp_profile *profile, const mfp_options *opts, mfp_plan_result **out);
MFP_API void mfp_plan_free(mfp_plan_result *plan);
MFP_API mfp_status mfp_plan_get_summary(const mfp_plan_result *plan, mfp_plan_summary *out);
MFP_API size_t mfp_plan_layer_count(const mfp_plan_result *plan);
/* Layer i, in profile order. */
MFP_API mfp_status mfp_plan_get_layer(const mfp_plan_result *plan, size_t i, mfp_plan_layer *out);
/* The simulator's account of the plan's step: where the peak is and its parts. */
MFP_API mfp_status mfp_plan_get_simulation(const mfp_plan_result *plan, mfp_simulation *out);
/* The plan JSON (PLAN.md, "The plan"); free *json with mfp_free. */
MFP_API mfp_status mfp_plan_to_json(const mfp_plan_result *plan, char **json);

/* One call for ctypes: profile JSON text + options JSON text -> plan JSON text
 * (free it with mfp_free). *plan_json is NULL on failure. */
MFP_API mfp_status mfp_plan_json(const char *profile_json, const char *options_json, char **plan_json);

#ifdef __cplusplus
}
#endif

#endif /* MEMFIT_PLAN_H */
