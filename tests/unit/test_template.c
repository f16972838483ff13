/* test_template.c -- loading, checking and rendering copy templates: exact
 * output for zh-CN and en-US, fallbacks, render failures, and load errors
 * that name file:line. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "template.h"

static const char *const both[] = {"zh-CN", "en-US"};

/* Writes text to a fresh temporary file; its path is returned in path. */
static void write_conf(char *path, size_t len, const char *text) {
    snprintf(path, len, "/tmp/copystream-templates-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static templates *load_text(const char *text, const char *const *locales, size_t n,
                            char *errstr, size_t errlen) {
    char path[64];
    write_conf(path, sizeof path, text);
    templates *t = templates_load(path, locales, n, errstr, errlen);
    unlink(path);
    return t;
}

/* Renders (recommendation, locale, choice) and checks the exact text. */
static void expect_render(const templates *t, const char *locale, uint64_t choice,
                          const template_input *in, const char *want) {
    buf out = BUF_INIT;
    char err[256] = "";
    int rc = templates_render(t, "recommendation", locale, choice, in, &out, NULL, NULL, err,
                              sizeof err);
    if (rc != 0) fail_msg("render failed: %s", err);
    assert_string_equal(out.p, want);
    buf_free(&out);
}

static promoted_item item(char *title, int64_t price_micros, char *currency) {
    return (promoted_item){.title = title, .has_price = currency != NULL,
                           .price_micros = price_micros, .currency = currency};
}

/* Loads the error message of a conf that must not load; the path is replaced
 * by "F" so tests can compare whole messages. */
static void expect_load_error(const char *text, const char *want) {
    char path[64], err[512] = "", msg[512];
    write_conf(path, sizeof path, text);
    templates *t = templates_load(path, both, 2, err, sizeof err);
    unlink(path);
    assert_null(t);
    size_t plen = strlen(path);
    assert_memory_equal(err, path, plen);
    snprintf(msg, sizeof msg, "F%s", err + plen);
    assert_string_equal(msg, want);
}

static const char LISTS[] =
    "[recommendation.zh-CN.a]\ntext = {items.titles}|{reasons|无}\n"
    "[recommendation.en-US.a]\ntext = {items.titles}|{reasons|none}\n";

static void test_title_lists_join_per_locale_for_one_two_three_items(void **state) {
    (void)state;
    char err[256];
    templates *t = load_text(LISTS, both, 2, err, sizeof err);
    assert_non_null(t);
    promoted_item items[] = {item("A", 0, NULL), item("B", 0, NULL), item("C", 0, NULL)};
    template_input in = {.items = items};
    const char *zh[] = {"A|无", "A、B|无", "A、B、C|无"};
    const char *en[] = {"A|none", "A and B|none", "A, B and C|none"};
    for (size_t n = 1; n <= 3; n++) {
        in.n_items = n;
        expect_render(t, "zh-CN", 0, &in, zh[n - 1]);
        expect_render(t, "en-US", 0, &in, en[n - 1]);
    }
    templates_free(t);
}

/* A category reason has an empty text: it is not shown, and alone it leaves
 * {reasons} to its fallback. */
static void test_reasons_join_like_titles_and_skip_empty_texts(void **state) {
    (void)state;
    char err[256];
    templates *t = load_text(LISTS, both, 2, err, sizeof err);
    assert_non_null(t);
    promoted_item items[] = {item("A", 0, NULL)};
    copy_reason reasons[] = {
        {.code = "attribute_match", .text = "高清屏幕"},
        {.code = "category_affinity", .text = ""},
        {.code = "attribute_match", .text = "超长续航"},
        {.code = "attribute_match", .text = "防水"},
    };
    template_input in = {.items = items, .n_items = 1, .reasons = reasons, .n_reasons = 4};
    expect_render(t, "zh-CN", 0, &in, "A|高清屏幕、超长续航、防水");
    in.n_reasons = 3;
    expect_render(t, "en-US", 0, &in, "A|高清屏幕 and 超长续航");
    in.reasons = &reasons[1];
    in.n_reasons = 1;
    expect_render(t, "en-US", 0, &in, "A|none");
    templates_free(t);
}

static void test_price_is_formatted_for_locale_and_currency(void **state) {
    (void)state;
    static const char conf[] =
        "[recommendation.zh-CN.a]\ntext = {item.price}\n"
        "[recommendation.en-US.a]\ntext = {item.price}\n";
    char err[256];
    templates *t = load_text(conf, both, 2, err, sizeof err);
    assert_non_null(t);
    static const struct {
        const char *locale;
        int64_t micros;
        const char *currency, *want;
    } cases[] = {
        {"zh-CN", 1299000000, "CNY", "¥1,299.00"},
        {"en-US", 1299000000, "USD", "$1,299.00"},
        {"en-US", 1299000000, "EUR", "1,299.00 EUR"},
        {"zh-CN", 1299000000, "USD", "1,299.00 USD"},
        {"en-US", 1299000000, "CNY", "1,299.00 CNY"},
        {"en-US", 1234567890123, "USD", "$1,234,567.89"},
        {"en-US", 999999, "USD", "$1.00"},
        {"en-US", 1234999, "USD", "$1.23"},
        {"en-US", 1235000, "USD", "$1.24"},
        {"en-US", 100000000, "USD", "$100.00"},
        {"zh-CN", 0, "CNY", "¥0.00"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        promoted_item it = item("A", cases[i].micros, (char *)cases[i].currency);
        template_input in = {.items = &it, .n_items = 1};
        expect_render(t, cases[i].locale, 0, &in, cases[i].want);
    }
    templates_free(t);
}

static void test_fallback_replaces_a_missing_or_empty_field(void **state) {
    (void)state;
    static const char conf[] =
        "[recommendation.zh-CN.a]\ntext = 看看{item.title|这款商品}{item.price|}！\n"
        "[recommendation.en-US.a]\ntext = See {item.title|this pick}{item.price|}!\n";
    char err[256];
    templates *t = load_text(conf, both, 2, err, sizeof err);
    assert_non_null(t);
    template_input none = {0};
    expect_render(t, "zh-CN", 0, &none, "看看这款商品！");
    promoted_item untitled = item(NULL, 5000000, "CNY");
    template_input in = {.items = &untitled, .n_items = 1};
    expect_render(t, "zh-CN", 0, &in, "看看这款商品¥5.00！");
    promoted_item empty = item("", 0, NULL);
    in.items = &empty;
    expect_render(t, "en-US", 0, &in, "See this pick!");
    templates_free(t);
}

static void test_missing_field_without_fallback_fails_naming_the_placeholder(void **state) {
    (void)state;
    static const char conf[] =
        "[recommendation.zh-CN.a]\ntext = x\n"
        "[recommendation.en-US.a]\ntext = {item.title|this} costs {item.price}.\n";
    char err[256] = "";
    templates *t = load_text(conf, both, 2, err, sizeof err);
    assert_non_null(t);
    promoted_item unpriced = item("Phone", 0, NULL);
    template_input in = {.items = &unpriced, .n_items = 1};
    buf out = BUF_INIT;
    buf_puts(&out, "kept");
    assert_int_equal(templates_render(t, "recommendation", "en-US", 0, &in, &out, NULL, NULL,
                                      err, sizeof err), TEMPLATE_MISSING_FIELD);
    assert_string_equal(err, "{item.price} has nothing to show and no fallback "
                             "(template recommendation.en-US.a)");
    assert_string_equal(out.p, "kept"); /* nothing half-rendered is left behind */
    assert_int_equal(out.len, 4);
    buf_free(&out);
    templates_free(t);
}

static void test_double_braces_are_literal_braces(void **state) {
    (void)state;
    static const char conf[] =
        "[recommendation.zh-CN.a]\ntext = {{x}} {item.title|y} }}{{\n"
        "[recommendation.en-US.a]\ntext = x\n";
    char err[256];
    templates *t = load_text(conf, both, 2, err, sizeof err);
    assert_non_null(t);
    promoted_item it = item("A", 0, NULL);
    template_input in = {.items = &it, .n_items = 1};
    expect_render(t, "zh-CN", 0, &in, "{x} A }{");
    templates_free(t);
}

static void test_choice_picks_variants_in_name_order(void **state) {
    (void)state;
    static const char conf[] =
        "[recommendation.en-US.c]\ntext = C\n"
        "[recommendation.zh-CN.a]\ntext = 甲\n"
        "[recommendation.en-US.a]\ntext = A\n"
        "[welcome.en-US.a]\ntext = W\n"
        "[recommendation.en-US.b]\ntext = B\n";
    char err[256];
    templates *t = load_text(conf, both, 2, err, sizeof err);
    assert_non_null(t);
    template_input in = {0};
    const char *want[] = {"A", "B", "C", "A", "B", "C"};
    for (uint64_t choice = 0; choice < 6; choice++)
        expect_render(t, "en-US", choice, &in, want[choice]);
    expect_render(t, "en-US", UINT64_MAX, &in, "A"); /* 2^64-1 is a multiple of 3 */
    expect_render(t, "zh-CN", 12345, &in, "甲");

    buf out = BUF_INIT;
    const char *template_id = NULL, *variant_id = NULL;
    assert_int_equal(templates_render(t, "recommendation", "en-US", 4, &in, &out, &template_id,
                                      &variant_id, err, sizeof err), 0);
    assert_string_equal(template_id, "recommendation.en-US.b");
    assert_string_equal(variant_id, "b");
    buf_free(&out);
    templates_free(t);
}

static void test_unknown_intent_or_locale_fails_to_render(void **state) {
    (void)state;
    char err[256];
    templates *t = load_text(LISTS, both, 2, err, sizeof err);
    assert_non_null(t);
    template_input in = {0};
    buf out = BUF_INIT;
    assert_int_equal(templates_render(t, "recommendation", "fr-FR", 0, &in, &out, NULL, NULL,
                                      err, sizeof err), -1);
    assert_string_equal(err, "no recommendation template for locale fr-FR");
    assert_int_equal(templates_render(t, "welcome", "en-US", 0, &in, &out, NULL, NULL, err,
                                      sizeof err), -1);
    assert_string_equal(err, "no welcome template for locale en-US");
    buf_free(&out);
    templates_free(t);
}

static void test_indented_lines_continue_a_text(void **state) {
    (void)state;
    static const char conf[] =
        "[recommendation.zh-CN.a]\n"
        "text = 您可能会喜欢\n"
        "    {item.title|这款商品}。\n"
        "[recommendation.en-US.a]\n"
        "text = You might like\n"
        "    {item.title|this pick}\n"
        "    today.\n";
    char err[256];
    templates *t = load_text(conf, both, 2, err, sizeof err);
    assert_non_null(t);
    template_input in = {0};
    expect_render(t, "zh-CN", 0, &in, "您可能会喜欢这款商品。");
    expect_render(t, "en-US", 0, &in, "You might like this pick today.");
    templates_free(t);
}

static void test_load_errors_name_file_line_and_column(void **state) {
    (void)state;
    static const char ok_zh[] = "[recommendation.zh-CN.a]\ntext = 好\n";
    char conf[1024];

    snprintf(conf, sizeof conf, "%s\n[recommendation.en-US.a]\ntext = {item.colour|x}\n", ok_zh);
    expect_load_error(conf, "F:5:8: unknown placeholder {item.colour} (known: item.title, "
                            "item.price, item.old_price, items.titles, reasons, "
                            "trigger.title)");
    snprintf(conf, sizeof conf, "%s[recommendation.en-US.a]\ntext = {item.title|x\n", ok_zh);
    expect_load_error(conf, "F:4:8: unbalanced '{' in \"{item.title|x\" (write {{ for a brace)");
    snprintf(conf, sizeof conf, "%s[recommendation.en-US.a]\ntext = a {item.title{x}}\n", ok_zh);
    expect_load_error(conf, "F:4:10: unbalanced '{' in \"{item.title{x}}\" (write {{ for a brace)");
    snprintf(conf, sizeof conf, "%s[recommendation.en-US.a]\ntext = a } b\n", ok_zh);
    expect_load_error(conf, "F:4:10: unbalanced '}' after \"a \" (write }} for a brace)");
    expect_load_error(ok_zh, "F: no [recommendation.en-US.<variant>] template for locale en-US");
    snprintf(conf, sizeof conf, "%s[recommendation.en-US.a]\ntitle = x\n", ok_zh);
    expect_load_error(conf, "F:4:1: unknown key 'title' in [recommendation.en-US.a] "
                            "(a template has text and channel)");
    snprintf(conf, sizeof conf, "%s[recommendation.en-US]\ntext = x\n", ok_zh);
    expect_load_error(conf, "F:4:1: section [recommendation.en-US] is not "
                            "<intent>.<locale>.<variant> made of letters, digits, '_' and '-'");
    snprintf(conf, sizeof conf, "%s[recommendation.en-US.a]\ntext = x\ntext = y\n", ok_zh);
    expect_load_error(conf, "F:5:1: second text for [recommendation.en-US.a]");
    snprintf(conf, sizeof conf, "%s[recommendation.en-US.a]\ntext =\n", ok_zh);
    expect_load_error(conf, "F:4:7: empty text in [recommendation.en-US.a]");
    expect_load_error("text = x\n", "F:1:1: 'text' outside a [<intent>.<locale>.<variant>] section");
    snprintf(conf, sizeof conf, "%s[recommendation.en-US.a]\njust words\n", ok_zh);
    expect_load_error(conf, "F:4:1: expected [section], key = value or a comment");

    /* The first error wins. */
    snprintf(conf, sizeof conf, "[a.b.c]\ntext = {x}\n[d.e.f]\ntext = {y}\n");
    expect_load_error(conf, "F:2:8: unknown placeholder {x} (known: item.title, item.price, "
                            "item.old_price, items.titles, reasons, trigger.title)");

    /* A line inih would cut in two is refused. */
    char line[300];
    memset(line, 'x', sizeof line - 1);
    line[sizeof line - 1] = '\0';
    snprintf(conf, sizeof conf, "%s[recommendation.en-US.a]\ntext = %s\n", ok_zh, line);
    expect_load_error(conf, "F:4:198: line longer than 197 bytes; continue the text on an "
                            "indented line");
}

/* Found by tests/fuzz (fuzz_template): a file without a single template
 * handed qsort a NULL array, undefined behaviour even for 0 elements (UBSan
 * stops `make asan` here). Such a file loads when no locale is required, and
 * every render of it fails with a reason. */
static void test_file_without_templates_loads_empty_without_undefined_behaviour(void **state) {
    (void)state;
    static const char *const files[] = {"", "# only a comment\n; and another\n"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char err[256] = "";
        templates *t = load_text(files[i], NULL, 0, err, sizeof err);
        assert_non_null(t);
        buf out = BUF_INIT;
        template_input in = {0};
        assert_int_equal(templates_render(t, "recommendation", "en-US", 0, &in, &out, NULL, NULL,
                                          err, sizeof err), -1);
        assert_string_equal(err, "no recommendation template for locale en-US");
        assert_int_equal(out.len, 0);
        templates_free(t);
    }
}

/* Found by tests/fuzz (fuzz_template): fgets() and inih end a line at a NUL
 * byte, so a file of one NUL byte (the fuzzer's input, minimized) loaded, a
 * text lost everything after a NUL, and a line too long for inih was not
 * refused when a NUL came before its end: its tail became a line of its own. */
#define BYTES(s) s, sizeof(s) - 1

static void test_nul_byte_in_file_is_refused_naming_its_line(void **state) {
    (void)state;
    /* Line 2: "text = ", x up to its byte 150, the NUL, y up to byte 199
     * (where fgets stops), then "  tail": read on as an indented
     * continuation, it made a 206-byte line load as "xx...x tail". */
    static const char head[] = "[recommendation.en-US.a]\ntext = ";
    char long_line[300];
    size_t at = sizeof head - 1;
    memcpy(long_line, head, at);
    memset(long_line + at, 'x', 143);
    at += 143;
    long_line[at++] = '\0';
    memset(long_line + at, 'y', 48);
    at += 48;
    memcpy(long_line + at, "  tail\n", 7);
    at += 7;
    const struct {
        const char *bytes;
        size_t len;
        int line;
    } files[] = {
        {BYTES("\0"), 1},
        {BYTES("[recommendation.en-US.a]\ntext = A\0{item.price}\n"), 2},
        {long_line, at, 2},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[64] = "/tmp/copystream-templates-XXXXXX", err[512] = "", want[256];
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, files[i].bytes, files[i].len), (ssize_t)files[i].len);
        close(fd);
        templates *t = templates_load(path, NULL, 0, err, sizeof err);
        unlink(path);
        assert_null(t);
        snprintf(want, sizeof want, "%s:%d: NUL byte in the line; the file is not text", path,
                 files[i].line);
        assert_string_equal(err, want);
    }
}

