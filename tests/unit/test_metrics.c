/* test_metrics.c -- the registry renders what was recorded, in a page
 * Prometheus can parse: exact sample lines, cumulative buckets, escaping, the
 * open-label tables and their limits, and exact sums under concurrency. */
#include "testutil.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics.h"
#include "util.h"

static buf page_buf = BUF_INIT;

static int setup(void **state) {
    metrics_reset();
    return 0;
}

static int teardown(void **state) {
    metrics_reset();
    buf_free(&page_buf);
    return 0;
}

static const char *render(void) {
    buf_reset(&page_buf);
    assert_int_equal(metrics_render(&page_buf), 0);
    return page_buf.p;
}

/* The line of the page starting with `series ` (series includes its labels),
 * or NULL. */
static const char *find_sample(const char *page, const char *series) {
    size_t n = strlen(series);
    for (const char *line = page; *line;) {
        if (!strncmp(line, series, n) && line[n] == ' ') return line;
        const char *nl = strchr(line, '\n');
        if (!nl) break;
        line = nl + 1;
    }
    return NULL;
}

/* The value of a sample that must be on the page. */
static double sample_value(const char *page, const char *series) {
    const char *line = find_sample(page, series);
    if (!line) fail_msg("no sample %s on the page:\n%s", series, page);
    return strtod(line + strlen(series) + 1, NULL);
}

static void assert_line(const char *page, const char *line) {
    size_t n = strlen(line);
    for (const char *p = page; (p = strstr(p, line)); p++)
        if ((p == page || p[-1] == '\n') && p[n] == '\n') return;
    fail_msg("no line \"%s\" on the page:\n%s", line, page);
}

static void test_event_counts_render_as_exact_lines(void **state) {
    metrics_inc_event(EV_VIEW, 1);
    metrics_inc_event(EV_VIEW, 2);
    metrics_inc_event(EV_ADD_TO_CART, 1);
    metrics_inc_reaction(RX_UNSUBSCRIBE, 4);
    const char *page = render();
    assert_line(page, "# TYPE copystream_events_consumed_total counter");
    assert_line(page, "copystream_events_consumed_total{type=\"view\"} 3");
    assert_line(page, "copystream_events_consumed_total{type=\"add_to_cart\"} 1");
    assert_line(page, "copystream_events_consumed_total{type=\"favorite\"} 0");
    assert_line(page, "copystream_reactions_consumed_total{type=\"unsubscribe\"} 4");
    assert_line(page, "copystream_reactions_consumed_total{type=\"impression\"} 0");
}

static void test_fixed_label_counters_and_gauges_render_by_id(void **state) {
    metrics_inc(MET_SKIPPED_REDELIVERED, 2);
    metrics_inc(MET_SUPPRESSED_NO_CANDIDATES, 1);
    metrics_inc(MET_REDIS_ERR_CONFLICT, 5);
    metrics_inc(MET_KAFKA_ERR_COMMIT, 1);
    metrics_inc(MET_STATE_CACHE_MISS, 7);
    metrics_inc(MET_BATCHES, 9);
    metrics_set(MET_ASSIGNED_PARTITIONS, 6);
    metrics_set(MET_ASSIGNED_PARTITIONS, 4);
    metrics_set(MET_CATALOG_ITEMS, 1200);
    const char *page = render();
    assert_line(page, "copystream_events_skipped_total{reason=\"redelivered\"} 2");
    assert_line(page, "copystream_events_skipped_total{reason=\"duplicate\"} 0");
    assert_line(page, "copystream_copies_suppressed_total{reason=\"no_candidates\"} 1");
    assert_line(page, "copystream_redis_errors_total{kind=\"conflict\"} 5");
    assert_line(page, "copystream_kafka_errors_total{kind=\"commit\"} 1");
    assert_line(page, "copystream_state_cache_total{result=\"miss\"} 7");
    assert_line(page, "copystream_batches_total 9");
    assert_line(page, "# TYPE copystream_assigned_partitions gauge");
    assert_line(page, "copystream_assigned_partitions 4");
    assert_line(page, "copystream_catalog_items 1200");
}

