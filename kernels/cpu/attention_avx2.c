/*
 * attention_avx2.c — the attention's AVX2 path (isa.h "avx2"): attention_avx512.c's
 * row step (ATT_ROW) on 8 lanes: scores 8 keys at a time with one
 * accumulator per key along head_dim (8-wide FMAs in order, the tail
 * zero-padded) summed by one transposing tree, the softmax weights by
 * vexp.h (their sum in 8 lanes by position % 8), P.V with the row's
 * output in registers; BF16 K/V widened by a shift, F16 by F16C, in
 * registers or once per tile (exact, so the same bits).  Compiled with the
 * avx2 flags whatever ARCH is (Makefile); the kernel itself is
 * attention_tmpl.h.
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

/* 8 16-bit elements widened in registers (exactly). */
static inline __m256 att_h8(const uint16_t *h, llmq_dtype dt) {
    const __m128i x = _mm_loadu_si128((const __m128i *)h);
    return dt == LLMQ_BF16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(x), 16)) : _mm256_cvtph_ps(x);
}

/* The softmax's exp: vexp.h over these lanes (the same code as swiglu's). */
#include "kernels/cpu/ew_avx2.h"
#include "kernels/cpu/vexp.h"

#define ATT_INLINE static inline __attribute__((always_inline))

/* 8 elements of a K or V row from element i, F32 or widened 16-bit
 * (exactly); _m: only the first t < 8 of them, the other lanes 0. */
ATT_INLINE __m256 att_ld(const void *row, int i, llmq_dtype dt) {
    if (dt == LLMQ_F32) return _mm256_loadu_ps((const float *)row + i);
    return att_h8((const uint16_t *)row + i, dt);
}

ATT_INLINE __m256 att_ld_m(const void *row, int i, int t, llmq_dtype dt) {
    if (dt == LLMQ_F32) return _mm256_maskload_ps((const float *)row + i, att_tail(t));
    float x[8] = {0};
    att_widen(x, (const uint16_t *)row + i, dt, t);
    return _mm256_loadu_ps(x);
}

/* Lane j of the result = the sum of s[j]'s 8 lanes, all 8 by one
 * transposing tree (lanes i and i + 4, then (0 + 2) and (1 + 3), then
 * those two): each stage adds two parts of the same s[j]. */
ATT_INLINE __m256 att_hsum8(const __m256 *s) {
    __m256 x[4], y[2];
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++)
        x[j] = _mm256_add_ps(_mm256_permute2f128_ps(s[2 * j], s[2 * j + 1], 0x20),
                             _mm256_permute2f128_ps(s[2 * j], s[2 * j + 1], 0x31));
#pragma GCC unroll 2
    for (int j = 0; j < 2; j++)
        y[j] = _mm256_add_ps(_mm256_shuffle_ps(x[2 * j], x[2 * j + 1], 0x44), _mm256_shuffle_ps(x[2 * j], x[2 * j + 1], 0xee));
    /* lanes: s0 s2 s4 s6 | s1 s3 s5 s7 */
    const __m256 z = _mm256_add_ps(_mm256_shuffle_ps(y[0], y[1], 0x88), _mm256_shuffle_ps(y[0], y[1], 0xdd));
    return _mm256_permutevar8x32_ps(z, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* q . k[j] for 8 keys (one accumulator per key, FMAs in order along
 * head_dim, the tail zero-padded, then att_hsum8). */
ATT_INLINE __m256 att_dot8(const float *q, const void *const *k, llmq_dtype dt, int n) {
    __m256 s[8];
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++) s[j] = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 qv = _mm256_loadu_ps(q + i);
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) s[j] = _mm256_fmadd_ps(qv, att_ld(k[j], i, dt), s[j]);
    }
    if (i < n) {
        const __m256 qv = _mm256_maskload_ps(q + i, att_tail(n - i));
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) s[j] = _mm256_fmadd_ps(qv, att_ld_m(k[j], i, n - i, dt), s[j]);
    }
    return att_hsum8(s);
}

/* acc[c .. c + n) += sum over p in [a, b] of w[p] v[p] (n <= 64), in
 * registers: per lane, one FMA per position in order. */
ATT_INLINE void att_pv_n(float *acc, const float *w, const void *const *vr, int a, int b, llmq_dtype dt, int c, int nv,
                         int t) {
    __m256 s[8];
    const __m256i lm = att_tail(t);
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++)
        if (j < nv) s[j] = j < nv - 1 ? _mm256_loadu_ps(acc + c + 8 * j) : _mm256_maskload_ps(acc + c + 8 * j, lm);
    for (int p = a; p <= b; p++) {
        const __m256 wv = _mm256_set1_ps(w[p]);
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
            if (j < nv)
                s[j] = _mm256_fmadd_ps(wv, j < nv - 1 ? att_ld(vr[p], c + 8 * j, dt) : att_ld_m(vr[p], c + 8 * j, t, dt),
                                       s[j]);
    }
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++)
        if (j < nv) {
            if (j < nv - 1) _mm256_storeu_ps(acc + c + 8 * j, s[j]);
            else _mm256_maskstore_ps(acc + c + 8 * j, lm, s[j]);
        }
}