/* Found by tests/fuzz (fuzz_template): inih cuts a section name to 49 bytes
 * without a word, so a template with a long variant name loaded under a
 * shorter id, and copies would have named that variant. The fuzzer's input,
 * then the same with a BOM and blanks before the '[' (which inih skips), and
 * the longest name inih keeps, which loads. */
static void test_section_name_longer_than_inih_keeps_is_refused(void **state) {
    (void)state;
    char fuzzed[160] = "[recommendation.fr-FR.a"; /* then 75 g, "]\ntext =" and 3 bytes */
    size_t at = strlen(fuzzed);
    memset(fuzzed + at, 'g', 75);
    snprintf(fuzzed + at + 75, sizeof fuzzed - at - 75, "]\ntext =\xd0\xd0\xd0");
    const char *const refused[] = {
        fuzzed,
        "\xEF\xBB\xBF \t[recommendation.en-US.spring_sale_2026_free_shipping]\ntext = x\n",
        "[recommendation.en-US.spring_sale_2026_free_shippin]\ntext = x\n", /* 50 bytes */
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        char path[64], err[512] = "", want[256];
        write_conf(path, sizeof path, refused[i]);
        templates *t = templates_load(path, NULL, 0, err, sizeof err);
        unlink(path);
        assert_null(t);
        snprintf(want, sizeof want, "%s:1: section name longer than 49 bytes", path);
        assert_string_equal(err, want);
    }
    static const char kept[] = "[recommendation.en-US.spring_sale_2026_free_shippi]\ntext = x\n";
    char err[256] = "";
    const char *tid = NULL;
    buf out = BUF_INIT;
    template_input in = {0};
    templates *t = load_text(kept, NULL, 0, err, sizeof err);
    assert_non_null(t);
    assert_int_equal(templates_render(t, "recommendation", "en-US", 0, &in, &out, &tid, NULL,
                                      err, sizeof err), 0);
    assert_string_equal(tid, "recommendation.en-US.spring_sale_2026_free_shippi");
    buf_free(&out);
    templates_free(t);
}

