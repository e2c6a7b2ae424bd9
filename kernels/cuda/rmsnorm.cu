/*
 * rmsnorm.cu — y = x / sqrt(mean(x^2) + eps) * w per row, and the fused
 * residual form x += delta; y = rmsnorm(x) * w.
 *
 * One block of RMS_THREADS threads per row whatever the batch, so the sum
 * of squares (FP32, per-thread strided partial sums, then the fixed
 * butterfly of block_sum) has one order: rows are batch invariant.  The
 * fused form stores x rounded to the activation dtype and normalises the
 * stored values, as the engine will read them back.  out may alias x in the
 * plain form: each element is read and written by the same thread, after
 * the reduction.
 */
#include "kernels/cuda/common.cuh"

#define RMS_THREADS 256

template <typename T>
__global__ void rmsnorm_kernel(T *out, T *x, const T *delta, const float *w, int dim, float eps) {
    LLMQ_SHARED(float, scratch, [32]);
    const size_t base = (size_t)blockIdx.x * dim;
    T *xr = x + base;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = to_f32(xr[i]);
        if (delta) {
            T r = from_f32<T>(v + to_f32(delta[base + i]));
            xr[i] = r;
            v = to_f32(r);
        }
        ss = fmaf(v, v, ss);
    }
    ss = block_sum(ss, scratch);
    const float inv = rsqrtf(ss / (float)dim + eps);
    T *o = out + base;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) o[i] = from_f32<T>(w[i] * (to_f32(xr[i]) * inv));
}

void cuda_rmsnorm(llmq_backend *be, void *out, const void *x, const float *w, int n, int dim, float eps) {
    if (n <= 0) return;
    cudaStream_t s = cuda_impl_of(be)->stream;
    CUDA_DISPATCH_ACT(be->act_dt, T,
                      llmq_launch(rmsnorm_kernel<T>, n, RMS_THREADS, 0, s,
                                  (T *)out, (T *)x, (const T *)NULL, w, dim, eps));
    CUDA_CHECK_LAUNCH(be);
}

void cuda_add_rmsnorm(llmq_backend *be, void *out, void *x, const void *delta, const float *w, int n, int dim,
                      float eps) {
    if (n <= 0) return;
    cudaStream_t s = cuda_impl_of(be)->stream;
    CUDA_DISPATCH_ACT(be->act_dt, T,
                      llmq_launch(rmsnorm_kernel<T>, n, RMS_THREADS, 0, s,
                                  (T *)out, (T *)x, (const T *)delta, w, dim, eps));
    CUDA_CHECK_LAUNCH(be);
}
