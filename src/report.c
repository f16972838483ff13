/* report.c -- `copystream report`: how each copy variant performs.
 *
 * Reads the bandit's shared statistics (bandit.h: one Redis hash per intent)
 * and prints, per intent and variant -- optionally split by locale and by
 * segment -- copies sent, impressions, clicks, conversions and dismissals,
 * with
 *   CTR          clicks / impressions
 *   conv/copy    conversions / copies sent: the only rate a holdout, which
 *                is sent nothing and shows no impressions, can be compared by
 *   lift         conv/copy against the holdout's conversions / copies
 *                withheld, minus 1
 * each with a 95 % confidence interval: Wilson's score interval for the
 * rates, and for the lift the Katz log interval of the ratio of two rates.
 * A value without the data it needs (no impressions, no holdout, no
 * conversions on one side of the ratio) is shown as "-" (null in --json). */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bandit.h"
#include "commands.h"
#include "config.h"
#include "util.h"

#define REPORT_Z 1.959963984540054 /* the standard normal's 97.5th percentile */

typedef struct {
    char intent[128], locale[32], segment[16], variant[64];
    bandit_counts c;
} report_row;

typedef struct {
    report_row *v;
    size_t n, cap;
    int by_locale, by_segment;
    int failed;
} report_rows;

/* An estimate and its interval; ok = 0 when there is not enough data. */
typedef struct {
    int ok;
    double value, low, high;
} report_est;

static void report_collect(const char *intent, const char *segment, const char *locale,
                           const char *variant, const bandit_counts *c, void *ud) {
    report_rows *rows = ud;
    const char *loc = rows->by_locale ? locale : "", *seg = rows->by_segment ? segment : "";
    report_row *row = NULL;
    for (size_t i = 0; i < rows->n && !row; i++)
        if (!strcmp(rows->v[i].intent, intent) && !strcmp(rows->v[i].variant, variant) &&
            !strcmp(rows->v[i].locale, loc) && !strcmp(rows->v[i].segment, seg))
            row = &rows->v[i];
    if (!row) {
        if (rows->n == rows->cap) {
            size_t cap = rows->cap ? rows->cap * 2 : 16;
            report_row *v = realloc(rows->v, cap * sizeof *v);
            if (!v) {
                rows->failed = 1;
                return;
            }
            rows->v = v;
            rows->cap = cap;
        }
        row = memset(&rows->v[rows->n++], 0, sizeof *row);
        snprintf(row->intent, sizeof row->intent, "%s", intent);
        snprintf(row->locale, sizeof row->locale, "%s", loc);
        snprintf(row->segment, sizeof row->segment, "%s", seg);
        snprintf(row->variant, sizeof row->variant, "%s", variant);
    }
    for (int k = 0; k < BANDIT__COUNTERS; k++) row->c.n[k] += c->n[k];
}

static int report_row_cmp(const void *x, const void *y) {
    const report_row *a = x, *b = y;
    int c;
    if ((c = strcmp(a->intent, b->intent)) || (c = strcmp(a->locale, b->locale)) ||
        (c = strcmp(a->segment, b->segment)))
        return c;
    int ha = !strcmp(a->variant, BANDIT_HOLDOUT), hb = !strcmp(b->variant, BANDIT_HOLDOUT);
    return ha != hb ? ha - hb : strcmp(a->variant, b->variant);
}

/* Wilson's score interval for k successes in n trials. */
static report_est report_wilson(uint64_t k, uint64_t n) {
    if (n == 0) return (report_est){0, 0, 0, 0};
    if (k > n) k = n;
    double p = (double)k / (double)n, z2 = REPORT_Z * REPORT_Z, nn = (double)n;
    double denom = 1.0 + z2 / nn, center = (p + z2 / (2.0 * nn)) / denom;
    double half = REPORT_Z * sqrt(p * (1.0 - p) / nn + z2 / (4.0 * nn * nn)) / denom;
    return (report_est){1, p, center - half, center + half};
}

/* Lift of rate x1/n1 over x0/n0, with the Katz interval of the ratio. */
static report_est report_lift(uint64_t x1, uint64_t n1, uint64_t x0, uint64_t n0) {
    if (!x1 || !x0 || !n1 || !n0 || x1 > n1 || x0 > n0) return (report_est){0, 0, 0, 0};
    double p1 = (double)x1 / (double)n1, p0 = (double)x0 / (double)n0;
    double se = sqrt(1.0 / (double)x1 - 1.0 / (double)n1 + 1.0 / (double)x0 - 1.0 / (double)n0);
    double lr = log(p1 / p0);
    return (report_est){1, p1 / p0 - 1.0, exp(lr - REPORT_Z * se) - 1.0,
                        exp(lr + REPORT_Z * se) - 1.0};
}

