/* strategy.c -- what to promote and why; see strategy.h.
 *
 * The strategy runs for every event, and a candidate list can be huge (a broad
 * category, a common attribute), so each list contributes at most LIST_BUDGET
 * entries: its first ones in item_hash order. For a category list that loses
 * nothing that matters: its items carrying none of the user's attributes all
 * score the same, ties go to the lowest item_hash, which is where the list
 * starts, and items that do carry the user's attributes also arrive through
 * the attribute lists. For an attribute list the budget is a hash-ordered
 * sample, the same on every replay and every instance.
 *
 * The user's affinity vectors are copied once per call, decayed, into small
 * hash tables, so scoring a candidate costs a probe per attribute; an item
 * offered by several lists is scored once, the first time. */
#include "strategy.h"

#include <math.h>
#include <string.h>

enum {
    TOP_CATEGORIES = 5,       /* the user's categories whose items are candidates */
    TOP_ATTRIBUTES = 8,       /* the same for attributes */
    LIST_BUDGET = 256,        /* entries read from one candidate list */
    MAX_AFFINITIES = 512,     /* affinities read from one vector, strongest first */
};

/* Categories and attributes weaker than this share of the user's strongest
 * one supply no candidates of their own (they still count in scores). */
#define TOP_FLOOR 0.1

typedef struct {
    uint64_t key;
    double score;
} aff;

/* A user's affinities decayed to the event time, by key. Keys are uniform
 * hashes, so their low bits index an open-addressing table directly; 0 marks
 * an empty slot, and since an empty slot scores 0, looking up a key the user
 * has no affinity for (or 0, "no category") needs no special case. */
typedef struct {
    aff slot[2 * MAX_AFFINITIES];
    size_t mask;
} aff_table;

enum { INV_SQRT_N = 32 };

typedef struct {
    const user_state *u;
    const strategy_params *p;
    strategy_result *out;
    aff_table cats, attrs;
    double sqrt_n[INV_SQRT_N]; /* sqrt(n), computed once per call, not per candidate */
} ctx;

/* Items already offered in this call, by item_hash. Every call bumps the
 * generation instead of clearing the table; slots of older generations count
 * as empty. Larger than all lists together (13 x 256 offers), yet small
 * enough to stay in cache: a miss here would cost more than the scoring. */
enum { SEEN_SLOTS = 4096 };
typedef struct {
    uint64_t hash;
    uint32_t gen;
} seen_slot;
static _Thread_local seen_slot seen[SEEN_SLOTS];
static _Thread_local uint32_t seen_gen;

static void seen_reset(void) {
    if (++seen_gen == 0) { /* wrapped: old marks would look current */
        memset(seen, 0, sizeof seen);
        seen_gen = 1;
    }
}

/* Returns 1 if hash was offered before in this call, else marks it. */
static int seen_before(uint64_t hash) {
    size_t j = hash & (SEEN_SLOTS - 1);
    while (seen[j].gen == seen_gen) {
        if (seen[j].hash == hash) return 1;
        j = (j + 1) & (SEEN_SLOTS - 1);
    }
    seen[j] = (seen_slot){hash, seen_gen};
    return 0;
}

/* Decays in float exactly like userstate_affinity_at(), so that a score here
 * equals the one the rest of the service sees for the same key. */
static float decay(const us_affinities *v, uint32_t at_s, double half_life_s) {
    if (at_s <= v->ref_s) return 1.0f;
    return (float)exp2(-((double)at_s - (double)v->ref_s) / half_life_s);
}

static size_t aff_len(const us_affinities *v) {
    return v->n < MAX_AFFINITIES ? v->n : MAX_AFFINITIES; /* v is strongest first */
}

static void aff_load(aff_table *t, const us_affinities *v, float f) {
    size_t n = aff_len(v), cap = 16;
    while (cap < 2 * n) cap *= 2;
    t->mask = cap - 1;
    memset(t->slot, 0, cap * sizeof *t->slot);
    for (size_t i = 0; i < n; i++) {
        uint64_t key = v->v[i].key;
        size_t j = key & t->mask;
        while (t->slot[j].key && t->slot[j].key != key) j = (j + 1) & t->mask;
        if (key && !t->slot[j].key) t->slot[j] = (aff){key, v->v[i].score * f};
    }
}

static double aff_get(const aff_table *t, uint64_t key) {
    size_t j = key & t->mask;
    while (t->slot[j].key && t->slot[j].key != key) j = (j + 1) & t->mask;
    return t->slot[j].score;
}

