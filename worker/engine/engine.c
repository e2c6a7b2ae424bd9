/*
 * engine.c — the forward pass over a paged KV cache, one function per
 * architecture family: forward_llama (Llama, Mistral, Qwen2, Mixtral:
 * RMSNorm, SwiGLU or Mixtral's experts, sliding windows) and forward_falcon (Falcon/RW: LayerNorm with
 * bias, GELU, parallel or sequential attention); the shapes of each are in
 * the comment above it.  Both run, per step (n tokens of S sequences,
 * d = hidden, V = vocab):
 *
 *   x[n,d] = embed(tokens)
 *   for each layer: norm, attention over the cache (attend: q/k/v, RoPE,
 *                   store k/v at the tokens' slots, attention, o), MLP,
 *                   residual adds
 *   logits[S,V] = norm(x[last token of each S]) Wlm^T
 *
 * Tensor parallelism: every rank runs the same step on its shard; the
 * leader first broadcasts the step plan (send_plan, eng_serve).
 *
 * All buffers are allocated at creation for the step limits; a step only
 * uploads its index arrays and runs the ops.
 */
#include "worker/engine/engine.h"
#include "worker/engine/synth.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct engine {
    const model *m;
    llmq_backend *be;
    eng_opts opts;
    llmq_comm *comm;            /* NULL or world 1: no collectives */
    llmq_comm *dcomm;           /* collectives on backend buffers: comm, or the backend's own (owned) */
    int tp;                     /* 1 when comm has more than one rank */
    int32_t *plan;              /* leader -> peers step plan (host), [plan_cap] */
    size_t plan_cap;            /* int32 entries of plan: the largest plan a step can need, at least PLAN_FRAME */
    float *lg_local, *lg_all;   /* TP logits: [S, V/world] local, [world, S, V/world] gathered */
    int32_t *h_ids_shard;       /* token ids shifted into this rank's vocabulary shard */
    size_t kv_dim;
    void **k_cache, **v_cache;  /* [n_layers] each [n_blocks * 16, kv_dim] */
    float *inv_freq;            /* [head_dim / 2] backend buffer */
    /* activations (backend buffers) */
    void *x, *h, *q, *k, *v, *att, *o, *gate, *up, *hl, *logits;
    void *h2, *o2;              /* Falcon: the MLP's own input (two LayerNorms) and output */
    void *rlogits;              /* Mixtral: router logits [T, E] */
    be_moe_scratch moe_ws;      /* Mixtral: the moe op's scratch (gate and up are the buffers above) */
    /* index arrays: host staging + backend copies */
    int32_t *h_ids, *h_pos, *h_slots, *h_tok_start, *h_bt, *h_rows;
    int32_t *d_ids, *d_pos, *d_slots, *d_tok_start, *d_bt, *d_rows;
    int max_bt;                 /* max blocks per sequence (context / 16) */
    int graphs;                 /* decode steps go through be_ops.graph_begin/graph_end */
    int pad_tables;             /* decode steps pad block tables to a power of two */
    synth *syn;                 /* the synthetic engine (on synth.h's backend): nothing above is used */
};

/* Step plan layout (int32): [magic, size, n_seqs, max_blocks, then per
 * sequence n_tokens, start_pos, n_blocks, want_logits, then all tokens, then
 * all block tables]; size counts every entry.  size PLAN_STOP: the leader
 * stops its peers.
 *
 * A plan travels in one broadcast of a fixed frame of PLAN_FRAME entries:
 * every rank of a collective moves the same byte count, so the frame is a
 * constant, not derived from a rank's limits (the ranks of a group started
 * rank by rank may be given different --max-num-seqs), and the peers find
 * the plan's size in its header.  The frame holds a decode step of 32
 * sequences of up to 1900 tokens each; only a larger plan (a long prefill
 * chunk, many long block tables) sends its rest in a second broadcast.  A
 * frame sized for the worst case instead would carry a large model's
 * largest block tables across the group on every decode step. */
#define PLAN_MAGIC 0x6c6d7170
#define PLAN_STOP (-1)
#define PLAN_HEADER 4
#define PLAN_FRAME ((size_t)4096) /* int32 entries: 16 KiB */

size_t eng_kv_bytes_per_token(const model_config *cfg, llmq_dtype kv_dt) {
    return (size_t)2 * cfg->n_layers * cfg->n_kv_heads * cfg->head_dim * llmq_dtype_size(kv_dt);
}

llmq_status eng_kv_dtype(const char *name, int kv16, llmq_dtype act_dt, llmq_dtype weights, llmq_dtype *out,
                         llmq_err *err) {
    llmq_dtype dt;
    /* auto, kv16: the checkpoint's own 16-bit type.  An F32 checkpoint keeps
     * F32 (the golden checks against transformers' F32 logits and greedy
     * tokens hold at 1e-4 only there: 16-bit K/V moves tiny models' logits
     * by ~5e-4 relative), 16 bits when asked. */
    if (!name || !strcmp(name, "auto"))
        dt = !kv16 ? act_dt : weights == LLMQ_BF16 || weights == LLMQ_F16 ? weights : LLMQ_F32;
    else if (!strcmp(name, "f32")) dt = LLMQ_F32;
    else if (!strcmp(name, "f16")) dt = LLMQ_F16;
    else if (!strcmp(name, "bf16")) dt = LLMQ_BF16;
    else
        return llmq_err_set(err, LLMQ_ERR_INVALID, "--kv-dtype '%s': expected auto, f32, f16 or bf16", name);
    if (dt != act_dt && !kv16)
        return llmq_err_set(err, LLMQ_ERR_UNSUPPORTED,
                            "--kv-dtype %s: this backend keeps its KV cache in its activation type (%s); use auto",
                            name, llmq_dtype_name(act_dt));
    *out = dt;
    return LLMQ_OK;
}

