/*
 * model.c — build a model from a Hugging Face directory (see model.h).
 *
 * Validation order: config first (architecture, shapes), then every tensor
 * the architecture needs, with its exact shape, before anything is handed
 * to the backend; so a bad directory fails fast with one clear message.
 */
#include "worker/model/model.h"

#include "kernels/dtype.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

typedef struct loader {
    model *m;
    const char *dir;
    llmq_err *err;
} loader;

/* Flag of load_matrix: a linear layer, quantized when the options say so. */
enum { LM_QUANT = 1 };

/* Give the pages wholly inside [p, p + bytes) of a read-only file mapping
 * back to the page cache: a quantized source is not read again (and a later
 * read, such as an embedding lookup of a tied table, faults its page back in
 * from the file, so this is always safe). */
static void drop_pages(const void *p, size_t bytes) {
    const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t a = ((uintptr_t)p + pg - 1) & ~(pg - 1), b = ((uintptr_t)p + bytes) & ~(pg - 1);
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

/* Room for one more block in the model's owned list (-1 and err when none). */
static int own_reserve(loader *L, const char *name) {
    model *m = L->m;
    if (m->n_owned < m->cap_owned) return 0;
    int cap = m->cap_owned ? 2 * m->cap_owned : 64;
    void **g = realloc(m->owned, (size_t)cap * sizeof *g);
    if (!g) return llmq_err_set(L->err, LLMQ_ERR_NOMEM, "%s: out of memory loading \"%s\"", L->dir, name), -1;
    m->owned = g;
    m->cap_owned = cap;
    return 0;
}

/* Free the owned block b (the last ones are searched first). */
static void own_drop(model *m, void *b) {
    for (int i = m->n_owned - 1; i >= 0; i--)
        if (m->owned[i] == b) {
            free(b);
            m->owned[i] = m->owned[--m->n_owned];
            return;
        }
}

/* Quantize the view *in into a block the model owns; *q describes it. */
static int quantize_owned(loader *L, be_weight *q, const be_weight *in, const char *name) {
    model *m = L->m;
    if (own_reserve(L, name)) return -1;
    void *block = NULL;
    llmq_err qe = {0};
    if (llmq_quantize(q, &block, in, m->lo.quant, m->lo.q4_group, &qe)) {
        llmq_err_set(L->err, qe.code, "%s: tensor \"%s\": %s", L->dir, name, qe.msg);
        return -1;
    }
    m->owned[m->n_owned++] = block;
    drop_pages(in->data, ((size_t)(in->rows - 1) * be_weight_ld(in) + (size_t)in->cols) * llmq_dtype_size(in->dt));
    return 0;
}

static const st_tensor *want(loader *L, const char *name, int rows, int cols) {
    const st_tensor *t = st_find(L->m->st, name);
    if (!t) {
        llmq_err_set(L->err, LLMQ_ERR_FORMAT, "%s: tensor \"%s\" is missing", L->dir, name);
        return NULL;
    }
    const char *file = st_file_path(L->m->st, t->file);
    if (!t->dtype_known) {
        llmq_err_set(L->err, LLMQ_ERR_UNSUPPORTED, "%s: tensor \"%s\" has dtype %s (supported: F32, F16, BF16)",
                     file, name, t->dtype_name);
        return NULL;
    }
    int ok = cols > 0 ? (t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols)
                      : (t->ndim == 1 && t->shape[0] == rows);
    if (!ok) {
        char got[96] = "";
        size_t len = 0;
        for (int d = 0; d < t->ndim && len < sizeof got - 24; d++)
            len += (size_t)snprintf(got + len, sizeof got - len, d ? ", %lld" : "%lld", (long long)t->shape[d]);
        if (cols > 0)
            llmq_err_set(L->err, LLMQ_ERR_FORMAT, "%s: tensor \"%s\" has shape [%s], expected [%d, %d]", file, name,
                         got, rows, cols);
        else
            llmq_err_set(L->err, LLMQ_ERR_FORMAT, "%s: tensor \"%s\" has shape [%s], expected [%d]", file, name, got,
                         rows);
        return NULL;
    }
    return t;
}

/* Which part of a tensor this rank takes. */
typedef enum { PART_ALL = 0, PART_ROWS, PART_COLS } part_kind;

/* Hand the matrix *in to the backend as *w: quantized first (a copy the
 * model owns) when it is a linear layer (LM_QUANT) under quantization; a
 * quantized copy the backend copied in turn is dropped. */
static int prepare_matrix(loader *L, be_weight *w, const be_weight *in, const char *name, int flags) {
    model *m = L->m;
    be_weight use = *in;
    size_t bytes = (size_t)in->rows * in->cols * llmq_dtype_size(in->dt);
    if ((flags & LM_QUANT) && m->lo.quant != LLMQ_QUANT_NONE) {
        if (quantize_owned(L, &use, in, name)) return -1;
        bytes = llmq_quant_bytes(m->lo.quant, (size_t)in->rows, (size_t)in->cols, m->lo.q4_group);
    }
    if (m->be->ops->weight_prepare(m->be, w, &use)) {
        llmq_err_set(L->err, LLMQ_ERR_BACKEND, "%s: backend cannot hold tensor \"%s\": %s", L->dir, name,
                     m->be->err.msg);
        return -1;
    }
    if (use.data != in->data && w->data != use.data) own_drop(m, (void *)use.data); /* the backend copied it */
    m->weight_bytes += bytes;
    return 0;
}

/* Load a [rows, cols] matrix, or the slice [off, off + n) of its rows
 * (PART_ROWS) or columns (PART_COLS), as a view into the mapping — or, for
 * a linear layer (LM_QUANT) under quantization, as a quantized copy. */
static int load_matrix(loader *L, be_weight *w, const char *name, int rows, int cols, part_kind part, int off,
                       int n, int flags) {
    const st_tensor *t = want(L, name, rows, cols);
    if (!t) return -1;
    const size_t es = llmq_dtype_size(t->dt);
    be_weight in = {t->data, t->dt, rows, cols, cols};
    if (part == PART_ROWS) {
        in.data = (const char *)t->data + (size_t)off * cols * es;
        in.rows = n;
    } else if (part == PART_COLS) {
        in.data = (const char *)t->data + (size_t)off * es;
        in.cols = n;
    }
    return prepare_matrix(L, w, &in, name, flags);
}

/* Rows of `name` ([rows, cols]) gathered into a new matrix this model owns:
 * n_runs runs of run_len rows, run r starting at row starts[r] (Falcon's
 * fused query_key_value split into this rank's q, k or v).  Then as
 * load_matrix: quantized when the options say so, prepared for the backend. */
static int load_rows_gathered(loader *L, be_weight *w, const char *name, int rows, int cols, const int *starts,
                              int n_runs, int run_len) {
    model *m = L->m;
    const st_tensor *t = want(L, name, rows, cols);
    if (!t) return -1;
    const size_t rb = (size_t)cols * llmq_dtype_size(t->dt);
    if (own_reserve(L, name)) return -1;
    unsigned char *block = malloc((size_t)n_runs * run_len * rb);
    if (!block) return llmq_err_set(L->err, LLMQ_ERR_NOMEM, "%s: out of memory splitting \"%s\"", L->dir, name), -1;
    for (int r = 0; r < n_runs; r++)
        memcpy(block + (size_t)r * run_len * rb, (const unsigned char *)t->data + (size_t)starts[r] * rb,
               (size_t)run_len * rb);
    m->owned[m->n_owned++] = block;
    be_weight in = {block, t->dt, n_runs * run_len, cols, cols};
    if (prepare_matrix(L, w, &in, name, LM_QUANT)) return -1;
    if (w->data != block) own_drop(m, block); /* quantized, or copied by the backend: the split is not needed */
    return 0;
}

/* F32 backend buffer of the gathered runs of a vector (Falcon's fused qkv bias). */
static int load_vector_gathered(loader *L, float **out, const char *name, int n_full, const int *starts, int n_runs,
                                int run_len) {
    const st_tensor *t = want(L, name, n_full, 0);
    if (!t) return -1;
    const int n = n_runs * run_len;
    float *host = malloc((size_t)n * sizeof(float));
    float *dev = L->m->be->ops->alloc(L->m->be, (size_t)n * sizeof(float));
    if (!host || !dev) {
        free(host);
        L->m->be->ops->free(L->m->be, dev);
        return llmq_err_set(L->err, LLMQ_ERR_NOMEM, "%s: out of memory loading \"%s\"", L->dir, name), -1;
    }
    for (int r = 0; r < n_runs; r++)
        for (int i = 0; i < run_len; i++) {
            const size_t src = (size_t)starts[r] + (size_t)i;
            float *dst = &host[(size_t)r * run_len + i];
            uint16_t h;
            if (t->dt == LLMQ_F32) {
                memcpy(dst, (const float *)t->data + src, 4);
            } else {
                memcpy(&h, (const uint16_t *)t->data + src, 2);
                *dst = t->dt == LLMQ_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
            }
        }
    L->m->be->ops->upload(L->m->be, dev, host, (size_t)n * sizeof(float));
    free(host);
    L->m->weight_bytes += (size_t)n * llmq_dtype_size(t->dt);
    *out = dev;
    return 0;
}

/* A vector of n_full elements, or its slice [off, off + n), converted to F32
 * in a backend buffer. */
static int load_vector_part(loader *L, float **out, const char *name, int n_full, int off, int n) {
    return load_vector_gathered(L, out, name, n_full, &off, 1, n);
}

static int load_vector(loader *L, float **out, const char *name, int n) {
    return load_vector_part(L, out, name, n, 0, n);
}

/* Mixtral's MLP of layer i: the router whole on every rank (each routes
 * all of its tokens), every expert cut as a dense MLP is (vLLM's split). */
static int load_experts(loader *L, int i) {
    const model_config *c = &L->m->cfg;
    const model_shard *sh = &L->m->shard;
    model_layer *ly = &L->m->layers[i];
    const int d = c->hidden_size, I = c->intermediate_size, E = c->n_experts;
    char n[160];
    snprintf(n, sizeof n, "model.layers.%d.block_sparse_moe.gate.weight", i);
    if (load_matrix(L, &ly->router, n, E, d, PART_ALL, 0, 0, 0)) return -1;
    if (!(ly->experts = calloc((size_t)3 * E, sizeof *ly->experts)))
        return llmq_err_set(L->err, LLMQ_ERR_NOMEM, "%s: out of memory", L->dir), -1;
    for (int j = 0; j < E; j++) {
#define NAME(w) (snprintf(n, sizeof n, "model.layers.%d.block_sparse_moe.experts.%d.%s.weight", i, j, w), n)
        if (load_matrix(L, &ly->experts[j], NAME("w1"), I, d, PART_ROWS, sh->inter0, sh->inter, LM_QUANT) ||
            load_matrix(L, &ly->experts[E + j], NAME("w3"), I, d, PART_ROWS, sh->inter0, sh->inter, LM_QUANT) ||
            load_matrix(L, &ly->experts[2 * E + j], NAME("w2"), d, I, PART_COLS, sh->inter0, sh->inter, LM_QUANT))
            return -1;
#undef NAME
    }
    ly->moe = (be_moe){E, c->top_k, ly->experts, ly->experts + E, ly->experts + 2 * E};
    return 0;
}

static int load_layer(loader *L, int i) {
    const model_config *c = &L->m->cfg;
    const model_shard *sh = &L->m->shard;
    model_layer *ly = &L->m->layers[i];
    const int d = c->hidden_size, hd = c->head_dim, qd = c->n_heads * hd, kvd = c->n_kv_heads * hd;
    const int I = c->intermediate_size;
    const int q0 = sh->head0 * hd, nq = sh->n_heads * hd, k0 = sh->kv_head0 * hd, nk = sh->n_kv_heads * hd;
    const int lead = sh->rank == 0; /* row-parallel biases are added once, by rank 0 */
    char n[160];
#define NAME(suffix) (snprintf(n, sizeof n, "model.layers.%d.%s", i, suffix), n)
    if (load_vector(L, &ly->attn_norm, NAME("input_layernorm.weight"), d) ||
        load_vector(L, &ly->mlp_norm, NAME("post_attention_layernorm.weight"), d) ||
        load_matrix(L, &ly->wq, NAME("self_attn.q_proj.weight"), qd, d, PART_ROWS, q0, nq, LM_QUANT) ||
        load_matrix(L, &ly->wk, NAME("self_attn.k_proj.weight"), kvd, d, PART_ROWS, k0, nk, LM_QUANT) ||
        load_matrix(L, &ly->wv, NAME("self_attn.v_proj.weight"), kvd, d, PART_ROWS, k0, nk, LM_QUANT) ||
        load_matrix(L, &ly->wo, NAME("self_attn.o_proj.weight"), d, qd, PART_COLS, q0, nq, LM_QUANT))
        return -1;
    if (c->n_experts > 0) {
        if (load_experts(L, i)) return -1;
    } else if (load_matrix(L, &ly->w_gate, NAME("mlp.gate_proj.weight"), I, d, PART_ROWS, sh->inter0, sh->inter,
                           LM_QUANT) ||
               load_matrix(L, &ly->w_up, NAME("mlp.up_proj.weight"), I, d, PART_ROWS, sh->inter0, sh->inter,
                           LM_QUANT) ||
               load_matrix(L, &ly->w_down, NAME("mlp.down_proj.weight"), d, I, PART_COLS, sh->inter0, sh->inter,
                           LM_QUANT)) {
        return -1;
    }
    if (c->qkv_bias && (load_vector_part(L, &ly->bq, NAME("self_attn.q_proj.bias"), qd, q0, nq) ||
                        load_vector_part(L, &ly->bk, NAME("self_attn.k_proj.bias"), kvd, k0, nk) ||
                        load_vector_part(L, &ly->bv, NAME("self_attn.v_proj.bias"), kvd, k0, nk)))
        return -1;
    if (c->o_bias && lead && load_vector(L, &ly->bo, NAME("self_attn.o_proj.bias"), d)) return -1;
    if (c->mlp_bias &&
        (load_vector_part(L, &ly->b_gate, NAME("mlp.gate_proj.bias"), I, sh->inter0, sh->inter) ||
         load_vector_part(L, &ly->b_up, NAME("mlp.up_proj.bias"), I, sh->inter0, sh->inter) ||
         (lead && load_vector(L, &ly->b_down, NAME("mlp.down_proj.bias"), d))))
        return -1;
#undef NAME
    return 0;
}

/* The first row of query head h, key head g or value head g (which = 0, 1,
 * 2) in Falcon's fused query_key_value matrix. */
static int qkv_row(const model_config *c, int which, int h) {
    const int hd = c->head_dim, qpk = c->n_heads / c->n_kv_heads;
    switch (c->qkv) {
    case QKV_GROUPED: /* per KV group: its qpk query heads, its k, its v */
        return which == 0 ? ((h / qpk) * (qpk + 2) + h % qpk) * hd : (h * (qpk + 2) + qpk + which - 1) * hd;
    case QKV_MULTI_QUERY: /* all query heads, the k, the v */
        return which == 0 ? h * hd : (c->n_heads + which - 1) * hd;
    default: /* QKV_INTERLEAVED: per head q, k, v */
        return (h * 3 + which) * hd;
    }
}

static int load_falcon_layer(loader *L, int i) {
    const model_config *c = &L->m->cfg;
    const model_shard *sh = &L->m->shard;
    model_layer *ly = &L->m->layers[i];
    const int d = c->hidden_size, hd = c->head_dim, I = c->intermediate_size;
    const int fused = (c->n_heads + 2 * c->n_kv_heads) * hd;
    const int q0 = sh->head0 * hd, nq = sh->n_heads * hd;
    const int lead = sh->rank == 0;
    int qs[512], ks[512], vs[512];
    if (sh->n_heads > 512 || sh->n_kv_heads > 512)
        return llmq_err_set(L->err, LLMQ_ERR_UNSUPPORTED, "%s: more than 512 heads on a rank", L->dir), -1;
    for (int h = 0; h < sh->n_heads; h++) qs[h] = qkv_row(c, 0, sh->head0 + h);
    for (int g = 0; g < sh->n_kv_heads; g++) {
        ks[g] = qkv_row(c, 1, sh->kv_head0 + g);
        vs[g] = qkv_row(c, 2, sh->kv_head0 + g);
    }
    char n[160];
#define NAME(suffix) (snprintf(n, sizeof n, "transformer.h.%d.%s", i, suffix), n)
    const char *ln1 = c->two_ln ? "ln_attn" : "input_layernorm";
    char w1[64], b1[64];
    snprintf(w1, sizeof w1, "%s.weight", ln1);
    snprintf(b1, sizeof b1, "%s.bias", ln1);
    if (load_vector(L, &ly->attn_norm, NAME(w1), d) || load_vector(L, &ly->attn_norm_b, NAME(b1), d)) return -1;
    if (c->two_ln && (load_vector(L, &ly->mlp_norm, NAME("ln_mlp.weight"), d) ||
                      load_vector(L, &ly->mlp_norm_b, NAME("ln_mlp.bias"), d)))
        return -1;
    if (!c->parallel_attn && (load_vector(L, &ly->mlp_norm, NAME("post_attention_layernorm.weight"), d) ||
                              load_vector(L, &ly->mlp_norm_b, NAME("post_attention_layernorm.bias"), d)))
        return -1;
    const char *qkv = "self_attention.query_key_value.weight";
    if (load_rows_gathered(L, &ly->wq, NAME(qkv), fused, d, qs, sh->n_heads, hd) ||
        load_rows_gathered(L, &ly->wk, NAME(qkv), fused, d, ks, sh->n_kv_heads, hd) ||
        load_rows_gathered(L, &ly->wv, NAME(qkv), fused, d, vs, sh->n_kv_heads, hd) ||
        load_matrix(L, &ly->wo, NAME("self_attention.dense.weight"), d, d, PART_COLS, q0, nq, LM_QUANT) ||
        load_matrix(L, &ly->w_up, NAME("mlp.dense_h_to_4h.weight"), I, d, PART_ROWS, sh->inter0, sh->inter,
                    LM_QUANT) ||
        load_matrix(L, &ly->w_down, NAME("mlp.dense_4h_to_h.weight"), d, I, PART_COLS, sh->inter0, sh->inter,
                    LM_QUANT))
        return -1;
    if (c->qkv_bias) {
        const char *qb = "self_attention.query_key_value.bias";
        if (load_vector_gathered(L, &ly->bq, NAME(qb), fused, qs, sh->n_heads, hd) ||
            load_vector_gathered(L, &ly->bk, NAME(qb), fused, ks, sh->n_kv_heads, hd) ||
            load_vector_gathered(L, &ly->bv, NAME(qb), fused, vs, sh->n_kv_heads, hd) ||
            (lead && load_vector(L, &ly->bo, NAME("self_attention.dense.bias"), d)) ||
            load_vector_part(L, &ly->b_up, NAME("mlp.dense_h_to_4h.bias"), I, sh->inter0, sh->inter) ||
            (lead && load_vector(L, &ly->b_down, NAME("mlp.dense_4h_to_h.bias"), d)))
            return -1;
    }
#undef NAME
    return 0;
}

llmq_status model_shard_plan(model_shard *sh, const model_config *c, int rank, int world, llmq_err *err) {
    memset(sh, 0, sizeof *sh);
    if (world < 1 || rank < 0 || rank >= world)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "rank %d of a group of %d", rank, world);
    if (c->n_heads % world)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "tensor parallel %d: %d attention heads do not divide by %d",
                            world, c->n_heads, world);
    if (c->intermediate_size % world)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "tensor parallel %d: intermediate_size %d does not divide by %d",
                            world, c->intermediate_size, world);
    if (c->vocab_size % world)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "tensor parallel %d: vocab_size %d does not divide by %d", world,
                            c->vocab_size, world);
    sh->rank = rank;
    sh->world = world;
    sh->n_heads = c->n_heads / world;
    sh->head0 = rank * sh->n_heads;
    if (c->n_kv_heads >= world) {
        if (c->n_kv_heads % world)
            return llmq_err_set(err, LLMQ_ERR_INVALID,
                                "tensor parallel %d: %d key/value heads do not divide by %d", world, c->n_kv_heads,
                                world);
        sh->n_kv_heads = c->n_kv_heads / world;
        sh->kv_head0 = rank * sh->n_kv_heads;
    } else { /* fewer KV heads than ranks: each rank keeps the one its query heads use */
        const int group = c->n_heads / c->n_kv_heads;
        if (group % sh->n_heads)
            return llmq_err_set(err, LLMQ_ERR_INVALID,
                                "tensor parallel %d: the %d query heads of a rank span several of the %d KV heads",
                                world, sh->n_heads, c->n_kv_heads);
        sh->n_kv_heads = 1;
        sh->kv_head0 = sh->head0 / group;
    }
    sh->inter = c->intermediate_size / world;
    sh->inter0 = rank * sh->inter;
    sh->vocab = c->vocab_size / world;
    sh->vocab0 = rank * sh->vocab;
    return LLMQ_OK;
}

