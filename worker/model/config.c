/*
 * config.c — config.json / generation_config.json parsing (see config.h).
 *
 * Strict where a wrong value would silently compute garbage (shapes must be
 * positive and consistent, the activation must be SiLU), lenient where
 * Hugging Face itself is (unknown keys are ignored; rope parameters may sit at
 * the top level or, as transformers 5 writes them, under "rope_parameters").
 */
#include "worker/model/config.h"

#include <jansson.h>
#include <math.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---------------------------------------------------------------- helpers */

static int json_get_int(json_t *o, const char *key, int dflt, int *out, const char *name, llmq_err *err) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) { *out = dflt; return 0; }
    if (!json_is_integer(v)) {
        llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: \"%s\" must be an integer", name, key);
        return -1;
    }
    json_int_t x = json_integer_value(v);
    if (x < -1 || x > 0x7fffffff) {
        llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: \"%s\" = %lld is out of range", name, key, (long long)x);
        return -1;
    }
    *out = (int)x;
    return 0;
}

static int json_get_num(json_t *o, const char *key, double dflt, double *out, const char *name, llmq_err *err) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) { *out = dflt; return 0; }
    if (!json_is_number(v)) {
        llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: \"%s\" must be a number", name, key);
        return -1;
    }
    *out = json_number_value(v);
    return 0;
}

static int json_get_bool(json_t *o, const char *key, int dflt) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return dflt;
    if (json_is_boolean(v)) return json_is_true(v);
    if (json_is_integer(v)) return json_integer_value(v) != 0;
    return dflt;
}

/* eos_token_id may be an int or a list of ints. Replaces cfg's list when present. */
static int parse_eos(model_config *cfg, json_t *o, const char *name, llmq_err *err) {
    json_t *v = json_object_get(o, "eos_token_id");
    if (!v || json_is_null(v)) return 0;
    int n = 0;
    if (json_is_integer(v)) {
        cfg->eos_token_ids[n++] = (int32_t)json_integer_value(v);
    } else if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            if (!json_is_integer(e)) {
                llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: \"eos_token_id\" must hold integers", name);
                return -1;
            }
            if (n == MODEL_MAX_EOS) {
                llmq_err_set(err, LLMQ_ERR_UNSUPPORTED, "%s: more than %d eos_token_id values", name, MODEL_MAX_EOS);
                return -1;
            }
            cfg->eos_token_ids[n++] = (int32_t)json_integer_value(e);
        }
    } else {
        llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: \"eos_token_id\" must be an integer or a list", name);
        return -1;
    }
    cfg->n_eos = n;
    return 0;
}

