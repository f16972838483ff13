/* lru.c -- string-keyed LRU under a byte budget; see lru.h. */
#include "lru.h"

#include <stdlib.h>
#include <string.h>

#include "dict.h"

struct lru {
    dict *by_key;
    lru_node *head, *tail;
    size_t budget, bytes;
    uint64_t evictions;
    void (*destroy)(lru_node *n);
};

/* dict.c keeps its load under 3/4 and doubles, so an entry holds at most
 * 8/3 slots of 24 bytes; 64 covers it. */
#define LRU_TABLE_SHARE 64

size_t lru_overhead(const char *key) { return strlen(key) + 1 + LRU_TABLE_SHARE; }

lru *lru_new(size_t budget_bytes, void (*destroy)(lru_node *n)) {
    lru *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->budget = budget_bytes;
    l->destroy = destroy;
    if (!(l->by_key = dict_new())) {
        free(l);
        return NULL;
    }
    return l;
}

static void lru_unlink(lru *l, lru_node *n) {
    if (n->prev) n->prev->next = n->next; else l->head = n->next;
    if (n->next) n->next->prev = n->prev; else l->tail = n->prev;
    n->prev = n->next = NULL;
}

static void lru_link_front(lru *l, lru_node *n) {
    n->prev = NULL;
    n->next = l->head;
    if (l->head) l->head->prev = n;
    l->head = n;
    if (!l->tail) l->tail = n;
}

/* Takes n out of every structure; the caller owns n and n->key after. */
static void lru_detach(lru *l, lru_node *n) {
    dict_remove(l->by_key, n->key);
    lru_unlink(l, n);
    l->bytes -= n->bytes;
}

static void lru_destroy(lru *l, lru_node *n) {
    lru_detach(l, n);
    free(n->key);
    n->key = NULL;
    l->destroy(n);
}

void lru_clear(lru *l) {
    while (l->head) lru_destroy(l, l->head);
}

void lru_free(lru *l) {
    if (!l) return;
    lru_clear(l);
    dict_free(l->by_key);
    free(l);
}

lru_node *lru_find(lru *l, const char *key, int touch) {
    lru_node *n = dict_get(l->by_key, key);
    if (n && touch) {
        lru_unlink(l, n);
        lru_link_front(l, n);
    }
    return n;
}

lru_node *lru_remove(lru *l, const char *key) {
    lru_node *n = dict_get(l->by_key, key);
    if (n) lru_detach(l, n);
    return n;
}

int lru_insert(lru *l, const char *key, lru_node *n) {
    lru_node *old = dict_get(l->by_key, key);
    if (old) lru_destroy(l, old);
    n->key = NULL;
    if (n->bytes > l->budget) {
        l->destroy(n);
        return 0;
    }
    if (!(n->key = strdup(key)) || dict_set(l->by_key, n->key, n) < 0) {
        free(n->key);
        n->key = NULL;
        l->destroy(n);
        return -1;
    }
    lru_link_front(l, n);
    l->bytes += n->bytes;
    while (l->bytes > l->budget && l->tail) {
        lru_destroy(l, l->tail);
        l->evictions++;
    }
    return 0;
}

size_t lru_drop_tag(lru *l, int which, int32_t tag) {
    size_t dropped = 0;
    for (lru_node *n = l->head, *next; n; n = next) {
        next = n->next;
        if (n->tag[which] == tag) {
            lru_destroy(l, n);
            dropped++;
        }
    }
    return dropped;
}

size_t lru_bytes(const lru *l) { return l->bytes; }
size_t lru_count(const lru *l) { return dict_size(l->by_key); }
uint64_t lru_evictions(const lru *l) { return l->evictions; }
