/* model.h -- the sequential recommender: a causal Transformer over a user's
 * events (the SASRec family), run incrementally with a per-user KV cache.
 *
 * Each event is a token (item, event type). Its input vector is the item's
 * embedding plus the mean of its attributes' embeddings plus the type's
 * embedding; L pre-LayerNorm blocks of H-head causal self-attention (rotary
 * positions) and a GELU feed-forward follow, and a final LayerNorm gives the
 * user state h. An item's score for the user is h . item_emb[item].
 *
 * A model is a read-only mapping of a model file (docs/MODEL.md has the
 * layout); any number of run states and KV states may use it. A KV state
 * (model_kv) holds one user's keys and values, in 8 bits, for up to
 * `window` positions, so that a new event costs one position instead of the
 * whole history.
 * Nothing here is thread-safe: a run state and the KV states it advances
 * belong to one thread; the model itself is immutable and may be shared.
 *
 * Every product with weight matrices goes through matmul() (OpenBLAS's sgemm
 * for many rows), which has a plain C twin, matmul_naive(), for the tests; a
 * step's attention over a user's cached keys and values has its own kernel.
 * Matrices are row-major; a weight w of shape (in, out) maps a row x (in) to
 * x @ w (out). */
#ifndef COPYSTREAM_MODEL_H
#define COPYSTREAM_MODEL_H

#include <stddef.h>
#include <stdint.h>

#define MODEL_FORMAT_VERSION 1
/* What the forward pass is made of, shared with the trainer (train.c), which
 * must compute the very same function. */
#define MODEL_ROPE_THETA 10000.0
#define MODEL_LN_EPS 1e-5f

typedef struct {
    int dim;        /* d, the width of every position's vector */
    int n_layers;   /* L */
    int n_heads;    /* H; head_dim = dim / n_heads, which must be even (rotary pairs) */
    int window;     /* W, the most positions a KV state holds; at least 2 */
    int hidden;     /* feed-forward width, usually 4 * dim */
    int n_items;    /* rows of item_emb: items seen in training */
    int n_attrs;    /* rows of attr_emb: attributes seen in training (may be 0) */
    int n_types;    /* rows of type_emb: event types, EV__COUNT in records.h order */
} model_config;

/* The tensors, in the order of the model file and of model_write()'s input. */
typedef struct {
    float *item_emb;  /* (n_items, dim) also the scoring rows */
    float *attr_emb;  /* (n_attrs, dim) */
    float *type_emb;  /* (n_types, dim) */
    float *ln1_w;     /* (L, dim) */
    float *ln1_b;     /* (L, dim) */
    float *wqkv;      /* (L, dim, 3*dim) columns: queries, keys, values; heads side by side */
    float *bqkv;      /* (L, 3*dim) */
    float *wo;        /* (L, dim, dim) attention output projection */
    float *bo;        /* (L, dim) */
    float *ln2_w;     /* (L, dim) */
    float *ln2_b;     /* (L, dim) */
    float *w1;        /* (L, dim, hidden) */
    float *b1;        /* (L, hidden) */
    float *w2;        /* (L, hidden, dim) */
    float *b2;        /* (L, dim) */
    float *lnf_w;     /* (dim) */
    float *lnf_b;     /* (dim) */
} model_weights;

/* Scratch activations for one thread, one allocation (act_mem). rows is
 * max(max_batch, window): a step uses one row per user, a prefill one row per
 * position. */
typedef struct {
    int rows;
    int max_batch;
    float *x;         /* (rows, dim) residual stream */
    float *xb;        /* (rows, dim) LayerNorm output */
    float *xb2;       /* (rows, dim) attention or feed-forward output, before the residual */
    float *qkv;       /* (rows, 3*dim) queries, keys, values */
    float *atty;      /* (rows, dim) attention output, heads side by side */
    float *hb;        /* (rows, hidden) feed-forward hidden layer */
    float *att;       /* (max(window^2, heads * round_up(window + 1, 16))) attention weights */
    float *kvf;       /* (2, window, dim) a state's keys, then values, widened to float
                       * for a prefill onto it */
    float *kvs;       /* (rows, 2 * heads) the scales of each row's key and value heads */
    int8_t *kvq;      /* (rows, 2 * dim) each row's key and value as a state stores them */
    float *act_mem;   /* the allocation the pointers above share */
} model_runstate;