llmq_status model_load(model **out, const char *dir, llmq_backend *be, const model_load_opts *lo, llmq_err *err) {
    return model_load_shard(out, dir, be, lo, 0, 1, err);
}

llmq_status model_load_shard(model **out, const char *dir, llmq_backend *be, const model_load_opts *lo, int rank,
                             int world, llmq_err *err) {
    model *m = calloc(1, sizeof *m);
    if (!m) return llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory");
    m->be = be;
    if (lo) m->lo = *lo; /* else calloc's zeros: as stored */
    llmq_status st = model_config_load(&m->cfg, dir, err);
    if (!st) st = model_shard_plan(&m->shard, &m->cfg, rank, world, err);
    if (!st) st = st_open_dir(&m->st, dir, err);
    if (st) {
        model_destroy(m);
        return st;
    }
    const model_config *c = &m->cfg;
    if (c->head_dim > 512) {
        model_destroy(m);
        return llmq_err_set(err, LLMQ_ERR_UNSUPPORTED, "%s: head_dim %d exceeds 512", dir, c->head_dim);
    }
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) {
        model_destroy(m);
        return llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory");
    }
    loader L = {m, dir, err};
    const model_shard *sh = &m->shard;
    const int falcon = c->arch == ARCH_FALCON;
    const char *embed_name = falcon ? "transformer.word_embeddings.weight" : "model.embed_tokens.weight";
    int bad = load_matrix(&L, &m->embed, embed_name, c->vocab_size, c->hidden_size, PART_ROWS, sh->vocab0,
                          sh->vocab, 0) ||
              load_vector(&L, &m->final_norm, falcon ? "transformer.ln_f.weight" : "model.norm.weight",
                          c->hidden_size) ||
              (falcon && load_vector(&L, &m->final_norm_b, "transformer.ln_f.bias", c->hidden_size));
    for (int i = 0; !bad && i < c->n_layers; i++) bad = falcon ? load_falcon_layer(&L, i) : load_layer(&L, i);
    if (!bad) {
        if (c->tie_word_embeddings && !st_find(m->st, "lm_head.weight")) {
            if (m->lo.quant == LLMQ_QUANT_NONE) /* tied and quantized: a quantized copy of the table */
                m->lm_head = m->embed;
            else
                bad = load_matrix(&L, &m->lm_head, embed_name, c->vocab_size, c->hidden_size, PART_ROWS,
                                  sh->vocab0, sh->vocab, LM_QUANT);
        } else {
            bad = load_matrix(&L, &m->lm_head, "lm_head.weight", c->vocab_size, c->hidden_size, PART_ROWS,
                              sh->vocab0, sh->vocab, LM_QUANT);
        }
    }
    if (bad) {
        st = err ? err->code : LLMQ_ERR_FORMAT;
        model_destroy(m);
        return st;
    }
    m->wdt = m->layers[0].wq.dt;
    *out = m;
    return LLMQ_OK;
}

