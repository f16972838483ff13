/* test_range.c -- a bounded run's bookkeeping: which events may make copies,
 * when a partition is read to its end (and again not, after a rewind), how
 * far the run got, and the progress line with its rate and time left. */
#include "testutil.h"

#include <string.h>

#include "range.h"
#include "userstate.h"

enum { C = US_TOPIC_CLICKSTREAM, R = US_TOPIC_REACTIONS };

static void test_copies_only_from_copy_from_up_to_the_end(void **unused) {
    range *r = range_new();
    assert_int_equal(range_add(r, "clicks", C, 0, 10, 20, 30), 0);
    assert_false(range_copy_wanted(r, C, 0, 10)); /* warm-up: state only */
    assert_false(range_copy_wanted(r, C, 0, 19));
    assert_true(range_copy_wanted(r, C, 0, 20));
    assert_true(range_copy_wanted(r, C, 0, 29));
    assert_false(range_copy_wanted(r, C, 0, 30)); /* past the end */
    /* Another partition, or the same number on the other topic, is not in the range. */
    assert_false(range_copy_wanted(r, C, 1, 25));
    assert_false(range_copy_wanted(r, R, 0, 25));
    range_free(r);
}

static void test_offsets_are_clamped_into_the_range(void **unused) {
    range *r = range_new();
    range_add(r, "clicks", C, 0, 10, 5, 20);   /* copies from before the start */
    range_add(r, "clicks", C, 1, 10, 50, 20);  /* copies from after the end: none */
    range_add(r, "clicks", C, 2, 10, 10, 4);   /* an end before the start: nothing */
    assert_int_equal(range_at(r, 0)->copy_from, 10);
    assert_int_equal(range_at(r, 1)->copy_from, 20);
    assert_false(range_copy_wanted(r, C, 1, 19));
    assert_int_equal(range_at(r, 2)->end, 10);
    assert_true(range_at(r, 2)->reached); /* nothing to read: done from the outset */
    assert_false(range_at(r, 0)->reached);
    assert_int_equal(range_total(r), 20);
    range_free(r);
}

static void test_the_end_is_reached_past_it_or_at_eof_and_not_after_a_rewind(void **unused) {
    range *r = range_new();
    range_add(r, "clicks", C, 0, 0, 0, 5);
    range_add(r, "reactions", R, 0, 0, 0, 3);
    assert_false(range_past_end(r, C, 0, 4));
    assert_false(range_find(r, C, 0)->reached);
    assert_true(range_past_end(r, C, 0, 5)); /* dropped: the topic has grown since */
    assert_true(range_find(r, C, 0)->reached);
    assert_false(range_all_reached(r));
    range_eof(r, R, 0); /* the log ended (its last offsets were deleted, say) */
    assert_true(range_all_reached(r));
    /* A failed batch runs again: the partition has to be read once more. */
    range_rewound(r, C, 0);
    assert_false(range_all_reached(r));
    assert_false(range_past_end(r, C, 0, 2));
    /* A message of a partition outside the range is dropped. */
    assert_true(range_past_end(r, C, 7, 0));
    range_free(r);
}

static void test_offsets_gone_before_the_first_message_are_counted_missing(void **unused) {
    range *r = range_new();
    range_add(r, "clicks", C, 0, 10, 10, 50);
    range_add(r, "clicks", C, 1, 10, 10, 50);
    range_add(r, "clicks", C, 2, 10, 10, 50);
    assert_false(range_past_end(r, C, 0, 10)); /* there from the start */
    assert_false(range_past_end(r, C, 0, 30)); /* a later gap: compaction, markers */
    assert_false(range_past_end(r, C, 1, 25)); /* retention deleted 10..24 meanwhile */
    assert_true(range_past_end(r, C, 2, 70));  /* and the whole range of this one */
    assert_int_equal(range_find(r, C, 0)->missing, 0);
    assert_int_equal(range_find(r, C, 1)->missing, 15);
    assert_int_equal(range_find(r, C, 2)->missing, 40);
    assert_int_equal(range_missing(r), 55);
    range_free(r);
}

