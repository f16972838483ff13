/* test_userstate.c -- the rules of a user's state: watermarks, upstream
 * de-duplication, decay, bounds, and the hash form surviving a round trip. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "userstate.h"
#include "util.h"

static click_event ev(const char *id, int64_t ts_ms, event_type t, const char *item,
                      const char *cat) {
    click_event e = {0};
    e.event_id = (char *)id;
    e.user_id = (char *)"u1";
    e.ts_ms = ts_ms;
    e.type = t;
    e.item_id = (char *)item;
    e.category = (char *)cat;
    return e;
}

/* Encodes every field and concatenates names and values: two states encode
 * to the same bytes exactly when they hold the same data. */
static void encode_all(const user_state *s, buf *out) {
    userstate_fields f = {0};
    assert_int_equal(userstate_encode(s, ~0u, &f), 0);
    buf_reset(out);
    for (size_t i = 0; i < f.n; i++) {
        buf_puts(out, f.v[i].name);
        buf_put_u8(out, 0);
        buf_append(out, f.v[i].value.p, f.v[i].value.len);
        buf_put_u8(out, 0);
    }
    userstate_fields_free(&f);
}

static void test_redelivered_position_changes_nothing(void **unused) {
    userstate_params p;
    userstate_params_default(&p);
    user_state s;
    userstate_init(&s);
    click_event e1 = ev("e1", 1700000000000, EV_VIEW, "i1", "phones");
    click_event e2 = ev("e2", 1700000001000, EV_VIEW, "i2", "phones");
    assert_int_equal(userstate_apply_click(&s, &p, &e1, NULL, 0, 3, 100), US_APPLIED);
    assert_int_equal(userstate_apply_click(&s, &p, &e2, NULL, 0, 3, 101), US_APPLIED);
    buf before = BUF_INIT, after = BUF_INIT;
    encode_all(&s, &before);
    /* Both positions again, as after a crash before the commit. */
    assert_int_equal(userstate_apply_click(&s, &p, &e1, NULL, 0, 3, 100), US_ALREADY_APPLIED);
    assert_int_equal(userstate_apply_click(&s, &p, &e2, NULL, 0, 3, 101), US_ALREADY_APPLIED);
    encode_all(&s, &after);
    assert_int_equal(before.len, after.len);
    assert_memory_equal(before.p, after.p, before.len);
    assert_int_equal(s.events[EV_VIEW], 2);
    assert_int_equal(userstate_watermark(&s, US_TOPIC_CLICKSTREAM, 3), 101);
    /* Another partition has its own watermark. */
    assert_int_equal(userstate_watermark(&s, US_TOPIC_CLICKSTREAM, 4), -1);
    buf_free(&before);
    buf_free(&after);
    userstate_clear(&s);
}

static void test_same_event_id_within_window_counts_once(void **unused) {
    userstate_params p;
    userstate_params_default(&p);
    p.dedup_window_ms = 3600 * 1000;
    user_state s;
    userstate_init(&s);
    click_event a = ev("dup-1", 1700000000000, EV_ADD_TO_CART, "i1", "phones");
    assert_int_equal(userstate_apply_click(&s, &p, &a, NULL, 0, 0, 10), US_APPLIED);
    /* The producer retried: same id at a new offset, same time. */
    assert_int_equal(userstate_apply_click(&s, &p, &a, NULL, 0, 0, 11), US_DUPLICATE);
    assert_int_equal(s.events[EV_ADD_TO_CART], 1);
    assert_int_equal(s.duplicates, 1);
    assert_int_equal(s.n_seq, 1);
    /* The duplicate's position is applied too, so its redelivery is a no-op. */
    assert_int_equal(userstate_watermark(&s, US_TOPIC_CLICKSTREAM, 0), 11);
    /* Outside the window the same id is a new event again. */
    click_event late = ev("dup-1", 1700000000000 + 2 * 3600 * 1000, EV_ADD_TO_CART, "i1",
                          "phones");
    assert_int_equal(userstate_apply_click(&s, &p, &late, NULL, 0, 0, 12), US_APPLIED);
    assert_int_equal(s.events[EV_ADD_TO_CART], 2);
    userstate_clear(&s);
}

