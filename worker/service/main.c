/*
 * main.c — llmq-worker: serve one model from a Redis request stream.
 * Parses flags, installs SIGTERM/SIGINT (drain), runs the service.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/url.h"
#include "worker/engine/engine.h"
#include "worker/engine/synth.h"
#include "worker/model/model.h"
#include "worker/service/rdv.h"
#include "worker/service/service.h"
#include "worker/engine/tp.h"
#include "worker/engine/vram.h"
#include "kernels/cpu/threads.h"

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
            "  --redis-password-file F  Redis password when the URL has none (else $LLMQ_REDIS_PASSWORD_FILE,\n"
            "                           then $LLMQ_REDIS_PASSWORD)\n"
            "  --backend NAME           cpu (default), cpu-ref, cuda, or synthetic: no weights, no compute,\n"
            "                           tokens from a hash of the sequence (scale tests; config.json and the\n"
            "                           tokenizer of --model only)\n"
            "  --synthetic-rate R       synthetic: a step takes 1/R s, i.e. R tokens/s per sequence (default 50)\n"
            "  --max-num-seqs N         sequences per step (default 32)\n"
            "  --max-batched-tokens N   tokens per step (default 512)\n"
            "  --kv-blocks N            KV cache blocks of 16 tokens (default: max-num-seqs full contexts)\n"
            "  --kv-dtype T             the KV cache's element type: auto (default), f32, f16 or bf16; auto is\n"
            "                           the model's stored type on the cpu backends (bf16, f16; f32 for an F32\n"
            "                           checkpoint), the activation type on cuda (which takes no other)\n"
            "  --no-prefix-caching      compute every prompt in full (default: prompts that share full\n"
            "                           16-token blocks with earlier ones reuse their KV)\n"
            "  --metrics-port P         serve /metrics, /healthz, /readyz on this port\n"
            "  --metrics-addr ADDR      the address it listens on (default 127.0.0.1; 0.0.0.0 or :: for every\n"
            "                           interface: the listener has no authentication)\n"
            "  --claim-idle-ms MS       claim entries idle this long from dead workers (default 30000)\n"
            "  --max-attempts N         deliveries before a job is failed (default 3)\n"
            "  --lane-burst K           priority lanes: after K entries taken from higher lanes while a lower\n"
            "                           lane waits, take one of the lower lane's (default 4; 0: strict)\n"
            "  --no-affinity            take entries in order, whatever group holds their prefix (default:\n"
            "                           route by the request's affinity keys, docs/protocol.md \"Affinity\")\n"
            "  --affinity-wait-ms MS    an entry parked for the group that holds its prefix waits this long\n"
            "                           before any group takes it (default 2000)\n"
            "  --affinity-ttl S         seconds a prefix stays with the group that last ran it (default 600)\n"
            "  --affinity-slack N       park for that group while its free slots + N >= this pull's (2)\n"
            "  --chunk-interval-ms B    coalesce tokens into chunks while Redis is behind: a job's new tokens\n"
            "                           wait for the next step, B ms at most (default 0: a chunk per step)\n"
            "  --result-ttl S           seconds finished jobs are kept (default 3600)\n"
            "  --drain-timeout S        on SIGTERM, finish in-flight jobs for up to S seconds (default 30)\n"
            "  --chat-template T        a family (llama-2, llama-3, llama-3.1, mistral, mistral-v3, chatml,\n"
            "                           zephyr), or a Jinja file or text of one (default: the model's\n"
            "                           tokenizer_config.json chat_template; chatml when it has none)\n"
            "  --llguidance PATH        llguidance's library (_lib*.so, or its folder) for structured output\n"
            "                           (default: $LLMQ_LLGUIDANCE, else where python3 finds `import llguidance`;\n"
            "                           without it, constrained requests fail with structured_output_unavailable)\n"
            "  --tp N                   tensor parallel over N ranks; alone: starts N-1 local peer processes\n"
            "  --rank R --group G       start one rank of group G (with --tp N), on any host; rank 0 listens\n"
            "                           for the others over TCP and publishes where in Redis; they join it\n"
            "  --tp-addr HOST           rank 0: the address peers connect to (default: this host's name)\n"
            "  --tp-port P              rank 0: the TCP port it listens on (default: any free port)\n"
            "  --tp-timeout-ms MS       a rank that does not answer a collective in MS fails the group (10000)\n"
            "  --memory-utilization F   size the KV pool to use this fraction of the memory: cpu backends, the\n"
            "                           host's RAM shared by the ranks, as `llmq vram` computes it; cuda, each\n"
            "                           GPU's memory as cudaMemGetInfo finds it once the weights are in\n"
            "  --quantization Q         none (default), int8 or int4: weight-only, applied at load\n");
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

/* Rank 0 of a group started rank by rank: listen, publish the rendezvous,
 * wait for the peers (worker/service/rdv.h, comm_tcp in common/comm.h). */
