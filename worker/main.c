/*
 * main.c — llmq-worker: serve one model from a Redis request stream.
 * Parses flags, installs SIGTERM/SIGINT (drain), runs the service.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "worker/service.h"

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: llmq-worker --model DIR --model-name NAME --redis URL [options]\n"
            "  --consumer NAME          consumer name in the group (default: host-pid)\n"
            "  --prefix P               Redis key prefix (default llmq:)\n"
            "  --backend NAME           cpu (default), cpu-ref, cuda\n"
            "  --max-num-seqs N         sequences per step (default 32)\n"
            "  --max-batched-tokens N   tokens per step (default 512)\n"
            "  --kv-blocks N            KV cache blocks of 16 tokens (default: max-num-seqs full contexts)\n"
            "  --metrics-port P         serve /metrics, /healthz, /readyz on this port\n"
            "  --claim-idle-ms MS       claim entries idle this long from dead workers (default 30000)\n"
            "  --max-attempts N         deliveries before a job is failed (default 3)\n"
            "  --result-ttl S           seconds finished jobs are kept (default 3600)\n"
            "  --drain-timeout S        on SIGTERM, finish in-flight jobs for up to S seconds (default 30)\n");
}

static int to_int(const char *s, const char *flag, int lo, int *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end || v < lo || v > 1 << 30) {
        fprintf(stderr, "llmq-worker: --%s wants an integer >= %d, got '%s'\n", flag, lo, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

int main(int argc, char **argv) {
    service_opts o;
    service_opts_default(&o);
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},         {"model-name", required_argument, 0, 'n'},
        {"redis", required_argument, 0, 'r'},         {"consumer", required_argument, 0, 'c'},
        {"prefix", required_argument, 0, 'p'},        {"backend", required_argument, 0, 'b'},
        {"max-num-seqs", required_argument, 0, 's'},  {"max-batched-tokens", required_argument, 0, 't'},
        {"kv-blocks", required_argument, 0, 'k'},     {"metrics-port", required_argument, 0, 'M'},
        {"claim-idle-ms", required_argument, 0, 'C'}, {"max-attempts", required_argument, 0, 'A'},
        {"result-ttl", required_argument, 0, 'T'},    {"drain-timeout", required_argument, 0, 'D'},
        {"help", no_argument, 0, 'h'},                {0, 0, 0, 0},
    };
    int c, bad = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': o.model_dir = optarg; break;
        case 'n': o.model_name = optarg; break;
        case 'r': o.redis_url = optarg; break;
        case 'c': o.consumer = optarg; break;
        case 'p': o.prefix = optarg; break;
        case 'b': o.backend = optarg; break;
        case 's': bad |= to_int(optarg, "max-num-seqs", 1, &o.max_num_seqs); break;
        case 't': bad |= to_int(optarg, "max-batched-tokens", 1, &o.max_batched_tokens); break;
        case 'k': bad |= to_int(optarg, "kv-blocks", 1, &o.kv_blocks); break;
        case 'M': bad |= to_int(optarg, "metrics-port", 1, &o.metrics_port); break;
        case 'C': bad |= to_int(optarg, "claim-idle-ms", 100, &o.claim_idle_ms); break;
        case 'A': bad |= to_int(optarg, "max-attempts", 1, &o.max_attempts); break;
        case 'T': bad |= to_int(optarg, "result-ttl", 1, &o.result_ttl_s); break;
        case 'D': bad |= to_int(optarg, "drain-timeout", 0, &o.drain_timeout_s); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (bad) return 2;
    if (optind < argc || !o.model_dir || !o.model_name) {
        fprintf(stderr, "llmq-worker: --model and --model-name are required\n");
        usage(stderr);
        return 2;
    }
    if (o.max_batched_tokens < o.max_num_seqs) {
        fprintf(stderr, "llmq-worker: --max-batched-tokens (%d) must be >= --max-num-seqs (%d)\n",
                o.max_batched_tokens, o.max_num_seqs);
        return 2;
    }
    char consumer[128];
    if (!o.consumer) {
        char host[64] = "worker";
        gethostname(host, sizeof host - 1);
        snprintf(consumer, sizeof consumer, "%s-%d", host, (int)getpid());
        o.consumer = consumer;
    }
    log_set_name("worker");
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    srand((unsigned)getpid());
    llmq_err err = {0};
    llmq_status st = service_run(&o, &g_stop, &err);
    if (st) {
        log_error("%s", err.msg);
        return 1;
    }
    log_info("drained, exiting");
    return 0;
}