/* Renders (intent, locale, choice) and returns its status; the text in out. */
static int render_intent(const templates *t, const char *intent, const char *locale,
                         uint64_t choice, const template_input *in, buf *out, char *err,
                         size_t errlen) {
    buf_reset(out);
    return templates_render(t, intent, locale, choice, in, out, NULL, NULL, err, errlen);
}

static void test_trigger_title_and_old_price_are_placeholders(void **state) {
    (void)state;
    static const char conf[] =
        "[recommendation.zh-CN.a]\ntext = x\n"
        "[recommendation.en-US.a]\ntext = x\n"
        "[cross_sell.en-US.a]\ntext = With {trigger.title|your order}: {item.title}\n"
        "[price_drop.en-US.a]\ntext = {item.title} now {item.price}, was {item.old_price}\n"
        "[price_drop.zh-CN.a]\ntext = {item.title}现价{item.price}，原价{item.old_price|未知}\n";
    char err[256] = "";
    templates *t = load_text(conf, both, 2, err, sizeof err);
    if (!t) fail_msg("%s", err);
    buf out = BUF_INIT;
    promoted_item it = item("Lamp", 79990000, "USD");
    template_input in = {.items = &it, .n_items = 1, .trigger_title = "Desk"};
    assert_int_equal(render_intent(t, "cross_sell", "en-US", 0, &in, &out, err, sizeof err), 0);
    assert_string_equal(out.p, "With Desk: Lamp");
    in.trigger_title = NULL;
    assert_int_equal(render_intent(t, "cross_sell", "en-US", 0, &in, &out, err, sizeof err), 0);
    assert_string_equal(out.p, "With your order: Lamp");

    in.has_old_price = 1;
    in.old_price_micros = 99990000;
    assert_int_equal(render_intent(t, "price_drop", "en-US", 0, &in, &out, err, sizeof err), 0);
    assert_string_equal(out.p, "Lamp now $79.99, was $99.99");
    promoted_item zh = item("台灯", 79990000, "CNY");
    in.items = &zh;
    assert_int_equal(render_intent(t, "price_drop", "zh-CN", 0, &in, &out, err, sizeof err), 0);
    assert_string_equal(out.p, "台灯现价¥79.99，原价¥99.99");
    in.has_old_price = 0;
    assert_int_equal(render_intent(t, "price_drop", "zh-CN", 0, &in, &out, err, sizeof err), 0);
    assert_string_equal(out.p, "台灯现价¥79.99，原价未知");
    /* Without the old price and no fallback, there is no price-drop copy. */
    in.items = &it;
    assert_int_equal(render_intent(t, "price_drop", "en-US", 0, &in, &out, err, sizeof err),
                     TEMPLATE_MISSING_FIELD);
    assert_string_equal(err, "{item.old_price} has nothing to show and no fallback "
                             "(template price_drop.en-US.a)");
    buf_free(&out);
    templates_free(t);

    /* The old price means nothing outside a price drop. */
    expect_load_error("[recommendation.zh-CN.a]\ntext = x\n[recommendation.en-US.a]\n"
                      "text = was {item.old_price|?}\n",
                      "F:4:12: {item.old_price} is only known in price_drop templates, not in "
                      "[recommendation.en-US.a]");
}

