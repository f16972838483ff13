/* test_codec.c -- the Avro codec: round trips, the wire frame, schema
 * evolution against fixture schemas (tests/unit/schemas), poison input, and
 * the record helpers of records.c.
 *
 * Messages from other schema versions are written here with Avro C generic
 * values directly, or as hand-assembled bytes, never with the codec under
 * test. Run from the repository root: schemas are loaded from "schemas". */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <avro.h>

#include "buf.h"
#include "codec.h"
#include "records.h"

#define SCHEMA_DIR "schemas"
#define FIXTURES "../tests/unit/schemas/"

enum {
    ID_CLICK = 1, ID_CATALOG = 2, ID_COPY = 3, ID_REACTION = 4, ID_CLICK_ALSO = 7,
    ID_CLICK_V0 = 10, ID_CLICK_V2 = 11, ID_CLICK_SHUFFLED = 12, ID_CLICK_USER_INT = 13,
    ID_CLICK_NO_TS = 14, ID_CATALOG_V0 = 20,
};

/* ID_CLICK_ALSO comes first and holds the current ClickEvent too: the codec
 * must still frame click events with the lower id. */
static const codec_schema_id ids[] = {
    {ID_CLICK_ALSO, "ClickEvent.avsc"},
    {ID_CLICK, "ClickEvent.avsc"},
    {ID_CATALOG, "CatalogItem.avsc"},
    {ID_COPY, "PersonalizedCopy.avsc"},
    {ID_REACTION, "Reaction.avsc"},
    {ID_CLICK_V0, FIXTURES "ClickEvent.v0.avsc"},
    {ID_CLICK_V2, FIXTURES "ClickEvent.v2.avsc"},
    {ID_CLICK_SHUFFLED, FIXTURES "ClickEvent.shuffled.avsc"},
    {ID_CLICK_USER_INT, FIXTURES "ClickEvent.userint.avsc"},
    {ID_CLICK_NO_TS, FIXTURES "ClickEvent.notimestamp.avsc"},
    {ID_CATALOG_V0, FIXTURES "CatalogItem.v0.avsc"},
};

static codec *C;
static char err[512];

static codec *new_codec(size_t max_bytes) {
    codec *c = codec_new(SCHEMA_DIR, ids, sizeof ids / sizeof ids[0], max_bytes, err, sizeof err);
    if (!c) fprintf(stderr, "codec_new: %s\n", err);
    return c;
}

static int setup(void **state) {
    (void)state;
    C = new_codec(1 << 20);
    return C ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    codec_free(C);
    return 0;
}

/* ------------------------------------------------------------------ helpers */

static void assert_str_eq(const char *want, const char *got) {
    if (!want) {
        assert_null(got);
        return;
    }
    assert_non_null(got);
    assert_string_equal(want, got);
}

static int is_zero(const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i]) return 0;
    return 1;
}

/* A framed message from hand-assembled body bytes. */
static size_t framed(uint8_t *out, int32_t id, const uint8_t *body, size_t n) {
    out[0] = 0;
    out[1] = (uint8_t)((uint32_t)id >> 24);
    out[2] = (uint8_t)((uint32_t)id >> 16);
    out[3] = (uint8_t)((uint32_t)id >> 8);
    out[4] = (uint8_t)id;
    memcpy(out + 5, body, n);
    return n + 5;
}

/* A value of some schema file, written with Avro C alone. */
typedef struct {
    avro_schema_t schema;
    avro_value_iface_t *cls;
    avro_value_t rec;
} wvalue;

static void wvalue_init(wvalue *w, const char *file) {
    char path[512], text[8192];
    snprintf(path, sizeof path, "%s/%s", SCHEMA_DIR, file);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    size_t n = fread(text, 1, sizeof text, f);
    fclose(f);
    assert_true(n < sizeof text);
    assert_int_equal(avro_schema_from_json_length(text, n, &w->schema), 0);
    w->cls = avro_generic_class_from_schema(w->schema);
    assert_non_null(w->cls);
    assert_int_equal(avro_generic_value_new(w->cls, &w->rec), 0);
}

static void wvalue_free(wvalue *w) {
    avro_value_decref(&w->rec);
    avro_value_iface_decref(w->cls);
    avro_schema_decref(w->schema);
}

static avro_value_t wfield(wvalue *w, const char *name) {
    avro_value_t v = {NULL, NULL};
    assert_int_equal(avro_value_get_by_name(&w->rec, name, &v, NULL), 0);
    return v;
}

static void w_string(wvalue *w, const char *name, const char *s) {
    avro_value_t v = wfield(w, name);
    assert_int_equal(avro_value_set_string(&v, s), 0);
}

static void w_long(wvalue *w, const char *name, int64_t x) {
    avro_value_t v = wfield(w, name);
    assert_int_equal(avro_value_set_long(&v, x), 0);
}

static void w_int(wvalue *w, const char *name, int32_t x) {
    avro_value_t v = wfield(w, name);
    assert_int_equal(avro_value_set_int(&v, x), 0);
}

/* ["null", T] unions: branch 1 is T; s == NULL writes null. */
static void w_opt_string(wvalue *w, const char *name, const char *s) {
    avro_value_t v = wfield(w, name), b;
    assert_int_equal(avro_value_set_branch(&v, s ? 1 : 0, &b), 0);
    assert_int_equal(s ? avro_value_set_string(&b, s) : avro_value_set_null(&b), 0);
}

static void w_opt_int(wvalue *w, const char *name, int32_t x) {
    avro_value_t v = wfield(w, name), b;
    assert_int_equal(avro_value_set_branch(&v, 1, &b), 0);
    assert_int_equal(avro_value_set_int(&b, x), 0);
}

static void w_opt_long(wvalue *w, const char *name, int64_t x) {
    avro_value_t v = wfield(w, name), b;
    assert_int_equal(avro_value_set_branch(&v, 1, &b), 0);
    assert_int_equal(avro_value_set_long(&b, x), 0);
}

/* Sets an enum field by symbol, looked up in the writer's own enum. */
static void w_enum(wvalue *w, const char *name, const char *symbol) {
    avro_value_t v = wfield(w, name);
    int i = avro_schema_enum_get_by_name(avro_value_get_schema(&v), symbol);
    assert_true(i >= 0);
    assert_int_equal(avro_value_set_enum(&v, i), 0);
}

static size_t w_frame(wvalue *w, int32_t id, uint8_t *out, size_t cap) {
    size_t size;
    assert_int_equal(avro_value_sizeof(&w->rec, &size), 0);
    assert_true(size + 5 <= cap);
    avro_writer_t wr = avro_writer_memory((const char *)out + 5, (int64_t)size);
    assert_non_null(wr);
    assert_int_equal(avro_value_write(wr, &w->rec), 0);
    avro_writer_free(wr);
    uint8_t hdr[1];
    framed(out, id, hdr, 0);
    return size + 5;
}

/* ---------------------------------------------------------- sample records */

static click_event full_click(void) {
    click_event e = {
        .event_id = "ev-1", .user_id = "u-42", .ts_ms = 1700000000123, .type = EV_ADD_TO_CART,
        .item_id = "sku-9", .category = "phones", .has_price = 1, .price_micros = 1999000000,
        .currency = "CNY", .query = "手机 5G", .session_id = "s-7", .locale = "zh-CN",
    };
    return e;
}

static void assert_click_equal(const click_event *a, const click_event *b) {
    assert_str_eq(a->event_id, b->event_id);
    assert_str_eq(a->user_id, b->user_id);
    assert_int_equal(a->ts_ms, b->ts_ms);
    assert_int_equal(a->type, b->type);
    assert_str_eq(a->item_id, b->item_id);
    assert_str_eq(a->category, b->category);
    assert_int_equal(a->has_price, b->has_price);
    if (a->has_price) assert_int_equal(a->price_micros, b->price_micros);
    assert_str_eq(a->currency, b->currency);
    assert_str_eq(a->query, b->query);
    assert_str_eq(a->session_id, b->session_id);
    assert_str_eq(a->locale, b->locale);
}

