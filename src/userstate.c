/* userstate.c -- one user's state, how inputs change it, and its hash form.
 *
 * The rules that give the state its meaning live here and nowhere else:
 * which source positions are already applied (the watermark), which event
 * ids are upstream duplicates, how affinities decay with event time and grow
 * with each event, what the bounded sequence and bought-items lists keep.
 * store.c moves the fields produced here to and from Redis; service.c decides
 * what to do with the outcome. No I/O and no wall clock: the same inputs on
 * the same state give the same state.
 *
 * Blobs are little-endian with a leading format version byte, so a later
 * release can read what an earlier one wrote. */
#include "userstate.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define US_BLOB_VERSION 1

void userstate_params_default(userstate_params *p) {
    memset(p, 0, sizeof *p);
    p->max_sequence = 200;
    p->max_categories = 32;
    p->max_attributes = 64;
    p->max_bought = 256;
    p->half_life_s = 604800.0;
    p->weight[EV_VIEW] = 1.0f;
    p->weight[EV_CLICK] = 1.5f;
    p->weight[EV_ADD_TO_CART] = 3.0f;
    p->weight[EV_PURCHASE] = 5.0f;
    p->weight[EV_SEARCH] = 0.5f;
    p->weight[EV_FAVORITE] = 2.0f;
    p->dedup_window_ms = 86400000;
    p->dedup_max_ids = 512;
}

void userstate_init(user_state *s) { memset(s, 0, sizeof *s); }

void userstate_clear(user_state *s) {
    free(s->seq);
    free(s->cats.v);
    free(s->attrs.v);
    free(s->bought);
    free(s->seen);
    free(s->wm);
    for (size_t i = 0; i < s->n_outbox; i++) buf_free(&s->outbox[i].msg);
    free(s->outbox);
    free(s->copyrecs);
    free(s->dismissed);
    free(s->promoted);
    userstate_init(s);
}

/* Grows *arr (of elem-sized items, capacity *cap) to hold need items. */
static int us_grow(void **arr, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 8;
    while (c < need) c *= 2;
    void *p = realloc(*arr, c * elem);
    if (!p) return -1;
    *arr = p;
    *cap = c;
    return 0;
}

#define US_GROW(arr, cap, need) us_grow((void **)&(arr), &(cap), (need), sizeof(*(arr)))

static int us_dup_array(void **dst, size_t *dst_cap, const void *src, size_t n, size_t elem) {
    *dst = NULL;
    *dst_cap = 0;
    if (!n) return 0;
    *dst = malloc(n * elem);
    if (!*dst) return -1;
    memcpy(*dst, src, n * elem);
    *dst_cap = n;
    return 0;
}

int userstate_copy(user_state *dst, const user_state *src) {
    *dst = *src;
    dst->seq = NULL;
    dst->cats.v = dst->attrs.v = NULL;
    dst->bought = NULL;
    dst->seen = NULL;
    dst->wm = NULL;
    dst->outbox = NULL;
    dst->n_outbox = dst->cap_outbox = 0;
    dst->copyrecs = NULL;
    dst->dismissed = NULL;
    dst->promoted = NULL;
    if (us_dup_array((void **)&dst->seq, &dst->cap_seq, src->seq, src->n_seq, sizeof *src->seq) ||
        us_dup_array((void **)&dst->cats.v, &dst->cats.cap, src->cats.v, src->cats.n,
                     sizeof *src->cats.v) ||
        us_dup_array((void **)&dst->attrs.v, &dst->attrs.cap, src->attrs.v, src->attrs.n,
                     sizeof *src->attrs.v) ||
        us_dup_array((void **)&dst->bought, &dst->cap_bought, src->bought, src->n_bought,
                     sizeof *src->bought) ||
        us_dup_array((void **)&dst->seen, &dst->cap_seen, src->seen, src->n_seen,
                     sizeof *src->seen) ||
        us_dup_array((void **)&dst->wm, &dst->cap_wm, src->wm, src->n_wm, sizeof *src->wm) ||
        us_dup_array((void **)&dst->copyrecs, &dst->cap_copyrecs, src->copyrecs, src->n_copyrecs,
                     sizeof *src->copyrecs) ||
        us_dup_array((void **)&dst->dismissed, &dst->cap_dismissed, src->dismissed,
                     src->n_dismissed, sizeof *src->dismissed) ||
        us_dup_array((void **)&dst->promoted, &dst->cap_promoted, src->promoted,
                     src->n_promoted, sizeof *src->promoted))
        goto err;
    for (size_t i = 0; i < src->n_outbox; i++) {
        const us_outbox *o = &src->outbox[i];
        if (userstate_outbox_add(dst, o->partition, o->offset, o->msg.p, o->msg.len) < 0)
            goto err;
        dst->outbox[dst->n_outbox - 1].fresh = o->fresh;
    }
    return 0;
err:
    userstate_clear(dst);
    return -1;
}

static int us_copy_affinities(us_affinities *dst, const us_affinities *src) {
    if (US_GROW(dst->v, dst->cap, src->n) < 0) return -1;
    if (src->n) memcpy(dst->v, src->v, src->n * sizeof *src->v);
    dst->n = src->n;
    dst->ref_s = src->ref_s;
    return 0;
}

