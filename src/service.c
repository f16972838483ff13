/* service.c -- `copystream run`: clickstream in, user state in Redis,
 * personalized copy out.
 *
 * One processing thread runs a loop of batches. A batch is what one
 * consumer-group member polled within batch.max_wait_ms (at most
 * batch.max_events messages from clickstream and reactions). Each batch:
 *
 *   1. is decoded; what cannot be decoded goes to the dead-letter topic with
 *      the reason and its source position in headers;
 *   2. is grouped by user; owned users' states come from the in-process
 *      cache, the rest from Redis (one pipelined round trip);
 *   3. is applied, each user's inputs in offset order (userstate.c decides
 *      what is new, redelivered or an upstream duplicate); events that
 *      trigger copy get items picked (strategy.c), text rendered
 *      (template.c) and the encoded copy put in the user's outbox;
 *   4. is written: every changed user by one compare-and-set script call,
 *      all in one pipeline (store.c), so state, watermark and outbox land
 *      atomically per user;
 *   5. has its copies published once the writes are confirmed (new copies,
 *      and outbox copies of redelivered events, byte for byte);
 *   6. is committed once the broker has acknowledged everything it
 *      produced; the outbox copies it covered are then deleted.
 *
 * The steps overlap: while Redis executes one batch's writes the next batch
 * is decoded and applied, and while the broker acknowledges a batch's copies
 * the next one is staged (see svc_flight and svc_process_batch).
 *
 * If anything fails before a commit, the consumer is rewound to the first
 * offsets of every uncommitted batch and they run again later: Redis holds
 * whatever was written, the watermarks turn re-applied events into no-ops,
 * and the outbox republishes the copies they caused. Nothing is lost,
 * nothing counts twice, and a copy may be published twice only with the same
 * bytes (at-least-once). See docs/ARCHITECTURE.md.
 *
 * The catalog is read by a second consumer that is not part of the group:
 * every instance needs every item, like a global table. It is read to the
 * end at start-up and followed between batches.
 *
 * `copystream replay` and `rebuild-state` run this same pipeline bounded
 * (service.h, range.h): partitions assigned from fixed start offsets instead
 * of a group subscription, copies only inside the range, a stop at the
 * range's end; the few places that differ are marked by s->range and
 * s->dry_run. */
#define _GNU_SOURCE
#include <getopt.h>
#include <inttypes.h>
#include <malloc.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bandit.h"
#include "cache.h"
#include "catalog.h"
#include "codec.h"
#include "commands.h"
#include "config.h"
#include "dict.h"
#include "httpd.h"
#include "intent.h"
#include "kafka.h"
#include "log.h"
#include "metrics.h"
#include "policy.h"
#include "privacy.h"
#include "range.h"
#include "recommend.h"
#include "service.h"
#include "store.h"
#include "strategy.h"
#include "template.h"
#include "trigger.h"
#include "userstate.h"
#include "util.h"

/* The strategies, as copies and metrics name them; a delayed trigger's copy
 * promotes the item the trigger is about. */
enum { SVC_AFFINITY = 0, SVC_TRANSFORMER, SVC_TRIGGERED, SVC__STRATEGIES };
static const char *const svc_strategy_names[SVC__STRATEGIES] = {"affinity", "transformer",
                                                                "trigger"};

/* Copies published, by how they were made: one of the strategies, or an
 * outbox copy published again for a redelivered event. */
enum { SVC_REPUBLISHED = SVC__STRATEGIES, SVC__KINDS };
static const char *const svc_kind_names[SVC__KINDS] = {"affinity", "transformer", "trigger",
                                                       "republished"};

enum { SVC_CLICK = 1, SVC_REACTION, SVC_TRIGGER, SVC_DEAD };

/* Reasons a due copy is not made, as counted in svc_flight. */
#define SVC_N_SUPPRESSED (MET_SUPPRESSED_STALE - MET_SUPPRESSED_MIN_INTERVAL + 1)

typedef struct svc_user svc_user;

typedef struct svc_item {
    rd_kafka_message_t *msg;  /* owned until the batch ends, or by its flight's dls */
    int64_t polled_us;
    int kind;                 /* SVC_* ; 0 until decoded */
    click_event click;        /* when kind == SVC_CLICK; for SVC_TRIGGER its id, user,
                               * item and due time, so that copies are made alike */
    reaction rx;              /* when kind == SVC_REACTION */
    trigger trig;             /* when kind == SVC_TRIGGER */
    int intent;               /* the intent of the copy it triggers; -1: none */
    svc_user *user;
    struct svc_item *next;    /* the user's next item in this batch */
    int outcome;              /* US_* of the last apply */
    int publish;              /* its outbox copy is published after the write */
    int suppressed;           /* MET_SUPPRESSED_* + 1, or 0 */
    codec_status dead;        /* why it was dead-lettered (kind == SVC_DEAD) */
    uint64_t seq_pos;         /* the user's seq_total once this event was appended; 0: not */
    long snap;                /* its copy is due: index into svc.snaps; -1: none due */
    int strategy;             /* SVC_AFFINITY or SVC_TRANSFORMER, of the copy made */
    int segment;              /* the user's bandit segment when its copy was due */
    int attribution;          /* a new reaction's bandit_attribution + 1, or 0 */
} svc_item;

/* What a due copy needs from its user as of its event, for it is made only
 * after every event of the batch is applied (so that the model can advance
 * every user together). */
typedef struct {
    user_state prefs;         /* affinities, bought items, locale; arrays reused */
    strategy_result res;
} svc_snap;

struct svc_user {
    const char *user_id;      /* borrowed from its first item's record */
    user_state st;
    int have_state;
    int32_t part[2];          /* last partition seen per US_TOPIC_* */
    svc_item *first, *last;
    int applied;              /* its items are applied to st */
    uint64_t seq_before;      /* st.seq_total before this batch */
    float *h;                 /* (events appended, model dim): model states, or NULL */
};

/* An outbox copy in Redis that this instance will delete once the offsets
 * covering it are committed. */
typedef struct {
    char *user_id;
    int32_t partition;
    int64_t offset;
} svc_outbox_ref;

/* One (topic, partition) this member is assigned. */
typedef struct {
    char *topic;
    int32_t partition;
    int eof;
} svc_assigned;

/* A message bound for the dead-letter topic, produced with its batch's copies. */
typedef struct {
    rd_kafka_message_t *msg;  /* owned */
    rd_kafka_headers_t *hdrs; /* owned until produced */
} svc_dead_letter_msg;

typedef struct {
    int topic;                /* 0 clickstream, 1 reactions, 2 triggers */
    int32_t partition;
    int64_t min, max;         /* offsets seen in this batch */
} svc_span;

/* A batch on its way through the pipeline. Up to three are alive at once,
 * each a step behind the other, so that no step waits for a round trip:
 *
 *   (staging) being decoded and applied;
 *   WRITING   its Redis writes sent; once the next batch is decoded and its
 *             cached users applied, the replies are read and, if every write
 *             went through, its copies are produced;
 *   ACKING    its copies produced; by the time the batch after it is staged
 *             its acks are in: its offsets are committed and it is reported.
 *
 * Commits stay in order. A failure anywhere rewinds every batch not yet
 * committed (see svc_recover). */
enum { FLIGHT_FREE = 0, FLIGHT_WRITING, FLIGHT_ACKING };

typedef struct {
    int phase;                /* FLIGHT_* */
    uint64_t seq;             /* batch number, to settle them oldest first */
    svc_span *spans;          /* [n_spans] */
    size_t n_spans, cap_spans;
    kafka_delivery dr;        /* this batch's delivery reports */
    uint64_t expected;        /* messages it produced */
    buf pub;                  /* copies to publish once its writes are confirmed:
                               * (u32 key length, key, u32 length, message)... */
    svc_dead_letter_msg *dls; /* [n_dls]: undecodable input, published with the copies */
    size_t n_dls, cap_dls;
    int64_t t0;               /* when staging began */
    int64_t *polled_us;       /* [n_polled] (capacity batch_max): poll times */
    size_t n_polled;
    uint64_t events[EV__COUNT], reactions[RX__COUNT], dead[CODEC__COUNT];
    uint64_t skipped_dup, skipped_redelivered;
    uint64_t triggers;        /* trigger messages consumed */
    uint64_t suppressed[SVC_N_SUPPRESSED]; /* by MET_SUPPRESSED_* - MET_SUPPRESSED_MIN_INTERVAL */
    uint64_t attributed[BANDIT__ATTRIBUTIONS]; /* new reactions, by attribution */
    uint64_t by_intent[INTENT__COUNT];         /* new copies, by intent */
    uint64_t *copies;         /* [n_locales][SVC__KINDS] copies published, by locale and kind */
} svc_flight;

typedef struct svc {
    const config *cfg;
    /* settings */
    userstate_params up;
    size_t copy_items, max_reasons;
    char **locales;
    size_t n_locales;
    const char *default_locale;
    size_t batch_max;
    int batch_wait_ms;
    int64_t shutdown_ms;
    int64_t exit_when_idle_ms;
    int eos;                  /* processing.guarantee = exactly_once (never for a range) */
    char txn_id[256];         /* its transactional id */
    int txn_open;             /* a transaction of the producer is open */
    int fenced;               /* another producer took our transactional id: stop */
    const char *t_click, *t_react, *t_copy, *t_dlq, *t_catalog, *t_trig, *t_control;
    intent_rules rules;
    int trig_partitions;      /* of t_trig */
    /* parts */
    codec *codec;
    catalog *catalog;
    templates *tpl;
    bandit *bandit;           /* variant choice, attribution, shared statistics */
    triggers *trig;           /* delayed triggers: scheduling, price drops, firing */
    policy *pol;              /* consent, quiet hours, caps, no repeats */
    privacy *priv;            /* forget and consent requests, applied to Redis */
    store *store;
    cache *cache;
    rd_kafka_t *consumer, *catalog_consumer, *control_consumer, *producer;
    kafka_delivery dr;        /* producer-wide delivery counts */
    httpd *http;
    /* the batch */
    svc_item *items;          /* [n_items], capacity batch_max */
    size_t n_items;
    svc_user *users;          /* [n_users], capacity batch_max */
    size_t n_users;
    dict *user_index;         /* user id -> svc_user* */
    store_write *writes;      /* scratch, capacity batch_max */
    user_state **load_states; /* scratch */
    const char **load_ids;
    svc_flight flight[3];     /* see svc_flight */
    uint64_t batches;         /* batches staged so far; flight[batches % 3] is next */
    rd_kafka_topic_t *rkt_react; /* the reactions topic's handle, to tell messages apart */
    rd_kafka_topic_t *rkt_trig;  /* the triggers topic's */
    buf scratch, text;
    svc_snap *snaps;          /* [n_snaps] (capacity batch_max): due copies' snapshots */
    size_t n_snaps;
    /* the learned strategy, when model.path is set */
    recommender *rec;
    const char *model_path;
    uint64_t model_min_events;
    int64_t reload_check_us, last_reload_check_us;
    struct timespec model_mtime;
    off_t model_size;
    float *h_arena;           /* model states of the batch's appended events */
    size_t h_cap;
    recommend_work *work;     /* [batch_max] */
    recommend_query *queries; /* [batch_max] */
    /* outbox copies awaiting a covering commit, and purges to send */
    svc_outbox_ref *refs;
    size_t n_refs, cap_refs;
    svc_outbox_ref *purges;   /* [n_purges] committed copies to delete next round trip */
    size_t n_purges, cap_purges;
    size_t n_purges_sent;     /* the first ones, riding on the write in flight */
    int64_t *committed;       /* next offset to consume, by clickstream partition */
    size_t n_committed;
    int64_t *committed_trig;  /* the same for the triggers topic's partitions */
    size_t n_committed_trig;
    /* assignment */
    svc_assigned *assigned;
    size_t n_assigned, cap_assigned;
    int64_t last_activity_us;
    int64_t last_lag_us;
    int backoff_ms;
    int64_t paused_until_us;  /* backpressure: the assignment is paused until then; 0: not */
    /* totals for the exit summary */
    uint64_t total_events, total_reactions, total_triggers, total_copies, total_dead;
    int64_t first_poll_us, last_commit_us;
    /* a bounded run (replay, rebuild-state; service.h), or NULL */
    range *range;
    service_publish_fn dry_run;
    void (*tick)(void *ud);
    void (*producer_hook)(void *ud, rd_kafka_t *producer);
    void *ud;
    int range_completed;
    /* health, read by the HTTP thread */
    atomic_int redis_ok;
    atomic_int kafka_ok;
    atomic_int ready;
} svc;

static volatile sig_atomic_t svc_stop_requested;
static volatile sig_atomic_t svc_reload_requested;

static void svc_on_signal(int sig) {
    if (sig == SIGHUP)
        svc_reload_requested = 1;
    else
        svc_stop_requested = 1;
}

/* ---- settings ------------------------------------------------------------- */

