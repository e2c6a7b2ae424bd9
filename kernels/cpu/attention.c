/*
 * attention.c — causal attention of a step's queries over the paged KV cache,
 * and the store of the step's K/V rows into it.
 *
 * Cache layout (per layer): [n_blocks * block_size, n_kv_heads * head_dim]
 * elements of be->kv_dt (F32, F16 or BF16: --kv-dtype); sequence s keeps
 * its position p in block block_tables[s][p / bs] at offset p % bs.  A
 * token at position pos attends to positions [max(0, pos - window + 1), pos]
 * of its own sequence (window 0 = all), which covers prefill, chunked
 * prefill and decode alike, since the step's own K/V rows were stored before
 * attention runs.  Query head h reads KV head h / (n_heads / n_kv_heads)
 * (grouped-query attention).
 *
 * kv_store rounds each element to kv_dt (nearest even), the same for both
 * backends, so the reference reads the very values the fast path reads.
 * Fast path: attention_tmpl.h (tiles of query rows against chunks of 64
 * positions, online softmax), one variant per ISA path.  Reference: scores
 * in a double array, then a textbook softmax.
 */
#include <math.h>
#include <stdlib.h>

#include "kernels/cpu/attention_isa.h"
#include "kernels/cpu/cpu.h"

void cpu_kv_store(llmq_backend *be, void *k_cache, void *v_cache, const void *k, const void *v,
                  const int32_t *slots, int n, int kv_dim) {
    const llmq_dtype dt = be->kv_dt;
    for (int i = 0; i < n; i++) {
        const float *ks = (const float *)k + (size_t)i * kv_dim, *vs = (const float *)v + (size_t)i * kv_dim;
        const size_t off = (size_t)slots[i] * kv_dim;
        if (dt == LLMQ_F32) {
            memcpy((float *)k_cache + off, ks, (size_t)kv_dim * sizeof(float));
            memcpy((float *)v_cache + off, vs, (size_t)kv_dim * sizeof(float));
        } else {
            uint16_t *kd = (uint16_t *)k_cache + off, *vd = (uint16_t *)v_cache + off;
            for (int j = 0; j < kv_dim; j++) {
                kd[j] = dt == LLMQ_BF16 ? attn_f32_to_bf16(ks[j]) : attn_f32_to_f16(ks[j]);
                vd[j] = dt == LLMQ_BF16 ? attn_f32_to_bf16(vs[j]) : attn_f32_to_f16(vs[j]);
            }
        }
    }
}

/* ---- the generic path: plain C, one accumulator per dot product ---------- */

static inline float att_dot(const float *a, const float *b, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static inline void att_axpy(float *acc, float w, const float *v, int n) {
    for (int i = 0; i < n; i++) acc[i] += w * v[i];
}

static inline void att_scal(float *acc, float c, int n) {
    for (int i = 0; i < n; i++) acc[i] *= c;
}

static inline void att_widen(float *dst, const uint16_t *src, llmq_dtype dt, int n) {
    for (int i = 0; i < n; i++) dst[i] = dt == LLMQ_BF16 ? bf16_to_f32(src[i]) : f16_to_f32(src[i]);
}

static inline float att_dot_h(const float *a, const uint16_t *h, llmq_dtype dt, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += a[i] * (dt == LLMQ_BF16 ? bf16_to_f32(h[i]) : f16_to_f32(h[i]));
    return s;
}

static inline void att_axpy_h(float *acc, float w, const uint16_t *h, llmq_dtype dt, int n) {
    for (int i = 0; i < n; i++) acc[i] += w * (dt == LLMQ_BF16 ? bf16_to_f32(h[i]) : f16_to_f32(h[i]));
}

#define ATT_FN cpu_attention_generic
#include "kernels/cpu/attention_tmpl.h"

void cpu_attention(llmq_backend *be, void *out, const void *q, const void *k_cache, const void *v_cache,
                   const be_attn_step *st, const be_attn_shape *sh) {
    const cpu_impl *impl = be->impl;
    attention_fn *fn = cpu_attention_generic;
#if defined(__x86_64__)
    if (impl->isa >= CPU_ISA_AVX512) fn = cpu_attention_avx512;
    else if (impl->isa == CPU_ISA_AVX2) fn = cpu_attention_avx2;
#else
    (void)impl;
#endif
    fn(be, out, q, k_cache, v_cache, st, sh);
}

/* Index of the sequence that owns token t (tok_start is increasing). */
static int seq_of_token(const be_attn_step *st, int t) {
    int lo = 0, hi = st->n_seqs - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (st->tok_start[mid] <= t) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

static inline size_t cache_row(const be_attn_step *st, int s, int p) {
    int32_t block = st->block_tables[(size_t)s * st->max_blocks + p / st->block_size];
    return (size_t)block * st->block_size + (size_t)(p % st->block_size);
}

/* Element i of a cache of dtype dt, widened (exactly). */
static inline double kv_at(const void *cache, llmq_dtype dt, size_t i) {
    if (dt == LLMQ_F32) return ((const float *)cache)[i];
    const uint16_t h = ((const uint16_t *)cache)[i];
    return dt == LLMQ_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
}

void cpu_attention_ref(llmq_backend *be, void *out, const void *q, const void *k_cache, const void *v_cache,
                       const be_attn_step *st, const be_attn_shape *sh) {
    const int hd = sh->head_dim, nh = sh->n_heads, group = sh->n_heads / sh->n_kv_heads;
    const int kv_dim = sh->n_kv_heads * hd;
    const llmq_dtype kdt = be->kv_dt;
    for (int t = 0; t < st->n_tokens; t++) {
        const int s = seq_of_token(st, t);
        const int pos = st->positions[t];
        const int lo = sh->window > 0 && pos - sh->window + 1 > 0 ? pos - sh->window + 1 : 0;
        double *sc = malloc(sizeof(double) * (size_t)(pos - lo + 1));
        if (!sc) {
            llmq_err_set(&be->err, LLMQ_ERR_NOMEM, "cpu-ref attention: out of memory");
            return;
        }
        for (int h = 0; h < nh; h++) {
            const float *qv = (const float *)q + (size_t)t * nh * hd + (size_t)h * hd;
            const size_t koff = (size_t)(h / group) * hd;
            double mx = -INFINITY, sum = 0;
            for (int p = lo; p <= pos; p++) {
                const size_t kr = cache_row(st, s, p) * kv_dim + koff;
                double dot = 0;
                for (int d = 0; d < hd; d++) dot += (double)qv[d] * kv_at(k_cache, kdt, kr + (size_t)d);
                sc[p - lo] = dot * sh->scale;
                if (sc[p - lo] > mx) mx = sc[p - lo];
            }
            for (int p = lo; p <= pos; p++) sum += (sc[p - lo] = exp(sc[p - lo] - mx));
            float *o = (float *)out + (size_t)t * nh * hd + (size_t)h * hd;
            for (int d = 0; d < hd; d++) {
                double a = 0;
                for (int p = lo; p <= pos; p++)
                    a += sc[p - lo] * kv_at(v_cache, kdt, cache_row(st, s, p) * kv_dim + koff + (size_t)d);
                o[d] = (float)(a / sum);
            }
        }
        free(sc);
    }
}
