/* bandit.c -- Thompson sampling over template variants, attribution of
 * reactions, and the shared statistics in Redis; see bandit.h.
 *
 * Determinism. A draw must be the same on every machine for the same seed,
 * so nothing here calls libm's log, exp or pow, whose last bit may differ
 * between library versions and CPUs: bandit_log() and bandit_exp() use only
 * +, -, *, / (correctly rounded by IEEE 754) and frexp/ldexp (exact), and
 * sqrt is correctly rounded too. Contraction of a*b+c into a fused
 * multiply-add would change rounding on CPUs that have one, so it is turned
 * off for this file.
 *
 * Redis. The bandit keeps its own connection, so that its updates can
 * follow a batch's confirmed state writes while the next batch's writes are
 * in store.c's pipeline; the service waits for them before it commits the
 * batch. The update script is sent with EVAL (once per batch and intent)
 * rather than EVALSHA, so a Redis that lost its script cache needs no reload
 * dance; Redis compiles it once and finds it by its hash afterwards. */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "bandit.h"

#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "dict.h"
#include "intent.h"
#include "log.h"
#include "store.h"
#include "util.h"

static const char *const bandit_segment_names[BANDIT__SEGMENTS] = {"new", "returning"};
static const char *const bandit_counter_names[BANDIT__COUNTERS] = {"sent", "imp",     "click",
                                                                   "conv", "dismiss", "unsub"};

const char *bandit_segment_name(int segment) {
    return segment >= 0 && segment < BANDIT__SEGMENTS ? bandit_segment_names[segment] : NULL;
}

int bandit_segment_of(const user_state *u) {
    return u->events[EV_PURCHASE] > 0 || u->n_bought > 0 ? BANDIT_SEG_RETURNING : BANDIT_SEG_NEW;
}

const char *bandit_counter_name(int counter) {
    return counter >= 0 && counter < BANDIT__COUNTERS ? bandit_counter_names[counter] : NULL;
}

int bandit_counter_parse(const char *name, size_t len) {
    for (int k = 0; k < BANDIT__COUNTERS; k++)
        if (strlen(bandit_counter_names[k]) == len && !memcmp(bandit_counter_names[k], name, len))
            return k;
    return -1;
}

/* ---- deterministic arithmetic -------------------------------------------- */

static const double bandit_ln2_hi = 6.93147180369123816490e-01; /* exact in 32 bits */
static const double bandit_ln2_lo = 1.90821492927058770002e-10;

double bandit_log(double x) {
    int e;
    double m = frexp(x, &e); /* x = m * 2^e, m in [0.5, 1) */
    if (m < 0.70710678118654752440) {
        m *= 2.0;
        e--;
    }
    /* log(m) = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.1716: the odd
     * series converges by a factor s^2 < 0.0295 a term, 12 terms are plenty. */
    double s = (m - 1.0) / (m + 1.0), s2 = s * s, sum = 0.0;
    for (int k = 23; k >= 1; k -= 2) sum = sum * s2 + 1.0 / k;
    return (double)e * bandit_ln2_hi + ((double)e * bandit_ln2_lo + 2.0 * s * sum);
}

double bandit_exp(double x) {
    if (x != x) return x;
    if (x < -745.2) return 0.0;
    if (x > 709.78) return HUGE_VAL;
    /* x = k ln2 + r, |r| <= ln2 / 2: then exp(x) = 2^k exp(r), and the Taylor
     * series of exp(r) has shrunk below 1e-20 by its 18th term. */
    double kd = floor(x * 1.44269504088896340736 + 0.5);
    double r = (x - kd * bandit_ln2_hi) - kd * bandit_ln2_lo;
    double sum = 1.0;
    for (int n = 18; n >= 1; n--) sum = 1.0 + sum * r / n;
    return ldexp(sum, (int)kd);
}

/* ---- the PRNG and the samplers --------------------------------------------- */


void bandit_rng_seed(bandit_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = util_splitmix64(&seed);
}

static uint64_t bandit_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t bandit_rng_next(bandit_rng *r) {
    uint64_t *s = r->s;
    uint64_t out = bandit_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = bandit_rotl(s[3], 45);
    return out;
}

double bandit_rng_uniform(bandit_rng *r) {
    return ((double)(bandit_rng_next(r) >> 11) + 0.5) * 0x1p-53;
}

double bandit_rng_normal(bandit_rng *r) {
    for (;;) {
        double u = 2.0 * bandit_rng_uniform(r) - 1.0, v = 2.0 * bandit_rng_uniform(r) - 1.0;
        double s = u * u + v * v;
        /* The pair's second normal is not kept: one draw, one state change,
         * keeps the stream simple to reason about. */
        if (s < 1.0 && s > 0.0) return u * sqrt(-2.0 * bandit_log(s) / s);
    }
}

double bandit_gamma(bandit_rng *r, double shape) {
    if (shape < 1.0) {
        /* G(a) = G(a + 1) * U^(1/a) (Marsaglia-Tsang's boost). */
        double g = bandit_gamma(r, shape + 1.0);
        return g * bandit_exp(bandit_log(bandit_rng_uniform(r)) / shape);
    }
    double d = shape - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x, v;
        do {
            x = bandit_rng_normal(r);
            v = 1.0 + c * x;
        } while (v <= 0.0);
        v = v * v * v;
        double u = bandit_rng_uniform(r), x2 = x * x;
        if (u < 1.0 - 0.0331 * x2 * x2) return d * v;
        if (bandit_log(u) < 0.5 * x2 + d * (1.0 - v + bandit_log(v))) return d * v;
    }
}

