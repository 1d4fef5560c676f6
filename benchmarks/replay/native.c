/* native.c — PyTorch's native CUDACachingAllocator policy, emulated on a
 * parsed trace (see native.h; the policy point by point is in
 * benchmarks/README.md, "--compare native").
 *
 * Written from PyTorch's c10/cuda/CUDACachingAllocator.cpp and
 * c10/core/AllocatorConfig.{h,cpp} (2025 main). Each function below names
 * the function of DeviceCachingAllocator (or ExpandableSegment) whose
 * behaviour it reproduces; where the emulation simplifies, the comment says
 * so. The structure follows PyTorch's where that decides bytes, and is our
 * own elsewhere:
 *
 *  - one state per device (PyTorch has one DeviceCachingAllocator per device);
 *  - per (device, stream) two pools, small and large. PyTorch keeps one set
 *    per pool ordered by (stream, size, address) and never lets a search
 *    cross into another stream's part of it, so one ordered set per stream
 *    is the same thing;
 *  - free (mapped) blocks of a pool in a treap keyed by (size, address):
 *    lower_bound, successor and predecessor in O(log n);
 *  - blocks of one segment linked as address neighbours (prev/next), as in
 *    PyTorch's Block;
 *  - unmapped blocks of expandable segments in an address-ordered list per
 *    pool (PyTorch's BlockPool::unmapped);
 *  - the trace's slot -> the live block.
 *
 * Addresses are invented: each cudaMalloc gets the next range of a per-device
 * counter, so a newer segment has a higher address (the driver's addresses
 * only break ties between free blocks of equal size). */
#include "native.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The constants, from CUDACachingAllocator.cpp / AllocatorConfig.h. */
#define MIN_BLOCK_SIZE 512ull                 /* kMinBlockSize */
#define SMALL_SIZE (1ull << 20)               /* kSmallSize: largest small request */
#define SMALL_BUFFER (2ull << 20)             /* kSmallBuffer: small segment, small page */
#define MIN_LARGE_ALLOC (10ull << 20)         /* kMinLargeAlloc */
#define LARGE_BUFFER (20ull << 20)            /* kLargeBuffer = large_segment_size() default */
#define ROUND_LARGE (2ull << 20)              /* kRoundLarge */
#define MAX_NON_SPLIT_ROUNDING (20ull << 20)  /* max_non_split_rounding_size() default */
#define ONE_EXABYTE (1ull << 60)              /* allocate(): larger requests are an OOM */
/* The address space of an expandable segment is 9/8 of the device's total
 * memory (ExpandableSegment's constructor). With no capacity given, the
 * device is taken to have 1 TiB, as memfit's virtual backend has. */
#define DEFAULT_DEVICE_TOTAL (1ull << 40)
#define NO_LIMIT UINT64_MAX

typedef struct npool npool;
typedef struct ndevice ndevice;

/* An expandable segment: a reserved address range mapped page by page. */
typedef struct nseg {
  uint64_t base, size, page;
  struct nseg *all_next; /* every segment made, freed at the end */
} nseg;

typedef struct nblock {
  uint64_t addr, size;
  struct nblock *prev, *next;   /* address neighbours in the segment */
  struct nblock *left, *right;  /* the pool's free treap (mapped free blocks) */
  struct nblock *uprev, *unext; /* the pool's unmapped list */
  nseg *seg;                    /* the expandable segment, or NULL */
  npool *pool;
  uint32_t prio;
  bool allocated, mapped;
} nblock;

struct npool {
  nblock *free_root;
  nblock *unmapped_first, *unmapped_last;
  ndevice *dev;
  bool small;
};

/* One (device, stream): its two pools. */
typedef struct nstream {
  uintptr_t stream;
  uint32_t device;
  npool pools[2]; /* [0] large, [1] small */
} nstream;

struct ndevice {
  uint64_t reserved, allocated, peak_reserved, peak_allocated;
  uint64_t next_addr;
};

#define CHUNK_BLOCKS 4096
typedef struct chunk {
  struct chunk *next;
  nblock blocks[CHUNK_BLOCKS];
} chunk;