static void test_dead_letters_are_labelled_with_codec_reasons(void **state) {
    metrics_inc_dead_letter(CODEC_ERR_FRAMING, 2);
    metrics_inc_dead_letter(CODEC_ERR_INCOMPATIBLE, 1);
    metrics_inc_dead_letter(CODEC_OK, 5); /* not a dead letter */
    const char *page = render();
    assert_line(page, "copystream_dead_lettered_total{reason=\"bad-framing\"} 2");
    assert_line(page, "copystream_dead_lettered_total{reason=\"incompatible-schema\"} 1");
    assert_line(page, "copystream_dead_lettered_total{reason=\"invalid\"} 0");
    double total = 0;
    const char *series = "copystream_dead_lettered_total{";
    for (const char *p = page; (p = strstr(p, series)); p++) total += strtod(strchr(p, ' '), NULL);
    assert_true(total == 3);
}

static void test_out_of_range_ids_are_ignored(void **state) {
    metrics_inc((metric_id)MET__COUNT, 1);
    metrics_inc((metric_id)-1, 1);
    metrics_set((metric_id)MET__COUNT, 1);
    metrics_inc_event((event_type)EV__COUNT, 1);
    metrics_inc_reaction((reaction_type)99, 1);
    metrics_inc_dead_letter((codec_status)CODEC__COUNT, 1);
    const char *page = render();
    /* Every sample on the page but the two constant ones is still zero. */
    for (const char *line = page; *line; line = strchr(line, '\n') + 1) {
        if (*line == '#' || !strncmp(line, "copystream_up ", 14) ||
            !strncmp(line, "copystream_build_info{", 22))
            continue;
        const char *value = strchr(line, ' ') + 1;
        if (strtod(value, NULL) != 0) fail_msg("not zero: %.*s", (int)strcspn(line, "\n"), line);
    }
}

static void test_histogram_buckets_are_cumulative(void **state) {
    metrics_observe_batch(0.003);
    metrics_observe_batch(0.2);
    const char *page = render();
    assert_line(page, "# TYPE copystream_batch_seconds histogram");
    assert_line(page, "copystream_batch_seconds_bucket{le=\"0.001\"} 0");
    assert_line(page, "copystream_batch_seconds_bucket{le=\"0.0025\"} 0");
    assert_line(page, "copystream_batch_seconds_bucket{le=\"0.005\"} 1");
    assert_line(page, "copystream_batch_seconds_bucket{le=\"0.1\"} 1");
    assert_line(page, "copystream_batch_seconds_bucket{le=\"0.25\"} 2");
    assert_line(page, "copystream_batch_seconds_bucket{le=\"10\"} 2");
    assert_line(page, "copystream_batch_seconds_bucket{le=\"+Inf\"} 2");
    assert_line(page, "copystream_batch_seconds_count 2");
    assert_true(fabs(sample_value(page, "copystream_batch_seconds_sum") - 0.203) < 1e-12);
    /* The other histogram saw none of it. */
    assert_line(page, "copystream_processing_seconds_count 0");
}

static void test_histogram_upper_bounds_are_inclusive(void **state) {
    metrics_observe_batch(0.005);
    metrics_observe_batch(10);
    const char *page = render();
    assert_line(page, "copystream_batch_seconds_bucket{le=\"0.0025\"} 0");
    assert_line(page, "copystream_batch_seconds_bucket{le=\"0.005\"} 1");
    assert_line(page, "copystream_batch_seconds_bucket{le=\"5\"} 1");
    assert_line(page, "copystream_batch_seconds_bucket{le=\"10\"} 2");
}

static void test_observation_above_last_bound_is_only_in_inf(void **state) {
    metrics_observe_batch(30);
    const char *page = render();
    assert_line(page, "copystream_batch_seconds_bucket{le=\"10\"} 0");
    assert_line(page, "copystream_batch_seconds_bucket{le=\"+Inf\"} 1");
    assert_line(page, "copystream_batch_seconds_sum 30");
}

