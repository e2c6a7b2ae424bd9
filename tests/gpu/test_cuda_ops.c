/*
 * test_cuda_ops.c — every op of the CUDA backend against the CPU reference
 * backend ("cpu-ref"), on many shapes, in each activation dtype the GPU
 * has (F32, F16, and BF16 on sm_80+).  Built by `make cuda` (run by
 * tests/gpu/run.sh on a GPU) and by `make cuda-emu` (run by `make test` on
 * the emulated device, kernels/cuda/emu/, with the same tolerances and a few
 * smaller shapes; test_cuda_ops_bf16 runs it again on an emulated H100 for
 * BF16).  LLMQ_TEST_CUDA_DTYPES and LLMQ_TEST_FILTER narrow a run.
 *
 * For every case: inputs are uploaded to the GPU and read back, so that the
 * oracle computes on exactly the values the GPU saw (rounded to the
 * activation dtype); outputs sit between sentinels; the checks are, in
 * order, NaN/Inf, sentinels untouched, then |got - want| <= atol + rtol *
 * |want| per element (the first mismatches are printed) and the NMSE.
 * Batch invariance (backend.h) is checked bitwise: matmul, rmsnorm and
 * attention rows computed alone, in batches of other sizes and (attention)
 * as decode or inside a prefill chunk give the same bits.
 *
 * Without a CUDA device every case is skipped with the reason (never
 * passed).  `test_cuda_ops --info` prints the device and its bandwidth
 * (used by tests/gpu/bench.sh) and exits.
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
#include "kernels/quant.h"
#include "kernels/cuda/comm_nccl.h"
#include "kernels/cuda/cuda.h"

#define SENTINEL (-1536.0f) /* exact in F32, F16 and BF16 */
#define GUARD 128 /* elements: keeps outputs 256-byte aligned, as engine buffers are */

/* ------------------------------------------------------------ fixtures */

static llmq_backend *ref;
static llmq_backend *gpus[3];
static const char *gpu_names[3];
static int n_gpus;
static char no_gpu[LLMQ_ERRSTR_LEN];

static llmq_backend *make_gpu(const char *dt) {
    setenv("LLMQ_CUDA_DTYPE", dt, 1);
    llmq_err err = {0};
    llmq_backend *be = llmq_backend_create("cuda", &err);
    unsetenv("LLMQ_CUDA_DTYPE");
    if (!be && !no_gpu[0] && strstr(err.msg, "no CUDA device")) snprintf(no_gpu, sizeof no_gpu, "%s", err.msg);
    else if (!be) print_message("# no %s backend: %s\n", dt, err.msg);
    return be;
}

static int setup(void **st) {
    (void)st;
    ref = llmq_backend_create("cpu-ref", NULL);
    const char *dts[3] = {"f32", "f16", "bf16"};
    /* LLMQ_TEST_CUDA_DTYPES=bf16 (say) limits the run to those activation dtypes */
    const char *only = getenv("LLMQ_TEST_CUDA_DTYPES");
    for (int i = 0; i < 3; i++) {
        if (only && *only && !strstr(only, dts[i])) continue;
        llmq_backend *be = make_gpu(dts[i]);
        if (be) {
            gpus[n_gpus] = be;
            gpu_names[n_gpus++] = dts[i];
        }
        if (no_gpu[0]) break;
    }
    return ref ? 0 : -1;
}

static int teardown(void **st) {
    (void)st;
    for (int i = 0; i < n_gpus; i++) llmq_backend_destroy(gpus[i]);
    llmq_backend_destroy(ref);
    return 0;
}

#define NEED_GPU()                                                                                             \
    do {                                                                                                       \
        if (!n_gpus) {                                                                                         \
            print_message("# skipped: %s\n", no_gpu[0] ? no_gpu : "no CUDA backend could be created");       \
            skip();                                                                                            \
        }                                                                                                      \
    } while (0)

/* ------------------------------------------------------------ helpers */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* uniform in [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * (2.0 / 16777216.0) - 1.0);
}
static int irand(int n) { return (int)((frand() + 1.0f) * 0.5f * n) % n; }

static float *fill(size_t n, float scale) {
    float *p = malloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = frand() * scale;
    return p;
}

static void gpu_check(llmq_backend *be, const char *what) {
    llmq_err err = {0};
    if (be->ops->sync(be, &err)) fail_msg("%s: sync failed: %s", what, err.msg);
}

/* An activation buffer of n elements between GUARD sentinels on each side;
 * returns the pointer to element 0. */
static void *g_alloc(llmq_backend *be, size_t n) {
    const size_t es = llmq_dtype_size(be->act_dt);
    char *p = be->ops->alloc(be, (n + 2 * GUARD) * es);
    assert_non_null(p);
    float *s = malloc((n + 2 * GUARD) * sizeof *s);
    for (size_t i = 0; i < n + 2 * GUARD; i++) s[i] = SENTINEL;
    be->ops->upload_f32(be, p, s, n + 2 * GUARD);
    free(s);
    return p + GUARD * es;
}

static void g_free(llmq_backend *be, void *p) {
    if (p) be->ops->free(be, (char *)p - GUARD * llmq_dtype_size(be->act_dt));
}

/* Upload host floats into a guarded buffer and read back the rounded
 * values into `rounded` (what the GPU computes on). */
static void *g_from(llmq_backend *be, const float *h, size_t n, float *rounded) {
    void *d = g_alloc(be, n);
    be->ops->upload_f32(be, d, h, n);
    if (rounded) be->ops->download_f32(be, rounded, d, n);
    return d;
}

static int32_t *d_i32(llmq_backend *be, const int32_t *h, size_t n) {
    int32_t *d = be->ops->alloc(be, (n ? n : 1) * sizeof *d);
    assert_non_null(d);
    if (n) be->ops->upload(be, d, h, n * sizeof *d);
    return d;
}

static float *d_f32(llmq_backend *be, const float *h, size_t n) { /* an F32 vector (norm weights, biases) */
    float *d = be->ops->alloc(be, n * sizeof *d);
    assert_non_null(d);
    be->ops->upload(be, d, h, n * sizeof *d);
    return d;
}

static void tol_of(llmq_dtype dt, double *atol, double *rtol) {
    *atol = dt == LLMQ_F32 ? 2e-5 : dt == LLMQ_F16 ? 2e-3 : 1.6e-2;
    *rtol = dt == LLMQ_F32 ? 2e-4 : dt == LLMQ_F16 ? 4e-3 : 2e-2;
}

/* Download n elements of a guarded output, check NaN/Inf, sentinels and
 * closeness to want (atol scaled by `scale`, the typical magnitude). */
