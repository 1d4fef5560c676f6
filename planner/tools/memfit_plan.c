/* memfit_plan.c — memfit-plan, the planner's command line: reads a profile,
 * plans for a budget and an objective, prints a table or the plan JSON, and
 * maps every failure to its exit status (see usage()). */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "memfit/memfit.h"
#include "memfit/plan.h"

enum exit_status {
  EXIT_OK = 0,
  EXIT_RUNTIME = 1, /* out of host memory, internal error, output not written */
  EXIT_INPUT = 2,   /* usage error, bad profile or option */
  EXIT_NO_FIT = 3   /* nothing fits the budget */
};

static void usage(FILE *out) {
  fputs("usage: memfit-plan PROFILE.json --budget SIZE [--objective max-batch|throughput|global-batch=N]\n"
        "                   [--precisions fp32,bf16,fp16] [--max-batch N] [--headroom F|auto] [--json]\n"
        "                   [--no-selective] [-o plan.json]\n"
        "\n"
        "Plans the batch size and, per layer, checkpointing and precision so that the\n"
        "predicted peak fits the budget (planner/PLAN.md). PROFILE '-' reads standard input.\n"
        "\n"
        "  --budget SIZE      the device's budget: 8GiB, 1.5G, 512MiB, or bytes\n"
        "  --objective O      max-batch (default): the largest batch, then the fastest plan\n"
        "                     throughput: the most samples per second\n"
        "                     global-batch=N: micro-batch m | N and N/m accumulation steps,\n"
        "                     fastest per global batch\n"
        "  --precisions LIST  allowed precisions, the first one for the baselines\n"
        "                     (default: every precision of the profile)\n"
        "  --max-batch N      the largest batch considered (default 65536)\n"
        "  --headroom F|auto  fraction of the budget kept free (default auto: 1%, or 25% for a\n"
        "                     profile from segments, + the model's self-check error; the\n"
        "                     reserve model is applied on top of it)\n"
        "  --no-selective     no layer selectively checkpointed (by default a choice where the\n"
        "                     profile has \"selective\" runs)\n"
        "  --json             print the plan JSON instead of the table\n"
        "  -o FILE            also write the plan JSON to FILE\n"
        "\n"
        "Exit status: 0 ok, 1 runtime failure, 2 usage error or bad input, 3 nothing fits.\n",
        out);
}

static int usage_error(const char *fmt, const char *arg) {
  fputs("memfit-plan: ", stderr);
  fprintf(stderr, fmt, arg);
  fputs("\n\n", stderr);
  usage(stderr);
  return EXIT_INPUT;
}

static bool parse_int(const char *text, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(text, &end, 10);
  if (errno || end == text || *end) return false;
  *out = v;
  return true;
}

static int parse_objective(const char *text, mfp_options *o) {
  if (strcmp(text, "max-batch") == 0) o->objective = MFP_OBJECTIVE_MAX_BATCH;
  else if (strcmp(text, "throughput") == 0) o->objective = MFP_OBJECTIVE_THROUGHPUT;
  else if (strncmp(text, "global-batch=", 13) == 0) {
    o->objective = MFP_OBJECTIVE_GLOBAL_BATCH;
    if (!parse_int(text + 13, &o->global_batch) || o->global_batch < 1)
      return usage_error("--objective global-batch=N wants a positive integer N, got '%s'", text);
  } else {
    return usage_error("unknown objective '%s' (max-batch, throughput or global-batch=N)", text);
  }
  return EXIT_OK;
}

