/* test_bandit.c -- the copy bandit without Redis: the samplers' distributions
 * against Beta and Gamma theory, the same draws for the same seed, Thompson
 * choices, attribution of reactions to copies, and that a redelivered or
 * repeated reaction stages exactly the update it staged the first time (the
 * (copy, counter) pair that Redis counts once). */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bandit.h"
#include "config.h"
#include "template.h"
#include "userstate.h"
#include "util.h"

#define T0 1700000000000LL
#define TOPIC "clickstream"

/* ---- arithmetic and the PRNG ---------------------------------------------------- */

static void test_log_and_exp_agree_with_libm(void **state) {
    for (double x = 1e-300; x < 1e300; x *= 7.3) {
        double want = log(x), got = bandit_log(x);
        assert_true(fabs(got - want) <= 1e-15 * fmax(1.0, fabs(want)));
    }
    for (double x = 0.001; x < 5; x += 0.0137) assert_true(fabs(bandit_log(x) - log(x)) < 1e-15);
    assert_true(bandit_log(1.0) == 0.0);
    for (double x = -700; x < 700; x += 0.917) {
        double want = exp(x), got = bandit_exp(x);
        assert_true(fabs(got - want) <= 2e-15 * want);
    }
    assert_true(bandit_exp(0.0) == 1.0);
    assert_true(bandit_exp(-800) == 0.0);
    assert_true(isinf(bandit_exp(800)));
}

/* The state is splitmix64's output from the seed: its published sequence for
 * seed 0 starts like this. */
static void test_seeding_follows_the_splitmix64_reference(void **state) {
    bandit_rng r;
    bandit_rng_seed(&r, 0);
    assert_true(r.s[0] == 0xe220a8397b1dcdafULL);
    assert_true(r.s[1] == 0x6e789e6aa1b965f4ULL);
    assert_true(r.s[2] == 0x06c45d188009454fULL);
    assert_true(r.s[3] == 0xf88bb8a8724c81ecULL);
    for (int i = 0; i < 1000; i++) {
        double u = bandit_rng_uniform(&r);
        assert_true(u > 0.0 && u < 1.0);
    }
}

/* Sample mean and variance of n draws of f. */
static void moments(double (*f)(bandit_rng *, double, double), double a, double b, size_t n,
                    uint64_t seed, double *mean, double *var) {
    bandit_rng r;
    bandit_rng_seed(&r, seed);
    double s = 0, s2 = 0;
    for (size_t i = 0; i < n; i++) {
        double x = f(&r, a, b);
        s += x;
        s2 += x * x;
    }
    *mean = s / (double)n;
    *var = s2 / (double)n - *mean * *mean;
}

static double gamma_draw(bandit_rng *r, double shape, double unused) {
    (void)unused;
    return bandit_gamma(r, shape);
}

/* Gamma(k): mean k, variance k, excess kurtosis 6/k. The tolerances are five
 * standard errors of the sample mean and the sample variance. */
static void test_gamma_moments_match_theory(void **state) {
    const double shapes[] = {0.3, 1.0, 2.5, 50.0, 4000.0};
    const size_t n = 200000;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        double k = shapes[i], mean, var;
        moments(gamma_draw, k, 0, n, 11 + i, &mean, &var);
        double se_mean = sqrt(k / n), se_var = k * sqrt((2.0 + 6.0 / k) / n);
        if (fabs(mean - k) > 5 * se_mean || fabs(var - k) > 5 * se_var)
            fail_msg("Gamma(%g): mean %g (want %g +- %g), variance %g (want %g +- %g)", k, mean,
                     k, 5 * se_mean, var, k, 5 * se_var);
    }
}

/* Beta(a, b): mean a/(a+b), variance ab/((a+b)^2 (a+b+1)); the posterior
 * shapes the service sees, from no evidence to a lot. */