static void check_out(llmq_backend *be, const void *d, const float *want, size_t n, double scale, const char *what) {
    float *got = malloc((n + 2 * GUARD) * sizeof *got);
    be->ops->download_f32(be, got, (const char *)d - GUARD * llmq_dtype_size(be->act_dt), n + 2 * GUARD);
    gpu_check(be, what);
    const float *g = got + GUARD;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(g[i])) fail_msg("%s: element %zu is %f (want %f)", what, i, g[i], want[i]);
    for (int i = 0; i < GUARD; i++)
        if (got[i] != SENTINEL || got[GUARD + n + (size_t)i] != SENTINEL)
            fail_msg("%s: write outside the output (guard %d)", what, i);
    double atol, rtol, se = 0, sw = 0, maxe = 0;
    tol_of(be->act_dt, &atol, &rtol);
    atol *= scale;
    int wrong = 0;
    for (size_t i = 0; i < n; i++) {
        const double e = fabs((double)g[i] - want[i]);
        se += e * e;
        sw += (double)want[i] * want[i];
        if (e > maxe) maxe = e;
        if (e > atol + rtol * fabs(want[i])) {
            if (wrong < 5) print_message("#   %s[%zu]: got %.7g want %.7g\n", what, i, g[i], want[i]);
            wrong++;
        }
    }
    const double nmse = sw > 0 ? se / sw : se;
    if (wrong) fail_msg("%s: %d of %zu elements off (max abs err %.3g, NMSE %.3g)", what, wrong, n, maxe, nmse);
    free(got);
}

/* Bitwise equality of two GPU results (as floats after download, which is
 * exact for every activation dtype). */
static void check_same_bits(const float *a, const float *b, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof(float)))
            fail_msg("%s: element %zu differs (%.9g vs %.9g): not batch invariant", what, i, a[i], b[i]);
}

/* ------------------------------------------------------------ transfers */

static void test_roundtrip(void **st) {
    (void)st;
    NEED_GPU();
    for (int gi = 0; gi < n_gpus; gi++) {
        llmq_backend *be = gpus[gi];
        const size_t n = 100003;
        float *h = fill(n, 100.0f), *back = malloc(n * sizeof *back);
        h[0] = 0.0f, h[1] = -0.0f, h[2] = 65504.0f, h[3] = 1e-3f, h[4] = 3.0f;
        void *d = g_from(be, h, n, back);
        gpu_check(be, "roundtrip");
        for (size_t i = 0; i < n; i++) {
            const double tol = be->act_dt == LLMQ_F32 ? 0 : fabs(h[i]) * (be->act_dt == LLMQ_F16 ? 1.0 / 2048 : 1.0 / 256);
            if (fabs((double)back[i] - h[i]) > tol + (be->act_dt == LLMQ_F16 ? 6e-8 : 0))
                fail_msg("%s roundtrip[%zu]: %g -> %g", gpu_names[gi], i, h[i], back[i]);
        }
        if (back[4] != 3.0f) fail_msg("%s: 3.0 did not survive", gpu_names[gi]);
        g_free(be, d);
        free(h);
        free(back);
    }
}

/* ------------------------------------------------------------ embed */

static void test_embed(void **st) {
    (void)st;
    NEED_GPU();
    const int shapes[][2] = {{512, 64}, {1000, 4096}, {37, 200}};
    for (int gi = 0; gi < n_gpus; gi++)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
            for (int wdt = 0; wdt < 3; wdt++) {
                llmq_backend *be = gpus[gi];
                const int V = shapes[si][0], D = shapes[si][1], n = 9;
                float *tab = fill((size_t)V * D, 1.0f);
                /* the weight in its own dtype on the host */
                void *host_w = malloc((size_t)V * D * 4);
                for (size_t i = 0; i < (size_t)V * D; i++) {
                    uint32_t u;
                    memcpy(&u, &tab[i], 4);
                    if (wdt == LLMQ_F32) ((float *)host_w)[i] = tab[i];
                    else if (wdt == LLMQ_BF16) ((uint16_t *)host_w)[i] = (uint16_t)(u >> 16); /* truncation is fine */
#ifdef __FLT16_MAX__
                    else {
                        _Float16 f = (_Float16)tab[i];
                        memcpy((uint16_t *)host_w + i, &f, 2);
                    }
#else
                    else ((uint16_t *)host_w)[i] = 0x3c00; /* 1.0 */
#endif
                }
                be_weight in = {host_w, (llmq_dtype)wdt, V, D, D}, w;
                assert_int_equal(be->ops->weight_prepare(be, &w, &in), LLMQ_OK);
                float *wr = malloc((size_t)V * D * sizeof *wr); /* the prepared (rounded) table */
                be->ops->download_f32(be, wr, w.data, (size_t)V * D);
                int32_t ids[9] = {0, V - 1, 5 % V, -1, V, 3 % V, 0, 2 % V, V + 7};
                int32_t *did = d_i32(be, ids, n);
                void *out = g_alloc(be, (size_t)n * D);
                be->ops->embed(be, out, &w, did, n);
                be_weight rw = {wr, LLMQ_F32, V, D, D};
                float *want = malloc((size_t)n * D * sizeof *want);
                ref->ops->embed(ref, want, &rw, ids, n);
                char what[96];
                snprintf(what, sizeof what, "embed %s V%d D%d w%s", gpu_names[gi], V, D, llmq_dtype_name((llmq_dtype)wdt));
                check_out(be, out, want, (size_t)n * D, 1.0, what);
                g_free(be, out);
                be->ops->free(be, did);
                be->ops->weight_release(be, &w);
                free(tab), free(host_w), free(wr), free(want);
            }
}

/* ------------------------------------------------------------ rmsnorm */

