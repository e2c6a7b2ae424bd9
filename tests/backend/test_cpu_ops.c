/*
 * test_cpu_ops.c — every op of the fast CPU backend against the reference
 * backend (plain loops), on many shapes: results must be finite, agree within
 * abs + rel tolerance, and never write outside their outputs (sentinels).
 * Also the batch-invariance promise of backend.h: a row computed alone and
 * inside a batch is bitwise the same, and the lifetime rule: a backend is
 * freed by its own ops table (be_ops.destroy).
 *
 * Every test runs once per instruction-set path this processor supports
 * (isa.h; the fast backend created with LLMQ_CPU_ISA set), and the matmul's
 * paths are compared with each other.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/cpu/cpu.h"
#include "tests/unit/testutil.h"

#define SENTINEL 12345.678f
#define GUARD 16

static llmq_backend *fast, *ref;
static cpu_isa isa; /* the path `fast` takes in this group */

/* The "cpu" backend on path p (LLMQ_CPU_ISA), or NULL. */
static llmq_backend *create_on(cpu_isa p) {
    setenv("LLMQ_CPU_ISA", cpu_isa_name(p), 1);
    llmq_backend *be = llmq_backend_create("cpu", NULL);
    unsetenv("LLMQ_CPU_ISA");
    return be;
}

static int setup(void **st) {
    (void)st;
    fast = create_on(isa);
    ref = llmq_backend_create("cpu-ref", NULL);
    return fast && ref && !strcmp(fast->isa, cpu_isa_name(isa)) ? 0 : -1;
}

static int teardown(void **st) {
    (void)st;
    llmq_backend_destroy(fast);
    llmq_backend_destroy(ref);
    return 0;
}

/* A float buffer of n elements with GUARD sentinels on both sides. */
static float *guarded(size_t n) {
    float *p = malloc((n + 2 * GUARD) * sizeof(float));
    for (size_t i = 0; i < n + 2 * GUARD; i++) p[i] = SENTINEL;
    return p + GUARD;
}

static void guarded_check_free(float *p, size_t n, const char *what) {
    for (int i = 1; i <= GUARD; i++)
        if (p[-i] != SENTINEL || p[n + (size_t)i - 1] != SENTINEL) fail_msg("%s: write outside the output", what);
    free(p - GUARD);
}

static void compare(const float *got, const float *want, size_t n, double atol, double rtol, const char *what) {
    int wrong = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) fail_msg("%s: element %zu is %f", what, i, got[i]);
        double d = fabs((double)got[i] - want[i]);
        if (d > atol + rtol * fabs(want[i])) {
            if (wrong < 5) print_message("%s[%zu]: got %.8g want %.8g\n", what, i, got[i], want[i]);
            wrong++;
        }
    }
    if (wrong) fail_msg("%s: %d of %zu elements out of tolerance", what, wrong, n);
}

static void to_dtype(void *dst, const float *src, size_t n, llmq_dtype dt) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &src[i], 4);
        if (dt == LLMQ_F32) {
            ((float *)dst)[i] = src[i];
        } else if (dt == LLMQ_BF16) {
            ((uint16_t *)dst)[i] = (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
        } else { /* F16 via _Float16-free rounding: values are small, normal range */
            uint32_t sign = (u >> 16) & 0x8000;
            int e = (int)((u >> 23) & 0xff) - 127 + 15;
            uint32_t man = u & 0x7fffff;
            uint16_t h;
            if (e <= 0) h = (uint16_t)sign; /* flush tiny values to zero */
            else h = (uint16_t)(sign | ((uint32_t)e << 10) | ((man + 0x1000) >> 13));
            ((uint16_t *)dst)[i] = h;
        }
    }
}

/* 1 when path p rounds the matmul's inputs to BF16 for weights of dt
 * (avx512bf16's vdpbf16ps, kernels/cpu/matmul_isa.h). */
static int rounds_inputs(cpu_isa p, llmq_dtype dt) { return p == CPU_ISA_AVX512BF16 && dt == LLMQ_BF16; }

/* S[j * m + r] = sum_i |w[r, i] x[j, i]| (the scale of each dot product's
 * rounding errors). */