/* The holdout row that a variant row is compared with, or NULL. */
static const report_row *report_holdout_for(const report_rows *rows, const report_row *r) {
    for (size_t i = 0; i < rows->n; i++) {
        const report_row *h = &rows->v[i];
        if (!strcmp(h->variant, BANDIT_HOLDOUT) && !strcmp(h->intent, r->intent) &&
            !strcmp(h->locale, r->locale) && !strcmp(h->segment, r->segment))
            return h;
    }
    return NULL;
}

static void report_pct(char *out, size_t len, report_est e) {
    if (!e.ok)
        snprintf(out, len, "-");
    else
        snprintf(out, len, "%.2f%% [%.2f, %.2f]", 100 * e.value, 100 * e.low, 100 * e.high);
}

static void report_lift_text(char *out, size_t len, report_est e) {
    if (!e.ok)
        snprintf(out, len, "-");
    else
        snprintf(out, len, "%+.1f%% [%+.1f, %+.1f]", 100 * e.value, 100 * e.low, 100 * e.high);
}

static json_t *report_json_est(report_est e) { return e.ok ? json_real(e.value) : json_null(); }

static void report_json_put(json_t *o, const char *name, report_est e) {
    json_object_set_new(o, name, report_json_est(e));
    char key[64];
    snprintf(key, sizeof key, "%s_low", name);
    json_object_set_new(o, key, e.ok ? json_real(e.low) : json_null());
    snprintf(key, sizeof key, "%s_high", name);
    json_object_set_new(o, key, e.ok ? json_real(e.high) : json_null());
}

enum { COL_INTENT, COL_LOCALE, COL_SEGMENT, COL_VARIANT, COL_SENT, COL_IMP, COL_CLICKS, COL_CTR,
       COL_CONV, COL_CONV_RATE, COL_LIFT, COL_DISMISS, N_COLS };
static const char *const report_headers[N_COLS] = {
    "intent", "locale", "segment", "variant", "sent", "impressions", "clicks", "CTR [95% CI]",
    "conversions", "conv/copy [95% CI]", "lift vs holdout [95% CI]", "dismissals"};

static void report_print(const report_rows *rows, int as_json) {
    json_t *arr = as_json ? json_array() : NULL;
    char cells[N_COLS][160];
    size_t width[N_COLS];
    int shown[N_COLS];
    int last = 0;
    for (int k = 0; k < N_COLS; k++) {
        width[k] = strlen(report_headers[k]);
        shown[k] = (k != COL_LOCALE || rows->by_locale) && (k != COL_SEGMENT || rows->by_segment);
        if (shown[k]) last = k;
    }
    /* Two passes: widths, then lines. */
    for (int pass = as_json ? 1 : 0; pass < 2; pass++) {
        if (pass == 1 && !as_json) {
            for (int k = 0, first = 1; k < N_COLS; k++)
                if (shown[k]) {
                    printf("%s%-*s", first ? "" : "  ", k == last ? 0 : (int)width[k],
                           report_headers[k]);
                    first = 0;
                }
            printf("\n");
        }
        for (size_t i = 0; i < rows->n; i++) {
            const report_row *r = &rows->v[i];
            int holdout = !strcmp(r->variant, BANDIT_HOLDOUT);
            const report_row *h = holdout ? NULL : report_holdout_for(rows, r);
            report_est ctr = holdout ? (report_est){0, 0, 0, 0}
                                     : report_wilson(r->c.n[BANDIT_CLICK], r->c.n[BANDIT_IMP]);
            report_est conv = report_wilson(r->c.n[BANDIT_CONV], r->c.n[BANDIT_SENT]);
            report_est lift = h ? report_lift(r->c.n[BANDIT_CONV], r->c.n[BANDIT_SENT],
                                              h->c.n[BANDIT_CONV], h->c.n[BANDIT_SENT])
                                : (report_est){0, 0, 0, 0};
            if (as_json) {
                json_t *o = json_object();
                json_object_set_new(o, "intent", json_string(r->intent));
                if (rows->by_locale) json_object_set_new(o, "locale", json_string(r->locale));
                if (rows->by_segment) json_object_set_new(o, "segment", json_string(r->segment));
                json_object_set_new(o, "variant", json_string(holdout ? "holdout" : r->variant));
                json_object_set_new(o, "holdout", json_boolean(holdout));
                json_object_set_new(o, "sent", json_integer((json_int_t)r->c.n[BANDIT_SENT]));
                json_object_set_new(o, "impressions", json_integer((json_int_t)r->c.n[BANDIT_IMP]));
                json_object_set_new(o, "clicks", json_integer((json_int_t)r->c.n[BANDIT_CLICK]));
                json_object_set_new(o, "conversions",
                                    json_integer((json_int_t)r->c.n[BANDIT_CONV]));
                json_object_set_new(o, "dismissals",
                                    json_integer((json_int_t)r->c.n[BANDIT_DISMISS]));
                json_object_set_new(o, "unsubscribes",
                                    json_integer((json_int_t)r->c.n[BANDIT_UNSUB]));
                report_json_put(o, "ctr", ctr);
                report_json_put(o, "conversion_rate", conv);
                report_json_put(o, "lift", lift);
                json_array_append_new(arr, o);
                continue;
            }
            snprintf(cells[COL_INTENT], sizeof cells[0], "%s", r->intent);
            snprintf(cells[COL_LOCALE], sizeof cells[0], "%s", r->locale);
            snprintf(cells[COL_SEGMENT], sizeof cells[0], "%s", r->segment);
            snprintf(cells[COL_VARIANT], sizeof cells[0], "%s", holdout ? "(holdout)" : r->variant);
            snprintf(cells[COL_SENT], sizeof cells[0], "%llu",
                     (unsigned long long)r->c.n[BANDIT_SENT]);
            snprintf(cells[COL_IMP], sizeof cells[0], "%llu",
                     (unsigned long long)r->c.n[BANDIT_IMP]);
            snprintf(cells[COL_CLICKS], sizeof cells[0], "%llu",
                     (unsigned long long)r->c.n[BANDIT_CLICK]);
            report_pct(cells[COL_CTR], sizeof cells[0], ctr);
            snprintf(cells[COL_CONV], sizeof cells[0], "%llu",
                     (unsigned long long)r->c.n[BANDIT_CONV]);
            report_pct(cells[COL_CONV_RATE], sizeof cells[0], conv);
            report_lift_text(cells[COL_LIFT], sizeof cells[0], lift);
            snprintf(cells[COL_DISMISS], sizeof cells[0], "%llu",
                     (unsigned long long)r->c.n[BANDIT_DISMISS]);
            for (int k = 0, first = 1; k < N_COLS; k++) {
                if (!shown[k]) continue;
                if (pass == 0) {
                    if (strlen(cells[k]) > width[k]) width[k] = strlen(cells[k]);
                } else {
                    printf("%s%-*s", first ? "" : "  ", k == last ? 0 : (int)width[k], cells[k]);
                }
                first = 0;
            }
            if (pass == 1) printf("\n");
        }
    }
    if (as_json) {
        char *text = json_dumps(arr, JSON_INDENT(2));
        if (text) printf("%s\n", text);
        free(text);
        json_decref(arr);
    } else if (!rows->n) {
        printf("(no statistics yet: no copy has been sent with this redis.key_prefix)\n");
    }
}

