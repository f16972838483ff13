/* test_train.c -- the trainer: its gradients against finite differences, that
 * it can learn, that it is deterministic, that the model it writes computes
 * in the service's engine what it computed while training; and the dataset
 * it learns from. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

#include "dataset.h"
#include "model.h"
#include "train.h"
#include "util.h"

/* n_users users over n_items items: user u's events are items (u + 2i) mod
 * n_items for i < len(u), without repeats, all purchases but every third a
 * view; item i has attributes "a<i % 3>" and, for even i, "even". */
static dataset *toy_dataset(int n_users, int n_items, int base_len) {
    dataset_builder *b = dataset_builder_new();
    char user[32], item[32];
    for (int u = 0; u < n_users; u++) {
        snprintf(user, sizeof user, "u%d", u);
        int len = base_len + u % 3;
        for (int i = 0; i < len; i++) {
            snprintf(item, sizeof item, "i%d", (u + 2 * i) % n_items);
            assert_int_equal(dataset_builder_event(b, user, item, i % 3 == 2 ? EV_VIEW : EV_PURCHASE), 0);
        }
    }
    for (int i = 0; i < n_items; i++) {
        char a[8];
        snprintf(item, sizeof item, "i%d", i);
        snprintf(a, sizeof a, "a%d", i % 3);
        const char *attrs[] = {a, "even"};
        assert_int_equal(dataset_builder_attrs(b, item, attrs, i % 2 ? 1 : 2), 0);
    }
    char err[256];
    dataset *d = dataset_builder_finish(b, err, sizeof err);
    if (!d) fail_msg("%s", err);
    return d;
}

static train_params tiny_params(void) {
    train_params p;
    train_params_default(&p);
    p.dim = 8, p.n_heads = 2, p.n_layers = 2, p.hidden = 12, p.window = 6;
    p.batch = 8, p.threads = 1, p.dropout = 0, p.seed = 7;
    return p;
}

static trainer *new_trainer(const dataset *d, const train_params *p) {
    char err[256];
    trainer *t = trainer_new(d, p, err, sizeof err);
    if (!t) fail_msg("%s", err);
    return t;
}

static const char *tensor_names[] = {"item_emb", "attr_emb", "type_emb", "ln1_w", "ln1_b", "wqkv",
                                     "bqkv",     "wo",       "bo",       "ln2_w", "ln2_b", "w1",
                                     "b1",       "w2",       "b2",       "lnf_w", "lnf_b"};

/* Which tensor of model_weights_point() order holds flat index i. */
static int tensor_of(const model_config *c, size_t i) {
    model_weights w;
    float *base = (float *)64; /* only offsets matter */
    model_weights_point(&w, c, base);
    float *starts[] = {w.item_emb, w.attr_emb, w.type_emb, w.ln1_w, w.ln1_b, w.wqkv,
                       w.bqkv,     w.wo,       w.bo,       w.ln2_w, w.ln2_b, w.w1,
                       w.b1,       w.w2,       w.b2,       w.lnf_w, w.lnf_b};
    int k = 0;
    for (int j = 0; j < 17; j++)
        if ((size_t)(starts[j] - base) <= i) k = j;
    return k;
}

static double central_difference(trainer *t, float *w, size_t i, float h, const int32_t *users,
                                 int n, int dropout) {
    float keep = w[i];
    w[i] = keep + h;
    trainer_set_weights(t, w);
    double lp = trainer_loss(t, users, n, dropout, 3, NULL);
    w[i] = keep - h;
    trainer_set_weights(t, w);
    double lm = trainer_loss(t, users, n, dropout, 3, NULL);
    w[i] = keep;
    return (lp - lm) / (2.0 * (double)h);
}

/* Central differences in float: the loss is O(1), so a step of 1e-2 keeps
 * the rounding error near 1e-5 while the truncation error, O(step^2), stays
 * small next to gradients of 1e-3 and up. Every weight of every tensor whose
 * gradient is not negligible is checked. */
