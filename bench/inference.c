/* inference.c -- what the recommender's inference costs, measured in one run.
 *
 *   inference [--threads N] [--batch B] [--rounds R]
 *
 * A model of random weights shaped like the Amazon Beauty one (d=64, L=2,
 * H=2, hidden 256, W=200, 12,101 items, 637 attributes; W=50 for the w50
 * figure) is written to a temporary file and mapped. Every figure is the
 * median over R rounds (default 15), after a warm-up, of a round's mean; a
 * round repeats its operation for at least 20 ms. A ratio is taken within
 * each round, the two things compared running back to back, and its median
 * reported, so that a busy machine slows both alike. OpenBLAS runs
 * --threads threads (default 1, as in the service). Prints `name value` lines:
 *
 *   step_latency_us_single            one user, one event, the state holding W/2 positions
 *                                     (the same state every time: it stays in the CPU's cache)
 *   step_latency_us_batched_per_user  one batched step of B users whose states hold 1 to W-1
 *                                     positions, evenly spread (W/2 on average), divided by B
 *   step_latency_us_one_at_a_time_per_user
 *                                     the same B users stepped by one call each, per user
 *   batched_speedup_over_one_at_a_time  the second over the first, round by round
 *   incremental_speedup_w50, _w200    full recompute over the window / one step
 *                                     appending the window's last position (one user)
 *   batched_step_gflops               the flops of the batched step's matmul() calls (the
 *                                     projections and feed-forward over the batch, and each
 *                                     user's query-key and attention-value products) over the
 *                                     whole step's time, norms, softmax and GELU included
 *   sgemm_gflops                      cblas_sgemm alone on the batch's projection and
 *                                     feed-forward shapes (B x d x 3d, B x d x d, B x d x 4d,
 *                                     B x 4d x d per layer)
 *   batched_vs_sgemm_gflops_ratio     the first over the second
 *   batched_vs_sgemm_gflops_ratio_projections_only
 *                                     the same counting only the projection and feed-forward
 *                                     flops: the share of the step that sgemm would take
 *   score_12101_items_64_users_ms     one sgemm [64 x d] x [d x 12101] and a top-10 per user
 *                                     that skips 1% of the items
 *   kv_bytes_per_user_full_window     one user's KV state holding the whole window: keys and
 *                                     values in bytes with a float scale per position and
 *                                     head, 2 * L * round_up(W, 16) * (d + 4 * H), plus a
 *                                     64-byte header
 *   kv_bytes_per_user_9_events        the same for a user with 9 events, the mean history of
 *                                     Amazon Beauty's users (states grow with their positions)
 *   kv_bytes_per_user_batch_mean      the mean over the batch's states (1 to W-1 positions)
 *
 * The states stepped are the same ones every round (64 users' take 2.4 MB,
 * of which a step reads 1.9 MB), with the model's weights more than the
 * core's L2 cache holds: they stream from L3. The service's states come from memory as users
 * arrive, which costs more.
 *
 * OpenBLAS picks its kernels for the CPU it detects (openblas_core); a CPU
 * newer than the library falls back to older kernels unless OPENBLAS_CORETYPE
 * names one (e.g. SkylakeX), which changes every figure but the ratios less. */
#define _GNU_SOURCE
#include <cblas.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "model.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef void (*bench_fn)(void *ctx);

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Repetitions of fn that take at least 20 ms; running them warms up. */
static int bench_calibrate(bench_fn fn, void *ctx) {
    for (int reps = 1;; reps *= 2) {
        double t = now_s();
        for (int i = 0; i < reps; i++) fn(ctx);
        if (now_s() - t >= 0.02) return reps;
    }
}

