/* mkmodel.c -- writes a model file of random weights for the integration
 * tests, until `copystream train` makes real ones: the items and attributes
 * come from a JSON file ({"item id": ["attribute id", ...], ...}) or from
 * the synthetic sample catalog that `copystream loadgen --catalog` publishes.
 *
 *   mkmodel OUT (--items FILE | --sample-catalog) [--seed N] [--dim D]
 *           [--layers L] [--heads H] [--window W]
 */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dict.h"
#include "model.h"
#include "synth.h"

typedef struct {
    const char **items, **attrs;
    size_t n_items, n_attrs, cap_attrs;
    uint32_t *off, *rows;
    size_t n_rows, cap_rows;
    dict *attr_index;         /* attribute id -> row + 1 */
} tables;

static void add_attr(tables *t, const char *id) {
    uintptr_t row = (uintptr_t)dict_get(t->attr_index, id);
    if (!row) {
        if (t->n_attrs == t->cap_attrs) {
            t->cap_attrs = t->cap_attrs ? 2 * t->cap_attrs : 64;
            t->attrs = realloc(t->attrs, t->cap_attrs * sizeof *t->attrs);
        }
        t->attrs[t->n_attrs] = id;
        row = ++t->n_attrs;
        dict_set(t->attr_index, id, (void *)row);
    }
    if (t->n_rows == t->cap_rows) {
        t->cap_rows = t->cap_rows ? 2 * t->cap_rows : 256;
        t->rows = realloc(t->rows, t->cap_rows * sizeof *t->rows);
    }
    t->rows[t->n_rows++] = (uint32_t)(row - 1);
}

int main(int argc, char **argv) {
    static const struct option opts[] = {
        {"items", required_argument, 0, 'i'},  {"sample-catalog", no_argument, 0, 'c'},
        {"seed", required_argument, 0, 's'},   {"dim", required_argument, 0, 'd'},
        {"layers", required_argument, 0, 'l'}, {"heads", required_argument, 0, 'h'},
        {"window", required_argument, 0, 'w'}, {0, 0, 0, 0}};
    const char *items_path = NULL;
    int sample = 0;
    uint64_t seed = 1;
    model_config c = {.dim = 16, .n_layers = 2, .n_heads = 2, .window = 32, .n_types = EV__COUNT};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'i': items_path = optarg; break;
        case 'c': sample = 1; break;
        case 's': seed = strtoull(optarg, NULL, 10); break;
        case 'd': c.dim = atoi(optarg); break;
        case 'l': c.n_layers = atoi(optarg); break;
        case 'h': c.n_heads = atoi(optarg); break;
        case 'w': c.window = atoi(optarg); break;
        default: return 2;
        }
    }
    if (optind + 1 != argc || (!items_path == !sample)) {
        fprintf(stderr, "usage: mkmodel OUT (--items FILE | --sample-catalog) [--seed N] "
                        "[--dim D] [--layers L] [--heads H] [--window W]\n");
        return 2;
    }
    c.hidden = 4 * c.dim;
    tables t = {0};
    t.attr_index = dict_new();
    json_t *root = NULL;
    synth *sy = NULL;
    char err[512];
    if (items_path) {
        json_error_t je;
        if (!(root = json_load_file(items_path, 0, &je)) || !json_is_object(root)) {
            fprintf(stderr, "mkmodel: %s: %s\n", items_path, je.text);
            return 1;
        }
        t.n_items = json_object_size(root);
        t.items = calloc(t.n_items, sizeof *t.items);
        t.off = calloc(t.n_items + 1, sizeof *t.off);
        const char *key;
        json_t *val;
        size_t i = 0;
        json_object_foreach(root, key, val) {
            t.items[i] = key;
            t.off[i] = (uint32_t)t.n_rows;
            size_t k;
            json_t *a;
            json_array_foreach(val, k, a) add_attr(&t, json_string_value(a));
            i++;
        }
        t.off[i] = (uint32_t)t.n_rows;
    } else {
        if (!(sy = synth_new(1, 1, 0, err, sizeof err))) {
            fprintf(stderr, "mkmodel: %s\n", err);
            return 1;
        }
        const catalog_item *cat = synth_catalog(sy);
        t.n_items = synth_catalog_len(sy);
        t.items = calloc(t.n_items, sizeof *t.items);
        t.off = calloc(t.n_items + 1, sizeof *t.off);
        for (size_t i = 0; i < t.n_items; i++) {
            t.items[i] = cat[i].item_id;
            t.off[i] = (uint32_t)t.n_rows;
            for (size_t k = 0; k < cat[i].n_attrs; k++) add_attr(&t, cat[i].attrs[k].id);
        }
        t.off[t.n_items] = (uint32_t)t.n_rows;
    }
    c.n_items = (int)t.n_items;
    c.n_attrs = (int)t.n_attrs;
    model_weights w;
    size_t n = model_weights_point(&w, &c, NULL);
    float *weights = malloc(n * sizeof *weights);
    model_fill_random(&c, seed, weights);
    model_tables mt = {t.items, t.attrs, t.off, t.rows, 0};
    int rc = model_write(argv[optind], &c, weights, &mt, err, sizeof err) == 0 ? 0 : 1;
    if (rc) fprintf(stderr, "mkmodel: %s\n", err);
    free(weights);
    free(t.items);
    free(t.attrs);
    free(t.off);
    free(t.rows);
    dict_free(t.attr_index);
    json_decref(root);
    synth_free(sy);
    return rc;
}
