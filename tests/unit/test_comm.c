/*
 * test_comm.c — the communicators of worker/comm/ (common/comm.h).
 *
 * Every multi-rank case forks real processes (one per rank, as llmq-worker
 * --tp N runs them) that meet in a fresh shm segment.  Children never touch
 * cmocka: they write what they saw into a MAP_SHARED result table and
 * _exit(); the parent asserts on it.
 *
 *  - collectives for world 2, 3, 4 and several slot sizes (so that 1 element
 *    and 16 MiB take one round or thousands): all_reduce_sum f32/i32,
 *    all_gather f32/u8 (in and out of place), broadcast from every root;
 *    each result compared bit for bit with a serial computation in rank
 *    order, guard elements after every buffer, a #wrong count as nccl-tests
 *    reports it, and a hash per case that must be equal on every rank;
 *  - a rank SIGKILLed in the middle of all-reduces (as an unreaped zombie,
 *    and reaped): the others fail within the 500 ms timeout naming it;
 *  - a rank that stalls: the others time out naming it, it learns why;
 *  - abort from a peer and from another thread wakes the waiters at once;
 *  - stale / future generation and wrong world refused, collective mismatch
 *    reported, bad configurations, the segment unlinked, world 1;
 *  - the pieces the communicators share (comm_util.h): the rank-order sum
 *    where another order gives other bits, the abort record's first-writer
 *    rule and the cut of a long cause.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/comm.h"
#include "worker/comm/comm_util.h"

#define MAXW 8
#define MAXCASES 128

/* ------------------------------------------------------------ harness */

typedef struct rank_result {
    int done;                  /* 1 when the rank function returned */
    int status;                /* first llmq_status the rank saw (0: none) */
    long wrong;                /* elements that differ from the serial result */
    long cases;                /* cases run */
    double t_err;              /* CLOCK_MONOTONIC s when the error came back */
    _Atomic long iters;        /* progress counter the parent may poll */
    uint64_t hash[MAXCASES];   /* FNV-1a of each case's result */
    char msg[LLMQ_ERRSTR_LEN]; /* message of that status */
} rank_result;

typedef struct shared_area {
    rank_result r[MAXW];
    double t_event;            /* parent: when it killed/stopped a rank */
} shared_area;

typedef struct group {
    comm_shm_config cfg;       /* rank filled per child */
    int (*fn)(struct group *g, llmq_comm *c, rank_result *res); /* c NULL: fn creates */
    int self_create;           /* fn creates the communicator itself */
    int tcp;                   /* comm_tcp over 127.0.0.1 instead of comm_shm */
    int lfd, port;             /* tcp: the leader's listening socket, made before the fork */
    void *arg;
    shared_area *sh;
    pid_t pid[MAXW];
} group;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) && errno == EINTR) {
    }
}

static void record(rank_result *res, llmq_status st, const char *msg) {
    if (res->status) return;
    res->status = (int)st;
    res->t_err = now_s();
    snprintf(res->msg, sizeof res->msg, "%s", msg ? msg : "");
}

static char shm_name_buf[64];
static const char *fresh_name(void) {
    static int n;
    snprintf(shm_name_buf, sizeof shm_name_buf, "/llmq-test-comm-%d-%d", (int)getpid(), n++);
    return shm_name_buf;
}

static shared_area *area_new(void) {
    void *p = mmap(NULL, sizeof(shared_area), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(p != MAP_FAILED);
    memset(p, 0, sizeof(shared_area));
    return p;
}

static char tcp_leader[32];

/* The communicator of rank r of g (in the child). */
static llmq_comm *make_comm(group *g, int r, llmq_err *err) {
    if (!g->tcp) return comm_shm_create(&g->cfg, err);
    comm_tcp_config tc = {0};
    tc.rank = r;
    tc.world = g->cfg.world;
    tc.generation = g->cfg.generation;
    tc.token = "0123456789abcdef";
    tc.listen_fd = r == 0 ? g->lfd : -1;
    if (r > 0) close(g->lfd);
    snprintf(tcp_leader, sizeof tcp_leader, "127.0.0.1:%d", g->port);
    tc.leader = tcp_leader;
    tc.timeout_ms = g->cfg.timeout_ms;
    tc.join_timeout_ms = g->cfg.join_timeout_ms;
    return comm_tcp_create(&tc, err);
}

/* Fork g->cfg.world ranks.  Each child creates its communicator (unless
 * self_create), runs fn, destroys, and _exits; nothing returns into cmocka. */
static void group_start(group *g) {
    fflush(stdout);
    fflush(stderr);
    if (g->tcp) {
        llmq_err err = {0};
        g->lfd = comm_tcp_listen("127.0.0.1", 0, &g->port, &err);
        if (g->lfd < 0) fail_msg("%s", err.msg);
    }
    for (int r = 0; r < g->cfg.world; r++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            rank_result *res = &g->sh->r[r];
            g->cfg.rank = r;
            llmq_comm *c = NULL;
            if (!g->self_create) {
                llmq_err err = {0};
                c = make_comm(g, r, &err);
                if (!c) {
                    record(res, err.code, err.msg);
                    fprintf(stderr, "rank %d: create: %s\n", r, err.msg);
                    _exit(3);
                }
            }
            int rc = g->fn(g, c, res);
            res->done = 1;
            comm_destroy(c);
            fflush(stdout);
            fflush(stderr);
            _exit(rc);
        }
        g->pid[r] = pid;
    }
    if (g->tcp) close(g->lfd);
}

/* Reap the ranks in rank order (so a killed later rank stays a zombie while
 * the earlier ones run); SIGKILL everything left after limit_s. */
