/*
 * fuzz_config.c — config.json parsing (worker/model/config.c, model_config_parse)
 * on arbitrary bytes, then what the engine derives from a parsed config
 * (sliding windows per layer, rotary frequencies, EOS lookup).
 *
 * Invariants besides "no crash, no UB": a parsed config has positive shapes,
 * n_heads a multiple of n_kv_heads, an even head_dim, at most MODEL_MAX_EOS
 * EOS ids, and rotary frequencies that are not NaN.
 */
#include <math.h>
#include <string.h>

#include "tests/fuzz/fuzz.h"
#include "worker/model/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    model_config cfg;
    llmq_err err;
    llmq_err_clear(&err);
    if (model_config_parse(&cfg, (const char *)data, size, "config.json", &err) != LLMQ_OK) {
        fuzz_check(err.msg[0], "refused without a message");
        return 0;
    }
    fuzz_check(cfg.hidden_size > 0 && cfg.intermediate_size > 0 && cfg.n_layers > 0 && cfg.n_heads > 0 &&
                   cfg.n_kv_heads > 0 && cfg.vocab_size > 0 && cfg.head_dim > 0,
               "a shape is not positive");
    fuzz_check(cfg.n_heads % cfg.n_kv_heads == 0, "n_heads %d, n_kv_heads %d", cfg.n_heads, cfg.n_kv_heads);
    fuzz_check(cfg.head_dim % 2 == 0, "odd head_dim %d", cfg.head_dim);
    fuzz_check(cfg.n_eos >= 0 && cfg.n_eos <= MODEL_MAX_EOS, "n_eos %d", cfg.n_eos);
    fuzz_check(memchr(cfg.arch_name, '\0', sizeof cfg.arch_name) && memchr(cfg.torch_dtype, '\0', sizeof cfg.torch_dtype),
               "a name is not terminated");
    for (int l = 0; l < cfg.n_layers && l < 256; l++) fuzz_check(model_config_layer_window(&cfg, l) >= 0, "window");
    if (cfg.head_dim <= 4096) {
        float inv[2048];
        model_config_rope_inv_freq(&cfg, inv);
        for (int i = 0; i < cfg.head_dim / 2; i++) fuzz_check(!isnan(inv[i]), "inv_freq[%d] is NaN", i);
    }
    for (int i = 0; i < cfg.n_eos; i++) fuzz_check(model_config_is_eos(&cfg, cfg.eos_token_ids[i]), "eos lookup");
    return 0;
}
