/*
 * matmul_avx512bf16.c — BF16 weights on the "avx512bf16" path (isa.h):
 * vdpbf16ps, which multiplies pairs of BF16 (products exact in F32) and adds
 * them to an F32 accumulator.  The inputs are rounded to BF16 once per call
 * (cpu_matmul_round_bf16_avx512bf16), for every n, n = 1 included, so the
 * path has one numerics and stays batch invariant; a dot product along k
 * needs no shuffling: 32 consecutive BF16 of a weight row and of an input
 * are the 16 (k, k + 1) pairs the instruction takes.  Weights stream from
 * memory as they are (half the bytes of F32: decode is bandwidth bound), in
 * 4 rows x 4 inputs register blocks like matmul_avx512.c.  Compiled with the
 * avx512bf16 flags whatever ARCH is (Makefile).
 */
#if defined(__x86_64__)
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/cpu/matmul_isa.h"

#define BK_RB 4
#define BK_JB 4

static inline __attribute__((always_inline)) __m512bh bk_load(const uint16_t *p) {
    return (__m512bh)_mm512_loadu_si512(p);
}
static inline __attribute__((always_inline)) __m512bh bk_load_tail(const uint16_t *p, int t) {
    return (__m512bh)_mm512_maskz_loadu_epi16((__mmask32)((1u << t) - 1), p); /* t < 32 */
}

/* 4 horizontal sums at once, each in a fixed order of its own (lane by lane
 * the same additions whatever sits beside it): matmul_avx512.c's mm_hsum4. */
static inline __attribute__((always_inline)) __m128 bk_hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
#define H(v) _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1))
    const __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(H(a), H(b)), _mm256_hadd_ps(H(c), H(d)));
#undef H
    return _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
}

/* R rows x J inputs: res[r * J + j].  Each dot product: one accumulator, 32
 * elements a step in order of k, the k % 32 tail one masked step, the fixed
 * horizontal sum (4 at a time): the same sequence whatever R, J or the tile. */
static inline __attribute__((always_inline)) void bk_kern(int R, int J, const uint16_t *w, int k, size_t ld,
                                                          const uint16_t *const *xs, float *res,
                                                          const char *pf_end) {
    __m512 acc[BK_RB][BK_JB];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < J; j++) acc[r][j] = _mm512_setzero_ps();
    const int kv = k - k % 32;
    /* prefetch the next R rows as matmul_tmpl.h does (64 bytes per row a step) */
    const char *next = (const char *)(w + (size_t)R * ld);
    const int prefetch = pf_end && next + ((size_t)(R - 1) * ld + (size_t)k) * 2 <= pf_end;
    for (int i = 0; i < kv; i += 32) {
        if (prefetch) {
            if (ld == (size_t)k)
                for (int r = 0; r < R; r++) __builtin_prefetch(next + ((size_t)i * R + (size_t)r * 32) * 2, 0, 0);
            else
                for (int r = 0; r < R; r++) __builtin_prefetch(next + ((size_t)r * ld + (size_t)i) * 2, 0, 0);
        }
        __m512bh xv[BK_JB];
        for (int j = 0; j < J; j++) xv[j] = bk_load(xs[j] + i);
        for (int r = 0; r < R; r++) {
            __m512bh wv = bk_load(w + (size_t)r * ld + i);
            if (J > 1) __asm__("" : "+v"(wv)); /* load each weight vector once, not once per input */
            for (int j = 0; j < J; j++) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], wv, xv[j]);
        }
    }
    if (kv < k) {
        __m512bh xv[BK_JB];
        for (int j = 0; j < J; j++) xv[j] = bk_load_tail(xs[j] + kv, k - kv);
        for (int r = 0; r < R; r++) {
            __m512bh wv = bk_load_tail(w + (size_t)r * ld + kv, k - kv);
            for (int j = 0; j < J; j++) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], wv, xv[j]);
        }
    }
    for (int j = 0; j < J; j++) {
        float s4[4];
        if (R == 4) {
            _mm_storeu_ps(s4, bk_hsum4(acc[0][j], acc[1][j], acc[2][j], acc[3][j]));
        } else {
            const __m512 z = _mm512_setzero_ps();
            for (int r = 0; r < R; r++) s4[r] = _mm_cvtss_f32(bk_hsum4(acc[r][j], z, z, z));
        }
        for (int r = 0; r < R; r++) res[r * J + j] = s4[r];
    }
}

