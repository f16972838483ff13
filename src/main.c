/* main.c -- the copystream binary: one executable, one subcommand per job.
 *
 * Only main exits; every subcommand returns its status (commands.h). */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "config.h"

static void main_usage(FILE *f) {
    fprintf(f,
            "copystream %s -- personalized marketing copy from a clickstream, in real time\n"
            "\n"
            "usage: copystream <command> [options]      (copystream <command> --help)\n"
            "\n"
            "  run       the service: clickstream + reactions in, copy out\n"
            "  topics    create the configured Kafka topics\n"
            "  loadgen   publish a sample catalog and a synthetic clickstream\n"
            "  import    publish a dataset in the sequence format (user item item ...)\n"
            "  tail      print the copies in the copy topic\n"
            "  train     learn the model from a sequence file or the clickstream topic\n"
            "  eval      rank held-out events with a model: HR@k and NDCG@k\n"
            "  report    how each copy variant performs: CTR, conversions, lift vs holdout\n"
            "  replay    make the copies of a time range again, apart from the live service\n"
            "  rebuild-state  recompute users' state from the input into a new key prefix\n"
            "  forget    erase everything kept about a user (Redis, tombstones, running instances)\n"
            "  consent   record a user's opt-out or opt-in\n"
            "  config    print the effective configuration (secrets masked)\n"
            "  version   print the version\n",
            COPYSTREAM_VERSION);
}

int config_main(int argc, char **argv) {
    const char *path = commands_default_config();
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc) {
            path = argv[++i];
        } else {
            fprintf(stderr, "usage: copystream config [-c CONFIG]\n");
            return 2;
        }
    }
    config *cfg = commands_load_config(path);
    if (!cfg) return 2;
    config_dump(cfg, STDOUT_FILENO);
    config_free(cfg);
    return 0;
}

int main(int argc, char **argv) {
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } commands[] = {
        {"run", run_main},       {"topics", topics_main}, {"loadgen", loadgen_main},
        {"import", import_main}, {"tail", tail_main},     {"config", config_main},
        {"train", train_main},   {"eval", eval_main},     {"replay", replay_main},
        {"rebuild-state", rebuild_main}, {"report", report_main}, {"forget", forget_main},
        {"consent", consent_main},
    };
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") ||
        !strcmp(argv[1], "help")) {
        main_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
        printf("copystream %s\n", COPYSTREAM_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "copystream: unknown command '%s'\n\n", argv[1]);
    main_usage(stderr);
    return 2;
}
