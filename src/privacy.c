/* privacy.c -- forgetting a user, consent on request, and the forget and
 * consent commands; see privacy.h for the protocol and why the erase scans.
 *
 * Control messages are JSON, like the triggers: other systems (a privacy
 * request tool, a CRM) write them, and JSON is what they speak without an
 * Avro schema registry. The commands here write them too. */
#define _GNU_SOURCE
#include "privacy.h"

#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "kafka.h"
#include "log.h"
#include "rconn.h"
#include "store.h"
#include "util.h"

static const char *const privacy_names[PRIVACY__COUNT] = {"forget", "opt_out", "opt_in"};

/* KEYS[1] the user's hash; ARGV[1] "out" or "in", ARGV[2] when (ms), ARGV[3]
 * the state TTL. The version moves, so a cached copy of the state elsewhere
 * fails its compare-and-set and is re-read. The earliest opt-out stands. */
static const char privacy_consent_lua[] =
    "if ARGV[1] == 'out' then\n"
    "  if redis.call('HEXISTS', KEYS[1], 'ns') == 0 then\n"
    "    redis.call('HSET', KEYS[1], 'ns', ARGV[2])\n"
    "    redis.call('HINCRBY', KEYS[1], 'v', 1)\n"
    "    redis.call('EXPIRE', KEYS[1], ARGV[3])\n"
    "  end\n"
    "elseif redis.call('HDEL', KEYS[1], 'ns') == 1 then\n"
    "  redis.call('HINCRBY', KEYS[1], 'v', 1)\n"
    "end\n"
    "return 1\n";

const char *privacy_action_name(int a) { return a >= 0 && a < PRIVACY__COUNT ? privacy_names[a] : NULL; }

void privacy_request_clear(privacy_request *r) {
    free(r->user_id);
    memset(r, 0, sizeof *r);
}

int privacy_parse(const void *data, size_t len, privacy_request *r, char *errstr, size_t errlen) {
    privacy_request_clear(r);
    r->action = -1;
    json_error_t jerr;
    json_t *o = data && len ? json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr) : NULL;
    if (!o) return util_err(errstr, errlen, "not JSON%s%s", data && len ? ": " : "",
                            data && len ? jerr.text : "");
    int rc = -1;
    const char *type = json_string_value(json_object_get(o, "type"));
    const char *user = json_string_value(json_object_get(o, "user_id"));
    json_t *ts = json_object_get(o, "ts");
    for (int a = 0; type && a < PRIVACY__COUNT; a++)
        if (!strcmp(type, privacy_names[a])) r->action = a;
    if (r->action < 0) {
        util_err(errstr, errlen, "type must be forget, opt_out or opt_in");
        goto out;
    }
    if (!user || !*user) {
        util_err(errstr, errlen, "user_id must be a non-empty string");
        goto out;
    }
    if (ts && !json_is_integer(ts)) {
        util_err(errstr, errlen, "ts must be an integer (Unix ms)");
        goto out;
    }
    if (!(r->user_id = strdup(user))) {
        util_err(errstr, errlen, "out of memory");
        goto out;
    }
    r->ts_ms = ts ? json_integer_value(ts) : 0;
    rc = 0;
out:
    json_decref(o);
    if (rc < 0) {
        free(r->user_id);
        r->user_id = NULL;
    }
    return rc;
}

int privacy_encode(const privacy_request *r, buf *out) {
    json_t *o = json_object();
    int rc = -1;
    if (!o || !privacy_action_name(r->action) || !r->user_id ||
        json_object_set_new(o, "type", json_string(privacy_names[r->action])) ||
        json_object_set_new(o, "user_id", json_string(r->user_id)) ||
        (r->ts_ms && json_object_set_new(o, "ts", json_integer(r->ts_ms))))
        goto out;
    char *s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    if (!s) goto out;
    rc = buf_puts(out, s);
    free(s);
out:
    json_decref(o);
    return rc;
}