static void test_a_partition_with_nothing_to_read_stays_reached_after_a_rewind(void **unused) {
    range *r = range_new();
    range_add(r, "clicks", C, 0, 8, 8, 8);
    range_rewound(r, C, 0);
    assert_true(range_all_reached(r));
    range_free(r);
}

static void test_progress_counts_finished_offsets_up_to_each_end(void **unused) {
    range *r = range_new();
    range_add(r, "clicks", C, 0, 10, 10, 30);
    range_add(r, "clicks", C, 1, 0, 0, 100);
    assert_int_equal(range_total(r), 120);
    assert_int_equal(range_finished(r), 0);
    range_done(r, C, 0, 25);
    range_done(r, C, 1, 40);
    assert_int_equal(range_finished(r), 15 + 40);
    range_done(r, C, 0, 20); /* an older commit does not go back */
    assert_int_equal(range_finished(r), 15 + 40);
    range_done(r, C, 0, 99); /* never past the end */
    assert_int_equal(range_finished(r), 20 + 40);
    range_done(r, R, 0, 99); /* not in the range */
    assert_int_equal(range_finished(r), 60);
    range_free(r);
}

static void test_meter_smooths_the_rate_and_gives_the_time_left(void **unused) {
    range_meter m = {0};
    range_meter_update(&m, 0, 1000, 5000000);
    assert_true(range_meter_eta_s(&m) < 0); /* no rate yet */
    range_meter_update(&m, 50, 1000, 5500000); /* under a second: no rate sample */
    assert_true(m.rate == 0);
    range_meter_update(&m, 100, 1000, 6000000);
    assert_true(m.rate > 99.9 && m.rate < 100.1);
    assert_true(range_meter_eta_s(&m) > 8.99 && range_meter_eta_s(&m) < 9.01);
    range_meter_update(&m, 400, 1000, 7000000); /* 300/s: a third of the way there */
    assert_true(m.rate > 166.6 && m.rate < 166.7);
    range_meter_update(&m, 1000, 1000, 7100000);
    assert_true(range_meter_eta_s(&m) == 0);
}

static void test_progress_line_for_a_terminal_and_for_a_log(void **unused) {
    range_meter m = {.done = 500, .total = 1000, .rate = 250};
    char line[256];
    range_meter_format(&m, "replay", 1, 10, line, sizeof line);
    assert_string_equal(line, "replay [#####.....]  50.0%  500/1000  250/s  ETA 0:02");
    range_meter_format(&m, "replay", 0, 10, line, sizeof line);
    assert_string_equal(line, "50.0% done, 500 of 1000 messages, 250 messages/s, 0:02 left");
    m.rate = 0;
    range_meter_format(&m, "replay", 1, 4, line, sizeof line);
    assert_string_equal(line, "replay [##..]  50.0%  500/1000  0/s  ETA --:--");
    range_meter_format(&m, "replay", 0, 4, line, sizeof line);
    assert_non_null(strstr(line, "time left unknown"));
    m = (range_meter){.done = 0, .total = 3723000, .rate = 1000};
    range_meter_format(&m, "x", 1, 2, line, sizeof line);
    assert_non_null(strstr(line, "ETA 1:02:03"));
    /* An empty range is complete, not a division by zero. */
    m = (range_meter){0};
    range_meter_format(&m, "x", 1, 2, line, sizeof line);
    assert_string_equal(line, "x [##] 100.0%  0/0  0/s  ETA 0:00");
    /* A line cut to the room given stays terminated. */
    range_meter_format(&m, "x", 1, 2, line, 8);
    assert_int_equal(strlen(line), 7);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_copies_only_from_copy_from_up_to_the_end),
        cmocka_unit_test(test_offsets_are_clamped_into_the_range),
        cmocka_unit_test(test_the_end_is_reached_past_it_or_at_eof_and_not_after_a_rewind),
        cmocka_unit_test(test_offsets_gone_before_the_first_message_are_counted_missing),
        cmocka_unit_test(test_a_partition_with_nothing_to_read_stays_reached_after_a_rewind),
        cmocka_unit_test(test_progress_counts_finished_offsets_up_to_each_end),
        cmocka_unit_test(test_meter_smooths_the_rate_and_gives_the_time_left),
        cmocka_unit_test(test_progress_line_for_a_terminal_and_for_a_log),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
