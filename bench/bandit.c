/* bench/bandit.c -- `make bench-bandit`: the Thompson sampler on simulated
 * users with known click rates, and the other policies it was measured
 * against.
 *
 * Each scenario gives the variants fixed click-through rates, the best one
 * 20 % (relative) above the next. Per run, 5,000 impressions are served one
 * after the other: bandit_thompson() -- the very function the service calls,
 * seeded per impression as the service seeds it per event -- picks a variant
 * from the counts it can see, a click is drawn with that variant's rate, and
 * the counts grow. "batched" scenarios let the chooser see the counts only as
 * of the last refresh every B impressions, as the service's snapshot does.
 * ctr_6_vs_5 lists the better variant first (a policy must not favour an
 * index); ctr_5_vs_5 has no better variant at all. Runs differ only in their
 * seeds; every figure is the mean over runs:
 *
 *   <scenario>_regret            expected clicks lost against always showing
 *                                the best variant, summed over the impressions
 *   <scenario>_best_share        share of all impressions on the best variant
 *   <scenario>_best_share_last   share of impressions 4,501-5,000 (the last
 *                                tenth) on it: the traffic split "after 5,000"
 *   <scenario>_runs_at_goal      share of runs whose last-tenth share >= 0.9
 *   <scenario>_wrong_lock        share of runs whose last-tenth share <= 0.1:
 *                                runs that settled on a worse variant
 *   <scenario>_goal_met          1 when the mean last-tenth share >= 0.9
 *
 * With equal variants "best" is the first one: its shares say whether the
 * policy favours an index, regret is 0 whatever it does.
 *
 * --policy NAME runs one of the candidate policies of docs/BANDIT.md instead
 * of the service's; --compare runs them all and prints one table row per
 * policy and scenario. The candidates live here, not in the service: they
 * were measured and not chosen. Output is `name value` lines. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bandit.h"
#include "util.h"

#define BENCH_MAX_ARMS 4

typedef struct {
    const char *name;
    double rates[BENCH_MAX_ARMS];
    size_t n_arms;
    double alpha, beta;       /* the prior */
    size_t refresh;           /* the chooser sees counts as of every this many impressions */
} scenario;

static const scenario scenarios[] = {
    /* Push or e-mail copy: a few percent click. */
    {"ctr_5_vs_6", {0.05, 0.06}, 2, 1, 1, 1},
    {"ctr_5_vs_6_prior_1_19", {0.05, 0.06}, 2, 1, 19, 1},
    {"ctr_5_vs_6_batched_250", {0.05, 0.06}, 2, 1, 1, 250},
    {"ctr_6_vs_5", {0.06, 0.05}, 2, 1, 1, 1},
    {"ctr_5_vs_5", {0.05, 0.05}, 2, 1, 1, 1},
    /* In-app or on-site copy that users engage with more. */
    {"ctr_10_vs_12", {0.10, 0.12}, 2, 1, 1, 1},
    {"ctr_20_vs_24", {0.20, 0.24}, 2, 1, 1, 1},
    {"ctr_20_vs_24_batched_250", {0.20, 0.24}, 2, 1, 1, 250},
    {"ctr_30_vs_36", {0.30, 0.36}, 2, 1, 1, 1},
    /* Three variants, the best 20 % above the runner-up. */
    {"ctr_20_20_24", {0.20, 0.20, 0.24}, 3, 1, 1, 1},
};

/* ---- the candidate policies ---------------------------------------------------- */

/* A policy chooses among arms[0..n-1] from their counts and a per-event seed,
 * as bandit_thompson() does. */
typedef size_t (*policy_fn)(const bandit_counts *arms, size_t n, const bandit_prior *p,
                            uint64_t seed);

static void bench_posterior(const bandit_counts *a, const bandit_prior *p, double *alpha,
                            double *beta) {
    uint64_t trials = a->n[BANDIT_IMP], wins = a->n[p->reward];
    if (wins > trials) wins = trials;
    *alpha = p->alpha + (double)wins;
    *beta = p->beta + (double)(trials - wins);
}

static uint64_t bench_impressions(const bandit_counts *arms, size_t n) {
    uint64_t t = 0;
    for (size_t i = 0; i < n; i++) t += arms[i].n[BANDIT_IMP];
    return t;
}

/* The arm of the highest of `draws` posterior draws averaged per arm: the
 * posterior tempered as if the evidence counted `draws` times. */
