/* train.c -- what training costs, measured in one run.
 *
 *   train [--sequences FILE] [--rounds R] [--steps S] [--threads N] [--negatives K]
 *
 * Trains with `copystream train`'s default settings on a dataset shaped like
 * Amazon Beauty (22,363 users, 12,101 items, 637 attributes, 5 to 200
 * events per user, 8.9 on average, items drawn by a power law), generated
 * from a fixed seed, or on a sequence file. Each round runs S optimizer
 * steps (default 20), then plain cblas_sgemm, on as many threads as the
 * trainer has workers, on the same products: per layer
 * the projections and feed-forward of the round's average rows per step, and
 * the loss head, each three times as the backward pass runs them. The ratio
 * is taken within each round, the two back to back, and the median of R
 * rounds (default 5) reported, so that a busy machine slows both alike.
 * Prints `name value` lines:
 *
 *   train_positions_per_s          training positions (predicted events) per second
 *   train_step_ms                  one optimizer step of a batch of users
 *   train_gflops                   the steps' products' flops (trainer_flops()) over their
 *                                  whole time: norms, softmax, GELU, dropout, AdamW included
 *   sgemm_gflops                   cblas_sgemm alone on those shapes
 *   train_vs_sgemm_gflops_ratio    the first over the second */
#include <cblas.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "model.h"
#include "train.h"
#include "util.h"

static double unit(uint64_t *s) { return (double)(util_mix64((*s)++) >> 11) / 9007199254740992.0; }

static dataset *beauty_shaped(void) {
    const int users = 22363, items = 12101, attrs = 637;
    dataset_builder *b = dataset_builder_new();
    uint64_t s = 1;
    char u[32], it[32], a[4][32];
    for (int i = 0; i < users; i++) {
        snprintf(u, sizeof u, "%d", i);
        int n = 5;
        while (n < 200 && unit(&s) < 0.8) n++; /* geometric tail: 5 + 3.9 on average */
        for (int k = 0; k < n; k++) {
            /* a power law over items: rank ~ items^u */
            int item = (int)(pow((double)items, unit(&s))) - 1;
            snprintf(it, sizeof it, "%d", item);
            dataset_builder_event(b, u, it, EV_PURCHASE);
        }
    }
    for (int i = 0; i < items; i++) {
        const char *ids[4];
        int n = 1 + (int)(unit(&s) * 4);
        for (int k = 0; k < n; k++) {
            snprintf(a[k], sizeof a[k], "%d", (int)(unit(&s) * attrs));
            ids[k] = a[k];
        }
        snprintf(it, sizeof it, "%d", i);
        dataset_builder_attrs(b, it, ids, (size_t)n);
    }
    char err[256];
    dataset *d = dataset_builder_finish(b, err, sizeof err);
    if (!d) fprintf(stderr, "bench: %s\n", err);
    return d;
}

/* Seconds of cblas_sgemm over the products of one step of R rows, done the
 * three times a training step does them; *flops gets their count. */
static double sgemm_round(const train_params *p, int n_items, int R, float *a, float *b, float *c,
                          double *flops) {
    int d = p->dim, hid = p->hidden, cols = p->negatives ? p->negatives + 1 : n_items;
    int shapes[][2] = {{d, 3 * d}, {d, d}, {d, hid}, {hid, d}};
    *flops = 0;
    int64_t t0 = util_monotonic_us();
    for (int rep = 0; rep < 3; rep++) {
        for (int l = 0; l < p->n_layers; l++)
            for (int s = 0; s < 4; s++) {
                int k = shapes[s][0], n = shapes[s][1];
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, n, k, 1.0f, a, k, b, n,
                            0.0f, c, n);
                *flops += 2.0 * R * n * k;
            }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, cols, d, 1.0f, a, d, b, d, 0.0f,
                    c, cols);
        *flops += 2.0 * R * cols * d;
    }
    return (double)(util_monotonic_us() - t0) / 1e6;
}

