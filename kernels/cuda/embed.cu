/*
 * embed.cu — out[i, :] = table[ids[i], :], converted to the activation
 * dtype; an id outside [0, table->rows) (a vocabulary shard of another
 * rank) gives a row of zeros.  One block per token.
 */
#include "kernels/cuda/common.cuh"

template <typename T, typename W>
__global__ void embed_kernel(T *out, const W *table, size_t ld, int rows, int cols, const int32_t *ids) {
    const int i = blockIdx.x;
    const int id = ids[i];
    T *o = out + (size_t)i * cols;
    if (id < 0 || id >= rows) {
        for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = from_f32<T>(0.0f);
        return;
    }
    const W *r = table + (size_t)id * ld;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = from_f32<T>(to_f32(r[c]));
}

template <typename T> static void embed_t(llmq_backend *be, T *out, const be_weight *w, const int32_t *ids, int n) {
    cudaStream_t s = cuda_impl_of(be)->stream;
    const size_t ld = be_weight_ld(w);
    switch (w->dt) {
    case LLMQ_F32: llmq_launch((embed_kernel<T, float>), n, 256, 0, s,
                               out, (const float *)w->data, ld, w->rows, w->cols, ids); break;
    case LLMQ_F16: llmq_launch((embed_kernel<T, __half>), n, 256, 0, s,
                               out, (const __half *)w->data, ld, w->rows, w->cols, ids); break;
    case LLMQ_BF16:
        llmq_launch((embed_kernel<T, __nv_bfloat16>), n, 256, 0, s,
                    out, (const __nv_bfloat16 *)w->data, ld, w->rows, w->cols, ids);
        break;
    default: break; /* embeddings are never quantized */
    }
}

void cuda_embed(llmq_backend *be, void *out, const be_weight *table, const int32_t *ids, int n) {
    if (n <= 0) return;
    CUDA_DISPATCH_ACT(be->act_dt, T, embed_t<T>(be, (T *)out, table, ids, n));
    CUDA_CHECK_LAUNCH(be);
}
