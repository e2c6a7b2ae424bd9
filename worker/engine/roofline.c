/* roofline.c — the counting backend, its weightless model and the GPU
 * table (see roofline.h). */
#include "worker/engine/roofline.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>

#include "common/comm.h"
#include "worker/engine/engine.h"
#include "worker/model/model.h"

static const char *const kernel_names[RF_N_KERNELS] = {
    [RF_EMBED] = "embed",           [RF_RMSNORM] = "rmsnorm",       [RF_ADD_RMSNORM] = "add_rmsnorm",
    [RF_LAYERNORM] = "layernorm",   [RF_MM_Q] = "matmul q",         [RF_MM_K] = "matmul k",
    [RF_MM_V] = "matmul v",         [RF_ROPE] = "rope",             [RF_KV_STORE] = "kv_store",
    [RF_ATTENTION] = "attention",   [RF_MM_O] = "matmul o",         [RF_MM_ROUTER] = "matmul router",
    [RF_MOE] = "moe",               [RF_MM_GATE] = "matmul gate",   [RF_MM_UP] = "matmul up",
    [RF_SWIGLU] = "swiglu",         [RF_GELU] = "gelu",             [RF_MM_DOWN] = "matmul down",
    [RF_ADD] = "add",               [RF_ALL_REDUCE] = "all_reduce", [RF_GATHER_ROWS] = "gather_rows",
    [RF_MM_LM_HEAD] = "matmul lm_head",
};

const char *rf_kernel_name(rf_kernel k) { return k >= 0 && k < RF_N_KERNELS ? kernel_names[k] : "?"; }

int rf_kernel_tensor(rf_kernel k) {
    return k == RF_ATTENTION || k == RF_MOE || !strncmp(rf_kernel_name(k), "matmul ", 7);
}

/* What a counted matrix's data points to: a Q8/Q4 descriptor (backend.h's
 * convention; only its group is set) and the kernel its products count as. */
typedef struct rf_wdesc {
    be_qweight qw;
    rf_kernel kind;
} rf_wdesc;

struct rf_run {
    llmq_backend *be;
    model *m;
    engine *eng;
    llmq_comm *host;            /* the engine's group (tp > 1): collectives of host memory, not counted */
    rf_wdesc desc[RF_N_KERNELS];
    rf_opts o;
    double held;                /* weight bytes as held */
    int32_t *bt, *ids;          /* a block table of every block, in order; token ids */
    rf_step *cur;               /* the step being counted (NULL: none) */
};

/* ---------------------------------------------------------------- backend */

/* Buffers are anonymous mappings nobody touches but the engine's uploads of
 * index arrays: a page of header (the length), then the buffer. */
#define RF_HEADER 4096