double bandit_beta(bandit_rng *r, double a, double b) {
    double x = bandit_gamma(r, a), y = bandit_gamma(r, b);
    return x + y > 0.0 ? x / (x + y) : 0.5;
}

size_t bandit_thompson(const bandit_counts *arms, size_t n, const bandit_prior *p, uint64_t seed) {
    bandit_rng r;
    bandit_rng_seed(&r, seed);
    size_t best = 0;
    double best_draw = -1.0;
    for (size_t i = 0; i < n; i++) {
        uint64_t trials = arms[i].n[BANDIT_IMP], wins = arms[i].n[p->reward];
        if (wins > trials) wins = trials;
        double draw = bandit_beta(&r, p->alpha + (double)wins, p->beta + (double)(trials - wins));
        if (draw > best_draw) {
            best_draw = draw;
            best = i;
        }
    }
    return best;
}

/* ---- arms ------------------------------------------------------------------ */

/* The arms of one (intent, locale, segment): variants in render order, then
 * the holdout. */
typedef struct {
    size_t intent;            /* index into bandit.intents */
    const char *locale;       /* into the templates */
    int segment;
    size_t first, n_variants; /* arms[first .. first + n_variants - 1] */
    size_t holdout;           /* arms[holdout] */
} bandit_group;

typedef struct {
    uint64_t key;             /* util_hash of the template id, or of the holdout's */
    int segment;
    size_t group;
    const char *variant;      /* into the templates, or BANDIT_HOLDOUT */
    char *field;              /* "<segment>.<locale>.<variant>." */
} bandit_arm;

typedef struct {
    char *name;
    char *key;                /* <prefix>:bandit:{<intent>} */
    dict *fields;             /* arm field prefix -> arm index + 1 */
} bandit_intent;

/* One staged update: count `counter` once for the copy at (partition,
 * offset) on arm. */
typedef struct {
    int32_t partition;
    int64_t offset;
    uint32_t arm;
    uint8_t counter;
} bandit_update;

/* The updates of one batch. */
typedef struct {
    bandit_update *v;
    size_t n, cap;
} bandit_batch;

/* Batches between staging and their reply: the service seals a batch when
 * it sends the batch's state writes, sends it once those are confirmed and
 * waits for it before the commit; at most two are ever in either queue. */
#define BANDIT_QUEUE 4

/* Markers: one bit per (copy, counter) in bitmap buckets of this many
 * source offsets, a byte per offset. */
#define BANDIT_BUCKET_SHIFT 16

struct bandit {
    const templates *tpl;
    char *copy_topic;
    char *trigger_topic;      /* copies of delayed triggers name it; NULL: none */
    /* settings */
    int uniform;              /* bandit.policy = uniform */
    bandit_prior prior;
    int64_t window_ms;
    int64_t marker_ttl_s;
    size_t max_copies;
    int64_t dismiss_s;
    size_t max_dismissed;
    uint32_t holdout_per_10000;
    int64_t refresh_us, last_refresh_us;
    /* arms */
    bandit_intent *intents;
    size_t n_intents;
    bandit_group *groups;
    size_t n_groups;
    bandit_arm *arms;
    size_t n_arms;
    bandit_counts *counts;    /* [n_arms], the snapshot */
    /* staged, sealed and in flight */
    bandit_batch staging;     /* the batch being applied */
    bandit_batch sealed[BANDIT_QUEUE]; /* a ring of sealed batches, not sent yet */
    size_t sealed_head, n_sealed;
    struct {
        size_t evals;         /* update replies owed */
        int refresh;          /* and a snapshot's HGETALLs after them */
        uint64_t conn;        /* on this connection */
    } inflight[BANDIT_QUEUE]; /* a ring of sent batches */
    size_t inflight_head, n_inflight;
    uint32_t *field_index;    /* scratch: [arm * BANDIT__COUNTERS + counter] -> field + 1 */
    /* Redis */
    redisContext *ctx;
    uint64_t conn;            /* connections made so far: replies die with theirs */
    const config *cfg;        /* the Redis endpoint and credentials (store_connect_config) */
    int read_only;            /* bandit_set_read_only(): updates are dropped */
    char *host;               /* for messages */
    int port;
    buf arena;                /* the strings of a command being built */
    const char **argv;
    size_t *argvlen;
    size_t argv_cap;
};

/* KEYS[1] the statistics hash, KEYS[2..] marker buckets. ARGV[1] the
 * buckets' TTL in seconds, ARGV[2] the number of fields nf, ARGV[3 ..
 * 2 + nf] the fields, then per bucket: n, and n pairs (bit, field number).
 * SETBIT returns the bit it replaced, so each (copy, counter) adds to its
 * field once however often it is sent; the additions are summed per field. */
static const char bandit_update_lua[] =
    "local ttl, nf = ARGV[1], tonumber(ARGV[2])\n"
    "local add, a, applied = {}, 3 + nf, 0\n"
    "for k = 2, #KEYS do\n"
    "  local n = tonumber(ARGV[a]); a = a + 1\n"
    "  for j = 1, n do\n"
    "    if redis.call('SETBIT', KEYS[k], ARGV[a], 1) == 0 then\n"
    "      local f = tonumber(ARGV[a + 1])\n"
    "      add[f] = (add[f] or 0) + 1\n"
    "    end\n"
    "    a = a + 2\n"
    "  end\n"
    "  redis.call('EXPIRE', KEYS[k], ttl)\n"
    "end\n"
    "for f = 1, nf do\n"
    "  if add[f] then\n"
    "    redis.call('HINCRBY', KEYS[1], ARGV[2 + f], add[f])\n"
    "    applied = applied + add[f]\n"
    "  end\n"
    "end\n"
    "return applied\n";

