/* dataset.c -- interaction histories for training and evaluation; see
 * dataset.h.
 *
 * The builder interns ids in arrival order (one dict per kind of id, the
 * record owning its key) and keeps each user's events as item numbers in
 * that order; finishing sorts each kind of id and renumbers everything, so
 * that the result depends on the histories alone, not on the order they
 * arrived in. */
#include "dataset.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "commands.h"
#include "config.h"
#include "dict.h"
#include "import.h"
#include "kafka.h"
#include "log.h"
#include "util.h"

typedef struct {
    char *id;
    uint32_t num;         /* arrival number */
} ds_name;

typedef struct {
    ds_name name;
    uint32_t *events;     /* (n) item arrival number << 8 | type */
    size_t n, cap;
} ds_user;

typedef struct {
    ds_name name;
    uint32_t *attrs;      /* (n_attrs) attribute arrival numbers */
    size_t n_attrs;
    int used;             /* some event mentions it */
} ds_item;

typedef struct {
    ds_name name;
    int used;             /* a used item has it */
} ds_attr;

/* The records of one kind of id, by arrival number, and their index. */
typedef struct {
    dict *index;
    void **recs;
    size_t n, cap;
    size_t rec_size;
} ds_names;

struct dataset_builder {
    ds_names users, items, attrs;
    uint64_t n_events;
};

static int ds_names_init(ds_names *t, size_t rec_size) {
    memset(t, 0, sizeof *t);
    t->rec_size = rec_size;
    return (t->index = dict_new()) ? 0 : -1;
}

/* Frees the records and their ids; what they point to besides is the caller's. */
static void ds_names_free(ds_names *t) {
    for (size_t i = 0; i < t->n; i++) {
        free(((ds_name *)t->recs[i])->id);
        free(t->recs[i]);
    }
    free(t->recs);
    dict_free(t->index);
}

/* The record of id, created zeroed when new. NULL when memory runs out. */
static void *ds_names_get(ds_names *t, const char *id) {
    ds_name *r = dict_get(t->index, id);
    if (r) return r;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        void **recs = realloc(t->recs, cap * sizeof *recs);
        if (!recs) return NULL;
        t->recs = recs;
        t->cap = cap;
    }
    if (!(r = calloc(1, t->rec_size))) return NULL;
    if (!(r->id = util_strdup(id)) || dict_set(t->index, r->id, r) < 0) {
        free(r->id);
        free(r);
        return NULL;
    }
    r->num = (uint32_t)t->n;
    t->recs[t->n++] = r;
    return r;
}

dataset_builder *dataset_builder_new(void) {
    dataset_builder *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    if (ds_names_init(&b->users, sizeof(ds_user)) < 0 ||
        ds_names_init(&b->items, sizeof(ds_item)) < 0 ||
        ds_names_init(&b->attrs, sizeof(ds_attr)) < 0) {
        dataset_builder_free(b);
        return NULL;
    }
    return b;
}

void dataset_builder_free(dataset_builder *b) {
    if (!b) return;
    for (size_t i = 0; i < b->users.n; i++) free(((ds_user *)b->users.recs[i])->events);
    for (size_t i = 0; i < b->items.n; i++) free(((ds_item *)b->items.recs[i])->attrs);
    ds_names_free(&b->users);
    ds_names_free(&b->items);
    ds_names_free(&b->attrs);
    free(b);
}

int dataset_builder_event(dataset_builder *b, const char *user_id, const char *item_id,
                          event_type type) {
    ds_user *u = ds_names_get(&b->users, user_id);
    ds_item *it = u ? ds_names_get(&b->items, item_id) : NULL;
    if (!it || it->name.num >= (1u << 24)) return -1;
    if (u->n == u->cap) {
        size_t cap = u->cap ? u->cap * 2 : 8;
        uint32_t *ev = realloc(u->events, cap * sizeof *ev);
        if (!ev) return -1;
        u->events = ev;
        u->cap = cap;
    }
    u->events[u->n++] = it->name.num << 8 | (uint32_t)type;
    it->used = 1;
    b->n_events++;
    return 0;
}

