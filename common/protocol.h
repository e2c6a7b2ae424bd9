/*
 * protocol.h — the llmq wire protocol v1: the request map that goes into a
 * model's request stream (field `p`) and the output chunk map that goes into
 * a job's output stream (field `c`) and its pub/sub channel.  Both are
 * msgpack maps; docs/protocol.md is the normative description, this is the
 * one implementation (gateway, worker, libllmq and the loadtest all use it).
 *
 * Invariants
 *  - Decoders never trust their input: every length is bounded by the buffer,
 *    a wrong type is an LLMQ_ERR_INVALID whose message names the field
 *    ("field 'temperature': expected a number, got a string"), a truncated
 *    or garbage buffer is LLMQ_ERR_FORMAT.  Unknown keys are ignored, so a
 *    newer writer can add optional keys without breaking older readers.
 *  - A decoded struct owns all its strings and arrays (malloc'd, NUL
 *    terminated strings); *_deinit frees them and resets the struct to its
 *    defaults, so deinit twice is harmless.  On a decode error the struct is
 *    left deinit'ed (defaults, nothing owned).
 *  - Encoders only read the struct: the caller keeps ownership of whatever
 *    the pointers point at, and a struct filled with borrowed pointers must
 *    then not be passed to *_deinit.  Encoders append to a proto_buf, which a
 *    hot loop resets and reuses so that nothing is allocated per token.
 *  - Defaults mean "not given": the worker applies the model's own defaults
 *    for anything left at its PROTO_UNSET value.
 */
#ifndef LLMQ_PROTOCOL_H
#define LLMQ_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

#define PROTO_VERSION 1            /* the `v` this code writes and accepts */
#define PROTO_GROUP "workers"      /* consumer group on every request stream */
#define PROTO_FIELD_ID "id"        /* request stream entry: the job id */
#define PROTO_FIELD_REQ "p"        /* request stream entry: msgpack request */
#define PROTO_FIELD_CHUNK "c"      /* output stream entry: msgpack chunk */

/* Bounds that decoders enforce (a request past them is refused, not cut).
 * The gateway refuses a body past them with a 400 naming the field, so what
 * it queues always decodes on the worker's side (docs/operations.md lists
 * them under "Limits on input"). */
#define PROTO_MAX_MESSAGE_BYTES (16 << 20) /* bytes of one encoded request or chunk */
#define PROTO_MAX_ID_LEN 128       /* bytes of a job id */
#define PROTO_MAX_MODEL_LEN 128    /* bytes of a model name */
#define PROTO_MAX_PROMPT_BYTES (8 << 20) /* bytes of `prompt`, and of all `messages` contents together */
#define PROTO_MAX_STOP 16          /* entries of `stop` */
#define PROTO_MAX_STOP_LEN 1024    /* bytes of one `stop` string */
#define PROTO_MAX_STOP_IDS 64      /* entries of `stop_token_ids` */
#define PROTO_MAX_MESSAGES 4096    /* entries of `messages` */
#define PROTO_MAX_ROLE_LEN 64      /* bytes of a message's `role` */
#define PROTO_MAX_PROMPT_IDS (1 << 20) /* entries of `prompt_ids` */
#define PROTO_MAX_LOGPROBS 20      /* `logprobs` of a request; alternatives per token of a chunk's `lp` */
#define PROTO_MAX_GUIDE_BYTES (1 << 20) /* bytes of a `guide`'s `data` (schema, regex or grammar) */
#define PROTO_MAX_CACHE_SALT 256   /* bytes of `cache_salt` */

/* ------------------------------------------------------------ buffers */

/* A growable byte buffer that encoders append to.  Zero-initialised is a
 * valid empty buffer.  data is NOT NUL terminated. */
typedef struct proto_buf {
    char *data;    /* malloc'd, cap bytes; NULL while cap == 0 */
    size_t len;    /* bytes used */
    size_t cap;    /* bytes allocated */
} proto_buf;

void proto_buf_init(proto_buf *b);
void proto_buf_reset(proto_buf *b);   /* len = 0, keeps the allocation */
void proto_buf_deinit(proto_buf *b);  /* frees; the buffer is empty again */
/* Append n bytes; LLMQ_ERR_NOMEM when the allocation fails (b unchanged). */
llmq_status proto_buf_append(proto_buf *b, const void *p, size_t n);

/* ------------------------------------------------------------ requests */

