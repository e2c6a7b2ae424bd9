/*
 * ew_avx2.h — the F32 lane helpers of vexp.h and elementwise_tmpl.h on 8
 * lanes (isa.h "avx2"), shared by elementwise_avx2.c and attention_avx2.c;
 * include it from a file compiled with the avx2 flags, before vexp.h or
 * elementwise_tmpl.h.
 */
#ifndef LLMQ_KERNELS_CPU_EW_AVX2_H
#define LLMQ_KERNELS_CPU_EW_AVX2_H

#include <immintrin.h>

typedef __m256 ew_v;
typedef __m256i ew_vi;
#define EW_FN(name) name##_avx2

static inline ew_v ew_set1(float a) { return _mm256_set1_ps(a); }
static inline ew_v ew_add(ew_v a, ew_v b) { return _mm256_add_ps(a, b); }
static inline ew_v ew_sub(ew_v a, ew_v b) { return _mm256_sub_ps(a, b); }
static inline ew_v ew_mul(ew_v a, ew_v b) { return _mm256_mul_ps(a, b); }
static inline ew_v ew_fma(ew_v a, ew_v b, ew_v c) { return _mm256_fmadd_ps(a, b, c); }
/* vminps / vmaxps return their second operand when either is NaN */
static inline ew_v ew_min(ew_v a, ew_v b) { return _mm256_min_ps(b, a); }
static inline ew_v ew_max(ew_v a, ew_v b) { return _mm256_max_ps(b, a); }
static inline ew_v ew_round(ew_v a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline ew_vi ew_cvt(ew_v a) { return _mm256_cvtps_epi32(a); }
static inline ew_v ew_pow2(ew_vi n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23));
}

#endif