static localized titles[] = {{"zh-CN", "旗舰手机"}, {"en-US", "Flagship phone"}};
static localized phrases_screen[] = {{"zh-CN", "高清屏幕"}, {"en-US", "a sharp screen"}};
static localized phrases_battery[] = {{"en-US", "all-day battery"}};
static item_attribute attrs[] = {{"screen", phrases_screen, 2}, {"battery", phrases_battery, 1}};

static catalog_item full_item(void) {
    catalog_item it = {
        .item_id = "sku-9", .titles = titles, .n_titles = 2, .category = "phones",
        .brand = "Acme", .has_price = 1, .price_micros = 1999000000, .currency = "CNY",
        .attrs = attrs, .n_attrs = 2, .available = 1, .updated_ms = 1700000000000,
    };
    return it;
}

static void assert_localized_equal(const localized *a, size_t na, const localized *b, size_t nb) {
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++) {
        assert_str_eq(a[i].locale, b[i].locale);
        assert_str_eq(a[i].text, b[i].text);
    }
}

static void assert_item_equal(const catalog_item *a, const catalog_item *b) {
    assert_str_eq(a->item_id, b->item_id);
    assert_localized_equal(a->titles, a->n_titles, b->titles, b->n_titles);
    assert_str_eq(a->category, b->category);
    assert_str_eq(a->brand, b->brand);
    assert_int_equal(a->has_price, b->has_price);
    if (a->has_price) assert_int_equal(a->price_micros, b->price_micros);
    assert_str_eq(a->currency, b->currency);
    assert_int_equal(a->n_attrs, b->n_attrs);
    for (size_t i = 0; i < a->n_attrs; i++) {
        assert_str_eq(a->attrs[i].id, b->attrs[i].id);
        assert_localized_equal(a->attrs[i].phrases, a->attrs[i].n_phrases, b->attrs[i].phrases,
                               b->attrs[i].n_phrases);
    }
    assert_int_equal(a->available, b->available);
    assert_int_equal(a->updated_ms, b->updated_ms);
}

static promoted_item promoted[] = {
    {"sku-9", "旗舰手机", 0.875, 1, 1999000000, "CNY"},
    {"sku-3", NULL, 0.5, 0, 0, NULL},
};
static copy_reason reasons[] = {
    {"attribute_match", "screen", "高清屏幕", 0.75},
    {"category_affinity", NULL, "手机", 0.25},
};

static personalized_copy full_copy(void) {
    personalized_copy c = {
        .copy_id = "cp-1", .user_id = "u-42", .source_event_id = "ev-1",
        .source_topic = "clickstream", .source_partition = 7, .source_offset = 123456789012,
        .locale = "zh-CN", .text = "为你推荐旗舰手机：高清屏幕", .items = promoted, .n_items = 2,
        .reasons = reasons, .n_reasons = 2, .intent = "cart_recovery", .template_id = "t-cart",
        .variant_id = "b", .strategy = "affinity", .model_version = "m-3",
        .created_ms = 1700000000456,
    };
    return c;
}

static void assert_copy_equal(const personalized_copy *a, const personalized_copy *b) {
    assert_str_eq(a->copy_id, b->copy_id);
    assert_str_eq(a->user_id, b->user_id);
    assert_str_eq(a->source_event_id, b->source_event_id);
    assert_str_eq(a->source_topic, b->source_topic);
    assert_int_equal(a->source_partition, b->source_partition);
    assert_int_equal(a->source_offset, b->source_offset);
    assert_str_eq(a->locale, b->locale);
    assert_str_eq(a->text, b->text);
    assert_int_equal(a->n_items, b->n_items);
    for (size_t i = 0; i < a->n_items; i++) {
        assert_str_eq(a->items[i].item_id, b->items[i].item_id);
        assert_str_eq(a->items[i].title, b->items[i].title);
        assert_true(a->items[i].score == b->items[i].score);
        assert_int_equal(a->items[i].has_price, b->items[i].has_price);
        if (a->items[i].has_price)
            assert_int_equal(a->items[i].price_micros, b->items[i].price_micros);
        assert_str_eq(a->items[i].currency, b->items[i].currency);
    }
    assert_int_equal(a->n_reasons, b->n_reasons);
    for (size_t i = 0; i < a->n_reasons; i++) {
        assert_str_eq(a->reasons[i].code, b->reasons[i].code);
        assert_str_eq(a->reasons[i].attribute_id, b->reasons[i].attribute_id);
        assert_str_eq(a->reasons[i].text, b->reasons[i].text);
        assert_true(a->reasons[i].score == b->reasons[i].score);
    }
    assert_str_eq(a->intent, b->intent);
    assert_str_eq(a->template_id, b->template_id);
    assert_str_eq(a->variant_id, b->variant_id);
    assert_str_eq(a->strategy, b->strategy);
    assert_str_eq(a->model_version, b->model_version);
    assert_int_equal(a->created_ms, b->created_ms);
}

static reaction full_reaction(void) {
    reaction r = {
        .reaction_id = "rx-1", .copy_id = "cp-1", .user_id = "u-42", .type = RX_CONVERT,
        .item_id = "sku-9", .has_value = 1, .value = 1999.5, .ts_ms = 1700000000999,
    };
    return r;
}

static void assert_reaction_equal(const reaction *a, const reaction *b) {
    assert_str_eq(a->reaction_id, b->reaction_id);
    assert_str_eq(a->copy_id, b->copy_id);
    assert_str_eq(a->user_id, b->user_id);
    assert_int_equal(a->type, b->type);
    assert_str_eq(a->item_id, b->item_id);
    assert_int_equal(a->has_value, b->has_value);
    if (a->has_value) assert_true(a->value == b->value);
    assert_int_equal(a->ts_ms, b->ts_ms);
}

/* --------------------------------------------------------------- round trips */

static void round_trip_click(const click_event *in) {
    buf b = BUF_INIT;
    click_event out;
    assert_int_equal(codec_encode_click(C, in, &b, err, sizeof err), 0);
    assert_int_equal(codec_decode_click(C, b.p, b.len, &out, err, sizeof err), CODEC_OK);
    assert_click_equal(in, &out);
    click_event_clear(&out);
    buf_free(&b);
}

static void test_click_round_trip_with_all_optional_fields(void **state) {
    (void)state;
    click_event e = full_click();
    round_trip_click(&e);
}

static void test_click_round_trip_with_optional_fields_absent(void **state) {
    (void)state;
    click_event e = {.event_id = "ev-2", .user_id = "u-1", .ts_ms = -5, .type = EV_SEARCH};
    round_trip_click(&e);
    for (int t = 0; t < EV__COUNT; t++) { /* every symbol survives */
        e.type = (event_type)t;
        round_trip_click(&e);
    }
}

static void test_catalog_round_trip_with_all_fields(void **state) {
    (void)state;
    catalog_item in = full_item(), out;
    buf b = BUF_INIT;
    assert_int_equal(codec_encode_catalog(C, &in, &b, err, sizeof err), 0);
    assert_int_equal(codec_decode_catalog(C, b.p, b.len, &out, err, sizeof err), CODEC_OK);
    assert_item_equal(&in, &out);
    catalog_item_clear(&out);
    buf_free(&b);
}