static void test_beta_moments_match_theory(void **state) {
    const double ab[][2] = {{1, 1}, {0.5, 0.5}, {2, 5}, {51, 951}, {1001, 19001}};
    const size_t n = 200000;
    for (size_t i = 0; i < sizeof ab / sizeof ab[0]; i++) {
        double a = ab[i][0], b = ab[i][1], mean, var;
        moments(bandit_beta, a, b, n, 101 + i, &mean, &var);
        double m = a / (a + b), v = a * b / ((a + b) * (a + b) * (a + b + 1));
        /* A Beta's kurtosis is at most that of a two-point law: the sample
         * variance's standard error is below v * sqrt(2 / n) * 1.5 here. */
        double se_mean = sqrt(v / n), se_var = 1.5 * v * sqrt(2.0 / n);
        if (fabs(mean - m) > 5 * se_mean || fabs(var - v) > 5 * se_var)
            fail_msg("Beta(%g, %g): mean %g (want %g +- %g), variance %g (want %g +- %g)", a, b,
                     mean, m, 5 * se_mean, var, v, 5 * se_var);
    }
}

/* The same seed gives the same draws -- and, since only IEEE-exact operations
 * are used, the same bits on every machine: these were recorded once and
 * must never change, or replays on another host would choose other copy. */
static void test_same_seed_gives_the_same_draws_everywhere(void **state) {
    bandit_rng a, b;
    bandit_rng_seed(&a, 42);
    bandit_rng_seed(&b, 42);
    for (int i = 0; i < 1000; i++) assert_true(bandit_beta(&a, 3.5, 7) == bandit_beta(&b, 3.5, 7));
    /* Compiled with -O3 -march=native on a CPU with FMA these bits are the
     * same; without bandit.c's fp-contract=off the first one is not. */
    static const uint64_t golden[] = {0x3fa6cd77c2bf9af4ULL, 0x3fb03a2c4052d4acULL,
                                      0x3fab88ff1ec21425ULL};
    bandit_rng_seed(&a, 42);
    for (int i = 0; i < 3; i++) {
        double x = bandit_beta(&a, 51.0 + i, 951.0);
        uint64_t bits;
        memcpy(&bits, &x, sizeof bits);
        if (bits != golden[i]) fail_msg("draw %d: %.17g (bits %016llx)", i, x, (unsigned long long)bits);
    }
}

/* ---- Thompson choices ------------------------------------------------------------- */

static bandit_counts counts(uint64_t imp, uint64_t clicks) {
    bandit_counts c = {{0}};
    c.n[BANDIT_IMP] = imp;
    c.n[BANDIT_CLICK] = clicks;
    return c;
}

static void test_thompson_splits_evenly_without_evidence(void **state) {
    bandit_counts arms[2] = {counts(0, 0), counts(0, 0)};
    bandit_prior p = {1, 1, BANDIT_CLICK};
    size_t ones = 0, n = 20000;
    for (size_t s = 0; s < n; s++) ones += bandit_thompson(arms, 2, &p, util_hash_bytes(&s, sizeof s));
    assert_true(ones > n * 0.48 && ones < n * 0.52);
}

/* With Beta(51, 951) against Beta(81, 921) the second arm's draw is higher
 * with probability about 0.997. */
static void test_thompson_follows_the_evidence(void **state) {
    bandit_counts arms[2] = {counts(1000, 50), counts(1000, 80)};
    bandit_prior p = {1, 1, BANDIT_CLICK};
    size_t ones = 0, n = 20000;
    for (size_t s = 0; s < n; s++) ones += bandit_thompson(arms, 2, &p, s * 7919);
    assert_true(ones > n * 0.99 && ones < n);
    /* The reward counter is configurable: conversions tell the other story. */
    arms[0].n[BANDIT_CONV] = 90;
    arms[1].n[BANDIT_CONV] = 10;
    p.reward = BANDIT_CONV;
    ones = 0;
    for (size_t s = 0; s < n; s++) ones += bandit_thompson(arms, 2, &p, s * 7919);
    assert_true(ones < n * 0.001);
}