const model *eng_model(const engine *e) { return e->m; }
int eng_n_blocks(const engine *e) { return e->opts.n_blocks; }

/* Headroom the pool leaves on the device beyond the budget: allocator
 * granularity and fragmentation, NCCL's and cuBLAS's lazy buffers. */
#define ENG_POOL_SLACK ((size_t)256 << 20)

/* KV blocks that fit in mem_util of the device once everything else is
 * allocated; the minimum over the group's ranks. */
static llmq_status size_pool(engine *e, double mem_util, size_t block_bytes, int *n_blocks, llmq_err *err) {
    llmq_backend *be = e->be;
    if (!be->ops->mem_info)
        return llmq_err_set(err, LLMQ_ERR_UNSUPPORTED,
                            "engine: the %s backend cannot size the KV pool from its memory; give the number of "
                            "blocks (--kv-blocks), or use --memory-utilization with llmq-worker, which estimates it",
                            be->ops->name);
    size_t fr = 0, tot = 0;
    be->ops->mem_info(be, &fr, &tot);
    const double used = (double)(tot - fr), budget = mem_util * (double)tot - used - (double)ENG_POOL_SLACK;
    double b = budget > 0 ? budget / (double)block_bytes : 0;
    const int cap = INT32_MAX / ENG_BLOCK_SIZE;
    int32_t mine = b > cap ? cap : (int32_t)b;
    int32_t all[64];
    if (e->tp) {
        if (e->comm->world > 64) return llmq_err_set(err, LLMQ_ERR_INVALID, "engine: more than 64 ranks");
        if (comm_all_gather(e->comm, all, &mine, 1, COMM_I32))
            return llmq_err_set(err, e->comm->err.code, "%s", e->comm->err.msg);
        for (int r = 0; r < e->comm->world; r++) mine = all[r] < mine ? all[r] : mine;
    }
    if (mine < 1)
        return llmq_err_set(err, LLMQ_ERR_NOMEM,
                            "memory utilization %.3g: %.1f MiB of %.1f MiB are in use once the weights and step "
                            "buffers are allocated (on this rank; the smallest pool of the group counts): no room "
                            "for one KV block of %.2f MiB within %.1f MiB (less %.0f MiB of headroom)",
                            mem_util, used / 1048576.0, tot / 1048576.0, block_bytes / 1048576.0,
                            mem_util * (double)tot / 1048576.0, ENG_POOL_SLACK / 1048576.0);
    *n_blocks = mine;
    return LLMQ_OK;
}