static void test_dedup_disabled_when_window_is_zero(void **unused) {
    userstate_params p;
    userstate_params_default(&p);
    p.dedup_window_ms = 0;
    user_state s;
    userstate_init(&s);
    click_event a = ev("x", 1700000000000, EV_VIEW, "i1", NULL);
    assert_int_equal(userstate_apply_click(&s, &p, &a, NULL, 0, 0, 1), US_APPLIED);
    assert_int_equal(userstate_apply_click(&s, &p, &a, NULL, 0, 0, 2), US_APPLIED);
    assert_int_equal(s.events[EV_VIEW], 2);
    assert_int_equal(s.n_seen, 0);
    userstate_clear(&s);
}

static void test_sequence_keeps_the_newest_events(void **unused) {
    userstate_params p;
    userstate_params_default(&p);
    p.max_sequence = 3;
    user_state s;
    userstate_init(&s);
    const char *items[] = {"a", "b", "c", "d", "e"};
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof id, "e%d", i);
        click_event e = ev(id, 1700000000000 + i * 1000, EV_CLICK, items[i], NULL);
        assert_int_equal(userstate_apply_click(&s, &p, &e, NULL, 0, 0, i), US_APPLIED);
    }
    assert_int_equal(s.n_seq, 3);
    assert_true(s.seq[0].item == util_hash("c"));
    assert_true(s.seq[2].item == util_hash("e"));
    assert_int_equal(s.seq[2].ts_s, 1700000004);
    assert_int_equal(s.seq[2].type, EV_CLICK);
    /* A search without an item is counted but is not part of the item sequence. */
    click_event q = ev("q", 1700000009000, EV_SEARCH, NULL, NULL);
    assert_int_equal(userstate_apply_click(&s, &p, &q, NULL, 0, 0, 9), US_APPLIED);
    assert_int_equal(s.n_seq, 3);
    assert_int_equal(s.events[EV_SEARCH], 1);
    /* Every item event ever appended is counted, also those trimmed since:
     * a model state built from the sequence checks itself against this. */
    assert_int_equal(s.seq_total, 5);
    userstate_clear(&s);
}

static void test_affinity_halves_after_one_half_life(void **unused) {
    userstate_params p;
    userstate_params_default(&p);
    p.half_life_s = 1000.0;
    user_state s;
    userstate_init(&s);
    uint64_t attrs[] = {util_hash("hd_screen")};
    click_event a = ev("a", 1700000000000, EV_PURCHASE, "i1", "phones"); /* weight 5 */
    click_event b = ev("b", 1700001000000, EV_VIEW, "i2", "watches");    /* 1000 s later, 1 */
    assert_int_equal(userstate_apply_click(&s, &p, &a, attrs, 1, 0, 0), US_APPLIED);
    assert_int_equal(userstate_apply_click(&s, &p, &b, NULL, 0, 0, 1), US_APPLIED);
    uint32_t now = 1700001000;
    assert_float_equal(userstate_affinity_at(&s.cats, util_hash("phones"), now, 1000.0), 2.5, 1e-5);
    assert_float_equal(userstate_affinity_at(&s.cats, util_hash("watches"), now, 1000.0), 1.0, 1e-6);
    assert_float_equal(userstate_affinity_at(&s.attrs, attrs[0], now + 2000, 1000.0), 0.625, 1e-5);
    /* Strongest first. */
    assert_true(s.cats.v[0].key == util_hash("phones"));
    /* Another phone view at the same time adds on top of the decayed score. */
    click_event c = ev("c", 1700001000000, EV_VIEW, "i3", "phones");
    assert_int_equal(userstate_apply_click(&s, &p, &c, NULL, 0, 0, 2), US_APPLIED);
    assert_float_equal(userstate_affinity_at(&s.cats, util_hash("phones"), now, 1000.0), 3.5, 1e-5);
    /* An event older than the newest adds its weight decayed to the newest time. */
    click_event old = ev("old", 1700000000000, EV_VIEW, "i4", "watches");
    assert_int_equal(userstate_apply_click(&s, &p, &old, NULL, 0, 0, 3), US_APPLIED);
    assert_float_equal(userstate_affinity_at(&s.cats, util_hash("watches"), now, 1000.0), 1.5, 1e-5);
    userstate_clear(&s);
}

