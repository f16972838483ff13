/* test_intent.c -- which intent an event triggers (streaks, purchases,
 * returns), the delayed triggers' encoding, and what a trigger that arrives
 * may still promote. User states are built by applying events, as the
 * service does. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalog.h"
#include "intent.h"
#include "metrics.h"
#include "userstate.h"
#include "util.h"

#define T0 1700000000000LL
#define MIN 60000LL
#define DAY 86400000LL

static void add_item(catalog *c, const char *id, const char *category, int64_t price,
                     const char *currency) {
    catalog_item it = {0};
    it.item_id = strdup(id);
    it.category = category ? strdup(category) : NULL;
    it.available = 1;
    it.titles = calloc(1, sizeof *it.titles);
    it.titles[0] = (localized){strdup("en-US"), strdup(id)};
    it.n_titles = 1;
    it.has_price = currency != NULL;
    it.price_micros = price;
    it.currency = currency ? strdup(currency) : NULL;
    it.attrs = calloc(1, sizeof *it.attrs);
    it.attrs[0].id = strdup("hd_screen");
    it.attrs[0].phrases = calloc(1, sizeof *it.attrs[0].phrases);
    it.attrs[0].phrases[0] = (localized){strdup("en-US"), strdup("an HD screen")};
    it.attrs[0].n_phrases = 1;
    it.n_attrs = 1;
    assert_int_equal(catalog_upsert(c, &it), 0);
}

typedef struct {
    catalog *cat;
    user_state u;
    userstate_params up;
    intent_rules rules;
    int64_t offset;
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    f->cat = catalog_new();
    add_item(f->cat, "phone-a", "phones", 2999000000, "USD");
    add_item(f->cat, "phone-b", "phones", 3999000000, "USD");
    add_item(f->cat, "phone-c", "phones", 1999000000, "USD");
    add_item(f->cat, "watch-a", "watches", 999000000, "USD");
    userstate_init(&f->u);
    userstate_params_default(&f->up);
    intent_rules_default(&f->rules);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    userstate_clear(&f->u);
    catalog_free(f->cat);
    free(f);
    return 0;
}

/* Applies one event and returns the intent it triggers, as the service
 * asks: with the user's latest event time before it. */
static int event(fixture *f, event_type type, const char *item, int64_t ts_ms) {
    char id[32];
    snprintf(id, sizeof id, "e%lld", (long long)f->offset);
    click_event e = {.event_id = id, .user_id = "u", .ts_ms = ts_ms, .type = type,
                     .item_id = (char *)item};
    int64_t prev = f->u.last_ms;
    const catalog_entry *ce = item ? catalog_get(f->cat, util_hash(item)) : NULL;
    assert_int_equal(userstate_apply_click(&f->u, &f->up, &e, ce ? ce->attr_hashes : NULL,
                                           ce ? ce->item.n_attrs : 0, 0, f->offset++),
                     US_APPLIED);
    return intent_of_event(&f->rules, f->cat, &f->u, &e, prev);
}

static void test_a_streak_of_views_in_one_category_is_a_recommendation(void **state) {
    fixture *f = *state;
    assert_int_equal(event(f, EV_VIEW, "phone-a", T0), -1);
    assert_int_equal(event(f, EV_VIEW, "watch-a", T0 + 1 * MIN), -1); /* another category */
    assert_int_equal(event(f, EV_VIEW, "phone-b", T0 + 2 * MIN), -1); /* 2 phones */
    assert_int_equal(event(f, EV_VIEW, "phone-c", T0 + 3 * MIN), INTENT_RECOMMENDATION);
    click_event e = {.ts_ms = T0 + 3 * MIN, .type = EV_VIEW, .item_id = "phone-c"};
    assert_int_equal(intent_streak(&f->rules, f->cat, &f->u, &e), 3);
}

static void test_a_streak_counts_only_within_its_window(void **state) {
    fixture *f = *state;
    assert_int_equal(event(f, EV_VIEW, "phone-a", T0), -1);
    assert_int_equal(event(f, EV_VIEW, "phone-b", T0 + 5 * MIN), -1);
    /* 10 minutes and a second after the first: it has left the window. */
    assert_int_equal(event(f, EV_VIEW, "phone-c", T0 + 10 * MIN + 1000), -1);
    assert_int_equal(event(f, EV_VIEW, "phone-a", T0 + 11 * MIN), INTENT_RECOMMENDATION);
}

