/* report.c — the reports a person reads after an OOM or on request: capacity,
 * allocated by category, the layers that hold the most, memory reserved but
 * free in the cache, and what to do about it. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MF_REPORT_TOP_LAYERS 5

typedef struct {
  uint32_t layer;
  int64_t bytes;
} layer_total;

void _mf_report_build(mf_device *d, mf_sbuf *out, const char *headline) {
  char a[32], b[32], c[32];
  const mf_stats *st = &d->stats;
  int64_t reserved = st->reserved_bytes.current, allocated = st->allocated_bytes.current;
  _mf_sbuf_printf(out, "%s\n", headline);
  _mf_sbuf_printf(out, "  capacity           %s\n", d->capacity ? mf_format_bytes(d->capacity, a, sizeof a) : "unlimited");
  _mf_sbuf_printf(out, "  reserved           %s in %lld segments (peak %s)\n",
                  mf_format_bytes((uint64_t)reserved, a, sizeof a), (long long)st->segments.current,
                  mf_format_bytes((uint64_t)st->reserved_bytes.peak, b, sizeof b));
  _mf_sbuf_printf(out, "  allocated          %s in %lld blocks (requested %s)\n",
                  mf_format_bytes((uint64_t)allocated, a, sizeof a), (long long)st->active_blocks.current,
                  mf_format_bytes((uint64_t)st->requested_bytes.current, b, sizeof b));
  _mf_sbuf_printf(out, "  reserved but free  %s (cached; fragmentation)\n",
                  mf_format_bytes((uint64_t)(reserved - allocated), a, sizeof a));
  _mf_sbuf_printf(out, "allocated by category:\n");
  for (int cat = 0; cat < MF_CAT_COUNT; cat++) {
    const mf_tag_stats *t = &d->category_stats[cat];
    _mf_sbuf_printf(out, "  %-16s %12s  (peak %s)\n", mf_category_name((mf_category)cat),
                    mf_format_bytes((uint64_t)t->bytes.current, a, sizeof a),
                    mf_format_bytes((uint64_t)t->bytes.peak, b, sizeof b));
  }
  /* The layers holding the most: a partial selection, O(layers x 5). */
  layer_total top[MF_REPORT_TOP_LAYERS];
  int n = 0;
  for (uint32_t layer = 1; layer < d->tag_layers; layer++) {
    int64_t total = 0;
    for (int cat = 0; cat < MF_CAT_COUNT; cat++) total += _mf_stats_tag(d, layer, cat)->bytes.current;
    if (total <= 0) continue;
    int pos = n < MF_REPORT_TOP_LAYERS ? n++ : MF_REPORT_TOP_LAYERS;
    while (pos > 0 && top[pos - 1].bytes < total) {
      if (pos < MF_REPORT_TOP_LAYERS) top[pos] = top[pos - 1];
      pos--;
    }
    if (pos < MF_REPORT_TOP_LAYERS) top[pos] = (layer_total){layer, total};
  }
  if (n == 0) {
    _mf_sbuf_printf(out, "layers holding the most: none tagged (memfit.track(model) tags them)\n");
  } else {
    _mf_sbuf_printf(out, "layers holding the most:\n");
    for (int i = 0; i < n; i++) {
      _mf_sbuf_printf(out, "  %d. %-28s %12s  (", i + 1, _mf_layer_name_or(top[i].layer, "?"),
                      mf_format_bytes((uint64_t)top[i].bytes, a, sizeof a));
      bool first = true;
      for (int cat = 0; cat < MF_CAT_COUNT; cat++) {
        int64_t bytes = _mf_stats_tag(d, top[i].layer, cat)->bytes.current;
        if (bytes <= 0) continue;
        _mf_sbuf_printf(out, "%s%s %s", first ? "" : ", ", mf_category_name((mf_category)cat),
                        mf_format_bytes((uint64_t)bytes, c, sizeof c));
        first = false;
      }
      _mf_sbuf_printf(out, ")\n");
    }
  }
  if (d->capacity) {
    /* A budget the planner's parser reads back, never above the capacity. */
    char budget[32];
    if (d->capacity % MF_GiB == 0) snprintf(budget, sizeof budget, "%lluGiB", (unsigned long long)(d->capacity / MF_GiB));
    else if (d->capacity >= MF_MiB) snprintf(budget, sizeof budget, "%lluMiB", (unsigned long long)(d->capacity / MF_MiB));
    else snprintf(budget, sizeof budget, "%llu", (unsigned long long)d->capacity);
    _mf_sbuf_printf(out, "to fit: profile the job and run `memfit-plan PROFILE.json --budget %s` for the largest "
                         "batch and the layers to checkpoint\n", budget);
  }
}

MF_API mf_status mf_oom_report(mf_allocator *a, char *buf, size_t len, size_t *needed) {
  if (!a) return _mf_error(MF_ERR_INVALID, "mf_oom_report: NULL allocator");
  pthread_mutex_lock(&a->report_lock);
  mf_sbuf s = {0};
  if (a->oom_report) _mf_sbuf_printf(&s, "%s", a->oom_report);
  mf_status st = _mf_sbuf_export(&s, buf, len, needed);
  pthread_mutex_unlock(&a->report_lock);
  _mf_sbuf_free(&s);
  return st;
}

MF_API mf_status mf_memory_report(mf_allocator *a, int device, char *buf, size_t len, size_t *needed) {
  if (!a || device < 0 || device >= a->device_count)
    return _mf_error(MF_ERR_INVALID, "mf_memory_report: bad allocator or device %d", device);
  mf_device *d = &a->devices[device];
  char headline[64];
  snprintf(headline, sizeof headline, "memfit: memory of device %d", device);
  mf_sbuf s = {0};
  pthread_mutex_lock(&d->lock);
  _mf_report_build(d, &s, headline);
  pthread_mutex_unlock(&d->lock);
  mf_status st = _mf_sbuf_export(&s, buf, len, needed);
  _mf_sbuf_free(&s);
  return st;
}
