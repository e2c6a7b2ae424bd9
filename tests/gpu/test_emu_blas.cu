/*
 * test_emu_blas.cu — the emulated cuBLAS / cuBLASLt (kernels/cuda/emu/emu_cublas.cc)
 * against a naive double-precision GEMM written here.
 *
 * Every case stores its matrices with padded leading dimensions whose
 * padding holds random values too, so a GEMM that reads through the wrong
 * leading dimension, order or transpose produces a wrong answer rather than
 * zeros; D's padding starts as a sentinel that must survive.  Tolerances are
 * error bounds, not guesses: FP32 accumulation over k products is within
 * (k + 2) 2^-24 sum|a b| of the exact sum, plus one rounding to the output
 * type (2^-24 f32, 2^-11 f16, 2^-8 bf16) and, for reductions in the output
 * type, one more per K slice.
 *
 * The cases that make the emulator report a defect (out-of-bounds matrix,
 * host pointer, never-written input) run in a child process (this program,
 * re-executed with --child <case>), since an out-of-bounds access leaves a
 * sticky error, as on a GPU.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern "C" { /* cmocka.h declares C functions without C++ linkage */
#include <cmocka.h>
}
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>

#include <vector>

/* ------------------------------------------------------------ host matrices */

struct hmat {
    cudaDataType_t type;
    int64_t rows, cols, ld;
    bool row_major;
    std::vector<unsigned char> bytes;

    size_t esize() const { return type == CUDA_R_32F ? 4 : 2; }
    int64_t outer() const { return row_major ? rows : cols; }
    size_t size() const { return bytes.size(); }
    int64_t off(int64_t r, int64_t c) const { return row_major ? r * ld + c : c * ld + r; }
    /* the stored value as a double */
    double at_idx(int64_t i) const {
        const unsigned char *p = bytes.data() + (size_t)i * esize();
        if (type == CUDA_R_32F) {
            float f;
            memcpy(&f, p, 4);
            return f;
        }
        if (type == CUDA_R_16F) {
            __half h;
            memcpy(&h, p, 2);
            return __half2float(h);
        }
        __nv_bfloat16 b;
        memcpy(&b, p, 2);
        return __bfloat162float(b);
    }
    double at(int64_t r, int64_t c) const { return at_idx(off(r, c)); }
    void set_idx(int64_t i, float v) {
        unsigned char *p = bytes.data() + (size_t)i * esize();
        if (type == CUDA_R_32F) {
            memcpy(p, &v, 4);
        } else if (type == CUDA_R_16F) {
            __half h = __float2half_rn(v);
            memcpy(p, &h, 2);
        } else {
            __nv_bfloat16 b = __float2bfloat16_rn(v);
            memcpy(p, &b, 2);
        }
    }
};

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float rnd(void) { /* uniform in [-1, 1) */
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) & 0xffffff) / (float)(1 << 23) - 1.0f;
}

/* rows x cols, ld >= the contiguous run; every element, padding included, random. */
static hmat hmat_make(cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld, bool row_major) {
    hmat m;
    m.type = t, m.rows = rows, m.cols = cols, m.ld = ld, m.row_major = row_major;
    const int64_t outer = row_major ? rows : cols;
    m.bytes.resize((size_t)(outer * ld) * m.esize());
    for (int64_t i = 0; i < outer * ld; i++) m.set_idx(i, rnd());
    return m;
}

static void *dev_upload(const hmat &m) {
    void *d = NULL;
    assert_int_equal(cudaMalloc(&d, m.size()), cudaSuccess);
    assert_int_equal(cudaMemcpy(d, m.bytes.data(), m.size(), cudaMemcpyHostToDevice), cudaSuccess);
    return d;
}

static void dev_download(hmat *m, const void *d) {
    assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
    assert_int_equal(cudaMemcpy(m->bytes.data(), d, m->size(), cudaMemcpyDeviceToHost), cudaSuccess);
}

/* ------------------------------------------------------------ the reference */

struct ref_result {
    std::vector<double> v, tol; /* m x n, row i col j at i * n + j */
};

static double unit_roundoff(cudaDataType_t t) {
    return t == CUDA_R_32F ? ldexp(1.0, -24) : t == CUDA_R_16F ? ldexp(1.0, -11) : ldexp(1.0, -8);
}

/* D = alpha op(A) op(B) + beta C in double, and each element's error bound for an FP32
 * GEMM with `slices` roundings of partial sums to out_type. */
static ref_result ref_gemm(int64_t m, int64_t n, int64_t k, bool ta, bool tb, double alpha, const hmat &A,
                           const hmat &B, double beta, const hmat *C, cudaDataType_t out_type, int slices) {
    ref_result r;
    r.v.resize((size_t)(m * n));
    r.tol.resize((size_t)(m * n));
    const double u = unit_roundoff(out_type), u32 = ldexp(1.0, -24);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = 0, sa = 0;
            for (int64_t kk = 0; kk < k; kk++) {
                const double a = ta ? A.at(kk, i) : A.at(i, kk), b = tb ? B.at(j, kk) : B.at(kk, j);
                s += a * b;
                sa += fabs(a * b);
            }
            const double c = C && beta != 0.0 ? beta * C->at(i, j) : 0.0;
            const double v = alpha * s + c;
            const double acc = fabs(alpha) * sa * (double)(k + 2) * u32 + 4 * u32 * fabs(c);
            const double slice_round = slices > 1 && out_type != CUDA_R_32F ? slices * u * fabs(alpha) * sa : 0.0;
            r.v[(size_t)(i * n + j)] = v;
            r.tol[(size_t)(i * n + j)] = 1.01 * (acc + slice_round + u * (fabs(v) + acc + slice_round)) + 1e-7;
        }
    return r;
}

/* Elements of D outside tolerance; D's padding must still hold pad's bytes. */
static int count_wrong(const hmat &D, const ref_result &r, const hmat *pad_ref, int64_t m, int64_t n, bool verbose) {
    int wrong = 0;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            const double got = D.at(i, j), want = r.v[(size_t)(i * n + j)];
            if (!(fabs(got - want) <= r.tol[(size_t)(i * n + j)])) {
                if (verbose && wrong < 5)
                    fprintf(stderr, "  D[%lld,%lld] = %.9g, want %.9g (tol %.3g)\n", (long long)i, (long long)j, got,
                            want, r.tol[(size_t)(i * n + j)]);
                wrong++;
            }
        }
    if (pad_ref) {
        const int64_t inner = D.row_major ? D.cols : D.rows;
        for (int64_t o = 0; o < D.outer(); o++)
            for (int64_t e = inner; e < D.ld; e++)
                if (memcmp(&D.bytes[(size_t)(o * D.ld + e) * D.esize()], &pad_ref->bytes[(size_t)(o * D.ld + e) * D.esize()],
                           D.esize()) != 0) {
                    if (verbose) fprintf(stderr, "  D's padding at run %lld element %lld was written\n", (long long)o, (long long)e);
                    wrong++;
                }
    }
    return wrong;
}

