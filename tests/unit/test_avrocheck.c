/* test_avrocheck.c -- the bounds check that stands between Kafka and Avro C.
 *
 * Bodies are hand-assembled from the Avro specification's binary encoding
 * (zig-zag varints, length-prefixed strings, blocked arrays and maps), so the
 * expected verdicts do not depend on any Avro implementation; one test also
 * checks that whatever Avro C itself writes is accepted. */
#include "testutil.h"

#include <string.h>

#include <avro.h>

#include "avrocheck.h"

static char err[256];

static avro_schema_t schema(const char *json) {
    avro_schema_t s = NULL;
    assert_int_equal(avro_schema_from_json_length(json, strlen(json), &s), 0);
    return s;
}

/* Validates body against a schema given as JSON. */
static int check(const char *json, const uint8_t *body, size_t len) {
    avro_schema_t s = schema(json);
    err[0] = '\0';
    int rc = avrocheck_validate(s, body, len, err, sizeof err);
    avro_schema_decref(s);
    return rc;
}

#define CHECK(json, ...)                                                           \
    check(json, (const uint8_t[]){__VA_ARGS__}, sizeof((const uint8_t[]){__VA_ARGS__}))

static void test_int_varint_up_to_5_bytes_within_32_bits(void **state) {
    (void)state;
    assert_int_equal(CHECK("\"int\"", 0x00), 0);
    /* INT32_MIN: zig-zag 0xffffffff */
    assert_int_equal(CHECK("\"int\"", 0xff, 0xff, 0xff, 0xff, 0x0f), 0);
    /* one bit more than 32 in the fifth byte */
    assert_int_equal(CHECK("\"int\"", 0xff, 0xff, 0xff, 0xff, 0x1f), -1);
    assert_int_equal(CHECK("\"int\"", 0x80, 0x80, 0x80, 0x80, 0x80, 0x00), -1);
    assert_non_null(strstr(err, "too long"));
    assert_int_equal(CHECK("\"int\"", 0x80), -1); /* continuation, then nothing */
}

static void test_long_varint_up_to_10_bytes_within_64_bits(void **state) {
    (void)state;
    /* INT64_MIN: zig-zag 0xffffffffffffffff, ten bytes */
    assert_int_equal(CHECK("\"long\"", 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01),
                     0);
    assert_int_equal(CHECK("\"long\"", 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02),
                     -1);
    assert_int_equal(CHECK("\"long\"", 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
                           0x00),
                     -1);
}

static void test_string_length_must_be_non_negative_and_fit_the_bytes_left(void **state) {
    (void)state;
    assert_int_equal(CHECK("\"string\"", 0x06, 'a', 'b', 'c'), 0);
    assert_int_equal(CHECK("\"string\"", 0x08, 'a', 'b', 'c'), -1);
    assert_int_equal(CHECK("\"string\"", 0x01), -1); /* -1 */
    /* 2^40 */
    assert_int_equal(CHECK("\"bytes\"", 0x80, 0x80, 0x80, 0x80, 0x80, 0x40, 'x'), -1);
    assert_non_null(strstr(err, "1099511627776"));
    assert_int_equal(CHECK("\"bytes\"", 0x00), 0);
}

static void test_fixed_float_double_need_their_bytes(void **state) {
    (void)state;
    const char *fixed = "{\"type\":\"fixed\",\"name\":\"F\",\"size\":3}";
    assert_int_equal(CHECK(fixed, 1, 2, 3), 0);
    assert_int_equal(CHECK(fixed, 1, 2), -1);
    assert_int_equal(CHECK("\"float\"", 0, 0, 0x80, 0x3f), 0);
    assert_int_equal(CHECK("\"float\"", 0, 0, 0x80), -1);
    assert_int_equal(CHECK("\"double\"", 0, 0, 0, 0, 0, 0, 0xf0, 0x3f), 0);
    assert_int_equal(CHECK("\"double\"", 0, 0, 0, 0, 0, 0, 0xf0), -1);
}

static void test_boolean_is_byte_0_or_1(void **state) {
    (void)state;
    assert_int_equal(CHECK("\"boolean\"", 0), 0);
    assert_int_equal(CHECK("\"boolean\"", 1), 0);
    assert_int_equal(CHECK("\"boolean\"", 2), -1);
}