static void *cb_alloc(llmq_backend *be, size_t bytes) {
    const size_t len = bytes + RF_HEADER;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return NULL;
    *(size_t *)p = len;
    return (char *)p + RF_HEADER;
}
static void cb_free(llmq_backend *be, void *p) {
    if (!p) return;
    char *base = (char *)p - RF_HEADER;
    munmap(base, *(size_t *)base);
}
static void cb_upload(llmq_backend *be, void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
/* Logits (never read by rf_*: the step is run without a host buffer). */
static void cb_download_f32(llmq_backend *be, float *dst, const void *src, size_t n) {
    if (dst) memset(dst, 0, n * sizeof *dst);
}
static void cb_upload_f32(llmq_backend *be, void *dst, const float *src, size_t n) {}
static llmq_status cb_weight_prepare(llmq_backend *be, be_weight *out, const be_weight *in) {
    *out = *in;
    return LLMQ_OK;
}
static void cb_weight_release(llmq_backend *be, be_weight *w) {}
static llmq_status cb_sync(llmq_backend *be, llmq_err *err) { return LLMQ_OK; }
static void cb_destroy(llmq_backend *be) { free(be); }

static rf_count *cnt(llmq_backend *be, rf_kernel k) {
    rf_run *r = be->impl;
    if (!r->cur) return NULL;
    rf_count *c = &r->cur->k[k];
    c->calls++;
    return c;
}
static double es(const llmq_backend *be) { return (double)llmq_dtype_size(be->act_dt); }

/* Bytes of a matrix as held. */
static double mat_bytes(const be_weight *w) {
    if (llmq_dtype_is_quant(w->dt)) {
        const be_qweight *q = w->data;
        return (double)llmq_quant_bytes(w->dt == LLMQ_Q8 ? LLMQ_QUANT_INT8 : LLMQ_QUANT_INT4, (size_t)w->rows,
                                        (size_t)w->cols, q->group);
    }
    return (double)w->rows * w->cols * llmq_dtype_size(w->dt);
}

static void cb_embed(llmq_backend *be, void *out, const be_weight *table, const int32_t *ids, int n) {
    rf_count *c = cnt(be, RF_EMBED);
    if (!c) return;
    int rows = 0; /* ids outside this rank's shard give a zero row: nothing read */
    for (int i = 0; i < n; i++) rows += ids[i] >= 0 && ids[i] < table->rows;
    c->weight_bytes += (double)rows * table->cols * llmq_dtype_size(table->dt);
    c->act_bytes += (double)n * table->cols * es(be);
}

static void cb_rmsnorm(llmq_backend *be, void *out, const void *x, const float *w, int n, int dim, float eps) {
    rf_count *c = cnt(be, RF_RMSNORM);
    if (!c) return;
    c->weight_bytes += (double)dim * 4;
    c->act_bytes += 2.0 * n * dim * es(be);
}

static void cb_add_rmsnorm(llmq_backend *be, void *out, void *x, const void *delta, const float *w, int n, int dim,
                           float eps) {
    rf_count *c = cnt(be, RF_ADD_RMSNORM);
    if (!c) return;
    c->weight_bytes += (double)dim * 4;
    c->act_bytes += 4.0 * n * dim * es(be);
}

static void cb_matmul(llmq_backend *be, void *out, const void *x, const be_weight *w, const float *bias, int n) {
    const rf_wdesc *d = w->data;
    rf_count *c = cnt(be, d->kind == RF_EMBED ? RF_MM_LM_HEAD : d->kind); /* tied: the table is the lm_head */
    if (!c) return;
    c->weight_bytes += mat_bytes(w) + (bias ? (double)w->rows * 4 : 0);
    c->act_bytes += (double)n * (w->cols + w->rows) * es(be);
    c->flops += 2.0 * n * w->rows * w->cols;
}

static void cb_rope(llmq_backend *be, void *q, void *k, const int32_t *positions, int n, int n_heads, int n_kv_heads,
                    int head_dim, const float *inv_freq) {
    rf_count *c = cnt(be, RF_ROPE);
    if (c) c->act_bytes += 2.0 * n * (n_heads + n_kv_heads) * head_dim * es(be);
}

static void cb_kv_store(llmq_backend *be, void *k_cache, void *v_cache, const void *k, const void *v,
                        const int32_t *slots, int n, int kv_dim) {
    rf_count *c = cnt(be, RF_KV_STORE);
    if (!c) return;
    c->act_bytes += 2.0 * n * kv_dim * es(be);
    c->kv_bytes += 2.0 * n * kv_dim * llmq_dtype_size(be->kv_dt);
}

/* The first position token at pos attends (window 0: all). */
static int first_pos(int pos, int window) { return window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0; }

static void cb_attention(llmq_backend *be, void *out, const void *q, const void *k_cache, const void *v_cache,
                         const be_attn_step *st, const be_attn_shape *sh) {
    rf_count *c = cnt(be, RF_ATTENTION);
    if (!c) return;
    const double qd = (double)sh->n_heads * sh->head_dim, kvd = (double)sh->n_kv_heads * sh->head_dim;
    c->act_bytes += 2.0 * st->n_tokens * qd * es(be);
    for (int s = 0; s < st->n_seqs; s++) {
        const int t0 = st->tok_start[s], t1 = st->tok_start[s + 1];
        if (t1 <= t0) continue;
        int lo = st->positions[t0], hi = st->positions[t0];
        for (int t = t0; t < t1; t++) {
            const int p = st->positions[t], f = first_pos(p, sh->window);
            lo = f < lo ? f : lo;
            hi = p > hi ? p : hi;
            c->flops += 4.0 * sh->head_dim * sh->n_heads * (p - f + 1);
        }
        c->kv_bytes += 2.0 * (hi - lo + 1) * kvd * llmq_dtype_size(be->kv_dt);
    }
}

static void cb_swiglu(llmq_backend *be, void *out, const void *gate, const void *up, int n, int dim) {
    rf_count *c = cnt(be, RF_SWIGLU);
    if (c) c->act_bytes += 3.0 * n * dim * es(be);
}

static void cb_gather_rows(llmq_backend *be, void *dst, const void *src, const int32_t *rows, int n, int dim) {
    rf_count *c = cnt(be, RF_GATHER_ROWS);
    if (c) c->act_bytes += 2.0 * n * dim * es(be);
}

static void cb_add(llmq_backend *be, void *x, const void *y, size_t n) {
    rf_count *c = cnt(be, RF_ADD);
    if (c) c->act_bytes += 3.0 * (double)n * es(be);
}

static void cb_layernorm(llmq_backend *be, void *out, const void *x, const float *w, const float *b, int n, int dim,
                         float eps) {
    rf_count *c = cnt(be, RF_LAYERNORM);
    if (!c) return;
    c->weight_bytes += (double)dim * 4 * (b ? 2 : 1);
    c->act_bytes += 2.0 * n * dim * es(be);
}

static void cb_gelu(llmq_backend *be, void *out, const void *x, size_t n) {
    rf_count *c = cnt(be, RF_GELU);
    if (c) c->act_bytes += 2.0 * (double)n * es(be);
}

static void cb_moe(llmq_backend *be, void *out, const void *x, const void *router_logits, const be_moe *moe, int n,
                   const be_moe_scratch *ws) {
    rf_count *c = cnt(be, RF_MOE);
    if (!c) return;
    const int E = moe->n_experts, k = moe->top_k, used = (double)n * k < E ? n * k : E;
    const double d = moe->w1[0].cols, I = moe->w1[0].rows;
    for (int e = 0; e < used; e++) c->weight_bytes += mat_bytes(&moe->w1[e]) + mat_bytes(&moe->w3[e]) + mat_bytes(&moe->w2[e]);
    c->act_bytes += (double)n * (2 * d + E + 4.0 * k * I) * es(be);
    c->flops += 6.0 * n * k * d * I;
}

/* ---------------------------------------------------------------- communicators */

/* A group of `world` ranks of which this process is rank 0 and the others
 * never exist: every collective returns at once.  The device one (the
 * backend's group_comm, whose impl is the rf_run) counts each all-reduce. */
static llmq_status cc_all_reduce_sum(llmq_comm *c, void *buf, size_t count, comm_dtype dt) {
    rf_run *r = c->impl;
    rf_count *k = r ? cnt(r->be, RF_ALL_REDUCE) : NULL;
    if (k) k->link_bytes += 2.0 * (c->world - 1) / c->world * (double)count * comm_dtype_size(dt);
    return LLMQ_OK;
}
static llmq_status cc_all_gather(llmq_comm *c, void *recv, const void *send, size_t count, comm_dtype dt) {
    return LLMQ_OK;
}
static llmq_status cc_broadcast(llmq_comm *c, void *buf, size_t bytes, int root) { return LLMQ_OK; }
static llmq_status cc_barrier(llmq_comm *c) { return LLMQ_OK; }
static void cc_abort(llmq_comm *c, const char *reason) {}
static void cc_destroy(llmq_comm *c) { free(c); }

static const comm_ops count_comm_ops = {
    .name = "count",
    .all_reduce_sum = cc_all_reduce_sum,
    .all_gather = cc_all_gather,
    .broadcast = cc_broadcast,
    .barrier = cc_barrier,
    .abort = cc_abort,
    .destroy = cc_destroy,
};

static llmq_comm *count_comm(int world, rf_run *r) {
    llmq_comm *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->ops = &count_comm_ops;
    c->world = world;
    c->device_mem = 1;
    c->impl = r;
    return c;
}

static llmq_comm *cb_group_comm(llmq_backend *be, llmq_comm *host, size_t max_reduce, llmq_err *err) {
    llmq_comm *c = count_comm(host->world, be->impl);
    if (!c) llmq_err_set(err, LLMQ_ERR_NOMEM, "roofline: out of memory");
    return c;
}

static const be_ops count_ops = {
    .name = "count",
    .alloc = cb_alloc,
    .free = cb_free,
    .upload = cb_upload,
    .download_f32 = cb_download_f32,
    .upload_f32 = cb_upload_f32,
    .weight_prepare = cb_weight_prepare,
    .weight_release = cb_weight_release,
    .sync = cb_sync,
    .embed = cb_embed,
    .rmsnorm = cb_rmsnorm,
    .add_rmsnorm = cb_add_rmsnorm,
    .matmul = cb_matmul,
    .rope = cb_rope,
    .kv_store = cb_kv_store,
    .attention = cb_attention,
    .swiglu = cb_swiglu,
    .gather_rows = cb_gather_rows,
    .add = cb_add,
    .layernorm = cb_layernorm,
    .gelu = cb_gelu,
    .moe = cb_moe,
    .group_comm = cb_group_comm,
    .destroy = cb_destroy,
    .kv_dtypes = 0, /* the cache in the activation type, as on the CUDA backend */
};

/* ---------------------------------------------------------------- the weightless model */

/* A matrix of kind k, [rows, cols], as held: quantized when asked (the
 * embedding and the router never are, as in model.c). */
static be_weight mat(rf_run *r, rf_kernel k, int rows, int cols, int quantized) {
    const llmq_dtype dt = !quantized || r->o.quant == LLMQ_QUANT_NONE ? r->o.wdt
                          : r->o.quant == LLMQ_QUANT_INT8            ? LLMQ_Q8
                                                                     : LLMQ_Q4;
    be_weight w = {&r->desc[k], dt, rows, cols, cols};
    r->held += mat_bytes(&w);
    return w;
}

/* An F32 vector of n values (norm weights, biases), counted as held. */
static float *vec(rf_run *r, int n, int *ok) {
    float *v = r->be->ops->alloc(r->be, (size_t)n * 4);
    *ok = *ok && v;
    r->held += (double)n * 4;
    return v;
}

static llmq_status build_model(rf_run *r, const model_config *cfg, llmq_err *err) {
    model *m = calloc(1, sizeof *m);
    if (!m) return llmq_err_set(err, LLMQ_ERR_NOMEM, "roofline: out of memory");
    r->m = m;
    m->cfg = *cfg;
    m->be = r->be;
    m->wdt = r->o.wdt;
    llmq_status st = model_shard_plan(&m->shard, cfg, 0, r->o.tp, err);
    if (st) return st;
    const model_shard *sh = &m->shard;
    const int d = cfg->hidden_size, hd = cfg->head_dim, qd = sh->n_heads * hd, kvd = sh->n_kv_heads * hd;
    const int I = sh->inter, E = cfg->n_experts, falcon = cfg->arch == ARCH_FALCON;
    int ok = 1;
    m->embed = mat(r, RF_EMBED, sh->vocab, d, 0);
    if (cfg->tie_word_embeddings && r->o.quant == LLMQ_QUANT_NONE)
        m->lm_head = m->embed; /* one table, read by embed and by the lm_head matmul */
    else
        m->lm_head = mat(r, RF_MM_LM_HEAD, sh->vocab, d, 1);
    m->final_norm = vec(r, d, &ok);
    if (falcon) m->final_norm_b = vec(r, d, &ok);
    m->layers = calloc((size_t)cfg->n_layers, sizeof *m->layers);
    if (!m->layers) return llmq_err_set(err, LLMQ_ERR_NOMEM, "roofline: out of memory");
    for (int l = 0; ok && l < cfg->n_layers; l++) {
        model_layer *ly = &m->layers[l];
        ly->attn_norm = vec(r, d, &ok);
        if (falcon) ly->attn_norm_b = vec(r, d, &ok);
        if (!falcon || cfg->two_ln || !cfg->parallel_attn) { /* Falcon: ln_mlp, or the sequential one */
            ly->mlp_norm = vec(r, d, &ok);
            if (falcon) ly->mlp_norm_b = vec(r, d, &ok);
        }
        ly->wq = mat(r, RF_MM_Q, qd, d, 1);
        ly->wk = mat(r, RF_MM_K, kvd, d, 1);
        ly->wv = mat(r, RF_MM_V, kvd, d, 1);
        ly->wo = mat(r, RF_MM_O, d, qd, 1);
        if (cfg->qkv_bias) {
            ly->bq = vec(r, qd, &ok);
            ly->bk = vec(r, kvd, &ok);
            ly->bv = vec(r, kvd, &ok);
        }
        /* row-parallel biases are added on rank 0 (the one counted) */
        if (cfg->o_bias || (falcon && cfg->qkv_bias)) ly->bo = vec(r, d, &ok);
        if (E > 0) {
            ly->router = mat(r, RF_MM_ROUTER, E, d, 0);
            if (!(ly->experts = calloc((size_t)3 * E, sizeof *ly->experts)))
                return llmq_err_set(err, LLMQ_ERR_NOMEM, "roofline: out of memory");
            for (int x = 0; x < E; x++) {
                ly->experts[x] = mat(r, RF_MOE, I, d, 1);
                ly->experts[E + x] = mat(r, RF_MOE, I, d, 1);
                ly->experts[2 * E + x] = mat(r, RF_MOE, d, I, 1);
            }
            ly->moe = (be_moe){E, cfg->top_k, ly->experts, ly->experts + E, ly->experts + 2 * E};
            continue;
        }
        if (!falcon) ly->w_gate = mat(r, RF_MM_GATE, I, d, 1);
        ly->w_up = mat(r, RF_MM_UP, I, d, 1);
        ly->w_down = mat(r, RF_MM_DOWN, d, I, 1);
        if (cfg->mlp_bias || (falcon && cfg->qkv_bias)) {
            if (!falcon) ly->b_gate = vec(r, I, &ok);
            ly->b_up = vec(r, I, &ok);
            ly->b_down = vec(r, d, &ok);
        }
    }
    return ok ? LLMQ_OK : llmq_err_set(err, LLMQ_ERR_NOMEM, "roofline: out of address space");
}

/* ---------------------------------------------------------------- runs */

llmq_status rf_create(rf_run **out, const model_config *cfg, const rf_opts *o, llmq_err *err) {
    *out = NULL;
    if ((o->act_dt != LLMQ_BF16 && o->act_dt != LLMQ_F16) || o->max_tokens < 1 || o->max_seqs < 1 ||
        o->max_context < 1)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "roofline: activations in bf16 or f16, and step limits >= 1");
    rf_run *r = calloc(1, sizeof *r);
    llmq_backend *be = calloc(1, sizeof *be);
    if (!r || !be) {
        free(r);
        free(be);
        return llmq_err_set(err, LLMQ_ERR_NOMEM, "roofline: out of memory");
    }
    r->o = *o;
    if (r->o.tp < 1) r->o.tp = 1;
    if (r->o.q4_group <= 0) r->o.q4_group = LLMQ_Q4_GROUP;
    for (int k = 0; k < RF_N_KERNELS; k++) r->desc[k] = (rf_wdesc){{NULL, NULL, NULL, r->o.q4_group}, (rf_kernel)k};
    be->ops = &count_ops;
    be->act_dt = be->kv_dt = o->act_dt;
    be->impl = r;
    r->be = be;
    const int T = o->max_tokens > o->max_seqs ? o->max_tokens : o->max_seqs;
    const int ctx = o->max_context > T ? o->max_context : T;
    const int nb = (ctx + ENG_BLOCK_SIZE - 1) / ENG_BLOCK_SIZE;
    llmq_status st = build_model(r, cfg, err);
    if (!st && !((r->bt = malloc((size_t)nb * sizeof *r->bt)) && (r->ids = malloc((size_t)T * sizeof *r->ids))))
        st = llmq_err_set(err, LLMQ_ERR_NOMEM, "roofline: out of memory");
    if (!st && r->o.tp > 1 && !(r->host = count_comm(r->o.tp, NULL)))
        st = llmq_err_set(err, LLMQ_ERR_NOMEM, "roofline: out of memory");
    if (!st) {
        for (int b = 0; b < nb; b++) r->bt[b] = b;
        for (int i = 0; i < T; i++) r->ids[i] = (int32_t)((i * 7919LL + 1) % cfg->vocab_size);
        /* every sequence of a decode shares one block table: the counts
         * depend on positions, not on which blocks hold them */
        const eng_opts eo = {.n_blocks = nb, .max_tokens = T, .max_seqs = o->max_seqs, .comm = r->host};
        st = eng_create(&r->eng, r->m, &eo, err);
    }
    if (st) {
        rf_destroy(r);
        return st;
    }
    *out = r;
    return LLMQ_OK;
}