int privacy_member_names(const char *member, size_t len, const char *user_id) {
    size_t ul = strlen(user_id);
    if (len && member[0] == '{') {
        json_t *o = json_loadb(member, len, 0, NULL);
        const char *u = json_string_value(json_object_get(o, "user_id"));
        int yes = u && !strcmp(u, user_id);
        json_decref(o);
        return yes;
    }
    size_t i = 0;
    if (i < len && member[i] == '-') i++;
    size_t digits = i;
    while (i < len && member[i] >= '0' && member[i] <= '9') i++;
    return i > digits && i < len && member[i] == ':' && len - i - 1 == ul &&
           !memcmp(member + i + 1, user_id, ul);
}

/* ---- Redis ------------------------------------------------------------------------- */

struct privacy {
    rconn *redis;
    char *prefix;
    int64_t ttl_s;
};

privacy *privacy_new(const config *c, char *errstr, size_t errlen) {
    privacy *p = calloc(1, sizeof *p);
    if (!p) {
        util_err(errstr, errlen, "out of memory");
        return NULL;
    }
    p->ttl_s = config_int(c, "state.ttl_s");
    if (!(p->redis = rconn_new(c, errstr, errlen)) ||
        !(p->prefix = strdup(config_str(c, "redis.key_prefix")))) {
        if (p->redis) util_err(errstr, errlen, "out of memory");
        privacy_free(p);
        return NULL;
    }
    return p;
}

void privacy_free(privacy *p) {
    if (!p) return;
    rconn_free(p->redis);
    free(p->prefix);
    free(p);
}

/* A glob pattern that matches the user id anywhere, its special characters
 * escaped. An id that JSON escapes (quotes, backslashes, control
 * characters) is written differently inside a due-set member, so for such an
 * id every member is looked at. */
static int privacy_glob(const char *user_id, buf *out) {
    for (const unsigned char *s = (const unsigned char *)user_id; *s; s++)
        if (*s < 0x20 || *s == '"' || *s == '\\') return buf_put_u8(out, '*');
    int rc = buf_put_u8(out, '*');
    for (const char *s = user_id; *s && !rc; s++) {
        if (strchr("*?[]\\", *s)) rc |= buf_put_u8(out, '\\');
        rc |= buf_put_u8(out, (uint8_t)*s);
    }
    return rc | buf_put_u8(out, '*');
}

/* Removes the members of sorted set `key` that name user_id. Returns how
 * many, or -1. */
