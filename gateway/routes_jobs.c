/*
 * routes_jobs.c — the job API:
 *   POST   /v1/jobs              submit → 202 {id, object, status, model, created}
 *   GET    /v1/jobs/{id}         state, text so far, finish_reason, usage (and
 *                                logprobs so far, when the job asked for them)
 *   GET    /v1/jobs/{id}/events  SSE of chunks; `id:` is the chunk seq, so a
 *                                reconnecting EventSource resumes after
 *                                Last-Event-ID (or ?last_event_id=N)
 *   DELETE /v1/jobs/{id}         cancel (docs/protocol.md §cancel)
 *
 * With API keys, a job is its submitting key's (gateway/auth.h "Tenants"):
 * for any other key (admin keys aside) GET, events and DELETE answer 404,
 * exactly as for a job that does not exist, so ids of others' jobs cannot
 * even be confirmed.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/jobops.h"
#include "common/log.h"
#include "gateway/gw.h"
#include "gateway/logprobs.h"
#include "gateway/submit.h"

/* ================================================================ helpers */

static json_t *chunk_json(const proto_chunk *c) {
    json_t *ids = json_array();
    for (size_t i = 0; i < c->n_ids; i++) json_array_append_new(ids, json_integer(c->ids[i]));
    json_t *o = json_pack("{s:I, s:o, s:o}", "seq", (json_int_t)c->seq, "text", gw_json_text(c->text, c->text_len),
                          "ids", ids);
    if (c->finish) json_object_set_new(o, "finish", json_string(c->finish));
    if (c->has_usage)
        json_object_set_new(o, "usage",
                            json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)c->usage.prompt_tokens,
                                      "completion_tokens", (json_int_t)c->usage.completion_tokens, "total_tokens",
                                      (json_int_t)(c->usage.prompt_tokens + c->usage.completion_tokens)));
    if (c->has_usage && c->usage.cached_tokens > 0)
        json_object_set_new(json_object_get(o, "usage"), "prompt_tokens_details",
                            json_pack("{s:I}", "cached_tokens", (json_int_t)c->usage.cached_tokens));
    if (c->error) json_object_set_new(o, "error", json_string(c->error));
    if (c->has_lp) { /* one entry per id, only when the job asked for logprobs */
        json_t *lp = json_array();
        gw_lp_job_add(lp, c);
        json_object_set_new(o, "logprobs", lp);
    }
    return o;
}

/* ================================================================ POST /v1/jobs */

static void reply_submitted(gw_call *call, const char *state, json_t *created) {
    char loc[PROTO_MAX_ID_LEN + 64];
    snprintf(loc, sizeof loc, "Location: /v1/jobs/%s\r\n%s", call->id,
             call->replayed ? "Idempotent-Replayed: true\r\n" : "");
    gw_reply_json(call->conn, 202,
                  json_pack("{s:s, s:s, s:s, s:s, s:o}", "id", call->id, "object", "job", "status", state, "model",
                            call->model, "created", created),
                  loc);
}

/* A replay: the job the key names is reported as it is now (it may have run
 * to its end since the first submission), from its hash {state, created}. */
static void on_replay_state(redisAsyncContext *ac, void *reply, void *priv) {
    gw_call *call = priv;
    redisReply *r = reply;
    if (call->done) goto out;
    if (!r) {
        gw_reply_redis_down(call->conn);
    } else if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
        gw_reply_error(call->conn, 500, "server_error", NULL, NULL, "redis: %s",
                       r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    } else {
        const redisReply *st = r->element[0], *cr = r->element[1];
        json_t *created = json_null();
        if (cr->type == REDIS_REPLY_STRING) {
            char *end;
            long long v = strtoll(cr->str, &end, 10);
            if (!*end && end != cr->str) created = json_integer(v);
        }
        /* no hash: removed by hand (its TTL starts at its end, later than the key record's) */
        reply_submitted(call, st->type == REDIS_REPLY_STRING ? st->str : "unknown", created);
    }
    gw_call_finish(call);
out:
    gw_call_unref(call);
}

