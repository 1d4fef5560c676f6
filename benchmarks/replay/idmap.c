/* idmap.c — open addressing with linear probing over (hash, key) entries.
 * The table only grows: a trace rarely has more than a few hundred thousand
 * distinct ids, and keeping freed ids is what detects double frees. */
#include "idmap.h"

#include <stdlib.h>
#include <string.h>

/* FNV-1a, then a final mix so that ids differing only in their last hex
 * digits (pointers) still spread over the low bits used as bucket index. */
static uint64_t hash_key(const char *key, size_t len) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < len; i++) {
    h ^= (unsigned char)key[i];
    h *= 1099511628211ull;
  }
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h ? h : 1; /* 0 means "empty bucket" */
}

void idmap_init(idmap *m) { memset(m, 0, sizeof *m); }

void idmap_destroy(idmap *m) {
  free(m->buckets);
  free(m->keys);
  idmap_init(m);
}

static bool grow(idmap *m) {
  size_t capacity = m->capacity ? m->capacity * 2 : 1024;
  idmap_entry *buckets = calloc(capacity, sizeof *buckets);
  if (!buckets) return false;
  for (size_t i = 0; i < m->capacity; i++) {
    const idmap_entry *e = &m->buckets[i];
    if (!e->hash) continue;
    size_t j = (size_t)e->hash & (capacity - 1);
    while (buckets[j].hash) j = (j + 1) & (capacity - 1);
    buckets[j] = *e;
  }
  free(m->buckets);
  m->buckets = buckets;
  m->capacity = capacity;
  return true;
}

static bool store_key(idmap *m, const char *key, size_t len) {
  if (m->keys_len + len > m->keys_cap) {
    size_t cap = m->keys_cap ? m->keys_cap : 4096;
    while (cap < m->keys_len + len) cap *= 2;
    char *keys = realloc(m->keys, cap);
    if (!keys) return false;
    m->keys = keys;
    m->keys_cap = cap;
  }
  memcpy(m->keys + m->keys_len, key, len);
  m->keys_len += len;
  return true;
}

idmap_entry *idmap_upsert(idmap *m, const char *key, size_t len, bool *inserted) {
  /* Keep the load at most 1/2: probes stay short even for clustered ids. */
  if ((m->count + 1) * 2 > m->capacity && !grow(m)) return NULL;
  uint64_t h = hash_key(key, len);
  size_t mask = m->capacity - 1;
  for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
    idmap_entry *e = &m->buckets[i];
    if (!e->hash) {
      if (len > UINT32_MAX || !store_key(m, key, len)) return NULL;
      e->hash = h;
      e->key_off = m->keys_len - len;
      e->key_len = (uint32_t)len;
      e->slot = IDMAP_NOT_LIVE;
      e->line = 0;
      m->count++;
      *inserted = true;
      return e;
    }
    if (e->hash == h && e->key_len == len && memcmp(m->keys + e->key_off, key, len) == 0) {
      *inserted = false;
      return e;
    }
  }
}
