/* publish.h -- write catalog items and click events to Kafka, as a shop would.
 *
 * The producing half of `copystream loadgen` and `copystream import`: one
 * idempotent producer and one codec, built from the config. Catalog items go
 * to topic.catalog keyed by item id, click events to topic.clickstream keyed
 * by user id, both Confluent-framed Avro with the ids of schema.id.*. Delivery
 * is tracked: a publish call fails as soon as the producer has reported a
 * failed or fatal delivery, so a run against a broken cluster stops early
 * instead of queueing data that will never arrive, and publish_flush() says
 * whether everything sent was acknowledged. Not thread-safe. */
#ifndef COPYSTREAM_PUBLISH_H
#define COPYSTREAM_PUBLISH_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "records.h"

typedef struct publisher publisher;

/* Creates the producer and the codec (schema.dir, schema.id.*,
 * input.max_bytes) and checks that both topics exist. c must outlive the
 * publisher. Returns NULL with the reason in errstr. */
publisher *publish_new(const config *c, char *errstr, size_t errlen);

/* Destroys the producer without waiting: call publish_flush() first unless
 * the messages still queued do not matter. */
void publish_free(publisher *p);

/* Encode and queue one record (the caller keeps ownership of it). Returns 0,
 * or -1 with errstr when it cannot be encoded or queued or when an earlier
 * message failed delivery. */
int publish_catalog(publisher *p, const catalog_item *it, char *errstr, size_t errlen);
int publish_click(publisher *p, const click_event *ev, char *errstr, size_t errlen);

/* Serves delivery reports for up to timeout_ms: how a paced producer waits.
 * Returns 0, or -1 with errstr when a delivery has failed. */
int publish_wait(publisher *p, int timeout_ms, char *errstr, size_t errlen);

/* Waits up to timeout_ms for the broker to acknowledge every queued message.
 * Returns 0 when all messages sent were acknowledged, or -1 with errstr
 * saying how many failed or are still outstanding. */
int publish_flush(publisher *p, int timeout_ms, char *errstr, size_t errlen);

#endif
