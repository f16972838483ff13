/* trigger.c -- delayed triggers in Redis, and producing them when due; see
 * trigger.h for the keys and why firing is idempotent.
 *
 * Scheduling goes through the store's pipeline (store_stage), so that it is
 * exactly as durable as the state change that caused it and costs no round
 * trip of its own. Scanning and price-drop fan-out are rare and run on a
 * connection of their own (rconn.c), between batches. */
#define _GNU_SOURCE
#include "trigger.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kafka.h"
#include "log.h"
#include "metrics.h"
#include "rconn.h"
#include "util.h"

/* KEYS[1] a due set; ARGV: pairs of a member and the score it was read
 * with. Removes a member only if it is still due then: a reminder that an
 * add to cart pushed back meanwhile stays. */
static const char trigger_remove_lua[] =
    "local n = 0\n"
    "for i = 1, #ARGV, 2 do\n"
    "  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])\n"
    "  if s and tonumber(s) == tonumber(ARGV[i + 1]) then\n"
    "    n = n + redis.call('ZREM', KEYS[1], ARGV[i])\n"
    "  end\n"
    "end\n"
    "return n\n";

/* A user who comes back to an item within this much event time is already
 * among its watchers: no need to say so again. */
#define TRIGGER_WATCH_REFRESH_S 3600
/* One watched event in this many trims its item's set to max_watchers. */
#define TRIGGER_TRIM_EVERY 16

/* A due entry read from one partition's set. */
typedef struct {
    char *member;
    size_t member_len;
    char score[32];
    int stale;
} trigger_due;

/* One partition's due entries, produced and waiting for the broker's
 * acknowledgements before they are removed. */
typedef struct {
    int32_t partition;
    trigger_due *d;           /* [n] */
    long n;
    uint64_t expected;        /* messages produced */
    kafka_delivery *dr;       /* their delivery count, on the heap: its address travels
                               * with every message, and the array of batches may move */
    uint64_t scan;            /* the look that produced it */
    int unfired;              /* its transaction was aborted: delivered or not, it stays due */
} trigger_batch;

static void trigger_due_free(trigger_due *d, long n) {
    for (long i = 0; d && i < n; i++) free(d[i].member);
    free(d);
}

struct triggers {
    trigger_batch *pending;   /* [n_pending] batches awaiting acknowledgements */
    size_t n_pending, cap_pending;
    const intent_rules *rules;
    store *store;
    rconn *redis;
    char *prefix;
    int64_t scan_interval_ms;
    size_t scan_max;
    int64_t last_scan_ms;
    int backlog;              /* the last look left due entries behind */
    uint64_t scans;           /* looks so far */
    buf key, val, scratch;
};

triggers *triggers_new(const config *c, const intent_rules *rules, store *st, char *errstr,
                       size_t errlen) {
    triggers *t = calloc(1, sizeof *t);
    if (!t) {
        util_err(errstr, errlen, "out of memory");
        return NULL;
    }
    t->rules = rules;
    t->store = st;
    t->scan_interval_ms = config_int(c, "trigger.scan_interval_ms");
    t->scan_max = (size_t)config_int(c, "trigger.scan_max");
    if (!(t->redis = rconn_new(c, errstr, errlen))) goto err;
    if (!(t->prefix = strdup(config_str(c, "redis.key_prefix")))) {
        util_err(errstr, errlen, "out of memory");
        goto err;
    }
    return t;
err:
    triggers_free(t);
    return NULL;
}

void triggers_free(triggers *t) {
    if (!t) return;
    /* Batches still with the broker: their entries stay in Redis and go out
     * again from the next owner, as duplicates the users' states skip. */
    for (size_t i = 0; i < t->n_pending; i++) {
        trigger_due_free(t->pending[i].d, t->pending[i].n);
        free(t->pending[i].dr);
    }
    free(t->pending);
    rconn_free(t->redis);
    free(t->prefix);
    buf_free(&t->key);
    buf_free(&t->val);
    buf_free(&t->scratch);
    free(t);
}

void triggers_due_key(const char *prefix, int32_t partition, buf *out) {
    buf_reset(out);
    buf_printf(out, "%s:due:%" PRId32, prefix, partition);
}

