/* fuzz_trace.c — libFuzzer harness of memfit-replay's trace parser
 * (benchmarks/replay/trace.c, compiled in): any bytes either parse into a
 * trace whose bookkeeping adds up (slots, pairs, the exact peak recomputed
 * here) or fail with a message. A trace that parses, up to MAX_REPLAY_OPS
 * events, is replayed through memfit on the virtual backend with mf_check
 * after every event (the first MAX_CHECKED_OPS) and each device's requested
 * peak checked against the trace's, and through the native emulation. */
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <memfit/memfit.h>

#include "fuzz_util.h"
#include "native.h"
#include "replay.h"
#include "trace.h"

#define MAX_REPLAY_OPS 10000
#define MAX_CHECKED_OPS 1000 /* mf_check walks every block: quadratic beyond this */
#define MAX_DEVICES 64       /* "dev=N" annotations above 63 are ignored by the parser */

/* trace_load reads a path: the input goes into a memory file, read through
 * /proc/self/fd, so no file is written anywhere. */
static int input_file(const uint8_t *data, size_t size, char *path, size_t len) {
  static int fd = -1;
  if (fd < 0) {
    fd = memfd_create("fuzz_trace", MFD_CLOEXEC);
    FUZZ_CHECK(fd >= 0, "memfd_create failed");
  }
  FUZZ_CHECK(ftruncate(fd, 0) == 0, "ftruncate failed");
  for (size_t done = 0; done < size;) {
    ssize_t n = pwrite(fd, data + done, size - done, (off_t)done);
    FUZZ_CHECK(n > 0, "pwrite failed");
    done += (size_t)n;
  }
  snprintf(path, len, "/proc/self/fd/%d", fd);
  return fd;
}

/* The parser's figures, recomputed from its ops: pairs, slots, the peak of
 * live requested bytes (overall and per device, over the first `upto` ops). */
static void recompute_peaks(const trace *t, size_t upto, uint64_t *peak, uint64_t device_peak[MAX_DEVICES]) {
  uint64_t *slot_size = calloc(t->slots ? t->slots : 1, sizeof *slot_size);
  uint8_t *slot_device = calloc(t->slots ? t->slots : 1, 1);
  unsigned char *live = calloc(t->slots ? t->slots : 1, 1);
  FUZZ_CHECK(slot_size && slot_device && live, "out of host memory");
  uint64_t total = 0, device_total[MAX_DEVICES] = {0};
  *peak = 0;
  memset(device_peak, 0, MAX_DEVICES * sizeof *device_peak);
  for (size_t i = 0; i < upto; i++) {
    const trace_op *op = &t->ops[i];
    FUZZ_CHECK(op->slot < t->slots, "op %zu: slot %u of %u", i, op->slot, t->slots);
    if (op->kind == TRACE_ALLOC) {
      FUZZ_CHECK(!live[op->slot], "op %zu: alloc into live slot %u", i, op->slot);
      FUZZ_CHECK(op->device < t->devices, "op %zu: device %u of %d", i, op->device, t->devices);
      live[op->slot] = 1;
      slot_size[op->slot] = op->size;
      slot_device[op->slot] = op->device;
      total += op->size;
      device_total[op->device] += op->size;
      if (total > *peak) *peak = total;
      if (device_total[op->device] > device_peak[op->device]) device_peak[op->device] = device_total[op->device];
    } else {
      FUZZ_CHECK(op->kind == TRACE_FREE, "op %zu: kind %u", i, op->kind);
      FUZZ_CHECK(live[op->slot], "op %zu: free of dead slot %u", i, op->slot);
      live[op->slot] = 0;
      total -= slot_size[op->slot];
      device_total[slot_device[op->slot]] -= slot_size[op->slot];
    }
  }
  free(slot_size);
  free(slot_device);
  free(live);
}

static void check_trace(const trace *t) {
  FUZZ_CHECK(t->allocs + t->frees == t->count, "%zu allocs + %zu frees != %zu ops", t->allocs, t->frees, t->count);
  FUZZ_CHECK(t->frees <= t->allocs, "%zu frees of %zu allocs", t->frees, t->allocs);
  FUZZ_CHECK(t->live_at_end_count == t->allocs - t->frees, "%zu live at the end, %zu allocs - %zu frees",
             t->live_at_end_count, t->allocs, t->frees);
  FUZZ_CHECK(t->slots <= t->allocs, "%u slots for %zu allocs", t->slots, t->allocs);
  FUZZ_CHECK(t->devices >= 1 && t->devices <= MAX_DEVICES, "%d devices", t->devices);
  FUZZ_CHECK(t->peak_requested <= t->total_requested, "peak %llu > total %llu",
             (unsigned long long)t->peak_requested, (unsigned long long)t->total_requested);
  uint64_t peak, device_peak[MAX_DEVICES];
  recompute_peaks(t, t->count, &peak, device_peak);
  FUZZ_CHECK(peak == t->peak_requested, "peak requested %llu, recomputed %llu", (unsigned long long)t->peak_requested,
             (unsigned long long)peak);
  /* What is live at the end is each live slot once, and only those. */
  unsigned char *seen = calloc(t->slots ? t->slots : 1, 1);
  FUZZ_CHECK(seen, "out of host memory");
  for (size_t i = 0; i < t->live_at_end_count; i++) {
    uint32_t s = t->live_at_end[i];
    FUZZ_CHECK(s < t->slots && !seen[s], "live_at_end[%zu] = slot %u twice or out of range", i, s);
    seen[s] = 1;
  }
  free(seen);
}