llmq_status eng_create(engine **out, const model *m, const eng_opts *o, llmq_err *err) {
    const model_config *c = &m->cfg;
    const int sized = o->n_blocks <= 0 && o->mem_util > 0 && o->mem_util <= 1;
    if ((o->n_blocks <= 0 && !sized) || o->max_tokens <= 0 || o->max_seqs <= 0 || o->max_seqs > o->max_tokens)
        return llmq_err_set(err, LLMQ_ERR_INVALID,
                            "engine: need n_blocks > 0 (or a memory utilization in (0, 1]) and 0 < max_seqs <= "
                            "max_tokens (got %d, %d, %d)", o->n_blocks, o->max_seqs, o->max_tokens);
    engine *e = calloc(1, sizeof *e);
    if (!e) return llmq_err_set(err, LLMQ_ERR_NOMEM, "engine: out of memory");
    llmq_backend *be = m->be;
    e->m = m;
    e->be = be;
    e->opts = *o;
    if (synth_backend_rate(m->be) > 0) { /* synth.h: no backend buffers, only hashes */
        llmq_status st = synth_create(&e->syn, m, o, err);
        if (st) {
            free(e);
            return st;
        }
        *out = e;
        return LLMQ_OK;
    }
    const model_shard *sh = &m->shard;
    e->comm = o->comm;
    e->tp = o->comm && o->comm->world > 1;
    if ((o->comm ? o->comm->world : 1) != sh->world || (o->comm ? o->comm->rank : 0) != sh->rank) {
        free(e);
        return llmq_err_set(err, LLMQ_ERR_INVALID, "engine: the model is shard %d of %d but the group is rank %d of %d",
                            sh->rank, sh->world, o->comm ? o->comm->rank : 0, o->comm ? o->comm->world : 1);
    }
    e->dcomm = e->comm;
    if (e->tp && be->ops->group_comm) {
        /* the largest reduce: a row-parallel output of a full step (reduce()) */
        llmq_comm *d = be->ops->group_comm(be, e->comm, (size_t)o->max_tokens * (size_t)c->hidden_size, err);
        if (!d) {
            free(e);
            return err->code;
        }
        e->dcomm = d;
    }
    e->kv_dim = (size_t)sh->n_kv_heads * c->head_dim;
    /* the KV cache's element type: set on the backend, whose kv_store and
     * attention read it (backend.h) */
    llmq_dtype kv_dt;
    llmq_status kst = eng_kv_dtype(o->kv_dtype, (be->ops->kv_dtypes & (1u << LLMQ_F16 | 1u << LLMQ_BF16)) != 0,
                                   be->act_dt, m->embed.dt, &kv_dt, err);
    if (!kst && kv_dt != be->act_dt && !(be->ops->kv_dtypes & (1u << kv_dt)))
        kst = llmq_err_set(err, LLMQ_ERR_UNSUPPORTED, "--kv-dtype: the %s backend has no %s KV cache", be->ops->name,
                           llmq_dtype_name(kv_dt));
    if (kst) {
        eng_destroy(e);
        return kst;
    }
    be->kv_dt = kv_dt;
    const size_t kes = llmq_dtype_size(kv_dt);
    const size_t es = llmq_dtype_size(be->act_dt), T = (size_t)o->max_tokens, S = (size_t)o->max_seqs;
    const size_t d = (size_t)c->hidden_size, qd = (size_t)sh->n_heads * c->head_dim, I = (size_t)sh->inter;
    const size_t Vl = (size_t)sh->vocab;

    /* step buffers first, so that a pool sized from the device's free
     * memory counts them */
    int ok = (e->x = be->ops->alloc(be, T * d * es)) && (e->h = be->ops->alloc(be, T * d * es)) &&
         (e->q = be->ops->alloc(be, T * qd * es)) && (e->k = be->ops->alloc(be, T * e->kv_dim * es)) &&
         (e->v = be->ops->alloc(be, T * e->kv_dim * es)) && (e->att = be->ops->alloc(be, T * qd * es)) &&
         (e->o = be->ops->alloc(be, T * d * es)) &&
         (c->arch == ARCH_FALCON || (e->gate = be->ops->alloc(be, T * I * es))) && /* Falcon: no gate */
         (e->up = be->ops->alloc(be, T * I * es)) && (e->hl = be->ops->alloc(be, S * d * es)) &&
         (e->logits = be->ops->alloc(be, S * Vl * es)) &&
         (e->inv_freq = be->ops->alloc(be, (size_t)c->head_dim / 2 * sizeof(float)));
    if (c->arch == ARCH_FALCON) {
        if (!be->ops->layernorm || !be->ops->gelu) {
            eng_destroy(e);
            return llmq_err_set(err, LLMQ_ERR_UNSUPPORTED, "engine: the %s backend has no LayerNorm/GELU for %s",
                                be->ops->name, c->arch_name);
        }
        ok = ok && (e->h2 = be->ops->alloc(be, T * d * es)) && (e->o2 = be->ops->alloc(be, T * d * es));
    }
    if (c->n_experts > 0) {
        if (!be->ops->moe) {
            eng_destroy(e);
            return llmq_err_set(err, LLMQ_ERR_UNSUPPORTED,
                                "engine: the %s backend has no mixture-of-experts op for %s", be->ops->name,
                                c->arch_name);
        }
        const size_t E = (size_t)c->n_experts, k = (size_t)c->top_k;
        e->moe_ws.gate = e->gate;
        e->moe_ws.up = e->up;
        ok = ok && (e->rlogits = be->ops->alloc(be, T * E * es)) && (e->moe_ws.xs = be->ops->alloc(be, T * d * es)) &&
             (e->moe_ws.ys = be->ops->alloc(be, T * k * d * sizeof(float))) &&
             (e->moe_ws.route = be->ops->alloc(be, be_moe_route_bytes(T, c->n_experts, c->top_k)));
    }
    if (ok && sized) {
        llmq_status st = size_pool(e, o->mem_util, (size_t)2 * c->n_layers * ENG_BLOCK_SIZE * e->kv_dim * kes,
                                   &e->opts.n_blocks, err);
        if (st) {
            eng_destroy(e);
            return st;
        }
    }
    const size_t cache_elems = (size_t)e->opts.n_blocks * ENG_BLOCK_SIZE * e->kv_dim;
    ok = ok && (e->k_cache = calloc((size_t)c->n_layers, sizeof(void *))) &&
         (e->v_cache = calloc((size_t)c->n_layers, sizeof(void *)));
    for (int l = 0; ok && l < c->n_layers; l++)
        ok = (e->k_cache[l] = be->ops->alloc(be, cache_elems * kes)) &&
             (e->v_cache[l] = be->ops->alloc(be, cache_elems * kes));
    e->max_bt = (c->max_position_embeddings + ENG_BLOCK_SIZE - 1) / ENG_BLOCK_SIZE;
    if (e->max_bt > e->opts.n_blocks) e->max_bt = e->opts.n_blocks;
    /* index arrays */
    ok = ok && (e->h_ids = malloc(T * 4)) && (e->h_pos = malloc(T * 4)) && (e->h_slots = malloc(T * 4)) &&
         (e->h_tok_start = malloc((S + 1) * 4)) && (e->h_bt = malloc(S * (size_t)e->max_bt * 4)) &&
         (e->h_rows = malloc(S * 4)) && (e->h_ids_shard = malloc(T * 4)) &&
         (e->d_ids = be->ops->alloc(be, T * 4)) &&
         (e->d_pos = be->ops->alloc(be, T * 4)) && (e->d_slots = be->ops->alloc(be, T * 4)) &&
         (e->d_tok_start = be->ops->alloc(be, (S + 1) * 4)) &&
         (e->d_bt = be->ops->alloc(be, S * (size_t)e->max_bt * 4)) && (e->d_rows = be->ops->alloc(be, S * 4));
    e->plan_cap = PLAN_HEADER + 4 * S + T + S * (size_t)e->max_bt;
    if (e->plan_cap < PLAN_FRAME) e->plan_cap = PLAN_FRAME;
    ok = ok && (e->plan = calloc(e->plan_cap, 4)); /* zeros: a frame's unused tail is defined */
    if (e->tp) ok = ok && (e->lg_local = malloc(S * Vl * 4)) && (e->lg_all = malloc(S * Vl * 4 * sh->world));
    if (!ok) {
        const int nb = e->opts.n_blocks;
        eng_destroy(e);
        return llmq_err_set(err, LLMQ_ERR_NOMEM,
                            "engine: cannot allocate the KV cache (%d blocks, %.1f MiB) and buffers for %d tokens",
                            nb, (double)cache_elems * kes * 2 * c->n_layers / 1048576.0, o->max_tokens);
    }
    float inv[256];
    model_config_rope_inv_freq(c, inv);
    be->ops->upload(be, e->inv_freq, inv, (size_t)c->head_dim / 2 * sizeof(float));
    /* Step graphs on one rank only: the collectives of a group wait on the
     * host between layers (the communicator's timeouts), which a recording
     * cannot hold. */
    e->graphs = !e->tp && be->ops->graph_begin && be->ops->graph_end;
    e->pad_tables = e->graphs || o->pad_tables;
    *out = e;
    return LLMQ_OK;
}

