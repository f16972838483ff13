/* fuzz_codec.c -- libFuzzer target: any bytes, as the value of a Kafka message,
 * through the decoders the service runs on its input topics (codec.c: the
 * Confluent frame, the max_bytes guard, the id table, schema resolution,
 * avrocheck and Avro C).
 *
 * The codec is set up like the service's, from schemas/, with the shipped ids
 * 1-4, plus writers whose schemas differ from ours so that the resolution
 * paths run too: the unit tests' fixtures (older, newer, shuffled and
 * incompatible writers, ids 10-20) and three writers kept here (ids 30-32,
 * tests/fuzz/schemas) that need promotions, reordered and wider unions,
 * unknown enum symbols and skipping of nested, recursive and zero-byte data.
 * Every input is offered to all four decoders, as a message on each topic.
 *
 * Properties, beyond "no crash, leak or undefined behaviour":
 *   - a refused message has a status with a name and a non-empty reason, and
 *     leaves the record zeroed;
 *   - a decoded message obeys the rules the service relies on (required ids
 *     present and non-empty, enums in range), and encodes again to a message
 *     that decodes to the same record;
 *   - a codec whose max_bytes is the config minimum (64) refuses longer
 *     messages as oversized and otherwise agrees with the first.
 *
 * Seeds: tests/fuzz/corpus/codec, written by tests/fuzz/mkseeds.py with
 * fastavro (an independent Avro implementation) from the same schemas. */
#include "fuzz.h"

#include <math.h>

#include "buf.h"
#include "codec.h"
#include "log.h"
#include "records.h"
#include "util.h"

#define SMALL_MAX_BYTES 64 /* input.max_bytes's lowest allowed value */

static const codec_schema_id ids[] = {
    {1, "ClickEvent.avsc"},
    {2, "CatalogItem.avsc"},
    {3, "PersonalizedCopy.avsc"},
    {4, "Reaction.avsc"},
    {10, "../tests/unit/schemas/ClickEvent.v0.avsc"},
    {11, "../tests/unit/schemas/ClickEvent.v2.avsc"},
    {12, "../tests/unit/schemas/ClickEvent.shuffled.avsc"},
    {13, "../tests/unit/schemas/ClickEvent.userint.avsc"},
    {14, "../tests/unit/schemas/ClickEvent.notimestamp.avsc"},
    {20, "../tests/unit/schemas/CatalogItem.v0.avsc"},
    {30, "../tests/fuzz/schemas/ClickEvent.wide.avsc"},
    {31, "../tests/fuzz/schemas/Reaction.wide.avsc"},
    {32, "../tests/fuzz/schemas/CatalogItem.wide.avsc"},
};

static codec *C, *SMALL;

/* At exit, so that LeakSanitizer's final check sees only real leaks. */
static void free_codecs(void) {
    codec_free(C);
    codec_free(SMALL);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    char err[512];
    (void)argc;
    (void)argv;
    log_set_level(LOG_ERROR); /* an unresolvable id warns once; that is expected here */
    C = codec_new("schemas", ids, UTIL_ARRAY_LEN(ids), 1 << 20, err, sizeof err);
    FUZZ_CHECK(C, "codec_new: %s (run from the repository root)", err);
    SMALL = codec_new("schemas", ids, UTIL_ARRAY_LEN(ids), SMALL_MAX_BYTES, err, sizeof err);
    FUZZ_CHECK(SMALL, "codec_new: %s", err);
    atexit(free_codecs);
    return 0;
}

/* ---- equality of decoded records ---------------------------------------- */

