/* util.c -- shared helpers; see util.h. */
#define _GNU_SOURCE
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

uint64_t util_hash(const char *s) { return XXH3_64bits(s, strlen(s)); }

uint64_t util_hash_bytes(const void *p, size_t len) { return XXH3_64bits(p, len); }

int64_t util_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t util_monotonic_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int util_err(char *errstr, size_t errlen, const char *fmt, ...) {
    if (errstr && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(errstr, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

void util_redact(char *s, size_t cap, const char *secret) {
    static const char mask[] = "***";
    size_t n = strlen(secret), m = sizeof mask - 1;
    if (!n || !cap) return;
    for (char *p = strstr(s, secret); p; p = strstr(p, secret)) {
        size_t off = (size_t)(p - s), tail = strlen(p + n);
        if (off + m >= cap) { /* no room even for the mask: cut here */
            *p = '\0';
            return;
        }
        if (off + m + tail >= cap) tail = cap - 1 - off - m;
        memmove(p + m, p + n, tail);
        memcpy(p, mask, m);
        p[m + tail] = '\0';
        p += m;
    }
}

char *util_strdup(const char *s) { return s ? strdup(s) : NULL; }

int util_parse_time(const char *s, int64_t *ms) {
    if (!s || !*s) return -1;
    const char *p = s;
    while (*p >= '0' && *p <= '9') p++;
    if (!*p && p - s <= 15) {
        *ms = strtoll(s, NULL, 10);
        return 0;
    }
    struct tm tm = {0};
    int n = 0, frac_ms = 0;
    if (sscanf(s, "%4d-%2d-%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &n) != 3 || n != 10)
        return -1;
    p = s + n;
    if (*p == 'T' || *p == ' ') {
        int m = 0;
        if (sscanf(p + 1, "%2d:%2d:%2d%n", &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &m) != 3 || m != 8)
            return -1;
        p += 1 + m;
        if (*p == '.') {
            int scale = 100;
            for (p++; *p >= '0' && *p <= '9'; p++, scale /= 10) frac_ms += (*p - '0') * scale;
        }
        if (*p++ != 'Z') return -1;
    }
    if (*p || tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 || tm.tm_mday > 31 ||
        tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 60)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    *ms = (int64_t)timegm(&tm) * 1000 + frac_ms;
    return 0;
}