void eng_destroy(engine *e) {
    if (!e) return;
    if (e->syn) {
        synth_destroy(e->syn);
        free(e);
        return;
    }
    llmq_backend *be = e->be;
    if (e->dcomm != e->comm) comm_destroy(e->dcomm);
    for (int l = 0; l < e->m->cfg.n_layers; l++) {
        if (e->k_cache) be->ops->free(be, e->k_cache[l]);
        if (e->v_cache) be->ops->free(be, e->v_cache[l]);
    }
    free(e->k_cache);
    free(e->v_cache);
    void *bufs[] = {e->x, e->h, e->h2, e->o2, e->q, e->k, e->v, e->att, e->o, e->gate, e->up, e->hl, e->logits, e->inv_freq,
                    e->d_ids, e->d_pos, e->d_slots, e->d_tok_start, e->d_bt, e->d_rows, e->rlogits,
                    e->moe_ws.xs, e->moe_ws.ys, e->moe_ws.route};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) be->ops->free(be, bufs[i]);
    free(e->h_ids);
    free(e->h_pos);
    free(e->h_slots);
    free(e->h_tok_start);
    free(e->h_bt);
    free(e->h_rows);
    free(e->h_ids_shard);
    free(e->plan);
    free(e->lg_local);
    free(e->lg_all);
    free(e);
}

llmq_status eng_step_check(const model_config *c, const eng_opts *o, int max_bt, const eng_seq *seqs, int n_seqs,
                           int *total_tokens, int *max_blocks, llmq_err *err) {
    if (n_seqs <= 0 || n_seqs > o->max_seqs)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "step: %d sequences (limit %d)", n_seqs, o->max_seqs);
    int total = 0, mb = 1;
    for (int s = 0; s < n_seqs; s++) {
        const eng_seq *q = &seqs[s];
        const int end = q->start_pos + q->n_tokens;
        if (q->n_tokens <= 0 || q->start_pos < 0)
            return llmq_err_set(err, LLMQ_ERR_INVALID, "step: sequence %d has %d tokens at position %d", s,
                                q->n_tokens, q->start_pos);
        if (end > c->max_position_embeddings || end > max_bt * ENG_BLOCK_SIZE)
            return llmq_err_set(err, LLMQ_ERR_INVALID, "step: sequence %d reaches position %d beyond the context (%d)",
                                s, end, c->max_position_embeddings);
        if (q->n_blocks * ENG_BLOCK_SIZE < end || q->n_blocks > max_bt)
            return llmq_err_set(err, LLMQ_ERR_INVALID, "step: sequence %d has %d blocks for %d positions", s,
                                q->n_blocks, end);
        for (int b = 0; b < q->n_blocks; b++)
            if (q->block_table[b] < 0 || q->block_table[b] >= o->n_blocks)
                return llmq_err_set(err, LLMQ_ERR_INVALID, "step: sequence %d has block id %d out of range", s,
                                    q->block_table[b]);
        for (int t = 0; t < q->n_tokens; t++)
            if (q->tokens[t] < 0 || q->tokens[t] >= c->vocab_size)
                return llmq_err_set(err, LLMQ_ERR_INVALID, "step: token id %d outside the vocabulary (%d)",
                                    q->tokens[t], c->vocab_size);
        total += q->n_tokens;
        if (total > o->max_tokens)
            return llmq_err_set(err, LLMQ_ERR_INVALID, "step: more than %d tokens", o->max_tokens);
        if (q->n_blocks > mb) mb = q->n_blocks;
    }
    *total_tokens = total;
    *max_blocks = mb;
    return LLMQ_OK;
}

