/* publish.c -- catalog items and click events to Kafka; see publish.h.
 *
 * A thin layer over kafka.h and codec.h so that loadgen and import encode,
 * key and track their messages the same way. Every message is copied by
 * librdkafka, so one encode buffer is reused for all of them. */
#include "publish.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "codec.h"
#include "commands.h"
#include "kafka.h"
#include "util.h"

/* Delivery reports are served this often (in messages) while producing, so
 * that a failure stops the run early and the report queue stays short. */
#define PUBLISH_POLL_EVERY 64
#define PUBLISH_METADATA_MS 10000

struct publisher {
    rd_kafka_t *rk;
    kafka_delivery dr;        /* counted by rk's callbacks: freed after rk */
    codec *codec;
    const char *topic_click;  /* owned by the config */
    const char *topic_catalog;
    buf msg;
    uint64_t sent;
};

publisher *publish_new(const config *c, char *errstr, size_t errlen) {
    publisher *p = calloc(1, sizeof *p);
    if (!p) {
        util_err(errstr, errlen, "out of memory");
        return NULL;
    }
    if (!(p->codec = commands_codec_new(c, errstr, errlen))) goto err;
    if (!(p->rk = kafka_producer_new(c, &p->dr, NULL, errstr, errlen))) goto err;
    p->topic_click = config_str(c, "topic.clickstream");
    p->topic_catalog = config_str(c, "topic.catalog");
    /* librdkafka holds messages for a missing topic until
     * topic.metadata.propagation.max.ms before failing them; asking first
     * turns a typo or a forgotten `copystream topics` into an immediate error,
     * and an unreachable broker into one after PUBLISH_METADATA_MS. */
    if (kafka_partition_count(p->rk, p->topic_click, PUBLISH_METADATA_MS, errstr, errlen) < 0 ||
        kafka_partition_count(p->rk, p->topic_catalog, PUBLISH_METADATA_MS, errstr, errlen) < 0)
        goto err;
    return p;
err:
    publish_free(p);
    return NULL;
}

void publish_free(publisher *p) {
    if (!p) return;
    if (p->rk) rd_kafka_destroy(p->rk);
    codec_free(p->codec);
    buf_free(&p->msg);
    free(p);
}

/* Has the producer reported a failure? Returns -1 with errstr if so. */
static int publish_check(publisher *p, char *errstr, size_t errlen) {
    if (p->dr.fatal) {
        char reason[512];
        rd_kafka_fatal_error(p->rk, reason, sizeof reason);
        return util_err(errstr, errlen, "producer failed: %s", reason);
    }
    if (p->dr.failed)
        return util_err(errstr, errlen, "%" PRIu64 " of %" PRIu64 " messages failed delivery: %s",
                        p->dr.failed, p->sent, rd_kafka_err2str(p->dr.last_err));
    return 0;
}

static int publish_send(publisher *p, const char *topic, const char *key, char *errstr,
                        size_t errlen) {
    if (kafka_produce(p->rk, topic, key, strlen(key), p->msg.p, p->msg.len, NULL, NULL, errstr,
                      errlen) < 0)
        return -1;
    if (++p->sent % PUBLISH_POLL_EVERY == 0) rd_kafka_poll(p->rk, 0);
    return publish_check(p, errstr, errlen);
}

int publish_catalog(publisher *p, const catalog_item *it, char *errstr, size_t errlen) {
    char why[256];
    buf_reset(&p->msg);
    if (codec_encode_catalog(p->codec, it, &p->msg, why, sizeof why) < 0)
        return util_err(errstr, errlen, "item %s: %s", it->item_id, why);
    return publish_send(p, p->topic_catalog, it->item_id, errstr, errlen);
}

int publish_click(publisher *p, const click_event *ev, char *errstr, size_t errlen) {
    char why[256];
    buf_reset(&p->msg);
    if (codec_encode_click(p->codec, ev, &p->msg, why, sizeof why) < 0)
        return util_err(errstr, errlen, "event %s: %s", ev->event_id, why);
    return publish_send(p, p->topic_click, ev->user_id, errstr, errlen);
}

int publish_wait(publisher *p, int timeout_ms, char *errstr, size_t errlen) {
    rd_kafka_poll(p->rk, timeout_ms);
    return publish_check(p, errstr, errlen);
}

int publish_flush(publisher *p, int timeout_ms, char *errstr, size_t errlen) {
    rd_kafka_flush(p->rk, timeout_ms);
    if (publish_check(p, errstr, errlen) < 0) return -1;
    if (p->dr.acked < p->sent)
        return util_err(errstr, errlen,
                        "%" PRIu64 " of %" PRIu64 " messages not acknowledged after %d ms",
                        p->sent - p->dr.acked, p->sent, timeout_ms);
    return 0;
}