static void test_catalog_round_trip_with_optional_fields_absent(void **state) {
    (void)state;
    catalog_item in = {.item_id = "sku-0", .available = 0, .updated_ms = 1}, out;
    buf b = BUF_INIT;
    assert_int_equal(codec_encode_catalog(C, &in, &b, err, sizeof err), 0);
    assert_int_equal(codec_decode_catalog(C, b.p, b.len, &out, err, sizeof err), CODEC_OK);
    assert_item_equal(&in, &out);
    assert_null(out.titles);
    assert_null(out.attrs);
    catalog_item_clear(&out);
    buf_free(&b);
}

static void test_copy_round_trip_with_all_fields(void **state) {
    (void)state;
    personalized_copy in = full_copy(), out;
    buf b = BUF_INIT;
    assert_int_equal(codec_encode_copy(C, &in, &b, err, sizeof err), 0);
    assert_int_equal(codec_decode_copy(C, b.p, b.len, &out, err, sizeof err), CODEC_OK);
    assert_copy_equal(&in, &out);
    personalized_copy_clear(&out);
    buf_free(&b);
}

static void test_copy_round_trip_with_optional_fields_absent(void **state) {
    (void)state;
    personalized_copy in = {
        .copy_id = "cp-2", .user_id = "u-1", .source_event_id = "", .source_topic = "t",
        .source_partition = -1, .locale = "en-US", .text = "", .intent = "", .template_id = "",
        .variant_id = "", .strategy = "",
    }, out;
    buf b = BUF_INIT;
    assert_int_equal(codec_encode_copy(C, &in, &b, err, sizeof err), 0);
    assert_int_equal(codec_decode_copy(C, b.p, b.len, &out, err, sizeof err), CODEC_OK);
    assert_copy_equal(&in, &out);
    personalized_copy_clear(&out);
    buf_free(&b);
}

static void test_reaction_round_trip_with_all_fields(void **state) {
    (void)state;
    reaction in = full_reaction(), out;
    buf b = BUF_INIT;
    assert_int_equal(codec_encode_reaction(C, &in, &b, err, sizeof err), 0);
    assert_int_equal(codec_decode_reaction(C, b.p, b.len, &out, err, sizeof err), CODEC_OK);
    assert_reaction_equal(&in, &out);
    reaction_clear(&out);
    buf_free(&b);
}

static void test_reaction_round_trip_with_optional_fields_absent(void **state) {
    (void)state;
    reaction in = {.reaction_id = "rx-2", .user_id = "u-1", .type = RX_UNSUBSCRIBE}, out;
    buf b = BUF_INIT;
    assert_int_equal(codec_encode_reaction(C, &in, &b, err, sizeof err), 0);
    assert_int_equal(codec_decode_reaction(C, b.p, b.len, &out, err, sizeof err), CODEC_OK);
    assert_reaction_equal(&in, &out);
    reaction_clear(&out);
    buf_free(&b);
}

static void test_encode_appends_to_what_the_buffer_holds(void **state) {
    (void)state;
    click_event e = full_click(), out;
    buf b = BUF_INIT;
    assert_int_equal(buf_puts(&b, "xy"), 0);
    assert_int_equal(codec_encode_click(C, &e, &b, err, sizeof err), 0);
    assert_memory_equal(b.p, "xy", 2);
    assert_int_equal(codec_decode_click(C, b.p + 2, b.len - 2, &out, err, sizeof err), CODEC_OK);
    click_event_clear(&out);
    buf_free(&b);
}

/* ------------------------------------------------------------------ the frame */

/* {event_id "e1", user_id "u1", timestamp 1, CLICK, seven nulls}, by the Avro
 * spec: strings are a zig-zag length then bytes, long 1 is 0x02, enum index 1
 * is 0x02, a null union branch is 0x00. */
static const uint8_t small_click_body[] = {
    0x04, 'e', '1', 0x04, 'u', '1', 0x02, 0x02, 0, 0, 0, 0, 0, 0, 0,
};

static void test_encoded_click_is_magic_zero_big_endian_id_then_avro_body(void **state) {
    (void)state;
    click_event e = {.event_id = "e1", .user_id = "u1", .ts_ms = 1, .type = EV_CLICK};
    buf b = BUF_INIT;
    assert_int_equal(codec_encode_click(C, &e, &b, err, sizeof err), 0);
    static const uint8_t head[] = {0x00, 0x00, 0x00, 0x00, 0x01};
    assert_int_equal(b.len, 5 + sizeof small_click_body);
    assert_memory_equal(b.p, head, 5);
    assert_memory_equal(b.p + 5, small_click_body, sizeof small_click_body);
    buf_free(&b);
}

static void test_frame_id_is_big_endian_and_lowest_matching_id_wins(void **state) {
    (void)state;
    /* the lowest of three is neither the first nor the last listed */
    static const codec_schema_id big[] = {
        {0x05060708, "Reaction.avsc"},
        {0x01020304, "Reaction.avsc"},
        {0x0a0b0c0d, "Reaction.avsc"},
        {0x7f000001, "ClickEvent.avsc"},
    };
    codec *c = codec_new(SCHEMA_DIR, big, 4, 4096, err, sizeof err);
    assert_non_null(c);
    assert_int_equal(codec_writer_id(c, REC_REACTION), 0x01020304);
    assert_int_equal(codec_writer_id(c, REC_CLICK_EVENT), 0x7f000001);
    assert_int_equal(codec_writer_id(c, REC_CATALOG_ITEM), -1);
    reaction r = full_reaction();
    buf b = BUF_INIT;
    assert_int_equal(codec_encode_reaction(c, &r, &b, err, sizeof err), 0);
    static const uint8_t head[] = {0x00, 0x01, 0x02, 0x03, 0x04};
    assert_memory_equal(b.p, head, 5);
    buf_free(&b);
    codec_free(c);
}

static void test_writer_id_is_the_lowest_configured_id_of_the_current_schema(void **state) {
    (void)state;
    assert_int_equal(codec_writer_id(C, REC_CLICK_EVENT), ID_CLICK); /* not 7, not 10..14 */
    assert_int_equal(codec_writer_id(C, REC_CATALOG_ITEM), ID_CATALOG);
    assert_int_equal(codec_writer_id(C, REC_PERSONALIZED_COPY), ID_COPY);
    assert_int_equal(codec_writer_id(C, REC_REACTION), ID_REACTION);
}

static void test_kind_without_a_writer_id_cannot_be_encoded(void **state) {
    (void)state;
    codec *c = codec_new(SCHEMA_DIR, NULL, 0, 4096, err, sizeof err);
    assert_non_null(c);
    assert_int_equal(codec_writer_id(c, REC_CLICK_EVENT), -1);
    click_event e = full_click();
    buf b = BUF_INIT;
    err[0] = '\0';
    assert_int_equal(codec_encode_click(c, &e, &b, err, sizeof err), -1);
    assert_int_equal(b.len, 0);
    assert_non_null(strstr(err, "ClickEvent"));
    buf_free(&b);
    codec_free(c);
}

static void test_hand_assembled_click_decodes(void **state) {
    (void)state;
    uint8_t m[64];
    click_event out;
    size_t n = framed(m, ID_CLICK, small_click_body, sizeof small_click_body);
    assert_int_equal(codec_decode_click(C, m, n, &out, err, sizeof err), CODEC_OK);
    assert_string_equal(out.event_id, "e1");
    assert_string_equal(out.user_id, "u1");
    assert_int_equal(out.ts_ms, 1);
    assert_int_equal(out.type, EV_CLICK);
    assert_null(out.item_id);
    assert_int_equal(out.has_price, 0);
    assert_null(out.locale);
    click_event_clear(&out);
}

/* -------------------------------------------------------------- evolution */

