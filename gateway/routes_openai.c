/*
 * routes_openai.c — POST /v1/completions and /v1/chat/completions.
 *
 * Both submit a job and then follow its output: streaming requests turn each
 * chunk into an OpenAI chunk object on SSE (`data: {...}` ... `data: [DONE]`),
 * non-streaming ones collect the text and answer once the final chunk came.
 * The job id doubles as the response id ("cmpl-<id>", "chatcmpl-<id>"), so a
 * response can be looked up later with GET /v1/jobs/<id>.
 *
 * Logprobs (completions `logprobs: n`, chat `logprobs: true` + `top_logprobs`)
 * come in each chunk's `lp`, one entry per token; gateway/logprobs.c writes
 * them in OpenAI's shapes.  A streamed chunk carries the logprobs of its own
 * tokens, so it is sent also when its text is empty (held back).  Not asked
 * for, `logprobs` stays null.
 *
 * The life of the job follows the life of the request (as in vLLM; the job
 * API is the way to have jobs that outlive their connection):
 *  - A client that goes away before the answer ended cancels the job (the
 *    cancel of DELETE /v1/jobs/{id}, jobops_cancel).
 *  - The SSE headers are sent only with the job's first event, so a job the
 *    worker refuses at admission (a prompt over the context: error_status
 *    400) is an HTTP error as without `stream`, not a 200 carrying an error.
 *    job_error maps a failed job to its HTTP status, for both.
 *  - A job no worker admitted within --queue-timeout is cancelled and the
 *    client gets a 503 with Retry-After.  "Admitted" is known from the first
 *    chunk, or else from the job hash's state when the timer fires.
 *  - Usage is streamed only when `stream_options.include_usage` asks for it,
 *    once, in a last chunk with `choices: []` (OpenAI's and vLLM's shape).
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/jobops.h"
#include "common/log.h"
#include "gateway/gw.h"
#include "gateway/logprobs.h"
#include "gateway/submit.h"

#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))
#define QUEUE_RECHECK 1.0 /* s before asking again when Redis could not say whether the job was admitted */

typedef struct oai_call {
    gw_call base;
    int chat;                    /* chat.completions (else completions) */
    int stream;                  /* answer with SSE */
    int include_usage;           /* stream_options.include_usage */
    char resp_id[PROTO_MAX_ID_LEN + 16]; /* "cmpl-<id>" / "chatcmpl-<id>" */
    int64_t created;             /* Unix seconds */
    proto_buf text;              /* non-stream: the text so far */
    int logprobs;                /* the request asked for logprobs */
    const char *guide_param;     /* the body field of its constraint (static), NULL for none */
    json_t *lp;                  /* non-stream with logprobs: completions' four arrays, or
                                    chat's `content` array, so far */
    int64_t lp_offset;           /* completions: characters before the next token (text_offset) */
    int sent;                    /* the submission went to Redis: a job may exist to cancel */
    int ended;                   /* the job's final chunk came: nothing left to cancel */
    int admitted;                /* a worker took the job (a chunk came, or its state left queued) */
    int begun;                   /* stream: the SSE response has begun */
    ev_timer queue_w;            /* --queue-timeout, armed while the job may still be queued */
} oai_call;

static void oai_cleanup(gw_call *call) {
    oai_call *oc = (oai_call *)call;
    ev_timer_stop(call->g->loop, &oc->queue_w);
    proto_buf_deinit(&oc->text);
    json_decref(oc->lp);
}

/* The answer ended (or the client left): no queue timeout any more. */
static void oai_finish(oai_call *oc) {
    ev_timer_stop(oc->base.g->loop, &oc->queue_w);
    gw_call_finish(&oc->base);
}

/* The job was taken by a worker (or ended): the queue timeout is moot. */
static void oai_admitted(oai_call *oc) {
    oc->admitted = 1;
    ev_timer_stop(oc->base.g->loop, &oc->queue_w);
}

/* Cancel the job as DELETE /v1/jobs/{id} does (queued: ended at once;
 * running: the worker stops it between steps).  Fire and forget: nobody
 * waits for the answer, and Redis runs it after the submission, which went
 * first on the same connection. */
static void cancel_job(oai_call *oc) {
    gw *g = oc->base.g;
    proto_buf chunk;
    proto_buf_init(&chunk);
    if (jobops_cancel_chunk(&chunk, NULL) == LLMQ_OK) {
        rcmd cmd;
        jobops_keys kb;
        jobops_cancel(&cmd, &kb, &g->keys, oc->base.id, gw_now_ms(), g->cfg.result_ttl_s, chunk.data, chunk.len);
        if (gw_redis_send(&g->redis, &cmd, NULL, NULL) != 0)
            log_warn("job %s: its client went away, and Redis is down: it runs to its end", oc->base.id);
    }
    proto_buf_deinit(&chunk);
}