static void test_rmsnorm(void **st) {
    (void)st;
    NEED_GPU();
    const int shapes[][2] = {{1, 64}, {7, 4096}, {33, 5120}, {3, 100}, {2, 8192}};
    for (int gi = 0; gi < n_gpus; gi++)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
            for (int fused = 0; fused < 2; fused++) {
                llmq_backend *be = gpus[gi];
                const int n = shapes[si][0], D = shapes[si][1];
                const size_t N = (size_t)n * D;
                float *x = fill(N, 2.0f), *dl = fill(N, 1.0f), *w = fill((size_t)D, 1.0f);
                float *xr = malloc(N * 4), *dr = malloc(N * 4), *want = malloc(N * 4);
                void *dx = g_from(be, x, N, xr), *dd = g_from(be, dl, N, dr), *out = g_alloc(be, N);
                float *dw = d_f32(be, w, (size_t)D);
                char what[96];
                snprintf(what, sizeof what, "%s %s n%d D%d", fused ? "add_rmsnorm" : "rmsnorm", gpu_names[gi], n, D);
                if (fused) {
                    be->ops->add_rmsnorm(be, out, dx, dd, dw, n, D, 1e-5f);
                    ref->ops->add_rmsnorm(ref, want, xr, dr, w, n, D, 1e-5f);
                    check_out(be, out, want, N, 1.0, what);
                    check_out(be, dx, xr, N, 2.0, "add_rmsnorm residual");
                } else {
                    be->ops->rmsnorm(be, out, dx, dw, n, D, 1e-5f);
                    ref->ops->rmsnorm(ref, want, xr, w, n, D, 1e-5f);
                    check_out(be, out, want, N, 1.0, what);
                    /* in place, and batch invariance: the last row alone */
                    float *all = malloc(N * 4), *one = malloc((size_t)D * 4);
                    be->ops->download_f32(be, all, out, N);
                    void *dl1 = g_from(be, xr + (size_t)(n - 1) * D, (size_t)D, NULL);
                    be->ops->rmsnorm(be, dl1, dl1, dw, 1, D, 1e-5f);
                    be->ops->download_f32(be, one, dl1, (size_t)D);
                    gpu_check(be, what);
                    check_same_bits(all + (size_t)(n - 1) * D, one, (size_t)D, what);
                    g_free(be, dl1);
                    free(all), free(one);
                }
                g_free(be, dx), g_free(be, dd), g_free(be, out);
                be->ops->free(be, dw);
                free(x), free(dl), free(w), free(xr), free(dr), free(want);
            }
}

/* ------------------------------------------------------------ matmul */

static void test_matmul(void **st) {
    (void)st;
    NEED_GPU();
    /* n, rows (out features), cols (in features), bias, extra ld */
    const int shapes[][5] = {{1, 64, 64, 0, 0},     {5, 172, 64, 1, 0},    {17, 512, 64, 0, 0},
                             {1, 4096, 4096, 0, 0}, {8, 1024, 4096, 1, 0}, {64, 384, 1024, 0, 32},
                             {3, 100, 96, 1, 8},    {130, 256, 512, 0, 0}};
    for (int gi = 0; gi < n_gpus; gi++)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            llmq_backend *be = gpus[gi];
            const int n = shapes[si][0], M = shapes[si][1], K = shapes[si][2], has_b = shapes[si][3];
            const int ld = K + shapes[si][4];
            const llmq_dtype wdt = (llmq_dtype)(si % 3);
            float *wf = fill((size_t)M * ld, 0.5f), *x = fill((size_t)n * K, 1.0f), *b = fill((size_t)M, 1.0f);
            void *host_w = malloc((size_t)M * ld * 4);
            for (size_t i = 0; i < (size_t)M * ld; i++) {
                uint32_t u;
                memcpy(&u, &wf[i], 4);
                if (wdt == LLMQ_F32) ((float *)host_w)[i] = wf[i];
                else if (wdt == LLMQ_BF16) ((uint16_t *)host_w)[i] = (uint16_t)(u >> 16);
#ifdef __FLT16_MAX__
                else {
                    _Float16 f = (_Float16)wf[i];
                    memcpy((uint16_t *)host_w + i, &f, 2);
                }
#else
                else ((uint16_t *)host_w)[i] = 0x3800;
#endif
            }
            be_weight in = {host_w, wdt, M, K, ld}, w;
            assert_int_equal(be->ops->weight_prepare(be, &w, &in), LLMQ_OK);
            float *wr = malloc((size_t)M * K * 4), *xr = malloc((size_t)n * K * 4), *want = malloc((size_t)n * M * 4);
            be->ops->download_f32(be, wr, w.data, (size_t)M * K);
            void *dx = g_from(be, x, (size_t)n * K, xr), *out = g_alloc(be, (size_t)n * M);
            float *db = has_b ? d_f32(be, b, (size_t)M) : NULL;
            be->ops->matmul(be, out, dx, &w, db, n);
            be_weight rw = {wr, LLMQ_F32, M, K, K};
            ref->ops->matmul(ref, want, xr, &rw, has_b ? b : NULL, n);
            char what[128];
            snprintf(what, sizeof what, "matmul %s n%d [%d,%d] ld%d w%s%s", gpu_names[gi], n, M, K, ld,
                     llmq_dtype_name(wdt), has_b ? " +bias" : "");
            check_out(be, out, want, (size_t)n * M, 0.5 * sqrt((double)K), what);

            /* batch invariance: each of a few rows alone, and the first rows in a smaller batch */
            float *all = malloc((size_t)n * M * 4), *one = malloc((size_t)n * M * 4);
            be->ops->download_f32(be, all, out, (size_t)n * M);
            const int probes[3] = {0, n / 2, n - 1};
            for (int pi = 0; pi < 3; pi++) {
                void *x1 = g_from(be, xr + (size_t)probes[pi] * K, (size_t)K, NULL), *o1 = g_alloc(be, (size_t)M);
                be->ops->matmul(be, o1, x1, &w, db, 1);
                be->ops->download_f32(be, one, o1, (size_t)M);
                gpu_check(be, what);
                check_same_bits(all + (size_t)probes[pi] * M, one, (size_t)M, what);
                g_free(be, x1), g_free(be, o1);
            }
            if (n > 2) {
                const int m2 = n / 2 + 1;
                void *o2 = g_alloc(be, (size_t)m2 * M);
                be->ops->matmul(be, o2, dx, &w, db, m2);
                be->ops->download_f32(be, one, o2, (size_t)m2 * M);
                gpu_check(be, what);
                check_same_bits(all, one, (size_t)m2 * M, what);
                g_free(be, o2);
            }
            g_free(be, dx), g_free(be, out);
            be->ops->free(be, db);
            be->ops->weight_release(be, &w);
            free(wf), free(x), free(b), free(host_w), free(wr), free(xr), free(want), free(all), free(one);
        }
    for (int gi = 0; gi < n_gpus; gi++) {
        cuda_backend_info info;
        cuda_backend_get_info(gpus[gi], &info);
        print_message("# %s: %ld matmuls, %ld ran outside their pinned algorithm\n", gpu_names[gi], info.gemm_calls,
                      info.gemm_fallbacks);
        /* a fallback runs through cublasGemmEx, whose kernel choice depends on the batch: the
         * batch-invariance promise holds only with none */
        assert_true(info.gemm_calls > 0);
        if (info.gemm_pinned) assert_int_equal(info.gemm_fallbacks, 0);
    }
}

/* ------------------------------------------------------------ quantized matmul */

/* Weight-only INT8 / INT4 (kernels/quant.h): the same quantized matrix on
 * the CPU reference backend and on the GPU, many shapes (rows not a
 * multiple of the warp tile, columns not a multiple of 16 or of the group,
 * groups of 8, 32 and 128), n across the 8-token tile; then bitwise batch
 * invariance as for plain matmul. */