static void replay_through_memfit(const trace *t) {
  char conf[96];
  snprintf(conf, sizeof conf, "backend:virtual,capacity:16GiB,devices:%d", t->devices);
  mf_allocator *a = NULL;
  mf_status st = mf_allocator_create(conf, &a);
  FUZZ_CHECK(st == MF_OK, "mf_allocator_create(%s): %s", conf, mf_last_error());
  void **ptrs = calloc(t->slots ? t->slots : 1, sizeof *ptrs);
  FUZZ_CHECK(ptrs, "out of host memory");
  replay_pass pass;
  replay_status rs = replay_memfit(a, t, ptrs, t->count <= MAX_CHECKED_OPS, &pass);
  /* An alloc may fail (16 GiB per device, sizes up to 2^63); nothing else may. */
  FUZZ_CHECK(rs == REPLAY_OK || rs == REPLAY_OOM, "replay failed at op %zu (line %u): status %d, %s: %s",
             pass.failed_op, t->lines[pass.failed_op], (int)rs, mf_status_name(pass.error), mf_last_error());
  size_t done = rs == REPLAY_OK ? t->count : pass.failed_op;
  FUZZ_SAY("replayed %zu of %zu events on %d device(s)%s\n", done, t->count, t->devices,
           rs == REPLAY_OOM ? ", then an alloc failed" : "");
  st = mf_check(a);
  FUZZ_CHECK(st == MF_OK, "mf_check after %zu events: %s", done, mf_last_error());
  uint64_t peak, device_peak[MAX_DEVICES];
  recompute_peaks(t, done, &peak, device_peak);
  for (int d = 0; d < t->devices; d++) {
    mf_stats s;
    FUZZ_CHECK(mf_get_stats(a, d, &s) == MF_OK, "mf_get_stats: %s", mf_last_error());
    FUZZ_CHECK((uint64_t)s.requested_bytes.peak == device_peak[d], "device %d: requested peak %lld, trace's %llu", d,
               (long long)s.requested_bytes.peak, (unsigned long long)device_peak[d]);
    FUZZ_CHECK(s.reserved_bytes.peak >= s.allocated_bytes.peak && s.allocated_bytes.peak >= s.requested_bytes.peak,
               "device %d: peaks reserved %lld, allocated %lld, requested %lld out of order", d,
               (long long)s.reserved_bytes.peak, (long long)s.allocated_bytes.peak, (long long)s.requested_bytes.peak);
  }
  if (rs == REPLAY_OK) {
    rs = replay_memfit_release(a, t, ptrs, &pass);
    FUZZ_CHECK(rs == REPLAY_OK, "freeing what the trace left live: %s", mf_status_name(pass.error));
    st = mf_check(a);
    FUZZ_CHECK(st == MF_OK, "mf_check after the release: %s", mf_last_error());
  }
  free(ptrs);
  mf_allocator_destroy(a);
}

static void replay_through_native(const trace *t) {
  for (int expandable = 0; expandable < 2; expandable++) {
    native_config conf = {.capacity = 16ull << 30, .max_split_size = 0, .expandable = expandable};
    native_result r;
    memset(&r, 0, sizeof r);
    FUZZ_CHECK(native_replay(t, &conf, &r) == 0, "native_replay: out of host memory");
    FUZZ_CHECK(r.ooms <= 1, "%llu native ooms", (unsigned long long)r.ooms);
    if (!r.ooms)
      FUZZ_CHECK(r.peak_reserved >= r.peak_allocated && r.peak_allocated >= t->peak_requested,
                 "native%s: peaks reserved %llu, allocated %llu, requested %llu out of order",
                 expandable ? " expandable" : "", (unsigned long long)r.peak_reserved,
                 (unsigned long long)r.peak_allocated, (unsigned long long)t->peak_requested);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char path[64], err[512];
  input_file(data, size, path, sizeof path);
  memset(err, 0, sizeof err);
  trace t;
  trace_status st = trace_load(path, &t, err, sizeof err);
  if (st != TRACE_OK) {
    FUZZ_CHECK(st == TRACE_BAD_INPUT, "trace_load: status %d: %s", (int)st, err);
    FUZZ_CHECK(strncmp(err, path, strlen(path)) == 0 && memchr(err, '\0', sizeof err),
               "the message does not start with the trace's name: '%.*s'", (int)sizeof err, err);
    FUZZ_SAY("trace refused: %s\n", err);
    return 0;
  }
  check_trace(&t);
  if (t.count <= MAX_REPLAY_OPS) {
    replay_through_memfit(&t);
    replay_through_native(&t);
  }
  trace_free(&t);
  return 0;
}
