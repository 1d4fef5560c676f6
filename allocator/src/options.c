/* options.c — the one table of options: defaults, parsing of "key:value,..."
 * strings and MEMFIT_CONF, size and boolean syntax, and clear errors that name
 * the key and value at fault. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"

typedef enum { OPT_STRING, OPT_SIZE, OPT_INT, OPT_BOOL } opt_type;

typedef struct {
  const char *name;
  opt_type type;
  const char *default_value;
  const char *help;
  bool selects_backend; /* the backend and its simulated devices: fixed (cuda) under PyTorch's plugin */
} opt_row;

/* Indexed by mf_option_id: keep in the order of the enum in internal.h. */
static const opt_row option_table[MF_OPT_COUNT] = {
    [MF_OPT_BACKEND] = {"backend", OPT_STRING, "cuda",
                        "where segments come from: cuda, host (jemalloc, capped) or virtual (addresses only)", true},
    [MF_OPT_DEVICES] = {"devices", OPT_INT, "1", "number of devices of a simulated (host/virtual) backend", true},
    [MF_OPT_CAPACITY] = {"capacity", OPT_SIZE, "0",
                         "memory budget per device; reserved memory never exceeds it (0: the device's total)"},
    [MF_OPT_MAX_SPLIT_SIZE] = {"max_split_size", OPT_SIZE, "0",
                               "cached blocks larger than this are never split (0: no limit)"},
    [MF_OPT_LARGE_SEGMENT] = {"large_segment", OPT_SIZE, "2MiB",
                              "smallest segment mapped for a large request (PyTorch uses 20MiB for 1-10MiB "
                              "requests); with merge_segments, 2MiB wastes least"},
    [MF_OPT_LARGE_SPLIT] = {"large_split", OPT_SIZE, "1MiB",
                            "a large-pool block is split only when the remainder is larger than this (as "
                            "PyTorch: 1MiB); 0 splits every remainder, so allocated bytes track requested ones"},
    [MF_OPT_SEGMENT_ROUND] = {"segment_round", OPT_SIZE, "2MiB",
                              "large segments are multiples of this (2MiB: CUDA's mapping granularity; a "
                              "multiple of 512)"},
    [MF_OPT_MERGE_SEGMENTS] = {"merge_segments", OPT_BOOL, "true",
                               "on a cache miss, release this pool's whole free segments and map one "
                               "segment that covers them and the request"},
    [MF_OPT_VMM] = {"vmm", OPT_STRING, "auto",
                    "page-mapped pools: auto (where the backend can map pages, else segments with a "
                    "one-line message), on (fail where it cannot) or off (segments)"},
    [MF_OPT_VMM_GRANULE] = {"vmm_granule", OPT_SIZE, "0",
                            "the granule of page-mapped pools (0: the backend's: cuda's mapping granularity, "
                            "host 64KiB, virtual 2MiB); a multiple of the backend's"},
    [MF_OPT_EVENT_LOG] = {"event_log", OPT_STRING, "", "write every alloc/free/segment event to this file"},
    [MF_OPT_CHECK] = {"check", OPT_BOOL, MEMFIT_DEBUG >= 2 ? "true" : "false",
                      "run mf_check after every operation (slow; for debugging; on by default in MEMFIT_DEBUG=2 builds)"},
};

typedef struct {
  uint64_t number; /* sizes, ints and booleans */
  char *text;      /* strings (owned) */
} opt_value;

struct mf_options {
  opt_value values[MF_OPT_COUNT];
};

static int find_option(const char *key, size_t len) {
  for (int i = 0; i < MF_OPT_COUNT; i++)
    if (strlen(option_table[i].name) == len && strncmp(option_table[i].name, key, len) == 0) return i;
  return -1;
}