static long privacy_erase_members(privacy *p, const char *key, size_t key_len,
                                  const char *pattern, const char *user_id, char *errstr,
                                  size_t errlen) {
    char cursor[32] = "0";
    long removed = 0;
    do {
        const char *argv[] = {"ZSCAN", key, cursor, "MATCH", pattern, "COUNT", "1000"};
        size_t len[] = {5, key_len, strlen(cursor), 5, strlen(pattern), 5, 4};
        redisReply *r = rconn_command(p->redis, errstr, errlen, 7, argv, len);
        if (!r) return -1;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY) {
            freeReplyObject(r);
            return util_err(errstr, errlen, "redis ZSCAN: unexpected reply");
        }
        snprintf(cursor, sizeof cursor, "%.*s", (int)r->element[0]->len, r->element[0]->str);
        const redisReply *items = r->element[1];
        for (size_t i = 0; i + 1 < items->elements; i += 2) {
            const redisReply *m = items->element[i];
            if (m->type != REDIS_REPLY_STRING || !privacy_member_names(m->str, m->len, user_id))
                continue;
            const char *zrem[] = {"ZREM", key, m->str};
            size_t zlen[] = {4, key_len, m->len};
            redisReply *x = rconn_command(p->redis, errstr, errlen, 3, zrem, zlen);
            if (!x) {
                freeReplyObject(r);
                return -1;
            }
            removed += x->type == REDIS_REPLY_INTEGER ? (long)x->integer : 0;
            freeReplyObject(x);
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    return removed;
}

long privacy_erase(privacy *p, const char *user_id, char *errstr, size_t errlen) {
    buf key = BUF_INIT, match = BUF_INIT, pattern = BUF_INIT;
    long removed = -1;
    store_user_key_for(p->prefix, user_id, &key);
    buf_printf(&match, "%s:*", p->prefix);
    if (!key.p || !match.p || privacy_glob(user_id, &pattern) < 0) {
        util_err(errstr, errlen, "out of memory");
        goto out;
    }
    const char *del[] = {"DEL", key.p};
    size_t del_len[] = {3, key.len};
    redisReply *r = rconn_command(p->redis, errstr, errlen, 2, del, del_len);
    if (!r) goto out;
    long n = r->type == REDIS_REPLY_INTEGER ? (long)r->integer : 0;
    freeReplyObject(r);
    char cursor[32] = "0";
    do {
        const char *scan[] = {"SCAN", cursor, "MATCH", match.p, "COUNT", "1000", "TYPE", "zset"};
        size_t scan_len[8];
        for (int i = 0; i < 8; i++) scan_len[i] = strlen(scan[i]);
        if (!(r = rconn_command(p->redis, errstr, errlen, 8, scan, scan_len))) goto out;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY) {
            freeReplyObject(r);
            util_err(errstr, errlen, "redis SCAN: unexpected reply");
            goto out;
        }
        snprintf(cursor, sizeof cursor, "%.*s", (int)r->element[0]->len, r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++) {
            const redisReply *k = r->element[1]->element[i];
            long m = privacy_erase_members(p, k->str, k->len, pattern.p, user_id, errstr, errlen);
            if (m < 0) {
                freeReplyObject(r);
                goto out;
            }
            n += m;
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    removed = n;
out:
    buf_free(&key);
    buf_free(&match);
    buf_free(&pattern);
    return removed;
}

int privacy_consent(privacy *p, const char *user_id, int opt_in, int64_t ts_ms, char *errstr,
                    size_t errlen) {
    buf key = BUF_INIT;
    store_user_key_for(p->prefix, user_id, &key);
    if (!key.p) return util_err(errstr, errlen, "out of memory");
    char when[32], ttl[32];
    snprintf(when, sizeof when, "%" PRId64, ts_ms > 0 ? ts_ms : util_now_ms());
    snprintf(ttl, sizeof ttl, "%" PRId64, p->ttl_s);
    const char *argv[] = {"EVAL", privacy_consent_lua, "1", key.p, opt_in ? "in" : "out", when,
                          ttl};
    size_t len[] = {4, sizeof privacy_consent_lua - 1, 1, key.len, opt_in ? 2 : 3, strlen(when),
                    strlen(ttl)};
    redisReply *r = rconn_command(p->redis, errstr, errlen, 7, argv, len);
    buf_free(&key);
    if (!r) return -1;
    freeReplyObject(r);
    return 0;
}

int privacy_apply(privacy *p, const privacy_request *r, char *errstr, size_t errlen) {
    if (r->action == PRIVACY_FORGET)
        return privacy_erase(p, r->user_id, errstr, errlen) < 0 ? -1 : 0;
    return privacy_consent(p, r->user_id, r->action == PRIVACY_OPT_IN, r->ts_ms, errstr, errlen);
}

/* ---- tombstones -------------------------------------------------------------------- */

/* Which of names[n] are compacted topics, asked of the broker: sets
 * compacted[i]. Returns 0 or -1 with errstr. */
static int privacy_compacted(rd_kafka_t *rk, const char *const *names, size_t n, int *compacted,
                             char *errstr, size_t errlen) {
    rd_kafka_ConfigResource_t **res = calloc(n, sizeof *res);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_AdminOptions_t *opts =
        rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS);
    rd_kafka_event_t *ev = NULL;
    int rc = -1;
    if (!res) {
        util_err(errstr, errlen, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) res[i] = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, names[i]);
    char rderr[256];
    rd_kafka_AdminOptions_set_request_timeout(opts, 30000, rderr, sizeof rderr);
    rd_kafka_DescribeConfigs(rk, res, n, opts, q);
    if (!(ev = rd_kafka_queue_poll(q, 35000))) {
        util_err(errstr, errlen, "describing topics timed out");
        goto out;
    }
    if (rd_kafka_event_error(ev)) {
        util_err(errstr, errlen, "describing topics: %s", rd_kafka_event_error_string(ev));
        goto out;
    }
    size_t nres;
    const rd_kafka_ConfigResource_t **got =
        rd_kafka_DescribeConfigs_result_resources(rd_kafka_event_DescribeConfigs_result(ev), &nres);
    for (size_t i = 0; i < nres; i++) {
        const char *name = rd_kafka_ConfigResource_name(got[i]);
        if (rd_kafka_ConfigResource_error(got[i])) continue; /* no such topic: nothing to do */
        size_t ne;
        const rd_kafka_ConfigEntry_t **e = rd_kafka_ConfigResource_configs(got[i], &ne);
        for (size_t k = 0; k < ne; k++) {
            const char *v = rd_kafka_ConfigEntry_value(e[k]);
            if (strcmp(rd_kafka_ConfigEntry_name(e[k]), "cleanup.policy") || !v) continue;
            for (size_t j = 0; j < n; j++)
                if (!strcmp(names[j], name)) compacted[j] = strstr(v, "compact") != NULL;
        }
    }
    rc = 0;
out:
    if (ev) rd_kafka_event_destroy(ev);
    if (res) rd_kafka_ConfigResource_destroy_array(res, n);
    free(res);
    rd_kafka_AdminOptions_destroy(opts);
    rd_kafka_queue_destroy(q);
    return rc;
}

int privacy_tombstones(const config *c, rd_kafka_t *producer, const char *user_id, buf *names,
                       char *errstr, size_t errlen) {
    static const char *const keyed_by_user[] = {"topic.clickstream", "topic.reactions",
                                                "topic.copy", "topic.triggers"};
    enum { N_OWN = sizeof keyed_by_user / sizeof keyed_by_user[0] };
    const char *own[N_OWN];
    int compacted[N_OWN] = {0};
    for (size_t i = 0; i < N_OWN; i++) own[i] = config_str(c, keyed_by_user[i]);
    if (privacy_compacted(producer, own, N_OWN, compacted, errstr, errlen) < 0) return -1;
    /* The explicit list, then the compacted ones of ours not already in it. */
    char *list = strdup(config_str(c, "privacy.tombstone_topics"));
    if (!list) return util_err(errstr, errlen, "out of memory");
    const char *targets[64];
    size_t n = 0;
    for (char *save = NULL, *t = strtok_r(list, ",", &save); t && n < 64; t = strtok_r(NULL, ",", &save))
        targets[n++] = t;
    for (size_t i = 0; i < N_OWN && n < 64; i++) {
        int listed = 0;
        for (size_t k = 0; k < n; k++) listed |= !strcmp(targets[k], own[i]);
        if (compacted[i] && !listed) targets[n++] = own[i];
    }
    kafka_delivery dr = {0};
    int rc = -1;
    for (size_t i = 0; i < n; i++) {
        if (kafka_produce(producer, targets[i], user_id, strlen(user_id), NULL, 0, NULL, &dr,
                          errstr, errlen) < 0)
            goto out;
        if (names->len) buf_puts(names, ", ");
        buf_puts(names, targets[i]);
    }
    rd_kafka_flush(producer, 30000);
    if (dr.acked != n) {
        util_err(errstr, errlen, "%" PRIu64 " of %zu tombstones not delivered: %s",
                 (uint64_t)n - dr.acked, n, rd_kafka_err2str(dr.last_err));
        goto out;
    }
    rc = (int)n;
out:
    free(list);
    return rc;
}

/* ---- the commands ------------------------------------------------------------------ */

/* What forget and consent share: the request applied to Redis, then to Kafka
 * (tombstones for a forget; the control message unless no_publish). */
static int privacy_run(const config *cfg, const privacy_request *req, int no_publish) {
    char err[1024];
    int rc = 1;
    kafka_delivery dr = {0};
    rd_kafka_t *producer = NULL;
    buf msg = BUF_INIT, names = BUF_INIT;
    privacy *p = privacy_new(cfg, err, sizeof err);
    if (!p) goto fail;
    long erased = 0;
    if (req->action == PRIVACY_FORGET) {
        if ((erased = privacy_erase(p, req->user_id, err, sizeof err)) < 0) goto fail;
    } else if (privacy_apply(p, req, err, sizeof err) < 0) {
        goto fail;
    }
    if (!(producer = kafka_producer_new(cfg, &dr, NULL, err, sizeof err))) goto fail;
    if (kafka_await_broker(producer, 30000, err, sizeof err) < 0) goto fail;
    int tombstones = 0;
    if (req->action == PRIVACY_FORGET &&
        (tombstones = privacy_tombstones(cfg, producer, req->user_id, &names, err, sizeof err)) < 0)
        goto fail;
    if (!no_publish) {
        const char *topic = config_str(cfg, "topic.control");
        if (privacy_encode(req, &msg) < 0) {
            util_err(err, sizeof err, "out of memory");
            goto fail;
        }
        if (kafka_produce(producer, topic, req->user_id, strlen(req->user_id), msg.p, msg.len, NULL,
                          NULL, err, sizeof err) < 0)
            goto fail;
        rd_kafka_flush(producer, 30000);
        if (dr.failed || !dr.acked) {
            util_err(err, sizeof err, "the control message to %s was not delivered: %s", topic,
                     rd_kafka_err2str(dr.last_err));
            goto fail;
        }
    }
    if (req->action == PRIVACY_FORGET)
        printf("forgot %s: %ld Redis keys and entries erased, tombstones in %d topics%s%s%s\n",
               req->user_id, erased, tombstones, tombstones ? " (" : "",
               tombstones ? names.p : "", tombstones ? ")" : "");
    else
        printf("%s: %s recorded\n", req->user_id, privacy_names[req->action]);
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "copystream: %s\n", err);
out:
    if (producer) rd_kafka_destroy(producer);
    privacy_free(p);
    buf_free(&msg);
    buf_free(&names);
    return rc;
}

