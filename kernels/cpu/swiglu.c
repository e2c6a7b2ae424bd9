/* swiglu.c — out = silu(gate) * up, silu(g) = g / (1 + exp(-g)). Elementwise;
 * the avx2 / avx512 paths vectorize exp (elementwise_isa.h). */
#include <math.h>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/elementwise_isa.h"

void cpu_swiglu(llmq_backend *be, void *out, const void *gate, const void *up, int n, int dim) {
    const size_t total = (size_t)n * dim;
    float *o = out;
    const float *g = gate, *u = up;
#if defined(__x86_64__)
    /* expf is the cost here and the compiler calls libm once per element:
     * the avx2 / avx512 paths take exp in vector lanes (elementwise_tmpl.h),
     * in chunks that the threads share. */
    const cpu_isa isa = ((const cpu_impl *)be->impl)->isa;
    if (isa >= CPU_ISA_AVX2) {
        void (*row)(float *, const float *, const float *, size_t) =
            isa >= CPU_ISA_AVX512 ? cpu_swiglu_row_avx512 : cpu_swiglu_row_avx2;
        const size_t chunk = 4096;
        const long nch = (long)((total + chunk - 1) / chunk);
#pragma omp parallel for schedule(static) if (total > 16384)
        for (long c = 0; c < nch; c++) {
            const size_t i0 = (size_t)c * chunk;
            row(o + i0, g + i0, u + i0, total - i0 < chunk ? total - i0 : chunk);
        }
        return;
    }
#endif
#pragma omp parallel for schedule(static) if (total > 16384)
    for (size_t i = 0; i < total; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void cpu_swiglu_ref(llmq_backend *be, void *out, const void *gate, const void *up, int n, int dim) {
    (void)be;
    float *o = out;
    const float *g = gate, *u = up;
    for (size_t i = 0; i < (size_t)n * dim; i++) o[i] = (float)(g[i] / (1.0 + exp(-(double)g[i])) * u[i]);
}