static int parse_rope(model_config *cfg, json_t *root, const char *name, llmq_err *err) {
    double theta;
    json_t *params = json_object_get(root, "rope_parameters");
    json_t *scaling = json_object_get(root, "rope_scaling");
    if (json_is_object(params)) {
        if (json_get_num(params, "rope_theta", 10000.0, &theta, name, err)) return -1;
        if (!json_is_object(scaling)) scaling = params;
    } else if (json_get_num(root, "rope_theta", 10000.0, &theta, name, err)) {
        return -1;
    }
    if (theta <= 0) return llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: rope_theta must be positive", name), -1;
    cfg->rope_theta = (float)theta;
    cfg->rope_type = ROPE_NONE;
    cfg->rope_factor = 1.0f;
    if (!json_is_object(scaling)) return 0;

    json_t *t = json_object_get(scaling, "rope_type");
    if (!json_is_string(t)) t = json_object_get(scaling, "type");
    const char *type = json_is_string(t) ? json_string_value(t) : "default";
    double factor, lo, hi;
    int orig;
    if (json_get_num(scaling, "factor", 1.0, &factor, name, err) ||
        json_get_num(scaling, "low_freq_factor", 1.0, &lo, name, err) ||
        json_get_num(scaling, "high_freq_factor", 4.0, &hi, name, err) ||
        json_get_int(scaling, "original_max_position_embeddings", 8192, &orig, name, err))
        return -1;
    if (!strcmp(type, "default")) return 0;
    if (factor <= 0) return llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: rope_scaling factor must be positive", name), -1;
    cfg->rope_factor = (float)factor;
    if (!strcmp(type, "linear")) {
        cfg->rope_type = ROPE_LINEAR;
    } else if (!strcmp(type, "llama3")) {
        if (hi <= lo || orig <= 0)
            return llmq_err_set(err, LLMQ_ERR_FORMAT,
                                "%s: llama3 rope_scaling needs high_freq_factor > low_freq_factor", name), -1;
        cfg->rope_type = ROPE_LLAMA3;
        cfg->rope_low_freq_factor = (float)lo;
        cfg->rope_high_freq_factor = (float)hi;
        cfg->rope_orig_max_pos = orig;
    } else {
        return llmq_err_set(err, LLMQ_ERR_UNSUPPORTED,
                            "%s: rope_scaling type \"%s\" is not supported (supported: linear, llama3)",
                            name, type), -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- parse */

/* The first of several names a key has been written under. */
static int json_get_int_alias(json_t *o, const char *const *keys, int dflt, int *out, const char *name,
                              llmq_err *err) {
    for (; *keys; keys++)
        if (json_object_get(o, *keys) && !json_is_null(json_object_get(o, *keys)))
            return json_get_int(o, *keys, dflt, out, name, err);
    *out = dflt;
    return 0;
}

/* Falcon (FalconConfig, and the older RW configs with n_head / n_layer):
 * the fields and defaults transformers' FalconConfig and FalconModel use.
 * shapes_only: what the engine cannot compute but whose shapes are those
 * of a rotary GELU Falcon (ALiBi, another activation) is read all the same. */
static llmq_status parse_falcon(model_config *cfg, json_t *root, const char *name, int shapes_only, llmq_err *err) {
    static const char *const k_heads[] = {"num_attention_heads", "n_head", NULL};
    static const char *const k_kv[] = {"num_kv_heads", "n_head_kv", NULL};
    static const char *const k_layers[] = {"num_hidden_layers", "n_layer", NULL};
    const llmq_status st = LLMQ_ERR_FORMAT;
    double eps;
    int kv = 0, ffn = 0, n_ln = 0;
    if (json_get_int(root, "hidden_size", 0, &cfg->hidden_size, name, err) ||
        json_get_int_alias(root, k_heads, 0, &cfg->n_heads, name, err) ||
        json_get_int_alias(root, k_kv, 0, &kv, name, err) ||
        json_get_int_alias(root, k_layers, 0, &cfg->n_layers, name, err) ||
        json_get_int(root, "vocab_size", 0, &cfg->vocab_size, name, err) ||
        json_get_int(root, "ffn_hidden_size", 0, &ffn, name, err) ||
        json_get_int(root, "num_ln_in_parallel_attn", 0, &n_ln, name, err) ||
        json_get_int(root, "max_position_embeddings", 2048, &cfg->max_position_embeddings, name, err) ||
        json_get_num(root, "layer_norm_epsilon", 1e-5, &eps, name, err) ||
        json_get_int(root, "bos_token_id", -1, &cfg->bos_token_id, name, err) || parse_eos(cfg, root, name, err) ||
        parse_rope(cfg, root, name, err))
        return err ? err->code : st;
    if (cfg->hidden_size <= 0 || cfg->n_heads <= 0 || cfg->n_layers <= 0 || cfg->vocab_size <= 0)
        return llmq_err_set(err, st, "%s: hidden_size, num_attention_heads, num_hidden_layers and vocab_size must be "
                            "positive", name);
    if (!shapes_only && json_get_bool(root, "alibi", 0))
        return llmq_err_set(err, LLMQ_ERR_UNSUPPORTED, "%s: Falcon with ALiBi is not supported (rotary only)", name);
    json_t *act = json_object_get(root, "activation");
    if (!shapes_only && act && !(json_is_string(act) && !strcmp(json_string_value(act), "gelu")))
        return llmq_err_set(err, LLMQ_ERR_UNSUPPORTED, "%s: Falcon activation \"%s\" is not supported (only gelu)",
                            name, json_is_string(act) ? json_string_value(act) : "?");
    const int new_arch = json_get_bool(root, "new_decoder_architecture", 0);
    const int multi_query = json_get_bool(root, "multi_query", 1);
    cfg->parallel_attn = new_arch || json_get_bool(root, "parallel_attn", 1);
    if (new_arch) {
        cfg->qkv = QKV_GROUPED;
        cfg->n_kv_heads = kv > 0 ? kv : cfg->n_heads;
        cfg->two_ln = n_ln != 1;
    } else if (multi_query) {
        cfg->qkv = QKV_MULTI_QUERY;
        cfg->n_kv_heads = 1;
    } else {
        cfg->qkv = QKV_INTERLEAVED;
        cfg->n_kv_heads = cfg->n_heads;
    }
    if (cfg->n_heads % cfg->n_kv_heads)
        return llmq_err_set(err, st, "%s: %d attention heads do not divide into %d KV heads", name, cfg->n_heads,
                            cfg->n_kv_heads);
    if (cfg->hidden_size % cfg->n_heads || (cfg->hidden_size / cfg->n_heads) % 2)
        return llmq_err_set(err, st, "%s: hidden_size %d must divide into %d heads of an even size", name,
                            cfg->hidden_size, cfg->n_heads);
    cfg->head_dim = cfg->hidden_size / cfg->n_heads;
    cfg->intermediate_size = ffn > 0 ? ffn : 4 * cfg->hidden_size;
    cfg->rms_norm_eps = (float)eps;
    const int bias = json_get_bool(root, "bias", 0);
    cfg->qkv_bias = cfg->o_bias = cfg->mlp_bias = bias;
    cfg->tie_word_embeddings = json_get_bool(root, "tie_word_embeddings", 1);
    json_t *dt = json_object_get(root, "torch_dtype");
    if (!json_is_string(dt)) dt = json_object_get(root, "dtype");
    snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "%s", json_is_string(dt) ? json_string_value(dt) : "");
    return LLMQ_OK;
}

static llmq_status parse_config(model_config *cfg, const char *json, size_t len, const char *name, int shapes_only,
                                llmq_err *err) {
    memset(cfg, 0, sizeof *cfg);
    json_error_t jerr;
    json_t *root = json_loadb(json, len, 0, &jerr);
    if (!root)
        return llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: invalid JSON at line %d: %s", name, jerr.line, jerr.text);
    llmq_status st = LLMQ_ERR_FORMAT;
    if (!json_is_object(root)) {
        llmq_err_set(err, st, "%s: top level must be an object", name);
        goto out;
    }

    json_t *archs = json_object_get(root, "architectures");
    json_t *a0 = json_is_array(archs) ? json_array_get(archs, 0) : NULL;
    if (!json_is_string(a0)) {
        llmq_err_set(err, st, "%s: \"architectures\" must be a list naming the model class", name);
        goto out;
    }
    snprintf(cfg->arch_name, sizeof cfg->arch_name, "%s", json_string_value(a0));
    if (!strcmp(cfg->arch_name, "LlamaForCausalLM")) cfg->arch = ARCH_LLAMA;
    else if (!strcmp(cfg->arch_name, "MistralForCausalLM")) cfg->arch = ARCH_MISTRAL;
    else if (!strcmp(cfg->arch_name, "MixtralForCausalLM")) cfg->arch = ARCH_MIXTRAL;
    else if (!strcmp(cfg->arch_name, "Qwen2ForCausalLM")) cfg->arch = ARCH_QWEN2;
    else if (!strcmp(cfg->arch_name, "FalconForCausalLM") || !strcmp(cfg->arch_name, "RWForCausalLM")) {
        cfg->arch = ARCH_FALCON;
        st = parse_falcon(cfg, root, name, shapes_only, err);
        goto out;
    } else {
        st = llmq_err_set(err, LLMQ_ERR_UNSUPPORTED,
                          "%s: architecture \"%s\" is not supported (supported: LlamaForCausalLM, "
                          "MistralForCausalLM, MixtralForCausalLM, Qwen2ForCausalLM, FalconForCausalLM)", name, json_string_value(a0));
        goto out;
    }

    int head_dim;
    double eps;
    if (json_get_int(root, "hidden_size", 0, &cfg->hidden_size, name, err) ||
        json_get_int(root, "intermediate_size", 0, &cfg->intermediate_size, name, err) ||
        json_get_int(root, "num_hidden_layers", 0, &cfg->n_layers, name, err) ||
        json_get_int(root, "num_attention_heads", 0, &cfg->n_heads, name, err) ||
        json_get_int(root, "num_key_value_heads", 0, &cfg->n_kv_heads, name, err) ||
        json_get_int(root, "head_dim", 0, &head_dim, name, err) ||
        json_get_int(root, "vocab_size", 0, &cfg->vocab_size, name, err) ||
        json_get_int(root, "max_position_embeddings", 2048, &cfg->max_position_embeddings, name, err) ||
        json_get_num(root, "rms_norm_eps", 1e-6, &eps, name, err) ||
        json_get_int(root, "bos_token_id", -1, &cfg->bos_token_id, name, err) ||
        parse_eos(cfg, root, name, err) || parse_rope(cfg, root, name, err))
        goto out;
    if (cfg->n_kv_heads == 0) cfg->n_kv_heads = cfg->n_heads;
    cfg->rms_norm_eps = (float)eps;

    static const char *const need[] = {"hidden_size", "intermediate_size", "num_hidden_layers",
                                       "num_attention_heads", "vocab_size"};
    const int vals[] = {cfg->hidden_size, cfg->intermediate_size, cfg->n_layers, cfg->n_heads, cfg->vocab_size};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++)
        if (vals[i] <= 0) {
            llmq_err_set(err, st, "%s: \"%s\" must be a positive integer", name, need[i]);
            goto out;
        }
    if (cfg->n_kv_heads <= 0 || cfg->n_heads % cfg->n_kv_heads) {
        llmq_err_set(err, st, "%s: num_attention_heads (%d) must be a multiple of num_key_value_heads (%d)", name,
                     cfg->n_heads, cfg->n_kv_heads);
        goto out;
    }
    if (head_dim <= 0) {
        if (cfg->hidden_size % cfg->n_heads) {
            llmq_err_set(err, st, "%s: hidden_size %d does not divide into %d heads", name, cfg->hidden_size,
                         cfg->n_heads);
            goto out;
        }
        head_dim = cfg->hidden_size / cfg->n_heads;
    }
    if (head_dim % 2) {
        llmq_err_set(err, st, "%s: head_dim %d must be even for rotary embeddings", name, head_dim);
        goto out;
    }
    cfg->head_dim = head_dim;

    json_t *act = json_object_get(root, "hidden_act");
    if (!act) act = json_object_get(root, "hidden_activation");
    if (act && !(json_is_string(act) && !strcmp(json_string_value(act), "silu"))) {
        st = llmq_err_set(err, LLMQ_ERR_UNSUPPORTED, "%s: hidden_act \"%s\" is not supported (only silu)", name,
                          json_is_string(act) ? json_string_value(act) : "?");
        goto out;
    }

    /* Llama and Mistral tie by default only when the config says so; the
     * transformers default for the key is true, for Qwen2 and Mixtral false. */
    cfg->tie_word_embeddings =
        json_get_bool(root, "tie_word_embeddings", cfg->arch == ARCH_QWEN2 || cfg->arch == ARCH_MIXTRAL ? 0 : 1);
    int attention_bias = json_get_bool(root, "attention_bias", 0);
    cfg->qkv_bias = cfg->arch == ARCH_QWEN2 ? 1 : attention_bias;
    cfg->o_bias = cfg->arch == ARCH_QWEN2 ? 0 : attention_bias;
    cfg->mlp_bias = cfg->arch == ARCH_LLAMA ? json_get_bool(root, "mlp_bias", 0) : 0;

    int window = 0;
    if (json_get_int(root, "sliding_window", 0, &window, name, err)) goto out;
    if (window < 0) window = 0;
    if (cfg->arch == ARCH_MISTRAL || cfg->arch == ARCH_MIXTRAL) {
        cfg->sliding_window = window;
    } else if (cfg->arch == ARCH_QWEN2 && json_get_bool(root, "use_sliding_window", 0)) {
        cfg->sliding_window = window;
        if (json_get_int(root, "max_window_layers", 0, &cfg->max_window_layers, name, err)) goto out;
    }

    if (cfg->arch == ARCH_MIXTRAL) {
        /* MixtralConfig's defaults: 8 experts, 2 per token */
        if (json_get_int(root, "num_local_experts", 8, &cfg->n_experts, name, err) ||
            json_get_int(root, "num_experts_per_tok", 2, &cfg->top_k, name, err))
            goto out;
        if (cfg->n_experts < 1 || cfg->n_experts > MODEL_MAX_EXPERTS || cfg->top_k < 1 ||
            cfg->top_k > cfg->n_experts) {
            llmq_err_set(err, st, "%s: num_local_experts %d and num_experts_per_tok %d: need 1 <= experts per token "
                         "<= experts <= %d", name, cfg->n_experts, cfg->top_k, MODEL_MAX_EXPERTS);
            goto out;
        }
    }

    json_t *dt = json_object_get(root, "torch_dtype");
    if (!json_is_string(dt)) dt = json_object_get(root, "dtype");
    snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "%s", json_is_string(dt) ? json_string_value(dt) : "");
    st = LLMQ_OK;