static size_t bench_tempered(const bandit_counts *arms, size_t n, const bandit_prior *p,
                             uint64_t seed, int draws) {
    bandit_rng r;
    bandit_rng_seed(&r, seed);
    size_t best = 0;
    double best_sum = -1.0;
    for (size_t i = 0; i < n; i++) {
        double a, b, sum = 0.0;
        bench_posterior(&arms[i], p, &a, &b);
        for (int k = 0; k < draws; k++) sum += bandit_beta(&r, a, b);
        if (sum > best_sum) {
            best_sum = sum;
            best = i;
        }
    }
    return best;
}

/* The arm that wins most of `rounds` Thompson rounds (the first on a tie):
 * chosen with a sharpened probability of being best. */
static size_t bench_majority(const bandit_counts *arms, size_t n, const bandit_prior *p,
                             uint64_t seed, int rounds) {
    size_t wins[BENCH_MAX_ARMS] = {0}, best = 0;
    for (int k = 0; k < rounds; k++) wins[bandit_thompson(arms, n, p, util_splitmix64(&seed))]++;
    for (size_t i = 1; i < n; i++)
        if (wins[i] > wins[best]) best = i;
    return best;
}

static size_t bench_greedy(const bandit_counts *arms, size_t n, const bandit_prior *p) {
    size_t best = 0;
    double best_mean = -1.0;
    for (size_t i = 0; i < n; i++) {
        double a, b;
        bench_posterior(&arms[i], p, &a, &b);
        if (a / (a + b) > best_mean) {
            best_mean = a / (a + b);
            best = i;
        }
    }
    return best;
}

static size_t pol_tempered_2(const bandit_counts *arms, size_t n, const bandit_prior *p,
                             uint64_t seed) {
    return bench_tempered(arms, n, p, seed, 2);
}

static size_t pol_majority_3(const bandit_counts *arms, size_t n, const bandit_prior *p,
                             uint64_t seed) {
    return bench_majority(arms, n, p, seed, 3);
}

/* Rounds grow with the evidence: 1, 3, 5, ... 15 every 1,000 impressions. */
static size_t pol_sharpen_1000(const bandit_counts *arms, size_t n, const bandit_prior *p,
                               uint64_t seed) {
    uint64_t rounds = 1 + 2 * (bench_impressions(arms, n) / 1000);
    return bench_majority(arms, n, p, seed, rounds > 15 ? 15 : (int)rounds);
}

/* Thompson sampling, then the majority of 15 rounds from 4,000 impressions. */
static size_t pol_commit_4000(const bandit_counts *arms, size_t n, const bandit_prior *p,
                              uint64_t seed) {
    return bench_majority(arms, n, p, seed, bench_impressions(arms, n) >= 4000 ? 15 : 1);
}

/* Thompson sampling, then the highest posterior mean from 4,500 impressions. */
static size_t pol_greedy_4500(const bandit_counts *arms, size_t n, const bandit_prior *p,
                              uint64_t seed) {
    return bench_impressions(arms, n) >= 4500 ? bench_greedy(arms, n, p)
                                              : bandit_thompson(arms, n, p, seed);
}

/* An even split (by seed), then the highest posterior mean from 4,500. */
static size_t pol_split_then_commit_4500(const bandit_counts *arms, size_t n,
                                         const bandit_prior *p, uint64_t seed) {
    return bench_impressions(arms, n) >= 4500 ? bench_greedy(arms, n, p) : (size_t)(seed % n);
}

/* The prior centred on the pooled click rate of the arms, worth 20
 * impressions (empirical Bayes). */
static size_t pol_pooled_prior_20(const bandit_counts *arms, size_t n, const bandit_prior *p,
                                  uint64_t seed) {
    uint64_t trials = 0, wins = 0;
    for (size_t i = 0; i < n; i++) {
        trials += arms[i].n[BANDIT_IMP];
        wins += arms[i].n[p->reward];
    }
    double mean = ((double)wins + 1.0) / ((double)trials + 2.0);
    bandit_prior q = {20.0 * mean, 20.0 * (1.0 - mean), p->reward};
    return bandit_thompson(arms, n, &q, seed);
}

/* Top-two Thompson sampling (beta 0.5): half the time the leader of one
 * round, else the first other winner of a further round. */
static size_t pol_top_two(const bandit_counts *arms, size_t n, const bandit_prior *p,
                          uint64_t seed) {
    size_t lead = bandit_thompson(arms, n, p, util_splitmix64(&seed));
    if (n < 2 || util_splitmix64(&seed) >> 63) return lead;
    for (int k = 0; k < 100; k++) {
        size_t other = bandit_thompson(arms, n, p, util_splitmix64(&seed));
        if (other != lead) return other;
    }
    return lead;
}

