/*
 * rmsnorm.c — y = x / sqrt(mean(x^2) + eps) * w, per row; and the fused
 * residual form x += delta; y = rmsnorm(x) * w used between sub-layers.
 * The sum of squares is accumulated in double so that the fast and the
 * reference path agree to rounding, and rows are independent; the avx2 /
 * avx512 paths sum it in vector lanes (elementwise_isa.h).
 */
#include <math.h>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/elementwise_isa.h"

/* The compiler keeps a double sum in order (no reassociation): the wider
 * paths sum in vector lanes, in a fixed order of their own
 * (elementwise_isa.h). */
static inline double sumsq(const float *x, int dim, cpu_isa isa) {
#if defined(__x86_64__)
    if (isa >= CPU_ISA_AVX512) return cpu_sumsq_avx512(x, dim);
    if (isa == CPU_ISA_AVX2) return cpu_sumsq_avx2(x, dim);
#endif
    (void)isa;
    double ss = 0;
    for (int i = 0; i < dim; i++) ss += (double)x[i] * x[i];
    return ss;
}

static inline void norm_row(float *y, const float *x, const float *w, int dim, float eps, cpu_isa isa) {
    const double ss = sumsq(x, dim, isa);
    float inv = (float)(1.0 / sqrt(ss / dim + eps));
    for (int i = 0; i < dim; i++) y[i] = w[i] * (x[i] * inv);
}

void cpu_rmsnorm(llmq_backend *be, void *out, const void *x, const float *w, int n, int dim, float eps) {
    const cpu_isa isa = ((const cpu_impl *)be->impl)->isa;
#pragma omp parallel for schedule(static) if (n > 4)
    for (int r = 0; r < n; r++)
        norm_row((float *)out + (size_t)r * dim, (const float *)x + (size_t)r * dim, w, dim, eps, isa);
}

void cpu_add_rmsnorm(llmq_backend *be, void *out, void *x, const void *delta, const float *w, int n, int dim,
                     float eps) {
    const cpu_isa isa = ((const cpu_impl *)be->impl)->isa;
#pragma omp parallel for schedule(static) if (n > 4)
    for (int r = 0; r < n; r++) {
        float *xr = (float *)x + (size_t)r * dim;
        const float *dr = (const float *)delta + (size_t)r * dim;
        for (int i = 0; i < dim; i++) xr[i] += dr[i];
        norm_row((float *)out + (size_t)r * dim, xr, w, dim, eps, isa);
    }
}

void cpu_rmsnorm_ref(llmq_backend *be, void *out, const void *x, const float *w, int n, int dim, float eps) {
    (void)be;
    for (int r = 0; r < n; r++) {
        const float *xr = (const float *)x + (size_t)r * dim;
        float *yr = (float *)out + (size_t)r * dim;
        double ss = 0;
        for (int i = 0; i < dim; i++) ss += (double)xr[i] * xr[i];
        double inv = 1.0 / sqrt(ss / dim + eps);
        for (int i = 0; i < dim; i++) yr[i] = (float)(w[i] * (xr[i] * inv));
    }
}

void cpu_add_rmsnorm_ref(llmq_backend *be, void *out, void *x, const void *delta, const float *w, int n, int dim,
                         float eps) {
    float *xf = x;
    const float *d = delta;
    for (size_t i = 0; i < (size_t)n * dim; i++) xf[i] += d[i];
    cpu_rmsnorm_ref(be, out, x, w, n, dim, eps);
}
