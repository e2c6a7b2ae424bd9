/*
 * backend.h — the compute interface the engine runs on.
 *
 * The engine (worker/engine/engine.c) knows a backend only through this table of
 * operations; it never learns whether the memory it passes around lives in
 * host RAM (kernels/cpu) or on a GPU (kernels/cuda).  Every op works on whole
 * batches of rows so that a step of mixed prefills and decodes is one call
 * per op.
 *
 * Conventions
 *  - Activations are buffers the backend allocated (be->ops->alloc), holding
 *    elements of the backend's activation type (be->act_dt; F32 on the CPU).
 *    The KV cache holds be->kv_dt (the CPU: F32, F16 or BF16).
 *    Shapes are given in elements, row-major, rows = tokens of the step.
 *  - Weights are be_weight views: a [rows, cols] row-major matrix exactly as
 *    a Hugging Face nn.Linear stores it (out_features x in_features).  The
 *    backend decides whether it reads them in place (CPU: straight from the
 *    mmapped safetensors) or holds a converted device copy.
 *  - Small per-layer vectors (norm weights, biases, rope inv_freq) are F32
 *    buffers of the backend (converted at load).
 *  - Index arrays (token ids, positions, cache slots, tok_start, block
 *    tables, row lists) are int32 buffers of the backend too: the engine
 *    uploads a step's indices once, then every op reads them in place.
 *  - Ops return nothing: a backend that can fail asynchronously (CUDA)
 *    records the first error and reports it from ops->sync().
 *  - Results of a row never depend on the other rows of the batch: the same
 *    token computed alone or in a batch of 64 gives bitwise the same values.
 *    This is what makes seeded sampling reproducible whatever the batch, and
 *    a resumed job continue exactly where it stopped (docs/architecture.md,
 *    "Invariants that make the system exact").
 */
#ifndef LLMQ_BACKEND_H
#define LLMQ_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef enum llmq_dtype {
    LLMQ_F32 = 0,
    LLMQ_F16,
    LLMQ_BF16,
    /* Weight-only quantized matrices (kernels/quant.h has the layout): */
    LLMQ_Q8, /* int8, symmetric, one F32 scale per output row */
    LLMQ_Q4, /* 4-bit, groups of `group` inputs with an F32 scale and a zero point */
} llmq_dtype;

/* Bytes per element; 1 for Q8 and 0 for Q4 (two elements a byte: use
 * llmq_quant_bytes() of kernels/quant.h for the size of a quantized matrix). */
size_t llmq_dtype_size(llmq_dtype dt);
const char *llmq_dtype_name(llmq_dtype dt);
static inline int llmq_dtype_is_quant(llmq_dtype dt) { return dt == LLMQ_Q8 || dt == LLMQ_Q4; }

/* A weight matrix [rows, cols], row-major, in dtype dt. */
typedef struct be_weight {
    const void *data; /* row r starts at element r * ld; owned by whoever loaded it */
    llmq_dtype dt;
    int rows;         /* output features */
    int cols;         /* input features (the reduction dimension) */
    int ld;           /* row stride in elements (>= cols); 0 means cols.  A column
                         slice of a larger matrix (tensor parallelism) has ld > cols.
                         Q8 / Q4: data points to a be_qweight; rows are contiguous */
} be_weight;

/* What be_weight.data points to when dt is LLMQ_Q8 or LLMQ_Q4 (the layout of
 * the arrays is in kernels/quant.h).  A descriptor rather than more fields
 * of be_weight, so that every existing be_weight initializer stays valid. */
typedef struct be_qweight {
    const void *q;         /* Q8: int8 [rows, cols]; Q4: uint8 [rows, 8 * ceil(cols / 16)] */
    const float *scales;   /* Q8: [rows]; Q4: [rows, ceil(cols / group)] */
    const uint8_t *zeros;  /* Q4: [rows, ceil(cols / group)] zero points in 0..15; Q8: NULL */
    int group;             /* Q4: inputs per scale group (a multiple of 8); Q8: 0 */
} be_qweight;

