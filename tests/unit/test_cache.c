/* test_cache.c -- the state cache stays within its byte budget, evicts the
 * least recently used users first, and forgets revoked partitions. */
#include "testutil.h"

#include <stdio.h>
#include <string.h>

#include "cache.h"
#include "util.h"

/* A state with n sequence events, so that sizes differ. */
static void make_state(user_state *s, int n) {
    userstate_params p;
    userstate_params_default(&p);
    userstate_init(s);
    for (int i = 0; i < n; i++) {
        char id[16];
        snprintf(id, sizeof id, "e%d", i);
        click_event e = {.event_id = id, .user_id = (char *)"u", .ts_ms = 1700000000000 + i,
                         .type = EV_VIEW, .item_id = id};
        userstate_apply_click(s, &p, &e, NULL, 0, 0, i);
    }
}

static void test_budget_is_never_exceeded(void **unused) {
    size_t budget = 64 * 1024;
    cache *c = cache_new(budget);
    for (int u = 0; u < 500; u++) {
        char id[16];
        snprintf(id, sizeof id, "user%d", u);
        user_state s;
        make_state(&s, 1 + u % 40);
        assert_int_equal(cache_put(c, id, &s, u % 4, -1), 0);
        assert_true(cache_bytes(c) <= budget);
    }
    assert_true(cache_evictions(c) > 0);
    assert_true(cache_count(c) > 0);
    cache_free(c);
}

static void test_least_recently_used_is_evicted_first(void **unused) {
    user_state s;
    /* Measure what one entry costs, then allow exactly three. */
    cache *probe = cache_new(1 << 20);
    make_state(&s, 5);
    cache_put(probe, "a", &s, 0, -1);
    size_t one = cache_bytes(probe);
    cache_free(probe);
    cache *c = cache_new(3 * one);
    const char *ids[] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++) {
        make_state(&s, 5);
        cache_put(c, ids[i], &s, 0, -1);
    }
    /* Touch "a" by taking it and putting it back: "b" is now the oldest. */
    assert_int_equal(cache_take(c, "a", &s), 1);
    assert_int_equal(s.events[EV_VIEW], 5);
    cache_put(c, "a", &s, 0, -1);
    make_state(&s, 5);
    cache_put(c, "d", &s, 0, -1);
    assert_null(cache_peek(c, "b"));
    assert_non_null(cache_peek(c, "a"));
    assert_non_null(cache_peek(c, "d"));
    cache_free(c);
}

static void test_revoked_partition_users_are_dropped(void **unused) {
    cache *c = cache_new(1 << 20);
    user_state s;
    make_state(&s, 2);
    cache_put(c, "p0", &s, 0, 0);
    make_state(&s, 2);
    cache_put(c, "p1", &s, 1, 1);
    make_state(&s, 2);
    cache_put(c, "r1", &s, -1, 1);
    assert_int_equal(cache_drop_partition(c, US_TOPIC_CLICKSTREAM, 1), 1);
    assert_null(cache_peek(c, "p1"));
    assert_int_equal(cache_drop_partition(c, US_TOPIC_REACTIONS, 1), 1);
    assert_null(cache_peek(c, "r1"));
    assert_non_null(cache_peek(c, "p0"));
    assert_int_equal(cache_count(c), 1);
    /* Taking removes; a second take finds nothing. */
    assert_int_equal(cache_take(c, "p0", &s), 1);
    userstate_clear(&s);
    assert_int_equal(cache_take(c, "p0", &s), 0);
    assert_int_equal(cache_bytes(c), 0);
    cache_free(c);
}

static void test_zero_budget_holds_nothing(void **unused) {
    cache *c = cache_new(0);
    user_state s;
    make_state(&s, 1);
    assert_int_equal(cache_put(c, "x", &s, 0, -1), 0);
    assert_int_equal(cache_count(c), 0);
    cache_free(c);
    cache_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_budget_is_never_exceeded),
        cmocka_unit_test(test_least_recently_used_is_evicted_first),
        cmocka_unit_test(test_revoked_partition_users_are_dropped),
        cmocka_unit_test(test_zero_budget_holds_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
