/* free_index.c — each pool's free blocks in a treap ordered by (size, address),
 * so best fit, insertion and removal cost O(log n) in the number of cached
 * blocks instead of a linear scan. Nodes are the blocks themselves (intrusive):
 * no host allocation. */
#include "internal.h"

static inline bool key_less(const mf_block *a, const mf_block *b) {
  return a->size < b->size || (a->size == b->size && a->addr < b->addr);
}

/* Split the subtree t into keys below key (*lo, hung under lo_parent) and the
 * rest (*hi, under hi_parent). */
static void split(mf_block *t, const mf_block *key, mf_block **lo, mf_block **hi, mf_block *lo_parent,
                  mf_block *hi_parent) {
  while (t) {
    if (key_less(t, key)) {
      *lo = t;
      t->parent = lo_parent;
      lo_parent = t;
      lo = &t->right;
      t = t->right;
    } else {
      *hi = t;
      t->parent = hi_parent;
      hi_parent = t;
      hi = &t->left;
      t = t->left;
    }
  }
  *lo = *hi = NULL;
}

/* Join two treaps where every key of lo is below every key of hi, into one
 * hung under parent. */
static mf_block *join(mf_block *lo, mf_block *hi, mf_block *parent) {
  mf_block *root = NULL, **link = &root;
  while (lo && hi) {
    if (lo->priority > hi->priority) {
      *link = lo;
      lo->parent = parent;
      parent = lo;
      link = &lo->right;
      lo = lo->right;
    } else {
      *link = hi;
      hi->parent = parent;
      parent = hi;
      link = &hi->left;
      hi = hi->left;
    }
  }
  *link = lo ? lo : hi;
  if (*link) (*link)->parent = parent;
  return root;
}

void _mf_index_insert(mf_pool *pool, mf_block *block) {
  mf_block **link = &pool->root, *parent = NULL;
  while (*link && (*link)->priority >= block->priority) {
    parent = *link;
    link = key_less(block, *link) ? &(*link)->left : &(*link)->right;
  }
  split(*link, block, &block->left, &block->right, block, block);
  *link = block;
  block->parent = parent;
  pool->free_blocks++;
  pool->free_bytes += block->size;
}

/* The parent link finds the block's place without a search from the root: a
 * free of a block whose neighbours are free removes them from a tree of up to
 * every cached block, and a search would miss the cache at every level. The
 * join below walks two spines whose expected length is O(1). */
void _mf_index_remove(mf_pool *pool, mf_block *block) {
  mf_block *parent = block->parent;
  mf_block **link = !parent ? &pool->root : parent->left == block ? &parent->left : &parent->right;
  if (*link != block) return; /* not indexed: mf_check reports such states */
  *link = join(block->left, block->right, parent);
  block->left = block->right = block->parent = NULL;
  pool->free_blocks--;
  pool->free_bytes -= block->size;
}

mf_block *_mf_index_lower_bound(const mf_pool *pool, size_t size) {
  mf_block *best = NULL;
  for (mf_block *t = pool->root; t;) {
    if (t->size >= size) {
      best = t; /* candidate; a smaller fit may lie to the left */
      t = t->left;
    } else {
      t = t->right;
    }
  }
  return best;
}

static bool walk(const mf_block *t, bool (*fn)(const mf_block *, void *), void *ctx) {
  while (t) {
    if (!walk(t->left, fn, ctx) || !fn(t, ctx)) return false;
    t = t->right;
  }
  return true;
}

bool _mf_index_walk(const mf_pool *pool, bool (*fn)(const mf_block *b, void *ctx), void *ctx) {
  return walk(pool->root, fn, ctx);
}

static bool walk_desc(const mf_block *t, bool (*fn)(const mf_block *, void *), void *ctx) {
  while (t) {
    if (!walk_desc(t->right, fn, ctx) || !fn(t, ctx)) return false;
    t = t->left;
  }
  return true;
}

bool _mf_index_walk_desc(const mf_pool *pool, bool (*fn)(const mf_block *b, void *ctx), void *ctx) {
  return walk_desc(pool->root, fn, ctx);
}