/* Splits a comma list into a NULL-terminated array of strings (one block). */
static char **svc_split(const char *list, size_t *n) {
    size_t count = 1;
    for (const char *p = list; *p; p++) count += *p == ',';
    char **v = calloc(count + 1, sizeof *v);
    char *copy = strdup(list);
    if (!v || !copy) {
        free(v);
        free(copy);
        return NULL;
    }
    size_t k = 0;
    for (char *save = NULL, *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
        v[k++] = tok;
    if (k == 0) free(copy); /* v[0] owns the block otherwise */
    *n = k;
    return v;
}

static void svc_free_split(char **v) {
    if (!v) return;
    free(v[0]);
    free(v);
}

static int svc_settings(svc *s, const config *c, char *errstr, size_t errlen) {
    s->cfg = c;
    userstate_params_default(&s->up);
    s->up.max_sequence = (size_t)config_int(c, "state.sequence_length");
    s->up.max_categories = (size_t)config_int(c, "state.max_categories");
    s->up.max_attributes = (size_t)config_int(c, "state.max_attributes");
    s->up.max_bought = (size_t)config_int(c, "state.max_bought");
    s->up.half_life_s = config_double(c, "affinity.half_life_s");
    for (int t = 0; t < EV__COUNT; t++) {
        char key[64];
        snprintf(key, sizeof key, "affinity.weight.%s", event_type_name((event_type)t));
        s->up.weight[t] = (float)config_double(c, key);
    }
    s->up.dedup_window_ms = config_int(c, "dedup.window_s") * 1000;
    s->up.dedup_max_ids = (size_t)config_int(c, "dedup.max_ids");

    s->copy_items = (size_t)config_int(c, "copy.items");
    s->max_reasons = (size_t)config_int(c, "copy.max_reasons");
    if (s->copy_items > STRATEGY_MAX_PICKS) s->copy_items = STRATEGY_MAX_PICKS;
    if (s->max_reasons > STRATEGY_MAX_REASONS) s->max_reasons = STRATEGY_MAX_REASONS;
    if (!(s->locales = svc_split(config_str(c, "copy.locales"), &s->n_locales)))
        return util_err(errstr, errlen, "out of memory");
    /* The default is one of copy.locales (config.c checks): point at that
     * entry so that a locale is always one of s->locales by address. */
    s->default_locale = s->locales[0];
    for (size_t i = 0; i < s->n_locales; i++)
        if (strcmp(s->locales[i], config_str(c, "copy.default_locale")) == 0)
            s->default_locale = s->locales[i];
    s->batch_max = (size_t)config_int(c, "batch.max_events");
    s->batch_wait_ms = (int)config_int(c, "batch.max_wait_ms");
    s->shutdown_ms = config_int(c, "shutdown.timeout_s") * 1000;
    s->t_click = config_str(c, "topic.clickstream");
    s->t_react = config_str(c, "topic.reactions");
    s->t_copy = config_str(c, "topic.copy");
    s->t_dlq = config_str(c, "topic.dead_letter");
    s->t_catalog = config_str(c, "topic.catalog");
    s->t_trig = config_str(c, "topic.triggers");
    s->t_control = config_str(c, "topic.control");
    if (intent_rules_load(&s->rules, c, errstr, errlen) < 0) return -1;
    s->model_path = config_str(c, "model.path");
    s->model_min_events = (uint64_t)config_int(c, "model.min_events");
    s->reload_check_us = config_int(c, "model.reload_check_s") * 1000000;
    s->eos = strcmp(config_str(c, "processing.guarantee"), "exactly_once") == 0;
    return 0;
}

/* The transactional id of an exactly-once run: processing.transactional_id,
 * or one unique to this process (docs/GUARANTEES.md says what each costs). */
static void svc_transactional_id(svc *s, const char *group) {
    const char *id = config_str(s->cfg, "processing.transactional_id");
    if (id[0]) {
        snprintf(s->txn_id, sizeof s->txn_id, "%s", id);
        return;
    }
    char host[128] = "";
    if (gethostname(host, sizeof host - 1) < 0) snprintf(host, sizeof host, "unknown");
    snprintf(s->txn_id, sizeof s->txn_id, "copystream-%s-%s-%ld",
             group ? group : config_str(s->cfg, "kafka.group.id"), host, (long)getpid());
}

/* ---- health --------------------------------------------------------------- */

static int svc_health(void *ud, buf *msg) {
    svc *s = ud;
    int ready = atomic_load(&s->ready), redis = atomic_load(&s->redis_ok),
        kafka = atomic_load(&s->kafka_ok);
    buf_printf(msg, "ready=%d redis=%s kafka=%s\n", ready, redis ? "ok" : "failing",
               kafka ? "ok" : "failing");
    return ready && redis && kafka;
}

/* ---- assignment bookkeeping ----------------------------------------------- */

static svc_assigned *svc_find_assigned(svc *s, const char *topic, int32_t partition) {
    for (size_t i = 0; i < s->n_assigned; i++)
        if (s->assigned[i].partition == partition && strcmp(s->assigned[i].topic, topic) == 0)
            return &s->assigned[i];
    return NULL;
}

static void svc_add_assigned(svc *s, const char *topic, int32_t partition) {
    if (svc_find_assigned(s, topic, partition)) return;
    if (s->n_assigned == s->cap_assigned) {
        size_t cap = s->cap_assigned ? s->cap_assigned * 2 : 16;
        svc_assigned *v = realloc(s->assigned, cap * sizeof *v);
        if (!v) return; /* only EOF/lag bookkeeping is lost */
        s->assigned = v;
        s->cap_assigned = cap;
    }
    s->assigned[s->n_assigned++] = (svc_assigned){strdup(topic), partition, 0};
}

static void svc_remove_assigned(svc *s, const char *topic, int32_t partition) {
    svc_assigned *a = svc_find_assigned(s, topic, partition);
    if (!a) return;
    free(a->topic);
    *a = s->assigned[--s->n_assigned];
}

static uint8_t svc_topic_kind(const svc *s, const char *topic) {
    return strcmp(topic, s->t_react) == 0 ? US_TOPIC_REACTIONS : US_TOPIC_CLICKSTREAM;
}

/* ---- bounded runs (replay, rebuild-state; see service.h) ------------------ */

static uint8_t svc_msg_kind(const svc *s, const rd_kafka_message_t *m) {
    return m->rkt == s->rkt_react ? US_TOPIC_REACTIONS : US_TOPIC_CLICKSTREAM;
}

/* May the event of message m make a copy? Always in the service; in a
 * bounded run only inside the range's copy offsets, for before them the run
 * only rebuilds the state the live run had. */
static int svc_copy_wanted(const svc *s, const rd_kafka_message_t *m) {
    return !s->range ||
           range_copy_wanted(s->range, svc_msg_kind(s, m), m->partition, m->offset);
}

/* In a bounded run, drops a message at or past its partition's end and
 * pauses the partition, which has nothing more for this run. Returns 1 when
 * m was dropped (destroyed), 0 when it is to be processed. */
static int svc_range_drop(svc *s, rd_kafka_message_t *m) {
    if (!s->range) return 0;
    const range_part *p = range_find(s->range, svc_msg_kind(s, m), m->partition);
    int was_reached = p && p->reached;
    if (!range_past_end(s->range, svc_msg_kind(s, m), m->partition, m->offset)) return 0;
    if (!was_reached) {
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, rd_kafka_topic_name(m->rkt), m->partition);
        rd_kafka_pause_partitions(s->consumer, l);
        rd_kafka_topic_partition_list_destroy(l);
    }
    rd_kafka_message_destroy(m);
    return 1;
}

/* Assigns the range's partitions at their start offsets: no group
 * membership, so no rebalance and nobody's assignment or offsets move. */
static int svc_range_assign(svc *s, char *errstr, size_t errlen) {
    size_t n = range_count(s->range);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)n + 1);
    for (size_t i = 0; i < n; i++) {
        const range_part *p = range_at(s->range, i);
        if (p->reached) continue; /* nothing to read */
        rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset = p->start;
        svc_add_assigned(s, p->topic, p->partition);
    }
    rd_kafka_resp_err_t err = rd_kafka_assign(s->consumer, l);
    log_info("service", "bounded run: %d partitions assigned, %" PRIu64 " offsets to read", l->cnt,
             range_total(s->range));
    rd_kafka_topic_partition_list_destroy(l);
    if (err) return util_err(errstr, errlen, "assigning the range: %s", rd_kafka_err2str(err));
    return 0;
}

/* After a rewind to the offsets in l: those partitions of a bounded run are
 * read again (and were perhaps paused at their end). */
static void svc_range_rewound(svc *s, rd_kafka_topic_partition_list_t *l) {
    if (!s->range) return;
    for (int i = 0; i < l->cnt; i++)
        range_rewound(s->range, svc_topic_kind(s, l->elems[i].topic), l->elems[i].partition);
    rd_kafka_resume_partitions(s->consumer, l);
}

/* ---- outbox references and purges ----------------------------------------- */

/* Appends a reference to an array of them, taking a copy of the user id. */
static void svc_ref_push(svc_outbox_ref **v, size_t *n, size_t *cap, const char *user_id,
                         size_t user_len, int32_t partition, int64_t offset) {
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 256;
        svc_outbox_ref *nv = realloc(*v, c * sizeof *nv);
        if (!nv) return; /* the copy then lives until the user's TTL */
        *v = nv;
        *cap = c;
    }
    char *id = strndup(user_id, user_len);
    if (!id) return;
    (*v)[(*n)++] = (svc_outbox_ref){id, partition, offset};
}

static void svc_add_ref(svc *s, const char *user_id, int32_t partition, int64_t offset) {
    svc_ref_push(&s->refs, &s->n_refs, &s->cap_refs, user_id, strlen(user_id), partition, offset);
}

/* Committed offsets by copy position: a clickstream partition, or a
 * triggers partition past INTENT_TRIGGER_PARTITION_BASE. */
static int64_t svc_committed(const svc *s, int32_t partition) {
    if (partition >= INTENT_TRIGGER_PARTITION_BASE) {
        size_t p = (size_t)(partition - INTENT_TRIGGER_PARTITION_BASE);
        return p < s->n_committed_trig ? s->committed_trig[p] : -1;
    }
    return partition >= 0 && (size_t)partition < s->n_committed ? s->committed[partition] : -1;
}

static void svc_set_committed(svc *s, int32_t partition, int64_t next_offset) {
    if (partition < 0) return;
    int64_t **arr = &s->committed;
    size_t *len = &s->n_committed;
    if (partition >= INTENT_TRIGGER_PARTITION_BASE) {
        partition -= INTENT_TRIGGER_PARTITION_BASE;
        arr = &s->committed_trig;
        len = &s->n_committed_trig;
    }
    if ((size_t)partition >= *len) {
        size_t n = (size_t)partition + 1;
        int64_t *v = realloc(*arr, n * sizeof *v);
        if (!v) return;
        for (size_t i = *len; i < n; i++) v[i] = -1;
        *arr = v;
        *len = n;
    }
    if (next_offset > (*arr)[partition]) (*arr)[partition] = next_offset;
}

static void svc_clear_purges(svc *s) {
    for (size_t i = 0; i < s->n_purges; i++) free(s->purges[i].user_id);
    s->n_purges = 0;
    s->n_purges_sent = 0;
}

/* The write in flight went through: its purges are done. Those queued since
 * stay for the next round trip. */
static void svc_purges_sent_done(svc *s) {
    size_t n = s->n_purges_sent;
    for (size_t i = 0; i < n; i++) free(s->purges[i].user_id);
    /* never with nothing queued: purges is NULL until the first one */
    if (n < s->n_purges) memmove(s->purges, s->purges + n, (s->n_purges - n) * sizeof *s->purges);
    s->n_purges -= n;
    s->n_purges_sent = 0;
}

/* Moves every outbox reference that the committed offsets now cover into the
 * purge queue and trims the cached states that still hold those copies. */
static void svc_refs_committed(svc *s) {
    size_t keep = 0;
    for (size_t i = 0; i < s->n_refs; i++) {
        svc_outbox_ref *r = &s->refs[i];
        int64_t c = svc_committed(s, r->partition);
        if (c >= 0 && r->offset < c) {
            user_state *st = cache_peek(s->cache, r->user_id);
            if (st) userstate_outbox_trim(st, r->partition, c);
            if (s->n_purges == s->cap_purges) {
                size_t cap = s->cap_purges ? s->cap_purges * 2 : 256;
                svc_outbox_ref *v = realloc(s->purges, cap * sizeof *v);
                if (!v) { /* keep it referenced; retried after the next commit */
                    s->refs[keep++] = *r;
                    continue;
                }
                s->purges = v;
                s->cap_purges = cap;
            }
            s->purges[s->n_purges++] = *r; /* the user id moves along */
            continue;
        }
        s->refs[keep++] = *r;
    }
    s->n_refs = keep;
}

/* Drops references of a partition this instance no longer owns: its new
 * owner finds those copies when it loads the users, and purges them after
 * its own commits. */
static void svc_refs_drop_partition(svc *s, int32_t partition) {
    size_t keep = 0;
    for (size_t i = 0; i < s->n_refs; i++) {
        if (s->refs[i].partition == partition) {
            free(s->refs[i].user_id);
            continue;
        }
        s->refs[keep++] = s->refs[i];
    }
    s->n_refs = keep;
}

/* The purge queue as the store wants it (views into the queue). */
static store_outbox_ref *svc_purge_views(svc *s) {
    if (!s->n_purges) return NULL;
    store_outbox_ref *v = malloc(s->n_purges * sizeof *v);
    for (size_t i = 0; v && i < s->n_purges; i++)
        v[i] = (store_outbox_ref){s->purges[i].user_id, s->purges[i].partition,
                                  s->purges[i].offset};
    return v;
}

/* Sends queued purges on their own round trip (when idle, or before giving
 * up partitions). Failures keep them queued. */
static void svc_flush_purges(svc *s) {
    if (!s->n_purges || store_write_pending(s->store)) return;
    store_outbox_ref *p = svc_purge_views(s);
    if (!p) return;
    char err[512];
    size_t conflicts;
    store_status st =
        store_write_batch(s->store, NULL, 0, p, s->n_purges, &conflicts, err, sizeof err);
    free(p);
    metrics_inc(MET_REDIS_ROUND_TRIPS, 1);
    if (st == STORE_OK) {
        svc_clear_purges(s);
    } else {
        metrics_inc(MET_REDIS_ERR_CONNECTION, 1);
        log_warn("service", "deleting committed outbox copies: %s (will retry)", err);
    }
}

/* ---- decoding and dead letters ------------------------------------------- */

static void svc_header_i64(rd_kafka_headers_t *h, const char *name, int64_t v) {
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%" PRId64, v);
    rd_kafka_header_add(h, name, -1, tmp, n);
}

/* Produces the message of item it to the dead-letter topic, unchanged, with
 * headers saying why and where it came from. Returns 0 or -1. */
static int svc_dead_letter(svc *s, svc_flight *f, svc_item *it, codec_status why,
                           const char *detail) {
    const rd_kafka_message_t *m = it->msg;
    if (s->range) {
        /* The live run dead-lettered it when it first met it. */
        log_warn("service", "bad input %s[%" PRId32 "]@%" PRId64 " skipped: %s: %s",
                 rd_kafka_topic_name(m->rkt), m->partition, m->offset, codec_status_name(why),
                 detail);
        return 0;
    }
    if (f->n_dls == f->cap_dls) {
        size_t cap = f->cap_dls ? 2 * f->cap_dls : 8;
        svc_dead_letter_msg *v = realloc(f->dls, cap * sizeof *v);
        if (!v) return -1;
        f->dls = v;
        f->cap_dls = cap;
    }
    rd_kafka_headers_t *h = rd_kafka_headers_new(8);
    const char *reason = codec_status_name(why);
    rd_kafka_header_add(h, "copystream.error", -1, reason, -1);
    rd_kafka_header_add(h, "copystream.error.detail", -1, detail, -1);
    rd_kafka_header_add(h, "copystream.source.topic", -1, rd_kafka_topic_name(m->rkt), -1);
    svc_header_i64(h, "copystream.source.partition", m->partition);
    svc_header_i64(h, "copystream.source.offset", m->offset);
    svc_header_i64(h, "copystream.source.timestamp", rd_kafka_message_timestamp(m, NULL));
    f->dls[f->n_dls++] = (svc_dead_letter_msg){it->msg, h};
    it->msg = NULL;
    log_warn("service", "dead-lettering %s[%" PRId32 "]@%" PRId64 ": %s: %s",
             rd_kafka_topic_name(m->rkt), m->partition, m->offset, reason, detail);
    return 0;
}

