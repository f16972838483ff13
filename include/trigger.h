/* trigger.h -- delayed triggers: waiting in Redis, then going out on time.
 *
 * A cart reminder is due some time after the add to cart that schedules it;
 * a price drop is due when the catalog says so, for every user who looked at
 * the item. Neither may be lost when an instance restarts or a partition
 * moves, so their state lives in Redis, never only in memory:
 *
 *   <prefix>:due:<partition>      sorted set per clickstream partition:
 *                                 member = the trigger (JSON, intent.h:
 *                                 trigger_member), score = when it is due (ms)
 *   <prefix>:watch:<item hash>    sorted set per item: member
 *                                 "<partition>:<user id>" of a user who viewed
 *                                 or carted it, score = when (event time, ms);
 *                                 the intent.price_drop.max_watchers most
 *                                 recent, expiring intent.price_drop.watch_s
 *                                 after the last one
 *   <prefix>:pd:<item hash>:<catalog partition>:<offset>
 *                                 string: this price drop was fanned out
 *
 * Scheduling rides on the batch that applies the event: an add to cart or a
 * watched view stages its ZADD with the batch's state writes (store_stage),
 * so it is durable before the event's offset is committed, and a redelivered
 * event stages the same ZADD again (idempotent: same member, and ZADD GT
 * never moves a reminder earlier).
 *
 * Firing. The instance that owns clickstream partition p looks at
 * <prefix>:due:<p> every trigger.scan_interval_ms: each due entry becomes a
 * message on the triggers topic (partition p modulo its partitions), and
 * only once the broker has acknowledged it is the entry removed -- and only
 * if its due time is still the one read, so a reminder pushed back meanwhile
 * stays. The service then consumes the message like a click and makes the
 * copy with the usual guarantees. A crash or a rebalance between producing
 * and removing makes the next owner produce the same trigger again, with the
 * same id (<intent>:<item>:<due ms>); the user's state remembers trigger ids
 * like event ids and skips the second as an upstream duplicate, so firing is
 * idempotent. Two owners during a rebalance race the same way, harmlessly.
 * An entry found more than trigger.max_late_s after it was due is removed
 * without firing (counted as suppressed, reason stale).
 *
 * Price drops. Every instance follows the catalog; whichever sees a drop
 * first fans it out: it reads the item's watchers and adds a due entry for
 * each to the due set of the watcher's partition, then marks the drop done.
 * Adding is idempotent (same member, NX), so two instances fanning out at
 * once, or one that crashed half-way and is done again at the next start,
 * add nothing twice; once the mark exists the drop is never fanned out
 * again (the catalog is re-read at every start). */
#ifndef COPYSTREAM_TRIGGER_H
#define COPYSTREAM_TRIGGER_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "intent.h"
#include "records.h"
#include "store.h"
#include "userstate.h"

typedef struct triggers triggers;

/* Reads redis.*, intent.* and trigger.* (rules must outlive the result);
 * staged updates go to st. Connects to Redis lazily. Returns NULL with
 * errstr. */
triggers *triggers_new(const config *c, const intent_rules *rules, store *st, char *errstr,
                       size_t errlen);
void triggers_free(triggers *t);

/* The Redis key of partition's due set, or of an item's watchers, into out
 * (reset first). For tests and `copystream forget`. */
void triggers_due_key(const char *prefix, int32_t partition, buf *out);
void triggers_watch_key(const char *prefix, const char *item_id, buf *out);

/* The user's click event e, read at clickstream partition, was applied
 * (outcome US_APPLIED) or found applied before (US_ALREADY_APPLIED); u is the
 * state after it. Stages what it schedules: an add to cart (re)schedules the
 * item's reminder, a new view or add to cart of an item makes the user one of
 * its watchers (not again for an event within an hour of the user's last
 * one on the item). Returns 0 or -1 (memory). */
int triggers_on_event(triggers *t, const char *user_id, int32_t partition, const click_event *e,
                      const user_state *u, int outcome);

/* Puts trigger tr (its since_ms set) back into partition's due set, due at
 * due_ms: it arrived in the user's quiet hours. Staged like
 * triggers_on_event(). Returns 0 or -1 (memory). */
int triggers_defer(triggers *t, const trigger *tr, int32_t partition, int64_t due_ms);

/* A catalog update replaced `before` (NULL: a new item) by `after`, read at
 * (catalog partition, offset): when it lowers the price by at least
 * intent.price_drop.min_percent (same currency), fans the drop out to the
 * item's watchers (one Redis round trip or a few). Returns the number of
 * due entries added (0 when it is no drop, or was fanned out before), or -1
 * with errstr. */
long triggers_on_catalog(triggers *t, const catalog_item *before, const catalog_item *after,
                         int32_t partition, int64_t offset, char *errstr, size_t errlen);

/* Produces what is due in the due sets of owned[n_owned] (clickstream
 * partitions) at now_ms to `topic` (n_partitions partitions), without
 * waiting for the broker: each partition's batch is remembered, and a later
 * call -- every call first serves the producer's delivery reports, other
 * batches' included -- removes its entries from Redis once all its messages
 * are acknowledged (a batch with a failure leaves them, to be produced
 * again). A partition whose batch is still out is not read again, and stale
 * entries are removed without firing. Looks at the due sets only when
 * trigger.scan_interval_ms has passed since the last look, unless force.
 * Returns the number of triggers produced, or -1 with errstr (what was not
 * removed is produced again later, harmlessly). With a transactional
 * producer, call it inside a transaction and commit that before the next
 * call, or call triggers_unfire(). */
long triggers_scan(triggers *t, rd_kafka_t *producer, const char *topic, int n_partitions,
                   const int32_t *owned, size_t n_owned, int64_t now_ms, int force, char *errstr,
                   size_t errlen);
/* The triggers the last triggers_scan() produced are void (the transaction
 * they were produced in was aborted): they stay in the due sets, to be
 * produced again at a later look, whatever their delivery reports say. */
void triggers_unfire(triggers *t);

/* The producer the pending triggers went out with was destroyed (renewed
 * after a fatal error): no report of theirs will come, so they are
 * forgotten. They stay in the due sets and are produced again at a later
 * look, with the same ids (the user's state makes one copy of them). */
void triggers_producer_gone(triggers *t);

/* Waits up to timeout_ms for the batches still out and removes them (at
 * shutdown, so that the next owner does not produce them again). */
void triggers_drain(triggers *t, rd_kafka_t *producer, int timeout_ms);

#endif
