/* train.c -- the model's trainer; see train.h and docs/MODEL.md.
 *
 * Laid out like llm.c's train_gpt2.c: the parameters, their gradients and
 * AdamW's moments are four flat buffers in model_weights_point() order (so
 * the weights go to model_write() as they are), the activations of a batch
 * one buffer per tensor sized for the largest batch, then an `op_forward` and
 * an `op_backward` per layer, and the passes built from them.
 *
 * A batch packs its users' sequences row after row, without padding: the
 * projections and the feed-forward run as one sgemm over all rows, and
 * attention runs per sequence and head over that sequence's rows. The
 * forward pass computes what model.c's model_forward_full() computes (the
 * same embeddings, LayerNorm, rotary positions, softmax and GELU, with the
 * same exp_approx), so the served model scores as it was trained; the tests
 * hold the two to each other.
 *
 * Randomness is counter-based: every draw is a hash of the seed and of what
 * it is for (the weight and its index, the epoch, the step and dropout site
 * and element), so nothing depends on the order draws are made in. */
#define _GNU_SOURCE
#include "train.h"

#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "config.h"
#include "kernels.h"
#include "log.h"
#include "util.h"

const int train_metrics_k[3] = {5, 10, 20};

void train_params_default(train_params *p) {
    *p = (train_params){
        .dim = 64, .n_layers = 2, .n_heads = 2, .hidden = 256, .window = 50,
        .epochs = 200, .batch = 128, .patience = 10, .negatives = 0,
        .lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.98f, .eps = 1e-8f, .weight_decay = 0.0f,
        .dropout = 0.5f, .clip = 5.0f, .seed = 42, .threads = 2,
    };
}

void train_metrics_add(train_metrics *m, int64_t rank) {
    for (int i = 0; i < 3; i++)
        if (rank < train_metrics_k[i]) {
            m->hr[i] += 1;
            m->ndcg[i] += 1.0 / log2((double)rank + 2.0);
        }
    m->n++;
}

void train_metrics_finish(train_metrics *m) {
    for (int i = 0; i < 3 && m->n; i++) {
        m->hr[i] /= (double)m->n;
        m->ndcg[i] /= (double)m->n;
    }
}

/* ---------------------------------------------------------------------------
 * counter-based randomness */

/* The stream of draws for (seed, what, n): draw i is util_mix64(key + i). */
static uint64_t tr_key(uint64_t seed, uint64_t what, uint64_t n) {
    return util_mix64(seed ^ util_mix64(what ^ util_mix64(n)));
}

static double tr_uniform(uint64_t bits) { return (double)(bits >> 11) * (1.0 / 9007199254740992.0); }

/* A standard normal from draws 2i and 2i+1 of key (Box-Muller). */
static double tr_normal(uint64_t key, uint64_t i) {
    double u1 = tr_uniform(util_mix64(key + 2 * i)), u2 = tr_uniform(util_mix64(key + 2 * i + 1));
    return sqrt(-2.0 * log(u1 + 1e-300)) * cos(6.283185307179586 * u2);
}

enum { TR_DRAW_INIT = 1, TR_DRAW_ORDER, TR_DRAW_DROPOUT, TR_DRAW_NEGATIVES };

/* ---------------------------------------------------------------------------
 * the trainer */

/* One sequence of a batch: the events [lo, lo + n) of user as rows
 * [row, row + n), each predicting the event after it when targets. */
typedef struct {
    int32_t user;
    uint64_t lo;
    int n;
    int row;
    size_t att;          /* offset of its (H, n, n) attention weights in a layer's att */
} tr_seq;

/* A batch's activations, each sized for the largest batch (rmax rows); a
 * layer's slice of a per-layer tensor starts at l * rmax rows. */
typedef struct {
    float *res;          /* (L + 1, rmax, d) the residual stream entering each block, and after the last */
    float *ln1;          /* (L, rmax, d) */
    float *ln1_stat;     /* (L, rmax, 2) mean, 1 / std */
    float *qkv;          /* (L, rmax, 3d) queries and keys rotated */
    float *att;          /* (L, att_max) per sequence (H, n, n) attention weights, causal */
    float *atty;         /* (L, rmax, d) */
    float *res2;         /* (L, rmax, d) the residual stream after attention */
    float *ln2;          /* (L, rmax, d) */
    float *ln2_stat;     /* (L, rmax, 2) */
    float *fch;          /* (L, rmax, hidden) before GELU */
    float *fchg;         /* (L, rmax, hidden) after GELU */
    float *lnf;          /* (rmax, d) user states */
    float *lnf_stat;     /* (rmax, 2) */
    float *mem;
} tr_acts;

/* The backward pass's scratch. */
typedef struct {
    float *dres;         /* (rmax, d) gradient of the residual stream */
    float *dx;           /* (rmax, d) */
    float *dln;          /* (rmax, d) */
    float *dhid;         /* (rmax, hidden) */
    float *dqkv;         /* (rmax, 3d) */
    float *mem;
} tr_grads;

#define TR_CHUNK 256     /* loss rows per sgemm against the item table */
#define TR_WORKERS_MAX 16

/* A share of a batch: the sequences one thread runs forward and backward,
 * with its own activations and its own gradient of every weight. Worker 0's
 * gradient is the trainer's; the others' are added to it before the step. */
typedef struct {
    tr_seq *seqs;                      /* (batch) */
    int n_seqs, rows, has_targets;
    int row_base;                      /* its first row's place in the whole batch: keys dropout */
    int32_t *row_item, *row_target;    /* (rmax) */
    uint8_t *row_type;                 /* (rmax) */
    int *row_pos;                      /* (rmax) position in its sequence */
    tr_acts a;
    tr_grads d;
    float *logits;                     /* (TR_CHUNK, max(n_items, negatives + 1)) */
    float *dlnf;                       /* (rmax, d) gradient of the user states */
    float *neg_grad;                   /* (negatives, d) */
    float *grads;                      /* (n_params) */
    model_weights g;                   /* pointers into grads */
    double loss;                       /* of its rows, summed */
    int loss_grads;                    /* the loss head computes gradients */
    struct trainer *t;
} tr_worker;

struct trainer {
    train_params p;
    model_config c;
    const dataset *ds;
    size_t n_params;
    float *params, *m, *v;             /* (n_params) each, model_weights_point() order */
    model_weights w;                   /* pointers into params */
    float *decay;                      /* (n_params) 1 where weight decay applies */
    float *rope_cos, *rope_sin;        /* (window, head_dim / 2) */
    int rmax;
    size_t att_max;
    tr_worker work[TR_WORKERS_MAX];
    int n_work;                        /* threads = workers, each running OpenBLAS on one thread */
    uint64_t step;                     /* optimizer steps so far; keys dropout and negatives */
    double flops;                      /* of the steps so far (tr_batch_flops) */
    int dropout_on;
    /* the loss head */
    int32_t *neg;                      /* (negatives) this step's sampled items */
    float *neg_emb;                    /* (negatives, d) their rows */
    float *log_q;                      /* (n_items) log sampling probability */
    double *cum_q;                     /* (n_items) cumulative sampling probability */
    /* evaluation */
    float *scores;                     /* (batch, n_items) */
    int32_t *order;                    /* (n_users) */
};

size_t trainer_n_params(const trainer *t) { return t->n_params; }
const model_config *trainer_config(const trainer *t) { return &t->c; }
void trainer_get_weights(const trainer *t, float *out) {
    memcpy(out, t->params, t->n_params * sizeof *out);
}
void trainer_set_weights(trainer *t, const float *in) {
    memcpy(t->params, in, t->n_params * sizeof *in);
}

/* The events of user u a split leaves for training: all but the last two. */
static uint64_t tr_train_end(const trainer *t, int32_t u) {
    uint64_t n = dataset_user_len(t->ds, u);
    return n > 2 ? n - 2 : 0;
}

/* model_window_positions() of model.c for a history of n events. */
static uint64_t tr_window_positions(int W, uint64_t n) {
    uint64_t w = (uint64_t)W, half = w / 2;
    return n <= w ? n : half + (n - w - 1) % (w - half + 1);
}

/* Carves n floats off *at. */
static float *tr_take(float **at, size_t n) {
    float *p = *at;
    *at += n;
    return p;
}

static void tr_worker_free(tr_worker *w) {
    free(w->a.mem);
    free(w->d.mem);
    free(w->seqs);
    free(w->row_item);
    free(w->row_target);
    free(w->row_type);
    free(w->row_pos);
    free(w->logits);
    free(w->dlnf);
    free(w->neg_grad);
    free(w->grads);
}

