/*
 * cmd_bench.c — `llmq bench`: engine throughput on one model, with the
 * machine's memory read bandwidth measured in the same process so that
 * decode speed is reported against its roofline (every weight a decode step
 * uses is read once, so tok/s x bytes read per step / bandwidth <= 1).  A
 * mixture-of-experts step uses the router and, per layer, only the experts
 * its tokens chose: top_k of them for one token, at most min(E, top_k x B)
 * for a batch of B.
 *
 * Figures: single-stream decode tok/s, batched decode tok/s at 8 and 32
 * sequences, prefill tok/s (one prompt of 512 tokens, or the model's
 * context when shorter), read bandwidth (kernels/cpu/readbw.h: the best
 * pass of the kernels' threads over a buffer well beyond the last-level
 * cache, with the kernels' widest loads, so that it is a ceiling).
 */
#include <getopt.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/cli/cli.h"
#include "kernels/cpu/readbw.h"
#include "kernels/cpu/threads.h"
#include "worker/engine/engine.h"
#include "worker/engine/runtime.h"
#include "worker/model/model.h"
#include "worker/model/safetensors.h"
#include "worker/engine/vram.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* kB fields of /proc/self/status, in bytes (0 when absent). */
static double proc_status_bytes(const char *field) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double v = 0;
    const size_t n = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, field, n) && line[n] == ':') v = atof(line + n + 1) * 1024.0;
    if (f) fclose(f);
    return v;
}

/* Bytes of one expert of `layer` (w1, w3 and w2) counted as the loader
 * counts m->weight_bytes: the quantized size under quantization, else the
 * checkpoint's dtype (a backend may hold a converted copy). */
static size_t expert_bytes(const model *m, int layer) {
    const model_layer *ly = &m->layers[layer];
    const int E = m->cfg.n_experts;
    size_t total = 0;
    for (int x = 0; x < 3; x++) {
        const be_weight *w = &ly->experts[x * E];
        if (m->lo.quant != LLMQ_QUANT_NONE) {
            total += llmq_quant_bytes(m->lo.quant, (size_t)w->rows, (size_t)w->cols, m->lo.q4_group);
        } else {
            static const char *const which[] = {"w1", "w3", "w2"};
            char name[128];
            snprintf(name, sizeof name, "model.layers.%d.block_sparse_moe.experts.0.%s.weight", layer, which[x]);
            const st_tensor *t = st_find(m->st, name);
            total += (size_t)w->rows * w->cols * llmq_dtype_size(t ? t->dt : w->dt);
        }
    }
    return total;
}

/* Bytes a decode step of `batch` sequences reads from all_bytes (every
 * weight it may use): of a mixture of experts, at most min(E, top_k x batch)
 * experts a layer (exactly top_k for one token, whose experts are distinct). */
static size_t step_read_bytes(const model *m, size_t all_bytes, int batch) {
    const int E = m->cfg.n_experts;
    if (E <= 0) return all_bytes;
    const long used = (long)m->cfg.top_k * batch < E ? (long)m->cfg.top_k * batch : E;
    for (int l = 0; l < m->cfg.n_layers; l++) all_bytes -= (size_t)(E - used) * expert_bytes(m, l);
    return all_bytes;
}

typedef struct bench_rig {
    engine *e;
    int32_t *blocks;  /* [n_seqs * bps] */
    int bps;          /* blocks per sequence */
    float *logits;
} bench_rig;

/* Prefill `n_seqs` sequences of `plen` tokens, then `steps` decode steps of
 * all of them at once; returns decode tokens per second. */
static double decode_rate(bench_rig *r, int n_seqs, int plen, int steps, int vocab, llmq_err *err) {
    eng_seq seqs[64];
    int32_t prompt[64], tok[64];
    for (int i = 0; i < plen; i++) prompt[i] = (1 + (i * 37) % 200) % vocab;
    for (int s = 0; s < n_seqs; s++) {
        eng_seq q = {prompt, plen, 0, r->blocks + (size_t)s * r->bps, r->bps, 1};
        if (eng_step(r->e, &q, 1, r->logits, err)) return -1;
        tok[s] = (5 + s) % vocab;
    }
    double t = now_s();
    for (int k = 0; k < steps; k++) {
        for (int s = 0; s < n_seqs; s++) {
            seqs[s] = (eng_seq){&tok[s], 1, plen + k, r->blocks + (size_t)s * r->bps, r->bps, 1};
        }
        if (eng_step(r->e, seqs, n_seqs, r->logits, err)) return -1;
    }
    return (double)n_seqs * steps / (now_s() - t);
}