static void on_job_submitted(gw_call *call, int status, const char *msg) {
    http_conn *c = call->conn;
    if (status == 429) gw_reply_refused(call, msg);
    else if (status == 409) gw_reply_error(c, 409, "invalid_request_error", "Idempotency-Key", "idempotency_key_reused",
                                           "%s", msg);
    else if (status == 503) gw_reply_redis_down(c);
    else if (status) gw_reply_error(c, 500, "server_error", NULL, NULL, "submitting the job failed: %s", msg);
    else if (call->replayed) {
        char job[KEYS_MAX];
        keys_job(&call->g->keys, call->id, job, sizeof job);
        rcmd h;
        rcmd_init(&h);
        rcmd_str(&h, "HMGET");
        rcmd_str(&h, job);
        rcmd_str(&h, "state");
        rcmd_str(&h, "created");
        if (gw_call_send(call, &h, on_replay_state) == 0) return; /* answered there */
        gw_reply_redis_down(c);
    } else {
        reply_submitted(call, "queued", json_integer((json_int_t)gw_now_ms()));
    }
    gw_call_finish(call);
}

/* FNV-1a 64 of the body, as 16 hex digits: what tells a retry from a reuse of its key. */
static void body_hash(const char *b, size_t n, char out[17]) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)b[i]) * 1099511628211ull;
    snprintf(out, 17, "%016llx", (unsigned long long)h);
}

void gw_route_jobs_submit(gw *g, http_conn *c, http_request *req) {
    gw_parsed p;
    gw_bad bad;
    if (req->idempotency_key && !keys_id_valid(req->idempotency_key))
        return gw_reply_error(c, 400, "invalid_request_error", "Idempotency-Key", NULL,
                              "Idempotency-Key must be 1-128 characters of A-Z a-z 0-9 . _ : -");
    if (gw_parse_request(g, GW_API_JOBS, req->body, req->body_len, &p, &bad) != 0) {
        proto_request_deinit(&p.r);
        return gw_reply_bad(c, &bad);
    }
    gw_call *call = gw_call_new(g, c, req, sizeof *call, NULL);
    llmq_err err;
    if (!call || gw_new_job_id(g, p.r.model, call->id, &err) != LLMQ_OK || !(p.r.id = strdup(call->id))) {
        proto_request_deinit(&p.r);
        gw_reply_error(c, 500, "server_error", NULL, NULL, "cannot create a job id");
        if (call) gw_call_finish(call);
        return;
    }
    if (req->idempotency_key) {
        snprintf(call->idem, sizeof call->idem, "%s", req->idempotency_key);
        body_hash(req->body, req->body_len, call->body_hash);
    }
    int rc = gw_submit(call, &p.r, on_job_submitted);
    proto_request_deinit(&p.r);
    if (rc != 0) {
        gw_reply_redis_down(c);
        gw_call_finish(call);
    }
}

/* ================================================================ GET /v1/jobs/{id} */

typedef struct get_call {
    gw_call base;
    gw_tenant who;               /* the caller */
    json_t *hash;                /* the job hash as {field: string}, NULL when missing (or not the caller's) */
    int failed;                  /* HGETALL failed: answered already */
} get_call;

static void get_cleanup(gw_call *call) { json_decref(((get_call *)call)->hash); }

static void on_hgetall(redisAsyncContext *ac, void *reply, void *priv) {
    get_call *gc = priv;
    redisReply *r = reply;
    if (!gc->base.done) {
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            gc->failed = 1;
            if (!r) gw_reply_redis_down(gc->base.conn);
            else gw_reply_error(gc->base.conn, 500, "server_error", NULL, NULL, "redis: %s",
                                r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
            gw_call_finish(&gc->base);
        } else if (r->elements) {
            gc->hash = json_object();
            for (size_t i = 0; i + 1 < r->elements; i += 2)
                if (r->element[i]->type == REDIS_REPLY_STRING && r->element[i + 1]->type == REDIS_REPLY_STRING)
                    json_object_set_new(gc->hash, r->element[i]->str,
                                        gw_json_text(r->element[i + 1]->str, r->element[i + 1]->len));
            json_t *owner = json_object_get(gc->hash, "tenant");
            if (!gw_tenant_may_see(&gc->who, owner ? json_string_value(owner) : NULL)) { /* another key's: none */
                json_decref(gc->hash);
                gc->hash = NULL;
            }
        }
    }
    gw_call_unref(&gc->base);
}

static const char *hget(json_t *h, const char *k) {
    json_t *v = json_object_get(h, k);
    return v ? json_string_value(v) : NULL;
}

static json_t *hnum(json_t *h, const char *k) {
    const char *s = hget(h, k);
    if (!s || !*s) return json_null();
    char *end;
    long long v = strtoll(s, &end, 10);
    return *end ? json_null() : json_integer(v);
}

