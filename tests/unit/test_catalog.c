/* test_catalog.c -- the catalog's item table and its category/attribute
 * indexes, checked against ids hashed here and against a naive reference. */
#include "testutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalog.h"
#include "util.h"

/* A heap-owned item, as codec.c would hand it over. attrs is a
 * NULL-terminated list of attribute ids. */
static catalog_item make_item(const char *id, const char *category, const char *const *attrs) {
    catalog_item it = {0};
    it.item_id = strdup(id);
    it.category = category ? strdup(category) : NULL;
    it.available = 1;
    while (attrs && attrs[it.n_attrs]) it.n_attrs++;
    it.attrs = it.n_attrs ? calloc(it.n_attrs, sizeof *it.attrs) : NULL;
    for (size_t i = 0; i < it.n_attrs; i++) it.attrs[i].id = strdup(attrs[i]);
    return it;
}

static void upsert(catalog *c, const char *id, const char *category, const char *const *attrs) {
    catalog_item it = make_item(id, category, attrs);
    assert_int_equal(catalog_upsert(c, &it), 0);
    assert_null(it.item_id); /* moved */
}

/* The item ids of a candidate list, checked to be in ascending hash order. */
static size_t list_ids(const catalog *c, int by_attr, const char *key, const char **ids,
                       size_t max) {
    const catalog_entry *v[512];
    size_t n = by_attr ? catalog_items_with_attribute(c, util_hash(key), v, 512)
                       : catalog_items_in_category(c, util_hash(key), v, 512);
    assert_true(n <= 512 && n <= max);
    for (size_t i = 0; i < n; i++) {
        if (i) assert_true(v[i - 1]->item_hash < v[i]->item_hash);
        ids[i] = v[i]->item.item_id;
    }
    return n;
}

static void test_moved_item_is_found_only_under_its_new_category(void **state) {
    (void)state;
    catalog *c = catalog_new();
    upsert(c, "p1", "phones", (const char *const[]){"hd_screen", NULL});
    upsert(c, "p2", "phones", NULL);
    upsert(c, "p1", "tablets", (const char *const[]){"stylus", NULL});

    const char *ids[8];
    assert_int_equal(catalog_count(c), 2);
    assert_int_equal(list_ids(c, 0, "phones", ids, 8), 1);
    assert_string_equal(ids[0], "p2");
    assert_int_equal(list_ids(c, 0, "tablets", ids, 8), 1);
    assert_string_equal(ids[0], "p1");
    assert_int_equal(list_ids(c, 1, "hd_screen", ids, 8), 0);
    assert_int_equal(list_ids(c, 1, "stylus", ids, 8), 1);
    assert_string_equal(catalog_get(c, util_hash("p1"))->item.category, "tablets");
    catalog_free(c);
}

static void test_removed_item_leaves_every_index(void **state) {
    (void)state;
    catalog *c = catalog_new();
    upsert(c, "p1", "phones", (const char *const[]){"hd_screen", "dual_sim", NULL});
    assert_int_equal(catalog_remove(c, "p1"), 1);
    assert_int_equal(catalog_remove(c, "p1"), 0);
    assert_int_equal(catalog_remove(c, "never"), 0);

    const char *ids[8];
    assert_null(catalog_get(c, util_hash("p1")));
    assert_int_equal(catalog_count(c), 0);
    assert_int_equal(list_ids(c, 0, "phones", ids, 8), 0);
    assert_int_equal(list_ids(c, 1, "hd_screen", ids, 8), 0);
    assert_int_equal(list_ids(c, 1, "dual_sim", ids, 8), 0);
    catalog_free(c);
}

