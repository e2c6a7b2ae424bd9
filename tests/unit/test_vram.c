/*
 * test_vram.c — the memory estimator (worker/engine/vram.h):
 *
 *  - parameter counts from config arithmetic against the published ones
 *    (model cards / the Hub), within 0.5%;
 *  - the demos of the brief: Mistral 7B and Llama 3 8B in FP16 fit on 2 x T4
 *    and not on 1 x T4; Falcon 40B in FP16 on 8 x A10G and not on 4; in INT8
 *    one 48 GiB card holds Falcon 40B but a 40 GiB one does not;
 *  - KV cache per token for MHA, GQA, MQA, split and replicated KV heads,
 *    against eng_kv_bytes_per_token and hand arithmetic;
 *  - sharding: what the ranks hold adds up to the model plus what is
 *    replicated; a split that does not divide is refused as the engine does;
 *  - weight bytes against real checkpoints: the safetensors tensors of every
 *    fixture and stories260K, and what model_load / model_load_shard hold,
 *    unquantized and quantized;
 *  - the KV pool: blocks x block bytes fill the budget left after weights,
 *    activations and runtime, and one block more would not fit.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/testutil.h"
#include "worker/engine/engine.h"
#include "worker/model/model.h"
#include "worker/model/safetensors.h"
#include "worker/engine/vram.h"

static int setup(void **st) {
    (void)st;
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/tools/presets", tu_root());
    setenv("LLMQ_PRESETS", dir, 1);
    return 0;
}

static void load_preset(vram_model *vm, const char *name) {
    llmq_err err = {0};
    if (vram_model_load(vm, name, &err)) fail_msg("%s: %s", name, err.msg);
}

static vram_opts gpu_opts(const char *gpu, int tp, llmq_dtype dt, llmq_quant q) {
    vram_opts o;
    memset(&o, 0, sizeof o);
    o.wdt = o.kv_dt = dt;
    o.quant = q;
    o.tp = tp;
    o.util = 0.9;
    const vram_gpu *g = vram_gpu_find(gpu);
    if (g) o.device_bytes = g->bytes;
    else o.device_bytes = (int64_t)(atof(gpu) * (double)(1LL << 30));
    return o;
}

static int fits(const char *preset, const char *gpu, int tp, llmq_quant q) {
    vram_model vm;
    load_preset(&vm, preset);
    vram_opts o = gpu_opts(gpu, tp, LLMQ_F16, q);
    vram_estimate e;
    llmq_err err = {0};
    if (vram_estimate_run(&e, &vm, &o, &err)) fail_msg("%s tp %d: %s", preset, tp, err.msg);
    return e.fits;
}

static void test_params_match_published(void **st) {
    (void)st;
    static const struct {
        const char *preset;
        double published;
    } cases[] = {
        {"llama3-8b", 8.03e9},   {"mistral-7b", 7.24e9},  {"llama2-13b", 13.0e9},
        {"falcon-40b", 41.8e9},  {"mixtral-8x7b", 46.7e9}, {"llama3-70b", 70.6e9},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        vram_model vm;
        load_preset(&vm, cases[i].preset);
        const double p = (double)vram_params(&vm);
        print_message("%-13s %.4f B parameters (published %.2f B)\n", cases[i].preset, p / 1e9, cases[i].published / 1e9);
        if (fabs(p - cases[i].published) > 0.005 * cases[i].published)
            fail_msg("%s: %.4g parameters, published %.4g", cases[i].preset, p, cases[i].published);
    }
    /* the readers: Mixtral and Falcon through model_config's parser (the engine runs both); the
     * tolerant path counts only Llama-family configs the engine refuses */
    vram_model vm;
    load_preset(&vm, "mixtral-8x7b");
    assert_int_equal(vm.experts, 8);
    assert_int_equal(vm.family, VRAM_LLAMA);
    load_preset(&vm, "falcon-40b");
    assert_int_equal(vm.family, VRAM_FALCON);
    assert_int_equal(vm.kv_heads, 8);
    assert_int_equal(vm.inter, 4 * 8192);
    assert_int_equal(vm.falcon_ln_per_layer, 2);
    assert_int_equal(vm.tied, 0); /* lm_head_in_checkpoint */
    assert_int_equal(vm.max_pos, 2048);
    load_preset(&vm, "mistral-7b");
    assert_int_equal(vm.sliding_window, 0); /* v0.2: null */
    assert_int_equal(vm.stored, LLMQ_BF16);
}

