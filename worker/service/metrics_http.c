/* metrics_http.c — the /metrics, /readyz listener thread (see metrics_http.h).
 *
 * One thread polls non-blocking sockets: the listening one and up to
 * METRICS_HTTP_MAX_CONNS clients.  It shares two things with the service
 * loop: the metrics text (swapped under mu) and the ready flag (atomic).
 */
#include "worker/service/metrics_http.h"

#include "common/log.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum {
    REQ_MAX = 1024,    /* bytes of a request read: the request line is all that is routed on */
    TICK_MS = 100,     /* the thread's longest sleep: how soon it notices a stop */
};

/* One client connection: reading its request, then writing the answer. */
typedef struct hconn {
    int fd;                   /* -1: free slot */
    int64_t deadline_ms;      /* closed past it (CLOCK_MONOTONIC ms) */
    char req[REQ_MAX];        /* request bytes so far, NUL-terminated */
    size_t n_req;
    char *out;                /* the whole answer (head + body) once routed; owned */
    size_t n_out, off_out;    /* its length, bytes written */
    uint64_t opened;          /* accept order: the smallest is the oldest */
} hconn;

struct metrics_http {
    int listen_fd;
    pthread_t thread;
    atomic_int stop;          /* set by metrics_http_destroy */
    atomic_int ready;         /* Redis connected: /readyz 200, else 503 */
    pthread_mutex_t mu;       /* guards snapshot */
    char *snapshot;           /* the latest metrics text (owned), NULL before the first */
    size_t n_snapshot;
    hconn conns[METRICS_HTTP_MAX_CONNS];
    uint64_t accepted;
    int64_t rest_until_ms;    /* out of descriptors: the listener is not polled before this */
    int resting;              /* the current shortage was logged */
};

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void conn_close(hconn *c) {
    if (c->fd < 0) return;
    close(c->fd);
    free(c->out);
    c->fd = -1;
    c->out = NULL;
}

/* The answer to the request in c->req, into c->out.  Routes as the worker
 * always did: on the first bytes of the request line. */
static void conn_route(metrics_http *hs, hconn *c) {
    int code = 200;
    const char *body = "ok\n";
    size_t blen = 3;
    char *text = NULL;
    if (!strncmp(c->req, "GET /metrics", 12)) {
        pthread_mutex_lock(&hs->mu);
        blen = hs->n_snapshot;
        text = malloc(blen ? blen : 1);
        if (text && blen) memcpy(text, hs->snapshot, blen);
        pthread_mutex_unlock(&hs->mu);
        body = text;
        if (!text) {
            code = 503;
            body = "out of memory\n";
            blen = strlen(body);
        }
    } else if (!strncmp(c->req, "GET /readyz", 11) || !strncmp(c->req, "GET /healthz", 12)) {
        if (!atomic_load(&hs->ready)) {
            code = 503;
            body = "redis unreachable\n";
            blen = strlen(body);
        }
    } else {
        code = 404;
        body = "not found\n";
        blen = strlen(body);
    }
    char head[256];
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: %zu\r\n"
                      "Connection: close\r\n\r\n",
                      code, code == 200 ? "OK" : code == 404 ? "Not Found" : "Service Unavailable", blen);
    c->out = malloc((size_t)hl + blen);
    if (c->out) {
        memcpy(c->out, head, (size_t)hl);
        memcpy(c->out + hl, body, blen);
        c->n_out = (size_t)hl + blen;
        c->off_out = 0;
    }
    free(text);
}

/* Take every waiting connection; when all slots are taken, the oldest
 * connection makes room (a client that holds slots open only ever delays
 * its own oldest ones). */
static void accept_all(metrics_http *hs, int64_t now) {
    for (;;) {
        int fd = accept4(hs->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            /* Out of descriptors the waiting connection stays queued and the
             * listener readable: polling it again at once would spin.  Rest it
             * for a tick; what we hold times out and frees descriptors. */
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                hs->rest_until_ms = now + TICK_MS;
                if (!hs->resting)
                    log_warn("metrics listener: accept: %s; new connections wait", strerror(errno));
                hs->resting = 1;
            }
            return;
        }
        hs->resting = 0;
        hconn *slot = NULL, *oldest = NULL;
        for (int i = 0; i < METRICS_HTTP_MAX_CONNS && !slot; i++) {
            hconn *c = &hs->conns[i];
            if (c->fd < 0) slot = c;
            else if (!oldest || c->opened < oldest->opened) oldest = c;
        }
        if (!slot) {
            conn_close(oldest);
            slot = oldest;
        }
        memset(slot, 0, sizeof *slot);
        slot->fd = fd;
        slot->deadline_ms = now + METRICS_HTTP_IDLE_MS;
        slot->opened = ++hs->accepted;
    }
}