static void test_entry_hashes_are_util_hash_of_the_ids(void **state) {
    (void)state;
    catalog *c = catalog_new();
    upsert(c, "p1", "phones", (const char *const[]){"hd_screen", "dual_sim", NULL});
    upsert(c, "loose", NULL, NULL);

    const catalog_entry *e = catalog_get(c, util_hash("p1"));
    assert_non_null(e);
    assert_true(e->item_hash == util_hash("p1"));
    assert_true(e->category_hash == util_hash("phones"));
    assert_int_equal(e->item.n_attrs, 2);
    assert_true(e->attr_hashes[0] == util_hash("hd_screen"));
    assert_true(e->attr_hashes[1] == util_hash("dual_sim"));

    e = catalog_get(c, util_hash("loose"));
    assert_non_null(e);
    assert_true(e->category_hash == 0);
    assert_int_equal(catalog_items_in_category(c, 0, NULL, 0), 0);
    catalog_free(c);
}

static void test_upsert_without_id_fails_and_leaves_item_with_caller(void **state) {
    (void)state;
    catalog *c = catalog_new();
    catalog_item it = make_item("x", "phones", NULL);
    free(it.item_id);
    it.item_id = NULL;
    errno = 0;
    assert_int_equal(catalog_upsert(c, &it), -1);
    assert_int_equal(errno, EINVAL);
    assert_string_equal(it.category, "phones");
    assert_int_equal(catalog_count(c), 0);
    catalog_item_clear(&it);
    catalog_free(c);
}

static void test_item_listing_an_attribute_twice_is_indexed_once(void **state) {
    (void)state;
    catalog *c = catalog_new();
    upsert(c, "p1", "phones", (const char *const[]){"hd_screen", "hd_screen", NULL});
    assert_int_equal(catalog_items_with_attribute(c, util_hash("hd_screen"), NULL, 0), 1);
    assert_int_equal(catalog_remove(c, "p1"), 1);
    assert_int_equal(catalog_items_with_attribute(c, util_hash("hd_screen"), NULL, 0), 0);
    catalog_free(c);
}

/* 1000 items is well past the point where a list splits into buckets. */
static void test_lists_follow_item_hash_order_whatever_the_insertion_order(void **state) {
    (void)state;
    enum { N = 1000 };
    catalog *fwd = catalog_new(), *rev = catalog_new();
    char id[32];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "item-%d", i);
        upsert(fwd, id, "phones", (const char *const[]){"hd_screen", NULL});
        snprintf(id, sizeof id, "item-%d", N - 1 - i);
        upsert(rev, id, "phones", (const char *const[]){"hd_screen", NULL});
    }
    static const catalog_entry *a[N], *b[N];
    assert_int_equal(catalog_items_in_category(fwd, util_hash("phones"), a, N), N);
    assert_int_equal(catalog_items_in_category(rev, util_hash("phones"), b, N), N);
    for (int i = 0; i < N; i++) {
        if (i) assert_true(a[i - 1]->item_hash < a[i]->item_hash);
        assert_string_equal(a[i]->item.item_id, b[i]->item.item_id);
    }

    /* A short read returns the total and the smallest hashes only. */
    const catalog_entry *few[3];
    assert_int_equal(catalog_items_with_attribute(fwd, util_hash("hd_screen"), few, 3), N);
    for (int i = 0; i < 3; i++) assert_ptr_equal(few[i], a[i]);
    catalog_free(fwd);
    catalog_free(rev);
}

/* ---- against a naive reference ------------------------------------------ */

enum { REF_IDS = 3000, REF_CATS = 6, REF_ATTRS = 10, REF_OPS = 10000 };

