/* test_httpd.c -- the HTTP server answers real TCP requests: /metrics with the
 * Prometheus content type and the registry's page, /healthz from the health
 * callback, 404 and 405 otherwise, and refuses what it cannot bind. The client
 * is a plain HTTP/1.0 exchange over a socket, so nothing of libmicrohttpd is on
 * the client side. */
#include "testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "buf.h"
#include "httpd.h"
#include "metrics.h"

typedef struct {
    int status;
    char content_type[128];
    char allow[64];
    buf raw;          /* the whole response as received */
    const char *body; /* into raw */
} response;

static void response_free(response *r) { buf_free(&r->raw); }

/* Copies the value of header `name` from the header block into out. */
static void header_value(const char *headers, const char *name, char *out, size_t outlen) {
    size_t n = strlen(name);
    out[0] = '\0';
    for (const char *line = headers; line && *line != '\r'; line = strstr(line, "\r\n") + 2) {
        if (!strncasecmp(line, name, n) && line[n] == ':') {
            const char *v = line + n + 1 + strspn(line + n + 1, " ");
            snprintf(out, outlen, "%.*s", (int)strcspn(v, "\r"), v);
            return;
        }
    }
}

/* Sends `method path HTTP/1.0` to addr:port and reads until the server closes. */
static void request(int family, const char *addr, int port, const char *method, const char *path,
                    response *r) {
    memset(r, 0, sizeof *r);
    union {
        struct sockaddr sa;
        struct sockaddr_in v4;
        struct sockaddr_in6 v6;
    } sa;
    memset(&sa, 0, sizeof sa);
    socklen_t salen;
    if (family == AF_INET) {
        sa.v4.sin_family = AF_INET;
        sa.v4.sin_port = htons((uint16_t)port);
        assert_int_equal(inet_pton(AF_INET, addr, &sa.v4.sin_addr), 1);
        salen = sizeof sa.v4;
    } else {
        sa.v6.sin6_family = AF_INET6;
        sa.v6.sin6_port = htons((uint16_t)port);
        assert_int_equal(inet_pton(AF_INET6, addr, &sa.v6.sin6_addr), 1);
        salen = sizeof sa.v6;
    }
    int fd = socket(family, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct timeval tv = {5, 0}; /* a hung server fails the test instead of hanging it */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    assert_int_equal(connect(fd, &sa.sa, salen), 0);

    char req[256];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.0\r\nHost: test\r\n\r\n", method, path);
    assert_int_equal(write(fd, req, (size_t)n), n);
    char chunk[4096];
    ssize_t got;
    while ((got = read(fd, chunk, sizeof chunk)) > 0)
        assert_int_equal(buf_append(&r->raw, chunk, (size_t)got), 0);
    assert_int_equal(got, 0);
    close(fd);

    assert_non_null(r->raw.p);
    assert_int_equal(sscanf(r->raw.p, "HTTP/1.%*d %d", &r->status), 1);
    const char *headers = strstr(r->raw.p, "\r\n") + 2;
    const char *end = strstr(r->raw.p, "\r\n\r\n");
    assert_non_null(end);
    r->body = end + 4;
    header_value(headers, "Content-Type", r->content_type, sizeof r->content_type);
    header_value(headers, "Allow", r->allow, sizeof r->allow);
}

static void get(httpd *h, const char *path, response *r) {
    request(AF_INET, "127.0.0.1", httpd_port(h), "GET", path, r);
}

typedef struct {
    int healthy;
    const char *msg;
    atomic_int calls;
} health_state;

static int report_health(void *ud, buf *msg) {
    health_state *s = ud;
    atomic_fetch_add(&s->calls, 1);
    if (s->msg) buf_puts(msg, s->msg);
    return s->healthy;
}

static httpd *start_local(health_state *s) {
    char err[256] = "";
    httpd *h = httpd_start("127.0.0.1", 0, s ? report_health : NULL, s, err, sizeof err);
    if (!h) fail_msg("httpd_start: %s", err);
    assert_true(httpd_port(h) > 0);
    return h;
}

static void test_metrics_are_served_with_prometheus_content_type(void **state) {
    metrics_reset();
    metrics_inc_event(EV_VIEW, 3);
    httpd *h = start_local(NULL);
    response r;
    get(h, "/metrics", &r);
    assert_int_equal(r.status, 200);
    assert_memory_equal(r.content_type, "text/plain; version=0.0.4", 25);
    assert_non_null(strstr(r.body, "\ncopystream_events_consumed_total{type=\"view\"} 3\n"));
    assert_memory_equal(r.body, "# HELP ", 7);

    /* Each scrape renders afresh. */
    metrics_inc_event(EV_VIEW, 1);
    response again;
    get(h, "/metrics", &again);
    assert_non_null(strstr(again.body, "\ncopystream_events_consumed_total{type=\"view\"} 4\n"));
    response_free(&again);
    response_free(&r);
    httpd_stop(h);
    metrics_reset();
}

static void test_healthy_answers_200_ok_and_the_message(void **state) {
    health_state s = {.healthy = 1, .msg = "partitions: 6\n"};
    httpd *h = start_local(&s);
    response r;
    get(h, "/healthz", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ok\npartitions: 6\n");
    assert_memory_equal(r.content_type, "text/plain", 10);
    assert_int_equal(atomic_load(&s.calls), 1);
    response_free(&r);
    httpd_stop(h);
}

static void test_unhealthy_answers_503_with_the_message(void **state) {
    health_state s = {.healthy = 0, .msg = "redis: connection refused\n"};
    httpd *h = start_local(&s);
    response r;
    get(h, "/healthz", &r);
    assert_int_equal(r.status, 503);
    assert_string_equal(r.body, "redis: connection refused\n");
    response_free(&r);

    s.msg = NULL; /* a silent failure still says something */
    get(h, "/healthz", &r);
    assert_int_equal(r.status, 503);
    assert_true(strlen(r.body) > 0);
    response_free(&r);
    httpd_stop(h);
}

static void test_no_health_callback_means_healthy(void **state) {
    httpd *h = start_local(NULL);
    response r;
    get(h, "/healthz", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ok\n");
    response_free(&r);
    httpd_stop(h);
}

static void test_unknown_path_is_404(void **state) {
    health_state s = {.healthy = 1};
    httpd *h = start_local(&s);
    response r;
    get(h, "/", &r);
    assert_int_equal(r.status, 404);
    response_free(&r);
    get(h, "/metrics/extra", &r);
    assert_int_equal(r.status, 404);
    response_free(&r);
    assert_int_equal(atomic_load(&s.calls), 0);
    httpd_stop(h);
}

static void test_methods_other_than_get_and_head_are_405(void **state) {
    health_state s = {.healthy = 1};
    httpd *h = start_local(&s);
    response r;
    request(AF_INET, "127.0.0.1", httpd_port(h), "POST", "/healthz", &r);
    assert_int_equal(r.status, 405);
    assert_non_null(strstr(r.allow, "GET"));
    response_free(&r);
    request(AF_INET, "127.0.0.1", httpd_port(h), "DELETE", "/metrics", &r);
    assert_int_equal(r.status, 405);
    response_free(&r);
    assert_int_equal(atomic_load(&s.calls), 0); /* refused before any work */

    request(AF_INET, "127.0.0.1", httpd_port(h), "HEAD", "/metrics", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "");
    response_free(&r);
    httpd_stop(h);
}

static void test_port_in_use_fails_with_reason(void **state) {
    httpd *first = start_local(NULL);
    char err[256] = "";
    httpd *second = httpd_start("127.0.0.1", httpd_port(first), NULL, NULL, err, sizeof err);
    assert_null(second);
    char port[16];
    snprintf(port, sizeof port, "%d", httpd_port(first));
    assert_non_null(strstr(err, port));
    assert_non_null(strstr(err, "in use")); /* libmicrohttpd's reason reaches errstr */
    httpd_stop(first);
}

static void test_non_numeric_or_bad_address_is_refused(void **state) {
    const char *bad[] = {"localhost", "999.0.0.1", "", "::g"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char err[256] = "";
        assert_null(httpd_start(bad[i], 0, NULL, NULL, err, sizeof err));
        assert_non_null(strstr(err, "address"));
    }
    char err[256] = "";
    assert_null(httpd_start("127.0.0.1", 65536, NULL, NULL, err, sizeof err));
    assert_true(err[0] != '\0');
}

static void test_ipv6_loopback_is_served(void **state) {
    int probe = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int usable = probe >= 0 && bind(probe, (struct sockaddr *)&a, sizeof a) == 0;
    if (probe >= 0) close(probe);
    if (!usable) skip(); /* no IPv6 loopback on this host */

    char err[256] = "";
    httpd *h = httpd_start("::1", 0, NULL, NULL, err, sizeof err);
    if (!h) fail_msg("httpd_start: %s", err);
    response r;
    request(AF_INET6, "::1", httpd_port(h), "GET", "/healthz", &r);
    assert_int_equal(r.status, 200);
    response_free(&r);
    httpd_stop(h);
}

static void test_stop_of_null_is_a_noop(void **state) { httpd_stop(NULL); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_are_served_with_prometheus_content_type),
        cmocka_unit_test(test_healthy_answers_200_ok_and_the_message),
        cmocka_unit_test(test_unhealthy_answers_503_with_the_message),
        cmocka_unit_test(test_no_health_callback_means_healthy),
        cmocka_unit_test(test_unknown_path_is_404),
        cmocka_unit_test(test_methods_other_than_get_and_head_are_405),
        cmocka_unit_test(test_port_in_use_fails_with_reason),
        cmocka_unit_test(test_non_numeric_or_bad_address_is_refused),
        cmocka_unit_test(test_ipv6_loopback_is_served),
        cmocka_unit_test(test_stop_of_null_is_a_noop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
