/* test_config.c -- the config module: the shipped file, validation with
 * file:line / variable in every error, environment mapping, kafka.* checks
 * against librdkafka, secrets, and kafka.* scoping per client.
 *
 * Run from the repository root: the shipped file is read as
 * config/copystream.conf. Expected values are the documented defaults
 * written out here, never read back from the code under test. */
#define _GNU_SOURCE
#include "testutil.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"

#define SHIPPED "config/copystream.conf"

/* A temporary config file holding text; the caller unlinks path. */
static void write_temp(const char *text, char *path, size_t pathlen) {
    snprintf(path, pathlen, "/tmp/copystream-config-test-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
}

/* Loads text as a file with envp; on failure returns NULL with the error in
 * errstr. path receives the file name used, for expected messages. */
static config *load_text(const char *text, char *const *envp, char *path, size_t pathlen,
                         char *errstr, size_t errlen) {
    write_temp(text, path, pathlen);
    config *c = config_load(path, envp, errstr, errlen);
    unlink(path);
    return c;
}

/* Loading text must fail with exactly "<key> (<path>:<line>): <reason>". */
static void assert_file_error(const char *text, const char *key, int line, const char *reason) {
    char path[64], err[1024], want[1024];
    config *c = load_text(text, NULL, path, sizeof path, err, sizeof err);
    assert_null(c);
    snprintf(want, sizeof want, "%s (%s:%d): %s", key, path, line, reason);
    assert_string_equal(err, want);
}

/* Everything config_dump writes, NUL-terminated; the caller frees. */
static char *dump_text(const config *c) {
    FILE *f = tmpfile();
    assert_non_null(f);
    config_dump(c, fileno(f));
    long len = lseek(fileno(f), 0, SEEK_END);
    assert_true(len > 0);
    char *text = calloc(1, (size_t)len + 1);
    assert_non_null(text);
    assert_int_equal(pread(fileno(f), text, (size_t)len, 0), len);
    fclose(f);
    return text;
}

static void test_shipped_config_loads_with_documented_defaults(void **state) {
    (void)state;
    char err[512] = "";
    config *c = config_load(SHIPPED, NULL, err, sizeof err);
    if (!c) fail_msg("%s", err);
    assert_string_equal(config_str(c, "log.level"), "info");
    assert_string_equal(config_str(c, "topic.clickstream"), "clickstream");
    assert_string_equal(config_str(c, "topic.dead_letter"), "copystream.dlq");
    assert_int_equal(config_int(c, "topic.partitions"), 6);
    assert_int_equal(config_int(c, "input.max_bytes"), 1048576);
    assert_string_equal(config_str(c, "redis.host"), "127.0.0.1");
    assert_int_equal(config_int(c, "redis.port"), 6379);
    assert_string_equal(config_str(c, "redis.user"), "");
    assert_string_equal(config_str(c, "redis.password"), "");
    assert_int_equal(config_int(c, "state.ttl_s"), 2592000);
    assert_true(config_double(c, "affinity.half_life_s") == 604800.0);
    assert_true(config_double(c, "affinity.weight.add_to_cart") == 3.0);
    assert_true(config_double(c, "affinity.weight.search") == 0.5);
    assert_string_equal(config_str(c, "processing.guarantee"), "at_least_once");
    assert_string_equal(config_str(c, "copy.trigger_types"),
                        "view,click,add_to_cart,purchase,favorite");
    assert_int_equal(config_int(c, "copy.min_interval_s"), 600);
    assert_string_equal(config_str(c, "copy.default_locale"), "en-US");
    assert_string_equal(config_str(c, "copy.locales"), "zh-CN,en-US");
    assert_string_equal(config_str(c, "copy.templates"), "config/templates.conf");
    assert_int_equal(config_int(c, "http.port"), 9464);
    assert_string_equal(config_str(c, "kafka.bootstrap.servers"), "127.0.0.1:9092");
    assert_string_equal(config_str(c, "kafka.group.id"), "copystream");
    config_free(c);
}

/* The file is the documentation of the table: it must set every key, and to
 * the value the program uses when the key is left out. */
static void test_shipped_config_sets_every_key_to_its_builtin_default(void **state) {
    (void)state;
    char err[512] = "";
    config *shipped = config_load(SHIPPED, NULL, err, sizeof err);
    if (!shipped) fail_msg("%s", err);
    config *builtin = config_load(NULL, NULL, err, sizeof err);
    if (!builtin) fail_msg("%s", err);
    char *a = dump_text(shipped), *b = dump_text(builtin);

    int lines = 0;
    for (char *sa = NULL, *sb = NULL, *la = strtok_r(a, "\n", &sa), *lb = strtok_r(b, "\n", &sb);
         la || lb; la = strtok_r(NULL, "\n", &sa), lb = strtok_r(NULL, "\n", &sb)) {
        assert_non_null(la);
        assert_non_null(lb);
        char *ma = strstr(la, "  # "), *mb = strstr(lb, "  # ");
        assert_non_null(ma);
        assert_non_null(mb);
        if (strncmp(ma + 4, SHIPPED ":", strlen(SHIPPED ":")) != 0)
            fail_msg("not set in %s: %s", SHIPPED, la);
        assert_string_equal(mb + 4, "default");
        *ma = *mb = '\0';
        assert_string_equal(la, lb);
        lines++;
    }
    /* The 88 declared keys, 3 kafka and 4 schema id defaults. */
    assert_int_equal(lines, 95);
    free(a);
    free(b);
    config_free(shipped);
    config_free(builtin);
}

static void test_builtin_schema_ids_exist_without_a_file(void **state) {
    (void)state;
    char err[512] = "";
    config *c = config_load(NULL, NULL, err, sizeof err);
    if (!c) fail_msg("%s", err);
    assert_string_equal(config_str(c, "schema.id.1"), "ClickEvent.avsc");
    assert_string_equal(config_str(c, "schema.id.2"), "CatalogItem.avsc");
    assert_string_equal(config_str(c, "schema.id.3"), "PersonalizedCopy.avsc");
    assert_string_equal(config_str(c, "schema.id.4"), "Reaction.avsc");
    assert_null(config_str(c, "schema.id.5"));
    config_free(c);
}

static void collect_kv(const char *name, const char *value, void *ud) {
    char *out = ud;
    size_t len = strlen(out);
    snprintf(out + len, 2048 - len, "%s=%s;", name, value);
}

static void test_file_can_add_and_override_schema_ids(void **state) {
    (void)state;
    char path[64], err[512] = "", got[2048] = "";
    config *c = load_text("[schema]\nid.2 = CatalogItemV2.avsc\nid.17 = ClickEventV3.avsc\n",
                          NULL, path, sizeof path, err, sizeof err);
    if (!c) fail_msg("%s", err);
    config_schema_ids_each(c, collect_kv, got);
    assert_string_equal(got, "1=ClickEvent.avsc;2=CatalogItemV2.avsc;3=PersonalizedCopy.avsc;"
                             "4=Reaction.avsc;17=ClickEventV3.avsc;");
    config_free(c);
}

static void test_env_override_wins_over_file(void **state) {
    (void)state;
    char path[64], err[512] = "";
    char *env[] = {"PATH=/bin", "COPYSTREAM_REDIS_PORT=6390",
                   "COPYSTREAM_REDIS_HOST=redis.internal", NULL};
    config *c = load_text("[redis]\nport = 7000\nhost = file-host\ndb = 3\n", env, path,
                          sizeof path, err, sizeof err);
    if (!c) fail_msg("%s", err);
    assert_int_equal(config_int(c, "redis.port"), 6390);
    assert_string_equal(config_str(c, "redis.host"), "redis.internal");
    assert_int_equal(config_int(c, "redis.db"), 3);
    config_free(c);
}

static void test_env_double_underscore_maps_to_underscore_in_key(void **state) {
    (void)state;
    char err[512] = "";
    char *env[] = {"COPYSTREAM_COPY_MIN__INTERVAL__S=60",
                   "COPYSTREAM_AFFINITY_WEIGHT_ADD__TO__CART=4.5", NULL};
    config *c = config_load(NULL, env, err, sizeof err);
    if (!c) fail_msg("%s", err);
    assert_int_equal(config_int(c, "copy.min_interval_s"), 60);
    assert_true(config_double(c, "affinity.weight.add_to_cart") == 4.5);
    config_free(c);
}

static void test_env_kafka_and_schema_variables_map_to_family_keys(void **state) {
    (void)state;
    char err[512] = "", consumer[2048] = "";
    char *env[] = {"COPYSTREAM_KAFKA_BOOTSTRAP_SERVERS=k1:9092,k2:9092",
                   "COPYSTREAM_KAFKA_CONSUMER_SESSION_TIMEOUT_MS=12000",
                   "COPYSTREAM_SCHEMA_ID_9=Extra.avsc", NULL};
    config *c = config_load(NULL, env, err, sizeof err);
    if (!c) fail_msg("%s", err);
    assert_string_equal(config_str(c, "kafka.bootstrap.servers"), "k1:9092,k2:9092");
    assert_string_equal(config_str(c, "kafka.consumer.session.timeout.ms"), "12000");
    assert_string_equal(config_str(c, "schema.id.9"), "Extra.avsc");
    config_kafka_each(c, "consumer", collect_kv, consumer);
    assert_non_null(strstr(consumer, "bootstrap.servers=k1:9092,k2:9092;"));
    assert_non_null(strstr(consumer, "session.timeout.ms=12000;"));
    config_free(c);
}

static void test_unknown_copystream_variable_fails_naming_the_variable(void **state) {
    (void)state;
    char err[512] = "";
    char *env[] = {"COPYSTREAM_REDIS_PROT=6380", NULL};
    assert_null(config_load(NULL, env, err, sizeof err));
    assert_string_equal(err, "redis.prot (env COPYSTREAM_REDIS_PROT): unknown key "
                             "(did you mean redis.port, set by COPYSTREAM_REDIS_PORT?)");
}

static void test_copystream_config_variable_is_reserved_not_a_key(void **state) {
    (void)state;
    char err[512] = "";
    char *env[] = {"COPYSTREAM_CONFIG=/etc/copystream.conf", "HOME=/root", NULL};
    config *c = config_load(NULL, env, err, sizeof err);
    if (!c) fail_msg("%s", err);
    config_free(c);
}

static void test_bad_value_from_env_names_the_variable(void **state) {
    (void)state;
    char err[512] = "";
    char *env[] = {"COPYSTREAM_BATCH_MAX__WAIT__MS=soon", NULL};
    assert_null(config_load(NULL, env, err, sizeof err));
    assert_string_equal(err, "batch.max_wait_ms (env COPYSTREAM_BATCH_MAX__WAIT__MS): must be an "
                             "integer between 0 and 60000, got \"soon\"");
}

static void test_unknown_key_in_file_fails_naming_key_and_line(void **state) {
    (void)state;
    assert_file_error("# Redis\n[redis]\nhost = localhost\nprot = 6380\n", "redis.prot", 4,
                      "unknown key (did you mean redis.port?)");
    assert_file_error("[topics]\nclickstream = clicks\n", "topics.clickstream", 2,
                      "unknown key (did you mean topic.clickstream?)");
    assert_file_error("[general]\nfoo = 1\n", "general.foo", 2, "unknown key");
}

static void test_out_of_bounds_int_fails_naming_key_and_bounds(void **state) {
    (void)state;
    assert_file_error("[redis]\nport = 70000\n", "redis.port", 2,
                      "must be an integer between 1 and 65535, got \"70000\"");
    assert_file_error("[redis]\nport = abc\n", "redis.port", 2,
                      "must be an integer between 1 and 65535, got \"abc\"");
    assert_file_error("[state]\nttl_s = 59\n", "state.ttl_s", 2,
                      "must be an integer between 60 and 31622400, got \"59\"");
    assert_file_error("[redis]\ndb = 99999999999999999999\n", "redis.db", 2,
                      "must be an integer between 0 and 15, got \"99999999999999999999\"");
}

static void test_out_of_bounds_double_fails_naming_key_and_bounds(void **state) {
    (void)state;
    assert_file_error("[affinity]\nweight.view = -0.5\n", "affinity.weight.view", 2,
                      "must be a number between 0 and 1000, got \"-0.5\"");
    assert_file_error("[affinity]\nhalf_life_s = 1e10\n", "affinity.half_life_s", 2,
                      "must be a number between 1 and 1000000000, got \"1e10\"");
}

static void test_bad_enum_value_fails_listing_the_choices(void **state) {
    (void)state;
    assert_file_error("[log]\nlevel = verbose\n", "log.level", 2,
                      "must be one of debug, info, warn, error; got \"verbose\"");
}

static void test_bad_list_element_in_trigger_types_fails(void **state) {
    (void)state;
    assert_file_error("[copy]\ntrigger_types = view, clik\n", "copy.trigger_types", 2,
                      "\"clik\" is not one of view, click, add_to_cart, purchase, search, "
                      "favorite");
    assert_file_error("[copy]\ntrigger_types = view,,click\n", "copy.trigger_types", 2,
                      "has an empty element in \"view,,click\"");
    assert_file_error("[copy]\ntrigger_types =\n", "copy.trigger_types", 2,
                      "must list at least one element");
}

static void test_list_elements_are_stored_trimmed(void **state) {
    (void)state;
    char path[64], err[512] = "";
    config *c = load_text("[copy]\ntrigger_types = purchase , search\nlocales = en-US ,zh-CN\n",
                          NULL, path, sizeof path, err, sizeof err);
    if (!c) fail_msg("%s", err);
    assert_string_equal(config_str(c, "copy.trigger_types"), "purchase,search");
    assert_string_equal(config_str(c, "copy.locales"), "en-US,zh-CN");
    config_free(c);
}

static void test_empty_required_string_fails(void **state) {
    (void)state;
    assert_file_error("[topic]\ncopy =\n", "topic.copy", 2, "must not be empty");
}

static void test_default_locale_outside_locales_fails(void **state) {
    (void)state;
    char path[64], err[512], want[512];
    assert_null(load_text("[copy]\nlocales = zh-CN\n", NULL, path, sizeof path, err, sizeof err));
    snprintf(want, sizeof want,
             "copy.default_locale (default): \"en-US\" is not one of copy.locales = zh-CN (%s:2)",
             path);
    assert_string_equal(err, want);
    assert_file_error("[copy]\ndefault_locale = fr-FR\n", "copy.default_locale", 2,
                      "\"fr-FR\" is not one of copy.locales = zh-CN,en-US (default)");
}

static void test_key_set_twice_in_file_fails_naming_both_lines(void **state) {
    (void)state;
    char path[64], err[512], want[512];
    assert_null(load_text("[redis]\nport = 1\n\nport = 2\n", NULL, path, sizeof path, err,
                          sizeof err));
    snprintf(want, sizeof want, "redis.port (%s:4): set twice in the file, first at %s:2", path,
             path);
    assert_string_equal(err, want);
}

static void test_syntax_error_reports_its_line(void **state) {
    (void)state;
    char path[64], err[512], want[512];
    assert_null(load_text("[redis]\nport = 6379\nthis line has no equals sign\n", NULL, path,
                          sizeof path, err, sizeof err));
    snprintf(want, sizeof want, "%s:3: expected \"key = value\" or \"[section]\"", path);
    assert_string_equal(err, want);
    /* A syntax error before a bad value is the one reported. */
    assert_null(load_text("[redis\nport = 0\n", NULL, path, sizeof path, err, sizeof err));
    snprintf(want, sizeof want, "%s:1: expected \"key = value\" or \"[section]\"", path);
    assert_string_equal(err, want);
}

static void test_overlong_line_is_refused_not_split(void **state) {
    (void)state;
    char text[512], path[64], err[512];
    snprintf(text, sizeof text, "[topic]\ncopy = %0250d\n", 7);
    assert_null(load_text(text, NULL, path, sizeof path, err, sizeof err));
    assert_non_null(strstr(err, ":2: line longer than"));
}

/* Found by tests/fuzz (fuzz_config): inih ends a line at a NUL byte, so
 * "host = a<NUL>b" loaded as redis.host = "a", and the rest of the line was
 * dropped without a word. The fuzzer's input, minimized, was the file of one
 * NUL byte, which loaded as an empty file. */
#define BYTES(s) s, sizeof(s) - 1

static void test_nul_byte_in_file_is_refused_naming_its_line(void **state) {
    (void)state;
    static const struct {
        const char *bytes;
        size_t len;
        int line;
    } files[] = {
        {BYTES("\0"), 1},
        {BYTES("[redis]\nhost = a\0b\n"), 2},
        {BYTES("[redis]\nport = 6379\n# a comment\0\n"), 3},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[64] = "/tmp/copystream-config-test-XXXXXX", err[512] = "", want[256];
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, files[i].bytes, files[i].len), (ssize_t)files[i].len);
        close(fd);
        config *c = config_load(path, NULL, err, sizeof err);
        unlink(path);
        assert_null(c);
        snprintf(want, sizeof want, "%s:%d: NUL byte in the line; the file is not text", path,
                 files[i].line);
        assert_string_equal(err, want);
    }
}

