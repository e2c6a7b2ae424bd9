/*
 * cmd_vram.c — `llmq vram`: will a model fit, and on how many GPUs?
 *
 * Reads the model's config.json arithmetic (a preset, a directory or a
 * config file) and prints the memory one GPU needs under the engine's
 * sharding: weights, KV cache per token and for the sequences asked,
 * activations, runtime overheads; the verdict, the sequences that fit, and
 * the smallest tensor-parallel group that fits.  With --gpu, one GPU; without,
 * a table over the common ones.  All the arithmetic is in worker/engine/vram.c; this
 * file only parses flags and prints (docs/vram.md explains the figures).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "client/cli/cli.h"
#include "worker/engine/engine.h"
#include "worker/engine/vram.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: llmq vram --model DIR|config.json|PRESET [options]\n"
            "  --dtype fp16|bf16|fp32        weights and KV cache on GPUs (default fp16); with --gpu cpu the\n"
            "                                weights default to the checkpoint's dtype and the cache is fp32\n"
            "  --quantization none|int8|int4 weight-only quantization of the linear layers (default none)\n"
            "  --tp N                        tensor-parallel GPUs (default 1)\n"
            "  --max-model-len L             tokens per sequence (default: the model's context)\n"
            "  --max-num-seqs B              sequences of L that must fit (default 1; also the step's sequences,\n"
            "                                32 when not given)\n"
            "  --max-batched-tokens T        tokens per step, for the activations (default 512)\n"
            "  --gpu NAME|GiB|cpu            T4, A10G, L4, A100-40G, A100-80G, H100, H200, L40S, A6000, a size\n"
            "                                in GiB, or cpu (this host's RAM, the CPU backend: what\n"
            "                                llmq-worker --memory-utilization computes); default: a table\n"
            "  --memory-utilization F        fraction of the memory llmq may use (default 0.9)\n"
            "  --json                        one JSON object\n"
            "presets: mistral-7b, llama3-8b, llama3-70b, falcon-40b, mixtral-8x7b, llama2-13b (%s)\n",
            *vram_presets_dir() ? vram_presets_dir() : "tools/presets not found; set LLMQ_PRESETS");
}

static double gib(int64_t b) { return (double)b / (double)(1LL << 30); }

static int parse_dtype(const char *s, llmq_dtype *dt) {
    if (!strcasecmp(s, "fp16") || !strcasecmp(s, "f16") || !strcasecmp(s, "float16")) *dt = LLMQ_F16;
    else if (!strcasecmp(s, "bf16") || !strcasecmp(s, "bfloat16")) *dt = LLMQ_BF16;
    else if (!strcasecmp(s, "fp32") || !strcasecmp(s, "f32") || !strcasecmp(s, "float32")) *dt = LLMQ_F32;
    else return -1;
    return 0;
}

static int parse_int(const char *s, int lo, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end || errno || v < lo || v > 1 << 30) return -1;
    *out = (int)v;
    return 0;
}

/* The fields of one GPU's estimate, as JSON members (no braces). */
static void json_fields(const vram_estimate *e, int min_tp) {
    printf("\"tp\":%d,\"gpu_bytes\":%" PRId64 ",\"budget_bytes\":%" PRId64 ",\"weight_bytes_per_gpu\":%" PRId64
           ",\"kv_bytes_per_token_per_gpu\":%" PRId64 ",\"kv_heads_per_gpu\":%d,\"kv_bytes_per_seq_per_gpu\":%" PRId64
           ",\"kv_bytes_per_gpu\":%" PRId64 ",\"activation_bytes_per_gpu\":%" PRId64
           ",\"overhead_bytes_per_gpu\":%" PRId64 ",\"total_bytes_per_gpu\":%" PRId64
           ",\"kv_pool_bytes_per_gpu\":%" PRId64 ",\"kv_blocks\":%d,\"fits\":%s,\"max_num_seqs\":%d,\"min_tp\":",
           e->tp, e->device_bytes, e->budget_bytes, e->weight_bytes, e->kv_bytes_per_token, e->kv_heads_per_gpu,
           e->kv_bytes_per_seq, e->kv_bytes, e->act_bytes, e->overhead_bytes, e->total_bytes, e->kv_pool_bytes,
           e->kv_blocks, e->fits ? "true" : "false", e->max_num_seqs);
    if (min_tp > 0) printf("%d", min_tp);
    else printf("null");
}

