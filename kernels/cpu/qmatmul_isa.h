/*
 * qmatmul_isa.h — the instruction-set variants of the Q8 / Q4 weight-only
 * matmul, each qmatmul_tmpl.h instantiated once (qmatmul.c dispatches on
 * cpu_impl.isa, isa.h).  The x86 variants are compiled in their own files
 * for their ISA (qmatmul_<isa>.c, Makefile); call one only when
 * cpu_isa_supported() says so.
 */
#ifndef LLMQ_KERNELS_CPU_QMATMUL_ISA_H
#define LLMQ_KERNELS_CPU_QMATMUL_ISA_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"
#include "kernels/quant.h"

/* out[n, m] = x[n, k] . W[m, k]^T (+ bias) for a Q8 / Q4 W: the op
 * cpu_qmatmul is, on one path.  Sets be->err on failure (no scratch). */
typedef void qmatmul_fn(llmq_backend *be, float *out, const float *x, const be_weight *w, const float *bias, int n);

qmatmul_fn cpu_qmatmul_generic; /* qmatmul.c: 8 portable lanes, multiply + add */
qmatmul_fn cpu_qmatmul_avx2;   /* qmatmul_avx2.c: 8 lanes, 16 registers */
qmatmul_fn cpu_qmatmul_avx512; /* qmatmul_avx512.c: 16 lanes, 32 registers, masked k tail */

/* The dequantized weight i of row r, float(q - z) * scale (quant.h), one
 * element at a time (the tails of rows). */
static inline float qmatmul_at(const be_weight *w, int r, int i) {
    const be_qweight *qw = llmq_qweight_of(w);
    if (w->dt == LLMQ_Q8) return (float)((const int8_t *)qw->q)[(size_t)r * w->cols + i] * qw->scales[r];
    const int G = llmq_quant_groups(w), g = i / qw->group;
    const uint8_t b = ((const uint8_t *)qw->q)[(size_t)r * llmq_quant_row_bytes(w) + llmq_q4_byte(i)];
    return (float)((int)((b >> llmq_q4_shift(i)) & 15) - (int)qw->zeros[(size_t)r * G + g]) *
           qw->scales[(size_t)r * G + g];
}

#endif
