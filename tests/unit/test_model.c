/* test_model.c -- the inference engine: matmul agrees with its naive twin;
 * the cached paths (step, batched step, prefill, the window policy) agree
 * with a full recompute at every position; unknown items embed from their
 * attributes; scores and top-k; the model file round-trips and a damaged or
 * mismatched one is refused with its reason. Models are random weights from a
 * fixed seed: these tests prove the arithmetic, not the recommendations. */
#include "testutil.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model.h"
#include "util.h"

#define TOL 1e-4f

/* d=64, L=2, H=2, W=50, hidden 4d, 300 items, 40 attributes, 6 event types. */
static const model_config SMALL = {64, 2, 2, 50, 256, 300, 40, 6};

static char model_path[64];

static uint64_t test_rng = 1;
static uint32_t rnd(uint32_t n) {
    test_rng ^= test_rng << 13;
    test_rng ^= test_rng >> 7;
    test_rng ^= test_rng << 17;
    return (uint32_t)(test_rng % n);
}

/* a and b agree within tol relative to max(1, |b|), element by element. */
static void assert_close(const float *a, const float *b, size_t n, float tol) {
    for (size_t i = 0; i < n; i++) {
        float lim = tol * (fabsf(b[i]) > 1.0f ? fabsf(b[i]) : 1.0f);
        if (!(fabsf(a[i] - b[i]) <= lim))
            fail_msg("element %zu: %.9g vs %.9g (tolerance %.3g)", i, a[i], b[i], lim);
    }
}

/* n tokens, some of them items the model never saw (with attribute rows). */
static const int32_t unknown_attrs[3][3] = {{1, 5, 9}, {2}, {7, 30}};
static void random_tokens(const model_config *c, model_token *t, int n) {
    for (int i = 0; i < n; i++) {
        t[i] = (model_token){.item = (int32_t)rnd(c->n_items), .type = (int32_t)rnd(c->n_types)};
        if (rnd(8) == 0) {
            int u = (int)rnd(3);
            t[i].item = -1;
            t[i].attrs = unknown_attrs[u];
            t[i].n_attrs = u == 0 ? 3 : u == 1 ? 1 : 2;
        }
    }
}

static model *open_random(const model_config *c, uint64_t seed) {
    char err[256];
    if (model_write_random(model_path, c, seed, err, sizeof err) < 0) fail_msg("%s", err);
    model *m = model_open(model_path, err, sizeof err);
    if (!m) fail_msg("%s", err);
    return m;
}

/* a and b, keys or values of heads of hd numbers as states hold them, agree
 * within tol as assert_close() has it, or are neighbours: two computations of
 * a key that differ by float rounding (sgemm against matvec, another order of
 * sums) quantize to neighbouring integers when they straddle the midpoint
 * between them. A step is the head's scale, its largest magnitude / 127. */
static void assert_q8_close(const float *a, const float *b, size_t n, int hd, float tol) {
    for (size_t h = 0; h < n; h += (size_t)hd) {
        float step = 0;
        for (int i = 0; i < hd; i++) step = fmaxf(step, fabsf(b[h + i]) / 127.0f * 1.0001f);
        for (size_t i = h; i < h + (size_t)hd; i++) {
            float lim = tol * (fabsf(b[i]) > 1.0f ? fabsf(b[i]) : 1.0f) + step;
            if (!(fabsf(a[i] - b[i]) <= lim))
                fail_msg("element %zu: %.9g vs %.9g (tolerance %.3g)", i, a[i], b[i], lim);
        }
    }
}

/* The positions two KV states hold agree. */
static void assert_kv_close(const model *m, const model_kv *a, const model_kv *b) {
    const model_config *c = model_get_config(m);
    assert_int_equal(a->n, b->n);
    float ka[1024], va[1024], kb[1024], vb[1024];
    assert_true(c->dim <= 1024);
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < a->n; p++) {
            assert_int_equal(model_kv_position(a, l, p, ka, va), 0);
            assert_int_equal(model_kv_position(b, l, p, kb, vb), 0);
            assert_q8_close(ka, kb, (size_t)c->dim, c->dim / c->n_heads, TOL);
            assert_q8_close(va, vb, (size_t)c->dim, c->dim / c->n_heads, TOL);
        }
}

static void test_matmul_equals_naive_on_random_shapes(void **unused) {
    for (int trial = 0; trial < 90; trial++) {
        /* A third are one row, the vector-matrix products matmul() does itself. */
        int m = trial % 3 ? 1 + (int)rnd(70) : 1, n = 1 + (int)rnd(90), k = 1 + (int)rnd(130);
        int b_t = (int)rnd(2), pad = (int)rnd(5);
        float beta = rnd(2) ? 1.0f : 0.0f;
        int lda = k + pad, ldb = (b_t ? k : n) + pad, ldo = n + pad;
        size_t na = (size_t)m * lda, nb = (size_t)(b_t ? n : k) * ldb, no = (size_t)m * ldo;
        float *a = malloc(na * sizeof *a), *b = malloc(nb * sizeof *b);
        float *o1 = malloc(no * sizeof *o1), *o2 = malloc(no * sizeof *o2);
        for (size_t i = 0; i < na; i++) a[i] = (float)rnd(2001) / 1000.0f - 1.0f;
        for (size_t i = 0; i < nb; i++) b[i] = (float)rnd(2001) / 1000.0f - 1.0f;
        for (size_t i = 0; i < no; i++) o1[i] = o2[i] = (float)rnd(2001) / 1000.0f - 1.0f;
        matmul(o1, a, b, m, n, k, lda, ldb, ldo, b_t, beta);
        matmul_naive(o2, a, b, m, n, k, lda, ldb, ldo, b_t, beta);
        assert_close(o1, o2, no, TOL); /* padding columns included: left alone by both */
        free(a), free(b), free(o1), free(o2);
    }
}