/* Check the step against the limits and fill the host index arrays. */
static llmq_status plan_step(engine *e, const eng_seq *seqs, int n_seqs, int *n_tok, int *n_out, int *max_blocks,
                             llmq_err *err) {
    int total, mb;
    llmq_status st = eng_step_check(&e->m->cfg, &e->opts, e->max_bt, seqs, n_seqs, &total, &mb, err);
    if (st) return st;
    /* A decode step's block tables padded to a power of two (at least 16
     * blocks, one attention partition of the CUDA kernel; at most the
     * context): the step's shape then changes only when the longest
     * sequence doubles, so a recorded step replays for many later steps of
     * its batch size, and the padding costs attention at most 2x in empty
     * work.  Which bits a row gets does not depend on the width (attention
     * reads a row's own positions only). */
    if (e->pad_tables && total == n_seqs) {
        int w = 16;
        while (w < mb) w *= 2;
        mb = w < e->max_bt ? w : e->max_bt;
    }
    int t = 0, outs = 0;
    for (int s = 0; s < n_seqs; s++) {
        const eng_seq *q = &seqs[s];
        e->h_tok_start[s] = t;
        for (int i = 0; i < q->n_tokens; i++, t++) {
            const int p = q->start_pos + i;
            e->h_ids[t] = q->tokens[i];
            e->h_pos[t] = p;
            e->h_slots[t] = q->block_table[p / ENG_BLOCK_SIZE] * ENG_BLOCK_SIZE + p % ENG_BLOCK_SIZE;
        }
        memcpy(e->h_bt + (size_t)s * mb, q->block_table, (size_t)q->n_blocks * 4);
        for (int b = q->n_blocks; b < mb; b++) e->h_bt[(size_t)s * mb + b] = 0;
        if (q->want_logits) e->h_rows[outs++] = t - 1;
    }
    e->h_tok_start[n_seqs] = t;
    *n_tok = total;
    *n_out = outs;
    *max_blocks = mb;
    return LLMQ_OK;
}

/* Sum a row-parallel output over the group. */
static llmq_status reduce(engine *e, void *buf, size_t n, llmq_err *err) {
    if (!e->tp) return LLMQ_OK;
    const llmq_dtype dt = e->be->act_dt;
    const comm_dtype cdt = dt == LLMQ_F16 ? COMM_F16 : dt == LLMQ_BF16 ? COMM_BF16 : COMM_F32;
    if (comm_all_reduce_sum(e->dcomm, buf, n, cdt)) return llmq_err_set(err, e->dcomm->err.code, "%s", e->dcomm->err.msg);
    return LLMQ_OK;
}

/* The ops of a planned step, from the embedding to the logits of its n_out
 * rows (index arrays uploaded): what a step graph records.  One function per
 * architecture family, each a plain loop over the layers; the pieces every
 * family shares are the helpers below.  Only the collectives of a group may
 * fail here; ops report through sync. */

/* A step's shapes for the ops (n tokens of n_seqs sequences, block tables mb wide). */
typedef struct step_dims {
    int n_seqs, n, n_out, mb;
} step_dims;

/* x[n,d] = embed(tokens): this rank's vocabulary rows (zero outside them),
 * summed over the group. */
static llmq_status embed_tokens(engine *e, const step_dims *sd, llmq_err *err) {
    llmq_backend *be = e->be;
    be->ops->embed(be, e->x, &e->m->embed, e->d_ids, sd->n);
    return reduce(e, e->x, (size_t)sd->n * e->m->cfg.hidden_size, err);
}

/* Self-attention of layer l over its input h[n,d], this rank's heads:
 *   q,k,v  = h Wq^T, h Wk^T, h Wv^T (+ biases)     [n,q] [n,kv] [n,kv]
 *   rope(q, k); store k, v at the tokens' cache slots
 *   att    = attention(q, cache)                   [n,q], causal, window (0 = none)
 *   o[n,d] = att Wo^T (+ bias)                      a partial sum: not reduced here */
static void attend(engine *e, int l, const void *h, int window, const step_dims *sd) {
    llmq_backend *be = e->be;
    const be_ops *op = be->ops;
    const model_config *c = &e->m->cfg;
    const model_shard *sh = &e->m->shard;
    const model_layer *ly = &e->m->layers[l];
    const int n = sd->n;
    const be_attn_step step = {sd->n_seqs, n, e->d_tok_start, e->d_pos, e->d_bt, sd->mb, ENG_BLOCK_SIZE};
    const be_attn_shape shape = {sh->n_heads, sh->n_kv_heads, c->head_dim, window, 1.0f / sqrtf((float)c->head_dim)};
    op->matmul(be, e->q, h, &ly->wq, ly->bq, n);
    op->matmul(be, e->k, h, &ly->wk, ly->bk, n);
    op->matmul(be, e->v, h, &ly->wv, ly->bv, n);
    op->rope(be, e->q, e->k, e->d_pos, n, sh->n_heads, sh->n_kv_heads, c->head_dim, e->inv_freq);
    op->kv_store(be, e->k_cache[l], e->v_cache[l], e->k, e->v, e->d_slots, n, (int)e->kv_dim);
    op->attention(be, e->att, e->q, e->k_cache[l], e->v_cache[l], &step, &shape);
    op->matmul(be, e->o, e->att, &ly->wo, ly->bo, n);
}

