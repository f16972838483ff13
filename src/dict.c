/* dict.c -- string-keyed hash table; see dict.h. */
#include "dict.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

typedef struct {
    const char *key;          /* NULL: empty slot */
    uint64_t hash;
    void *val;
} dict_slot;

struct dict {
    dict_slot *slots;         /* [cap], cap a power of two */
    size_t cap;
    size_t size;
};

dict *dict_new(void) { return calloc(1, sizeof(dict)); }

void dict_free(dict *d) {
    if (!d) return;
    free(d->slots);
    free(d);
}

static size_t dict_find(const dict *d, const char *key, uint64_t h) {
    size_t mask = d->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        const dict_slot *s = &d->slots[i];
        if (!s->key || (s->hash == h && strcmp(s->key, key) == 0)) return i;
    }
}

static int dict_grow(dict *d) {
    size_t cap = d->cap ? d->cap * 2 : 16;
    dict_slot *old = d->slots;
    size_t old_cap = d->cap;
    dict_slot *slots = calloc(cap, sizeof *slots);
    if (!slots) return -1;
    d->slots = slots;
    d->cap = cap;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].key) d->slots[dict_find(d, old[i].key, old[i].hash)] = old[i];
    free(old);
    return 0;
}

void *dict_get(const dict *d, const char *key) {
    if (!d->size) return NULL;
    const dict_slot *s = &d->slots[dict_find(d, key, util_hash(key))];
    return s->key ? s->val : NULL;
}

int dict_set(dict *d, const char *key, void *val) {
    /* Keep the load factor under 3/4 so probe sequences stay short. */
    if ((d->size + 1) * 4 > d->cap * 3 && dict_grow(d) < 0) return -1;
    uint64_t h = util_hash(key);
    dict_slot *s = &d->slots[dict_find(d, key, h)];
    if (!s->key) d->size++;
    s->key = key;
    s->hash = h;
    s->val = val;
    return 0;
}

void *dict_remove(dict *d, const char *key) {
    if (!d->size) return NULL;
    size_t mask = d->cap - 1;
    size_t i = dict_find(d, key, util_hash(key));
    if (!d->slots[i].key) return NULL;
    void *val = d->slots[i].val;
    /* Backward-shift: move later members of the probe run into the hole
     * when their home slot is not between the hole and their position. */
    for (size_t j = (i + 1) & mask; d->slots[j].key; j = (j + 1) & mask) {
        size_t home = d->slots[j].hash & mask;
        if (((j - home) & mask) >= ((j - i) & mask)) {
            d->slots[i] = d->slots[j];
            i = j;
        }
    }
    d->slots[i].key = NULL;
    d->size--;
    return val;
}

void dict_clear(dict *d) {
    if (d->slots) memset(d->slots, 0, d->cap * sizeof *d->slots);
    d->size = 0;
}

size_t dict_size(const dict *d) { return d->size; }

int dict_next(const dict *d, size_t *pos, const char **key, void **val) {
    for (; *pos < d->cap; (*pos)++) {
        const dict_slot *s = &d->slots[*pos];
        if (!s->key) continue;
        *key = s->key;
        *val = s->val;
        (*pos)++;
        return 1;
    }
    return 0;
}