/* A tiny product checked against values worked out by hand. */
static void test_matmul_naive_computes_the_textbook_product(void **unused) {
    const float a[] = {1, 2, 3, 4, 5, 6};          /* (2, 3) */
    const float b[] = {7, 8, 9, 10, 11, 12};       /* (3, 2) */
    const float bt[] = {7, 9, 11, 8, 10, 12};      /* the same, stored as (2, 3) */
    const float want[] = {58, 64, 139, 154};
    float o[4];
    matmul_naive(o, a, b, 2, 2, 3, 3, 2, 2, 0, 0.0f);
    assert_close(o, want, 4, 0);
    matmul(o, a, bt, 2, 2, 3, 3, 3, 2, 1, 0.0f);
    assert_close(o, want, 4, 1e-6f);
}

/* The model written out plainly in double precision, one position at a time,
 * from the description in docs/MODEL.md and nothing else of model.c: the
 * input sum, pre-LayerNorm blocks, rotary pairs (2i, 2i+1) per head with
 * angle pos * 10000^(-2i / head_dim), causal softmax(q.k / sqrt(head_dim)),
 * GELU with tanh, the final LayerNorm. h = the user state after tokens[n-1]. */
enum { RD = 64, RHID = 256, RN = 50 };
static void ref_layernorm(double *out, const double *x, const float *w, const float *b, int d) {
    double mean = 0, var = 0;
    for (int i = 0; i < d; i++) mean += x[i];
    mean /= d;
    for (int i = 0; i < d; i++) var += (x[i] - mean) * (x[i] - mean);
    var /= d;
    for (int i = 0; i < d; i++) out[i] = (x[i] - mean) / sqrt(var + 1e-5) * w[i] + b[i];
}

/* out (n_out) = bias + in (n_in) @ w (n_in, n_out) */
static void ref_linear(double *out, const double *in, const float *w, const float *bias, int n_in,
                       int n_out) {
    for (int j = 0; j < n_out; j++) {
        out[j] = bias[j];
        for (int i = 0; i < n_in; i++) out[j] += in[i] * w[(size_t)i * n_out + j];
    }
}

/* x (n) = x / s rounded to the nearest integer, times s, for the scale
 * s = max |x| / 127 rounded up to 17 significant bits. */
static void ref_quantize(double *x, int n) {
    double s = 0;
    int e;
    for (int i = 0; i < n; i++) s = fmax(s, fabs(x[i]) / 127);
    double f = frexp(s, &e);
    s = ldexp(ceil(ldexp(f, 17)), e - 17); /* 17 significant bits, up */
    for (int i = 0; s > 0 && i < n; i++) x[i] = nearbyint(x[i] / s) * s;
}

static void reference_forward(const model *m, const model_token *t, int n, double *h) {
    const model_config *c = model_get_config(m);
    const model_weights *w = model_get_weights(m);
    int d = c->dim, H = c->n_heads, hd = d / H, hid = c->hidden;
    assert_true(d <= RD && hid <= RHID && n <= RN);
    static double x[RN][RD], xb[RN][RD], qkv[RN][3 * RD], y[RN][RD], hb[RHID], o[RD];
    for (int p = 0; p < n; p++) {
        const int32_t *attrs = t[p].attrs;
        int na = t[p].n_attrs;
        if (t[p].item >= 0) attrs = model_item_attrs(m, t[p].item, &na);
        double mean[RD] = {0};
        for (int a = 0; a < na; a++)
            for (int i = 0; i < d; i++) mean[i] += w->attr_emb[attrs[a] * d + i] / na;
        for (int i = 0; i < d; i++)
            x[p][i] = (t[p].item >= 0 ? w->item_emb[t[p].item * d + i] : mean[i]) + mean[i] +
                      w->type_emb[t[p].type * d + i];
    }
    for (int l = 0; l < c->n_layers; l++) {
        for (int p = 0; p < n; p++) {
            ref_layernorm(xb[p], x[p], w->ln1_w + l * d, w->ln1_b + l * d, d);
            ref_linear(qkv[p], xb[p], w->wqkv + (size_t)l * d * 3 * d, w->bqkv + l * 3 * d, d,
                       3 * d);
            for (int part = 0; part < 2; part++)          /* queries, keys */
                for (int hh = 0; hh < H; hh++)
                    for (int i = 0; i < hd / 2; i++) {
                        double *v = &qkv[p][part * d + hh * hd + 2 * i];
                        double angle = p * pow(10000.0, -2.0 * i / hd), a = v[0], b = v[1];
                        v[0] = a * cos(angle) - b * sin(angle);
                        v[1] = a * sin(angle) + b * cos(angle);
                    }
            for (int i = d; i < 3 * d; i += hd)         /* keys and values to 8 bits */
                ref_quantize(&qkv[p][i], hd);
        }
        for (int p = 0; p < n; p++) {
            for (int hh = 0; hh < H; hh++) {
                double sc[RN], max = -INFINITY, sum = 0;
                for (int j = 0; j <= p; j++) {
                    sc[j] = 0;
                    for (int i = 0; i < hd; i++)
                        sc[j] += qkv[p][hh * hd + i] * qkv[j][d + hh * hd + i];
                    sc[j] /= sqrt((double)hd);
                    max = fmax(max, sc[j]);
                }
                for (int j = 0; j <= p; j++) sum += sc[j] = exp(sc[j] - max);
                for (int i = 0; i < hd; i++) {
                    y[p][hh * hd + i] = 0;
                    for (int j = 0; j <= p; j++)
                        y[p][hh * hd + i] += sc[j] / sum * qkv[j][2 * d + hh * hd + i];
                }
            }
        }
        for (int p = 0; p < n; p++) {
            ref_linear(o, y[p], w->wo + (size_t)l * d * d, w->bo + l * d, d, d);
            for (int i = 0; i < d; i++) x[p][i] += o[i];
            ref_layernorm(xb[p], x[p], w->ln2_w + l * d, w->ln2_b + l * d, d);
            ref_linear(hb, xb[p], w->w1 + (size_t)l * d * hid, w->b1 + l * hid, d, hid);
            for (int i = 0; i < hid; i++)
                hb[i] = 0.5 * hb[i] *
                        (1 + tanh(sqrt(2 / M_PI) * (hb[i] + 0.044715 * hb[i] * hb[i] * hb[i])));
            ref_linear(o, hb, w->w2 + (size_t)l * hid * d, w->b2 + l * d, hid, d);
            for (int i = 0; i < d; i++) x[p][i] += o[i];
        }
    }
    ref_layernorm(h, x[n - 1], w->lnf_w, w->lnf_b, d);
}

