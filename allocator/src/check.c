/* check.c — mf_check: walk every segment and block of a device and report the
 * first broken invariant. Stress tests call it after every operation, so it
 * checks what the fast paths assume rather than what they happen to do. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define FAIL(...) return _mf_error(MF_ERR_CORRUPT, __VA_ARGS__)

typedef struct {
  const mf_pool *pool;
  const mf_block *last;
  size_t count;
  uint64_t bytes;
  bool ok;
  char why[256];
} index_walk;

static bool check_indexed(const mf_block *b, void *ctx) {
  index_walk *w = ctx;
  w->count++;
  w->bytes += b->size;
  if (b->state != MF_BLOCK_FREE || b->segment->pool != w->pool) {
    snprintf(w->why, sizeof w->why, "block 0x%llx in a free index is not a free block of that pool",
             (unsigned long long)b->addr);
    w->ok = false;
  } else if ((b->left && b->left->parent != b) || (b->right && b->right->parent != b) ||
             (b->parent && b->parent->left != b && b->parent->right != b) ||
             (!b->parent && w->pool->root != b)) {
    snprintf(w->why, sizeof w->why, "free index parent links broken at block 0x%llx", (unsigned long long)b->addr);
    w->ok = false;
  } else if ((b->left && b->left->priority > b->priority) || (b->right && b->right->priority > b->priority)) {
    snprintf(w->why, sizeof w->why, "free index heap order broken at block 0x%llx", (unsigned long long)b->addr);
    w->ok = false;
  } else if (w->last && (w->last->size > b->size || (w->last->size == b->size && w->last->addr >= b->addr))) {
    snprintf(w->why, sizeof w->why, "free index out of order at block 0x%llx", (unsigned long long)b->addr);
    w->ok = false;
  }
  w->last = b;
  return w->ok;
}

static mf_status check_pool(const mf_pool *pool, size_t *free_blocks) {
  index_walk w = {.pool = pool, .ok = true};
  _mf_index_walk(pool, check_indexed, &w);
  if (!w.ok) FAIL("%s", w.why);
  if (w.count != pool->free_blocks || w.bytes != pool->free_bytes)
    FAIL("pool (stream 0x%llx, %s) counts %zu free blocks / %llu bytes but its index holds %zu / %llu",
         (unsigned long long)pool->stream, pool->small ? "small" : "large", pool->free_blocks,
         (unsigned long long)pool->free_bytes, w.count, (unsigned long long)w.bytes);
  for (const mf_segment *s = pool->free_segments; s; s = s->free_next)
    if (s->pool != pool || !s->wholly_free) FAIL("segment 0x%llx wrongly on a free-segment list", (unsigned long long)s->addr);
  *free_blocks += w.count;
  return MF_OK;
}

static int compare_segments(const void *x, const void *y) {
  uintptr_t a = (*(const mf_segment *const *)x)->addr, b = (*(const mf_segment *const *)y)->addr;
  return a < b ? -1 : a > b;
}

typedef struct {
  int64_t bytes, requested, blocks;
} sums;

static int compare_handles(const void *x, const void *y) {
  uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
  return a < b ? -1 : a > b;
}

/* vmm: segments are whole granules inside their pool's ranges, in address
 * order, runs of a large pool never touch (they would have been merged), no
 * granule is mapped twice, nothing is held unmapped between operations, and
 * reserved bytes are the mapped granules. */
