/*
 * gw.c — the pieces every route shares: request calls (lifetime across Redis
 * replies), JSON/error replies, SSE framing, the model list and its consumer
 * groups.  See gw.h for the call lifetime rules.
 */
#include "gateway/gw.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/jobops.h"
#include "common/log.h"
#include "common/utf8.h"

#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))
#define SSE_HEARTBEAT 15.0 /* s between SSE comments on a quiet stream */

int64_t gw_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

json_t *gw_json_text(const char *s, size_t n) {
    if (!s) return json_string("");
    json_t *v = json_stringn(s, n);
    if (v) return v;
    proto_buf b;
    proto_buf_init(&b);
    for (size_t i = 0; i < n;) {
        size_t k = llmq_utf8_seq(s + i, n - i);
        if (k) {
            proto_buf_append(&b, s + i, k);
            i += k;
        } else {
            proto_buf_append(&b, "\xef\xbf\xbd", 3);
            i++;
        }
    }
    v = json_stringn(b.data ? b.data : "", b.len);
    proto_buf_deinit(&b);
    return v ? v : json_string("");
}

/* ================================================================ calls */

static void on_client_gone(void *ud) { gw_call_finish(ud); }

gw_call *gw_call_new(gw *g, http_conn *c, http_request *req, size_t size, void (*cleanup)(gw_call *)) {
    gw_call *call = calloc(1, size);
    if (!call) return NULL;
    call->g = g;
    call->conn = c;
    call->req = req;
    call->refs = 1;
    call->cleanup = cleanup;
    proto_buf_init(&call->payload);
    http_conn_ref(c);
    http_conn_on_close(c, on_client_gone, call);
    return call;
}

void gw_call_ref(gw_call *call) { call->refs++; }

void gw_call_unref(gw_call *call) {
    if (--call->refs > 0) return;
    if (call->cleanup) call->cleanup(call);
    proto_buf_deinit(&call->payload);
    http_conn_unref(call->conn);
    free(call);
}

void gw_call_finish(gw_call *call) {
    if (call->done) return;
    call->done = 1;
    call->req = NULL;
    jobwatch_stop(call->watch);
    call->watch = NULL;
    if (call->streaming) {
        ev_timer_stop(call->g->loop, &call->heartbeat);
        metric_inc(call->g->m.streams, -1);
        call->streaming = 0;
    }
    gw_call_unref(call);
}

int gw_call_send(gw_call *call, const rcmd *c, redisCallbackFn *cb) {
    gw_call_ref(call);
    if (gw_redis_send(&call->g->redis, c, cb, call) != 0) {
        call->refs--; /* never 0 here: the caller holds the active ref */
        return -1;
    }
    return 0;
}

/* ================================================================ replies */

void gw_reply_json(http_conn *c, int status, json_t *v, const char *extra_headers) {
    char *s = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    if (!s) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}";
        http_respond(c, 500, "application/json", oom, sizeof oom - 1, NULL);
        return;
    }
    http_respond(c, status, "application/json", s, strlen(s), extra_headers);
    free(s);
}

void gw_reply_error(http_conn *c, int status, const char *type, const char *param, const char *code,
                    const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* messages quote what the client sent (a path, a model name): bytes that
     * need not be UTF-8, and a cut that may fall inside a character.  Drop a
     * character the cut split, replace what is not UTF-8 (json_pack's "s"
     * would refuse both, and the client would get a 500). */
    size_t len = n < 0 ? 0 : (size_t)n;
    if (len >= sizeof msg) {
        len = sizeof msg - 1;
        len -= llmq_utf8_incomplete_tail(msg, len);
    }
    json_t *e = json_pack("{s:{s:o, s:s, s:o, s:o}}", "error", "message", gw_json_text(msg, len), "type",
                          type ? type : "invalid_request_error",
                          "param", param ? json_string(param) : json_null(), "code", code ? json_string(code) : json_null());
    const char *extra = NULL;
    if (status == 401) extra = "WWW-Authenticate: Bearer\r\n";
    else if (status == 429 || status == 503) extra = "Retry-After: 1\r\n";
    gw_reply_json(c, status, e, extra);
}

void gw_reply_redis_down(http_conn *c) {
    gw_reply_error(c, 503, "service_unavailable", NULL, "redis_unavailable",
                   "the job queue (Redis) is unreachable; retry shortly");
}