static void test_older_writer_schema_decodes_with_missing_fields_null(void **state) {
    (void)state;
    wvalue w;
    uint8_t m[256];
    click_event out;
    wvalue_init(&w, FIXTURES "ClickEvent.v0.avsc");
    w_string(&w, "event_id", "ev-old");
    w_string(&w, "user_id", "u-7");
    w_long(&w, "timestamp", 1600000000000);
    w_enum(&w, "type", "PURCHASE");
    w_opt_string(&w, "item_id", "sku-1");
    w_opt_string(&w, "category", NULL);
    w_opt_long(&w, "price_micros", 5000000);
    w_opt_string(&w, "query", "old query");
    size_t n = w_frame(&w, ID_CLICK_V0, m, sizeof m);
    assert_int_equal(codec_decode_click(C, m, n, &out, err, sizeof err), CODEC_OK);
    assert_string_equal(out.event_id, "ev-old");
    assert_string_equal(out.user_id, "u-7");
    assert_int_equal(out.ts_ms, 1600000000000);
    assert_int_equal(out.type, EV_PURCHASE);
    assert_string_equal(out.item_id, "sku-1");
    assert_null(out.category);
    assert_int_equal(out.has_price, 1);
    assert_int_equal(out.price_micros, 5000000);
    assert_string_equal(out.query, "old query");
    assert_null(out.currency);   /* not in v0: the default */
    assert_null(out.session_id);
    assert_null(out.locale);
    click_event_clear(&out);
    wvalue_free(&w);
}

static void test_older_catalog_writer_gets_default_attributes_and_available(void **state) {
    (void)state;
    wvalue w;
    uint8_t m[256];
    catalog_item out;
    wvalue_init(&w, FIXTURES "CatalogItem.v0.avsc");
    w_string(&w, "item_id", "sku-old");
    avro_value_t map = wfield(&w, "titles"), t;
    assert_int_equal(avro_value_add(&map, "en-US", &t, NULL, NULL), 0);
    assert_int_equal(avro_value_set_string(&t, "Old phone"), 0);
    w_opt_string(&w, "category", "phones");
    w_opt_string(&w, "brand", NULL);
    w_opt_string(&w, "price_micros", NULL);
    w_opt_string(&w, "currency", NULL);
    w_long(&w, "updated_at", 42);
    size_t n = w_frame(&w, ID_CATALOG_V0, m, sizeof m);
    assert_int_equal(codec_decode_catalog(C, m, n, &out, err, sizeof err), CODEC_OK);
    assert_string_equal(out.item_id, "sku-old");
    assert_int_equal(out.n_titles, 1);
    assert_string_equal(localized_find(out.titles, out.n_titles, "en-US"), "Old phone");
    assert_string_equal(out.category, "phones");
    assert_int_equal(out.n_attrs, 0);   /* default [] */
    assert_int_equal(out.available, 1); /* default true */
    assert_int_equal(out.updated_ms, 42);
    catalog_item_clear(&out);
    wvalue_free(&w);
}

static void write_v2_click(wvalue *w, const char *type) {
    wvalue_init(w, FIXTURES "ClickEvent.v2.avsc");
    w_string(w, "event_id", "ev-new");
    w_string(w, "user_id", "u-8");
    w_string(w, "device", "ios");
    w_long(w, "timestamp", 1800000000000);
    w_enum(w, "type", type);
    w_opt_string(w, "item_id", NULL);
    w_opt_string(w, "category", NULL);
    w_opt_string(w, "price_micros", NULL);
    w_opt_string(w, "currency", "USD");
    w_opt_string(w, "query", NULL);
    w_opt_string(w, "session_id", "s-1");
    w_opt_string(w, "locale", "en-US");
    w_opt_string(w, "referrer", "newsletter");
}

static void test_newer_writer_schema_decodes_and_ignores_extra_fields(void **state) {
    (void)state;
    wvalue w;
    uint8_t m[256];
    click_event out;
    write_v2_click(&w, "FAVORITE");
    size_t n = w_frame(&w, ID_CLICK_V2, m, sizeof m);
    assert_int_equal(codec_decode_click(C, m, n, &out, err, sizeof err), CODEC_OK);
    assert_string_equal(out.event_id, "ev-new");
    assert_string_equal(out.user_id, "u-8");
    assert_int_equal(out.ts_ms, 1800000000000);
    assert_int_equal(out.type, EV_FAVORITE);
    assert_null(out.item_id);
    assert_string_equal(out.currency, "USD");
    assert_string_equal(out.session_id, "s-1");
    assert_string_equal(out.locale, "en-US");
    click_event_clear(&out);
    wvalue_free(&w);
}

static void test_newer_enum_symbol_unknown_to_reader_is_incompatible(void **state) {
    (void)state;
    wvalue w;
    uint8_t m[256];
    click_event out;
    write_v2_click(&w, "SHARE");
    size_t n = w_frame(&w, ID_CLICK_V2, m, sizeof m);
    assert_int_equal(codec_decode_click(C, m, n, &out, err, sizeof err), CODEC_ERR_INCOMPATIBLE);
    assert_non_null(strstr(err, "SHARE"));
    assert_true(is_zero(&out, sizeof out));
    wvalue_free(&w);
}

static void test_enum_symbols_and_fields_resolve_by_name_not_position(void **state) {
    (void)state;
    wvalue w;
    uint8_t m[256];
    click_event out;
    wvalue_init(&w, FIXTURES "ClickEvent.shuffled.avsc");
    w_enum(&w, "type", "VIEW"); /* index 5 in this writer, 0 in ours */
    w_string(&w, "user_id", "u-9");
    w_string(&w, "event_id", "ev-9");
    w_long(&w, "timestamp", 77);
    w_opt_string(&w, "locale", "zh-CN");
    w_opt_string(&w, "item_id", NULL);
    w_opt_int(&w, "price_micros", 1234); /* int promoted to our long */
    size_t n = w_frame(&w, ID_CLICK_SHUFFLED, m, sizeof m);
    assert_int_equal(codec_decode_click(C, m, n, &out, err, sizeof err), CODEC_OK);
    assert_int_equal(out.type, EV_VIEW);
    assert_string_equal(out.event_id, "ev-9");
    assert_string_equal(out.user_id, "u-9");
    assert_int_equal(out.ts_ms, 77);
    assert_string_equal(out.locale, "zh-CN");
    assert_int_equal(out.has_price, 1);
    assert_int_equal(out.price_micros, 1234);
    assert_null(out.category);
    click_event_clear(&out);
    wvalue_free(&w);
}

static void test_writer_with_user_id_as_int_is_incompatible(void **state) {
    (void)state;
    wvalue w;
    uint8_t m[256];
    click_event out;
    wvalue_init(&w, FIXTURES "ClickEvent.userint.avsc");
    w_string(&w, "event_id", "ev-1");
    w_int(&w, "user_id", 42);
    w_long(&w, "timestamp", 1);
    w_enum(&w, "type", "VIEW");
    size_t n = w_frame(&w, ID_CLICK_USER_INT, m, sizeof m);
    for (int i = 0; i < 2; i++) { /* the second time from the cached failure */
        err[0] = '\0';
        assert_int_equal(codec_decode_click(C, m, n, &out, err, sizeof err),
                         CODEC_ERR_INCOMPATIBLE);
        assert_non_null(strstr(err, "user_id"));
        assert_true(is_zero(&out, sizeof out));
    }
    wvalue_free(&w);
}

static void test_writer_lacking_a_required_field_without_default_is_incompatible(void **state) {
    (void)state;
    wvalue w;
    uint8_t m[256];
    click_event out;
    wvalue_init(&w, FIXTURES "ClickEvent.notimestamp.avsc");
    w_string(&w, "event_id", "ev-1");
    w_string(&w, "user_id", "u-1");
    w_enum(&w, "type", "VIEW");
    size_t n = w_frame(&w, ID_CLICK_NO_TS, m, sizeof m);
    assert_int_equal(codec_decode_click(C, m, n, &out, err, sizeof err), CODEC_ERR_INCOMPATIBLE);
    assert_non_null(strstr(err, "timestamp"));
    wvalue_free(&w);
}

