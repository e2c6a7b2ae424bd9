/*
 * qmatmul.c — out[n, m] = x[n, k] . W[m, k]^T (+ bias) for weight-only
 * quantized W (Q8, Q4; layouts in kernels/quant.h), activations F32.
 * cpu_matmul / cpu_matmul_ref hand quantized weights here.
 *
 * Every weight is first turned into its dequantized F32 value — exactly
 * float(q - z) * scale, the definition of quant.h — and then enters an
 * ordinary F32 dot product.  Two ways to get there, same bits:
 *  - few inputs (decode): dequantize 8 weights at a time in registers,
 *    straight from the packed rows (memory bandwidth is the limit, and the
 *    packed rows are 4x / ~7x smaller than F32);
 *  - many inputs (prefill): dequantize a tile of rows once into the
 *    thread's F32 scratch and reuse it for every input.
 * Each dot product is the same instruction sequence in both cases and
 * whatever the blocking — one 8-lane FMA accumulator over k in order, a
 * fixed-order horizontal sum, then the scalar tail with fmaf — so a row's
 * result never depends on the batch (backend.h).
 *
 * This is the "generic" path (isa.h); the avx2 and avx512 paths are the
 * same scheme in qmatmul_tmpl.h (qmatmul_avx2.c, qmatmul_avx512.c), chosen
 * at run time by cpu_impl.isa.
 *
 * Reference path: dequantize a row (llmq_dequantize_row), then a plain
 * double-precision dot product.
 */
#include <omp.h>
#include <stddef.h>
#include <stdlib.h>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/qmatmul_isa.h"
#include "kernels/quant.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
typedef __m256 qv;
static inline qv qv_zero(void) { return _mm256_setzero_ps(); }
static inline qv qv_load(const float *p) { return _mm256_loadu_ps(p); }
static inline qv qv_set1(float a) { return _mm256_set1_ps(a); }
static inline qv qv_fma(qv a, qv b, qv c) { return _mm256_fmadd_ps(a, b, c); }
/* 8 int8 weights -> F32 times the scale */
static inline qv q8_deq(const int8_t *q, qv s) {
    __m128i b = _mm_loadl_epi64((const __m128i *)q);
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), s);
}
/* The 8 nibbles of a Q4 half block (8 bytes at q; the low nibbles when
 * hi = 0, the high ones when hi = 1) -> F32 (q - z) * s */
