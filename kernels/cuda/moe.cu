/*
 * moe.cu — Mixtral's MLP (be_ops.moe, backend.h) on the GPU.
 *
 * This first version runs every expert over all n rows of the step: each
 * expert's weights are read once per call, as on the CPU, but the arithmetic
 * is E/k times a grouped GEMM's (Mixtral: 4x), since grouping the rows by
 * expert needs their counts on the host, which would stall the stream and
 * break step graphs; a grouped GEMM that reads the routing on the device is
 * the next step (issue 19).  A row keeps only its own experts' outputs,
 * weighted and added in increasing expert order into an F32 accumulator (the
 * op's ys scratch), so its result is the bits it gets alone, and every
 * launch is recordable.
 */
#include "kernels/cuda/common.cuh"

/* One thread per row: softmax of its router logits in F32, the top k (the
 * lower expert on a tie), renormalised over the chosen. */
template <typename T>
__global__ void moe_route_kernel(int32_t *ex, float *wt, const T *logits, int n, int E, int k) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const T *lg = logits + (size_t)i * E;
    float mx = to_f32(lg[0]);
    for (int e = 1; e < E; e++) mx = to_f32(lg[e]) > mx ? to_f32(lg[e]) : mx;
    float sum = 0;
    for (int e = 0; e < E; e++) sum += expf(to_f32(lg[e]) - mx);
    int32_t *x = ex + (size_t)i * k;
    float *w = wt + (size_t)i * k, chosen = 0;
    for (int j = 0; j < k; j++) {
        int best = -1;
        float pb = 0;
        for (int e = 0; e < E; e++) {
            bool taken = false;
            for (int t = 0; t < j; t++) taken |= x[t] == e;
            const float p = expf(to_f32(lg[e]) - mx) / sum;
            if (!taken && (best < 0 || p > pb)) {
                best = e;
                pb = p;
            }
        }
        x[j] = best;
        w[j] = pb;
        chosen += pb;
    }
    for (int j = 0; j < k; j++) w[j] /= chosen;
}

/* One block per row: acc[i] (+)= weight * y[i] when row i chose expert e;
 * the first expert sets the accumulator (zero when not chosen). */
template <typename T>
__global__ void moe_add_kernel(float *acc, const T *y, const int32_t *ex, const float *wt, int e, int k, int d,
                               int first) {
    const int i = blockIdx.x;
    float w = 0;
    bool hit = false;
    for (int j = 0; j < k; j++)
        if (ex[(size_t)i * k + j] == e) {
            w = wt[(size_t)i * k + j];
            hit = true;
        }
    float *a = acc + (size_t)i * d;
    const T *yr = y + (size_t)i * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        const float p = hit ? __fmul_rn(w, to_f32(yr[c])) : 0.0f; /* rounded, then added: as the CPU */
        a[c] = first ? p : a[c] + p;
    }
}

template <typename T> __global__ void moe_out_kernel(T *out, const float *acc, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = from_f32<T>(acc[i]);
}

void cuda_moe(llmq_backend *be, void *out, const void *x, const void *router_logits, const be_moe *moe, int n,
              const be_moe_scratch *ws) {
    if (n <= 0) return;
    const int E = moe->n_experts, k = moe->top_k, d = moe->w2[0].rows, I = moe->w1[0].rows;
    cudaStream_t s = cuda_impl_of(be)->stream;
    int32_t *ex = (int32_t *)ws->route;
    float *wt = (float *)(ex + (size_t)n * k);
    float *acc = (float *)ws->ys; /* [n, d] of its [n * k, d] floats */
    CUDA_DISPATCH_ACT(be->act_dt, T,
                      llmq_launch(moe_route_kernel<T>, (n + 127) / 128, 128, 0, s, ex, wt, (const T *)router_logits,
                                  n, E, k));
    CUDA_CHECK_LAUNCH(be);
    for (int e = 0; e < E; e++) {
        cuda_matmul(be, ws->gate, x, &moe->w1[e], NULL, n);
        cuda_matmul(be, ws->up, x, &moe->w3[e], NULL, n);
        cuda_swiglu(be, ws->gate, ws->gate, ws->up, n, I);
        cuda_matmul(be, ws->xs, ws->gate, &moe->w2[e], NULL, n);
        CUDA_DISPATCH_ACT(be->act_dt, T,
                          llmq_launch(moe_add_kernel<T>, n, 256, 0, s, acc, (const T *)ws->xs, (const int32_t *)ex,
                                      (const float *)wt, e, k, d, e == 0 ? 1 : 0));
        CUDA_CHECK_LAUNCH(be);
    }
    const size_t total = (size_t)n * d;
    CUDA_DISPATCH_ACT(be->act_dt, T,
                      llmq_launch(moe_out_kernel<T>, cuda_blocks(total, 256), 256, 0, s, (T *)out,
                                  (const float *)acc, total));
    CUDA_CHECK_LAUNCH(be);
}