int userstate_copy_prefs(user_state *dst, const user_state *src) {
    if (us_copy_affinities(&dst->cats, &src->cats) < 0 ||
        us_copy_affinities(&dst->attrs, &src->attrs) < 0 ||
        US_GROW(dst->bought, dst->cap_bought, src->n_bought) < 0 ||
        US_GROW(dst->dismissed, dst->cap_dismissed, src->n_dismissed) < 0 ||
        US_GROW(dst->promoted, dst->cap_promoted, src->n_promoted) < 0)
        return -1;
    if (src->n_promoted)
        memcpy(dst->promoted, src->promoted, src->n_promoted * sizeof *src->promoted);
    dst->n_promoted = src->n_promoted;
    if (src->n_bought) memcpy(dst->bought, src->bought, src->n_bought * sizeof *src->bought);
    dst->n_bought = src->n_bought;
    if (src->n_dismissed)
        memcpy(dst->dismissed, src->dismissed, src->n_dismissed * sizeof *src->dismissed);
    dst->n_dismissed = src->n_dismissed;
    memcpy(dst->locale, src->locale, sizeof dst->locale);
    return 0;
}

size_t userstate_bytes(const user_state *s) {
    size_t b = sizeof *s;
    b += s->cap_seq * sizeof *s->seq;
    b += (s->cats.cap + s->attrs.cap) * sizeof(us_affinity);
    b += s->cap_bought * sizeof *s->bought;
    b += s->cap_seen * sizeof *s->seen;
    b += s->cap_wm * sizeof *s->wm;
    b += s->cap_outbox * sizeof *s->outbox;
    b += s->cap_copyrecs * sizeof *s->copyrecs;
    b += s->cap_dismissed * sizeof *s->dismissed;
    b += s->cap_promoted * sizeof *s->promoted;
    for (size_t i = 0; i < s->n_outbox; i++) b += s->outbox[i].msg.cap;
    return b;
}

/* ---- watermarks ---------------------------------------------------------- */

int64_t userstate_watermark(const user_state *s, uint8_t topic, int32_t partition) {
    for (size_t i = 0; i < s->n_wm; i++)
        if (s->wm[i].topic == topic && s->wm[i].partition == partition) return s->wm[i].offset;
    return -1;
}

static int us_set_watermark(user_state *s, uint8_t topic, int32_t partition, int64_t offset) {
    for (size_t i = 0; i < s->n_wm; i++) {
        if (s->wm[i].topic == topic && s->wm[i].partition == partition) {
            s->wm[i].offset = offset;
            s->dirty |= US_DIRTY_WM;
            return 0;
        }
    }
    if (US_GROW(s->wm, s->cap_wm, s->n_wm + 1) < 0) return -1;
    s->wm[s->n_wm++] = (us_watermark){topic, partition, offset};
    s->dirty |= US_DIRTY_WM;
    return 0;
}

/* ---- affinities ---------------------------------------------------------- */

static float us_decay(uint32_t from_s, uint32_t to_s, double half_life_s) {
    if (to_s <= from_s) return 1.0f;
    return (float)exp2(-((double)to_s - (double)from_s) / half_life_s);
}

float userstate_affinity_at(const us_affinities *v, uint64_t key, uint32_t at_s,
                            double half_life_s) {
    for (size_t i = 0; i < v->n; i++)
        if (v->v[i].key == key) return v->v[i].score * us_decay(v->ref_s, at_s, half_life_s);
    return 0.0f;
}

/* Adds weight w at event time ts_s to key, keeping at most max entries,
 * strongest first. The vector is decayed forward to the newest event time;
 * an event older than that adds its weight already decayed, so the result
 * does not depend on the order events of one batch arrive in beyond float
 * rounding. Must not fail half-way: room is made before anything changes. */
static int us_affinity_add(us_affinities *a, uint64_t key, float w, uint32_t ts_s, size_t max,
                           double half_life_s) {
    if (max == 0 || w <= 0.0f) return 0;
    if (US_GROW(a->v, a->cap, a->n + 1) < 0) return -1;
    if (a->n == 0) a->ref_s = ts_s;
    if (ts_s > a->ref_s) {
        float f = us_decay(a->ref_s, ts_s, half_life_s);
        for (size_t i = 0; i < a->n; i++) a->v[i].score *= f;
        a->ref_s = ts_s;
    } else {
        w *= us_decay(ts_s, a->ref_s, half_life_s);
    }
    size_t i = 0;
    while (i < a->n && a->v[i].key != key) i++;
    if (i == a->n) {
        if (a->n == max) {
            /* Full: the newcomer replaces the weakest only if it is stronger. */
            if (a->v[a->n - 1].score >= w) return 0;
            i = a->n - 1;
        } else {
            a->n++;
        }
        a->v[i] = (us_affinity){key, w};
    } else {
        a->v[i].score += w;
    }
    /* Only entry i grew: bubble it towards the front. Ties keep the lower
     * key first so the order never depends on arrival order. */
    while (i > 0 && (a->v[i - 1].score < a->v[i].score ||
                     (a->v[i - 1].score == a->v[i].score && a->v[i - 1].key > a->v[i].key))) {
        us_affinity t = a->v[i - 1];
        a->v[i - 1] = a->v[i];
        a->v[i] = t;
        i--;
    }
    return 0;
}