static void test_full_recompute_matches_a_plain_double_precision_reference(void **unused) {
    model *m = open_random(&SMALL, 16);
    model_runstate *rs = model_runstate_new(m, 1);
    model_kv *kv = model_kv_new(m);
    model_token toks[RN];
    random_tokens(&SMALL, toks, RN);
    double ref[RD];
    float want[RD], h[RD];
    char err[256];
    for (int n = 1; n <= RN; n += 7) {
        reference_forward(m, toks, n, ref);
        for (int i = 0; i < SMALL.dim; i++) want[i] = (float)ref[i];
        assert_int_equal(model_forward_full(m, rs, toks, n, h, err, sizeof err), 0);
        assert_close(h, want, SMALL.dim, TOL);
    }
    /* And the cached path, built by prefill then steps, lands on it too. */
    assert_int_equal(model_prefill(m, rs, kv, toks, RN - 3, NULL, err, sizeof err), 0);
    for (int p = RN - 3; p < RN; p++)
        assert_int_equal(model_step(m, rs, &kv, &toks[p], 1, h, err, sizeof err), 0);
    assert_close(h, want, SMALL.dim, TOL);
    model_kv_free(kv);
    model_runstate_free(rs);
    model_close(m);
}

static void test_incremental_step_equals_full_recompute_at_every_position(void **unused) {
    model *m = open_random(&SMALL, 1);
    int W = SMALL.window, d = SMALL.dim;
    model_runstate *rs = model_runstate_new(m, 1);
    model_kv *kv = model_kv_new(m);
    model_token toks[50];
    random_tokens(&SMALL, toks, W);
    float h[64], ref[64];
    char err[256];
    for (int t = 0; t < W; t++) {
        model_kv *kvs[1] = {kv};
        assert_int_equal(model_step(m, rs, kvs, &toks[t], 1, h, err, sizeof err), 0);
        assert_int_equal(kv->n, t + 1);
        assert_int_equal(model_forward_full(m, rs, toks, t + 1, ref, err, sizeof err), 0);
        assert_close(h, ref, d, TOL);
    }
    model_kv_free(kv);
    model_runstate_free(rs);
    model_close(m);
}

/* A step attends through blocks of 16 positions and 16 outputs, so its edges
 * are head sizes that are not a multiple of 16 (24; 8, below a block), whole
 * rows of four blocks (d = 64) or not (d = 48), states shorter than a block,
 * a block and a part, four blocks and a part, and a state too wide for the
 * scratch (W = 3, H = 4). The steps around each edge equal the full
 * recompute, which attends through sgemm, and the 50th a plain
 * double-precision model. */
static void test_step_equals_full_recompute_for_every_head_size_and_length(void **unused) {
    static const model_config shapes[] = {
        {64, 1, 2, 70, 256, 300, 40, 6}, /* head 32, rows of 4 blocks */
        {48, 1, 2, 70, 192, 300, 40, 6}, /* head 24 */
        {48, 1, 1, 70, 192, 300, 40, 6}, /* head 48, 3 blocks a row */
        {32, 1, 2, 70, 128, 300, 40, 6}, /* head 16 */
        {16, 1, 2, 70, 64, 300, 40, 6},  /* head 8 */
        {64, 1, 4, 3, 256, 300, 40, 6},  /* head 16, 4 heads of 3 positions */
    };
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        const model_config *c = &shapes[s];
        model *m = open_random(c, 40 + s);
        model_runstate *rs = model_runstate_new(m, 1);
        model_kv *kv = model_kv_new(m);
        model_token toks[70];
        random_tokens(c, toks, c->window);
        float h[64], full[64], want[64];
        double ref[64];
        char err[256];
        for (int t = 0; t < c->window; t++) {
            assert_int_equal(model_step(m, rs, &kv, &toks[t], 1, h, err, sizeof err), 0);
            int n = t + 1, edge = (n + 1) % 16 <= 2; /* n within one of a multiple of 16 */
            if (n < 20 || edge || n == c->window) {
                assert_int_equal(model_forward_full(m, rs, toks, n, full, err, sizeof err), 0);
                assert_close(h, full, c->dim, TOL);
            }
            if (n == (c->window < RN ? c->window : RN)) {
                reference_forward(m, toks, n, ref);
                for (int i = 0; i < c->dim; i++) want[i] = (float)ref[i];
                assert_close(h, want, c->dim, TOL);
            }
        }
        model_kv_free(kv);
        model_runstate_free(rs);
        model_close(m);
    }
}

static void test_batched_step_equals_each_user_stepped_alone(void **unused) {
    model *m = open_random(&SMALL, 2);
    enum { B = 6 };
    const int history[B] = {0, 1, 7, 23, 40, 49};
    int d = SMALL.dim;
    model_runstate *rs = model_runstate_new(m, B);
    model_kv *together[B], *alone[B];
    model_token hist[B][50], next[B];
    char err[256];
    for (int b = 0; b < B; b++) {
        random_tokens(&SMALL, hist[b], history[b]);
        random_tokens(&SMALL, &next[b], 1);
        together[b] = model_kv_new(m);
        alone[b] = model_kv_new(m);
        if (history[b]) {
            assert_int_equal(model_prefill(m, rs, together[b], hist[b], history[b], NULL, err,
                                           sizeof err), 0);
            assert_int_equal(model_prefill(m, rs, alone[b], hist[b], history[b], NULL, err,
                                           sizeof err), 0);
        }
    }
    float h[B * 64], h1[64];
    assert_int_equal(model_step(m, rs, together, next, B, h, err, sizeof err), 0);
    for (int b = 0; b < B; b++) {
        assert_int_equal(model_step(m, rs, &alone[b], &next[b], 1, h1, err, sizeof err), 0);
        assert_close(h + b * d, h1, d, TOL);
        assert_kv_close(m, together[b], alone[b]);
        assert_int_equal(together[b]->n, history[b] + 1);
        model_kv_free(together[b]);
        model_kv_free(alone[b]);
    }
    model_runstate_free(rs);
    model_close(m);
}

