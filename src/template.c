/* template.c -- loading, checking and rendering copy templates; see template.h.
 *
 * inih reads the file; each `text` is compiled on the spot into segments,
 * literal text or a placeholder with its optional fallback, so every syntax
 * problem is found with the line it is on, and rendering is a walk over the
 * segments with no parsing left to do.
 *
 * inih reads lines into a fixed buffer of INI_MAX_LINE bytes and would cut a
 * longer line silently in two, so lines are fed to it by read_line(), which
 * refuses overlong ones and also notes whether a line is indented: in inih an
 * indented line continues the previous value, which is how a long text is
 * written over several lines. Continuations are joined with a space between
 * ASCII text (English words) and directly otherwise (Chinese runs on). Two
 * more things inih would cut silently are refused as well: a line holding a
 * NUL byte (inih ends the line there, and fgets() would hide a long line
 * behind it) and a section name too long for inih's buffer (the template
 * would load under a shorter id).
 *
 * Locale rules (list punctuation, currency symbols) are small tables below;
 * a locale they do not know gets neutral forms rather than English ones. */
#include "template.h"

#include <ctype.h>
#include <inttypes.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* inih copies section names into a buffer of this many bytes (MAX_SECTION in
 * its ini.c; the header does not say) and cuts longer ones. */
#define INI_MAX_SECTION 50

typedef enum { F_LITERAL = -1, F_ITEM_TITLE, F_ITEM_PRICE, F_ITEMS_TITLES, F_REASONS } field;

static const char *const field_names[] = {"item.title", "item.price", "items.titles", "reasons"};

typedef struct {
    field field;
    char *text;               /* the literal, or the fallback (NULL: none) */
} segment;

typedef struct {
    char *id;                 /* the section name, "recommendation.zh-CN.a" */
    char *parts;              /* id with its dots turned to NULs */
    const char *intent, *locale, *variant; /* into parts */
    segment *segs;            /* [n_segs] */
    size_t n_segs, cap_segs;
    char last_byte;           /* last byte of the text so far, to join continuations */
} tmpl;

struct templates {
    tmpl *v;                  /* [n], sorted by id: the variants of one (intent, locale) */
    size_t n, cap;            /* are adjacent and in variant-name order */
};

typedef struct {
    const char *lang;         /* the language part of a locale */
    const char *sep, *last_sep;
} list_style;

static const list_style list_styles[] = {
    {"zh", "、", "、"},
    {"en", ", ", " and "},
};
static const list_style list_style_neutral = {"", ", ", ", "};

/* Where a symbol is the local way to write a currency; elsewhere prices are
 * written "1,299.00 EUR". */
static const struct {
    const char *locale, *currency, *symbol;
} price_symbols[] = {
    {"zh-CN", "CNY", "¥"},
    {"en-US", "USD", "$"},
};

/* ---- templates ----------------------------------------------------------- */

static void tmpl_clear(tmpl *tp) {
    free(tp->id);
    free(tp->parts);
    for (size_t i = 0; i < tp->n_segs; i++) free(tp->segs[i].text);
    free(tp->segs);
}

void templates_free(templates *t) {
    if (!t) return;
    for (size_t i = 0; i < t->n; i++) tmpl_clear(&t->v[i]);
    free(t->v);
    free(t);
}

static segment *seg_add(tmpl *tp, field f, const char *text, size_t len) {
    if (tp->n_segs == tp->cap_segs) {
        size_t cap = tp->cap_segs ? tp->cap_segs * 2 : 8;
        segment *v = realloc(tp->segs, cap * sizeof *v);
        if (!v) return NULL;
        tp->segs = v;
        tp->cap_segs = cap;
    }
    segment *s = &tp->segs[tp->n_segs];
    s->field = f;
    s->text = text ? strndup(text, len) : NULL;
    if (text && !s->text) return NULL;
    tp->n_segs++;
    return s;
}