/* Sizes a worker for any batch of the trainer's (rmax rows). Returns 0 or -1. */
static int tr_worker_init(trainer *t, tr_worker *w) {
    const model_config *c = &t->c;
    size_t L = (size_t)c->n_layers, d = (size_t)c->dim, hid = (size_t)c->hidden;
    size_t R = (size_t)t->rmax, K = (size_t)t->p.negatives;
    size_t n = (L + 1) * R * d + L * R * (d + 2 + 3 * d + d + d + d + 2 + 2 * hid) +
               L * t->att_max + R * (d + 2);
    size_t wide = (size_t)c->n_items > K + 1 ? (size_t)c->n_items : K + 1;
    w->t = t;
    w->seqs = calloc((size_t)t->p.batch, sizeof *w->seqs);
    w->row_item = malloc(R * sizeof *w->row_item);
    w->row_target = malloc(R * sizeof *w->row_target);
    w->row_type = malloc(R);
    w->row_pos = malloc(R * sizeof *w->row_pos);
    w->logits = malloc(TR_CHUNK * wide * sizeof *w->logits);
    w->dlnf = malloc(R * d * sizeof *w->dlnf);
    w->neg_grad = K ? malloc(K * d * sizeof *w->neg_grad) : NULL;
    w->grads = calloc(t->n_params, sizeof *w->grads);
    w->a.mem = malloc(n * sizeof(float));
    w->d.mem = malloc(R * (d + d + d + hid + 3 * d) * sizeof(float));
    if (!w->seqs || !w->row_item || !w->row_target || !w->row_type || !w->row_pos ||
        !w->logits || !w->dlnf || (K && !w->neg_grad) || !w->grads || !w->a.mem || !w->d.mem)
        return -1;
    model_weights_point(&w->g, c, w->grads);
    float *at = w->a.mem;
    w->a.res = tr_take(&at, (L + 1) * R * d);
    w->a.ln1 = tr_take(&at, L * R * d);
    w->a.ln1_stat = tr_take(&at, L * R * 2);
    w->a.qkv = tr_take(&at, L * R * 3 * d);
    w->a.att = tr_take(&at, L * t->att_max);
    w->a.atty = tr_take(&at, L * R * d);
    w->a.res2 = tr_take(&at, L * R * d);
    w->a.ln2 = tr_take(&at, L * R * d);
    w->a.ln2_stat = tr_take(&at, L * R * 2);
    w->a.fch = tr_take(&at, L * R * hid);
    w->a.fchg = tr_take(&at, L * R * hid);
    w->a.lnf = tr_take(&at, R * d);
    w->a.lnf_stat = tr_take(&at, R * 2);
    at = w->d.mem;
    w->d.dres = tr_take(&at, R * d);
    w->d.dx = tr_take(&at, R * d);
    w->d.dln = tr_take(&at, R * d);
    w->d.dhid = tr_take(&at, R * hid);
    w->d.dqkv = tr_take(&at, R * 3 * d);
    return 0;
}

/* Initial weights: embeddings and projections N(0, 0.02), the projections
 * into the residual stream scaled down by sqrt(2 L) as in GPT-2 so that the
 * stream's variance does not grow with depth, event types at zero (a type
 * never seen in training then adds nothing), LayerNorm at identity. */
static void tr_init_weights(trainer *t) {
    const model_config *c = &t->c;
    model_weights *w = &t->w;
    memset(t->params, 0, t->n_params * sizeof *t->params);
    struct {
        float *p;
        size_t n;
        double std;
    } normal[] = {
        {w->item_emb, (size_t)c->n_items * c->dim, 0.02},
        {w->attr_emb, (size_t)c->n_attrs * c->dim, 0.02},
        {w->wqkv, (size_t)c->n_layers * c->dim * 3 * c->dim, 0.02},
        {w->wo, (size_t)c->n_layers * c->dim * c->dim, 0.02 / sqrt(2.0 * c->n_layers)},
        {w->w1, (size_t)c->n_layers * c->dim * c->hidden, 0.02},
        {w->w2, (size_t)c->n_layers * c->hidden * c->dim, 0.02 / sqrt(2.0 * c->n_layers)},
    };
    for (size_t k = 0; k < sizeof normal / sizeof normal[0]; k++) {
        uint64_t key = tr_key(t->p.seed, TR_DRAW_INIT, k);
        for (size_t i = 0; i < normal[k].n; i++)
            normal[k].p[i] = (float)(normal[k].std * tr_normal(key, i));
    }
    for (int i = 0; i < c->n_layers * c->dim; i++) w->ln1_w[i] = w->ln2_w[i] = 1.0f;
    for (int i = 0; i < c->dim; i++) w->lnf_w[i] = 1.0f;
}

trainer *trainer_new(const dataset *ds, const train_params *p, char *errstr, size_t errlen) {
    if (p->dim < 2 || p->n_heads < 1 || p->dim % p->n_heads || (p->dim / p->n_heads) % 2 ||
        p->n_layers < 1 || p->hidden < 1 || p->window < 2 || p->batch < 1 || p->epochs < 0 ||
        p->negatives < 0 || p->threads < 1 || !(p->dropout >= 0 && p->dropout < 1) ||
        !(p->lr > 0)) {
        util_err(errstr, errlen,
                 "no model with dim %d, %d heads (dim / heads must be even), %d layers, hidden "
                 "%d, window %d, batch %d, %d threads, dropout %g, lr %g",
                 p->dim, p->n_heads, p->n_layers, p->hidden, p->window, p->batch, p->threads,
                 p->dropout, p->lr);
        return NULL;
    }
    trainer *t = calloc(1, sizeof *t);
    if (!t) goto oom;
    t->p = *p;
    t->ds = ds;
    t->c = (model_config){.dim = p->dim, .n_layers = p->n_layers, .n_heads = p->n_heads,
                          .window = p->window, .hidden = p->hidden, .n_items = ds->n_items,
                          .n_attrs = ds->n_attrs, .n_types = EV__COUNT};
    const model_config *c = &t->c;
    t->n_params = model_weights_point(NULL, c, NULL);
    t->params = calloc(t->n_params, sizeof(float));
    t->m = calloc(t->n_params, sizeof(float));
    t->v = calloc(t->n_params, sizeof(float));
    t->decay = calloc(t->n_params, sizeof(float));
    if (!t->params || !t->m || !t->v || !t->decay) goto oom;
    model_weights_point(&t->w, c, t->params);
    /* Decay the matrices that mix features, not embeddings, gains or biases. */
    model_weights dw;
    model_weights_point(&dw, c, t->decay);
    size_t L = (size_t)c->n_layers, d = (size_t)c->dim, hid = (size_t)c->hidden;
    for (size_t i = 0; i < L * d * 3 * d; i++) dw.wqkv[i] = 1;
    for (size_t i = 0; i < L * d * d; i++) dw.wo[i] = 1;
    for (size_t i = 0; i < L * d * hid; i++) dw.w1[i] = dw.w2[i] = 1;

    int half = c->dim / c->n_heads / 2;
    t->rope_cos = malloc((size_t)c->window * half * sizeof(float));
    t->rope_sin = malloc((size_t)c->window * half * sizeof(float));
    if (!t->rope_cos || !t->rope_sin) goto oom;
    for (int pos = 0; pos < c->window; pos++)
        for (int i = 0; i < half; i++) {
            double angle = pos * pow(MODEL_ROPE_THETA, -(double)i / half);
            t->rope_cos[(size_t)pos * half + i] = (float)cos(angle);
            t->rope_sin[(size_t)pos * half + i] = (float)sin(angle);
        }

    t->rmax = p->batch * p->window;
    t->att_max = (size_t)p->batch * c->n_heads * c->window * c->window;
    t->n_work = p->threads < TR_WORKERS_MAX ? p->threads : TR_WORKERS_MAX;
    for (int i = 0; i < t->n_work; i++)
        if (tr_worker_init(t, &t->work[i]) < 0) goto oom;
    t->scores = malloc((size_t)p->batch * c->n_items * sizeof *t->scores);
    t->order = malloc((size_t)ds->n_users * sizeof *t->order);
    if (!t->scores || !t->order) goto oom;
    if (p->negatives) {
        /* Negatives are drawn by popularity among the training targets (plus
         * one, so every item can be drawn); the loss subtracts log q. */
        t->neg = malloc((size_t)p->negatives * sizeof *t->neg);
        t->neg_emb = malloc((size_t)p->negatives * d * sizeof *t->neg_emb);
        t->log_q = malloc((size_t)c->n_items * sizeof *t->log_q);
        t->cum_q = malloc((size_t)c->n_items * sizeof *t->cum_q);
        if (!t->neg || !t->neg_emb || !t->log_q || !t->cum_q) goto oom;
        double *count = t->cum_q, total = 0;
        for (int32_t i = 0; i < c->n_items; i++) count[i] = 1;
        for (int32_t u = 0; u < ds->n_users; u++)
            for (uint64_t e = 1; e < tr_train_end(t, u); e++) count[ds->ev_item[ds->user_off[u] + e]]++;
        for (int32_t i = 0; i < c->n_items; i++) total += count[i];
        double run = 0;
        for (int32_t i = 0; i < c->n_items; i++) {
            t->log_q[i] = (float)log(count[i] / total);
            run += count[i] / total;
            t->cum_q[i] = run;
        }
    }
    /* The workers' products are small: one OpenBLAS thread each, which the
     * workers' own threads make as many as asked for. */
    model_set_threads(1);
    tr_init_weights(t);
    return t;
oom:
    util_err(errstr, errlen, "out of memory for a model of %d items", ds->n_items);
    trainer_free(t);
    return NULL;
}