/* Llama, Mistral, Qwen2, Mixtral: pre-norm RMSNorm, SwiGLU MLP (Mixtral:
 * a mixture of SwiGLU experts), per-layer sliding window; the residual adds
 * are fused into the next RMSNorm.
 *
 *   h      = rmsnorm(x)                  (x += m of the layer before, fused, after layer 0)
 *   o[n,d] = attend(h); all-reduce
 *   h      = rmsnorm(x += o)
 *   g[n,I] = silu(h Wg^T) * (h Wu^T)
 *   m[n,d] = g Wd^T (in o); all-reduce
 *   Mixtral instead: r[n,E] = h Wr^T (the router, whole on every rank);
 *   m[n,d] = moe(h, r), each expert this rank's slice; all-reduce
 *   x += m; logits[S,V] = rmsnorm(x[last token of each S]) Wlm^T */
static llmq_status forward_llama(engine *e, const step_dims *sd, llmq_err *err) {
    llmq_backend *be = e->be;
    const be_ops *op = be->ops;
    const model *m = e->m;
    const model_config *c = &m->cfg;
    const int d = c->hidden_size, I = m->shard.inter, n = sd->n;
    const float eps = c->rms_norm_eps;
    llmq_status st;
    if ((st = embed_tokens(e, sd, err))) return st;
    for (int l = 0; l < c->n_layers; l++) {
        const model_layer *ly = &m->layers[l];
        if (l == 0)
            op->rmsnorm(be, e->h, e->x, ly->attn_norm, n, d, eps);
        else
            op->add_rmsnorm(be, e->h, e->x, e->o, ly->attn_norm, n, d, eps);
        attend(e, l, e->h, model_config_layer_window(c, l), sd);
        if ((st = reduce(e, e->o, (size_t)n * d, err))) return st;
        op->add_rmsnorm(be, e->h, e->x, e->o, ly->mlp_norm, n, d, eps);
        if (c->n_experts > 0) {
            op->matmul(be, e->rlogits, e->h, &ly->router, NULL, n);
            op->moe(be, e->o, e->h, e->rlogits, &ly->moe, n, &e->moe_ws);
        } else {
            op->matmul(be, e->gate, e->h, &ly->w_gate, ly->b_gate, n);
            op->matmul(be, e->up, e->h, &ly->w_up, ly->b_up, n);
            op->swiglu(be, e->gate, e->gate, e->up, n, I);
            op->matmul(be, e->o, e->gate, &ly->w_down, ly->b_down, n);
        }
        if ((st = reduce(e, e->o, (size_t)n * d, err))) return st;
    }
    if (sd->n_out > 0) {
        op->add(be, e->x, e->o, (size_t)n * d); /* the last layer's residual */
        op->gather_rows(be, e->hl, e->x, e->d_rows, sd->n_out, d);
        op->rmsnorm(be, e->hl, e->hl, m->final_norm, sd->n_out, d, eps);
        op->matmul(be, e->logits, e->hl, &m->lm_head, NULL, sd->n_out);
    }
    return LLMQ_OK;
}

/* Falcon (and RW): LayerNorms with bias, a GELU MLP without gate, rotary
 * positions, no window.  Parallel attention (every released Falcon):
 * attention and MLP read the same input (ln_attn / ln_mlp with two_ln, else
 * input_layernorm for both) and x += attn + mlp, one all-reduce per layer.
 * Sequential: x += attn (reduced), then the MLP on its own LayerNorm.
 *
 *   h       = layernorm(x)                      (h2 = ln_mlp(x) with two_ln)
 *   o[n,d]  = attend(h)
 *   u[n,I]  = gelu(h' Wu^T)                     h' = h2 or h (parallel), ln_mlp(x + o) (sequential)
 *   o2[n,d] = u Wd^T (+ o when parallel); all-reduce; x += o2
 *   logits[S,V] = layernorm(x[last token of each S]) Wlm^T */
