/* fuzz_template.c -- libFuzzer target: the template catalog's parser and
 * compiler (templates_load) and rendering (templates_render) with fuzzed item
 * titles, prices, currencies, reasons, locales, intents and variant choices.
 *
 * An input is a templates file, optionally followed by a line "#render" (a
 * comment to the parser) and a render spec: NUL-terminated fields, each a tag
 * byte and its text:
 *   L<locale>   the locale to render (and one the load must find a
 *               recommendation template for); the first one is rendered
 *   N<intent>   default "recommendation"       C<decimal>  the variant choice
 *   T<title>    a promoted item with a title   U           one without
 *   P<decimal>  the last item's price_micros   Y<code>     its currency
 *   R<text>     a reason with a text           E           one without
 * The spec is rendered with the fuzzed templates (when they load) and with
 * the shipped config/templates.conf, so rendering is fuzzed even when the
 * file part is junk.
 *
 * Properties, beyond "no crash, leak or undefined behaviour":
 *   - a file holding a NUL byte does not load: whatever follows the NUL on
 *     its line would otherwise be dropped without a word;
 *   - a failed load or render gives a reason, and a failed render leaves the
 *     output buffer exactly as it was (bytes before it included);
 *   - a successful render names a template and variant, appends only text
 *     (no NUL byte in it) and does the same again for the same input; the
 *     template it names has its [section] in the file, as written;
 *   - a template set that loads for some locales also loads for none. */
#include "fuzz.h"

#include <inttypes.h>

#include "buf.h"
#include "records.h"
#include "template.h"

#define SPEC_SEP "\n#render\n"
#define MAX_ITEMS 24
#define MAX_LOCALES 4
#define PREFIX "prefix:"

static templates *SHIPPED;
static uint8_t SHIPPED_TEXT[1 << 16];
static size_t SHIPPED_LEN;

static void free_shipped(void) { templates_free(SHIPPED); }

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    static const char *const both[] = {"zh-CN", "en-US"};
    char err[512];
    (void)argc;
    (void)argv;
    SHIPPED = templates_load("config/templates.conf", both, 2, err, sizeof err);
    FUZZ_CHECK(SHIPPED, "%s (run from the repository root)", err);
    FILE *f = fopen("config/templates.conf", "rb");
    FUZZ_CHECK(f, "config/templates.conf: cannot open");
    SHIPPED_LEN = fread(SHIPPED_TEXT, 1, sizeof SHIPPED_TEXT, f);
    fclose(f);
    atexit(free_shipped);
    return 0;
}

typedef struct {
    const char *locales[MAX_LOCALES];
    size_t n_locales;
    const char *intent;
    uint64_t choice;
    promoted_item items[MAX_ITEMS];
    copy_reason reasons[MAX_ITEMS];
    template_input in;
} spec;

/* Reads the fields of s[0..len), which must end in a NUL (the caller's copy
 * does); the strings in *sp point into s. */
static void spec_parse(char *s, size_t len, spec *sp) {
    memset(sp, 0, sizeof *sp);
    sp->intent = "recommendation";
    sp->in.items = sp->items;
    sp->in.reasons = sp->reasons;
    promoted_item *last = NULL;
    for (char *f = s; f < s + len; f += strlen(f) + 1) {
        const char *v = f + 1;
        switch (*f) {
        case 'L':
            if (sp->n_locales < MAX_LOCALES) sp->locales[sp->n_locales++] = v;
            break;
        case 'N':
            sp->intent = v;
            break;
        case 'C':
            sp->choice = strtoull(v, NULL, 10);
            break;
        case 'T':
        case 'U':
            if (sp->in.n_items < MAX_ITEMS) {
                last = &sp->items[sp->in.n_items++];
                last->title = *f == 'T' ? (char *)v : NULL;
            }
            break;
        case 'P':
            if (last) {
                last->has_price = 1;
                last->price_micros = strtoll(v, NULL, 10);
            }
            break;
        case 'Y':
            if (last) last->currency = (char *)v;
            break;
        case 'R':
        case 'E':
            if (sp->in.n_reasons < MAX_ITEMS)
                sp->reasons[sp->in.n_reasons++].text = *f == 'R' ? (char *)v : NULL;
            break;
        }
    }
}

