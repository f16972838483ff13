/* strategy.h -- deciding what to promote to a user, and why.
 *
 * A strategy reads the catalog and one user's state and returns the items to
 * promote, best first, with the reasons the copy may give for the first one.
 * Reasons come from data only: an attribute of the promoted item that the
 * user has shown affinity for and that has a phrase in the copy's locale.
 *
 * Strategies are pure functions of their inputs (event time, not the wall
 * clock, drives decay), so replaying an event gives the same decision. A
 * result points into the catalog and is valid until the catalog changes. */
#ifndef COPYSTREAM_STRATEGY_H
#define COPYSTREAM_STRATEGY_H

#include <stddef.h>
#include <stdint.h>

#include "catalog.h"
#include "userstate.h"

#define STRATEGY_MAX_PICKS 20
#define STRATEGY_MAX_REASONS 10

typedef struct {
    size_t k;                 /* items wanted, 1..STRATEGY_MAX_PICKS */
    size_t max_reasons;       /* 0..STRATEGY_MAX_REASONS */
    uint32_t at_s;            /* event time affinities are decayed to, Unix seconds */
    double half_life_s;       /* affinity half-life, as in userstate_params */
    const char *locale;       /* the copy's locale: titles and reason phrases */
    uint64_t exclude_item;    /* util_hash of an item never to pick; 0 for none */
} strategy_params;

typedef struct {
    const catalog_entry *entry;
    const char *title;        /* in the locale; NULL when the item has none */
    double score;
} strategy_pick;

typedef struct {
    const char *code;         /* "attribute_match" or "category_affinity" */
    const char *attribute_id; /* NULL for a category reason */
    const char *text;         /* phrase in the locale; "" for a category reason */
    double score;             /* the user's decayed affinity behind it */
} strategy_reason;

typedef struct {
    strategy_pick picks[STRATEGY_MAX_PICKS];       /* [n_picks], best first */
    size_t n_picks;
    strategy_reason reasons[STRATEGY_MAX_REASONS]; /* [n_reasons], strongest first */
    size_t n_reasons;
} strategy_result;

/* The "affinity" strategy, also the cold-start fallback of later ones.
 *
 * Candidates are drawn from the indexes only, never by scanning the catalog:
 * the items of the user's strongest categories (up to 5) and the items
 * carrying the user's strongest attributes (up to 8), leaving out categories
 * and attributes weaker than a tenth of the user's strongest. The attribute
 * lists are skipped when a bound shows that no item outside the scanned
 * categories can enter the top k (the usual case for a user with clear
 * interests); the result is the same. An item scores
 *
 *     cat(item.category) + sum(attr(a) for a in item.attrs) / sqrt(item.n_attrs)
 *
 * with the user's affinities decayed to at_s. The attribute term is the dot
 * product of the user's attribute vector with the item's (binary) one over the
 * item's norm -- a cosine similarity up to the user's constant norm -- so an
 * item does not win by listing many attributes. Unavailable items, items the
 * user bought or dismissed (userstate_excluded() at at_s) and exclude_item
 * are never picked; equal scores go to the lower item_hash.
 *
 * Reasons: the top pick's attributes with positive user affinity and a phrase
 * in the locale (an attribute without one is skipped, never shown in another
 * language), strongest first, at most max_reasons; if there are none, one
 * "category_affinity" reason with empty text for the template to word, when
 * the user has an affinity for the item's category; else no reason at all.
 *
 * Fills *out and returns the number of picks (0: nothing to promote), or -1
 * when p is out of bounds. Allocates nothing. */
int strategy_affinity(const catalog *c, const user_state *u, const strategy_params *p,
                      strategy_result *out);

/* For picks chosen elsewhere (the learned strategy): fills out->picks' titles
 * in p->locale and out->reasons for the top pick, exactly as
 * strategy_affinity() would for the same picks. Uses u's category and
 * attribute affinities only; p->k and p->exclude_item are ignored. Returns 0,
 * or -1 when p is out of bounds. */
int strategy_explain(const user_state *u, const strategy_params *p, strategy_result *out);

#endif