static void test_processing_observation_counts_a_whole_batch(void **state) {
    metrics_observe_processing(0.02, 5);
    metrics_observe_processing(0.0001, 2);
    const char *page = render();
    assert_line(page, "copystream_processing_seconds_bucket{le=\"0.001\"} 2");
    assert_line(page, "copystream_processing_seconds_bucket{le=\"0.01\"} 2");
    assert_line(page, "copystream_processing_seconds_bucket{le=\"0.025\"} 7");
    assert_line(page, "copystream_processing_seconds_count 7");
    assert_true(fabs(sample_value(page, "copystream_processing_seconds_sum") - 0.1002) < 1e-12);
}

static void test_nan_and_negative_durations_count_as_zero(void **state) {
    metrics_observe_batch(NAN);
    metrics_observe_batch(-1);
    const char *page = render();
    assert_line(page, "copystream_batch_seconds_bucket{le=\"0.001\"} 2");
    assert_line(page, "copystream_batch_seconds_sum 0");
}

static void test_label_values_are_escaped(void **state) {
    metrics_inc_copies("zh\"CN", "a\\b\nc", 1);
    assert_int_equal(metrics_set_lag("odd\"topic\\", 3, 12), 0);
    const char *page = render();
    assert_line(page,
                "copystream_copies_produced_total{locale=\"zh\\\"CN\",strategy=\"a\\\\b\\nc\"} 1");
    assert_line(page, "copystream_consumer_lag{topic=\"odd\\\"topic\\\\\",partition=\"3\"} 12");
}

static void test_copies_are_counted_per_locale_and_strategy(void **state) {
    metrics_inc_copies("zh-CN", "affinity", 2);
    metrics_inc_copies("en-US", "affinity", 1);
    metrics_inc_copies("zh-CN", "affinity", 3);
    metrics_inc_copies("zh-CN", "popular", 1);
    metrics_inc_copies(NULL, NULL, 1);
    const char *page = render();
    assert_line(page, "copystream_copies_produced_total{locale=\"zh-CN\",strategy=\"affinity\"} 5");
    assert_line(page, "copystream_copies_produced_total{locale=\"en-US\",strategy=\"affinity\"} 1");
    assert_line(page, "copystream_copies_produced_total{locale=\"zh-CN\",strategy=\"popular\"} 1");
    assert_line(page, "copystream_copies_produced_total{locale=\"\",strategy=\"\"} 1");
    /* Nothing overflowed, so there is no "other" series. */
    assert_null(strstr(page, "locale=\"other\""));
}

static void test_copies_beyond_capacity_count_as_other(void **state) {
    char strategy[32];
    for (int i = 0; i < METRICS_MAX_COPY_LABELS; i++) {
        snprintf(strategy, sizeof strategy, "s%d", i);
        metrics_inc_copies("en-US", strategy, 1);
    }
    metrics_inc_copies("en-US", "late-1", 2);
    metrics_inc_copies("en-US", "late-2", 3);
    metrics_inc_copies("en-US", "s0", 4); /* registered pairs keep their series */
    char longest[METRICS_MAX_LABEL_LEN + 2];
    memset(longest, 'x', sizeof longest - 1);
    longest[sizeof longest - 1] = '\0';
    metrics_inc_copies(longest, "s1", 1);
    const char *page = render();
    assert_line(page, "copystream_copies_produced_total{locale=\"en-US\",strategy=\"s0\"} 5");
    assert_line(page, "copystream_copies_produced_total{locale=\"en-US\",strategy=\"s63\"} 1");
    assert_null(strstr(page, "late-1"));
    assert_line(page, "copystream_copies_produced_total{locale=\"other\",strategy=\"other\"} 6");
}

static void test_over_long_label_and_literal_other_pair_count_as_other(void **state) {
    char longest[METRICS_MAX_LABEL_LEN + 2];
    memset(longest, 'x', sizeof longest - 1);
    longest[sizeof longest - 1] = '\0';
    metrics_inc_copies(longest, "affinity", 1);
    metrics_inc_copies("en-US", longest, 1);
    metrics_inc_copies("other", "other", 1);
    longest[METRICS_MAX_LABEL_LEN] = '\0'; /* the longest value that fits */
    metrics_inc_copies(longest, "affinity", 1);
    const char *page = render();
    assert_line(page, "copystream_copies_produced_total{locale=\"other\",strategy=\"other\"} 3");
    char series[256];
    snprintf(series, sizeof series,
             "copystream_copies_produced_total{locale=\"%s\",strategy=\"affinity\"} 1", longest);
    assert_line(page, series);
    /* One series per label pair: Prometheus rejects a page with duplicates. */
    const char *other = strstr(page, "locale=\"other\"");
    assert_null(strstr(other + 1, "locale=\"other\""));
}