/* Which of the three prompt forms a request carries (exactly one). */
typedef enum proto_prompt_kind {
    PROTO_PROMPT_NONE = 0, /* only in a fresh struct; never valid on the wire */
    PROTO_PROMPT_TEXT,     /* `prompt`: raw text, tokenized by the worker */
    PROTO_PROMPT_MESSAGES, /* `messages`: chat turns, templated by the worker */
    PROTO_PROMPT_IDS,      /* `prompt_ids`: token ids, used as they are */
} proto_prompt_kind;

/* One chat turn of `messages`: a map {role, content}. */
typedef struct proto_message {
    char *role;     /* "system", "user", "assistant", "tool", ... (not checked) */
    char *content;  /* UTF-8 text; "" allowed */
    char *tool_calls; /* key `tool_calls`: NULL, or an assistant turn's OpenAI tool_calls
                         (JSON array text) for the chat template */
} proto_message;

#define PROTO_UNSET (-1)  /* integer fields: not given */

/* What a request asks of the worker (key `op`).  Absent means generate;
 * tokenize and detokenize are answered at admission with one final chunk
 * (no KV cache, no generation), for the gateway's /tokenize and /detokenize. */
typedef enum proto_op {
    PROTO_OP_GENERATE = 0,       /* "generate": the default */
    PROTO_OP_TOKENIZE,           /* "tokenize": `prompt` or `messages` -> the chunk's ids */
    PROTO_OP_DETOKENIZE,         /* "detokenize": `prompt_ids` -> the chunk's text */
} proto_op;

/* "generate", "tokenize", "detokenize" ("generate" for anything else). */
const char *proto_op_name(proto_op op);

/* The kind of constraint on the generated text (key `guide`, a map
 * {type, data}).  The names are llguidance's constraint types, so the worker
 * hands `data` to the library as it is. */
typedef enum proto_guide_type {
    PROTO_GUIDE_NONE = 0,        /* no `guide`: unconstrained */
    PROTO_GUIDE_JSON_SCHEMA,     /* "json_schema": data is a JSON Schema (JSON text) */
    PROTO_GUIDE_REGEX,           /* "regex": the whole output matches data */
    PROTO_GUIDE_LARK,            /* "lark": data is a Lark grammar */
} proto_guide_type;

/* "json_schema", "regex", "lark"; "none" for PROTO_GUIDE_NONE or anything else. */
const char *proto_guide_type_name(proto_guide_type t);

/*
 * A decoded (or to-be-encoded) request.  Field names and meanings follow
 * the msgpack keys one to one (docs/protocol.md §request).  Floats that are
 * not given hold NAN (test with isnan()); integers hold PROTO_UNSET unless
 * said otherwise.
 */
typedef struct proto_request {
    int v;                       /* protocol version; decode accepts only 1 (absent = 1) */
    char *id;                    /* job id; NULL when the map has none (the stream
                                    entry's `id` field is then authoritative) */
    char *model;                 /* model name; NULL when absent */

    proto_prompt_kind kind;      /* which of the three below is set */
    char *prompt;                /* PROTO_PROMPT_TEXT: UTF-8 text */
    proto_message *messages;     /* PROTO_PROMPT_MESSAGES: n_messages turns */
    size_t n_messages;
    int32_t *prompt_ids;         /* PROTO_PROMPT_IDS: n_prompt_ids token ids (>= 0) */
    size_t n_prompt_ids;

    int32_t max_tokens;          /* tokens to generate at most; PROTO_UNSET = up to context */
    double temperature;          /* >= 0; 0 = greedy; NAN = unset (worker: 1.0) */
    double top_p;                /* (0, 1]; NAN = unset (1.0) */
    int32_t top_k;               /* >= 0; 0 = off; PROTO_UNSET = unset (off) */
    double min_p;                /* [0, 1]; NAN = unset (0) */
    bool has_seed;               /* seed given */
    uint64_t seed;               /* sampling seed, meaningful when has_seed */
    char **stop;                 /* n_stop stop strings (each non-empty) */
    size_t n_stop;
    int32_t *stop_token_ids;     /* n_stop_token_ids extra end-of-sequence ids */
    size_t n_stop_token_ids;
    bool ignore_eos;             /* keep going past the model's EOS ids */
    double repetition_penalty;   /* > 0; 1 = off; NAN = unset (1.0) */
    double presence_penalty;     /* [-2, 2]; NAN = unset (0) */
    double frequency_penalty;    /* [-2, 2]; NAN = unset (0) */
    int32_t logprobs;            /* PROTO_UNSET = none; n in 0..PROTO_MAX_LOGPROBS: each chunk
                                    carries `lp`, the sampled token's logprob plus the
                                    top n alternatives */
    int64_t deadline_ms;         /* absolute Unix time in ms after which the job ends
                                    with finish "deadline"; 0 = none */
    int32_t priority;            /* higher is admitted first among waiting jobs; default 0 */
    proto_op op;                 /* key `op`; PROTO_OP_GENERATE when absent */
    int32_t add_special_tokens;  /* key `add_special_tokens` (bool): 1 / 0, PROTO_UNSET = the
                                    worker's default (1 for `prompt`, 0 for `messages`, whose
                                    template holds BOS, as vLLM) */
    proto_guide_type guide_type; /* key `guide`.type; PROTO_GUIDE_NONE when absent */
    char *guide;                 /* key `guide`.data with guide_type: the schema, regex or
                                    grammar (NUL terminated, no NUL inside,
                                    <= PROTO_MAX_GUIDE_BYTES); its syntax is the worker's
                                    (llguidance's) to check */
    char *cache_salt;            /* key `cache_salt`: NULL, or a string (no NUL inside,
                                    <= PROTO_MAX_CACHE_SALT bytes) that keys the worker's prefix
                                    cache: only requests with the same salt share cached KV
                                    blocks (tenant isolation, as vLLM's cache_salt) */
    char *tools;                 /* key `tools`: NULL, or the OpenAI tools (JSON array text,
                                    <= PROTO_MAX_GUIDE_BYTES), rendered by the chat template */
    char *tool_choice;           /* key `tool_choice`: NULL (= "auto"), "auto" or "required": the
                                    worker constrains the output to a call of one of the tools */
    char *tool_name;             /* key `tool_name`: NULL, or the one function the output must call */
} proto_request;

