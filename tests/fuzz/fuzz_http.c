/*
 * fuzz_http.c — the gateway's whole request path on arbitrary bytes: the
 * HTTP/1.1 server (gateway/http.c: http-parser, limits, keep-alive,
 * pipelining), the router and authentication (routes.c, auth.c), and the
 * routes with their JSON validation (routes_openai.c, routes_jobs.c,
 * submit.c).
 *
 * Setup: a real gateway object (gw) as main.c builds it, with one API key
 * ("Bearer fuzz-key") and the models "m1" and "org/model-7b", whose Redis
 * connections are simply never started: that is the gateway's real "Redis is
 * down" state (commands are refused, routes answer 503), no mock.  Each
 * input is one client connection: one end of a socketpair is handed to the
 * server (http_server_adopt), the input is written to the other end and the
 * write side shut, and the loop runs until the server has closed the
 * connection.
 *
 * Invariants besides "no crash, no leak, no UB":
 *  - the server closes the connection within a bounded number of loop turns
 *    after the client's EOF (nothing hangs, no call outlives its client);
 *  - what it wrote parses as a sequence of complete HTTP responses, one per
 *    response the server logged, with the logged status (a response to HEAD
 *    has no body); every application/json body is valid JSON; error bodies
 *    have OpenAI's shape.
 */
#include <errno.h>
#include <http_parser.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"
#include "gateway/gw.h"
#include "tests/fuzz/fuzz.h"

#define MAX_INPUT 60000        /* below http.c's MAX_PIPELINED: reading never stops */
#define MAX_TURNS 100000       /* loop turns after EOF before calling it a hang */

static gw g;

/* The responses the server logged for the current input, in order. */
#define MAX_LOGGED 1024
static struct { int method, status; } logged[MAX_LOGGED];
static size_t n_logged;

static void on_log(void *ud, const http_request *req, int status, double seconds) {
    if (n_logged < MAX_LOGGED) logged[n_logged].method = req->method, logged[n_logged].status = status;
    n_logged++;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    llmq_err err;
    llmq_err_clear(&err);
    log_set_level(LOG_ERROR);
    signal(SIGPIPE, SIG_IGN);
    memset(&g, 0, sizeof g);
    g.loop = ev_loop_new(EVFLAG_AUTO);
    g.cfg.max_body = 16 << 10; /* small enough that fuzzed inputs reach 413 */
    g.cfg.max_tokens_limit = 32768;
    g.cfg.drain_timeout = 1;
    if (!g.loop || keys_init(&g.keys, NULL, &err) || gw_inst_add(&g, "redis://127.0.0.1:1/0", &err) != 0)
        fuzz_fail("setup: %s", err.msg);
    if (gw_model_add(&g, "m1", 1) < 0 || gw_model_add(&g, "org/model-7b", 1) < 0) fuzz_fail("setup: models");
    unsetenv("LLMQ_API_KEY_FILE");
    setenv("LLMQ_API_KEYS", "fuzz-key", 1);
    if (gw_auth_init(&g.auth, NULL, &err) != LLMQ_OK || !gw_auth_enabled(&g.auth)) fuzz_fail("setup: %s", err.msg);
    g.reg = metrics_create();
    g.m.requests = metrics_counter(g.reg, "http_requests_total", "requests", "route,code");
    g.m.duration = metrics_histogram(g.reg, "http_request_duration_seconds", "duration", "route",
                                     metrics_latency_buckets, metrics_latency_nbuckets);
    g.m.submitted = metrics_counter(g.reg, "jobs_submitted_total", "submitted", "model_name");
    g.m.rejected = metrics_counter(g.reg, "queue_full_total", "rejected", "model_name");
    g.m.streams = metric_get(metrics_gauge(g.reg, "open_streams", "streams", NULL));
    g.m.redis_up = metric_get(metrics_gauge(g.reg, "redis_up", "up", NULL));
    g.m.connections = metric_get(metrics_gauge(g.reg, "http_connections", "conns", NULL));
    gw_redis_events evs = {&g, NULL, NULL, NULL, NULL, NULL};
    gw_inst *in = &g.inst[0];
    evs.ud = in;
    gw_redis_init(&in->redis, g.loop, &in->url, "llmq:gateway:anchor", &evs); /* never started: Redis is down */
    jobwatch_registry_init(&in->watches, &in->redis, &g.keys);
    http_limits lim = {.max_body = g.cfg.max_body, .idle_timeout = 75, .request_timeout = 30, .max_backlog = 8 << 20};
    g.http = http_server_create(g.loop, "127.0.0.1", 0, &lim, gw_route, on_log, &g, &err);
    if (!g.http) fuzz_fail("setup: %s", err.msg);
    return 0;
}

/* ---------------------------------------------------------------- responses */

typedef struct resp_check {
    size_t n_final;            /* final (non-1xx) responses seen so far */
    int head;                  /* the current one answers HEAD: no body */
    int in_message;            /* a response began and has not completed */
    int json;                  /* its Content-Type is application/json */
    int last_was_ctype;        /* the header being read is Content-Type */
    proto_buf body;
} resp_check;

static int r_begin(http_parser *p) {
    resp_check *rc = p->data;
    rc->in_message = 1;
    rc->json = 0;
    rc->head = 0;
    proto_buf_reset(&rc->body);
    return 0;
}