/* ---- applying inputs ----------------------------------------------------- */

static uint32_t us_seconds(int64_t ms) {
    if (ms <= 0) return 0;
    int64_t s = ms / 1000;
    return s > (int64_t)UINT32_MAX ? UINT32_MAX : (uint32_t)s;
}

int userstate_has_bought(const user_state *s, uint64_t item) {
    for (size_t i = 0; i < s->n_bought; i++)
        if (s->bought[i] == item) return 1;
    return 0;
}

int userstate_is_repeat(const user_state *s, uint64_t item, uint32_t at_s) {
    for (size_t i = 0; i < s->n_promoted; i++)
        if (s->promoted[i].item == item && s->promoted[i].until_s > at_s) return 1;
    return 0;
}

int userstate_excluded(const user_state *s, uint64_t item, uint32_t at_s) {
    for (size_t i = 0; i < s->n_dismissed; i++)
        if (s->dismissed[i].item == item && s->dismissed[i].until_s > at_s) return 1;
    return userstate_has_bought(s, item) || userstate_is_repeat(s, item, at_s);
}

/* Is id an upstream duplicate? If not, remembers it. The remembered ids are
 * pruned to the window (relative to the newest) and to max_ids. */
static int us_seen_check(user_state *s, const userstate_params *p, uint64_t id, uint32_t ts_s,
                         int *dup) {
    *dup = 0;
    if (p->dedup_window_ms <= 0 || p->dedup_max_ids == 0) return 0;
    uint32_t window_s = (uint32_t)(p->dedup_window_ms / 1000);
    for (size_t i = 0; i < s->n_seen; i++) {
        if (s->seen[i].id != id) continue;
        uint32_t d = s->seen[i].ts_s > ts_s ? s->seen[i].ts_s - ts_s : ts_s - s->seen[i].ts_s;
        if (d <= window_s) {
            *dup = 1;
            return 0;
        }
    }
    if (US_GROW(s->seen, s->cap_seen, s->n_seen + 1) < 0) return -1;
    s->seen[s->n_seen++] = (us_seen){id, ts_s};
    uint32_t newest = 0;
    for (size_t i = 0; i < s->n_seen; i++)
        if (s->seen[i].ts_s > newest) newest = s->seen[i].ts_s;
    size_t keep = 0;
    size_t drop_front = s->n_seen > p->dedup_max_ids ? s->n_seen - p->dedup_max_ids : 0;
    for (size_t i = 0; i < s->n_seen; i++) {
        if (i < drop_front) continue;
        if (newest - s->seen[i].ts_s > window_s && newest >= s->seen[i].ts_s) continue;
        s->seen[keep++] = s->seen[i];
    }
    s->n_seen = keep;
    s->dirty |= US_DIRTY_SEEN;
    return 0;
}

/* Makes sure every array an event may grow has room, so that applying it
 * cannot fail half-way. */
static int us_reserve_for_event(user_state *s, const userstate_params *p, size_t n_attrs) {
    if (US_GROW(s->seq, s->cap_seq, s->n_seq + 1) < 0) return -1;
    if (US_GROW(s->bought, s->cap_bought, s->n_bought + 1) < 0) return -1;
    if (US_GROW(s->cats.v, s->cats.cap, s->cats.n + 1) < 0) return -1;
    if (US_GROW(s->attrs.v, s->attrs.cap, s->attrs.n + n_attrs + 1) < 0) return -1;
    if (US_GROW(s->wm, s->cap_wm, s->n_wm + 1) < 0) return -1;
    if (p->dedup_max_ids && US_GROW(s->seen, s->cap_seen, s->n_seen + 1) < 0) return -1;
    return 0;
}

