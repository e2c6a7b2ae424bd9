/*
 * tok_internal.h — what the tok_*.c files of the tokenizer share; not a public API.
 *
 * The tokenizer is split by concern, in the order text flows through it:
 *   tok_util.c     text buffer, piece lists, JSON field access with error messages
 *   tok_utf8.c     Unicode predicates (utf8proc), lossy decoding (the rest of UTF-8: common/utf8.h)
 *   tok_map.c      hash maps: string -> id (vocab) and id pair -> merge (merges)
 *   tok_regex.c    HF (Oniguruma) regexes run by PCRE2
 *   tok_added.c    added tokens: parsing and leftmost-longest matching in text
 *   tok_norm.c     normalizers
 *   tok_pretok.c   pre-tokenizers (PCRE2 for the Split regexes)
 *   tok_bpe.c      the BPE model, with its word cache
 *   tok_decoder.c  decoders, tok_decode
 *   tok_stream.c   streaming detokenization
 *   tokenizer.c    loading tokenizer.json / tokenizer_config.json, encode, post-processing
 *
 * Text between stages is a list of pieces: byte ranges of one shared buffer (a
 * tok_text), each either plain text still to be tokenized (id < 0) or an added
 * token already resolved (id >= 0).  Stages append new strings to the buffer and
 * never move existing bytes, so offsets stay valid while the buffer grows.
 */
#ifndef LLMQ_TOK_INTERNAL_H
#define LLMQ_TOK_INTERNAL_H

#include <stdint.h>
#include <stddef.h>
#include <pthread.h>

#include <jansson.h>
#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include "common/status.h"
#include "common/utf8.h"
#include "worker/tokenizer/tokenizer.h"

/* ================================================================ JSON errors */

/* Context for error messages while parsing: "<file>: <where>: <message>". */
typedef struct tok_jctx {
    const char *file; /* path of the JSON file being read */
    llmq_err *err;
} tok_jctx;

