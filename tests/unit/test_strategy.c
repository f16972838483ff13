/* test_strategy.c -- the affinity strategy: what it picks, what it never
 * picks, decay, determinism and the reasons it gives. Expected scores are
 * worked out by hand from the formula in strategy.h. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalog.h"
#include "strategy.h"
#include "util.h"

#define T0 1700000000u
#define HOUR 3600.0

typedef struct {
    const char *id;
    const char *en, *zh;      /* phrases; NULL: none in that locale */
} attr_spec;

/* Adds an item; attrs ends with an entry whose id is NULL. */
static void add_item(catalog *c, const char *id, const char *category, int available,
                     const attr_spec *attrs) {
    catalog_item it = {0};
    it.item_id = strdup(id);
    it.category = category ? strdup(category) : NULL;
    it.available = available;
    it.titles = calloc(2, sizeof *it.titles);
    it.titles[0] = (localized){strdup("en-US"), strdup(id)};
    it.n_titles = 1;
    while (attrs && attrs[it.n_attrs].id) it.n_attrs++;
    it.attrs = it.n_attrs ? calloc(it.n_attrs, sizeof *it.attrs) : NULL;
    for (size_t i = 0; i < it.n_attrs; i++) {
        item_attribute *a = &it.attrs[i];
        a->id = strdup(attrs[i].id);
        a->phrases = calloc(2, sizeof *a->phrases);
        if (attrs[i].en) a->phrases[a->n_phrases++] = (localized){strdup("en-US"), strdup(attrs[i].en)};
        if (attrs[i].zh) a->phrases[a->n_phrases++] = (localized){strdup("zh-CN"), strdup(attrs[i].zh)};
    }
    assert_int_equal(catalog_upsert(c, &it), 0);
}

/* A user built by hand; the arrays live in the struct so tests need no frees. */
typedef struct {
    user_state s;
    us_affinity cats[64], attrs[64];
    uint64_t bought[8];
} test_user;

static void user_init(test_user *u, uint32_t ref_s) {
    memset(u, 0, sizeof *u);
    u->s.cats.v = u->cats;
    u->s.attrs.v = u->attrs;
    u->s.bought = u->bought;
    u->s.cats.ref_s = u->s.attrs.ref_s = ref_s;
}

static void like_category(test_user *u, const char *cat, float score) {
    u->cats[u->s.cats.n++] = (us_affinity){util_hash(cat), score};
}

static void like_attr(test_user *u, const char *attr, float score) {
    u->attrs[u->s.attrs.n++] = (us_affinity){util_hash(attr), score};
}

static void bought(test_user *u, const char *item) { u->bought[u->s.n_bought++] = util_hash(item); }

static strategy_params params(size_t k, const char *locale) {
    return (strategy_params){.k = k, .max_reasons = 3, .at_s = T0, .half_life_s = 24 * HOUR,
                             .locale = locale, .exclude_item = 0};
}

static const char *pick_id(const strategy_result *r, size_t i) {
    return r->picks[i].entry->item.item_id;
}

static const attr_spec HD[] = {{"hd_screen", "HD screen", "高清屏幕"}, {NULL, NULL, NULL}};
static const attr_spec HD_SIM[] = {{"hd_screen", "HD screen", "高清屏幕"},
                                   {"dual_sim", "dual SIM", NULL}, {NULL, NULL, NULL}};
static const attr_spec SIM[] = {{"dual_sim", "dual SIM", NULL}, {NULL, NULL, NULL}};

