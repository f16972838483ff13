/* producer_fatal.c -- `copystream run` whose producer hits fatal errors, for
 * tests/integration/test_faults.py.
 *
 *   producer_fatal [--every N] [--times K] [--exit-when-idle MS]
 *
 * Runs the service exactly as `copystream run` does (service_run, config
 * from $COPYSTREAM_CONFIG or config/copystream.conf plus the environment),
 * and raises a fatal error on its producer K times (default 3), N turns of
 * the loop apart at least (default 20), at a turn that finds messages in
 * the producer's queue when there is one soon, so that it lands with copies
 * in flight. The error is librdkafka's own
 * simulation of one (rd_kafka_test_fatal_error), here the idempotence
 * sequence error a real broker raises when it lost acknowledged messages,
 * which no broker can be made to do on demand. Exits with service_run's
 * code. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "commands.h"
#include "config.h"
#include "service.h"

typedef struct {
    long every, times;
    long turns, next_at, raised;
} injector;

static void inject(void *ud, rd_kafka_t *producer) {
    injector *in = ud;
    if (in->raised >= in->times || ++in->turns < in->next_at) return;
    /* Exactly once, a batch's transaction is committed before the loop turns,
     * so messages are rarely in flight then: after another `every` turns,
     * any turn will do. */
    if (rd_kafka_outq_len(producer) == 0 && in->turns < in->next_at + in->every) return;
    in->next_at = in->turns + in->every;
    rd_kafka_test_fatal_error(producer, RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                              "injected by producer_fatal");
    fprintf(stderr, "producer_fatal: fatal error %ld raised\n", ++in->raised);
}

int main(int argc, char **argv) {
    static const struct option opts[] = {{"every", required_argument, 0, 'e'},
                                         {"times", required_argument, 0, 't'},
                                         {"exit-when-idle", required_argument, 0, 'i'},
                                         {0, 0, 0, 0}};
    injector in = {.every = 20, .times = 3, .next_at = 20};
    service_options so = {.producer_hook = inject, .ud = &in};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'e': in.every = atol(optarg); break;
        case 't': in.times = atol(optarg); break;
        case 'i': so.exit_when_idle_ms = atoll(optarg); break;
        default:
            fprintf(stderr, "usage: producer_fatal [--every N] [--times K] [--exit-when-idle MS]\n");
            return 2;
        }
    }
    if (in.every < 1) in.every = 1;
    in.next_at = in.every;
    config *cfg = commands_load_config(commands_default_config());
    if (!cfg) return 2;
    int rc = service_run(cfg, &so, NULL);
    config_free(cfg);
    if (rc == 0 && in.raised < in.times) {
        fprintf(stderr, "producer_fatal: only %ld of %ld fatal errors raised\n", in.raised,
                in.times);
        rc = 3;
    }
    return rc;
}
