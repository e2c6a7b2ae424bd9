/*
 * attention_avx2.c — the attention's AVX2 path (isa.h "avx2"): dot products
 * with two 8-lane FMA accumulators (even and odd vectors, the head_dim % 8
 * tail as one masked step into the first), summed in a fixed order; V
 * accumulation and rescale 8 lanes at a time; BF16 K/V widened by a shift,
 * F16 by F16C.  Compiled with the avx2 flags whatever ARCH is (Makefile);
 * the kernel itself is attention_tmpl.h.
 */
#if defined(__x86_64__)
#include <immintrin.h>
#include <math.h>

#include "kernels/cpu/attention_isa.h"
#include "kernels/cpu/cpu.h"

/* Lanes [0, t) of a maskload / maskstore (t < 8). */
static inline __m256i att_tail(int t) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(t), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline float att_dot(const float *a, const float *b, int n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    if (i + 8 <= n) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        i += 8;
    }
    if (i < n) {
        const __m256i k = att_tail(n - i);
        s0 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, k), _mm256_maskload_ps(b + i, k), s0);
    }
    const __m256 s = _mm256_add_ps(s0, s1);
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

static inline void att_axpy(float *acc, float w, const float *v, int n) {
    const __m256 wv = _mm256_set1_ps(w);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(wv, _mm256_loadu_ps(v + i), _mm256_loadu_ps(acc + i)));
    for (; i < n; i++) acc[i] = fmaf(w, v[i], acc[i]);
}

static inline void att_scal(float *acc, float c, int n) {
    const __m256 cv = _mm256_set1_ps(c);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(acc + i, _mm256_mul_ps(cv, _mm256_loadu_ps(acc + i)));
    for (; i < n; i++) acc[i] *= c;
}

static inline void att_widen(float *dst, const uint16_t *src, llmq_dtype dt, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm_loadu_si128((const __m128i *)(src + i));
        _mm256_storeu_ps(dst + i, dt == LLMQ_BF16
                                      ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
                                      : _mm256_cvtph_ps(h));
    }
    for (; i < n; i++) dst[i] = dt == LLMQ_BF16 ? bf16_to_f32(src[i]) : f16_to_f32(src[i]);
}

/* att_dot / att_axpy over 16-bit h, widened in registers: the same lanes,
 * the same order, so the same bits as on values widened beforehand. */
static inline __m256 att_h8(const uint16_t *h, llmq_dtype dt) {
    const __m128i x = _mm_loadu_si128((const __m128i *)h);
    return dt == LLMQ_BF16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(x), 16)) : _mm256_cvtph_ps(x);
}

static inline float att_dot_h(const float *a, const uint16_t *h, llmq_dtype dt, int n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), att_h8(h + i, dt), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), att_h8(h + i + 8, dt), s1);
    }
    if (i + 8 <= n) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), att_h8(h + i, dt), s0);
        i += 8;
    }
    if (i < n) {
        float t[8] = {0};
        att_widen(t, h + i, dt, n - i);
        const __m256i k = att_tail(n - i);
        s0 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, k), _mm256_loadu_ps(t), s0);
    }
    const __m256 s = _mm256_add_ps(s0, s1);
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

static inline void att_axpy_h(float *acc, float w, const uint16_t *h, llmq_dtype dt, int n) {
    const __m256 wv = _mm256_set1_ps(w);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(wv, att_h8(h + i, dt), _mm256_loadu_ps(acc + i)));
    for (; i < n; i++) acc[i] = fmaf(w, dt == LLMQ_BF16 ? bf16_to_f32(h[i]) : f16_to_f32(h[i]), acc[i]);
}

#define ATT_FN cpu_attention_avx2
#include "kernels/cpu/attention_tmpl.h"

#endif