out:
    json_decref(root);
    return st;
}

llmq_status model_config_parse(model_config *cfg, const char *json, size_t len, const char *name, llmq_err *err) {
    return parse_config(cfg, json, len, name, 0, err);
}

llmq_status model_config_parse_shapes(model_config *cfg, const char *json, size_t len, const char *name,
                                      llmq_err *err) {
    return parse_config(cfg, json, len, name, 1, err);
}

char *model_file_read(const char *path, size_t max_bytes, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && (size_t)n < max_bytes && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1))) {
            if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
                free(buf);
                buf = NULL;
            } else {
                buf[n] = '\0';
                *len = (size_t)n;
            }
        }
    }
    fclose(f);
    return buf;
}

llmq_status model_config_load(model_config *cfg, const char *path, llmq_err *err) {
    char cfg_path[4096], gen_path[4096];
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        snprintf(cfg_path, sizeof cfg_path, "%s/config.json", path);
        snprintf(gen_path, sizeof gen_path, "%s/generation_config.json", path);
    } else {
        snprintf(cfg_path, sizeof cfg_path, "%s", path);
        const char *slash = strrchr(path, '/');
        int dirlen = slash ? (int)(slash - path) : 1;
        snprintf(gen_path, sizeof gen_path, "%.*s/generation_config.json", dirlen, slash ? path : ".");
    }
    size_t len = 0;
    char *buf = model_file_read(cfg_path, (size_t)64 << 20, &len);
    if (!buf) return llmq_err_set(err, LLMQ_ERR_IO, "%s: cannot read: %s", cfg_path, strerror(errno));
    llmq_status st = model_config_parse(cfg, buf, len, cfg_path, err);
    free(buf);
    if (st) return st;

    buf = model_file_read(gen_path, (size_t)64 << 20, &len);
    if (buf) {
        json_error_t jerr;
        json_t *g = json_loadb(buf, len, 0, &jerr);
        free(buf);
        if (!g || !json_is_object(g)) {
            json_decref(g);
            return llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: invalid JSON", gen_path);
        }
        int bos;
        if (parse_eos(cfg, g, gen_path, err) || json_get_int(g, "bos_token_id", cfg->bos_token_id, &bos, gen_path, err)) {
            json_decref(g);
            return err ? err->code : LLMQ_ERR_FORMAT;
        }
        cfg->bos_token_id = bos;
        json_decref(g);
    }
    return LLMQ_OK;
}

