/*
 * attention_avx512.c — the attention's AVX-512 path (isa.h "avx512", and
 * "avx512bf16", whose BF16 dot products would round the F32 queries).  It
 * gives attention_tmpl.h a whole row's step over a chunk (ATT_ROW,
 * att_row): scores 16 keys at a time with one accumulator per key along
 * head_dim (16-wide FMAs in order, the tail masked) summed by one
 * transposing tree, the softmax weights by vexp.h (masked lanes 0, their
 * sum in 16 lanes by position % 16), and P.V with the row's output in
 * registers; BF16 K/V widened by a shift, F16 by vcvtph2ps, in registers
 * or once per tile (exact, so the same bits).  Every step of a row is the
 * same whatever else the tile holds, so a query's bits do not depend on
 * the tile, the step or the batch.  Compiled with the avx512 flags
 * whatever ARCH is (Makefile).
 */
#if defined(__x86_64__)
#include <immintrin.h>
#include <math.h>

#include "kernels/cpu/attention_isa.h"
#include "kernels/cpu/cpu.h"

static inline __mmask16 att_tail(int t) { return (__mmask16)((1u << t) - 1); }

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

/* The softmax's exp: vexp.h over these lanes (the same code as swiglu's). */
#include "kernels/cpu/ew_avx512.h"
#include "kernels/cpu/vexp.h"

#define ATT_INLINE static inline __attribute__((always_inline))

/* 16 elements of a K or V row from element i: F32, or 16-bit widened in
 * registers (exactly, so the same values either way); masked: lanes of k. */
ATT_INLINE __m512 att_ld(const void *row, int i, llmq_dtype dt) {
    if (dt == LLMQ_F32) return _mm512_loadu_ps((const float *)row + i);
    return att_widen16(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + i)), dt);
}

ATT_INLINE __m512 att_ld_m(const void *row, int i, __mmask16 k, llmq_dtype dt) {
    if (dt == LLMQ_F32) return _mm512_maskz_loadu_ps(k, (const float *)row + i);
    return att_widen16(_mm256_maskz_loadu_epi16(k, (const uint16_t *)row + i), dt);
}

/* Lane j of the result = the sum of s[j]'s 16 lanes, all 16 by one
 * transposing tree: lanes i and i + 8 first, then i and i + 4, then
 * (0 + 2) and (1 + 3), then those two.  Every stage adds two parts of the
 * same s[j], so s[j]'s sum is the same whatever the other 15 hold. */
ATT_INLINE __m512 att_hsum16(const __m512 *s) {
    __m512 a[8], b[4], c[2];
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++)
        a[j] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * j], s[2 * j + 1], 0x44),
                             _mm512_shuffle_f32x4(s[2 * j], s[2 * j + 1], 0xee));
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) /* b[j]'s quarters: s[4j] .. s[4j + 3] */
        b[j] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * j], a[2 * j + 1], 0x88),
                             _mm512_shuffle_f32x4(a[2 * j], a[2 * j + 1], 0xdd));
#pragma GCC unroll 2
    for (int j = 0; j < 2; j++)
        c[j] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * j], b[2 * j + 1], 0x44), _mm512_shuffle_ps(b[2 * j], b[2 * j + 1], 0xee));
    /* lane 4q + j holds s[q + 4j]'s sum */
    const __m512 r = _mm512_add_ps(_mm512_shuffle_ps(c[0], c[1], 0x88), _mm512_shuffle_ps(c[0], c[1], 0xdd));
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), r);
}

/* q . k[j] for 16 keys at once (16 accumulators, one per key: an FMA per
 * 16 elements of head_dim in order, the tail masked, then att_hsum16). */
ATT_INLINE __m512 att_dot16(const float *q, const void *const *k, llmq_dtype dt, int n) {
    __m512 s[16];
#pragma GCC unroll 16
    for (int j = 0; j < 16; j++) s[j] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 qv = _mm512_loadu_ps(q + i);
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++) s[j] = _mm512_fmadd_ps(qv, att_ld(k[j], i, dt), s[j]);
    }
    if (i < n) {
        const __mmask16 m = att_tail(n - i);
        const __m512 qv = _mm512_maskz_loadu_ps(m, q + i);
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++) s[j] = _mm512_fmadd_ps(qv, att_ld_m(k[j], i, m, dt), s[j]);
    }
    return att_hsum16(s);
}

/* acc[c .. c + 16 nv) += sum over p in [a, b] of w[p] v[p] (the last
 * vector's lanes: `last`), in registers: per lane, one FMA per position in
 * order. */
