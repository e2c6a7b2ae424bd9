/*
 * attention.cu — causal attention of a step's queries over the paged KV
 * cache, for decode and prefill tokens alike (semantics: backend.h and
 * kernels/cpu/attention.c).
 *
 * Why one kernel for both.  backend.h promises that a token's result does
 * not depend on the rest of the batch, and a resumed job recomputes by
 * prefill what it once computed by decode: a decode token and the same
 * token inside a prefill chunk must give the same bits.  So every (token,
 * head) "row" is computed by the same arithmetic whatever block it lands
 * in; blocks only decide which rows share a K/V tile in shared memory.
 *
 * The arithmetic of one row (query q, positions [lo, pos] of its sequence):
 *   - positions are cut into partitions of ATT_PART, aligned to absolute
 *     positions (partition j = [j*ATT_PART, (j+1)*ATT_PART)), and each
 *     partition into tiles of ATT_KT = 32 positions, also aligned;
 *   - per tile (one position per lane): score = sum_d q[d]*k[d] in FP32, the
 *     even and odd d in two chains added at the end, times scale*log2(e);
 *     tile max and sum by warp butterflies; online softmax in base 2:
 *     m' = max(m, tile max), l = l*2^(m-m') + sum, acc = acc*2^(m-m') +
 *     sum_j p_j v_j (j in order);
 *   - a row inside one partition writes out = acc / l; a row spanning
 *     several writes (m, l, acc) per partition to a workspace, and the
 *     combine kernel merges them in partition order (flash-decoding).
 *   The partition split is what spreads a long decode context over many
 *   blocks; its size is fixed, so it never depends on the batch.
 *
 * Blocks.  Grid (token, KV head x head block, partition).  A block serves
 * one "tile" of rows: up to ATT_ROWS (token, query head) pairs that share a
 * KV head — the query heads of a GQA group (HB of them) for 16/HB
 * consecutive tokens of one sequence.  A decode token is a tile of its own;
 * a prefill chunk is cut into tiles of 16/HB tokens, so each K/V tile
 * loaded into shared memory serves up to 16 rows.  Tile starts are found on
 * the device (tokens whose offset in their sequence is a multiple of the
 * tile length); other blocks of the grid return at once.  Warps own rows
 * w, w+4, w+8, w+12.
 *
 * Workspace.  Partials take n_heads * n_parts * (head_dim + 2) floats per
 * token; when a step needs more than the backend's workspace, the op runs
 * over slices of tokens (which changes no row's arithmetic).
 *
 * Limits: head_dim even and at most 256 (ATT_MAX_HD).
 */
#include <math.h>

#include "kernels/cuda/common.cuh"

#define ATT_KT 32      /* KV positions per tile (one per lane) */
#define ATT_PART 256   /* KV positions per partition (a multiple of ATT_KT) */
#define ATT_ROWS 16    /* (token, head) rows per block */
#define ATT_WARPS 4
#define ATT_RPW (ATT_ROWS / ATT_WARPS) /* rows per warp */
#define ATT_MAX_HD 256

struct att_args {
    const int32_t *tok_start, *positions, *block_tables;
    int n_seqs, max_blocks, block_size;
    int t_lo, t_hi;       /* the slice of tokens of this launch */
    int n_heads, n_kv, hd, group, hb, n_hb, tok_per_tile;
    int window;
    float scale_log2;     /* softmax scale * log2(e) */
    int n_parts;          /* partition slots per row in the workspace */
    float *ws_ml;         /* [slice tokens][n_heads][n_parts][2] (m, l) */
    float *ws_acc;        /* [slice tokens][n_heads][n_parts][hd] */
};

