/*
 * fuzz_tokenizer_encode.c — the encoder (worker/tokenizer/tokenizer.c, tok_*.c:
 * normalizers, PCRE2 pre-tokenizers, BPE with byte fallback, added tokens)
 * and both decoders on arbitrary text, with the real tokenizers of
 * tests/fixtures/tokenizers/ (byte-level Llama 3 and RoBERTa, SentencePiece
 * with byte fallback, Falcon-like, whitespace + suffix, misc components).
 *
 * Input: byte 0 picks the tokenizer (low bits) and the flags add_special
 * (bit 6) and skip_special (bit 7); the rest is the text, as a client sends
 * it (valid UTF-8 or not).  See fuzz_tok.h for the properties checked.
 */
#include "tests/fuzz/fuzz_tok.h"

static const char *const names[] = {"bl-llama3", "spm-bf", "bl-roberta", "falcon-like", "misc-meta", "ws-suffix"};
#define N_TOK (sizeof names / sizeof names[0])
static tokenizer *toks[N_TOK];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    for (size_t i = 0; i < N_TOK; i++) {
        char dir[4096];
        llmq_err err;
        snprintf(dir, sizeof dir, "%s/tests/fixtures/tokenizers/%s", fuzz_root(), names[i]);
        toks[i] = tok_load(dir, &err);
        if (!toks[i]) fuzz_fail("loading %s: %s (run from the repository root or set LLMQ_ROOT)", dir, err.msg);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1 || size > 4096) return 0;
    const tokenizer *t = toks[(data[0] & 0x3f) % N_TOK];
    fuzz_tok_check(t, (const char *)data + 1, size - 1, (data[0] >> 6) & 1, (data[0] >> 7) & 1);
    return 0;
}