typedef struct emu {
  bool expandable;
  uint64_t capacity;  /* 0: unlimited */
  uint64_t max_split; /* NO_LIMIT when unset */
  uint64_t total;     /* the device's memory, for expandable address space */
  ndevice *devs;
  int ndevs;
  nstream **table; /* open addressing on (device, stream) */
  size_t table_cap, table_used;
  nstream **streams; /* every entry, in creation order */
  size_t nstreams, streams_cap;
  chunk *chunks;
  size_t chunk_used;
  nblock *spare; /* freed nodes, linked by next */
  uint32_t rng;
  nseg *segs;       /* every expandable segment made */
  nblock **scratch; /* in-order copy of a treap, for release_blocks */
  size_t scratch_len, scratch_cap;
  bool no_memory;
  native_result *out;
} emu;

/* ------------------------------------------------------------ nodes */

static uint32_t next_prio(emu *e) {
  /* xorshift32: any sequence will do; a fixed one keeps runs identical. */
  uint32_t x = e->rng;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return e->rng = x;
}

static nblock *new_block(emu *e, npool *pool, uint64_t addr, uint64_t size, nseg *seg, bool mapped) {
  nblock *b;
  if (e->spare) {
    b = e->spare;
    e->spare = b->next;
  } else {
    if (!e->chunks || e->chunk_used == CHUNK_BLOCKS) {
      chunk *c = malloc(sizeof *c);
      if (!c) {
        e->no_memory = true;
        return NULL;
      }
      c->next = e->chunks;
      e->chunks = c;
      e->chunk_used = 0;
    }
    b = &e->chunks->blocks[e->chunk_used++];
  }
  memset(b, 0, sizeof *b);
  b->addr = addr;
  b->size = size;
  b->seg = seg;
  b->pool = pool;
  b->mapped = mapped;
  b->prio = next_prio(e);
  return b;
}

static void drop_block(emu *e, nblock *b) {
  b->next = e->spare;
  e->spare = b;
}

/* ------------------------------------------------------------ the free treap */

/* BlockComparatorSize within one stream: by size, then by address. */
static bool key_less(const nblock *a, const nblock *b) {
  return a->size < b->size || (a->size == b->size && a->addr < b->addr);
}

static void treap_split(nblock *t, const nblock *key, nblock **l, nblock **r) {
  while (t) {
    if (key_less(t, key)) {
      *l = t;
      l = &t->right;
      t = t->right;
    } else {
      *r = t;
      r = &t->left;
      t = t->left;
    }
  }
  *l = *r = NULL;
}

static nblock *treap_merge(nblock *l, nblock *r) {
  nblock *root = NULL, **at = &root;
  while (l && r) {
    if (l->prio > r->prio) {
      *at = l;
      at = &l->right;
      l = l->right;
    } else {
      *at = r;
      at = &r->left;
      r = r->left;
    }
  }
  *at = l ? l : r;
  return root;
}

static void tree_insert(npool *p, nblock *n) {
  nblock **at = &p->free_root;
  while (*at && (*at)->prio >= n->prio) at = key_less(n, *at) ? &(*at)->left : &(*at)->right;
  treap_split(*at, n, &n->left, &n->right);
  *at = n;
}

static void tree_remove(npool *p, nblock *n) {
  nblock **at = &p->free_root;
  while (*at != n) at = key_less(n, *at) ? &(*at)->left : &(*at)->right;
  *at = treap_merge(n->left, n->right);
  n->left = n->right = NULL;
}

/* The smallest (size, address) with size >= size: blocks.lower_bound(key). */
static nblock *tree_lower_bound(const npool *p, uint64_t size) {
  nblock *best = NULL;
  for (nblock *n = p->free_root; n;) {
    if (n->size >= size) {
      best = n;
      n = n->left;
    } else {
      n = n->right;
    }
  }
  return best;
}

/* The next block in (size, address) order: ++it. */
static nblock *tree_next(const npool *p, const nblock *x) {
  nblock *best = NULL;
  for (nblock *n = p->free_root; n;) {
    if (key_less(x, n)) {
      best = n;
      n = n->left;
    } else {
      n = n->right;
    }
  }
  return best;
}

