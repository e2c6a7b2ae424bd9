/*
 * http.c — HTTP/1.1 server connections (see http.h for the lifetime rules).
 *
 * A connection moves through four states:
 *   READING    bytes are fed to http-parser; a complete message pauses the
 *              parser and is dispatched (pipelined bytes stay in `in`)
 *   HANDLING   the handler owns the request; we still read, so that a client
 *              that goes away is noticed, but only buffer what arrives
 *   STREAMING  a chunked response is being written
 *   CLOSING    the last response is being flushed; then the socket closes
 * Parsing never runs re-entrantly: conn_process is the only caller of
 * http_parser_execute, guarded by in_process, and dispatch happens after the
 * parser returned, never inside one of its callbacks.
 *
 * One timer per connection, three meanings: idle_timeout while READING with
 * nothing of a request received; request_timeout from the first byte of a
 * request to its dispatch (armed once, never pushed back by later bytes, so
 * that a client sending a byte a second cannot hold the connection); the
 * close linger while CLOSING.  It is stopped while HANDLING/STREAMING.
 */
#include "gateway/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <http_parser.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"
#include "common/protocol.h" /* proto_buf */

#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

#define MAX_URL 8192          /* bytes of a request target */
#define MAX_HDR_VALUE 8192    /* bytes of one captured header value */
#define MAX_PIPELINED 65536   /* bytes buffered while a request is handled */
#define CLOSE_LINGER 5.0      /* s to flush the last response before closing anyway */
#define ACCEPT_BACKOFF 0.1    /* s the listener rests after accept ran out of a resource */
#define ACCEPT_BATCH 64       /* connections accepted per readable event (fairness) */
#define WARN_INTERVAL 10.0    /* s between two accept warnings (the others are counted) */
#define OUT_KEEP (256 << 10)  /* bytes of output buffer kept for the next response */

enum conn_state { CS_READING, CS_HANDLING, CS_STREAMING, CS_CLOSING };
/* Header fields read here.  Every one but Expect may appear only once: two
 * Authorization, Host or Content-Length fields are ambiguous (a proxy in front
 * may have read the other one), and so a request carrying them is refused. */
enum { H_NONE = -1, H_AUTH = 0, H_LAST_EVENT_ID, H_CONTENT_TYPE, H_EXPECT, H_IDEM, H_HOST, H_CL, H_TE, H_COUNT };

struct http_server {
    struct ev_loop *loop;
    int fd;                         /* listening socket, -1 after shutdown */
    int port;                       /* bound port */
    ev_io accept_w;                 /* readable listening socket */
    ev_timer accept_retry_w;        /* restarts accept_w after an EMFILE-like failure */
    int accept_paused;              /* accept_w stopped until accept_retry_w or a close */
    double warn_next;               /* ev_now before which accept warnings are only counted */
    unsigned long warn_dropped;     /* accept warnings left out since the last one logged */
    http_limits lim;
    http_handler_fn handler;        /* gets every complete request */
    http_log_fn log;                /* gets every finished response (may be NULL) */
    void *ud;                       /* for handler and log */
    http_conn *conns;               /* open connections, doubly linked */
    size_t n_conns;
    int shutting_down;              /* no new connections, no keep-alive */
};

struct http_conn {
    http_server *srv;
    int fd;                         /* client socket; -1 once closed */
    ev_io rio, wio;                 /* readable / writable client socket */
    ev_timer timer;                 /* idle (READING) or linger (CLOSING) timeout */
    http_parser parser;
    int refs;                       /* server's (while open) + async users' */
    int closed;                     /* socket closed; nothing is sent any more */
    int state;                      /* enum conn_state */
    int in_process;                 /* inside conn_process (no re-entry) */

    proto_buf in;                   /* received bytes; [in_off, in.len) unparsed */
    size_t in_off;

