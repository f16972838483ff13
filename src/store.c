/* store.c -- users' state in Redis; see store.h for the key layout and the
 * compare-and-set protocol.
 *
 * Every call is one pipelined round trip: commands are appended to hiredis'
 * output buffer, then all replies are read. The write script is loaded once
 * per connection and invoked with EVALSHA; a NOSCRIPT reply (Redis restarted
 * and lost its script cache) reloads it and retries those writes. */
#include "store.h"

#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "log.h"
#include "util.h"

/* KEYS[1] the user's hash. ARGV[1] the version the state was read at,
 * ARGV[2] the TTL in seconds, ARGV[3] how many fields to delete, then those
 * field names, then field/value pairs to set. */
static const char store_write_lua[] =
    "local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')\n"
    "if v ~= tonumber(ARGV[1]) then return {0, v} end\n"
    "local ndel = tonumber(ARGV[3])\n"
    "if ndel > 0 then redis.call('HDEL', KEYS[1], unpack(ARGV, 4, 3 + ndel)) end\n"
    "v = v + 1\n"
    "if #ARGV > 3 + ndel then\n"
    "  redis.call('HSET', KEYS[1], 'v', v, unpack(ARGV, 4 + ndel))\n"
    "else\n"
    "  redis.call('HSET', KEYS[1], 'v', v)\n"
    "end\n"
    "redis.call('EXPIRE', KEYS[1], ARGV[2])\n"
    "return {1, v}\n";

struct store {
    redisContext *ctx;        /* NULL while disconnected */
    char *host;
    int port;
    char *user;               /* NULL: default user */
    char *password;           /* NULL: no AUTH */
    int db;
    int timeout_ms;
    char *prefix;
    int64_t ttl_s;
    char sha[41];             /* of store_write_lua */
    uint64_t round_trips;
    userstate_fields fields;  /* scratch for encoding one write */
    buf keys;                 /* scratch for hash keys */
    const char **argv;        /* scratch argument vectors */
    size_t *argvlen;
    size_t argv_cap;
};

static void store_disconnect(store *st) {
    if (st->ctx) redisFree(st->ctx);
    st->ctx = NULL;
}

/* Sorts a Redis error reply into retriable or fatal: the retriable ones are
 * the states a healthy deployment passes through (restart, failover, memory
 * pressure). */
static store_status store_classify(const char *err) {
    static const char *const retry[] = {"LOADING", "BUSY", "TRYAGAIN", "READONLY",
                                        "CLUSTERDOWN", "MASTERDOWN", "OOM", "NOSCRIPT"};
    for (size_t i = 0; i < UTIL_ARRAY_LEN(retry); i++)
        if (strncmp(err, retry[i], strlen(retry[i])) == 0) return STORE_RETRY;
    return STORE_FATAL;
}

/* Runs one command and checks for an error reply; returns the reply (caller
 * frees) or NULL with errstr and *status. */