/* Set every field to its default (nothing owned). */
void proto_request_init(proto_request *r);
/* Free what r owns and re-init it.  r may be NULL. */
void proto_request_deinit(proto_request *r);

/*
 * Decode a msgpack request map from buf[0..len).  r is overwritten (call
 * proto_request_init first or pass a deinit'ed struct; previous contents
 * are NOT freed).  Returns LLMQ_OK, LLMQ_ERR_FORMAT (not msgpack, not a map,
 * truncated, trailing bytes, more than PROTO_MAX_MESSAGE_BYTES),
 * LLMQ_ERR_INVALID (a field of the wrong type,
 * out of the decoder's bounds, no prompt or more than one prompt form) or
 * LLMQ_ERR_UNSUPPORTED (v != 1); err names the field.  Ranges of sampling
 * parameters are checked by proto_request_validate, not here.
 */
llmq_status proto_request_decode(proto_request *r, const void *buf, size_t len, llmq_err *err);

/*
 * Check ranges and consistency: one prompt form, non-empty model, the bounds
 * documented on each field and the PROTO_MAX_* bounds (also for a struct
 * that was filled by hand, as the gateway does), max_tokens >= 1 when set.  err names the field
 * ("temperature must be between 0 and 2").  LLMQ_ERR_INVALID on failure.
 */
llmq_status proto_request_validate(const proto_request *r, llmq_err *err);

/*
 * Append the msgpack encoding of r to out.  Only set fields are written
 * (NAN floats and PROTO_UNSET integers are left out); `v` is always written.
 * LLMQ_ERR_INVALID when r has no prompt, LLMQ_ERR_NOMEM on allocation failure.
 */
llmq_status proto_request_encode(const proto_request *r, proto_buf *out, llmq_err *err);

/* ------------------------------------------------------------ chunks */

/* Token counts of a finished job. */
typedef struct proto_usage {
    int64_t prompt_tokens;       /* tokens of the (templated) prompt */
    int64_t completion_tokens;   /* tokens generated */
    int64_t cached_tokens;       /* of prompt_tokens, those whose KV came from the worker's prefix
                                    cache (OpenAI's prompt_tokens_details.cached_tokens); key
                                    `cached_tokens` of `usage`, written only when > 0 */
} proto_usage;

/*
 * Log-probabilities of generated tokens (chunk key `lp`, docs/protocol.md).
 * Values are natural logs of the model's own distribution: log_softmax of the
 * raw logits, before penalties, temperature, top-k/top-p/min-p (vLLM's
 * default "raw" logprobs), so they are <= 0 and say what the model thought,
 * whatever the sampling settings.
 *
 * `bytes` is the token's text piece: the bytes the token adds to the text in
 * the middle of a sequence (SentencePiece "▁Once" is " Once", a byte-fallback
 * token "<0xE2>" the one byte 0xE2, so not always valid UTF-8 on its own);
 * NULL when the worker has no tokenizer (only token ids are known then).
 */