static void test_required_intents_need_a_template_per_locale(void **state) {
    (void)state;
    static const char conf[] =
        "[recommendation.zh-CN.a]\ntext = x\n[recommendation.en-US.a]\ntext = x\n"
        "[cart_reminder.zh-CN.a]\ntext = x\n";
    char path[64], err[256] = "";
    write_conf(path, sizeof path, conf);
    templates *t = templates_load(path, both, 2, err, sizeof err);
    assert_non_null(t);
    assert_int_equal(templates_require(t, "cart_reminder", both, 1, err, sizeof err), 0);
    assert_int_equal(templates_require(t, "cart_reminder", both, 2, err, sizeof err), -1);
    char want[256];
    snprintf(want, sizeof want, "%s: no [cart_reminder.en-US.<variant>] template for locale en-US",
             path);
    assert_string_equal(err, want);
    unlink(path);
    templates_free(t);
}

static const char CHANNELS[] =
    "[channels]\npush = 20\ninapp = 45\n"
    "[recommendation.zh-CN.a]\ntext = 看看{item.title|这款}\n"
    "[recommendation.en-US.a]\ntext = See {item.title|this}!\n"
    "[recommendation.en-US.b]\nchannel = inapp\ntext = You might like {item.title|this}.\n";

/* Characters, not bytes: 看看 plus a 18-character title is 20, at the limit. */
static void test_channel_limits_count_characters_and_stop_long_copies(void **state) {
    (void)state;
    char err[256] = "";
    templates *t = load_text(CHANNELS, both, 2, err, sizeof err);
    if (!t) fail_msg("%s", err);
    assert_string_equal(templates_channel_at(t, 0), "push");  /* recommendation.en-US.a */
    assert_string_equal(templates_channel_at(t, 1), "inapp"); /* recommendation.en-US.b */
    buf out = BUF_INIT;
    promoted_item it = item("一二三四五六七八九十一二三四五六七八", 0, NULL);
    template_input in = {.items = &it, .n_items = 1};
    assert_int_equal(render_intent(t, "recommendation", "zh-CN", 0, &in, &out, err, sizeof err),
                     0);
    assert_int_equal(templates_chars(out.p, out.len), 20);
    it.title = "一二三四五六七八九十一二三四五六七八九";
    buf_puts(&out, "kept");
    size_t kept = out.len;
    assert_int_equal(templates_render(t, "recommendation", "zh-CN", 0, &in, &out, NULL, NULL, err,
                                      sizeof err), TEMPLATE_TOO_LONG);
    assert_string_equal(err, "the text is 21 characters, over channel push's limit of 20 "
                             "(template recommendation.zh-CN.a)");
    assert_int_equal(out.len, kept);
    /* The same title fits the in-app variant's larger limit. */
    it.title = "A title of twenty-five ch";
    assert_int_equal(render_intent(t, "recommendation", "en-US", 1, &in, &out, err, sizeof err),
                     0);
    assert_string_equal(out.p, "You might like A title of twenty-five ch.");
    assert_int_equal(render_intent(t, "recommendation", "en-US", 0, &in, &out, err, sizeof err),
                     TEMPLATE_TOO_LONG);
    buf_free(&out);
    templates_free(t);
}