static void test_thompson_is_a_function_of_seed_and_counts(void **state) {
    bandit_counts arms[3] = {counts(10, 1), counts(12, 2), counts(9, 1)};
    bandit_prior p = {1, 1, BANDIT_CLICK};
    size_t seen[3] = {0};
    for (uint64_t s = 0; s < 3000; s++) {
        size_t k = bandit_thompson(arms, 3, &p, s);
        assert_int_equal(k, bandit_thompson(arms, 3, &p, s));
        seen[k]++;
    }
    for (int k = 0; k < 3; k++) assert_true(seen[k] > 0); /* it does explore */
    /* More clicks than impressions (a broken feed) is capped, not a crash. */
    arms[0] = counts(5, 50);
    assert_true(bandit_thompson(arms, 3, &p, 1) < 3);
    assert_int_equal(bandit_thompson(arms, 0, &p, 1), 0);
}

/* ---- attribution ------------------------------------------------------------------- */

static reaction rx(const char *id, const char *copy_id, reaction_type t, int64_t ts_ms,
                   const char *item) {
    reaction r = {0};
    r.reaction_id = (char *)id;
    r.copy_id = (char *)copy_id;
    r.user_id = (char *)"u1";
    r.type = t;
    r.ts_ms = ts_ms;
    r.item_id = (char *)item;
    return r;
}

static void add_rec(user_state *u, int32_t p, int64_t off, int64_t ts, uint64_t arm) {
    us_copyrec r = {p, off, ts, arm, util_hash("i1"), BANDIT_SEG_NEW, 0};
    assert_int_equal(userstate_copyrec_add(u, &r, 16, 86400000), 0);
}

static void test_reactions_are_attributed_late_or_unknown(void **state) {
    user_state u;
    userstate_init(&u);
    add_rec(&u, 2, 40, T0, 7);
    add_rec(&u, 2, 90, T0 + 3600000, 8);
    const us_copyrec *rec;
    reaction r = rx("r", TOPIC ":2:40", RX_CLICK, T0 + 60000, NULL);
    assert_int_equal(bandit_attribute(&u, &r, TOPIC, 86400000, &rec), BANDIT_ATTRIBUTED);
    assert_true(rec->arm == 7);
    r.ts_ms = T0 + 86400000 + 1; /* past the window */
    assert_int_equal(bandit_attribute(&u, &r, TOPIC, 86400000, &rec), BANDIT_LATE);
    assert_true(rec->arm == 7);
    const char *unknown[] = {TOPIC ":2:41", "other:2:40", TOPIC ":2", TOPIC ":x:40",
                             TOPIC ":2:40x", "", "clickstream2:2:40"};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        r = rx("r", unknown[i], RX_CLICK, T0 + 1000, NULL);
        assert_int_equal(bandit_attribute(&u, &r, TOPIC, 86400000, &rec), BANDIT_UNKNOWN);
        assert_null(rec);
    }
    /* A conversion that names no copy goes to the last one before it. */
    r = rx("r", NULL, RX_CONVERT, T0 + 2 * 3600000, NULL);
    assert_int_equal(bandit_attribute(&u, &r, TOPIC, 86400000, &rec), BANDIT_ATTRIBUTED);
    assert_true(rec->arm == 8);
    r.ts_ms = T0 + 1800000;
    assert_int_equal(bandit_attribute(&u, &r, TOPIC, 86400000, &rec), BANDIT_ATTRIBUTED);
    assert_true(rec->arm == 7);
    r.ts_ms = T0 - 1; /* before any copy */
    assert_int_equal(bandit_attribute(&u, &r, TOPIC, 86400000, &rec), BANDIT_UNKNOWN);
    /* Other reactions need their copy id. */
    r = rx("r", NULL, RX_CLICK, T0 + 1000, NULL);
    assert_int_equal(bandit_attribute(&u, &r, TOPIC, 86400000, &rec), BANDIT_UNKNOWN);
    userstate_clear(&u);
}

/* ---- the service's bandit, without Redis ------------------------------------------- */

typedef struct {
    config *cfg;
    templates *tpl;
    bandit *b;
} fixture;

