/*
 * convert.cu — elementwise dtype conversion on the device (F32 <-> F16 <->
 * BF16), used by weight_prepare (weights to the activation dtype) and by
 * upload_f32 / download_f32.  Round to nearest even; exact when widening.
 */
#include "kernels/cuda/common.cuh"

template <typename O, typename I> __global__ void convert_kernel(O *dst, const I *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = from_f32<O>(to_f32(src[i]));
}

template <typename O> static void convert_from(llmq_backend *be, O *dst, const void *src, llmq_dtype from, size_t n) {
    cudaStream_t s = cuda_impl_of(be)->stream;
    const unsigned grid = cuda_blocks(n, 256);
    switch (from) {
    case LLMQ_F32: llmq_launch((convert_kernel<O, float>), grid, 256, 0, s, dst, (const float *)src, n); break;
    case LLMQ_F16: llmq_launch((convert_kernel<O, __half>), grid, 256, 0, s, dst, (const __half *)src, n); break;
    case LLMQ_BF16: llmq_launch((convert_kernel<O, __nv_bfloat16>), grid, 256, 0, s,
                                dst, (const __nv_bfloat16 *)src, n); break;
    default: break; /* Q8 / Q4: no quantized weights on this backend (worker/model/model.c refuses them) */
    }
}

void cuda_convert(llmq_backend *be, void *dst, llmq_dtype to, const void *src, llmq_dtype from, size_t n) {
    if (!n) return;
    CUDA_DISPATCH_ACT(to, T, convert_from<T>(be, (T *)dst, src, from, n));
    CUDA_CHECK_LAUNCH(be);
}
