/* test_policy.c -- the policies on their own: users' time zones from their
 * locale (daylight saving included), quiet hours and caps counted in local
 * time, consent first, the minimum interval, no repeats, and the state they
 * keep surviving the hash round trip. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "metrics.h"
#include "policy.h"
#include "userstate.h"
#include "util.h"

#define HOUR 3600000LL
#define MINUTE 60000LL
/* 2024-01-15 00:00:00 UTC, a Monday in winter. */
#define JAN15 1705276800000LL

/* A policy from the built-in defaults plus environment-style overrides. */
static policy *make_policy(char **env, char *err, size_t errlen) {
    config *c = config_load(NULL, env, err, errlen);
    if (!c) fail_msg("%s", err);
    policy *p = policy_new(c, err, errlen);
    config_free(c);
    return p;
}

static policy *make(const char *quiet, const char *per_hour, const char *per_day) {
    char q[64], h[64], d[64], err[256] = "";
    snprintf(q, sizeof q, "COPYSTREAM_POLICY_QUIET__HOURS=%s", quiet);
    snprintf(h, sizeof h, "COPYSTREAM_POLICY_MAX__PER__HOUR=%s", per_hour);
    snprintf(d, sizeof d, "COPYSTREAM_POLICY_MAX__PER__DAY=%s", per_day);
    char *env[] = {q, h, d, "COPYSTREAM_COPY_MIN__INTERVAL__S=0", NULL};
    policy *p = make_policy(env, err, sizeof err);
    if (!p) fail_msg("%s", err);
    return p;
}

static void test_time_zones_come_from_the_locale_with_daylight_saving(void **state) {
    (void)state;
    policy *p = make("", "0", "0");
    assert_int_equal(policy_utc_offset(p, "zh-CN", JAN15), 8 * 3600);
    assert_int_equal(policy_utc_offset(p, "en-US", JAN15), -5 * 3600);
    assert_int_equal(policy_utc_offset(p, "en-US", JAN15 + 180LL * 24 * HOUR), -4 * 3600);
    /* New York springs forward at 2024-03-10 07:00:00 UTC, to the second. */
    assert_int_equal(policy_utc_offset(p, "en-US", 1710054000000LL - 1000), -5 * 3600);
    assert_int_equal(policy_utc_offset(p, "en-US", 1710054000000LL), -4 * 3600);
    /* Unknown or absent locales get the default zone, UTC. */
    assert_int_equal(policy_utc_offset(p, "fr-FR", JAN15), 0);
    assert_int_equal(policy_utc_offset(p, "", JAN15), 0);
    assert_int_equal(policy_utc_offset(p, NULL, JAN15), 0);
    policy_free(p);
}

static void test_bad_zones_and_quiet_hours_fail_naming_the_key(void **state) {
    (void)state;
    char err[256] = "";
    char *env1[] = {"COPYSTREAM_POLICY_TIMEZONES=zh-CN=Asia/Shanghia", NULL};
    assert_null(make_policy(env1, err, sizeof err));
    assert_non_null(strstr(err, "policy.timezones: unknown time zone \"Asia/Shanghia\""));
    char *env2[] = {"COPYSTREAM_POLICY_TIMEZONES=zh-CN", NULL};
    assert_null(make_policy(env2, err, sizeof err));
    assert_non_null(strstr(err, "policy.timezones: \"zh-CN\" is not <locale>=<zone>"));
    char *env3[] = {"COPYSTREAM_POLICY_QUIET__HOURS=22-8", NULL};
    assert_null(make_policy(env3, err, sizeof err));
    assert_non_null(strstr(err, "policy.quiet_hours: \"22-8\" is not HH:MM-HH:MM"));
    char *env4[] = {"COPYSTREAM_POLICY_DEFAULT__TIMEZONE=../../etc/passwd", NULL};
    assert_null(make_policy(env4, err, sizeof err));
    assert_non_null(strstr(err, "policy.default_timezone: unknown time zone"));
}

static void user(user_state *u, const char *locale) {
    userstate_init(u);
    snprintf(u->locale, sizeof u->locale, "%s", locale);
}

