/* main.c — memfit-replay's command line: parse the options, load the trace,
 * run the passes (check, first passes, warm passes side by side with a
 * baseline) and map every failure to its exit status (see usage()). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baseline.h"
#include "memfit/memfit.h"
#include "native.h"
#include "replay.h"
#include "summary.h"
#include "trace.h"

enum exit_status {
  EXIT_OK = 0,
  EXIT_RUNTIME = 1, /* the allocator or a baseline failed (setup, backend error) */
  EXIT_INPUT = 2,   /* usage error or bad trace */
  EXIT_OOM = 3,     /* an alloc failed after memfit's OOM ladder */
  EXIT_CORRUPT = 4  /* mf_check failed, or memfit refused its own pointer */
};

static void usage(FILE *out) {
  fputs("usage: memfit-replay TRACE [--backend virtual|host] [--capacity SIZE]\n"
        "                     [--conf \"key:value,...\"] [--json] [--baseline malloc|jemalloc]\n"
        "                     [--repeat N] [--check] [--compare native]\n"
        "\n"
        "Replays an allocation trace (\"alloc <id> <bytes> [<stream>]\" and \"free <id>\"\n"
        "lines, '#' comments; TRACE '-' reads standard input) through memfit and prints\n"
        "the peaks, the fragmentation (peak reserved / peak allocated) and the time per\n"
        "event, the median of N warm passes (default 5).\n"
        "\n"
        "  --backend B     virtual (default: addresses only, no memory touched) or host\n"
        "  --capacity SIZE device budget, e.g. 8GiB; an alloc that fails exits 3\n"
        "  --conf TEXT     more allocator options, after backend and capacity\n"
        "  --json          one JSON object on standard output instead of the table\n"
        "  --baseline A    also replay through glibc malloc or jemalloc, side by side,\n"
        "                  and print speed_ratio = memfit time / baseline time\n"
        "  --repeat N      timed passes of each kind (1..1000, default 5)\n"
        "  --check         run mf_check after every event in an extra untimed pass\n"
        "  --compare C     native: also replay through an emulation of PyTorch's\n"
        "                  caching allocator (segments, then expandable_segments:True)\n"
        "                  and print its peaks; reserved_vs_native = memfit / native\n"
        "\n"
        "Exit status: 0 ok, 1 setup or backend failure, 2 usage error or bad trace,\n"
        "3 out of memory, 4 mf_check found corruption.\n",
        out);
}

typedef struct cli {
  const char *trace_path;
  const char *backend;
  const char *capacity;
  const char *conf;
  const char *baseline;
  const char *compare;
  int repeat;
  bool json, check;
} cli;

static int usage_error(const char *fmt, const char *arg) {
  fputs("memfit-replay: ", stderr);
  fprintf(stderr, fmt, arg);
  fputs("\n\n", stderr);
  usage(stderr);
  return EXIT_INPUT;
}