void trainer_free(trainer *t) {
    if (!t) return;
    free(t->params);
    free(t->m);
    free(t->v);
    free(t->decay);
    free(t->rope_cos);
    free(t->rope_sin);
    for (int i = 0; i < t->n_work; i++) tr_worker_free(&t->work[i]);
    free(t->neg);
    free(t->neg_emb);
    free(t->log_q);
    free(t->cum_q);
    free(t->scores);
    free(t->order);
    free(t);
}

/* ---------------------------------------------------------------------------
 * vector helpers */

/* a (n) . b (n) in LANES partial sums, as model.c sums. */
KERNEL_INLINE float tr_dot(const float *restrict a, const float *restrict b, int n) {
    float lane[LANES] = {0}, tail = 0;
    int nv = n & ~(LANES - 1);
    for (int i = 0; i < nv; i += LANES)
        for (int k = 0; k < LANES; k++) lane[k] += a[i + k] * b[i + k];
    for (int i = nv; i < n; i++) tail += a[i] * b[i];
    for (int k = 0; k < 8; k++) lane[k] += lane[k + 8];
    for (int k = 0; k < 4; k++) lane[k] += lane[k + 4];
    return (lane[0] + lane[2]) + (lane[1] + lane[3]) + tail;
}

/* y (n) += a x (n) */
KERNEL_INLINE void tr_axpy(float *restrict y, float a, const float *restrict x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

/* ---------------------------------------------------------------------------
 * layers: op_forward / op_backward */

/* out (R, C) = inp (R, C_in) @ w (C_in, C) + bias (C). */
static void matmul_forward(float *out, const float *inp, const float *w, const float *bias, int R,
                           int c_in, int c) {
    for (int r = 0; r < R; r++) memcpy(out + (size_t)r * c, bias, (size_t)c * sizeof *out);
    matmul(out, inp, w, R, c, c_in, c_in, c, c, 0, 1.0f);
}

/* Given dout (R, C): dinp (R, C_in) = dout @ w^T (overwritten), dw += inp^T
 * @ dout, dbias += the column sums of dout. */
static void matmul_backward(float *dinp, float *dw, float *dbias, const float *dout,
                            const float *inp, const float *w, int R, int c_in, int c) {
    matmul(dinp, dout, w, R, c_in, c, c, c, c_in, 1, 0.0f);
    matmul_at(dw, inp, dout, c_in, c, R, c_in, c, c, 1.0f);
    for (int r = 0; r < R; r++) tr_axpy(dbias, 1.0f, dout + (size_t)r * c, c);
}

/* out (R, C) = LayerNorm of inp's rows, keeping each row's mean and 1 / std
 * in stat (R, 2) for the backward pass. */
static void MODEL_KERNEL layernorm_forward(float *restrict out, float *restrict stat,
                                           const float *restrict inp, const float *restrict w,
                                           const float *restrict b, int R, int C) {
    for (int r = 0; r < R; r++) {
        const float *x = inp + (size_t)r * C;
        float *o = out + (size_t)r * C;
        float sum = 0, var = 0;
        for (int i = 0; i < C; i++) sum += x[i];
        float mean = sum / C;
        for (int i = 0; i < C; i++) var += (x[i] - mean) * (x[i] - mean);
        float rstd = 1.0f / sqrtf(var / C + MODEL_LN_EPS);
        for (int i = 0; i < C; i++) o[i] = (x[i] - mean) * rstd * w[i] + b[i];
        stat[2 * r] = mean;
        stat[2 * r + 1] = rstd;
    }
}

/* dinp (R, C) += the gradient through LayerNorm of dout; dw, db += theirs. */
static void MODEL_KERNEL layernorm_backward(float *restrict dinp, float *restrict dw,
                                            float *restrict db, const float *restrict dout,
                                            const float *restrict inp, const float *restrict stat,
                                            const float *restrict w, int R, int C) {
    for (int r = 0; r < R; r++) {
        const float *x = inp + (size_t)r * C, *dy = dout + (size_t)r * C;
        float *dx = dinp + (size_t)r * C;
        float mean = stat[2 * r], rstd = stat[2 * r + 1];
        float dnorm_mean = 0, dnorm_norm_mean = 0;
        for (int i = 0; i < C; i++) {
            float xhat = (x[i] - mean) * rstd, dnorm = w[i] * dy[i];
            dnorm_mean += dnorm;
            dnorm_norm_mean += dnorm * xhat;
        }
        dnorm_mean /= C;
        dnorm_norm_mean /= C;
        for (int i = 0; i < C; i++) {
            float xhat = (x[i] - mean) * rstd, dnorm = w[i] * dy[i];
            db[i] += dy[i];
            dw[i] += xhat * dy[i];
            dx[i] += rstd * (dnorm - dnorm_mean - xhat * dnorm_norm_mean);
        }
    }
}

#define GELU_S 1.5957691216057308f /* 2 sqrt(2 / pi) */

/* out (N) = GELU(inp), the tanh form computed as v sigmoid(2u) like model.c. */
static void MODEL_KERNEL gelu_forward(float *restrict out, const float *restrict inp, size_t N) {
    for (size_t i = 0; i < N; i++) {
        float v = inp[i];
        out[i] = v / (1.0f + exp_approx(-GELU_S * (v + 0.044715f * v * v * v)));
    }
}

/* d (N) *= GELU'(inp): the gradient of GELU's output becomes its input's. */
static void MODEL_KERNEL gelu_backward(float *restrict d, const float *restrict inp, size_t N) {
    for (size_t i = 0; i < N; i++) {
        float v = inp[i];
        float s = 1.0f / (1.0f + exp_approx(-GELU_S * (v + 0.044715f * v * v * v)));
        float du = GELU_S * (1.0f + 3.0f * 0.044715f * v * v);
        d[i] *= s + v * s * (1.0f - s) * du;
    }
}

/* Rotates the (even, odd) pairs of the H query and H key vectors of one row
 * of qkv by its position's angles, forwards (sign 1) or back (-1): the
 * rotation's gradient is the rotation back. */
static void rope_rotate(const trainer *t, float *qkv, int pos, float sign) {
    int H = t->c.n_heads, hd = t->c.dim / H, half = hd / 2;
    const float *cs = t->rope_cos + (size_t)pos * half, *sn = t->rope_sin + (size_t)pos * half;
    for (int v = 0; v < 2 * H; v++) {
        float *p = qkv + (size_t)v * hd;
        for (int k = 0; k < half; k++) {
            float a = p[2 * k], b = p[2 * k + 1], s = sign * sn[k];
            p[2 * k] = a * cs[k] - b * s;
            p[2 * k + 1] = a * s + b * cs[k];
        }
    }
}

/* Causal attention of one sequence (n rows of qkv (3d), queries and keys
 * rotated) into atty (n, d), keeping the weights in att (H, n, n). */
static void MODEL_KERNEL attention_forward(float *restrict atty, float *restrict att,
                                           const float *restrict qkv, int n, int H, int hd) {
    int d = H * hd;
    float scale = 1.0f / sqrtf((float)hd);
    for (int h = 0; h < H; h++) {
        for (int i = 0; i < n; i++) {
            const float *q = qkv + (size_t)i * 3 * d + h * hd;
            float *a = att + ((size_t)h * n + i) * n, max = -INFINITY, sum = 0;
            for (int j = 0; j <= i; j++) {
                a[j] = tr_dot(q, qkv + (size_t)j * 3 * d + d + h * hd, hd);
                max = a[j] > max ? a[j] : max;
            }
            for (int j = 0; j <= i; j++) sum += a[j] = exp_approx(scale * (a[j] - max));
            float inv = 1.0f / sum;
            for (int j = 0; j <= i; j++) a[j] *= inv;
            for (int j = i + 1; j < n; j++) a[j] = 0;
            float *y = atty + (size_t)i * d + h * hd;
            memset(y, 0, (size_t)hd * sizeof *y);
            for (int j = 0; j <= i; j++) tr_axpy(y, a[j], qkv + (size_t)j * 3 * d + 2 * d + h * hd, hd);
        }
    }
}

/* dqkv (n, 3d) = the gradient of attention_forward's inputs given datty. */
static void MODEL_KERNEL attention_backward(float *restrict dqkv, const float *restrict datty,
                                            const float *restrict att, const float *restrict qkv,
                                            int n, int H, int hd) {
    int d = H * hd;
    float scale = 1.0f / sqrtf((float)hd);
    memset(dqkv, 0, (size_t)n * 3 * d * sizeof *dqkv);
    float datt[n > 0 ? n : 1];
    for (int h = 0; h < H; h++) {
        for (int i = 0; i < n; i++) {
            const float *a = att + ((size_t)h * n + i) * n, *dy = datty + (size_t)i * d + h * hd;
            float dot = 0;
            for (int j = 0; j <= i; j++) {
                const float *v = qkv + (size_t)j * 3 * d + 2 * d + h * hd;
                datt[j] = tr_dot(dy, v, hd);
                dot += a[j] * datt[j];
                tr_axpy(dqkv + (size_t)j * 3 * d + 2 * d + h * hd, a[j], dy, hd);
            }
            const float *q = qkv + (size_t)i * 3 * d + h * hd;
            float *dq = dqkv + (size_t)i * 3 * d + h * hd;
            for (int j = 0; j <= i; j++) {
                float ds = a[j] * (datt[j] - dot) * scale;
                tr_axpy(dq, ds, qkv + (size_t)j * 3 * d + d + h * hd, hd);
                tr_axpy(dqkv + (size_t)j * 3 * d + d + h * hd, ds, q, hd);
            }
        }
    }
}

/* Inverted dropout of x (N) at a site: each element is kept with
 * probability 1 - p and scaled by 1 / (1 - p), the draw a hash of the seed,
 * the step, the site and the element. Applied to a gradient with the same
 * site and step, it is its own backward pass. */
static void dropout_apply(const trainer *t, const tr_worker *wk, float *x, size_t N, int site) {
    if (!t->dropout_on || t->p.dropout <= 0) return;
    /* keyed by the row's place in the whole batch, not in the worker's share */
    uint64_t key = tr_key(t->p.seed, TR_DRAW_DROPOUT, t->step * 64 + (uint64_t)site) +
                   (uint64_t)wk->row_base * (uint64_t)t->c.dim;
    uint32_t cut = (uint32_t)(t->p.dropout * 4294967296.0);
    float keep = 1.0f / (1.0f - t->p.dropout);
    for (size_t i = 0; i < N; i++) x[i] = (uint32_t)(util_mix64(key + i) >> 32) < cut ? 0.0f : x[i] * keep;
}

/* out (d) = the input vector of an event: item + attribute mean + type. */
static void embed_forward(const trainer *t, int32_t item, int type, float *out) {
    int d = t->c.dim;
    const dataset *ds = t->ds;
    memcpy(out, t->w.item_emb + (size_t)item * d, (size_t)d * sizeof *out);
    uint32_t lo = ds->item_attr_off[item], hi = ds->item_attr_off[item + 1];
    if (hi > lo) {
        for (int i = 0; i < d; i++) {
            float s = 0;
            for (uint32_t r = lo; r < hi; r++) s += t->w.attr_emb[(size_t)ds->item_attr_rows[r] * d + i];
            out[i] += s / (float)(hi - lo);
        }
    }
    tr_axpy(out, 1.0f, t->w.type_emb + (size_t)type * d, d);
}

static void embed_backward(const trainer *t, tr_worker *wk, int32_t item, int type,
                           const float *dout) {
    int d = t->c.dim;
    const dataset *ds = t->ds;
    tr_axpy(wk->g.item_emb + (size_t)item * d, 1.0f, dout, d);
    uint32_t lo = ds->item_attr_off[item], hi = ds->item_attr_off[item + 1];
    for (uint32_t r = lo; r < hi; r++)
        tr_axpy(wk->g.attr_emb + (size_t)ds->item_attr_rows[r] * d, 1.0f / (float)(hi - lo), dout, d);
    tr_axpy(wk->g.type_emb + (size_t)type * d, 1.0f, dout, d);
}

/* ---------------------------------------------------------------------------
 * passes */

/* Starts a batch. */
static void tr_batch_reset(tr_worker *wk, int has_targets, int row_base) {
    wk->row_base = row_base;
    wk->n_seqs = wk->rows = 0;
    wk->has_targets = has_targets;
}

/* Adds user u's events [lo, lo + n) as a sequence; with targets, row i
 * predicts event lo + i + 1, which must exist. */
static void tr_batch_add(const trainer *t, tr_worker *wk, int32_t u, uint64_t lo, int n) {
    const dataset *ds = t->ds;
    int H = t->c.n_heads;
    tr_seq *s = &wk->seqs[wk->n_seqs];
    size_t att = wk->n_seqs ? wk->seqs[wk->n_seqs - 1].att +
                                 (size_t)H * wk->seqs[wk->n_seqs - 1].n * wk->seqs[wk->n_seqs - 1].n
                           : 0;
    *s = (tr_seq){.user = u, .lo = lo, .n = n, .row = wk->rows, .att = att};
    const int32_t *items = ds->ev_item + ds->user_off[u] + lo;
    const uint8_t *types = ds->ev_type + ds->user_off[u] + lo;
    for (int i = 0; i < n; i++) {
        int r = wk->rows + i;
        wk->row_item[r] = items[i];
        wk->row_type[r] = types[i];
        wk->row_pos[r] = i;
        wk->row_target[r] = wk->has_targets ? items[i + 1] : -1;
    }
    wk->rows += n;
    wk->n_seqs++;
}

static void tr_forward(const trainer *t, tr_worker *wk) {
    const model_config *c = &t->c;
    const model_weights *w = &t->w;
    int R = wk->rows, d = c->dim, hid = c->hidden, H = c->n_heads, hd = d / H;
    size_t Rm = (size_t)t->rmax;
    tr_acts *a = &wk->a;
    for (int r = 0; r < R; r++) embed_forward(t, wk->row_item[r], wk->row_type[r], a->res + (size_t)r * d);
    dropout_apply(t, wk, a->res, (size_t)R * d, 0);
    for (int l = 0; l < c->n_layers; l++) {
        float *res = a->res + l * Rm * d, *ln1 = a->ln1 + l * Rm * d;
        float *qkv = a->qkv + l * Rm * 3 * d, *att = a->att + l * t->att_max;
        float *atty = a->atty + l * Rm * d, *res2 = a->res2 + l * Rm * d;
        float *ln2 = a->ln2 + l * Rm * d, *fch = a->fch + l * Rm * hid;
        float *fchg = a->fchg + l * Rm * hid, *next = a->res + (l + 1) * Rm * d;
        layernorm_forward(ln1, a->ln1_stat + l * Rm * 2, res, w->ln1_w + l * d, w->ln1_b + l * d, R, d);
        matmul_forward(qkv, ln1, w->wqkv + (size_t)l * d * 3 * d, w->bqkv + l * 3 * d, R, d, 3 * d);
        for (int r = 0; r < R; r++) rope_rotate(t, qkv + (size_t)r * 3 * d, wk->row_pos[r], 1.0f);
        for (int s = 0; s < wk->n_seqs; s++) {
            const tr_seq *q = &wk->seqs[s];
            attention_forward(atty + (size_t)q->row * d, att + q->att, qkv + (size_t)q->row * 3 * d,
                              q->n, H, hd);
        }
        matmul_forward(res2, atty, w->wo + (size_t)l * d * d, w->bo + l * d, R, d, d);
        dropout_apply(t, wk, res2, (size_t)R * d, 1 + 2 * l);
        for (size_t i = 0; i < (size_t)R * d; i++) res2[i] += res[i];
        layernorm_forward(ln2, a->ln2_stat + l * Rm * 2, res2, w->ln2_w + l * d, w->ln2_b + l * d, R, d);
        matmul_forward(fch, ln2, w->w1 + (size_t)l * d * hid, w->b1 + (size_t)l * hid, R, d, hid);
        gelu_forward(fchg, fch, (size_t)R * hid);
        matmul_forward(next, fchg, w->w2 + (size_t)l * hid * d, w->b2 + l * d, R, hid, d);
        dropout_apply(t, wk, next, (size_t)R * d, 2 + 2 * l);
        for (size_t i = 0; i < (size_t)R * d; i++) next[i] += res2[i];
    }
    layernorm_forward(a->lnf, a->lnf_stat, a->res + c->n_layers * Rm * d, w->lnf_w, w->lnf_b, R, d);
}

/* Draws this step's negatives: with replacement, by popularity. */
static void tr_draw_negatives(trainer *t) {
    int K = t->p.negatives, n = t->c.n_items, d = t->c.dim;
    uint64_t key = tr_key(t->p.seed, TR_DRAW_NEGATIVES, t->step);
    for (int k = 0; k < K; k++) {
        double u = tr_uniform(util_mix64(key + (uint64_t)k));
        int lo = 0, hi = n - 1;
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (t->cum_q[mid] < u) lo = mid + 1;
            else hi = mid;
        }
        t->neg[k] = lo;
        memcpy(t->neg_emb + (size_t)k * d, t->w.item_emb + (size_t)lo * d, (size_t)d * sizeof(float));
    }
}

