/* records.c -- ownership and naming helpers for the records in records.h.
 *
 * The structs are plain data filled by codec.c and by the modules that build
 * copy; this file only knows how to release what they own and how to spell
 * their enums. The names are lower-case forms of the Avro enum symbols in
 * schemas/<Name>.avsc, so that metrics labels and config keys stay readable. */
#include "records.h"

#include <stdlib.h>
#include <string.h>

static const char *const event_type_names[EV__COUNT] = {
    "view", "click", "add_to_cart", "purchase", "search", "favorite",
};

static const char *const reaction_type_names[RX__COUNT] = {
    "impression", "click", "convert", "dismiss", "unsubscribe",
};

/* Out-of-range values come from casts of untrusted integers; naming them
 * "unknown" keeps a log line or a label well-formed instead of crashing. */
const char *event_type_name(event_type t) {
    return (unsigned)t < EV__COUNT ? event_type_names[t] : "unknown";
}

int event_type_parse(const char *name) {
    if (!name) return -1;
    for (int i = 0; i < EV__COUNT; i++)
        if (strcmp(name, event_type_names[i]) == 0) return i;
    return -1;
}

const char *reaction_type_name(reaction_type t) {
    return (unsigned)t < RX__COUNT ? reaction_type_names[t] : "unknown";
}

const char *localized_find(const localized *v, size_t n, const char *locale) {
    if (!locale) return NULL;
    for (size_t i = 0; i < n; i++)
        if (v[i].locale && strcmp(v[i].locale, locale) == 0) return v[i].text;
    return NULL;
}

static void localized_free(localized *v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(v[i].locale);
        free(v[i].text);
    }
    free(v);
}

void click_event_clear(click_event *e) {
    free(e->event_id);
    free(e->user_id);
    free(e->item_id);
    free(e->category);
    free(e->currency);
    free(e->query);
    free(e->session_id);
    free(e->locale);
    memset(e, 0, sizeof *e);
}

void catalog_item_clear(catalog_item *it) {
    free(it->item_id);
    localized_free(it->titles, it->n_titles);
    free(it->category);
    free(it->brand);
    free(it->currency);
    for (size_t i = 0; i < it->n_attrs; i++) {
        free(it->attrs[i].id);
        localized_free(it->attrs[i].phrases, it->attrs[i].n_phrases);
    }
    free(it->attrs);
    memset(it, 0, sizeof *it);
}

void personalized_copy_clear(personalized_copy *c) {
    free(c->copy_id);
    free(c->user_id);
    free(c->source_event_id);
    free(c->source_topic);
    free(c->locale);
    free(c->text);
    for (size_t i = 0; i < c->n_items; i++) {
        free(c->items[i].item_id);
        free(c->items[i].title);
        free(c->items[i].currency);
    }
    free(c->items);
    for (size_t i = 0; i < c->n_reasons; i++) {
        free(c->reasons[i].code);
        free(c->reasons[i].attribute_id);
        free(c->reasons[i].text);
    }
    free(c->reasons);
    free(c->intent);
    free(c->template_id);
    free(c->variant_id);
    free(c->strategy);
    free(c->model_version);
    memset(c, 0, sizeof *c);
}

void reaction_clear(reaction *r) {
    free(r->reaction_id);
    free(r->copy_id);
    free(r->user_id);
    free(r->item_id);
    memset(r, 0, sizeof *r);
}
