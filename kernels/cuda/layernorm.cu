/*
 * layernorm.cu — Falcon's LayerNorm, y = (x - mean) / sqrt(var + eps) * w + b
 * per row (biased variance, as torch), in FP32.
 *
 * One block of LN_THREADS threads per row whatever the batch; mean, then
 * the variance around it (two passes over the row, each a strided
 * per-thread sum and the fixed butterfly of block_sum), so rows are batch
 * invariant and the two-pass variance does not cancel.  out may alias x:
 * every element is written after both reductions, by the thread that read
 * it.
 */
#include "kernels/cuda/common.cuh"

#define LN_THREADS 256

template <typename T>
__global__ void layernorm_kernel(T *out, const T *x, const float *w, const float *b, int dim, float eps) {
    LLMQ_SHARED(float, scratch, [32]);
    const size_t base = (size_t)blockIdx.x * dim;
    const T *xr = x + base;
    float s = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) s += to_f32(xr[i]);
    const float mean = block_sum(s, scratch) / (float)dim;
    float v = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float c = to_f32(xr[i]) - mean;
        v = fmaf(c, c, v);
    }
    const float inv = rsqrtf(block_sum(v, scratch) / (float)dim + eps);
    T *o = out + base;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        o[i] = from_f32<T>((to_f32(xr[i]) - mean) * inv * w[i] + b[i]);
}

void cuda_layernorm(llmq_backend *be, void *out, const void *x, const float *w, const float *b, int n, int dim,
                    float eps) {
    if (n <= 0) return;
    cudaStream_t s = cuda_impl_of(be)->stream;
    CUDA_DISPATCH_ACT(be->act_dt, T,
                      llmq_launch(layernorm_kernel<T>, n, LN_THREADS, 0, s, (T *)out, (const T *)x, w, b, dim, eps));
    CUDA_CHECK_LAUNCH(be);
}
