/*
 * roofline.h — what a step must move and compute on a GPU, counted by
 * running the engine's own step on a counting backend (issue 18: a target
 * per kernel before the first GPU run; `llmq roofline`, docs/benchmarks.md
 * "CUDA targets (counted)").
 *
 * The counting backend implements the op table of kernels/backend.h by
 * adding up, per kernel, the bytes the op must move through the GPU's
 * memory at the least (every input read once, every output written once)
 * and the FLOPs of its matrix products, and computes nothing.  The model is
 * config.json alone: its matrices are views with the shapes and the dtype
 * of rank 0 of a tensor-parallel split (model_shard_plan) and no data, and
 * every buffer is an untouched anonymous mapping, so Llama 3 8B at 8K
 * tokens costs no memory beyond the index arrays the engine uploads.  The
 * engine (eng_create, eng_step) runs its real sequence of ops: what is
 * counted is what the engine asks a backend for, at the step's real
 * positions and block tables.
 *
 * What each kernel counts (es = bytes of an activation and of a KV element:
 * the activation type, as on the CUDA backend; F32 vectors are 4 bytes):
 *   embed        weights: the table rows of the step's tokens in this rank's
 *                shard; act: n*d written
 *   rmsnorm      act: n*d read and written; weights: d*4
 *   add_rmsnorm  act: x and delta read, x and out written (4*n*d); weights: d*4
 *   layernorm    act: n*d read and written; weights: weight and bias (2*d*4)
 *   matmul <w>   weights: the matrix as held (quantized: kernels/quant.h's
 *                llmq_quant_bytes) and its bias; act: n*cols read, n*rows
 *                written; FLOPs 2*n*rows*cols
 *   rope         act: q and k read and written in place
 *   kv_store     act: k and v rows read; kv: the same written to the cache
 *   attention    act: q read, out written; kv: K and V of the positions each
 *                sequence attends, read once per sequence (the union of its
 *                tokens' windows); FLOPs 4*head_dim per query head and
 *                attended position (q.k and p.v; softmax not counted)
 *   swiglu, gelu, add, gather_rows: their operands read, their result written
 *   moe          weights: min(E, n*top_k) experts (every expert the step may
 *                route to, at most); act: x and the router logits read, out
 *                written, and each token-expert pair's gate and up written
 *                and read back (4*I); FLOPs 6*n*top_k*d*I
 *   all_reduce   link: a ring all-reduce's bytes sent per rank,
 *                2*(N-1)/N * count*es (tensor parallelism only)
 * Index arrays (positions, slots, block tables) and the logits' download
 * to the host are not counted: a few KB, or PCIe rather than HBM.
 * Elementwise arithmetic is not counted either: its few FLOPs per element
 * are two orders of magnitude below what the bandwidth allows on every GPU
 * of the table.
 */
#ifndef LLMQ_ROOFLINE_H
#define LLMQ_ROOFLINE_H

#include "common/status.h"
#include "kernels/backend.h"
#include "kernels/quant.h"
#include "worker/model/config.h"

/* The kernels counted, in the order a Llama step runs them. */
typedef enum rf_kernel {
    RF_EMBED = 0,
    RF_RMSNORM,
    RF_ADD_RMSNORM,
    RF_LAYERNORM,
    RF_MM_Q,
    RF_MM_K,
    RF_MM_V,
    RF_ROPE,
    RF_KV_STORE,
    RF_ATTENTION,
    RF_MM_O,
    RF_MM_ROUTER,
    RF_MOE,
    RF_MM_GATE,
    RF_MM_UP,
    RF_SWIGLU,
    RF_GELU,
    RF_MM_DOWN,
    RF_ADD,
    RF_ALL_REDUCE,
    RF_GATHER_ROWS,
    RF_MM_LM_HEAD,
    RF_N_KERNELS,
} rf_kernel;

/* "embed", "matmul q", ... */
const char *rf_kernel_name(rf_kernel k);
/* Whether a kernel's FLOPs run on tensor cores (matrix products). */
int rf_kernel_tensor(rf_kernel k);

typedef struct rf_count {
    long calls;
    double weight_bytes; /* matrices, embedding rows, F32 vectors read */
    double act_bytes;    /* activations read and written */
    double kv_bytes;     /* KV cache read and written */
    double link_bytes;   /* sent per rank over the GPUs' interconnect */
    double flops;
} rf_count;

typedef struct rf_step {
    rf_count k[RF_N_KERNELS];
    int tokens;          /* tokens of the step (decode: the batch; prefill: the prompt) */
} rf_step;

/* HBM bytes of a count (all but link_bytes). */
static inline double rf_bytes(const rf_count *c) { return c->weight_bytes + c->act_bytes + c->kv_bytes; }

typedef struct rf_opts {
    llmq_dtype act_dt;   /* activations and KV cache: BF16 or F16 */
    llmq_dtype wdt;      /* matrices when not quantized (and the embedding, the router) */
    llmq_quant quant;    /* weight-only quantization of the linear layers */
    int q4_group;        /* 0 = LLMQ_Q4_GROUP */
    int tp;              /* ranks; rank 0's shard is counted (0 = 1) */
    int max_tokens;      /* the most tokens of a step counted (the longest prefill, the largest batch) */
    int max_seqs;        /* the largest decode batch */
    int max_context;     /* the longest context a decode reaches */
} rf_opts;

typedef struct rf_run rf_run;

/* An engine over a counting backend and a weightless model of cfg. */
llmq_status rf_create(rf_run **out, const model_config *cfg, const rf_opts *o, llmq_err *err);
void rf_destroy(rf_run *r);

/* One decode step of `batch` sequences, each at position context-1 (it
 * attends `context` positions, its own included). */
llmq_status rf_decode(rf_run *r, int batch, int context, rf_step *out, llmq_err *err);
/* One prefill step of a `tokens`-token prompt from position 0 (logits of
 * its last token only). */
llmq_status rf_prefill(rf_run *r, int tokens, rf_step *out, llmq_err *err);

/* The model's weights as held on rank 0 (what the memory estimator counts):
 * every matrix, the whole embedding shard, every F32 vector. */
double rf_weight_bytes_held(const rf_run *r);

/* A GPU's ceilings, from the vendor's data sheet (roofline.c names each). */
typedef struct rf_gpu {
    const char *name;        /* "H100", "A10G", "T4" */
    const char *label;       /* "H100 SXM5 80G" */
    double hbm_gbs;          /* memory bandwidth, GB/s (1e9) */
    double bf16_tflops;      /* dense tensor-core peak, BF16 inputs (0: none) */
    double f16_tflops;       /* dense tensor-core peak, F16 inputs, F32 accumulation */
    double link_gbs;         /* interconnect bandwidth per direction between two GPUs, GB/s */
    const char *link;        /* "NVLink 4", "PCIe 4.0 x16" */
} rf_gpu;

const rf_gpu *rf_gpus(int *n);
/* By name, case-insensitive; NULL when unknown. */
const rf_gpu *rf_gpu_find(const char *name);

/* Seconds a kernel takes at the roofline: the larger of its HBM bytes over
 * the bandwidth and its FLOPs over the tensor-core peak of act_dt, plus its
 * link bytes over the interconnect (collectives' latency not counted). */
double rf_time(const rf_count *c, const rf_gpu *g, llmq_dtype act_dt);

#endif
