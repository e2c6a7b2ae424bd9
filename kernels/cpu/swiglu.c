/* swiglu.c — out = silu(gate) * up, silu(g) = g / (1 + exp(-g)). Elementwise. */
#include <math.h>

#include "kernels/cpu/cpu.h"

void cpu_swiglu(llmq_backend *be, void *out, const void *gate, const void *up, int n, int dim) {
    (void)be;
    const size_t total = (size_t)n * dim;
    float *o = out;
    const float *g = gate, *u = up;
#pragma omp parallel for schedule(static) if (total > 16384)
    for (size_t i = 0; i < total; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void cpu_swiglu_ref(llmq_backend *be, void *out, const void *gate, const void *up, int n, int dim) {
    (void)be;
    float *o = out;
    const float *g = gate, *u = up;
    for (size_t i = 0; i < (size_t)n * dim; i++) o[i] = (float)(g[i] / (1.0 + exp(-(double)g[i])) * u[i]);
}