/* Literals next to each other become one segment. */
static int seg_add_literal(tmpl *tp, const char *s, size_t len) {
    if (len == 0) return 0;
    segment *last = tp->n_segs ? &tp->segs[tp->n_segs - 1] : NULL;
    if (!last || last->field != F_LITERAL) return seg_add(tp, F_LITERAL, s, len) ? 0 : -1;
    size_t old = strlen(last->text);
    char *t = realloc(last->text, old + len + 1);
    if (!t) return -1;
    memcpy(t + old, s, len);
    t[old + len] = '\0';
    last->text = t;
    return 0;
}

/* ---- loading ------------------------------------------------------------- */

typedef struct {
    templates *t;
    FILE *f;
    int line;                 /* lines read so far */
    int indented;             /* the current line continues the previous value */
    int long_line;            /* the first line too long for inih; 0: none */
    int bad_line;             /* the first line inih would cut otherwise; 0: none */
    const char *bad_why;      /* and how */
    int max_line;             /* the longest line inih takes */
    size_t last;              /* 1 + index of the template the previous text went to */
    int err_line;             /* the first problem found by on_text(); 0: none */
    char err[256];
} loader;

static char *read_line(char *str, int num, void *stream) {
    loader *ld = stream;
    long start = ftell(ld->f);
    if (ld->long_line || ld->bad_line || !fgets(str, num, ld->f)) return NULL;
    ld->line++;
    ld->max_line = num - 3; /* room for \r, \n and the NUL */
    size_t len = strlen(str);
    /* fgets() says nothing of NUL bytes; the file position tells how much it
     * read (found by tests/fuzz). Not knowing the position (a pipe) skips this. */
    long end = ftell(ld->f);
    if (start >= 0 && end >= 0 && (size_t)(end - start) != len) {
        ld->bad_line = ld->line;
        ld->bad_why = "NUL byte in the line; the file is not text";
        return NULL;
    }
    /* inih skips a UTF-8 BOM on line 1, then blanks by isspace(), before it
     * looks for '['. Found by tests/fuzz: [recommendation.fr-FR.<50 letters>]
     * loaded as a template whose id was cut to 49 bytes. */
    const char *s = str;
    if (ld->line == 1 && !strncmp(s, "\xEF\xBB\xBF", 3)) s += 3;
    while (isspace((unsigned char)*s)) s++;
    size_t name = *s == '[' ? strcspn(s + 1, "]") : 0;
    if (*s == '[' && s[1 + name] == ']' && name >= INI_MAX_SECTION) {
        ld->bad_line = ld->line;
        ld->bad_why = "section name longer than 49 bytes";
        return NULL;
    }
    if (len == (size_t)num - 1 && str[len - 1] != '\n') {
        int c = getc(ld->f);
        if (c != EOF) {
            ld->long_line = ld->line; /* stopping is better than inih's silent cut */
            return NULL;
        }
    }
    ld->indented = str[0] == ' ' || str[0] == '\t';
    return str;
}

static int load_fail(loader *ld, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int load_fail(loader *ld, const char *fmt, ...) {
    if (!ld->err_line) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ld->err, sizeof ld->err, fmt, ap);
        va_end(ap);
        ld->err_line = ld->line;
    }
    return 0; /* makes inih count the line as an error */
}

/* Three non-empty parts of letters, digits, '_' and '-', joined by dots. */
static int valid_section(const char *s) {
    int dots = 0, part_len = 0;
    for (; *s; s++) {
        if (*s == '.') {
            if (part_len == 0) return 0;
            dots++;
            part_len = 0;
        } else if (('a' <= *s && *s <= 'z') || ('A' <= *s && *s <= 'Z') ||
                   ('0' <= *s && *s <= '9') || *s == '_' || *s == '-') {
            part_len++;
        } else {
            return 0;
        }
    }
    return dots == 2 && part_len > 0;
}

