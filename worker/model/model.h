/*
 * model.h — a loaded model: its config and its weights, prepared for one
 * backend.
 *
 * Tensor names and shapes follow Hugging Face's Llama/Mistral/Qwen2 layout
 * (model.layers.{i}.self_attn.q_proj.weight, ...), Mixtral's (the same, with
 * model.layers.{i}.block_sparse_moe.gate.weight and .experts.{j}.w1/w2/w3
 * for the MLP) and Falcon's
 * (transformer.h.{i}.self_attention.query_key_value.weight, ...: the fused
 * matrix is split at load into this rank's q, k and v rows, copies the
 * model owns).  Every expected tensor
 * must be present with the expected shape and a float dtype; a missing or
 * wrong tensor is an error naming the file and the tensor.  Matrix weights
 * stay in the mmapped files on the CPU backend (no copy); norm vectors and
 * biases are converted to F32 backend buffers.
 *
 * Weight-only quantization (model_load_opts): the linear layers — q, k, v,
 * o, gate, up, down and lm_head — are quantized at load into copies the
 * model owns (kernels/quant.h has the formats); the embedding table stays as
 * stored (only looked up), and so do norms and biases.  With tied embeddings
 * lm_head becomes a quantized copy of the table.  After quantizing a matrix
 * the loader drops its source pages from the process (madvise), so resident
 * memory is the quantized size (plus the embedding rows looked up).  CPU
 * backends only for now.
 */
#ifndef LLMQ_MODEL_H
#define LLMQ_MODEL_H

#include "kernels/backend.h"
#include "kernels/quant.h"
#include "worker/model/config.h"
#include "worker/model/safetensors.h"

typedef struct model_layer {
    float *attn_norm;      /* [d] input_layernorm (Falcon: ln_attn or input_layernorm) */
    float *mlp_norm;       /* [d] post_attention_layernorm (Falcon: ln_mlp, post_attention_layernorm or NULL) */
    float *attn_norm_b, *mlp_norm_b; /* Falcon's LayerNorm biases, else NULL */
    be_weight wq, wk, wv;  /* [nh*hd, d], [nkv*hd, d], [nkv*hd, d] */
    be_weight wo;          /* [d, nh*hd] */
    be_weight w_gate, w_up;/* [I, d]; Falcon: no gate, w_up = dense_h_to_4h */
    be_weight w_down;      /* [d, I] */
    float *bq, *bk, *bv;   /* biases or NULL */
    float *bo;
    float *b_gate, *b_up, *b_down;
    /* Mixtral (cfg.n_experts > 0) instead of w_gate/w_up/w_down: */
    be_weight router;      /* [E, d] block_sparse_moe.gate, replicated on every rank, never quantized */
    be_weight *experts;    /* [3E]: every expert's w1 (gate), then every w3 (up), then every w2 (down) */
    be_moe moe;            /* the op's view of router-less experts (points into experts) */
} model_layer;

/* What this rank holds of a tensor-parallel split (Megatron style): query
 * heads, KV heads (replicated when there are fewer KV heads than ranks), MLP
 * columns and vocabulary rows.  World 1 holds everything. */
typedef struct model_shard {
    int rank, world;
    int n_heads, head0;       /* query heads [head0, head0 + n_heads) */
    int n_kv_heads, kv_head0; /* KV heads [kv_head0, kv_head0 + n_kv_heads) */
    int inter, inter0;        /* MLP columns [inter0, inter0 + inter) */
    int vocab, vocab0;        /* vocabulary rows [vocab0, vocab0 + vocab) */
} model_shard;

/* The split of cfg over world ranks for rank; an error (naming what does not
 * divide) when the shapes do not allow it. */
llmq_status model_shard_plan(model_shard *sh, const model_config *cfg, int rank, int world, llmq_err *err);

/* How model_load / model_load_shard hold the weights (a parameter of each
 * load; every rank of a group loads its shard with the same options).  All
 * zeros, or a NULL pointer, is the default: as stored. */
typedef struct model_load_opts {
    llmq_quant quant; /* NONE: as stored; INT8 / INT4: linear layers quantized at load */
    int q4_group;     /* INT4 group size, a multiple of 8 (0 = LLMQ_Q4_GROUP, 128) */
} model_load_opts;

typedef struct model {
    model_config cfg;
    model_shard shard;     /* what this rank holds (the whole model at world 1) */
    llmq_backend *be;      /* not owned */
    st_set *st;            /* the mapped safetensors files */
    llmq_dtype wdt;        /* dtype of the matrix weights */
    be_weight embed;       /* [V, d] */
    be_weight lm_head;     /* [V, d]; = embed when tied */
    float *final_norm;     /* [d] */
    float *final_norm_b;   /* [d] Falcon's ln_f bias, else NULL */
    model_layer *layers;   /* [n_layers] (this rank's slices) */
    size_t weight_bytes;   /* bytes of all weights as held (quantized ones at their quantized size) */
    model_load_opts lo;    /* the options it was loaded with */
    void **owned;          /* [n_owned] quantized copies (one block per matrix), freed by model_destroy */
    int n_owned, cap_owned;
} model;

/* Load dir (config.json + safetensors) for backend be, held as lo says (NULL:
 * as stored; copied into m->lo).  *out owns everything but the backend. */
llmq_status model_load(model **out, const char *dir, llmq_backend *be, const model_load_opts *lo, llmq_err *err);
/* Load rank's shard of a world-way tensor-parallel split: matrices are views
 * of only this rank's rows/columns of the mapped files, so a rank reads only
 * its slices. */
llmq_status model_load_shard(model **out, const char *dir, llmq_backend *be, const model_load_opts *lo, int rank,
                             int world, llmq_err *err);
void model_destroy(model *m);

#endif
