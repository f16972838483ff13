/* intent.c -- intents, their trigger rules, and the trigger's encoding; see
 * intent.h.
 *
 * Everything here is a pure function of its inputs -- the rules, the
 * catalog, one user's state, one event or trigger -- with event time as the
 * only clock, so that replaying the same input over the same state decides
 * the same intent. The I/O side of delayed triggers (the due sets in Redis,
 * the scanner, price-drop fan-out) is trigger.c.
 *
 * Triggers are JSON: they are written and read only by copystream, a human
 * debugging a stuck reminder can read them with any Kafka tool, and jansson
 * with JSON_SORT_KEYS makes the encoding deterministic, which the due sets
 * rely on (the same trigger must make the same member). */
#define _GNU_SOURCE /* asprintf */
#include "intent.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "util.h"

static const char *const intent_names[INTENT__COUNT] = {
    "recommendation", "cart_reminder", "cross_sell", "re_engagement", "price_drop"};

const char *intent_name(int k) {
    return k >= 0 && k < INTENT__COUNT ? intent_names[k] : NULL;
}

int intent_parse(const char *name) {
    for (int k = 0; k < INTENT__COUNT; k++)
        if (name && !strcmp(intent_names[k], name)) return k;
    return -1;
}

void intent_rules_default(intent_rules *r) {
    memset(r, 0, sizeof *r);
    for (int k = 0; k < INTENT__COUNT; k++) r->enabled[k] = 1;
    r->streak_types = 1u << EV_VIEW | 1u << EV_CLICK | 1u << EV_ADD_TO_CART |
                      1u << EV_PURCHASE | 1u << EV_FAVORITE;
    r->streak = 3;
    r->streak_window_ms = 600 * 1000;
    r->cart_delay_ms = 3600 * 1000;
    r->absence_ms = 14LL * 86400 * 1000;
    r->min_drop = 0.05;
    r->watch_types = 1u << EV_VIEW | 1u << EV_ADD_TO_CART;
    r->watch_ms = 14LL * 86400 * 1000;
    r->max_watchers = 10000;
    r->max_late_ms = 86400 * 1000;
}

/* The event types (bits) of a comma list the config has checked. */
static unsigned intent_types(const char *list) {
    unsigned mask = 0;
    char one[32];
    while (*list) {
        size_t n = strcspn(list, ",");
        if (n < sizeof one) {
            memcpy(one, list, n);
            one[n] = '\0';
            int t = event_type_parse(one);
            if (t >= 0) mask |= 1u << t;
        }
        list += n + (list[n] == ',');
    }
    return mask;
}

int intent_rules_load(intent_rules *r, const config *c, char *errstr, size_t errlen) {
    intent_rules_default(r);
    for (int k = 0; k < INTENT__COUNT; k++) {
        char key[64];
        snprintf(key, sizeof key, "intent.%s.enabled", intent_names[k]);
        r->enabled[k] = config_bool(c, key);
    }
    r->streak_types = intent_types(config_str(c, "copy.trigger_types"));
    r->streak = (uint32_t)config_int(c, "intent.recommendation.streak");
    r->streak_window_ms = config_int(c, "intent.recommendation.streak_window_s") * 1000;
    r->cart_delay_ms = config_int(c, "intent.cart_reminder.delay_s") * 1000;
    r->absence_ms = config_int(c, "intent.re_engagement.absence_s") * 1000;
    r->min_drop = config_double(c, "intent.price_drop.min_percent") / 100.0;
    r->watch_types = intent_types(config_str(c, "intent.price_drop.watch_types"));
    r->watch_ms = config_int(c, "intent.price_drop.watch_s") * 1000;
    r->max_watchers = (size_t)config_int(c, "intent.price_drop.max_watchers");
    r->max_late_ms = config_int(c, "trigger.max_late_s") * 1000;
    if (r->enabled[INTENT_PRICE_DROP] && !r->watch_types)
        return util_err(errstr, errlen,
                        "intent.price_drop.watch_types: empty while intent.price_drop.enabled "
                        "is true; name the events that make a user watch an item's price");
    return 0;
}

/* ---- immediate intents ----------------------------------------------------- */

static uint64_t intent_category(const catalog *c, uint64_t item) {
    const catalog_entry *ce = c && item ? catalog_get(c, item) : NULL;
    return ce ? ce->category_hash : 0;
}

