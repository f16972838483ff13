/* test_store.c -- what store_new() refuses before it talks to Redis: the
 * password settings (redis.password, redis.password_file, redis.user), with
 * errors that name the keys and never quote the password; and the memory
 * store (replay --dry-run), which must keep states, versions, conflicts and
 * outbox copies exactly as Redis does. Talking to Redis is tested against a
 * real one in tests/integration. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "store.h"
#include "util.h"

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

/* ---- the memory store ------------------------------------------------------- */

static store *memory_store(config **c) {
    char err[512];
    *c = config_load(NULL, NULL, err, sizeof err);
    if (!*c) fail_msg("%s", err);
    store *st = store_new_memory(*c, err, sizeof err);
    if (!st) fail_msg("%s", err);
    return st;
}

static click_event click(const char *id, int64_t ts_ms, const char *item) {
    click_event e = {0};
    e.event_id = (char *)id;
    e.user_id = (char *)"u1";
    e.ts_ms = ts_ms;
    e.type = EV_CLICK;
    e.item_id = (char *)item;
    e.category = (char *)"phones";
    e.locale = (char *)"zh-CN";
    return e;
}

/* Every field of s, names and values, as one byte string. */
static void encode_all(const user_state *s, buf *out) {
    userstate_fields f = {0};
    assert_int_equal(userstate_encode(s, ~0u, &f), 0);
    buf_reset(out);
    for (size_t i = 0; i < f.n; i++) {
        buf_puts(out, f.v[i].name);
        buf_put_u8(out, 0);
        buf_append(out, f.v[i].value.p, f.v[i].value.len);
        buf_put_u8(out, 0);
    }
    userstate_fields_free(&f);
}

static store_status write_one(store *st, const char *user, user_state *s, size_t *conflicts) {
    char err[256];
    store_write w = {user, s};
    return store_write_batch(st, &w, 1, NULL, 0, conflicts, err, sizeof err);
}

static void load_one(store *st, const char *user, user_state *s) {
    char err[256];
    const char *ids[1] = {user};
    user_state *states[1] = {s};
    userstate_init(s);
    assert_int_equal(store_load(st, ids, states, 1, err, sizeof err), STORE_OK);
}

static void test_memory_store_gives_back_what_was_written_in_two_writes(void **unused) {
    config *c;
    store *st = memory_store(&c);
    userstate_params p;
    userstate_params_default(&p);
    user_state s, back;
    userstate_init(&s);
    load_one(st, "u1", &s); /* nobody yet: empty, version 0 */
    assert_int_equal(s.version, 0);
    click_event e1 = click("e1", 1700000000000, "i1"), e2 = click("e2", 1700000060000, "i2");
    uint64_t attrs[2] = {util_hash("hd"), util_hash("light")};
    assert_int_equal(userstate_apply_click(&s, &p, &e1, attrs, 2, 0, 10), US_APPLIED);
    size_t conflicts = 9;
    assert_int_equal(write_one(st, "u1", &s, &conflicts), STORE_OK);
    assert_int_equal(conflicts, 0);
    assert_int_equal(s.version, 1);
    /* The second write sends only what changed; the hash keeps the rest. */
    assert_int_equal(userstate_apply_click(&s, &p, &e2, attrs, 1, 0, 11), US_APPLIED);
    assert_int_equal(write_one(st, "u1", &s, &conflicts), STORE_OK);
    load_one(st, "u1", &back);
    assert_int_equal(back.version, 2);
    buf a = BUF_INIT, b = BUF_INIT;
    encode_all(&s, &a);
    encode_all(&back, &b);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.p, b.p, a.len);
    assert_int_equal(userstate_watermark(&back, US_TOPIC_CLICKSTREAM, 0), 11);
    /* Another user has nothing. */
    user_state other;
    load_one(st, "u2", &other);
    assert_int_equal(other.version, 0);
    assert_int_equal(other.seq_total, 0);
    buf_free(&a);
    buf_free(&b);
    userstate_clear(&s);
    userstate_clear(&back);
    userstate_clear(&other);
    store_free(st);
    config_free(c);
}