static void test_indented_line_is_a_key_not_a_continuation(void **state) {
    (void)state;
    char path[64], err[512] = "";
    config *c = load_text("[redis]\nhost = cache\n    port = 6400\n\t; comment\n", NULL, path,
                          sizeof path, err, sizeof err);
    if (!c) fail_msg("%s", err);
    assert_string_equal(config_str(c, "redis.host"), "cache");
    assert_int_equal(config_int(c, "redis.port"), 6400);
    config_free(c);
}

static void test_keys_before_any_section_are_full_names(void **state) {
    (void)state;
    char path[64], err[512] = "";
    config *c = load_text("redis.port = 6401\ncopy.items = 5\n", NULL, path, sizeof path, err,
                          sizeof err);
    if (!c) fail_msg("%s", err);
    assert_int_equal(config_int(c, "redis.port"), 6401);
    assert_int_equal(config_int(c, "copy.items"), 5);
    config_free(c);
}

static void test_missing_file_fails_naming_the_path(void **state) {
    (void)state;
    char err[512];
    assert_null(config_load("/nonexistent/copystream.conf", NULL, err, sizeof err));
    assert_string_equal(err,
                        "/nonexistent/copystream.conf: cannot open: No such file or directory");
}

static void test_schema_id_must_be_a_positive_canonical_integer(void **state) {
    (void)state;
    const char *reason = "the schema id after schema.id. must be a whole number from 1 to "
                         "2147483647, written without sign or leading zeros";
    assert_file_error("[schema]\nid.0 = A.avsc\n", "schema.id.0", 2, reason);
    assert_file_error("[schema]\nid.x = A.avsc\n", "schema.id.x", 2, reason);
    assert_file_error("[schema]\nid.07 = A.avsc\n", "schema.id.07", 2, reason);
    assert_file_error("[schema]\nid.2147483648 = A.avsc\n", "schema.id.2147483648", 2, reason);
    assert_file_error("[schema]\nid.5 =\n", "schema.id.5", 2,
                      "must be the .avsc file for that schema id, got nothing");
}