static void test_channel_problems_are_load_errors_with_line_and_column(void **state) {
    (void)state;
    char conf[1024];
    static const char ok[] = "[recommendation.zh-CN.a]\ntext = 好\n";
    snprintf(conf, sizeof conf, "[channels]\nsms = 10\n%s[recommendation.en-US.a]\n"
             "text = This fixed text is long {item.title|}\n", ok);
    expect_load_error(conf, "F:6:8: the fixed text of [recommendation.en-US.a] alone is 24 "
                            "characters, over channel sms's limit of 10");
    snprintf(conf, sizeof conf, "[channels]\nsms = 10\n%s[recommendation.en-US.a]\n"
             "text = Hi {item.title|a long fallback}\n", ok);
    expect_load_error(conf, "F:6:8: [recommendation.en-US.a] is 18 characters with every "
                            "placeholder at its fallback, over channel sms's limit of 10");
    snprintf(conf, sizeof conf, "[channels]\nsms = 10\n%s[recommendation.en-US.a]\n"
             "channel = email\ntext = Hi\n", ok);
    expect_load_error(conf, "F:6:11: [recommendation.en-US.a] names channel email, which "
                            "[channels] does not declare");
    snprintf(conf, sizeof conf, "[channels]\nsms = ten\n%s", ok);
    expect_load_error(conf, "F:2:7: channel sms: the limit must be a number of characters from "
                            "1 to 100000, got \"ten\"");
    snprintf(conf, sizeof conf, "[channels]\nsms = 10\nsms = 20\n%s", ok);
    expect_load_error(conf, "F:3:1: channel sms is declared twice");
    snprintf(conf, sizeof conf, "%s[recommendation.en-US.a]\nchannel = sms\n", ok);
    expect_load_error(conf, "F:4:1: [recommendation.en-US.a] has no text");
}