static void test_phone_with_loved_attribute_beats_phone_without(void **state) {
    (void)state;
    catalog *c = catalog_new();
    add_item(c, "phone-plain", "phones", 1, SIM);
    add_item(c, "phone-hd", "phones", 1, HD_SIM);
    add_item(c, "laptop-hd", "laptops", 1, HD);
    add_item(c, "sofa", "furniture", 1, NULL);
    test_user u;
    user_init(&u, T0);
    like_category(&u, "phones", 5);
    like_attr(&u, "hd_screen", 3);

    strategy_params p = params(10, "en-US");
    strategy_result r;
    assert_int_equal(strategy_affinity(c, &u.s, &p, &r), 3);
    /* phone-hd: 5 + 3/sqrt(2); phone-plain: 5 + 0/1; laptop-hd: 0 + 3/1; sofa: no candidate */
    assert_string_equal(pick_id(&r, 0), "phone-hd");
    assert_float_equal(r.picks[0].score, 5 + 3 / sqrt(2), 1e-6);
    assert_string_equal(pick_id(&r, 1), "phone-plain");
    assert_float_equal(r.picks[1].score, 5, 1e-6);
    assert_string_equal(pick_id(&r, 2), "laptop-hd");
    assert_float_equal(r.picks[2].score, 3, 1e-6);
    assert_string_equal(r.picks[0].title, "phone-hd");
    catalog_free(c);
}

static void test_bought_unavailable_and_excluded_items_are_never_picked(void **state) {
    (void)state;
    catalog *c = catalog_new();
    add_item(c, "phone-bought", "phones", 1, HD);
    add_item(c, "phone-gone", "phones", 0, HD);
    add_item(c, "phone-shown", "phones", 1, HD);
    add_item(c, "phone-ok", "phones", 1, SIM);
    test_user u;
    user_init(&u, T0);
    like_category(&u, "phones", 5);
    like_attr(&u, "hd_screen", 3);
    bought(&u, "phone-bought");

    strategy_params p = params(20, "en-US");
    p.exclude_item = util_hash("phone-shown");
    strategy_result r;
    assert_int_equal(strategy_affinity(c, &u.s, &p, &r), 1);
    assert_string_equal(pick_id(&r, 0), "phone-ok");
    catalog_free(c);
}

static int by_hash(const void *a, const void *b) {
    uint64_t x = util_hash(*(char *const *)a), y = util_hash(*(char *const *)b);
    return (x > y) - (x < y);
}

static void test_equal_scores_go_to_lower_item_hash_whatever_the_insertion_order(void **state) {
    (void)state;
    enum { N = 12 };
    char ids[N][32];
    const char *sorted[N];
    catalog *fwd = catalog_new(), *rev = catalog_new();
    for (int i = 0; i < N; i++) snprintf(ids[i], sizeof ids[i], "twin-%d", i);
    for (int i = 0; i < N; i++) {
        add_item(fwd, ids[i], "phones", 1, HD);
        add_item(rev, ids[N - 1 - i], "phones", 1, HD);
        sorted[i] = ids[i];
    }
    qsort(sorted, N, sizeof *sorted, by_hash);
    test_user u;
    user_init(&u, T0);
    like_category(&u, "phones", 2);
    like_attr(&u, "hd_screen", 1);

    strategy_params p = params(5, "en-US");
    strategy_result a, b;
    assert_int_equal(strategy_affinity(fwd, &u.s, &p, &a), 5);
    assert_int_equal(strategy_affinity(rev, &u.s, &p, &b), 5);
    for (int i = 0; i < 5; i++) {
        assert_string_equal(pick_id(&a, (size_t)i), sorted[i]);
        assert_string_equal(pick_id(&b, (size_t)i), sorted[i]);
    }
    catalog_free(fwd);
    catalog_free(rev);
}

/* Phones score 3 through their category, cameras 0 + 3/1 through their
 * attribute: twenty ties met through different candidate lists. */
