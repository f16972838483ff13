/* dataset.h -- interaction histories as the trainer and the evaluator see
 * them: users, each with its events (item row, event type) in time order,
 * and the items' attribute rows.
 *
 * A dataset is built from strings (user, item and attribute ids) by adding
 * events and attributes in any order, then frozen by dataset_builder_finish()
 * into a canonical form: users, items and attributes each sorted by id
 * (shorter ids first, so that numeric ids sort as numbers). Two sources that
 * hold the same histories -- a sequence file and the clickstream topic it was
 * imported into -- therefore give byte-identical datasets, and a trainer
 * seeded alike gives the same model from either.
 *
 * A frozen dataset is read-only. */
#ifndef COPYSTREAM_DATASET_H
#define COPYSTREAM_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "records.h"

typedef struct {
    int32_t n_users, n_items, n_attrs;
    uint64_t n_events;
    char **user_ids;            /* [n_users] */
    char **item_ids;            /* [n_items] */
    char **attr_ids;            /* [n_attrs] */
    uint64_t *user_off;         /* [n_users + 1] user u's events are [user_off[u], user_off[u + 1]) */
    int32_t *ev_item;           /* [n_events] item rows */
    uint8_t *ev_type;           /* [n_events] event_type */
    uint32_t *item_attr_off;    /* [n_items + 1] */
    uint32_t *item_attr_rows;   /* item i's attribute rows, [item_attr_off[i], item_attr_off[i + 1]) */
} dataset;

typedef struct dataset_builder dataset_builder;

dataset_builder *dataset_builder_new(void);
void dataset_builder_free(dataset_builder *b);

/* Appends an event to user_id's history (events of one user arrive in time
 * order). Returns 0 or -1 when memory runs out. */
int dataset_builder_event(dataset_builder *b, const char *user_id, const char *item_id,
                          event_type type);
/* Sets item_id's attributes (replacing any set before). Attributes of items
 * that no event mentions are dropped by dataset_builder_finish(). */
int dataset_builder_attrs(dataset_builder *b, const char *item_id, const char *const *attr_ids,
                          size_t n);

/* Freezes the builder into a dataset (see above) and frees the builder in
 * every case. Returns NULL with errstr when memory runs out or when there
 * are no events. */
dataset *dataset_builder_finish(dataset_builder *b, char *errstr, size_t errlen);

/* Reads a sequence file (`user item item ...`, oldest first) and an optional
 * item -> attribute ids JSON (attributes_path NULL for none), every event of
 * the given type: what `copystream import --event-type` publishes. Returns
 * NULL with "file:line: reason" in errstr. */
dataset *dataset_read_files(const char *sequences_path, const char *attributes_path,
                            event_type type, char *errstr, size_t errlen);

/* Reads the clickstream events of topic whose record timestamps are in
 * [from_ms, to_ms) (to_ms INT64_MAX: up to the end), each user's in the
 * order the service applies them, redeliveries (an event id seen before)
 * counted once and events without an item left out; and the items'
 * attributes from the catalog topic (topic.catalog), its latest record per
 * item. Kafka settings come from cfg; no consumer group is joined, so no
 * one's offsets move. Undecodable records are counted and skipped. Returns
 * NULL with errstr. */
typedef struct config config;
dataset *dataset_read_topic(const config *cfg, const char *topic, int64_t from_ms, int64_t to_ms,
                            char *errstr, size_t errlen);

void dataset_free(dataset *d);

static inline uint64_t dataset_user_len(const dataset *d, int32_t u) {
    return d->user_off[u + 1] - d->user_off[u];
}

#endif
