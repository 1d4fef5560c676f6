/* vmm.c — page-mapped pools: a pool's memory is physical granules mapped into
 * address ranges the pool reserved, so the pool grows by mapping granules next
 * to its free space, and the whole free granules of other blocks move to where
 * a request needs them before any new memory is taken from the device.
 *
 * Note [Page-mapped pools]
 * Why: a caching allocator that carves fixed segments keeps every hole it ever
 * made. A request larger than each hole maps new memory while the holes stay
 * reserved; on training traces reserved ran 4-31% above allocated, which the
 * planner then had to keep free. With pages under the pools, free memory is
 * not tied to its address: only the partial granules at the ends of free
 * blocks cannot be moved.
 * How (allocator/README.md, "Policy with vmm", has the bullets):
 * - Each (stream, pool) reserves ranges of addresses (the capacity's worth:
 *   addresses are cheap; a pool that fills one gets another). Granules are
 *   mapped into them; a segment is a maximal run of mapped granules, and
 *   blocks tile it as before. Large pools merge runs that touch.
 * - A miss picks the site needing the fewest new granules: after a segment
 *   whose last block is free (the pool grows at its end), before a segment
 *   whose first block is free, across a hole joining both, or a fresh hole.
 * - The small pool (requests up to 1 MiB) and the large pool of a stream are
 *   both page-mapped this way: they differ only in what they hold. Fixed
 *   2 MiB small segments pinned by one long-lived small tensor each made CPU
 *   runs, whose tensors are mostly small, reserve 3-22% more than they
 *   allocated (benchmarks/results/host-granule-*.md).
 * - The granules come from whole free granules of other free blocks, unmapped
 *   and mapped again at the site ("stitching"): first from blocks that are a
 *   whole segment, then from a segment's end, then from its middle (which
 *   splits it), largest first within each; only the rest is new physical
 *   memory, within the capacity. So reserved grows only when no free granule
 *   is left anywhere on the device.
 * - Unmapping needs the device idle on those pages: one synchronize per
 *   operation that unmaps (counted in stats.syncs). Steady state (every
 *   request a cache hit) makes no backend call.
 * - Reserved bytes = the granules held = the granules mapped, outside an
 *   operation; mf_check verifies it and that no granule is mapped twice.
 * Limits: a request never spans two ranges; free granules of a pending
 * (record_stream) block move only once its events complete.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* A pool's range covers twice what the device may hold (the capacity: room
 * for the holes that moving granules leaves), up to these; beyond, ranges are
 * added as they fill. The small pool holds small tensors only, so its ranges
 * start smaller. Addresses cost nothing until mapped. */
#define MF_VMM_LARGE_RANGE ((size_t)1 << 40) /* 1 TiB */
#define MF_VMM_SMALL_RANGE ((size_t)4 << 30) /* 4 GiB */

static inline size_t round_up(size_t x, size_t g) { return (x + g - 1) / g * g; }
static inline uintptr_t round_down(uintptr_t x, size_t g) { return x / g * g; }
static inline uintptr_t segment_end(const mf_segment *s) { return s->addr + s->size; }
static inline uintptr_t block_end(const mf_block *b) { return b->addr + b->size; }

static inline mf_backend *backend_of(mf_device *d) { return d->allocator->backend; }
static inline const mf_backend_ops *ops_of(mf_device *d) { return d->allocator->backend->ops; }

/* A backend's failure, with a message even where the backend left none
 * (custom backends cannot set memfit's error): the error is cleared before
 * each backend call, so a message there now is the backend's. */
static mf_status named_failure(const mf_backend_ops *ops, int device, mf_status st, const char *what) {
  if (mf_last_status() != st || !*mf_last_error())
    return _mf_error(st, "backend %s: %s on device %d failed (%s)", ops->name, what, device, mf_status_name(st));
  return st;
}

static mf_status backend_failed(mf_device *d, mf_status st, const char *what) {
  return named_failure(ops_of(d), d->index, st, what);
}

/* ------------------------------------------------------------------ setup */