static void test_affinities_keep_only_the_strongest(void **unused) {
    userstate_params p;
    userstate_params_default(&p);
    p.max_categories = 2;
    user_state s;
    userstate_init(&s);
    click_event a = ev("a", 1700000000000, EV_PURCHASE, "i1", "strong");
    click_event b = ev("b", 1700000000000, EV_ADD_TO_CART, "i2", "middle");
    click_event c = ev("c", 1700000000000, EV_VIEW, "i3", "weak");
    userstate_apply_click(&s, &p, &a, NULL, 0, 0, 0);
    userstate_apply_click(&s, &p, &b, NULL, 0, 0, 1);
    userstate_apply_click(&s, &p, &c, NULL, 0, 0, 2);
    assert_int_equal(s.cats.n, 2);
    assert_true(s.cats.v[0].key == util_hash("strong"));
    assert_true(s.cats.v[1].key == util_hash("middle"));
    userstate_clear(&s);
}

static void test_purchases_are_remembered_bounded(void **unused) {
    userstate_params p;
    userstate_params_default(&p);
    p.max_bought = 2;
    user_state s;
    userstate_init(&s);
    const char *items[] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++) {
        char id[16];
        snprintf(id, sizeof id, "p%d", i);
        click_event e = ev(id, 1700000000000 + i, EV_PURCHASE, items[i], NULL);
        userstate_apply_click(&s, &p, &e, NULL, 0, 0, i);
    }
    assert_false(userstate_has_bought(&s, util_hash("a")));
    assert_true(userstate_has_bought(&s, util_hash("b")));
    assert_true(userstate_has_bought(&s, util_hash("c")));
    click_event v = ev("v", 1700000000009, EV_VIEW, "d", NULL);
    userstate_apply_click(&s, &p, &v, NULL, 0, 0, 9);
    assert_false(userstate_has_bought(&s, util_hash("d")));
    userstate_clear(&s);
}

static void test_hash_fields_round_trip(void **unused) {
    userstate_params p;
    userstate_params_default(&p);
    user_state s, t;
    userstate_init(&s);
    userstate_init(&t);
    uint64_t attrs[] = {util_hash("a1"), util_hash("a2")};
    click_event e1 = ev("e1", 1700000000000, EV_VIEW, "i1", "phones");
    e1.locale = (char *)"zh-CN";
    click_event e2 = ev("e2", 1700000500000, EV_PURCHASE, "i2", "laptops");
    userstate_apply_click(&s, &p, &e1, attrs, 2, 1, 7);
    userstate_apply_click(&s, &p, &e2, attrs, 1, 2, 8);
    reaction r = {.reaction_id = (char *)"r1", .user_id = (char *)"u1", .type = RX_CLICK,
                  .ts_ms = 1700000600000};
    assert_int_equal(userstate_apply_reaction(&s, &p, &r, 5, 33), US_APPLIED);
    s.last_copy_ms = 1700000500000;
    assert_int_equal(userstate_outbox_add(&s, 2, 8, "copy-bytes", 10), 0);
    us_copyrec rec = {2, 8, 1700000500000, 0x1234567890abcdefULL, util_hash("i3"), 1,
                      US_COPYREC_HOLDOUT};
    assert_int_equal(userstate_copyrec_add(&s, &rec, 16, 86400000), 0);
    assert_int_equal(userstate_dismiss(&s, util_hash("i4"), 1700900000, 1700000600, 64), 0);
    userstate_revoke_consent(&s, 1700000700000);

    userstate_fields f = {0};
    assert_int_equal(userstate_encode(&s, ~0u, &f), 0);
    for (size_t i = 0; i < f.n; i++)
        assert_int_equal(userstate_decode_field(&t, f.v[i].name, strlen(f.v[i].name),
                                                f.v[i].value.p, f.v[i].value.len, NULL, 0),
                         0);
    userstate_fields_free(&f);
    userstate_mark_clean(&t);

    buf a = BUF_INIT, b = BUF_INIT;
    /* Loaded outbox entries are not fresh, so compare with s marked clean. */
    userstate_mark_clean(&s);
    encode_all(&s, &a);
    encode_all(&t, &b);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.p, b.p, a.len);
    assert_string_equal(t.locale, "zh-CN");
    assert_int_equal(t.seq_total, 2);
    assert_int_equal(userstate_watermark(&t, US_TOPIC_CLICKSTREAM, 2), 8);
    assert_int_equal(userstate_watermark(&t, US_TOPIC_REACTIONS, 5), 33);
    assert_int_equal(t.reactions[RX_CLICK], 1);
    const us_outbox *o = userstate_outbox_find(&t, 2, 8);
    assert_non_null(o);
    assert_memory_equal(o->msg.p, "copy-bytes", 10);
    const us_copyrec *got = userstate_copyrec_find(&t, 2, 8);
    assert_non_null(got);
    assert_true(got->ts_ms == rec.ts_ms && got->arm == rec.arm && got->item == rec.item &&
                got->segment == rec.segment && got->flags == rec.flags);
    assert_true(userstate_excluded(&t, util_hash("i4"), 1700899999));
    assert_false(userstate_excluded(&t, util_hash("i4"), 1700900000));
    assert_true(t.unsub_ms == 1700000700000);
    buf_free(&a);
    buf_free(&b);
    userstate_clear(&s);
    userstate_clear(&t);
}

