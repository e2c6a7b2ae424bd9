/*
 * cmd_roofline.c — `llmq roofline`: per kernel, the bytes and FLOPs of a
 * decode or prefill step of a model, counted by running the engine's step
 * on the counting backend (worker/engine/roofline.h), and the time each
 * takes at a GPU's roofline: the target of the first GPU run (issue 18,
 * docs/benchmarks.md "CUDA targets (counted)").  Needs config.json only.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "client/cli/cli.h"
#include "worker/engine/roofline.h"
#include "worker/engine/vram.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: llmq roofline --model DIR|config.json|PRESET [options]\n"
            "  --gpu NAME          H100, A10G or T4 (default H100)\n"
            "  --dtype D           bf16, f16 (weights and activations), int8 or int4 (weight-only, activations\n"
            "                      bf16; f16 on a GPU without BF16 tensor cores: T4); default bf16, T4 f16\n"
            "  --q4-group G        INT4 group size (default 128)\n"
            "  --tp N              tensor-parallel GPUs; rank 0's shard is counted (default 1)\n"
            "  --batch B           decode steps of B sequences only (default: 1, 8 and 64)\n"
            "  --context C         positions each decoded token attends (default 1024)\n"
            "  --prefill P         prefill steps of a P-token prompt only (default: 512, 2048, 8192 where\n"
            "                      the model's context allows); --batch and --prefill may be given together\n"
            "  --json              one JSON object\n"
            "presets: mistral-7b, llama3-8b, llama3-70b, falcon-40b, mixtral-8x7b, llama2-13b (%s)\n",
            *vram_presets_dir() ? vram_presets_dir() : "tools/presets not found; set LLMQ_PRESETS");
}

static int parse_int(const char *s, int lo, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end || errno || v < lo || v > 1 << 24) return -1;
    *out = (int)v;
    return 0;
}

/* A directory or config.json as given, else a preset's file. */
static llmq_status load_config(model_config *cfg, const char *what, llmq_err *err) {
    struct stat sb;
    if (stat(what, &sb) == 0 || strchr(what, '/')) return model_config_load(cfg, what, err);
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s.json", vram_presets_dir(), what);
    if (!*vram_presets_dir() || stat(path, &sb) != 0)
        return llmq_err_set(err, LLMQ_ERR_IO, "'%s' is neither a path nor a preset (%s)", what,
                            *vram_presets_dir() ? vram_presets_dir() : "no presets directory found");
    return model_config_load(cfg, path, err);
}

typedef struct scenario {
    int prefill; /* 0: decode */
    int n;       /* batch, or prompt tokens */
    rf_step step;
    double t;    /* seconds at the roofline */
    int fits;    /* the memory estimator's verdict for its sequences on the GPU (vram.h) */
} scenario;

static double step_time(const rf_step *s, const rf_gpu *g, llmq_dtype adt) {
    double t = 0;
    for (int k = 0; k < RF_N_KERNELS; k++) t += rf_time(&s->k[k], g, adt);
    return t;
}

/* s as the body of a JSON string (a path may hold quotes or backslashes). */
static void json_str(const char *s) {
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') putchar('\\');
        if ((unsigned char)*s < 0x20) printf("\\u%04x", (unsigned char)*s);
        else putchar(*s);
    }
}

