/* recommend.c -- the learned strategy; see recommend.h.
 *
 * Everything a batch asks of the model goes through two calls so that the
 * expensive parts run as matrix products over many users: recommend_advance()
 * steps, in rounds, every user that has a j-th new event (round j) in one
 * model_step(); recommend_pick() scores a chunk of users against every item
 * in one model_score(). The per-user parts (attention over a user's own
 * cache, the top-k) stay per user. */
#include "recommend.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache.h"
#include "log.h"
#include "model.h"
#include "util.h"

struct recommender {
    model *m;
    model_runstate *rs;
    kvcache *kc;
    int max_batch;
    size_t kv_budget, max_sequence;
    float *scores;            /* (max_batch, n_items) */
    float *h;                 /* (max_batch, dim): a step's or a chunk's user states */
    model_kv **kvs;           /* [max_batch] a step's states */
    model_token *step_tok;    /* [max_batch] a step's tokens */
    float **step_out;         /* [max_batch] where each step row's h goes */
    /* tokens being built, with the attribute rows of unknown items */
    model_token *tok;
    size_t n_tok, cap_tok;
    size_t *tok_attr_off;     /* [n_tok] offset into attr_rows, or SIZE_MAX */
    size_t cap_tok_attr_off;
    int32_t *attr_rows;
    size_t n_attr_rows, cap_attr_rows;
    /* catalog items the model never saw, as scoring rows */
    int extra_valid;
    uint64_t extra_gen;
    float *extra;             /* (n_extra, dim) */
    uint64_t *extra_hash;     /* [n_extra] */
    size_t n_extra, cap_extra, cap_extra_hash;
    float *xscores;           /* (max_batch, cap_extra) */
};

static int rec_grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *v = realloc(*p, c * elem);
    if (!v) return -1;
    *p = v;
    *cap = c;
    return 0;
}

/* Checks that a model fits this service and allocates what depends on its
 * shape. */
static int rec_attach(recommender *r, model *m, char *errstr, size_t errlen) {
    const model_config *c = model_get_config(m);
    if (c->n_types != EV__COUNT)
        return util_err(errstr, errlen, "the model knows %d event types, this build %d",
                        c->n_types, EV__COUNT);
    if ((size_t)c->window > r->max_sequence)
        return util_err(errstr, errlen,
                        "the model's window is %d events but state.sequence_length keeps %zu: "
                        "raise state.sequence_length to at least %d",
                        c->window, r->max_sequence, c->window);
    model_runstate *rs = model_runstate_new(m, r->max_batch);
    float *scores = malloc((size_t)r->max_batch * (size_t)c->n_items * sizeof *scores);
    float *h = malloc((size_t)r->max_batch * (size_t)c->dim * sizeof *h);
    if (!rs || !scores || !h) {
        model_runstate_free(rs);
        free(scores);
        free(h);
        return util_err(errstr, errlen, "out of memory for a model of %d items", c->n_items);
    }
    model_runstate_free(r->rs);
    free(r->scores);
    free(r->h);
    r->m = m;
    r->rs = rs;
    r->scores = scores;
    r->h = h;
    /* The unknown items' rows have the old model's width: start over. */
    free(r->extra);
    free(r->extra_hash);
    free(r->xscores);
    r->extra = NULL;
    r->extra_hash = NULL;
    r->xscores = NULL;
    r->n_extra = r->cap_extra = r->cap_extra_hash = 0;
    r->extra_valid = 0;
    return 0;
}

recommender *recommend_new(const char *path, int max_batch, size_t kv_budget_bytes,
                           size_t max_sequence, char *errstr, size_t errlen) {
    recommender *r = calloc(1, sizeof *r);
    model *m = NULL;
    if (!r) return NULL;
    r->max_batch = max_batch;
    r->kv_budget = kv_budget_bytes;
    r->max_sequence = max_sequence;
    r->kvs = calloc((size_t)max_batch, sizeof *r->kvs);
    r->step_tok = calloc((size_t)max_batch, sizeof *r->step_tok);
    r->step_out = calloc((size_t)max_batch, sizeof *r->step_out);
    r->kc = kvcache_new(kv_budget_bytes);
    if (!r->kvs || !r->step_tok || !r->step_out || !r->kc) {
        util_err(errstr, errlen, "out of memory");
        goto err;
    }
    if (!(m = model_open(path, errstr, errlen))) goto err;
    if (rec_attach(r, m, errstr, errlen) < 0) goto err;
    return r;
err:
    model_close(m);
    if (r->m == m) r->m = NULL;
    recommend_free(r);
    return NULL;
}

