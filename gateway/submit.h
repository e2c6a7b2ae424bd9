/*
 * submit.h — from an HTTP JSON body to a job in Redis: validate the body of
 * /v1/completions, /v1/chat/completions or /v1/jobs into a proto_request,
 * then write it (queue bound check, job hash + stream entry in one MULTI).
 *
 * The gateway never tokenizes: prompts and messages go into the request as
 * text, the worker templates and tokenizes them.
 */
#ifndef LLMQ_GW_SUBMIT_H
#define LLMQ_GW_SUBMIT_H

#include "gateway/gw.h"

typedef enum gw_api { GW_API_COMPLETIONS, GW_API_CHAT, GW_API_JOBS } gw_api;

/* A request refused before submission: answered as an OpenAI error. */
typedef struct gw_bad {
    int status;                  /* 400, 404, ... */
    const char *type;            /* "invalid_request_error", ... */
    const char *code;            /* NULL or "model_not_found", ... */
    char param[64];              /* the offending field, "" for none */
    char msg[512];
} gw_bad;

#define GW_MAX_CHOICES 16 /* most `n` and `best_of` (docs/protocol.md): each choice is a job */

typedef struct gw_parsed {
    proto_request r;             /* owned: proto_request_deinit */
    int stream;                  /* "stream": true */
    int include_usage;           /* "stream_options": {"include_usage": true} */
    int n;                       /* choices to return, 1..GW_MAX_CHOICES (1 for the job API) */
    int best_of;                 /* choices to generate (completions), n..GW_MAX_CHOICES; else n */
    const char *guide_param;     /* the body field r's `guide` came from ("response_format",
                                    "guided_json", ...), NULL when unconstrained: the `param`
                                    of the worker's refusal of the constraint */
    int max_tool_calls;          /* tool calls parsed per choice: 1 with "parallel_tool_calls":
                                    false, else 0 (any number) */
} gw_parsed;

/* Parse and validate a JSON body.  0 on success (p->r filled, model served),
 * -1 with bad filled. p->r is always safe to deinit.  A model that no live
 * worker and no --models entry names is a 404 model_not_found; an explicit
 * max_tokens past the model's context (max_model_len of its heartbeats) a 400. */
int gw_parse_request(gw *g, gw_api api, const char *body, size_t len, gw_parsed *p, gw_bad *bad);
/* Answer bad, except a model not found in the request gw_route is
 * dispatching: that one is held for a fresh read of the heartbeats and
 * routed again (gw_models_retry), then answered. */
void gw_reply_bad(http_conn *c, const gw_bad *bad);

/*
 * Submit r as job call->id (r->id and r->model are used as they are), owned
 * by the API key of call->req (gateway/auth.h "Tenants").  Calls
 * call->submitted exactly once, asynchronously, unless the call is done
 * first: status 0 = queued; 429 = queue past --max-queue, or the submitting
 * API key past --key-max-jobs unfinished jobs or --key-tokens-per-minute;
 * 503 = Redis down;
 * 500 = Redis refused.  Returns -1 (and calls nothing) when the request
 * cannot even be encoded or sent right now (the caller answers 503/500).
 */
int gw_submit(gw_call *call, const proto_request *r, void (*submitted)(gw_call *, int status, const char *msg));

/* Answer a submission refused with 429 (msg: what `submitted` got): code
 * queue_full past the model's --max-queue, key_limit past a per-key limit
 * (--key-max-jobs, --key-tokens-per-minute), with the Retry-After the
 * refusal computed (for tokens per minute: when the key's budget frees). */
void gw_reply_refused(gw_call *call, const char *msg);

#endif
