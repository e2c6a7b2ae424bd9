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
#include "common/toolcall.h"
#include "gateway/gw.h"
#include "gateway/logprobs.h"
#include "gateway/submit.h"
#include "gateway/toolcalls.h"

#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))
#define QUEUE_RECHECK 1.0 /* s before asking again when Redis could not say whether the job was admitted */

/* One choice of the response: a job of its own (n > 1 and best_of fan out in
 * the gateway, see the top and docs/architecture.md "n and best_of"). */
typedef struct oai_choice {
    struct oai_call *oc;
    char id[PROTO_MAX_ID_LEN + 1]; /* its job */
    jobwatch *watch;             /* following its output; NULL before submission and once stopped */
    int index;                   /* `index` in the response (best_of: its rank, set at the end) */
    proto_buf text;              /* non-stream: the text so far */
    json_t *lp;                  /* non-stream with logprobs: completions' four arrays, or
                                    chat's `content` array, so far */
    int64_t lp_offset;           /* completions: characters before the next token (text_offset) */
    double cum_lp;               /* best_of: the sum of its tokens' logprobs */
    char finish[32];             /* its finish reason, once ended */
    int has_usage;               /* its final chunk carried usage */
    proto_usage usage;
    int sent;                    /* its submission went to Redis: a job may exist to cancel */
    int ended;                   /* its final chunk came: nothing left to cancel */
    int admitted;                /* a worker took it (a chunk came, or its state left queued) */
    int begun;                   /* stream, chat: its role delta was sent */
    toolcall_stream *tc;         /* stream, chat with tools: its text through the tool-call parser */
} oai_choice;

typedef struct oai_call {
    gw_call base;
    int chat;                    /* chat.completions (else completions) */
    int stream;                  /* answer with SSE */
    int include_usage;           /* stream_options.include_usage */
    char resp_id[PROTO_MAX_ID_LEN + 16]; /* "cmpl-<id>" / "chatcmpl-<id>" (choice 0's job) */
    int64_t created;             /* Unix seconds */
    int logprobs;                /* the request asked for logprobs */
    const char *guide_param;     /* the body field of its constraint (static), NULL for none */
    json_t *tools;               /* chat with tools: the request's array (the texts' calls become tool_calls) */
    int max_calls;               /* tool calls per choice: 1 with parallel_tool_calls false, 0 = any */
    int n;                       /* choices returned */
    int n_jobs;                  /* choices generated: best_of (>= n) */
    int n_sent;                  /* submissions acknowledged so far (they go one after another) */
    int n_ended;                 /* choices whose final chunk came */
    proto_request req;           /* while submissions remain: the request, re-encoded per choice */
    int has_req;
    uint64_t seed;               /* the request's seed (has_seed of req) */
    int begun;                   /* stream: the SSE response has begun */
    ev_timer queue_w;            /* --queue-timeout, armed while a job may still be queued */
    oai_choice ch[GW_MAX_CHOICES];
} oai_call;

static void stop_watches(oai_call *oc) {
    for (int i = 0; i < oc->n_jobs; i++) {
        jobwatch_stop(oc->ch[i].watch);
        oc->ch[i].watch = NULL;
    }
}

static void oai_cleanup(gw_call *call) {
    oai_call *oc = (oai_call *)call;
    ev_timer_stop(call->g->loop, &oc->queue_w);
    stop_watches(oc);
    for (int i = 0; i < GW_MAX_CHOICES; i++) {
        proto_buf_deinit(&oc->ch[i].text);
        json_decref(oc->ch[i].lp);
        toolcall_stream_free(oc->ch[i].tc);
    }
    json_decref(oc->tools);
    if (oc->has_req) proto_request_deinit(&oc->req);
}

/* The answer ended (or the client left): no queue timeout, no more chunks. */
static void oai_finish(oai_call *oc) {
    ev_timer_stop(oc->base.g->loop, &oc->queue_w);
    stop_watches(oc);
    gw_call_finish(&oc->base);
}

/* A choice's job was taken by a worker (or ended): once all were, the queue
 * timeout is moot. */
