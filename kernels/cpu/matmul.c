/*
 * matmul.c — out[n, m] = x[n, k] . W[m, k]^T (+ bias), W in F32, F16 or BF16.
 *
 * Fast path: the rows of W are cut into tiles; OpenMP threads take whole
 * tiles.  A tile is computed by the micro-kernel of the instruction-set path
 * the backend chose (cpu_impl.isa, isa.h): matmul_tmpl.h instantiated for
 * portable C vectors here ("generic"), for AVX2 (matmul_avx2.c) and AVX-512
 * (matmul_avx512.c), and BF16 weights on AVX512-BF16 by vdpbf16ps
 * (matmul_avx512bf16.c).  Each dot product is one instruction sequence
 * fixed by the path and k, whatever the batch, the tile or the thread, so
 * the result for one token never depends on how many others share the step
 * (batch invariance, backend.h); two paths may differ in the last bits.
 *
 * Reference path: a plain double-precision triple loop.
 */
#include <omp.h>
#include <stddef.h>
#include <stdlib.h>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/matmul_isa.h"

/* ---- generic: portable C vectors (GCC/Clang vector extensions) ----------- */
typedef float mm_vf __attribute__((vector_size(32)));
#define MM_VW 8
#define MM_RB 4
#define MM_JB 3
#define MM_MASKED_TAIL 0
#define MM_FN(name) name##_generic

