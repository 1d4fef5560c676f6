/* event_log.c — the optional event log: every alloc, free, segment map and
 * unmap as a line of text. Alloc and free lines are a valid trace for
 * memfit-replay; the time, device, block size and tag follow a '#'. */
#include <time.h>

#include "internal.h"

uint64_t _mf_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

MF_API mf_status mf_event_log_start(mf_allocator *a, const char *path) {
  if (!a || !path || !*path) return _mf_error(MF_ERR_INVALID, "mf_event_log_start: NULL allocator or empty path");
  FILE *f = fopen(path, "w");
  if (!f) return _mf_error(MF_ERR_IO, "event log: cannot open '%s' for writing", path);
  fprintf(f, "# memfit event log %s\n# alloc <ptr> <requested> <stream> # t_ns dev size cat layer phase\n",
          mf_version());
  pthread_mutex_lock(&a->log_lock);
  FILE *old = a->log;
  a->log_start_ns = _mf_now_ns();
  a->log = f;
  __atomic_store_n(&a->log_sinks, a->log_sinks | MF_SINK_FILE, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&a->log_lock);
  if (old) fclose(old);
  return MF_OK;
}

MF_API mf_status mf_event_log_stop(mf_allocator *a) {
  if (!a) return _mf_error(MF_ERR_INVALID, "mf_event_log_stop: NULL allocator");
  pthread_mutex_lock(&a->log_lock);
  FILE *f = a->log;
  a->log = NULL;
  __atomic_store_n(&a->log_sinks, a->log_sinks & ~MF_SINK_FILE, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&a->log_lock);
  if (f && fclose(f) != 0) return _mf_error(MF_ERR_IO, "event log: error closing the file");
  return MF_OK;
}

void _mf_log_write(mf_allocator *a, int device, mf_log_kind kind, uintptr_t addr, size_t requested, size_t size,
                   uintptr_t stream, mf_tag tag) {
  pthread_mutex_lock(&a->log_lock);
  if (a->log_sinks & MF_SINK_TRACE) {
    static const uint8_t trace_kind[] = {MF_TRACE_ALLOC, MF_TRACE_FREE, MF_TRACE_SEGMENT_MAP, MF_TRACE_SEGMENT_UNMAP};
    _mf_trace_append(a, trace_kind[kind], device, addr, requested, size, tag, (mf_tag){0});
  }
  FILE *f = a->log;
  if (f) {
    unsigned long long t = _mf_now_ns() - a->log_start_ns, p = addr, s = stream;
    switch (kind) {
    case MF_LOG_ALLOC:
      fprintf(f, "alloc 0x%llx %zu %llu # t_ns=%llu dev=%d size=%zu cat=%s layer=%s phase=%s\n", p, requested, s, t,
              device, size, mf_category_name((mf_category)tag.category), _mf_layer_name_or(tag.layer, "-"),
              mf_phase_name((mf_phase)tag.phase));
      break;
    case MF_LOG_FREE:
      fprintf(f, "free 0x%llx # t_ns=%llu dev=%d size=%zu requested=%zu cat=%s layer=%s\n", p, t, device, size,
              requested, mf_category_name((mf_category)tag.category), _mf_layer_name_or(tag.layer, "-"));
      break;
    case MF_LOG_SEGMENT_MAP:
    case MF_LOG_SEGMENT_UNMAP:
      fprintf(f, "# segment_%s addr=0x%llx size=%zu stream=%llu t_ns=%llu dev=%d\n",
              kind == MF_LOG_SEGMENT_MAP ? "map" : "unmap", p, size, s, t, device);
      break;
    }
  }
  pthread_mutex_unlock(&a->log_lock);
}

void _mf_log_retag(mf_allocator *a, int device, uintptr_t addr, size_t requested, size_t size, mf_tag old,
                   mf_tag tag) {
  pthread_mutex_lock(&a->log_lock);
  if (a->log_sinks & MF_SINK_TRACE) _mf_trace_append(a, MF_TRACE_RETAG, device, addr, requested, size, tag, old);
  if (a->log)
    fprintf(a->log, "# retag 0x%llx t_ns=%llu dev=%d cat=%s layer=%s phase=%s\n", (unsigned long long)addr,
            (unsigned long long)(_mf_now_ns() - a->log_start_ns), device, mf_category_name((mf_category)tag.category),
            _mf_layer_name_or(tag.layer, "-"), mf_phase_name((mf_phase)tag.phase));
  pthread_mutex_unlock(&a->log_lock);
}