static void test_qmatmul(void **st) {
    (void)st;
    NEED_GPU();
    /* n, rows, cols, bias, quant (8 or 4), Q4 group */
    const int shapes[][6] = {{1, 64, 64, 0, 8, 0},      {5, 172, 64, 1, 8, 0},    {1, 4096, 4096, 0, 8, 0},
                             {9, 100, 100, 1, 8, 0},    {17, 512, 4100, 0, 8, 0}, {1, 64, 64, 0, 4, 32},
                             {5, 172, 96, 1, 4, 32},    {1, 4096, 4096, 0, 4, 128}, {9, 100, 100, 1, 4, 8},
                             {33, 512, 4100, 0, 4, 128}, {8, 257, 200, 0, 4, 40}};
    for (int gi = 0; gi < n_gpus; gi++)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            llmq_backend *be = gpus[gi];
            const int n = shapes[si][0], M = shapes[si][1], K = shapes[si][2], has_b = shapes[si][3];
            const llmq_quant qk = shapes[si][4] == 8 ? LLMQ_QUANT_INT8 : LLMQ_QUANT_INT4;
            float *wf = fill((size_t)M * K, 0.5f), *x = fill((size_t)n * K, 1.0f), *b = fill((size_t)M, 1.0f);
            be_weight src = {wf, LLMQ_F32, M, K, K}, hq, w;
            void *block = NULL;
            llmq_err qe = {0};
            assert_int_equal(llmq_quantize(&hq, &block, &src, qk, shapes[si][5], &qe), LLMQ_OK);
            assert_int_equal(be->ops->weight_prepare(be, &w, &hq), LLMQ_OK);
            assert_int_equal(w.dt, hq.dt);
            float *xr = malloc((size_t)n * K * 4), *want = malloc((size_t)n * M * 4);
            void *dx = g_from(be, x, (size_t)n * K, xr), *out = g_alloc(be, (size_t)n * M);
            float *db = has_b ? d_f32(be, b, (size_t)M) : NULL;
            be->ops->matmul(be, out, dx, &w, db, n);
            ref->ops->matmul(ref, want, xr, &hq, has_b ? b : NULL, n); /* the CPU's quantized path */
            char what[128];
            snprintf(what, sizeof what, "qmatmul %s n%d [%d,%d] %s group %d%s", gpu_names[gi], n, M, K,
                     llmq_dtype_name(hq.dt), shapes[si][5], has_b ? " +bias" : "");
            check_out(be, out, want, (size_t)n * M, 0.5 * sqrt((double)K), what);
            float *all = malloc((size_t)n * M * 4), *one = malloc((size_t)n * M * 4);
            be->ops->download_f32(be, all, out, (size_t)n * M);
            const int probes[3] = {0, n / 2, n - 1};
            for (int pi = 0; pi < 3; pi++) {
                void *x1 = g_from(be, xr + (size_t)probes[pi] * K, (size_t)K, NULL), *o1 = g_alloc(be, (size_t)M);
                be->ops->matmul(be, o1, x1, &w, db, 1);
                be->ops->download_f32(be, one, o1, (size_t)M);
                gpu_check(be, what);
                check_same_bits(all + (size_t)probes[pi] * M, one, (size_t)M, what);
                g_free(be, x1), g_free(be, o1);
            }
            g_free(be, dx), g_free(be, out);
            be->ops->free(be, db);
            be->ops->weight_release(be, &w);
            free(block), free(wf), free(x), free(b), free(xr), free(want), free(all), free(one);
        }
}

/* ------------------------------------------------------------ rope */

static void test_rope(void **st) {
    (void)st;
    NEED_GPU();
    const int shapes[][4] = {{3, 8, 4, 8}, {5, 32, 8, 128}, {2, 4, 4, 64}, {4, 12, 2, 256}};
    for (int gi = 0; gi < n_gpus; gi++)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            llmq_backend *be = gpus[gi];
            const int n = shapes[si][0], H = shapes[si][1], KV = shapes[si][2], hd = shapes[si][3];
            const size_t nq = (size_t)n * H * hd, nk = (size_t)n * KV * hd;
            float *q = fill(nq, 1.0f), *k = fill(nk, 1.0f), inv[128];
            const double theta = si % 2 ? 500000.0 : 10000.0;
            for (int i = 0; i < hd / 2; i++) inv[i] = (float)(1.0 / pow(theta, 2.0 * i / hd));
            int32_t pos[8];
            for (int i = 0; i < n; i++) pos[i] = i == 0 ? 0 : irand(i == 1 ? 100 : 100000);
            float *qr = malloc(nq * 4), *kr = malloc(nk * 4);
            void *dq = g_from(be, q, nq, qr), *dk = g_from(be, k, nk, kr);
            int32_t *dp = d_i32(be, pos, (size_t)n);
            float *di = d_f32(be, inv, (size_t)hd / 2);
            be->ops->rope(be, dq, dk, dp, n, H, KV, hd, di);
            ref->ops->rope(ref, qr, kr, pos, n, H, KV, hd, inv);
            char what[96];
            snprintf(what, sizeof what, "rope %s n%d H%d KV%d hd%d", gpu_names[gi], n, H, KV, hd);
            check_out(be, dq, qr, nq, 1.0, what);
            check_out(be, dk, kr, nk, 1.0, what);
            g_free(be, dq), g_free(be, dk);
            be->ops->free(be, dp), be->ops->free(be, di);
            free(q), free(k), free(qr), free(kr);
        }
}

/* ------------------------------------------------------------ elementwise, gather, kv_store */