static inline mm_vf mm_zero(void) { return (mm_vf){0}; }
static inline mm_vf mm_load(const float *p) {
    mm_vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline mm_vf mm_fma(mm_vf a, mm_vf b, mm_vf c) { return a * b + c; }
static inline float s_fma(float a, float b, float c) { return a * b + c; }

static inline __attribute__((always_inline)) mm_vf mm_wload(const void *row, int i, llmq_dtype dt) {
    if (dt == LLMQ_F32) return mm_load((const float *)row + i);
    float tmp[8];
    cpu_convert_row(tmp, row, dt, (size_t)i, 8);
    return mm_load(tmp);
}

static inline __attribute__((always_inline)) float w_at(const void *row, int i, llmq_dtype dt) {
    if (dt == LLMQ_F32) return ((const float *)row)[i];
    uint16_t h = ((const uint16_t *)row)[i];
    return dt == LLMQ_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
}

static inline float mm_hsum(mm_vf v) {
    float l[8];
    memcpy(l, &v, sizeof l);
    return ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
}

#include "kernels/cpu/matmul_tmpl.h"

/* ---- dispatch ---------------------------------------------------------- */

static matmul_tile_fn *tile_fn(cpu_isa isa) {
#if defined(__x86_64__)
    if (isa >= CPU_ISA_AVX512) return cpu_matmul_tile_avx512;
    if (isa == CPU_ISA_AVX2) return cpu_matmul_tile_avx2;
#endif
    (void)isa;
    return cpu_matmul_tile_generic;
}

#if defined(__x86_64__)
/* BF16 weights on avx512bf16: the inputs rounded to BF16 once (into thread
 * 0's scratch, read by every thread), then vdpbf16ps straight from the
 * weights for every n: no widening, one numerics. */
static void matmul_bf16dp(cpu_impl *impl, llmq_backend *be, float *out, const float *x, const be_weight *w,
                          const float *bias, int n) {
    const int k = w->cols, m = w->rows;
    const size_t ld = be_weight_ld(w), kx = (size_t)k;
    if (cpu_scratch_reserve(impl, ((size_t)n * kx + 1) / 2)) {
        llmq_err_set(&be->err, LLMQ_ERR_NOMEM, "cpu matmul: no memory for %d x %d BF16 inputs", n, k);
        return;
    }
    uint16_t *xb = (uint16_t *)impl->scratch[0];
    cpu_matmul_round_bf16_avx512bf16(xb, kx, x, n, k);
    const uint16_t *wd = w->data;
    const char *w_end = (const char *)(wd + (size_t)(m - 1) * ld + (size_t)k);
    const int tile = 16, ntiles = (m + tile - 1) / tile;
    const long work = (long)m * k * n;
#pragma omp parallel for schedule(static) if (ntiles > 1 && work > 65536)
    for (int t = 0; t < ntiles; t++) {
        const int r0 = t * tile;
        const int rows = m - r0 < tile ? m - r0 : tile;
        cpu_matmul_tile_bf16dp_avx512bf16(wd + (size_t)r0 * ld, rows, k, ld, xb, kx, n, out + r0, m,
                                          bias ? bias + r0 : NULL, w_end);
    }
}
#endif

/* Few inputs: read 16-bit weights straight from memory, widening in
 * registers (decode is bound by memory bandwidth).  Many inputs: widen a
 * tile once into scratch and reuse it for every input.  Widening is exact,
 * so both give the same bits. */
#define MATMUL_DIRECT_MAX_N 4

void cpu_matmul(llmq_backend *be, void *out, const void *x, const be_weight *w, const float *bias, int n) {
    if (llmq_dtype_is_quant(w->dt)) { cpu_qmatmul(be, out, x, w, bias, n); return; } /* qmatmul.c */
    cpu_impl *impl = be->impl;
#if defined(__x86_64__)
    if (impl->isa == CPU_ISA_AVX512BF16 && w->dt == LLMQ_BF16) {
        matmul_bf16dp(impl, be, out, x, w, bias, n);
        return;
    }
#endif
    matmul_tile_fn *fn = tile_fn(impl->isa);
    const int k = w->cols, m = w->rows;
    const int widen = w->dt != LLMQ_F32 && n > MATMUL_DIRECT_MAX_N;
    int tile = 16;
    if (widen) {
        tile = (16384 / k) & ~3;
        if (tile < 4) tile = 4;
        if (tile > 64) tile = 64;
        if (cpu_scratch_reserve(impl, (size_t)tile * k)) {
            llmq_err_set(&be->err, LLMQ_ERR_NOMEM, "cpu matmul: no memory for a %d x %d scratch tile", tile, k);
            return;
        }
    }
    const size_t es = llmq_dtype_size(w->dt);
    const size_t ld = be_weight_ld(w);
    const char *w_end = (const char *)w->data + ((size_t)(m - 1) * ld + (size_t)k) * es;
    const int ntiles = (m + tile - 1) / tile;
    const long work = (long)m * k * n;
#pragma omp parallel for schedule(static) if (ntiles > 1 && work > 65536)
    for (int t = 0; t < ntiles; t++) {
        const int r0 = t * tile;
        const int rows = m - r0 < tile ? m - r0 : tile;
        float *o = (float *)out + r0;
        const float *b = bias ? bias + r0 : NULL;
        if (widen) {
            float *buf = impl->scratch[omp_get_thread_num()];
            for (int r = 0; r < rows; r++)
                cpu_convert_row(buf + (size_t)r * k, w->data, w->dt, (size_t)(r0 + r) * ld, (size_t)k);
            fn(buf, LLMQ_F32, rows, k, (size_t)k, x, n, o, m, b, NULL); /* scratch is cache-resident: no prefetch */
        } else {
            fn((const char *)w->data + (size_t)r0 * ld * es, w->dt, rows, k, ld, x, n, o, m, b, w_end);
        }
    }
}

void cpu_matmul_ref(llmq_backend *be, void *out, const void *x, const be_weight *w, const float *bias, int n) {
    if (llmq_dtype_is_quant(w->dt)) { cpu_qmatmul_ref(be, out, x, w, bias, n); return; } /* qmatmul.c */
    (void)be;
    const float *xf = x;
    float *o = out;
    const int k = w->cols, m = w->rows;
    float *row = malloc((size_t)k * sizeof(float));
    if (!row) {
        llmq_err_set(&be->err, LLMQ_ERR_NOMEM, "cpu-ref matmul: out of memory");
        return;
    }
    for (int r = 0; r < m; r++) {
        cpu_convert_row(row, w->data, w->dt, (size_t)r * be_weight_ld(w), (size_t)k);
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int i = 0; i < k; i++) s += (double)row[i] * xf[(size_t)j * k + i];
            if (bias) s += bias[r];
            o[(size_t)j * m + r] = (float)s;
        }
    }
    free(row);
}