static void test_quiet_hours_are_the_users_local_night(void **state) {
    (void)state;
    policy *p = make("22:00-08:00", "0", "0");
    user_state zh, en;
    user(&zh, "zh-CN");
    user(&en, "en-US");
    /* 15:30 UTC is 23:30 in Shanghai and 10:30 in New York. */
    int64_t t = JAN15 + 15 * HOUR + 30 * MINUTE;
    assert_int_equal(policy_check(p, &zh, t), MET_SUPPRESSED_QUIET_HOURS);
    assert_int_equal(policy_check(p, &en, t), 0);
    /* 08:00 in Shanghai (00:00 UTC) is no longer quiet; 07:59 is. */
    assert_int_equal(policy_check(p, &zh, JAN15), 0);
    assert_int_equal(policy_check(p, &zh, JAN15 - MINUTE), MET_SUPPRESSED_QUIET_HOURS);
    /* What is due at 23:30 in Shanghai waits until 08:00 there. */
    assert_true(policy_quiet_until(p, "zh-CN", t) == JAN15 + 24 * HOUR);
    assert_true(policy_quiet_until(p, "en-US", t) == t);
    userstate_clear(&zh);
    userstate_clear(&en);
    policy_free(p);

    /* A window inside one day. */
    p = make("12:00-13:30", "0", "0");
    user(&en, "en-US");
    assert_int_equal(policy_check(p, &en, JAN15 + 17 * HOUR + 29 * MINUTE),
                     MET_SUPPRESSED_QUIET_HOURS); /* 12:29 EST */
    assert_int_equal(policy_check(p, &en, JAN15 + 18 * HOUR + 30 * MINUTE), 0); /* 13:30 */
    userstate_clear(&en);
    policy_free(p);
}

/* Copies due for u at times[n]; returns how many passed. */
static int send_at(const policy *p, user_state *u, const int64_t *times, size_t n, int *reasons) {
    int passed = 0;
    for (size_t i = 0; i < n; i++) {
        reasons[i] = policy_check(p, u, times[i]);
        if (!reasons[i]) {
            policy_count(p, u, times[i]);
            passed++;
        }
    }
    return passed;
}

static void test_caps_count_per_local_hour_and_local_day(void **state) {
    (void)state;
    policy *p = make("", "2", "3");
    user_state u;
    user(&u, "zh-CN");
    /* Shanghai: 10:05, 10:20, 10:50 (the third in the hour), 11:10, 11:40 (the
     * fourth of the day), then 00:10 the next local day -- which is 16:10 UTC
     * of the same UTC day. */
    int64_t base = JAN15 + 2 * HOUR; /* 10:00 in Shanghai */
    int64_t times[] = {base + 5 * MINUTE,  base + 20 * MINUTE, base + 50 * MINUTE,
                       base + 70 * MINUTE, base + 100 * MINUTE, JAN15 + 16 * HOUR + 10 * MINUTE};
    int reasons[6];
    assert_int_equal(send_at(p, &u, times, 6, reasons), 4);
    assert_int_equal(reasons[2], MET_SUPPRESSED_CAP_HOUR);
    assert_int_equal(reasons[3], 0);
    assert_int_equal(reasons[4], MET_SUPPRESSED_CAP_DAY);
    assert_int_equal(reasons[5], 0);
    assert_int_equal(u.freq.n_day, 1);
    assert_true(u.last_copy_ms == times[5]);
    assert_true(u.dirty & US_DIRTY_POLICY);
    userstate_clear(&u);

    policy_free(p);

    /* Midnight in Shanghai is mid-morning in New York: three copies at 23:30,
     * 23:45 and 00:10 Shanghai time span two local days there, one in New
     * York, where a cap of two a day stops the third. */
    p = make("", "0", "2");
    int64_t late[] = {JAN15 + 15 * HOUR + 30 * MINUTE, JAN15 + 15 * HOUR + 45 * MINUTE,
                      JAN15 + 16 * HOUR + 10 * MINUTE};
    user(&u, "zh-CN");
    assert_int_equal(send_at(p, &u, late, 3, reasons), 3);
    userstate_clear(&u);
    user(&u, "en-US");
    assert_int_equal(send_at(p, &u, late, 3, reasons), 2);
    assert_int_equal(reasons[2], MET_SUPPRESSED_CAP_DAY);
    userstate_clear(&u);
    policy_free(p);
}

