/* avrocheck.c -- a bounds-checking walk over Avro binary data.
 *
 * The walk mirrors how Avro C reads (and skips) a datum of the writer schema,
 * field by field, but only moves a cursor: no value is built and nothing is
 * allocated, so hostile input costs at most one pass over its own bytes. Each
 * rule below closes a way in which Avro C 1.11.1 would trust the input; see
 * avrocheck.h. The encoding rules are those of the Avro specification,
 * "Binary Encoding". */
#include "avrocheck.h"

#include <inttypes.h>
#include <stdint.h>
#include <string.h>

#include "util.h"

typedef struct {
    const uint8_t *p;
    size_t len;
    size_t pos;
    size_t empty_items; /* zero-byte array items accepted so far */
    char *errstr;
    size_t errlen;
} cursor;

static int check_value(cursor *c, avro_schema_t s, int depth);

static size_t remaining(const cursor *c) { return c->len - c->pos; }

/* A zig-zag varint of at most `bits` bits (32 for int, 64 for long). Avro C
 * stops at 10 bytes but silently drops bits that do not fit; a value that
 * does not fit is not a value any writer produced, so it is rejected here. */
static int read_varint(cursor *c, int bits, const char *what, int64_t *out) {
    size_t start = c->pos;
    uint64_t v = 0;
    for (int shift = 0;; shift += 7) {
        if (shift >= bits)
            return util_err(c->errstr, c->errlen, "byte %zu: %s: varint too long", start, what);
        if (c->pos >= c->len)
            return util_err(c->errstr, c->errlen, "byte %zu: %s: truncated", start, what);
        uint8_t b = c->p[c->pos++];
        if (bits - shift < 7 && (b & 0x7f) >> (bits - shift))
            return util_err(c->errstr, c->errlen, "byte %zu: %s: varint overflows %d bits",
                            start, what, bits);
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) break;
    }
    if (bits == 32) {
        uint32_t u = (uint32_t)v;
        *out = (int32_t)((u >> 1) ^ (0u - (u & 1)));
    } else {
        *out = (int64_t)((v >> 1) ^ (0u - (v & 1)));
    }
    return 0;
}

static int need(cursor *c, size_t n, const char *what) {
    if (remaining(c) < n)
        return util_err(c->errstr, c->errlen, "byte %zu: %s needs %zu bytes, %zu left", c->pos,
                        what, n, remaining(c));
    c->pos += n;
    return 0;
}

/* string and bytes: a length, then that many bytes. Map keys (no_nul) may
 * not hold a NUL byte: Avro C keeps them as C strings, so "en-US<NUL>x" would
 * become the key "en-US", a title for a locale its writer never named, and
 * two keys equal up to a NUL would collapse into one (found while writing
 * tests/fuzz/fuzz_codec.c). */
static int check_blob(cursor *c, const char *what, int no_nul) {
    size_t at = c->pos;
    int64_t n;
    if (read_varint(c, 64, what, &n) < 0) return -1;
    if (n < 0 || (uint64_t)n > remaining(c))
        return util_err(c->errstr, c->errlen, "byte %zu: %s length %" PRId64 " with %zu bytes left",
                        at, what, n, remaining(c));
    if (no_nul && memchr(c->p + c->pos, 0, (size_t)n))
        return util_err(c->errstr, c->errlen, "byte %zu: %s holds a NUL byte", at, what);
    c->pos += (size_t)n;
    return 0;
}

/* Can a datum of s occupy zero bytes? Only then may a block count exceed the
 * bytes left, which is why such items get their own budget. */
static int encodes_empty(avro_schema_t s, int depth) {
    if (depth > AVROCHECK_MAX_DEPTH) return 0;
    switch (avro_typeof(s)) {
    case AVRO_NULL:
        return 1;
    case AVRO_FIXED:
        return avro_schema_fixed_size(s) == 0;
    case AVRO_LINK:
        return encodes_empty(avro_schema_link_target(s), depth + 1);
    case AVRO_RECORD:
        for (size_t i = 0; i < avro_schema_record_size(s); i++)
            if (!encodes_empty(avro_schema_record_field_get_by_index(s, (int)i), depth + 1))
                return 0;
        return 1;
    default:
        return 0;
    }
}

/* Arrays and maps: blocks of `count` items until a zero count. A negative
 * count means -count items preceded by the block's byte size; Avro C ignores
 * that size when reading but other readers skip by it, so it must be true. */
