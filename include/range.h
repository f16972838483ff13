/* range.h -- the input partitions of a bounded run, and how far it got.
 *
 * `copystream replay` and `copystream rebuild-state` run the service's own
 * pipeline over a fixed stretch of the input instead of following it as a
 * group member. Per (topic, partition) a range says, in offsets fixed before
 * the run starts (replay.c looks them up from times):
 *
 *   start      the first offset read;
 *   copy_from  the first offset whose events may make copies; events in
 *              [start, copy_from) only build state (the warm-up), so that
 *              the users' state is what it was when the live run met the
 *              first event of the range;
 *   end        the first offset not read: the run stops there even if the
 *              topic has grown since.
 *
 * The service tells the range what the consumer reached (a message at or
 * past end, or the partition's end) and what it finished (the next offset
 * after its last committed batch); the range answers whether an event may
 * make a copy and whether the run is over, and meters the progress.
 *
 * Pure bookkeeping: no Kafka, no clock of its own (times are passed in), so
 * it is unit-tested alone. Not thread-safe. */
#ifndef COPYSTREAM_RANGE_H
#define COPYSTREAM_RANGE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    char *topic;
    uint8_t kind;             /* US_TOPIC_CLICKSTREAM or US_TOPIC_REACTIONS */
    int32_t partition;
    int64_t start, copy_from, end;
    int64_t next;             /* offsets below it are done (start..end) */
    int reached;              /* the consumer got to end: nothing more to read */
    int started;              /* a message of it was delivered */
    int64_t missing;          /* offsets from start that the log no longer held when the
                               * first message came (deleted by retention meanwhile) */
} range_part;

typedef struct range range;

range *range_new(void);
void range_free(range *r);

/* Adds a partition. copy_from is clamped into [start, end]; a partition
 * with start >= end has nothing to read and is reached from the outset.
 * Returns 0, or -1 when memory runs out. */
int range_add(range *r, const char *topic, uint8_t kind, int32_t partition, int64_t start,
              int64_t copy_from, int64_t end);

size_t range_count(const range *r);
/* The i-th partition, in the order added. */
range_part *range_at(range *r, size_t i);
/* The partition of (kind, partition), or NULL when the range has none. */
range_part *range_find(range *r, uint8_t kind, int32_t partition);

/* May the event at offset of (kind, partition) make a copy? Only inside
 * [copy_from, end); an event of a partition the range does not hold may
 * not. */
int range_copy_wanted(const range *r, uint8_t kind, int32_t partition, int64_t offset);

/* The consumer delivered the message at offset: returns 1 when it lies at
 * or past the end (the caller drops it), marking the partition reached;
 * 0 when it is to be processed. The first message of a partition coming
 * after start means the offsets before it are gone: they are counted in
 * `missing`. */
int range_past_end(range *r, uint8_t kind, int32_t partition, int64_t offset);
/* The consumer met the end of the partition's log: nothing more to read up
 * to end (what was deleted or is a transaction marker never comes). */
void range_eof(range *r, uint8_t kind, int32_t partition);
/* The consumer was sent back to an earlier offset (a failed batch runs
 * again): the partition is not reached any more. */
void range_rewound(range *r, uint8_t kind, int32_t partition);
/* Offsets of (kind, partition) below next are done (committed). */
void range_done(range *r, uint8_t kind, int32_t partition, int64_t next);

/* Has the consumer reached the end of every partition? */
int range_all_reached(const range *r);
/* Offsets of the range that were gone when it came to read them. */
uint64_t range_missing(const range *r);

/* Offsets in the range, and those done so far (each partition counted from
 * its start, capped at its end). */
uint64_t range_total(const range *r);
uint64_t range_finished(const range *r);

/* A progress meter over range_finished(): the rate is smoothed over
 * samples at least a second apart, so that one slow batch does not swing
 * the time left. */
typedef struct {
    int64_t t0_us;            /* first sample */
    int64_t last_us;          /* last rate sample */
    uint64_t last_done;
    uint64_t done, total;
    double rate;              /* offsets per second; 0 until known */
} range_meter;

/* Takes a sample at now_us (any monotonic clock). */
void range_meter_update(range_meter *m, uint64_t done, uint64_t total, int64_t now_us);
/* Seconds left at the current rate, or -1 when not known yet. */
double range_meter_eta_s(const range_meter *m);

/* Writes one progress line for m into out (NUL-terminated, cut to outlen):
 * for a terminal, label ("replay"), a bar `width` characters wide, then
 * percent, position, rate and time left; otherwise the same as a plain
 * sentence for a log line (without the label, which the log names).
 * Returns out. */
char *range_meter_format(const range_meter *m, const char *label, int tty, int width, char *out,
                         size_t outlen);

#endif
