/* rconn.c -- a plain Redis connection from the redis.* keys; see rconn.h. */
#include "rconn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"
#include "util.h"

struct rconn {
    redisContext *ctx;        /* NULL while disconnected */
    const config *cfg;        /* the endpoint and credentials (store_connect_config) */
    const char *host;         /* for messages; in cfg */
    int port;
    char *prefix;
};

rconn *rconn_new(const config *c, char *errstr, size_t errlen) {
    rconn *r = calloc(1, sizeof *r);
    if (!r || !(r->prefix = strdup(config_str(c, "redis.key_prefix")))) {
        util_err(errstr, errlen, "out of memory");
        free(r);
        return NULL;
    }
    r->cfg = c;
    r->host = config_str(c, "redis.host");
    r->port = (int)config_int(c, "redis.port");
    return r;
}

void rconn_drop(rconn *r) {
    if (r->ctx) redisFree(r->ctx);
    r->ctx = NULL;
}

void rconn_free(rconn *r) {
    if (!r) return;
    rconn_drop(r);
    free(r->prefix);
    free(r);
}

const char *rconn_prefix(const rconn *r) { return r->prefix; }

/* store.c's connection, made again after every drop: the same password
 * sources (the file re-read, so a rotated secret is picked up), AUTH,
 * SELECT and errors. */
static int rconn_connect(rconn *r, char *errstr, size_t errlen) {
    if (!r->ctx) r->ctx = store_connect_config(r->cfg, errstr, errlen);
    return r->ctx ? 0 : -1;
}

redisReply *rconn_command(rconn *r, char *errstr, size_t errlen, int argc, const char **argv,
                          const size_t *argvlen) {
    if (rconn_append(r, errstr, errlen, argc, argv, argvlen) < 0) return NULL;
    redisReply *rep = rconn_get(r, errstr, errlen);
    if (rep && rep->type == REDIS_REPLY_ERROR) {
        util_err(errstr, errlen, "redis %s: %s", argv[0], rep->str);
        freeReplyObject(rep);
        return NULL;
    }
    return rep;
}

int rconn_append(rconn *r, char *errstr, size_t errlen, int argc, const char **argv,
                 const size_t *argvlen) {
    if (rconn_connect(r, errstr, errlen) < 0) return -1;
    if (redisAppendCommandArgv(r->ctx, argc, argv, argvlen) != REDIS_OK) {
        util_err(errstr, errlen, "redis: out of memory");
        rconn_drop(r); /* a half-written command may sit in the buffer */
        return -1;
    }
    return 0;
}

redisReply *rconn_get(rconn *r, char *errstr, size_t errlen) {
    if (!r->ctx) {
        util_err(errstr, errlen, "redis %s:%d: connection lost", r->host, r->port);
        return NULL;
    }
    void *rep = NULL;
    if (redisGetReply(r->ctx, &rep) != REDIS_OK || !rep) {
        util_err(errstr, errlen, "redis %s:%d: %s", r->host, r->port, r->ctx->errstr);
        rconn_drop(r);
        return NULL;
    }
    return rep;
}