static int cmp_double(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv) {
    static const struct option opts[] = {{"sequences", required_argument, 0, 's'},
                                         {"rounds", required_argument, 0, 'r'},
                                         {"steps", required_argument, 0, 'n'},
                                         {"threads", required_argument, 0, 't'},
                                         {"negatives", required_argument, 0, 'k'},
                                         {0, 0, 0, 0}};
    train_params p;
    train_params_default(&p);
    const char *seq = NULL;
    int rounds = 5, steps = 20, o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 's': seq = optarg; break;
        case 'r': rounds = atoi(optarg); break;
        case 'n': steps = atoi(optarg); break;
        case 't': p.threads = atoi(optarg); break;
        case 'k': p.negatives = atoi(optarg); break;
        default: return 2;
        }
    }
    if (rounds < 1 || rounds > 100 || steps < 1) return 2;
    char err[256];
    dataset *ds = seq ? dataset_read_files(seq, NULL, EV_PURCHASE, err, sizeof err) : beauty_shaped();
    if (!ds) {
        fprintf(stderr, "bench: %s\n", seq ? err : "no dataset");
        return 1;
    }
    trainer *t = trainer_new(ds, &p, err, sizeof err);
    if (!t) {
        fprintf(stderr, "bench: %s\n", err);
        return 1;
    }
    size_t big = (size_t)p.batch * p.window * (p.hidden > ds->n_items ? p.hidden : ds->n_items);
    float *a = calloc((size_t)p.batch * p.window * p.hidden, sizeof *a);
    float *b = calloc((size_t)ds->n_items * p.dim + (size_t)p.hidden * p.hidden, sizeof *b);
    float *c = calloc(big, sizeof *c);
    int32_t *users = malloc((size_t)p.batch * sizeof *users);
    if (!a || !b || !c || !users) return 1;
    for (size_t i = 0; i < (size_t)p.batch * p.window * p.hidden; i++) a[i] = (float)(i % 13) / 13.0f;
    double pos_rate[100], step_ms[100], gflops[100], sgemm[100], ratio[100];
    uint64_t next = 0;
    for (int r = -1; r < rounds; r++) { /* round -1 warms up */
        double f0 = trainer_flops(t);
        uint64_t positions = 0;
        int64_t t0 = util_monotonic_us();
        for (int s = 0; s < steps; s++) {
            for (int i = 0; i < p.batch; i++) users[i] = (int32_t)(util_mix64(next++) % (uint64_t)ds->n_users);
            int rows;
            trainer_step(t, users, p.batch, &rows);
            positions += (uint64_t)rows;
        }
        double secs = (double)(util_monotonic_us() - t0) / 1e6, flops = trainer_flops(t) - f0;
        double sflops = 0, ssecs = 0;
        int reps = 0;
        /* sgemm on as many threads as the trainer has workers: the same cores */
        model_set_threads(p.threads);
        while (ssecs < secs / 4 || reps < 3) {
            double f;
            ssecs += sgemm_round(&p, ds->n_items, (int)(positions / (uint64_t)steps), a, b, c, &f);
            reps++;
            sflops = f;
        }
        model_set_threads(1);
        if (r < 0) continue;
        pos_rate[r] = (double)positions / secs;
        step_ms[r] = secs * 1e3 / steps;
        gflops[r] = flops / secs * 1e-9;
        sgemm[r] = sflops * reps / ssecs * 1e-9;
        ratio[r] = gflops[r] / sgemm[r];
    }
    printf("dataset %s\n", seq ? seq : "beauty-shaped");
    printf("threads %d\n", p.threads);
    printf("negatives %d\n", p.negatives);
    printf("train_positions_per_s %.0f\n", median(pos_rate, rounds));
    printf("train_step_ms %.2f\n", median(step_ms, rounds));
    printf("train_gflops %.2f\n", median(gflops, rounds));
    printf("sgemm_gflops %.2f\n", median(sgemm, rounds));
    printf("train_vs_sgemm_gflops_ratio %.3f\n", median(ratio, rounds));
    free(a);
    free(b);
    free(c);
    free(users);
    trainer_free(t);
    dataset_free(ds);
    return 0;
}
