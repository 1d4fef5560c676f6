/* options.c — the planner's options: defaults, the options JSON object of
 * mfp_plan_json, size strings ("8GiB"), and the checks that name the key of a
 * bad value. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "internal.h"
#include "memfit/memfit.h"

#define MFP_MAX_GLOBAL_BATCH ((int64_t)1 << 40)
#define MFP_MAX_FRONT_CAP (1u << 24)

MFP_API void mfp_options_init(mfp_options *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->size = sizeof *o;
  o->version = MFP_STRUCT_VERSION;
  o->headroom = MFP_HEADROOM_AUTO;
  o->objective = MFP_OBJECTIVE_MAX_BATCH;
  o->max_batch = MFP_DEFAULT_MAX_BATCH;
}

/* memfit's one size parser (libmemfit's mf_parse_size: the allocator's options,
 * Python and the planner read "1.5GiB" alike), within the planner's limit. */
MFP_API mfp_status mfp_parse_size(const char *text, uint64_t *bytes) {
  if (!text || !bytes) return _mfp_error(MFP_ERR_INVALID, "mfp_parse_size: NULL argument");
  uint64_t n = 0;
  if (mf_parse_size(text, &n) != MF_OK) return _mfp_error(MFP_ERR_INVALID, "%s", mf_last_error());
  if (n > (UINT64_MAX >> 1)) return _mfp_error(MFP_ERR_INVALID, "bad size '%s': larger than 2^63 bytes", text);
  *bytes = n;
  return MFP_OK;
}

/* What needs no profile; every message starts with the key. */
static mfp_status check_options(const mfp_options *o) {
  if (o->size != sizeof *o || o->version != MFP_STRUCT_VERSION)
    return _mfp_error(MFP_ERR_INVALID, "options: struct size %u version %u, expected %zu version %d (call mfp_options_init)",
                      o->size, o->version, sizeof *o, MFP_STRUCT_VERSION);
  if (o->budget_bytes == 0) return _mfp_error(MFP_ERR_INVALID, "budget: missing (the device's budget, e.g. \"8GiB\")");
  if (o->budget_bytes > (uint64_t)MFP_MAX_BYTES)
    return _mfp_error(MFP_ERR_INVALID, "budget: %llu bytes is more than the planner's limit of 16 TiB",
                      (unsigned long long)o->budget_bytes);
  if (!(o->headroom >= 0 && o->headroom < 1) && o->headroom != MFP_HEADROOM_AUTO)
    return _mfp_error(MFP_ERR_INVALID, "headroom: must be a fraction in [0, 1) or auto, got %g", o->headroom);
  if ((unsigned)o->objective > MFP_OBJECTIVE_GLOBAL_BATCH)
    return _mfp_error(MFP_ERR_INVALID, "objective: unknown objective %d", (int)o->objective);
  if (o->objective == MFP_OBJECTIVE_GLOBAL_BATCH) {
    if (o->global_batch < 1 || o->global_batch > MFP_MAX_GLOBAL_BATCH)
      return _mfp_error(MFP_ERR_INVALID, "global_batch: objective global-batch needs a global batch N in 1..2^40, got %lld",
                        (long long)o->global_batch);
  } else if (o->global_batch != 0) {
    return _mfp_error(MFP_ERR_INVALID, "global_batch: given, but the objective is %s (use global-batch)",
                      mfp_objective_name(o->objective));
  }
  if (o->max_batch < 1 || o->max_batch > MFP_MAX_BATCH_LIMIT)
    return _mfp_error(MFP_ERR_INVALID, "max_batch: must be in 1..2^30, got %lld", (long long)o->max_batch);
  if (o->precision_count < 0 || o->precision_count > MFP_PRECISION_COUNT)
    return _mfp_error(MFP_ERR_INVALID, "precisions: %d precisions (at most 3)", (int)o->precision_count);
  for (int i = 0; i < o->precision_count; i++) {
    if ((unsigned)o->precisions[i] >= MFP_PRECISION_COUNT)
      return _mfp_error(MFP_ERR_INVALID, "precisions[%d]: unknown precision %d", i, (int)o->precisions[i]);
    for (int j = 0; j < i; j++)
      if (o->precisions[j] == o->precisions[i])
        return _mfp_error(MFP_ERR_INVALID, "precisions[%d]: %s is listed twice", i, mfp_precision_name(o->precisions[i]));
  }
  if (o->front_cap != 0 && (o->front_cap < 4 || o->front_cap > MFP_MAX_FRONT_CAP))
    return _mfp_error(MFP_ERR_INVALID, "front_cap: must be 0 (default) or in 4..2^24, got %u", o->front_cap);
  return MFP_OK;
}