/* ------------------------------------------------------------ cuBLASLt helpers */

struct lt_case {
    cublasLtMatmulDescOpaque_t op;
    cublasLtMatrixLayoutOpaque_t a, b, c, d;
};

static cublasStatus_t layout(cublasLtMatrixLayoutOpaque_t *l, const hmat &m) {
    cublasStatus_t s = cublasLtMatrixLayoutInit(l, m.type, (uint64_t)m.rows, (uint64_t)m.cols, m.ld);
    const int32_t order = m.row_major ? CUBLASLT_ORDER_ROW : CUBLASLT_ORDER_COL;
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_ORDER, &order, sizeof order);
    return s;
}

static cublasStatus_t lt_describe(lt_case *lc, bool ta, bool tb, const hmat &A, const hmat &B, const hmat &C,
                                  const hmat &D) {
    cublasStatus_t s = cublasLtMatmulDescInit(&lc->op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    const int32_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatmulDescSetAttribute(&lc->op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatmulDescSetAttribute(&lc->op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb);
    if (s == CUBLAS_STATUS_SUCCESS) s = layout(&lc->a, A);
    if (s == CUBLAS_STATUS_SUCCESS) s = layout(&lc->b, B);
    if (s == CUBLAS_STATUS_SUCCESS) s = layout(&lc->c, C);
    if (s == CUBLAS_STATUS_SUCCESS) s = layout(&lc->d, D);
    return s;
}

/* The heuristic's answers under max_ws workspace and the reduction-scheme mask. */
static int heuristic(cublasLtHandle_t lt, lt_case *lc, uint64_t max_ws, uint32_t mask, uint32_t align,
                     cublasLtMatmulHeuristicResult_t *res, int cap) {
    cublasLtMatmulPreferenceOpaque_t pref;
    assert_int_equal(cublasLtMatmulPreferenceInit(&pref), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatmulPreferenceSetAttribute(&pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_ws, sizeof max_ws),
                     CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatmulPreferenceSetAttribute(&pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &mask, sizeof mask),
                     CUBLAS_STATUS_SUCCESS);
    const cublasLtMatmulPreferenceAttributes_t aligns[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4; i++)
        assert_int_equal(cublasLtMatmulPreferenceSetAttribute(&pref, aligns[i], &align, sizeof align), CUBLAS_STATUS_SUCCESS);
    int found = 0;
    assert_int_equal(cublasLtMatmulAlgoGetHeuristic(lt, &lc->op, &lc->a, &lc->b, &lc->c, &lc->d, &pref, cap, res, &found),
                     CUBLAS_STATUS_SUCCESS);
    assert_true(found >= 1 && found <= cap);
    return found;
}

static int32_t algo_splitk(const cublasLtMatmulAlgo_t *a) {
    int32_t v = 0;
    size_t got = 0;
    assert_int_equal(cublasLtMatmulAlgoConfigGetAttribute(a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &v, sizeof v, &got),
                     CUBLAS_STATUS_SUCCESS);
    assert_int_equal(got, sizeof v);
    return v;
}

static uint32_t algo_scheme(const cublasLtMatmulAlgo_t *a) {
    uint32_t v = 99;
    size_t got = 0;
    assert_int_equal(cublasLtMatmulAlgoConfigGetAttribute(a, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &v, sizeof v, &got),
                     CUBLAS_STATUS_SUCCESS);
    return v;
}

struct env {
    cublasHandle_t blas;
    cublasLtHandle_t lt;
};

static int setup(void **state) {
    env *e = new env();
    if (cublasCreate(&e->blas) != CUBLAS_STATUS_SUCCESS || cublasLtCreate(&e->lt) != CUBLAS_STATUS_SUCCESS) return -1;
    *state = e;
    return 0;
}

static int teardown(void **state) {
    env *e = (env *)*state;
    int bad = cublasLtDestroy(e->lt) != CUBLAS_STATUS_SUCCESS || cublasDestroy(e->blas) != CUBLAS_STATUS_SUCCESS;
    delete e;
    return bad ? -1 : 0;
}

static const cudaDataType_t TYPES[3] = {CUDA_R_32F, CUDA_R_16F, CUDA_R_16BF};
static const char *tname(cudaDataType_t t) { return t == CUDA_R_32F ? "f32" : t == CUDA_R_16F ? "f16" : "bf16"; }

/* One cuBLASLt GEMM of odd shape with padded leading dimensions, D apart from C. */
static void lt_one(env *e, cudaDataType_t in_t, cudaDataType_t out_t, bool ta, bool tb, bool row_major, float alpha,
                   float beta) {
    const int64_t m = 37, n = 19, k = 53;
    const hmat A = row_major ? hmat_make(in_t, ta ? k : m, ta ? m : k, (ta ? m : k) + 3, true)
                             : hmat_make(in_t, ta ? k : m, ta ? m : k, (ta ? k : m) + 3, false);
    const hmat B = row_major ? hmat_make(in_t, tb ? n : k, tb ? k : n, (tb ? k : n) + 5, true)
                             : hmat_make(in_t, tb ? n : k, tb ? k : n, (tb ? n : k) + 5, false);
    const hmat C = hmat_make(out_t, m, n, (row_major ? n : m) + 2, row_major);
    hmat D = hmat_make(out_t, m, n, (row_major ? n : m) + 1, row_major);
    const hmat D0 = D;
    void *dA = dev_upload(A), *dB = dev_upload(B), *dC = dev_upload(C), *dD = dev_upload(D);
    lt_case lc;
    assert_int_equal(lt_describe(&lc, ta, tb, A, B, C, D), CUBLAS_STATUS_SUCCESS);
    cublasLtMatmulHeuristicResult_t res[8];
    heuristic(e->lt, &lc, 0, CUBLASLT_REDUCTION_SCHEME_MASK, 256, res, 8);
    assert_int_equal(cublasLtMatmul(e->lt, &lc.op, &alpha, dA, &lc.a, dB, &lc.b, &beta, dC, &lc.c, dD, &lc.d, &res[0].algo,
                                    NULL, 0, 0),
                     CUBLAS_STATUS_SUCCESS);
    dev_download(&D, dD);
    const ref_result r = ref_gemm(m, n, k, ta, tb, alpha, A, B, beta, &C, out_t, 1);
    const int wrong = count_wrong(D, r, &D0, m, n, true);
    if (wrong)
        fprintf(stderr, "lt %s->%s %c%c %s alpha %g beta %g: %d wrong\n", tname(in_t), tname(out_t), ta ? 'T' : 'N',
                tb ? 'T' : 'N', row_major ? "row" : "col", alpha, beta, wrong);
    assert_int_equal(wrong, 0);
    for (void *p : {dA, dB, dC, dD}) assert_int_equal(cudaFree(p), cudaSuccess);
}

static void test_lt_types_transposes_orders(void **state) {
    env *e = (env *)*state;
    for (cudaDataType_t t : TYPES)
        for (int tr = 0; tr < 4; tr++)
            for (int row = 0; row < 2; row++) lt_one(e, t, t, tr & 1, tr & 2, row, 1.25f, -0.5f);
    /* 16-bit operands into an F32 result; alpha 1 beta 0 (C not read) */
    lt_one(e, CUDA_R_16F, CUDA_R_32F, true, false, false, 1.0f, 0.0f);
    lt_one(e, CUDA_R_16BF, CUDA_R_32F, false, true, true, 1.0f, 0.0f);
}

/* cublasGemmEx: column-major, every transpose, padded lda/ldb/ldc, in place in C. */
static void test_gemmex(void **state) {
    env *e = (env *)*state;
    const int m = 29, n = 23, k = 41;
    for (cudaDataType_t t : TYPES)
        for (int tr = 0; tr < 4; tr++) {
            const bool ta = tr & 1, tb = tr & 2;
            const hmat A = hmat_make(t, ta ? k : m, ta ? m : k, (ta ? k : m) + 4, false);
            const hmat B = hmat_make(t, tb ? n : k, tb ? k : n, (tb ? n : k) + 2, false);
            const hmat C = hmat_make(t, m, n, m + 3, false);
            hmat D = C;
            void *dA = dev_upload(A), *dB = dev_upload(B), *dC = dev_upload(C);
            const float alpha = -0.75f, beta = 2.0f;
            assert_int_equal(cublasGemmEx(e->blas, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k,
                                          &alpha, dA, t, (int)A.ld, dB, t, (int)B.ld, &beta, dC, t, (int)C.ld,
                                          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                             CUBLAS_STATUS_SUCCESS);
            dev_download(&D, dC);
            const ref_result r = ref_gemm(m, n, k, ta, tb, alpha, A, B, beta, &C, t, 1);
            assert_int_equal(count_wrong(D, r, &C, m, n, true), 0);
            for (void *p : {dA, dB, dC}) assert_int_equal(cudaFree(p), cudaSuccess);
        }
}

/* cublasGemmEx's algorithm choice honours the handle's workspace and math mode: with room only
 * for an in-place (F16) reduction it splits K unless CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION
 * forbids that, and then runs unsplit (the pinned cuBLASLt algorithm's bits); pinned
 * CUBLAS_GEMM_ALGOn are within tolerance and repeat their bits. */
static void test_gemmex_workspace_math_algos(void **state) {
    (void)state;
    const int m = 64, n = 2, k = 1024;
    const cudaDataType_t t = CUDA_R_16F;
    cublasHandle_t h;
    cublasLtHandle_t lt;
    assert_int_equal(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtCreate(&lt), CUBLAS_STATUS_SUCCESS);
    const hmat A = hmat_make(t, k, m, k, false), B = hmat_make(t, k, n, k, false);
    hmat P = hmat_make(t, m, n, m, false), R = P;
    void *dA = dev_upload(A), *dB = dev_upload(B), *dP = dev_upload(P), *dR = dev_upload(R), *ws = NULL;
    assert_int_equal(cudaMalloc(&ws, 1 << 20), cudaSuccess);
    const float alpha = 1.0f, beta = 0.0f;
    lt_case lc;
    assert_int_equal(lt_describe(&lc, true, false, A, B, P, P), CUBLAS_STATUS_SUCCESS);
    cublasLtMatmulHeuristicResult_t res[4];
    heuristic(lt, &lc, 0, CUBLASLT_REDUCTION_SCHEME_NONE, 16, res, 4);
    assert_int_equal(cublasLtMatmul(lt, &lc.op, &alpha, dA, &lc.a, dB, &lc.b, &beta, dP, &lc.c, dP, &lc.d, &res[0].algo, NULL,
                                    0, 0),
                     CUBLAS_STATUS_SUCCESS);
    dev_download(&P, dP);
    const ref_result r = ref_gemm(m, n, k, true, false, 1, A, B, 0, NULL, t, 8);
    assert_int_equal(count_wrong(P, r, NULL, m, n, true), 0);

    assert_int_equal(cublasSetWorkspace(h, ws, 256), CUBLAS_STATUS_SUCCESS);
    for (int disallow = 0; disallow < 2; disallow++) {
        const cublasMath_t mode = (cublasMath_t)(CUBLAS_DEFAULT_MATH | (disallow ? CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION : 0));
        assert_int_equal(cublasSetMathMode(h, mode), CUBLAS_STATUS_SUCCESS);
        assert_int_equal(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, dA, t, k, dB, t, k, &beta, dR, t, m,
                                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                         CUBLAS_STATUS_SUCCESS);
        dev_download(&R, dR);
        assert_int_equal(count_wrong(R, r, NULL, m, n, true), 0);
        const bool same = memcmp(R.bytes.data(), P.bytes.data(), P.size()) == 0;
        assert_int_equal(same, disallow == 1);
    }
    /* pinned split-K 2^n reduced in FP32: needs workspace */
    assert_int_equal(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, dA, t, k, dB, t, k, &beta, dR, t, m,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_ALGO3),
                     CUBLAS_STATUS_NOT_SUPPORTED);
    assert_int_equal(cublasSetWorkspace(h, ws, 1 << 20), CUBLAS_STATUS_SUCCESS);
    for (int algo = CUBLAS_GEMM_ALGO0; algo <= CUBLAS_GEMM_ALGO3; algo++) {
        hmat first = R;
        for (int rep = 0; rep < 2; rep++) {
            assert_int_equal(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, dA, t, k, dB, t, k, &beta, dR, t, m,
                                          CUBLAS_COMPUTE_32F, (cublasGemmAlgo_t)algo),
                             CUBLAS_STATUS_SUCCESS);
            dev_download(&R, dR);
            assert_int_equal(count_wrong(R, r, NULL, m, n, true), 0);
            if (rep) assert_memory_equal(R.bytes.data(), first.bytes.data(), R.size());
            else first = R;
        }
    }
    assert_int_equal(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, dA, t, k, dB, t, k, &beta, dR, t, m,
                                  CUBLAS_COMPUTE_32F, (cublasGemmAlgo_t)42),
                     CUBLAS_STATUS_INVALID_VALUE);
    for (void *p : {dA, dB, dP, dR, ws}) assert_int_equal(cudaFree(p), cudaSuccess);
    assert_int_equal(cublasLtDestroy(lt), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasDestroy(h), CUBLAS_STATUS_SUCCESS);
}

