/*
 * cmd_bench.c — `llmq bench`: engine throughput on one model, with the
 * machine's memory read bandwidth measured in the same process so that
 * decode speed is reported against its roofline (every weight byte is read
 * once per decode step, so tok/s x weight bytes / bandwidth <= 1).
 *
 * Figures: single-stream decode tok/s, batched decode tok/s at 8 and 32
 * sequences, prefill tok/s (one 512-token prompt), read bandwidth.
 */
#include <getopt.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/cli/cli.h"
#include "worker/engine/engine.h"
#include "worker/engine/runtime.h"
#include "worker/model/model.h"
#include "worker/engine/vram.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Best of 5 passes summing a 1 GiB buffer with all threads (GB/s, 1e9):
 * 4 independent 8-lane accumulators per thread, so the loop is bound by
 * memory, not by the add latency. */
typedef float bw_vec __attribute__((vector_size(32)));
static double read_bandwidth(void) {
    const size_t n = (size_t)1 << 28; /* floats */
    float *a = aligned_alloc(64, n * sizeof *a);
    if (!a) return 0;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) a[i] = (float)(i & 7);
    double best = 0, sink = 0;
    for (int r = 0; r < 5; r++) {
        double t = now_s(), total = 0;
#pragma omp parallel reduction(+ : total)
        {
            bw_vec s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
#pragma omp for schedule(static)
            for (size_t i = 0; i < n; i += 32) {
                const bw_vec *p = (const bw_vec *)(a + i);
                s0 += p[0];
                s1 += p[1];
                s2 += p[2];
                s3 += p[3];
            }
            bw_vec s = (s0 + s1) + (s2 + s3);
            for (int j = 0; j < 8; j++) total += s[j];
        }
        t = now_s() - t;
        sink += total;
        if (n * sizeof *a / t / 1e9 > best) best = n * sizeof *a / t / 1e9;
    }
    free(a);
    return sink < 0 ? 0 : best;
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

typedef struct bench_rig {
    engine *e;
    int32_t *blocks;  /* [n_seqs * bps] */
    int bps;          /* blocks per sequence */
    float *logits;
} bench_rig;

/* Prefill `n_seqs` sequences of `plen` tokens, then `steps` decode steps of
 * all of them at once; returns decode tokens per second. */
