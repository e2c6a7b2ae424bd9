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

#include "common/heartbeat.h"
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

int gw_call_send(gw_call *call, const rcmd *c, redisCallbackFn *cb) { return gw_call_send_to(call, call->inst, c, cb); }

int gw_call_send_to(gw_call *call, int inst, const rcmd *c, redisCallbackFn *cb) {
    gw_call_ref(call);
    if (gw_redis_send(&call->g->inst[inst].redis, c, cb, call) != 0) {
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

__attribute__((format(printf, 7, 0))) static void reply_error_v(http_conn *c, int status, int retry_after_s,
                                                                 const char *type, const char *param,
                                                                 const char *code, const char *fmt, va_list ap) {
    char msg[1024];
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
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
    char extra[64] = "";
    if (status == 401) snprintf(extra, sizeof extra, "WWW-Authenticate: Bearer\r\n");
    else if (status == 429 || status == 503) snprintf(extra, sizeof extra, "Retry-After: %d\r\n", retry_after_s);
    gw_reply_json(c, status, e, extra[0] ? extra : NULL);
}

void gw_reply_error(http_conn *c, int status, const char *type, const char *param, const char *code,
                    const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    reply_error_v(c, status, 1, type, param, code, fmt, ap);
    va_end(ap);
}

void gw_reply_error_after(http_conn *c, int status, int retry_after_s, const char *type, const char *param,
                          const char *code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    reply_error_v(c, status, retry_after_s > 0 ? retry_after_s : 1, type, param, code, fmt, ap);
    va_end(ap);
}

void gw_reply_redis_down(http_conn *c) {
    gw_reply_error(c, 503, "service_unavailable", NULL, "redis_unavailable",
                   "the job queue (Redis) is unreachable or full; retry shortly");
}

/* A Redis at maxmemory (noeviction) refuses every write: the queue is full
 * for a while, not broken, so the client is told to come back (503) and
 * load balancers to send it elsewhere (/readyz).  Inside MULTI the refusal
 * of HSET/XADD comes back as EXECABORT at EXEC (the commands were refused
 * when queued: OOM, or READONLY on a replica after a failover, both
 * passing), and from a script as the command's own OOM error. */
int gw_redis_error_status(gw *g, int inst, const char *err) {
    if (!err) return 500;
    if (strncmp(err, "OOM", 3) && strncmp(err, "EXECABORT", 9) && !strstr(err, "OOM command not allowed"))
        return 500;
    int64_t now = gw_now_ms();
    gw_inst *in = &g->inst[inst];
    if (now - in->redis_full_ms > 10000) /* once per episode */
        log_warn("redis%s%s refuses writes: %.200s", g->n_inst > 1 ? " " : "", g->n_inst > 1 ? in->name : "", err);
    in->redis_full_ms = now;
    return 503;
}

/* ================================================================ SSE */

static void on_heartbeat(struct ev_loop *loop, ev_timer *w, int revents) {
    gw_call *call = container_of(w, gw_call, heartbeat);
    static const char ping[] = ": ping\n\n";
    /* a failed write may close the connection, whose close hook finishes
     * the call: hold it until we are done with it */
    gw_call_ref(call);
    if (http_stream_write(call->conn, ping, sizeof ping - 1) != 0) gw_call_finish(call);
    gw_call_unref(call);
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

void gw_sse_gap(void *ud, int64_t from, int64_t to) {
    gw_call *call = ud;
    char msg[256];
    snprintf(msg, sizeof msg, "chunks %lld to %lld of job %s are no longer in Redis (its output stream was "
             "trimmed): the text misses them here", (long long)from, (long long)to - 1, call->id);
    json_t *e = json_pack("{s:{s:s, s:s, s:n, s:s}, s:I, s:I}", "error", "message", msg, "type", "server_error",
                          "param", "code", "output_trimmed", "missing_from", (json_int_t)from, "missing_to",
                          (json_int_t)(to - 1));
    gw_call_ref(call); /* a failed write closes the connection, whose hook finishes the call */
    if (e) gw_sse_send_json(call, -1, "error", e);
    gw_call_unref(call);
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
        if (!strcmp(g->models[i].name, model)) return (int)i;
    return -1;
}

int gw_model_add(gw *g, const char *model, int configured) {
    int i = gw_model_lookup(g, model);
    if (i >= 0) {
        g->models[i].configured |= configured;
        return i;
    }
    if (!keys_model_valid(model) || g->n_models >= GW_MAX_MODELS) return -1;
    gw_model *m = realloc(g->models, (g->n_models + 1) * sizeof *m);
    if (!m) return -1;
    g->models = m;
    m = &g->models[g->n_models];
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", model);
    m->inst = gw_inst_for_model(g, model);
    m->configured = configured;
    return (int)g->n_models++;
}

/* The served set in words, for the log: "a (2 workers, context 512), b (--models, no worker)". */
static void models_describe(gw *g, char *buf, size_t cap) {
    size_t n = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < g->n_models && n < cap; i++) {
        const gw_model *m = &g->models[i];
        char ctx[32] = "";
        if (m->max_model_len) snprintf(ctx, sizeof ctx, ", context %d", m->max_model_len);
        char on[32] = "";
        if (g->n_inst > 1) snprintf(on, sizeof on, ", redis %s", g->inst[m->inst].name);
        int k = snprintf(buf + n, cap - n, "%s%s (%s%d worker%s%s%s)", i ? ", " : "", m->name,
                         m->configured ? "--models, " : "", m->workers, m->workers == 1 ? "" : "s", ctx, on);
        if (k < 0) break;
        n += (size_t)k;
    }
    if (!g->n_models) snprintf(buf, cap, "none (no --models and no live worker)");
}

/* Requests held by gw_models_retry until a read of the heartbeats. */
typedef struct gw_miss {
    gw_call base;
    struct gw_miss *next;
} gw_miss;

/* Route the held requests again, or answer them 503 when the read failed. */
static void miss_release(gw *g, gw_miss *list, int read_ok) {
    while (list) {
        gw_miss *m = list;
        list = m->next;
        gw_call *call = &m->base;
        http_conn *c = call->conn;
        http_request *req = call->req;
        if (!call->done) {
            http_conn_ref(c); /* past gw_call_finish, whose unref may be the last but the server's */
            http_conn_on_close(c, NULL, NULL);
            gw_call_finish(call);
            if (!read_ok) {
                gw_reply_redis_down(c);
            } else {
                g->redispatch = 1;
                gw_route(g, c, req);
                g->redispatch = 0;
            }
            http_conn_unref(c);
        }
        gw_call_unref(call); /* the list's reference */
    }
}

/* The heartbeats of one instance (HGETALL <prefix>workers there) into the
 * table: the live models it carries (gw_inst_for_model) are added, those of
 * its models no live worker names any more leave it unless configured.  The
 * models of an instance that could not be read stay as they were (their
 * requests get the instance's 503, not a 404).  A round of reads ends with
 * the last instance's reply: then the change is logged and held requests
 * are routed again. */
static void on_heartbeats(redisAsyncContext *ac, void *reply, void *priv) {
    gw_inst *in = priv;
    gw *g = in->g;
    redisReply *r = reply;
    g->models_reading--;
    if (r) g->models_answered = 1;
    int *ctx = r && r->type == REDIS_REPLY_ARRAY ? calloc(g->n_models + r->elements / 2 + 1, sizeof *ctx) : NULL;
    if (ctx) { /* ctx: the smallest context reported per entry of the table */
        int64_t now = gw_now_ms();
        int full = 0, misrouted = 0;
        in->hb_read_ok = 1;
        for (size_t i = 0; i < g->n_models; i++)
            if (g->models[i].inst == in->idx) g->models[i].workers = 0;
        for (size_t i = 0; i + 1 < r->elements; i += 2) {
            const redisReply *v = r->element[i + 1];
            hb_info hb;
            if (v->type != REDIS_REPLY_STRING || hb_parse(&hb, v->str, v->len, NULL) != LLMQ_OK ||
                !hb_live(hb.ts_ms, now))
                continue;
            if (gw_inst_for_model(g, hb.model) != in->idx) { /* its jobs would go to another instance */
                misrouted++;
                continue;
            }
            int k = gw_model_lookup(g, hb.model);
            if (k < 0) {
                if ((k = gw_model_add(g, hb.model, 0)) < 0) {
                    full++;
                    continue;
                }
                g->models_changed = 1;
            }
            g->models[k].workers++;
            if (hb.max_model_len > 0 && (ctx[k] == 0 || hb.max_model_len < ctx[k])) ctx[k] = hb.max_model_len;
        }
        size_t n = 0;
        for (size_t i = 0; i < g->n_models; i++) {
            gw_model *m = &g->models[i];
            if (m->inst != in->idx) {
                g->models[n++] = *m;
                continue;
            }
            if (ctx[i] && ctx[i] != m->max_model_len) g->models_changed = 1;
            if (ctx[i] || !m->configured) m->max_model_len = ctx[i];
            if (!m->workers && !m->configured) { /* its last worker went away */
                log_info("model '%s' is no longer served: no live worker heartbeat names it", m->name);
                g->models_changed = 1;
                continue;
            }
            g->models[n++] = *m;
        }
        g->n_models = n;
        free(ctx);
        /* said once per change, not every second */
        if (full != in->hb_left_out && full)
            log_warn("the model table is full (%d models): %d heartbeats name models left out", GW_MAX_MODELS, full);
        in->hb_left_out = full;
        if (misrouted != in->hb_misrouted && misrouted)
            log_warn("%d live workers on Redis instance %s serve models that --redis-for routes to another "
                     "instance: ignored (point them at their model's instance)", misrouted, in->name);
        in->hb_misrouted = misrouted;
    } else if (r) { /* the table stays as it was; held requests get their 404 */
        log_warn("reading the worker heartbeats%s%s: %s", g->n_inst > 1 ? " of instance " : "",
                 g->n_inst > 1 ? in->name : "",
                 r->type == REDIS_REPLY_ERROR ? r->str : r->type == REDIS_REPLY_ARRAY ? "out of memory"
                                                                                     : "unexpected reply");
    }
    if (g->models_reading > 0) return; /* the round ends with its last reply */
    gw_miss *waiting = g->miss_sent;
    g->miss_sent = NULL;
    int answered = g->models_answered, read_ok = 0;
    for (size_t i = 0; i < g->n_inst; i++) read_ok |= g->inst[i].hb_read_ok;
    if (read_ok) {
        if (g->models_changed || !g->models_read_once) {
            char what[2048];
            models_describe(g, what, sizeof what);
            log_info("%s: %s", g->models_read_once ? "served models now" : "served models", what);
        }
        g->models_changed = 0;
        g->models_read_once = 1;
        gw_ensure_groups(g);
    }
    /* requests that came while this read was in flight wait for one sent after them */
    if (g->miss_next) {
        g->miss_sent = g->miss_next;
        g->miss_next = NULL;
        gw_models_read(g);
        if (!g->models_reading) { /* could not send: Redis is down */
            gw_miss *late = g->miss_sent;
            g->miss_sent = NULL;
            miss_release(g, late, 0);
        }
    }
    miss_release(g, waiting, answered);
}

/* One round: every instance that is up is read. */
void gw_models_read(gw *g) {
    if (g->models_reading) return;
    char key[KEYS_MAX];
    keys_workers(&g->keys, key, sizeof key);
    g->models_answered = 0;
    for (size_t i = 0; i < g->n_inst; i++) {
        rcmd c;
        rcmd_init(&c);
        rcmd_str(&c, "HGETALL");
        rcmd_str(&c, key);
        g->inst[i].hb_read_ok = 0;
        if (gw_redis_send(&g->inst[i].redis, &c, on_heartbeats, &g->inst[i]) == 0) g->models_reading++;
    }
}

static void on_models_timer(struct ev_loop *loop, ev_timer *w, int revents) {
    gw_models_read(container_of(w, gw, models_w));
}

void gw_models_start(gw *g) {
    ev_timer_init(&g->models_w, on_models_timer, 0., GW_MODELS_READ_S);
    ev_timer_start(g->loop, &g->models_w);
}

void gw_models_stop(gw *g) { ev_timer_stop(g->loop, &g->models_w); }

int gw_models_retry(gw *g, http_conn *c) {
    if (g->redispatch || g->dispatching != c || !g->dispatching_req) return 0;
    gw_miss *m = (gw_miss *)gw_call_new(g, c, g->dispatching_req, sizeof *m, NULL);
    if (!m) return 0;
    gw_call_ref(&m->base); /* the list's */
    if (g->models_reading) { /* that read may have been sent before this request came */
        m->next = g->miss_next;
        g->miss_next = m;
        return 1;
    }
    m->next = g->miss_sent;
    g->miss_sent = m;
    gw_models_read(g);
    if (!g->models_reading) {
        g->miss_sent = m->next;
        m->next = NULL;
        miss_release(g, m, 0);
    }
    return 1;
}

static void on_group_created(redisAsyncContext *ac, void *reply, void *priv) {
    gw *g = gw_inst_of(ac)->g;
    size_t i = (size_t)(uintptr_t)priv; /* the table may have changed since: at worst a group is created twice */
    redisReply *r = reply;
    if (i >= g->n_models) return;
    if (!r) {
        g->models[i].group_ok = 0;
    } else if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0) {
        log_error("creating consumer group %s on model '%s': %s", PROTO_GROUP, g->models[i].name, r->str);
        g->models[i].group_ok = 0;
    } else if (r->type != REDIS_REPLY_ERROR) {
        log_info("created consumer group '%s' for model '%s'", PROTO_GROUP, g->models[i].name);
    }
}

void gw_ensure_groups(gw *g) {
    for (size_t i = 0; i < g->n_models; i++) {
        if (g->models[i].group_ok) continue;
        rcmd c;
        jobops_keys kb;
        jobops_group_create(&c, &kb, &g->keys, g->models[i].name);
        if (gw_redis_send(&g->inst[g->models[i].inst].redis, &c, on_group_created, (void *)(uintptr_t)i) == 0)
            g->models[i].group_ok = 1;
    }
}