MF_API mf_status mf_parse_size(const char *text, uint64_t *out) {
  if (!text || !out) return _mf_error(MF_ERR_INVALID, "mf_parse_size: NULL argument");
  const char *p = text;
  while (isspace((unsigned char)*p)) p++;
  if (!isdigit((unsigned char)*p) && *p != '.')
    return _mf_error(MF_ERR_INVALID, "bad size '%s': expected a number such as 512, 64MiB or 1.5GiB", text);
  errno = 0;
  char *end;
  double number = strtod(p, &end);
  if (errno || end == p || !isfinite(number) || number < 0)
    return _mf_error(MF_ERR_INVALID, "bad size '%s': expected a number such as 512, 64MiB or 1.5GiB", text);
  /* Plain decimal only (strtod would also take hex and exponents); integers
   * are read exactly, since a double has only 53 bits. */
  bool integer = true;
  for (const char *q = p; q < end; q++) {
    if (*q != '.' && !isdigit((unsigned char)*q))
      return _mf_error(MF_ERR_INVALID, "bad size '%s': expected a decimal number such as 512, 64MiB or 1.5GiB", text);
    integer &= *q != '.';
  }
  uint64_t whole = 0;
  if (integer) {
    errno = 0;
    unsigned long long n = strtoull(p, NULL, 10);
    if (errno == ERANGE) return _mf_error(MF_ERR_INVALID, "bad size '%s': larger than 2^64 bytes", text);
    whole = n;
  }
  while (isspace((unsigned char)*end)) end++;
  static const struct { const char *suffix; double scale; } units[] = {
      {"", 1},       {"b", 1},          {"k", 1024.0},     {"kib", 1024.0},
      {"kb", 1024.0}, {"m", 1048576.0},  {"mib", 1048576.0}, {"mb", 1048576.0},
      {"g", 1073741824.0}, {"gib", 1073741824.0}, {"gb", 1073741824.0},
      {"t", 1099511627776.0}, {"tib", 1099511627776.0}, {"tb", 1099511627776.0}};
  char suffix[8];
  size_t n = 0;
  while (end[n] && !isspace((unsigned char)end[n]) && n < sizeof suffix - 1) {
    suffix[n] = (char)tolower((unsigned char)end[n]);
    n++;
  }
  suffix[n] = '\0';
  const char *rest = end + n;
  while (isspace((unsigned char)*rest)) rest++;
  if (*rest) return _mf_error(MF_ERR_INVALID, "bad size '%s': trailing text", text);
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
    if (strcmp(suffix, units[i].suffix) == 0) {
      uint64_t scale = (uint64_t)units[i].scale;
      if (integer) {
        if (whole > UINT64_MAX / scale) return _mf_error(MF_ERR_INVALID, "bad size '%s': larger than 2^64 bytes", text);
        *out = whole * scale;
        return MF_OK;
      }
      double bytes = number * units[i].scale;
      if (bytes >= 18446744073709551616.0)
        return _mf_error(MF_ERR_INVALID, "bad size '%s': larger than 2^64 bytes", text);
      /* "0.1" would truncate to 0, which options read as "no limit". */
      if (number > 0 && bytes < 1)
        return _mf_error(MF_ERR_INVALID,
                         "bad size '%s': less than one byte (a size without a unit is in bytes: 0.1GiB is a "
                         "tenth of a GiB)", text);
      *out = (uint64_t)bytes;
      return MF_OK;
    }
  }
  return _mf_error(MF_ERR_INVALID, "bad size '%s': unknown unit '%s' (use B, KiB, MiB, GiB, TiB or K, M, G, T)",
                   text, suffix);
}

static mf_status parse_bool(const char *text, bool *out) {
  static const char *yes[] = {"1", "true", "yes", "on"}, *no[] = {"0", "false", "no", "off"};
  for (int i = 0; i < 4; i++) {
    if (strcasecmp(text, yes[i]) == 0) { *out = true; return MF_OK; }
    if (strcasecmp(text, no[i]) == 0) { *out = false; return MF_OK; }
  }
  return MF_ERR_INVALID;
}

