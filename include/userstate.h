/* userstate.h -- one user's state: what copystream remembers between events.
 *
 * A user_state is the in-memory form of the user's Redis hash (see store.h
 * for the key layout). It holds the recent event sequence, category and
 * attribute affinities that decay with event time, the items bought,
 * recently seen event ids (for upstream de-duplication), counters, the time
 * of the last copy, the user's locale, and the watermark of applied source
 * positions per (topic, partition) that makes redelivered events harmless.
 *
 * Everything here is a pure function of the state and its inputs: no I/O, no
 * wall clock. Event time drives decay and windows, so replaying the same
 * events over the same state gives the same result on any machine.
 *
 * Item, category and attribute ids are stored as util_hash() values. */
#ifndef COPYSTREAM_USERSTATE_H
#define COPYSTREAM_USERSTATE_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "records.h"

/* Tunables, from config (state.*, affinity.*, dedup.*). */
typedef struct {
    size_t max_sequence;      /* events kept in the sequence */
    size_t max_categories;    /* category affinities kept (strongest) */
    size_t max_attributes;    /* attribute affinities kept (strongest) */
    size_t max_bought;        /* purchased items remembered */
    double half_life_s;       /* affinity half-life, event time */
    float weight[EV__COUNT];  /* affinity added by one event of each type */
    int64_t dedup_window_ms;  /* an event id seen again within this is a duplicate */
    size_t dedup_max_ids;     /* ids remembered for that (most recent first) */
} userstate_params;

/* Fills the defaults documented in config/copystream.conf. */
void userstate_params_default(userstate_params *p);

typedef struct {
    uint64_t item;            /* util_hash(item_id) */
    uint32_t ts_s;            /* event time, Unix seconds */
    uint8_t type;             /* event_type */
} us_event;

typedef struct {
    uint64_t key;             /* util_hash(category) or util_hash(attribute id) */
    float score;              /* as of the vector's ref_s */
} us_affinity;

typedef struct {
    us_affinity *v;           /* [n], strongest first */
    size_t n, cap;
    uint32_t ref_s;           /* the event time the scores are decayed to */
} us_affinities;

typedef struct {
    uint64_t id;              /* util_hash(event_id) */
    uint32_t ts_s;
} us_seen;

enum { US_TOPIC_CLICKSTREAM = 0, US_TOPIC_REACTIONS = 1, US_TOPIC_TRIGGERS = 2 };

typedef struct {
    uint8_t topic;            /* US_TOPIC_* */
    int32_t partition;
    int64_t offset;           /* the last applied offset */
} us_watermark;

/* A copy written to Redis with the state change that caused it, so that a
 * redelivered event can republish exactly the same bytes (see store.h). */
typedef struct {
    int32_t partition;
    int64_t offset;           /* source position of the triggering event */
    buf msg;                  /* framed Avro PersonalizedCopy */
    int fresh;                /* added since load: not yet in Redis */
} us_outbox;

/* A copy made for the user -- or withheld from them, in the holdout group --
 * remembered so that reactions to it can be attributed to the template
 * variant and segment that made it (bandit.h). Its copy id is the source
 * position of the event that triggered it. */
enum { US_COPYREC_HOLDOUT = 1 };

typedef struct {
    int32_t partition;        /* clickstream position of the triggering event */
    int64_t offset;
    int64_t ts_ms;            /* its event time */
    uint64_t arm;             /* util_hash of the template id (bandit.h) */
    uint64_t item;            /* util_hash of the first promoted item; 0: none */
    uint8_t segment;          /* the user's bandit segment when the copy was made */
    uint8_t flags;            /* US_COPYREC_* */
} us_copyrec;

/* An item the user dismissed, not to be promoted to them until until_s. */
typedef struct {
    uint64_t item;            /* util_hash(item_id) */
    uint32_t until_s;         /* event time, Unix seconds */
} us_dismissed;

/* Copies counted against the frequency caps (policy.h): in the user's
 * current local hour and local day, numbered from the epoch. */
typedef struct {
    uint32_t hour, n_hour;
    uint32_t day, n_day;
} us_freq;

/* Which parts changed since load, so that a write sends only those fields. */
enum {
    US_DIRTY_SEQ = 1 << 0,
    US_DIRTY_CATS = 1 << 1,
    US_DIRTY_ATTRS = 1 << 2,
    US_DIRTY_BOUGHT = 1 << 3,
    US_DIRTY_SEEN = 1 << 4,
    US_DIRTY_COUNTS = 1 << 5,
    US_DIRTY_META = 1 << 6,   /* times, locale */
    US_DIRTY_WM = 1 << 7,
    US_DIRTY_OUTBOX = 1 << 8,
    US_DIRTY_COPYRECS = 1 << 9,
    US_DIRTY_OPTOUT = 1 << 10, /* dismissed items, consent */
    US_DIRTY_POLICY = 1 << 11, /* frequency counters, recently promoted items */
};