/* Produces f's dead letters. Like its copies, they go out only once its
 * writes are durable, in the same transaction as its offsets when exactly
 * once: a batch that runs again must not leave a dead letter twice.
 * Returns 0 or -1 (what is left is freed with the flight). */
static int svc_produce_dead_letters(svc *s, svc_flight *f) {
    char err[512];
    for (size_t i = 0; i < f->n_dls; i++) {
        svc_dead_letter_msg *d = &f->dls[i];
        const rd_kafka_message_t *m = d->msg;
        if (kafka_produce(s->producer, s->t_dlq, m->key, m->key_len, m->payload, m->len, d->hdrs,
                          &f->dr, err, sizeof err) < 0) {
            log_error("service", "dead-lettering %s[%" PRId32 "]@%" PRId64 ": %s",
                      rd_kafka_topic_name(m->rkt), m->partition, m->offset, err);
            return -1;
        }
        d->hdrs = NULL; /* librdkafka's now */
        f->expected++;
    }
    /* Released at once: a consumer cannot be destroyed while one is held. */
    for (size_t i = 0; i < f->n_dls; i++) rd_kafka_message_destroy(f->dls[i].msg);
    f->n_dls = 0;
    return 0;
}

/* A trigger message into it->trig, and the click fields copies are made
 * from. Returns CODEC_OK, or why it cannot be used. */
static codec_status svc_decode_trigger(svc_item *it, const rd_kafka_message_t *m, char *why,
                                       size_t whylen) {
    if (!m->payload || !m->len) return CODEC_ERR_EMPTY;
    if (trigger_decode(m->payload, m->len, &it->trig, why, whylen) < 0) return CODEC_ERR_MALFORMED;
    if (!it->trig.id) {
        util_err(why, whylen, "a trigger message needs id, ts and since");
        trigger_clear(&it->trig);
        return CODEC_ERR_INVALID;
    }
    click_event *e = &it->click;
    e->ts_ms = it->trig.ts_ms;
    e->type = EV_VIEW;
    if (!(e->event_id = strdup(it->trig.id)) || !(e->user_id = strdup(it->trig.user_id)) ||
        !(e->item_id = strdup(it->trig.item_id))) {
        click_event_clear(e);
        trigger_clear(&it->trig);
        util_err(why, whylen, "out of memory");
        return CODEC_ERR_MALFORMED;
    }
    return CODEC_OK;
}

static int svc_decode(svc *s, svc_flight *f, svc_item *it) {
    const rd_kafka_message_t *m = it->msg;
    char why[256] = "";
    codec_status st;
    if (m->rkt == s->rkt_react) {
        st = codec_decode_reaction(s->codec, m->payload, m->len, &it->rx, why, sizeof why);
        if (st == CODEC_OK) it->kind = SVC_REACTION;
    } else if (m->rkt == s->rkt_trig) {
        st = svc_decode_trigger(it, m, why, sizeof why);
        if (st == CODEC_OK) it->kind = SVC_TRIGGER;
    } else {
        st = codec_decode_click(s->codec, m->payload, m->len, &it->click, why, sizeof why);
        if (st == CODEC_OK) it->kind = SVC_CLICK;
    }
    if (st == CODEC_OK) return 0;
    it->kind = SVC_DEAD;
    it->dead = st;
    return svc_dead_letter(s, f, it, st, why[0] ? why : codec_status_name(st));
}

/* ---- applying a user's inputs --------------------------------------------- */

static const char *svc_locale(const svc *s, const char *user_locale) {
    for (size_t i = 0; user_locale[0] && i < s->n_locales; i++)
        if (strcmp(s->locales[i], user_locale) == 0) return s->locales[i];
    return s->default_locale;
}

static strategy_params svc_params(const svc *s, const svc_item *it, const user_state *prefs) {
    const click_event *e = &it->click;
    return (strategy_params){
        .k = s->copy_items,
        .max_reasons = s->max_reasons,
        .at_s = (uint32_t)(e->ts_ms / 1000),
        .half_life_s = s->up.half_life_s,
        .locale = svc_locale(s, prefs->locale),
        .exclude_item = e->item_id && e->item_id[0] ? util_hash(e->item_id) : 0,
    };
}

/* The position a copy caused by item it is recorded at (outbox field, copy
 * record, bandit marker): its source partition, or for a trigger its
 * partition past INTENT_TRIGGER_PARTITION_BASE, so that the two topics'
 * offsets never meet. */
static int32_t svc_pos(const svc_item *it) {
    return it->kind == SVC_TRIGGER ? it->msg->partition + INTENT_TRIGGER_PARTITION_BASE
                                   : it->msg->partition;
}

/* The suppression reason of a failed render. */
static int svc_render_reason(int rc) {
    switch (rc) {
    case TEMPLATE_MISSING_FIELD: return MET_SUPPRESSED_MISSING_FIELD;
    case TEMPLATE_TOO_LONG: return MET_SUPPRESSED_TOO_LONG;
    case TEMPLATE_BANNED: return MET_SUPPRESSED_BANNED_PHRASE;
    default: return MET_SUPPRESSED_RENDER_ERROR;
    }
}

/* Renders and encodes the copy of item it from the strategy's result r, in
 * locale, and puts it in the user's outbox. Returns 1 when a copy was made,
 * 0 when none could be (it->suppressed says why), -1 when memory runs out. */
static int svc_build_copy(svc *s, svc_item *it, const strategy_result *r, const char *locale) {
    svc_user *u = it->user;
    const click_event *e = &it->click;
    const char *intent = intent_name(it->intent);
    if (r->n_picks == 0) {
        it->suppressed = MET_SUPPRESSED_NO_CANDIDATES + 1;
        return 0;
    }
    promoted_item items[STRATEGY_MAX_PICKS];
    copy_reason reasons[STRATEGY_MAX_REASONS], shown[STRATEGY_MAX_REASONS];
    size_t n_shown = 0;
    for (size_t i = 0; i < r->n_picks; i++) {
        const catalog_item *ci = &r->picks[i].entry->item;
        items[i] = (promoted_item){
            .item_id = ci->item_id,
            .title = (char *)r->picks[i].title,
            .score = r->picks[i].score,
            .has_price = ci->has_price,
            .price_micros = ci->price_micros,
            .currency = ci->currency,
        };
    }
    for (size_t i = 0; i < r->n_reasons; i++) {
        reasons[i] = (copy_reason){
            .code = (char *)r->reasons[i].code,
            .attribute_id = (char *)r->reasons[i].attribute_id,
            .text = (char *)r->reasons[i].text,
            .score = r->reasons[i].score,
        };
        /* A category reason has no phrase: the template's fallback speaks for it. */
        if (r->reasons[i].text && r->reasons[i].text[0]) shown[n_shown++] = reasons[i];
    }
    const catalog_entry *subject =
        e->item_id && e->item_id[0] ? catalog_get(s->catalog, util_hash(e->item_id)) : NULL;
    template_input in = {
        .items = items,
        .n_items = r->n_picks,
        .reasons = shown,
        .n_reasons = n_shown,
        .trigger_title =
            subject ? localized_find(subject->item.titles, subject->item.n_titles, locale) : NULL,
        .has_old_price = it->kind == SVC_TRIGGER && it->trig.has_old_price,
        .old_price_micros = it->trig.old_price_micros,
    };
    const char *template_id = NULL, *variant_id = NULL;
    char why[256];
    buf_reset(&s->text);
    uint64_t arm;
    size_t choice = bandit_choose(s->bandit, intent, locale, it->segment,
                                  util_hash(e->event_id), &arm);
    int rc = templates_render(s->tpl, intent, locale, choice, &in, &s->text, &template_id,
                              &variant_id, why, sizeof why);
    if (rc < 0) {
        log_warn("service", "no %s copy for event %s of user %s: %s", intent, e->event_id,
                 u->user_id, why);
        it->suppressed = svc_render_reason(rc) + 1;
        return 0;
    }
    char copy_id[256];
    const rd_kafka_message_t *m = it->msg;
    int32_t pos = svc_pos(it);
    snprintf(copy_id, sizeof copy_id, "%s:%" PRId32 ":%" PRId64, rd_kafka_topic_name(m->rkt),
             m->partition, m->offset);
    personalized_copy pc = {
        .copy_id = copy_id,
        .user_id = (char *)u->user_id,
        .source_event_id = e->event_id,
        .source_topic = (char *)rd_kafka_topic_name(m->rkt),
        .source_partition = m->partition,
        .source_offset = m->offset,
        .locale = (char *)locale,
        .text = s->text.p,
        .items = items,
        .n_items = r->n_picks,
        .reasons = reasons,
        .n_reasons = r->n_reasons,
        .intent = (char *)intent,
        .template_id = (char *)template_id,
        .variant_id = (char *)variant_id,
        .strategy = (char *)svc_strategy_names[it->strategy],
        .model_version = it->strategy == SVC_TRANSFORMER ? (char *)recommend_version(s->rec) : NULL,
        .created_ms = util_now_ms(),
    };
    buf_reset(&s->scratch);
    if (codec_encode_copy(s->codec, &pc, &s->scratch, why, sizeof why) < 0) {
        log_error("service", "encoding copy %s: %s", copy_id, why);
        it->suppressed = MET_SUPPRESSED_RENDER_ERROR + 1;
        return 0;
    }
    uint64_t promoted[STRATEGY_MAX_PICKS];
    for (size_t i = 0; i < r->n_picks; i++) promoted[i] = r->picks[i].entry->item_hash;
    if (userstate_outbox_add(&u->st, pos, m->offset, s->scratch.p, s->scratch.len) < 0 ||
        bandit_copy_made(s->bandit, &u->st, pos, m->offset, e->ts_ms, arm,
                         util_hash(items[0].item_id), it->segment, 0) < 0 ||
        policy_promoted(s->pol, &u->st, promoted, r->n_picks, e->ts_ms) < 0)
        return -1;
    return 1;
}

/* What item it, just applied to u, calls for: sets it->intent (-1: no copy)
 * and, for a trigger that no longer holds, it->suppressed. Returns 0 or -1
 * (memory). */
static int svc_apply_item(svc *s, svc_user *u, svc_item *it) {
    const rd_kafka_message_t *m = it->msg;
    int r;
    it->intent = -1;
    if (it->kind == SVC_TRIGGER) {
        r = userstate_apply_trigger(&u->st, &s->up, it->trig.id, it->trig.ts_ms, m->partition,
                                    m->offset);
        if (r < 0) return -1;
        it->outcome = r;
        if (r == US_APPLIED && s->rules.enabled[it->trig.intent]) {
            it->intent = it->trig.intent;
            int why = intent_check_trigger(&s->rules, s->catalog, &u->st, &it->trig);
            if (why) it->suppressed = why + 1;
        }
        return 0;
    }
    const click_event *e = &it->click;
    const catalog_entry *ce =
        e->item_id && e->item_id[0] ? catalog_get(s->catalog, util_hash(e->item_id)) : NULL;
    uint64_t before = u->st.seq_total;
    int64_t prev_last_ms = u->st.last_ms;
    r = userstate_apply_click(&u->st, &s->up, e, ce ? ce->attr_hashes : NULL,
                              ce ? ce->item.n_attrs : 0, m->partition, m->offset);
    if (r < 0) return -1;
    it->outcome = r;
    if (u->st.seq_total != before) it->seq_pos = u->st.seq_total;
    /* A redelivered add to cart schedules its reminder again: the first
     * attempt's schedule may not have reached Redis. */
    if ((r == US_APPLIED || r == US_ALREADY_APPLIED) &&
        triggers_on_event(s->trig, u->user_id, m->partition, e, &u->st, r) < 0)
        return -1;
    if (r == US_APPLIED)
        it->intent = intent_of_event(&s->rules, s->catalog, &u->st, e, prev_last_ms);
    return 0;
}

/* Applies the user's items, in order, to u->st. A copy that is due moves the
 * user's last copy time. The affinity strategy makes it at once, from the
 * state as of its event; a copy the model will choose waits, with a snapshot
 * of what it needs as of its event, until svc_make_copies() has advanced
 * every user of the batch together. Returns 0 or -1 (memory). */
static int svc_apply_user(svc *s, svc_user *u) {
    u->seq_before = u->st.seq_total;
    for (svc_item *it = u->first; it; it = it->next) {
        const rd_kafka_message_t *m = it->msg;
        it->publish = 0;
        it->suppressed = 0;
        it->snap = -1;
        it->seq_pos = 0;
        if (it->kind == SVC_REACTION) {
            int r = userstate_apply_reaction(&u->st, &s->up, &it->rx, m->partition, m->offset);
            if (r < 0) return -1;
            it->outcome = r;
            int at = bandit_on_reaction(s->bandit, &u->st, &it->rx, r);
            if (at < 0) return -1;
            if (r == US_APPLIED) it->attribution = at + 1;
            continue;
        }
        if (svc_apply_item(s, u, it) < 0) return -1;
        const click_event *e = &it->click;
        int32_t pos = svc_pos(it);
        if (it->outcome == US_ALREADY_APPLIED) {
            /* Applied before a crash or a failed batch: if it caused a copy,
             * that copy is still in the outbox and goes out again, as is. */
            it->publish = userstate_outbox_find(&u->st, pos, m->offset) != NULL;
            if (bandit_copy_again(s->bandit, &u->st, pos, m->offset) < 0) return -1;
            continue;
        }
        if (it->outcome != US_APPLIED || it->intent < 0 || it->suppressed) continue;
        int why = policy_check(s->pol, &u->st, e->ts_ms);
        if (why == MET_SUPPRESSED_QUIET_HOURS && it->kind == SVC_TRIGGER) {
            /* A reminder or a price drop is not lost to the night: it goes
             * back to Redis, due when the quiet hours end. */
            if (triggers_defer(s->trig, &it->trig, m->partition,
                               policy_quiet_until(s->pol, u->st.locale, e->ts_ms)) < 0)
                return -1;
            continue;
        }
        if (why) {
            it->suppressed = why + 1;
            continue;
        }
        if (it->kind == SVC_TRIGGER &&
            policy_is_repeat(s->pol, &u->st, util_hash(it->trig.item_id), e->ts_ms)) {
            it->suppressed = MET_SUPPRESSED_REPEAT + 1;
            continue;
        }
        policy_count(s->pol, &u->st, e->ts_ms);
        it->segment = bandit_segment_of(&u->st);
        if (bandit_in_holdout(s->bandit, u->user_id)) {
            /* Withheld, but remembered like a copy: the conversions that
             * follow it measure what copy is worth. */
            it->suppressed = MET_SUPPRESSED_HOLDOUT + 1;
            uint64_t arm =
                bandit_holdout_arm(intent_name(it->intent), svc_locale(s, u->st.locale));
            if (bandit_copy_made(s->bandit, &u->st, pos, m->offset, e->ts_ms, arm, 0,
                                 it->segment, 1) < 0)
                return -1;
            continue;
        }
        /* A replay's warm-up before its range: state only, as live (the
         * holdout's records included), no copies */
        if (!svc_copy_wanted(s, m)) continue;
        strategy_params sp = svc_params(s, it, &u->st);
        strategy_result res;
        if (it->kind == SVC_TRIGGER) {
            /* A reminder or a price drop is about its item, whatever else
             * the strategies would pick. */
            if (intent_subject(s->catalog, &u->st, &sp, it->trig.item_id, &res) < 0) return -1;
            it->strategy = SVC_TRIGGERED;
        } else if (s->rec && it->seq_pos >= s->model_min_events) {
            svc_snap *sn = &s->snaps[s->n_snaps];
            if (userstate_copy_prefs(&sn->prefs, &u->st) < 0) return -1;
            it->snap = (long)s->n_snaps++;
            continue;
        } else {
            if (strategy_affinity(s->catalog, &u->st, &sp, &res) < 0) return -1;
            it->strategy = SVC_AFFINITY;
        }
        int made = svc_build_copy(s, it, &res, sp.locale);
        if (made < 0) return -1;
        it->publish = made;
    }
    return 0;
}

