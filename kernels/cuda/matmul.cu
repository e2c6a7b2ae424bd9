/*
 * matmul.cu — out[n, m] = x[n, k] . W[m, k]^T (+ bias) through cuBLAS, FP32
 * accumulation (CUBLAS_COMPUTE_32F: no TF32, no reduced-precision
 * reductions), operands and result in the activation dtype.
 *
 * Row-major out = x W^T is, in cuBLAS's column-major terms,
 * out^T[m, n] = W^T(as stored: k x m, transposed) . x^T(k x n): "TN" with
 * lda = ldb = k, ldc = m.
 *
 * Batch invariance (backend.h).  cuBLAS picks a kernel per shape: for a
 * few rows it prefers split-K, for many rows bigger tiles, and each choice
 * adds a row's products in another order.  So by default (pinned mode)
 * every weight shape gets one cuBLASLt algorithm at weight_prepare, chosen
 * by the heuristic for gemm_pin_n rows among those that do not split K
 * (reduction scheme none, no workspace), and every call of that shape uses
 * it whatever n is.  A kernel that does not split K adds each output's
 * products over k in the same order whatever tile of rows it falls in,
 * which is what makes a row independent of its batch — tests/gpu checks it
 * bitwise.  If the library refuses the pinned algorithm for some n, the
 * call runs through cublasGemmEx and impl->gemm_fallbacks counts it.
 * LLMQ_CUDA_GEMM=fast skips all this and lets cuBLAS choose per call.
 *
 * The bias is added by a separate elementwise kernel (FP32, then rounded).
 */
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/common.cuh"

static cudaDataType_t cuda_dt(llmq_dtype dt) {
    return dt == LLMQ_F32 ? CUDA_R_32F : dt == LLMQ_F16 ? CUDA_R_16F : CUDA_R_16BF;
}

static gemm_plan *plan_find(cuda_impl *impl, int rows, int cols) {
    for (int i = 0; i < impl->n_plans; i++)
        if (impl->plans[i].rows == rows && impl->plans[i].cols == cols) return &impl->plans[i];
    return NULL;
}

/* Describe out^T[m, n] = op(A) B for the opaque descriptors on the caller's
 * stack (no heap allocation per call). */
static cublasStatus_t lt_describe(cublasLtMatmulDescOpaque_t *op, cublasLtMatrixLayoutOpaque_t *a,
                                  cublasLtMatrixLayoutOpaque_t *b, cublasLtMatrixLayoutOpaque_t *c,
                                  cudaDataType_t dt, int m, int n, int k) {
    cublasStatus_t s = cublasLtMatmulDescInit(op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatrixLayoutInit(a, dt, (uint64_t)k, (uint64_t)m, k);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatrixLayoutInit(b, dt, (uint64_t)k, (uint64_t)n, k);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatrixLayoutInit(c, dt, (uint64_t)m, (uint64_t)n, m);
    return s;
}

llmq_status cuda_gemm_plan_prepare(llmq_backend *be, int rows, int cols) {
    cuda_impl *impl = cuda_impl_of(be);
    if (!impl->gemm_pinned || plan_find(impl, rows, cols)) return LLMQ_OK;
    if (impl->n_plans == impl->cap_plans) {
        int cap = impl->cap_plans ? impl->cap_plans * 2 : 16;
        gemm_plan *p = (gemm_plan *)realloc(impl->plans, (size_t)cap * sizeof *p);
        if (!p) return cuda_fail(be, LLMQ_ERR_NOMEM, "cuda matmul: out of memory for GEMM plans");
        impl->plans = p;
        impl->cap_plans = cap;
    }
    gemm_plan *pl = &impl->plans[impl->n_plans++];
    memset(pl, 0, sizeof *pl);
    pl->rows = rows;
    pl->cols = cols;

    cublasLtMatmulDescOpaque_t op;
    cublasLtMatrixLayoutOpaque_t a, b, c;
    cublasLtMatmulPreferenceOpaque_t pref;
    const uint64_t ws = 0;
    const uint32_t red = CUBLASLT_REDUCTION_SCHEME_NONE;
    cublasStatus_t s = lt_describe(&op, &a, &b, &c, cuda_dt(be->act_dt), rows, impl->gemm_pin_n, cols);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatmulPreferenceInit(&pref);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(&pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(&pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &red, sizeof red);
    /* only algorithms that accept any 16-byte aligned buffer: the pinned one
     * must run for every call, whatever offset its buffers start at */
    const uint32_t align = 16;
    const cublasLtMatmulPreferenceAttributes_t aligns[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4 && s == CUBLAS_STATUS_SUCCESS; i++)
        s = cublasLtMatmulPreferenceSetAttribute(&pref, aligns[i], &align, sizeof align);
    cublasLtMatmulHeuristicResult_t res[16];
    int found = 0;
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulAlgoGetHeuristic(impl->lt, &op, &a, &b, &c, &c, &pref, 16, res, &found);
    if (s != CUBLAS_STATUS_SUCCESS) found = 0;
    for (int i = 0; i < found; i++) {
        if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
        int32_t splitk = 1;
        uint32_t scheme = CUBLASLT_REDUCTION_SCHEME_NONE;
        size_t got = 0;
        if (cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk,
                                                 sizeof splitk, &got) != CUBLAS_STATUS_SUCCESS)
            continue;
        if (cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme,
                                                 sizeof scheme, &got) != CUBLAS_STATUS_SUCCESS)
            continue;
        if (splitk > 1 || scheme != CUBLASLT_REDUCTION_SCHEME_NONE) continue;
        pl->algo = res[i].algo;
        pl->ok = 1;
        break;
    }
    /* No plan is not an error: such a shape runs through cublasGemmEx and
     * every call counts as a fallback, which the GPU tests report. */
    return LLMQ_OK;
}