mf_status _mf_vmm_setup(mf_allocator *a) {
  a->granule = 0;
  const char *mode = _mf_opt_str(a->options, MF_OPT_VMM);
  if (strcmp(mode, "off") == 0) return MF_OK;
  bool required = strcmp(mode, "on") == 0;
  const mf_backend_ops *ops = a->backend->ops;
  if (!ops->vmm_granularity || !ops->vmm_reserve || !ops->vmm_unreserve || !ops->vmm_create ||
      !ops->vmm_release || !ops->vmm_map || !ops->vmm_unmap) {
    if (required)
      return _mf_error(MF_ERR_INVALID, "option vmm:on: backend %s cannot map pages", ops->name);
    return MF_OK; /* a backend without page mapping: segments, as asked by its author */
  }
  size_t minimum = 0, recommended = 0;
  for (int i = 0; i < a->device_count; i++) {
    size_t lo = 0, rec = 0;
    _mf_clear_error();
    mf_status st = ops->vmm_granularity(a->backend, i, &lo, &rec);
    if (st != MF_OK) named_failure(ops, i, st, "vmm_granularity");
    if (st == MF_OK && (lo == 0 || lo % MF_ROUND || rec % lo))
      st = _mf_error(MF_ERR_BACKEND, "backend %s reports granules of %zu and %zu bytes on device %d", ops->name, lo,
                     rec, i);
    if (st != MF_OK) {
      char why[768];
      snprintf(why, sizeof why, "%s", mf_last_error());
      if (required) return _mf_error(st, "option vmm:on: %s", why);
      fprintf(stderr, "memfit: vmm:auto: %s; using segments (vmm:off)\n", why);
      _mf_clear_error();
      return MF_OK;
    }
    if (lo > minimum) minimum = lo;
    if (rec > recommended) recommended = rec;
  }
  size_t granule = (size_t)_mf_opt_u64(a->options, MF_OPT_VMM_GRANULE);
  if (granule == 0) granule = recommended % minimum ? minimum : recommended;
  if (granule % minimum || granule > ((size_t)1 << 30))
    return _mf_error(MF_ERR_INVALID,
                     "option vmm_granule: %zu bytes is not a multiple of backend %s's granule (%zu bytes) up to 1GiB",
                     granule, ops->name, minimum);
  a->granule = granule;
  /* The segment options that keep remainders from being split exist because
   * a remainder is stuck where it was cut: max_split_size keeps big cached
   * blocks whole, large_split leaves remainders up to 1 MiB inside blocks.
   * With pages a remainder's whole granules move and its partial granule is
   * used by the next run that grows next to it, so every remainder is split
   * (as PyTorch's expandable segments do). */
  a->max_split_size = SIZE_MAX;
  a->large_split = 0;
  return MF_OK;
}

/* ----------------------------------------------------------------- ranges */

static mf_status range_new(mf_device *d, mf_pool *pool, size_t at_least, mf_vrange **out) {
  size_t g = d->allocator->granule;
  size_t cap = pool->small ? MF_VMM_SMALL_RANGE : MF_VMM_LARGE_RANGE;
  size_t size = d->capacity && d->capacity < cap / 2 ? (size_t)d->capacity * 2 : cap;
  if (size < at_least) size = at_least;
  size = round_up(size, g);
  mf_vrange *r = calloc(1, sizeof *r);
  if (!r) return _mf_error(MF_ERR_HOST_MEMORY, "out of host memory for an address range");
  _mf_clear_error();
  mf_status st = ops_of(d)->vmm_reserve(backend_of(d), d->index, size, g, &r->base);
  if (st != MF_OK) {
    free(r);
    return backend_failed(d, st, "vmm_reserve");
  }
  r->size = size;
  r->next = pool->ranges;
  pool->ranges = r;
  *out = r;
  return MF_OK;
}