static llmq_comm *group_lead(const service_opts *o, const char *group, int world, const char *addr, int port,
                             int timeout_ms, llmq_err *err) {
    int bound = 0;
    int fd = comm_tcp_listen(NULL, port, &bound, err);
    if (fd < 0) return NULL;
    char host[256] = "", where[300];
    if (addr && *addr) snprintf(host, sizeof host, "%s", addr);
    else if (gethostname(host, sizeof host - 1)) snprintf(host, sizeof host, "localhost");
    if (strchr(host, ':')) snprintf(where, sizeof where, "[%s]:%d", host, bound); /* IPv6 literal */
    else snprintf(where, sizeof where, "%s:%d", host, bound);
    rdv_info info;
    if (rdv_publish(o->redis_url, o->prefix, group, world, o->model_name, where, &info, err)) {
        close(fd);
        return NULL;
    }
    log_info("rank 0 of group %s (generation %llu): waiting for %d peer rank%s at %s", group,
             (unsigned long long)info.generation, world - 1, world > 2 ? "s" : "", where);
    comm_tcp_config cc = {0};
    cc.rank = 0;
    cc.world = world;
    cc.generation = info.generation;
    cc.token = info.token;
    cc.listen_fd = fd;
    cc.timeout_ms = timeout_ms;
    cc.join_timeout_ms = 600000;
    llmq_comm *c = comm_tcp_create(&cc, err);
    if (c) log_info("group %s generation %llu complete: %d ranks", group, (unsigned long long)info.generation, world);
    return c;
}

/* A peer rank: wait for the leader's generation in the rendezvous and join
 * it; when that leader is gone or refuses this rank (a newer one is
 * starting), follow the rendezvous to the next generation.  Gives up after
 * 10 minutes. */
