/* fuzz.h -- what the libFuzzer targets in tests/fuzz share.
 *
 * The modules under test read files by path (templates_load, config_load), so
 * a fuzz input is handed to them as a file without touching the disk: it is
 * written into one memfd per process and opened again as /proc/self/fd/<n>,
 * which gives the module a fresh file description at offset 0 every time.
 *
 * FUZZ_CHECK states a property every input must keep. A broken property is a
 * bug like a crash, so it aborts, which libFuzzer reports as one and for which
 * it saves the input. The targets run from the repository root (scripts/
 * run-fuzz.sh sees to it), like the unit tests, because they load schemas/
 * and config/ by relative path. */
#ifndef COPYSTREAM_FUZZ_H
#define COPYSTREAM_FUZZ_H

#define _GNU_SOURCE /* memfd_create */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define FUZZ_CHECK(cond, ...)                                                   \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "%s:%d: property broken: %s: ", __FILE__, __LINE__, \
                    #cond);                                                     \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
            abort();                                                            \
        }                                                                       \
    } while (0)

/* Replaces the contents of this process's scratch file with data[0..len) and
 * returns a path that opens it. The path stays valid for the process. */
static inline const char *fuzz_file(const uint8_t *data, size_t len) {
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("fuzz-input", 0);
        FUZZ_CHECK(fd >= 0, "memfd_create failed");
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    FUZZ_CHECK(ftruncate(fd, 0) == 0, "ftruncate failed");
    for (size_t off = 0; off < len;) {
        ssize_t w = pwrite(fd, data + off, len - off, (off_t)off);
        FUZZ_CHECK(w > 0, "pwrite failed");
        off += (size_t)w;
    }
    return path;
}

/* Splits data at the first occurrence of sep: [data, *head_len) is the head,
 * *tail (NULL when sep is absent) and *tail_len what follows sep. */
static inline void fuzz_split(const uint8_t *data, size_t len, const char *sep, size_t *head_len,
                              const uint8_t **tail, size_t *tail_len) {
    const uint8_t *at = memmem(data, len, sep, strlen(sep));
    *head_len = at ? (size_t)(at - data) : len;
    *tail = at ? at + strlen(sep) : NULL;
    *tail_len = at ? len - *head_len - strlen(sep) : 0;
}

#endif
