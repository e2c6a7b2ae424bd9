/*
 * common.cuh — what every CUDA kernel file of the backend shares: the
 * backend's private state, the error macros, element conversions for the
 * three activation types and deterministic warp/block reductions.
 *
 * Invariants the kernels keep (backend.h):
 *  - activations and KV are T = float, __half or __nv_bfloat16 (be->act_dt);
 *    arithmetic is FP32, rounding to T only when a result is stored;
 *  - every reduction has a fixed shape (fixed block size, fixed butterfly
 *    order), and a row's result is computed by code that does not look at
 *    any other row: results are bitwise batch invariant;
 *  - ops never synchronise the stream, and report errors through be->err
 *    (first error wins; ops->sync returns it).
 */
#ifndef LLMQ_KERNELS_CUDA_COMMON_CUH
#define LLMQ_KERNELS_CUDA_COMMON_CUH

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

/* The project's headers are C: give their functions C linkage here. */
extern "C" {
#include "kernels/backend.h"
}
#include "kernels/cuda/cuda.h"

/* ------------------------------------------------------------ launches and shared memory */

/* Every kernel launch goes through llmq_launch and every shared array through LLMQ_SHARED /
 * LLMQ_DYN_SHARED, so that the same source builds with nvcc (<<<>>>, __shared__) and as host C++
 * for the emulated device (`make cuda-emu`, kernels/cuda/emu/): there the launch's arguments are
 * copied at the call, as CUDA copies them, and the grid is enqueued on the stream.
 * Launch errors are read with cudaGetLastError (CUDA_CHECK_LAUNCH) in both builds. */
#ifdef LLMQ_CUDA_EMU
template <typename... P, typename... A>
static inline void llmq_launch_named(const char *name, void (*k)(P...), dim3 grid, dim3 block, size_t smem,
                                     cudaStream_t s, A... args) {
    emu_launch((const void *)k, name, grid, block, smem, s, [=] { k(args...); });
}
#define LLMQ_SHARED(T, name, dims)                                                                             \
    T(&name) dims = *reinterpret_cast<T(*) dims>(emu_shared_static(                                            \
        [] {                                                                                                   \
            static const char site_ = 0;                                                                      \
            return (const void *)&site_;                                                                       \
        }(),                                                                                                   \
        sizeof(T dims), alignof(T) > 16 ? alignof(T) : 16))
#define LLMQ_DYN_SHARED(T, name) T *name = reinterpret_cast<T *>(emu_shared_dynamic())
#else
template <typename... P, typename... A>
static inline void llmq_launch_named(const char *name, void (*k)(P...), dim3 grid, dim3 block, size_t smem,
                                     cudaStream_t s, A... args) {
    (void)name;
    k<<<grid, block, smem, s>>>(args...);
}
#define LLMQ_SHARED(T, name, dims) __shared__ __align__(16) T name dims
#define LLMQ_DYN_SHARED(T, name) extern __shared__ __align__(16) T name[]
#endif
/* llmq_launch(kernel, grid, block, dynamic shared bytes, stream, kernel arguments...) */
#define llmq_launch(k, ...) llmq_launch_named(#k, k, __VA_ARGS__)

/* ------------------------------------------------------------ state */

/* One pinned GEMM algorithm per weight shape (rows x cols). */
typedef struct gemm_plan {
    int rows, cols;            /* weight shape (output x input features) */
    int ok;                    /* 0: no split-K-free algorithm found; use cublasGemmEx */
    cublasLtMatmulAlgo_t algo; /* valid when ok */
} gemm_plan;

/* A recorded decode step (graph.cu). */
typedef struct cuda_graph {
    uint64_t key;              /* be_ops.graph_begin's key */
    int warm;                  /* 1: one eager step of this key has run */
    cudaGraphExec_t exec;      /* the recording; NULL until made */
} cuda_graph;

