/*
 * emu_cublas.cc — the cuBLAS / cuBLASLt subset of the emulated device: the
 * calls kernels/cuda/matmul.cu and backend_cuda.cu make, with the signatures
 * of CUDA 13's cublas_api.h / cublasLt.h (the versioned names the headers map
 * to: cublasCreate_v2, cublasLtMatmulDescInit_internal, ...).
 *
 * Every GEMM is D = alpha op(A) op(B) + beta C (+ bias), computed by one
 * reference routine that reads each matrix through its own descriptor (type
 * F32/F16/BF16, column- or row-major order, rows, cols, leading dimension) and
 * nothing else, so a wrong layout, transpose or leading dimension gives a
 * wrong answer, never a silently fixed one.  Arithmetic is FP32 with fused
 * multiply-adds as a GPU's FFMA, each output's products added over k in
 * ascending order within a K slice; the result is rounded once to the
 * output type (round-to-nearest-even, CUDA's own host conversions).
 *
 * Algorithms.  The heuristic offers, per problem, a few configurations that
 * differ where it matters for numerics: split-K (the K range cut into
 * SPLITK_NUM slices, each summed on its own, the partial sums reduced by the
 * REDUCTION_SCHEME: in FP32, in the output type, or in place in D) or not.
 * A config is executed in exactly its summation order, so two algorithms may
 * differ in the last bits while the same one always gives the same bits, and
 * for a long K with few output columns (decode) or fewer output tiles than
 * SMs, split-K configurations come first, as on a GPU: code that lets the
 * library choose per call sees a row's result change with its batch.  Workspace needs, the
 * preference's limits (workspace, reduction-scheme mask, buffer alignment)
 * and the given workspace are honoured as cuBLASLt does.
 *
 * Execution.  Arguments are validated at the call (statuses as cuBLAS); the
 * GEMM itself is an op on the stream (emu::enqueue), so it runs
 * asynchronously and is captured into graphs.  In the op, every matrix range
 * is checked against the device allocations before it is touched
 * (out-of-bounds: reported, sticky cudaErrorIllegalAddress, nothing read or
 * written), reads of never-written memory are reported, and D's elements are
 * marked written.
 *
 * Descriptors live inside CUDA's fixed-size opaque structs (static_assert'ed),
 * tagged with a magic word so that an uninitialised descriptor is refused.
 */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <new>
#include <vector>

#include "kernels/cuda/emu/emu_internal.hh"

namespace {

/* ------------------------------------------------------------ descriptors */

constexpr uint32_t LAYOUT_MAGIC = 0x4c61794fu; /* "LayO" */
constexpr uint32_t DESC_MAGIC = 0x44657363u;   /* "Desc" */
constexpr uint32_t PREF_MAGIC = 0x50726566u;   /* "Pref" */
constexpr uint32_t ALGO_MAGIC = 0x416c676fu;   /* "Algo" */
constexpr uint32_t BLAS_MAGIC = 0x426c6173u;   /* "Blas" */
constexpr uint32_t LT_MAGIC = 0x4c744c74u;     /* "LtLt" */

struct layout_state {
    uint32_t magic;
    int32_t type;         /* cudaDataType */
    int32_t order;        /* cublasLtOrder_t */
    int32_t batch_count;  /* only 1 is supported */
    uint64_t rows, cols;  /* as stored, before any transpose */
    int64_t ld;           /* elements between columns (COL) or rows (ROW) */
    int64_t batch_stride; /* elements */
    int64_t plane_offset; /* planar complex: not supported unless 0 */
    uint32_t batch_mode;
};
static_assert(sizeof(layout_state) <= sizeof(cublasLtMatrixLayoutOpaque_t), "layout state fits");

struct desc_state {
    uint32_t magic;
    int32_t compute;      /* cublasComputeType_t */
    int32_t scale;        /* cudaDataType of alpha/beta */
    int32_t pointer_mode; /* cublasLtPointerMode_t */
    int32_t transa, transb, transc;
    int32_t fill_mode;
    uint32_t epilogue;
    int32_t bias_type;    /* -1: the type of D */
    const void *bias;     /* device vector of D's rows */
    int64_t bias_batch_stride;
    int32_t sm_count_target;
    int8_t fast_accum;
    bool unsupported;     /* an attribute the emulator does not implement was set to a non-default value */
};
static_assert(sizeof(desc_state) <= sizeof(cublasLtMatmulDescOpaque_t), "matmul desc state fits");

struct pref_state {
    uint32_t magic;
    uint32_t search_mode;
    uint64_t max_workspace;
    uint32_t reduction_mask;
    uint32_t min_align[4]; /* A, B, C, D: bytes the caller guarantees */
    float max_waves;
    uint64_t impl_mask;
};
static_assert(sizeof(pref_state) <= sizeof(cublasLtMatmulPreferenceOpaque_t), "preference state fits");

/* One configuration: what cublasLtMatmulAlgoConfigGetAttribute describes and
 * what the reference GEMM executes. */
struct algo_state {
    uint32_t magic;
    int32_t id;
    uint32_t tile;       /* cublasLtMatmulTile_t */
    int32_t splitk;      /* >= 1 */
    uint32_t scheme;     /* cublasLtReductionScheme_t; NONE iff splitk == 1 */
    uint32_t swizzle;
    uint32_t custom;
    uint32_t stages;
    uint16_t inner_shape;
    uint16_t cluster_shape;
    uint32_t align;      /* bytes every buffer must be aligned to (vectorised loads) */
};
static_assert(sizeof(algo_state) <= sizeof(cublasLtMatmulAlgo_t), "algo state fits");

template <typename S, typename O> S *state_of(O *o) { return reinterpret_cast<S *>(o->data); }
template <typename S, typename O> const S *state_of(const O *o) { return reinterpret_cast<const S *>(o->data); }

} // namespace

/* The handles: heap objects behind CUDA's opaque pointer types. */
struct cublasContext {
    uint32_t magic;
    cudaStream_t stream;
    void *workspace;       /* set by cublasSetWorkspace; NULL: the library's own */
    size_t workspace_bytes;
    bool workspace_set;
    cublasMath_t math;
    cublasPointerMode_t pointer_mode;
};

struct cublasLtContext {
    uint32_t magic;
};