/* The loss of rows [r0, r0 + n) against the whole catalog: mean cross-entropy
 * over N rows in all. With grads, dlnf of the rows and the item table's
 * gradient. Returns the rows' summed loss. */
static double tr_loss_full(const trainer *t, tr_worker *wk, int r0, int n, double N, int grads) {
    int V = t->c.n_items, d = t->c.dim;
    const float *h = wk->a.lnf + (size_t)r0 * d;
    float *lg = wk->logits;
    matmul(lg, h, t->w.item_emb, n, V, d, d, d, V, 1, 0.0f);
    double loss = 0;
    for (int i = 0; i < n; i++) {
        float *row = lg + (size_t)i * V, max = -INFINITY, sum = 0;
        int tgt = wk->row_target[r0 + i];
        for (int j = 0; j < V; j++) max = row[j] > max ? row[j] : max;
        float pos = row[tgt];
        for (int j = 0; j < V; j++) sum += row[j] = exp_approx(row[j] - max);
        loss += log(sum) - (pos - max);
        float inv = (float)(1.0 / (sum * N));
        for (int j = 0; j < V; j++) row[j] *= inv;
        row[tgt] -= (float)(1.0 / N);
    }
    if (grads) {
        matmul(wk->dlnf + (size_t)r0 * d, lg, t->w.item_emb, n, d, V, V, d, d, 0, 0.0f);
        matmul_at(wk->g.item_emb, lg, h, V, d, n, V, d, d, 1.0f);
    }
    return loss;
}

