/* dict.h -- a hash table from C strings to pointers.
 *
 * Open addressing with linear probing and backward-shift deletion, so there
 * are no tombstones and lookups stay short however many removals happen. The
 * table stores the key pointer, not a copy: the caller keeps each key alive
 * and unchanged while it is in the table (usually the value owns its key).
 * Not thread-safe. */
#ifndef COPYSTREAM_DICT_H
#define COPYSTREAM_DICT_H

#include <stddef.h>
#include <stdint.h>

typedef struct dict dict;

dict *dict_new(void);
void dict_free(dict *d);               /* values are not freed */

void *dict_get(const dict *d, const char *key);
/* Inserts or replaces; returns 0 or -1 when memory runs out. */
int dict_set(dict *d, const char *key, void *val);
/* Removes key; returns its value or NULL when absent. */
void *dict_remove(dict *d, const char *key);
void dict_clear(dict *d);              /* keeps the allocated slots */
size_t dict_size(const dict *d);

/* Iteration: start with *pos = 0; returns 0 when done. The table must not
 * change during an iteration (a removal may shift a later entry backwards,
 * past the cursor): collect, then remove. */
int dict_next(const dict *d, size_t *pos, const char **key, void **val);

#endif