ATT_INLINE void att_pv_n(float *acc, const float *w, const void *const *vr, int a, int b, llmq_dtype dt, int c, int nv,
                         __mmask16 last) {
    __m512 s[8];
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++)
        if (j < nv) s[j] = j < nv - 1 ? _mm512_loadu_ps(acc + c + 16 * j) : _mm512_maskz_loadu_ps(last, acc + c + 16 * j);
    for (int p = a; p <= b; p++) {
        const __m512 wv = _mm512_set1_ps(w[p]);
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
            if (j < nv)
                s[j] = _mm512_fmadd_ps(wv, j < nv - 1 ? att_ld(vr[p], c + 16 * j, dt) : att_ld_m(vr[p], c + 16 * j, last, dt),
                                       s[j]);
    }
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++)
        if (j < nv) {
            if (j < nv - 1) _mm512_storeu_ps(acc + c + 16 * j, s[j]);
            else _mm512_mask_storeu_ps(acc + c + 16 * j, last, s[j]);
        }
}

ATT_INLINE void att_pv(float *acc, const float *w, const void *const *vr, int a, int b, llmq_dtype dt, int hd) {
    for (int c = 0; c < hd; c += 128) { /* column blocks of up to 8 vectors */
        const int n = hd - c < 128 ? hd - c : 128, nv = (n + 15) / 16;
        const __mmask16 last = n % 16 ? att_tail(n % 16) : (__mmask16)0xffff;
        switch (nv) {
        case 1: att_pv_n(acc, w, vr, a, b, dt, c, 1, last); break;
        case 2: att_pv_n(acc, w, vr, a, b, dt, c, 2, last); break;
        case 3: att_pv_n(acc, w, vr, a, b, dt, c, 3, last); break;
        case 4: att_pv_n(acc, w, vr, a, b, dt, c, 4, last); break;
        case 5: att_pv_n(acc, w, vr, a, b, dt, c, 5, last); break;
        case 6: att_pv_n(acc, w, vr, a, b, dt, c, 6, last); break;
        case 7: att_pv_n(acc, w, vr, a, b, dt, c, 7, last); break;
        default: att_pv_n(acc, w, vr, a, b, dt, c, 8, last); break;
        }
    }
}

/* The online-softmax update of one row from its scores sc[g0..g1] (lanes
 * in[g]): the chunk's max, one rescale of l and acc, then the weights w by
 * vexp.h (lanes outside in[g] 0) summed into l's 16 lanes (lane = position
 * % 16, so the sums do not depend on what else the tile holds). */
ATT_INLINE void att_softmax(const __m512 *sc, const __mmask16 *in, int g0, int g1, int hd, float *m, float *l,
                            float *acc, float *w) {
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (int g = g0; g <= g1; g++) vmax = _mm512_mask_max_ps(vmax, in[g], vmax, sc[g]);
    const float cmax = _mm512_reduce_max_ps(vmax);
    __m512 ls = _mm512_loadu_ps(l);
    if (cmax > *m) {
        const __m512 corr = ew_exp_avx512(_mm512_set1_ps(*m - cmax));
        ls = _mm512_mul_ps(ls, corr);
        att_scal(acc, _mm512_cvtss_f32(corr), hd);
        *m = cmax;
    }
    const __m512 mv = _mm512_set1_ps(*m);
    for (int g = g0; g <= g1; g++) {
        const __m512 e = _mm512_maskz_mov_ps(in[g], ew_exp_avx512(_mm512_sub_ps(sc[g], mv)));
        ls = _mm512_add_ps(ls, e);
        _mm512_storeu_ps(w + 16 * g, e);
    }
    _mm512_storeu_ps(l, ls);
}

/* Lanes j of the mask: position 16 g + j in [a, b]. */
static inline __mmask16 att_in(int g, int a, int b) {
    unsigned bits = 0;
    for (int j = 0; j < 16; j++) bits |= (unsigned)(g * 16 + j >= a && g * 16 + j <= b) << j;
    return (__mmask16)bits;
}

/* One row against positions [a, b] of a chunk (attention_tmpl.h's ATT_ROW):
 * scores 16 keys at a time (att_dot16; a key outside [a, b] is computed on
 * row a and masked out), att_softmax, then P.V. */