static inline __attribute__((always_inline)) void bk_block(int R, int J, const uint16_t *w, int k, size_t ld,
                                                           const uint16_t *xb, size_t kx, int j, float *out,
                                                           int ldo, const float *bias, const char *pf_end) {
    float res[BK_RB * BK_JB];
    const uint16_t *xs[BK_JB];
    for (int b = 0; b < J; b++) xs[b] = xb + (size_t)(j + b) * kx;
    bk_kern(R, J, w, k, ld, xs, res, pf_end);
    for (int a = 0; a < R; a++)
        for (int b = 0; b < J; b++) out[(size_t)(j + b) * ldo + a] = res[a * J + b] + (bias ? bias[a] : 0.0f);
}

static inline __attribute__((always_inline)) void bk_rows(int R, const uint16_t *w, int k, size_t ld,
                                                          const uint16_t *xb, size_t kx, int n, float *out,
                                                          int ldo, const float *bias, const char *pf_end) {
    int j = 0;
    for (; j + BK_JB <= n; j += BK_JB) bk_block(R, BK_JB, w, k, ld, xb, kx, j, out, ldo, bias, j ? NULL : pf_end);
    const char *pf = j ? NULL : pf_end;
    switch (n - j) {
    case 3: bk_block(R, 3, w, k, ld, xb, kx, j, out, ldo, bias, pf); break;
    case 2: bk_block(R, 2, w, k, ld, xb, kx, j, out, ldo, bias, pf); break;
    case 1: bk_block(R, 1, w, k, ld, xb, kx, j, out, ldo, bias, pf); break;
    default: break;
    }
}

void cpu_matmul_tile_bf16dp_avx512bf16(const uint16_t *w, int rows, int k, size_t ld, const uint16_t *xb,
                                       size_t kx, int n, float *out, int ldo, const float *bias,
                                       const char *pf_end) {
    /* inputs in chunks of about 128 KiB that stay in L2 (matmul_tmpl.h) */
    int nc = 65536 / (k > 0 ? k : 1) / BK_JB * BK_JB;
    if (nc < BK_JB) nc = BK_JB;
    for (int j0 = 0; j0 < n; j0 += nc) {
        const int nn = n - j0 < nc ? n - j0 : nc;
        const uint16_t *xc = xb + (size_t)j0 * kx;
        float *oc = out + (size_t)j0 * ldo;
        const char *pf = j0 == 0 ? pf_end : NULL;
        int r = 0;
        for (; r + BK_RB <= rows; r += BK_RB)
            bk_rows(BK_RB, w + (size_t)r * ld, k, ld, xc, kx, nn, oc + r, ldo, bias ? bias + r : NULL, pf);
        for (; r < rows; r++)
            bk_rows(1, w + (size_t)r * ld, k, ld, xc, kx, nn, oc + r, ldo, bias ? bias + r : NULL, NULL);
    }
}

void cpu_matmul_round_bf16_avx512bf16(uint16_t *xb, size_t kx, const float *x, int n, int k) {
    for (int j = 0; j < n; j++) {
        const float *src = x + (size_t)j * k;
        uint16_t *dst = xb + (size_t)j * kx;
        for (size_t i = 0; i < kx; i += 16) {
            const size_t left = (size_t)k > i ? (size_t)k - i : 0, t = left < 16 ? left : 16;
            const __mmask16 mk = (__mmask16)((1u << t) - 1), md = (__mmask16)(kx - i < 16 ? (1u << (kx - i)) - 1 : 0xffff);
            __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mk, src + i));
            _mm256_mask_storeu_epi16(dst + i, md, (__m256i)h);
        }
    }
}
#endif