__device__ __forceinline__ int att_seq_of(const int32_t *tok_start, int n_seqs, int t) {
    int lo = 0, hi = n_seqs - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (tok_start[mid] <= t) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

__device__ __forceinline__ int att_lo(int pos, int window) {
    return window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
}

/* Row stride in shared memory of a K/V tile row, in elements: two spare
 * elements keep lanes reading different rows on different banks. */
__host__ __device__ __forceinline__ int att_kv_stride(int hd) { return hd + 2; }

template <typename T, int PPL>
__global__ void __launch_bounds__(ATT_WARPS * 32)
    attention_kernel(T *__restrict__ out, const T *__restrict__ q, const T *__restrict__ kc,
                     const T *__restrict__ vc, att_args a) {
    LLMQ_DYN_SHARED(unsigned char, att_smem);
    LLMQ_SHARED(int, s_pos, [ATT_ROWS]);
    LLMQ_SHARED(int, s_lo, [ATT_ROWS]);

    const int t0 = a.t_lo + blockIdx.x;
    const int kvh = blockIdx.y / a.n_hb, hblk = blockIdx.y % a.n_hb;
    const int part = blockIdx.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    /* ---- which rows: a tile starts here? (uniform over the block) */
    const int s = att_seq_of(a.tok_start, a.n_seqs, t0);
    const int seq_start = a.tok_start[s], seq_end = a.tok_start[s + 1];
    const int rel = t0 - seq_start;
    if (t0 != a.t_lo && rel % a.tok_per_tile) return;
    int t_end = t0 + a.tok_per_tile - rel % a.tok_per_tile;
    if (t_end > seq_end) t_end = seq_end;
    if (t_end > a.t_hi) t_end = a.t_hi;
    const int h0 = kvh * a.group + hblk * a.hb;
    const int nh = a.group - hblk * a.hb < a.hb ? a.group - hblk * a.hb : a.hb; /* heads of this block */
    const int rows = (t_end - t0) * nh;

    /* ---- this partition's share of the tile's positions */
    const int part_lo = part * ATT_PART, part_hi = part_lo + ATT_PART - 1;
    int blo = 0x7fffffff, bhi = -1;
    for (int tt = t0; tt < t_end; tt++) {
        const int p = a.positions[tt];
        const int l = att_lo(p, a.window);
        blo = l < blo ? l : blo;
        bhi = p > bhi ? p : bhi;
    }
    if (blo < part_lo) blo = part_lo;
    if (bhi > part_hi) bhi = part_hi;
    if (blo > bhi) return; /* no row of the tile has positions here */

    const int hd = a.hd, kst = att_kv_stride(hd);
    T *sq = (T *)att_smem;                   /* [ATT_ROWS][hd] */
    T *sk = sq + ATT_ROWS * hd;              /* [ATT_KT][kst] */
    T *sv = sk + ATT_KT * kst;               /* [ATT_KT][kst] */

    if (threadIdx.x < ATT_ROWS) {
        const int r = threadIdx.x;
        if (r < rows) {
            const int p = a.positions[t0 + r / nh];
            s_pos[r] = p;
            s_lo[r] = att_lo(p, a.window);
        }
    }
    /* query rows, as 4-byte words (hd even: 16-bit rows are whole words) */
    {
        const int wpr = hd * (int)sizeof(T) / 4; /* words per row */
        for (int idx = threadIdx.x; idx < rows * wpr; idx += blockDim.x) {
            const int r = idx / wpr, wd = idx % wpr;
            const int tt = t0 + r / nh, h = h0 + r % nh;
            const uint32_t *src = (const uint32_t *)(q + ((size_t)tt * a.n_heads + h) * hd);
            ((uint32_t *)(sq + r * hd))[wd] = src[wd];
        }
    }
    __syncthreads();

    /* ---- per-row state: rows warp, warp+4, ... */
    float m[ATT_RPW], l[ATT_RPW];
    float2 acc[ATT_RPW][PPL];
    int rlo[ATT_RPW], rhi[ATT_RPW];
#pragma unroll
    for (int i = 0; i < ATT_RPW; i++) {
        const int r = warp + i * ATT_WARPS;
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int c = 0; c < PPL; c++) acc[i][c] = make_float2(0.0f, 0.0f);
        rlo[i] = 1;
        rhi[i] = 0; /* empty */
        if (r < rows) {
            rlo[i] = s_lo[r] > part_lo ? s_lo[r] : part_lo;
            rhi[i] = s_pos[r] < part_hi ? s_pos[r] : part_hi;
        }
    }

    const int32_t *bt = a.block_tables + (size_t)s * a.max_blocks;
    const size_t kv_dim = (size_t)a.n_kv * hd;
    const int wpr = hd * (int)sizeof(T) / 4;      /* words per K/V row */
    const int wps = kst * (int)sizeof(T) / 4;     /* words per smem row */
    const int first_tile = blo - blo % ATT_KT;

    for (int p0 = first_tile; p0 <= bhi; p0 += ATT_KT) {
        __syncthreads(); /* the previous tile is no longer read */
        for (int idx = threadIdx.x; idx < ATT_KT * wpr; idx += blockDim.x) {
            const int j = idx / wpr, wd = idx % wpr;
            const int p = p0 + j;
            uint32_t kw = 0, vw = 0;
            if (p >= blo && p <= bhi) {
                const size_t slot = (size_t)bt[p / a.block_size] * a.block_size + p % a.block_size;
                const size_t off = slot * kv_dim + (size_t)kvh * hd;
                kw = ((const uint32_t *)(kc + off))[wd];
                vw = ((const uint32_t *)(vc + off))[wd];
            }
            ((uint32_t *)sk)[j * wps + wd] = kw;
            ((uint32_t *)sv)[j * wps + wd] = vw;
        }
        __syncthreads();

#pragma unroll
        for (int i = 0; i < ATT_RPW; i++) {
            const int r = warp + i * ATT_WARPS;
            const int jlo = rlo[i] > p0 ? rlo[i] - p0 : 0;
            const int jhi = rhi[i] < p0 + ATT_KT - 1 ? rhi[i] - p0 : ATT_KT - 1;
            if (r >= rows || jlo > jhi) continue; /* warp-uniform */
            const bool valid = lane >= jlo && lane <= jhi;
            float sc = -INFINITY;
            if (valid) {
                const T *qr = sq + r * hd, *kr = sk + lane * kst;
                float s0 = 0.0f, s1 = 0.0f;
                for (int d = 0; d < hd; d += 2) {
                    const float2 qv = load2_f32(qr + d), kv = load2_f32(kr + d);
                    s0 = fmaf(qv.x, kv.x, s0);
                    s1 = fmaf(qv.y, kv.y, s1);
                }
                sc = (s0 + s1) * a.scale_log2;
            }
            const float m_new = fmaxf(m[i], warp_max(sc));
            const float corr = exp2f(m[i] - m_new); /* 0 on the first tile (m = -inf) */
            const float e = valid ? exp2f(sc - m_new) : 0.0f;
            l[i] = l[i] * corr + warp_sum(e);
            m[i] = m_new;
#pragma unroll
            for (int c = 0; c < PPL; c++) {
                acc[i][c].x *= corr;
                acc[i][c].y *= corr;
            }
            for (int j = jlo; j <= jhi; j++) {
                const float pj = __shfl_sync(FULL_MASK, e, j);
                const T *vr = sv + j * kst;
#pragma unroll
                for (int c = 0; c < PPL; c++) {
                    const int d = 2 * (lane + 32 * c);
                    if (d < hd) {
                        const float2 vv = load2_f32(vr + d);
                        acc[i][c].x = fmaf(pj, vv.x, acc[i][c].x);
                        acc[i][c].y = fmaf(pj, vv.y, acc[i][c].y);
                    }
                }
            }
        }
    }

    /* ---- results */
#pragma unroll
    for (int i = 0; i < ATT_RPW; i++) {
        const int r = warp + i * ATT_WARPS;
        if (r >= rows || rlo[i] > rhi[i]) continue;
        const int tt = t0 + r / nh, h = h0 + r % nh;
        const int first = s_lo[r] / ATT_PART, last = s_pos[r] / ATT_PART;
        if (first == last) { /* the whole row is in this partition */
            T *o = out + ((size_t)tt * a.n_heads + h) * hd;
            const float inv = 1.0f / l[i];
#pragma unroll
            for (int c = 0; c < PPL; c++) {
                const int d = 2 * (lane + 32 * c);
                if (d < hd) {
                    o[d] = from_f32<T>(acc[i][c].x * inv);
                    o[d + 1] = from_f32<T>(acc[i][c].y * inv);
                }
            }
        } else {
            const size_t slot = ((size_t)(tt - a.t_lo) * a.n_heads + h) * a.n_parts + part;
            if (lane == 0) {
                a.ws_ml[2 * slot] = m[i];
                a.ws_ml[2 * slot + 1] = l[i];
            }
            float *wa = a.ws_acc + slot * hd;
#pragma unroll
            for (int c = 0; c < PPL; c++) {
                const int d = 2 * (lane + 32 * c);
                if (d < hd) *(float2 *)(wa + d) = acc[i][c];
            }
        }
    }
}

