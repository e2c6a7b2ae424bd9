/*
 * cmd_generate.c — `llmq generate`: run a local model on one or more prompts,
 * offline (no Redis), through the same scheduler and engine the worker uses.
 * Several prompts run as one continuously batched group.
 *
 * Each prompt with its sampling options is checked as the API checks a
 * request (proto_request_validate, common/protocol.h: the same bounds and
 * the same messages), mapped to sampling parameters as the worker maps one
 * (sampling_params_from_request), and a prompt without --seed gets one
 * drawn as the worker draws it (sampler_seed_draw).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "client/cli/cli.h"
#include "common/log.h"
#include "common/protocol.h"
#include "kernels/backend.h"
#include "kernels/cpu/threads.h"
#include "worker/engine/engine.h"
#include "worker/engine/runtime.h"
#include "worker/engine/sched.h"
#include "worker/engine/tp.h"
#include "worker/model/model.h"
#include "worker/tokenizer/tokenizer.h"

#define GEN_MAX_PROMPTS 256

typedef struct gen_item {
    seq s;
    int index;
    double t_start, t_first, t_last; /* seconds */
    uint64_t logits_digest;          /* --logits-digest: XXH3 chained over every logits row sampled from */
} gen_item;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void gen_on_token(seq *s, int32_t tok, void *ud) {
    (void)tok;
    (void)ud;
    gen_item *it = s->user;
    double t = now_s();
    if (seq_n_generated(s) == 1) it->t_first = t;
    it->t_last = t;
}

/* --logits-digest: every bit of every row the sequence sampled from. */
static void gen_on_logits(seq *s, const float *logits, int vocab, void *ud) {
    (void)ud;
    gen_item *it = s->user;
    it->logits_digest = XXH3_64bits_withSeed(logits, (size_t)vocab * sizeof *logits, it->logits_digest);
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: llmq generate --model DIR (--prompt TEXT | --prompt-ids 1,2,3)... [options]\n"
            "  --prompt TEXT            a text prompt (needs the model's tokenizer.json); repeatable\n"
            "  --prompt-ids LIST        comma-separated token ids; repeat for a batch\n"
            "  --max-tokens N           tokens to generate per prompt (default 64)\n"
            "  --temperature T          0 = greedy (default 1.0); sampling options have the API's bounds\n"
            "  --top-k K  --top-p P  --min-p P\n"
            "  --repetition-penalty R  --presence-penalty P  --frequency-penalty F\n"
            "  --seed S                 sampling seed (default: drawn at random)\n"
            "  --stop-token-id ID       extra stop id (repeatable)\n"
            "  --ignore-eos             keep generating past end-of-sequence\n"
            "  --backend NAME           cpu (default), cpu-ref, cuda, or synthetic:RATE (no weights, no\n"
            "                           compute: RATE tokens a second per sequence; llmq-worker's\n"
            "                           --backend synthetic)\n"
            "  --kv-blocks N            KV cache blocks of 16 tokens (default: enough for all prompts)\n"
            "  --kv-dtype T             the KV cache's element type: auto (default), f32, f16 or bf16; auto is\n"
            "                           the model's stored type on the cpu backends (bf16, f16; f32 for an F32\n"
            "                           checkpoint), the activation type on cuda (which takes no other)\n"
            "  --memory-utilization F   instead: as many blocks as fit in this fraction of the GPU's memory\n"
            "                           once the weights are in (cuda)\n"
            "  --max-num-seqs N         sequences per step (default 32, at most the token budget)\n"
            "  --max-batched-tokens N   tokens per step (default 512)\n"
            "  --tp N                   tensor parallel over N local CPU ranks (processes)\n"
            "  --quantization Q         none (default), int8 or int4: weight-only, applied at load\n"
            "  --no-prefix-caching      compute every prompt in full (default: reuse the KV blocks of\n"
            "                           prompts that share a prefix; the JSON says cached_tokens)\n"
            "  --logits-digest          the JSON gives logits_digest, a hash of every logits row sampled\n"
            "                           from (two runs agree on it only if every bit agrees)\n"
            "  --json                   one JSON object per prompt per line\n");
}

