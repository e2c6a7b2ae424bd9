/*
 * routes.c — the router (method + path → handler), bearer-key checks, and
 * the operational endpoints: /healthz, /readyz, /health, /version, /metrics,
 * /v1/models.  /health and /version answer as vLLM's do (200 with an empty
 * body / {"version": ...}), for clients and probes written against vLLM.
 *
 * Authentication covers everything under /v1/; the probes and /metrics are
 * open (they reveal nothing about jobs).  The keys and their constant-time
 * check live in gateway/auth.c.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <http_parser.h>

#include "common/log.h"
#include "gateway/gw.h"

static void method_not_allowed(http_conn *c, const char *allow) {
    char extra[64];
    snprintf(extra, sizeof extra, "Allow: %s\r\n", allow);
    json_t *e = json_pack("{s:{s:s, s:s, s:n, s:n}}", "error", "message", "method not allowed", "type",
                          "invalid_request_error", "param", "code");
    gw_reply_json(c, 405, e, extra);
}

/* A route that names a model (0 completions, 1 chat, 2 jobs, 3 tokenize,
 * 4 detokenize), with the request noted so that a model missing from the
 * table can be held for a fresh read of the heartbeats and routed again
 * (gw_models_retry). */
static void dispatch_submit(gw *g, http_conn *c, http_request *req, int which) {
    g->dispatching = c;
    g->dispatching_req = req;
    if (which == 2) gw_route_jobs_submit(g, c, req);
    else if (which >= 3) gw_route_tok(g, c, req, which == 4);
    else gw_route_openai(g, c, req, which);
    g->dispatching = NULL;
    g->dispatching_req = NULL;
}

void gw_route(void *ud, http_conn *c, http_request *req) {
    gw *g = ud;
    const char *p = req->path;
    int m = req->method;

    if (!strcmp(p, "/healthz")) {
        req->route = "/healthz";
        if (m != HTTP_GET) return method_not_allowed(c, "GET");
        return gw_reply_json(c, 200, json_pack("{s:s}", "status", "ok"), NULL);
    }
    if (!strcmp(p, "/readyz")) {
        req->route = "/readyz";
        if (m != HTTP_GET) return method_not_allowed(c, "GET");
        return gw_route_readyz(g, c, req);
    }
    if (!strcmp(p, "/health")) {
        req->route = "/health";
        if (m != HTTP_GET) return method_not_allowed(c, "GET");
        return gw_route_health(g, c, req);
    }
    if (!strcmp(p, "/version")) {
        req->route = "/version";
        if (m != HTTP_GET) return method_not_allowed(c, "GET");
        return gw_reply_json(c, 200, json_pack("{s:s}", "version", LLMQ_VERSION), NULL);
    }
    if (!strcmp(p, "/metrics")) {
        req->route = "/metrics";
        if (m != HTTP_GET) return method_not_allowed(c, "GET");
        return gw_route_metrics(g, c, req);
    }
    if (!strcmp(p, "/tokenize") || !strcmp(p, "/detokenize")) return dispatch_submit(g, c, req, p[1] == 'd' ? 4 : 3);
    if (strncmp(p, "/v1/", 4) != 0) {
        req->route = "(unknown)";
        return gw_reply_error(c, 404, "invalid_request_error", NULL, "not_found", "no route for %s %s",
                              req->method_name, p);
    }
    if (!gw_auth_check(&g->auth, req->authorization)) {
        req->route = "(unauthorized)";
        return gw_reply_error(c, 401, "invalid_request_error", NULL, "invalid_api_key",
                              req->authorization ? "Incorrect API key provided"
                                                 : "Missing API key: send 'Authorization: Bearer <key>'");
    }
    if (g->shutting_down && m == HTTP_POST) {
        req->route = "(shutdown)";
        return gw_reply_error(c, 503, "service_unavailable", NULL, "shutting_down", "the gateway is shutting down");
    }
    if (!strcmp(p, "/v1/completions") || !strcmp(p, "/v1/chat/completions")) {
        int chat = p[4] == 'c' && p[5] == 'h';
        req->route = chat ? "/v1/chat/completions" : "/v1/completions";
        if (m != HTTP_POST) return method_not_allowed(c, "POST");
        return dispatch_submit(g, c, req, chat ? 1 : 0);
    }
    if (!strcmp(p, "/v1/models") || !strncmp(p, "/v1/models/", 11)) {
        req->route = "/v1/models";
        if (m != HTTP_GET) return method_not_allowed(c, "GET");
        return gw_route_models(g, c, req);
    }
    if (!strcmp(p, "/v1/jobs")) {
        req->route = "/v1/jobs";
        if (m != HTTP_POST) return method_not_allowed(c, "POST");
        return dispatch_submit(g, c, req, 2);
    }
    if (!strncmp(p, "/v1/jobs/", 9)) {
        char id[PROTO_MAX_ID_LEN + 1];
        const char *rest = p + 9;
        size_t n = strcspn(rest, "/");
        int events = !strcmp(rest + n, "/events");
        if (n == 0 || n > PROTO_MAX_ID_LEN || (rest[n] && !events)) {
            req->route = "(unknown)";
            return gw_reply_error(c, 404, "invalid_request_error", NULL, "not_found", "no route for %s %s",
                                  req->method_name, p);
        }
        memcpy(id, rest, n);
        id[n] = '\0';
        req->route = events ? "/v1/jobs/{id}/events" : "/v1/jobs/{id}";
        if (!keys_id_valid(id))
            return gw_reply_error(c, 404, "invalid_request_error", "id", "job_not_found", "no job with id '%s'", id);
        int inst = gw_inst_for_id(g, id); /* its instance lost: that 503 names it */
        if (g->n_inst > 1 && !g->inst[inst].redis.cmd_ready) {
            char what[PROTO_MAX_ID_LEN + 8];
            snprintf(what, sizeof what, "job %s", id);
            return gw_reply_inst_down(g, c, inst, what);
        }
        if (events) {
            if (m != HTTP_GET) return method_not_allowed(c, "GET");
            return gw_route_jobs_events(g, c, req, id);
        }
        if (m == HTTP_GET) return gw_route_jobs_get(g, c, req, id);
        if (m == HTTP_DELETE) return gw_route_jobs_cancel(g, c, req, id);
        return method_not_allowed(c, "GET, DELETE");
    }
    req->route = "(unknown)";
    gw_reply_error(c, 404, "invalid_request_error", NULL, "not_found", "no route for %s %s", req->method_name, p);
}

