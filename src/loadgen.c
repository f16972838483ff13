/* loadgen.c -- `copystream loadgen`: the sample catalog and a synthetic
 * clickstream, published to Kafka.
 *
 * Two ways to produce events. --count N publishes N events as fast as the
 * producer takes them, stamped with synth's simulated clock: sessions and the
 * days between them are spread over simulated time, so the service's
 * event-time rules (copy interval, affinity decay, de-duplication window) see
 * a realistic history in seconds of wall time. By default that history ends
 * now, which takes a first, Kafka-free pass to measure its span; generation is
 * fast enough that this costs little next to publishing. --rate EPS paces the
 * same stream to wall time with a token bucket and stamps events with the
 * wall clock, for soak tests and demos; without --duration it runs until
 * SIGINT or SIGTERM. The events of a --count run are a pure function of seed,
 * users, count and start time. */
#include "commands.h"

#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "publish.h"
#include "synth.h"
#include "util.h"

#define LOADGEN_PROGRESS_US 2000000 /* progress line interval */
#define LOADGEN_MAX_RATE 1e7

static volatile sig_atomic_t loadgen_stop;

static void loadgen_on_signal(int sig) {
    (void)sig;
    loadgen_stop = 1;
}

static void loadgen_usage(void) {
    fputs("usage: copystream loadgen [-c CONF] [--catalog] [--count N | --rate EPS [--duration S]]\n"
          "                          [--users U] [--seed S] [--start-ms T | --end-ms T]\n"
          "                          [--quiet]\n"
          "  -c, --config FILE  config file (default $COPYSTREAM_CONFIG or config/copystream.conf)\n"
          "  --catalog          publish the sample catalog to topic.catalog first\n"
          "  --count N          publish N click events as fast as possible, on a simulated clock\n"
          "  --rate EPS         publish EPS events per second, stamped with the wall clock\n"
          "  --duration S       stop --rate after S seconds (default: at SIGINT/SIGTERM)\n"
          "  --users U          simulated users (default 1000)\n"
          "  --seed S           random seed (default 42); the same seed replays the same\n"
          "                     event ids, which the service de-duplicates\n"
          "  --start-ms T       --count's simulated clock start, epoch ms (default: so that the\n"
          "                     history ends now)\n"
          "  --end-ms T         --count's simulated clock end instead, epoch ms (default now)\n"
          "  --quiet            no progress on stderr\n",
          stdout);
}

typedef struct {
    const char *config_path;
    int catalog, quiet, has_start, has_end;
    int64_t count;        /* -1: not given */
    double rate;          /* 0: not given */
    double duration_s;    /* 0: until a signal */
    int64_t users;
    int64_t seed;
    int64_t start_ms, end_ms;
} loadgen_opts;

