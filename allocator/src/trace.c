/* trace.c — the in-memory trace: a bounded array of mf_trace_event that the
 * allocator appends to (under log_lock) while it is on, and that a profiler
 * reads back in one copy. Marks let the caller cut the trace into windows; each
 * mark carries its window's rise (the peak of allocated bytes since the
 * previous mark, above their value there), counted here in trace order. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

_Static_assert(sizeof(mf_trace_event) == 48, "mf_trace_event must stay 48 bytes without padding");

static void set_sinks(mf_allocator *a) {
  int sinks = (a->log ? MF_SINK_FILE : 0) | (a->trace ? MF_SINK_TRACE : 0);
  __atomic_store_n(&a->log_sinks, sinks, __ATOMIC_RELEASE);
}

void _mf_trace_append(mf_allocator *a, uint8_t kind, int device, uintptr_t addr, size_t requested, size_t size,
                      mf_tag tag, mf_tag old) {
  if (!a->trace) return;
  if (a->trace_len == a->trace_cap) {
    a->trace_dropped++;
    return;
  }
  mf_trace_event *e = &a->trace[a->trace_len++];
  if (kind == MF_TRACE_ALLOC) {
    a->trace_value += (int64_t)size;
    if (a->trace_value > a->trace_peak) a->trace_peak = a->trace_value;
  } else if (kind == MF_TRACE_FREE) {
    a->trace_value -= (int64_t)size;
  } else if (kind == MF_TRACE_MARK) {
    requested = (size_t)(a->trace_peak - a->trace_mark_value); /* the window's rise, >= 0 */
    a->trace_mark_value = a->trace_peak = a->trace_value;
  }
  e->t_ns = _mf_now_ns() - a->trace_start_ns;
  e->addr = addr;
  e->requested = requested;
  e->size = size;
  e->layer = tag.layer;
  e->kind = kind;
  e->category = tag.category;
  e->phase = tag.phase;
  e->device = (int8_t)device;
  e->old_layer = old.layer;
  e->old_category = old.category;
  e->old_phase = old.phase;
  e->reserved = 0;
}

void _mf_trace_free(mf_allocator *a) {
  free(a->trace);
  a->trace = NULL;
  a->trace_len = a->trace_cap = a->trace_dropped = 0;
}

MF_API mf_status mf_trace_start(mf_allocator *a, size_t max_events) {
  if (!a || !max_events) return _mf_error(MF_ERR_INVALID, "mf_trace_start: NULL allocator or max_events 0");
  if (max_events > SIZE_MAX / sizeof(mf_trace_event))
    return _mf_error(MF_ERR_INVALID, "mf_trace_start: max_events %zu is too large", max_events);
  mf_trace_event *buf = malloc(max_events * sizeof *buf);
  if (!buf) return _mf_error(MF_ERR_HOST_MEMORY, "mf_trace_start: no host memory for %zu events", max_events);
  pthread_mutex_lock(&a->log_lock);
  free(a->trace);
  a->trace = buf;
  a->trace_len = a->trace_dropped = 0;
  a->trace_cap = max_events;
  a->trace_value = a->trace_mark_value = a->trace_peak = 0;
  a->trace_start_ns = _mf_now_ns();
  set_sinks(a);
  pthread_mutex_unlock(&a->log_lock);
  return MF_OK;
}

/* Stopping keeps the buffer for reading but makes it unreachable to appends:
 * the capacity drops to the length, and the sink bit goes away. */
MF_API mf_status mf_trace_stop(mf_allocator *a) {
  if (!a) return _mf_error(MF_ERR_INVALID, "mf_trace_stop: NULL allocator");
  pthread_mutex_lock(&a->log_lock);
  a->trace_cap = a->trace_len;
  int sinks = a->log ? MF_SINK_FILE : 0;
  __atomic_store_n(&a->log_sinks, sinks, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&a->log_lock);
  return MF_OK;
}

MF_API mf_status mf_trace_mark(mf_allocator *a, uint64_t id) {
  if (!a) return _mf_error(MF_ERR_INVALID, "mf_trace_mark: NULL allocator");
  pthread_mutex_lock(&a->log_lock);
  if (a->log_sinks & MF_SINK_TRACE) _mf_trace_append(a, MF_TRACE_MARK, -1, (uintptr_t)id, 0, 0, (mf_tag){0}, (mf_tag){0});
  pthread_mutex_unlock(&a->log_lock);
  return MF_OK;
}

MF_API mf_status mf_trace_count(mf_allocator *a, size_t *events, size_t *dropped) {
  if (!a) return _mf_error(MF_ERR_INVALID, "mf_trace_count: NULL allocator");
  pthread_mutex_lock(&a->log_lock);
  if (events) *events = a->trace_len;
  if (dropped) *dropped = a->trace_dropped;
  pthread_mutex_unlock(&a->log_lock);
  return MF_OK;
}

MF_API mf_status mf_trace_read(mf_allocator *a, size_t first, mf_trace_event *out, size_t max, size_t *copied) {
  if (!a || (!out && max)) return _mf_error(MF_ERR_INVALID, "mf_trace_read: NULL argument");
  pthread_mutex_lock(&a->log_lock);
  size_t n = first < a->trace_len ? a->trace_len - first : 0;
  if (n > max) n = max;
  if (n) memcpy(out, a->trace + first, n * sizeof *out);
  pthread_mutex_unlock(&a->log_lock);
  if (copied) *copied = n;
  return MF_OK;
}