void triggers_watch_key(const char *prefix, const char *item_id, buf *out) {
    buf_reset(out);
    buf_printf(out, "%s:watch:%016" PRIx64, prefix, util_hash(item_id));
}

/* ---- scheduling ------------------------------------------------------------------ */

static int trigger_stage(triggers *t, int argc, const char **argv) {
    size_t len[8];
    for (int i = 0; i < argc; i++) len[i] = strlen(argv[i]);
    return store_stage(t->store, argc, argv, len);
}

/* Did u have a watched event on item within the refresh period before e?
 * e itself, the newest entry of the sequence, does not count. */
static int trigger_watched_lately(const triggers *t, const user_state *u, uint64_t item,
                                  const click_event *e) {
    int64_t now_s = e->ts_ms / 1000;
    size_t end = u->n_seq ? u->n_seq - 1 : 0;
    for (size_t i = end; i-- > 0;) {
        const us_event *ev = &u->seq[i];
        if (ev->item == item && (t->rules->watch_types & (1u << ev->type)) &&
            (int64_t)ev->ts_s <= now_s && now_s - (int64_t)ev->ts_s < TRIGGER_WATCH_REFRESH_S)
            return 1;
    }
    return 0;
}

int triggers_on_event(triggers *t, const char *user_id, int32_t partition, const click_event *e,
                      const user_state *u, int outcome) {
    if (!e->item_id || !e->item_id[0]) return 0;
    const intent_rules *r = t->rules;
    char score[32];
    if (e->type == EV_ADD_TO_CART && r->enabled[INTENT_CART_REMINDER]) {
        trigger tr = {.intent = INTENT_CART_REMINDER, .user_id = (char *)user_id,
                      .item_id = e->item_id};
        buf_reset(&t->val);
        if (trigger_member(&tr, &t->val) < 0) return -1;
        triggers_due_key(t->prefix, partition, &t->key);
        snprintf(score, sizeof score, "%" PRId64, e->ts_ms + r->cart_delay_ms);
        /* GT: a redelivered or late-arriving older add to cart never moves
         * a reminder earlier. */
        const char *argv[] = {"ZADD", t->key.p, "GT", score, t->val.p};
        if (!t->key.p || trigger_stage(t, 5, argv) < 0) return -1;
    }
    if (outcome == US_APPLIED && r->enabled[INTENT_PRICE_DROP] &&
        (r->watch_types & (1u << e->type)) &&
        !trigger_watched_lately(t, u, util_hash(e->item_id), e)) {
        triggers_watch_key(t->prefix, e->item_id, &t->key);
        buf_reset(&t->val);
        buf_printf(&t->val, "%" PRId32 ":%s", partition, user_id);
        snprintf(score, sizeof score, "%" PRId64, e->ts_ms);
        char ttl[32], keep[32];
        snprintf(ttl, sizeof ttl, "%" PRId64, r->watch_ms);
        const char *add[] = {"ZADD", t->key.p, score, t->val.p};
        const char *expire[] = {"PEXPIRE", t->key.p, ttl};
        if (!t->key.p || !t->val.p || trigger_stage(t, 4, add) < 0 ||
            trigger_stage(t, 3, expire) < 0)
            return -1;
        /* Trimming every time would double the commands; one in
         * TRIGGER_TRIM_EVERY, chosen by a hash so that a replay does the
         * same, keeps the set within a few entries of the bound. */
        if (util_hash_bytes(t->val.p, t->val.len) % TRIGGER_TRIM_EVERY == 0) {
            snprintf(keep, sizeof keep, "-%zu", r->max_watchers + 1);
            const char *trim[] = {"ZREMRANGEBYRANK", t->key.p, "0", keep};
            if (trigger_stage(t, 4, trim) < 0) return -1;
        }
    }
    return 0;
}