static void test_unknown_librdkafka_property_fails_with_librdkafka_reason(void **state) {
    (void)state;
    assert_file_error("[kafka]\nno.such.property = 1\n", "kafka.no.such.property", 2,
                      "librdkafka: No such configuration property: \"no.such.property\"");
    assert_file_error("[kafka]\nconsumer.fetch.min.bytes = -5\n", "kafka.consumer.fetch.min.bytes",
                      2, "librdkafka: Configuration property \"fetch.min.bytes\" value -5 is "
                         "outside allowed range 1..100000000");
}

static void test_offset_commit_settings_are_refused_as_managed(void **state) {
    (void)state;
    char path[64], err[512];
    const char *bad[] = {"[kafka]\nenable.auto.commit = true\n",
                         "[kafka]\nconsumer.enable.auto.commit = false\n",
                         "[kafka]\nenable.auto.offset.store = true\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_null(load_text(bad[i], NULL, path, sizeof path, err, sizeof err));
        assert_non_null(strstr(err, "copystream manages offset commits itself"));
        assert_non_null(strstr(err, "at-least-once"));
    }
    char want[128];
    snprintf(want, sizeof want, "kafka.enable.auto.offset.store (%s:2): ", path);
    assert_true(strncmp(err, want, strlen(want)) == 0);
}

