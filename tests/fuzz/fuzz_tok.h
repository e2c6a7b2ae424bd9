/*
 * fuzz_tok.h — the tokenizer properties both tokenizer targets check on
 * every text they encode (fuzz_tokenizer_load.c, fuzz_tokenizer_encode.c).
 */
#ifndef LLMQ_FUZZ_TOK_H
#define LLMQ_FUZZ_TOK_H

#include <string.h>
#include <utf8proc.h>

#include "tests/fuzz/fuzz.h"
#include "worker/tokenizer/tokenizer.h"

/* 1 when s[0..n) is valid UTF-8 (what every decode must produce). */
static inline int fuzz_utf8_valid(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (k <= 0) return 0;
        i += (size_t)k;
    }
    return 1;
}

/*
 * Encode text; every id is inside the vocabulary; decoding gives valid UTF-8;
 * and streaming detokenization of the same ids, one at a time, appends
 * exactly the one-shot decode (the tok_stream contract of tokenizer.h, with
 * an empty context) — the text a streaming client sees is the text a
 * non-streaming one gets.
 */
static inline void fuzz_tok_check(const tokenizer *t, const char *text, size_t len, int add_special, int skip) {
    int32_t *ids = NULL;
    size_t n = 0;
    llmq_err err;
    llmq_err_clear(&err);
    if (tok_encode(t, text, len, add_special, &ids, &n, &err) != LLMQ_OK) {
        fuzz_check(!ids && err.msg[0], "encode failed without a message (or left ids)");
        return;
    }
    fuzz_check(ids, "encode returned NULL ids");
    const int V = tok_vocab_size(t);
    for (size_t i = 0; i < n; i++) fuzz_check(ids[i] >= 0 && ids[i] < V, "id %d outside [0, %d)", ids[i], V);
    /* tok_decode_append, not tok_decode: the text may hold NUL bytes (<0x00>) */
    tok_text dt = {0};
    fuzz_check(tok_decode_append(t, ids, n, skip, &dt) == LLMQ_OK, "decode failed");
    const char *dec = dt.data ? dt.data : "";
    size_t dlen = dt.len;
    fuzz_check(fuzz_utf8_valid(dec, dlen), "decode produced invalid UTF-8");
    char *dec0 = tok_decode(t, ids, n, skip);
    fuzz_check(dec0 && !strcmp(dec0, dec), "tok_decode and tok_decode_append disagree");
    free(dec0);

    tok_stream s;
    tok_text out = {0};
    fuzz_check(tok_stream_init(&s, t, NULL, 0, skip) == LLMQ_OK, "stream init");
    for (size_t i = 0; i < n; i++) fuzz_check(tok_stream_push(&s, ids[i], &out) == LLMQ_OK, "stream push");
    fuzz_check(tok_stream_finish(&s, &out) == LLMQ_OK, "stream finish");
    fuzz_check(out.len == dlen && (!dlen || !memcmp(out.data, dec, dlen)),
               "streamed text (%zu bytes) != decoded text (%zu bytes): '%.*s' vs '%.*s'", out.len, dlen, (int)out.len,
               out.data ? out.data : "", (int)dlen, dec);
    tok_stream_deinit(&s);
    tok_text_deinit(&out);
    tok_text_deinit(&dt);
    free(ids);
}

#endif
