/*
 * test_tp.c — tensor parallelism on CPU ranks (separate processes joined by
 * the shared-memory communicator): for world 2 and 4, the logits after
 * prefill equal the single-rank logits within 1e-4 (only the order of the
 * row-parallel sums differs), on stories260K (GQA) and on transformers
 * fixtures including one with fewer KV heads than ranks (KV replication),
 * also with int4 weights (every rank loads with the leader's load options:
 * Q4 groups of 8 columns fall inside each shard, so the quantized group
 * holds the quantized single rank's weights), also for one step of 256
 * sequences whose plan is larger than the one broadcast a step plan
 * normally takes (its rest follows in a second one), and shapes that do not
 * divide are refused with a clear error.
 *
 * The TP groups run first and the single-rank reference last, so that no
 * rank is forked from a process whose OpenMP pool already exists.
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
#include "worker/model/model.h"
#include "worker/engine/tp.h"

#define MAX_CASES 3

typedef struct tp_case {
    char dir[4096];
    int n_prompts;
    int32_t prompts[MAX_CASES][64];
    int plen[MAX_CASES];
    model_load_opts lo;   /* how every rank loads the weights */
    int wide;             /* then one step of WIDE_SEQS sequences of WIDE_LEN tokens */
} tp_case;

#define WIDE_SEQS 256
#define WIDE_LEN 64

/* Prefill every prompt of c on a group of `world` ranks; logits of prompt p
 * into out + p * V, then those of the wide step after them.  world 1 runs
 * in this process. */
static void run(const tp_case *c, int world, float *out, int *vocab) {
    llmq_err err = {0};
    eng_opts eo = {32, 128, 4, NULL, 0, 0, NULL};
    if (c->wide) /* 16384 tokens + 256 tables of 4 blocks: far more than a plan frame */
        eo = (eng_opts){32 + WIDE_SEQS * 4, WIDE_SEQS * WIDE_LEN, WIDE_SEQS, NULL, 0, 0, NULL};
    tp_group g;
    memset(&g, 0, sizeof g);
    if (world > 1) {
        if (tp_group_start(&g, world, 10000, &err)) fail_msg("tp_group_start: %s", err.msg);
        if (g.rank > 0) _exit(tp_peer_run(&g, c->dir, "cpu", &c->lo, &eo, &err) ? 1 : 0);
        eo.comm = g.comm;
    }
    llmq_backend *be = llmq_backend_create("cpu", &err);
    model *m = NULL;
    engine *e = NULL;
    if (model_load_shard(&m, c->dir, be, &c->lo, 0, world, &err)) fail_msg("load: %s", err.msg);
    if (eng_create(&e, m, &eo, &err)) fail_msg("eng_create: %s", err.msg);
    *vocab = m->cfg.vocab_size;
    int32_t blocks[8];
    for (int p = 0; p < c->n_prompts; p++) {
        for (int b = 0; b < 8; b++) blocks[b] = p * 8 + b;
        eng_seq s = {c->prompts[p], c->plen[p], 0, blocks, 8, 1};
        if (eng_step(e, &s, 1, out + (size_t)p * m->cfg.vocab_size, &err)) fail_msg("step: %s", err.msg);
    }
    if (c->wide) {
        static eng_seq seqs[WIDE_SEQS];
        static int32_t toks[WIDE_SEQS][WIDE_LEN], tables[WIDE_SEQS][4];
        const int V = m->cfg.vocab_size;
        for (int s = 0; s < WIDE_SEQS; s++) {
            for (int i = 0; i < WIDE_LEN; i++) toks[s][i] = (1 + s * 7 + i * 13) % V;
            for (int b = 0; b < 4; b++) tables[s][b] = 32 + s * 4 + b;
            seqs[s] = (eng_seq){toks[s], WIDE_LEN, 0, tables[s], 4, 1};
        }
        if (eng_step(e, seqs, WIDE_SEQS, out + (size_t)c->n_prompts * V, &err)) fail_msg("wide step: %s", err.msg);
    }
    if (world > 1) assert_int_equal(eng_stop_peers(e, &err), LLMQ_OK);
    eng_destroy(e);
    model_destroy(m);
    llmq_backend_destroy(be);
    if (world > 1) assert_int_equal(tp_group_stop(&g, 0), 0);
}

static int load_case(tp_case *c, const char *dir, const char *expected) {
    memset(c, 0, sizeof *c);
    snprintf(c->dir, sizeof c->dir, "%s", dir);
    json_t *root = json_load_file(expected, 0, NULL);
    if (!root) return -1;
    json_t *cases = json_object_get(root, "cases");
    c->n_prompts = 0;
    for (size_t i = 0; i < json_array_size(cases) && i < MAX_CASES; i++) {
        json_t *ids = json_object_get(json_array_get(cases, i), "prompt_ids");
        c->plen[i] = (int)json_array_size(ids);
        for (int k = 0; k < c->plen[i] && k < 64; k++)
            c->prompts[i][k] = (int32_t)json_integer_value(json_array_get(ids, (size_t)k));
        if (c->plen[i] > 64) c->plen[i] = 64;
        c->n_prompts++;
    }
    json_decref(root);
    return 0;
}