/* The row stride of w in elements. */
static inline size_t be_weight_ld(const be_weight *w) { return (size_t)(w->ld > 0 ? w->ld : w->cols); }

/*
 * What attention needs to know about one step.  The step's tokens are laid
 * out sequence after sequence; sequence s owns tokens
 * [tok_start[s], tok_start[s+1]).  Before attention the engine has already
 * stored the step's K/V rows in the paged cache (kv_store), so each token
 * attends to cache positions [max(0, pos - window + 1), pos] of its sequence.
 */
typedef struct be_attn_step {
    int n_seqs;
    int n_tokens;
    const int32_t *tok_start;    /* [n_seqs + 1] */
    const int32_t *positions;    /* [n_tokens] absolute position of each token */
    const int32_t *block_tables; /* [n_seqs * max_blocks] block ids, row per sequence */
    int max_blocks;              /* row stride of block_tables */
    int block_size;              /* tokens per KV block (16) */
} be_attn_step;

typedef struct be_attn_shape {
    int n_heads;     /* query heads (of this rank) */
    int n_kv_heads;  /* KV heads (of this rank); n_heads % n_kv_heads == 0 */
    int head_dim;
    int window;      /* sliding window in tokens, 0 = unlimited */
    float scale;     /* softmax scale, usually 1/sqrt(head_dim) */
} be_attn_shape;

/* A sparse mixture-of-experts MLP (Mixtral): n_experts SwiGLU experts, each
 * token routed to top_k of them.  Under tensor parallelism every rank holds
 * the same experts, each cut as a dense MLP is (rows of w1/w3, columns of w2). */
typedef struct be_moe {
    int n_experts, top_k;
    const be_weight *w1; /* [n_experts] gate, [I, d] */
    const be_weight *w3; /* [n_experts] up, [I, d] */
    const be_weight *w2; /* [n_experts] down, [d, I] */
} be_moe;

/* The moe op's scratch for up to n tokens, backend buffers: activations
 * xs [n, d], gate and up [n, I]; ys, n * top_k * d F32 values (each token's
 * expert outputs, or an F32 accumulator); and `route`, of
 * be_moe_route_bytes(n, n_experts, top_k) bytes: each token's experts and
 * weights, and the tokens grouped by expert. */
typedef struct be_moe_scratch {
    void *xs, *gate, *up, *ys;
    void *route;
} be_moe_scratch;

static inline size_t be_moe_route_bytes(size_t n, int n_experts, int top_k) {
    return n * (size_t)top_k * 12 + ((size_t)n_experts + 1) * 4;
}

typedef struct llmq_backend llmq_backend;
struct llmq_comm; /* common/comm.h */

