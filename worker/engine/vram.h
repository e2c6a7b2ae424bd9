/*
 * vram.h — how much memory a model needs per GPU: weights of one
 * tensor-parallel rank, KV cache, activations, runtime overheads; whether it
 * fits, how many sequences of a given length fit, and the smallest
 * tensor-parallel group that fits (docs/vram.md; the split is the one of
 * docs/architecture.md, "Tensor parallelism").
 *
 * The arithmetic mirrors what the engine allocates: the shard split of
 * model_shard_plan (query heads, KV heads split or replicated, MLP columns,
 * vocabulary rows), the KV cache of eng_kv_bytes_per_token for the rank's KV
 * heads in blocks of ENG_BLOCK_SIZE tokens, and the activation buffers of
 * eng_create for a step budget.  The worker sizes its KV pool with
 * vram_estimate() (`llmq-worker --memory-utilization F`), `llmq vram` prints
 * the same figures.
 *
 * Models are read from config.json arithmetic only (no weights needed):
 * Llama, Mistral, Mixtral, Qwen2 and Falcon through model_config's parser
 * (worker/model/config.h, model_config_parse_shapes: also a Falcon with
 * ALiBi, which the engine does not run), plus Llama-family configs the
 * engine refuses (other MoE layouts, activations, rope scalings) through a
 * tolerant reader here.
 * Plain data: copy freely, nothing to free.
 */
#ifndef LLMQ_VRAM_H
#define LLMQ_VRAM_H

#include <stdint.h>

#include "common/status.h"
#include "kernels/backend.h"
#include "kernels/quant.h"
#include "worker/model/config.h"

/* Layer layouts the estimator counts. */
typedef enum vram_family {
    VRAM_LLAMA = 0, /* Llama/Mistral/Qwen2/Mixtral: q,k,v,o; gated MLP (gate, up, down); RMSNorm */
    VRAM_FALCON,    /* fused query_key_value, dense; MLP h->4h->h (2 matrices); LayerNorm with bias */
} vram_family;

typedef struct vram_model {
    char name[128];        /* preset name or path, for messages */
    char arch[64];         /* architectures[0] */
    vram_family family;
    int hidden;            /* d */
    int inter;             /* MLP width (per expert); Falcon: ffn_hidden_size, default 4d */
    int layers;
    int heads;             /* query heads */
    int kv_heads;          /* KV heads (GQA / MQA when < heads) */
    int head_dim;
    int vocab;
    int max_pos;           /* max_position_embeddings (Falcon default 2048) */
    int tied;              /* lm_head shares the embedding (and no separate lm_head in the checkpoint) */
    int experts;           /* MoE experts per layer (num_local_experts); 1 = dense */
    int experts_per_tok;   /* MoE: experts each token is routed to (num_experts_per_tok); 0 = dense */
    int sliding_window;    /* tokens, 0 = none (reported; the paged cache keeps every position) */
    int qkv_bias, o_bias, mlp_bias; /* linear biases */
    int falcon_ln_per_layer;        /* Falcon: LayerNorms per layer (2 new decoder / 1 parallel_attn) */
    llmq_dtype stored;     /* dtype of the checkpoint's matrices (torch_dtype; F16 when unknown) */
} vram_model;

/*
 * Read a model: `what` is a preset name (tools/presets/<name>.json, looked
 * up in $LLMQ_PRESETS, then next to the binary: <bin>/../tools/presets and
 * <bin>/../share/llmq/presets, then ./tools/presets), a model directory or a
 * config.json.  A directory's safetensors, when present, decide whether
 * lm_head is separate (as model.c does) and give the stored dtype.
 */
llmq_status vram_model_load(vram_model *vm, const char *what, llmq_err *err);
/* Parse a config.json in memory (name for messages). */
llmq_status vram_model_parse(vram_model *vm, const char *json, size_t len, const char *name, llmq_err *err);
/* From an already parsed config (any architecture model_config reads). */
void vram_model_from_config(vram_model *vm, const model_config *cfg);
/* The directory where presets are found ("" when none), for messages. */
const char *vram_presets_dir(void);

/* Parameters of the whole model (what checkpoints and model cards count). */
int64_t vram_params(const vram_model *vm);

/* Documented overheads (docs/vram.md), bytes per GPU. */
#define VRAM_CUDA_CONTEXT_BYTES  (512LL << 20) /* CUDA context, module images, cuBLAS handle */
#define VRAM_CUBLAS_WORKSPACE    (32LL << 20)  /* cuBLAS(Lt) workspace on Hopper (4 MiB before) */
#define VRAM_NCCL_BYTES          (256LL << 20) /* NCCL: 4 MiB buffers x 2 directions x up to 32 channels; tp > 1 */
#define VRAM_CPU_RUNTIME_BYTES   (64LL << 20)  /* CPU backend: per-thread scratch tiles, tokenizer, libraries */