/* ---------------------------------------------------------------- derived */

int model_config_layer_window(const model_config *cfg, int layer) {
    if (cfg->sliding_window <= 0) return 0;
    if (cfg->arch == ARCH_QWEN2 && layer < cfg->max_window_layers) return 0;
    return cfg->sliding_window;
}

void model_config_rope_inv_freq(const model_config *cfg, float *inv_freq) {
    const int half = cfg->head_dim / 2;
    for (int i = 0; i < half; i++) {
        /* Same arithmetic as transformers: float32 exponent, float32 result. */
        float expo = (float)(2 * i) / (float)cfg->head_dim;
        float f = 1.0f / powf(cfg->rope_theta, expo);
        if (cfg->rope_type == ROPE_LINEAR) {
            f /= cfg->rope_factor;
        } else if (cfg->rope_type == ROPE_LLAMA3) {
            const float pi = 3.14159265358979323846f;
            float old = (float)cfg->rope_orig_max_pos;
            float lo_wl = old / cfg->rope_low_freq_factor;
            float hi_wl = old / cfg->rope_high_freq_factor;
            float wavelen = 2.0f * pi / f;
            if (wavelen > lo_wl) {
                f /= cfg->rope_factor;
            } else if (wavelen >= hi_wl) {
                float smooth = (old / wavelen - cfg->rope_low_freq_factor) /
                               (cfg->rope_high_freq_factor - cfg->rope_low_freq_factor);
                f = (1.0f - smooth) * f / cfg->rope_factor + smooth * f;
            }
        }
        inv_freq[i] = f;
    }
}

int model_config_is_eos(const model_config *cfg, int32_t id) {
    for (int i = 0; i < cfg->n_eos; i++)
        if (cfg->eos_token_ids[i] == id) return 1;
    return 0;
}
