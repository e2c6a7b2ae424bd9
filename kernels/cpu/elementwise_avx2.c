/*
 * elementwise_avx2.c — elementwise_tmpl.h on 8 F32 / 4 F64 lanes (isa.h
 * "avx2").  Compiled with the avx2 flags whatever ARCH is (Makefile).
 */
#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/elementwise_isa.h"

typedef __m256 ew_v;
typedef __m256i ew_vi;
typedef __m256d ew_vd;
#define EW_VW 8
#define EW_FN(name) name##_avx2

static inline ew_v ew_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void ew_store(float *p, ew_v v) { _mm256_storeu_ps(p, v); }
static inline ew_v ew_set1(float a) { return _mm256_set1_ps(a); }
static inline ew_v ew_add(ew_v a, ew_v b) { return _mm256_add_ps(a, b); }
static inline ew_v ew_sub(ew_v a, ew_v b) { return _mm256_sub_ps(a, b); }
static inline ew_v ew_mul(ew_v a, ew_v b) { return _mm256_mul_ps(a, b); }
static inline ew_v ew_div(ew_v a, ew_v b) { return _mm256_div_ps(a, b); }
static inline ew_v ew_fma(ew_v a, ew_v b, ew_v c) { return _mm256_fmadd_ps(a, b, c); }
/* vminps / vmaxps return their second operand when either is NaN */
static inline ew_v ew_min(ew_v a, ew_v b) { return _mm256_min_ps(b, a); }
static inline ew_v ew_max(ew_v a, ew_v b) { return _mm256_max_ps(b, a); }
static inline ew_v ew_round(ew_v a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline ew_vi ew_cvt(ew_v a) { return _mm256_cvtps_epi32(a); }
static inline ew_v ew_pow2(ew_vi n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23));
}
static inline ew_v ew_abs(ew_v a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
static inline ew_v ew_fms(ew_v a, ew_v b, ew_v c) { return _mm256_fmsub_ps(a, b, c); }
static inline ew_v ew_if_neg(ew_v x, ew_v a, ew_v b) {
    return _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
}
static inline ew_vd ew_dzero(void) { return _mm256_setzero_pd(); }
static inline ew_vd ew_dload(const float *x, int half) { return _mm256_cvtps_pd(_mm_loadu_ps(x + 4 * half)); }
static inline ew_vd ew_dset1(double a) { return _mm256_set1_pd(a); }
static inline ew_vd ew_dadd(ew_vd a, ew_vd b) { return _mm256_add_pd(a, b); }
static inline ew_vd ew_dsub(ew_vd a, ew_vd b) { return _mm256_sub_pd(a, b); }
static inline ew_vd ew_dfma(ew_vd a, ew_vd b, ew_vd c) { return _mm256_fmadd_pd(a, b, c); }
static inline double ew_dsum(ew_vd a0, ew_vd a1) {
    double l[4];
    _mm256_storeu_pd(l, _mm256_add_pd(a0, a1));
    return (l[0] + l[2]) + (l[1] + l[3]);
}

#include "kernels/cpu/elementwise_tmpl.h"
#endif
