/* import.c -- `copystream import`: publish a public interaction dataset.
 *
 * Reads the sequence format common to sequential-recommendation datasets (one
 * user per line, `user item item ...` in time order, such as Amazon Beauty) and
 * optionally an item -> attribute ids JSON object (`{"item": [attr, ...]}`),
 * then publishes one catalog item per item and each user's interactions as
 * click events. The datasets have no clock and no text, so both are made up
 * deterministically: the n-th interaction of a user happens at start + n *
 * spacing and has event id "<user>:<n>", which means importing a file twice
 * produces the same events and the service's de-duplication drops the second
 * copy; attribute ids become "a<attr>" with no phrases, items have no titles
 * and no category.
 *
 * The parser (import_data_*, import_read_*) does not touch Kafka, so that it
 * can be tested alone. It interns every id once: a dataset costs one string
 * per distinct id plus four bytes per interaction. */
#include "commands.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "config.h"
#include "import.h"
#include "log.h"
#include "publish.h"
#include "records.h"
#include "util.h"

#define IMPORT_MAX_ID 200           /* bytes in a user, item or attribute id */
#define IMPORT_START_MS 1704067200000LL /* 2024-01-01T00:00:00Z */
#define IMPORT_SPACING_S 86400
#define IMPORT_PROGRESS_US 2000000

/* ------------------------------------------------------------------------
 * A set of interned strings: index <-> string, found by hash.
 * ------------------------------------------------------------------------ */

typedef struct {
    buf text;          /* the strings, each NUL-terminated */
    size_t *off;       /* [n] where string i starts in text */
    size_t n, cap;
    uint32_t *slots;   /* open addressing, index + 1; 0 is empty */
    size_t n_slots;    /* a power of two, at least twice n */
} import_strset;

static const char *import_str(const import_strset *s, uint32_t i) { return s->text.p + s->off[i]; }

static void import_strset_free(import_strset *s) {
    buf_free(&s->text);
    free(s->off);
    free(s->slots);
}

static size_t import_slot(const import_strset *s, const char *str, size_t len) {
    size_t mask = s->n_slots - 1, i = (size_t)util_hash_bytes(str, len) & mask;
    for (;; i = (i + 1) & mask) {
        uint32_t v = s->slots[i];
        if (!v) return i;
        const char *t = import_str(s, v - 1);
        if (memcmp(t, str, len) == 0 && t[len] == '\0') return i;
    }
}

static int import_grow_slots(import_strset *s) {
    size_t n_slots = s->n_slots ? 2 * s->n_slots : 1024;
    uint32_t *slots = calloc(n_slots, sizeof *slots), *old = s->slots;
    if (!slots) return -1;
    s->slots = slots;
    s->n_slots = n_slots;
    for (uint32_t i = 0; i < s->n; i++) {
        const char *t = import_str(s, i);
        s->slots[import_slot(s, t, strlen(t))] = i + 1;
    }
    free(old);
    return 0;
}

/* Index of str in s, or -1 when it is not there. */
static int64_t import_find(const import_strset *s, const char *str, size_t len) {
    if (!s->n_slots) return -1;
    uint32_t v = s->slots[import_slot(s, str, len)];
    return v ? (int64_t)v - 1 : -1;
}

/* Adds str unless present. Returns its index (*added says whether it is
 * new), or -1 when memory runs out. */
static int64_t import_intern(import_strset *s, const char *str, size_t len, int *added) {
    *added = 0;
    if (2 * (s->n + 1) > s->n_slots && import_grow_slots(s) < 0) return -1;
    size_t slot = import_slot(s, str, len);
    if (s->slots[slot]) return s->slots[slot] - 1;
    if (s->n == UINT32_MAX - 1) return -1;
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 1024;
        size_t *off = realloc(s->off, cap * sizeof *off);
        if (!off) return -1;
        s->off = off;
        s->cap = cap;
    }
    size_t at = s->text.len;
    if (buf_append(&s->text, str, len) < 0 || buf_put_u8(&s->text, 0) < 0) return -1;
    s->off[s->n] = at;
    s->slots[slot] = (uint32_t)++s->n;
    *added = 1;
    return s->n - 1;
}