static void test_swiglu_add_gather(void **st) {
    (void)st;
    NEED_GPU();
    for (int gi = 0; gi < n_gpus; gi++) {
        llmq_backend *be = gpus[gi];
        const int n = 13, D = 14336 / 8 + 3;
        const size_t N = (size_t)n * D;
        float *g = fill(N, 6.0f), *u = fill(N, 2.0f), *gr = malloc(N * 4), *ur = malloc(N * 4), *want = malloc(N * 4);
        void *dg = g_from(be, g, N, gr), *du = g_from(be, u, N, ur), *out = g_alloc(be, N);
        be->ops->swiglu(be, out, dg, du, n, D);
        ref->ops->swiglu(ref, want, gr, ur, n, D);
        check_out(be, out, want, N, 1.0, "swiglu");
        be->ops->swiglu(be, dg, dg, du, n, D); /* in place */
        check_out(be, dg, want, N, 1.0, "swiglu in place");

        be->ops->add(be, du, out, N);
        for (size_t i = 0; i < N; i++) ur[i] += want[i];
        check_out(be, du, ur, N, 2.0, "add");

        int32_t rows[4] = {12, 0, 5, 12};
        int32_t *dr = d_i32(be, rows, 4);
        void *dst = g_alloc(be, (size_t)4 * D);
        be->ops->gather_rows(be, dst, du, dr, 4, D);
        float *wg = malloc((size_t)4 * D * 4);
        ref->ops->gather_rows(ref, wg, ur, rows, 4, D);
        check_out(be, dst, wg, (size_t)4 * D, 2.0, "gather_rows");

        const int kv_dim = 4 * 64, n_slots = 64;
        void *kc = g_alloc(be, (size_t)n_slots * kv_dim), *vc = g_alloc(be, (size_t)n_slots * kv_dim);
        float *k = fill((size_t)5 * kv_dim, 1.0f), *v = fill((size_t)5 * kv_dim, 1.0f);
        float *kr = malloc((size_t)5 * kv_dim * 4), *vr = malloc((size_t)5 * kv_dim * 4);
        void *dk = g_from(be, k, (size_t)5 * kv_dim, kr), *dv = g_from(be, v, (size_t)5 * kv_dim, vr);
        int32_t slots[5] = {63, 0, 17, 18, 40};
        int32_t *ds = d_i32(be, slots, 5);
        be->ops->kv_store(be, kc, vc, dk, dv, ds, 5, kv_dim);
        float *wk = malloc((size_t)n_slots * kv_dim * 4), *wv = malloc((size_t)n_slots * kv_dim * 4);
        for (size_t i = 0; i < (size_t)n_slots * kv_dim; i++) wk[i] = wv[i] = SENTINEL;
        ref->ops->kv_store(ref, wk, wv, kr, vr, slots, 5, kv_dim);
        check_out(be, kc, wk, (size_t)n_slots * kv_dim, 1.0, "kv_store k");
        check_out(be, vc, wv, (size_t)n_slots * kv_dim, 1.0, "kv_store v");

        g_free(be, dg), g_free(be, du), g_free(be, out), g_free(be, dst), g_free(be, kc), g_free(be, vc);
        g_free(be, dk), g_free(be, dv);
        be->ops->free(be, dr), be->ops->free(be, ds);
        free(g), free(u), free(gr), free(ur), free(want), free(wg), free(k), free(v), free(kr), free(vr), free(wk), free(wv);
    }
}

/* ------------------------------------------------------------ Falcon ops */

/* LayerNorm (rows with an offset mean, so a one-pass variance would
 * cancel) and exact GELU against the CPU reference; LayerNorm rows alone
 * equal the same rows in a batch, bit for bit. */
static void test_layernorm_gelu(void **st) {
    (void)st;
    NEED_GPU();
    const int dims[] = {64, 4544, 8192, 100};
    for (int gi = 0; gi < n_gpus; gi++)
        for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
            llmq_backend *be = gpus[gi];
            const int n = 7, D = dims[di];
            const size_t N = (size_t)n * D;
            float *x = fill(N, 2.0f), *w = fill((size_t)D, 1.0f), *b = fill((size_t)D, 0.5f);
            for (size_t i = 0; i < N; i++) x[i] += 3.0f; /* mean far from 0 */
            float *xr = malloc(N * 4), *want = malloc(N * 4), *all = malloc(N * 4), *one = malloc((size_t)D * 4);
            void *dx = g_from(be, x, N, xr), *out = g_alloc(be, N);
            float *dw = d_f32(be, w, (size_t)D), *db = d_f32(be, b, (size_t)D);
            char what[64];
            snprintf(what, sizeof what, "layernorm %s dim %d", gpu_names[gi], D);
            be->ops->layernorm(be, out, dx, dw, db, n, D, 1e-5f);
            ref->ops->layernorm(ref, want, xr, w, b, n, D, 1e-5f);
            check_out(be, out, want, N, 2.0, what);
            be->ops->download_f32(be, all, out, N);
            void *x1 = g_from(be, xr + (size_t)3 * D, (size_t)D, NULL), *o1 = g_alloc(be, (size_t)D);
            be->ops->layernorm(be, o1, x1, dw, db, 1, D, 1e-5f);
            be->ops->download_f32(be, one, o1, (size_t)D);
            gpu_check(be, what);
            check_same_bits(all + (size_t)3 * D, one, (size_t)D, what);
            be->ops->layernorm(be, dx, dx, dw, db, n, D, 1e-5f); /* in place */
            snprintf(what, sizeof what, "layernorm in place %s dim %d", gpu_names[gi], D);
            check_out(be, dx, want, N, 2.0, what);

            float *g = fill(N, 5.0f), *gr = malloc(N * 4);
            void *dg = g_from(be, g, N, gr), *go = g_alloc(be, N);
            be->ops->gelu(be, go, dg, N);
            ref->ops->gelu(ref, want, gr, N);
            snprintf(what, sizeof what, "gelu %s", gpu_names[gi]);
            check_out(be, go, want, N, 1.0, what);
            be->ops->gelu(be, dg, dg, N);
            check_out(be, dg, want, N, 1.0, what);

            g_free(be, dx), g_free(be, out), g_free(be, x1), g_free(be, o1), g_free(be, dg), g_free(be, go);
            be->ops->free(be, dw), be->ops->free(be, db);
            free(x), free(w), free(b), free(xr), free(want), free(all), free(one), free(g), free(gr);
        }
}

/* ------------------------------------------------------------ attention */

/* One step: n_seqs sequences, sequence s runs tokens [start[s], start[s] + len[s]). */
typedef struct att_case {
    int n_heads, n_kv, hd, window;
    int n_seqs;
    int start[6], len[6];
} att_case;

/* Run the step on the GPU and the oracle over a cache filled with random
 * K/V for every position up to the end of each sequence; returns the GPU
 * output (host floats, caller frees). */