static void group_wait(group *g, double limit_s, int *codes) {
    double end = now_s() + limit_s;
    for (int r = 0; r < g->cfg.world; r++) {
        int stt = 0;
        for (;;) {
            pid_t p = waitpid(g->pid[r], &stt, WNOHANG);
            if (p == g->pid[r]) break;
            if (now_s() > end) {
                fprintf(stderr, "group did not finish within %.0f s: killing it\n", limit_s);
                for (int q = 0; q < g->cfg.world; q++) kill(g->pid[q], SIGKILL);
                for (int q = r; q < g->cfg.world; q++) waitpid(g->pid[q], NULL, 0);
                fail_msg("group timed out");
            }
            sleep_ms(2);
        }
        codes[r] = WIFEXITED(stt) ? WEXITSTATUS(stt) : 128 + WTERMSIG(stt);
    }
}

static void run_group(group *g, double limit_s, int *codes) {
    group_start(g);
    group_wait(g, limit_s, codes);
}

static comm_shm_config base_cfg(int world) {
    comm_shm_config cfg = {0};
    cfg.name = fresh_name();
    cfg.world = world;
    cfg.generation = 7;
    cfg.timeout_ms = 20000; /* generous: sanitizers on 2 cores, 4 ranks */
    cfg.join_timeout_ms = 20000;
    cfg.spin_us = -1;
    return cfg;
}

/* ------------------------------------------------------- deterministic data */

static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Input element i of rank r for case `salt`: 24 random bits in [-1, 1), so
 * that sums round and the order of the additions matters. */
static uint64_t seed_of(int r, uint32_t salt) { return mix((uint64_t)salt * 1315423911u + (uint64_t)r); }
static float val_f32(uint64_t seed, size_t i) {
    return (float)((int32_t)(mix(seed ^ i) >> 40) - (1 << 23)) / (float)(1 << 23);
}
static uint32_t val_u32(uint64_t seed, size_t i) { return (uint32_t)(mix(seed ^ i) >> 17); }

