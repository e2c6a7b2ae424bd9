/*
 * vram.c — the memory estimator (see vram.h and docs/vram.md).
 *
 * Three parts: reading a model's arithmetic (presets, directories,
 * config.json: what model_config reads, with worker/model/config.c's own
 * parser; Llama-family configs it refuses through a tolerant reader), counting bytes per rank exactly as the loader and the
 * engine allocate them, and the verdicts built on that count.
 */
#include "worker/engine/vram.h"

#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "worker/engine/engine.h"
#include "worker/model/model.h"
#include "worker/model/safetensors.h"

/* ------------------------------------------------------------ reading */

static llmq_dtype dtype_from_torch(const char *s) {
    if (!strcmp(s, "float32")) return LLMQ_F32;
    if (!strcmp(s, "bfloat16")) return LLMQ_BF16;
    return LLMQ_F16; /* float16, and the usual choice when a config does not say */
}

void vram_model_from_config(vram_model *vm, const model_config *c) {
    memset(vm, 0, sizeof *vm);
    snprintf(vm->arch, sizeof vm->arch, "%s", c->arch_name);
    vm->family = c->arch == ARCH_FALCON ? VRAM_FALCON : VRAM_LLAMA;
    /* Falcon: ln_attn + ln_mlp, or input_layernorm + post_attention_layernorm
     * when sequential; one input_layernorm when parallel */
    if (c->arch == ARCH_FALCON) vm->falcon_ln_per_layer = c->two_ln || !c->parallel_attn ? 2 : 1;
    vm->hidden = c->hidden_size;
    vm->inter = c->intermediate_size;
    vm->layers = c->n_layers;
    vm->heads = c->n_heads;
    vm->kv_heads = c->n_kv_heads;
    vm->head_dim = c->head_dim;
    vm->vocab = c->vocab_size;
    vm->max_pos = c->max_position_embeddings;
    vm->tied = c->tie_word_embeddings;
    vm->experts = c->n_experts > 0 ? c->n_experts : 1;
    vm->experts_per_tok = c->n_experts > 0 ? c->top_k : 0;
    vm->sliding_window = c->sliding_window;
    vm->qkv_bias = c->qkv_bias;
    vm->o_bias = c->o_bias;
    vm->mlp_bias = c->mlp_bias;
    vm->stored = dtype_from_torch(c->torch_dtype);
}

/* The first integer among keys (NULL-terminated), or dflt. */
static int json_int_of(json_t *o, const char *const *keys, int dflt) {
    for (; *keys; keys++) {
        json_t *v = json_object_get(o, *keys);
        if (json_is_integer(v)) return (int)json_integer_value(v);
    }
    return dflt;
}

static int json_bool_of(json_t *o, const char *key, int dflt) {
    json_t *v = json_object_get(o, key);
    if (json_is_boolean(v)) return json_is_true(v);
    if (json_is_integer(v)) return json_integer_value(v) != 0;
    return dflt;
}