static void test_banned_phrases_fail_the_load_with_where_and_stop_rendered_copy(void **state) {
    (void)state;
    char conf[1024];
    static const char ok[] = "[recommendation.zh-CN.a]\ntext = 好\n";
    /* Found in the fixed text, case aside, with the column of the phrase. */
    snprintf(conf, sizeof conf, "%s[recommendation.en-US.a]\ntext = Get it, 100%% FREE today\n"
             "[banned]\nphrase = 100%% free\n", ok);
    expect_load_error(conf, "F:4:16: [recommendation.en-US.a] contains the banned phrase "
                            "\"100% free\" (banned at line 6)");
    /* In a fallback, counted in characters. */
    snprintf(conf, sizeof conf, "[banned]\nphrase = 最低价\n%s[recommendation.en-US.a]\n"
             "text = {item.title|全网最低价}\n", ok);
    expect_load_error(conf, "F:6:22: [recommendation.en-US.a] contains the banned phrase "
                            "\"最低价\" (banned at line 2)");
    snprintf(conf, sizeof conf, "[banned]\nword = x\n%s", ok);
    expect_load_error(conf, "F:2:1: unknown key 'word' in [banned] (write phrase = <text>)");

    /* A catalog title can bring one in at render time. */
    snprintf(conf, sizeof conf, "[banned]\nphrase = guaranteed\n%s[recommendation.en-US.a]\n"
             "text = See {item.title|this}\n", ok);
    char err[256] = "";
    templates *t = load_text(conf, both, 2, err, sizeof err);
    if (!t) fail_msg("%s", err);
    promoted_item it = item("Guaranteed Fit Jeans", 0, NULL);
    template_input in = {.items = &it, .n_items = 1};
    buf out = BUF_INIT;
    assert_int_equal(render_intent(t, "recommendation", "en-US", 0, &in, &out, err, sizeof err),
                     TEMPLATE_BANNED);
    assert_string_equal(err, "the text contains the banned phrase \"guaranteed\" (template "
                             "recommendation.en-US.a)");
    it.title = "Slim Fit Jeans";
    assert_int_equal(render_intent(t, "recommendation", "en-US", 0, &in, &out, err, sizeof err),
                     0);
    buf_free(&out);
    templates_free(t);
}

