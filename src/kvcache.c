/* kvcache.c -- owned users' model states in memory, an LRU under a byte
 * budget (lru.c); see kvcache.h. */
#include "kvcache.h"

#include <stdlib.h>

#include "lru.h"

struct kvcache {
    lru *l;
};

typedef struct {
    lru_node node;            /* first: the LRU hands back this address */
    model_kv *kv;             /* owned; NULL once moved out */
} kvcache_entry;

static void kvcache_destroy(lru_node *n) {
    kvcache_entry *e = (kvcache_entry *)n;
    model_kv_free(e->kv);
    free(e);
}

size_t kvcache_entry_bytes(const model_kv *kv, const char *user_id) {
    return kv->bytes + sizeof(kvcache_entry) + lru_overhead(user_id);
}

kvcache *kvcache_new(size_t budget_bytes) {
    kvcache *c = malloc(sizeof *c);
    if (c && !(c->l = lru_new(budget_bytes, kvcache_destroy))) {
        free(c);
        c = NULL;
    }
    return c;
}

void kvcache_free(kvcache *c) {
    if (!c) return;
    lru_free(c->l);
    free(c);
}

model_kv *kvcache_get(kvcache *c, const char *user_id) {
    kvcache_entry *e = (kvcache_entry *)lru_find(c->l, user_id, 1);
    return e ? e->kv : NULL;
}

model_kv *kvcache_take(kvcache *c, const char *user_id) {
    kvcache_entry *e = (kvcache_entry *)lru_remove(c->l, user_id);
    if (!e) return NULL;
    model_kv *kv = e->kv;
    free(e->node.key);
    free(e);
    return kv;
}

int kvcache_put(kvcache *c, const char *user_id, model_kv *kv, int32_t partition) {
    kvcache_entry *old = (kvcache_entry *)lru_find(c->l, user_id, 0);
    if (old && old->kv == kv) old->kv = NULL; /* putting back what get() lent */
    kvcache_entry *e = malloc(sizeof *e);
    if (!e) {
        model_kv_free(kv);
        return -1;
    }
    e->kv = kv;
    e->node.bytes = kvcache_entry_bytes(kv, user_id);
    e->node.tag[0] = partition;
    e->node.tag[1] = -1;
    return lru_insert(c->l, user_id, &e->node);
}

size_t kvcache_drop_partition(kvcache *c, int32_t partition) {
    return lru_drop_tag(c->l, 0, partition);
}

void kvcache_clear(kvcache *c) { lru_clear(c->l); }
size_t kvcache_bytes(const kvcache *c) { return lru_bytes(c->l); }
size_t kvcache_count(const kvcache *c) { return lru_count(c->l); }
uint64_t kvcache_evictions(const kvcache *c) { return lru_evictions(c->l); }