static void test_lag_series_follow_set_and_drop(void **state) {
    assert_int_equal(metrics_set_lag("clicks", 0, 10), 0);
    assert_int_equal(metrics_set_lag("clicks", 1, 20), 0);
    assert_int_equal(metrics_set_lag("reactions", 0, 30), 0);
    assert_int_equal(metrics_set_lag("clicks", 0, 5), 0);
    const char *page = render();
    assert_line(page, "# TYPE copystream_consumer_lag gauge");
    assert_line(page, "copystream_consumer_lag{topic=\"clicks\",partition=\"0\"} 5");
    assert_line(page, "copystream_consumer_lag{topic=\"clicks\",partition=\"1\"} 20");
    assert_line(page, "copystream_consumer_lag{topic=\"reactions\",partition=\"0\"} 30");
    assert_null(find_sample(page, "copystream_consumer_lag{topic=\"clicks\",partition=\"0\"} 10"));

    metrics_drop_lag("clicks", 0);
    metrics_drop_lag("clicks", 7); /* never set */
    page = render();
    assert_null(find_sample(page, "copystream_consumer_lag{topic=\"clicks\",partition=\"0\"}"));
    assert_line(page, "copystream_consumer_lag{topic=\"clicks\",partition=\"1\"} 20");
    assert_line(page, "copystream_consumer_lag{topic=\"reactions\",partition=\"0\"} 30");
}

static void test_lag_table_refuses_partitions_beyond_capacity(void **state) {
    for (int i = 0; i < METRICS_MAX_LAGS; i++) assert_int_equal(metrics_set_lag("t", i, i), 0);
    assert_int_equal(metrics_set_lag("t", METRICS_MAX_LAGS, 1), -1);
    assert_int_equal(metrics_set_lag("t", 17, 99), 0); /* known partitions still update */
    metrics_drop_lag("t", 0);
    assert_int_equal(metrics_set_lag("u", 0, 2), 0);   /* room again */
    const char *page = render();
    assert_line(page, "copystream_consumer_lag{topic=\"t\",partition=\"17\"} 99");
    assert_line(page, "copystream_consumer_lag{topic=\"u\",partition=\"0\"} 2");
    assert_line(page, "copystream_consumer_lag{topic=\"t\",partition=\"4095\"} 4095");
    assert_null(find_sample(page, "copystream_consumer_lag{topic=\"t\",partition=\"0\"}"));
    assert_null(find_sample(page, "copystream_consumer_lag{topic=\"t\",partition=\"4096\"}"));

    char topic[METRICS_MAX_TOPIC_LEN + 2];
    memset(topic, 'a', sizeof topic - 1);
    topic[sizeof topic - 1] = '\0';
    assert_int_equal(metrics_set_lag(topic, 0, 1), -1);
}

static void test_build_info_up_and_start_time(void **state) {
    const char *page = render();
    assert_line(page, "copystream_build_info{version=\"unknown\"} 1");
    assert_line(page, "copystream_up 1");
    assert_line(page, "copystream_start_time_seconds 0");

    time_t before = time(NULL);
    metrics_start("1.4.0-rc1");
    time_t after = time(NULL);
    page = render();
    assert_line(page, "copystream_build_info{version=\"1.4.0-rc1\"} 1");
    double start = sample_value(page, "copystream_start_time_seconds");
    assert_true(start >= (double)before && start < (double)after + 1);
}