/* Small n, large k: the heuristic offers split-K first when workspace allows, none when the
 * preference forbids workspace and reductions; every algorithm is within tolerance, the same
 * one gives the same bits twice, a split one other bits than the unsplit one. */
static void test_algos_split_k(void **state) {
    env *e = (env *)*state;
    const int64_t m = 48, n = 3, k = 1024;
    for (cudaDataType_t t : {CUDA_R_32F, CUDA_R_16F}) {
        const hmat A = hmat_make(t, k, m, k, false); /* TN, as matmul.cu */
        const hmat B = hmat_make(t, k, n, k, false);
        hmat D = hmat_make(t, m, n, m, false);
        void *dA = dev_upload(A), *dB = dev_upload(B), *dD = dev_upload(D);
        lt_case lc;
        assert_int_equal(lt_describe(&lc, true, false, A, B, D, D), CUBLAS_STATUS_SUCCESS);
        cublasLtMatmulHeuristicResult_t res[8];
        const int found = heuristic(e->lt, &lc, 64 << 20, CUBLASLT_REDUCTION_SCHEME_MASK, 16, res, 8);
        assert_true(found >= 3);
        assert_true(algo_splitk(&res[0].algo) > 1); /* split-K leads for this shape */
        int split = -1, plain = -1;
        for (int i = 0; i < found; i++) {
            assert_int_equal(res[i].state, CUBLAS_STATUS_SUCCESS);
            if (algo_splitk(&res[i].algo) > 1) {
                assert_int_not_equal(algo_scheme(&res[i].algo), CUBLASLT_REDUCTION_SCHEME_NONE);
                if (split < 0 && algo_scheme(&res[i].algo) == CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE) split = i;
            } else if (plain < 0) {
                plain = i;
            }
        }
        assert_true(split >= 0 && plain >= 0);
        /* only one requested: only one returned */
        assert_int_equal(heuristic(e->lt, &lc, 64 << 20, CUBLASLT_REDUCTION_SCHEME_MASK, 16, res + 7, 1), 1);

        void *ws = NULL;
        assert_int_equal(cudaMalloc(&ws, 1 << 20), cudaSuccess);
        const float alpha = 1.0f, beta = 0.0f;
        std::vector<hmat> outs;
        for (int i = 0; i < found; i++) {
            const int sl = algo_splitk(&res[i].algo);
            for (int rep = 0; rep < 2; rep++) {
                assert_true(res[i].workspaceSize <= (1 << 20));
                assert_int_equal(cublasLtMatmul(e->lt, &lc.op, &alpha, dA, &lc.a, dB, &lc.b, &beta, dD, &lc.d, dD, &lc.d,
                                                &res[i].algo, ws, 1 << 20, 0),
                                 CUBLAS_STATUS_SUCCESS);
                dev_download(&D, dD);
                if (rep == 1) assert_memory_equal(D.bytes.data(), outs.back().bytes.data(), D.size());
                else outs.push_back(D);
            }
            const ref_result r = ref_gemm(m, n, k, true, false, alpha, A, B, beta, NULL, t, sl);
            assert_int_equal(count_wrong(D, r, NULL, m, n, true), 0);
            /* less workspace than the algorithm needs: refused */
            if (res[i].workspaceSize)
                assert_int_equal(cublasLtMatmul(e->lt, &lc.op, &alpha, dA, &lc.a, dB, &lc.b, &beta, dD, &lc.d, dD, &lc.d,
                                                &res[i].algo, ws, res[i].workspaceSize - 1, 0),
                                 CUBLAS_STATUS_INVALID_VALUE);
        }
        if (t == CUDA_R_32F) assert_true(memcmp(outs[(size_t)split].bytes.data(), outs[(size_t)plain].bytes.data(), D.size()) != 0);
        /* a reduction in place in D rounds to F16 after every slice: other bits than the same
         * split reduced in FP32 */
        int inplace = -1;
        for (int i = 0; i < found; i++)
            if (algo_scheme(&res[i].algo) == CUBLASLT_REDUCTION_SCHEME_INPLACE &&
                algo_splitk(&res[i].algo) == algo_splitk(&res[split].algo))
                inplace = i;
        assert_true(inplace >= 0);
        if (t == CUDA_R_16F)
            assert_true(memcmp(outs[(size_t)split].bytes.data(), outs[(size_t)inplace].bytes.data(), D.size()) != 0);

        /* no workspace, reduction none (matmul.cu's pinning preference), and each of the two
         * alone: no split-K at all; a mask of one scheme: only that scheme */
        const struct {
            uint64_t ws;
            uint32_t mask;
        } prefs[4] = {{0, CUBLASLT_REDUCTION_SCHEME_NONE},
                      {0, CUBLASLT_REDUCTION_SCHEME_MASK},
                      {64 << 20, CUBLASLT_REDUCTION_SCHEME_NONE},
                      {64 << 20, CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE}};
        for (int p = 0; p < 4; p++) {
            const int found0 = heuristic(e->lt, &lc, prefs[p].ws, prefs[p].mask, 16, res, 8);
            int splits = 0;
            for (int i = 0; i < found0; i++) {
                assert_true(res[i].workspaceSize <= prefs[p].ws);
                if (algo_splitk(&res[i].algo) == 1) {
                    assert_int_equal(algo_scheme(&res[i].algo), CUBLASLT_REDUCTION_SCHEME_NONE);
                    continue;
                }
                splits++;
                assert_int_equal(algo_scheme(&res[i].algo), CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE);
                assert_int_equal(prefs[p].mask, CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE);
            }
            assert_int_equal(splits > 0, p == 3);
        }
        for (void *p : {dA, dB, dD, ws}) assert_int_equal(cudaFree(p), cudaSuccess);
    }
}

