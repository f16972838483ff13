/* cache.c -- owned users' states in memory, an LRU under a byte budget
 * (lru.c); see cache.h. */
#include "cache.h"

#include <stdlib.h>

#include "lru.h"

struct cache {
    lru *l;
};

typedef struct {
    lru_node node;            /* first: the LRU hands back this address */
    user_state st;
} cache_entry;

static void cache_destroy(lru_node *n) {
    cache_entry *e = (cache_entry *)n;
    userstate_clear(&e->st);
    free(e);
}

cache *cache_new(size_t budget_bytes) {
    cache *c = malloc(sizeof *c);
    if (c && !(c->l = lru_new(budget_bytes, cache_destroy))) {
        free(c);
        c = NULL;
    }
    return c;
}

void cache_free(cache *c) {
    if (!c) return;
    lru_free(c->l);
    free(c);
}

int cache_take(cache *c, const char *user_id, user_state *out) {
    cache_entry *e = (cache_entry *)lru_remove(c->l, user_id);
    if (!e) return 0;
    *out = e->st;
    free(e->node.key);
    free(e);
    return 1;
}

user_state *cache_peek(cache *c, const char *user_id) {
    cache_entry *e = (cache_entry *)lru_find(c->l, user_id, 0);
    return e ? &e->st : NULL;
}

int cache_put(cache *c, const char *user_id, user_state *st, int32_t click_partition,
              int32_t reaction_partition) {
    cache_entry *e = malloc(sizeof *e);
    if (!e) {
        userstate_clear(st);
        return -1;
    }
    e->st = *st;
    userstate_init(st);
    e->node.bytes = userstate_bytes(&e->st) + sizeof *e + lru_overhead(user_id);
    e->node.tag[US_TOPIC_CLICKSTREAM] = click_partition;
    e->node.tag[US_TOPIC_REACTIONS] = reaction_partition;
    return lru_insert(c->l, user_id, &e->node);
}

size_t cache_drop_partition(cache *c, uint8_t topic, int32_t partition) {
    return lru_drop_tag(c->l, topic, partition);
}

void cache_clear(cache *c) { lru_clear(c->l); }
size_t cache_bytes(const cache *c) { return lru_bytes(c->l); }
size_t cache_count(const cache *c) { return lru_count(c->l); }
uint64_t cache_evictions(const cache *c) { return lru_evictions(c->l); }