/* Make a handle array hold `need` entries (doubling). */
static mf_status handles_hold(uint64_t **handles, size_t *cap, size_t need) {
  if (need <= *cap) return MF_OK;
  size_t grown_cap = *cap ? *cap : 64;
  while (grown_cap < need) grown_cap *= 2;
  uint64_t *grown = realloc(*handles, grown_cap * sizeof *grown);
  if (!grown) return _mf_error(MF_ERR_HOST_MEMORY, "out of host memory for granule handles");
  *handles = grown;
  *cap = grown_cap;
  return MF_OK;
}

/* Make the range's handle array hold granule indexes below end. */
static mf_status range_hold(mf_vrange *r, size_t end) { return handles_hold(&r->handles, &r->handles_cap, end); }

static inline uint64_t *handles_at(const mf_vrange *r, uintptr_t addr, size_t g) {
  return r->handles + (addr - r->base) / g;
}

static void range_insert_after(mf_vrange *r, mf_segment *prev, mf_segment *s) {
  s->range = r;
  s->range_prev = prev;
  s->range_next = prev ? prev->range_next : r->first;
  if (s->range_next) s->range_next->range_prev = s;
  if (prev) prev->range_next = s;
  else r->first = s;
}

static void range_remove(mf_segment *s) {
  if (s->range_prev) s->range_prev->range_next = s->range_next;
  else s->range->first = s->range_next;
  if (s->range_next) s->range_next->range_prev = s->range_prev;
  s->range_prev = s->range_next = NULL;
}

/* Free the pool's ranges that hold no segment. */
static void release_empty_ranges(mf_device *d, mf_pool *pool) {
  for (mf_vrange **link = &pool->ranges; *link;) {
    mf_vrange *r = *link;
    if (r->first) {
      link = &r->next;
      continue;
    }
    if (ops_of(d)->vmm_unreserve(backend_of(d), d->index, r->base, r->size) != MF_OK) {
      link = &r->next; /* keep it: still consistent, and usable */
      continue;
    }
    *link = r->next;
    free(r->handles);
    free(r);
  }
}

/* --------------------------------------------------- held granules (spare) */

static mf_status spare_hold(mf_device *d, size_t more) {
  return handles_hold(&d->spare_handles, &d->spare_cap, d->spare_len + more);
}

/* Granules the capacity still allows (SIZE_MAX without one). */
static size_t room(const mf_device *d) {
  if (!d->capacity) return SIZE_MAX;
  uint64_t reserved = (uint64_t)d->stats.reserved_bytes.current;
  return reserved >= d->capacity ? 0 : (size_t)((d->capacity - reserved) / d->allocator->granule);
}

static mf_status create_granules(mf_device *d, size_t n) {
  size_t g = d->allocator->granule;
  if (n > room(d)) return _mf_error(MF_ERR_OOM, "capacity reached");
  mf_status st = spare_hold(d, n);
  if (st != MF_OK) return st;
  _mf_clear_error();
  st = ops_of(d)->vmm_create(backend_of(d), d->index, g, n, d->spare_handles + d->spare_len);
  if (st != MF_OK) return backend_failed(d, st, "vmm_create");
  d->spare_len += n;
  _mf_counter_add(&d->stats.reserved_bytes, (int64_t)(n * g));
  d->stats.granule_creates += (int64_t)n;
  return MF_OK;
}

/* Give back what an operation holds unmapped. */
static void release_spare(mf_device *d) {
  if (!d->spare_len) return;
  size_t g = d->allocator->granule;
  ops_of(d)->vmm_release(backend_of(d), d->index, g, d->spare_len, d->spare_handles);
  _mf_counter_add(&d->stats.reserved_bytes, -(int64_t)(d->spare_len * g));
  d->stats.granule_releases += (int64_t)d->spare_len;
  d->spare_len = 0;
}

/* ------------------------------------------------------ unmapping granules */

static mf_status synchronize_once(mf_device *d) {
  if (d->synced) return MF_OK;
  const mf_backend_ops *ops = ops_of(d);
  if (ops->synchronize) {
    _mf_clear_error();
    mf_status st = ops->synchronize(backend_of(d), d->index);
    if (st != MF_OK) return backend_failed(d, st, "synchronize");
    d->stats.syncs++;
  }
  d->synced = true;
  return MF_OK;
}

