/* replay.c -- `copystream replay` and `copystream rebuild-state`: the
 * service's own pipeline (service.h) run over a bounded stretch of the
 * input, for operators. docs/OPERATIONS.md is the user's guide; this is
 * how the two commands set the pipeline up.
 *
 * replay regenerates the copies of a time range (after a template or model
 * change, or for a downstream system that lost them) without touching the
 * live deployment:
 *   - its state is a scratch one, never the live users' hashes: a fresh
 *     Redis prefix <redis.key_prefix>-replay-<id> deleted at the end, or
 *     process memory (--dry-run, --in-memory). The live state cannot be
 *     used: it is the state after the range, and its watermarks would turn
 *     every event of the range into a no-op;
 *   - so that a user's state at the first event of the range is the one the
 *     live run had there, the run starts earlier -- at --state-from, by
 *     default the oldest offset the topics still hold -- and events before
 *     --from only build state (the warm-up); from --from to --to they make
 *     copies exactly as the live run did;
 *   - it reads with its own group id, <kafka.group.id>-replay-<id>, by
 *     assignment (no group membership), so the live group's offsets never
 *     move; a dry run commits nothing at all;
 *   - every offset bound is fixed before the run starts: --from, --to and
 *     --state-from go through the broker's time index (message timestamps),
 *     and without --to the end is each partition's end at start-up.
 *
 * rebuild-state recomputes the users' state from the input into a new
 * prefix, making no copies, up to the offsets the live group has committed,
 * so that the live service can be switched over to it (stop, catch up with
 * --continue, restart on the new prefix; docs/OPERATIONS.md). It commits
 * its progress in its own group, <group>-rebuild-<prefix>, which is what
 * --continue resumes from. */
#define _GNU_SOURCE
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "codec.h"
#include "commands.h"
#include "config.h"
#include "dict.h"
#include "kafka.h"
#include "log.h"
#include "range.h"
#include "service.h"
#include "store.h"
#include "userstate.h"
#include "util.h"

/* Names and counts, for the dry run's summary by locale and strategy. */
typedef struct {
    char *name;
    uint64_t n;
} replay_count;

typedef struct {
    const char *label;          /* "replay", "rebuild-state": the log subsystem and the bar */
    range *range;
    range_meter meter;
    int tty;                    /* stderr is a terminal: draw a bar */
    int64_t last_print_us;
    /* a dry run: what would have been published */
    codec *codec;
    dict *seen;                 /* copy ids counted (a retried batch shows its copies again) */
    uint64_t copies, undecodable;
    replay_count locales[16], strategies[8];
    size_t n_locales, n_strategies;
    buf sample;                 /* the first sample_max copies, as text */
    size_t sample_max, n_sample;
} replay_run;

/* ---- progress ------------------------------------------------------------------ */

static void replay_show(replay_run *r, int final) {
    char line[512];
    range_meter_format(&r->meter, r->label, r->tty, 30, line, sizeof line);
    if (r->tty)
        fprintf(stderr, "\r%s\033[K%s", line, final ? "\n" : "");
    else
        log_info(r->label, "%s", line);
}

/* service_options.tick: samples the progress; shows it every 200 ms on a
 * terminal, every 5 s in a log. */
static void replay_tick(void *ud) {
    replay_run *r = ud;
    int64_t now = util_monotonic_us();
    range_meter_update(&r->meter, range_finished(r->range), range_total(r->range), now);
    if (now - r->last_print_us < (r->tty ? 200000 : 5000000)) return;
    r->last_print_us = now;
    replay_show(r, 0);
}

static void replay_finish_progress(replay_run *r, int completed) {
    uint64_t total = range_total(r->range);
    /* A partition whose last offsets never came (deleted, or transaction
     * markers) was read to its end all the same. */
    range_meter_update(&r->meter, completed ? total : range_finished(r->range), total,
                       util_monotonic_us());
    replay_show(r, 1);
    uint64_t missing = range_missing(r->range);
    if (missing)
        log_warn(r->label,
                 "%" PRIu64 " offsets at the start of the range were deleted (retention) before "
                 "they could be read: the state built misses those events",
                 missing);
}

/* ---- a dry run's copies ------------------------------------------------------------- */

