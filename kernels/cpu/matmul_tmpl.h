/*
 * matmul_tmpl.h — the F32/F16/BF16 matmul micro-kernel and row tile, written
 * once and instantiated per instruction-set path (matmul.c: generic,
 * matmul_avx2.c, matmul_avx512.c).  Not a public header: include it once per
 * translation unit after defining
 *
 *   MM_FN(name)         the instantiation's function names (name##_avx512)
 *   mm_vf, MM_VW        the F32 vector type and its lanes (8 or 16)
 *   mm_zero, mm_load, mm_fma, mm_hsum, mm_wload   (see the generic ones in matmul.c)
 *   MM_MASKED_TAIL      1: the last k % MM_VW elements are one masked vector
 *                       (mm_load_tail, mm_wload_tail) into the same accumulator;
 *                       0: a scalar tail after the horizontal sum (s_fma)
 *   MM_RB, MM_JB        register block: rows x inputs per micro-kernel call
 *   MM_HSUM4            (masked tail only) 1: mm_hsum4 sums 4 accumulators at
 *                       once (MM_RB is then 4); otherwise mm_hsum one by one
 *
 * Batch invariance (backend.h): each dot product (one weight row, one input)
 * is the same instruction sequence whatever the block it falls in — one
 * accumulator fed in order of k, the masked or scalar tail, a fixed-order
 * horizontal sum — so the blocking (rows, inputs, tile, thread) never
 * changes a result; only k and the path do.  A k-step of MM_VW elements per
 * (row, input) pair: a block of MM_RB x MM_JB pairs keeps that many
 * independent accumulators in flight, which is what hides the FMA latency,
 * so one accumulator per dot product is enough.
 */

/* Rows are short streams (a few KiB) that the hardware prefetcher barely
 * trains on; fetch the next R rows while these are consumed: each k-step eats
 * R * MM_VW elements, so prefetch as many bytes ahead.  Never past pf_end. */
static inline __attribute__((always_inline)) void MM_FN(mm_prefetch)(int R, const void *w, size_t es, int k,
                                                                     size_t ld, int i, const char *pf_end) {
    if (!pf_end) return;
    const char *next = (const char *)w + (size_t)R * ld * es;
    if (next + ((size_t)(R - 1) * ld + (size_t)k) * es > pf_end) return;
    if (ld == (size_t)k) { /* contiguous rows: one linear stream */
        const size_t step_bytes = (size_t)R * MM_VW * es;
        for (size_t p = 0; p < step_bytes; p += 64)
            __builtin_prefetch(next + (size_t)(i / MM_VW) * step_bytes + p, 0, 0);
    } else if (i % (int)(64 / es) < MM_VW) { /* a column slice: row by row, once per line */
        for (int r = 0; r < R; r++) __builtin_prefetch(next + ((size_t)r * ld + (size_t)i) * es, 0, 0);
    }
}

/* R rows x J inputs of dot products of length k: res[r * J + j].  w points at
 * the first of R rows (row stride ld elements of dt). */
static inline __attribute__((always_inline)) void MM_FN(mm_kern)(int R, int J, const void *w, llmq_dtype dt, int k,
                                                                 size_t ld, const float *const *xs, float *res,
                                                                 const char *pf_end) {
    mm_vf acc[MM_RB][MM_JB];
    const size_t es = dt == LLMQ_F32 ? 4 : 2;
    for (int r = 0; r < R; r++)
        for (int j = 0; j < J; j++) acc[r][j] = mm_zero();
    const int kv = k - k % MM_VW;
    for (int i = 0; i < kv; i += MM_VW) {
        mm_vf xv[MM_JB];
        MM_FN(mm_prefetch)(R, w, es, k, ld, i, pf_end);
        for (int j = 0; j < J; j++) xv[j] = mm_load(xs[j] + i);
        for (int r = 0; r < R; r++) {
            mm_vf wv = mm_wload((const char *)w + (size_t)r * ld * es, i, dt);
#if defined(__AVX512F__)
            if (J > 1) __asm__("" : "+v"(wv)); /* load each weight vector once, not once per input */
#elif defined(__AVX2__)
            if (J > 1) __asm__("" : "+x"(wv));
#endif
            for (int j = 0; j < J; j++) acc[r][j] = mm_fma(wv, xv[j], acc[r][j]);
        }
    }
#if MM_MASKED_TAIL
    if (kv < k) {
        mm_vf xv[MM_JB];
        for (int j = 0; j < J; j++) xv[j] = mm_load_tail(xs[j] + kv, k - kv);
        for (int r = 0; r < R; r++) {
            mm_vf wv = mm_wload_tail((const char *)w + (size_t)r * ld * es, kv, k - kv, dt);
            for (int j = 0; j < J; j++) acc[r][j] = mm_fma(wv, xv[j], acc[r][j]);
        }
    }
#if MM_HSUM4
    for (int j = 0; j < J; j++) {
        int r = 0;
        for (; r + 4 <= R; r += 4) {
            float s4[4];
            _mm_storeu_ps(s4, mm_hsum4(acc[r][j], acc[r + 1][j], acc[r + 2][j], acc[r + 3][j]));
            for (int a = 0; a < 4; a++) res[(r + a) * J + j] = s4[a];
        }
        for (; r < R; r++) res[r * J + j] = _mm_cvtss_f32(mm_hsum4(acc[r][j], mm_zero(), mm_zero(), mm_zero()));
    }
#else
    for (int r = 0; r < R; r++)
        for (int j = 0; j < J; j++) res[r * J + j] = mm_hsum(acc[r][j]);
#endif
#else
    for (int r = 0; r < R; r++)
        for (int j = 0; j < J; j++) {
            float s = mm_hsum(acc[r][j]);
            const void *wr = (const char *)w + (size_t)r * ld * es;
            for (int i = kv; i < k; i++) s = s_fma(w_at(wr, i, dt), xs[j][i], s);
            res[r * J + j] = s;
        }
#endif
}

