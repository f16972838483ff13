/* evaluate.c -- `copystream eval`: how well a model file ranks held-out
 * events, computed by the service's own engine (model.c).
 *
 * Leave-one-out like the trainer: with --split test a user's last event is
 * the target and every event before it the history; with --split valid the
 * one before the last. The user state is model_forward_full() over the last
 * model_window_positions() events of the history -- what the service's KV
 * state covers after the same events -- so a model ranks here exactly as it
 * ranks in the service. Two rankings are reported: against every item
 * (items of the history are excluded, as the service excludes what a user
 * has; a target among them counts as a miss), and against 100 items drawn
 * uniformly from the rest (the protocol of many papers, which flatters a
 * model: it says so). --dump-topk writes each user's 20 best items so that
 * anyone can score the ranking with their own tools. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "dataset.h"
#include "log.h"
#include "model.h"
#include "train.h"
#include "util.h"

#define EVAL_BATCH 64
#define EVAL_DUMP_K 20

typedef struct {
    const int32_t *stamp; /* (n_items) user number + 1 where the item is in that user's history */
    int32_t user;
} eval_skip_ctx;

static int eval_skip(void *ctx, int32_t row) {
    const eval_skip_ctx *c = ctx;
    return c->stamp[row] == c->user + 1;
}

static void eval_usage(FILE *f) {
    fprintf(f,
            "usage: copystream eval --model MODEL --sequences FILE [--split test|valid]\n"
            "                       [--event-type TYPE] [--dump-topk FILE] [--seed N]\n"
            "\n"
            "Ranks each user's held-out event with the model, as the service would, and prints\n"
            "HR@5/10/20 and NDCG@5/10/20 with full ranking (every item but the user's history)\n"
            "and with 100 sampled negatives. --dump-topk FILE writes `user item1 ... item20`\n"
            "per user, best first.\n");
}