static mf_status check_pages(mf_device *d, size_t segments, int64_t reserved) {
  const int dev = d->index;
  const size_t g = d->allocator->granule;
  size_t reached = 0, granules = 0;
  if (d->spare_len) FAIL("device %d: %zu granules held unmapped between operations", dev, d->spare_len);
  for (int i = 0; i < d->stream_count; i++) {
    const mf_pool *pools[2] = {&d->streams[i]->small, &d->streams[i]->large};
    for (int k = 0; k < 2; k++) {
      const mf_pool *pool = pools[k];
      for (const mf_vrange *r = pool->ranges; r; r = r->next) {
        if (r->base % g || r->size % g || !r->size)
          FAIL("device %d: range 0x%llx of %zu bytes is not whole granules", dev, (unsigned long long)r->base, r->size);
        const mf_segment *prev = NULL;
        for (const mf_segment *s = r->first; s; prev = s, s = s->range_next) {
          reached++;
          unsigned long long at = s->addr;
          if (s->range != r || s->pool != pool) FAIL("device %d: segment 0x%llx is listed in another pool's range", dev, at);
          if (s->range_prev != prev) FAIL("device %d: range list links broken at segment 0x%llx", dev, at);
          if (s->addr % g || s->size % g || !s->size)
            FAIL("device %d: segment 0x%llx of %zu bytes is not whole granules", dev, at, s->size);
          if (s->addr < r->base || s->addr + s->size > r->base + r->size || s->addr + s->size < s->addr)
            FAIL("device %d: segment 0x%llx lies outside its range", dev, at);
          if (prev && prev->addr + prev->size > s->addr)
            FAIL("device %d: segments 0x%llx and 0x%llx of a range overlap or are out of order", dev,
                 (unsigned long long)prev->addr, at);
          if (prev && prev->addr + prev->size == s->addr)
            FAIL("device %d: touching segments 0x%llx and 0x%llx of a pool are not merged", dev,
                 (unsigned long long)prev->addr, at);
          if ((s->addr - r->base + s->size) / g > r->handles_cap)
            FAIL("device %d: segment 0x%llx has no handles recorded", dev, at);
          granules += s->size / g;
        }
      }
    }
  }
  if (reached != segments) FAIL("device %d: %zu segments, %zu of them in ranges", dev, segments, reached);
  if ((int64_t)(granules * g) != reserved)
    FAIL("device %d: %lld reserved bytes but %zu granules mapped", dev, (long long)reserved, granules);
  if (granules) {
    uint64_t *all = malloc(granules * sizeof *all);
    if (!all) FAIL("mf_check: out of host memory");
    size_t n = 0;
    for (const mf_segment *s = d->segments; s; s = s->next) {
      const uint64_t *h = s->range->handles + (s->addr - s->range->base) / g;
      for (size_t j = 0; j < s->size / g && n < granules; j++) all[n++] = h[j];
    }
    qsort(all, n, sizeof *all, compare_handles);
    for (size_t j = 1; j < n; j++)
      if (all[j] == all[j - 1]) {
        unsigned long long handle = all[j];
        free(all);
        FAIL("device %d: granule handle 0x%llx is mapped twice", dev, handle);
      }
    free(all);
  }
  return MF_OK;
}

