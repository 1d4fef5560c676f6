/* block_map.c — live blocks by address: a chained hash table whose chain links
 * are in the blocks themselves, so mf_free finds a block in O(1) and the
 * table only allocates when it grows. */
#include <stdlib.h>

#include "internal.h"

static inline size_t bucket_of(uintptr_t addr, size_t count) {
  uint64_t h = (uint64_t)(addr >> 9) * 0x9E3779B97F4A7C15ull; /* blocks are 512 B aligned */
  return (size_t)(h >> 32) & (count - 1);
}

static mf_status grow(mf_block_map *m) {
  size_t count = m->bucket_count ? m->bucket_count * 2 : 1024;
  mf_block **buckets = calloc(count, sizeof *buckets);
  if (!buckets) return _mf_error(MF_ERR_HOST_MEMORY, "out of host memory growing the block map");
  for (size_t i = 0; i < m->bucket_count; i++) {
    mf_block *b = m->buckets[i];
    while (b) {
      mf_block *next = b->map_next;
      size_t j = bucket_of(b->addr, count);
      b->map_next = buckets[j];
      buckets[j] = b;
      b = next;
    }
  }
  free(m->buckets);
  m->buckets = buckets;
  m->bucket_count = count;
  return MF_OK;
}

mf_status _mf_map_insert(mf_block_map *m, mf_block *block) {
  if (m->count >= m->bucket_count) {
    mf_status st = grow(m);
    if (st != MF_OK && m->bucket_count == 0) return st; /* with a table, a failed grow only slows chains */
  }
  size_t i = bucket_of(block->addr, m->bucket_count);
  block->map_next = m->buckets[i];
  m->buckets[i] = block;
  m->count++;
  return MF_OK;
}

mf_block *_mf_map_find(const mf_block_map *m, uintptr_t addr) {
  if (!m->bucket_count) return NULL;
  for (mf_block *b = m->buckets[bucket_of(addr, m->bucket_count)]; b; b = b->map_next)
    if (b->addr == addr) return b;
  return NULL;
}

mf_block *_mf_map_remove(mf_block_map *m, uintptr_t addr) {
  if (!m->bucket_count) return NULL;
  mf_block **link = &m->buckets[bucket_of(addr, m->bucket_count)];
  for (; *link; link = &(*link)->map_next) {
    if ((*link)->addr == addr) {
      mf_block *b = *link;
      *link = b->map_next;
      b->map_next = NULL;
      m->count--;
      return b;
    }
  }
  return NULL;
}

void _mf_map_free(mf_block_map *m) {
  free(m->buckets);
  m->buckets = NULL;
  m->bucket_count = m->count = 0;
}
