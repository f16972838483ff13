/* tail.c -- `copystream tail`: read the copy topic and show what marketing
 * systems receive.
 *
 * Reads every partition of the topic from the beginning (or from a time)
 * without joining a consumer group, so it never moves anybody's offsets.
 * Prints copies as readable blocks or as JSON lines, and with --summary one
 * final line with the number of copies per locale. Used by `make demo`, and
 * by people checking what the service produced. */
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "commands.h"
#include "config.h"
#include "kafka.h"
#include "log.h"
#include "util.h"

typedef struct {
    const char *locale;
    size_t shown, total;
} tail_locale;

static void tail_print_text(const personalized_copy *c) {
    printf("user %s  [%s]  %s/%s  strategy=%s  source=%s (event %s)\n", c->user_id, c->locale,
           c->intent, c->variant_id, c->strategy, c->copy_id, c->source_event_id);
    printf("  %s\n", c->text);
    for (size_t i = 0; i < c->n_items; i++)
        printf("  item %zu: %s  %s  score %.3f\n", i + 1, c->items[i].item_id,
               c->items[i].title ? c->items[i].title : "(no title)", c->items[i].score);
    for (size_t i = 0; i < c->n_reasons; i++)
        printf("  reason: %s%s%s (affinity %.2f)\n", c->reasons[i].code,
               c->reasons[i].text && c->reasons[i].text[0] ? ": " : "",
               c->reasons[i].text ? c->reasons[i].text : "", c->reasons[i].score);
    printf("\n");
}

static void tail_print_json(const personalized_copy *c) {
    json_t *items = json_array(), *reasons = json_array();
    for (size_t i = 0; i < c->n_items; i++)
        json_array_append_new(items, json_pack("{s:s, s:s?, s:f}", "item_id", c->items[i].item_id,
                                               "title", c->items[i].title, "score",
                                               c->items[i].score));
    for (size_t i = 0; i < c->n_reasons; i++)
        json_array_append_new(reasons,
                              json_pack("{s:s, s:s?, s:s, s:f}", "code", c->reasons[i].code,
                                        "attribute_id", c->reasons[i].attribute_id, "text",
                                        c->reasons[i].text ? c->reasons[i].text : "", "score",
                                        c->reasons[i].score));
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:i, s:I, s:s, s:s, s:o, s:o, s:s, s:s, s:s, "
                          "s:s, s:s?, s:I}",
                          "copy_id", c->copy_id, "user_id", c->user_id, "source_event_id",
                          c->source_event_id, "source_topic", c->source_topic,
                          "source_partition", (int)c->source_partition, "source_offset",
                          (json_int_t)c->source_offset, "locale", c->locale, "text", c->text,
                          "items", items, "reasons", reasons, "intent", c->intent,
                          "template_id", c->template_id, "variant_id", c->variant_id,
                          "strategy", c->strategy, "model_version", c->model_version,
                          "created_at", (json_int_t)c->created_ms);
    if (o) {
        char *s = json_dumps(o, JSON_COMPACT);
        if (s) printf("%s\n", s);
        free(s);
        json_decref(o);
    }
}

static void tail_usage(FILE *f) {
    fprintf(f,
            "usage: copystream tail [-c CONFIG] [--topic TOPIC] [--json] [--per-locale N]\n"
            "                       [--limit N] [--summary] [--follow]\n"
            "\n"
            "Prints the copies in the copy topic (topic.copy), from the beginning.\n"
            "  --json          one JSON object per line instead of readable blocks\n"
            "  --per-locale N  show at most N copies of each locale\n"
            "  --limit N       show at most N copies in all\n"
            "  --summary       end with one line: the number of copies per locale\n"
            "  --follow        keep waiting for new copies instead of stopping at the end\n");
}

