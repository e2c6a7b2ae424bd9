/*
 * tok_stream.c — streaming detokenization: ids arrive one at a time, text leaves
 * as soon as no later id can change it.
 *
 * Method: keep a short window of ids W = ids[p..n) and the text T of
 * ids[p..r) already accounted for.  After a push, D = decode(W) and the new text
 * is D minus its prefix T.  Decodes run in streaming mode, where a truncated UTF-8
 * sequence at the end of ByteLevel bytes is held out of the text until later ids
 * complete it (tok_stream_finish turns it into U+FFFD, as one-shot decoding).
 * Subtracting a decoded prefix instead of decoding new ids alone is what keeps
 * position-dependent decoders right: the Strip of one leading space and
 * Metaspace's first-token rule apply to W's first token in both decodes, so they
 * cancel, and a generated "▁Hello" after a prompt keeps its space exactly as
 * decode(prompt + output) - decode(prompt) does.
 *
 * ByteFallback runs are held back until a non-byte id closes them, because Hugging
 * Face turns a whole run into U+FFFDs when it is not valid UTF-8 as a whole: an
 * emitted "é" could otherwise be contradicted by the next byte.
 *
 * The window start p is only ever moved to a "safe" id: one that does not continue
 * a ByteFallback byte run or a byte-level UTF-8 sequence, with at least one id that
 * survives skip_special from there on.  From such a start the decode of the window
 * is a suffix-consistent view of the decode of everything.
 */
#include <stdlib.h>
#include <string.h>

#include "worker/tokenizer/tok_internal.h"

#define STREAM_TAIL 8    /* ids of context kept at init */
#define STREAM_TRIM 16   /* window length that triggers trimming */

/* May a window start at ids[k], given ids[k..n)? */
static int safe_start(const tok_stream *s, const int32_t *ids, size_t k, size_t n) {
    const tokenizer *t = s->tok;
    if (t->has_bytefallback_dec && tok_id_is_byte_token(t, ids[k])) return 0;
    if (t->has_bytelevel_dec && tok_id_starts_mid_char(t, ids[k])) return 0;
    for (size_t i = k; i < n; i++)
        if (!tok_id_dropped(t, ids[i], s->skip_special)) return 1;
    return 0;
}

static llmq_status window_reserve(tok_stream *s, size_t need) {
    if (need <= s->cap) return LLMQ_OK;
    size_t cap = s->cap ? s->cap * 2 : 32;
    while (cap < need) cap *= 2;
    int32_t *p = realloc(s->ids, cap * sizeof *p);
    if (!p) return LLMQ_ERR_NOMEM;
    s->ids = p;
    s->cap = cap;
    return LLMQ_OK;
}

/* Make ids[k..n) the window, everything in it accounted for. */
static llmq_status rebase(tok_stream *s, size_t k) {
    memmove(s->ids, s->ids + k, (s->n - k) * sizeof *s->ids);
    s->n -= k;
    s->read = s->n;
    s->prefix.len = 0;
    int pending;
    return tok_decode_ex(s->tok, s->ids, s->n, s->skip_special, &s->prefix, &pending);
}

llmq_status tok_stream_init(tok_stream *s, const tokenizer *t, const int32_t *ctx, size_t n_ctx,
                            int skip_special) {
    memset(s, 0, sizeof *s);
    s->tok = t;
    s->skip_special = skip_special;
    size_t k = n_ctx > STREAM_TAIL ? n_ctx - STREAM_TAIL : 0;
    while (k > 0 && !safe_start(s, ctx, k, n_ctx)) k--;
    llmq_status st = window_reserve(s, n_ctx - k + 16);
    if (st) return st;
    if (n_ctx > k) memcpy(s->ids, ctx + k, (n_ctx - k) * sizeof *ctx);
    s->n = n_ctx - k;
    s->read = s->n;
    /* A context that ends in a truncated character (ids, not text, can) has not
     * produced that character yet: ByteLevel holds its bytes out of the text; a
     * ByteFallback run is all or nothing, so its ids are left unread. */
    int pending = 0;
    st = tok_decode_ex(t, s->ids, s->read, skip_special, &s->prefix, &pending);
    if (!st && (pending & TOK_PENDING_RUN_TRUNCATED)) {
        while (s->read > 0 && (tok_id_is_byte_token(t, s->ids[s->read - 1]) ||
                               tok_id_dropped(t, s->ids[s->read - 1], skip_special)))
            s->read--;
        s->prefix.len = 0;
        st = tok_decode_ex(t, s->ids, s->read, skip_special, &s->prefix, &pending);
    }
    if (st) tok_stream_deinit(s);
    return st;
}

void tok_stream_deinit(tok_stream *s) {
    if (!s) return;
    free(s->ids);
    tok_text_deinit(&s->prefix);
    tok_text_deinit(&s->scratch);
    memset(s, 0, sizeof *s);
}

/* Append what scratch adds to the prefix; returns 1 when something was new. */
static llmq_status emit_delta(tok_stream *s, tok_text *out, int *emitted) {
    const char *d = s->scratch.data;
    size_t dl = s->scratch.len, pl = s->prefix.len, k = pl;
    *emitted = 0;
    if (dl <= pl) return LLMQ_OK;
    if (pl && memcmp(d, s->prefix.data, pl)) {
        /* The earlier text changed (an invalid ByteFallback run turned into U+FFFDs):
         * what was emitted stays; continue after it on a character boundary. */
        while (k < dl && ((unsigned char)d[k] & 0xC0) == 0x80) k++;
    }
    *emitted = 1;
    return tok_text_append(out, d + k, dl - k);
}

llmq_status tok_stream_push(tok_stream *s, int32_t id, tok_text *out) {
    llmq_status st = window_reserve(s, s->n + 1);
    if (st) return st;
    s->ids[s->n++] = id;
    s->scratch.len = 0;
    int pending = 0, emitted;
    if ((st = tok_decode_ex(s->tok, s->ids, s->n, s->skip_special, &s->scratch, &pending))) return st;
    if (pending & TOK_PENDING_OPEN_RUN) return LLMQ_OK;
    if ((st = emit_delta(s, out, &emitted)) || !emitted) return st;
    size_t old_read = s->read;
    /* The new prefix is everything decoded so far. */
    tok_text tmp = s->prefix;
    s->prefix = s->scratch;
    s->scratch = tmp;
    s->read = s->n;
    if (s->n >= STREAM_TRIM) {
        for (size_t k = old_read < s->n ? old_read : s->n - 1; k > 0; k--)
            if (safe_start(s, s->ids, k, s->n)) return rebase(s, k);
    }
    return LLMQ_OK;
}

llmq_status tok_stream_finish(tok_stream *s, tok_text *out) {
    s->scratch.len = 0;
    int emitted;
    llmq_status st = tok_decode_ex(s->tok, s->ids, s->n, s->skip_special, &s->scratch, NULL);
    if (!st) st = emit_delta(s, out, &emitted);
    if (!st) {
        tok_text tmp = s->prefix;
        s->prefix = s->scratch;
        s->scratch = tmp;
        s->read = s->n;
    }
    return st;
}
