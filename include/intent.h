/* intent.h -- why a copy is sent: intents and the rules that trigger them.
 *
 * Every copy answers one intent, and each intent has its own trigger rule
 * (intent.* keys, docs/INTENTS.md):
 *
 *   recommendation  an event of a type in copy.trigger_types that ends a
 *                   browsing streak: at least intent.recommendation.streak
 *                   such events in the event's category (the event
 *                   included) within intent.recommendation.streak_window_s
 *   cross_sell      a purchase
 *   re_engagement   any event of a user whose previous event is at least
 *                   intent.re_engagement.absence_s older
 *   cart_reminder   delayed: intent.cart_reminder.delay_s after an
 *                   add-to-cart, unless the item was bought since
 *   price_drop      delayed: a catalog update lowers the price of an item
 *                   the user viewed or carted within intent.price_drop.watch_s
 *                   by at least intent.price_drop.min_percent
 *
 * The first three are decided when the event is applied, from the user's
 * state and the catalog (intent_of_event), like any copy decision: a pure
 * function of event time. The two delayed ones become *triggers*: small
 * JSON messages that trigger.c produces to the triggers topic when they are
 * due, and that the service consumes like any other input, so that a copy
 * they cause is made, recorded and published with the same at-least-once
 * discipline as a copy caused by a click (docs/INTENTS.md). This file holds
 * the pure parts: the rules, the trigger's encoding, and what a trigger may
 * still promote when it arrives. */
#ifndef COPYSTREAM_INTENT_H
#define COPYSTREAM_INTENT_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "catalog.h"
#include "config.h"
#include "records.h"
#include "strategy.h"
#include "userstate.h"

typedef enum {
    INTENT_RECOMMENDATION = 0,
    INTENT_CART_REMINDER,
    INTENT_CROSS_SELL,
    INTENT_RE_ENGAGEMENT,
    INTENT_PRICE_DROP,
    INTENT__COUNT
} intent_kind;

/* "recommendation", "cart_reminder", ...; NULL out of range. */
const char *intent_name(int k);
/* The intent of a name, or -1. */
int intent_parse(const char *name);

/* Copies caused by a trigger are recorded at a position of their own: the
 * triggers topic's partition plus this, so that they never collide with the
 * clickstream positions copy records and outbox fields are keyed by. */
#define INTENT_TRIGGER_PARTITION_BASE 0x40000000

typedef struct {
    int enabled[INTENT__COUNT];
    unsigned streak_types;        /* event types (bits) that count toward a streak */
    uint32_t streak;              /* events in one category that make a streak */
    int64_t streak_window_ms;
    int64_t cart_delay_ms;
    int64_t absence_ms;
    double min_drop;              /* a price drop of at least this share (0.05 = 5 %) */
    unsigned watch_types;         /* event types that make a user watch an item's price */
    int64_t watch_ms;             /* how long they do */
    size_t max_watchers;          /* users remembered per item */
    int64_t max_late_ms;          /* a trigger found later than this after it was due is stale */
} intent_rules;

/* Reads the intent.* keys and copy.trigger_types. Returns 0, or -1 with
 * errstr (a key's value the config could not check on its own). */
int intent_rules_load(intent_rules *r, const config *c, char *errstr, size_t errlen);
/* The defaults documented in config/copystream.conf, for tests. */
void intent_rules_default(intent_rules *r);

/* The intent that a new click event e, just applied to u, triggers at once,
 * or -1 for none. prev_last_ms is u's latest event time before e (0: e is
 * the user's first). A purchase is a cross-sell; otherwise a return after
 * the absence is a re-engagement; otherwise a streak is a recommendation.
 * Categories come from the catalog (c may be NULL), e->category standing in
 * for an item the catalog does not know. Pure. */
int intent_of_event(const intent_rules *r, const catalog *c, const user_state *u,
                    const click_event *e, int64_t prev_last_ms);

/* The browsing streak e belongs to: e and the earlier events of u's sequence
 * of a streak type in e's category within the window before e. */
uint32_t intent_streak(const intent_rules *r, const catalog *c, const user_state *u,
                       const click_event *e);

/* ---- triggers ------------------------------------------------------------------ */

/* A delayed trigger: a due-set entry (trigger.c) or a message on the
 * triggers topic. Strings are heap copies owned by the struct. */
typedef struct {
    char *id;                 /* "<intent>:<item>:<ts>": upstream duplicates share it */
    char *user_id;
    int intent;               /* INTENT_CART_REMINDER or INTENT_PRICE_DROP */
    char *item_id;
    int64_t ts_ms;            /* when it was due: its event time */
    int64_t since_ms;         /* the add-to-cart's event time; the drop's */
    int has_old_price;        /* price drop: the price it dropped from */
    int64_t old_price_micros;
    char *currency;
} trigger;

void trigger_clear(trigger *t);

/* The due-set member of a trigger (trigger.c): the JSON object of intent,
 * user_id, item_id, for a price drop old_price_micros and currency, and
 * since when it is set (a trigger put back after quiet hours: its due time
 * no longer tells), keys sorted, so that the same trigger always makes the
 * same member. */
int trigger_member(const trigger *t, buf *out);
/* The message produced to the triggers topic: the member's fields plus id,
 * ts and since. */
int trigger_encode(const trigger *t, buf *out);
/* Parses a member (ts_ms and id then unset) or a message into *t
 * (cleared first). Returns 0, or -1 with errstr when it is not JSON, lacks a
 * required field, or names an intent that is not delayed. */
int trigger_decode(const void *data, size_t len, trigger *t, char *errstr, size_t errlen);
/* Sets t->id from its intent, item and ts_ms. Returns 0 or -1 (memory). */
int trigger_set_id(trigger *t);

/* Why a trigger that arrived no longer makes a copy, as a MET_SUPPRESSED_*
 * metric id, or 0 when it may: the item is gone or unavailable
 * (no_candidates), the user bought it since (already_bought), its price is
 * no longer below the old one (price_restored). Pure. */
int intent_check_trigger(const intent_rules *r, const catalog *c, const user_state *u,
                         const trigger *t);

/* The trigger's item as the one pick of *out, its title in p->locale and
 * the reasons for it (strategy_explain). Returns 1, 0 when the catalog has
 * no such item, or -1 when p is out of bounds. */
int intent_subject(const catalog *c, const user_state *u, const strategy_params *p,
                   const char *item_id, strategy_result *out);

#endif