/* ================================================================ SSE */

static void on_heartbeat(struct ev_loop *loop, ev_timer *w, int revents) {
    gw_call *call = container_of(w, gw_call, heartbeat);
    static const char ping[] = ": ping\n\n";
    if (http_stream_write(call->conn, ping, sizeof ping - 1) != 0) gw_call_finish(call);
}

void gw_sse_begin(gw_call *call) {
    http_stream_begin(call->conn, 200, "text/event-stream; charset=utf-8",
                      "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n");
    call->streaming = 1;
    metric_inc(call->g->m.streams, 1);
    ev_timer_init(&call->heartbeat, on_heartbeat, SSE_HEARTBEAT, SSE_HEARTBEAT);
    ev_timer_start(call->g->loop, &call->heartbeat);
}

int gw_sse_send(gw_call *call, int64_t id, const char *event, const char *data, size_t len) {
    proto_buf b;
    proto_buf_init(&b);
    char line[96];
    if (id >= 0) {
        int n = snprintf(line, sizeof line, "id: %lld\n", (long long)id);
        proto_buf_append(&b, line, (size_t)n);
    }
    if (event) {
        proto_buf_append(&b, "event: ", 7);
        proto_buf_append(&b, event, strlen(event));
        proto_buf_append(&b, "\n", 1);
    }
    /* one data: line per line of data (compact JSON has none, but be exact) */
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || data[i] == '\n') {
            proto_buf_append(&b, "data: ", 6);
            proto_buf_append(&b, data + start, i - start);
            proto_buf_append(&b, "\n", 1);
            start = i + 1;
        }
    }
    proto_buf_append(&b, "\n", 1);
    int rc = http_stream_write(call->conn, b.data, b.len);
    proto_buf_deinit(&b);
    if (rc == 0) ev_timer_again(call->g->loop, &call->heartbeat);
    return rc;
}

int gw_sse_send_json(gw_call *call, int64_t id, const char *event, json_t *v) {
    char *s = json_dumps(v, JSON_COMPACT);
    json_decref(v);
    if (!s) return -1;
    int rc = gw_sse_send(call, id, event, s, strlen(s));
    free(s);
    return rc;
}

void gw_sse_end(gw_call *call) {
    if (call->streaming) {
        ev_timer_stop(call->g->loop, &call->heartbeat);
        metric_inc(call->g->m.streams, -1);
        call->streaming = 0;
    }
    http_stream_end(call->conn);
}

/* ================================================================ models */

int gw_model_lookup(gw *g, const char *model) {
    for (size_t i = 0; i < g->n_models; i++)
        if (!strcmp(g->models[i], model)) return (int)i;
    if (g->models_fixed || !keys_model_valid(model) || g->n_models >= 4096) return -1;
    char **m = realloc(g->models, (g->n_models + 1) * sizeof *m);
    if (!m) return -1;
    g->models = m;
    unsigned char *ok = realloc(g->group_ok, g->n_models + 1);
    if (!ok) return -1;
    g->group_ok = ok;
    if (!(g->models[g->n_models] = strdup(model))) return -1;
    g->group_ok[g->n_models] = 0;
    log_info("accepting jobs for new model '%s'", model);
    return (int)g->n_models++;
}

static void on_group_created(redisAsyncContext *ac, void *reply, void *priv) {
    gw *g = container_of(ac->data, gw, redis);
    size_t i = (size_t)(uintptr_t)priv;
    redisReply *r = reply;
    if (i >= g->n_models) return;
    if (!r) {
        g->group_ok[i] = 0;
    } else if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0) {
        log_error("creating consumer group %s on model '%s': %s", PROTO_GROUP, g->models[i], r->str);
        g->group_ok[i] = 0;
    } else if (r->type != REDIS_REPLY_ERROR) {
        log_info("created consumer group '%s' for model '%s'", PROTO_GROUP, g->models[i]);
    }
}

void gw_ensure_groups(gw *g) {
    for (size_t i = 0; i < g->n_models; i++) {
        if (g->group_ok[i]) continue;
        rcmd c;
        jobops_keys kb;
        jobops_group_create(&c, &kb, &g->keys, g->models[i]);
        if (gw_redis_send(&g->redis, &c, on_group_created, (void *)(uintptr_t)i) == 0) g->group_ok[i] = 1;
    }
}