ATT_INLINE void att_row_t(const float *qv, const void *const *kr, const void *const *vr, int a, int b, llmq_dtype dt,
                          float scale, int hd, float *m, float *l, float *acc) {
    __m512 sc[ATTN_CHUNK / 16];
    __mmask16 in[ATTN_CHUNK / 16];
    const int g0 = a / 16, g1 = b / 16;
    for (int g = g0; g <= g1; g++) {
        const void *k[16];
        for (int j = 0; j < 16; j++) k[j] = kr[g * 16 + j >= a && g * 16 + j <= b ? g * 16 + j : a];
        in[g] = att_in(g, a, b);
        sc[g] = _mm512_mul_ps(att_dot16(qv, k, dt, hd), _mm512_set1_ps(scale));
    }
    float w[ATTN_CHUNK];
    att_softmax(sc, in, g0, g1, hd, m, l, acc, w);
    att_pv(acc, w, vr, a, b, dt, hd);
}

static void att_row(const float *qv, const void *const *kr, const void *const *vr, int a, int b, llmq_dtype dt,
                    float scale, int hd, float *m, float *l, float *acc) {
    if (dt == LLMQ_F32) att_row_t(qv, kr, vr, a, b, LLMQ_F32, scale, hd, m, l, acc);
    else if (dt == LLMQ_BF16) att_row_t(qv, kr, vr, a, b, LLMQ_BF16, scale, hd, m, l, acc);
    else att_row_t(qv, kr, vr, a, b, LLMQ_F16, scale, hd, m, l, acc);
}

/* Two rows' dots with 8 keys (F32): lanes 0-7 row 0's, 8-15 row 1's, each
 * with the very operations of att_dot16 (one accumulator per dot, FMAs in
 * order along head_dim, the same tree), sharing the key loads. */
ATT_INLINE __m512 att_dot2x8(const float *q0, const float *q1, const void *const *k, int n) {
    __m512 s[16];
#pragma GCC unroll 16
    for (int j = 0; j < 16; j++) s[j] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 x0 = _mm512_loadu_ps(q0 + i), x1 = _mm512_loadu_ps(q1 + i);
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            const __m512 kv = _mm512_loadu_ps((const float *)k[j] + i);
            s[j] = _mm512_fmadd_ps(x0, kv, s[j]);
            s[8 + j] = _mm512_fmadd_ps(x1, kv, s[8 + j]);
        }
    }
    if (i < n) {
        const __mmask16 mk = att_tail(n - i);
        const __m512 x0 = _mm512_maskz_loadu_ps(mk, q0 + i), x1 = _mm512_maskz_loadu_ps(mk, q1 + i);
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            const __m512 kv = _mm512_maskz_loadu_ps(mk, (const float *)k[j] + i);
            s[j] = _mm512_fmadd_ps(x0, kv, s[j]);
            s[8 + j] = _mm512_fmadd_ps(x1, kv, s[8 + j]);
        }
    }
    return att_hsum16(s);
}

/* att_pv_n for two rows over the same positions, sharing the V loads. */
ATT_INLINE void att_pv2_n(float *acc0, float *acc1, const float *w0, const float *w1, const void *const *vr, int a,
                          int b, int c, int nv, __mmask16 last) {
    __m512 s0[8], s1[8];
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++)
        if (j < nv) {
            const __mmask16 mk = j < nv - 1 ? (__mmask16)0xffff : last;
            s0[j] = _mm512_maskz_loadu_ps(mk, acc0 + c + 16 * j);
            s1[j] = _mm512_maskz_loadu_ps(mk, acc1 + c + 16 * j);
        }
    for (int p = a; p <= b; p++) {
        const __m512 x0 = _mm512_set1_ps(w0[p]), x1 = _mm512_set1_ps(w1[p]);
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
            if (j < nv) {
                const __mmask16 mk = j < nv - 1 ? (__mmask16)0xffff : last;
                const __m512 v = _mm512_maskz_loadu_ps(mk, (const float *)vr[p] + c + 16 * j);
                s0[j] = _mm512_fmadd_ps(x0, v, s0[j]);
                s1[j] = _mm512_fmadd_ps(x1, v, s1[j]);
            }
    }
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++)
        if (j < nv) {
            const __mmask16 mk = j < nv - 1 ? (__mmask16)0xffff : last;
            _mm512_mask_storeu_ps(acc0 + c + 16 * j, mk, s0[j]);
            _mm512_mask_storeu_ps(acc1 + c + 16 * j, mk, s1[j]);
        }
}

