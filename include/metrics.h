/* metrics.h -- copystream's Prometheus metrics: one registry per process.
 *
 * The processing thread updates metrics for every event, hundreds of
 * thousands of times a second, while the HTTP thread renders the page, so
 * every per-event update is a relaxed atomic add on static storage: no lock,
 * no allocation. Relaxed ordering is enough because each number is read on
 * its own; a scrape may see one counter a few increments ahead of another,
 * which Prometheus tolerates by design.
 *
 * Two families have open label values and live in fixed-capacity tables:
 * copies produced per (locale, strategy), where a new pair is registered once
 * under a mutex and incremented lock-free afterwards, and consumer lag per
 * (topic, partition), which changes once per batch and is simply kept under
 * the mutex. Nothing here allocates, so there is nothing to free.
 *
 * The registry is global because the program runs one service per process;
 * tests call metrics_reset() between cases. */
#ifndef COPYSTREAM_METRICS_H
#define COPYSTREAM_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "codec.h"
#include "records.h"

/* Metrics whose labels, if any, are fixed. Members that share a family (the
 * reasons of copystream_events_skipped_total) are adjacent. */
typedef enum {
    MET_CATALOG_UPDATES = 0,      /* copystream_catalog_updates_total */
    MET_CATALOG_ITEMS,            /* gauge copystream_catalog_items */
    MET_SKIPPED_DUPLICATE,        /* copystream_events_skipped_total{reason=...} */
    MET_SKIPPED_REDELIVERED,
    MET_SUPPRESSED_MIN_INTERVAL,  /* copystream_copies_suppressed_total{reason=...} */
    MET_SUPPRESSED_NO_CANDIDATES,
    MET_SUPPRESSED_RENDER_ERROR,
    MET_SUPPRESSED_HOLDOUT,
    MET_SUPPRESSED_NO_CONSENT,
    MET_SUPPRESSED_QUIET_HOURS,
    MET_SUPPRESSED_CAP_HOUR,
    MET_SUPPRESSED_CAP_DAY,
    MET_SUPPRESSED_REPEAT,
    MET_SUPPRESSED_MISSING_FIELD,
    MET_SUPPRESSED_TOO_LONG,
    MET_SUPPRESSED_BANNED_PHRASE,
    MET_SUPPRESSED_ALREADY_BOUGHT,
    MET_SUPPRESSED_PRICE_RESTORED,
    MET_SUPPRESSED_STALE,
    MET_REDIS_ERR_CONNECTION,     /* copystream_redis_errors_total{kind=...} */
    MET_REDIS_ERR_TIMEOUT,
    MET_REDIS_ERR_REPLY,
    MET_REDIS_ERR_CONFLICT,
    MET_REDIS_ROUND_TRIPS,        /* copystream_redis_round_trips_total */
    MET_KAFKA_ERR_PRODUCE,        /* copystream_kafka_errors_total{kind=...} */
    MET_KAFKA_ERR_COMMIT,
    MET_KAFKA_ERR_CONSUME,
    MET_KAFKA_ERR_FATAL,
    MET_KAFKA_TXN_COMMITTED,      /* copystream_kafka_transactions_total{result=...} */
    MET_KAFKA_TXN_ABORTED,
    MET_STATE_CACHE_HIT,          /* copystream_state_cache_total{result=...} */
    MET_STATE_CACHE_MISS,
    MET_STATE_CACHE_BYTES,        /* gauge copystream_state_cache_bytes */
    MET_PAUSED,                   /* gauge copystream_paused: fetching paused for a backoff */
    MET_STATE_CACHE_EVICTIONS,    /* copystream_state_cache_evictions_total */
    MET_ASSIGNED_PARTITIONS,      /* gauge copystream_assigned_partitions */
    MET_BATCHES,                  /* copystream_batches_total */
    MET_REACTIONS_ATTRIBUTED,     /* copystream_reactions_attributed_total{result=...} */
    MET_REACTIONS_LATE,
    MET_REACTIONS_UNKNOWN,
    MET_TRIGGERS_CART_REMINDER,   /* copystream_triggers_fired_total{intent=...} */
    MET_TRIGGERS_PRICE_DROP,
    MET_TRIGGERS_DEFERRED,        /* copystream_triggers_deferred_total */
    MET_COPIES_RECOMMENDATION,    /* copystream_copies_by_intent_total{intent=...}, in */
    MET_COPIES_CART_REMINDER,     /* intent_kind order */
    MET_COPIES_CROSS_SELL,
    MET_COPIES_RE_ENGAGEMENT,
    MET_COPIES_PRICE_DROP,
    MET_CONTROL_FORGET,           /* copystream_control_messages_total{type=...} */
    MET_CONTROL_OPT_OUT,
    MET_CONTROL_OPT_IN,
    MET_CONTROL_INVALID,
    MET__COUNT
} metric_id;

