/* test_synth.c -- the sample catalog and the synthetic clickstream. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "synth.h"
#include "util.h"

#define START_MS 1700000000000LL

static synth *make(uint64_t seed, uint32_t users) {
    char err[256];
    synth *s = synth_new(seed, users, START_MS, err, sizeof err);
    if (!s) fail_msg("synth_new: %s", err);
    return s;
}

static int str_eq(const char *a, const char *b) {
    return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

/* A set of 64-bit hashes, enough to check uniqueness and membership. */
typedef struct {
    uint64_t *v;
    size_t cap;
} hset;

static hset hset_new(size_t cap) {
    hset h = {calloc(cap, sizeof(uint64_t)), cap};
    assert_non_null(h.v);
    return h;
}

/* Returns 1 when x was new. 0 is the empty marker, so hashes are made odd. */
static int hset_add(hset *h, uint64_t x) {
    x |= 1;
    for (size_t i = x % h->cap;; i = (i + 1) % h->cap) {
        if (h->v[i] == x) return 0;
        if (!h->v[i]) {
            h->v[i] = x;
            return 1;
        }
    }
}

static int hset_has(const hset *h, uint64_t x) {
    x |= 1;
    for (size_t i = x % h->cap; h->v[i]; i = (i + 1) % h->cap)
        if (h->v[i] == x) return 1;
    return 0;
}

static uint64_t pair_hash(const char *a, const char *b) {
    char key[256];
    snprintf(key, sizeof key, "%s\x1f%s", a, b);
    return util_hash(key);
}

/* Catalog lookup by id: (hash, index) pairs sorted by hash. */
typedef struct {
    uint64_t h;
    size_t i;
} item_ix;

static int cmp_ix(const void *a, const void *b) {
    uint64_t x = ((const item_ix *)a)->h, y = ((const item_ix *)b)->h;
    return (x > y) - (x < y);
}

static item_ix *index_items(const synth *s) {
    size_t n = synth_catalog_len(s);
    item_ix *ix = calloc(n, sizeof *ix);
    assert_non_null(ix);
    for (size_t i = 0; i < n; i++) ix[i] = (item_ix){util_hash(synth_catalog(s)[i].item_id), i};
    qsort(ix, n, sizeof *ix, cmp_ix);
    return ix;
}

static const catalog_item *find_item(const synth *s, const item_ix *ix, const char *id) {
    item_ix key = {util_hash(id), 0};
    const item_ix *hit = bsearch(&key, ix, synth_catalog_len(s), sizeof *ix, cmp_ix);
    if (!hit || strcmp(synth_catalog(s)[hit->i].item_id, id) != 0) return NULL;
    return &synth_catalog(s)[hit->i];
}

static void test_same_seed_gives_identical_events(void **state) {
    (void)state;
    synth *a = make(7, 500), *b = make(7, 500);
    click_event x, y;
    for (int i = 0; i < 10000; i++) {
        synth_next(a, &x);
        synth_next(b, &y);
        assert_string_equal(x.event_id, y.event_id);
        assert_string_equal(x.user_id, y.user_id);
        assert_int_equal(x.ts_ms, y.ts_ms);
        assert_int_equal(x.type, y.type);
        assert_true(str_eq(x.item_id, y.item_id));
        assert_true(str_eq(x.category, y.category));
        assert_int_equal(x.has_price, y.has_price);
        assert_int_equal(x.price_micros, y.price_micros);
        assert_true(str_eq(x.currency, y.currency));
        assert_true(str_eq(x.query, y.query));
        assert_true(str_eq(x.session_id, y.session_id));
        assert_true(str_eq(x.locale, y.locale));
    }
    synth_free(a);
    synth_free(b);
}

static void test_different_seed_gives_different_events(void **state) {
    (void)state;
    synth *a = make(7, 500), *b = make(8, 500);
    click_event x, y;
    int differ = 0;
    for (int i = 0; i < 1000; i++) {
        synth_next(a, &x);
        synth_next(b, &y);
        /* Event ids contain the seed; compare what the user did instead. */
        if (strcmp(x.user_id, y.user_id) != 0 || x.ts_ms != y.ts_ms || x.type != y.type ||
            !str_eq(x.item_id, y.item_id))
            differ++;
        assert_string_not_equal(x.event_id, y.event_id);
    }
    assert_true(differ > 900);
    synth_free(a);
    synth_free(b);
}