/* Unmap the granules [u, v) of free block b (granule-aligned, inside it) into
 * the spare list. The block keeps its parts before u and after v, and its
 * segment splits around the gap. Nothing changes on failure. */
static mf_status unmap_run(mf_device *d, mf_block *b, uintptr_t u, uintptr_t v) {
  mf_allocator *a = d->allocator;
  size_t g = a->granule, n = (v - u) / g;
  mf_segment *s = b->segment;
  mf_vrange *r = s->range;
  mf_pool *pool = s->pool;
  uintptr_t bend = block_end(b), send = segment_end(s);
  bool has_left = s->addr < u, has_right = v < send;
  bool need_block = b->addr < u && v < bend, need_segment = has_left && has_right;
  mf_status st = spare_hold(d, n);
  if (st != MF_OK) return st;
  mf_block *extra = need_block ? _mf_block_new(d) : NULL;
  mf_segment *right = need_segment ? calloc(1, sizeof *right) : NULL;
  if ((need_block && !extra) || (need_segment && !right)) {
    if (extra) _mf_block_recycle(d, extra);
    free(right);
    return _mf_error(MF_ERR_HOST_MEMORY, "out of host memory for block metadata");
  }
  _mf_clear_error();
  if ((st = synchronize_once(d)) == MF_OK && (st = ops_of(d)->vmm_unmap(backend_of(d), d->index, u, g, n)) != MF_OK)
    st = backend_failed(d, st, "vmm_unmap");
  if (st != MF_OK) {
    if (extra) _mf_block_recycle(d, extra);
    free(right);
    return st;
  }
  memcpy(d->spare_handles + d->spare_len, handles_at(r, u, g), n * sizeof(uint64_t));
  d->spare_len += n;

  _mf_index_remove(pool, b);
  _mf_segment_set_free(s, false);
  mf_block *before = b->prev, *after = b->next, *old_last = s->last;
  mf_block *head = NULL, *tail = NULL;
  if (b->addr < u) {
    head = b;
    head->size = u - b->addr;
  }
  if (v < bend) {
    tail = head ? extra : b;
    tail->addr = v;
    tail->size = bend - v;
    tail->state = MF_BLOCK_FREE;
  }
  if (!head && !tail) _mf_block_recycle(d, b);
  mf_block *left_last = head ? head : before;
  mf_block *right_first = tail ? tail : after;
  if (has_left) {
    s->size = u - s->addr;
    s->last = left_last;
    left_last->next = NULL;
  }
  if (has_right) {
    mf_segment *rs = has_left ? right : s;
    if (rs == right) {
      rs->pool = pool;
      range_insert_after(r, s, rs);
      _mf_segment_link(d, rs);
      _mf_counter_add(&d->stats.segments, 1);
    }
    rs->addr = v;
    rs->size = send - v;
    rs->first = right_first;
    rs->last = old_last == b ? tail : old_last;
    right_first->prev = NULL;
    if (tail) tail->next = after;
    if (tail && after) after->prev = tail;
    for (mf_block *x = right_first; x; x = x->next) x->segment = rs;
    _mf_segment_update_free(rs);
  }
  if (has_left) _mf_segment_update_free(s);
  if (!has_left && !has_right) {
    range_remove(s);
    _mf_segment_unlink(d, s);
    free(s);
    _mf_counter_add(&d->stats.segments, -1);
  }
  if (head) _mf_index_insert(pool, head);
  if (tail) _mf_index_insert(pool, tail);
  d->stats.segment_unmaps++;
  d->stats.granule_unmaps += (int64_t)n;
  _mf_log_event(a, d->index, MF_LOG_SEGMENT_UNMAP, u, v - u, v - u, pool->stream, (mf_tag){0});
  return MF_OK;
}

/* --------------------------------------------------------------- harvest */

/* Free blocks whose whole granules may move, collected before any is touched
 * (unmapping changes the free indexes being walked). */