static const struct {
    const char *name;
    policy_fn fn;
} policies[] = {
    {"thompson", bandit_thompson}, /* the service's */
    {"tempered_2", pol_tempered_2},
    {"majority_3", pol_majority_3},
    {"sharpen_1000", pol_sharpen_1000},
    {"pooled_prior_20", pol_pooled_prior_20},
    {"top_two", pol_top_two},
    {"commit_4000", pol_commit_4000},
    {"greedy_4500", pol_greedy_4500},
    {"split_then_commit_4500", pol_split_then_commit_4500},
};
#define BENCH_N_POLICIES (sizeof policies / sizeof policies[0])

/* ---- the simulation ------------------------------------------------------------ */

static uint64_t bench_mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

typedef struct {
    double regret, share, share_last, at_goal, wrong_lock;
} outcome;

static outcome run_scenario(const scenario *sc, policy_fn choose, size_t runs, size_t n) {
    outcome o = {0};
    size_t best = 0;
    for (size_t a = 1; a < sc->n_arms; a++)
        if (sc->rates[a] > sc->rates[best]) best = a;
    size_t last_from = n - n / 10;
    bandit_prior prior = {sc->alpha, sc->beta, BANDIT_CLICK};
    for (size_t r = 0; r < runs; r++) {
        bandit_counts live[BENCH_MAX_ARMS], seen[BENCH_MAX_ARMS];
        memset(live, 0, sizeof live);
        memset(seen, 0, sizeof seen);
        bandit_rng users;
        bandit_rng_seed(&users, bench_mix(0xc1c4 + r));
        size_t on_best = 0, on_best_last = 0;
        for (size_t t = 0; t < n; t++) {
            if (t % sc->refresh == 0) memcpy(seen, live, sizeof seen);
            uint64_t seed = bench_mix((uint64_t)r << 32 | t); /* the event id's hash */
            size_t a = choose(seen, sc->n_arms, &prior, seed);
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
        o.wrong_lock += last <= 0.1;
    }
    o.regret /= (double)runs;
    o.share /= (double)runs;
    o.share_last /= (double)runs;
    o.at_goal /= (double)runs;
    o.wrong_lock /= (double)runs;
    return o;
}

static void print_outcome(const char *prefix, const scenario *sc, const outcome *o) {
    printf("%s%s_regret %.1f\n", prefix, sc->name, o->regret);
    printf("%s%s_best_share %.3f\n", prefix, sc->name, o->share);
    printf("%s%s_best_share_last %.3f\n", prefix, sc->name, o->share_last);
    printf("%s%s_runs_at_goal %.3f\n", prefix, sc->name, o->at_goal);
    printf("%s%s_wrong_lock %.3f\n", prefix, sc->name, o->wrong_lock);
    printf("%s%s_goal_met %d\n", prefix, sc->name, o->share_last >= 0.9);
    fflush(stdout);
}

static int usage(void) {
    fprintf(stderr, "usage: bench/bandit [--runs N] [--impressions N] [--policy NAME | --compare]\n"
                    "policies:");
    for (size_t i = 0; i < BENCH_N_POLICIES; i++) fprintf(stderr, " %s", policies[i].name);
    fprintf(stderr, "\n");
    return 2;
}

int main(int argc, char **argv) {
    size_t runs = 400, n = 5000;
    long policy = 0; /* the service's; -1 = all */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
            runs = (size_t)atol(argv[++i]);
        } else if (!strcmp(argv[i], "--impressions") && i + 1 < argc) {
            n = (size_t)atol(argv[++i]);
        } else if (!strcmp(argv[i], "--compare")) {
            policy = -1;
        } else if (!strcmp(argv[i], "--policy") && i + 1 < argc) {
            for (policy = BENCH_N_POLICIES - 1; policy >= 0; policy--)
                if (!strcmp(policies[policy].name, argv[i + 1])) break;
            i++;
            if (policy < 0) return usage();
        } else {
            return usage();
        }
    }
    if (runs < 1 || n < 10) {
        fprintf(stderr, "bench/bandit: need at least 1 run of 10 impressions\n");
        return 2;
    }
    printf("runs %zu\nimpressions %zu\nlast_window_from %zu\n", runs, n, n - n / 10 + 1);
    size_t from = policy < 0 ? 0 : (size_t)policy, to = policy < 0 ? BENCH_N_POLICIES : from + 1;
    for (size_t p = from; p < to; p++) {
        /* The service's policy keeps the plain names the issue asked for. */
        char prefix[64] = "";
        if (p) snprintf(prefix, sizeof prefix, "%s_", policies[p].name);
        for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++) {
            outcome o = run_scenario(&scenarios[i], policies[p].fn, runs, n);
            print_outcome(prefix, &scenarios[i], &o);
        }
    }
    if (policy) return 0;
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