static int r_field(http_parser *p, const char *at, size_t n) {
    ((resp_check *)p->data)->last_was_ctype = n == 12 && !strncasecmp(at, "Content-Type", 12);
    return 0;
}

static int r_value(http_parser *p, const char *at, size_t n) {
    resp_check *rc = p->data;
    if (rc->last_was_ctype && n >= 16 && !strncmp(at, "application/json", 16)) rc->json = 1;
    return 0;
}

/* Match each final response with the next logged one: same status, and no
 * body after the head of a response to HEAD (return 1 = skip the body). */
static int r_headers_complete(http_parser *p) {
    resp_check *rc = p->data;
    if (p->status_code < 200) return 0;
    size_t k = rc->n_final++;
    fuzz_check(k < n_logged && k < MAX_LOGGED, "response %zu (status %u) was never logged", k, p->status_code);
    fuzz_check((int)p->status_code == logged[k].status, "response %zu has status %u, logged %d", k, p->status_code,
               logged[k].status);
    rc->head = logged[k].method == HTTP_HEAD;
    return rc->head;
}

static int r_body(http_parser *p, const char *at, size_t n) {
    return proto_buf_append(&((resp_check *)p->data)->body, at, n) == LLMQ_OK ? 0 : 1;
}

static int r_complete(http_parser *p) {
    resp_check *rc = p->data;
    rc->in_message = 0;
    if (!rc->json || rc->head) return 0;
    json_error_t je;
    json_t *v = json_loadb(rc->body.data ? rc->body.data : "", rc->body.len, 0, &je);
    fuzz_check(v, "response %u has an invalid JSON body: %s: %.*s", p->status_code, je.text, (int)rc->body.len,
               rc->body.data ? rc->body.data : "");
    /* errors in OpenAI's shape; the one other 4xx/5xx body is /readyz's */
    json_t *e = json_object_get(v, "error");
    const char *probe = json_string_value(json_object_get(v, "status"));
    if (p->status_code >= 400 && !(p->status_code == 503 && probe && !strcmp(probe, "not ready")))
        fuzz_check(json_is_object(e) && json_is_string(json_object_get(e, "message")) &&
                       json_is_string(json_object_get(e, "type")),
                   "error response %u is not in OpenAI's shape: %.*s", p->status_code, (int)rc->body.len,
                   rc->body.data);
    json_decref(v);
    return 0;
}

static void check_responses(const char *out, size_t len) {
    static const http_parser_settings s = {
        .on_message_begin = r_begin,
        .on_header_field = r_field,
        .on_header_value = r_value,
        .on_headers_complete = r_headers_complete,
        .on_body = r_body,
        .on_message_complete = r_complete,
    };
    resp_check rc;
    memset(&rc, 0, sizeof rc);
    http_parser p;
    http_parser_init(&p, HTTP_RESPONSE);
    p.data = &rc;
    size_t n = len ? http_parser_execute(&p, &s, out, len) : 0;
    fuzz_check(n == len && HTTP_PARSER_ERRNO(&p) == HPE_OK, "the server wrote a malformed response (%s) at %zu: %.*s",
               http_errno_name(HTTP_PARSER_ERRNO(&p)), n, (int)(len < 400 ? len : 400), out);
    fuzz_check(!rc.in_message, "the server closed in the middle of a response: %.*s", (int)(len < 400 ? len : 400),
               out);
    proto_buf_deinit(&rc.body);
}

/* ---------------------------------------------------------------- one connection */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > MAX_INPUT) return 0;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) fuzz_fail("socketpair");
    if (http_server_adopt(g.http, sv[0]) != 0) fuzz_fail("adopt");
    n_logged = 0;
    proto_buf out;
    proto_buf_init(&out);
    size_t off = 0;
    int shut = 0, closed = 0;
    for (long turn = 0; !closed; turn++) {
        if (off < size) {
            ssize_t n = send(sv[1], data + off, size - off, MSG_NOSIGNAL);
            if (n > 0) off += (size_t)n;
            else if (n < 0 && errno != EAGAIN && errno != EINTR) off = size; /* the server closed: stop */
        } else if (!shut) {
            shutdown(sv[1], SHUT_WR);
            shut = 1;
            turn = 0;
        }
        ev_run(g.loop, EVRUN_NOWAIT);
        for (;;) {
            char buf[16384];
            ssize_t n = recv(sv[1], buf, sizeof buf, 0);
            if (n > 0) {
                proto_buf_append(&out, buf, (size_t)n);
                continue;
            }
            if (n == 0) closed = 1;
            break;
        }
        if (shut && turn > MAX_TURNS)
            fuzz_fail("the server kept the connection %d turns after the client's EOF", MAX_TURNS);
    }
    close(sv[1]);
    /* a closed socket end means the server's conn_close ran: nothing may be left */
    fuzz_check(http_server_conn_count(g.http) == 0, "%zu connections left", http_server_conn_count(g.http));
    fuzz_check(g.inst[0].watches.n_watchers == 0, "%zu job watchers left", g.inst[0].watches.n_watchers);
    check_responses(out.data, out.len);
    proto_buf_deinit(&out);
    return 0;
}