/* Accepts "--opt value" and "--opt=value". Returns -1 to go on, or an exit status. */
static int parse_cli(int argc, char **argv, cli *c) {
  memset(c, 0, sizeof *c);
  c->backend = "virtual";
  c->repeat = 5;
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
      usage(stdout);
      return EXIT_OK;
    }
    if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
      if (arg[0] == '-' && arg[1] != '\0') return usage_error("unknown option '%s'", arg);
      if (c->trace_path) return usage_error("more than one trace given ('%s')", arg);
      c->trace_path = arg;
      continue;
    }
    char name[32];
    const char *eq = strchr(arg, '=');
    size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
    if (len >= sizeof name) return usage_error("unknown option '%s'", arg);
    memcpy(name, arg, len);
    name[len] = '\0';
    if (strcmp(name, "--json") == 0 || strcmp(name, "--check") == 0) {
      if (eq) return usage_error("option '%s' takes no value", name);
      if (name[2] == 'j') c->json = true;
      else c->check = true;
      continue;
    }
    const char **slot = NULL;
    const char *repeat_text = NULL;
    if (strcmp(name, "--backend") == 0) slot = &c->backend;
    else if (strcmp(name, "--capacity") == 0) slot = &c->capacity;
    else if (strcmp(name, "--conf") == 0) slot = &c->conf;
    else if (strcmp(name, "--baseline") == 0) slot = &c->baseline;
    else if (strcmp(name, "--compare") == 0) slot = &c->compare;
    else if (strcmp(name, "--repeat") == 0) slot = &repeat_text;
    else return usage_error("unknown option '%s'", arg);
    if (eq) *slot = eq + 1;
    else if (i + 1 < argc) *slot = argv[++i];
    else return usage_error("option '%s' needs a value", name);
    if (repeat_text) {
      char *end;
      long n = strtol(repeat_text, &end, 10);
      if (*repeat_text == '\0' || *end != '\0' || n < 1 || n > SUMMARY_MAX_REPEAT)
        return usage_error("--repeat wants an integer from 1 to 1000, not '%s'", repeat_text);
      c->repeat = (int)n;
    }
  }
  if (!c->trace_path) return usage_error("%s", "no trace given");
  if (strcmp(c->backend, "virtual") != 0 && strcmp(c->backend, "host") != 0 &&
      strcmp(c->backend, "cuda") != 0)
    return usage_error("unknown backend '%s' (expected virtual or host)", c->backend);
  if (c->baseline && strcmp(c->baseline, "malloc") != 0 && strcmp(c->baseline, "jemalloc") != 0)
    return usage_error("unknown baseline '%s' (expected malloc or jemalloc)", c->baseline);
  if (c->compare && strcmp(c->compare, "native") != 0)
    return usage_error("unknown comparison '%s' (expected native)", c->compare);
  return -1;
}

/* Builds the allocator's options: our keys first, so --conf can override. */
static int build_conf(const cli *c, const trace *t, char *conf, size_t len) {
  int n = snprintf(conf, len, "backend:%s", c->backend);
  if (c->capacity) {
    uint64_t bytes;
    if (mf_parse_size(c->capacity, &bytes) != MF_OK)
      return usage_error("bad --capacity '%s'", c->capacity);
    n += snprintf(conf + n, len - (size_t)n, ",capacity:%llu", (unsigned long long)bytes);
  }
  if (t->devices > 1) n += snprintf(conf + n, len - (size_t)n, ",devices:%d", t->devices);
  if (c->conf && *c->conf) n += snprintf(conf + n, len - (size_t)n, ",%s", c->conf);
  if (n < 0 || (size_t)n >= len) return usage_error("%s", "--conf is too long");
  return -1;
}

static int create_allocator(const char *conf, mf_allocator **a) {
  mf_status st = mf_allocator_create(conf, a);
  if (st == MF_OK) return -1;
  fprintf(stderr, "memfit-replay: cannot create the allocator from \"%s\": %s (%s)\n", conf,
          mf_last_error(), mf_status_name(st));
  /* A bad option is the user's input; anything else is the setup. */
  return st == MF_ERR_INVALID ? EXIT_INPUT : EXIT_RUNTIME;
}

static void print_oom_report(mf_allocator *a) {
  size_t needed = 0;
  char small[1];
  mf_oom_report(a, small, sizeof small, &needed);
  char *report = needed ? malloc(needed) : NULL;
  if (report && mf_oom_report(a, report, needed, NULL) == MF_OK && *report)
    fprintf(stderr, "%s%s", report, report[strlen(report) - 1] == '\n' ? "" : "\n");
  else fputs("(no OOM report available)\n", stderr);
  free(report);
}