static void report_usage(FILE *f) {
    fprintf(f,
            "usage: copystream report [-c CONFIG] [--by locale,segment] [--json]\n"
            "\n"
            "Prints, per intent and copy variant, copies sent, impressions, clicks, CTR,\n"
            "conversions, conversions per copy and the lift against the holdout group,\n"
            "with 95%% confidence intervals, from the statistics the service keeps in Redis.\n"
            "\n"
            "  -c, --config FILE   configuration (default $COPYSTREAM_CONFIG or\n"
            "                      config/copystream.conf)\n"
            "  --by LIST           also split rows by locale and/or segment (new, returning)\n"
            "  --json              one JSON array of rows instead of a table\n");
}

int report_main(int argc, char **argv) {
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"by", required_argument, 0, 'b'},
                                         {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *path = commands_default_config();
    report_rows rows = {0};
    int as_json = 0, o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': path = optarg; break;
        case 'j': as_json = 1; break;
        case 'b': {
            char tmp[64];
            snprintf(tmp, sizeof tmp, "%s", optarg);
            for (char *save = NULL, *t = strtok_r(tmp, ",", &save); t;
                 t = strtok_r(NULL, ",", &save)) {
                if (!strcmp(t, "locale")) {
                    rows.by_locale = 1;
                } else if (!strcmp(t, "segment")) {
                    rows.by_segment = 1;
                } else {
                    fprintf(stderr, "copystream report: --by takes locale and/or segment, "
                                    "not '%s'\n", t);
                    return 2;
                }
            }
            break;
        }
        case 'h': report_usage(stdout); return 0;
        default: report_usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        report_usage(stderr);
        return 2;
    }
    config *cfg = commands_load_config(path);
    if (!cfg) return 2;
    char err[512];
    int rc = 0;
    if (bandit_read_stats(cfg, report_collect, &rows, err, sizeof err) < 0) {
        fprintf(stderr, "copystream report: %s\n", err);
        rc = 1;
    } else if (rows.failed) {
        fprintf(stderr, "copystream report: out of memory\n");
        rc = 1;
    } else {
        qsort(rows.v, rows.n, sizeof *rows.v, report_row_cmp);
        report_print(&rows, as_json);
    }
    free(rows.v);
    config_free(cfg);
    return rc;
}