static void test_ties_across_category_and_attribute_lists_go_to_lower_item_hash(void **state) {
    (void)state;
    enum { N = 10 };
    char ids[2 * N][32];
    const char *sorted[2 * N];
    catalog *c = catalog_new();
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "phone-%d", i);
        add_item(c, ids[i], "phones", 1, NULL);
        snprintf(ids[N + i], sizeof ids[N + i], "camera-%d", i);
        add_item(c, ids[N + i], "cameras", 1, HD);
    }
    for (int i = 0; i < 2 * N; i++) sorted[i] = ids[i];
    qsort(sorted, 2 * N, sizeof *sorted, by_hash);
    test_user u;
    user_init(&u, T0);
    like_category(&u, "phones", 3);
    like_attr(&u, "hd_screen", 3);

    strategy_params p = params(2 * N, "en-US");
    strategy_result r;
    assert_int_equal(strategy_affinity(c, &u.s, &p, &r), 2 * N);
    for (size_t i = 0; i < 2 * N; i++) {
        assert_string_equal(pick_id(&r, i), sorted[i]);
        assert_float_equal(r.picks[i].score, 3, 1e-6);
    }
    catalog_free(c);
}

/* Categories last updated 3 half-lives before the event, attributes at the
 * event: the category's 8 has decayed to 8 / 2^3 = 1 and loses to 2. */
static void test_old_strong_affinity_loses_to_recent_weaker_one_after_three_half_lives(
    void **state) {
    (void)state;
    catalog *c = catalog_new();
    add_item(c, "phone", "phones", 1, NULL);
    add_item(c, "camera", "cameras", 1, HD);
    uint32_t now = T0 + 3 * 24 * 3600;
    test_user u;
    user_init(&u, T0);
    like_category(&u, "phones", 8);
    like_attr(&u, "hd_screen", 2);
    u.s.attrs.ref_s = now;

    strategy_params p = params(2, "en-US");
    p.at_s = now;
    strategy_result r;
    assert_int_equal(strategy_affinity(c, &u.s, &p, &r), 2);
    assert_string_equal(pick_id(&r, 0), "camera");
    assert_float_equal(r.picks[0].score, 2, 1e-6);
    assert_string_equal(pick_id(&r, 1), "phone");
    assert_float_equal(r.picks[1].score, 1, 1e-6);

    /* No time passed for the categories: 8 beats 2. */
    p.at_s = T0;
    u.s.attrs.ref_s = T0;
    assert_int_equal(strategy_affinity(c, &u.s, &p, &r), 2);
    assert_string_equal(pick_id(&r, 0), "phone");
    assert_float_equal(r.picks[0].score, 8, 1e-6);
    catalog_free(c);
}

/* The user has six categories; only the strongest five supply candidates. */
static void test_only_top_categories_supply_candidates(void **state) {
    (void)state;
    catalog *c = catalog_new();
    char id[32], cat[32];
    for (int i = 0; i < 6; i++) {
        snprintf(id, sizeof id, "item-%d", i);
        snprintf(cat, sizeof cat, "cat-%d", i);
        add_item(c, id, cat, 1, NULL);
    }
    test_user u;
    user_init(&u, T0);
    for (int i = 0; i < 6; i++) {
        snprintf(cat, sizeof cat, "cat-%d", i);
        like_category(&u, cat, (float)(10 - i));
    }
    strategy_params p = params(20, "en-US");
    strategy_result r;
    assert_int_equal(strategy_affinity(c, &u.s, &p, &r), 5);
    for (size_t i = 0; i < 5; i++) {
        snprintf(id, sizeof id, "item-%zu", i);
        assert_string_equal(pick_id(&r, i), id);
    }
    catalog_free(c);
}

static void test_no_reason_is_invented_for_an_item_without_a_liked_category(void **state) {
    (void)state;
    catalog *c = catalog_new();
    add_item(c, "serum", NULL, 1, HD); /* no category, an attribute the user never saw */
    test_user u;
    user_init(&u, T0);
    like_attr(&u, "hd_screen", 0); /* present but no positive affinity */
    like_attr(&u, "matte", 1);
    static const attr_spec MATTE[] = {{"matte", "matte finish", NULL}, {NULL, NULL, NULL}};
    add_item(c, "lipstick", NULL, 1, MATTE);
    strategy_params p = params(2, "zh-CN"); /* matte has no zh-CN phrase */
    strategy_result r;
    assert_int_equal(strategy_affinity(c, &u.s, &p, &r), 1);
    assert_string_equal(pick_id(&r, 0), "lipstick");
    assert_int_equal(r.n_reasons, 0);
    catalog_free(c);
}