/* Advances the model state of every user that the batch appended events
 * to, leaving u->h with the state after each. Returns 0 or -1. */
static int svc_advance(svc *s) {
    size_t dim = (size_t)recommend_dim(s->rec), need = 0, nw = 0;
    for (size_t i = 0; i < s->n_users; i++)
        need += (s->users[i].st.seq_total - s->users[i].seq_before) * dim;
    if (need > s->h_cap) {
        float *h = realloc(s->h_arena, need * sizeof *h);
        if (!h) return -1;
        s->h_arena = h;
        s->h_cap = need;
    }
    size_t off = 0;
    for (size_t i = 0; i < s->n_users; i++) {
        svc_user *u = &s->users[i];
        uint64_t k = u->st.seq_total - u->seq_before;
        u->h = k ? s->h_arena + off : NULL;
        off += k * dim;
        if (k)
            s->work[nw++] = (recommend_work){u->user_id, u->part[US_TOPIC_CLICKSTREAM], &u->st,
                                              u->seq_before, u->h};
    }
    char err[512];
    if (recommend_advance(s->rec, s->catalog, s->work, nw, err, sizeof err) < 0) {
        log_error("service", "advancing model states: %s (affinity strategy for this batch)",
                  err);
        return -1;
    }
    return 0;
}

/* The model's user state after item it's event, when the model may choose
 * for it, else NULL. */
static const float *svc_model_state(const svc *s, const svc_item *it) {
    const svc_user *u = it->user;
    if (!u->h || !it->seq_pos || it->seq_pos < s->model_min_events) return NULL;
    const float *h = u->h + (it->seq_pos - u->seq_before - 1) * (uint64_t)recommend_dim(s->rec);
    return isnan(h[0]) ? NULL : h;
}

/* Makes the copies that wait for the model: advances the model states of
 * every user the batch appended events to, scores the waiting copies in one
 * batch, and renders each into its user's outbox. A model failure falls back
 * to the affinity strategy, from the same snapshots. */
static int svc_make_copies(svc *s) {
    if (!s->rec) return 0;
    int model_ok = svc_advance(s) == 0;
    if (!model_ok) recommend_clear(s->rec);
    size_t nq = 0;
    for (size_t i = 0; i < s->n_items; i++) {
        svc_item *it = &s->items[i];
        if (it->snap < 0) continue;
        svc_snap *sn = &s->snaps[it->snap];
        strategy_params sp = svc_params(s, it, &sn->prefs);
        const float *h = model_ok ? svc_model_state(s, it) : NULL;
        it->strategy = h ? SVC_TRANSFORMER : SVC_AFFINITY;
        if (h)
            s->queries[nq++] = (recommend_query){h, &sn->prefs, sp, &sn->res};
        else if (strategy_affinity(s->catalog, &sn->prefs, &sp, &sn->res) < 0)
            return -1;
    }
    char err[512];
    if (nq && recommend_pick(s->rec, s->catalog, s->queries, nq, err, sizeof err) < 0) {
        log_error("service", "scoring with the model: %s (affinity strategy instead)", err);
        for (size_t i = 0; i < s->n_items; i++) {
            svc_item *it = &s->items[i];
            if (it->snap < 0 || it->strategy != SVC_TRANSFORMER) continue;
            svc_snap *sn = &s->snaps[it->snap];
            strategy_params sp = svc_params(s, it, &sn->prefs);
            it->strategy = SVC_AFFINITY;
            if (strategy_affinity(s->catalog, &sn->prefs, &sp, &sn->res) < 0) return -1;
        }
    }
    for (size_t i = 0; i < s->n_items; i++) {
        svc_item *it = &s->items[i];
        if (it->snap < 0) continue;
        const svc_snap *sn = &s->snaps[it->snap];
        int made = svc_build_copy(s, it, &sn->res, svc_locale(s, sn->prefs.locale));
        if (made < 0) return -1;
        it->publish = made;
    }
    return 0;
}

/* ---- the batch -------------------------------------------------------------- */

static void svc_flight_drop_dead_letters(svc_flight *f) {
    for (size_t i = 0; i < f->n_dls; i++) {
        if (f->dls[i].hdrs) rd_kafka_headers_destroy(f->dls[i].hdrs);
        rd_kafka_message_destroy(f->dls[i].msg);
    }
    f->n_dls = 0;
}

static void svc_flight_reset(svc_flight *f, size_t n_locales) {
    f->phase = FLIGHT_FREE;
    f->n_spans = 0;
    memset(&f->dr, 0, sizeof f->dr);
    f->expected = 0;
    buf_reset(&f->pub);
    svc_flight_drop_dead_letters(f);
    f->n_polled = 0;
    memset(f->events, 0, sizeof f->events);
    memset(f->reactions, 0, sizeof f->reactions);
    memset(f->dead, 0, sizeof f->dead);
    f->skipped_dup = f->skipped_redelivered = f->triggers = 0;
    memset(f->suppressed, 0, sizeof f->suppressed);
    memset(f->attributed, 0, sizeof f->attributed);
    memset(f->by_intent, 0, sizeof f->by_intent);
    memset(f->copies, 0, n_locales * SVC__KINDS * sizeof *f->copies);
}

static svc_span *svc_span_for(svc *s, svc_flight *f, const rd_kafka_message_t *m) {
    int t = m->rkt == s->rkt_react ? 1 : m->rkt == s->rkt_trig ? 2 : 0;
    for (size_t i = 0; i < f->n_spans; i++)
        if (f->spans[i].topic == t && f->spans[i].partition == m->partition) return &f->spans[i];
    if (f->n_spans == f->cap_spans) {
        size_t cap = f->cap_spans ? f->cap_spans * 2 : 16;
        svc_span *v = realloc(f->spans, cap * sizeof *v);
        if (!v) return NULL;
        f->spans = v;
        f->cap_spans = cap;
    }
    svc_span *sp = &f->spans[f->n_spans++];
    *sp = (svc_span){t, m->partition, m->offset, m->offset};
    return sp;
}

static const char *svc_span_topic(const svc *s, const svc_span *sp) {
    return sp->topic == 2 ? s->t_trig : sp->topic ? s->t_react : s->t_click;
}

/* Frees the batch's messages, records and states. keep_states: return the
 * states to the cache (their writes are sent) instead of dropping them. */
static void svc_end_batch(svc *s, int keep_states) {
    for (size_t i = 0; i < s->n_users; i++) {
        svc_user *u = &s->users[i];
        if (keep_states && u->have_state)
            cache_put(s->cache, u->user_id, &u->st, u->part[US_TOPIC_CLICKSTREAM],
                      u->part[US_TOPIC_REACTIONS]);
        else
            userstate_clear(&u->st);
    }
    for (size_t i = 0; i < s->n_items; i++) {
        click_event_clear(&s->items[i].click);
        reaction_clear(&s->items[i].rx);
        trigger_clear(&s->items[i].trig);
        if (s->items[i].msg) rd_kafka_message_destroy(s->items[i].msg);
    }
    metrics_set(MET_STATE_CACHE_BYTES, (int64_t)cache_bytes(s->cache));
    s->n_items = s->n_users = 0;
    dict_clear(s->user_index);
}

/* Rewinds the consumer to the first offset, per partition, of every batch not
 * yet committed, so that they are fetched and processed again. */
static void svc_rewind(svc *s) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(16);
    for (int k = 0; k < 3; k++) {
        const svc_flight *f = &s->flight[k];
        for (size_t i = 0; i < f->n_spans; i++) {
            const svc_span *sp = &f->spans[i];
            const char *topic = svc_span_topic(s, sp);
            svc_assigned *as = svc_find_assigned(s, topic, sp->partition);
            if (!as) continue;
            as->eof = 0;
            rd_kafka_topic_partition_t *tp =
                rd_kafka_topic_partition_list_find(l, topic, sp->partition);
            if (!tp) {
                tp = rd_kafka_topic_partition_list_add(l, topic, sp->partition);
                tp->offset = sp->min;
            } else if (sp->min < tp->offset) {
                tp->offset = sp->min;
            }
        }
    }
    if (l->cnt) {
        rd_kafka_error_t *e = rd_kafka_seek_partitions(s->consumer, l, 10000);
        if (e) {
            log_error("service", "rewinding after a failed batch: %s", rd_kafka_error_string(e));
            rd_kafka_error_destroy(e);
        }
        for (int i = 0; i < l->cnt; i++)
            if (l->elems[i].err)
                log_error("service", "rewinding %s[%" PRId32 "]: %s", l->elems[i].topic,
                          l->elems[i].partition, rd_kafka_err2str(l->elems[i].err));
        svc_range_rewound(s, l);
    }
    rd_kafka_topic_partition_list_destroy(l);
}

/* Loads from Redis the states of the users that have none yet. */
static store_status svc_load_missing(svc *s, char *err, size_t errlen) {
    size_t n = 0;
    for (size_t i = 0; i < s->n_users; i++) {
        svc_user *u = &s->users[i];
        if (u->have_state) continue;
        userstate_init(&u->st);
        s->load_ids[n] = u->user_id;
        s->load_states[n++] = &u->st;
    }
    if (!n) return STORE_OK;
    store_status st = store_load(s->store, s->load_ids, s->load_states, n, err, errlen);
    metrics_inc(MET_REDIS_ROUND_TRIPS, 1);
    if (st != STORE_OK) return st;
    for (size_t i = 0; i < s->n_users; i++) {
        svc_user *u = &s->users[i];
        if (u->have_state) continue;
        u->have_state = 1;
        /* Copies left by an earlier owner or a crash: purge them once a
         * commit of ours covers their positions. */
        for (size_t k = 0; k < u->st.n_outbox; k++)
            svc_add_ref(s, u->user_id, u->st.outbox[k].partition, u->st.outbox[k].offset);
    }
    return STORE_OK;
}

static void svc_count_store_error(store_status st) {
    metrics_inc(st == STORE_RETRY ? MET_REDIS_ERR_CONNECTION : MET_REDIS_ERR_REPLY, 1);
}

/* Waits until every message of batch f is acknowledged or failed. */
static int svc_wait_acks(svc *s, svc_flight *f) {
    int64_t deadline = util_monotonic_us() + 180 * 1000000LL;
    while (f->dr.acked + f->dr.failed < f->expected) {
        rd_kafka_poll(s->producer, 5);
        if (util_monotonic_us() > deadline) {
            log_error("service", "no delivery report for %" PRIu64 " messages after 180 s",
                      f->expected - f->dr.acked - f->dr.failed);
            return -1;
        }
    }
    if (f->dr.failed) {
        log_error("service", "%" PRIu64 " messages of a batch were not delivered: %s",
                  f->dr.failed, rd_kafka_err2str(f->dr.last_err));
        metrics_inc(MET_KAFKA_ERR_PRODUCE, f->dr.failed);
        return -1;
    }
    return 0;
}

/* Replaces a producer that hit a fatal error (an idempotence sequence gap
 * that librdkafka cannot repair). What it had not delivered belongs to
 * batches that failed and will run again, so nothing is lost. The new one is
 * made first: when it cannot be (the broker away), the old one stays, still
 * marked fatal, so that every produce fails cleanly until a later renewal. */
