/*
 * config.h — a model's shape and behaviour, from a Hugging Face model
 * directory's config.json (and generation_config.json for end-of-sequence ids).
 *
 * Supported architectures: LlamaForCausalLM, MistralForCausalLM,
 * MixtralForCausalLM (Mistral with a sparse mixture-of-experts MLP),
 * Qwen2ForCausalLM, FalconForCausalLM (rotary; not ALiBi).  Anything else is refused at load with a message naming
 * the architecture.  The struct is plain data: copy it freely.
 */
#ifndef LLMQ_CONFIG_H
#define LLMQ_CONFIG_H

#include <stdint.h>

#include "common/status.h"

typedef enum model_arch {
    ARCH_LLAMA = 0,
    ARCH_MISTRAL,
    ARCH_QWEN2,
    ARCH_FALCON,
    ARCH_MIXTRAL,
} model_arch;

/* How a Falcon query_key_value matrix holds its heads (the rows of head h). */
typedef enum qkv_layout {
    QKV_SEPARATE = 0, /* q_proj, k_proj, v_proj (Llama family) */
    QKV_GROUPED,      /* new_decoder_architecture: per KV group, its query heads then k then v */
    QKV_MULTI_QUERY,  /* multi_query: all query heads, then the one k, then the one v */
    QKV_INTERLEAVED,  /* neither: per head, q then k then v */
} qkv_layout;

typedef enum rope_scaling_type {
    ROPE_NONE = 0,
    ROPE_LINEAR,  /* positions divided by factor */
    ROPE_LLAMA3,  /* Llama 3.1 frequency-dependent scaling */
} rope_scaling_type;

#define MODEL_MAX_EOS 8
#define MODEL_MAX_EXPERTS 256 /* num_local_experts accepted (Mixtral has 8) */

typedef struct model_config {
    model_arch arch;
    char arch_name[64];          /* "LlamaForCausalLM", ... */
    char torch_dtype[16];        /* as written in config.json ("float32", "bfloat16", ...) */
    int hidden_size;             /* model width, d */
    int intermediate_size;       /* MLP width */
    int n_layers;
    int n_heads;                 /* query heads */
    int n_kv_heads;              /* key/value heads (GQA when < n_heads) */
    int head_dim;                /* per head; config's head_dim or hidden/heads */
    int vocab_size;
    int max_position_embeddings; /* context length the model was trained for */
    float rms_norm_eps;
    float rope_theta;
    rope_scaling_type rope_type;
    float rope_factor;           /* linear and llama3 */
    float rope_low_freq_factor;  /* llama3 */
    float rope_high_freq_factor; /* llama3 */
    int rope_orig_max_pos;       /* llama3: original_max_position_embeddings */
    int sliding_window;          /* tokens; 0 = none */
    int max_window_layers;       /* Qwen2: layers >= this one use the window */
    int tie_word_embeddings;     /* lm_head shares embed_tokens */
    int qkv_bias;                /* q/k/v projections have biases (Qwen2, attention_bias) */
    int o_bias;                  /* o_proj has a bias (Llama attention_bias) */
    int mlp_bias;                /* gate/up/down have biases (Llama mlp_bias) */
    /* Mixtral (ARCH_MIXTRAL): every layer's MLP is n_experts SwiGLU experts of
     * width intermediate_size, each token routed to top_k of them. */
    int n_experts;               /* num_local_experts; 0 = a dense MLP */
    int top_k;                   /* num_experts_per_tok */
    /* Falcon (ARCH_FALCON): LayerNorm with bias (eps in rms_norm_eps), GELU
     * MLP without a gate (dense_h_to_4h -> gelu -> dense_4h_to_h, width
     * intermediate_size), one fused query_key_value matrix. */
    qkv_layout qkv;
    int parallel_attn;           /* attention and MLP read the same input, outputs added */
    int two_ln;                  /* ln_attn and ln_mlp (new_decoder_architecture), else input_layernorm */
    int bos_token_id;            /* -1 when unknown */
    int n_eos;                   /* end-of-sequence ids (generation_config wins) */
    int32_t eos_token_ids[MODEL_MAX_EOS];
} model_config;

/* The whole file at path, NUL-terminated, when it is shorter than max_bytes
 * (config files are small; the bound keeps a wrong path from reading a
 * checkpoint); its length in *len.  NULL when it cannot be read or is too
 * large.  The caller frees it. */
char *model_file_read(const char *path, size_t max_bytes, size_t *len);

/*
 * Parse dir/config.json (+ dir/generation_config.json when present).
 * `path` may also name a config.json file directly.  On error returns a
 * status and err names the file and the field that is wrong.
 */
llmq_status model_config_load(model_config *cfg, const char *path, llmq_err *err);

/* Parse a config.json already in memory (name is used in messages). */
llmq_status model_config_parse(model_config *cfg, const char *json, size_t len, const char *name, llmq_err *err);

/* The same parse for the shapes only (the memory estimator, worker/engine/
 * vram.c): a Falcon the engine refuses for how it computes, not for its
 * shapes (ALiBi, an activation other than GELU), is read all the same. */
llmq_status model_config_parse_shapes(model_config *cfg, const char *json, size_t len, const char *name,
                                      llmq_err *err);

/* The sliding window (tokens) of layer l, 0 when it attends to everything. */
int model_config_layer_window(const model_config *cfg, int layer);

/* Rotary inverse frequencies with the configured scaling: inv_freq[head_dim/2]. */
void model_config_rope_inv_freq(const model_config *cfg, float *inv_freq);

/* 1 when id is one of the model's end-of-sequence ids. */
int model_config_is_eos(const model_config *cfg, int32_t id);

#endif