/* Turns a failed pass into its message and exit status. */
static int pass_failed(replay_status st, const replay_pass *p, const trace *t, mf_allocator *a,
                       const char *when) {
  uint32_t line = p->failed_op < t->count ? t->lines[p->failed_op] : 0;
  switch (st) {
    case REPLAY_OOM: {
      const trace_op *op = &t->ops[p->failed_op];
      if (p->error != MF_ERR_OOM) {
        /* NULL for another reason: the backend failed, or a bad device. */
        fprintf(stderr, "%s:%u: alloc of %llu bytes on device %d failed (%s): %s (%s)\n", t->name,
                line, (unsigned long long)op->size, op->device, when, mf_last_error(),
                mf_status_name(p->error));
        return EXIT_RUNTIME;
      }
      fprintf(stderr, "%s:%u: out of memory (%s): alloc of %llu bytes on device %d failed: %s\n",
              t->name, line, when, (unsigned long long)op->size, op->device, mf_last_error());
      print_oom_report(a);
      return EXIT_OOM;
    }
    case REPLAY_FREE_FAILED:
      if (line)
        fprintf(stderr, "%s:%u: mf_free refused a pointer mf_malloc returned (%s): %s (%s)\n",
                t->name, line, when, mf_last_error(), mf_status_name(p->error));
      else
        fprintf(stderr, "%s: mf_free refused a pointer still live at the end (%s): %s (%s)\n",
                t->name, when, mf_last_error(), mf_status_name(p->error));
      return EXIT_CORRUPT;
    case REPLAY_CORRUPT:
      fprintf(stderr, "%s:%u: mf_check failed after this event (%s): %s\n", t->name, line, when,
              mf_last_error());
      return EXIT_CORRUPT;
    case REPLAY_OK:
      break;
  }
  return EXIT_OK;
}

static int check_now(mf_allocator *a, const trace *t, const char *when) {
  if (mf_check(a) == MF_OK) return -1;
  fprintf(stderr, "%s: mf_check failed %s: %s\n", t->name, when, mf_last_error());
  return EXIT_CORRUPT;
}

static void add_counter(mf_counter *sum, const mf_counter *c) {
  sum->current += c->current;
  sum->peak += c->peak;
  sum->total += c->total;
}

/* The stats summed over the devices. With one device (every bundled trace)
 * these are its stats; with several, a peak is the sum of each device's
 * peak, which is what a job needs in all (each device must hold its own). */
static mf_status read_stats(mf_allocator *a, mf_stats *sum) {
  memset(sum, 0, sizeof *sum);
  for (int d = 0; d < mf_allocator_device_count(a); d++) {
    mf_stats one;
    memset(&one, 0, sizeof one);
    one.struct_size = sizeof one;
    one.version = MF_STATS_VERSION;
    mf_status st = mf_get_stats(a, d, &one);
    if (st != MF_OK) return st;
#define MF_X_COUNTER(name) add_counter(&sum->name, &one.name);
    MF_STATS_COUNTERS(MF_X_COUNTER)
#undef MF_X_COUNTER
#define MF_X_EVENT(name) sum->name += one.name;
    MF_STATS_EVENTS(MF_X_EVENT)
#undef MF_X_EVENT
    sum->struct_size = one.struct_size;
    sum->version = one.version;
  }
  return MF_OK;
}

static void read_category_stats(mf_allocator *a, mf_tag_stats out[MF_CAT_COUNT]) {
  memset(out, 0, MF_CAT_COUNT * sizeof *out);
  for (int d = 0; d < mf_allocator_device_count(a); d++) {
    for (int c = 0; c < MF_CAT_COUNT; c++) {
      mf_tag_stats one;
      if (mf_get_category_stats(a, d, (mf_category)c, &one) != MF_OK) continue;
      add_counter(&out[c].bytes, &one.bytes);
      add_counter(&out[c].requested, &one.requested);
      add_counter(&out[c].blocks, &one.blocks);
    }
  }
}

/* One pass on an allocator followed by the checks and the release of the
 * trace's leftovers. Returns -1 on success, or the exit status. */