llmq_status tok_jfail(const tok_jctx *c, llmq_status code, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Optional typed fields.  A present field of the wrong type is an error; an
 * absent (or null) one leaves *out at the default the caller put there. */
llmq_status tok_jbool(const tok_jctx *c, json_t *obj, const char *key, const char *where, int *out);
llmq_status tok_jstr(const tok_jctx *c, json_t *obj, const char *key, const char *where,
                     const char **out, size_t *len);
llmq_status tok_jint(const tok_jctx *c, json_t *obj, const char *key, const char *where, long long *out);
/* The "type" string of a component object; error when missing or not a string. */
llmq_status tok_jtype(const tok_jctx *c, json_t *obj, const char *where, const char **type);
char *tok_strndup(const char *s, size_t n);

/* Make room for n more bytes (+ NUL) without changing the text. */
llmq_status tok_text_reserve(tok_text *t, size_t n);

/* ================================================================ UTF-8 */

/* Well-formedness, code points, lengths: common/utf8.h.  Here what needs a
 * tok_text or Unicode data. */

/* Append bytes to out as Rust's String::from_utf8_lossy does: each maximal invalid
 * subpart becomes one U+FFFD.  When tail_pending is non-NULL, a trailing
 * truncated-but-valid-so-far sequence is NOT converted: *tail_pending gets its
 * length (0..3) and it is left out of out. */
llmq_status tok_utf8_lossy_append(tok_text *out, const unsigned char *b, size_t n,
                                  size_t *tail_pending);
/* Rust char::is_whitespace (Unicode White_Space), via utf8proc categories. */
int tok_cp_is_space(int32_t cp);
/* Rust char::is_alphanumeric || '_' (the added-token "word" test), via utf8proc. */
int tok_cp_is_word(int32_t cp);

/* ================================================================ pieces */

typedef struct tok_piece {
    size_t off, len; /* bytes in the shared buffer */
    int32_t id;      /* >= 0: an added token, not to be tokenized further */
    uint32_t first;  /* leading bytes that come from the original text's first char
                      * (HF: original offset 0); Metaspace prepend_scheme "first" */
} tok_piece;

/* `first` of a sub-piece starting o bytes into a piece with `first` f. */
static inline uint32_t tok_first_at(uint32_t f, size_t o) {
    return o < f ? f - (uint32_t)o : 0;
}

typedef struct tok_pieces {
    tok_piece *v;
    size_t n, cap;
} tok_pieces;

llmq_status tok_pieces_push(tok_pieces *p, size_t off, size_t len, int32_t id, uint32_t first);
void tok_pieces_free(tok_pieces *p);

/* ================================================================ maps */

/* String -> int32 map with its own copy of the keys.  Open addressing. */
typedef struct tok_strmap_ent {
    uint32_t off, len; /* key bytes in keys */
    uint32_t hash;
    int32_t val;
} tok_strmap_ent;

typedef struct tok_strmap {
    tok_text keys;       /* key bytes, back to back */
    tok_strmap_ent *ent; /* n entries */
    size_t n, cap;
    uint32_t *slot;      /* 0 empty, else entry index + 1 */
    size_t mask;         /* slots - 1; slots is a power of two >= 2n */
} tok_strmap;

uint32_t tok_hash(const void *s, size_t n);
llmq_status tok_strmap_put(tok_strmap *m, const char *s, size_t len, int32_t val); /* overwrites */
/* Value of key s, or dflt. */
int32_t tok_strmap_get(const tok_strmap *m, const char *s, size_t len, int32_t dflt);
void tok_strmap_free(tok_strmap *m);

/* (left id, right id) -> (rank, merged id), open addressing on a 64-bit key. */
typedef struct tok_pairmap {
    uint64_t *key; /* UINT64_MAX = empty */
    uint32_t *rank;
    int32_t *val;
    size_t n, mask;
} tok_pairmap;

llmq_status tok_pairmap_put(tok_pairmap *m, int32_t a, int32_t b, uint32_t rank, int32_t val);
/* 1 and fills rank/val when (a, b) is a merge, else 0. */
static inline uint64_t tok_pair_key(int32_t a, int32_t b) {
    return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
}
int tok_pairmap_get(const tok_pairmap *m, int32_t a, int32_t b, uint32_t *rank, int32_t *val);
void tok_pairmap_free(tok_pairmap *m);

/* ================================================================ added tokens */

typedef struct tok_added_tok {
    int32_t id;
    char *content;      /* as written in tokenizer.json */
    size_t len;
    char *match;        /* what is searched: content, normalized for normalized tokens */
    size_t match_len;
    uint8_t special, lstrip, rstrip, single_word, normalized;
} tok_added_tok;

/* One set of tokens searched together (the raw set or the normalized set). */
typedef struct tok_added_set {
    uint32_t *order;     /* token indices grouped by first byte, longest first */
    uint32_t first[257]; /* order[first[b] .. first[b+1]) start with byte b */
} tok_added_set;

typedef struct tok_added {
    tok_added_tok *tok;
    size_t n;
    tok_added_set raw;  /* normalized == false: matched on the original text */
    tok_added_set norm; /* normalized == true: matched on normalized pieces */
} tok_added;

struct tok_norm;
llmq_status tok_added_parse(tok_added *a, const tok_jctx *c, json_t *arr);
/* Build the two search sets; normalized tokens are normalized with norm first. */
llmq_status tok_added_index(tok_added *a, const struct tok_norm *norm, size_t n_norm, llmq_err *err);
void tok_added_free(tok_added *a);
/* Split piece `in` of buf (plain text) by the tokens of set into pieces appended
 * to out, as HF AddedVocabulary::split_with_indices does (lstrip/rstrip/single_word
 * included), carrying `first` over to the sub-pieces. */
llmq_status tok_added_split(const tok_added *a, const tok_added_set *set, const tok_text *buf,
                            const tok_piece *in, tok_pieces *out);

/* ================================================================ normalizers */

typedef enum tok_norm_kind {
    TOK_NORM_NFC, TOK_NORM_NFD, TOK_NORM_NFKC, TOK_NORM_NFKD,
    TOK_NORM_LOWERCASE, TOK_NORM_STRIP, TOK_NORM_REPLACE, TOK_NORM_PREPEND,
} tok_norm_kind;

typedef struct tok_norm {
    tok_norm_kind kind;
    char *pattern;   /* Replace: literal pattern (NULL when regex) */
    size_t pattern_len;
    pcre2_code *re; /* Replace: compiled regex pattern */
    char *content;   /* Replace: replacement; Prepend: prepended text */
    size_t content_len;
    int strip_left, strip_right; /* Strip */
} tok_norm;

/* Parse a normalizer (a Sequence is flattened) and append it to *v. */
llmq_status tok_norm_parse(tok_norm **v, size_t *n, const tok_jctx *c, json_t *j, const char *where);
void tok_norm_free(tok_norm *v, size_t n);
/* Normalize s[0..len) with the chain, appending the result to out. */
llmq_status tok_norm_apply(const tok_norm *v, size_t n, const char *s, size_t len, tok_text *out);

/* ================================================================ regex */

/* Compile an HF (Oniguruma-style) pattern with PCRE2_UTF|PCRE2_UCP, JIT when
 * available.  NULL + err naming `where` on failure. */
pcre2_code *tok_regex_compile(const char *pat, size_t len, const tok_jctx *c,
                                            const char *where);
void tok_regex_free(pcre2_code *re);
/* Matches of re in s[0..len) as HF Pattern::find_matches: a cover of s by
 * (start, end, is_match) ranges.  Appends to *out (grown with realloc). */
typedef struct tok_span { size_t start, end; int match; } tok_span;
typedef struct tok_spans { tok_span *v; size_t n, cap; } tok_spans;
llmq_status tok_regex_find(const pcre2_code *re, const char *s, size_t len,
                           tok_spans *out);
/* Append the range [s, e) (m: a match) to o, growing it; LLMQ_ERR_NOMEM leaves o as it was. */
llmq_status tok_spans_push(tok_spans *o, size_t s, size_t e, int m);

/* ================================================================ pre-tokenizers */

typedef enum tok_pretok_kind {
    TOK_PT_SPLIT, TOK_PT_BYTELEVEL, TOK_PT_METASPACE, TOK_PT_DIGITS,
} tok_pretok_kind;

typedef enum tok_split_behavior {
    TOK_SPLIT_REMOVED, TOK_SPLIT_ISOLATED, TOK_SPLIT_MERGED_PREV, TOK_SPLIT_MERGED_NEXT,
    TOK_SPLIT_CONTIGUOUS,
} tok_split_behavior;

typedef enum tok_prepend { TOK_PREPEND_ALWAYS, TOK_PREPEND_NEVER, TOK_PREPEND_FIRST } tok_prepend;

typedef struct tok_pretok {
    tok_pretok_kind kind;
    pcre2_code *re; /* Split (regex) / ByteLevel (use_regex) */
    char *literal;                /* Split with a String pattern */
    size_t literal_len;
    tok_split_behavior behavior;
    int invert;
    int add_prefix_space;         /* ByteLevel */
    char repl[8];                 /* Metaspace replacement (one char, UTF-8) */
    size_t repl_len;
    tok_prepend prepend;          /* Metaspace */
    int split;                    /* Metaspace */
    int individual_digits;        /* Digits */
} tok_pretok;

llmq_status tok_pretok_parse(tok_pretok **v, size_t *n, const tok_jctx *c, json_t *j,
                             const char *where);
void tok_pretok_free(tok_pretok *v, size_t n);
/* Scratch for the pre-tokenizers of one encode call. */
typedef struct tok_pt_scratch {
    tok_pieces tmp;
    tok_spans spans;
} tok_pt_scratch;
void tok_pt_scratch_free(tok_pt_scratch *s);
/* Run the chain over pieces *p (added-token pieces pass through), in place. */
llmq_status tok_pretok_apply(const tok_pretok *v, size_t n, tok_text *buf, tok_pieces *p,
                             tok_pt_scratch *s);

/* Metaspace "replacement" (one char, as a code point) and prepend scheme; shared
 * by the pre-tokenizer and the decoder of that name. */
llmq_status tok_metaspace_fields(const tok_jctx *c, json_t *j, const char *where, int32_t *cp,
                                 tok_prepend *prepend);

/* The GPT-2 byte <-> char alphabet of ByteLevel: printable bytes (0x21-0x7E,
 * 0xA1-0xAC, 0xAE-0xFF) stand for themselves, the 68 others for U+0100.. in byte
 * order (0x00-0x20 -> U+0100-U+0120, 0x7F-0xA0 -> U+0121-U+0142, 0xAD -> U+0143). */
static inline int32_t tok_byte_cp(unsigned char b) {
    if (b <= 0x20) return 256 + b;
    if (b >= 0x7F && b <= 0xA0) return b + 162;
    if (b == 0xAD) return 323;
    return b;
}
/* Byte of a byte-level code point, -1 when cp is not one of the 256. */
static inline int tok_cp_byte(int32_t cp) {
    if (cp >= 256 && cp <= 288) return cp - 256;
    if (cp >= 289 && cp <= 322) return cp - 162;
    if (cp == 323) return 0xAD;
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF))
        return cp;
    return -1;
}