/* A Falcon 7B config (multi-query, one LayerNorm per layer): the readers'
 * other branch.  Published 7.22B counts lm_head as stored.  With ALiBi
 * (which the engine refuses) the shapes, and so the count, are the same;
 * sequential attention has two LayerNorms per layer. */
static void test_falcon_7b_and_errors(void **st) {
    (void)st;
    static const char falcon7b[] =
        "{\"architectures\":[\"FalconForCausalLM\"],\"model_type\":\"falcon\",\"hidden_size\":4544,"
        "\"num_attention_heads\":71,\"num_hidden_layers\":32,\"multi_query\":true,\"parallel_attn\":true,"
        "\"new_decoder_architecture\":false,\"bias\":false,\"vocab_size\":65024,\"torch_dtype\":\"bfloat16\","
        "\"_llmq\":{\"lm_head_in_checkpoint\":true}}";
    vram_model vm;
    llmq_err err = {0};
    assert_int_equal(vram_model_parse(&vm, falcon7b, strlen(falcon7b), "falcon-7b", &err), LLMQ_OK);
    assert_int_equal(vm.kv_heads, 1);
    assert_int_equal(vm.head_dim, 64);
    assert_int_equal(vm.falcon_ln_per_layer, 1);
    const double p = (double)vram_params(&vm);
    assert_true(fabs(p - 7.22e9) < 0.005 * 7.22e9);
    vram_opts o = gpu_opts("A10G", 1, LLMQ_F16, LLMQ_QUANT_NONE);
    vram_estimate e;
    assert_int_equal(vram_estimate_run(&e, &vm, &o, &err), LLMQ_OK);
    assert_int_equal(e.kv_bytes_per_token, 2LL * 32 * 1 * 64 * 2); /* MQA */
    o.tp = 2; /* 71 heads do not split */
    assert_int_equal(vram_estimate_run(&e, &vm, &o, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "71 attention heads"));

    char alibi[sizeof falcon7b + 32];
    snprintf(alibi, sizeof alibi, "{\"alibi\":true,%s", falcon7b + 1);
    model_config cfg;
    assert_int_equal(model_config_parse(&cfg, alibi, strlen(alibi), "falcon-7b-alibi", &err), LLMQ_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "ALiBi"));
    vram_model va;
    assert_int_equal(vram_model_parse(&va, alibi, strlen(alibi), "falcon-7b", &err), LLMQ_OK);
    assert_int_equal(va.family, VRAM_FALCON);
    assert_int_equal(vram_params(&va), vram_params(&vm));
    char seq[sizeof falcon7b + 32];
    snprintf(seq, sizeof seq, "%s", falcon7b);
    char *pa = strstr(seq, "\"parallel_attn\":true");
    assert_non_null(pa);
    memcpy(pa + strlen("\"parallel_attn\":"), "0   ", 4); /* an integer reads as a boolean */
    assert_int_equal(vram_model_parse(&va, seq, strlen(seq), "falcon-7b-seq", &err), LLMQ_OK);
    assert_int_equal(va.falcon_ln_per_layer, 2);

    static const char gpt2[] = "{\"architectures\":[\"GPT2LMHeadModel\"],\"model_type\":\"gpt2\",\"n_embd\":768}";
    assert_int_equal(vram_model_parse(&vm, gpt2, strlen(gpt2), "gpt2", &err), LLMQ_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "GPT2LMHeadModel"));
    assert_int_equal(vram_model_load(&vm, "no-such-preset", &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "preset"));
    assert_int_equal(vram_model_parse(&vm, "{", 1, "bad", &err), LLMQ_ERR_FORMAT);
}

