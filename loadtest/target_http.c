/*
 * target_http.c — the HTTP(S) target: OpenAI-compatible completions or chat
 * completions (the llmq gateway, vLLM, any such server), through httpc
 * (libcurl).
 *
 * Each request is one POST.  On a completions endpoint the body is
 *
 *   {"model": M, "prompt": [ids...] or TEXT, "max_tokens": N, "ignore_eos": true,
 *    "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}
 *
 * and on a chat endpoint (the path ends in /chat/completions)
 *
 *   {"model": M, "messages": [{"role": "user", "content": TEXT}],
 *    "max_completion_tokens": N, "ignore_eos": true, ...the same}
 *
 * Random prompts are token ids, so their length in tokens is exact without a
 * tokenizer on this side; chat takes text, so there they become one word per
 * id (dataset.h), and a dataset's prompts are text everywhere: their token
 * counts are the server's usage.prompt_tokens.  ignore_eos makes the server
 * generate exactly the tokens asked for.  Streaming responses are SSE: each
 * event whose choice carries non-empty text counts as one token-carrying
 * chunk (vLLM's benchmark counts the same way); `usage.completion_tokens`,
 * when the server sends it, is the output token count, else the number of
 * such events is.  The stream must end with `data: [DONE]`; an event with
 * an `error` object fails the request ("stream_error").  Without --stream the
 * whole answer arrives at once: TTFT = E2E and there is no ITL or TPOT.
 */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loadtest/httpc.h"
#include "loadtest/lt.h"
#include "loadtest/sse.h"

#define ERR_BODY_MAX 2048        /* bytes of an error response kept for the message */
#define JSON_BODY_MAX (8 << 20)  /* bytes of a non-streaming answer */

typedef struct http_target {
    lt_target base;
    const lt_config *cfg;
    httpc *cli;
    struct curl_slist *headers;  /* the same for every request (owned) */
    unsigned long bad_events;    /* SSE events that were not JSON (ignored) */
} http_target;

/* Per-request state, freed when the request ends. */
typedef struct http_req {
    httpc_call call;
    http_target *t;
    lt_req *r;
    int status;                  /* HTTP status; 0 before the headers */
    sse_parser sse;
    char *body;                  /* error or non-streaming body (owned) */
    size_t body_len;
    int saw_done;                /* data: [DONE] arrived */
    char *stream_err;            /* message of an error event (owned) */
    int sse_failed;              /* the SSE parser refused the stream */
    double t_read;               /* time of the read being parsed, monotonic s */
} http_req;

static void req_free(http_req *h) {
    if (!h) return;
    sse_deinit(&h->sse);
    free(h->body);
    free(h->stream_err);
    free(h);
}

/* ---------------------------------------------------------------- responses */

/* choices[0].text, .delta.content (chat streaming) or .message.content
 * (chat), when a non-empty string. */
static int choice_has_text(const json_t *o) {
    const json_t *ch = json_array_get(json_object_get(o, "choices"), 0);
    if (!ch) return 0;
    const json_t *tx = json_object_get(ch, "text");
    if (!tx) tx = json_object_get(json_object_get(ch, "delta"), "content");
    if (!tx) tx = json_object_get(json_object_get(ch, "message"), "content");
    return json_is_string(tx) && json_string_length(tx) > 0;
}

static void read_usage(lt_req *r, const json_t *o) {
    const json_t *u = json_object_get(o, "usage");
    if (!json_is_object(u)) return;
    const json_t *p = json_object_get(u, "prompt_tokens"), *c = json_object_get(u, "completion_tokens");
    lt_req_usage(r, json_is_integer(p) ? json_integer_value(p) : -1, json_is_integer(c) ? json_integer_value(c) : -1);
}

static char *error_message(const json_t *o) {
    const json_t *e = json_object_get(o, "error");
    const json_t *m = json_is_object(e) ? json_object_get(e, "message") : e;
    if (json_is_string(m)) return strdup(json_string_value(m));
    return strdup("error event without a message");
}

/* One SSE event.  Its time is that of the read that completed it. */
static int on_event(void *ud, const char *data, size_t len) {
    http_req *h = ud;
    if (len == 6 && !memcmp(data, "[DONE]", 6)) {
        h->saw_done = 1;
        return 0;
    }
    json_t *o = json_loadb(data, len, 0, NULL);
    if (!json_is_object(o)) {
        json_decref(o);
        h->t->bad_events++;
        return 0;
    }
    if (json_object_get(o, "error")) {
        if (!h->stream_err) h->stream_err = error_message(o);
    } else {
        if (choice_has_text(o)) lt_req_tokens(h->r, h->t_read, 1);
        read_usage(h->r, o);
    }
    json_decref(o);
    return 0;
}

