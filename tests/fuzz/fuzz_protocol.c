/*
 * fuzz_protocol.c — the wire protocol decoders (common/protocol.c) on
 * arbitrary bytes: proto_request_decode (what a worker reads from a request
 * stream anyone with Redis access can XADD to) and proto_chunk_decode (what
 * the gateway and clients read from output streams).
 *
 * Invariants checked besides "no crash, no leak, no UB":
 *  - a request that decodes and validates survives encode -> decode
 *    unchanged and still validates (the gateway re-encodes what it accepts);
 *  - a chunk that decodes survives encode -> decode unchanged.
 */
#include <math.h>
#include <string.h>

#include "common/protocol.h"
#include "tests/fuzz/fuzz.h"

/* msgpack-c allocates a container's element table from the count in its
 * header before reading any element (see protocol.c): 6 bytes can ask for
 * 128 GiB.  Such a request must fail (LLMQ_ERR_FORMAT), not abort.  Here the
 * allocator refuses (NULL) anything past 512 MiB, the most the element
 * tables of a PROTO_MAX_MESSAGE_BYTES message that holds its elements can
 * take, as a worker in a memory-limited container would see it. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1:max_allocation_size_mb=512"; }

static int str_eq(const char *a, const char *b) {
    if (!a || !b) return a == b;
    return strcmp(a, b) == 0;
}

static int num_eq(double a, double b) { return (isnan(a) && isnan(b)) || a == b; }

static void check_request_equal(const proto_request *a, const proto_request *b) {
    fuzz_check(a->v == b->v && str_eq(a->id, b->id) && str_eq(a->model, b->model), "request header changed");
    fuzz_check(a->kind == b->kind, "prompt kind changed: %d -> %d", a->kind, b->kind);
    if (a->kind == PROTO_PROMPT_TEXT) fuzz_check(str_eq(a->prompt, b->prompt), "prompt changed");
    if (a->kind == PROTO_PROMPT_MESSAGES) {
        fuzz_check(a->n_messages == b->n_messages, "message count changed");
        for (size_t i = 0; i < a->n_messages; i++)
            fuzz_check(str_eq(a->messages[i].role, b->messages[i].role) &&
                           str_eq(a->messages[i].content, b->messages[i].content),
                       "message %zu changed", i);
    }
    if (a->kind == PROTO_PROMPT_IDS)
        fuzz_check(a->n_prompt_ids == b->n_prompt_ids &&
                       !memcmp(a->prompt_ids, b->prompt_ids, a->n_prompt_ids * sizeof *a->prompt_ids),
                   "prompt_ids changed");
    fuzz_check(a->max_tokens == b->max_tokens && a->top_k == b->top_k && a->logprobs == b->logprobs &&
                   a->priority == b->priority && a->deadline_ms == b->deadline_ms && a->ignore_eos == b->ignore_eos &&
                   a->op == b->op && a->add_special_tokens == b->add_special_tokens,
               "an integer field changed");
    fuzz_check(num_eq(a->temperature, b->temperature) && num_eq(a->top_p, b->top_p) && num_eq(a->min_p, b->min_p) &&
                   num_eq(a->repetition_penalty, b->repetition_penalty) &&
                   num_eq(a->presence_penalty, b->presence_penalty) &&
                   num_eq(a->frequency_penalty, b->frequency_penalty),
               "a float field changed");
    fuzz_check(a->has_seed == b->has_seed && (!a->has_seed || a->seed == b->seed), "seed changed");
    fuzz_check(a->n_stop == b->n_stop, "stop count changed");
    for (size_t i = 0; i < a->n_stop; i++) fuzz_check(str_eq(a->stop[i], b->stop[i]), "stop %zu changed", i);
    fuzz_check(a->n_stop_token_ids == b->n_stop_token_ids &&
                   (!a->n_stop_token_ids ||
                    !memcmp(a->stop_token_ids, b->stop_token_ids, a->n_stop_token_ids * sizeof *a->stop_token_ids)),
               "stop_token_ids changed");
    fuzz_check(a->guide_type == b->guide_type && str_eq(a->guide, b->guide), "guide changed");
}

static void fuzz_request(const uint8_t *data, size_t size) {
    proto_request r, back;
    llmq_err err;
    proto_request_init(&r);
    if (proto_request_decode(&r, data, size, &err) != LLMQ_OK) {
        fuzz_check(err.msg[0], "decode failed without a message");
        fuzz_check(r.kind == PROTO_PROMPT_NONE && !r.prompt && !r.messages && !r.stop, "failed decode left data");
        return;
    }
    if (proto_request_validate(&r, &err) == LLMQ_OK) {
        proto_buf b;
        proto_buf_init(&b);
        fuzz_check(proto_request_encode(&r, &b, &err) == LLMQ_OK, "encode of a valid request failed: %s", err.msg);
        fuzz_check(proto_request_decode(&back, b.data, b.len, &err) == LLMQ_OK, "re-decode failed: %s", err.msg);
        fuzz_check(proto_request_validate(&back, &err) == LLMQ_OK, "re-decoded request invalid: %s", err.msg);
        check_request_equal(&r, &back);
        proto_request_deinit(&back);
        proto_buf_deinit(&b);
    }
    proto_request_deinit(&r);
    proto_request_deinit(&r); /* deinit twice is harmless (protocol.h) */
}