static void test_weaker_producer_acks_and_idempotence_are_refused(void **state) {
    (void)state;
    char path[64], err[512];
    const char *bad[] = {"[kafka]\nacks = 1\n", "[kafka]\nproducer.acks = 0\n",
                         "[kafka]\nrequest.required.acks = 1\n",
                         "[kafka]\nenable.idempotence = false\n",
                         "[kafka]\nproducer.enable.idempotence = F\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (load_text(bad[i], NULL, path, sizeof path, err, sizeof err))
            fail_msg("accepted: %s", bad[i]);
        assert_non_null(strstr(err, "acks=all"));
    }
    const char *fine[] = {"[kafka]\nacks = all\n", "[kafka]\nproducer.acks = -1\n",
                          "[kafka]\nenable.idempotence = true\n"};
    for (size_t i = 0; i < sizeof fine / sizeof fine[0]; i++) {
        config *c = load_text(fine[i], NULL, path, sizeof path, err, sizeof err);
        if (!c) fail_msg("%s", err);
        config_free(c);
    }
}

static void test_uncommitted_reads_and_a_kafka_transactional_id_are_refused(void **state) {
    (void)state;
    char path[64], err[512];
    const char *uncommitted[] = {"[kafka]\nisolation.level = read_uncommitted\n",
                                 "[kafka]\nconsumer.isolation.level = read_uncommitted\n"};
    for (size_t i = 0; i < sizeof uncommitted / sizeof uncommitted[0]; i++) {
        if (load_text(uncommitted[i], NULL, path, sizeof path, err, sizeof err))
            fail_msg("accepted: %s", uncommitted[i]);
        assert_non_null(strstr(err, "reads only committed messages"));
    }
    assert_null(load_text("[kafka]\nproducer.transactional.id = x\n", NULL, path, sizeof path,
                          err, sizeof err));
    assert_non_null(strstr(err, "kafka.producer.transactional.id"));
    assert_non_null(strstr(err, "processing.transactional_id"));
    config *c = load_text("[kafka]\nconsumer.isolation.level = read_committed\n"
                          "[processing]\nguarantee = exactly_once\ntransactional_id = pod-0\n",
                          NULL, path, sizeof path, err, sizeof err);
    if (!c) fail_msg("%s", err);
    assert_string_equal(config_str(c, "processing.transactional_id"), "pod-0");
    config_free(c);
}

