/* tags.c — what a block is: category and phase names, the process-wide table
 * of interned layer names, and each thread's stack of tag contexts. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static const char *const category_names[MF_CAT_COUNT] = {
    "parameter", "gradient", "optimizer_state", "activation", "temporary", "input", "other"};
static const char *const phase_names[MF_PHASE_COUNT] = {"none", "forward", "backward", "optimizer",
                                                        "recompute"};

MF_API const char *mf_category_name(mf_category c) {
  return (unsigned)c < MF_CAT_COUNT ? category_names[c] : "unknown";
}
MF_API int mf_category_count(void) { return MF_CAT_COUNT; }
MF_API int mf_phase_count(void) { return MF_PHASE_COUNT; }
MF_API const char *mf_phase_name(mf_phase p) { return (unsigned)p < MF_PHASE_COUNT ? phase_names[p] : "unknown"; }

MF_API int mf_category_from_name(const char *name) {
  for (int i = 0; name && i < MF_CAT_COUNT; i++)
    if (strcmp(name, category_names[i]) == 0) return i;
  return -1;
}
MF_API int mf_phase_from_name(const char *name) {
  for (int i = 0; name && i < MF_PHASE_COUNT; i++)
    if (strcmp(name, phase_names[i]) == 0) return i;
  return -1;
}

/* ---- interned layer names: an array of names indexed by id, and an open-
 * addressing hash of ids keyed by name. Names are freed only by mf_layer_reset,
 * which no allocator may outlive, so until then a pointer from mf_layer_name
 * stays valid. */

#define MF_LAYER_NAME_MAX 4096

static pthread_mutex_t layer_lock = PTHREAD_MUTEX_INITIALIZER;
static char **layer_names;     /* [0] is "" */
static uint32_t layer_count;   /* ids in use, including 0 */
static uint32_t layer_cap;
static uint32_t *layer_slots;  /* hash slots holding id+1; 0 = empty */
static uint32_t layer_slot_count;

static uint64_t hash_name(const char *s) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

static bool layer_table_grow(void) {
  if (layer_count + 1 > layer_cap) {
    uint32_t cap = layer_cap ? layer_cap * 2 : 64;
    char **names = realloc(layer_names, cap * sizeof *names);
    if (!names) return false;
    layer_names = names;
    layer_cap = cap;
  }
  if ((layer_count + 1) * 2 > layer_slot_count) {
    uint32_t count = layer_slot_count ? layer_slot_count * 2 : 128;
    uint32_t *slots = calloc(count, sizeof *slots);
    if (!slots) return false;
    for (uint32_t id = 1; id < layer_count; id++) {
      uint32_t i = (uint32_t)hash_name(layer_names[id]) & (count - 1);
      while (slots[i]) i = (i + 1) & (count - 1);
      slots[i] = id + 1;
    }
    free(layer_slots);
    layer_slots = slots;
    layer_slot_count = count;
  }
  return true;
}

static bool layer_table_init(void) {
  if (layer_count) return true;
  if (!layer_table_grow()) return false;
  layer_names[0] = "";
  layer_count = 1;
  return true;
}

MF_API uint32_t mf_layer_intern(const char *name) {
  if (!name) {
    _mf_error(MF_ERR_INVALID, "mf_layer_intern: NULL name");
    return 0;
  }
  if (!*name) return 0;
  size_t len = strlen(name);
  if (len > MF_LAYER_NAME_MAX) {
    _mf_error(MF_ERR_INVALID, "mf_layer_intern: name longer than %d bytes", MF_LAYER_NAME_MAX);
    return 0;
  }
  pthread_mutex_lock(&layer_lock);
  uint32_t id = 0;
  if (!layer_table_init() || !layer_table_grow()) goto out_of_memory;
  uint32_t i = (uint32_t)hash_name(name) & (layer_slot_count - 1);
  while (layer_slots[i]) {
    uint32_t candidate = layer_slots[i] - 1;
    if (strcmp(layer_names[candidate], name) == 0) {
      id = candidate;
      goto done;
    }
    i = (i + 1) & (layer_slot_count - 1);
  }
  char *copy = malloc(len + 1);
  if (!copy) goto out_of_memory;
  memcpy(copy, name, len + 1);
  id = layer_count++;
  layer_names[id] = copy;
  layer_slots[i] = id + 1;
done:
  pthread_mutex_unlock(&layer_lock);
  return id;
out_of_memory:
  pthread_mutex_unlock(&layer_lock);
  _mf_error(MF_ERR_HOST_MEMORY, "mf_layer_intern: out of host memory");
  return 0;
}

MF_API const char *mf_layer_name(uint32_t layer) {
  if (layer == 0) return "";
  pthread_mutex_lock(&layer_lock);
  const char *name = layer < layer_count ? layer_names[layer] : NULL;
  pthread_mutex_unlock(&layer_lock);
  return name;
}