void model_destroy(model *m) {
    if (!m) return;
    llmq_backend *be = m->be;
    if (m->layers) {
        for (int i = 0; i < m->cfg.n_layers; i++) {
            model_layer *ly = &m->layers[i];
            float *vecs[] = {ly->attn_norm, ly->mlp_norm, ly->attn_norm_b, ly->mlp_norm_b, ly->bq, ly->bk,
                             ly->bv,        ly->bo,       ly->b_gate,      ly->b_up,        ly->b_down};
            for (size_t v = 0; v < sizeof vecs / sizeof vecs[0]; v++) be->ops->free(be, vecs[v]);
            be_weight *ws[] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo, &ly->w_gate, &ly->w_up, &ly->w_down, &ly->router};
            for (size_t w = 0; w < sizeof ws / sizeof ws[0]; w++)
                if (ws[w]->data) be->ops->weight_release(be, ws[w]);
            for (int x = 0; ly->experts && x < 3 * m->cfg.n_experts; x++)
                if (ly->experts[x].data) be->ops->weight_release(be, &ly->experts[x]);
            free(ly->experts);
        }
        free(m->layers);
    }
    if (m->lm_head.data && m->lm_head.data != m->embed.data) be->ops->weight_release(be, &m->lm_head);
    if (m->embed.data) be->ops->weight_release(be, &m->embed);
    if (be) be->ops->free(be, m->final_norm);
    if (be) be->ops->free(be, m->final_norm_b);
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    st_close(m->st);
    free(m);
}