namespace {

/* The library's own workspace when cublasSetWorkspace was not called (cuBLAS's default pool). */
constexpr size_t DEFAULT_WORKSPACE = (size_t)4 << 20;

size_t dtype_size(int t) {
    switch (t) {
    case CUDA_R_32F: return 4;
    case CUDA_R_16F:
    case CUDA_R_16BF: return 2;
    default: return 0;
    }
}

const char *dtype_name(int t) {
    switch (t) {
    case CUDA_R_32F: return "f32";
    case CUDA_R_16F: return "f16";
    case CUDA_R_16BF: return "bf16";
    default: return "unsupported";
    }
}

bool compute_supported(int c) {
    return c == CUBLAS_COMPUTE_32F || c == CUBLAS_COMPUTE_32F_PEDANTIC || c == CUBLAS_COMPUTE_32F_FAST_16F ||
           c == CUBLAS_COMPUTE_32F_FAST_16BF || c == CUBLAS_COMPUTE_32F_FAST_TF32;
}

/* FP32 compute, FP32 scale: A and B of one type; C/D of that type or F32
 * (the cublasGemmEx / cuBLASLt tables for CUBLAS_COMPUTE_32F); the FAST_*
 * compute types only with F32 matrices.  Anything else: NOT_SUPPORTED. */
cublasStatus_t types_supported(int compute, int scale, int at, int bt, int ct, int dt) {
    if (!compute_supported(compute) || scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (!dtype_size(at) || at != bt || ct != dt) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (ct != at && ct != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_PEDANTIC && at != CUDA_R_32F)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    return CUBLAS_STATUS_SUCCESS;
}

/* ------------------------------------------------------------ the problem */

/* A matrix as the reference reads it. */
struct mat {
    const void *p;
    int type;
    int64_t rows, cols, ld;
    bool row_major;

    int64_t inner() const { return row_major ? cols : rows; } /* contiguous run */
    int64_t outer() const { return row_major ? rows : cols; } /* runs, ld apart */
    size_t esize() const { return dtype_size(type); }
    /* bytes from p to the end of the last element (0 for an empty matrix) */
    size_t span() const {
        if (rows == 0 || cols == 0) return 0;
        return ((size_t)(outer() - 1) * (size_t)ld + (size_t)inner()) * esize();
    }
    int64_t offset(int64_t r, int64_t c) const { return row_major ? r * ld + c : c * ld + r; }
};

struct gemm_job {
    const char *name; /* "cublasLtMatmul" or "cublasGemmEx", for messages */
    int64_t m, n, k;
    bool ta, tb;      /* op(A) = A^T, op(B) = B^T */
    mat A, B, C, D;
    bool device_scalars; /* alpha/beta are device pointers, read in the op */
    const float *alpha_p, *beta_p;
    float alpha, beta;
    algo_state algo;
    bool bias;
    const void *bias_p;
    int bias_type;
    const void *workspace; /* checked when the algo needs one */
    size_t workspace_need;
    bool reduced_ok;       /* reductions in a 16-bit output type allowed */
};

/* Layout validation as cuBLASLt: COL and ROW orders only, ld covering a run, no batches. */
cublasStatus_t layout_check(const layout_state *l) {
    if (!l || l->magic != LAYOUT_MAGIC) return CUBLAS_STATUS_INVALID_VALUE;
    if (l->order != CUBLASLT_ORDER_COL && l->order != CUBLASLT_ORDER_ROW) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (l->batch_count != 1 || l->plane_offset != 0 || l->batch_mode != 0) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (l->rows > INT32_MAX || l->cols > INT32_MAX) return CUBLAS_STATUS_NOT_SUPPORTED;
    const int64_t inner = (int64_t)(l->order == CUBLASLT_ORDER_ROW ? l->cols : l->rows);
    if (l->ld < 0 || l->ld < inner || l->ld < 1) return CUBLAS_STATUS_INVALID_VALUE;
    return CUBLAS_STATUS_SUCCESS;
}

mat mat_of(const layout_state *l, const void *p) {
    return mat{p, l->type, (int64_t)l->rows, (int64_t)l->cols, l->ld, l->order == CUBLASLT_ORDER_ROW};
}

/* Fill the job's shapes from the Lt descriptors, validating as cublasLtMatmul does. */
cublasStatus_t lt_problem(const desc_state *d, const layout_state *a, const layout_state *b, const layout_state *c,
                          const layout_state *dd, gemm_job *j) {
    if (!d || d->magic != DESC_MAGIC) return CUBLAS_STATUS_INVALID_VALUE;
    cublasStatus_t s = CUBLAS_STATUS_SUCCESS;
    for (const layout_state *l : {a, b, c, dd})
        if (s == CUBLAS_STATUS_SUCCESS) s = layout_check(l);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    if (d->unsupported || d->transc != CUBLAS_OP_N || d->fill_mode != CUBLAS_FILL_MODE_FULL ||
        (d->pointer_mode != CUBLASLT_POINTER_MODE_HOST && d->pointer_mode != CUBLASLT_POINTER_MODE_DEVICE) ||
        (d->epilogue != CUBLASLT_EPILOGUE_DEFAULT && d->epilogue != CUBLASLT_EPILOGUE_BIAS))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    s = types_supported(d->compute, d->scale, a->type, b->type, c->type, dd->type);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    j->ta = d->transa != CUBLAS_OP_N;
    j->tb = d->transb != CUBLAS_OP_N;
    const int64_t m = (int64_t)(j->ta ? a->cols : a->rows), ka = (int64_t)(j->ta ? a->rows : a->cols);
    const int64_t kb = (int64_t)(j->tb ? b->cols : b->rows), n = (int64_t)(j->tb ? b->rows : b->cols);
    if (ka != kb || (int64_t)c->rows != m || (int64_t)c->cols != n || dd->rows != c->rows || dd->cols != c->cols)
        return CUBLAS_STATUS_INVALID_VALUE;
    j->m = m;
    j->n = n;
    j->k = ka;
    j->bias = d->epilogue == CUBLASLT_EPILOGUE_BIAS;
    j->bias_p = d->bias;
    j->bias_type = d->bias_type < 0 ? dd->type : d->bias_type;
    if (j->bias && j->bias_type != CUDA_R_32F && j->bias_type != dd->type) return CUBLAS_STATUS_NOT_SUPPORTED;
    return CUBLAS_STATUS_SUCCESS;
}

/* ------------------------------------------------------------ algorithms */

/* Workspace a configuration needs for an m x n output of out_type. */
size_t algo_workspace(const algo_state &a, int64_t m, int64_t n, int out_type) {
    if (a.splitk <= 1) return 0;
    switch (a.scheme) {
    case CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE: return (size_t)a.splitk * (size_t)m * (size_t)n * 4;
    case CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE: return (size_t)a.splitk * (size_t)m * (size_t)n * dtype_size(out_type);
    default: /* INPLACE: one semaphore per output tile */ return (size_t)((m + 63) / 64) * (size_t)((n + 63) / 64) * 4;
    }
}

algo_state algo_make(int32_t id, uint32_t tile, int32_t splitk, uint32_t scheme, uint32_t align) {
    algo_state a;
    memset(&a, 0, sizeof a);
    a.magic = ALGO_MAGIC;
    a.id = id;
    a.tile = tile;
    a.splitk = splitk;
    a.scheme = scheme;
    a.stages = 0;
    a.align = align;
    return a;
}

/* The candidates for an m x n x k problem, best first.  An output of fewer
 * 64 x 64 tiles than the GPU has SMs, or few columns, leaves most of it idle
 * unless a long K is split, so split-K leads there (cuBLAS does the same);
 * otherwise the tiled kernels lead.  So a heuristic asked about a weight's
 * shape for a modest batch may well put split-K first: a caller that needs
 * an unsplit algorithm has to ask for one. */
std::vector<algo_state> algo_candidates(int64_t m, int64_t n, int64_t k) {
    std::vector<algo_state> v;
    const int64_t tiles = ((m + 63) / 64) * ((n + 63) / 64);
    const bool favour_split = k >= 256 && (n <= 32 || tiles < emu::device_profile().n_sms);
    const int32_t split = (int32_t)std::min<int64_t>(8, std::max<int64_t>(2, k / 256));
    const uint32_t big = m >= 128 && n >= 128 ? CUBLASLT_MATMUL_TILE_128x128 : CUBLASLT_MATMUL_TILE_64x64;
    std::vector<algo_state> split_cfgs = {
        algo_make(21, CUBLASLT_MATMUL_TILE_64x32, split, CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE, 16),
        algo_make(21, CUBLASLT_MATMUL_TILE_64x32, split, CUBLASLT_REDUCTION_SCHEME_INPLACE, 16),
        algo_make(21, CUBLASLT_MATMUL_TILE_64x32, 2, CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE, 16),
    };
    std::vector<algo_state> plain = {
        algo_make(6, big, 1, CUBLASLT_REDUCTION_SCHEME_NONE, 256), /* vectorised: wants 256 B alignment */
        algo_make(6, CUBLASLT_MATMUL_TILE_64x64, 1, CUBLASLT_REDUCTION_SCHEME_NONE, 16),
        algo_make(0, CUBLASLT_MATMUL_TILE_32x32, 1, CUBLASLT_REDUCTION_SCHEME_NONE, 4),
    };
    if (favour_split) {
        v = split_cfgs;
        v.insert(v.end(), plain.begin(), plain.end());
    } else {
        v = plain;
        v.insert(v.end(), split_cfgs.begin(), split_cfgs.end());
    }
    return v;
}

bool algo_valid(const algo_state *a) {
    return a && a->magic == ALGO_MAGIC && a->splitk >= 1 &&
           (a->splitk == 1) == (a->scheme == CUBLASLT_REDUCTION_SCHEME_NONE) &&
           (a->scheme == CUBLASLT_REDUCTION_SCHEME_NONE || a->scheme == CUBLASLT_REDUCTION_SCHEME_INPLACE ||
            a->scheme == CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE || a->scheme == CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE) &&
           a->align >= 1 && (a->align & (a->align - 1)) == 0;
}

/* Reduction in a 16-bit output type: what CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION forbids. */
bool algo_reduces_reduced(const algo_state &a, int out_type) {
    return out_type != CUDA_R_32F &&
           (a.scheme == CUBLASLT_REDUCTION_SCHEME_INPLACE || a.scheme == CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE);
}

bool aligned(const void *p, uint32_t align) { return ((uintptr_t)p & (uintptr_t)(align - 1)) == 0; }

/* ------------------------------------------------------------ the reference GEMM */

/* Every half's float value, from CUDA's own conversion: packing converts each
 * operand element once per GEMM, and the table is several times faster than
 * the header's branchy host path. */
const float *half_table() {
    static const std::vector<float> table = [] {
        std::vector<float> t(65536);
        for (uint32_t i = 0; i < 65536; i++) {
            __half_raw r;
            r.x = (unsigned short)i;
            t[i] = __half2float(__half(r));
        }
        return t;
    }();
    return table.data();
}

inline float ld_f(const float *p, int64_t i) { return p[i]; }
inline float ld_f(const __half *p, int64_t i) { return half_table()[__half_raw(p[i]).x]; }
inline float ld_f(const __nv_bfloat16 *p, int64_t i) { return __bfloat162float(p[i]); }

float load(const void *p, int type, int64_t i) {
    switch (type) {
    case CUDA_R_16F: return ld_f((const __half *)p, i);
    case CUDA_R_16BF: return ld_f((const __nv_bfloat16 *)p, i);
    default: return ld_f((const float *)p, i);
    }
}

void store(void *p, int type, int64_t i, float v) {
    switch (type) {
    case CUDA_R_16F: ((__half *)p)[i] = __float2half_rn(v); break;
    case CUDA_R_16BF: ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v); break;
    default: ((float *)p)[i] = v; break;
    }
}

/* v rounded to the output type and back: what a reduction in that type keeps. */
float round_to(int type, float v) {
    switch (type) {
    case CUDA_R_16F: return __half2float(__float2half_rn(v));
    case CUDA_R_16BF: return __bfloat162float(__float2bfloat16_rn(v));
    default: return v;
    }
}

/* out[r * k + kk] = X(r0 + r, kk) for r < nr, where X(r, kk) is element (r, kk) of
 * op(M) (trans: M^T); rows r >= nr up to pad are zero. */
template <typename T>
void pack_t(const mat &M, bool trans, int64_t r0, int64_t nr, int64_t pad, int64_t k, float *out) {
    const T *p = (const T *)M.p;
    for (int64_t r = 0; r < nr; r++) {
        float *o = out + r * k;
        const int64_t row = r0 + r;
        /* step between consecutive kk in memory, and the start of the row */
        const int64_t base = trans ? M.offset(0, row) : M.offset(row, 0);
        const int64_t step = trans ? (M.row_major ? M.ld : 1) : (M.row_major ? 1 : M.ld);
        for (int64_t kk = 0; kk < k; kk++) o[kk] = ld_f(p, base + kk * step);
    }
    for (int64_t r = nr; r < pad; r++) memset(out + r * k, 0, (size_t)k * sizeof(float));
}

void pack(const mat &M, bool trans, int64_t r0, int64_t nr, int64_t pad, int64_t k, float *out) {
    switch (M.type) {
    case CUDA_R_16F: pack_t<__half>(M, trans, r0, nr, pad, k, out); break;
    case CUDA_R_16BF: pack_t<__nv_bfloat16>(M, trans, r0, nr, pad, k, out); break;
    default: pack_t<float>(M, trans, r0, nr, pad, k, out); break;
    }
}

/* acc[i][j] = sum over kk in [k0, k1) of a[i][kk] * b[j][kk], for a 4 x 4 tile, each sum
 * in ascending kk with fused multiply-adds: 16 independent chains keep the FPU busy while
 * each output's order stays the one the algorithm defines. */
void micro_4x4(const float *a, const float *b, int64_t k, int64_t k0, int64_t k1, float acc[4][4]) {
    float c00 = 0, c01 = 0, c02 = 0, c03 = 0, c10 = 0, c11 = 0, c12 = 0, c13 = 0;
    float c20 = 0, c21 = 0, c22 = 0, c23 = 0, c30 = 0, c31 = 0, c32 = 0, c33 = 0;
    const float *a0 = a, *a1 = a + k, *a2 = a + 2 * k, *a3 = a + 3 * k;
    const float *b0 = b, *b1 = b + k, *b2 = b + 2 * k, *b3 = b + 3 * k;
    for (int64_t kk = k0; kk < k1; kk++) {
        const float x0 = a0[kk], x1 = a1[kk], x2 = a2[kk], x3 = a3[kk];
        const float y0 = b0[kk], y1 = b1[kk], y2 = b2[kk], y3 = b3[kk];
        c00 = fmaf(x0, y0, c00), c01 = fmaf(x0, y1, c01), c02 = fmaf(x0, y2, c02), c03 = fmaf(x0, y3, c03);
        c10 = fmaf(x1, y0, c10), c11 = fmaf(x1, y1, c11), c12 = fmaf(x1, y2, c12), c13 = fmaf(x1, y3, c13);
        c20 = fmaf(x2, y0, c20), c21 = fmaf(x2, y1, c21), c22 = fmaf(x2, y2, c22), c23 = fmaf(x2, y3, c23);
        c30 = fmaf(x3, y0, c30), c31 = fmaf(x3, y1, c31), c32 = fmaf(x3, y2, c32), c33 = fmaf(x3, y3, c33);
    }
    acc[0][0] = c00, acc[0][1] = c01, acc[0][2] = c02, acc[0][3] = c03;
    acc[1][0] = c10, acc[1][1] = c11, acc[1][2] = c12, acc[1][3] = c13;
    acc[2][0] = c20, acc[2][1] = c21, acc[2][2] = c22, acc[2][3] = c23;
    acc[3][0] = c30, acc[3][1] = c31, acc[3][2] = c32, acc[3][3] = c33;
}

/* micro_4x4's sums for one column (the n % 4 leftovers, and n = 1, decode): the same
 * chains, so the same bits as when the column falls in a 4 x 4 tile. */
void micro_4x1(const float *a, const float *b, int64_t k, int64_t k0, int64_t k1, float acc[4][4], int col) {
    float c0 = 0, c1 = 0, c2 = 0, c3 = 0;
    const float *a0 = a, *a1 = a + k, *a2 = a + 2 * k, *a3 = a + 3 * k;
    for (int64_t kk = k0; kk < k1; kk++) {
        const float y = b[kk];
        c0 = fmaf(a0[kk], y, c0), c1 = fmaf(a1[kk], y, c1), c2 = fmaf(a2[kk], y, c2), c3 = fmaf(a3[kk], y, c3);
    }
    acc[0][col] = c0, acc[1][col] = c1, acc[2][col] = c2, acc[3][col] = c3;
}

/* D = alpha op(A) op(B) + beta C (+ bias), in the algorithm's summation order.
 * The operands are read through their descriptors only; C is not read when beta is 0. */
void gemm_compute(const gemm_job &j, float alpha, float beta) {
    const int64_t m = j.m, n = j.n, k = j.k;
    const int S = j.algo.splitk;
    /* K slices: equal, multiples of 16 (a tile's K step), the last one shorter */
    int64_t slice = S > 1 ? (k + S - 1) / S : k;
    if (S > 1) slice = (slice + 15) / 16 * 16;
    const int64_t nslices = S > 1 && slice > 0 ? (k + slice - 1) / slice : 1;
    const int64_t n4 = (n + 3) / 4 * 4;
    const int64_t IB = 64; /* rows of op(A) packed at a time */
    std::vector<float> bf((size_t)(n4 * k)), af((size_t)(IB * k));
    std::vector<float> bias((size_t)m);
    if (j.bias)
        for (int64_t i = 0; i < m; i++) bias[(size_t)i] = load(j.bias_p, j.bias_type, i);
    pack(j.B, !j.tb, 0, n, n4, k, bf.data()); /* bf[jj][kk] = op(B)(kk, jj) */
    std::vector<float> part((size_t)nslices * 16);
    void *D = const_cast<void *>(j.D.p);
    const int dt = j.D.type;
    for (int64_t i0 = 0; i0 < m; i0 += IB) {
        const int64_t ib = std::min(IB, m - i0), ib4 = (ib + 3) / 4 * 4;
        pack(j.A, j.ta, i0, ib, ib4, k, af.data()); /* af[i][kk] = op(A)(i0 + i, kk) */
        for (int64_t ii = 0; ii < ib4; ii += 4)
            for (int64_t jj = 0; jj < n4; jj += 4) {
                for (int64_t s = 0; s < nslices; s++) {
                    const int64_t k0 = s * slice, k1 = S > 1 ? std::min(k, k0 + slice) : k;
                    float(*acc)[4] = reinterpret_cast<float(*)[4]>(&part[(size_t)s * 16]);
                    if (jj + 4 <= n)
                        micro_4x4(af.data() + ii * k, bf.data() + jj * k, k, k0, k1, acc);
                    else
                        for (int c = 0; c < n - jj; c++) micro_4x1(af.data() + ii * k, bf.data() + (jj + c) * k, k, k0, k1, acc, c);
                }
                for (int64_t ti = 0; ti < 4; ti++)
                    for (int64_t tj = 0; tj < 4; tj++) {
                        const int64_t i = i0 + ii + ti, jc = jj + tj;
                        if (ii + ti >= ib || jc >= n) continue;
                        const float c = beta != 0.0f ? load(j.C.p, j.C.type, j.C.offset(i, jc)) : 0.0f;
                        const float b = j.bias ? bias[(size_t)i] : 0.0f;
                        const int64_t off = j.D.offset(i, jc);
                        const float *p = &part[(size_t)(ti * 4 + tj)];
                        float v;
                        switch (j.algo.scheme) {
                        case CUBLASLT_REDUCTION_SCHEME_INPLACE: {
                            /* the first slice writes alpha p + beta C (+ bias) into D, each
                             * later one adds alpha p to what D holds, in D's type */
                            v = round_to(dt, fmaf(beta, c, alpha * p[0]) + b);
                            for (int64_t s = 1; s < nslices; s++) v = round_to(dt, v + alpha * p[s * 16]);
                            break;
                        }
                        case CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE: {
                            /* partials stored in the output type, reduced in FP32 */
                            float sum = 0.0f;
                            for (int64_t s = 0; s < nslices; s++) sum += round_to(dt, alpha * p[s * 16]);
                            v = fmaf(beta, c, sum) + b;
                            break;
                        }
                        default: { /* NONE (one slice) and COMPUTE_TYPE: partials reduced in FP32 */
                            float acc = p[0];
                            for (int64_t s = 1; s < nslices; s++) acc += p[s * 16];
                            v = fmaf(beta, c, alpha * acc) + b;
                            break;
                        }
                        }
                        store(D, dt, off, v);
                    }
            }
    }
}

/* ------------------------------------------------------------ the op on the stream */

/* Range check before anything is touched; false (reported, sticky error) when outside. */
bool range_ok(const gemm_job &j, const char *what, const void *p, size_t bytes) {
    if (bytes == 0) return true;
    const char *why = nullptr;
    if (emu::device_range_ok(p, bytes, &why)) return true;
    emu::report("out-of-bounds", "%s: matrix %s [%p, +%zu B) is not inside one device allocation: %s", j.name, what,
                p, bytes, why ? why : "?");
    emu::async_error(cudaErrorIllegalAddress, "%s: matrix %s out of bounds", j.name, what);
    return false;
}

/* Report reads of never-written elements (the padding between runs is not read). */
void written_check(const gemm_job &j, const char *what, const mat &M) {
    if (M.rows == 0 || M.cols == 0) return;
    if (!emu::writes_tracked()) return; /* kernels' stores are not seen in this build (ASan, EMU_CHECK=0) */
    const size_t run = (size_t)M.inner() * M.esize();
    if (M.ld == M.inner()) {
        if (emu::device_written(M.p, M.span())) return;
    } else {
        bool ok = true;
        for (int64_t o = 0; o < M.outer() && ok; o++)
            ok = emu::device_written((const char *)M.p + (size_t)(o * M.ld) * M.esize(), run);
        if (ok) return;
    }
    emu::report("uninitialized", "%s: matrix %s (%lld x %lld %s at %p, ld %lld) reads device memory never written",
                j.name, what, (long long)M.rows, (long long)M.cols, dtype_name(M.type), M.p, (long long)M.ld);
}

void mark_written(const mat &M) {
    if (M.rows == 0 || M.cols == 0) return;
    if (M.ld == M.inner()) {
        emu::device_mark_written(M.p, M.span());
        return;
    }
    const size_t run = (size_t)M.inner() * M.esize();
    for (int64_t o = 0; o < M.outer(); o++) emu::device_mark_written((const char *)M.p + (size_t)(o * M.ld) * M.esize(), run);
}

void gemm_op(const gemm_job &j) {
    float alpha = j.alpha, beta = j.beta;
    if (j.device_scalars) {
        if (!range_ok(j, "alpha", j.alpha_p, sizeof(float)) || !range_ok(j, "beta", j.beta_p, sizeof(float))) return;
        alpha = *j.alpha_p;
        beta = *j.beta_p;
    }
    const bool read_c = beta != 0.0f;
    if (!range_ok(j, "A", j.A.p, j.k ? j.A.span() : 0) || !range_ok(j, "B", j.B.p, j.k ? j.B.span() : 0) ||
        (read_c && !range_ok(j, "C", j.C.p, j.C.span())) || !range_ok(j, "D", j.D.p, j.D.span()) ||
        (j.bias && !range_ok(j, "bias", j.bias_p, (size_t)j.m * dtype_size(j.bias_type))) ||
        (j.workspace && !range_ok(j, "workspace", j.workspace, j.workspace_need)))
        return;
    if (j.k) {
        written_check(j, "A", j.A);
        written_check(j, "B", j.B);
    }
    if (read_c) written_check(j, "C", j.C);
    if (j.bias) {
        mat bv = {j.bias_p, j.bias_type, j.m, 1, j.m, false};
        written_check(j, "bias", bv);
    }
    gemm_compute(j, alpha, beta);
    mark_written(j.D);
}

cublasStatus_t gemm_enqueue(cudaStream_t stream, const gemm_job &j) {
    if (j.m == 0 || j.n == 0) return CUBLAS_STATUS_SUCCESS;
    const cudaError_t e = emu::enqueue(stream, j.name, [j] { gemm_op(j); });
    return e == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

/* Scalars at the call in host pointer mode (the caller's variables may be gone when the op runs). */
cublasStatus_t scalars_take(gemm_job *j, bool device, const void *alpha, const void *beta) {
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    j->device_scalars = device;
    j->alpha_p = (const float *)alpha;
    j->beta_p = (const float *)beta;
    j->alpha = device ? 0.0f : *(const float *)alpha;
    j->beta = device ? 0.0f : *(const float *)beta;
    return CUBLAS_STATUS_SUCCESS;
}

/* The first candidate that fits: how cuBLAS picks when the caller does not pin one. */
bool algo_pick(int64_t m, int64_t n, int64_t k, int out_type, size_t workspace, bool reduced_ok, algo_state *out) {
    for (const algo_state &a : algo_candidates(m, n, k)) {
        if (algo_workspace(a, m, n, out_type) > workspace) continue;
        if (!reduced_ok && algo_reduces_reduced(a, out_type)) continue;
        /* cublasGemmEx runs whatever the buffers' alignment (cuBLAS picks a kernel that
         * fits them): the vectorised configuration is for cuBLASLt callers who ask for it */
        if (a.align > 16) continue;
        *out = a;
        return true;
    }
    return false;
}

template <typename T> cublasStatus_t attr_set(T *field, const void *buf, size_t size) {
    if (!buf || size != sizeof(T)) return CUBLAS_STATUS_INVALID_VALUE;
    memcpy(field, buf, sizeof(T));
    return CUBLAS_STATUS_SUCCESS;
}

template <typename T> cublasStatus_t attr_get(const T &field, void *buf, size_t size, size_t *written) {
    if (size == 0) {
        if (!written) return CUBLAS_STATUS_INVALID_VALUE;
        *written = sizeof(T);
        return CUBLAS_STATUS_SUCCESS;
    }
    if (!buf || size != sizeof(T)) return CUBLAS_STATUS_INVALID_VALUE;
    memcpy(buf, &field, sizeof(T));
    if (written) *written = sizeof(T);
    return CUBLAS_STATUS_SUCCESS;
}

bool blas_ok(cublasHandle_t h) { return h && h->magic == BLAS_MAGIC; }
bool lt_ok(cublasLtHandle_t h) { return h && h->magic == LT_MAGIC; }

} // namespace

extern "C" {

/* ------------------------------------------------------------ classic cuBLAS */

cublasStatus_t cublasCreate_v2(cublasHandle_t *handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    cublasContext *h = new (std::nothrow) cublasContext();
    if (!h) return CUBLAS_STATUS_ALLOC_FAILED;
    h->magic = BLAS_MAGIC;
    h->stream = 0;
    h->math = CUBLAS_DEFAULT_MATH;
    h->pointer_mode = CUBLAS_POINTER_MODE_HOST;
    *handle = h;
    return CUBLAS_STATUS_SUCCESS;
}

/* Ops already enqueued hold copies of what they need, never the handle. */
cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
    if (!blas_ok(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->magic = 0;
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t streamId) {
    if (!blas_ok(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = streamId;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream_v2(cublasHandle_t handle, cudaStream_t *streamId) {
    if (!blas_ok(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!streamId) return CUBLAS_STATUS_INVALID_VALUE;
    *streamId = handle->stream;
    return CUBLAS_STATUS_SUCCESS;
}

/* cuBLAS requires a 256-byte aligned workspace. */
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void *workspace, size_t workspaceSizeInBytes) {
    if (!blas_ok(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if ((workspaceSizeInBytes && !workspace) || ((uintptr_t)workspace & 255)) return CUBLAS_STATUS_INVALID_VALUE;
    handle->workspace = workspace;
    handle->workspace_bytes = workspace ? workspaceSizeInBytes : 0;
    handle->workspace_set = true;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
    if (!blas_ok(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    const unsigned base = (unsigned)mode & ~(unsigned)CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION;
    if (base != CUBLAS_DEFAULT_MATH && base != CUBLAS_TENSOR_OP_MATH && base != CUBLAS_PEDANTIC_MATH &&
        base != CUBLAS_TF32_TENSOR_OP_MATH)
        return CUBLAS_STATUS_INVALID_VALUE;
    handle->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t *mode) {
    if (!blas_ok(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = handle->math;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t mode) {
    if (!blas_ok(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (mode != CUBLAS_POINTER_MODE_HOST && mode != CUBLAS_POINTER_MODE_DEVICE) return CUBLAS_STATUS_INVALID_VALUE;
    handle->pointer_mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t *mode) {
    if (!blas_ok(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = handle->pointer_mode;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusName(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

const char *cublasGetStatusString(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "handle not created";
    case CUBLAS_STATUS_ALLOC_FAILED: return "allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "invalid argument";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "needs a feature this device lacks";
    case CUBLAS_STATUS_MAPPING_ERROR: return "device memory access failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GEMM failed";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "internal error";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "not supported";
    case CUBLAS_STATUS_LICENSE_ERROR: return "licence check failed";
    }
    return "unknown error";
}

/* C = alpha op(A) op(B) + beta C, column-major, on the handle's stream.  The
 * algorithm: CUBLAS_GEMM_DEFAULT(_TENSOR_OP) lets the heuristic choose per
 * shape (split-K for small n, large k, within the handle's workspace);
 * CUBLAS_GEMM_ALGOn(_TENSOR_OP) pins split-K 2^(n mod 4) (reduced in FP32),
 * the same bits every call. */
cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void *alpha, const void *A, cudaDataType Atype, int lda, const void *B,
                            cudaDataType Btype, int ldb, const void *beta, void *C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
    if (!blas_ok(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    const bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
    if ((transa != CUBLAS_OP_N && transa != CUBLAS_OP_T && transa != CUBLAS_OP_C) ||
        (transb != CUBLAS_OP_N && transb != CUBLAS_OP_T && transb != CUBLAS_OP_C) || m < 0 || n < 0 || k < 0 ||
        lda < std::max(1, ta ? k : m) || ldb < std::max(1, tb ? n : k) || ldc < std::max(1, m))
        return CUBLAS_STATUS_INVALID_VALUE;
    const int algo_n = (int)algo >= CUBLAS_GEMM_ALGO0_TENSOR_OP ? (int)algo - CUBLAS_GEMM_ALGO0_TENSOR_OP : (int)algo;
    const bool algo_default = algo == CUBLAS_GEMM_DEFAULT || algo == CUBLAS_GEMM_DEFAULT_TENSOR_OP;
    if (!algo_default && !(algo >= CUBLAS_GEMM_ALGO0 && algo <= CUBLAS_GEMM_ALGO23) &&
        !(algo >= CUBLAS_GEMM_ALGO0_TENSOR_OP && algo <= CUBLAS_GEMM_ALGO15_TENSOR_OP))
        return CUBLAS_STATUS_INVALID_VALUE;
    cublasStatus_t s = types_supported(computeType, CUDA_R_32F, Atype, Btype, Ctype, Ctype);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    gemm_job j;
    memset(&j, 0, sizeof j);
    j.name = "cublasGemmEx";
    j.m = m, j.n = n, j.k = k, j.ta = ta, j.tb = tb;
    j.A = mat{A, Atype, ta ? k : m, ta ? m : k, lda, false};
    j.B = mat{B, Btype, tb ? n : k, tb ? k : n, ldb, false};
    j.C = mat{C, Ctype, m, n, ldc, false};
    j.D = j.C;
    s = scalars_take(&j, handle->pointer_mode == CUBLAS_POINTER_MODE_DEVICE, alpha, beta);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    const size_t ws = handle->workspace_set ? handle->workspace_bytes : DEFAULT_WORKSPACE;
    j.reduced_ok = !(handle->math & CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION);
    if (algo_default) {
        if (!algo_pick(m, n, k, Ctype, ws, j.reduced_ok, &j.algo)) return CUBLAS_STATUS_NOT_SUPPORTED;
    } else {
        const int32_t split = 1 << (algo_n % 4);
        j.algo = algo_make(algo_n, CUBLASLT_MATMUL_TILE_64x64, split,
                           split > 1 ? CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE : CUBLASLT_REDUCTION_SCHEME_NONE, 4);
        if (algo_workspace(j.algo, m, n, Ctype) > ws) return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    j.workspace_need = algo_workspace(j.algo, m, n, Ctype);
    j.workspace = handle->workspace_set && j.workspace_need ? handle->workspace : nullptr;
    return gemm_enqueue(handle->stream, j);
}

/* ------------------------------------------------------------ cuBLASLt */

cublasStatus_t cublasLtCreate(cublasLtHandle_t *lightHandle) {
    if (!lightHandle) return CUBLAS_STATUS_INVALID_VALUE;
    cublasLtContext *h = new (std::nothrow) cublasLtContext();
    if (!h) return CUBLAS_STATUS_ALLOC_FAILED;
    h->magic = LT_MAGIC;
    *lightHandle = h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t lightHandle) {
    if (!lt_ok(lightHandle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    lightHandle->magic = 0;
    delete lightHandle;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasLtGetStatusName(cublasStatus_t status) { return cublasGetStatusName(status); }
const char *cublasLtGetStatusString(cublasStatus_t status) { return cublasGetStatusString(status); }

cublasStatus_t cublasLtMatrixLayoutInit_internal(cublasLtMatrixLayout_t matLayout, size_t size, cudaDataType type,
                                                 uint64_t rows, uint64_t cols, int64_t ld) {
    if (!matLayout) return CUBLAS_STATUS_INVALID_VALUE;
    if (size < sizeof(layout_state)) return CUBLAS_STATUS_ALLOC_FAILED;
    layout_state *l = state_of<layout_state>(matLayout);
    memset(matLayout, 0, size);
    l->magic = LAYOUT_MAGIC;
    l->type = type;
    l->order = CUBLASLT_ORDER_COL;
    l->batch_count = 1;
    l->rows = rows;
    l->cols = cols;
    l->ld = ld;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t matLayout, cublasLtMatrixLayoutAttribute_t attr,
                                                const void *buf, size_t sizeInBytes) {
    if (!matLayout || state_of<layout_state>(matLayout)->magic != LAYOUT_MAGIC) return CUBLAS_STATUS_INVALID_VALUE;
    layout_state *l = state_of<layout_state>(matLayout);
    switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_TYPE: return attr_set(&l->type, buf, sizeInBytes);
    case CUBLASLT_MATRIX_LAYOUT_ORDER: return attr_set(&l->order, buf, sizeInBytes);
    case CUBLASLT_MATRIX_LAYOUT_ROWS: return attr_set(&l->rows, buf, sizeInBytes);
    case CUBLASLT_MATRIX_LAYOUT_COLS: return attr_set(&l->cols, buf, sizeInBytes);
    case CUBLASLT_MATRIX_LAYOUT_LD: return attr_set(&l->ld, buf, sizeInBytes);
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: return attr_set(&l->batch_count, buf, sizeInBytes);
    case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: return attr_set(&l->batch_stride, buf, sizeInBytes);
    case CUBLASLT_MATRIX_LAYOUT_PLANE_OFFSET: return attr_set(&l->plane_offset, buf, sizeInBytes);
    case CUBLASLT_MATRIX_LAYOUT_BATCH_MODE: return attr_set(&l->batch_mode, buf, sizeInBytes);
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatrixLayoutGetAttribute(cublasLtMatrixLayout_t matLayout, cublasLtMatrixLayoutAttribute_t attr,
                                                void *buf, size_t sizeInBytes, size_t *sizeWritten) {
    if (!matLayout || state_of<layout_state>(matLayout)->magic != LAYOUT_MAGIC) return CUBLAS_STATUS_INVALID_VALUE;
    const layout_state *l = state_of<layout_state>(matLayout);
    switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_TYPE: return attr_get(l->type, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATRIX_LAYOUT_ORDER: return attr_get(l->order, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATRIX_LAYOUT_ROWS: return attr_get(l->rows, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATRIX_LAYOUT_COLS: return attr_get(l->cols, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATRIX_LAYOUT_LD: return attr_get(l->ld, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: return attr_get(l->batch_count, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: return attr_get(l->batch_stride, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATRIX_LAYOUT_PLANE_OFFSET: return attr_get(l->plane_offset, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATRIX_LAYOUT_BATCH_MODE: return attr_get(l->batch_mode, buf, sizeInBytes, sizeWritten);
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatmulDescInit_internal(cublasLtMatmulDesc_t matmulDesc, size_t size,
                                               cublasComputeType_t computeType, cudaDataType_t scaleType) {
    if (!matmulDesc) return CUBLAS_STATUS_INVALID_VALUE;
    if (size < sizeof(desc_state)) return CUBLAS_STATUS_ALLOC_FAILED;
    memset(matmulDesc, 0, size);
    desc_state *d = state_of<desc_state>(matmulDesc);
    d->magic = DESC_MAGIC;
    d->compute = computeType;
    d->scale = scaleType;
    d->pointer_mode = CUBLASLT_POINTER_MODE_HOST;
    d->transa = d->transb = d->transc = CUBLAS_OP_N;
    d->fill_mode = CUBLAS_FILL_MODE_FULL;
    d->epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    d->bias_type = -1;
    return CUBLAS_STATUS_SUCCESS;
}

/* Attributes the emulator does not implement are accepted at their default
 * (zero/NULL) only; any other value makes cublasLtMatmul NOT_SUPPORTED. */
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t sizeInBytes) {
    if (!matmulDesc || state_of<desc_state>(matmulDesc)->magic != DESC_MAGIC) return CUBLAS_STATUS_INVALID_VALUE;
    desc_state *d = state_of<desc_state>(matmulDesc);
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: return attr_set(&d->compute, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE: return attr_set(&d->scale, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_POINTER_MODE: return attr_set(&d->pointer_mode, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_TRANSA:
    case CUBLASLT_MATMUL_DESC_TRANSB:
    case CUBLASLT_MATMUL_DESC_TRANSC: {
        int32_t op;
        cublasStatus_t s = attr_set(&op, buf, sizeInBytes);
        if (s != CUBLAS_STATUS_SUCCESS) return s;
        if (op != CUBLAS_OP_N && op != CUBLAS_OP_T && op != CUBLAS_OP_C) return CUBLAS_STATUS_INVALID_VALUE;
        (attr == CUBLASLT_MATMUL_DESC_TRANSA ? d->transa : attr == CUBLASLT_MATMUL_DESC_TRANSB ? d->transb : d->transc) = op;
        return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_FILL_MODE: return attr_set(&d->fill_mode, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return attr_set(&d->epilogue, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return attr_set(&d->bias, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: return attr_set(&d->bias_type, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE: return attr_set(&d->bias_batch_stride, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET: return attr_set(&d->sm_count_target, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_FAST_ACCUM: return attr_set(&d->fast_accum, buf, sizeInBytes);
    default: {
        if (!buf || sizeInBytes == 0 || sizeInBytes > 8) return CUBLAS_STATUS_INVALID_VALUE;
        uint64_t v = 0;
        memcpy(&v, buf, sizeInBytes);
        if (v) d->unsupported = true;
        return CUBLAS_STATUS_SUCCESS;
    }
    }
}

cublasStatus_t cublasLtMatmulDescGetAttribute(cublasLtMatmulDesc_t matmulDesc, cublasLtMatmulDescAttributes_t attr,
                                              void *buf, size_t sizeInBytes, size_t *sizeWritten) {
    if (!matmulDesc || state_of<desc_state>(matmulDesc)->magic != DESC_MAGIC) return CUBLAS_STATUS_INVALID_VALUE;
    const desc_state *d = state_of<desc_state>(matmulDesc);
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: return attr_get(d->compute, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE: return attr_get(d->scale, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_POINTER_MODE: return attr_get(d->pointer_mode, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_TRANSA: return attr_get(d->transa, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_TRANSB: return attr_get(d->transb, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_TRANSC: return attr_get(d->transc, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_FILL_MODE: return attr_get(d->fill_mode, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return attr_get(d->epilogue, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return attr_get(d->bias, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: return attr_get(d->bias_type, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE: return attr_get(d->bias_batch_stride, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET: return attr_get(d->sm_count_target, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_FAST_ACCUM: return attr_get(d->fast_accum, buf, sizeInBytes, sizeWritten);
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
    }
}

cublasStatus_t cublasLtMatmulPreferenceInit_internal(cublasLtMatmulPreference_t pref, size_t size) {
    if (!pref) return CUBLAS_STATUS_INVALID_VALUE;
    if (size < sizeof(pref_state)) return CUBLAS_STATUS_ALLOC_FAILED;
    memset(pref, 0, size);
    pref_state *p = state_of<pref_state>(pref);
    p->magic = PREF_MAGIC;
    p->search_mode = CUBLASLT_SEARCH_BEST_FIT;
    p->max_workspace = 0;
    p->reduction_mask = CUBLASLT_REDUCTION_SCHEME_MASK;
    for (uint32_t &a : p->min_align) a = 256;
    p->impl_mask = ~(uint64_t)0;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t sizeInBytes) {
    if (!pref || state_of<pref_state>(pref)->magic != PREF_MAGIC) return CUBLAS_STATUS_INVALID_VALUE;
    pref_state *p = state_of<pref_state>(pref);
    switch (attr) {
    case CUBLASLT_MATMUL_PREF_SEARCH_MODE: return attr_set(&p->search_mode, buf, sizeInBytes);
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: return attr_set(&p->max_workspace, buf, sizeInBytes);
    case CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK: return attr_set(&p->reduction_mask, buf, sizeInBytes);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: return attr_set(&p->min_align[0], buf, sizeInBytes);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES: return attr_set(&p->min_align[1], buf, sizeInBytes);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES: return attr_set(&p->min_align[2], buf, sizeInBytes);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: return attr_set(&p->min_align[3], buf, sizeInBytes);
    case CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT: return attr_set(&p->max_waves, buf, sizeInBytes);
    case CUBLASLT_MATMUL_PREF_IMPL_MASK: return attr_set(&p->impl_mask, buf, sizeInBytes);
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}

/* Candidates in order (algo_candidates), keeping those within the
 * preference: workspace, reduction scheme (NONE always passes the mask, as
 * in cuBLASLt), alignment (an algorithm needing more than the caller
 * guarantees is left out), waves.  None left: NOT_SUPPORTED. */
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t operationDesc,
                                              cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                              cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                              cublasLtMatmulPreference_t preference, int requestedAlgoCount,
                                              cublasLtMatmulHeuristicResult_t heuristicResultsArray[],
                                              int *returnAlgoCount) {
    if (!lt_ok(lightHandle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (requestedAlgoCount <= 0 || !heuristicResultsArray || !returnAlgoCount || !preference ||
        state_of<pref_state>(preference)->magic != PREF_MAGIC || !operationDesc || !Adesc || !Bdesc || !Cdesc || !Ddesc)
        return CUBLAS_STATUS_INVALID_VALUE;
    *returnAlgoCount = 0;
    gemm_job j;
    memset(&j, 0, sizeof j);
    cublasStatus_t s = lt_problem(state_of<desc_state>(operationDesc), state_of<layout_state>(Adesc),
                                  state_of<layout_state>(Bdesc), state_of<layout_state>(Cdesc),
                                  state_of<layout_state>(Ddesc), &j);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    const pref_state *p = state_of<pref_state>(preference);
    const int out_type = state_of<layout_state>(Ddesc)->type;
    const uint32_t min_align = std::min(std::min(p->min_align[0], p->min_align[1]), std::min(p->min_align[2], p->min_align[3]));
    const int n_sms = emu::device_profile().n_sms;
    int found = 0;
    for (const algo_state &a : algo_candidates(j.m, j.n, j.k)) {
        if (found == requestedAlgoCount) break;
        const size_t ws = algo_workspace(a, j.m, j.n, out_type);
        if (ws > p->max_workspace) continue;
        if (a.scheme != CUBLASLT_REDUCTION_SCHEME_NONE && !(a.scheme & p->reduction_mask)) continue;
        if (a.align > min_align) continue;
        const int64_t tm = a.tile == CUBLASLT_MATMUL_TILE_128x128 ? 128 : a.tile == CUBLASLT_MATMUL_TILE_32x32 ? 32 : 64;
        const int64_t tn = a.tile == CUBLASLT_MATMUL_TILE_64x32 ? 32 : tm;
        const float waves = (float)(((j.m + tm - 1) / tm) * ((j.n + tn - 1) / tn) * a.splitk) / (float)(n_sms > 0 ? n_sms : 1);
        if (p->max_waves > 0.0f && waves > p->max_waves) continue;
        cublasLtMatmulHeuristicResult_t *r = &heuristicResultsArray[found++];
        memset(r, 0, sizeof *r);
        memcpy(r->algo.data, &a, sizeof a);
        r->workspaceSize = ws;
        r->state = CUBLAS_STATUS_SUCCESS;
        r->wavesCount = waves;
    }
    *returnAlgoCount = found;
    return found ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
}

cublasStatus_t cublasLtMatmulAlgoConfigSetAttribute(cublasLtMatmulAlgo_t *algo,
                                                    cublasLtMatmulAlgoConfigAttributes_t attr, const void *buf,
                                                    size_t sizeInBytes) {
    if (!algo || state_of<algo_state>(algo)->magic != ALGO_MAGIC) return CUBLAS_STATUS_INVALID_VALUE;
    algo_state *a = state_of<algo_state>(algo);
    algo_state t = *a;
    cublasStatus_t s;
    switch (attr) {
    case CUBLASLT_ALGO_CONFIG_TILE_ID: s = attr_set(&t.tile, buf, sizeInBytes); break;
    case CUBLASLT_ALGO_CONFIG_SPLITK_NUM: s = attr_set(&t.splitk, buf, sizeInBytes); break;
    case CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME: s = attr_set(&t.scheme, buf, sizeInBytes); break;
    case CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING: s = attr_set(&t.swizzle, buf, sizeInBytes); break;
    case CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION: s = attr_set(&t.custom, buf, sizeInBytes); break;
    case CUBLASLT_ALGO_CONFIG_STAGES_ID: s = attr_set(&t.stages, buf, sizeInBytes); break;
    case CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID: s = attr_set(&t.inner_shape, buf, sizeInBytes); break;
    case CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID: s = attr_set(&t.cluster_shape, buf, sizeInBytes); break;
    default: s = CUBLAS_STATUS_INVALID_VALUE; break; /* the id is read-only */
    }
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    if (t.splitk < 1 || (t.scheme & ~(uint32_t)CUBLASLT_REDUCTION_SCHEME_MASK)) return CUBLAS_STATUS_INVALID_VALUE;
    *a = t; /* a split-K count and scheme set separately are checked together at cublasLtMatmul */
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulAlgoConfigGetAttribute(const cublasLtMatmulAlgo_t *algo,
                                                    cublasLtMatmulAlgoConfigAttributes_t attr, void *buf,
                                                    size_t sizeInBytes, size_t *sizeWritten) {
    if (!algo || state_of<algo_state>(algo)->magic != ALGO_MAGIC) return CUBLAS_STATUS_INVALID_VALUE;
    const algo_state *a = state_of<algo_state>(algo);
    switch (attr) {
    case CUBLASLT_ALGO_CONFIG_ID: return attr_get(a->id, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_ALGO_CONFIG_TILE_ID: return attr_get(a->tile, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_ALGO_CONFIG_SPLITK_NUM: return attr_get(a->splitk, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME: return attr_get(a->scheme, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING: return attr_get(a->swizzle, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION: return attr_get(a->custom, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_ALGO_CONFIG_STAGES_ID: return attr_get(a->stages, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID: return attr_get(a->inner_shape, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID: return attr_get(a->cluster_shape, buf, sizeInBytes, sizeWritten);
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}

/* D = alpha op(A) op(B) + beta C (+ bias) with the given algorithm (NULL: the
 * heuristic's first within the given workspace), enqueued on stream.  An
 * algorithm that needs more workspace than given is refused with
 * INVALID_VALUE (cublasLt.h: "workspaceSizeInBytes is less than workspace
 * required by configured algo"); one whose alignment the buffers do not meet,
 * or whose reduction the problem cannot use, with NOT_SUPPORTED. */
cublasStatus_t cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc, const void *alpha,
                              const void *A, cublasLtMatrixLayout_t Adesc, const void *B,
                              cublasLtMatrixLayout_t Bdesc, const void *beta, const void *C,
                              cublasLtMatrixLayout_t Cdesc, void *D, cublasLtMatrixLayout_t Ddesc,
                              const cublasLtMatmulAlgo_t *algo, void *workspace, size_t workspaceSizeInBytes,
                              cudaStream_t stream) {
    if (!lt_ok(lightHandle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!computeDesc || !Adesc || !Bdesc || !Cdesc || !Ddesc || (workspaceSizeInBytes && !workspace))
        return CUBLAS_STATUS_INVALID_VALUE;
    gemm_job j;
    memset(&j, 0, sizeof j);
    j.name = "cublasLtMatmul";
    const layout_state *la = state_of<layout_state>(Adesc), *lb = state_of<layout_state>(Bdesc);
    const layout_state *lc = state_of<layout_state>(Cdesc), *ld = state_of<layout_state>(Ddesc);
    const desc_state *d = state_of<desc_state>(computeDesc);
    cublasStatus_t s = lt_problem(d, la, lb, lc, ld, &j);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    j.A = mat_of(la, A);
    j.B = mat_of(lb, B);
    j.C = mat_of(lc, C);
    j.D = mat_of(ld, D);
    if (C == D && (lc->ld != ld->ld || lc->order != ld->order)) return CUBLAS_STATUS_INVALID_VALUE;
    if (j.bias && !j.bias_p) return CUBLAS_STATUS_INVALID_VALUE;
    s = scalars_take(&j, d->pointer_mode == CUBLASLT_POINTER_MODE_DEVICE, alpha, beta);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    j.reduced_ok = true;
    if (algo) {
        const algo_state *a = state_of<algo_state>(algo);
        if (!algo_valid(a)) return CUBLAS_STATUS_INVALID_VALUE;
        j.algo = *a;
    } else if (!algo_pick(j.m, j.n, j.k, ld->type, workspaceSizeInBytes, true, &j.algo)) {
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    j.workspace_need = algo_workspace(j.algo, j.m, j.n, ld->type);
    if (j.workspace_need > workspaceSizeInBytes) return CUBLAS_STATUS_INVALID_VALUE;
    j.workspace = j.workspace_need ? workspace : nullptr;
    for (const void *p : {A, B, C, (const void *)D})
        if (!aligned(p, j.algo.align)) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (!j.C.p && !j.device_scalars && j.beta != 0.0f) return CUBLAS_STATUS_INVALID_VALUE;
    return gemm_enqueue(stream, j);
}

} // extern "C"