typedef struct be_ops {
    const char *name;

    /* memory ------------------------------------------------------------ */
    void *(*alloc)(llmq_backend *be, size_t bytes);       /* zeroed; NULL on failure */
    void (*free)(llmq_backend *be, void *p);              /* NULL is a no-op */
    void (*upload)(llmq_backend *be, void *dst, const void *src, size_t bytes);
    /* Copy n activation elements to host floats (logits, tests). */
    void (*download_f32)(llmq_backend *be, float *dst, const void *src, size_t n);
    /* Copy n host floats into an activation buffer. */
    void (*upload_f32)(llmq_backend *be, void *dst, const float *src, size_t n);
    /* Make a weight usable by this backend; may copy/convert. *out keeps the
     * shape. The CPU backend returns the same view (no copy). */
    llmq_status (*weight_prepare)(llmq_backend *be, be_weight *out, const be_weight *in);
    void (*weight_release)(llmq_backend *be, be_weight *w);
    /* Wait for queued work; returns the first error since the last sync. */
    llmq_status (*sync)(llmq_backend *be, llmq_err *err);

    /* ops ---------------------------------------------------------------- */
    /* out[i,:] = table[ids[i], :] for i < n; table is [vocab, dim].  An id
     * outside [0, table->rows) gives a row of zeros (a vocabulary shard). */
    void (*embed)(llmq_backend *be, void *out, const be_weight *table, const int32_t *ids, int n);
    /* out = rmsnorm(x) * w over rows of length dim. out may alias x. */
    void (*rmsnorm)(llmq_backend *be, void *out, const void *x, const float *w, int n, int dim, float eps);
    /* Fused residual: x += delta; out = rmsnorm(x) * w.  out must not alias x. */
    void (*add_rmsnorm)(llmq_backend *be, void *out, void *x, const void *delta, const float *w,
                        int n, int dim, float eps);
    /* out[n, w->rows] = x[n, w->cols] . w^T (+ bias[w->rows] when bias != NULL). */
    void (*matmul)(llmq_backend *be, void *out, const void *x, const be_weight *w, const float *bias, int n);
    /* Rotary embedding, Hugging Face "rotate_half" layout, in place on
     * q [n, n_heads*head_dim] and k [n, n_kv_heads*head_dim].
     * inv_freq [head_dim/2] (a backend buffer) already carries any rope scaling. */
    void (*rope)(llmq_backend *be, void *q, void *k, const int32_t *positions, int n, int n_heads,
                 int n_kv_heads, int head_dim, const float *inv_freq);
    /* Store K/V rows of the step into the paged cache:
     * cache[slot[i]] = row i, rows of kv_dim = n_kv_heads*head_dim elements. */
    void (*kv_store)(llmq_backend *be, void *k_cache, void *v_cache, const void *k, const void *v,
                     const int32_t *slots, int n, int kv_dim);
    /* Causal attention of the step's queries over the paged cache.
     * q and out are [n_tokens, n_heads*head_dim]. */
    void (*attention)(llmq_backend *be, void *out, const void *q, const void *k_cache,
                      const void *v_cache, const be_attn_step *step, const be_attn_shape *shape);
    /* out = silu(gate) * up, elementwise over n rows of dim. out may alias gate. */
    void (*swiglu)(llmq_backend *be, void *out, const void *gate, const void *up, int n, int dim);
    /* dst[i, :] = src[rows[i], :] for i < n (gather the rows that need logits). */
    void (*gather_rows)(llmq_backend *be, void *dst, const void *src, const int32_t *rows, int n, int dim);
    /* x += y over n elements. */
    void (*add)(llmq_backend *be, void *x, const void *y, size_t n);
    /* Falcon: out = (x - mean) / sqrt(var + eps) * w + b over rows of dim
     * (biased variance, as torch's LayerNorm); out may alias x. */
    void (*layernorm)(llmq_backend *be, void *out, const void *x, const float *w, const float *b, int n, int dim,
                      float eps);
    /* Falcon: out = gelu(x) = x / 2 * (1 + erf(x / sqrt 2)) over n elements (the exact
     * GELU, not the tanh form); out may alias x. */
    void (*gelu)(llmq_backend *be, void *out, const void *x, size_t n);
    /* Mixtral's MLP over n rows of x [n, d] (optional: NULL where a backend
     * has none, and the engine refuses MoE models there).  Per row i:
     *   p   = softmax(router_logits[i, :n_experts]) in F32
     *   the top_k largest p (the lower expert first on a tie), renormalised
     *   to sum 1 over the chosen;
     *   out[i] = sum over the chosen experts e, in increasing e, of
     *            p_e * ((silu(x w1_e^T) * (x w3_e^T)) w2_e^T)
     * The rows that chose an expert go through its weights together (each
     * expert is read once per call), yet a row's result never depends on the
     * other rows (backend.h's invariance).  out must not alias x. */
    void (*moe)(llmq_backend *be, void *out, const void *x, const void *router_logits, const be_moe *moe, int n,
                const be_moe_scratch *ws);

    /* tensor parallel (optional) ------------------------------------------ */
    /* A communicator for collectives on this backend's buffers, formed by
     * every rank of `host` at once (it is a collective over `host`, a
     * host-memory communicator of world > 1 that stays in use for step
     * plans).  NULL op: collectives run on `host` itself (the CPU
     * backends).  The CUDA backend forms an NCCL group on its stream,
     * passing the NCCL unique id from rank 0 over `host`.  max_reduce: the
     * most elements of be->act_dt one all_reduce_sum will carry, so that
     * the communicator allocates its device scratch now, before the engine
     * sizes the KV pool from the free memory.  Caller destroys the result. */
    struct llmq_comm *(*group_comm)(llmq_backend *be, struct llmq_comm *host, size_t max_reduce, llmq_err *err);

    /* memory of the device (optional) ---------------------------------------
     * Free and total bytes of the device's memory now (CUDA: cudaMemGetInfo),
     * so that the engine can size its KV pool to a fraction of it after the
     * weights are in (eng_opts.mem_util).  NULL: the CPU backends, whose pool
     * the memory estimator sizes before the model loads (worker/engine/vram.h). */
    void (*mem_info)(llmq_backend *be, size_t *free_bytes, size_t *total_bytes);

    /* step graphs (optional) ------------------------------------------------
     * A backend that pays a cost per launched op (CUDA) may record the ops
     * of a step once and replay the recording when a later step has the
     * same shape.  The engine brackets the ops of a decode step, from embed
     * to the logits matmul (index arrays uploaded before, logits downloaded
     * after), with graph_begin and graph_end.  `key` stands for every
     * argument of those ops that is not the content of a buffer (the
     * engine's buffers and the weights never move): equal keys, equal ops
     * with equal arguments.  graph_begin answers
     *   BE_GRAPH_EAGER      run the ops as usual (graphs are off, or this is
     *                       the first step of the key: a warm-up run);
     *   BE_GRAPH_RECORDING  run the ops: they are recorded, not executed,
     *                       until graph_end, which executes the recording;
     *   BE_GRAPH_REPLAYED   the recording of key is enqueued: skip the ops.
     * graph_end (after RECORDING only) returns 1 when the recording is
     * enqueued, 0 when it could not be made (an op's error included): graphs
     * are then off for this backend and the engine runs the ops again,
     * eagerly, where an op's error shows as usual.  NULL: no graphs (CPU backends). */
    int (*graph_begin)(llmq_backend *be, uint64_t key);
    int (*graph_end)(llmq_backend *be);

    /* lifetime ------------------------------------------------------------
     * Free the backend and everything it still owns (scratch, streams,
     * library handles); buffers and weights it handed out are the caller's
     * to free before.  Every backend sets it: llmq_backend_destroy calls
     * it, so that no code outside a backend knows how one is freed. */
    void (*destroy)(llmq_backend *be);

    /* KV element types ------------------------------------------------------
     * Bits (1u << dtype) of the types kv_store and attention take in
     * be->kv_dt besides act_dt (the CPU backends: F32, F16, BF16; kv_store
     * rounds to nearest even); 0: the cache is in act_dt only (CUDA). */
    unsigned kv_dtypes;
} be_ops;

