/*
 * main.c — llmq-loadtest: options, then one run, then the report.
 *
 *   llmq-loadtest --target http[s]://HOST[:PORT][/PREFIX] | redis://HOST:PORT --model NAME
 *                 (--rate R [--burstiness B] | --concurrency C)
 *                 (--requests N | --duration S)
 *                 (--prompt-tokens DIST | --dataset-name sharegpt|custom --dataset-path F)
 *                 --output-tokens DIST
 *                 [--stream] [--api-key K] [--seed S] [--slo ttft=MS,tpot=MS,e2e=MS]
 *                 [--json OUT] [--svg OUT] [--endpoint PATH] [--prefix P]
 *                 [--timeout S] [--token-range LO-HI] [--num-warmups N]
 *                 [--percentile-metrics LIST] [--metric-percentiles LIST]
 *                 [--insecure] [--cacert FILE] [--quiet]
 *
 * vLLM's `bench serve` spellings are accepted where they mean the same:
 * --base-url (= --target), --request-rate (= --rate), --num-prompts
 * (= --requests), --dataset-name random (= token ids).
 *
 * Exit status: 0 when the run went through (failed requests are reported,
 * not fatal), 1 when it could not start or was aborted, 2 on bad usage.
 */
#include <errno.h>
#include <ev.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>

#include <curl/curl.h>

#include "loadtest/lt.h"
#include "loadtest/report.h"
#include "loadtest/stats.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: llmq-loadtest --target URL --model NAME (--rate R [--burstiness B] | --concurrency C)\n"
            "                     (--requests N | --duration S) (--prompt-tokens DIST | --dataset-name D --dataset-path F)\n"
            "                     --output-tokens DIST [options]\n"
            "  --target URL           http[s]://HOST[:PORT][/PREFIX] (OpenAI API, e.g. llmq-gateway; also --base-url)\n"
            "                         or redis://[user:pass@]HOST:PORT[/db] | unix:///path (llmq protocol)\n"
            "  --model NAME           model name sent with every request\n"
            "  --rate R               open loop: R requests/s (gamma arrivals), or 'inf' (also --request-rate)\n"
            "  --burstiness B         gamma shape of the arrivals: 1 = Poisson (default), < 1 burstier\n"
            "  --concurrency C        closed loop: keep C requests in flight\n"
            "  --requests N           issue N requests (also --num-prompts)\n"
            "  --duration S           issue requests for S seconds, then wait for those in flight\n"
            "  --prompt-tokens DIST   random prompts of token ids: 128 | uniform:64-512 | file:PATH (one length a line)\n"
            "  --dataset-name D       random (token ids, the default), sharegpt or custom (prompts from --dataset-path)\n"
            "  --dataset-path F       JSON array or JSONL: ShareGPT conversations, or {\"prompt\": TEXT} records\n"
            "  --output-tokens DIST   tokens to generate (max_tokens with ignore_eos), same forms\n"
            "  --stream               HTTP: stream the answer (SSE); the Redis target always streams\n"
            "  --endpoint PATH        HTTP path (default /v1/completions; a path ending in /chat/completions\n"
            "                         sends chat messages)\n"
            "  --api-key K            HTTP: send 'Authorization: Bearer K'\n"
            "  --insecure             HTTPS: do not verify the server's certificate\n"
            "  --cacert FILE          HTTPS: verify with the CA certificates in FILE (PEM)\n"
            "  --num-warmups N        send N requests first and leave them out of every figure\n"
            "  --seed S               seed of lengths, prompts and arrivals (default 0)\n"
            "  --slo LIST             goodput SLOs in ms: ttft=MS,tpot=MS,e2e=MS (any subset)\n"
            "  --percentile-metrics L flat vLLM keys (p99_ttft_ms...) for these of ttft,tpot,itl,e2el\n"
            "                         (default ttft,tpot,itl)\n"
            "  --metric-percentiles L their percentiles, e.g. 50,90,99 (default 99)\n"
            "  --json OUT             write the full record as JSON ('-' = stdout, after the table)\n"
            "  --svg OUT              write latency CDFs and throughput over time as SVG\n"
            "  --prefix P             Redis key prefix (default llmq:)\n"
            "  --timeout S            a request not finished after S s fails as 'timeout' (default 600)\n"
            "  --token-range LO-HI    prompt token ids are drawn from [LO, HI] (default 259-511;\n"
            "                         keep HI below the model's vocabulary size)\n"
            "  --quiet                no progress line on stderr\n");
}

