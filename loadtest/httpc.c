/*
 * httpc.c — HTTP/1.1 client connections on libev (see httpc.h).
 *
 * A connection is in one of these states:
 *
 *   CONNECTING  non-blocking connect() in progress (watching EV_WRITE)
 *   SENDING     writing the request bytes (EV_WRITE)
 *   RECEIVING   reading and parsing the response (EV_READ)
 *   IDLE        in the keep-alive pool, no call (EV_READ: any event there
 *               means the server closed it or misbehaved, and it is closed)
 *   FAILED      failed before the loop ever saw it; `defer` reports it from
 *               the loop so that httpc_call_start never calls back
 *
 * Every connection is on the client's `all` list (so httpc_destroy finds
 * them) and idle ones also on the `idle` list.  A call and its connection
 * point at each other while the call is active; a callback is never made
 * while either pointer is stale: the call is detached (and the connection
 * closed or pooled) BEFORE on_done runs, because on_done may free the call
 * or start a new one on the very connection just pooled.
 */
#include "loadtest/httpc.h"

#include <errno.h>
#include <http_parser.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

#define HTTPC_READ_BUF 65536   /* bytes read per read() */
#define HTTPC_MAX_IDLE 4096    /* pooled keep-alive connections kept at most */

enum { C_CONNECTING, C_SENDING, C_RECEIVING, C_IDLE, C_FAILED };

struct httpc_conn {
    ev_io io;                    /* the socket watcher (first: container_of) */
    ev_timer defer;              /* FAILED: reports the failure from the loop */
    int fd;                      /* -1 in FAILED */
    int state;                   /* C_* */
    httpc *cli;
    httpc_call *call;            /* the call it carries; NULL when IDLE */
    size_t woff;                 /* request bytes written so far */
    size_t nread;                /* response bytes received for this call */
    int reused;                  /* this call was sent on a pooled connection */
    int complete;                /* the parser saw the end of the response */
    int keep_alive;              /* ... and the connection may be reused */
    int stop;                    /* on_body asked to end the call */
    double t_read;               /* monotonic time of the read being parsed, s */
    http_parser parser;
    char fail_kind[16];          /* FAILED: the error kind and message to report */
    char fail_msg[160];
    httpc_conn *iprev, *inext;   /* idle list */
    httpc_conn *aprev, *anext;   /* all list */
};

struct httpc {
    struct ev_loop *loop;
    struct sockaddr_storage addr;/* the server, resolved once */
    socklen_t addr_len;
    httpc_conn *idle;            /* pooled connections, most recent first */
    size_t n_idle;
    httpc_conn *all;             /* every open connection */
    httpc_stats st;
    char rbuf[HTTPC_READ_BUF];   /* shared read buffer (one loop, one thread) */
};

static double mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---------------------------------------------------------------- lists */

static void idle_remove(httpc *c, httpc_conn *k) {
    if (k->iprev) k->iprev->inext = k->inext;
    else if (c->idle == k) c->idle = k->inext;
    if (k->inext) k->inext->iprev = k->iprev;
    k->iprev = k->inext = NULL;
    c->n_idle--;
}

static void close_conn(httpc_conn *k) {
    httpc *c = k->cli;
    ev_io_stop(c->loop, &k->io);
    ev_timer_stop(c->loop, &k->defer);
    if (k->fd >= 0) close(k->fd);
    if (k->state == C_IDLE) idle_remove(c, k);
    if (k->aprev) k->aprev->anext = k->anext;
    else c->all = k->anext;
    if (k->anext) k->anext->aprev = k->aprev;
    c->st.open--;
    free(k);
}

/* ---------------------------------------------------------------- parser callbacks */

static int on_headers_complete(http_parser *p) {
    httpc_conn *k = p->data;
    httpc_call *call = k->call;
    if (call->h->on_status) call->h->on_status(call->ud, (int)p->status_code, k->t_read);
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
    httpc_conn *k = p->data;
    httpc_call *call = k->call;
    if (call->h->on_body && call->h->on_body(call->ud, at, len, k->t_read)) {
        k->stop = 1;
        return -1; /* makes http_parser_execute return at once */
    }
    return 0;
}

