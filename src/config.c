/* config.c -- the declared keys, the INI file, environment overrides; see config.h.
 *
 * Every key copystream reads is declared once in cfg_decls below with its type,
 * default, bounds and a line of documentation; config/copystream.conf repeats
 * that documentation for operators and a unit test keeps the two in step. A
 * config is a flat array of entries (key, value, source) in the order the keys
 * were first set: the declared defaults, then what the file added, then what
 * the environment added. Values are checked and normalised as they are set
 * (lists re-joined without blanks, booleans spelled true/false), so getters
 * only convert and a loaded config never holds a value that failed validation.
 *
 * The file is read with inih through our own line reader, which counts lines
 * (the Debian build of inih does not pass line numbers to the handler), strips
 * indentation so that inih never glues an indented line onto the previous
 * value as a continuation, and refuses lines too long for inih's fixed buffer
 * instead of letting inih split them, and lines holding a NUL byte, at which
 * inih would end the value and drop the rest. Comments are whole lines
 * starting with '#' or ';'; inih also ends a value at a ';' preceded by
 * whitespace.
 *
 * kafka.* values are checked by setting them on a scratch librdkafka conf, so
 * a misspelt property or a bad value fails at load with librdkafka's own
 * reason rather than when the first client is created. The settings the
 * at-least-once guarantee depends on are refused here too (kafka.c forces them
 * anyway), so that an operator learns at start-up that they cannot be changed. */
#define _GNU_SOURCE /* strcasestr, getline */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <librdkafka/rdkafka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buf.h"
#include "util.h"

typedef enum { CFG_STRING, CFG_INT, CFG_DOUBLE, CFG_BOOL, CFG_ENUM, CFG_LIST } cfg_type;

#define CFG_SECRET   1 /* masked in config_dump */
#define CFG_NONEMPTY 2 /* a string or list that may not be empty */

typedef struct {
    const char *name;
    cfg_type type;
    const char *def;
    double min, max;     /* CFG_INT, CFG_DOUBLE; every int bound here is exact in a double */
    const char *choices; /* CFG_ENUM values, CFG_LIST elements, '|'-separated; NULL: any */
    int flags;
    const char *doc;
} cfg_decl;

#define EVENT_TYPES "view|click|add_to_cart|purchase|search|favorite"