static int parse_double(const char *s, double lo, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !isfinite(v) || v < lo) return -1;
    *out = v;
    return 0;
}

static int parse_long(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

/* http[s]://HOST[:PORT][/PREFIX] (parsed by curl, which will use it) plus
 * the endpoint into cfg->url.  NULL on success, else what is wrong. */
static const char *parse_http_target(lt_config *cfg, const char *url) {
    CURLU *u = curl_url();
    if (!u) return "out of memory";
    const char *bad = NULL;
    char *path = NULL, *query = NULL, *frag = NULL;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK || curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK)
        bad = "not a URL";
    else if (curl_url_get(u, CURLUPART_QUERY, &query, 0) == CURLUE_OK ||
             curl_url_get(u, CURLUPART_FRAGMENT, &frag, 0) == CURLUE_OK)
        bad = "no query or fragment: the path goes in --endpoint";
    curl_free(path);
    curl_free(query);
    curl_free(frag);
    curl_url_cleanup(u);
    if (bad) return bad;
    size_t n = strlen(url);
    while (n > 0 && url[n - 1] == '/') n--; /* the endpoint brings its own */
    if (snprintf(cfg->url, sizeof cfg->url, "%.*s%s", (int)n, url, cfg->endpoint) >= (int)sizeof cfg->url)
        return "too long";
    size_t el = strlen(cfg->endpoint), cl = strlen("/chat/completions");
    cfg->chat = el >= cl && !strcmp(cfg->endpoint + el - cl, "/chat/completions");
    return NULL;
}

/* vLLM's --percentile-metrics: ttft,tpot,itl,e2el (e2e too). */
static int parse_metrics(lt_config *cfg, const char *s) {
    char buf[128];
    if (strlen(s) >= sizeof buf) return -1;
    strcpy(buf, s);
    cfg->pct_metrics = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (!strcmp(tok, "ttft")) cfg->pct_metrics |= LT_M_TTFT;
        else if (!strcmp(tok, "tpot")) cfg->pct_metrics |= LT_M_TPOT;
        else if (!strcmp(tok, "itl")) cfg->pct_metrics |= LT_M_ITL;
        else if (!strcmp(tok, "e2el") || !strcmp(tok, "e2e")) cfg->pct_metrics |= LT_M_E2E;
        else return -1;
    }
    return cfg->pct_metrics ? 0 : -1;
}

/* vLLM's --metric-percentiles: a comma-separated list in (0, 100]. */
static int parse_percentiles(lt_config *cfg, const char *s) {
    char buf[256];
    if (strlen(s) >= sizeof buf) return -1;
    strcpy(buf, s);
    cfg->n_pcts = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        double v;
        if (cfg->n_pcts == (int)(sizeof cfg->pcts / sizeof cfg->pcts[0]) || parse_double(tok, 0, &v) || v <= 0 ||
            v > 100)
            return -1;
        cfg->pcts[cfg->n_pcts++] = v;
    }
    return cfg->n_pcts ? 0 : -1;
}

/* ttft=MS,tpot=MS,e2e=MS (e2el accepted as vLLM spells it). */
static int parse_slo(lt_config *cfg, const char *s) {
    char buf[256];
    if (strlen(s) >= sizeof buf) return -1;
    strcpy(buf, s);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        if (!eq) return -1;
        *eq = '\0';
        double v;
        if (parse_double(eq + 1, 0, &v) || v <= 0) return -1;
        if (!strcmp(tok, "ttft")) cfg->slo.ttft_ms = v;
        else if (!strcmp(tok, "tpot")) cfg->slo.tpot_ms = v;
        else if (!strcmp(tok, "e2e") || !strcmp(tok, "e2el")) cfg->slo.e2e_ms = v;
        else return -1;
    }
    cfg->has_slo = cfg->slo.ttft_ms > 0 || cfg->slo.tpot_ms > 0 || cfg->slo.e2e_ms > 0;
    return cfg->has_slo ? 0 : -1;
}

