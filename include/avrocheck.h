/* avrocheck.h -- proves an Avro binary body safe to hand to Avro C.
 *
 * Avro C 1.11.1 believes the lengths and counts it reads: a string length of
 * 2^40 becomes a 2^40-byte malloc, a union branch or enum index out of range
 * is used as is, a negative block count is negated without a check, and a
 * map key is cut at its first NUL byte. Anything read from Kafka therefore
 * passes avrocheck_validate() first: it walks the body by the writer schema,
 * allocating nothing, and accepts it only if every length, count and index is
 * in range, no map key holds a NUL, and the record ends exactly at the last
 * byte. After that, Avro C reads only what is really there. */
#ifndef COPYSTREAM_AVROCHECK_H
#define COPYSTREAM_AVROCHECK_H

#include <stddef.h>

#include <avro.h>

/* Schemas nest a few levels; anything deeper is an attack on the stack of a
 * recursive walker, ours or Avro C's. */
#define AVROCHECK_MAX_DEPTH 64

/* Items that encode in zero bytes (null, records of nulls) cost nothing on the
 * wire but one allocation each in Avro C, so a 3-byte block count could ask
 * for 2^62 of them. This bounds their total per message. */
#define AVROCHECK_MAX_EMPTY_ITEMS (1 << 16)

/* Returns 0 when body[0..len) is exactly one well-formed datum of the writer
 * schema, or -1 with the offending byte offset and reason in errstr. Neither
 * the schema nor the body is modified or retained. */
int avrocheck_validate(avro_schema_t writer, const void *body, size_t len, char *errstr,
                       size_t errlen);

#endif
