/* bandit.h -- the reaction loop: learning which copy works.
 *
 * Arms. A template variant (<intent>.<locale>.<variant>, template.h) shown to
 * one segment of users is an arm. Segments are few and stable on purpose, so
 * that each arm gathers evidence quickly:
 *   new        the user has no purchase yet
 *   returning  the user has bought at least once (the triggering event counts)
 * A copy records its arm and segment in the user's state (us_copyrec), so a
 * reaction is credited to what was actually shown, whatever the user did since.
 *
 * Choice. Thompson sampling: each arm's reward rate (clicks per impression,
 * or conversions per impression with bandit.reward = conversion) has the
 * posterior Beta(prior_alpha + rewards, prior_beta + impressions - rewards);
 * one draw per arm, the highest draw wins. The draws come from a PRNG seeded
 * by the XXH3 of the triggering event's id, and the Beta sampler (two Gamma
 * draws, Marsaglia-Tsang) uses only IEEE-exact arithmetic and sqrt -- log
 * and exp are computed here, not taken from libm -- so the same seed and the
 * same statistics give the same copy on every machine.
 *
 * Statistics. One Redis hash per intent, <prefix>:bandit:{<intent>}, shared by
 * every instance, fields <segment>.<locale>.<variant>.<counter>:
 *   sent     copies published
 *   imp      impressions (IMPRESSION reactions; a CLICK or DISMISS implies one)
 *   click    clicks          conv   conversions    dismiss  unsub
 * The holdout (holdout.percent of users, chosen by a stable hash of the user
 * id, get no copy at all) is the pseudo-variant "@holdout": its `sent` counts
 * copies withheld, its `conv` the conversions that followed them.
 *
 * Exactly once. Each copy counts at most once per counter: an update is "set
 * bit k of this copy's marker; if it was clear, add 1 to the field", for all
 * of a batch's updates in one Lua script, atomically. Markers are bits in
 * bitmap buckets, <prefix>:bandit:{<intent>}:m:<topic>:<partition>:<offset
 * >> 16>, a byte per source offset and a bit per counter (same hash tag as
 * the hash, so the script is legal on Redis Cluster), each kept
 * bandit.attribution_window_s + 1 day after its last update. So a
 * redelivered batch, an upstream duplicate, a second click on one copy and a
 * zombie instance replaying a partition all change nothing. A batch's
 * updates are sent, on the bandit's own connection, only once its state
 * writes are confirmed, and acknowledged before its offsets are committed:
 * what is counted is what the users' states durably record.
 *
 * Snapshot. Choosing reads no Redis: the statistics are read with one HGETALL
 * per intent, pipelined behind a batch's updates, at most every
 * bandit.refresh_s seconds (0: every batch). A choice therefore sees every
 * update that was committed bandit.refresh_s plus one batch earlier, from any
 * instance, and this instance's own updates since the last refresh are not
 * in it -- which slows learning by one refresh period, never corrupts it.
 *
 * Attribution. A reaction names its copy by copy id (<topic>:<partition>:
 * <offset> of the event that triggered it). It is attributed when the user's
 * state still holds that copy's record and the reaction's event time is
 * within bandit.attribution_window_s of the copy's; later it is "late", and a
 * copy id that names no record (malformed, another topic, forgotten) is
 * "unknown". A CONVERT without a copy id goes to the user's most recent copy
 * before it (last touch): that is also how a holdout user's conversion meets
 * its withheld copy. Late and unknown reactions are counted, never applied.
 *
 * A bandit is used by one thread. */
#ifndef COPYSTREAM_BANDIT_H
#define COPYSTREAM_BANDIT_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "records.h"
#include "template.h"
#include "userstate.h"

enum { BANDIT_SEG_NEW = 0, BANDIT_SEG_RETURNING, BANDIT__SEGMENTS };

/* "new", "returning"; NULL out of range. */
const char *bandit_segment_name(int segment);
/* The segment of a user as their state stands. */
int bandit_segment_of(const user_state *u);

enum { BANDIT_SENT = 0, BANDIT_IMP, BANDIT_CLICK, BANDIT_CONV, BANDIT_DISMISS, BANDIT_UNSUB,
       BANDIT__COUNTERS };

/* "sent", "imp", "click", "conv", "dismiss", "unsub"; NULL out of range. */
const char *bandit_counter_name(int counter);
/* The counter of a field-name suffix; -1 when unknown. */
int bandit_counter_parse(const char *name, size_t len);