/* ================================================================ BPE */

#define TOK_BPE_CACHE_SLOTS 16384u /* words cached (direct-mapped) */
#define TOK_BPE_CACHE_MAXLEN 256u  /* longer words are not cached (as HF) */

typedef struct tok_bpe_cache_ent {
    char *blob;       /* key bytes then n ids (int32, aligned) */
    uint32_t key_len;
    uint32_t n_ids;
    uint64_t hash;
} tok_bpe_cache_ent;

typedef struct tok_bpe {
    tok_strmap vocab;       /* token string -> id */
    tok_pairmap merges;     /* (left, right) -> (rank, merged id) */
    int32_t byte_id[256];   /* id of "<0xNN>" (byte_fallback), -1 absent */
    int32_t *ascii_id;      /* single-char lookups for code points < 0x800, -1 absent */
    int32_t unk_id;         /* -1 when there is no unk token */
    int unk_missing;        /* unk_token named but not in the vocab */
    int fuse_unk, byte_fallback, ignore_merges;
    char *prefix, *suffix;  /* continuing_subword_prefix / end_of_word_suffix, NULL if none */
    size_t prefix_len, suffix_len;
    tok_bpe_cache_ent *cache;
    pthread_mutex_t cache_lock;
    int32_t max_id;         /* highest vocab id */
} tok_bpe;