static int parse_ids(const char *arg, int32_t **out, int *n) {
    int cap = 16, len = 0;
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    if (!ids) return -1;
    const char *p = arg;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX) {
            free(ids);
            return -1;
        }
        if (len == cap) {
            int32_t *g = realloc(ids, (size_t)(cap *= 2) * sizeof *ids);
            if (!g) {
                free(ids);
                return -1;
            }
            ids = g;
        }
        ids[len++] = (int32_t)v;
        p = end;
        while (*p == ',' || *p == ' ') p++;
    }
    if (len == 0) {
        free(ids);
        return -1;
    }
    *out = ids;
    *n = len;
    return 0;
}

/* The generated text as it follows the prompt (decode(prompt + output) minus
 * decode(prompt)), without the end-of-sequence token.  malloc'd or NULL. */
static char *completion_text(const tokenizer *tok, const model *m, const seq *s) {
    tok_stream ts;
    tok_text out = {0};
    if (tok_stream_init(&ts, tok, s->tokens, (size_t)s->n_prompt, 1)) return NULL;
    for (int i = s->n_prompt; i < s->n_tokens; i++) {
        int32_t id = s->tokens[i];
        int stop = !s->ignore_eos && model_config_is_eos(&m->cfg, id);
        for (int k = 0; k < s->n_stop_ids; k++) stop |= s->stop_ids[k] == id;
        if (!stop) tok_stream_push(&ts, id, &out);
    }
    tok_stream_finish(&ts, &out);
    tok_stream_deinit(&ts);
    char *r = strdup(out.data ? out.data : "");
    tok_text_deinit(&out);
    return r;
}

static void print_ids(FILE *f, const int32_t *ids, int n) {
    fputc('[', f);
    for (int i = 0; i < n; i++) fprintf(f, i ? ",%d" : "%d", ids[i]);
    fputc(']', f);
}