static int check_blocks(cursor *c, avro_schema_t item, int is_map, int depth) {
    const char *what = is_map ? "map block" : "array block";
    int empty = !is_map && encodes_empty(item, depth);
    for (;;) {
        size_t at = c->pos;
        int64_t count, size = -1;
        if (read_varint(c, 64, what, &count) < 0) return -1;
        if (count == 0) return 0;
        if (count < 0) {
            if (count == INT64_MIN)
                return util_err(c->errstr, c->errlen, "byte %zu: %s count out of range", at, what);
            count = -count;
            if (read_varint(c, 64, what, &size) < 0) return -1;
            if (size < 0 || (uint64_t)size > remaining(c))
                return util_err(c->errstr, c->errlen,
                                "byte %zu: %s size %" PRId64 " with %zu bytes left", at, what,
                                size, remaining(c));
        }
        if (empty) {
            if ((uint64_t)count > AVROCHECK_MAX_EMPTY_ITEMS - c->empty_items)
                return util_err(c->errstr, c->errlen,
                                "byte %zu: more than %d zero-byte items in one message", at,
                                AVROCHECK_MAX_EMPTY_ITEMS);
            c->empty_items += (size_t)count;
        } else if ((uint64_t)count > remaining(c)) {
            return util_err(c->errstr, c->errlen,
                            "byte %zu: %s count %" PRId64 " with %zu bytes left", at, what,
                            count, remaining(c));
        }
        size_t start = c->pos;
        for (int64_t i = 0; i < count; i++) {
            if (is_map && check_blob(c, "map key", 1) < 0) return -1;
            if (check_value(c, item, depth + 1) < 0) return -1;
        }
        if (size >= 0 && c->pos - start != (size_t)size)
            return util_err(c->errstr, c->errlen,
                            "byte %zu: %s says %" PRId64 " bytes, its items take %zu", at, what,
                            size, c->pos - start);
    }
}

static int check_value(cursor *c, avro_schema_t s, int depth) {
    if (depth > AVROCHECK_MAX_DEPTH)
        return util_err(c->errstr, c->errlen, "byte %zu: nested deeper than %d", c->pos,
                        AVROCHECK_MAX_DEPTH);
    size_t at = c->pos;
    int64_t v;
    switch (avro_typeof(s)) {
    case AVRO_NULL:
        return 0;
    case AVRO_BOOLEAN:
        if (need(c, 1, "boolean") < 0) return -1;
        if (c->p[at] > 1)
            return util_err(c->errstr, c->errlen, "byte %zu: boolean byte %u", at, c->p[at]);
        return 0;
    case AVRO_INT32:
        return read_varint(c, 32, "int", &v);
    case AVRO_INT64:
        return read_varint(c, 64, "long", &v);
    case AVRO_FLOAT:
        return need(c, 4, "float");
    case AVRO_DOUBLE:
        return need(c, 8, "double");
    case AVRO_STRING:
        return check_blob(c, "string", 0);
    case AVRO_BYTES:
        return check_blob(c, "bytes", 0);
    case AVRO_FIXED:
        return need(c, (size_t)avro_schema_fixed_size(s), "fixed");
    case AVRO_ENUM:
        if (read_varint(c, 64, "enum", &v) < 0) return -1;
        if (v < 0 || v >= avro_schema_enum_number_of_symbols(s))
            return util_err(c->errstr, c->errlen, "byte %zu: enum %s has no symbol %" PRId64, at,
                            avro_schema_name(s), v);
        return 0;
    case AVRO_UNION:
        if (read_varint(c, 64, "union branch", &v) < 0) return -1;
        if (v < 0 || (uint64_t)v >= avro_schema_union_size(s))
            return util_err(c->errstr, c->errlen, "byte %zu: union has no branch %" PRId64, at, v);
        return check_value(c, avro_schema_union_branch(s, (int)v), depth + 1);
    case AVRO_RECORD:
        for (size_t i = 0; i < avro_schema_record_size(s); i++)
            if (check_value(c, avro_schema_record_field_get_by_index(s, (int)i), depth + 1) < 0)
                return -1;
        return 0;
    case AVRO_ARRAY:
        return check_blocks(c, avro_schema_array_items(s), 0, depth);
    case AVRO_MAP:
        return check_blocks(c, avro_schema_map_values(s), 1, depth);
    case AVRO_LINK:
        return check_value(c, avro_schema_link_target(s), depth + 1);
    }
    return util_err(c->errstr, c->errlen, "byte %zu: unknown Avro type %d", at, avro_typeof(s));
}

int avrocheck_validate(avro_schema_t writer, const void *body, size_t len, char *errstr,
                       size_t errlen) {
    if (!writer || (!body && len))
        return util_err(errstr, errlen, "no schema or no body");
    cursor c = {body, len, 0, 0, errstr, errlen};
    if (check_value(&c, writer, 0) < 0) return -1;
    if (c.pos != len)
        return util_err(errstr, errlen, "byte %zu: %zu trailing bytes after the record", c.pos,
                        len - c.pos);
    return 0;
}
