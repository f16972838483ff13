/* codec.c -- Confluent-framed Avro to and from the structs of records.h.
 *
 * A message is one magic byte (0), a 4-byte big-endian writer schema id and
 * one Avro binary datum of that writer schema. Decoding takes it through four
 * gates, each with its own codec_status so that a dead-lettered message says
 * what was wrong with it: the frame, the id table, schema resolution, and
 * avrocheck (see avrocheck.h) before Avro C is allowed to read a byte.
 *
 * Schema resolution is Avro C's resolved writer, with two gaps of Avro C
 * 1.11.1 filled here:
 *
 *   - it refuses any reader field the writer lacks, default or not. So each
 *     writer is resolved against a projection of our reader schema that
 *     leaves out such fields (only if the reader gives them a default, as the
 *     Avro spec requires), and the fill functions below apply the defaults the
 *     .avsc files declare when a field is not in the projection.
 *   - it copies enum indexes from writer to reader without looking at the
 *     symbols. So the index a decoded enum holds is the writer's, and is
 *     mapped to ours by symbol name here; a symbol we do not know is an
 *     incompatible-schema error for that message.
 *
 * Everything built per writer id (projection, resolver, the reader value that
 * is refilled for every message) is made on first use and kept until
 * codec_free(), so no schema work is repeated per message. Child values got
 * from Avro C (fields, branches, items) are borrowed views into their parent
 * and are not decref'd; only the top-level values held here are. */
#include "codec.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <avro.h>
#include <jansson.h>

#include "avrocheck.h"
#include "log.h"
#include "util.h"

#define FRAME_LEN 5
#define SCHEMA_FILE_MAX (1 << 20)

typedef enum { UNRESOLVED = 0, RESOLVED, UNRESOLVABLE } resolve_state;

/* One row of the id table, and what it takes to read data written with it. */
typedef struct {
    int32_t id;
    char *path;
    avro_schema_t schema;
    int kind;                     /* record_kind with the same full name, or -1 */
    resolve_state state;
    char *why;                    /* when UNRESOLVABLE: the reason, for every message */
    avro_schema_t projection;
    avro_value_iface_t *resolver;
    avro_value_iface_t *reader_class;
    avro_value_t reader_value;    /* where each message lands, in projection form */
    avro_value_t resolved_value;  /* the resolver's view of reader_value */
    int *enum_map;                /* writer symbol index -> ours, -1 when unknown */
    int n_enum_map;
} writer_entry;

struct codec {
    size_t max_bytes;
    avro_schema_t reader[REC__COUNT];
    json_t *reader_json[REC__COUNT];   /* the .avsc as written: Avro C drops defaults */
    int32_t writer_id[REC__COUNT];
    avro_value_iface_t *enc_class[REC__COUNT];
    avro_value_t enc_value[REC__COUNT];
    writer_entry *ids;
    size_t n_ids;
    avro_reader_t in;                  /* re-pointed at each message */
    avro_writer_t out;
};

static const char *const kind_names[REC__COUNT] = {
    "ClickEvent", "CatalogItem", "PersonalizedCopy", "Reaction",
};
static const char *const kind_fullnames[REC__COUNT] = {
    "io.copystream.ClickEvent", "io.copystream.CatalogItem",
    "io.copystream.PersonalizedCopy", "io.copystream.Reaction",
};
static const char *const status_names[CODEC__COUNT] = {
    "ok", "empty", "oversized", "bad-framing", "unknown-schema", "incompatible-schema",
    "malformed", "invalid",
};

const char *record_kind_name(record_kind k) {
    return (unsigned)k < REC__COUNT ? kind_names[k] : "unknown";
}

const char *record_kind_fullname(record_kind k) {
    return (unsigned)k < REC__COUNT ? kind_fullnames[k] : "unknown";
}

const char *codec_status_name(codec_status s) {
    return (unsigned)s < CODEC__COUNT ? status_names[s] : "unknown";
}

/* ---------------------------------------------------------------- schemas */

static void schema_fullname(avro_schema_t s, char *out, size_t n) {
    const char *ns = avro_schema_namespace(s);
    if (ns && *ns)
        snprintf(out, n, "%s.%s", ns, avro_schema_name(s));
    else
        snprintf(out, n, "%s", avro_schema_name(s));
}

static int kind_of_schema(avro_schema_t s) {
    char name[256];
    schema_fullname(s, name, sizeof name);
    for (int k = 0; k < REC__COUNT; k++)
        if (strcmp(name, kind_fullnames[k]) == 0) return k;
    return -1;
}

/* Reads a whole schema file. Returns a NUL-terminated heap copy the caller
 * frees, or NULL with errstr. */