static void test_events_are_time_ordered_and_well_formed(void **state) {
    (void)state;
    const uint32_t users = 300;
    synth *s = make(11, users);
    item_ix *ix = index_items(s);
    hset ids = hset_new(1 << 17);
    click_event ev;
    int64_t prev = START_MS;
    for (int i = 0; i < 50000; i++) {
        synth_next(s, &ev);
        assert_true(ev.ts_ms >= prev);
        prev = ev.ts_ms;
        assert_true(hset_add(&ids, util_hash(ev.event_id)));
        assert_int_equal(ev.user_id[0], 'u');
        long u = atol(ev.user_id + 1);
        assert_true(u >= 1 && u <= (long)users);
        assert_non_null(ev.session_id);
        assert_non_null(ev.category);
        if (ev.type == EV_SEARCH) {
            assert_null(ev.item_id);
            assert_non_null(ev.query);
            assert_true(strlen(ev.query) > 0);
            assert_false(ev.has_price);
            continue;
        }
        assert_null(ev.query);
        const catalog_item *it = find_item(s, ix, ev.item_id);
        assert_non_null(it);
        assert_string_equal(ev.category, it->category);
        if (ev.type == EV_ADD_TO_CART || ev.type == EV_PURCHASE) {
            assert_true(ev.has_price);
            assert_int_equal(ev.price_micros, it->price_micros);
            assert_string_equal(ev.currency, "CNY");
        } else {
            assert_false(ev.has_price);
            assert_null(ev.currency);
        }
    }
    free(ids.v);
    free(ix);
    synth_free(s);
}

static void test_purchases_follow_carts_of_the_same_session(void **state) {
    (void)state;
    synth *s = make(3, 1000);
    hset carted = hset_new(1 << 18);
    long n[EV__COUNT] = {0};
    click_event ev;
    for (int i = 0; i < 200000; i++) {
        synth_next(s, &ev);
        n[ev.type]++;
        if (ev.type == EV_ADD_TO_CART) hset_add(&carted, pair_hash(ev.session_id, ev.item_id));
        if (ev.type == EV_PURCHASE)
            assert_true(hset_has(&carted, pair_hash(ev.session_id, ev.item_id)));
    }
    assert_true(n[EV_PURCHASE] <= n[EV_ADD_TO_CART]);
    assert_true(n[EV_ADD_TO_CART] <= n[EV_VIEW]);
    /* The funnel's rates: about 20% of views carted, about 35% of carts bought. */
    double cart_rate = (double)n[EV_ADD_TO_CART] / n[EV_VIEW];
    double buy_rate = (double)n[EV_PURCHASE] / n[EV_ADD_TO_CART];
    assert_true(cart_rate > 0.15 && cart_rate < 0.25);
    assert_true(buy_rate > 0.25 && buy_rate < 0.45);
    assert_true(n[EV_SEARCH] > 0 && n[EV_FAVORITE] > 0 && n[EV_CLICK] > 0);
    free(carted.v);
    synth_free(s);
}

static int cmp_long_desc(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x < y) - (x > y);
}

static void test_item_popularity_is_skewed_within_a_category(void **state) {
    (void)state;
    synth *s = make(5, 2000);
    item_ix *ix = index_items(s);
    size_t n_items = synth_catalog_len(s), n_phones = 0;
    long *views = calloc(n_items, sizeof *views), *phones = calloc(n_items, sizeof *phones);
    assert_non_null(views);
    assert_non_null(phones);
    click_event ev;
    for (int i = 0; i < 300000; i++) {
        synth_next(s, &ev);
        if (ev.type != EV_VIEW) continue;
        views[find_item(s, ix, ev.item_id) - synth_catalog(s)]++;
    }
    for (size_t i = 0; i < n_items; i++)
        if (strcmp(synth_catalog(s)[i].category, "phones") == 0) phones[n_phones++] = views[i];
    assert_true(n_phones >= 40);
    qsort(phones, n_phones, sizeof *phones, cmp_long_desc);
    long top = phones[0], median = phones[n_phones / 2];
    assert_true(median > 0);
    /* Zipf(1.1) over ~100 items puts the head dozens of times above the
     * median; uniform popularity would put it within a few percent. */
    assert_true(top > 10 * median);
    free(views);
    free(phones);
    free(ix);
    synth_free(s);
}