static void check_gradients(trainer *t, const int32_t *users, int n, int dropout) {
    size_t np = trainer_n_params(t);
    float *g = malloc(np * sizeof *g), *w = malloc(np * sizeof *w);
    trainer_loss(t, users, n, dropout, 3, g);
    trainer_get_weights(t, w);
    const model_config *c = trainer_config(t);
    int checked = 0, bad = 0;
    const float h = 1e-2f;
    int per_tensor[17] = {0};
    for (size_t i = 0; i < np; i++) {
        double num = central_difference(t, w, i, h, users, n, dropout);
        /* Richardson: two steps cancel the h^2 term of the truncation error */
        num = (4.0 * central_difference(t, w, i, h / 2, users, n, dropout) - num) / 3.0;
        if (fabs(num) < 1e-4 && fabs(g[i]) < 1e-4) continue;
        checked++;
        int k = tensor_of(c, i);
        per_tensor[k]++;
        if (fabs(num - g[i]) > 2e-3 + 3e-2 * fabs(num)) {
            if (bad++ < 10)
                print_error("weight %zu (%s): analytic %.6f numeric %.6f\n", i, tensor_names[k], g[i],
                            num);
        }
    }
    trainer_set_weights(t, w);
    assert_true(checked > 100);
    for (int k = 0; k < 17; k++)
        if (!per_tensor[k]) fail_msg("no weight of %s has a gradient to check", tensor_names[k]);
    assert_int_equal(bad, 0);
    free(g);
    free(w);
}

static void test_gradients_of_every_layer_match_finite_differences(void **unused) {
    dataset *d = toy_dataset(6, 11, 5);
    train_params p = tiny_params();
    trainer *t = new_trainer(d, &p);
    /* first a few steps, so that weights and gradients are not at their
     * symmetric start (type embeddings start at zero, LayerNorms at identity) */
    for (int e = 1; e <= 3; e++) trainer_epoch(t, e, NULL, NULL);
    int32_t users[] = {0, 1, 2, 3, 4, 5};
    check_gradients(t, users, 6, 0);
    trainer_free(t);
    dataset_free(d);
}

static void test_gradients_hold_with_dropout_and_sampled_softmax(void **unused) {
    dataset *d = toy_dataset(6, 11, 5);
    train_params p = tiny_params();
    p.dropout = 0.3f;
    p.negatives = 5;
    trainer *t = new_trainer(d, &p);
    for (int e = 1; e <= 3; e++) trainer_epoch(t, e, NULL, NULL);
    int32_t users[] = {0, 1, 2, 3, 4, 5};
    check_gradients(t, users, 6, 1); /* the same step: the same masks and negatives */
    trainer_free(t);
    dataset_free(d);
}

/* Splitting a batch between threads changes only the order of sums: the
 * loss and every gradient agree with one thread's within float rounding. */
static void test_two_workers_compute_what_one_computes(void **unused) {
    dataset *d = toy_dataset(9, 13, 6);
    train_params p = tiny_params();
    p.dropout = 0.2f, p.negatives = 4;
    trainer *one = new_trainer(d, &p);
    p.threads = 2;
    trainer *two = new_trainer(d, &p);
    size_t np = trainer_n_params(one);
    float *g1 = malloc(np * sizeof *g1), *g2 = malloc(np * sizeof *g2);
    int32_t users[] = {0, 1, 2, 3, 4, 5, 6, 7}; /* a whole batch */
    double l1 = trainer_loss(one, users, 8, 1, 5, g1), l2 = trainer_loss(two, users, 8, 1, 5, g2);
    assert_float_equal(l1, l2, 1e-5);
    for (size_t i = 0; i < np; i++) assert_float_equal(g1[i], g2[i], 1e-5);
    free(g1);
    free(g2);
    trainer_free(one);
    trainer_free(two);
    dataset_free(d);
}

/* Every user follows the same rule (each item is followed by the one two
 * further on), which a model can learn: it must rank the held-out target
 * first for nearly every user. */