static const char forget_usage[] =
    "usage: copystream forget [-c CONFIG] [--no-publish] USER...\n"
    "\n"
    "Erases everything copystream keeps about each USER: their Redis state, their\n"
    "entries in every index (outbox, pending reminders and price drops, item\n"
    "watchers), a tombstone for them in every compacted topic keyed by user id\n"
    "(privacy.tombstone_topics, and copystream's own user-keyed topics when\n"
    "compacted), then publishes a forget control message so that running\n"
    "instances drop what they hold in memory (--no-publish: do not).\n";

static const char consent_usage[] =
    "usage: copystream consent [-c CONFIG] [--no-publish] USER opt_out|opt_in\n"
    "\n"
    "Records that USER withdrew consent (opt_out: no more copy) or gave it again\n"
    "(opt_in), in Redis, then publishes the control message for running instances.\n";

/* Parses -c, --no-publish and --help; returns optind, or -1 (usage) / -2 (help). */
static int privacy_opts(int argc, char **argv, const char **path, int *no_publish) {
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"no-publish", no_argument, 0, 'n'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': *path = optarg; break;
        case 'n': *no_publish = 1; break;
        case 'h': return -2;
        default: return -1;
        }
    }
    return optind;
}

int forget_main(int argc, char **argv) {
    const char *path = commands_default_config();
    int no_publish = 0;
    int first = privacy_opts(argc, argv, &path, &no_publish);
    if (first < 0 || first >= argc) {
        fputs(forget_usage, first == -2 ? stdout : stderr);
        return first == -2 ? 0 : 2;
    }
    config *cfg = commands_load_config(path);
    if (!cfg) return 2;
    int rc = 0;
    for (int i = first; i < argc && !rc; i++) {
        if (!argv[i][0]) {
            fprintf(stderr, "copystream: an empty user id\n");
            rc = 2;
            break;
        }
        privacy_request req = {.action = PRIVACY_FORGET, .user_id = argv[i],
                               .ts_ms = util_now_ms()};
        rc = privacy_run(cfg, &req, no_publish);
    }
    config_free(cfg);
    return rc;
}

int consent_main(int argc, char **argv) {
    const char *path = commands_default_config();
    int no_publish = 0;
    int first = privacy_opts(argc, argv, &path, &no_publish);
    if (first < 0 || argc - first != 2 || !argv[first][0] ||
        (strcmp(argv[first + 1], "opt_out") && strcmp(argv[first + 1], "opt_in"))) {
        fputs(consent_usage, first == -2 ? stdout : stderr);
        return first == -2 ? 0 : 2;
    }
    config *cfg = commands_load_config(path);
    if (!cfg) return 2;
    privacy_request req = {.action = strcmp(argv[first + 1], "opt_in") ? PRIVACY_OPT_OUT
                                                                          : PRIVACY_OPT_IN,
                           .user_id = argv[first], .ts_ms = util_now_ms()};
    int rc = privacy_run(cfg, &req, no_publish);
    config_free(cfg);
    return rc;
}