int eval_main(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},     {"sequences", required_argument, 0, 's'},
        {"split", required_argument, 0, 'p'},     {"event-type", required_argument, 0, 't'},
        {"dump-topk", required_argument, 0, 'd'}, {"seed", required_argument, 0, 'r'},
        {"help", no_argument, 0, 'h'},            {0, 0, 0, 0}};
    const char *model_path = NULL, *seq = NULL, *dump = NULL;
    int back = 1;
    event_type type = EV_PURCHASE;
    uint64_t seed = 42;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case 'm': model_path = optarg; break;
        case 's': seq = optarg; break;
        case 'd': dump = optarg; break;
        case 'r': {
            int64_t v;
            if (commands_int(optarg, 0, INT64_MAX, &v) < 0) {
                fprintf(stderr, "copystream eval: --seed %s is not a whole number from 0 to %" PRId64
                        "\n", optarg, INT64_MAX);
                return 2;
            }
            seed = (uint64_t)v;
            break;
        }
        case 'p':
            if (!strcmp(optarg, "test")) back = 1;
            else if (!strcmp(optarg, "valid")) back = 2;
            else {
                fprintf(stderr, "copystream eval: --split %s is not test or valid\n", optarg);
                return 2;
            }
            break;
        case 't': {
            int ty = commands_event_type(optarg);
            if (ty < 0) {
                fprintf(stderr, "copystream eval: --event-type %s is not " COMMANDS_EVENT_TYPES "\n",
                        optarg);
                return 2;
            }
            type = (event_type)ty;
            break;
        }
        case 'h': eval_usage(stdout); return 0;
        default: eval_usage(stderr); return 2;
        }
    }
    if (!model_path || !seq || optind < argc) {
        eval_usage(stderr);
        return 2;
    }
    char err[1024];
    int rc = 1;
    model *m = NULL;
    model_runstate *rs = NULL;
    dataset *ds = NULL;
    FILE *out = NULL;
    float *h = NULL, *scores = NULL;
    int32_t *rows = NULL, *stamp = NULL, *hist_users = NULL;
    model_token *tokens = NULL;
    if (!(m = model_open(model_path, err, sizeof err))) goto err;
    if (!(ds = dataset_read_files(seq, NULL, type, err, sizeof err))) goto err;
    const model_config *c = model_get_config(m);
    int d = c->dim, V = c->n_items;
    rs = model_runstate_new(m, 1);
    h = malloc((size_t)EVAL_BATCH * d * sizeof *h);
    scores = malloc((size_t)EVAL_BATCH * V * sizeof *scores);
    rows = malloc((size_t)ds->n_items * sizeof *rows);
    stamp = calloc((size_t)V, sizeof *stamp);
    hist_users = malloc(EVAL_BATCH * sizeof *hist_users);
    tokens = malloc((size_t)c->window * sizeof *tokens);
    if (!rs || !h || !scores || !rows || !stamp || !hist_users || !tokens) {
        util_err(err, sizeof err, "out of memory");
        goto err;
    }
    if (dump && !(out = fopen(dump, "w"))) {
        util_err(err, sizeof err, "%s: %s", dump, strerror(errno));
        goto err;
    }
    int64_t unknown = 0;
    for (int32_t i = 0; i < ds->n_items; i++) {
        rows[i] = model_item_row(m, util_hash(ds->item_ids[i]));
        unknown += rows[i] < 0;
    }
    if (unknown)
        log_warn("eval", "%lld of the file's %d items are unknown to the model: their events are "
                 "inputs without an item embedding, and as targets they are misses",
                 (long long)unknown, ds->n_items);
    train_metrics full = {0}, sampled = {0};
    int64_t t0 = util_monotonic_us();
    for (int32_t u0 = 0; u0 < ds->n_users;) {
        int n = 0;
        for (; u0 < ds->n_users && n < EVAL_BATCH; u0++) {
            uint64_t len = dataset_user_len(ds, u0);
            if (len < (uint64_t)back + 1) continue;
            uint64_t cut = len - (uint64_t)back;
            int k = model_window_positions(m, cut);
            const uint64_t first = ds->user_off[u0] + cut - (uint64_t)k;
            for (int i = 0; i < k; i++)
                tokens[i] = (model_token){.item = rows[ds->ev_item[first + i]],
                                          .type = ds->ev_type[first + i]};
            if (model_forward_full(m, rs, tokens, k, h + (size_t)n * d, err, sizeof err) < 0)
                goto err;
            hist_users[n++] = u0;
        }
        if (!n) break;
        model_score(m, h, n, scores);
        for (int b = 0; b < n; b++) {
            int32_t u = hist_users[b];
            const int32_t *ev = ds->ev_item + ds->user_off[u];
            uint64_t cut = dataset_user_len(ds, u) - (uint64_t)back;
            float *sc = scores + (size_t)b * V;
            for (uint64_t e = 0; e < cut; e++)
                if (rows[ev[e]] >= 0) stamp[rows[ev[e]]] = u + 1;
            int32_t target = rows[ev[cut]];
            int miss = target < 0 || stamp[target] == u + 1;
            float ts = miss ? 0 : sc[target];
            int64_t rank = 0, srank = 0;
            if (miss) {
                rank = srank = V;
            } else {
                for (int j = 0; j < V; j++) rank += sc[j] > ts && stamp[j] != u + 1;
                /* 100 negatives, uniform over the items outside the history */
                uint64_t key = util_mix64(seed ^ util_mix64((uint64_t)u));
                for (int drawn = 0, i = 0; drawn < 100 && i < 100000; i++) {
                    int32_t j = (int32_t)(util_mix64(key + (uint64_t)i) % (uint64_t)V);
                    if (j == target || stamp[j] == u + 1) continue;
                    srank += sc[j] > ts;
                    drawn++;
                }
            }
            train_metrics_add(&full, rank);
            train_metrics_add(&sampled, srank);
            if (out) {
                eval_skip_ctx sk = {stamp, u};
                int32_t top[EVAL_DUMP_K];
                int got = model_topk(sc, V, EVAL_DUMP_K, eval_skip, &sk, top, NULL);
                fputs(ds->user_ids[u], out);
                for (int i = 0; i < got; i++) fprintf(out, " %s", model_item_id(m, top[i]));
                fputc('\n', out);
            }
        }
    }
    train_metrics_finish(&full);
    train_metrics_finish(&sampled);
    for (int s = 0; s < 2; s++) {
        const train_metrics *x = s ? &sampled : &full;
        printf("%-18s users %lld  HR@5 %.4f  HR@10 %.4f  HR@20 %.4f  NDCG@5 %.4f  NDCG@10 %.4f  "
               "NDCG@20 %.4f\n",
               s ? "sampled (100 neg)" : "full ranking", (long long)x->n, x->hr[0], x->hr[1],
               x->hr[2], x->ndcg[0], x->ndcg[1], x->ndcg[2]);
    }
    fflush(stdout);
    log_info("eval", "%s split of %s with %s in %.1f s", back == 1 ? "test" : "valid", seq,
             model_version(m), (double)(util_monotonic_us() - t0) / 1e6);
    if (out && fclose(out) != 0) {
        out = NULL;
        util_err(err, sizeof err, "%s: %s", dump, strerror(errno));
        goto err;
    }
    out = NULL;
    rc = 0;
err:
    if (rc) fprintf(stderr, "copystream eval: %s\n", err);
    if (out) fclose(out);
    free(h);
    free(scores);
    free(rows);
    free(stamp);
    free(hist_users);
    free(tokens);
    model_runstate_free(rs);
    model_close(m);
    dataset_free(ds);
    return rc;
}