typedef struct {
    int present;
    int cat;                  /* -1: none */
    unsigned attrs;           /* bit per attribute */
} ref_item;

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rng(void) { /* xorshift64: the same sequence on every run */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static int by_hash(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static void check_list(const catalog *c, const ref_item *ref, int by_attr, int key) {
    static uint64_t want[REF_IDS];
    static const catalog_entry *got[REF_IDS];
    char name[32], id[32];
    size_t n = 0;
    for (int i = 0; i < REF_IDS; i++) {
        if (!ref[i].present) continue;
        if (by_attr ? !(ref[i].attrs & 1u << key) : ref[i].cat != key) continue;
        snprintf(id, sizeof id, "id-%d", i);
        want[n++] = util_hash(id);
    }
    qsort(want, n, sizeof *want, by_hash);
    snprintf(name, sizeof name, by_attr ? "attr-%d" : "cat-%d", key);
    size_t total = by_attr ? catalog_items_with_attribute(c, util_hash(name), got, REF_IDS)
                           : catalog_items_in_category(c, util_hash(name), got, REF_IDS);
    assert_int_equal(total, n);
    for (size_t i = 0; i < n; i++) assert_true(got[i]->item_hash == want[i]);
}

static void check_against_reference(const catalog *c, const ref_item *ref) {
    char id[32], name[32];
    size_t present = 0;
    for (int i = 0; i < REF_IDS; i++) {
        snprintf(id, sizeof id, "id-%d", i);
        const catalog_entry *e = catalog_get(c, util_hash(id));
        present += ref[i].present != 0;
        if (!ref[i].present) {
            assert_null(e);
            continue;
        }
        assert_non_null(e);
        assert_string_equal(e->item.item_id, id);
        if (ref[i].cat < 0) {
            assert_null(e->item.category);
        } else {
            snprintf(name, sizeof name, "cat-%d", ref[i].cat);
            assert_string_equal(e->item.category, name);
        }
    }
    assert_int_equal(catalog_count(c), present);
    for (int k = 0; k < REF_CATS; k++) check_list(c, ref, 0, k);
    for (int k = 0; k < REF_ATTRS; k++) check_list(c, ref, 1, k);
}

static void test_random_upserts_and_removes_agree_with_naive_reference(void **state) {
    (void)state;
    static ref_item ref[REF_IDS];
    memset(ref, 0, sizeof ref);
    catalog *c = catalog_new();
    char id[32], cat[32], attr_names[REF_ATTRS][32];
    const char *attrs[REF_ATTRS + 1];
    for (int k = 0; k < REF_ATTRS; k++) snprintf(attr_names[k], 32, "attr-%d", k);

    for (int op = 0; op < REF_OPS; op++) {
        int i = (int)(rng() % REF_IDS);
        snprintf(id, sizeof id, "id-%d", i);
        if (rng() % 4 == 0) {
            assert_int_equal(catalog_remove(c, id), ref[i].present);
            ref[i].present = 0;
        } else {
            int k = (int)(rng() % (REF_CATS + 1)) - 1;
            unsigned mask = (unsigned)(rng() % (1u << REF_ATTRS));
            size_t n = 0;
            for (int a = 0; a < REF_ATTRS; a++)
                if (mask & 1u << a) attrs[n++] = attr_names[a];
            attrs[n] = NULL;
            snprintf(cat, sizeof cat, "cat-%d", k);
            upsert(c, id, k < 0 ? NULL : cat, attrs);
            ref[i] = (ref_item){1, k, mask};
        }
        if (op % 2500 == 2499) check_against_reference(c, ref);
    }
    check_against_reference(c, ref);
    catalog_free(c);
}

static void test_free_of_null_is_a_noop(void **state) {
    (void)state;
    catalog_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_moved_item_is_found_only_under_its_new_category),
        cmocka_unit_test(test_removed_item_leaves_every_index),
        cmocka_unit_test(test_entry_hashes_are_util_hash_of_the_ids),
        cmocka_unit_test(test_upsert_without_id_fails_and_leaves_item_with_caller),
        cmocka_unit_test(test_item_listing_an_attribute_twice_is_indexed_once),
        cmocka_unit_test(test_lists_follow_item_hash_order_whatever_the_insertion_order),
        cmocka_unit_test(test_random_upserts_and_removes_agree_with_naive_reference),
        cmocka_unit_test(test_free_of_null_is_a_noop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