static void test_malformed_blob_is_refused(void **unused) {
    user_state s;
    userstate_init(&s);
    char why[128];
    /* A sequence blob whose length is not a whole number of entries. */
    const char bad_seq[] = {1, 1, 2, 3};
    assert_int_equal(userstate_decode_field(&s, "seq", 3, bad_seq, sizeof bad_seq, why,
                                            sizeof why), -1);
    assert_non_null(strstr(why, "seq"));
    /* An unknown blob version. */
    const char v9[] = {9};
    assert_int_equal(userstate_decode_field(&s, "buy", 3, v9, 1, why, sizeof why), -1);
    /* A counter that is not a number. */
    assert_int_equal(userstate_decode_field(&s, "n.view", 6, "12x", 3, why, sizeof why), -1);
    /* Unknown fields are left alone, for forward compatibility. */
    assert_int_equal(userstate_decode_field(&s, "zz.future", 9, "1", 1, why, sizeof why), 0);
    userstate_clear(&s);
}

/* Records kept for attribution: bounded in number, and none older than the
 * window behind the newest, because nothing could be attributed to them. */
static void test_copy_records_keep_the_recent_within_the_window(void **unused) {
    user_state s;
    userstate_init(&s);
    const int64_t t0 = 1700000000000, window = 3600000;
    for (int i = 0; i < 6; i++) {
        us_copyrec r = {0, 10 + i, t0 + i * 60000, (uint64_t)i + 1, 0, 0, 0};
        assert_int_equal(userstate_copyrec_add(&s, &r, 4, window), 0);
    }
    assert_int_equal(s.n_copyrecs, 4); /* the 4 newest */
    assert_null(userstate_copyrec_find(&s, 0, 11));
    assert_non_null(userstate_copyrec_find(&s, 0, 12));
    assert_true(userstate_copyrec_last(&s, t0 + 3 * 60000 + 1)->offset == 13);
    assert_null(userstate_copyrec_last(&s, t0));
    /* A copy two hours later leaves only itself within the window. */
    us_copyrec late = {1, 3, t0 + 2 * window, 99, 0, 0, 0};
    userstate_copyrec_add(&s, &late, 4, window);
    assert_int_equal(s.n_copyrecs, 1);
    assert_true(s.copyrecs[0].arm == 99);
    /* The same position again replaces its record instead of adding one. */
    late.arm = 100;
    userstate_copyrec_add(&s, &late, 4, window);
    assert_int_equal(s.n_copyrecs, 1);
    assert_true(s.copyrecs[0].arm == 100);
    assert_true(s.dirty & US_DIRTY_COPYRECS);
    userstate_clear(&s);
}