int dataset_builder_attrs(dataset_builder *b, const char *item_id, const char *const *attr_ids,
                          size_t n) {
    ds_item *it = ds_names_get(&b->items, item_id);
    if (!it) return -1;
    uint32_t *attrs = n ? malloc(n * sizeof *attrs) : NULL;
    if (n && !attrs) return -1;
    for (size_t i = 0; i < n; i++) {
        ds_name *a = ds_names_get(&b->attrs, attr_ids[i]);
        if (!a) {
            free(attrs);
            return -1;
        }
        attrs[i] = a->num;
    }
    free(it->attrs);
    it->attrs = attrs;
    it->n_attrs = n;
    return 0;
}

/* Shorter ids first, then bytewise: numeric ids sort as numbers. */
static int ds_id_cmp(const void *a, const void *b) {
    const char *x = (*(ds_name *const *)a)->id, *y = (*(ds_name *const *)b)->id;
    size_t lx = strlen(x), ly = strlen(y);
    return lx != ly ? (lx < ly ? -1 : 1) : strcmp(x, y);
}

/* Sorts the records of t that keep(rec) accepts (all when keep is NULL) by
 * id into sorted[n_out], moving their ids into ids[n_out], and fills
 * row[arrival number] with each record's place (-1 for those left out).
 * Returns 0 or -1 when memory runs out. */
static int ds_names_sort(ds_names *t, int (*keep)(const void *), char ***ids, int32_t **row,
                         int32_t *n_out) {
    ds_name **sorted = malloc((t->n ? t->n : 1) * sizeof *sorted);
    *row = malloc((t->n ? t->n : 1) * sizeof **row);
    *ids = NULL;
    if (!sorted || !*row) goto err;
    size_t n = 0;
    for (size_t i = 0; i < t->n; i++) {
        (*row)[i] = -1;
        if (!keep || keep(t->recs[i])) sorted[n++] = t->recs[i];
    }
    qsort(sorted, n, sizeof *sorted, ds_id_cmp);
    if (!(*ids = malloc((n ? n : 1) * sizeof **ids))) goto err;
    for (size_t i = 0; i < n; i++) {
        (*row)[sorted[i]->num] = (int32_t)i;
        (*ids)[i] = sorted[i]->id;
        sorted[i]->id = NULL; /* moved */
    }
    *n_out = (int32_t)n;
    free(sorted);
    return 0;
err:
    free(sorted);
    free(*row);
    *row = NULL;
    return -1;
}

static int ds_item_used(const void *rec) { return ((const ds_item *)rec)->used; }
static int ds_attr_used(const void *rec) { return ((const ds_attr *)rec)->used; }