int userstate_apply_click(user_state *s, const userstate_params *p, const click_event *e,
                          const uint64_t *attr_ids, size_t n_attrs, int32_t partition,
                          int64_t offset) {
    if (offset <= userstate_watermark(s, US_TOPIC_CLICKSTREAM, partition))
        return US_ALREADY_APPLIED;
    if (us_reserve_for_event(s, p, n_attrs) < 0) return -1;
    uint32_t ts_s = us_seconds(e->ts_ms);
    int dup;
    if (us_seen_check(s, p, util_hash(e->event_id), ts_s, &dup) < 0) return -1;
    us_set_watermark(s, US_TOPIC_CLICKSTREAM, partition, offset); /* room reserved */
    if (dup) {
        s->duplicates++;
        s->dirty |= US_DIRTY_COUNTS;
        return US_DUPLICATE;
    }

    uint64_t item = e->item_id && e->item_id[0] ? util_hash(e->item_id) : 0;
    if (item && p->max_sequence) {
        if (s->n_seq == p->max_sequence) {
            memmove(s->seq, s->seq + 1, (s->n_seq - 1) * sizeof *s->seq);
            s->n_seq--;
        }
        s->seq[s->n_seq++] = (us_event){item, ts_s, (uint8_t)e->type};
        s->seq_total++;
        s->dirty |= US_DIRTY_SEQ;
    }

    float w = p->weight[e->type];
    if (e->category && e->category[0]) {
        us_affinity_add(&s->cats, util_hash(e->category), w, ts_s, p->max_categories,
                        p->half_life_s);
        s->dirty |= US_DIRTY_CATS;
    }
    for (size_t i = 0; i < n_attrs; i++) {
        /* Room for one more was reserved per attribute above. */
        us_affinity_add(&s->attrs, attr_ids[i], w, ts_s, p->max_attributes, p->half_life_s);
        s->dirty |= US_DIRTY_ATTRS;
    }

    if (e->type == EV_PURCHASE && item && p->max_bought) {
        size_t i = 0;
        while (i < s->n_bought && s->bought[i] != item) i++;
        if (i < s->n_bought) {
            memmove(s->bought + i, s->bought + i + 1, (s->n_bought - i - 1) * sizeof *s->bought);
            s->n_bought--;
        } else if (s->n_bought == p->max_bought) {
            memmove(s->bought, s->bought + 1, (s->n_bought - 1) * sizeof *s->bought);
            s->n_bought--;
        }
        s->bought[s->n_bought++] = item;
        s->dirty |= US_DIRTY_BOUGHT;
    }

    s->events[e->type]++;
    if (!s->first_ms || e->ts_ms < s->first_ms) s->first_ms = e->ts_ms;
    if (e->ts_ms > s->last_ms) s->last_ms = e->ts_ms;
    if (e->locale && e->locale[0] && strlen(e->locale) < sizeof s->locale &&
        strcmp(s->locale, e->locale) != 0)
        strcpy(s->locale, e->locale);
    s->dirty |= US_DIRTY_COUNTS | US_DIRTY_META;
    return US_APPLIED;
}

int userstate_apply_reaction(user_state *s, const userstate_params *p, const reaction *r,
                             int32_t partition, int64_t offset) {
    if (offset <= userstate_watermark(s, US_TOPIC_REACTIONS, partition))
        return US_ALREADY_APPLIED;
    if (US_GROW(s->wm, s->cap_wm, s->n_wm + 1) < 0) return -1;
    int dup;
    if (us_seen_check(s, p, util_hash(r->reaction_id), us_seconds(r->ts_ms), &dup) < 0) return -1;
    us_set_watermark(s, US_TOPIC_REACTIONS, partition, offset);
    if (dup) {
        s->duplicates++;
    } else {
        s->reactions[r->type]++;
    }
    s->dirty |= US_DIRTY_COUNTS;
    return dup ? US_DUPLICATE : US_APPLIED;
}

int userstate_apply_trigger(user_state *s, const userstate_params *p, const char *trigger_id,
                            int64_t ts_ms, int32_t partition, int64_t offset) {
    if (offset <= userstate_watermark(s, US_TOPIC_TRIGGERS, partition)) return US_ALREADY_APPLIED;
    if (US_GROW(s->wm, s->cap_wm, s->n_wm + 1) < 0) return -1;
    int dup;
    if (us_seen_check(s, p, util_hash(trigger_id), us_seconds(ts_ms), &dup) < 0) return -1;
    us_set_watermark(s, US_TOPIC_TRIGGERS, partition, offset);
    if (dup) {
        s->duplicates++;
        s->dirty |= US_DIRTY_COUNTS;
    }
    return dup ? US_DUPLICATE : US_APPLIED;
}

/* ---- reactions' effects: copy records, dismissals, consent ---------------- */

int userstate_copyrec_add(user_state *s, const us_copyrec *r, size_t max, int64_t window_ms) {
    if (max == 0) return 0;
    if (US_GROW(s->copyrecs, s->cap_copyrecs, s->n_copyrecs + 1) < 0) return -1;
    size_t keep = 0;
    for (size_t i = 0; i < s->n_copyrecs; i++)
        if (s->copyrecs[i].partition != r->partition || s->copyrecs[i].offset != r->offset)
            s->copyrecs[keep++] = s->copyrecs[i];
    s->copyrecs[keep++] = *r;
    int64_t newest = r->ts_ms;
    for (size_t i = 0; i < keep; i++)
        if (s->copyrecs[i].ts_ms > newest) newest = s->copyrecs[i].ts_ms;
    /* Past the window nothing can be attributed to a record any more. */
    size_t n = 0, drop = keep > max ? keep - max : 0;
    for (size_t i = 0; i < keep; i++)
        if (i >= drop && newest - s->copyrecs[i].ts_ms <= window_ms)
            s->copyrecs[n++] = s->copyrecs[i];
    s->n_copyrecs = n;
    s->dirty |= US_DIRTY_COPYRECS;
    return 0;
}

const us_copyrec *userstate_copyrec_find(const user_state *s, int32_t partition, int64_t offset) {
    for (size_t i = 0; i < s->n_copyrecs; i++)
        if (s->copyrecs[i].partition == partition && s->copyrecs[i].offset == offset)
            return &s->copyrecs[i];
    return NULL;
}

const us_copyrec *userstate_copyrec_last(const user_state *s, int64_t at_ms) {
    const us_copyrec *best = NULL;
    for (size_t i = 0; i < s->n_copyrecs; i++)
        if (s->copyrecs[i].ts_ms <= at_ms && (!best || s->copyrecs[i].ts_ms >= best->ts_ms))
            best = &s->copyrecs[i];
    return best;
}

