/*
 * tokenizer.h — Hugging Face `tokenizer.json` tokenizers in C: encode, decode and
 * streaming detokenization, exactly as the Hugging Face `tokenizers` library does.
 *
 * Supported (anything else is refused at load with an error naming the component
 * type and the file):
 *   model          BPE (vocab + merges in "a b" or ["a","b"] form, byte_fallback,
 *                  ignore_merges, unk_token, fuse_unk, continuing_subword_prefix,
 *                  end_of_word_suffix)
 *   normalizer     Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Strip, Replace, Prepend
 *   pre_tokenizer  Sequence, ByteLevel, Split (regex run by PCRE2), Metaspace, Digits,
 *                  Punctuation, Whitespace, WhitespaceSplit
 *   decoder        Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace
 *   post_processor TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing,
 *                  Sequence; tokenizer_config.json add_bos_token/add_eos_token
 *   added_tokens   special or not, normalized or not, lstrip/rstrip/single_word
 *
 * A tokenizer is immutable after tok_load() except for an internal word cache that
 * is guarded by a mutex, so one tokenizer may be shared by threads.
 *
 * Ownership: tok_load() returns a heap object freed by tok_destroy(); arrays and
 * strings returned by tok_encode()/tok_decode() are malloc'd and owned by the
 * caller; strings returned by accessors (tok_id_to_token, tok_chat_template, ...)
 * belong to the tokenizer and live as long as it does.
 */
#ifndef LLMQ_TOKENIZER_H
#define LLMQ_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef struct tokenizer tokenizer;

/* A growable UTF-8 text buffer.  Zero-initialise it ({0}) before first use;
 * data is NUL-terminated whenever it is non-NULL; tok_text_deinit() frees it. */
typedef struct tok_text {
    char *data;  /* len bytes + NUL, or NULL while empty */
    size_t len;  /* bytes, excluding the NUL */
    size_t cap;  /* bytes allocated */
} tok_text;

void tok_text_deinit(tok_text *t);
/* Append n bytes.  LLMQ_ERR_NOMEM on allocation failure (t unchanged). */
llmq_status tok_text_append(tok_text *t, const char *s, size_t n);

/* ------------------------------------------------------------------ loading */

/* Load <model_dir>/tokenizer.json, plus tokenizer_config.json (special-token
 * strings, add_bos/add_eos, chat template) and generation_config.json (EOS ids)
 * when present.  model_dir may also name a tokenizer.json file directly.
 * Returns NULL and fills err (naming the file and the offending field or
 * component type) on failure. */
tokenizer *tok_load(const char *model_dir, llmq_err *err);
void tok_destroy(tokenizer *t); /* NULL ok */

/* ----------------------------------------------------------------- encoding */

/* Encode len bytes of UTF-8 text (need not be NUL-terminated; embedded NULs are
 * text).  Added tokens in the text are always matched; add_special additionally
 * applies the post-processor (e.g. a leading BOS).  On success *ids is a malloc'd
 * array of *n ids (non-NULL even when *n == 0) that the caller free()s.
 * Invalid UTF-8 is LLMQ_ERR_INVALID. */
llmq_status tok_encode(const tokenizer *t, const char *text, size_t len, int add_special,
                       int32_t **ids, size_t *n, llmq_err *err);

/* ----------------------------------------------------------------- decoding */

/* Decode ids to text as Hugging Face `decode(ids, skip_special_tokens)` does:
 * unknown ids are dropped, the decoder chain is applied, invalid UTF-8 becomes
 * U+FFFD.  Returns a malloc'd NUL-terminated string, NULL only when out of memory. */
char *tok_decode(const tokenizer *t, const int32_t *ids, size_t n, int skip_special);

/* Same, appending to out. */
llmq_status tok_decode_append(const tokenizer *t, const int32_t *ids, size_t n,
                              int skip_special, tok_text *out);

/* The bytes one id adds to a text in the middle of a sequence, for per-token
 * views such as logprobs ("▁Once" -> " Once", GPT-2 "Ġthe" -> " the"): the
 * decoder chain on the id alone, as a token that is not the text's first
 * (Metaspace's replacement is a space; a Strip after Fuse, which only trims
 * the start of the whole text, does not apply).  Byte tokens give their raw
 * bytes (ByteFallback "<0xE2>" -> the one byte 0xE2, ByteLevel bytes kept as
 * they are), which need not be valid UTF-8 on their own: concatenated over
 * the generated ids they form the generated text, characters split over
 * byte tokens included.  Special tokens give their content ("</s>").
 * Appends to out (nothing for an unknown id). */