/* The previous block in (size, address) order: --it. */
static nblock *tree_prev(const npool *p, const nblock *x) {
  nblock *best = NULL;
  for (nblock *n = p->free_root; n;) {
    if (key_less(n, x)) {
      best = n;
      n = n->right;
    } else {
      n = n->left;
    }
  }
  return best;
}

/* The largest block with size < size: --lower_bound(key). */
static nblock *tree_below(const npool *p, uint64_t size) {
  nblock *best = NULL;
  for (nblock *n = p->free_root; n;) {
    if (n->size < size) {
      best = n;
      n = n->right;
    } else {
      n = n->left;
    }
  }
  return best;
}

static bool scratch_push(emu *e, nblock *b) {
  if (e->scratch_len == e->scratch_cap) {
    size_t cap = e->scratch_cap ? e->scratch_cap * 2 : 256;
    nblock **s = realloc(e->scratch, cap * sizeof *s);
    if (!s) {
      e->no_memory = true;
      return false;
    }
    e->scratch = s;
    e->scratch_cap = cap;
  }
  e->scratch[e->scratch_len++] = b;
  return true;
}

static bool collect_in_order(emu *e, nblock *n) {
  /* Treap depth is O(log n) with high probability: recursion is fine. */
  while (n) {
    if (!collect_in_order(e, n->left) || !scratch_push(e, n)) return false;
    n = n->right;
  }
  return true;
}

/* ------------------------------------------------------------ the unmapped list */

static void ulist_insert_after(npool *p, nblock *pos, nblock *b) {
  b->uprev = pos;
  b->unext = pos ? pos->unext : p->unmapped_first;
  if (b->unext) b->unext->uprev = b;
  else p->unmapped_last = b;
  if (pos) pos->unext = b;
  else p->unmapped_first = b;
}

static void ulist_insert_sorted(npool *p, nblock *b) {
  nblock *pos = p->unmapped_last;
  while (pos && pos->addr > b->addr) pos = pos->uprev;
  ulist_insert_after(p, pos, b);
}

static void ulist_remove(npool *p, nblock *b) {
  if (b->uprev) b->uprev->unext = b->unext;
  else p->unmapped_first = b->unext;
  if (b->unext) b->unext->uprev = b->uprev;
  else p->unmapped_last = b->uprev;
  b->uprev = b->unext = NULL;
}

/* ------------------------------------------------------------ streams */

static uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

static size_t stream_hash(uint32_t device, uintptr_t stream) {
  return (size_t)mix64((uint64_t)stream ^ ((uint64_t)device << 56) ^ 0x9e3779b97f4a7c15ull);
}

static bool table_grow(emu *e) {
  size_t cap = e->table_cap ? e->table_cap * 2 : 16;
  nstream **t = calloc(cap, sizeof *t);
  if (!t) return false;
  for (size_t i = 0; i < e->table_cap; i++) {
    nstream *s = e->table[i];
    if (!s) continue;
    size_t h = stream_hash(s->device, s->stream) & (cap - 1);
    while (t[h]) h = (h + 1) & (cap - 1);
    t[h] = s;
  }
  free(e->table);
  e->table = t;
  e->table_cap = cap;
  return true;
}

/* get_pool: the small pool for rounded sizes <= kSmallSize, else the large. */
static npool *get_pool(emu *e, uint32_t device, uintptr_t stream, bool small) {
  if (e->table_cap) {
    size_t h = stream_hash(device, stream) & (e->table_cap - 1);
    for (nstream *s; (s = e->table[h]); h = (h + 1) & (e->table_cap - 1))
      if (s->device == device && s->stream == stream) return &s->pools[small];
  }
  if ((e->table_used + 1) * 2 > e->table_cap && !table_grow(e)) goto no_memory;
  if (e->nstreams == e->streams_cap) {
    size_t cap = e->streams_cap ? e->streams_cap * 2 : 8;
    nstream **l = realloc(e->streams, cap * sizeof *l);
    if (!l) goto no_memory;
    e->streams = l;
    e->streams_cap = cap;
  }
  nstream *s = calloc(1, sizeof *s);
  if (!s) goto no_memory;
  s->device = device;
  s->stream = stream;
  for (int k = 0; k < 2; k++) {
    s->pools[k].dev = &e->devs[device];
    s->pools[k].small = k == 1;
  }
  size_t h = stream_hash(device, stream) & (e->table_cap - 1);
  while (e->table[h]) h = (h + 1) & (e->table_cap - 1);
  e->table[h] = s;
  e->table_used++;
  e->streams[e->nstreams++] = s;
  return &s->pools[small];
no_memory:
  e->no_memory = true;
  return NULL;
}