static void test_message_of_another_record_kind_is_incompatible(void **state) {
    (void)state;
    reaction r = full_reaction();
    click_event out;
    buf b = BUF_INIT;
    assert_int_equal(codec_encode_reaction(C, &r, &b, err, sizeof err), 0);
    assert_int_equal(codec_decode_click(C, b.p, b.len, &out, err, sizeof err),
                     CODEC_ERR_INCOMPATIBLE);
    assert_non_null(strstr(err, "io.copystream.Reaction"));
    assert_true(is_zero(&out, sizeof out));
    buf_free(&b);
}

/* ------------------------------------------------------------ invalid data */

/* Hand-assembled bodies, each next to the same body with its id emptied. */
static void test_empty_required_ids_are_invalid(void **state) {
    (void)state;
    uint8_t m[64];
    size_t n;
    click_event ce;
    catalog_item ci;
    personalized_copy pc;
    reaction rx;

    static const uint8_t click_no_event_id[] = {0x00, 0x04, 'u', '1', 2, 2, 0, 0, 0, 0, 0, 0, 0};
    static const uint8_t click_no_user_id[] = {0x04, 'e', '1', 0x00, 2, 2, 0, 0, 0, 0, 0, 0, 0};
    n = framed(m, ID_CLICK, click_no_event_id, sizeof click_no_event_id);
    assert_int_equal(codec_decode_click(C, m, n, &ce, err, sizeof err), CODEC_ERR_INVALID);
    assert_non_null(strstr(err, "event_id"));
    assert_true(is_zero(&ce, sizeof ce));
    n = framed(m, ID_CLICK, click_no_user_id, sizeof click_no_user_id);
    assert_int_equal(codec_decode_click(C, m, n, &ce, err, sizeof err), CODEC_ERR_INVALID);
    assert_non_null(strstr(err, "user_id"));
    assert_true(is_zero(&ce, sizeof ce));

    /* item_id, titles {}, four nulls, attributes [], available true, updated_at 1 */
    static const uint8_t item[] = {0x02, 'i', 0, 0, 0, 0, 0, 0, 1, 2};
    static const uint8_t item_no_id[] = {0x00, 0, 0, 0, 0, 0, 0, 1, 2};
    n = framed(m, ID_CATALOG, item, sizeof item);
    assert_int_equal(codec_decode_catalog(C, m, n, &ci, err, sizeof err), CODEC_OK);
    assert_string_equal(ci.item_id, "i");
    catalog_item_clear(&ci);
    n = framed(m, ID_CATALOG, item_no_id, sizeof item_no_id);
    assert_int_equal(codec_decode_catalog(C, m, n, &ci, err, sizeof err), CODEC_ERR_INVALID);
    assert_true(is_zero(&ci, sizeof ci));

    /* copy_id, user_id "u1", then 14 fields of one 0x00 byte each ("", 0, [] or null) */
    static const uint8_t copy[] = {0x02, 'c', 0x04, 'u', '1', 0, 0, 0, 0, 0, 0, 0,
                                   0, 0, 0, 0, 0, 0, 0};
    static const uint8_t copy_no_id[] = {0x00, 0x04, 'u', '1', 0, 0, 0, 0, 0, 0, 0,
                                         0, 0, 0, 0, 0, 0, 0};
    n = framed(m, ID_COPY, copy, sizeof copy);
    assert_int_equal(codec_decode_copy(C, m, n, &pc, err, sizeof err), CODEC_OK);
    assert_string_equal(pc.copy_id, "c");
    assert_string_equal(pc.text, "");
    assert_null(pc.model_version);
    personalized_copy_clear(&pc);
    n = framed(m, ID_COPY, copy_no_id, sizeof copy_no_id);
    assert_int_equal(codec_decode_copy(C, m, n, &pc, err, sizeof err), CODEC_ERR_INVALID);
    assert_non_null(strstr(err, "copy_id"));
    assert_true(is_zero(&pc, sizeof pc));

    /* reaction_id, copy_id null, user_id "u1", IMPRESSION, null, null, timestamp 0 */
    static const uint8_t rxb[] = {0x02, 'r', 0, 0x04, 'u', '1', 0, 0, 0, 0};
    static const uint8_t rxb_no_id[] = {0x00, 0, 0x04, 'u', '1', 0, 0, 0, 0};
    n = framed(m, ID_REACTION, rxb, sizeof rxb);
    assert_int_equal(codec_decode_reaction(C, m, n, &rx, err, sizeof err), CODEC_OK);
    assert_string_equal(rx.reaction_id, "r");
    assert_int_equal(rx.type, RX_IMPRESSION);
    reaction_clear(&rx);
    n = framed(m, ID_REACTION, rxb_no_id, sizeof rxb_no_id);
    assert_int_equal(codec_decode_reaction(C, m, n, &rx, err, sizeof err), CODEC_ERR_INVALID);
    assert_true(is_zero(&rx, sizeof rx));
}

static void test_string_with_nul_byte_is_invalid(void **state) {
    (void)state;
    static const uint8_t body[] = {0x06, 'u', 0, 'x', 0x04, 'u', '1', 2, 2, 0, 0, 0, 0, 0, 0, 0};
    uint8_t m[64];
    click_event out;
    size_t n = framed(m, ID_CLICK, body, sizeof body);
    assert_int_equal(codec_decode_click(C, m, n, &out, err, sizeof err), CODEC_ERR_INVALID);
    assert_true(is_zero(&out, sizeof out));
}

/* A title keyed "en-US<NUL>x" was decoded as the en-US title, since Avro C
 * cuts map keys at a NUL (found while writing tests/fuzz/fuzz_codec.c). */
static void test_map_key_with_nul_byte_is_malformed(void **state) {
    (void)state;
    /* item_id "s", titles {"en-US<NUL>x": "T"}, four null unions, no
     * attributes, available, updated_at 0 */
    static const uint8_t body[] = {0x02, 's', 0x02, 0x0e, 'e', 'n', '-', 'U', 'S', 0, 'x', 0x02,
                                   'T', 0x00, 0, 0, 0, 0, 0x00, 0x01, 0x00};
    uint8_t m[64];
    catalog_item out;
    size_t n = framed(m, ID_CATALOG, body, sizeof body);
    assert_int_equal(codec_decode_catalog(C, m, n, &out, err, sizeof err), CODEC_ERR_MALFORMED);
    assert_string_equal(err, "byte 3: map key holds a NUL byte");
    assert_true(is_zero(&out, sizeof out));
    /* The same message with the key "en-US-x" decodes. */
    m[5 + 9] = '-'; /* body byte 9, after the 5-byte frame */
    assert_int_equal(codec_decode_catalog(C, m, n, &out, err, sizeof err), CODEC_OK);
    assert_string_equal(out.titles[0].locale, "en-US-x");
    catalog_item_clear(&out);
}

static void test_encoder_refuses_what_the_decoder_would_reject(void **state) {
    (void)state;
    buf b = BUF_INIT;
    click_event e = full_click();
    e.user_id = "";
    assert_int_equal(codec_encode_click(C, &e, &b, err, sizeof err), -1);
    assert_non_null(strstr(err, "user_id"));
    e = full_click();
    e.event_id = NULL;
    assert_int_equal(codec_encode_click(C, &e, &b, err, sizeof err), -1);
    e = full_click();
    e.type = EV__COUNT;
    assert_int_equal(codec_encode_click(C, &e, &b, err, sizeof err), -1);
    reaction r = full_reaction();
    r.type = (reaction_type)-1;
    assert_int_equal(codec_encode_reaction(C, &r, &b, err, sizeof err), -1);
    personalized_copy pc = full_copy();
    pc.text = NULL;
    assert_int_equal(codec_encode_copy(C, &pc, &b, err, sizeof err), -1);
    assert_int_equal(b.len, 0);
    buf_free(&b);
}