typedef struct cuda_impl {
    int device;                 /* CUDA device ordinal */
    int sm;                     /* major * 10 + minor */
    int n_sms;
    char name[256];
    cudaStream_t stream;        /* every op runs here */
    cublasHandle_t blas;        /* classic API: fallback and LLMQ_CUDA_GEMM=fast */
    cublasLtHandle_t lt;        /* pinned algorithms */
    int gemm_pinned;            /* 1 = batch-invariant mode (default) */
    int gemm_pin_n;             /* token count the pinned algorithms are chosen for */
    gemm_plan *plans;           /* [n_plans], grown at weight_prepare */
    int n_plans, cap_plans;
    long gemm_calls, gemm_fallbacks;
    void *blas_ws;              /* cuBLAS workspace (classic API) */
    size_t blas_ws_bytes;
    float *f32_stage;           /* device F32 staging for upload_f32/download_f32 (fixed size, a chunk at a time) */
    size_t f32_stage_n;         /* floats */
    void *w_stage;              /* device staging for weight conversion */
    size_t w_stage_bytes;
    float *attn_ws;             /* attention partials of split contexts */
    size_t attn_ws_bytes;
    cuda_graph *graphs;         /* recorded steps by key (graph.cu) */
    int n_graphs, cap_graphs;
    cuda_graph *recording;      /* the key being recorded, between graph_begin and graph_end */
    int graphs_off;             /* LLMQ_CUDA_GRAPHS=0, or a recording failed */
    long graphs_recorded, graph_replays;
} cuda_impl;

static inline cuda_impl *cuda_impl_of(llmq_backend *be) { return (cuda_impl *)be->impl; }

/* ------------------------------------------------------------ errors */

/* Record the first error on be (later ones are dropped: the first is the
 * cause).  Returns the code so callers can `return cuda_fail(...)`. */