static const cfg_decl cfg_decls[] = {
    {"log.level", CFG_ENUM, "info", 0, 0, "debug|info|warn|error", 0, "log verbosity"},

    {"topic.clickstream", CFG_STRING, "clickstream", 0, 0, NULL, CFG_NONEMPTY,
     "input click events, key = user id"},
    {"topic.catalog", CFG_STRING, "catalog", 0, 0, NULL, CFG_NONEMPTY,
     "compacted catalog, key = item id"},
    {"topic.reactions", CFG_STRING, "reactions", 0, 0, NULL, CFG_NONEMPTY,
     "reactions to copies, key = user id"},
    {"topic.copy", CFG_STRING, "copy", 0, 0, NULL, CFG_NONEMPTY, "output copies, key = user id"},
    {"topic.dead_letter", CFG_STRING, "copystream.dlq", 0, 0, NULL, CFG_NONEMPTY,
     "undecodable input, with reason headers"},
    {"topic.triggers", CFG_STRING, "copystream.triggers", 0, 0, NULL, CFG_NONEMPTY,
     "delayed triggers that came due, produced and consumed by copystream, key = user id"},
    {"topic.control", CFG_STRING, "copystream.control", 0, 0, NULL, CFG_NONEMPTY,
     "control messages (forget, opt_out, opt_in) as JSON, key = user id"},
    {"topic.partitions", CFG_INT, "6", 1, 10000, NULL, 0,
     "partitions when `copystream topics` creates a topic"},
    {"topic.replication_factor", CFG_INT, "1", 1, 32, NULL, 0,
     "replication factor when `copystream topics` creates a topic"},

    {"schema.dir", CFG_STRING, "schemas", 0, 0, NULL, CFG_NONEMPTY,
     "folder with the reader schemas <Name>.avsc"},
    {"input.max_bytes", CFG_INT, "1048576", 64, 67108864, NULL, 0,
     "longer input messages are dead-lettered as oversized"},

    {"redis.host", CFG_STRING, "127.0.0.1", 0, 0, NULL, CFG_NONEMPTY, "Redis server host"},
    {"redis.port", CFG_INT, "6379", 1, 65535, NULL, 0, "Redis server port"},
    {"redis.user", CFG_STRING, "", 0, 0, NULL, 0, "ACL user; empty = the default user"},
    {"redis.password", CFG_STRING, "", 0, 0, NULL, CFG_SECRET, "AUTH password; empty = none"},
    {"redis.password_file", CFG_STRING, "", 0, 0, NULL, 0,
     "file whose first line is the AUTH password, instead of redis.password"},
    {"redis.db", CFG_INT, "0", 0, 15, NULL, 0, "logical database number"},
    {"redis.timeout_ms", CFG_INT, "2000", 10, 600000, NULL, 0, "connect and command timeout"},
    {"redis.key_prefix", CFG_STRING, "cs", 0, 0, NULL, CFG_NONEMPTY,
     "prefix of every key copystream writes"},

    {"state.sequence_length", CFG_INT, "200", 1, 4096, NULL, 0, "recent events kept per user"},
    {"state.max_categories", CFG_INT, "32", 1, 1024, NULL, 0,
     "category affinities kept per user"},
    {"state.max_attributes", CFG_INT, "64", 1, 4096, NULL, 0,
     "attribute affinities kept per user"},
    {"state.max_bought", CFG_INT, "256", 0, 65536, NULL, 0, "purchased item ids kept per user"},
    {"state.ttl_s", CFG_INT, "2592000", 60, 31622400, NULL, 0,
     "inactive users' state expires after this"},
    {"state.cache_mb", CFG_INT, "256", 0, 1048576, NULL, 0,
     "in-process cache of owned users' state; 0 disables"},
    {"state.max_dismissed", CFG_INT, "64", 0, 4096, NULL, 0,
     "dismissed items remembered per user; 0 remembers none"},
    {"affinity.half_life_s", CFG_DOUBLE, "604800", 1, 1e9, NULL, 0,
     "affinity halves after this much event time"},
    {"affinity.weight.view", CFG_DOUBLE, "1.0", 0, 1000, NULL, 0, "affinity added by a view"},
    {"affinity.weight.click", CFG_DOUBLE, "1.5", 0, 1000, NULL, 0, "affinity added by a click"},
    {"affinity.weight.add_to_cart", CFG_DOUBLE, "3.0", 0, 1000, NULL, 0,
     "affinity added by an add to cart"},
    {"affinity.weight.purchase", CFG_DOUBLE, "5.0", 0, 1000, NULL, 0,
     "affinity added by a purchase"},
    {"affinity.weight.search", CFG_DOUBLE, "0.5", 0, 1000, NULL, 0, "affinity added by a search"},
    {"affinity.weight.favorite", CFG_DOUBLE, "2.0", 0, 1000, NULL, 0,
     "affinity added by a favorite"},
    {"dedup.window_s", CFG_INT, "86400", 0, 31622400, NULL, 0,
     "an event id seen again within this much event time counts once; 0 disables"},
    {"dedup.max_ids", CFG_INT, "512", 0, 65536, NULL, 0, "event ids remembered per user"},

    {"batch.max_events", CFG_INT, "2000", 1, 1000000, NULL, 0,
     "events per batch, one Redis round trip each"},
    {"batch.max_wait_ms", CFG_INT, "20", 0, 60000, NULL, 0, "how long to wait to fill a batch"},
    {"processing.guarantee", CFG_ENUM, "at_least_once", 0, 0, "at_least_once|exactly_once", 0,
     "delivery guarantee (docs/GUARANTEES.md)"},
    {"processing.transactional_id", CFG_STRING, "", 0, 0, NULL, 0,
     "exactly_once: this instance's transactional id, unique and stable across restarts"},
    {"shutdown.timeout_s", CFG_INT, "30", 1, 3600, NULL, 0,
     "how long a graceful shutdown may take"},

    {"copy.trigger_types", CFG_LIST, "view,click,add_to_cart,purchase,favorite", 0, 0,
     EVENT_TYPES, CFG_NONEMPTY, "event types that may trigger a copy"},
    {"copy.min_interval_s", CFG_INT, "600", 0, 31622400, NULL, 0,
     "at most one copy per user per this much event time"},
    {"copy.items", CFG_INT, "3", 1, 20, NULL, 0, "items promoted per copy"},
    {"copy.max_reasons", CFG_INT, "3", 0, 10, NULL, 0, "reasons explained per copy"},
    {"copy.default_locale", CFG_STRING, "en-US", 0, 0, NULL, CFG_NONEMPTY,
     "locale for users whose locale is unknown; one of copy.locales"},
    {"copy.locales", CFG_LIST, "zh-CN,en-US", 0, 0, NULL, CFG_NONEMPTY,
     "locales copy can be written in"},
    {"copy.templates", CFG_STRING, "config/templates.conf", 0, 0, NULL, CFG_NONEMPTY,
     "the template catalog file"},
    {"copy.dismissed_item_s", CFG_INT, "1209600", 0, 31622400, NULL, 0,
     "a dismissed item is not promoted to that user for this much event time; 0: never hidden"},

    {"intent.recommendation.enabled", CFG_BOOL, "true", 0, 0, NULL, 0,
     "copy for a browsing streak in a category"},
    {"intent.recommendation.streak", CFG_INT, "3", 1, 1000, NULL, 0,
     "events of copy.trigger_types in one category that make a streak"},
    {"intent.recommendation.streak_window_s", CFG_INT, "600", 1, 31622400, NULL, 0,
     "within this much event time"},
    {"intent.cart_reminder.enabled", CFG_BOOL, "true", 0, 0, NULL, 0,
     "copy for an item left in the cart"},
    {"intent.cart_reminder.delay_s", CFG_INT, "3600", 1, 31622400, NULL, 0,
     "this long after the add to cart, unless the item was bought"},
    {"intent.cross_sell.enabled", CFG_BOOL, "true", 0, 0, NULL, 0, "copy after a purchase"},
    {"intent.re_engagement.enabled", CFG_BOOL, "true", 0, 0, NULL, 0,
     "copy for a user back after an absence"},
    {"intent.re_engagement.absence_s", CFG_INT, "1209600", 60, 31622400, NULL, 0,
     "event time between a user's events that makes a return"},
    {"intent.price_drop.enabled", CFG_BOOL, "true", 0, 0, NULL, 0,
     "copy when an item the user viewed or carted gets cheaper"},
    {"intent.price_drop.min_percent", CFG_DOUBLE, "5", 0, 100, NULL, 0,
     "the smallest drop, in percent of the old price, that makes a copy"},
    {"intent.price_drop.watch_types", CFG_LIST, "view,add_to_cart", 0, 0, EVENT_TYPES, 0,
     "events that make a user watch an item's price"},
    {"intent.price_drop.watch_s", CFG_INT, "1209600", 60, 31622400, NULL, 0,
     "how long such an event keeps the user watching"},
    {"intent.price_drop.max_watchers", CFG_INT, "10000", 1, 10000000, NULL, 0,
     "users remembered per item, the most recent"},
    {"trigger.max_late_s", CFG_INT, "86400", 60, 31622400, NULL, 0,
     "a delayed trigger found later than this after it was due is dropped as stale"},
    {"trigger.scan_interval_ms", CFG_INT, "1000", 10, 600000, NULL, 0,
     "how often an instance looks for due triggers in the partitions it owns"},
    {"trigger.scan_max", CFG_INT, "1000", 1, 100000, NULL, 0,
     "due triggers taken per partition per look"},

    {"policy.timezones", CFG_STRING, "zh-CN=Asia/Shanghai,en-US=America/New_York", 0, 0, NULL,
     0, "time zone of each locale's users, <locale>=<IANA zone>,..."},
    {"policy.default_timezone", CFG_STRING, "UTC", 0, 0, NULL, CFG_NONEMPTY,
     "time zone of users whose locale has none"},
    {"policy.quiet_hours", CFG_STRING, "", 0, 0, NULL, 0,
     "HH:MM-HH:MM of the user's local time without copy; empty: none"},
    {"policy.max_per_hour", CFG_INT, "3", 0, 1000, NULL, 0,
     "copies per user in one hour of their local time; 0: no cap"},
    {"policy.max_per_day", CFG_INT, "10", 0, 10000, NULL, 0,
     "copies per user in one day of their local time; 0: no cap"},
    {"policy.no_repeat_days", CFG_INT, "3", 0, 366, NULL, 0,
     "an item promoted to a user is not promoted to them again for this many days; 0: off"},
    {"policy.no_repeat_max_items", CFG_INT, "64", 1, 4096, NULL, 0,
     "items remembered per user for that"},

    {"privacy.tombstone_topics", CFG_LIST, "", 0, 0, NULL, 0,
     "compacted topics keyed by user id that `copystream forget` writes a tombstone to"},

    {"bandit.policy", CFG_ENUM, "thompson", 0, 0, "thompson|uniform", 0,
     "how a copy's template variant is chosen"},
    {"bandit.reward", CFG_ENUM, "click", 0, 0, "click|conversion", 0,
     "what the bandit maximises per impression"},
    {"bandit.prior_alpha", CFG_DOUBLE, "1.0", 0.001, 1e6, NULL, 0,
     "Beta prior of every arm: pseudo-successes"},
    {"bandit.prior_beta", CFG_DOUBLE, "1.0", 0.001, 1e6, NULL, 0,
     "Beta prior of every arm: pseudo-failures"},
    {"bandit.refresh_s", CFG_INT, "5", 0, 3600, NULL, 0,
     "how often the statistics snapshot is re-read; 0: every batch"},
    {"bandit.attribution_window_s", CFG_INT, "86400", 60, 31622400, NULL, 0,
     "reactions later than this after their copy are counted as late, not applied"},
    {"bandit.max_copies", CFG_INT, "16", 1, 1024, NULL, 0,
     "copies remembered per user for attributing reactions"},
    {"holdout.percent", CFG_DOUBLE, "0", 0, 100, NULL, 0,
     "share of users (stable hash of the user id) who get no copy, to measure lift"},

    {"model.path", CFG_STRING, "", 0, 0, NULL, 0,
     "the learned model file; empty: every copy uses the affinity strategy"},
    {"model.min_events", CFG_INT, "3", 1, 1000000, NULL, 0,
     "events a user needs before the model chooses; fewer: the affinity strategy"},
    {"model.kv_cache_mb", CFG_INT, "512", 0, 1048576, NULL, 0,
     "in-process cache of owned users' model states; 0 rebuilds a state at every event"},
    {"model.max_batch", CFG_INT, "64", 1, 4096, NULL, 0,
     "users advanced and scored together in one model step"},
    {"model.reload_check_s", CFG_INT, "10", 0, 86400, NULL, 0,
     "how often to look for a changed model file; 0: only on SIGHUP"},

    {"http.bind", CFG_STRING, "127.0.0.1", 0, 0, NULL, CFG_NONEMPTY,
     "address of the metrics and health server"},
    {"http.port", CFG_INT, "9464", 0, 65535, NULL, 0, "port of that server; 0 disables it"},
};