static void test_encoding_over_max_bytes_fails_and_leaves_buffer_alone(void **state) {
    (void)state;
    codec *c = new_codec(5 + sizeof small_click_body); /* exactly the small click */
    assert_non_null(c);
    click_event small = {.event_id = "e1", .user_id = "u1", .ts_ms = 1, .type = EV_CLICK};
    click_event big = full_click();
    buf b = BUF_INIT;
    assert_int_equal(codec_encode_click(c, &small, &b, err, sizeof err), 0);
    assert_int_equal(b.len, 5 + sizeof small_click_body);
    assert_int_equal(codec_encode_click(c, &big, &b, err, sizeof err), -1);
    assert_int_equal(b.len, 5 + sizeof small_click_body);
    buf_free(&b);
    codec_free(c);
}

/* ------------------------------------------------------------------ poison */

/* Every decoder, on every failure, must leave its output zeroed. */
static codec_status decode_any(record_kind k, const uint8_t *m, size_t n) {
    codec_status st = CODEC_OK;
    switch (k) {
    case REC_CLICK_EVENT: {
        click_event o;
        st = codec_decode_click(C, m, n, &o, err, sizeof err);
        if (st != CODEC_OK) assert_true(is_zero(&o, sizeof o));
        click_event_clear(&o);
        break;
    }
    case REC_CATALOG_ITEM: {
        catalog_item o;
        st = codec_decode_catalog(C, m, n, &o, err, sizeof err);
        if (st != CODEC_OK) assert_true(is_zero(&o, sizeof o));
        catalog_item_clear(&o);
        break;
    }
    case REC_PERSONALIZED_COPY: {
        personalized_copy o;
        st = codec_decode_copy(C, m, n, &o, err, sizeof err);
        if (st != CODEC_OK) assert_true(is_zero(&o, sizeof o));
        personalized_copy_clear(&o);
        break;
    }
    default: {
        reaction o;
        st = codec_decode_reaction(C, m, n, &o, err, sizeof err);
        if (st != CODEC_OK) assert_true(is_zero(&o, sizeof o));
        reaction_clear(&o);
        break;
    }
    }
    return st;
}

static void encode_samples(buf msgs[REC__COUNT]) {
    click_event e = full_click();
    catalog_item it = full_item();
    personalized_copy pc = full_copy();
    reaction r = full_reaction();
    assert_int_equal(codec_encode_click(C, &e, &msgs[REC_CLICK_EVENT], err, sizeof err), 0);
    assert_int_equal(codec_encode_catalog(C, &it, &msgs[REC_CATALOG_ITEM], err, sizeof err), 0);
    assert_int_equal(codec_encode_copy(C, &pc, &msgs[REC_PERSONALIZED_COPY], err, sizeof err), 0);
    assert_int_equal(codec_encode_reaction(C, &r, &msgs[REC_REACTION], err, sizeof err), 0);
}

static void test_every_truncated_prefix_is_rejected(void **state) {
    (void)state;
    buf msgs[REC__COUNT] = {BUF_INIT, BUF_INIT, BUF_INIT, BUF_INIT};
    encode_samples(msgs);
    for (int k = 0; k < REC__COUNT; k++) {
        const uint8_t *m = (const uint8_t *)msgs[k].p;
        assert_int_equal(decode_any((record_kind)k, m, msgs[k].len), CODEC_OK);
        for (size_t n = 0; n < msgs[k].len; n++) {
            codec_status want = n == 0 ? CODEC_ERR_EMPTY
                                : n < 5 ? CODEC_ERR_FRAMING
                                        : CODEC_ERR_MALFORMED;
            assert_int_equal(decode_any((record_kind)k, m, n), want);
        }
        buf_free(&msgs[k]);
    }
}

static void test_string_length_of_2_pow_40_is_malformed(void **state) {
    (void)state;
    /* zig-zag(2^40) = 2^41: six varint bytes */
    static const uint8_t body[] = {0x80, 0x80, 0x80, 0x80, 0x80, 0x40, 'a', 'b', 'c'};
    uint8_t m[32];
    size_t n = framed(m, ID_CLICK, body, sizeof body);
    assert_int_equal(decode_any(REC_CLICK_EVENT, m, n), CODEC_ERR_MALFORMED);
    assert_non_null(strstr(err, "1099511627776"));
}

static void test_negative_string_length_is_malformed(void **state) {
    (void)state;
    static const uint8_t body[] = {0x01, 0x04, 'u', '1', 2, 2, 0, 0, 0, 0, 0, 0, 0};
    uint8_t m[32];
    size_t n = framed(m, ID_CLICK, body, sizeof body);
    assert_int_equal(decode_any(REC_CLICK_EVENT, m, n), CODEC_ERR_MALFORMED);
}

static void test_array_count_of_2_pow_31_with_short_body_is_malformed(void **state) {
    (void)state;
    /* item_id "i1", titles {}, four nulls, attributes: count zig-zag(2^31) */
    static const uint8_t attrs_body[] = {
        0x04, 'i', '1', 0, 0, 0, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x10, 0x02, 'a', 0, 0, 1, 2,
    };
    /* the same count for the titles map */
    static const uint8_t titles_body[] = {
        0x04, 'i', '1', 0x80, 0x80, 0x80, 0x80, 0x10, 0x02, 'a', 0x02, 'b', 0,
    };
    uint8_t m[64];
    size_t n = framed(m, ID_CATALOG, attrs_body, sizeof attrs_body);
    assert_int_equal(decode_any(REC_CATALOG_ITEM, m, n), CODEC_ERR_MALFORMED);
    n = framed(m, ID_CATALOG, titles_body, sizeof titles_body);
    assert_int_equal(decode_any(REC_CATALOG_ITEM, m, n), CODEC_ERR_MALFORMED);
}

static void test_negative_block_count_is_read_with_its_byte_size(void **state) {
    (void)state;
    /* titles as one block of count -1 and size 6 holding "en" -> "Hi" */
    uint8_t body[] = {
        0x04, 'i', '1', 0x01, 0x0c, 0x04, 'e', 'n', 0x04, 'H', 'i', 0x00,
        0, 0, 0, 0, 0, 1, 2,
    };
    uint8_t m[64];
    catalog_item out;
    size_t n = framed(m, ID_CATALOG, body, sizeof body);
    assert_int_equal(codec_decode_catalog(C, m, n, &out, err, sizeof err), CODEC_OK);
    assert_int_equal(out.n_titles, 1);
    assert_string_equal(localized_find(out.titles, out.n_titles, "en"), "Hi");
    catalog_item_clear(&out);
    m[5 + 4] = 0x0e; /* a block size of 7 is a lie */
    assert_int_equal(decode_any(REC_CATALOG_ITEM, m, n), CODEC_ERR_MALFORMED);
}

static void test_bad_union_branch_index_is_malformed(void **state) {
    (void)state;
    uint8_t body[sizeof small_click_body];
    uint8_t m[64];
    memcpy(body, small_click_body, sizeof body);
    body[8] = 0x04; /* item_id branch 2 of ["null", "string"] */
    size_t n = framed(m, ID_CLICK, body, sizeof body);
    assert_int_equal(decode_any(REC_CLICK_EVENT, m, n), CODEC_ERR_MALFORMED);
    body[8] = 0x01; /* branch -1 */
    n = framed(m, ID_CLICK, body, sizeof body);
    assert_int_equal(decode_any(REC_CLICK_EVENT, m, n), CODEC_ERR_MALFORMED);
}