static void test_config_is_secret_matches_passwords_and_sasl_secrets(void **state) {
    (void)state;
    assert_true(config_is_secret("redis.password"));
    assert_true(config_is_secret("kafka.sasl.password"));
    assert_true(config_is_secret("kafka.ssl.key.password"));
    assert_true(config_is_secret("kafka.ssl.keystore.password"));
    assert_true(config_is_secret("kafka.sasl.oauthbearer.client.secret"));
    assert_true(config_is_secret("kafka.sasl.oauthbearer.config"));
    assert_true(config_is_secret("kafka.ssl.key.pem"));
    assert_true(config_is_secret("kafka.producer.sasl.password"));
    assert_false(config_is_secret("redis.user"));
    assert_false(config_is_secret("kafka.sasl.username"));
    assert_false(config_is_secret("kafka.ssl.ca.location"));
    assert_false(config_is_secret("kafka.bootstrap.servers"));
}

static void test_config_dump_masks_secrets(void **state) {
    (void)state;
    char path[64], err[512] = "";
    char *env[] = {"COPYSTREAM_KAFKA_SASL_PASSWORD=s3cr3t-from-env", NULL};
    config *c = load_text("[redis]\npassword = hunter2\n[kafka]\nsasl.username = alice\n", env,
                          path, sizeof path, err, sizeof err);
    if (!c) fail_msg("%s", err);
    char *text = dump_text(c);
    char want[256];
    snprintf(want, sizeof want, "redis.password = ***  # %s:2\n", path);
    assert_non_null(strstr(text, want));
    assert_non_null(
        strstr(text, "kafka.sasl.password = ***  # env COPYSTREAM_KAFKA_SASL_PASSWORD\n"));
    assert_non_null(strstr(text, "kafka.sasl.username = alice  # "));
    assert_non_null(strstr(text, "redis.port = 6379  # default\n"));
    assert_null(strstr(text, "hunter2"));
    assert_null(strstr(text, "s3cr3t"));
    free(text);
    config_free(c);
}

