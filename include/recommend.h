/* recommend.h -- the learned strategy: what the Transformer promotes.
 *
 * A recommender holds the model (model.h), the model states of the users
 * this instance owns (kvcache.h) and the scoring rows of catalog items the
 * model never saw. The service uses it in two calls per batch:
 *
 *   recommend_advance()  brings every user's model state up to date through
 *                        the events the batch appended to their sequence,
 *                        one position per event, all users of a round in one
 *                        batched step, and hands back the user state h after
 *                        each of those events;
 *   recommend_pick()     scores every item for a batch of such h at once
 *                        (one sgemm per chunk) and keeps each one's top k,
 *                        excluding what the user bought or dismissed, what is out of
 *                        stock or not in the catalog, and the item of the
 *                        triggering event.
 *
 * A user's state is a pure function of their events (the window policy in
 * model.h), so a cached state is used only when it covers exactly the events
 * before the batch; otherwise it is rebuilt from the sequence in Redis with
 * one prefill. Not thread-safe. */
#ifndef COPYSTREAM_RECOMMEND_H
#define COPYSTREAM_RECOMMEND_H

#include <stddef.h>
#include <stdint.h>

#include "catalog.h"
#include "strategy.h"
#include "userstate.h"

typedef struct recommender recommender;

/* Opens the model at path. max_batch bounds a step and a scoring chunk;
 * kv_budget_bytes the cached states; max_sequence is state.sequence_length,
 * which must hold a whole window for states to be rebuilt exactly. Returns
 * NULL with the reason in errstr. */
recommender *recommend_new(const char *path, int max_batch, size_t kv_budget_bytes,
                           size_t max_sequence, char *errstr, size_t errlen);
void recommend_free(recommender *r);

/* Loads the model at path in place of the current one. On success the
 * cached states (valid only with their model) are dropped and 1 is
 * returned; on failure the current model stays and -1 is returned with the
 * reason. */
int recommend_reload(recommender *r, const char *path, char *errstr, size_t errlen);

/* The version stamped on copies ("<checksum>" or "<checksum>@<time>"). */
const char *recommend_version(const recommender *r);
int recommend_dim(const recommender *r);

/* Forgets cached states: of one partition (revoked), or all (after a
 * failed batch, whose speculative states may be ahead of Redis). */
void recommend_drop_partition(recommender *r, int32_t partition);
void recommend_clear(recommender *r);
/* Drops the model state cached for one user (a forget request). */
void recommend_forget(recommender *r, const char *user_id);

/* One user's work in a batch. st is the state after the batch's events were
 * applied; seq_before its seq_total before. The k = st->seq_total -
 * seq_before events appended are the last k of st->seq. h must have room for
 * k * dim floats; row j receives the user state after the j-th of them (NaN
 * in row j when that event is no longer in the sequence and cannot be
 * computed). */
typedef struct {
    const char *user_id;
    int32_t partition;
    const user_state *st;
    uint64_t seq_before;
    float *h;
} recommend_work;

/* Advances every user of w[0..n). Returns 0, or -1 with errstr. */
int recommend_advance(recommender *r, const catalog *cat, recommend_work *w, size_t n,
                      char *errstr, size_t errlen);

/* One copy to fill: h (dim floats) after the triggering event, the user's
 * preferences as of that event (prefs: bought and dismissed items, affinities), the
 * event's item to leave out and the strategy parameters (k, reasons,
 * locale, event time). The result has the picks, their titles and the
 * reasons, as strategy_affinity() would give them. */
typedef struct {
    const float *h;
    const user_state *prefs;
    strategy_params params;
    strategy_result *out;
} recommend_query;

/* Answers q[0..n); a query with fewer than 1 pick (nothing qualifies) has
 * out->n_picks == 0. Returns 0, or -1 with errstr. */
int recommend_pick(recommender *r, const catalog *cat, recommend_query *q, size_t n,
                   char *errstr, size_t errlen);

#endif