static void test_bad_enum_index_is_malformed(void **state) {
    (void)state;
    uint8_t body[sizeof small_click_body];
    uint8_t m[64];
    memcpy(body, small_click_body, sizeof body);
    body[7] = 0x0c; /* EventType has 6 symbols: 6 is out of range */
    size_t n = framed(m, ID_CLICK, body, sizeof body);
    assert_int_equal(decode_any(REC_CLICK_EVENT, m, n), CODEC_ERR_MALFORMED);
    body[7] = 0x01; /* -1 */
    n = framed(m, ID_CLICK, body, sizeof body);
    assert_int_equal(decode_any(REC_CLICK_EVENT, m, n), CODEC_ERR_MALFORMED);
    body[7] = 0x08; /* 4 = SEARCH exists in ours but not in the v0 writer */
    n = framed(m, ID_CLICK_V0, body, sizeof body - 3);
    assert_int_equal(decode_any(REC_CLICK_EVENT, m, n), CODEC_ERR_MALFORMED);
}

static void test_trailing_garbage_is_malformed(void **state) {
    (void)state;
    uint8_t m[64];
    size_t n = framed(m, ID_CLICK, small_click_body, sizeof small_click_body);
    assert_int_equal(decode_any(REC_CLICK_EVENT, m, n), CODEC_OK);
    m[n++] = 0x00;
    assert_int_equal(decode_any(REC_CLICK_EVENT, m, n), CODEC_ERR_MALFORMED);
    assert_non_null(strstr(err, "trailing"));
}

static void test_wrong_magic_byte_is_bad_framing(void **state) {
    (void)state;
    uint8_t m[64];
    size_t n = framed(m, ID_CLICK, small_click_body, sizeof small_click_body);
    m[0] = 0x01;
    assert_int_equal(decode_any(REC_CLICK_EVENT, m, n), CODEC_ERR_FRAMING);
}

static void test_unknown_schema_id_is_unknown_schema(void **state) {
    (void)state;
    uint8_t m[64];
    size_t n = framed(m, 999, small_click_body, sizeof small_click_body);
    assert_int_equal(decode_any(REC_CLICK_EVENT, m, n), CODEC_ERR_UNKNOWN_SCHEMA);
    assert_non_null(strstr(err, "999"));
    n = framed(m, -1, small_click_body, sizeof small_click_body);
    assert_int_equal(decode_any(REC_CLICK_EVENT, m, n), CODEC_ERR_UNKNOWN_SCHEMA);
}

static void test_message_over_max_bytes_is_oversized(void **state) {
    (void)state;
    codec *c = new_codec(16);
    uint8_t m[64];
    click_event out;
    size_t n = framed(m, ID_CLICK, small_click_body, sizeof small_click_body);
    assert_true(n > 16);
    assert_int_equal(codec_decode_click(c, m, n, &out, err, sizeof err), CODEC_ERR_OVERSIZED);
    assert_true(is_zero(&out, sizeof out));
    codec_free(c);
}

static void test_null_or_zero_length_message_is_empty(void **state) {
    (void)state;
    uint8_t m[1] = {0};
    assert_int_equal(decode_any(REC_CLICK_EVENT, NULL, 0), CODEC_ERR_EMPTY);
    assert_int_equal(decode_any(REC_REACTION, NULL, 10), CODEC_ERR_EMPTY);
    assert_int_equal(decode_any(REC_CATALOG_ITEM, m, 0), CODEC_ERR_EMPTY);
}

static void test_overlong_varint_is_malformed(void **state) {
    (void)state;
    uint8_t body[32];
    memcpy(body, small_click_body, 6);
    /* timestamp as 11 continuation bytes */
    for (int i = 0; i < 11; i++) body[6 + i] = 0x80;
    body[17] = 0x00;
    uint8_t m[64];
    size_t n = framed(m, ID_CLICK, body, 18);
    assert_int_equal(decode_any(REC_CLICK_EVENT, m, n), CODEC_ERR_MALFORMED);
}

static void test_boolean_byte_other_than_0_or_1_is_malformed(void **state) {
    (void)state;
    uint8_t body[] = {0x02, 'i', 0, 0, 0, 0, 0, 0, 2, 2}; /* available = 2 */
    uint8_t m[32];
    size_t n = framed(m, ID_CATALOG, body, sizeof body);
    assert_int_equal(decode_any(REC_CATALOG_ITEM, m, n), CODEC_ERR_MALFORMED);
}

/* xorshift64*: the same mutations on every machine and libc. */
static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static uint64_t rng(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717u;
}

static void test_random_mutations_never_crash_or_leak(void **state) {
    (void)state;
    buf msgs[REC__COUNT] = {BUF_INIT, BUF_INIT, BUF_INIT, BUF_INIT};
    encode_samples(msgs);
    uint8_t m[2048];
    int ok = 0, rejected = 0;
    for (int iter = 0; iter < 20000; iter++) {
        record_kind k = (record_kind)(rng() % REC__COUNT);
        size_t n = msgs[k].len;
        memcpy(m, msgs[k].p, n);
        int edits = 1 + (int)(rng() % 4);
        for (int e = 0; e < edits; e++) {
            size_t at = 5 + (size_t)(rng() % (n - 5));
            switch (rng() % 6) {
            case 0: m[at] ^= (uint8_t)(1u << (rng() % 8)); break;
            case 1: m[at] = (uint8_t)rng(); break;
            case 2: m[at] = (uint8_t)(rng() % 2 ? 0xff : 0x80); break;
            case 3: n = at > 5 ? at : n; break;                 /* truncate */
            case 4:                                             /* append */
                if (n + 8 < sizeof m)
                    for (int j = 0; j < 8; j++) m[n++] = (uint8_t)rng();
                break;
            default: if (rng() % 8 == 0) m[1 + rng() % 4] ^= 1; /* schema id */
            }
        }
        /* now and then ask for the wrong kind */
        record_kind as = rng() % 10 == 0 ? (record_kind)(rng() % REC__COUNT) : k;
        if (decode_any(as, m, n) == CODEC_OK)
            ok++;
        else
            rejected++;
    }
    assert_true(rejected > 0);
    assert_true(ok + rejected == 20000);
    for (int k = 0; k < REC__COUNT; k++) buf_free(&msgs[k]);
}

/* --------------------------------------------------------------- lifecycle */

static void test_codec_new_reports_the_missing_schema_file(void **state) {
    (void)state;
    err[0] = '\0';
    assert_null(codec_new("no/such/dir", NULL, 0, 1024, err, sizeof err));
    assert_non_null(strstr(err, "no/such/dir/ClickEvent.avsc"));
    static const codec_schema_id missing[] = {{1, "Nope.avsc"}};
    assert_null(codec_new(SCHEMA_DIR, missing, 1, 1024, err, sizeof err));
    assert_non_null(strstr(err, "schemas/Nope.avsc"));
}

static void test_codec_new_rejects_duplicate_ids(void **state) {
    (void)state;
    static const codec_schema_id dup[] = {{1, "ClickEvent.avsc"}, {1, "Reaction.avsc"}};
    assert_null(codec_new(SCHEMA_DIR, dup, 2, 1024, err, sizeof err));
    assert_non_null(strstr(err, "twice"));
}

static void test_codec_new_reports_an_unparsable_schema_by_absolute_path(void **state) {
    (void)state;
    char path[] = "/tmp/test_codec_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "{\"type\": \"record\", \"fields\": 3}", 31), 31);
    close(fd);
    codec_schema_id bad[] = {{1, path}};
    assert_null(codec_new(SCHEMA_DIR, bad, 1, 1024, err, sizeof err));
    assert_non_null(strstr(err, path));
    unlink(path);
}

static void test_codec_free_null_is_a_no_op(void **state) {
    (void)state;
    codec_free(NULL);
}

/* ------------------------------------------------------------------ names */

