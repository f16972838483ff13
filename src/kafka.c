/* kafka.c -- librdkafka clients built from copystream's config.
 *
 * The settings copystream's delivery guarantee rests on are applied after
 * the user's kafka.* keys, so no config can switch them off (config.c also
 * rejects such keys up front with a clearer message). Defaults that only
 * tune behaviour are applied before, so users can override them. librdkafka's
 * own log lines are routed through log.c so that every line the process
 * writes has the same shape. */
#include "kafka.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

typedef struct {
    rd_kafka_conf_t *conf;
    const char *client;
    char *errstr;
    size_t errlen;
    int failed;
} kafka_conf_ctx;

static int kafka_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value,
                          char *errstr, size_t errlen) {
    char rderr[512], key[256];
    if (rd_kafka_conf_set(conf, name, value, rderr, sizeof rderr) == RD_KAFKA_CONF_OK) return 0;
    /* librdkafka quotes some refused values; a secret's must not reach a log. */
    snprintf(key, sizeof key, "kafka.%s", name);
    if (config_is_secret(key)) util_redact(rderr, sizeof rderr, value);
    return util_err(errstr, errlen, "%s: %s", key, rderr);
}

static void kafka_conf_user_kv(const char *name, const char *value, void *ud) {
    kafka_conf_ctx *ctx = ud;
    if (ctx->failed) return;
    /* kafka.group.id is shared config for convenience, but a producer given
     * one only warns about it. */
    if (strcmp(ctx->client, "producer") == 0 &&
        (strcmp(name, "group.id") == 0 || strcmp(name, "group.instance.id") == 0))
        return;
    if (kafka_conf_set(ctx->conf, name, value, ctx->errstr, ctx->errlen) < 0) ctx->failed = 1;
}

static void kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    /* syslog levels: 0-3 error, 4 warning, 5-6 info, 7 debug */
    log_level l = level <= 3 ? LOG_ERROR : level == 4 ? LOG_WARN : level <= 6 ? LOG_INFO : LOG_DEBUG;
    log_msg(l, "librdkafka", "%s: [%s] %s", rd_kafka_name(rk), fac, buf);
}

/* The latest authentication (SASL) or TLS failure a client of this process
 * reported, and how many there were. librdkafka retries those for ever like
 * any broken connection, so kafka_await_broker() looks here to stop at the
 * first one instead of running into a timeout with a vaguer reason; the
 * count lets it ignore failures from before it started. Written from
 * error_cb, which runs on whichever thread polls the client, hence the lock. */
static pthread_mutex_t kafka_auth_lock = PTHREAD_MUTEX_INITIALIZER;
static char kafka_auth_reason[512];
static uint64_t kafka_auth_failures;

static void kafka_note_auth_failure(rd_kafka_t *rk, rd_kafka_resp_err_t e, const char *reason) {
    if (e != RD_KAFKA_RESP_ERR__AUTHENTICATION && e != RD_KAFKA_RESP_ERR__SSL) return;
    pthread_mutex_lock(&kafka_auth_lock);
    snprintf(kafka_auth_reason, sizeof kafka_auth_reason, "%s: %s", rd_kafka_name(rk), reason);
    kafka_auth_failures++;
    pthread_mutex_unlock(&kafka_auth_lock);
}

/* The number of failures so far; with out, also the latest one's reason. */
static uint64_t kafka_auth_failure(char *out, size_t outlen) {
    pthread_mutex_lock(&kafka_auth_lock);
    uint64_t n = kafka_auth_failures;
    if (out) snprintf(out, outlen, "%s", kafka_auth_reason);
    pthread_mutex_unlock(&kafka_auth_lock);
    return n;
}

static void kafka_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    rd_kafka_resp_err_t e = (rd_kafka_resp_err_t)err;
    kafka_note_auth_failure(rk, e, reason);
    if (e == RD_KAFKA_RESP_ERR__FATAL) {
        char fatal[512];
        rd_kafka_fatal_error(rk, fatal, sizeof fatal);
        log_error("kafka", "%s: fatal error: %s", rd_kafka_name(rk), fatal);
        return;
    }
    /* Transport errors are retried by librdkafka; they are informational. */
    log_warn("kafka", "%s: %s: %s", rd_kafka_name(rk), rd_kafka_err2name(e), reason);
}