/* ------------------------------------------------------------ accounting */

static void reserve(emu *e, ndevice *d, uint64_t bytes) {
  d->reserved += bytes;
  if (d->reserved > d->peak_reserved) d->peak_reserved = d->reserved;
  e->out->segment_maps++;
}

static void unreserve(emu *e, ndevice *d, uint64_t bytes) {
  d->reserved -= bytes;
  e->out->segment_unmaps++;
}

/* Would the device have room for bytes more? The capacity plays the part of
 * the GPU's memory: cudaMalloc, or cuMemCreate for a page, fails beyond it. */
static bool fits(const emu *e, const ndevice *d, uint64_t bytes) {
  return !e->capacity || (bytes <= e->capacity && d->reserved <= e->capacity - bytes);
}

/* ------------------------------------------------------------ the policy */

/* round_size: at least kMinBlockSize, then a multiple of it
 * (roundup_power2_divisions is off by default). */
static uint64_t round_size(uint64_t size) {
  if (size < MIN_BLOCK_SIZE) return MIN_BLOCK_SIZE;
  return (size + MIN_BLOCK_SIZE - 1) / MIN_BLOCK_SIZE * MIN_BLOCK_SIZE;
}

/* get_allocation_size: the cudaMalloc for a request no cached block serves. */
static uint64_t get_allocation_size(uint64_t size) {
  if (size <= SMALL_SIZE) return SMALL_BUFFER;
  if (size < MIN_LARGE_ALLOC) return LARGE_BUFFER;
  return (size + ROUND_LARGE - 1) / ROUND_LARGE * ROUND_LARGE;
}

/* try_merge_blocks: absorb a free neighbour in the same mapped state. */
static void try_merge(emu *e, nblock *dst, nblock *src) {
  if (!src || src->allocated || src->mapped != dst->mapped) return;
  if (src->mapped) tree_remove(src->pool, src);
  else ulist_remove(src->pool, src);
  if (dst->prev == src) {
    dst->addr = src->addr;
    dst->prev = src->prev;
    if (dst->prev) dst->prev->next = dst;
  } else {
    dst->next = src->next;
    if (dst->next) dst->next->prev = dst;
  }
  dst->size += src->size;
  drop_block(e, src);
}

/* free_block: coalesce with free neighbours of the same segment, then cache. */
static void free_block(emu *e, nblock *b) {
  b->allocated = false;
  try_merge(e, b, b->prev);
  try_merge(e, b, b->next);
  tree_insert(b->pool, b);
}

/* expandable_size in get_free_block: a block followed by unmapped space is
 * as large, for best fit, as it could grow. */
static uint64_t expandable_size(const nblock *b) {
  return b->size + (b->next && !b->next->mapped ? b->next->size : 0);
}

/* get_free_block: best fit by (size, address) in the stream's pool, with the
 * expandable-segment adjustment and the max_split_size rules. */
static nblock *get_free_block(emu *e, npool *p, uint64_t size) {
  nblock *b = tree_lower_bound(p, size);
  if (!b) return NULL;
  if (b->seg) {
    for (nblock *n = tree_next(p, b); n && expandable_size(n) < expandable_size(b); n = tree_next(p, b))
      b = n;
  }
  /* Do not hand an oversize block to a request below max_split_size... */
  if (size < e->max_split && b->size >= e->max_split) return NULL;
  /* ...and an oversize request takes one only within max_non_split_rounding. */
  if (size >= e->max_split && b->size >= size + MAX_NON_SPLIT_ROUNDING) return NULL;
  tree_remove(p, b);
  return b;
}

/* should_split: the small pool (and every pool with expandable segments)
 * splits off any remainder of kMinBlockSize or more; the large pool only a
 * remainder above kSmallSize, and never for a request >= max_split_size. */
