/* summary.c — turns the pass times into medians and ratios and prints them.
 * Speed is always reported as a ratio of two medians taken in the same run,
 * because absolute nanoseconds on a shared 2-core machine mean little. */
#include "summary.h"

#include <stdlib.h>
#include <string.h>

static int compare_doubles(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(const double *values, int n) {
  double sorted[SUMMARY_MAX_REPEAT];
  memcpy(sorted, values, (size_t)n * sizeof *values);
  qsort(sorted, (size_t)n, sizeof *sorted, compare_doubles);
  return n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
}

static double ns_per_op(const replay_summary *s, double seconds) {
  return s->trace->count ? seconds * 1e9 / (double)s->trace->count : 0.0;
}

/* Derived figures, computed once for both printers. */
typedef struct figures {
  double ns_op, ns_op_min, ns_first, ns_base, ratio;
  double paired_ratio; /* median of each repetition's memfit/baseline: robust to drift */
  double fragmentation, warm_fragmentation; /* < 0: undefined (nothing allocated) */
  /* --compare native; < 0: undefined */
  double native_fragmentation, native_expandable_fragmentation;
  double vs_native, vs_native_expandable; /* memfit's peak reserved / the emulation's */
} figures;

static double ratio_or_undefined(uint64_t num, uint64_t den) {
  return den > 0 ? (double)num / (double)den : -1.0;
}

static figures compute(const replay_summary *s) {
  figures f;
  memset(&f, 0, sizeof f);
  f.ns_op = ns_per_op(s, median(s->warm_pass, s->repeat));
  f.ns_first = ns_per_op(s, median(s->first_pass, s->repeat));
  double best = s->warm_pass[0];
  for (int i = 1; i < s->repeat; i++)
    if (s->warm_pass[i] < best) best = s->warm_pass[i];
  f.ns_op_min = ns_per_op(s, best);
  if (s->base) {
    f.ns_base = ns_per_op(s, median(s->baseline_pass, s->repeat));
    f.ratio = f.ns_base > 0 ? f.ns_op / f.ns_base : 0.0;
    double ratios[SUMMARY_MAX_REPEAT];
    for (int i = 0; i < s->repeat; i++)
      ratios[i] = s->baseline_pass[i] > 0 ? s->warm_pass[i] / s->baseline_pass[i] : 0.0;
    f.paired_ratio = s->trace->count ? median(ratios, s->repeat) : 0.0;
  }
  f.fragmentation = s->first.allocated_bytes.peak > 0
                        ? (double)s->first.reserved_bytes.peak / (double)s->first.allocated_bytes.peak
                        : -1.0;
  f.warm_fragmentation = s->warm.allocated_bytes.peak > 0
                             ? (double)s->warm.reserved_bytes.peak / (double)s->warm.allocated_bytes.peak
                             : -1.0;
  if (s->compare_native) {
    const native_result *n = &s->native, *x = &s->native_expandable;
    uint64_t reserved = (uint64_t)s->first.reserved_bytes.peak;
    f.native_fragmentation = ratio_or_undefined(n->peak_reserved, n->peak_allocated);
    f.native_expandable_fragmentation = ratio_or_undefined(x->peak_reserved, x->peak_allocated);
    f.vs_native = ratio_or_undefined(reserved, n->peak_reserved);
    f.vs_native_expandable = ratio_or_undefined(reserved, x->peak_reserved);
  }
  return f;
}

/* Sizes for people: memfit's one byte formatter. */
static const char *human(uint64_t bytes, char *buf, size_t len) { return mf_format_bytes((double)bytes, buf, len); }

static void row_bytes(FILE *out, const char *label, int64_t bytes) {
  char h[32];
  fprintf(out, "  %-22s %14s  (%lld B)\n", label, human((uint64_t)bytes, h, sizeof h),
          (long long)bytes);
}

static void row_ratio(FILE *out, const char *label, double v, const char *note) {
  if (v >= 0) fprintf(out, "  %-22s %14.4f  (%s)\n", label, v, note);
  else fprintf(out, "  %-22s %14s\n", label, "n/a");
}

/* The OOM of an emulation, if it had one: where it stopped. */
static void row_native_ooms(FILE *out, const char *label, const trace *t, const native_result *n) {
  if (!n->ooms) {
    fprintf(out, "  %-22s %14d\n", label, 0);
    return;
  }
  fprintf(out, "  %-22s %14llu  (stopped at line %u: alloc of %llu bytes on device %d)\n", label,
          (unsigned long long)n->ooms, t->lines[n->oom_op],
          (unsigned long long)t->ops[n->oom_op].size, t->ops[n->oom_op].device);
}

/* --compare native, for people. */
static void native_table(const replay_summary *s, const figures *f, FILE *out) {
  const trace *t = s->trace;
  const native_result *n = &s->native, *x = &s->native_expandable;
  char h[32], limits[160];
  int len = snprintf(limits, sizeof limits, "capacity %s",
                     s->native_conf.capacity ? human(s->native_conf.capacity, h, sizeof h) : "unlimited");
  if (s->native_conf.max_split_size)
    snprintf(limits + len, sizeof limits - (size_t)len, ", max_split_size %s",
             human(s->native_conf.max_split_size, h, sizeof h));
  fprintf(out, "  %-22s %14s  (PyTorch CUDACachingAllocator emulated; %s)\n", "compare", "native",
          limits);
  row_bytes(out, "native peak reserved", (int64_t)n->peak_reserved);
  row_bytes(out, "native peak allocated", (int64_t)n->peak_allocated);
  row_ratio(out, "native fragmentation", f->native_fragmentation, "peak reserved / peak allocated");
  fprintf(out, "  %-22s %14llu  (cudaMalloc calls; %llu cudaFree, %llu cache releases)\n",
          "native segment maps", (unsigned long long)n->segment_maps,
          (unsigned long long)n->segment_unmaps, (unsigned long long)n->alloc_retries);
  row_native_ooms(out, "native ooms", t, n);
  row_bytes(out, "expandable reserved", (int64_t)x->peak_reserved);
  row_bytes(out, "expandable allocated", (int64_t)x->peak_allocated);
  row_ratio(out, "expandable frag.", f->native_expandable_fragmentation,
            "expandable_segments:True; peak reserved / peak allocated");
  row_native_ooms(out, "expandable ooms", t, x);
  row_ratio(out, "reserved vs native", f->vs_native,
            "memfit's peak reserved / native's");
  row_ratio(out, "reserved vs expandable", f->vs_native_expandable,
            "memfit's peak reserved / expandable's");
  fprintf(out, "  %-22s %11.1f ms  (both emulations, untimed passes)\n", "native emulation",
          (n->seconds + x->seconds) * 1e3);
}

void summary_print_table(const replay_summary *s, FILE *out) {
  const trace *t = s->trace;
  figures f = compute(s);
  fprintf(out, "memfit-replay %s  (memfit %s)\n", t->name, mf_version());
  fprintf(out, "  %-22s %14s  (%s)\n", "backend", s->backend, s->conf);
  fprintf(out, "  %-22s %14zu  (%zu allocs, %zu frees, at most %u live)\n", "events", t->count,
          t->allocs, t->frees, t->slots);
  row_bytes(out, "peak requested", (int64_t)t->peak_requested);
  row_bytes(out, "peak allocated", s->first.allocated_bytes.peak);
  row_bytes(out, "peak reserved", s->first.reserved_bytes.peak);
  if (f.fragmentation >= 0)
    fprintf(out, "  %-22s %14.4f  (peak reserved / peak allocated)\n", "fragmentation",
            f.fragmentation);
  else fprintf(out, "  %-22s %14s\n", "fragmentation", "n/a");
  fprintf(out, "  %-22s %14lld\n", "ooms", (long long)s->first.ooms);
  fprintf(out, "  %-22s %14lld  (%lld misses, %lld segment maps)\n", "cache hits",
          (long long)s->first.cache_hits, (long long)s->first.cache_misses,
          (long long)s->first.segment_maps);
  if (s->granule)
    fprintf(out, "  %-22s %14lld  (granule %llu KiB; %lld unmapped to move, %lld new; %lld syncs)\n",
            "granules mapped", (long long)s->first.granule_maps, (unsigned long long)(s->granule / 1024),
            (long long)s->first.granule_unmaps, (long long)s->first.granule_creates, (long long)s->first.syncs);
  else fprintf(out, "  %-22s %14s\n", "page mapping", "off (segments)");
  if (t->tagged) {
    for (int c = 0; c < MF_CAT_COUNT; c++) {
      if (!s->category[c].bytes.peak) continue;
      char label[64];
      snprintf(label, sizeof label, "peak %s", mf_category_name((mf_category)c));
      row_bytes(out, label, s->category[c].bytes.peak);
    }
  }
  if (s->compare_native) native_table(s, &f, out);
  fprintf(out, "  %-22s %11.1f ns  (median of %d warm passes; min %.1f)\n", "time per event", f.ns_op,
          s->repeat, f.ns_op_min);
  fprintf(out, "  %-22s %11.1f ns\n", "time per alloc+free", 2 * f.ns_op);
  fprintf(out, "  %-22s %11.1f ns  (median of %d fresh allocators)\n", "first pass per event",
          f.ns_first, s->repeat);
  if (f.warm_fragmentation >= 0)
    fprintf(out, "  %-22s %14.4f  (after %d more passes on one allocator)\n", "warm fragmentation",
            f.warm_fragmentation, s->repeat + 1);
  if (s->base) {
    fprintf(out, "  %-22s %11.1f ns  (%s from %s, median of %d)\n", "baseline per event", f.ns_base,
            s->base->name, s->base->library, s->repeat);
    fprintf(out, "  %-22s %14.3f  (memfit / %s; below 1 means memfit is faster)\n", "speed ratio",
            f.ratio, s->base->name);
    fprintf(out, "  %-22s %14.3f  (median of the %d pass-by-pass ratios)\n", "paired speed ratio",
            f.paired_ratio, s->repeat);
  }
  fprintf(out, "  %-22s %14s\n", "check", s->check_each ? "ok (every event)" : "ok (at the end)");
}

static void json_string(FILE *out, const char *text) {
  fputc('"', out);
  for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
    if (*c == '"' || *c == '\\') fprintf(out, "\\%c", *c);
    else if (*c < 0x20) fprintf(out, "\\u%04x", *c);
    else fputc(*c, out);
  }
  fputc('"', out);
}