int triggers_defer(triggers *t, const trigger *tr, int32_t partition, int64_t due_ms) {
    trigger copy = *tr;
    copy.id = NULL;
    buf_reset(&t->val);
    if (trigger_member(&copy, &t->val) < 0) return -1;
    triggers_due_key(t->prefix, partition, &t->key);
    char score[32];
    snprintf(score, sizeof score, "%" PRId64, due_ms);
    const char *argv[] = {"ZADD", t->key.p, "GT", score, t->val.p};
    if (!t->key.p || trigger_stage(t, 5, argv) < 0) return -1;
    metrics_inc(MET_TRIGGERS_DEFERRED, 1);
    return 0;
}

/* ---- price drops ----------------------------------------------------------------- */

/* Is `after` a drop from `before` by at least the configured share? */
static int trigger_is_drop(const intent_rules *r, const catalog_item *before,
                           const catalog_item *after) {
    if (!before || !before->has_price || !after->has_price || !before->currency ||
        !after->currency || strcmp(before->currency, after->currency) || !after->available)
        return 0;
    if (before->price_micros <= 0 || after->price_micros >= before->price_micros) return 0;
    return (double)after->price_micros <= (double)before->price_micros * (1.0 - r->min_drop);
}

long triggers_on_catalog(triggers *t, const catalog_item *before, const catalog_item *after,
                         int32_t partition, int64_t offset, char *errstr, size_t errlen) {
    const intent_rules *r = t->rules;
    if (!r->enabled[INTENT_PRICE_DROP] || !trigger_is_drop(r, before, after)) return 0;
    int64_t at_ms = after->updated_ms > 0 ? after->updated_ms : util_now_ms();
    buf mark = BUF_INIT;
    buf_printf(&mark, "%s:pd:%016" PRIx64 ":%" PRId32 ":%" PRId64, t->prefix,
               util_hash(after->item_id), partition, offset);
    triggers_watch_key(t->prefix, after->item_id, &t->key);
    long added = -1;
    redisReply *rep = NULL, *members = NULL;
    if (!mark.p || !t->key.p) {
        util_err(errstr, errlen, "out of memory");
        goto out;
    }
    const char *exists[] = {"EXISTS", mark.p};
    size_t exists_len[] = {6, mark.len};
    if (!(rep = rconn_command(t->redis, errstr, errlen, 2, exists, exists_len))) goto out;
    if (rep->type == REDIS_REPLY_INTEGER && rep->integer == 1) {
        added = 0; /* fanned out before: the catalog is re-read at every start */
        goto out;
    }
    char min[32], max_n[32];
    snprintf(min, sizeof min, "%" PRId64, at_ms - r->watch_ms);
    snprintf(max_n, sizeof max_n, "%zu", r->max_watchers);
    const char *range[] = {"ZREVRANGEBYSCORE", t->key.p, "+inf", min, "LIMIT", "0", max_n};
    size_t range_len[7];
    for (int i = 0; i < 7; i++) range_len[i] = strlen(range[i]);
    if (!(members = rconn_command(t->redis, errstr, errlen, 7, range, range_len))) goto out;
    if (members->type != REDIS_REPLY_ARRAY) {
        util_err(errstr, errlen, "redis ZREVRANGEBYSCORE: unexpected reply");
        goto out;
    }
    trigger tr = {.intent = INTENT_PRICE_DROP, .item_id = after->item_id, .has_old_price = 1,
                  .old_price_micros = before->price_micros, .currency = after->currency};
    char score[32];
    snprintf(score, sizeof score, "%" PRId64, at_ms);
    size_t queued = 0;
    for (size_t i = 0; i < members->elements; i++) {
        const redisReply *m = members->element[i];
        if (m->type != REDIS_REPLY_STRING) continue;
        char *colon = memchr(m->str, ':', m->len);
        if (!colon || colon == m->str) continue;
        int32_t p = (int32_t)strtol(m->str, NULL, 10);
        char *user = strndup(colon + 1, m->len - (size_t)(colon + 1 - m->str));
        if (!user) continue;
        tr.user_id = user;
        buf_reset(&t->val);
        int ok = trigger_member(&tr, &t->val) == 0;
        free(user);
        if (!ok) continue;
        buf due = BUF_INIT;
        triggers_due_key(t->prefix, p, &due);
        const char *zadd[] = {"ZADD", due.p, "NX", score, t->val.p};
        size_t zadd_len[] = {4, due.len, 2, strlen(score), t->val.len};
        ok = due.p && rconn_append(t->redis, errstr, errlen, 5, zadd, zadd_len) == 0;
        buf_free(&due);
        if (!ok) goto out;
        queued++;
    }
    added = 0;
    for (size_t i = 0; i < queued; i++) {
        redisReply *x = rconn_get(t->redis, errstr, errlen);
        if (!x) {
            added = -1;
            goto out;
        }
        if (x->type == REDIS_REPLY_INTEGER) added += x->integer;
        freeReplyObject(x);
    }
    /* Marked only once every entry is in: a crash before this point fans the
     * drop out again at the next start, and NX adds nothing twice. */
    char ttl[32];
    snprintf(ttl, sizeof ttl, "%" PRId64, r->watch_ms / 1000 + r->max_late_ms / 1000 + 86400);
    const char *set[] = {"SET", mark.p, "1", "EX", ttl};
    size_t set_len[] = {3, mark.len, 1, 2, strlen(ttl)};
    freeReplyObject(rep);
    if (!(rep = rconn_command(t->redis, errstr, errlen, 5, set, set_len))) added = -1;
    if (added > 0)
        log_info("trigger", "price drop of %s (%" PRId64 " -> %" PRId64 "): %ld users to tell",
                 after->item_id, before->price_micros, after->price_micros, added);
out:
    if (rep) freeReplyObject(rep);
    if (members) freeReplyObject(members);
    buf_free(&mark);
    return added;
}