static void oai_admitted(oai_choice *ch) {
    oai_call *oc = ch->oc;
    ch->admitted = 1;
    for (int i = 0; i < oc->n_jobs; i++)
        if (!oc->ch[i].admitted) return;
    ev_timer_stop(oc->base.g->loop, &oc->queue_w);
}

/* Cancel job `id` as DELETE /v1/jobs/{id} does (queued: ended at once;
 * running: the worker stops it between steps).  Fire and forget: nobody
 * waits for the answer, and Redis runs it after the submission, which went
 * first on the same connection. */
static void cancel_job(oai_call *oc, const char *id) {
    gw *g = oc->base.g;
    proto_buf chunk;
    proto_buf_init(&chunk);
    if (jobops_cancel_chunk(&chunk, NULL) == LLMQ_OK) {
        rcmd cmd;
        jobops_keys kb;
        jobops_cancel(&cmd, &kb, &g->keys, id, gw_now_ms(), g->cfg.result_ttl_s, chunk.data, chunk.len);
        if (gw_redis_send(&g->inst[oc->base.inst].redis, &cmd, NULL, NULL) != 0)
            log_warn("job %s: its client went away, and Redis is down: it runs to its end", id);
    }
    proto_buf_deinit(&chunk);
}

/* Cancel every choice's job that was sent and has not ended. */
static void cancel_jobs(oai_call *oc) {
    for (int i = 0; i < oc->n_jobs; i++)
        if (oc->ch[i].sent && !oc->ch[i].ended) {
            cancel_job(oc, oc->ch[i].id);
            oc->ch[i].ended = 1;
        }
}

/* The HTTP connection closed before the response ended. */
static void on_client_gone(void *ud) {
    oai_call *oc = ud;
    log_debug("job %s: client went away, cancelling", oc->base.id);
    cancel_jobs(oc);
    oai_finish(oc);
}

/* The `logprobs` of a choice for the tokens of c: null when not asked for. */
static json_t *chunk_logprobs(oai_choice *ch, const proto_chunk *c) {
    oai_call *oc = ch->oc;
    if (!oc->logprobs || !c) return json_null();
    if (oc->chat) {
        json_t *content = json_array();
        gw_lp_chat_add(content, c);
        return json_pack("{s:o}", "content", content);
    }
    json_t *o = gw_lp_completion_new();
    if (o) gw_lp_completion_add(o, c, &ch->lp_offset);
    return o ? o : json_null();
}

/* Usage of the whole response, as OpenAI counts it: the prompt once (every
 * choice's job has the same; cached_tokens are choice 0's), the completion
 * tokens of every choice generated (best_of: also those not returned).  null
 * when a choice's job gave none. */