/* The architectures model_config refuses but whose arithmetic we know. */
static llmq_status parse_tolerant(vram_model *vm, json_t *root, const char *name, llmq_err *err) {
    json_t *archs = json_object_get(root, "architectures");
    json_t *a0 = json_is_array(archs) ? json_array_get(archs, 0) : NULL;
    json_t *mt = json_object_get(root, "model_type");
    const char *arch = json_is_string(a0) ? json_string_value(a0) : "";
    const char *type = json_is_string(mt) ? json_string_value(mt) : "";
    snprintf(vm->arch, sizeof vm->arch, "%s", *arch ? arch : type);
    static const char *const k_hidden[] = {"hidden_size", "n_embd", "d_model", NULL};
    static const char *const k_layers[] = {"num_hidden_layers", "n_layer", "num_layers", NULL};
    static const char *const k_heads[] = {"num_attention_heads", "n_head", NULL};
    static const char *const k_vocab[] = {"vocab_size", NULL};
    static const char *const k_pos[] = {"max_position_embeddings", "n_positions", NULL};
    static const char *const k_hd[] = {"head_dim", NULL};
    vm->hidden = json_int_of(root, k_hidden, 0);
    vm->layers = json_int_of(root, k_layers, 0);
    vm->heads = json_int_of(root, k_heads, 0);
    vm->vocab = json_int_of(root, k_vocab, 0);
    vm->max_pos = json_int_of(root, k_pos, 2048);
    vm->head_dim = json_int_of(root, k_hd, 0);
    vm->experts = 1;
    json_t *dt = json_object_get(root, "torch_dtype");
    if (!json_is_string(dt)) dt = json_object_get(root, "dtype");
    vm->stored = dtype_from_torch(json_is_string(dt) ? json_string_value(dt) : "");

    if (strstr(arch, "Llama") || strstr(arch, "Mistral") || strstr(arch, "Mixtral") ||
        strstr(arch, "Qwen2ForCausalLM") || !strcmp(type, "llama") || !strcmp(type, "mistral") ||
        !strcmp(type, "mixtral") || !strcmp(type, "qwen2")) {
        /* The Llama layout, including what model_config refuses to run
         * (other activations or rope scalings, MoE): the arithmetic holds. */
        vm->family = VRAM_LLAMA;
        static const char *const k_kv[] = {"num_key_value_heads", NULL};
        static const char *const k_inter[] = {"intermediate_size", NULL};
        static const char *const k_exp[] = {"num_local_experts", "num_experts", NULL};
        static const char *const k_win[] = {"sliding_window", NULL};
        vm->kv_heads = json_int_of(root, k_kv, vm->heads);
        vm->inter = json_int_of(root, k_inter, 0);
        vm->experts = json_int_of(root, k_exp, 1);
        static const char *const k_topk[] = {"num_experts_per_tok", NULL};
        vm->experts_per_tok = vm->experts > 1 ? json_int_of(root, k_topk, 2) : 0;
        const int qwen = strstr(arch, "Qwen2") || !strcmp(type, "qwen2");
        vm->tied = json_bool_of(root, "tie_word_embeddings", qwen ? 0 : 1);
        vm->qkv_bias = qwen || json_bool_of(root, "attention_bias", 0);
        vm->o_bias = !qwen && json_bool_of(root, "attention_bias", 0);
        vm->mlp_bias = json_bool_of(root, "mlp_bias", 0);
        if (!qwen || json_bool_of(root, "use_sliding_window", 0)) vm->sliding_window = json_int_of(root, k_win, 0);
    } else {
        return llmq_err_set(err, LLMQ_ERR_UNSUPPORTED,
                            "%s: architecture \"%s\" is not known to the estimator (known: Llama, Mistral, Qwen2, "
                            "Mixtral, Falcon)", name, vm->arch);
    }
    if (vm->hidden <= 0 || vm->layers <= 0 || vm->heads <= 0 || vm->vocab <= 0 || vm->inter <= 0 ||
        vm->kv_heads <= 0 || vm->experts <= 0 || vm->heads % vm->kv_heads)
        return llmq_err_set(err, LLMQ_ERR_FORMAT,
                            "%s: need positive hidden size, layers, heads, KV heads (dividing the heads), MLP width "
                            "and vocabulary (got %d, %d, %d, %d, %d, %d)", name, vm->hidden, vm->layers, vm->heads,
                            vm->kv_heads, vm->inter, vm->vocab);
    if (vm->head_dim <= 0) vm->head_dim = vm->hidden / vm->heads;
    if (vm->sliding_window < 0) vm->sliding_window = 0;
    return LLMQ_OK;
}