static int svc_renew_producer(svc *s) {
    char err[512];
    log_warn("service", "recreating the producer after a fatal error");
    metrics_inc(MET_KAFKA_ERR_FATAL, 1);
    rd_kafka_purge(s->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(s->producer, 0);
    /* With a transactional id, its initialization fences the old producer
     * and aborts the transaction it left open. */
    rd_kafka_t *fresh = kafka_producer_new(s->cfg, &s->dr, s->eos ? s->txn_id : NULL, err,
                                           sizeof err);
    const char *outputs[] = {s->t_copy, s->t_dlq, s->t_trig};
    if (fresh && kafka_producer_prepare(fresh, outputs, 3, 10000, err, sizeof err) < 0) {
        rd_kafka_destroy(fresh);
        fresh = NULL;
    }
    if (!fresh) {
        log_error("service", "cannot recreate the producer: %s (trying again later)", err);
        return -1;
    }
    rd_kafka_destroy(s->producer);
    triggers_producer_gone(s->trig);
    memset(&s->dr, 0, sizeof s->dr); /* after the old one's last reports */
    s->producer = fresh;
    s->txn_open = 0;
    return 0;
}

/* ---- transactions (exactly_once) ------------------------------------------ */

/* Sorts a failed transactional call: a fatal error marks the producer for
 * renewal (svc_recover), or stops the service when another producer took our
 * transactional id, for then we are the zombie. Takes e. */
static void svc_txn_failed(svc *s, const char *what, rd_kafka_error_t *e) {
    log_error("service", "%s: %s%s", what, rd_kafka_error_string(e),
              rd_kafka_error_is_fatal(e) ? " (fatal)" : "");
    /* librdkafka raises fencing as a fatal error; a mere epoch bump (KIP-360)
     * is abortable and no reason to stop. */
    rd_kafka_resp_err_t code = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (rd_kafka_error_is_fatal(e)) {
        char why[512];
        code = rd_kafka_fatal_error(s->producer, why, sizeof why);
        s->dr.fatal = 1;
    }
    if (code == RD_KAFKA_RESP_ERR__FENCED || code == RD_KAFKA_RESP_ERR_PRODUCER_FENCED ||
        code == RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH) {
        log_error("service",
                  "another producer uses transactional id %s: stopping (give every instance "
                  "its own processing.transactional_id)",
                  s->txn_id);
        s->fenced = 1;
        svc_stop_requested = 1;
    }
    rd_kafka_error_destroy(e);
}

static int svc_txn_begin(svc *s) {
    if (s->txn_open) return 0;
    rd_kafka_error_t *e = rd_kafka_begin_transaction(s->producer);
    if (e) {
        svc_txn_failed(s, "beginning a transaction", e);
        return -1;
    }
    s->txn_open = 1;
    return 0;
}

/* Aborts the open transaction, if any: what it produced is never seen by
 * read_committed consumers. A producer that cannot abort is marked for
 * renewal, whose initialization aborts it. count: whether the metrics count
 * it (not a transaction that was opened for nothing). */
static void svc_txn_abort(svc *s, int count) {
    if (!s->txn_open) return;
    s->txn_open = 0;
    rd_kafka_error_t *e = rd_kafka_abort_transaction(s->producer, 30000);
    if (e) {
        if (!rd_kafka_error_is_fatal(e)) s->dr.fatal = 1;
        svc_txn_failed(s, "aborting a transaction", e);
    }
    if (count) metrics_inc(MET_KAFKA_TXN_ABORTED, 1);
}

/* Commits the open transaction with offsets l (NULL: none) as the consumer
 * group's, so that the input they cover and the output it caused become
 * visible together or not at all. Retriable errors are retried a few times.
 * Returns 0, or -1 after aborting (the caller reruns the input). */
static int svc_txn_commit(svc *s, const rd_kafka_topic_partition_list_t *l) {
    rd_kafka_error_t *e = NULL;
    for (int attempt = 0; l && l->cnt && attempt < 3; attempt++) {
        rd_kafka_consumer_group_metadata_t *md = rd_kafka_consumer_group_metadata(s->consumer);
        e = rd_kafka_send_offsets_to_transaction(s->producer, l, md, 30000);
        rd_kafka_consumer_group_metadata_destroy(md);
        if (!e || !rd_kafka_error_is_retriable(e)) break;
        log_warn("service", "sending offsets to the transaction: %s (retrying)",
                 rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
        e = NULL;
    }
    for (int attempt = 0; !e && attempt < 3; attempt++) {
        e = rd_kafka_commit_transaction(s->producer, 60000);
        if (!e) {
            s->txn_open = 0;
            metrics_inc(MET_KAFKA_TXN_COMMITTED, 1);
            return 0;
        }
        if (!rd_kafka_error_is_retriable(e)) break;
        log_warn("service", "committing a transaction: %s (retrying)", rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
        e = NULL;
    }
    metrics_inc(MET_KAFKA_ERR_COMMIT, 1);
    if (e) svc_txn_failed(s, "committing a transaction", e);
    svc_txn_abort(s, 1);
    return -1;
}

/* ---- committing ------------------------------------------------------------ */

/* The offsets after batch f's input, per partition. */
static rd_kafka_topic_partition_list_t *svc_offsets(svc *s, const svc_flight *f) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)f->n_spans);
    for (size_t i = 0; i < f->n_spans; i++)
        rd_kafka_topic_partition_list_add(l, svc_span_topic(s, &f->spans[i]),
                                          f->spans[i].partition)->offset = f->spans[i].max + 1;
    return l;
}

/* Offsets l are committed: what they cover is done for good. */
static void svc_offsets_committed(svc *s, const rd_kafka_topic_partition_list_t *l) {
    for (int i = 0; i < l->cnt; i++) {
        if (strcmp(l->elems[i].topic, s->t_click) == 0)
            svc_set_committed(s, l->elems[i].partition, l->elems[i].offset);
        else if (strcmp(l->elems[i].topic, s->t_trig) == 0)
            svc_set_committed(s, l->elems[i].partition + INTENT_TRIGGER_PARTITION_BASE,
                              l->elems[i].offset);
        if (s->range)
            range_done(s->range, svc_topic_kind(s, l->elems[i].topic), l->elems[i].partition,
                       l->elems[i].offset);
    }
}

/* Commits batch f's offsets, everything it produced being acknowledged
 * (at_least_once). Returns 0 or -1 (offsets stay uncommitted; a later commit
 * covers them, or they are processed again, harmlessly). */
static int svc_commit(svc *s, const svc_flight *f) {
    rd_kafka_topic_partition_list_t *l = svc_offsets(s, f);
    /* A dry run leaves no trace, not even in a group of its own. */
    rd_kafka_resp_err_t err = s->dry_run ? 0 : rd_kafka_commit(s->consumer, l, 0 /* sync */);
    if (err) {
        /* During a rebalance the coordinator refuses commits; the revoke
         * callback commits what is being given up. */
        log_warn("service", "commit: %s", rd_kafka_err2str(err));
        metrics_inc(MET_KAFKA_ERR_COMMIT, 1);
    } else {
        svc_offsets_committed(s, l);
    }
    rd_kafka_topic_partition_list_destroy(l);
    return err ? -1 : 0;
}

/* Commits batch f's transaction -- its dead letters, copies and offsets
 * (exactly_once). Returns 0, or -1 when it was aborted: f must run again. */
static int svc_commit_txn(svc *s, const svc_flight *f) {
    rd_kafka_topic_partition_list_t *l = svc_offsets(s, f);
    int rc = svc_txn_commit(s, l);
    if (rc == 0) svc_offsets_committed(s, l);
    rd_kafka_topic_partition_list_destroy(l);
    return rc;
}

/* Records what the staged batch did, for the metrics reported once it is
 * committed. */
static void svc_flight_tally(svc *s, svc_flight *f) {
    for (size_t i = 0; i < s->n_items; i++) {
        svc_item *it = &s->items[i];
        f->polled_us[f->n_polled++] = it->polled_us;
        if (it->kind == SVC_CLICK) f->events[it->click.type]++;
        else if (it->kind == SVC_REACTION) f->reactions[it->rx.type]++;
        else if (it->kind == SVC_TRIGGER) f->triggers++;
        else f->dead[it->dead]++;
        f->skipped_dup += it->outcome == US_DUPLICATE;
        f->skipped_redelivered += it->outcome == US_ALREADY_APPLIED;
        if (it->suppressed) f->suppressed[it->suppressed - 1 - MET_SUPPRESSED_MIN_INTERVAL]++;
        if (it->attribution) f->attributed[it->attribution - 1]++;
        if (it->publish && it->outcome == US_APPLIED && it->intent >= 0)
            f->by_intent[it->intent]++;
        if (it->publish && (it->kind == SVC_CLICK || it->kind == SVC_TRIGGER)) {
            const char *loc = svc_locale(s, it->user->st.locale);
            int kind = it->outcome == US_ALREADY_APPLIED ? SVC_REPUBLISHED : it->strategy;
            for (size_t k = 0; k < s->n_locales; k++)
                if (s->locales[k] == loc) f->copies[k * SVC__KINDS + (size_t)kind]++;
        }
    }
}

static void svc_flight_report(svc *s, const svc_flight *f, int64_t now_us) {
    if (!s->first_poll_us && f->n_polled) s->first_poll_us = f->polled_us[0];
    s->last_commit_us = now_us;
    for (size_t i = 0; i < f->n_polled; i++)
        metrics_observe_processing((double)(now_us - f->polled_us[i]) / 1e6, 1);
    for (int t = 0; t < EV__COUNT; t++) {
        metrics_inc_event((event_type)t, f->events[t]);
        s->total_events += f->events[t];
    }
    for (int t = 0; t < RX__COUNT; t++) {
        metrics_inc_reaction((reaction_type)t, f->reactions[t]);
        s->total_reactions += f->reactions[t];
    }
    for (int k = 0; k < CODEC__COUNT; k++) {
        metrics_inc_dead_letter((codec_status)k, f->dead[k]);
        s->total_dead += f->dead[k];
    }
    s->total_triggers += f->triggers;
    metrics_inc(MET_SKIPPED_DUPLICATE, f->skipped_dup);
    metrics_inc(MET_SKIPPED_REDELIVERED, f->skipped_redelivered);
    for (int k = 0; k < SVC_N_SUPPRESSED; k++)
        metrics_inc((metric_id)(MET_SUPPRESSED_MIN_INTERVAL + k), f->suppressed[k]);
    for (int k = 0; k < BANDIT__ATTRIBUTIONS; k++)
        metrics_inc((metric_id)(MET_REACTIONS_ATTRIBUTED + k), f->attributed[k]);
    for (int k = 0; k < INTENT__COUNT; k++)
        metrics_inc((metric_id)(MET_COPIES_RECOMMENDATION + k), f->by_intent[k]);
    for (size_t k = 0; k < s->n_locales; k++)
        for (int kind = 0; kind < SVC__KINDS; kind++) {
            uint64_t n = f->copies[k * SVC__KINDS + (size_t)kind];
            if (!n) continue; /* no empty series for kinds never seen */
            metrics_inc_copies(s->locales[k], svc_kind_names[kind], n);
            s->total_copies += n;
        }
    metrics_observe_batch((double)(now_us - f->t0) / 1e6);
    metrics_inc(MET_BATCHES, 1);
}

static int svc_complete(svc *s, svc_flight *f);

/* WRITING -> ACKING: reads the replies of f's Redis writes and, when every
 * one went through, produces f's copies. Returns 0, or -1 when f (and the
 * batches after it, whose states built on f's) must run again. */
static int svc_confirm(svc *s, svc_flight *f) {
    char err[512];
    size_t conflicts;
    store_status st = store_write_wait(s->store, &conflicts, err, sizeof err);
    if (st != STORE_OK) {
        svc_count_store_error(st);
        atomic_store(&s->redis_ok, 0);
        log_error("service", "writing users' state: %s", err);
        return -1;
    }
    svc_purges_sent_done(s); /* unconditional HDELs and ZREMs: conflicts do not stop them */
    if (conflicts) {
        /* Another instance wrote some of these users since we read them (it
         * owned their partition a moment ago, or still thinks it does). */
        metrics_inc(MET_REDIS_ERR_CONFLICT, conflicts);
        log_warn("service", "%zu users were changed by another instance; re-reading them",
                 conflicts);
        return -1;
    }
    /* The batch's states are durable: now its bandit counts may go
     * (acknowledged before the commit, in svc_complete). */
    if (bandit_send(s->bandit, err, sizeof err) < 0) {
        metrics_inc(MET_REDIS_ERR_CONNECTION, 1);
        atomic_store(&s->redis_ok, 0);
        log_error("service", "updating the bandit statistics: %s", err);
        return -1;
    }
    atomic_store(&s->redis_ok, 1);
    if (s->eos && svc_txn_begin(s) < 0) return -1;
    if (svc_produce_dead_letters(s, f) < 0) return -1;
    size_t pos = 0;
    const uint8_t *p = (const uint8_t *)f->pub.p;
    while (pos < f->pub.len) {
        uint32_t klen, vlen;
        buf_get_u32le(p, f->pub.len, &pos, &klen);
        const char *key = (const char *)p + pos;
        pos += klen;
        buf_get_u32le(p, f->pub.len, &pos, &vlen);
        if (s->dry_run) {
            s->dry_run(s->ud, s->t_copy, key, klen, p + pos, vlen);
            pos += vlen;
            continue;
        }
        if (kafka_produce(s->producer, s->t_copy, key, klen, p + pos, vlen, NULL, &f->dr, err,
                          sizeof err) < 0) {
            log_error("service", "publishing copies: %s", err);
            return -1;
        }
        pos += vlen;
        f->expected++;
    }
    f->phase = FLIGHT_ACKING;
    /* A transaction is committed at once: only one can be open, and the
     * next batch's output must not join this one's offsets. */
    return s->eos ? svc_complete(s, f) : 0;
}

/* ACKING -> FREE: waits for f's acks (they had a batch's time to arrive),
 * commits its offsets and reports it. Returns 0, or -1 when a message was not
 * delivered (the caller rewinds). */
static int svc_complete(svc *s, svc_flight *f) {
    /* A transaction's commit waits for its acks itself. */
    if (!s->eos && svc_wait_acks(s, f) < 0) return -1;
    char err[512];
    if (bandit_wait(s->bandit, err, sizeof err) < 0) {
        metrics_inc(MET_REDIS_ERR_CONNECTION, 1);
        atomic_store(&s->redis_ok, 0);
        log_error("service", "updating the bandit statistics: %s", err);
        return -1;
    }
    int committed;
    if (s->eos) {
        if (svc_commit_txn(s, f) < 0) return -1;
        committed = 1;
    } else {
        committed = svc_commit(s, f) == 0;
    }
    svc_flight_report(s, f, util_monotonic_us());
    f->phase = FLIGHT_FREE;
    if (committed) svc_refs_committed(s);
    atomic_store(&s->kafka_ok, 1);
    return 0;
}

/* Decodes the collected batch into f: dead letters go out at once, the
 * rest is grouped by user with their cached states. Returns 0 or -1. */
static int svc_decode_batch(svc *s, svc_flight *f, char *err, size_t errlen) {
    f->t0 = util_monotonic_us();
    for (size_t i = 0; i < s->n_items; i++) {
        svc_item *it = &s->items[i];
        svc_span *sp = svc_span_for(s, f, it->msg);
        if (!sp) return util_err(err, errlen, "out of memory");
        if (it->msg->offset < sp->min) sp->min = it->msg->offset;
        if (it->msg->offset > sp->max) sp->max = it->msg->offset;
        if (svc_decode(s, f, it) < 0) return util_err(err, errlen, "dead-lettering failed");
        if (it->kind == SVC_DEAD) continue;
        const char *uid = it->kind == SVC_REACTION ? it->rx.user_id : it->click.user_id;
        svc_user *u = dict_get(s->user_index, uid);
        if (!u) {
            u = &s->users[s->n_users++];
            memset(u, 0, sizeof *u);
            u->user_id = uid;
            u->part[0] = u->part[1] = -1;
            if (dict_set(s->user_index, uid, u) < 0) return util_err(err, errlen, "out of memory");
        }
        /* A trigger tags no partition: its user's events are elsewhere. */
        if (it->kind != SVC_TRIGGER)
            u->part[it->kind == SVC_REACTION ? US_TOPIC_REACTIONS : US_TOPIC_CLICKSTREAM] =
                it->msg->partition;
        it->user = u;
        if (u->last) u->last->next = it; else u->first = it;
        u->last = it;
    }
    return 0;
}

