/*
 * httpc.c — HTTP(S) calls on libcurl's multi interface and libev (see
 * httpc.h).
 *
 * The glue is curl's "socket action" API: CURLMOPT_SOCKETFUNCTION tells which
 * socket to watch for what (one ev_io per socket, attached to it with
 * curl_multi_assign), CURLMOPT_TIMERFUNCTION when curl next needs to run (one
 * ev_timer).  Either watcher firing calls curl_multi_socket_action, and then
 * every finished transfer is collected with curl_multi_info_read.  A finished
 * transfer's easy handle is removed and freed BEFORE on_done runs, because
 * on_done may free the call or start new ones.
 *
 * Sockets are opened and closed through curl's open/close socket callbacks
 * only to count connections (curl keeps idle ones in its pool without
 * telling the socket callback).
 */
#include "loadtest/httpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

#define HTTPC_MAX_SPARE 4096     /* easy handles kept for reuse at most */

struct httpc {
    struct ev_loop *loop;
    CURLM *multi;
    ev_timer timer;              /* curl's timeout */
    httpc_opts opts;
    httpc_call *calls;           /* active calls */
    CURL **spare;                /* finished easy handles, reset, for the next calls */
    size_t n_spare, cap_spare;
    httpc_stats st;
};

/* A socket curl asked us to watch. */
typedef struct sock_watch {
    ev_io io;
    httpc *c;
} sock_watch;

static double mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void calls_remove(httpc *c, httpc_call *call) {
    if (call->prev) call->prev->next = call->next;
    else if (c->calls == call) c->calls = call->next;
    if (call->next) call->next->prev = call->prev;
    call->prev = call->next = NULL;
}

/* An easy handle for a new call: a spare one (reusing a handle spares its
 * allocation and set-up on every request, as curl advises), else a new one. */
static CURL *easy_get(httpc *c) {
    return c->n_spare ? c->spare[--c->n_spare] : curl_easy_init();
}

static void easy_put(httpc *c, CURL *e) {
    curl_easy_reset(e);
    if (c->n_spare == c->cap_spare && c->cap_spare < HTTPC_MAX_SPARE) {
        size_t nc = c->cap_spare ? c->cap_spare * 2 : 64;
        CURL **ns = realloc(c->spare, nc * sizeof *ns);
        if (ns) {
            c->spare = ns;
            c->cap_spare = nc;
        }
    }
    if (c->n_spare < c->cap_spare) c->spare[c->n_spare++] = e;
    else curl_easy_cleanup(e);
}

/* Detach the call from curl and the client; nothing is called. */
static void call_release(httpc_call *call) {
    httpc *c = call->cli;
    ev_timer_stop(c->loop, &call->defer);
    if (call->easy) {
        curl_multi_remove_handle(c->multi, call->easy);
        easy_put(c, call->easy);
        call->easy = NULL;
    }
    calls_remove(c, call);
    call->active = 0;
}

/* ---------------------------------------------------------------- ending */

static const char *kind_of(CURLcode rc, int stopped) {
    switch (rc) {
    case CURLE_COULDNT_CONNECT: return "connect";
    case CURLE_COULDNT_RESOLVE_HOST: return "resolve";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_SHUTDOWN_FAILED: return "tls";
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE: return "disconnected";
    case CURLE_OPERATION_TIMEDOUT: return "timeout";
    case CURLE_OUT_OF_MEMORY: return "nomem";
    case CURLE_WRITE_ERROR: return stopped ? "aborted" : "io";
    default: return "io";
    }
}

static void report_status(httpc_call *call, double t) {
    if (call->status_sent) return;
    call->status_sent = 1;
    long code = 0;
    curl_easy_getinfo(call->easy, CURLINFO_RESPONSE_CODE, &code);
    if (call->h->on_status) call->h->on_status(call->ud, (int)code, t);
}