static char *read_file(const char *path, size_t *len, char *errstr, size_t errlen) {
    char *text = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        util_err(errstr, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    if (!(text = malloc(SCHEMA_FILE_MAX + 1))) {
        util_err(errstr, errlen, "%s: out of memory", path);
        goto err;
    }
    *len = fread(text, 1, SCHEMA_FILE_MAX + 1, f);
    if (ferror(f) || *len > SCHEMA_FILE_MAX) {
        util_err(errstr, errlen, "%s: %s", path,
                 ferror(f) ? "read error" : "larger than 1 MiB, not a schema");
        goto err;
    }
    text[*len] = '\0';
    fclose(f);
    return text;
err:
    free(text);
    fclose(f);
    return NULL;
}

/* Loads and parses one .avsc, which must hold a record. If json is not NULL,
 * the parsed JSON is returned there too (the caller owns both). */
static int load_schema(const char *path, avro_schema_t *out, json_t **json, char *errstr,
                       size_t errlen) {
    size_t len;
    char *text = read_file(path, &len, errstr, errlen);
    if (!text) return -1;
    *out = NULL;
    if (avro_schema_from_json_length(text, len, out) != 0) {
        util_err(errstr, errlen, "%s: %s", path, avro_strerror());
        goto err;
    }
    if (!is_avro_record(*out)) {
        util_err(errstr, errlen, "%s: top-level type is %s, not a record", path,
                 avro_schema_type_name(*out));
        goto err;
    }
    if (json) {
        json_error_t jerr;
        if (!(*json = json_loadb(text, len, 0, &jerr))) {
            util_err(errstr, errlen, "%s:%d: %s", path, jerr.line, jerr.text);
            goto err;
        }
    }
    free(text);
    return 0;
err:
    if (*out) avro_schema_decref(*out);
    *out = NULL;
    free(text);
    return -1;
}

/* Removes from the reader schema JSON r (in place) every record field that
 * the writer schema w lacks, descending through records, arrays and maps.
 * A removed field must carry a default; if it does not, the schemas are
 * incompatible and -1 is returned. Unions are left whole: ours hold no
 * records, and Avro C resolves the rest. */
static int project(json_t *r, avro_schema_t w, char *errstr, size_t errlen) {
    while (is_avro_link(w)) w = avro_schema_link_target(w);
    const char *type = json_string_value(json_object_get(r, "type"));
    if (!type) return 0;
    if (strcmp(type, "array") == 0 && is_avro_array(w))
        return project(json_object_get(r, "items"), avro_schema_array_items(w), errstr, errlen);
    if (strcmp(type, "map") == 0 && is_avro_map(w))
        return project(json_object_get(r, "values"), avro_schema_map_values(w), errstr, errlen);
    if (strcmp(type, "record") != 0 || !is_avro_record(w)) return 0;

    json_t *fields = json_object_get(r, "fields");
    size_t i = 0;
    while (i < json_array_size(fields)) {
        json_t *f = json_array_get(fields, i);
        const char *name = json_string_value(json_object_get(f, "name"));
        if (!name) return util_err(errstr, errlen, "reader field without a name");
        if (avro_schema_record_field_get_index(w, name) < 0) {
            if (!json_object_get(f, "default"))
                return util_err(errstr, errlen, "writer lacks field %s.%s and ours has no default",
                                json_string_value(json_object_get(r, "name")), name);
            json_array_remove(fields, i);
            continue;
        }
        if (project(json_object_get(f, "type"), avro_schema_record_field_get(w, name), errstr,
                    errlen) < 0)
            return -1;
        i++;
    }
    return 0;
}

/* The enum-valued field "type" of ClickEvent and Reaction: maps each writer
 * symbol index to our index by name (see the top of the file). */
static int build_enum_map(writer_entry *e, avro_schema_t reader, char *errstr, size_t errlen) {
    avro_schema_t ws = avro_schema_record_field_get(e->schema, "type");
    avro_schema_t rs = avro_schema_record_field_get(reader, "type");
    while (is_avro_link(ws)) ws = avro_schema_link_target(ws);
    if (!is_avro_enum(ws) || !is_avro_enum(rs))
        return util_err(errstr, errlen, "field type is not an enum in both schemas");
    int n = avro_schema_enum_number_of_symbols(ws);
    if (!(e->enum_map = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1))))
        return util_err(errstr, errlen, "out of memory");
    e->n_enum_map = n;
    for (int i = 0; i < n; i++)
        e->enum_map[i] = avro_schema_enum_get_by_name(rs, avro_schema_enum_get(ws, i));
    return 0;
}

static void entry_free(writer_entry *e) {
    if (e->resolved_value.self) avro_value_decref(&e->resolved_value);
    if (e->reader_value.self) avro_value_decref(&e->reader_value);
    if (e->resolver) avro_value_iface_decref(e->resolver);
    if (e->reader_class) avro_value_iface_decref(e->reader_class);
    if (e->projection) avro_schema_decref(e->projection);
    if (e->schema) avro_schema_decref(e->schema);
    free(e->enum_map);
    free(e->why);
    free(e->path);
}

/* Builds what reading data of writer e as records of kind e->kind takes.
 * Failure is remembered in e->why, so an incompatible id costs one attempt,
 * not one per message; the partial state is released by entry_free(). */
static int entry_resolve(codec *c, writer_entry *e) {
    char why[512];
    char *text = NULL;
    json_t *proj = json_deep_copy(c->reader_json[e->kind]);
    if (!proj) {
        util_err(why, sizeof why, "out of memory");
        goto err;
    }
    if (project(proj, e->schema, why, sizeof why) < 0) goto err;
    if (!(text = json_dumps(proj, JSON_COMPACT))) {
        util_err(why, sizeof why, "out of memory");
        goto err;
    }
    if (avro_schema_from_json_length(text, strlen(text), &e->projection) != 0) {
        e->projection = NULL;
        util_err(why, sizeof why, "projection of our schema: %s", avro_strerror());
        goto err;
    }
    if (!(e->resolver = avro_resolved_writer_new(e->schema, e->projection))) {
        util_err(why, sizeof why, "%s", avro_strerror());
        goto err;
    }
    if (!(e->reader_class = avro_generic_class_from_schema(e->projection)) ||
        avro_generic_value_new(e->reader_class, &e->reader_value) != 0 ||
        avro_resolved_writer_new_value(e->resolver, &e->resolved_value) != 0) {
        util_err(why, sizeof why, "%s", avro_strerror());
        goto err;
    }
    avro_resolved_writer_set_dest(&e->resolved_value, &e->reader_value);
    if ((e->kind == REC_CLICK_EVENT || e->kind == REC_REACTION) &&
        build_enum_map(e, c->reader[e->kind], why, sizeof why) < 0)
        goto err;
    free(text);
    json_decref(proj);
    e->state = RESOLVED;
    return 0;
err:
    free(text);
    json_decref(proj);
    e->state = UNRESOLVABLE;
    e->why = util_strdup(why);
    log_warn("codec", "schema id %d (%s) cannot be read as %s: %s", (int)e->id, e->path,
             kind_fullnames[e->kind], why);
    return -1;
}

/* --------------------------------------------------------------- lifecycle */