/* Merge the partitions of rows that span several, in partition order.
 * Grid (slice tokens, n_heads); every thread recomputes the same (M, L). */
template <typename T> __global__ void attention_combine_kernel(T *__restrict__ out, att_args a) {
    const int tt = a.t_lo + blockIdx.x, h = blockIdx.y;
    const int pos = a.positions[tt];
    const int first = att_lo(pos, a.window) / ATT_PART, last = pos / ATT_PART;
    if (first == last) return; /* written directly by attention_kernel */
    const size_t base = ((size_t)(tt - a.t_lo) * a.n_heads + h) * a.n_parts;
    float mx = -INFINITY;
    for (int j = first; j <= last; j++) mx = fmaxf(mx, a.ws_ml[2 * (base + j)]);
    float L = 0.0f;
    for (int j = first; j <= last; j++) L += a.ws_ml[2 * (base + j) + 1] * exp2f(a.ws_ml[2 * (base + j)] - mx);
    const float inv = 1.0f / L;
    T *o = out + ((size_t)tt * a.n_heads + h) * a.hd;
    for (int d = threadIdx.x; d < a.hd; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = first; j <= last; j++) acc += a.ws_acc[(base + j) * a.hd + d] * exp2f(a.ws_ml[2 * (base + j)] - mx);
        o[d] = from_f32<T>(acc * inv);
    }
}

