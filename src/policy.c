/* policy.c -- consent, quiet hours, frequency caps, no repeats; see policy.h.
 *
 * Time zones. libc knows the IANA zones, but only through the process-wide
 * TZ variable: asking it about several zones per event would mean setenv()
 * and tzset() on the hot path, racing every other thread that formats a
 * time. So each configured zone is asked once, at start-up (before the
 * service starts its threads), for its UTC offset day by day from 1970 to
 * 2100; where the offset changes, a binary search finds the second of the
 * transition. The result is a short table per zone (two entries a year with
 * daylight saving, one without) that a lookup searches without libc. Offsets
 * before 1970 or after 2100 are those of the nearest end. */
#define _GNU_SOURCE /* tm_gmtoff */
#include "policy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "metrics.h"
#include "util.h"

#define POLICY_FROM_S 0LL              /* 1970-01-01 */
#define POLICY_TO_S 4102444800LL       /* 2100-01-01 */

typedef struct {
    int64_t from_s;           /* the offset holds from here to the next entry's from_s */
    int32_t offset_s;
} tz_span;

typedef struct {
    char *locale;             /* NULL: the default zone */
    char *name;
    tz_span *v;               /* [n], from_s ascending; v[0].from_s = POLICY_FROM_S */
    size_t n;
} tz_zone;

struct policy {
    tz_zone *zones;           /* [n_zones]; zones[0] is the default */
    size_t n_zones;
    int quiet;                /* quiet hours are set */
    int32_t quiet_from, quiet_to; /* minutes of the local day, [from, to) wrapping midnight */
    int64_t min_interval_ms;
    uint32_t max_per_hour, max_per_day; /* 0: no cap */
    int64_t no_repeat_s;      /* 0: repeats allowed */
    size_t max_promoted;
};

/* ---- time zones -------------------------------------------------------------------- */

static int32_t tz_offset_at(time_t t) {
    struct tm tm;
    localtime_r(&t, &tm);
    return (int32_t)tm.tm_gmtoff;
}

/* Is name a zone the tz database has? glibc takes any string for TZ and
 * falls back to UTC in silence, which would hide a typo. */
static int tz_exists(const char *name) {
    if (!strcmp(name, "UTC") || !strcmp(name, "Etc/UTC")) return 1;
    if (!*name || name[0] == '/' || strstr(name, "..")) return 0;
    const char *dir = getenv("TZDIR");
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir && *dir ? dir : "/usr/share/zoneinfo", name);
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Builds z->v for the zone z->name. Returns 0 or -1 (memory). */
static int tz_build(tz_zone *z) {
    char *old = getenv("TZ") ? strdup(getenv("TZ")) : NULL;
    setenv("TZ", z->name, 1);
    tzset();
    size_t cap = 16;
    int rc = -1;
    z->v = malloc(cap * sizeof *z->v);
    if (!z->v) goto out;
    z->n = 0;
    int32_t prev = tz_offset_at((time_t)POLICY_FROM_S);
    z->v[z->n++] = (tz_span){POLICY_FROM_S, prev};
    for (int64_t t = POLICY_FROM_S + 86400; t <= POLICY_TO_S; t += 86400) {
        int32_t off = tz_offset_at((time_t)t);
        if (off == prev) continue;
        /* The change happened in (t - 1 day, t]: find its first second. */
        int64_t lo = t - 86400, hi = t;
        while (hi - lo > 1) {
            int64_t mid = lo + (hi - lo) / 2;
            if (tz_offset_at((time_t)mid) == prev) lo = mid;
            else hi = mid;
        }
        if (z->n == cap) {
            tz_span *v = realloc(z->v, 2 * cap * sizeof *v);
            if (!v) goto out;
            z->v = v;
            cap *= 2;
        }
        z->v[z->n++] = (tz_span){hi, off};
        prev = off;
    }
    rc = 0;
out:
    if (old) {
        setenv("TZ", old, 1);
        free(old);
    } else {
        unsetenv("TZ");
    }
    tzset();
    return rc;
}

static int32_t tz_lookup(const tz_zone *z, int64_t t_s) {
    size_t lo = 0, hi = z->n; /* the last span with from_s <= t_s */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (z->v[mid].from_s <= t_s) lo = mid;
        else hi = mid;
    }
    return z->v[lo].offset_s;
}