static void test_brief_demos(void **st) {
    (void)st;
    assert_false(fits("mistral-7b", "T4", 1, LLMQ_QUANT_NONE));
    assert_true(fits("mistral-7b", "T4", 2, LLMQ_QUANT_NONE));
    assert_false(fits("llama3-8b", "T4", 1, LLMQ_QUANT_NONE));
    assert_true(fits("llama3-8b", "T4", 2, LLMQ_QUANT_NONE));
    assert_true(fits("falcon-40b", "A10G", 8, LLMQ_QUANT_NONE));
    assert_false(fits("falcon-40b", "A10G", 4, LLMQ_QUANT_NONE));
    assert_true(fits("falcon-40b", "48", 1, LLMQ_QUANT_INT8));
    assert_true(fits("falcon-40b", "L40S", 1, LLMQ_QUANT_INT8));
    assert_false(fits("falcon-40b", "40", 1, LLMQ_QUANT_INT8));
    assert_false(fits("falcon-40b", "A100-40G", 1, LLMQ_QUANT_INT8));
    assert_true(fits("falcon-40b", "A100-40G", 1, LLMQ_QUANT_INT4));
    /* in INT8 the weights alone: over 40 GB (decimal) and under 48 GB */
    vram_model vm;
    load_preset(&vm, "falcon-40b");
    vram_opts o = gpu_opts("48", 1, LLMQ_F16, LLMQ_QUANT_INT8);
    vram_estimate e;
    assert_int_equal(vram_estimate_run(&e, &vm, &o, NULL), LLMQ_OK);
    assert_true(e.weight_bytes > 40e9 && e.weight_bytes < 48e9);

    /* the smallest group */
    load_preset(&vm, "mistral-7b");
    o = gpu_opts("T4", 1, LLMQ_F16, LLMQ_QUANT_NONE);
    assert_int_equal(vram_min_tp(&vm, &o), 2);
    o.quant = LLMQ_QUANT_INT8;
    assert_int_equal(vram_min_tp(&vm, &o), 1);
    load_preset(&vm, "falcon-40b");
    o = gpu_opts("A10G", 1, LLMQ_F16, LLMQ_QUANT_NONE);
    assert_int_equal(vram_min_tp(&vm, &o), 8); /* 5, 6, 7 do not divide 128 heads; 4 is too small */
    load_preset(&vm, "llama3-70b");
    o = gpu_opts("H100", 1, LLMQ_BF16, LLMQ_QUANT_NONE);
    assert_int_equal(vram_min_tp(&vm, &o), 2);

    /* more sequences need more memory; max_num_seqs is where it stops fitting */
    load_preset(&vm, "llama3-8b");
    o = gpu_opts("A100-80G", 1, LLMQ_BF16, LLMQ_QUANT_NONE);
    assert_int_equal(vram_estimate_run(&e, &vm, &o, NULL), LLMQ_OK);
    const int most = e.max_num_seqs;
    assert_true(most > 1);
    o.max_num_seqs = most;
    assert_int_equal(vram_estimate_run(&e, &vm, &o, NULL), LLMQ_OK);
    assert_true(e.fits);
    o.max_num_seqs = most + 1;
    assert_int_equal(vram_estimate_run(&e, &vm, &o, NULL), LLMQ_OK);
    assert_false(e.fits);
}