static void test_a_passing_glance_supplies_no_candidates(void **state) {
    (void)state;
    catalog *c = catalog_new();
    add_item(c, "phone", "phones", 1, NULL);
    add_item(c, "kettle", "kitchen", 1, NULL);
    add_item(c, "cable", "cables", 1, HD);
    test_user u;
    user_init(&u, T0);
    like_category(&u, "phones", 10);
    like_category(&u, "kitchen", 0.9f);   /* under a tenth of the strongest */
    like_attr(&u, "hd_screen", 1);
    like_attr(&u, "glossy", 0.05f);
    strategy_params p = params(20, "en-US");
    strategy_result r;
    /* The kitchen category is too weak to be searched; the cable is found
     * through the attribute the user likes. */
    assert_int_equal(strategy_affinity(c, &u.s, &p, &r), 2);
    assert_string_equal(pick_id(&r, 0), "phone");
    assert_string_equal(pick_id(&r, 1), "cable");
    catalog_free(c);
}

static void test_reasons_are_top_pick_attributes_the_user_likes_in_the_locale(void **state) {
    (void)state;
    static const attr_spec attrs[] = {
        {"hd_screen", "HD screen", "高清屏幕"},
        {"long_battery", "long battery life", "超长续航"},
        {"dual_sim", "dual SIM", NULL},
        {"waterproof", "waterproof", "防水"},
        {NULL, NULL, NULL},
    };
    catalog *c = catalog_new();
    add_item(c, "phone", "phones", 1, attrs);
    test_user u;
    user_init(&u, T0);
    like_category(&u, "phones", 1);
    like_attr(&u, "long_battery", 1);
    like_attr(&u, "dual_sim", 5);
    like_attr(&u, "hd_screen", 3);

    strategy_params p = params(1, "en-US");
    strategy_result r;
    assert_int_equal(strategy_affinity(c, &u.s, &p, &r), 1);
    assert_int_equal(r.n_reasons, 3);
    const char *want_en[] = {"dual SIM", "HD screen", "long battery life"};
    const char *want_ids[] = {"dual_sim", "hd_screen", "long_battery"};
    const double want_scores[] = {5, 3, 1};
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(r.reasons[i].code, "attribute_match");
        assert_string_equal(r.reasons[i].attribute_id, want_ids[i]);
        assert_string_equal(r.reasons[i].text, want_en[i]);
        assert_float_equal(r.reasons[i].score, want_scores[i], 1e-6);
    }

    p.max_reasons = 2;
    assert_int_equal(strategy_affinity(c, &u.s, &p, &r), 1);
    assert_int_equal(r.n_reasons, 2);
    assert_string_equal(r.reasons[1].text, "HD screen");

    /* dual_sim has no zh-CN phrase: it is not a zh-CN reason. */
    p = params(1, "zh-CN");
    assert_int_equal(strategy_affinity(c, &u.s, &p, &r), 1);
    assert_int_equal(r.n_reasons, 2);
    assert_string_equal(r.reasons[0].text, "高清屏幕");
    assert_string_equal(r.reasons[1].text, "超长续航");
    assert_null(r.picks[0].title); /* the item has no zh-CN title */
    catalog_free(c);
}

static void test_category_reason_when_no_attribute_matches(void **state) {
    (void)state;
    catalog *c = catalog_new();
    add_item(c, "phone", "phones", 1, SIM);
    test_user u;
    user_init(&u, T0);
    like_category(&u, "phones", 4);
    like_attr(&u, "hd_screen", 3);

    strategy_params p = params(1, "en-US");
    strategy_result r;
    assert_int_equal(strategy_affinity(c, &u.s, &p, &r), 1);
    assert_int_equal(r.n_reasons, 1);
    assert_string_equal(r.reasons[0].code, "category_affinity");
    assert_null(r.reasons[0].attribute_id);
    assert_string_equal(r.reasons[0].text, "");
    assert_float_equal(r.reasons[0].score, 4, 1e-6);
    catalog_free(c);
}

