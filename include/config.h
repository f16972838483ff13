/* config.h -- copystream's configuration: one file, environment overrides.
 *
 * The file (config/copystream.conf) is INI: `[section]` headers prefix the
 * keys below them, so `port = 6379` under `[redis]` is the key `redis.port`.
 * Every key the program knows is declared once, in the table in config.c, with
 * its type, default, bounds and documentation; config/copystream.conf is that
 * documentation in place. Three families of keys are open-ended:
 *   kafka.<property>           passed to librdkafka as <property>, as is
 *   kafka.consumer.<property>  the same, for the consumers only
 *   kafka.producer.<property>  the same, for the producer only
 *   schema.id.<N>              Confluent schema id N -> .avsc file
 *
 * Environment overrides: COPYSTREAM_<KEY> where <KEY> is the key upper-cased
 * with '.' written as '_' and '_' written as '__' (redis.port ->
 * COPYSTREAM_REDIS_PORT, copy.min_interval_s -> COPYSTREAM_COPY_MIN__INTERVAL__S,
 * kafka.bootstrap.servers -> COPYSTREAM_KAFKA_BOOTSTRAP_SERVERS). The
 * environment wins over the file. A COPYSTREAM_ variable that names no key is
 * an error, like an unknown key in the file, because a typo silently ignored
 * is worse than a failed start.
 *
 * config_load() validates everything before it returns: unknown keys, values
 * of the wrong type or out of bounds, and kafka.* properties (checked against
 * librdkafka itself). Its error names the key, where it came from (file:line
 * or the variable) and the reason. A loaded config is read-only and may be
 * shared between threads. */
#ifndef COPYSTREAM_CONFIG_H
#define COPYSTREAM_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef struct config config;

/* Loads path (NULL: defaults only), then applies the environment `envp`
 * (NULL-terminated "NAME=value" strings, normally `environ`; NULL: none).
 * Returns NULL on any error, with "key (source): reason" in errstr. */
config *config_load(const char *path, char *const *envp, char *errstr, size_t errlen);
void config_free(config *c);

/* Sets a key as if it appeared in the file after everything else (used by
 * subcommand flags such as --group). Validates like config_load(). */
int config_set(config *c, const char *key, const char *value, char *errstr, size_t errlen);

/* Typed getters for declared keys. Asking for an undeclared key, or with the
 * wrong type, is a programming error and aborts. */
const char *config_str(const config *c, const char *key);
int64_t config_int(const config *c, const char *key);
double config_double(const config *c, const char *key);
int config_bool(const config *c, const char *key);

/* Is this key a secret (a password, a SASL secret)? Secrets are never logged;
 * config_dump() prints them as "***". */
int config_is_secret(const char *key);

/* Calls fn for each kafka.* property that applies to the given client kind
 * ("consumer" or "producer"), in file order, with the librdkafka property
 * name (prefix removed). A consumer-only key is not passed to the producer and
 * vice versa. */
typedef void (*config_kv_fn)(const char *name, const char *value, void *ud);
void config_kafka_each(const config *c, const char *client, config_kv_fn fn, void *ud);

/* Calls fn for each schema.id.<N> entry, with name = "<N>". */
void config_schema_ids_each(const config *c, config_kv_fn fn, void *ud);

/* Writes every key with its effective value and source, one per line, to fd
 * (secrets masked). Used by `copystream config`. */
void config_dump(const config *c, int fd);

#endif
