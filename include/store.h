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
 * Outbox index. A copy waits in its user's hash (field "o.<partition>.<offset>")
 * until the offset that caused it is committed; then it is deleted. So that a
 * crash between the commit and the deletion leaves nothing behind, every
 * outbox copy is also listed in <prefix>:outbox:<partition>, a sorted set
 * scored by offset with members "<offset>:<user id>". Whoever owns the
 * partition next reads the entries below the committed offset and deletes
 * them. The index is a hint kept in a slot of its own: an entry whose copy is
 * already gone costs one no-op HDEL.
 *
 * Writes are compare-and-set on "v": a write names the version its state was
 * read at, and the script applies it only if the hash still has that version,
 * then bumps it and refreshes the TTL. A state computed from a stale read --
 * another instance took the partition over, or this instance's cache is old
 * -- is refused instead of overwriting newer data; the caller re-reads and
 * re-applies, and the watermarks inside the state make re-applying harmless.
 *
 * Writes can be sent without waiting (store_write_send) and their replies
 * read later (store_write_wait): the service stages its next batch while
 * Redis executes the previous one's writes.
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

#include <hiredis.h>

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

/* A new connection to the config's Redis made as store_new() makes its own:
 * the password from redis.password or redis.password_file, AUTH (as
 * redis.user when set), SELECT redis.db, the same errors. For other
 * modules' connections (the bandit's); the caller owns it (redisFree).
 * NULL with errstr. */
redisContext *store_connect_config(const config *c, char *errstr, size_t errlen);

/* A store that keeps the users' hashes in process memory instead of Redis,
 * for a run that must write nothing to Redis (`copystream replay
 * --dry-run`). It keeps the same fields, versions, compare-and-set and
 * outbox deletions as Redis would -- states go through userstate_encode()
 * and userstate_decode_field() both ways -- so the service computes exactly
 * what it would against an empty Redis prefix. Nothing expires and nothing
 * outlives the store; every call succeeds unless memory runs out. */
store *store_new_memory(const config *c, char *errstr, size_t errlen);

/* Deletes every key under the store's prefix (<prefix>:*, the user hashes
 * and outbox indexes), with SCAN and UNLINK, adding their number to
 * *deleted. For the scratch prefix of a finished replay: never point it at
 * a prefix something else still uses. */
store_status store_delete_all(store *st, uint64_t *deleted, char *errstr, size_t errlen);

/* Reads the hashes of n users in one pipelined round trip and decodes each
 * into states[i], which must be initialised and empty. A user without a hash
 * gets an empty state with version 0. A malformed hash is STORE_FATAL with
 * the user and field named. */
store_status store_load(store *st, const char *const *user_ids, user_state *const *states,
                        size_t n, char *errstr, size_t errlen);

/* One user's write: the fields of state selected by its dirty bits, written
 * if the hash is still at state->version. Its fresh outbox copies are added
 * to the outbox index in the same pipeline, ahead of the write. */
typedef struct {
    const char *user_id;
    user_state *state;
} store_write;

/* An outbox copy: whose, and the source position that caused it. */
typedef struct {
    const char *user_id;
    int32_t partition;
    int64_t offset;
} store_outbox_ref;

/* Sends n writes and the deletion of np committed outbox copies (from the
 * hash and from the index; no CAS needed, deleting twice is harmless) as one
 * pipeline, without waiting for the replies, so that Redis executes them
 * while the caller works on something else. The states are updated
 * optimistically: version + 1, marked clean; they may move or change right
 * away. Exactly one store_write_wait() must follow before any other call. */
store_status store_write_send(store *st, store_write *w, size_t n, const store_outbox_ref *purge,
                              size_t np, char *errstr, size_t errlen);

/* Queues one more command (copied) to go out with the next
 * store_write_send(), in its pipeline: the indexes other modules keep beside
 * the users' hashes (trigger.c's due sets and watchers), made durable before
 * the batch that staged them is committed. Their replies are checked by
 * store_write_wait() like the rest: an error fails the batch. They must be
 * idempotent, since a failed batch stages them again. Returns 0 or -1
 * (memory; nothing queued). */
int store_stage(store *st, int argc, const char **argv, const size_t *argvlen);
/* Drops the staged commands (after a failed batch: its re-run stages them
 * again). */
void store_unstage(store *st);

/* Reads the replies of the last store_write_send(). STORE_OK with
 * *conflicts = 0 means every write was applied as sent. A conflict (the hash
 * had another version: another instance wrote it) or an error means the
 * optimistic states of that send are wrong: the caller must drop them and
 * re-read. After STORE_RETRY some writes may have been applied. */
store_status store_write_wait(store *st, size_t *conflicts, char *errstr, size_t errlen);

/* Is a send waiting for its store_write_wait()? */
int store_write_pending(const store *st);

/* store_write_send() then store_write_wait(). */
store_status store_write_batch(store *st, store_write *w, size_t n, const store_outbox_ref *purge,
                               size_t np, size_t *conflicts, char *errstr, size_t errlen);

/* The key of user_id's hash under prefix (see the key layout above) into out,
 * appended: for the modules that must find it without a store (privacy.c). */
void store_user_key_for(const char *prefix, const char *user_id, buf *out);

/* Calls fn for every outbox index entry of partition with an offset below
 * `below` (one round trip). The user id is not NUL-terminated. */
typedef void (*store_outbox_fn)(const char *user_id, size_t user_len, int64_t offset, void *ud);
store_status store_outbox_scan(store *st, int32_t partition, int64_t below, store_outbox_fn fn,
                               void *ud, char *errstr, size_t errlen);


#endif