/* out[n, m] = x[n, k] W[m, k]^T as matmul.cu describes it: a row of x alone gives the same
 * bits as within a batch under the pinned split-K-free algorithm, which the heuristic finds
 * only when asked for no workspace and no reduction (for this shape it leads with split-K). */
static void test_batch_invariance(void **state) {
    env *e = (env *)*state;
    const int64_t m = 40, k = 512, nb = 40;
    for (cudaDataType_t t : TYPES) {
        const hmat W = hmat_make(t, k, m, k, false);
        const hmat X = hmat_make(t, k, nb, k, false);
        hmat OB = hmat_make(t, m, nb, m, false), O1 = hmat_make(t, m, 1, m, false);
        void *dW = dev_upload(W), *dX = dev_upload(X), *dOB = dev_upload(OB), *dO1 = dev_upload(O1);
        lt_case pin;
        const hmat Xp = hmat_make(t, k, 64, k, false), Op = hmat_make(t, m, 64, m, false); /* shapes only */
        assert_int_equal(lt_describe(&pin, true, false, W, Xp, Op, Op), CUBLAS_STATUS_SUCCESS);
        cublasLtMatmulHeuristicResult_t res[8];
        heuristic(e->lt, &pin, 64 << 20, CUBLASLT_REDUCTION_SCHEME_MASK, 16, res, 8);
        assert_true(algo_splitk(&res[0].algo) > 1);
        heuristic(e->lt, &pin, 0, CUBLASLT_REDUCTION_SCHEME_NONE, 16, res, 8);
        assert_int_equal(algo_splitk(&res[0].algo), 1);
        const float alpha = 1.0f, beta = 0.0f;
        lt_case lb, l1;
        assert_int_equal(lt_describe(&lb, true, false, W, X, OB, OB), CUBLAS_STATUS_SUCCESS);
        assert_int_equal(lt_describe(&l1, true, false, W, hmat_make(t, k, 1, k, false), O1, O1), CUBLAS_STATUS_SUCCESS);
        assert_int_equal(cublasLtMatmul(e->lt, &lb.op, &alpha, dW, &lb.a, dX, &lb.b, &beta, dOB, &lb.c, dOB, &lb.d,
                                        &res[0].algo, NULL, 0, 0),
                         CUBLAS_STATUS_SUCCESS);
        dev_download(&OB, dOB);
        assert_int_equal(count_wrong(OB, ref_gemm(m, nb, k, true, false, 1, W, X, 0, NULL, t, 1), NULL, m, nb, true), 0);
        for (int64_t r = 0; r < nb; r += 7) {
            const char *xr = (const char *)dX + (size_t)(r * k) * X.esize();
            assert_int_equal(cublasLtMatmul(e->lt, &l1.op, &alpha, dW, &l1.a, xr, &l1.b, &beta, dO1, &l1.c, dO1, &l1.d,
                                            &res[0].algo, NULL, 0, 0),
                             CUBLAS_STATUS_SUCCESS);
            dev_download(&O1, dO1);
            assert_memory_equal(O1.bytes.data(), OB.bytes.data() + (size_t)(r * m) * OB.esize(), O1.size());
        }
        for (void *p : {dW, dX, dOB, dO1}) assert_int_equal(cudaFree(p), cudaSuccess);
    }
}