static void test_missing_file_is_a_load_error(void **state) {
    (void)state;
    char err[256] = "";
    assert_null(templates_load("/nonexistent/templates.conf", both, 2, err, sizeof err));
    assert_string_equal(err, "/nonexistent/templates.conf: cannot open: No such file or directory");
    templates_free(NULL);
}

/* config/templates.conf, found from this file's path (tests build from the
 * repository root). */
static void shipped_path(char *path, size_t len) {
    const char *self = __FILE__;
    const char *tail = strstr(self, "tests/unit/test_template.c");
    assert_non_null(tail);
    snprintf(path, len, "%.*sconfig/templates.conf", (int)(tail - self), self);
}

static void test_shipped_templates_render_exact_copy_in_both_locales(void **state) {
    (void)state;
    char path[512], err[256] = "";
    shipped_path(path, sizeof path);
    templates *t = templates_load(path, both, 2, err, sizeof err);
    if (!t) fail_msg("%s", err);

    promoted_item zh_items[] = {item("小米14", 3999000000, "CNY"), item("华为Mate 60", 0, NULL)};
    copy_reason zh_reasons[] = {{.text = "高清屏幕"}, {.text = "超长续航"}};
    template_input zh = {.items = zh_items, .n_items = 2, .reasons = zh_reasons, .n_reasons = 2};
    expect_render(t, "zh-CN", 0, &zh, "您可能会喜欢小米14：它具备高清屏幕、超长续航，正合您意。");
    expect_render(t, "zh-CN", 1, &zh, "为您精选小米14、华为Mate 60，首推小米14，售价¥3,999.00。");

    promoted_item en_items[] = {item("Pixel 8", 699000000, "USD"), item("Galaxy S24", 0, NULL),
                                item("iPhone 15", 0, NULL)};
    copy_reason en_reasons[] = {{.text = "an HD screen"}, {.text = "all-day battery"}};
    template_input en = {.items = en_items, .n_items = 3, .reasons = en_reasons, .n_reasons = 2};
    expect_render(t, "en-US", 0, &en, "You might like Pixel 8: it has an HD screen and all-day "
                                      "battery, just what you love.");
    expect_render(t, "en-US", 1, &en, "Picked for you: Pixel 8, Galaxy S24 and iPhone 15. Our "
                                      "top pick: Pixel 8 at $699.00.");

    /* Nothing known at all: every placeholder has a fallback. */
    template_input none = {0};
    expect_render(t, "zh-CN", 0, &none, "您可能会喜欢这款商品：它具备您关注的特点，正合您意。");
    expect_render(t, "zh-CN", 1, &none, "为您精选几款新品，首推这款商品，售价详见商品页。");
    expect_render(t, "en-US", 0, &none, "You might like this pick: it has the features you look "
                                        "for, just what you love.");
    expect_render(t, "en-US", 1, &none, "Picked for you: a few new favorites. Our top pick: take "
                                        "a look at today's price.");
    templates_free(t);
}

/* Every intent has templates in both locales; each variant renders whole
 * with everything known, and with nothing known only where a copy without
 * its field makes sense (a price drop without prices does not). */