/* ---- Redis connection -------------------------------------------------------- */

static void bandit_disconnect(bandit *b) {
    if (b->ctx) redisFree(b->ctx);
    b->ctx = NULL;
}

/* Runs one command; returns its reply (caller frees) or NULL with errstr. */
static redisReply *bandit_command(redisContext *ctx, char *errstr, size_t errlen, int argc,
                                  const char **argv, const size_t *argvlen) {
    redisReply *r = redisCommandArgv(ctx, argc, argv, argvlen);
    if (!r) {
        util_err(errstr, errlen, "redis: %s", ctx->errstr);
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        util_err(errstr, errlen, "redis %s: %s", argv[0], r->str); /* never the password */
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

static int bandit_connect(bandit *b, char *errstr, size_t errlen) {
    if (b->ctx) return 0;
    /* store.c's connection: the same password sources, AUTH and SELECT */
    b->ctx = store_connect_config(b->cfg, errstr, errlen);
    b->conn++;
    return b->ctx ? 0 : -1;
}

static int bandit_argv_reserve(bandit *b, size_t n) {
    if (n <= b->argv_cap) return 0;
    size_t cap = b->argv_cap ? b->argv_cap : 64;
    while (cap < n) cap *= 2;
    const char **a = realloc(b->argv, cap * sizeof *a);
    if (!a) return -1;
    b->argv = a;
    size_t *l = realloc(b->argvlen, cap * sizeof *l);
    if (!l) return -1;
    b->argvlen = l;
    b->argv_cap = cap;
    return 0;
}

/* ---- the snapshot ------------------------------------------------------------ */

/* Splits "<segment>.<locale>.<variant>.<counter>" at its last dot. */
static int bandit_split_field(const char *f, size_t len, size_t *prefix_len, int *counter) {
    const char *dot = NULL;
    for (size_t i = len; i > 0; i--)
        if (f[i - 1] == '.') {
            dot = f + i - 1;
            break;
        }
    if (!dot) return -1;
    *prefix_len = (size_t)(dot - f) + 1;
    *counter = bandit_counter_parse(dot + 1, len - *prefix_len);
    return *counter < 0 ? -1 : 0;
}

/* Installs one HGETALL reply as intent i's part of the snapshot. Fields of
 * arms this process has no template for are ignored. */
static int bandit_install(bandit *b, size_t i, const redisReply *r, char *errstr, size_t errlen) {
    if (r->type != REDIS_REPLY_ARRAY || r->elements % 2)
        return util_err(errstr, errlen, "redis HGETALL %s: unexpected reply", b->intents[i].key);
    for (size_t a = 0; a < b->n_arms; a++)
        if (b->groups[b->arms[a].group].intent == i) memset(&b->counts[a], 0, sizeof b->counts[a]);
    char prefix[256];
    for (size_t k = 0; k < r->elements; k += 2) {
        const redisReply *f = r->element[k], *v = r->element[k + 1];
        size_t plen;
        int counter;
        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
            bandit_split_field(f->str, f->len, &plen, &counter) < 0 || plen >= sizeof prefix)
            continue;
        memcpy(prefix, f->str, plen);
        prefix[plen] = '\0';
        uintptr_t arm = (uintptr_t)dict_get(b->intents[i].fields, prefix);
        if (arm) b->counts[arm - 1].n[counter] = strtoull(v->str, NULL, 10);
    }
    return 0;
}

int bandit_refresh(bandit *b, char *errstr, size_t errlen) {
    if (b->n_inflight)
        return util_err(errstr, errlen, "bandit: the replies of a send are still owed");
    if (bandit_connect(b, errstr, errlen) < 0) return -1;
    for (size_t i = 0; i < b->n_intents; i++) {
        const char *argv[2] = {"HGETALL", b->intents[i].key};
        size_t argvlen[2] = {7, strlen(b->intents[i].key)};
        redisReply *r = bandit_command(b->ctx, errstr, errlen, 2, argv, argvlen);
        if (!r) {
            bandit_disconnect(b);
            return -1;
        }
        int rc = bandit_install(b, i, r, errstr, errlen);
        freeReplyObject(r);
        if (rc < 0) return -1;
    }
    b->last_refresh_us = util_monotonic_us();
    return 0;
}

int bandit_refresh_if_due(bandit *b, char *errstr, size_t errlen) {
    if (b->n_inflight ||
        util_monotonic_us() - b->last_refresh_us < (b->refresh_us > 1000000 ? b->refresh_us : 1000000))
        return 0;
    return bandit_refresh(b, errstr, errlen);
}

/* ---- building the arms ----------------------------------------------------- */

static size_t bandit_intent_index(bandit *b, const char *name, const char *prefix) {
    for (size_t i = 0; i < b->n_intents; i++)
        if (!strcmp(b->intents[i].name, name)) return i;
    bandit_intent *v = realloc(b->intents, (b->n_intents + 1) * sizeof *v);
    if (!v) return SIZE_MAX;
    b->intents = v;
    bandit_intent *in = &v[b->n_intents];
    memset(in, 0, sizeof *in);
    buf key = BUF_INIT;
    buf_printf(&key, "%s:bandit:{%s}", prefix, name);
    in->name = strdup(name);
    in->key = key.p;
    in->fields = dict_new();
    if (!in->name || !in->key || !in->fields) {
        free(in->name);
        free(in->key);
        dict_free(in->fields);
        return SIZE_MAX;
    }
    return b->n_intents++;
}

static uint64_t bandit_arm_key(const char *intent, const char *locale, const char *variant) {
    buf id = BUF_INIT;
    buf_printf(&id, "%s.%s.%s", intent, locale, variant);
    uint64_t h = id.p ? util_hash(id.p) : 0;
    buf_free(&id);
    return h;
}

uint64_t bandit_holdout_arm(const char *intent, const char *locale) {
    return bandit_arm_key(intent, locale, BANDIT_HOLDOUT);
}

static int bandit_add_arm(bandit *b, size_t group, const char *intent, const char *locale,
                          const char *variant, int segment) {
    bandit_arm *a = &b->arms[b->n_arms];
    buf field = BUF_INIT;
    buf_printf(&field, "%s.%s.%s.", bandit_segment_names[segment], locale, variant);
    if (!field.p) return -1;
    *a = (bandit_arm){bandit_arm_key(intent, locale, variant), segment, group, variant, field.p};
    b->n_arms++;
    return dict_set(b->intents[b->groups[group].intent].fields, a->field,
                    (void *)(uintptr_t)b->n_arms);
}

/* One group per (intent, locale, segment); arms grouped and in render order. */
static int bandit_build_arms(bandit *b, const char *prefix) {
    size_t n = templates_count(b->tpl);
    b->arms = calloc((n + n) * BANDIT__SEGMENTS + 1, sizeof *b->arms);
    b->groups = calloc(n * BANDIT__SEGMENTS + 1, sizeof *b->groups);
    if (!b->arms || !b->groups) return -1;
    for (size_t i = 0; i < n;) {
        const char *intent, *locale, *other_intent, *other_locale;
        templates_at(b->tpl, i, &intent, &locale, NULL);
        size_t j = i;
        while (templates_at(b->tpl, j, &other_intent, &other_locale, NULL) == 0 &&
               !strcmp(intent, other_intent) && !strcmp(locale, other_locale))
            j++;
        size_t in = bandit_intent_index(b, intent, prefix);
        if (in == SIZE_MAX) return -1;
        for (int seg = 0; seg < BANDIT__SEGMENTS; seg++) {
            size_t g = b->n_groups++;
            b->groups[g] = (bandit_group){in, locale, seg, b->n_arms, j - i, 0};
            for (size_t k = i; k < j; k++) {
                const char *variant;
                templates_at(b->tpl, k, NULL, NULL, &variant);
                if (bandit_add_arm(b, g, intent, locale, variant, seg) < 0) return -1;
            }
            b->groups[g].holdout = b->n_arms;
            if (bandit_add_arm(b, g, intent, locale, BANDIT_HOLDOUT, seg) < 0) return -1;
        }
        i = j;
    }
    b->counts = calloc(b->n_arms + 1, sizeof *b->counts);
    b->field_index = calloc(b->n_arms * BANDIT__COUNTERS + 1, sizeof *b->field_index);
    return b->counts && b->field_index ? 0 : -1;
}

bandit *bandit_new(const config *c, const templates *t, const char *copy_topic, char *errstr,
                   size_t errlen) {
    bandit *b = calloc(1, sizeof *b);
    if (!b) {
        util_err(errstr, errlen, "out of memory");
        return NULL;
    }
    b->tpl = t;
    b->uniform = !strcmp(config_str(c, "bandit.policy"), "uniform");
    b->prior.alpha = config_double(c, "bandit.prior_alpha");
    b->prior.beta = config_double(c, "bandit.prior_beta");
    b->prior.reward = !strcmp(config_str(c, "bandit.reward"), "conversion") ? BANDIT_CONV
                                                                            : BANDIT_CLICK;
    b->window_ms = config_int(c, "bandit.attribution_window_s") * 1000;
    b->marker_ttl_s = config_int(c, "bandit.attribution_window_s") + 86400;
    b->max_copies = (size_t)config_int(c, "bandit.max_copies");
    b->refresh_us = config_int(c, "bandit.refresh_s") * 1000000;
    b->holdout_per_10000 = (uint32_t)(config_double(c, "holdout.percent") * 100.0 + 0.5);
    b->dismiss_s = config_int(c, "copy.dismissed_item_s");
    b->max_dismissed = (size_t)config_int(c, "state.max_dismissed");
    b->copy_topic = strdup(copy_topic);
    b->cfg = c;
    b->host = strdup(config_str(c, "redis.host"));
    b->port = (int)config_int(c, "redis.port");
    if (!b->copy_topic || !b->host ||
        bandit_build_arms(b, config_str(c, "redis.key_prefix")) < 0) {
        util_err(errstr, errlen, "out of memory");
        goto err;
    }
    return b;
err:
    bandit_free(b);
    return NULL;
}

void bandit_free(bandit *b) {
    if (!b) return;
    bandit_disconnect(b);
    for (size_t i = 0; i < b->n_intents; i++) {
        free(b->intents[i].name);
        free(b->intents[i].key);
        dict_free(b->intents[i].fields);
    }
    free(b->intents);
    for (size_t i = 0; i < b->n_arms; i++) free(b->arms[i].field);
    free(b->arms);
    free(b->groups);
    free(b->counts);
    free(b->staging.v);
    for (size_t i = 0; i < BANDIT_QUEUE; i++) free(b->sealed[i].v);
    free(b->field_index);
    free(b->copy_topic);
    free(b->trigger_topic);
    free(b->host);
    buf_free(&b->arena);
    free(b->argv);
    free(b->argvlen);
    free(b);
}

/* ---- the copy path ----------------------------------------------------------- */

int bandit_in_holdout(const bandit *b, const char *user_id) {
    if (!b->holdout_per_10000) return 0;
    uint64_t x = util_hash(user_id) ^ 0x686f6c646f7574ULL; /* "holdout" */
    return util_splitmix64(&x) % 10000 < b->holdout_per_10000;
}

static const bandit_group *bandit_group_of(const bandit *b, const char *intent,
                                           const char *locale, int segment) {
    for (size_t g = 0; g < b->n_groups; g++) {
        const bandit_group *gr = &b->groups[g];
        if (gr->segment == segment && !strcmp(gr->locale, locale) &&
            !strcmp(b->intents[gr->intent].name, intent))
            return gr;
    }
    return NULL;
}

size_t bandit_choose(const bandit *b, const char *intent, const char *locale, int segment,
                     uint64_t seed, uint64_t *arm) {
    const bandit_group *g = bandit_group_of(b, intent, locale, segment);
    *arm = 0;
    if (!g || !g->n_variants) return 0;
    size_t k = b->uniform ? (size_t)(seed % g->n_variants)
                          : bandit_thompson(&b->counts[g->first], g->n_variants, &b->prior, seed);
    *arm = b->arms[g->first + k].key;
    return k;
}

/* The arm index of (key, segment), or -1. */
static long bandit_arm_index(const bandit *b, uint64_t key, int segment) {
    for (size_t a = 0; a < b->n_arms; a++)
        if (b->arms[a].key == key && b->arms[a].segment == segment) return (long)a;
    return -1;
}

static int bandit_stage(bandit *b, long arm, int32_t partition, int64_t offset, int counter) {
    if (arm < 0) return 0;
    bandit_batch *st = &b->staging;
    if (st->n == st->cap) {
        size_t cap = st->cap ? st->cap * 2 : 256;
        bandit_update *v = realloc(st->v, cap * sizeof *v);
        if (!v) return -1;
        st->v = v;
        st->cap = cap;
    }
    st->v[st->n++] = (bandit_update){partition, offset, (uint32_t)arm, (uint8_t)counter};
    return 0;
}

int bandit_copy_made(bandit *b, user_state *u, int32_t partition, int64_t offset, int64_t ts_ms,
                     uint64_t arm, uint64_t item, int segment, int holdout) {
    us_copyrec rec = {partition, offset, ts_ms, arm, item, (uint8_t)segment,
                      holdout ? US_COPYREC_HOLDOUT : 0};
    if (userstate_copyrec_add(u, &rec, b->max_copies, b->window_ms) < 0) return -1;
    return bandit_stage(b, bandit_arm_index(b, arm, segment), partition, offset, BANDIT_SENT);
}

int bandit_copy_again(bandit *b, const user_state *u, int32_t partition, int64_t offset) {
    const us_copyrec *rec = userstate_copyrec_find(u, partition, offset);
    if (!rec) return 0;
    return bandit_stage(b, bandit_arm_index(b, rec->arm, rec->segment), partition, offset,
                        BANDIT_SENT);
}

/* ---- the reaction path ------------------------------------------------------- */

/* Parses "<topic>:<partition>:<offset>" whose topic is `topic`. */
static int bandit_parse_copy_id(const char *id, const char *topic, int32_t *partition,
                                int64_t *offset) {
    size_t tl = strlen(topic);
    if (strncmp(id, topic, tl) || id[tl] != ':') return -1;
    const char *p = id + tl + 1;
    char *end;
    if (*p < '0' || *p > '9') return -1;
    unsigned long long part = strtoull(p, &end, 10);
    if (*end != ':' || part > INT32_MAX || end[1] < '0' || end[1] > '9') return -1;
    unsigned long long off = strtoull(end + 1, &end, 10);
    if (*end || off > INT64_MAX) return -1;
    *partition = (int32_t)part;
    *offset = (int64_t)off;
    return 0;
}

/* bandit_attribute(), also knowing the copies that delayed triggers caused:
 * their ids name trigger_topic (NULL: none), and they are recorded at the
 * partition past INTENT_TRIGGER_PARTITION_BASE. */
static bandit_attribution bandit_attribute_any(const user_state *u, const reaction *r,
                                               const char *copy_topic, const char *trigger_topic,
                                               int64_t window_ms, const us_copyrec **rec) {
    *rec = NULL;
    const us_copyrec *c = NULL;
    if (r->copy_id && r->copy_id[0]) {
        int32_t partition;
        int64_t offset;
        if (bandit_parse_copy_id(r->copy_id, copy_topic, &partition, &offset) == 0)
            c = userstate_copyrec_find(u, partition, offset);
        else if (trigger_topic &&
                 bandit_parse_copy_id(r->copy_id, trigger_topic, &partition, &offset) == 0 &&
                 partition < INTENT_TRIGGER_PARTITION_BASE)
            c = userstate_copyrec_find(u, partition + INTENT_TRIGGER_PARTITION_BASE, offset);
    } else if (r->type == RX_CONVERT) {
        c = userstate_copyrec_last(u, r->ts_ms);
    }
    if (!c) return BANDIT_UNKNOWN;
    *rec = c;
    return r->ts_ms - c->ts_ms > window_ms ? BANDIT_LATE : BANDIT_ATTRIBUTED;
}

bandit_attribution bandit_attribute(const user_state *u, const reaction *r, const char *copy_topic,
                                    int64_t window_ms, const us_copyrec **rec) {
    return bandit_attribute_any(u, r, copy_topic, NULL, window_ms, rec);
}

int bandit_set_trigger_topic(bandit *b, const char *topic) {
    char *t = strdup(topic);
    if (!t) return -1;
    free(b->trigger_topic);
    b->trigger_topic = t;
    return 0;
}

/* What a reaction adds to its copy's counters (a click or a dismissal shows
 * that the copy was seen, whether or not its impression was reported). */
static int bandit_reaction_counters(reaction_type t, int out[2]) {
    switch (t) {
    case RX_IMPRESSION: out[0] = BANDIT_IMP; return 1;
    case RX_CLICK: out[0] = BANDIT_IMP; out[1] = BANDIT_CLICK; return 2;
    case RX_CONVERT: out[0] = BANDIT_CONV; return 1;
    case RX_DISMISS: out[0] = BANDIT_IMP; out[1] = BANDIT_DISMISS; return 2;
    case RX_UNSUBSCRIBE: out[0] = BANDIT_UNSUB; return 1;
    case RX__COUNT: break;
    }
    return 0;
}

static uint32_t bandit_seconds(int64_t ms) {
    if (ms <= 0) return 0;
    return ms / 1000 > (int64_t)UINT32_MAX ? UINT32_MAX : (uint32_t)(ms / 1000);
}

int bandit_on_reaction(bandit *b, user_state *u, const reaction *r, int outcome) {
    if (outcome != US_APPLIED && outcome != US_ALREADY_APPLIED) return BANDIT_UNKNOWN;
    const us_copyrec *rec;
    bandit_attribution at =
        bandit_attribute_any(u, r, b->copy_topic, b->trigger_topic, b->window_ms, &rec);
    /* Copy what is needed: the effects below may move the records. */
    us_copyrec c = rec ? *rec : (us_copyrec){0};
    if (at == BANDIT_ATTRIBUTED) {
        long arm = bandit_arm_index(b, c.arm, c.segment);
        if (arm < 0) {
            at = BANDIT_UNKNOWN; /* its template is gone: nowhere to count it */
        } else {
            int k[2], n = bandit_reaction_counters(r->type, k);
            for (int i = 0; i < n; i++)
                if (bandit_stage(b, arm, c.partition, c.offset, k[i]) < 0) return -1;
        }
    }
    if (outcome != US_APPLIED) return at;
    if (r->type == RX_DISMISS && b->dismiss_s > 0) {
        uint64_t item = r->item_id && r->item_id[0] ? util_hash(r->item_id) : c.item;
        uint32_t now = bandit_seconds(r->ts_ms);
        int64_t until = (int64_t)now + b->dismiss_s;
        if (item && userstate_dismiss(u, item, until > UINT32_MAX ? UINT32_MAX : (uint32_t)until,
                                      now, b->max_dismissed) < 0)
            return -1;
    } else if (r->type == RX_UNSUBSCRIBE) {
        userstate_revoke_consent(u, r->ts_ms);
    }
    return at;
}

/* ---- sending updates ------------------------------------------------------------ */

static int bandit_update_cmp(const void *x, const void *y) {
    const bandit_update *a = x, *b = y;
    if (a->partition != b->partition) return a->partition < b->partition ? -1 : 1;
    if (a->offset != b->offset) return a->offset < b->offset ? -1 : 1;
    return (a->counter > b->counter) - (a->counter < b->counter);
}

/* Appends the EVAL of intent i's updates in bt (sorted). Returns 1 when one
 * was appended, 0 when the intent had none, -1 on error. */
static int bandit_append_eval(bandit *b, size_t i, const bandit_batch *bt) {
    /* Every string goes into the arena first, followed by its NUL (the %c
     * of 0); pointers are taken only once it has stopped moving. keys: the
     * hash, then the buckets; fields: the distinct fields; args: per bucket
     * its count, then (bit, field number) pairs. */
    size_t *keys = malloc((bt->n + 1) * sizeof *keys);
    size_t *fields = malloc((bt->n + 1) * sizeof *fields);
    size_t *args = malloc((3 * bt->n + 1) * sizeof *args);
    size_t nk = 0, nf = 0, na = 0;
    int rc = -1;
    if (!keys || !fields || !args) goto out;
    memset(b->field_index, 0, b->n_arms * BANDIT__COUNTERS * sizeof *b->field_index);
    buf_reset(&b->arena);
    keys[nk++] = b->arena.len;
    buf_printf(&b->arena, "%s%c", b->intents[i].key, 0);
    for (size_t s = 0; s < bt->n;) {
        const bandit_update *u = &bt->v[s];
        int64_t bucket = u->offset >> BANDIT_BUCKET_SHIFT;
        size_t e = s;
        while (e < bt->n && bt->v[e].partition == u->partition &&
               bt->v[e].offset >> BANDIT_BUCKET_SHIFT == bucket)
            e++;
        size_t count_at = na++, pairs = 0;
        for (size_t x = s; x < e; x++) {
            const bandit_update *up = &bt->v[x];
            if (b->groups[b->arms[up->arm].group].intent != i) continue;
            uint32_t *fi = &b->field_index[up->arm * BANDIT__COUNTERS + up->counter];
            if (!*fi) {
                fields[nf++] = b->arena.len;
                buf_printf(&b->arena, "%s%s%c", b->arms[up->arm].field,
                           bandit_counter_names[up->counter], 0);
                *fi = (uint32_t)nf;
            }
            int64_t bit = (up->offset & ((1 << BANDIT_BUCKET_SHIFT) - 1)) * 8 + up->counter;
            args[na++] = b->arena.len;
            buf_printf(&b->arena, "%" PRId64 "%c", bit, 0);
            args[na++] = b->arena.len;
            buf_printf(&b->arena, "%u%c", *fi, 0);
            pairs++;
        }
        if (pairs) {
            args[count_at] = b->arena.len;
            buf_printf(&b->arena, "%zu%c", pairs, 0);
            keys[nk++] = b->arena.len;
            buf_printf(&b->arena, "%s:m:%s:%" PRId32 ":%" PRId64 "%c", b->intents[i].key,
                       b->copy_topic, u->partition, bucket, 0);
        } else {
            na = count_at; /* only other intents' updates in this bucket */
        }
        s = e;
    }
    rc = 0;
    if (nk == 1) goto out; /* nothing for this intent */
    rc = -1;
    char numkeys[24], ttl[24], nfields[24];
    snprintf(numkeys, sizeof numkeys, "%zu", nk);
    snprintf(ttl, sizeof ttl, "%" PRId64, b->marker_ttl_s);
    snprintf(nfields, sizeof nfields, "%zu", nf);
    if (!b->arena.p || bandit_argv_reserve(b, 5 + nk + nf + na) < 0) goto out;
    size_t a = 0;
    b->argv[a] = "EVAL", b->argvlen[a++] = 4;
    b->argv[a] = bandit_update_lua, b->argvlen[a++] = sizeof bandit_update_lua - 1;
    b->argv[a] = numkeys, b->argvlen[a++] = strlen(numkeys);
    for (size_t k = 0; k < nk; k++, a++) {
        b->argv[a] = b->arena.p + keys[k];
        b->argvlen[a] = strlen(b->argv[a]);
    }
    b->argv[a] = ttl, b->argvlen[a++] = strlen(ttl);
    b->argv[a] = nfields, b->argvlen[a++] = strlen(nfields);
    for (size_t k = 0; k < nf + na; k++, a++) {
        b->argv[a] = b->arena.p + (k < nf ? fields[k] : args[k - nf]);
        b->argvlen[a] = strlen(b->argv[a]);
    }
    if (redisAppendCommandArgv(b->ctx, (int)a, b->argv, b->argvlen) != REDIS_OK) goto out;
    rc = 1;
out:
    free(keys);
    free(fields);
    free(args);
    return rc;
}

int bandit_seal(bandit *b) {
    if (b->n_sealed == BANDIT_QUEUE) return -1;
    bandit_batch *slot = &b->sealed[(b->sealed_head + b->n_sealed++) % BANDIT_QUEUE];
    bandit_batch spare = *slot;
    *slot = b->staging;
    b->staging = spare; /* reuse the slot's old array for the next batch */
    b->staging.n = 0;
    return 0;
}

void bandit_set_read_only(bandit *b) { b->read_only = 1; }

int bandit_send(bandit *b, char *errstr, size_t errlen) {
    if (!b->n_sealed || b->n_inflight == BANDIT_QUEUE)
        return util_err(errstr, errlen, "bandit: send without a sealed batch");
    bandit_batch *bt = &b->sealed[b->sealed_head];
    b->sealed_head = (b->sealed_head + 1) % BANDIT_QUEUE;
    b->n_sealed--;
    int refresh = util_monotonic_us() - b->last_refresh_us >= b->refresh_us;
    size_t evals = 0;
    if (b->read_only) bt->n = 0; /* counted nowhere; the snapshot may still be read */
    if (bt->n || refresh) {
        if (bandit_connect(b, errstr, errlen) < 0) goto fail_quiet;
        qsort(bt->v, bt->n, sizeof *bt->v, bandit_update_cmp);
        for (size_t i = 0; bt->n && i < b->n_intents; i++) {
            int rc = bandit_append_eval(b, i, bt);
            if (rc < 0) goto fail;
            evals += (size_t)rc;
        }
        for (size_t i = 0; refresh && i < b->n_intents; i++) {
            const char *argv[2] = {"HGETALL", b->intents[i].key};
            size_t argvlen[2] = {7, strlen(b->intents[i].key)};
            if (redisAppendCommandArgv(b->ctx, 2, argv, argvlen) != REDIS_OK) goto fail;
        }
        int done = 0;
        while (!done)
            if (redisBufferWrite(b->ctx, &done) != REDIS_OK) goto fail;
    }
    bt->n = 0;
    size_t k = (b->inflight_head + b->n_inflight++) % BANDIT_QUEUE;
    b->inflight[k].evals = evals;
    b->inflight[k].refresh = refresh;
    b->inflight[k].conn = b->conn;
    return 0;
fail:
    util_err(errstr, errlen, "redis %s:%d: %s", b->host, b->port,
             b->ctx && b->ctx->err ? b->ctx->errstr : "out of memory");
    bandit_disconnect(b); /* half-formed commands may sit in its buffer */
fail_quiet:
    bt->n = 0;
    return -1;
}

int bandit_wait(bandit *b, char *errstr, size_t errlen) {
    if (!b->n_inflight) return util_err(errstr, errlen, "bandit: wait without a send");
    size_t evals = b->inflight[b->inflight_head].evals;
    int refresh = b->inflight[b->inflight_head].refresh;
    uint64_t conn = b->inflight[b->inflight_head].conn;
    b->inflight_head = (b->inflight_head + 1) % BANDIT_QUEUE;
    b->n_inflight--;
    size_t n = evals + (refresh ? b->n_intents : 0);
    if (!n) return 0;
    if (!b->ctx || conn != b->conn) /* the replies went with a lost connection */
        return util_err(errstr, errlen, "redis %s:%d: connection lost", b->host, b->port);
    int rc = 0;
    for (size_t k = 0; k < n; k++) {
        redisReply *r = NULL;
        if (redisGetReply(b->ctx, (void **)&r) != REDIS_OK) {
            util_err(errstr, errlen, "redis %s:%d: %s", b->host, b->port, b->ctx->errstr);
            bandit_disconnect(b);
            return -1;
        }
        if (rc < 0) { /* keep draining so the connection stays usable */
        } else if (r->type == REDIS_REPLY_ERROR) {
            rc = util_err(errstr, errlen, "redis, bandit statistics: %s", r->str);
        } else if (k < evals) {
            if (r->type != REDIS_REPLY_INTEGER)
                rc = util_err(errstr, errlen, "redis, bandit update: unexpected reply");
        } else {
            rc = bandit_install(b, k - evals, r, errstr, errlen);
        }
        freeReplyObject(r);
    }
    if (rc == 0 && refresh) b->last_refresh_us = util_monotonic_us();
    return rc;
}

void bandit_discard(bandit *b) {
    b->staging.n = 0;
    for (size_t i = 0; i < BANDIT_QUEUE; i++) b->sealed[i].n = 0;
    b->n_sealed = 0;
    /* Replies still owed would be read as the next send's: drop them with
     * the connection, which the next send re-opens. */
    if (b->n_inflight) bandit_disconnect(b);
    b->n_inflight = 0;
}

void bandit_each_staged(const bandit *b, bandit_staged_fn fn, void *ud) {
    for (size_t i = 0; i < b->staging.n; i++) {
        const bandit_update *u = &b->staging.v[i];
        fn(u->partition, u->offset, b->arms[u->arm].field, u->counter, ud);
    }
}

void bandit_each_arm(const bandit *b, bandit_arm_fn fn, void *ud) {
    for (size_t a = 0; a < b->n_arms; a++) {
        const bandit_group *g = &b->groups[b->arms[a].group];
        fn(b->intents[g->intent].name, bandit_segment_names[g->segment], g->locale,
           b->arms[a].variant, &b->counts[a], ud);
    }
}

/* ---- reading every statistic (the report) ------------------------------------ */

/* Calls fn for each arm in one HGETALL reply of intent. */
static void bandit_report_hash(const char *intent, const redisReply *r, bandit_arm_fn fn,
                               void *ud) {
    /* Fields of one arm are not adjacent in a hash: gather them by prefix. */
    dict *arms = dict_new();
    if (!arms) return;
    for (size_t k = 0; k + 1 < r->elements; k += 2) {
        const redisReply *f = r->element[k], *v = r->element[k + 1];
        size_t plen;
        int counter;
        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
            bandit_split_field(f->str, f->len, &plen, &counter) < 0)
            continue;
        char *prefix = strndup(f->str, plen);
        if (!prefix) break;
        bandit_counts *c = dict_get(arms, prefix);
        if (!c) {
            /* the counts and their key in one block, freed together */
            char *block = calloc(1, sizeof *c + plen + 1);
            if (!block) {
                free(prefix);
                break;
            }
            c = (bandit_counts *)block;
            memcpy(block + sizeof *c, prefix, plen + 1);
            if (dict_set(arms, block + sizeof *c, c) < 0) {
                free(block);
                free(prefix);
                break;
            }
        }
        c->n[counter] += strtoull(v->str, NULL, 10);
        free(prefix);
    }
    size_t pos = 0;
    const char *key;
    void *val;
    while (dict_next(arms, &pos, &key, &val)) {
        /* key: "<segment>.<locale>.<variant>." */
        char tmp[256];
        snprintf(tmp, sizeof tmp, "%s", key);
        char *d1 = strchr(tmp, '.'), *d2 = d1 ? strchr(d1 + 1, '.') : NULL,
             *d3 = d2 ? strchr(d2 + 1, '.') : NULL;
        if (!d3) continue;
        *d1 = *d2 = *d3 = '\0';
        fn(intent, tmp, d1 + 1, d2 + 1, val, ud);
    }
    pos = 0;
    while (dict_next(arms, &pos, &key, &val)) free(val);
    dict_free(arms);
}