codec *codec_new(const char *schema_dir, const codec_schema_id *ids, size_t n_ids,
                 size_t max_bytes, char *errstr, size_t errlen) {
    char path[4096];
    codec *c = calloc(1, sizeof *c);
    if (!c) {
        util_err(errstr, errlen, "out of memory");
        return NULL;
    }
    c->max_bytes = max_bytes;
    for (int k = 0; k < REC__COUNT; k++) {
        c->writer_id[k] = -1;
        snprintf(path, sizeof path, "%s/%s.avsc", schema_dir, kind_names[k]);
        if (load_schema(path, &c->reader[k], &c->reader_json[k], errstr, errlen) < 0) goto err;
        if (kind_of_schema(c->reader[k]) != k) {
            util_err(errstr, errlen, "%s: holds %s.%s, expected %s", path,
                     avro_schema_namespace(c->reader[k]), avro_schema_name(c->reader[k]),
                     kind_fullnames[k]);
            goto err;
        }
        if (!(c->enc_class[k] = avro_generic_class_from_schema(c->reader[k])) ||
            avro_generic_value_new(c->enc_class[k], &c->enc_value[k]) != 0) {
            util_err(errstr, errlen, "%s: %s", path, avro_strerror());
            goto err;
        }
    }

    if (n_ids && !(c->ids = calloc(n_ids, sizeof *c->ids))) {
        util_err(errstr, errlen, "out of memory");
        goto err;
    }
    for (size_t i = 0; i < n_ids; i++) {
        writer_entry *e = &c->ids[i];
        for (size_t j = 0; j < i; j++)
            if (c->ids[j].id == ids[i].id) {
                util_err(errstr, errlen, "schema id %d is listed twice", (int)ids[i].id);
                goto err;
            }
        if (!ids[i].path || !ids[i].path[0]) {
            util_err(errstr, errlen, "schema id %d has no file", (int)ids[i].id);
            goto err;
        }
        if (ids[i].path[0] == '/')
            snprintf(path, sizeof path, "%s", ids[i].path);
        else
            snprintf(path, sizeof path, "%s/%s", schema_dir, ids[i].path);
        e->id = ids[i].id;
        c->n_ids = i + 1;
        if (!(e->path = util_strdup(path))) {
            util_err(errstr, errlen, "out of memory");
            goto err;
        }
        if (load_schema(path, &e->schema, NULL, errstr, errlen) < 0) goto err;
        e->kind = kind_of_schema(e->schema);
    }

    /* Ids are compared in full so that the lowest wins whatever the order. */
    for (int k = 0; k < REC__COUNT; k++)
        for (size_t i = 0; i < c->n_ids; i++)
            if (c->ids[i].kind == k && avro_schema_equal(c->ids[i].schema, c->reader[k]) &&
                (c->writer_id[k] < 0 || c->ids[i].id < c->writer_id[k]))
                c->writer_id[k] = c->ids[i].id;

    /* Memory readers and writers keep the pointer they are given and nothing
     * else, so one of each serves every message. */
    static const char none[1];
    if (!(c->in = avro_reader_memory(none, 0)) || !(c->out = avro_writer_memory(none, 0))) {
        util_err(errstr, errlen, "out of memory");
        goto err;
    }
    return c;
err:
    codec_free(c);
    return NULL;
}

void codec_free(codec *c) {
    if (!c) return;
    for (size_t i = 0; i < c->n_ids; i++) entry_free(&c->ids[i]);
    free(c->ids);
    for (int k = 0; k < REC__COUNT; k++) {
        if (c->enc_value[k].self) avro_value_decref(&c->enc_value[k]);
        if (c->enc_class[k]) avro_value_iface_decref(c->enc_class[k]);
        if (c->reader[k]) avro_schema_decref(c->reader[k]);
        json_decref(c->reader_json[k]);
    }
    if (c->in) avro_reader_free(c->in);
    if (c->out) avro_writer_free(c->out);
    free(c);
}

int32_t codec_writer_id(const codec *c, record_kind k) {
    return (unsigned)k < REC__COUNT ? c->writer_id[k] : -1;
}

/* ---------------------------------------------------------------- decoding */

/* Takes one message through the frame, id, resolution and bounds checks and
 * has Avro C read it. On CODEC_OK *rec is the record in projection form,
 * valid until the next decode; *entry tells how it was written. */