/* Applies the items of every user whose state is at hand and not applied
 * yet. Returns 0 or -1 (out of memory). */
static int svc_apply_ready(svc *s) {
    for (size_t i = 0; i < s->n_users; i++) {
        svc_user *u = &s->users[i];
        if (!u->have_state || u->applied) continue;
        if (svc_apply_user(s, u) < 0) return -1;
        u->applied = 1;
    }
    return 0;
}

/* Sends the batch's writes (their replies are read by svc_confirm, after the
 * next batch is decoded) and keeps the copies to publish. Returns 0, or -1
 * with err. */
static int svc_send(svc *s, svc_flight *f, char *err, size_t errlen) {
    size_t nw = 0;
    for (size_t i = 0; i < s->n_users; i++)
        if (s->users[i].st.dirty)
            s->writes[nw++] = (store_write){.user_id = s->users[i].user_id, .state = &s->users[i].st};
    /* What to publish once the writes are confirmed: new copies, and the
     * outbox copies of redelivered events. Kept apart from the states,
     * which move on to the cache and the next batch. */
    for (size_t i = 0; i < s->n_items; i++) {
        svc_item *it = &s->items[i];
        if (!it->publish) continue;
        const us_outbox *o = userstate_outbox_find(&it->user->st, svc_pos(it), it->msg->offset);
        if (!o) continue;
        size_t klen = strlen(it->user->user_id);
        if (buf_put_u32le(&f->pub, (uint32_t)klen) ||
            buf_append(&f->pub, it->user->user_id, klen) ||
            buf_put_u32le(&f->pub, (uint32_t)o->msg.len) ||
            buf_append(&f->pub, o->msg.p, o->msg.len))
            return util_err(err, errlen, "out of memory");
        if (it->outcome == US_APPLIED)
            svc_add_ref(s, it->user->user_id, svc_pos(it), it->msg->offset);
    }
    store_outbox_ref *purges = svc_purge_views(s);
    size_t np = purges ? s->n_purges : 0;
    store_status st = store_write_send(s->store, s->writes, nw, purges, np, err, errlen);
    free(purges);
    metrics_inc(MET_REDIS_ROUND_TRIPS, 1);
    if (st != STORE_OK) {
        svc_count_store_error(st);
        atomic_store(&s->redis_ok, 0);
        return -1;
    }
    /* Kept queued until the write is confirmed: if it fails, they go again
     * with a later one (deleting twice is harmless). Forgetting them here left
     * the copies of users who never came back in Redis after an outage until
     * the next rebalance (tests/integration/test_faults.py). */
    s->n_purges_sent = np;
    /* The batch's bandit counts follow its writes: sent once they are
     * confirmed (svc_confirm); the markers make a retried batch harmless. */
    if (bandit_seal(s->bandit) < 0) return util_err(err, errlen, "bandit: too many batches");
    svc_flight_tally(s, f);
    f->phase = FLIGHT_WRITING;
    return 0;
}

/* After a failure: nothing may stay in flight, the consumer goes back to the
 * first offsets of every batch not committed, and the cached states, which
 * may hold changes whose writes did not go through, are forgotten. */
static void svc_recover(svc *s) {
    if (store_write_pending(s->store)) {
        char why[256];
        size_t conflicts;
        store_write_wait(s->store, &conflicts, why, sizeof why);
    }
    s->n_purges_sent = 0; /* perhaps not done: they go again */
    if (s->eos) svc_txn_abort(s, 1); /* before anything else is produced */
    int fatal = s->dr.fatal;
    for (int k = 0; k < 3; k++) fatal |= s->flight[k].dr.fatal;
    if (s->fenced) {
        atomic_store(&s->kafka_ok, 0); /* stopping: a producer of ours must not come back */
    } else if (fatal) {
        if (svc_renew_producer(s) < 0) atomic_store(&s->kafka_ok, 0);
    } else if (!s->eos) {
        rd_kafka_flush(s->producer, 30000);
    }
    bandit_discard(s->bandit);
    store_unstage(s->store);
    svc_rewind(s);
    svc_end_batch(s, 0);
    for (int k = 0; k < 3; k++) svc_flight_reset(&s->flight[k], s->n_locales);
    cache_clear(s->cache);
    if (s->rec) recommend_clear(s->rec);
    s->backoff_ms = s->backoff_ms ? s->backoff_ms * 2 : 100;
    if (s->backoff_ms > 5000) s->backoff_ms = 5000;
}

/* The flight in phase `phase` that is oldest, or NULL. */
static svc_flight *svc_oldest(svc *s, int phase) {
    svc_flight *best = NULL;
    for (int k = 0; k < 3; k++)
        if (s->flight[k].phase == phase && (!best || s->flight[k].seq < best->seq))
            best = &s->flight[k];
    return best;
}

/* Processes the collected batch, overlapping each round trip with work:
 *
 *   decode this batch        while Redis executes the previous batch's writes
 *   apply its cached users   (states built on the previous batch's, optimistic)
 *   confirm the previous batch's writes, produce its copies
 *   load and apply the users not cached
 *   advance the model states, make the copies that are due
 *   complete the batch before (its acks arrived meanwhile), commit it
 *   send this batch's writes
 *
 * Returns 0, or -1 when something failed and the consumer was rewound. */
static int svc_process_batch(svc *s) {
    if (!s->n_items) return 0;
    char err[512] = "";
    svc_flight *f = &s->flight[s->batches % 3];
    svc_flight_reset(f, s->n_locales);
    f->seq = s->batches;
    size_t n = s->n_items;
    s->n_snaps = 0;
    svc_flight *w = svc_oldest(s, FLIGHT_WRITING), *a = svc_oldest(s, FLIGHT_ACKING);
    if (svc_decode_batch(s, f, err, sizeof err) < 0) goto fail;
    for (size_t i = 0; i < s->n_users; i++) {
        svc_user *u = &s->users[i];
        u->have_state = cache_take(s->cache, u->user_id, &u->st);
        metrics_inc(u->have_state ? MET_STATE_CACHE_HIT : MET_STATE_CACHE_MISS, 1);
    }
    if (svc_apply_ready(s) < 0) goto oom;
    if (w && svc_confirm(s, w) < 0) goto fail_quiet;
    store_status st = svc_load_missing(s, err, sizeof err);
    if (st != STORE_OK) {
        svc_count_store_error(st);
        atomic_store(&s->redis_ok, 0);
        goto fail;
    }
    if (svc_apply_ready(s) < 0) goto oom;
    if (svc_make_copies(s) < 0) goto oom;
    if (a && svc_complete(s, a) < 0) goto fail_quiet;
    if (svc_send(s, f, err, sizeof err) < 0) goto fail;
    svc_end_batch(s, 1);
    s->batches++;
    s->backoff_ms = 0;
    return 0;
oom:
    util_err(err, sizeof err, "out of memory");
fail:
    log_error("service", "batch of %zu messages failed, will retry: %s", n, err);
fail_quiet:
    f->phase = FLIGHT_WRITING; /* so that its spans are rewound too */
    svc_recover(s);
    return -1;
}

/* Completes every batch in flight, oldest first (when idle, before a
 * rebalance takes partitions away, at shutdown). Returns 0 or -1. */
static int svc_settle(svc *s) {
    for (;;) {
        /* An ACKING batch is always older than a WRITING one. */
        svc_flight *f = svc_oldest(s, FLIGHT_ACKING);
        if (!f) f = svc_oldest(s, FLIGHT_WRITING);
        if (!f) return 0;
        if ((f->phase == FLIGHT_WRITING ? svc_confirm(s, f) : svc_complete(s, f)) < 0) {
            svc_recover(s);
            return -1;
        }
    }
}

static int svc_in_flight(const svc *s) {
    for (int k = 0; k < 3; k++)
        if (s->flight[k].phase != FLIGHT_FREE) return 1;
    return 0;
}

/* ---- rebalances ------------------------------------------------------------- */

static void svc_outbox_found(const char *user_id, size_t user_len, int64_t offset, void *ud) {
    void **args = ud;
    svc *s = args[0];
    int32_t partition = *(int32_t *)args[1];
    svc_ref_push(&s->refs, &s->n_refs, &s->cap_refs, user_id, user_len, partition, offset);
}

/* For newly assigned clickstream partitions: learns their committed offsets
 * and queues the deletion of outbox copies that a previous owner left behind
 * below them (it crashed between its commit and its deletions). */
static void svc_sweep_outbox(svc *s, rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *parts) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(parts->cnt);
    for (int i = 0; i < parts->cnt; i++)
        if (strcmp(parts->elems[i].topic, s->t_click) == 0 ||
            strcmp(parts->elems[i].topic, s->t_trig) == 0)
            rd_kafka_topic_partition_list_add(l, parts->elems[i].topic, parts->elems[i].partition);
    rd_kafka_resp_err_t err = l->cnt ? rd_kafka_committed(rk, l, 10000) : 0;
    if (err) log_warn("service", "fetching committed offsets: %s", rd_kafka_err2str(err));
    for (int i = 0; !err && i < l->cnt; i++) {
        /* Copies caused by triggers are kept at positions of their own. */
        int32_t p = l->elems[i].partition +
                    (strcmp(l->elems[i].topic, s->t_trig) ? 0 : INTENT_TRIGGER_PARTITION_BASE);
        int64_t committed = l->elems[i].offset;
        if (l->elems[i].err || committed < 0) continue;
        svc_set_committed(s, p, committed);
        char why[512];
        void *args[2] = {s, &p};
        if (store_outbox_scan(s->store, p, committed, svc_outbox_found, args, why, sizeof why))
            log_warn("service", "reading the outbox index of partition %" PRId32 ": %s", p, why);
    }
    rd_kafka_topic_partition_list_destroy(l);
    svc_refs_committed(s);
}

static void svc_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                             rd_kafka_topic_partition_list_t *parts, void *opaque) {
    svc *s = opaque;
    int cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        for (int i = 0; i < parts->cnt; i++)
            svc_add_assigned(s, parts->elems[i].topic, parts->elems[i].partition);
        log_info("service", "assigned %d partitions (now %zu)", parts->cnt, s->n_assigned);
        svc_settle(s); /* the sweep needs Redis to itself */
        svc_sweep_outbox(s, rk, parts);
        rd_kafka_error_t *e = NULL;
        if (cooperative)
            e = rd_kafka_incremental_assign(rk, parts);
        else
            rd_kafka_assign(rk, parts);
        if (e) {
            log_error("service", "incremental assign: %s", rd_kafka_error_string(e));
            rd_kafka_error_destroy(e);
        }
    } else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        int lost = rd_kafka_assignment_lost(rk);
        log_info("service", "%s %d partitions", lost ? "lost" : "revoked", parts->cnt);
        /* Finish what was polled from them, and commit it, before they go:
         * this callback is the one place where committing during a
         * cooperative rebalance is safe with librdkafka 2.0. */
        if (lost) {
            /* Someone else owns them already: committing would fail, and the
             * batches will be reprocessed by the new owner anyway. */
            if (s->n_items || svc_in_flight(s)) svc_recover(s);
        } else {
            if (s->n_items) svc_process_batch(s);
            svc_settle(s);
        }
        svc_flush_purges(s);
        for (int i = 0; i < parts->cnt; i++) {
            const char *topic = parts->elems[i].topic;
            int32_t p = parts->elems[i].partition;
            if (strcmp(topic, s->t_trig) != 0) /* no cached state is tagged with it */
                cache_drop_partition(s->cache, svc_topic_kind(s, topic), p);
            if (s->rec && strcmp(topic, s->t_click) == 0) recommend_drop_partition(s->rec, p);
            if (strcmp(topic, s->t_click) == 0) svc_refs_drop_partition(s, p);
            if (strcmp(topic, s->t_trig) == 0)
                svc_refs_drop_partition(s, p + INTENT_TRIGGER_PARTITION_BASE);
            metrics_drop_lag(topic, p);
            svc_remove_assigned(s, topic, p);
        }
        if (cooperative) {
            rd_kafka_error_t *e = rd_kafka_incremental_unassign(rk, parts);
            if (e) {
                log_error("service", "incremental unassign: %s", rd_kafka_error_string(e));
                rd_kafka_error_destroy(e);
            }
        } else {
            rd_kafka_assign(rk, NULL);
        }
    } else {
        log_error("service", "rebalance error: %s", rd_kafka_err2str(err));
        rd_kafka_assign(rk, NULL);
    }
    metrics_set(MET_ASSIGNED_PARTITIONS, (int64_t)s->n_assigned);
}

/* ---- catalog ---------------------------------------------------------------- */

/* Applies one catalog message: an item, or a tombstone (null value). */
static void svc_catalog_apply(svc *s, rd_kafka_message_t *m) {
    if (m->err) {
        if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
            log_warn("service", "catalog consumer: %s", rd_kafka_message_errstr(m));
        return;
    }
    if (!m->payload) {
        if (m->key_len) {
            char *id = strndup(m->key, m->key_len);
            if (id) catalog_remove(s->catalog, id);
            free(id);
        }
    } else {
        catalog_item item = {0};
        char why[512] = "";
        codec_status st = codec_decode_catalog(s->codec, m->payload, m->len, &item, why,
                                               sizeof why);
        if (st != CODEC_OK) {
            /* Not dead-lettered: every instance reads the whole catalog at
             * every start, so each would dead-letter it again. The message
             * itself stays in the catalog topic. */
            log_warn("service", "catalog %s[%" PRId32 "]@%" PRId64 " ignored: %s: %s",
                     rd_kafka_topic_name(m->rkt), m->partition, m->offset,
                     codec_status_name(st), why);
            metrics_inc(MET_KAFKA_ERR_CONSUME, 1);
            return;
        }
        /* What a price drop is measured against, before the upsert frees it. */
        const catalog_entry *prev = catalog_get(s->catalog, util_hash(item.item_id));
        catalog_item before = {0};
        if (prev && prev->item.has_price && prev->item.currency) {
            before = (catalog_item){.item_id = item.item_id, .has_price = 1,
                                    .price_micros = prev->item.price_micros,
                                    .currency = strdup(prev->item.currency)};
        }
        uint64_t hash = util_hash(item.item_id);
        if (catalog_upsert(s->catalog, &item) < 0) {
            log_error("service", "catalog: out of memory");
            catalog_item_clear(&item);
            free(before.currency);
            return;
        }
        const catalog_entry *now = catalog_get(s->catalog, hash);
        if (before.currency && now &&
            triggers_on_catalog(s->trig, &before, &now->item, m->partition, m->offset, why,
                                sizeof why) < 0)
            log_error("service", "price drop of %s not fanned out (again at the next start): %s",
                      now->item.item_id, why);
        free(before.currency);
    }
    metrics_inc(MET_CATALOG_UPDATES, 1);
}

