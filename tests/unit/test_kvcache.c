/* test_kvcache.c -- the KV state cache stays within its byte budget, evicts
 * the least recently used users first, charges each state the bytes it
 * takes as it grows, forgets revoked partitions, and a miss rebuilt by one
 * prefill gives back the state that was lost. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvcache.h"
#include "model.h"

static char model_path[64];
static model *m;

/* d=16, L=2, H=2, W=12. */
static const model_config TINY = {16, 2, 2, 12, 64, 50, 8, 6};

static model_runstate *rs1;

/* A state of mod holding n positions (of arbitrary events). */
static model_kv *kv_holding(const model *mod, model_runstate *rs, int n) {
    model_kv *kv = model_kv_new(mod);
    assert_non_null(kv);
    model_token toks[64];
    assert_true(n <= 64);
    for (int i = 0; i < n; i++)
        toks[i] = (model_token){.item = (int32_t)(i * 11 % 50), .type = i % 6};
    char err[256];
    if (n) assert_int_equal(model_prefill(mod, rs, kv, toks, n, NULL, err, sizeof err), 0);
    return kv;
}

/* A state holding the whole window: model_kv_bytes() bytes. */
static model_kv *fresh_kv(void) {
    model_kv *kv = kv_holding(m, rs1, TINY.window);
    assert_int_equal(kv->bytes, model_kv_bytes(&TINY));
    return kv;
}

static void test_budget_is_never_exceeded_under_random_puts(void **unused) {
    size_t one = kvcache_entry_bytes(&(model_kv){.bytes = model_kv_bytes(&TINY)}, "user-00");
    size_t budget = 10 * one + one / 2;
    kvcache *c = kvcache_new(budget);
    srand(3);
    for (int i = 0; i < 3000; i++) {
        char id[16];
        snprintf(id, sizeof id, "user-%02d", rand() % 40);
        switch (rand() % 4) {
        case 0: model_kv_free(kvcache_take(c, id)); break;
        case 1: kvcache_get(c, id); break;
        default: assert_int_equal(kvcache_put(c, id, fresh_kv(), rand() % 4), 0);
        }
        assert_true(kvcache_bytes(c) <= budget);
        assert_true(kvcache_count(c) <= 10);
        assert_int_equal(kvcache_bytes(c), kvcache_count(c) * one);
    }
    assert_true(kvcache_evictions(c) > 0);
    assert_int_equal(kvcache_count(c), 10); /* puts outnumber takes: it runs full */
    kvcache_free(c);
}

static void test_least_recently_used_is_evicted_first(void **unused) {
    size_t one = kvcache_entry_bytes(&(model_kv){.bytes = model_kv_bytes(&TINY)}, "a");
    kvcache *c = kvcache_new(3 * one);
    kvcache_put(c, "a", fresh_kv(), 0);
    kvcache_put(c, "b", fresh_kv(), 0);
    kvcache_put(c, "c", fresh_kv(), 0);
    assert_non_null(kvcache_get(c, "a"));        /* a is now the most recent: b the oldest */
    kvcache_put(c, "d", fresh_kv(), 0);
    assert_null(kvcache_get(c, "b"));
    model_kv *kc = kvcache_take(c, "c");         /* take and put back: c the most recent */
    assert_non_null(kc);
    kvcache_put(c, "c", kc, 0);
    kvcache_put(c, "e", fresh_kv(), 0);          /* order was c, d, a: a goes */
    assert_null(kvcache_get(c, "a"));
    assert_non_null(kvcache_get(c, "c"));
    assert_non_null(kvcache_get(c, "d"));
    assert_non_null(kvcache_get(c, "e"));
    assert_int_equal(kvcache_evictions(c), 2);
    kvcache_free(c);
}

static void test_revoked_partition_users_are_dropped(void **unused) {
    kvcache *c = kvcache_new(1 << 24);
    kvcache_put(c, "p0", fresh_kv(), 0);
    kvcache_put(c, "p1a", fresh_kv(), 1);
    kvcache_put(c, "p1b", fresh_kv(), 1);
    kvcache_put(c, "p2", fresh_kv(), 2);
    kvcache_put(c, "moved", fresh_kv(), 1);
    kvcache_put(c, "moved", fresh_kv(), 2);      /* seen again on another partition */
    assert_int_equal(kvcache_count(c), 5);
    assert_int_equal(kvcache_drop_partition(c, 1), 2);
    assert_null(kvcache_get(c, "p1a"));
    assert_null(kvcache_get(c, "p1b"));
    assert_non_null(kvcache_get(c, "moved"));
    assert_int_equal(kvcache_drop_partition(c, 7), 0);
    assert_int_equal(kvcache_count(c), 3);
    size_t left = 0;
    for (const char *const *id = (const char *const[]){"p0", "p2", "moved", NULL}; *id; id++)
        left += kvcache_entry_bytes(kvcache_get(c, *id), *id);
    assert_int_equal(kvcache_bytes(c), left);
    kvcache_clear(c);
    assert_int_equal(kvcache_count(c), 0);
    assert_int_equal(kvcache_bytes(c), 0);
    kvcache_free(c);
}