/* ---- firing ------------------------------------------------------------------------ */

/* Produces one due entry to topic; counts the message in dr. Returns 0, 1
 * when the entry is malformed (it is removed without firing), or -1. */
static int trigger_fire(triggers *t, rd_kafka_t *producer, const char *topic, int32_t partition,
                        const trigger_due *d, kafka_delivery *dr, char *errstr, size_t errlen) {
    trigger tr = {0};
    char why[256];
    if (trigger_decode(d->member, d->member_len, &tr, why, sizeof why) < 0) {
        log_warn("trigger", "dropping a malformed due entry: %s", why);
        return 1;
    }
    tr.ts_ms = strtoll(d->score, NULL, 10);
    if (!tr.since_ms) /* a member put back after quiet hours keeps its own */
        tr.since_ms =
            tr.intent == INTENT_CART_REMINDER ? tr.ts_ms - t->rules->cart_delay_ms : tr.ts_ms;
    buf_reset(&t->scratch);
    int rc = -1;
    if (trigger_set_id(&tr) < 0 || trigger_encode(&tr, &t->scratch) < 0) {
        util_err(errstr, errlen, "out of memory");
        goto out;
    }
    for (;;) {
        rd_kafka_resp_err_t err = rd_kafka_producev(
            producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_KEY(tr.user_id, strlen(tr.user_id)),
            RD_KAFKA_V_VALUE(t->scratch.p, t->scratch.len), RD_KAFKA_V_OPAQUE(dr),
            RD_KAFKA_V_END);
        if (!err) break;
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            util_err(errstr, errlen, "produce to %s: %s", topic, rd_kafka_err2str(err));
            goto out;
        }
        rd_kafka_poll(producer, 10);
    }
    metrics_inc(tr.intent == INTENT_CART_REMINDER ? MET_TRIGGERS_CART_REMINDER
                                                   : MET_TRIGGERS_PRICE_DROP,
                1);
    rc = 0;
out:
    trigger_clear(&tr);
    return rc;
}

/* Reads up to scan_max due entries of one partition into *out (caller frees
 * with trigger_due_free). */