static void test_kv_per_token(void **st) {
    (void)st;
    vram_model vm;
    vram_estimate e;
    /* Llama 3 8B: 32 layers, 8 KV heads of 128, FP16 */
    load_preset(&vm, "llama3-8b");
    vram_opts o = gpu_opts("H100", 1, LLMQ_F16, LLMQ_QUANT_NONE);
    static const struct { int tp, kv_heads; } split[] = {{1, 8}, {2, 4}, {4, 2}, {8, 1}, {16, 1}, {32, 1}};
    for (size_t i = 0; i < sizeof split / sizeof split[0]; i++) {
        o.tp = split[i].tp;
        assert_int_equal(vram_estimate_run(&e, &vm, &o, NULL), LLMQ_OK);
        assert_int_equal(e.kv_heads_per_gpu, split[i].kv_heads); /* replicated beyond 8 ranks */
        assert_int_equal(e.kv_bytes_per_token, 2LL * 32 * split[i].kv_heads * 128 * 2);
    }
    /* Llama 2 13B: MHA, 40 heads, 40 layers */
    load_preset(&vm, "llama2-13b");
    o.tp = 1;
    assert_int_equal(vram_estimate_run(&e, &vm, &o, NULL), LLMQ_OK);
    assert_int_equal(e.kv_bytes_per_token, 2LL * 40 * 40 * 128 * 2); /* 800 KiB: 6.25x Llama 3 8B */
    /* a sequence is whole blocks */
    o.max_model_len = 17;
    assert_int_equal(vram_estimate_run(&e, &vm, &o, NULL), LLMQ_OK);
    assert_int_equal(e.kv_bytes_per_seq, 2 * ENG_BLOCK_SIZE * e.kv_bytes_per_token);
    /* the engine's own figure on real configs (one rank, F32 on the CPU) */
    static const char *const fixtures[] = {"llama_mha", "llama_gqa_tied", "llama_h8_kv1", "mistral_window", "qwen2_bias"};
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++) {
        char dir[4200];
        snprintf(dir, sizeof dir, "%s/tests/fixtures/hf/%s", tu_root(), fixtures[i]);
        model_config cfg;
        assert_int_equal(model_config_load(&cfg, dir, NULL), LLMQ_OK);
        assert_int_equal(vram_model_load(&vm, dir, NULL), LLMQ_OK);
        o = gpu_opts("H100", 1, LLMQ_F32, LLMQ_QUANT_NONE);
        assert_int_equal(vram_estimate_run(&e, &vm, &o, NULL), LLMQ_OK);
        assert_int_equal(e.kv_bytes_per_token, (int64_t)eng_kv_bytes_per_token(&cfg, LLMQ_F32));
    }
}

/* What the ranks hold adds up: tp x rank - whole = (tp - 1) x replicated. */
static void test_shards_add_up(void **st) {
    (void)st;
    vram_model vm;
    vram_estimate e1, e;
    load_preset(&vm, "llama3-8b");
    vram_opts o = gpu_opts("H100", 1, LLMQ_BF16, LLMQ_QUANT_NONE);
    assert_int_equal(vram_estimate_run(&e1, &vm, &o, NULL), LLMQ_OK);
    const int64_t norms = (2LL * vm.layers + 1) * vm.hidden * 4; /* F32 norm vectors on every rank */
    for (int tp = 2; tp <= 8; tp *= 2) {
        o.tp = tp;
        assert_int_equal(vram_estimate_run(&e, &vm, &o, NULL), LLMQ_OK);
        assert_int_equal(tp * e.weight_bytes - e1.weight_bytes, (tp - 1) * norms);
    }
    /* beyond 8 ranks each keeps a replica of its KV head: more than 1/tp */
    o.tp = 16;
    assert_int_equal(vram_estimate_run(&e, &vm, &o, NULL), LLMQ_OK);
    assert_true(16 * e.weight_bytes - e1.weight_bytes > 15 * norms);
    /* a split that does not divide is refused, naming why */
    llmq_err err = {0};
    o.tp = 3;
    assert_int_equal(vram_estimate_run(&e, &vm, &o, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "do not divide by 3"));
    /* Mixtral: every expert split, the router replicated */
    load_preset(&vm, "mixtral-8x7b");
    o.tp = 1;
    assert_int_equal(vram_estimate_run(&e1, &vm, &o, NULL), LLMQ_OK);
    o.tp = 2;
    assert_int_equal(vram_estimate_run(&e, &vm, &o, NULL), LLMQ_OK);
    assert_int_equal(2 * e.weight_bytes - e1.weight_bytes,
                     (2LL * vm.layers + 1) * vm.hidden * 4 + (int64_t)vm.layers * 8 * vm.hidden * 2);
}

/* Sum over a checkpoint's tensors: matrices as stored, vectors as the F32
 * buffers the engine converts them to. */