static void kafka_producer_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    kafka_delivery *dr = opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL && dr) dr->fatal = 1;
    kafka_error_cb(rk, err, reason, opaque);
}

static void kafka_dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    kafka_delivery *dr = m->_private ? (kafka_delivery *)m->_private : (kafka_delivery *)opaque;
    if (!dr) return;
    if (m->err) {
        dr->failed++;
        dr->last_err = m->err;
        if (m->err == RD_KAFKA_RESP_ERR__FATAL) dr->fatal = 1;
    } else {
        dr->acked++;
    }
}

/* Builds a conf: our tunable defaults, the user's kafka.* keys for this
 * client kind, then the settings we must own. */
static rd_kafka_conf_t *kafka_conf_build(const config *c, const char *client,
                                         const char *const *defaults,
                                         const char *const *forced, char *errstr,
                                         size_t errlen) {
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    for (size_t i = 0; defaults[i]; i += 2)
        if (kafka_conf_set(conf, defaults[i], defaults[i + 1], errstr, errlen) < 0) goto err;
    kafka_conf_ctx ctx = {conf, client, errstr, errlen, 0};
    config_kafka_each(c, client, kafka_conf_user_kv, &ctx);
    if (ctx.failed) goto err;
    for (size_t i = 0; forced[i]; i += 2)
        if (kafka_conf_set(conf, forced[i], forced[i + 1], errstr, errlen) < 0) goto err;
    rd_kafka_conf_set_log_cb(conf, kafka_log_cb);
    return conf;
err:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

/* Makes conf transactional. A transaction outlives none of its messages:
 * librdkafka refuses a message.timeout.ms above transaction.timeout.ms, so
 * the first is lowered to the second (60 s unless set), for the non-
 * transactional clients' longer default must not make exactly_once fail to
 * start. */
static int kafka_conf_transactional(rd_kafka_conf_t *conf, const char *id, char *errstr,
                                    size_t errlen) {
    char msg[32] = "", txn[32] = "";
    size_t msg_len = sizeof msg, txn_len = sizeof txn;
    if (kafka_conf_set(conf, "transactional.id", id, errstr, errlen) < 0) return -1;
    if (rd_kafka_conf_get(conf, "message.timeout.ms", msg, &msg_len) == RD_KAFKA_CONF_OK &&
        rd_kafka_conf_get(conf, "transaction.timeout.ms", txn, &txn_len) == RD_KAFKA_CONF_OK &&
        atol(msg) > atol(txn))
        return kafka_conf_set(conf, "message.timeout.ms", txn, errstr, errlen);
    return 0;
}

rd_kafka_t *kafka_producer_new(const config *c, kafka_delivery *dr, const char *transactional_id,
                               char *errstr, size_t errlen) {
    static const char *const defaults[] = {
        "linger.ms", "5",
        "batch.num.messages", "10000",
        "compression.type", "lz4",
        "message.timeout.ms", "120000",
        NULL};
    static const char *const forced[] = {
        "enable.idempotence", "true",
        "acks", "all",
        NULL};
    rd_kafka_conf_t *conf = kafka_conf_build(c, "producer", defaults, forced, errstr, errlen);
    if (!conf) return NULL;
    if (transactional_id && kafka_conf_transactional(conf, transactional_id, errstr, errlen) < 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_opaque(conf, dr);
    rd_kafka_conf_set_dr_msg_cb(conf, kafka_dr_msg_cb);
    rd_kafka_conf_set_error_cb(conf, kafka_producer_error_cb);
    char rderr[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, rderr, sizeof rderr);
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        util_err(errstr, errlen, "cannot create producer: %s", rderr);
        return NULL;
    }
    if (transactional_id) {
        /* Registers the id with its coordinator, which fences an earlier
         * producer of the same id and aborts what it left open. */
        rd_kafka_error_t *e = rd_kafka_init_transactions(rk, 60000);
        if (e) {
            util_err(errstr, errlen, "initializing transactions (transactional id %s): %s",
                     transactional_id, rd_kafka_error_string(e));
            rd_kafka_error_destroy(e);
            rd_kafka_destroy(rk);
            return NULL;
        }
    }
    return rk;
}

rd_kafka_t *kafka_consumer_new(const config *c, const char *group,
                               void (*rebalance_cb)(rd_kafka_t *, rd_kafka_resp_err_t,
                                                    rd_kafka_topic_partition_list_t *, void *),
                               void *opaque, char *errstr, size_t errlen) {
    static const char *const defaults[] = {
        "auto.offset.reset", "earliest",
        "partition.assignment.strategy", "cooperative-sticky",
        "enable.partition.eof", "true",
        "fetch.wait.max.ms", "50",
        NULL};
    static const char *const forced[] = {
        "enable.auto.commit", "false",
        "enable.auto.offset.store", "false",
        /* Never what an aborted transaction wrote, upstream's or ours. */
        "isolation.level", "read_committed",
        NULL};
    rd_kafka_conf_t *conf = kafka_conf_build(c, "consumer", defaults, forced, errstr, errlen);
    if (!conf) return NULL;
    if (group && kafka_conf_set(conf, "group.id", group, errstr, errlen) < 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_opaque(conf, opaque);
    rd_kafka_conf_set_error_cb(conf, kafka_error_cb);
    if (rebalance_cb) rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
    char rderr[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, rderr, sizeof rderr);
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        util_err(errstr, errlen, "cannot create consumer: %s", rderr);
        return NULL;
    }
    /* One queue for messages and events: rd_kafka_consumer_poll serves both. */
    rd_kafka_poll_set_consumer(rk);
    return rk;
}

int kafka_produce(rd_kafka_t *p, const char *topic, const void *key, size_t key_len,
                  const void *value, size_t value_len, rd_kafka_headers_t *hdrs,
                  void *msg_opaque, char *errstr, size_t errlen) {
    for (;;) {
        rd_kafka_resp_err_t err = rd_kafka_producev(
            p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_KEY((void *)key, key_len), RD_KAFKA_V_VALUE((void *)value, value_len),
            RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_OPAQUE(msg_opaque), RD_KAFKA_V_END);
        if (!err) return 0;
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
            return util_err(errstr, errlen, "produce to %s: %s", topic, rd_kafka_err2str(err));
        /* The local queue is full: serve delivery reports until it drains. */
        rd_kafka_poll(p, 10);
    }
}

static const char *kafka_topic_keys[] = {"topic.clickstream", "topic.reactions", "topic.copy",
                                         "topic.dead_letter", "topic.catalog", "topic.triggers",
                                         "topic.control"};

/* Waits until every partition of topic has a leader in rk's metadata.
 * Returns 0, or -1 with errstr after timeout_ms. */
static int kafka_await_leaders(rd_kafka_t *rk, const char *topic, int timeout_ms, char *errstr,
                               size_t errlen) {
    int64_t deadline = util_monotonic_us() + (int64_t)timeout_ms * 1000;
    rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topic, NULL);
    int ready = 0;
    while (!ready && util_monotonic_us() < deadline) {
        const struct rd_kafka_metadata *md = NULL;
        if (!rd_kafka_metadata(rk, 0, t, &md, 5000) && md->topic_cnt == 1 &&
            !md->topics[0].err && md->topics[0].partition_cnt > 0) {
            ready = 1;
            for (int p = 0; p < md->topics[0].partition_cnt; p++)
                if (md->topics[0].partitions[p].err || md->topics[0].partitions[p].leader < 0)
                    ready = 0;
        }
        if (md) rd_kafka_metadata_destroy(md);
        if (!ready) usleep(100 * 1000);
    }
    rd_kafka_topic_destroy(t);
    return ready ? 0 : util_err(errstr, errlen, "topic %s: partitions without a leader after %d s",
                                topic, timeout_ms / 1000);
}