int cmd_generate(int argc, char **argv) {
    enum { O_PROMPT = 255, O_PROMPT_IDS = 256, O_MAX_TOKENS, O_TEMP, O_TOPK, O_TOPP, O_MINP, O_REP, O_PRES, O_FREQ, O_SEED,
           O_STOP_ID, O_IGNORE_EOS, O_BACKEND, O_KV, O_SEQS, O_BATCHED, O_JSON, O_MODEL, O_HELP, O_TP, O_QUANT, O_MEM, O_NO_PC, O_DIGEST, O_KV_DT };
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL},
        {"prompt", required_argument, 0, O_PROMPT},
        {"prompt-ids", required_argument, 0, O_PROMPT_IDS},
        {"max-tokens", required_argument, 0, O_MAX_TOKENS},
        {"temperature", required_argument, 0, O_TEMP},
        {"top-k", required_argument, 0, O_TOPK},
        {"top-p", required_argument, 0, O_TOPP},
        {"min-p", required_argument, 0, O_MINP},
        {"repetition-penalty", required_argument, 0, O_REP},
        {"presence-penalty", required_argument, 0, O_PRES},
        {"frequency-penalty", required_argument, 0, O_FREQ},
        {"seed", required_argument, 0, O_SEED},
        {"stop-token-id", required_argument, 0, O_STOP_ID},
        {"ignore-eos", no_argument, 0, O_IGNORE_EOS},
        {"backend", required_argument, 0, O_BACKEND},
        {"kv-blocks", required_argument, 0, O_KV},
        {"kv-dtype", required_argument, 0, O_KV_DT},
        {"max-num-seqs", required_argument, 0, O_SEQS},
        {"max-batched-tokens", required_argument, 0, O_BATCHED},
        {"json", no_argument, 0, O_JSON},
        {"tp", required_argument, 0, O_TP},
        {"quantization", required_argument, 0, O_QUANT},
        {"memory-utilization", required_argument, 0, O_MEM},
        {"no-prefix-caching", no_argument, 0, O_NO_PC},
        {"logits-digest", no_argument, 0, O_DIGEST},
        {"help", no_argument, 0, O_HELP},
        {0, 0, 0, 0},
    };
    const char *model_dir = NULL, *backend_name = "cpu", *kv_dtype = NULL;
    int32_t *prompts[GEN_MAX_PROMPTS];
    const char *prompt_text[GEN_MAX_PROMPTS] = {0}; /* --prompt: tokenized once the model is known */
    int prompt_len[GEN_MAX_PROMPTS];
    double mem_util = 0;
    int n_prompts = 0, max_tokens = 64, kv_blocks = 0, max_seqs = 0, max_batched = 512, json = 0, ignore_eos = 0;
    int n_stop = 0, tp = 1, no_pc = 0, digest = 0;
    int32_t stop_ids[SEQ_MAX_STOP_IDS];
    /* the sampling options as a request (borrowed pointers: never deinit'ed) */
    proto_request rq;
    proto_request_init(&rq);
    rq.model = "generate"; /* the API requires a name; no queue is involved */
    model_load_opts lo = {LLMQ_QUANT_NONE, 0};
    int rc = 2, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        switch (c) {
        case O_MODEL: model_dir = optarg; break;
        case O_PROMPT:
            if (n_prompts == GEN_MAX_PROMPTS) {
                fprintf(stderr, "llmq generate: at most %d prompts\n", GEN_MAX_PROMPTS);
                goto out;
            }
            prompt_text[n_prompts] = optarg;
            prompts[n_prompts] = NULL;
            prompt_len[n_prompts++] = 0;
            break;
        case O_PROMPT_IDS:
            if (n_prompts == GEN_MAX_PROMPTS) {
                fprintf(stderr, "llmq generate: at most %d prompts\n", GEN_MAX_PROMPTS);
                goto out;
            }
            if (parse_ids(optarg, &prompts[n_prompts], &prompt_len[n_prompts])) {
                fprintf(stderr, "llmq generate: --prompt-ids wants comma-separated non-negative integers, got '%s'\n",
                        optarg);
                goto out;
            }
            n_prompts++;
            break;
        case O_MAX_TOKENS: max_tokens = (int)strtol(optarg, &end, 10); break;
        case O_TEMP: rq.temperature = strtod(optarg, &end); break;
        case O_TOPK: rq.top_k = (int32_t)strtol(optarg, &end, 10); break;
        case O_TOPP: rq.top_p = strtod(optarg, &end); break;
        case O_MINP: rq.min_p = strtod(optarg, &end); break;
        case O_REP: rq.repetition_penalty = strtod(optarg, &end); break;
        case O_PRES: rq.presence_penalty = strtod(optarg, &end); break;
        case O_FREQ: rq.frequency_penalty = strtod(optarg, &end); break;
        case O_SEED: rq.seed = strtoull(optarg, &end, 10); rq.has_seed = true; break;
        case O_STOP_ID:
            if (n_stop == SEQ_MAX_STOP_IDS) {
                fprintf(stderr, "llmq generate: at most %d --stop-token-id\n", SEQ_MAX_STOP_IDS);
                goto out;
            }
            stop_ids[n_stop++] = (int32_t)strtol(optarg, &end, 10);
            break;
        case O_IGNORE_EOS: ignore_eos = 1; break;
        case O_BACKEND: backend_name = optarg; break;
        case O_KV: kv_blocks = (int)strtol(optarg, &end, 10); break;
        case O_KV_DT: kv_dtype = optarg; break; /* checked by the engine (eng_kv_dtype) */
        case O_MEM: mem_util = strtod(optarg, &end); break;
        case O_SEQS: max_seqs = (int)strtol(optarg, &end, 10); break;
        case O_BATCHED: max_batched = (int)strtol(optarg, &end, 10); break;
        case O_JSON: json = 1; break;
        case O_NO_PC: no_pc = 1; break;
        case O_DIGEST: digest = 1; break;
        case O_TP: tp = (int)strtol(optarg, &end, 10); break;
        case O_QUANT: {
            llmq_err qe = {0};
            if (llmq_quant_parse(optarg, &lo.quant, &qe)) {
                fprintf(stderr, "llmq generate: --quantization: %s\n", qe.msg);
                goto out;
            }
            break;
        }
        case O_HELP: usage(stdout); rc = 0; goto out;
        default: usage(stderr); goto out;
        }
        if (end && *end) {
            const char *name = "?";
            for (const struct option *o = opts; o->name; o++)
                if (o->val == c) name = o->name;
            fprintf(stderr, "llmq generate: bad number '%s' for --%s\n", optarg, name);
            goto out;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "llmq generate: unexpected argument '%s'\n", argv[optind]);
        goto out;
    }
    if (!model_dir || n_prompts == 0) {
        fprintf(stderr, "llmq generate: --model and at least one --prompt or --prompt-ids are required\n");
        usage(stderr);
        goto out;
    }
    if (max_seqs == 0) max_seqs = max_batched < 32 ? max_batched : 32;
    if (max_seqs < 1 || max_batched < max_seqs || kv_blocks < 0 || mem_util < 0 || mem_util > 1 ||
        (mem_util > 0 && kv_blocks > 0)) {
        fprintf(stderr, "llmq generate: out-of-range option (need max-batched-tokens >= max-num-seqs >= 1, "
                        "0 < memory-utilization <= 1 without --kv-blocks)\n");
        goto out;
    }
    /* every prompt as the request the API would check */
    rq.max_tokens = max_tokens;
    rq.ignore_eos = ignore_eos;
    rq.stop_token_ids = stop_ids;
    rq.n_stop_token_ids = (size_t)n_stop;
    for (int i = 0; i < n_prompts; i++) {
        rq.kind = prompt_text[i] ? PROTO_PROMPT_TEXT : PROTO_PROMPT_IDS;
        rq.prompt = (char *)prompt_text[i];
        rq.prompt_ids = prompts[i];
        rq.n_prompt_ids = prompt_text[i] ? 0 : (size_t)prompt_len[i];
        llmq_err ve = {0};
        if (proto_request_validate(&rq, &ve)) {
            fprintf(stderr, "llmq generate: %s\n", ve.msg);
            goto out;
        }
    }
    if (!rq.has_seed) { /* drawn as the worker draws a job's seed */
        srand((unsigned)getpid());
        rq.seed = sampler_seed_draw();
    }
    sampling_params sp;
    sampling_params_from_request(&sp, &rq, rq.seed);

    rc = 1;
    llmq_err err = {0};
    runtime *rt = NULL;
    sched *sch = NULL;
    const model *m = NULL;
    gen_item *items = NULL;
    tp_group group = {0};
    int group_started = 0;
    /* The tokenizer comes first, alone: the prompts' lengths size the KV
     * pool, which every rank of a group needs before it starts. */
    tokenizer *tok = NULL;
    char tokpath[4096];
    snprintf(tokpath, sizeof tokpath, "%s/tokenizer.json", model_dir);
    if (access(tokpath, R_OK) == 0 && !(tok = tok_load(model_dir, &err))) {
        fprintf(stderr, "llmq generate: %s\n", err.msg);
        goto done;
    }
    for (int i = 0; i < n_prompts; i++) {
        if (!prompt_text[i]) continue;
        if (!tok) {
            fprintf(stderr, "llmq generate: --prompt needs %s; use --prompt-ids\n", tokpath);
            goto done;
        }
        size_t n = 0;
        if (tok_encode(tok, prompt_text[i], strlen(prompt_text[i]), 1, &prompts[i], &n, &err)) {
            fprintf(stderr, "llmq generate: prompt %d: %s\n", i, err.msg);
            goto done;
        }
        prompt_len[i] = (int)n;
    }
    if (kv_blocks == 0 && mem_util == 0) {
        long need = 0;
        for (int i = 0; i < n_prompts; i++) need += (prompt_len[i] + max_tokens + 1 + ENG_BLOCK_SIZE - 1) / ENG_BLOCK_SIZE;
        kv_blocks = (int)need;
    }
    eng_opts eo = {kv_blocks, max_batched, max_seqs, NULL, mem_util, 0, kv_dtype};
    if (tp != 1) {
        /* check that the split works before starting any process */
        model_config cfg;
        model_shard sh;
        if (model_config_load(&cfg, model_dir, &err) || model_shard_plan(&sh, &cfg, 0, tp, &err)) {
            fprintf(stderr, "llmq generate: %s\n", err.msg);
            goto done;
        }
        if (tp_group_start(&group, tp, 10000, &err)) {
            fprintf(stderr, "llmq generate: %s\n", err.msg);
            goto done;
        }
        group_started = 1;
        if (group.rank > 0) { /* a peer: serve the leader's steps, print nothing */
            rc = tp_peer_run(&group, model_dir, backend_name, &lo, &eo, &err) ? 1 : 0;
            group_started = 0;
            goto done;
        }
        eo.comm = group.comm;
    }
    runtime_opts ro;
    memset(&ro, 0, sizeof ro);
    ro.backend = backend_name;
    ro.model_dir = model_dir;
    ro.comm = eo.comm;
    ro.load = lo;
    ro.eng = eo;
    ro.with_sched = 1;
    ro.sched = (sched_opts){max_seqs, max_batched};
    ro.cb = (sched_callbacks){gen_on_token, NULL, NULL};
    if (runtime_create(&rt, &ro, &err)) {
        fprintf(stderr, "llmq generate: %s\n", err.msg);
        goto done;
    }
    const char *threads_why; /* the kernels' thread count and why (kernels/cpu/threads.h) */
    cpu_threads_setup(&threads_why);
    sch = rt->sch;
    m = rt->m;
    if (no_pc) sched_set_prefix_caching(sch, 0);
    if (digest) sched_set_logits_hook(sch, gen_on_logits, NULL);
    items = calloc((size_t)n_prompts, sizeof *items);
    if (!items) {
        fprintf(stderr, "llmq generate: out of memory\n");
        goto done;
    }
    for (int i = 0; i < n_prompts; i++) {
        gen_item *it = &items[i];
        if (seq_init(&it->s, prompts[i], prompt_len[i], max_tokens, &sp)) {
            fprintf(stderr, "llmq generate: out of memory\n");
            goto done;
        }
        it->index = i;
        it->s.user = it;
        it->s.ignore_eos = ignore_eos;
        it->s.n_stop_ids = n_stop;
        memcpy(it->s.stop_ids, stop_ids, sizeof stop_ids);
        it->t_start = now_s();
        if (sched_add(sch, &it->s, &err)) {
            fprintf(stderr, "llmq generate: prompt %d: %s\n", i, err.msg);
            goto done;
        }
    }
    for (;;) {
        int worked;
        if (sched_step(sch, &worked, &err)) {
            fprintf(stderr, "llmq generate: %s\n", err.msg);
            goto done;
        }
        if (!worked) break;
    }
    for (int i = 0; i < n_prompts; i++) {
        gen_item *it = &items[i];
        const seq *s = &it->s;
        const int n_out = seq_n_generated(s);
        if (json) {
            double prefill_ms = (it->t_first - it->t_start) * 1e3;
            double tps = n_out > 1 && it->t_last > it->t_first ? (n_out - 1) / (it->t_last - it->t_first) : 0.0;
            printf("{\"index\":%d,\"prompt_ids\":", i);
            print_ids(stdout, s->tokens, s->n_prompt);
            printf(",\"output_ids\":");
            print_ids(stdout, s->tokens + s->n_prompt, n_out);
            char *text = tok ? completion_text(tok, m, s) : NULL;
            if (text) {
                json_t *jt = json_string(text);
                char *js = jt ? json_dumps(jt, JSON_ENCODE_ANY) : NULL;
                printf(",\"text\":%s", js ? js : "\"\"");
                free(js);
                json_decref(jt);
                free(text);
            }
            if (digest) printf(",\"logits_digest\":\"%016" PRIx64 "\"", it->logits_digest);
            printf(",\"threads\":%d,\"threads_why\":\"%s\",\"kernels\":\"%s\"", omp_get_max_threads(), threads_why,
                   rt->be->isa ? rt->be->isa : "");
            printf(",\"finish_reason\":\"%s\",\"prompt_tokens\":%d,\"cached_tokens\":%d,\"completion_tokens\":%d,"
                   "\"prefill_ms\":%.3f,\"decode_tok_per_s\":%.2f,\"preemptions\":%d,\"seed\":%" PRIu64 "}\n",
                   finish_reason_name(s->finish), s->n_prompt, s->n_cached, n_out, prefill_ms, tps, s->n_preempted,
                   s->sp.seed);
        } else {
            char *text = tok ? completion_text(tok, m, s) : NULL;
            if (text) {
                printf("[%d] %s (%s)\n", i, text, finish_reason_name(s->finish));
                free(text);
            } else {
                printf("[%d] ", i);
                print_ids(stdout, s->tokens + s->n_prompt, n_out);
                printf(" (%s)\n", finish_reason_name(s->finish));
            }
        }
    }
    rc = 0;
    if (group_started && eng_stop_peers(rt->eng, &err)) {
        fprintf(stderr, "llmq generate: %s\n", err.msg);
        rc = 1;
    }
done:
    if (group_started && tp_group_stop(&group, rc != 0) && rc == 0) {
        fprintf(stderr, "llmq generate: a tensor-parallel peer failed\n");
        rc = 1;
    }
    if (items)
        for (int i = 0; i < n_prompts; i++) seq_deinit(&items[i].s);
    free(items);
    runtime_destroy(rt);
    tok_destroy(tok);
out:
    for (int i = 0; i < n_prompts; i++) free(prompts[i]);
    return rc;
}
