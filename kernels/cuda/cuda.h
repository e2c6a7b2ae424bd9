/*
 * cuda.h — the CUDA backend's public entry points (C linkage).
 *
 * The backend itself is reached through kernels/backend.h:
 * llmq_backend_create("cuda") calls cuda_backend_create() when the binary
 * was built by `make cuda` (-DLLMQ_WITH_CUDA).  The functions below are the
 * few things a caller may want beyond the op table: the stream the ops run
 * on (for the NCCL communicator), the device's name and memory, and the
 * counters the GPU tests check.
 *
 * Activation dtype: F16 on sm_75, BF16 on sm_80 and newer; the environment
 * variable LLMQ_CUDA_DTYPE=f32|f16|bf16 overrides it (f32 is for exact
 * comparisons with the CPU backend; bf16 is refused below sm_80).
 *
 * GEMMs: LLMQ_CUDA_GEMM=pinned (default) runs every matmul of a weight
 * shape with one cuBLASLt algorithm chosen at weight_prepare (no split-K),
 * so a row's result never depends on how many rows share the call
 * (backend.h, batch invariance); LLMQ_CUDA_GEMM=fast lets cuBLAS choose per
 * call (faster at some batch sizes, not batch invariant).
 *
 * Step graphs: a decode step is recorded once per batch size and replayed
 * as one graph launch (graph.cu); LLMQ_CUDA_GRAPHS=0 runs every step's
 * kernels one by one instead.
 *
 * LLMQ_CUDA_ATTN_WS_KB sets the attention workspace (default 64 MiB); the
 * tests make it small to run the sliced path on small shapes.
 */
#ifndef LLMQ_KERNELS_CUDA_H
#define LLMQ_KERNELS_CUDA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "kernels/backend.h"

/* Create the backend on the current CUDA device (CUDA_VISIBLE_DEVICES and
 * LLMQ_CUDA_DEVICE pick it).  Returns NULL and fills err when there is no
 * usable device ("no CUDA device: ..."), or when cuBLAS cannot start.
 * Ownership: the caller destroys it with llmq_backend_destroy(). */
llmq_backend *cuda_backend_create(llmq_err *err);

/* The cudaStream_t every op of be is enqueued on. */
void *cuda_backend_stream(llmq_backend *be);

typedef struct cuda_backend_info {
    char name[256];          /* device name, e.g. "NVIDIA H100 80GB HBM3" */
    int sm;                  /* compute capability, major * 10 + minor */
    int n_sms;               /* multiprocessors */
    size_t mem_total;        /* bytes of device memory */
    size_t mem_free;         /* bytes free now (cudaMemGetInfo) */
    double peak_bw_gbs;      /* theoretical DRAM bandwidth, 1e9 B/s (0 if unknown) */
    size_t smem_optin;       /* shared memory a block may use once opted in (bytes) */
    size_t attn_ws_bytes;    /* attention workspace: steps whose partials need more run in slices */
    int gemm_pinned;         /* 1: batch-invariant pinned GEMM algorithms */
    long gemm_calls;         /* matmuls run */
    long gemm_fallbacks;     /* matmuls whose pinned algorithm was refused and ran
                                through cublasGemmEx instead (0 keeps the
                                batch-invariance promise) */
    int graphs_on;           /* step graphs in use (LLMQ_CUDA_GRAPHS=0 or a failed
                                recording turns them off) */
    long graphs_recorded;    /* decode steps recorded as graphs */
    long graph_replays;      /* decode steps run as a replay (their matmuls are
                                not in gemm_calls) */
} cuda_backend_info;

void cuda_backend_get_info(llmq_backend *be, cuda_backend_info *out);

/* Measure device read bandwidth (GB/s, 1e9) by summing a buffer of `bytes`
 * bytes a few times; returns 0 on failure.  For benchmarks only. */
double cuda_backend_measure_bw(llmq_backend *be, size_t bytes);

#ifdef __cplusplus
}
#endif

#endif