void rf_destroy(rf_run *r) {
    if (!r) return;
    eng_destroy(r->eng);
    model_destroy(r->m);
    comm_destroy(r->host);
    llmq_backend_destroy(r->be);
    free(r->bt);
    free(r->ids);
    free(r);
}

double rf_weight_bytes_held(const rf_run *r) { return r->held; }

static llmq_status run(rf_run *r, const eng_seq *seqs, int n_seqs, int tokens, rf_step *out, llmq_err *err) {
    memset(out, 0, sizeof *out);
    out->tokens = tokens;
    r->cur = out;
    llmq_status st = eng_step(r->eng, seqs, n_seqs, NULL, err);
    r->cur = NULL;
    return st;
}

llmq_status rf_decode(rf_run *r, int batch, int context, rf_step *out, llmq_err *err) {
    if (batch < 1 || batch > r->o.max_seqs || context < 1 || context > r->o.max_context ||
        context > r->m->cfg.max_position_embeddings)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "roofline: decode of %d sequences at context %d (limits %d, %d)",
                            batch, context, r->o.max_seqs,
                            r->o.max_context < r->m->cfg.max_position_embeddings ? r->o.max_context
                                                                                  : r->m->cfg.max_position_embeddings);
    eng_seq *seqs = calloc((size_t)batch, sizeof *seqs);
    if (!seqs) return llmq_err_set(err, LLMQ_ERR_NOMEM, "roofline: out of memory");
    for (int s = 0; s < batch; s++)
        seqs[s] = (eng_seq){r->ids + s, 1, context - 1, r->bt, (context + ENG_BLOCK_SIZE - 1) / ENG_BLOCK_SIZE, 1};
    llmq_status st = run(r, seqs, batch, batch, out, err);
    free(seqs);
    return st;
}

