/* kafka.h -- librdkafka clients built from copystream's config.
 *
 * Every client copystream makes goes through here, so that kafka.* keys reach
 * librdkafka the same way everywhere and the settings our delivery guarantee
 * depends on cannot be overridden by accident: producers are idempotent with
 * acks=all; consumers never auto-commit and never auto-store offsets, because
 * the service commits only what is durable.
 *
 * Delivery reports: a producer made here counts its outcomes in a
 * kafka_delivery that the caller owns and that must outlive the producer. The
 * count is read between rd_kafka_poll()/rd_kafka_flush() calls on the same
 * thread, so it needs no lock. */
#ifndef COPYSTREAM_KAFKA_H
#define COPYSTREAM_KAFKA_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

typedef struct {
    uint64_t acked;            /* messages the broker acknowledged */
    uint64_t failed;           /* messages that failed after librdkafka's retries */
    rd_kafka_resp_err_t last_err;
    int fatal;                 /* a fatal error was raised (idempotence broken) */
} kafka_delivery;

/* An idempotent producer (acks=all, enable.idempotence=true) configured from
 * kafka.* and kafka.producer.*. Its delivery callback counts into *dr; a
 * message's per-message opaque, when non-NULL, is taken as a kafka_delivery*
 * and counted there instead, so a caller can track one batch. With a
 * transactional_id, the producer is transactional and its transactions are
 * initialized before it is returned (which fences an older producer of the
 * same id). Returns NULL with errstr on a bad property, or when transactions
 * cannot be initialized. */
rd_kafka_t *kafka_producer_new(const config *c, kafka_delivery *dr, const char *transactional_id,
                               char *errstr, size_t errlen);

/* A consumer configured from kafka.* and kafka.consumer.*, with group.id
 * set to group (NULL: keep kafka.group.id), enable.auto.commit=false,
 * enable.auto.offset.store=false and isolation.level=read_committed. rebalance_cb may be NULL. opaque is passed to
 * callbacks. Returns NULL with errstr on error. */
rd_kafka_t *kafka_consumer_new(const config *c, const char *group,
                               void (*rebalance_cb)(rd_kafka_t *, rd_kafka_resp_err_t,
                                                    rd_kafka_topic_partition_list_t *, void *),
                               void *opaque, char *errstr, size_t errlen);

/* Produces one message (copies key and value) with optional headers.
 * Blocks, polling the producer, while its queue is full. Returns 0 or -1
 * with errstr. */
int kafka_produce(rd_kafka_t *p, const char *topic, const void *key, size_t key_len,
                  const void *value, size_t value_len, rd_kafka_headers_t *hdrs,
                  void *msg_opaque, char *errstr, size_t errlen);

/* Creates the configured topics that do not exist yet: clickstream,
 * reactions, copy, the dead-letter, triggers and control topics with
 * topic.partitions partitions, catalog compacted, control kept one day.
 * Existing topics are left alone. Returns 0 or -1. */
int kafka_create_topics(const config *c, char *errstr, size_t errlen);

/* Makes sure the topics a producer will write to exist, and warms its
 * metadata for them: without this the first message to each waits for
 * librdkafka's next periodic metadata scan (about a second). Returns 0, or
 * -1 naming the missing topic. */
int kafka_producer_prepare(rd_kafka_t *p, const char *const *topics, size_t n, int timeout_ms,
                           char *errstr, size_t errlen);

/* Waits until a broker has let rk in (connected, and authenticated when
 * kafka.security.protocol asks for it), for at most timeout_ms. Returns 0;
 * or -1 with errstr as soon as any client of the process reports an
 * authentication or TLS failure while it waits (librdkafka's reason, which
 * never holds the password, and the keys to check), or at the timeout. Serves rk's events
 * while waiting, so a consumer must not have been subscribed or assigned
 * yet: a message polled here would be dropped. */
int kafka_await_broker(rd_kafka_t *rk, int timeout_ms, char *errstr, size_t errlen);

/* The number of partitions of a topic, or -1 with errstr. Awaits the broker
 * first (kafka_await_broker), so an authentication failure is reported as
 * such. */
int kafka_partition_count(rd_kafka_t *rk, const char *topic, int timeout_ms,
                          char *errstr, size_t errlen);

/* Offsets of topic's n partitions, asked of the broker, for commands that
 * read a stretch of a topic (replay.c). Each returns 0, or -1 with errstr.
 *
 * kafka_watermarks: the first offset still in each partition's log (lo[n])
 * and the offset the next message will get (hi[n]). */
int kafka_watermarks(rd_kafka_t *rk, const char *topic, int n, int64_t *lo, int64_t *hi,
                     int timeout_ms, char *errstr, size_t errlen);

/* kafka_offsets_for_time: per partition, the first offset whose message
 * timestamp is at or after ms (Kafka's time index), or end[p] when no
 * message is that recent; into out[n]. */
int kafka_offsets_for_time(rd_kafka_t *rk, const char *topic, int n, int64_t ms,
                           const int64_t *end, int64_t *out, int timeout_ms, char *errstr,
                           size_t errlen);

/* kafka_committed: the offsets rk's group (its group.id) has committed for
 * topic's n partitions, -1 where it has none; into out[n]. Only reads: a
 * consumer made for this, never subscribed or assigned, joins nothing and
 * commits nothing. */
int kafka_committed(rd_kafka_t *rk, const char *topic, int n, int64_t *out, int timeout_ms,
                    char *errstr, size_t errlen);

#endif
