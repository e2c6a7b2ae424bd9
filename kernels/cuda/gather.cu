/*
 * gather.cu — the two data-movement ops: gather_rows (the rows that need
 * logits) and add (x += y, FP32 then rounded).
 */
#include "kernels/cuda/common.cuh"

template <typename T> __global__ void gather_kernel(T *dst, const T *src, const int32_t *rows, int dim) {
    const int i = blockIdx.x;
    const T *s = src + (size_t)rows[i] * dim;
    T *d = dst + (size_t)i * dim;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) d[c] = s[c];
}

template <typename T> __global__ void add_kernel(T *x, const T *y, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = from_f32<T>(to_f32(x[i]) + to_f32(y[i]));
}

void cuda_gather_rows(llmq_backend *be, void *dst, const void *src, const int32_t *rows, int n, int dim) {
    if (n <= 0) return;
    cudaStream_t s = cuda_impl_of(be)->stream;
    CUDA_DISPATCH_ACT(be->act_dt, T, llmq_launch(gather_kernel<T>, n, 256, 0, s, (T *)dst, (const T *)src, rows, dim));
    CUDA_CHECK_LAUNCH(be);
}

void cuda_add(llmq_backend *be, void *x, const void *y, size_t n) {
    if (!n) return;
    cudaStream_t s = cuda_impl_of(be)->stream;
    CUDA_DISPATCH_ACT(be->act_dt, T, llmq_launch(add_kernel<T>, cuda_blocks(n, 256), 256, 0, s,
                                                 (T *)x, (const T *)y, n));
    CUDA_CHECK_LAUNCH(be);
}