static void test_a_state_lent_by_get_can_be_put_back(void **unused) {
    kvcache *c = kvcache_new(1 << 24);
    model_kv *kv = fresh_kv();
    kvcache_put(c, "u", kv, 0);
    model_kv *got = kvcache_get(c, "u");
    assert_ptr_equal(got, kv);
    got->n = 5;                                   /* advanced in place */
    assert_int_equal(kvcache_put(c, "u", got, 3), 0);
    assert_int_equal(kvcache_count(c), 1);
    assert_int_equal(kvcache_get(c, "u")->n, 5);
    assert_int_equal(kvcache_drop_partition(c, 3), 1);
    kvcache_free(c);
}

/* States are sized to the positions they hold, and the cache charges what
 * they take: a state that grew while out of the cache is charged its new
 * size when put back, and the budget evicts for it. */
static void test_budget_charges_each_state_its_real_size(void **unused) {
    const model_config G = {16, 2, 2, 40, 64, 50, 8, 6}; /* capacities 16, 32, 48 */
    char path[80], err[256];
    snprintf(path, sizeof path, "%s.grow", model_path);
    assert_int_equal(model_write_random(path, &G, 5, err, sizeof err), 0);
    model *g = model_open(path, err, sizeof err);
    assert_non_null(g);
    model_runstate *rs = model_runstate_new(g, 1);
    model_kv *a = kv_holding(g, rs, 3), *b = kv_holding(g, rs, 40);
    /* 64-byte header, then keys and values of 2 layers x capacity x 16 dims, a byte each,
     * and a float scale per position and head (2) */
    assert_int_equal(a->bytes, 64 + 2 * 2 * 16 * (16 + 2 * 4));
    assert_int_equal(b->bytes, 64 + 2 * 2 * 48 * (16 + 2 * 4));
    assert_int_equal(a->bytes, model_kv_bytes_at(&G, 3));
    assert_int_equal(b->bytes, model_kv_bytes(&G));
    size_t ea = kvcache_entry_bytes(a, "a"), eb = kvcache_entry_bytes(b, "b");
    kvcache *c = kvcache_new(ea + eb + 100);
    kvcache_put(c, "a", a, 0);
    kvcache_put(c, "b", b, 0);
    assert_int_equal(kvcache_count(c), 2);
    assert_int_equal(kvcache_bytes(c), ea + eb);

    model_kv *grown = kvcache_take(c, "a");
    model_token t = {.item = 1, .type = 0};
    float h[16];
    for (int i = 0; i < 20; i++)
        assert_int_equal(model_step(g, rs, &grown, &t, 1, h, err, sizeof err), 0);
    assert_int_equal(grown->n, 23);
    assert_int_equal(grown->bytes, model_kv_bytes_at(&G, 23));
    assert_int_equal(grown->bytes, 64 + 2 * 2 * 32 * (16 + 2 * 4));
    kvcache_get(c, "b");                          /* b the most recent: still evicted, */
    assert_int_equal(kvcache_put(c, "a", grown, 0), 0);
    assert_null(kvcache_get(c, "b"));             /* as a and b no longer fit together */
    assert_int_equal(kvcache_count(c), 1);
    assert_int_equal(kvcache_bytes(c), kvcache_entry_bytes(grown, "a"));
    kvcache_free(c);
    model_runstate_free(rs);
    model_close(g);
    unlink(path);
}

static void test_zero_budget_holds_nothing(void **unused) {
    kvcache *c = kvcache_new(0);
    assert_int_equal(kvcache_put(c, "x", fresh_kv(), 0), 0);
    assert_int_equal(kvcache_count(c), 0);
    assert_null(kvcache_take(c, "x"));
    kvcache_free(c);
    kvcache_free(NULL);
}

static void assert_close(const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!(fabsf(a[i] - b[i]) <= 1e-4f * fmaxf(1.0f, fabsf(b[i]))))
            fail_msg("element %zu: %.9g vs %.9g", i, a[i], b[i]);
}

/* The same for binary16 keys and values, which may also be neighbours: a
 * prefill's sgemm and a step's matvec round in different orders, and two
 * floats either side of a midpoint round to neighbouring binary16 values. */