/* The same with sampled softmax over the step's negatives, each logit less
 * log q of its item (the log-frequency correction), accidental hits masked. */
static double tr_loss_sampled(const trainer *t, tr_worker *wk, int r0, int n, double N,
                              int grads) {
    int K = t->p.negatives, d = t->c.dim, W = K + 1;
    const float *h = wk->a.lnf + (size_t)r0 * d;
    float *lg = wk->logits; /* (n, K + 1): column 0 the target */
    matmul(lg + 1, h, t->neg_emb, n, K, d, d, d, W, 1, 0.0f);
    double loss = 0;
    for (int i = 0; i < n; i++) {
        float *row = lg + (size_t)i * W, max = -INFINITY, sum = 0;
        int tgt = wk->row_target[r0 + i];
        const float *e = t->w.item_emb + (size_t)tgt * d;
        row[0] = tr_dot(h + (size_t)i * d, e, d) - t->log_q[tgt];
        for (int k = 0; k < K; k++)
            row[k + 1] = t->neg[k] == tgt ? -INFINITY : row[k + 1] - t->log_q[t->neg[k]];
        for (int j = 0; j < W; j++) max = row[j] > max ? row[j] : max;
        float pos = row[0];
        for (int j = 0; j < W; j++) sum += row[j] = row[j] == -INFINITY ? 0 : exp_approx(row[j] - max);
        loss += log(sum) - (pos - max);
        float inv = (float)(1.0 / (sum * N));
        for (int j = 0; j < W; j++) row[j] *= inv;
        row[0] -= (float)(1.0 / N);
        if (grads) {
            float *dh = wk->dlnf + (size_t)(r0 + i) * d;
            for (int k = 0; k < d; k++) dh[k] = row[0] * e[k];
            tr_axpy(wk->g.item_emb + (size_t)tgt * d, row[0], h + (size_t)i * d, d);
        }
    }
    if (grads) {
        matmul(wk->dlnf + (size_t)r0 * d, lg + 1, t->neg_emb, n, d, K, W, d, d, 0, 1.0f);
        matmul_at(wk->neg_grad, lg + 1, h, K, d, n, W, d, d, 1.0f);
    }
    return loss;
}

/* The summed loss of the batch's targets; with grads, dlnf and the item
 * table's gradient from the loss. */
static double tr_loss(const trainer *t, tr_worker *wk, double N, int grads) {
    double loss = 0;
    if (t->p.negatives && grads)
        memset(wk->neg_grad, 0, (size_t)t->p.negatives * t->c.dim * sizeof *wk->neg_grad);
    for (int r0 = 0; r0 < wk->rows; r0 += TR_CHUNK) {
        int n = wk->rows - r0 < TR_CHUNK ? wk->rows - r0 : TR_CHUNK;
        loss += t->p.negatives ? tr_loss_sampled(t, wk, r0, n, N, grads) : tr_loss_full(t, wk, r0, n, N, grads);
    }
    if (t->p.negatives && grads)
        for (int k = 0; k < t->p.negatives; k++)
            tr_axpy(wk->g.item_emb + (size_t)t->neg[k] * t->c.dim, 1.0f,
                    wk->neg_grad + (size_t)k * t->c.dim, t->c.dim);
    return loss;
}

/* Accumulates into the worker's gradient that of the loss whose dlnf the loss
 * head left. */
static void tr_backward(const trainer *t, tr_worker *wk) {
    const model_config *c = &t->c;
    const model_weights *w = &t->w;
    model_weights *g = &wk->g;
    int R = wk->rows, d = c->dim, hid = c->hidden, H = c->n_heads, hd = d / H;
    size_t Rm = (size_t)t->rmax;
    tr_acts *a = &wk->a;
    tr_grads *b = &wk->d;
    memset(b->dres, 0, (size_t)R * d * sizeof(float));
    layernorm_backward(b->dres, g->lnf_w, g->lnf_b, wk->dlnf, a->res + c->n_layers * Rm * d,
                       a->lnf_stat, w->lnf_w, R, d);
    for (int l = c->n_layers - 1; l >= 0; l--) {
        float *res = a->res + l * Rm * d, *ln1 = a->ln1 + l * Rm * d;
        float *qkv = a->qkv + l * Rm * 3 * d, *att = a->att + l * t->att_max;
        float *atty = a->atty + l * Rm * d, *res2 = a->res2 + l * Rm * d;
        float *ln2 = a->ln2 + l * Rm * d, *fch = a->fch + l * Rm * hid;
        float *fchg = a->fchg + l * Rm * hid;
        /* next = res2 + dropout(fchg @ w2 + b2): dres is also dres2's share */
        memcpy(b->dx, b->dres, (size_t)R * d * sizeof(float));
        dropout_apply(t, wk, b->dx, (size_t)R * d, 2 + 2 * l);
        matmul_backward(b->dhid, g->w2 + (size_t)l * hid * d, g->b2 + l * d, b->dx, fchg,
                        w->w2 + (size_t)l * hid * d, R, hid, d);
        gelu_backward(b->dhid, fch, (size_t)R * hid);
        matmul_backward(b->dln, g->w1 + (size_t)l * d * hid, g->b1 + (size_t)l * hid, b->dhid, ln2,
                        w->w1 + (size_t)l * d * hid, R, d, hid);
        layernorm_backward(b->dres, g->ln2_w + l * d, g->ln2_b + l * d, b->dln, res2,
                           a->ln2_stat + l * Rm * 2, w->ln2_w + l * d, R, d);
        /* res2 = res + dropout(atty @ wo + bo) */
        memcpy(b->dx, b->dres, (size_t)R * d * sizeof(float));
        dropout_apply(t, wk, b->dx, (size_t)R * d, 1 + 2 * l);
        matmul_backward(b->dln, g->wo + (size_t)l * d * d, g->bo + l * d, b->dx, atty,
                        w->wo + (size_t)l * d * d, R, d, d);
        for (int s = 0; s < wk->n_seqs; s++) {
            const tr_seq *q = &wk->seqs[s];
            attention_backward(b->dqkv + (size_t)q->row * 3 * d, b->dln + (size_t)q->row * d,
                               att + q->att, qkv + (size_t)q->row * 3 * d, q->n, H, hd);
        }
        for (int r = 0; r < R; r++) rope_rotate(t, b->dqkv + (size_t)r * 3 * d, wk->row_pos[r], -1.0f);
        matmul_backward(b->dln, g->wqkv + (size_t)l * d * 3 * d, g->bqkv + l * 3 * d, b->dqkv, ln1,
                        w->wqkv + (size_t)l * d * 3 * d, R, d, 3 * d);
        layernorm_backward(b->dres, g->ln1_w + l * d, g->ln1_b + l * d, b->dln, res,
                           a->ln1_stat + l * Rm * 2, w->ln1_w + l * d, R, d);
    }
    dropout_apply(t, wk, b->dres, (size_t)R * d, 0);
    for (int r = 0; r < R; r++) embed_backward(t, wk, wk->row_item[r], wk->row_type[r], b->dres + (size_t)r * d);
}