llmq_status cuda_fail(llmq_backend *be, llmq_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* cudaMalloc that leaves no pending error behind (a failed cudaMalloc is
 * also the thread's "last error", which the next CUDA_CHECK_LAUNCH would
 * report against an unrelated kernel) and records out of memory on be with
 * `what` was asked and what is free.  Returns NULL on failure. */
void *cuda_dev_malloc(llmq_backend *be, size_t bytes, const char *what);

/* CUDA_TRY(be, stmt): run a CUDA runtime call; on failure record
 * "CUDA error <name> (<text>) in <stmt> at file:line" on be and `return
 * <onerr>` from the calling function (use CUDA_TRY_V in void functions). */
#define CUDA_TRY_RET(be, stmt, onerr)                                                                          \
    do {                                                                                                       \
        cudaError_t cuda_try_e_ = (stmt);                                                                      \
        if (cuda_try_e_ != cudaSuccess) {                                                                      \
            cuda_fail((be), LLMQ_ERR_BACKEND, "CUDA error %s (%s) in `%s` at %s:%d", cudaGetErrorName(cuda_try_e_), \
                      cudaGetErrorString(cuda_try_e_), #stmt, __FILE__, __LINE__);                             \
            return onerr;                                                                                      \
        }                                                                                                      \
    } while (0)
#define CUDA_TRY(be, stmt) CUDA_TRY_RET(be, stmt, LLMQ_ERR_BACKEND)
#define CUDA_TRY_V(be, stmt) CUDA_TRY_RET(be, stmt, )

#define CUBLAS_TRY_RET(be, stmt, onerr)                                                                        \
    do {                                                                                                       \
        cublasStatus_t cublas_try_s_ = (stmt);                                                                 \
        if (cublas_try_s_ != CUBLAS_STATUS_SUCCESS) {                                                          \
            cuda_fail((be), LLMQ_ERR_BACKEND, "cuBLAS error %s in `%s` at %s:%d",                              \
                      cublasGetStatusName(cublas_try_s_), #stmt, __FILE__, __LINE__);                          \
            return onerr;                                                                                      \
        }                                                                                                      \
    } while (0)
#define CUBLAS_TRY(be, stmt) CUBLAS_TRY_RET(be, stmt, LLMQ_ERR_BACKEND)
#define CUBLAS_TRY_V(be, stmt) CUBLAS_TRY_RET(be, stmt, )

/* After a kernel launch: a bad configuration shows up here, at once. */
#define CUDA_CHECK_LAUNCH(be) CUDA_TRY_V(be, cudaGetLastError())

/* ------------------------------------------------------------ elements */

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

/* Two consecutive elements (p must be aligned to 2 elements) as floats. */
__device__ __forceinline__ float2 load2_f32(const float *p) { return *(const float2 *)p; }
__device__ __forceinline__ float2 load2_f32(const __half *p) { return __half22float2(*(const __half2 *)p); }
__device__ __forceinline__ float2 load2_f32(const __nv_bfloat16 *p) {
    return __bfloat1622float2(*(const __nv_bfloat162 *)p);
}

/* ------------------------------------------------------------ reductions */

#define FULL_MASK 0xffffffffu

/* xor butterflies: every lane ends with the same bits (a + b == b + a
 * exactly), and the order depends on nothing but the lane layout. */
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

/* Sum over a block of blockDim.x threads (a multiple of 32, at most 1024);
 * every thread gets the result.  scratch: 32 floats of shared memory.
 * Fixed order: warp butterflies, then warp 0 adds the warp sums by butterfly. */
__device__ __forceinline__ float block_sum(float v, float *scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); /* scratch may still be read from a previous call */
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nw ? scratch[lane] : 0.0f;
    v = warp_sum(v);
    return v;
}

/* ------------------------------------------------------------ dispatch */

/* Run BODY with T bound to the C++ type of activation dtype DT. */
#define CUDA_DISPATCH_ACT(DT, T, ...)                                                                          \
    switch (DT) {                                                                                              \
    case LLMQ_F32: {                                                                                           \
        typedef float T;                                                                                       \
        __VA_ARGS__;                                                                                           \
        break;                                                                                                 \
    }                                                                                                          \
    case LLMQ_F16: {                                                                                           \
        typedef __half T;                                                                                      \
        __VA_ARGS__;                                                                                           \
        break;                                                                                                 \
    }                                                                                                          \
    case LLMQ_BF16: {                                                                                          \
        typedef __nv_bfloat16 T;                                                                               \
        __VA_ARGS__;                                                                                           \
        break;                                                                                                 \
    }                                                                                                          \
    default: break; /* quantized dtypes (Q8, Q4) are never activation types */                                \
    }

static inline unsigned cuda_blocks(size_t n, unsigned threads) {
    size_t b = (n + threads - 1) / threads;
    return (unsigned)(b > 65535u * 32u ? 65535u * 32u : (b ? b : 1));
}

/* ------------------------------------------------------------ ops (one per file) */

void cuda_embed(llmq_backend *be, void *out, const be_weight *table, const int32_t *ids, int n);
void cuda_rmsnorm(llmq_backend *be, void *out, const void *x, const float *w, int n, int dim, float eps);
void cuda_add_rmsnorm(llmq_backend *be, void *out, void *x, const void *delta, const float *w, int n, int dim,
                      float eps);
void cuda_matmul(llmq_backend *be, void *out, const void *x, const be_weight *w, const float *bias, int n);
void cuda_rope(llmq_backend *be, void *q, void *k, const int32_t *positions, int n, int n_heads, int n_kv_heads,
               int head_dim, const float *inv_freq);
void cuda_kv_store(llmq_backend *be, void *k_cache, void *v_cache, const void *k, const void *v,
                   const int32_t *slots, int n, int kv_dim);
void cuda_attention(llmq_backend *be, void *out, const void *q, const void *k_cache, const void *v_cache,
                    const be_attn_step *step, const be_attn_shape *shape);
void cuda_swiglu(llmq_backend *be, void *out, const void *gate, const void *up, int n, int dim);
void cuda_gather_rows(llmq_backend *be, void *dst, const void *src, const int32_t *rows, int n, int dim);
void cuda_add(llmq_backend *be, void *x, const void *y, size_t n);
void cuda_layernorm(llmq_backend *be, void *out, const void *x, const float *w, const float *b, int n, int dim,
                    float eps);
void cuda_gelu(llmq_backend *be, void *out, const void *x, size_t n);
void cuda_moe(llmq_backend *be, void *out, const void *x, const void *router_logits, const be_moe *moe, int n,
              const be_moe_scratch *ws);

/* qmatmul.cu: weight-only INT8/INT4 (kernels/quant.h formats) on the device. */
llmq_status cuda_qweight_prepare(llmq_backend *be, be_weight *out, const be_weight *in);
void cuda_qweight_release(llmq_backend *be, be_weight *w);
void cuda_qmatmul(llmq_backend *be, void *out, const void *x, const be_weight *w, const float *bias, int n);

/* matmul.cu: choose and remember the pinned algorithm of a weight shape
 * (called by weight_prepare, so that no heuristic runs on the hot path). */
llmq_status cuda_gemm_plan_prepare(llmq_backend *be, int rows, int cols);
void cuda_gemm_plans_free(cuda_impl *impl);

/* graph.cu: be_ops.graph_begin / graph_end */
int cuda_graph_begin(llmq_backend *be, uint64_t key);
int cuda_graph_end(llmq_backend *be);
void cuda_graphs_free(cuda_impl *impl);

/* convert.cu: n elements of dtype `from` at src to dtype `to` at dst (device). */
void cuda_convert(llmq_backend *be, void *dst, llmq_dtype to, const void *src, llmq_dtype from, size_t n);

#endif