static void test_only_streak_types_count_and_a_search_never_ends_a_streak(void **state) {
    fixture *f = *state;
    f->rules.streak_types = 1u << EV_VIEW;
    assert_int_equal(event(f, EV_VIEW, "phone-a", T0), -1);
    assert_int_equal(event(f, EV_FAVORITE, "phone-b", T0 + MIN), -1);
    assert_int_equal(event(f, EV_VIEW, "phone-c", T0 + 2 * MIN), -1); /* the favorite is not one */
    assert_int_equal(event(f, EV_SEARCH, NULL, T0 + 3 * MIN), -1);
    assert_int_equal(event(f, EV_VIEW, "phone-b", T0 + 4 * MIN), INTENT_RECOMMENDATION);
}

static void test_streak_of_one_makes_every_categorized_event_a_candidate(void **state) {
    fixture *f = *state;
    f->rules.streak = 1;
    assert_int_equal(event(f, EV_VIEW, "phone-a", T0), INTENT_RECOMMENDATION);
    assert_int_equal(event(f, EV_VIEW, "unknown-item", T0 + MIN), -1); /* no category known */
}

static void test_purchase_is_a_cross_sell_and_a_return_a_re_engagement(void **state) {
    fixture *f = *state;
    assert_int_equal(event(f, EV_VIEW, "phone-a", T0), -1); /* the first event is no return */
    assert_int_equal(event(f, EV_PURCHASE, "phone-a", T0 + MIN), INTENT_CROSS_SELL);
    /* 14 days later, exactly the absence: welcome back. */
    assert_int_equal(event(f, EV_VIEW, "watch-a", T0 + MIN + 14 * DAY), INTENT_RE_ENGAGEMENT);
    assert_int_equal(event(f, EV_VIEW, "watch-a", T0 + 2 * MIN + 14 * DAY), -1);
    /* A purchase after an absence is a cross-sell first. */
    assert_int_equal(event(f, EV_PURCHASE, "watch-a", T0 + 30 * DAY), INTENT_CROSS_SELL);
}

static void test_disabled_intents_never_trigger(void **state) {
    fixture *f = *state;
    f->rules.enabled[INTENT_CROSS_SELL] = 0;
    f->rules.enabled[INTENT_RE_ENGAGEMENT] = 0;
    f->rules.streak = 1;
    assert_int_equal(event(f, EV_VIEW, "phone-a", T0), INTENT_RECOMMENDATION);
    /* Neither a return nor a purchase: what is left is the streak rule. */
    assert_int_equal(event(f, EV_PURCHASE, "phone-a", T0 + 20 * DAY), INTENT_RECOMMENDATION);
    f->rules.enabled[INTENT_RECOMMENDATION] = 0;
    assert_int_equal(event(f, EV_VIEW, "phone-a", T0 + 21 * DAY), -1);
}

static void test_trigger_member_is_deterministic_and_round_trips(void **state) {
    (void)state;
    trigger t = {.intent = INTENT_PRICE_DROP, .user_id = "李雷", .item_id = "phone \"a\"",
                 .has_old_price = 1, .old_price_micros = 3999000000, .currency = "CNY"};
    buf a = BUF_INIT, b = BUF_INIT;
    assert_int_equal(trigger_member(&t, &a), 0);
    assert_int_equal(trigger_member(&t, &b), 0);
    assert_string_equal(a.p, b.p);
    assert_string_equal(a.p, "{\"currency\":\"CNY\",\"intent\":\"price_drop\",\"item_id\":"
                             "\"phone \\\"a\\\"\",\"old_price_micros\":3999000000,"
                             "\"user_id\":\"李雷\"}");
    trigger back = {0};
    char err[128];
    assert_int_equal(trigger_decode(a.p, a.len, &back, err, sizeof err), 0);
    assert_int_equal(back.intent, INTENT_PRICE_DROP);
    assert_string_equal(back.user_id, "李雷");
    assert_string_equal(back.item_id, "phone \"a\"");
    assert_true(back.has_old_price && back.old_price_micros == 3999000000);
    assert_null(back.id); /* a member is no message */

    /* The message adds id, due time and since. */
    t.ts_ms = T0;
    t.since_ms = T0;
    assert_int_equal(trigger_set_id(&t), 0);
    assert_string_equal(t.id, "price_drop:phone \"a\":1700000000000");
    buf_reset(&a);
    assert_int_equal(trigger_encode(&t, &a), 0);
    assert_int_equal(trigger_decode(a.p, a.len, &back, err, sizeof err), 0);
    assert_string_equal(back.id, t.id);
    assert_true(back.ts_ms == T0 && back.since_ms == T0);
    free(t.id);
    trigger_clear(&back);
    buf_free(&a);
    buf_free(&b);
}