static int64_t checkpoint_bytes(const char *dir) {
    st_set *s = NULL;
    llmq_err err = {0};
    if (st_open_dir(&s, dir, &err)) fail_msg("%s", err.msg);
    int64_t b = 0;
    for (size_t i = 0; i < st_count(s); i++) {
        const st_tensor *t = st_at(s, i);
        b += t->ndim == 2 ? (int64_t)t->nbytes : (int64_t)t->shape[0] * 4;
    }
    st_close(s);
    return b;
}

static vram_opts cpu_opts(const vram_model *vm, int tp, llmq_quant q) {
    vram_opts o;
    memset(&o, 0, sizeof o);
    o.wdt = vm->stored;
    o.kv_dt = LLMQ_F32;
    o.quant = q;
    o.tp = tp;
    o.cpu = 1;
    o.device_bytes = 1LL << 34;
    return o;
}

static void check_model_dir(const char *dir, int tp_max) {
    vram_model vm;
    llmq_err err = {0};
    if (vram_model_load(&vm, dir, &err)) fail_msg("%s", err.msg);
    vram_estimate e;
    vram_opts o = cpu_opts(&vm, 1, LLMQ_QUANT_NONE);
    assert_int_equal(vram_estimate_run(&e, &vm, &o, NULL), LLMQ_OK);
    const int64_t ck = checkpoint_bytes(dir);
    if (e.weight_bytes != ck)
        fail_msg("%s: estimator %lld bytes, checkpoint %lld", dir, (long long)e.weight_bytes, (long long)ck);
    /* what the loader holds, per rank, unquantized and quantized */
    llmq_backend *be = llmq_backend_create("cpu", NULL);
    for (int q = LLMQ_QUANT_NONE; q <= LLMQ_QUANT_INT4; q++)
        for (int tp = 1; tp <= tp_max; tp *= 2) {
            o = cpu_opts(&vm, tp, (llmq_quant)q);
            if (vram_estimate_run(&e, &vm, &o, NULL)) continue; /* not divisible: nothing to compare */
            model_load_opts lo = {(llmq_quant)q, 0};
            for (int rank = 0; rank < tp; rank += tp - 1 > 0 ? tp - 1 : 1) {
                model *m = NULL;
                if (model_load_shard(&m, dir, be, &lo, rank, tp, &err)) fail_msg("%s: %s", dir, err.msg);
                /* model.c counts vectors as stored; the estimator as held (F32) */
                int64_t held = (int64_t)m->weight_bytes;
                if (vm.stored != LLMQ_F32) {
                    const int64_t vec = ((int64_t)m->cfg.n_layers * 2 + 1) * m->cfg.hidden_size;
                    held += vec * (4 - (int64_t)llmq_dtype_size(vm.stored));
                }
                /* rank 0 holds the row-parallel biases; the estimator counts rank 0 */
                if (rank == 0 && held != e.weight_bytes)
                    fail_msg("%s %s tp %d: loader holds %lld bytes, estimator %lld", dir, llmq_quant_name((llmq_quant)q),
                             tp, (long long)held, (long long)e.weight_bytes);
                if (rank > 0) assert_true(held <= e.weight_bytes);
                model_destroy(m);
            }
        }
    llmq_backend_destroy(be);
}

static void test_weight_bytes_of_real_checkpoints(void **st) {
    (void)st;
    char base[4096];
    snprintf(base, sizeof base, "%s/tests/fixtures/hf", tu_root());
    DIR *d = opendir(base);
    assert_non_null(d);
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char dir[4400];
        snprintf(dir, sizeof dir, "%s/%s", base, de->d_name);
        check_model_dir(dir, 4);
        n++;
    }
    closedir(d);
    assert_true(n >= 8);
    const char *shared = tu_shared();
    if (shared) {
        char dir[4200];
        snprintf(dir, sizeof dir, "%s/models/stories260K", shared);
        check_model_dir(dir, 4);
        vram_model vm;
        assert_int_equal(vram_model_load(&vm, dir, NULL), LLMQ_OK);
        assert_int_equal(vram_params(&vm), 260032); /* llama2.c's stories260K */
    }
}