static void test_dismissals_expire_and_are_bounded(void **unused) {
    user_state s;
    userstate_init(&s);
    assert_int_equal(userstate_dismiss(&s, 1, 1000, 0, 3), 0);
    userstate_dismiss(&s, 2, 2000, 0, 3);
    userstate_dismiss(&s, 1, 500, 0, 3); /* the later end stays */
    assert_true(userstate_excluded(&s, 1, 999));
    assert_false(userstate_excluded(&s, 1, 1000));
    userstate_dismiss(&s, 3, 3000, 0, 3);
    userstate_dismiss(&s, 4, 4000, 0, 3); /* full: the one ending first goes */
    assert_int_equal(s.n_dismissed, 3);
    assert_false(userstate_excluded(&s, 1, 0));
    assert_true(userstate_excluded(&s, 4, 3999));
    userstate_dismiss(&s, 5, 5000, 2500, 3); /* now 2500: item 2 has expired */
    assert_false(userstate_excluded(&s, 2, 0));
    assert_int_equal(s.n_dismissed, 3);
    /* Bought items stay excluded whatever the time. */
    s.bought = malloc(sizeof *s.bought);
    s.bought[0] = 42;
    s.n_bought = s.cap_bought = 1;
    assert_true(userstate_excluded(&s, 42, 4000000000u));
    userstate_clear(&s);
}

static void test_outbox_writes_only_fresh_entries_and_trims(void **unused) {
    user_state s;
    userstate_init(&s);
    userstate_outbox_add(&s, 0, 5, "a", 1);
    userstate_outbox_add(&s, 0, 9, "b", 1);
    userstate_outbox_add(&s, 1, 2, "c", 1);
    userstate_mark_clean(&s);
    userstate_outbox_add(&s, 0, 12, "d", 1);
    userstate_fields f = {0};
    assert_int_equal(userstate_encode(&s, US_DIRTY_OUTBOX, &f), 0);
    assert_int_equal(f.n, 1);
    assert_string_equal(f.v[0].name, "o.0.12");
    userstate_fields_free(&f);
    userstate_outbox_trim(&s, 0, 10);
    assert_null(userstate_outbox_find(&s, 0, 5));
    assert_null(userstate_outbox_find(&s, 0, 9));
    assert_non_null(userstate_outbox_find(&s, 0, 12));
    assert_non_null(userstate_outbox_find(&s, 1, 2));
    userstate_clear(&s);
}

static void test_copy_is_deep_and_equal(void **unused) {
    userstate_params p;
    userstate_params_default(&p);
    user_state s, c;
    userstate_init(&s);
    click_event e = ev("e", 1700000000000, EV_PURCHASE, "i", "cat");
    userstate_apply_click(&s, &p, &e, NULL, 0, 0, 1);
    userstate_outbox_add(&s, 0, 1, "xyz", 3);
    us_copyrec rec = {0, 1, 1700000000000, 5, 6, 0, 0};
    userstate_copyrec_add(&s, &rec, 8, 1000);
    userstate_dismiss(&s, 9, 1800000000, 1700000000, 8);
    assert_int_equal(userstate_copy(&c, &s), 0);
    buf a = BUF_INIT, b = BUF_INIT;
    encode_all(&s, &a);
    encode_all(&c, &b);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.p, b.p, a.len);
    userstate_clear(&s); /* the copy must not share memory with s */
    assert_int_equal(c.n_bought, 1);
    assert_memory_equal(userstate_outbox_find(&c, 0, 1)->msg.p, "xyz", 3);
    assert_true(userstate_copyrec_find(&c, 0, 1)->item == 6);
    assert_true(userstate_excluded(&c, 9, 1700000001));
    buf_free(&a);
    buf_free(&b);
    userstate_clear(&c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_redelivered_position_changes_nothing),
        cmocka_unit_test(test_same_event_id_within_window_counts_once),
        cmocka_unit_test(test_dedup_disabled_when_window_is_zero),
        cmocka_unit_test(test_sequence_keeps_the_newest_events),
        cmocka_unit_test(test_affinity_halves_after_one_half_life),
        cmocka_unit_test(test_affinities_keep_only_the_strongest),
        cmocka_unit_test(test_purchases_are_remembered_bounded),
        cmocka_unit_test(test_hash_fields_round_trip),
        cmocka_unit_test(test_malformed_blob_is_refused),
        cmocka_unit_test(test_copy_records_keep_the_recent_within_the_window),
        cmocka_unit_test(test_dismissals_expire_and_are_bounded),
        cmocka_unit_test(test_outbox_writes_only_fresh_entries_and_trims),
        cmocka_unit_test(test_copy_is_deep_and_equal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