static void svc_catalog_poll(svc *s, int max) {
    for (int i = 0; i < max; i++) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(s->catalog_consumer, 0);
        if (!m) break;
        svc_catalog_apply(s, m);
        rd_kafka_message_destroy(m);
    }
    metrics_set(MET_CATALOG_ITEMS, (int64_t)catalog_count(s->catalog));
}

/* Assigns every catalog partition from the beginning and reads up to the
 * end, so that the first copies are made with the whole catalog. */
static int svc_catalog_start(svc *s, char *errstr, size_t errlen) {
    int n = kafka_partition_count(s->catalog_consumer, s->t_catalog, 10000, errstr, errlen);
    if (n < 0) return -1;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
    for (int p = 0; p < n; p++)
        rd_kafka_topic_partition_list_add(l, s->t_catalog, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_resp_err_t err = rd_kafka_assign(s->catalog_consumer, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (err) return util_err(errstr, errlen, "assigning %s: %s", s->t_catalog, rd_kafka_err2str(err));
    char *eof = calloc((size_t)n, 1);
    if (!eof) return util_err(errstr, errlen, "out of memory");
    int remaining = n;
    int64_t deadline = util_monotonic_us() + 120 * 1000000LL;
    while (remaining > 0 && !svc_stop_requested) {
        if (util_monotonic_us() > deadline) {
            free(eof);
            return util_err(errstr, errlen, "reading %s to its end took over 120 s", s->t_catalog);
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(s->catalog_consumer, 200);
        if (!m) continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF && m->partition < n && !eof[m->partition]) {
            eof[m->partition] = 1;
            remaining--;
        }
        svc_catalog_apply(s, m);
        rd_kafka_message_destroy(m);
    }
    free(eof);
    metrics_set(MET_CATALOG_ITEMS, (int64_t)catalog_count(s->catalog));
    log_info("service", "catalog loaded: %zu items", catalog_count(s->catalog));
    return 0;
}

/* ---- control messages ------------------------------------------------------- */

/* Applies one control message (privacy.h): once the batches in flight are
 * settled -- so that no write of the user is pending -- drops what this
 * instance holds of the user in memory and applies the request to Redis.
 * Every instance does so; the Redis side is idempotent. */
static void svc_control_apply(svc *s, rd_kafka_message_t *m) {
    if (m->err) {
        if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
            log_warn("service", "control consumer: %s", rd_kafka_message_errstr(m));
        return;
    }
    privacy_request req = {0};
    char err[512];
    if (privacy_parse(m->payload, m->len, &req, err, sizeof err) < 0) {
        log_warn("service", "control %s[%" PRId32 "]@%" PRId64 " ignored: %s",
                 rd_kafka_topic_name(m->rkt), m->partition, m->offset, err);
        metrics_inc(MET_CONTROL_INVALID, 1);
        return;
    }
    svc_settle(s);
    user_state st;
    userstate_init(&st);
    if (cache_take(s->cache, req.user_id, &st)) userstate_clear(&st);
    if (s->rec) recommend_forget(s->rec, req.user_id);
    if (privacy_apply(s->priv, &req, err, sizeof err) < 0)
        log_error("service", "%s of user %s not applied to Redis: %s (`copystream %s` does it)",
                  privacy_action_name(req.action), req.user_id, err,
                  req.action == PRIVACY_FORGET ? "forget" : "consent");
    else
        log_info("service", "%s of user %s applied", privacy_action_name(req.action), req.user_id);
    metrics_inc((metric_id)(MET_CONTROL_FORGET + req.action), 1);
    privacy_request_clear(&req);
}

static void svc_control_poll(svc *s) {
    for (int i = 0; i < 100; i++) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(s->control_consumer, 0);
        if (!m) break;
        svc_control_apply(s, m);
        rd_kafka_message_destroy(m);
    }
}

/* Follows the control topic from its end as it is now: a request published
 * before this instance started is not this instance's to apply (it holds
 * nothing of the user yet, and replaying an old forget would erase what the
 * user did since). The end is read now, not left to librdkafka, so that a
 * request published right after start-up is not skipped. */
static int svc_control_start(svc *s, char *errstr, size_t errlen) {
    int n = kafka_partition_count(s->control_consumer, s->t_control, 10000, errstr, errlen);
    if (n < 0) return -1;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
    for (int p = 0; p < n; p++) {
        int64_t lo, hi, deadline = util_monotonic_us() + 10 * 1000000LL;
        rd_kafka_resp_err_t e;
        /* Right after `copystream topics` a partition's leader may be named
         * before it serves: that passes. */
        while ((e = rd_kafka_query_watermark_offsets(s->control_consumer, s->t_control, p, &lo,
                                                     &hi, 10000)) &&
               (e == RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION ||
                e == RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE ||
                e == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) &&
               util_monotonic_us() < deadline)
            usleep(100 * 1000);
        if (e) {
            rd_kafka_topic_partition_list_destroy(l);
            return util_err(errstr, errlen, "%s[%d]: %s", s->t_control, p, rd_kafka_err2str(e));
        }
        rd_kafka_topic_partition_list_add(l, s->t_control, p)->offset = hi;
    }
    rd_kafka_resp_err_t err = rd_kafka_assign(s->control_consumer, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (err) return util_err(errstr, errlen, "assigning %s: %s", s->t_control, rd_kafka_err2str(err));
    return 0;
}

/* ---- the loop ----------------------------------------------------------------- */

/* The partitions assigned now, as a list for pause and resume. */
static rd_kafka_topic_partition_list_t *svc_assignment(const svc *s) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)s->n_assigned + 1);
    for (size_t i = 0; i < s->n_assigned; i++)
        rd_kafka_topic_partition_list_add(l, s->assigned[i].topic, s->assigned[i].partition);
    return l;
}

/* Backpressure after a failed batch (Redis down or slow, the broker away):
 * the batch was rewound (svc_recover), and the assignment stops fetching
 * for the backoff, so that nothing piles up in memory while the loop keeps
 * polling -- serving rebalances, signals and the group's liveness. Every
 * partition is paused, for they all share the one Redis. */