static long trigger_read_due(triggers *t, int32_t partition, int64_t now_ms, trigger_due **out,
                             char *errstr, size_t errlen) {
    *out = NULL;
    char max[32], limit[32];
    snprintf(max, sizeof max, "%" PRId64, now_ms);
    snprintf(limit, sizeof limit, "%zu", t->scan_max);
    triggers_due_key(t->prefix, partition, &t->key);
    const char *argv[] = {"ZRANGEBYSCORE", t->key.p, "-inf", max, "WITHSCORES", "LIMIT", "0",
                          limit};
    size_t len[8];
    for (int i = 0; i < 8; i++) len[i] = strlen(argv[i]);
    redisReply *r = rconn_command(t->redis, errstr, errlen, 8, argv, len);
    if (!r) return -1;
    long n = -1;
    if (r->type != REDIS_REPLY_ARRAY || r->elements % 2) {
        util_err(errstr, errlen, "redis ZRANGEBYSCORE: unexpected reply");
        goto out;
    }
    n = (long)(r->elements / 2);
    if (n && !(*out = calloc((size_t)n, sizeof **out))) {
        util_err(errstr, errlen, "out of memory");
        n = -1;
        goto out;
    }
    int64_t late = t->rules->max_late_ms;
    for (long i = 0; i < n; i++) {
        const redisReply *m = r->element[2 * i], *sc = r->element[2 * i + 1];
        trigger_due *d = &(*out)[i];
        if (!(d->member = malloc(m->len + 1))) continue;
        memcpy(d->member, m->str, m->len);
        d->member[m->len] = '\0';
        d->member_len = m->len;
        snprintf(d->score, sizeof d->score, "%.*s", (int)sc->len, sc->str);
        d->stale = now_ms - strtoll(d->score, NULL, 10) > late;
    }
out:
    freeReplyObject(r);
    return n;
}

/* Removes entries [0, n) of one partition's set where still due as read,
 * with one script call. Returns 0 or -1. */
static int trigger_remove(triggers *t, int32_t partition, const trigger_due *d, long n,
                          char *errstr, size_t errlen) {
    size_t argc = 4, k = 0; /* EVAL, the script, the key count, the key */
    for (long i = 0; i < n; i++) argc += d[i].member ? 2 : 0;
    if (argc == 4) return 0;
    const char **argv = malloc(argc * sizeof *argv);
    size_t *len = malloc(argc * sizeof *len);
    int rc = -1;
    if (!argv || !len) {
        util_err(errstr, errlen, "out of memory");
        goto out;
    }
    triggers_due_key(t->prefix, partition, &t->key);
    argv[k] = "EVAL", len[k++] = 4;
    argv[k] = trigger_remove_lua, len[k++] = sizeof trigger_remove_lua - 1;
    argv[k] = "1", len[k++] = 1;
    argv[k] = t->key.p, len[k++] = t->key.len;
    for (long i = 0; i < n; i++) {
        if (!d[i].member) continue;
        argv[k] = d[i].member, len[k++] = d[i].member_len;
        argv[k] = d[i].score, len[k++] = strlen(d[i].score);
    }
    redisReply *r = rconn_command(t->redis, errstr, errlen, (int)k, argv, len);
    if (r) {
        freeReplyObject(r);
        rc = 0;
    }
out:
    free(argv);
    free(len);
    return rc;
}

/* Finishes the batches whose messages the broker has answered: removes
 * what went out (and what was stale or malformed); a batch with a failed
 * message leaves its entries, produced again at a later look. */
static int trigger_settle(triggers *t, char *errstr, size_t errlen) {
    int rc = 0;
    size_t keep = 0;
    for (size_t i = 0; i < t->n_pending; i++) {
        trigger_batch *b = &t->pending[i];
        if (b->dr->acked + b->dr->failed < b->expected && rc == 0) {
            t->pending[keep++] = *b;
            continue;
        }
        if (rc == 0 && b->unfired)
            log_info("trigger", "%" PRIu64 " due triggers of partition %" PRId32
                     " were in an aborted transaction: produced again later", b->expected,
                     b->partition);
        else if (rc == 0 && b->dr->failed)
            log_warn("trigger", "%" PRIu64 " due triggers of partition %" PRId32
                     " not delivered (%s): produced again later", b->dr->failed, b->partition,
                     rd_kafka_err2str(b->dr->last_err));
        else if (rc == 0 && trigger_remove(t, b->partition, b->d, b->n, errstr, errlen) < 0)
            rc = -1;
        trigger_due_free(b->d, b->n);
        free(b->dr);
    }
    t->n_pending = keep;
    return rc;
}

static int trigger_pending_on(const triggers *t, int32_t partition) {
    for (size_t i = 0; i < t->n_pending; i++)
        if (t->pending[i].partition == partition) return 1;
    return 0;
}

