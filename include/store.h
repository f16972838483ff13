/* store.h -- users' state in Redis: one hash per user, read and written in
 * pipelined batches.
 *
 * Key layout. Every key copystream writes for a user carries the user id as
 * a Redis Cluster hash tag, so all of them live in one slot and one Lua
 * script may touch them atomically:  <prefix>:u:{<user id>}  is the user's
 * hash (fields in userstate.h, plus "v", the version this module owns).
 * User ids containing '{' or '}' would break the tag, so for those the tag is
 * the hex XXH3 of the id instead (documented in docs/ARCHITECTURE.md).
 *
 * Writes are compare-and-set on "v": a write names the version its state was
 * read at, and the script applies it only if the hash still has that version,
 * then bumps it and refreshes the TTL. A state computed from a stale read --
 * another instance took the partition over, or this instance's cache is old
 * -- is refused instead of overwriting newer data; the caller re-reads and
 * re-applies, and the watermarks inside the state make re-applying harmless.
 *
 * Errors: STORE_RETRY means the outcome is unknown or transient (connection
 * lost, timeout, Redis loading or read-only after a failover); some writes of
 * the batch may have been applied and the caller must re-read before trying
 * again. STORE_FATAL means retrying will not help without an operator
 * (authentication refused, a key of the wrong type). The connection is
 * re-established on the next call after an error. */
#ifndef COPYSTREAM_STORE_H
#define COPYSTREAM_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "config.h"
#include "userstate.h"

typedef enum { STORE_OK = 0, STORE_RETRY, STORE_FATAL } store_status;

typedef struct store store;

/* Connects (redis.* keys), authenticates, selects the database and loads the
 * write script. Returns NULL with errstr when Redis cannot be reached or
 * refuses us; errstr never contains the password. */
store *store_new(const config *c, char *errstr, size_t errlen);
void store_free(store *st);

/* Appends the hash key of user_id to out. */
void store_user_key(const store *st, const char *user_id, buf *out);

/* Reads the hashes of n users in one pipelined round trip and decodes each
 * into states[i], which must be initialised and empty. A user without a hash
 * gets an empty state with version 0. A malformed hash is STORE_FATAL with
 * the user and field named. */
store_status store_load(store *st, const char *const *user_ids, user_state *const *states,
                        size_t n, char *errstr, size_t errlen);

/* One user's write: the fields of state selected by its dirty bits, written
 * if the hash is still at state->version, plus extra fields to delete
 * (outbox entries already committed). */
typedef struct {
    const char *user_id;
    user_state *state;
    const char *const *del;   /* [n_del] field names to delete; may be NULL */
    size_t n_del;
    int conflict;             /* out: 1 when the hash had another version */
} store_write;

/* Deletes fields from a user's hash without a version check; used to drop
 * outbox copies once the offsets covering them are committed. Deleting an
 * already-absent field is harmless, so these need no CAS. */
typedef struct {
    const char *user_id;
    const char *const *fields; /* [n] */
    size_t n;
} store_purge;

/* Sends n writes and np purges in one pipelined round trip. For each write
 * that was applied, state->version becomes the new version and the state is
 * marked clean; a refused one has conflict = 1 and its state is untouched.
 * Returns STORE_OK when every reply arrived (conflicts included). */
store_status store_write_batch(store *st, store_write *w, size_t n, const store_purge *p,
                               size_t np, char *errstr, size_t errlen);

/* PING, for health checks and reconnection after an outage. */
store_status store_ping(store *st, char *errstr, size_t errlen);

/* Round trips made so far (each pipelined batch counts once). */
uint64_t store_round_trips(const store *st);

#endif
