/* test_recommend.c -- the learned strategy as the service uses it: a user's
 * model state does not depend on how events were split into batches or on
 * what the cache kept, and picks honour every exclusion. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "catalog.h"
#include "model.h"
#include "recommend.h"
#include "userstate.h"
#include "util.h"

enum { N_ITEMS = 20, N_ATTRS = 6, W = 8, DIM = 16, EVENTS = 30 };

static char model_path[64];
static char item_ids[N_ITEMS + 1][16], attr_ids[N_ATTRS][16];

/* Item i carries attributes i % N_ATTRS and (i + 1) % N_ATTRS. */
static int setup(void **state) {
    (void)state;
    for (int i = 0; i <= N_ITEMS; i++) snprintf(item_ids[i], sizeof item_ids[i], "i%d", i);
    for (int a = 0; a < N_ATTRS; a++) snprintf(attr_ids[a], sizeof attr_ids[a], "a%d", a);
    const char *items[N_ITEMS], *attrs[N_ATTRS];
    uint32_t off[N_ITEMS + 1], rows[2 * N_ITEMS];
    for (int i = 0; i < N_ITEMS; i++) {
        items[i] = item_ids[i];
        off[i] = 2 * (uint32_t)i;
        rows[2 * i] = (uint32_t)(i % N_ATTRS);
        rows[2 * i + 1] = (uint32_t)((i + 1) % N_ATTRS);
    }
    off[N_ITEMS] = 2 * N_ITEMS;
    for (int a = 0; a < N_ATTRS; a++) attrs[a] = attr_ids[a];
    model_config c = {.dim = DIM, .n_layers = 2, .n_heads = 2, .window = W, .hidden = 4 * DIM,
                      .n_items = N_ITEMS, .n_attrs = N_ATTRS, .n_types = EV__COUNT};
    size_t n = model_weights_point(NULL, &c, NULL);
    float *w = malloc(n * sizeof *w);
    model_fill_random(&c, 42, w);
    model_tables t = {items, attrs, off, rows, 0};
    snprintf(model_path, sizeof model_path, "/tmp/test_recommend_%d.bin", (int)getpid());
    char err[256];
    int rc = model_write(model_path, &c, w, &t, err, sizeof err);
    free(w);
    return rc;
}

static int teardown(void **state) {
    (void)state;
    unlink(model_path);
    return 0;
}

/* The catalog: every model item, plus i20, which the model never saw. */
static catalog *make_catalog(const char *unavailable) {
    catalog *cat = catalog_new();
    for (int i = 0; i <= N_ITEMS; i++) {
        catalog_item it = {0};
        it.item_id = strdup(item_ids[i]);
        it.category = strdup("c");
        it.available = !unavailable || strcmp(unavailable, item_ids[i]) != 0;
        it.n_attrs = 2;
        it.attrs = calloc(2, sizeof *it.attrs);
        it.attrs[0].id = strdup(attr_ids[i % N_ATTRS]);
        it.attrs[1].id = strdup(attr_ids[(i + 1) % N_ATTRS]);
        assert_int_equal(catalog_upsert(cat, &it), 0);
    }
    return cat;
}

/* Event e of the test user: items cycle through the catalog, the unseen
 * item included, types through the event types that carry items. */
static click_event event(int e, char *id) {
    snprintf(id, 16, "e%d", e);
    click_event ev = {.event_id = id, .user_id = (char *)"u", .ts_ms = 1700000000000 + e * 1000,
                      .type = (event_type)(e % 4), .item_id = item_ids[(e * 7) % (N_ITEMS + 1)]};
    return ev;
}

/* Plays all events through a recommender in batches of the given sizes,
 * writing the model state after event e into h[e]. */
