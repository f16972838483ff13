/* log.h -- leveled logging to stderr, one line per record.
 *
 * Lines look like `2026-11-28T18:52:49.123Z INFO  service: assigned 6 partitions`:
 * UTC time, level, the subsystem, the message. The level is process-wide and
 * set once at start-up (log.level in config); logging is thread-safe because
 * each line is written with a single write(2). Never pass secrets to these
 * functions: nothing here can tell a password from any other string. */
#ifndef COPYSTREAM_LOG_H
#define COPYSTREAM_LOG_H

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level;

/* Parses "debug", "info", "warn", "error"; returns -1 when unknown. */
int log_level_parse(const char *name);
void log_set_level(log_level level);
int log_enabled(log_level level);

void log_msg(log_level level, const char *subsystem, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_debug(sub, ...) do { if (log_enabled(LOG_DEBUG)) log_msg(LOG_DEBUG, sub, __VA_ARGS__); } while (0)
#define log_info(sub, ...)  log_msg(LOG_INFO, sub, __VA_ARGS__)
#define log_warn(sub, ...)  log_msg(LOG_WARN, sub, __VA_ARGS__)
#define log_error(sub, ...) log_msg(LOG_ERROR, sub, __VA_ARGS__)

#endif