/* Positions of a KV state's key blocks (below) and its unit of capacity. */
#define MODEL_KV_BLOCK 16

/* One user's keys and values, stored as 8-bit integers with a float scale
 * per position and head (model_kv_quantize()): the header, and the arrays in
 * an allocation of their own that grows with the positions held --
 * MODEL_KV_BLOCK, then doubling, up to the window -- so that a user with a
 * short history costs a small state (model_kv_bytes_at()). Every pass
 * quantizes keys and values so before attending to them, whether or not it
 * keeps them (docs/MODEL.md), so a state holds exactly the keys and values a
 * full recompute uses. Positions are counted from the state's last rebuild
 * (see model_window_positions()). Read positions with model_kv_position();
 * the layout is the engine's. */
typedef struct {
    uint64_t model_tag;   /* the model's checksum: a state is only valid with its model */
    size_t bytes;         /* header and arrays as allocated now: what a cache charges */
    int window;           /* W, the most positions it may hold */
    int n;                /* positions held, 0..window */
    int cap;              /* positions the arrays have room for: 0, or a multiple of
                           * MODEL_KV_BLOCK (the last one may pass W) */
    int n_layers, dim, n_heads; /* the shape of the model it was made for */
    float *scale;         /* (2, L, H, cap) the keys' scales, then the values': a key or
                           * value is its head's scale times its integers */
    int8_t *key;          /* (L, H, cap / BLOCK, head_dim, BLOCK) keys after rotation, in
                           * blocks of BLOCK positions, each a head's rows of BLOCK */
    int8_t *value;        /* (L, cap, dim) */
} model_kv;

/* One event as the model sees it. An item the model never saw has item = -1
 * and brings its attribute rows (model_attr_row() of the catalog item's
 * attributes; those the model never saw are left out). */
typedef struct {
    int32_t item;            /* item row, or -1 */
    int32_t type;            /* event type, < n_types */
    const int32_t *attrs;    /* [n_attrs] attribute rows; read only when item == -1 */
    int n_attrs;
} model_token;

typedef struct model model;

/* Maps the model file at path read-only and checks it. Returns the model, or
 * NULL with the reason in errstr: not a model (bad magic), another format
 * version, truncated, checksum mismatch, or malformed tables, each with what
 * to do about it. Unless model_set_threads() was called before, sets
 * OpenBLAS to one thread. model_close(NULL) is a no-op. */
model *model_open(const char *path, char *errstr, size_t errlen);
void model_close(model *m);

/* OpenBLAS threads for the whole process. The service runs one thread per
 * instance and its matrices are small, so one thread (the default model_open
 * sets) is fastest; more only help a process with idle cores. */
void model_set_threads(int n);

const model_config *model_get_config(const model *m);
const model_weights *model_get_weights(const model *m);
/* "<checksum as 16 hex digits>" plus "-<UTC training time>" when the file
 * has one, e.g. "9f86d081884c7d65-20260301T120000Z": what copies are stamped with. */
const char *model_version(const model *m);
uint64_t model_checksum(const model *m);

/* Rows of the embedding tables, looked up by util_hash() of the id, the form
 * user state and the catalog keep ids in. -1 when the model never saw it. */
int32_t model_item_row(const model *m, uint64_t item_hash);
int32_t model_attr_row(const model *m, uint64_t attr_hash);
/* The id string and its util_hash() of an item row (0 <= row < n_items). */
const char *model_item_id(const model *m, int32_t row);
uint64_t model_item_hash(const model *m, int32_t row);
/* The attribute rows of a known item, as the model file lists them. */
const int32_t *model_item_attrs(const model *m, int32_t row, int *n);

/* Writes the embedding of an item the model never saw: the mean of attr_emb
 * over attr_rows (zeros when n is 0). It is that item's input vector and its
 * scoring row (model_score_rows()). Returns 0, or -1 when a row is out of range. */
int model_embed_unknown(const model *m, const int32_t *attr_rows, int n, float *out /* (dim) */);

/* Run states. max_batch bounds model_step()'s B. A run state fits the model
 * it was made for (its dims and window): make a new one with a new model. */
model_runstate *model_runstate_new(const model *m, int max_batch);
void model_runstate_free(model_runstate *rs);

