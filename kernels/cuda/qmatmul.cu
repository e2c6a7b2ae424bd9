/*
 * qmatmul.cu — matmul with weight-only INT8 / INT4 matrices (the formats of
 * kernels/quant.h), activations in the backend's dtype, FP32 arithmetic.
 *
 * Weights.  cuda_qweight_prepare copies the host arrays (q, scales, zeros)
 * into one device block; the be_weight keeps dt Q8/Q4 and points to a host
 * descriptor (a be_qweight whose pointers are device pointers, the first
 * member of cuda_qw so that release frees both).
 *
 * Kernel.  One warp per output row, a block of QM_WARPS rows and QM_TOK
 * tokens.  A lane takes the 16-element blocks lane, lane + 32, ... of the
 * row (Q4: one 8-byte load; Q8: one 16-byte load when the row length
 * allows it), dequantizes each element exactly as quant.h defines it,
 * float(q - z) * scale, and accumulates w * x for each token of the tile;
 * the 32 lane sums are added by a fixed butterfly.  Each token's sum is
 * computed by the same instruction sequence whatever n and whatever tile
 * it falls in, so results are bitwise batch invariant (backend.h) — decode
 * and prefill go through this one kernel, as they do through one pinned
 * GEMM for plain weights.  Decode (n = 1) reads each weight byte once:
 * the kernel is bound by memory, which is what weight-only quantization
 * buys.  Prefill re-reads the weights once per QM_TOK tokens (no tensor
 * cores): correct, slower than a dequantize + GEMM would be.
 */
#include <stdlib.h>

#include "kernels/cuda/common.cuh"

#define QM_WARPS 4
#define QM_TOK 8

typedef struct cuda_qw {
    be_qweight d;  /* first: be_weight.data points here */
    void *block;   /* the one device allocation behind d's pointers */
} cuda_qw;

static size_t align256(size_t x) { return (x + 255) / 256 * 256; }

llmq_status cuda_qweight_prepare(llmq_backend *be, be_weight *out, const be_weight *in) {
    cuda_impl *impl = cuda_impl_of(be);
    const be_qweight *hq = (const be_qweight *)in->data;
    if (!hq || in->rows <= 0 || in->cols <= 0 || (in->dt == LLMQ_Q4 && (hq->group <= 0 || hq->group % 8)))
        return cuda_fail(be, LLMQ_ERR_INVALID, "weight_prepare: bad %s matrix [%d, %d]", llmq_dtype_name(in->dt),
                         in->rows, in->cols);
    const size_t rows = (size_t)in->rows, cols = (size_t)in->cols;
    const size_t row_bytes = in->dt == LLMQ_Q4 ? (cols + 15) / 16 * 8 : cols;
    const size_t G = in->dt == LLMQ_Q4 ? (cols + (size_t)hq->group - 1) / (size_t)hq->group : 1;
    const size_t q_bytes = rows * row_bytes, s_bytes = rows * G * sizeof(float), z_bytes = in->dt == LLMQ_Q4 ? rows * G : 0;
    const size_t total = align256(q_bytes) + align256(s_bytes) + align256(z_bytes ? z_bytes : 1);
    cuda_qw *w = (cuda_qw *)calloc(1, sizeof *w);
    if (!w) return cuda_fail(be, LLMQ_ERR_NOMEM, "weight_prepare: out of host memory");
    char what[96];
    snprintf(what, sizeof what, "a [%zu, %zu] %s weight", rows, cols, llmq_dtype_name(in->dt));
    if (!(w->block = cuda_dev_malloc(be, total, what))) {
        free(w);
        return be->err.code;
    }
    cudaError_t e;
    unsigned char *b = (unsigned char *)w->block;
    w->d.q = b;
    w->d.scales = (const float *)(b + align256(q_bytes));
    w->d.zeros = z_bytes ? b + align256(q_bytes) + align256(s_bytes) : NULL;
    w->d.group = in->dt == LLMQ_Q4 ? hq->group : 0;
    /* On the backend's stream (not the legacy one, which does not order with
     * a non-blocking stream): from pageable memory each call returns once its
     * source is staged, so the loader may free the host arrays right after. */
    cudaStream_t st = impl->stream;
    e = cudaMemcpyAsync((void *)w->d.q, hq->q, q_bytes, cudaMemcpyHostToDevice, st);
    if (e == cudaSuccess)
        e = cudaMemcpyAsync((void *)w->d.scales, hq->scales, s_bytes, cudaMemcpyHostToDevice, st);
    if (e == cudaSuccess && z_bytes)
        e = cudaMemcpyAsync((void *)w->d.zeros, hq->zeros, z_bytes, cudaMemcpyHostToDevice, st);
    if (e != cudaSuccess) {
        cudaFree(w->block);
        free(w);
        return cuda_fail(be, LLMQ_ERR_BACKEND, "quantized weight upload: %s", cudaGetErrorString(e));
    }
    *out = *in;
    out->ld = in->cols;
    out->data = &w->d;
    return LLMQ_OK;
}

void cuda_qweight_release(llmq_backend *be, be_weight *w) {
    cuda_qw *q = (cuda_qw *)w->data;
    if (!q) return;
    if (q->block) CUDA_TRY_V(be, cudaFree(q->block));
    free(q);
    w->data = NULL;
}