/* CUBLASLT_EPILOGUE_BIAS (a vector of D's rows, F32 or D's type) and device-pointer alpha/beta. */
static void test_lt_bias_and_device_scalars(void **state) {
    env *e = (env *)*state;
    const int64_t m = 21, n = 9, k = 35;
    for (cudaDataType_t t : TYPES)
        for (int bias32 = 0; bias32 < 2; bias32++) {
            const hmat A = hmat_make(t, m, k, m, false), B = hmat_make(t, k, n, k, false);
            const hmat C = hmat_make(t, m, n, m, false);
            const hmat bias = hmat_make(bias32 ? CUDA_R_32F : t, m, 1, m, false);
            hmat D = C;
            const float scal[2] = {0.5f, 1.5f}; /* alpha, beta: read from device memory when the GEMM runs */
            hmat S = hmat_make(CUDA_R_32F, 2, 1, 2, false);
            memcpy(S.bytes.data(), scal, sizeof scal);
            void *dA = dev_upload(A), *dB = dev_upload(B), *dC = dev_upload(C), *dbias = dev_upload(bias), *dS = dev_upload(S);
            lt_case lc;
            assert_int_equal(lt_describe(&lc, false, false, A, B, C, C), CUBLAS_STATUS_SUCCESS);
            const uint32_t epi = CUBLASLT_EPILOGUE_BIAS;
            const int32_t pm = CUBLASLT_POINTER_MODE_DEVICE, bt = bias.type;
            assert_int_equal(cublasLtMatmulDescSetAttribute(&lc.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi),
                             CUBLAS_STATUS_SUCCESS);
            assert_int_equal(cublasLtMatmulDescSetAttribute(&lc.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &dbias, sizeof dbias),
                             CUBLAS_STATUS_SUCCESS);
            if (bias32)
                assert_int_equal(cublasLtMatmulDescSetAttribute(&lc.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt),
                                 CUBLAS_STATUS_SUCCESS);
            assert_int_equal(cublasLtMatmulDescSetAttribute(&lc.op, CUBLASLT_MATMUL_DESC_POINTER_MODE, &pm, sizeof pm),
                             CUBLAS_STATUS_SUCCESS);
            const float *dalpha = (const float *)dS, *dbeta = dalpha + 1;
            assert_int_equal(cublasLtMatmul(e->lt, &lc.op, dalpha, dA, &lc.a, dB, &lc.b, dbeta, dC, &lc.c, dC, &lc.d, NULL,
                                            NULL, 0, 0),
                             CUBLAS_STATUS_SUCCESS);
            dev_download(&D, dC);
            ref_result r = ref_gemm(m, n, k, false, false, scal[0], A, B, scal[1], &C, t, 1);
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = 0; j < n; j++) {
                    const double b = bias.at(i, 0);
                    r.v[(size_t)(i * n + j)] += b;
                    r.tol[(size_t)(i * n + j)] += (unit_roundoff(t) + ldexp(1.0, -22)) * fabs(b);
                }
            assert_int_equal(count_wrong(D, r, NULL, m, n, true), 0);
            for (void *p : {dA, dB, dC, dbias, dS}) assert_int_equal(cudaFree(p), cudaSuccess);
        }
}

/* GEMMs are ops of their stream: captured into a graph they compute nothing at capture, and
 * every launch computes on the buffers' contents then (new inputs, new result). */