static void replay_count_name(replay_count *v, size_t *n, size_t cap, const char *name) {
    size_t i = 0;
    while (i < *n && strcmp(v[i].name, name) != 0) i++;
    if (i == *n) {
        if (*n == cap || !(v[i].name = strdup(name))) return;
        v[i].n = 0;
        (*n)++;
    }
    v[i].n++;
}

/* service_options.dry_run: counts each copy once and keeps the first few. */
static void replay_dry_publish(void *ud, const char *topic, const void *key, size_t key_len,
                               const void *value, size_t len) {
    replay_run *r = ud;
    personalized_copy c = {0};
    char why[256];
    if (codec_decode_copy(r->codec, value, len, &c, why, sizeof why) != CODEC_OK) {
        r->undecodable++;
        personalized_copy_clear(&c);
        return;
    }
    if (!dict_get(r->seen, c.copy_id)) {
        char *id = strdup(c.copy_id);
        if (id && dict_set(r->seen, id, id) == 0) {
            r->copies++;
            replay_count_name(r->locales, &r->n_locales, UTIL_ARRAY_LEN(r->locales), c.locale);
            replay_count_name(r->strategies, &r->n_strategies, UTIL_ARRAY_LEN(r->strategies),
                              c.strategy);
            if (r->n_sample < r->sample_max) {
                r->n_sample++;
                buf_printf(&r->sample, "user %s  [%s]  %s/%s  strategy=%s  source=%s (event %s)\n  %s\n",
                           c.user_id, c.locale, c.template_id, c.variant_id, c.strategy, c.copy_id,
                           c.source_event_id, c.text);
                for (size_t i = 0; i < c.n_items; i++)
                    buf_printf(&r->sample, "  item %zu: %s  %s  score %.3f\n", i + 1,
                               c.items[i].item_id, c.items[i].title ? c.items[i].title : "",
                               c.items[i].score);
            }
        } else {
            free(id);
        }
    }
    personalized_copy_clear(&c);
}

static void replay_run_free(replay_run *r) {
    codec_free(r->codec);
    if (r->seen) {
        size_t pos = 0;
        const char *k;
        void *v;
        while (dict_next(r->seen, &pos, &k, &v)) free(v);
        dict_free(r->seen);
    }
    for (size_t i = 0; i < r->n_locales; i++) free(r->locales[i].name);
    for (size_t i = 0; i < r->n_strategies; i++) free(r->strategies[i].name);
    buf_free(&r->sample);
    range_free(r->range);
}

/* ---- offsets ----------------------------------------------------------------------------- */

static const char *replay_fmt_time(int64_t ms, char *out, size_t outlen) {
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
    return out;
}

/* How one topic's offsets are chosen. A time < 0 means "not given". */
typedef struct {
    int64_t start_ms;           /* start here; < 0: the oldest offset kept */
    int64_t copy_ms;            /* copies from here; < 0: none (every offset is warm-up) */
    int64_t end_ms;             /* stop here; < 0: the end of each partition now */
    rd_kafka_t *end_group;      /* instead of end_ms: stop at this consumer's group's commits
                                 * (none committed: read nothing) */
    rd_kafka_t *resume_group;   /* start after this group's commits where it has some */
} replay_bounds;

/* Adds the partitions of topic to r, with offsets looked up by rk as b
 * says. Returns 0 or -1 with errstr. */
