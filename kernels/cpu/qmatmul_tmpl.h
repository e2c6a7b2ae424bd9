/*
 * qmatmul_tmpl.h — the Q8 / Q4 weight-only matmul (out[n, m] = x[n, k] .
 * W[m, k]^T (+ bias), x F32), written once and instantiated per
 * instruction-set path (qmatmul.c: portable C vectors, "generic";
 * qmatmul_avx2.c, qmatmul_avx512.c).  Not a public header: include it once
 * per translation unit after defining
 *
 *   QM_FN(name)          the instantiation's names (name##_avx512)
 *   qm_v, qm_vi, QM_VW   F32 vector type and the zero point's type (an
 *                        int32 vector or a scalar), lanes (8 or 16)
 *   qm_zero, qm_load, qm_store, qm_fma, qm_hsum (a fixed-order horizontal sum)
 *   qm_scale(lo, hi), qm_zp(lo, hi)   a scale / zero-point vector: lanes
 *                        [0, QM_VW/2) lo, the others hi (a Q4 group is a
 *                        multiple of 8, so a 16-lane step may straddle two)
 *   qm_q8(p, s)          QM_VW int8 at p -> float(q) * s
 *   qm_q4(row, i, s, z)  the QM_VW nibbles of elements i.. of a Q4 row
 *                        (layout in quant.h) -> float(q - z) * s
 *   QM_Q4_TABLE          1: qm_q4_table(s, z) makes the vector of the 16
 *                        values float(q - z) * s, q = 0..15, and
 *                        qm_q4_lookup(row, i, t) picks them by the nibbles
 *                        (the same values); 0: qm_q4 only
 *   QM_MASKED_TAIL       1: the last k % QM_VW elements are one masked step
 *                        into the same accumulator (qm_load_tail,
 *                        qm_q8_tail, qm_q4_tail: lanes >= t are +0);
 *                        0: a scalar fmaf tail after the horizontal sum
 *   QM_RD, QM_JD         register block of the direct path (rows x inputs),
 *   QM_RD1               and its rows when there is a single input
 *   QM_RT, QM_JT         register block of the scratch path
 *   QM_RMAX, QM_JMAX     the largest of those rows / inputs
 *   QM_DIRECT_MAX_N      up to this many inputs the direct path (Q8),
 *   QM_DIRECT_MAX_N_Q4   and for Q4 (dearer to dequantize on avx2)
 *
 * Every weight is exactly float(q - z) * scale (quant.h), computed either
 * in registers straight from the packed rows (few inputs: decode is bound
 * by memory, and the packed rows are 4x / ~7x smaller than F32) or once per
 * call into the thread's F32 scratch and reused by every input (many
 * inputs).  Batch invariance (backend.h): each dot product (one weight row,
 * one input) is the same instruction sequence on both routes and whatever
 * the block it falls in — one QM_VW-lane accumulator fed in order of k, the
 * masked or scalar tail, the fixed-order horizontal sum, then + bias — so
 * neither n nor the blocking, tile or thread changes a result; only k and
 * the path do.  A block of R x J pairs keeps that many independent
 * accumulators in flight, which hides the FMA latency.
 */

/* QM_Q4S: Q4 whose groups are 8 mod 16, so a 16-lane step may straddle two */
typedef enum { QM_F32, QM_Q8, QM_Q4, QM_Q4S } QM_FN(qm_src);

/*
 * R rows x J inputs of dot products of length k: res[r * J + j].
 * QM_F32: rows r of f (row stride ldf, f[0] is row r0), the scratch.
 * QM_Q8 / QM_Q4 / QM_Q4S: rows r0 + r of the packed w.  prefetch: fetch the packed
 * rows after these while they are consumed.
 */