/* ================================================================ /v1/models */

/* A model card as vLLM writes it: max_model_len from the workers' heartbeats
 * (null while no worker of a --models entry ever reported one). */
static json_t *model_json(gw *g, const gw_model *m) {
    return json_pack("{s:s, s:s, s:I, s:s, s:s, s:n, s:o}", "id", m->name, "object", "model", "created",
                     (json_int_t)g->started_s, "owned_by", "llmq", "root", m->name, "parent", "max_model_len",
                     m->max_model_len > 0 ? json_integer(m->max_model_len) : json_null());
}

void gw_route_models(gw *g, http_conn *c, http_request *req) {
    if (!strncmp(req->path, "/v1/models/", 11)) {
        const char *name = req->path + 11;
        int i = gw_model_lookup(g, name);
        if (i >= 0) return gw_reply_json(c, 200, model_json(g, &g->models[i]), NULL);
        return gw_reply_error(c, 404, "invalid_request_error", "model", "model_not_found",
                              "The model '%s' does not exist", name);
    }
    json_t *data = json_array();
    for (size_t i = 0; i < g->n_models; i++) json_array_append_new(data, model_json(g, &g->models[i]));
    gw_reply_json(c, 200, json_pack("{s:s, s:o}", "object", "list", "data", data), NULL);
}

/* ================================================================ /health */

/* vLLM's probe: 200 with an empty body when the gateway can serve (both
 * connections up to its Redis, or to one of its instances at least: the
 * models of the others get their 503), else 503. */
void gw_route_health(gw *g, http_conn *c, http_request *req) {
    if (g->shutting_down)
        return gw_reply_error(c, 503, "service_unavailable", NULL, "shutting_down", "the gateway is shutting down");
    int any = 0;
    for (size_t i = 0; i < g->n_inst; i++) any |= gw_inst_ready(g, (int)i);
    if (!any) return gw_reply_redis_down(c);
    http_respond(c, 200, "text/plain", "", 0, NULL);
}

/* ================================================================ /metrics */

void gw_route_metrics(gw *g, http_conn *c, http_request *req) {
    gw_inst_metrics(g);
    metric_set(g->m.connections, (double)http_server_conn_count(g->http));
    size_t len;
    char *txt = metrics_render(g->reg, &len);
    if (!txt) return gw_reply_error(c, 500, "server_error", NULL, NULL, "out of memory");
    http_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", txt, len, NULL);
    free(txt);
}

