/* test_import.c -- parsing the sequence format and the item attributes JSON
 * that `copystream import` publishes. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "import.h"
#include "records.h"

#define BEAUTY_DIR "/work/shared/data/amazon-beauty"

/* Parses text as a sequence file called "seq.txt"; returns the parser's rc. */
static int parse_text(import_data *d, const char *text, size_t limit, char *err, size_t errlen) {
    FILE *f = fmemopen((void *)text, strlen(text), "r");
    assert_non_null(f);
    int rc = import_read_sequences(d, f, "seq.txt", limit, err, errlen);
    fclose(f);
    return rc;
}

/* Writes text to a temporary file; the caller unlinks path. */
static void write_temp(char *path, size_t len, const char *text) {
    snprintf(path, len, "/tmp/test_import_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

static const char *const small =
    "1 10 20 30\n"
    "2\t20 40\r\n"
    "\n"
    "u3 x y x\n";

static void test_sequences_give_users_items_and_events_in_order(void **state) {
    (void)state;
    char err[256];
    import_data *d = import_data_new();
    assert_int_equal(parse_text(d, small, 0, err, sizeof err), 0);
    size_t users, items, events;
    import_counts(d, &users, &items, &events);
    assert_int_equal(users, 3);
    assert_int_equal(items, 6); /* 10 20 30 40 x y */
    assert_int_equal(events, 8);
    assert_int_equal(import_user_len(d, 0), 3);
    assert_int_equal(import_user_len(d, 1), 2);
    assert_int_equal(import_user_len(d, 2), 3);

    const char *first_seen[] = {"10", "20", "30", "40", "x", "y"};
    catalog_item it;
    for (size_t i = 0; i < 6; i++) {
        import_item(d, i, 5000, &it);
        assert_string_equal(it.item_id, first_seen[i]);
        assert_int_equal(it.n_titles, 0);
        assert_null(it.category);
        assert_int_equal(it.n_attrs, 0);
        assert_true(it.available);
        assert_int_equal(it.updated_ms, 5000);
    }

    click_event ev;
    import_event(d, 1, 1, EV_VIEW, 1000, 60000, &ev);
    assert_string_equal(ev.user_id, "2");
    assert_string_equal(ev.event_id, "2:1");
    assert_string_equal(ev.item_id, "40");
    assert_int_equal(ev.ts_ms, 61000);
    assert_int_equal(ev.type, EV_VIEW);
    assert_null(ev.category);
    assert_null(ev.locale);
    assert_false(ev.has_price);

    import_event(d, 2, 2, EV_PURCHASE, 0, 86400000, &ev);
    assert_string_equal(ev.user_id, "u3");
    assert_string_equal(ev.event_id, "u3:2");
    assert_string_equal(ev.item_id, "x"); /* a repeated item is a new event */
    assert_int_equal(ev.ts_ms, 2 * 86400000LL);
    import_data_free(d);
}

static void expect_error(const char *text, const char *where, const char *what) {
    char err[256] = "";
    import_data *d = import_data_new();
    assert_int_equal(parse_text(d, text, 0, err, sizeof err), -1);
    if (!strstr(err, where) || !strstr(err, what))
        fail_msg("error \"%s\" lacks \"%s\" or \"%s\"", err, where, what);
    import_data_free(d);
}

static void test_malformed_lines_are_named_by_file_and_line(void **state) {
    (void)state;
    expect_error("1 2 3\n2\n3 4\n", "seq.txt:2:", "no items");
    expect_error("1 2\n\n1 3\n", "seq.txt:3:", "twice");
    expect_error("1 2\x01 3\n", "seq.txt:1:", "control character");
    char long_line[400];
    memset(long_line, 'z', sizeof long_line);
    memcpy(long_line, "7 ", 2);
    long_line[sizeof long_line - 1] = '\0';
    expect_error(long_line, "seq.txt:1:", "longer");
}

static void test_limit_users_stops_after_that_many_users(void **state) {
    (void)state;
    char err[256];
    import_data *d = import_data_new();
    /* The malformed third line is never read. */
    assert_int_equal(parse_text(d, "a 1 2\nb 2 3\nc\n", 2, err, sizeof err), 0);
    size_t users, items, events;
    import_counts(d, &users, &items, &events);
    assert_int_equal(users, 2);
    assert_int_equal(items, 3);
    assert_int_equal(events, 4);
    import_data_free(d);
}

static void test_attributes_become_prefixed_ids_in_file_order(void **state) {
    (void)state;
    char err[256], path[64];
    import_data *d = import_data_new();
    assert_int_equal(parse_text(d, small, 0, err, sizeof err), 0);
    write_temp(path, sizeof path,
               "{\"20\": [7, 3, 7], \"x\": [\"red\", 12], \"999\": [1]}");
    int rc = import_read_attributes(d, path, err, sizeof err);
    unlink(path);
    assert_int_equal(rc, 0);

    catalog_item it;
    import_item(d, 1, 0, &it); /* "20" */
    assert_string_equal(it.item_id, "20");
    assert_int_equal(it.n_attrs, 2); /* the repeated 7 counts once */
    assert_string_equal(it.attrs[0].id, "a7");
    assert_string_equal(it.attrs[1].id, "a3");
    assert_int_equal(it.attrs[0].n_phrases, 0);
    import_item(d, 4, 0, &it); /* "x" */
    assert_string_equal(it.item_id, "x");
    assert_int_equal(it.n_attrs, 2);
    assert_string_equal(it.attrs[0].id, "ared");
    assert_string_equal(it.attrs[1].id, "a12");
    import_item(d, 0, 0, &it); /* "10" has none */
    assert_int_equal(it.n_attrs, 0);
    import_data_free(d);
}

static void expect_json_error(const char *json, const char *what) {
    char err[256] = "", path[64];
    import_data *d = import_data_new();
    assert_int_equal(parse_text(d, small, 0, err, sizeof err), 0);
    write_temp(path, sizeof path, json);
    int rc = import_read_attributes(d, path, err, sizeof err);
    unlink(path);
    assert_int_equal(rc, -1);
    if (!strstr(err, path) || !strstr(err, what))
        fail_msg("error \"%s\" lacks the file or \"%s\"", err, what);
    import_data_free(d);
}

static void test_bad_attribute_files_are_rejected_with_the_reason(void **state) {
    (void)state;
    expect_json_error("[1, 2]", "expected an object");
    expect_json_error("{\"10\": 3}", "item 10");
    expect_json_error("{\"10\": [1.5]}", "item 10");
    expect_json_error("{\"10\": [{}]}", "item 10");
    expect_json_error("{\"10\": [1], \"10\": [2]}", "duplicate");
    expect_json_error("{\"10\": [1,\n", ":2:"); /* the line of the syntax error */
}

static void test_amazon_beauty_has_the_published_counts(void **state) {
    (void)state;
    FILE *f = fopen(BEAUTY_DIR "/sequences.txt", "r");
    if (!f) skip();
    char err[256];
    import_data *d = import_data_new();
    int rc = import_read_sequences(d, f, "sequences.txt", 0, err, sizeof err);
    fclose(f);
    if (rc < 0) fail_msg("%s", err);
    size_t users, items, events;
    import_counts(d, &users, &items, &events);
    assert_int_equal(users, 22363);
    assert_int_equal(items, 12101);
    assert_int_equal(events, 198502);
    if (import_read_attributes(d, BEAUTY_DIR "/item2attributes.json", err, sizeof err) < 0)
        fail_msg("%s", err);
    catalog_item it;
    size_t with_attrs = 0;
    for (size_t i = 0; i < items; i++) {
        import_item(d, i, 0, &it);
        with_attrs += it.n_attrs > 0;
        assert_true(it.n_attrs <= 6);
    }
    assert_int_equal(with_attrs, items); /* the file covers every item */
    import_data_free(d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sequences_give_users_items_and_events_in_order),
        cmocka_unit_test(test_malformed_lines_are_named_by_file_and_line),
        cmocka_unit_test(test_limit_users_stops_after_that_many_users),
        cmocka_unit_test(test_attributes_become_prefixed_ids_in_file_order),
        cmocka_unit_test(test_bad_attribute_files_are_rejected_with_the_reason),
        cmocka_unit_test(test_amazon_beauty_has_the_published_counts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