static void on_status(void *ud, int status, double t) { ((http_req *)ud)->status = status; }

static int on_body(void *ud, const char *data, size_t len, double t) {
    http_req *h = ud;
    if (h->status == 200 && h->t->cfg->stream) {
        h->t_read = t;
        if (sse_feed(&h->sse, data, len, on_event, h) < 0) {
            h->sse_failed = 1;
            return 1; /* on_done comes with "aborted" */
        }
        return 0;
    }
    size_t cap = h->status == 200 ? JSON_BODY_MAX : ERR_BODY_MAX;
    size_t n = len < cap - h->body_len ? len : cap - h->body_len;
    if (n == 0) return 0;
    char *nb = realloc(h->body, h->body_len + n);
    if (!nb) return 0; /* the message loses its end; the figures do not change */
    memcpy(nb + h->body_len, data, n);
    h->body = nb;
    h->body_len += n;
    return 0;
}

/* The message of an error answer: error.message of an OpenAI error object,
 * else the start of the body. */
static void error_from_body(http_req *h, char *out, size_t cap) {
    json_t *o = h->body_len ? json_loadb(h->body, h->body_len, 0, NULL) : NULL;
    char *m = o ? error_message(o) : NULL;
    if (m) snprintf(out, cap, "%s", m);
    else snprintf(out, cap, "%.*s", (int)(h->body_len < 200 ? h->body_len : 200), h->body ? h->body : "");
    free(m);
    json_decref(o);
}

static void on_done(void *ud, const char *err_kind, const char *msg, double t) {
    http_req *h = ud;
    lt_req *r = h->r;
    r->tstate = NULL;
    if (h->sse_failed) {
        lt_req_finish(r, t, "sse_parse", "an SSE line or event exceeded %d bytes", SSE_DEFAULT_MAX);
    } else if (err_kind) {
        lt_req_finish(r, t, err_kind, "%s", msg);
    } else if (h->status != 200) {
        char kind[LT_ERR_KIND_MAX], m[256];
        snprintf(kind, sizeof kind, "http_%d", h->status);
        error_from_body(h, m, sizeof m);
        lt_req_finish(r, t, kind, "HTTP %d: %s", h->status, m);
    } else if (h->t->cfg->stream) {
        if (h->stream_err) lt_req_finish(r, t, "stream_error", "%s", h->stream_err);
        else if (!h->saw_done) lt_req_finish(r, t, "truncated", "the stream ended without data: [DONE]");
        else lt_req_finish(r, t, NULL, NULL);
    } else {
        json_t *o = json_loadb(h->body ? h->body : "", h->body_len, 0, NULL);
        if (!json_is_object(o)) {
            lt_req_finish(r, t, "bad_json", "the answer is not a JSON object");
        } else if (json_object_get(o, "error")) {
            char *m = error_message(o);
            lt_req_finish(r, t, "stream_error", "%s", m);
            free(m);
        } else {
            read_usage(r, o);
            /* the whole answer at once: one chunk with every token */
            int64_t n = r->usage_completion >= 0 ? r->usage_completion : (choice_has_text(o) ? 1 : 0);
            if (n > 0) lt_req_tokens(r, t, (uint32_t)n);
            lt_req_finish(r, t, NULL, NULL);
        }
        json_decref(o);
    }
    req_free(h);
}

static const httpc_handler handler = {on_status, on_body, on_done};

/* ---------------------------------------------------------------- requests */

/* The request body: token ids or text, completions or chat. */
static char *build_body(const lt_config *cfg, const lt_req *r, const int32_t *ids, const char *text) {
    json_t *o;
    /* json_pack fails (NULL) on a string that is not UTF-8 and on no memory */
    if (cfg->chat) {
        o = json_pack("{s:s, s:[{s:s, s:s}], s:i}", "model", cfg->model, "messages", "role", "user", "content", text,
                      "max_completion_tokens", r->max_tokens);
    } else {
        json_t *p = text ? json_string(text) : json_array();
        for (int32_t i = 0; !text && p && i < r->prompt_tokens; i++)
            if (json_array_append_new(p, json_integer(ids[i]))) {
                json_decref(p);
                p = NULL;
            }
        o = json_pack("{s:s, s:o, s:i}", "model", cfg->model, "prompt", p, "max_tokens", r->max_tokens);
    }
    if (!o) return NULL;
    int bad = json_object_set_new(o, "ignore_eos", json_true()) || json_object_set_new(o, "temperature", json_integer(0));
    if (cfg->stream)
        bad = bad || json_object_set_new(o, "stream", json_true()) ||
              json_object_set_new(o, "stream_options", json_pack("{s:b}", "include_usage", 1));
    char *body = bad ? NULL : json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return body;
}

