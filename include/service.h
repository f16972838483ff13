/* service.h -- the service's pipeline as a library.
 *
 * `copystream run` is a consumer-group member that follows the clickstream
 * and reactions topics until it is stopped. `copystream replay` and
 * `copystream rebuild-state` (replay.c) run the very same pipeline --
 * decoding, state rules, strategies, templates, the compare-and-set writes,
 * the outbox -- over a bounded range of the input instead (range.h):
 *
 *   - no group membership: the range's partitions are assigned at their
 *     start offsets, so the live group's assignment and offsets are never
 *     touched; commits, if any, go to the group named in the options,
 *     which the caller makes distinct from the live one;
 *   - only events inside the range's copy offsets make copies; earlier
 *     events only build state;
 *   - the run stops once every partition reached its end offset and
 *     everything before it is finished;
 *   - bad input is counted and logged, not dead-lettered again (the live
 *     run did that when it first met it).
 *
 * Which Redis keys and which output topic a run uses come from its config
 * (redis.key_prefix, topic.copy): a caller that must not touch the live
 * ones sets others with config_set() before calling. */
#ifndef COPYSTREAM_SERVICE_H
#define COPYSTREAM_SERVICE_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "range.h"

/* Receives, in a dry run, each message that would have been produced. */
typedef void (*service_publish_fn)(void *ud, const char *topic, const void *key, size_t key_len,
                                   const void *value, size_t value_len);

typedef struct {
    const char *group;          /* consumer group; NULL: kafka.group.id */
    int64_t exit_when_idle_ms;  /* group member: exit once every assigned partition has
                                 * been at its end this long; 0: run until stopped */
    range *range;               /* a bounded run over these partitions (the service updates
                                 * their progress); NULL: a group member */
    int state_in_memory;        /* users' state in process memory, not Redis (store.h) */
    service_publish_fn dry_run; /* non-NULL: produce nothing and commit nothing; each copy
                                 * goes to this function instead */
    void (*tick)(void *ud);     /* called on every turn of the loop (a few times a second
                                 * at least), on the service's thread */
    /* Fault injection (tests/tools/producer_fatal.c): called on every turn of the loop
     * with the producer of the moment, which it may break (rd_kafka_test_fatal_error). */
    void (*producer_hook)(void *ud, rd_kafka_t *producer);
    void *ud;                   /* for dry_run, tick and producer_hook */
} service_options;

/* What a run did, counted over committed (or, in a dry run, finished)
 * batches. */
typedef struct {
    uint64_t events, reactions, copies, dead;
    double busy_s;              /* from the first poll to the last commit */
    int completed;              /* a bounded run finished its range (not stopped early) */
} service_totals;

/* Runs the service with cfg (which must outlive the call) until it is
 * stopped (SIGINT, SIGTERM), goes idle (exit_when_idle_ms) or finishes its
 * range. Fills *totals when not NULL. Returns 0 after a clean stop, 1 on a
 * runtime failure (reported on stderr), 2 on a configuration error. A
 * bounded run stopped by a signal also returns 0: totals->completed tells. */
int service_run(const config *cfg, const service_options *o, service_totals *totals);

#endif