static void test_prefill_equals_stepping_one_by_one(void **unused) {
    model *m = open_random(&SMALL, 3);
    int n = 37, d = SMALL.dim;
    model_runstate *rs = model_runstate_new(m, 1);
    model_kv *stepped = model_kv_new(m), *whole = model_kv_new(m), *chunks = model_kv_new(m);
    model_token toks[37];
    random_tokens(&SMALL, toks, n);
    float hs[64], hw[64], hc[64];
    char err[256];
    for (int t = 0; t < n; t++)
        assert_int_equal(model_step(m, rs, &stepped, &toks[t], 1, hs, err, sizeof err), 0);
    assert_int_equal(model_prefill(m, rs, whole, toks, n, hw, err, sizeof err), 0);
    /* Appending onto a state that already holds positions is the same again. */
    assert_int_equal(model_prefill(m, rs, chunks, toks, 20, NULL, err, sizeof err), 0);
    assert_int_equal(model_prefill(m, rs, chunks, toks + 20, n - 20, hc, err, sizeof err), 0);
    assert_close(hw, hs, d, TOL);
    assert_close(hc, hs, d, TOL);
    assert_kv_close(m, whole, stepped);
    assert_kv_close(m, chunks, stepped);
    model_kv_free(stepped);
    model_kv_free(whole);
    model_kv_free(chunks);
    model_runstate_free(rs);
    model_close(m);
}

/* How states quantize: integers within -127..127, the largest magnitude at
 * 127, each within half a step of its float (ties to even, taken from x times
 * 1 / s, whose rounding may move a tie by 1e-5), the scale at
 * most 2^-16 above max |x| / 127; zeros, and heads too small for a normal
 * scale, give zeros; NaN and infinities clamp.
 * Quantizing the dequantized numbers again gives the same integers and scale
 * exactly -- what lets a state store what a pass attended to without loss --
 * for floats of every kind: random bit patterns, small, huge and subnormal. */
static void test_quantized_keys_round_to_nearest_and_requantize_exactly(void **unused) {
    uint64_t seed = 12345;
    float x[48], y[48];
    int8_t q[48], r[48];
    for (int round = 0; round < 100000; round++) {
        int n = 1 + round % 48;
        for (int i = 0; i < n; i++) {
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            uint32_t u = (uint32_t)(seed >> 32);
            switch (round % 4) {
            case 0: memcpy(&x[i], &u, sizeof x[i]); if (!isfinite(x[i])) x[i] = 1; break;
            case 1: x[i] = ldexpf((float)(int32_t)u, -31); break;        /* -1..1 */
            case 2: x[i] = ldexpf((float)(int32_t)u, -31 - 115); break;  /* tiny scales */
            default: x[i] = ldexpf((float)(int32_t)u, -31) * 1e18f; break;
            }
        }
        float s = model_kv_quantize(x, n, q), m = 0;
        for (int i = 0; i < n; i++) m = fmaxf(m, fabsf(x[i]));
        if (m / 127 < FLT_MIN) { /* flushed to zeros */
            assert_true(s == 0);
            for (int i = 0; i < n; i++) assert_int_equal(q[i], 0);
            continue;
        }
        if (fminf(m, 0x1p64f) / 127 > s * (1 + 1e-6f) || s > fminf(m, 0x1p64f) / 127 * (1 + 0x1p-16f))
            fail_msg("scale %.9g for max %.9g", s, m);
        int top = 0;
        for (int i = 0; i < n; i++) {
            assert_true(q[i] >= -127 && q[i] <= 127);
            top = abs(q[i]) > top ? abs(q[i]) : top;
            if (s > 0 && m < 0x1p64f && !(fabsf(x[i] / s - q[i]) <= 0.5f + 1e-4f))
                fail_msg("%.9g / %.9g: %d", x[i], s, q[i]);
            y[i] = (float)q[i] * s;
        }
        if (s > 0) assert_int_equal(top, 127);
        assert_true(model_kv_quantize(y, n, r) == s);
        assert_memory_equal(q, r, (size_t)n);
    }
    float z[4] = {0}, ties[4] = {127, 0.5f, 1.5f, -2.5f}, bad[3] = {NAN, INFINITY, -1e30f};
    assert_true(model_kv_quantize(z, 4, q) == 0);
    for (int i = 0; i < 4; i++) assert_int_equal(q[i], 0);
    assert_true(model_kv_quantize(ties, 4, q) == 1.0f);
    assert_int_equal(q[1], 0);
    assert_int_equal(q[2], 2);
    assert_int_equal(q[3], -2);
    assert_true(model_kv_quantize(bad, 3, q) == 0x1p64f / 127 * (1 + 0x1p-17f) ||
                model_kv_quantize(bad, 3, q) >= 0x1p64f / 127);
    assert_int_equal(q[0], 127);
    assert_int_equal(q[1], 127);
    assert_int_equal(q[2], -127);
}

/* The portable kernels, which a CPU without AVX2 runs, and the vector ones
 * (AVX-512 or AVX2 here; AVX2 under valgrind) agree with the full recompute
 * and with each other at every position, for head sizes each kernel takes;
 * they quantize to the same bits. */