void cuda_gemm_plans_free(cuda_impl *impl) {
    free(impl->plans);
    impl->plans = NULL;
    impl->n_plans = impl->cap_plans = 0;
}

template <typename T> __global__ void bias_kernel(T *out, const float *bias, int m, size_t total) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
        out[i] = from_f32<T>(to_f32(out[i]) + bias[i % m]);
}

void cuda_matmul(llmq_backend *be, void *out, const void *x, const be_weight *w, const float *bias, int n) {
    cuda_impl *impl = cuda_impl_of(be);
    if (n <= 0) return;
    const int m = w->rows, k = w->cols;
    if (llmq_dtype_is_quant(w->dt)) {
        cuda_qmatmul(be, out, x, w, bias, n);
        return;
    }
    if (w->dt != be->act_dt || be_weight_ld(w) != (size_t)k) {
        cuda_fail(be, LLMQ_ERR_INVALID,
                  "cuda matmul: weight [%d, %d] is %s with row stride %zu; weight_prepare makes it %s and dense", m, k,
                  llmq_dtype_name(w->dt), be_weight_ld(w), llmq_dtype_name(be->act_dt));
        return;
    }
    const cudaDataType_t dt = cuda_dt(be->act_dt);
    const float alpha = 1.0f, beta = 0.0f;
    impl->gemm_calls++;
    int done = 0;
    if (impl->gemm_pinned) {
        const gemm_plan *pl = plan_find(impl, m, k);
        if (pl && pl->ok) {
            cublasLtMatmulDescOpaque_t op;
            cublasLtMatrixLayoutOpaque_t a, b, c;
            if (lt_describe(&op, &a, &b, &c, dt, m, n, k) == CUBLAS_STATUS_SUCCESS &&
                cublasLtMatmul(impl->lt, &op, &alpha, w->data, &a, x, &b, &beta, out, &c, out, &c, &pl->algo, NULL, 0,
                               impl->stream) == CUBLAS_STATUS_SUCCESS)
                done = 1;
        }
        if (!done) impl->gemm_fallbacks++;
    }
    if (!done)
        CUBLAS_TRY_V(be, cublasGemmEx(impl->blas, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, w->data, dt, k, x, dt, k,
                                      &beta, out, dt, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (bias) {
        const size_t total = (size_t)n * m;
        CUDA_DISPATCH_ACT(be->act_dt, T,
                          llmq_launch(bias_kernel<T>, cuda_blocks(total, 256), 256, 0, impl->stream,
                                      (T *)out, bias, m, total));
        CUDA_CHECK_LAUNCH(be);
    }
}