static void assert_half_close(const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++) {
        int e;
        frexpf(b[i], &e); /* |b| in [2^(e-1), 2^e) */
        float ulp = ldexpf(1.0f, (b[i] != 0 && e - 1 > -14 ? e - 1 : -14) - 10);
        if (!(fabsf(a[i] - b[i]) <= 1e-4f * fmaxf(1.0f, fabsf(b[i])) + ulp))
            fail_msg("element %zu: %.9g vs %.9g", i, a[i], b[i]);
    }
}

/* A user's state is evicted; the miss is repaired as the service would, by
 * one prefill of the events the policy says the state covers; the rebuilt
 * state equals a reference kept out of the cache, position by position, and
 * the next event gives the same user state from both. */
static void test_a_miss_rebuilt_by_prefill_gives_the_lost_state(void **unused) {
    const model_config *c = model_get_config(m);
    enum { EVENTS = 17 };                          /* past W = 12: one rebuild point */
    model_token toks[EVENTS + 1];
    for (int i = 0; i <= EVENTS; i++) toks[i] = (model_token){.item = (int32_t)(i * 7 % 50), .type = i % 6};
    model_runstate *rs = model_runstate_new(m, 1);
    model_kv *ref = fresh_kv(), *cached = fresh_kv();
    char err[256];
    float h_ref[16], h[16];
    /* Both follow the policy event by event. */
    model_kv *both[2] = {ref, cached};
    for (int e = 1; e <= EVENTS; e++) {
        int keep = model_window_positions(m, (uint64_t)e);
        for (int k = 0; k < 2; k++) {
            if (both[k]->n + 1 == keep) {
                assert_int_equal(model_step(m, rs, &both[k], &toks[e - 1], 1, h, err, sizeof err),
                                 0);
            } else {
                assert_int_equal(model_kv_reset(m, both[k]), 0);
                assert_int_equal(model_prefill(m, rs, both[k], toks + e - keep, keep, h, err,
                                               sizeof err), 0);
            }
        }
    }
    size_t one = kvcache_entry_bytes(cached, "victim");
    kvcache *kc = kvcache_new(2 * one);
    kvcache_put(kc, "victim", cached, 4);
    kvcache_put(kc, "other1", fresh_kv(), 4);
    kvcache_put(kc, "other2", fresh_kv(), 4);      /* evicts the victim */
    assert_null(kvcache_take(kc, "victim"));

    int keep = model_window_positions(m, EVENTS);
    assert_int_equal(keep, ref->n);
    model_kv *rebuilt = model_kv_new(m);
    assert_int_equal(model_prefill(m, rs, rebuilt, toks + EVENTS - keep, keep, NULL, err,
                                   sizeof err), 0);
    kvcache_put(kc, "victim", rebuilt, 4);
    model_kv *back = kvcache_take(kc, "victim");
    assert_ptr_equal(back, rebuilt);
    assert_int_equal(back->n, ref->n);
    float kb[16], vb[16], kr[16], vr[16];
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < ref->n; p++) {
            assert_int_equal(model_kv_position(back, l, p, kb, vb), 0);
            assert_int_equal(model_kv_position(ref, l, p, kr, vr), 0);
            assert_half_close(kb, kr, (size_t)c->dim);
            assert_half_close(vb, vr, (size_t)c->dim);
        }

    assert_int_equal(model_step(m, rs, &ref, &toks[EVENTS], 1, h_ref, err, sizeof err), 0);
    assert_int_equal(model_step(m, rs, &back, &toks[EVENTS], 1, h, err, sizeof err), 0);
    assert_close(h, h_ref, (size_t)c->dim);
    model_kv_free(back);
    model_kv_free(ref);
    kvcache_free(kc);
    model_runstate_free(rs);
}

static int setup(void **unused) {
    char err[256];
    snprintf(model_path, sizeof model_path, "/tmp/copystream-test-kvcache.%d", (int)getpid());
    if (model_write_random(model_path, &TINY, 21, err, sizeof err) < 0 ||
        !(m = model_open(model_path, err, sizeof err)) || !(rs1 = model_runstate_new(m, 1))) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **unused) {
    model_runstate_free(rs1);
    model_close(m);
    unlink(model_path);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_budget_is_never_exceeded_under_random_puts),
        cmocka_unit_test(test_least_recently_used_is_evicted_first),
        cmocka_unit_test(test_revoked_partition_users_are_dropped),
        cmocka_unit_test(test_a_state_lent_by_get_can_be_put_back),
        cmocka_unit_test(test_budget_charges_each_state_its_real_size),
        cmocka_unit_test(test_zero_budget_holds_nothing),
        cmocka_unit_test(test_a_miss_rebuilt_by_prefill_gives_the_lost_state),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