static void test_kafka_each_scopes_consumer_and_producer_keys(void **state) {
    (void)state;
    char path[64], err[512] = "", consumer[2048] = "", producer[2048] = "";
    config *c = load_text("[kafka]\n"
                          "consumer.client.id = reader\n"
                          "client.id = shared\n"
                          "consumer.fetch.min.bytes = 4096\n"
                          "producer.linger.ms = 10\n"
                          "socket.timeout.ms = 30000\n",
                          NULL, path, sizeof path, err, sizeof err);
    if (!c) fail_msg("%s", err);
    config_kafka_each(c, "consumer", collect_kv, consumer);
    config_kafka_each(c, "producer", collect_kv, producer);
    /* Shared keys first in file order (defaults first), then the client's own,
     * so the client-specific client.id is set last and wins. */
    assert_string_equal(consumer, "bootstrap.servers=127.0.0.1:9092;group.id=copystream;"
                                  "client.id=shared;socket.timeout.ms=30000;"
                                  "client.id=reader;fetch.min.bytes=4096;");
    assert_string_equal(producer, "bootstrap.servers=127.0.0.1:9092;group.id=copystream;"
                                  "client.id=shared;socket.timeout.ms=30000;linger.ms=10;");
    config_free(c);
}

static void test_config_set_validates_and_keeps_old_value_on_error(void **state) {
    (void)state;
    char err[512] = "";
    config *c = config_load(NULL, NULL, err, sizeof err);
    if (!c) fail_msg("%s", err);
    assert_int_equal(config_set(c, "redis.port", "0", err, sizeof err), -1);
    assert_string_equal(err, "redis.port (command line): must be an integer between 1 and 65535, "
                             "got \"0\"");
    assert_int_equal(config_int(c, "redis.port"), 6379);
    assert_int_equal(config_set(c, "kafka.group.id", "other-group", err, sizeof err), 0);
    assert_string_equal(config_str(c, "kafka.group.id"), "other-group");
    assert_int_equal(config_set(c, "kafka.enable.auto.commit", "true", err, sizeof err), -1);
    assert_null(config_str(c, "kafka.enable.auto.commit"));
    assert_int_equal(config_set(c, "redis.prot", "1", err, sizeof err), -1);
    assert_string_equal(err, "redis.prot (command line): unknown key (did you mean redis.port?)");

    /* The rule between keys holds for config_set too, in either direction. */
    assert_int_equal(config_set(c, "copy.default_locale", "fr-FR", err, sizeof err), -1);
    assert_string_equal(config_str(c, "copy.default_locale"), "en-US");
    assert_int_equal(config_set(c, "copy.locales", "zh-CN", err, sizeof err), -1);
    assert_string_equal(config_str(c, "copy.locales"), "zh-CN,en-US");
    assert_int_equal(config_set(c, "copy.default_locale", "zh-CN", err, sizeof err), 0);
    assert_int_equal(config_set(c, "copy.locales", "zh-CN", err, sizeof err), 0);
    config_free(c);
}

