/* kvcache.h -- the model's per-user KV states this instance owns, kept in
 * memory.
 *
 * A user's KV state (model.h) lets the next event cost one position instead
 * of a pass over the user's history. Users arrive keyed by partition, so the
 * instance owning a partition is the only one advancing its users' states;
 * keeping them between batches is what makes inference incremental. The
 * cache is an LRU bounded by a byte budget that it never exceeds. An entry is
 * a shortcut, never the truth: a miss (evicted, never seen, another instance
 * had the partition) is the caller's to repair by one prefill from the user's
 * sequence, which gives the same state (model_window_positions()). Entries
 * are tagged with the clickstream partition their user was last seen on, so
 * that a revoked partition's users can be dropped.
 *
 * Ownership: kvcache_take() moves a state out to the caller; kvcache_put()
 * moves one in. A state from kvcache_get() stays the cache's and is valid
 * until the next put, drop, clear or free. Not thread-safe. */
#ifndef COPYSTREAM_KVCACHE_H
#define COPYSTREAM_KVCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef struct kvcache kvcache;

/* budget_bytes 0 makes a cache that holds nothing (every put is dropped). */
kvcache *kvcache_new(size_t budget_bytes);
void kvcache_free(kvcache *c);

/* The state of user_id, marked most recently used, or NULL. */
model_kv *kvcache_get(kvcache *c, const char *user_id);

/* Moves the state of user_id out and removes the entry; NULL when absent. */
model_kv *kvcache_take(kvcache *c, const char *user_id);

/* Moves kv in as the most recently used entry for user_id (replacing and
 * freeing any entry it had), tagged with partition, then evicts least
 * recently used entries until the cache is within budget. An entry larger
 * than the whole budget is not kept. Either way the cache owns kv afterwards
 * (and may have freed it). Returns 0, or -1 when memory runs out (kv is then
 * freed: it is only a cache). */
int kvcache_put(kvcache *c, const char *user_id, model_kv *kv, int32_t partition);

/* Drops every entry tagged with partition; returns how many. */
size_t kvcache_drop_partition(kvcache *c, int32_t partition);
/* Drops everything, e.g. when a new model replaces the one the states were computed with. */
void kvcache_clear(kvcache *c);

/* What an entry costs against the budget: the state's allocations as they
 * are (kv->bytes, which grows with the positions it holds), the entry, its
 * key and its share of the hash table. The cache charges it when the state is
 * put; a state advanced in place after kvcache_get() is charged its new size
 * when it is put back. */
size_t kvcache_entry_bytes(const model_kv *kv, const char *user_id);
size_t kvcache_bytes(const kvcache *c);
size_t kvcache_count(const kvcache *c);
uint64_t kvcache_evictions(const kvcache *c);

#endif