enum { BE_GRAPH_EAGER = 0, BE_GRAPH_RECORDING, BE_GRAPH_REPLAYED };

struct llmq_backend {
    const be_ops *ops;
    llmq_dtype act_dt;   /* element type of activation buffers (and of KV ones unless kv_dt says otherwise) */
    llmq_dtype kv_dt;    /* element type of the KV cache kv_store writes and attention reads: act_dt
                          * unless the engine chose another of ops->kv_dtypes (--kv-dtype, eng_opts) */
    void *impl;          /* backend private state */
    const char *isa;     /* the kernels' instruction-set path ("avx2", "avx512bf16", kernels/cpu/isa.h);
                          * NULL where a backend has no such choice */
    llmq_err err;        /* first asynchronous error, if any */
};

/*
 * Create a backend by name: "cpu" (the fast path: OpenMP, SIMD) or
 * "cpu-ref" (plain loops, single thread: the test oracle), and "cuda" when
 * built with `make cuda`.  Returns NULL and fills err for an unknown or
 * unavailable backend.  Ownership: the caller destroys it.
 */
llmq_backend *llmq_backend_create(const char *name, llmq_err *err);
/* be->ops->destroy(be); NULL is a no-op. */
void llmq_backend_destroy(llmq_backend *be);

#endif