template <typename T, int PPL>
static void launch(llmq_backend *be, T *out, const T *q, const T *kc, const T *vc, att_args a, int n_tok) {
    cuda_impl *impl = cuda_impl_of(be);
    const size_t smem = ((size_t)ATT_ROWS * a.hd + 2 * (size_t)ATT_KT * att_kv_stride(a.hd)) * sizeof(T);
    if (smem > 48 * 1024) {
        int dev_max = 0;
        cudaDeviceGetAttribute(&dev_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, impl->device);
        if (smem > (size_t)dev_max) {
            cuda_fail(be, LLMQ_ERR_UNSUPPORTED,
                      "cuda attention: head_dim %d in %s needs %zu bytes of shared memory (device: %d)", a.hd,
                      llmq_dtype_name(be->act_dt), smem, dev_max);
            return;
        }
        CUDA_TRY_V(be, cudaFuncSetAttribute(attention_kernel<T, PPL>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            (int)smem));
    }
    dim3 grid((unsigned)n_tok, (unsigned)(a.n_kv * a.n_hb), (unsigned)a.n_parts);
    llmq_launch((attention_kernel<T, PPL>), grid, ATT_WARPS * 32, smem, impl->stream, out, q, kc, vc, a);
    CUDA_CHECK_LAUNCH(be);
    if (a.n_parts > 1) {
        dim3 g2((unsigned)n_tok, (unsigned)a.n_heads);
        llmq_launch(attention_combine_kernel<T>, g2, 128, 0, impl->stream, out, a);
        CUDA_CHECK_LAUNCH(be);
    }
}