static void json_number_or_null(FILE *out, double v) {
  if (v < 0) fputs("null", out);
  else fprintf(out, "%.6f", v);
}

static void json_size_or_null(FILE *out, uint64_t v) {
  if (v) fprintf(out, "%llu", (unsigned long long)v);
  else fputs("null", out);
}

/* The trace line of an emulation's OOM, or null. */
static void json_oom_line(FILE *out, const trace *t, const native_result *n) {
  if (n->ooms) fprintf(out, "%u", t->lines[n->oom_op]);
  else fputs("null", out);
}

/* --compare native, for scripts: one emulation's figures under a prefix. */
static void json_native(FILE *out, const trace *t, const char *prefix, const native_result *n,
                        double fragmentation) {
  fprintf(out, ",\n  \"%s_peak_reserved_bytes\": %llu", prefix, (unsigned long long)n->peak_reserved);
  fprintf(out, ",\n  \"%s_peak_allocated_bytes\": %llu", prefix,
          (unsigned long long)n->peak_allocated);
  fprintf(out, ",\n  \"%s_fragmentation\": ", prefix);
  json_number_or_null(out, fragmentation);
  fprintf(out, ",\n  \"%s_segment_maps\": %llu", prefix, (unsigned long long)n->segment_maps);
  fprintf(out, ",\n  \"%s_segment_unmaps\": %llu", prefix, (unsigned long long)n->segment_unmaps);
  fprintf(out, ",\n  \"%s_alloc_retries\": %llu", prefix, (unsigned long long)n->alloc_retries);
  fprintf(out, ",\n  \"%s_ooms\": %llu", prefix, (unsigned long long)n->ooms);
  fprintf(out, ",\n  \"%s_oom_line\": ", prefix);
  json_oom_line(out, t, n);
}