/* Skips `{k="v",...}` at *p, honouring escapes; returns 0 when well-formed. */
static int skip_labels(const char **p) {
    const char *s = *p;
    if (*s++ != '{') return -1;
    while (*s != '}') {
        while (*s == '_' || (*s >= 'a' && *s <= 'z')) s++;
        if (*s++ != '=' || *s++ != '"') return -1;
        for (; *s != '"'; s++) {
            if (!*s || *s == '\n') return -1;
            if (*s == '\\' && !strchr("\\\"n", *++s)) return -1;
        }
        s++;
        if (*s == ',') s++;
    }
    *p = s + 1;
    return 0;
}

/* Every sample belongs to the family of the # TYPE line above it, each family
 * has one HELP and one TYPE, label sets parse, and every value is a number. */
static void test_page_is_well_formed_exposition(void **state) {
    metrics_inc_copies("en-\"US\"", "affinity", 1);
    metrics_set_lag("clicks", 2, 3);
    metrics_observe_processing(0.3, 1);
    metrics_start("dev");
    const char *page = render();
    assert_true(page_buf.len > 0 && page[page_buf.len - 1] == '\n');

    char family[128] = "", type[16] = "", help_of[128] = "";
    int families = 0;
    for (const char *line = page; *line; line = strchr(line, '\n') + 1) {
        char name[128];
        if (!strncmp(line, "# HELP ", 7)) {
            assert_int_equal(sscanf(line + 7, "%127s", help_of), 1);
            continue;
        }
        if (!strncmp(line, "# TYPE ", 7)) {
            assert_int_equal(sscanf(line + 7, "%127s %15s", family, type), 2);
            assert_string_equal(family, help_of); /* HELP comes right before */
            assert_true(!strcmp(type, "counter") || !strcmp(type, "gauge") ||
                        !strcmp(type, "histogram"));
            char again[160];
            snprintf(again, sizeof again, "# TYPE %s ", family);
            assert_ptr_equal(strstr(page, again), line); /* only once */
            families++;
            continue;
        }
        assert_true(*line != '#');
        size_t n = strcspn(line, "{ ");
        assert_true(n < sizeof name);
        memcpy(name, line, n);
        name[n] = '\0';
        if (strcmp(name, family)) {
            assert_string_equal(type, "histogram");
            const char *suffix = name + strlen(family);
            assert_memory_equal(name, family, strlen(family));
            assert_true(!strcmp(suffix, "_bucket") || !strcmp(suffix, "_sum") ||
                        !strcmp(suffix, "_count"));
        }
        const char *rest = line + n;
        if (*rest == '{') assert_int_equal(skip_labels(&rest), 0);
        assert_int_equal(*rest++, ' ');
        char *end;
        strtod(rest, &end);
        assert_true(end > rest && *end == '\n');
    }
    /* The families copystream documents, each once, of the documented type. */
    static const char *const documented[][2] = {
        {"copystream_events_consumed_total", "counter"},
        {"copystream_reactions_consumed_total", "counter"},
        {"copystream_catalog_updates_total", "counter"},
        {"copystream_catalog_items", "gauge"},
        {"copystream_events_skipped_total", "counter"},
        {"copystream_copies_produced_total", "counter"},
        {"copystream_copies_suppressed_total", "counter"},
        {"copystream_dead_lettered_total", "counter"},
        {"copystream_processing_seconds", "histogram"},
        {"copystream_batch_seconds", "histogram"},
        {"copystream_consumer_lag", "gauge"},
        {"copystream_redis_errors_total", "counter"},
        {"copystream_redis_round_trips_total", "counter"},
        {"copystream_kafka_errors_total", "counter"},
        {"copystream_kafka_transactions_total", "counter"},
        {"copystream_state_cache_total", "counter"},
        {"copystream_state_cache_bytes", "gauge"},
        {"copystream_paused", "gauge"},
        {"copystream_state_cache_evictions_total", "counter"},
        {"copystream_assigned_partitions", "gauge"},
        {"copystream_batches_total", "counter"},
        {"copystream_reactions_attributed_total", "counter"},
        {"copystream_triggers_fired_total", "counter"},
        {"copystream_triggers_deferred_total", "counter"},
        {"copystream_copies_by_intent_total", "counter"},
        {"copystream_control_messages_total", "counter"},
        {"copystream_build_info", "gauge"},
        {"copystream_up", "gauge"},
        {"copystream_start_time_seconds", "gauge"},
    };
    assert_int_equal(families, UTIL_ARRAY_LEN(documented));
    for (size_t i = 0; i < UTIL_ARRAY_LEN(documented); i++) {
        char line[160];
        snprintf(line, sizeof line, "# TYPE %s %s", documented[i][0], documented[i][1]);
        assert_line(page, line);
    }
}