static double *abs_dots(const float *x, const be_weight *w, int n) {
    const int k = w->cols, m = w->rows;
    double *s = malloc(sizeof(double) * (size_t)n * m);
    float *row = malloc(sizeof(float) * (size_t)k);
    for (int r = 0; r < m; r++) {
        cpu_convert_row(row, w->data, w->dt, (size_t)r * be_weight_ld(w), (size_t)k);
        for (int j = 0; j < n; j++) {
            double a = 0;
            for (int i = 0; i < k; i++) a += fabs((double)row[i] * x[(size_t)j * k + i]);
            s[(size_t)j * m + r] = a;
        }
    }
    free(row);
    return s;
}

/* How far path p's matmul may be from the exact result (want), for a dot
 * product of length k and scale S: F32 accumulation of exact products (the
 * weights widen exactly) gives the 1e-5 sqrt(k) + 1e-5 relative this test
 * always allowed; a path that rounds each input to BF16 (8 significant bits,
 * round to nearest: |x - bf16(x)| <= 2^-8 |x|) adds at most
 * |sum w_i (x_i - bf16(x_i))| <= 2^-8 S. */
static double matmul_tol(cpu_isa p, llmq_dtype dt, int k, double S, double want) {
    return 1e-5 * sqrt(k) + 1e-5 * fabs(want) + (rounds_inputs(p, dt) ? 0x1p-8 * S : 0.0);
}

/* got[n, m], path p's matmul of x by w (+ bias), against the reference:
 * within matmul_tol of the reference on x, and, for a path that rounds x to
 * BF16, within the F32 tolerance of the reference on x rounded here
 * (to_dtype: an independent round to nearest even), which checks that the
 * path computes exactly that. */
static void check_matmul(cpu_isa p, const float *got, const float *x, const be_weight *w, const float *bias, int n,
                         const char *what) {
    const int k = w->cols, m = w->rows;
    const size_t nm = (size_t)n * m;
    float *want = malloc(sizeof(float) * nm);
    ref->ops->matmul(ref, want, x, w, bias, n);
    double *S = abs_dots(x, w, n);
    int wrong = 0;
    for (size_t i = 0; i < nm; i++) {
        if (!isfinite(got[i])) fail_msg("%s: element %zu is %f", what, i, got[i]);
        if (fabs((double)got[i] - want[i]) > matmul_tol(p, w->dt, k, S[i], want[i])) {
            if (wrong < 5) print_message("%s[%zu]: got %.8g want %.8g (S %.4g)\n", what, i, got[i], want[i], S[i]);
            wrong++;
        }
    }
    if (wrong) fail_msg("%s: %d of %zu elements out of tolerance", what, wrong, nm);
    if (rounds_inputs(p, w->dt)) {
        uint16_t *xh = malloc(sizeof(uint16_t) * (size_t)n * k);
        float *xr = malloc(sizeof(float) * (size_t)n * k);
        to_dtype(xh, x, (size_t)n * k, LLMQ_BF16);
        for (size_t i = 0; i < (size_t)n * k; i++) xr[i] = bf16_to_f32(xh[i]);
        ref->ops->matmul(ref, want, xr, w, bias, n);
        char w2[128];
        snprintf(w2, sizeof w2, "%s (inputs in BF16)", what);
        compare(got, want, nm, 1e-5 * sqrt(k), 1e-5, w2);
        free(xh);
        free(xr);
    }
    free(S);
    free(want);
}