static json_t *usage_json(const oai_call *oc) {
    int64_t completion = 0;
    for (int i = 0; i < oc->n_jobs; i++) {
        if (!oc->ch[i].has_usage) return json_null();
        completion += oc->ch[i].usage.completion_tokens;
    }
    const proto_usage *u0 = &oc->ch[0].usage;
    /* prompt_tokens_details.cached_tokens: the worker's prefix-cache hit, as OpenAI reports it */
    return json_pack("{s:I, s:I, s:I, s:{s:I}}", "prompt_tokens", (json_int_t)u0->prompt_tokens, "completion_tokens",
                     (json_int_t)completion, "total_tokens", (json_int_t)(u0->prompt_tokens + completion),
                     "prompt_tokens_details", "cached_tokens", (json_int_t)u0->cached_tokens);
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

/* lp: the choice's logprobs (stolen), NULL for null; calls: delta.tool_calls (stolen), NULL for none. */
static json_t *stream_choice(oai_choice *ch, const char *text, size_t len, const char *finish, int role, json_t *lp,
                             json_t *calls) {
    json_t *fin = finish ? json_string(finish) : json_null();
    if (!lp) lp = json_null();
    if (ch->oc->chat) {
        json_t *delta = json_object();
        if (role) json_object_set_new(delta, "role", json_string("assistant"));
        if (text) json_object_set_new(delta, "content", gw_json_text(text, len));
        if (calls) json_object_set_new(delta, "tool_calls", calls);
        return json_pack("{s:i, s:o, s:o, s:o}", "index", ch->index, "delta", delta, "logprobs", lp, "finish_reason",
                         fin);
    }
    return json_pack("{s:i, s:o, s:o, s:o}", "index", ch->index, "text",
                     gw_json_text(text ? text : "", text ? len : 0), "logprobs", lp, "finish_reason", fin);
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

/* A choice's final chunk (c may be NULL: it had ended before we watched):
 * what the response needs of it once its chunk is gone. */
static void choice_end(oai_choice *ch, const proto_chunk *c) {
    ch->ended = 1;
    ch->oc->n_ended++;
    snprintf(ch->finish, sizeof ch->finish, "%s", c && c->finish ? c->finish : "stop");
    if (c && c->has_usage) {
        ch->has_usage = 1;
        ch->usage = c->usage;
    }
}

/* best_of: the sampled tokens' logprobs of c add to the choice's sum. */
static void add_cum_lp(oai_choice *ch, const proto_chunk *c) {
    if (c && c->has_lp)
        for (size_t k = 0; k < c->n_ids; k++) ch->cum_lp += c->lp[k].tok.logprob;
}

/* A choice with tools: the chunk's text (c NULL: the end) through its parser,
 * and what it lets out as a chunk: content, tool_calls deltas (content held
 * back while a call may begin, common/toolcall.h).  -1 when the client is gone. */
static int send_tools_delta(oai_choice *ch, const proto_chunk *c) {
    oai_call *oc = ch->oc;
    toolcall_delta d;
    if (toolcall_stream_feed(ch->tc, c && c->text ? c->text : "", c ? c->text_len : 0, !c || c->finish, &d))
        log_warn("job %s: out of memory parsing its tool calls", ch->id);
    int gone = 0;
    if (d.content_len || d.tool_calls || (oc->logprobs && c && c->n_ids)) {
        json_t *calls = d.tool_calls;
        d.tool_calls = NULL;
        const char *text = d.content_len || !calls ? (d.content ? d.content : "") : NULL;
        gone = gw_sse_send_json(&oc->base, -1, NULL,
                                chunk_obj(oc, stream_choice(ch, text, d.content_len, NULL, 0, chunk_logprobs(ch, c), calls),
                                          NULL));
    }
    toolcall_delta_clear(&d);
    return gone;
}

/* The stream's first event: the SSE headers.  -1 when the client is gone. */
static int stream_begin(oai_call *oc) {
    oc->begun = 1;
    gw_sse_begin(&oc->base);
    return 0;
}

static void on_stream_chunk(void *ud, const proto_chunk *c) {
    oai_choice *ch = ud;
    oai_call *oc = ch->oc;
    gw_call *call = &oc->base;
    int gone = 0;
    const int failed = is_error(c);
    oai_admitted(ch);
    gw_call_ref(call); /* a failed write closes the connection, whose hook finishes the call */
    if (!c || c->finish) choice_end(ch, c);
    if (!oc->begun) {
        if (failed) { /* refused before any output: an HTTP error, as without `stream` */
            reply_job_error(oc, c);
            cancel_jobs(oc);
            oai_finish(oc);
            goto out;
        }
        gone = stream_begin(oc);
    }
    if (!gone && !failed && oc->chat && !ch->begun) { /* each choice's first delta has the role */
        ch->begun = 1;
        gone = gw_sse_send_json(call, -1, NULL, chunk_obj(oc, stream_choice(ch, "", 0, NULL, 1, NULL, NULL), NULL));
    }
    if (!gone && !failed && ch->tc)
        gone = send_tools_delta(ch, c);
    else if (!gone && c && !failed && (c->text_len || (oc->logprobs && c->n_ids)))
        gone = gw_sse_send_json(
            call, -1, NULL,
            chunk_obj(oc, stream_choice(ch, c->text ? c->text : "", c->text_len, NULL, 0, chunk_logprobs(ch, c), NULL),
                      NULL));
    if (!gone && c && !c->finish) goto out;
    if (!gone && failed) { /* failed after the output began: an error event (vLLM's shape), then [DONE] */
        job_err e = job_error(oc, c);
        cancel_jobs(oc); /* one choice failed: the response did */
        gone = gw_sse_send_json(call, -1, NULL,
                                json_pack("{s:{s:s, s:s, s:n, s:i}}", "error", "message", e.msg, "type", e.type,
                                          "param", "code", e.status));
    } else if (!gone) {
        const char *finish = ch->tc ? gw_tools_finish(ch->finish, toolcall_stream_calls(ch->tc)) : ch->finish;
        gone = gw_sse_send_json(call, -1, NULL,
                                chunk_obj(oc, stream_choice(ch, oc->chat ? NULL : "", 0, finish, 0, NULL, NULL), NULL));
        if (oc->n_ended < oc->n_jobs) goto out; /* other choices still run */
        /* usage only when asked, once, after the last choice (OpenAI's stream_options) */
        if (!gone && oc->include_usage) gone = gw_sse_send_json(call, -1, NULL, chunk_obj(oc, NULL, usage_json(oc)));
    }
    if (!gone) gw_sse_send(call, -1, NULL, "[DONE]", 6);
    gw_sse_end(call);
    oai_finish(oc);
out:
    gw_call_unref(call);
}

/* best_of: rank the choices by their sum of logprobs, highest first (ties:
 * the lower choice first); the first n are returned, as index 0..n-1. */
static void rank_choices(oai_call *oc, oai_choice **order) {
    for (int i = 0; i < oc->n_jobs; i++) order[i] = &oc->ch[i];
    if (oc->n_jobs == oc->n) return;
    for (int i = 1; i < oc->n_jobs; i++) /* insertion sort, stable: at most GW_MAX_CHOICES */
        for (int j = i; j > 0 && order[j]->cum_lp > order[j - 1]->cum_lp; j--) {
            oai_choice *t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    for (int i = 0; i < oc->n_jobs; i++) order[i]->index = i;
}

static void on_collect_chunk(void *ud, const proto_chunk *c) {
    oai_choice *ch = ud;
    oai_call *oc = ch->oc;
    gw_call *call = &oc->base;
    oai_admitted(ch);
    if (c && c->text_len) proto_buf_append(&ch->text, c->text, c->text_len);
    if (c && ch->lp) {
        if (oc->chat) gw_lp_chat_add(ch->lp, c);
        else gw_lp_completion_add(ch->lp, c, &ch->lp_offset);
    }
    if (oc->n_jobs > oc->n) add_cum_lp(ch, c);
    if (c && !c->finish) return;
    choice_end(ch, c);
    http_conn *conn = call->conn;
    if (is_error(c)) {
        reply_job_error(oc, c);
        cancel_jobs(oc); /* one choice failed: the response did */
        oai_finish(oc);
        return;
    }
    if (oc->n_ended < oc->n_jobs) return; /* other choices still run */
    oai_choice *order[GW_MAX_CHOICES];
    rank_choices(oc, order);
    json_t *choices = json_array();
    for (int i = 0; i < oc->n; i++) {
        oai_choice *o = order[i];
        json_t *text = oc->chat ? NULL : gw_json_text(o->text.data, o->text.len);
        const char *finish = o->finish;
        json_t *msg = oc->chat ? gw_chat_message(o->text.data, o->text.len, oc->tools, oc->max_calls, &finish) : NULL;
        json_t *fin = json_string(finish);
        json_t *lp = json_null();
        if (o->lp && oc->logprobs) { /* handed over to the response */
            lp = oc->chat ? json_pack("{s:o}", "content", o->lp) : o->lp;
            o->lp = NULL;
        }
        json_t *choice;
        if (oc->chat)
            choice = json_pack("{s:i, s:o, s:o, s:o}", "index", o->index, "message", msg, "logprobs", lp,
                               "finish_reason", fin);
        else
            choice = json_pack("{s:i, s:o, s:o, s:o}", "index", o->index, "text", text, "logprobs", lp,
                               "finish_reason", fin);
        json_array_append_new(choices, choice);
    }
    json_t *resp = json_pack("{s:s, s:s, s:I, s:s, s:o, s:o}", "id", oc->resp_id, "object",
                             oc->chat ? "chat.completion" : "text_completion", "created", (json_int_t)oc->created,
                             "model", call->model, "choices", choices, "usage", usage_json(oc));
    gw_reply_json(conn, 200, resp, NULL);
    oai_finish(oc);
}

/* ---------------------------------------------------------------- queue timeout */

static void on_queue_timeout(struct ev_loop *loop, ev_timer *w, int revents);

/* The first choice not known to be admitted (or NULL). */
static oai_choice *unadmitted(oai_call *oc) {
    for (int i = 0; i < oc->n_sent; i++)
        if (!oc->ch[i].admitted) return &oc->ch[i];
    return NULL;
}

/* The job hash's state of a choice not yet known admitted when the queue
 * timeout fired: still `queued` means no worker admitted it, and the whole
 * response is given up.  A worker that admits it between this answer and the
 * cancel finds the cancel flag and ends it at its first step. */
static void on_queue_state(redisAsyncContext *ac, void *reply, void *priv) {
    oai_call *oc = priv;
    redisReply *r = reply;
    oai_choice *ch = unadmitted(oc);
    if (oc->base.done || !ch) goto out;
    if (!r || r->type == REDIS_REPLY_ERROR) { /* cannot tell: ask again shortly */
        ev_timer_set(&oc->queue_w, QUEUE_RECHECK, 0.);
        ev_timer_start(oc->base.g->loop, &oc->queue_w);
        goto out;
    }
    if (r->type != REDIS_REPLY_STRING || strcmp(r->str, "queued") != 0) { /* running, or already final */
        oai_admitted(ch);
        if (unadmitted(oc)) { /* the next one */
            ev_timer_set(&oc->queue_w, 0., 0.);
            ev_timer_start(oc->base.g->loop, &oc->queue_w);
        }
        goto out;
    }
    log_info("job %s: not admitted within --queue-timeout %g s: cancelled (503)", ch->id,
             oc->base.g->cfg.queue_timeout);
    cancel_jobs(oc);
    gw_reply_error(oc->base.conn, 503, "service_unavailable", NULL, "queue_timeout",
                   "no worker took the job within %g s (--queue-timeout); it was cancelled: retry later",
                   oc->base.g->cfg.queue_timeout);
    oai_finish(oc);
out:
    gw_call_unref(&oc->base);
}

static void on_queue_timeout(struct ev_loop *loop, ev_timer *w, int revents) {
    oai_call *oc = container_of(w, oai_call, queue_w);
    oai_choice *ch = unadmitted(oc);
    if (oc->base.done || !ch) return;
    char job[KEYS_MAX];
    keys_job(&oc->base.g->keys, ch->id, job, sizeof job);
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

/* Choice i's seed: the request's for choice 0, else the i-th output of
 * SplitMix64 started at it, so that choice i is the same whatever n is
 * (docs/protocol.md "n and best_of"). */
static uint64_t choice_seed(uint64_t seed, int i) {
    if (i == 0) return seed;
    uint64_t z = seed + (uint64_t)i * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void on_submitted(gw_call *call, int status, const char *msg);

/* Submit the next choice's job (oc->n_sent of them were); 0, or -1 when
 * Redis is down. */
static int submit_next(oai_call *oc) {
    oai_choice *ch = &oc->ch[oc->n_sent];
    llmq_err err;
    if (oc->n_sent > 0 && gw_new_job_id(oc->base.g, oc->req.model, ch->id, &err) != LLMQ_OK) return -1;
    snprintf(oc->base.id, sizeof oc->base.id, "%s", ch->id); /* gw_submit submits call->id */
    free(oc->req.id);
    oc->req.id = strdup(ch->id);
    if (oc->req.has_seed) oc->req.seed = choice_seed(oc->seed, oc->n_sent);
    int rc = oc->req.id ? gw_submit(&oc->base, &oc->req, on_submitted) : -1;
    snprintf(oc->base.id, sizeof oc->base.id, "%s", oc->ch[0].id);
    if (rc == 0) ch->sent = 1;
    return rc;
}

static void on_submitted(gw_call *call, int status, const char *msg) {
    oai_call *oc = (oai_call *)call;
    if (status) {
        oc->ch[oc->n_sent].sent = 0; /* refused (or unknown): no job of its own to cancel */
        cancel_jobs(oc);             /* the choices already submitted */
        if (status == 429) gw_reply_refused(call, msg);
        else if (status == 503) gw_reply_redis_down(call->conn);
        else gw_reply_error(call->conn, 500, "server_error", NULL, NULL, "submitting the job failed: %s", msg);
        return oai_finish(oc);
    }
    oai_choice *ch = &oc->ch[oc->n_sent++];
    /* a stream's headers wait for a job's first event (see the top) */
    ch->watch = jobwatch_start(gw_call_watches(call), ch->id, 0, oc->stream ? on_stream_chunk : on_collect_chunk, ch);
    if (!ch->watch) {
        cancel_jobs(oc);
        gw_reply_error(call->conn, 500, "server_error", NULL, NULL, "out of memory");
        return oai_finish(oc);
    }
    if (oc->n_sent == 1 && call->g->cfg.queue_timeout > 0 && !ch->admitted) {
        ev_timer_set(&oc->queue_w, call->g->cfg.queue_timeout, 0.);
        ev_timer_start(call->g->loop, &oc->queue_w);
    }
    if (oc->n_sent < oc->n_jobs && submit_next(oc) != 0) {
        cancel_jobs(oc);
        gw_reply_redis_down(call->conn);
        return oai_finish(oc);
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
        http_conn_on_close(c, on_client_gone, oc); /* instead of gw_call_new's: also cancel the jobs */
        oc->req = p.r; /* owned by the call from here on */
        oc->has_req = 1;
        oc->n = p.n;
        oc->n_jobs = p.best_of;
        for (int i = 0; i < GW_MAX_CHOICES; i++) {
            oc->ch[i].oc = oc;
            oc->ch[i].index = i;
            proto_buf_init(&oc->ch[i].text);
        }
    } else {
        proto_request_deinit(&p.r);
    }
    llmq_err err;
    if (!oc || gw_new_job_id(g, oc->req.model, oc->base.id, &err) != LLMQ_OK) {
        gw_reply_error(c, 500, "server_error", NULL, NULL, "cannot create a job id");
        if (oc) gw_call_finish(&oc->base);
        return;
    }
    snprintf(oc->ch[0].id, sizeof oc->ch[0].id, "%s", oc->base.id);
    oc->chat = chat;
    oc->stream = p.stream;
    oc->include_usage = p.include_usage;
    oc->logprobs = oc->req.logprobs != PROTO_UNSET;
    oc->guide_param = p.guide_param;
    oc->tools = oc->req.tools ? json_loads(oc->req.tools, 0, NULL) : NULL; /* checked by the parse */
    oc->max_calls = p.max_tool_calls;
    oc->seed = oc->req.seed;
    /* best_of ranks by the sampled tokens' logprobs: the jobs send them
     * even when the client did not ask (then they are not returned) */
    if (oc->n_jobs > oc->n && !oc->logprobs) oc->req.logprobs = 0;
    for (int i = 0; i < oc->n_jobs; i++)
        if ((oc->logprobs && !oc->stream && !(oc->ch[i].lp = chat ? json_array() : gw_lp_completion_new())) ||
            (oc->req.tools && (!oc->tools || (oc->stream && !(oc->ch[i].tc = toolcall_stream_new(oc->tools, oc->max_calls)))))) {
            gw_reply_error(c, 500, "server_error", NULL, NULL, "out of memory");
            oai_finish(oc);
            return;
        }
    oc->created = gw_now_ms() / 1000;
    snprintf(oc->resp_id, sizeof oc->resp_id, "%s-%s", chat ? "chatcmpl" : "cmpl", oc->base.id);
    if (submit_next(oc) != 0) {
        gw_reply_redis_down(c);
        oai_finish(oc);
    }
}