/* Hides item until until_s in the list *v (of *n, capacity *cap): a later
 * until wins for an item hidden twice; entries expired at now_s are
 * dropped, and beyond max the ones expiring first. */
static int us_hide(us_dismissed **v, size_t *n, size_t *cap, uint64_t item, uint32_t until_s,
                   uint32_t now_s, size_t max) {
    if (us_grow((void **)v, cap, *n + 1, sizeof **v) < 0) return -1;
    us_dismissed *a = *v;
    size_t i = 0;
    while (i < *n && a[i].item != item) i++;
    if (i == *n) a[(*n)++] = (us_dismissed){item, until_s};
    else if (a[i].until_s < until_s) a[i].until_s = until_s;
    size_t keep = 0;
    for (size_t k = 0; k < *n; k++)
        if (a[k].until_s > now_s) a[keep++] = a[k];
    *n = keep;
    while (*n > max) { /* drop the one expiring first */
        size_t first = 0;
        for (size_t k = 1; k < *n; k++)
            if (a[k].until_s < a[first].until_s) first = k;
        a[first] = a[--*n];
    }
    return 0;
}

int userstate_dismiss(user_state *s, uint64_t item, uint32_t until_s, uint32_t now_s, size_t max) {
    if (max == 0) return 0;
    if (us_hide(&s->dismissed, &s->n_dismissed, &s->cap_dismissed, item, until_s, now_s, max) < 0)
        return -1;
    s->dirty |= US_DIRTY_OPTOUT;
    return 0;
}

int userstate_promoted(user_state *s, uint64_t item, uint32_t until_s, uint32_t now_s,
                       size_t max) {
    if (max == 0 || until_s <= now_s) return 0;
    if (us_hide(&s->promoted, &s->n_promoted, &s->cap_promoted, item, until_s, now_s, max) < 0)
        return -1;
    s->dirty |= US_DIRTY_POLICY;
    return 0;
}

void userstate_revoke_consent(user_state *s, int64_t ts_ms) {
    if (ts_ms <= 0) ts_ms = 1; /* 0 means "consent stands" */
    if (s->unsub_ms && s->unsub_ms <= ts_ms) return;
    s->unsub_ms = ts_ms;
    s->dirty |= US_DIRTY_OPTOUT;
}

/* ---- outbox -------------------------------------------------------------- */

int userstate_outbox_add(user_state *s, int32_t partition, int64_t offset, const void *msg,
                         size_t len) {
    if (US_GROW(s->outbox, s->cap_outbox, s->n_outbox + 1) < 0) return -1;
    us_outbox *o = &s->outbox[s->n_outbox];
    memset(o, 0, sizeof *o);
    if (buf_append(&o->msg, msg, len) < 0) return -1;
    o->partition = partition;
    o->offset = offset;
    o->fresh = 1;
    s->n_outbox++;
    s->dirty |= US_DIRTY_OUTBOX;
    return 0;
}

const us_outbox *userstate_outbox_find(const user_state *s, int32_t partition, int64_t offset) {
    for (size_t i = 0; i < s->n_outbox; i++)
        if (s->outbox[i].partition == partition && s->outbox[i].offset == offset)
            return &s->outbox[i];
    return NULL;
}

void userstate_outbox_trim(user_state *s, int32_t partition, int64_t below_offset) {
    size_t keep = 0;
    for (size_t i = 0; i < s->n_outbox; i++) {
        us_outbox *o = &s->outbox[i];
        if (o->partition == partition && o->offset < below_offset) {
            buf_free(&o->msg);
            continue;
        }
        s->outbox[keep++] = *o;
    }
    s->n_outbox = keep;
}

void userstate_outbox_field(int32_t partition, int64_t offset, char out[48]) {
    snprintf(out, 48, "o.%" PRId32 ".%" PRId64, partition, offset);
}

/* ---- hash fields --------------------------------------------------------- */

void userstate_fields_reset(userstate_fields *f) {
    for (size_t i = 0; i < f->n; i++) buf_reset(&f->v[i].value);
    f->n = 0;
}

void userstate_fields_free(userstate_fields *f) {
    for (size_t i = 0; i < f->cap; i++) buf_free(&f->v[i].value);
    free(f->v);
    memset(f, 0, sizeof *f);
}

/* Starts a new field called name; returns its value buffer or NULL. */
static buf *us_field_new(userstate_fields *f, const char *name) {
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 32;
        us_field *v = realloc(f->v, cap * sizeof *v);
        if (!v) return NULL;
        memset(v + f->cap, 0, (cap - f->cap) * sizeof *v);
        f->v = v;
        f->cap = cap;
    }
    us_field *fl = &f->v[f->n++];
    snprintf(fl->name, sizeof fl->name, "%s", name);
    buf_reset(&fl->value);
    return &fl->value;
}

static int us_field_i64(userstate_fields *f, const char *name, int64_t v) {
    buf *b = us_field_new(f, name);
    return b ? buf_printf(b, "%" PRId64, v) : -1;
}