static float *run_attention(llmq_backend *be, const att_case *c, const char *what, int check) {
    const int bs = 16, hd = c->hd, kv_dim = c->n_kv * hd, qd = c->n_heads * hd;
    int n_tok = 0, max_blocks = 1, total_blocks = 0;
    for (int s = 0; s < c->n_seqs; s++) {
        const int nb = (c->start[s] + c->len[s] + bs - 1) / bs;
        n_tok += c->len[s];
        total_blocks += nb;
        if (nb > max_blocks) max_blocks = nb;
    }
    /* block tables: a fixed permutation of all blocks, so sequences interleave in the cache */
    assert_true(c->n_seqs > 0 && c->n_seqs <= 6);
    int32_t *bt = calloc((size_t)c->n_seqs * (size_t)max_blocks, 4);
    int next = 0;
    for (int s = 0; s < c->n_seqs; s++) {
        const int nb = (c->start[s] + c->len[s] + bs - 1) / bs;
        for (int b = 0; b < nb; b++) bt[(size_t)s * max_blocks + b] = (next++ * 7919) % total_blocks;
    }
    /* the permutation hits each block once: 7919 is prime and larger than any total here.
     * K, V and q rows are functions of the position alone, so that the same
     * token gets the same data in every case that contains it. */
    const size_t cache_n = (size_t)total_blocks * bs * kv_dim;
    float *kc = malloc(cache_n * 4), *vc = malloc(cache_n * 4), *q = malloc((size_t)n_tok * qd * 4);
    for (size_t i = 0; i < cache_n; i++) kc[i] = vc[i] = 0.0f;
    int32_t tok_start[7], *pos = malloc((size_t)n_tok * 4);
    int t = 0;
    for (int s = 0; s < c->n_seqs; s++) {
        tok_start[s] = t;
        for (int pp = 0; pp < c->start[s] + c->len[s]; pp++) {
            const size_t row = (size_t)bt[(size_t)s * max_blocks + pp / bs] * bs + pp % bs;
            rng_state = 0x51ed270b27ull + (uint64_t)pp * 0x9e3779b97f4a7c15ull + (uint64_t)s;
            for (int d = 0; d < kv_dim; d++) kc[row * kv_dim + d] = frand(), vc[row * kv_dim + d] = frand();
        }
        for (int i = 0; i < c->len[s]; i++) {
            pos[t] = c->start[s] + i;
            rng_state = 0x2545f4914f6cdd1dull + (uint64_t)pos[t] * 0x9e3779b97f4a7c15ull + (uint64_t)s;
            for (int d = 0; d < qd; d++) q[(size_t)t * qd + d] = frand();
            t++;
        }
    }
    tok_start[c->n_seqs] = t;
    float *kcr = malloc(cache_n * 4), *vcr = malloc(cache_n * 4), *qr = malloc((size_t)n_tok * qd * 4);
    void *dkc = g_from(be, kc, cache_n, kcr), *dvc = g_from(be, vc, cache_n, vcr);
    void *dq = g_from(be, q, (size_t)n_tok * qd, qr), *out = g_alloc(be, (size_t)n_tok * qd);
    int32_t *dts = d_i32(be, tok_start, (size_t)c->n_seqs + 1), *dpos = d_i32(be, pos, (size_t)n_tok);
    int32_t *dbt = d_i32(be, bt, (size_t)c->n_seqs * max_blocks);
    be_attn_step gst = {c->n_seqs, n_tok, dts, dpos, dbt, max_blocks, bs};
    be_attn_step rst = {c->n_seqs, n_tok, tok_start, pos, bt, max_blocks, bs};
    be_attn_shape sh = {c->n_heads, c->n_kv, hd, c->window, 1.0f / sqrtf((float)hd)};
    be->ops->attention(be, out, dq, dkc, dvc, &gst, &sh);
    float *got = malloc((size_t)n_tok * qd * 4);
    if (check) {
        float *want = malloc((size_t)n_tok * qd * 4);
        ref->ops->attention(ref, want, qr, kcr, vcr, &rst, &sh);
        check_out(be, out, want, (size_t)n_tok * qd, 0.5, what);
        free(want);
    }
    be->ops->download_f32(be, got, out, (size_t)n_tok * qd);
    gpu_check(be, what);
    g_free(be, dkc), g_free(be, dvc), g_free(be, dq), g_free(be, out);
    be->ops->free(be, dts), be->ops->free(be, dpos), be->ops->free(be, dbt);
    free(bt), free(kc), free(vc), free(q), free(pos), free(kcr), free(vcr), free(qr);
    return got;
}

static void test_attention(void **st) {
    (void)st;
    NEED_GPU();
    const att_case cases[] = {
        /* stories260K's shape: decodes and a prefill chunk */
        {8, 4, 8, 0, 3, {5, 0, 20}, {1, 17, 1}},
        /* Llama-3-8B heads: mixed decode / chunked prefill, one long context (split path) */
        {32, 8, 128, 0, 4, {0, 700, 40, 1500}, {33, 1, 9, 1}},
        /* MHA, head_dim 64, a prefill crossing partitions */
        {12, 12, 64, 0, 2, {200, 3}, {120, 1}},
        /* GQA group of 7 (Qwen2), sliding window */
        {14, 2, 64, 100, 3, {0, 300, 90}, {40, 1, 20}},
        /* MQA: 32 heads on 1 KV head (two head blocks per token) */
        {32, 1, 128, 0, 2, {10, 600}, {5, 1}},
        /* head_dim 256, sliding window across partitions */
        {4, 2, 256, 300, 2, {0, 900}, {3, 2}},
        /* GQA groups 3, 5, 6 and 8 (a tile holds 16 / group tokens, rounded down) */
        {6, 2, 64, 0, 2, {0, 40}, {11, 1}},
        {10, 2, 64, 0, 2, {0, 270}, {7, 1}},
        {12, 2, 128, 0, 2, {3, 0}, {5, 9}},
        {16, 2, 64, 0, 2, {0, 100}, {5, 2}},
        /* contexts past 8K positions: decodes and a short chunk (33 partitions) */
        {8, 2, 64, 0, 2, {8300, 8190}, {1, 4}},
    };
    for (int gi = 0; gi < n_gpus; gi++)
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
            const att_case *c = &cases[ci];
            llmq_backend *be = gpus[gi];
            char what[128];
            snprintf(what, sizeof what, "attention %s H%d KV%d hd%d win%d case %zu", gpu_names[gi], c->n_heads,
                     c->n_kv, c->hd, c->window, ci);
            /* the kernel's shared memory: 16 query rows and a K and a V tile of 32 positions (rows padded
             * by 2); a device without that much (a T4's 64 KiB, head_dim 256 in F32) must refuse clearly */
            cuda_backend_info info;
            cuda_backend_get_info(be, &info);
            const size_t es = llmq_dtype_size(be->act_dt);
            const size_t smem = (16 * (size_t)c->hd + 2 * 32 * (size_t)(c->hd + 2)) * es;
            if (smem > info.smem_optin) {
                int32_t z[2] = {0, 1};
                int32_t *dz = d_i32(be, z, 2);
                void *buf = be->ops->alloc(be, (size_t)c->n_heads * c->hd * es * 2);
                be_attn_step step1 = {1, 1, dz, dz, dz, 1, 16};
                be_attn_shape sh = {c->n_heads, c->n_kv, c->hd, 0, 1.0f};
                be->ops->attention(be, buf, buf, buf, buf, &step1, &sh);
                llmq_err err = {0};
                assert_int_equal(be->ops->sync(be, &err), LLMQ_ERR_UNSUPPORTED);
                assert_non_null(strstr(err.msg, "shared memory"));
                print_message("# %s: refused as it should be on %s (%zu bytes of shared memory, device %zu): %s\n",
                              what, info.name, smem, info.smem_optin, err.msg);
                be->ops->free(be, buf);
                be->ops->free(be, dz);
                continue;
            }
            free(run_attention(be, c, what, 1));
        }
}

/* A step whose partials exceed the attention workspace runs in slices of
 * tokens (attention.cu); slicing changes no bit.  A backend with a 16 KiB
 * workspace (LLMQ_CUDA_ATTN_WS_KB) against the default one. */