ATT_INLINE void att_pv(float *acc, const float *w, const void *const *vr, int a, int b, llmq_dtype dt, int hd) {
    for (int c = 0; c < hd; c += 64) { /* column blocks of up to 8 vectors; the last one's lanes: t */
        const int n = hd - c < 64 ? hd - c : 64, nv = (n + 7) / 8, t = n % 8 ? n % 8 : 8;
        switch (nv) {
        case 1: att_pv_n(acc, w, vr, a, b, dt, c, 1, t); break;
        case 2: att_pv_n(acc, w, vr, a, b, dt, c, 2, t); break;
        case 3: att_pv_n(acc, w, vr, a, b, dt, c, 3, t); break;
        case 4: att_pv_n(acc, w, vr, a, b, dt, c, 4, t); break;
        case 5: att_pv_n(acc, w, vr, a, b, dt, c, 5, t); break;
        case 6: att_pv_n(acc, w, vr, a, b, dt, c, 6, t); break;
        case 7: att_pv_n(acc, w, vr, a, b, dt, c, 7, t); break;
        default: att_pv_n(acc, w, vr, a, b, dt, c, 8, t); break;
        }
    }
}

/* One row against positions [a, b] of a chunk (attention_tmpl.h's ATT_ROW),
 * as attention_avx512.c's on 8 lanes: scores 8 keys at a time (a key
 * outside [a, b] computed on row a and masked out), the chunk's max, one
 * rescale, the weights by vexp.h summed into 8 lanes by position % 8,
 * then P.V. */
ATT_INLINE void att_row_t(const float *qv, const void *const *kr, const void *const *vr, int a, int b, llmq_dtype dt,
                          float scale, int hd, float *m, float *l, float *acc) {
    __m256 sc[ATTN_CHUNK / 8], in[ATTN_CHUNK / 8];
    const int g0 = a / 8, g1 = b / 8;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    __m256 vmax = ninf;
    for (int g = g0; g <= g1; g++) {
        const void *k[8];
        for (int j = 0; j < 8; j++) k[j] = kr[g * 8 + j >= a && g * 8 + j <= b ? g * 8 + j : a];
        const __m256i pos = _mm256_add_epi32(lane, _mm256_set1_epi32(g * 8));
        in[g] = _mm256_castsi256_ps(_mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(a), pos),
                                                        _mm256_cmpgt_epi32(_mm256_set1_epi32(b + 1), pos)));
        sc[g] = _mm256_mul_ps(att_dot8(qv, k, dt, hd), _mm256_set1_ps(scale));
        vmax = _mm256_max_ps(vmax, _mm256_blendv_ps(ninf, sc[g], in[g]));
    }
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_movehdup_ps(x));
    const float cmax = _mm_cvtss_f32(x);
    __m256 ls = _mm256_loadu_ps(l);
    if (cmax > *m) {
        const __m256 corr = ew_exp_avx2(_mm256_set1_ps(*m - cmax));
        ls = _mm256_mul_ps(ls, corr);
        att_scal(acc, _mm256_cvtss_f32(corr), hd);
        *m = cmax;
    }
    float w[ATTN_CHUNK];
    const __m256 mv = _mm256_set1_ps(*m);
    for (int g = g0; g <= g1; g++) {
        const __m256 e = _mm256_and_ps(in[g], ew_exp_avx2(_mm256_sub_ps(sc[g], mv)));
        ls = _mm256_add_ps(ls, e);
        _mm256_storeu_ps(w + 8 * g, e);
    }
    _mm256_storeu_ps(l, ls);
    att_pv(acc, w, vr, a, b, dt, hd);
}

static void att_row(const float *qv, const void *const *kr, const void *const *vr, int a, int b, llmq_dtype dt,
                    float scale, int hd, float *m, float *l, float *acc) {
    if (dt == LLMQ_F32) att_row_t(qv, kr, vr, a, b, LLMQ_F32, scale, hd, m, l, acc);
    else if (dt == LLMQ_BF16) att_row_t(qv, kr, vr, a, b, LLMQ_BF16, scale, hd, m, l, acc);
    else att_row_t(qv, kr, vr, a, b, LLMQ_F16, scale, hd, m, l, acc);
}

/* The 8 partial sums' total, in the order of att_dot's reduction. */
static inline float att_lsum(const float *l) {
    const __m256 s = _mm256_loadu_ps(l);
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

#define ATT_ROW att_row
#define ATT_LS 8
#define ATT_LSUM(l) att_lsum(l)

#define ATT_FN cpu_attention_avx2
#include "kernels/cpu/attention_tmpl.h"

#endif
