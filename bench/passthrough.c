/* passthrough.c -- the ceiling copystream's end-to-end throughput is measured
 * against: a consumer-group member that forwards every clickstream message to
 * the copy topic unchanged and does nothing else.
 *
 * It keeps every rule of the service's delivery that costs time on the wire,
 * so the ratio measures our processing, not a weaker guarantee: the same
 * clients from kafka.c (idempotent producer, acks=all, manual commits), the
 * same batching (batch.max_events within batch.max_wait_ms), and offsets
 * committed only after the batch's messages are acknowledged.
 *
 *   passthrough [-c CONFIG] [--group GROUP] [--exit-when-idle MS]
 *
 * Prints `passthrough: events=N busy_s=S events_per_s=R`, timed from the
 * first poll to the last commit, like the service's totals line. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "config.h"
#include "kafka.h"
#include "log.h"
#include "util.h"

int main(int argc, char **argv) {
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"group", required_argument, 0, 'g'},
                                         {"exit-when-idle", required_argument, 0, 'i'},
                                         {0, 0, 0, 0}};
    const char *path = commands_default_config(), *group = NULL;
    int64_t idle_ms = 2000;
    int o;
    while ((o = getopt_long(argc, argv, "c:", opts, NULL)) != -1) {
        switch (o) {
        case 'c': path = optarg; break;
        case 'g': group = optarg; break;
        case 'i': idle_ms = atoll(optarg); break;
        default:
            fprintf(stderr, "usage: passthrough [-c CONFIG] [--group G] [--exit-when-idle MS]\n");
            return 2;
        }
    }
    config *cfg = commands_load_config(path);
    if (!cfg) return 2;
    char err[512];
    kafka_delivery dr = {0};
    rd_kafka_t *p = kafka_producer_new(cfg, &dr, NULL, err, sizeof err);
    rd_kafka_t *c = p ? kafka_consumer_new(cfg, group, NULL, NULL, err, sizeof err) : NULL;
    if (!c) {
        fprintf(stderr, "passthrough: %s\n", err);
        return 1;
    }
    const char *in = config_str(cfg, "topic.clickstream"), *out = config_str(cfg, "topic.copy");
    if (kafka_producer_prepare(p, &out, 1, 10000, err, sizeof err) < 0) {
        fprintf(stderr, "passthrough: %s\n", err);
        return 1;
    }
    size_t batch_max = (size_t)config_int(cfg, "batch.max_events");
    int64_t wait_us = config_int(cfg, "batch.max_wait_ms") * 1000;
    rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, in, RD_KAFKA_PARTITION_UA);
    rd_kafka_subscribe(c, sub);
    rd_kafka_topic_partition_list_destroy(sub);

    rd_kafka_message_t **msgs = calloc(batch_max, sizeof *msgs);
    /* Like the service: one batch staged while the previous one awaits its
     * acks; its offsets are committed once they arrive. */
    kafka_delivery flight[2] = {{0}};
    rd_kafka_topic_partition_list_t *pending = NULL;
    uint64_t pending_n = 0, total = 0;
    int cur = 0, rc = 0;
    int64_t first = 0, last = 0, last_msg = util_monotonic_us();
    for (;;) {
        size_t n = 0;
        int64_t deadline = 0;
        while (n < batch_max) {
            int timeout = n ? (int)((deadline - util_monotonic_us()) / 1000) : 100;
            if (n && timeout <= 0) break;
            rd_kafka_message_t *m = rd_kafka_consumer_poll(c, timeout);
            if (!m) {
                if (!n) break;
                continue;
            }
            if (m->err) {
                rd_kafka_message_destroy(m);
                continue;
            }
            if (!n) deadline = util_monotonic_us() + wait_us;
            if (!first) first = util_monotonic_us();
            msgs[n++] = m;
        }
        rd_kafka_topic_partition_list_t *offs = NULL;
        if (n) {
            last_msg = util_monotonic_us();
            memset(&flight[cur], 0, sizeof flight[cur]);
            offs = rd_kafka_topic_partition_list_new((int)n);
            for (size_t i = 0; i < n; i++) {
                rd_kafka_message_t *m = msgs[i];
                if (kafka_produce(p, out, m->key, m->key_len, m->payload, m->len, NULL,
                                  &flight[cur], err, sizeof err) < 0) {
                    fprintf(stderr, "passthrough: %s\n", err);
                    return 1;
                }
                const char *t = rd_kafka_topic_name(m->rkt);
                rd_kafka_topic_partition_t *tp =
                    rd_kafka_topic_partition_list_find(offs, t, m->partition);
                if (!tp) tp = rd_kafka_topic_partition_list_add(offs, t, m->partition);
                if (m->offset + 1 > tp->offset) tp->offset = m->offset + 1;
                rd_kafka_message_destroy(m);
            }
        }
        if (pending) {
            kafka_delivery *prev = &flight[cur ^ 1];
            while (prev->acked + prev->failed < pending_n) rd_kafka_poll(p, 5);
            if (prev->failed) {
                fprintf(stderr, "passthrough: %" PRIu64 " messages failed\n", prev->failed);
                rc = 1;
                break;
            }
            rd_kafka_commit(c, pending, 0);
            rd_kafka_topic_partition_list_destroy(pending);
            total += pending_n;
            last = util_monotonic_us();
            pending = NULL;
        }
        if (offs) {
            pending = offs;
            pending_n = n;
            cur ^= 1;
        } else if (total && util_monotonic_us() - last_msg > idle_ms * 1000) {
            break;
        }
    }
    double busy = (double)(last - first) / 1e6;
    printf("passthrough: events=%" PRIu64 " busy_s=%.3f events_per_s=%.0f\n", total, busy,
           busy > 0 ? (double)total / busy : 0);
    free(msgs);
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
    rd_kafka_flush(p, 10000);
    rd_kafka_destroy(p);
    config_free(cfg);
    return rc;
}