uint32_t intent_streak(const intent_rules *r, const catalog *c, const user_state *u,
                       const click_event *e) {
    if (!(r->streak_types & (1u << e->type))) return 0;
    uint64_t item = e->item_id && e->item_id[0] ? util_hash(e->item_id) : 0;
    uint64_t cat = intent_category(c, item);
    if (!cat && e->category && e->category[0]) cat = util_hash(e->category);
    if (!cat) return 0;
    int64_t to_s = e->ts_ms / 1000, from_s = (e->ts_ms - r->streak_window_ms) / 1000;
    /* An event with an item was just appended: the newest entry is e. */
    size_t end = u->n_seq;
    if (item && end && u->seq[end - 1].item == item && u->seq[end - 1].type == e->type &&
        (int64_t)u->seq[end - 1].ts_s == to_s)
        end--;
    uint32_t n = 1; /* e itself */
    for (size_t i = 0; i < end; i++) {
        const us_event *ev = &u->seq[i];
        if ((int64_t)ev->ts_s < from_s || (int64_t)ev->ts_s > to_s) continue;
        if (!(r->streak_types & (1u << ev->type))) continue;
        if (intent_category(c, ev->item) == cat) n++;
    }
    return n;
}

int intent_of_event(const intent_rules *r, const catalog *c, const user_state *u,
                    const click_event *e, int64_t prev_last_ms) {
    if (e->type == EV_PURCHASE && r->enabled[INTENT_CROSS_SELL]) return INTENT_CROSS_SELL;
    if (r->enabled[INTENT_RE_ENGAGEMENT] && prev_last_ms > 0 &&
        e->ts_ms - prev_last_ms >= r->absence_ms)
        return INTENT_RE_ENGAGEMENT;
    if (r->enabled[INTENT_RECOMMENDATION] && intent_streak(r, c, u, e) >= r->streak)
        return INTENT_RECOMMENDATION;
    return -1;
}

/* ---- triggers ---------------------------------------------------------------- */

void trigger_clear(trigger *t) {
    free(t->id);
    free(t->user_id);
    free(t->item_id);
    free(t->currency);
    memset(t, 0, sizeof *t);
}

/* The member's fields as a JSON object (a new reference), or NULL. */
static json_t *trigger_object(const trigger *t) {
    json_t *o = json_object();
    if (!o || !t->user_id || !t->item_id || !intent_name(t->intent)) goto err;
    if (json_object_set_new(o, "intent", json_string(intent_name(t->intent))) ||
        json_object_set_new(o, "user_id", json_string(t->user_id)) ||
        json_object_set_new(o, "item_id", json_string(t->item_id)))
        goto err;
    if (t->has_old_price &&
        (json_object_set_new(o, "old_price_micros", json_integer(t->old_price_micros)) ||
         json_object_set_new(o, "currency", json_string(t->currency ? t->currency : ""))))
        goto err;
    if (t->since_ms && json_object_set_new(o, "since", json_integer(t->since_ms))) goto err;
    return o;
err:
    json_decref(o);
    return NULL;
}

static int trigger_dump(json_t *o, buf *out) {
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(o);
    if (!s) return -1;
    int rc = buf_puts(out, s);
    free(s);
    return rc;
}

int trigger_member(const trigger *t, buf *out) { return trigger_dump(trigger_object(t), out); }

int trigger_encode(const trigger *t, buf *out) {
    json_t *o = trigger_object(t);
    if (!o || !t->id || json_object_set_new(o, "id", json_string(t->id)) ||
        json_object_set_new(o, "ts", json_integer(t->ts_ms)) ||
        json_object_set_new(o, "since", json_integer(t->since_ms))) {
        json_decref(o);
        return -1;
    }
    return trigger_dump(o, out);
}

int trigger_set_id(trigger *t) {
    char *id = NULL;
    if (asprintf(&id, "%s:%s:%" PRId64, intent_name(t->intent), t->item_id, t->ts_ms) < 0)
        return -1;
    free(t->id);
    t->id = id;
    return 0;
}

/* A required non-empty string member, copied; NULL when absent. */
static char *trigger_string(json_t *o, const char *name) {
    const char *s = json_string_value(json_object_get(o, name));
    return s && *s ? strdup(s) : NULL;
}