static void test_matmul(void **st) {
    (void)st;
    static const int ns[] = {1, 2, 3, 5, 8, 33};
    static const int ks[] = {1, 7, 8, 64, 100, 768};
    static const int ms[] = {1, 3, 4, 17, 64};
    static const llmq_dtype dts[] = {LLMQ_F32, LLMQ_F16, LLMQ_BF16};
    uint64_t rs = 42;
    int cases = 0;
    for (size_t a = 0; a < 6; a++)
        for (size_t b = 0; b < 6; b++)
            for (size_t c = 0; c < 5; c++)
                for (size_t t = 0; t < 3; t++) {
                    const int n = ns[a], k = ks[b], m = ms[c];
                    float *x = malloc(sizeof(float) * (size_t)n * k), *wf = malloc(sizeof(float) * (size_t)m * k);
                    float *bias = malloc(sizeof(float) * m);
                    void *w = malloc(sizeof(float) * (size_t)m * k);
                    tu_fill_random(x, (size_t)n * k, &rs, 1.0f);
                    tu_fill_random(wf, (size_t)m * k, &rs, 0.5f);
                    tu_fill_random(bias, (size_t)m, &rs, 0.5f);
                    to_dtype(w, wf, (size_t)m * k, dts[t]);
                    be_weight bw = {w, dts[t], m, k, 0};
                    float *o1 = guarded((size_t)n * m);
                    const float *bb = (c % 2) ? bias : NULL;
                    fast->ops->matmul(fast, o1, x, &bw, bb, n);
                    char what[96];
                    snprintf(what, sizeof what, "matmul %s %s n=%d k=%d m=%d", cpu_isa_name(isa),
                             llmq_dtype_name(dts[t]), n, k, m);
                    check_matmul(isa, o1, x, &bw, bb, n, what);
                    /* batch invariance: each row alone is bitwise the batched row */
                    float *one = guarded((size_t)m);
                    for (int r = 0; r < n; r++) {
                        fast->ops->matmul(fast, one, x + (size_t)r * k, &bw, bb, 1);
                        if (memcmp(one, o1 + (size_t)r * m, sizeof(float) * m))
                            fail_msg("%s: row %d alone differs from the batch", what, r);
                    }
                    guarded_check_free(one, (size_t)m, what);
                    guarded_check_free(o1, (size_t)n * m, what);
                    free(x);
                    free(wf);
                    free(w);
                    free(bias);
                    cases++;
                }
    assert_int_equal(cases, 6 * 6 * 5 * 3);
}

/* Batch invariance where the blockings differ most: each of 33 rows alone
 * and inside batches of 1..33 (every position of a register block and every
 * remainder), k odd and not a multiple of 16 or 32 (the vector tails), 37
 * weight rows (tiles and their remainders), and column slices (ld > k, the
 * slice not at column 0, as tensor parallelism cuts them: be_weight_ld).
 * The batch of 33 against the reference, and against every other path of
 * this processor within the sum of both paths' tolerances. */
static void test_matmul_batch_invariance(void **st) {
    (void)st;
    static const int ks[] = {17, 100, 781};
    static const llmq_dtype dts[] = {LLMQ_F32, LLMQ_F16, LLMQ_BF16};
    enum { N = 33, M = 37 };
    cpu_isa paths[CPU_ISA_COUNT];
    const int npaths = cpu_isa_list(paths);
    uint64_t rs = 5;
    for (int t = 0; t < 3; t++)
        for (int ki = 0; ki < 3; ki++)
            for (int slice = 0; slice < 2; slice++) {
                const int k = ks[ki], ld = slice ? k + 13 : k, c0 = slice ? 5 : 0;
                const size_t es = llmq_dtype_size(dts[t]);
                float *x = malloc(sizeof(float) * N * k), *wf = malloc(sizeof(float) * M * ld);
                void *wd = malloc(es * M * ld);
                tu_fill_random(x, (size_t)N * k, &rs, 1.0f);
                tu_fill_random(wf, (size_t)M * ld, &rs, 0.5f);
                to_dtype(wd, wf, (size_t)M * ld, dts[t]);
                be_weight bw = {(const char *)wd + c0 * es, dts[t], M, k, slice ? ld : 0};
                char what[128];
                snprintf(what, sizeof what, "matmul %s %s k=%d ld=%d", cpu_isa_name(isa), llmq_dtype_name(dts[t]), k,
                         ld);
                float *alone = malloc(sizeof(float) * N * M), *o = guarded((size_t)N * M);
                for (int r = 0; r < N; r++) fast->ops->matmul(fast, alone + (size_t)r * M, x + (size_t)r * k, &bw, NULL, 1);
                for (int n = 1; n <= N; n++) { /* rows [N - n, N): row r sits at position r - (N - n) */
                    fast->ops->matmul(fast, o, x + (size_t)(N - n) * k, &bw, NULL, n);
                    for (int j = 0; j < n; j++)
                        if (memcmp(o + (size_t)j * M, alone + (size_t)(N - n + j) * M, sizeof(float) * M))
                            fail_msg("%s: row %d alone differs from it at %d in a batch of %d", what, N - n + j, j, n);
                }
                check_matmul(isa, o, x, &bw, NULL, N, what);
                /* the other paths: each within its tolerance of the exact result, so within the sum of both */
                double *S = abs_dots(x, &bw, N);
                float *want = malloc(sizeof(float) * N * M), *oq = malloc(sizeof(float) * N * M);
                ref->ops->matmul(ref, want, x, &bw, NULL, N);
                for (int q = 0; q < npaths; q++) {
                    if (paths[q] == isa) continue;
                    llmq_backend *bq = create_on(paths[q]);
                    assert_non_null(bq);
                    bq->ops->matmul(bq, oq, x, &bw, NULL, N);
                    llmq_backend_destroy(bq);
                    for (int i = 0; i < N * M; i++) {
                        const double tol = matmul_tol(isa, dts[t], k, S[i], want[i]) +
                                           matmul_tol(paths[q], dts[t], k, S[i], want[i]);
                        if (fabs((double)o[i] - oq[i]) > tol)
                            fail_msg("%s: element %d is %.8g, on %s %.8g", what, i, o[i], cpu_isa_name(paths[q]), oq[i]);
                    }
                }
                free(S);
                free(want);
                free(oq);
                guarded_check_free(o, (size_t)N * M, what);
                free(alone);
                free(x);
                free(wf);
                free(wd);
            }
}