typedef struct {
  mf_block *block;
  size_t granules; /* whole granules in it */
  int kind;        /* what taking them does to its segment: see candidate_kind */
} harvest_candidate;

typedef struct {
  harvest_candidate *items;
  size_t len, cap;
  size_t found; /* granules in all candidates */
  size_t granule;
  const mf_block *keep[2]; /* the site's own neighbours: they are part of the run */
  bool out_of_memory;
} harvest_list;

static size_t whole_granules(const mf_block *b, size_t g) {
  uintptr_t lo = round_up(b->addr, g), hi = round_down(block_end(b), g);
  return hi > lo ? (hi - lo) / g : 0;
}

/* 0: the block is its whole segment (the segment goes away); 1: it is at an
 * end of its segment (the segment shrinks); 2: in the middle (the segment
 * splits in two). Taking from the lower kinds first keeps segments few and
 * long, and so the partial granules at their ends few. */
static int candidate_kind(const mf_block *b) {
  const mf_segment *s = b->segment;
  bool at_start = b->addr == s->addr, at_end = block_end(b) == segment_end(s);
  return at_start && at_end ? 0 : at_start || at_end ? 1 : 2;
}

static void harvest_add(harvest_list *h, mf_block *b, size_t granules) {
  if (h->len == h->cap) {
    size_t cap = h->cap ? h->cap * 2 : 16;
    harvest_candidate *grown = realloc(h->items, cap * sizeof *grown);
    if (!grown) {
      h->out_of_memory = true;
      return;
    }
    h->items = grown;
    h->cap = cap;
  }
  h->items[h->len++] = (harvest_candidate){b, granules, candidate_kind(b)};
  h->found += granules;
}

static bool harvest_visit(const mf_block *b, void *ctx) {
  harvest_list *h = ctx;
  if (b->size < h->granule) return false; /* largest first: no smaller block has a whole granule */
  if (b == h->keep[0] || b == h->keep[1]) return true;
  size_t n = whole_granules(b, h->granule);
  if (n) harvest_add(h, (mf_block *)b, n);
  return !h->out_of_memory;
}

static void harvest_pool(mf_pool *pool, harvest_list *h) {
  _mf_index_walk_desc(pool, harvest_visit, h);
}

static int compare_candidates(const void *x, const void *y) {
  const harvest_candidate *a = x, *b = y;
  if (a->kind != b->kind) return a->kind - b->kind;
  if (a->granules != b->granules) return a->granules > b->granules ? -1 : 1;
  return a->block->addr < b->block->addr ? -1 : a->block->addr > b->block->addr;
}

/* Collect every movable granule of the device, in the order to take them. */
static void harvest_collect(mf_device *d, harvest_list *h) {
  for (int i = 0; i < d->stream_count && !h->out_of_memory; i++) {
    harvest_pool(&d->streams[i]->large, h);
    harvest_pool(&d->streams[i]->small, h);
  }
  if (!h->out_of_memory && h->len > 1) qsort(h->items, h->len, sizeof *h->items, compare_candidates);
}

/* Unmap up to `want` of the collected granules into the spare list. A block
 * gives them from its segment's end where it touches one, else from its top;
 * a small segment goes whole (what is not needed is released). */
static mf_status harvest_take(mf_device *d, const harvest_list *h, size_t want) {
  size_t g = d->allocator->granule;
  for (size_t i = 0; i < h->len && want; i++) {
    mf_block *b = h->items[i].block;
    size_t n = h->items[i].granules;
    if (n > want) n = want;
    uintptr_t lo = round_up(b->addr, g), hi = round_down(block_end(b), g);
    bool from_bottom = b->addr == b->segment->addr && block_end(b) != segment_end(b->segment);
    mf_status st = from_bottom ? unmap_run(d, b, lo, lo + n * g) : unmap_run(d, b, hi - n * g, hi);
    if (st != MF_OK) return st;
    want -= n < want ? n : want;
  }
  return MF_OK;
}

/* ------------------------------------------------------------------- sites */

