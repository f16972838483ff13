/* httpd.c -- /metrics and /healthz over libmicrohttpd; see httpd.h.
 *
 * libmicrohttpd runs the listening socket and every connection on one internal
 * thread, which is all a scrape every few seconds needs and keeps the health
 * callback on a single thread. Connections are capped and idle ones time out,
 * so a stuck or hostile client cannot pile up sockets. libmicrohttpd reports
 * why it failed to start only through its logger, so the logger keeps the last
 * message for httpd_start()'s errstr as well as logging it. */
#include "httpd.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "log.h"
#include "metrics.h"
#include "util.h"

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define TEXT_CONTENT_TYPE "text/plain; charset=utf-8"
#define MAX_CONNECTIONS 32
#define IDLE_TIMEOUT_S 10

struct httpd {
    struct MHD_Daemon *daemon;
    httpd_health_fn health;
    void *ud;
    int port;
    char last_error[256];
};

static void log_mhd(void *cls, const char *fmt, va_list ap) {
    httpd *h = cls;
    vsnprintf(h->last_error, sizeof h->last_error, fmt, ap);
    h->last_error[strcspn(h->last_error, "\r\n")] = '\0';
    log_warn("httpd", "%s", h->last_error);
}

/* Fills body for GET /healthz and returns the status. */
static unsigned serve_health(httpd *h, buf *body) {
    buf msg = BUF_INIT;
    int healthy = h->health ? h->health(h->ud, &msg) : 1;
    if (healthy) buf_puts(body, "ok\n");
    buf_append(body, msg.p, msg.len);
    if (!healthy && !msg.len) buf_puts(body, "unhealthy\n");
    buf_free(&msg);
    return healthy ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE;
}

/* Answers every request on its first call: no route takes a body, so there is
 * nothing to wait for. */
static enum MHD_Result serve(void *cls, struct MHD_Connection *conn, const char *url,
                             const char *method, const char *version, const char *upload_data,
                             size_t *upload_data_size, void **con_cls) {
    httpd *h = cls;
    buf body = BUF_INIT;
    const char *type = TEXT_CONTENT_TYPE;
    unsigned status;
    if (strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD)) {
        status = MHD_HTTP_METHOD_NOT_ALLOWED;
        buf_puts(&body, "method not allowed\n");
    } else if (!strcmp(url, "/metrics")) {
        status = MHD_HTTP_OK;
        type = METRICS_CONTENT_TYPE;
        if (metrics_render(&body) < 0) {
            status = MHD_HTTP_INTERNAL_SERVER_ERROR;
            type = TEXT_CONTENT_TYPE;
            buf_reset(&body);
            buf_puts(&body, "out of memory\n");
        }
    } else if (!strcmp(url, "/healthz")) {
        status = serve_health(h, &body);
    } else {
        status = MHD_HTTP_NOT_FOUND;
        buf_puts(&body, "not found\n");
    }

    struct MHD_Response *resp =
        MHD_create_response_from_buffer(body.len, body.p, MHD_RESPMEM_MUST_COPY);
    buf_free(&body);
    if (!resp) return MHD_NO; /* closes the connection: the best left to do */
    enum MHD_Result rc = MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (rc == MHD_YES && status == MHD_HTTP_METHOD_NOT_ALLOWED)
        rc = MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    if (rc == MHD_YES) rc = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp); /* MHD holds its own reference while sending */
    return rc;
}

httpd *httpd_start(const char *bind_addr, int port, httpd_health_fn health, void *ud,
                   char *errstr, size_t errlen) {
    union {
        struct sockaddr sa;
        struct sockaddr_in v4;
        struct sockaddr_in6 v6;
    } addr;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG;
    httpd *h = NULL;

    if (port < 0 || port > 65535) {
        util_err(errstr, errlen, "httpd: port %d is out of range", port);
        goto err;
    }
    memset(&addr, 0, sizeof addr);
    if (bind_addr && inet_pton(AF_INET, bind_addr, &addr.v4.sin_addr) == 1) {
        addr.v4.sin_family = AF_INET;
        addr.v4.sin_port = htons((uint16_t)port);
    } else if (bind_addr && inet_pton(AF_INET6, bind_addr, &addr.v6.sin6_addr) == 1) {
        addr.v6.sin6_family = AF_INET6;
        addr.v6.sin6_port = htons((uint16_t)port);
        flags |= MHD_USE_IPv6;
    } else {
        util_err(errstr, errlen, "httpd: \"%s\" is not a numeric IPv4 or IPv6 address",
                 bind_addr ? bind_addr : "(null)");
        goto err;
    }

    h = calloc(1, sizeof *h);
    if (!h) {
        util_err(errstr, errlen, "httpd: out of memory");
        goto err;
    }
    h->health = health;
    h->ud = ud;
    /* The logger goes first so that start-up failures reach it too. */
    h->daemon = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, serve, h,
                                 MHD_OPTION_EXTERNAL_LOGGER, log_mhd, h,
                                 MHD_OPTION_SOCK_ADDR, &addr.sa,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)MAX_CONNECTIONS,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)IDLE_TIMEOUT_S,
                                 MHD_OPTION_END);
    if (!h->daemon) {
        util_err(errstr, errlen, "httpd: cannot serve on %s port %d: %s", bind_addr, port,
                 h->last_error[0] ? h->last_error : "libmicrohttpd refused to start");
        goto err;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : port;
    return h;

err:
    httpd_stop(h);
    return NULL;
}

void httpd_stop(httpd *h) {
    if (!h) return;
    if (h->daemon) MHD_stop_daemon(h->daemon);
    free(h);
}

int httpd_port(const httpd *h) { return h->port; }