static void test_norms_rope_swiglu(void **st) {
    (void)st;
    uint64_t rs = 7;
    static const int dims[] = {8, 63, 64, 768};
    for (int di = 0; di < 4; di++) {
        const int n = 5, dim = dims[di];
        const size_t sz = (size_t)n * dim;
        float *x = malloc(sz * 4), *x2 = malloc(sz * 4), *delta = malloc(sz * 4), *w = malloc((size_t)dim * 4);
        tu_fill_random(x, sz, &rs, 2.0f);
        tu_fill_random(delta, sz, &rs, 1.0f);
        tu_fill_random(w, (size_t)dim, &rs, 1.5f);
        memcpy(x2, x, sz * 4);
        float *o1 = guarded(sz), *o2 = guarded(sz);
        fast->ops->rmsnorm(fast, o1, x, w, n, dim, 1e-5f);
        ref->ops->rmsnorm(ref, o2, x, w, n, dim, 1e-5f);
        compare(o1, o2, sz, 1e-6, 1e-5, "rmsnorm");
        fast->ops->add_rmsnorm(fast, o1, x, delta, w, n, dim, 1e-5f);
        ref->ops->add_rmsnorm(ref, o2, x2, delta, w, n, dim, 1e-5f);
        compare(o1, o2, sz, 1e-6, 1e-5, "add_rmsnorm (out)");
        compare(x, x2, sz, 0, 0, "add_rmsnorm (residual)");
        /* swiglu with dim as the MLP width */
        fast->ops->swiglu(fast, o1, x, delta, n, dim);
        ref->ops->swiglu(ref, o2, x, delta, n, dim);
        compare(o1, o2, sz, 1e-6, 1e-5, "swiglu");
        /* Falcon: LayerNorm with bias on rows with a large mean (a one-pass
         * variance would cancel), the row alone bit-equal to the batch; GELU */
        float *b = malloc((size_t)dim * 4), *xm = malloc(sz * 4), *o3 = guarded((size_t)dim);
        tu_fill_random(b, (size_t)dim, &rs, 0.5f);
        for (size_t i = 0; i < sz; i++) xm[i] = x[i] + 100.0f;
        fast->ops->layernorm(fast, o1, xm, w, b, n, dim, 1e-5f);
        ref->ops->layernorm(ref, o2, xm, w, b, n, dim, 1e-5f);
        compare(o1, o2, sz, 2e-5, 1e-4, "layernorm");
        fast->ops->layernorm(fast, o3, xm + (size_t)2 * dim, w, b, 1, dim, 1e-5f);
        compare(o3, o1 + (size_t)2 * dim, (size_t)dim, 0, 0, "layernorm row alone");
        /* a row of equal values normalises to the bias */
        for (int i = 0; i < dim; i++) xm[i] = 7.25f;
        ref->ops->layernorm(ref, o2, xm, w, b, 1, dim, 1e-5f);
        compare(o2, b, (size_t)dim, 1e-6, 0, "layernorm of a constant row");
        fast->ops->gelu(fast, o1, x, sz);
        ref->ops->gelu(ref, o2, x, sz);
        compare(o1, o2, sz, 1e-6, 1e-5, "gelu");
        const float gx[4] = {0.0f, 1.0f, -1.0f, 3.0f}, gy[4] = {0.0f, 0.8413447461f, -0.1586552539f, 2.9959502f};
        float gz[4];
        ref->ops->gelu(ref, gz, gx, 4); /* Phi(1) = 0.841344746..., x Phi(x) */
        compare(gz, gy, 4, 1e-6, 1e-6, "gelu values");
        guarded_check_free(o3, (size_t)dim, "layernorm");
        free(b);
        free(xm);
        guarded_check_free(o1, sz, "norms");
        guarded_check_free(o2, sz, "norms");
        free(x);
        free(x2);
        free(delta);
        free(w);
    }
    /* rope: GQA shapes, positions far apart */
    const int n = 6, nh = 4, nkv = 2, hd = 16;
    int32_t pos[6] = {0, 1, 17, 100, 511, 4095};
    float inv[8];
    for (int i = 0; i < hd / 2; i++) inv[i] = 1.0f / powf(10000.0f, 2.0f * i / hd);
    float *q1 = malloc(sizeof(float) * n * nh * hd), *q2 = malloc(sizeof(float) * n * nh * hd);
    float *k1 = malloc(sizeof(float) * n * nkv * hd), *k2 = malloc(sizeof(float) * n * nkv * hd);
    tu_fill_random(q1, (size_t)n * nh * hd, &rs, 1.0f);
    tu_fill_random(k1, (size_t)n * nkv * hd, &rs, 1.0f);
    memcpy(q2, q1, sizeof(float) * n * nh * hd);
    memcpy(k2, k1, sizeof(float) * n * nkv * hd);
    fast->ops->rope(fast, q1, k1, pos, n, nh, nkv, hd, inv);
    ref->ops->rope(ref, q2, k2, pos, n, nh, nkv, hd, inv);
    compare(q1, q2, (size_t)n * nh * hd, 1e-6, 1e-5, "rope q");
    compare(k1, k2, (size_t)n * nkv * hd, 1e-6, 1e-5, "rope k");
    /* position 0 is the identity */
    free(q1);
    free(q2);
    free(k1);
    free(k2);
}