/* Returns 0; 1 after printing the help; 2 after printing what is wrong. */
static int loadgen_parse(int argc, char **argv, loadgen_opts *o) {
    enum { OPT_CATALOG = 256, OPT_COUNT, OPT_RATE, OPT_DURATION, OPT_USERS, OPT_SEED,
           OPT_START, OPT_END, OPT_QUIET };
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},     {"catalog", no_argument, NULL, OPT_CATALOG},
        {"count", required_argument, NULL, OPT_COUNT}, {"rate", required_argument, NULL, OPT_RATE},
        {"duration", required_argument, NULL, OPT_DURATION},
        {"users", required_argument, NULL, OPT_USERS}, {"seed", required_argument, NULL, OPT_SEED},
        {"start-ms", required_argument, NULL, OPT_START},
        {"end-ms", required_argument, NULL, OPT_END},
        {"quiet", no_argument, NULL, OPT_QUIET},       {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    *o = (loadgen_opts){.count = -1, .users = 1000, .seed = 42};
    const char *bad = NULL;
    int opt;
    optind = 1;
    while (!bad && (opt = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c': o->config_path = optarg; break;
        case 'h': loadgen_usage(); return 1;
        case OPT_CATALOG: o->catalog = 1; break;
        case OPT_QUIET: o->quiet = 1; break;
        case OPT_COUNT:
            if (commands_int(optarg, 0, INT64_MAX, &o->count) < 0) bad = "--count";
            break;
        case OPT_RATE:
            if (commands_double(optarg, 1e-3, LOADGEN_MAX_RATE, &o->rate) < 0) bad = "--rate";
            break;
        case OPT_DURATION:
            if (commands_double(optarg, 1e-3, 1e9, &o->duration_s) < 0) bad = "--duration";
            break;
        case OPT_USERS:
            if (commands_int(optarg, 1, SYNTH_MAX_USERS, &o->users) < 0) bad = "--users";
            break;
        case OPT_SEED:
            if (commands_int(optarg, 0, INT64_MAX, &o->seed) < 0) bad = "--seed";
            break;
        case OPT_START:
            if (commands_int(optarg, 0, INT64_MAX / 2, &o->start_ms) < 0) bad = "--start-ms";
            o->has_start = 1;
            break;
        case OPT_END:
            if (commands_int(optarg, 0, INT64_MAX / 2, &o->end_ms) < 0) bad = "--end-ms";
            o->has_end = 1;
            break;
        default: fprintf(stderr, "see copystream loadgen --help\n"); return 2;
        }
    }
    const char *why = NULL;
    if (bad)
        fprintf(stderr, "copystream loadgen: bad value for %s: %s\n", bad, optarg);
    else if (optind < argc)
        why = "unexpected argument";
    else if (o->count >= 0 && o->rate > 0)
        why = "--count and --rate exclude each other";
    else if (o->has_start && o->has_end)
        why = "--start-ms and --end-ms exclude each other";
    else if (o->duration_s > 0 && o->rate <= 0)
        why = "--duration needs --rate";
    else if (o->count < 0 && o->rate <= 0 && !o->catalog)
        why = "nothing to do: give --catalog, --count or --rate";
    if (why) fprintf(stderr, "copystream loadgen: %s\n", why);
    if (bad || why) {
        fprintf(stderr, "see copystream loadgen --help\n");
        return 2;
    }
    return 0;
}

/* The simulated span of the first count events: where the clock must start
 * for the last of them to land at the present. */
static int loadgen_span_ms(const loadgen_opts *o, int64_t *span, char *errstr, size_t errlen) {
    synth *s = synth_new((uint64_t)o->seed, (uint32_t)o->users, 0, errstr, errlen);
    if (!s) return -1;
    click_event ev = {0};
    for (int64_t i = 0; i < o->count && !loadgen_stop; i++) synth_next(s, &ev);
    *span = ev.ts_ms;
    synth_free(s);
    return 0;
}

typedef struct {
    int quiet;
    int64_t t0_us, last_us;
} loadgen_progress;

static void loadgen_tick(loadgen_progress *pr, uint64_t events) {
    int64_t now = util_monotonic_us();
    if (pr->quiet || now - pr->last_us < LOADGEN_PROGRESS_US) return;
    pr->last_us = now;
    log_info("loadgen", "%" PRIu64 " events, %.0f events/s", events,
             events / ((now - pr->t0_us) / 1e6));
}

/* Publishes o->count events as fast as the producer takes them. */
static int loadgen_burst(const loadgen_opts *o, synth *s, publisher *p, loadgen_progress *pr,
                         uint64_t *sent, char *errstr, size_t errlen) {
    click_event ev;
    while (*sent < (uint64_t)o->count && !loadgen_stop) {
        synth_next(s, &ev);
        if (publish_click(p, &ev, errstr, errlen) < 0) return -1;
        if (++*sent % 4096 == 0) loadgen_tick(pr, *sent);
    }
    return 0;
}

/* Publishes at o->rate events per second of wall time. The bucket holds at
 * most 50 ms of events, so a stall is caught up with a short burst and not
 * with a flood. */