/* Fills the batch with the training sequences of users[0..n) (each cut to
 * the window); returns the number of target positions. */
/* The number of input events of user u's training sequence: the training
 * events less the last (which is only a target), cut to the window. */
static int tr_train_len(const trainer *t, int32_t u) {
    uint64_t end = tr_train_end(t, u); /* events [0, end) are for training */
    if (end < 2) return 0;
    return end - 1 < (uint64_t)t->c.window ? (int)(end - 1) : t->c.window;
}

/* Deals the training sequences of users[0..n) out to the workers in order,
 * each taking about its share of the rows; returns the rows in all. */
static int tr_batch_train(trainer *t, const int32_t *users, int n) {
    if (n > t->p.batch) n = t->p.batch; /* what the buffers are sized for */
    int total = 0;
    for (int i = 0; i < n; i++) total += tr_train_len(t, users[i]);
    int k = 0, base = 0;
    tr_batch_reset(&t->work[0], 1, 0);
    for (int i = 0; i < n; i++) {
        int len = tr_train_len(t, users[i]);
        if (!len) continue;
        /* on to the next worker once this one has its share */
        if (k + 1 < t->n_work && t->work[k].rows > 0 &&
            (int64_t)(base + t->work[k].rows) * t->n_work >= (int64_t)total * (k + 1)) {
            base += t->work[k].rows;
            tr_batch_reset(&t->work[++k], 1, base);
        }
        uint64_t end = tr_train_end(t, users[i]);
        tr_batch_add(t, &t->work[k], users[i], end - 1 - (uint64_t)len, len);
    }
    for (int j = k + 1; j < t->n_work; j++) tr_batch_reset(&t->work[j], 1, total);
    return total;
}

/* A worker's part of a step: forward, the loss (of N rows in all) and, with
 * grads, backward into its own gradient. */
static void *tr_worker_run(void *arg) {
    tr_worker *wk = arg;
    const trainer *t = wk->t;
    wk->loss = 0;
    if (wk->loss_grads) memset(wk->grads, 0, t->n_params * sizeof *wk->grads);
    if (!wk->rows) return NULL;
    tr_forward(t, wk);
    int total = 0;
    for (int i = 0; i < t->n_work; i++) total += t->work[i].rows;
    wk->loss = tr_loss(t, wk, total, wk->loss_grads);
    if (wk->loss_grads) tr_backward(t, wk);
    return NULL;
}

/* Runs the batch's workers, worker 0 on this thread, and adds the others'
 * gradients to worker 0's in worker order; returns the summed loss. */
static double tr_run_workers(trainer *t, int grads) {
    pthread_t th[TR_WORKERS_MAX];
    int started[TR_WORKERS_MAX] = {0};
    for (int i = 0; i < t->n_work; i++) t->work[i].loss_grads = grads;
    for (int i = 1; i < t->n_work; i++)
        started[i] = t->work[i].rows && pthread_create(&th[i], NULL, tr_worker_run, &t->work[i]) == 0;
    for (int i = 1; i < t->n_work; i++)
        if (t->work[i].rows && !started[i]) tr_worker_run(&t->work[i]); /* no thread: run it here */
    tr_worker_run(&t->work[0]);
    double loss = t->work[0].loss;
    for (int i = 1; i < t->n_work; i++) {
        if (started[i]) pthread_join(th[i], NULL);
        loss += t->work[i].loss;
        if (!grads || !t->work[i].rows) continue;
        float *g0 = t->work[0].grads;
        const float *gi = t->work[i].grads;
        for (size_t j = 0; j < t->n_params; j++) g0[j] += gi[j];
    }
    return loss;
}

double trainer_loss(trainer *t, const int32_t *users, int n, int dropout, uint64_t step,
                    float *grads) {
    int rows = tr_batch_train(t, users, n);
    if (!rows) return 0;
    t->dropout_on = dropout;
    t->step = step;
    if (t->p.negatives) tr_draw_negatives(t);
    double loss = tr_run_workers(t, grads != NULL);
    if (grads) memcpy(grads, t->work[0].grads, t->n_params * sizeof *grads);
    t->dropout_on = 0;
    return loss / rows;
}

/* AdamW on every weight after clipping the gradient's global norm. */
static void tr_adamw(trainer *t) {
    const float *grads = t->work[0].grads;
    double norm2 = 0;
    for (size_t i = 0; i < t->n_params; i++) norm2 += (double)grads[i] * grads[i];
    float norm = (float)sqrt(norm2);
    float clip = t->p.clip > 0 && norm > t->p.clip ? t->p.clip / norm : 1.0f;
    uint64_t step = t->step + 1;
    float b1 = t->p.beta1, b2 = t->p.beta2, lr = t->p.lr, eps = t->p.eps, wd = t->p.weight_decay;
    float c1 = 1.0f - powf(b1, (float)step), c2 = 1.0f - powf(b2, (float)step);
    for (size_t i = 0; i < t->n_params; i++) {
        float gr = grads[i] * clip;
        t->m[i] = b1 * t->m[i] + (1 - b1) * gr;
        t->v[i] = b2 * t->v[i] + (1 - b2) * gr * gr;
        float mh = t->m[i] / c1, vh = t->v[i] / c2;
        t->params[i] -= lr * (mh / (sqrtf(vh) + eps) + wd * t->decay[i] * t->params[i]);
    }
}

double trainer_epoch(trainer *t, int epoch, train_progress_fn progress, void *ctx) {
    const dataset *ds = t->ds;
    int n = 0;
    for (int32_t u = 0; u < ds->n_users; u++)
        if (tr_train_end(t, u) >= 2) t->order[n++] = u;
    /* Fisher-Yates from the epoch's stream of draws */
    uint64_t key = tr_key(t->p.seed, TR_DRAW_ORDER, (uint64_t)epoch);
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(util_mix64(key + (uint64_t)i) % (uint64_t)(i + 1));
        int32_t x = t->order[i];
        t->order[i] = t->order[j];
        t->order[j] = x;
    }
    int steps = (n + t->p.batch - 1) / t->p.batch;
    double loss = 0;
    uint64_t positions = 0;
    for (int s = 0; s < steps; s++) {
        int m = n - s * t->p.batch < t->p.batch ? n - s * t->p.batch : t->p.batch;
        int rows;
        loss += trainer_step(t, t->order + (size_t)s * t->p.batch, m, &rows) * rows;
        positions += (uint64_t)rows;
        if (progress) progress(ctx, s + 1, steps, loss / (double)positions, positions);
    }
    return positions ? loss / (double)positions : 0;
}

/* The multiply-adds of the batch's products, twice: the forward pass's, and
 * the backward pass's, which are twice as many (one product for the input's
 * gradient, one for the weights'). */
static double tr_batch_flops(const trainer *t) {
    const model_config *c = &t->c;
    double d = c->dim, hid = c->hidden, hd = d / c->n_heads;
    double cols = t->p.negatives ? t->p.negatives + 1 : c->n_items;
    double per_row = 2 * (d * 3 * d + d * d + 2 * d * hid) * c->n_layers + 2 * d * cols;
    double flops = 0;
    for (int i = 0; i < t->n_work; i++) {
        const tr_worker *wk = &t->work[i];
        for (int s = 0; s < wk->n_seqs; s++) {
            double n = wk->seqs[s].n;
            flops += 2 * 2 * (n * (n + 1) / 2) * hd * c->n_heads * c->n_layers;
        }
        flops += per_row * wk->rows;
    }
    return 3 * flops;
}