static llmq_comm *group_join(const service_opts *o, const char *group, int rank, int world, int timeout_ms,
                             llmq_err *err) {
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    const long limit_ms = 600000;
    uint64_t after = 0;
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        long left = limit_ms - ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000);
        if (left <= 0) return NULL; /* err holds the last failure */
        rdv_info info;
        if (rdv_wait(o->redis_url, o->prefix, group, world, after, (int)left, &info, err)) return NULL;
        log_info("rank %d of group %s (generation %llu): joining the leader at %s", rank, group,
                 (unsigned long long)info.generation, info.addr);
        comm_tcp_config cc = {0};
        cc.rank = rank;
        cc.world = world;
        cc.generation = info.generation;
        cc.token = info.token;
        cc.listen_fd = -1;
        cc.leader = info.addr;
        cc.timeout_ms = timeout_ms;
        cc.join_timeout_ms = left < 3000 ? (int)left : 3000;
        llmq_comm *c = comm_tcp_create(&cc, err);
        if (c) return c;
        log_warn("%s", err->msg);
        /* refused (another generation is forming, or this rank is already
         * there): wait for a newer one; unreachable: read the rendezvous again */
        after = err->code == LLMQ_ERR_INVALID ? info.generation : 0;
        if (!after) usleep(500000);
    }
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
        {"kv-dtype", required_argument, 0, 'V'},
        {"claim-idle-ms", required_argument, 0, 'C'}, {"max-attempts", required_argument, 0, 'A'},
        {"result-ttl", required_argument, 0, 'T'},    {"drain-timeout", required_argument, 0, 'D'},
        {"chat-template", required_argument, 0, 'H'}, {"llguidance", required_argument, 0, 'J'},
        {"tp", required_argument, 0, 'P'},            {"rank", required_argument, 0, 'R'},
        {"group", required_argument, 0, 'G'},         {"tp-timeout-ms", required_argument, 0, 'O'},
        {"memory-utilization", required_argument, 0, 'U'}, {"quantization", required_argument, 0, 'Q'},
        {"redis-password-file", required_argument, 0, 'W'},
        {"tp-addr", required_argument, 0, 'X'},       {"tp-port", required_argument, 0, 'Y'},
        {"metrics-addr", required_argument, 0, 'L'},  {"lane-burst", required_argument, 0, 'B'},
        {"synthetic-rate", required_argument, 0, 'S'},
        {"no-prefix-caching", no_argument, 0, 'N'},
        {"chunk-interval-ms", required_argument, 0, 'I'},
        {"no-affinity", no_argument, 0, 'a'},        {"affinity-wait-ms", required_argument, 0, 'w'},
        {"affinity-ttl", required_argument, 0, 'e'}, {"affinity-slack", required_argument, 0, 'l'},
        {"help", no_argument, 0, 'h'},                {0, 0, 0, 0},
    };
    int c, bad = 0, tp = 1, rank = -1, tp_timeout = 10000, tp_port = 0;
    const char *group = NULL, *tp_addr = NULL;
    double mem_util = 0;              /* --memory-utilization (issue 10) */
    const char *synth_rate = NULL;    /* --synthetic-rate (issue 25) */
    char synth_backend[80];
    model_load_opts lo = {LLMQ_QUANT_NONE, 0};
    llmq_err qe = {0};
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': o.model_dir = optarg; break;
        case 'n': o.model_name = optarg; break;
        case 'r': o.redis_url = optarg; break;
        case 'c':
            o.consumer = optarg;
            if (optarg[0] == '@') { /* "@<group>" holds entries parked for a group (docs/protocol.md "Affinity") */
                fprintf(stderr, "llmq-worker: --consumer may not begin with '@' (the affinity pull's parking names)\n");
                bad = 1;
            }
            break;
        case 'p': o.prefix = optarg; break;
        case 'b': o.backend = optarg; break;
        case 's': bad |= to_int(optarg, "max-num-seqs", 1, &o.max_num_seqs); break;
        case 't': bad |= to_int(optarg, "max-batched-tokens", 1, &o.max_batched_tokens); break;
        case 'k': bad |= to_int(optarg, "kv-blocks", 1, &o.kv_blocks); break;
        case 'V': {
            llmq_dtype kd;
            llmq_err ke = {0};
            if (eng_kv_dtype(optarg, 1, LLMQ_F32, LLMQ_F32, &kd, &ke)) { /* the name only: the engine checks the rest */
                fprintf(stderr, "llmq-worker: %s\n", ke.msg);
                bad = 1;
            }
            o.kv_dtype = optarg;
            break;
        }
        case 'M': bad |= to_int(optarg, "metrics-port", 1, &o.metrics_port); break;
        case 'L': o.metrics_addr = optarg; break;
        case 'C': bad |= to_int(optarg, "claim-idle-ms", 100, &o.claim_idle_ms); break;
        case 'A': bad |= to_int(optarg, "max-attempts", 1, &o.max_attempts); break;
        case 'B': bad |= to_int(optarg, "lane-burst", 0, &o.lane_burst); break;
        case 'I': bad |= to_int(optarg, "chunk-interval-ms", 0, &o.chunk_interval_ms); break;
        case 'a': o.affinity = 0; break;
        case 'w': bad |= to_int(optarg, "affinity-wait-ms", 0, &o.affinity_wait_ms); break;
        case 'e': bad |= to_int(optarg, "affinity-ttl", 1, &o.affinity_ttl_s); break;
        case 'l': bad |= to_int(optarg, "affinity-slack", 0, &o.affinity_slack); break;
        case 'T': bad |= to_int(optarg, "result-ttl", 1, &o.result_ttl_s); break;
        case 'D': bad |= to_int(optarg, "drain-timeout", 0, &o.drain_timeout_s); break;
        case 'H': o.chat_template = optarg; break;
        case 'J': o.llguidance = optarg; break;
        case 'N': o.no_prefix_caching = 1; break;
        case 'W': redis_url_set_password_file(optarg); break; /* common/url.h; forked peers inherit it */
        case 'P': bad |= to_int(optarg, "tp", 1, &tp); break;
        case 'R': bad |= to_int(optarg, "rank", 0, &rank); break;
        case 'G': group = optarg; break;
        case 'O': bad |= to_int(optarg, "tp-timeout-ms", 100, &tp_timeout); break;
        case 'X': tp_addr = optarg; break;
        case 'Y':
            bad |= to_int(optarg, "tp-port", 0, &tp_port);
            if (!bad && tp_port > 65535) {
                fprintf(stderr, "llmq-worker: --tp-port wants 0..65535, got '%s'\n", optarg);
                bad = 1;
            }
            break;
        case 'U': {
            char *end;
            mem_util = strtod(optarg, &end);
            if (*end || !(mem_util > 0 && mem_util <= 1)) {
                fprintf(stderr, "llmq-worker: --memory-utilization wants a fraction in (0, 1], got '%s'\n", optarg);
                bad = 1;
            }
            break;
        }
        case 'Q':
            if (llmq_quant_parse(optarg, &lo.quant, &qe)) {
                fprintf(stderr, "llmq-worker: --quantization: %s\n", qe.msg);
                bad = 1;
            }
            break;
        case 'S': synth_rate = optarg; break;
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
    if ((rank >= 0 || group) && (rank < 0 || !group || tp < 2 || rank >= tp)) {
        fprintf(stderr, "llmq-worker: --rank R and --group G go together, with --tp N > R\n");
        return 2;
    }
    log_set_name("worker");
    llmq_err err = {0};
    /* the synthetic engine (worker/engine/synth.h): its rate travels in the backend's name */
    double rate = 0;
    if (synth_rate) {
        if (strcmp(o.backend, SYNTH_BACKEND)) {
            fprintf(stderr, "llmq-worker: --synthetic-rate goes with --backend synthetic\n");
            return 2;
        }
        snprintf(synth_backend, sizeof synth_backend, "%s:%.64s", SYNTH_BACKEND, synth_rate);
        o.backend = synth_backend;
    }
    const int synthetic = synth_backend_parse(o.backend, &rate, &err);
    if (synthetic < 0 || (synthetic && (tp > 1 || mem_util > 0))) {
        fprintf(stderr, "llmq-worker: %s\n", synthetic < 0 ? err.msg :
                "the synthetic backend runs one rank, with --kv-blocks (not --tp or --memory-utilization)");
        return 2;
    }
    if (!synthetic && !strncmp(o.backend, "cpu", 3)) { /* the kernels' pool, sized once (kernels/cpu/threads.h) */
        const char *why;
        const int nt = cpu_threads_setup(&why);
        log_info("cpu threads: %d (%s)%s", nt, why, tp > 1 ? ", shared by the tensor-parallel ranks" : "");
    }
    /* ---- quantization and the KV pool from the memory estimator (worker/engine/vram.h, issue 10) ---- */
    o.load = lo; /* every rank of a group loads with the same options (tp_peer_run) */
    if (mem_util > 0 && o.kv_blocks > 0) {
        fprintf(stderr, "llmq-worker: --kv-blocks and --memory-utilization exclude each other\n");
        return 2;
    }
    if (mem_util > 0 && strncmp(o.backend, "cpu", 3)) {
        /* a GPU's memory is known once the backend runs: the engine sizes
         * its pool after the weights are in (eng_opts.mem_util) */
        o.mem_util = mem_util;
    } else if (mem_util > 0) {
        vram_estimate ve;
        if (vram_worker_kv_blocks(&ve, o.model_dir, o.backend, tp, o.max_num_seqs, o.max_batched_tokens, mem_util,
                                  lo.quant, o.kv_dtype, &err)) {
            log_error("%s", err.msg);
            return 1;
        }
        o.kv_blocks = ve.kv_blocks;
        log_info("memory estimate per rank: %.1f of %.1f MiB usable (--memory-utilization %.3g); weights %.1f MiB, "
                 "activations %.1f MiB, runtime %.1f MiB; KV %.1f KiB/token -> %d blocks, %d sequences of %d tokens",
                 ve.budget_bytes / 1048576.0, ve.device_bytes / 1048576.0, mem_util, ve.weight_bytes / 1048576.0,
                 ve.act_bytes / 1048576.0, ve.overhead_bytes / 1048576.0, ve.kv_bytes_per_token / 1024.0,
                 ve.kv_blocks, ve.max_num_seqs, ve.max_model_len);
    }
    /* ---- end of issue 10 ---- */
    tp_group g;
    memset(&g, 0, sizeof g);
    if (tp > 1) {
        /* refuse a split that does not work before any process starts, and
         * give every rank the same KV pool */
        model_config cfg;
        model_shard sh;
        if (model_config_load(&cfg, o.model_dir, &err) || model_shard_plan(&sh, &cfg, 0, tp, &err)) {
            log_error("%s", err.msg);
            return 1;
        }
        if (o.kv_blocks <= 0 && o.mem_util <= 0) o.kv_blocks = service_default_kv_blocks(&cfg, o.max_num_seqs);
        eng_opts eo = {o.kv_blocks, o.max_batched_tokens, o.max_num_seqs, NULL, o.mem_util, 0, o.kv_dtype};
        if (group) { /* one rank of a group started rank by rank, on any host */
            g.rank = rank;
            g.world = tp;
            g.comm = rank == 0 ? group_lead(&o, group, tp, tp_addr, tp_port, tp_timeout, &err)
                               : group_join(&o, group, rank, tp, tp_timeout, &err);
            if (!g.comm) {
                log_error("%s", err.msg);
                return 1;
            }
        } else if (tp_group_start(&g, tp, tp_timeout, &err)) {
            log_error("%s", err.msg);
            return 1;
        }
        if (g.rank > 0) {
            char name[32];
            snprintf(name, sizeof name, "worker[%d]", g.rank);
            log_set_name(name);
            return tp_peer_run(&g, o.model_dir, o.backend, &lo, &eo, &err) ? 1 : 0;
        }
        o.comm = g.comm;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    srand((unsigned)getpid());
    llmq_status st = service_run(&o, &g_stop, &err);
    if (st) {
        log_error("%s", err.msg);
        if (tp > 1) comm_abort(g.comm, "the leader failed");
        tp_group_stop(&g, 1);
        return 1;
    }
    if (tp > 1 && tp_group_stop(&g, 0)) {
        log_error("a tensor-parallel peer exited with an error");
        return 1;
    }
    log_info("drained, exiting");
    return 0;
}