/* KV states. A new state holds no positions and no arrays (model_kv_bytes_at(c, 0)
 * bytes); it grows as positions are added. */
model_kv *model_kv_new(const model *m);
void model_kv_free(model_kv *kv);
/* Empties kv for use with m: back to no positions, keeping its arrays.
 * Returns 0, or -1 when kv was made for a model of another size (make a new one). */
int model_kv_reset(const model *m, model_kv *kv);
/* Bytes of a state that holds the whole window: a 64-byte header plus
 * 2 * L * round_up(W, MODEL_KV_BLOCK) * (dim + 4 * n_heads). */
size_t model_kv_bytes(const model_config *c);
/* Bytes of a state that has held up to `positions` positions since it was made
 * (0..W): its capacity is the first of BLOCK, 2 BLOCK, 4 BLOCK, ... that holds
 * them, at most round_up(W, BLOCK). What kv->bytes is for such a state. */
size_t model_kv_bytes_at(const model_config *c, int positions);
/* The key (after rotation) and the value of layer l at position pos < kv->n,
 * widened to float. Returns 0, or -1 when l or pos is out of range. */
int model_kv_position(const model_kv *kv, int l, int pos, float *key /* (dim) */,
                      float *value /* (dim) */);

/* How KV states store keys and values, one head's n numbers at a time:
 * q (n) = x times 1 / s rounded to the nearest integer (ties to even), within
 * -127..127, for the scale s = max |x| / 127 rounded up to 17 significant
 * bits (0, and q zeros, when s would be under FLT_MIN; NaN and magnitudes
 * beyond 2^64 are taken as 2^64). Returns s. Every q times s is exactly a
 * float, and quantizing those floats again gives the same q and s: what lets
 * a state store, without further loss, keys and values a pass has already
 * quantized and attended to. */
float model_kv_quantize(const float *x, int n, int8_t *q);

/* A step's attention over 8-bit states has kernels for AVX-512, for AVX2
 * and in portable C; the widest the CPU runs is used. With on nonzero, the
 * portable ones are used instead, as on a CPU without AVX2: for the tests.
 * Process-wide, not thread-safe; call it between passes. */
void model_use_portable_kernels(int on);

/* The window policy. A state holds at most W positions; when an event would
 * be the (W+1)-th, the state is rebuilt by a prefill over the last W/2 events
 * (that one included), and steps go on from there. So after a user's
 * n_events-th event (counting every event ever given to the model), a state
 * covers exactly the last model_window_positions(n_events) events:
 * n_events up to W, then W/2 + (n_events - W - 1) mod (W - W/2 + 1).
 *
 * This makes the state a function of the events alone, wherever it is
 * computed: a caller with k new events for a user and a state holding
 * kv->n positions steps (or prefills onto the state) when
 * kv->n + k == model_window_positions(n_events after them), and otherwise
 * (a cache miss, a rebuild point) resets the state and prefills the last
 * model_window_positions(n_events) events. Either way the result equals
 * model_forward_full() over those events. */
int model_window_positions(const model *m, uint64_t n_events);

/* Appends n positions to kv in one pass batched over positions (sgemm), from
 * scratch when kv holds none; this is how a state is built on a cache miss.
 * kv's arrays grow as needed. h_out, when not NULL, receives the user state
 * after the last token. Returns 0, or -1 with errstr (kv->n + n > W, a bad
 * token, a state of another model, out of memory); kv then holds the same
 * positions (its arrays may have grown). */
int model_prefill(const model *m, model_runstate *rs, model_kv *kv, const model_token *tokens,
                  int n, float *h_out /* (dim) or NULL */, char *errstr, size_t errlen);

/* Advances B users by one event each: kvs[b] (not NULL) gets tokens[b] as its next
 * position and h_out row b the new user state. Projections and feed-forward
 * run as sgemm over the B users; attention runs per user over its own
 * state, whose arrays grow as needed. A state appears at most once per call
 * (a user's second new event goes in the next call). Returns 0, or -1 with
 * errstr (B > rs->max_batch, a full state, a bad token, a state of another
 * model, out of memory); the states then hold the same positions (some
 * arrays may have grown). */
int model_step(const model *m, model_runstate *rs, model_kv *const *kvs,
               const model_token *tokens, int B, float *h_out /* (B, dim) */, char *errstr,
               size_t errlen);