/* ================================================================ /readyz */

/* Readiness per Redis instance. */
typedef struct ready_inst {
    int failed;                  /* unreachable, full, a reply missing or without our group */
    char why[256];               /* first reason it is not ready */
} ready_inst;

typedef struct ready_call {
    gw_call base;
    int pending;                 /* XINFO GROUPS / INFO / PING replies still to come */
    ready_inst *inst;            /* g->n_inst of them, after the call */
} ready_call;

static void ready_fail(ready_inst *ri, const char *why) {
    if (ri->failed) return;
    ri->failed = 1;
    snprintf(ri->why, sizeof ri->why, "%s", why);
}

/* {"status", ["reason",] "redis": both connections up (to every instance),
 * "auth": "enabled" | "disabled"}: an operator sees an open gateway in its
 * probe answers.  With several instances (--redis-for) also "instances":
 * [{"name", "redis", "ready", ["reason",] "models"}], and the status is
 * "degraded" while some but not all are ready: the gateway stays ready (its
 * other models are served), each lost instance's models get 503. */
static json_t *ready_body(gw *g, const ready_inst *ri, const char *status, const char *reason) {
    int all = 1;
    for (size_t i = 0; i < g->n_inst; i++) all &= gw_inst_ready(g, (int)i);
    json_t *v = json_pack("{s:s, s:b, s:s}", "status", status, "redis", all, "auth",
                          gw_auth_enabled(&g->auth) ? "enabled" : "disabled");
    if (v && reason) json_object_set_new(v, "reason", json_string(reason));
    if (v && g->n_inst > 1) {
        json_t *a = json_array();
        for (size_t i = 0; i < g->n_inst; i++) {
            json_t *models = json_array();
            for (size_t k = 0; k < g->n_models; k++)
                if (g->models[k].inst == (int)i) json_array_append_new(models, json_string(g->models[k].name));
            int ok = ri ? !ri[i].failed : gw_inst_ready(g, (int)i);
            json_t *o = json_pack("{s:s, s:b, s:b, s:o}", "name", g->inst[i].name, "redis", gw_inst_ready(g, (int)i),
                                  "ready", ok, "models", models);
            if (o && ri && ri[i].failed) json_object_set_new(o, "reason", json_string(ri[i].why));
            json_array_append_new(a, o);
        }
        json_object_set_new(v, "instances", a);
    }
    return v;
}

static void ready_reply(ready_call *rc) {
    http_conn *c = rc->base.conn;
    gw *g = rc->base.g;
    size_t failed = 0, first = 0;
    for (size_t i = g->n_inst; i-- > 0;)
        if (rc->inst[i].failed) {
            failed++;
            first = i;
        }
    if (failed == g->n_inst) {
        gw_reply_json(c, 503, ready_body(g, rc->inst, "not ready", rc->inst[first].why), "Retry-After: 1\r\n");
    } else if (failed) {
        char why[300];
        snprintf(why, sizeof why, "redis instance %s: %s", g->inst[first].name, rc->inst[first].why);
        gw_reply_json(c, 200, ready_body(g, rc->inst, "degraded", why), NULL);
    } else {
        gw_reply_json(c, 200, ready_body(g, rc->inst, "ready", NULL), NULL);
    }
    gw_call_finish(&rc->base);
}

static void on_ready_probe(redisAsyncContext *ac, void *reply, void *priv) {
    ready_call *rc = priv;
    redisReply *r = reply;
    int ok = 0;
    if (r && r->type == REDIS_REPLY_STATUS) ok = 1; /* PING */
    if (r && r->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < r->elements && !ok; i++) {
            const redisReply *grp = r->element[i];
            for (size_t j = 0; grp->type == REDIS_REPLY_ARRAY && j + 1 < grp->elements; j += 2)
                if (grp->element[j]->type == REDIS_REPLY_STRING && !strcmp(grp->element[j]->str, "name") &&
                    grp->element[j + 1]->type == REDIS_REPLY_STRING && !strcmp(grp->element[j + 1]->str, PROTO_GROUP))
                    ok = 1;
        }
    }
    if (!ok)
        ready_fail(&rc->inst[gw_inst_of(ac)->idx], !r ? "redis connection lost"
                                                      : r->type == REDIS_REPLY_ERROR ? r->str
                                                                                     : "consumer group 'workers' missing");
    if (--rc->pending == 0 && !rc->base.done) ready_reply(rc);
    gw_call_unref(&rc->base);
}