double trainer_step(trainer *t, const int32_t *users, int n, int *rows) {
    *rows = tr_batch_train(t, users, n);
    if (!*rows) return 0;
    t->dropout_on = 1;
    if (t->p.negatives) tr_draw_negatives(t);
    double loss = tr_run_workers(t, 1);
    tr_adamw(t);
    t->dropout_on = 0;
    t->step++;
    t->flops += tr_batch_flops(t);
    return loss / *rows;
}

double trainer_flops(const trainer *t) { return t->flops; }

void trainer_user_state(trainer *t, int32_t u, uint64_t lo, uint64_t hi, float *h) {
    tr_worker *wk = &t->work[0];
    tr_batch_reset(wk, 0, 0);
    tr_batch_add(t, wk, u, lo, (int)(hi - lo));
    t->dropout_on = 0;
    tr_forward(t, wk);
    memcpy(h, wk->a.lnf + (size_t)(wk->rows - 1) * t->c.dim, (size_t)t->c.dim * sizeof *h);
}

void trainer_evaluate(trainer *t, train_split split, train_metrics *out) {
    const dataset *ds = t->ds;
    int V = t->c.n_items, d = t->c.dim, B = t->p.batch;
    uint64_t back = split == TRAIN_SPLIT_TEST ? 1 : 2;
    memset(out, 0, sizeof *out);
    tr_worker *wk = &t->work[0];
    float *hs = wk->dlnf; /* (B, d): free outside a training step */
    int32_t users[B];
    t->dropout_on = 0;
    for (int32_t u0 = 0; u0 < ds->n_users;) {
        int n = 0;
        tr_batch_reset(wk, 0, 0);
        for (; u0 < ds->n_users && n < B; u0++) {
            uint64_t len = dataset_user_len(ds, u0);
            if (len < back + 1) continue;
            uint64_t cut = len - back, k = tr_window_positions(t->c.window, cut);
            tr_batch_add(t, wk, u0, cut - k, (int)k);
            users[n++] = u0;
        }
        if (!n) break;
        tr_forward(t, wk);
        for (int i = 0; i < n; i++) {
            const tr_seq *s = &wk->seqs[i];
            memcpy(hs + (size_t)i * d, wk->a.lnf + (size_t)(s->row + s->n - 1) * d, (size_t)d * sizeof *hs);
        }
        /* the one big product: all of OpenBLAS's threads, then back to one */
        model_set_threads(t->n_work);
        matmul(t->scores, hs, t->w.item_emb, n, V, d, d, d, V, 1, 0.0f);
        model_set_threads(1);
        for (int i = 0; i < n; i++) {
            const int32_t *ev = ds->ev_item + ds->user_off[users[i]];
            uint64_t cut = dataset_user_len(ds, users[i]) - back;
            float *sc = t->scores + (size_t)i * V;
            for (uint64_t e = 0; e < cut; e++) sc[ev[e]] = -INFINITY;
            float target = sc[ev[cut]];
            int64_t rank = 0;
            if (target == -INFINITY) rank = V;
            else
                for (int j = 0; j < V; j++) rank += sc[j] > target;
            train_metrics_add(out, rank);
        }
    }
    train_metrics_finish(out);
}

int trainer_write(const trainer *t, const char *path, char *errstr, size_t errlen) {
    const dataset *ds = t->ds;
    /* The reproducible-builds convention: with SOURCE_DATE_EPOCH set, the
     * same training gives the same file, byte for byte. */
    const char *epoch = getenv("SOURCE_DATE_EPOCH");
    uint64_t trained_s = epoch && *epoch ? strtoull(epoch, NULL, 10) : (uint64_t)time(NULL);
    model_tables tab = {
        .item_ids = (const char *const *)ds->item_ids,
        .attr_ids = (const char *const *)ds->attr_ids,
        .item_attr_off = ds->item_attr_off,
        .item_attr_rows = ds->item_attr_rows,
        .trained_s = trained_s,
    };
    return model_write(path, &t->c, t->params, &tab, errstr, errlen);
}

/* ---------------------------------------------------------------------------
 * `copystream train` */

typedef struct {
    int tty;
    int epoch, epochs, patience;
    int64_t start_us, epoch_start_us;
    double best_ndcg;
    int best_epoch;
    double best_s;        /* when the best epoch ended, from the start of training */
    double last_ndcg;
} train_ui;

/* The progress line: on a terminal a bar redrawn in place, otherwise a log
 * line every quarter epoch. */
static void train_progress(void *ctx, int step, int steps, double loss, uint64_t positions) {
    train_ui *ui = ctx;
    int64_t now = util_monotonic_us();
    double secs = (double)(now - ui->epoch_start_us) / 1e6;
    double rate = secs > 0 ? (double)positions / secs : 0;
    /* time left: this epoch's rest, then the epochs until early stopping
     * would end the run if validation did not improve again (each
     * improvement moves that end), at this pace */
    double per_epoch = step ? secs * steps / step : 0;
    int last = ui->best_epoch + ui->patience < ui->epochs ? ui->best_epoch + ui->patience : ui->epochs;
    double left = per_epoch * (steps - step) / (steps ? steps : 1) +
                  per_epoch * (last > ui->epoch ? last - ui->epoch : 0);
    if (ui->tty) {
        int width = 24, fill = steps ? step * width / steps : 0;
        char bar[32];
        for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
        bar[width] = 0;
        fprintf(stderr,
                "\r\033[Kepoch %d/%d [%s] step %d/%d  loss %.4f  %.0f pos/s  val NDCG@10 %.4f "
                "(best %.4f @%d)  left %.0fm%02.0fs",
                ui->epoch, ui->epochs, bar, step, steps, loss, rate, ui->last_ndcg, ui->best_ndcg,
                ui->best_epoch, floor(left / 60), fmod(left, 60));
    } else if (step == steps || (steps >= 4 && step % (steps / 4) == 0)) {
        fprintf(stderr, "train: epoch %d/%d step %d/%d loss %.4f %.0f pos/s\n", ui->epoch,
                ui->epochs, step, steps, loss, rate);
    }
}

static void train_usage(FILE *f) {
    train_params p;
    train_params_default(&p);
    fprintf(f,
            "usage: copystream train --sequences FILE [--attributes FILE] --out MODEL [options]\n"
            "       copystream train [-c CONFIG] --topic TOPIC --from TIME [--to TIME] --out MODEL\n"
            "                        [options]\n"
            "\n"
            "Learns the model the service serves (model.path) from interaction histories:\n"
            "a sequence file (one user per line, `user item item ...`, oldest first, with an\n"
            "optional item -> attribute ids JSON), or the clickstream events of a topic between\n"
            "two times (attributes from the catalog topic). Leave-one-out: each user's last event\n"
            "is the test target, the one before the validation target. The epoch with the best\n"
            "validation NDCG@10 is written (as soon as it is found, so an interrupted run\n"
            "keeps it), and its test metrics printed.\n"
            "\n"
            "  --event-type TYPE   the sequence file's events: view, click, add_to_cart,\n"
            "                      purchase (default) or favorite, as `copystream import` publishes\n"
            "  TIME                Unix milliseconds or UTC ISO 8601 (2026-03-01T12:00:00Z)\n"
            "\n"
            "Model (defaults):     --dim %d --layers %d --heads %d --hidden %d --window %d\n"
            "Optimization:         --epochs %d --batch %d --patience %d --lr %g --dropout %g\n"
            "                      --weight-decay %g --clip %g --negatives %d (0: full softmax)\n"
            "                      --seed %llu --threads %d\n",
            p.dim, p.n_layers, p.n_heads, p.hidden, p.window, p.epochs, p.batch, p.patience,
            (double)p.lr, (double)p.dropout, (double)p.weight_decay, (double)p.clip, p.negatives,
            (unsigned long long)p.seed, p.threads);
}

static void train_print_metrics(const char *what, const train_metrics *m) {
    printf("%s: users %lld  HR@5 %.4f  HR@10 %.4f  HR@20 %.4f  NDCG@5 %.4f  NDCG@10 %.4f  "
           "NDCG@20 %.4f\n",
           what, (long long)m->n, m->hr[0], m->hr[1], m->hr[2], m->ndcg[0], m->ndcg[1], m->ndcg[2]);
}