long triggers_scan(triggers *t, rd_kafka_t *producer, const char *topic, int n_partitions,
                   const int32_t *owned, size_t n_owned, int64_t now_ms, int force, char *errstr,
                   size_t errlen) {
    if (t->n_pending) {
        rd_kafka_poll(producer, 0); /* delivery reports, ours among them */
        if (trigger_settle(t, errstr, errlen) < 0) return -1;
    }
    /* Owning nothing yet (before the first assignment) is no look: the
     * first partitions are looked at as soon as they come. */
    if (n_owned == 0) return 0;
    if (!force && !t->backlog && now_ms - t->last_scan_ms < t->scan_interval_ms) return 0;
    t->last_scan_ms = now_ms;
    t->scans++;
    int backlog = t->backlog;
    t->backlog = 0;
    if (n_partitions <= 0) return 0;
    long fired = 0;
    for (size_t k = 0; k < n_owned; k++) {
        /* A partition whose last batch is still with the broker waits: its
         * entries are still in the set, and would go out twice. */
        if (trigger_pending_on(t, owned[k])) {
            t->backlog |= backlog; /* still catching up: look again soon */
            continue;
        }
        trigger_due *d;
        long n = trigger_read_due(t, owned[k], now_ms, &d, errstr, errlen);
        if (n < 0) return -1;
        if (n == 0) continue;
        /* A full read leaves more behind (after a downtime, a burst of
         * drops): look again as soon as this batch is acknowledged, rather
         * than a whole interval later. */
        if ((size_t)n == t->scan_max) t->backlog = 1;
        if (t->n_pending == t->cap_pending) {
            size_t cap = t->cap_pending ? 2 * t->cap_pending : 8;
            trigger_batch *v = realloc(t->pending, cap * sizeof *v);
            if (!v) {
                trigger_due_free(d, n);
                return util_err(errstr, errlen, "out of memory");
            }
            t->pending = v;
            t->cap_pending = cap;
        }
        kafka_delivery *dr = calloc(1, sizeof *dr);
        if (!dr) {
            trigger_due_free(d, n);
            return util_err(errstr, errlen, "out of memory");
        }
        trigger_batch *b = &t->pending[t->n_pending++];
        *b = (trigger_batch){.partition = owned[k], .d = d, .n = n, .dr = dr, .scan = t->scans};
        for (long i = 0; i < n; i++) {
            if (!d[i].member) continue;
            if (d[i].stale) {
                metrics_inc(MET_SUPPRESSED_STALE, 1);
                continue;
            }
            int rc = trigger_fire(t, producer, topic, owned[k] % n_partitions, &d[i], dr, errstr,
                                  errlen);
            if (rc < 0) {
                /* Those produced still count; the rest wait for a later look. */
                b->n = i;
                break;
            }
            if (rc == 0) b->expected++;
        }
        fired += (long)b->expected;
    }
    /* Nothing to wait for: removed at once (stale or malformed entries). */
    if (t->n_pending && trigger_settle(t, errstr, errlen) < 0) return -1;
    return fired;
}

void triggers_unfire(triggers *t) {
    /* Freed only once every delivery report is in (trigger_settle): each
     * message still carries the batch's counter. */
    for (size_t i = 0; i < t->n_pending; i++)
        if (t->pending[i].scan == t->scans) t->pending[i].unfired = 1;
}

void triggers_producer_gone(triggers *t) {
    for (size_t i = 0; i < t->n_pending; i++) {
        trigger_due_free(t->pending[i].d, t->pending[i].n);
        free(t->pending[i].dr);
    }
    t->n_pending = 0;
}

void triggers_drain(triggers *t, rd_kafka_t *producer, int timeout_ms) {
    char err[256];
    int64_t deadline = util_monotonic_us() + (int64_t)timeout_ms * 1000;
    while (t->n_pending && util_monotonic_us() < deadline) {
        rd_kafka_poll(producer, 10);
        if (trigger_settle(t, err, sizeof err) < 0) {
            log_warn("trigger", "removing fired triggers: %s", err);
            return;
        }
    }
}
