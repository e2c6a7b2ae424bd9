/*
 * httpc.h — a minimal HTTP/1.1 client on a libev loop for llmq-loadtest:
 * non-blocking sockets, responses parsed with http-parser (status, chunked
 * or Content-Length or read-until-close bodies), keep-alive connections
 * reused from an idle pool.  One connection carries one request at a time;
 * thousands of calls may be open at once (bounded by RLIMIT_NOFILE).
 *
 * A call goes: httpc_call_start → handler.on_status once the response
 * headers are in → handler.on_body for each piece of the decoded body →
 * handler.on_done exactly once (transport error or a complete response),
 * unless the caller ends it first with httpc_call_abort (then nothing more
 * is called).  Callbacks receive the CLOCK_MONOTONIC time (s) of the read
 * that delivered their bytes, which is what latency figures are built from.
 *
 * Retry: a request sent on a REUSED connection that is closed before any
 * response byte arrives (the server dropped an idle keep-alive connection)
 * is sent again once on a fresh connection; nothing else is retried.
 *
 * Ownership: the caller owns the httpc_call (embed it) and must keep it
 * alive until on_done or httpc_call_abort; the client copies the request
 * bytes.  Handlers may start new calls and abort other calls, but must not
 * destroy the client.  on_done may free the call.
 */
#ifndef LLMQ_LT_HTTPC_H
#define LLMQ_LT_HTTPC_H

#include <ev.h>
#include <stddef.h>

#include "common/status.h"

typedef struct httpc httpc;
typedef struct httpc_conn httpc_conn;

typedef struct httpc_handler {
    /* response headers complete: the status code */
    void (*on_status)(void *ud, int status, double t);
    /* a piece of the (de-chunked) body; return nonzero to end the call now:
     * the client closes the connection and calls on_done with "aborted" */
    int (*on_body)(void *ud, const char *data, size_t len, double t);
    /* the end: err_kind NULL = the whole response arrived; else a short kind
     * ("connect", "disconnected", "io", "http_parse", "aborted", "nomem")
     * and a message */
    void (*on_done)(void *ud, const char *err_kind, const char *msg, double t);
} httpc_handler;

typedef struct httpc_call {
    httpc *cli;
    httpc_conn *conn;            /* the connection carrying it; NULL when not active */
    char *req;                   /* the request bytes (owned copy) */
    size_t req_len;
    const httpc_handler *h;
    void *ud;
    int retried;                 /* sent again once already */
    int active;                  /* started and not yet done/aborted */
} httpc_call;

/* Statistics of the client, for reports. */
typedef struct httpc_stats {
    unsigned long connects;      /* connections opened */
    unsigned long reuses;        /* requests sent on a pooled connection */
    unsigned long retries;       /* requests sent again after a stale connection */
    unsigned long open;          /* connections open now (active + idle) */
    unsigned long max_open;      /* most connections open at once */
} httpc_stats;

/* Resolve host:port now (getaddrinfo, blocking; numeric hosts do not touch
 * DNS).  NULL with err set when it cannot be resolved or memory is short. */
httpc *httpc_create(struct ev_loop *loop, const char *host, int port, llmq_err *err);
/* Close every connection (active calls are dropped without callbacks). */
void httpc_destroy(httpc *c); /* c may be NULL */
void httpc_get_stats(const httpc *c, httpc_stats *out);

/* Send req (req_len bytes: request line, headers and body).  Errors, even
 * immediate ones, are reported through on_done from the loop, never from
 * inside this call. */
void httpc_call_start(httpc *c, httpc_call *call, const char *req, size_t req_len, const httpc_handler *h, void *ud);
/* End the call now: close its connection, call nothing.  No-op when the
 * call is not active. */
void httpc_call_abort(httpc_call *call);

#endif
