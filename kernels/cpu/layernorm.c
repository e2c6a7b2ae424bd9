/*
 * layernorm.c — the two ops of Falcon-style blocks:
 *   layernorm  y = (x - mean(x)) / sqrt(var(x) + eps) * w + b, per row
 *              (biased variance, as torch.nn.LayerNorm);
 *   gelu       y = x / 2 * (1 + erf(x / sqrt 2)), elementwise (the exact
 *              GELU of torch.nn.functional.gelu, not the tanh form).
 * Mean and variance are accumulated in double (two passes), so the fast and
 * the reference path agree to rounding; rows are independent.  The avx2 /
 * avx512 paths take the sums, and gelu's erf, in vector lanes
 * (elementwise_isa.h).
 */
#include <math.h>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/elementwise_isa.h"

/* The compiler keeps a double sum in order (no reassociation): the wider
 * paths sum in vector lanes, in a fixed order of their own
 * (elementwise_isa.h). */
static inline void ln_row(float *y, const float *x, const float *w, const float *b, int dim, float eps,
                          cpu_isa isa) {
    double s = 0, v = 0;
#if defined(__x86_64__)
    if (isa >= CPU_ISA_AVX2) {
        const int wide = isa >= CPU_ISA_AVX512;
        s = wide ? cpu_sum_avx512(x, dim) : cpu_sum_avx2(x, dim);
        const double mean = s / dim;
        v = wide ? cpu_sumsqdev_avx512(x, dim, mean) : cpu_sumsqdev_avx2(x, dim, mean);
    } else
#endif
    {
        (void)isa;
        for (int i = 0; i < dim; i++) s += x[i];
        const double mean = s / dim;
        for (int i = 0; i < dim; i++) v += ((double)x[i] - mean) * ((double)x[i] - mean);
    }
    const double mean = s / dim;
    const float inv = (float)(1.0 / sqrt(v / dim + eps)), m = (float)mean;
    for (int i = 0; i < dim; i++) y[i] = (x[i] - m) * inv * w[i] + b[i];
}

void cpu_layernorm(llmq_backend *be, void *out, const void *x, const float *w, const float *b, int n, int dim,
                   float eps) {
    const cpu_isa isa = ((const cpu_impl *)be->impl)->isa;
#pragma omp parallel for schedule(static) if (n > 4)
    for (int r = 0; r < n; r++)
        ln_row((float *)out + (size_t)r * dim, (const float *)x + (size_t)r * dim, w, b, dim, eps, isa);
}

void cpu_layernorm_ref(llmq_backend *be, void *out, const void *x, const float *w, const float *b, int n, int dim,
                       float eps) {
    (void)be;
    for (int r = 0; r < n; r++) {
        const float *xr = (const float *)x + (size_t)r * dim;
        float *yr = (float *)out + (size_t)r * dim;
        double s = 0, v = 0;
        for (int i = 0; i < dim; i++) s += xr[i];
        const double mean = s / dim;
        for (int i = 0; i < dim; i++) v += (xr[i] - mean) * (xr[i] - mean);
        const double inv = 1.0 / sqrt(v / dim + eps);
        for (int i = 0; i < dim; i++) yr[i] = (float)((xr[i] - mean) * inv * w[i] + b[i]);
    }
}

void cpu_gelu(llmq_backend *be, void *out, const void *x, size_t n) {
    float *o = out;
    const float *a = x;
#if defined(__x86_64__)
    /* libm's erff once per element is most of the time: the avx2 / avx512
     * paths take erfc in vector lanes (elementwise_tmpl.h), in chunks that
     * the threads share */
    const cpu_isa isa = ((const cpu_impl *)be->impl)->isa;
    if (isa >= CPU_ISA_AVX2) {
        void (*row)(float *, const float *, size_t) = isa >= CPU_ISA_AVX512 ? cpu_gelu_row_avx512 : cpu_gelu_row_avx2;
        const size_t chunk = 4096;
        const long nch = (long)((n + chunk - 1) / chunk);
#pragma omp parallel for schedule(static) if (n > 16384)
        for (long c = 0; c < nch; c++) {
            const size_t i0 = (size_t)c * chunk;
            row(o + i0, a + i0, n - i0 < chunk ? n - i0 : chunk);
        }
        return;
    }
#endif
#pragma omp parallel for schedule(static) if (n > 16384)
    for (size_t i = 0; i < n; i++) o[i] = 0.5f * a[i] * (1.0f + erff(a[i] * 0.70710678118654752f));
}

void cpu_gelu_ref(llmq_backend *be, void *out, const void *x, size_t n) {
    (void)be;
    float *o = out;
    const float *a = x;
    for (size_t i = 0; i < n; i++) o[i] = (float)(0.5 * a[i] * (1.0 + erf(a[i] / sqrt(2.0))));
}