typedef struct {
  mf_vrange *range; /* NULL: no hole fits, a new range is needed */
  uintptr_t at;     /* where the granules go */
  size_t n;         /* how many */
  bool extends;     /* next to a segment of the pool */
  const mf_block *keep[2];
} site;

/* Fewer granules first; among equals, a site that extends a segment (it adds
 * no new segment ends, where partial granules sit). */
static void consider(site *best, mf_vrange *r, uintptr_t at, size_t n, bool extends, const mf_block *left,
                     const mf_block *right) {
  if (best->range && (n > best->n || (n == best->n && (best->extends || !extends)))) return;
  *best = (site){.range = r, .at = at, .n = n, .extends = extends, .keep = {left, right}};
}

/* The site needing the fewest granules for a free block of `size` bytes. */
static site find_site(mf_device *d, mf_pool *pool, size_t size) {
  size_t g = d->allocator->granule;
  size_t fresh = round_up(size, g) / g;
  site best = {0};
  for (mf_vrange *r = pool->ranges; r; r = r->next) {
    mf_segment *prev = NULL;
    for (mf_segment *next = r->first;; next = next->range_next) {
      uintptr_t hs = prev ? segment_end(prev) : r->base, he = next ? next->addr : r->base + r->size;
      size_t holes = (he - hs) / g;
      if (holes) {
        const mf_block *left = prev && prev->last->state == MF_BLOCK_FREE ? prev->last : NULL;
        const mf_block *right = next && next->first->state == MF_BLOCK_FREE ? next->first : NULL;
        size_t l = left ? left->size : 0, rr = right ? right->size : 0;
        /* Each site keeps from harvesting only the free blocks its run takes in. */
        if (l < size) { /* grow the segment before the hole at its end */
          size_t n = round_up(size - l, g) / g;
          if (n <= holes) consider(&best, r, hs, n, prev != NULL, left, n == holes ? right : NULL);
        }
        if (rr < size) { /* grow the segment after the hole at its start */
          size_t n = round_up(size - rr, g) / g;
          if (n <= holes) consider(&best, r, he - n * g, n, next != NULL, n == holes ? left : NULL, right);
        }
        if (l + holes * g + rr >= size) consider(&best, r, hs, holes, prev || next, left, right); /* join both */
      }
      if (!next) break;
      prev = next;
    }
  }
  if (!best.range) best.n = fresh;
  return best;
}

/* --------------------------------------------------------- mapping granules */

/* Map the last n spare granules at `at` in range r of pool, merging with the
 * segments it touches (large pools); *run gets the free block that covers
 * them. Nothing changes on failure but the spare list, which stays held. */