static fixture *fixture_new(const char *holdout_percent) {
    fixture *f = calloc(1, sizeof *f);
    char err[512];
    f->cfg = config_load(NULL, NULL, err, sizeof err);
    if (!f->cfg) fail_msg("%s", err);
    if (holdout_percent && config_set(f->cfg, "holdout.percent", holdout_percent, err, sizeof err))
        fail_msg("%s", err);
    const char *locales[] = {"zh-CN", "en-US"};
    f->tpl = templates_load("config/templates.conf", locales, 2, err, sizeof err);
    if (!f->tpl) fail_msg("%s", err);
    f->b = bandit_new(f->cfg, f->tpl, TOPIC, err, sizeof err);
    if (!f->b) fail_msg("%s", err);
    return f;
}

static void fixture_free(fixture *f) {
    bandit_free(f->b);
    templates_free(f->tpl);
    config_free(f->cfg);
    free(f);
}

static void test_choice_names_a_variant_and_its_arm(void **state) {
    fixture *f = fixture_new(NULL);
    size_t seen[2] = {0};
    for (uint64_t s = 0; s < 400; s++) {
        uint64_t arm;
        size_t k = bandit_choose(f->b, "recommendation", "en-US", BANDIT_SEG_NEW, s, &arm);
        assert_true(k < 2);
        char id[64];
        snprintf(id, sizeof id, "recommendation.en-US.%s",
                 templates_variant_name(f->tpl, "recommendation", "en-US", k));
        assert_true(arm == util_hash(id));
        seen[k]++;
    }
    assert_true(seen[0] > 100 && seen[1] > 100);
    uint64_t arm;
    assert_int_equal(bandit_choose(f->b, "recommendation", "fr-FR", BANDIT_SEG_NEW, 1, &arm), 0);
    assert_true(arm == 0);
    fixture_free(f);
}

static void test_uniform_policy_picks_by_seed_as_before(void **state) {
    fixture *f = fixture_new(NULL);
    char err[256];
    assert_int_equal(config_set(f->cfg, "bandit.policy", "uniform", err, sizeof err), 0);
    bandit *b = bandit_new(f->cfg, f->tpl, TOPIC, err, sizeof err);
    assert_non_null(b);
    for (uint64_t s = 0; s < 50; s++) {
        uint64_t arm;
        assert_int_equal(bandit_choose(b, "recommendation", "zh-CN", BANDIT_SEG_RETURNING, s, &arm),
                         s % 2);
    }
    bandit_free(b);
    fixture_free(f);
}

static void test_holdout_is_stable_and_near_its_percentage(void **state) {
    fixture *f = fixture_new("10"), *g = fixture_new("10"), *none = fixture_new(NULL);
    size_t in = 0, n = 50000;
    char id[32];
    for (size_t i = 0; i < n; i++) {
        snprintf(id, sizeof id, "user-%zu", i);
        int h = bandit_in_holdout(f->b, id);
        assert_int_equal(h, bandit_in_holdout(g->b, id));
        assert_int_equal(bandit_in_holdout(none->b, id), 0);
        in += h;
    }
    assert_true(in > n * 0.095 && in < n * 0.105);
    fixture_free(f);
    fixture_free(g);
    fixture_free(none);
}

typedef struct {
    char lines[16][96];
    size_t n;
} staged_list;

static void collect_staged(int32_t partition, int64_t offset, const char *field, int counter,
                           void *ud) {
    staged_list *l = ud;
    assert_true(l->n < 16);
    snprintf(l->lines[l->n++], sizeof l->lines[0], "%d:%lld %s%s", (int)partition,
             (long long)offset, field, bandit_counter_name(counter));
}

static staged_list staged(const bandit *b) {
    staged_list l = {0};
    bandit_each_staged(b, collect_staged, &l);
    return l;
}

/* What Redis is asked to count for a copy and its reactions: (copy, counter)
 * pairs, the key its marker dedups on. A redelivery stages the same pairs
 * again; a duplicate stages nothing; late and unknown reactions nothing. */