int kafka_create_topics(const config *c, char *errstr, size_t errlen) {
    int rc = -1;
    kafka_delivery dr = {0};
    rd_kafka_t *rk = kafka_producer_new(c, &dr, NULL, errstr, errlen);
    if (!rk) return -1;
    if (kafka_await_broker(rk, 30000, errstr, errlen) < 0) {
        rd_kafka_destroy(rk);
        return -1;
    }
    size_t n = UTIL_ARRAY_LEN(kafka_topic_keys);
    rd_kafka_NewTopic_t *topics[UTIL_ARRAY_LEN(kafka_topic_keys)] = {0};
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_AdminOptions_t *opts = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_event_t *ev = NULL;
    char rderr[512];
    int partitions = (int)config_int(c, "topic.partitions");
    int rf = (int)config_int(c, "topic.replication_factor");
    rd_kafka_AdminOptions_set_operation_timeout(opts, 30000, rderr, sizeof rderr);
    for (size_t i = 0; i < n; i++) {
        const char *name = config_str(c, kafka_topic_keys[i]);
        topics[i] = rd_kafka_NewTopic_new(name, partitions, rf, rderr, sizeof rderr);
        if (!topics[i]) {
            util_err(errstr, errlen, "%s: %s", kafka_topic_keys[i], rderr);
            goto err;
        }
        /* The catalog is a table keyed by item id: compaction keeps the
         * latest version of every item for instances that start later. */
        if (strcmp(kafka_topic_keys[i], "topic.catalog") == 0)
            rd_kafka_NewTopic_set_config(topics[i], "cleanup.policy", "compact");
        /* A control message names a user who asked to be forgotten: it is
         * read by the instances running when it arrives and need not (must
         * not) outlive that by much. */
        if (strcmp(kafka_topic_keys[i], "topic.control") == 0)
            rd_kafka_NewTopic_set_config(topics[i], "retention.ms", "86400000");
    }
    rd_kafka_CreateTopics(rk, topics, n, opts, q);
    ev = rd_kafka_queue_poll(q, 60000);
    if (!ev) {
        util_err(errstr, errlen, "creating topics timed out after 60 s");
        goto err;
    }
    if (rd_kafka_event_error(ev)) {
        util_err(errstr, errlen, "creating topics: %s", rd_kafka_event_error_string(ev));
        goto err;
    }
    const rd_kafka_CreateTopics_result_t *res = rd_kafka_event_CreateTopics_result(ev);
    size_t nres;
    const rd_kafka_topic_result_t **tres = rd_kafka_CreateTopics_result_topics(res, &nres);
    for (size_t i = 0; i < nres; i++) {
        rd_kafka_resp_err_t e = rd_kafka_topic_result_error(tres[i]);
        const char *name = rd_kafka_topic_result_name(tres[i]);
        if (e == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
            log_info("kafka", "topic %s exists", name);
        } else if (e) {
            util_err(errstr, errlen, "creating topic %s: %s", name,
                     rd_kafka_topic_result_error_string(tres[i]));
            goto err;
        } else {
            log_info("kafka", "created topic %s", name);
        }
    }
    /* A created topic reaches the brokers' metadata a moment after the
     * controller answers; a producer started in that moment has its messages
     * failed with "unknown topic or partition". Return once it is there. */
    for (size_t i = 0; i < n; i++)
        if (kafka_await_leaders(rk, config_str(c, kafka_topic_keys[i]), 30000, errstr, errlen) < 0)
            goto err;
    rc = 0;
err:
    if (ev) rd_kafka_event_destroy(ev);
    for (size_t i = 0; i < n; i++)
        if (topics[i]) rd_kafka_NewTopic_destroy(topics[i]);
    rd_kafka_AdminOptions_destroy(opts);
    rd_kafka_queue_destroy(q);
    rd_kafka_destroy(rk);
    return rc;
}