/* ------------------------------------------------------------------------
 * The dataset.
 * ------------------------------------------------------------------------ */

struct import_data {
    import_strset users, items, attrs;
    size_t *user_first;       /* [users.n + 1]: user u's events are [first[u], first[u+1]) */
    size_t cap_user_first;
    uint32_t *events;         /* item indexes, user after user */
    size_t n_events, cap_events;
    uint32_t *attr_first;     /* [items.n] start of the item's slice of item_attrs */
    uint32_t *attr_n;         /* [items.n] its length */
    uint32_t *item_attrs;     /* attribute indexes */
    size_t n_item_attrs, cap_item_attrs;
    size_t unknown_items;     /* attribute entries for items not in the sequences */
    item_attribute *view_attrs; /* the attributes import_item() lends out */
    char event_id[IMPORT_MAX_ID + 24];
};

import_data *import_data_new(void) {
    import_data *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    /* user_first[0] = 0 exists from the start, so user u always has [u + 1]. */
    if (!(d->user_first = calloc(1, sizeof *d->user_first))) {
        free(d);
        return NULL;
    }
    d->cap_user_first = 1;
    return d;
}

void import_data_free(import_data *d) {
    if (!d) return;
    import_strset_free(&d->users);
    import_strset_free(&d->items);
    import_strset_free(&d->attrs);
    free(d->user_first);
    free(d->events);
    free(d->attr_first);
    free(d->attr_n);
    free(d->item_attrs);
    free(d->view_attrs);
    free(d);
}

/* Grows *p (of elements of size sz) to hold at least need; 0 or -1. */
static int import_reserve(void **p, size_t *cap, size_t need, size_t sz) {
    if (need <= *cap) return 0;
    size_t cap2 = *cap ? *cap : 1024;
    while (cap2 < need) cap2 *= 2;
    void *q = realloc(*p, cap2 * sz);
    if (!q) return -1;
    *p = q;
    *cap = cap2;
    return 0;
}

/* Checks one id token; returns NULL when it is fine, or the reason. */
static const char *import_bad_id(const char *s, size_t len) {
    if (len > IMPORT_MAX_ID) return "id longer than 200 bytes";
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) return "control character in an id";
    return NULL;
}

static int import_is_space(char ch) {
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n' || ch == '\v' || ch == '\f';
}

/* Reads `user item item ...` lines from in (name is what errors call it) and
 * appends them to d. Blank lines are skipped; a line with a user and no
 * items, an id with a control character or longer than 200 bytes, and a user
 * listed twice are errors. Stops after limit_users users (0: no limit).
 * Returns 0, or -1 with "name:line: reason" in errstr, after which d is only
 * fit for import_data_free(). */
int import_read_sequences(import_data *d, FILE *in, const char *name, size_t limit_users,
                          char *errstr, size_t errlen) {
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t len;
    int rc = -1;
    const char *why = "out of memory";
    while ((!limit_users || d->users.n < limit_users) && (len = getline(&line, &cap, in)) >= 0) {
        lineno++;
        size_t ntok = 0;
        for (ssize_t i = 0; i < len;) {
            while (i < len && import_is_space(line[i])) i++;
            ssize_t start = i;
            while (i < len && !import_is_space(line[i])) i++;
            if (i == start) break;
            size_t tl = (size_t)(i - start);
            int added;
            if ((why = import_bad_id(line + start, tl))) goto err;
            why = "out of memory";
            if (ntok++ == 0) {
                if (import_intern(&d->users, line + start, tl, &added) < 0) goto err;
                if (!added) {
                    why = "user listed twice";
                    goto err;
                }
                continue;
            }
            int64_t item = import_intern(&d->items, line + start, tl, &added);
            if (item < 0 || import_reserve((void **)&d->events, &d->cap_events, d->n_events + 1,
                                           sizeof *d->events) < 0)
                goto err;
            d->events[d->n_events++] = (uint32_t)item;
        }
        if (ntok == 0) continue;
        if (ntok == 1) {
            why = "a user with no items";
            goto err;
        }
        if (import_reserve((void **)&d->user_first, &d->cap_user_first, d->users.n + 1,
                           sizeof *d->user_first) < 0)
            goto err;
        d->user_first[d->users.n] = d->n_events;
    }
    if (ferror(in)) {
        why = strerror(errno);
        goto err;
    }
    rc = 0;
err:
    if (rc) util_err(errstr, errlen, "%s:%zu: %s", name, lineno, why);
    free(line);
    return rc;
}