static mf_status set_option(mf_options *o, int id, const char *value) {
  const opt_row *row = &option_table[id];
  opt_value *v = &o->values[id];
  switch (row->type) {
  case OPT_STRING: {
    if (id == MF_OPT_BACKEND && strcmp(value, "cuda") != 0 && strcmp(value, "host") != 0 &&
        strcmp(value, "virtual") != 0)
      return _mf_error(MF_ERR_INVALID, "option backend: bad value '%s' (expected cuda, host or virtual)", value);
    if (id == MF_OPT_VMM && strcmp(value, "auto") != 0 && strcmp(value, "on") != 0 && strcmp(value, "off") != 0)
      return _mf_error(MF_ERR_INVALID, "option vmm: bad value '%s' (expected auto, on or off)", value);
    char *copy = strdup(value);
    if (!copy) return _mf_error(MF_ERR_HOST_MEMORY, "option %s: out of host memory", row->name);
    free(v->text);
    v->text = copy;
    return MF_OK;
  }
  case OPT_SIZE: {
    uint64_t bytes;
    if (mf_parse_size(value, &bytes) != MF_OK) {
      char why[512];
      snprintf(why, sizeof why, "%s", mf_last_error());
      return _mf_error(MF_ERR_INVALID, "option %s: %s", row->name, why);
    }
    /* Sizes that segments and granules are rounded to: far beyond any device,
     * and small enough that rounding a request (< 2^63) cannot wrap. */
    if ((id == MF_OPT_LARGE_SEGMENT || id == MF_OPT_SEGMENT_ROUND || id == MF_OPT_VMM_GRANULE) &&
        bytes > MF_MAX_ROUNDING)
      return _mf_error(MF_ERR_INVALID, "option %s: %s (%llu bytes) is larger than the largest segment memfit maps "
                       "(256TiB)", row->name, value, (unsigned long long)bytes);
    v->number = bytes;
    return MF_OK;
  }
  case OPT_INT: {
    char *end;
    errno = 0;
    long n = strtol(value, &end, 10);
    if (errno || end == value || *end || n < 1 || n > 64)
      return _mf_error(MF_ERR_INVALID, "option %s: bad value '%s' (expected an integer from 1 to 64)", row->name,
                       value);
    v->number = (uint64_t)n;
    return MF_OK;
  }
  case OPT_BOOL: {
    bool b;
    if (parse_bool(value, &b) != MF_OK)
      return _mf_error(MF_ERR_INVALID, "option %s: bad value '%s' (expected true or false)", row->name, value);
    v->number = b;
    return MF_OK;
  }
  }
  return _mf_error(MF_ERR_INVALID, "option %s: unknown type", row->name);
}

MF_API mf_options *mf_options_new(void) {
  mf_options *o = calloc(1, sizeof *o);
  if (!o) {
    _mf_error(MF_ERR_HOST_MEMORY, "mf_options_new: out of host memory");
    return NULL;
  }
  for (int i = 0; i < MF_OPT_COUNT; i++) {
    if (set_option(o, i, option_table[i].default_value) != MF_OK) {
      mf_options_free(o);
      return NULL;
    }
  }
  return o;
}

MF_API void mf_options_free(mf_options *o) {
  if (!o) return;
  for (int i = 0; i < MF_OPT_COUNT; i++) free(o->values[i].text);
  free(o);
}

MF_API mf_options *mf_options_clone(const mf_options *o) {
  if (!o) return mf_options_new();
  mf_options *c = calloc(1, sizeof *c);
  if (!c) {
    _mf_error(MF_ERR_HOST_MEMORY, "mf_options_clone: out of host memory");
    return NULL;
  }
  for (int i = 0; i < MF_OPT_COUNT; i++) {
    c->values[i].number = o->values[i].number;
    if (o->values[i].text && !(c->values[i].text = strdup(o->values[i].text))) {
      mf_options_free(c);
      _mf_error(MF_ERR_HOST_MEMORY, "mf_options_clone: out of host memory");
      return NULL;
    }
  }
  return c;
}

static void list_keys(char *buf, size_t len) {
  size_t used = 0;
  buf[0] = '\0';
  for (int i = 0; i < MF_OPT_COUNT && used < len; i++)
    used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? ", " : "", option_table[i].name);
}

