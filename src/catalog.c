/* catalog.c -- the in-memory catalog and its indexes; see catalog.h.
 *
 * Three maps from a 64-bit hash to a pointer share one table type: item_hash
 * -> entry, category hash -> posting list, attribute hash -> posting list.
 * Keys are XXH3 output already, so their low bits index the table directly;
 * linear probing with backward-shift deletion keeps removals free of
 * tombstones, so a catalog that churns for months does not slow down.
 *
 * A posting list must yield its entries in item_hash order and stay cheap to
 * change when it is huge: an attribute like "free_shipping" may cover half the
 * catalog, and one sorted array would move megabytes per insert while the
 * catalog topic is loaded at start-up. So a list is cut into 2^bits buckets by
 * the top bits of item_hash, each a small sorted array, and reading the
 * buckets in turn reads the list in order. Item hashes are uniform, so the
 * buckets stay near LIST_BUCKET_TARGET entries; when a list outgrows them it
 * doubles them, which cuts every sorted bucket at a single point.
 *
 * Hash 0 means "none" (an item without a category): it is never indexed. */
#include "catalog.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

typedef struct {
    uint64_t key;
    void *val;                /* NULL: empty slot */
} slot;

typedef struct {
    slot *s;                  /* [cap], cap a power of two (or 0) */
    size_t cap, n;
} table;

enum { LIST_BUCKET_TARGET = 64, LIST_MAX_BITS = 20 };

typedef struct {
    const catalog_entry **v;  /* [n], ascending item_hash */
    uint32_t n, cap;
} bucket;

typedef struct {
    bucket *b;                /* [1 << bits] */
    unsigned bits;
    size_t n;
} plist;

struct catalog {
    uint64_t generation;      /* bumped by every change */
    table items;              /* item_hash -> catalog_entry */
    table by_category;        /* category_hash -> plist */
    table by_attr;            /* attribute hash -> plist */
};

/* ---- hash table ---------------------------------------------------------- */

static slot *table_find(const table *t, uint64_t key) {
    if (t->n == 0) return NULL;
    size_t mask = t->cap - 1;
    for (size_t i = key & mask;; i = (i + 1) & mask) {
        if (!t->s[i].val) return NULL;
        if (t->s[i].key == key) return &t->s[i];
    }
}

static void table_place(slot *s, size_t cap, uint64_t key, void *val) {
    size_t mask = cap - 1, i = key & mask;
    while (s[i].val) i = (i + 1) & mask;
    s[i].key = key;
    s[i].val = val;
}

/* Makes room for one more key, so that the table_insert() after it cannot
 * fail. Returns 0, or -1 with the table unchanged. */
static int table_reserve(table *t) {
    if ((t->n + 1) * 4 <= t->cap * 3) return 0;
    size_t cap = t->cap ? t->cap * 2 : 16;
    slot *s = calloc(cap, sizeof *s);
    if (!s) return -1;
    for (size_t i = 0; i < t->cap; i++)
        if (t->s[i].val) table_place(s, cap, t->s[i].key, t->s[i].val);
    free(t->s);
    t->s = s;
    t->cap = cap;
    return 0;
}

/* Inserts a key that is absent, after table_reserve(). */
static void table_insert(table *t, uint64_t key, void *val) {
    table_place(t->s, t->cap, key, val);
    t->n++;
}

/* Empties a slot and pulls later members of its probe run back into the
 * hole, so lookups never need tombstones. */
static void table_delete(table *t, slot *hole) {
    size_t mask = t->cap - 1, i = (size_t)(hole - t->s);
    for (size_t j = (i + 1) & mask; t->s[j].val; j = (j + 1) & mask) {
        size_t home = t->s[j].key & mask;
        /* The entry at j may move to i only if its probe from home passes i. */
        if (((j - home) & mask) >= ((j - i) & mask)) {
            t->s[i] = t->s[j];
            i = j;
        }
    }
    t->s[i].key = 0;
    t->s[i].val = NULL;
    t->n--;
}

/* ---- posting lists ------------------------------------------------------- */

static plist *list_new(void) {
    plist *l = calloc(1, sizeof *l);
    if (l && !(l->b = calloc(1, sizeof *l->b))) {
        free(l);
        return NULL;
    }
    return l;
}

static void list_free(plist *l) {
    if (!l) return;
    for (size_t i = 0; i < (size_t)1 << l->bits; i++) free(l->b[i].v);
    free(l->b);
    free(l);
}

