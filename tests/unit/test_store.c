/* test_store.c -- what store_new() refuses before it talks to Redis: the
 * password settings (redis.password, redis.password_file, redis.user), with
 * errors that name the keys and never quote the password. Talking to Redis
 * is tested against a real one in tests/integration. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "store.h"

#define SECRET "pw-5f1e0c-unit"

/* A file holding text; path receives its name. */
static void write_temp(const char *text, char *path, size_t pathlen) {
    snprintf(path, pathlen, "/tmp/cs-test-store-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t n = strlen(text);
    assert_int_equal(write(fd, text, n), (ssize_t)n);
    close(fd);
}

/* store_new() with the given environment on top of the defaults, Redis on a
 * port where nothing listens; returns its error (it must fail). */
static void store_error(char *const *envp, char *err, size_t errlen) {
    char cerr[512];
    config *c = config_load(NULL, envp, cerr, sizeof cerr);
    if (!c) fail_msg("%s", cerr);
    err[0] = '\0';
    store *st = store_new(c, err, errlen);
    assert_null(st);
    assert_true(err[0] != '\0');
    assert_null(strstr(err, SECRET));
    config_free(c);
}

static void test_password_and_password_file_together_are_refused(void **unused) {
    char path[64], err[512];
    write_temp(SECRET "\n", path, sizeof path);
    char pw[128], file[128];
    snprintf(file, sizeof file, "COPYSTREAM_REDIS_PASSWORD__FILE=%s", path);
    snprintf(pw, sizeof pw, "COPYSTREAM_REDIS_PASSWORD=%s", SECRET);
    char *env[] = {pw, file, "COPYSTREAM_REDIS_PORT=1", NULL};
    store_error(env, err, sizeof err);
    assert_string_equal(err, "redis.password and redis.password_file are both set; keep one");
    unlink(path);
}

static void test_missing_password_file_is_named(void **unused) {
    char err[512];
    char *env[] = {"COPYSTREAM_REDIS_PASSWORD__FILE=/nonexistent/cs-redis-password",
                   "COPYSTREAM_REDIS_PORT=1", NULL};
    store_error(env, err, sizeof err);
    assert_string_equal(err, "redis.password_file: cannot open /nonexistent/cs-redis-password: "
                             "No such file or directory");
}

static void test_password_file_with_an_empty_first_line_is_refused(void **unused) {
    char path[64], err[512], file[128], want[256];
    write_temp("\n" SECRET "\n", path, sizeof path);
    snprintf(file, sizeof file, "COPYSTREAM_REDIS_PASSWORD__FILE=%s", path);
    char *env[] = {file, "COPYSTREAM_REDIS_PORT=1", NULL};
    store_error(env, err, sizeof err);
    snprintf(want, sizeof want, "redis.password_file: %s: the first line is empty", path);
    assert_string_equal(err, want);
    unlink(path);
}

static void test_acl_user_without_a_password_is_refused(void **unused) {
    char err[512];
    char *env[] = {"COPYSTREAM_REDIS_USER=copystream", "COPYSTREAM_REDIS_PORT=1", NULL};
    store_error(env, err, sizeof err);
    assert_string_equal(err, "redis.user is set but there is no password (redis.password or "
                             "redis.password_file)");
}

/* With a usable password file, store_new goes on to connect; nothing listens
 * on port 1, and the connection error must not carry what the file held. */
static void test_a_readable_password_file_gets_to_connecting_and_is_not_quoted(void **unused) {
    char path[64], err[512], file[128];
    write_temp(SECRET "\r\nsecond line ignored\n", path, sizeof path);
    snprintf(file, sizeof file, "COPYSTREAM_REDIS_PASSWORD__FILE=%s", path);
    char *env[] = {file, "COPYSTREAM_REDIS_USER=copystream", "COPYSTREAM_REDIS_PORT=1",
                   "COPYSTREAM_REDIS_TIMEOUT__MS=200", NULL};
    store_error(env, err, sizeof err);
    assert_non_null(strstr(err, "redis 127.0.0.1:1: "));
    unlink(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_password_and_password_file_together_are_refused),
        cmocka_unit_test(test_missing_password_file_is_named),
        cmocka_unit_test(test_password_file_with_an_empty_first_line_is_refused),
        cmocka_unit_test(test_acl_user_without_a_password_is_refused),
        cmocka_unit_test(test_a_readable_password_file_gets_to_connecting_and_is_not_quoted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