/* The variant name under which the holdout is counted: a template variant
 * can never be called that (template.c allows letters, digits, '_', '-'). */
#define BANDIT_HOLDOUT "@holdout"

typedef struct {
    uint64_t n[BANDIT__COUNTERS];
} bandit_counts;

/* ---- deterministic sampling ------------------------------------------------ */

/* xoshiro256**, seeded through splitmix64. */
typedef struct {
    uint64_t s[4];
} bandit_rng;

void bandit_rng_seed(bandit_rng *r, uint64_t seed);
uint64_t bandit_rng_next(bandit_rng *r);
/* Uniform in the open interval (0, 1), 53 bits. */
double bandit_rng_uniform(bandit_rng *r);
/* Standard normal (Marsaglia's polar method). */
double bandit_rng_normal(bandit_rng *r);
/* Gamma(shape, 1), shape > 0 (Marsaglia-Tsang; shape < 1 by boosting). */
double bandit_gamma(bandit_rng *r, double shape);
/* Beta(a, b), a, b > 0, as G(a) / (G(a) + G(b)). */
double bandit_beta(bandit_rng *r, double a, double b);

/* Natural log and exp from +, -, *, / and frexp/ldexp only, so that they
 * give the same bits everywhere (relative error below 1e-15). bandit_log(x)
 * for x > 0 and finite; bandit_exp(x) is 0 below -745 and +inf above 709.8. */
double bandit_log(double x);
double bandit_exp(double x);

typedef struct {
    double alpha, beta;       /* the Beta prior, > 0 */
    int reward;               /* BANDIT_CLICK or BANDIT_CONV: the success counter */
} bandit_prior;

/* Thompson sampling among arms[0..n-1]: one Beta draw per arm, in order, from
 * a PRNG seeded with seed; returns the index of the highest (the lowest index
 * on a tie), or 0 when n is 0. Trials are impressions; successes above the
 * impressions are capped at them. */
size_t bandit_thompson(const bandit_counts *arms, size_t n, const bandit_prior *p, uint64_t seed);

/* ---- the service's bandit ---------------------------------------------------- */

typedef struct bandit bandit;

/* Reads the bandit.*, holdout.*, copy.dismissed_item_s and state.max_dismissed
 * keys and makes an arm for every template of t (which must outlive the
 * bandit) in every segment, plus the holdout of each (intent, locale). No
 * I/O: until bandit_refresh() every arm's counts are zero. copy_topic is the
 * clickstream topic: copy ids are <copy_topic>:<partition>:<offset>. Returns
 * NULL with errstr. */
bandit *bandit_new(const config *c, const templates *t, const char *copy_topic, char *errstr,
                   size_t errlen);
void bandit_free(bandit *b);
/* Copies made for delayed triggers (intent.h) have ids
 * <topic>:<partition>:<offset> of the triggers topic and are recorded at
 * partition + INTENT_TRIGGER_PARTITION_BASE: reactions naming them are
 * attributed too. Returns 0 or -1 (memory). */
int bandit_set_trigger_topic(bandit *b, const char *topic);
/* Connects to Redis (redis.*) if need be and reads the statistics now, in
 * one round trip per intent (start-up). Returns 0, or -1 with errstr. */
int bandit_refresh(bandit *b, char *errstr, size_t errlen);
/* The same, but only when bandit.refresh_s (at least 1 s) has passed since
 * the last read and no reply is owed: for an idle service, whose next batch
 * should not choose from statistics as old as its last busy moment. */
int bandit_refresh_if_due(bandit *b, char *errstr, size_t errlen);

/* Is this user in the holdout group? A stable function of the user id and
 * holdout.percent, the same on every instance and every run. */
int bandit_in_holdout(const bandit *b, const char *user_id);

/* Chooses the variant of a copy of (intent, locale) for a user in segment:
 * returns the index to render (templates_render's choice) and sets *arm to
 * the arm to record. seed is util_hash() of the triggering event's id. With
 * bandit.policy = uniform the choice is seed % variants, as before the
 * bandit. *arm is 0 when (intent, locale) has no template. */
size_t bandit_choose(const bandit *b, const char *intent, const char *locale, int segment,
                     uint64_t seed, uint64_t *arm);
/* The arm under which a copy withheld from a holdout user is recorded. */
uint64_t bandit_holdout_arm(const char *intent, const char *locale);