static void test_enum_index_within_symbols(void **state) {
    (void)state;
    const char *e = "{\"type\":\"enum\",\"name\":\"E\",\"symbols\":[\"A\",\"B\",\"C\"]}";
    assert_int_equal(CHECK(e, 0x04), 0);  /* 2 */
    assert_int_equal(CHECK(e, 0x06), -1); /* 3 */
    assert_int_equal(CHECK(e, 0x01), -1); /* -1 */
}

static void test_union_branch_within_range(void **state) {
    (void)state;
    const char *u = "[\"null\",\"string\"]";
    assert_int_equal(CHECK(u, 0x00), 0);
    assert_int_equal(CHECK(u, 0x02, 0x02, 'x'), 0);
    assert_int_equal(CHECK(u, 0x04), -1);
    assert_int_equal(CHECK(u, 0x01), -1);
    assert_int_equal(CHECK(u, 0x02, 0x04, 'x'), -1); /* the branch's own string is short */
}

static void test_array_blocks_with_positive_and_negative_counts(void **state) {
    (void)state;
    const char *a = "{\"type\":\"array\",\"items\":\"long\"}";
    assert_int_equal(CHECK(a, 0x00), 0);
    assert_int_equal(CHECK(a, 0x04, 0x02, 0x04, 0x00), 0);              /* [1, 2] */
    assert_int_equal(CHECK(a, 0x02, 0x02, 0x02, 0x04, 0x00), 0);        /* [1] [2] */
    assert_int_equal(CHECK(a, 0x03, 0x04, 0x02, 0x04, 0x00), 0);        /* -2 items, 2 bytes */
    assert_int_equal(CHECK(a, 0x03, 0x06, 0x02, 0x04, 0x00), -1);       /* size says 3 */
    assert_int_equal(CHECK(a, 0x03, 0x7e, 0x02, 0x04, 0x00), -1);       /* size beyond the end */
    assert_int_equal(CHECK(a, 0x04, 0x02, 0x04), -1);                   /* no closing 0 */
    /* 2^31 items claimed by five bytes */
    assert_int_equal(CHECK(a, 0x80, 0x80, 0x80, 0x80, 0x10, 0x02, 0x00), -1);
    /* INT64_MIN cannot be negated */
    assert_int_equal(CHECK(a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x00),
                     -1);
}

static void test_map_keys_are_checked_like_strings(void **state) {
    (void)state;
    const char *m = "{\"type\":\"map\",\"values\":\"int\"}";
    assert_int_equal(CHECK(m, 0x02, 0x02, 'k', 0x02, 0x00), 0);
    assert_int_equal(CHECK(m, 0x02, 0x09, 'k', 0x02, 0x00), -1); /* key length -5 */
    assert_int_equal(CHECK(m, 0x02, 0x10, 'k', 0x02, 0x00), -1); /* key length 8 */
}

/* Avro C keeps map keys as C strings: "a<NUL>b" would be read as "a", and
 * the keys "k<NUL>1" and "k<NUL>2" as one key (found while writing
 * tests/fuzz/fuzz_codec.c). Values may hold NULs; the codec judges those. */
static void test_map_key_with_a_nul_byte_is_refused(void **state) {
    (void)state;
    const char *m = "{\"type\":\"map\",\"values\":\"string\"}";
    assert_int_equal(CHECK(m, 0x02, 0x06, 'a', 0x00, 'b', 0x02, 'v', 0x00), -1);
    assert_string_equal(err, "byte 1: map key holds a NUL byte");
    assert_int_equal(CHECK(m, 0x04, 0x06, 'k', 0x00, '1', 0x00, 0x06, 'k', 0x00, '2', 0x00, 0x00),
                     -1);
    assert_int_equal(CHECK(m, 0x02, 0x02, 'a', 0x06, 'v', 0x00, 'w', 0x00), 0);
}

