/*
 * attention_avx512.c — the attention's AVX-512 path (isa.h "avx512", and
 * "avx512bf16", whose BF16 dot products would round the F32 queries): dot
 * products with two 16-lane FMA accumulators (even and odd vectors, the
 * head_dim % 16 tail as one masked step into the first), summed in a fixed
 * order; V accumulation and rescale 16 lanes at a time; BF16 K/V widened by
 * a shift, F16 by vcvtph2ps.  Compiled with the avx512 flags whatever ARCH
 * is (Makefile); the kernel itself is attention_tmpl.h.
 */
#if defined(__x86_64__)
#include <immintrin.h>

#include "kernels/cpu/attention_isa.h"
#include "kernels/cpu/cpu.h"

static inline __mmask16 att_tail(int t) { return (__mmask16)((1u << t) - 1); }

static inline float att_dot(const float *a, const float *b, int n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    if (i + 16 <= n) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        i += 16;
    }
    if (i < n) {
        const __mmask16 k = att_tail(n - i);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + i), _mm512_maskz_loadu_ps(k, b + i), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

static inline void att_axpy(float *acc, float w, const float *v, int n) {
    const __m512 wv = _mm512_set1_ps(w);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(acc + i, _mm512_fmadd_ps(wv, _mm512_loadu_ps(v + i), _mm512_loadu_ps(acc + i)));
    if (i < n) {
        const __mmask16 k = att_tail(n - i);
        _mm512_mask_storeu_ps(acc + i, k,
                              _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(k, v + i), _mm512_maskz_loadu_ps(k, acc + i)));
    }
}

static inline void att_scal(float *acc, float c, int n) {
    const __m512 cv = _mm512_set1_ps(c);
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(acc + i, _mm512_mul_ps(cv, _mm512_loadu_ps(acc + i)));
    if (i < n) {
        const __mmask16 k = att_tail(n - i);
        _mm512_mask_storeu_ps(acc + i, k, _mm512_mul_ps(cv, _mm512_maskz_loadu_ps(k, acc + i)));
    }
}

static inline __m512 att_widen16(__m256i h, llmq_dtype dt) {
    if (dt == LLMQ_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

static inline void att_widen(float *dst, const uint16_t *src, llmq_dtype dt, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, att_widen16(_mm256_loadu_si256((const __m256i *)(src + i)), dt));
    if (i < n) {
        const __mmask16 k = att_tail(n - i);
        _mm512_mask_storeu_ps(dst + i, k, att_widen16(_mm256_maskz_loadu_epi16(k, src + i), dt));
    }
}

/* att_dot / att_axpy over 16-bit h, widened in registers: the same lanes,
 * the same order, so the same bits as on values widened beforehand. */
static inline __m512 att_h16(const uint16_t *h, llmq_dtype dt) {
    return att_widen16(_mm256_loadu_si256((const __m256i *)h), dt);
}

static inline float att_dot_h(const float *a, const uint16_t *h, llmq_dtype dt, int n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), att_h16(h + i, dt), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), att_h16(h + i + 16, dt), s1);
    }
    if (i + 16 <= n) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), att_h16(h + i, dt), s0);
        i += 16;
    }
    if (i < n) {
        const __mmask16 k = att_tail(n - i);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + i), att_widen16(_mm256_maskz_loadu_epi16(k, h + i), dt), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

static inline void att_axpy_h(float *acc, float w, const uint16_t *h, llmq_dtype dt, int n) {
    const __m512 wv = _mm512_set1_ps(w);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(acc + i, _mm512_fmadd_ps(wv, att_h16(h + i, dt), _mm512_loadu_ps(acc + i)));
    if (i < n) {
        const __mmask16 k = att_tail(n - i);
        _mm512_mask_storeu_ps(acc + i, k,
                              _mm512_fmadd_ps(wv, att_widen16(_mm256_maskz_loadu_epi16(k, h + i), dt),
                                              _mm512_maskz_loadu_ps(k, acc + i)));
    }
}

#define ATT_FN cpu_attention_avx512
#include "kernels/cpu/attention_tmpl.h"

#endif