mfp_status _mfp_options_resolve(const mfp_profile *p, const mfp_options *in, mfp_options *out) {
  mfp_status s = check_options(in);
  if (s != MFP_OK) return s;
  *out = *in;
  if (out->precision_count == 0) {
    out->precision_count = p->n_precisions;
    for (int k = 0; k < p->n_precisions; k++) out->precisions[k] = p->precisions[k];
  }
  for (int i = 0; i < out->precision_count; i++)
    if (!p->fitted[out->precisions[i]]) {
      char have[32] = "";
      for (int k = 0; k < p->n_precisions; k++) {
        if (k) strcat(have, ", ");
        strcat(have, mfp_precision_name(p->precisions[k]));
      }
      return _mfp_error(MFP_ERR_INVALID, "precisions: %s is not in the profile (it has %s)",
                        mfp_precision_name(out->precisions[i]), have);
    }
  if (out->front_cap == 0) out->front_cap = MFP_DEFAULT_FRONT_CAP;
  return MFP_OK;
}

static mfp_status parse_budget(const json_t *v, mfp_options *o) {
  if (json_is_integer(v)) {
    json_int_t n = json_integer_value(v);
    if (n <= 0) return _mfp_error(MFP_ERR_INVALID, "budget: must be positive, got %lld", (long long)n);
    o->budget_bytes = (uint64_t)n;
    return MFP_OK;
  }
  if (json_is_string(v)) {
    uint64_t bytes;
    if (mfp_parse_size(json_string_value(v), &bytes) != MFP_OK) {
      char why[512];
      snprintf(why, sizeof why, "%s", mfp_last_error());
      return _mfp_error(MFP_ERR_INVALID, "budget: %s", why);
    }
    if (bytes == 0) return _mfp_error(MFP_ERR_INVALID, "budget: must be positive, got \"%s\"", json_string_value(v));
    o->budget_bytes = bytes;
    return MFP_OK;
  }
  return _mfp_error(MFP_ERR_INVALID, "budget: expected an integer number of bytes or a size string such as \"8GiB\", got %s",
                    _mfp_json_type_name(v));
}

static mfp_status parse_precisions(const json_t *v, mfp_options *o) {
  if (!json_is_array(v)) return _mfp_error(MFP_ERR_INVALID, "precisions: expected a list such as [\"bf16\", \"fp32\"], got %s",
                                           _mfp_json_type_name(v));
  size_t n = json_array_size(v);
  if (n == 0) return _mfp_error(MFP_ERR_INVALID, "precisions: empty (leave it out for every precision of the profile)");
  if (n > MFP_PRECISION_COUNT) return _mfp_error(MFP_ERR_INVALID, "precisions: %zu entries, at most 3", n);
  for (size_t i = 0; i < n; i++) {
    const json_t *item = json_array_get(v, i);
    if (!json_is_string(item))
      return _mfp_error(MFP_ERR_INVALID, "precisions[%zu]: expected \"fp32\", \"bf16\" or \"fp16\", got %s", i,
                        _mfp_json_type_name(item));
    const char *name = json_string_value(item);
    int found = -1;
    for (int p = 0; p < MFP_PRECISION_COUNT; p++)
      if (strcmp(name, mfp_precision_name((mfp_precision)p)) == 0) found = p;
    if (found < 0)
      return _mfp_error(MFP_ERR_INVALID, "precisions[%zu]: expected \"fp32\", \"bf16\" or \"fp16\", got \"%s\"", i, name);
    o->precisions[i] = (mfp_precision)found;
  }
  o->precision_count = (int32_t)n;
  return MFP_OK;
}