/* Up to the hard limit: each stream holds a socket. */
static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

enum {
    O_TARGET = 1, O_MODEL, O_RATE, O_BURST, O_CONC, O_REQS, O_DUR, O_PROMPT, O_OUTPUT, O_STREAM, O_KEY, O_SEED,
    O_SLO, O_JSON, O_SVG, O_ENDPOINT, O_PREFIX, O_TIMEOUT, O_TOKRANGE, O_QUIET, O_HELP, O_DSNAME, O_DSPATH,
    O_WARMUPS, O_PMETRICS, O_PCTS, O_INSECURE, O_CACERT
};

int main(int argc, char **argv) {
    static const struct option opts[] = {
        {"target", required_argument, 0, O_TARGET},       {"model", required_argument, 0, O_MODEL},
        {"rate", required_argument, 0, O_RATE},           {"burstiness", required_argument, 0, O_BURST},
        {"concurrency", required_argument, 0, O_CONC},    {"requests", required_argument, 0, O_REQS},
        {"duration", required_argument, 0, O_DUR},        {"prompt-tokens", required_argument, 0, O_PROMPT},
        {"output-tokens", required_argument, 0, O_OUTPUT}, {"stream", no_argument, 0, O_STREAM},
        {"api-key", required_argument, 0, O_KEY},         {"seed", required_argument, 0, O_SEED},
        {"slo", required_argument, 0, O_SLO},             {"json", required_argument, 0, O_JSON},
        {"svg", required_argument, 0, O_SVG},             {"endpoint", required_argument, 0, O_ENDPOINT},
        {"prefix", required_argument, 0, O_PREFIX},       {"timeout", required_argument, 0, O_TIMEOUT},
        {"token-range", required_argument, 0, O_TOKRANGE}, {"quiet", no_argument, 0, O_QUIET},
        {"help", no_argument, 0, O_HELP},                 {"base-url", required_argument, 0, O_TARGET},
        {"request-rate", required_argument, 0, O_RATE},   {"num-prompts", required_argument, 0, O_REQS},
        {"dataset-name", required_argument, 0, O_DSNAME}, {"dataset-path", required_argument, 0, O_DSPATH},
        {"num-warmups", required_argument, 0, O_WARMUPS}, {"percentile-metrics", required_argument, 0, O_PMETRICS},
        {"metric-percentiles", required_argument, 0, O_PCTS}, {"insecure", no_argument, 0, O_INSECURE},
        {"cacert", required_argument, 0, O_CACERT},       {0, 0, 0, 0},
    };
    lt_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.burstiness = 1.0;
    cfg.endpoint = "/v1/completions";
    cfg.timeout_s = 600;
    cfg.token_lo = 259;
    cfg.token_hi = 511;
    cfg.progress = 1;
    cfg.dataset_name = "random";
    cfg.pct_metrics = LT_M_TTFT | LT_M_TPOT | LT_M_ITL; /* vLLM's defaults */
    cfg.pcts[0] = 99;
    cfg.n_pcts = 1;
    const char *prompt_spec = NULL, *output_spec = NULL;
    int has_rate = 0, has_burst = 0;
    long l;
    llmq_err err;
    int o;
#define BAD(...)                                   \
    do {                                           \
        fprintf(stderr, "llmq-loadtest: " __VA_ARGS__); \
        fputc('\n', stderr);                       \
        return 2;                                  \
    } while (0)
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case O_TARGET: cfg.target = optarg; break;
        case O_MODEL: cfg.model = optarg; break;
        case O_RATE:
            has_rate = 1;
            if (!strcmp(optarg, "inf")) cfg.rate = INFINITY;
            else if (parse_double(optarg, 0, &cfg.rate) || cfg.rate <= 0) BAD("--rate: a number > 0 or 'inf'");
            break;
        case O_BURST:
            has_burst = 1;
            if (parse_double(optarg, 0, &cfg.burstiness) || cfg.burstiness <= 0) BAD("--burstiness: a number > 0");
            break;
        case O_CONC:
            if (parse_long(optarg, 1, 1000000, &l)) BAD("--concurrency: 1..1000000");
            cfg.concurrency = (int)l;
            break;
        case O_REQS:
            if (parse_long(optarg, 1, 100000000, &l)) BAD("--requests: 1..100000000");
            cfg.requests = l;
            break;
        case O_DUR:
            if (parse_double(optarg, 0, &cfg.duration_s) || cfg.duration_s <= 0) BAD("--duration: seconds > 0");
            break;
        case O_PROMPT: prompt_spec = optarg; break;
        case O_OUTPUT: output_spec = optarg; break;
        case O_STREAM: cfg.stream = 1; break;
        case O_KEY:
            for (const char *c = optarg; *c; c++)
                if ((unsigned char)*c < 0x20 || *c == 0x7f) BAD("--api-key: control characters are not allowed");
            if (strlen(optarg) > 1000) BAD("--api-key: at most 1000 bytes");
            cfg.api_key = optarg;
            break;
        case O_SEED: {
            char *end;
            errno = 0;
            cfg.seed = strtoull(optarg, &end, 10);
            if (errno || *end || end == optarg) BAD("--seed: a whole number");
            break;
        }
        case O_SLO:
            if (parse_slo(&cfg, optarg)) BAD("--slo: ttft=MS,tpot=MS,e2e=MS with values > 0");
            break;
        case O_JSON: cfg.json_path = optarg; break;
        case O_SVG: cfg.svg_path = optarg; break;
        case O_ENDPOINT:
            if (optarg[0] != '/' || strlen(optarg) > 200 || strpbrk(optarg, " \t\r\n"))
                BAD("--endpoint: a path starting with / (at most 200 bytes, no spaces)");
            cfg.endpoint = optarg;
            break;
        case O_PREFIX: cfg.prefix = optarg; break;
        case O_TIMEOUT:
            if (parse_double(optarg, 0, &cfg.timeout_s) || cfg.timeout_s <= 0) BAD("--timeout: seconds > 0");
            break;
        case O_TOKRANGE: {
            long lo, hi;
            char *dash = strchr(optarg, '-');
            if (!dash) BAD("--token-range: LO-HI");
            *dash = '\0';
            if (parse_long(optarg, 0, INT32_MAX, &lo) || parse_long(dash + 1, 0, INT32_MAX, &hi) || lo > hi)
                BAD("--token-range: LO-HI with 0 <= LO <= HI");
            cfg.token_lo = (int)lo;
            cfg.token_hi = (int)hi;
            break;
        }
        case O_QUIET: cfg.progress = 0; break;
        case O_DSNAME:
            if (strcmp(optarg, "random") && strcmp(optarg, "sharegpt") && strcmp(optarg, "custom"))
                BAD("--dataset-name: random, sharegpt or custom");
            cfg.dataset_name = optarg;
            break;
        case O_DSPATH: cfg.dataset_path = optarg; break;
        case O_WARMUPS:
            if (parse_long(optarg, 0, 1000000, &l)) BAD("--num-warmups: 0..1000000");
            cfg.warmups = l;
            break;
        case O_PMETRICS:
            if (parse_metrics(&cfg, optarg)) BAD("--percentile-metrics: a list of ttft,tpot,itl,e2el");
            break;
        case O_PCTS:
            if (parse_percentiles(&cfg, optarg)) BAD("--metric-percentiles: up to 16 numbers in (0, 100], e.g. 50,90,99");
            break;
        case O_INSECURE: cfg.insecure = 1; break;
        case O_CACERT: cfg.cacert = optarg; break;
        case O_HELP:
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) BAD("unexpected argument '%s'", argv[optind]);
    if (!cfg.target) BAD("--target is required (http://HOST:PORT or redis://HOST:PORT)");
    if (!cfg.model) BAD("--model is required");
    int random = !strcmp(cfg.dataset_name, "random");
    if (!output_spec) BAD("--output-tokens is required");
    if (random && !prompt_spec) BAD("--prompt-tokens is required (or a dataset: --dataset-name, --dataset-path)");
    if (!random && prompt_spec) BAD("--prompt-tokens is for random prompts: a dataset brings its own");
    if (!random && !cfg.dataset_path) BAD("--dataset-name %s needs --dataset-path", cfg.dataset_name);
    if (random && cfg.dataset_path) BAD("--dataset-path needs --dataset-name sharegpt or custom");
    if (has_rate == (cfg.concurrency > 0)) BAD("give exactly one of --rate (open loop) and --concurrency (closed loop)");
    if (has_burst && !has_rate) BAD("--burstiness goes with --rate");
    if ((cfg.requests > 0) == (cfg.duration_s > 0)) BAD("give exactly one of --requests and --duration");
    if (has_rate && isinf(cfg.rate) && cfg.duration_s > 0) BAD("--rate inf needs --requests, not --duration");
    if (!strncasecmp(cfg.target, "http://", 7) || !strncasecmp(cfg.target, "https://", 8)) {
        cfg.kind = LT_TARGET_HTTP;
        const char *why = parse_http_target(&cfg, cfg.target);
        if (why) BAD("--target %s: expected http[s]://HOST[:PORT][/PREFIX] (%s)", cfg.target, why);
    } else if (!strncmp(cfg.target, "redis://", 8) || !strncmp(cfg.target, "unix://", 7)) {
        cfg.kind = LT_TARGET_REDIS;
        if (cfg.api_key) BAD("--api-key is for HTTP targets");
        if (cfg.insecure || cfg.cacert) BAD("--insecure and --cacert are for https targets");
    } else {
        BAD("--target %s: expected http[s]://HOST[:PORT], redis://HOST:PORT or unix:///path", cfg.target);
    }
    if (random && lt_dist_parse(&cfg.prompt, prompt_spec, &err) != LLMQ_OK) BAD("--prompt-tokens: %s", err.msg);
    if (lt_dist_parse(&cfg.output, output_spec, &err) != LLMQ_OK) {
        lt_dist_deinit(&cfg.prompt);
        BAD("--output-tokens: %s", err.msg);
    }
    if (!random && lt_dataset_load(&cfg.dataset, cfg.dataset_name, cfg.dataset_path, &err) != LLMQ_OK) {
        lt_dist_deinit(&cfg.output);
        BAD("--dataset-path: %s", err.msg);
    }
