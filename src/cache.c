/* cache.c -- LRU of owned users' states under a byte budget; see cache.h. */
#include "cache.h"

#include <stdlib.h>
#include <string.h>

#include "dict.h"

typedef struct cache_entry {
    char *user_id;            /* owned; also the dict key */
    user_state st;
    size_t bytes;
    int32_t part[2];          /* by US_TOPIC_*; -1 when not seen there */
    struct cache_entry *prev, *next; /* LRU list, head = most recent */
} cache_entry;

struct cache {
    dict *by_user;
    cache_entry *head, *tail;
    size_t budget, bytes;
    uint64_t evictions;
};

cache *cache_new(size_t budget_bytes) {
    cache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->budget = budget_bytes;
    if (!(c->by_user = dict_new())) {
        free(c);
        return NULL;
    }
    return c;
}

static void cache_unlink(cache *c, cache_entry *e) {
    if (e->prev) e->prev->next = e->next; else c->head = e->next;
    if (e->next) e->next->prev = e->prev; else c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void cache_link_front(cache *c, cache_entry *e) {
    e->prev = NULL;
    e->next = c->head;
    if (c->head) c->head->prev = e;
    c->head = e;
    if (!c->tail) c->tail = e;
}

/* Removes e from every structure and frees it (and its state). */
static void cache_destroy_entry(cache *c, cache_entry *e) {
    dict_remove(c->by_user, e->user_id);
    cache_unlink(c, e);
    c->bytes -= e->bytes;
    userstate_clear(&e->st);
    free(e->user_id);
    free(e);
}

void cache_clear(cache *c) {
    while (c->head) cache_destroy_entry(c, c->head);
}

void cache_free(cache *c) {
    if (!c) return;
    cache_clear(c);
    dict_free(c->by_user);
    free(c);
}

int cache_take(cache *c, const char *user_id, user_state *out) {
    cache_entry *e = dict_get(c->by_user, user_id);
    if (!e) return 0;
    *out = e->st;
    userstate_init(&e->st); /* moved out: destroy must not free it */
    cache_destroy_entry(c, e);
    return 1;
}

user_state *cache_peek(cache *c, const char *user_id) {
    cache_entry *e = dict_get(c->by_user, user_id);
    return e ? &e->st : NULL;
}

int cache_put(cache *c, const char *user_id, user_state *st, int32_t click_partition,
              int32_t reaction_partition) {
    cache_entry *old = dict_get(c->by_user, user_id);
    if (old) cache_destroy_entry(c, old);
    size_t bytes = userstate_bytes(st) + strlen(user_id) + sizeof(cache_entry) + 32;
    if (bytes > c->budget) {
        userstate_clear(st);
        return 0;
    }
    cache_entry *e = calloc(1, sizeof *e);
    if (!e || !(e->user_id = strdup(user_id)) || dict_set(c->by_user, e->user_id, e) < 0) {
        if (e) free(e->user_id);
        free(e);
        userstate_clear(st);
        return -1;
    }
    e->st = *st;
    userstate_init(st);
    e->bytes = bytes;
    e->part[US_TOPIC_CLICKSTREAM] = click_partition;
    e->part[US_TOPIC_REACTIONS] = reaction_partition;
    cache_link_front(c, e);
    c->bytes += bytes;
    while (c->bytes > c->budget && c->tail) {
        cache_destroy_entry(c, c->tail);
        c->evictions++;
    }
    return 0;
}

size_t cache_drop_partition(cache *c, uint8_t topic, int32_t partition) {
    size_t dropped = 0;
    cache_entry *e = c->head;
    while (e) {
        cache_entry *next = e->next;
        if (e->part[topic] == partition) {
            cache_destroy_entry(c, e);
            dropped++;
        }
        e = next;
    }
    return dropped;
}

size_t cache_bytes(const cache *c) { return c->bytes; }
size_t cache_count(const cache *c) { return dict_size(c->by_user); }
uint64_t cache_evictions(const cache *c) { return c->evictions; }
