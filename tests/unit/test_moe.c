/*
 * test_moe.c — Mixtral's mixture-of-experts MLP (be_ops.moe, kernels/cpu/moe.c)
 * and the Mixtral model around it (tests/fixtures/hf/mixtral_*, made by
 * transformers: test_engine.c checks their logits and test_generate.py their
 * greedy ids; here what those do not):
 *
 *  - tensor parallel 2 and 4 (every expert split, the router replicated, one
 *    all-reduce per layer) give the logits of one rank within 1e-4;
 *  - the op against a plain double-precision computation written here, on
 *    rows whose experts overlap, are disjoint, tie, and come in a selection
 *    order other than the experts' order; the fast and reference backends;
 *  - batch invariance: a row's bits are those it gets alone, in the op and
 *    through the engine (a prompt alone and inside a batch with others whose
 *    tokens choose the same experts);
 *  - the memory estimator: a Mixtral's experts and router in the weights
 *    (the loader's bytes), the op's scratch in the activations (the
 *    engine's own allocations, counted by a wrapped backend);
 *  - refusals: a top-k beyond the experts, a backend without the op.
 *
 * The TP groups run first, so that no rank is forked from a process whose
 * OpenMP pool already exists.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/unit/testutil.h"
#include "worker/engine/engine.h"
#include "worker/engine/tp.h"
#include "worker/engine/vram.h"
#include "worker/model/model.h"

#define MAX_PROMPTS 3
#define MAX_LEN 64

typedef struct prompts {
    int n;
    int32_t ids[MAX_PROMPTS][MAX_LEN];
    int len[MAX_PROMPTS];
} prompts;

static void fixture_dir(char *dir, size_t cap, const char *variant) {
    snprintf(dir, cap, "%.3800s/tests/fixtures/hf/%s", tu_root(), variant);
}

static void load_prompts(prompts *p, const char *dir) {
    char path[4200];
    snprintf(path, sizeof path, "%.4000s/expected.json", dir);
    json_t *root = json_load_file(path, 0, NULL);
    assert_non_null(root);
    json_t *cases = json_object_get(root, "cases");
    memset(p, 0, sizeof *p);
    for (size_t i = 0; i < json_array_size(cases) && i < MAX_PROMPTS; i++) {
        json_t *ids = json_object_get(json_array_get(cases, i), "prompt_ids");
        int n = (int)json_array_size(ids);
        if (n > MAX_LEN) n = MAX_LEN;
        for (int k = 0; k < n; k++) p->ids[i][k] = (int32_t)json_integer_value(json_array_get(ids, (size_t)k));
        p->len[i] = n;
        p->n++;
    }
    json_decref(root);
}

/* Prefill each prompt alone on a group of `world` ranks (world 1: here);
 * logits of prompt i into out + i * V. */
static void run_group(const char *dir, const prompts *p, int world, float *out) {
    llmq_err err = {0};
    eng_opts eo = {32, 128, 4, NULL, 0, 0, NULL};
    tp_group g;
    memset(&g, 0, sizeof g);
    if (world > 1) {
        if (tp_group_start(&g, world, 10000, &err)) fail_msg("tp_group_start: %s", err.msg);
        if (g.rank > 0) _exit(tp_peer_run(&g, dir, "cpu", NULL, &eo, &err) ? 1 : 0);
        eo.comm = g.comm;
    }
    llmq_backend *be = llmq_backend_create("cpu", &err);
    model *m = NULL;
    engine *e = NULL;
    if (model_load_shard(&m, dir, be, NULL, 0, world, &err)) fail_msg("load: %s", err.msg);
    if (eng_create(&e, m, &eo, &err)) fail_msg("eng_create: %s", err.msg);
    int32_t blocks[8];
    for (int i = 0; i < p->n; i++) {
        for (int b = 0; b < 8; b++) blocks[b] = i * 8 + b;
        eng_seq s = {p->ids[i], p->len[i], 0, blocks, 8, 1};
        if (eng_step(e, &s, 1, out + (size_t)i * m->cfg.vocab_size, &err)) fail_msg("step: %s", err.msg);
    }
    if (world > 1) assert_int_equal(eng_stop_peers(e, &err), LLMQ_OK);
    eng_destroy(e);
    model_destroy(m);
    llmq_backend_destroy(be);
    if (world > 1) assert_int_equal(tp_group_stop(&g, 0), 0);
}

