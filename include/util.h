/* util.h -- the few helpers every module shares: ids hashed to 64 bits, clocks,
 * and filling an errstr buffer. */
#ifndef COPYSTREAM_UTIL_H
#define COPYSTREAM_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* 64-bit XXH3 of a string id. Item, category and attribute ids are kept in
 * this form in user state, where 8 fixed bytes beat a variable-length string;
 * at 64 bits a collision among a catalog's ids is not a practical concern. */
uint64_t util_hash(const char *s);
uint64_t util_hash_bytes(const void *p, size_t len);

int64_t util_now_ms(void);          /* wall clock, Unix epoch ms */
int64_t util_monotonic_us(void);    /* for measuring durations */

/* printf into errstr (if errstr and errlen are non-zero); returns -1 so that
 * callers can write `return util_err(errstr, errlen, "...", ...);`. */
int util_err(char *errstr, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A point in time given by a person: Unix milliseconds ("1764547200000") or
 * UTC ISO 8601 ("2026-12-01", "2026-12-01T08:30:00Z", with optional
 * fractional seconds). Returns 0 with *ms, or -1 for anything else. */
int util_parse_time(const char *s, int64_t *ms);

/* Replaces every occurrence of secret in the NUL-terminated s (cap bytes
 * of room) with "***", so that a message that quotes a value can be shown
 * without it. A non-empty secret shorter than three bytes still goes; what
 * would not fit in cap is cut. */
void util_redact(char *s, size_t cap, const char *secret);

/* splitmix64's output for the state x: a well-mixed 64-bit value, the same
 * on every machine. Draw i of a counter-based stream keyed k is
 * util_mix64(k + i), whatever order draws are made in. */
static inline uint64_t util_mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* splitmix64 as a generator: the next value from the state *s. */
static inline uint64_t util_splitmix64(uint64_t *s) {
    uint64_t z = util_mix64(*s);
    *s += 0x9e3779b97f4a7c15ull;
    return z;
}

/* strdup that treats NULL as NULL. */
char *util_strdup(const char *s);

#define UTIL_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
