/* store.c -- users' state in Redis; see store.h for the key layout and the
 * compare-and-set protocol.
 *
 * Every call is one pipelined round trip: commands are appended to hiredis'
 * output buffer, then all replies are read. The write script is loaded once
 * per connection and invoked with EVALSHA; a NOSCRIPT reply (Redis restarted
 * and lost its script cache) reloads it and retries those writes.
 *
 * A memory store (store_new_memory) answers the same calls from a table of
 * users' hashes in the process instead; each public function hands over to
 * its store_mem_* twin when st->mem is set. */
#include "store.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "dict.h"
#include "log.h"
#include "util.h"

/* KEYS[1] the user's hash. ARGV[1] the version the state was read at,
 * ARGV[2] the TTL in seconds, then field/value pairs to set. */
static const char store_write_lua[] =
    "local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')\n"
    "if v ~= tonumber(ARGV[1]) then return {0, v} end\n"
    "v = v + 1\n"
    "redis.call('HSET', KEYS[1], 'v', v, unpack(ARGV, 3))\n"
    "redis.call('EXPIRE', KEYS[1], ARGV[2])\n"
    "return {1, v}\n";

/* What a pipelined reply answers, so replies can be read back in order. */
enum { STORE_R_WRITE, STORE_R_OTHER };

struct store {
    redisContext *ctx;        /* NULL while disconnected */
    char *host;
    int port;
    char *user;               /* NULL: default user */
    char *password;           /* NULL: no AUTH */
    const char *password_key; /* where it came from, for messages */
    int db;
    int timeout_ms;
    char *prefix;
    int64_t ttl_s;
    char sha[41];             /* of store_write_lua */
    /* replies owed by store_write_send(), read by store_write_wait() */
    size_t pending;
    int64_t *pend_expect;     /* [pending] version a write expects, -1: not a write */
    size_t *pend_user;        /* [pending] offset of its user id in pend_names */
    size_t pend_cap;
    buf pend_names;
    buf staged;               /* store_stage()d commands: (u32 argc, (u32 len, bytes)...)... */
    size_t n_staged;
    userstate_fields fields;  /* scratch for encoding one write */
    buf keys;                 /* scratch for hash keys */
    const char **argv;        /* scratch argument vectors */
    size_t *argvlen;
    size_t argv_cap;
    /* the memory store: user id -> store_mem_user*, or NULL for Redis */
    dict *mem;
    size_t mem_conflicts;     /* of the last send, for its wait */
};

/* ---- the memory store ------------------------------------------------------- */

/* One user's hash: its version and fields, as HSET would leave them. */
typedef struct {
    char *user_id;            /* the table's key */
    uint64_t version;
    us_field *f;              /* [n]; entries past n keep their buffers */
    size_t n, cap;
} store_mem_user;

static void store_mem_user_free(store_mem_user *u) {
    if (!u) return;
    for (size_t i = 0; i < u->cap; i++) buf_free(&u->f[i].value);
    free(u->f);
    free(u->user_id);
    free(u);
}

/* HSET of one field: sets its value, adding the field when new. */
static int store_mem_hset(store_mem_user *u, const us_field *in) {
    us_field *f = NULL;
    for (size_t i = 0; i < u->n && !f; i++)
        if (strcmp(u->f[i].name, in->name) == 0) f = &u->f[i];
    if (!f) {
        if (u->n == u->cap) {
            size_t cap = u->cap ? u->cap * 2 : 16;
            us_field *v = realloc(u->f, cap * sizeof *v);
            if (!v) return -1;
            memset(v + u->cap, 0, (cap - u->cap) * sizeof *v);
            u->f = v;
            u->cap = cap;
        }
        f = &u->f[u->n++];
        memcpy(f->name, in->name, sizeof f->name);
    }
    buf_reset(&f->value);
    return buf_append(&f->value, in->value.p ? in->value.p : "", in->value.len);
}

