/* bench_plan.c — memfit-plan-bench: how long the planner takes on GPT-like
 * profiles of 12, 50 and 100 layers (identical blocks, and blocks of varied
 * sizes), for each objective with 1 or 3 precisions: the median of N runs of
 * mfp_plan, and whether it was exact. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "memfit/plan.h"

#define MiB (1024.0 * 1024.0)

typedef struct text {
  char *data;
  size_t len, cap;
} text;

static void put(text *t, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if (t->len + (size_t)n + 1 > t->cap) {
    size_t cap = t->cap ? t->cap : 1 << 16;
    while (cap < t->len + (size_t)n + 1) cap *= 2;
    char *grown = realloc(t->data, cap);
    if (!grown) {
      fprintf(stderr, "memfit-plan-bench: out of memory\n");
      exit(1);
    }
    t->data = grown;
    t->cap = cap;
  }
  va_start(ap, fmt);
  vsnprintf(t->data + t->len, t->cap - t->len, fmt, ap);
  va_end(ap);
  t->len += (size_t)n;
}

static int64_t r512(double x) { return x >= 0 ? ((int64_t)x + 511) / 512 * 512 : -(((int64_t)-x + 511) / 512 * 512); }

/* Measurement noise on times: a fixed pseudo-random +-2% per layer and setting. */
static double noise(uint64_t *state) {
  *state = *state * 6364136223846793005ull + 1442695040888963407ull;
  return 0.98 + 0.04 * (double)(*state >> 11) / (double)(1ull << 53);
}

typedef struct terms {
  int64_t fpk, kept, out, bpk, bd;
  double tf, tb;
} terms;

static const char *precisions[] = {"fp32", "bf16", "fp16"};

/* A GPT-like chain: an embedding, n - 2 blocks, a head with a 50k-token
 * vocabulary; sequence 1024, width 768. Varied: each block's memory and time
 * scaled by its own factor in 0.5..2, and its half-precision saving too. */
static terms layer_terms(size_t i, size_t n, int prec, int64_t b, bool varied, uint64_t *rng) {
  uint64_t layer_rng = 1000 + i;
  double scale = varied ? 0.5 + 1.5 * (noise(&layer_rng) - 0.98) / 0.04 : 1.0;
  double saving = varied ? 0.4 + 0.5 * (noise(&layer_rng) - 0.98) / 0.04 : 0.62;
  double tscale = varied ? 0.5 + 1.5 * (noise(&layer_rng) - 0.98) / 0.04 : 1.0;
  const double d = 768, s = 1024, vocab = 50257, resid = s * d * 4;
  bool half = prec > 0;
  terms t;
  if (i == 0) {
    double grad = (vocab + s) * d * 4, kept = resid * b + 2 * s * 8 * b;
    t = (terms){r512(kept + 0.5 * MiB), r512(kept), r512(resid * b), r512(grad + 2 * resid * b), r512(grad - kept), 0, 0};
    t.tf = (0.0004 + 0.0002 * b) * noise(rng);
    t.tb = (0.0020 + 0.0004 * b) * noise(rng);
  } else if (i + 1 == n) {
    double grad = vocab * d * 4, logits = s * vocab * (half ? 2 : 4) * b;
    double kept = logits + resid * b / (half ? 2 : 1) + (half ? s * vocab * 2 * b : 0);
    double logits_grad = s * vocab * (half ? 2 : 4) * b - 512;
    t = (terms){r512(kept + resid * b), r512(kept), r512(logits), r512(grad + logits + resid * b),
                r512(grad - kept + resid * b) - r512(logits_grad), 0, 0};
    t.tf = (half ? 0.0010 + (prec == 1 ? 0.0040 : 0.0042) * b : 0.0012 + 0.0095 * b) * noise(rng);
    t.tb = 2.1 * t.tf;
  } else {
    double grad = (12 * d * d + 13 * d) * 4, per = scale * (half ? 100 * saving : 100) * MiB * b;
    t = (terms){r512(per + scale * (half ? 48 * saving : 48) * MiB * b), r512(per), r512(resid * b),
                r512(grad + scale * (half ? 60 * saving : 60) * MiB * b), r512(grad - per), 0, 0};
    t.tf = tscale * (half ? 0.0011 + (prec == 1 ? 0.0026 : 0.0027) * b : 0.0015 + 0.0062 * b) * noise(rng);
    t.tb = 2.0 * t.tf + 0.0003;
  }
  return t;
}