static void print_json(const char *what, const rf_gpu *g, const char *dtype, llmq_dtype adt, int tp, int context,
                       double held, const scenario *sc, int n_sc) {
    printf("{\"model\":\"");
    json_str(what);
    printf("\",\"gpu\":\"%s\",\"hbm_gbs\":%.0f,\"tensor_tflops\":%.0f,\"link_gbs\":%.0f,"
           "\"dtype\":\"%s\",\"act_dtype\":\"%s\",\"tp\":%d,\"context\":%d,\"weight_bytes_held\":%.0f,\"steps\":[",
           g->name, g->hbm_gbs, adt == LLMQ_BF16 ? g->bf16_tflops : g->f16_tflops, g->link_gbs, dtype,
           adt == LLMQ_BF16 ? "bf16" : "f16", tp, context, held);
    for (int i = 0; i < n_sc; i++) {
        const scenario *s = &sc[i];
        printf("%s{\"kind\":\"%s\",\"%s\":%d,\"tokens\":%d,\"time_s\":%.9g,\"tok_s\":%.9g,\"fits\":%s,"
               "\"kernels\":[", i ? "," : "", s->prefill ? "prefill" : "decode", s->prefill ? "prompt" : "batch", s->n,
               s->step.tokens, s->t, s->step.tokens / s->t, s->fits ? "true" : "false");
        int first = 1;
        for (int k = 0; k < RF_N_KERNELS; k++) {
            const rf_count *c = &s->step.k[k];
            if (!c->calls) continue;
            printf("%s{\"name\":\"%s\",\"calls\":%ld,\"weight_bytes\":%.0f,\"act_bytes\":%.0f,\"kv_bytes\":%.0f,"
                   "\"link_bytes\":%.0f,\"bytes\":%.0f,\"flops\":%.0f,\"time_s\":%.9g}",
                   first ? "" : ",", rf_kernel_name(k), c->calls, c->weight_bytes, c->act_bytes, c->kv_bytes,
                   c->link_bytes, rf_bytes(c), c->flops, rf_time(c, g, adt));
            first = 0;
        }
        printf("]}");
    }
    printf("]}\n");
}

static void scenario_name(char *buf, size_t n, const scenario *s) {
    if (s->prefill) snprintf(buf, n, "prefill %d", s->n);
    else snprintf(buf, n, "decode %d", s->n);
}