/* FNV-1a over 8-byte words (then the tail bytes): a fingerprint of a result. */
static uint64_t fnv(const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t h = 1469598103934665603ull, w;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, b + i, 8);
        h = (h ^ w) * 1099511628211ull;
    }
    for (; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

#define GUARD 16
#define GUARD_BYTE 0xA5

/* n payload bytes followed by GUARD * 4 guard bytes. */
static unsigned char *guarded(size_t n) {
    unsigned char *p = malloc(n + GUARD * 4);
    if (p) memset(p + n, GUARD_BYTE, GUARD * 4);
    return p;
}
static long guard_broken(const unsigned char *p, size_t n) {
    long bad = 0;
    for (size_t i = 0; i < GUARD * 4; i++) bad += p[n + i] != GUARD_BYTE;
    return bad;
}

/* ------------------------------------------------------- collective suite */

static const size_t reduce_counts[] = {1, 2, 3, 15, 16, 17, 255, 1000, 4097, 8191, 8192, 8193,
                                       65537, 262147, 1u << 20, (16u << 20) / 4};
static const size_t gather_counts[] = {1, 3, 17, 1000, 65537, (1u << 20) + 1};
static const size_t bcast_bytes[] = {1, 7, 4096, 65541, 1u << 20, (16u << 20) + 3};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

typedef struct case_ctx {
    llmq_comm *c;
    rank_result *res;
    int ncase;
} case_ctx;

static void case_done(case_ctx *k, const char *op, size_t count, long wrong, const void *out,
                      size_t bytes, llmq_status st) {
    if (st) {
        record(k->res, st, k->c->err.msg);
        fprintf(stderr, "rank %d: %s count %zu: %s\n", k->c->rank, op, count, k->c->err.msg);
    }
    if (wrong)
        fprintf(stderr, "rank %d world %d: %-15s count %9zu  #wrong %ld\n", k->c->rank, k->c->world, op,
                count, wrong);
    k->res->wrong += wrong;
    if (k->ncase < MAXCASES) k->res->hash[k->ncase] = fnv(out, bytes);
    k->ncase++;
    k->res->cases = k->ncase;
}

static void case_all_reduce(case_ctx *k, size_t count, comm_dtype dt, uint32_t salt) {
    llmq_comm *c = k->c;
    size_t bytes = count * 4;
    unsigned char *buf = guarded(bytes);
    long wrong = 0;
    if (!buf) {
        record(k->res, LLMQ_ERR_NOMEM, "malloc");
        return;
    }
    uint64_t seeds[MAXW];
    for (int r = 0; r < c->world; r++) seeds[r] = seed_of(r, salt);
    float *f = (float *)buf;
    uint32_t *u = (uint32_t *)buf;
    for (size_t i = 0; i < count; i++) {
        if (dt == COMM_F32) f[i] = val_f32(seeds[c->rank], i);
        else u[i] = val_u32(seeds[c->rank], i);
    }
    llmq_status st = comm_all_reduce_sum(c, buf, count, dt);
    for (size_t i = 0; !st && i < count; i++) {
        if (dt == COMM_F32) {
            float e = val_f32(seeds[0], i); /* rank order, as documented */
            for (int r = 1; r < c->world; r++) e += val_f32(seeds[r], i);
            wrong += bits(e) != bits(f[i]);
        } else {
            uint32_t e = 0;
            for (int r = 0; r < c->world; r++) e += val_u32(seeds[r], i);
            wrong += e != u[i];
        }
    }
    wrong += guard_broken(buf, bytes);
    case_done(k, dt == COMM_F32 ? "all_reduce f32" : "all_reduce i32", count, wrong, buf, bytes, st);
    free(buf);
}

static void case_all_gather(case_ctx *k, size_t count, comm_dtype dt, int in_place, uint32_t salt) {
    llmq_comm *c = k->c;
    size_t es = comm_dtype_size(dt), n = count * es, total = n * (size_t)c->world;
    unsigned char *recv = guarded(total), *send = in_place ? NULL : guarded(n);
    long wrong = 0;
    if (!recv || (!in_place && !send)) {
        record(k->res, LLMQ_ERR_NOMEM, "malloc");
        free(recv);
        free(send);
        return;
    }
    memset(recv, 0x5a, total);
    unsigned char *mine = in_place ? recv + (size_t)c->rank * n : send;
    uint64_t seed = seed_of(c->rank, salt);
    for (size_t i = 0; i < count; i++) {
        if (dt == COMM_F32) ((float *)mine)[i] = val_f32(seed, i);
        else mine[i] = (unsigned char)val_u32(seed, i);
    }
    llmq_status st = comm_all_gather(c, recv, mine, count, dt);
    for (int r = 0; !st && r < c->world; r++) {
        uint64_t sr = seed_of(r, salt);
        for (size_t i = 0; i < count; i++) {
            if (dt == COMM_F32) {
                float e = val_f32(sr, i);
                wrong += bits(e) != bits(((const float *)(recv + (size_t)r * n))[i]);
            } else {
                wrong += recv[(size_t)r * n + i] != (unsigned char)val_u32(sr, i);
            }
        }
    }
    wrong += guard_broken(recv, total);
    if (send) wrong += guard_broken(send, n);
    case_done(k, in_place ? "all_gather inpl" : dt == COMM_F32 ? "all_gather f32" : "all_gather u8", count,
              wrong, recv, total, st);
    free(recv);
    free(send);
}

static void case_broadcast(case_ctx *k, size_t bytes, int root, uint32_t salt) {
    llmq_comm *c = k->c;
    unsigned char *buf = guarded(bytes);
    long wrong = 0;
    if (!buf) {
        record(k->res, LLMQ_ERR_NOMEM, "malloc");
        return;
    }
    uint64_t seed = seed_of(root, salt);
    for (size_t i = 0; i < bytes; i++) buf[i] = c->rank == root ? (unsigned char)val_u32(seed, i) : 0x3c;
    llmq_status st = comm_broadcast(c, buf, bytes, root);
    for (size_t i = 0; !st && i < bytes; i++) wrong += buf[i] != (unsigned char)val_u32(seed, i);
    wrong += guard_broken(buf, bytes);
    case_done(k, "broadcast", bytes, wrong, buf, bytes, st);
    free(buf);
}

static int suite_rank(group *g, llmq_comm *c, rank_result *res) {
    case_ctx k = {c, res, 0};
    uint32_t salt = 1;
    for (size_t i = 0; i < NELEM(reduce_counts); i++) {
        case_all_reduce(&k, reduce_counts[i], COMM_F32, salt++);
        case_all_reduce(&k, reduce_counts[i], COMM_I32, salt++);
    }
    for (size_t i = 0; i < NELEM(gather_counts); i++) {
        case_all_gather(&k, gather_counts[i], COMM_F32, 0, salt++);
        case_all_gather(&k, gather_counts[i], COMM_U8, 0, salt++);
        case_all_gather(&k, gather_counts[i], COMM_F32, 1, salt++);
    }
    for (size_t i = 0; i < NELEM(bcast_bytes); i++) {
        if (bcast_bytes[i] <= 65541)
            for (int root = 0; root < c->world; root++) case_broadcast(&k, bcast_bytes[i], root, salt++);
        else
            case_broadcast(&k, bcast_bytes[i], c->world - 1, salt++);
    }
    llmq_status st = comm_barrier(c);
    if (st) record(res, st, c->err.msg);
    if (c->rank == 0)
        fprintf(stderr, "world %d slot %zu oneshot %zu: %ld cases, #wrong %ld\n", c->world,
                g->cfg.slot_bytes, g->cfg.oneshot_max, res->cases, res->wrong);
    return res->status || res->wrong ? 1 : 0;
}

static void check_suite_on(int tcp, int world, size_t slot, size_t oneshot) {
    group g = {0};
    g.tcp = tcp;
    g.cfg = base_cfg(world);
    g.cfg.slot_bytes = slot;
    g.cfg.oneshot_max = oneshot;
    g.fn = suite_rank;
    g.sh = area_new();
    int codes[MAXW];
    run_group(&g, 600, codes);
    long wrong = 0;
    for (int r = 0; r < world; r++) {
        rank_result *res = &g.sh->r[r];
        if (res->status) fprintf(stderr, "rank %d: %s\n", r, res->msg);
        assert_int_equal(codes[r], 0);
        assert_int_equal(res->status, 0);
        assert_true(res->done);
        wrong += res->wrong;
        assert_int_equal(res->cases, g.sh->r[0].cases);
        for (long i = 0; i < res->cases && i < MAXCASES; i++)
            assert_true(res->hash[i] == g.sh->r[0].hash[i]); /* bitwise equal on every rank */
    }
    assert_int_equal(wrong, 0);
    /* The leader unlinked the segment once everyone had joined. */
    int fd = shm_open(g.cfg.name, O_RDONLY, 0);
    assert_int_equal(fd, -1);
    assert_int_equal(errno, ENOENT);
    munmap(g.sh, sizeof *g.sh);
}

static void check_suite(int world, size_t slot, size_t oneshot) { check_suite_on(0, world, slot, oneshot); }

static void test_collectives_w2(void **st) {
    (void)st;
    check_suite(2, 0, 0);                  /* default 1 MiB slot, one-shot up to 32 KiB */
    check_suite(2, 4096, 1);               /* tiny slot, reduce-scatter even for 1 element */
}
static void test_collectives_w3(void **st) {
    (void)st;
    check_suite(3, 64 << 10, 0);
}
static void test_collectives_w4(void **st) {
    (void)st;
    check_suite(4, 0, SIZE_MAX);           /* one-shot whenever it fits the slot */
    check_suite(4, 5000, 0);               /* odd slot size, many rounds */
}

/* ------------------------------------------------------------- failures */

/* Loop on 4 MiB all-reduces until one fails; publish progress. */
static int busy_rank(group *g, llmq_comm *c, rank_result *res) {
    float *buf = calloc(1u << 20, sizeof *buf);
    llmq_status st = LLMQ_OK;
    for (long it = 0; it < 1000000 && !st; it++) {
        st = comm_all_reduce_sum(c, buf, 1u << 20, COMM_F32);
        atomic_store(&res->iters, it + 1);
    }
    if (st) record(res, st, c->err.msg);
    free(buf);
    return 0;
}

/* SIGKILL rank `victim` while every rank loops on all-reduces; the others
 * must fail within the 500 ms timeout with a message naming the victim. */
static void check_kill_on(int tcp, int world, int victim) {
    group g = {0};
    g.tcp = tcp;
    g.cfg = base_cfg(world);
    g.cfg.timeout_ms = 500;
    g.cfg.join_timeout_ms = 10000;
    g.fn = busy_rank;
    g.sh = area_new();
    group_start(&g);
    double until = now_s() + 30;
    for (int r = 0; r < world; r++)
        while (atomic_load(&g.sh->r[r].iters) < 3 && now_s() < until) sleep_ms(1);
    g.sh->t_event = now_s();
    kill(g.pid[victim], SIGKILL);
    int codes[MAXW];
    group_wait(&g, 60, codes);
    char want[64];
    snprintf(want, sizeof want, "rank %d (pid %d)", victim, (int)g.pid[victim]);
    /* tcp: the leader names the rank whose connection closed; a peer sees
     * the leader's abort, or the leader's connection close mid-frame */
    if (tcp) snprintf(want, sizeof want, "rank %d%s left the group", victim, victim ? "" : " (the leader)");
    for (int r = 0; r < world; r++) {
        if (r == victim) {
            assert_int_equal(codes[r], 128 + SIGKILL);
            continue;
        }
        rank_result *res = &g.sh->r[r];
        double dt = res->t_err - g.sh->t_event;
        fprintf(stderr, "world %d, rank %d killed: rank %d after %.0f ms: %s\n", world, victim, r, dt * 1e3,
                res->msg);
        assert_int_equal(codes[r], 0);
        assert_int_equal(res->status, LLMQ_ERR_IO);
        if (!tcp || r == 0 || victim == 0) assert_non_null(strstr(res->msg, want));
        else assert_true(strstr(res->msg, want) || strstr(res->msg, "rank 0 (the leader) left the group"));
        assert_true(dt < 0.5);
    }
    munmap(g.sh, sizeof *g.sh);
}

static void check_kill(int world, int victim) { check_kill_on(0, world, victim); }

static void test_killed_rank(void **st) {
    (void)st;
    check_kill(2, 1); /* stays a zombie: the parent reaps in rank order */
    check_kill(3, 2);
    check_kill(4, 0); /* the leader, reaped at once */
}

/* Rank world-1 arrives 1.5 s late at a barrier: the others time out after
 * ~500 ms naming it; when it arrives it learns the group was aborted. */
static int late_rank(group *g, llmq_comm *c, rank_result *res) {
    if (c->rank == c->world - 1) sleep_ms(1500);
    double t0 = now_s();
    llmq_status st = comm_barrier(c);
    if (st) record(res, st, c->err.msg);
    res->t_err = now_s() - t0; /* here: how long the barrier took */
    /* Failed stays failed. */
    if (st && comm_barrier(c) != st) record(res, LLMQ_ERR_INTERNAL, "second op did not fail the same");
    return 0;
}

static void stalled_rank_times_out_on(int tcp) {
    group g = {0};
    g.tcp = tcp;
    g.cfg = base_cfg(3);
    g.cfg.timeout_ms = 500;
    g.cfg.join_timeout_ms = 10000;
    g.fn = late_rank;
    g.sh = area_new();
    int codes[MAXW];
    run_group(&g, 60, codes);
    for (int r = 0; r < 3; r++) {
        rank_result *res = &g.sh->r[r];
        fprintf(stderr, "rank %d after %.0f ms: %s\n", r, res->t_err * 1e3, res->msg);
        assert_int_equal(codes[r], 0);
        assert_int_equal(res->status, LLMQ_ERR_TIMEOUT);
        assert_non_null(strstr(res->msg, "waiting for rank 2"));
        if (r < 2) {
            assert_true(res->t_err > 0.45 && res->t_err < 1.4);
        } else {
            assert_non_null(strstr(res->msg, "group aborted by rank"));
            assert_true(res->t_err < 0.2);
        }
    }
    munmap(g.sh, sizeof *g.sh);
}
static void test_stalled_rank_times_out(void **st) {
    (void)st;
    stalled_rank_times_out_on(0);
}
static void test_tcp_stalled_rank_times_out(void **st) {
    (void)st;
    stalled_rank_times_out_on(1);
}

/* Rank 1 aborts after 150 ms instead of entering the all-reduce. */
static int aborting_rank(group *g, llmq_comm *c, rank_result *res) {
    float x[64] = {0};
    double t0 = now_s();
    if (c->rank == 1) {
        sleep_ms(150);
        comm_abort(c, "test abort");
    }
    llmq_status st = comm_all_reduce_sum(c, x, 64, COMM_F32);
    if (st) record(res, st, c->err.msg);
    res->t_err = now_s() - t0;
    return 0;
}

static void *abort_later(void *arg) {
    sleep_ms(100);
    comm_abort(arg, "watchdog");
    return NULL;
}

/* Rank 0 waits in a barrier that rank 1 enters only after 2 s; a thread of
 * rank 0 aborts after 100 ms and must wake it. */
static int thread_abort_rank(group *g, llmq_comm *c, rank_result *res) {
    double t0 = now_s();
    pthread_t th;
    if (c->rank == 0 && pthread_create(&th, NULL, abort_later, c)) {
        record(res, LLMQ_ERR_INTERNAL, "pthread_create");
        return 1;
    }
    if (c->rank == 1) sleep_ms(2000);
    llmq_status st = comm_barrier(c);
    if (st) record(res, st, c->err.msg);
    res->t_err = now_s() - t0;
    if (c->rank == 0) pthread_join(th, NULL);
    return 0;
}

static void abort_wakes_waiters_on(int tcp) {
    group g = {0};
    g.tcp = tcp;
    g.cfg = base_cfg(3);
    g.cfg.timeout_ms = 10000;
    g.fn = aborting_rank;
    g.sh = area_new();
    int codes[MAXW];
    run_group(&g, 60, codes);
    for (int r = 0; r < 3; r++) {
        rank_result *res = &g.sh->r[r];
        fprintf(stderr, "rank %d after %.0f ms: %s\n", r, res->t_err * 1e3, res->msg);
        assert_int_equal(codes[r], 0);
        assert_int_equal(res->status, LLMQ_ERR_IO);
        assert_non_null(strstr(res->msg, "aborted by rank 1: test abort"));
        assert_true(res->t_err < 1.0);
    }
    munmap(g.sh, sizeof *g.sh);

    group t = {0};
    t.tcp = tcp;
    t.cfg = base_cfg(2);
    t.cfg.timeout_ms = 10000;
    t.fn = thread_abort_rank;
    t.sh = area_new();
    run_group(&t, 60, codes);
    for (int r = 0; r < 2; r++) {
        rank_result *res = &t.sh->r[r];
        fprintf(stderr, "rank %d after %.0f ms: %s\n", r, res->t_err * 1e3, res->msg);
        assert_int_equal(codes[r], 0);
        assert_int_equal(res->status, LLMQ_ERR_IO);
        assert_non_null(strstr(res->msg, "aborted by rank 0: watchdog"));
    }
    assert_true(t.sh->r[0].t_err < 1.0);
    munmap(t.sh, sizeof *t.sh);
}
static void test_abort_wakes_waiters(void **st) {
    (void)st;
    abort_wakes_waiters_on(0);
}
static void test_tcp_abort_wakes_waiters(void **st) {
    (void)st;
    abort_wakes_waiters_on(1);
}

/* Rank 1 first tries the wrong generations and world, then joins properly. */
static int generation_rank(group *g, llmq_comm *c, rank_result *res) {
    if (g->cfg.rank == 1) {
        comm_shm_config cfg = g->cfg;
        llmq_err err = {0};
        cfg.generation = g->cfg.generation - 1;  /* older than the segment: refused */
        double t0 = now_s();
        llmq_comm *x = comm_shm_create(&cfg, &err);
        if (x || err.code != LLMQ_ERR_INVALID || !strstr(err.msg, "stale generation") || now_s() - t0 > 5) {
            record(res, LLMQ_ERR_INTERNAL, x ? "stale generation accepted" : err.msg);
            comm_destroy(x);
            return 1;
        }
        cfg.generation = g->cfg.generation + 1;  /* newer: waits for its segment, times out */
        cfg.join_timeout_ms = 300;
        x = comm_shm_create(&cfg, &err);
        if (x || err.code != LLMQ_ERR_TIMEOUT || !strstr(err.msg, "still holds generation")) {
            record(res, LLMQ_ERR_INTERNAL, x ? "future generation accepted" : err.msg);
            comm_destroy(x);
            return 1;
        }
        cfg = g->cfg;
        cfg.world = 3;                           /* same generation, wrong world */
        x = comm_shm_create(&cfg, &err);
        if (x || err.code != LLMQ_ERR_INVALID || !strstr(err.msg, "world")) {
            record(res, LLMQ_ERR_INTERNAL, x ? "wrong world accepted" : err.msg);
            comm_destroy(x);
            return 1;
        }
    }
    llmq_err err = {0};
    c = comm_shm_create(&g->cfg, &err);
    if (!c) {
        record(res, err.code, err.msg);
        return 1;
    }
    int32_t v = 20 + c->rank;
    llmq_status st = comm_all_reduce_sum(c, &v, 1, COMM_I32);
    if (st || v != 41) record(res, st ? st : LLMQ_ERR_INTERNAL, st ? c->err.msg : "bad sum");
    comm_destroy(c);
    return res->status ? 1 : 0;
}

static void test_stale_generation_refused(void **st) {
    (void)st;
    group g = {0};
    g.cfg = base_cfg(2);
    g.cfg.generation = 5;
    g.fn = generation_rank;
    g.self_create = 1;
    g.sh = area_new();
    int codes[MAXW];
    run_group(&g, 60, codes);
    for (int r = 0; r < 2; r++) {
        if (g.sh->r[r].status) fprintf(stderr, "rank %d: %s\n", r, g.sh->r[r].msg);
        assert_int_equal(g.sh->r[r].status, 0);
        assert_int_equal(codes[r], 0);
    }
    munmap(g.sh, sizeof *g.sh);
}

/* Rank 0 all-reduces while rank 1 broadcasts: both must say so. */
static int mismatch_rank(group *g, llmq_comm *c, rank_result *res) {
    float x[100] = {0};
    llmq_status st = c->rank == 0 ? comm_all_reduce_sum(c, x, 100, COMM_F32) : comm_broadcast(c, x, 400, 0);
    if (st) record(res, st, c->err.msg);
    return 0;
}

static void collective_mismatch_on(int tcp) {
    group g = {0};
    g.tcp = tcp;
    g.cfg = base_cfg(2);
    g.cfg.timeout_ms = 5000;
    g.fn = mismatch_rank;
    g.sh = area_new();
    int codes[MAXW];
    run_group(&g, 60, codes);
    for (int r = 0; r < 2; r++) {
        fprintf(stderr, "rank %d: %s\n", r, g.sh->r[r].msg);
        assert_int_equal(g.sh->r[r].status, LLMQ_ERR_INTERNAL);
        assert_non_null(strstr(g.sh->r[r].msg, "collective mismatch"));
        assert_non_null(strstr(g.sh->r[r].msg, "broadcast #1 (400 bytes, root 0)"));
    }
    munmap(g.sh, sizeof *g.sh);
}
static void test_collective_mismatch(void **st) {
    (void)st;
    collective_mismatch_on(0);
}
static void test_tcp_collective_mismatch(void **st) {
    (void)st;
    collective_mismatch_on(1);
}

/* A rank that never comes: the leader's join times out naming it. */
static void test_join_timeout(void **st) {
    (void)st;
    comm_shm_config cfg = base_cfg(3);
    cfg.rank = 0;
    cfg.join_timeout_ms = 200;
    llmq_err err = {0};
    double t0 = now_s();
    llmq_comm *c = comm_shm_create(&cfg, &err);
    assert_null(c);
    assert_int_equal(err.code, LLMQ_ERR_TIMEOUT);
    assert_non_null(strstr(err.msg, "ranks 1, 2"));
    assert_non_null(strstr(err.msg, "never joined"));
    assert_true(now_s() - t0 < 2.0);
    assert_int_equal(shm_open(cfg.name, O_RDONLY, 0), -1); /* cleaned up */
}

static void test_bad_config(void **st) {
    (void)st;
    llmq_err err = {0};
    comm_shm_config cfg = base_cfg(2);
    cfg.name = "no-slash";
    assert_null(comm_shm_create(&cfg, &err));
    assert_int_equal(err.code, LLMQ_ERR_INVALID);
    cfg = base_cfg(2);
    cfg.rank = 2;
    assert_null(comm_shm_create(&cfg, &err));
    assert_int_equal(err.code, LLMQ_ERR_INVALID);
    cfg = base_cfg(0);
    assert_null(comm_shm_create(&cfg, &err));
    assert_int_equal(err.code, LLMQ_ERR_INVALID);
    assert_null(comm_shm_create(NULL, &err));
    comm_destroy(NULL);
}

/* ------------------------------------------------------------------ tcp */

static void test_tcp_collectives(void **st) {
    (void)st;
    check_suite_on(1, 2, 0, 0);
    check_suite_on(1, 3, 0, 0);
    check_suite_on(1, 4, 0, 0);
}

static void test_tcp_killed_rank(void **st) {
    (void)st;
    check_kill_on(1, 2, 1);
    check_kill_on(1, 3, 2);
    check_kill_on(1, 4, 0);
}

/* Try to join g as `rank` with a wrong field; the leader must refuse with
 * `want` in its message (records a failure otherwise). */
static void tcp_refused(group *g, rank_result *res, int rank, int world, uint64_t gen, const char *token,
                        const char *want) {
    comm_tcp_config tc = {0};
    tc.rank = rank;
    tc.world = world;
    tc.generation = gen;
    tc.token = token;
    tc.listen_fd = -1;
    tc.leader = tcp_leader;
    tc.timeout_ms = 5000;
    tc.join_timeout_ms = 5000;
    llmq_err err = {0};
    llmq_comm *x = comm_tcp_create(&tc, &err);
    if (x || err.code != LLMQ_ERR_INVALID || !strstr(err.msg, want)) {
        char m[LLMQ_ERRSTR_LEN];
        snprintf(m, sizeof m, "wanted a refusal with '%s', got: %.400s", want, x ? "joined" : err.msg);
        record(res, LLMQ_ERR_INTERNAL, m);
        comm_destroy(x);
    }
}

/* World 3, generation 5: rank 1 first tries an older and a newer
 * generation, another group's token and a wrong world, then joins; rank 2
 * first claims rank 1 (already joined), then joins as itself. */
static int tcp_join_rank(group *g, llmq_comm *c, rank_result *res) {
    const char *tok = "0123456789abcdef";
    int r = -1;
    for (int q = 0; q < g->cfg.world; q++)
        if (&g->sh->r[q] == res) r = q;
    snprintf(tcp_leader, sizeof tcp_leader, "127.0.0.1:%d", g->port);
    if (r > 0) close(g->lfd);
    if (r == 1) {
        tcp_refused(g, res, 1, 3, 4, tok, "stale generation 4");
        tcp_refused(g, res, 1, 3, 6, tok, "newer than this leader");
        tcp_refused(g, res, 1, 3, 5, "another", "wrong group token");
        tcp_refused(g, res, 1, 4, 5, tok, "world 4, but the group has world 3");
    }
    if (r == 2) {
        sleep_ms(400);
        tcp_refused(g, res, 1, 3, 5, tok, "rank 1 already joined");
    }
    comm_tcp_config tc = {0};
    tc.rank = r;
    tc.world = 3;
    tc.generation = 5;
    tc.token = tok;
    tc.listen_fd = r == 0 ? g->lfd : -1;
    tc.leader = tcp_leader;
    tc.timeout_ms = 10000;
    tc.join_timeout_ms = 20000;
    llmq_err err = {0};
    c = comm_tcp_create(&tc, &err);
    if (!c) {
        record(res, err.code, err.msg);
        return 1;
    }
    int32_t v = 20 + c->rank;
    llmq_status st = comm_all_reduce_sum(c, &v, 1, COMM_I32);
    if (st || v != 63) record(res, st ? st : LLMQ_ERR_INTERNAL, st ? c->err.msg : "bad sum");
    comm_destroy(c);
    return res->status ? 1 : 0;
}

static void test_tcp_join(void **st) {
    (void)st;
    group g = {0};
    g.tcp = 1;
    g.cfg = base_cfg(3);
    g.fn = tcp_join_rank;
    g.self_create = 1;
    g.sh = area_new();
    int codes[MAXW];
    run_group(&g, 60, codes);
    for (int r = 0; r < 3; r++) {
        if (g.sh->r[r].status) fprintf(stderr, "rank %d: %s\n", r, g.sh->r[r].msg);
        assert_int_equal(g.sh->r[r].status, 0);
        assert_int_equal(codes[r], 0);
    }
    munmap(g.sh, sizeof *g.sh);

    /* Nobody comes: the leader names the missing ranks. */
    llmq_err err = {0};
    int port = 0;
    comm_tcp_config tc = {0};
    tc.world = 3;
    tc.generation = 1;
    tc.listen_fd = comm_tcp_listen("127.0.0.1", 0, &port, &err);
    assert_true(tc.listen_fd >= 0);
    tc.join_timeout_ms = 200;
    double t0 = now_s();
    assert_null(comm_tcp_create(&tc, &err));
    assert_int_equal(err.code, LLMQ_ERR_TIMEOUT);
    assert_non_null(strstr(err.msg, "ranks 1, 2 never joined"));
    assert_true(now_s() - t0 < 2.0);

    /* No leader there (its socket is closed now): a peer gives up at its join timeout. */
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    tc.rank = 1;
    tc.listen_fd = -1;
    tc.leader = addr;
    assert_null(comm_tcp_create(&tc, &err));
    assert_int_equal(err.code, LLMQ_ERR_TIMEOUT);
    assert_non_null(strstr(err.msg, "cannot reach the leader"));

    /* Bad configurations. */
    tc.leader = "no-port";
    assert_null(comm_tcp_create(&tc, &err));
    assert_int_equal(err.code, LLMQ_ERR_INVALID);
    tc.rank = 3;
    assert_null(comm_tcp_create(&tc, &err));
    assert_int_equal(err.code, LLMQ_ERR_INVALID);
    tc.rank = 0;
    tc.listen_fd = -1;
    assert_null(comm_tcp_create(&tc, &err));
    assert_int_equal(err.code, LLMQ_ERR_INVALID);
    assert_int_equal(comm_tcp_listen("256.1.1.1", 0, &port, &err), -1);
    assert_int_equal(err.code, LLMQ_ERR_IO);
}

/* The ops every communicator of world 1 must answer the same way. */
static void check_world1(llmq_comm *c) {
    assert_int_equal(c->world, 1);
    assert_int_equal(c->rank, 0);
    float x[5] = {1, 2, 3, 4, 5}, y[5] = {0};
    assert_int_equal(comm_all_reduce_sum(c, x, 5, COMM_F32), LLMQ_OK);
    assert_true(x[0] == 1 && x[4] == 5);
    assert_int_equal(comm_all_gather(c, y, x, 5, COMM_F32), LLMQ_OK);
    assert_memory_equal(x, y, sizeof x);
    assert_int_equal(comm_all_gather(c, y, y, 5, COMM_F32), LLMQ_OK); /* in place */
    assert_int_equal(comm_broadcast(c, x, sizeof x, 0), LLMQ_OK);
    assert_int_equal(comm_barrier(c), LLMQ_OK);
    assert_int_equal(comm_all_reduce_sum(c, x, 0, COMM_F32), LLMQ_OK);
    comm_abort(c, "bye");
    assert_int_equal(comm_barrier(c), LLMQ_ERR_IO);
    assert_non_null(strstr(c->err.msg, "aborted by rank 0: bye"));
    assert_int_equal(comm_all_reduce_sum(c, x, 5, COMM_F32), LLMQ_ERR_IO); /* stays failed */
}

static void test_single(void **st) {
    (void)st;
    llmq_err err = {0};
    llmq_comm *c = comm_single_create(&err);
    assert_non_null(c);
    assert_string_equal(c->ops->name, "single");
    check_world1(c);
    comm_destroy(c);
    c = comm_single_create(&err);
    float x = 1;
    assert_int_equal(comm_broadcast(c, &x, 4, 1), LLMQ_ERR_INVALID); /* no rank 1 */
    comm_destroy(c);
    c = comm_single_create(&err);
    assert_int_equal(comm_all_reduce_sum(c, &x, 1, COMM_U8), LLMQ_ERR_UNSUPPORTED);
    comm_destroy(c);
    comm_destroy(NULL);
}

static void test_tcp_world1(void **st) {
    (void)st;
    comm_tcp_config tc = {0};
    tc.world = 1;
    tc.listen_fd = -1;
    llmq_err err = {0};
    llmq_comm *c = comm_tcp_create(&tc, &err);
    assert_non_null(c);
    assert_string_equal(c->ops->name, "tcp");
    check_world1(c);
    comm_destroy(c);
}

static void test_shm_world1(void **st) {
    (void)st;
    comm_shm_config cfg = base_cfg(1);
    llmq_err err = {0};
    llmq_comm *c = comm_shm_create(&cfg, &err);
    assert_non_null(c);
    assert_string_equal(c->ops->name, "shm");
    check_world1(c);
    comm_destroy(c);
}

/* ------------------------------------------------------------ comm_util */

/* (1e8 + 1) - 1e8 is 0 in float (1e8 + 1 rounds to 1e8), (1e8 - 1e8) + 1
 * is 1: the sum follows the order of src.  Long enough to cross the sum's blocks, into a second
 * destination and in place over src[0] as the TCP leader sums. */
static void test_util_sum_rank_order(void **st) {
    (void)st;
    enum { N = 1300 };
    static float a[N], b[N], c[N], out[N], out2[N];
    for (int i = 0; i < N; i++) {
        a[i] = 1e8f;
        b[i] = 1.0f;
        c[i] = -1e8f;
    }
    const void *src[3] = {a, b, c};
    comm_sum_rank_order(COMM_F32, out, out2, src, 3, N);
    for (int i = 0; i < N; i++) {
        assert_true(out[i] == 0.0f);
        assert_true(out2[i] == 0.0f);
    }
    const void *rev[3] = {a, c, b};
    comm_sum_rank_order(COMM_F32, out, NULL, rev, 3, N);
    assert_true(out[0] == 1.0f && out[N - 1] == 1.0f);
    comm_sum_rank_order(COMM_F32, a, NULL, src, 3, N); /* in place over src[0] */
    for (int i = 0; i < N; i++) assert_true(a[i] == 0.0f);

    uint32_t x[3] = {0xFFFFFFFFu, 7, 0x80000000u}, y[3] = {2, 1, 0x80000000u}, z[3];
    const void *isrc[2] = {x, y};
    comm_sum_rank_order(COMM_I32, z, NULL, isrc, 2, 3); /* wraps modulo 2^32 */
    assert_int_equal(z[0], 1);
    assert_int_equal(z[1], 8);
    assert_int_equal(z[2], 0);
}

/* comm_fail_record with its arguments, as a communicator's fail() calls it. */
__attribute__((format(printf, 7, 8))) static llmq_status util_fail(llmq_err *err, comm_abort_rec *rec, int rank,
                                                                   const char *what, size_t reason_max,
                                                                   llmq_status code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    llmq_status st = comm_fail_record(err, rec, rank, what, reason_max, code, fmt, ap);
    va_end(ap);
    return st;
}

static void test_util_abort_record(void **st) {
    (void)st;
    comm_abort_rec rec;
    memset(&rec, 0, sizeof rec);
    llmq_err err = {0};
    char longcause[600];
    memset(longcause, 'x', sizeof longcause - 1);
    longcause[sizeof longcause - 1] = '\0';

    /* The record keeps "(<what>)" whole however long the cause, within the
     * transport's limit; this rank's own error keeps its longer cause. */
    llmq_status code = LLMQ_ERR_TIMEOUT;
    assert_int_equal(util_fail(&err, &rec, 2, "all_reduce_sum #7", 256, code, "%s", longcause), code);
    assert_int_equal(err.code, LLMQ_ERR_TIMEOUT);
    assert_true(!strncmp(err.msg, "comm rank 2: all_reduce_sum #7: xxx", 35));
    assert_int_equal(atomic_load(&rec.state), 2);
    assert_int_equal(rec.rank, 2);
    assert_int_equal(rec.code, LLMQ_ERR_TIMEOUT);
    assert_int_equal(strlen(rec.msg), 255);
    const char *tail = " (all_reduce_sum #7)";
    assert_string_equal(rec.msg + 255 - strlen(tail), tail);

    /* First writer wins: a later failure or abort leaves the record alone. */
    llmq_err err2 = {0};
    util_fail(&err2, &rec, 1, "barrier #8", 256, LLMQ_ERR_IO, "rank %d left", 3);
    assert_string_equal(err2.msg, "comm rank 1: barrier #8: rank 3 left");
    assert_int_equal(comm_abort_rec_set(&rec, 0, LLMQ_ERR_IO, "late"), 0);
    assert_int_equal(rec.rank, 2);

    /* Every rank's error names the first cause and keeps its code. */
    llmq_err err3 = {0};
    assert_int_equal(comm_fail_from_abort(&err3, &rec, 0, "broadcast #9"), LLMQ_ERR_TIMEOUT);
    assert_true(!strncmp(err3.msg, "comm rank 0: broadcast #9: group aborted by rank 2: xxx", 55));

    /* Defaults: no reason is "abort", no code is an I/O error. */
    comm_abort_rec r2;
    memset(&r2, 0, sizeof r2);
    assert_int_equal(comm_abort_rec_set(&r2, 3, LLMQ_OK, ""), 1);
    assert_string_equal(r2.msg, "abort");
    assert_int_equal(r2.code, LLMQ_ERR_IO);
    assert_int_equal(comm_fail_from_abort(&err3, &r2, 1, "barrier #1"), LLMQ_ERR_IO);
    assert_string_equal(err3.msg, "comm rank 1: barrier #1: group aborted by rank 3: abort");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_util_sum_rank_order),
        cmocka_unit_test(test_util_abort_record),
        cmocka_unit_test(test_single),
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_shm_world1),
        cmocka_unit_test(test_join_timeout),
        cmocka_unit_test(test_collectives_w2),
        cmocka_unit_test(test_collectives_w3),
        cmocka_unit_test(test_collectives_w4),
        cmocka_unit_test(test_killed_rank),
        cmocka_unit_test(test_stalled_rank_times_out),
        cmocka_unit_test(test_abort_wakes_waiters),
        cmocka_unit_test(test_stale_generation_refused),
        cmocka_unit_test(test_collective_mismatch),
        cmocka_unit_test(test_tcp_world1),
        cmocka_unit_test(test_tcp_join),
        cmocka_unit_test(test_tcp_collectives),
        cmocka_unit_test(test_tcp_killed_rank),
        cmocka_unit_test(test_tcp_stalled_rank_times_out),
        cmocka_unit_test(test_tcp_abort_wakes_waiters),
        cmocka_unit_test(test_tcp_collective_mismatch),
    };
    return cmocka_run_group_tests_name("comm", tests, NULL, NULL);
}