llmq_status tok_bpe_parse(tok_bpe *m, const tok_jctx *c, json_t *model);
void tok_bpe_free(tok_bpe *m);

/* Per-call scratch of the BPE merge loop. */
typedef struct tok_bpe_scratch {
    struct tok_sym *sym;
    size_t sym_cap;
    struct tok_merge *heap;
    size_t heap_cap;
} tok_bpe_scratch;
void tok_bpe_scratch_free(tok_bpe_scratch *s);
/* Tokenize one pre-token (word) s[0..len), appending ids to *ids. */
llmq_status tok_bpe_word(const tok_bpe *m, const char *s, size_t len, tok_bpe_scratch *sc,
                         int32_t **ids, size_t *n, size_t *cap, llmq_err *err);

/* ================================================================ decoders */

typedef enum tok_dec_kind {
    TOK_DEC_BYTELEVEL, TOK_DEC_REPLACE, TOK_DEC_BYTEFALLBACK, TOK_DEC_FUSE, TOK_DEC_STRIP,
    TOK_DEC_METASPACE,
} tok_dec_kind;

typedef struct tok_dec {
    tok_dec_kind kind;
    char *pattern, *content; /* Replace: literal pattern (or re), replacement */
    pcre2_code *re;
    size_t pattern_len, content_len;
    int32_t strip_cp;        /* Strip: the char stripped */
    size_t start, stop;      /* Strip: how many at each end */
    int32_t repl_cp;         /* Metaspace replacement */
    tok_prepend prepend;     /* Metaspace */
} tok_dec;

llmq_status tok_dec_parse(tok_dec **v, size_t *n, const tok_jctx *c, json_t *j, const char *where);
void tok_dec_free(tok_dec *v, size_t n);
/* Decode ids, appending to out.  With pending == NULL this is HF decode exactly.
 * With pending != NULL (streaming) *pending gets what more ids could still change
 * at the end of the text (0 when nothing), and a truncated UTF-8 sequence at the
 * end of ByteLevel bytes is left out of out instead of becoming U+FFFD:
 *   TOK_PENDING_INCOMPLETE    ByteLevel bytes end in a truncated sequence (held out)
 *   TOK_PENDING_OPEN_RUN      the text ends in a ByteFallback byte run, which one
 *                             more byte token could turn invalid (all U+FFFD)
 *   TOK_PENDING_RUN_TRUNCATED that run ends in a truncated sequence */
#define TOK_PENDING_INCOMPLETE 1
#define TOK_PENDING_OPEN_RUN 2
#define TOK_PENDING_RUN_TRUNCATED 4
llmq_status tok_decode_ex(const tokenizer *t, const int32_t *ids, size_t n, int skip_special,
                          tok_text *out, int *pending);
/* For the stream: is id a ByteFallback byte token ("<0xNN>")? Does its byte-level
 * text start with a UTF-8 continuation byte?  Is it dropped by skip_special? */
int tok_id_is_byte_token(const tokenizer *t, int32_t id);
int tok_id_starts_mid_char(const tokenizer *t, int32_t id);
int tok_id_dropped(const tokenizer *t, int32_t id, int skip_special);

/* ================================================================ the tokenizer */

struct tokenizer {
    char *path;                 /* tokenizer.json */
    tok_bpe bpe;
    tok_added added;
    tok_norm *norm;             /* flattened chain, n_norm may be 0 */
    size_t n_norm;
    tok_pretok *pt;
    size_t n_pt;
    tok_dec *dec;
    size_t n_dec;
    int has_decoder;            /* 0: tokens are joined with " " */
    int has_bytelevel_dec;      /* a ByteLevel decoder is in the chain */
    int has_bytefallback_dec;   /* a ByteFallback decoder is in the chain */
    int32_t *post_pre, *post_post; /* ids added before / after the text (add_special) */
    size_t n_post_pre, n_post_post;
    /* id -> token string (added tokens override the model vocab) */
    int32_t n_ids;              /* highest id + 1 */
    uint32_t *id_off, *id_len;  /* into id_text; id_len == UINT32_MAX: unknown id */
    tok_text id_text;
    uint8_t *id_special;        /* 1: special (skipped by skip_special) */
    uint8_t *id_byte;           /* 1: "<0xNN>" byte token; 2: starts mid UTF-8 char */
    int32_t bos_id;
    int32_t *eos_ids;
    size_t n_eos;
    int adds_bos;
    char *chat_template;        /* tokenizer_config.json chat_template, NULL if none */
    char *bos_token, *eos_token;
};

#endif