static llmq_status forward_falcon(engine *e, const step_dims *sd, llmq_err *err) {
    llmq_backend *be = e->be;
    const be_ops *op = be->ops;
    const model *m = e->m;
    const model_config *c = &m->cfg;
    const int d = c->hidden_size, I = m->shard.inter, n = sd->n;
    const float eps = c->rms_norm_eps;
    llmq_status st;
    if ((st = embed_tokens(e, sd, err))) return st;
    for (int l = 0; l < c->n_layers; l++) {
        const model_layer *ly = &m->layers[l];
        op->layernorm(be, e->h, e->x, ly->attn_norm, ly->attn_norm_b, n, d, eps);
        const void *hm = e->h;
        if (c->two_ln) {
            op->layernorm(be, e->h2, e->x, ly->mlp_norm, ly->mlp_norm_b, n, d, eps);
            hm = e->h2;
        }
        attend(e, l, e->h, 0, sd);
        if (!c->parallel_attn) { /* sequential: x += attn, then the MLP's own LayerNorm */
            if ((st = reduce(e, e->o, (size_t)n * d, err))) return st;
            op->add(be, e->x, e->o, (size_t)n * d);
            op->layernorm(be, e->h2, e->x, ly->mlp_norm, ly->mlp_norm_b, n, d, eps);
            hm = e->h2;
        }
        op->matmul(be, e->up, hm, &ly->w_up, ly->b_up, n);
        op->gelu(be, e->up, e->up, (size_t)n * I);
        op->matmul(be, e->o2, e->up, &ly->w_down, ly->b_down, n);
        if (c->parallel_attn) op->add(be, e->o2, e->o, (size_t)n * d); /* mlp + attn, as transformers adds */
        if ((st = reduce(e, e->o2, (size_t)n * d, err))) return st;
        op->add(be, e->x, e->o2, (size_t)n * d);
    }
    if (sd->n_out > 0) {
        op->gather_rows(be, e->hl, e->x, e->d_rows, sd->n_out, d);
        op->layernorm(be, e->hl, e->hl, m->final_norm, m->final_norm_b, sd->n_out, d, eps);
        op->matmul(be, e->logits, e->hl, &m->lm_head, NULL, sd->n_out);
    }
    return LLMQ_OK;
}

static llmq_status forward(engine *e, const step_dims *sd, llmq_err *err) {
    return e->m->cfg.arch == ARCH_FALCON ? forward_falcon(e, sd, err) : forward_llama(e, sd, err);
}

/* Run a planned step (host index arrays filled): upload its indices, run
 * (or replay) its ops, bring the logits home. */
static llmq_status run_step(engine *e, int n_seqs, int n, int n_out, int mb, float *logits, llmq_err *err) {
    llmq_backend *be = e->be;
    const be_ops *op = be->ops;
    const model_config *c = &e->m->cfg;
    const model_shard *sh = &e->m->shard;
    const int Vl = sh->vocab;
    llmq_status st = LLMQ_OK;

    for (int i = 0; i < n; i++) e->h_ids_shard[i] = e->h_ids[i] - sh->vocab0; /* outside the shard: a zero row */
    op->upload(be, e->d_ids, e->h_ids_shard, (size_t)n * 4);
    op->upload(be, e->d_pos, e->h_pos, (size_t)n * 4);
    op->upload(be, e->d_slots, e->h_slots, (size_t)n * 4);
    op->upload(be, e->d_tok_start, e->h_tok_start, (size_t)(n_seqs + 1) * 4);
    op->upload(be, e->d_bt, e->h_bt, (size_t)n_seqs * mb * 4);
    op->upload(be, e->d_rows, e->h_rows, (size_t)n_out * 4);

    /* Decode steps replay a recording of their batch size (the key holds
     * every argument of the ops that is not in a buffer). */
    int g = BE_GRAPH_EAGER;
    if (e->graphs && n == n_seqs && n_seqs < (1 << 20) && mb < (1 << 23))
        g = op->graph_begin(be, (uint64_t)n_seqs | (uint64_t)n_out << 20 | (uint64_t)mb << 40);
    if (g != BE_GRAPH_REPLAYED) {
        const step_dims sd = {n_seqs, n, n_out, mb};
        st = forward(e, &sd, err);
        if (g == BE_GRAPH_RECORDING && !op->graph_end(be)) {
            e->graphs = 0; /* the backend said why; its ops run as they are from now on */
            if (!st) st = forward(e, &sd, err);
        }
        if (st) return st;
    }
    if (n_out > 0) {
        if (!e->tp) {
            op->download_f32(be, logits, e->logits, (size_t)n_out * Vl);
        } else {
            /* every rank holds [n_out, V/world]; gather and put the columns in order */
            op->download_f32(be, e->lg_local, e->logits, (size_t)n_out * Vl);
            if (comm_all_gather(e->comm, e->lg_all, e->lg_local, (size_t)n_out * Vl, COMM_F32))
                return llmq_err_set(err, e->comm->err.code, "%s", e->comm->err.msg);
            if (logits)
                for (int r = 0; r < sh->world; r++)
                    for (int s = 0; s < n_out; s++)
                        memcpy(logits + (size_t)s * c->vocab_size + (size_t)r * Vl,
                               e->lg_all + ((size_t)r * n_out + s) * Vl, (size_t)Vl * 4);
        }
    }
    return op->sync(be, err);
}

/* Move a plan of `size` entries (already in e->plan on the leader, whose
 * header the peers read from the frame) from rank 0 to every rank: the
 * frame, then whatever does not fit in it. */
static llmq_status broadcast_rest(engine *e, size_t size) {
    if (size <= PLAN_FRAME) return LLMQ_OK;
    return comm_broadcast(e->comm, e->plan + PLAN_FRAME, (size - PLAN_FRAME) * 4, 0);
}