    http_request req;               /* request being parsed or handled */
    proto_buf url;                  /* request target being received */
    proto_buf body;                 /* body being received */
    proto_buf hval[H_COUNT];        /* captured header values */
    int hseen[H_COUNT];             /* how many times each field appeared */
    char hname[32];                 /* current header name, lowercased */
    size_t hname_len;               /* its length; > sizeof hname - 1 = too long to matter */
    int hwhich;                     /* H_* index of the header whose value is arriving */
    int last_was_value;             /* previous header callback was a value */
    int msg_done;                   /* the parser completed a message (and is paused) */
    int reject;                     /* status to refuse the request with (413, 414, 431) */
    int expect_continue;            /* client sent Expect: 100-continue */
    int msg_started;                /* a message began and has not been dispatched */
    int req_timing;                 /* the timer is the request deadline (armed at its first byte) */

    proto_buf out;                  /* output; [out_off, out.len) unsent */
    size_t out_off;
    int status;                     /* status of the response being sent */
    int resp_keep_alive;            /* keep the connection after this response */

    void (*on_close)(void *);       /* handler's hook for an early close */
    void *on_close_ud;
    http_conn *prev, *next;         /* in srv->conns */
};

static http_parser_settings parser_settings;

/* ================================================================ helpers */

const char *http_status_text(int s) {
    switch (s) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    }
    return "Unknown";
}

static void request_clear(http_conn *c) {
    free(c->req.path);
    free(c->req.query);
    free(c->req.body);
    free(c->req.authorization);
    free(c->req.last_event_id);
    free(c->req.idempotency_key);
    free(c->req.content_type);
    memset(&c->req, 0, sizeof c->req);
}

static void parse_state_reset(http_conn *c) {
    proto_buf_reset(&c->url);
    proto_buf_reset(&c->body);
    for (int i = 0; i < H_COUNT; i++) proto_buf_reset(&c->hval[i]);
    c->hname_len = 0;
    c->hwhich = H_NONE;
    c->last_was_value = 0;
    c->reject = 0;
    c->expect_continue = 0;
    memset(c->hseen, 0, sizeof c->hseen);
}

/* A NUL-terminated copy of b (NULL when b is empty and allow_empty is 0). */
static char *buf_strdup(const proto_buf *b, int allow_empty) {
    if (!b->len && !allow_empty) return NULL;
    char *s = malloc(b->len + 1);
    if (!s) return NULL;
    if (b->len) memcpy(s, b->data, b->len);
    s[b->len] = '\0';
    return s;
}

/* ================================================================ lifetime */

void http_conn_ref(http_conn *c) { c->refs++; }

void http_conn_unref(http_conn *c) {
    if (--c->refs > 0) return;
    request_clear(c);
    proto_buf_deinit(&c->in);
    proto_buf_deinit(&c->out);
    proto_buf_deinit(&c->url);
    proto_buf_deinit(&c->body);
    for (int i = 0; i < H_COUNT; i++) proto_buf_deinit(&c->hval[i]);
    free(c);
}

int http_conn_closed(const http_conn *c) { return c->closed; }

void http_conn_on_close(http_conn *c, void (*fn)(void *ud), void *ud) {
    c->on_close = fn;
    c->on_close_ud = ud;
}

static void conn_close(http_conn *c) {
    if (c->closed) return;
    http_server *s = c->srv;
    c->closed = 1;
    ev_io_stop(s->loop, &c->rio);
    ev_io_stop(s->loop, &c->wio);
    ev_timer_stop(s->loop, &c->timer);
    close(c->fd);
    c->fd = -1;
    if (c->prev) c->prev->next = c->next;
    else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
    s->n_conns--;
    if (s->accept_paused && !s->shutting_down) { /* a descriptor is free again */
        s->accept_paused = 0;
        ev_timer_stop(s->loop, &s->accept_retry_w);
        ev_io_start(s->loop, &s->accept_w);
    }
    void (*hook)(void *) = c->on_close;
    void *ud = c->on_close_ud;
    c->on_close = NULL;
    if (hook) hook(ud);
    http_conn_unref(c);
}

