/* template.h -- the copy templates: how a decision is put into words.
 *
 * Templates live in one INI file (config/templates.conf documents the format
 * in place): a section [<intent>.<locale>.<variant>] per template, its `text`
 * holding placeholders such as {item.title} or {reasons|您关注的特点}, and
 * optionally the `channel` it is written for. Two special sections hold the
 * rules every template must follow: [channels] gives each channel's length
 * limit in characters (the first one is the default channel), [banned] the
 * phrases no copy may contain. The file is parsed and every template compiled
 * and checked once, at start-up, so a typo, a text too long for its channel
 * or a banned phrase stops the service with file:line:column instead of
 * reaching users.
 *
 * Rendering fills the placeholders from a template_input: titles, prices and
 * lists are formatted for the copy's locale. A placeholder with nothing to
 * show takes its fallback; one without a fallback fails the render, because a
 * copy with a hole in it must never be sent. What the catalog puts in (titles,
 * reason phrases) is checked again after rendering: a text over its channel's
 * limit or holding a banned phrase fails the render too.
 *
 * A loaded templates set is read-only and may be shared between threads. */
#ifndef COPYSTREAM_TEMPLATE_H
#define COPYSTREAM_TEMPLATE_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "records.h"

typedef struct templates templates;

/* What a template may mention. Items are best first; their titles are in the
 * copy's locale. A reason with an empty text (a category reason) is not
 * shown, so {reasons} takes its fallback when no reason has a text. */
typedef struct {
    const promoted_item *items;   /* [n_items] */
    size_t n_items;
    const copy_reason *reasons;   /* [n_reasons] */
    size_t n_reasons;
    const char *trigger_title;    /* {trigger.title}: the item the triggering event or
                                   * trigger is about (the purchase of a cross-sell...), in
                                   * the copy's locale; NULL when none */
    int has_old_price;            /* {item.old_price}: the first item's price before a
                                   * price drop, in the first item's currency */
    int64_t old_price_micros;
} template_input;

/* How templates_render() fails. */
enum {
    TEMPLATE_ERROR = -1,          /* no template for (intent, locale), or out of memory */
    TEMPLATE_MISSING_FIELD = -2,  /* a placeholder with nothing to show and no fallback */
    TEMPLATE_TOO_LONG = -3,       /* the text is over its channel's limit */
    TEMPLATE_BANNED = -4,         /* the text holds a banned phrase (from the catalog) */
};

/* Loads and compiles the templates in path, and checks that each of
 * locales[n_locales] has at least one "recommendation" template. Checks that
 * every template's channel exists, that its fixed text and its text with
 * every placeholder at its fallback fit the channel's limit, and that no
 * fixed text or fallback holds a banned phrase. Returns NULL on any error,
 * with "file:line:column: problem" (or "file: problem") in errstr; the column
 * counts characters from 1. */
templates *templates_load(const char *path, const char *const *locales, size_t n_locales,
                          char *errstr, size_t errlen);
void templates_free(templates *t);

/* Checks that each of locales[n_locales] has at least one template of
 * intent. Returns 0, or -1 with "file: no [<intent>.<locale>.<variant>]
 * template for locale <locale>" in errstr. */
int templates_require(const templates *t, const char *intent, const char *const *locales,
                      size_t n_locales, char *errstr, size_t errlen);

/* Renders a template of (intent, locale), appending the text to out. The
 * variant is choice % (number of variants), counted in variant-name order, so
 * the same choice (the service passes a hash of the triggering event id)
 * always picks the same variant. On success *template_id (the section name,
 * "recommendation.zh-CN.a") and *variant_id ("a") point into t; either
 * pointer argument may be NULL. Returns 0, or a TEMPLATE_* code with out as it
 * was and errstr naming the cause ("{item.price} has nothing to show...",
 * "... over channel push's limit of 60 characters ..."). */
int templates_render(const templates *t, const char *intent, const char *locale,
                     uint64_t choice, const template_input *in, buf *out,
                     const char **template_id, const char **variant_id, char *errstr,
                     size_t errlen);

/* The variants of (intent, locale): how many there are, and the name of the
 * i-th in the order templates_render() counts them (choice = i renders it).
 * The bandit (bandit.c) chooses among them by index. */
size_t templates_variant_count(const templates *t, const char *intent, const char *locale);
const char *templates_variant_name(const templates *t, const char *intent, const char *locale,
                                   size_t i);

/* Every template, in id order: how many, and the parts of the i-th
 * (intent, locale, variant; any pointer may be NULL). Returns 0, or -1 when
 * i is out of range. The strings point into t. */
size_t templates_count(const templates *t);
int templates_at(const templates *t, size_t i, const char **intent, const char **locale,
                 const char **variant);
/* The i-th template's channel ("" when the file declares no channels) and
 * the line of its section's first key. */
const char *templates_channel_at(const templates *t, size_t i);
int templates_line_at(const templates *t, size_t i);

/* Characters (Unicode code points) in a UTF-8 string. */
size_t templates_chars(const char *s, size_t len);

#endif
