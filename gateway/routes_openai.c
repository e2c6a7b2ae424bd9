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
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "gateway/gw.h"
#include "gateway/logprobs.h"
#include "gateway/submit.h"

typedef struct oai_call {
    gw_call base;
    int chat;                    /* chat.completions (else completions) */
    int stream;                  /* answer with SSE */
    int include_usage;           /* stream_options.include_usage */
    char resp_id[PROTO_MAX_ID_LEN + 16]; /* "cmpl-<id>" / "chatcmpl-<id>" */
    int64_t created;             /* Unix seconds */
    proto_buf text;              /* non-stream: the text so far */
    int logprobs;                /* the request asked for logprobs */
    json_t *lp;                  /* non-stream with logprobs: completions' four arrays, or
                                    chat's `content` array, so far */
    int64_t lp_offset;           /* completions: characters before the next token (text_offset) */
} oai_call;

static void oai_cleanup(gw_call *call) {
    oai_call *oc = (oai_call *)call;
    proto_buf_deinit(&oc->text);
    json_decref(oc->lp);
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
    return json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)c->usage.prompt_tokens, "completion_tokens",
                     (json_int_t)c->usage.completion_tokens, "total_tokens",
                     (json_int_t)(c->usage.prompt_tokens + c->usage.completion_tokens));
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

static void job_error(const proto_chunk *c, int *status, const char **type, const char **msg) {
    *status = c->error_status >= 400 && c->error_status < 600 ? c->error_status : 500;
    *type = *status < 500 ? "invalid_request_error" : "server_error";
    *msg = c->error ? c->error : "the job failed";
}

static void on_stream_chunk(void *ud, const proto_chunk *c) {
    oai_call *oc = ud;
    gw_call *call = &oc->base;
    int gone = 0;
    const int failed = c && c->finish && !strcmp(c->finish, "error");
    if (c && !failed && (c->text_len || (oc->logprobs && c->n_ids)))
        gone = gw_sse_send_json(call, -1, NULL,
                                chunk_obj(oc,
                                          stream_choice(oc, c->text ? c->text : "", c->text_len, NULL, 0,
                                                        chunk_logprobs(oc, c)),
                                          NULL));
    if (!gone && c && !c->finish) return;
    if (!gone && c && !strcmp(c->finish, "error")) {
        int status;
        const char *type, *msg;
        job_error(c, &status, &type, &msg);
        gone = gw_sse_send_json(call, -1, NULL,
                                json_pack("{s:{s:s, s:s, s:n, s:i}}", "error", "message", msg, "type", type, "param",
                                          "code", status));
    } else if (!gone) {
        /* the finishing chunk carries usage too ("usage in the last response") */
        const char *fin = c ? c->finish : "stop";
        gone = gw_sse_send_json(call, -1, NULL,
                                chunk_obj(oc, stream_choice(oc, oc->chat ? NULL : "", 0, fin, 0, NULL), usage_json(c)));
        if (!gone && oc->include_usage) gone = gw_sse_send_json(call, -1, NULL, chunk_obj(oc, NULL, usage_json(c)));
    }
    if (!gone) gw_sse_send(call, -1, NULL, "[DONE]", 6);
    gw_sse_end(call);
    gw_call_finish(call);
}

static void on_collect_chunk(void *ud, const proto_chunk *c) {
    oai_call *oc = ud;
    gw_call *call = &oc->base;
    if (c && c->text_len) proto_buf_append(&oc->text, c->text, c->text_len);
    if (c && oc->lp) {
        if (oc->chat) gw_lp_chat_add(oc->lp, c);
        else gw_lp_completion_add(oc->lp, c, &oc->lp_offset);
    }
    if (c && !c->finish) return;
    http_conn *conn = call->conn;
    if (c && !strcmp(c->finish, "error")) {
        int status;
        const char *type, *msg;
        job_error(c, &status, &type, &msg);
        gw_reply_error(conn, status, type, NULL, "job_failed", "%s", msg);
        gw_call_finish(call);
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
    gw_call_finish(call);
}

static void on_submitted(gw_call *call, int status, const char *msg) {
    oai_call *oc = (oai_call *)call;
    if (status == 429) {
        gw_reply_error(call->conn, 429, "rate_limit_error", NULL, "queue_full", "queue full: %s; retry later", msg);
        return gw_call_finish(call);
    }
    if (status == 503) {
        gw_reply_redis_down(call->conn);
        return gw_call_finish(call);
    }
    if (status) {
        gw_reply_error(call->conn, 500, "server_error", NULL, NULL, "submitting the job failed: %s", msg);
        return gw_call_finish(call);
    }
    if (oc->stream) {
        gw_sse_begin(call);
        if (oc->chat &&
            gw_sse_send_json(call, -1, NULL, chunk_obj(oc, stream_choice(oc, "", 0, NULL, 1, NULL), NULL)) != 0)
            return gw_call_finish(call);
    }
    call->watch = jobwatch_start(&call->g->watches, call->id, 0, oc->stream ? on_stream_chunk : on_collect_chunk, oc);
    if (!call->watch) {
        if (oc->stream) gw_sse_end(call);
        else gw_reply_error(call->conn, 500, "server_error", NULL, NULL, "out of memory");
        gw_call_finish(call);
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
    if (oc->logprobs && !oc->stream && !(oc->lp = chat ? json_array() : gw_lp_completion_new())) {
        proto_request_deinit(&p.r);
        gw_reply_error(c, 500, "server_error", NULL, NULL, "out of memory");
        gw_call_finish(&oc->base);
        return;
    }
    oc->created = gw_now_ms() / 1000;
    snprintf(oc->resp_id, sizeof oc->resp_id, "%s-%s", chat ? "chatcmpl" : "cmpl", oc->base.id);
    p.r.id = strdup(oc->base.id);
    int rc = p.r.id ? gw_submit(&oc->base, &p.r, on_submitted) : -1;
    proto_request_deinit(&p.r);
    if (rc != 0) {
        gw_reply_redis_down(c);
        gw_call_finish(&oc->base);
    }
}