static int us_put_affinities(buf *b, const us_affinities *a) {
    int rc = buf_put_u8(b, US_BLOB_VERSION) | buf_put_u32le(b, a->ref_s);
    for (size_t i = 0; i < a->n && !rc; i++)
        rc = buf_put_u64le(b, a->v[i].key) | buf_put_f32le(b, a->v[i].score);
    return rc ? -1 : 0;
}

int userstate_encode(const user_state *s, unsigned which, userstate_fields *out) {
    buf *b;
    char name[48];
    if (which & US_DIRTY_SEQ) {
        if (!(b = us_field_new(out, "seq")) || buf_put_u8(b, US_BLOB_VERSION)) return -1;
        for (size_t i = 0; i < s->n_seq; i++)
            if (buf_put_u64le(b, s->seq[i].item) || buf_put_u32le(b, s->seq[i].ts_s) ||
                buf_put_u8(b, s->seq[i].type))
                return -1;
        if (us_field_i64(out, "sq", (int64_t)s->seq_total)) return -1;
    }
    if (which & US_DIRTY_CATS)
        if (!(b = us_field_new(out, "cat")) || us_put_affinities(b, &s->cats)) return -1;
    if (which & US_DIRTY_ATTRS)
        if (!(b = us_field_new(out, "attr")) || us_put_affinities(b, &s->attrs)) return -1;
    if (which & US_DIRTY_BOUGHT) {
        if (!(b = us_field_new(out, "buy")) || buf_put_u8(b, US_BLOB_VERSION)) return -1;
        for (size_t i = 0; i < s->n_bought; i++)
            if (buf_put_u64le(b, s->bought[i])) return -1;
    }
    if (which & US_DIRTY_SEEN) {
        if (!(b = us_field_new(out, "seen")) || buf_put_u8(b, US_BLOB_VERSION)) return -1;
        for (size_t i = 0; i < s->n_seen; i++)
            if (buf_put_u64le(b, s->seen[i].id) || buf_put_u32le(b, s->seen[i].ts_s)) return -1;
    }
    if (which & US_DIRTY_COUNTS) {
        for (int t = 0; t < EV__COUNT; t++) {
            if (!s->events[t]) continue;
            snprintf(name, sizeof name, "n.%s", event_type_name((event_type)t));
            if (us_field_i64(out, name, (int64_t)s->events[t])) return -1;
        }
        for (int t = 0; t < RX__COUNT; t++) {
            if (!s->reactions[t]) continue;
            snprintf(name, sizeof name, "r.%s", reaction_type_name((reaction_type)t));
            if (us_field_i64(out, name, (int64_t)s->reactions[t])) return -1;
        }
        if (s->duplicates && us_field_i64(out, "dup", (int64_t)s->duplicates)) return -1;
    }
    if (which & US_DIRTY_META) {
        if (us_field_i64(out, "t0", s->first_ms) || us_field_i64(out, "t1", s->last_ms) ||
            us_field_i64(out, "lc", s->last_copy_ms))
            return -1;
        if (s->locale[0] && (!(b = us_field_new(out, "loc")) || buf_puts(b, s->locale)))
            return -1;
    }
    if (which & US_DIRTY_WM) {
        for (size_t i = 0; i < s->n_wm; i++) {
            snprintf(name, sizeof name, "w.%c.%" PRId32,
                     s->wm[i].topic == US_TOPIC_REACTIONS  ? 'r'
                     : s->wm[i].topic == US_TOPIC_TRIGGERS ? 't'
                                                           : 'c',
                     s->wm[i].partition);
            if (us_field_i64(out, name, s->wm[i].offset)) return -1;
        }
    }
    if (which & US_DIRTY_COPYRECS) {
        if (!(b = us_field_new(out, "cp")) || buf_put_u8(b, US_BLOB_VERSION)) return -1;
        for (size_t i = 0; i < s->n_copyrecs; i++) {
            const us_copyrec *r = &s->copyrecs[i];
            if (buf_put_u32le(b, (uint32_t)r->partition) || buf_put_u64le(b, (uint64_t)r->offset) ||
                buf_put_u64le(b, (uint64_t)r->ts_ms) || buf_put_u64le(b, r->arm) ||
                buf_put_u64le(b, r->item) || buf_put_u8(b, r->segment) || buf_put_u8(b, r->flags))
                return -1;
        }
    }
    if (which & US_DIRTY_OPTOUT) {
        if (!(b = us_field_new(out, "dis")) || buf_put_u8(b, US_BLOB_VERSION)) return -1;
        for (size_t i = 0; i < s->n_dismissed; i++)
            if (buf_put_u64le(b, s->dismissed[i].item) || buf_put_u32le(b, s->dismissed[i].until_s))
                return -1;
        if (s->unsub_ms && us_field_i64(out, "ns", s->unsub_ms)) return -1;
    }
    if (which & US_DIRTY_POLICY) {
        if (!(b = us_field_new(out, "fq")) || buf_put_u8(b, US_BLOB_VERSION) ||
            buf_put_u32le(b, s->freq.hour) || buf_put_u32le(b, s->freq.n_hour) ||
            buf_put_u32le(b, s->freq.day) || buf_put_u32le(b, s->freq.n_day))
            return -1;
        if (!(b = us_field_new(out, "rp")) || buf_put_u8(b, US_BLOB_VERSION)) return -1;
        for (size_t i = 0; i < s->n_promoted; i++)
            if (buf_put_u64le(b, s->promoted[i].item) || buf_put_u32le(b, s->promoted[i].until_s))
                return -1;
    }
    if (which & US_DIRTY_OUTBOX) {
        for (size_t i = 0; i < s->n_outbox; i++) {
            if (!s->outbox[i].fresh) continue;
            userstate_outbox_field(s->outbox[i].partition, s->outbox[i].offset, name);
            if (!(b = us_field_new(out, name)) ||
                buf_append(b, s->outbox[i].msg.p, s->outbox[i].msg.len))
                return -1;
        }
    }
    return 0;
}