/* Members of the open families that exist even without a file. */
static const char *const cfg_family_defaults[][2] = {
    {"kafka.bootstrap.servers", "127.0.0.1:9092"},
    {"kafka.group.id", "copystream"},
    {"kafka.client.id", "copystream"},
    {"schema.id.1", "ClickEvent.avsc"},
    {"schema.id.2", "CatalogItem.avsc"},
    {"schema.id.3", "PersonalizedCopy.avsc"},
    {"schema.id.4", "Reaction.avsc"},
};

#define KAFKA_PREFIX     "kafka."
#define SCHEMA_ID_PREFIX "schema.id."
#define ENV_PREFIX       "COPYSTREAM_"
#define ENV_RESERVED     "COPYSTREAM_CONFIG" /* main's default config path, not a key */
#define SOURCE_SET       "command line"

typedef enum { FROM_DEFAULT, FROM_FILE, FROM_ENV, FROM_SET } cfg_origin;

typedef struct {
    char *key;
    char *value;
    char *source; /* "default", "path:line", "env NAME" or SOURCE_SET */
    cfg_origin from;
} cfg_entry;

struct config {
    cfg_entry *v;
    size_t n, cap;
};

static int has_prefix(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static const cfg_decl *decl_find(const char *key) {
    for (size_t i = 0; i < UTIL_ARRAY_LEN(cfg_decls); i++)
        if (strcmp(cfg_decls[i].name, key) == 0) return &cfg_decls[i];
    return NULL;
}

static cfg_entry *entry_find(const config *c, const char *key) {
    for (size_t i = 0; i < c->n; i++)
        if (strcmp(c->v[i].key, key) == 0) return &c->v[i];
    return NULL;
}

/* Is the n-byte word s one of the '|'-separated choices? */
static int choice_ok(const char *choices, const char *s, size_t n) {
    for (const char *p = choices;;) {
        size_t len = strcspn(p, "|");
        if (len == n && memcmp(p, s, n) == 0) return 1;
        if (!p[len]) return 0;
        p += len + 1;
    }
}

/* "a|b|c" as "a, b, c" for messages. */
static const char *choices_text(const char *choices, char *out, size_t outlen) {
    size_t o = 0;
    for (const char *p = choices; *p && o + 3 < outlen; p++) {
        if (*p == '|') {
            out[o++] = ',';
            out[o++] = ' ';
        } else {
            out[o++] = *p;
        }
    }
    out[o] = '\0';
    return out;
}

/* Is word an element of the comma-separated, already normalised list? */
static int list_has(const char *list, const char *word) {
    size_t n = strlen(word);
    for (const char *p = list;;) {
        size_t len = strcspn(p, ",");
        if (len == n && memcmp(p, word, n) == 0) return 1;
        if (!p[len]) return 0;
        p += len + 1;
    }
}

static int parse_bool(const char *s) {
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < UTIL_ARRAY_LEN(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0) return 1;
        if (strcasecmp(s, no[i]) == 0) return 0;
    }
    return -1;
}