static void test_memory_store_refuses_a_write_from_a_stale_read(void **unused) {
    config *c;
    store *st = memory_store(&c);
    userstate_params p;
    userstate_params_default(&p);
    user_state fresh, stale, back;
    load_one(st, "u1", &fresh);
    load_one(st, "u1", &stale); /* read at the same version, written after the other */
    click_event e1 = click("e1", 1700000000000, "i1"), e2 = click("e2", 1700000001000, "i2");
    userstate_apply_click(&fresh, &p, &e1, NULL, 0, 0, 1);
    userstate_apply_click(&stale, &p, &e2, NULL, 0, 0, 2);
    size_t conflicts;
    assert_int_equal(write_one(st, "u1", &fresh, &conflicts), STORE_OK);
    assert_int_equal(conflicts, 0);
    assert_int_equal(write_one(st, "u1", &stale, &conflicts), STORE_OK);
    assert_int_equal(conflicts, 1);
    load_one(st, "u1", &back);
    assert_int_equal(back.version, 1);
    assert_int_equal(userstate_watermark(&back, US_TOPIC_CLICKSTREAM, 0), 1);
    userstate_clear(&fresh);
    userstate_clear(&stale);
    userstate_clear(&back);
    store_free(st);
    config_free(c);
}

static void found(const char *user_id, size_t len, int64_t offset, void *ud) {
    buf *b = ud;
    buf_printf(b, "%.*s@%lld;", (int)len, user_id, (long long)offset);
}

static void test_memory_store_lists_and_deletes_outbox_copies(void **unused) {
    config *c;
    store *st = memory_store(&c);
    user_state s, back;
    load_one(st, "u1", &s);
    assert_int_equal(userstate_outbox_add(&s, 2, 40, "copy-40", 7), 0);
    assert_int_equal(userstate_outbox_add(&s, 2, 41, "copy-41", 7), 0);
    assert_int_equal(userstate_outbox_add(&s, 3, 5, "copy-5", 6), 0);
    size_t conflicts;
    assert_int_equal(write_one(st, "u1", &s, &conflicts), STORE_OK);
    char err[256];
    buf seen = BUF_INIT;
    assert_int_equal(store_outbox_scan(st, 2, 41, found, &seen, err, sizeof err), STORE_OK);
    assert_string_equal(seen.p, "u1@40;");
    /* The copy of offset 40 was committed: it goes, the others stay. */
    store_outbox_ref purge = {"u1", 2, 40};
    assert_int_equal(store_write_batch(st, NULL, 0, &purge, 1, &conflicts, err, sizeof err),
                     STORE_OK);
    load_one(st, "u1", &back);
    assert_null(userstate_outbox_find(&back, 2, 40));
    const us_outbox *o = userstate_outbox_find(&back, 2, 41);
    assert_non_null(o);
    assert_memory_equal(o->msg.p, "copy-41", 7);
    assert_non_null(userstate_outbox_find(&back, 3, 5));
    uint64_t deleted = 0;
    assert_int_equal(store_delete_all(st, &deleted, err, sizeof err), STORE_OK);
    assert_int_equal(deleted, 1);
    userstate_clear(&back);
    load_one(st, "u1", &back);
    assert_int_equal(back.version, 0);
    buf_free(&seen);
    userstate_clear(&s);
    userstate_clear(&back);
    store_free(st);
    config_free(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_password_and_password_file_together_are_refused),
        cmocka_unit_test(test_missing_password_file_is_named),
        cmocka_unit_test(test_password_file_with_an_empty_first_line_is_refused),
        cmocka_unit_test(test_acl_user_without_a_password_is_refused),
        cmocka_unit_test(test_a_readable_password_file_gets_to_connecting_and_is_not_quoted),
        cmocka_unit_test(test_memory_store_gives_back_what_was_written_in_two_writes),
        cmocka_unit_test(test_memory_store_refuses_a_write_from_a_stale_read),
        cmocka_unit_test(test_memory_store_lists_and_deletes_outbox_copies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
