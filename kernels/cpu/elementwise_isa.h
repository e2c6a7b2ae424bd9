/*
 * elementwise_isa.h — instruction-set variants of the pieces of the
 * elementwise ops that the compiler does not vectorize on its own
 * (elementwise_tmpl.h, compiled per ISA as elementwise_<isa>.c): expf of
 * swiglu, erff of gelu, the double-precision sums of rmsnorm and layernorm.
 * The ops (swiglu.c, layernorm.c, rmsnorm.c) dispatch on cpu_impl.isa; "generic" keeps their
 * plain loops.  Each is elementwise or per row, so no result depends on
 * the batch; two paths may differ in the last bits.
 */
#ifndef LLMQ_KERNELS_CPU_ELEMENTWISE_ISA_H
#define LLMQ_KERNELS_CPU_ELEMENTWISE_ISA_H

#include <stddef.h>

/* o[i] = g[i] / (1 + exp(-g[i])) * u[i] for i < n (o may be g or u). */
void cpu_swiglu_row_avx2(float *o, const float *g, const float *u, size_t n);
void cpu_swiglu_row_avx512(float *o, const float *g, const float *u, size_t n);

/* o[i] = x[i] Phi(x[i]), the exact (erf) GELU (o may be x). */
void cpu_gelu_row_avx2(float *o, const float *x, size_t n);
void cpu_gelu_row_avx512(float *o, const float *x, size_t n);

/* sum of x[i]^2 in double, in a fixed order. */
double cpu_sumsq_avx2(const float *x, int n);
double cpu_sumsq_avx512(const float *x, int n);

/* sum of x[i], and of (x[i] - mean)^2, in double, in a fixed order. */
double cpu_sum_avx2(const float *x, int n);
double cpu_sum_avx512(const float *x, int n);
double cpu_sumsqdev_avx2(const float *x, int n, double mean);
double cpu_sumsqdev_avx512(const float *x, int n, double mean);

#endif
