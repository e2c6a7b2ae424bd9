/*
 * attention.c — causal attention of a step's queries over the paged KV cache,
 * and the store of the step's K/V rows into it.
 *
 * Cache layout (per layer): [n_blocks * block_size, n_kv_heads * head_dim]
 * F32; sequence s keeps its position p in block block_tables[s][p / bs] at
 * offset p % bs.  A token at position pos attends to positions
 * [max(0, pos - window + 1), pos] of its own sequence (window 0 = all), which
 * covers prefill, chunked prefill and decode alike, since the step's own K/V
 * rows were stored before attention runs.  Query head h reads KV head
 * h / (n_heads / n_kv_heads) (grouped-query attention).
 *
 * Fast path: one (token, head) per OpenMP work item, online softmax over
 * chunks of 64 positions (one rescale per chunk).  Reference: scores in a
 * double array, then a textbook softmax.
 */
#include <math.h>
#include <stdlib.h>

#include "kernels/cpu/cpu.h"

#define ATTN_CHUNK 64

void cpu_kv_store(llmq_backend *be, void *k_cache, void *v_cache, const void *k, const void *v,
                  const int32_t *slots, int n, int kv_dim) {
    (void)be;
    for (int i = 0; i < n; i++) {
        memcpy((float *)k_cache + (size_t)slots[i] * kv_dim, (const float *)k + (size_t)i * kv_dim,
               (size_t)kv_dim * sizeof(float));
        memcpy((float *)v_cache + (size_t)slots[i] * kv_dim, (const float *)v + (size_t)i * kv_dim,
               (size_t)kv_dim * sizeof(float));
    }
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

void cpu_attention(llmq_backend *be, void *out, const void *q, const void *k_cache, const void *v_cache,
                   const be_attn_step *st, const be_attn_shape *sh) {
    (void)be;
    const int hd = sh->head_dim, nh = sh->n_heads, group = sh->n_heads / sh->n_kv_heads;
    const int kv_dim = sh->n_kv_heads * hd;
    const int items = st->n_tokens * nh;
#pragma omp parallel for schedule(dynamic, 4) if (items > 1)
    for (int it = 0; it < items; it++) {
        const int t = it / nh, h = it % nh;
        const int s = seq_of_token(st, t);
        const int pos = st->positions[t];
        const int lo = sh->window > 0 && pos - sh->window + 1 > 0 ? pos - sh->window + 1 : 0;
        const float *qv = (const float *)q + (size_t)t * nh * hd + (size_t)h * hd;
        const size_t koff = (size_t)(h / group) * hd;
        float acc[512];
        float scores[ATTN_CHUNK];
        for (int d = 0; d < hd; d++) acc[d] = 0.0f;
        float m = -INFINITY, l = 0.0f;
        for (int p0 = lo; p0 <= pos; p0 += ATTN_CHUNK) {
            const int cnt = pos - p0 + 1 < ATTN_CHUNK ? pos - p0 + 1 : ATTN_CHUNK;
            float cmax = -INFINITY;
            for (int c = 0; c < cnt; c++) {
                const float *kv = (const float *)k_cache + cache_row(st, s, p0 + c) * kv_dim + koff;
                float dot = 0.0f;
                for (int d = 0; d < hd; d++) dot += qv[d] * kv[d];
                scores[c] = dot * sh->scale;
                if (scores[c] > cmax) cmax = scores[c];
            }
            if (cmax > m) {
                float corr = expf(m - cmax);
                l *= corr;
                for (int d = 0; d < hd; d++) acc[d] *= corr;
                m = cmax;
            }
            for (int c = 0; c < cnt; c++) {
                const float wgt = expf(scores[c] - m);
                const float *vv = (const float *)v_cache + cache_row(st, s, p0 + c) * kv_dim + koff;
                l += wgt;
                for (int d = 0; d < hd; d++) acc[d] += wgt * vv[d];
            }
        }
        float *o = (float *)out + (size_t)t * nh * hd + (size_t)h * hd;
        const float inv = 1.0f / l;
        for (int d = 0; d < hd; d++) o[d] = acc[d] * inv;
    }
}

void cpu_attention_ref(llmq_backend *be, void *out, const void *q, const void *k_cache, const void *v_cache,
                       const be_attn_step *st, const be_attn_shape *sh) {
    const int hd = sh->head_dim, nh = sh->n_heads, group = sh->n_heads / sh->n_kv_heads;
    const int kv_dim = sh->n_kv_heads * hd;
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
                const float *kv = (const float *)k_cache + cache_row(st, s, p) * kv_dim + koff;
                double dot = 0;
                for (int d = 0; d < hd; d++) dot += (double)qv[d] * kv[d];
                sc[p - lo] = dot * sh->scale;
                if (sc[p - lo] > mx) mx = sc[p - lo];
            }
            for (int p = lo; p <= pos; p++) sum += (sc[p - lo] = exp(sc[p - lo] - mx));
            float *o = (float *)out + (size_t)t * nh * hd + (size_t)h * hd;
            for (int d = 0; d < hd; d++) {
                double a = 0;
                for (int p = lo; p <= pos; p++)
                    a += sc[p - lo] * ((const float *)v_cache + cache_row(st, s, p) * kv_dim + koff)[d];
                o[d] = (float)(a / sum);
            }
        }
        free(sc);
    }
}
