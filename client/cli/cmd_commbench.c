/*
 * cmd_commbench.c — `llmq comm-bench`: bandwidth of a communicator
 * (common/comm.h: shared memory, or TCP over loopback with --transport tcp)
 * between N rank processes on this host, reported the way nccl-tests
 * reports it.
 *
 * This process is rank 0 and forks the N-1 others (as `llmq-worker --tp N`
 * does); every rank runs the same loop and only rank 0 prints.  For each
 * size, doubling from --min to --max:
 *   time   microseconds per collective, the slowest rank's average over
 *          `iters` back-to-back calls (after warm-up calls);
 *   algbw  size / time, GB/s (1e9), size being the bytes of the result;
 *   busbw  algbw x 2(n-1)/n for all-reduce, x (n-1)/n for all-gather,
 *          x 1 for broadcast: the traffic each rank's link would carry in a
 *          ring, so that figures compare across world sizes;
 *   #wrong elements of a separate, checked call that differ (bit for bit)
 *          from a serial computation in rank order, summed over ranks.
 * Exit status: 0 all good, 1 a collective failed or #wrong > 0, 2 usage.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client/cli/cli.h"
#include "common/comm.h"

typedef enum { BENCH_ALL_REDUCE, BENCH_ALL_GATHER, BENCH_BROADCAST } bench_op;

typedef struct bench_opts {
    int world;
    size_t min_bytes, max_bytes;
    bench_op op;
    int iters;          /* 0: adaptive (about 64 MiB moved per size, 20..1000 calls) */
    int warmup;
    size_t slot;        /* 0: communicator default */
    size_t oneshot;     /* 0: communicator default */
    int timeout_ms;
    int spin_us;        /* <0: communicator default */
    int check;          /* 1: run the #wrong check */
    int tcp;            /* 1: comm_tcp over 127.0.0.1 instead of comm_shm */
} bench_opts;

/* The communicator of rank r: shm, or tcp (rank 0 owns the listening socket lfd). */
static llmq_comm *bench_comm(const bench_opts *o, comm_shm_config *cfg, int r, int lfd, int port, llmq_err *err) {
    if (!o->tcp) {
        cfg->rank = r;
        return comm_shm_create(cfg, err);
    }
    char leader[32];
    snprintf(leader, sizeof leader, "127.0.0.1:%d", port);
    comm_tcp_config tc = {.rank = r, .world = o->world, .generation = 1, .token = "comm-bench",
                          .listen_fd = r == 0 ? lfd : -1, .leader = leader, .timeout_ms = o->timeout_ms,
                          .join_timeout_ms = 30000};
    if (r > 0 && lfd >= 0) close(lfd);
    return comm_tcp_create(&tc, err);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* "4096", "4K", "64M", "1G" (binary units); 0 on error. */
static size_t parse_size(const char *s) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s) return 0;
    switch (*end) {
    case 'k': case 'K': v <<= 10; end++; break;
    case 'm': case 'M': v <<= 20; end++; break;
    case 'g': case 'G': v <<= 30; end++; break;
    default: break;
    }
    if (*end == 'B' || *end == 'b') end++;
    return *end ? 0 : (size_t)v;
}

/* Deterministic check data: 24 random bits in [-1, 1) per element, so that
 * sums round and a wrong summation order shows. */
static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}
static float check_val(int rank, size_t i) {
    return (float)((int32_t)(mix(mix((uint64_t)rank + 1) ^ i) >> 40) - (1 << 23)) / (float)(1 << 23);
}

/* One timed/checked collective on a result of `bytes`. */
static llmq_status bench_call(llmq_comm *c, const bench_opts *o, float *buf, float *send, size_t bytes) {
    size_t count = bytes / sizeof(float);
    switch (o->op) {
    case BENCH_ALL_REDUCE: return comm_all_reduce_sum(c, buf, count, COMM_F32);
    case BENCH_ALL_GATHER: return comm_all_gather(c, buf, send, count / (size_t)c->world, COMM_F32);
    case BENCH_BROADCAST: return comm_broadcast(c, buf, bytes, 0);
    }
    return LLMQ_ERR_INVALID;
}

/* Fill the inputs, run once, count the elements that differ from the
 * serial result.  Returns -1 when the collective itself failed. */
static long bench_check(llmq_comm *c, const bench_opts *o, float *buf, float *send, size_t bytes) {
    size_t count = bytes / sizeof(float), per = count / (size_t)c->world;
    long wrong = 0;
    if (o->op == BENCH_ALL_REDUCE || o->op == BENCH_BROADCAST)
        for (size_t i = 0; i < count; i++) buf[i] = o->op == BENCH_BROADCAST && c->rank ? -7.0f : check_val(c->rank, i);
    else
        for (size_t i = 0; i < per; i++) send[i] = check_val(c->rank, i);
    if (bench_call(c, o, buf, send, bytes)) return -1;
    if (o->op == BENCH_ALL_REDUCE) {
        for (size_t i = 0; i < count; i++) {
            float e = check_val(0, i);
            for (int r = 1; r < c->world; r++) e += check_val(r, i);
            wrong += memcmp(&e, &buf[i], sizeof e) != 0;
        }
    } else if (o->op == BENCH_ALL_GATHER) {
        for (int r = 0; r < c->world; r++)
            for (size_t i = 0; i < per; i++) {
                float e = check_val(r, i);
                wrong += memcmp(&e, &buf[(size_t)r * per + i], sizeof e) != 0;
            }
    } else {
        for (size_t i = 0; i < count; i++) {
            float e = check_val(0, i);
            wrong += memcmp(&e, &buf[i], sizeof e) != 0;
        }
    }
    return wrong;
}