int tail_main(int argc, char **argv) {
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"topic", required_argument, 0, 't'},
                                         {"json", no_argument, 0, 'j'},
                                         {"per-locale", required_argument, 0, 'p'},
                                         {"limit", required_argument, 0, 'l'},
                                         {"summary", no_argument, 0, 's'},
                                         {"follow", no_argument, 0, 'f'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *path = commands_default_config(), *topic = NULL;
    int json = 0, summary = 0, follow = 0;
    long per_locale = -1, limit = -1;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': path = optarg; break;
        case 't': topic = optarg; break;
        case 'j': json = 1; break;
        case 'p': per_locale = atol(optarg); break;
        case 'l': limit = atol(optarg); break;
        case 's': summary = 1; break;
        case 'f': follow = 1; break;
        case 'h': tail_usage(stdout); return 0;
        default: tail_usage(stderr); return 2;
        }
    }
    config *cfg = commands_load_config(path);
    if (!cfg) return 2;
    if (!topic) topic = config_str(cfg, "topic.copy");
    char err[1024];
    int rc = 1, n_parts = 0, eofs = 0;
    char *eof = NULL;
    tail_locale locales[16];
    size_t n_locales = 0, shown = 0, total = 0, bad = 0;
    rd_kafka_t *rk = NULL;
    codec *k = commands_codec_new(cfg, err, sizeof err);
    if (!k) goto err;
    if (!(rk = kafka_consumer_new(cfg, NULL, NULL, NULL, err, sizeof err))) goto err;
    if ((n_parts = kafka_partition_count(rk, topic, 10000, err, sizeof err)) < 0) goto err;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n_parts);
    for (int p = 0; p < n_parts; p++)
        rd_kafka_topic_partition_list_add(l, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (!(eof = calloc((size_t)n_parts, 1))) goto err;
    int64_t deadline = util_monotonic_us() + 60 * 1000000LL;
    while (follow || eofs < n_parts) {
        if (!follow && util_monotonic_us() > deadline) {
            util_err(err, sizeof err, "did not reach the end of %s within 60 s", topic);
            goto err;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 500);
        if (!m) continue;
        if (m->err) {
            if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF && !eof[m->partition]) {
                eof[m->partition] = 1;
                eofs++;
            } else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                log_warn("tail", "%s", rd_kafka_message_errstr(m));
            }
            rd_kafka_message_destroy(m);
            continue;
        }
        personalized_copy c = {0};
        char why[256];
        codec_status st = codec_decode_copy(k, m->payload, m->len, &c, why, sizeof why);
        if (st != CODEC_OK) {
            log_warn("tail", "%s[%" PRId32 "]@%" PRId64 ": %s: %s", topic, m->partition,
                     m->offset, codec_status_name(st), why);
            bad++;
            rd_kafka_message_destroy(m);
            continue;
        }
        total++;
        size_t li = 0;
        while (li < n_locales && strcmp(locales[li].locale, c.locale) != 0) li++;
        if (li == n_locales && n_locales < UTIL_ARRAY_LEN(locales)) {
            locales[n_locales++] = (tail_locale){strdup(c.locale), 0, 0};
        }
        int show = (limit < 0 || (long)shown < limit);
        if (li < n_locales) {
            locales[li].total++;
            if (per_locale >= 0 && (long)locales[li].shown >= per_locale) show = 0;
            if (show) locales[li].shown++;
        }
        if (show) {
            shown++;
            if (json) tail_print_json(&c); else tail_print_text(&c);
            fflush(stdout);
        }
        personalized_copy_clear(&c);
        rd_kafka_message_destroy(m);
    }
    if (summary) {
        printf("copies %zu", total);
        for (size_t i = 0; i < n_locales; i++)
            printf(" %s=%zu", locales[i].locale, locales[i].total);
        if (bad) printf(" undecodable=%zu", bad);
        printf("\n");
    }
    rc = 0;
err:
    if (rc) fprintf(stderr, "copystream: %s\n", err);
    for (size_t i = 0; i < n_locales; i++) free((char *)locales[i].locale);
    free(eof);
    if (rk) {
        rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);
    }
    codec_free(k);
    config_free(cfg);
    return rc;
}