static void test_repeated_reactions_stage_the_same_copy_counter_pairs(void **state) {
    fixture *f = fixture_new(NULL);
    user_state u;
    userstate_init(&u);
    uint64_t arm;
    bandit_choose(f->b, "recommendation", "en-US", BANDIT_SEG_NEW, 5, &arm);
    assert_int_equal(bandit_copy_made(f->b, &u, 1, 7, T0, arm, util_hash("i1"), BANDIT_SEG_NEW, 0), 0);
    staged_list l = staged(f->b);
    assert_int_equal(l.n, 1);
    const char *variant = strstr(l.lines[0], "en-US.") + 6;
    char want[96];
    snprintf(want, sizeof want, "1:7 new.en-US.%.*ssent", (int)(strchr(variant, '.') - variant + 1),
             variant);
    assert_string_equal(l.lines[0], want);
    bandit_discard(f->b);

    reaction click = rx("r1", TOPIC ":1:7", RX_CLICK, T0 + 1000, NULL);
    assert_int_equal(bandit_on_reaction(f->b, &u, &click, US_APPLIED), BANDIT_ATTRIBUTED);
    staged_list first = staged(f->b);
    assert_int_equal(first.n, 2); /* the impression a click implies, and the click */
    assert_non_null(strstr(first.lines[0], "imp"));
    assert_non_null(strstr(first.lines[1], "click"));
    bandit_discard(f->b);
    /* Redelivered after a failed batch: the same pairs. */
    assert_int_equal(bandit_on_reaction(f->b, &u, &click, US_ALREADY_APPLIED), BANDIT_ATTRIBUTED);
    staged_list again = staged(f->b);
    assert_int_equal(again.n, first.n);
    for (size_t i = 0; i < first.n; i++) assert_string_equal(again.lines[i], first.lines[i]);
    bandit_discard(f->b);
    /* A second click on the copy, with another id: still the same pairs. */
    reaction click2 = rx("r2", TOPIC ":1:7", RX_CLICK, T0 + 2000, NULL);
    bandit_on_reaction(f->b, &u, &click2, US_APPLIED);
    again = staged(f->b);
    for (size_t i = 0; i < first.n; i++) assert_string_equal(again.lines[i], first.lines[i]);
    bandit_discard(f->b);
    /* An upstream duplicate, a late and an unknown reaction: nothing. */
    assert_int_equal(bandit_on_reaction(f->b, &u, &click, US_DUPLICATE), BANDIT_UNKNOWN);
    reaction late = rx("r3", TOPIC ":1:7", RX_CLICK, T0 + 86400000 + 1001, NULL);
    assert_int_equal(bandit_on_reaction(f->b, &u, &late, US_APPLIED), BANDIT_LATE);
    reaction unknown = rx("r4", TOPIC ":1:8", RX_CLICK, T0 + 1000, NULL);
    assert_int_equal(bandit_on_reaction(f->b, &u, &unknown, US_APPLIED), BANDIT_UNKNOWN);
    assert_int_equal(staged(f->b).n, 0);
    /* The event that made the copy, redelivered: its `sent` again. */
    assert_int_equal(bandit_copy_again(f->b, &u, 1, 7), 0);
    assert_int_equal(bandit_copy_again(f->b, &u, 1, 6), 0); /* made no copy */
    l = staged(f->b);
    assert_int_equal(l.n, 1);
    assert_string_equal(l.lines[0], want);
    bandit_discard(f->b);
    userstate_clear(&u);
    fixture_free(f);
}

static void test_holdout_copies_are_counted_under_the_holdout(void **state) {
    fixture *f = fixture_new("100");
    user_state u;
    userstate_init(&u);
    assert_true(bandit_in_holdout(f->b, "anyone"));
    uint64_t arm = bandit_holdout_arm("recommendation", "zh-CN");
    assert_int_equal(bandit_copy_made(f->b, &u, 0, 3, T0, arm, 0, BANDIT_SEG_RETURNING, 1), 0);
    reaction conv = rx("c1", NULL, RX_CONVERT, T0 + 5000, "i9");
    assert_int_equal(bandit_on_reaction(f->b, &u, &conv, US_APPLIED), BANDIT_ATTRIBUTED);
    staged_list l = staged(f->b);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.lines[0], "0:3 returning.zh-CN.@holdout.sent");
    assert_string_equal(l.lines[1], "0:3 returning.zh-CN.@holdout.conv");
    assert_true(u.copyrecs[0].flags & US_COPYREC_HOLDOUT);
    userstate_clear(&u);
    fixture_free(f);
}