static const char *op_title(bench_op op) {
    return op == BENCH_ALL_REDUCE ? "all_reduce_sum" : op == BENCH_ALL_GATHER ? "all_gather" : "broadcast";
}

/* The loop every rank runs; rank 0 prints.  Returns the exit status. */
static int bench_rank(llmq_comm *c, const bench_opts *o) {
    const int n = c->world;
    double bus = o->op == BENCH_ALL_REDUCE ? 2.0 * (n - 1) / n : o->op == BENCH_ALL_GATHER ? (double)(n - 1) / n : 1.0;
    float *buf = calloc(o->max_bytes / sizeof(float) + 1, sizeof(float));
    float *send = calloc(o->max_bytes / sizeof(float) / (size_t)n + 1, sizeof(float));
    float times[64];
    int rc = 0;
    long wrong_total = 0;
    double bus_sum = 0;
    int rows = 0;
    if (!buf || !send) {
        fprintf(stderr, "comm-bench rank %d: out of memory\n", c->rank);
        comm_abort(c, "out of memory");
        free(buf);
        free(send);
        return 1;
    }
    if (c->rank == 0) {
        printf("#  llmq comm-bench: %s %s float32, world %d, timeout %d ms\n#\n", c->ops->name,
               op_title(o->op), n, c->timeout_ms);
        printf("# %12s %12s %6s %6s %11s %12s %12s %8s\n", "size(B)", "count", "type", "iters", "time(us)",
               "algbw(GB/s)", "busbw(GB/s)", "#wrong");
    }
    for (size_t bytes = o->min_bytes; bytes <= o->max_bytes; bytes *= 2) {
        /* all_gather needs whole elements per rank */
        size_t unit = sizeof(float) * (o->op == BENCH_ALL_GATHER ? (size_t)n : 1);
        size_t b = bytes / unit * unit;
        if (!b) continue;
        int iters = o->iters;
        if (!iters) {
            size_t a = ((size_t)64 << 20) / b;
            iters = a < 20 ? 20 : a > 1000 ? 1000 : (int)a;
        }
        llmq_status st = LLMQ_OK;
        for (int i = 0; i < o->warmup && !st; i++) st = bench_call(c, o, buf, send, b);
        if (!st) st = comm_barrier(c);
        double t0 = now_s();
        for (int i = 0; i < iters && !st; i++) st = bench_call(c, o, buf, send, b);
        float us = (float)((now_s() - t0) / iters * 1e6);
        if (!st) st = comm_all_gather(c, times, &us, 1, COMM_F32);
        int32_t wrong = 0;
        if (!st && o->check) {
            long w = bench_check(c, o, buf, send, b);
            if (w < 0) st = c->err.code;
            wrong = (int32_t)(w > INT32_MAX ? INT32_MAX : w);
        }
        if (!st && o->check) st = comm_all_reduce_sum(c, &wrong, 1, COMM_I32);
        if (st) {
            fprintf(stderr, "comm-bench rank %d: %s\n", c->rank, c->err.msg);
            rc = 1;
            break;
        }
        if (c->rank == 0) {
            float worst = 0;
            for (int r = 0; r < n; r++) worst = times[r] > worst ? times[r] : worst;
            double algbw = worst > 0 ? (double)b / (worst * 1e-6) / 1e9 : 0;
            char w[16] = "n/a";
            if (o->check) snprintf(w, sizeof w, "%d", (int)wrong);
            printf("  %12zu %12zu %6s %6d %11.2f %12.2f %12.2f %8s\n", b, b / sizeof(float), "float", iters,
                   worst, algbw, algbw * bus, w);
            fflush(stdout);
            bus_sum += algbw * bus;
            rows++;
        }
        wrong_total += wrong;
        if (wrong) rc = 1;
    }
    if (c->rank == 0 && rows)
        printf("# #wrong total: %ld\n# avg busbw: %.2f GB/s\n", wrong_total, bus_sum / rows);
    free(buf);
    free(send);
    return rc;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: llmq comm-bench --world N [--min 4K] [--max 64M] [--op all_reduce|all_gather|broadcast]\n"
            "                       [--iters N] [--warmup N] [--slot BYTES] [--oneshot BYTES]\n"
            "                       [--timeout MS] [--spin US] [--no-check] [--transport shm|tcp]\n"
            "Forks N ranks on this host, joins them through shared memory (or TCP over\n"
            "loopback, the communicator of groups started rank by rank) and measures\n"
            "one collective per size (doubling from --min to --max), as nccl-tests does.\n");
}