/* The user state after tokens[0..n), recomputed from nothing without a KV
 * state (positions 0..n-1, n <= W), its keys and values quantized to 8 bits
 * as a state's are. The reference the cached paths are tested against, and
 * the cost they save. Returns 0 or -1 with errstr. */
int model_forward_full(const model *m, model_runstate *rs, const model_token *tokens, int n,
                       float *h_out /* (dim) */, char *errstr, size_t errlen);

/* scores (B, n_items) = h (B, dim) @ item_emb^T: every known item for B users in one sgemm. */
void model_score(const model *m, const float *h, int B, float *scores);
/* scores (B, n) = h (B, dim) @ rows^T, for rows from model_embed_unknown(). */
void model_score_rows(const model *m, const float *h, int B, const float *rows /* (n, dim) */,
                      int n, float *scores);

/* Returns nonzero when row must not be recommended (bought by the user, out
 * of stock, suppressed...). Called only for rows that would enter the top k. */
typedef int (*model_skip_fn)(void *ctx, int32_t row);

/* The k best rows of scores[0..n) that skip (when not NULL) does not exclude,
 * best first, into rows_out and scores_out (which may be NULL); equal scores
 * rank the lower row first, and NaN scores never rank. Returns how many were
 * found (fewer than k when fewer rows qualify). */
int model_topk(const float *scores, int n, int k, model_skip_fn skip, void *ctx,
               int32_t *rows_out, float *scores_out);

/* The matrix product every layer uses. out (m, n) = a (m, k) @ b, where b is
 * (k, n), or (n, k) when b_t, making the product a @ b^T. lda, ldb and ldo
 * are row strides, so an operand may be a column block of a wider matrix
 * (one head of the queries, say). beta 0 overwrites out, 1 adds to it (no
 * other value). out overlaps neither a nor b. */
void matmul(float *out, const float *a, const float *b, int m, int n, int k, int lda, int ldb,
            int ldo, int b_t, float beta);
/* The same in plain loops, for the tests. */
void matmul_naive(float *out, const float *a, const float *b, int m, int n, int k, int lda,
                  int ldb, int ldo, int b_t, float beta);

/* The trainer's weight gradients: out (m, n) = a^T @ b for a (k, m) and b
 * (k, n), with lda, ldb, ldo and beta as in matmul(). */
void matmul_at(float *out, const float *a, const float *b, int m, int n, int k, int lda, int ldb,
               int ldo, float beta);
void matmul_at_naive(float *out, const float *a, const float *b, int m, int n, int k, int lda,
                     int ldb, int ldo, float beta);

/* Writing models: the trainer's output and the tests' input. */

/* Points w's tensors into flat, in file order without padding; returns the
 * number of floats they take (what model_write() reads from weights). With
 * w or flat NULL it only counts. */
size_t model_weights_point(model_weights *w, const model_config *c, float *flat);

typedef struct {
    const char *const *item_ids;   /* [n_items] catalog item ids, distinct */
    const char *const *attr_ids;   /* [n_attrs] attribute ids, distinct */
    const uint32_t *item_attr_off; /* [n_items + 1] item i's attributes are */
    const uint32_t *item_attr_rows;/* item_attr_rows[off[i] .. off[i + 1]) */
    uint64_t trained_s;            /* training time, Unix seconds; 0 when unknown */
} model_tables;

/* Writes a model file (atomically: a temporary file renamed over path).
 * weights holds model_weights_point()'s count of floats. Returns 0, or -1
 * with errstr (an invalid config or table, an I/O error). */
int model_write(const char *path, const model_config *c, const float *weights,
                const model_tables *t, char *errstr, size_t errlen);

/* Fills weights with values drawn from seed: embeddings ~ U(-1, 1), weights
 * ~ U(+-1/sqrt(fan_in)), LayerNorm gains near 1 and biases near 0. The same
 * seed gives the same floats on every machine. */
void model_fill_random(const model_config *c, uint64_t seed, float *weights);

/* Writes a model of random weights (model_fill_random(seed)) with item ids
 * "item<i>", attribute ids "attr<j>" and 0 to 3 attributes per item, all
 * deterministic from seed. For tests and benchmarks. Returns 0 or -1. */
int model_write_random(const char *path, const model_config *c, uint64_t seed, char *errstr,
                       size_t errlen);

#endif
