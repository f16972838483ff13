/* metrics.c -- the process-wide Prometheus registry; see metrics.h.
 *
 * Every number is a C11 atomic in one static struct, updated with relaxed
 * adds; the page is rendered by reading each one on its own. Histograms keep
 * one non-cumulative count per bucket, so an observation touches a single
 * bucket, and the renderer accumulates them into Prometheus' cumulative
 * `le` buckets. The copies table is append-only between resets: an entry's
 * strings are written before n_copies is published with release ordering,
 * which lets updaters and the renderer read entries below n_copies without
 * the mutex. The lag table changes once per batch, so it simply lives under
 * the mutex, kept dense by moving the last entry into a dropped one's place. */
#include "metrics.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* Upper bounds of the duration histograms' buckets, in seconds. */
static const double bucket_bounds[] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
};
#define N_BOUNDS UTIL_ARRAY_LEN(bucket_bounds)

typedef struct {
    _Atomic int64_t buckets[N_BOUNDS + 1]; /* per bucket; the last is (10, +Inf) */
    _Atomic double sum;
} histogram;

typedef struct {
    char locale[METRICS_MAX_LABEL_LEN + 1];
    char strategy[METRICS_MAX_LABEL_LEN + 1];
    _Atomic int64_t n;
} copies_series;

typedef struct {
    char topic[METRICS_MAX_TOPIC_LEN + 1];
    int32_t partition;
    int64_t lag;
} lag_series;

static struct {
    _Atomic int64_t simple[MET__COUNT];
    _Atomic int64_t events[EV__COUNT];
    _Atomic int64_t reactions[RX__COUNT];
    _Atomic int64_t dead_letters[CODEC__COUNT];
    histogram processing;
    histogram batch;
    copies_series copies[METRICS_MAX_COPY_LABELS];
    _Atomic size_t n_copies;
    _Atomic int64_t copies_other;

    pthread_mutex_t mu; /* guards copies registration and everything below */
    lag_series lags[METRICS_MAX_LAGS];
    size_t n_lags;
    char version[METRICS_MAX_LABEL_LEN + 1];
    double start_time;
} reg = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* Labels of the fixed-label metrics; NULL key: no label. */
static const struct {
    const char *key, *value;
} simple_labels[MET__COUNT] = {
    [MET_SKIPPED_DUPLICATE] = {"reason", "duplicate"},
    [MET_SKIPPED_REDELIVERED] = {"reason", "redelivered"},
    [MET_SUPPRESSED_MIN_INTERVAL] = {"reason", "min_interval"},
    [MET_SUPPRESSED_NO_CANDIDATES] = {"reason", "no_candidates"},
    [MET_SUPPRESSED_RENDER_ERROR] = {"reason", "render_error"},
    [MET_SUPPRESSED_HOLDOUT] = {"reason", "holdout"},
    [MET_SUPPRESSED_NO_CONSENT] = {"reason", "no_consent"},
    [MET_SUPPRESSED_QUIET_HOURS] = {"reason", "quiet_hours"},
    [MET_SUPPRESSED_CAP_HOUR] = {"reason", "cap_hour"},
    [MET_SUPPRESSED_CAP_DAY] = {"reason", "cap_day"},
    [MET_SUPPRESSED_REPEAT] = {"reason", "repeat"},
    [MET_SUPPRESSED_MISSING_FIELD] = {"reason", "missing_field"},
    [MET_SUPPRESSED_TOO_LONG] = {"reason", "too_long"},
    [MET_SUPPRESSED_BANNED_PHRASE] = {"reason", "banned_phrase"},
    [MET_SUPPRESSED_ALREADY_BOUGHT] = {"reason", "already_bought"},
    [MET_SUPPRESSED_PRICE_RESTORED] = {"reason", "price_restored"},
    [MET_SUPPRESSED_STALE] = {"reason", "stale"},
    [MET_REDIS_ERR_CONNECTION] = {"kind", "connection"},
    [MET_REDIS_ERR_TIMEOUT] = {"kind", "timeout"},
    [MET_REDIS_ERR_REPLY] = {"kind", "reply"},
    [MET_REDIS_ERR_CONFLICT] = {"kind", "conflict"},
    [MET_KAFKA_ERR_PRODUCE] = {"kind", "produce"},
    [MET_KAFKA_ERR_COMMIT] = {"kind", "commit"},
    [MET_KAFKA_ERR_CONSUME] = {"kind", "consume"},
    [MET_KAFKA_ERR_FATAL] = {"kind", "fatal"},
    [MET_KAFKA_TXN_COMMITTED] = {"result", "committed"},
    [MET_KAFKA_TXN_ABORTED] = {"result", "aborted"},
    [MET_STATE_CACHE_HIT] = {"result", "hit"},
    [MET_STATE_CACHE_MISS] = {"result", "miss"},
    [MET_REACTIONS_ATTRIBUTED] = {"result", "attributed"},
    [MET_REACTIONS_LATE] = {"result", "late"},
    [MET_REACTIONS_UNKNOWN] = {"result", "unknown"},
    [MET_TRIGGERS_CART_REMINDER] = {"intent", "cart_reminder"},
    [MET_TRIGGERS_PRICE_DROP] = {"intent", "price_drop"},
    [MET_COPIES_RECOMMENDATION] = {"intent", "recommendation"},
    [MET_COPIES_CART_REMINDER] = {"intent", "cart_reminder"},
    [MET_COPIES_CROSS_SELL] = {"intent", "cross_sell"},
    [MET_COPIES_RE_ENGAGEMENT] = {"intent", "re_engagement"},
    [MET_COPIES_PRICE_DROP] = {"intent", "price_drop"},
    [MET_CONTROL_FORGET] = {"type", "forget"},
    [MET_CONTROL_OPT_OUT] = {"type", "opt_out"},
    [MET_CONTROL_OPT_IN] = {"type", "opt_in"},
    [MET_CONTROL_INVALID] = {"type", "invalid"},
};