static void test_graph_capture(void **state) {
    env *e = (env *)*state;
    const int m = 20, n = 6, k = 48;
    const cudaDataType_t t = CUDA_R_16BF;
    cudaStream_t s;
    assert_int_equal(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    assert_int_equal(cublasSetStream(e->blas, s), CUBLAS_STATUS_SUCCESS);
    const hmat A = hmat_make(t, k, m, k, false);
    hmat B = hmat_make(t, k, n, k, false), D1 = hmat_make(t, m, n, m, false), D2 = D1;
    const hmat D0 = D1;
    void *dA = dev_upload(A), *dB = dev_upload(B), *d1 = dev_upload(D1), *d2 = dev_upload(D2);
    lt_case lc;
    assert_int_equal(lt_describe(&lc, true, false, A, B, D1, D1), CUBLAS_STATUS_SUCCESS);
    const float alpha = 1.0f, beta = 0.0f;
    cudaGraph_t g;
    cudaGraphExec_t ge;
    assert_int_equal(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    assert_int_equal(cublasGemmEx(e->blas, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, dA, t, k, dB, t, k, &beta, d1, t, m,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatmul(e->lt, &lc.op, &alpha, dA, &lc.a, dB, &lc.b, &beta, d2, &lc.c, d2, &lc.d, NULL, NULL, 0, s),
                     CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cudaStreamEndCapture(s, &g), cudaSuccess);
    assert_int_equal(cudaGraphInstantiate(&ge, g, 0), cudaSuccess);
    dev_download(&D1, d1);
    assert_memory_equal(D1.bytes.data(), D0.bytes.data(), D0.size()); /* nothing ran at capture */
    for (int launch = 0; launch < 2; launch++) {
        B = hmat_make(t, k, n, k, false);
        assert_int_equal(cudaMemcpy(dB, B.bytes.data(), B.size(), cudaMemcpyHostToDevice), cudaSuccess);
        assert_int_equal(cudaGraphLaunch(ge, s), cudaSuccess);
        assert_int_equal(cudaStreamSynchronize(s), cudaSuccess);
        dev_download(&D1, d1);
        dev_download(&D2, d2);
        const ref_result r = ref_gemm(m, n, k, true, false, 1, A, B, 0, NULL, t, 1);
        assert_int_equal(count_wrong(D1, r, NULL, m, n, true), 0);
        assert_int_equal(count_wrong(D2, r, NULL, m, n, true), 0);
    }
    assert_int_equal(cudaGraphExecDestroy(ge), cudaSuccess);
    assert_int_equal(cudaGraphDestroy(g), cudaSuccess);
    assert_int_equal(cublasSetStream(e->blas, 0), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cudaStreamDestroy(s), cudaSuccess);
    for (void *p : {dA, dB, d1, d2}) assert_int_equal(cudaFree(p), cudaSuccess);
}

/* cublasGemmEx lets the library choose per shape, as cuBLAS does: one row (split-K, the GPU
 * being idle otherwise) differs from the same row in a batch that fills every SM, which is why
 * the backend pins its algorithms. */
static void test_gemmex_batch_variance_visible(void **state) {
    env *e = (env *)*state;
    cudaDeviceProp prop;
    assert_int_equal(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
    const int m = 256, k = 512, nb = 64 * ((prop.multiProcessorCount + 3) / 4); /* 64 x 64 tiles >= SMs */
    const cudaDataType_t t = CUDA_R_32F;
    const hmat W = hmat_make(t, k, m, k, false), X = hmat_make(t, k, nb, k, false);
    hmat OB = hmat_make(t, m, nb, m, false), O1 = hmat_make(t, m, 1, m, false);
    void *dW = dev_upload(W), *dX = dev_upload(X), *dOB = dev_upload(OB), *dO1 = dev_upload(O1);
    const float alpha = 1.0f, beta = 0.0f;
    assert_int_equal(cublasGemmEx(e->blas, CUBLAS_OP_T, CUBLAS_OP_N, m, nb, k, &alpha, dW, t, k, dX, t, k, &beta, dOB, t, m,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_SUCCESS);
    dev_download(&OB, dOB);
    int differs = 0;
    for (int r = 0; r < nb; r += nb / 8) {
        const char *xr = (const char *)dX + (size_t)r * k * X.esize();
        assert_int_equal(cublasGemmEx(e->blas, CUBLAS_OP_T, CUBLAS_OP_N, m, 1, k, &alpha, dW, t, k, xr, t, k, &beta, dO1, t, m,
                                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                         CUBLAS_STATUS_SUCCESS);
        dev_download(&O1, dO1);
        /* both within tolerance of the same row of the reference */
        hmat Xr = hmat_make(t, k, 1, k, false);
        memcpy(Xr.bytes.data(), X.bytes.data() + (size_t)r * k * X.esize(), (size_t)k * X.esize());
        assert_int_equal(count_wrong(O1, ref_gemm(m, 1, k, true, false, 1, W, Xr, 0, NULL, t, 2), NULL, m, 1, true), 0);
        differs += memcmp(O1.bytes.data(), OB.bytes.data() + (size_t)r * m * OB.esize(), O1.size()) != 0;
    }
    assert_true(differs > 0);
    for (void *p : {dW, dX, dOB, dO1}) assert_int_equal(cudaFree(p), cudaSuccess);
}

/* A wrong leading dimension, transpose or order is computed as given: a wrong answer. */
static void test_wrong_layout_is_wrong(void **state) {
    env *e = (env *)*state;
    const int m = 24, n = 24, k = 24;
    const cudaDataType_t t = CUDA_R_32F;
    const hmat A = hmat_make(t, m, k, m + 3, false), B = hmat_make(t, k, n, k, false);
    hmat C = hmat_make(t, m, n, m, false);
    const hmat C0 = C;
    void *dA = dev_upload(A), *dB = dev_upload(B), *dC = dev_upload(C);
    const float alpha = 1.0f, beta = 0.0f;
    const ref_result r = ref_gemm(m, n, k, false, false, 1, A, B, 0, NULL, t, 1);
    /* the right call is right */
    assert_int_equal(cublasGemmEx(e->blas, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &alpha, dA, t, m + 3, dB, t, k, &beta, dC, t, m,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_SUCCESS);
    dev_download(&C, dC);
    assert_int_equal(count_wrong(C, r, NULL, m, n, true), 0);
    /* lda off by one (still valid): wrong */
    assert_int_equal(cublasGemmEx(e->blas, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &alpha, dA, t, m + 2, dB, t, k, &beta, dC, t, m,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_SUCCESS);
    dev_download(&C, dC);
    assert_true(count_wrong(C, r, NULL, m, n, false) > m * n / 2);
    /* B transposed by mistake (square): wrong */
    assert_int_equal(cublasGemmEx(e->blas, CUBLAS_OP_N, CUBLAS_OP_T, m, n, k, &alpha, dA, t, m + 3, dB, t, k, &beta, dC, t, m,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_SUCCESS);
    dev_download(&C, dC);
    assert_true(count_wrong(C, r, NULL, m, n, false) > m * n / 2);
    /* cuBLASLt: A's layout declared row-major (ld m + 3 >= its cols): wrong */
    lt_case lc;
    hmat Arow = A;
    Arow.row_major = true;
    Arow.rows = m, Arow.cols = k;
    assert_int_equal(lt_describe(&lc, false, false, Arow, B, C0, C0), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatmul(e->lt, &lc.op, &alpha, dA, &lc.a, dB, &lc.b, &beta, dC, &lc.c, dC, &lc.d, NULL, NULL, 0, 0),
                     CUBLAS_STATUS_SUCCESS);
    dev_download(&C, dC);
    assert_true(count_wrong(C, r, NULL, m, n, false) > m * n / 2);
    for (void *p : {dA, dB, dC}) assert_int_equal(cudaFree(p), cudaSuccess);
}

/* Statuses as cuBLAS gives them, checked before anything is enqueued. */
static void test_invalid_and_unsupported(void **state) {
    env *e = (env *)*state;
    const float alpha = 1.0f, beta = 0.0f;
    void *d = NULL;
    assert_int_equal(cudaMalloc(&d, 1 << 16), cudaSuccess);
    const std::vector<unsigned char> zeros(1 << 16);
    assert_int_equal(cudaMemcpy(d, zeros.data(), zeros.size(), cudaMemcpyHostToDevice), cudaSuccess);
    const cudaDataType_t f = CUDA_R_32F;
    /* cublasGemmEx */
    assert_int_equal(cublasGemmEx(e->blas, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &alpha, d, f, 7, d, f, 8, &beta, d, f, 8,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_INVALID_VALUE); /* lda < m */
    assert_int_equal(cublasGemmEx(e->blas, CUBLAS_OP_T, CUBLAS_OP_N, 8, 8, 16, &alpha, d, f, 8, d, f, 16, &beta, d, f, 8,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_INVALID_VALUE); /* transposed: lda < k */
    assert_int_equal(cublasGemmEx(e->blas, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &alpha, d, f, 8, d, f, 8, &beta, d, f, 4,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_INVALID_VALUE); /* ldc < m */
    assert_int_equal(cublasGemmEx(e->blas, CUBLAS_OP_N, CUBLAS_OP_N, -1, 8, 8, &alpha, d, f, 8, d, f, 8, &beta, d, f, 8,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_INVALID_VALUE);
    assert_int_equal(cublasGemmEx(e->blas, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &alpha, d, CUDA_R_16F, 8, d, CUDA_R_16BF, 8, &beta,
                                  d, CUDA_R_16F, 8, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_NOT_SUPPORTED); /* mixed operand types */
    assert_int_equal(cublasGemmEx(e->blas, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &alpha, d, f, 8, d, f, 8, &beta, d, CUDA_R_16F, 8,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_NOT_SUPPORTED); /* F32 into F16 */
    assert_int_equal(cublasGemmEx(e->blas, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &alpha, d, CUDA_R_16F, 8, d, CUDA_R_16F, 8, &beta,
                                  d, CUDA_R_16F, 8, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_NOT_SUPPORTED);
    assert_int_equal(cublasGemmEx(NULL, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &alpha, d, f, 8, d, f, 8, &beta, d, f, 8,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_NOT_INITIALIZED);
    /* handle settings */
    assert_int_equal(cublasSetWorkspace(e->blas, (char *)d + 16, 1024), CUBLAS_STATUS_INVALID_VALUE); /* not 256-aligned */
    assert_int_equal(cublasSetMathMode(e->blas, (cublasMath_t)7), CUBLAS_STATUS_INVALID_VALUE);
    assert_int_equal(cublasSetMathMode(e->blas, (cublasMath_t)(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)),
                     CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasSetStream(e->blas, 0), CUBLAS_STATUS_SUCCESS);
    assert_string_equal(cublasGetStatusName(CUBLAS_STATUS_INVALID_VALUE), "CUBLAS_STATUS_INVALID_VALUE");
    assert_string_equal(cublasGetStatusName(CUBLAS_STATUS_NOT_SUPPORTED), "CUBLAS_STATUS_NOT_SUPPORTED");
    assert_true(strlen(cublasGetStatusString(CUBLAS_STATUS_EXECUTION_FAILED)) > 0);

    /* cuBLASLt */
    const hmat A = hmat_make(f, 8, 6, 8, false), B = hmat_make(f, 6, 5, 6, false), C = hmat_make(f, 8, 5, 8, false);
    lt_case lc;
    assert_int_equal(lt_describe(&lc, false, false, A, B, C, C), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatmul(e->lt, &lc.op, &alpha, d, &lc.a, d, &lc.b, &beta, d, &lc.c, d, &lc.d, NULL, NULL, 0, 0),
                     CUBLAS_STATUS_SUCCESS);
    const hmat Bbad = hmat_make(f, 7, 5, 7, false); /* op(A) has 6 columns, op(B) 7 rows */
    assert_int_equal(lt_describe(&lc, false, false, A, Bbad, C, C), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatmul(e->lt, &lc.op, &alpha, d, &lc.a, d, &lc.b, &beta, d, &lc.c, d, &lc.d, NULL, NULL, 0, 0),
                     CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatmulPreferenceOpaque_t pref;
    assert_int_equal(cublasLtMatmulPreferenceInit(&pref), CUBLAS_STATUS_SUCCESS);
    cublasLtMatmulHeuristicResult_t res[4];
    int found = -1;
    assert_int_equal(cublasLtMatmulAlgoGetHeuristic(e->lt, &lc.op, &lc.a, &lc.b, &lc.c, &lc.d, &pref, 4, res, &found),
                     CUBLAS_STATUS_INVALID_VALUE);
    assert_int_equal(lt_describe(&lc, true, false, A, B, C, C), CUBLAS_STATUS_SUCCESS); /* op(A) = A^T is 6 x 8 */
    assert_int_equal(cublasLtMatmul(e->lt, &lc.op, &alpha, d, &lc.a, d, &lc.b, &beta, d, &lc.c, d, &lc.d, NULL, NULL, 0, 0),
                     CUBLAS_STATUS_INVALID_VALUE);
    hmat Ald = A;
    Ald.ld = 7; /* column-major ld < rows */
    assert_int_equal(lt_describe(&lc, false, false, Ald, B, C, C), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatmul(e->lt, &lc.op, &alpha, d, &lc.a, d, &lc.b, &beta, d, &lc.c, d, &lc.d, NULL, NULL, 0, 0),
                     CUBLAS_STATUS_INVALID_VALUE);
    Ald.row_major = true; /* row-major: ld 7 >= 6 columns is fine */
    assert_int_equal(lt_describe(&lc, false, false, Ald, B, C, C), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatmul(e->lt, &lc.op, &alpha, d, &lc.a, d, &lc.b, &beta, d, &lc.c, d, &lc.d, NULL, NULL, 0, 0),
                     CUBLAS_STATUS_SUCCESS);
    Ald.ld = 5; /* row-major ld < cols */
    assert_int_equal(lt_describe(&lc, false, false, Ald, B, C, C), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatmul(e->lt, &lc.op, &alpha, d, &lc.a, d, &lc.b, &beta, d, &lc.c, d, &lc.d, NULL, NULL, 0, 0),
                     CUBLAS_STATUS_INVALID_VALUE);
    /* unsupported: mixed operand types, COL32 order, a 16-bit compute type */
    hmat A16 = A;
    A16.type = CUDA_R_16F;
    assert_int_equal(lt_describe(&lc, false, false, A16, B, C, C), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatmul(e->lt, &lc.op, &alpha, d, &lc.a, d, &lc.b, &beta, d, &lc.c, d, &lc.d, NULL, NULL, 0, 0),
                     CUBLAS_STATUS_NOT_SUPPORTED);
    assert_int_equal(lt_describe(&lc, false, false, A, B, C, C), CUBLAS_STATUS_SUCCESS);
    const int32_t col32 = CUBLASLT_ORDER_COL32;
    assert_int_equal(cublasLtMatrixLayoutSetAttribute(&lc.a, CUBLASLT_MATRIX_LAYOUT_ORDER, &col32, sizeof col32),
                     CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatmul(e->lt, &lc.op, &alpha, d, &lc.a, d, &lc.b, &beta, d, &lc.c, d, &lc.d, NULL, NULL, 0, 0),
                     CUBLAS_STATUS_NOT_SUPPORTED);
    assert_int_equal(lt_describe(&lc, false, false, A, B, C, C), CUBLAS_STATUS_SUCCESS);
    const int32_t c16 = CUBLAS_COMPUTE_16F;
    assert_int_equal(cublasLtMatmulDescSetAttribute(&lc.op, CUBLASLT_MATMUL_DESC_COMPUTE_TYPE, &c16, sizeof c16),
                     CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatmul(e->lt, &lc.op, &alpha, d, &lc.a, d, &lc.b, &beta, d, &lc.c, d, &lc.d, NULL, NULL, 0, 0),
                     CUBLAS_STATUS_NOT_SUPPORTED);
    /* attribute sizes, uninitialised descriptors, heuristic count */
    const int64_t trans64 = CUBLAS_OP_T;
    assert_int_equal(cublasLtMatmulDescSetAttribute(&lc.op, CUBLASLT_MATMUL_DESC_TRANSA, &trans64, sizeof trans64),
                     CUBLAS_STATUS_INVALID_VALUE);
    size_t need = 0;
    assert_int_equal(cublasLtMatrixLayoutGetAttribute(&lc.a, CUBLASLT_MATRIX_LAYOUT_LD, NULL, 0, &need), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(need, sizeof(int64_t));
    assert_int_equal(lt_describe(&lc, false, false, A, B, C, C), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatmulAlgoGetHeuristic(e->lt, &lc.op, &lc.a, &lc.b, &lc.c, &lc.d, &pref, 0, res, &found),
                     CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatrixLayoutOpaque_t zero;
    memset(&zero, 0, sizeof zero);
    assert_int_equal(cublasLtMatmul(e->lt, &lc.op, &alpha, d, &zero, d, &lc.b, &beta, d, &lc.c, d, &lc.d, NULL, NULL, 0, 0),
                     CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatmulAlgo_t junk;
    memset(&junk, 0, sizeof junk);
    assert_int_equal(cublasLtMatmul(e->lt, &lc.op, &alpha, d, &lc.a, d, &lc.b, &beta, d, &lc.c, d, &lc.d, &junk, NULL, 0, 0),
                     CUBLAS_STATUS_INVALID_VALUE);
    /* an algorithm needing 256-byte alignment on a buffer that has 4: not supported */
    assert_int_equal(cublasLtMatmulAlgoGetHeuristic(e->lt, &lc.op, &lc.a, &lc.b, &lc.c, &lc.d, &pref, 4, res, &found),
                     CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatmul(e->lt, &lc.op, &alpha, (char *)d + 4, &lc.a, d, &lc.b, &beta, d, &lc.c, d, &lc.d,
                                    &res[0].algo, NULL, 0, 0),
                     CUBLAS_STATUS_NOT_SUPPORTED);
    assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
    assert_int_equal(cudaFree(d), cudaSuccess);
}

/* ------------------------------------------------------------ defects, in a child process */

/* Runs one planted defect; exit status 0 when the emulator behaved as expected. */
static int child_run(cublasLtHandle_t lt, const char *what, void *dev[3]) {
    const int64_t m = 16, n = 8, k = 32;
    const hmat A = hmat_make(CUDA_R_32F, m, k, m, false), B = hmat_make(CUDA_R_32F, k, n, k, false);
    const hmat C = hmat_make(CUDA_R_32F, m, n, m, false);
    const bool oob = !strcmp(what, "oob"), host = !strcmp(what, "host"), uninit = !strcmp(what, "uninit");
    const size_t b_bytes = B.size() - (oob ? 4 : 0); /* B one element short */
    if (cudaMalloc(&dev[0], A.size()) != cudaSuccess || cudaMalloc(&dev[1], b_bytes) != cudaSuccess ||
        cudaMalloc(&dev[2], C.size()) != cudaSuccess)
        return 11;
    if (!uninit && cudaMemcpy(dev[0], A.bytes.data(), A.size(), cudaMemcpyHostToDevice) != cudaSuccess) return 12;
    if (cudaMemcpy(dev[1], B.bytes.data(), b_bytes, cudaMemcpyHostToDevice) != cudaSuccess) return 13;
    lt_case lc;
    if (lt_describe(&lc, false, false, A, B, C, C) != CUBLAS_STATUS_SUCCESS) return 14;
    const float alpha = 1.0f, beta = 0.0f;
    const long before = llmq_emu_report_count();
    const void *a = host ? (const void *)A.bytes.data() : dev[0];
    if (cublasLtMatmul(lt, &lc.op, &alpha, a, &lc.a, dev[1], &lc.b, &beta, dev[2], &lc.c, dev[2], &lc.d, NULL, NULL, 0, 0) !=
        CUBLAS_STATUS_SUCCESS)
        return 15; /* the defect is found when the GEMM runs, as on a GPU */
    const cudaError_t e = cudaDeviceSynchronize();
    const long reports = llmq_emu_report_count() - before;
    fprintf(stderr, "child %s: sync %s, %ld report(s)\n", what, cudaGetErrorName(e), reports);
    if (reports != 1) return 16;
    if ((oob || host) && e != cudaErrorIllegalAddress) return 17;
    if (uninit && e != cudaSuccess) return 18;
    return 0;
}

static int child_main(const char *what) {
    setenv("LLMQ_EMU_FATAL", "0", 1);
    cublasLtHandle_t lt;
    if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) return 10;
    void *dev[3] = {NULL, NULL, NULL};
    const int rc = child_run(lt, what, dev);
    for (void *p : dev) cudaFree(p); /* after an out-of-bounds GEMM the sticky error is returned */
    cublasLtDestroy(lt);
    return rc;
}

static void run_child(const char *what, const char *expect) {
    char self[4096];
    const ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    assert_true(len > 0);
    self[len] = 0;
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "'%s' --child %s 2>&1", self, what);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    std::vector<char> out;
    char buf[512];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, p)) > 0) out.insert(out.end(), buf, buf + got);
    out.push_back(0);
    const int status = pclose(p);
    fprintf(stderr, "%s", out.data());
    assert_int_equal(status, 0);
    assert_non_null(strstr(out.data(), expect));
}

static void test_out_of_bounds_reported(void **state) {
    (void)state;
    run_child("oob", "llmq-emu: out-of-bounds: cublasLtMatmul: matrix B");
    run_child("host", "llmq-emu: out-of-bounds: cublasLtMatmul: matrix A");
}

static void test_uninitialized_reported(void **state) {
    (void)state;
#ifdef LLMQ_EMU_CHECK
    run_child("uninit", "llmq-emu: uninitialized: cublasLtMatmul: matrix A");
#else
    /* without the instrumentation kernels' stores are not seen, so nothing is reported as never written */
    print_message("# skipped: built without the detectors' instrumentation (SANITIZER=address or EMU_CHECK=0)\n");
    skip();
#endif
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--child")) return child_main(argv[2]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lt_types_transposes_orders),
        cmocka_unit_test(test_gemmex),
        cmocka_unit_test(test_gemmex_workspace_math_algos),
        cmocka_unit_test(test_algos_split_k),
        cmocka_unit_test(test_batch_invariance),
        cmocka_unit_test(test_lt_bias_and_device_scalars),
        cmocka_unit_test(test_gemmex_batch_variance_visible),
        cmocka_unit_test(test_graph_capture),
        cmocka_unit_test(test_wrong_layout_is_wrong),
        cmocka_unit_test(test_invalid_and_unsupported),
        cmocka_unit_test(test_out_of_bounds_reported),
        cmocka_unit_test(test_uninitialized_reported),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