static void test_attention_paged(void **st) {
    (void)st;
    uint64_t rs = 99;
    static const int windows[] = {0, 5, 16};
    static const int shapes[][3] = {{4, 4, 8}, {8, 2, 16}, {4, 1, 64}}; /* heads, kv heads, head_dim */
    for (int si = 0; si < 3; si++)
        for (int wi = 0; wi < 3; wi++) {
            const int nh = shapes[si][0], nkv = shapes[si][1], hd = shapes[si][2], bs = 16, nblocks = 12;
            const int kvd = nkv * hd;
            /* two sequences: A prefill of 21 tokens from 0, B decode at position 40 */
            int32_t bt[2 * 4] = {7, 2, 9, 0, 3, 11, 5, 1};
            int32_t tok_start[3] = {0, 21, 22};
            int32_t positions[22];
            for (int i = 0; i < 21; i++) positions[i] = i;
            positions[21] = 40;
            float *kc = malloc(sizeof(float) * nblocks * bs * kvd), *vc = malloc(sizeof(float) * nblocks * bs * kvd);
            tu_fill_random(kc, (size_t)nblocks * bs * kvd, &rs, 1.0f);
            tu_fill_random(vc, (size_t)nblocks * bs * kvd, &rs, 1.0f);
            float *q = malloc(sizeof(float) * 22 * nh * hd);
            tu_fill_random(q, (size_t)22 * nh * hd, &rs, 1.0f);
            be_attn_step step = {2, 22, tok_start, positions, bt, 4, bs};
            be_attn_shape shape = {nh, nkv, hd, windows[wi], 1.0f / sqrtf((float)hd)};
            float *o1 = guarded((size_t)22 * nh * hd), *o2 = guarded((size_t)22 * nh * hd);
            fast->ops->attention(fast, o1, q, kc, vc, &step, &shape);
            ref->ops->attention(ref, o2, q, kc, vc, &step, &shape);
            char what[64];
            snprintf(what, sizeof what, "attention h=%d kv=%d hd=%d window=%d", nh, nkv, hd, windows[wi]);
            compare(o1, o2, (size_t)22 * nh * hd, 1e-5, 1e-4, what);
            /* token 0 attends only to itself: output = its V row */
            const float *v0 = vc + (size_t)(7 * bs) * kvd;
            for (int h = 0; h < nh; h++)
                for (int d = 0; d < hd; d++)
                    assert_float_equal(o1[h * hd + d], v0[(h / (nh / nkv)) * hd + d], 1e-6);
            guarded_check_free(o1, (size_t)22 * nh * hd, what);
            guarded_check_free(o2, (size_t)22 * nh * hd, what);
            free(kc);
            free(vc);
            free(q);
        }
}