static void test_tensor_parallel_matches_one_rank(void **st) {
    (void)st;
    static const char *const variants[] = {"mixtral_moe", "mixtral_window"};
    static const int worlds[] = {2, 4};
    enum { V = 256, N = MAX_PROMPTS * V };
    static float tp[2][2][N], one[N];
    prompts p[2];
    char dir[2][4096];
    for (int v = 0; v < 2; v++) {
        fixture_dir(dir[v], sizeof dir[v], variants[v]);
        load_prompts(&p[v], dir[v]);
    }
    for (int w = 0; w < 2; w++)
        for (int v = 0; v < 2; v++) run_group(dir[v], &p[v], worlds[w], tp[v][w]);
    for (int v = 0; v < 2; v++) {
        run_group(dir[v], &p[v], 1, one);
        for (int w = 0; w < 2; w++) {
            double worst = 0;
            for (int k = 0; k < p[v].n * V; k++) {
                assert_true(isfinite(tp[v][w][k]));
                worst = fmax(worst, fabs(tp[v][w][k] - one[k]));
            }
            print_message("%s TP %d: max |logit diff| vs TP 1 = %.2e\n", variants[v], worlds[w], worst);
            if (worst > 1e-4) fail_msg("%s at TP %d differs from TP 1 by %.3g", variants[v], worlds[w], worst);
        }
    }
}

/* ---------------------------------------------------------------- the op */

enum { OE = 4, OK = 2, OD = 24, OI = 12, ON = 6 };

typedef struct op_rig {
    float w1[OE][OI * OD], w3[OE][OI * OD], w2[OE][OD * OI];
    be_weight ew[3 * OE];
    be_moe moe;
    float x[ON * OD], logits[ON * OE];
} op_rig;

static void op_rig_init(op_rig *r) {
    uint64_t seed = 12345;
    for (int e = 0; e < OE; e++) {
        tu_fill_random(r->w1[e], OI * OD, &seed, 0.3f);
        tu_fill_random(r->w3[e], OI * OD, &seed, 0.3f);
        tu_fill_random(r->w2[e], OD * OI, &seed, 0.3f);
        r->ew[e] = (be_weight){r->w1[e], LLMQ_F32, OI, OD, 0};
        r->ew[OE + e] = (be_weight){r->w3[e], LLMQ_F32, OI, OD, 0};
        r->ew[2 * OE + e] = (be_weight){r->w2[e], LLMQ_F32, OD, OI, 0};
    }
    r->moe = (be_moe){OE, OK, r->ew, r->ew + OE, r->ew + 2 * OE};
    tu_fill_random(r->x, ON * OD, &seed, 1.0f);
    /* the experts each row should pick (by design of its logits) */
    static const float lg[ON][OE] = {
        {2.0f, 1.5f, -1.0f, 0.0f},  /* {0, 1} */
        {-1.0f, 0.0f, 2.5f, 1.0f},  /* {2, 3}: disjoint from row 0 */
        {0.1f, 1.0f, 0.9f, -3.0f},  /* {1, 2} */
        {0.5f, 0.5f, 0.5f, 0.5f},   /* a four-way tie: the lower experts, {0, 1} */
        {1.0f, -2.0f, 0.0f, 3.0f},  /* {3, 0}: chosen in the other order */
        {0.0f, 0.0f, 4.0f, 0.0f},   /* {2} and a tie for the second: expert 0 */
    };
    memcpy(r->logits, lg, sizeof lg);
}