/* ================================================================ output */

/* More unsent output than OUT_KEEP: the next pipelined request waits until the
 * client has read it (back-pressure instead of a growing buffer). */
static int out_blocked(const http_conn *c) { return c->out.len - c->out_off > OUT_KEEP; }

static void conn_process(http_conn *c);

static void conn_flush(http_conn *c) {
    size_t sent = 0;
    while (!c->closed && c->out_off < c->out.len) {
        ssize_t n = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            sent += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            ev_io_start(c->srv->loop, &c->wio);
            /* a client still reading a large response is not idle: the idle
             * timeout (and the close linger) count from its last progress */
            if (sent && (c->state == CS_CLOSING || (c->state == CS_READING && !c->req_timing)))
                ev_timer_again(c->srv->loop, &c->timer);
            return;
        }
        log_debug("http: send failed: %s", n < 0 ? strerror(errno) : "closed");
        conn_close(c);
        return;
    }
    if (c->closed) return;
    ev_io_stop(c->srv->loop, &c->wio);
    c->out.len = c->out_off = 0;
    if (c->out.cap > OUT_KEEP) proto_buf_deinit(&c->out); /* a large body's buffer is not kept */
    if (c->state == CS_READING && !c->in_process) { /* requests held back by out_blocked */
        ev_io_start(c->srv->loop, &c->rio);
        if (c->in.len > c->in_off) conn_process(c);
        if (c->closed) return;
    }
    if (c->state == CS_CLOSING) {
        shutdown(c->fd, SHUT_WR);
        conn_close(c);
    }
}

/* Queue n bytes of output.  bounded: the backlog bound applies (streamed
 * output and heads); a complete response's body is exempt, since it is
 * already in memory whole and is only freed once written (http.h). */
static int conn_send_ex(http_conn *c, const void *p, size_t n, int bounded) {
    if (c->closed) return -1;
    if (bounded && c->out.len - c->out_off + n > c->srv->lim.max_backlog) {
        log_warn("http: client does not read its response (%zu bytes pending): dropping it",
                 c->out.len - c->out_off + n);
        conn_close(c);
        return -1;
    }
    if (c->out_off && c->out_off >= c->out.len / 2) { /* drop what was sent before growing */
        memmove(c->out.data, c->out.data + c->out_off, c->out.len - c->out_off);
        c->out.len -= c->out_off;
        c->out_off = 0;
    }
    if (proto_buf_append(&c->out, p, n) != LLMQ_OK) {
        conn_close(c);
        return -1;
    }
    return 0;
}

static int conn_send(http_conn *c, const void *p, size_t n) { return conn_send_ex(c, p, n, 1); }

static void on_write(struct ev_loop *loop, ev_io *w, int revents) {
    http_conn *c = container_of(w, http_conn, wio);
    http_conn_ref(c);
    conn_flush(c);
    http_conn_unref(c);
}

static void send_head(http_conn *c, int status, const char *ctype, long long content_length, const char *extra) {
    char head[1024];
    int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nServer: llmq-gateway\r\n", status, http_status_text(status));
    if (ctype) n += snprintf(head + n, sizeof head - (size_t)n, "Content-Type: %s\r\n", ctype);
    if (content_length >= 0)
        n += snprintf(head + n, sizeof head - (size_t)n, "Content-Length: %lld\r\n", content_length);
    else
        n += snprintf(head + n, sizeof head - (size_t)n, "Transfer-Encoding: chunked\r\n");
    n += snprintf(head + n, sizeof head - (size_t)n, "Connection: %s\r\n", c->resp_keep_alive ? "keep-alive" : "close");
    if (n >= (int)sizeof head) n = (int)sizeof head - 1;
    conn_send(c, head, (size_t)n);
    if (extra) conn_send(c, extra, strlen(extra));
    conn_send(c, "\r\n", 2);
}