/* Capacities of the open-label tables. */
#define METRICS_MAX_COPY_LABELS 64
#define METRICS_MAX_LABEL_LEN   63    /* longer locale or strategy values count as "other" */
#define METRICS_MAX_LAGS        4096
#define METRICS_MAX_TOPIC_LEN   249   /* Kafka's own limit on topic names */

/* Adds n to a counter, or to a gauge. Out-of-range ids are ignored. */
void metrics_inc(metric_id id, uint64_t n);
/* Sets a gauge. Calling it on a counter would let the counter go down, which
 * Prometheus reads as a restart: don't. */
void metrics_set(metric_id id, int64_t value);

/* Labelled counters indexed by the program's own enums; values out of range
 * (and CODEC_OK, which is no dead letter) are ignored. */
void metrics_inc_event(event_type t, uint64_t n);
void metrics_inc_reaction(reaction_type t, uint64_t n);
void metrics_inc_dead_letter(codec_status s, uint64_t n);

/* copystream_copies_produced_total{locale,strategy}. The first
 * METRICS_MAX_COPY_LABELS distinct pairs get their own series; later pairs,
 * values longer than METRICS_MAX_LABEL_LEN and the pair ("other", "other")
 * itself are counted under locale="other",strategy="other". NULL is read as
 * "". The strings are copied; the caller keeps them. */
void metrics_inc_copies(const char *locale, const char *strategy, uint64_t n);

/* copystream_processing_seconds: count events that each took `seconds` from
 * poll to commit (one call per batch). Negative or NaN durations count as 0,
 * because a single NaN would poison _sum for the life of the process. */
void metrics_observe_processing(double seconds, uint64_t count);
/* copystream_batch_seconds: one batch, start to commit. */
void metrics_observe_batch(double seconds);

/* copystream_consumer_lag{topic,partition}: sets, or adds, the series for a
 * partition. Returns -1 (and records nothing) when the table holds
 * METRICS_MAX_LAGS other partitions already or the topic is longer than
 * METRICS_MAX_TOPIC_LEN; 0 otherwise. */
int metrics_set_lag(const char *topic, int32_t partition, int64_t lag);
/* Removes a partition's series, when a rebalance takes the partition away, so
 * that a stale lag is not reported forever. Unknown partitions are ignored. */
void metrics_drop_lag(const char *topic, int32_t partition);

/* Records the version for copystream_build_info and now as
 * copystream_start_time_seconds. Called once by main; until then the version
 * reads "unknown" and the start time 0. The version is copied (truncated to
 * METRICS_MAX_LABEL_LEN bytes). */
void metrics_start(const char *version);

/* Appends the whole registry to out in the Prometheus text exposition format
 * 0.0.4. Safe to call from any thread while others update. Returns 0, or -1
 * when memory runs out (out then holds an incomplete page). */
int metrics_render(buf *out);

/* Zeroes every metric and empties both tables, as at process start. Only for
 * tests: no other thread may touch metrics meanwhile. */
void metrics_reset(void);

#endif