/* The n (<= TOP_ATTRIBUTES) strongest positive affinities of v decayed by f,
 * strongest first, equal scores by key, leaving out those weaker than
 * TOP_FLOOR times the strongest: a passing glance at a category should not
 * cost a scan of its items, and an item there that matches what the user
 * really likes still arrives through the lists of those attributes.
 * Returns how many. */
static size_t aff_top(const us_affinities *v, float f, size_t n, aff *top) {
    size_t k = 0;
    double floor = 0;
    for (size_t i = 0; i < aff_len(v); i++)
        if (v->v[i].score * f > floor) floor = v->v[i].score * f;
    floor *= TOP_FLOOR;
    for (size_t i = 0; i < aff_len(v); i++) {
        aff a = {v->v[i].key, v->v[i].score * f};
        if (!(a.score > 0) || !a.key || a.score < floor) continue;
        size_t at = k;
        while (at > 0 && (a.score > top[at - 1].score ||
                          (a.score == top[at - 1].score && a.key < top[at - 1].key)))
            at--;
        if (at >= n) continue;
        if (k < n) k++;
        memmove(top + at + 1, top + at, (k - 1 - at) * sizeof *top);
        top[at] = a;
    }
    return k;
}

/* The strongest decayed affinity of v outside top[0..n), or 0. */
static double cat_left_out(const us_affinities *v, float f, const aff *top, size_t n) {
    for (size_t i = 0; i < aff_len(v); i++) { /* strongest first */
        size_t k = 0;
        while (k < n && top[k].key != v->v[i].key) k++;
        if (k == n) return v->v[i].score > 0 ? v->v[i].score * f : 0;
    }
    return 0;
}

/* The largest attribute term any item can have: an item's term is the sum
 * of the user's affinities over its m attributes over sqrt(m), at most the
 * sum of the m strongest over sqrt(m); the maximum over m bounds them all. */
static double attr_bound(const us_affinities *v, float f) {
    double sum = 0, best = 0;
    for (size_t i = 0; i < aff_len(v) && v->v[i].score > 0; i++) { /* strongest first */
        sum += v->v[i].score * f;
        double b = sum / sqrt((double)(i + 1));
        if (b > best) best = b;
    }
    return best;
}

static double item_score(const ctx *x, const catalog_entry *e) {
    size_t n = e->item.n_attrs;
    double dot = 0;
    for (size_t i = 0; i < n; i++) dot += aff_get(&x->attrs, e->attr_hashes[i]);
    if (n) dot /= n < INV_SQRT_N ? x->sqrt_n[n] : sqrt((double)n);
    return aff_get(&x->cats, e->category_hash) + dot;
}

static int pick_beats(double score, uint64_t hash, const strategy_pick *p) {
    return score > p->score || (score == p->score && hash < p->entry->item_hash);
}

/* Offers one candidate to the top-k kept in out->picks; each item once. The
 * bought check, a scan of the user's purchases, runs only for items that
 * would get in. */
static void consider(ctx *x, const catalog_entry *e) {
    strategy_result *out = x->out;
    if (seen_before(e->item_hash)) return;
    if (!e->item.available || e->item_hash == x->p->exclude_item) return;
    double score = item_score(x, e);
    size_t at = out->n_picks;
    while (at > 0 && pick_beats(score, e->item_hash, &out->picks[at - 1])) at--;
    if (at >= x->p->k) return;
    if (userstate_excluded(x->u, e->item_hash, x->p->at_s)) return;
    if (out->n_picks < x->p->k) out->n_picks++;
    memmove(out->picks + at + 1, out->picks + at, (out->n_picks - 1 - at) * sizeof *out->picks);
    out->picks[at] = (strategy_pick){e, NULL, score};
}

static void consider_list(ctx *x, const catalog_entry **cand, size_t total) {
    for (size_t i = 0; i < total && i < LIST_BUDGET; i++) consider(x, cand[i]);
}

static int reason_beats(double score, const char *id, const strategy_reason *r) {
    return score > r->score || (score == r->score && strcmp(id, r->attribute_id) < 0);
}