static int str_eq(const char *a, const char *b) {
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* Bit for bit: a NaN is a legal double and must survive the round trip. */
static int dbl_eq(double a, double b) { return memcmp(&a, &b, sizeof a) == 0; }

static int localized_eq(const localized *a, size_t na, const localized *b, size_t nb) {
    if (na != nb) return 0;
    for (size_t i = 0; i < na; i++)
        if (!str_eq(a[i].locale, b[i].locale) || !str_eq(a[i].text, b[i].text)) return 0;
    return 1;
}

static int click_eq(const click_event *a, const click_event *b) {
    return str_eq(a->event_id, b->event_id) && str_eq(a->user_id, b->user_id) &&
           a->ts_ms == b->ts_ms && a->type == b->type && str_eq(a->item_id, b->item_id) &&
           str_eq(a->category, b->category) && a->has_price == b->has_price &&
           (!a->has_price || a->price_micros == b->price_micros) &&
           str_eq(a->currency, b->currency) && str_eq(a->query, b->query) &&
           str_eq(a->session_id, b->session_id) && str_eq(a->locale, b->locale);
}

static int catalog_eq(const catalog_item *a, const catalog_item *b) {
    if (!str_eq(a->item_id, b->item_id) ||
        !localized_eq(a->titles, a->n_titles, b->titles, b->n_titles) ||
        !str_eq(a->category, b->category) || !str_eq(a->brand, b->brand) ||
        a->has_price != b->has_price || (a->has_price && a->price_micros != b->price_micros) ||
        !str_eq(a->currency, b->currency) || a->n_attrs != b->n_attrs ||
        a->available != b->available || a->updated_ms != b->updated_ms)
        return 0;
    for (size_t i = 0; i < a->n_attrs; i++)
        if (!str_eq(a->attrs[i].id, b->attrs[i].id) ||
            !localized_eq(a->attrs[i].phrases, a->attrs[i].n_phrases, b->attrs[i].phrases,
                          b->attrs[i].n_phrases))
            return 0;
    return 1;
}

static int copy_eq(const personalized_copy *a, const personalized_copy *b) {
    if (!str_eq(a->copy_id, b->copy_id) || !str_eq(a->user_id, b->user_id) ||
        !str_eq(a->source_event_id, b->source_event_id) ||
        !str_eq(a->source_topic, b->source_topic) || a->source_partition != b->source_partition ||
        a->source_offset != b->source_offset || !str_eq(a->locale, b->locale) ||
        !str_eq(a->text, b->text) || !str_eq(a->intent, b->intent) ||
        !str_eq(a->template_id, b->template_id) || !str_eq(a->variant_id, b->variant_id) ||
        !str_eq(a->strategy, b->strategy) || !str_eq(a->model_version, b->model_version) ||
        a->created_ms != b->created_ms || a->n_items != b->n_items ||
        a->n_reasons != b->n_reasons)
        return 0;
    for (size_t i = 0; i < a->n_items; i++) {
        const promoted_item *x = &a->items[i], *y = &b->items[i];
        if (!str_eq(x->item_id, y->item_id) || !str_eq(x->title, y->title) ||
            !dbl_eq(x->score, y->score) || x->has_price != y->has_price ||
            (x->has_price && x->price_micros != y->price_micros) ||
            !str_eq(x->currency, y->currency))
            return 0;
    }
    for (size_t i = 0; i < a->n_reasons; i++) {
        const copy_reason *x = &a->reasons[i], *y = &b->reasons[i];
        if (!str_eq(x->code, y->code) || !str_eq(x->attribute_id, y->attribute_id) ||
            !str_eq(x->text, y->text) || !dbl_eq(x->score, y->score))
            return 0;
    }
    return 1;
}

static int reaction_eq(const reaction *a, const reaction *b) {
    return str_eq(a->reaction_id, b->reaction_id) && str_eq(a->copy_id, b->copy_id) &&
           str_eq(a->user_id, b->user_id) && a->type == b->type &&
           str_eq(a->item_id, b->item_id) && a->has_value == b->has_value &&
           (!a->has_value || dbl_eq(a->value, b->value)) && a->ts_ms == b->ts_ms;
}

static int nonempty(const char *s) { return s && *s; }

static int is_zero(const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i]) return 0;
    return 1;
}

/* ---- one decoder --------------------------------------------------------- */

/* Decodes msg as kind with C and SMALL, checks the properties in the file
 * comment, and re-encodes what decoded. One macro per record type, because
 * the four decoders differ only in types. */