/* Add x[t, base + j] * v[j] for the 16 elements of one block, tokens of the tile. */
template <typename T>
__device__ __forceinline__ void qm_accumulate(float (&acc)[QM_TOK], const float (&v)[16], const T *x, size_t cols,
                                              int base, int nt, int full) {
#pragma unroll
    for (int t = 0; t < QM_TOK; t++) {
        if (t >= nt) break;
        const T *xt = x + (size_t)t * cols + base;
        float a = acc[t];
        if (full) {
#pragma unroll
            for (int j = 0; j < 16; j++) a = fmaf(v[j], to_f32(xt[j]), a);
        } else {
            for (int j = 0; j < 16 && base + j < (int)cols; j++) a = fmaf(v[j], to_f32(xt[j]), a);
        }
        acc[t] = a;
    }
}

/* The 16 dequantized weights of block blk (elements 16 blk ..) of a row. */
struct q8_deq {
    const int8_t *q;
    const float *scales;
    int cols;
    __device__ __forceinline__ void operator()(int row, int blk, float (&v)[16]) const {
        const int8_t *qr = q + (size_t)row * cols;
        const float s = scales[row];
        const int base = blk * 16;
        if ((cols & 15) == 0) { /* one 16-byte load */
            const int4 raw = *(const int4 *)(qr + base);
            const int words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
            for (int j = 0; j < 16; j++) v[j] = (float)(int8_t)(words[j >> 2] >> (8 * (j & 3))) * s;
        } else {
#pragma unroll
            for (int j = 0; j < 16; j++) v[j] = base + j < cols ? (float)qr[base + j] * s : 0.0f;
        }
    }
};

struct q4_deq {
    const uint8_t *q;
    const float *scales;
    const uint8_t *zeros;
    int cols, group;
    __device__ __forceinline__ void operator()(int row, int blk, float (&v)[16]) const {
        const int nblk = (cols + 15) / 16, G = (cols + group - 1) / group, base = blk * 16;
        const uint2 raw = *(const uint2 *)(q + ((size_t)row * nblk + blk) * 8);
        const float *sr = scales + (size_t)row * G;
        const uint8_t *zr = zeros + (size_t)row * G;
        /* group is a multiple of 8: elements 0-7 share one group, 8-15 one */
        const int g0 = base / group, g1 = (base + 8) / group < G ? (base + 8) / group : G - 1;
        const float s0 = sr[g0], s1 = sr[g1];
        const float z0 = (float)zr[g0], z1 = (float)zr[g1];
#pragma unroll
        for (int o = 0; o < 8; o++) {
            const unsigned byte = ((o < 4 ? raw.x : raw.y) >> (8 * (o & 3))) & 0xffu;
            v[o] = ((float)(byte & 15u) - z0) * s0;
            v[o + 8] = ((float)(byte >> 4) - z1) * s1;
        }
    }
};

/* One warp per output row, QM_TOK tokens per block column; D dequantizes. */
template <typename T, typename D>
__global__ void qm_kernel(T *out, const T *x, D deq, const float *bias, int rows, int cols, int n) {
    const int row = blockIdx.x * QM_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    const int t0 = blockIdx.y * QM_TOK;
    if (row >= rows) return; /* the whole warp: no block-wide barrier below */
    const int nt = n - t0 < QM_TOK ? n - t0 : QM_TOK;
    const T *xt = x + (size_t)t0 * cols;
    float acc[QM_TOK];
#pragma unroll
    for (int t = 0; t < QM_TOK; t++) acc[t] = 0.0f;
    const int nblk = (cols + 15) / 16;
    for (int blk = lane; blk < nblk; blk += 32) {
        float v[16];
        deq(row, blk, v);
        qm_accumulate<T>(acc, v, xt, (size_t)cols, blk * 16, nt, blk * 16 + 16 <= cols);
    }
#pragma unroll
    for (int t = 0; t < QM_TOK; t++) {
        if (t >= nt) break;
        const float sum = warp_sum(acc[t]);
        if (lane == 0) out[(size_t)(t0 + t) * rows + row] = from_f32<T>(bias ? sum + bias[row] : sum);
    }
}

void cuda_qmatmul(llmq_backend *be, void *out, const void *x, const be_weight *w, const float *bias, int n) {
    if (n <= 0) return;
    const be_qweight *qw = (const be_qweight *)w->data;
    cudaStream_t s = cuda_impl_of(be)->stream;
    const dim3 grid((unsigned)((w->rows + QM_WARPS - 1) / QM_WARPS), (unsigned)((n + QM_TOK - 1) / QM_TOK));
    if (grid.y > 65535u) {
        cuda_fail(be, LLMQ_ERR_INVALID, "cuda qmatmul: %d tokens in one call (at most %d)", n, 65535 * QM_TOK);
        return;
    }
    if (w->dt == LLMQ_Q8) {
        const q8_deq d = {(const int8_t *)qw->q, qw->scales, w->cols};
        CUDA_DISPATCH_ACT(be->act_dt, T,
                          llmq_launch((qm_kernel<T, q8_deq>), grid, 32 * QM_WARPS, 0, s,
                                      (T *)out, (const T *)x, d, bias, w->rows, w->cols, n));
    } else {
        const q4_deq d = {(const uint8_t *)qw->q, qw->scales, qw->zeros, w->cols, qw->group};
        CUDA_DISPATCH_ACT(be->act_dt, T,
                          llmq_launch((qm_kernel<T, q4_deq>), grid, 32 * QM_WARPS, 0, s,
                                      (T *)out, (const T *)x, d, bias, w->rows, w->cols, n));
    }
    CUDA_CHECK_LAUNCH(be);
}