static mf_status map_run(mf_device *d, mf_pool *pool, mf_vrange *r, uintptr_t at, size_t n, mf_block **run) {
  mf_allocator *a = d->allocator;
  size_t g = a->granule, bytes = n * g;
  mf_status st = range_hold(r, (at - r->base) / g + n);
  if (st != MF_OK) return st;
  mf_segment *prev = NULL, *next = r->first;
  while (next && next->addr < at) {
    prev = next;
    next = next->range_next;
  }
  bool merge_left = prev && segment_end(prev) == at;
  bool merge_right = next && next->addr == at + bytes;
  mf_segment *seg = merge_left ? NULL : calloc(1, sizeof *seg);
  mf_block *blk = _mf_block_new(d);
  if ((!merge_left && !seg) || !blk) {
    free(seg);
    if (blk) _mf_block_recycle(d, blk);
    return _mf_error(MF_ERR_HOST_MEMORY, "out of host memory for segment metadata");
  }
  const uint64_t *handles = d->spare_handles + d->spare_len - n;
  _mf_clear_error();
  st = ops_of(d)->vmm_map(a->backend, d->index, at, g, n, handles);
  if (st != MF_OK) {
    free(seg);
    _mf_block_recycle(d, blk);
    return backend_failed(d, st, "vmm_map");
  }
  memcpy(handles_at(r, at, g), handles, n * sizeof(uint64_t));
  d->spare_len -= n;

  mf_segment *cur;
  mf_block *covering;
  if (merge_left) {
    cur = prev;
    _mf_segment_set_free(cur, false);
    mf_block *last = cur->last;
    if (last->state == MF_BLOCK_FREE) {
      _mf_index_remove(pool, last);
      last->size += bytes;
      covering = last;
      _mf_block_recycle(d, blk);
    } else {
      covering = blk;
      blk->prev = last;
      last->next = blk;
      cur->last = blk;
    }
    cur->size += bytes;
  } else {
    cur = seg;
    cur->addr = at;
    cur->size = bytes;
    cur->pool = pool;
    cur->first = cur->last = blk;
    covering = blk;
    range_insert_after(r, prev, cur);
    _mf_segment_link(d, cur);
    _mf_counter_add(&d->stats.segments, 1);
  }
  if (covering == blk) {
    blk->addr = at;
    blk->size = bytes;
    blk->segment = cur;
    blk->state = MF_BLOCK_FREE;
  }
  if (merge_right) {
    mf_segment *nx = next;
    _mf_segment_set_free(nx, false);
    mf_block *head = nx->first;
    for (mf_block *x = head; x; x = x->next) x->segment = cur;
    covering->next = head;
    head->prev = covering;
    cur->last = nx->last;
    cur->size += nx->size;
    if (head->state == MF_BLOCK_FREE) { /* coalesce: covering is the last block before head */
      _mf_index_remove(pool, head);
      covering->size += head->size;
      covering->next = head->next;
      if (head->next) head->next->prev = covering;
      else cur->last = covering;
      _mf_block_recycle(d, head);
    }
    range_remove(nx);
    _mf_segment_unlink(d, nx);
    free(nx);
    _mf_counter_add(&d->stats.segments, -1);
  }
  _mf_index_insert(pool, covering);
  _mf_segment_update_free(cur);
  d->stats.segment_maps++;
  d->stats.granule_maps += (int64_t)n;
  _mf_log_event(a, d->index, MF_LOG_SEGMENT_MAP, at, bytes, bytes, pool->stream, (mf_tag){0});
  *run = covering;
  return MF_OK;
}

/* ------------------------------------------------------------- fragments */

mf_block *_mf_vmm_fragment(const mf_pool *large, size_t size) {
  mf_block *b = _mf_index_lower_bound(large, size);
  if (!b || b->size >= 2 * large->device->allocator->granule) return NULL;
  return whole_granules(b, large->device->allocator->granule) ? NULL : b;
}

/* ----------------------------------------------------------------- growth */

/* Unmap and release every whole free granule of the device (and the spare
 * ones an operation holds), and the address ranges left empty; returns the
 * granules released. Best effort: a backend failure keeps the rest cached. */
static int64_t release_cached(mf_device *d) {
  int64_t before = d->stats.granule_releases;
  release_spare(d);
  for (int i = 0; i < d->stream_count; i++) {
    mf_pool *pools[2] = {&d->streams[i]->large, &d->streams[i]->small};
    for (int k = 0; k < 2; k++) {
      harvest_list h = {.granule = d->allocator->granule};
      harvest_pool(pools[k], &h);
      if (!h.out_of_memory) harvest_take(d, &h, SIZE_MAX);
      free(h.items);
      release_spare(d);
      release_empty_ranges(d, pools[k]);
    }
  }
  return d->stats.granule_releases - before;
}

/* The OOM ladder of page-mapped pools, one rung per failed attempt: first
 * wait for deferred frees (record_stream events) and look again; then release
 * every cached granule, as empty_cache does, and look again; then fail.
 * Moving granules already takes those of free blocks, but not of the free
 * blocks the chosen site's run takes in (its neighbours), so a request can
 * fail next to a layout that fits once the cache is released: a batch that
 * fits a fresh process must fit after an OOM too (the way PyTorch's caching
 * allocator frees its cached blocks and retries). Returns whether to look
 * again. */