/* Runs fn in a child and reports whether it died of SIGABRT. */
static int aborts(void (*fn)(const config *), config *c) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) dup2(devnull, STDERR_FILENO);
        fn(c);
        config_free(c);
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

static void get_undeclared(const config *c) { (void)config_int(c, "redis.portt"); }
static void get_wrong_type(const config *c) { (void)config_int(c, "redis.host"); }
static void get_declared(const config *c) { (void)config_int(c, "redis.port"); }

static void test_getter_aborts_on_undeclared_key_or_wrong_type(void **state) {
    (void)state;
    char err[512] = "";
    config *c = config_load(NULL, NULL, err, sizeof err);
    if (!c) fail_msg("%s", err);
    assert_true(aborts(get_undeclared, c));
    assert_true(aborts(get_wrong_type, c));
    assert_false(aborts(get_declared, c));
    config_free(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shipped_config_loads_with_documented_defaults),
        cmocka_unit_test(test_shipped_config_sets_every_key_to_its_builtin_default),
        cmocka_unit_test(test_builtin_schema_ids_exist_without_a_file),
        cmocka_unit_test(test_file_can_add_and_override_schema_ids),
        cmocka_unit_test(test_env_override_wins_over_file),
        cmocka_unit_test(test_env_double_underscore_maps_to_underscore_in_key),
        cmocka_unit_test(test_env_kafka_and_schema_variables_map_to_family_keys),
        cmocka_unit_test(test_unknown_copystream_variable_fails_naming_the_variable),
        cmocka_unit_test(test_copystream_config_variable_is_reserved_not_a_key),
        cmocka_unit_test(test_bad_value_from_env_names_the_variable),
        cmocka_unit_test(test_unknown_key_in_file_fails_naming_key_and_line),
        cmocka_unit_test(test_out_of_bounds_int_fails_naming_key_and_bounds),
        cmocka_unit_test(test_out_of_bounds_double_fails_naming_key_and_bounds),
        cmocka_unit_test(test_bad_enum_value_fails_listing_the_choices),
        cmocka_unit_test(test_bad_list_element_in_trigger_types_fails),
        cmocka_unit_test(test_list_elements_are_stored_trimmed),
        cmocka_unit_test(test_empty_required_string_fails),
        cmocka_unit_test(test_default_locale_outside_locales_fails),
        cmocka_unit_test(test_key_set_twice_in_file_fails_naming_both_lines),
        cmocka_unit_test(test_syntax_error_reports_its_line),
        cmocka_unit_test(test_overlong_line_is_refused_not_split),
        cmocka_unit_test(test_nul_byte_in_file_is_refused_naming_its_line),
        cmocka_unit_test(test_indented_line_is_a_key_not_a_continuation),
        cmocka_unit_test(test_keys_before_any_section_are_full_names),
        cmocka_unit_test(test_missing_file_fails_naming_the_path),
        cmocka_unit_test(test_schema_id_must_be_a_positive_canonical_integer),
        cmocka_unit_test(test_unknown_librdkafka_property_fails_with_librdkafka_reason),
        cmocka_unit_test(test_offset_commit_settings_are_refused_as_managed),
        cmocka_unit_test(test_weaker_producer_acks_and_idempotence_are_refused),
        cmocka_unit_test(test_uncommitted_reads_and_a_kafka_transactional_id_are_refused),
        cmocka_unit_test(test_config_is_secret_matches_passwords_and_sasl_secrets),
        cmocka_unit_test(test_config_dump_masks_secrets),
        cmocka_unit_test(test_kafka_each_scopes_consumer_and_producer_keys),
        cmocka_unit_test(test_config_set_validates_and_keeps_old_value_on_error),
        cmocka_unit_test(test_getter_aborts_on_undeclared_key_or_wrong_type),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