typedef struct proto_token_lp {
    int32_t id;                  /* token id */
    double logprob;              /* log-probability, <= 0 (-inf when the model gives it none) */
    const char *bytes;           /* n_bytes bytes of its text piece, not NUL terminated; NULL = unknown */
    uint32_t n_bytes;
} proto_token_lp;

typedef struct proto_lp {
    proto_token_lp tok;          /* the generated token (tok.id equals the chunk's ids[i]) */
    proto_token_lp *top;         /* n_top most likely tokens, most likely first, equal
                                    logprobs by lower id first (<= PROTO_MAX_LOGPROBS) */
    size_t n_top;
} proto_lp;

/*
 * One output chunk.  A job's chunks carry seq 0, 1, 2, ... with no gap and
 * no duplicate, also across a resume on another worker.  The last chunk has
 * `finish` set (and usage, and error when finish is "error"); a chunk without
 * finish may still carry empty text (ids whose text is held back, e.g. half a
 * UTF-8 character or a pending stop-string match).
 */
typedef struct proto_chunk {
    int64_t seq;                 /* 0-based position of this chunk in the job's output */
    char *text;                  /* UTF-8 delta (text_len bytes, NUL terminated when
                                    decoded); may be NULL when text_len == 0 */
    size_t text_len;
    int32_t *ids;                /* n_ids token ids generated in this chunk */
    size_t n_ids;
    char *finish;                /* NULL, or the finish reason of the last chunk:
                                    "stop", "length", "cancelled", "deadline", "error" */
    bool has_usage;              /* usage present (always on the last chunk) */
    proto_usage usage;
    char *error;                 /* NULL, or a message when finish is "error" */
    int32_t error_status;        /* with error: 400 when the request was at fault (bad
                                    parameters, prompt too long), 500 otherwise; 0 = not
                                    given (readers treat it as 500).  Key `status`. */
    char *code;                  /* NULL, or with error: a machine-readable code for the
                                    client's error object (OpenAI's `code`), e.g.
                                    "context_length_exceeded".  Key `code`. */
    int64_t max_model_len;       /* 0 = not given; on the final chunk of a tokenize job: the
                                    model's context length in tokens.  Key `max_model_len`. */
    bool has_lp;                 /* key `lp` present: the job asked for logprobs */
    proto_lp *lp;                /* with has_lp: n_ids entries, lp[i] for ids[i] (NULL when n_ids == 0) */
    /* decoded chunks only: the storage lp[].top and the bytes point into */
    proto_token_lp *lp_top_pool;
    char *lp_bytes_pool;
} proto_chunk;

void proto_chunk_init(proto_chunk *c);
/* Free what a DECODED chunk owns and re-init it.  c may be NULL. */
void proto_chunk_deinit(proto_chunk *c);

/* Decode a msgpack chunk map (same error contract as proto_request_decode).
 * An `lp` whose length differs from that of `ids`, or a malformed entry, is
 * LLMQ_ERR_INVALID naming the entry. */
llmq_status proto_chunk_decode(proto_chunk *c, const void *buf, size_t len, llmq_err *err);

/* Append the msgpack encoding of c to out (finish/usage/error/lp only when
 * set).  With has_lp, lp must hold n_ids entries. */
llmq_status proto_chunk_encode(const proto_chunk *c, proto_buf *out, llmq_err *err);

/* ------------------------------------------------------------ job states */

/* The `state` field of a job hash. */
typedef enum proto_job_state {
    PROTO_STATE_UNKNOWN = 0,     /* not one of the names below */
    PROTO_STATE_QUEUED,          /* in the request stream, not admitted by a worker */
    PROTO_STATE_RUNNING,         /* admitted (also while waiting to be resumed) */
    PROTO_STATE_DONE,            /* finished: stop or length */
    PROTO_STATE_FAILED,          /* bad request, model error, or attempts exhausted */
    PROTO_STATE_CANCELLED,       /* cancelled by a client */
    PROTO_STATE_EXPIRED,         /* deadline_ms passed */
} proto_job_state;

/* "queued", "running", ... ; "unknown" for PROTO_STATE_UNKNOWN.  Never NULL. */
const char *proto_job_state_name(proto_job_state s);
/* Parse a state name (len bytes); PROTO_STATE_UNKNOWN when it is none. */
proto_job_state proto_job_state_parse(const char *s, size_t len);
/* 1 for done, failed, cancelled, expired. */
int proto_job_state_is_final(proto_job_state s);

#endif