static void test_kv_store_and_embed(void **st) {
    (void)st;
    const int kvd = 8, rows = 4;
    float cache_k[64 * 8] = {0}, cache_v[64 * 8] = {0}, k[4 * 8], v[4 * 8];
    for (int i = 0; i < rows * kvd; i++) {
        k[i] = (float)i;
        v[i] = (float)-i;
    }
    int32_t slots[4] = {3, 40, 17, 63};
    fast->ops->kv_store(fast, cache_k, cache_v, k, v, slots, rows, kvd);
    for (int r = 0; r < rows; r++) {
        assert_memory_equal(cache_k + slots[r] * kvd, k + r * kvd, sizeof(float) * kvd);
        assert_memory_equal(cache_v + slots[r] * kvd, v + r * kvd, sizeof(float) * kvd);
    }
    uint16_t table[3 * 4];
    float tf[12] = {1, 2, 3, 4, -1, -2, -3, -4, 0.5f, 0.25f, 8, 16};
    to_dtype(table, tf, 12, LLMQ_BF16);
    be_weight t = {table, LLMQ_BF16, 3, 4, 0};
    int32_t ids[2] = {2, 0};
    float out[8];
    fast->ops->embed(fast, out, &t, ids, 2);
    assert_memory_equal(out, tf + 8, 4 * sizeof(float));
    assert_memory_equal(out + 4, tf, 4 * sizeof(float));
}

/* llmq_backend_destroy goes through the table, whatever the backend's name
 * (this one's starts with "cpu" but is not the CPU backend); NULL is a no-op.
 * Under SANITIZER=address the real backends' scratch must be freed too. */
static int fake_destroyed;
static void fake_destroy(llmq_backend *be) {
    fake_destroyed++;
    free(be);
}

static void test_destroy_through_ops(void **st) {
    (void)st;
    fake_destroyed = 0; /* once per path */
    llmq_backend_destroy(NULL);
    static const be_ops fake_ops = {.name = "cpu-fake", .destroy = fake_destroy};
    llmq_backend *be = calloc(1, sizeof *be);
    assert_non_null(be);
    be->ops = &fake_ops;
    llmq_backend_destroy(be);
    assert_int_equal(fake_destroyed, 1);

    const char *names[] = {"cpu", "cpu-ref"};
    for (int i = 0; i < 2; i++) {
        llmq_err err = {0};
        llmq_backend *b = llmq_backend_create(names[i], &err);
        assert_non_null(b);
        assert_string_equal(b->ops->name, names[i]);
        assert_non_null(b->ops->destroy);
        assert_int_equal(cpu_scratch_reserve(b->impl, 4096), 0); /* something to free */
        llmq_backend_destroy(b);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_matmul_batch_invariance),
        cmocka_unit_test(test_norms_rope_swiglu),
        cmocka_unit_test(test_attention_paged),
        cmocka_unit_test(test_kv_store_and_embed),
        cmocka_unit_test(test_destroy_through_ops),
    };
    cpu_isa paths[CPU_ISA_COUNT];
    const int npaths = cpu_isa_list(paths);
    int failed = 0;
    for (int i = 0; i < npaths; i++) {
        char name[64];
        isa = paths[i];
        snprintf(name, sizeof name, "cpu_ops %s", cpu_isa_name(isa));
        failed += cmocka_run_group_tests_name(name, tests, setup, teardown);
    }
    return failed;
}