/* The current response is complete: log it, then read the next request or close. */
static void response_done(http_conn *c) {
    http_server *s = c->srv;
    c->on_close = NULL;
    if (s->log) s->log(s->ud, &c->req, c->status, ev_now(s->loop) - c->req.started);
    request_clear(c);
    c->req_timing = 0;
    if (c->closed) return;
    if (!c->resp_keep_alive) {
        c->state = CS_CLOSING;
        c->timer.repeat = CLOSE_LINGER; /* pushed back while the client reads (conn_flush) */
        ev_timer_again(s->loop, &c->timer);
        conn_flush(c);
        return;
    }
    c->state = CS_READING;
    ev_io_start(s->loop, &c->rio);
    c->timer.repeat = s->lim.idle_timeout;
    ev_timer_again(s->loop, &c->timer);
    conn_flush(c);
    conn_process(c);
}

void http_respond(http_conn *c, int status, const char *content_type, const char *body, size_t len,
                  const char *extra_headers) {
    if (c->closed || c->state != CS_HANDLING) return;
    http_conn_ref(c); /* a close on the way calls the handler's hook, which may drop its reference */
    c->status = status;
    c->resp_keep_alive = c->req.keep_alive && !c->srv->shutting_down;
    send_head(c, status, content_type, (long long)len, extra_headers);
    /* a response to HEAD is the head alone (RFC 9110 §9.3.2): a body would be
     * read as the next response by a keep-alive client */
    if (len && c->req.method != HTTP_HEAD) conn_send_ex(c, body, len, 0);
    response_done(c);
    http_conn_unref(c);
}

void http_stream_begin(http_conn *c, int status, const char *content_type, const char *extra_headers) {
    if (c->closed || c->state != CS_HANDLING) return;
    c->status = status;
    c->resp_keep_alive = c->req.keep_alive && !c->srv->shutting_down;
    c->state = CS_STREAMING;
    http_conn_ref(c);
    send_head(c, status, content_type, -1, extra_headers);
    conn_flush(c);
    http_conn_unref(c);
}

int http_stream_write(http_conn *c, const char *data, size_t len) {
    if (c->closed || c->state != CS_STREAMING) return -1;
    if (len == 0) return 0;
    char hdr[24];
    int n = snprintf(hdr, sizeof hdr, "%zx\r\n", len);
    http_conn_ref(c);
    int rc = conn_send(c, hdr, (size_t)n) || conn_send(c, data, len) || conn_send(c, "\r\n", 2) ? -1 : 0;
    if (!rc) conn_flush(c);
    rc = c->closed ? -1 : rc;
    http_conn_unref(c);
    return rc;
}

void http_stream_end(http_conn *c) {
    if (c->closed || c->state != CS_STREAMING) return;
    c->state = CS_HANDLING;
    if (c->srv->shutting_down) c->resp_keep_alive = 0;
    http_conn_ref(c);
    conn_send(c, "0\r\n\r\n", 5);
    response_done(c);
    http_conn_unref(c);
}

/* Refuse the request being parsed and close after the answer. */
static void respond_parse_error(http_conn *c, int status, const char *msg) {
    char body[256];
    int n = snprintf(body, sizeof body,
                     "{\"error\":{\"message\":\"%s\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}",
                     msg);
    c->state = CS_HANDLING;
    c->req.keep_alive = 0;
    if (!c->req.started) c->req.started = ev_now(c->srv->loop);
    c->req.route = "(invalid)";
    http_respond(c, status, "application/json", body, (size_t)n, NULL);
}

/* ================================================================ parser callbacks */

static http_conn *pconn(http_parser *p) { return p->data; }

static int on_message_begin(http_parser *p) {
    http_conn *c = pconn(p);
    request_clear(c);
    parse_state_reset(c);
    c->msg_started = 1;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t n) {
    http_conn *c = pconn(p);
    if (c->url.len + n > MAX_URL) {
        c->reject = 414;
        return 1;
    }
    return proto_buf_append(&c->url, at, n) == LLMQ_OK ? 0 : 1;
}

