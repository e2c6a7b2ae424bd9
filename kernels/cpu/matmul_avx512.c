/*
 * matmul_avx512.c — the matmul's AVX-512 path (isa.h "avx512", and the F32 /
 * F16 weights of "avx512bf16"): 16-lane FMA over 32 zmm registers in blocks
 * of 8 rows x 3 inputs (24 accumulators, 3 inputs, 1 weight: each input
 * vector loaded from L2 serves 8 rows), BF16 widened by a shift, F16 by
 * vcvtph2ps, the k % 16 tail as one masked step into the same accumulator,
 * horizontal sums 4 at a time (matmul_tmpl.h).  Compiled with the avx512
 * flags whatever ARCH is (Makefile).
 */
#if defined(__x86_64__)
#include <immintrin.h>
#include <stddef.h>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/matmul_isa.h"

typedef __m512 mm_vf;
#define MM_VW 16
#define MM_RB 8
#define MM_JB 3
#define MM_MASKED_TAIL 1
#define MM_FN(name) name##_avx512

static inline mm_vf mm_zero(void) { return _mm512_setzero_ps(); }
static inline mm_vf mm_load(const float *p) { return _mm512_loadu_ps(p); }
static inline mm_vf mm_fma(mm_vf a, mm_vf b, mm_vf c) { return _mm512_fmadd_ps(a, b, c); }

static inline __attribute__((always_inline)) mm_vf mm_widen16(__m256i h, llmq_dtype dt) {
    if (dt == LLMQ_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

/* 16 weights at element i of a row of dtype dt, widened to F32 (exact). */
static inline __attribute__((always_inline)) mm_vf mm_wload(const void *row, int i, llmq_dtype dt) {
    if (dt == LLMQ_F32) return _mm512_loadu_ps((const float *)row + i);
    return mm_widen16(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + i)), dt);
}

/* The first t (< 16) elements, the other lanes 0: a masked load reads (and
 * faults on) nothing past them. */
static inline __attribute__((always_inline)) mm_vf mm_load_tail(const float *p, int t) {
    return _mm512_maskz_loadu_ps((__mmask16)((1u << t) - 1), p);
}
static inline __attribute__((always_inline)) mm_vf mm_wload_tail(const void *row, int i, int t, llmq_dtype dt) {
    if (dt == LLMQ_F32) return mm_load_tail((const float *)row + i, t);
    return mm_widen16(_mm256_maskz_loadu_epi16((__mmask16)((1u << t) - 1), (const uint16_t *)row + i), dt);
}

/* The horizontal sums of 4 accumulators at once, each in a fixed order that
 * does not depend on the other three (lane by lane the same additions):
 * lanes i + (i + 8), then adjacent pairs twice (hadd), then the two 128-bit
 * halves: ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)), s = lo + hi.
 * A lone dot product takes the same path with zeros beside it. */
static inline __attribute__((always_inline)) __m128 mm_hsum4(mm_vf a, mm_vf b, mm_vf c, mm_vf d) {
#define H(v) _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1))
    const __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(H(a), H(b)), _mm256_hadd_ps(H(c), H(d)));
#undef H
    return _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
}
#define MM_HSUM4 1

#include "kernels/cpu/matmul_tmpl.h"
#endif