/* Move c on as far as it goes without waiting. */
static void conn_work(metrics_http *hs, hconn *c) {
    if (!c->out) {
        ssize_t n = read(c->fd, c->req + c->n_req, sizeof c->req - 1 - c->n_req);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            conn_close(c);
            return;
        }
        if (n < 0) return;
        c->n_req += (size_t)n;
        c->req[c->n_req] = '\0';
        if (!memchr(c->req, '\n', c->n_req) && c->n_req < sizeof c->req - 1) return; /* no request line yet */
        conn_route(hs, c);
        if (!c->out) {
            conn_close(c);
            return;
        }
    }
    while (c->off_out < c->n_out) {
        ssize_t w = write(c->fd, c->out + c->off_out, c->n_out - c->off_out);
        if (w < 0 && (errno == EAGAIN || errno == EINTR)) return;
        if (w <= 0) break;
        c->off_out += (size_t)w;
    }
    conn_close(c);
}

static void *metrics_http_main(void *arg) {
    metrics_http *hs = arg;
    struct pollfd pf[1 + METRICS_HTTP_MAX_CONNS];
    hconn *of[1 + METRICS_HTTP_MAX_CONNS];
    while (!atomic_load(&hs->stop)) {
        int64_t now = mono_ms();
        int n = 0, timeout = TICK_MS;
        /* a negative descriptor is skipped by poll: the listener while it rests */
        int rest = hs->rest_until_ms > now;
        pf[n] = (struct pollfd){rest ? -1 : hs->listen_fd, POLLIN, 0};
        of[n++] = NULL;
        if (rest && hs->rest_until_ms - now < timeout) timeout = (int)(hs->rest_until_ms - now);
        for (int i = 0; i < METRICS_HTTP_MAX_CONNS; i++) {
            hconn *c = &hs->conns[i];
            if (c->fd < 0) continue;
            if (now >= c->deadline_ms) {
                conn_close(c);
                continue;
            }
            if (c->deadline_ms - now < timeout) timeout = (int)(c->deadline_ms - now);
            pf[n] = (struct pollfd){c->fd, c->out ? POLLOUT : POLLIN, 0};
            of[n++] = c;
        }
        if (poll(pf, (nfds_t)n, timeout) <= 0) continue;
        for (int i = 1; i < n; i++)
            if (pf[i].revents) conn_work(hs, of[i]);
        if (pf[0].revents & POLLIN) accept_all(hs, mono_ms());
    }
    return NULL;
}

/* A listening socket on addr:port (numeric or a name; IPv4 or IPv6). */
static int listen_on(const char *addr, int port, llmq_err *err) {
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    int gai = getaddrinfo(addr, ps, &hints, &res);
    if (gai) {
        llmq_err_set(err, LLMQ_ERR_INVALID, "metrics address '%s': %s", addr, gai_strerror(gai));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) || listen(fd, 64)) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) llmq_err_set(err, LLMQ_ERR_IO, "cannot listen on metrics address %s port %d: %s", addr, port,
                             strerror(errno));
    return fd;
}

metrics_http *metrics_http_create(const char *addr, int port, llmq_err *err) {
    metrics_http *h = calloc(1, sizeof *h);
    if (!h) {
        llmq_err_set(err, LLMQ_ERR_NOMEM, "metrics listener: out of memory");
        return NULL;
    }
    for (int i = 0; i < METRICS_HTTP_MAX_CONNS; i++) h->conns[i].fd = -1;
    if ((h->listen_fd = listen_on(addr, port, err)) < 0) {
        free(h);
        return NULL;
    }
    pthread_mutex_init(&h->mu, NULL);
    if (pthread_create(&h->thread, NULL, metrics_http_main, h)) {
        close(h->listen_fd);
        pthread_mutex_destroy(&h->mu);
        free(h);
        llmq_err_set(err, LLMQ_ERR_INTERNAL, "metrics listener: cannot start its thread");
        return NULL;
    }
    return h;
}

void metrics_http_destroy(metrics_http *h) {
    if (!h) return;
    atomic_store(&h->stop, 1);
    pthread_join(h->thread, NULL);
    for (int i = 0; i < METRICS_HTTP_MAX_CONNS; i++) conn_close(&h->conns[i]);
    close(h->listen_fd);
    pthread_mutex_destroy(&h->mu);
    free(h->snapshot);
    free(h);
}

void metrics_http_set_ready(metrics_http *h, int ready) { atomic_store(&h->ready, ready); }

void metrics_http_set_text(metrics_http *h, char *text, size_t len) {
    pthread_mutex_lock(&h->mu);
    char *old = h->snapshot;
    h->snapshot = text;
    h->n_snapshot = len;
    pthread_mutex_unlock(&h->mu);
    free(old);
}