static int parse_precisions(const char *text, mfp_options *o) {
  char list[64];
  if (strlen(text) >= sizeof list) return usage_error("--precisions '%s': too long", text);
  strcpy(list, text);
  o->precision_count = 0;
  for (char *save = NULL, *item = strtok_r(list, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
    int found = -1;
    for (int p = 0; p < MFP_PRECISION_COUNT; p++)
      if (strcmp(item, mfp_precision_name((mfp_precision)p)) == 0) found = p;
    if (found < 0) return usage_error("unknown precision '%s' (fp32, bf16 or fp16)", item);
    for (int k = 0; k < o->precision_count; k++)
      if (o->precisions[k] == (mfp_precision)found) return usage_error("precision '%s' is listed twice", item);
    if (o->precision_count == MFP_PRECISION_COUNT) return usage_error("--precisions '%s': too many", text);
    o->precisions[o->precision_count++] = (mfp_precision)found;
  }
  if (o->precision_count == 0) return usage_error("--precisions '%s': empty", text);
  return EXIT_OK;
}

/* Sizes for people: memfit's one byte formatter. */
static const char *human(int64_t bytes, char *buf, size_t len) { return mf_format_bytes((double)bytes, buf, len); }

/* The table: what was chosen, why it fits, what it costs, and each layer. */
static void print_table(const char *profile_path, const mfp_plan_result *plan, const mfp_options *o) {
  mfp_plan_summary sm;
  mfp_simulation sim;
  mfp_plan_get_summary(plan, &sm);
  mfp_plan_get_simulation(plan, &sim);
  char a[32], b[32], c[32];
  printf("memfit-plan %s\n", profile_path);
  printf("  objective         %s", mfp_objective_name(o->objective));
  if (o->objective == MFP_OBJECTIVE_GLOBAL_BATCH) printf(" (global batch %" PRId64 ")", o->global_batch);
  printf("\n  budget            %s, usable %s (headroom %.2f%%%s)\n", human((int64_t)sm.budget_bytes, a, sizeof a),
         human((int64_t)sm.usable_bytes, b, sizeof b), 100 * sm.headroom,
         !sm.headroom_auto ? ", as given"
         : sm.granule_bytes ? ": 1% + the model's self-check error"
                            : ": 25% for segments + the model's self-check error");
  if (sm.granule_bytes)
    printf("  reserve model     reserved = allocated + %s (the profile's overhead; pages of %s)\n",
           human(sm.reserve_overhead_bytes, a, sizeof a), human(sm.granule_bytes, b, sizeof b));
  else
    printf("  reserve model     reserved = max(allocated + %s, allocated x %.4f) (the profile's; segments)\n",
           human(sm.reserve_overhead_bytes, a, sizeof a), sm.reserve_ratio);
  printf("  batch size        %" PRId64, sm.batch_size);
  if (sm.grad_accumulation_steps > 1)
    printf(" x %" PRId64 " accumulation steps = global batch %" PRId64, sm.grad_accumulation_steps, sm.global_batch);
  printf("\n  predicted peak    %s allocated, %s reserved of %s usable (%.1f%%)\n",
         human(sm.predicted_peak_bytes, a, sizeof a), human(sm.predicted_reserved_bytes, b, sizeof b),
         human((int64_t)sm.usable_bytes, c, sizeof c),
         100.0 * (double)sm.predicted_reserved_bytes / (double)sm.usable_bytes);
  mfp_plan_layer peak_layer = {0};
  if (sim.peak_layer >= 0) mfp_plan_get_layer(plan, (size_t)sim.peak_layer, &peak_layer);
  printf("    at %s%s%s: fixed %s + kept %s + transient %s\n", mfp_phase_name(sim.peak_phase),
         peak_layer.name ? " of " : "", peak_layer.name ? peak_layer.name : "",
         human(sim.peak_fixed_bytes, a, sizeof a), human(sim.peak_kept_bytes, b, sizeof b),
         human(sim.peak_transient_bytes, c, sizeof c));
  double step = sm.predicted_step_seconds, rec = sm.predicted_recompute_seconds;
  printf("  step time         %.4f s, of which recompute %.4f s (%.1f%% overhead)\n", step, rec,
         step - rec > 0 ? 100.0 * rec / (step - rec) : 0.0);
  if (step > 0) printf("  throughput        %.1f samples/s\n", (double)sm.batch_size / step);
  printf("  baselines         no checkpoint: batch %" PRId64 " (%s); all checkpointed: batch %" PRId64 " (%s); in %s\n",
         sm.no_checkpoint_batch, human(sm.no_checkpoint_peak_bytes, a, sizeof a), sm.all_checkpoint_batch,
         human(sm.all_checkpoint_peak_bytes, b, sizeof b), mfp_precision_name(sm.baseline_precision));
  printf("  model self-check  %.2f%% largest error of allocated peaks, %.2f%% of reserved, over the profiled settings\n",
         100 * sm.model_error, 100 * sm.model_error_reserved);
  if (sm.model_error_checkpoint > 0 || sm.checkpoint_correction_bytes > 0)
    printf("  checkpoint check  %.2f%% largest error on the profile's every-layer-checkpointed runs; this plan kept %s "
           "below its limit for it\n",
           100 * sm.model_error_checkpoint, human(sm.checkpoint_correction_bytes, a, sizeof a));
  if (sm.ladder_correction_bytes > 0)
    printf("  ladder check      the model under-predicts the timing ladder's plain peaks; this plan kept %s below "
           "its limit for it\n", human(sm.ladder_correction_bytes, a, sizeof a));
  printf("  search            %s%s, %.3f s\n", sm.exact ? "exact" : "approximate (front coarsened)",
         sm.monotone ? "" : "; feasibility not provably monotone in the batch", sm.planning_seconds);
  size_t n = mfp_plan_layer_count(plan), width = 5;
  for (size_t i = 0; i < n; i++) {
    mfp_plan_layer l;
    mfp_plan_get_layer(plan, i, &l);
    if (strlen(l.name) > width) width = strlen(l.name);
  }
  printf("\n  %-*s  checkpoint  precision  %12s  %10s\n", (int)width, "layer", "kept", "recompute");
  for (size_t i = 0; i < n; i++) {
    mfp_plan_layer l;
    mfp_plan_get_layer(plan, i, &l);
    printf("  %-*s  %-10s  %-9s  %12s  ", (int)width, l.name,
           !l.decision.checkpoint ? "no" : l.decision.selective ? "selective" : "yes",
           mfp_precision_name(l.decision.precision), human(l.kept_bytes, a, sizeof a));
    if (l.decision.checkpoint) printf("%8.4f s\n", l.recompute_seconds);
    else printf("%10s\n", "-");
  }
}

static int exit_for(mfp_status s) {
  switch (s) {
  case MFP_OK: return EXIT_OK;
  case MFP_ERR_INVALID:
  case MFP_ERR_PROFILE:
  case MFP_ERR_IO: return EXIT_INPUT;
  case MFP_ERR_NO_FIT: return EXIT_NO_FIT;
  case MFP_ERR_HOST_MEMORY:
  case MFP_ERR_INTERNAL: return EXIT_RUNTIME;
  }
  return EXIT_RUNTIME;
}

int main(int argc, char **argv) {
  const char *profile_path = NULL, *output = NULL;
  bool json = false;
  mfp_options o;
  mfp_options_init(&o);
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    const char *value = i + 1 < argc ? argv[i + 1] : NULL;
    bool takes_value = strcmp(arg, "--budget") == 0 || strcmp(arg, "--objective") == 0 ||
                       strcmp(arg, "--precisions") == 0 || strcmp(arg, "--max-batch") == 0 ||
                       strcmp(arg, "--headroom") == 0 || strcmp(arg, "-o") == 0;
    if (takes_value && !value) return usage_error("%s wants a value", arg);
    int rc = EXIT_OK;
    if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
      usage(stdout);
      return EXIT_OK;
    } else if (strcmp(arg, "--json") == 0) {
      json = true;
    } else if (strcmp(arg, "--no-selective") == 0) {
      o.no_selective = true;
    } else if (strcmp(arg, "--budget") == 0) {
      if (mfp_parse_size(value, &o.budget_bytes) != MFP_OK)
        return usage_error("bad --budget: %s", mfp_last_error());
      if (o.budget_bytes == 0) return usage_error("bad --budget '%s': a budget must be more than 0 bytes", value);
    } else if (strcmp(arg, "--objective") == 0) {
      rc = parse_objective(value, &o);
    } else if (strcmp(arg, "--precisions") == 0) {
      rc = parse_precisions(value, &o);
    } else if (strcmp(arg, "--max-batch") == 0) {
      if (!parse_int(value, &o.max_batch) || o.max_batch < 1)
        return usage_error("--max-batch wants a positive integer, got '%s'", value);
    } else if (strcmp(arg, "--headroom") == 0) {
      char *end;
      if (strcmp(value, "auto") == 0) o.headroom = MFP_HEADROOM_AUTO;
      else if ((o.headroom = strtod(value, &end)), end == value || *end || !(o.headroom >= 0 && o.headroom < 1))
        return usage_error("--headroom wants a fraction in [0, 1) or auto, got '%s'", value);
    } else if (strcmp(arg, "-o") == 0) {
      output = value;
    } else if (arg[0] == '-' && arg[1]) {
      return usage_error("unknown option '%s'", arg);
    } else if (profile_path) {
      return usage_error("more than one profile ('%s')", arg);
    } else {
      profile_path = arg;
    }
    if (rc != EXIT_OK) return rc;
    if (takes_value) i++;
  }
  if (!profile_path) return usage_error("%s", "no profile given");
  if (o.budget_bytes == 0) return usage_error("%s", "no --budget given");

  mfp_profile *profile;
  mfp_status s = mfp_profile_load(profile_path, &profile);
  if (s != MFP_OK) {
    fprintf(stderr, "memfit-plan: %s\n", mfp_last_error());
    return exit_for(s);
  }
  mfp_plan_result *plan;
  s = mfp_plan(profile, &o, &plan);
  if (s != MFP_OK) {
    fprintf(stderr, "memfit-plan: %s\n", mfp_last_error());
    mfp_profile_free(profile);
    return exit_for(s);
  }
  char *text = NULL;
  int rc = EXIT_OK;
  if ((s = mfp_plan_to_json(plan, &text)) != MFP_OK) {
    fprintf(stderr, "memfit-plan: %s\n", mfp_last_error());
    rc = exit_for(s);
  } else {
    if (output) {
      FILE *f = fopen(output, "w");
      if (!f || fputs(text, f) < 0 || fputc('\n', f) == EOF) {
        fprintf(stderr, "memfit-plan: %s: cannot write: %s\n", output, strerror(errno));
        rc = EXIT_RUNTIME;
      }
      if (f && fclose(f) != 0 && rc == EXIT_OK) {
        fprintf(stderr, "memfit-plan: %s: cannot write: %s\n", output, strerror(errno));
        rc = EXIT_RUNTIME;
      }
    }
    if (rc == EXIT_OK) {
      if (json) printf("%s\n", text);
      else print_table(profile_path, plan, &o);
    }
  }
  mfp_free(text);
  mfp_plan_free(plan);
  mfp_profile_free(profile);
  return rc;
}