llmq_status tok_id_bytes(const tokenizer *t, int32_t id, tok_text *out);

/* ------------------------------------------------------- vocabulary, specials */

int tok_vocab_size(const tokenizer *t);        /* highest id + 1 (model and added tokens) */
int tok_bos_id(const tokenizer *t);            /* -1 if the tokenizer has no BOS */
int tok_eos_id(const tokenizer *t);            /* first EOS id, -1 if none */
/* All end-of-sequence ids (generation_config.json eos_token_id may list several). */
const int32_t *tok_eos_ids(const tokenizer *t, size_t *n);
int tok_adds_bos(const tokenizer *t);          /* 1 if add_special puts BOS first */
/* The token string of id as stored in the vocabulary ("Ġthe", "▁Hello", "<s>"),
 * NULL for an unknown id. *len gets its length when len is non-NULL. */
const char *tok_id_to_token(const tokenizer *t, int32_t id, size_t *len);
int32_t tok_token_to_id(const tokenizer *t, const char *token, size_t len); /* -1 if absent */
int tok_is_special(const tokenizer *t, int32_t id); /* a special added token */

/* tokenizer_config.json fields ("" / NULL when absent). */
const char *tok_chat_template(const tokenizer *t); /* raw Jinja text or NULL */
const char *tok_bos_token(const tokenizer *t);     /* e.g. "<s>", or "" */
const char *tok_eos_token(const tokenizer *t);     /* e.g. "</s>", or "" */
const char *tok_path(const tokenizer *t);          /* the tokenizer.json path */

/* ------------------------------------------------- streaming detokenization */

/* Incremental detokenizer for one sequence.  Embedded in the caller's struct;
 * tok_stream_init() / tok_stream_deinit() pair.
 *
 * Contract: after init with context ids P (the prompt) and pushes of g1..gk then
 * tok_stream_finish(), the concatenation of everything appended equals
 *     decode(P + g1..gk)[len(decode(P)) :]
 * (with the same skip_special), e.g. the first generated "▁Hello" keeps its leading
 * space after a non-empty prompt.  Each push appends only text that later tokens
 * cannot change: never half of a UTF-8 character, and a run of ByteFallback byte
 * tokens ("<0xE2><0x82><0xAC>") only once a non-byte id closes it (Hugging Face
 * decodes a run that is invalid as a whole to one U+FFFD per byte, so an early
 * "é" could be contradicted by the next byte).  A context that itself ends in a
 * truncated character leaves it to the stream, which emits it once complete.
 * Only a window of recent ids is kept: a push costs O(window), not O(sequence).
 *
 * Resuming a sequence (prompt P, ids g1..gk already streamed by someone else):
 * init with P and push g1..gk discarding the output; that reproduces the state
 * exactly, which init with P + g1..gk as context would not (the context's text
 * counts as already known, held-back text included). */
typedef struct tok_stream {
    const tokenizer *tok;
    int skip_special;
    int32_t *ids;      /* window of ids; ids[0..read) are already accounted for */
    size_t n, cap;     /* ids in the window, allocated */
    size_t read;       /* ids[0..read) decode to prefix */
    tok_text prefix;   /* decode(ids[0..read)): text already accounted for */
    tok_text scratch;  /* decode buffer reused across pushes */
} tok_stream;

/* ctx may be NULL when n_ctx == 0.  Only the tail of ctx that matters is kept. */
llmq_status tok_stream_init(tok_stream *s, const tokenizer *t, const int32_t *ctx, size_t n_ctx,
                            int skip_special);
void tok_stream_deinit(tok_stream *s);
/* Push one generated id; appends the newly final text (possibly nothing) to out. */
llmq_status tok_stream_push(tok_stream *s, int32_t id, tok_text *out);
/* End of sequence: append any text still held back (an unfinished UTF-8
 * sequence becomes U+FFFD, as in one-shot decoding). */
llmq_status tok_stream_finish(tok_stream *s, tok_text *out);

#endif