static void test_portable_kernels_give_the_states_of_the_vector_ones(void **unused) {
    static const model_config shapes[] = {
        {64, 2, 2, 40, 256, 300, 40, 6}, /* head 32 */
        {48, 1, 2, 40, 192, 300, 40, 6}, /* head 24 */
        {16, 1, 2, 40, 64, 300, 40, 6},  /* head 8 */
        {20, 1, 2, 40, 64, 300, 40, 6},  /* head 10: the portable kernels only */
    };
    for (size_t s = 0; s < UTIL_ARRAY_LEN(shapes); s++) {
        const model_config *c = &shapes[s];
        model *m = open_random(c, 60 + s);
        model_runstate *rs = model_runstate_new(m, 1);
        model_kv *vec = model_kv_new(m), *port = model_kv_new(m);
        model_token toks[40];
        random_tokens(c, toks, c->window);
        float hv[64], hp[64], full[64];
        char err[256];
        for (int t = 0; t < c->window; t++) {
            model_use_portable_kernels(0);
            assert_int_equal(model_step(m, rs, &vec, &toks[t], 1, hv, err, sizeof err), 0);
            model_use_portable_kernels(1);
            assert_int_equal(model_step(m, rs, &port, &toks[t], 1, hp, err, sizeof err), 0);
            assert_int_equal(model_forward_full(m, rs, toks, t + 1, full, err, sizeof err), 0);
            assert_close(hp, full, c->dim, TOL);
            assert_close(hp, hv, c->dim, TOL);
        }
        model_use_portable_kernels(0);
        assert_kv_close(m, port, vec);
        /* The first layer's keys and values come before any attention: the
         * quantization itself, portable or vector, gives the same bits. */
        for (int p = 0; p < c->window; p++) {
            float kp[64], vp[64], kv[64], vv[64];
            assert_int_equal(model_kv_position(port, 0, p, kp, vp), 0);
            assert_int_equal(model_kv_position(vec, 0, p, kv, vv), 0);
            assert_memory_equal(kp, kv, (size_t)c->dim * sizeof *kp);
            assert_memory_equal(vp, vv, (size_t)c->dim * sizeof *vp);
        }
        model_kv_free(vec);
        model_kv_free(port);
        model_runstate_free(rs);
        model_close(m);
    }
}

/* x (n) is n integers times a scale, as model_kv_quantize() gives them. */
static void assert_quantized(const float *x, int n) {
    int8_t q[64];
    assert_true(n <= 64);
    float s = model_kv_quantize(x, n, q);
    for (int i = 0; i < n; i++) assert_true((float)q[i] * s == x[i]);
}

/* A state takes room for the positions it has held, doubling from 16 up to
 * the window, and says so in kv->bytes, which is what the cache charges; a
 * reset keeps the room. Its positions read back as the keys and values the
 * full recompute quantizes, exactly. */
static void test_state_grows_with_its_positions_and_reads_back(void **unused) {
    model *m = open_random(&SMALL, 8); /* W = 50: room for 16, 32, then 64 */
    const model_config *c = model_get_config(m);
    model_runstate *rs = model_runstate_new(m, 1);
    model_kv *kv = model_kv_new(m);
    model_token toks[50];
    random_tokens(&SMALL, toks, 50);
    char err[256];
    float h[64], key[64], value[64];
    assert_int_equal(kv->bytes, 64);
    assert_int_equal(model_kv_bytes_at(c, 0), 64);
    for (int t = 0; t < 50; t++) {
        assert_int_equal(model_step(m, rs, &kv, &toks[t], 1, h, err, sizeof err), 0);
        int cap = t < 16 ? 16 : t < 32 ? 32 : 64;
        assert_int_equal(kv->bytes, 64 + 2 * 2 * cap * (64 + 2 * 4));
        assert_int_equal(kv->bytes, model_kv_bytes_at(c, t + 1));
    }
    assert_int_equal(kv->bytes, model_kv_bytes(c));
    assert_int_equal(model_kv_bytes(c), 64 + 2 * 2 * 64 * (64 + 2 * 4));
    /* Every head's key and value is a quantized one, exactly. */
    for (int l = 0; l < 2; l++)
        for (int p = 0; p < 50; p++) {
            assert_int_equal(model_kv_position(kv, l, p, key, value), 0);
            for (int head = 0; head < 64; head += 32) {
                assert_quantized(key + head, 32);
                assert_quantized(value + head, 32);
            }
        }
    assert_int_equal(model_kv_position(kv, 2, 0, key, value), -1);
    assert_int_equal(model_kv_position(kv, 0, 50, key, value), -1);
    size_t bytes = kv->bytes;
    assert_int_equal(model_kv_reset(m, kv), 0);
    assert_int_equal(kv->n, 0);
    assert_int_equal(kv->bytes, bytes);
    assert_int_equal(model_kv_position(kv, 0, 0, key, value), -1);
    /* A prefill takes the room its positions need at once. */
    model_kv *pre = model_kv_new(m);
    assert_int_equal(model_prefill(m, rs, pre, toks, 20, NULL, err, sizeof err), 0);
    assert_int_equal(pre->bytes, model_kv_bytes_at(c, 20));
    assert_int_equal(pre->bytes, 64 + 2 * 2 * 32 * (64 + 2 * 4));
    model_kv_free(pre);
    model_kv_free(kv);
    model_kv_free(NULL);
    model_runstate_free(rs);
    model_close(m);
}

static void test_window_positions_follow_the_rebuild_policy(void **unused) {
    model *m = open_random(&SMALL, 4); /* W = 50: rebuilds to 25, refills to 50 */
    const struct { uint64_t events; int positions; } want[] = {
        {0, 0}, {1, 1}, {49, 49}, {50, 50}, {51, 25}, {52, 26}, {76, 50}, {77, 25},
        {102, 50}, {103, 25}, {1000000, 40},
    };
    for (size_t i = 0; i < UTIL_ARRAY_LEN(want); i++)
        assert_int_equal(model_window_positions(m, want[i].events), want[i].positions);
    model_close(m);
}

/* Events one at a time past the window, as the service would apply them:
 * step when the state lines up with the policy, rebuild otherwise. */
static void test_beyond_the_window_state_equals_full_recompute_since_rebuild(void **unused) {
    model *m = open_random(&SMALL, 5);
    int W = SMALL.window, d = SMALL.dim, total = 3 * W + 7, rebuilds = 0;
    model_runstate *rs = model_runstate_new(m, 1);
    model_kv *kv = model_kv_new(m);
    model_token *toks = malloc((size_t)total * sizeof *toks);
    random_tokens(&SMALL, toks, total);
    float h[64], ref[64];
    char err[256];
    for (int e = 1; e <= total; e++) {
        int keep = model_window_positions(m, (uint64_t)e);
        const model_token *last = toks + e - keep;
        if (kv->n + 1 == keep) {
            assert_int_equal(model_step(m, rs, &kv, &toks[e - 1], 1, h, err, sizeof err), 0);
        } else {
            rebuilds++;
            assert_int_equal(kv->n, W);  /* only a full state needs a rebuild */
            assert_int_equal(keep, W / 2);
            assert_int_equal(model_kv_reset(m, kv), 0);
            assert_int_equal(model_prefill(m, rs, kv, last, keep, h, err, sizeof err), 0);
        }
        assert_int_equal(kv->n, keep);
        assert_int_equal(model_forward_full(m, rs, last, keep, ref, err, sizeof err), 0);
        assert_close(h, ref, d, TOL);
    }
    assert_int_equal(rebuilds, 5); /* at events 51, 77, 103, 129 and 155 of 157 */
    free(toks);
    model_kv_free(kv);
    model_runstate_free(rs);
    model_close(m);
}

