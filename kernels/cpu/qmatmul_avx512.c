/*
 * qmatmul_avx512.c — the Q8 / Q4 matmul's AVX-512 path (isa.h "avx512" and
 * "avx512bf16"): 16 weights dequantized per step in registers (int8 ->
 * int32 -> F32 times the scale; the 8 bytes of a Q4 block -> its 16
 * nibbles, minus the zero point), 16-lane FMA over 32 zmm registers (direct
 * path up to 8 inputs: 4 rows x 4 inputs, 8 rows for a single input;
 * scratch path 4 rows x 6 inputs: 24 accumulators), the k % 16 tail as one
 * masked step into the same accumulator (qmatmul_tmpl.h).  Block sizes and
 * the direct / scratch threshold measured on a 2-core Zen 5 (family 26).
 * Compiled with the avx512 flags whatever ARCH is (Makefile).
 */
#if defined(__x86_64__)
#include <immintrin.h>
#include <omp.h>
#include <stddef.h>
#include <string.h>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/qmatmul_isa.h"

typedef __m512 qm_v;
typedef __m512i qm_vi;
#define QM_VW 16
#define QM_RD 4
#define QM_RD1 8
#define QM_JD 4
#define QM_RT 4
#define QM_JT 6
#define QM_RMAX 8
#define QM_JMAX 6
/* In registers up to 32 inputs: dequantizing a block again for every 4
 * inputs costs less than widening the tile to scratch and reading it back
 * (110M, 2 threads, decode 32: INT8 ~960-1000 -> 1160-1220 tok/s, INT4
 * ~1020 -> 1165-1185); beyond, a prefill's hundreds of inputs amortise the
 * scratch. */
#define QM_DIRECT_MAX_N 32
#define QM_DIRECT_MAX_N_Q4 32
#define QM_MASKED_TAIL 1
#define QM_Q4_TABLE 1
#define QM_FN(name) name##_avx512

static inline qm_v qm_zero(void) { return _mm512_setzero_ps(); }
static inline qm_v qm_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void qm_store(float *p, qm_v v) { _mm512_storeu_ps(p, v); }
static inline qm_v qm_fma(qm_v a, qm_v b, qm_v c) { return _mm512_fmadd_ps(a, b, c); }
static inline qm_v qm_scale(float lo, float hi) {
    return _mm512_insertf32x8(_mm512_set1_ps(lo), _mm256_set1_ps(hi), 1);
}
static inline qm_vi qm_zp(int lo, int hi) {
    return _mm512_inserti64x4(_mm512_set1_epi32(lo), _mm256_set1_epi32(hi), 1);
}

static inline __attribute__((always_inline)) qm_v qm_q8(const int8_t *p, qm_v s) {
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p))), s);
}

/* The 8 bytes of a block -> [low nibbles, high nibbles] = elements 0..15. */
static inline __attribute__((always_inline)) qm_v qm_q4_bytes(__m128i b, qm_v s, qm_vi z) {
    const __m128i m = _mm_set1_epi8(15);
    const __m128i e = _mm_unpacklo_epi64(_mm_and_si128(b, m), _mm_and_si128(_mm_srli_epi16(b, 4), m));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(e), z)), s);
}
static inline __attribute__((always_inline)) qm_v qm_q4(const uint8_t *row, int i, qm_v s, qm_vi z) {
    return qm_q4_bytes(_mm_loadl_epi64((const __m128i *)(row + llmq_q4_byte(i))), s, z);
}

/* A Q4 group's 16 values float(q - z) * s, q = 0..15: the products qm_q4
 * makes, so a lookup gives the same bits. */
static inline __attribute__((always_inline)) qm_v qm_q4_table(float s, int z) {
    const __m512i q = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(q, _mm512_set1_epi32(z))), _mm512_set1_ps(s));
}
/* The 16 elements of a block by lookup: the 8 bytes twice, widened to
 * dwords, the second 8 shifted right by 4; vpermps reads only the low 4
 * bits of each index, so the high nibbles left in the first 8 do not
 * matter.  4 operations against qm_q4's 9. */
static inline __attribute__((always_inline)) qm_v qm_q4_lookup(const uint8_t *row, int i, qm_v t) {
    long long v;
    memcpy(&v, row + llmq_q4_byte(i), 8);
    const __m128i b = _mm_set1_epi64x(v);
    const __m512i sh = _mm512_set_epi32(4, 4, 4, 4, 4, 4, 4, 4, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_permutexvar_ps(_mm512_srlv_epi32(_mm512_cvtepu8_epi32(b), sh), t);
}

/* The first t (< 16) elements, the other lanes +0: a masked load reads (and
 * faults on) nothing past them. */
static inline __attribute__((always_inline)) qm_v qm_load_tail(const float *p, int t) {
    return _mm512_maskz_loadu_ps((__mmask16)((1u << t) - 1), p);
}
static inline __attribute__((always_inline)) qm_v qm_q8_tail(const int8_t *p, int t, qm_v s) {
    const __mmask16 m = (__mmask16)((1u << t) - 1);
    return _mm512_maskz_mul_ps(m, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p))), s);
}
static inline __attribute__((always_inline)) qm_v qm_q4_tail(const uint8_t *row, int i, int t, qm_v s, qm_vi z) {
    return _mm512_maskz_mov_ps((__mmask16)((1u << t) - 1), qm_q4(row, i, s, z));
}

/* Fixed order: lanes i and i + 8, then as the avx2 path. */
static inline float qm_hsum(qm_v v) {
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    float l[8];
    _mm256_storeu_ps(l, h);
    return ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
}

#include "kernels/cpu/qmatmul_tmpl.h"
#endif