#undef BAD
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "llmq-loadtest: cannot initialise libcurl\n");
        return 1;
    }

    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    struct ev_loop *loop = ev_default_loop(EVFLAG_AUTO);
    int rc = 0;
    lt_run run;
    if (lt_run_init(&run, loop, &cfg, &err) != LLMQ_OK || lt_run_go(&run, &err) != LLMQ_OK) {
        fprintf(stderr, "llmq-loadtest: %s\n", err.msg);
        rc = 1;
    } else {
        lt_summary s;
        if (lt_summary_compute(&s, &run, &err) != LLMQ_OK) {
            fprintf(stderr, "llmq-loadtest: %s\n", err.msg);
            rc = 1;
        } else {
            lt_report_table(stdout, &run, &s);
            fflush(stdout);
            if (cfg.json_path && lt_report_json(cfg.json_path, &run, &s, &err) != LLMQ_OK) {
                fprintf(stderr, "llmq-loadtest: %s\n", err.msg);
                rc = 1;
            }
            if (cfg.svg_path && lt_report_svg(cfg.svg_path, &run, &s, &err) != LLMQ_OK) {
                fprintf(stderr, "llmq-loadtest: %s\n", err.msg);
                rc = 1;
            }
            lt_summary_deinit(&s);
        }
        if (run.abort_msg[0]) rc = 1;
    }
    lt_run_deinit(&run);
    ev_loop_destroy(loop);
    lt_dist_deinit(&cfg.prompt);
    lt_dist_deinit(&cfg.output);
    lt_dataset_deinit(&cfg.dataset);
    curl_global_cleanup();
    return rc;
}
