/* commands.c -- what the subcommands share: where the config comes from, how
 * a codec is built from it, and the parsing of option values. */
#include "commands.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "codec.h"
#include "config.h"
#include "log.h"
#include "records.h"
#include "util.h"

const char *commands_default_config(void) {
    const char *env = getenv("COPYSTREAM_CONFIG");
    return env && env[0] ? env : "config/copystream.conf";
}

config *commands_load_config(const char *path) {
    extern char **environ;
    char err[1024];
    config *cfg = config_load(path, environ, err, sizeof err);
    if (!cfg) {
        fprintf(stderr, "copystream: %s\n", err);
        return NULL;
    }
    log_set_level((log_level)log_level_parse(config_str(cfg, "log.level")));
    return cfg;
}

typedef struct {
    codec_schema_id *ids;
    size_t n, cap;
    int failed;
} commands_ids;

static void commands_collect_id(const char *name, const char *value, void *ud) {
    commands_ids *ids = ud;
    if (ids->failed) return;
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 8;
        codec_schema_id *v = realloc(ids->ids, cap * sizeof *v);
        if (!v) {
            ids->failed = 1;
            return;
        }
        ids->ids = v;
        ids->cap = cap;
    }
    ids->ids[ids->n++] = (codec_schema_id){(int32_t)atol(name), value};
}

codec *commands_codec_new(const config *c, char *errstr, size_t errlen) {
    commands_ids ids = {0};
    config_schema_ids_each(c, commands_collect_id, &ids);
    codec *k = NULL;
    if (ids.failed)
        util_err(errstr, errlen, "out of memory");
    else
        k = codec_new(config_str(c, "schema.dir"), ids.ids, ids.n,
                      (size_t)config_int(c, "input.max_bytes"), errstr, errlen);
    free(ids.ids);
    return k;
}

int commands_int(const char *s, int64_t lo, int64_t hi, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    /* errno: out of long long's range, which strtoll clamps into it */
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int commands_double(const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) return -1;
    *out = v;
    return 0;
}

int commands_event_type(const char *name) {
    int t = event_type_parse(name);
    return t == EV_SEARCH ? -1 : t; /* a search names no item */
}