static int memfit_pass(mf_allocator *a, const trace *t, void **ptrs, bool check_each,
                       const char *when, double *seconds, mf_stats *stats_after) {
  replay_pass p;
  replay_status st = replay_memfit(a, t, ptrs, check_each, &p);
  if (st != REPLAY_OK) return pass_failed(st, &p, t, a, when);
  if (seconds) *seconds = p.seconds;
  if (stats_after && read_stats(a, stats_after) != MF_OK) {
    fprintf(stderr, "memfit-replay: mf_get_stats failed: %s\n", mf_last_error());
    return EXIT_RUNTIME;
  }
  char where[96];
  snprintf(where, sizeof where, "at the end of the %s", when);
  int rc = check_now(a, t, where);
  if (rc >= 0) return rc;
  st = replay_memfit_release(a, t, ptrs, &p);
  if (st != REPLAY_OK) return pass_failed(st, &p, t, a, when);
  snprintf(where, sizeof where, "after freeing what the %s left live", when);
  return check_now(a, t, where);
}

/* A size or count option of the allocator as resolved (0 if unreadable). */
static uint64_t option_u64(mf_allocator *a, const char *key) {
  char text[32];
  if (mf_options_get(mf_allocator_options(a), key, text, sizeof text) != MF_OK) return 0;
  return strtoull(text, NULL, 10);
}

/* --compare native: the emulation of PyTorch's allocator, once with
 * segments and once with expandable segments; untimed, deterministic. An OOM
 * of the emulation is one of its results, not a failure of the run. */
static int run_native(const trace *t, replay_summary *s) {
  native_config conf = s->native_conf;
  conf.expandable = false;
  if (native_replay(t, &conf, &s->native) == 0) {
    conf.expandable = true;
    if (native_replay(t, &conf, &s->native_expandable) == 0) return EXIT_OK;
  }
  fputs("memfit-replay: out of host memory in the native emulation\n", stderr);
  return EXIT_RUNTIME;
}

static int run(const cli *c, const trace *t, const baseline *base, replay_summary *s) {
  char *conf = s->conf;
  int rc = build_conf(c, t, conf, sizeof s->conf);
  if (rc >= 0) return rc;
  void **ptrs = calloc(t->slots ? t->slots : 1, sizeof *ptrs);
  if (!ptrs) {
    fputs("memfit-replay: out of host memory\n", stderr);
    return EXIT_RUNTIME;
  }
  mf_allocator *a = NULL;

  /* 1. --check: every invariant after every event, on a fresh allocator. */
  if (c->check) {
    if ((rc = create_allocator(conf, &a)) >= 0) goto done;
    rc = memfit_pass(a, t, ptrs, true, "check pass", NULL, NULL);
    mf_allocator_destroy(a);
    a = NULL;
    if (rc >= 0) goto done;
  }

  /* 2. First passes, each on a fresh allocator: the peaks a job running the
   * trace once would see, and the time including segment maps. */
  for (int r = 0; r < c->repeat; r++) {
    if ((rc = create_allocator(conf, &a)) >= 0) goto done;
    if (r == 0) {
      /* The backend the options resolved to, for the record. */
      char backend[sizeof s->backend];
      if (mf_options_get(mf_allocator_options(a), "backend", backend, sizeof backend) == MF_OK)
        snprintf(s->backend, sizeof s->backend, "%s", backend);
      s->granule = mf_allocator_granule(a);
      /* The emulation of --compare native gets memfit's budget and split limit. */
      s->native_conf.capacity = option_u64(a, "capacity");
      s->native_conf.max_split_size = option_u64(a, "max_split_size");
    }
    rc = memfit_pass(a, t, ptrs, false, "first pass", &s->first_pass[r], r == 0 ? &s->first : NULL);
    if (rc < 0 && r == 0 && t->tagged) read_category_stats(a, s->category);
    mf_allocator_destroy(a);
    a = NULL;
    if (rc >= 0) goto done;
  }
  /* A cheap check of memfit's accounting (exact with one device). */
  if (t->devices == 1 && (uint64_t)s->first.requested_bytes.peak != t->peak_requested)
    fprintf(stderr,
            "memfit-replay: warning: memfit's requested_bytes peak (%lld) differs from the "
            "trace's (%llu)\n",
            (long long)s->first.requested_bytes.peak, (unsigned long long)t->peak_requested);

  /* 3. Warm passes on one allocator whose cache already holds the trace's
   * segments (the steady state of a training loop), each followed by the
   * baseline's pass over the same events, so both see the same machine. */
  if ((rc = create_allocator(conf, &a)) >= 0) goto done;
  if ((rc = memfit_pass(a, t, ptrs, false, "warm-up pass", NULL, NULL)) >= 0) goto done;
  if (base) {
    replay_pass p;
    if (replay_baseline(base, t, ptrs, &p) != REPLAY_OK) goto baseline_oom;
    replay_baseline_release(base, t, ptrs);
  }
  for (int r = 0; r < c->repeat; r++) {
    rc = memfit_pass(a, t, ptrs, false, "warm pass", &s->warm_pass[r],
                     r == c->repeat - 1 ? &s->warm : NULL);
    if (rc >= 0) goto done;
    if (base) {
      replay_pass p;
      if (replay_baseline(base, t, ptrs, &p) != REPLAY_OK) goto baseline_oom;
      s->baseline_pass[r] = p.seconds;
      replay_baseline_release(base, t, ptrs);
    }
  }
  rc = EXIT_OK;
  goto done;

baseline_oom:
  fprintf(stderr, "memfit-replay: the %s baseline ran out of host memory on this trace\n",
          base->name);
  rc = EXIT_RUNTIME;
done:
  if (a) mf_allocator_destroy(a);
  free(ptrs);
  return rc;
}