/* Adds a template for a valid_section() name. */
static tmpl *tmpl_add(loader *ld, const char *section) {
    templates *t = ld->t;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 8;
        tmpl *v = realloc(t->v, cap * sizeof *v);
        if (!v) return NULL;
        t->v = v;
        t->cap = cap;
    }
    tmpl *tp = memset(&t->v[t->n], 0, sizeof *tp);
    if (!(tp->id = strdup(section)) || !(tp->parts = strdup(section))) {
        tmpl_clear(tp);
        return NULL;
    }
    char *dot1 = strchr(tp->parts, '.'), *dot2 = strchr(dot1 + 1, '.');
    *dot1 = *dot2 = '\0';
    tp->intent = tp->parts;
    tp->locale = dot1 + 1;
    tp->variant = dot2 + 1;
    t->n++;
    return tp;
}

/* Compiles one line's worth of text into tp. A placeholder is `{name}` or
 * `{name|fallback}` and must sit on one line; `{{` and `}}` are braces. */
static int compile(loader *ld, tmpl *tp, const char *s) {
    const char *start = s;
    while (*s) {
        size_t run = strcspn(s, "{}");
        if (seg_add_literal(tp, s, run) < 0) goto nomem;
        s += run;
        if (!*s) break;
        if (s[0] == s[1]) { /* {{ or }} */
            if (seg_add_literal(tp, s, 1) < 0) goto nomem;
            s += 2;
            continue;
        }
        if (*s == '}')
            return load_fail(ld, "unbalanced '}' after \"%.*s\" (write }} for a brace)",
                             (int)(s - start), start);
        const char *end = s + 1 + strcspn(s + 1, "{}");
        if (*end != '}')
            return load_fail(ld, "unbalanced '{' in \"%s\" (write {{ for a brace)", s);
        const char *bar = memchr(s + 1, '|', (size_t)(end - s - 1));
        size_t name_len = (size_t)((bar ? bar : end) - s - 1);
        int f = -1;
        for (size_t i = 0; i < UTIL_ARRAY_LEN(field_names); i++)
            if (strlen(field_names[i]) == name_len && !memcmp(field_names[i], s + 1, name_len))
                f = (int)i;
        if (f < 0)
            return load_fail(ld, "unknown placeholder {%.*s} (known: item.title, item.price, "
                             "items.titles, reasons)", (int)name_len, s + 1);
        if (!seg_add(tp, (field)f, bar ? bar + 1 : NULL, bar ? (size_t)(end - bar - 1) : 0))
            goto nomem;
        s = end + 1;
    }
    if (s > start) tp->last_byte = s[-1];
    return 1;

nomem:
    return load_fail(ld, "out of memory");
}

static int on_text(void *user, const char *section, const char *name, const char *value) {
    loader *ld = user;
    if (!*section)
        return load_fail(ld, "'%s' outside a [<intent>.<locale>.<variant>] section", name);
    if (strcmp(name, "text") != 0)
        return load_fail(ld, "unknown key '%s' in [%s] (a template has only text)", name, section);
    tmpl *tp = NULL;
    for (size_t i = 0; i < ld->t->n; i++)
        if (strcmp(ld->t->v[i].id, section) == 0) tp = &ld->t->v[i];
    if (tp && !(ld->indented && (size_t)(tp - ld->t->v) + 1 == ld->last))
        return load_fail(ld, "second text for [%s]", section);
    if (!tp) {
        if (!valid_section(section))
            return load_fail(ld, "section [%s] is not <intent>.<locale>.<variant> made of "
                             "letters, digits, '_' and '-'", section);
        if (!*value) return load_fail(ld, "empty text in [%s]", section);
        if (!(tp = tmpl_add(ld, section))) return load_fail(ld, "out of memory");
    } else if ((unsigned char)tp->last_byte < 0x80 && (unsigned char)value[0] < 0x80) {
        if (seg_add_literal(tp, " ", 1) < 0) return load_fail(ld, "out of memory");
    }
    ld->last = (size_t)(tp - ld->t->v) + 1;
    return compile(ld, tp, value);
}

static int tmpl_by_id(const void *a, const void *b) {
    return strcmp(((const tmpl *)a)->id, ((const tmpl *)b)->id);
}