static void play(recommender *r, const catalog *cat, const int *sizes, size_t n_sizes,
                 float h[EVENTS][DIM]) {
    userstate_params p;
    userstate_params_default(&p);
    p.max_sequence = 64;
    user_state st;
    userstate_init(&st);
    int e = 0;
    for (size_t b = 0; e < EVENTS; b++) {
        int size = (int)sizes[b % n_sizes];
        uint64_t before = st.seq_total;
        int first = e;
        for (; e < EVENTS && e < first + size; e++) {
            char id[16];
            click_event ev = event(e, id);
            const catalog_entry *ce = catalog_get(cat, util_hash(ev.item_id));
            assert_int_equal(userstate_apply_click(&st, &p, &ev, ce->attr_hashes, ce->item.n_attrs,
                                                   0, e),
                             US_APPLIED);
        }
        float out[EVENTS * DIM];
        recommend_work w = {"u", 0, &st, before, out};
        char err[256];
        if (recommend_advance(r, cat, &w, 1, err, sizeof err) < 0) fail_msg("%s", err);
        memcpy(h[first], out, (size_t)(e - first) * DIM * sizeof(float));
    }
    userstate_clear(&st);
}

static void test_state_does_not_depend_on_batching_or_on_the_cache(void **state) {
    (void)state;
    catalog *cat = make_catalog(NULL);
    char err[256];
    recommender *cached = recommend_new(model_path, 4, 64 << 20, 64, err, sizeof err);
    recommender *uncached = recommend_new(model_path, 4, 0, 64, err, sizeof err);
    assert_non_null(cached);
    assert_non_null(uncached);
    static float a[EVENTS][DIM], b[EVENTS][DIM], c[EVENTS][DIM];
    const int one[] = {1}, mixed[] = {3, 1, 7, 2, 9};
    play(cached, cat, one, 1, a);       /* one step per event, states cached */
    play(cached, cat, mixed, 5, b);     /* again: the stale cached state is rebuilt */
    play(uncached, cat, mixed, 5, c);   /* every state rebuilt by a prefill */
    for (int e = 0; e < EVENTS; e++)
        for (int d = 0; d < DIM; d++) {
            assert_false(isnan(a[e][d]));
            assert_float_equal(a[e][d], b[e][d], 1e-4);
            assert_float_equal(a[e][d], c[e][d], 1e-4);
        }
    recommend_free(cached);
    recommend_free(uncached);
    catalog_free(cat);
}

static void test_picks_skip_bought_unavailable_and_the_events_item(void **state) {
    (void)state;
    catalog *cat = make_catalog("i3");
    char err[256];
    recommender *r = recommend_new(model_path, 8, 1 << 20, 64, err, sizeof err);
    assert_non_null(r);
    float h[DIM];
    for (int d = 0; d < DIM; d++) h[d] = (float)((d * 37) % 11) / 11.0f - 0.5f;
    user_state prefs;
    userstate_init(&prefs);
    uint64_t bought[] = {util_hash("i5"), util_hash("i9")};
    prefs.bought = bought;
    prefs.n_bought = 2;
    strategy_result res;
    recommend_query q = {h, &prefs,
                         {.k = N_ITEMS + 1, .max_reasons = 2, .at_s = 1700000000,
                          .half_life_s = 1e6, .locale = "en-US",
                          .exclude_item = util_hash("i7")},
                         &res};
    assert_int_equal(recommend_pick(r, cat, &q, 1, err, sizeof err), 0);
    /* 21 catalog items less i3 (out of stock), i5 and i9 (bought), i7 (the
     * event's own): 17, i20 among them through its attributes. */
    assert_int_equal(res.n_picks, 17);
    int saw_new = 0;
    for (size_t i = 0; i < res.n_picks; i++) {
        const char *id = res.picks[i].entry->item.item_id;
        assert_true(strcmp(id, "i3") && strcmp(id, "i5") && strcmp(id, "i9") && strcmp(id, "i7"));
        saw_new |= !strcmp(id, "i20");
        if (i) assert_true(res.picks[i - 1].score >= res.picks[i].score);
    }
    assert_true(saw_new);
    recommend_free(r);
    catalog_free(cat);
}

static void test_a_model_that_does_not_fit_is_refused(void **state) {
    (void)state;
    char err[256];
    /* The window (8) does not fit a sequence of 4 events. */
    assert_null(recommend_new(model_path, 8, 0, 4, err, sizeof err));
    assert_non_null(strstr(err, "state.sequence_length"));
    assert_null(recommend_new("/nonexistent/model.bin", 8, 0, 64, err, sizeof err));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_state_does_not_depend_on_batching_or_on_the_cache),
        cmocka_unit_test(test_picks_skip_bought_unavailable_and_the_events_item),
        cmocka_unit_test(test_a_model_that_does_not_fit_is_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