llmq_status vram_model_parse(vram_model *vm, const char *json, size_t len, const char *name, llmq_err *err) {
    memset(vm, 0, sizeof *vm);
    model_config cfg;
    llmq_err ce = {0};
    llmq_status st = model_config_parse_shapes(&cfg, json, len, name, &ce);
    const int falcon = cfg.arch == ARCH_FALCON; /* set once the architecture is read, also on a later error */
    if (st == LLMQ_OK) {
        vram_model_from_config(vm, &cfg);
    } else if (st == LLMQ_ERR_UNSUPPORTED && !falcon) {
        /* a Llama-family config llmq cannot run (MoE, other activations or
         * rope scalings): counted by the tolerant reader */
        json_t *root = json_loadb(json, len, 0, NULL);
        st = root ? parse_tolerant(vm, root, name, err) : llmq_err_set(err, ce.code, "%s", ce.msg);
        json_decref(root);
    } else {
        return llmq_err_set(err, ce.code, "%s", ce.msg);
    }
    if (st == LLMQ_OK) {
        snprintf(vm->name, sizeof vm->name, "%s", name);
        /* A preset says when the published checkpoint stores lm_head.weight
         * although the config ties it (Falcon): the loader then keeps both. */
        json_t *root = json_loadb(json, len, 0, NULL);
        json_t *meta = root ? json_object_get(root, "_llmq") : NULL;
        if (json_is_object(meta) && json_bool_of(meta, "lm_head_in_checkpoint", 0)) vm->tied = 0;
        json_decref(root);
    }
    return st;
}

static int is_dir(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static int is_file(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

static char g_presets[4200];

const char *vram_presets_dir(void) {
    const char *env = getenv("LLMQ_PRESETS");
    if (env && *env && is_dir(env)) return env;
    char exe[4000];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) *slash = '\0';
        static const char *const rel[] = {"../tools/presets", "../share/llmq/presets", "tools/presets"};
        for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
            snprintf(g_presets, sizeof g_presets, "%s/%s", exe, rel[i]);
            if (is_dir(g_presets)) return g_presets;
        }
    }
    if (is_dir("tools/presets")) return "tools/presets";
    return "";
}

llmq_status vram_model_load(vram_model *vm, const char *what, llmq_err *err) {
    char path[4200];
    int dir = 0;
    if (is_dir(what)) {
        snprintf(path, sizeof path, "%s/config.json", what);
        dir = 1;
    } else if (is_file(what)) {
        snprintf(path, sizeof path, "%s", what);
    } else if (!strchr(what, '/')) {
        const char *pd = vram_presets_dir();
        snprintf(path, sizeof path, "%s/%s.json", pd, what);
        if (!*pd || !is_file(path))
            return llmq_err_set(err, LLMQ_ERR_INVALID,
                                "'%s' is neither a model directory, a config.json nor a preset (presets: %s; set "
                                "LLMQ_PRESETS to their folder)", what, *pd ? pd : "no tools/presets found");
    } else {
        return llmq_err_set(err, LLMQ_ERR_IO, "%s: no such file or directory", what);
    }
    size_t len = 0;
    char *buf = model_file_read(path, (size_t)16 << 20, &len);
    if (!buf) return llmq_err_set(err, LLMQ_ERR_IO, "%s: cannot read", path);
    llmq_status st = vram_model_parse(vm, buf, len, path, err);
    free(buf);
    if (st) return st;
    snprintf(vm->name, sizeof vm->name, "%s", what);
    if (dir) { /* the checkpoint itself: stored dtype, and a separate lm_head as model.c sees it */
        st_set *s = NULL;
        llmq_err se = {0};
        if (st_open_dir(&s, what, &se) == LLMQ_OK) {
            if (vm->tied && st_find(s, "lm_head.weight")) vm->tied = 0;
            for (size_t i = 0; i < st_count(s); i++) {
                const st_tensor *t = st_at(s, i);
                if (t->ndim == 2 && t->dtype_known && strstr(t->name, "layers.")) {
                    vm->stored = t->dt;
                    break;
                }
            }
            st_close(s);
        }
    }
    return LLMQ_OK;
}

/* ------------------------------------------------------------ counting */