static void test_locale_shares_match_the_user_mix(void **state) {
    (void)state;
    const uint32_t users = 5000;
    synth *s = make(9, users);
    /* 0 unseen, 1 none, 2 zh-CN, 3 en-US */
    unsigned char *loc = calloc(users + 1, 1);
    assert_non_null(loc);
    click_event ev;
    for (int i = 0; i < 300000; i++) {
        synth_next(s, &ev);
        unsigned char l = !ev.locale ? 1 : strcmp(ev.locale, "zh-CN") == 0 ? 2
                                       : strcmp(ev.locale, "en-US") == 0 ? 3 : 9;
        assert_int_not_equal(l, 9);
        long u = atol(ev.user_id + 1);
        if (loc[u]) assert_int_equal(loc[u], l); /* a user keeps their locale */
        loc[u] = l;
    }
    long seen = 0, none = 0, zh = 0, en = 0;
    for (uint32_t u = 1; u <= users; u++) {
        seen += loc[u] != 0;
        none += loc[u] == 1;
        zh += loc[u] == 2;
        en += loc[u] == 3;
    }
    assert_true(seen > users * 9 / 10);
    double zh_share = (double)zh / (zh + en), none_share = (double)none / seen;
    assert_true(zh_share > 0.56 && zh_share < 0.64);
    assert_true(none > 0 && none_share < 0.08);
    free(loc);
    synth_free(s);
}

static void test_sessions_have_minute_gaps_and_hours_between_them(void **state) {
    (void)state;
    const uint32_t users = 200;
    synth *s = make(13, users);
    int64_t *last_ts = calloc(users + 1, sizeof *last_ts);
    char(*last_session)[64] = calloc(users + 1, sizeof *last_session);
    assert_non_null(last_ts);
    assert_non_null(last_session);
    long within = 0, between = 0, long_breaks = 0;
    click_event ev;
    for (int i = 0; i < 100000; i++) {
        synth_next(s, &ev);
        long u = atol(ev.user_id + 1);
        if (last_ts[u]) {
            int64_t gap = ev.ts_ms - last_ts[u];
            if (strcmp(last_session[u], ev.session_id) == 0) {
                within++;
                assert_true(gap > 0 && gap <= 15 * 60000);
            } else {
                between++;
                assert_true(gap >= 20 * 60000);
                long_breaks += gap >= 3600000;
            }
        }
        last_ts[u] = ev.ts_ms;
        snprintf(last_session[u], sizeof last_session[u], "%s", ev.session_id);
    }
    /* Several events per session, and most breaks last hours or more. */
    assert_true(within > 3 * between);
    assert_true(long_breaks > between / 2);
    free(last_ts);
    free(last_session);
    synth_free(s);
}

