/*
 * elementwise_avx512.c — elementwise_tmpl.h on 16 F32 / 8 F64 lanes (isa.h
 * "avx512" and "avx512bf16").  Compiled with the avx512 flags whatever ARCH
 * is (Makefile).
 */
#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/elementwise_isa.h"
#include "kernels/cpu/ew_avx512.h"

typedef __m512d ew_vd;
#define EW_VW 16

static inline ew_v ew_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void ew_store(float *p, ew_v v) { _mm512_storeu_ps(p, v); }
static inline ew_v ew_div(ew_v a, ew_v b) { return _mm512_div_ps(a, b); }
static inline ew_v ew_abs(ew_v a) { return _mm512_abs_ps(a); }
static inline ew_v ew_fms(ew_v a, ew_v b, ew_v c) { return _mm512_fmsub_ps(a, b, c); }
static inline ew_v ew_if_neg(ew_v x, ew_v a, ew_v b) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ), b, a);
}
static inline ew_vd ew_dzero(void) { return _mm512_setzero_pd(); }
static inline ew_vd ew_dload(const float *x, int half) { return _mm512_cvtps_pd(_mm256_loadu_ps(x + 8 * half)); }
static inline ew_vd ew_dset1(double a) { return _mm512_set1_pd(a); }
static inline ew_vd ew_dadd(ew_vd a, ew_vd b) { return _mm512_add_pd(a, b); }
static inline ew_vd ew_dsub(ew_vd a, ew_vd b) { return _mm512_sub_pd(a, b); }
static inline ew_vd ew_dfma(ew_vd a, ew_vd b, ew_vd c) { return _mm512_fmadd_pd(a, b, c); }
static inline double ew_dsum(ew_vd a0, ew_vd a1) {
    double l[8];
    _mm512_storeu_pd(l, _mm512_add_pd(a0, a1));
    return ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
}

#include "kernels/cpu/elementwise_tmpl.h"
#endif