static int loadgen_paced(const loadgen_opts *o, synth *s, publisher *p, loadgen_progress *pr,
                         uint64_t *sent, char *errstr, size_t errlen) {
    double tokens = 1, burst = o->rate / 20 + 1;
    int64_t prev = util_monotonic_us();
    int64_t end = o->duration_s > 0 ? prev + (int64_t)(o->duration_s * 1e6) : INT64_MAX;
    click_event ev;
    while (!loadgen_stop) {
        int64_t now = util_monotonic_us();
        if (now >= end) break;
        tokens += (now - prev) * o->rate / 1e6;
        if (tokens > burst) tokens = burst;
        prev = now;
        if (tokens < 1) {
            int wait_ms = (int)((1 - tokens) * 1000 / o->rate) + 1;
            if (publish_wait(p, wait_ms > 100 ? 100 : wait_ms, errstr, errlen) < 0) return -1;
            continue;
        }
        for (; tokens >= 1; tokens -= 1) {
            synth_next(s, &ev);
            ev.ts_ms = util_now_ms();
            if (publish_click(p, &ev, errstr, errlen) < 0) return -1;
            ++*sent;
        }
        loadgen_tick(pr, *sent);
    }
    return 0;
}

int loadgen_main(int argc, char **argv) {
    loadgen_opts o;
    int rc = loadgen_parse(argc, argv, &o);
    if (rc) return rc == 1 ? 0 : rc;

    config *cfg = commands_load_config(o.config_path ? o.config_path : commands_default_config());
    if (!cfg) return 2;
    char err[512];

    synth *s = NULL;
    publisher *p = NULL;
    /* One-shot: the first signal ends the run cleanly, a second one (say,
     * during a long final flush) kills the process as usual. */
    struct sigaction sa = {.sa_handler = loadgen_on_signal, .sa_flags = SA_RESETHAND};
    struct sigaction old_int, old_term;
    sigemptyset(&sa.sa_mask);
    loadgen_stop = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);

    rc = 1;
    int64_t start_ms = o.start_ms;
    if (o.count > 0 && !o.has_start) {
        int64_t span;
        if (loadgen_span_ms(&o, &span, err, sizeof err) < 0) goto err;
        start_ms = (o.has_end ? o.end_ms : util_now_ms()) - span;
    }
    if (!(s = synth_new((uint64_t)o.seed, (uint32_t)o.users, start_ms, err, sizeof err)))
        goto err;
    if (!(p = publish_new(cfg, err, sizeof err))) goto err;

    loadgen_progress pr = {o.quiet, util_monotonic_us(), util_monotonic_us()};
    size_t items = 0;
    if (o.catalog)
        for (; items < synth_catalog_len(s) && !loadgen_stop; items++)
            if (publish_catalog(p, &synth_catalog(s)[items], err, sizeof err) < 0) goto err;
    uint64_t events = 0;
    if (o.count >= 0 && loadgen_burst(&o, s, p, &pr, &events, err, sizeof err) < 0) goto err;
    if (o.rate > 0 && loadgen_paced(&o, s, p, &pr, &events, err, sizeof err) < 0) goto err;
    if (publish_flush(p, (int)config_int(cfg, "shutdown.timeout_s") * 1000, err, sizeof err) < 0)
        goto err;

    double elapsed = (util_monotonic_us() - pr.t0_us) / 1e6;
    printf("loadgen: %" PRIu64 " events, %zu catalog items, %.3f s, %.0f events/s\n", events,
           items, elapsed, elapsed > 0 ? events / elapsed : 0.0);
    fflush(stdout);
    /* A signal is how an open-ended --rate run ends; any other run it cut
     * short did not publish what was asked. */
    if (loadgen_stop && !(o.rate > 0 && o.duration_s == 0)) {
        util_err(err, sizeof err, "interrupted");
        goto err;
    }
    rc = 0;
err:
    if (rc) log_error("loadgen", "%s", err);
    publish_free(p);
    synth_free(s);
    config_free(cfg);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    return rc;
}