static void svc_pause(svc *s) {
    if (!s->n_assigned) return;
    rd_kafka_topic_partition_list_t *l = svc_assignment(s);
    rd_kafka_resp_err_t err = rd_kafka_pause_partitions(s->consumer, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (err) log_warn("service", "pausing the assignment: %s", rd_kafka_err2str(err));
    s->paused_until_us = util_monotonic_us() + (int64_t)s->backoff_ms * 1000;
    metrics_set(MET_PAUSED, 1);
    log_warn("service", "paused %zu partitions for %d ms before retrying", s->n_assigned,
             s->backoff_ms);
}

static void svc_resume_if_due(svc *s) {
    if (!s->paused_until_us || util_monotonic_us() < s->paused_until_us) return;
    s->paused_until_us = 0;
    metrics_set(MET_PAUSED, 0);
    /* Partitions assigned meanwhile were never paused; resuming them is a no-op. */
    rd_kafka_topic_partition_list_t *l = svc_assignment(s);
    rd_kafka_resp_err_t err = rd_kafka_resume_partitions(s->consumer, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (err) log_warn("service", "resuming the assignment: %s", rd_kafka_err2str(err));
}

/* Polls until the batch is full or batch_wait_ms has passed since its first
 * message. Returns the number of items collected. */
static size_t svc_collect(svc *s) {
    int64_t deadline = 0;
    /* With batches in flight, do not sit waiting for more input: if none is
     * ready, return so the loop settles them and their copies go out. */
    int idle_timeout = svc_in_flight(s) ? 2 : 100;
    while (s->n_items < s->batch_max && !svc_stop_requested) {
        int timeout = idle_timeout;
        if (s->n_items) {
            int64_t left = (deadline - util_monotonic_us()) / 1000;
            if (left <= 0) break;
            timeout = (int)left;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(s->consumer, timeout);
        if (!m) {
            if (!s->n_items) break;
            continue;
        }
        if (m->err) {
            if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                svc_assigned *a = svc_find_assigned(s, rd_kafka_topic_name(m->rkt), m->partition);
                if (a) a->eof = 1;
                if (s->range) range_eof(s->range, svc_msg_kind(s, m), m->partition);
            } else {
                log_warn("service", "consumer: %s", rd_kafka_message_errstr(m));
                metrics_inc(MET_KAFKA_ERR_CONSUME, 1);
            }
            rd_kafka_message_destroy(m);
            continue;
        }
        if (svc_range_drop(s, m)) continue;
        int64_t now = util_monotonic_us();
        if (!s->n_items) deadline = now + (int64_t)s->batch_wait_ms * 1000;
        svc_item *it = &s->items[s->n_items++];
        memset(it, 0, sizeof *it);
        it->snap = -1;
        it->msg = m;
        it->polled_us = now;
        s->last_activity_us = now;
    }
    return s->n_items;
}

static void svc_update_lag(svc *s) {
    for (size_t i = 0; i < s->n_assigned; i++) {
        svc_assigned *a = &s->assigned[i];
        int64_t lo, hi;
        if (rd_kafka_get_watermark_offsets(s->consumer, a->topic, a->partition, &lo, &hi))
            continue;
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, a->topic, a->partition);
        if (!rd_kafka_position(s->consumer, l) && l->elems[0].offset >= 0 && hi >= 0)
            metrics_set_lag(a->topic, a->partition, hi - l->elems[0].offset);
        else if (hi >= 0 && a->eof)
            metrics_set_lag(a->topic, a->partition, 0);
        rd_kafka_topic_partition_list_destroy(l);
    }
}

/* Idle: nothing polled for a while and every assigned partition has
 * reported its end. A flag is not cleared when messages follow an EOF:
 * librdkafka reports the end again once they are consumed, so after a quiet
 * period a set flag is current; only a rewind makes one stale, and rewinding
 * clears it. */
static int svc_idle(const svc *s) {
    if (!s->n_assigned) return 0;
    for (size_t i = 0; i < s->n_assigned; i++)
        if (!s->assigned[i].eof) return 0;
    return 1;
}

/* Has the model file changed since it was last looked at? Remembers what
 * it saw. */
static int svc_model_file_changed(svc *s) {
    struct stat sb;
    if (stat(s->model_path, &sb) < 0) return 0; /* being replaced; look again later */
    int changed = sb.st_mtim.tv_sec != s->model_mtime.tv_sec ||
                  sb.st_mtim.tv_nsec != s->model_mtime.tv_nsec || sb.st_size != s->model_size;
    s->model_mtime = sb.st_mtim;
    s->model_size = sb.st_size;
    return changed;
}

/* Loads a new model at a batch boundary: on SIGHUP, or when the file
 * changed. A file that cannot be loaded is reported; the current model
 * stays. */
static void svc_maybe_reload(svc *s) {
    if (!s->rec) return;
    int64_t now = util_monotonic_us();
    int due = svc_reload_requested;
    if (!due && s->reload_check_us && now - s->last_reload_check_us >= s->reload_check_us) {
        s->last_reload_check_us = now;
        due = svc_model_file_changed(s);
    }
    if (!due) return;
    svc_reload_requested = 0;
    svc_model_file_changed(s);
    char err[512];
    if (recommend_reload(s->rec, s->model_path, err, sizeof err) < 0)
        log_error("service", "model %s not reloaded, keeping %s: %s", s->model_path,
                  recommend_version(s->rec), err);
    else
        log_info("service", "model %s reloaded: %s", s->model_path, recommend_version(s->rec));
}

/* Has a bounded run finished: every partition read to its end, and nothing
 * left in hand or in flight? */
static int svc_range_finished(const svc *s) {
    return s->range && range_all_reached(s->range) && !s->n_items && !svc_in_flight(s);
}

/* Produces the delayed triggers that are due in the clickstream partitions
 * this instance owns (trigger.h), at most every trigger.scan_interval_ms. */
static void svc_scan_triggers(svc *s) {
    int32_t *owned = malloc((s->n_assigned + 1) * sizeof *owned);
    if (!owned) return; /* the next look will do */
    size_t n = 0;
    for (size_t i = 0; i < s->n_assigned; i++)
        if (strcmp(s->assigned[i].topic, s->t_click) == 0) owned[n++] = s->assigned[i].partition;
    char err[512];
    /* Exactly once, triggers go out in a transaction of their own: they
     * leave the due sets only once it is committed, so none is lost when
     * it is aborted. Beginning one is local to librdkafka; most looks find
     * nothing due, and their empty transaction is aborted uncounted. */
    if (s->eos && (s->fenced || svc_txn_begin(s) < 0)) {
        free(owned);
        return;
    }
    long fired = triggers_scan(s->trig, s->producer, s->t_trig, s->trig_partitions, owned, n,
                               util_now_ms(), 0, err, sizeof err);
    if (fired < 0)
        log_warn("service", "producing due triggers: %s (again at the next look)", err);
    if (s->eos) {
        if (fired > 0 && svc_txn_commit(s, NULL) == 0) {
            free(owned);
            return;
        }
        svc_txn_abort(s, fired > 0);
        triggers_unfire(s->trig);
    }
    free(owned);
}

static int svc_loop(svc *s) {
    s->last_activity_us = util_monotonic_us();
    while (!svc_stop_requested) {
        if (s->tick) s->tick(s->ud);
        if (s->producer_hook) s->producer_hook(s->ud, s->producer);
        svc_resume_if_due(s);
        if (svc_range_finished(s)) {
            s->range_completed = 1;
            log_info("service", "bounded run: every partition read to its end; stopping");
            break;
        }
        svc_maybe_reload(s);
        svc_catalog_poll(s, 10000);
        svc_control_poll(s);
        /* A producer that went fatal between batches, with none failing to
         * notice it, is renewed before the trigger scan produces with it. */
        if (s->dr.fatal && !s->fenced && !svc_in_flight(s) && svc_renew_producer(s) < 0)
            atomic_store(&s->kafka_ok, 0);
        svc_scan_triggers(s);
        if (svc_collect(s)) {
            if (svc_process_batch(s) < 0) svc_pause(s);
        } else if (!s->paused_until_us) {
            svc_settle(s);
            svc_flush_purges(s);
            char err[512];
            if (bandit_refresh_if_due(s->bandit, err, sizeof err) < 0)
                log_warn("service", "refreshing the bandit statistics: %s", err);
        }
        int64_t now = util_monotonic_us();
        if (now - s->last_lag_us > 1000000) {
            svc_update_lag(s);
            metrics_set(MET_STATE_CACHE_EVICTIONS, (int64_t)cache_evictions(s->cache));
            s->last_lag_us = now;
        }
        if (s->exit_when_idle_ms && svc_idle(s) && !s->n_items &&
            now - s->last_activity_us > s->exit_when_idle_ms * 1000) {
            log_info("service", "idle for %" PRId64 " ms at the end of every partition; exiting",
                     s->exit_when_idle_ms);
            break;
        }
    }
    return 0;
}

/* ---- start and stop ---------------------------------------------------------- */

static void svc_free(svc *s) {
    if (s->http) httpd_stop(s->http);
    /* Messages held (dead letters of a failed batch) must go before their consumer. */
    for (int k = 0; k < 3; k++) svc_flight_drop_dead_letters(&s->flight[k]);
    if (s->consumer) rd_kafka_destroy(s->consumer);
    if (s->catalog_consumer) {
        rd_kafka_consumer_close(s->catalog_consumer);
        rd_kafka_destroy(s->catalog_consumer);
    }
    if (s->control_consumer) {
        rd_kafka_consumer_close(s->control_consumer);
        rd_kafka_destroy(s->control_consumer);
    }
    if (s->producer) rd_kafka_destroy(s->producer);
    store_free(s->store);
    cache_free(s->cache);
    bandit_free(s->bandit);
    triggers_free(s->trig);
    policy_free(s->pol);
    privacy_free(s->priv);
    templates_free(s->tpl);
    catalog_free(s->catalog);
    codec_free(s->codec);
    dict_free(s->user_index);
    free(s->items);
    free(s->users);
    free(s->writes);
    free(s->load_states);
    free(s->load_ids);
    for (size_t i = 0; s->snaps && i < s->batch_max; i++) userstate_clear(&s->snaps[i].prefs);
    free(s->snaps);
    free(s->work);
    free(s->queries);
    free(s->h_arena);
    recommend_free(s->rec);
    for (int k = 0; k < 3; k++) {
        free(s->flight[k].spans);
        free(s->flight[k].polled_us);
        free(s->flight[k].copies);
        buf_free(&s->flight[k].pub);
        free(s->flight[k].dls);
    }
    if (s->rkt_react) rd_kafka_topic_destroy(s->rkt_react);
    if (s->rkt_trig) rd_kafka_topic_destroy(s->rkt_trig);
    buf_free(&s->scratch);
    buf_free(&s->text);
    for (size_t i = 0; i < s->n_refs; i++) free(s->refs[i].user_id);
    free(s->refs);
    svc_clear_purges(s);
    free(s->purges);
    free(s->committed);
    free(s->committed_trig);
    for (size_t i = 0; i < s->n_assigned; i++) free(s->assigned[i].topic);
    free(s->assigned);
    svc_free_split(s->locales);
}

/* Stops cleanly: finishes the batch in hand, commits, closes the group
 * membership (its revoke callback commits too), flushes the producer. */
static int svc_shutdown(svc *s) {
    int rc = 0;
    int64_t deadline = util_monotonic_us() + s->shutdown_ms * 1000;
    if (s->n_items && svc_process_batch(s) < 0) rc = 1;
    if (svc_settle(s) < 0) rc = 1;
    svc_flush_purges(s);
    triggers_drain(s->trig, s->producer, 5000);
    rd_kafka_resp_err_t err = rd_kafka_consumer_close(s->consumer);
    if (err) {
        log_error("service", "closing the consumer: %s", rd_kafka_err2str(err));
        rc = 1;
    }
    svc_flush_purges(s);
    int left_ms = (int)((deadline - util_monotonic_us()) / 1000);
    if (rd_kafka_flush(s->producer, left_ms > 0 ? left_ms : 0)) {
        log_error("service", "%d messages not delivered at shutdown", rd_kafka_outq_len(s->producer));
        rc = 1;
    }
    return rc;
}

/* Joins the consumer group on the input topics (the rebalance callback
 * takes it from there). */
static int svc_subscribe(svc *s, char *errstr, size_t errlen) {
    rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(3);
    rd_kafka_topic_partition_list_add(topics, s->t_click, RD_KAFKA_PARTITION_UA);
    rd_kafka_topic_partition_list_add(topics, s->t_react, RD_KAFKA_PARTITION_UA);
    rd_kafka_topic_partition_list_add(topics, s->t_trig, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t kerr = rd_kafka_subscribe(s->consumer, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (kerr) return util_err(errstr, errlen, "subscribing: %s", rd_kafka_err2str(kerr));
    return 0;
}

static void svc_usage(FILE *f) {
    fprintf(f,
            "usage: copystream run [-c CONFIG] [--group GROUP] [--exit-when-idle MS]\n"
            "\n"
            "Consumes the clickstream and reactions topics as a member of the consumer\n"
            "group, keeps users' state in Redis and publishes personalized copy.\n"
            "\n"
            "  -c, --config FILE     configuration (default $COPYSTREAM_CONFIG or\n"
            "                        config/copystream.conf)\n"
            "  --group GROUP         consumer group (default kafka.group.id)\n"
            "  --exit-when-idle MS   exit once every assigned partition has been at its\n"
            "                        end for MS milliseconds (batch jobs, demos, benchmarks)\n");
}

int run_main(int argc, char **argv) {
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"group", required_argument, 0, 'g'},
                                         {"exit-when-idle", required_argument, 0, 'i'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *path = commands_default_config();
    service_options so = {0};
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': path = optarg; break;
        case 'g': so.group = optarg; break;
        case 'i': so.exit_when_idle_ms = atoll(optarg); break;
        case 'h': svc_usage(stdout); return 0;
        default: svc_usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        svc_usage(stderr);
        return 2;
    }
    config *cfg = commands_load_config(path);
    if (!cfg) return 2;
    int rc = service_run(cfg, &so, NULL);
    config_free(cfg);
    return rc;
}

int service_run(const config *cfg, const service_options *opt, service_totals *totals) {
    const char *group = opt->group;
    char err[1024];
    svc s;
    memset(&s, 0, sizeof s);
    int rc = 1;
    if (svc_settings(&s, cfg, err, sizeof err) < 0) {
        fprintf(stderr, "copystream: %s\n", err);
        rc = 2;
        goto out;
    }
    s.exit_when_idle_ms = opt->exit_when_idle_ms;
    s.range = opt->range;
    /* A bounded run commits in a group of its own, and its copies are
     * republished byte for byte: at least once is what it promises
     * (docs/GUARANTEES.md). */
    if (s.range) s.eos = 0;
    if (s.eos) svc_transactional_id(&s, group);
    s.dry_run = opt->dry_run;
    s.tick = opt->tick;
    s.producer_hook = opt->producer_hook;
    s.ud = opt->ud;
    if (!(s.codec = commands_codec_new(cfg, err, sizeof err))) goto startup_err;
    if (!(s.tpl = templates_load(config_str(cfg, "copy.templates"), (const char *const *)s.locales,
                                 s.n_locales, err, sizeof err)))
        goto startup_err;
    /* Zones are read with TZ set, before any thread of ours or librdkafka's runs. */
    if (!(s.pol = policy_new(cfg, err, sizeof err))) goto startup_err;
    for (int k = 0; k < INTENT__COUNT; k++)
        if (s.rules.enabled[k] && templates_require(s.tpl, intent_name(k),
                                                    (const char *const *)s.locales, s.n_locales,
                                                    err, sizeof err) < 0)
            goto startup_err;
    s.catalog = catalog_new();
    s.cache = cache_new((size_t)config_int(cfg, "state.cache_mb") << 20);
    s.user_index = dict_new();
    s.items = calloc(s.batch_max, sizeof *s.items);
    s.users = calloc(s.batch_max, sizeof *s.users);
    s.writes = calloc(s.batch_max, sizeof *s.writes);
    s.load_states = calloc(s.batch_max, sizeof *s.load_states);
    s.load_ids = calloc(s.batch_max, sizeof *s.load_ids);
    s.snaps = calloc(s.batch_max, sizeof *s.snaps);
    s.work = calloc(s.batch_max, sizeof *s.work);
    s.queries = calloc(s.batch_max, sizeof *s.queries);
    int flights_ok = s.snaps && s.work && s.queries;
    for (int k = 0; k < 3; k++) {
        s.flight[k].polled_us = calloc(s.batch_max, sizeof *s.flight[k].polled_us);
        s.flight[k].copies = calloc(s.n_locales * SVC__KINDS, sizeof *s.flight[k].copies);
        flights_ok &= s.flight[k].polled_us && s.flight[k].copies;
    }
    if (!s.catalog || !s.cache || !s.user_index || !s.items || !s.users || !s.writes ||
        !s.load_states || !s.load_ids || !flights_ok) {
        util_err(err, sizeof err, "out of memory");
        goto startup_err;
    }
    if (s.model_path[0]) {
        /* Model states (8 to ~100 KB each, growing with a user's history)
         * are freed and made as users come and go: keep them in the heap,
         * where a freed one is reused, instead of mapping fresh zeroed pages
         * for every one. */
        mallopt(M_MMAP_THRESHOLD, 4 << 20);
        if (!(s.rec = recommend_new(s.model_path, (int)config_int(cfg, "model.max_batch"),
                                    (size_t)config_int(cfg, "model.kv_cache_mb") << 20,
                                    s.up.max_sequence, err, sizeof err)))
            goto startup_err;
        svc_model_file_changed(&s); /* remember what was loaded */
        log_info("service", "model %s loaded: %s", s.model_path, recommend_version(s.rec));
    }
    /* hiredis writes with plain send(): a write to a Redis that died (the
     * peer's RST already in) raises SIGPIPE, whose default action killed the
     * service mid-outage instead of letting it retry with backoff. Ignored,
     * the write fails with EPIPE and the batch is retried like any other
     * connection error (tests/integration/test_faults.py). */
    signal(SIGPIPE, SIG_IGN);
    if (!(s.store = opt->state_in_memory ? store_new_memory(cfg, err, sizeof err)
                                         : store_new(cfg, err, sizeof err)))
        goto startup_err;
    if (!(s.trig = triggers_new(cfg, &s.rules, s.store, err, sizeof err)) ||
        !(s.priv = privacy_new(cfg, err, sizeof err)))
        goto startup_err;
    if (!(s.bandit = bandit_new(cfg, s.tpl, s.t_click, err, sizeof err)) ||
        bandit_set_trigger_topic(s.bandit, s.t_trig) < 0 ||
        bandit_refresh(s.bandit, err, sizeof err) < 0)
        goto startup_err;
    /* state kept in memory must leave Redis alone, the bandit's counts too */
    if (opt->state_in_memory) bandit_set_read_only(s.bandit);
    atomic_store(&s.redis_ok, 1);
    if (!(s.producer = kafka_producer_new(cfg, &s.dr, s.eos ? s.txn_id : NULL, err, sizeof err)))
        goto startup_err;
    const char *outputs[] = {s.t_copy, s.t_dlq, s.t_trig};
    if (kafka_producer_prepare(s.producer, outputs, 3, 10000, err, sizeof err) < 0)
        goto startup_err;
    if ((s.trig_partitions = kafka_partition_count(s.producer, s.t_trig, 10000, err,
                                                   sizeof err)) < 0)
        goto startup_err;
    if (!(s.consumer = kafka_consumer_new(cfg, group, s.range ? NULL : svc_rebalance_cb, &s, err,
                                          sizeof err)))
        goto startup_err;
    /* Messages carry their topic's handle: one pointer comparison per message
     * tells reactions from clicks. */
    s.rkt_react = rd_kafka_topic_new(s.consumer, s.t_react, NULL);
    s.rkt_trig = rd_kafka_topic_new(s.consumer, s.t_trig, NULL);
    if (!(s.catalog_consumer = kafka_consumer_new(cfg, NULL, NULL, NULL, err, sizeof err)) ||
        !(s.control_consumer = kafka_consumer_new(cfg, NULL, NULL, NULL, err, sizeof err)))
        goto startup_err;
    metrics_start(COPYSTREAM_VERSION);
    int port = (int)config_int(cfg, "http.port");
    if (port && !(s.http = httpd_start(config_str(cfg, "http.bind"), port, svc_health, &s, err,
                                       sizeof err)))
        goto startup_err;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = svc_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    /* A bounded run (replay, rebuild-state) reads its range alone: no
     * control messages, no triggers. */
    if (svc_catalog_start(&s, err, sizeof err) < 0 ||
        (!s.range && svc_control_start(&s, err, sizeof err) < 0))
        goto startup_err;
    if (s.range) {
        if (svc_range_assign(&s, err, sizeof err) < 0) goto startup_err;
    } else if (svc_subscribe(&s, err, sizeof err) < 0) {
        goto startup_err;
    }
    atomic_store(&s.kafka_ok, 1);
    atomic_store(&s.ready, 1);
    log_info("service", "running: %s + %s -> %s (group %s, %s%s)", s.t_click, s.t_react, s.t_copy,
             group ? group : "from kafka.group.id", s.eos ? "exactly once, transactional id " :
             "at least once", s.eos ? s.txn_id : "");
    svc_loop(&s);
    log_info("service", "stopping");
    atomic_store(&s.ready, 0);
    rc = svc_shutdown(&s) || s.fenced;
    double busy_s = (double)(s.last_commit_us - s.first_poll_us) / 1e6;
    log_info("service",
             "totals: events=%" PRIu64 " reactions=%" PRIu64 " triggers=%" PRIu64
             " copies=%" PRIu64 " dead_lettered=%" PRIu64 " busy_s=%.3f events_per_s=%.0f",
             s.total_events, s.total_reactions, s.total_triggers, s.total_copies, s.total_dead,
             busy_s,
             busy_s > 0 ? (double)(s.total_events + s.total_reactions + s.total_triggers +
                                   s.total_dead) / busy_s
                        : 0);
    if (rc == 0) log_info("service", "stopped cleanly");
    if (totals)
        *totals = (service_totals){s.total_events, s.total_reactions, s.total_copies, s.total_dead,
                                   busy_s, s.range_completed};
    goto out;

startup_err:
    fprintf(stderr, "copystream: %s\n", err);
    rc = 1;
out:
    svc_free(&s);
    return rc;
}