/* The KV pool fills what is left, to the block. */
static void test_kv_pool(void **st) {
    (void)st;
    vram_model vm;
    load_preset(&vm, "llama3-8b");
    vram_opts o = gpu_opts("L4", 1, LLMQ_BF16, LLMQ_QUANT_NONE);
    o.max_batched_tokens = 2048;
    o.max_num_seqs = 64;
    vram_estimate e;
    assert_int_equal(vram_estimate_run(&e, &vm, &o, NULL), LLMQ_OK);
    const int64_t block = e.kv_bytes_per_token * ENG_BLOCK_SIZE;
    assert_true(e.kv_blocks > 0);
    assert_true((int64_t)e.kv_blocks * block <= e.kv_pool_bytes);
    assert_true((int64_t)(e.kv_blocks + 1) * block > e.kv_pool_bytes);
    assert_int_equal(e.kv_pool_bytes, e.budget_bytes - e.weight_bytes - e.act_bytes - e.overhead_bytes);
    assert_int_equal(e.overhead_bytes, VRAM_CUDA_CONTEXT_BYTES + VRAM_CUBLAS_WORKSPACE);
    assert_int_equal(e.budget_bytes, (int64_t)(0.9 * (double)vram_gpu_find("L4")->bytes));
    /* a bigger step budget costs activations, so fewer blocks */
    vram_estimate e2;
    o.max_batched_tokens = 8192;
    assert_int_equal(vram_estimate_run(&e2, &vm, &o, NULL), LLMQ_OK);
    assert_true(e2.act_bytes > e.act_bytes && e2.kv_blocks < e.kv_blocks);
    /* NCCL only with tensor parallelism */
    o.tp = 2;
    assert_int_equal(vram_estimate_run(&e2, &vm, &o, NULL), LLMQ_OK);
    assert_int_equal(e2.overhead_bytes, VRAM_CUDA_CONTEXT_BYTES + VRAM_CUBLAS_WORKSPACE + VRAM_NCCL_BYTES);
    /* the worker's entry point refuses what it cannot size */
    llmq_err err = {0};
    assert_int_equal(vram_worker_kv_blocks(&e, "x", "cuda", 1, 32, 512, 0.9, LLMQ_QUANT_NONE, NULL, &err),
                     LLMQ_ERR_UNSUPPORTED);
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/hf/llama_mha", tu_root());
    assert_int_equal(vram_worker_kv_blocks(&e, dir, "cpu", 1, 32, 512, 1e-9, LLMQ_QUANT_NONE, NULL, &err), LLMQ_ERR_NOMEM);
    assert_non_null(strstr(err.msg, "no room for the KV cache"));
    assert_int_equal(vram_worker_kv_blocks(&e, dir, "cpu", 1, 32, 512, 0.01, LLMQ_QUANT_NONE, NULL, &err), LLMQ_OK);
    assert_true(e.kv_blocks > 0);
    assert_int_equal(e.device_bytes, vram_host_bytes());
}

static void test_gpu_table(void **st) {
    (void)st;
    int n = 0;
    const vram_gpu *g = vram_gpus(&n);
    int listed = 0;
    for (int i = 0; i < n; i++) listed += g[i].in_table;
    assert_int_equal(listed, 7); /* T4, A10G, L4, A100 40G/80G, H100, H200 */
    assert_int_equal(vram_gpu_find("t4")->bytes, 15360LL << 20);
    assert_int_equal(vram_gpu_find("A100")->bytes, 81920LL << 20);
    assert_non_null(vram_gpu_find("H200"));
    assert_null(vram_gpu_find("V100"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_params_match_published),
        cmocka_unit_test(test_falcon_7b_and_errors),
        cmocka_unit_test(test_brief_demos),
        cmocka_unit_test(test_kv_per_token),
        cmocka_unit_test(test_shards_add_up),
        cmocka_unit_test(test_weight_bytes_of_real_checkpoints),
        cmocka_unit_test(test_kv_pool),
        cmocka_unit_test(test_gpu_table),
    };
    return cmocka_run_group_tests_name("vram", tests, setup, NULL);
}