void recommend_free(recommender *r) {
    if (!r) return;
    kvcache_free(r->kc);
    model_runstate_free(r->rs);
    model_close(r->m);
    free(r->scores);
    free(r->h);
    free(r->kvs);
    free(r->step_tok);
    free(r->step_out);
    free(r->tok);
    free(r->tok_attr_off);
    free(r->attr_rows);
    free(r->extra);
    free(r->extra_hash);
    free(r->xscores);
    free(r);
}

int recommend_reload(recommender *r, const char *path, char *errstr, size_t errlen) {
    model *m = model_open(path, errstr, errlen);
    if (!m) return -1;
    model *old = r->m;
    if (rec_attach(r, m, errstr, errlen) < 0) {
        model_close(m);
        return -1;
    }
    /* States carry their model's checksum and would be refused anyway;
     * dropping them frees the memory at once. */
    kvcache_clear(r->kc);
    model_close(old);
    return 1;
}

const char *recommend_version(const recommender *r) { return model_version(r->m); }

int recommend_dim(const recommender *r) { return model_get_config(r->m)->dim; }

void recommend_drop_partition(recommender *r, int32_t partition) {
    kvcache_drop_partition(r->kc, partition);
}

void recommend_clear(recommender *r) { kvcache_clear(r->kc); }

void recommend_forget(recommender *r, const char *user_id) {
    model_kv_free(kvcache_take(r->kc, user_id));
}

/* ---- tokens -------------------------------------------------------------- */

static void rec_tokens_reset(recommender *r) {
    r->n_tok = 0;
    r->n_attr_rows = 0;
}

/* Appends the token of an event (item hash, type): the item's row, or for
 * an item the model never saw, the rows of its catalog attributes that the
 * model knows. Returns 0 or -1 (memory). */
static int rec_token_add(recommender *r, const catalog *cat, uint64_t item, uint8_t type) {
    if (rec_grow((void **)&r->tok, &r->cap_tok, r->n_tok + 1, sizeof *r->tok) < 0 ||
        rec_grow((void **)&r->tok_attr_off, &r->cap_tok_attr_off, r->n_tok + 1,
                 sizeof *r->tok_attr_off) < 0)
        return -1;
    model_token *t = &r->tok[r->n_tok];
    *t = (model_token){.item = model_item_row(r->m, item), .type = type};
    r->tok_attr_off[r->n_tok] = SIZE_MAX;
    if (t->item < 0) {
        const catalog_entry *e = catalog_get(cat, item);
        r->tok_attr_off[r->n_tok] = r->n_attr_rows;
        for (size_t i = 0; e && i < e->item.n_attrs; i++) {
            int32_t row = model_attr_row(r->m, e->attr_hashes[i]);
            if (row < 0) continue;
            if (rec_grow((void **)&r->attr_rows, &r->cap_attr_rows, r->n_attr_rows + 1,
                         sizeof *r->attr_rows) < 0)
                return -1;
            r->attr_rows[r->n_attr_rows++] = row;
            t->n_attrs++;
        }
    }
    r->n_tok++;
    return 0;
}

/* Points the unknown items' tokens at their attribute rows (only now: the
 * array may have moved while tokens were added). */
static void rec_tokens_fix(recommender *r) {
    for (size_t i = 0; i < r->n_tok; i++)
        r->tok[i].attrs = r->tok_attr_off[i] == SIZE_MAX ? NULL : r->attr_rows + r->tok_attr_off[i];
}

/* ---- advancing states ------------------------------------------------------ */

static int rec_step_flush(recommender *r, int nb, char *errstr, size_t errlen) {
    if (!nb) return 0;
    int dim = recommend_dim(r);
    if (model_step(r->m, r->rs, r->kvs, r->step_tok, nb, r->h, errstr, errlen) < 0) return -1;
    for (int b = 0; b < nb; b++) memcpy(r->step_out[b], r->h + (size_t)b * dim, dim * sizeof(float));
    return 0;
}