int main(int argc, char **argv) {
  cli c;
  int rc = parse_cli(argc, argv, &c);
  if (rc >= 0) return rc;

  /* jemalloc (the baseline, and the host backend's memory) needs more static
   * TLS than glibc gives dlopen'ed libraries: restart with it first, before
   * anything is read from standard input. */
  if ((c.baseline && strcmp(c.baseline, "jemalloc") == 0) || strcmp(c.backend, "host") == 0)
    baseline_restart_with_static_tls(argv);

  char err[1024];
  baseline base;
  if (c.baseline && baseline_open(c.baseline, &base, err, sizeof err) != 0) {
    fprintf(stderr, "memfit-replay: %s\n", err);
    return EXIT_RUNTIME;
  }

  trace t;
  trace_status ts = trace_load(c.trace_path, &t, err, sizeof err);
  if (ts != TRACE_OK) {
    fprintf(stderr, "%s\n", err);
    if (c.baseline) baseline_close(&base);
    return ts == TRACE_BAD_INPUT ? EXIT_INPUT : EXIT_RUNTIME;
  }

  replay_summary *s = calloc(1, sizeof *s); /* large: the pass arrays */
  if (!s) {
    fputs("memfit-replay: out of host memory\n", stderr);
    trace_free(&t);
    return EXIT_RUNTIME;
  }
  s->trace = &t;
  snprintf(s->backend, sizeof s->backend, "%s", c.backend);
  s->repeat = c.repeat;
  s->check_each = c.check;
  s->base = c.baseline ? &base : NULL;
  s->compare_native = c.compare != NULL;
  rc = run(&c, &t, s->base, s);
  /* After memfit's passes, so that their figures and times are unchanged. */
  if (rc == EXIT_OK && s->compare_native) rc = run_native(&t, s);
  if (rc == EXIT_OK) {
    if (c.json) summary_print_json(s, stdout);
    else summary_print_table(s, stdout);
    if (fflush(stdout) != 0) rc = EXIT_RUNTIME;
  }
  free(s);
  if (c.baseline) baseline_close(&base);
  trace_free(&t);
  return rc;
}