dataset *dataset_builder_finish(dataset_builder *b, char *errstr, size_t errlen) {
    dataset *d = calloc(1, sizeof *d);
    int32_t *user_row = NULL, *item_row = NULL, *attr_row = NULL;
    if (!d) goto oom;
    if (!b->n_events) {
        util_err(errstr, errlen, "no events to learn from");
        goto err;
    }
    /* Users in arrival order by their sorted place, to fill the events */
    if (ds_names_sort(&b->users, NULL, &d->user_ids, &user_row, &d->n_users) < 0 ||
        ds_names_sort(&b->items, ds_item_used, &d->item_ids, &item_row, &d->n_items) < 0)
        goto oom;
    /* Only the attributes of used items */
    for (size_t i = 0; i < b->items.n; i++) {
        ds_item *it = b->items.recs[i];
        for (size_t j = 0; it->used && j < it->n_attrs; j++)
            ((ds_attr *)b->attrs.recs[it->attrs[j]])->used = 1;
    }
    if (ds_names_sort(&b->attrs, ds_attr_used, &d->attr_ids, &attr_row, &d->n_attrs) < 0)
        goto oom;

    d->n_events = b->n_events;
    d->user_off = malloc(((size_t)d->n_users + 1) * sizeof *d->user_off);
    d->ev_item = malloc(b->n_events * sizeof *d->ev_item);
    d->ev_type = malloc(b->n_events);
    d->item_attr_off = malloc(((size_t)d->n_items + 1) * sizeof *d->item_attr_off);
    if (!d->user_off || !d->ev_item || !d->ev_type || !d->item_attr_off) goto oom;
    ds_user **by_row = malloc(((size_t)d->n_users ? (size_t)d->n_users : 1) * sizeof *by_row);
    if (!by_row) goto oom;
    for (size_t i = 0; i < b->users.n; i++) by_row[user_row[i]] = b->users.recs[i];
    uint64_t at = 0;
    for (int32_t u = 0; u < d->n_users; u++) {
        d->user_off[u] = at;
        for (size_t e = 0; e < by_row[u]->n; e++, at++) {
            d->ev_item[at] = item_row[by_row[u]->events[e] >> 8];
            d->ev_type[at] = (uint8_t)(by_row[u]->events[e] & 0xff);
        }
    }
    d->user_off[d->n_users] = at;
    free(by_row);

    ds_item **items = malloc(((size_t)d->n_items ? (size_t)d->n_items : 1) * sizeof *items);
    if (!items) goto oom;
    size_t total = 0;
    for (size_t i = 0; i < b->items.n; i++) {
        ds_item *it = b->items.recs[i];
        if (item_row[i] >= 0) {
            items[item_row[i]] = it;
            total += it->n_attrs;
        }
    }
    d->item_attr_rows = malloc((total ? total : 1) * sizeof *d->item_attr_rows);
    if (!d->item_attr_rows) {
        free(items);
        goto oom;
    }
    uint32_t off = 0;
    for (int32_t i = 0; i < d->n_items; i++) {
        d->item_attr_off[i] = off;
        uint32_t *rows = d->item_attr_rows + off;
        for (size_t j = 0; j < items[i]->n_attrs; j++) rows[j] = (uint32_t)attr_row[items[i]->attrs[j]];
        /* sorted and distinct, so that equal attribute sets are equal bytes */
        size_t n = items[i]->n_attrs;
        for (size_t j = 1; j < n; j++)
            for (size_t k = j; k > 0 && rows[k - 1] > rows[k]; k--) {
                uint32_t t = rows[k];
                rows[k] = rows[k - 1];
                rows[k - 1] = t;
            }
        size_t w = 0;
        for (size_t j = 0; j < n; j++)
            if (!w || rows[w - 1] != rows[j]) rows[w++] = rows[j];
        off += (uint32_t)w;
    }
    d->item_attr_off[d->n_items] = off;
    free(items);
    free(user_row);
    free(item_row);
    free(attr_row);
    dataset_builder_free(b);
    return d;
oom:
    util_err(errstr, errlen, "out of memory building the dataset");
err:
    free(user_row);
    free(item_row);
    free(attr_row);
    dataset_free(d);
    dataset_builder_free(b);
    return NULL;
}

static void ds_free_ids(char **ids, int32_t n) {
    if (!ids) return;
    for (int32_t i = 0; i < n; i++) free(ids[i]);
    free(ids);
}

void dataset_free(dataset *d) {
    if (!d) return;
    ds_free_ids(d->user_ids, d->n_users);
    ds_free_ids(d->item_ids, d->n_items);
    ds_free_ids(d->attr_ids, d->n_attrs);
    free(d->user_off);
    free(d->ev_item);
    free(d->ev_type);
    free(d->item_attr_off);
    free(d->item_attr_rows);
    free(d);
}

dataset *dataset_read_files(const char *sequences_path, const char *attributes_path,
                            event_type type, char *errstr, size_t errlen) {
    import_data *in = import_data_new();
    dataset_builder *b = dataset_builder_new();
    FILE *f = NULL;
    const char **attr_ids = NULL;
    if (!in || !b) {
        util_err(errstr, errlen, "out of memory");
        goto err;
    }
    if (!(f = fopen(sequences_path, "r"))) {
        util_err(errstr, errlen, "%s: cannot open: %s", sequences_path, strerror(errno));
        goto err;
    }
    if (import_read_sequences(in, f, sequences_path, 0, errstr, errlen) < 0 ||
        (attributes_path && import_read_attributes(in, attributes_path, errstr, errlen) < 0))
        goto err;
    size_t n_users, n_items, n_events;
    import_counts(in, &n_users, &n_items, &n_events);
    for (size_t u = 0; u < n_users; u++)
        for (size_t p = 0; p < import_user_len(in, u); p++) {
            click_event ev;
            import_event(in, u, p, type, 0, 0, &ev);
            if (dataset_builder_event(b, ev.user_id, ev.item_id, type) < 0) goto oom;
        }
    for (size_t i = 0; attributes_path && i < n_items; i++) {
        catalog_item it;
        import_item(in, i, 0, &it);
        const char **ids = realloc(attr_ids, (it.n_attrs ? it.n_attrs : 1) * sizeof *ids);
        if (!ids) goto oom;
        attr_ids = ids;
        for (size_t j = 0; j < it.n_attrs; j++) attr_ids[j] = it.attrs[j].id;
        if (dataset_builder_attrs(b, it.item_id, attr_ids, it.n_attrs) < 0) goto oom;
    }
    fclose(f);
    free(attr_ids);
    import_data_free(in);
    return dataset_builder_finish(b, errstr, errlen);
oom:
    util_err(errstr, errlen, "out of memory reading %s", sequences_path);
err:
    if (f) fclose(f);
    free(attr_ids);
    import_data_free(in);
    dataset_builder_free(b);
    return NULL;
}