static void test_trainer_learns_a_tiny_dataset_by_heart(void **unused) {
    dataset *d = toy_dataset(16, 19, 6);
    train_params p = tiny_params();
    p.dim = 16, p.hidden = 32, p.lr = 1e-2f;
    trainer *t = new_trainer(d, &p);
    train_metrics before, after;
    trainer_evaluate(t, TRAIN_SPLIT_TEST, &before);
    double loss = 0;
    for (int e = 1; e <= 150; e++) loss = trainer_epoch(t, e, NULL, NULL);
    trainer_evaluate(t, TRAIN_SPLIT_TEST, &after);
    print_message("loss %.4f, test HR@5 %.3f -> %.3f\n", loss, before.hr[0], after.hr[0]);
    assert_true(loss < 0.1);
    assert_true(after.hr[0] >= 0.9);
    assert_true(before.hr[0] < 0.6);
    trainer_free(t);
    dataset_free(d);
}

static void test_same_seed_gives_the_same_weights_and_another_seed_does_not(void **unused) {
    dataset *d = toy_dataset(12, 17, 6);
    train_params p = tiny_params();
    p.dropout = 0.2f, p.negatives = 4, p.threads = 2;
    float *w[3];
    for (int run = 0; run < 3; run++) {
        p.seed = run == 2 ? 8 : 7;
        trainer *t = new_trainer(d, &p);
        for (int e = 1; e <= 3; e++) trainer_epoch(t, e, NULL, NULL);
        w[run] = malloc(trainer_n_params(t) * sizeof(float));
        trainer_get_weights(t, w[run]);
        if (run == 2) {
            assert_memory_equal(w[0], w[1], trainer_n_params(t) * sizeof(float));
            assert_memory_not_equal(w[0], w[2], trainer_n_params(t) * sizeof(float));
        }
        trainer_free(t);
    }
    for (int run = 0; run < 3; run++) free(w[run]);
    dataset_free(d);
}

/* What the trainer computes while training is what the service computes
 * from the file it writes: the user state after any span of events, by the
 * engine's full recompute, agrees within float rounding and the engine's
 * 8-bit keys and values, which the trainer keeps in float (docs/MODEL.md):
 * within 4e-4 here, held to 2e-3. */
static void test_written_model_computes_in_the_engine_what_the_trainer_computed(void **unused) {
    dataset *d = toy_dataset(10, 23, 7);
    train_params p = tiny_params();
    p.dropout = 0.1f;
    trainer *t = new_trainer(d, &p);
    for (int e = 1; e <= 4; e++) trainer_epoch(t, e, NULL, NULL);
    char path[] = "/tmp/test_train_XXXXXX", err[256];
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    if (trainer_write(t, path, err, sizeof err) < 0) fail_msg("%s", err);
    model *m = model_open(path, err, sizeof err);
    if (!m) fail_msg("%s", err);
    model_runstate *rs = model_runstate_new(m, 1);
    int dim = p.dim;
    float h_train[64], h_engine[64];
    for (int32_t u = 0; u < d->n_users; u++) {
        uint64_t len = dataset_user_len(d, u);
        for (uint64_t lo = 0; lo + 1 < len; lo += 2) {
            uint64_t hi = lo + (uint64_t)p.window < len ? lo + (uint64_t)p.window : len;
            trainer_user_state(t, u, lo, hi, h_train);
            model_token tok[64];
            for (uint64_t i = lo; i < hi; i++) {
                const char *id = d->item_ids[d->ev_item[d->user_off[u] + i]];
                tok[i - lo] = (model_token){.item = model_item_row(m, util_hash(id)),
                                            .type = d->ev_type[d->user_off[u] + i]};
                assert_true(tok[i - lo].item >= 0);
            }
            assert_int_equal(model_forward_full(m, rs, tok, (int)(hi - lo), h_engine, err, sizeof err), 0);
            for (int k = 0; k < dim; k++) assert_float_equal(h_train[k], h_engine[k], 2e-3);
        }
    }
    model_runstate_free(rs);
    model_close(m);
    unlink(path);
    trainer_free(t);
    dataset_free(d);
}