int64_t vram_params(const vram_model *vm) {
    const int64_t d = vm->hidden, I = vm->inter, V = vm->vocab, E = vm->experts;
    const int64_t qd = (int64_t)vm->heads * vm->head_dim, kvd = (int64_t)vm->kv_heads * vm->head_dim;
    int64_t layer;
    int64_t p = V * d + (vm->tied ? 0 : V * d);
    if (vm->family == VRAM_FALCON) {
        layer = d * (qd + 2 * kvd) + qd * d + 2 * d * I + (int64_t)vm->falcon_ln_per_layer * 2 * d;
        if (vm->qkv_bias) layer += qd + 2 * kvd + d + I + d;
        p += 2 * d; /* ln_f weight and bias */
    } else {
        layer = d * qd + 2 * d * kvd + qd * d + E * 3 * d * I + (E > 1 ? E * d : 0) + 2 * d;
        if (vm->qkv_bias) layer += qd + 2 * kvd;
        if (vm->o_bias) layer += d;
        if (vm->mlp_bias) layer += E * (2 * I + d);
        p += d; /* final norm */
    }
    return p + (int64_t)vm->layers * layer;
}

/* The split of vm over tp ranks, as model_shard_plan makes it (rank 0). */
static llmq_status shard_of(model_shard *sh, const vram_model *vm, int tp, llmq_err *err) {
    model_config c;
    memset(&c, 0, sizeof c);
    c.n_heads = vm->heads;
    c.n_kv_heads = vm->kv_heads;
    c.intermediate_size = vm->inter;
    c.vocab_size = vm->vocab;
    return model_shard_plan(sh, &c, 0, tp, err);
}

/* Bytes of a [rows, cols] linear layer as held. */
static int64_t mat_bytes(const vram_opts *o, int64_t rows, int64_t cols) {
    if (o->quant != LLMQ_QUANT_NONE)
        return (int64_t)llmq_quant_bytes(o->quant, (size_t)rows, (size_t)cols, o->q4_group);
    return rows * cols * (int64_t)llmq_dtype_size(o->wdt);
}

/* Weights of rank 0: its shard of every matrix, the vectors (F32 buffers in
 * the engine), and the biases row-parallel layers add on rank 0 only. */
static int64_t weight_bytes(const vram_model *vm, const model_shard *sh, const vram_opts *o) {
    const int64_t d = vm->hidden, hd = vm->head_dim, Ir = sh->inter, Vr = sh->vocab, E = vm->experts;
    const int64_t qr = (int64_t)sh->n_heads * hd, kvr = (int64_t)sh->n_kv_heads * hd;
    const int64_t es = (int64_t)llmq_dtype_size(o->wdt), f = 4;
    int64_t b = Vr * d * es; /* embedding rows: looked up, never quantized */
    if (!vm->tied || o->quant != LLMQ_QUANT_NONE) b += mat_bytes(o, Vr, d); /* lm_head (a quantized copy when tied) */
    int64_t layer;
    if (vm->family == VRAM_FALCON) {
        b += 2 * d * f;
        layer = mat_bytes(o, qr + 2 * kvr, d) + mat_bytes(o, d, qr) + mat_bytes(o, Ir, d) + mat_bytes(o, d, Ir) +
                (int64_t)vm->falcon_ln_per_layer * 2 * d * f;
        if (vm->qkv_bias) layer += (qr + 2 * kvr + d + Ir + d) * f;
    } else {
        b += d * f;
        layer = mat_bytes(o, qr, d) + 2 * mat_bytes(o, kvr, d) + mat_bytes(o, d, qr) +
                E * (2 * mat_bytes(o, Ir, d) + mat_bytes(o, d, Ir)) + (E > 1 ? E * d * es : 0) + 2 * d * f;
        if (vm->qkv_bias) layer += (qr + 2 * kvr) * f;
        if (vm->o_bias) layer += d * f;
        if (vm->mlp_bias) layer += E * (2 * Ir + d) * f;
    }
    return b + (int64_t)vm->layers * layer;
}

/* The engine's buffers for a step of T tokens and S sequences (eng_create),
 * plus, on the CPU, the scheduler's host logits. */