/* The op's definition (backend.h) in double precision, independently. */
static void moe_expected(const op_rig *r, int row, double *out) {
    const float *lg = r->logits + row * OE;
    double p[OE], mx = lg[0], sum = 0;
    for (int e = 1; e < OE; e++) mx = fmax(mx, lg[e]);
    for (int e = 0; e < OE; e++) sum += p[e] = exp(lg[e] - mx);
    int pick[OK], used[OE] = {0};
    double chosen = 0;
    for (int j = 0; j < OK; j++) {
        int b = -1;
        for (int e = 0; e < OE; e++)
            if (!used[e] && (b < 0 || p[e] > p[b])) b = e;
        used[b] = 1;
        pick[j] = b;
        chosen += p[b];
    }
    for (int c = 0; c < OD; c++) out[c] = 0;
    for (int j = 0; j < OK; j++) {
        const int e = pick[j];
        double g[OI];
        for (int i = 0; i < OI; i++) {
            double a = 0, u = 0;
            for (int c = 0; c < OD; c++) {
                a += (double)r->w1[e][i * OD + c] * r->x[row * OD + c];
                u += (double)r->w3[e][i * OD + c] * r->x[row * OD + c];
            }
            g[i] = a / (1 + exp(-a)) * u;
        }
        for (int c = 0; c < OD; c++) {
            double y = 0;
            for (int i = 0; i < OI; i++) y += (double)r->w2[e][c * OI + i] * g[i];
            out[c] += p[e] / chosen * y;
        }
    }
}

/* The op on rows [row0, row0 + n) of the rig into out. */
static void run_op(llmq_backend *be, const op_rig *r, int row0, int n, float *out) {
    float xs[ON * OD], gate[ON * OI], up[ON * OI], ys[ON * OK * OD];
    unsigned char route[1024];
    assert_true(be_moe_route_bytes(ON, OE, OK) <= sizeof route);
    be_moe_scratch ws = {xs, gate, up, ys, route};
    be->ops->moe(be, out, r->x + row0 * OD, r->logits + row0 * OE, &r->moe, n, &ws);
}

static void test_op_against_its_definition(void **st) {
    (void)st;
    static op_rig r;
    op_rig_init(&r);
    static const char *const backends[] = {"cpu", "cpu-ref"};
    for (int b = 0; b < 2; b++) {
        llmq_backend *be = llmq_backend_create(backends[b], NULL);
        assert_non_null(be);
        float batch[ON * OD], alone[OD];
        run_op(be, &r, 0, ON, batch);
        for (int i = 0; i < ON; i++) {
            double want[OD];
            moe_expected(&r, i, want);
            for (int c = 0; c < OD; c++)
                if (fabs(batch[i * OD + c] - want[c]) > 1e-5 * fmax(1, fabs(want[c])))
                    fail_msg("%s row %d col %d: %.8g, expected %.8g", backends[b], i, c, batch[i * OD + c], want[c]);
            run_op(be, &r, i, 1, alone); /* the row alone: the same bits */
            assert_memory_equal(alone, batch + i * OD, sizeof alone);
        }
        llmq_backend_destroy(be);
    }
}

/* ---------------------------------------------------------------- the engine */

/* A prompt's logits alone and inside a batch: a decode of another
 * sequence, the prompt, and a third prompt (so every expert has rows of
 * several sequences). */