static void on_out_range(redisAsyncContext *ac, void *reply, void *priv) {
    get_call *gc = priv;
    redisReply *r = reply;
    gw_call *call = &gc->base;
    if (call->done) goto out;
    if (!r) {
        gw_reply_redis_down(call->conn);
        gw_call_finish(call);
        goto out;
    }
    if (!gc->hash) {
        gw_reply_error(call->conn, 404, "invalid_request_error", "id", "job_not_found", "no job with id '%s'",
                       call->id);
        gw_call_finish(call);
        goto out;
    }
    proto_buf text;
    proto_buf_init(&text);
    int64_t next = 0, trimmed = 0; /* trimmed: chunks missing from the stream (XTRIM) */
    proto_chunk last;
    proto_chunk_init(&last);
    int have_last = 0;
    json_t *lp = NULL; /* the tokens' logprobs, once a chunk carried `lp` */
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 || e->element[1]->type != REDIS_REPLY_ARRAY) continue;
        const redisReply *f = e->element[1];
        for (size_t j = 0; j + 1 < f->elements; j += 2) {
            if (f->element[j]->type != REDIS_REPLY_STRING || strcmp(f->element[j]->str, PROTO_FIELD_CHUNK) != 0)
                continue;
            proto_chunk c;
            if (proto_chunk_decode(&c, f->element[j + 1]->str, f->element[j + 1]->len, NULL) != LLMQ_OK) continue;
            if (c.seq < next) { /* a duplicate: the stream's contract says never, but be safe */
                proto_chunk_deinit(&c);
                continue;
            }
            if (c.seq > next) trimmed += c.seq - next;
            next = c.seq < INT64_MAX ? c.seq + 1 : INT64_MAX; /* a hostile entry may carry any int64 */
            if (c.text_len) proto_buf_append(&text, c.text, c.text_len);
            if (c.has_lp && (lp || (lp = json_array()))) gw_lp_job_add(lp, &c);
            proto_chunk_deinit(&last);
            last = c;
            have_last = 1;
        }
    }
    json_t *h = gc->hash;
    const char *state = hget(h, "state");
    const char *finish = hget(h, "finish_reason");
    if (!finish && have_last && last.finish) finish = last.finish;
    json_t *usage = json_null();
    if (hget(h, "completion_tokens")) {
        json_t *pt = hnum(h, "prompt_tokens"), *ct = hnum(h, "completion_tokens");
        json_int_t t = json_integer_value(pt) + json_integer_value(ct);
        usage = json_pack("{s:o, s:o, s:I}", "prompt_tokens", pt, "completion_tokens", ct, "total_tokens", t);
    } else if (have_last && last.has_usage) {
        usage = json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)last.usage.prompt_tokens,
                          "completion_tokens", (json_int_t)last.usage.completion_tokens, "total_tokens",
                          (json_int_t)(last.usage.prompt_tokens + last.usage.completion_tokens));
    }
    /* the prefix-cache hit, as OpenAI names it: the hash's (the final chunk may be trimmed away),
     * else the final chunk's (a job ended by an older worker) */
    json_t *hc = hnum(h, "cached_tokens");
    json_int_t cached = json_integer_value(hc);
    json_decref(hc);
    if (!cached && have_last && last.has_usage) cached = (json_int_t)last.usage.cached_tokens;
    if (json_is_object(usage) && cached > 0)
        json_object_set_new(usage, "prompt_tokens_details", json_pack("{s:I}", "cached_tokens", cached));
    const char *error = hget(h, "error");
    if (!error && have_last && last.error) error = last.error;
    const char *cancel = hget(h, "cancel");
    json_t *o = json_pack("{s:s, s:s, s:s?, s:s, s:o, s:s?, s:o, s:o, s:o, s:o, s:o, s:s?, s:b, s:I}", "id", call->id,
                          "object", "job", "model", hget(h, "model"), "status", state ? state : "unknown", "text",
                          gw_json_text(text.data, text.len), "finish_reason", finish, "usage", usage, "created",
                          hnum(h, "created"), "started", hnum(h, "started"), "finished", hnum(h, "finished"),
                          "attempts", hnum(h, "attempts"), "error", error, "cancel_requested",
                          cancel && !strcmp(cancel, "1"), "chunks", (json_int_t)next);
    json_object_set_new(o, "logprobs", lp ? lp : json_null());
    json_object_set_new(o, "output_trimmed", json_integer(trimmed)); /* chunks the text lacks */
    proto_chunk_deinit(&last);
    proto_buf_deinit(&text);
    gw_reply_json(call->conn, 200, o, NULL);
    gw_call_finish(call);
