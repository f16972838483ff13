/* rconn.c -- a plain Redis connection from the redis.* keys; see rconn.h. */
#include "rconn.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "util.h"

struct rconn {
    redisContext *ctx;        /* NULL while disconnected */
    char *host;
    int port;
    char *user;               /* NULL: the default user */
    char *password;           /* NULL: no AUTH */
    int db;
    int timeout_ms;
    char *prefix;
};

/* The first line of a password file, without its line end; NULL with errstr
 * (naming the file, never its content). */
static char *rconn_password_file(const char *path, char *errstr, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f) {
        util_err(errstr, errlen, "redis.password_file: cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, f);
    fclose(f);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
    if (n <= 0) {
        util_err(errstr, errlen, "redis.password_file: %s: the first line is empty", path);
        if (line) memset(line, 0, cap);
        free(line);
        return NULL;
    }
    return line;
}

char *rconn_password(const config *c, char *errstr, size_t errlen) {
    const char *file = config_str(c, "redis.password_file");
    if (file[0]) return rconn_password_file(file, errstr, errlen);
    char *p = strdup(config_str(c, "redis.password"));
    if (!p) util_err(errstr, errlen, "out of memory");
    return p;
}

rconn *rconn_new(const config *c, char *errstr, size_t errlen) {
    rconn *r = calloc(1, sizeof *r);
    if (!r) {
        util_err(errstr, errlen, "out of memory");
        return NULL;
    }
    const char *user = config_str(c, "redis.user");
    r->host = strdup(config_str(c, "redis.host"));
    r->port = (int)config_int(c, "redis.port");
    r->db = (int)config_int(c, "redis.db");
    r->timeout_ms = (int)config_int(c, "redis.timeout_ms");
    r->prefix = strdup(config_str(c, "redis.key_prefix"));
    r->user = user[0] ? strdup(user) : NULL;
    if (!r->host || !r->prefix || (user[0] && !r->user)) {
        util_err(errstr, errlen, "out of memory");
        goto err;
    }
    if (!(r->password = rconn_password(c, errstr, errlen))) goto err;
    if (!r->password[0]) {
        free(r->password);
        r->password = NULL;
    }
    return r;
err:
    rconn_free(r);
    return NULL;
}

void rconn_drop(rconn *r) {
    if (r->ctx) redisFree(r->ctx);
    r->ctx = NULL;
}

void rconn_free(rconn *r) {
    if (!r) return;
    rconn_drop(r);
    free(r->host);
    free(r->user);
    if (r->password) {
        memset(r->password, 0, strlen(r->password));
        free(r->password);
    }
    free(r->prefix);
    free(r);
}

const char *rconn_prefix(const rconn *r) { return r->prefix; }

/* A command on a fresh connection, before it is handed out. */
static int rconn_setup(rconn *r, char *errstr, size_t errlen, int argc, const char **argv,
                       const size_t *argvlen) {
    redisReply *rep = redisCommandArgv(r->ctx, argc, argv, argvlen);
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        /* argv[0] only: AUTH's arguments are the secret. */
        util_err(errstr, errlen, "redis %s:%d: %s: %s", r->host, r->port, argv[0],
                 rep ? rep->str : r->ctx->errstr);
        if (rep) freeReplyObject(rep);
        return -1;
    }
    freeReplyObject(rep);
    return 0;
}

static int rconn_connect(rconn *r, char *errstr, size_t errlen) {
    if (r->ctx) return 0;
    struct timeval tv = {r->timeout_ms / 1000, (r->timeout_ms % 1000) * 1000};
    r->ctx = redisConnectWithTimeout(r->host, r->port, tv);
    if (!r->ctx || r->ctx->err) {
        util_err(errstr, errlen, "redis %s:%d: %s", r->host, r->port,
                 r->ctx ? r->ctx->errstr : "cannot allocate context");
        goto err;
    }
    redisSetTimeout(r->ctx, tv);
    if (r->password) {
        const char *argv[3] = {"AUTH", r->user ? r->user : r->password, r->password};
        size_t argvlen[3] = {4, strlen(argv[1]), strlen(r->password)};
        if (rconn_setup(r, errstr, errlen, r->user ? 3 : 2, argv, argvlen) < 0) goto err;
    }
    if (r->db) {
        char db[16];
        snprintf(db, sizeof db, "%d", r->db);
        const char *argv[2] = {"SELECT", db};
        size_t argvlen[2] = {6, strlen(db)};
        if (rconn_setup(r, errstr, errlen, 2, argv, argvlen) < 0) goto err;
    }
    return 0;
err:
    rconn_drop(r);
    return -1;
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