int cmd_vram(int argc, char **argv) {
    enum { O_MODEL = 256, O_DTYPE, O_QUANT, O_TP, O_LEN, O_SEQS, O_BATCHED, O_GPU, O_UTIL, O_JSON, O_HELP };
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL},
        {"dtype", required_argument, 0, O_DTYPE},
        {"quantization", required_argument, 0, O_QUANT},
        {"tp", required_argument, 0, O_TP},
        {"max-model-len", required_argument, 0, O_LEN},
        {"max-num-seqs", required_argument, 0, O_SEQS},
        {"max-batched-tokens", required_argument, 0, O_BATCHED},
        {"gpu", required_argument, 0, O_GPU},
        {"memory-utilization", required_argument, 0, O_UTIL},
        {"json", no_argument, 0, O_JSON},
        {"help", no_argument, 0, O_HELP},
        {0, 0, 0, 0},
    };
    const char *what = NULL, *gpu = NULL;
    vram_opts o;
    memset(&o, 0, sizeof o);
    o.tp = 1;
    o.util = 0.9;
    int json = 0, have_dtype = 0, c;
    llmq_err err = {0};
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case O_MODEL: what = optarg; break;
        case O_DTYPE: bad = parse_dtype(optarg, &o.wdt); have_dtype = 1; break;
        case O_QUANT:
            if (llmq_quant_parse(optarg, &o.quant, &err)) {
                fprintf(stderr, "llmq vram: --quantization: %s\n", err.msg);
                return 2;
            }
            break;
        case O_TP: bad = parse_int(optarg, 1, &o.tp); break;
        case O_LEN: bad = parse_int(optarg, 1, &o.max_model_len); break;
        case O_SEQS: bad = parse_int(optarg, 1, &o.max_num_seqs); break;
        case O_BATCHED: bad = parse_int(optarg, 1, &o.max_batched_tokens); break;
        case O_GPU: gpu = optarg; break;
        case O_UTIL: {
            char *end;
            o.util = strtod(optarg, &end);
            bad = *end || !(o.util > 0 && o.util <= 1);
            break;
        }
        case O_JSON: json = 1; break;
        case O_HELP: usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad) {
            fprintf(stderr, "llmq vram: bad value '%s' for --%s\n", optarg, opts[c - O_MODEL].name);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "llmq vram: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!what) {
        fprintf(stderr, "llmq vram: --model is required\n");
        usage(stderr);
        return 2;
    }
    vram_model vm;
    if (vram_model_load(&vm, what, &err)) {
        fprintf(stderr, "llmq vram: %s\n", err.msg);
        return 1;
    }

    /* the devices: one named, one sized, the host, or the table */
    const vram_gpu *one = NULL;
    vram_gpu custom = {"custom", "custom", 0, 0};
    if (gpu && !strcasecmp(gpu, "cpu")) {
        o.cpu = 1;
        custom.name = "cpu";
        custom.label = "cpu (host RAM)";
        custom.bytes = vram_host_bytes() / o.tp; /* tensor-parallel ranks share the host */
        one = &custom;
        if (!have_dtype) o.wdt = vm.stored;
        eng_kv_dtype(NULL, 1, LLMQ_F32, vm.stored, &o.kv_dt, NULL); /* the worker's --kv-dtype auto */
    } else {
        if (!have_dtype) o.wdt = LLMQ_F16;
        o.kv_dt = o.wdt;
        if (gpu) {
            char *end;
            double g = strtod(gpu, &end);
            if (end != gpu && !*end && g > 0) {
                custom.bytes = (int64_t)(g * (double)(1LL << 30));
                one = &custom;
            } else if (!(one = vram_gpu_find(gpu))) {
                fprintf(stderr, "llmq vram: unknown GPU '%s' (give a name from --help or a size in GiB)\n", gpu);
                return 2;
            }
        }
    }
    int n_gpus = 0;
    const vram_gpu *gpus = vram_gpus(&n_gpus);
    vram_estimate e;
    o.device_bytes = one ? one->bytes : gpus[0].bytes;
    if (vram_estimate_run(&e, &vm, &o, &err)) {
        fprintf(stderr, "llmq vram: %s\n", err.msg);
        return 1;
    }

    if (json) {
        printf("{\"model\":\"%s\",\"arch\":\"%s\",\"params\":%" PRId64 ",\"dtype\":\"%s\",\"kv_dtype\":\"%s\","
               "\"quantization\":\"%s\",\"max_model_len\":%d,\"num_seqs\":%d,\"memory_utilization\":%.4g,"
               "\"sliding_window\":%d,",
               vm.name, vm.arch, e.params, llmq_dtype_name(o.wdt), llmq_dtype_name(o.kv_dt),
               llmq_quant_name(o.quant), e.max_model_len, e.num_seqs, o.util, vm.sliding_window);
        if (one) {
            printf("\"gpu\":\"%s\",", one->name);
            json_fields(&e, vram_min_tp(&vm, &o));
            printf("}\n");
        } else {
            json_fields(&e, 0); /* tp-dependent figures at the top level too; gpu-dependent ones per GPU */
            printf(",\"gpus\":[");
            int first = 1;
            for (int i = 0; i < n_gpus; i++) {
                if (!gpus[i].in_table) continue;
                o.device_bytes = gpus[i].bytes;
                vram_estimate_run(&e, &vm, &o, NULL);
                printf("%s{\"gpu\":\"%s\",", first ? "" : ",", gpus[i].name);
                json_fields(&e, vram_min_tp(&vm, &o));
                printf("}");
                first = 0;
            }
            printf("]}\n");
        }
        return 0;
    }

    printf("%s (%s): %.2f B parameters; weights %s%s%s, KV cache %s; tp %d; %d tokens x %d sequence%s\n", vm.name,
           vm.arch, e.params / 1e9, llmq_dtype_name(o.wdt), o.quant ? " with linear layers " : "",
           o.quant ? llmq_quant_name(o.quant) : "", llmq_dtype_name(o.kv_dt), e.tp, e.max_model_len, e.num_seqs,
           e.num_seqs == 1 ? "" : "s");
    printf("per GPU: weights %.2f GiB; KV %.1f KiB/token (%d of %d KV heads), %.2f GiB per sequence;\n"
           "         activations %.2f GiB (step of %d tokens); runtime %.2f GiB%s\n",
           gib(e.weight_bytes), e.kv_bytes_per_token / 1024.0, e.kv_heads_per_gpu, vm.kv_heads,
           gib(e.kv_bytes_per_seq), gib(e.act_bytes), o.max_batched_tokens > 0 ? o.max_batched_tokens : 512,
           gib(e.overhead_bytes), o.cpu ? " (CPU backend)" : e.tp > 1 ? " (CUDA context, cuBLAS, NCCL)"
                                                                        : " (CUDA context, cuBLAS)");
    if (vm.sliding_window > 0 && vm.sliding_window < e.max_model_len)
        printf("note: sliding window of %d tokens; the paged cache still keeps every position\n", vm.sliding_window);
    printf("%-16s %9s %9s %9s  %-4s %8s %7s\n", "GPU", "memory", "usable", "needs", "fits", "max seqs", "min tp");
    for (int i = 0; i < (one ? 1 : n_gpus); i++) {
        const vram_gpu *g = one ? one : &gpus[i];
        if (!one && !g->in_table) continue;
        o.device_bytes = g->bytes;
        vram_estimate_run(&e, &vm, &o, NULL);
        const int mt = vram_min_tp(&vm, &o);
        char mts[16];
        if (mt > 0) snprintf(mts, sizeof mts, "%d", mt);
        else snprintf(mts, sizeof mts, ">64");
        printf("%-16s %8.1fG %8.1fG %8.1fG  %-4s %8d %7s\n", one == &custom && !o.cpu ? "custom" : g->label,
               gib(g->bytes), gib(e.budget_bytes), gib(e.total_bytes), e.fits ? "yes" : "no", e.max_num_seqs, mts);
    }
    return 0;
}
