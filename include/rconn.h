/* rconn.h -- a plain Redis connection made from the redis.* keys.
 *
 * store.c and bandit.c keep connections of their own, tuned to their
 * pipelines. The modules that talk to Redis off the hot path -- the delayed
 * triggers (trigger.c) and privacy (privacy.c) -- share this small wrapper:
 * it connects on first use and again after an error, each time with
 * store_connect_config() -- so it authenticates (redis.password or
 * redis.password_file, redis.user), selects redis.db and reports errors
 * exactly as store.c does, never with the password. One rconn is used by one
 * thread. */
#ifndef COPYSTREAM_RCONN_H
#define COPYSTREAM_RCONN_H

#include <hiredis/hiredis.h>
#include <stddef.h>

#include "config.h"

typedef struct rconn rconn;

/* Keeps c, which must outlive the rconn, for the redis.* keys. Does not
 * connect yet: a wrong password or password file shows at the first
 * command. Returns NULL with errstr (memory). */
rconn *rconn_new(const config *c, char *errstr, size_t errlen);
void rconn_free(rconn *r);

/* redis.key_prefix. */
const char *rconn_prefix(const rconn *r);

/* Runs one command and returns its reply, which the caller frees with
 * freeReplyObject(); NULL with errstr on an I/O error (the connection is
 * dropped, the next call reconnects) or an error reply. */
redisReply *rconn_command(rconn *r, char *errstr, size_t errlen, int argc, const char **argv,
                          const size_t *argvlen);

/* Pipelining: queue commands with rconn_append(), then read exactly one
 * reply per command with rconn_get(), in order. rconn_append returns 0 or -1
 * (cannot connect, or out of memory; nothing queued). rconn_get returns the
 * reply, error replies included, or NULL with errstr on an I/O error (the
 * connection is dropped and the replies still owed with it). */
int rconn_append(rconn *r, char *errstr, size_t errlen, int argc, const char **argv,
                 const size_t *argvlen);
redisReply *rconn_get(rconn *r, char *errstr, size_t errlen);

/* Drops the connection, and with it any replies still owed. */
void rconn_drop(rconn *r);

#endif
