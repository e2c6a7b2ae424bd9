/*
 * logprobs.c — OpenAI and job-API JSON of a chunk's logprobs (see logprobs.h
 * for the token-string rules).
 */
#include "gateway/logprobs.h"

#include <math.h>
#include <stdio.h>

#include "common/utf8.h"
#include "gateway/gw.h"

/* JSON number of a logprob: -inf (and anything below) is -9999.0. */
static json_t *lp_value(double x) { return json_real(isfinite(x) && x > -9999.0 ? x : -9999.0); }

/* The token string of t (see logprobs.h). */
static json_t *lp_token_string(const proto_token_lp *t) {
    if (!t->bytes) {
        char s[32];
        snprintf(s, sizeof s, "token_id:%d", (int)t->id);
        return json_string(s);
    }
    const unsigned char *b = (const unsigned char *)t->bytes;
    const size_t n = t->n_bytes;
    json_t *v = n ? json_stringn(t->bytes, n) : json_string("");
    if (v) return v; /* valid UTF-8, the usual case */
    proto_buf out;
    proto_buf_init(&out);
    for (size_t i = 0; i < n;) {
        size_t k = llmq_utf8_seq(t->bytes + i, n - i);
        if (k) {
            proto_buf_append(&out, b + i, k);
            i += k;
            continue;
        }
        char esc[5];
        snprintf(esc, sizeof esc, "\\x%02x", b[i++]);
        proto_buf_append(&out, esc, 4);
    }
    v = json_stringn(out.data ? out.data : "", out.len);
    proto_buf_deinit(&out);
    return v ? v : json_string("");
}

static json_t *lp_bytes(const proto_token_lp *t) {
    if (!t->bytes) return json_null();
    json_t *a = json_array();
    for (uint32_t i = 0; i < t->n_bytes; i++) json_array_append_new(a, json_integer((unsigned char)t->bytes[i]));
    return a;
}

/* Characters a piece begins: its bytes that do not continue a UTF-8 sequence. */
static int64_t lp_chars(const proto_token_lp *t) {
    if (!t->bytes) return 0;
    int64_t k = 0;
    for (uint32_t i = 0; i < t->n_bytes; i++) k += ((unsigned char)t->bytes[i] & 0xC0) != 0x80;
    return k;
}

/* The lp entries of c that can be read: one per id (decode guarantees it). */
static size_t lp_count(const proto_chunk *c) { return c && c->has_lp && c->lp ? c->n_ids : 0; }

/* top[token] = logprob unless the token is there already (the entries come
 * most likely first, and two ids may read the same).  Keys by length: a
 * piece may hold a NUL byte. */
static void top_set(json_t *top, json_t *token, double logprob) {
    const char *k = json_string_value(token);
    size_t n = json_string_length(token);
    if (k && !json_object_getn(top, k, n)) json_object_setn_new(top, k, n, lp_value(logprob));
}

json_t *gw_lp_completion_new(void) {
    return json_pack("{s:[], s:[], s:[], s:[]}", "tokens", "token_logprobs", "top_logprobs", "text_offset");
}

void gw_lp_completion_add(json_t *o, const proto_chunk *c, int64_t *offset) {
    json_t *tokens = json_object_get(o, "tokens"), *values = json_object_get(o, "token_logprobs");
    json_t *tops = json_object_get(o, "top_logprobs"), *offsets = json_object_get(o, "text_offset");
    for (size_t i = 0; i < lp_count(c); i++) {
        const proto_lp *e = &c->lp[i];
        json_t *tok = lp_token_string(&e->tok);
        json_t *top = json_object();
        /* the most likely first: a later token with the same string does not
         * replace it */
        for (size_t k = 0; k < e->n_top; k++) {
            json_t *s = lp_token_string(&e->top[k]);
            top_set(top, s, e->top[k].logprob);
            json_decref(s);
        }
        top_set(top, tok, e->tok.logprob);
        json_array_append_new(tokens, tok);
        json_array_append_new(values, lp_value(e->tok.logprob));
        json_array_append_new(tops, top);
        json_array_append_new(offsets, json_integer(*offset));
        *offset += lp_chars(&e->tok);
    }
}

void gw_lp_chat_add(json_t *content, const proto_chunk *c) {
    for (size_t i = 0; i < lp_count(c); i++) {
        const proto_lp *e = &c->lp[i];
        json_t *top = json_array();
        for (size_t k = 0; k < e->n_top; k++)
            json_array_append_new(top, json_pack("{s:o, s:o, s:o}", "token", lp_token_string(&e->top[k]), "logprob",
                                                 lp_value(e->top[k].logprob), "bytes", lp_bytes(&e->top[k])));
        json_array_append_new(content, json_pack("{s:o, s:o, s:o, s:o}", "token", lp_token_string(&e->tok),
                                                 "logprob", lp_value(e->tok.logprob), "bytes", lp_bytes(&e->tok),
                                                 "top_logprobs", top));
    }
}

void gw_lp_job_add(json_t *list, const proto_chunk *c) {
    for (size_t i = 0; i < lp_count(c); i++) {
        const proto_lp *e = &c->lp[i];
        json_t *top = json_array();
        for (size_t k = 0; k < e->n_top; k++)
            json_array_append_new(top, json_pack("{s:i, s:o, s:o, s:o}", "id", (int)e->top[k].id, "token",
                                                 lp_token_string(&e->top[k]), "logprob", lp_value(e->top[k].logprob),
                                                 "bytes", lp_bytes(&e->top[k])));
        json_array_append_new(list, json_pack("{s:i, s:o, s:o, s:o, s:o}", "id", (int)c->ids[i], "token",
                                              lp_token_string(&e->tok), "logprob", lp_value(e->tok.logprob), "bytes",
                                              lp_bytes(&e->tok), "top_logprobs", top));
    }
}
