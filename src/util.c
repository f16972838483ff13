/* util.c -- shared helpers; see util.h. */
#define _POSIX_C_SOURCE 200809L
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