static codec_status decode_value(codec *c, record_kind k, const void *msg, size_t len,
                                 writer_entry **entry, avro_value_t **rec, char *errstr,
                                 size_t errlen) {
    const uint8_t *p = msg;
    if (!msg || len == 0) {
        util_err(errstr, errlen, "no value");
        return CODEC_ERR_EMPTY;
    }
    if (len > c->max_bytes) {
        util_err(errstr, errlen, "%zu bytes, more than the %zu allowed", len, c->max_bytes);
        return CODEC_ERR_OVERSIZED;
    }
    if (len < FRAME_LEN) {
        util_err(errstr, errlen, "%zu bytes, shorter than a frame", len);
        return CODEC_ERR_FRAMING;
    }
    if (p[0] != 0) {
        util_err(errstr, errlen, "magic byte %u, not 0", p[0]);
        return CODEC_ERR_FRAMING;
    }
    int32_t id = (int32_t)((uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 |
                           (uint32_t)p[4]);
    writer_entry *e = NULL;
    for (size_t i = 0; i < c->n_ids && !e; i++)
        if (c->ids[i].id == id) e = &c->ids[i];
    if (!e) {
        util_err(errstr, errlen, "schema id %d is not in the table", (int)id);
        return CODEC_ERR_UNKNOWN_SCHEMA;
    }
    if (e->kind != (int)k) {
        char name[256];
        schema_fullname(e->schema, name, sizeof name);
        util_err(errstr, errlen, "schema id %d is %s, not %s", (int)id, name, kind_fullnames[k]);
        return CODEC_ERR_INCOMPATIBLE;
    }
    if (e->state == UNRESOLVED) entry_resolve(c, e);
    if (e->state == UNRESOLVABLE) {
        util_err(errstr, errlen, "schema id %d: %s", (int)id, e->why ? e->why : "out of memory");
        return CODEC_ERR_INCOMPATIBLE;
    }

    const char *body = (const char *)p + FRAME_LEN;
    size_t body_len = len - FRAME_LEN;
    if (avrocheck_validate(e->schema, body, body_len, errstr, errlen) < 0)
        return CODEC_ERR_MALFORMED;
    avro_reader_memory_set_source(c->in, body, (int64_t)body_len);
    if (avro_value_read(c->in, &e->resolved_value) != 0) {
        util_err(errstr, errlen, "%s", avro_strerror());
        return CODEC_ERR_MALFORMED;
    }
    *entry = e;
    *rec = &e->reader_value;
    return CODEC_OK;
}

/* Field `name` of a record value, with a ["null", T] union opened. Returns 1
 * and the T value, or 0 when the value is null or the field is not in the
 * projection (the writer predates it: the caller applies the default). */
static int field(avro_value_t *rec, const char *name, avro_value_t *out) {
    if (avro_value_get_by_name(rec, name, out, NULL) != 0) return 0;
    if (avro_value_get_type(out) == AVRO_UNION) {
        avro_value_t branch;
        if (avro_value_get_current_branch(out, &branch) != 0) return 0;
        *out = branch;
    }
    return avro_value_get_type(out) != AVRO_NULL;
}

/* Copies a string value. A C string cannot carry the NUL bytes Avro strings
 * may hold; an id cut at one would silently name someone else. */
static codec_status copy_string(avro_value_t *v, const char *name, char **dst, char *errstr,
                                size_t errlen) {
    const char *s;
    size_t size;
    if (avro_value_get_string(v, &s, &size) != 0) {
        util_err(errstr, errlen, "%s: %s", name, avro_strerror());
        return CODEC_ERR_MALFORMED;
    }
    size_t n = size ? size - 1 : 0;
    if (memchr(s, '\0', n)) {
        util_err(errstr, errlen, "%s holds a NUL byte", name);
        return CODEC_ERR_INVALID;
    }
    if (!(*dst = malloc(n + 1))) {
        util_err(errstr, errlen, "out of memory");
        return CODEC_ERR_MALFORMED;
    }
    memcpy(*dst, s, n);
    (*dst)[n] = '\0';
    return CODEC_OK;
}

/* A string field. required: a field every writer must have (the projection
 * keeps it); nonempty: an id that must not be "". Absent optional fields
 * leave *dst NULL. */
static codec_status get_string(avro_value_t *rec, const char *name, int required, int nonempty,
                               char **dst, char *errstr, size_t errlen) {
    avro_value_t v;
    if (!field(rec, name, &v)) {
        if (!required) return CODEC_OK;
        util_err(errstr, errlen, "%s is missing", name);
        return CODEC_ERR_INCOMPATIBLE;
    }
    codec_status st = copy_string(&v, name, dst, errstr, errlen);
    if (st == CODEC_OK && nonempty && !**dst) {
        util_err(errstr, errlen, "%s is empty", name);
        return CODEC_ERR_INVALID;
    }
    return st;
}

/* Numbers. *has (when not NULL) says whether the field was there; a required
 * number (has == NULL) must be. */
static codec_status get_long(avro_value_t *rec, const char *name, int *has, int64_t *dst,
                             char *errstr, size_t errlen) {
    avro_value_t v;
    int present = field(rec, name, &v);
    if (has) *has = present;
    if (!present) {
        if (has) return CODEC_OK;
        util_err(errstr, errlen, "%s is missing", name);
        return CODEC_ERR_INCOMPATIBLE;
    }
    if (avro_value_get_long(&v, dst) != 0) {
        util_err(errstr, errlen, "%s: %s", name, avro_strerror());
        return CODEC_ERR_MALFORMED;
    }
    return CODEC_OK;
}

static codec_status get_double(avro_value_t *rec, const char *name, int *has, double *dst,
                               char *errstr, size_t errlen) {
    avro_value_t v;
    int present = field(rec, name, &v);
    if (has) *has = present;
    if (!present) {
        if (has) return CODEC_OK;
        util_err(errstr, errlen, "%s is missing", name);
        return CODEC_ERR_INCOMPATIBLE;
    }
    if (avro_value_get_double(&v, dst) != 0) {
        util_err(errstr, errlen, "%s: %s", name, avro_strerror());
        return CODEC_ERR_MALFORMED;
    }
    return CODEC_OK;
}

static codec_status get_int(avro_value_t *rec, const char *name, int32_t *dst, char *errstr,
                            size_t errlen) {
    avro_value_t v;
    if (!field(rec, name, &v)) {
        util_err(errstr, errlen, "%s is missing", name);
        return CODEC_ERR_INCOMPATIBLE;
    }
    if (avro_value_get_int(&v, dst) != 0) {
        util_err(errstr, errlen, "%s: %s", name, avro_strerror());
        return CODEC_ERR_MALFORMED;
    }
    return CODEC_OK;
}

/* The "type" enum, translated from the writer's symbol index to ours. */
static codec_status get_enum(avro_value_t *rec, const writer_entry *e, int *dst, char *errstr,
                             size_t errlen) {
    avro_value_t v;
    int wi;
    if (!field(rec, "type", &v) || avro_value_get_enum(&v, &wi) != 0) {
        util_err(errstr, errlen, "type: %s", avro_strerror());
        return CODEC_ERR_MALFORMED;
    }
    if (wi < 0 || wi >= e->n_enum_map || e->enum_map[wi] < 0) {
        avro_schema_t ws = avro_schema_record_field_get(e->schema, "type");
        while (is_avro_link(ws)) ws = avro_schema_link_target(ws);
        util_err(errstr, errlen, "type %s is a symbol this reader does not know",
                 wi >= 0 && wi < e->n_enum_map ? avro_schema_enum_get(ws, wi) : "?");
        return CODEC_ERR_INCOMPATIBLE;
    }
    *dst = e->enum_map[wi];
    return CODEC_OK;
}

/* A map<string> field as (locale, text) pairs in map order. *v and *n are
 * set before the pairs are filled, so that a failure part-way leaves
 * something the record's *_clear() frees. */
static codec_status get_localized(avro_value_t *rec, const char *name, localized **v, size_t *n,
                                  char *errstr, size_t errlen) {
    avro_value_t map;
    size_t count;
    if (!field(rec, name, &map) || avro_value_get_size(&map, &count) != 0) {
        util_err(errstr, errlen, "%s is missing", name);
        return CODEC_ERR_INCOMPATIBLE;
    }
    if (count == 0) return CODEC_OK;
    if (!(*v = calloc(count, sizeof **v))) {
        util_err(errstr, errlen, "out of memory");
        return CODEC_ERR_MALFORMED;
    }
    *n = count;
    for (size_t i = 0; i < count; i++) {
        avro_value_t text;
        const char *key;
        codec_status st;
        if (avro_value_get_by_index(&map, i, &text, &key) != 0) {
            util_err(errstr, errlen, "%s: %s", name, avro_strerror());
            return CODEC_ERR_MALFORMED;
        }
        if (!((*v)[i].locale = util_strdup(key))) {
            util_err(errstr, errlen, "out of memory");
            return CODEC_ERR_MALFORMED;
        }
        if ((st = copy_string(&text, name, &(*v)[i].text, errstr, errlen)) != CODEC_OK)
            return st;
    }
    return CODEC_OK;
}

/* An array-of-records field: *items gets calloc'd room for its elements and
 * *n their count (0 and NULL when the field is absent). */
static codec_status get_array(avro_value_t *rec, const char *name, size_t elem, void **items,
                              size_t *n, avro_value_t *arr, char *errstr, size_t errlen) {
    size_t count = 0;
    if (field(rec, name, arr) && avro_value_get_size(arr, &count) != 0) {
        util_err(errstr, errlen, "%s: %s", name, avro_strerror());
        return CODEC_ERR_MALFORMED;
    }
    if (count == 0) return CODEC_OK;
    if (!(*items = calloc(count, elem))) {
        util_err(errstr, errlen, "out of memory");
        return CODEC_ERR_MALFORMED;
    }
    *n = count;
    return CODEC_OK;
}

static codec_status array_item(avro_value_t *arr, size_t i, const char *name, avro_value_t *out,
                               char *errstr, size_t errlen) {
    if (avro_value_get_by_index(arr, i, out, NULL) != 0) {
        util_err(errstr, errlen, "%s[%zu]: %s", name, i, avro_strerror());
        return CODEC_ERR_MALFORMED;
    }
    return CODEC_OK;
}

static codec_status fill_click(avro_value_t *r, const writer_entry *e, click_event *out,
                               char *errstr, size_t errlen) {
    codec_status st;
    int type;
    if ((st = get_string(r, "event_id", 1, 1, &out->event_id, errstr, errlen)) ||
        (st = get_string(r, "user_id", 1, 1, &out->user_id, errstr, errlen)) ||
        (st = get_long(r, "timestamp", NULL, &out->ts_ms, errstr, errlen)) ||
        (st = get_enum(r, e, &type, errstr, errlen)) ||
        (st = get_string(r, "item_id", 0, 0, &out->item_id, errstr, errlen)) ||
        (st = get_string(r, "category", 0, 0, &out->category, errstr, errlen)) ||
        (st = get_long(r, "price_micros", &out->has_price, &out->price_micros, errstr, errlen)) ||
        (st = get_string(r, "currency", 0, 0, &out->currency, errstr, errlen)) ||
        (st = get_string(r, "query", 0, 0, &out->query, errstr, errlen)) ||
        (st = get_string(r, "session_id", 0, 0, &out->session_id, errstr, errlen)) ||
        (st = get_string(r, "locale", 0, 0, &out->locale, errstr, errlen)))
        return st;
    out->type = (event_type)type;
    return CODEC_OK;
}

static codec_status fill_catalog(avro_value_t *r, catalog_item *out, char *errstr,
                                 size_t errlen) {
    codec_status st;
    avro_value_t arr, v;
    if ((st = get_string(r, "item_id", 1, 1, &out->item_id, errstr, errlen)) ||
        (st = get_localized(r, "titles", &out->titles, &out->n_titles, errstr, errlen)) ||
        (st = get_string(r, "category", 0, 0, &out->category, errstr, errlen)) ||
        (st = get_string(r, "brand", 0, 0, &out->brand, errstr, errlen)) ||
        (st = get_long(r, "price_micros", &out->has_price, &out->price_micros, errstr, errlen)) ||
        (st = get_string(r, "currency", 0, 0, &out->currency, errstr, errlen)) ||
        (st = get_long(r, "updated_at", NULL, &out->updated_ms, errstr, errlen)) ||
        (st = get_array(r, "attributes", sizeof *out->attrs, (void **)&out->attrs, &out->n_attrs,
                        &arr, errstr, errlen)))
        return st;
    for (size_t i = 0; i < out->n_attrs; i++) {
        item_attribute *a = &out->attrs[i];
        if ((st = array_item(&arr, i, "attributes", &v, errstr, errlen)) ||
            (st = get_string(&v, "id", 1, 0, &a->id, errstr, errlen)) ||
            (st = get_localized(&v, "phrases", &a->phrases, &a->n_phrases, errstr, errlen)))
            return st;
    }
    /* The schema's default for writers without the field is true. */
    out->available = 1;
    if (field(r, "available", &v)) {
        int b;
        if (avro_value_get_boolean(&v, &b) != 0) {
            util_err(errstr, errlen, "available: %s", avro_strerror());
            return CODEC_ERR_MALFORMED;
        }
        out->available = b != 0;
    }
    return CODEC_OK;
}

static codec_status fill_copy(avro_value_t *r, personalized_copy *out, char *errstr,
                              size_t errlen) {
    codec_status st;
    avro_value_t arr, v;
    if ((st = get_string(r, "copy_id", 1, 1, &out->copy_id, errstr, errlen)) ||
        (st = get_string(r, "user_id", 1, 1, &out->user_id, errstr, errlen)) ||
        (st = get_string(r, "source_event_id", 1, 0, &out->source_event_id, errstr, errlen)) ||
        (st = get_string(r, "source_topic", 1, 0, &out->source_topic, errstr, errlen)) ||
        (st = get_int(r, "source_partition", &out->source_partition, errstr, errlen)) ||
        (st = get_long(r, "source_offset", NULL, &out->source_offset, errstr, errlen)) ||
        (st = get_string(r, "locale", 1, 0, &out->locale, errstr, errlen)) ||
        (st = get_string(r, "text", 1, 0, &out->text, errstr, errlen)) ||
        (st = get_string(r, "intent", 1, 0, &out->intent, errstr, errlen)) ||
        (st = get_string(r, "template_id", 1, 0, &out->template_id, errstr, errlen)) ||
        (st = get_string(r, "variant_id", 1, 0, &out->variant_id, errstr, errlen)) ||
        (st = get_string(r, "strategy", 1, 0, &out->strategy, errstr, errlen)) ||
        (st = get_string(r, "model_version", 0, 0, &out->model_version, errstr, errlen)) ||
        (st = get_long(r, "created_at", NULL, &out->created_ms, errstr, errlen)))
        return st;

    if ((st = get_array(r, "items", sizeof *out->items, (void **)&out->items, &out->n_items, &arr,
                        errstr, errlen)))
        return st;
    for (size_t i = 0; i < out->n_items; i++) {
        promoted_item *it = &out->items[i];
        if ((st = array_item(&arr, i, "items", &v, errstr, errlen)) ||
            (st = get_string(&v, "item_id", 1, 0, &it->item_id, errstr, errlen)) ||
            (st = get_string(&v, "title", 0, 0, &it->title, errstr, errlen)) ||
            (st = get_double(&v, "score", NULL, &it->score, errstr, errlen)) ||
            (st = get_long(&v, "price_micros", &it->has_price, &it->price_micros, errstr,
                           errlen)) ||
            (st = get_string(&v, "currency", 0, 0, &it->currency, errstr, errlen)))
            return st;
    }

    if ((st = get_array(r, "reasons", sizeof *out->reasons, (void **)&out->reasons,
                        &out->n_reasons, &arr, errstr, errlen)))
        return st;
    for (size_t i = 0; i < out->n_reasons; i++) {
        copy_reason *re = &out->reasons[i];
        if ((st = array_item(&arr, i, "reasons", &v, errstr, errlen)) ||
            (st = get_string(&v, "code", 1, 0, &re->code, errstr, errlen)) ||
            (st = get_string(&v, "attribute_id", 0, 0, &re->attribute_id, errstr, errlen)) ||
            (st = get_string(&v, "text", 1, 0, &re->text, errstr, errlen)) ||
            (st = get_double(&v, "score", NULL, &re->score, errstr, errlen)))
            return st;
    }
    return CODEC_OK;
}

static codec_status fill_reaction(avro_value_t *r, const writer_entry *e, reaction *out,
                                  char *errstr, size_t errlen) {
    codec_status st;
    int type;
    if ((st = get_string(r, "reaction_id", 1, 1, &out->reaction_id, errstr, errlen)) ||
        (st = get_string(r, "copy_id", 0, 0, &out->copy_id, errstr, errlen)) ||
        (st = get_string(r, "user_id", 1, 1, &out->user_id, errstr, errlen)) ||
        (st = get_enum(r, e, &type, errstr, errlen)) ||
        (st = get_string(r, "item_id", 0, 0, &out->item_id, errstr, errlen)) ||
        (st = get_double(r, "value", &out->has_value, &out->value, errstr, errlen)) ||
        (st = get_long(r, "timestamp", NULL, &out->ts_ms, errstr, errlen)))
        return st;
    out->type = (reaction_type)type;
    return CODEC_OK;
}

codec_status codec_decode_click(codec *c, const void *msg, size_t len, click_event *out,
                                char *errstr, size_t errlen) {
    writer_entry *e;
    avro_value_t *rec;
    memset(out, 0, sizeof *out);
    codec_status st = decode_value(c, REC_CLICK_EVENT, msg, len, &e, &rec, errstr, errlen);
    if (st == CODEC_OK) st = fill_click(rec, e, out, errstr, errlen);
    if (st != CODEC_OK) click_event_clear(out);
    return st;
}

codec_status codec_decode_catalog(codec *c, const void *msg, size_t len, catalog_item *out,
                                  char *errstr, size_t errlen) {
    writer_entry *e;
    avro_value_t *rec;
    memset(out, 0, sizeof *out);
    codec_status st = decode_value(c, REC_CATALOG_ITEM, msg, len, &e, &rec, errstr, errlen);
    if (st == CODEC_OK) st = fill_catalog(rec, out, errstr, errlen);
    if (st != CODEC_OK) catalog_item_clear(out);
    return st;
}

codec_status codec_decode_copy(codec *c, const void *msg, size_t len, personalized_copy *out,
                               char *errstr, size_t errlen) {
    writer_entry *e;
    avro_value_t *rec;
    memset(out, 0, sizeof *out);
    codec_status st = decode_value(c, REC_PERSONALIZED_COPY, msg, len, &e, &rec, errstr, errlen);
    if (st == CODEC_OK) st = fill_copy(rec, out, errstr, errlen);
    if (st != CODEC_OK) personalized_copy_clear(out);
    return st;
}

codec_status codec_decode_reaction(codec *c, const void *msg, size_t len, reaction *out,
                                   char *errstr, size_t errlen) {
    writer_entry *e;
    avro_value_t *rec;
    memset(out, 0, sizeof *out);
    codec_status st = decode_value(c, REC_REACTION, msg, len, &e, &rec, errstr, errlen);
    if (st == CODEC_OK) st = fill_reaction(rec, e, out, errstr, errlen);
    if (st != CODEC_OK) reaction_clear(out);
    return st;
}

/* ---------------------------------------------------------------- encoding */

/* Setters for fields of the kind's own (reader) schema, in which every
 * optional field is a union with null as branch 0. Each returns 0, or -1 with
 * errstr naming the field. */
static int avro_fail(const char *name, char *errstr, size_t errlen) {
    return util_err(errstr, errlen, "%s: %s", name, avro_strerror());
}

static int put_field(avro_value_t *rec, const char *name, int optional, int present,
                     avro_value_t *out, char *errstr, size_t errlen) {
    avro_value_t v;
    if (avro_value_get_by_name(rec, name, &v, NULL) != 0) return avro_fail(name, errstr, errlen);
    if (!optional) {
        *out = v;
        return 0;
    }
    if (avro_value_set_branch(&v, present ? 1 : 0, out) != 0 ||
        (!present && avro_value_set_null(out) != 0))
        return avro_fail(name, errstr, errlen);
    return 0;
}

/* Strings: a required string must not be NULL, and an id (nonempty) must not
 * be "", which the decoder would reject as invalid. */
static int put_string(avro_value_t *rec, const char *name, int optional, int nonempty,
                      const char *s, char *errstr, size_t errlen) {
    avro_value_t v;
    if (!optional && !s) return util_err(errstr, errlen, "%s is NULL", name);
    if (nonempty && !*s) return util_err(errstr, errlen, "%s is empty", name);
    if (put_field(rec, name, optional, s != NULL, &v, errstr, errlen) < 0) return -1;
    if (s && avro_value_set_string(&v, s) != 0) return avro_fail(name, errstr, errlen);
    return 0;
}

static int put_long(avro_value_t *rec, const char *name, int optional, int present, int64_t x,
                    char *errstr, size_t errlen) {
    avro_value_t v;
    if (put_field(rec, name, optional, present, &v, errstr, errlen) < 0) return -1;
    if (present && avro_value_set_long(&v, x) != 0) return avro_fail(name, errstr, errlen);
    return 0;
}

static int put_double(avro_value_t *rec, const char *name, int optional, int present, double x,
                      char *errstr, size_t errlen) {
    avro_value_t v;
    if (put_field(rec, name, optional, present, &v, errstr, errlen) < 0) return -1;
    if (present && avro_value_set_double(&v, x) != 0) return avro_fail(name, errstr, errlen);
    return 0;
}

static int put_localized(avro_value_t *rec, const char *name, const localized *l, size_t n,
                         char *errstr, size_t errlen) {
    avro_value_t map, v;
    if (put_field(rec, name, 0, 1, &map, errstr, errlen) < 0) return -1;
    for (size_t i = 0; i < n; i++) {
        if (!l[i].locale || !l[i].text)
            return util_err(errstr, errlen, "%s[%zu] has a NULL locale or text", name, i);
        if (avro_value_add(&map, l[i].locale, &v, NULL, NULL) != 0 ||
            avro_value_set_string(&v, l[i].text) != 0)
            return avro_fail(name, errstr, errlen);
    }
    return 0;
}

static int put_enum(avro_value_t *rec, int x, int n, char *errstr, size_t errlen) {
    avro_value_t v;
    if (x < 0 || x >= n) return util_err(errstr, errlen, "type %d is out of range", x);
    if (put_field(rec, "type", 0, 1, &v, errstr, errlen) < 0) return -1;
    if (avro_value_set_enum(&v, x) != 0) return avro_fail("type", errstr, errlen);
    return 0;
}

static avro_value_t *encode_begin(codec *c, record_kind k, char *errstr, size_t errlen) {
    if (c->writer_id[k] < 0) {
        util_err(errstr, errlen, "no schema.id entry holds our %s schema", kind_names[k]);
        return NULL;
    }
    if (avro_value_reset(&c->enc_value[k]) != 0) {
        avro_fail(kind_names[k], errstr, errlen);
        return NULL;
    }
    return &c->enc_value[k];
}

/* Appends the frame and the datum to out. out is unchanged on failure. */
static int encode_finish(codec *c, record_kind k, buf *out, char *errstr, size_t errlen) {
    avro_value_t *v = &c->enc_value[k];
    size_t size;
    if (avro_value_sizeof(v, &size) != 0) return avro_fail(kind_names[k], errstr, errlen);
    if (size > c->max_bytes || FRAME_LEN + size > c->max_bytes)
        return util_err(errstr, errlen, "%s of %zu bytes is over the %zu-byte limit",
                        kind_names[k], FRAME_LEN + size, c->max_bytes);
    if (buf_reserve(out, FRAME_LEN + size) < 0) return util_err(errstr, errlen, "out of memory");
    uint8_t *dst = (uint8_t *)out->p + out->len;
    uint32_t id = (uint32_t)c->writer_id[k];
    dst[0] = 0;
    dst[1] = (uint8_t)(id >> 24);
    dst[2] = (uint8_t)(id >> 16);
    dst[3] = (uint8_t)(id >> 8);
    dst[4] = (uint8_t)id;
    avro_writer_memory_set_dest(c->out, (const char *)dst + FRAME_LEN, (int64_t)size);
    if (avro_value_write(c->out, v) != 0) {
        out->p[out->len] = '\0';
        return avro_fail(kind_names[k], errstr, errlen);
    }
    out->len += FRAME_LEN + size;
    out->p[out->len] = '\0';
    return 0;
}

int codec_encode_click(codec *c, const click_event *in, buf *out, char *errstr, size_t errlen) {
    avro_value_t *r = encode_begin(c, REC_CLICK_EVENT, errstr, errlen);
    if (!r || put_string(r, "event_id", 0, 1, in->event_id, errstr, errlen) < 0 ||
        put_string(r, "user_id", 0, 1, in->user_id, errstr, errlen) < 0 ||
        put_long(r, "timestamp", 0, 1, in->ts_ms, errstr, errlen) < 0 ||
        put_enum(r, (int)in->type, EV__COUNT, errstr, errlen) < 0 ||
        put_string(r, "item_id", 1, 0, in->item_id, errstr, errlen) < 0 ||
        put_string(r, "category", 1, 0, in->category, errstr, errlen) < 0 ||
        put_long(r, "price_micros", 1, in->has_price, in->price_micros, errstr, errlen) < 0 ||
        put_string(r, "currency", 1, 0, in->currency, errstr, errlen) < 0 ||
        put_string(r, "query", 1, 0, in->query, errstr, errlen) < 0 ||
        put_string(r, "session_id", 1, 0, in->session_id, errstr, errlen) < 0 ||
        put_string(r, "locale", 1, 0, in->locale, errstr, errlen) < 0)
        return -1;
    return encode_finish(c, REC_CLICK_EVENT, out, errstr, errlen);
}

int codec_encode_catalog(codec *c, const catalog_item *in, buf *out, char *errstr,
                         size_t errlen) {
    avro_value_t arr, v, b;
    avro_value_t *r = encode_begin(c, REC_CATALOG_ITEM, errstr, errlen);
    if (!r || put_string(r, "item_id", 0, 1, in->item_id, errstr, errlen) < 0 ||
        put_localized(r, "titles", in->titles, in->n_titles, errstr, errlen) < 0 ||
        put_string(r, "category", 1, 0, in->category, errstr, errlen) < 0 ||
        put_string(r, "brand", 1, 0, in->brand, errstr, errlen) < 0 ||
        put_long(r, "price_micros", 1, in->has_price, in->price_micros, errstr, errlen) < 0 ||
        put_string(r, "currency", 1, 0, in->currency, errstr, errlen) < 0 ||
        put_long(r, "updated_at", 0, 1, in->updated_ms, errstr, errlen) < 0 ||
        put_field(r, "attributes", 0, 1, &arr, errstr, errlen) < 0 ||
        put_field(r, "available", 0, 1, &b, errstr, errlen) < 0)
        return -1;
    if (avro_value_set_boolean(&b, in->available != 0) != 0)
        return avro_fail("available", errstr, errlen);
    for (size_t i = 0; i < in->n_attrs; i++) {
        if (avro_value_append(&arr, &v, NULL) != 0) return avro_fail("attributes", errstr, errlen);
        if (put_string(&v, "id", 0, 0, in->attrs[i].id, errstr, errlen) < 0 ||
            put_localized(&v, "phrases", in->attrs[i].phrases, in->attrs[i].n_phrases, errstr,
                          errlen) < 0)
            return -1;
    }
    return encode_finish(c, REC_CATALOG_ITEM, out, errstr, errlen);
}

int codec_encode_copy(codec *c, const personalized_copy *in, buf *out, char *errstr,
                      size_t errlen) {
    avro_value_t arr, v;
    avro_value_t *r = encode_begin(c, REC_PERSONALIZED_COPY, errstr, errlen);
    if (!r || put_string(r, "copy_id", 0, 1, in->copy_id, errstr, errlen) < 0 ||
        put_string(r, "user_id", 0, 1, in->user_id, errstr, errlen) < 0 ||
        put_string(r, "source_event_id", 0, 0, in->source_event_id, errstr, errlen) < 0 ||
        put_string(r, "source_topic", 0, 0, in->source_topic, errstr, errlen) < 0 ||
        put_field(r, "source_partition", 0, 1, &v, errstr, errlen) < 0)
        return -1;
    if (avro_value_set_int(&v, in->source_partition) != 0)
        return avro_fail("source_partition", errstr, errlen);
    if (put_long(r, "source_offset", 0, 1, in->source_offset, errstr, errlen) < 0 ||
        put_string(r, "locale", 0, 0, in->locale, errstr, errlen) < 0 ||
        put_string(r, "text", 0, 0, in->text, errstr, errlen) < 0 ||
        put_string(r, "intent", 0, 0, in->intent, errstr, errlen) < 0 ||
        put_string(r, "template_id", 0, 0, in->template_id, errstr, errlen) < 0 ||
        put_string(r, "variant_id", 0, 0, in->variant_id, errstr, errlen) < 0 ||
        put_string(r, "strategy", 0, 0, in->strategy, errstr, errlen) < 0 ||
        put_string(r, "model_version", 1, 0, in->model_version, errstr, errlen) < 0 ||
        put_long(r, "created_at", 0, 1, in->created_ms, errstr, errlen) < 0)
        return -1;

    if (put_field(r, "items", 0, 1, &arr, errstr, errlen) < 0) return -1;
    for (size_t i = 0; i < in->n_items; i++) {
        const promoted_item *it = &in->items[i];
        if (avro_value_append(&arr, &v, NULL) != 0) return avro_fail("items", errstr, errlen);
        if (put_string(&v, "item_id", 0, 0, it->item_id, errstr, errlen) < 0 ||
            put_string(&v, "title", 1, 0, it->title, errstr, errlen) < 0 ||
            put_double(&v, "score", 0, 1, it->score, errstr, errlen) < 0 ||
            put_long(&v, "price_micros", 1, it->has_price, it->price_micros, errstr, errlen) < 0 ||
            put_string(&v, "currency", 1, 0, it->currency, errstr, errlen) < 0)
            return -1;
    }
    if (put_field(r, "reasons", 0, 1, &arr, errstr, errlen) < 0) return -1;
    for (size_t i = 0; i < in->n_reasons; i++) {
        const copy_reason *re = &in->reasons[i];
        if (avro_value_append(&arr, &v, NULL) != 0) return avro_fail("reasons", errstr, errlen);
        if (put_string(&v, "code", 0, 0, re->code, errstr, errlen) < 0 ||
            put_string(&v, "attribute_id", 1, 0, re->attribute_id, errstr, errlen) < 0 ||
            put_string(&v, "text", 0, 0, re->text, errstr, errlen) < 0 ||
            put_double(&v, "score", 0, 1, re->score, errstr, errlen) < 0)
            return -1;
    }
    return encode_finish(c, REC_PERSONALIZED_COPY, out, errstr, errlen);
}

int codec_encode_reaction(codec *c, const reaction *in, buf *out, char *errstr, size_t errlen) {
    avro_value_t *r = encode_begin(c, REC_REACTION, errstr, errlen);
    if (!r || put_string(r, "reaction_id", 0, 1, in->reaction_id, errstr, errlen) < 0 ||
        put_string(r, "copy_id", 1, 0, in->copy_id, errstr, errlen) < 0 ||
        put_string(r, "user_id", 0, 1, in->user_id, errstr, errlen) < 0 ||
        put_enum(r, (int)in->type, RX__COUNT, errstr, errlen) < 0 ||
        put_string(r, "item_id", 1, 0, in->item_id, errstr, errlen) < 0 ||
        put_double(r, "value", 1, in->has_value, in->value, errstr, errlen) < 0 ||
        put_long(r, "timestamp", 0, 1, in->ts_ms, errstr, errlen) < 0)
        return -1;
    return encode_finish(c, REC_REACTION, out, errstr, errlen);
}