/* Leader: send the step plan to the peers (one broadcast, see PLAN_FRAME). */
static llmq_status send_plan(engine *e, const eng_seq *seqs, int n_seqs, int mb, llmq_err *err) {
    int32_t *p = e->plan;
    size_t k = PLAN_HEADER;
    for (int s = 0; s < n_seqs; s++) {
        p[k++] = seqs[s].n_tokens;
        p[k++] = seqs[s].start_pos;
        p[k++] = seqs[s].n_blocks;
        p[k++] = seqs[s].want_logits;
    }
    for (int s = 0; s < n_seqs; s++) {
        memcpy(p + k, seqs[s].tokens, (size_t)seqs[s].n_tokens * 4);
        k += (size_t)seqs[s].n_tokens;
    }
    for (int s = 0; s < n_seqs; s++) {
        memcpy(p + k, seqs[s].block_table, (size_t)seqs[s].n_blocks * 4);
        k += (size_t)seqs[s].n_blocks;
    }
    p[0] = PLAN_MAGIC;
    p[1] = (int32_t)k;
    p[2] = n_seqs;
    p[3] = mb;
    if (comm_broadcast(e->comm, p, PLAN_FRAME * 4, 0) || broadcast_rest(e, k))
        return llmq_err_set(err, e->comm->err.code, "%s", e->comm->err.msg);
    return LLMQ_OK;
}

llmq_status eng_step(engine *e, const eng_seq *seqs, int n_seqs, float *logits, llmq_err *err) {
    if (e->syn) return synth_step(e->syn, seqs, n_seqs, logits, err);
    int n = 0, n_out = 0, mb = 0;
    llmq_status st = plan_step(e, seqs, n_seqs, &n, &n_out, &mb, err);
    if (st) return st;
    if (e->tp && (st = send_plan(e, seqs, n_seqs, mb, err))) return st;
    return run_step(e, n_seqs, n, n_out, mb, logits, err);
}

llmq_status eng_stop_peers(engine *e, llmq_err *err) {
    if (!e->tp) return LLMQ_OK;
    e->plan[0] = PLAN_MAGIC;
    e->plan[1] = PLAN_STOP;
    if (comm_broadcast(e->comm, e->plan, PLAN_FRAME * 4, 0))
        return llmq_err_set(err, e->comm->err.code, "%s", e->comm->err.msg);
    return LLMQ_OK;
}

llmq_status eng_serve(engine *e, llmq_err *err) {
    if (!e->tp || e->comm->rank == 0)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "eng_serve: only peer ranks of a group serve plans");
    eng_seq *seqs = calloc((size_t)e->opts.max_seqs, sizeof *seqs);
    if (!seqs) return llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory");
    llmq_status st = LLMQ_OK;
    const int saved_timeout = e->comm->timeout_ms;
    const int32_t *p = e->plan;
    for (;;) {
        /* Between steps the leader may idle for as long as it has no work:
         * wait without a deadline (a dead leader is still detected). */
        e->comm->timeout_ms = 0;
        st = comm_broadcast(e->comm, e->plan, PLAN_FRAME * 4, 0);
        e->comm->timeout_ms = saved_timeout;
        if (st) break;
        const int32_t size = p[1];
        if (p[0] != PLAN_MAGIC) {
            st = llmq_err_set(err, LLMQ_ERR_INTERNAL, "peer: malformed step plan");
            break;
        }
        if (size == PLAN_STOP) break;
        if (size < PLAN_HEADER || (size_t)size > e->plan_cap) {
            st = llmq_err_set(err, LLMQ_ERR_INTERNAL, "peer: step plan of %d entries (limit %zu)", size, e->plan_cap);
            break;
        }
        if ((st = broadcast_rest(e, (size_t)size))) break;
        const int ns = p[2];
        if (ns < 1 || ns > e->opts.max_seqs || (size_t)size < PLAN_HEADER + 4 * (size_t)ns) {
            st = llmq_err_set(err, LLMQ_ERR_INTERNAL, "peer: malformed step plan");
            break;
        }
        const int32_t *hs = p + PLAN_HEADER; /* per sequence: n_tokens, start_pos, n_blocks, want_logits */
        size_t k = PLAN_HEADER + 4 * (size_t)ns, tok = k;
        int neg = 0;
        for (int s = 0; s < ns; s++) {
            tok += (size_t)hs[4 * s];
            neg |= hs[4 * s] < 0 || hs[4 * s + 2] < 0;
        }
        if (neg) {
            st = llmq_err_set(err, LLMQ_ERR_INTERNAL, "peer: malformed step plan");
            break;
        }
        size_t bt = tok;
        for (int s = 0; s < ns; s++) {
            seqs[s].n_tokens = hs[4 * s];
            seqs[s].start_pos = hs[4 * s + 1];
            seqs[s].n_blocks = hs[4 * s + 2];
            seqs[s].want_logits = hs[4 * s + 3];
            seqs[s].tokens = p + k;
            k += (size_t)seqs[s].n_tokens;
            seqs[s].block_table = p + bt;
            bt += (size_t)seqs[s].n_blocks;
        }
        if (bt != (size_t)size) {
            st = llmq_err_set(err, LLMQ_ERR_INTERNAL, "peer: step plan sizes disagree");
            break;
        }
        int n = 0, n_out = 0, mb = 0;
        if ((st = plan_step(e, seqs, ns, &n, &n_out, &mb, err))) break;
        if ((st = run_step(e, ns, n, n_out, mb, NULL, err))) break;
    }
    if (st && e->comm->err.code && err && err->code == LLMQ_OK)
        llmq_err_set(err, e->comm->err.code, "%s", e->comm->err.msg);
    free(seqs);
    return st;
}
