/*
 * rope.cu — rotary position embedding, Hugging Face "rotate_half" layout,
 * in place on q [n, n_heads*hd] and k [n, n_kv_heads*hd]: element i of a
 * head pairs with element i + hd/2.
 *
 * As on the CPU, the angle is formed in FP32 (pos * inv_freq[i], which
 * already carries any rope scaling) and its cos/sin are taken in double
 * and rounded, once per (token, i) into shared memory; then every head of
 * q and k is rotated in FP32.  One block per token.
 */
#include "kernels/cuda/common.cuh"

#define ROPE_MAX_HALF 256

template <typename T>
__global__ void rope_kernel(T *q, T *k, const int32_t *positions, int n_heads, int n_kv_heads, int hd,
                            const float *inv_freq) {
    LLMQ_SHARED(float, cs, [ROPE_MAX_HALF]);
    LLMQ_SHARED(float, sn, [ROPE_MAX_HALF]);
    const int t = blockIdx.x, half = hd / 2;
    const float pos = (float)positions[t];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const float ang = pos * inv_freq[i];
        double s, c;
        sincos((double)ang, &s, &c);
        cs[i] = (float)c;
        sn[i] = (float)s;
    }
    __syncthreads();
    const int nq = n_heads * half, total = (n_heads + n_kv_heads) * half;
    for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
        T *v;
        int j = idx;
        if (j < nq) {
            v = q + ((size_t)t * n_heads + j / half) * hd;
        } else {
            j -= nq;
            v = k + ((size_t)t * n_kv_heads + j / half) * hd;
        }
        const int i = j % half;
        const float a = to_f32(v[i]), b = to_f32(v[i + half]), c = cs[i], s = sn[i];
        v[i] = from_f32<T>(a * c - b * s);
        v[i + half] = from_f32<T>(b * c + a * s);
    }
}

void cuda_rope(llmq_backend *be, void *q, void *k, const int32_t *positions, int n, int n_heads, int n_kv_heads,
               int head_dim, const float *inv_freq) {
    if (n <= 0) return;
    if (head_dim % 2 || head_dim / 2 > ROPE_MAX_HALF) {
        cuda_fail(be, LLMQ_ERR_UNSUPPORTED, "cuda rope: head_dim %d (must be even and at most %d)", head_dim,
                  2 * ROPE_MAX_HALF);
        return;
    }
    cudaStream_t s = cuda_impl_of(be)->stream;
    CUDA_DISPATCH_ACT(be->act_dt, T,
                      llmq_launch(rope_kernel<T>, n, 128, 0, s,
                                  (T *)q, (T *)k, positions, n_heads, n_kv_heads, head_dim, inv_freq));
    CUDA_CHECK_LAUNCH(be);
}
