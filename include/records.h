/* records.h -- the plain C form of copystream's four Avro records.
 *
 * The wire contracts live in the schemas/ folder (.avsc files); these structs are what the rest
 * of the program sees after codec.c has decoded (and schema-resolved) a
 * message, or before it encodes one. Every string field is a NUL-terminated
 * heap copy owned by the struct; optional fields are NULL (strings) or carry a
 * has_* flag (numbers) when absent. Each record has a *_clear() that frees
 * what it owns and leaves the struct zeroed, so a cleared record can be
 * reused; *_clear() on a zeroed struct is a no-op. */
#ifndef COPYSTREAM_RECORDS_H
#define COPYSTREAM_RECORDS_H

#include <stddef.h>
#include <stdint.h>

/* Order and spelling follow the EventType enum in schemas/ClickEvent.avsc. */
typedef enum {
    EV_VIEW = 0,
    EV_CLICK,
    EV_ADD_TO_CART,
    EV_PURCHASE,
    EV_SEARCH,
    EV_FAVORITE,
    EV__COUNT
} event_type;

/* Lower-case names used in metrics labels and config keys ("add_to_cart"). */
const char *event_type_name(event_type t);
/* Parses a lower-case name; returns -1 when unknown. */
int event_type_parse(const char *name);

typedef struct {
    char *event_id;       /* required */
    char *user_id;        /* required; also the Kafka record key */
    int64_t ts_ms;        /* event time, Unix epoch milliseconds */
    event_type type;
    char *item_id;        /* NULL for events without an item (search) */
    char *category;
    int has_price;
    int64_t price_micros; /* price in millionths of the currency unit */
    char *currency;       /* ISO 4217, NULL when absent */
    char *query;
    char *session_id;
    char *locale;         /* BCP 47 such as "zh-CN"; NULL when unknown */
} click_event;

void click_event_clear(click_event *e);

/* A (locale, text) pair: the C form of an Avro map<string> entry. */
typedef struct {
    char *locale;
    char *text;
} localized;

/* Looks up the text for a locale; returns NULL when there is none. */
const char *localized_find(const localized *v, size_t n, const char *locale);

typedef struct {
    char *id;             /* stable attribute id, the key of affinities */
    localized *phrases;   /* [n_phrases] phrase per locale ("高清屏幕") */
    size_t n_phrases;
} item_attribute;

typedef struct {
    char *item_id;
    localized *titles;    /* [n_titles] title per locale */
    size_t n_titles;
    char *category;       /* NULL when unknown */
    char *brand;          /* NULL when unknown */
    int has_price;
    int64_t price_micros;
    char *currency;
    item_attribute *attrs; /* [n_attrs] */
    size_t n_attrs;
    int available;        /* in stock and sellable */
    int64_t updated_ms;
} catalog_item;

void catalog_item_clear(catalog_item *it);

typedef struct {
    char *item_id;
    char *title;          /* in the copy's locale; NULL when the catalog has none */
    double score;
    int has_price;
    int64_t price_micros;
    char *currency;
} promoted_item;

typedef struct {
    char *code;           /* machine-readable kind: "attribute_match", "category_affinity" */
    char *attribute_id;   /* NULL unless the reason is an attribute */
    char *text;           /* the phrase shown in the copy, in its locale */
    double score;         /* how strongly the user's affinity supports it */
} copy_reason;

typedef struct {
    char *copy_id;        /* deterministic from the source position */
    char *user_id;
    char *source_event_id;
    char *source_topic;
    int32_t source_partition;
    int64_t source_offset;
    char *locale;
    char *text;
    promoted_item *items; /* [n_items], best first */
    size_t n_items;
    copy_reason *reasons; /* [n_reasons], strongest first */
    size_t n_reasons;
    char *intent;
    char *template_id;
    char *variant_id;
    char *strategy;
    char *model_version;  /* NULL when no learned model was involved */
    int64_t created_ms;
} personalized_copy;

void personalized_copy_clear(personalized_copy *c);

/* Order and spelling follow the ReactionType enum in schemas/Reaction.avsc. */
typedef enum {
    RX_IMPRESSION = 0,
    RX_CLICK,
    RX_CONVERT,
    RX_DISMISS,
    RX_UNSUBSCRIBE,
    RX__COUNT
} reaction_type;

const char *reaction_type_name(reaction_type t);

typedef struct {
    char *reaction_id;    /* required; identifies upstream duplicates */
    char *copy_id;        /* NULL when the reaction is not tied to a copy */
    char *user_id;        /* required; also the Kafka record key */
    reaction_type type;
    char *item_id;        /* the item reacted to, when known */
    int has_value;
    double value;         /* e.g. order value of a conversion */
    int64_t ts_ms;
} reaction;

void reaction_clear(reaction *r);

#endif