/* A transfer finished with rc: release it, then tell the caller. */
static void finish(httpc_call *call, CURLcode rc) {
    httpc *c = call->cli;
    double t = mono_now();
    long nconn = 0;
    curl_easy_getinfo(call->easy, CURLINFO_NUM_CONNECTS, &nconn);
    if (rc == CURLE_OK && nconn == 0) c->st.reuses++;
    if (rc == CURLE_OK) report_status(call, t);
    char msg[CURL_ERROR_SIZE + 64];
    const char *kind = NULL;
    if (rc != CURLE_OK) {
        kind = kind_of(rc, call->stopped);
        snprintf(msg, sizeof msg, "%s", call->stopped ? "ended by the caller"
                                        : call->errbuf[0] ? call->errbuf : curl_easy_strerror(rc));
    }
    call_release(call);
    call->h->on_done(call->ud, kind, kind ? msg : NULL, t);
}

static void collect_done(httpc *c) {
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(c->multi, &left))) {
        if (m->msg != CURLMSG_DONE) continue;
        CURLcode rc = m->data.result; /* m dies with the handle */
        httpc_call *call = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&call);
        finish(call, rc);
    }
}

/* ---------------------------------------------------------------- curl callbacks */

static void on_sock(struct ev_loop *loop, ev_io *w, int revents) {
    httpc *c = ((sock_watch *)w)->c; /* w may be freed inside socket_action */
    int action = (revents & EV_READ ? CURL_CSELECT_IN : 0) | (revents & EV_WRITE ? CURL_CSELECT_OUT : 0);
    int running;
    curl_multi_socket_action(c->multi, w->fd, action, &running);
    collect_done(c);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents) {
    httpc *c = container_of(w, httpc, timer);
    int running;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    collect_done(c);
}

static int sock_cb(CURL *e, curl_socket_t s, int what, void *userp, void *socketp) {
    httpc *c = userp;
    sock_watch *w = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (w) {
            ev_io_stop(c->loop, &w->io);
            curl_multi_assign(c->multi, s, NULL);
            free(w);
        }
        return 0;
    }
    int ev = (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
    if (!w) {
        w = calloc(1, sizeof *w);
        if (!w) return -1; /* curl fails the transfer */
        w->c = c;
        ev_io_init(&w->io, on_sock, s, ev);
        curl_multi_assign(c->multi, s, w);
    } else {
        ev_io_stop(c->loop, &w->io);
        ev_io_set(&w->io, s, ev);
    }
    ev_io_start(c->loop, &w->io);
    return 0;
}

static int timer_cb(CURLM *m, long timeout_ms, void *userp) {
    httpc *c = userp;
    ev_timer_stop(c->loop, &c->timer);
    if (timeout_ms >= 0) { /* 0: run as soon as the loop can, never from here */
        ev_timer_set(&c->timer, (double)timeout_ms / 1000.0, 0.);
        ev_timer_start(c->loop, &c->timer);
    }
    return 0;
}

static curl_socket_t open_cb(void *ud, curlsocktype purpose, struct curl_sockaddr *a) {
    httpc *c = ud;
    curl_socket_t s = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
    if (s == CURL_SOCKET_BAD) return s;
    c->st.connects++;
    if (++c->st.open > c->st.max_open) c->st.max_open = c->st.open;
    return s;
}

static int close_cb(void *ud, curl_socket_t s) {
    httpc *c = ud;
    c->st.open--;
    return close(s);
}

static size_t write_cb(char *data, size_t size, size_t n, void *ud) {
    httpc_call *call = ud;
    double t = mono_now();
    size_t len = size * n;
    report_status(call, t);
    if (call->h->on_body && call->h->on_body(call->ud, data, len, t)) {
        call->stopped = 1;
        return 0; /* not len: curl ends the transfer with CURLE_WRITE_ERROR */
    }
    return len;
}

/* ---------------------------------------------------------------- calls */