/* The HTTP connection closed before the response ended. */
static void on_client_gone(void *ud) {
    oai_call *oc = ud;
    if (oc->sent && !oc->ended) {
        log_debug("job %s: client went away, cancelling", oc->base.id);
        cancel_job(oc);
    }
    oai_finish(oc);
}

/* The `logprobs` of a choice for the tokens of c: null when not asked for. */
static json_t *chunk_logprobs(oai_call *oc, const proto_chunk *c) {
    if (!oc->logprobs || !c) return json_null();
    if (oc->chat) {
        json_t *content = json_array();
        gw_lp_chat_add(content, c);
        return json_pack("{s:o}", "content", content);
    }
    json_t *o = gw_lp_completion_new();
    if (o) gw_lp_completion_add(o, c, &oc->lp_offset);
    return o ? o : json_null();
}

static json_t *usage_json(const proto_chunk *c) {
    if (!c || !c->has_usage) return json_null();
    /* prompt_tokens_details.cached_tokens: the worker's prefix-cache hit, as OpenAI reports it */
    return json_pack("{s:I, s:I, s:I, s:{s:I}}", "prompt_tokens", (json_int_t)c->usage.prompt_tokens,
                     "completion_tokens", (json_int_t)c->usage.completion_tokens, "total_tokens",
                     (json_int_t)(c->usage.prompt_tokens + c->usage.completion_tokens), "prompt_tokens_details",
                     "cached_tokens", (json_int_t)c->usage.cached_tokens);
}

/* One streamed chunk object; choices = [] when choice is NULL. */
static json_t *chunk_obj(oai_call *oc, json_t *choice, json_t *usage) {
    json_t *choices = json_array();
    if (choice) json_array_append_new(choices, choice);
    json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:o}", "id", oc->resp_id, "object",
                          oc->chat ? "chat.completion.chunk" : "text_completion", "created", (json_int_t)oc->created,
                          "model", oc->base.model, "choices", choices);
    if (usage) json_object_set_new(o, "usage", usage);
    return o;
}

/* lp: the choice's logprobs (stolen), NULL for null. */
static json_t *stream_choice(oai_call *oc, const char *text, size_t len, const char *finish, int role, json_t *lp) {
    json_t *fin = finish ? json_string(finish) : json_null();
    if (!lp) lp = json_null();
    if (oc->chat) {
        json_t *delta = json_object();
        if (role) json_object_set_new(delta, "role", json_string("assistant"));
        if (text) json_object_set_new(delta, "content", gw_json_text(text, len));
        return json_pack("{s:i, s:o, s:o, s:o}", "index", 0, "delta", delta, "logprobs", lp, "finish_reason", fin);
    }
    return json_pack("{s:i, s:o, s:o, s:o}", "index", 0, "text", gw_json_text(text ? text : "", text ? len : 0),
                     "logprobs", lp, "finish_reason", fin);
}

/* How a failed job reads over HTTP, streamed or not: the one place that maps
 * the worker's error_status (docs/protocol.md: 400 when the request was at
 * fault, e.g. a prompt over the context; else 500; 0 = not given) to the
 * status, OpenAI error type and code. */
typedef struct job_err {
    int status;                  /* HTTP status, 400..599 */
    const char *type;            /* "invalid_request_error" | "server_error" */
    const char *code;            /* OpenAI `code` of a JSON error */
    const char *param;           /* OpenAI `param`: NULL, or the body field at fault */
    const char *msg;             /* the worker's message (borrowed from the chunk) */
} job_err;

static job_err job_error(const oai_call *oc, const proto_chunk *c) {
    job_err e;
    e.status = c->error_status >= 400 && c->error_status < 600 ? c->error_status : 500;
    e.type = e.status < 500 ? "invalid_request_error" : "server_error";
    e.code = c->code && *c->code ? c->code : "job_failed"; /* the worker's, e.g. context_length_exceeded */
    e.msg = c->error ? c->error : "the job failed";
    /* the worker refused the constraint (llguidance's message), or has no
     * llguidance: the field that asked for it is at fault, which only the
     * gateway knows */
    e.param = oc->guide_param && (!strcmp(e.code, "invalid_constraint") ||
                                  !strcmp(e.code, "structured_output_unavailable"))
                  ? oc->guide_param
                  : NULL;
    return e;
}

static int is_error(const proto_chunk *c) { return c && c->finish && !strcmp(c->finish, "error"); }

static void reply_job_error(oai_call *oc, const proto_chunk *c) {
    job_err e = job_error(oc, c);
    gw_reply_error(oc->base.conn, e.status, e.type, e.param, e.code, "%s", e.msg);
}

/* The job's first event: the SSE headers and, for chat, the role delta.
 * -1 when the client is gone. */
