/* idmap.h — a hash table from trace id tokens to dense slots.
 * Ids in a trace are arbitrary text (counters, pointers from an event log);
 * the replayer resolves each to a small integer once, while parsing, so that
 * the timed loops index a plain array instead of hashing. */
#ifndef MEMFIT_REPLAY_IDMAP_H
#define MEMFIT_REPLAY_IDMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The slot of an id that is not live (freed, or just inserted). */
#define IDMAP_NOT_LIVE UINT32_MAX

typedef struct idmap_entry {
  uint64_t hash;    /* 0 marks an empty bucket (real hashes are forced nonzero) */
  uint64_t key_off; /* offset of the id text in idmap.keys */
  uint32_t key_len;
  uint32_t slot; /* the live allocation's slot, or IDMAP_NOT_LIVE */
  uint32_t line; /* line of the last alloc (if live) or free (if not) */
} idmap_entry;

typedef struct idmap {
  idmap_entry *buckets;
  size_t capacity; /* a power of two */
  size_t count;
  char *keys; /* every id's text, back to back; ids are never removed so that
                 a double free can be told from a free of an unknown id */
  size_t keys_len, keys_cap;
} idmap;

void idmap_init(idmap *m);
void idmap_destroy(idmap *m);
/* The entry for key, inserted (slot IDMAP_NOT_LIVE, line 0) if absent, and
 * *inserted says which. The pointer is valid until the next call. NULL when
 * host memory runs out. */
idmap_entry *idmap_upsert(idmap *m, const char *key, size_t len, bool *inserted);

#endif /* MEMFIT_REPLAY_IDMAP_H */