static void test_catalog_items_are_bilingual_and_unique(void **state) {
    (void)state;
    synth *s = make(1, 1);
    size_t n = synth_catalog_len(s), available = 0;
    assert_true(n >= 600 && n <= 1000);
    hset ids = hset_new(4096), cats = hset_new(64);
    size_t n_cats = 0;
    for (size_t i = 0; i < n; i++) {
        const catalog_item *it = &synth_catalog(s)[i];
        assert_true(hset_add(&ids, util_hash(it->item_id)));
        n_cats += hset_add(&cats, util_hash(it->category));
        const char *zh = localized_find(it->titles, it->n_titles, "zh-CN");
        const char *en = localized_find(it->titles, it->n_titles, "en-US");
        assert_non_null(zh);
        assert_non_null(en);
        assert_string_not_equal(zh, en);
        assert_non_null(it->brand);
        assert_true(it->has_price && it->price_micros > 0);
        assert_string_equal(it->currency, "CNY");
        assert_true(it->n_attrs >= 2 && it->n_attrs <= 5);
        for (size_t a = 0; a < it->n_attrs; a++) {
            assert_non_null(localized_find(it->attrs[a].phrases, it->attrs[a].n_phrases, "zh-CN"));
            assert_non_null(localized_find(it->attrs[a].phrases, it->attrs[a].n_phrases, "en-US"));
            for (size_t b = 0; b < a; b++)
                assert_string_not_equal(it->attrs[a].id, it->attrs[b].id);
        }
        available += it->available != 0;
    }
    assert_int_equal(n_cats, 10);
    assert_true(available > n * 85 / 100 && available < n);
    free(ids.v);
    free(cats.v);
    synth_free(s);
}

/* Every item carrying attribute id gets the same phrases; returns how many
 * distinct categories use it. */
static int check_attribute(const synth *s, const char *id, const char *zh, const char *en) {
    hset cats = hset_new(64);
    int n_cats = 0;
    for (size_t i = 0; i < synth_catalog_len(s); i++) {
        const catalog_item *it = &synth_catalog(s)[i];
        for (size_t a = 0; a < it->n_attrs; a++) {
            if (strcmp(it->attrs[a].id, id) != 0) continue;
            assert_string_equal(localized_find(it->attrs[a].phrases, 2, "zh-CN"), zh);
            assert_string_equal(localized_find(it->attrs[a].phrases, 2, "en-US"), en);
            n_cats += hset_add(&cats, util_hash(it->category));
        }
    }
    free(cats.v);
    return n_cats;
}

static void test_attributes_have_stable_ids_shared_across_categories(void **state) {
    (void)state;
    synth *s = make(1, 1);
    assert_true(check_attribute(s, "long_battery", "长续航", "long battery life") >= 3);
    assert_true(check_attribute(s, "hd_screen", "高清屏幕", "high-definition screen") >= 2);
    assert_int_equal(check_attribute(s, "wide_camera", "超广角摄像头", "ultra-wide camera"), 1);
    synth_free(s);
}

static void test_catalog_does_not_depend_on_the_seed(void **state) {
    (void)state;
    synth *a = make(1, 10), *b = make(999, 10);
    assert_int_equal(synth_catalog_len(a), synth_catalog_len(b));
    for (size_t i = 0; i < synth_catalog_len(a); i++) {
        const catalog_item *x = &synth_catalog(a)[i], *y = &synth_catalog(b)[i];
        assert_string_equal(x->item_id, y->item_id);
        assert_string_equal(x->titles[0].text, y->titles[0].text);
        assert_int_equal(x->price_micros, y->price_micros);
        assert_int_equal(x->n_attrs, y->n_attrs);
        assert_int_equal(x->available, y->available);
    }
    synth_free(a);
    synth_free(b);
}

static void test_user_count_is_bounded(void **state) {
    (void)state;
    char err[256] = "";
    assert_null(synth_new(1, 0, START_MS, err, sizeof err));
    assert_non_null(strstr(err, "users"));
    assert_null(synth_new(1, SYNTH_MAX_USERS + 1, START_MS, err, sizeof err));
    synth_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_seed_gives_identical_events),
        cmocka_unit_test(test_different_seed_gives_different_events),
        cmocka_unit_test(test_events_are_time_ordered_and_well_formed),
        cmocka_unit_test(test_purchases_follow_carts_of_the_same_session),
        cmocka_unit_test(test_item_popularity_is_skewed_within_a_category),
        cmocka_unit_test(test_locale_shares_match_the_user_mix),
        cmocka_unit_test(test_sessions_have_minute_gaps_and_hours_between_them),
        cmocka_unit_test(test_catalog_items_are_bilingual_and_unique),
        cmocka_unit_test(test_attributes_have_stable_ids_shared_across_categories),
        cmocka_unit_test(test_catalog_does_not_depend_on_the_seed),
        cmocka_unit_test(test_user_count_is_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
