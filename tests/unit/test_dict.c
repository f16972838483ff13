/* test_dict.c -- the hash table agrees with a naive reference under random
 * inserts, replacements and removals (which exercise backward-shift). */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dict.h"

#define KEYS 2000

static void test_random_operations_match_a_reference(void **unused) {
    static char keys[KEYS][24];
    static void *ref[KEYS];
    for (int i = 0; i < KEYS; i++) snprintf(keys[i], sizeof keys[i], "user-%d", i);
    dict *d = dict_new();
    srand(7);
    for (int step = 0; step < 200000; step++) {
        int k = rand() % KEYS;
        int op = rand() % 3;
        if (op < 2) {
            void *v = (void *)(intptr_t)(step + 1);
            assert_int_equal(dict_set(d, keys[k], v), 0);
            ref[k] = v;
        } else {
            void *got = dict_remove(d, keys[k]);
            assert_ptr_equal(got, ref[k]);
            ref[k] = NULL;
        }
        if (step % 1000 == 0) {
            size_t n = 0;
            for (int i = 0; i < KEYS; i++) {
                assert_ptr_equal(dict_get(d, keys[i]), ref[i]);
                n += ref[i] != NULL;
            }
            assert_int_equal(dict_size(d), n);
        }
    }
    size_t pos = 0, seen = 0;
    const char *key;
    void *val;
    while (dict_next(d, &pos, &key, &val)) {
        int i = atoi(key + 5);
        assert_ptr_equal(ref[i], val);
        seen++;
    }
    assert_int_equal(seen, dict_size(d));
    dict_clear(d);
    assert_int_equal(dict_size(d), 0);
    assert_null(dict_get(d, keys[0]));
    dict_free(d);
    dict_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_operations_match_a_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
