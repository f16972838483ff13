/* lru.h -- a least-recently-used set of entries keyed by string, bounded by
 * a byte budget: the mechanism under the state cache (cache.h) and the model
 * state cache (kvcache.h).
 *
 * Intrusive: a cache embeds an lru_node at the start of its own entry struct
 * and hands the LRU a destroy callback that frees the entry (and what it
 * owns). The LRU owns the node's key. Each entry carries two tags (the
 * partitions its user was seen on, or -1) so that a revoked partition's
 * entries can be dropped. Not thread-safe. */
#ifndef COPYSTREAM_LRU_H
#define COPYSTREAM_LRU_H

#include <stddef.h>
#include <stdint.h>

typedef struct lru_node {
    char *key;                /* owned by the LRU; also its dict key */
    size_t bytes;             /* charged against the budget */
    int32_t tag[2];
    struct lru_node *prev, *next; /* head = most recent */
} lru_node;

typedef struct lru lru;

/* destroy frees an entry (node included) that the LRU drops. budget_bytes 0
 * makes an LRU that holds nothing. */
lru *lru_new(size_t budget_bytes, void (*destroy)(lru_node *n));
void lru_free(lru *l);

/* The entry of key, or NULL; touch moves it to the most recent end. */
lru_node *lru_find(lru *l, const char *key, int touch);

/* Unlinks the entry of key and returns it (the caller now owns the node and
 * must free it and its key), or NULL when absent. */
lru_node *lru_remove(lru *l, const char *key);

/* Inserts n (n->bytes and n->tag set by the caller) under a copy of key as
 * the most recent entry, dropping any entry key had, then evicts the least
 * recent entries until within budget. An entry larger than the budget is
 * destroyed at once. Returns 0, or -1 when memory runs out (n is destroyed). */
int lru_insert(lru *l, const char *key, lru_node *n);

/* Destroys every entry whose tag[which] is tag; returns how many. */
size_t lru_drop_tag(lru *l, int which, int32_t tag);
void lru_clear(lru *l);

size_t lru_bytes(const lru *l);
size_t lru_count(const lru *l);
uint64_t lru_evictions(const lru *l);

/* What the LRU charges for an entry's bookkeeping beyond its payload. */
size_t lru_overhead(const char *key);

#endif