static int stream_begin(oai_call *oc) {
    oc->begun = 1;
    gw_sse_begin(&oc->base);
    if (oc->chat && gw_sse_send_json(&oc->base, -1, NULL, chunk_obj(oc, stream_choice(oc, "", 0, NULL, 1, NULL), NULL)))
        return -1;
    return 0;
}

static void on_stream_chunk(void *ud, const proto_chunk *c) {
    oai_call *oc = ud;
    gw_call *call = &oc->base;
    int gone = 0;
    const int failed = is_error(c);
    oai_admitted(oc);
    if (!c || c->finish) oc->ended = 1;
    gw_call_ref(call); /* a failed write closes the connection, whose hook finishes the call */
    if (!oc->begun) {
        if (failed) { /* refused before any output: an HTTP error, as without `stream` */
            reply_job_error(oc, c);
            oai_finish(oc);
            goto out;
        }
        gone = stream_begin(oc);
    }
    if (!gone && c && !failed && (c->text_len || (oc->logprobs && c->n_ids)))
        gone = gw_sse_send_json(call, -1, NULL,
                                chunk_obj(oc,
                                          stream_choice(oc, c->text ? c->text : "", c->text_len, NULL, 0,
                                                        chunk_logprobs(oc, c)),
                                          NULL));
    if (!gone && c && !c->finish) goto out;
    if (!gone && failed) { /* failed after its output began: an error event (vLLM's shape), then [DONE] */
        job_err e = job_error(oc, c);
        gone = gw_sse_send_json(call, -1, NULL,
                                json_pack("{s:{s:s, s:s, s:n, s:i}}", "error", "message", e.msg, "type", e.type,
                                          "param", "code", e.status));
    } else if (!gone) {
        const char *fin = c ? c->finish : "stop";
        gone = gw_sse_send_json(call, -1, NULL, chunk_obj(oc, stream_choice(oc, oc->chat ? NULL : "", 0, fin, 0, NULL), NULL));
        /* usage only when asked, once, after the last choice (OpenAI's stream_options) */
        if (!gone && oc->include_usage) gone = gw_sse_send_json(call, -1, NULL, chunk_obj(oc, NULL, usage_json(c)));
    }
    if (!gone) gw_sse_send(call, -1, NULL, "[DONE]", 6);
    gw_sse_end(call);
    oai_finish(oc);
out:
    gw_call_unref(call);
}

static void on_collect_chunk(void *ud, const proto_chunk *c) {
    oai_call *oc = ud;
    gw_call *call = &oc->base;
    oai_admitted(oc);
    if (c && c->text_len) proto_buf_append(&oc->text, c->text, c->text_len);
    if (c && oc->lp) {
        if (oc->chat) gw_lp_chat_add(oc->lp, c);
        else gw_lp_completion_add(oc->lp, c, &oc->lp_offset);
    }
    if (c && !c->finish) return;
    oc->ended = 1;
    http_conn *conn = call->conn;
    if (is_error(c)) {
        reply_job_error(oc, c);
        oai_finish(oc);
        return;
    }
    json_t *text = gw_json_text(oc->text.data, oc->text.len);
    json_t *fin = json_string(c ? c->finish : "stop");
    json_t *lp = json_null();
    if (oc->lp) { /* handed over to the response */
        lp = oc->chat ? json_pack("{s:o}", "content", oc->lp) : oc->lp;
        oc->lp = NULL;
    }
    json_t *choice;
    if (oc->chat)
        choice = json_pack("{s:i, s:{s:s, s:o}, s:o, s:o}", "index", 0, "message", "role", "assistant", "content", text,
                           "logprobs", lp, "finish_reason", fin);
    else
        choice = json_pack("{s:i, s:o, s:o, s:o}", "index", 0, "text", text, "logprobs", lp, "finish_reason", fin);
    json_t *resp = json_pack("{s:s, s:s, s:I, s:s, s:[o], s:o}", "id", oc->resp_id, "object",
                             oc->chat ? "chat.completion" : "text_completion", "created", (json_int_t)oc->created,
                             "model", call->model, "choices", choice, "usage", usage_json(c));
    gw_reply_json(conn, 200, resp, NULL);
    oai_finish(oc);
}

/* ---------------------------------------------------------------- queue timeout */

static void on_queue_timeout(struct ev_loop *loop, ev_timer *w, int revents);

/* The job hash's state when the queue timeout fired: still `queued` means no
 * worker admitted it.  A worker that admits it between this answer and the
 * cancel finds the cancel flag and ends it at its first step. */
