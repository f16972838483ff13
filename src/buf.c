/* buf.c -- a growable byte buffer; see buf.h for the contract. */
#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int buf_reserve(buf *b, size_t extra) {
    size_t need = b->len + extra + 1; /* room for the trailing NUL */
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

int buf_append(buf *b, const void *data, size_t len) {
    if (buf_reserve(b, len) < 0) return -1;
    if (len) memcpy(b->p + b->len, data, len);
    b->len += len;
    b->p[b->len] = '\0';
    return 0;
}

int buf_puts(buf *b, const char *s) { return buf_append(b, s, strlen(s)); }

int buf_printf(buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char small[256];
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return -1;
    if ((size_t)n < sizeof small) return buf_append(b, small, (size_t)n);
    if (buf_reserve(b, (size_t)n) < 0) return -1;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

int buf_put_u8(buf *b, uint8_t v) { return buf_append(b, &v, 1); }

int buf_put_u32le(buf *b, uint32_t v) {
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    return buf_append(b, x, 4);
}

int buf_put_u64le(buf *b, uint64_t v) {
    uint8_t x[8];
    for (int i = 0; i < 8; i++) x[i] = (uint8_t)(v >> (8 * i));
    return buf_append(b, x, 8);
}

int buf_put_f32le(buf *b, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    return buf_put_u32le(b, u);
}

void buf_reset(buf *b) {
    b->len = 0;
    if (b->cap) b->p[0] = '\0';
}

void buf_free(buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

int buf_get_u8(const uint8_t *p, size_t len, size_t *pos, uint8_t *v) {
    if (*pos >= len) return -1;
    *v = p[(*pos)++];
    return 0;
}

int buf_get_u32le(const uint8_t *p, size_t len, size_t *pos, uint32_t *v) {
    if (*pos > len || len - *pos < 4) return -1;
    const uint8_t *x = p + *pos;
    *v = (uint32_t)x[0] | (uint32_t)x[1] << 8 | (uint32_t)x[2] << 16 | (uint32_t)x[3] << 24;
    *pos += 4;
    return 0;
}

int buf_get_u64le(const uint8_t *p, size_t len, size_t *pos, uint64_t *v) {
    if (*pos > len || len - *pos < 8) return -1;
    uint64_t r = 0;
    for (int i = 7; i >= 0; i--) r = r << 8 | p[*pos + (size_t)i];
    *v = r;
    *pos += 8;
    return 0;
}

int buf_get_f32le(const uint8_t *p, size_t len, size_t *pos, float *v) {
    uint32_t u;
    if (buf_get_u32le(p, len, pos, &u) < 0) return -1;
    memcpy(v, &u, 4);
    return 0;
}