static inline __attribute__((always_inline)) void QM_FN(qm_kern)(int R, int J, QM_FN(qm_src) src, const float *f,
                                                                 size_t ldf, const be_weight *w, int r0, int k,
                                                                 const float *const *xs, float *res,
                                                                 int prefetch) {
    qm_v acc[QM_RMAX][QM_JMAX];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < J; j++) acc[r][j] = qm_zero();
    const be_qweight *qw = src == QM_F32 ? NULL : llmq_qweight_of(w);
    const size_t rb = src == QM_F32 ? 0 : llmq_quant_row_bytes(w);
    const uint8_t *q0 = src == QM_F32 ? NULL : (const uint8_t *)qw->q + (size_t)r0 * rb;
    const int kv = k - k % QM_VW;
    const int q4 = src == QM_Q4 || src == QM_Q4S;
    const int group = q4 ? qw->group : 0;
    const int G = q4 ? llmq_quant_groups(w) : 1;
    /* A 16-lane step straddles two groups when the group is 8 mod 16
     * (QM_Q4S): then the scale vector is rebuilt every step, else once per
     * group; with QM_Q4_TABLE a group's 16 values float(q - z) * scale are
     * a table indexed by the nibbles instead. */
    const int every = src == QM_Q4S;
    const int table = QM_Q4_TABLE && src == QM_Q4;
    (void)table;
    qm_v sv[QM_RMAX];
    qm_vi zv[QM_RMAX];
    for (int r = 0; r < R; r++) {
        sv[r] = src == QM_Q8 ? qm_scale(qw->scales[r0 + r], qw->scales[r0 + r]) : qm_zero();
        zv[r] = qm_zp(0, 0);
    }
    /* The rows are contiguous: while these R rows are consumed, fetch the
     * next R linearly (the hardware prefetcher barely trains on short
     * rows).  Each step eats R * QM_VW elements of them. */
    const uint8_t *next = q0 ? q0 + (size_t)R * rb : NULL;
    const size_t step_bytes = (size_t)R * (q4 ? QM_VW / 2 : QM_VW);
    /* group by group (Q4; one step at a time when steps straddle groups),
     * the whole row at once otherwise: the scales change between the
     * inner loops only */
    for (int g0 = 0; g0 < kv;) {
        const int gend = !q4 ? kv : every ? g0 + QM_VW : g0 + group < kv ? g0 + group : kv;
        if (q4) {
            int gl = g0 / group, gh = (g0 + QM_VW / 2) / group;
            if (gh >= G) gh = G - 1;
            for (int r = 0; r < R; r++) {
                const size_t o = (size_t)(r0 + r) * G;
#if QM_Q4_TABLE
                if (table) {
                    sv[r] = qm_q4_table(qw->scales[o + gl], qw->zeros[o + gl]);
                    continue;
                }
#endif
                sv[r] = qm_scale(qw->scales[o + gl], qw->scales[o + gh]);
                zv[r] = qm_zp(qw->zeros[o + gl], qw->zeros[o + gh]);
            }
        }
        for (int i = g0; i < gend; i += QM_VW) {
            if (prefetch) {
                const size_t off = (size_t)(i / QM_VW) * step_bytes;
                if (step_bytes >= 64)
                    for (size_t p = 0; p < step_bytes; p += 64) __builtin_prefetch(next + off + p, 0, 0);
                else if (off % 64 < step_bytes)
                    __builtin_prefetch(next + off, 0, 0);
            }
            qm_v xv[QM_JMAX];
            for (int j = 0; j < J; j++) xv[j] = qm_load(xs[j] + i);
            for (int r = 0; r < R; r++) {
                qm_v wv;
                if (src == QM_F32) wv = qm_load(f + (size_t)r * ldf + i);
                else if (src == QM_Q8) wv = qm_q8((const int8_t *)(q0 + (size_t)r * rb) + i, sv[r]);
#if QM_Q4_TABLE
                else if (table) wv = qm_q4_lookup(q0 + (size_t)r * rb, i, sv[r]);
#endif
                else wv = qm_q4(q0 + (size_t)r * rb, i, sv[r], zv[r]);
#if defined(__AVX__) /* a register that holds qm_v (without AVX none holds the generic 32 bytes) */
                if (J > 1) __asm__("" : "+v"(wv)); /* dequantize / load once, not once per input */
#endif
                for (int j = 0; j < J; j++) acc[r][j] = qm_fma(wv, xv[j], acc[r][j]);
            }
        }
        g0 = gend;
    }
