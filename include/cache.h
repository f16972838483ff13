/* cache.h -- the users' states this instance owns, kept in memory.
 *
 * Users arrive keyed by partition, so the instance that owns a partition is
 * the only one processing its users; keeping their state between batches
 * saves the Redis read, leaving one round trip (the write) per batch. The
 * cache is an LRU bounded by a byte budget. Its entries are a shortcut, never
 * the truth: every write is still a compare-and-set on the version in Redis
 * (store.h), so a stale entry costs a re-read, not a wrong result. Entries are
 * tagged with the partitions their user was seen on, so that a revoked
 * partition's users can be dropped.
 *
 * Ownership: cache_take() moves a state out to the caller; cache_put() moves
 * one in (the caller's struct is re-initialised). Not thread-safe. */
#ifndef COPYSTREAM_CACHE_H
#define COPYSTREAM_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "userstate.h"

typedef struct cache cache;

/* budget_bytes 0 makes a cache that holds nothing (every put is dropped). */
cache *cache_new(size_t budget_bytes);
void cache_free(cache *c);

/* Moves the state of user_id into *out and removes the entry; returns 1, or
 * 0 when absent (*out untouched). */
int cache_take(cache *c, const char *user_id, user_state *out);

/* Moves *st in as the most recently used entry for user_id, tagged with the
 * (topic, partition) pairs given (partition -1: none for that topic), then
 * evicts least recently used entries over budget. Returns 0, or -1 when
 * memory runs out (the state is then cleared, which is safe: it is only a
 * cache). */
int cache_put(cache *c, const char *user_id, user_state *st, int32_t click_partition,
              int32_t reaction_partition);

/* The cached state of user_id without taking it, or NULL. */
user_state *cache_peek(cache *c, const char *user_id);

/* Drops every entry seen on partition of topic (US_TOPIC_*). Returns how
 * many were dropped. */
size_t cache_drop_partition(cache *c, uint8_t topic, int32_t partition);
void cache_clear(cache *c);

size_t cache_bytes(const cache *c);
size_t cache_count(const cache *c);
uint64_t cache_evictions(const cache *c);

#endif