static void test_engine_batch_invariance(void **st) {
    (void)st;
    char dir[4096];
    fixture_dir(dir, sizeof dir, "mixtral_moe");
    llmq_err err = {0};
    llmq_backend *be = llmq_backend_create("cpu", &err);
    model *m = NULL;
    engine *e = NULL;
    eng_opts eo = {64, 128, 4, NULL, 0, 0, NULL};
    if (model_load(&m, dir, be, NULL, &err)) fail_msg("load: %s", err.msg);
    if (eng_create(&e, m, &eo, &err)) fail_msg("eng_create: %s", err.msg);
    const int V = m->cfg.vocab_size;
    int32_t a[30], b[24], c[17], t[64];
    for (int i = 0; i < 30; i++) a[i] = (int32_t)((i * 7 + 3) % V);
    for (int i = 0; i < 24; i++) b[i] = (int32_t)((i * 13 + 5) % V);
    for (int i = 0; i < 17; i++) c[i] = (int32_t)((i * 29 + 1) % V);
    for (int i = 0; i < 64; i++) t[i] = i;
    float *alone = malloc(sizeof(float) * (size_t)V), *batch = malloc(sizeof(float) * 3 * (size_t)V);
    float *dec = malloc(sizeof(float) * (size_t)V);
    eng_seq sa = {a, 30, 0, t, 2, 1};
    if (eng_step(e, &sa, 1, alone, &err)) fail_msg("%s", err.msg);
    /* b's first 23 tokens, then its last one decoded alone */
    eng_seq sb = {b, 23, 0, t + 8, 2, 1};
    if (eng_step(e, &sb, 1, dec, &err)) fail_msg("%s", err.msg);
    eng_seq sd = {b + 23, 1, 23, t + 8, 2, 1};
    if (eng_step(e, &sd, 1, dec, &err)) fail_msg("%s", err.msg);
    /* again inside a batch: b's decode (its cache rewritten with the same
     * rows), a whole, c whole */
    if (eng_step(e, &sb, 1, batch, &err)) fail_msg("%s", err.msg);
    eng_seq seqs[3] = {{b + 23, 1, 23, t + 8, 2, 1}, {a, 30, 0, t + 16, 2, 1}, {c, 17, 0, t + 24, 2, 1}};
    if (eng_step(e, seqs, 3, batch, &err)) fail_msg("%s", err.msg);
    assert_memory_equal(dec, batch, sizeof(float) * V);
    assert_memory_equal(alone, batch + V, sizeof(float) * V);
    free(alone);
    free(batch);
    free(dec);
    eng_destroy(e);
    model_destroy(m);
    llmq_backend_destroy(be);
}

/* ---------------------------------------------------------------- the estimator */

static size_t g_alloc_bytes;
static void *(*g_alloc)(llmq_backend *, size_t);

static void *counting_alloc(llmq_backend *be, size_t bytes) {
    g_alloc_bytes += bytes;
    return g_alloc(be, bytes);
}

/* What eng_create allocates beyond the KV cache, as the estimator counts it. */
static void check_activations(const char *variant, int T, int S) {
    char dir[4096];
    fixture_dir(dir, sizeof dir, variant);
    llmq_err err = {0};
    vram_model vm;
    if (vram_model_load(&vm, dir, &err)) fail_msg("%s", err.msg);
    vram_opts o;
    memset(&o, 0, sizeof o);
    o.wdt = vm.stored;
    o.kv_dt = LLMQ_F32;
    o.tp = 1;
    o.max_num_seqs = S;
    o.max_batched_tokens = T;
    o.device_bytes = 1LL << 34;
    vram_estimate est;
    assert_int_equal(vram_estimate_run(&est, &vm, &o, &err), LLMQ_OK);

    llmq_backend *be = llmq_backend_create("cpu", &err);
    be_ops counting = *be->ops;
    const be_ops *saved = be->ops;
    g_alloc = saved->alloc;
    counting.alloc = counting_alloc;
    model *m = NULL;
    engine *e = NULL;
    if (model_load(&m, dir, be, NULL, &err)) fail_msg("load: %s", err.msg);
    be->ops = &counting;
    g_alloc_bytes = 0;
    const int n_blocks = 16;
    eng_opts eo = {n_blocks, T, S, NULL, 0, 0, NULL};
    if (eng_create(&e, m, &eo, &err)) fail_msg("eng_create: %s", err.msg);
    const size_t kv = (size_t)n_blocks * ENG_BLOCK_SIZE * eng_kv_bytes_per_token(&m->cfg, LLMQ_F32);
    print_message("%s: engine %zu bytes beyond the KV cache, estimator %lld\n", variant, g_alloc_bytes - kv,
                  (long long)est.act_bytes);
    assert_int_equal((int64_t)(g_alloc_bytes - kv), est.act_bytes);
    eng_destroy(e);
    be->ops = saved;
    model_destroy(m);
    llmq_backend_destroy(be);
}