static void on_queue_state(redisAsyncContext *ac, void *reply, void *priv) {
    oai_call *oc = priv;
    redisReply *r = reply;
    if (oc->base.done || oc->admitted) goto out;
    if (!r || r->type == REDIS_REPLY_ERROR) { /* cannot tell: ask again shortly */
        ev_timer_set(&oc->queue_w, QUEUE_RECHECK, 0.);
        ev_timer_start(oc->base.g->loop, &oc->queue_w);
        goto out;
    }
    if (r->type != REDIS_REPLY_STRING || strcmp(r->str, "queued") != 0) { /* running, or already final */
        oai_admitted(oc);
        goto out;
    }
    log_info("job %s: not admitted within --queue-timeout %g s: cancelled (503)", oc->base.id,
             oc->base.g->cfg.queue_timeout);
    cancel_job(oc);
    oc->ended = 1;
    gw_reply_error(oc->base.conn, 503, "service_unavailable", NULL, "queue_timeout",
                   "no worker took the job within %g s (--queue-timeout); it was cancelled: retry later",
                   oc->base.g->cfg.queue_timeout);
    oai_finish(oc);
out:
    gw_call_unref(&oc->base);
}

static void on_queue_timeout(struct ev_loop *loop, ev_timer *w, int revents) {
    oai_call *oc = container_of(w, oai_call, queue_w);
    if (oc->base.done || oc->admitted) return;
    char job[KEYS_MAX];
    keys_job(&oc->base.g->keys, oc->base.id, job, sizeof job);
    rcmd c;
    rcmd_init(&c);
    rcmd_str(&c, "HGET");
    rcmd_str(&c, job);
    rcmd_str(&c, "state");
    if (gw_call_send(&oc->base, &c, on_queue_state) != 0) { /* Redis down: ask again shortly */
        ev_timer_set(w, QUEUE_RECHECK, 0.);
        ev_timer_start(loop, w);
    }
}

/* ---------------------------------------------------------------- submission */

static void on_submitted(gw_call *call, int status, const char *msg) {
    oai_call *oc = (oai_call *)call;
    if (status == 429) {
        gw_reply_refused(call, msg);
        return oai_finish(oc);
    }
    if (status == 503) {
        gw_reply_redis_down(call->conn);
        return oai_finish(oc);
    }
    if (status) {
        gw_reply_error(call->conn, 500, "server_error", NULL, NULL, "submitting the job failed: %s", msg);
        return oai_finish(oc);
    }
    /* a stream's headers wait for the job's first event (see the top) */
    call->watch = jobwatch_start(&call->g->watches, call->id, 0, oc->stream ? on_stream_chunk : on_collect_chunk, oc);
    if (!call->watch) {
        cancel_job(oc);
        gw_reply_error(call->conn, 500, "server_error", NULL, NULL, "out of memory");
        return oai_finish(oc);
    }
    if (call->g->cfg.queue_timeout > 0 && !oc->admitted) {
        ev_timer_set(&oc->queue_w, call->g->cfg.queue_timeout, 0.);
        ev_timer_start(call->g->loop, &oc->queue_w);
    }
}

void gw_route_openai(gw *g, http_conn *c, http_request *req, int chat) {
    gw_parsed p;
    gw_bad bad;
    if (gw_parse_request(g, chat ? GW_API_CHAT : GW_API_COMPLETIONS, req->body, req->body_len, &p, &bad) != 0) {
        proto_request_deinit(&p.r);
        return gw_reply_bad(c, &bad);
    }
    oai_call *oc = (oai_call *)gw_call_new(g, c, req, sizeof *oc, oai_cleanup);
    if (oc) {
        ev_init(&oc->queue_w, on_queue_timeout);
        http_conn_on_close(c, on_client_gone, oc); /* instead of gw_call_new's: also cancel the job */
    }
    llmq_err err;
    if (!oc || keys_new_id(oc->base.id, &err) != LLMQ_OK) {
        proto_request_deinit(&p.r);
        gw_reply_error(c, 500, "server_error", NULL, NULL, "cannot create a job id");
        if (oc) gw_call_finish(&oc->base);
        return;
    }
    oc->chat = chat;
    oc->stream = p.stream;
    oc->include_usage = p.include_usage;
    oc->logprobs = p.r.logprobs != PROTO_UNSET;
    oc->guide_param = p.guide_param;
    if (oc->logprobs && !oc->stream && !(oc->lp = chat ? json_array() : gw_lp_completion_new())) {
        proto_request_deinit(&p.r);
        gw_reply_error(c, 500, "server_error", NULL, NULL, "out of memory");
        oai_finish(oc);
        return;
    }
    oc->created = gw_now_ms() / 1000;
    snprintf(oc->resp_id, sizeof oc->resp_id, "%s-%s", chat ? "chatcmpl" : "cmpl", oc->base.id);
    p.r.id = strdup(oc->base.id);
    int rc = p.r.id ? gw_submit(&oc->base, &p.r, on_submitted) : -1;
    proto_request_deinit(&p.r);
    if (rc != 0) {
        gw_reply_redis_down(c);
        oai_finish(oc);
        return;
    }
    oc->sent = 1;
}