static void att_pv2(float *acc0, float *acc1, const float *w0, const float *w1, const void *const *vr, int a, int b,
                    int hd) {
    for (int c = 0; c < hd; c += 128) {
        const int n = hd - c < 128 ? hd - c : 128, nv = (n + 15) / 16;
        const __mmask16 last = n % 16 ? att_tail(n % 16) : (__mmask16)0xffff;
        switch (nv) {
        case 1: att_pv2_n(acc0, acc1, w0, w1, vr, a, b, c, 1, last); break;
        case 2: att_pv2_n(acc0, acc1, w0, w1, vr, a, b, c, 2, last); break;
        case 3: att_pv2_n(acc0, acc1, w0, w1, vr, a, b, c, 3, last); break;
        case 4: att_pv2_n(acc0, acc1, w0, w1, vr, a, b, c, 4, last); break;
        case 5: att_pv2_n(acc0, acc1, w0, w1, vr, a, b, c, 5, last); break;
        case 6: att_pv2_n(acc0, acc1, w0, w1, vr, a, b, c, 6, last); break;
        case 7: att_pv2_n(acc0, acc1, w0, w1, vr, a, b, c, 7, last); break;
        default: att_pv2_n(acc0, acc1, w0, w1, vr, a, b, c, 8, last); break;
        }
    }
}

/* Two rows of a tile (attention_tmpl.h's ATT_ROW2; K/V rows in F32, as a
 * tile of two rows or more has them): each row gets the bits att_row gives
 * it, with half the K and V loads.  Scores over the union of the two
 * ranges (att_dot2x8, then each row's 16 lanes moved together: data
 * movement only), each row's own att_softmax, then P.V in position order
 * for each row: the positions only one row reads alone (att_pv), the
 * shared ones together (att_pv2), never a zero weight times a V row that
 * the row does not read. */
static void att_row2(const float *q0, const float *q1, const void *const *kr, const void *const *vr, int a0, int b0,
                     int a1, int b1, float scale, int hd, float *m0, float *l0, float *acc0, float *m1, float *l1,
                     float *acc1) {
    __m512 sc0[ATTN_CHUNK / 16], sc1[ATTN_CHUNK / 16];
    __mmask16 in0[ATTN_CHUNK / 16], in1[ATTN_CHUNK / 16];
    const int a = a0 < a1 ? a0 : a1, b = b0 > b1 ? b0 : b1;
    for (int g = a / 16; g <= b / 16; g++) {
        const void *k[16];
        for (int j = 0; j < 16; j++) k[j] = kr[g * 16 + j >= a && g * 16 + j <= b ? g * 16 + j : a];
        in0[g] = att_in(g, a0, b0);
        in1[g] = att_in(g, a1, b1);
        const __m512 lo = att_dot2x8(q0, q1, k, hd), hi = att_dot2x8(q0, q1, k + 8, hd);
        sc0[g] = _mm512_mul_ps(_mm512_shuffle_f32x4(lo, hi, 0x44), _mm512_set1_ps(scale));
        sc1[g] = _mm512_mul_ps(_mm512_shuffle_f32x4(lo, hi, 0xee), _mm512_set1_ps(scale));
    }
    float w0[ATTN_CHUNK], w1[ATTN_CHUNK];
    att_softmax(sc0, in0, a0 / 16, b0 / 16, hd, m0, l0, acc0, w0);
    att_softmax(sc1, in1, a1 / 16, b1 / 16, hd, m1, l1, acc1, w1);
    const int ia = a0 > a1 ? a0 : a1, ib = b0 < b1 ? b0 : b1;
    if (ia > ib) {
        att_pv(acc0, w0, vr, a0, b0, LLMQ_F32, hd);
        att_pv(acc1, w1, vr, a1, b1, LLMQ_F32, hd);
        return;
    }
    if (a0 < ia) att_pv(acc0, w0, vr, a0, ia - 1, LLMQ_F32, hd);
    if (a1 < ia) att_pv(acc1, w1, vr, a1, ia - 1, LLMQ_F32, hd);
    att_pv2(acc0, acc1, w0, w1, vr, ia, ib, hd);
    if (b0 > ib) att_pv(acc0, w0, vr, ib + 1, b0, LLMQ_F32, hd);
    if (b1 > ib) att_pv(acc1, w1, vr, ib + 1, b1, LLMQ_F32, hd);
}

#define ATT_ROW2 att_row2
#define ATT_ROW att_row
#define ATT_LS 16
#define ATT_LSUM(l) _mm512_reduce_add_ps(_mm512_loadu_ps(l))

#define ATT_FN cpu_attention_avx512
#include "kernels/cpu/attention_tmpl.h"

#endif