static void test_malformed_triggers_are_refused_with_a_reason(void **state) {
    (void)state;
    static const struct {
        const char *json, *why;
    } bad[] = {
        {"nope", "not JSON"},
        {"[1]", "not a JSON object"},
        {"{\"intent\":\"recommendation\",\"user_id\":\"u\",\"item_id\":\"i\"}",
         "intent must be cart_reminder or price_drop"},
        {"{\"intent\":\"cart_reminder\",\"user_id\":\"\",\"item_id\":\"i\"}",
         "user_id and item_id must be non-empty strings"},
        {"{\"intent\":\"price_drop\",\"user_id\":\"u\",\"item_id\":\"i\"}",
         "a price_drop needs old_price_micros and currency"},
        {"{\"intent\":\"cart_reminder\",\"user_id\":\"u\",\"item_id\":\"i\",\"id\":\"x\"}",
         "a trigger message needs id, ts and since"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        trigger t = {0};
        char err[128] = "";
        assert_int_equal(trigger_decode(bad[i].json, strlen(bad[i].json), &t, err, sizeof err),
                         -1);
        if (!strstr(err, bad[i].why)) fail_msg("%s: got \"%s\"", bad[i].json, err);
        assert_null(t.user_id);
    }
}

static trigger cart_trigger(const char *item, int64_t since_ms) {
    return (trigger){.intent = INTENT_CART_REMINDER, .user_id = "u", .item_id = (char *)item,
                     .since_ms = since_ms, .ts_ms = since_ms + 3600000};
}

static void test_a_cart_reminder_holds_until_the_item_is_bought(void **state) {
    fixture *f = *state;
    event(f, EV_PURCHASE, "phone-b", T0 - DAY); /* bought before: not this cart */
    event(f, EV_ADD_TO_CART, "phone-b", T0);
    trigger t = cart_trigger("phone-b", T0);
    assert_int_equal(intent_check_trigger(&f->rules, f->cat, &f->u, &t), 0);
    event(f, EV_PURCHASE, "phone-b", T0 + 30 * MIN);
    assert_int_equal(intent_check_trigger(&f->rules, f->cat, &f->u, &t),
                     MET_SUPPRESSED_ALREADY_BOUGHT);
    /* An item the catalog no longer has is nothing to promote. */
    t = cart_trigger("gone", T0);
    assert_int_equal(intent_check_trigger(&f->rules, f->cat, &f->u, &t),
                     MET_SUPPRESSED_NO_CANDIDATES);
}

static void test_a_price_drop_holds_while_the_price_stays_low(void **state) {
    fixture *f = *state;
    trigger t = {.intent = INTENT_PRICE_DROP, .user_id = "u", .item_id = "phone-b",
                 .has_old_price = 1, .old_price_micros = 4999000000, .currency = "USD"};
    assert_int_equal(intent_check_trigger(&f->rules, f->cat, &f->u, &t), 0); /* 3999 < 4999 */
    t.old_price_micros = 4100000000; /* 2.5 % above the price now: below min_percent */
    assert_int_equal(intent_check_trigger(&f->rules, f->cat, &f->u, &t),
                     MET_SUPPRESSED_PRICE_RESTORED);
    t.old_price_micros = 4999000000;
    t.currency = "CNY";
    assert_int_equal(intent_check_trigger(&f->rules, f->cat, &f->u, &t),
                     MET_SUPPRESSED_PRICE_RESTORED);
    t.currency = "USD";
    event(f, EV_PURCHASE, "phone-b", T0);
    assert_int_equal(intent_check_trigger(&f->rules, f->cat, &f->u, &t),
                     MET_SUPPRESSED_ALREADY_BOUGHT);
}

static void test_the_subject_is_the_one_pick_with_reasons_from_data(void **state) {
    fixture *f = *state;
    event(f, EV_VIEW, "phone-a", T0); /* the user now likes hd_screen */
    strategy_params p = {.k = 3, .max_reasons = 3, .at_s = (uint32_t)(T0 / 1000),
                         .half_life_s = 86400, .locale = "en-US"};
    strategy_result r;
    assert_int_equal(intent_subject(f->cat, &f->u, &p, "phone-b", &r), 1);
    assert_int_equal(r.n_picks, 1);
    assert_string_equal(r.picks[0].entry->item.item_id, "phone-b");
    assert_string_equal(r.picks[0].title, "phone-b");
    assert_int_equal(r.n_reasons, 1);
    assert_string_equal(r.reasons[0].text, "an HD screen");
    assert_int_equal(intent_subject(f->cat, &f->u, &p, "gone", &r), 0);
}

/* A trigger produced twice (its scanner crashed before removing it) is an
 * upstream duplicate the second time; a redelivered one is already applied. */
static void test_a_trigger_twice_is_a_duplicate_and_a_redelivery_a_no_op(void **state) {
    fixture *f = *state;
    assert_int_equal(userstate_apply_trigger(&f->u, &f->up, "cart_reminder:phone-a:1", T0, 2, 10),
                     US_APPLIED);
    assert_int_equal(userstate_apply_trigger(&f->u, &f->up, "cart_reminder:phone-a:1", T0, 2, 11),
                     US_DUPLICATE);
    assert_int_equal(userstate_apply_trigger(&f->u, &f->up, "cart_reminder:phone-b:1", T0, 2, 11),
                     US_ALREADY_APPLIED);
    assert_int_equal(userstate_watermark(&f->u, US_TOPIC_TRIGGERS, 2), 11);
    assert_int_equal(userstate_watermark(&f->u, US_TOPIC_CLICKSTREAM, 2), -1);
    /* The watermark survives the hash round trip as w.t.<partition>. */
    userstate_fields fields = {0};
    assert_int_equal(userstate_encode(&f->u, ~0u, &fields), 0);
    user_state back;
    userstate_init(&back);
    int seen_field = 0;
    for (size_t i = 0; i < fields.n; i++) {
        seen_field |= !strcmp(fields.v[i].name, "w.t.2");
        char err[128];
        assert_int_equal(userstate_decode_field(&back, fields.v[i].name, strlen(fields.v[i].name),
                                                fields.v[i].value.p ? fields.v[i].value.p : "",
                                                fields.v[i].value.len, err, sizeof err),
                         0);
    }
    assert_true(seen_field);
    assert_int_equal(userstate_watermark(&back, US_TOPIC_TRIGGERS, 2), 11);
    userstate_clear(&back);
    userstate_fields_free(&fields);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_a_streak_of_views_in_one_category_is_a_recommendation,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_streak_counts_only_within_its_window, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_only_streak_types_count_and_a_search_never_ends_a_streak, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_streak_of_one_makes_every_categorized_event_a_candidate, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_purchase_is_a_cross_sell_and_a_return_a_re_engagement, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disabled_intents_never_trigger, setup, teardown),
        cmocka_unit_test(test_trigger_member_is_deterministic_and_round_trips),
        cmocka_unit_test(test_malformed_triggers_are_refused_with_a_reason),
        cmocka_unit_test_setup_teardown(test_a_cart_reminder_holds_until_the_item_is_bought,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_price_drop_holds_while_the_price_stays_low, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_the_subject_is_the_one_pick_with_reasons_from_data,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_a_trigger_twice_is_a_duplicate_and_a_redelivery_a_no_op, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