int cmd_bench(int argc, char **argv) {
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"backend", required_argument, 0, 'b'},
                                         {"steps", required_argument, 0, 's'},
                                         {"json", no_argument, 0, 'j'},
                                         {"read-bw", required_argument, 0, 'r'},
                                         {"quantization", required_argument, 0, 'q'},
                                         {"kv-dtype", required_argument, 0, 'k'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *dir = NULL, *backend = "cpu", *kv_dtype = NULL;
    int steps = 32, json = 0, c;
    double bw = 0; /* GB/s; 0: measured */
    model_load_opts lo = {LLMQ_QUANT_NONE, 0};
    llmq_err qe = {0};
    static const char usage[] =
        "usage: llmq bench --model DIR [--backend cpu] [--steps N] [--quantization none|int8|int4] [--read-bw GBS] [--json]\n"
        "  --kv-dtype T    the KV cache's element type: auto (default), f32, f16, bf16 (as llmq generate)\n"
        "  --read-bw GBS   the memory read bandwidth for the roofline (default: measured, best of 16 passes over\n"
        "                  1 GiB or 8x the last-level cache)\n";
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': dir = optarg; break;
        case 'b': backend = optarg; break;
        case 's': steps = atoi(optarg); break;
        case 'j': json = 1; break;
        case 'r': bw = atof(optarg); break;
        case 'k': kv_dtype = optarg; break;
        case 'q':
            if (llmq_quant_parse(optarg, &lo.quant, &qe)) {
                fprintf(stderr, "llmq bench: --quantization: %s\n", qe.msg);
                return 2;
            }
            break;
        case 'h':
            printf("%s", usage);
            return 0;
        default: return 2;
        }
    }
    if (!dir || steps < 1 || bw < 0) {
        fprintf(stderr, "%s", usage);
        return 2;
    }
    llmq_err err = {0};
    runtime *rt = NULL;
    bench_rig r = {0};
    int rc = 1;
    const int plen = 16, max_seqs = 32;
    int prefill_len = 512;
    r.bps = (plen + steps + ENG_BLOCK_SIZE) / ENG_BLOCK_SIZE;
    if (r.bps * ENG_BLOCK_SIZE < prefill_len) r.bps = prefill_len / ENG_BLOCK_SIZE;
    runtime_opts ro;
    memset(&ro, 0, sizeof ro);
    ro.backend = backend;
    ro.model_dir = dir;
    ro.load = lo;
    ro.eng = (eng_opts){r.bps * max_seqs, prefill_len, max_seqs, NULL, 0, 0, kv_dtype};
    if (runtime_create(&rt, &ro, &err)) goto fail;
    const eng_opts eo = ro.eng;
    const model *m = rt->m;
    const llmq_backend *be = rt->be;
    r.e = rt->eng;
    r.blocks = malloc(sizeof(int32_t) * (size_t)eo.n_blocks);
    r.logits = malloc(sizeof(float) * (size_t)max_seqs * m->cfg.vocab_size);
    for (int i = 0; i < eo.n_blocks; i++) r.blocks[i] = i;
    /* a model with a shorter context (the tiny test models): prefill what it
     * holds, and give no sequence more blocks than its context */
    const int vocab = m->cfg.vocab_size, ctx = m->cfg.max_position_embeddings;
    if (prefill_len > ctx) prefill_len = ctx;
    if (r.bps > (ctx + ENG_BLOCK_SIZE - 1) / ENG_BLOCK_SIZE) r.bps = (ctx + ENG_BLOCK_SIZE - 1) / ENG_BLOCK_SIZE;

    /* bytes read per decode step: every matrix it uses once, the embedding only as lm_head */
    size_t all_bytes = m->weight_bytes;
    if (m->lm_head.data != m->embed.data)
        all_bytes -= (size_t)m->embed.rows * m->embed.cols * llmq_dtype_size(m->embed.dt);
    const size_t step_bytes = step_read_bytes(m, all_bytes, 1), step_bytes_8 = step_read_bytes(m, all_bytes, 8),
                 step_bytes_32 = step_read_bytes(m, all_bytes, 32);

    const char *threads_why; /* the kernels' thread count and why (kernels/cpu/threads.h) */
    cpu_threads_setup(&threads_why);
    cpu_readbw probe = {0};
    if (bw == 0) {
        cpu_isa isa;
        if (cpu_isa_select(&isa, &err) || cpu_readbw_measure(&probe, isa, 0, 8, &err)) goto fail;
        bw = probe.gbs;
    }
    double d1 = decode_rate(&r, 1, plen, steps, vocab, &err);
    double d8 = decode_rate(&r, 8, plen, steps, vocab, &err);
    double d32 = decode_rate(&r, 32, plen, steps / 2 > 8 ? steps / 2 : 8, vocab, &err);
    if (d1 < 0 || d8 < 0 || d32 < 0) goto fail;
    int32_t *prompt = malloc(sizeof(int32_t) * prefill_len);
    for (int i = 0; i < prefill_len; i++) prompt[i] = (1 + (i * 13) % 300) % vocab;
    eng_seq q = {prompt, prefill_len, 0, r.blocks, (prefill_len + ENG_BLOCK_SIZE - 1) / ENG_BLOCK_SIZE, 1};
    double t = now_s();
    llmq_status st = eng_step(r.e, &q, 1, r.logits, &err);
    double pf = prefill_len / (now_s() - t);
    free(prompt);
    if (st) goto fail;
    double roof = d1 * (double)step_bytes / (bw * 1e9);
    /* memory: the estimator's weights for this model as loaded, and what the
     * process holds after the runs (file pages: mapped weights read in place;
     * anonymous: quantized copies, KV cache, activations) */
    double est_weights = 0;
    vram_model vm;
    if (vram_model_load(&vm, dir, NULL) == LLMQ_OK) {
        vram_opts vo;
        memset(&vo, 0, sizeof vo);
        vo.wdt = vm.stored;
        vo.kv_dt = be->kv_dt;
        vo.quant = lo.quant;
        vo.tp = 1;
        vo.cpu = 1;
        vram_estimate ve;
        if (vram_estimate_run(&ve, &vm, &vo, NULL) == LLMQ_OK) est_weights = (double)ve.weight_bytes;
    }
    /* the embedding table as held: looked up a row a token (its bytes count in
     * the weights, not in a decode step's reads, unless it is the lm_head too) */
    const size_t embed_bytes = (size_t)m->embed.rows * m->embed.cols * llmq_dtype_size(m->embed.dt);
    const double rss = proc_status_bytes("VmRSS"), rss_anon = proc_status_bytes("RssAnon"),
                 rss_file = proc_status_bytes("RssFile");
    if (json) {
        printf("{\"model\":\"%s\",\"dtype\":\"%s\",\"isa\":\"%s\",\"threads\":%d,\"threads_why\":\"%s\","
               "\"weight_bytes\":%zu,"
               "\"embed_bytes\":%zu,\"read_bw_gbs\":%.2f,\"read_bw_loop\":\"%s\",\"read_bw_buffer_bytes\":%zu,"
               "\"decode_1_tok_s\":%.2f,\"decode_8_tok_s\":%.2f,\"decode_32_tok_s\":%.2f,\"prefill_tok_s\":%.1f,"
               "\"roofline_ratio\":%.3f,\"batch32_over_1\":%.2f,\"est_weight_bytes\":%.0f,\"rss_bytes\":%.0f,"
               "\"rss_anon_bytes\":%.0f,\"rss_file_bytes\":%.0f,\"step_bytes_1\":%zu,\"step_bytes_8\":%zu,"
               "\"step_bytes_32\":%zu,\"prefill_tokens\":%d}\n",
               dir, llmq_dtype_name(m->wdt), be->isa ? be->isa : "", omp_get_max_threads(), threads_why, m->weight_bytes,
               embed_bytes, bw, probe.loop ? probe.loop : "given", probe.bytes, d1, d8, d32, pf, roof, d32 / d1,
               est_weights, rss, rss_anon, rss_file, step_bytes, step_bytes_8, step_bytes_32, prefill_len);
    } else {
        printf("model %s (%s, %.1f MB read per decode step, %d threads (%s), kernels %s)\n", dir,
               llmq_dtype_name(m->wdt), step_bytes / 1e6, omp_get_max_threads(), threads_why, be->isa ? be->isa : "-");
        if (probe.loop)
            printf("  memory read bandwidth     %8.2f GB/s  (best of %dx%d passes over %zu MB: %s, %s loads)\n", bw,
                   2, probe.passes, probe.bytes >> 20, probe.loop, probe.isa);
        else
            printf("  memory read bandwidth     %8.2f GB/s  (given)\n", bw);
        printf("  decode, 1 sequence        %8.2f tok/s  (%.0f%% of roofline %.1f tok/s)\n", d1, roof * 100,
               bw * 1e9 / step_bytes);
        if (m->cfg.n_experts > 0)
            printf("  mixture of experts: top %d of %d a layer; a step of 8 reads at most %.1f MB, of 32 %.1f MB\n",
                   m->cfg.top_k, m->cfg.n_experts, step_bytes_8 / 1e6, step_bytes_32 / 1e6);
        printf("  decode, 8 sequences       %8.2f tok/s\n", d8);
        printf("  decode, 32 sequences      %8.2f tok/s  (%.1fx single)\n", d32, d32 / d1);
        printf("  prefill, %3d tokens       %8.1f tok/s\n", prefill_len, pf);
        printf("  memory: weights %.1f MB as loaded (estimator: %.1f MB), of which the embedding %.1f MB (%s);\n"
               "    process RSS %.1f MB (anonymous %.1f, file %.1f)\n",
               m->weight_bytes / 1e6, est_weights / 1e6, embed_bytes / 1e6,
               m->lm_head.data == m->embed.data ? "the lm_head too, read every step" : "a row read a token",
               rss / 1e6, rss_anon / 1e6, rss_file / 1e6);
    }
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "llmq bench: %s\n", err.msg);
done:
    free(r.blocks);
    free(r.logits);
    runtime_destroy(rt);
    return rc;
}