/* ---------------------------------------------------------------------------
 * from the topics */

/* Reads partition range [lo[p], hi[p]) of every partition of topic, calling
 * fn with each message. Returns 0, or -1 with errstr. */
typedef int (*ds_message_fn)(void *ctx, const rd_kafka_message_t *m);

static int ds_read_ranges(rd_kafka_t *rk, const char *topic, int n_parts, const int64_t *lo,
                          const int64_t *hi, ds_message_fn fn, void *ctx, char *errstr,
                          size_t errlen) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n_parts);
    int open = 0;
    for (int p = 0; p < n_parts; p++)
        if (hi[p] > lo[p]) {
            rd_kafka_topic_partition_list_add(l, topic, p)->offset = lo[p];
            open++;
        }
    rd_kafka_resp_err_t e = rd_kafka_assign(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e) return util_err(errstr, errlen, "%s: cannot assign: %s", topic, rd_kafka_err2str(e));
    int rc = 0;
    int64_t idle_since = util_monotonic_us();
    while (open > 0 && rc == 0) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 500);
        if (!m) {
            if (util_monotonic_us() - idle_since > 60 * 1000000LL)
                rc = util_err(errstr, errlen, "%s: no message for 60 s before the end of the range",
                              topic);
            continue;
        }
        idle_since = util_monotonic_us();
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            /* records removed since (retention, compaction) end a range early */
            if (m->partition < n_parts && hi[m->partition] > m->offset) open--;
        } else if (m->err) {
            rc = util_err(errstr, errlen, "%s: %s", topic, rd_kafka_message_errstr(m));
        } else if (m->partition < n_parts && m->offset < hi[m->partition]) {
            rc = fn(ctx, m);
            if (m->offset + 1 == hi[m->partition]) open--;
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_assign(rk, NULL);
    return rc;
}

typedef struct {
    dataset_builder *b;
    codec *k;
    dict *seen;           /* event ids already taken: redeliveries count once */
    int64_t from_ms, to_ms;
    uint64_t events, skipped, duplicates, undecodable, items;
    const char **attr_ids;
    size_t cap_attrs;
    char *err;
    size_t errlen;
} ds_topic_ctx;

static int ds_take_click(void *ctx, const rd_kafka_message_t *m) {
    ds_topic_ctx *c = ctx;
    rd_kafka_timestamp_type_t tt;
    int64_t ts = rd_kafka_message_timestamp(m, &tt);
    if (ts < c->from_ms || ts >= c->to_ms) return 0;
    click_event ev = {0};
    char why[256];
    if (codec_decode_click(c->k, m->payload, m->len, &ev, why, sizeof why) != CODEC_OK) {
        c->undecodable++;
        click_event_clear(&ev);
        return 0;
    }
    int rc = 0;
    if (!ev.item_id || !ev.item_id[0]) {
        c->skipped++;
    } else if (dict_get(c->seen, ev.event_id)) {
        c->duplicates++;
    } else {
        char *id = util_strdup(ev.event_id);
        if (!id || dict_set(c->seen, id, id) < 0 ||
            dataset_builder_event(c->b, ev.user_id, ev.item_id, ev.type) < 0) {
            free(id);
            rc = util_err(c->err, c->errlen, "out of memory reading the clickstream");
        } else {
            c->events++;
        }
    }
    click_event_clear(&ev);
    return rc;
}