/* Parses a number option into *out within [lo, hi]; NULL or the problem. */
static const char *train_num(const char *s, double lo, double hi, double *out) {
    return commands_double(s, lo, hi, out) < 0 ? "is not a number in range" : NULL;
}

int train_main(int argc, char **argv) {
    enum { O_SEQ = 256, O_ATTR, O_TYPE, O_TOPIC, O_FROM, O_TO, O_OUT, O_NUM };
    static const char *const num_names[] = {"dim", "layers", "heads", "hidden", "window",
                                            "epochs", "batch", "patience", "negatives", "lr",
                                            "dropout", "weight-decay", "clip", "seed", "threads"};
    enum { N_NUM = sizeof num_names / sizeof num_names[0] };
    struct option opts[N_NUM + 10] = {
        {"config", required_argument, 0, 'c'},    {"sequences", required_argument, 0, O_SEQ},
        {"attributes", required_argument, 0, O_ATTR}, {"event-type", required_argument, 0, O_TYPE},
        {"topic", required_argument, 0, O_TOPIC}, {"from", required_argument, 0, O_FROM},
        {"to", required_argument, 0, O_TO},       {"out", required_argument, 0, O_OUT},
        {"help", no_argument, 0, 'h'},
    };
    for (int i = 0; i < N_NUM; i++) opts[9 + i] = (struct option){num_names[i], required_argument, 0, O_NUM + i};
    train_params p;
    train_params_default(&p);
    const char *config_path = commands_default_config(), *seq = NULL, *attrs = NULL;
    const char *topic = NULL, *from = NULL, *to = NULL, *out = NULL;
    event_type type = EV_PURCHASE;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        const char *bad = NULL;
        double v = 0;
        switch (o) {
        case 'c': config_path = optarg; break;
        case O_SEQ: seq = optarg; break;
        case O_ATTR: attrs = optarg; break;
        case O_TYPE: {
            int ty = commands_event_type(optarg);
            if (ty < 0) bad = "is not " COMMANDS_EVENT_TYPES;
            else type = (event_type)ty;
            break;
        }
        case O_TOPIC: topic = optarg; break;
        case O_FROM: from = optarg; break;
        case O_TO: to = optarg; break;
        case O_OUT: out = optarg; break;
        case 'h': train_usage(stdout); return 0;
        default:
            if (o < O_NUM || o >= O_NUM + N_NUM) {
                train_usage(stderr);
                return 2;
            }
            switch (o - O_NUM) {
            case 0: if (!(bad = train_num(optarg, 2, 4096, &v))) p.dim = (int)v; break;
            case 1: if (!(bad = train_num(optarg, 1, 64, &v))) p.n_layers = (int)v; break;
            case 2: if (!(bad = train_num(optarg, 1, 64, &v))) p.n_heads = (int)v; break;
            case 3: if (!(bad = train_num(optarg, 1, 65536, &v))) p.hidden = (int)v; break;
            case 4: if (!(bad = train_num(optarg, 2, 4096, &v))) p.window = (int)v; break;
            case 5: if (!(bad = train_num(optarg, 0, 100000, &v))) p.epochs = (int)v; break;
            case 6: if (!(bad = train_num(optarg, 1, 65536, &v))) p.batch = (int)v; break;
            case 7: if (!(bad = train_num(optarg, 1, 100000, &v))) p.patience = (int)v; break;
            case 8: if (!(bad = train_num(optarg, 0, 1 << 20, &v))) p.negatives = (int)v; break;
            case 9: if (!(bad = train_num(optarg, 1e-9, 10, &v))) p.lr = (float)v; break;
            case 10: if (!(bad = train_num(optarg, 0, 0.95, &v))) p.dropout = (float)v; break;
            case 11: if (!(bad = train_num(optarg, 0, 10, &v))) p.weight_decay = (float)v; break;
            case 12: if (!(bad = train_num(optarg, 0, 1e9, &v))) p.clip = (float)v; break;
            case 13: if (!(bad = train_num(optarg, 0, 9007199254740992.0, &v))) p.seed = (uint64_t)v; break;
            case 14: if (!(bad = train_num(optarg, 1, 256, &v))) p.threads = (int)v; break;
            }
        }
        if (bad) {
            fprintf(stderr, "copystream train: --%s %s %s\n",
                    o >= O_NUM ? num_names[o - O_NUM] : o == O_TYPE ? "event-type" : "?", optarg, bad);
            return 2;
        }
    }
    const char *why = NULL;
    if (optind < argc) why = "unexpected arguments";
    else if (!out) why = "--out is required";
    else if (!seq == !topic) why = "give either --sequences or --topic";
    else if (topic && !from) why = "--topic needs --from";
    else if (seq && (from || to)) why = "--from and --to go with --topic";
    if (why) {
        fprintf(stderr, "copystream train: %s\n", why);
        train_usage(stderr);
        return 2;
    }

    char err[1024];
    int rc = 1;
    dataset *ds = NULL;
    trainer *t = NULL;
    float *best = NULL;
    config *cfg = NULL;
    int64_t t0 = util_monotonic_us();
    if (seq) {
        ds = dataset_read_files(seq, attrs, type, err, sizeof err);
    } else {
        int64_t from_ms, to_ms = INT64_MAX;
        if (util_parse_time(from, &from_ms) < 0 || (to && util_parse_time(to, &to_ms) < 0)) {
            fprintf(stderr, "copystream train: --from/--to: not Unix milliseconds or UTC ISO 8601\n");
            return 2;
        }
        if (!(cfg = commands_load_config(config_path))) return 2;
        ds = dataset_read_topic(cfg, topic, from_ms, to_ms, err, sizeof err);
    }
    if (!ds) goto err;
    log_info("train", "%d users, %d items, %d attributes, %llu events (read in %.1f s)",
             ds->n_users, ds->n_items, ds->n_attrs, (unsigned long long)ds->n_events,
             (double)(util_monotonic_us() - t0) / 1e6);
    if (!(t = trainer_new(ds, &p, err, sizeof err))) goto err;
    if (!(best = malloc(trainer_n_params(t) * sizeof *best))) {
        util_err(err, sizeof err, "out of memory");
        goto err;
    }
    trainer_get_weights(t, best);
    train_ui ui = {.tty = isatty(2), .epochs = p.epochs, .patience = p.patience,
                   .start_us = util_monotonic_us()};
    train_metrics m;
    for (int e = 1; e <= p.epochs; e++) {
        ui.epoch = e;
        ui.epoch_start_us = util_monotonic_us();
        double loss = trainer_epoch(t, e, train_progress, &ui);
        trainer_evaluate(t, TRAIN_SPLIT_VALID, &m);
        ui.last_ndcg = m.ndcg[1];
        int better = m.ndcg[1] > ui.best_ndcg;
        if (better) {
            ui.best_ndcg = m.ndcg[1];
            ui.best_epoch = e;
            ui.best_s = (double)(util_monotonic_us() - ui.start_us) / 1e6;
            trainer_get_weights(t, best);
            /* Written at once, so that stopping a long run keeps its best model. */
            if (trainer_write(t, out, err, sizeof err) < 0) goto err;
        }
        if (ui.tty) fputc('\n', stderr);
        fflush(stdout);
        log_info("train", "epoch %d loss %.4f valid HR@10 %.4f NDCG@10 %.4f%s (%.1f s, %.0f s in all)",
                 e, loss, m.hr[1], m.ndcg[1], better ? " best" : "",
                 (double)(util_monotonic_us() - ui.epoch_start_us) / 1e6,
                 (double)(util_monotonic_us() - ui.start_us) / 1e6);
        if (e - ui.best_epoch >= p.patience) {
            log_info("train", "no better validation NDCG@10 for %d epochs: stopping", p.patience);
            break;
        }
    }
    trainer_set_weights(t, best);
    printf("best epoch %d reached at %.0f s; training took %.0f s\n", ui.best_epoch, ui.best_s,
           (double)(util_monotonic_us() - ui.start_us) / 1e6);
    trainer_evaluate(t, TRAIN_SPLIT_VALID, &m);
    train_print_metrics("valid (full ranking)", &m);
    trainer_evaluate(t, TRAIN_SPLIT_TEST, &m);
    train_print_metrics("test (full ranking)", &m);
    if (!ui.best_epoch && trainer_write(t, out, err, sizeof err) < 0) goto err;
    printf("wrote %s (epoch %d)\n", out, ui.best_epoch);
    rc = 0;
err:
    if (rc) fprintf(stderr, "copystream train: %s\n", err);
    free(best);
    trainer_free(t);
    dataset_free(ds);
    config_free(cfg);
    return rc;
}
