/* template.h -- the copy templates: how a decision is put into words.
 *
 * Templates live in one INI file (config/templates.conf documents the format
 * in place): a section [<intent>.<locale>.<variant>] per template, its `text`
 * holding placeholders such as {item.title} or {reasons|您关注的特点}. The
 * file is parsed and every template compiled and checked once, at start-up,
 * so a typo stops the service with file:line instead of reaching users.
 *
 * Rendering fills the placeholders from a template_input: titles, prices and
 * lists are formatted for the copy's locale. A placeholder with nothing to
 * show takes its fallback; one without a fallback fails the render, because a
 * copy with a hole in it must never be sent.
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
} template_input;

/* Loads and compiles the templates in path, and checks that each of
 * locales[n_locales] has at least one "recommendation" template. Returns NULL
 * on any error, with "file:line: problem" (or "file: problem") in errstr. */
templates *templates_load(const char *path, const char *const *locales, size_t n_locales,
                          char *errstr, size_t errlen);
void templates_free(templates *t);

/* Renders a template of (intent, locale), appending the text to out. The
 * variant is choice % (number of variants), counted in variant-name order, so
 * the same choice (the service passes a hash of the triggering event id)
 * always picks the same variant. On success *template_id (the section name,
 * "recommendation.zh-CN.a") and *variant_id ("a") point into t; either
 * pointer argument may be NULL. Returns 0, or -1 with out as it was and
 * errstr naming the cause: no template for (intent, locale), or a placeholder
 * with nothing to show and no fallback ("{item.price} has nothing to show..."). */
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

#endif
