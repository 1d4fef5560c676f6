/* snapshot.c — mf_snapshot_json: every segment of one device (or of all) and
 * the blocks that tile it, with each block's state and tag, as JSON. It is
 * taken with the device locks held, so sizes, states and stats are one instant;
 * the Python package turns it into PyTorch's memory_viz snapshot. */
#include <stdlib.h>

#include "internal.h"

static const char *block_state_name(uint8_t state) {
  switch (state) {
    case MF_BLOCK_LIVE: return "allocated";
    case MF_BLOCK_PENDING: return "pending_free"; /* freed, reuse waits on record_stream events */
    default: return "free";
  }
}

static void json_block(mf_sbuf *s, const mf_block *b) {
  _mf_sbuf_printf(s, "{\"address\":%llu,\"size\":%llu,\"state\":\"%s\"", (unsigned long long)b->addr,
                  (unsigned long long)b->size, block_state_name(b->state));
  if (b->state != MF_BLOCK_FREE) { /* a free block has no requested size and no tag worth reporting */
    _mf_sbuf_printf(s, ",\"requested\":%llu,\"layer_id\":%u,\"layer\":", (unsigned long long)b->requested,
                    b->tag.layer);
    _mf_sbuf_json_string(s, _mf_layer_name_or(b->tag.layer, ""));
    _mf_sbuf_printf(s, ",\"category\":\"%s\",\"phase\":\"%s\"", mf_category_name((mf_category)b->tag.category),
                    mf_phase_name((mf_phase)b->tag.phase));
    if (b->state == MF_BLOCK_PENDING) _mf_sbuf_printf(s, ",\"pending_events\":%u", (unsigned)b->pending_events);
  }
  _mf_sbuf_printf(s, "}");
}

static int compare_segment_addresses(const void *x, const void *y) {
  uintptr_t a = (*(const mf_segment *const *)x)->addr, b = (*(const mf_segment *const *)y)->addr;
  return a < b ? -1 : a > b;
}

/* The segments of a device by address (lock held); false when out of host memory. */
static bool json_device_segments(mf_sbuf *s, const mf_device *d, bool *first) {
  size_t n = 0;
  for (const mf_segment *seg = d->segments; seg; seg = seg->next) n++;
  if (!n) return true;
  const mf_segment **sorted = malloc(n * sizeof *sorted);
  if (!sorted) return false;
  size_t i = 0;
  for (const mf_segment *seg = d->segments; seg; seg = seg->next) sorted[i++] = seg;
  qsort(sorted, n, sizeof *sorted, compare_segment_addresses);
  for (i = 0; i < n; i++) {
    const mf_segment *seg = sorted[i];
    _mf_sbuf_printf(s, "%s{\"device\":%d,\"address\":%llu,\"size\":%llu,\"pool\":\"%s\",\"stream\":%llu,"
                       "\"page_mapped\":%s,\"blocks\":[",
                    *first ? "" : ",", d->index, (unsigned long long)seg->addr, (unsigned long long)seg->size,
                    seg->pool->small ? "small" : "large", (unsigned long long)seg->pool->stream,
                    seg->range ? "true" : "false");
    for (const mf_block *b = seg->first; b; b = b->next) {
      if (b != seg->first) _mf_sbuf_printf(s, ",");
      json_block(s, b);
    }
    _mf_sbuf_printf(s, "]}");
    *first = false;
  }
  free(sorted);
  return true;
}

static void json_device_summary(mf_sbuf *s, const mf_device *d, bool first) {
  size_t pending = 0;
  for (const mf_segment *seg = d->segments; seg; seg = seg->next)
    for (const mf_block *b = seg->first; b; b = b->next) pending += b->state == MF_BLOCK_PENDING;
  const mf_stats *st = &d->stats;
  _mf_sbuf_printf(s, "%s{\"device\":%d,\"capacity\":%llu,\"allocated_bytes\":%lld,\"requested_bytes\":%lld,"
                     "\"reserved_bytes\":%lld,\"active_blocks\":%lld,\"segments\":%lld,\"pending_blocks\":%zu}",
                  first ? "" : ",", d->index, (unsigned long long)d->capacity,
                  (long long)st->allocated_bytes.current, (long long)st->requested_bytes.current,
                  (long long)st->reserved_bytes.current, (long long)st->active_blocks.current,
                  (long long)st->segments.current, pending);
}

MF_API mf_status mf_snapshot_json(mf_allocator *a, int device, char *buf, size_t len, size_t *needed) {
  if (!a || device < -1 || device >= a->device_count)
    return _mf_error(MF_ERR_INVALID, "mf_snapshot_json: bad allocator or device %d", device);
  const int lo = device < 0 ? 0 : device, hi = device < 0 ? a->device_count : device + 1;
  /* Every device at once, locked in index order (no path holds two device
   * locks, so no other order exists to deadlock with): allocations on one
   * device cannot move while another is written. */
  for (int i = lo; i < hi; i++) pthread_mutex_lock(&a->devices[i].lock);
  mf_sbuf s = {0};
  /* Alloc, free and segment events are appended with their device lock held,
   * so with every lock held the trace's length is the event that matches this
   * state: the bindings read exactly that many. */
  pthread_mutex_lock(&a->log_lock);
  bool recording = (a->log_sinks & MF_SINK_TRACE) != 0;
  size_t trace_events = a->trace_len, trace_dropped = a->trace_dropped;
  pthread_mutex_unlock(&a->log_lock);
  _mf_sbuf_printf(&s, "{\"format\":\"memfit-snapshot\",\"version\":1,\"memfit_version\":\"%s\",\"granule\":%zu,"
                      "\"trace\":{\"recording\":%s,\"events\":%zu,\"dropped\":%zu},\"devices\":[",
                  mf_version(), a->granule, recording ? "true" : "false", trace_events, trace_dropped);
  for (int i = lo; i < hi; i++) json_device_summary(&s, &a->devices[i], i == lo);
  _mf_sbuf_printf(&s, "],\"segments\":[");
  bool first = true, ok = true;
  for (int i = lo; i < hi && ok; i++) ok = json_device_segments(&s, &a->devices[i], &first);
  _mf_sbuf_printf(&s, "]}");
  for (int i = hi - 1; i >= lo; i--) pthread_mutex_unlock(&a->devices[i].lock);
  mf_status st = ok ? _mf_sbuf_export(&s, buf, len, needed)
                    : _mf_error(MF_ERR_HOST_MEMORY, "mf_snapshot_json: out of host memory");
  _mf_sbuf_free(&s);
  return st;
}
