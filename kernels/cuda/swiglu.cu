/*
 * swiglu.cu — out = silu(gate) * up elementwise, silu(g) = g / (1 + e^-g),
 * in FP32; out may alias gate (each element is read then written by one
 * thread).
 */
#include "kernels/cuda/common.cuh"

template <typename T> __global__ void swiglu_kernel(T *out, const T *gate, const T *up, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float g = to_f32(gate[i]);
        out[i] = from_f32<T>(g / (1.0f + expf(-g)) * to_f32(up[i]));
    }
}

void cuda_swiglu(llmq_backend *be, void *out, const void *gate, const void *up, int n, int dim) {
    const size_t total = (size_t)n * dim;
    if (!total) return;
    cudaStream_t s = cuda_impl_of(be)->stream;
    CUDA_DISPATCH_ACT(be->act_dt, T,
                      llmq_launch(swiglu_kernel<T>, cuda_blocks(total, 256), 256, 0, s,
                                  (T *)out, (const T *)gate, (const T *)up, total));
    CUDA_CHECK_LAUNCH(be);
}