/* Renders the spec with t twice, after a prefix already in the buffer, and
 * checks the properties in the file comment. file is what t was loaded from. */
static void render(const templates *t, const spec *sp, const uint8_t *file, size_t file_len) {
    const char *locale = sp->n_locales ? sp->locales[0] : "zh-CN";
    buf out = BUF_INIT, again = BUF_INIT;
    char err[512] = "";
    const char *tid = NULL, *vid = NULL;
    FUZZ_CHECK(buf_puts(&out, PREFIX) == 0 && buf_puts(&again, PREFIX) == 0, "out of memory");
    int rc = templates_render(t, sp->intent, locale, sp->choice, &sp->in, &out, &tid, &vid, err,
                              sizeof err);
    if (rc < 0) {
        FUZZ_CHECK(err[0], "render failed without a reason");
        FUZZ_CHECK(out.len == strlen(PREFIX) && strcmp(out.p, PREFIX) == 0,
                   "failed render changed the buffer to \"%s\"", out.p);
    } else {
        FUZZ_CHECK(rc == 0, "render returned %d", rc);
        FUZZ_CHECK(tid && vid, "render named no template or variant");
        FUZZ_CHECK(memcmp(out.p, PREFIX, strlen(PREFIX)) == 0, "render overwrote the buffer");
        FUZZ_CHECK(strlen(out.p) == out.len, "rendered text holds a NUL byte");
        /* The variant's name is the end of the template's id. */
        size_t tl = strlen(tid), vl = strlen(vid);
        FUZZ_CHECK(tl > vl && tid[tl - vl - 1] == '.' && strcmp(tid + tl - vl, vid) == 0,
                   "variant %s is not the end of template %s", vid, tid);
        char section[256];
        snprintf(section, sizeof section, "[%s]", tid);
        FUZZ_CHECK(memmem(file, file_len, section, strlen(section)),
                   "template %s has no such [section] in its file", tid);
        FUZZ_CHECK(templates_render(t, sp->intent, locale, sp->choice, &sp->in, &again, NULL,
                                    NULL, err, sizeof err) == 0 &&
                       again.len == out.len && memcmp(again.p, out.p, out.len) == 0,
                   "the same render gave another text");
    }
    buf_free(&out);
    buf_free(&again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len) {
    size_t file_len, spec_len;
    const uint8_t *spec_at;
    char err[512] = "";
    spec sp;
    fuzz_split(data, len, SPEC_SEP, &file_len, &spec_at, &spec_len);

    char *s = malloc(spec_len + 1); /* NUL-terminated, so the last field ends */
    if (!s) return 0;
    if (spec_len) memcpy(s, spec_at, spec_len);
    s[spec_len] = '\0';
    spec_parse(s, spec_len, &sp);

    const char *path = fuzz_file(data, file_len);
    templates *t = templates_load(path, sp.locales, sp.n_locales, err, sizeof err);
    FUZZ_CHECK(!t || !memchr(data, 0, file_len), "a file holding a NUL byte loaded");
    if (!t) {
        FUZZ_CHECK(err[0], "load failed without a reason");
    } else {
        render(t, &sp, data, file_len);
        if (sp.n_locales) {
            templates *none = templates_load(path, NULL, 0, err, sizeof err);
            FUZZ_CHECK(none, "loads for %zu locales but not for none: %s", sp.n_locales, err);
            templates_free(none);
        }
        templates_free(t);
    }
    render(SHIPPED, &sp, SHIPPED_TEXT, SHIPPED_LEN);
    free(s);
    return 0;
}
