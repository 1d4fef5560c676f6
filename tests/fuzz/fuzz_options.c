/* fuzz_options.c — libFuzzer harness of the allocator's options: mf_parse_size
 * and mf_options_parse ("key:value,...") on the text before the first NUL
 * byte; every option read back must parse again to the same value; then an
 * allocator made with the options on the virtual backend runs a short script
 * (the bytes after the NUL: mallocs, frees, stream uses, empty_cache) with
 * mf_check after each step, so a value that parses but breaks the allocator
 * later (large_segment near 2^64 once did) is caught where it breaks it. */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <memfit/memfit.h>

#include "fuzz_util.h"

#define MAX_LIVE 32
#define MAX_STEPS 64
/* mf_check sorts every mapped granule: with up to 32 GiB live (16K granules)
 * the options fuzzer ran at 150 inputs/s. Requests that would take the live
 * bytes past this are skipped, unless no device could hold them anyway. */
#define MAX_LIVE_BYTES (4ull << 30)
#define HOPELESS_BYTES (1ull << 62)
#define MAX_DEVICE_BYTES (1ull << 40)

/* Sizes around the allocator's boundaries: MF_ROUND (512), the small/large
 * pool split (1 MiB), 2 MiB granules and segments, PyTorch's 20 MiB, and
 * requests no device can hold. */
static const uint64_t request_sizes[] = {
    0,         1,         511,        512,          513,           4096,
    1048575,   1048576,   1048577,    2097152,      2097153,       10485760,
    20971527,  67108864,  1ull << 30, 1ull << 32,   (uint64_t)SIZE_MAX / 2, SIZE_MAX};
#define N_SIZES (sizeof request_sizes / sizeof request_sizes[0])

/* The script when the input has none: one of each kind of step. */
static const uint8_t default_script[] = {0, 1, 0, 7,  0, 9, 0, 12, 2, 0, 1, 1, 0, 2, 3, 0,
                                         0, 13, 4, 0, 1, 0, 0, 16, 0, 17, 1, 3, 5, 0};

/* Every option as text must set again to the same text: what mf_options_get
 * prints is what mf_options_parse reads. */
static void check_read_back(const mf_options *o) {
  mf_options *fresh = mf_options_new();
  FUZZ_CHECK(fresh, "mf_options_new: %s", mf_last_error());
  for (int i = 0; i < mf_options_count(); i++) {
    const char *key = mf_options_key(i);
    char text[1200], again[1200];
    FUZZ_CHECK(mf_options_get(o, key, text, sizeof text) == MF_OK, "get %s: %s", key, mf_last_error());
    FUZZ_CHECK(mf_options_set(fresh, key, text) == MF_OK, "%s read back as '%s' does not set again: %s", key, text,
               mf_last_error());
    FUZZ_CHECK(mf_options_get(fresh, key, again, sizeof again) == MF_OK, "get %s: %s", key, mf_last_error());
    FUZZ_CHECK(strcmp(text, again) == 0, "%s: '%s' set again reads '%s'", key, text, again);
  }
  mf_options_free(fresh);
}

/* 1 to 19 digits and nothing else: a size mf_parse_size must read exactly. */
static bool plain_bytes(const char *text) {
  size_t n = strspn(text, "0123456789");
  return n >= 1 && n <= 19 && text[n] == '\0';
}

static uint64_t option_number(const mf_options *o, const char *key) {
  char text[64];
  FUZZ_CHECK(mf_options_get(o, key, text, sizeof text) == MF_OK, "get %s: %s", key, mf_last_error());
  return strtoull(text, NULL, 10);
}

static void check_allocator(mf_allocator *a, const char *after) {
  mf_status st = mf_check(a);
  FUZZ_CHECK(st == MF_OK, "mf_check after %s: %s", after, mf_last_error());
}