int recommend_advance(recommender *r, const catalog *cat, recommend_work *w, size_t n,
                      char *errstr, size_t errlen) {
    int dim = recommend_dim(r), rc = -1;
    uint64_t tag = model_checksum(r->m);
    model_kv **kv = calloc(n ? n : 1, sizeof *kv);
    if (!kv) return util_err(errstr, errlen, "out of memory");
    uint64_t max_k = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t k = w[i].st->seq_total - w[i].seq_before;
        if (k > max_k) max_k = k;
        if (k) kv[i] = kvcache_take(r->kc, w[i].user_id);
    }
    for (uint64_t j = 0; j < max_k; j++) {
        int nb = 0;
        for (size_t i = 0; i < n; i++) {
            const user_state *st = w[i].st;
            uint64_t k = st->seq_total - w[i].seq_before;
            if (k <= j) continue;
            float *h = w[i].h + j * (uint64_t)dim;
            long idx = (long)st->n_seq - (long)k + (long)j; /* event j in st->seq */
            if (idx < 0) {
                /* Pushed out of the bounded sequence by later events of the
                 * same batch: it cannot be computed, nor can states built on
                 * it; the next event's state is rebuilt. */
                for (int d = 0; d < dim; d++) h[d] = NAN;
                if (kv[i]) model_kv_reset(r->m, kv[i]);
                continue;
            }
            int target = model_window_positions(r->m, w[i].seq_before + j + 1);
            if (kv[i] && kv[i]->model_tag == tag && kv[i]->n == target - 1) {
                rec_tokens_reset(r);
                if (rec_token_add(r, cat, st->seq[idx].item, st->seq[idx].type) < 0) goto oom;
                rec_tokens_fix(r);
                /* The token's attribute rows must outlive the step: keep
                 * unknown items out of shared scratch by stepping them alone. */
                if (r->tok[0].item < 0) {
                    if (rec_step_flush(r, nb, errstr, errlen) < 0) goto out;
                    nb = 0;
                    if (model_step(r->m, r->rs, &kv[i], r->tok, 1, h, errstr, errlen) < 0)
                        goto out;
                    continue;
                }
                r->kvs[nb] = kv[i];
                r->step_tok[nb] = r->tok[0];
                r->step_out[nb] = h;
                if (++nb == r->max_batch) {
                    if (rec_step_flush(r, nb, errstr, errlen) < 0) goto out;
                    nb = 0;
                }
                continue;
            }
            /* A miss, a state of another model, or a rebuild point: prefill
             * the last `target` events, ending with this one. */
            if (kv[i] && model_kv_reset(r->m, kv[i]) < 0) {
                model_kv_free(kv[i]);
                kv[i] = NULL;
            }
            if (!kv[i] && !(kv[i] = model_kv_new(r->m))) goto oom;
            long first = idx - target + 1;
            if (first < 0) first = 0;
            rec_tokens_reset(r);
            for (long e = first; e <= idx; e++)
                if (rec_token_add(r, cat, st->seq[e].item, st->seq[e].type) < 0) goto oom;
            rec_tokens_fix(r);
            if (model_prefill(r->m, r->rs, kv[i], r->tok, (int)r->n_tok, h, errstr, errlen) < 0)
                goto out;
        }
        if (rec_step_flush(r, nb, errstr, errlen) < 0) goto out;
    }
    rc = 0;
    goto out;
oom:
    util_err(errstr, errlen, "out of memory");
out:
    for (size_t i = 0; i < n; i++) {
        if (!kv[i]) continue;
        /* After a failure a state may be half-advanced: drop it, the next
         * batch rebuilds it. kvcache_put() owns the state either way. */
        if (rc < 0)
            model_kv_free(kv[i]);
        else
            kvcache_put(r->kc, w[i].user_id, kv[i], w[i].partition);
    }
    free(kv);
    return rc;
}

/* ---- picking ------------------------------------------------------------------ */

typedef struct {
    recommender *r;
    const catalog *cat;
    const recommend_query *q;
} rec_skip_ctx;

static int rec_skip_hash(const rec_skip_ctx *x, uint64_t item) {
    if (item == x->q->params.exclude_item) return 1;
    const catalog_entry *e = catalog_get(x->cat, item);
    if (!e || !e->item.available) return 1;
    return userstate_excluded(x->q->prefs, item, x->q->params.at_s);
}

static int rec_skip_known(void *ctx, int32_t row) {
    rec_skip_ctx *x = ctx;
    return rec_skip_hash(x, model_item_hash(x->r->m, row));
}

static int rec_skip_extra(void *ctx, int32_t row) {
    rec_skip_ctx *x = ctx;
    return rec_skip_hash(x, x->r->extra_hash[row]);
}

typedef struct {
    recommender *r;
    int failed;
} rec_extra_ctx;

