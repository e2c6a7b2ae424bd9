/*
 * http.h — the gateway's HTTP/1.1 server on a libev loop: accept, parse with
 * http-parser, hand each complete request to one handler, write responses
 * (fixed length, or chunked for streams), keep-alive and pipelining.
 *
 * Lifetime rules
 *  - A connection is reference counted.  The server holds one reference while
 *    the socket is open; whoever answers asynchronously (a Redis callback)
 *    takes its own with http_conn_ref and drops it with http_conn_unref, and
 *    checks http_conn_closed first, since the client may have gone meanwhile.
 *  - Exactly one request is handled at a time per connection: later pipelined
 *    requests wait in the input buffer until the current response ends.
 *  - When the client goes away (EOF, error, write timeout, streamed output
 *    past the backlog bound) the on_close hook that the handler set is called once,
 *    synchronously, so it can detach from everything that would still call
 *    into it; the hook is cleared whenever a response ends.
 *  - The http_request handed to the handler is valid until the response ends
 *    or the connection closes, whichever comes first.
 *
 * Output and memory
 *  - A complete response (http_respond) is queued whole, whatever its size
 *    (a 12k-token completion with top_logprobs passes 8 MiB): the body is in
 *    memory already, and it is written as the client reads.  The backlog
 *    bound (max_backlog) applies to streamed output only, which would grow
 *    without end behind a reader too slow for its stream.  So a connection
 *    holds at most its largest complete response plus max_backlog; a next
 *    pipelined request is not read while more than 256 KiB of output is
 *    unsent, and a buffer past 256 KiB is freed once written.
 *  - The idle timeout after a response (and the 5 s close linger of a
 *    "Connection: close" one) counts from the client's last progress in
 *    reading it, so a slow reader is not cut while a client that stops
 *    reading is.
 *
 * Strict requests (RFC 9112)
 *  - A field name with a byte that is not a token character (a space before
 *    the colon: "Content-Length : 5"), a second Authorization, Host,
 *    Content-Length, Transfer-Encoding, Content-Type, Last-Event-ID or
 *    Idempotency-Key, and both Transfer-Encoding and Content-Length are 400;
 *    a Transfer-Encoding other than "chunked" is 501; a version other than
 *    HTTP/1.0 and HTTP/1.1 is 505.  Each closes the connection after the
 *    answer, so nothing after such a request is read as another one.
 *
 * Running out of descriptors
 *  - When accept fails for want of a resource (EMFILE, ENFILE, ENOBUFS,
 *    ENOMEM) the listener is not polled for a moment (or until a connection
 *    closes): the pending clients wait in the kernel's backlog instead of
 *    the loop spinning on a listener that stays readable.  The warning is
 *    logged at most once per 10 s, with a count of the ones left out.
 */
#ifndef LLMQ_GW_HTTP_H
#define LLMQ_GW_HTTP_H

#include <ev.h>
#include <stddef.h>

#include "common/status.h"

typedef struct http_server http_server;
typedef struct http_conn http_conn;

/* One parsed request.  Strings are NUL terminated and owned by the connection. */
typedef struct http_request {
    int method;                 /* enum http_method (HTTP_GET, HTTP_POST, ...) */
    const char *method_name;    /* "GET", ... */
    char *path;                 /* request target without the query ("/v1/jobs/x") */
    char *query;                /* query string without '?', or NULL */
    char *body;                 /* body bytes (NUL appended), NULL when empty */
    size_t body_len;
    char *authorization;        /* header values, NULL when absent */
    char *last_event_id;
    char *content_type;
    char *idempotency_key;      /* Idempotency-Key (POST /v1/jobs) */
    int keep_alive;             /* 1 when the connection may serve another request */
    double started;             /* ev_now when the headers were complete */
    const char *route;          /* set by the router for metrics/logs ("/v1/jobs/{id}") */
} http_request;

typedef void (*http_handler_fn)(void *ud, http_conn *c, http_request *req);
/* Called once per finished response (status, seconds since headers). */
typedef void (*http_log_fn)(void *ud, const http_request *req, int status, double seconds);

typedef struct http_limits {
    size_t max_body;            /* bytes of a request body; larger → 413 */
    double idle_timeout;        /* s a keep-alive connection may sit idle */
    double request_timeout;     /* s to receive a complete request, counted from its first
                                 * byte (not from the last one: a client trickling bytes
                                 * is cut at the deadline all the same) */
    size_t max_backlog;         /* bytes of unsent streamed output before a slow client is
                                 * dropped (a complete response is exempt: see above) */
    size_t max_conns;           /* open connections; one past it is answered 503 and
                                 * closed at once; 0 = no cap */
} http_limits;

/* Listen on host:port (port 0 = any; http_server_port tells which). */
http_server *http_server_create(struct ev_loop *loop, const char *host, int port, const http_limits *lim,
                                http_handler_fn handler, http_log_fn log, void *ud, llmq_err *err);
int http_server_port(const http_server *s);
/* Serve an already connected, non-blocking stream socket as if it had just
 * been accepted (the fuzz target feeds one end of a socketpair this way).
 * The server owns fd from then on and closes it even when this fails: -1
 * when shutting down or out of memory. */
int http_server_adopt(http_server *s, int fd);
/* Stop accepting; idle keep-alive connections are closed, busy ones are told
 * to close after their response. */
void http_server_shutdown(http_server *s);
size_t http_server_conn_count(const http_server *s);
/* Close every connection now and free the server.  s may be NULL. */
void http_server_destroy(http_server *s);

void http_conn_ref(http_conn *c);
void http_conn_unref(http_conn *c);
int http_conn_closed(const http_conn *c);
/* Hook called when the client goes away before the response ended. */
void http_conn_on_close(http_conn *c, void (*fn)(void *ud), void *ud);

/* A complete response.  extra_headers: "Name: value\r\n" lines or NULL. */
void http_respond(http_conn *c, int status, const char *content_type, const char *body, size_t len,
                  const char *extra_headers);

/* A streamed response (chunked transfer encoding). */
void http_stream_begin(http_conn *c, int status, const char *content_type, const char *extra_headers);
/* Send one piece; -1 when the connection is closed (the data is dropped). */
int http_stream_write(http_conn *c, const char *data, size_t len);
void http_stream_end(http_conn *c);

const char *http_status_text(int status);

#endif