static bool should_split(const emu *e, const nblock *b, uint64_t size) {
  uint64_t remaining = b->size - size;
  if (b->pool->small || e->expandable) return remaining >= MIN_BLOCK_SIZE;
  return size < e->max_split && remaining > SMALL_SIZE;
}

/* alloc_found_block's split: the front of b is allocated, the rest cached. */
static bool split_block(emu *e, nblock *b, uint64_t size) {
  nblock *rest = new_block(e, b->pool, b->addr + size, b->size - size, b->seg, true);
  if (!rest) return false;
  rest->prev = b;
  rest->next = b->next;
  if (b->next) b->next->prev = rest;
  b->next = rest;
  b->size = size;
  tree_insert(b->pool, rest);
  return true;
}

/* ExpandableSegment::map via map_block: map the pages covering size bytes at
 * the start of the unmapped block u, merge with free mapped neighbours and
 * cache the result. All of it or nothing: cuMemCreate failing on one page
 * releases the pages of this call. */
static bool map_block(emu *e, nblock *u, uint64_t size) {
  npool *p = u->pool;
  uint64_t page = u->seg->page;
  uint64_t bytes = (size + page - 1) / page * page; /* u starts on a page */
  if (bytes == 0 || !fits(e, p->dev, bytes)) return false;
  if (bytes < u->size) {
    nblock *rest = new_block(e, p, u->addr + bytes, u->size - bytes, u->seg, false);
    if (!rest) return false;
    rest->prev = u;
    rest->next = u->next;
    if (u->next) u->next->prev = rest;
    u->next = rest;
    ulist_insert_after(p, u, rest);
    u->size = bytes;
  }
  ulist_remove(p, u);
  u->mapped = true;
  try_merge(e, u, u->prev);
  try_merge(e, u, u->next);
  tree_insert(p, u);
  reserve(e, p->dev, bytes);
  return true;
}

static bool allocatable(const nblock *b) { return b && !b->allocated; }

/* find_expandable_block: the lowest address where free and unmapped blocks
 * in a row hold size bytes; else a new segment (one per stream and pool in
 * practice: its address space is 9/8 of the device's memory). */
static nblock *find_expandable_block(emu *e, npool *p, uint64_t size) {
  for (nblock *u = p->unmapped_first; u; u = u->unext) {
    nblock *c = allocatable(u->prev) ? u->prev : u;
    uint64_t bytes = 0;
    for (nblock *b = c; bytes < size && allocatable(b); b = b->next) bytes += b->size;
    if (bytes >= size) return c;
  }
  nseg *seg = malloc(sizeof *seg);
  if (!seg) {
    e->no_memory = true;
    return NULL;
  }
  seg->all_next = e->segs;
  e->segs = seg;
  ndevice *d = p->dev;
  seg->page = p->small ? SMALL_BUFFER : LARGE_BUFFER;
  uint64_t want = e->total + e->total / 8;
  seg->size = (want + seg->page - 1) / seg->page * seg->page;
  seg->base = (d->next_addr + seg->page - 1) / seg->page * seg->page;
  d->next_addr = seg->base + seg->size;
  nblock *u = new_block(e, p, seg->base, seg->size, seg, false);
  if (!u) return NULL;
  ulist_insert_sorted(p, u);
  return u;
}

/* try_allocate_expandable_block: map only what the request needs beyond the
 * free block it starts at, page by page as map_block rounds. */
static nblock *try_allocate_expandable_block(emu *e, npool *p, uint64_t size) {
  nblock *c = find_expandable_block(e, p, size);
  if (!c) return NULL;
  if (!c->mapped && !map_block(e, c, c->size < size ? c->size : size)) return NULL;
  while (c->size < size) {
    /* c is free and mapped, its next unmapped: map the difference into it. */
    nblock *n = c->next;
    uint64_t want = size - c->size;
    if (!map_block(e, n, want < n->size ? want : n->size)) return NULL;
    c = n; /* n absorbed c */
  }
  tree_remove(p, c);
  return c;
}

/* alloc_block: a new segment of alloc_size (cudaMalloc), or the expandable
 * path. NULL when the device has no room (cudaErrorMemoryAllocation). */