static void test_step_refuses_what_it_cannot_do_and_changes_nothing(void **unused) {
    model *m = open_random(&SMALL, 6);
    model *other = open_random(&(model_config){64, 2, 2, 50, 256, 300, 40, 6}, 7);
    model_runstate *rs = model_runstate_new(m, 2);
    model_kv *kv = model_kv_new(m), *foreign = model_kv_new(other);
    model_token ok = {.item = 3, .type = 1};
    float h[2 * 64];
    char err[256] = "";
    model_token bad_type = {.item = 3, .type = 6}, bad_item = {.item = 300, .type = 0};
    model_token bad_attr = {.item = -1, .type = 0, .attrs = (const int32_t[]){40}, .n_attrs = 1};
    assert_int_equal(model_step(m, rs, &kv, &bad_type, 1, h, err, sizeof err), -1);
    assert_non_null(strstr(err, "event type 6"));
    assert_int_equal(model_step(m, rs, &kv, &bad_item, 1, h, err, sizeof err), -1);
    assert_int_equal(model_step(m, rs, &kv, &bad_attr, 1, h, err, sizeof err), -1);
    assert_int_equal(model_step(m, rs, &foreign, &ok, 1, h, err, sizeof err), -1);
    assert_non_null(strstr(err, "another model"));
    model_kv *twice[2] = {kv, kv};
    model_token two[2] = {ok, ok};
    assert_int_equal(model_step(m, rs, twice, two, 2, h, err, sizeof err), -1);
    assert_int_equal(kv->n, 0);
    model_token full[50];
    random_tokens(&SMALL, full, 50);
    assert_int_equal(model_prefill(m, rs, kv, full, 50, NULL, err, sizeof err), 0);
    assert_int_equal(model_step(m, rs, &kv, &ok, 1, h, err, sizeof err), -1);
    assert_non_null(strstr(err, "no room"));
    assert_int_equal(kv->n, 50);
    /* A state of a same-shaped model can be reset for this one; of another shape, not. */
    assert_int_equal(model_kv_reset(m, foreign), 0);
    assert_int_equal(model_step(m, rs, &foreign, &ok, 1, h, err, sizeof err), 0);
    model *narrow = open_random(&(model_config){32, 2, 2, 50, 128, 300, 40, 6}, 7);
    model_kv *small = model_kv_new(narrow);
    assert_int_equal(model_kv_reset(m, small), -1);
    model_kv_free(small);
    model_close(narrow);
    model_kv_free(kv);
    model_kv_free(foreign);
    model_runstate_free(rs);
    model_close(other);
    model_close(m);
}

/* An item the model never saw, given attribute rows A, must behave exactly
 * like a known item whose embedding is the mean of A's embeddings and whose
 * attributes are A. Build that known item and compare. */
static void test_unknown_item_behaves_like_a_known_item_with_the_attribute_mean(void **unused) {
    model_config c = {32, 2, 2, 16, 128, 10, 12, 6};
    enum { KNOWN = 4 };
    const int32_t A[] = {2, 7, 11};
    size_t n = model_weights_point(NULL, &c, NULL);
    float *weights = malloc(n * sizeof *weights);
    model_weights w;
    model_weights_point(&w, &c, weights);
    model_fill_random(&c, 8, weights);
    float mean[32];
    for (int i = 0; i < c.dim; i++) {
        double s = 0;
        for (int a = 0; a < 3; a++) s += w.attr_emb[A[a] * c.dim + i];
        mean[i] = w.item_emb[KNOWN * c.dim + i] = (float)(s / 3);
    }
    const char *items[10] = {"i0", "i1", "i2", "i3", "i4", "i5", "i6", "i7", "i8", "i9"};
    const char *attrs[12] = {"a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "a10",
                             "a11"};
    uint32_t off[11] = {0, 1, 1, 1, 1, 4, 4, 4, 4, 4, 4}; /* item 0: a5; item 4: A */
    uint32_t rows[4] = {5, 2, 7, 11};
    model_tables t = {items, attrs, off, rows, 0};
    char err[256];
    assert_int_equal(model_write(model_path, &c, weights, &t, err, sizeof err), 0);
    free(weights);
    model *m = model_open(model_path, err, sizeof err);
    assert_non_null(m);

    float e[32];
    assert_int_equal(model_embed_unknown(m, A, 3, e), 0);
    assert_close(e, mean, c.dim, 1e-6f);
    int na;
    const int32_t *known_attrs = model_item_attrs(m, KNOWN, &na);
    assert_int_equal(na, 3);
    assert_memory_equal(known_attrs, A, sizeof A);

    model_token as_known[5] = {{.item = 1, .type = 0}, {.item = KNOWN, .type = 2},
                               {.item = 0, .type = 1}, {.item = KNOWN, .type = 3},
                               {.item = 9, .type = 0}};
    model_token as_unknown[5];
    memcpy(as_unknown, as_known, sizeof as_known);
    as_unknown[1] = (model_token){-1, 2, A, 3};
    as_unknown[3] = (model_token){-1, 3, A, 3};
    model_runstate *rs = model_runstate_new(m, 1);
    float h1[32], h2[32];
    assert_int_equal(model_forward_full(m, rs, as_known, 5, h1, err, sizeof err), 0);
    assert_int_equal(model_forward_full(m, rs, as_unknown, 5, h2, err, sizeof err), 0);
    assert_close(h2, h1, c.dim, 1e-5f);

    /* As a scoring row it scores what the known item scores. */
    float all[10], extra[1];
    model_score(m, h1, 1, all);
    model_score_rows(m, h1, 1, e, 1, extra);
    assert_close(extra, &all[KNOWN], 1, 1e-5f);
    assert_int_equal(model_embed_unknown(m, (const int32_t[]){12}, 1, e), -1);
    model_runstate_free(rs);
    model_close(m);
}

