/* buf.h -- a growable byte buffer.
 *
 * Used wherever the program builds bytes of unknown length: encoded Avro
 * payloads, rendered copy text, Redis blobs, Prometheus pages. The buffer owns
 * its memory; buf_free() releases it and leaves an empty buffer, so a freed
 * buffer may be reused. Append functions return 0, or -1 when memory runs out
 * (the buffer is then unchanged). p is always NUL-terminated when cap > 0, so
 * a buffer holding text can be used as a C string. */
#ifndef COPYSTREAM_BUF_H
#define COPYSTREAM_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    char *p;
    size_t len;
    size_t cap;
} buf;

#define BUF_INIT {NULL, 0, 0}

int buf_reserve(buf *b, size_t extra);
int buf_append(buf *b, const void *data, size_t len);
int buf_puts(buf *b, const char *s);
int buf_printf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int buf_put_u8(buf *b, uint8_t v);
int buf_put_u32le(buf *b, uint32_t v);
int buf_put_u64le(buf *b, uint64_t v);
int buf_put_f32le(buf *b, float v);
void buf_reset(buf *b);   /* len = 0, memory kept */
void buf_free(buf *b);

/* Little-endian readers over a bounded input; each returns -1 when fewer bytes
 * remain than it needs, leaving *pos unchanged. */
int buf_get_u8(const uint8_t *p, size_t len, size_t *pos, uint8_t *v);
int buf_get_u32le(const uint8_t *p, size_t len, size_t *pos, uint32_t *v);
int buf_get_u64le(const uint8_t *p, size_t len, size_t *pos, uint64_t *v);
int buf_get_f32le(const uint8_t *p, size_t len, size_t *pos, float *v);

#endif