static mfp_status parse_int(const json_t *v, const char *key, int64_t *out) {
  if (!json_is_integer(v)) return _mfp_error(MFP_ERR_INVALID, "%s: expected an integer, got %s", key, _mfp_json_type_name(v));
  *out = (int64_t)json_integer_value(v);
  return MFP_OK;
}

static mfp_status parse_key(const char *key, const json_t *v, mfp_options *o) {
  if (strcmp(key, "budget") == 0) return parse_budget(v, o);
  if (strcmp(key, "objective") == 0) {
    if (!json_is_string(v))
      return _mfp_error(MFP_ERR_INVALID, "objective: expected \"max-batch\", \"throughput\" or \"global-batch\", got %s",
                        _mfp_json_type_name(v));
    for (int k = 0; k <= MFP_OBJECTIVE_GLOBAL_BATCH; k++)
      if (strcmp(json_string_value(v), mfp_objective_name((mfp_objective)k)) == 0) {
        o->objective = (mfp_objective)k;
        return MFP_OK;
      }
    return _mfp_error(MFP_ERR_INVALID, "objective: unknown objective \"%s\" (max-batch, throughput or global-batch)",
                      json_string_value(v));
  }
  if (strcmp(key, "global_batch") == 0) return parse_int(v, key, &o->global_batch);
  if (strcmp(key, "max_batch") == 0) return parse_int(v, key, &o->max_batch);
  if (strcmp(key, "precisions") == 0) return parse_precisions(v, o);
  if (strcmp(key, "selective") == 0) {
    if (!json_is_boolean(v))
      return _mfp_error(MFP_ERR_INVALID, "selective: expected true or false, got %s", _mfp_json_type_name(v));
    o->no_selective = !json_is_true(v);
    return MFP_OK;
  }
  if (strcmp(key, "headroom") == 0) {
    if (json_is_string(v) && strcmp(json_string_value(v), "auto") == 0) {
      o->headroom = MFP_HEADROOM_AUTO;
      return MFP_OK;
    }
    if (!json_is_number(v))
      return _mfp_error(MFP_ERR_INVALID, "headroom: expected a fraction or \"auto\", got %s", _mfp_json_type_name(v));
    o->headroom = json_number_value(v);
    if (!(o->headroom >= 0 && o->headroom < 1))
      return _mfp_error(MFP_ERR_INVALID, "headroom: must be a fraction in [0, 1) or \"auto\", got %g", o->headroom);
    return MFP_OK;
  }
  return _mfp_error(MFP_ERR_INVALID, "%s: unknown option (known: budget, objective, global_batch, precisions, max_batch, headroom, selective)",
                    key);
}

MFP_API mfp_status mfp_options_parse_json(const char *json, mfp_options *o) {
  if (!json || !o) return _mfp_error(MFP_ERR_INVALID, "mfp_options_parse_json: NULL argument");
  mfp_options_init(o);
  json_error_t err;
  json_t *root = json_loads(json, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &err);
  if (!root)
    return _mfp_error(MFP_ERR_INVALID, "options: not valid JSON at line %d, column %d: %s", err.line, err.column,
                      err.text);
  mfp_status s = MFP_OK;
  if (!json_is_object(root)) {
    s = _mfp_error(MFP_ERR_INVALID, "options: expected a JSON object, got %s", _mfp_json_type_name(root));
  } else {
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
      if ((s = parse_key(key, value, o)) != MFP_OK) break;
    }
  }
  json_decref(root);
  if (s == MFP_OK) s = check_options(o);
  if (s == MFP_OK) _mfp_clear_error();
  return s;
}