MF_API mf_status mf_options_set(mf_options *o, const char *key, const char *value) {
  if (!o || !key || !value) return _mf_error(MF_ERR_INVALID, "mf_options_set: NULL argument");
  int id = find_option(key, strlen(key));
  if (id < 0) {
    char keys[512];
    list_keys(keys, sizeof keys);
    return _mf_error(MF_ERR_INVALID, "unknown option '%s' (known: %s)", key, keys);
  }
  return set_option(o, id, value);
}

MF_API mf_status mf_options_parse(mf_options *o, const char *conf) {
  if (!o) return _mf_error(MF_ERR_INVALID, "mf_options_parse: NULL options");
  if (!conf) return MF_OK;
  const char *p = conf;
  while (*p) {
    const char *item_end = strchr(p, ',');
    size_t item_len = item_end ? (size_t)(item_end - p) : strlen(p);
    char item[1024];
    if (item_len >= sizeof item) return _mf_error(MF_ERR_INVALID, "option string item too long near '%.40s'", p);
    memcpy(item, p, item_len);
    item[item_len] = '\0';
    /* trim spaces around the item */
    char *s = item;
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = '\0';
    if (*s) {
      char *colon = strchr(s, ':');
      if (!colon)
        return _mf_error(MF_ERR_INVALID, "bad option '%s': expected key:value (e.g. capacity:8GiB)", s);
      *colon = '\0';
      char *key = s, *value = colon + 1;
      char *ke = colon;
      while (ke > key && isspace((unsigned char)ke[-1])) *--ke = '\0';
      while (isspace((unsigned char)*value)) value++;
      mf_status st = mf_options_set(o, key, value);
      if (st != MF_OK) return st;
    }
    if (!item_end) break;
    p = item_end + 1;
  }
  return MF_OK;
}

MF_API mf_status mf_options_parse_env(mf_options *o) {
  const char *conf = getenv("MEMFIT_CONF");
  if (!conf) return MF_OK;
  mf_status st = mf_options_parse(o, conf);
  if (st != MF_OK) {
    char why[768];
    snprintf(why, sizeof why, "%s", mf_last_error());
    return _mf_error(st, "MEMFIT_CONF: %s", why);
  }
  return MF_OK;
}

MF_API mf_status mf_options_get(const mf_options *o, const char *key, char *buf, size_t len) {
  if (!o || !key || !buf || len == 0) return _mf_error(MF_ERR_INVALID, "mf_options_get: bad argument");
  int id = find_option(key, strlen(key));
  if (id < 0) return _mf_error(MF_ERR_INVALID, "unknown option '%s'", key);
  const opt_value *v = &o->values[id];
  switch (option_table[id].type) {
  case OPT_STRING: snprintf(buf, len, "%s", v->text ? v->text : ""); break;
  case OPT_BOOL: snprintf(buf, len, "%s", v->number ? "true" : "false"); break;
  default: snprintf(buf, len, "%llu", (unsigned long long)v->number); break;
  }
  return MF_OK;
}

MF_API int mf_options_count(void) { return MF_OPT_COUNT; }
MF_API const char *mf_options_key(int i) { return i >= 0 && i < MF_OPT_COUNT ? option_table[i].name : NULL; }
MF_API const char *mf_options_help(int i) { return i >= 0 && i < MF_OPT_COUNT ? option_table[i].help : NULL; }
MF_API int mf_options_selects_backend(int i) { return i >= 0 && i < MF_OPT_COUNT && option_table[i].selects_backend; }

uint64_t _mf_opt_u64(const mf_options *o, mf_option_id id) { return o->values[id].number; }
bool _mf_opt_bool(const mf_options *o, mf_option_id id) { return o->values[id].number != 0; }
const char *_mf_opt_str(const mf_options *o, mf_option_id id) {
  return o->values[id].text ? o->values[id].text : "";
}

MF_API const char *mf_format_bytes(double bytes, char *buf, size_t len) {
  static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  if (!buf || !len) return buf;
  double v = bytes;
  int u = 0;
  while (fabs(v) >= 1024.0 && u < 5) {
    v /= 1024.0;
    u++;
  }
  if (u == 0) snprintf(buf, len, "%.0f B", v);
  else snprintf(buf, len, "%.2f %s", v, units[u]);
  return buf;
}