static void test_consent_comes_first_then_quiet_hours_then_the_interval(void **state) {
    (void)state;
    char err[256];
    char *env[] = {"COPYSTREAM_POLICY_QUIET__HOURS=22:00-08:00",
                   "COPYSTREAM_COPY_MIN__INTERVAL__S=600", NULL};
    policy *p = make_policy(env, err, sizeof err);
    assert_non_null(p);
    user_state u;
    user(&u, "en-US");
    int64_t noon = JAN15 + 17 * HOUR; /* 12:00 in New York */
    policy_count(p, &u, noon);
    assert_int_equal(policy_check(p, &u, noon + 5 * MINUTE), MET_SUPPRESSED_MIN_INTERVAL);
    assert_int_equal(policy_check(p, &u, noon + 10 * MINUTE), 0);
    assert_int_equal(policy_check(p, &u, noon + 11 * HOUR), MET_SUPPRESSED_QUIET_HOURS);
    userstate_revoke_consent(&u, noon + MINUTE);
    assert_int_equal(policy_check(p, &u, noon + 11 * HOUR), MET_SUPPRESSED_NO_CONSENT);
    assert_int_equal(policy_check(p, &u, noon + 2 * HOUR), MET_SUPPRESSED_NO_CONSENT);
    userstate_clear(&u);
    policy_free(p);
}

static void test_promoted_items_are_not_repeated_within_the_days(void **state) {
    (void)state;
    policy *p = make("", "0", "0"); /* no_repeat_days = 3 by default */
    user_state u;
    user(&u, "en-US");
    uint64_t items[] = {util_hash("phone-a"), util_hash("phone-b")};
    assert_int_equal(policy_promoted(p, &u, items, 2, JAN15), 0);
    assert_true(policy_is_repeat(p, &u, items[0], JAN15 + 71 * HOUR));
    assert_true(userstate_excluded(&u, items[1], (uint32_t)((JAN15 + 71 * HOUR) / 1000)));
    assert_false(policy_is_repeat(p, &u, items[0], JAN15 + 72 * HOUR));
    assert_false(policy_is_repeat(p, &u, util_hash("phone-c"), JAN15));

    /* Counters and promoted items survive the hash round trip. */
    policy_count(p, &u, JAN15);
    userstate_fields f = {0};
    assert_int_equal(userstate_encode(&u, US_DIRTY_POLICY, &f), 0);
    assert_int_equal(f.n, 2);
    user_state back;
    userstate_init(&back);
    char err[128];
    for (size_t i = 0; i < f.n; i++)
        assert_int_equal(userstate_decode_field(&back, f.v[i].name, strlen(f.v[i].name),
                                                f.v[i].value.p, f.v[i].value.len, err,
                                                sizeof err),
                         0);
    assert_memory_equal(&back.freq, &u.freq, sizeof u.freq);
    assert_int_equal(back.n_promoted, 2);
    assert_true(policy_is_repeat(p, &back, items[1], JAN15 + HOUR));
    /* A snapshot for the model keeps them too. */
    user_state prefs;
    userstate_init(&prefs);
    assert_int_equal(userstate_copy_prefs(&prefs, &back), 0);
    assert_true(userstate_excluded(&prefs, items[0], (uint32_t)(JAN15 / 1000)));
    userstate_clear(&prefs);
    userstate_clear(&back);
    userstate_fields_free(&f);
    userstate_clear(&u);
    policy_free(p);

    /* 0 days: repeats allowed, nothing remembered. */
    char *env[] = {"COPYSTREAM_POLICY_NO__REPEAT__DAYS=0", NULL};
    p = make_policy(env, err, sizeof err);
    user(&u, "en-US");
    assert_int_equal(policy_promoted(p, &u, items, 2, JAN15), 0);
    assert_int_equal(u.n_promoted, 0);
    assert_false(policy_is_repeat(p, &u, items[0], JAN15));
    userstate_clear(&u);
    policy_free(p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_time_zones_come_from_the_locale_with_daylight_saving),
        cmocka_unit_test(test_bad_zones_and_quiet_hours_fail_naming_the_key),
        cmocka_unit_test(test_quiet_hours_are_the_users_local_night),
        cmocka_unit_test(test_caps_count_per_local_hour_and_local_day),
        cmocka_unit_test(test_consent_comes_first_then_quiet_hours_then_the_interval),
        cmocka_unit_test(test_promoted_items_are_not_repeated_within_the_days),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
