/* train.h -- learning the model (model.h) from interaction histories, in C
 * on OpenBLAS: the forward and backward passes of every layer, the loss
 * (softmax cross-entropy over the whole catalog, or sampled softmax with a
 * log-frequency correction), AdamW, dropout, clipping, leave-one-out
 * validation and early stopping. `copystream train` (train_main) drives it.
 *
 * The split is leave-one-out: a user's last event is the test target, the
 * one before the validation target, the rest are for training, where every
 * position predicts the next event's item. Sequences are packed (no padding)
 * and cut to the model's window.
 *
 * All randomness (initial weights, user order, dropout, negatives) comes from
 * params.seed through counter-based draws, so the same data, parameters and
 * seed give the same model, bit for bit, for a given build and OpenBLAS
 * thread count. */
#ifndef COPYSTREAM_TRAIN_H
#define COPYSTREAM_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "dataset.h"
#include "model.h"

typedef struct {
    /* the model */
    int dim, n_layers, n_heads, hidden, window;
    /* the optimization */
    int epochs;          /* at most */
    int batch;           /* users per step */
    int patience;        /* epochs without a better validation NDCG@10 before stopping */
    int negatives;       /* 0: full softmax; otherwise sampled softmax with this many */
    float lr, beta1, beta2, eps, weight_decay, dropout, clip;
    uint64_t seed;
    int threads;         /* OpenBLAS threads */
} train_params;

/* The recommended settings: what `copystream train` uses unless told otherwise. */
void train_params_default(train_params *p);

/* Hit rate and NDCG at 5, 10 and 20 over n users. */
typedef struct {
    double hr[3], ndcg[3];
    int64_t n;
} train_metrics;
extern const int train_metrics_k[3];

/* Adds one user whose target ranked `rank` (0 = first) to m; finish with
 * train_metrics_finish(), which turns sums into means. */
void train_metrics_add(train_metrics *m, int64_t rank);
void train_metrics_finish(train_metrics *m);

typedef enum { TRAIN_SPLIT_VALID, TRAIN_SPLIT_TEST } train_split;

typedef struct trainer trainer;

/* A trainer for ds (which must outlive it) with freshly initialized weights.
 * Returns NULL with errstr for parameters that make no model, or when
 * memory runs out. trainer_free(NULL) is a no-op. */
trainer *trainer_new(const dataset *ds, const train_params *p, char *errstr, size_t errlen);
void trainer_free(trainer *t);

/* Called after each step of an epoch, for progress displays. */
typedef void (*train_progress_fn)(void *ctx, int step, int steps, double loss, uint64_t positions);

/* One pass over the training users in an order drawn from the seed and the
 * epoch number, one AdamW step per batch. Returns the mean loss per
 * position. */
double trainer_epoch(trainer *t, int epoch, train_progress_fn progress, void *ctx);

/* One AdamW step on the training sequences of users[0..n) (n at most
 * params.batch; those past it are left out); *rows gets the
 * number of positions they hold. Returns the mean loss per position. */
double trainer_step(trainer *t, const int32_t *users, int n, int *rows);

/* The floating-point operations of the products of every step so far
 * (projections, feed-forward, attention and the loss head, forward and
 * backward): what training throughput is measured in. */
double trainer_flops(const trainer *t);

/* Full-ranking metrics of the split's targets (every item the user had
 * before the target is excluded), computed by the trainer's own forward
 * pass without dropout. */
void trainer_evaluate(trainer *t, train_split split, train_metrics *out);

/* Writes the current weights as a model file with the dataset's item and
 * attribute tables, stamped with the time of training (SOURCE_DATE_EPOCH
 * when set, so that a run can be reproduced byte for byte). Returns 0 or -1
 * with errstr. */
int trainer_write(const trainer *t, const char *path, char *errstr, size_t errlen);

/* Copies the weights into, or from, a flat buffer in model_weights_point()
 * order (model_weights_point(NULL, config, NULL) floats). Keeping the best
 * epoch's weights is a copy out and, at the end, a copy in. */
size_t trainer_n_params(const trainer *t);
void trainer_get_weights(const trainer *t, float *out);
void trainer_set_weights(trainer *t, const float *in);
const model_config *trainer_config(const trainer *t);

/* For the tests: the loss of the training examples of users[0..n) (n at
 * most params.batch) and, with
 * grads, its gradient with respect to every weight (model_weights_point()
 * order). Dropout applies when dropout is nonzero, drawn from the seed and
 * `step`; negatives are drawn likewise. */
double trainer_loss(trainer *t, const int32_t *users, int n, int dropout, uint64_t step,
                    float *grads);

/* For the tests: the user state (final LayerNorm output) after the events
 * [lo, hi) of user u, hi - lo <= window, by the trainer's forward pass. */
void trainer_user_state(trainer *t, int32_t u, uint64_t lo, uint64_t hi, float *h /* (dim) */);

/* `copystream train` */
int train_main(int argc, char **argv);

#endif