static const tz_zone *policy_zone(const policy *p, const char *locale) {
    if (locale && *locale)
        for (size_t i = 1; i < p->n_zones; i++)
            if (!strcmp(p->zones[i].locale, locale)) return &p->zones[i];
    return &p->zones[0];
}

int32_t policy_utc_offset(const policy *p, const char *locale, int64_t ts_ms) {
    int64_t t = ts_ms >= 0 ? ts_ms / 1000 : -((-ts_ms + 999) / 1000);
    return tz_lookup(policy_zone(p, locale), t);
}

/* ---- configuration ------------------------------------------------------------------ */

static int policy_add_zone(policy *p, const char *locale, const char *name, const char *key,
                           char *errstr, size_t errlen) {
    if (!tz_exists(name))
        return util_err(errstr, errlen,
                        "%s: unknown time zone \"%s\" (an IANA name such as Asia/Shanghai; "
                        "is tzdata installed?)", key, name);
    tz_zone *v = realloc(p->zones, (p->n_zones + 1) * sizeof *v);
    if (!v) return util_err(errstr, errlen, "out of memory");
    p->zones = v;
    tz_zone *z = memset(&p->zones[p->n_zones], 0, sizeof *z);
    p->n_zones++;
    if ((locale && !(z->locale = strdup(locale))) || !(z->name = strdup(name)) || tz_build(z) < 0)
        return util_err(errstr, errlen, "out of memory");
    return 0;
}

/* "HH:MM" into minutes of the day. */
static int policy_clock(const char *s, size_t len, int32_t *minutes) {
    unsigned h, m;
    char tail;
    char buf16[16];
    if (len == 0 || len >= sizeof buf16) return -1;
    memcpy(buf16, s, len);
    buf16[len] = '\0';
    if (sscanf(buf16, "%2u:%2u%c", &h, &m, &tail) != 2 || h > 24 || m > 59 || (h == 24 && m))
        return -1;
    *minutes = (int32_t)(h * 60 + m);
    return 0;
}

policy *policy_new(const config *c, char *errstr, size_t errlen) {
    policy *p = calloc(1, sizeof *p);
    if (!p) {
        util_err(errstr, errlen, "out of memory");
        return NULL;
    }
    p->min_interval_ms = config_int(c, "copy.min_interval_s") * 1000;
    p->max_per_hour = (uint32_t)config_int(c, "policy.max_per_hour");
    p->max_per_day = (uint32_t)config_int(c, "policy.max_per_day");
    p->no_repeat_s = config_int(c, "policy.no_repeat_days") * 86400;
    p->max_promoted = (size_t)config_int(c, "policy.no_repeat_max_items");

    const char *quiet = config_str(c, "policy.quiet_hours");
    if (quiet[0]) {
        const char *dash = strchr(quiet, '-');
        if (!dash || policy_clock(quiet, (size_t)(dash - quiet), &p->quiet_from) < 0 ||
            policy_clock(dash + 1, strlen(dash + 1), &p->quiet_to) < 0 ||
            p->quiet_from == p->quiet_to) {
            util_err(errstr, errlen,
                     "policy.quiet_hours: \"%s\" is not HH:MM-HH:MM with two different times "
                     "(e.g. 22:00-08:00; empty for none)", quiet);
            goto err;
        }
        p->quiet = 1;
    }

    if (policy_add_zone(p, NULL, config_str(c, "policy.default_timezone"),
                        "policy.default_timezone", errstr, errlen) < 0)
        goto err;
    /* "zh-CN=Asia/Shanghai,en-US=America/New_York" */
    const char *list = config_str(c, "policy.timezones");
    while (*list) {
        size_t n = strcspn(list, ",");
        char item[256];
        if (n >= sizeof item) n = sizeof item - 1;
        memcpy(item, list, n);
        item[n] = '\0';
        list += n + (list[n] == ',');
        char *eq = strchr(item, '=');
        if (!eq || eq == item || !eq[1]) {
            util_err(errstr, errlen,
                     "policy.timezones: \"%s\" is not <locale>=<zone> (e.g. zh-CN=Asia/Shanghai)",
                     item);
            goto err;
        }
        *eq = '\0';
        if (policy_add_zone(p, item, eq + 1, "policy.timezones", errstr, errlen) < 0) goto err;
    }
    return p;
err:
    policy_free(p);
    return NULL;
}

void policy_free(policy *p) {
    if (!p) return;
    for (size_t i = 0; i < p->n_zones; i++) {
        free(p->zones[i].locale);
        free(p->zones[i].name);
        free(p->zones[i].v);
    }
    free(p->zones);
    free(p);
}