static double bench_round(bench_fn fn, void *ctx, int reps) {
    double t = now_s();
    for (int i = 0; i < reps; i++) fn(ctx);
    return (now_s() - t) / reps;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

/* Seconds per call of a and of b, and the ratio a / b: medians over rounds
 * that each time a then b back to back, so that a ratio compares the two
 * under the same load (the machine is shared). */
typedef struct {
    double a, b, ratio;
} bench_pair;

static bench_pair bench_paired(bench_fn fa, void *ca, bench_fn fb, void *cb, int rounds) {
    int ra = bench_calibrate(fa, ca), rb = bench_calibrate(fb, cb);
    double *a = malloc(3 * (size_t)rounds * sizeof *a), *b = a + rounds, *q = b + rounds;
    for (int r = 0; r < rounds; r++) {
        a[r] = bench_round(fa, ca, ra);
        b[r] = bench_round(fb, cb, rb);
        q[r] = a[r] / b[r];
    }
    bench_pair p = {median(a, rounds), median(b, rounds), median(q, rounds)};
    free(a);
    return p;
}

static void die(const char *what, const char *err) {
    fprintf(stderr, "inference: %s: %s\n", what, err);
    exit(1);
}

typedef struct {
    const model *m;
    model_runstate *rs;
    model_kv **kvs;
    int *history;             /* positions each state holds before the step */
    model_token *tokens;      /* (max(B, W)) */
    int B;
    float *h;                 /* (B, dim) */
    float *scores;            /* (B, n_items) */
    uint8_t *excluded;        /* n_items bits */
} bench_ctx;

static void run_step(void *p) {
    bench_ctx *x = p;
    char err[256];
    for (int b = 0; b < x->B; b++) x->kvs[b]->n = x->history[b]; /* replay the same step */
    if (model_step(x->m, x->rs, x->kvs, x->tokens, x->B, x->h, err, sizeof err) < 0)
        die("step", err);
}

/* The batch's users stepped one call each. */
static void run_one_at_a_time(void *p) {
    bench_ctx *x = p;
    char err[256];
    for (int b = 0; b < x->B; b++) {
        x->kvs[b]->n = x->history[b];
        if (model_step(x->m, x->rs, &x->kvs[b], &x->tokens[b], 1, x->h, err, sizeof err) < 0)
            die("step", err);
    }
}

static void run_full(void *p) {
    bench_ctx *x = p;
    char err[256];
    int W = model_get_config(x->m)->window;
    if (model_forward_full(x->m, x->rs, x->tokens, W, x->h, err, sizeof err) < 0)
        die("full recompute", err);
}

static int skip_bit(void *ctx, int32_t row) {
    const uint8_t *bits = ctx;
    return bits[row / 8] >> (row % 8) & 1;
}

static void run_score(void *p) {
    bench_ctx *x = p;
    int n = model_get_config(x->m)->n_items;
    int32_t rows[10];
    model_score(x->m, x->h, x->B, x->scores);
    for (int b = 0; b < x->B; b++)
        model_topk(x->scores + (size_t)b * n, n, 10, skip_bit, x->excluded, rows, NULL);
}

/* The batched step's projection and feed-forward products, by cblas_sgemm alone. */
typedef struct {
    const model_config *c;
    int B;
    float *a, *b, *o;
} sgemm_ctx;

static void run_sgemm(void *p) {
    sgemm_ctx *s = p;
    int d = s->c->dim, hid = s->c->hidden;
    const int shapes[4][2] = {{d, 3 * d}, {d, d}, {d, hid}, {hid, d}}; /* (k, n) */
    for (int l = 0; l < s->c->n_layers; l++)
        for (int i = 0; i < 4; i++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->B, shapes[i][1],
                        shapes[i][0], 1.0f, s->a, shapes[i][0], s->b, shapes[i][1], 1.0f, s->o,
                        shapes[i][1]);
}

/* Flops of the projection and feed-forward products of one step of B users. */
static double projection_flops(const model_config *c, int B) {
    double d = c->dim, hid = c->hidden;
    return 2.0 * B * c->n_layers * (d * 3 * d + d * d + d * hid + hid * d);
}

/* Flops of one user's attention products when its state grows to T positions:
 * per layer and head, (1, hd) @ (hd, T) and (1, T) @ (T, hd). */
static double attention_flops(const model_config *c, int T) {
    return 4.0 * c->n_layers * c->dim * T;
}

static model *bench_model(const model_config *c, const char *path) {
    char err[256];
    if (model_write_random(path, c, 42, err, sizeof err) < 0) die("writing the model", err);
    model *m = model_open(path, err, sizeof err);
    if (!m) die("opening the model", err);
    return m;
}

static void random_tokens(const model_config *c, model_token *t, int n, unsigned *seed) {
    for (int i = 0; i < n; i++)
        t[i] = (model_token){.item = rand_r(seed) % c->n_items, .type = rand_r(seed) % c->n_types};
}

/* Full recompute over W positions / one step appending the W-th. */
static double speedup(const model_config *c, const char *path, int rounds) {
    model *m = bench_model(c, path);
    unsigned seed = 7;
    int W = c->window;
    model_token *toks = malloc((size_t)W * sizeof *toks);
    random_tokens(c, toks, W, &seed);
    model_kv *kv = model_kv_new(m);
    model_runstate *rs = model_runstate_new(m, 1);
    float h[1024];
    char err[256];
    if (model_prefill(m, rs, kv, toks, W - 1, NULL, err, sizeof err) < 0) die("prefill", err);
    int history = W - 1;
    bench_ctx x = {.m = m, .rs = rs, .kvs = &kv, .history = &history, .tokens = toks, .B = 1,
                   .h = h};
    bench_ctx step = x;
    step.tokens = toks + W - 1;
    bench_pair p = bench_paired(run_full, &x, run_step, &step, rounds);
    model_runstate_free(rs);
    model_kv_free(kv);
    free(toks);
    model_close(m);
    return p.ratio;
}

int main(int argc, char **argv) {
    static const struct option opts[] = {{"threads", required_argument, 0, 't'},
                                         {"batch", required_argument, 0, 'b'},
                                         {"rounds", required_argument, 0, 'r'},
                                         {0, 0, 0, 0}};
    int threads = 1, B = 64, rounds = 15, o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 't': threads = atoi(optarg); break;
        case 'b': B = atoi(optarg); break;
        case 'r': rounds = atoi(optarg); break;
        default: fprintf(stderr, "usage: inference [--threads N] [--batch B] [--rounds R]\n"); return 2;
        }
    }
    if (threads < 1 || B < 1 || rounds < 1) {
        fprintf(stderr, "inference: --threads, --batch and --rounds must be positive\n");
        return 2;
    }
    model_set_threads(threads);
    char path[64];
    snprintf(path, sizeof path, "/tmp/copystream-bench-model.%d", (int)getpid());

    const model_config c = {64, 2, 2, 200, 256, 12101, 637, 6};
    model *m = bench_model(&c, path);
    int W = c.window, d = c.dim;
    unsigned seed = 1;
    model_runstate *rs = model_runstate_new(m, B);
    model_kv **kvs = calloc((size_t)B, sizeof *kvs);
    int *history = calloc((size_t)B, sizeof *history);
    model_token *toks = malloc((size_t)W * sizeof *toks);
    float *h = calloc((size_t)B * d, sizeof *h);
    float *scores = malloc((size_t)B * c.n_items * sizeof *scores);
    uint8_t *excluded = calloc((size_t)c.n_items / 8 + 1, 1);
    char err[256];
    for (int b = 0; b < B; b++) {
        kvs[b] = model_kv_new(m);
        history[b] = 1 + (int)((b + 0.5) * (W - 2) / B);
        random_tokens(&c, toks, history[b], &seed);
        if (model_prefill(m, rs, kvs[b], toks, history[b], NULL, err, sizeof err) < 0)
            die("prefill", err);
    }
    random_tokens(&c, toks, B, &seed);
    bench_ctx x = {m, rs, kvs, history, toks, B, h, scores, excluded};

    /* One user whose state holds W/2 positions. */
    int single_hist = W / 2;
    model_kv *single = model_kv_new(m);
    model_token *hist = malloc((size_t)single_hist * sizeof *hist);
    random_tokens(&c, hist, single_hist, &seed);
    if (model_prefill(m, rs, single, hist, single_hist, NULL, err, sizeof err) < 0)
        die("prefill", err);
    bench_ctx one = {.m = m, .rs = rs, .kvs = &single, .history = &single_hist, .tokens = toks,
                     .B = 1, .h = h};

    sgemm_ctx sg = {&c, B, NULL, NULL, NULL};
    size_t big = (size_t)(c.hidden > 3 * d ? c.hidden : 3 * d);
    sg.a = calloc((size_t)B * big, sizeof(float));
    sg.b = calloc(big * big, sizeof(float));
    sg.o = calloc((size_t)B * big, sizeof(float));

    bench_pair single_batch = bench_paired(run_step, &one, run_step, &x, rounds);
    bench_pair alone_batch = bench_paired(run_one_at_a_time, &x, run_step, &x, rounds);
    bench_pair batch_sgemm = bench_paired(run_step, &x, run_sgemm, &sg, rounds);
    for (int i = 0; i < c.n_items; i += 100) excluded[i / 8] |= (uint8_t)(1 << (i % 8));
    bench_ctx score64 = x;
    score64.B = B < 64 ? B : 64;
    int score_reps = bench_calibrate(run_score, &score64);
    double *score_t = malloc((size_t)rounds * sizeof *score_t);
    for (int r = 0; r < rounds; r++) score_t[r] = bench_round(run_score, &score64, score_reps);
    double t_score = median(score_t, rounds);
    free(score_t);
    double sp200 = speedup(&c, path, rounds);
    model_config c50 = c;
    c50.window = 50;
    double sp50 = speedup(&c50, path, rounds);

    double proj = projection_flops(&c, B), flops = proj;
    for (int b = 0; b < B; b++) flops += attention_flops(&c, history[b] + 1);
    printf("openblas_core %s\n", openblas_get_corename());
    printf("threads %d\n", threads);
    printf("config_dim_layers_heads_window %d/%d/%d/%d\n", c.dim, c.n_layers, c.n_heads, W);
    printf("batch %d\n", B);
    printf("step_latency_us_single %.2f\n", single_batch.a * 1e6);
    printf("step_latency_us_batched_per_user %.2f\n", single_batch.b * 1e6 / B);
    printf("step_latency_us_one_at_a_time_per_user %.2f\n", alone_batch.a * 1e6 / B);
    printf("batched_speedup_over_one_at_a_time %.2f\n", alone_batch.ratio);
    printf("incremental_speedup_w50 %.1f\n", sp50);
    printf("incremental_speedup_w200 %.1f\n", sp200);
    /* batch_sgemm.ratio is step time / sgemm time, round by round. */
    printf("batched_step_gflops %.2f\n", flops / batch_sgemm.a * 1e-9);
    printf("sgemm_gflops %.2f\n", proj / batch_sgemm.b * 1e-9);
    printf("batched_vs_sgemm_gflops_ratio %.3f\n", flops / proj / batch_sgemm.ratio);
    printf("batched_vs_sgemm_gflops_ratio_projections_only %.3f\n", 1 / batch_sgemm.ratio);
    printf("score_12101_items_%d_users_ms %.3f\n", score64.B, t_score * 1e3);
    size_t batch_bytes = 0;
    for (int b = 0; b < B; b++) batch_bytes += kvs[b]->bytes;
    printf("kv_bytes_per_user_full_window %zu\n", model_kv_bytes(&c));
    printf("kv_bytes_per_user_9_events %zu\n", model_kv_bytes_at(&c, 9));
    printf("kv_bytes_per_user_batch_mean %zu\n", batch_bytes / (size_t)B);

    for (int b = 0; b < B; b++) model_kv_free(kvs[b]);
    model_kv_free(single);
    free(kvs), free(history), free(toks), free(hist), free(h), free(scores), free(excluded);
    free(sg.a), free(sg.b), free(sg.o);
    model_runstate_free(rs);
    model_close(m);
    unlink(path);
    return 0;
}