static const tmpl *tmpl_find(const templates *t, const char *intent, const char *locale,
                             uint64_t choice) {
    size_t n = 0;
    for (size_t i = 0; i < t->n; i++)
        n += !strcmp(t->v[i].intent, intent) && !strcmp(t->v[i].locale, locale);
    if (n == 0) return NULL;
    size_t want = (size_t)(choice % n);
    for (size_t i = 0; i < t->n; i++)
        if (!strcmp(t->v[i].intent, intent) && !strcmp(t->v[i].locale, locale) && want-- == 0)
            return &t->v[i];
    return NULL;
}

size_t templates_variant_count(const templates *t, const char *intent, const char *locale) {
    size_t n = 0;
    for (size_t i = 0; i < t->n; i++)
        n += !strcmp(t->v[i].intent, intent) && !strcmp(t->v[i].locale, locale);
    return n;
}

const char *templates_variant_name(const templates *t, const char *intent, const char *locale,
                                   size_t i) {
    const tmpl *tp = i < templates_variant_count(t, intent, locale)
                         ? tmpl_find(t, intent, locale, (uint64_t)i)
                         : NULL;
    return tp ? tp->variant : NULL;
}

size_t templates_count(const templates *t) { return t->n; }

int templates_at(const templates *t, size_t i, const char **intent, const char **locale,
                 const char **variant) {
    if (i >= t->n) return -1;
    if (intent) *intent = t->v[i].intent;
    if (locale) *locale = t->v[i].locale;
    if (variant) *variant = t->v[i].variant;
    return 0;
}

templates *templates_load(const char *path, const char *const *locales, size_t n_locales,
                          char *errstr, size_t errlen) {
    loader ld = {0};
    if (!(ld.t = calloc(1, sizeof *ld.t))) {
        util_err(errstr, errlen, "%s: out of memory", path);
        goto err;
    }
    if (!(ld.f = fopen(path, "r"))) {
        util_err(errstr, errlen, "%s: cannot open: %m", path);
        goto err;
    }
    int rc = ini_parse_stream(read_line, &ld, on_text, &ld);
    if (rc > 0 && rc == ld.err_line) {
        util_err(errstr, errlen, "%s:%d: %s", path, rc, ld.err);
        goto err;
    }
    if (rc > 0) {
        util_err(errstr, errlen, "%s:%d: expected [section], key = value or a comment", path, rc);
        goto err;
    }
    if (rc < 0 || ferror(ld.f)) {
        util_err(errstr, errlen, "%s: read error", path);
        goto err;
    }
    if (ld.bad_line) {
        util_err(errstr, errlen, "%s:%d: %s", path, ld.bad_line, ld.bad_why);
        goto err;
    }
    if (ld.long_line) {
        util_err(errstr, errlen, "%s:%d: line longer than %d bytes; continue the text on an "
                 "indented line", path, ld.long_line, ld.max_line);
        goto err;
    }
    /* A file of comments has no templates and v is NULL, which qsort must
     * not be given even with a count of 0 (found by tests/fuzz). */
    if (ld.t->n) qsort(ld.t->v, ld.t->n, sizeof *ld.t->v, tmpl_by_id);
    for (size_t i = 0; i < n_locales; i++) {
        if (!tmpl_find(ld.t, "recommendation", locales[i], 0)) {
            util_err(errstr, errlen, "%s: no [recommendation.%s.<variant>] template for "
                     "locale %s", path, locales[i], locales[i]);
            goto err;
        }
    }
    fclose(ld.f);
    return ld.t;

err:
    if (ld.f) fclose(ld.f);
    templates_free(ld.t);
    return NULL;
}

/* ---- rendering ----------------------------------------------------------- */

static const list_style *list_style_for(const char *locale) {
    size_t lang_len = strcspn(locale, "-_");
    for (size_t i = 0; i < UTIL_ARRAY_LEN(list_styles); i++)
        if (strlen(list_styles[i].lang) == lang_len &&
            !memcmp(list_styles[i].lang, locale, lang_len))
            return &list_styles[i];
    return &list_style_neutral;
}

static const char *item_title(const template_input *in, size_t i) { return in->items[i].title; }
static const char *reason_text(const template_input *in, size_t i) { return in->reasons[i].text; }

