/*
 * gelu.cu — Falcon's MLP activation, the exact GELU x / 2 * (1 + erf(x /
 * sqrt 2)) elementwise in FP32 (not the tanh approximation); out may alias
 * x (each element is read then written by one thread).
 */
#include "kernels/cuda/common.cuh"

template <typename T> __global__ void gelu_kernel(T *out, const T *x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float v = to_f32(x[i]);
        out[i] = from_f32<T>(0.5f * v * (1.0f + erff(v * 0.70710678118654752f)));
    }
}

void cuda_gelu(llmq_backend *be, void *out, const void *x, size_t n) {
    if (!n) return;
    cudaStream_t s = cuda_impl_of(be)->stream;
    CUDA_DISPATCH_ACT(be->act_dt, T, llmq_launch(gelu_kernel<T>, cuda_blocks(n, 256), 256, 0, s,
                                                 (T *)out, (const T *)x, n));
    CUDA_CHECK_LAUNCH(be);
}