/* Serves rk's queued events, so that its error_cb sees what the brokers
 * said. A consumer's main queue is its consumer queue; before it subscribes
 * or is assigned, nothing but events can be waiting there. */
static void kafka_serve_events(rd_kafka_t *rk) {
    if (rd_kafka_type(rk) == RD_KAFKA_PRODUCER) {
        rd_kafka_poll(rk, 0);
        return;
    }
    rd_kafka_message_t *m;
    while ((m = rd_kafka_consumer_poll(rk, 0))) {
        if (m->err) kafka_note_auth_failure(rk, m->err, rd_kafka_message_errstr(m));
        rd_kafka_message_destroy(m);
    }
}

int kafka_await_broker(rd_kafka_t *rk, int timeout_ms, char *errstr, size_t errlen) {
    int64_t deadline = util_monotonic_us() + (int64_t)timeout_ms * 1000;
    uint64_t before = kafka_auth_failure(NULL, 0);
    char why[512];
    for (;;) {
        const struct rd_kafka_metadata *md = NULL;
        /* No topic: a request any broker that let us in answers. */
        rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, NULL, &md, 100);
        if (!err) {
            rd_kafka_metadata_destroy(md);
            return 0;
        }
        kafka_serve_events(rk);
        if (kafka_auth_failure(why, sizeof why) != before)
            return util_err(errstr, errlen,
                            "the Kafka broker refused copystream's credentials or TLS "
                            "handshake; check kafka.security.protocol, kafka.sasl.mechanisms, "
                            "kafka.sasl.username, kafka.sasl.password and kafka.ssl.* (or their "
                            "kafka.consumer.* / kafka.producer.* forms): %s",
                            why);
        /* A client speaking the wrong protocol to a listener (PLAINTEXT to
         * SASL or TLS) only ever sees dropped connections. */
        if (util_monotonic_us() >= deadline)
            return util_err(errstr, errlen,
                            "no Kafka broker answered within %d ms: %s (check "
                            "kafka.bootstrap.servers, and kafka.security.protocol against the "
                            "listener's)",
                            timeout_ms, rd_kafka_err2str(err));
    }
}