static int on_message_complete(http_parser *p) {
    httpc_conn *k = p->data;
    k->complete = 1;
    k->keep_alive = http_should_keep_alive(p);
    http_parser_pause(p, 1); /* whatever follows is not ours */
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---------------------------------------------------------------- call end */

static void call_detach(httpc_call *call) {
    free(call->req);
    call->req = NULL;
    call->conn = NULL;
    call->active = 0;
}

/* End the call with an error: close the connection, then tell the caller. */
static void fail(httpc_conn *k, const char *kind, const char *msg, double t) {
    httpc_call *call = k->call;
    k->call = NULL;
    close_conn(k);
    call_detach(call);
    call->h->on_done(call->ud, kind, msg, t);
}

/* The response is complete: pool or close the connection, then tell. */
static void succeed(httpc_conn *k, double t) {
    httpc *c = k->cli;
    httpc_call *call = k->call;
    k->call = NULL;
    if (k->keep_alive && c->n_idle < HTTPC_MAX_IDLE) {
        k->state = C_IDLE;
        k->inext = c->idle;
        k->iprev = NULL;
        if (c->idle) c->idle->iprev = k;
        c->idle = k;
        c->n_idle++;
        ev_io_stop(c->loop, &k->io);
        ev_io_set(&k->io, k->fd, EV_READ);
        ev_io_start(c->loop, &k->io);
    } else {
        close_conn(k);
    }
    call_detach(call);
    call->h->on_done(call->ud, NULL, NULL, t);
}

static void start_on_new_conn(httpc_call *call);

/* A stale pooled connection: send the request again on a fresh one, once;
 * otherwise fail with kind/msg. */
static void retry_or_fail(httpc_conn *k, const char *kind, const char *msg, double t) {
    httpc_call *call = k->call;
    if (k->reused && k->nread == 0 && !call->retried) {
        k->call = NULL;
        close_conn(k);
        call->retried = 1;
        call->conn = NULL;
        call->cli->st.retries++;
        start_on_new_conn(call);
        return;
    }
    fail(k, kind, msg, t);
}

/* ---------------------------------------------------------------- I/O */

static void do_write(httpc_conn *k) {
    httpc *c = k->cli;
    httpc_call *call = k->call;
    while (k->woff < call->req_len) {
        ssize_t w = send(k->fd, call->req + k->woff, call->req_len - k->woff, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == EINTR) continue;
            char msg[160];
            snprintf(msg, sizeof msg, "send: %s", strerror(errno));
            retry_or_fail(k, "io", msg, mono_now());
            return;
        }
        k->woff += (size_t)w;
    }
    k->state = C_RECEIVING;
    ev_io_stop(c->loop, &k->io);
    ev_io_set(&k->io, k->fd, EV_READ);
    ev_io_start(c->loop, &k->io);
}

static void do_read(httpc_conn *k) {
    httpc *c = k->cli;
    ssize_t n = read(k->fd, c->rbuf, sizeof c->rbuf);
    double t = mono_now();
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (k->state == C_IDLE) { /* closed by the server, or unexpected bytes */
        close_conn(k);
        return;
    }
    k->t_read = t;
    if (n > 0) {
        k->nread += (size_t)n;
        http_parser_execute(&k->parser, &parser_settings, c->rbuf, (size_t)n);
        if (k->stop) return fail(k, "aborted", "ended by the caller", t);
        if (k->complete) return succeed(k, t);
        enum http_errno e = HTTP_PARSER_ERRNO(&k->parser);
        if (e != HPE_OK) {
            char msg[160];
            snprintf(msg, sizeof msg, "bad HTTP response: %s", http_errno_description(e));
            fail(k, "http_parse", msg, t);
        }
        return;
    }
    if (n == 0) { /* EOF: completes a read-until-close body */
        http_parser_execute(&k->parser, &parser_settings, NULL, 0);
        if (k->stop) return fail(k, "aborted", "ended by the caller", t);
        if (k->complete) {
            k->keep_alive = 0;
            return succeed(k, t);
        }
        return retry_or_fail(k, "disconnected",
                             k->nread ? "the server closed the connection mid-response"
                                      : "the server closed the connection before answering",
                             t);
    }
    char msg[160];
    snprintf(msg, sizeof msg, "recv: %s", strerror(errno));
    retry_or_fail(k, errno == ECONNRESET ? "disconnected" : "io", msg, t);
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents) {
    httpc_conn *k = container_of(w, httpc_conn, io);
    if (k->state == C_CONNECTING) {
        int e = 0;
        socklen_t el = sizeof e;
        if (getsockopt(k->fd, SOL_SOCKET, SO_ERROR, &e, &el) < 0) e = errno;
        if (e) {
            char msg[160];
            snprintf(msg, sizeof msg, "connect: %s", strerror(e));
            fail(k, "connect", msg, mono_now());
            return;
        }
        k->state = C_SENDING;
    }
    if (k->state == C_SENDING) {
        if (revents & EV_WRITE) do_write(k);
        return;
    }
    if (revents & EV_READ) do_read(k);
}

static void on_defer(struct ev_loop *loop, ev_timer *w, int revents) {
    httpc_conn *k = container_of(w, httpc_conn, defer);
    fail(k, k->fail_kind, k->fail_msg, mono_now());
}

/* ---------------------------------------------------------------- starting */