static int ds_take_item(void *ctx, const rd_kafka_message_t *m) {
    ds_topic_ctx *c = ctx;
    catalog_item it = {0};
    char why[256];
    if (!m->payload) return 0; /* a tombstone: the item is gone, its events stay */
    if (codec_decode_catalog(c->k, m->payload, m->len, &it, why, sizeof why) != CODEC_OK) {
        c->undecodable++;
        catalog_item_clear(&it);
        return 0;
    }
    int rc = 0;
    if (it.n_attrs > c->cap_attrs) {
        const char **ids = realloc(c->attr_ids, it.n_attrs * sizeof *ids);
        if (!ids) rc = -1;
        else c->attr_ids = ids, c->cap_attrs = it.n_attrs;
    }
    for (size_t j = 0; rc == 0 && j < it.n_attrs; j++) c->attr_ids[j] = it.attrs[j].id;
    if (rc == 0 && dataset_builder_attrs(c->b, it.item_id, c->attr_ids, it.n_attrs) < 0) rc = -1;
    if (rc < 0) util_err(c->err, c->errlen, "out of memory reading the catalog");
    c->items++;
    catalog_item_clear(&it);
    return rc;
}

dataset *dataset_read_topic(const config *cfg, const char *topic, int64_t from_ms, int64_t to_ms,
                            char *errstr, size_t errlen) {
    ds_topic_ctx c = {.from_ms = from_ms, .to_ms = to_ms, .err = errstr, .errlen = errlen};
    dataset *d = NULL;
    rd_kafka_t *rk = NULL;
    int64_t *lo = NULL, *hi = NULL, *end = NULL;
    const char *catalog = config_str(cfg, "topic.catalog");
    if (!(c.b = dataset_builder_new()) || !(c.seen = dict_new())) {
        util_err(errstr, errlen, "out of memory");
        goto err;
    }
    if (!(c.k = commands_codec_new(cfg, errstr, errlen)) ||
        !(rk = kafka_consumer_new(cfg, NULL, NULL, NULL, errstr, errlen)))
        goto err;
    for (int pass = 0; pass < 2; pass++) {
        const char *t = pass == 0 ? topic : catalog;
        int n = kafka_partition_count(rk, t, 30000, errstr, errlen);
        if (n < 0) goto err;
        free(lo);
        free(hi);
        free(end);
        lo = calloc((size_t)n, sizeof *lo);
        hi = calloc((size_t)n, sizeof *hi);
        end = calloc((size_t)n, sizeof *end);
        if (!lo || !hi || !end) {
            util_err(errstr, errlen, "out of memory");
            goto err;
        }
        /* the catalog whole (its latest value per item), the clickstream by
         * time, both only as far as they reached when we looked */
        if (kafka_watermarks(rk, t, n, lo, end, 30000, errstr, errlen) < 0) goto err;
        memcpy(hi, end, (size_t)n * sizeof *hi);
        if (pass == 0 &&
            (kafka_offsets_for_time(rk, t, n, from_ms, end, lo, 30000, errstr, errlen) < 0 ||
             (to_ms < INT64_MAX &&
              kafka_offsets_for_time(rk, t, n, to_ms, end, hi, 30000, errstr, errlen) < 0)))
            goto err;
        if (ds_read_ranges(rk, t, n, lo, hi, pass == 0 ? ds_take_click : ds_take_item, &c, errstr,
                           errlen) < 0)
            goto err;
    }
    log_info("train",
             "read %llu events from %s (%llu without an item, %llu redelivered, %llu "
             "undecodable) and %llu catalog records",
             (unsigned long long)c.events, topic, (unsigned long long)c.skipped,
             (unsigned long long)c.duplicates, (unsigned long long)c.undecodable,
             (unsigned long long)c.items);
    d = dataset_builder_finish(c.b, errstr, errlen);
    c.b = NULL;
err:
    if (rk) {
        rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);
    }
    if (c.seen) {
        size_t pos = 0;
        const char *key;
        void *val;
        while (dict_next(c.seen, &pos, &key, &val)) free(val);
        dict_free(c.seen);
    }
    codec_free(c.k);
    dataset_builder_free(c.b);
    free(c.attr_ids);
    free(lo);
    free(hi);
    free(end);
    return d;
}
