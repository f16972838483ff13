/* import.h -- the parser behind `copystream import`: a dataset in the
 * sequence format (`user item item ...` per line, in time order) plus an
 * optional item -> attribute ids JSON, held compactly so that a dataset of
 * millions of interactions costs a few bytes each. import_main publishes it;
 * the unit tests read it without Kafka. */
#ifndef COPYSTREAM_IMPORT_H
#define COPYSTREAM_IMPORT_H

#include <stdint.h>
#include <stdio.h>

#include "records.h"

typedef struct import_data import_data;

import_data *import_data_new(void);
void import_data_free(import_data *d);

/* Reads a sequence file (name is used in errors: "name:line: reason"),
 * stopping after limit_users users when limit_users > 0. Returns 0 or -1. */
int import_read_sequences(import_data *d, FILE *in, const char *name, size_t limit_users,
                          char *errstr, size_t errlen);
/* Reads the item -> attribute ids JSON; attributes of items not in the
 * sequences are skipped. Returns 0 or -1. */
int import_read_attributes(import_data *d, const char *path, char *errstr, size_t errlen);

void import_counts(const import_data *d, size_t *users, size_t *items, size_t *events);
size_t import_user_len(const import_data *d, size_t user);

/* Fill *out with views into d (valid until the next call; not to be
 * cleared): the catalog item `item`, and event `pos` of user `user`. */
void import_item(import_data *d, size_t item, int64_t updated_ms, catalog_item *out);
void import_event(import_data *d, size_t user, size_t pos, event_type type, int64_t start_ms,
                  int64_t spacing_ms, click_event *out);

#endif
