/* httpd.h -- the small HTTP server for Prometheus scrapes and health checks.
 *
 * Routes: GET /metrics (metrics_render(), text/plain; version=0.0.4) and
 * GET /healthz (200 when the health callback says healthy, 503 otherwise);
 * any other path is 404 and any method but GET and HEAD is 405. Requests are
 * served by libmicrohttpd on one internal thread of its own, so nothing here
 * touches the processing thread. Whether to start a server at all (the
 * config's http.port = 0 means no) is the caller's decision. */
#ifndef COPYSTREAM_HTTPD_H
#define COPYSTREAM_HTTPD_H

#include <stddef.h>

#include "buf.h"

typedef struct httpd httpd;

/* Reports health for GET /healthz: returns 1 when healthy, 0 when not, and
 * may append a short human-readable explanation to msg (the body follows
 * "ok\n" when healthy and stands alone otherwise). It is called on the HTTP
 * thread while the rest of the program runs, so it must read shared state in
 * a thread-safe way (atomics, or a lock it shares with the writers). */
typedef int (*httpd_health_fn)(void *ud, buf *msg);

/* Starts serving on bind_addr (a numeric IPv4 or IPv6 address such as
 * "0.0.0.0", "127.0.0.1" or "::") and port; port 0 picks a free port, which
 * httpd_port() then reports. health may be NULL (always healthy); ud is passed
 * to it and stays the caller's, and must outlive the server. Returns NULL with
 * the reason in errstr when the address does not parse or the socket cannot
 * be bound. */
httpd *httpd_start(const char *bind_addr, int port, httpd_health_fn health, void *ud,
                   char *errstr, size_t errlen);

/* Stops serving, waits for the HTTP thread to finish (so health is never
 * called after this returns) and frees everything. NULL is a no-op. */
void httpd_stop(httpd *h);

/* The port the server is bound to. */
int httpd_port(const httpd *h);

#endif
