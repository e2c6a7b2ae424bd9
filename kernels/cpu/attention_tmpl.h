/*
 * attention_tmpl.h — the CPU attention kernel, written once over a few
 * vector helpers and included by each ISA's file (attention.c for
 * "generic", attention_avx2.c, attention_avx512.c), which defines before
 * the #include:
 *
 *   ATT_FN                       the function's name (an attention_fn)
 *   float att_dot(a, b, n)       sum a[i] * b[i], in an order fixed by n alone
 *   void  att_axpy(acc, w, v, n) acc[i] += w * v[i]
 *   void  att_scal(acc, c, n)    acc[i] *= c
 *   void  att_widen(dst, src, dt, n)  n BF16 / F16 elements to F32 (exact)
 *   float att_dot_h(a, h, dt, n), void att_axpy_h(acc, w, h, dt, n)
 *                                as att_dot / att_axpy over BF16 / F16 h,
 *                                widened in registers: the same operations
 *                                on the same (exactly widened) values
 *
 * or, instead of the per-score helpers, a whole row's step over a chunk:
 *
 *   ATT_ROW(qv, kr, vr, a, b, dt, scale, hd, &m, l, acc)
 *                                the row's scores against kr[a..b], the
 *                                online-softmax update of m (running max),
 *                                l (ATT_LS partial sums) and acc, with
 *                                kr / vr F32 rows, or 16-bit ones where dt
 *                                says so (the same bits either way)
 *   ATT_LS, float ATT_LSUM(l)    the partial sums' count, and their total
 *                                in a fixed order
 *   ATT_ROW2(q0, q1, kr, vr, a0, b0, a1, b1, scale, hd, &m0, l0, acc0,
 *            &m1, l1, acc1)      optional: two rows at once (F32 K/V rows),
 *                                each getting the bits ATT_ROW gives it
 *
 * Work item: one tile = up to ATTN_TILE_ROWS / group consecutive tokens of
 * one sequence x the `group` query heads that share one KV head (GQA).  The
 * tile walks the chunks of ATTN_CHUNK positions that any of its rows
 * attends to; for each chunk the K and V rows are located (block table
 * read once per block) and copied (F32) or widened (16-bit) once into
 * contiguous F32 scratch (a tile of one row, an MHA decode, reads them in
 * place instead, widening in registers), then every row of the tile takes its
 * own positions of the chunk: scores, the chunk's max, one rescale, the
 * weighted V sum (online softmax).  So K/V are read once per tile rather than once per query,
 * and a long prompt's tile works on a chunk that stays in L1/L2.
 *
 * Batch invariance (backend.h): a row's arithmetic is the same sequence
 * of operations wherever it runs.  Chunks sit at absolute positions
 * (multiples of ATTN_CHUNK), a row only ever touches its own window
 * [lo, pos] of each chunk, and the dot / axpy helpers' order depends on
 * head_dim alone; the tile decides only the order in which rows are
 * visited.  Decode, prefill, chunked prefill and any batch give the same
 * bits for a query (tests/backend/test_cpu_attention.c).
 */
#include <math.h>
#include <omp.h>

#ifndef ATT_ROW
#define ATT_LS 1
#define ATT_LSUM(l) ((l)[0])
#endif