static void window(text *t, const char *name, int64_t start, int64_t peak, int64_t end) {
  put(t, "\"%s\": {\"start\": %lld, \"peak\": %lld, \"end\": %lld}", name, (long long)start, (long long)peak,
      (long long)end);
}

/* The profile JSON, windows walked as PROFILE.md has them. */
static char *make_profile(size_t n, int n_precisions, bool varied) {
  text t = {0};
  uint64_t rng = 42;
  put(&t, "{\"format\": \"memfit-profile\", \"version\": 1, \"memfit_version\": \"test\", \"torch_version\": \"2.4.0\","
          " \"device\": \"cuda\", \"device_name\": \"bench\", \"job\": \"bench:gpt%zu\", \"optimizer\": \"AdamW\","
          " \"rounding_bytes\": 512, \"warmup_steps\": 1, \"steps\": 3, \"settings\": [",
      n);
  terms *layers = malloc(n * sizeof *layers);
  int64_t *fwd_start = malloc(n * sizeof *fwd_start), *bwd_start = malloc(n * sizeof *bwd_start);
  if (!layers || !fwd_start || !bwd_start) exit(1);
  double params = 0;
  for (size_t i = 0; i < n; i++)
    params += i == 0 ? (50257.0 + 1024) * 768 * 4 : i + 1 == n ? 50257.0 * 768 * 4 : (12.0 * 768 * 768 + 13 * 768) * 4;
  bool first = true;
  for (int p = 0; p < n_precisions; p++)
    for (int64_t b = 2; b <= 4; b += 2) {
      int64_t fixed = r512(params) + r512(2 * params) + r512(2 * 1024 * 8 * b), cur = fixed, peak = fixed;
      for (size_t i = 0; i < n; i++) {
        layers[i] = layer_terms(i, n, p, b, varied, &rng);
        fwd_start[i] = cur;
        if (cur + layers[i].fpk > peak) peak = cur + layers[i].fpk;
        cur += layers[i].kept;
      }
      int64_t loss_start = cur, lpk = r512(1024 * 50257.0 * 4 * b);
      cur += 512;
      int64_t lb_start = cur, lbpk = r512(1024 * 50257.0 * 4 * b * 2), lbd = r512(1024 * 50257.0 * (p ? 2 : 4) * b) - 512;
      cur += lbd;
      if (loss_start + lpk > peak) peak = loss_start + lpk;
      if (lb_start + lbpk > peak) peak = lb_start + lbpk;
      for (size_t i = n; i-- > 0;) {
        bwd_start[i] = cur;
        int64_t top = layers[i].bpk > layers[i].bd ? layers[i].bpk : layers[i].bd;
        if (cur + top > peak) peak = cur + top;
        cur += layers[i].bd;
      }
      int64_t opt_start = cur, opk = r512(params);
      if (opt_start + opk > peak) peak = opt_start + opk;
      put(&t, "%s{\"batch_size\": %lld, \"precision\": \"%s\", \"peak_allocated_bytes\": %lld,"
              " \"peak_reserved_bytes\": %lld, \"peak_requested_bytes\": %lld, \"fixed_bytes\": %lld,"
              " \"input_bytes\": %lld, \"totals\": {\"parameter\": 0, \"gradient\": 0, \"optimizer_state\": 0,"
              " \"activation\": 0, \"temporary\": 0, \"input\": 0, \"other\": 0}, \"totals_allocated\":"
              " {\"parameter\": 0, \"gradient\": 0, \"optimizer_state\": 0, \"activation\": 0, \"temporary\": 0,"
              " \"input\": 0, \"other\": 0}, \"step_seconds\": 1.0, ",
          first ? "" : ", ", (long long)b, precisions[p], (long long)peak, (long long)peak, (long long)peak,
          (long long)fixed, (long long)(2 * 1024 * 8 * b));
      first = false;
      window(&t, "loss", loss_start, loss_start + lpk, loss_start + 512);
      put(&t, ", ");
      window(&t, "loss_backward", lb_start, lb_start + lbpk, lb_start + lbd);
      put(&t, ", ");
      window(&t, "optimizer", opt_start, opt_start + opk, opt_start);
      put(&t, ", \"loss_seconds\": %.6f, \"loss_backward_seconds\": %.6f, \"optimizer_seconds\": 0.014, \"layers\": [",
          0.0008 + 0.0011 * b, 0.0012 + 0.0018 * b);
      for (size_t i = 0; i < n; i++) {
        const terms *x = &layers[i];
        put(&t, "%s{\"name\": \"%s%zu\", \"type\": \"Block\", \"parameter_bytes\": 0, \"gradient_bytes\": 0,"
                " \"optimizer_state_bytes\": 0, \"activation_bytes\": 0, \"output_bytes\": %lld,"
                " \"output_allocated_bytes\": %lld, \"forward_temporary_peak_bytes\": 0,"
                " \"backward_temporary_peak_bytes\": 0, \"forward_seconds\": %.9f, \"backward_seconds\": %.9f, ",
            i ? ", " : "", i == 0 ? "embed" : i + 1 == n ? "head" : "blocks.", i == 0 || i + 1 == n ? (size_t)0 : i - 1,
            (long long)x->out, (long long)x->out, x->tf, x->tb);
        int64_t top = x->bpk > x->bd ? x->bpk : x->bd;
        window(&t, "forward", fwd_start[i], fwd_start[i] + x->fpk, fwd_start[i] + x->kept);
        put(&t, ", ");
        window(&t, "backward", bwd_start[i], bwd_start[i] + top, bwd_start[i] + x->bd);
        put(&t, "}");
      }
      put(&t, "]}");
    }
  put(&t, "]}");
  free(layers);
  free(fwd_start);
  free(bwd_start);
  return t.data;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int compare_doubles(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  int runs = 5;
  uint64_t budget = 80ull << 30;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc) runs = atoi(argv[++i]);
    else if (strcmp(argv[i], "--budget") == 0 && i + 1 < argc) {
      if (mfp_parse_size(argv[++i], &budget) != MFP_OK) {
        fprintf(stderr, "memfit-plan-bench: %s\n", mfp_last_error());
        return 2;
      }
    } else {
      fprintf(stderr, "usage: memfit-plan-bench [--runs N] [--budget SIZE]\n");
      return 2;
    }
  }
  if (runs < 1) runs = 1;
  printf("memfit-plan-bench: GPT-like chains, budget %.0f GiB, median of %d runs of mfp_plan\n\n",
         (double)budget / (1 << 30), runs);
  printf("%-7s  %6s  %10s  %-16s  %10s  %6s  %5s  %7s  %7s  %6s\n", "blocks", "layers", "precisions", "objective",
         "median ms", "batch", "exact", "solves", "batches", "front");
  static const size_t sizes[] = {12, 50, 100};
  for (int varied = 0; varied < 2; varied++)
  for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
    for (int n_prec = 1; n_prec <= 3; n_prec += 2) {
      char *json = make_profile(sizes[si], n_prec, varied);
      mfp_profile *profile;
      if (mfp_profile_parse(json, &profile) != MFP_OK) {
        fprintf(stderr, "memfit-plan-bench: generated profile: %s\n", mfp_last_error());
        return 1;
      }
      free(json);
      for (int obj = 0; obj < 3; obj++) {
        mfp_options o;
        mfp_options_init(&o);
        o.budget_bytes = budget;
        o.objective = (mfp_objective)obj;
        if (o.objective == MFP_OBJECTIVE_GLOBAL_BATCH) o.global_batch = 512;
        double *times = malloc((size_t)runs * sizeof *times);
        mfp_plan_summary sm = {0};
        for (int r = 0; r < runs; r++) {
          mfp_plan_result *plan;
          double t0 = now();
          mfp_status s = mfp_plan(profile, &o, &plan);
          times[r] = now() - t0;
          if (s != MFP_OK) {
            fprintf(stderr, "memfit-plan-bench: %s\n", mfp_last_error());
            return 1;
          }
          mfp_plan_get_summary(plan, &sm);
          mfp_plan_free(plan);
        }
        qsort(times, (size_t)runs, sizeof *times, compare_doubles);
        char objective[32];
        snprintf(objective, sizeof objective, "%s%s", mfp_objective_name(o.objective),
                 o.objective == MFP_OBJECTIVE_GLOBAL_BATCH ? "=512" : "");
        printf("%-7s  %6zu  %10d  %-16s  %10.2f  %6lld  %5s  %7lld  %7lld  %6lld\n", varied ? "varied" : "same",
               sizes[si], n_prec, objective,
               1e3 * times[runs / 2], (long long)sm.batch_size, sm.exact ? "yes" : "no", (long long)sm.solver_runs,
               (long long)sm.batches_evaluated, (long long)sm.largest_front);
        fflush(stdout);
        free(times);
      }
      mfp_profile_free(profile);
    }
  }
  return 0;
}
