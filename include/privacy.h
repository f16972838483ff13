/* privacy.h -- forgetting a user, and their consent, on request.
 *
 * Requests are control messages: JSON on topic.control, key = user id,
 *
 *   {"type": "forget",  "user_id": "u-123"}
 *   {"type": "opt_out", "user_id": "u-123", "ts": 1764547200000}
 *   {"type": "opt_in",  "user_id": "u-123"}
 *
 * ("ts", optional, is when the user asked, Unix ms; now when absent). Every
 * running service instance reads every control message (a consumer outside
 * the group, from the end of the topic at start-up), settles its batches in
 * flight, drops what it holds of the user in memory (state cache, model
 * state), and applies the request to Redis, which is idempotent: N
 * instances applying it change nothing more than one. `copystream forget`
 * and `copystream consent` apply the request themselves first -- so it
 * takes effect with no instance running -- write the tombstones, and then
 * publish the control message for the running instances.
 *
 * forget erases every Redis key of the user and every entry that names them:
 * the user's hash (state, outbox copies, copy records, consent), their
 * entries in the outbox indexes, the due sets (pending cart reminders and
 * price drops) and the items' watcher sets. The entries are found by a SCAN
 * of the deployment's keys (redis.key_prefix) for sorted sets, and a ZSCAN of
 * each for the user, so nothing is missed whatever index a later release
 * adds; it costs a pass over the deployment's keys (about a second per
 * million), acceptable for a request that is rare. opt_out sets the user's
 * consent flag (hash field ns, like an UNSUBSCRIBE), opt_in removes it; both
 * bump the hash's version so that an instance holding an older copy of the
 * state re-reads it before writing. */
#ifndef COPYSTREAM_PRIVACY_H
#define COPYSTREAM_PRIVACY_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "config.h"

typedef enum { PRIVACY_FORGET = 0, PRIVACY_OPT_OUT, PRIVACY_OPT_IN, PRIVACY__COUNT } privacy_action;

/* "forget", "opt_out", "opt_in"; NULL out of range. */
const char *privacy_action_name(int a);

typedef struct {
    int action;               /* privacy_action */
    char *user_id;            /* owned */
    int64_t ts_ms;            /* when asked; 0: unknown */
} privacy_request;

void privacy_request_clear(privacy_request *r);
/* Parses a control message into *r (cleared first). Returns 0, or -1 with
 * errstr. */
int privacy_parse(const void *data, size_t len, privacy_request *r, char *errstr, size_t errlen);
/* The control message of r, appended to out. Returns 0 or -1. */
int privacy_encode(const privacy_request *r, buf *out);

/* Does a sorted-set member name user_id? Members are "<number>:<user id>"
 * (outbox indexes, watcher sets) or a JSON object with "user_id" (due
 * sets). */
int privacy_member_names(const char *member, size_t len, const char *user_id);

typedef struct privacy privacy;

/* Reads redis.* and state.ttl_s; connects lazily. Returns NULL with errstr. */
privacy *privacy_new(const config *c, char *errstr, size_t errlen);
void privacy_free(privacy *p);

/* Erases what Redis holds of user_id (see above). Returns the number of keys
 * and entries removed, or -1 with errstr (part of it may be done: run it
 * again). */
long privacy_erase(privacy *p, const char *user_id, char *errstr, size_t errlen);

/* opt_out (opt_in = 0) records that user_id withdrew consent at ts_ms, unless
 * they had already; opt_in (1) lets copy flow again. Returns 0, or -1 with
 * errstr. */
int privacy_consent(privacy *p, const char *user_id, int opt_in, int64_t ts_ms, char *errstr,
                    size_t errlen);

/* Applies a request to Redis: privacy_erase or privacy_consent. */
int privacy_apply(privacy *p, const privacy_request *r, char *errstr, size_t errlen);

/* Writes a tombstone (null value, key = user_id) to every compacted topic
 * keyed by user id: those of copystream's user-keyed topics (clickstream,
 * reactions, copy, triggers) whose cleanup.policy includes compact, asked of
 * the broker, and every topic in privacy.tombstone_topics. Waits for the
 * broker's acknowledgements. The tombstone is partitioned by the producer's
 * partitioner (kafka.producer.partitioner must match the topic's producers,
 * e.g. murmur2_random for Java clients). Fills names (", "-separated) and
 * returns how many topics got one, or -1 with errstr. */
int privacy_tombstones(const config *c, rd_kafka_t *producer, const char *user_id, buf *names,
                       char *errstr, size_t errlen);

#endif