static int replay_add_topic(rd_kafka_t *rk, range *r, const char *topic, uint8_t kind,
                            const replay_bounds *b, char *errstr, size_t errlen) {
    int n = kafka_partition_count(rk, topic, 10000, errstr, errlen);
    if (n < 0) return -1;
    int rc = -1;
    int64_t *v = calloc((size_t)n * 5, sizeof *v);
    if (!v) return util_err(errstr, errlen, "out of memory");
    int64_t *lo = v, *hi = v + n, *start = v + 2 * n, *copy = v + 3 * n, *end = v + 4 * n;
    if (kafka_watermarks(rk, topic, n, lo, hi, 30000, errstr, errlen) < 0) goto out;
    if (b->start_ms < 0) memcpy(start, lo, (size_t)n * sizeof *start);
    else if (kafka_offsets_for_time(rk, topic, n, b->start_ms, hi, start, 30000, errstr, errlen) < 0)
        goto out;
    if (b->end_group) {
        if (kafka_committed(b->end_group, topic, n, end, 30000, errstr, errlen) < 0) goto out;
        for (int p = 0; p < n; p++)
            if (end[p] < 0) end[p] = start[p]; /* the live group applied nothing here */
    } else if (b->end_ms < 0) {
        memcpy(end, hi, (size_t)n * sizeof *end);
    } else if (kafka_offsets_for_time(rk, topic, n, b->end_ms, hi, end, 30000, errstr, errlen) < 0) {
        goto out;
    }
    if (b->copy_ms < 0) memcpy(copy, end, (size_t)n * sizeof *copy);
    else if (kafka_offsets_for_time(rk, topic, n, b->copy_ms, hi, copy, 30000, errstr, errlen) < 0)
        goto out;
    if (b->resume_group) {
        /* hi is free from here on: it takes the resume points */
        if (kafka_committed(b->resume_group, topic, n, hi, 30000, errstr, errlen) < 0) goto out;
        for (int p = 0; p < n; p++)
            if (hi[p] > start[p]) start[p] = hi[p];
    }
    for (int p = 0; p < n; p++) {
        if (range_add(r, topic, kind, p, start[p], copy[p], end[p]) < 0) {
            util_err(errstr, errlen, "out of memory");
            goto out;
        }
        log_debug("replay", "%s[%d]: offsets %" PRId64 " to %" PRId64 ", copies from %" PRId64,
                  topic, p, start[p], end[p], copy[p]);
    }
    rc = 0;
out:
    free(v);
    return rc;
}

/* A consumer of group for looking offsets up (never subscribed or
 * assigned), or NULL with errstr. */
static rd_kafka_t *replay_lookup_consumer(const config *cfg, const char *group, char *errstr,
                                          size_t errlen) {
    return kafka_consumer_new(cfg, group, NULL, NULL, errstr, errlen);
}

static void replay_consumer_free(rd_kafka_t *rk) {
    if (!rk) return;
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
}

/* Builds the range over both input topics. */
static range *replay_range(const config *cfg, rd_kafka_t *rk, const replay_bounds *b,
                           char *errstr, size_t errlen) {
    range *r = range_new();
    if (!r) {
        util_err(errstr, errlen, "out of memory");
        return NULL;
    }
    if (replay_add_topic(rk, r, config_str(cfg, "topic.clickstream"), US_TOPIC_CLICKSTREAM, b,
                         errstr, errlen) < 0 ||
        replay_add_topic(rk, r, config_str(cfg, "topic.reactions"), US_TOPIC_REACTIONS, b,
                         errstr, errlen) < 0) {
        range_free(r);
        return NULL;
    }
    return r;
}

/* Offsets of r in copies and in warm-up. */
static void replay_plan(range *r, uint64_t *warmup, uint64_t *copying) {
    *warmup = *copying = 0;
    for (size_t i = 0; i < range_count(r); i++) {
        const range_part *p = range_at(r, i);
        *warmup += (uint64_t)(p->copy_from - p->start);
        *copying += (uint64_t)(p->end - p->copy_from);
    }
}

static int replay_set(config *cfg, const char *key, const char *value) {
    char err[512];
    if (config_set(cfg, key, value, err, sizeof err) == 0) return 0;
    fprintf(stderr, "copystream: %s\n", err);
    return -1;
}

static int replay_parse_time(const char *flag, const char *s, int64_t *ms) {
    if (util_parse_time(s, ms) == 0) return 0;
    fprintf(stderr,
            "copystream: %s %s: not a time; give Unix milliseconds or UTC ISO 8601 "
            "(2026-12-01, 2026-12-01T08:30:00Z)\n",
            flag, s);
    return -1;
}

/* ---- replay ---------------------------------------------------------------------------- */

