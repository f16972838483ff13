/* catalog.h -- the whole product catalog, in memory, with its indexes.
 *
 * Every service instance reads the compacted catalog topic from the beginning
 * and keeps all items here, like a global table: lookups by item, and the
 * candidate lists the strategies draw from (items of a category, items with
 * an attribute). Updates arrive one item at a time, so every index is kept
 * up to date incrementally; nothing is ever rebuilt in O(catalog).
 *
 * Ids are util_hash() values, the same form user state keeps them in.
 * Candidate lists come back in ascending item_hash order, a fixed order that
 * does not depend on the order items arrived in, so a replay over the same
 * catalog reaches the same decisions.
 *
 * A catalog is not synchronised: the caller keeps readers away while an
 * update runs. Entry pointers stay valid until that item is replaced or
 * removed, or the catalog is freed. */
#ifndef COPYSTREAM_CATALOG_H
#define COPYSTREAM_CATALOG_H

#include <stddef.h>
#include <stdint.h>

#include "records.h"

typedef struct catalog catalog;

/* One stored item with the hashes its users look it up by. */
typedef struct {
    catalog_item item;
    uint64_t item_hash;       /* util_hash(item.item_id) */
    uint64_t category_hash;   /* util_hash(item.category); 0 when it has none */
    uint64_t *attr_hashes;    /* [item.n_attrs] util_hash(item.attrs[i].id) */
} catalog_entry;

catalog *catalog_new(void);
void catalog_free(catalog *c);

/* Stores item, replacing any item with the same id, and indexes it. The
 * catalog takes over what item owns: afterwards *item is zeroed and the
 * caller has nothing to free. Returns 0, or -1 with errno EINVAL (no item_id)
 * or ENOMEM; *item is then untouched and still the caller's, and the catalog
 * is consistent but may have dropped the previous version of that item. */
int catalog_upsert(catalog *c, catalog_item *item);

/* Removes the item with this id (a tombstone on the catalog topic).
 * Returns 1 when it was present, 0 when not. */
int catalog_remove(catalog *c, const char *item_id);

/* The entry for util_hash(item_id), or NULL. */
const catalog_entry *catalog_get(const catalog *c, uint64_t item_hash);

size_t catalog_count(const catalog *c);

/* A number that changes whenever the catalog does (upsert or remove), so
 * that what is derived from it can tell when to recompute. */
uint64_t catalog_generation(const catalog *c);

/* Calls fn for every item, in no particular order. The catalog must not
 * change during the call. */
void catalog_each(const catalog *c, void (*fn)(const catalog_entry *e, void *ud), void *ud);

/* Candidate lists. Each writes the first min(total, max) entries of the list
 * to out[], in ascending item_hash order, and returns the list's total
 * length (so max = 0 counts). The entries belong to the catalog. */
size_t catalog_items_in_category(const catalog *c, uint64_t category_hash,
                                 const catalog_entry **out, size_t max);
size_t catalog_items_with_attribute(const catalog *c, uint64_t attr_hash,
                                    const catalog_entry **out, size_t max);

#endif
