/*
 * kv_store.cu — store the step's K/V rows into the paged cache:
 * k_cache[slots[i], :] = k[i, :], likewise v; rows of kv_dim elements of
 * the activation dtype.  One block per token, 4-byte words (kv_dim is a
 * multiple of head_dim, which is even, so 16-bit rows are whole words).
 */
#include "kernels/cuda/common.cuh"

__global__ void kv_store_kernel(uint32_t *kc, uint32_t *vc, const uint32_t *k, const uint32_t *v,
                                const int32_t *slots, int words) {
    const int i = blockIdx.x;
    const size_t dst = (size_t)slots[i] * words, src = (size_t)i * words;
    for (int w = threadIdx.x; w < words; w += blockDim.x) {
        kc[dst + w] = k[src + w];
        vc[dst + w] = v[src + w];
    }
}

void cuda_kv_store(llmq_backend *be, void *k_cache, void *v_cache, const void *k, const void *v,
                   const int32_t *slots, int n, int kv_dim) {
    if (n <= 0) return;
    const size_t bytes = (size_t)kv_dim * llmq_dtype_size(be->act_dt);
    if (bytes % 4) {
        cuda_fail(be, LLMQ_ERR_UNSUPPORTED, "cuda kv_store: rows of %d elements are not whole 4-byte words", kv_dim);
        return;
    }
    llmq_launch(kv_store_kernel, n, 128, 0, cuda_impl_of(be)->stream, (uint32_t *)k_cache, (uint32_t *)v_cache,
                (const uint32_t *)k, (const uint32_t *)v, slots, (int)(bytes / 4));
    CUDA_CHECK_LAUNCH(be);
}
