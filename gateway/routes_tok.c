/*
 * routes_tok.c — POST /tokenize and POST /detokenize, in vLLM's shapes:
 *   /tokenize    {"model", "prompt" | "messages", "add_special_tokens"?}
 *                → {"count", "max_model_len", "tokens", "token_strs": null}
 *   /detokenize  {"model", "tokens": [id, ...]} → {"prompt"}
 *
 * The gateway has no tokenizer (it is thin, and runs apart from the workers),
 * so each is a job whose request carries `op` tokenize or detokenize; a
 * worker of the model answers it at admission with one final chunk (ids, or
 * text, and max_model_len) without touching its KV cache, and the route
 * waits for that chunk as a non-streaming completion waits for its last
 * (docs/protocol.md, "Operations").  A refusal by the worker (a template
 * that does not render, an id outside the vocabulary) comes back as its
 * error with its status, as a completion's does.
 *
 * Like the /v1 routes they take the bearer key when keys are configured:
 * each costs a trip through the queue and a worker's time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <http_parser.h>

#include "common/keys.h"
#include "gateway/gw.h"
#include "gateway/submit.h"

typedef struct tok_call {
    gw_call base;
    int detok;                   /* /detokenize (else /tokenize) */
} tok_call;

static void on_answer(void *ud, const proto_chunk *c) {
    tok_call *tc = ud;
    gw_call *call = &tc->base;
    if (c && !c->finish) return; /* an answer is one final chunk; nothing else is expected */
    http_conn *conn = call->conn;
    if (!c) {
        gw_reply_error(conn, 500, "server_error", NULL, NULL, "the job had ended without an answer");
    } else if (!strcmp(c->finish, "error")) {
        int status = c->error_status >= 400 && c->error_status < 600 ? c->error_status : 500;
        gw_reply_error(conn, status, status < 500 ? "invalid_request_error" : "server_error", NULL,
                       c->code ? c->code : "job_failed", "%s", c->error ? c->error : "the job failed");
    } else if (strcmp(c->finish, "stop")) { /* cancelled or past a deadline before a worker took it */
        gw_reply_error(conn, 503, "service_unavailable", NULL, NULL, "the job ended without an answer (%s)",
                       c->finish);
    } else if (tc->detok) {
        gw_reply_json(conn, 200, json_pack("{s:o}", "prompt", gw_json_text(c->text, c->text_len)), NULL);
    } else {
        json_t *tokens = json_array();
        for (size_t i = 0; i < c->n_ids; i++) json_array_append_new(tokens, json_integer(c->ids[i]));
        gw_reply_json(conn, 200,
                      json_pack("{s:I, s:I, s:o, s:n}", "count", (json_int_t)c->n_ids, "max_model_len",
                                (json_int_t)c->max_model_len, "tokens", tokens, "token_strs"),
                      NULL);
    }
    gw_call_finish(call);
}