/* The tile's row r = (token t0 + r / group, query head kvh * group + r % group). */
void ATT_FN(llmq_backend *be, void *out, const void *q, const void *k_cache, const void *v_cache,
            const be_attn_step *st, const be_attn_shape *sh) {
    cpu_impl *impl = be->impl;
    const int hd = sh->head_dim, nh = sh->n_heads, nkv = sh->n_kv_heads, group = nh / nkv;
    const int kv_dim = nkv * hd, bs = st->block_size;
    const llmq_dtype kdt = be->kv_dt;
    const size_t es = llmq_dtype_size(kdt);
    const int tq = group >= ATTN_TILE_ROWS ? 1 : ATTN_TILE_ROWS / group; /* tokens per tile */
    const int rows_max = tq * group;
    int n_tiles = 0;
    for (int s = 0; s < st->n_seqs; s++) n_tiles += (st->tok_start[s + 1] - st->tok_start[s] + tq - 1) / tq;
    const int items = n_tiles * nkv;
    /* per thread: acc [rows][hd], m [rows], l [rows][ATT_LS], K and V in F32 [chunk][hd] */
    const size_t need = (size_t)rows_max * (hd + 1 + ATT_LS) + (size_t)2 * ATTN_CHUNK * hd;
    if (cpu_scratch_reserve(impl, need)) {
        llmq_err_set(&be->err, LLMQ_ERR_NOMEM, "cpu attention: out of memory for %zu floats of scratch", need);
        return;
    }
#pragma omp parallel for schedule(dynamic, 1) if (items > 1)
    for (int it = 0; it < items; it++) {
        float *const acc = impl->scratch[omp_get_thread_num()];
        float *const mx = acc + (size_t)rows_max * hd, *const lsum = mx + rows_max;
        float *const kbuf = lsum + (size_t)rows_max * ATT_LS, *const vbuf = kbuf + (size_t)ATTN_CHUNK * hd;
        const int kvh = it % nkv;
        int tile = it / nkv, s = 0, t0 = 0;
        for (;; s++) { /* the sequence and first token of tile number `tile` */
            const int len = st->tok_start[s + 1] - st->tok_start[s], nt = (len + tq - 1) / tq;
            if (tile < nt) {
                t0 = st->tok_start[s] + tile * tq;
                break;
            }
            tile -= nt;
        }
        const int t1 = t0 + tq < st->tok_start[s + 1] ? t0 + tq : st->tok_start[s + 1];
        const int rows = (t1 - t0) * group;
        const int32_t *bt = st->block_tables + (size_t)s * st->max_blocks;
        const size_t koff = (size_t)kvh * hd;
        int pmin = INT32_MAX, pmax = -1;
        for (int t = t0; t < t1; t++) {
            const int pos = st->positions[t], lo = sh->window > 0 && pos - sh->window + 1 > 0 ? pos - sh->window + 1 : 0;
            if (lo < pmin) pmin = lo;
            if (pos > pmax) pmax = pos;
        }
        for (int r = 0; r < rows; r++) mx[r] = -INFINITY;
        for (int i = 0; i < rows * ATT_LS; i++) lsum[i] = 0.0f;
        for (size_t i = 0; i < (size_t)rows * hd; i++) acc[i] = 0.0f;
        /* one row: 16-bit K/V read in place (att_dot_h), nothing to share */
        const int direct = kdt != LLMQ_F32 && rows == 1;
        const void *kr[ATTN_CHUNK], *vr[ATTN_CHUNK];
#ifndef ATT_ROW
        float sc[ATTN_CHUNK];
#endif
        for (int c0 = pmin / ATTN_CHUNK * ATTN_CHUNK; c0 <= pmax; c0 += ATTN_CHUNK) {
            /* locate (and widen) the chunk's rows that some row of the tile reads */
            const int a = c0 > pmin ? c0 : pmin, b = c0 + ATTN_CHUNK - 1 < pmax ? c0 + ATTN_CHUNK - 1 : pmax;
            size_t base = 0;
            for (int p = a; p <= b; p++) {
                if (p == a || p % bs == 0) base = (size_t)bt[p / bs] * bs;
                const size_t row = (base + (size_t)(p % bs)) * kv_dim + koff;
                if (direct || (kdt == LLMQ_F32 && rows == 1)) {
                    kr[p - c0] = (const char *)k_cache + row * es;
                    vr[p - c0] = (const char *)v_cache + row * es;
                } else {
                    float *kd = kbuf + (size_t)(p - c0) * hd, *vd = vbuf + (size_t)(p - c0) * hd;
                    if (kdt == LLMQ_F32) { /* copied: rows one stride apart rather than kv_dim */
                        memcpy(kd, (const float *)k_cache + row, (size_t)hd * sizeof(float));
                        memcpy(vd, (const float *)v_cache + row, (size_t)hd * sizeof(float));
                    } else {
                        att_widen(kd, (const uint16_t *)((const char *)k_cache + row * es), kdt, hd);
                        att_widen(vd, (const uint16_t *)((const char *)v_cache + row * es), kdt, hd);
                    }
                    kr[p - c0] = kd;
                    vr[p - c0] = vd;
                }
            }
#ifdef ATT_ROW2
            int pr = -1, pa = 0, pb = 0; /* a row waiting for a second one */
            const float *pq = NULL;
#endif
            for (int t = t0; t < t1; t++) {
                const int pos = st->positions[t];
                const int lo = sh->window > 0 && pos - sh->window + 1 > 0 ? pos - sh->window + 1 : 0;
                const int ca = c0 > lo ? c0 : lo, cb = c0 + ATTN_CHUNK - 1 < pos ? c0 + ATTN_CHUNK - 1 : pos;
                if (ca > cb) continue;
                for (int g = 0; g < group; g++) {
                    const int r = (t - t0) * group + g;
                    const float *qv = (const float *)q + (size_t)t * nh * hd + (size_t)(kvh * group + g) * hd;
                    float *ac = acc + (size_t)r * hd;
#if defined(ATT_ROW2)
                    if (pr < 0) {
                        pr = r, pq = qv, pa = ca - c0, pb = cb - c0;
                    } else {
                        ATT_ROW2(pq, qv, kr, vr, pa, pb, ca - c0, cb - c0, sh->scale, hd, &mx[pr],
                                 lsum + (size_t)pr * ATT_LS, acc + (size_t)pr * hd, &mx[r], lsum + (size_t)r * ATT_LS,
                                 ac);
                        pr = -1;
                    }
#elif defined(ATT_ROW)
                    ATT_ROW(qv, kr, vr, ca - c0, cb - c0, direct ? kdt : LLMQ_F32, sh->scale, hd, &mx[r],
                            lsum + (size_t)r * ATT_LS, ac);
#else
                    float cmax = -INFINITY;
                    for (int p = ca; p <= cb; p++) {
                        const float v = (direct ? att_dot_h(qv, kr[p - c0], kdt, hd) : att_dot(qv, kr[p - c0], hd)) *
                                        sh->scale;
                        sc[p - c0] = v;
                        if (v > cmax) cmax = v;
                    }
                    if (cmax > mx[r]) {
                        const float corr = expf(mx[r] - cmax);
                        lsum[r] *= corr;
                        att_scal(ac, corr, hd);
                        mx[r] = cmax;
                    }
                    for (int p = ca; p <= cb; p++) {
                        const float w = expf(sc[p - c0] - mx[r]);
                        lsum[r] += w;
                        if (direct) att_axpy_h(ac, w, vr[p - c0], kdt, hd);
                        else att_axpy(ac, w, vr[p - c0], hd);
                    }
#endif
                }
            }
#ifdef ATT_ROW2
            if (pr >= 0)
                ATT_ROW(pq, kr, vr, pa, pb, direct ? kdt : LLMQ_F32, sh->scale, hd, &mx[pr], lsum + (size_t)pr * ATT_LS,
                        acc + (size_t)pr * hd);
#endif
        }
        for (int r = 0; r < rows; r++) {
            const int t = t0 + r / group, h = kvh * group + r % group;
            float *o = (float *)out + (size_t)t * nh * hd + (size_t)h * hd;
            const float inv = 1.0f / ATT_LSUM(lsum + (size_t)r * ATT_LS), *ac = acc + (size_t)r * hd;
            for (int d = 0; d < hd; d++) o[d] = ac[d] * inv;
        }
    }
}
