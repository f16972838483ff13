/* fuzz_config.c -- libFuzzer target: config_load() on any file and any
 * COPYSTREAM_* environment, then what the rest of the program does with a
 * loaded config (the getters, the kafka.* and schema.id.* walks, the dump,
 * config_set).
 *
 * An input is the INI file, optionally followed by a line "#env" (a comment to
 * the parser) and NUL-separated NAME=value strings, to each of which
 * "COPYSTREAM_" is prepended: variables without that prefix are ignored by
 * config.c, so the fuzzer need not find it. After the variables may come a
 * line "#set" and NUL-separated key, value, key, value... given to
 * config_set() once the config has loaded, as subcommand flags are.
 *
 * Properties, beyond "no crash, leak or undefined behaviour":
 *   - a failed load says why, and a file holding a NUL byte does not load
 *     (what follows the NUL on its line would be dropped without a word);
 *   - a loaded config holds values its typed getters accept, inside the
 *     bounds config/copystream.conf documents for the keys checked here, and
 *     copy.default_locale is one of copy.locales;
 *   - a refused config_set leaves the config as it was (checked on the one
 *     rule between keys: copy.default_locale is one of copy.locales). */
#include "fuzz.h"

#include <fcntl.h>

#include "config.h"

#define ENV_SEP "\n#env\n"
#define SET_SEP "\n#set\n"
#define MAX_VARS 64

static int devnull = -1;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    devnull = open("/dev/null", O_WRONLY);
    FUZZ_CHECK(devnull >= 0, "cannot open /dev/null");
    return 0;
}

static void count_kv(const char *name, const char *value, void *ud) {
    FUZZ_CHECK(name && value, "NULL name or value");
    ++*(size_t *)ud;
}

/* Is word one of the elements of the comma-separated list? */
static int list_has(const char *list, const char *word) {
    size_t n = strlen(word);
    for (const char *p = list;;) {
        size_t len = strcspn(p, ",");
        if (len == n && memcmp(p, word, n) == 0) return 1;
        if (!p[len]) return 0;
        p += len + 1;
    }
}

/* Everything the program reads from a config at start-up, checked. */
static void use(const config *c) {
    size_t n = 0;
    FUZZ_CHECK(config_int(c, "redis.port") >= 1 && config_int(c, "redis.port") <= 65535,
               "redis.port out of bounds");
    FUZZ_CHECK(config_int(c, "input.max_bytes") >= 64, "input.max_bytes out of bounds");
    FUZZ_CHECK(config_int(c, "copy.items") >= 1 && config_int(c, "copy.items") <= 20,
               "copy.items out of bounds");
    double hl = config_double(c, "affinity.half_life_s");
    FUZZ_CHECK(hl >= 1 && hl <= 1e9, "affinity.half_life_s out of bounds");
    const char *locales = config_str(c, "copy.locales");
    FUZZ_CHECK(locales && *locales, "copy.locales is empty");
    FUZZ_CHECK(list_has(locales, config_str(c, "copy.default_locale")),
               "copy.default_locale %s is not in %s", config_str(c, "copy.default_locale"),
               locales);
    FUZZ_CHECK(*config_str(c, "copy.trigger_types"), "copy.trigger_types is empty");
    FUZZ_CHECK(config_str(c, "kafka.bootstrap.servers"), "no kafka.bootstrap.servers");
    config_kafka_each(c, "consumer", count_kv, &n);
    config_kafka_each(c, "producer", count_kv, &n);
    config_schema_ids_each(c, count_kv, &n);
    config_dump(c, devnull);
}

/* Splits s[0..len) at NUL bytes into at most max heap strings, each prefixed
 * with prefix; returns how many. */
static size_t split_strings(const uint8_t *s, size_t len, const char *prefix, char **out,
                            size_t max) {
    size_t n = 0, plen = strlen(prefix);
    for (size_t at = 0; s && at < len && n < max;) {
        const uint8_t *end = memchr(s + at, 0, len - at);
        size_t k = end ? (size_t)(end - s) - at : len - at;
        if (!(out[n] = malloc(plen + k + 1))) break;
        memcpy(out[n], prefix, plen);
        memcpy(out[n] + plen, s + at, k);
        out[n][plen + k] = '\0';
        n++;
        at += k + 1;
    }
    return n;
}

/* config_set() of key = value, which must either work or change nothing. */
static void set(config *c, const char *key, const char *value) {
    char err[1024] = "", before[512], after[512];
    snprintf(before, sizeof before, "%s|%s", config_str(c, "copy.locales"),
             config_str(c, "copy.default_locale"));
    if (config_set(c, key, value, err, sizeof err) < 0) {
        FUZZ_CHECK(err[0], "config_set failed without a reason");
        snprintf(after, sizeof after, "%s|%s", config_str(c, "copy.locales"),
                 config_str(c, "copy.default_locale"));
        FUZZ_CHECK(strcmp(before, after) == 0, "refused config_set changed %s to %s", before,
                   after);
    }
    use(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len) {
    size_t file_len, rest_len, env_len, set_len;
    const uint8_t *rest, *set_at;
    char err[1024] = "";
    char *vars[MAX_VARS + 1], *sets[MAX_VARS];
    fuzz_split(data, len, ENV_SEP, &file_len, &rest, &rest_len);
    fuzz_split(rest ? rest : data, rest_len, SET_SEP, &env_len, &set_at, &set_len);

    size_t n_vars = split_strings(rest, env_len, "COPYSTREAM_", vars, MAX_VARS);
    vars[n_vars] = NULL;
    size_t n_sets = split_strings(set_at, set_len, "", sets, MAX_VARS);

    config *c = config_load(fuzz_file(data, file_len), vars, err, sizeof err);
    FUZZ_CHECK(!c || !memchr(data, 0, file_len), "a file holding a NUL byte loaded");
    if (!c) {
        FUZZ_CHECK(err[0], "load failed without a reason");
    } else {
        use(c);
        for (size_t i = 0; i + 1 < n_sets; i += 2) set(c, sets[i], sets[i + 1]);
        config_free(c);
    }
    for (size_t i = 0; i < n_vars; i++) free(vars[i]);
    for (size_t i = 0; i < n_sets; i++) free(sets[i]);
    return 0;
}