/* A byte of a field name: RFC 9110's tchar.  http-parser as Debian builds it
 * lets a space through ("Content-Length : 5" was honoured, and a
 * "Transfer-Encoding : chunked" ignored, which a proxy in front may read the
 * other way: request smuggling), so the name is checked here. */
static int is_tchar(unsigned char ch) {
    if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')) return 1;
    return ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static int on_header_field(http_parser *p, const char *at, size_t n) {
    http_conn *c = pconn(p);
    if (c->last_was_value) {
        c->hname_len = 0;
        c->last_was_value = 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (!is_tchar((unsigned char)at[i])) {
            c->reject = 400;
            return 1;
        }
        if (c->hname_len < sizeof c->hname - 1) {
            char ch = at[i];
            c->hname[c->hname_len] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
        }
        c->hname_len++;
    }
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n) {
    http_conn *c = pconn(p);
    if (!c->last_was_value) {
        static const char *names[H_COUNT] = {"authorization", "last-event-id", "content-type",    "expect",
                                             "idempotency-key", "host",       "content-length", "transfer-encoding"};
        c->last_was_value = 1;
        c->hwhich = H_NONE;
        if (c->hname_len < sizeof c->hname) {
            c->hname[c->hname_len] = '\0';
            for (int i = 0; i < H_COUNT; i++)
                if (!strcmp(c->hname, names[i])) c->hwhich = i;
        }
        if (c->hwhich != H_NONE && c->hseen[c->hwhich]++ && c->hwhich != H_EXPECT) {
            c->reject = 400; /* a second one: which would a proxy have read? */
            return 1;
        }
        if (c->hwhich != H_NONE) proto_buf_reset(&c->hval[c->hwhich]);
    }
    if (c->hwhich == H_NONE) return 0;
    proto_buf *b = &c->hval[c->hwhich];
    if (b->len + n > MAX_HDR_VALUE) {
        c->reject = 431;
        return 1;
    }
    return proto_buf_append(b, at, n) == LLMQ_OK ? 0 : 1;
}

/* The whole value of b is token (case-insensitive), optional whitespace aside. */
static int value_is(const proto_buf *b, const char *token) {
    size_t i = 0, j = b->len, n = strlen(token);
    while (i < j && (b->data[i] == ' ' || b->data[i] == '\t')) i++;
    while (j > i && (b->data[j - 1] == ' ' || b->data[j - 1] == '\t')) j--;
    return j - i == n && strncasecmp(b->data + i, token, n) == 0;
}

static int on_headers_complete(http_parser *p) {
    http_conn *c = pconn(p);
    c->req.started = ev_now(c->srv->loop);
    /* RFC 9112: only HTTP/1.0 and 1.1 are spoken here (the parser takes any digits) */
    if (p->http_major != 1 || p->http_minor > 1) {
        c->reject = 505;
        return -1;
    }
    /* the only transfer coding read is chunked, alone, and never with a
     * Content-Length (RFC 9112 §6.1: either could frame the body) */
    if (c->hseen[H_TE] && !value_is(&c->hval[H_TE], "chunked")) {
        c->reject = 501;
        return -1;
    }
    if (c->hseen[H_TE] && c->hseen[H_CL]) {
        c->reject = 400;
        return -1;
    }
    if (p->content_length != ULLONG_MAX && p->content_length > c->srv->lim.max_body) {
        c->reject = 413;
        return -1;
    }
    proto_buf *e = &c->hval[H_EXPECT];
    if (e->len == 12 && strncasecmp(e->data, "100-continue", 12) == 0 && p->http_major == 1 && p->http_minor >= 1)
        c->expect_continue = 1;
    if (c->expect_continue) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        conn_send(c, cont, sizeof cont - 1);
        conn_flush(c);
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n) {
    http_conn *c = pconn(p);
    if (c->body.len + n > c->srv->lim.max_body) {
        c->reject = 413;
        return 1;
    }
    return proto_buf_append(&c->body, at, n) == LLMQ_OK ? 0 : 1;
}

static int on_message_complete(http_parser *p) {
    http_conn *c = pconn(p);
    c->msg_done = 1;
    http_parser_pause(p, 1);
    return 0;
}

/* ================================================================ dispatch */

/* Fill c->req from the parse buffers; 0 on success, else an HTTP status. */
static int request_build(http_conn *c) {
    http_request *r = &c->req;
    r->method = c->parser.method;
    r->method_name = http_method_str((enum http_method)c->parser.method);
    r->keep_alive = http_should_keep_alive(&c->parser) && !c->srv->shutting_down;
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (!c->url.len || http_parser_parse_url(c->url.data, c->url.len, c->parser.method == HTTP_CONNECT, &u) != 0 ||
        !(u.field_set & (1 << UF_PATH)))
        return 400;
    r->path = strndup(c->url.data + u.field_data[UF_PATH].off, u.field_data[UF_PATH].len);
    if (u.field_set & (1 << UF_QUERY))
        r->query = strndup(c->url.data + u.field_data[UF_QUERY].off, u.field_data[UF_QUERY].len);
    r->body = buf_strdup(&c->body, 0);
    r->body_len = c->body.len;
    r->authorization = buf_strdup(&c->hval[H_AUTH], 0);
    r->last_event_id = buf_strdup(&c->hval[H_LAST_EVENT_ID], 0);
    r->content_type = buf_strdup(&c->hval[H_CONTENT_TYPE], 0);
    r->idempotency_key = buf_strdup(&c->hval[H_IDEM], 0);
    if (!r->path) return 500;
    return 0;
}

static void conn_dispatch(http_conn *c) {
    http_server *s = c->srv;
    c->state = CS_HANDLING;
    c->msg_started = 0;
    c->req_timing = 0;
    ev_timer_stop(s->loop, &c->timer);
    int bad = request_build(c);
    if (bad) {
        respond_parse_error(c, bad, "malformed request target");
        return;
    }
    s->handler(s->ud, c, &c->req);
}

static void conn_process(http_conn *c) {
    if (c->in_process || c->closed) return;
    c->in_process = 1;
    http_conn_ref(c);
    while (!c->closed && c->state == CS_READING && c->in_off < c->in.len && !out_blocked(c)) {
        size_t avail = c->in.len - c->in_off;
        size_t n = http_parser_execute(&c->parser, &parser_settings, c->in.data + c->in_off, avail);
        c->in_off += n;
        if (c->msg_done) {
            c->msg_done = 0;
            http_parser_pause(&c->parser, 0);
            conn_dispatch(c);
            continue;
        }
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
        if (e != HPE_OK) {
            if (c->reject == 413) respond_parse_error(c, 413, "request body too large");
            else if (c->reject == 414) respond_parse_error(c, 414, "request target too long");
            else if (c->reject == 431 || e == HPE_HEADER_OVERFLOW)
                respond_parse_error(c, 431, "request headers too large");
            else if (c->reject == 505) respond_parse_error(c, 505, "only HTTP/1.0 and HTTP/1.1 are supported");
            else if (c->reject == 501)
                respond_parse_error(c, 501, "unsupported Transfer-Encoding: only chunked is accepted");
            else if (c->reject == 400)
                respond_parse_error(c, 400, "malformed or repeated header field (RFC 9112)");
            else respond_parse_error(c, 400, "malformed HTTP request");
            break;
        }
    }
    /* compact the input buffer */
    if (!c->closed && c->in_off) {
        memmove(c->in.data, c->in.data + c->in_off, c->in.len - c->in_off);
        c->in.len -= c->in_off;
        c->in_off = 0;
    }
    /* a request has begun: its deadline runs from now, once */
    if (!c->closed && c->state == CS_READING && !c->req_timing && !out_blocked(c) &&
        (c->msg_started || c->in.len > c->in_off)) {
        c->req_timing = 1;
        c->timer.repeat = c->srv->lim.request_timeout;
        ev_timer_again(c->srv->loop, &c->timer);
    }
    c->in_process = 0;
    http_conn_unref(c);
}

static void on_read(struct ev_loop *loop, ev_io *w, int revents) {
    http_conn *c = container_of(w, http_conn, rio);
    char buf[16384];
    ssize_t n = recv(c->fd, buf, sizeof buf, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (n <= 0) { /* EOF or error: the client is gone */
        conn_close(c);
        return;
    }
    if (proto_buf_append(&c->in, buf, (size_t)n) != LLMQ_OK) {
        conn_close(c);
        return;
    }
    if (c->state == CS_READING && !out_blocked(c)) {
        conn_process(c); /* arms the request deadline at the first byte, never later */
    } else if (c->in.len - c->in_off > MAX_PIPELINED) {
        ev_io_stop(loop, &c->rio); /* resumed when this response ends */
    }
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents) {
    http_conn *c = container_of(w, http_conn, timer);
    if (c->state == CS_READING && c->msg_started) {
        http_conn_ref(c);
        respond_parse_error(c, 408, "request not received in time");
        http_conn_unref(c);
        return;
    }
    conn_close(c);
}

/* Log an accept warning, at most one per WARN_INTERVAL: a client flood or a
 * descriptor shortage must not turn into a flood of log lines. */
static void accept_warn(http_server *s, const char *what) {
    double now = ev_now(s->loop);
    if (now < s->warn_next) {
        s->warn_dropped++;
        return;
    }
    if (s->warn_dropped)
        log_warn("http: %s (and %lu more accept warnings in the last %.0f s)", what, s->warn_dropped, WARN_INTERVAL);
    else
        log_warn("http: %s", what);
    s->warn_dropped = 0;
    s->warn_next = now + WARN_INTERVAL;
}

static void on_accept_retry(struct ev_loop *loop, ev_timer *w, int revents) {
    http_server *s = container_of(w, http_server, accept_retry_w);
    s->accept_paused = 0;
    if (!s->shutting_down) ev_io_start(loop, &s->accept_w);
}

/* accept failed for want of a resource (or worse): the listener stays readable, so
 * polling it again at once would spin.  Rest for ACCEPT_BACKOFF (conn_close
 * ends the rest early, since it frees a descriptor). */
static void accept_pause(http_server *s, int e) {
    char what[160];
    snprintf(what, sizeof what,
             "accept: %s: %zu connections open; new ones wait (raise the descriptor limit or set --max-connections)",
             strerror(e), s->n_conns);
    accept_warn(s, what);
    ev_io_stop(s->loop, &s->accept_w);
    ev_timer_set(&s->accept_retry_w, ACCEPT_BACKOFF, 0.);
    ev_timer_start(s->loop, &s->accept_retry_w);
    s->accept_paused = 1;
}

/* A connection past max_conns: a 503 if the socket takes it at once, then
 * close.  What the client already sent is read first, so that the close does
 * not turn into a reset that could destroy the 503 before the client reads it. */
static void conn_refuse(http_server *s, int fd) {
    static const char body[] = "{\"error\":{\"message\":\"too many connections: retry shortly\","
                               "\"type\":\"service_unavailable\",\"param\":null,\"code\":\"too_many_connections\"}}";
    char resp[512], sink[4096];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 503 Service Unavailable\r\nServer: llmq-gateway\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\nRetry-After: 1\r\n\r\n%s",
                     sizeof body - 1, body);
    for (int i = 0; i < 16 && recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0; i++) {
    }
    if (send(fd, resp, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) log_debug("http: refusing: %s", strerror(errno));
    shutdown(fd, SHUT_WR);
    close(fd);
    char what[128];
    snprintf(what, sizeof what, "refusing connections past --max-connections %zu (503)", s->lim.max_conns);
    accept_warn(s, what);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents) {
    http_server *s = container_of(w, http_server, accept_w);
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        int fd = accept4(s->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            if (e == EINTR || e == ECONNABORTED || e == EPROTO) continue; /* that client only */
            if (e == EAGAIN || e == EWOULDBLOCK) return;
            accept_pause(s, e); /* EMFILE, ENFILE, ENOBUFS, ENOMEM, or worse: never spin */
            return;
        }
        if (s->lim.max_conns && s->n_conns >= s->lim.max_conns) {
            conn_refuse(s, fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        http_server_adopt(s, fd);
    }
}

int http_server_adopt(http_server *s, int fd) {
    http_conn *c = s->shutting_down ? NULL : calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return -1;
    }
    c->srv = s;
    c->fd = fd;
    c->refs = 1;
    c->state = CS_READING;
    c->hwhich = H_NONE;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    ev_io_init(&c->rio, on_read, fd, EV_READ);
    ev_io_init(&c->wio, on_write, fd, EV_WRITE);
    ev_init(&c->timer, on_timer);
    c->timer.repeat = s->lim.idle_timeout;
    ev_timer_again(s->loop, &c->timer);
    ev_io_start(s->loop, &c->rio);
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->n_conns++;
    return 0;
}

/* ================================================================ server */

http_server *http_server_create(struct ev_loop *loop, const char *host, int port, const http_limits *lim,
                                http_handler_fn handler, http_log_fn log, void *ud, llmq_err *err) {
    parser_settings = (http_parser_settings){
        .on_message_begin = on_message_begin,
        .on_url = on_url,
        .on_header_field = on_header_field,
        .on_header_value = on_header_value,
        .on_headers_complete = on_headers_complete,
        .on_body = on_body,
        .on_message_complete = on_message_complete,
    };
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *ai = NULL;
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    int rc = getaddrinfo(host && *host ? host : NULL, portstr, &hints, &ai);
    if (rc != 0) {
        llmq_err_set(err, LLMQ_ERR_INVALID, "listen address %s:%d: %s", host, port, gai_strerror(rc));
        return NULL;
    }
    int fd = -1;
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 1024) == 0) break;
        llmq_err_set(err, LLMQ_ERR_IO, "listen on %s:%d: %s", host, port, strerror(errno));
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd < 0) {
        if (err && err->code == LLMQ_OK) llmq_err_set(err, LLMQ_ERR_IO, "listen on %s:%d: no usable address", host, port);
        return NULL;
    }
    http_server *s = calloc(1, sizeof *s);
    if (!s) {
        close(fd);
        llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory");
        return NULL;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    s->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                              : ((struct sockaddr_in *)&ss)->sin_port);
    s->loop = loop;
    s->fd = fd;
    s->lim = *lim;
    s->handler = handler;
    s->log = log;
    s->ud = ud;
    ev_io_init(&s->accept_w, on_accept, fd, EV_READ);
    ev_io_start(loop, &s->accept_w);
    ev_init(&s->accept_retry_w, on_accept_retry);
    return s;
}

int http_server_port(const http_server *s) { return s->port; }

size_t http_server_conn_count(const http_server *s) { return s->n_conns; }

void http_server_shutdown(http_server *s) {
    if (!s || s->shutting_down) return;
    s->shutting_down = 1;
    ev_io_stop(s->loop, &s->accept_w);
    ev_timer_stop(s->loop, &s->accept_retry_w);
    s->accept_paused = 0;
    if (s->fd >= 0) close(s->fd);
    s->fd = -1;
    http_conn *c = s->conns;
    while (c) {
        http_conn *next = c->next;
        if (c->state == CS_READING && !c->msg_started && c->in.len == c->in_off) conn_close(c);
        c = next;
    }
}

void http_server_destroy(http_server *s) {
    if (!s) return;
    http_server_shutdown(s);
    while (s->conns) conn_close(s->conns);
    free(s);
}