static void on_defer(struct ev_loop *loop, ev_timer *w, int revents) {
    httpc_call *call = container_of(w, httpc_call, defer);
    const char *kind = call->fail_kind;
    char msg[CURL_ERROR_SIZE];
    snprintf(msg, sizeof msg, "%s", call->errbuf);
    call_release(call);
    call->h->on_done(call->ud, kind, msg, mono_now());
}

static void fail_later(httpc_call *call, const char *kind, const char *msg) {
    call->fail_kind = kind;
    snprintf(call->errbuf, sizeof call->errbuf, "%s", msg);
    ev_timer_set(&call->defer, 0., 0.);
    ev_timer_start(call->cli->loop, &call->defer);
}

void httpc_call_start(httpc *c, httpc_call *call, const char *url, const struct curl_slist *headers,
                      const char *body, size_t len, const httpc_handler *h, void *ud) {
    memset(call, 0, sizeof *call);
    call->cli = c;
    call->h = h;
    call->ud = ud;
    call->active = 1;
    ev_init(&call->defer, on_defer);
    call->next = c->calls;
    if (c->calls) c->calls->prev = call;
    c->calls = call;
    CURL *e = easy_get(c);
    if (!e) return fail_later(call, "nomem", "out of memory");
    call->easy = e;
    CURLcode rc = CURLE_OK;
#define SET(opt, val) \
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, opt, val)
    SET(CURLOPT_URL, url);
    SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    SET(CURLOPT_HTTPHEADER, (struct curl_slist *)headers);
    SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    SET(CURLOPT_COPYPOSTFIELDS, body);
    SET(CURLOPT_WRITEFUNCTION, write_cb);
    SET(CURLOPT_WRITEDATA, call);
    SET(CURLOPT_PRIVATE, (char *)call);
    SET(CURLOPT_ERRORBUFFER, call->errbuf);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_OPENSOCKETFUNCTION, open_cb);
    SET(CURLOPT_OPENSOCKETDATA, c);
    SET(CURLOPT_CLOSESOCKETFUNCTION, close_cb);
    SET(CURLOPT_CLOSESOCKETDATA, c);
    if (c->opts.insecure) {
        SET(CURLOPT_SSL_VERIFYPEER, 0L);
        SET(CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (c->opts.cacert) SET(CURLOPT_CAINFO, c->opts.cacert);
#undef SET
    if (rc == CURLE_OK && curl_multi_add_handle(c->multi, e) != CURLM_OK) rc = CURLE_OUT_OF_MEMORY;
    if (rc != CURLE_OK) {
        easy_put(c, e);
        call->easy = NULL;
        fail_later(call, kind_of(rc, 0), curl_easy_strerror(rc));
    }
}

void httpc_call_abort(httpc_call *call) {
    if (call && call->active) call_release(call);
}

/* ---------------------------------------------------------------- client */

httpc *httpc_create(struct ev_loop *loop, const httpc_opts *opts, llmq_err *err) {
    httpc *c = calloc(1, sizeof *c);
    if (!c || !(c->multi = curl_multi_init())) {
        free(c);
        llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory");
        return NULL;
    }
    c->loop = loop;
    if (opts) c->opts = *opts;
    ev_init(&c->timer, on_timer);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    /* keep idle keep-alive connections for the next requests even when the
     * load drops (curl's default pool follows the transfers in progress) */
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, 4096L);
    return c;
}

void httpc_destroy(httpc *c) {
    if (!c) return;
    while (c->calls) call_release(c->calls);
    ev_timer_stop(c->loop, &c->timer);
    curl_multi_cleanup(c->multi); /* closes the pooled connections */
    for (size_t i = 0; i < c->n_spare; i++) curl_easy_cleanup(c->spare[i]);
    free(c->spare);
    free(c);
}

void httpc_get_stats(const httpc *c, httpc_stats *out) {
    *out = c->st;
}