static void attach(httpc_conn *k, httpc_call *call, int reused) {
    k->call = call;
    call->conn = k;
    k->woff = 0;
    k->nread = 0;
    k->reused = reused;
    k->complete = 0;
    k->keep_alive = 0;
    k->stop = 0;
    http_parser_init(&k->parser, HTTP_RESPONSE);
    k->parser.data = k;
}

static httpc_conn *conn_new(httpc *c) {
    httpc_conn *k = calloc(1, sizeof *k);
    if (!k) return NULL;
    k->cli = c;
    k->fd = -1;
    ev_init(&k->io, on_io);
    ev_init(&k->defer, on_defer);
    k->anext = c->all;
    if (c->all) c->all->aprev = k;
    c->all = k;
    c->st.open++;
    if (c->st.open > c->st.max_open) c->st.max_open = c->st.open;
    return k;
}

static void start_on_new_conn(httpc_call *call) {
    httpc *c = call->cli;
    httpc_conn *k = conn_new(c);
    if (!k) { /* no memory even for the failure report: tell from here */
        call_detach(call);
        call->h->on_done(call->ud, "nomem", "out of memory", mono_now());
        return;
    }
    attach(k, call, 0);
    c->st.connects++;
    k->fd = socket(c->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int rc = -1;
    if (k->fd >= 0) {
        int one = 1;
        setsockopt(k->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        rc = connect(k->fd, (struct sockaddr *)&c->addr, c->addr_len);
        if (rc < 0 && errno == EINPROGRESS) rc = 0;
    }
    if (rc < 0) {
        snprintf(k->fail_kind, sizeof k->fail_kind, "connect");
        snprintf(k->fail_msg, sizeof k->fail_msg, "%s: %s", k->fd < 0 ? "socket" : "connect", strerror(errno));
        if (k->fd >= 0) close(k->fd);
        k->fd = -1;
        k->state = C_FAILED;
        ev_timer_set(&k->defer, 0., 0.);
        ev_timer_start(c->loop, &k->defer);
        return;
    }
    k->state = C_CONNECTING;
    ev_io_set(&k->io, k->fd, EV_WRITE);
    ev_io_start(c->loop, &k->io);
}

void httpc_call_start(httpc *c, httpc_call *call, const char *req, size_t req_len, const httpc_handler *h, void *ud) {
    memset(call, 0, sizeof *call);
    call->cli = c;
    call->h = h;
    call->ud = ud;
    call->active = 1;
    call->req = malloc(req_len ? req_len : 1);
    if (call->req) memcpy(call->req, req, req_len);
    call->req_len = req_len;
    httpc_conn *k = c->idle;
    if (k && call->req) {
        idle_remove(c, k);
        c->st.reuses++;
        attach(k, call, 1);
        k->state = C_SENDING;
        ev_io_stop(c->loop, &k->io);
        ev_io_set(&k->io, k->fd, EV_WRITE);
        ev_io_start(c->loop, &k->io);
        return;
    }
    if (!call->req) { /* report from the loop, like every other failure */
        k = conn_new(c);
        if (!k) {
            call->active = 0;
            h->on_done(ud, "nomem", "out of memory", mono_now());
            return;
        }
        attach(k, call, 0);
        snprintf(k->fail_kind, sizeof k->fail_kind, "nomem");
        snprintf(k->fail_msg, sizeof k->fail_msg, "out of memory");
        k->state = C_FAILED;
        ev_timer_set(&k->defer, 0., 0.);
        ev_timer_start(c->loop, &k->defer);
        return;
    }
    start_on_new_conn(call);
}

void httpc_call_abort(httpc_call *call) {
    if (!call || !call->active) return;
    httpc_conn *k = call->conn;
    if (k) {
        k->call = NULL;
        close_conn(k);
    }
    call_detach(call);
}

/* ---------------------------------------------------------------- client */

httpc *httpc_create(struct ev_loop *loop, const char *host, int port, llmq_err *err) {
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    int rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0 || !res) {
        llmq_err_set(err, LLMQ_ERR_INVALID, "cannot resolve %s: %s", host, gai_strerror(rc));
        return NULL;
    }
    httpc *c = calloc(1, sizeof *c);
    if (!c) {
        freeaddrinfo(res);
        llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory");
        return NULL;
    }
    c->loop = loop;
    memcpy(&c->addr, res->ai_addr, res->ai_addrlen);
    c->addr_len = res->ai_addrlen;
    freeaddrinfo(res);
    return c;
}

void httpc_destroy(httpc *c) {
    if (!c) return;
    while (c->all) {
        httpc_conn *k = c->all;
        if (k->call) call_detach(k->call);
        k->call = NULL;
        close_conn(k);
    }
    free(c);
}

void httpc_get_stats(const httpc *c, httpc_stats *out) { *out = c->st; }