/* R rows (R <= MM_RB) against inputs [j, j + J) (J <= MM_JB), results to out. */
static inline __attribute__((always_inline)) void MM_FN(mm_block)(int R, int J, const void *w, llmq_dtype dt, int k,
                                                                  size_t ld, const float *x, int j, float *out,
                                                                  int ldo, const float *bias, const char *pf_end) {
    float res[MM_RB * MM_JB];
    const float *xs[MM_JB];
    for (int b = 0; b < J; b++) xs[b] = x + (size_t)(j + b) * k;
    MM_FN(mm_kern)(R, J, w, dt, k, ld, xs, res, pf_end);
    for (int a = 0; a < R; a++)
        for (int b = 0; b < J; b++) out[(size_t)(j + b) * ldo + a] = res[a * J + b] + (bias ? bias[a] : 0.0f);
}

/* R rows against all n inputs: blocks of MM_JB inputs, then the rest as one
 * narrower block (a constant J per call, so each one compiles to registers). */
static inline __attribute__((always_inline)) void MM_FN(mm_rows)(int R, const void *w, llmq_dtype dt, int k,
                                                                 size_t ld, const float *x, int n, float *out,
                                                                 int ldo, const float *bias, const char *pf_end) {
    int j = 0;
    for (; j + MM_JB <= n; j += MM_JB)
        MM_FN(mm_block)(R, MM_JB, w, dt, k, ld, x, j, out, ldo, bias, j == 0 ? pf_end : NULL);
    const char *pf = j == 0 ? pf_end : NULL;
    switch (n - j) {
#if MM_JB > 5
    case 5: MM_FN(mm_block)(R, 5, w, dt, k, ld, x, j, out, ldo, bias, pf); break;
#endif
#if MM_JB > 4
    case 4: MM_FN(mm_block)(R, 4, w, dt, k, ld, x, j, out, ldo, bias, pf); break;
#endif
#if MM_JB > 3
    case 3: MM_FN(mm_block)(R, 3, w, dt, k, ld, x, j, out, ldo, bias, pf); break;
#endif
    case 2: MM_FN(mm_block)(R, 2, w, dt, k, ld, x, j, out, ldo, bias, pf); break;
    case 1: MM_FN(mm_block)(R, 1, w, dt, k, ld, x, j, out, ldo, bias, pf); break;
    default: break;
    }
}

/* One tile: rows [0, rows) of w (dtype DT, row stride ld) against all n
 * inputs.  Results go to out[j * ldo + r] (+ bias[r]).  Inputs in chunks of
 * about 128 KiB, which stay in L2 while every block of MM_RB rows (in L1)
 * goes past them: a prefill's inputs (512 x 768 F32 = 1.5 MiB) would
 * otherwise come from L3 once per block.  Chunks and blocks only choose
 * which dot products run together, never how one is computed. */
static inline __attribute__((always_inline)) void MM_FN(mm_tile_dt)(const void *w, llmq_dtype dt, int rows, int k,
                                                                    size_t ld, const float *x, int n, float *out,
                                                                    int ldo, const float *bias, const char *pf_end) {
    const size_t rs = ld * (dt == LLMQ_F32 ? 4 : 2); /* bytes per row */
    int nc = 32768 / (k > 0 ? k : 1) / MM_JB * MM_JB;
    if (nc < MM_JB) nc = MM_JB;
    for (int j0 = 0; j0 < n; j0 += nc) {
        const int nn = n - j0 < nc ? n - j0 : nc;
        const float *xc = x + (size_t)j0 * k;
        float *oc = out + (size_t)j0 * ldo;
        const char *pf = j0 == 0 ? pf_end : NULL; /* the next rows are fetched once, with the first chunk */
        int r = 0;
        for (; r + MM_RB <= rows; r += MM_RB)
            MM_FN(mm_rows)(MM_RB, (const char *)w + r * rs, dt, k, ld, xc, nn, oc + r, ldo, bias ? bias + r : NULL,
                           pf);
#if MM_RB > 4
        for (; r + 4 <= rows; r += 4) /* a narrower block for what is left (widened tiles of 4n rows) */
            MM_FN(mm_rows)(4, (const char *)w + r * rs, dt, k, ld, xc, nn, oc + r, ldo, bias ? bias + r : NULL, pf);
#endif
        for (; r < rows; r++)
            MM_FN(mm_rows)(1, (const char *)w + r * rs, dt, k, ld, xc, nn, oc + r, ldo, bias ? bias + r : NULL, NULL);
    }
}

/* The instantiation's entry point (matmul_isa.h: matmul_tile_fn). */
void MM_FN(cpu_matmul_tile)(const void *w, llmq_dtype dt, int rows, int k, size_t ld, const float *x, int n,
                            float *out, int ldo, const float *bias, const char *pf_end) {
    if (dt == LLMQ_F32) MM_FN(mm_tile_dt)(w, LLMQ_F32, rows, k, ld, x, n, out, ldo, bias, pf_end);
    else if (dt == LLMQ_BF16) MM_FN(mm_tile_dt)(w, LLMQ_BF16, rows, k, ld, x, n, out, ldo, bias, pf_end);
    else MM_FN(mm_tile_dt)(w, LLMQ_F16, rows, k, ld, x, n, out, ldo, bias, pf_end);
}