static nblock *alloc_block(emu *e, npool *p, uint64_t size, uint64_t alloc_size) {
  if (e->expandable) return try_allocate_expandable_block(e, p, size);
  ndevice *d = p->dev;
  if (!fits(e, d, alloc_size)) return NULL;
  nblock *b = new_block(e, p, d->next_addr, alloc_size, NULL, true);
  if (!b) return NULL;
  d->next_addr += alloc_size;
  reserve(e, d, alloc_size);
  return b;
}

/* release_block: cudaFree of a whole free segment. */
static void release_block(emu *e, nblock *b) {
  tree_remove(b->pool, b);
  unreserve(e, b->pool->dev, b->size);
  drop_block(e, b);
}

/* release_available_cached_blocks: with max_split_size set, free the
 * smallest oversize cached block of the stream's pool that is at least
 * max(size, max_split_size); failing that, oversize blocks from the largest
 * down until that many bytes are freed. Expandable blocks are skipped. */
static bool release_available_cached_blocks(emu *e, npool *p, uint64_t size) {
  if (e->max_split == NO_LIMIT || e->expandable) return false;
  uint64_t key = size < e->max_split ? e->max_split : size;
  nblock *b = tree_lower_bound(p, key);
  if (b) {
    /* Blocks >= max_split_size are never split pieces (a split only ever
     * leaves pieces below it), so this is a whole segment. */
    release_block(e, b);
    return true;
  }
  uint64_t released = 0;
  for (nblock *cur = tree_below(p, key); cur && released < key && cur->size >= e->max_split;) {
    nblock *before = tree_prev(p, cur);
    released += cur->size;
    release_block(e, cur);
    cur = before;
  }
  return released >= key;
}

/* unmap_block: unmap the whole pages inside a free expandable block; the
 * partial pages at its ends stay mapped as free blocks of their own. */
static bool unmap_block(emu *e, nblock *b) {
  npool *p = b->pool;
  nseg *seg = b->seg;
  uint64_t off = b->addr - seg->base;
  uint64_t begin = (off + seg->page - 1) / seg->page;
  uint64_t end = (off + b->size) / seg->page;
  if (begin >= end) return true;
  uint64_t start = seg->base + begin * seg->page, bytes = (end - begin) * seg->page;
  uint64_t before = start - b->addr, after = b->size - before - bytes;
  tree_remove(p, b);
  if (before) {
    nblock *f = new_block(e, p, b->addr, before, seg, true);
    if (!f) return false;
    f->prev = b->prev;
    f->next = b;
    if (b->prev) b->prev->next = f;
    b->prev = f;
    tree_insert(p, f);
  }
  if (after) {
    nblock *f = new_block(e, p, start + bytes, after, seg, true);
    if (!f) return false;
    f->prev = b;
    f->next = b->next;
    if (b->next) b->next->prev = f;
    b->next = f;
    tree_insert(p, f);
  }
  b->addr = start;
  b->size = bytes;
  b->mapped = false;
  try_merge(e, b, b->prev);
  try_merge(e, b, b->next);
  ulist_insert_sorted(p, b);
  unreserve(e, p->dev, bytes);
  return true;
}

/* release_blocks: cudaFree every cached block that is a whole segment; with
 * expandable segments, unmap every cached block's whole pages, and drop a
 * segment left with nothing mapped (release_expandable_segment). */
static bool release_blocks(emu *e, npool *p) {
  e->scratch_len = 0;
  if (!collect_in_order(e, p->free_root)) return false;
  for (size_t i = 0; i < e->scratch_len; i++) {
    nblock *b = e->scratch[i];
    if (b->seg) {
      if (!unmap_block(e, b)) return false;
      if (!b->prev && !b->next && !b->mapped) { /* nothing mapped is left */
        ulist_remove(p, b);
        drop_block(e, b);
      }
    } else if (!b->prev && !b->next) {
      release_block(e, b);
    }
  }
  return true;
}

/* release_cached_blocks: every pool of the device, large ones first. (No
 * events to synchronize: the trace has no record_stream.) */