static void test_attention_sliced(void **st) {
    (void)st;
    NEED_GPU();
    setenv("LLMQ_CUDA_ATTN_WS_KB", "16", 1);
    llmq_backend *small = make_gpu(gpu_names[0]);
    unsetenv("LLMQ_CUDA_ATTN_WS_KB");
    assert_non_null(small);
    cuda_backend_info info;
    cuda_backend_get_info(small, &info);
    assert_int_equal(info.attn_ws_bytes, 16 << 10);
    /* 9 tokens over 3 partitions: 8 heads x 3 x (64 + 2) floats = 6336 bytes a token, 2 tokens a slice */
    const att_case c = {8, 2, 64, 0, 2, {300, 520}, {6, 3}};
    const int qd = 8 * 64;
    float *a = run_attention(small, &c, "attention in slices", 1);
    float *b = run_attention(gpus[0], &c, "attention in one launch", 1);
    check_same_bits(a, b, (size_t)9 * qd, "attention sliced vs whole");
    free(a), free(b);
    llmq_backend_destroy(small);
}

/* The same token computed as a decode step alone, inside a batch, and as
 * the last token of a prefill chunk gives the same bits. */
static void test_attention_invariance(void **st) {
    (void)st;
    NEED_GPU();
    for (int gi = 0; gi < n_gpus; gi++) {
        llmq_backend *be = gpus[gi];
#ifdef LLMQ_CUDA_EMU
        const int lens[] = {9, 300}; /* the emulated device is slow at whole prefills; 300 spans 2 partitions */
#else
        const int lens[] = {9, 300, 1000};
#endif
        for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
            const int p = lens[li]; /* the token at position p, its sequence holds 0..p */
            const int qd = 32 * 128;
            att_case alone = {32, 8, 128, 0, 1, {p}, {1}};
            att_case chunk = {32, 8, 128, 0, 1, {p - 7}, {8}};
            att_case whole = {32, 8, 128, 0, 1, {0}, {p + 1}};
            char what[96];
            snprintf(what, sizeof what, "attention invariance %s pos %d", gpu_names[gi], p);
            float *a = run_attention(be, &alone, what, 0);
            float *b = run_attention(be, &chunk, what, 0);
            float *w = run_attention(be, &whole, what, 0);
            check_same_bits(a, b + (size_t)7 * qd, (size_t)qd, what);
            check_same_bits(a, w + (size_t)p * qd, (size_t)qd, what);
            free(a), free(b), free(w);
        }
    }
}

/* ------------------------------------------------------------ errors */

static void test_errors_reported_by_sync(void **st) {
    (void)st;
    NEED_GPU();
    llmq_backend *be = gpus[0];
    int32_t z[2] = {0, 1};
    int32_t *dz = d_i32(be, z, 2);
    void *buf = be->ops->alloc(be, 4096);
    be_attn_step step = {1, 1, dz, dz, dz, 1, 16};
    be_attn_shape sh = {2, 2, 7, 0, 1.0f}; /* odd head_dim: unsupported */
    be->ops->attention(be, buf, buf, buf, buf, &step, &sh);
    llmq_err err = {0};
    assert_int_equal(be->ops->sync(be, &err), LLMQ_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "head_dim 7"));
    assert_int_equal(be->ops->sync(be, &err), LLMQ_OK); /* reported once, then cleared */
    be->ops->free(be, buf);
    be->ops->free(be, dz);
}

/* ------------------------------------------------------------ step graphs */

/* The ops of a small "step" (rmsnorm, a pinned GEMM, attention over a
 * paged cache with a split context, an add) on the buffers of `g`. */
typedef struct graph_rig {
    void *x, *h, *o, *q, *kc, *vc, *att;
    float *w_norm;
    be_weight w;
    int32_t *d_tok, *d_pos, *d_bt;
    int n, D, M, hd, heads, ctx;
} graph_rig;

static void graph_ops(llmq_backend *be, graph_rig *g) {
    const be_attn_step step = {g->n, g->n, g->d_tok, g->d_pos, g->d_bt, g->ctx / 16, 16};
    const be_attn_shape shape = {g->heads, g->heads / 2, g->hd, 0, 0.25f};
    be->ops->rmsnorm(be, g->h, g->x, g->w_norm, g->n, g->D, 1e-5f);
    be->ops->matmul(be, g->o, g->h, &g->w, NULL, g->n);
    be->ops->attention(be, g->att, g->q, g->kc, g->vc, &step, &shape);
    be->ops->add(be, g->o, g->att, (size_t)g->n * g->M);
}

/* Upload fresh inputs (x, q, the cache) drawn from the test's generator. */
static void graph_inputs(llmq_backend *be, graph_rig *g) {
    const size_t kvn = (size_t)g->ctx * (g->heads / 2) * g->hd;
    float *x = fill((size_t)g->n * g->D, 2.0f), *q = fill((size_t)g->n * g->M, 1.0f), *k = fill(kvn, 1.0f),
          *v = fill(kvn, 1.0f);
    be->ops->upload_f32(be, g->x, x, (size_t)g->n * g->D);
    be->ops->upload_f32(be, g->q, q, (size_t)g->n * g->M);
    be->ops->upload_f32(be, g->kc, k, kvn);
    be->ops->upload_f32(be, g->vc, v, kvn);
    free(x), free(q), free(k), free(v);
}

static float *graph_out(llmq_backend *be, graph_rig *g, const char *what) {
    float *o = malloc((size_t)g->n * g->M * sizeof *o);
    be->ops->download_f32(be, o, g->o, (size_t)g->n * g->M);
    gpu_check(be, what);
    return o;
}

/* A recorded step gives the bits of the same ops run one by one, and a
 * replay reads the buffers' new contents: warm-up (eager), recording,
 * replay, each against an eager run on the same inputs. */
