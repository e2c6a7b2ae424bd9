/*
 * httpc.h — HTTP(S) calls for llmq-loadtest: libcurl's multi interface
 * driven by the run's libev loop (curl says which sockets to watch and when
 * its timeout is due; the loop tells curl when they are ready).  HTTP/1.1
 * with keep-alive connections that curl pools and reuses; TLS verification
 * on unless the caller turns it off.  Thousands of calls may be open at once
 * (one connection each, bounded by RLIMIT_NOFILE).
 *
 * A call goes: httpc_call_start → handler.on_status once, before the first
 * body bytes (or before on_done when the body is empty) → handler.on_body for
 * each piece of the decoded body → handler.on_done exactly once (a transport
 * error or a complete response), unless the caller ends it first with
 * httpc_call_abort (then nothing more is called).  Callbacks receive the
 * CLOCK_MONOTONIC time (s) at which curl handed their bytes over, which is
 * when they were read from the socket.
 *
 * Ownership: the caller owns the httpc_call (embed it) and must keep it alive
 * until on_done or httpc_call_abort; the client copies the URL and body, not
 * the header list (it must outlive every call that uses it).  on_status and
 * on_body run inside curl: they must not start or abort calls.  on_done runs
 * outside curl: it may start new calls, abort other calls and free its own
 * call, but must not destroy the client.
 */
#ifndef LLMQ_LT_HTTPC_H
#define LLMQ_LT_HTTPC_H

#include <curl/curl.h>
#include <ev.h>
#include <stddef.h>

#include "common/status.h"

typedef struct httpc httpc;

typedef struct httpc_handler {
    /* the response status code */
    void (*on_status)(void *ud, int status, double t);
    /* a piece of the (de-chunked) body; return nonzero to end the call now:
     * on_done follows with "aborted" */
    int (*on_body)(void *ud, const char *data, size_t len, double t);
    /* the end: err_kind NULL = the whole response arrived; else a short kind
     * ("connect", "resolve", "tls", "disconnected", "timeout", "io",
     * "aborted", "nomem") and a message */
    void (*on_done)(void *ud, const char *err_kind, const char *msg, double t);
} httpc_handler;

typedef struct httpc_call {
    httpc *cli;
    CURL *easy;                  /* the transfer; NULL when not active */
    const httpc_handler *h;
    void *ud;
    int status_sent;             /* on_status was called */
    int stopped;                 /* on_body asked to end the call */
    int active;                  /* started and not yet done/aborted */
    ev_timer defer;              /* reports a failure to start from the loop */
    const char *fail_kind;       /* ... its kind */
    char errbuf[CURL_ERROR_SIZE];/* curl's message about a failure */
    struct httpc_call *prev, *next; /* the client's active calls */
} httpc_call;

/* Options of every call. */
typedef struct httpc_opts {
    int insecure;                /* do not verify the server's certificate and name */
    const char *cacert;          /* CA bundle (PEM) to verify with; NULL = the system's */
} httpc_opts;

/* Statistics of the client, for reports. */
typedef struct httpc_stats {
    unsigned long connects;      /* connections (sockets) opened */
    unsigned long reuses;        /* calls that needed no new connection */
    unsigned long open;          /* connections open now (active + pooled) */
    unsigned long max_open;      /* most connections open at once */
} httpc_stats;

/* curl_global_init must have been called.  NULL with err set when memory is
 * short. */
httpc *httpc_create(struct ev_loop *loop, const httpc_opts *opts, llmq_err *err);
/* Close every connection (active calls are dropped without callbacks). */
void httpc_destroy(httpc *c); /* c may be NULL */
void httpc_get_stats(const httpc *c, httpc_stats *out);

/* POST body (len bytes) to url with these headers.  Errors, even immediate
 * ones, are reported through on_done from the loop, never from inside this
 * call. */
void httpc_call_start(httpc *c, httpc_call *call, const char *url, const struct curl_slist *headers,
                      const char *body, size_t len, const httpc_handler *h, void *ud);
/* End the call now, calling nothing.  No-op when the call is not active. */
void httpc_call_abort(httpc_call *call);

#endif