static void replay_usage(FILE *f) {
    fprintf(f,
            "usage: copystream replay [-c CONFIG] --from TIME [--to TIME] [--output-topic TOPIC]\n"
            "                         [--dry-run] [--state-from TIME] [--in-memory] [--sample N]\n"
            "\n"
            "Makes again the copies of the events from --from to --to (message timestamps),\n"
            "as the live service made them, without touching its state or its offsets.\n"
            "Users' state is rebuilt in scratch from --state-from (default: the oldest\n"
            "message kept) so that it is, at --from, what the live run had. TIME is Unix\n"
            "milliseconds or UTC ISO 8601 (2026-12-01, 2026-12-01T08:30:00Z).\n"
            "\n"
            "  --to TIME             stop before this time (default: the end of the topics\n"
            "                        when the replay starts)\n"
            "  --output-topic TOPIC  publish the copies here (default topic.copy)\n"
            "  --dry-run             publish nothing, write nothing to Redis, commit nothing:\n"
            "                        count the copies that would be published and show some\n"
            "  --state-from TIME     build state from here (earlier history is ignored)\n"
            "  --in-memory           keep the scratch state in memory instead of Redis\n"
            "  --sample N            copies shown by --dry-run (default 5)\n"
            "\n"
            "See docs/OPERATIONS.md.\n");
}