/* HDEL of one field. */
static void store_mem_hdel(store_mem_user *u, const char *name) {
    for (size_t i = 0; i < u->n; i++) {
        if (strcmp(u->f[i].name, name) != 0) continue;
        us_field gone = u->f[i];
        u->f[i] = u->f[u->n - 1];
        u->f[--u->n] = gone; /* its buffer stays for reuse */
        return;
    }
}

static store_status store_mem_load(store *st, const char *const *user_ids,
                                   user_state *const *states, size_t n, char *errstr,
                                   size_t errlen) {
    for (size_t i = 0; i < n; i++) {
        const store_mem_user *u = dict_get(st->mem, user_ids[i]);
        for (size_t k = 0; u && k < u->n; k++) {
            char why[160];
            const us_field *f = &u->f[k];
            if (userstate_decode_field(states[i], f->name, strlen(f->name), f->value.p,
                                       f->value.len, why, sizeof why) < 0) {
                util_err(errstr, errlen, "state of user %s: %s", user_ids[i], why);
                return STORE_FATAL;
            }
        }
        if (u) states[i]->version = u->version;
        userstate_mark_clean(states[i]);
    }
    return STORE_OK;
}

/* Applies the writes at once, compare-and-set as the script does it, and
 * keeps the number of conflicts for store_write_wait(). */
static store_status store_mem_send(store *st, store_write *w, size_t n,
                                   const store_outbox_ref *purge, size_t np, char *errstr,
                                   size_t errlen) {
    st->mem_conflicts = 0;
    for (size_t i = 0; i < n; i++) {
        user_state *s = w[i].state;
        store_mem_user *u = dict_get(st->mem, w[i].user_id);
        if (!u) {
            if (!(u = calloc(1, sizeof *u)) || !(u->user_id = strdup(w[i].user_id)) ||
                dict_set(st->mem, u->user_id, u) < 0) {
                store_mem_user_free(u);
                goto oom;
            }
        }
        if (u->version != s->version) {
            st->mem_conflicts++;
        } else {
            userstate_fields_reset(&st->fields);
            if (userstate_encode(s, s->dirty, &st->fields) < 0) goto oom;
            for (size_t k = 0; k < st->fields.n; k++)
                if (store_mem_hset(u, &st->fields.v[k]) < 0) goto oom;
            u->version++;
        }
        s->version++; /* optimistic, as against Redis */
        userstate_mark_clean(s);
    }
    for (size_t i = 0; i < np; i++) {
        store_mem_user *u = dict_get(st->mem, purge[i].user_id);
        char field[48];
        userstate_outbox_field(purge[i].partition, purge[i].offset, field);
        if (u) store_mem_hdel(u, field);
    }
    st->pending = 1;
    return STORE_OK;
oom:
    /* Some writes may have been applied: the caller re-reads, as after a
     * connection lost mid-pipeline. */
    util_err(errstr, errlen, "out of memory");
    return STORE_RETRY;
}

static store_status store_mem_scan(store *st, int32_t partition, int64_t below,
                                   store_outbox_fn fn, void *ud) {
    size_t pos = 0;
    const char *id;
    void *val;
    while (dict_next(st->mem, &pos, &id, &val)) {
        const store_mem_user *u = val;
        for (size_t k = 0; k < u->n; k++) {
            int32_t p;
            int64_t off;
            int used = 0;
            if (sscanf(u->f[k].name, "o.%" SCNd32 ".%" SCNd64 "%n", &p, &off, &used) == 2 &&
                !u->f[k].name[used] && p == partition && off < below)
                fn(u->user_id, strlen(u->user_id), off, ud);
        }
    }
    return STORE_OK;
}

static void store_mem_clear(store *st, uint64_t *deleted) {
    size_t pos = 0;
    const char *id;
    void *val;
    while (dict_next(st->mem, &pos, &id, &val)) {
        store_mem_user_free(val);
        (*deleted)++;
    }
    dict_clear(st->mem);
}