static double decode_rate(bench_rig *r, int n_seqs, int plen, int steps, llmq_err *err) {
    eng_seq seqs[64];
    int32_t prompt[64], tok[64];
    for (int i = 0; i < plen; i++) prompt[i] = 1 + (i * 37) % 200;
    for (int s = 0; s < n_seqs; s++) {
        eng_seq q = {prompt, plen, 0, r->blocks + (size_t)s * r->bps, r->bps, 1};
        if (eng_step(r->e, &q, 1, r->logits, err)) return -1;
        tok[s] = 5 + s;
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
                                         {"quantization", required_argument, 0, 'q'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *dir = NULL, *backend = "cpu";
    int steps = 32, json = 0, c;
    model_load_opts lo = {LLMQ_QUANT_NONE, 0};
    llmq_err qe = {0};
    static const char usage[] =
        "usage: llmq bench --model DIR [--backend cpu] [--steps N] [--quantization none|int8|int4] [--json]\n";
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': dir = optarg; break;
        case 'b': backend = optarg; break;
        case 's': steps = atoi(optarg); break;
        case 'j': json = 1; break;
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
    if (!dir || steps < 1) {
        fprintf(stderr, "%s", usage);
        return 2;
    }
    llmq_err err = {0};
    runtime *rt = NULL;
    bench_rig r = {0};
    int rc = 1;
    const int plen = 16, prefill_len = 512, max_seqs = 32;
    r.bps = (plen + steps + ENG_BLOCK_SIZE) / ENG_BLOCK_SIZE;
    if (r.bps * ENG_BLOCK_SIZE < prefill_len) r.bps = prefill_len / ENG_BLOCK_SIZE;
    runtime_opts ro;
    memset(&ro, 0, sizeof ro);
    ro.backend = backend;
    ro.model_dir = dir;
    ro.load = lo;
    ro.eng = (eng_opts){r.bps * max_seqs, prefill_len, max_seqs, NULL, 0, 0};
    if (runtime_create(&rt, &ro, &err)) goto fail;
    const eng_opts eo = ro.eng;
    const model *m = rt->m;
    const llmq_backend *be = rt->be;
    r.e = rt->eng;
    r.blocks = malloc(sizeof(int32_t) * (size_t)eo.n_blocks);
    r.logits = malloc(sizeof(float) * (size_t)max_seqs * m->cfg.vocab_size);
    for (int i = 0; i < eo.n_blocks; i++) r.blocks[i] = i;

    /* bytes read per decode step: every matrix once, the embedding only as lm_head */
    size_t step_bytes = m->weight_bytes;
    if (m->lm_head.data != m->embed.data)
        step_bytes -= (size_t)m->embed.rows * m->embed.cols * llmq_dtype_size(m->embed.dt);

    double bw = read_bandwidth();
    double d1 = decode_rate(&r, 1, plen, steps, &err);
    double d8 = decode_rate(&r, 8, plen, steps, &err);
    double d32 = decode_rate(&r, 32, plen, steps / 2 > 8 ? steps / 2 : 8, &err);
    if (d1 < 0 || d8 < 0 || d32 < 0) goto fail;
    int32_t *prompt = malloc(sizeof(int32_t) * prefill_len);
    for (int i = 0; i < prefill_len; i++) prompt[i] = 1 + (i * 13) % 300;
    eng_seq q = {prompt, prefill_len, 0, r.blocks, prefill_len / ENG_BLOCK_SIZE, 1};
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
        vo.kv_dt = be->act_dt;
        vo.quant = lo.quant;
        vo.tp = 1;
        vo.cpu = 1;
        vram_estimate ve;
        if (vram_estimate_run(&ve, &vm, &vo, NULL) == LLMQ_OK) est_weights = (double)ve.weight_bytes;
    }
    const double rss = proc_status_bytes("VmRSS"), rss_anon = proc_status_bytes("RssAnon"),
                 rss_file = proc_status_bytes("RssFile");
    if (json) {
        printf("{\"model\":\"%s\",\"dtype\":\"%s\",\"threads\":%d,\"weight_bytes\":%zu,\"read_bw_gbs\":%.2f,"
               "\"decode_1_tok_s\":%.2f,\"decode_8_tok_s\":%.2f,\"decode_32_tok_s\":%.2f,\"prefill_tok_s\":%.1f,"
               "\"roofline_ratio\":%.3f,\"batch32_over_1\":%.2f,\"est_weight_bytes\":%.0f,\"rss_bytes\":%.0f,"
               "\"rss_anon_bytes\":%.0f,\"rss_file_bytes\":%.0f}\n",
               dir, llmq_dtype_name(m->wdt), omp_get_max_threads(), step_bytes, bw, d1, d8, d32, pf, roof,
               d32 / d1, est_weights, rss, rss_anon, rss_file);
    } else {
        printf("model %s (%s, %.1f MB read per decode step, %d threads)\n", dir, llmq_dtype_name(m->wdt),
               step_bytes / 1e6, omp_get_max_threads());
        printf("  memory read bandwidth     %8.2f GB/s\n", bw);
        printf("  decode, 1 sequence        %8.2f tok/s  (%.0f%% of roofline %.1f tok/s)\n", d1, roof * 100,
               bw * 1e9 / step_bytes);
        printf("  decode, 8 sequences       %8.2f tok/s\n", d8);
        printf("  decode, 32 sequences      %8.2f tok/s  (%.1fx single)\n", d32, d32 / d1);
        printf("  prefill, 512 tokens       %8.1f tok/s\n", pf);
        printf("  memory: weights %.1f MB (estimator: %.1f MB); process RSS %.1f MB (anonymous %.1f, file %.1f)\n",
               m->weight_bytes / 1e6, est_weights / 1e6, rss / 1e6, rss_anon / 1e6, rss_file / 1e6);
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
