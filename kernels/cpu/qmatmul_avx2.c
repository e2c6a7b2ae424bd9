/*
 * qmatmul_avx2.c — the Q8 / Q4 matmul's AVX2 path (isa.h "avx2"): 8 weights
 * dequantized per step in registers, 8-lane FMA over 16 ymm registers
 * (4 rows x 3 inputs: 12 accumulators), a scalar fmaf tail
 * (qmatmul_tmpl.h).  Compiled with the avx2 flags whatever ARCH is
 * (Makefile).
 */
#if defined(__x86_64__)
#include <immintrin.h>
#include <omp.h>
#include <stddef.h>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/qmatmul_isa.h"

typedef __m256 qm_v;
typedef int qm_vi; /* the zero point, broadcast where used: 16 registers are few */
#define QM_VW 8
#define QM_RD 4
#define QM_RD1 4
#define QM_JD 3
#define QM_RT 4
#define QM_JT 3
#define QM_RMAX 4
#define QM_JMAX 3
#define QM_DIRECT_MAX_N 8
#define QM_DIRECT_MAX_N_Q4 4
#define QM_MASKED_TAIL 0
#define QM_Q4_TABLE 0
#define QM_FN(name) name##_avx2

static inline qm_v qm_zero(void) { return _mm256_setzero_ps(); }
static inline qm_v qm_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void qm_store(float *p, qm_v v) { _mm256_storeu_ps(p, v); }
static inline qm_v qm_fma(qm_v a, qm_v b, qm_v c) { return _mm256_fmadd_ps(a, b, c); }
/* 8 lanes never straddle two groups (a group is a multiple of 8): lo == hi */
static inline qm_v qm_scale(float lo, float hi) { (void)hi; return _mm256_set1_ps(lo); }
static inline qm_vi qm_zp(int lo, int hi) { (void)hi; return lo; }

static inline __attribute__((always_inline)) qm_v qm_q8(const int8_t *p, qm_v s) {
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p))), s);
}
/* 8 nibbles: the low ones of a block's 8 bytes for elements 0-7, the high
 * ones for 8-15. */
static inline __attribute__((always_inline)) qm_v qm_q4(const uint8_t *row, int i, qm_v s, qm_vi z) {
    __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(row + llmq_q4_byte(i))));
    v = i & 8 ? _mm256_srli_epi32(v, 4) : _mm256_and_si256(v, _mm256_set1_epi32(15));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(v, _mm256_set1_epi32(z))), s);
}

static inline float qm_hsum(qm_v v) {
    float l[8];
    _mm256_storeu_ps(l, v);
    return ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
}

#include "kernels/cpu/qmatmul_tmpl.h"
#endif