static bucket *list_bucket(const plist *l, uint64_t h) {
    return &l->b[l->bits ? h >> (64 - l->bits) : 0];
}

/* The first position in b whose item_hash is >= h. */
static uint32_t bucket_lower(const bucket *b, uint64_t h) {
    uint32_t lo = 0, hi = b->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (b->v[mid]->item_hash < h) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* Doubles the buckets. Best effort: without memory the list keeps working
 * with fuller buckets, so a failure here is not an error. */
static void list_split(plist *l) {
    size_t nb = (size_t)1 << l->bits;
    bucket *b = calloc(nb * 2, sizeof *b);
    if (!b) return;
    for (size_t i = 0; i < nb; i++) {
        const bucket *old = &l->b[i];
        uint64_t prefix = l->bits ? (uint64_t)i << (64 - l->bits) : 0;
        uint32_t cut = bucket_lower(old, prefix | (uint64_t)1 << (63 - l->bits));
        uint32_t upper = old->n - cut;
        b[2 * i] = (bucket){old->v, cut, old->cap};
        if (upper == 0) continue;
        b[2 * i + 1].v = malloc(upper * sizeof *old->v);
        if (!b[2 * i + 1].v) goto err;
        memcpy(b[2 * i + 1].v, old->v + cut, upper * sizeof *old->v);
        b[2 * i + 1].n = b[2 * i + 1].cap = upper;
    }
    free(l->b);
    l->b = b;
    l->bits++;
    return;

err: /* the old buckets were only read: drop the copies */
    for (size_t i = 0; i < nb; i++) free(b[2 * i + 1].v);
    free(b);
}

/* Adds e in order; an entry already in the list (an item that lists an
 * attribute twice) is left alone. Returns 0, or -1 with l unchanged. */
static int list_add(plist *l, const catalog_entry *e) {
    if (l->n >= (size_t)LIST_BUCKET_TARGET << l->bits && l->bits < LIST_MAX_BITS) list_split(l);
    bucket *b = list_bucket(l, e->item_hash);
    uint32_t at = bucket_lower(b, e->item_hash);
    if (at < b->n && b->v[at] == e) return 0;
    if (b->n == b->cap) {
        uint32_t cap = b->cap ? b->cap * 2 : 4;
        const catalog_entry **v = realloc(b->v, cap * sizeof *v);
        if (!v) return -1;
        b->v = v;
        b->cap = cap;
    }
    memmove(b->v + at + 1, b->v + at, (b->n - at) * sizeof *b->v);
    b->v[at] = e;
    b->n++;
    l->n++;
    return 0;
}

static void list_del(plist *l, const catalog_entry *e) {
    bucket *b = list_bucket(l, e->item_hash);
    uint32_t at = bucket_lower(b, e->item_hash);
    if (at == b->n || b->v[at] != e) return;
    memmove(b->v + at, b->v + at + 1, (b->n - at - 1) * sizeof *b->v);
    b->n--;
    l->n--;
}

static size_t list_copy(const plist *l, const catalog_entry **out, size_t max) {
    if (!l) return 0;
    size_t k = 0;
    for (size_t i = 0; i < (size_t)1 << l->bits && k < max; i++) {
        size_t m = l->b[i].n < max - k ? l->b[i].n : max - k;
        memcpy(out + k, l->b[i].v, m * sizeof *out);
        k += m;
    }
    return l->n;
}

/* ---- indexes ------------------------------------------------------------- */

static int index_add(table *ix, uint64_t key, const catalog_entry *e) {
    if (key == 0) return 0;
    slot *s = table_find(ix, key);
    if (s) return list_add(s->val, e);
    if (table_reserve(ix) < 0) return -1;
    plist *l = list_new();
    if (!l || list_add(l, e) < 0) {
        list_free(l);
        return -1;
    }
    table_insert(ix, key, l);
    return 0;
}

/* Lists that empty are dropped, so categories and attributes that leave the
 * catalog do not hold memory forever. */
static void index_del(table *ix, uint64_t key, const catalog_entry *e) {
    slot *s = key ? table_find(ix, key) : NULL;
    if (!s) return;
    plist *l = s->val;
    list_del(l, e);
    if (l->n == 0) {
        list_free(l);
        table_delete(ix, s);
    }
}

/* Removing an entry that is in only some of its lists is harmless, which is
 * what lets entry_index() undo a half-done indexing with this. */
static void entry_unindex(catalog *c, const catalog_entry *e) {
    index_del(&c->by_category, e->category_hash, e);
    for (size_t i = 0; i < e->item.n_attrs; i++) index_del(&c->by_attr, e->attr_hashes[i], e);
}

static int entry_index(catalog *c, const catalog_entry *e) {
    if (index_add(&c->by_category, e->category_hash, e) < 0) goto err;
    for (size_t i = 0; i < e->item.n_attrs; i++)
        if (index_add(&c->by_attr, e->attr_hashes[i], e) < 0) goto err;
    return 0;

err:
    entry_unindex(c, e);
    return -1;
}

static void entry_free(catalog_entry *e) {
    catalog_item_clear(&e->item);
    free(e->attr_hashes);
    free(e);
}

static uint64_t hash_or_none(const char *id) { return id && *id ? util_hash(id) : 0; }

/* ---- API ----------------------------------------------------------------- */

catalog *catalog_new(void) { return calloc(1, sizeof(catalog)); }

static void table_free_lists(table *t) {
    for (size_t i = 0; i < t->cap; i++) list_free(t->s[i].val);
    free(t->s);
}

void catalog_free(catalog *c) {
    if (!c) return;
    for (size_t i = 0; i < c->items.cap; i++)
        if (c->items.s[i].val) entry_free(c->items.s[i].val);
    free(c->items.s);
    table_free_lists(&c->by_category);
    table_free_lists(&c->by_attr);
    free(c);
}

int catalog_upsert(catalog *c, catalog_item *item) {
    if (!item->item_id) {
        errno = EINVAL;
        return -1;
    }
    catalog_entry *e = calloc(1, sizeof *e);
    if (!e) goto err;
    if (item->n_attrs && !(e->attr_hashes = malloc(item->n_attrs * sizeof *e->attr_hashes)))
        goto err;
    if (table_reserve(&c->items) < 0) goto err;

    e->item = *item;
    e->item_hash = util_hash(item->item_id);
    e->category_hash = hash_or_none(item->category);
    for (size_t i = 0; i < item->n_attrs; i++) e->attr_hashes[i] = hash_or_none(item->attrs[i].id);

    slot *s = table_find(&c->items, e->item_hash);
    if (s) {
        catalog_entry *old = s->val;
        entry_unindex(c, old);
        s->val = e;
        entry_free(old);
    } else {
        table_insert(&c->items, e->item_hash, e);
    }
    if (entry_index(c, e) < 0) {
        table_delete(&c->items, table_find(&c->items, e->item_hash));
        goto err; /* e->item is still the caller's: not cleared below */
    }
    memset(item, 0, sizeof *item);
    c->generation++;
    return 0;

err:
    if (e) free(e->attr_hashes);
    free(e);
    errno = ENOMEM;
    return -1;
}

int catalog_remove(catalog *c, const char *item_id) {
    slot *s = table_find(&c->items, util_hash(item_id));
    if (!s) return 0;
    catalog_entry *e = s->val;
    entry_unindex(c, e);
    table_delete(&c->items, s);
    entry_free(e);
    c->generation++;
    return 1;
}

uint64_t catalog_generation(const catalog *c) { return c->generation; }

void catalog_each(const catalog *c, void (*fn)(const catalog_entry *e, void *ud), void *ud) {
    for (size_t i = 0; i < c->items.cap; i++)
        if (c->items.s[i].val) fn(c->items.s[i].val, ud);
}

const catalog_entry *catalog_get(const catalog *c, uint64_t item_hash) {
    slot *s = table_find(&c->items, item_hash);
    return s ? s->val : NULL;
}

size_t catalog_count(const catalog *c) { return c->items.n; }

static size_t index_copy(const table *ix, uint64_t key, const catalog_entry **out, size_t max) {
    slot *s = key ? table_find(ix, key) : NULL;
    return s ? list_copy(s->val, out, max) : 0;
}

size_t catalog_items_in_category(const catalog *c, uint64_t category_hash,
                                 const catalog_entry **out, size_t max) {
    return index_copy(&c->by_category, category_hash, out, max);
}

size_t catalog_items_with_attribute(const catalog *c, uint64_t attr_hash,
                                    const catalog_entry **out, size_t max) {
    return index_copy(&c->by_attr, attr_hash, out, max);
}