/* ---------------------------------------------------------------- updates */

static void add(_Atomic int64_t *v, uint64_t n) {
    atomic_fetch_add_explicit(v, (int64_t)n, memory_order_relaxed);
}

void metrics_inc(metric_id id, uint64_t n) {
    if ((unsigned)id < MET__COUNT) add(&reg.simple[id], n);
}

void metrics_set(metric_id id, int64_t value) {
    if ((unsigned)id < MET__COUNT)
        atomic_store_explicit(&reg.simple[id], value, memory_order_relaxed);
}

void metrics_inc_event(event_type t, uint64_t n) {
    if ((unsigned)t < EV__COUNT) add(&reg.events[t], n);
}

void metrics_inc_reaction(reaction_type t, uint64_t n) {
    if ((unsigned)t < RX__COUNT) add(&reg.reactions[t], n);
}

/* CODEC_OK's slot absorbs misuse: it is never rendered. */
void metrics_inc_dead_letter(codec_status s, uint64_t n) {
    if ((unsigned)s < CODEC__COUNT) add(&reg.dead_letters[s], n);
}

/* The counter of (locale, strategy) among copies[from, to), or NULL. */
static _Atomic int64_t *find_copies(size_t from, size_t to, const char *locale,
                                    const char *strategy) {
    for (size_t i = from; i < to; i++) {
        copies_series *s = &reg.copies[i];
        if (!strcmp(s->locale, locale) && !strcmp(s->strategy, strategy)) return &s->n;
    }
    return NULL;
}

/* Looks the pair up without the lock, which is all a steady state needs, and
 * registers it under the lock the first time it is seen. */
static _Atomic int64_t *copies_counter(const char *locale, const char *strategy) {
    size_t seen = atomic_load_explicit(&reg.n_copies, memory_order_acquire);
    _Atomic int64_t *c = find_copies(0, seen, locale, strategy);
    if (c) return c;
    /* A registered ("other", "other") would duplicate the overflow series, and
     * Prometheus rejects a page with two series of the same labels. */
    if (seen == METRICS_MAX_COPY_LABELS || strlen(locale) > METRICS_MAX_LABEL_LEN ||
        strlen(strategy) > METRICS_MAX_LABEL_LEN ||
        (!strcmp(locale, "other") && !strcmp(strategy, "other")))
        return &reg.copies_other;

    pthread_mutex_lock(&reg.mu);
    size_t now = atomic_load_explicit(&reg.n_copies, memory_order_relaxed);
    c = find_copies(seen, now, locale, strategy); /* another thread may have won */
    if (!c && now < METRICS_MAX_COPY_LABELS) {
        copies_series *s = &reg.copies[now];
        strcpy(s->locale, locale);
        strcpy(s->strategy, strategy);
        atomic_store_explicit(&reg.n_copies, now + 1, memory_order_release);
        c = &s->n;
    }
    pthread_mutex_unlock(&reg.mu);
    return c ? c : &reg.copies_other;
}