/* The same histories given in another order make the same dataset. */
static void test_dataset_is_the_same_whatever_order_users_and_items_arrive_in(void **unused) {
    dataset_builder *a = dataset_builder_new(), *b = dataset_builder_new();
    const char *ev[][2] = {{"10", "i9"}, {"2", "i10"}, {"10", "i2"}, {"2", "i9"}, {"7", "i1"}};
    for (int i = 0; i < 5; i++) assert_int_equal(dataset_builder_event(a, ev[i][0], ev[i][1], EV_VIEW), 0);
    /* b: users interleaved differently, each user's own order kept */
    int order[] = {4, 1, 3, 0, 2};
    for (int i = 0; i < 5; i++)
        assert_int_equal(dataset_builder_event(b, ev[order[i]][0], ev[order[i]][1], EV_VIEW), 0);
    const char *x[] = {"z", "a"}, *y[] = {"a", "z", "a"};
    assert_int_equal(dataset_builder_attrs(a, "i9", x, 2), 0);
    assert_int_equal(dataset_builder_attrs(b, "i9", y, 3), 0);
    assert_int_equal(dataset_builder_attrs(b, "unused", x, 1), 0); /* no event: dropped */
    char err[128];
    dataset *da = dataset_builder_finish(a, err, sizeof err), *db = dataset_builder_finish(b, err, sizeof err);
    assert_non_null(da);
    assert_non_null(db);
    assert_int_equal(da->n_users, 3);
    assert_string_equal(da->user_ids[0], "2"); /* numeric ids in numeric order */
    assert_string_equal(da->user_ids[2], "10");
    assert_string_equal(da->item_ids[0], "i1");
    assert_string_equal(da->item_ids[3], "i10");
    assert_int_equal(da->n_attrs, 2);
    assert_int_equal(db->n_attrs, 2);
    assert_int_equal(da->n_items, db->n_items);
    assert_memory_equal(da->user_off, db->user_off, (da->n_users + 1) * sizeof *da->user_off);
    assert_memory_equal(da->ev_item, db->ev_item, da->n_events * sizeof *da->ev_item);
    assert_memory_equal(da->item_attr_off, db->item_attr_off, (da->n_items + 1) * sizeof(uint32_t));
    assert_memory_equal(da->item_attr_rows, db->item_attr_rows, 2 * sizeof(uint32_t));
    /* user "10": i9 then i2 */
    assert_string_equal(da->item_ids[da->ev_item[da->user_off[2]]], "i9");
    assert_string_equal(da->item_ids[da->ev_item[da->user_off[2] + 1]], "i2");
    dataset_free(da);
    dataset_free(db);
}

static void test_matmul_at_equals_its_naive_twin(void **unused) {
    int m = 13, n = 9, k = 21, lda = 15, ldb = 11, ldo = 10;
    float a[21 * 15], b[21 * 11], o1[13 * 10], o2[13 * 10];
    for (int i = 0; i < 21 * 15; i++) a[i] = (float)((i * 37) % 19) / 9.0f - 1.0f;
    for (int i = 0; i < 21 * 11; i++) b[i] = (float)((i * 23) % 17) / 8.0f - 1.0f;
    for (int beta = 0; beta < 2; beta++) {
        for (int i = 0; i < 13 * 10; i++) o1[i] = o2[i] = (float)(i % 7);
        matmul_at(o1, a, b, m, n, k, lda, ldb, ldo, (float)beta);
        matmul_at_naive(o2, a, b, m, n, k, lda, ldb, ldo, (float)beta);
        for (int i = 0; i < 13 * 10; i++) assert_float_equal(o1[i], o2[i], 1e-4);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gradients_of_every_layer_match_finite_differences),
        cmocka_unit_test(test_gradients_hold_with_dropout_and_sampled_softmax),
        cmocka_unit_test(test_two_workers_compute_what_one_computes),
        cmocka_unit_test(test_trainer_learns_a_tiny_dataset_by_heart),
        cmocka_unit_test(test_same_seed_gives_the_same_weights_and_another_seed_does_not),
        cmocka_unit_test(test_written_model_computes_in_the_engine_what_the_trainer_computed),
        cmocka_unit_test(test_dataset_is_the_same_whatever_order_users_and_items_arrive_in),
        cmocka_unit_test(test_matmul_at_equals_its_naive_twin),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