int bandit_read_stats(const config *c, bandit_arm_fn fn, void *ud, char *errstr, size_t errlen) {
    redisContext *ctx = store_connect_config(c, errstr, errlen);
    if (!ctx) return -1;
    buf pattern = BUF_INIT, head = BUF_INIT;
    buf_printf(&head, "%s:bandit:{", config_str(c, "redis.key_prefix"));
    buf_printf(&pattern, "%s*}", head.p ? head.p : "");
    int rc = -1;
    char cursor[32] = "0";
    if (!pattern.p || !head.p) {
        util_err(errstr, errlen, "out of memory");
        goto out;
    }
    do {
        const char *argv[6] = {"SCAN", cursor, "MATCH", pattern.p, "COUNT", "1000"};
        size_t argvlen[6] = {4, strlen(cursor), 5, pattern.len, 5, 4};
        redisReply *r = bandit_command(ctx, errstr, errlen, 6, argv, argvlen);
        if (!r) goto out;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING) {
            freeReplyObject(r);
            util_err(errstr, errlen, "redis SCAN: unexpected reply");
            goto out;
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++) {
            const redisReply *k = r->element[1]->element[i];
            /* The pattern's '*' could also match a marker bucket's ":m:..."
             * tail only if that ended with '}', which none does; but a
             * brace inside would make it no intent of ours: skip those. */
            if (k->len <= head.len || k->str[k->len - 1] != '}' ||
                memchr(k->str + head.len, '}', k->len - head.len - 1))
                continue;
            char *intent = strndup(k->str + head.len, k->len - head.len - 1);
            const char *hargv[2] = {"HGETALL", k->str};
            size_t hargvlen[2] = {7, k->len};
            redisReply *h = intent ? bandit_command(ctx, errstr, errlen, 2, hargv, hargvlen) : NULL;
            if (!h) {
                free(intent);
                freeReplyObject(r);
                if (!intent) util_err(errstr, errlen, "out of memory");
                goto out;
            }
            if (h->type == REDIS_REPLY_ARRAY) bandit_report_hash(intent, h, fn, ud);
            freeReplyObject(h);
            free(intent);
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    rc = 0;
out:
    buf_free(&pattern);
    buf_free(&head);
    redisFree(ctx);
    return rc;
}