/* Strict: the whole string, base 10, no surrounding blanks, no overflow. */
static int parse_int(const char *s, int64_t *out) {
    if (!*s || isspace((unsigned char)*s)) return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end) return -1;
    *out = v;
    return 0;
}

static int parse_double(const char *s, double *out) {
    if (!*s || isspace((unsigned char)*s)) return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

/* Optimal-string-alignment distance, so that a swapped pair of letters costs 1. */
static size_t edit_distance(const char *a, const char *b) {
    size_t m = strlen(a), n = strlen(b);
    if (m > 64 || n > 64) return SIZE_MAX;
    size_t d[65][65];
    for (size_t i = 0; i <= m; i++) d[i][0] = i;
    for (size_t j = 0; j <= n; j++) d[0][j] = j;
    for (size_t i = 1; i <= m; i++) {
        for (size_t j = 1; j <= n; j++) {
            size_t best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < best) best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    }
    return d[m][n];
}

/* The declared key closest to an unknown one, if close enough to be a typo. */
static const char *suggest_key(const char *key) {
    size_t limit = strlen(key) / 5 > 2 ? strlen(key) / 5 : 2, best = SIZE_MAX;
    const char *name = NULL;
    for (size_t i = 0; i < UTIL_ARRAY_LEN(cfg_decls); i++) {
        size_t d = edit_distance(key, cfg_decls[i].name);
        if (d <= limit && d < best) {
            best = d;
            name = cfg_decls[i].name;
        }
    }
    return name;
}

/* The environment variable that sets key (the rule in config.h). */
static void env_name(const char *key, char *out, size_t outlen) {
    size_t o = (size_t)snprintf(out, outlen, "%s", ENV_PREFIX);
    for (const char *p = key; *p && o + 3 < outlen; p++) {
        if (*p == '_') out[o++] = '_';
        out[o++] = *p == '.' ? '_' : (char)toupper((unsigned char)*p);
    }
    out[o] = '\0';
}

/* The inverse: "MIN__INTERVAL_S" -> "min_interval.s". The caller frees. */
static char *env_key(const char *name) {
    char *key = malloc(strlen(name) + 1);
    if (!key) return NULL;
    size_t o = 0;
    for (const char *p = name; *p; p++) {
        if (*p == '_' && p[1] == '_') {
            key[o++] = '_';
            p++;
        } else {
            key[o++] = *p == '_' ? '.' : (char)tolower((unsigned char)*p);
        }
    }
    key[o] = '\0';
    return key;
}

/* Checks a librdkafka property (name without kafka./kafka.consumer./
 * kafka.producer.) against librdkafka and against what our delivery
 * guarantee needs. */
static int kafka_check(const char *name, const char *value, char *why, size_t whylen) {
    /* "topic.<prop>" reaches the same default topic conf as "<prop>". */
    const char *base = has_prefix(name, "topic.") ? name + strlen("topic.") : name;
    if (strcmp(base, "enable.auto.commit") == 0 || strcmp(base, "auto.commit.enable") == 0 ||
        strcmp(base, "enable.auto.offset.store") == 0)
        return util_err(why, whylen,
                        "copystream manages offset commits itself: it stores and commits an "
                        "offset only once that input's state and copies are durable, which is "
                        "what makes delivery at-least-once; remove this setting");
    if (strcmp(base, "transactional.id") == 0)
        return util_err(why, whylen,
                        "set processing.transactional_id instead: only the service's producer "
                        "is transactional, and only with processing.guarantee = exactly_once");

    rd_kafka_conf_t *scratch = rd_kafka_conf_new();
    char rderr[512];
    if (rd_kafka_conf_set(scratch, name, value, rderr, sizeof rderr) != RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(scratch);
        /* librdkafka quotes some refused values; never a secret's. */
        char key[256];
        snprintf(key, sizeof key, "%s%s", KAFKA_PREFIX, name);
        if (config_is_secret(key)) util_redact(rderr, sizeof rderr, value);
        size_t len = strlen(rderr);
        while (len && isspace((unsigned char)rderr[len - 1])) rderr[--len] = '\0';
        return util_err(why, whylen, "librdkafka: %s", rderr);
    }
    /* Read back, so that every spelling librdkafka accepts ("F", "1", "all")
     * is judged by what it means. */
    char got[64] = "";
    size_t gotlen = sizeof got;
    int bad = 0;
    if (strcmp(base, "enable.idempotence") == 0)
        bad = rd_kafka_conf_get(scratch, "enable.idempotence", got, &gotlen) == RD_KAFKA_CONF_OK &&
              strcmp(got, "false") == 0;
    else if (strcmp(base, "acks") == 0 || strcmp(base, "request.required.acks") == 0)
        bad = rd_kafka_conf_get(scratch, "acks", got, &gotlen) == RD_KAFKA_CONF_OK &&
              strcmp(got, "-1") != 0;
    else if (strcmp(base, "isolation.level") == 0 &&
             rd_kafka_conf_get(scratch, "isolation.level", got, &gotlen) == RD_KAFKA_CONF_OK &&
             strcmp(got, "read_committed") != 0) {
        rd_kafka_conf_destroy(scratch);
        return util_err(why, whylen,
                        "copystream reads only committed messages: an aborted transaction's "
                        "events never happened, and exactly_once rests on it; remove this "
                        "setting");
    }
    rd_kafka_conf_destroy(scratch);
    if (bad)
        return util_err(why, whylen,
                        "copystream's producer must be idempotent with acks=all so that no "
                        "copy it has counted as delivered can be lost (at-least-once "
                        "delivery); remove this setting");
    return 0;
}

static int schema_id_check(const char *n, const char *value, char *why, size_t whylen) {
    int64_t id;
    char canon[24] = "";
    if (parse_int(n, &id) == 0 && id >= 1 && id <= 2147483647)
        snprintf(canon, sizeof canon, "%lld", (long long)id);
    /* Only the canonical spelling, so that schema.id.7 and schema.id.07 cannot both exist. */
    if (strcmp(n, canon) != 0)
        return util_err(why, whylen,
                        "the schema id after schema.id. must be a whole number from 1 to "
                        "2147483647, written without sign or leading zeros");
    if (!*value)
        return util_err(why, whylen, "must be the .avsc file for that schema id, got nothing");
    return 0;
}

/* Checks value against a declaration and returns in *out the form to store
 * (the caller owns it). On error, returns -1 with the reason in why; a
 * secret's value is never quoted in a reason. */
static int decl_check(const cfg_decl *d, const char *value, char **out, char *why,
                      size_t whylen) {
    const char *shown = d->flags & CFG_SECRET ? "***" : value;
    char choices[256];
    int64_t i;
    double x;
    buf list = BUF_INIT;

    switch (d->type) {
    case CFG_STRING:
        if ((d->flags & CFG_NONEMPTY) && !*value) return util_err(why, whylen, "must not be empty");
        *out = strdup(value);
        break;
    case CFG_INT:
        if (parse_int(value, &i) < 0 || (double)i < d->min || (double)i > d->max)
            return util_err(why, whylen, "must be an integer between %.15g and %.15g, got \"%s\"",
                            d->min, d->max, shown);
        *out = strdup(value);
        break;
    case CFG_DOUBLE:
        if (parse_double(value, &x) < 0 || x < d->min || x > d->max)
            return util_err(why, whylen, "must be a number between %.15g and %.15g, got \"%s\"",
                            d->min, d->max, shown);
        *out = strdup(value);
        break;
    case CFG_BOOL:
        if (parse_bool(value) < 0)
            return util_err(why, whylen,
                            "must be true or false (or yes/no, on/off, 1/0), got \"%s\"", shown);
        *out = strdup(parse_bool(value) ? "true" : "false");
        break;
    case CFG_ENUM:
        if (!choice_ok(d->choices, value, strlen(value)))
            return util_err(why, whylen, "must be one of %s; got \"%s\"",
                            choices_text(d->choices, choices, sizeof choices), shown);
        *out = strdup(value);
        break;
    case CFG_LIST:
        /* Stored as the trimmed elements joined by ',', so readers split on ',' alone. */
        for (const char *p = value;; p++) {
            size_t len = strcspn(p, ",");
            const char *s = p, *e = p + len;
            while (s < e && isspace((unsigned char)*s)) s++;
            while (e > s && isspace((unsigned char)e[-1])) e--;
            if (s == e && p == value && !p[len]) break; /* nothing but blanks: an empty list */
            if (s == e) {
                buf_free(&list);
                return util_err(why, whylen, "has an empty element in \"%s\"", shown);
            }
            if (d->choices && !choice_ok(d->choices, s, (size_t)(e - s))) {
                buf_free(&list);
                return util_err(why, whylen, "\"%.*s\" is not one of %s", (int)(e - s), s,
                                choices_text(d->choices, choices, sizeof choices));
            }
            if ((list.len && buf_puts(&list, ",") < 0) ||
                buf_append(&list, s, (size_t)(e - s)) < 0) {
                buf_free(&list);
                return util_err(why, whylen, "out of memory");
            }
            p += len;
            if (!*p) break;
        }
        if ((d->flags & CFG_NONEMPTY) && list.len == 0)
            return util_err(why, whylen, "must list at least one element");
        *out = list.len ? list.p : strdup("");
        break;
    }
    return *out ? 0 : util_err(why, whylen, "out of memory");
}

/* Checks a key and its value; see decl_check(). from decides how an unknown
 * key's suggestion is spelt. */
static int value_check(const char *key, const char *value, cfg_origin from, char **out,
                       char *why, size_t whylen) {
    const cfg_decl *d = decl_find(key);
    *out = NULL;
    if (d) return decl_check(d, value, out, why, whylen);

    int rc = -1;
    if (has_prefix(key, KAFKA_PREFIX)) {
        const char *name = key + strlen(KAFKA_PREFIX);
        if (has_prefix(name, "consumer.") || has_prefix(name, "producer."))
            name += strlen("consumer."); /* as long as "producer." */
        rc = kafka_check(name, value, why, whylen);
    } else if (has_prefix(key, SCHEMA_ID_PREFIX)) {
        rc = schema_id_check(key + strlen(SCHEMA_ID_PREFIX), value, why, whylen);
    } else {
        const char *near = suggest_key(key);
        char var[128];
        if (!near) return util_err(why, whylen, "unknown key");
        if (from != FROM_ENV) return util_err(why, whylen, "unknown key (did you mean %s?)", near);
        env_name(near, var, sizeof var);
        return util_err(why, whylen, "unknown key (did you mean %s, set by %s?)", near, var);
    }
    if (rc < 0) return rc;
    *out = strdup(value);
    return *out ? 0 : util_err(why, whylen, "out of memory");
}

/* Stores key = value (taking ownership of value) from source. The file may
 * not set a key twice; later layers (environment, config_set) replace. */
static int config_store(config *c, const char *key, char *value, cfg_origin from,
                        const char *source, char *errstr, size_t errlen) {
    cfg_entry *e = entry_find(c, key);
    char *src = strdup(source);
    if (!src) goto oom;
    if (e && from == FROM_FILE && e->from == FROM_FILE) {
        util_err(errstr, errlen, "%s (%s): set twice in the file, first at %s", key, source,
                 e->source);
        goto err;
    }
    if (!e) {
        if (c->n == c->cap) {
            size_t cap = c->cap ? c->cap * 2 : 64;
            cfg_entry *v = realloc(c->v, cap * sizeof *v);
            if (!v) goto oom;
            c->v = v;
            c->cap = cap;
        }
        char *k = strdup(key);
        if (!k) goto oom;
        e = &c->v[c->n++];
        *e = (cfg_entry){k, NULL, NULL, from};
    }
    free(e->value);
    free(e->source);
    e->value = value;
    e->source = src;
    e->from = from;
    return 0;
oom:
    util_err(errstr, errlen, "%s (%s): out of memory", key, source);
err:
    free(src);
    free(value);
    return -1;
}

/* Validates and stores; every layer goes through here. */
static int config_put(config *c, const char *key, const char *value, cfg_origin from,
                      const char *source, char *errstr, size_t errlen) {
    char why[768], *v;
    if (value_check(key, value, from, &v, why, sizeof why) < 0)
        return util_err(errstr, errlen, "%s (%s): %s", key, source, why);
    return config_store(c, key, v, from, source, errstr, errlen);
}

/* The one rule between keys: copy.default_locale must be one of copy.locales. */
static int locales_check(const char *def, const char *def_source, const char *locales,
                         const char *locales_source, char *errstr, size_t errlen) {
    if (list_has(locales, def)) return 0;
    return util_err(errstr, errlen,
                    "copy.default_locale (%s): \"%s\" is not one of copy.locales = %s (%s)",
                    def_source, def, locales, locales_source);
}

typedef struct {
    config *c;
    const char *path;
    FILE *f;
    char *line;
    size_t linecap;
    int lineno;
    int failed_at; /* the line of the first error we reported; 0: none */
    buf key, source;
    char *errstr;
    size_t errlen;
} file_parse;

/* inih's line reader. See the file comment for why it is ours. */
static char *file_read_line(char *str, int num, void *stream) {
    file_parse *p = stream;
    if (p->failed_at) return NULL;
    ssize_t n = getline(&p->line, &p->linecap, p->f);
    if (n < 0) return NULL;
    p->lineno++;
    if (memchr(p->line, '\0', (size_t)n)) { /* found by tests/fuzz */
        util_err(p->errstr, p->errlen, "%s:%d: NUL byte in the line; the file is not text",
                 p->path, p->lineno);
        p->failed_at = p->lineno;
        return NULL;
    }
    const char *s = p->line;
    while (*s == ' ' || *s == '\t') s++;
    size_t len = strcspn(s, "\n");
    /* With room for the "\n" that tells inih the line is whole, and the NUL. */
    if (len + 2 > (size_t)num) {
        util_err(p->errstr, p->errlen,
                 "%s:%d: line longer than %d characters; set long values through the environment",
                 p->path, p->lineno, num - 2);
        p->failed_at = p->lineno;
        return NULL;
    }
    memcpy(str, s, len);
    memcpy(str + len, "\n", 2);
    return str;
}

static int file_on_pair(void *ud, const char *section, const char *name, const char *value) {
    file_parse *p = ud;
    if (p->failed_at) return 1;
    buf_reset(&p->key);
    buf_reset(&p->source);
    if (buf_printf(&p->key, "%s%s%s", section, *section ? "." : "", name) < 0 ||
        buf_printf(&p->source, "%s:%d", p->path, p->lineno) < 0) {
        util_err(p->errstr, p->errlen, "%s:%d: out of memory", p->path, p->lineno);
        p->failed_at = p->lineno;
        return 1;
    }
    if (config_put(p->c, p->key.p, value, FROM_FILE, p->source.p, p->errstr, p->errlen) < 0)
        p->failed_at = p->lineno;
    /* Errors are ours to report (inih would only keep parsing). */
    return 1;
}

static int config_read_file(config *c, const char *path, char *errstr, size_t errlen) {
    file_parse p = {c, path, NULL, NULL, 0, 0, 0, BUF_INIT, BUF_INIT, errstr, errlen};
    int rc = -1;
    p.f = fopen(path, "r");
    if (!p.f) {
        util_err(errstr, errlen, "%s: cannot open: %s", path, strerror(errno));
        goto err;
    }
    int syntax = ini_parse_stream(file_read_line, &p, file_on_pair, &p);
    if (ferror(p.f)) {
        util_err(errstr, errlen, "%s: cannot read: %s", path, strerror(errno));
        goto err;
    }
    /* inih reports the first line it could not parse, but it may have read
     * further than our first error, or stopped before it. */
    if (syntax > 0 && (!p.failed_at || syntax < p.failed_at)) {
        util_err(errstr, errlen, "%s:%d: expected \"key = value\" or \"[section]\"", path, syntax);
        goto err;
    }
    if (syntax == -2) {
        util_err(errstr, errlen, "%s: out of memory", path);
        goto err;
    }
    if (p.failed_at) goto err;
    rc = 0;
err:
    if (p.f) fclose(p.f);
    free(p.line);
    buf_free(&p.key);
    buf_free(&p.source);
    return rc;
}

static int config_read_env(config *c, char *const *envp, char *errstr, size_t errlen) {
    buf source = BUF_INIT;
    char *key = NULL;
    int rc = -1;
    for (size_t i = 0; envp && envp[i]; i++) {
        const char *var = envp[i], *eq = strchr(var, '=');
        if (!eq || !has_prefix(var, ENV_PREFIX)) continue;
        size_t namelen = (size_t)(eq - var);
        if (namelen == strlen(ENV_RESERVED) && has_prefix(var, ENV_RESERVED)) continue;
        buf_reset(&source);
        free(key);
        key = NULL;
        if (buf_printf(&source, "env %.*s", (int)namelen, var) < 0 ||
            !(key = env_key(source.p + strlen("env " ENV_PREFIX)))) {
            util_err(errstr, errlen, "environment: out of memory");
            goto err;
        }
        if (config_put(c, key, eq + 1, FROM_ENV, source.p, errstr, errlen) < 0) goto err;
    }
    rc = 0;
err:
    free(key);
    buf_free(&source);
    return rc;
}

config *config_load(const char *path, char *const *envp, char *errstr, size_t errlen) {
    config *c = calloc(1, sizeof *c);
    if (!c) {
        util_err(errstr, errlen, "config: out of memory");
        return NULL;
    }
    /* Defaults pass the same checks, so a bad entry in the table fails every test. */
    for (size_t i = 0; i < UTIL_ARRAY_LEN(cfg_decls); i++)
        if (config_put(c, cfg_decls[i].name, cfg_decls[i].def, FROM_DEFAULT, "default", errstr,
                       errlen) < 0)
            goto err;
    for (size_t i = 0; i < UTIL_ARRAY_LEN(cfg_family_defaults); i++)
        if (config_put(c, cfg_family_defaults[i][0], cfg_family_defaults[i][1], FROM_DEFAULT,
                       "default", errstr, errlen) < 0)
            goto err;
    if (path && config_read_file(c, path, errstr, errlen) < 0) goto err;
    if (config_read_env(c, envp, errstr, errlen) < 0) goto err;
    const cfg_entry *def = entry_find(c, "copy.default_locale");
    const cfg_entry *all = entry_find(c, "copy.locales");
    if (locales_check(def->value, def->source, all->value, all->source, errstr, errlen) < 0)
        goto err;
    return c;
err:
    config_free(c);
    return NULL;
}

void config_free(config *c) {
    if (!c) return;
    for (size_t i = 0; i < c->n; i++) {
        free(c->v[i].key);
        free(c->v[i].value);
        free(c->v[i].source);
    }
    free(c->v);
    free(c);
}

/* Unlike the getters this writes, so it belongs before the config is shared
 * between threads (start-up flags). */
int config_set(config *c, const char *key, const char *value, char *errstr, size_t errlen) {
    char why[768], *v;
    if (value_check(key, value, FROM_SET, &v, why, sizeof why) < 0)
        return util_err(errstr, errlen, "%s (%s): %s", key, SOURCE_SET, why);
    /* Checked before storing, so that a refused value leaves the config as it was. */
    const cfg_entry *def = entry_find(c, "copy.default_locale");
    const cfg_entry *all = entry_find(c, "copy.locales");
    int bad = 0;
    if (strcmp(key, "copy.default_locale") == 0)
        bad = locales_check(v, SOURCE_SET, all->value, all->source, errstr, errlen) < 0;
    else if (strcmp(key, "copy.locales") == 0)
        bad = locales_check(def->value, def->source, v, SOURCE_SET, errstr, errlen) < 0;
    if (bad) {
        free(v);
        return -1;
    }
    return config_store(c, key, v, FROM_SET, SOURCE_SET, errstr, errlen);
}

/* The entry a getter reads; a wrong key or type is a bug in the caller. A
 * member of an open family that is not set is NULL (config_str only). */
static const cfg_entry *config_get(const config *c, const char *key, cfg_type want,
                                   const char *getter) {
    const cfg_decl *d = decl_find(key);
    int family = has_prefix(key, KAFKA_PREFIX) || has_prefix(key, SCHEMA_ID_PREFIX);
    int ok = d ? d->type == want || (want == CFG_STRING && (d->type == CFG_ENUM ||
                                                              d->type == CFG_LIST))
               : family && want == CFG_STRING;
    if (!ok) {
        fprintf(stderr, "%s(\"%s\"): %s\n", getter, key,
                d || family ? "the key has another type" : "no such key is declared");
        abort();
    }
    return entry_find(c, key);
}

const char *config_str(const config *c, const char *key) {
    const cfg_entry *e = config_get(c, key, CFG_STRING, "config_str");
    return e ? e->value : NULL;
}

int64_t config_int(const config *c, const char *key) {
    return strtoll(config_get(c, key, CFG_INT, "config_int")->value, NULL, 10);
}

double config_double(const config *c, const char *key) {
    return strtod(config_get(c, key, CFG_DOUBLE, "config_double")->value, NULL);
}

int config_bool(const config *c, const char *key) {
    return strcmp(config_get(c, key, CFG_BOOL, "config_bool")->value, "true") == 0;
}

int config_is_secret(const char *key) {
    const cfg_decl *d = decl_find(key);
    if (d) return (d->flags & CFG_SECRET) != 0;
    if (!has_prefix(key, KAFKA_PREFIX)) return 0;
    size_t len = strlen(key), pem = strlen(".key.pem");
    return strcasestr(key, "password") || strcasestr(key, "secret") ||
           strcasestr(key, "sasl.oauthbearer.config") ||
           (len >= pem && strcasecmp(key + len - pem, ".key.pem") == 0);
}

void config_kafka_each(const config *c, const char *client, config_kv_fn fn, void *ud) {
    if (strcmp(client, "consumer") != 0 && strcmp(client, "producer") != 0) {
        fprintf(stderr, "config_kafka_each: client must be consumer or producer, not \"%s\"\n",
                client);
        abort();
    }
    char scoped[32];
    snprintf(scoped, sizeof scoped, "%s%s.", KAFKA_PREFIX, client);
    /* The shared properties first, then this client's: librdkafka keeps the
     * last value set, so a kafka.consumer.x beats a kafka.x wherever each is. */
    for (size_t i = 0; i < c->n; i++) {
        const char *k = c->v[i].key;
        if (has_prefix(k, KAFKA_PREFIX) && !has_prefix(k, KAFKA_PREFIX "consumer.") &&
            !has_prefix(k, KAFKA_PREFIX "producer."))
            fn(k + strlen(KAFKA_PREFIX), c->v[i].value, ud);
    }
    for (size_t i = 0; i < c->n; i++)
        if (has_prefix(c->v[i].key, scoped))
            fn(c->v[i].key + strlen(scoped), c->v[i].value, ud);
}

void config_schema_ids_each(const config *c, config_kv_fn fn, void *ud) {
    for (size_t i = 0; i < c->n; i++)
        if (has_prefix(c->v[i].key, SCHEMA_ID_PREFIX))
            fn(c->v[i].key + strlen(SCHEMA_ID_PREFIX), c->v[i].value, ud);
}

void config_dump(const config *c, int fd) {
    buf out = BUF_INIT;
    for (size_t i = 0; i < c->n; i++) {
        const cfg_entry *e = &c->v[i];
        /* An empty secret is shown as empty: that no password is set is not
         * itself a secret, and it is what an operator debugging AUTH needs. */
        const char *v = config_is_secret(e->key) && *e->value ? "***" : e->value;
        if (buf_printf(&out, "%s = ", e->key) < 0) goto done;
        /* Values from the environment may hold newlines; keep one key per line. */
        for (const char *p = v; *p; p++) {
            int rc = (unsigned char)*p < 0x20 ? buf_printf(&out, "\\x%02x", (unsigned char)*p)
                                              : buf_append(&out, p, 1);
            if (rc < 0) goto done;
        }
        if (buf_printf(&out, "  # %s\n", e->source) < 0) goto done;
    }
    for (size_t off = 0; off < out.len;) {
        ssize_t w = write(fd, out.p + off, out.len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        off += (size_t)w;
    }
done:
    buf_free(&out);
}