llmq_status rf_prefill(rf_run *r, int tokens, rf_step *out, llmq_err *err) {
    if (tokens < 1 || tokens > r->o.max_tokens || tokens > r->m->cfg.max_position_embeddings)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "roofline: a prefill of %d tokens (limit %d, context %d)", tokens,
                            r->o.max_tokens, r->m->cfg.max_position_embeddings);
    const eng_seq q = {r->ids, tokens, 0, r->bt, (tokens + ENG_BLOCK_SIZE - 1) / ENG_BLOCK_SIZE, 1};
    return run(r, &q, 1, tokens, out, err);
}

/* ---------------------------------------------------------------- GPUs */

/* Vendor data sheets, dense (no structured sparsity) tensor-core peaks:
 *  H100 SXM5: NVIDIA H100 Tensor Core GPU data sheet: 3.35 TB/s HBM3; BF16
 *    and FP16 1,979 TFLOPS "with sparsity", so 989 dense; NVLink 900 GB/s
 *    (both directions together), 450 GB/s each way.
 *  A10G (AWS EC2 G5): NVIDIA publishes no A10G sheet.  Memory as the A10's
 *    data sheet (24 GB GDDR6, 600 GB/s); tensor cores not: the A10 sheet's
 *    125 TFLOPS BF16/FP16 dense is for 72 SMs at the full FP32-accumulate
 *    rate, while the A10G (80 SMs, 1710 MHz, FP32 35 TFLOPS) has GA102's
 *    half rate, 70 TFLOPS, as AWS's figures quoted in Baseten's "NVIDIA A10
 *    vs A10G for ML model inference" say.  PCIe 4.0 x16: 32 GB/s each way.
 *  T4: NVIDIA T4 data sheet: 320 GB/s GDDR6; mixed precision (FP16 inputs,
 *    FP32 accumulation) 65 TFLOPS; no BF16 tensor cores (sm_75); PCIe 3.0
 *    x16, "32 GB/s" both directions together: 16 GB/s each way. */
static const rf_gpu gpus[] = {
    {"H100", "H100 SXM5 80G", 3350, 989, 989, 450, "NVLink 4"},
    {"A10G", "A10G 24G", 600, 70, 70, 32, "PCIe 4.0 x16"},
    {"T4", "T4 16G", 320, 0, 65, 16, "PCIe 3.0 x16"},
};

const rf_gpu *rf_gpus(int *n) {
    *n = (int)(sizeof gpus / sizeof gpus[0]);
    return gpus;
}

const rf_gpu *rf_gpu_find(const char *name) {
    for (size_t i = 0; name && i < sizeof gpus / sizeof gpus[0]; i++)
        if (!strcasecmp(name, gpus[i].name)) return &gpus[i];
    return NULL;
}

double rf_time(const rf_count *c, const rf_gpu *g, llmq_dtype act_dt) {
    const double peak = (act_dt == LLMQ_BF16 ? g->bf16_tflops : g->f16_tflops) * 1e12;
    const double tm = rf_bytes(c) / (g->hbm_gbs * 1e9), tf = peak > 0 ? c->flops / peak : 0;
    return (tm > tf ? tm : tf) + (c->link_bytes > 0 ? c->link_bytes / (g->link_gbs * 1e9) : 0);
}
