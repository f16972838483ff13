/* fuzz_config.c -- libFuzzer target: config_load() on any file and any
 * COPYSTREAM_* environment, then what the rest of the program does with a
 * loaded config (the getters, the kafka.* and schema.id.* walks, the dump,
 * config_set).
 *
 * An input is the INI file, optionally followed by a line "#env" (a comment to
 * the parser) and NUL-separated NAME=value strings, to each of which
 * "COPYSTREAM_" is prepended: variables without that prefix are ignored by
 * config.c, so the fuzzer need not find it. The last variable, if any, is
 * also given to config_set() as key=value once the config has loaded.
 *
 * Properties, beyond "no crash, leak or undefined behaviour":
 *   - a failed load says why;
 *   - a loaded config holds values its typed getters accept, inside the
 *     bounds config/copystream.conf documents for the keys checked here, and
 *     copy.default_locale is one of copy.locales;
 *   - a refused config_set leaves every value as it was. */
#include "fuzz.h"

#include <fcntl.h>

#include "config.h"

#define ENV_SEP "\n#env\n"
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len) {
    size_t file_len, env_len;
    const uint8_t *env_at;
    char err[1024] = "";
    char *vars[MAX_VARS + 1];
    size_t n_vars = 0;
    fuzz_split(data, len, ENV_SEP, &file_len, &env_at, &env_len);

    /* "COPYSTREAM_" + each NUL-separated string. */
    for (size_t at = 0; env_at && at < env_len && n_vars < MAX_VARS;) {
        const uint8_t *end = memchr(env_at + at, 0, env_len - at);
        size_t n = end ? (size_t)(end - env_at) - at : env_len - at;
        if (!(vars[n_vars] = malloc(strlen("COPYSTREAM_") + n + 1))) break;
        memcpy(vars[n_vars], "COPYSTREAM_", strlen("COPYSTREAM_"));
        memcpy(vars[n_vars] + strlen("COPYSTREAM_"), env_at + at, n);
        vars[n_vars][strlen("COPYSTREAM_") + n] = '\0';
        n_vars++;
        at += n + 1;
    }
    vars[n_vars] = NULL;

    config *c = config_load(fuzz_file(data, file_len), vars, err, sizeof err);
    if (!c) {
        FUZZ_CHECK(err[0], "load failed without a reason");
    } else {
        use(c);
        /* The last variable once more, through config_set, as "key=value". */
        char *eq = n_vars ? strchr(vars[n_vars - 1], '=') : NULL;
        if (eq) {
            const char *key = vars[n_vars - 1] + strlen("COPYSTREAM_");
            char *k = strndup(key, (size_t)(eq - key));
            char before[512] = "", after[512] = "";
            if (k) {
                snprintf(before, sizeof before, "%s|%s", config_str(c, "copy.locales"),
                         config_str(c, "copy.default_locale"));
                if (config_set(c, k, eq + 1, err, sizeof err) < 0) {
                    FUZZ_CHECK(err[0], "config_set failed without a reason");
                    snprintf(after, sizeof after, "%s|%s", config_str(c, "copy.locales"),
                             config_str(c, "copy.default_locale"));
                    FUZZ_CHECK(strcmp(before, after) == 0, "refused config_set changed %s",
                               before);
                }
                use(c);
                free(k);
            }
        }
        config_free(c);
    }
    for (size_t i = 0; i < n_vars; i++) free(vars[i]);
    return 0;
}
