/* kvcache.c -- LRU of owned users' KV states under a byte budget; see kvcache.h. */
#include "kvcache.h"

#include <stdlib.h>
#include <string.h>

#include "dict.h"

typedef struct kvcache_entry {
    char *user_id;            /* owned; also the dict key */
    model_kv *kv;             /* owned */
    size_t bytes;
    int32_t partition;
    struct kvcache_entry *prev, *next; /* LRU list, head = most recent */
} kvcache_entry;

struct kvcache {
    dict *by_user;
    kvcache_entry *head, *tail;
    size_t budget, bytes;
    uint64_t evictions;
};

/* dict.c keeps its load under 3/4 and doubles, so an entry holds at most
 * 8/3 slots of 24 bytes; 64 covers it. */
#define KVCACHE_TABLE_SHARE 64

size_t kvcache_entry_bytes(const model_kv *kv, const char *user_id) {
    return kv->bytes + sizeof(kvcache_entry) + strlen(user_id) + 1 + KVCACHE_TABLE_SHARE;
}

kvcache *kvcache_new(size_t budget_bytes) {
    kvcache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->budget = budget_bytes;
    if (!(c->by_user = dict_new())) {
        free(c);
        return NULL;
    }
    return c;
}

static void kvcache_unlink(kvcache *c, kvcache_entry *e) {
    if (e->prev) e->prev->next = e->next; else c->head = e->next;
    if (e->next) e->next->prev = e->prev; else c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void kvcache_link_front(kvcache *c, kvcache_entry *e) {
    e->prev = NULL;
    e->next = c->head;
    if (c->head) c->head->prev = e;
    c->head = e;
    if (!c->tail) c->tail = e;
}

/* Removes e from every structure and frees it, and its state unless taken. */
static void kvcache_destroy_entry(kvcache *c, kvcache_entry *e) {
    dict_remove(c->by_user, e->user_id);
    kvcache_unlink(c, e);
    c->bytes -= e->bytes;
    model_kv_free(e->kv);
    free(e->user_id);
    free(e);
}

void kvcache_clear(kvcache *c) {
    while (c->head) kvcache_destroy_entry(c, c->head);
}

void kvcache_free(kvcache *c) {
    if (!c) return;
    kvcache_clear(c);
    dict_free(c->by_user);
    free(c);
}

model_kv *kvcache_get(kvcache *c, const char *user_id) {
    kvcache_entry *e = dict_get(c->by_user, user_id);
    if (!e) return NULL;
    kvcache_unlink(c, e);
    kvcache_link_front(c, e);
    return e->kv;
}

model_kv *kvcache_take(kvcache *c, const char *user_id) {
    kvcache_entry *e = dict_get(c->by_user, user_id);
    if (!e) return NULL;
    model_kv *kv = e->kv;
    e->kv = NULL; /* moved out: destroy must not free it */
    kvcache_destroy_entry(c, e);
    return kv;
}

int kvcache_put(kvcache *c, const char *user_id, model_kv *kv, int32_t partition) {
    kvcache_entry *old = dict_get(c->by_user, user_id);
    if (old) {
        if (old->kv == kv) old->kv = NULL; /* putting back what get() lent */
        kvcache_destroy_entry(c, old);
    }
    size_t bytes = kvcache_entry_bytes(kv, user_id);
    if (bytes > c->budget) {
        model_kv_free(kv);
        return 0;
    }
    kvcache_entry *e = calloc(1, sizeof *e);
    if (!e || !(e->user_id = strdup(user_id)) || dict_set(c->by_user, e->user_id, e) < 0) {
        if (e) free(e->user_id);
        free(e);
        model_kv_free(kv);
        return -1;
    }
    e->kv = kv;
    e->bytes = bytes;
    e->partition = partition;
    kvcache_link_front(c, e);
    c->bytes += bytes;
    while (c->bytes > c->budget && c->tail) {
        kvcache_destroy_entry(c, c->tail);
        c->evictions++;
    }
    return 0;
}

size_t kvcache_drop_partition(kvcache *c, int32_t partition) {
    size_t dropped = 0;
    kvcache_entry *e = c->head;
    while (e) {
        kvcache_entry *next = e->next;
        if (e->partition == partition) {
            kvcache_destroy_entry(c, e);
            dropped++;
        }
        e = next;
    }
    return dropped;
}

size_t kvcache_bytes(const kvcache *c) { return c->bytes; }
size_t kvcache_count(const kvcache *c) { return dict_size(c->by_user); }
uint64_t kvcache_evictions(const kvcache *c) { return c->evictions; }