out:
    gw_call_unref(call);
}

void gw_route_jobs_get(gw *g, http_conn *c, http_request *req, const char *id) {
    get_call *gc = (get_call *)gw_call_new(g, c, req, sizeof *gc, get_cleanup);
    if (!gc) return gw_reply_error(c, 500, "server_error", NULL, NULL, "out of memory");
    snprintf(gc->base.id, sizeof gc->base.id, "%s", id);
    gc->base.inst = gw_inst_for_id(g, id);
    gw_auth_identify(&g->auth, req->authorization, &gc->who);
    char job[KEYS_MAX], out[KEYS_MAX];
    keys_job(&g->keys, id, job, sizeof job);
    keys_job_out(&g->keys, id, out, sizeof out);
    rcmd h, x;
    rcmd_init(&h);
    rcmd_str(&h, "HGETALL");
    rcmd_str(&h, job);
    rcmd_init(&x);
    rcmd_str(&x, "XRANGE");
    rcmd_str(&x, out);
    rcmd_str(&x, "-");
    rcmd_str(&x, "+");
    if (gw_call_send(&gc->base, &h, on_hgetall) != 0) {
        gw_reply_redis_down(c);
        return gw_call_finish(&gc->base);
    }
    if (gw_call_send(&gc->base, &x, on_out_range) != 0 && !gc->base.done) {
        gw_reply_redis_down(c);
        gw_call_finish(&gc->base);
    }
}

/* ================================================================ GET /v1/jobs/{id}/events */

typedef struct events_call {
    gw_call base;
    int64_t from;                /* first seq to send */
    gw_tenant who;               /* the caller */
} events_call;

static void on_event_chunk(void *ud, const proto_chunk *c) {
    events_call *ec = ud;
    gw_call *call = &ec->base;
    int gone = 0;
    gw_call_ref(call); /* a failed write closes the connection, whose hook finishes (and may free) the call */
    if (c) gone = gw_sse_send_json(call, c->seq, NULL, chunk_json(c));
    if (gone || !c || c->finish) {
        gw_sse_end(call);
        gw_call_finish(call);
    }
    gw_call_unref(call);
}

static void on_events_exists(redisAsyncContext *ac, void *reply, void *priv) {
    events_call *ec = priv;
    gw_call *call = &ec->base;
    redisReply *r = reply;
    if (call->done) goto out;
    /* {state, tenant} of the job hash */
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
        if (!r) gw_reply_redis_down(call->conn);
        else gw_reply_error(call->conn, 500, "server_error", NULL, NULL, "redis: unexpected reply");
        gw_call_finish(call);
        goto out;
    }
    const redisReply *owner = r->element[1];
    if (r->element[0]->type != REDIS_REPLY_STRING ||
        !gw_tenant_may_see(&ec->who, owner->type == REDIS_REPLY_STRING ? owner->str : NULL)) {
        gw_reply_error(call->conn, 404, "invalid_request_error", "id", "job_not_found", "no job with id '%s'", call->id);
        gw_call_finish(call);
        goto out;
    }
    gw_sse_begin(call);
    call->watch = jobwatch_start(gw_call_watches(call), call->id, ec->from, on_event_chunk, ec);
    jobwatch_on_gap(call->watch, gw_sse_gap); /* a trimmed output: an error event, not a silent gap */
    if (!call->watch) {
        gw_sse_end(call);
        gw_call_finish(call);
    }
out:
    gw_call_unref(call);
}

/* A chunk seq as the client names it: decimal digits only (no sign, no
 * blank, no "0x"), 0 .. INT64_MAX; -1 when s[0..n) is not one.  strtoll
 * would take "+5", " 5" and "-0", and clamp what overflows. */