mf_status _mf_check_device(mf_device *d) {
  const int dev = d->index;
  size_t segments = 0, free_blocks = 0, live_blocks = 0;
  int64_t reserved = 0;
  sums total = {0}, by_cat[MF_CAT_COUNT] = {{0}};
  size_t table = (size_t)d->tag_layers * MF_CAT_COUNT;
  sums *by_tag = table ? calloc(table, sizeof *by_tag) : NULL;
  if (table && !by_tag) return _mf_error(MF_ERR_HOST_MEMORY, "mf_check: out of host memory");
  mf_status st = MF_OK;
#undef FAIL
#define FAIL(...)                                  \
  do {                                             \
    st = _mf_error(MF_ERR_CORRUPT, __VA_ARGS__);   \
    goto done;                                     \
  } while (0)

  for (const mf_segment *s = d->segments; s; s = s->next) {
    segments++;
    reserved += (int64_t)s->size;
    if (s->next && s->next->prev != s) FAIL("device %d: segment list links broken at 0x%llx", dev, (unsigned long long)s->addr);
    if (!s->first || s->first->addr != s->addr || s->first->prev)
      FAIL("device %d: segment 0x%llx does not start with its first block", dev, (unsigned long long)s->addr);
    uintptr_t end = s->addr;
    for (const mf_block *b = s->first; b; b = b->next) {
      if (b->segment != s) FAIL("device %d: block 0x%llx points to the wrong segment", dev, (unsigned long long)b->addr);
      if (b->addr != end) FAIL("device %d: block 0x%llx overlaps or leaves a gap (expected 0x%llx)", dev,
                               (unsigned long long)b->addr, (unsigned long long)end);
      if (b->size == 0 || b->size % MF_ROUND) FAIL("device %d: block 0x%llx has size %zu", dev, (unsigned long long)b->addr, b->size);
      if (b->next && b->next->prev != b) FAIL("device %d: block links broken at 0x%llx", dev, (unsigned long long)b->addr);
      if (b->state == MF_BLOCK_FREE && b->next && b->next->state == MF_BLOCK_FREE)
        FAIL("device %d: free neighbours 0x%llx and 0x%llx not coalesced", dev, (unsigned long long)b->addr,
             (unsigned long long)b->next->addr);
      if (b->state == MF_BLOCK_LIVE) {
        live_blocks++;
        if (_mf_map_find(&d->live, b->addr) != b) FAIL("device %d: live block 0x%llx missing from the pointer map", dev, (unsigned long long)b->addr);
      }
      if (b->state == MF_BLOCK_PENDING && b->pending_events == 0)
        FAIL("device %d: pending block 0x%llx waits on no event", dev, (unsigned long long)b->addr);
      if (b->state == MF_BLOCK_LIVE) { /* pending blocks left the stats when freed */
        if (b->requested > b->size) FAIL("device %d: block 0x%llx requested %zu > size %zu", dev, (unsigned long long)b->addr, b->requested, b->size);
        sums *slots[3] = {&total, &by_cat[b->tag.category],
                          b->tag.layer < d->tag_layers ? &by_tag[(size_t)b->tag.layer * MF_CAT_COUNT + b->tag.category] : NULL};
        if (!slots[2]) FAIL("device %d: block 0x%llx has layer %u beyond the stats table", dev, (unsigned long long)b->addr, b->tag.layer);
        for (int i = 0; i < 3; i++) {
          slots[i]->bytes += (int64_t)b->size;
          slots[i]->requested += (int64_t)b->requested;
          slots[i]->blocks++;
        }
      }
      end = b->addr + b->size;
    }
    if (end != s->addr + s->size) FAIL("device %d: blocks of segment 0x%llx end at 0x%llx, not at its end", dev,
                                       (unsigned long long)s->addr, (unsigned long long)end);
    if (!s->last || s->last->next || s->last->segment != s || s->last->addr + s->last->size != end)
      FAIL("device %d: segment 0x%llx does not know its last block", dev, (unsigned long long)s->addr);
    bool wholly_free = s->first->state == MF_BLOCK_FREE && s->first->size == s->size;
    if (wholly_free != s->wholly_free) FAIL("device %d: segment 0x%llx free flag is stale", dev, (unsigned long long)s->addr);
  }
  for (int i = 0; i < d->stream_count; i++) {
    if ((st = check_pool(&d->streams[i]->small, &free_blocks)) != MF_OK) goto done;
    if ((st = check_pool(&d->streams[i]->large, &free_blocks)) != MF_OK) goto done;
  }
  size_t free_walked = 0;
  for (const mf_segment *s = d->segments; s; s = s->next)
    for (const mf_block *b = s->first; b; b = b->next) free_walked += b->state == MF_BLOCK_FREE;
  if (free_walked != free_blocks) FAIL("device %d: %zu free blocks in segments but %zu in the free indexes", dev, free_walked, free_blocks);
  if (live_blocks != d->live.count) FAIL("device %d: %zu live blocks but the pointer map holds %zu", dev, live_blocks, d->live.count);
  /* Segments must not overlap one another. */
  if (segments > 1) {
    const mf_segment **sorted = malloc(segments * sizeof *sorted);
    if (!sorted) FAIL("mf_check: out of host memory");
    size_t i = 0;
    for (const mf_segment *s = d->segments; s; s = s->next) sorted[i++] = s;
    qsort(sorted, segments, sizeof *sorted, compare_segments);
    for (i = 1; i < segments; i++) {
      if (sorted[i - 1]->addr + sorted[i - 1]->size > sorted[i]->addr) {
        unsigned long long x = sorted[i - 1]->addr, y = sorted[i]->addr;
        free(sorted);
        FAIL("device %d: segments 0x%llx and 0x%llx overlap", dev, x, y);
      }
    }
    free(sorted);
  }
  const mf_stats *s = &d->stats;
  if (s->reserved_bytes.current != reserved || s->segments.current != (int64_t)segments)
    FAIL("device %d: stats say %lld reserved in %lld segments, segments sum to %lld in %zu", dev,
         (long long)s->reserved_bytes.current, (long long)s->segments.current, (long long)reserved, segments);
  if (s->allocated_bytes.current != total.bytes || s->requested_bytes.current != total.requested ||
      s->active_blocks.current != total.blocks)
    FAIL("device %d: stats say %lld allocated / %lld requested / %lld blocks, blocks sum to %lld / %lld / %lld", dev,
         (long long)s->allocated_bytes.current, (long long)s->requested_bytes.current,
         (long long)s->active_blocks.current, (long long)total.bytes, (long long)total.requested,
         (long long)total.blocks);
  for (int c = 0; c < MF_CAT_COUNT; c++) {
    const mf_tag_stats *t = &d->category_stats[c];
    if (t->bytes.current != by_cat[c].bytes || t->requested.current != by_cat[c].requested ||
        t->blocks.current != by_cat[c].blocks)
      FAIL("device %d: category %s stats (%lld bytes) differ from its blocks (%lld bytes)", dev,
           mf_category_name((mf_category)c), (long long)t->bytes.current, (long long)by_cat[c].bytes);
  }
  for (size_t i = 0; i < table; i++) {
    const mf_tag_stats *t = &d->tag_stats[i];
    if (t->bytes.current != by_tag[i].bytes || t->requested.current != by_tag[i].requested ||
        t->blocks.current != by_tag[i].blocks)
      FAIL("device %d: layer %zu category %s stats (%lld bytes) differ from its blocks (%lld bytes)", dev,
           i / MF_CAT_COUNT, mf_category_name((mf_category)(i % MF_CAT_COUNT)), (long long)t->bytes.current,
           (long long)by_tag[i].bytes);
  }
  if (d->allocator->granule && (st = check_pages(d, segments, reserved)) != MF_OK) goto done;
  size_t pending_blocks = 0;
  for (const mf_pending_event *p = d->pending; p; p = p->next) {
    if (p->block->state != MF_BLOCK_PENDING) FAIL("device %d: an event waits on a block that is not pending", dev);
    pending_blocks++;
  }
  if (pending_blocks != d->pending_count) FAIL("device %d: pending count %zu, list holds %zu", dev, d->pending_count, pending_blocks);
done:
  free(by_tag);
  return st;
}