/* Reads the item -> attribute ids object at path into d, for the items the
 * sequences named (entries for other items are counted and skipped; call
 * import_read_sequences() first). Attribute ids may be integers or strings;
 * each becomes "a<id>", duplicates within an item dropped, order kept.
 * Returns 0, or -1 with errstr naming the file and the item or JSON position,
 * after which d is only fit for import_data_free(). */
int import_read_attributes(import_data *d, const char *path, char *errstr, size_t errlen) {
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return util_err(errstr, errlen, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
    int rc = -1;
    size_t n_items = d->items.n, most = 0;
    const char *key;
    json_t *list;
    if (!json_is_object(root)) {
        util_err(errstr, errlen, "%s: expected an object of item id -> [attribute id, ...]", path);
        goto err;
    }
    free(d->attr_first);
    free(d->attr_n);
    d->attr_first = calloc(n_items + 1, sizeof *d->attr_first);
    d->attr_n = calloc(n_items + 1, sizeof *d->attr_n);
    if (!d->attr_first || !d->attr_n) goto oom;
    json_object_foreach(root, key, list) {
        if (!json_is_array(list)) {
            util_err(errstr, errlen, "%s: item %s: expected an array of attribute ids", path, key);
            goto err;
        }
        int64_t item = import_find(&d->items, key, strlen(key));
        if (item < 0) {
            d->unknown_items++;
            continue;
        }
        size_t first = d->n_item_attrs, i;
        json_t *a;
        json_array_foreach(list, i, a) {
            char id[IMPORT_MAX_ID + 2];
            if (json_is_integer(a)) {
                snprintf(id, sizeof id, "a%" JSON_INTEGER_FORMAT, json_integer_value(a));
            } else if (json_is_string(a) && json_string_length(a) > 0 &&
                       !import_bad_id(json_string_value(a), json_string_length(a))) {
                snprintf(id, sizeof id, "a%s", json_string_value(a));
            } else {
                util_err(errstr, errlen, "%s: item %s: attribute %zu is not an integer or an id",
                         path, key, i);
                goto err;
            }
            int added;
            int64_t attr = import_intern(&d->attrs, id, strlen(id), &added);
            if (attr < 0) goto oom;
            size_t j = first;
            while (j < d->n_item_attrs && d->item_attrs[j] != (uint32_t)attr) j++;
            if (j < d->n_item_attrs) continue;
            if (import_reserve((void **)&d->item_attrs, &d->cap_item_attrs, d->n_item_attrs + 1,
                               sizeof *d->item_attrs) < 0)
                goto oom;
            d->item_attrs[d->n_item_attrs++] = (uint32_t)attr;
        }
        d->attr_first[item] = (uint32_t)first;
        d->attr_n[item] = (uint32_t)(d->n_item_attrs - first);
        if (d->n_item_attrs - first > most) most = d->n_item_attrs - first;
    }
    free(d->view_attrs);
    if (!(d->view_attrs = calloc(most + 1, sizeof *d->view_attrs))) goto oom;
    rc = 0;
err:
    json_decref(root);
    return rc;
oom:
    util_err(errstr, errlen, "%s: out of memory", path);
    goto err;
}

void import_counts(const import_data *d, size_t *users, size_t *items, size_t *events) {
    *users = d->users.n;
    *items = d->items.n;
    *events = d->n_events;
}

size_t import_user_len(const import_data *d, size_t user) {
    return d->user_first[user + 1] - d->user_first[user];
}

/* Fills out with item i as a catalog record. Its strings and attributes are
 * borrowed from d and valid until the next call: do not catalog_item_clear()
 * it. The string fields are not const only because decoded records own
 * theirs. */
void import_item(import_data *d, size_t i, int64_t updated_ms, catalog_item *out) {
    memset(out, 0, sizeof *out);
    out->item_id = (char *)import_str(&d->items, (uint32_t)i);
    if (d->attr_n) {
        out->n_attrs = d->attr_n[i];
        out->attrs = d->view_attrs;
        for (size_t j = 0; j < out->n_attrs; j++)
            d->view_attrs[j] = (item_attribute){
                (char *)import_str(&d->attrs, d->item_attrs[d->attr_first[i] + j]), NULL, 0};
    }
    out->available = 1;
    out->updated_ms = updated_ms;
}

/* Fills out with the pos-th (from 0) interaction of user u, borrowed like
 * import_item()'s. */
void import_event(import_data *d, size_t user, size_t pos, event_type type, int64_t start_ms,
                  int64_t spacing_ms, click_event *out) {
    memset(out, 0, sizeof *out);
    out->user_id = (char *)import_str(&d->users, (uint32_t)user);
    snprintf(d->event_id, sizeof d->event_id, "%s:%zu", out->user_id, pos);
    out->event_id = d->event_id;
    out->ts_ms = start_ms + (int64_t)pos * spacing_ms;
    out->type = type;
    out->item_id = (char *)import_str(&d->items, d->events[d->user_first[user] + pos]);
}

/* ------------------------------------------------------------------------
 * The command.
 * ------------------------------------------------------------------------ */

static void import_usage(void) {
    fputs("usage: copystream import [-c CONF] --sequences FILE [--attributes FILE]\n"
          "                         [--event-type TYPE] [--start-ms T] [--spacing-s S]\n"
          "                         [--limit-users N] [--quiet]\n"
          "  -c, --config FILE    config file (default $COPYSTREAM_CONFIG or config/copystream.conf)\n"
          "  --sequences FILE     one user per line: `user item item ...`, oldest first\n"
          "  --attributes FILE    JSON object {\"item\": [attribute id, ...]}\n"
          "  --event-type TYPE    view, click, add_to_cart, purchase (default) or favorite\n"
          "  --start-ms T         time of every user's first event, epoch ms\n"
          "                       (default 1704067200000, 2024-01-01T00:00:00Z)\n"
          "  --spacing-s S        seconds between a user's events (default 86400)\n"
          "  --limit-users N      import only the first N users\n"
          "  --quiet              no progress on stderr\n",
          stdout);
}

typedef struct {
    const char *config_path, *sequences, *attributes;
    event_type type;
    int64_t start_ms, spacing_s, limit_users;
    int quiet;
} import_opts;

/* Returns 0; 1 after printing the help; 2 after printing what is wrong. */
static int import_parse(int argc, char **argv, import_opts *o) {
    enum { OPT_SEQ = 256, OPT_ATTR, OPT_TYPE, OPT_START, OPT_SPACING, OPT_LIMIT, OPT_QUIET };
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"sequences", required_argument, NULL, OPT_SEQ},
        {"attributes", required_argument, NULL, OPT_ATTR},
        {"event-type", required_argument, NULL, OPT_TYPE},
        {"start-ms", required_argument, NULL, OPT_START},
        {"spacing-s", required_argument, NULL, OPT_SPACING},
        {"limit-users", required_argument, NULL, OPT_LIMIT},
        {"quiet", no_argument, NULL, OPT_QUIET},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    *o = (import_opts){.type = EV_PURCHASE, .start_ms = IMPORT_START_MS,
                       .spacing_s = IMPORT_SPACING_S};
    const char *bad = NULL, *why = NULL;
    int opt, t;
    optind = 1;
    while (!bad && (opt = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c': o->config_path = optarg; break;
        case 'h': import_usage(); return 1;
        case OPT_SEQ: o->sequences = optarg; break;
        case OPT_ATTR: o->attributes = optarg; break;
        case OPT_QUIET: o->quiet = 1; break;
        case OPT_TYPE:
            if ((t = commands_event_type(optarg)) < 0) bad = "--event-type";
            o->type = (event_type)t;
            break;
        case OPT_START:
            if (commands_int(optarg, 0, INT64_MAX / 4, &o->start_ms) < 0) bad = "--start-ms";
            break;
        case OPT_SPACING:
            if (commands_int(optarg, 0, 31622400, &o->spacing_s) < 0) bad = "--spacing-s";
            break;
        case OPT_LIMIT:
            if (commands_int(optarg, 1, INT64_MAX, &o->limit_users) < 0) bad = "--limit-users";
            break;
        default: fprintf(stderr, "see copystream import --help\n"); return 2;
        }
    }
    if (bad)
        fprintf(stderr, "copystream import: bad value for %s: %s\n", bad, optarg);
    else if (optind < argc)
        why = "unexpected argument";
    else if (!o->sequences)
        why = "--sequences is required";
    if (why) fprintf(stderr, "copystream import: %s\n", why);
    if (bad || why) {
        fprintf(stderr, "see copystream import --help\n");
        return 2;
    }
    return 0;
}