/* Same id, logprob (bit for bit, -inf included) and piece (NULL = unknown). */
static int lp_token_equal(const proto_token_lp *a, const proto_token_lp *b) {
    if (a->id != b->id || memcmp(&a->logprob, &b->logprob, sizeof a->logprob)) return 0;
    if (!a->bytes || !b->bytes) return !a->bytes && !b->bytes;
    return a->n_bytes == b->n_bytes && (!a->n_bytes || !memcmp(a->bytes, b->bytes, a->n_bytes));
}

static void fuzz_chunk(const uint8_t *data, size_t size) {
    proto_chunk c, back;
    llmq_err err;
    if (proto_chunk_decode(&c, data, size, &err) != LLMQ_OK) {
        fuzz_check(!c.text && !c.ids && !c.finish && !c.error && !c.code && !c.lp && !c.lp_top_pool && !c.lp_bytes_pool,
                   "failed chunk decode left data");
        return;
    }
    proto_buf b;
    proto_buf_init(&b);
    fuzz_check(proto_chunk_encode(&c, &b, &err) == LLMQ_OK, "chunk encode failed: %s", err.msg);
    fuzz_check(proto_chunk_decode(&back, b.data, b.len, &err) == LLMQ_OK, "chunk re-decode failed: %s", err.msg);
    fuzz_check(back.seq == c.seq && back.text_len == c.text_len &&
                   (!c.text_len || !memcmp(back.text, c.text, c.text_len)),
               "chunk seq/text changed");
    fuzz_check(back.n_ids == c.n_ids && (!c.n_ids || !memcmp(back.ids, c.ids, c.n_ids * sizeof *c.ids)),
               "chunk ids changed");
    fuzz_check(str_eq(back.finish, c.finish) && str_eq(back.error, c.error) && back.error_status == c.error_status &&
                   str_eq(back.code, c.code) && back.max_model_len == c.max_model_len,
               "chunk finish/error changed");
    fuzz_check(back.has_usage == c.has_usage && back.usage.prompt_tokens == c.usage.prompt_tokens &&
                   back.usage.completion_tokens == c.usage.completion_tokens,
               "chunk usage changed");
    fuzz_check(back.has_lp == c.has_lp, "chunk lp presence changed");
    for (size_t i = 0; c.has_lp && i < c.n_ids; i++) {
        const proto_lp *x = &c.lp[i], *y = &back.lp[i];
        fuzz_check(lp_token_equal(&x->tok, &y->tok) && x->tok.id == c.ids[i] && x->n_top == y->n_top,
                   "chunk lp entry %zu changed", i);
        for (size_t k = 0; k < x->n_top; k++)
            fuzz_check(lp_token_equal(&x->top[k], &y->top[k]), "chunk lp entry %zu top %zu changed", i, k);
    }
    proto_chunk_deinit(&back);
    proto_chunk_deinit(&c);
    proto_buf_deinit(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_request(data, size);
    fuzz_chunk(data, size);
    return 0;
}