static void test_estimator_counts_experts(void **st) {
    (void)st;
    char dir[4096];
    fixture_dir(dir, sizeof dir, "mixtral_moe");
    vram_model vm;
    llmq_err err = {0};
    assert_int_equal(vram_model_load(&vm, dir, &err), LLMQ_OK);
    assert_int_equal(vm.experts, 4);
    assert_int_equal(vm.experts_per_tok, 2);
    /* every tensor of the checkpoint, as transformers saved it (test_vram.c
     * checks the loader holds what the estimator counts, per rank) */
    st_set *s = NULL;
    assert_int_equal(st_open_dir(&s, dir, &err), LLMQ_OK);
    int64_t n = 0;
    for (size_t i = 0; i < st_count(s); i++) {
        const st_tensor *t = st_at(s, i);
        n += t->ndim == 2 ? t->shape[0] * t->shape[1] : t->shape[0];
    }
    st_close(s);
    assert_int_equal(vram_params(&vm), n);
    check_activations("llama_mha", 64, 4); /* the dense count, for comparison */
    check_activations("mixtral_moe", 64, 4);
    check_activations("mixtral_window", 48, 8);
}

/* ---------------------------------------------------------------- refusals */

static void test_refusals(void **st) {
    (void)st;
    model_config cfg;
    llmq_err err = {0};
    static const char bad_k[] =
        "{\"architectures\":[\"MixtralForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":32,"
        "\"num_hidden_layers\":1,\"num_attention_heads\":4,\"vocab_size\":256,\"num_local_experts\":4,"
        "\"num_experts_per_tok\":5}";
    assert_int_equal(model_config_parse(&cfg, bad_k, strlen(bad_k), "cfg", &err), LLMQ_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "num_local_experts 4 and num_experts_per_tok 5"));
    static const char dflt[] =
        "{\"architectures\":[\"MixtralForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":32,"
        "\"num_hidden_layers\":1,\"num_attention_heads\":4,\"vocab_size\":256}";
    assert_int_equal(model_config_parse(&cfg, dflt, strlen(dflt), "cfg", &err), LLMQ_OK);
    assert_int_equal(cfg.n_experts, 8); /* MixtralConfig's defaults */
    assert_int_equal(cfg.top_k, 2);
    assert_int_equal(cfg.tie_word_embeddings, 0);

    /* expert widths that do not divide are refused, as a dense MLP's */
    char dir[4096];
    fixture_dir(dir, sizeof dir, "mixtral_window"); /* intermediate_size 16 */
    assert_int_equal(model_config_load(&cfg, dir, &err), LLMQ_OK);
    assert_int_equal(cfg.sliding_window, 8);
    assert_int_equal(cfg.top_k, 3);
    model_shard sh;
    cfg.n_heads = cfg.n_kv_heads = 32;
    assert_int_equal(model_shard_plan(&sh, &cfg, 0, 32, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "intermediate_size 16 does not divide by 32"));

    /* a backend without the op (the CUDA backend today) refuses the model */
    llmq_backend *be = llmq_backend_create("cpu", &err);
    be_ops no_moe = *be->ops;
    no_moe.moe = NULL;
    const be_ops *saved = be->ops;
    be->ops = &no_moe;
    model *m = NULL;
    engine *e = NULL;
    eng_opts eo = {8, 16, 2, NULL, 0, 0, NULL};
    assert_int_equal(model_load(&m, dir, be, NULL, &err), LLMQ_OK);
    assert_int_equal(eng_create(&e, m, &eo, &err), LLMQ_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "no mixture-of-experts op for MixtralForCausalLM"));
    model_destroy(m);
    be->ops = saved;
    llmq_backend_destroy(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tensor_parallel_matches_one_rank),
        cmocka_unit_test(test_op_against_its_definition),
        cmocka_unit_test(test_engine_batch_invariance),
        cmocka_unit_test(test_estimator_counts_experts),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests_name("moe", tests, NULL, NULL);
}
