/*
 * matmul.c — out[n, m] = x[n, k] . W[m, k]^T (+ bias), W in F32, F16 or BF16.
 *
 * Fast path: the rows of W are cut into tiles; OpenMP threads take whole
 * tiles.  A tile of F16/BF16 rows is first widened into the thread's F32
 * scratch (exact), then every (row, input) pair is one dot product run by a
 * register-blocked micro-kernel (4 rows x 3 inputs).  Each dot product uses
 * the same instruction sequence whatever the blocking — one 8-lane
 * accumulator over k, a fixed-order horizontal sum, then the scalar tail —
 * so the result for one token never depends on how many others share the
 * step (batch invariance, backend.h).
 *
 * Reference path: a plain double-precision triple loop.
 */
#include <omp.h>
#include <stddef.h>
#include <stdlib.h>

#include "kernels/cpu/cpu.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
typedef __m256 vf;
static inline vf v_zero(void) { return _mm256_setzero_ps(); }
static inline vf v_load(const float *p) { return _mm256_loadu_ps(p); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline float s_fma(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
#else
typedef float vf __attribute__((vector_size(32)));
static inline vf v_zero(void) { return (vf){0}; }
static inline vf v_load(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline vf v_fma(vf a, vf b, vf c) { return a * b + c; }
static inline float s_fma(float a, float b, float c) { return a * b + c; }
#endif

/* Load 8 weights at element i of a row of dtype DT, widened to F32 (exact). */
static inline __attribute__((always_inline)) vf w_load(const void *row, int i, llmq_dtype dt) {
#if defined(__AVX2__) && defined(__FMA__)
    if (dt == LLMQ_BF16) {
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
#if defined(__F16C__)
    if (dt == LLMQ_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + i)));
#endif
#endif
    if (dt == LLMQ_F32) return v_load((const float *)row + i);
    float tmp[8];
    cpu_convert_row(tmp, row, dt, (size_t)i, 8);
    return v_load(tmp);
}

static inline __attribute__((always_inline)) float w_at(const void *row, int i, llmq_dtype dt) {
    if (dt == LLMQ_F32) return ((const float *)row)[i];
    uint16_t h = ((const uint16_t *)row)[i];
    return dt == LLMQ_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
}

static inline float v_hsum(vf v) {
    float l[8];
    memcpy(l, &v, sizeof l);
    return ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
}

/* R rows x J inputs of dot products of length k; res[r * J + j].  w points
 * at the first of R rows (row stride k elements of dt). */
static inline __attribute__((always_inline)) void kern(int R, int J, const void *w, llmq_dtype dt, int k, size_t ld,
                                                       const float *const *xs, float *res, const char *pf_end) {
    vf acc[4][3];
    const size_t es = dt == LLMQ_F32 ? 4 : 2;
    for (int r = 0; r < R; r++)
        for (int j = 0; j < J; j++) acc[r][j] = v_zero();
    const int k8 = k & ~7;
    /* Rows are short streams (a few KiB) that the hardware prefetcher barely
     * trains on; fetch the next R rows linearly while these are consumed:
     * each iteration eats R * 8 elements, so prefetch as many bytes ahead. */
    const char *next = (const char *)w + (size_t)R * ld * es;
    const size_t step_bytes = (size_t)R * 8 * es;
    const int prefetch = pf_end && next + ((size_t)(R - 1) * ld + k) * es <= pf_end; /* never past the weights */
    const int line = (int)(64 / es); /* elements per cache line */
    for (int i = 0; i < k8; i += 8) {
        vf xv[3];
        if (prefetch && ld == (size_t)k) { /* contiguous rows: one linear stream */
            for (size_t p = 0; p < step_bytes; p += 64)
                __builtin_prefetch(next + (size_t)(i / 8) * step_bytes + p, 0, 0);
        } else if (prefetch && i % line == 0) { /* a column slice: row by row */
            for (int r = 0; r < R; r++) __builtin_prefetch(next + ((size_t)r * ld + (size_t)i) * es, 0, 0);
        }
        for (int j = 0; j < J; j++) xv[j] = v_load(xs[j] + i);
        for (int r = 0; r < R; r++) {
            vf wv = w_load((const char *)w + (size_t)r * ld * es, i, dt);
#if defined(__AVX2__)
            if (J > 1) __asm__("" : "+x"(wv)); /* load each weight vector once, not once per input */
#endif
            for (int j = 0; j < J; j++) acc[r][j] = v_fma(wv, xv[j], acc[r][j]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int j = 0; j < J; j++) {
            float s = v_hsum(acc[r][j]);
            const void *wr = (const char *)w + (size_t)r * ld * es;
            for (int i = k8; i < k; i++) s = s_fma(w_at(wr, i, dt), xs[j][i], s);
            res[r * J + j] = s;
        }
}

/* One tile: rows [0, rows) of w (dtype DT, row stride k) against all n
 * inputs.  Results go to out[j * ldo + r] (+ bias[r]). */
static inline __attribute__((always_inline)) void tile_compute_dt(const void *w, llmq_dtype dt, int rows, int k,
                                                                  size_t ld, const float *x, int n, float *out,
                                                                  int ldo, const float *bias, const char *pf_end) {
    const size_t rs = ld * (dt == LLMQ_F32 ? 4 : 2); /* bytes per row */
    float res[12];
    /* Rows outer, inputs inner: a block of 4 rows stays in L1 while every
     * input streams past it. */
    int r = 0;
    for (; r + 4 <= rows; r += 4) {
        const char *wr = (const char *)w + r * rs;
        int j = 0;
        for (; j + 3 <= n; j += 3) {
            const float *xs[3] = {x + (size_t)j * k, x + (size_t)(j + 1) * k, x + (size_t)(j + 2) * k};
            kern(4, 3, wr, dt, k, ld, xs, res, j == 0 ? pf_end : NULL);
            for (int a = 0; a < 4; a++)
                for (int b = 0; b < 3; b++)
                    out[(size_t)(j + b) * ldo + r + a] = res[a * 3 + b] + (bias ? bias[r + a] : 0.0f);
        }
        if (j + 2 == n) {
            const float *xs[2] = {x + (size_t)j * k, x + (size_t)(j + 1) * k};
            kern(4, 2, wr, dt, k, ld, xs, res, j == 0 ? pf_end : NULL);
            for (int a = 0; a < 4; a++)
                for (int b = 0; b < 2; b++)
                    out[(size_t)(j + b) * ldo + r + a] = res[a * 2 + b] + (bias ? bias[r + a] : 0.0f);
        } else if (j + 1 == n) {
            const float *xs[1] = {x + (size_t)j * k};
            kern(4, 1, wr, dt, k, ld, xs, res, j == 0 ? pf_end : NULL);
            for (int a = 0; a < 4; a++) out[(size_t)j * ldo + r + a] = res[a] + (bias ? bias[r + a] : 0.0f);
        }
    }
    for (; r < rows; r++) {
        const char *wr = (const char *)w + r * rs;
        for (int j = 0; j < n; j++) {
            const float *xs[1] = {x + (size_t)j * k};
            kern(1, 1, wr, dt, k, ld, xs, res, NULL);
            out[(size_t)j * ldo + r] = res[0] + (bias ? bias[r] : 0.0f);
        }
    }
}

static void tile_f32(const void *w, int rows, int k, size_t ld, const float *x, int n, float *out, int ldo,
                     const float *b, const char *pf_end) {
    tile_compute_dt(w, LLMQ_F32, rows, k, ld, x, n, out, ldo, b, pf_end);
}
static void tile_bf16(const void *w, int rows, int k, size_t ld, const float *x, int n, float *out, int ldo,
                     const float *b, const char *pf_end) {
    tile_compute_dt(w, LLMQ_BF16, rows, k, ld, x, n, out, ldo, b, pf_end);
}
static void tile_f16(const void *w, int rows, int k, size_t ld, const float *x, int n, float *out, int ldo,
                     const float *b, const char *pf_end) {
    tile_compute_dt(w, LLMQ_F16, rows, k, ld, x, n, out, ldo, b, pf_end);
}

/* Few inputs: read 16-bit weights straight from memory, widening in
 * registers (decode is bound by memory bandwidth).  Many inputs: widen a
 * tile once into scratch and reuse it for every input.  Widening is exact,
 * so both give the same bits. */
#define MATMUL_DIRECT_MAX_N 4

void cpu_matmul(llmq_backend *be, void *out, const void *x, const be_weight *w, const float *bias, int n) {
    if (llmq_dtype_is_quant(w->dt)) { cpu_qmatmul(be, out, x, w, bias, n); return; } /* qmatmul.c */
    cpu_impl *impl = be->impl;
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
    void (*direct)(const void *, int, int, size_t, const float *, int, float *, int, const float *, const char *) =
        w->dt == LLMQ_F32 ? tile_f32 : w->dt == LLMQ_BF16 ? tile_bf16 : tile_f16;
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
            tile_f32(buf, rows, k, (size_t)k, x, n, o, m, b, NULL); /* scratch is cache-resident: no prefetch */
        } else {
            direct((const char *)w->data + (size_t)r0 * ld * es, rows, k, ld, x, n, o, m, b, w_end);
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