static void add_reasons(ctx *x, const catalog_entry *e) {
    strategy_result *out = x->out;
    size_t max = x->p->max_reasons;
    for (size_t i = 0; i < e->item.n_attrs; i++) {
        const item_attribute *a = &e->item.attrs[i];
        double score = aff_get(&x->attrs, e->attr_hashes[i]);
        const char *text = localized_find(a->phrases, a->n_phrases, x->p->locale);
        if (!(score > 0) || !text || !*text) continue;
        size_t at = out->n_reasons;
        while (at > 0 && reason_beats(score, a->id, &out->reasons[at - 1])) at--;
        if (at >= max) continue;
        int listed = 0; /* an attribute the item lists twice */
        for (size_t j = 0; j < out->n_reasons; j++)
            listed |= strcmp(out->reasons[j].attribute_id, a->id) == 0;
        if (listed) continue;
        if (out->n_reasons < max) out->n_reasons++;
        memmove(out->reasons + at + 1, out->reasons + at,
                (out->n_reasons - 1 - at) * sizeof *out->reasons);
        out->reasons[at] = (strategy_reason){"attribute_match", a->id, text, score};
    }
    /* Without a matching attribute, the category is the reason -- if the
     * user has shown any interest in it; otherwise there is none to give. */
    double cat = aff_get(&x->cats, e->category_hash);
    if (out->n_reasons == 0 && max > 0 && cat > 0) {
        out->reasons[0] = (strategy_reason){"category_affinity", NULL, "", cat};
        out->n_reasons = 1;
    }
}

static void finish(ctx *x);

int strategy_affinity(const catalog *c, const user_state *u, const strategy_params *p,
                      strategy_result *out) {
    if (p->k == 0 || p->k > STRATEGY_MAX_PICKS || p->max_reasons > STRATEGY_MAX_REASONS ||
        !p->locale || !(p->half_life_s > 0))
        return -1;
    out->n_picks = out->n_reasons = 0;

    ctx x = {.u = u, .p = p, .out = out};
    for (int i = 0; i < INV_SQRT_N; i++) x.sqrt_n[i] = sqrt((double)i);
    seen_reset();
    float cat_decay = decay(&u->cats, p->at_s, p->half_life_s);
    float attr_decay = decay(&u->attrs, p->at_s, p->half_life_s);
    aff_load(&x.cats, &u->cats, cat_decay);
    aff_load(&x.attrs, &u->attrs, attr_decay);

    const catalog_entry *cand[LIST_BUDGET];
    aff top[TOP_ATTRIBUTES];
    size_t n = aff_top(&u->cats, cat_decay, TOP_CATEGORIES, top);
    int whole = 1; /* every item of the scanned categories was considered */
    for (size_t i = 0; i < n; i++) {
        size_t total = catalog_items_in_category(c, top[i].key, cand, LIST_BUDGET);
        consider_list(&x, cand, total);
        whole &= total <= LIST_BUDGET;
    }
    /* Every item outside the scanned categories scores at most the best
     * category left out plus the best attribute term any item could have.
     * When the k-th pick already beats that, the attribute lists cannot
     * change the result, and for a user with clear interests that is the
     * common case. */
    if (!(whole && out->n_picks == p->k &&
          out->picks[p->k - 1].score > cat_left_out(&u->cats, cat_decay, top, n) +
                                           attr_bound(&u->attrs, attr_decay))) {
        n = aff_top(&u->attrs, attr_decay, TOP_ATTRIBUTES, top);
        for (size_t i = 0; i < n; i++)
            consider_list(&x, cand,
                          catalog_items_with_attribute(c, top[i].key, cand, LIST_BUDGET));
    }

    finish(&x);
    return (int)out->n_picks;
}

/* Titles in the locale for every pick, reasons for the top one. */
static void finish(ctx *x) {
    strategy_result *out = x->out;
    for (size_t i = 0; i < out->n_picks; i++) {
        const catalog_item *it = &out->picks[i].entry->item;
        out->picks[i].title = localized_find(it->titles, it->n_titles, x->p->locale);
    }
    out->n_reasons = 0;
    if (out->n_picks) add_reasons(x, out->picks[0].entry);
}

int strategy_explain(const user_state *u, const strategy_params *p, strategy_result *out) {
    if (p->max_reasons > STRATEGY_MAX_REASONS || !p->locale || !(p->half_life_s > 0)) return -1;
    ctx x = {.u = u, .p = p, .out = out};
    aff_load(&x.cats, &u->cats, decay(&u->cats, p->at_s, p->half_life_s));
    aff_load(&x.attrs, &u->attrs, decay(&u->attrs, p->at_s, p->half_life_s));
    finish(&x);
    return 0;
}