static int64_t parse_seq(const char *s, size_t n) {
    if (n == 0) return -1;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        int d = s[i] - '0';
        if (v > (INT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    return v;
}

void gw_route_jobs_events(gw *g, http_conn *c, http_request *req, const char *id) {
    int64_t last = -1;
    if (req->last_event_id) {
        /* the header's value without its optional blanks (RFC 9110 §5.5, OWS) */
        const char *v = req->last_event_id;
        size_t n = strlen(v);
        while (n && (*v == ' ' || *v == '\t')) {
            v++;
            n--;
        }
        while (n && (v[n - 1] == ' ' || v[n - 1] == '\t')) n--;
        last = parse_seq(v, n);
        if (last < 0)
            return gw_reply_error(c, 400, "invalid_request_error", "Last-Event-ID", "invalid_last_event_id",
                                  "Last-Event-ID must be the seq of the last chunk received: a decimal integer "
                                  "0..9223372036854775807");
    } else if (req->query && !strncmp(req->query, "last_event_id=", 14)) {
        const char *v = req->query + 14;
        last = parse_seq(v, strcspn(v, "&"));
        if (last < 0)
            return gw_reply_error(c, 400, "invalid_request_error", "last_event_id", "invalid_last_event_id",
                                  "last_event_id must be the seq of the last chunk received: a decimal integer "
                                  "0..9223372036854775807");
    }
    events_call *ec = (events_call *)gw_call_new(g, c, req, sizeof *ec, NULL);
    if (!ec) return gw_reply_error(c, 500, "server_error", NULL, NULL, "out of memory");
    snprintf(ec->base.id, sizeof ec->base.id, "%s", id);
    ec->base.inst = gw_inst_for_id(g, id);
    ec->from = last < INT64_MAX ? last + 1 : INT64_MAX; /* no job has 2^63 chunks: nothing follows */
    gw_auth_identify(&g->auth, req->authorization, &ec->who);
    char job[KEYS_MAX];
    keys_job(&g->keys, id, job, sizeof job);
    rcmd x;
    rcmd_init(&x);
    rcmd_str(&x, "HMGET");
    rcmd_str(&x, job);
    rcmd_str(&x, "state");
    rcmd_str(&x, "tenant");
    if (gw_call_send(&ec->base, &x, on_events_exists) != 0) {
        gw_reply_redis_down(c);
        gw_call_finish(&ec->base);
    }
}

/* ================================================================ DELETE /v1/jobs/{id} */

static void on_cancel(redisAsyncContext *ac, void *reply, void *priv) {
    gw_call *call = priv;
    redisReply *r = reply;
    if (call->done) goto out;
    if (!r) gw_reply_redis_down(call->conn);
    else if (r->type != REDIS_REPLY_INTEGER)
        gw_reply_error(call->conn, 500, "server_error", NULL, NULL, "redis: %s",
                       r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    else if (r->integer == JOBOPS_CANCEL_NOT_FOUND)
        gw_reply_error(call->conn, 404, "invalid_request_error", "id", "job_not_found", "no job with id '%s'", call->id);
    else if (r->integer == JOBOPS_CANCEL_FINAL)
        gw_reply_error(call->conn, 409, "invalid_request_error", "id", "job_finished",
                       "job '%s' has already finished", call->id);
    else
        gw_reply_json(call->conn, 200,
                      json_pack("{s:s, s:s, s:s}", "id", call->id, "object", "job", "status",
                                r->integer == JOBOPS_CANCEL_DONE ? "cancelled" : "cancelling"),
                      NULL);
    gw_call_finish(call);
out:
    gw_call_unref(call);
}

void gw_route_jobs_cancel(gw *g, http_conn *c, http_request *req, const char *id) {
    gw_call *call = gw_call_new(g, c, req, sizeof *call, NULL);
    if (!call) return gw_reply_error(c, 500, "server_error", NULL, NULL, "out of memory");
    snprintf(call->id, sizeof call->id, "%s", id);
    call->inst = gw_inst_for_id(g, id);
    proto_buf chunk;
    proto_buf_init(&chunk);
    if (jobops_cancel_chunk(&chunk, NULL) != LLMQ_OK) {
        proto_buf_deinit(&chunk);
        gw_reply_error(c, 500, "server_error", NULL, NULL, "out of memory");
        return gw_call_finish(call);
    }
    gw_tenant who; /* another key's job is "no such job" (admin keys: any) */
    gw_auth_identify(&g->auth, req->authorization, &who);
    rcmd cmd;
    jobops_keys kb;
    jobops_cancel_as(&cmd, &kb, &g->keys, id, gw_now_ms(), g->cfg.result_ttl_s, chunk.data, chunk.len,
                     who.admin ? NULL : who.id);
    int rc = gw_call_send(call, &cmd, on_cancel);
    proto_buf_deinit(&chunk);
    if (rc != 0) {
        gw_reply_redis_down(c);
        gw_call_finish(call);
    }
}
