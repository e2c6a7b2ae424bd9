/*
 * cpu.h — the CPU backend's internals, shared by its one-op-per-file kernels.
 *
 * Two op tables live here: "cpu" (OpenMP across rows/heads, explicit SIMD
 * micro-kernels) and "cpu-ref" (plain scalar loops, one thread, written to
 * be obviously right: the oracle the fast path and the CUDA backend are
 * checked against).  Activations are F32 in both.
 *
 * Batch invariance (backend.h): every output element of matmul is one dot
 * product computed by the same instruction sequence whatever the batch size
 * or the row tile it falls in, so results never depend on the batch.
 */
#ifndef LLMQ_KERNELS_CPU_H
#define LLMQ_KERNELS_CPU_H

#include <stdint.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/cpu/isa.h"
#include "kernels/dtype.h"

/* Per-thread scratch for converted weight tiles, grown outside parallel regions. */
typedef struct cpu_impl {
    int reference;     /* 1 = cpu-ref */
    cpu_isa isa;       /* the path the fast ops take (isa.h); cpu-ref ignores it */
    int n_threads;     /* omp_get_max_threads() at creation */
    float **scratch;   /* [n_threads] buffers of scratch_cap floats */
    size_t scratch_cap;
} cpu_impl;

/* The "cpu" (reference 0) or "cpu-ref" (1) backend; freed by its ops' destroy. */
llmq_backend *cpu_backend_create(int reference, llmq_err *err);

/* Make sure every thread's scratch holds at least n floats (call outside omp). */
int cpu_scratch_reserve(cpu_impl *impl, size_t n);

/* Convert n elements of dt starting at element offset `off` of src to F32. */
void cpu_convert_row(float *dst, const void *src, llmq_dtype dt, size_t off, size_t n);

/* ---- ops (fast / reference) ---------------------------------------------- */
void cpu_matmul(llmq_backend *be, void *out, const void *x, const be_weight *w, const float *bias, int n);
void cpu_matmul_ref(llmq_backend *be, void *out, const void *x, const be_weight *w, const float *bias, int n);
/* matmul with Q8 / Q4 weights (qmatmul.c); cpu_matmul(_ref) forward to these */
void cpu_qmatmul(llmq_backend *be, void *out, const void *x, const be_weight *w, const float *bias, int n);
void cpu_qmatmul_ref(llmq_backend *be, void *out, const void *x, const be_weight *w, const float *bias, int n);

void cpu_rmsnorm(llmq_backend *be, void *out, const void *x, const float *w, int n, int dim, float eps);
void cpu_add_rmsnorm(llmq_backend *be, void *out, void *x, const void *delta, const float *w, int n, int dim,
                     float eps);
void cpu_rmsnorm_ref(llmq_backend *be, void *out, const void *x, const float *w, int n, int dim, float eps);
void cpu_add_rmsnorm_ref(llmq_backend *be, void *out, void *x, const void *delta, const float *w, int n, int dim,
                         float eps);

void cpu_rope(llmq_backend *be, void *q, void *k, const int32_t *positions, int n, int n_heads, int n_kv_heads,
              int head_dim, const float *inv_freq);
void cpu_rope_ref(llmq_backend *be, void *q, void *k, const int32_t *positions, int n, int n_heads,
                  int n_kv_heads, int head_dim, const float *inv_freq);

void cpu_kv_store(llmq_backend *be, void *k_cache, void *v_cache, const void *k, const void *v,
                  const int32_t *slots, int n, int kv_dim);
void cpu_attention(llmq_backend *be, void *out, const void *q, const void *k_cache, const void *v_cache,
                   const be_attn_step *step, const be_attn_shape *shape);
void cpu_attention_ref(llmq_backend *be, void *out, const void *q, const void *k_cache, const void *v_cache,
                       const be_attn_step *step, const be_attn_shape *shape);

void cpu_swiglu(llmq_backend *be, void *out, const void *gate, const void *up, int n, int dim);
void cpu_layernorm(llmq_backend *be, void *out, const void *x, const float *w, const float *b, int n, int dim,
                   float eps);
void cpu_layernorm_ref(llmq_backend *be, void *out, const void *x, const float *w, const float *b, int n, int dim,
                       float eps);
void cpu_gelu(llmq_backend *be, void *out, const void *x, size_t n);
void cpu_gelu_ref(llmq_backend *be, void *out, const void *x, size_t n);
void cpu_swiglu_ref(llmq_backend *be, void *out, const void *gate, const void *up, int n, int dim);
/* moe.c: Mixtral's MLP, experts grouped (fast) or row by row (reference) */
void cpu_moe(llmq_backend *be, void *out, const void *x, const void *router_logits, const be_moe *moe, int n,
             const be_moe_scratch *ws);
void cpu_moe_ref(llmq_backend *be, void *out, const void *x, const void *router_logits, const be_moe *moe, int n,
                 const be_moe_scratch *ws);

void cpu_embed(llmq_backend *be, void *out, const be_weight *table, const int32_t *ids, int n);
void cpu_gather_rows(llmq_backend *be, void *dst, const void *src, const int32_t *rows, int n, int dim);
void cpu_add(llmq_backend *be, void *x, const void *y, size_t n);

#endif