template <typename T>
static void attention_t(llmq_backend *be, T *out, const T *q, const T *kc, const T *vc, att_args a, int n_tokens) {
    cuda_impl *impl = cuda_impl_of(be);
    /* tokens per launch so that the partials fit the workspace */
    const size_t per_tok = (size_t)a.n_heads * a.n_parts * (a.hd + 2) * sizeof(float);
    int slice = a.n_parts > 1 ? (int)(impl->attn_ws_bytes / per_tok) : n_tokens;
    if (slice < 1) {
        cuda_fail(be, LLMQ_ERR_UNSUPPORTED, "cuda attention: one token's partials (%zu bytes) exceed the workspace",
                  per_tok);
        return;
    }
    if (slice > n_tokens) slice = n_tokens;
    const size_t ml_floats = (size_t)slice * a.n_heads * a.n_parts * 2;
    a.ws_ml = impl->attn_ws;
    a.ws_acc = impl->attn_ws + ml_floats;
    for (int t = 0; t < n_tokens; t += slice) {
        a.t_lo = t;
        a.t_hi = t + slice < n_tokens ? t + slice : n_tokens;
        const int nt = a.t_hi - a.t_lo;
        if (a.hd <= 64) launch<T, 1>(be, out, q, kc, vc, a, nt);
        else if (a.hd <= 128) launch<T, 2>(be, out, q, kc, vc, a, nt);
        else launch<T, 4>(be, out, q, kc, vc, a, nt);
    }
}

void cuda_attention(llmq_backend *be, void *out, const void *q, const void *k_cache, const void *v_cache,
                    const be_attn_step *st, const be_attn_shape *sh) {
    if (st->n_tokens <= 0) return;
    if (sh->head_dim % 2 || sh->head_dim > ATT_MAX_HD || sh->n_kv_heads <= 0 || sh->n_heads % sh->n_kv_heads ||
        st->block_size <= 0 || st->max_blocks <= 0) {
        cuda_fail(be, LLMQ_ERR_UNSUPPORTED,
                  "cuda attention: head_dim %d (even, <= %d), %d heads over %d KV heads, block size %d, %d blocks",
                  sh->head_dim, ATT_MAX_HD, sh->n_heads, sh->n_kv_heads, st->block_size, st->max_blocks);
        return;
    }
    att_args a;
    a.tok_start = st->tok_start;
    a.positions = st->positions;
    a.block_tables = st->block_tables;
    a.n_seqs = st->n_seqs;
    a.max_blocks = st->max_blocks;
    a.block_size = st->block_size;
    a.n_heads = sh->n_heads;
    a.n_kv = sh->n_kv_heads;
    a.hd = sh->head_dim;
    a.group = sh->n_heads / sh->n_kv_heads;
    a.hb = a.group < ATT_ROWS ? a.group : ATT_ROWS;
    a.n_hb = (a.group + a.hb - 1) / a.hb;
    a.tok_per_tile = ATT_ROWS / a.hb;
    a.window = sh->window;
    a.scale_log2 = sh->scale * 1.4426950408889634f;
    /* every position a token may read is covered by its block table */
    const long max_pos = (long)st->max_blocks * st->block_size;
    a.n_parts = (int)((max_pos + ATT_PART - 1) / ATT_PART);
    a.ws_ml = a.ws_acc = NULL;
    a.t_lo = 0;
    a.t_hi = st->n_tokens;
    CUDA_DISPATCH_ACT(be->act_dt, T,
                      attention_t<T>(be, (T *)out, (const T *)q, (const T *)k_cache, (const T *)v_cache, a,
                                     st->n_tokens));
}
