/* stats.c — accounting of live blocks by (category, layer) and globally, the
 * public getters, peak resets and the JSON export. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

bool _mf_stats_reserve_layer(mf_device *d, uint32_t layer) {
  if (MF_LIKELY(layer < d->tag_layers)) return true;
  uint32_t layers = d->tag_layers ? d->tag_layers : 64;
  while (layers <= layer) layers *= 2;
  mf_tag_stats *grown = realloc(d->tag_stats, (size_t)layers * MF_CAT_COUNT * sizeof *grown);
  if (!grown) return false;
  memset(grown + (size_t)d->tag_layers * MF_CAT_COUNT, 0,
         (size_t)(layers - d->tag_layers) * MF_CAT_COUNT * sizeof *grown);
  d->tag_stats = grown;
  d->tag_layers = layers;
  return true;
}

mf_tag_stats *_mf_stats_tag(mf_device *d, uint32_t layer, unsigned category) {
  if (layer >= d->tag_layers || category >= MF_CAT_COUNT) return NULL;
  return &d->tag_stats[(size_t)layer * MF_CAT_COUNT + category];
}

static inline void tag_inc(mf_tag_stats *t, int64_t size, int64_t requested) {
  _mf_counter_inc(&t->bytes, size);
  _mf_counter_inc(&t->requested, requested);
  _mf_counter_inc(&t->blocks, 1);
}

static inline void tag_dec(mf_tag_stats *t, int64_t size, int64_t requested) {
  _mf_counter_dec(&t->bytes, size);
  _mf_counter_dec(&t->requested, requested);
  _mf_counter_dec(&t->blocks, 1);
}

void _mf_stats_account(mf_device *d, const mf_block *b, int sign) {
  const int64_t size = (int64_t)b->size, requested = (int64_t)b->requested;
  mf_stats *s = &d->stats;
  mf_tag_stats *t = _mf_stats_tag(d, b->tag.layer, b->tag.category);
  mf_tag_stats *c = &d->category_stats[b->tag.category];
  if (sign > 0) {
    _mf_counter_inc(&s->allocated_bytes, size);
    _mf_counter_inc(&s->requested_bytes, requested);
    _mf_counter_inc(&s->active_blocks, 1);
    if (t) tag_inc(t, size, requested);
    tag_inc(c, size, requested);
  } else {
    _mf_counter_dec(&s->allocated_bytes, size);
    _mf_counter_dec(&s->requested_bytes, requested);
    _mf_counter_dec(&s->active_blocks, 1);
    if (t) tag_dec(t, size, requested);
    tag_dec(c, size, requested);
  }
}

static mf_device *locked_device(mf_allocator *a, int device, const char *what) {
  if (!a || device < 0 || device >= a->device_count) {
    _mf_error(MF_ERR_INVALID, "%s: bad allocator or device %d", what, device);
    return NULL;
  }
  mf_device *d = &a->devices[device];
  pthread_mutex_lock(&d->lock);
  return d;
}

MF_API mf_status mf_get_stats(mf_allocator *a, int device, mf_stats *out) {
  if (!out) return _mf_error(MF_ERR_INVALID, "mf_get_stats: NULL out");
  mf_device *d = locked_device(a, device, "mf_get_stats");
  if (!d) return MF_ERR_INVALID;
  *out = d->stats;
  pthread_mutex_unlock(&d->lock);
  return MF_OK;
}

MF_API mf_status mf_get_tag_stats(mf_allocator *a, int device, mf_category category, uint32_t layer,
                                  mf_tag_stats *out) {
  if (!out || (unsigned)category >= MF_CAT_COUNT)
    return _mf_error(MF_ERR_INVALID, "mf_get_tag_stats: bad category or NULL out");
  mf_device *d = locked_device(a, device, "mf_get_tag_stats");
  if (!d) return MF_ERR_INVALID;
  mf_tag_stats *t = _mf_stats_tag(d, layer, category);
  if (t) *out = *t;
  else memset(out, 0, sizeof *out);
  pthread_mutex_unlock(&d->lock);
  return MF_OK;
}

MF_API mf_status mf_get_category_stats(mf_allocator *a, int device, mf_category category, mf_tag_stats *out) {
  if (!out || (unsigned)category >= MF_CAT_COUNT)
    return _mf_error(MF_ERR_INVALID, "mf_get_category_stats: bad category or NULL out");
  mf_device *d = locked_device(a, device, "mf_get_category_stats");
  if (!d) return MF_ERR_INVALID;
  *out = d->category_stats[category];
  pthread_mutex_unlock(&d->lock);
  return MF_OK;
}

static inline void reset_peak(mf_counter *c) { c->peak = c->current; }

static void reset_device_peaks(mf_device *d) {
#define MF_X_COUNTER(name) reset_peak(&d->stats.name);
  MF_STATS_COUNTERS(MF_X_COUNTER)
#undef MF_X_COUNTER
  for (size_t i = 0; i < (size_t)d->tag_layers * MF_CAT_COUNT; i++) {
    reset_peak(&d->tag_stats[i].bytes);
    reset_peak(&d->tag_stats[i].requested);
    reset_peak(&d->tag_stats[i].blocks);
  }
  for (int c = 0; c < MF_CAT_COUNT; c++) {
    reset_peak(&d->category_stats[c].bytes);
    reset_peak(&d->category_stats[c].requested);
    reset_peak(&d->category_stats[c].blocks);
  }
}

MF_API mf_status mf_reset_peaks(mf_allocator *a, int device) {
  if (!a) return _mf_error(MF_ERR_INVALID, "mf_reset_peaks: NULL allocator");
  if (device >= a->device_count) return _mf_error(MF_ERR_INVALID, "mf_reset_peaks: bad device %d", device);
  for (int i = device < 0 ? 0 : device; i < (device < 0 ? a->device_count : device + 1); i++) {
    mf_device *d = &a->devices[i];
    pthread_mutex_lock(&d->lock);
    reset_device_peaks(d);
    pthread_mutex_unlock(&d->lock);
  }
  return MF_OK;
}

static void json_counter(mf_sbuf *s, const char *name, const mf_counter *c, const char *sep) {
  _mf_sbuf_printf(s, "\"%s\":{\"current\":%lld,\"peak\":%lld,\"total\":%lld}%s", name, (long long)c->current,
                  (long long)c->peak, (long long)c->total, sep);
}

static void json_tag_stats(mf_sbuf *s, const mf_tag_stats *t) {
  _mf_sbuf_printf(s, "{");
  json_counter(s, "bytes", &t->bytes, ",");
  json_counter(s, "requested", &t->requested, ",");
  json_counter(s, "blocks", &t->blocks, "}");
}

#define MF_X_NAME(name) #name,
static const char *const counter_names[] = {MF_STATS_COUNTERS(MF_X_NAME)};
static const char *const event_names[] = {MF_STATS_EVENTS(MF_X_NAME)};
#undef MF_X_NAME
#define NAMES(a) ((int)(sizeof a / sizeof a[0]))

MF_API int mf_stats_counter_count(void) { return NAMES(counter_names); }
MF_API const char *mf_stats_counter_name(int i) { return i >= 0 && i < NAMES(counter_names) ? counter_names[i] : NULL; }
MF_API int mf_stats_event_count(void) { return NAMES(event_names); }
MF_API const char *mf_stats_event_name(int i) { return i >= 0 && i < NAMES(event_names) ? event_names[i] : NULL; }
#undef NAMES

MF_API mf_status mf_stats_json(mf_allocator *a, int device, char *buf, size_t len, size_t *needed) {
  mf_device *d = locked_device(a, device, "mf_stats_json");
  if (!d) return MF_ERR_INVALID;
  mf_sbuf s = {0};
  _mf_sbuf_printf(&s, "{\"device\":%d,\"capacity\":%llu,", device, (unsigned long long)d->capacity);
#define MF_X_COUNTER(name) json_counter(&s, #name, &d->stats.name, ",");
  MF_STATS_COUNTERS(MF_X_COUNTER)
#undef MF_X_COUNTER
#define MF_X_EVENT(name) _mf_sbuf_printf(&s, "\"%s\":%lld,", #name, (long long)d->stats.name);
  MF_STATS_EVENTS(MF_X_EVENT)
#undef MF_X_EVENT
  _mf_sbuf_printf(&s, "\"categories\":{");
  for (int c = 0; c < MF_CAT_COUNT; c++) {
    _mf_sbuf_printf(&s, "%s\"%s\":", c ? "," : "", mf_category_name((mf_category)c));
    json_tag_stats(&s, &d->category_stats[c]);
  }
  _mf_sbuf_printf(&s, "},\"layers\":[");
  bool first = true;
  for (uint32_t layer = 0; layer < d->tag_layers; layer++) {
    bool used = false;
    for (int c = 0; c < MF_CAT_COUNT; c++) used |= _mf_stats_tag(d, layer, c)->blocks.total > 0;
    if (!used) continue;
    _mf_sbuf_printf(&s, "%s{\"id\":%u,\"name\":", first ? "" : ",", layer);
    _mf_sbuf_json_string(&s, _mf_layer_name_or(layer, ""));
    _mf_sbuf_printf(&s, ",\"categories\":{");
    bool first_cat = true;
    for (int c = 0; c < MF_CAT_COUNT; c++) {
      mf_tag_stats *t = _mf_stats_tag(d, layer, c);
      if (!t->blocks.total) continue;
      _mf_sbuf_printf(&s, "%s\"%s\":", first_cat ? "" : ",", mf_category_name((mf_category)c));
      json_tag_stats(&s, t);
      first_cat = false;
    }
    _mf_sbuf_printf(&s, "}}");
    first = false;
  }
  _mf_sbuf_printf(&s, "]}");
  pthread_mutex_unlock(&d->lock);
  mf_status st = _mf_sbuf_export(&s, buf, len, needed);
  _mf_sbuf_free(&s);
  return st;
}