static void test_status_and_kind_names_are_the_documented_strings(void **state) {
    (void)state;
    assert_string_equal(codec_status_name(CODEC_OK), "ok");
    assert_string_equal(codec_status_name(CODEC_ERR_EMPTY), "empty");
    assert_string_equal(codec_status_name(CODEC_ERR_OVERSIZED), "oversized");
    assert_string_equal(codec_status_name(CODEC_ERR_FRAMING), "bad-framing");
    assert_string_equal(codec_status_name(CODEC_ERR_UNKNOWN_SCHEMA), "unknown-schema");
    assert_string_equal(codec_status_name(CODEC_ERR_INCOMPATIBLE), "incompatible-schema");
    assert_string_equal(codec_status_name(CODEC_ERR_MALFORMED), "malformed");
    assert_string_equal(codec_status_name(CODEC_ERR_INVALID), "invalid");
    assert_string_equal(record_kind_name(REC_PERSONALIZED_COPY), "PersonalizedCopy");
    assert_string_equal(record_kind_fullname(REC_CATALOG_ITEM), "io.copystream.CatalogItem");
}

static void test_event_type_names_round_trip_and_unknown_parses_to_minus_1(void **state) {
    (void)state;
    static const char *want[] = {"view", "click", "add_to_cart", "purchase", "search",
                                 "favorite"};
    for (int t = 0; t < EV__COUNT; t++) {
        assert_string_equal(event_type_name((event_type)t), want[t]);
        assert_int_equal(event_type_parse(want[t]), t);
    }
    assert_int_equal(event_type_parse("VIEW"), -1);
    assert_int_equal(event_type_parse(""), -1);
    assert_int_equal(event_type_parse(NULL), -1);
    assert_string_equal(event_type_name(EV__COUNT), "unknown");
    assert_string_equal(reaction_type_name(RX_IMPRESSION), "impression");
    assert_string_equal(reaction_type_name(RX_CLICK), "click");
    assert_string_equal(reaction_type_name(RX_CONVERT), "convert");
    assert_string_equal(reaction_type_name(RX_DISMISS), "dismiss");
    assert_string_equal(reaction_type_name(RX_UNSUBSCRIBE), "unsubscribe");
}

static void test_localized_find_returns_the_text_of_the_exact_locale(void **state) {
    (void)state;
    assert_string_equal(localized_find(titles, 2, "en-US"), "Flagship phone");
    assert_string_equal(localized_find(titles, 2, "zh-CN"), "旗舰手机");
    assert_null(localized_find(titles, 2, "en"));
    assert_null(localized_find(titles, 2, NULL));
    assert_null(localized_find(NULL, 0, "en-US"));
}

static void test_clear_frees_and_zeroes_and_is_a_no_op_on_zeroed_records(void **state) {
    (void)state;
    click_event e = {0};
    click_event_clear(&e);
    catalog_item it = {0};
    catalog_item_clear(&it);
    it.item_id = strdup("x");
    it.titles = calloc(1, sizeof *it.titles);
    it.n_titles = 1;
    it.titles[0].locale = strdup("en");
    it.attrs = calloc(1, sizeof *it.attrs);
    it.n_attrs = 1;
    it.attrs[0].phrases = calloc(1, sizeof *it.attrs[0].phrases);
    it.attrs[0].n_phrases = 1;
    it.attrs[0].phrases[0].text = strdup("y");
    catalog_item_clear(&it); /* frees partial entries too; valgrind checks */
    assert_true(is_zero(&it, sizeof it));
    personalized_copy pc = {0};
    personalized_copy_clear(&pc);
    reaction r = {0};
    reaction_clear(&r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_click_round_trip_with_all_optional_fields),
        cmocka_unit_test(test_click_round_trip_with_optional_fields_absent),
        cmocka_unit_test(test_catalog_round_trip_with_all_fields),
        cmocka_unit_test(test_catalog_round_trip_with_optional_fields_absent),
        cmocka_unit_test(test_copy_round_trip_with_all_fields),
        cmocka_unit_test(test_copy_round_trip_with_optional_fields_absent),
        cmocka_unit_test(test_reaction_round_trip_with_all_fields),
        cmocka_unit_test(test_reaction_round_trip_with_optional_fields_absent),
        cmocka_unit_test(test_encode_appends_to_what_the_buffer_holds),
        cmocka_unit_test(test_encoded_click_is_magic_zero_big_endian_id_then_avro_body),
        cmocka_unit_test(test_frame_id_is_big_endian_and_lowest_matching_id_wins),
        cmocka_unit_test(test_writer_id_is_the_lowest_configured_id_of_the_current_schema),
        cmocka_unit_test(test_kind_without_a_writer_id_cannot_be_encoded),
        cmocka_unit_test(test_hand_assembled_click_decodes),
        cmocka_unit_test(test_older_writer_schema_decodes_with_missing_fields_null),
        cmocka_unit_test(test_older_catalog_writer_gets_default_attributes_and_available),
        cmocka_unit_test(test_newer_writer_schema_decodes_and_ignores_extra_fields),
        cmocka_unit_test(test_newer_enum_symbol_unknown_to_reader_is_incompatible),
        cmocka_unit_test(test_enum_symbols_and_fields_resolve_by_name_not_position),
        cmocka_unit_test(test_writer_with_user_id_as_int_is_incompatible),
        cmocka_unit_test(test_writer_lacking_a_required_field_without_default_is_incompatible),
        cmocka_unit_test(test_message_of_another_record_kind_is_incompatible),
        cmocka_unit_test(test_empty_required_ids_are_invalid),
        cmocka_unit_test(test_string_with_nul_byte_is_invalid),
        cmocka_unit_test(test_map_key_with_nul_byte_is_malformed),
        cmocka_unit_test(test_encoder_refuses_what_the_decoder_would_reject),
        cmocka_unit_test(test_encoding_over_max_bytes_fails_and_leaves_buffer_alone),
        cmocka_unit_test(test_every_truncated_prefix_is_rejected),
        cmocka_unit_test(test_string_length_of_2_pow_40_is_malformed),
        cmocka_unit_test(test_negative_string_length_is_malformed),
        cmocka_unit_test(test_array_count_of_2_pow_31_with_short_body_is_malformed),
        cmocka_unit_test(test_negative_block_count_is_read_with_its_byte_size),
        cmocka_unit_test(test_bad_union_branch_index_is_malformed),
        cmocka_unit_test(test_bad_enum_index_is_malformed),
        cmocka_unit_test(test_trailing_garbage_is_malformed),
        cmocka_unit_test(test_wrong_magic_byte_is_bad_framing),
        cmocka_unit_test(test_unknown_schema_id_is_unknown_schema),
        cmocka_unit_test(test_message_over_max_bytes_is_oversized),
        cmocka_unit_test(test_null_or_zero_length_message_is_empty),
        cmocka_unit_test(test_overlong_varint_is_malformed),
        cmocka_unit_test(test_boolean_byte_other_than_0_or_1_is_malformed),
        cmocka_unit_test(test_random_mutations_never_crash_or_leak),
        cmocka_unit_test(test_codec_new_reports_the_missing_schema_file),
        cmocka_unit_test(test_codec_new_rejects_duplicate_ids),
        cmocka_unit_test(test_codec_new_reports_an_unparsable_schema_by_absolute_path),
        cmocka_unit_test(test_codec_free_null_is_a_no_op),
        cmocka_unit_test(test_status_and_kind_names_are_the_documented_strings),
        cmocka_unit_test(test_event_type_names_round_trip_and_unknown_parses_to_minus_1),
        cmocka_unit_test(test_localized_find_returns_the_text_of_the_exact_locale),
        cmocka_unit_test(test_clear_frees_and_zeroes_and_is_a_no_op_on_zeroed_records),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