static void json_samples(FILE *out, const replay_summary *s, const double *passes) {
  fputc('[', out);
  for (int i = 0; i < s->repeat; i++) fprintf(out, "%s%.3f", i ? ", " : "", ns_per_op(s, passes[i]));
  fputc(']', out);
}

void summary_print_json(const replay_summary *s, FILE *out) {
  const trace *t = s->trace;
  figures f = compute(s);
  fputs("{\n  \"tool\": \"memfit-replay\",\n  \"memfit_version\": ", out);
  json_string(out, mf_version());
  fputs(",\n  \"trace\": ", out);
  json_string(out, t->name);
  fputs(",\n  \"backend\": ", out);
  json_string(out, s->backend);
  fputs(",\n  \"conf\": ", out);
  json_string(out, s->conf);
  fprintf(out, ",\n  \"events\": %zu,\n  \"allocs\": %zu,\n  \"frees\": %zu,\n  \"max_live\": %u",
          t->count, t->allocs, t->frees, t->slots);
  fprintf(out, ",\n  \"devices\": %d,\n  \"repeat\": %d", t->devices, s->repeat);
  fprintf(out, ",\n  \"peak_requested_bytes\": %llu", (unsigned long long)t->peak_requested);
  fprintf(out, ",\n  \"stats_peak_requested_bytes\": %lld", (long long)s->first.requested_bytes.peak);
  fprintf(out, ",\n  \"peak_allocated_bytes\": %lld", (long long)s->first.allocated_bytes.peak);
  fprintf(out, ",\n  \"peak_reserved_bytes\": %lld", (long long)s->first.reserved_bytes.peak);
  fputs(",\n  \"fragmentation\": ", out);
  json_number_or_null(out, f.fragmentation);
  fprintf(out,
          ",\n  \"ooms\": %lld,\n  \"cache_hits\": %lld,\n  \"cache_misses\": %lld,\n"
          "  \"segment_maps\": %lld,\n  \"segment_unmaps\": %lld,\n  \"ladder_releases\": %lld",
          (long long)s->first.ooms, (long long)s->first.cache_hits, (long long)s->first.cache_misses,
          (long long)s->first.segment_maps, (long long)s->first.segment_unmaps,
          (long long)s->first.ladder_releases);
  fprintf(out,
          ",\n  \"granule_bytes\": %llu,\n  \"granule_maps\": %lld,\n  \"granule_unmaps\": %lld,\n"
          "  \"granule_creates\": %lld,\n  \"syncs\": %lld,\n  \"warm_granule_maps\": %lld",
          (unsigned long long)s->granule, (long long)s->first.granule_maps, (long long)s->first.granule_unmaps,
          (long long)s->first.granule_creates, (long long)s->first.syncs, (long long)s->warm.granule_maps);
  fprintf(out, ",\n  \"ns_per_op\": %.3f,\n  \"ns_per_pair\": %.3f,\n  \"ns_per_op_min\": %.3f",
          f.ns_op, 2 * f.ns_op, f.ns_op_min);
  fprintf(out, ",\n  \"ns_per_op_first_pass\": %.3f", f.ns_first);
  fputs(",\n  \"ns_per_op_samples\": ", out);
  json_samples(out, s, s->warm_pass);
  fputs(",\n  \"ns_per_op_first_pass_samples\": ", out);
  json_samples(out, s, s->first_pass);
  fprintf(out, ",\n  \"warm_peak_reserved_bytes\": %lld", (long long)s->warm.reserved_bytes.peak);
  fputs(",\n  \"warm_fragmentation\": ", out);
  json_number_or_null(out, f.warm_fragmentation);
  fprintf(out, ",\n  \"warm_cache_misses\": %lld", (long long)s->warm.cache_misses);
  if (t->tagged) {
    fputs(",\n  \"peak_bytes_by_category\": {", out);
    for (int c = 0; c < MF_CAT_COUNT; c++) {
      fputs(c ? ", " : "", out);
      json_string(out, mf_category_name((mf_category)c));
      fprintf(out, ": %lld", (long long)s->category[c].bytes.peak);
    }
    fputc('}', out);
  }
  if (s->compare_native) {
    fputs(",\n  \"compare\": \"native\",\n  \"native_capacity_bytes\": ", out);
    json_size_or_null(out, s->native_conf.capacity);
    fputs(",\n  \"native_max_split_size_bytes\": ", out);
    json_size_or_null(out, s->native_conf.max_split_size);
    json_native(out, t, "native", &s->native, f.native_fragmentation);
    json_native(out, t, "native_expandable", &s->native_expandable, f.native_expandable_fragmentation);
    fputs(",\n  \"reserved_vs_native\": ", out);
    json_number_or_null(out, f.vs_native);
    fputs(",\n  \"reserved_vs_native_expandable\": ", out);
    json_number_or_null(out, f.vs_native_expandable);
    fprintf(out, ",\n  \"native_seconds\": %.6f", s->native.seconds + s->native_expandable.seconds);
  }
  if (s->base) {
    fputs(",\n  \"baseline\": ", out);
    json_string(out, s->base->name);
    fputs(",\n  \"baseline_library\": ", out);
    json_string(out, s->base->library);
    fprintf(out, ",\n  \"baseline_ns_per_op\": %.3f,\n  \"speed_ratio\": %.6f", f.ns_base, f.ratio);
    fprintf(out, ",\n  \"speed_ratio_paired\": %.6f", f.paired_ratio);
    fputs(",\n  \"baseline_ns_per_op_samples\": ", out);
    json_samples(out, s, s->baseline_pass);
  }
  fprintf(out, ",\n  \"check\": \"%s\"\n}\n", s->check_each ? "every_event" : "end");
}
