/* synth.h -- a sample catalog and a synthetic clickstream, without Kafka.
 *
 * For people who have no dataset of their own, and for benchmarks that need a
 * realistic input: a bilingual (zh-CN / en-US) catalog of a few hundred
 * fictional items in ten categories, and users who browse it in sessions
 * (searches, views, clicks, a cart-to-purchase funnel, favourites) on a
 * simulated clock: minutes between the events of a session, hours to days
 * between sessions. The catalog is the same for every seed, so it can be
 * republished to the compacted catalog topic at any time; the clickstream is
 * a pure function of (seed, users, start_ms): the same arguments give the same
 * events, ids included. Event ids contain the seed, so a rerun with the same
 * seed replays the same ids (which the service de-duplicates) and a new seed
 * gives new ones. */
#ifndef COPYSTREAM_SYNTH_H
#define COPYSTREAM_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#include "records.h"

typedef struct synth synth;

/* Builds the catalog and n_users users (1 .. SYNTH_MAX_USERS) whose first
 * events fall shortly after start_ms (Unix epoch ms). Returns NULL with the
 * reason in errstr on bad arguments or when memory runs out. */
#define SYNTH_MAX_USERS 10000000u
synth *synth_new(uint64_t seed, uint32_t n_users, int64_t start_ms, char *errstr, size_t errlen);
void synth_free(synth *s);

/* The catalog, owned by the generator and read-only for the caller: do not
 * catalog_item_clear() these. Every item has titles and every attribute has
 * phrases in both zh-CN and en-US. */
size_t synth_catalog_len(const synth *s);
const catalog_item *synth_catalog(const synth *s);

/* Generates the next event, in non-decreasing simulated time, into *ev. The
 * strings in *ev are borrowed from the generator and valid until the next
 * call or synth_free(): do not click_event_clear() it. A caller that wants
 * other timestamps (wall clock) may overwrite ev->ts_ms. */
void synth_next(synth *s, click_event *ev);

#endif