void metrics_inc_copies(const char *locale, const char *strategy, uint64_t n) {
    add(copies_counter(locale ? locale : "", strategy ? strategy : ""), n);
}

static void observe(histogram *h, double seconds, uint64_t count) {
    if (!(seconds >= 0)) seconds = 0; /* also catches NaN */
    size_t i = 0;
    while (i < N_BOUNDS && seconds > bucket_bounds[i]) i++;
    add(&h->buckets[i], count);
    double old = atomic_load_explicit(&h->sum, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&h->sum, &old, old + seconds * (double)count,
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

void metrics_observe_processing(double seconds, uint64_t count) {
    observe(&reg.processing, seconds, count);
}

void metrics_observe_batch(double seconds) { observe(&reg.batch, seconds, 1); }

/* Index of (topic, partition) in lags[], or -1. Call with the mutex held. */
static long find_lag(const char *topic, int32_t partition) {
    for (size_t i = 0; i < reg.n_lags; i++)
        if (reg.lags[i].partition == partition && !strcmp(reg.lags[i].topic, topic)) return (long)i;
    return -1;
}

int metrics_set_lag(const char *topic, int32_t partition, int64_t lag) {
    if (strlen(topic) > METRICS_MAX_TOPIC_LEN) return -1;
    pthread_mutex_lock(&reg.mu);
    long i = find_lag(topic, partition);
    if (i < 0 && reg.n_lags < METRICS_MAX_LAGS) {
        i = (long)reg.n_lags++;
        strcpy(reg.lags[i].topic, topic);
        reg.lags[i].partition = partition;
    }
    if (i >= 0) reg.lags[i].lag = lag;
    pthread_mutex_unlock(&reg.mu);
    return i >= 0 ? 0 : -1;
}

void metrics_drop_lag(const char *topic, int32_t partition) {
    pthread_mutex_lock(&reg.mu);
    long i = find_lag(topic, partition);
    if (i >= 0) reg.lags[i] = reg.lags[--reg.n_lags];
    pthread_mutex_unlock(&reg.mu);
}

void metrics_start(const char *version) {
    pthread_mutex_lock(&reg.mu);
    snprintf(reg.version, sizeof reg.version, "%s", version ? version : "");
    reg.start_time = (double)util_now_ms() / 1000.0;
    pthread_mutex_unlock(&reg.mu);
}

static void zero(_Atomic int64_t *v, size_t n) {
    for (size_t i = 0; i < n; i++) atomic_store_explicit(&v[i], 0, memory_order_relaxed);
}

static void zero_histogram(histogram *h) {
    zero(h->buckets, N_BOUNDS + 1);
    atomic_store_explicit(&h->sum, 0.0, memory_order_relaxed);
}

void metrics_reset(void) {
    pthread_mutex_lock(&reg.mu);
    zero(reg.simple, MET__COUNT);
    zero(reg.events, EV__COUNT);
    zero(reg.reactions, RX__COUNT);
    zero(reg.dead_letters, CODEC__COUNT);
    zero_histogram(&reg.processing);
    zero_histogram(&reg.batch);
    for (size_t i = 0; i < METRICS_MAX_COPY_LABELS; i++) zero(&reg.copies[i].n, 1);
    atomic_store_explicit(&reg.n_copies, 0, memory_order_relaxed);
    zero(&reg.copies_other, 1);
    reg.n_lags = 0;
    reg.version[0] = '\0';
    reg.start_time = 0;
    pthread_mutex_unlock(&reg.mu);
}

/* -------------------------------------------------------------- rendering */

/* The page being rendered. Appends that fail (out of memory) set err and the
 * render goes on, so the many small writers need no error plumbing. */
typedef struct {
    buf *out;
    int err;
} page;

static void put_n(page *p, const char *s, size_t n) {
    if (buf_append(p->out, s, n) < 0) p->err = 1;
}

static void put(page *p, const char *s) { put_n(p, s, strlen(s)); }

/* Formats v the way Prometheus parses it: the shorter of %.15g and %.17g
 * that reads back as v, and +Inf, -Inf, NaN spelled its way. */
static void format_double(char s[32], double v) {
    if (isnan(v)) {
        strcpy(s, "NaN");
    } else if (isinf(v)) {
        strcpy(s, v > 0 ? "+Inf" : "-Inf");
    } else {
        snprintf(s, 32, "%.15g", v);
        if (strtod(s, NULL) != v) snprintf(s, 32, "%.17g", v);
    }
}

/* Appends a label value with \, " and newline escaped, as 0.0.4 requires. */
static void put_label_value(page *p, const char *v) {
    for (const char *run = v;; v++) {
        const char *esc = *v == '\\' ? "\\\\" : *v == '"' ? "\\\"" : *v == '\n' ? "\\n" : NULL;
        if (!esc && *v) continue;
        put_n(p, run, (size_t)(v - run));
        if (!*v) return;
        put(p, esc);
        run = v + 1;
    }
}

/* Appends `name<suffix>{k1="v1",k2="v2"} `; the labels stop at the first NULL
 * key. The value follows. */
static void put_series(page *p, const char *name, const char *suffix, const char *k1,
                       const char *v1, const char *k2, const char *v2) {
    put(p, name);
    put(p, suffix);
    if (k1) {
        put(p, "{");
        put(p, k1);
        put(p, "=\"");
        put_label_value(p, v1);
        if (k2) {
            put(p, "\",");
            put(p, k2);
            put(p, "=\"");
            put_label_value(p, v2);
        }
        put(p, "\"}");
    }
    put(p, " ");
}

static void put_int(page *p, int64_t v) {
    char s[32];
    snprintf(s, sizeof s, "%" PRId64 "\n", v);
    put(p, s);
}

static void put_double(page *p, double v) {
    char s[32];
    format_double(s, v);
    put(p, s);
    put(p, "\n");
}

static int64_t get(_Atomic int64_t *v) { return atomic_load_explicit(v, memory_order_relaxed); }

typedef struct family family;
struct family {
    const char *name, *type, *help;
    void (*samples)(page *p, const family *f);
    metric_id first, last; /* the ids samples_simple renders */
};

static void samples_simple(page *p, const family *f) {
    for (metric_id id = f->first; id <= f->last; id++) {
        put_series(p, f->name, "", simple_labels[id].key, simple_labels[id].value, NULL, NULL);
        put_int(p, get(&reg.simple[id]));
    }
}

static void samples_events(page *p, const family *f) {
    for (event_type t = 0; t < EV__COUNT; t++) {
        put_series(p, f->name, "", "type", event_type_name(t), NULL, NULL);
        put_int(p, get(&reg.events[t]));
    }
}

static void samples_reactions(page *p, const family *f) {
    for (reaction_type t = 0; t < RX__COUNT; t++) {
        put_series(p, f->name, "", "type", reaction_type_name(t), NULL, NULL);
        put_int(p, get(&reg.reactions[t]));
    }
}

static void samples_dead_letters(page *p, const family *f) {
    for (codec_status s = CODEC_OK + 1; s < CODEC__COUNT; s++) {
        put_series(p, f->name, "", "reason", codec_status_name(s), NULL, NULL);
        put_int(p, get(&reg.dead_letters[s]));
    }
}

static void samples_copies(page *p, const family *f) {
    size_t n = atomic_load_explicit(&reg.n_copies, memory_order_acquire);
    for (size_t i = 0; i < n; i++) {
        copies_series *s = &reg.copies[i];
        put_series(p, f->name, "", "locale", s->locale, "strategy", s->strategy);
        put_int(p, get(&s->n));
    }
    int64_t other = get(&reg.copies_other);
    if (other) { /* only once something overflowed, rather than invent a pair */
        put_series(p, f->name, "", "locale", "other", "strategy", "other");
        put_int(p, other);
    }
}

static void samples_histogram(page *p, const char *name, histogram *h) {
    int64_t cumulative = 0;
    char le[32];
    for (size_t i = 0; i < N_BOUNDS; i++) {
        cumulative += get(&h->buckets[i]);
        format_double(le, bucket_bounds[i]);
        put_series(p, name, "_bucket", "le", le, NULL, NULL);
        put_int(p, cumulative);
    }
    cumulative += get(&h->buckets[N_BOUNDS]);
    put_series(p, name, "_bucket", "le", "+Inf", NULL, NULL);
    put_int(p, cumulative);
    put_series(p, name, "_sum", NULL, NULL, NULL, NULL);
    put_double(p, atomic_load_explicit(&h->sum, memory_order_relaxed));
    put_series(p, name, "_count", NULL, NULL, NULL, NULL);
    put_int(p, cumulative);
}

static void samples_processing(page *p, const family *f) {
    samples_histogram(p, f->name, &reg.processing);
}

static void samples_batch(page *p, const family *f) { samples_histogram(p, f->name, &reg.batch); }

static void samples_lag(page *p, const family *f) {
    char partition[16];
    pthread_mutex_lock(&reg.mu);
    for (size_t i = 0; i < reg.n_lags; i++) {
        snprintf(partition, sizeof partition, "%" PRId32, reg.lags[i].partition);
        put_series(p, f->name, "", "topic", reg.lags[i].topic, "partition", partition);
        put_int(p, reg.lags[i].lag);
    }
    pthread_mutex_unlock(&reg.mu);
}

static void samples_build_info(page *p, const family *f) {
    pthread_mutex_lock(&reg.mu);
    put_series(p, f->name, "", "version", reg.version[0] ? reg.version : "unknown", NULL, NULL);
    pthread_mutex_unlock(&reg.mu);
    put_int(p, 1);
}

static void samples_up(page *p, const family *f) {
    put_series(p, f->name, "", NULL, NULL, NULL, NULL);
    put_int(p, 1);
}

static void samples_start_time(page *p, const family *f) {
    pthread_mutex_lock(&reg.mu);
    double start = reg.start_time;
    pthread_mutex_unlock(&reg.mu);
    put_series(p, f->name, "", NULL, NULL, NULL, NULL);
    put_double(p, start);
}

#define SIMPLE(first, last) samples_simple, first, last

static const family families[] = {
    {"copystream_events_consumed_total", "counter", "Clickstream events decoded, by type.",
     samples_events, 0, 0},
    {"copystream_reactions_consumed_total", "counter", "Reactions to copy decoded, by type.",
     samples_reactions, 0, 0},
    {"copystream_catalog_updates_total", "counter", "Catalog item updates applied.",
     SIMPLE(MET_CATALOG_UPDATES, MET_CATALOG_UPDATES)},
    {"copystream_catalog_items", "gauge", "Items in the catalog.",
     SIMPLE(MET_CATALOG_ITEMS, MET_CATALOG_ITEMS)},
    {"copystream_events_skipped_total", "counter",
     "Events not applied: upstream duplicates (same event id within the window) and "
     "redelivered positions already applied.",
     SIMPLE(MET_SKIPPED_DUPLICATE, MET_SKIPPED_REDELIVERED)},
    {"copystream_copies_produced_total", "counter",
     "Personalized copies published, by locale and strategy.", samples_copies, 0, 0},
    {"copystream_copies_suppressed_total", "counter", "Copies not produced, by reason.",
     SIMPLE(MET_SUPPRESSED_MIN_INTERVAL, MET_SUPPRESSED_STALE)},
    {"copystream_dead_lettered_total", "counter",
     "Messages sent to the dead-letter topic, by decode failure.", samples_dead_letters, 0, 0},
    {"copystream_processing_seconds", "histogram",
     "Per event, time from poll to the commit of its batch.", samples_processing, 0, 0},
    {"copystream_batch_seconds", "histogram", "Per batch, time from start to commit.",
     samples_batch, 0, 0},
    {"copystream_consumer_lag", "gauge", "Messages behind the partition's high watermark.",
     samples_lag, 0, 0},
    {"copystream_redis_errors_total", "counter", "Redis errors, by kind.",
     SIMPLE(MET_REDIS_ERR_CONNECTION, MET_REDIS_ERR_CONFLICT)},
    {"copystream_redis_round_trips_total", "counter", "Round trips to Redis.",
     SIMPLE(MET_REDIS_ROUND_TRIPS, MET_REDIS_ROUND_TRIPS)},
    {"copystream_kafka_errors_total", "counter", "Kafka errors, by kind.",
     SIMPLE(MET_KAFKA_ERR_PRODUCE, MET_KAFKA_ERR_FATAL)},
    {"copystream_kafka_transactions_total", "counter",
     "Kafka transactions ended (processing.guarantee = exactly_once), by result.",
     SIMPLE(MET_KAFKA_TXN_COMMITTED, MET_KAFKA_TXN_ABORTED)},
    {"copystream_state_cache_total", "counter", "User state cache lookups, by result.",
     SIMPLE(MET_STATE_CACHE_HIT, MET_STATE_CACHE_MISS)},
    {"copystream_state_cache_bytes", "gauge", "Bytes held by the user state cache.",
     SIMPLE(MET_STATE_CACHE_BYTES, MET_STATE_CACHE_BYTES)},
    {"copystream_paused", "gauge",
     "1 while fetching is paused after a failed batch, for its retry's backoff.",
     SIMPLE(MET_PAUSED, MET_PAUSED)},
    {"copystream_state_cache_evictions_total", "counter", "User states evicted from the cache.",
     SIMPLE(MET_STATE_CACHE_EVICTIONS, MET_STATE_CACHE_EVICTIONS)},
    {"copystream_assigned_partitions", "gauge", "Partitions assigned to this instance.",
     SIMPLE(MET_ASSIGNED_PARTITIONS, MET_ASSIGNED_PARTITIONS)},
    {"copystream_batches_total", "counter", "Batches committed.",
     SIMPLE(MET_BATCHES, MET_BATCHES)},
    {"copystream_reactions_attributed_total", "counter",
     "Reactions by attribution to their copy: attributed, late (outside the attribution "
     "window) or unknown (no such copy remembered).",
     SIMPLE(MET_REACTIONS_ATTRIBUTED, MET_REACTIONS_UNKNOWN)},
    {"copystream_triggers_fired_total", "counter",
     "Delayed triggers that came due and were produced to the triggers topic, by intent.",
     SIMPLE(MET_TRIGGERS_CART_REMINDER, MET_TRIGGERS_PRICE_DROP)},
    {"copystream_triggers_deferred_total", "counter",
     "Delayed triggers that arrived in the user's quiet hours and were put back until their end.",
     SIMPLE(MET_TRIGGERS_DEFERRED, MET_TRIGGERS_DEFERRED)},
    {"copystream_copies_by_intent_total", "counter", "Personalized copies made, by intent.",
     SIMPLE(MET_COPIES_RECOMMENDATION, MET_COPIES_PRICE_DROP)},
    {"copystream_control_messages_total", "counter",
     "Control messages applied (forget, opt_out, opt_in) or refused (invalid).",
     SIMPLE(MET_CONTROL_FORGET, MET_CONTROL_INVALID)},
    {"copystream_build_info", "gauge", "Always 1; the version is in the label.",
     samples_build_info, 0, 0},
    {"copystream_up", "gauge", "Always 1 while the process serves metrics.", samples_up, 0, 0},
    {"copystream_start_time_seconds", "gauge", "Start time of the process, Unix epoch seconds.",
     samples_start_time, 0, 0},
};

int metrics_render(buf *out) {
    page p = {out, 0};
    for (size_t i = 0; i < UTIL_ARRAY_LEN(families); i++) {
        const family *f = &families[i];
        if (buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name,
                       f->type) < 0)
            p.err = 1;
        f->samples(&p, f);
    }
    return p.err ? -1 : 0;
}