store *store_new_memory(const config *c, char *errstr, size_t errlen) {
    store *st = calloc(1, sizeof *st);
    if (!st || !(st->mem = dict_new()) ||
        !(st->prefix = strdup(config_str(c, "redis.key_prefix")))) {
        store_free(st);
        util_err(errstr, errlen, "out of memory");
        return NULL;
    }
    st->ttl_s = config_int(c, "state.ttl_s");
    return st;
}

/* ---- Redis ------------------------------------------------------------------- */

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
        if (strncmp(r->str, "NOAUTH", 6) == 0)
            /* Any command can meet this: Redis wants a password we were not given. */
            util_err(errstr, errlen,
                     "redis %s:%d requires authentication: set redis.password or "
                     "redis.password_file (and redis.user for an ACL user): %s",
                     st->host, st->port, r->str);
        else
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
    /* On every connection, so that a reconnect after Redis restarted or
     * dropped us is authenticated like the first. */
    if (st->password) {
        const char *argv[3] = {"AUTH", st->user ? st->user : st->password, st->password};
        size_t argvlen[3] = {4, strlen(argv[1]), strlen(st->password)};
        r = store_command(st, &status, errstr, errlen, st->user ? 3 : 2, argv, argvlen);
        if (!r) {
            if (status != STORE_RETRY) {
                /* Redis' reason (WRONGPASS, or ERR when it has no password
                 * set) never quotes the password; ours names the keys. */
                char why[256];
                const char *reason = strncmp(errstr, "redis AUTH: ", 12) ? errstr : errstr + 12;
                snprintf(why, sizeof why, "%s", reason);
                util_err(errstr, errlen,
                         "redis %s:%d refused authentication %s%s%s(check redis.user and %s): %s",
                         st->host, st->port, st->user ? "as user \"" : "",
                         st->user ? st->user : "", st->user ? "\" " : "", st->password_key,
                         why);
                status = STORE_FATAL;
            }
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

/* Reads the password from the first line of path (the line end is not part
 * of it), for secrets mounted as files. Returns a malloc'ed string or NULL
 * with errstr, which names the file but never quotes its content. */
static char *store_read_password_file(const char *path, char *errstr, size_t errlen) {
    char *line = NULL;
    size_t cap = 0;
    FILE *f = fopen(path, "r");
    if (!f) {
        util_err(errstr, errlen, "redis.password_file: cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    ssize_t n = getline(&line, &cap, f);
    int read_err = ferror(f);
    fclose(f);
    if (n < 0 && read_err) {
        util_err(errstr, errlen, "redis.password_file: cannot read %s", path);
        goto err;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
    if (n <= 0) {
        util_err(errstr, errlen, "redis.password_file: %s: the first line is empty", path);
        goto err;
    }
    return line;
err:
    if (line) {
        memset(line, 0, cap);
        free(line);
    }
    return NULL;
}

store *store_new(const config *c, char *errstr, size_t errlen) {
    store *st = calloc(1, sizeof *st);
    if (!st) return NULL;
    const char *user = config_str(c, "redis.user");
    const char *password = config_str(c, "redis.password");
    const char *password_file = config_str(c, "redis.password_file");
    st->host = strdup(config_str(c, "redis.host"));
    st->port = (int)config_int(c, "redis.port");
    st->user = user[0] ? strdup(user) : NULL;
    st->db = (int)config_int(c, "redis.db");
    st->timeout_ms = (int)config_int(c, "redis.timeout_ms");
    st->prefix = strdup(config_str(c, "redis.key_prefix"));
    st->ttl_s = config_int(c, "state.ttl_s");
    if (!st->host || !st->prefix || (user[0] && !st->user)) {
        util_err(errstr, errlen, "out of memory");
        goto err;
    }
    if (password[0] && password_file[0]) {
        util_err(errstr, errlen, "redis.password and redis.password_file are both set; keep one");
        goto err;
    }
    if (password_file[0]) {
        if (!(st->password = store_read_password_file(password_file, errstr, errlen))) goto err;
        st->password_key = "redis.password_file";
    } else if (password[0]) {
        if (!(st->password = strdup(password))) {
            util_err(errstr, errlen, "out of memory");
            goto err;
        }
        st->password_key = "redis.password";
    }
    if (st->user && !st->password) {
        util_err(errstr, errlen,
                 "redis.user is set but there is no password (redis.password or "
                 "redis.password_file)");
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
    if (st->mem) {
        uint64_t n = 0;
        store_mem_clear(st, &n);
        dict_free(st->mem);
    }
    store_disconnect(st);
    free(st->host);
    free(st->user);
    if (st->password) {
        memset(st->password, 0, strlen(st->password));
        free(st->password);
    }
    free(st->prefix);
    userstate_fields_free(&st->fields);
    buf_free(&st->staged);
    buf_free(&st->keys);
    free(st->argv);
    free(st->argvlen);
    free(st->pend_expect);
    free(st->pend_user);
    buf_free(&st->pend_names);
    free(st);
}

void store_user_key_for(const char *prefix, const char *user_id, buf *out) {
    buf_printf(out, "%s:u:{", prefix);
    if (strpbrk(user_id, "{}"))
        buf_printf(out, "#%016" PRIx64, util_hash(user_id));
    else
        buf_puts(out, user_id);
    buf_puts(out, "}");
}

static void store_user_key(const store *st, const char *user_id, buf *out) {
    store_user_key_for(st->prefix, user_id, out);
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

/* Replies owed to a send must be read first, in order. */
static store_status store_check_idle(const store *st, char *errstr, size_t errlen) {
    if (!st->pending) return STORE_OK;
    util_err(errstr, errlen, "redis: replies of a write are still pending");
    return STORE_FATAL;
}

store_status store_load(store *st, const char *const *user_ids, user_state *const *states,
                        size_t n, char *errstr, size_t errlen) {
    if (n == 0) return STORE_OK;
    if (store_check_idle(st, errstr, errlen) != STORE_OK) return STORE_FATAL;
    if (st->mem) return store_mem_load(st, user_ids, states, n, errstr, errlen);
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

static void store_outbox_key(const store *st, int32_t partition, buf *out) {
    buf_printf(out, "%s:outbox:%" PRId32, st->prefix, partition);
}

static void store_outbox_member(int64_t offset, const char *user_id, buf *out) {
    buf_printf(out, "%" PRId64 ":%s", offset, user_id);
}

/* One outbox index entry. */
typedef struct {
    int32_t partition;
    int64_t offset;
    const char *user_id;
} store_idx;

static int store_idx_cmp(const void *a, const void *b) {
    const store_idx *x = a, *y = b;
    return (x->partition > y->partition) - (x->partition < y->partition);
}

/* Appends, per partition, one ZADD (add) or ZREM (!add) of the entries'
 * index members. Sorts e. Returns the number of commands appended, or -1. */
static int store_append_index(store *st, int add, store_idx *e, size_t n) {
    int appended = 0;
    qsort(e, n, sizeof *e, store_idx_cmp);
    size_t *off = malloc((2 * n + 2) * sizeof *off);
    if (!off) return -1;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && e[j].partition == e[i].partition) j++;
        /* Build every string first, then point into the (now stable) buffer. */
        buf_reset(&st->keys);
        size_t k = 0;
        off[k++] = 0;
        store_outbox_key(st, e[i].partition, &st->keys);
        buf_put_u8(&st->keys, 0);
        for (size_t m = i; m < j; m++) {
            if (add) {
                off[k++] = st->keys.len;
                buf_printf(&st->keys, "%" PRId64, e[m].offset);
                buf_put_u8(&st->keys, 0);
            }
            off[k++] = st->keys.len;
            store_outbox_member(e[m].offset, e[m].user_id, &st->keys);
            buf_put_u8(&st->keys, 0);
        }
        if (!st->keys.p || store_argv_reserve(st, k + 1) < 0) goto err;
        st->argv[0] = add ? "ZADD" : "ZREM";
        st->argvlen[0] = 4;
        for (size_t a = 0; a < k; a++) {
            st->argv[a + 1] = st->keys.p + off[a];
            st->argvlen[a + 1] = strlen(st->keys.p + off[a]);
        }
        if (redisAppendCommandArgv(st->ctx, (int)k + 1, st->argv, st->argvlen) != REDIS_OK)
            goto err;
        appended++;
        i = j;
    }
    free(off);
    return appended;
err:
    free(off);
    return -1;
}

/* Appends the EVALSHA of write w. Returns 1, or -1 (out of memory). */
static int store_append_write(store *st, const store_write *w) {
    char expected[24], ttl[24];
    const user_state *s = w->state;
    userstate_fields_reset(&st->fields);
    if (userstate_encode(s, s->dirty, &st->fields) < 0) return -1;
    size_t argc = 6 + 2 * st->fields.n;
    if (store_argv_reserve(st, argc) < 0) return -1;
    buf_reset(&st->keys);
    store_user_key(st, w->user_id, &st->keys);
    snprintf(expected, sizeof expected, "%" PRIu64, s->version);
    snprintf(ttl, sizeof ttl, "%" PRId64, st->ttl_s);
    size_t a = 0;
    const char **argv = st->argv;
    size_t *len = st->argvlen;
#define STORE_ARG(str, l) (argv[a] = (str), len[a] = (l), a++)
    STORE_ARG("EVALSHA", 7);
    STORE_ARG(st->sha, 40);
    STORE_ARG("1", 1);
    STORE_ARG(st->keys.p, st->keys.len);
    STORE_ARG(expected, strlen(expected));
    STORE_ARG(ttl, strlen(ttl));
    for (size_t i = 0; i < st->fields.n; i++) {
        STORE_ARG(st->fields.v[i].name, strlen(st->fields.v[i].name));
        STORE_ARG(st->fields.v[i].value.p ? st->fields.v[i].value.p : "",
                  st->fields.v[i].value.len);
    }
#undef STORE_ARG
    return redisAppendCommandArgv(st->ctx, (int)a, argv, len) == REDIS_OK ? 1 : -1;
}

/* Appends the deletion of a committed outbox copy from its user's hash. */
static int store_append_hdel(store *st, const store_outbox_ref *p) {
    char field[48];
    userstate_outbox_field(p->partition, p->offset, field);
    buf_reset(&st->keys);
    store_user_key(st, p->user_id, &st->keys);
    const char *hdel[3] = {"HDEL", st->keys.p, field};
    size_t hdel_len[3] = {4, st->keys.len, strlen(field)};
    if (!st->keys.p || redisAppendCommandArgv(st->ctx, 3, hdel, hdel_len) != REDIS_OK) return -1;
    return 1;
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

static int store_pending_reserve(store *st, size_t n) {
    if (n <= st->pend_cap) return 0;
    size_t cap = st->pend_cap ? st->pend_cap : 256;
    while (cap < n) cap *= 2;
    int64_t *e = realloc(st->pend_expect, cap * sizeof *e);
    if (!e) return -1;
    st->pend_expect = e;
    size_t *o = realloc(st->pend_user, cap * sizeof *o);
    if (!o) return -1;
    st->pend_user = o;
    st->pend_cap = cap;
    return 0;
}

/* Records that the next reply answers a write of user_id expecting version
 * `expect`, or (expect < 0) another command. */
static void store_pending_add(store *st, int64_t expect, const char *user_id) {
    st->pend_expect[st->pending] = expect;
    st->pend_user[st->pending] = st->pend_names.len;
    buf_puts(&st->pend_names, user_id ? user_id : "(outbox)");
    buf_put_u8(&st->pend_names, 0);
    st->pending++;
}

int store_stage(store *st, int argc, const char **argv, const size_t *argvlen) {
    size_t mark = st->staged.len;
    int rc = buf_put_u32le(&st->staged, (uint32_t)argc);
    for (int i = 0; i < argc && !rc; i++)
        rc = buf_put_u32le(&st->staged, (uint32_t)argvlen[i]) ||
             buf_append(&st->staged, argv[i], argvlen[i]);
    if (rc) {
        st->staged.len = mark;
        return -1;
    }
    st->n_staged++;
    return 0;
}

void store_unstage(store *st) {
    buf_reset(&st->staged);
    st->n_staged = 0;
}

/* Appends the staged commands and forgets them. Returns how many, or -1. */
static int store_append_staged(store *st) {
    const uint8_t *p = (const uint8_t *)st->staged.p;
    size_t pos = 0, len = st->staged.len;
    int n = 0;
    while (pos < len) {
        uint32_t argc, l;
        if (buf_get_u32le(p, len, &pos, &argc) || store_argv_reserve(st, argc) < 0) return -1;
        for (uint32_t a = 0; a < argc; a++) {
            if (buf_get_u32le(p, len, &pos, &l)) return -1;
            st->argv[a] = (const char *)p + pos;
            st->argvlen[a] = l;
            pos += l;
        }
        if (redisAppendCommandArgv(st->ctx, (int)argc, st->argv, st->argvlen) != REDIS_OK)
            return -1;
        n++;
    }
    store_unstage(st);
    return n;
}

store_status store_write_send(store *st, store_write *w, size_t n, const store_outbox_ref *purge,
                              size_t np, char *errstr, size_t errlen) {
    if (st->pending)
        return util_err(errstr, errlen, "redis: a previous write is still pending"),
               STORE_FATAL;
    if (n + np + st->n_staged == 0) return STORE_OK;
    /* a store in memory keeps no indexes beside the users' hashes */
    if (st->mem) {
        store_unstage(st);
        return store_mem_send(st, w, n, purge, np, errstr, errlen);
    }
    store_status status = store_connect(st, errstr, errlen);
    if (status != STORE_OK) return status;
    /* Commands: one ZADD per partition for the new outbox copies, ahead of
     * the writes (a hint that outlives a crash costs one no-op later; a copy
     * missing from the index would linger until its user's TTL); one
     * EVALSHA per write; one HDEL per purged copy and one ZREM per
     * partition. */
    size_t n_new = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < w[i].state->n_outbox; k++) n_new += w[i].state->outbox[k].fresh;
    buf_reset(&st->pend_names);
    store_idx *idx = malloc(((n_new > np ? n_new : np) + 1) * sizeof *idx);
    if (!idx || store_pending_reserve(st, n + n_new + 2 * np + st->n_staged + 1) < 0) goto oom;
    size_t ni = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < w[i].state->n_outbox; k++)
            if (w[i].state->outbox[k].fresh)
                idx[ni++] = (store_idx){w[i].state->outbox[k].partition,
                                        w[i].state->outbox[k].offset, w[i].user_id};
    int c = ni ? store_append_index(st, 1, idx, ni) : 0;
    if (c < 0) goto oom;
    for (int j = 0; j < c; j++) store_pending_add(st, -1, NULL);
    for (size_t i = 0; i < n; i++) {
        if (store_append_write(st, &w[i]) < 0) goto oom;
        /* Optimistic: the script bumps the version by one when it applies
         * the write, and store_write_wait() reports it if it did not. */
        w[i].state->version++;
        userstate_mark_clean(w[i].state);
        store_pending_add(st, (int64_t)w[i].state->version, w[i].user_id);
    }
    for (size_t i = 0; i < np; i++) {
        if (store_append_hdel(st, &purge[i]) < 0) goto oom;
        store_pending_add(st, -1, purge[i].user_id);
        idx[i] = (store_idx){purge[i].partition, purge[i].offset, purge[i].user_id};
    }
    c = np ? store_append_index(st, 0, idx, np) : 0;
    if (c < 0) goto oom;
    for (int j = 0; j < c; j++) store_pending_add(st, -1, NULL);
    c = store_append_staged(st);
    if (c < 0) goto oom;
    for (int j = 0; j < c; j++) store_pending_add(st, -1, "(trigger index)");
    free(idx);
    /* Hand the commands to the socket now, so that Redis works on them while
     * the caller does something else. */
    int done = 0;
    while (!done)
        if (redisBufferWrite(st->ctx, &done) != REDIS_OK) {
            util_err(errstr, errlen, "redis %s:%d: %s", st->host, st->port, st->ctx->errstr);
            store_disconnect(st);
            return STORE_RETRY;
        }
    return STORE_OK;
oom:
    /* Commands may sit half-formed in hiredis' buffer: drop the connection. */
    free(idx);
    store_disconnect(st);
    util_err(errstr, errlen, "out of memory");
    return STORE_RETRY;
}

store_status store_write_wait(store *st, size_t *conflicts, char *errstr, size_t errlen) {
    *conflicts = 0;
    if (!st->pending) return STORE_OK;
    if (st->mem) {
        st->pending = 0;
        *conflicts = st->mem_conflicts;
        return STORE_OK;
    }
    store_status status = STORE_OK;
    size_t n = st->pending;
    st->pending = 0;
    if (!st->ctx) /* lost since the send */
        return util_err(errstr, errlen, "redis %s:%d: connection lost", st->host, st->port),
               STORE_RETRY;
    for (size_t k = 0; k < n; k++) {
        redisReply *r = NULL;
        if (redisGetReply(st->ctx, (void **)&r) != REDIS_OK) {
            util_err(errstr, errlen, "redis %s:%d: %s", st->host, st->port, st->ctx->errstr);
            store_disconnect(st);
            return STORE_RETRY;
        }
        const char *user = st->pend_names.p + st->pend_user[k];
        int64_t expect = st->pend_expect[k];
        if (status != STORE_OK) { /* keep draining so the connection stays usable */
        } else if (r->type == REDIS_REPLY_ERROR) {
            util_err(errstr, errlen, "redis, for user %s: %s", user, r->str);
            status = store_classify(r->str);
            /* Redis lost its script cache (restart, SCRIPT FLUSH): load it
             * again for the retry the caller will make. */
            if (strncmp(r->str, "NOSCRIPT", 8) == 0) {
                char why[256];
                if (store_reload_script(st, why, sizeof why) == 0)
                    log_info("store", "reloaded the write script into Redis");
            }
        } else if (expect >= 0) {
            if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
                r->element[0]->type != REDIS_REPLY_INTEGER ||
                r->element[1]->type != REDIS_REPLY_INTEGER) {
                util_err(errstr, errlen, "redis write for user %s: unexpected reply", user);
                status = STORE_FATAL;
            } else if (r->element[0]->integer != 1 || r->element[1]->integer != expect) {
                (*conflicts)++;
            }
        }
        freeReplyObject(r);
    }
    return status;
}

int store_write_pending(const store *st) { return st->pending != 0; }

store_status store_write_batch(store *st, store_write *w, size_t n, const store_outbox_ref *purge,
                               size_t np, size_t *conflicts, char *errstr, size_t errlen) {
    store_status status = store_write_send(st, w, n, purge, np, errstr, errlen);
    *conflicts = 0;
    if (status != STORE_OK) return status;
    return store_write_wait(st, conflicts, errstr, errlen);
}

store_status store_outbox_scan(store *st, int32_t partition, int64_t below, store_outbox_fn fn,
                               void *ud, char *errstr, size_t errlen) {
    if (store_check_idle(st, errstr, errlen) != STORE_OK) return STORE_FATAL;
    if (st->mem) return store_mem_scan(st, partition, below, fn, ud);
    store_status status = store_connect(st, errstr, errlen);
    if (status != STORE_OK) return status;
    char max[32];
    snprintf(max, sizeof max, "(%" PRId64, below);
    buf_reset(&st->keys);
    store_outbox_key(st, partition, &st->keys);
    const char *argv[4] = {"ZRANGEBYSCORE", st->keys.p, "-inf", max};
    size_t argvlen[4] = {13, st->keys.len, 4, strlen(max)};
    redisReply *r = store_command(st, &status, errstr, errlen, 4, argv, argvlen);
    if (!r) return status;
    if (r->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r);
        util_err(errstr, errlen, "redis ZRANGEBYSCORE: unexpected reply");
        return STORE_FATAL;
    }
    for (size_t i = 0; i < r->elements; i++) {
        const char *m = r->element[i]->str;
        const char *colon = memchr(m, ':', r->element[i]->len);
        if (!colon) continue;
        fn(colon + 1, r->element[i]->len - (size_t)(colon + 1 - m), strtoll(m, NULL, 10), ud);
    }
    freeReplyObject(r);
    return STORE_OK;
}

redisContext *store_connect_config(const config *c, char *errstr, size_t errlen) {
    store *st = store_new(c, errstr, errlen);
    if (!st) return NULL;
    redisContext *ctx = st->ctx;
    st->ctx = NULL;
    store_free(st);
    return ctx;
}

store_status store_delete_all(store *st, uint64_t *deleted, char *errstr, size_t errlen) {
    if (store_check_idle(st, errstr, errlen) != STORE_OK) return STORE_FATAL;
    if (st->mem) {
        store_mem_clear(st, deleted);
        return STORE_OK;
    }
    store_status status = store_connect(st, errstr, errlen);
    if (status != STORE_OK) return status;
    /* The prefix is meant literally: escape what MATCH reads as a glob. */
    buf pattern = BUF_INIT;
    for (const char *c = st->prefix; *c; c++) {
        if (strchr("*?[]\\", *c)) buf_put_u8(&pattern, '\\');
        buf_put_u8(&pattern, (uint8_t)*c);
    }
    if (buf_puts(&pattern, ":*") < 0) {
        buf_free(&pattern);
        return util_err(errstr, errlen, "out of memory"), STORE_RETRY;
    }
    char cursor[32] = "0";
    do {
        const char *argv[6] = {"SCAN", cursor, "MATCH", pattern.p, "COUNT", "1000"};
        size_t argvlen[6] = {4, strlen(cursor), 5, pattern.len, 5, 4};
        redisReply *r = store_command(st, &status, errstr, errlen, 6, argv, argvlen);
        if (!r) break;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING ||
            r->element[1]->type != REDIS_REPLY_ARRAY) {
            freeReplyObject(r);
            util_err(errstr, errlen, "redis SCAN: unexpected reply");
            status = STORE_FATAL;
            break;
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        const redisReply *keys = r->element[1];
        redisReply *u = NULL;
        if (keys->elements) {
            if (store_argv_reserve(st, keys->elements + 1) < 0) {
                freeReplyObject(r);
                util_err(errstr, errlen, "out of memory");
                status = STORE_RETRY;
                break;
            }
            st->argv[0] = "UNLINK";
            st->argvlen[0] = 6;
            for (size_t i = 0; i < keys->elements; i++) {
                st->argv[i + 1] = keys->element[i]->str;
                st->argvlen[i + 1] = keys->element[i]->len;
            }
            u = store_command(st, &status, errstr, errlen, (int)keys->elements + 1, st->argv,
                              st->argvlen);
            if (!u) {
                freeReplyObject(r);
                break;
            }
            if (u->type == REDIS_REPLY_INTEGER) *deleted += (uint64_t)u->integer;
            freeReplyObject(u);
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    buf_free(&pattern);
    return status;
}