typedef struct {
    uint64_t version;         /* CAS version of the Redis hash; 0 = none yet */
    us_event *seq;            /* [n_seq], oldest first */
    size_t n_seq, cap_seq;
    uint64_t seq_total;       /* events ever appended to seq: a model state built
                               * from the sequence is current iff it covers this many */
    us_affinities cats;
    us_affinities attrs;
    uint64_t *bought;         /* [n_bought], most recent last */
    size_t n_bought, cap_bought;
    us_seen *seen;            /* [n_seen], most recent last */
    size_t n_seen, cap_seen;
    uint64_t events[EV__COUNT];     /* events counted, by type */
    uint64_t reactions[RX__COUNT];  /* reactions counted, by type */
    uint64_t duplicates;            /* upstream duplicates skipped */
    int64_t first_ms, last_ms;      /* event time of first and latest event */
    int64_t last_copy_ms;           /* event time of the event that last caused a copy */
    char locale[24];                /* last locale seen, "" when none */
    us_watermark *wm;         /* [n_wm] */
    size_t n_wm, cap_wm;
    us_outbox *outbox;        /* [n_outbox] */
    size_t n_outbox, cap_outbox;
    us_copyrec *copyrecs;     /* [n_copyrecs], oldest first */
    size_t n_copyrecs, cap_copyrecs;
    us_dismissed *dismissed;  /* [n_dismissed] */
    size_t n_dismissed, cap_dismissed;
    int64_t unsub_ms;         /* event time of the user's unsubscribe; 0: consent stands */
    us_freq freq;             /* copies in the current local hour and day */
    us_dismissed *promoted;   /* [n_promoted] items promoted lately, not again until */
    size_t n_promoted, cap_promoted;
    unsigned dirty;           /* US_DIRTY_* since load */
} user_state;

void userstate_init(user_state *s);
/* Frees what s owns and re-initialises it; a no-op on an initialised state. */
void userstate_clear(user_state *s);
/* Deep copy; returns 0 or -1 (dst is then cleared). */
int userstate_copy(user_state *dst, const user_state *src);
/* Copies what the strategies read of a user -- category and attribute
 * affinities, bought and dismissed items, locale -- into dst, reusing dst's arrays; the
 * rest of dst is left as it was. Returns 0 or -1 (memory). */
int userstate_copy_prefs(user_state *dst, const user_state *src);

/* Approximate heap bytes held, for cache budgets. */
size_t userstate_bytes(const user_state *s);

/* What applying one input did. */
typedef enum {
    US_APPLIED = 0,           /* new input: the state changed */
    US_ALREADY_APPLIED,       /* its source position is at or below the watermark */
    US_DUPLICATE,             /* upstream duplicate: same event id within the window */
} us_outcome;

/* Applies a click event read at (partition, offset) of the clickstream topic.
 * attr_ids[] are util_hash() ids of the item's attributes (from the catalog;
 * n_attrs may be 0 when the item is unknown). Updates the sequence,
 * affinities, bought items, counters, locale, seen ids and the watermark.
 * Returns the outcome, or -1 when memory runs out (s is then unchanged). */
int userstate_apply_click(user_state *s, const userstate_params *p, const click_event *e,
                          const uint64_t *attr_ids, size_t n_attrs, int32_t partition,
                          int64_t offset);

/* Applies a reaction read at (partition, offset) of the reactions topic:
 * counts it and advances that watermark. Returns like userstate_apply_click. */
int userstate_apply_reaction(user_state *s, const userstate_params *p, const reaction *r,
                             int32_t partition, int64_t offset);

/* Applies a delayed trigger (intent.h) read at (partition, offset) of the
 * triggers topic: advances that watermark and remembers its id like an
 * event id, so that a trigger produced twice (its scanner crashed between
 * producing it and removing it from Redis) is an upstream duplicate within
 * dedup.window_s. Returns like userstate_apply_click. */
int userstate_apply_trigger(user_state *s, const userstate_params *p, const char *trigger_id,
                            int64_t ts_ms, int32_t partition, int64_t offset);

/* The affinity scores of v decayed to event time at_s (v is not changed). */
float userstate_affinity_at(const us_affinities *v, uint64_t key, uint32_t at_s,
                            double half_life_s);

int userstate_has_bought(const user_state *s, uint64_t item);