int kafka_partition_count(rd_kafka_t *rk, const char *topic, int timeout_ms, char *errstr,
                          size_t errlen) {
    if (kafka_await_broker(rk, timeout_ms, errstr, errlen) < 0) return -1;
    rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    int n = -1;
    rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, t, &md, timeout_ms);
    if (err) {
        util_err(errstr, errlen, "metadata for %s: %s", topic, rd_kafka_err2str(err));
    } else if (md->topic_cnt != 1 || md->topics[0].err) {
        util_err(errstr, errlen, "topic %s: %s", topic,
                 md->topic_cnt ? rd_kafka_err2str(md->topics[0].err) : "not found");
    } else {
        n = md->topics[0].partition_cnt;
    }
    if (md) rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(t);
    return n;
}

int kafka_producer_prepare(rd_kafka_t *p, const char *const *topics, size_t n, int timeout_ms,
                           char *errstr, size_t errlen) {
    /* First, so that the hint below is only given when a broker answered. */
    if (kafka_await_broker(p, timeout_ms, errstr, errlen) < 0) return -1;
    for (size_t i = 0; i < n; i++) {
        char why[512];
        if (kafka_partition_count(p, topics[i], timeout_ms, why, sizeof why) < 0)
            return util_err(errstr, errlen, "%s (create it with `copystream topics`)", why);
    }
    return 0;
}

int kafka_watermarks(rd_kafka_t *rk, const char *topic, int n, int64_t *lo, int64_t *hi,
                     int timeout_ms, char *errstr, size_t errlen) {
    for (int p = 0; p < n; p++) {
        rd_kafka_resp_err_t e =
            rd_kafka_query_watermark_offsets(rk, topic, p, &lo[p], &hi[p], timeout_ms);
        if (e)
            return util_err(errstr, errlen, "%s[%d]: cannot read the watermarks: %s", topic, p,
                            rd_kafka_err2str(e));
    }
    return 0;
}

int kafka_offsets_for_time(rd_kafka_t *rk, const char *topic, int n, int64_t ms,
                           const int64_t *end, int64_t *out, int timeout_ms, char *errstr,
                           size_t errlen) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
    for (int p = 0; p < n; p++) rd_kafka_topic_partition_list_add(l, topic, p)->offset = ms;
    rd_kafka_resp_err_t e = rd_kafka_offsets_for_times(rk, l, timeout_ms);
    for (int i = 0; !e && i < l->cnt; i++) {
        const rd_kafka_topic_partition_t *tp = &l->elems[i];
        if (tp->err) e = tp->err;
        else out[tp->partition] = tp->offset >= 0 ? tp->offset : end[tp->partition];
    }
    rd_kafka_topic_partition_list_destroy(l);
    if (e) return util_err(errstr, errlen, "%s: cannot look up offsets by time: %s", topic,
                           rd_kafka_err2str(e));
    return 0;
}

int kafka_committed(rd_kafka_t *rk, const char *topic, int n, int64_t *out, int timeout_ms,
                    char *errstr, size_t errlen) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
    for (int p = 0; p < n; p++) rd_kafka_topic_partition_list_add(l, topic, p);
    rd_kafka_resp_err_t e = rd_kafka_committed(rk, l, timeout_ms);
    for (int i = 0; !e && i < l->cnt; i++) {
        const rd_kafka_topic_partition_t *tp = &l->elems[i];
        if (tp->err) e = tp->err;
        else out[tp->partition] = tp->offset >= 0 ? tp->offset : -1;
    }
    rd_kafka_topic_partition_list_destroy(l);
    if (e) return util_err(errstr, errlen, "%s: cannot read committed offsets: %s", topic,
                           rd_kafka_err2str(e));
    return 0;
}