static void test_user_without_affinities_gets_nothing(void **state) {
    (void)state;
    catalog *c = catalog_new();
    add_item(c, "phone", "phones", 1, HD);
    test_user u;
    user_init(&u, T0);
    strategy_params p = params(5, "en-US");
    strategy_result r;
    assert_int_equal(strategy_affinity(c, &u.s, &p, &r), 0);
    assert_int_equal(r.n_reasons, 0);
    catalog_free(c);
}

static void test_out_of_bounds_params_are_rejected(void **state) {
    (void)state;
    catalog *c = catalog_new();
    test_user u;
    user_init(&u, T0);
    strategy_result r;
    strategy_params p = params(0, "en-US");
    assert_int_equal(strategy_affinity(c, &u.s, &p, &r), -1);
    p = params(STRATEGY_MAX_PICKS + 1, "en-US");
    assert_int_equal(strategy_affinity(c, &u.s, &p, &r), -1);
    p = params(1, NULL);
    assert_int_equal(strategy_affinity(c, &u.s, &p, &r), -1);
    p = params(1, "en-US");
    p.max_reasons = STRATEGY_MAX_REASONS + 1;
    assert_int_equal(strategy_affinity(c, &u.s, &p, &r), -1);
    p = params(1, "en-US");
    p.half_life_s = 0;
    assert_int_equal(strategy_affinity(c, &u.s, &p, &r), -1);
    catalog_free(c);
}

/* ---- against a brute-force ranking -------------------------------------- */

enum { BF_ITEMS = 2000, BF_CATS = 20, BF_ATTRS = 40, BF_ITEM_ATTRS = 3 };

static uint64_t rng_state = 0x2545f4914f6cdd1du;

static uint64_t rng(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

typedef struct {
    int cat, attrs[BF_ITEM_ATTRS], available;
    uint64_t hash;
    double score;
    int candidate;
} bf_item;

static int bf_better(const void *a, const void *b) {
    const bf_item *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return x->hash < y->hash ? -1 : x->hash > y->hash;
}

/* Every candidate list is far below the strategy's per-list budget, so its
 * answer must equal scoring every candidate by the formula in strategy.h:
 * items of the 5 strongest categories or with one of the 8 strongest
 * attributes, available and not bought. */
static void test_picks_equal_brute_force_ranking_of_the_candidates(void **state) {
    (void)state;
    static bf_item items[BF_ITEMS];
    catalog *c = catalog_new();
    char id[32], cat[32], names[BF_ATTRS][32];
    for (int a = 0; a < BF_ATTRS; a++) snprintf(names[a], sizeof names[a], "attr-%d", a);
    for (int i = 0; i < BF_ITEMS; i++) {
        bf_item *it = &items[i];
        attr_spec spec[BF_ITEM_ATTRS + 1] = {{0}};
        it->cat = (int)(rng() % BF_CATS);
        it->available = rng() % 10 != 0;
        for (int k = 0; k < BF_ITEM_ATTRS; k++) {
            it->attrs[k] = (int)(rng() % BF_ATTRS);
            spec[k] = (attr_spec){names[it->attrs[k]], "x", NULL};
        }
        snprintf(id, sizeof id, "bf-%d", i);
        snprintf(cat, sizeof cat, "cat-%d", it->cat);
        it->hash = util_hash(id);
        add_item(c, id, cat, it->available, spec);
    }

    /* Affinities are exact in float and rise with the index: the strongest 5
     * categories are the last 5, the strongest 8 attributes the last 8. */
    test_user u;
    user_init(&u, T0);
    double cat_aff[BF_CATS] = {0}, attr_aff[BF_ATTRS] = {0};
    for (int k = 0; k < BF_CATS; k++) {
        cat_aff[k] = (float)(1 + k * 0.25);
        snprintf(cat, sizeof cat, "cat-%d", k);
        like_category(&u, cat, (float)cat_aff[k]);
    }
    for (int a = 0; a < BF_ATTRS; a++) {
        attr_aff[a] = (float)(0.5 + a * 0.125);
        like_attr(&u, names[a], (float)attr_aff[a]);
    }
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof id, "bf-%d", (int)(rng() % BF_ITEMS));
        bought(&u, id);
    }

    size_t n_cand = 0;
    for (int i = 0; i < BF_ITEMS; i++) {
        bf_item *it = &items[i];
        int strong_attr = 0;
        double dot = 0;
        for (int k = 0; k < BF_ITEM_ATTRS; k++) {
            dot += attr_aff[it->attrs[k]];
            strong_attr |= it->attrs[k] >= BF_ATTRS - 8;
        }
        it->score = cat_aff[it->cat] + dot / sqrt(BF_ITEM_ATTRS);
        it->candidate = it->available && (it->cat >= BF_CATS - 5 || strong_attr) &&
                        !userstate_has_bought(&u.s, it->hash);
        if (it->candidate) items[n_cand++] = *it;
    }
    qsort(items, n_cand, sizeof *items, bf_better);

    strategy_params p = params(STRATEGY_MAX_PICKS, "en-US");
    strategy_result r;
    assert_int_equal(strategy_affinity(c, &u.s, &p, &r), STRATEGY_MAX_PICKS);
    for (size_t i = 0; i < STRATEGY_MAX_PICKS; i++) {
        assert_true(r.picks[i].entry->item_hash == items[i].hash);
        assert_float_equal(r.picks[i].score, items[i].score, 1e-9);
    }
    catalog_free(c);
}