static int import_load(const import_opts *o, import_data *d, char *errstr, size_t errlen) {
    FILE *f = fopen(o->sequences, "r");
    if (!f) return util_err(errstr, errlen, "%s: cannot open: %s", o->sequences, strerror(errno));
    int rc = import_read_sequences(d, f, o->sequences, (size_t)o->limit_users, errstr, errlen);
    fclose(f);
    if (rc < 0 || !o->attributes) return rc;
    if (import_read_attributes(d, o->attributes, errstr, errlen) < 0) return -1;
    if (d->unknown_items)
        log_warn("import", "%s: skipped %zu items with no imported interactions", o->attributes,
                 d->unknown_items);
    return 0;
}

int import_main(int argc, char **argv) {
    import_opts o;
    int rc = import_parse(argc, argv, &o);
    if (rc) return rc == 1 ? 0 : rc;

    config *cfg = commands_load_config(o.config_path ? o.config_path : commands_default_config());
    if (!cfg) return 2;
    char err[512];

    rc = 1;
    publisher *p = NULL;
    int64_t t0 = util_monotonic_us(), last = t0;
    import_data *d = import_data_new();
    if (!d) {
        util_err(err, sizeof err, "out of memory");
        goto err;
    }
    if (import_load(&o, d, err, sizeof err) < 0) goto err;
    size_t users, items, events;
    import_counts(d, &users, &items, &events);
    if (!o.quiet)
        log_info("import", "read %zu users, %zu items, %zu interactions", users, items, events);
    if (!(p = publish_new(cfg, err, sizeof err))) goto err;

    catalog_item it;
    for (size_t i = 0; i < items; i++) {
        import_item(d, i, o.start_ms, &it);
        if (publish_catalog(p, &it, err, sizeof err) < 0) goto err;
    }
    click_event ev;
    size_t sent = 0;
    for (size_t u = 0; u < users; u++) {
        for (size_t pos = 0, n = import_user_len(d, u); pos < n; pos++) {
            import_event(d, u, pos, o.type, o.start_ms, o.spacing_s * 1000, &ev);
            if (publish_click(p, &ev, err, sizeof err) < 0) goto err;
        }
        sent += import_user_len(d, u);
        int64_t now = util_monotonic_us();
        if (!o.quiet && now - last >= IMPORT_PROGRESS_US) {
            last = now;
            log_info("import", "%zu of %zu events", sent, events);
        }
    }
    if (publish_flush(p, (int)config_int(cfg, "shutdown.timeout_s") * 1000, err, sizeof err) < 0)
        goto err;

    double elapsed = (util_monotonic_us() - t0) / 1e6;
    printf("import: %zu users, %zu items, %zu %s events, %.3f s, %.0f events/s\n", users, items,
           events, event_type_name(o.type), elapsed, elapsed > 0 ? events / elapsed : 0.0);
    fflush(stdout);
    rc = 0;
err:
    if (rc) log_error("import", "%s", err);
    publish_free(p);
    import_data_free(d);
    config_free(cfg);
    return rc;
}
