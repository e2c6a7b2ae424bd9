/*
 * qmatmul.c — out[n, m] = x[n, k] . W[m, k]^T (+ bias) for weight-only
 * quantized W (Q8, Q4; layouts in kernels/quant.h), activations F32.
 * cpu_matmul / cpu_matmul_ref hand quantized weights here.
 *
 * Fast path: qmatmul_tmpl.h (the scheme, and why a row's result never
 * depends on the batch), instantiated for portable C vectors here
 * ("generic", isa.h), for AVX2 (qmatmul_avx2.c) and AVX-512
 * (qmatmul_avx512.c); cpu_qmatmul picks the one of cpu_impl.isa.  Two paths
 * may differ in the last bits.
 *
 * Reference path: dequantize a row (llmq_dequantize_row), then a plain
 * double-precision dot product.
 */
#include <omp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/qmatmul_isa.h"
#include "kernels/quant.h"

/* ---- generic: portable C vectors (GCC/Clang vector extensions) ----------- */
typedef float qm_v __attribute__((vector_size(32)));
typedef int qm_vi; /* the zero point; 8 lanes never straddle two Q4 groups */
#define QM_VW 8
#define QM_RD 4
#define QM_RD1 4
#define QM_JD 3
#define QM_RT 4
#define QM_JT 3
#define QM_RMAX 4
#define QM_JMAX 3
#define QM_DIRECT_MAX_N 4
#define QM_DIRECT_MAX_N_Q4 4
#define QM_MASKED_TAIL 0
#define QM_Q4_TABLE 0
#define QM_FN(name) name##_generic

static inline qm_v qm_zero(void) { return (qm_v){0}; }
static inline qm_v qm_load(const float *p) {
    qm_v v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void qm_store(float *p, qm_v v) { memcpy(p, &v, sizeof v); }
/* a * b + c in vector arithmetic (no lane loop, which GCC does not keep in
 * registers); -std=c11 does not contract it to an FMA: the generic path's
 * own last bits, the same on every route */
static inline qm_v qm_fma(qm_v a, qm_v b, qm_v c) { return a * b + c; }
static inline qm_v qm_scale(float lo, float hi) {
    (void)hi;
    return (qm_v){lo, lo, lo, lo, lo, lo, lo, lo};
}
static inline qm_vi qm_zp(int lo, int hi) {
    (void)hi;
    return lo;
}

typedef int32_t qm_v32 __attribute__((vector_size(32)));

/* Widening by a loop over 8 lanes, which the compiler turns into one
 * widening instruction (__builtin_convertvector from 8 bytes it does not). */
static inline __attribute__((always_inline)) qm_v32 qm_widen_s8(const int8_t *p) {
    int32_t t[QM_VW];
    for (int l = 0; l < QM_VW; l++) t[l] = p[l];
    qm_v32 v;
    memcpy(&v, t, sizeof v);
    return v;
}
static inline __attribute__((always_inline)) qm_v32 qm_widen_u8(const uint8_t *p) {
    int32_t t[QM_VW];
    for (int l = 0; l < QM_VW; l++) t[l] = p[l];
    qm_v32 v;
    memcpy(&v, t, sizeof v);
    return v;
}

static inline __attribute__((always_inline)) qm_v qm_q8(const int8_t *p, qm_v s) {
    return __builtin_convertvector(qm_widen_s8(p), qm_v) * s;
}
/* 8 nibbles: the low ones of a block's 8 bytes for elements 0-7, the high
 * ones for 8-15. */
static inline __attribute__((always_inline)) qm_v qm_q4(const uint8_t *row, int i, qm_v s, qm_vi z) {
    qm_v32 v = qm_widen_u8(row + llmq_q4_byte(i));
    v = i & 8 ? v >> 4 : v & 15;
    return __builtin_convertvector(v - z, qm_v) * s;
}

static inline float qm_hsum(qm_v v) {
    float l[8];
    memcpy(l, &v, sizeof l);
    return ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
}

#include "kernels/cpu/qmatmul_tmpl.h"

/* ---- dispatch ---------------------------------------------------------- */

void cpu_qmatmul(llmq_backend *be, void *out, const void *x, const be_weight *w, const float *bias, int n) {
    const cpu_impl *impl = be->impl;
    qmatmul_fn *fn = cpu_qmatmul_generic;
#if defined(__x86_64__)
    if (impl->isa >= CPU_ISA_AVX512) fn = cpu_qmatmul_avx512;
    else if (impl->isa == CPU_ISA_AVX2) fn = cpu_qmatmul_avx2;
#else
    (void)impl;
#endif
    fn(be, out, x, w, bias, n);
}

void cpu_qmatmul_ref(llmq_backend *be, void *out, const void *x, const be_weight *w, const float *bias, int n) {
    const float *xf = x;
    float *o = out;
    const int k = w->cols, m = w->rows;
    float *row = malloc((size_t)k * sizeof(float));
    if (!row) {
        llmq_err_set(&be->err, LLMQ_ERR_NOMEM, "cpu-ref qmatmul: out of memory");
        return;
    }
    for (int r = 0; r < m; r++) {
        llmq_dequantize_row(row, w, r);
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int i = 0; i < k; i++) s += (double)row[i] * xf[(size_t)j * k + i];
            if (bias) s += bias[r];
            o[(size_t)j * m + r] = (float)s;
        }
    }
    free(row);
}