static void test_zero_byte_items_are_capped_per_message(void **state) {
    (void)state;
    const char *a = "{\"type\":\"array\",\"items\":\"null\"}";
    /* 1000 nulls take no bytes at all: legal */
    assert_int_equal(CHECK(a, 0xd0, 0x0f, 0x00), 0);
    /* 2^40 nulls from six bytes */
    assert_int_equal(CHECK(a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40, 0x00), -1);
    /* the cap is per message: two blocks of 2^15 fit, a third does not */
    assert_int_equal(CHECK(a, 0x80, 0x80, 0x04, 0x80, 0x80, 0x04, 0x00), 0);
    assert_int_equal(CHECK(a, 0x80, 0x80, 0x04, 0x80, 0x80, 0x04, 0x02, 0x00), -1);
    /* a record of nulls is a zero-byte item too */
    const char *r = "{\"type\":\"array\",\"items\":{\"type\":\"record\",\"name\":\"N\","
                    "\"fields\":[{\"name\":\"a\",\"type\":\"null\"}]}}";
    assert_int_equal(CHECK(r, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40, 0x00), -1);
    assert_int_equal(CHECK(r, 0x14, 0x00), 0);
}

static const char list_schema[] =
    "{\"type\":\"record\",\"name\":\"Node\",\"fields\":["
    "{\"name\":\"next\",\"type\":[\"null\",\"Node\"]}]}";

static void test_recursion_deeper_than_the_limit_is_rejected(void **state) {
    (void)state;
    uint8_t body[400];
    /* n nested nodes: n times branch 1, then branch 0 (null) */
    size_t n = 10;
    memset(body, 0x02, n);
    body[n] = 0x00;
    assert_int_equal(check(list_schema, body, n + 1), 0);
    n = 300;
    memset(body, 0x02, n);
    body[n] = 0x00;
    assert_int_equal(check(list_schema, body, n + 1), -1);
    assert_non_null(strstr(err, "deeper"));
}

static void test_record_must_end_exactly_at_the_last_byte(void **state) {
    (void)state;
    const char *r = "{\"type\":\"record\",\"name\":\"R\",\"fields\":["
                    "{\"name\":\"s\",\"type\":\"string\"},{\"name\":\"n\",\"type\":\"int\"}]}";
    assert_int_equal(CHECK(r, 0x02, 'a', 0x02), 0);
    assert_int_equal(CHECK(r, 0x02, 'a', 0x02, 0x00), -1);
    assert_non_null(strstr(err, "trailing"));
    assert_int_equal(CHECK(r, 0x02, 'a'), -1);
    const char *empty = "{\"type\":\"record\",\"name\":\"E\",\"fields\":[]}";
    assert_int_equal(check(empty, NULL, 0), 0);
}

static void test_errors_name_the_byte_offset(void **state) {
    (void)state;
    const char *r = "{\"type\":\"record\",\"name\":\"R\",\"fields\":["
                    "{\"name\":\"s\",\"type\":\"string\"},{\"name\":\"b\",\"type\":\"boolean\"}]}";
    assert_int_equal(CHECK(r, 0x04, 'a', 'b', 0x07), -1);
    assert_non_null(strstr(err, "byte 3"));
}

/* Whatever Avro C writes, the guard accepts, and every strict prefix of it
 * is refused. */