static bool climb_ladder(mf_device *d, int *rung) {
  if (*rung == 0) {
    *rung = 1;
    if (d->pending_count) {
      _mf_process_pending(d, true);
      d->stats.ladder_releases++;
      return true;
    }
  }
  if (*rung == 1) {
    *rung = 2;
    if (release_cached(d) > 0) {
      d->stats.ladder_releases++;
      return true;
    }
  }
  return false;
}

mf_block *_mf_vmm_grow(mf_device *d, mf_pool *pool, size_t size, mf_status *status) {
  mf_block *run = NULL;
  mf_status st = MF_OK;
  d->synced = false;
  if (d->capacity && size > d->capacity) { /* nothing released could make room: keep the cache */
    *status = _mf_error(MF_ERR_OOM, "larger than the capacity");
    return NULL;
  }
  /* Nor for more than the device has, when the capacity is set above it:
   * fail before holding a handle per granule of the request on the host
   * (2^63 bytes asked 32 TiB of host memory for them). */
  if (d->total_memory && size > d->total_memory) {
    *status = _mf_error(MF_ERR_OOM, "larger than the device's memory");
    return NULL;
  }
  for (int rung = 0;;) {
    site s = find_site(d, pool, size);
    size_t need = s.n > d->spare_len ? s.n - d->spare_len : 0;
    harvest_list h = {.granule = d->allocator->granule, .keep = {s.keep[0], s.keep[1]}};
    if (need) harvest_collect(d, &h);
    if (h.out_of_memory) {
      free(h.items);
      st = _mf_error(MF_ERR_HOST_MEMORY, "out of host memory while looking for free granules");
      break;
    }
    bool fits = h.found >= need || need - h.found <= room(d);
    if (!fits) {
      free(h.items);
      if (climb_ladder(d, &rung)) continue;
      st = _mf_error(MF_ERR_OOM, "capacity reached");
      break;
    }
    st = harvest_take(d, &h, need);
    free(h.items);
    if (st == MF_OK && d->spare_len < s.n) st = create_granules(d, s.n - d->spare_len);
    if (st == MF_ERR_OOM && climb_ladder(d, &rung)) continue; /* the capacity, or the device itself, is full */
    if (st != MF_OK) break;
    if (!s.range && (st = range_new(d, pool, s.n * d->allocator->granule, &s.range)) == MF_OK) s.at = s.range->base;
    if (st == MF_OK) st = map_run(d, pool, s.range, s.at, s.n, &run);
    if (st == MF_OK && run->size < size)
      st = _mf_error(MF_ERR_CORRUPT, "vmm: a mapped run of %zu bytes is short of the %zu requested", run->size, size);
    break;
  }
  release_spare(d);
  *status = st;
  return st == MF_OK ? run : NULL;
}

/* ------------------------------------------------------ empty_cache, destroy */

void _mf_vmm_release_cached(mf_device *d) {
  d->synced = false;
  release_cached(d);
}

void _mf_vmm_destroy_device(mf_device *d) {
  size_t g = d->allocator->granule;
  const mf_backend_ops *ops = ops_of(d);
  if (d->segments && ops->synchronize) ops->synchronize(backend_of(d), d->index);
  for (mf_segment *s = d->segments; s; s = s->next) {
    size_t n = s->size / g;
    ops->vmm_unmap(backend_of(d), d->index, s->addr, g, n);
    ops->vmm_release(backend_of(d), d->index, g, n, handles_at(s->range, s->addr, g));
    s->range_prev = s->range_next = NULL;
  }
  release_spare(d);
  for (int i = 0; i < d->stream_count; i++) {
    mf_pool *pools[2] = {&d->streams[i]->large, &d->streams[i]->small};
    for (int k = 0; k < 2; k++) {
      while (pools[k]->ranges) {
        mf_vrange *r = pools[k]->ranges;
        pools[k]->ranges = r->next;
        ops->vmm_unreserve(backend_of(d), d->index, r->base, r->size);
        free(r->handles);
        free(r);
      }
    }
  }
}