int trigger_decode(const void *data, size_t len, trigger *t, char *errstr, size_t errlen) {
    trigger_clear(t);
    json_error_t jerr;
    json_t *o = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!o) return util_err(errstr, errlen, "not JSON: %s", jerr.text);
    int rc = -1;
    if (!json_is_object(o)) {
        util_err(errstr, errlen, "not a JSON object");
        goto out;
    }
    t->intent = intent_parse(json_string_value(json_object_get(o, "intent")));
    if (t->intent != INTENT_CART_REMINDER && t->intent != INTENT_PRICE_DROP) {
        util_err(errstr, errlen, "intent must be cart_reminder or price_drop");
        goto out;
    }
    if (!(t->user_id = trigger_string(o, "user_id")) ||
        !(t->item_id = trigger_string(o, "item_id"))) {
        util_err(errstr, errlen, "user_id and item_id must be non-empty strings");
        goto out;
    }
    json_t *old = json_object_get(o, "old_price_micros");
    if (old) {
        if (!json_is_integer(old) || !(t->currency = trigger_string(o, "currency"))) {
            util_err(errstr, errlen, "old_price_micros must be an integer with a currency");
            goto out;
        }
        t->has_old_price = 1;
        t->old_price_micros = json_integer_value(old);
    }
    if (t->intent == INTENT_PRICE_DROP && !t->has_old_price) {
        util_err(errstr, errlen, "a price_drop needs old_price_micros and currency");
        goto out;
    }
    json_t *id = json_object_get(o, "id"), *ts = json_object_get(o, "ts"),
           *since = json_object_get(o, "since");
    if (since) {
        if (!json_is_integer(since)) {
            util_err(errstr, errlen, "since must be an integer");
            goto out;
        }
        t->since_ms = json_integer_value(since);
    }
    if (id || ts) { /* a message, not a member: id, ts and since */
        if (!json_is_integer(ts) || !since || !(t->id = trigger_string(o, "id"))) {
            util_err(errstr, errlen, "a trigger message needs id, ts and since");
            goto out;
        }
        t->ts_ms = json_integer_value(ts);
    }
    rc = 0;
out:
    json_decref(o);
    if (rc < 0) trigger_clear(t);
    return rc;
}

/* Did u buy item at or after since_ms? The sequence says when. The bought
 * list also remembers purchases the bounded sequence has dropped, but not
 * when they were: it decides only when the sequence does not reach back to
 * since_ms (then a purchase it lists may be after it, and a reminder for
 * what may have been bought is the worse mistake). */
static int intent_bought_since(const user_state *u, uint64_t item, int64_t since_ms) {
    int64_t since_s = since_ms / 1000;
    int reaches_back = 0;
    for (size_t i = 0; i < u->n_seq; i++) {
        const us_event *ev = &u->seq[i];
        if ((int64_t)ev->ts_s <= since_s) reaches_back = 1;
        if (ev->item == item && ev->type == EV_PURCHASE && (int64_t)ev->ts_s >= since_s)
            return 1;
    }
    return !reaches_back && userstate_has_bought(u, item);
}

int intent_check_trigger(const intent_rules *r, const catalog *c, const user_state *u,
                         const trigger *t) {
    uint64_t item = util_hash(t->item_id);
    const catalog_entry *ce = catalog_get(c, item);
    if (!ce || !ce->item.available) return MET_SUPPRESSED_NO_CANDIDATES;
    if (t->intent == INTENT_CART_REMINDER) {
        if (intent_bought_since(u, item, t->since_ms)) return MET_SUPPRESSED_ALREADY_BOUGHT;
        return 0;
    }
    /* A price drop: bought already, at whatever price, is bought. */
    if (userstate_has_bought(u, item)) return MET_SUPPRESSED_ALREADY_BOUGHT;
    const catalog_item *ci = &ce->item;
    if (!ci->has_price || !ci->currency || !t->currency || strcmp(ci->currency, t->currency) ||
        (double)ci->price_micros > (double)t->old_price_micros * (1.0 - r->min_drop))
        return MET_SUPPRESSED_PRICE_RESTORED;
    return 0;
}

int intent_subject(const catalog *c, const user_state *u, const strategy_params *p,
                   const char *item_id, strategy_result *out) {
    memset(out, 0, sizeof *out);
    const catalog_entry *ce = catalog_get(c, util_hash(item_id));
    if (!ce) return 0;
    out->picks[0].entry = ce;
    out->picks[0].score = 1.0;
    out->n_picks = 1;
    if (strategy_explain(u, p, out) < 0) return -1;
    return 1;
}
