/* test_util.c -- util_redact(): a secret quoted in a message is masked
 * wherever and however often it appears, and the buffer's bound holds. */
#include "testutil.h"

#include <stdint.h>
#include <string.h>

#include "util.h"

static void test_redact_masks_every_occurrence(void **unused) {
    char s[128] = "Invalid value \"hunter2\" for hunter2-ish property";
    util_redact(s, sizeof s, "hunter2");
    assert_string_equal(s, "Invalid value \"***\" for ***-ish property");
}

static void test_redact_masks_a_secret_shorter_than_the_mask(void **unused) {
    char s[32] = "a=x, b=x";
    util_redact(s, sizeof s, "x");
    assert_string_equal(s, "a=***, b=***");
}

static void test_redact_never_leaves_part_of_a_secret_when_the_buffer_is_full(void **unused) {
    /* Growing "k" to "***" cannot fit: the text is cut rather than left holding it. */
    char s[8] = "abcde k";
    util_redact(s, sizeof s, "k");
    assert_null(strchr(s, 'k'));
    assert_true(strlen(s) < sizeof s);
    char t[6] = "abc k";
    util_redact(t, sizeof t, "k");
    assert_string_equal(t, "abc ");
}

static void test_redact_leaves_text_without_the_secret_alone(void **unused) {
    char s[32] = "nothing to hide";
    util_redact(s, sizeof s, "secret");
    assert_string_equal(s, "nothing to hide");
    util_redact(s, sizeof s, "");
    assert_string_equal(s, "nothing to hide");
}

static void test_redact_terminates_when_the_secret_is_part_of_the_mask(void **unused) {
    char s[32] = "a*b";
    util_redact(s, sizeof s, "*");
    assert_string_equal(s, "a***b");
}

static void test_parse_time_takes_unix_ms_and_utc_iso8601_only(void **unused) {
    int64_t ms;
    assert_int_equal(util_parse_time("1764547200000", &ms), 0);
    assert_int_equal(ms, 1764547200000LL);
    assert_int_equal(util_parse_time("2025-12-01", &ms), 0);
    assert_int_equal(ms, 1764547200000LL);
    assert_int_equal(util_parse_time("2025-12-01T00:00:01.5Z", &ms), 0);
    assert_int_equal(ms, 1764547201500LL);
    assert_int_equal(util_parse_time("2025-12-01T00:00:01", &ms), -1); /* no zone: ambiguous */
    assert_int_equal(util_parse_time("2025-13-01", &ms), -1);
    assert_int_equal(util_parse_time("yesterday", &ms), -1);
    assert_int_equal(util_parse_time("", &ms), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_redact_masks_every_occurrence),
        cmocka_unit_test(test_redact_masks_a_secret_shorter_than_the_mask),
        cmocka_unit_test(test_redact_never_leaves_part_of_a_secret_when_the_buffer_is_full),
        cmocka_unit_test(test_redact_leaves_text_without_the_secret_alone),
        cmocka_unit_test(test_redact_terminates_when_the_secret_is_part_of_the_mask),
        cmocka_unit_test(test_parse_time_takes_unix_ms_and_utc_iso8601_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