static void *hammer(void *arg) {
    const char *strategy = arg;
    for (int i = 0; i < 100000; i++) {
        metrics_inc_event(EV_CLICK, 1);
        metrics_inc(MET_REDIS_ROUND_TRIPS, 2);
        metrics_inc_copies("en-US", strategy, 1);
        metrics_observe_processing(0.01, 1);
    }
    return NULL;
}

static void test_concurrent_updates_sum_exactly(void **state) {
    pthread_t threads[4];
    char *strategies[4] = {"even", "odd", "even", "odd"};
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, hammer, strategies[i]), 0);
    buf scratch = BUF_INIT; /* render while they run: must not crash or tear */
    for (int i = 0; i < 20; i++) {
        buf_reset(&scratch);
        assert_int_equal(metrics_render(&scratch), 0);
    }
    buf_free(&scratch);
    for (int i = 0; i < 4; i++) assert_int_equal(pthread_join(threads[i], NULL), 0);

    const char *page = render();
    assert_line(page, "copystream_events_consumed_total{type=\"click\"} 400000");
    assert_line(page, "copystream_redis_round_trips_total 800000");
    assert_line(page, "copystream_copies_produced_total"
                      "{locale=\"en-US\",strategy=\"even\"} 200000");
    assert_line(page, "copystream_copies_produced_total"
                      "{locale=\"en-US\",strategy=\"odd\"} 200000");
    assert_line(page, "copystream_processing_seconds_bucket{le=\"0.01\"} 400000");
    assert_line(page, "copystream_processing_seconds_count 400000");
    /* A lost update would be off by 0.01; rounding over 400000 adds is far less. */
    assert_true(fabs(sample_value(page, "copystream_processing_seconds_sum") - 4000) < 1e-3);
    /* Racing first uses registered each pair once. */
    const char *even = strstr(page, "strategy=\"even\"");
    assert_null(strstr(even + 1, "strategy=\"even\""));
}

static void test_reset_forgets_everything(void **state) {
    metrics_inc_event(EV_VIEW, 3);
    metrics_inc_copies("en-US", "affinity", 1);
    metrics_set_lag("clicks", 0, 9);
    metrics_observe_batch(1);
    metrics_start("1.0");
    metrics_reset();
    const char *page = render();
    assert_line(page, "copystream_events_consumed_total{type=\"view\"} 0");
    assert_null(strstr(page, "affinity"));
    assert_null(strstr(page, "copystream_consumer_lag{"));
    assert_line(page, "copystream_batch_seconds_count 0");
    assert_line(page, "copystream_batch_seconds_sum 0");
    assert_line(page, "copystream_build_info{version=\"unknown\"} 1");
}

int main(void) {
    const struct CMUnitTest tests[] = {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
        T(test_event_counts_render_as_exact_lines),
        T(test_fixed_label_counters_and_gauges_render_by_id),
        T(test_dead_letters_are_labelled_with_codec_reasons),
        T(test_out_of_range_ids_are_ignored),
        T(test_histogram_buckets_are_cumulative),
        T(test_histogram_upper_bounds_are_inclusive),
        T(test_observation_above_last_bound_is_only_in_inf),
        T(test_processing_observation_counts_a_whole_batch),
        T(test_nan_and_negative_durations_count_as_zero),
        T(test_label_values_are_escaped),
        T(test_copies_are_counted_per_locale_and_strategy),
        T(test_copies_beyond_capacity_count_as_other),
        T(test_over_long_label_and_literal_other_pair_count_as_other),
        T(test_lag_series_follow_set_and_drop),
        T(test_lag_table_refuses_partitions_beyond_capacity),
        T(test_build_info_up_and_start_time),
        T(test_page_is_well_formed_exposition),
        T(test_concurrent_updates_sum_exactly),
        T(test_reset_forgets_everything),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