static void on_submitted(gw_call *call, int status, const char *msg) {
    if (status == 429) {
        gw_reply_refused(call, msg);
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
    call->watch = jobwatch_start(gw_call_watches(call), call->id, 0, on_answer, (tok_call *)call);
    if (!call->watch) {
        gw_reply_error(call->conn, 500, "server_error", NULL, NULL, "out of memory");
        gw_call_finish(call);
    }
}

/* /tokenize: the job API's parsing of model and prompt or messages, then
 * add_special_tokens (absent: the worker's default, vLLM's: true for a
 * prompt, false for messages, whose template holds BOS). */
static int parse_tokenize(gw *g, const http_request *req, gw_parsed *p, gw_bad *bad) {
    if (gw_parse_request(g, GW_API_JOBS, req->body, req->body_len, p, bad) != 0) return -1;
    memset(bad, 0, sizeof *bad);
    bad->status = 400;
    bad->type = "invalid_request_error";
    if (p->r.kind == PROTO_PROMPT_IDS) {
        snprintf(bad->param, sizeof bad->param, "prompt");
        snprintf(bad->msg, sizeof bad->msg, "give 'prompt' or 'messages' to tokenize");
        return -1;
    }
    json_t *o = json_loadb(req->body, req->body_len, 0, NULL); /* parsed above: an object */
    const json_t *v = o ? json_object_get(o, "add_special_tokens") : NULL;
    int rc = 0;
    if (v && !json_is_null(v)) {
        if (json_is_boolean(v)) {
            p->r.add_special_tokens = json_is_true(v);
        } else {
            snprintf(bad->param, sizeof bad->param, "add_special_tokens");
            snprintf(bad->msg, sizeof bad->msg, "'add_special_tokens' must be a boolean");
            rc = -1;
        }
    }
    json_decref(o);
    p->r.op = PROTO_OP_TOKENIZE;
    p->r.max_tokens = PROTO_UNSET; /* nothing is generated: the job API's default limit means nothing here */
    return rc;
}

static int bad_set(gw_bad *bad, int status, const char *param, const char *msg) {
    memset(bad, 0, sizeof *bad);
    bad->status = status;
    bad->type = "invalid_request_error";
    snprintf(bad->param, sizeof bad->param, "%s", param);
    snprintf(bad->msg, sizeof bad->msg, "%s", msg);
    return -1;
}

/* /detokenize: model and tokens (ids >= 0; [] gives ""). */
static int parse_detokenize(gw *g, const http_request *req, gw_parsed *p, gw_bad *bad) {
    memset(p, 0, sizeof *p);
    proto_request_init(&p->r);
    json_error_t je;
    json_t *o = req->body_len ? json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &je) : NULL;
    int rc = 0;
    const json_t *model = o ? json_object_get(o, "model") : NULL, *tokens = o ? json_object_get(o, "tokens") : NULL;
    if (!json_is_object(o)) {
        rc = bad_set(bad, 400, "", "the request body must be a JSON object");
    } else if (!json_is_string(model) || !keys_model_valid(json_string_value(model))) {
        rc = bad_set(bad, 400, "model", "'model' is required: 1-128 characters of [A-Za-z0-9._:/@+-]");
    } else if (gw_model_lookup(g, json_string_value(model)) < 0) {
        rc = bad_set(bad, 404, "model", "The model does not exist");
        snprintf(bad->msg, sizeof bad->msg, "The model '%s' does not exist", json_string_value(model));
        bad->code = "model_not_found";
    } else if (!json_is_array(tokens) || json_array_size(tokens) > PROTO_MAX_PROMPT_IDS) {
        rc = bad_set(bad, 400, "tokens", "'tokens' must be an array of token ids");
    } else {
        size_t n = json_array_size(tokens);
        p->r.prompt_ids = malloc((n ? n : 1) * sizeof *p->r.prompt_ids);
        p->r.model = strdup(json_string_value(model));
        if (!p->r.prompt_ids || !p->r.model) rc = bad_set(bad, 500, "", "out of memory");
        for (size_t i = 0; i < n && !rc; i++) {
            const json_t *e = json_array_get(tokens, i);
            if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > INT32_MAX)
                rc = bad_set(bad, 400, "tokens", "'tokens' entries must be integers from 0 to 2147483647");
            else p->r.prompt_ids[i] = (int32_t)json_integer_value(e);
        }
        p->r.n_prompt_ids = n;
        p->r.kind = PROTO_PROMPT_IDS;
        p->r.op = PROTO_OP_DETOKENIZE;
    }
    json_decref(o);
    return rc;
}

void gw_route_tok(gw *g, http_conn *c, http_request *req, int detok) {
    req->route = detok ? "/detokenize" : "/tokenize";
    if (req->method != HTTP_POST) {
        json_t *e = json_pack("{s:{s:s, s:s, s:n, s:n}}", "error", "message", "method not allowed", "type",
                              "invalid_request_error", "param", "code");
        return gw_reply_json(c, 405, e, "Allow: POST\r\n");
    }
    if (!gw_auth_check(&g->auth, req->authorization))
        return gw_reply_error(c, 401, "invalid_request_error", NULL, "invalid_api_key",
                              req->authorization ? "Incorrect API key provided"
                                                 : "Missing API key: send 'Authorization: Bearer <key>'");
    if (g->shutting_down)
        return gw_reply_error(c, 503, "service_unavailable", NULL, "shutting_down", "the gateway is shutting down");
    gw_parsed p;
    gw_bad bad;
    if ((detok ? parse_detokenize(g, req, &p, &bad) : parse_tokenize(g, req, &p, &bad)) != 0) {
        proto_request_deinit(&p.r);
        return gw_reply_bad(c, &bad);
    }
    tok_call *tc = (tok_call *)gw_call_new(g, c, req, sizeof *tc, NULL);
    llmq_err err;
    if (!tc || gw_new_job_id(g, p.r.model, tc->base.id, &err) != LLMQ_OK || !(p.r.id = strdup(tc->base.id))) {
        proto_request_deinit(&p.r);
        gw_reply_error(c, 500, "server_error", NULL, NULL, "cannot create a job id");
        if (tc) gw_call_finish(&tc->base);
        return;
    }
    tc->detok = detok;
    int rc = gw_submit(&tc->base, &p.r, on_submitted);
    proto_request_deinit(&p.r);
    if (rc != 0) {
        gw_reply_redis_down(c);
        gw_call_finish(&tc->base);
    }
}
