/* range.c -- the input partitions of a bounded run and its progress; see
 * range.h. */
#define _GNU_SOURCE
#include "range.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct range {
    range_part *v;            /* [n] */
    size_t n, cap;
};

range *range_new(void) { return calloc(1, sizeof(range)); }

void range_free(range *r) {
    if (!r) return;
    for (size_t i = 0; i < r->n; i++) free(r->v[i].topic);
    free(r->v);
    free(r);
}

int range_add(range *r, const char *topic, uint8_t kind, int32_t partition, int64_t start,
              int64_t copy_from, int64_t end) {
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        range_part *v = realloc(r->v, cap * sizeof *v);
        if (!v) return -1;
        r->v = v;
        r->cap = cap;
    }
    char *t = strdup(topic);
    if (!t) return -1;
    if (start < 0) start = 0;
    if (end < start) end = start;
    if (copy_from < start) copy_from = start;
    if (copy_from > end) copy_from = end;
    r->v[r->n++] = (range_part){t, kind, partition, start, copy_from, end, start, start >= end,
                                0, 0};
    return 0;
}

size_t range_count(const range *r) { return r->n; }

range_part *range_at(range *r, size_t i) { return i < r->n ? &r->v[i] : NULL; }

range_part *range_find(range *r, uint8_t kind, int32_t partition) {
    for (size_t i = 0; i < r->n; i++)
        if (r->v[i].partition == partition && r->v[i].kind == kind) return &r->v[i];
    return NULL;
}

int range_copy_wanted(const range *r, uint8_t kind, int32_t partition, int64_t offset) {
    const range_part *p = range_find((range *)r, kind, partition);
    return p && offset >= p->copy_from && offset < p->end;
}

int range_past_end(range *r, uint8_t kind, int32_t partition, int64_t offset) {
    range_part *p = range_find(r, kind, partition);
    if (p && !p->started) {
        p->started = 1;
        /* The consumer starts at start, or at the log's start when retention
         * has deleted start since it was looked up. */
        if (offset > p->start) p->missing = (offset < p->end ? offset : p->end) - p->start;
    }
    /* A partition outside the range was never assigned; drop what it sends. */
    if (!p || offset >= p->end) {
        if (p) p->reached = 1;
        return 1;
    }
    return 0;
}

void range_eof(range *r, uint8_t kind, int32_t partition) {
    range_part *p = range_find(r, kind, partition);
    if (p) p->reached = 1;
}

void range_rewound(range *r, uint8_t kind, int32_t partition) {
    range_part *p = range_find(r, kind, partition);
    if (p && p->start < p->end) p->reached = 0;
}

void range_done(range *r, uint8_t kind, int32_t partition, int64_t next) {
    range_part *p = range_find(r, kind, partition);
    if (!p) return;
    if (next > p->end) next = p->end;
    if (next > p->next) p->next = next;
}

int range_all_reached(const range *r) {
    for (size_t i = 0; i < r->n; i++)
        if (!r->v[i].reached) return 0;
    return 1;
}

uint64_t range_missing(const range *r) {
    uint64_t t = 0;
    for (size_t i = 0; i < r->n; i++) t += (uint64_t)r->v[i].missing;
    return t;
}

uint64_t range_total(const range *r) {
    uint64_t t = 0;
    for (size_t i = 0; i < r->n; i++) t += (uint64_t)(r->v[i].end - r->v[i].start);
    return t;
}

uint64_t range_finished(const range *r) {
    uint64_t t = 0;
    for (size_t i = 0; i < r->n; i++) t += (uint64_t)(r->v[i].next - r->v[i].start);
    return t;
}

/* ---- progress -------------------------------------------------------------- */

void range_meter_update(range_meter *m, uint64_t done, uint64_t total, int64_t now_us) {
    if (!m->t0_us) {
        m->t0_us = m->last_us = now_us;
        m->last_done = done;
    }
    m->done = done;
    m->total = total;
    int64_t dt = now_us - m->last_us;
    if (dt < 1000000) return;
    double inst = (double)(done - m->last_done) * 1e6 / (double)dt;
    /* The first sample sets the rate; later ones move it a third of the way,
     * which settles within a few seconds of a change in pace. */
    m->rate = m->rate > 0 ? m->rate + (inst - m->rate) / 3 : inst;
    m->last_us = now_us;
    m->last_done = done;
}

double range_meter_eta_s(const range_meter *m) {
    if (m->done >= m->total) return 0;
    if (m->rate <= 0) return -1;
    return (double)(m->total - m->done) / m->rate;
}

/* "1:02:03", "2:03" or "--:--" into out. */
static void range_fmt_duration(double s, char *out, size_t outlen) {
    if (s < 0) {
        snprintf(out, outlen, "--:--");
        return;
    }
    uint64_t t = (uint64_t)(s + 0.5);
    if (t >= 3600)
        snprintf(out, outlen, "%" PRIu64 ":%02" PRIu64 ":%02" PRIu64, t / 3600, t / 60 % 60,
                 t % 60);
    else
        snprintf(out, outlen, "%" PRIu64 ":%02" PRIu64, t / 60, t % 60);
}

char *range_meter_format(const range_meter *m, const char *label, int tty, int width, char *out,
                         size_t outlen) {
    double frac = m->total ? (double)m->done / (double)m->total : 1.0;
    if (frac > 1) frac = 1;
    double eta = range_meter_eta_s(m);
    char left[32];
    range_fmt_duration(eta, left, sizeof left);
    if (!tty) {
        snprintf(out, outlen,
                 "%.1f%% done, %" PRIu64 " of %" PRIu64 " messages, %.0f messages/s, %s%s",
                 frac * 100, m->done, m->total, m->rate, eta < 0 ? "time left unknown" : left,
                 eta < 0 ? "" : " left");
        return out;
    }
    if (width < 1) width = 1;
    if (width > 200) width = 200;
    char bar[201];
    int fill = (int)(frac * width);
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    snprintf(out, outlen, "%s [%s] %5.1f%%  %" PRIu64 "/%" PRIu64 "  %.0f/s  ETA %s", label, bar,
             frac * 100, m->done, m->total, m->rate, left);
    return out;
}