static redisReply *store_command(store *st, store_status *status, char *errstr, size_t errlen,
                                 int argc, const char **argv, const size_t *argvlen) {
    redisReply *r = redisCommandArgv(st->ctx, argc, argv, argvlen);
    if (!r) {
        util_err(errstr, errlen, "redis %s:%d: %s", st->host, st->port, st->ctx->errstr);
        *status = STORE_RETRY;
        store_disconnect(st);
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        /* argv[0] only: later arguments may hold the password. */
        util_err(errstr, errlen, "redis %s: %s", argv[0], r->str);
        *status = store_classify(r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

static store_status store_connect(store *st, char *errstr, size_t errlen) {
    if (st->ctx) return STORE_OK;
    store_status status = STORE_RETRY;
    struct timeval tv = {st->timeout_ms / 1000, (st->timeout_ms % 1000) * 1000};
    st->ctx = redisConnectWithTimeout(st->host, st->port, tv);
    if (!st->ctx || st->ctx->err) {
        util_err(errstr, errlen, "redis %s:%d: %s", st->host, st->port,
                 st->ctx ? st->ctx->errstr : "cannot allocate context");
        store_disconnect(st);
        return STORE_RETRY;
    }
    redisSetTimeout(st->ctx, tv);
    redisReply *r;
    if (st->password) {
        const char *argv[3] = {"AUTH", st->user ? st->user : st->password, st->password};
        size_t argvlen[3] = {4, strlen(argv[1]), strlen(st->password)};
        r = store_command(st, &status, errstr, errlen, st->user ? 3 : 2, argv, argvlen);
        if (!r) {
            if (status != STORE_RETRY) status = STORE_FATAL;
            goto err;
        }
        freeReplyObject(r);
    }
    if (st->db) {
        char db[16];
        snprintf(db, sizeof db, "%d", st->db);
        const char *argv[2] = {"SELECT", db};
        size_t argvlen[2] = {6, strlen(db)};
        if (!(r = store_command(st, &status, errstr, errlen, 2, argv, argvlen))) goto err;
        freeReplyObject(r);
    }
    const char *argv[3] = {"SCRIPT", "LOAD", store_write_lua};
    size_t argvlen[3] = {6, 4, sizeof store_write_lua - 1};
    if (!(r = store_command(st, &status, errstr, errlen, 3, argv, argvlen))) goto err;
    if (r->type != REDIS_REPLY_STRING || r->len != 40) {
        freeReplyObject(r);
        util_err(errstr, errlen, "redis SCRIPT LOAD: unexpected reply");
        status = STORE_FATAL;
        goto err;
    }
    memcpy(st->sha, r->str, 40);
    st->sha[40] = '\0';
    freeReplyObject(r);
    return STORE_OK;
err:
    store_disconnect(st);
    return status;
}

store *store_new(const config *c, char *errstr, size_t errlen) {
    store *st = calloc(1, sizeof *st);
    if (!st) return NULL;
    const char *user = config_str(c, "redis.user");
    const char *password = config_str(c, "redis.password");
    st->host = strdup(config_str(c, "redis.host"));
    st->port = (int)config_int(c, "redis.port");
    st->user = user[0] ? strdup(user) : NULL;
    st->password = password[0] ? strdup(password) : NULL;
    st->db = (int)config_int(c, "redis.db");
    st->timeout_ms = (int)config_int(c, "redis.timeout_ms");
    st->prefix = strdup(config_str(c, "redis.key_prefix"));
    st->ttl_s = config_int(c, "state.ttl_s");
    if (!st->host || !st->prefix || (user[0] && !st->user) || (password[0] && !st->password)) {
        util_err(errstr, errlen, "out of memory");
        goto err;
    }
    if (st->user && !st->password) {
        util_err(errstr, errlen, "redis.user is set but redis.password is empty");
        goto err;
    }
    if (store_connect(st, errstr, errlen) != STORE_OK) goto err;
    return st;
err:
    store_free(st);
    return NULL;
}

void store_free(store *st) {
    if (!st) return;
    store_disconnect(st);
    free(st->host);
    free(st->user);
    if (st->password) {
        memset(st->password, 0, strlen(st->password));
        free(st->password);
    }
    free(st->prefix);
    userstate_fields_free(&st->fields);
    buf_free(&st->keys);
    free(st->argv);
    free(st->argvlen);
    free(st);
}

void store_user_key(const store *st, const char *user_id, buf *out) {
    buf_printf(out, "%s:u:{", st->prefix);
    if (strpbrk(user_id, "{}"))
        buf_printf(out, "#%016" PRIx64, util_hash(user_id));
    else
        buf_puts(out, user_id);
    buf_puts(out, "}");
}

static int store_argv_reserve(store *st, size_t n) {
    if (n <= st->argv_cap) return 0;
    size_t cap = st->argv_cap ? st->argv_cap : 64;
    while (cap < n) cap *= 2;
    const char **a = realloc(st->argv, cap * sizeof *a);
    if (!a) return -1;
    st->argv = a;
    size_t *l = realloc(st->argvlen, cap * sizeof *l);
    if (!l) return -1;
    st->argvlen = l;
    st->argv_cap = cap;
    return 0;
}

/* Reads n replies; on an I/O error drops the connection. Fills replies[]
 * (caller frees each non-NULL). */
static store_status store_read_replies(store *st, redisReply **replies, size_t n, char *errstr,
                                       size_t errlen) {
    st->round_trips++;
    for (size_t i = 0; i < n; i++) {
        void *r = NULL;
        if (redisGetReply(st->ctx, &r) != REDIS_OK) {
            util_err(errstr, errlen, "redis %s:%d: %s", st->host, st->port, st->ctx->errstr);
            store_disconnect(st);
            return STORE_RETRY;
        }
        replies[i] = r;
    }
    return STORE_OK;
}

static void store_free_replies(redisReply **replies, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (replies[i]) freeReplyObject(replies[i]);
}

store_status store_load(store *st, const char *const *user_ids, user_state *const *states,
                        size_t n, char *errstr, size_t errlen) {
    if (n == 0) return STORE_OK;
    store_status status = store_connect(st, errstr, errlen);
    if (status != STORE_OK) return status;
    redisReply **replies = calloc(n, sizeof *replies);
    if (!replies) return util_err(errstr, errlen, "out of memory"), STORE_RETRY;
    for (size_t i = 0; i < n; i++) {
        buf_reset(&st->keys);
        store_user_key(st, user_ids[i], &st->keys);
        const char *argv[2] = {"HGETALL", st->keys.p};
        size_t argvlen[2] = {7, st->keys.len};
        redisAppendCommandArgv(st->ctx, 2, argv, argvlen);
    }
    status = store_read_replies(st, replies, n, errstr, errlen);
    for (size_t i = 0; status == STORE_OK && i < n; i++) {
        redisReply *r = replies[i];
        if (r->type == REDIS_REPLY_ERROR) {
            util_err(errstr, errlen, "redis HGETALL for user %s: %s", user_ids[i], r->str);
            status = store_classify(r->str);
            break;
        }
        if (r->type != REDIS_REPLY_ARRAY || r->elements % 2) {
            util_err(errstr, errlen, "redis HGETALL for user %s: unexpected reply", user_ids[i]);
            status = STORE_FATAL;
            break;
        }
        user_state *s = states[i];
        for (size_t k = 0; k < r->elements; k += 2) {
            redisReply *f = r->element[k], *v = r->element[k + 1];
            if (f->len == 1 && f->str[0] == 'v') {
                s->version = strtoull(v->str, NULL, 10);
                continue;
            }
            char why[160];
            if (userstate_decode_field(s, f->str, f->len, v->str, v->len, why, sizeof why) < 0) {
                util_err(errstr, errlen, "state of user %s: %s", user_ids[i], why);
                status = STORE_FATAL;
                break;
            }
        }
        userstate_mark_clean(s);
    }
    store_free_replies(replies, n);
    free(replies);
    return status;
}

/* Appends the EVALSHA of write w. Returns 0 or -1 (out of memory). */
static int store_append_write(store *st, const store_write *w) {
    char expected[24], ttl[24], ndel[24];
    userstate_fields_reset(&st->fields);
    if (userstate_encode(w->state, w->state->dirty, &st->fields) < 0) return -1;
    size_t argc = 8 + w->n_del + 2 * st->fields.n;
    if (store_argv_reserve(st, argc) < 0) return -1;
    buf_reset(&st->keys);
    store_user_key(st, w->user_id, &st->keys);
    snprintf(expected, sizeof expected, "%" PRIu64, w->state->version);
    snprintf(ttl, sizeof ttl, "%" PRId64, st->ttl_s);
    snprintf(ndel, sizeof ndel, "%zu", w->n_del);
    size_t a = 0;
    const char **argv = st->argv;
    size_t *len = st->argvlen;
#define STORE_ARG(s, l) (argv[a] = (s), len[a] = (l), a++)
    STORE_ARG("EVALSHA", 7);
    STORE_ARG(st->sha, 40);
    STORE_ARG("1", 1);
    STORE_ARG(st->keys.p, st->keys.len);
    STORE_ARG(expected, strlen(expected));
    STORE_ARG(ttl, strlen(ttl));
    STORE_ARG(ndel, strlen(ndel));
    for (size_t i = 0; i < w->n_del; i++) STORE_ARG(w->del[i], strlen(w->del[i]));
    for (size_t i = 0; i < st->fields.n; i++) {
        STORE_ARG(st->fields.v[i].name, strlen(st->fields.v[i].name));
        STORE_ARG(st->fields.v[i].value.p ? st->fields.v[i].value.p : "",
                  st->fields.v[i].value.len);
    }
#undef STORE_ARG
    return redisAppendCommandArgv(st->ctx, (int)a, argv, len) == REDIS_OK ? 0 : -1;
}

static int store_append_purge(store *st, const store_purge *p) {
    if (store_argv_reserve(st, 2 + p->n) < 0) return -1;
    buf_reset(&st->keys);
    store_user_key(st, p->user_id, &st->keys);
    st->argv[0] = "HDEL";
    st->argvlen[0] = 4;
    st->argv[1] = st->keys.p;
    st->argvlen[1] = st->keys.len;
    for (size_t i = 0; i < p->n; i++) {
        st->argv[2 + i] = p->fields[i];
        st->argvlen[2 + i] = strlen(p->fields[i]);
    }
    return redisAppendCommandArgv(st->ctx, (int)(2 + p->n), st->argv, st->argvlen) == REDIS_OK
               ? 0
               : -1;
}

static int store_reload_script(store *st, char *errstr, size_t errlen) {
    store_status status;
    const char *argv[3] = {"SCRIPT", "LOAD", store_write_lua};
    size_t argvlen[3] = {6, 4, sizeof store_write_lua - 1};
    redisReply *r = store_command(st, &status, errstr, errlen, 3, argv, argvlen);
    if (!r) return -1;
    freeReplyObject(r);
    return 0;
}

store_status store_write_batch(store *st, store_write *w, size_t n, const store_purge *p,
                               size_t np, char *errstr, size_t errlen) {
    size_t total = n + np;
    if (total == 0) return STORE_OK;
    store_status status = store_connect(st, errstr, errlen);
    if (status != STORE_OK) return status;
    redisReply **replies = calloc(total, sizeof *replies);
    if (!replies) return util_err(errstr, errlen, "out of memory"), STORE_RETRY;
    int noscript_retry = 0;
    for (size_t i = 0; i < n; i++) {
        w[i].conflict = 0;
        if (store_append_write(st, &w[i]) < 0) goto oom;
    }
    for (size_t i = 0; i < np; i++)
        if (store_append_purge(st, &p[i]) < 0) goto oom;
    status = store_read_replies(st, replies, n + np, errstr, errlen);
    for (int attempt = 0; status == STORE_OK; attempt++) {
        size_t noscript = 0;
        for (size_t i = 0; i < n; i++) {
            redisReply *r = replies[i];
            if (!r) continue;
            if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0) {
                noscript++;
                continue;
            }
            if (r->type == REDIS_REPLY_ERROR) {
                util_err(errstr, errlen, "redis write for user %s: %s", w[i].user_id, r->str);
                status = store_classify(r->str);
                break;
            }
            if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
                r->element[0]->type != REDIS_REPLY_INTEGER ||
                r->element[1]->type != REDIS_REPLY_INTEGER) {
                util_err(errstr, errlen, "redis write for user %s: unexpected reply",
                         w[i].user_id);
                status = STORE_FATAL;
                break;
            }
            if (r->element[0]->integer == 1) {
                w[i].state->version = (uint64_t)r->element[1]->integer;
                userstate_mark_clean(w[i].state);
            } else {
                w[i].conflict = 1;
            }
            freeReplyObject(r);
            replies[i] = NULL;
        }
        for (size_t i = n; status == STORE_OK && i < n + np; i++) {
            if (replies[i]->type == REDIS_REPLY_ERROR) {
                util_err(errstr, errlen, "redis HDEL: %s", replies[i]->str);
                status = store_classify(replies[i]->str);
            }
            freeReplyObject(replies[i]);
            replies[i] = NULL;
        }
        np = 0; /* purges are done after the first pass */
        if (status != STORE_OK || noscript == 0) break;
        /* Redis lost its script cache (a restart): load it and resend only
         * the writes it refused. Once is enough; twice means something else. */
        if (attempt > 0 || store_reload_script(st, errstr, errlen) < 0) {
            if (status == STORE_OK) status = STORE_RETRY;
            if (attempt > 0) util_err(errstr, errlen, "redis keeps refusing the write script");
            break;
        }
        noscript_retry = 1;
        size_t k = 0;
        size_t *idx = malloc(noscript * sizeof *idx);
        if (!idx) goto oom;
        for (size_t i = 0; i < n; i++) {
            if (!replies[i]) continue;
            freeReplyObject(replies[i]);
            replies[i] = NULL;
            idx[k++] = i;
            if (store_append_write(st, &w[i]) < 0) {
                free(idx);
                goto oom;
            }
        }
        redisReply **again = calloc(noscript, sizeof *again);
        if (!again) {
            free(idx);
            goto oom;
        }
        status = store_read_replies(st, again, noscript, errstr, errlen);
        for (size_t j = 0; j < noscript; j++) replies[idx[j]] = again[j];
        free(again);
        free(idx);
    }
    if (noscript_retry) log_info("store", "reloaded the write script into Redis");
    store_free_replies(replies, total);
    free(replies);
    return status;
oom:
    /* Some commands may already sit in hiredis' buffer; a fresh connection
     * is the simplest way to make sure none of them is sent half-formed. */
    store_disconnect(st);
    store_free_replies(replies, total);
    free(replies);
    util_err(errstr, errlen, "out of memory");
    return STORE_RETRY;
}

store_status store_ping(store *st, char *errstr, size_t errlen) {
    store_status status = store_connect(st, errstr, errlen);
    if (status != STORE_OK) return status;
    const char *argv[1] = {"PING"};
    size_t argvlen[1] = {4};
    redisReply *r = store_command(st, &status, errstr, errlen, 1, argv, argvlen);
    if (!r) return status;
    freeReplyObject(r);
    st->round_trips++;
    return STORE_OK;
}

uint64_t store_round_trips(const store *st) { return st->round_trips; }
