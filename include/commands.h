/* commands.h -- the subcommands of the copystream binary.
 *
 * main.c dispatches `copystream <command> [options]` to one of these with
 * argv[0] = the command name. Each parses its own options (every command that
 * talks to Kafka or Redis takes -c/--config FILE, defaulting to
 * $COPYSTREAM_CONFIG or config/copystream.conf), loads the config with the
 * process environment, and returns the process exit status:
 *   0 success, 1 runtime failure (reported on stderr), 2 usage or config error.
 * None of them calls exit(); main does. */
#ifndef COPYSTREAM_COMMANDS_H
#define COPYSTREAM_COMMANDS_H

#include <stddef.h>
#include <stdint.h>

int run_main(int argc, char **argv);      /* the service (service.c) */
int topics_main(int argc, char **argv);   /* create the configured topics (topics.c) */
int tail_main(int argc, char **argv);     /* print copies from the copy topic (tail.c) */
int loadgen_main(int argc, char **argv);  /* synthetic catalog and clickstream (loadgen.c) */
int import_main(int argc, char **argv);   /* publish a sequence dataset (import.c) */
int config_main(int argc, char **argv);   /* print the effective config (main.c) */
int train_main(int argc, char **argv);    /* learn a model (train.c) */
int eval_main(int argc, char **argv);     /* rank held-out events with a model (evaluate.c) */
int report_main(int argc, char **argv);   /* copy variants' performance (report.c) */
int replay_main(int argc, char **argv);   /* make a time range's copies again (replay.c) */
int rebuild_main(int argc, char **argv);  /* recompute users' state into a new prefix (replay.c) */
int forget_main(int argc, char **argv);   /* erase everything kept about a user (privacy.c) */
int consent_main(int argc, char **argv);  /* a user's opt-out or opt-in (privacy.c) */

/* The config path a command uses when -c is not given. */
const char *commands_default_config(void);

struct config;
struct codec;
/* Loads the config at path with the process environment and applies
 * log.level; NULL with the reason printed to stderr. */
struct config *commands_load_config(const char *path);
/* A codec for the schema directory and id table of the config. */
struct codec *commands_codec_new(const struct config *c, char *errstr, size_t errlen);

/* Option values. A whole decimal integer in [lo, hi], or a decimal number in
 * [lo, hi], with nothing after it: 0 and *out set, or -1 and *out untouched
 * (the caller names the option). */
int commands_int(const char *s, int64_t lo, int64_t hi, int64_t *out);
int commands_double(const char *s, double lo, double hi, double *out);
/* The --event-type of a sequence file (train, eval, import): an event type
 * that names an item -- view, click, add_to_cart, purchase or favorite, not
 * search. Returns the event_type, or -1. */
int commands_event_type(const char *name);
#define COMMANDS_EVENT_TYPES "view, click, add_to_cart, purchase or favorite"

#endif