/* A copy was made (or withheld, holdout != 0) for the event at (partition,
 * offset) of the clickstream at event time ts_ms: records it in u for
 * attribution and stages its `sent` count. item is util_hash() of its first
 * promoted item (0: none). Returns 0 or -1 (memory). */
int bandit_copy_made(bandit *b, user_state *u, int32_t partition, int64_t offset, int64_t ts_ms,
                     uint64_t arm, uint64_t item, int segment, int holdout);
/* A redelivered event: stages its copy's `sent` count again, if the event
 * made or withheld a copy (the marker makes it count once). Returns 0 or -1. */
int bandit_copy_again(bandit *b, const user_state *u, int32_t partition, int64_t offset);

typedef enum {
    BANDIT_ATTRIBUTED = 0,
    BANDIT_LATE,
    BANDIT_UNKNOWN,
    BANDIT__ATTRIBUTIONS
} bandit_attribution;

/* Where reaction r belongs among u's copy records (see Attribution above):
 * returns BANDIT_ATTRIBUTED or BANDIT_LATE with *rec set, or BANDIT_UNKNOWN
 * with *rec NULL. Pure. */
bandit_attribution bandit_attribute(const user_state *u, const reaction *r, const char *copy_topic,
                                    int64_t window_ms, const us_copyrec **rec);

/* A reaction applied to u with outcome (us_outcome): for a new one
 * (US_APPLIED) its effects on the user -- a DISMISS hides its item (the
 * reaction's, else its copy's first one) for copy.dismissed_item_s, an
 * UNSUBSCRIBE revokes consent -- and its counts are staged; a redelivered one
 * (US_ALREADY_APPLIED) has its counts staged again, which the markers make
 * harmless; a duplicate does nothing. Returns the attribution, or -1
 * (memory). */
int bandit_on_reaction(bandit *b, user_state *u, const reaction *r, int outcome);

/* A batch's updates travel in three steps, each batch in turn (first in,
 * first out), so that a count is applied only once the state recording it
 * is durable:
 *   bandit_seal()  when the batch's state writes are sent: what was staged
 *                  since the last seal becomes the batch's updates;
 *   bandit_send()  once those writes are confirmed: sends the oldest sealed
 *                  batch's updates (and, when due, the snapshot re-read),
 *                  without waiting;
 *   bandit_wait()  before the batch's offsets are committed: reads the
 *                  replies of the oldest send and installs a re-read
 *                  snapshot.
 * bandit_seal() returns -1 only when misused (more than a few batches
 * sealed); the others return 0, or -1 with errstr when Redis failed: the
 * updates' outcome is unknown and the batch must run again, which the
 * markers make safe. */
int bandit_seal(bandit *b);
int bandit_send(bandit *b, char *errstr, size_t errlen);
/* From now on bandit_send() drops the batches' updates and writes nothing
 * (it may still read the statistics): for a run that must leave Redis as it
 * found it (`copystream replay --dry-run`). */
void bandit_set_read_only(bandit *b);
int bandit_wait(bandit *b, char *errstr, size_t errlen);
/* After a failed batch: drops staged, sealed and sent batches, and the
 * replies still owed (with the connection, re-opened on the next send). */
void bandit_discard(bandit *b);

/* The arms' counts as of the last snapshot, for tests and the report:
 * calls fn for each arm of every segment. */
typedef void (*bandit_arm_fn)(const char *intent, const char *segment, const char *locale,
                              const char *variant, const bandit_counts *c, void *ud);
void bandit_each_arm(const bandit *b, bandit_arm_fn fn, void *ud);

/* The updates staged since the last seal, in staging order, for tests: the
 * copy's source position, the arm's field prefix ("<segment>.<locale>.
 * <variant>.") and the counter. */
typedef void (*bandit_staged_fn)(int32_t partition, int64_t offset, const char *field_prefix,
                                 int counter, void *ud);
void bandit_each_staged(const bandit *b, bandit_staged_fn fn, void *ud);

/* Reads every statistics hash under redis.key_prefix (a SCAN, then one
 * HGETALL per intent) and calls fn per (intent, segment, locale, variant)
 * found, holdout included, in no particular order. For `copystream report`.
 * Returns 0, or -1 with errstr. */
int bandit_read_stats(const config *c, bandit_arm_fn fn, void *ud, char *errstr, size_t errlen);

#endif
