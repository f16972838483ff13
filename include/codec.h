/* codec.h -- Confluent-framed Avro in and out of copystream's records.
 *
 * Every message on our topics is framed the Confluent way: magic byte 0, the
 * writer schema id as 4 big-endian bytes, then Avro binary. A codec holds the
 * id -> writer schema table (from config, until a schema registry client
 * exists) and one reader schema per record kind (schemas/<Name>.avsc). Decoding
 * resolves the writer's schema against our reader schema, so data written with
 * an older or newer compatible schema still decodes.
 *
 * Avro C 1.11.1 trusts the lengths it reads, so before Avro C sees a payload
 * the codec checks it: the frame is bounded by max_bytes and every length,
 * count, union branch and enum index in the body is checked against the
 * writer schema and the bytes that remain. Anything that fails any step is
 * poison input: decode returns a codec_status other than CODEC_OK, a short
 * reason in errstr, and leaves the output record zeroed.
 *
 * A codec caches Avro resolvers per writer schema and is not thread-safe: use
 * one per thread. */
#ifndef COPYSTREAM_CODEC_H
#define COPYSTREAM_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "records.h"

typedef enum {
    REC_CLICK_EVENT = 0,
    REC_CATALOG_ITEM,
    REC_PERSONALIZED_COPY,
    REC_REACTION,
    REC__COUNT
} record_kind;

/* Avro full name ("io.copystream.ClickEvent") and file stem ("ClickEvent"). */
const char *record_kind_fullname(record_kind k);
const char *record_kind_name(record_kind k);

/* Why a message could not be decoded. The names are the values of the
 * dead-letter header copystream.error and of the metrics label "reason". */
typedef enum {
    CODEC_OK = 0,
    CODEC_ERR_EMPTY,          /* "empty": no value (a null or 0-byte payload) */
    CODEC_ERR_OVERSIZED,      /* "oversized": longer than max_bytes */
    CODEC_ERR_FRAMING,        /* "bad-framing": shorter than 5 bytes or magic != 0 */
    CODEC_ERR_UNKNOWN_SCHEMA, /* "unknown-schema": id not in the table */
    CODEC_ERR_INCOMPATIBLE,   /* "incompatible-schema": cannot resolve to our reader */
    CODEC_ERR_MALFORMED,      /* "malformed": the body does not parse */
    CODEC_ERR_INVALID,        /* "invalid": parses, but breaks a rule (empty user id) */
    CODEC__COUNT
} codec_status;

const char *codec_status_name(codec_status s);

typedef struct codec codec;

/* One row of the writer schema table: Confluent id -> .avsc path. */
typedef struct {
    int32_t id;
    const char *path;
} codec_schema_id;

/* Creates a codec. Reader schemas are loaded from schema_dir/<Name>.avsc for
 * the four record kinds; ids[] maps writer ids to .avsc files (relative paths
 * are taken relative to schema_dir). When encoding, a record is framed with the
 * id whose file holds the same schema as the reader schema of its kind; a
 * kind with no such id cannot be encoded (codec_encode_* fails with a reason).
 * max_bytes bounds the whole framed message. Returns NULL with the reason in
 * errstr (naming the file and Avro's message) on failure. The caller keeps
 * ownership of ids[]; the codec copies what it needs. */
codec *codec_new(const char *schema_dir, const codec_schema_id *ids, size_t n_ids,
                 size_t max_bytes, char *errstr, size_t errlen);
void codec_free(codec *c);

/* The id used when encoding records of kind k, or -1 when there is none. */
int32_t codec_writer_id(const codec *c, record_kind k);

/* Decoders. On CODEC_OK *out holds heap copies owned by the caller (free with
 * the record's *_clear()); otherwise *out is zeroed and errstr says why.
 * Required fields that are empty strings give CODEC_ERR_INVALID. */
codec_status codec_decode_click(codec *c, const void *msg, size_t len, click_event *out,
                                char *errstr, size_t errlen);
codec_status codec_decode_catalog(codec *c, const void *msg, size_t len, catalog_item *out,
                                  char *errstr, size_t errlen);
codec_status codec_decode_copy(codec *c, const void *msg, size_t len, personalized_copy *out,
                               char *errstr, size_t errlen);
codec_status codec_decode_reaction(codec *c, const void *msg, size_t len, reaction *out,
                                   char *errstr, size_t errlen);

/* Encoders: append one framed message to out. Return 0, or -1 with errstr. */
int codec_encode_click(codec *c, const click_event *in, buf *out, char *errstr, size_t errlen);
int codec_encode_catalog(codec *c, const catalog_item *in, buf *out, char *errstr, size_t errlen);
int codec_encode_copy(codec *c, const personalized_copy *in, buf *out, char *errstr, size_t errlen);
int codec_encode_reaction(codec *c, const reaction *in, buf *out, char *errstr, size_t errlen);

#endif