static void test_data_written_by_avro_c_is_accepted_and_its_prefixes_refused(void **state) {
    (void)state;
    avro_schema_t s = schema(
        "{\"type\":\"record\",\"name\":\"All\",\"fields\":["
        "{\"name\":\"s\",\"type\":\"string\"},{\"name\":\"b\",\"type\":\"bytes\"},"
        "{\"name\":\"i\",\"type\":\"int\"},{\"name\":\"l\",\"type\":\"long\"},"
        "{\"name\":\"f\",\"type\":\"float\"},{\"name\":\"d\",\"type\":\"double\"},"
        "{\"name\":\"t\",\"type\":\"boolean\"},"
        "{\"name\":\"e\",\"type\":{\"type\":\"enum\",\"name\":\"E\",\"symbols\":[\"X\",\"Y\"]}},"
        "{\"name\":\"x\",\"type\":{\"type\":\"fixed\",\"name\":\"F\",\"size\":4}},"
        "{\"name\":\"a\",\"type\":{\"type\":\"array\",\"items\":\"string\"}},"
        "{\"name\":\"m\",\"type\":{\"type\":\"map\",\"values\":[\"null\",\"double\"]}}]}");
    avro_value_iface_t *cls = avro_generic_class_from_schema(s);
    avro_value_t rec, v, item;
    assert_int_equal(avro_generic_value_new(cls, &rec), 0);
    avro_value_get_by_name(&rec, "s", &v, NULL);
    assert_int_equal(avro_value_set_string(&v, "héllo"), 0);
    avro_value_get_by_name(&rec, "b", &v, NULL);
    assert_int_equal(avro_value_set_bytes(&v, "\x00\x01\x02", 3), 0);
    avro_value_get_by_name(&rec, "i", &v, NULL);
    assert_int_equal(avro_value_set_int(&v, -2147483647 - 1), 0);
    avro_value_get_by_name(&rec, "l", &v, NULL);
    assert_int_equal(avro_value_set_long(&v, 9007199254740993), 0);
    avro_value_get_by_name(&rec, "f", &v, NULL);
    assert_int_equal(avro_value_set_float(&v, 1.5f), 0);
    avro_value_get_by_name(&rec, "d", &v, NULL);
    assert_int_equal(avro_value_set_double(&v, -2.25), 0);
    avro_value_get_by_name(&rec, "t", &v, NULL);
    assert_int_equal(avro_value_set_boolean(&v, 1), 0);
    avro_value_get_by_name(&rec, "e", &v, NULL);
    assert_int_equal(avro_value_set_enum(&v, 1), 0);
    avro_value_get_by_name(&rec, "x", &v, NULL);
    assert_int_equal(avro_value_set_fixed(&v, "abcd", 4), 0);
    avro_value_get_by_name(&rec, "a", &v, NULL);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(avro_value_append(&v, &item, NULL), 0);
        assert_int_equal(avro_value_set_string(&item, "it"), 0);
    }
    avro_value_get_by_name(&rec, "m", &v, NULL);
    avro_value_t branch;
    assert_int_equal(avro_value_add(&v, "k1", &item, NULL, NULL), 0);
    assert_int_equal(avro_value_set_branch(&item, 1, &branch), 0);
    assert_int_equal(avro_value_set_double(&branch, 3.0), 0);
    assert_int_equal(avro_value_add(&v, "k2", &item, NULL, NULL), 0);
    assert_int_equal(avro_value_set_branch(&item, 0, &branch), 0);
    assert_int_equal(avro_value_set_null(&branch), 0);

    char body[512];
    avro_writer_t w = avro_writer_memory(body, sizeof body);
    assert_int_equal(avro_value_write(w, &rec), 0);
    size_t len = (size_t)avro_writer_tell(w);
    avro_writer_free(w);

    assert_int_equal(avrocheck_validate(s, body, len, err, sizeof err), 0);
    for (size_t n = 0; n < len; n++)
        assert_int_equal(avrocheck_validate(s, body, n, err, sizeof err), -1);

    avro_value_decref(&rec);
    avro_value_iface_decref(cls);
    avro_schema_decref(s);
}

static void test_missing_schema_or_body_is_refused(void **state) {
    (void)state;
    avro_schema_t s = schema("\"int\"");
    assert_int_equal(avrocheck_validate(NULL, "\x00", 1, err, sizeof err), -1);
    assert_int_equal(avrocheck_validate(s, NULL, 1, err, sizeof err), -1);
    avro_schema_decref(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_int_varint_up_to_5_bytes_within_32_bits),
        cmocka_unit_test(test_long_varint_up_to_10_bytes_within_64_bits),
        cmocka_unit_test(test_string_length_must_be_non_negative_and_fit_the_bytes_left),
        cmocka_unit_test(test_fixed_float_double_need_their_bytes),
        cmocka_unit_test(test_boolean_is_byte_0_or_1),
        cmocka_unit_test(test_enum_index_within_symbols),
        cmocka_unit_test(test_union_branch_within_range),
        cmocka_unit_test(test_array_blocks_with_positive_and_negative_counts),
        cmocka_unit_test(test_map_keys_are_checked_like_strings),
        cmocka_unit_test(test_map_key_with_a_nul_byte_is_refused),
        cmocka_unit_test(test_zero_byte_items_are_capped_per_message),
        cmocka_unit_test(test_recursion_deeper_than_the_limit_is_rejected),
        cmocka_unit_test(test_record_must_end_exactly_at_the_last_byte),
        cmocka_unit_test(test_errors_name_the_byte_offset),
        cmocka_unit_test(test_data_written_by_avro_c_is_accepted_and_its_prefixes_refused),
        cmocka_unit_test(test_missing_schema_or_body_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