#define FUZZ_KIND(T, decode, encode, clear, eq, valid)                                       \
    static void fuzz_##T(const uint8_t *msg, size_t len) {                                   \
        T a, b, s;                                                                           \
        char err[512] = "", err2[512] = "";                                                  \
        buf out = BUF_INIT;                                                                  \
        codec_status st = decode(C, msg, len, &a, err, sizeof err);                          \
        FUZZ_CHECK((unsigned)st < CODEC__COUNT, #decode ": status %d", (int)st);            \
        codec_status small = decode(SMALL, msg, len, &s, err2, sizeof err2);                 \
        if (len > SMALL_MAX_BYTES)                                                           \
            FUZZ_CHECK(small == CODEC_ERR_OVERSIZED, #decode ": %zu bytes gave %s", len,    \
                       codec_status_name(small));                                            \
        else                                                                                 \
            FUZZ_CHECK(small == st, #decode ": max_bytes changed %s to %s",                 \
                       codec_status_name(st), codec_status_name(small));                     \
        if (small == CODEC_OK) FUZZ_CHECK(eq(&a, &s), #decode ": codecs disagree");         \
        clear(&s);                                                                           \
        if (st != CODEC_OK) {                                                                \
            FUZZ_CHECK(err[0], #decode ": %s without a reason", codec_status_name(st));      \
            FUZZ_CHECK(is_zero(&a, sizeof a), #decode ": %s left the record filled",         \
                       codec_status_name(st));                                               \
            return;                                                                          \
        }                                                                                    \
        FUZZ_CHECK(valid(&a), #decode ": decoded record breaks the rules");                  \
        int rc = encode(C, &a, &out, err, sizeof err);                                       \
        FUZZ_CHECK(rc == 0, #encode " refused a decoded record: %s", err);                   \
        st = decode(C, out.p, out.len, &b, err, sizeof err);                                 \
        FUZZ_CHECK(st == CODEC_OK, "re-encoded record does not decode: %s: %s",              \
                   codec_status_name(st), err);                                              \
        FUZZ_CHECK(eq(&a, &b), "re-encoded record decodes to another record");               \
        clear(&a);                                                                           \
        clear(&b);                                                                           \
        buf_free(&out);                                                                      \
    }

static int click_valid(const click_event *e) {
    return nonempty(e->event_id) && nonempty(e->user_id) && (unsigned)e->type < EV__COUNT;
}

static int catalog_valid(const catalog_item *it) {
    for (size_t i = 0; i < it->n_titles; i++)
        if (!it->titles[i].locale || !it->titles[i].text) return 0;
    for (size_t i = 0; i < it->n_attrs; i++)
        if (!it->attrs[i].id) return 0;
    return nonempty(it->item_id) && (it->available == 0 || it->available == 1);
}

static int copy_valid(const personalized_copy *c) {
    for (size_t i = 0; i < c->n_items; i++)
        if (!c->items[i].item_id) return 0;
    for (size_t i = 0; i < c->n_reasons; i++)
        if (!c->reasons[i].code || !c->reasons[i].text) return 0;
    return nonempty(c->copy_id) && nonempty(c->user_id) && c->text && c->locale;
}

static int reaction_valid(const reaction *r) {
    return nonempty(r->reaction_id) && nonempty(r->user_id) && (unsigned)r->type < RX__COUNT;
}

FUZZ_KIND(click_event, codec_decode_click, codec_encode_click, click_event_clear, click_eq,
          click_valid)
FUZZ_KIND(catalog_item, codec_decode_catalog, codec_encode_catalog, catalog_item_clear,
          catalog_eq, catalog_valid)
FUZZ_KIND(personalized_copy, codec_decode_copy, codec_encode_copy, personalized_copy_clear,
          copy_eq, copy_valid)
FUZZ_KIND(reaction, codec_decode_reaction, codec_encode_reaction, reaction_clear, reaction_eq,
          reaction_valid)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len) {
    /* libFuzzer hands over a heap copy of exactly len bytes, so ASan sees a
     * read past the end of the message. */
    fuzz_click_event(data, len);
    fuzz_catalog_item(data, len);
    fuzz_personalized_copy(data, len);
    fuzz_reaction(data, len);
    return 0;
}