static void test_scores_are_dot_products_with_every_item(void **unused) {
    model *m = open_random(&SMALL, 9);
    const model_weights *w = model_get_weights(m);
    enum { B = 3 };
    int d = SMALL.dim, N = SMALL.n_items;
    float h[B * 64], *scores = malloc((size_t)B * N * sizeof *scores);
    for (int i = 0; i < B * d; i++) h[i] = (float)rnd(2001) / 1000.0f - 1.0f;
    model_score(m, h, B, scores);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < N; i++) {
            double s = 0;
            for (int j = 0; j < d; j++) s += (double)h[b * d + j] * w->item_emb[i * d + j];
            float want = (float)s;
            assert_close(&scores[b * N + i], &want, 1, TOL);
        }
    free(scores);
    model_close(m);
}

static int skip_bitset(void *ctx, int32_t row) {
    const uint8_t *bits = ctx;
    return bits[row / 8] >> (row % 8) & 1;
}

static void test_topk_skips_excluded_rows_and_ranks_ties_by_lower_row(void **unused) {
    const float s[] = {0.5f, 0.9f, 0.9f, 0.1f, 0.9f, NAN, 0.7f, 0.9f};
    uint8_t excluded[1] = {1 << 2}; /* row 2 is bought, say */
    int32_t rows[8];
    float got[8];
    assert_int_equal(model_topk(s, 8, 4, skip_bitset, excluded, rows, got), 4);
    assert_memory_equal(rows, ((int32_t[]){1, 4, 7, 6}), 4 * sizeof(int32_t));
    assert_true(got[0] == 0.9f && got[3] == 0.7f);
    /* More asked than qualify: every ranked row except the skipped and NaN. */
    assert_int_equal(model_topk(s, 8, 8, skip_bitset, excluded, rows, NULL), 6);
    assert_memory_equal(rows, ((int32_t[]){1, 4, 7, 6, 0, 3}), 6 * sizeof(int32_t));
    assert_int_equal(model_topk(s, 8, 0, NULL, NULL, rows, NULL), 0);
}

/* Against sorting every row: many ties, random exclusions. */
static const float *cmp_scores;
static int by_score_then_row(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (cmp_scores[x] != cmp_scores[y]) return cmp_scores[x] > cmp_scores[y] ? -1 : 1;
    return x < y ? -1 : x > y;
}

static void test_topk_matches_a_full_sort(void **unused) {
    enum { N = 2000 };
    static float s[N];
    static int32_t all[N], rows[N];
    static uint8_t excluded[N / 8];
    for (int trial = 0; trial < 20; trial++) {
        int n = 0;
        for (int i = 0; i < N; i++) s[i] = (float)rnd(50);
        for (int i = 0; i < N / 8; i++) excluded[i] = (uint8_t)(rnd(4) == 0 ? rnd(256) : 0);
        for (int i = 0; i < N; i++)
            if (!skip_bitset(excluded, i)) all[n++] = i;
        cmp_scores = s;
        qsort(all, (size_t)n, sizeof *all, by_score_then_row);
        int k = 1 + (int)rnd(100);
        assert_int_equal(model_topk(s, N, k, skip_bitset, excluded, rows, NULL), k);
        assert_memory_equal(rows, all, (size_t)k * sizeof *rows);
    }
}

/* ---- the model file ---- */

static size_t file_size(const char *path) {
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    size_t n = (size_t)ftell(f);
    fclose(f);
    return n;
}

static void patch_file(const char *path, long at, const void *bytes, size_t n) {
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    fseek(f, at, SEEK_SET);
    assert_int_equal(fwrite(bytes, 1, n, f), n);
    fclose(f);
}

static void assert_refused(const char *reason) {
    char err[512] = "";
    model *m = model_open(model_path, err, sizeof err);
    assert_null(m);
    if (!strstr(err, reason)) fail_msg("expected \"%s\" in: %s", reason, err);
}

static void test_model_file_round_trips_weights_and_tables(void **unused) {
    model *m = open_random(&SMALL, 10);
    assert_memory_equal(model_get_config(m), &SMALL, sizeof SMALL);
    size_t n = model_weights_point(NULL, &SMALL, NULL);
    float *flat = malloc(n * sizeof *flat);
    model_fill_random(&SMALL, 10, flat);
    model_weights want;
    model_weights_point(&want, &SMALL, flat);
    const model_weights *got = model_get_weights(m);
    assert_memory_equal(got->item_emb, want.item_emb, (size_t)300 * 64 * 4);
    assert_memory_equal(got->wqkv, want.wqkv, (size_t)2 * 64 * 192 * 4);
    assert_memory_equal(got->w2, want.w2, (size_t)2 * 256 * 64 * 4);
    assert_memory_equal(got->lnf_b, want.lnf_b, 64 * 4);
    assert_int_equal((uintptr_t)got->wqkv % 64, 0);
    assert_int_equal((uintptr_t)got->lnf_b % 64, 0);
    free(flat);

    assert_int_equal(model_item_row(m, util_hash("item17")), 17);
    assert_int_equal(model_item_row(m, util_hash("item299")), 299);
    assert_int_equal(model_item_row(m, util_hash("item300")), -1);
    assert_int_equal(model_attr_row(m, util_hash("attr39")), 39);
    assert_int_equal(model_attr_row(m, util_hash("item3")), -1);
    assert_string_equal(model_item_id(m, 42), "item42");
    assert_true(model_item_hash(m, 42) == util_hash("item42"));
    const char *v = model_version(m);
    assert_int_equal(strlen(v), 16); /* no training time: the checksum alone */
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)model_checksum(m));
    assert_string_equal(v, hex);
    model_close(m);
    model_close(NULL);
}