/* The value of "name:" in an INFO reply (0 when absent). */
static long long info_field(const char *info, const char *name) {
    size_t n = strlen(name);
    for (const char *p = info; (p = strstr(p, name)); p += n)
        if ((p == info || p[-1] == '\n') && p[n] == ':') return strtoll(p + n + 1, NULL, 10);
    return 0;
}

/* INFO memory: a Redis at its maxmemory under noeviction refuses every
 * write (every submission would get 503), so the gateway is not ready.
 * Redis counts used_memory less mem_not_counted_for_evict (replication and
 * AOF buffers) against maxmemory. */
static void on_ready_memory(redisAsyncContext *ac, void *reply, void *priv) {
    ready_call *rc = priv;
    redisReply *r = reply;
    if (r && r->type == REDIS_REPLY_STRING) {
        long long max = info_field(r->str, "maxmemory"),
                  used = info_field(r->str, "used_memory") - info_field(r->str, "mem_not_counted_for_evict");
        const char *pol = strstr(r->str, "\nmaxmemory_policy:");
        if (max > 0 && used >= max && pol && !strncmp(pol + 19, "noeviction", 10)) {
            char why[160];
            snprintf(why, sizeof why, "redis is full (used_memory %lld >= maxmemory %lld): writes are refused",
                     used, max);
            ready_fail(&rc->inst[gw_inst_of(ac)->idx], why);
        }
    } /* no answer: the other probes say why */
    if (--rc->pending == 0 && !rc->base.done) ready_reply(rc);
    gw_call_unref(&rc->base);
}

void gw_route_readyz(gw *g, http_conn *c, http_request *req) {
    int any = 0;
    for (size_t i = 0; i < g->n_inst; i++) any |= gw_inst_ready(g, (int)i);
    if (!any)
        return gw_reply_json(c, 503, ready_body(g, NULL, "not ready", "redis unreachable"), "Retry-After: 1\r\n");
    if (g->shutting_down)
        return gw_reply_json(c, 503, ready_body(g, NULL, "not ready", "shutting down"), NULL);
    ready_call *rc = (ready_call *)gw_call_new(g, c, req, sizeof *rc + g->n_inst * sizeof(ready_inst), NULL);
    if (!rc) return gw_reply_error(c, 500, "server_error", NULL, NULL, "out of memory");
    rc->inst = (ready_inst *)(rc + 1);
    gw_ensure_groups(g);
    gw_call_ref(&rc->base); /* replies cannot come before the loop runs, but be plain about it */
    for (size_t i = 0; i < g->n_inst; i++) {
        ready_inst *ri = &rc->inst[i];
        int64_t full = g->inst[i].redis_full_ms;
        if (!gw_inst_ready(g, (int)i)) {
            ready_fail(ri, "redis unreachable");
            continue;
        }
        if (full && gw_now_ms() - full < GW_REDIS_FULL_MS) {
            ready_fail(ri, "redis is full: a write was refused for its maxmemory");
            continue;
        }
        rcmd cmd;
        rcmd_init(&cmd);
        rcmd_str(&cmd, "INFO");
        rcmd_str(&cmd, "memory");
        rc->pending++;
        if (gw_call_send_to(&rc->base, (int)i, &cmd, on_ready_memory) != 0) {
            rc->pending--;
            ready_fail(ri, "redis unreachable");
            continue;
        }
        int probes = 0;
        for (size_t k = 0; k < g->n_models; k++) {
            if (g->models[k].inst != (int)i) continue;
            char key[KEYS_MAX];
            keys_req_stream(&g->keys, g->models[k].name, key, sizeof key);
            rcmd_init(&cmd);
            rcmd_str(&cmd, "XINFO");
            rcmd_str(&cmd, "GROUPS");
            rcmd_str(&cmd, key);
            rc->pending++;
            if (gw_call_send_to(&rc->base, (int)i, &cmd, on_ready_probe) != 0) {
                rc->pending--;
                ready_fail(ri, "redis unreachable");
                break;
            }
            probes++;
        }
        if (!probes && !ri->failed) { /* no model on it: it answers at least */
            rcmd_init(&cmd);
            rcmd_str(&cmd, "PING");
            rc->pending++;
            if (gw_call_send_to(&rc->base, (int)i, &cmd, on_ready_probe) != 0) {
                rc->pending--;
                ready_fail(ri, "redis unreachable");
            }
        }
    }
    if (rc->pending == 0) ready_reply(rc);
    gw_call_unref(&rc->base);
}