static void test_step_graph(void **st) {
    (void)st;
    NEED_GPU();
    for (int gi = 0; gi < n_gpus; gi++) {
        llmq_backend *be = gpus[gi];
        cuda_backend_info i0, i1;
        cuda_backend_get_info(be, &i0);
        if (!i0.graphs_on) {
            print_message("# skipped: step graphs are off (LLMQ_CUDA_GRAPHS=0)\n");
            skip();
        }
        graph_rig g = {.n = 6, .D = 512, .M = 512, .hd = 64, .heads = 8, .ctx = 640};
        g.x = g_alloc(be, (size_t)g.n * g.D), g.h = g_alloc(be, (size_t)g.n * g.D);
        g.o = g_alloc(be, (size_t)g.n * g.M), g.q = g_alloc(be, (size_t)g.n * g.M);
        g.att = g_alloc(be, (size_t)g.n * g.M);
        g.kc = g_alloc(be, (size_t)g.ctx * (g.heads / 2) * g.hd), g.vc = g_alloc(be, (size_t)g.ctx * (g.heads / 2) * g.hd);
        float *wn = fill((size_t)g.D, 1.0f), *wm = fill((size_t)g.M * g.D, 0.05f);
        g.w_norm = d_f32(be, wn, (size_t)g.D);
        be_weight in = {wm, LLMQ_F32, g.M, g.D, 0};
        assert_int_equal(be->ops->weight_prepare(be, &g.w, &in), LLMQ_OK);
        /* 6 decode tokens of one block table each (the same 40 blocks), at
         * positions from 3 to 600: one partition and several */
        int32_t tok[7], pos[6], bt[6 * 40];
        for (int t = 0; t <= g.n; t++) tok[t] = t;
        const int p[6] = {3, 100, 255, 256, 511, 600};
        for (int t = 0; t < g.n; t++) pos[t] = p[t];
        for (int b = 0; b < 6 * 40; b++) bt[b] = (b * 7) % 40;
        g.d_tok = d_i32(be, tok, 7), g.d_pos = d_i32(be, pos, 6), g.d_bt = d_i32(be, bt, 6 * 40);
        const uint64_t key = 0x5eed0000u + (uint64_t)gi;
        char what[96];
        const char *phase[3] = {"warm-up", "recording", "replay"};
        const int want_mode[3] = {BE_GRAPH_EAGER, BE_GRAPH_RECORDING, BE_GRAPH_REPLAYED};
        float *prev = NULL;
        for (int ph = 0; ph < 3; ph++) {
            snprintf(what, sizeof what, "step graph %s %s", gpu_names[gi], phase[ph]);
            graph_inputs(be, &g);
            gpu_check(be, what);
            const int mode = be->ops->graph_begin(be, key);
            if (mode != want_mode[ph]) fail_msg("%s: graph_begin answered %d, want %d", what, mode, want_mode[ph]);
            if (mode != BE_GRAPH_REPLAYED) graph_ops(be, &g);
            if (mode == BE_GRAPH_RECORDING && be->ops->graph_end(be) != 1) fail_msg("%s: recording failed", what);
            float *got = graph_out(be, &g, what);
            graph_ops(be, &g); /* the same inputs, one op at a time */
            float *want = graph_out(be, &g, what);
            check_same_bits(want, got, (size_t)g.n * g.M, what);
            if (prev && !memcmp(prev, got, (size_t)g.n * g.M * sizeof *got))
                fail_msg("%s: the same output as the step before on new inputs", what);
            free(prev);
            prev = got;
            free(want);
        }
        free(prev);
        cuda_backend_get_info(be, &i1);
        assert_int_equal(i1.graphs_recorded - i0.graphs_recorded, 1);
        assert_int_equal(i1.graph_replays - i0.graph_replays, 1);
        assert_true(i1.graphs_on);
        g_free(be, g.x), g_free(be, g.h), g_free(be, g.o), g_free(be, g.q), g_free(be, g.att);
        g_free(be, g.kc), g_free(be, g.vc);
        be->ops->free(be, g.w_norm), be->ops->free(be, g.d_tok), be->ops->free(be, g.d_pos), be->ops->free(be, g.d_bt);
        be->ops->weight_release(be, &g.w);
        free(wn), free(wm);
    }
}

/* ------------------------------------------------------------ NCCL, one rank */

static void test_nccl_single_rank(void **st) {
    (void)st;
    NEED_GPU();
    llmq_backend *be = gpus[0];
    unsigned char id[COMM_NCCL_ID_BYTES];
    llmq_err err = {0};
    assert_int_equal(comm_nccl_unique_id(id, &err), LLMQ_OK);
    llmq_comm *c = comm_nccl_create(id, 0, 1, 20000, cuda_backend_stream(be), &err);
    if (!c) fail_msg("comm_nccl_create: %s", err.msg);
    assert_int_equal(c->device_mem, 1);
    float h[8] = {1, 2, 3, 4, 5, 6, 7, 8}, back[8];
    float *d = be->ops->alloc(be, sizeof h);
    float *g = be->ops->alloc(be, sizeof h);
    be->ops->upload(be, d, h, sizeof h);
    assert_int_equal(comm_all_reduce_sum(c, d, 8, COMM_F32), LLMQ_OK);
    assert_int_equal(comm_all_gather(c, g, d, 8, COMM_F32), LLMQ_OK);
    assert_int_equal(comm_broadcast(c, h, sizeof h, 0), LLMQ_OK); /* host memory */
    assert_int_equal(comm_barrier(c), LLMQ_OK);
    memset(back, 0, sizeof back);
    if (be->act_dt == LLMQ_F32) { /* gpus[0] is the F32 backend: download is a plain copy */
        be->ops->download_f32(be, back, g, 8);
        gpu_check(be, "nccl all_gather");
        for (int i = 0; i < 8; i++) assert_true(back[i] == h[i]);
    }
    comm_abort(c, "test abort");
    assert_int_equal(comm_barrier(c), LLMQ_ERR_IO);
    assert_non_null(strstr(c->err.msg, "test abort"));
    comm_destroy(c);
    be->ops->free(be, d);
    be->ops->free(be, g);
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--info")) {
        llmq_err err = {0};
        llmq_backend *be = llmq_backend_create("cuda", &err);
        if (!be) {
            printf("{\"device\":null,\"error\":\"%s\"}\n", err.msg);
            return 1;
        }
        cuda_backend_info info;
        cuda_backend_get_info(be, &info);
        const double bw = cuda_backend_measure_bw(be, (size_t)1 << 30);
        printf("{\"device\":\"%s\",\"sm\":%d,\"sms\":%d,\"mem_gib\":%.1f,\"act_dtype\":\"%s\",\"peak_bw_gbs\":%.0f,"
               "\"measured_read_bw_gbs\":%.0f}\n",
               info.name, info.sm, info.n_sms, info.mem_total / 1073741824.0, llmq_dtype_name(be->act_dt),
               info.peak_bw_gbs, bw);
        llmq_backend_destroy(be);
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_embed),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_qmatmul),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_swiglu_add_gather),
        cmocka_unit_test(test_layernorm_gelu),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_attention_sliced),
        cmocka_unit_test(test_attention_invariance),
        cmocka_unit_test(test_errors_reported_by_sync),
        cmocka_unit_test(test_step_graph),
        cmocka_unit_test(test_nccl_single_rank),
    };
    /* LLMQ_TEST_FILTER=test_attention* runs only the matching cases */
    if (getenv("LLMQ_TEST_FILTER")) cmocka_set_test_filter(getenv("LLMQ_TEST_FILTER"));
    return cmocka_run_group_tests_name("cuda_ops", tests, setup, teardown);
}