static void test_tp_matches_single_rank(void **st) {
    (void)st;
    tp_case cases[8];
    int n = 0;
    const char *fx[] = {"llama_h8_kv1", "llama_gqa_tied", "qwen2_bias", "falcon_new", "falcon_mq", "falcon_seq_bias",
                        "llama_gqa_tied"};
    for (int i = 0; i < 7; i++) {
        char dir[4096], exp[4200];
        snprintf(dir, sizeof dir, "%s/tests/fixtures/hf/%s", tu_root(), fx[i]);
        snprintf(exp, sizeof exp, "%s/expected.json", dir);
        assert_int_equal(load_case(&cases[n++], dir, exp), 0);
    }
    const int quant = n - 1, plain = 1; /* the same model, int4 (tied: lm_head a quantized copy) and as stored */
    cases[quant].lo = (model_load_opts){LLMQ_QUANT_INT4, 8};
    cases[0].wide = 1;
    if (tu_shared()) {
        tp_case *c = &cases[n++];
        memset(c, 0, sizeof *c);
        snprintf(c->dir, sizeof c->dir, "%s/models/stories260K", tu_shared());
        static const int32_t p0[] = {1, 403, 407, 261, 378}, p1[] = {1, 306, 411, 380, 267, 337, 410};
        c->n_prompts = 2;
        c->plen[0] = 5;
        c->plen[1] = 7;
        memcpy(c->prompts[0], p0, sizeof p0);
        memcpy(c->prompts[1], p1, sizeof p1);
    } else {
        print_message("../shared is absent: stories260K left out of the TP comparison\n");
    }
    enum { OUT = (MAX_CASES + WIDE_SEQS) * 512 };
    static float tp_logits[8][2][OUT];
    static float ref[OUT], ref_plain[OUT];
    static const int worlds[] = {2, 4};
    int vocab = 0;
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < n; i++) run(&cases[i], worlds[w], tp_logits[i][w], &vocab);
    for (int i = 0; i < n; i++) {
        run(&cases[i], 1, ref, &vocab);
        if (i == plain) memcpy(ref_plain, ref, sizeof ref);
        if (i == quant) { /* the options reached the loader: int4 moves the logits */
            double moved = 0;
            for (int k = 0; k < cases[i].n_prompts * vocab; k++) moved = fmax(moved, fabs(ref[k] - ref_plain[k]));
            print_message("%s int4: max |logit diff| vs as stored = %.2e\n", cases[i].dir, moved);
            assert_true(moved > 1e-3);
        }
        for (int w = 0; w < 2; w++) {
            double worst = 0;
            for (int k = 0; k < (cases[i].n_prompts + (cases[i].wide ? WIDE_SEQS : 0)) * vocab; k++) {
                assert_true(isfinite(tp_logits[i][w][k]));
                double d = fabs(tp_logits[i][w][k] - ref[k]);
                if (d > worst) worst = d;
            }
            print_message("%s TP %d: max |logit diff| vs TP 1 = %.2e\n", cases[i].dir, worlds[w], worst);
            if (worst > 1e-4) fail_msg("%s at TP %d differs from TP 1 by %.3g", cases[i].dir, worlds[w], worst);
        }
    }
}

static void test_shapes_that_do_not_divide(void **st) {
    (void)st;
    model_config cfg;
    model_shard sh;
    llmq_err err = {0};
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/hf/llama_mha", tu_root());
    assert_int_equal(model_config_load(&cfg, dir, &err), LLMQ_OK);
    assert_int_equal(model_shard_plan(&sh, &cfg, 0, 8, &err), LLMQ_ERR_INVALID); /* 4 heads */
    assert_non_null(strstr(err.msg, "attention heads do not divide by 8"));
    cfg.intermediate_size = 172;
    cfg.n_heads = 8;
    cfg.n_kv_heads = 4;
    assert_int_equal(model_shard_plan(&sh, &cfg, 3, 8, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "intermediate_size 172 does not divide by 8"));
    cfg.intermediate_size = 176;
    assert_int_equal(model_shard_plan(&sh, &cfg, 3, 8, &err), LLMQ_OK);
    assert_int_equal(sh.n_heads, 1);
    assert_int_equal(sh.n_kv_heads, 1);
    assert_int_equal(sh.kv_head0, 1); /* heads 3 of 8 uses KV head 1 of 4 */
    cfg.n_kv_heads = 3;
    cfg.n_heads = 6;
    assert_int_equal(model_shard_plan(&sh, &cfg, 0, 4, &err), LLMQ_ERR_INVALID);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tp_matches_single_rank),
        cmocka_unit_test(test_shapes_that_do_not_divide),
    };
    return cmocka_run_group_tests_name("tp", tests, NULL, NULL);
}