static inline qv q4_deq(const uint8_t *q, int hi, qv s, int z) {
    __m256i n = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)q));
    n = hi ? _mm256_srli_epi32(n, 4) : _mm256_and_si256(n, _mm256_set1_epi32(15));
    n = _mm256_sub_epi32(n, _mm256_set1_epi32(z));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(n), s);
}
#else
typedef float qv __attribute__((vector_size(32)));
static inline qv qv_zero(void) { return (qv){0}; }
static inline qv qv_load(const float *p) {
    qv v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline qv qv_set1(float a) { return (qv){a, a, a, a, a, a, a, a}; }
static inline qv qv_fma(qv a, qv b, qv c) {
    for (int l = 0; l < 8; l++) c[l] = __builtin_fmaf(a[l], b[l], c[l]);
    return c;
}
static inline qv q8_deq(const int8_t *q, qv s) {
    qv v;
    for (int l = 0; l < 8; l++) v[l] = (float)q[l] * s[l];
    return v;
}
static inline qv q4_deq(const uint8_t *q, int hi, qv s, int z) {
    qv v;
    for (int l = 0; l < 8; l++) v[l] = (float)((int)((q[l] >> (4 * hi)) & 15) - z) * s[l];
    return v;
}
#endif

static inline float qv_hsum(qv v) {
    float l[8];
    memcpy(l, &v, sizeof l);
    return ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
}

/* Where the weights of a micro-kernel come from. */
typedef enum { SRC_F32, SRC_Q8, SRC_Q4 } q_src;

/* The dequantized weight i of row r (scalar; the tail of a row). */
static inline float q_at(const be_weight *w, const be_qweight *qw, int r, int i) {
    if (w->dt == LLMQ_Q8) return (float)((const int8_t *)qw->q)[(size_t)r * w->cols + i] * qw->scales[r];
    const int G = llmq_quant_groups(w), g = i / qw->group;
    const uint8_t b = ((const uint8_t *)qw->q)[(size_t)r * llmq_quant_row_bytes(w) + llmq_q4_byte(i)];
    return (float)((int)((b >> llmq_q4_shift(i)) & 15) - (int)qw->zeros[(size_t)r * G + g]) *
           qw->scales[(size_t)r * G + g];
}

/*
 * R rows x J inputs of dot products of length k; res[r * J + j].
 * SRC_F32: rows r of f (row stride k).  SRC_Q8 / SRC_Q4: rows r0 + r of w.
 * Q4 groups are multiples of 8, so a vector of 8 never straddles two groups.
 */
static inline __attribute__((always_inline)) void qkern(int R, int J, q_src src, const float *f, const be_weight *w,
                                                        int r0, int k, const float *const *xs, float *res,
                                                        int prefetch) {
    qv acc[4][3];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < J; j++) acc[r][j] = qv_zero();
    const be_qweight *qw = src == SRC_F32 ? NULL : llmq_qweight_of(w);
    const int k8 = k & ~7;
    const int group = src == SRC_Q4 ? qw->group : k8 > 0 ? k8 : 8;
    const int G = src == SRC_Q4 ? llmq_quant_groups(w) : 1;
    const size_t rb = src == SRC_F32 ? 0 : llmq_quant_row_bytes(w);
    /* The rows are contiguous: while these R rows are consumed, fetch the
     * next R linearly (the hardware prefetcher barely trains on short rows).
     * Each step of 8 inputs eats R * 8 elements. */
    const char *next = src == SRC_F32 ? NULL : (const char *)qw->q + (size_t)(r0 + R) * rb;
    const size_t step_bytes = (size_t)R * (src == SRC_Q4 ? 4 : 8); /* Q4: 8 bytes per 16 inputs */
    for (int g0 = 0, g = 0; g0 < k8; g0 += group, g++) {
        const int end = g0 + group < k8 ? g0 + group : k8;
        qv sv[4];
        int zv[4] = {0, 0, 0, 0};
        for (int r = 0; r < R; r++) {
            sv[r] = qv_zero();
            if (src == SRC_Q8) sv[r] = qv_set1(qw->scales[r0 + r]);
            if (src == SRC_Q4) {
                sv[r] = qv_set1(qw->scales[(size_t)(r0 + r) * G + g]);
                zv[r] = qw->zeros[(size_t)(r0 + r) * G + g];
            }
        }
        for (int i = g0; i < end; i += 8) {
            if (prefetch) __builtin_prefetch(next + (size_t)(i / 8) * step_bytes, 0, 0);
            qv xv[3];
            for (int j = 0; j < J; j++) xv[j] = qv_load(xs[j] + i);
            for (int r = 0; r < R; r++) {
                qv wv;
                if (src == SRC_F32) wv = qv_load(f + (size_t)r * k + i);
                else if (src == SRC_Q8) wv = q8_deq((const int8_t *)qw->q + (size_t)(r0 + r) * rb + i, sv[r]);
                else wv = q4_deq((const uint8_t *)qw->q + (size_t)(r0 + r) * rb + llmq_q4_byte(i), i & 8, sv[r],
                                 zv[r]);
#if defined(__AVX2__)
                if (J > 1) __asm__("" : "+x"(wv)); /* dequantize once, not once per input */
#endif
                for (int j = 0; j < J; j++) acc[r][j] = qv_fma(wv, xv[j], acc[r][j]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int j = 0; j < J; j++) {
            float s = qv_hsum(acc[r][j]);
            for (int i = k8; i < k; i++)
                s = __builtin_fmaf(src == SRC_F32 ? f[(size_t)r * k + i] : q_at(w, qw, r0 + r, i), xs[j][i], s);
            res[r * J + j] = s;
        }
}

/* Rows [r0, r0 + rows) against all n inputs; results to out[j * ldo + r]
 * (+ bias[r]).  SRC_F32: f holds those rows (f[0] is row r0). */
static inline __attribute__((always_inline)) void qtile(q_src src, const float *f, const be_weight *w, int r0,
                                                        int rows, int k, const float *x, int n, float *out, int ldo,
                                                        const float *bias) {
    float res[12];
    const int pf = src != SRC_F32; /* prefetch the packed rows (scratch rows are in cache) */
#define QT_STORE(RR, JJ)                                                                                        \
    for (int a = 0; a < (RR); a++)                                                                             \
        for (int b = 0; b < (JJ); b++)                                                                         \
            out[(size_t)(j + b) * ldo + r0 + r + a] = res[a * (JJ) + b] + (bias ? bias[r0 + r + a] : 0.0f);
    int r = 0;
    for (; r + 4 <= rows; r += 4) {
        const float *fr = f ? f + (size_t)r * k : NULL;
        int j = 0;
        for (; j + 3 <= n; j += 3) {
            const float *xs[3] = {x + (size_t)j * k, x + (size_t)(j + 1) * k, x + (size_t)(j + 2) * k};
            qkern(4, 3, src, fr, w, r0 + r, k, xs, res, pf && j == 0);
            QT_STORE(4, 3)
        }
        if (j + 2 == n) {
            const float *xs[2] = {x + (size_t)j * k, x + (size_t)(j + 1) * k};
            qkern(4, 2, src, fr, w, r0 + r, k, xs, res, pf && j == 0);
            QT_STORE(4, 2)
        } else if (j + 1 == n) {
            const float *xs[1] = {x + (size_t)j * k};
            qkern(4, 1, src, fr, w, r0 + r, k, xs, res, pf && j == 0);
            QT_STORE(4, 1)
        }
    }
    for (; r < rows; r++) {
        const float *fr = f ? f + (size_t)r * k : NULL;
        for (int j = 0; j < n; j++) {
            const float *xs[1] = {x + (size_t)j * k};
            qkern(1, 1, src, fr, w, r0 + r, k, xs, res, 0);
            QT_STORE(1, 1)
        }
    }
#undef QT_STORE
}

/* Row r of w dequantized into dst[k]: the values llmq_dequantize_row gives
 * (same products, bit for bit), 8 at a time. */
static void deq_row(float *dst, const be_weight *w, int r) {
    const be_qweight *qw = llmq_qweight_of(w);
    const int k = w->cols, k8 = k & ~7;
    const size_t rb = llmq_quant_row_bytes(w);
    if (w->dt == LLMQ_Q8) {
        const int8_t *q = (const int8_t *)qw->q + (size_t)r * rb;
        const qv s = qv_set1(qw->scales[r]);
        for (int i = 0; i < k8; i += 8) {
            qv v = q8_deq(q + i, s);
            memcpy(dst + i, &v, sizeof v);
        }
    } else {
        const uint8_t *q = (const uint8_t *)qw->q + (size_t)r * rb;
        const int G = llmq_quant_groups(w);
        for (int g0 = 0, g = 0; g0 < k8; g0 += qw->group, g++) {
            const int end = g0 + qw->group < k8 ? g0 + qw->group : k8;
            const qv s = qv_set1(qw->scales[(size_t)r * G + g]);
            const int z = qw->zeros[(size_t)r * G + g];
            for (int i = g0; i < end; i += 8) {
                qv v = q4_deq(q + llmq_q4_byte(i), i & 8, s, z);
                memcpy(dst + i, &v, sizeof v);
            }
        }
    }
    for (int i = k8; i < k; i++) dst[i] = q_at(w, qw, r, i);
}

static void tile_deq_f32(const float *f, const be_weight *w, int r0, int rows, int k, const float *x, int n,
                         float *out, int ldo, const float *bias) {
    qtile(SRC_F32, f, w, r0, rows, k, x, n, out, ldo, bias);
}
static void tile_q8(const be_weight *w, int r0, int rows, int k, const float *x, int n, float *out, int ldo,
                    const float *bias) {
    qtile(SRC_Q8, NULL, w, r0, rows, k, x, n, out, ldo, bias);
}
static void tile_q4(const be_weight *w, int r0, int rows, int k, const float *x, int n, float *out, int ldo,
                    const float *bias) {
    qtile(SRC_Q4, NULL, w, r0, rows, k, x, n, out, ldo, bias);
}

/* Up to this many inputs the weights are dequantized in registers; beyond,
 * a tile is dequantized once into scratch and reused. */
#define QMATMUL_DIRECT_MAX_N 4

void cpu_qmatmul(llmq_backend *be, void *out, const void *x, const be_weight *w, const float *bias, int n) {
    cpu_impl *impl = be->impl;
#if defined(__x86_64__)
    /* the wider paths (qmatmul_tmpl.h); this file's code is "generic" */
    if (impl->isa == CPU_ISA_AVX2) {
        cpu_qmatmul_avx2(be, out, x, w, bias, n);
        return;
    }
    if (impl->isa >= CPU_ISA_AVX512) {
        cpu_qmatmul_avx512(be, out, x, w, bias, n);
        return;
    }
#endif
    const int k = w->cols, m = w->rows;
    const int widen = n > QMATMUL_DIRECT_MAX_N;
    int tile = 16;
    if (widen) {
        tile = (16384 / k) & ~3;
        if (tile < 4) tile = 4;
        if (tile > 64) tile = 64;
        if (cpu_scratch_reserve(impl, (size_t)tile * k)) {
            llmq_err_set(&be->err, LLMQ_ERR_NOMEM, "cpu qmatmul: no memory for a %d x %d scratch tile", tile, k);
            return;
        }
    }
    const int ntiles = (m + tile - 1) / tile;
    const long work = (long)m * k * n;
#pragma omp parallel for schedule(static) if (ntiles > 1 && work > 65536)
    for (int t = 0; t < ntiles; t++) {
        const int r0 = t * tile;
        const int rows = m - r0 < tile ? m - r0 : tile;
        if (widen) {
            float *buf = impl->scratch[omp_get_thread_num()];
            for (int r = 0; r < rows; r++) deq_row(buf + (size_t)r * k, w, r0 + r);
            tile_deq_f32(buf, w, r0, rows, k, x, n, out, m, bias);
        } else if (w->dt == LLMQ_Q8) {
            tile_q8(w, r0, rows, k, x, n, out, m, bias);
        } else {
            tile_q4(w, r0, rows, k, x, n, out, m, bias);
        }
    }
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