static void test_shipped_templates_cover_every_intent_in_both_locales(void **state) {
    (void)state;
    char path[512], err[256] = "";
    shipped_path(path, sizeof path);
    templates *t = templates_load(path, both, 2, err, sizeof err);
    if (!t) fail_msg("%s", err);
    static const char *const intents[] = {"recommendation", "cart_reminder", "cross_sell",
                                          "re_engagement", "price_drop"};
    buf out = BUF_INIT;
    for (size_t i = 0; i < sizeof intents / sizeof intents[0]; i++) {
        assert_int_equal(templates_require(t, intents[i], both, 2, err, sizeof err), 0);
        for (size_t l = 0; l < 2; l++) {
            int zh = l == 0;
            promoted_item items[] = {
                item(zh ? "星河 A1 手机" : "Star A1 Phone", 2999000000, zh ? "CNY" : "USD"),
                item(zh ? "星河 手表" : "Star Watch", 999000000, zh ? "CNY" : "USD")};
            copy_reason reasons[] = {{.text = zh ? "高清屏幕" : "a high-definition screen"}};
            template_input full = {.items = items, .n_items = 2, .reasons = reasons,
                                   .n_reasons = 1, .has_old_price = 1,
                                   .old_price_micros = 3499000000,
                                   .trigger_title = zh ? "星河 B2 手机" : "Star B2 Phone"};
            template_input none = {0};
            size_t n = templates_variant_count(t, intents[i], both[l]);
            assert_true(n >= 2);
            for (uint64_t v = 0; v < n; v++) {
                if (render_intent(t, intents[i], both[l], v, &full, &out, err, sizeof err))
                    fail_msg("%s.%s variant %u: %s", intents[i], both[l], (unsigned)v, err);
                assert_null(strchr(out.p, '{'));
                assert_non_null(strstr(out.p, zh ? "星河" : "Star"));
                int rc = render_intent(t, intents[i], both[l], v, &none, &out, err, sizeof err);
                if (!strcmp(intents[i], "price_drop"))
                    assert_int_equal(rc, TEMPLATE_MISSING_FIELD);
                else if (rc)
                    fail_msg("%s.%s variant %u with nothing known: %s", intents[i], both[l],
                             (unsigned)v, err);
            }
        }
    }
    promoted_item drop = item("Star A1 Phone", 2999000000, "USD");
    template_input in = {.items = &drop, .n_items = 1, .has_old_price = 1,
                         .old_price_micros = 3499000000};
    assert_int_equal(render_intent(t, "price_drop", "en-US", 0, &in, &out, err, sizeof err), 0);
    assert_string_equal(out.p, "Price drop on Star A1 Phone: now $2,999.00, was $3,499.00.");
    promoted_item cart = item("星河 A1 手机", 2999000000, "CNY");
    in = (template_input){.items = &cart, .n_items = 1};
    assert_int_equal(render_intent(t, "cart_reminder", "zh-CN", 0, &in, &out, err, sizeof err), 0);
    assert_string_equal(out.p, "您加入购物车的星河 A1 手机还在等您，售价¥2,999.00。");
    buf_free(&out);
    templates_free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_title_lists_join_per_locale_for_one_two_three_items),
        cmocka_unit_test(test_reasons_join_like_titles_and_skip_empty_texts),
        cmocka_unit_test(test_price_is_formatted_for_locale_and_currency),
        cmocka_unit_test(test_fallback_replaces_a_missing_or_empty_field),
        cmocka_unit_test(test_missing_field_without_fallback_fails_naming_the_placeholder),
        cmocka_unit_test(test_double_braces_are_literal_braces),
        cmocka_unit_test(test_choice_picks_variants_in_name_order),
        cmocka_unit_test(test_unknown_intent_or_locale_fails_to_render),
        cmocka_unit_test(test_indented_lines_continue_a_text),
        cmocka_unit_test(test_load_errors_name_file_line_and_column),
        cmocka_unit_test(test_file_without_templates_loads_empty_without_undefined_behaviour),
        cmocka_unit_test(test_nul_byte_in_file_is_refused_naming_its_line),
        cmocka_unit_test(test_section_name_longer_than_inih_keeps_is_refused),
        cmocka_unit_test(test_missing_file_is_a_load_error),
        cmocka_unit_test(test_trigger_title_and_old_price_are_placeholders),
        cmocka_unit_test(test_required_intents_need_a_template_per_locale),
        cmocka_unit_test(test_channel_limits_count_characters_and_stop_long_copies),
        cmocka_unit_test(test_channel_problems_are_load_errors_with_line_and_column),
        cmocka_unit_test(test_banned_phrases_fail_the_load_with_where_and_stop_rendered_copy),
        cmocka_unit_test(test_shipped_templates_render_exact_copy_in_both_locales),
        cmocka_unit_test(test_shipped_templates_cover_every_intent_in_both_locales),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
