/*
 * elementwise_avx2.c — elementwise_tmpl.h on 8 F32 / 4 F64 lanes (isa.h
 * "avx2").  Compiled with the avx2 flags whatever ARCH is (Makefile).
 */
#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/elementwise_isa.h"
#include "kernels/cpu/ew_avx2.h"

typedef __m256d ew_vd;
#define EW_VW 8

static inline ew_v ew_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void ew_store(float *p, ew_v v) { _mm256_storeu_ps(p, v); }
static inline ew_v ew_div(ew_v a, ew_v b) { return _mm256_div_ps(a, b); }
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