static bool release_cached_blocks(emu *e, uint32_t device) {
  for (int k = 0; k < 2; k++)
    for (size_t i = 0; i < e->nstreams; i++)
      if (e->streams[i]->device == device && !release_blocks(e, &e->streams[i]->pools[k]))
        return false;
  return true;
}

/* DeviceCachingAllocator::malloc. Returns the block, or NULL with
 * e->no_memory unset for an OOM. */
static nblock *emu_malloc(emu *e, uint32_t device, uint64_t orig_size, uintptr_t stream) {
  if (orig_size >= ONE_EXABYTE) return NULL;
  uint64_t size = round_size(orig_size);
  npool *p = get_pool(e, device, stream, size <= SMALL_SIZE);
  if (!p) return NULL;
  uint64_t alloc_size = get_allocation_size(size);
  nblock *b = get_free_block(e, p, size);
  if (!b && !e->no_memory) {
    /* alloc_block, then release_available_cached_blocks and retry, then
     * release_cached_blocks and retry (the garbage collection threshold,
     * off by default, is not emulated). */
    b = alloc_block(e, p, size, alloc_size);
    if (!b && !e->no_memory && release_available_cached_blocks(e, p, size))
      b = alloc_block(e, p, size, alloc_size);
    if (!b && !e->no_memory) {
      e->out->alloc_retries++;
      if (release_cached_blocks(e, device)) b = alloc_block(e, p, size, alloc_size);
    }
  }
  if (!b || e->no_memory) return NULL;
  if (should_split(e, b, size) && !split_block(e, b, size)) return NULL;
  b->allocated = true;
  ndevice *d = p->dev;
  d->allocated += b->size;
  if (d->allocated > d->peak_allocated) d->peak_allocated = d->allocated;
  return b;
}

static void emu_free(emu *e, nblock *b) {
  b->pool->dev->allocated -= b->size;
  free_block(e, b);
}

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int native_replay(const trace *t, const native_config *c, native_result *out) {
  double start = now_seconds();
  memset(out, 0, sizeof *out);
  emu e;
  memset(&e, 0, sizeof e);
  e.expandable = c->expandable;
  e.capacity = c->capacity;
  e.max_split = c->max_split_size ? c->max_split_size : NO_LIMIT;
  e.total = c->capacity ? c->capacity : DEFAULT_DEVICE_TOTAL;
  e.rng = 0x2545f491u;
  e.out = out;
  e.ndevs = t->devices > 0 ? t->devices : 1;
  e.devs = calloc((size_t)e.ndevs, sizeof *e.devs);
  nblock **live = calloc(t->slots ? t->slots : 1, sizeof *live);
  int rc = 0;
  if (!e.devs || !live) {
    rc = -1;
    goto done;
  }
  for (int d = 0; d < e.ndevs; d++) e.devs[d].next_addr = 1ull << 32;

  for (size_t i = 0; i < t->count; i++) {
    const trace_op *op = &t->ops[i];
    if (op->kind == TRACE_FREE) {
      if (live[op->slot]) emu_free(&e, live[op->slot]);
      live[op->slot] = NULL;
      continue;
    }
    live[op->slot] = NULL;
    if (op->size == 0) continue; /* allocate(0) is a null pointer, no block */
    nblock *b = emu_malloc(&e, op->device, op->size, op->stream);
    if (e.no_memory) {
      rc = -1;
      goto done;
    }
    if (!b) {
      out->ooms = 1;
      out->oom_op = i;
      break;
    }
    live[op->slot] = b;
  }
  for (int d = 0; d < e.ndevs; d++) {
    out->peak_reserved += e.devs[d].peak_reserved;
    out->peak_allocated += e.devs[d].peak_allocated;
  }

done:
  free(live);
  free(e.devs);
  for (size_t i = 0; i < e.nstreams; i++) free(e.streams[i]);
  free(e.streams);
  free(e.table);
  free(e.scratch);
  while (e.segs) {
    nseg *next = e.segs->all_next;
    free(e.segs);
    e.segs = next;
  }
  while (e.chunks) {
    chunk *next = e.chunks->next;
    free(e.chunks);
    e.chunks = next;
  }
  out->seconds = now_seconds() - start;
  return rc;
}
