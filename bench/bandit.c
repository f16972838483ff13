/* bench/bandit.c -- `make bench-bandit`: the Thompson sampler on simulated
 * users with known click rates.
 *
 * Each scenario gives the variants fixed click-through rates, the best one
 * 20 % (relative) above the next. Per run, 5,000 impressions are served one
 * after the other: bandit_thompson() -- the very function the service calls,
 * seeded per impression as the service seeds it per event -- picks a variant
 * from the counts it can see, a click is drawn with that variant's rate, and
 * the counts grow. "batched" scenarios let the chooser see the counts only as
 * of the last refresh every B impressions, as the service's snapshot does.
 * Runs differ only in their seeds; every figure is the mean over runs:
 *
 *   <scenario>_regret            expected clicks lost against always showing
 *                                the best variant, summed over the impressions
 *   <scenario>_best_share        share of all impressions on the best variant
 *   <scenario>_best_share_last   share of impressions 4,501-5,000 (the last
 *                                tenth) on it: the traffic split "after 5,000"
 *   <scenario>_runs_at_goal      share of runs whose last-tenth share >= 0.9
 *   <scenario>_goal_met          1 when the mean last-tenth share >= 0.9
 *
 * Output is `name value` lines. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bandit.h"
#include "util.h"

typedef struct {
    const char *name;
    double rates[4];
    size_t n_arms;
    double alpha, beta;       /* the prior */
    size_t refresh;           /* the chooser sees counts as of every this many impressions */
} scenario;

static const scenario scenarios[] = {
    /* Push or e-mail copy: a few percent click. */
    {"ctr_5_vs_6", {0.05, 0.06}, 2, 1, 1, 1},
    {"ctr_5_vs_6_prior_1_19", {0.05, 0.06}, 2, 1, 19, 1},
    {"ctr_5_vs_6_batched_250", {0.05, 0.06}, 2, 1, 1, 250},
    /* In-app or on-site copy that users engage with more. */
    {"ctr_20_vs_24", {0.20, 0.24}, 2, 1, 1, 1},
    {"ctr_20_vs_24_batched_250", {0.20, 0.24}, 2, 1, 1, 250},
    {"ctr_30_vs_36", {0.30, 0.36}, 2, 1, 1, 1},
    /* Three variants, the best 20 % above the runner-up. */
    {"ctr_20_20_24", {0.20, 0.20, 0.24}, 3, 1, 1, 1},
};

static uint64_t bench_mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

typedef struct {
    double regret, share, share_last, at_goal;
} outcome;

static outcome run_scenario(const scenario *sc, size_t runs, size_t n) {
    outcome o = {0};
    size_t best = 0;
    for (size_t a = 1; a < sc->n_arms; a++)
        if (sc->rates[a] > sc->rates[best]) best = a;
    size_t last_from = n - n / 10;
    bandit_prior prior = {sc->alpha, sc->beta, BANDIT_CLICK};
    for (size_t r = 0; r < runs; r++) {
        bandit_counts live[4], seen[4];
        memset(live, 0, sizeof live);
        memset(seen, 0, sizeof seen);
        bandit_rng users;
        bandit_rng_seed(&users, bench_mix(0xc1c4 + r));
        size_t on_best = 0, on_best_last = 0;
        for (size_t t = 0; t < n; t++) {
            if (t % sc->refresh == 0) memcpy(seen, live, sizeof seen);
            uint64_t seed = bench_mix((uint64_t)r << 32 | t); /* the event id's hash */
            size_t a = bandit_thompson(seen, sc->n_arms, &prior, seed);
            live[a].n[BANDIT_IMP]++;
            if (bandit_rng_uniform(&users) < sc->rates[a]) live[a].n[BANDIT_CLICK]++;
            o.regret += sc->rates[best] - sc->rates[a];
            on_best += a == best;
            on_best_last += a == best && t >= last_from;
        }
        double last = (double)on_best_last / (double)(n - last_from);
        o.share += (double)on_best / (double)n;
        o.share_last += last;
        o.at_goal += last >= 0.9;
    }
    o.regret /= (double)runs;
    o.share /= (double)runs;
    o.share_last /= (double)runs;
    o.at_goal /= (double)runs;
    return o;
}

int main(int argc, char **argv) {
    size_t runs = 400, n = 5000;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
            runs = (size_t)atol(argv[++i]);
        } else if (!strcmp(argv[i], "--impressions") && i + 1 < argc) {
            n = (size_t)atol(argv[++i]);
        } else {
            fprintf(stderr, "usage: bench/bandit [--runs N] [--impressions N]\n");
            return 2;
        }
    }
    if (runs < 1 || n < 10) {
        fprintf(stderr, "bench/bandit: need at least 1 run of 10 impressions\n");
        return 2;
    }
    printf("runs %zu\nimpressions %zu\nlast_window_from %zu\n", runs, n, n - n / 10 + 1);
    for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++) {
        const scenario *sc = &scenarios[i];
        outcome o = run_scenario(sc, runs, n);
        printf("%s_regret %.1f\n", sc->name, o.regret);
        printf("%s_best_share %.3f\n", sc->name, o.share);
        printf("%s_best_share_last %.3f\n", sc->name, o.share_last);
        printf("%s_runs_at_goal %.3f\n", sc->name, o.at_goal);
        printf("%s_goal_met %d\n", sc->name, o.share_last >= 0.9);
        fflush(stdout);
    }
    /* What one choice costs on the copy path: two arms with a realistic
     * amount of evidence behind them. */
    bandit_counts arms[2] = {{{0, 20000, 1000, 0, 0, 0}}, {{0, 20000, 1200, 0, 0, 0}}};
    bandit_prior prior = {1, 1, BANDIT_CLICK};
    size_t picks = 0, reps = 1000000;
    int64_t t0 = util_monotonic_us();
    for (size_t k = 0; k < reps; k++) picks += bandit_thompson(arms, 2, &prior, bench_mix(k));
    int64_t t1 = util_monotonic_us();
    printf("choose_2_arms_ns %.0f\n", (double)(t1 - t0) * 1000.0 / (double)reps);
    printf("choose_2_arms_best_share %.3f\n", (double)picks / (double)reps);
    return 0;
}