static void test_same_seed_writes_the_same_bytes(void **unused) {
    char err[256], other[80];
    snprintf(other, sizeof other, "%s.again", model_path);
    assert_int_equal(model_write_random(model_path, &SMALL, 11, err, sizeof err), 0);
    assert_int_equal(model_write_random(other, &SMALL, 11, err, sizeof err), 0);
    size_t n = file_size(model_path);
    assert_int_equal(file_size(other), n);
    char *a = malloc(n), *b = malloc(n);
    FILE *fa = fopen(model_path, "rb"), *fb = fopen(other, "rb");
    assert_int_equal(fread(a, 1, n, fa), n);
    assert_int_equal(fread(b, 1, n, fb), n);
    fclose(fa), fclose(fb);
    assert_memory_equal(a, b, n);
    assert_memory_equal(a, "CSMODEL\0\1\0\0\0", 12);
    free(a), free(b);
    unlink(other);
}

static void test_training_time_is_part_of_the_version(void **unused) {
    model_config c = {8, 1, 1, 4, 8, 2, 0, 6};
    size_t n = model_weights_point(NULL, &c, NULL);
    float *weights = calloc(n, sizeof *weights);
    const char *items[] = {"x", "y"};
    uint32_t off[3] = {0, 0, 0};
    model_tables t = {items, NULL, off, NULL, 1772366400}; /* 2026-03-01 12:00:00 UTC */
    char err[256];
    assert_int_equal(model_write(model_path, &c, weights, &t, err, sizeof err), 0);
    model *m = model_open(model_path, err, sizeof err);
    if (!m) fail_msg("%s", err);
    const char *v = model_version(m);
    assert_string_equal(v + 16, "-20260301T120000Z");
    model_close(m);
    /* Two items with one id are refused before anything is written. */
    const char *dup[] = {"x", "x"};
    t.item_ids = dup;
    assert_int_equal(model_write(model_path, &c, weights, &t, err, sizeof err), -1);
    assert_non_null(strstr(err, "\"x\" twice"));
    free(weights);
}

static void test_bad_magic_is_refused(void **unused) {
    char err[256];
    assert_int_equal(model_write_random(model_path, &SMALL, 12, err, sizeof err), 0);
    patch_file(model_path, 0, "GGUF", 4);
    assert_refused("not a copystream model (bad magic)");
    FILE *f = fopen(model_path, "wb"); /* an empty file is no model either */
    fclose(f);
    assert_refused("bad magic");
}

static void test_other_format_version_is_refused(void **unused) {
    char err[256];
    assert_int_equal(model_write_random(model_path, &SMALL, 13, err, sizeof err), 0);
    patch_file(model_path, 8, "\2\0\0\0", 4);
    assert_refused("model format version 2, this build reads 1: use a matching copystream");
}

static void test_truncated_file_is_refused(void **unused) {
    char err[256];
    assert_int_equal(model_write_random(model_path, &SMALL, 14, err, sizeof err), 0);
    assert_int_equal(truncate(model_path, (off_t)(file_size(model_path) / 2)), 0);
    assert_refused("is truncated");
    assert_int_equal(truncate(model_path, 40), 0);
    assert_refused("is truncated");
}

static void test_flipped_byte_fails_the_checksum(void **unused) {
    char err[256];
    /* One byte in the middle of the tensors, then one in the id tables. */
    long at[] = {100000, -20};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(model_write_random(model_path, &SMALL, 15, err, sizeof err), 0);
        long pos = at[i] > 0 ? at[i] : (long)file_size(model_path) + at[i];
        FILE *f = fopen(model_path, "r+b");
        fseek(f, pos, SEEK_SET);
        int byte = fgetc(f);
        fseek(f, pos, SEEK_SET);
        fputc(byte ^ 0x10, f);
        fclose(f);
        assert_refused("checksum mismatch: the file is corrupt or truncated, copy it again");
    }
}

static void test_missing_file_is_refused_with_the_system_reason(void **unused) {
    char err[256];
    assert_null(model_open("/nonexistent/model.bin", err, sizeof err));
    assert_non_null(strstr(err, "No such file"));
}

static int setup(void **unused) {
    snprintf(model_path, sizeof model_path, "/tmp/copystream-test-model.%d", (int)getpid());
    return 0;
}

static int teardown(void **unused) {
    unlink(model_path);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul_equals_naive_on_random_shapes),
        cmocka_unit_test(test_matmul_naive_computes_the_textbook_product),
        cmocka_unit_test(test_full_recompute_matches_a_plain_double_precision_reference),
        cmocka_unit_test(test_incremental_step_equals_full_recompute_at_every_position),
        cmocka_unit_test(test_step_equals_full_recompute_for_every_head_size_and_length),
        cmocka_unit_test(test_batched_step_equals_each_user_stepped_alone),
        cmocka_unit_test(test_prefill_equals_stepping_one_by_one),
        cmocka_unit_test(test_quantized_keys_round_to_nearest_and_requantize_exactly),
        cmocka_unit_test(test_portable_kernels_give_the_states_of_the_vector_ones),
        cmocka_unit_test(test_state_grows_with_its_positions_and_reads_back),
        cmocka_unit_test(test_window_positions_follow_the_rebuild_policy),
        cmocka_unit_test(test_beyond_the_window_state_equals_full_recompute_since_rebuild),
        cmocka_unit_test(test_step_refuses_what_it_cannot_do_and_changes_nothing),
        cmocka_unit_test(test_unknown_item_behaves_like_a_known_item_with_the_attribute_mean),
        cmocka_unit_test(test_scores_are_dot_products_with_every_item),
        cmocka_unit_test(test_topk_skips_excluded_rows_and_ranks_ties_by_lower_row),
        cmocka_unit_test(test_topk_matches_a_full_sort),
        cmocka_unit_test(test_model_file_round_trips_weights_and_tables),
        cmocka_unit_test(test_same_seed_writes_the_same_bytes),
        cmocka_unit_test(test_training_time_is_part_of_the_version),
        cmocka_unit_test(test_bad_magic_is_refused),
        cmocka_unit_test(test_other_format_version_is_refused),
        cmocka_unit_test(test_truncated_file_is_refused),
        cmocka_unit_test(test_flipped_byte_fails_the_checksum),
        cmocka_unit_test(test_missing_file_is_refused_with_the_system_reason),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