int replay_main(int argc, char **argv) {
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"from", required_argument, 0, 'f'},
                                         {"to", required_argument, 0, 't'},
                                         {"output-topic", required_argument, 0, 'o'},
                                         {"dry-run", no_argument, 0, 'n'},
                                         {"state-from", required_argument, 0, 's'},
                                         {"in-memory", no_argument, 0, 'm'},
                                         {"sample", required_argument, 0, 'S'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *path = commands_default_config(), *from = NULL, *to = NULL, *output = NULL,
               *state_from = NULL;
    int dry = 0, in_memory = 0;
    long sample = 5;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': path = optarg; break;
        case 'f': from = optarg; break;
        case 't': to = optarg; break;
        case 'o': output = optarg; break;
        case 'n': dry = 1; break;
        case 's': state_from = optarg; break;
        case 'm': in_memory = 1; break;
        case 'S': sample = atol(optarg); break;
        case 'h': replay_usage(stdout); return 0;
        default: replay_usage(stderr); return 2;
        }
    }
    if (optind < argc || !from) {
        replay_usage(stderr);
        return 2;
    }
    int64_t from_ms, to_ms = -1, state_ms = -1;
    if (replay_parse_time("--from", from, &from_ms) < 0 ||
        (to && replay_parse_time("--to", to, &to_ms) < 0) ||
        (state_from && replay_parse_time("--state-from", state_from, &state_ms) < 0))
        return 2;
    if (to && to_ms <= from_ms) {
        fprintf(stderr, "copystream: --to must be after --from\n");
        return 2;
    }
    if (state_from && state_ms > from_ms) {
        fprintf(stderr, "copystream: --state-from must not be after --from\n");
        return 2;
    }
    config *cfg = commands_load_config(path);
    if (!cfg) return 2;
    int rc = 2;
    char err[1024], group[512], prefix[512], t1[80], t2[80];
    replay_run run = {.label = "replay", .tty = isatty(STDERR_FILENO),
                      .sample_max = sample > 0 ? (size_t)sample : 0};
    rd_kafka_t *rk = NULL;
    char *out_topic = NULL;
    /* Kept apart: config_set() below replaces the config's own copy. */
    out_topic = strdup(output ? output : config_str(cfg, "topic.copy"));
    if (!out_topic) {
        fprintf(stderr, "copystream: out of memory\n");
        goto out;
    }
    output = out_topic;
    static const char *const inputs[] = {"topic.clickstream", "topic.reactions", "topic.catalog",
                                         "topic.dead_letter"};
    for (size_t i = 0; i < UTIL_ARRAY_LEN(inputs); i++)
        if (strcmp(output, config_str(cfg, inputs[i])) == 0) {
            fprintf(stderr, "copystream: --output-topic %s is %s; copies cannot go there\n",
                    output, inputs[i]);
            goto out;
        }
    /* One id names this run's group and scratch prefix: never the live
     * ones, whatever the config says. */
    int64_t id = util_now_ms();
    snprintf(group, sizeof group, "%s-replay-%" PRId64, config_str(cfg, "kafka.group.id"), id);
    snprintf(prefix, sizeof prefix, "%s-replay-%" PRId64, config_str(cfg, "redis.key_prefix"), id);
    if (replay_set(cfg, "redis.key_prefix", prefix) < 0 ||
        replay_set(cfg, "topic.copy", output) < 0 || replay_set(cfg, "http.port", "0") < 0)
        goto out;
    rc = 1;
    if (!(rk = replay_lookup_consumer(cfg, group, err, sizeof err))) goto fail;
    replay_bounds b = {.start_ms = state_ms, .copy_ms = from_ms, .end_ms = to_ms};
    if (!(run.range = replay_range(cfg, rk, &b, err, sizeof err))) goto fail;
    replay_consumer_free(rk);
    rk = NULL;
    if (dry) {
        run.seen = dict_new();
        if (!run.seen || !(run.codec = commands_codec_new(cfg, err, sizeof err))) goto fail;
    }
    uint64_t warmup, copying;
    replay_plan(run.range, &warmup, &copying);
    int in_mem = dry || in_memory;
    log_info("replay",
             "%s%s to %s: %" PRIu64 " messages of warm-up (state only), then %" PRIu64
             " that may make copies, to %s; group %s, state %s%s",
             dry ? "dry run, " : "", replay_fmt_time(from_ms, t1, sizeof t1),
             to ? replay_fmt_time(to_ms, t2, sizeof t2) : "the end", warmup, copying, output, group,
             in_mem ? "in memory" : "under Redis prefix ", in_mem ? "" : prefix);

    service_options so = {.group = group,
                          .range = run.range,
                          .state_in_memory = in_mem,
                          .dry_run = dry ? replay_dry_publish : NULL,
                          .tick = replay_tick,
                          .ud = &run};
    service_totals tot = {0};
    rc = service_run(cfg, &so, &tot);
    replay_finish_progress(&run, tot.completed);
    if (!in_mem) {
        /* Scratch: a replay cannot be resumed, so it is dropped however the
         * run ended. */
        store *st = store_new(cfg, err, sizeof err);
        uint64_t deleted = 0;
        if (!st || store_delete_all(st, &deleted, err, sizeof err) != STORE_OK)
            log_error("replay", "could not delete the scratch state under %s: %s (it expires "
                      "after state.ttl_s; delete the keys %s:* by hand)", prefix, err, prefix);
        else
            log_info("replay", "deleted the scratch state: %" PRIu64 " keys under %s", deleted,
                     prefix);
        store_free(st);
    }
    if (rc == 0 && !tot.completed) {
        fprintf(stderr, "copystream: the replay was stopped before the end of its range\n");
        rc = 1;
    }
    printf("replay %s to %s: events %" PRIu64 ", reactions %" PRIu64 ", bad input skipped %" PRIu64
           ", copies %s %s: %" PRIu64 "\n",
           replay_fmt_time(from_ms, t1, sizeof t1),
           to ? replay_fmt_time(to_ms, t2, sizeof t2) : "the end", tot.events, tot.reactions,
           tot.dead, dry ? "that would be published to" : "published to", output,
           dry ? run.copies : tot.copies);
    if (dry) {
        printf("by locale:");
        for (size_t i = 0; i < run.n_locales; i++)
            printf(" %s=%" PRIu64, run.locales[i].name, run.locales[i].n);
        printf("\nby strategy:");
        for (size_t i = 0; i < run.n_strategies; i++)
            printf(" %s=%" PRIu64, run.strategies[i].name, run.strategies[i].n);
        printf("\n");
        if (run.n_sample) printf("\nthe first %zu:\n\n%s", run.n_sample, run.sample.p);
    }
    goto out;
fail:
    fprintf(stderr, "copystream: %s\n", err);
out:
    free(out_topic);
    replay_consumer_free(rk);
    replay_run_free(&run);
    config_free(cfg);
    return rc;
}

/* ---- rebuild-state ------------------------------------------------------------------------- */

static void rebuild_usage(FILE *f) {
    fprintf(f,
            "usage: copystream rebuild-state [-c CONFIG] --from TIME --prefix PREFIX\n"
            "                                [--group GROUP] [--continue]\n"
            "\n"
            "Recomputes users' state from the clickstream and reactions topics, from TIME\n"
            "(message timestamps; 0: the oldest message kept) up to the offsets the live\n"
            "consumer group has committed, into the Redis key prefix PREFIX, which must not\n"
            "be redis.key_prefix. Makes no copies. Then switch the service to PREFIX as\n"
            "docs/OPERATIONS.md describes.\n"
            "\n"
            "  --group GROUP   the live consumer group (default kafka.group.id)\n"
            "  --continue      start where the previous rebuild into PREFIX stopped (after\n"
            "                  the service was stopped, to catch up before the switch)\n");
}