void userstate_mark_clean(user_state *s) {
    s->dirty = 0;
    for (size_t i = 0; i < s->n_outbox; i++) s->outbox[i].fresh = 0;
}

/* Parses a whole decimal int64 from a counted string. */
static int us_parse_i64(const char *v, size_t len, int64_t *out) {
    char tmp[32];
    if (len == 0 || len >= sizeof tmp) return -1;
    memcpy(tmp, v, len);
    tmp[len] = '\0';
    char *end;
    long long x = strtoll(tmp, &end, 10);
    if (*end) return -1;
    *out = x;
    return 0;
}

static int us_get_affinities(us_affinities *a, const uint8_t *p, size_t len) {
    size_t pos = 1;
    if ((len - 5) % 12 || buf_get_u32le(p, len, &pos, &a->ref_s)) return -1;
    size_t n = (len - 5) / 12;
    if (US_GROW(a->v, a->cap, n) < 0) return -1;
    for (size_t i = 0; i < n; i++)
        if (buf_get_u64le(p, len, &pos, &a->v[i].key) || buf_get_f32le(p, len, &pos, &a->v[i].score))
            return -1;
    a->n = n;
    return 0;
}

int userstate_decode_field(user_state *s, const char *name, size_t name_len, const char *value,
                           size_t value_len, char *errstr, size_t errlen) {
    const uint8_t *p = (const uint8_t *)value;
    size_t len = value_len, pos = 1;
    char fname[48];
    if (name_len >= sizeof fname) return 0; /* not one of ours */
    memcpy(fname, name, name_len);
    fname[name_len] = '\0';
    int is_blob = !strcmp(fname, "seq") || !strcmp(fname, "cat") || !strcmp(fname, "attr") ||
                  !strcmp(fname, "buy") || !strcmp(fname, "seen") || !strcmp(fname, "cp") ||
                  !strcmp(fname, "dis") || !strcmp(fname, "fq") || !strcmp(fname, "rp");
    if (is_blob && (len < 1 || p[0] != US_BLOB_VERSION))
        return util_err(errstr, errlen, "field %s: unknown blob version", fname);

    if (!strcmp(fname, "seq")) {
        if ((len - 1) % 13) goto bad;
        size_t n = (len - 1) / 13;
        if (US_GROW(s->seq, s->cap_seq, n) < 0) goto oom;
        for (size_t i = 0; i < n; i++) {
            uint8_t t;
            if (buf_get_u64le(p, len, &pos, &s->seq[i].item) ||
                buf_get_u32le(p, len, &pos, &s->seq[i].ts_s) || buf_get_u8(p, len, &pos, &t) ||
                t >= EV__COUNT)
                goto bad;
            s->seq[i].type = t;
        }
        s->n_seq = n;
    } else if (!strcmp(fname, "cat")) {
        if (len < 5 || us_get_affinities(&s->cats, p, len)) goto bad;
    } else if (!strcmp(fname, "attr")) {
        if (len < 5 || us_get_affinities(&s->attrs, p, len)) goto bad;
    } else if (!strcmp(fname, "buy")) {
        if ((len - 1) % 8) goto bad;
        size_t n = (len - 1) / 8;
        if (US_GROW(s->bought, s->cap_bought, n) < 0) goto oom;
        for (size_t i = 0; i < n; i++)
            if (buf_get_u64le(p, len, &pos, &s->bought[i])) goto bad;
        s->n_bought = n;
    } else if (!strcmp(fname, "seen")) {
        if ((len - 1) % 12) goto bad;
        size_t n = (len - 1) / 12;
        if (US_GROW(s->seen, s->cap_seen, n) < 0) goto oom;
        for (size_t i = 0; i < n; i++)
            if (buf_get_u64le(p, len, &pos, &s->seen[i].id) ||
                buf_get_u32le(p, len, &pos, &s->seen[i].ts_s))
                goto bad;
        s->n_seen = n;
    } else if (!strcmp(fname, "cp")) {
        if ((len - 1) % 38) goto bad;
        size_t n = (len - 1) / 38;
        if (US_GROW(s->copyrecs, s->cap_copyrecs, n) < 0) goto oom;
        for (size_t i = 0; i < n; i++) {
            us_copyrec *r = &s->copyrecs[i];
            uint32_t part;
            uint64_t off, ts;
            if (buf_get_u32le(p, len, &pos, &part) || buf_get_u64le(p, len, &pos, &off) ||
                buf_get_u64le(p, len, &pos, &ts) || buf_get_u64le(p, len, &pos, &r->arm) ||
                buf_get_u64le(p, len, &pos, &r->item) || buf_get_u8(p, len, &pos, &r->segment) ||
                buf_get_u8(p, len, &pos, &r->flags) || part > INT32_MAX)
                goto bad;
            r->partition = (int32_t)part;
            r->offset = (int64_t)off;
            r->ts_ms = (int64_t)ts;
        }
        s->n_copyrecs = n;
    } else if (!strcmp(fname, "dis")) {
        if ((len - 1) % 12) goto bad;
        size_t n = (len - 1) / 12;
        if (US_GROW(s->dismissed, s->cap_dismissed, n) < 0) goto oom;
        for (size_t i = 0; i < n; i++)
            if (buf_get_u64le(p, len, &pos, &s->dismissed[i].item) ||
                buf_get_u32le(p, len, &pos, &s->dismissed[i].until_s))
                goto bad;
        s->n_dismissed = n;
    } else if (!strcmp(fname, "fq")) {
        if (len != 17 || buf_get_u32le(p, len, &pos, &s->freq.hour) ||
            buf_get_u32le(p, len, &pos, &s->freq.n_hour) ||
            buf_get_u32le(p, len, &pos, &s->freq.day) || buf_get_u32le(p, len, &pos, &s->freq.n_day))
            goto bad;
    } else if (!strcmp(fname, "rp")) {
        if ((len - 1) % 12) goto bad;
        size_t n = (len - 1) / 12;
        if (US_GROW(s->promoted, s->cap_promoted, n) < 0) goto oom;
        for (size_t i = 0; i < n; i++)
            if (buf_get_u64le(p, len, &pos, &s->promoted[i].item) ||
                buf_get_u32le(p, len, &pos, &s->promoted[i].until_s))
                goto bad;
        s->n_promoted = n;
    } else if (!strcmp(fname, "ns")) {
        int64_t v;
        if (us_parse_i64(value, len, &v) || v <= 0) goto bad;
        s->unsub_ms = v;
    } else if (fname[0] == 'n' && fname[1] == '.') {
        int t = event_type_parse(fname + 2);
        int64_t v;
        if (t < 0) return 0;
        if (us_parse_i64(value, len, &v) || v < 0) goto bad;
        s->events[t] = (uint64_t)v;
    } else if (fname[0] == 'r' && fname[1] == '.') {
        int64_t v;
        for (int t = 0; t < RX__COUNT; t++) {
            if (strcmp(fname + 2, reaction_type_name((reaction_type)t))) continue;
            if (us_parse_i64(value, len, &v) || v < 0) goto bad;
            s->reactions[t] = (uint64_t)v;
        }
    } else if (!strcmp(fname, "sq")) {
        int64_t v;
        if (us_parse_i64(value, len, &v) || v < 0) goto bad;
        s->seq_total = (uint64_t)v;
    } else if (!strcmp(fname, "dup")) {
        int64_t v;
        if (us_parse_i64(value, len, &v) || v < 0) goto bad;
        s->duplicates = (uint64_t)v;
    } else if (!strcmp(fname, "t0") || !strcmp(fname, "t1") || !strcmp(fname, "lc")) {
        int64_t v;
        if (us_parse_i64(value, len, &v)) goto bad;
        *(fname[0] == 'l' ? &s->last_copy_ms : fname[1] == '0' ? &s->first_ms : &s->last_ms) = v;
    } else if (!strcmp(fname, "loc")) {
        if (len >= sizeof s->locale) goto bad;
        memcpy(s->locale, value, len);
        s->locale[len] = '\0';
    } else if (fname[0] == 'w' && fname[1] == '.' &&
               (fname[2] == 'c' || fname[2] == 'r' || fname[2] == 't') && fname[3] == '.') {
        int64_t part, off;
        if (us_parse_i64(fname + 4, strlen(fname + 4), &part) || part < 0 || part > INT32_MAX ||
            us_parse_i64(value, len, &off))
            goto bad;
        uint8_t topic = fname[2] == 'r'   ? US_TOPIC_REACTIONS
                        : fname[2] == 't' ? US_TOPIC_TRIGGERS
                                          : US_TOPIC_CLICKSTREAM;
        if (us_set_watermark(s, topic, (int32_t)part, off) < 0)
            goto oom;
    } else if (fname[0] == 'o' && fname[1] == '.') {
        int64_t part, off;
        char *dot = strchr(fname + 2, '.');
        if (!dot) goto bad;
        *dot = '\0';
        if (us_parse_i64(fname + 2, strlen(fname + 2), &part) || part < 0 || part > INT32_MAX ||
            us_parse_i64(dot + 1, strlen(dot + 1), &off))
            goto bad;
        if (userstate_outbox_add(s, (int32_t)part, off, value, len) < 0) goto oom;
        s->outbox[s->n_outbox - 1].fresh = 0;
    }
    return 0;
bad:
    return util_err(errstr, errlen, "field %s: malformed value (%zu bytes)", fname, len);
oom:
    return util_err(errstr, errlen, "field %s: out of memory", fname);
}
