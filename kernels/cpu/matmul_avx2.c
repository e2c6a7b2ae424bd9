/*
 * matmul_avx2.c — the matmul's AVX2 path (isa.h "avx2"): 8-lane FMA, BF16
 * widened by a shift, F16 by F16C, a 4 rows x 3 inputs register block, the
 * k % 8 tail scalar after the horizontal sum (matmul_tmpl.h).  Compiled with
 * the avx2 flags whatever ARCH is (Makefile).
 */
#if defined(__x86_64__)
#include <immintrin.h>
#include <stddef.h>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/matmul_isa.h"

typedef __m256 mm_vf;
#define MM_VW 8
#define MM_RB 4
#define MM_JB 3
#define MM_MASKED_TAIL 0
#define MM_FN(name) name##_avx2

static inline mm_vf mm_zero(void) { return _mm256_setzero_ps(); }
static inline mm_vf mm_load(const float *p) { return _mm256_loadu_ps(p); }
static inline mm_vf mm_fma(mm_vf a, mm_vf b, mm_vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline float s_fma(float a, float b, float c) { return __builtin_fmaf(a, b, c); }

/* 8 weights at element i of a row of dtype dt, widened to F32 (exact). */
static inline __attribute__((always_inline)) mm_vf mm_wload(const void *row, int i, llmq_dtype dt) {
    const __m128i *p = (const __m128i *)((const uint16_t *)row + i);
    if (dt == LLMQ_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p)), 16));
    if (dt == LLMQ_F16) return _mm256_cvtph_ps(_mm_loadu_si128(p));
    return _mm256_loadu_ps((const float *)row + i);
}

static inline __attribute__((always_inline)) float w_at(const void *row, int i, llmq_dtype dt) {
    if (dt == LLMQ_F32) return ((const float *)row)[i];
    uint16_t h = ((const uint16_t *)row)[i];
    return dt == LLMQ_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
}

/* Fixed order: lanes i and i + 4 first, then a balanced tree. */
static inline float mm_hsum(mm_vf v) {
    float l[8];
    _mm256_storeu_ps(l, v);
    return ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
}

#include "kernels/cpu/matmul_tmpl.h"
#endif