/* Joins the non-empty strings get(in, 0..n-1): "A", "A and B", "A, B and C". */
static int put_list(buf *out, const char *locale, const template_input *in, size_t n,
                    const char *(*get)(const template_input *, size_t)) {
    const list_style *st = list_style_for(locale);
    size_t total = 0, k = 0;
    for (size_t i = 0; i < n; i++) total += get(in, i) && *get(in, i);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        const char *s = get(in, i);
        if (!s || !*s) continue;
        if (k) rc |= buf_puts(out, k + 1 == total ? st->last_sep : st->sep);
        rc |= buf_puts(out, s);
        k++;
    }
    return rc;
}

/* price_micros is in millionths of the unit; cents are rounded half away
 * from zero, and the integer part is grouped by thousands. */
static int put_price(buf *out, const char *locale, int64_t micros, const char *currency) {
    const char *symbol = NULL;
    for (size_t i = 0; i < UTIL_ARRAY_LEN(price_symbols); i++)
        if (!strcmp(price_symbols[i].locale, locale) && !strcmp(price_symbols[i].currency, currency))
            symbol = price_symbols[i].symbol;
    uint64_t m = micros < 0 ? -(uint64_t)micros : (uint64_t)micros;
    uint64_t cents = m / 10000 + (m % 10000 >= 5000);
    char digits[24];
    int n = snprintf(digits, sizeof digits, "%" PRIu64, cents / 100);
    int rc = buf_puts(out, micros < 0 ? "-" : "");
    if (symbol) rc |= buf_puts(out, symbol);
    for (int i = 0; i < n; i++) {
        if (i && (n - i) % 3 == 0) rc |= buf_put_u8(out, ',');
        rc |= buf_put_u8(out, (uint8_t)digits[i]);
    }
    rc |= buf_printf(out, ".%02u", (unsigned)(cents % 100));
    if (!symbol) rc |= buf_printf(out, " %s", currency);
    return rc;
}

/* Appends the field's value, or nothing when it has none. */
static int put_field(buf *out, field f, const char *locale, const template_input *in) {
    const promoted_item *first = in->n_items ? &in->items[0] : NULL;
    switch (f) {
    case F_ITEM_TITLE:
        return first && first->title ? buf_puts(out, first->title) : 0;
    case F_ITEM_PRICE:
        if (!first || !first->has_price || !first->currency || !*first->currency) return 0;
        return put_price(out, locale, first->price_micros, first->currency);
    case F_ITEMS_TITLES:
        return put_list(out, locale, in, in->n_items, item_title);
    case F_REASONS:
        return put_list(out, locale, in, in->n_reasons, reason_text);
    case F_LITERAL:
        break;
    }
    return 0;
}

int templates_render(const templates *t, const char *intent, const char *locale,
                     uint64_t choice, const template_input *in, buf *out,
                     const char **template_id, const char **variant_id, char *errstr,
                     size_t errlen) {
    const tmpl *tp = tmpl_find(t, intent, locale, choice);
    if (!tp) return util_err(errstr, errlen, "no %s template for locale %s", intent, locale);
    size_t mark = out->len;
    for (size_t i = 0; i < tp->n_segs; i++) {
        const segment *s = &tp->segs[i];
        if (s->field == F_LITERAL) {
            if (buf_puts(out, s->text) < 0) goto nomem;
            continue;
        }
        size_t before = out->len;
        if (put_field(out, s->field, locale, in) < 0) goto nomem;
        if (out->len > before) continue;
        if (!s->text) {
            util_err(errstr, errlen, "{%s} has nothing to show and no fallback (template %s)",
                     field_names[s->field], tp->id);
            goto err;
        }
        if (buf_puts(out, s->text) < 0) goto nomem;
    }
    if (template_id) *template_id = tp->id;
    if (variant_id) *variant_id = tp->variant;
    return 0;

nomem:
    util_err(errstr, errlen, "out of memory rendering %s", tp->id);
err:
    out->len = mark;
    if (out->cap) out->p[mark] = '\0';
    return -1;
}
