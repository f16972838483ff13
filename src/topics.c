/* topics.c -- `copystream topics`: create the configured topics.
 *
 * Ops run it once per cluster (the demo, the tests and docker-compose do);
 * topics that exist are left as they are. */
#include <getopt.h>
#include <stdio.h>

#include "commands.h"
#include "config.h"
#include "kafka.h"
#include "log.h"

int topics_main(int argc, char **argv) {
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *path = commands_default_config();
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        if (o == 'c') {
            path = optarg;
        } else {
            fprintf(o == 'h' ? stdout : stderr,
                    "usage: copystream topics [-c CONFIG]\n\n"
                    "Creates the clickstream, reactions, copy, dead-letter and (compacted)\n"
                    "catalog topics named in the config, with topic.partitions partitions.\n");
            return o == 'h' ? 0 : 2;
        }
    }
    config *cfg = commands_load_config(path);
    if (!cfg) return 2;
    char err[1024];
    int rc = kafka_create_topics(cfg, err, sizeof err) == 0 ? 0 : 1;
    if (rc) fprintf(stderr, "copystream: %s\n", err);
    config_free(cfg);
    return rc;
}