const char *_mf_layer_name_or(uint32_t layer, const char *fallback) {
  const char *name = layer ? mf_layer_name(layer) : NULL;
  return name ? name : fallback;
}

MF_API uint32_t mf_layer_count(void) {
  pthread_mutex_lock(&layer_lock);
  uint32_t n = layer_count ? layer_count : 1;
  pthread_mutex_unlock(&layer_lock);
  return n;
}

/* ---- the calling thread's tag stack */

static _Thread_local mf_tag tag_stack[MF_TAG_STACK_DEPTH];
static _Thread_local int tag_depth;

MF_API mf_status mf_tag_push(uint32_t layer, mf_phase phase, mf_category category) {
  if ((unsigned)phase >= MF_PHASE_COUNT) return _mf_error(MF_ERR_INVALID, "mf_tag_push: bad phase %d", (int)phase);
  if ((unsigned)category >= MF_CAT_COUNT)
    return _mf_error(MF_ERR_INVALID, "mf_tag_push: bad category %d", (int)category);
  if (layer >= mf_layer_count())
    return _mf_error(MF_ERR_INVALID, "mf_tag_push: layer id %u was not interned", layer);
  if (tag_depth >= MF_TAG_STACK_DEPTH)
    return _mf_error(MF_ERR_INVALID, "mf_tag_push: tag stack full (%d entries): a pop is missing",
                     MF_TAG_STACK_DEPTH);
  tag_stack[tag_depth++] = (mf_tag){.layer = layer, .category = (uint8_t)category, .phase = (uint8_t)phase};
  return MF_OK;
}

MF_API mf_status mf_tag_pop(void) {
  if (tag_depth == 0) return _mf_error(MF_ERR_INVALID, "mf_tag_pop: tag stack empty: more pops than pushes");
  tag_depth--;
  return MF_OK;
}

/* The shared tag packed in one word, so that readers need no lock: bit 63 set
 * when a tag is set, layer in bits 0-31, category 32-39, phase 40-47. */
static _Atomic uint64_t shared_tag;
#define MF_SHARED_SET (1ull << 63)

MF_API mf_status mf_tag_set_shared(mf_tag tag) {
  if (tag.phase >= MF_PHASE_COUNT) return _mf_error(MF_ERR_INVALID, "mf_tag_set_shared: bad phase %d", tag.phase);
  if (tag.category >= MF_CAT_COUNT)
    return _mf_error(MF_ERR_INVALID, "mf_tag_set_shared: bad category %d", tag.category);
  if (tag.layer >= mf_layer_count())
    return _mf_error(MF_ERR_INVALID, "mf_tag_set_shared: layer id %u was not interned", tag.layer);
  uint64_t packed = MF_SHARED_SET | tag.layer | (uint64_t)tag.category << 32 | (uint64_t)tag.phase << 40;
  atomic_store_explicit(&shared_tag, packed, memory_order_release);
  return MF_OK;
}

MF_API void mf_tag_clear_shared(void) { atomic_store_explicit(&shared_tag, 0, memory_order_release); }

MF_API mf_tag mf_tag_current(void) {
  if (MF_LIKELY(tag_depth > 0)) return tag_stack[tag_depth - 1];
  uint64_t packed = atomic_load_explicit(&shared_tag, memory_order_acquire);
  if (packed & MF_SHARED_SET)
    return (mf_tag){.layer = (uint32_t)packed, .category = (uint8_t)(packed >> 32), .phase = (uint8_t)(packed >> 40)};
  return (mf_tag){.layer = 0, .category = MF_CAT_OTHER, .phase = MF_PHASE_NONE};
}

MF_API int mf_tag_depth(void) { return tag_depth; }

/* After the tag stack and the shared tag: a reset checks that neither holds an id. */
MF_API mf_status mf_layer_reset(void) {
  pthread_mutex_lock(&layer_lock);
  mf_status st = MF_OK;
  int live = _mf_live_allocators();
  if (live > 0) {
    st = _mf_error(MF_ERR_INVALID, "mf_layer_reset: %d allocator%s still exist%s (their stats hold layer ids): destroy "
                   "them first", live, live == 1 ? "" : "s", live == 1 ? "s" : "");
  } else if (tag_depth > 0 || atomic_load_explicit(&shared_tag, memory_order_acquire)) {
    st = _mf_error(MF_ERR_INVALID, "mf_layer_reset: a tag holds a layer id (pop this thread's tags and clear the "
                   "shared one first)");
  } else {
    for (uint32_t id = 1; id < layer_count; id++) free(layer_names[id]);
    free(layer_names);
    free(layer_slots);
    layer_names = NULL;
    layer_slots = NULL;
    layer_count = layer_cap = layer_slot_count = 0;
  }
  pthread_mutex_unlock(&layer_lock);
  return st;
}