static int64_t act_bytes(const vram_model *vm, const model_shard *sh, const vram_opts *o, int T, int S, int L) {
    const int64_t d = vm->hidden, hd = vm->head_dim, Ir = sh->inter, Vr = sh->vocab;
    const int64_t qr = (int64_t)sh->n_heads * hd, kvr = (int64_t)sh->n_kv_heads * hd;
    const int64_t es = o->cpu ? 4 : (int64_t)llmq_dtype_size(o->kv_dt); /* the CPU's activations are F32 */
    /* gate and up; or Falcon's h->4h, plus the MLP's own input and output rows */
    const int64_t mlp = vm->family == VRAM_FALCON ? Ir + 2 * d : 2 * Ir;
    const int64_t max_bt = (L + ENG_BLOCK_SIZE - 1) / ENG_BLOCK_SIZE;
    int64_t b = (int64_t)T * (3 * d + 2 * qr + 2 * kvr + mlp) * es /* x h o, q att, k v, MLP */
                + (int64_t)S * (d + Vr) * es                       /* last hidden rows, logits */
                + hd / 2 * 4                                       /* rope inverse frequencies */
                + 4 * (3 * (int64_t)T + 2 * S + 1 + S * max_bt);   /* index arrays */
    if (vm->experts > 1) { /* the moe op's scratch (eng_create): router logits, gathered rows, F32 expert outputs */
        const int64_t k = vm->experts_per_tok > 0 ? vm->experts_per_tok : 1;
        b += (int64_t)T * (vm->experts + d) * es + (int64_t)T * k * d * 4 +
             (int64_t)be_moe_route_bytes((size_t)T, vm->experts, (int)k);
    }
    if (o->cpu) { /* host memory too: the scheduler's F32 logits, and the tensor-parallel gather buffers */
        b += (int64_t)S * vm->vocab * 4;
        if (sh->world > 1) b += (int64_t)S * Vr * 4 + (int64_t)S * vm->vocab * 4;
    }
    return b;
}

llmq_status vram_estimate_run(vram_estimate *e, const vram_model *vm, const vram_opts *o, llmq_err *err) {
    memset(e, 0, sizeof *e);
    model_shard sh;
    const int tp = o->tp > 0 ? o->tp : 1;
    llmq_status st = shard_of(&sh, vm, tp, err);
    if (st) return st;
    const int L = o->max_model_len > 0 ? o->max_model_len : vm->max_pos;
    const int B = o->max_num_seqs > 0 ? o->max_num_seqs : 1;
    const int T = o->max_batched_tokens > 0 ? o->max_batched_tokens : 512;
    int S = o->max_num_seqs > 0 ? o->max_num_seqs : 32;
    if (S > T) S = T;
    const double util = o->util > 0 ? o->util : 0.9;
    e->params = vram_params(vm);
    e->tp = tp;
    e->max_model_len = L;
    e->num_seqs = B;
    e->kv_heads_per_gpu = sh.n_kv_heads;
    e->weight_bytes = weight_bytes(vm, &sh, o);
    e->kv_bytes_per_token = 2LL * vm->layers * sh.n_kv_heads * vm->head_dim * (int64_t)llmq_dtype_size(o->kv_dt);
    const int64_t block = e->kv_bytes_per_token * ENG_BLOCK_SIZE;
    e->kv_bytes_per_seq = (int64_t)((L + ENG_BLOCK_SIZE - 1) / ENG_BLOCK_SIZE) * block;
    e->kv_bytes = e->kv_bytes_per_seq * B;
    e->act_bytes = act_bytes(vm, &sh, o, T, S, L);
    e->overhead_bytes = o->cpu ? VRAM_CPU_RUNTIME_BYTES
                               : VRAM_CUDA_CONTEXT_BYTES + VRAM_CUBLAS_WORKSPACE + (tp > 1 ? VRAM_NCCL_BYTES : 0);
    e->total_bytes = e->weight_bytes + e->kv_bytes + e->act_bytes + e->overhead_bytes;
    e->device_bytes = o->device_bytes;
    e->budget_bytes = (int64_t)((double)o->device_bytes * util);
    e->kv_pool_bytes = e->budget_bytes - e->weight_bytes - e->act_bytes - e->overhead_bytes;
    if (e->kv_pool_bytes > 0 && block > 0) {
        int64_t blocks = e->kv_pool_bytes / block;
        e->kv_blocks = blocks > INT_MAX / ENG_BLOCK_SIZE ? INT_MAX / ENG_BLOCK_SIZE : (int)blocks;
        int64_t seqs = e->kv_pool_bytes / e->kv_bytes_per_seq;
        e->max_num_seqs = seqs > INT_MAX ? INT_MAX : (int)seqs;
    }
    e->fits = e->kv_pool_bytes >= e->kv_bytes;
    return LLMQ_OK;
}