static void rec_extra_add(const catalog_entry *e, void *ud) {
    rec_extra_ctx *x = ud;
    recommender *r = x->r;
    if (x->failed || model_item_row(r->m, e->item_hash) >= 0) return;
    int32_t rows[64];
    int n = 0;
    for (size_t i = 0; i < e->item.n_attrs && n < 64; i++) {
        int32_t row = model_attr_row(r->m, e->attr_hashes[i]);
        if (row >= 0) rows[n++] = row;
    }
    if (!n) return; /* nothing the model knows about it: it cannot be scored */
    size_t dim = (size_t)recommend_dim(r);
    if (rec_grow((void **)&r->extra_hash, &r->cap_extra_hash, r->n_extra + 1,
                 sizeof *r->extra_hash) < 0 ||
        rec_grow((void **)&r->extra, &r->cap_extra, r->n_extra + 1, dim * sizeof *r->extra) < 0) {
        x->failed = 1;
        return;
    }
    model_embed_unknown(r->m, rows, n, r->extra + r->n_extra * dim);
    r->extra_hash[r->n_extra++] = e->item_hash;
}

/* Recomputes the scoring rows of catalog items the model never saw when the
 * catalog (or the model) changed since they were made. */
static int rec_extra_refresh(recommender *r, const catalog *cat) {
    if (r->extra_valid && r->extra_gen == catalog_generation(cat)) return 0;
    r->n_extra = 0;
    rec_extra_ctx x = {r, 0};
    catalog_each(cat, rec_extra_add, &x);
    if (x.failed) return -1;
    free(r->xscores);
    r->xscores = r->n_extra ? malloc((size_t)r->max_batch * r->n_extra * sizeof *r->xscores) : NULL;
    if (r->n_extra && !r->xscores) return -1;
    r->extra_valid = 1;
    r->extra_gen = catalog_generation(cat);
    return 0;
}

/* Merges two best-first lists into out->picks: by score, then by item hash
 * (the two lists number their rows differently). */
static void rec_merge(recommender *r, const catalog *cat, const int32_t *rows, const float *sc,
                      int nk, const int32_t *xrows, const float *xsc, int nx, size_t k,
                      strategy_result *out) {
    int a = 0, b = 0;
    out->n_picks = 0;
    while (out->n_picks < k && (a < nk || b < nx)) {
        uint64_t ha = a < nk ? model_item_hash(r->m, rows[a]) : 0;
        uint64_t hb = b < nx ? r->extra_hash[xrows[b]] : 0;
        int take_a = b >= nx || (a < nk && (sc[a] > xsc[b] || (sc[a] == xsc[b] && ha < hb)));
        uint64_t hash = take_a ? ha : hb;
        double score = take_a ? sc[a++] : xsc[b++];
        out->picks[out->n_picks++] = (strategy_pick){catalog_get(cat, hash), NULL, score};
    }
}

int recommend_pick(recommender *r, const catalog *cat, recommend_query *q, size_t n,
                   char *errstr, size_t errlen) {
    if (rec_extra_refresh(r, cat) < 0) return util_err(errstr, errlen, "out of memory");
    const model_config *c = model_get_config(r->m);
    size_t dim = (size_t)c->dim, n_items = (size_t)c->n_items;
    int32_t rows[STRATEGY_MAX_PICKS], xrows[STRATEGY_MAX_PICKS];
    float sc[STRATEGY_MAX_PICKS], xsc[STRATEGY_MAX_PICKS];
    for (size_t from = 0; from < n; from += (size_t)r->max_batch) {
        size_t B = n - from < (size_t)r->max_batch ? n - from : (size_t)r->max_batch;
        for (size_t b = 0; b < B; b++) memcpy(r->h + b * dim, q[from + b].h, dim * sizeof(float));
        model_score(r->m, r->h, (int)B, r->scores);
        if (r->n_extra)
            model_score_rows(r->m, r->h, (int)B, r->extra, (int)r->n_extra, r->xscores);
        for (size_t b = 0; b < B; b++) {
            recommend_query *qq = &q[from + b];
            size_t k = qq->params.k < STRATEGY_MAX_PICKS ? qq->params.k : STRATEGY_MAX_PICKS;
            rec_skip_ctx x = {r, cat, qq};
            int nk = model_topk(r->scores + b * n_items, (int)n_items, (int)k, rec_skip_known, &x,
                                rows, sc);
            int nx = r->n_extra ? model_topk(r->xscores + b * r->n_extra, (int)r->n_extra, (int)k,
                                             rec_skip_extra, &x, xrows, xsc)
                                : 0;
            rec_merge(r, cat, rows, sc, nk, xrows, xsc, nx, k, qq->out);
            if (strategy_explain(qq->prefs, &qq->params, qq->out) < 0)
                return util_err(errstr, errlen, "bad strategy parameters");
        }
    }
    return 0;
}