/* ---- the checks -------------------------------------------------------------------- */

/* Local seconds since the epoch: the user's wall clock, as a number. */
static int64_t policy_local_s(const policy *p, const char *locale, int64_t ts_ms) {
    int64_t t = ts_ms >= 0 ? ts_ms / 1000 : -((-ts_ms + 999) / 1000);
    return t + tz_lookup(policy_zone(p, locale), t);
}

static int64_t policy_floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

static int policy_in_quiet(const policy *p, int64_t local_s) {
    if (!p->quiet) return 0;
    int32_t m = (int32_t)((local_s - policy_floor_div(local_s, 86400) * 86400) / 60);
    if (p->quiet_from < p->quiet_to) return m >= p->quiet_from && m < p->quiet_to;
    return m >= p->quiet_from || m < p->quiet_to;
}

int64_t policy_quiet_until(const policy *p, const char *locale, int64_t ts_ms) {
    int64_t local = policy_local_s(p, locale, ts_ms);
    if (!policy_in_quiet(p, local)) return ts_ms;
    int64_t day = policy_floor_div(local, 86400) * 86400;
    int64_t end = day + (int64_t)p->quiet_to * 60;
    if (end <= local) end += 86400;
    /* Back to UTC with the offset at the end (a transition in the quiet
     * hours moves it by the change, which is what the wall clock does). */
    int64_t utc = end - policy_utc_offset(p, locale, ts_ms);
    utc = end - policy_utc_offset(p, locale, utc * 1000);
    return utc * 1000 > ts_ms ? utc * 1000 : ts_ms;
}

int policy_check(const policy *p, const user_state *u, int64_t ts_ms) {
    if (u->unsub_ms) return MET_SUPPRESSED_NO_CONSENT;
    int64_t local = policy_local_s(p, u->locale, ts_ms);
    if (policy_in_quiet(p, local)) return MET_SUPPRESSED_QUIET_HOURS;
    if (u->last_copy_ms && ts_ms - u->last_copy_ms < p->min_interval_ms)
        return MET_SUPPRESSED_MIN_INTERVAL;
    uint32_t hour = (uint32_t)policy_floor_div(local, 3600), day = (uint32_t)policy_floor_div(local, 86400);
    if (p->max_per_hour && u->freq.hour == hour && u->freq.n_hour >= p->max_per_hour)
        return MET_SUPPRESSED_CAP_HOUR;
    if (p->max_per_day && u->freq.day == day && u->freq.n_day >= p->max_per_day)
        return MET_SUPPRESSED_CAP_DAY;
    return 0;
}

void policy_count(const policy *p, user_state *u, int64_t ts_ms) {
    int64_t local = policy_local_s(p, u->locale, ts_ms);
    uint32_t hour = (uint32_t)policy_floor_div(local, 3600), day = (uint32_t)policy_floor_div(local, 86400);
    /* An event older than the counted hour or day (out of order) counts in
     * the newer one: the counters only move forward. */
    if (hour > u->freq.hour) {
        u->freq.hour = hour;
        u->freq.n_hour = 0;
    }
    if (day > u->freq.day) {
        u->freq.day = day;
        u->freq.n_day = 0;
    }
    u->freq.n_hour++;
    u->freq.n_day++;
    u->last_copy_ms = ts_ms;
    u->dirty |= US_DIRTY_META | US_DIRTY_POLICY;
}

static uint32_t policy_seconds(int64_t ms) {
    if (ms <= 0) return 0;
    return ms / 1000 > (int64_t)UINT32_MAX ? UINT32_MAX : (uint32_t)(ms / 1000);
}

int policy_promoted(const policy *p, user_state *u, const uint64_t *items, size_t n,
                    int64_t ts_ms) {
    if (!p->no_repeat_s) return 0;
    uint32_t now = policy_seconds(ts_ms);
    int64_t until = (int64_t)now + p->no_repeat_s;
    for (size_t i = 0; i < n; i++)
        if (items[i] && userstate_promoted(u, items[i],
                                           until > UINT32_MAX ? UINT32_MAX : (uint32_t)until, now,
                                           p->max_promoted) < 0)
            return -1;
    return 0;
}

int policy_is_repeat(const policy *p, const user_state *u, uint64_t item, int64_t ts_ms) {
    return p->no_repeat_s && userstate_is_repeat(u, item, policy_seconds(ts_ms));
}