int rebuild_main(int argc, char **argv) {
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"from", required_argument, 0, 'f'},
                                         {"prefix", required_argument, 0, 'p'},
                                         {"group", required_argument, 0, 'g'},
                                         {"continue", no_argument, 0, 'C'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *path = commands_default_config(), *from = NULL, *prefix = NULL, *live = NULL;
    int resume = 0;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': path = optarg; break;
        case 'f': from = optarg; break;
        case 'p': prefix = optarg; break;
        case 'g': live = optarg; break;
        case 'C': resume = 1; break;
        case 'h': rebuild_usage(stdout); return 0;
        default: rebuild_usage(stderr); return 2;
        }
    }
    if (optind < argc || !from || !prefix) {
        rebuild_usage(stderr);
        return 2;
    }
    int64_t from_ms;
    if (replay_parse_time("--from", from, &from_ms) < 0) return 2;
    config *cfg = commands_load_config(path);
    if (!cfg) return 2;
    int rc = 2;
    char err[1024], group[512], t1[80];
    replay_run run = {.label = "rebuild-state", .tty = isatty(STDERR_FILENO)};
    rd_kafka_t *rk_live = NULL, *rk_own = NULL;
    if (!live) live = config_str(cfg, "kafka.group.id");
    if (strcmp(prefix, config_str(cfg, "redis.key_prefix")) == 0) {
        fprintf(stderr,
                "copystream: --prefix %s is redis.key_prefix, the live state: rebuild into a "
                "new prefix, then switch (docs/OPERATIONS.md)\n",
                prefix);
        goto out;
    }
    snprintf(group, sizeof group, "%s-rebuild-%s", live, prefix);
    /* The model makes copies only; without copies it is not needed. */
    if (replay_set(cfg, "redis.key_prefix", prefix) < 0 || replay_set(cfg, "model.path", "") < 0 ||
        replay_set(cfg, "http.port", "0") < 0)
        goto out;
    rc = 1;
    if (!(rk_live = replay_lookup_consumer(cfg, live, err, sizeof err)) ||
        (resume && !(rk_own = replay_lookup_consumer(cfg, group, err, sizeof err))))
        goto fail;
    replay_bounds b = {.start_ms = from_ms, .copy_ms = -1, .end_ms = -1, .end_group = rk_live,
                       .resume_group = rk_own};
    if (!(run.range = replay_range(cfg, rk_live, &b, err, sizeof err))) goto fail;
    replay_consumer_free(rk_live);
    replay_consumer_free(rk_own);
    rk_live = rk_own = NULL;
    log_info("rebuild-state",
             "from %s%s up to the offsets group %s committed: %" PRIu64
             " messages into prefix %s (group %s)",
             replay_fmt_time(from_ms, t1, sizeof t1), resume ? " (continuing)" : "", live,
             range_total(run.range), prefix, group);
    service_options so = {.group = group, .range = run.range, .tick = replay_tick, .ud = &run};
    service_totals tot = {0};
    rc = service_run(cfg, &so, &tot);
    replay_finish_progress(&run, tot.completed);
    if (rc == 0 && !tot.completed) {
        fprintf(stderr,
                "copystream: stopped before the end; run again with --continue to finish\n");
        rc = 1;
    }
    printf("state rebuilt under prefix %s from %s: events %" PRIu64 ", reactions %" PRIu64
           ", bad input skipped %" PRIu64 "%s\n",
           prefix, replay_fmt_time(from_ms, t1, sizeof t1), tot.events, tot.reactions, tot.dead,
           rc == 0 ? "" : " (incomplete)");
    goto out;
fail:
    fprintf(stderr, "copystream: %s\n", err);
out:
    replay_consumer_free(rk_live);
    replay_consumer_free(rk_own);
    replay_run_free(&run);
    config_free(cfg);
    return rc;
}