typedef struct vram_opts {
    llmq_dtype wdt;         /* dtype the matrices are held in when not quantized */
    llmq_dtype kv_dt;       /* KV cache dtype; also the activations' on a GPU (cpu: F32 activations) */
    llmq_quant quant;       /* weight-only quantization of the linear layers */
    int q4_group;           /* INT4 group size (0 = LLMQ_Q4_GROUP) */
    int tp;                 /* tensor-parallel ranks (GPUs) */
    int max_model_len;      /* L: tokens of one sequence (0 = the model's max_pos) */
    int max_num_seqs;       /* B: sequences the verdict needs at length L (0 = 1); also the step's sequences */
    int max_batched_tokens; /* the step's token budget (activations); 0 = 512 */
    double util;            /* fraction of device memory llmq may use (0 = 0.9) */
    int64_t device_bytes;   /* memory of one GPU (or of the host, cpu = 1) */
    int cpu;                /* 1: the CPU backend (host RAM, no CUDA context or NCCL) */
} vram_opts;

typedef struct vram_estimate {
    int64_t params;
    int tp;
    int kv_heads_per_gpu;          /* after splitting or replicating */
    int64_t weight_bytes;          /* per GPU: this rank's matrices, vectors, embedding and lm_head shards */
    int64_t kv_bytes_per_token;    /* per GPU, all layers, K and V */
    int64_t kv_bytes_per_seq;      /* per GPU, one sequence of L tokens in whole blocks */
    int64_t kv_bytes;              /* per GPU, the B x L the verdict asks for */
    int64_t act_bytes;             /* per GPU: activation buffers for the step budget, logits */
    int64_t overhead_bytes;        /* per GPU: runtime (CUDA context, cuBLAS, NCCL; or the CPU constant) */
    int64_t total_bytes;           /* weights + kv + act + overhead */
    int64_t device_bytes;          /* memory of one GPU */
    int64_t budget_bytes;          /* device_bytes x util */
    int64_t kv_pool_bytes;         /* what is left for the KV cache (may be < 0) */
    int kv_blocks;                 /* blocks of ENG_BLOCK_SIZE tokens that fit (0 when none) */
    int max_num_seqs;              /* sequences of L tokens that fit (0 when none) */
    int fits;                      /* kv_pool_bytes >= kv_bytes (B sequences of L, at least one) */
    int max_model_len, num_seqs;   /* the L and B used */
} vram_estimate;

/* Estimate for o->tp ranks; LLMQ_ERR_INVALID (the message of
 * model_shard_plan) when the model does not split that way. */
llmq_status vram_estimate_run(vram_estimate *e, const vram_model *vm, const vram_opts *o, llmq_err *err);

/* The smallest tp in 1..64 the model splits into that fits (0 when none). */
int vram_min_tp(const vram_model *vm, const vram_opts *o);

/* GPUs by the memory total their driver reports (nvidia-smi). */
typedef struct vram_gpu {
    const char *name;   /* "T4", "A100-40G", ... */
    const char *label;  /* "T4 16G" */
    int64_t bytes;
    int in_table;       /* listed when no --gpu is given */
} vram_gpu;

const vram_gpu *vram_gpus(int *n);
/* A GPU by name (case-insensitive; "A100" means the 80 GB one), or NULL. */
const vram_gpu *vram_gpu_find(const char *name);

/* Physical memory of this host (sysconf), the CPU backend's "device". */
int64_t vram_host_bytes(void);

/*
 * The worker's KV pool: blocks for `dir` served by `backend` (cpu or
 * cpu-ref: the host's RAM, shared by the tp ranks: each counts host / tp)
 * over tp ranks at memory utilization util, with
 * the step limits and quantization given, a KV cache of --kv-dtype kv_dtype
 * (NULL = auto, as eng_kv_dtype); *e receives every figure (for the
 * log).  LLMQ_ERR_UNSUPPORTED for a backend whose memory is not known
 * before it starts (cuda), LLMQ_ERR_NOMEM when no block fits.
 */
llmq_status vram_worker_kv_blocks(vram_estimate *e, const char *dir, const char *backend, int tp, int max_num_seqs,
                                  int max_batched_tokens, double util, llmq_quant quant, const char *kv_dtype,
                                  llmq_err *err);

#endif