/* May item not be promoted to the user at event time at_s: bought,
 * dismissed until after at_s, or promoted too lately to repeat (until after
 * at_s)? The strategies' exclusion rule. */
int userstate_excluded(const user_state *s, uint64_t item, uint32_t at_s);

/* Remembers a copy record (made by the caller), dropping records whose event
 * time is more than window_ms before the newest one's, and the oldest beyond
 * max. A record at the same position replaces the old one. Returns 0 or -1
 * (memory; s unchanged). */
int userstate_copyrec_add(user_state *s, const us_copyrec *r, size_t max, int64_t window_ms);
/* The record of the copy triggered at (partition, offset), or NULL. */
const us_copyrec *userstate_copyrec_find(const user_state *s, int32_t partition, int64_t offset);
/* The most recent record with an event time at or before at_ms (the last
 * touch before a reaction that names no copy), or NULL. */
const us_copyrec *userstate_copyrec_last(const user_state *s, int64_t at_ms);

/* Hides item from the user until event time until_s (a later until wins for
 * an item dismissed twice). Entries expired at now_s are dropped, and beyond
 * max the ones expiring first. Returns 0 or -1 (memory; s unchanged). */
int userstate_dismiss(user_state *s, uint64_t item, uint32_t until_s, uint32_t now_s, size_t max);
/* Remembers that item was promoted and is not to be promoted again until
 * until_s, like userstate_dismiss() (its own list, at most max). */
int userstate_promoted(user_state *s, uint64_t item, uint32_t until_s, uint32_t now_s,
                       size_t max);
/* Was item promoted lately (not to be again before until, after at_s)? */
int userstate_is_repeat(const user_state *s, uint64_t item, uint32_t at_s);

/* Records an unsubscribe at event time ts_ms: no copy is made for the user
 * from then on. The earliest unsubscribe counts. */
void userstate_revoke_consent(user_state *s, int64_t ts_ms);

/* Records a copy caused by the event at (partition, offset) in the outbox;
 * takes a copy of msg. Returns 0 or -1. */
int userstate_outbox_add(user_state *s, int32_t partition, int64_t offset, const void *msg,
                         size_t len);
/* The outbox entry for a source position, or NULL. */
const us_outbox *userstate_outbox_find(const user_state *s, int32_t partition, int64_t offset);
/* Drops outbox entries of partition below offset (already committed). */
void userstate_outbox_trim(user_state *s, int32_t partition, int64_t below_offset);

/* The applied watermark of (topic, partition), or -1 when none. */
int64_t userstate_watermark(const user_state *s, uint8_t topic, int32_t partition);

/* Hash fields: the state as (field, value) pairs of the user's Redis hash.
 * Field names: "seq", "cat", "attr", "buy", "seen" (versioned binary blobs),
 * "sq" (events ever appended to seq),
 * "n.<event type>", "r.<reaction type>", "dup" (counters, decimal), "t0",
 * "t1", "lc" (event times in ms), "loc" (locale), "w.c.<partition>",
 * "w.r.<partition>" and "w.t.<partition>" (applied offsets of clickstream,
 * reactions and triggers) and
 * "o.<partition>.<offset>" (outbox copies), "cp" and "dis" (copy records and
 * dismissed items, versioned blobs), "ns" (unsubscribe event time, ms), "fq"
 * (frequency counters) and "rp" (items promoted lately).
 * "v", the CAS version, belongs to store.c and is not among them. */
typedef struct {
    char name[48];
    buf value;
} us_field;

typedef struct {
    us_field *v;              /* [n]; entries past n keep their buffers for reuse */
    size_t n, cap;
} userstate_fields;

void userstate_fields_reset(userstate_fields *f);
void userstate_fields_free(userstate_fields *f);

/* Appends the fields selected by `which` (US_DIRTY_* bits; ~0u for all) to
 * out; only outbox entries added since load (fresh) are written. Returns 0 or
 * -1 when memory runs out. */
int userstate_encode(const user_state *s, unsigned which, userstate_fields *out);

/* Rebuilds s (which must be initialised and empty) from one field of the
 * hash; call once per field. Unknown fields are ignored so that newer
 * versions can add some. Returns 0, or -1 with a reason when a value is
 * malformed. */
int userstate_decode_field(user_state *s, const char *name, size_t name_len, const char *value,
                           size_t value_len, char *errstr, size_t errlen);

/* Forgets what changed: called after the state was written. */
void userstate_mark_clean(user_state *s);

/* The field name of an outbox entry, "o.<partition>.<offset>". */
void userstate_outbox_field(int32_t partition, int64_t offset, char out[48]);

#endif