static void print_text(const char *what, const rf_gpu *g, const char *dtype, llmq_dtype adt, int tp, int context,
                       double held, const scenario *sc, int n_sc) {
    printf("%s on %s (%.0f GB/s, %.0f TFLOP/s dense %s, %s %.0f GB/s each way), weights %s, activations and KV %s, "
           "TP %d: %.2f GB of weights per GPU; decode at context %d\n\n",
           what, g->label, g->hbm_gbs, adt == LLMQ_BF16 ? g->bf16_tflops : g->f16_tflops, llmq_dtype_name(adt),
           g->link, g->link_gbs, dtype, llmq_dtype_name(adt), tp, held / 1e9, context);
    /* the targets: microseconds per kernel and step, one column a step */
    char name[64];
    printf("| kernel |");
    for (int i = 0; i < n_sc; i++) {
        scenario_name(name, sizeof name, &sc[i]);
        printf(" %s µs |", name);
    }
    printf("\n|---|");
    for (int i = 0; i < n_sc; i++) printf("---:|");
    printf("\n");
    for (int k = 0; k < RF_N_KERNELS; k++) {
        int any = 0;
        for (int i = 0; i < n_sc; i++) any |= sc[i].step.k[k].calls > 0;
        if (!any) continue;
        printf("| %s |", rf_kernel_name(k));
        for (int i = 0; i < n_sc; i++) printf(" %.1f |", rf_time(&sc[i].step.k[k], g, adt) * 1e6);
        printf("\n");
    }
    printf("| **step** |");
    for (int i = 0; i < n_sc; i++) printf(" **%.1f** |", sc[i].t * 1e6);
    printf("\n| **tok/s** |");
    for (int i = 0; i < n_sc; i++) printf(" **%.0f** |", sc[i].step.tokens / sc[i].t);
    printf("\n| fits (llmq vram) |");
    for (int i = 0; i < n_sc; i++) printf(" %s |", sc[i].fits ? "yes" : "**no**");
    printf("\n");
    /* each step's counts */
    for (int i = 0; i < n_sc; i++) {
        const scenario *s = &sc[i];
        scenario_name(name, sizeof name, s);
        printf("\n%s: %.3f ms a step, %.0f tok/s at the roofline%s\n\n", name, s->t * 1e3, s->step.tokens / s->t,
               s->fits ? "" : " (does not fit: see llmq vram)");
        printf("| kernel | calls | weights MB | act MB | KV MB | link MB | GFLOP | FLOP/B | µs | bound |\n"
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for (int k = 0; k < RF_N_KERNELS; k++) {
            const rf_count *c = &s->step.k[k];
            if (!c->calls) continue;
            const double b = rf_bytes(c), peak = (adt == LLMQ_BF16 ? g->bf16_tflops : g->f16_tflops) * 1e12;
            const char *bound = c->link_bytes > 0 ? "link" : c->flops / peak > b / (g->hbm_gbs * 1e9) ? "FLOPs" : "HBM";
            printf("| %s | %ld | %.2f | %.2f | %.2f | %.2f | %.2f | %.1f | %.1f | %s |\n", rf_kernel_name(k), c->calls,
                   c->weight_bytes / 1e6, c->act_bytes / 1e6, c->kv_bytes / 1e6, c->link_bytes / 1e6, c->flops / 1e9,
                   b > 0 ? c->flops / b : 0, rf_time(c, g, adt) * 1e6, bound);
        }
    }
}

enum { O_MODEL = 1, O_GPU, O_DTYPE, O_GROUP, O_TP, O_BATCH, O_CONTEXT, O_PREFILL, O_JSON, O_HELP };

int cmd_roofline(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL},     {"gpu", required_argument, 0, O_GPU},
        {"dtype", required_argument, 0, O_DTYPE},     {"q4-group", required_argument, 0, O_GROUP},
        {"tp", required_argument, 0, O_TP},           {"batch", required_argument, 0, O_BATCH},
        {"context", required_argument, 0, O_CONTEXT}, {"prefill", required_argument, 0, O_PREFILL},
        {"json", no_argument, 0, O_JSON},             {"help", no_argument, 0, O_HELP},
        {0, 0, 0, 0},
    };
    const char *what = NULL, *gpu = "H100", *dtype = NULL;
    int group = 0, tp = 1, batch = 0, context = 1024, prefill = 0, json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case O_MODEL: what = optarg; break;
        case O_GPU: gpu = optarg; break;
        case O_DTYPE: dtype = optarg; break;
        case O_GROUP: bad = parse_int(optarg, 8, &group) || group % 8; break;
        case O_TP: bad = parse_int(optarg, 1, &tp) || tp > 64; break;
        case O_BATCH: bad = parse_int(optarg, 1, &batch); break;
        case O_CONTEXT: bad = parse_int(optarg, 1, &context); break;
        case O_PREFILL: bad = parse_int(optarg, 1, &prefill); break;
        case O_JSON: json = 1; break;
        case O_HELP: usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad) {
            fprintf(stderr, "llmq roofline: bad value '%s' for --%s\n", optarg, opts[c - O_MODEL].name);
            return 2;
        }
    }
    if (optind < argc || !what) {
        fprintf(stderr, optind < argc ? "llmq roofline: unexpected argument '%s'\n" : "llmq roofline: --model is "
                "required%s\n", optind < argc ? argv[optind] : "");
        usage(stderr);
        return 2;
    }
    const rf_gpu *g = rf_gpu_find(gpu);
    if (!g) {
        fprintf(stderr, "llmq roofline: unknown GPU '%s' (H100, A10G or T4)\n", gpu);
        return 2;
    }
    rf_opts o = {.act_dt = g->bf16_tflops > 0 ? LLMQ_BF16 : LLMQ_F16, .q4_group = group, .tp = tp};
    if (!dtype) dtype = g->bf16_tflops > 0 ? "bf16" : "f16";
    if (!strcasecmp(dtype, "bf16")) {
        if (!(g->bf16_tflops > 0)) {
            fprintf(stderr, "llmq roofline: the %s has no BF16 tensor cores: --dtype f16\n", g->name);
            return 2;
        }
        o.wdt = o.act_dt = LLMQ_BF16;
    } else if (!strcasecmp(dtype, "f16") || !strcasecmp(dtype, "fp16")) {
        o.wdt = o.act_dt = LLMQ_F16;
    } else if (!strcasecmp(dtype, "int8") || !strcasecmp(dtype, "int4")) {
        o.wdt = o.act_dt;
        o.quant = dtype[3] == '8' ? LLMQ_QUANT_INT8 : LLMQ_QUANT_INT4;
    } else {
        fprintf(stderr, "llmq roofline: --dtype '%s': expected bf16, f16, int8 or int4\n", dtype);
        return 2;
    }

    llmq_err err = {0};
    model_config cfg;
    if (load_config(&cfg, what, &err)) {
        fprintf(stderr, "llmq roofline: %s\n", err.msg);
        return 1;
    }
    scenario sc[6];
    int n_sc = 0;
    if (batch || prefill) {
        if (batch) sc[n_sc++] = (scenario){.prefill = 0, .n = batch};
        if (prefill) sc[n_sc++] = (scenario){.prefill = 1, .n = prefill};
    } else {
        static const int batches[] = {1, 8, 64}, prompts[] = {512, 2048, 8192};
        for (int i = 0; i < 3; i++) sc[n_sc++] = (scenario){.prefill = 0, .n = batches[i]};
        for (int i = 0; i < 3; i++)
            if (prompts[i] <= cfg.max_position_embeddings) sc[n_sc++] = (scenario){.prefill = 1, .n = prompts[i]};
    }
    if (context > cfg.max_position_embeddings) {
        fprintf(stderr, "llmq roofline: --context %d is beyond the model's context (%d)\n", context,
                cfg.max_position_embeddings);
        return 2;
    }
    for (int i = 0; i < n_sc; i++) {
        int *lim = sc[i].prefill ? &o.max_tokens : &o.max_seqs;
        if (sc[i].n > *lim) *lim = sc[i].n;
    }
    if (o.max_tokens < 1) o.max_tokens = 1;
    if (o.max_seqs < 1) o.max_seqs = 1;
    o.max_context = context;
    rf_run *r;
    if (rf_create(&r, &cfg, &o, &err)) {
        fprintf(stderr, "llmq roofline: %s\n", err.msg);
        return 1;
    }
    for (int i = 0; i < n_sc; i++) {
        const llmq_status st = sc[i].prefill ? rf_prefill(r, sc[i].n, &sc[i].step, &err)
                                             : rf_decode(r, sc[i].n, context, &sc[i].step, &err);
        if (st) {
            fprintf(stderr, "llmq roofline: %s\n", err.msg);
            rf_destroy(r);
            return 1;
        }
        sc[i].t = step_time(&sc[i].step, g, o.act_dt);
    }
    const double held = rf_weight_bytes_held(r);
    rf_destroy(r);
    /* whether the step's sequences fit on the GPU at all: the estimator's
     * verdict for B sequences of the context (a decode) or one of P tokens
     * run in one step (a prefill), at its default memory utilization */
    const vram_gpu *vg = vram_gpu_find(g->name);
    vram_model vm;
    vram_model_from_config(&vm, &cfg);
    for (int i = 0; i < n_sc; i++) {
        vram_opts vo = {.wdt = o.wdt, .kv_dt = o.act_dt, .quant = o.quant, .q4_group = o.q4_group, .tp = tp,
                        .max_model_len = sc[i].prefill ? sc[i].n : context, .max_num_seqs = sc[i].prefill ? 1 : sc[i].n,
                        .max_batched_tokens = sc[i].prefill ? sc[i].n : 0, .util = 0.9,
                        .device_bytes = vg ? vg->bytes : 0};
        vram_estimate ve;
        sc[i].fits = vg && !vram_estimate_run(&ve, &vm, &vo, &err) && ve.fits;
    }
    if (json) print_json(what, g, dtype, o.act_dt, tp, context, held, sc, n_sc);
    else print_text(what, g, dtype, o.act_dt, tp, context, held, sc, n_sc);
    return 0;
}
