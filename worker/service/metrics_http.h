/*
 * metrics_http.h — the worker's /metrics, /healthz, /readyz listener: a
 * thread that serves a text and a flag which the service loop hands it, so
 * that no client can hold up the loop (worker/service/health.c feeds it).
 *
 * Limits: at most METRICS_HTTP_MAX_CONNS connections (a new one closes the
 * oldest), each closed METRICS_HTTP_IDLE_MS after it opened; requests are
 * routed on their first bytes (GET /metrics, GET /readyz, GET /healthz,
 * anything else 404) and answered with Connection: close.
 */
#ifndef LLMQ_METRICS_HTTP_H
#define LLMQ_METRICS_HTTP_H

#include <stddef.h>

#include "common/status.h"

enum {
    METRICS_HTTP_MAX_CONNS = 64, /* open connections; the next one closes the oldest */
    METRICS_HTTP_IDLE_MS = 2000, /* a connection gets this long to send its request and take the answer */
};

typedef struct metrics_http metrics_http;

/* Listen on addr:port (an IPv4/IPv6 literal or a name) and start serving.
 * The caller owns the result (metrics_http_destroy).  NULL with err set when
 * the address does not resolve or cannot be bound. */
metrics_http *metrics_http_create(const char *addr, int port, llmq_err *err);
void metrics_http_destroy(metrics_http *h); /* stops the thread, closes everything; NULL: no-op */

/* /readyz and /healthz: 200 when ready, else 503 "redis unreachable". */
void metrics_http_set_ready(metrics_http *h, int ready);

/* /metrics answers with text[0..len) from now on; h takes text (malloc'd). */
void metrics_http_set_text(metrics_http *h, char *text, size_t len);

#endif