static void run_script(mf_allocator *a, const uint8_t *script, size_t len) {
  mf_backend *backend = mf_allocator_backend(a);
  int devices = mf_allocator_device_count(a);
  void *live[MAX_LIVE];
  uint64_t live_size[MAX_LIVE], live_bytes = 0;
  size_t n_live = 0;
  for (size_t i = 0; i + 1 < len && i / 2 < MAX_STEPS; i += 2) {
    uint8_t op = script[i], arg = script[i + 1];
    int device = arg % devices;
    uintptr_t stream = (op >> 4) & 3; /* streams 0-3 */
    switch (op % 6) {
    case 0: { /* malloc */
      if (n_live == MAX_LIVE) break;
      uint64_t size = request_sizes[arg % N_SIZES];
      if (size < HOPELESS_BYTES && live_bytes + size > MAX_LIVE_BYTES) break;
      void *p = mf_malloc(a, device, (size_t)size, stream);
      if (p) {
        live_bytes += size;
        live_size[n_live] = size;
        FUZZ_CHECK(mf_device_of(a, p) == device, "block of device %d reports device %d", device,
                   mf_device_of(a, p));
        live[n_live++] = p;
      } else {
        /* A request that fails says why; memfit never returns NULL for a fit. */
        FUZZ_CHECK(mf_last_status() != MF_OK, "mf_malloc(%llu) returned NULL with MF_OK",
                   (unsigned long long)size);
      }
      break;
    }
    case 1: /* free */
    case 2: /* used on another stream, then freed: the free waits for that stream */
      if (!n_live) break;
      {
        size_t k = arg % n_live;
        if (op % 6 == 2)
          FUZZ_CHECK(mf_record_stream(a, live[k], stream + 1) == MF_OK, "mf_record_stream: %s", mf_last_error());
        FUZZ_CHECK(mf_free(a, live[k]) == MF_OK, "mf_free of a live block: %s", mf_last_error());
        live_bytes -= live_size[k];
        n_live--;
        live[k] = live[n_live];
        live_size[k] = live_size[n_live];
      }
      break;
    case 3:
      FUZZ_CHECK(mf_empty_cache(a) == MF_OK, "mf_empty_cache: %s", mf_last_error());
      break;
    case 4: /* the recorded streams' work completes */
      FUZZ_CHECK(mf_backend_sim_complete(backend, device, UINTPTR_MAX) == MF_OK, "sim_complete: %s",
                 mf_last_error());
      break;
    case 5: /* the next segment or granule map fails */
      mf_backend_sim_fail_maps(backend, arg & 1);
      break;
    }
    check_allocator(a, "a script step");
  }
  mf_backend_sim_fail_maps(backend, -1);
  while (n_live) FUZZ_CHECK(mf_free(a, live[--n_live]) == MF_OK, "mf_free at the end: %s", mf_last_error());
  for (int d = 0; d < devices; d++) {
    FUZZ_CHECK(mf_backend_sim_complete(backend, d, UINTPTR_MAX) == MF_OK, "sim_complete: %s", mf_last_error());
  }
  FUZZ_CHECK(mf_empty_cache(a) == MF_OK, "mf_empty_cache: %s", mf_last_error());
  check_allocator(a, "freeing everything");
  for (int d = 0; d < devices; d++) {
    mf_stats s;
    FUZZ_CHECK(mf_get_stats(a, d, &s) == MF_OK, "mf_get_stats: %s", mf_last_error());
    FUZZ_CHECK(s.requested_bytes.current == 0 && s.allocated_bytes.current == 0 && s.active_blocks.current == 0,
               "device %d: %lld requested, %lld allocated bytes in %lld blocks after every free", d,
               (long long)s.requested_bytes.current, (long long)s.allocated_bytes.current,
               (long long)s.active_blocks.current);
    FUZZ_CHECK(s.reserved_bytes.peak >= s.allocated_bytes.peak && s.allocated_bytes.peak >= s.requested_bytes.peak,
               "device %d: peaks reserved %lld < allocated %lld or < requested %lld", d,
               (long long)s.reserved_bytes.peak, (long long)s.allocated_bytes.peak,
               (long long)s.requested_bytes.peak);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = fuzz_text(data, size);
  if (!text) return 0;
  const char *script_text = fuzz_second_text(text, size);

  uint64_t bytes = 0;
  if (mf_parse_size(text, &bytes) != MF_OK) {
    FUZZ_CHECK(*mf_last_error(), "mf_parse_size failed with no message");
    FUZZ_CHECK(!plain_bytes(text), "'%s' is a plain number of bytes, refused: %s", text, mf_last_error());
  } else if (plain_bytes(text)) {
    FUZZ_CHECK(bytes == strtoull(text, NULL, 10), "'%s' parsed as %llu", text, (unsigned long long)bytes);
  }

  mf_options *o = mf_options_new();
  FUZZ_CHECK(o, "mf_options_new: %s", mf_last_error());
  if (mf_options_parse(o, text) != MF_OK) {
    FUZZ_CHECK(*mf_last_error(), "mf_options_parse failed with no message");
    FUZZ_SAY("options refused: %s\n", mf_last_error());
    mf_options_free(o);
    free(text);
    return 0;
  }
  check_read_back(o);

  /* Addresses only, and no file written wherever the input points. */
  FUZZ_CHECK(mf_options_set(o, "backend", "virtual") == MF_OK, "%s", mf_last_error());
  FUZZ_CHECK(mf_options_set(o, "event_log", "") == MF_OK, "%s", mf_last_error());
  /* The device stands for a real one, of at most 1 TiB, whatever the
   * capacity says: the allocator keeps a handle per granule on the host, and
   * a virtual device of 2^64 bytes could make it hold 32 TiB of them. */
  uint64_t capacity = option_number(o, "capacity");
  uint64_t device_bytes = capacity && capacity < MAX_DEVICE_BYTES ? capacity : MAX_DEVICE_BYTES;
  mf_backend *backend = NULL;
  mf_status st = mf_backend_virtual_create((int)option_number(o, "devices"), device_bytes, &backend);
  FUZZ_CHECK(st == MF_OK, "mf_backend_virtual_create: %s", mf_last_error());
  mf_allocator *a = NULL;
  st = mf_allocator_create_with(backend, o, &a);
  if (st == MF_OK) {
    check_allocator(a, "creation");
    FUZZ_SAY("allocator made: %d device(s), granule %zu, %s script\n", mf_allocator_device_count(a),
             mf_allocator_granule(a), script_text ? "the input's" : "the default");
    const uint8_t *script = default_script;
    size_t script_len = sizeof default_script;
    if (script_text) {
      script = (const uint8_t *)script_text;
      script_len = size - (size_t)(script_text - text);
    }
    run_script(a, script, script_len);
    mf_allocator_destroy(a);
  } else {
    /* Options that parse but make no allocator must say why. */
    FUZZ_CHECK(!a && *mf_last_error(), "mf_allocator_create_with failed (%s) with no message", mf_status_name(st));
    FUZZ_SAY("no allocator: %s\n", mf_last_error());
  }
  mf_options_free(o);
  free(text);
  return 0;
}