static void http_send(lt_target *base, lt_req *r, const int32_t *ids, const char *text) {
    http_target *t = (http_target *)base;
    const lt_config *cfg = t->cfg;
    http_req *h = calloc(1, sizeof *h);
    char *body = h ? build_body(cfg, r, ids, text) : NULL;
    if (!body) {
        free(h);
        lt_req_finish(r, lt_now(), "nomem", "cannot build the request (out of memory, or text that is not UTF-8)");
        return;
    }
    h->t = t;
    h->r = r;
    sse_init(&h->sse, 0);
    r->tstate = h;
    httpc_call_start(t->cli, &h->call, cfg->url, t->headers, body, strlen(body), &handler, h);
    free(body); /* curl copied it */
}

static void http_cancel(lt_target *base, lt_req *r) {
    http_req *h = r->tstate;
    if (!h) return;
    r->tstate = NULL;
    httpc_call_abort(&h->call);
    req_free(h);
}

/* ---------------------------------------------------------------- target */

static int http_start(lt_target *base, llmq_err *err) {
    lt_run_ready(base->run);
    return 0;
}

static void http_stats(lt_target *base, json_t *out) {
    http_target *t = (http_target *)base;
    httpc_stats st;
    httpc_get_stats(t->cli, &st);
    json_object_set_new(out, "connections_opened", json_integer((json_int_t)st.connects));
    json_object_set_new(out, "connections_reused", json_integer((json_int_t)st.reuses));
    json_object_set_new(out, "max_connections_open", json_integer((json_int_t)st.max_open));
    json_object_set_new(out, "ignored_events", json_integer((json_int_t)t->bad_events));
}

static void http_destroy(lt_target *base) {
    http_target *t = (http_target *)base;
    if (!t) return;
    /* requests still in flight hold calls on the client: drop them first */
    lt_run *run = base->run;
    for (size_t i = 0; i < run->n_warm; i++) http_cancel(base, run->warm[i]);
    for (size_t i = 0; i < run->n_reqs; i++) http_cancel(base, run->reqs[i]);
    httpc_destroy(t->cli);
    curl_slist_free_all(t->headers);
    free(t);
}

static const lt_target_ops http_ops = {
    .name = "http",
    .start = http_start,
    .send = http_send,
    .cancel = http_cancel,
    .stats = http_stats,
    .destroy = http_destroy,
};

lt_target *lt_target_http_create(lt_run *run, const lt_config *cfg, llmq_err *err) {
    json_t *m = json_string(cfg->model); /* NULL: not UTF-8, every body would fail */
    if (!m) {
        llmq_err_set(err, LLMQ_ERR_INVALID, "the model name is not valid UTF-8");
        return NULL;
    }
    json_decref(m);
    http_target *t = calloc(1, sizeof *t);
    if (!t) {
        llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory");
        return NULL;
    }
    t->base.ops = &http_ops;
    t->base.run = run;
    t->cfg = cfg;
    /* "Expect:" turns off curl's 100-continue wait on larger bodies, which
     * would add a round trip (or a second) to every long prompt */
    char auth[1100];
    const char *lines[] = {"Content-Type: application/json",
                           cfg->stream ? "Accept: text/event-stream" : "Accept: application/json",
                           "User-Agent: llmq-loadtest", "Expect:", NULL};
    struct curl_slist *hl = NULL;
    int bad = 0;
    for (size_t i = 0; lines[i] && !bad; i++) {
        struct curl_slist *n = curl_slist_append(hl, lines[i]);
        if (n) hl = n;
        else bad = 1;
    }
    if (!bad && cfg->api_key) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %.1000s", cfg->api_key);
        struct curl_slist *n = curl_slist_append(hl, auth);
        if (n) hl = n;
        else bad = 1;
    }
    t->headers = hl;
    httpc_opts o = {.insecure = cfg->insecure, .cacert = cfg->cacert};
    t->cli = bad ? NULL : httpc_create(run->loop, &o, err);
    if (!t->cli) {
        if (bad) llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory");
        curl_slist_free_all(t->headers);
        free(t);
        return NULL;
    }
    return &t->base;
}
