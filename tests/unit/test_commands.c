/* test_commands.c -- the option values the subcommands share: whole numbers
 * and numbers in a range with nothing after them, and the event types a
 * sequence file may hold. */
#include "testutil.h"

#include <stdint.h>

#include "commands.h"
#include "records.h"

static void test_int_takes_whole_numbers_in_range_and_nothing_else(void **unused) {
    int64_t v = -7;
    assert_int_equal(commands_int("42", 0, 100, &v), 0);
    assert_int_equal(v, 42);
    assert_int_equal(commands_int("9223372036854775807", 0, INT64_MAX, &v), 0);
    assert_true(v == INT64_MAX);
    v = -7;
    /* Garbage, trailing text, empty, out of range, beyond long long: refused
     * and *out untouched. */
    const char *bad[] = {"", "abc", "12abc", "1.5", "-1", "101", "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(commands_int(bad[i], 0, 100, &v), -1);
    assert_int_equal(v, -7);
}

static void test_double_takes_numbers_in_range(void **unused) {
    double v = -1;
    assert_int_equal(commands_double("0.25", 0, 1, &v), 0);
    assert_true(v == 0.25);
    assert_int_equal(commands_double("1e-3", 0, 1, &v), 0);
    assert_int_equal(commands_double("nan", 0, 1, &v), -1);
    assert_int_equal(commands_double("2", 0, 1, &v), -1);
    assert_int_equal(commands_double("0.5x", 0, 1, &v), -1);
    assert_int_equal(commands_double("1e999", 0, 1e308, &v), -1);
}

static void test_event_type_is_one_that_names_an_item(void **unused) {
    assert_int_equal(commands_event_type("purchase"), EV_PURCHASE);
    assert_int_equal(commands_event_type("add_to_cart"), EV_ADD_TO_CART);
    assert_int_equal(commands_event_type("favorite"), EV_FAVORITE);
    assert_int_equal(commands_event_type("search"), -1); /* names no item */
    assert_int_equal(commands_event_type("buy"), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_int_takes_whole_numbers_in_range_and_nothing_else),
        cmocka_unit_test(test_double_takes_numbers_in_range),
        cmocka_unit_test(test_event_type_is_one_that_names_an_item),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
