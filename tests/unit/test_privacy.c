/* test_privacy.c -- control messages in and out, and which index entries
 * name a user (so that forget removes exactly theirs, whatever their id). */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "intent.h"
#include "privacy.h"

static void test_control_messages_round_trip(void **state) {
    (void)state;
    privacy_request r = {.action = PRIVACY_OPT_OUT, .user_id = "李雷", .ts_ms = 1764547200000};
    buf out = BUF_INIT;
    assert_int_equal(privacy_encode(&r, &out), 0);
    assert_string_equal(out.p, "{\"ts\":1764547200000,\"type\":\"opt_out\",\"user_id\":\"李雷\"}");
    privacy_request back = {0};
    char err[128];
    assert_int_equal(privacy_parse(out.p, out.len, &back, err, sizeof err), 0);
    assert_int_equal(back.action, PRIVACY_OPT_OUT);
    assert_string_equal(back.user_id, "李雷");
    assert_true(back.ts_ms == 1764547200000);
    static const char forget[] = "{\"type\": \"forget\", \"user_id\": \"u-1\"}";
    assert_int_equal(privacy_parse(forget, strlen(forget), &back, err, sizeof err), 0);
    assert_int_equal(back.action, PRIVACY_FORGET);
    assert_true(back.ts_ms == 0);
    privacy_request_clear(&back);
    buf_free(&out);
}

static void test_bad_control_messages_are_refused_with_a_reason(void **state) {
    (void)state;
    static const struct {
        const char *json, *why;
    } bad[] = {
        {"", "not JSON"},
        {"{\"type\":\"delete\",\"user_id\":\"u\"}", "type must be forget, opt_out or opt_in"},
        {"{\"type\":\"forget\"}", "user_id must be a non-empty string"},
        {"{\"type\":\"forget\",\"user_id\":\"\"}", "user_id must be a non-empty string"},
        {"{\"type\":\"opt_in\",\"user_id\":\"u\",\"ts\":\"now\"}", "ts must be an integer"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        privacy_request r = {0};
        char err[128] = "";
        assert_int_equal(privacy_parse(bad[i].json, strlen(bad[i].json), &r, err, sizeof err), -1);
        if (!strstr(err, bad[i].why)) fail_msg("%s: got \"%s\"", bad[i].json, err);
        assert_null(r.user_id);
    }
}

static int names(const char *member, const char *user) {
    return privacy_member_names(member, strlen(member), user);
}

static void test_index_entries_name_exactly_one_user(void **state) {
    (void)state;
    /* Outbox index "<offset>:<user>" and watchers "<partition>:<user>". */
    assert_true(names("1234:zoe", "zoe"));
    assert_false(names("1234:zoey", "zoe"));
    assert_false(names("1234:xzoe", "zoe"));
    assert_true(names("7:a:b", "a:b")); /* a colon in the id is fine */
    assert_false(names(":zoe", "zoe"));
    assert_false(names("zoe", "zoe"));
    /* Due sets: the trigger's JSON, whatever else it holds. */
    trigger t = {.intent = INTENT_CART_REMINDER, .user_id = "zoe", .item_id = "1234:zoe"};
    buf m = BUF_INIT;
    assert_int_equal(trigger_member(&t, &m), 0);
    assert_true(names(m.p, "zoe"));
    assert_false(names(m.p, "1234:zoe"));
    assert_false(names("{not json", "zoe"));
    buf_free(&m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_control_messages_round_trip),
        cmocka_unit_test(test_bad_control_messages_are_refused_with_a_reason),
        cmocka_unit_test(test_index_entries_name_exactly_one_user),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