int cmd_commbench(int argc, char **argv) {
    bench_opts o = {.world = 2, .min_bytes = 4 << 10, .max_bytes = 64 << 20, .op = BENCH_ALL_REDUCE,
                    .warmup = 5, .timeout_ms = 10000, .spin_us = -1, .check = 1};
    static const struct option longs[] = {
        {"world", required_argument, NULL, 'w'},  {"min", required_argument, NULL, 'b'},
        {"max", required_argument, NULL, 'e'},    {"op", required_argument, NULL, 'o'},
        {"iters", required_argument, NULL, 'n'},  {"warmup", required_argument, NULL, 'W'},
        {"slot", required_argument, NULL, 's'},   {"oneshot", required_argument, NULL, 'O'},
        {"timeout", required_argument, NULL, 't'}, {"no-check", no_argument, NULL, 'C'},
        {"spin", required_argument, NULL, 'S'},   {"transport", required_argument, NULL, 'T'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "w:b:e:o:n:h", longs, NULL)) != -1) {
        switch (ch) {
        case 'w': o.world = atoi(optarg); break;
        case 'b': o.min_bytes = parse_size(optarg); break;
        case 'e': o.max_bytes = parse_size(optarg); break;
        case 'o':
            if (!strcmp(optarg, "all_reduce")) o.op = BENCH_ALL_REDUCE;
            else if (!strcmp(optarg, "all_gather")) o.op = BENCH_ALL_GATHER;
            else if (!strcmp(optarg, "broadcast")) o.op = BENCH_BROADCAST;
            else {
                fprintf(stderr, "comm-bench: unknown --op %s\n", optarg);
                return 2;
            }
            break;
        case 'n': o.iters = atoi(optarg); break;
        case 'W': o.warmup = atoi(optarg); break;
        case 's': o.slot = parse_size(optarg); break;
        case 'O': o.oneshot = parse_size(optarg); break;
        case 't': o.timeout_ms = atoi(optarg); break;
        case 'C': o.check = 0; break;
        case 'S': o.spin_us = atoi(optarg); break;
        case 'T':
            if (strcmp(optarg, "shm") && strcmp(optarg, "tcp")) {
                fprintf(stderr, "comm-bench: --transport is shm or tcp, not %s\n", optarg);
                return 2;
            }
            o.tcp = !strcmp(optarg, "tcp");
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || o.world < 1 || o.world > 64 || !o.min_bytes || o.max_bytes < o.min_bytes ||
        o.iters < 0 || o.warmup < 0 || o.timeout_ms < 0) {
        usage(stderr);
        return 2;
    }

    char name[64];
    snprintf(name, sizeof name, "/llmq-comm-bench-%d", (int)getpid());
    comm_shm_config cfg = {.name = name, .world = o.world, .generation = 1, .slot_bytes = o.slot,
                           .timeout_ms = o.timeout_ms, .join_timeout_ms = 30000, .spin_us = o.spin_us,
                           .oneshot_max = o.oneshot};
    pid_t pids[64] = {0};
    int lfd = -1, port = 0;
    if (o.tcp && o.world > 1) {
        llmq_err lerr = {0};
        lfd = comm_tcp_listen("127.0.0.1", 0, &port, &lerr);
        if (lfd < 0) {
            fprintf(stderr, "comm-bench: %s\n", lerr.msg);
            return 1;
        }
    }
    fflush(stdout);
    fflush(stderr);
    for (int r = 1; r < o.world; r++) {
        pid_t p = fork();
        if (p < 0) {
            fprintf(stderr, "comm-bench: fork: %s\n", strerror(errno));
            for (int q = 1; q < r; q++) kill(pids[q], SIGKILL);
            for (int q = 1; q < r; q++) waitpid(pids[q], NULL, 0);
            return 1;
        }
        if (p == 0) {
            llmq_err err = {0};
            llmq_comm *c = bench_comm(&o, &cfg, r, lfd, port, &err);
            if (!c) {
                fprintf(stderr, "comm-bench rank %d: %s\n", r, err.msg);
                _exit(1);
            }
            int code = bench_rank(c, &o);
            comm_destroy(c);
            fflush(stdout);
            fflush(stderr);
            _exit(code);
        }
        pids[r] = p;
    }
    llmq_err err = {0};
    llmq_comm *c = bench_comm(&o, &cfg, 0, lfd, port, &err);
    int rc;
    if (!c) {
        fprintf(stderr, "comm-bench rank 0: %s\n", err.msg);
        for (int r = 1; r < o.world; r++) kill(pids[r], SIGTERM);
        rc = 1;
    } else {
        rc = bench_rank(c, &o);
        comm_destroy(c);
    }
    for (int r = 1; r < o.world; r++) {
        int stt = 0;
        if (waitpid(pids[r], &stt, 0) == pids[r] && (!WIFEXITED(stt) || WEXITSTATUS(stt))) rc = 1;
    }
    return rc;
}