/* For users whose interests are clear -- a few categories and attributes,
 * none under a tenth of the strongest -- every item with a positive score is
 * reachable, so the picks must be the best items of the whole catalog, by
 * brute force. This holds whether or not the strategy skipped the attribute
 * lists on its bound (strategy.c), so a wrong bound shows up here. */
enum { WC_ITEMS = 600, WC_CATS = 12, WC_ATTRS = 30, WC_TRIALS = 400 };

typedef struct {
    int cat, n_attrs, attrs[4], available;
    uint64_t hash;
    double score;
} wc_item;

static int wc_better(const void *a, const void *b) {
    const wc_item *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return x->hash < y->hash ? -1 : x->hash > y->hash;
}

static void test_clear_interests_get_the_best_items_of_the_whole_catalog(void **state) {
    (void)state;
    static wc_item items[WC_ITEMS], ranked[WC_ITEMS];
    char id[32], cat[32], names[WC_ATTRS][32];
    catalog *c = catalog_new();
    for (int a = 0; a < WC_ATTRS; a++) snprintf(names[a], sizeof names[a], "wc-attr-%d", a);
    for (int i = 0; i < WC_ITEMS; i++) {
        wc_item *it = &items[i];
        attr_spec spec[5] = {{0}};
        it->cat = (int)(rng() % WC_CATS);
        it->available = rng() % 8 != 0;
        it->n_attrs = 1 + (int)(rng() % 4);
        for (int k = 0; k < it->n_attrs; k++) {
            int a;
            do { /* distinct attributes */
                a = (int)(rng() % WC_ATTRS);
                int dup = 0;
                for (int j = 0; j < k; j++) dup |= it->attrs[j] == a;
                if (!dup) break;
            } while (1);
            it->attrs[k] = a;
            spec[k] = (attr_spec){names[a], "x", NULL};
        }
        snprintf(id, sizeof id, "wc-%d", i);
        snprintf(cat, sizeof cat, "wc-cat-%d", it->cat);
        it->hash = util_hash(id);
        add_item(c, id, cat, it->available, spec);
    }
    for (int trial = 0; trial < WC_TRIALS; trial++) {
        test_user u;
        user_init(&u, T0);
        double cat_aff[WC_CATS] = {0}, attr_aff[WC_ATTRS] = {0};
        int n_cats = 1 + (int)(rng() % 3), n_attrs = 1 + (int)(rng() % 6);
        for (int k = 0; k < n_cats; k++) {
            int x = (int)(rng() % WC_CATS);
            if (cat_aff[x] > 0) continue;
            /* between 0.15 and 4: never under a tenth of the strongest */
            cat_aff[x] = (float)(0.15 + (double)(rng() % 1000) / 1000.0 * 3.85);
            snprintf(cat, sizeof cat, "wc-cat-%d", x);
            like_category(&u, cat, (float)cat_aff[x]);
        }
        for (int k = 0; k < n_attrs; k++) {
            int x = (int)(rng() % WC_ATTRS);
            if (attr_aff[x] > 0) continue;
            attr_aff[x] = (float)(0.4 + (double)(rng() % 1000) / 1000.0 * 3.6);
            like_attr(&u, names[x], (float)attr_aff[x]);
        }
        /* userstate keeps affinities strongest first; so must this user */
        for (size_t i = 0; i < u.s.cats.n; i++)
            for (size_t j = i + 1; j < u.s.cats.n; j++)
                if (u.cats[j].score > u.cats[i].score) {
                    us_affinity t = u.cats[i]; u.cats[i] = u.cats[j]; u.cats[j] = t;
                }
        for (size_t i = 0; i < u.s.attrs.n; i++)
            for (size_t j = i + 1; j < u.s.attrs.n; j++)
                if (u.attrs[j].score > u.attrs[i].score) {
                    us_affinity t = u.attrs[i]; u.attrs[i] = u.attrs[j]; u.attrs[j] = t;
                }
        size_t n = 0;
        for (int i = 0; i < WC_ITEMS; i++) {
            if (!items[i].available) continue;
            double dot = 0;
            for (int k = 0; k < items[i].n_attrs; k++) dot += attr_aff[items[i].attrs[k]];
            ranked[n] = items[i];
            ranked[n++].score = cat_aff[items[i].cat] + dot / sqrt((double)items[i].n_attrs);
        }
        qsort(ranked, n, sizeof *ranked, wc_better);
        size_t k = 1 + rng() % 10;
        strategy_params p = params(k, "en-US");
        strategy_result r;
        assert_int_equal(strategy_affinity(c, &u.s, &p, &r), (int)k);
        for (size_t i = 0; i < k; i++) {
            assert_true(ranked[i].score > 0);
            assert_true(r.picks[i].entry->item_hash == ranked[i].hash);
        }
    }
    catalog_free(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_phone_with_loved_attribute_beats_phone_without),
        cmocka_unit_test(test_bought_unavailable_and_excluded_items_are_never_picked),
        cmocka_unit_test(test_equal_scores_go_to_lower_item_hash_whatever_the_insertion_order),
        cmocka_unit_test(test_ties_across_category_and_attribute_lists_go_to_lower_item_hash),
        cmocka_unit_test(test_old_strong_affinity_loses_to_recent_weaker_one_after_three_half_lives),
        cmocka_unit_test(test_only_top_categories_supply_candidates),
        cmocka_unit_test(test_a_passing_glance_supplies_no_candidates),
        cmocka_unit_test(test_no_reason_is_invented_for_an_item_without_a_liked_category),
        cmocka_unit_test(test_reasons_are_top_pick_attributes_the_user_likes_in_the_locale),
        cmocka_unit_test(test_category_reason_when_no_attribute_matches),
        cmocka_unit_test(test_user_without_affinities_gets_nothing),
        cmocka_unit_test(test_out_of_bounds_params_are_rejected),
        cmocka_unit_test(test_picks_equal_brute_force_ranking_of_the_candidates),
        cmocka_unit_test(test_clear_interests_get_the_best_items_of_the_whole_catalog),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