static void test_dismissal_hides_the_item_and_unsubscribe_revokes_consent(void **state) {
    fixture *f = fixture_new(NULL);
    user_state u;
    userstate_init(&u);
    uint64_t arm;
    bandit_choose(f->b, "recommendation", "en-US", BANDIT_SEG_NEW, 1, &arm);
    bandit_copy_made(f->b, &u, 0, 1, T0, arm, util_hash("copy-item"), BANDIT_SEG_NEW, 0);
    uint32_t t0 = (uint32_t)(T0 / 1000), hide = 1209600; /* copy.dismissed_item_s */
    /* The reaction's own item... */
    reaction d1 = rx("d1", TOPIC ":0:1", RX_DISMISS, T0 + 1000, "named-item");
    assert_int_equal(bandit_on_reaction(f->b, &u, &d1, US_APPLIED), BANDIT_ATTRIBUTED);
    assert_true(userstate_excluded(&u, util_hash("named-item"), t0 + hide));
    assert_false(userstate_excluded(&u, util_hash("named-item"), t0 + 1 + hide));
    assert_false(userstate_excluded(&u, util_hash("copy-item"), t0 + 10));
    /* ...else the first item of its copy. */
    reaction d2 = rx("d2", TOPIC ":0:1", RX_DISMISS, T0 + 2000, NULL);
    bandit_on_reaction(f->b, &u, &d2, US_APPLIED);
    assert_true(userstate_excluded(&u, util_hash("copy-item"), t0 + 10));
    /* A redelivery has no effect on the state: it was applied before. */
    user_state before;
    assert_int_equal(userstate_copy(&before, &u), 0);
    reaction d3 = rx("d3", NULL, RX_DISMISS, T0 + 3000, "third-item");
    bandit_on_reaction(f->b, &u, &d3, US_ALREADY_APPLIED);
    assert_false(userstate_excluded(&u, util_hash("third-item"), t0 + 10));
    assert_int_equal(u.unsub_ms, 0);
    reaction un = rx("u1", NULL, RX_UNSUBSCRIBE, T0 + 4000, NULL);
    assert_int_equal(bandit_on_reaction(f->b, &u, &un, US_APPLIED), BANDIT_UNKNOWN);
    assert_true(u.unsub_ms == T0 + 4000);
    userstate_clear(&before);
    userstate_clear(&u);
    fixture_free(f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_log_and_exp_agree_with_libm),
        cmocka_unit_test(test_seeding_follows_the_splitmix64_reference),
        cmocka_unit_test(test_gamma_moments_match_theory),
        cmocka_unit_test(test_beta_moments_match_theory),
        cmocka_unit_test(test_same_seed_gives_the_same_draws_everywhere),
        cmocka_unit_test(test_thompson_splits_evenly_without_evidence),
        cmocka_unit_test(test_thompson_follows_the_evidence),
        cmocka_unit_test(test_thompson_is_a_function_of_seed_and_counts),
        cmocka_unit_test(test_reactions_are_attributed_late_or_unknown),
        cmocka_unit_test(test_choice_names_a_variant_and_its_arm),
        cmocka_unit_test(test_uniform_policy_picks_by_seed_as_before),
        cmocka_unit_test(test_holdout_is_stable_and_near_its_percentage),
        cmocka_unit_test(test_repeated_reactions_stage_the_same_copy_counter_pairs),
        cmocka_unit_test(test_holdout_copies_are_counted_under_the_holdout),
        cmocka_unit_test(test_dismissal_hides_the_item_and_unsubscribe_revokes_consent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