int vram_min_tp(const vram_model *vm, const vram_opts *o) {
    for (int tp = 1; tp <= 64; tp++) {
        vram_opts t = *o;
        t.tp = tp;
        vram_estimate e;
        if (vram_estimate_run(&e, vm, &t, NULL) == LLMQ_OK && e.fits) return tp;
    }
    return 0;
}

/* ------------------------------------------------------------ devices */

#define MIB(x) ((int64_t)(x) << 20)

static const vram_gpu g_gpus[] = {
    {"T4", "T4 16G", MIB(15360), 1},
    {"A10G", "A10G 24G", MIB(23028), 1},
    {"L4", "L4 24G", MIB(23034), 1},
    {"A100-40G", "A100 40G", MIB(40960), 1},
    {"A100-80G", "A100 80G", MIB(81920), 1},
    {"H100", "H100 80G", MIB(81559), 1},
    {"H200", "H200 141G", MIB(143771), 1},
    {"L40S", "L40S 48G", MIB(46068), 0},
    {"A6000", "RTX A6000 48G", MIB(49140), 0},
};

const vram_gpu *vram_gpus(int *n) {
    *n = (int)(sizeof g_gpus / sizeof g_gpus[0]);
    return g_gpus;
}

const vram_gpu *vram_gpu_find(const char *name) {
    if (!strcasecmp(name, "A100")) name = "A100-80G";
    if (!strcasecmp(name, "H100-80G")) name = "H100";
    for (size_t i = 0; i < sizeof g_gpus / sizeof g_gpus[0]; i++)
        if (!strcasecmp(g_gpus[i].name, name)) return &g_gpus[i];
    return NULL;
}

int64_t vram_host_bytes(void) {
    long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    return pages > 0 && size > 0 ? (int64_t)pages * size : 0;
}

/* ------------------------------------------------------------ the worker */

llmq_status vram_worker_kv_blocks(vram_estimate *e, const char *dir, const char *backend, int tp, int max_num_seqs,
                                  int max_batched_tokens, double util, llmq_quant quant, const char *kv_dtype,
                                  llmq_err *err) {
    if (strncmp(backend, "cpu", 3))
        return llmq_err_set(err, LLMQ_ERR_UNSUPPORTED,
                            "--memory-utilization: the memory of backend '%s' is not known before it starts; give "
                            "--kv-blocks (`llmq vram --model %s --gpu NAME` prints kv_blocks)", backend, dir);
    vram_model vm;
    llmq_status st = vram_model_load(&vm, dir, err);
    if (st) return st;
    vram_opts o;
    memset(&o, 0, sizeof o);
    o.wdt = vm.stored; /* the CPU backend reads the matrices as stored, computes in F32 (act_bytes) */
    if ((st = eng_kv_dtype(kv_dtype, 1, LLMQ_F32, vm.stored, &o.kv_dt, err))) return st; /* as eng_create */
    o.quant = quant;
    o.tp = tp;
    o.max_num_seqs = max_num_seqs;
    o.max_batched_tokens = max_batched_tokens;
    o.util = util;
    o.device_bytes = vram_host_bytes() / (tp > 0 ? tp : 1); /* the ranks share the host */
    o.cpu = 1;
    if ((st = vram_estimate_run(e, &vm, &o, err))) return st;
    if (e->kv_blocks < 1)
        return llmq_err_set(err, LLMQ_ERR_NOMEM,
                            "--memory-utilization %.3g: %.1f MiB of %.1f MiB leave no room for the KV cache after "
                            "%.1f MiB of weights, %.1f MiB of activations and %.1f MiB of runtime",
                            util, e->budget_bytes / 1048576.0, e->device_bytes / 1048576.0,
                            e->weight_bytes / 1048576.0, e->act_bytes / 1048576.0, e->overhead_bytes / 1048576.0);
    return LLMQ_OK;
}