#if QM_MASKED_TAIL
    if (kv < k) {
        const int t = k - kv;
        qm_v xv[QM_JMAX];
        for (int j = 0; j < J; j++) xv[j] = qm_load_tail(xs[j] + kv, t);
        for (int r = 0; r < R; r++) {
            qm_v wv;
            if (src == QM_F32) {
                wv = qm_load_tail(f + (size_t)r * ldf + kv, t);
            } else if (src == QM_Q8) {
                wv = qm_q8_tail((const int8_t *)(q0 + (size_t)r * rb) + kv, t, sv[r]);
            } else {
                /* the row's bytes are padded to whole blocks of 16 (quant.h) */
                const size_t o = (size_t)(r0 + r) * G;
                int gl = kv / group, gh = (kv + QM_VW / 2) / group;
                if (gh >= G) gh = G - 1;
                wv = qm_q4_tail(q0 + (size_t)r * rb, kv, t, qm_scale(qw->scales[o + gl], qw->scales[o + gh]),
                                qm_zp(qw->zeros[o + gl], qw->zeros[o + gh]));
            }
            for (int j = 0; j < J; j++) acc[r][j] = qm_fma(wv, xv[j], acc[r][j]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int j = 0; j < J; j++) res[r * J + j] = qm_hsum(acc[r][j]);
#else
    for (int r = 0; r < R; r++)
        for (int j = 0; j < J; j++) {
            float s = qm_hsum(acc[r][j]);
            for (int i = kv; i < k; i++)
                s = __builtin_fmaf(src == QM_F32 ? f[(size_t)r * ldf + i] : qmatmul_at(w, r0 + r, i), xs[j][i], s);
            res[r * J + j] = s;
        }
#endif
}

/* R rows x J (1..QM_JMAX, a run-time value) inputs from input j on; the
 * results to out[(j + b) * ldo + r0 + a] (+ bias[r0 + a]). */
static inline __attribute__((always_inline)) void QM_FN(qm_block)(int R, int J, QM_FN(qm_src) src, const float *f,
                                                                  size_t ldf, const be_weight *w, int r0, int k,
                                                                  const float *x, int j, float *out, int ldo,
                                                                  const float *bias, int prefetch) {
    float res[QM_RMAX * QM_JMAX];
    const float *xs[QM_JMAX];
    for (int b = 0; b < J; b++) xs[b] = x + (size_t)(j + b) * k;
    switch (J) {
#define QM_CASE(JJ)                                                                                                \
    case JJ: QM_FN(qm_kern)(R, JJ, src, f, ldf, w, r0, k, xs, res, prefetch); break;
        QM_CASE(1)
        QM_CASE(2)
        QM_CASE(3)
#if QM_JMAX >= 4
        QM_CASE(4)
#endif
#if QM_JMAX >= 5
        QM_CASE(5)
#endif
#if QM_JMAX >= 6
        QM_CASE(6)
#endif
#undef QM_CASE
    default: return;
    }
    for (int a = 0; a < R; a++)
        for (int b = 0; b < J; b++)
            out[(size_t)(j + b) * ldo + r0 + a] = res[a * J + b] + (bias ? bias[r0 + a] : 0.0f);
}

/* Rows [r0, r0 + rows) of the packed w straight from memory, all n inputs. */
static inline __attribute__((always_inline)) void QM_FN(qm_tile_direct)(QM_FN(qm_src) src, const be_weight *w,
                                                                        int r0, int rows, int k, const float *x,
                                                                        int n, float *out, int ldo,
                                                                        const float *bias) {
    int r = 0;
    if (n == 1) /* one input: more rows in flight instead */
        for (; r + QM_RD1 <= rows; r += QM_RD1)
            QM_FN(qm_block)(QM_RD1, 1, src, NULL, 0, w, r0 + r, k, x, 0, out, ldo, bias, 1);
    for (; r + QM_RD <= rows; r += QM_RD)
        for (int j = 0; j < n; j += QM_JD)
            QM_FN(qm_block)(QM_RD, n - j < QM_JD ? n - j : QM_JD, src, NULL, 0, w, r0 + r, k, x, j, out, ldo, bias,
                            j == 0);
    for (; r < rows; r++)
        for (int j = 0; j < n; j += QM_JD)
            QM_FN(qm_block)(1, n - j < QM_JD ? n - j : QM_JD, src, NULL, 0, w, r0 + r, k, x, j, out, ldo, bias, 0);
}

static void QM_FN(qm_tile_q8)(const be_weight *w, int r0, int rows, int k, const float *x, int n, float *out,
                              int ldo, const float *bias) {
    QM_FN(qm_tile_direct)(QM_Q8, w, r0, rows, k, x, n, out, ldo, bias);
}
static void QM_FN(qm_tile_q4)(const be_weight *w, int r0, int rows, int k, const float *x, int n, float *out,
                              int ldo, const float *bias) {
    if (llmq_qweight_of(w)->group % QM_VW)
        QM_FN(qm_tile_direct)(QM_Q4S, w, r0, rows, k, x, n, out, ldo, bias);
    else
        QM_FN(qm_tile_direct)(QM_Q4, w, r0, rows, k, x, n, out, ldo, bias);
}

/* Rows [r0, r0 + rows) already dequantized in f (row stride k), all n
 * inputs.  Inputs go in chunks that stay in L2 while every row block of
 * the tile (in L1) meets them. */
static void QM_FN(qm_tile_scratch)(const float *f, const be_weight *w, int r0, int rows, int k, const float *x,
                                   int n, float *out, int ldo, const float *bias) {
    const int chunk = QM_JT * 8;
    for (int j0 = 0; j0 < n; j0 += chunk) {
        const int j1 = n - j0 < chunk ? n : j0 + chunk;
        int r = 0;
        for (; r + QM_RT <= rows; r += QM_RT)
            for (int j = j0; j < j1; j += QM_JT)
                QM_FN(qm_block)(QM_RT, j1 - j < QM_JT ? j1 - j : QM_JT, QM_F32, f + (size_t)r * k, (size_t)k, w,
                                r0 + r, k, x, j, out, ldo, bias, 0);
        for (; r < rows; r++)
            for (int j = j0; j < j1; j += QM_JT)
                QM_FN(qm_block)(1, j1 - j < QM_JT ? j1 - j : QM_JT, QM_F32, f + (size_t)r * k, (size_t)k, w, r0 + r,
                                k, x, j, out, ldo, bias, 0);
    }
}

/* Row r of w dequantized into dst[k]: the values qm_kern computes in
 * registers (the same products, bit for bit). */
static void QM_FN(qm_deq_row)(float *dst, const be_weight *w, int r) {
    const be_qweight *qw = llmq_qweight_of(w);
    const int k = w->cols, kv = k - k % QM_VW;
    const uint8_t *q = (const uint8_t *)qw->q + (size_t)r * llmq_quant_row_bytes(w);
    if (w->dt == LLMQ_Q8) {
        const qm_v s = qm_scale(qw->scales[r], qw->scales[r]);
        for (int i = 0; i < kv; i += QM_VW) qm_store(dst + i, qm_q8((const int8_t *)q + i, s));
    } else {
        const int G = llmq_quant_groups(w), group = qw->group;
        const float *sc = qw->scales + (size_t)r * G;
        const uint8_t *zp = qw->zeros + (size_t)r * G;
        if (group % QM_VW == 0) { /* group by group: no step straddles two */
            for (int g0 = 0, g = 0; g0 < kv; g0 += group, g++) {
                const int end = g0 + group < kv ? g0 + group : kv;
                const qm_v s = qm_scale(sc[g], sc[g]);
                const qm_vi z = qm_zp(zp[g], zp[g]);
                for (int i = g0; i < end; i += QM_VW) qm_store(dst + i, qm_q4(q, i, s, z));
            }
        } else {
            for (int i = 0; i < kv; i += QM_VW) {
                int gl = i / group, gh = (i + QM_VW / 2) / group;
                if (gh >= G) gh = G - 1;
                qm_store(dst + i, qm_q4(q, i, qm_scale(sc[gl], sc[gh]), qm_zp(zp[gl], zp[gh])));
            }
        }
    }
    for (int i = kv; i < k; i++) dst[i] = qmatmul_at(w, r, i);
}

void QM_FN(cpu_qmatmul)(llmq_backend *be, float *out, const float *x, const be_weight *w, const float *bias, int n) {
    cpu_impl *impl = be->impl;
    const int k = w->cols, m = w->rows;
    const int widen = n > (w->dt == LLMQ_Q4 ? QM_DIRECT_MAX_N_Q4 : QM_DIRECT_MAX_N);
    int tile = 16;
    if (widen) {
        tile = (16384 / k) & ~3;
        if (tile < 4) tile = 4;
        if (tile > 64) tile = 64;
        if (cpu_scratch_reserve(impl, (size_t)tile * k)) {
            llmq_err_set(&be->err, LLMQ_ERR_NOMEM, "cpu qmatmul: no memory for a %d x %d scratch tile", tile, k);
            return;
        }
    }
    const int ntiles = (m + tile - 1) / tile;
    const long work = (long)m * k * n;
#pragma omp parallel for schedule(static) if (ntiles > 1 && work > 65536)
    for (int t = 0; t < ntiles; t++) {
        const int r0 = t * tile;
        const int rows = m - r0 < tile ? m - r0 : tile;
        if (widen) {
            float *buf = impl->scratch[omp_get_thread_num()];
            for (int r = 0; r < rows; r++) QM_FN(qm_deq_row)(buf + (size_t)r * k, w, r0 + r);
            QM_FN(qm_tile_scratch)(buf, w, r0, rows, k, x, n, out, m, bias);
        } else if (w->dt == LLMQ_Q8) {
            QM_FN(qm_tile_q8)(w, r0, rows, k, x, n, out, m, bias);
        } else {
            QM_FN(qm_tile_q4)(w, r0, rows, k, x, n, out, m, bias);
        }
    }
}
