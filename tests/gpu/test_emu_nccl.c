/*
 * test_emu_nccl.c — the NCCL communicator (kernels/cuda/comm_nccl.cu) across
 * processes: groups of 2, 3 and 4 ranks, each a forked process with its own
 * CUDA backend (device LLMQ_CUDA_DEVICE + rank, as worker/engine/tp.c
 * starts them) and its NCCL communicator formed the way the engine forms it
 * (be_ops.group_comm over a shared-memory host communicator).  Under
 * `make cuda-emu` the devices and NCCL are the emulated ones
 * (kernels/cuda/emu/); under `make cuda` it needs as many GPUs as ranks and
 * skips otherwise.
 *
 * Results: all_reduce_sum (f32, i32, f16, bf16; 1 element to a few MiB,
 * lengths not divisible by the world) against rank-order sums computed here
 * ((x0 + x1) + x2 ..., 16-bit types widened to f32 and rounded once, by this
 * file's own conversions), bit for bit, on device and host buffers;
 * all_gather and broadcast from every root, device and host; barrier.
 *
 * Failures, each bounded (a child that hangs is killed and the case fails):
 *  - a rank SIGKILLed during the collectives: the others fail within their
 *    deadline (on the emulated device at once, naming the rank);
 *  - comm_abort from another thread releases a waiting collective promptly,
 *    also one whose result goes to host memory (the copy into pageable
 *    memory used to block behind the collective, past every deadline);
 *  - a collective whose peer never comes fails at its deadline;
 *  - ranks calling different collectives, or different counts, fail with a
 *    message saying so (emulated device; a GPU's NCCL cannot tell).
 *
 * Children report through their exit status (the number of failed checks,
 * 77 = skip) and stderr; cmocka runs in the parent only.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/comm.h"
#include "kernels/backend.h"
#include "kernels/cuda/comm_nccl.h"
#include "kernels/cuda/cuda.h"

#define SKIP_STATUS 77
#define GROUP_LIMIT_S 120 /* a group still running after this is hung: killed, failed */

/* ------------------------------------------------------------ checks in a child */

static int g_rank;
static int g_fails;

#define CHECK(cond, ...)                                                                                           \
    do {                                                                                                           \
        if (!(cond)) {                                                                                             \
            fprintf(stderr, "rank %d: %s:%d: check `%s` failed: ", g_rank, __FILE__, __LINE__, #cond);             \
            fprintf(stderr, __VA_ARGS__);                                                                          \
            fputc('\n', stderr);                                                                                   \
            g_fails++;                                                                                             \
        }                                                                                                          \
    } while (0)

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* ------------------------------------------------------------ 16-bit floats, independently of CUDA's headers */

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest even; the test values are finite and in range. */
static uint16_t f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static float bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

static float f16_to_f32(uint16_t h) {
    const int e = (h >> 10) & 31, m = h & 1023;
    const float mag = e == 0 ? ldexpf((float)m, -24) : ldexpf((float)(1024 + m), e - 25);
    return h & 0x8000 ? -mag : mag;
}

/* Round to nearest even through double: exact for the finite values of the test (no overflow). */
static uint16_t f32_to_f16(float f) {
    const uint16_t sign = f < 0 ? 0x8000 : 0;
    double a = fabs((double)f);
    if (a == 0) return sign;
    int e;
    frexp(a, &e);                        /* a = [0.5, 1) * 2^e */
    int ulp_exp = e - 11 < -24 ? -24 : e - 11; /* 11 significant bits, subnormals below 2^-14 */
    double q = ldexp(a, -ulp_exp);       /* a in ulps */
    double r = nearbyint(q);             /* the default rounding mode: to nearest even */
    double v = ldexp(r, ulp_exp);
    /* encode v exactly */
    if (v < 6.103515625e-05) return (uint16_t)(sign | (uint16_t)ldexp(v, 24));
    frexp(v, &e);
    const int be = e - 1 + 15;
    const uint16_t mant = (uint16_t)(ldexp(v, 11 - e) - 1024);
    return (uint16_t)(sign | (uint16_t)(be << 10) | mant);
}

/* ------------------------------------------------------------ the data */

/* Element i of rank r's input, exactly representable in the dtype: varied magnitudes and signs,
 * so that the order of the additions shows in the bits. */
static float input_value(int r, size_t i, comm_dtype dt) {
    const int k = (int)((i * 2654435761u + (size_t)r * 40503u) % 4001) - 2000;
    float v = (float)k / 64.0f * (float)(1 + (int)((i + (size_t)r) % 7)) + (float)r / 3.0f;
    if (dt == COMM_F16) return f16_to_f32(f32_to_f16(v));
    if (dt == COMM_BF16) return bf16_to_f32(f32_to_bf16(v));
    return v;
}

static int32_t input_i32(int r, size_t i) {
    return (int32_t)(uint32_t)((i * 2246822519u) ^ ((uint32_t)r * 3266489917u)); /* sums wrap */
}

/* Fill dst (count elements of dt) with rank r's input. */
static void fill_input(void *dst, int r, size_t count, comm_dtype dt) {
    for (size_t i = 0; i < count; i++) {
        if (dt == COMM_F32) ((float *)dst)[i] = input_value(r, i, dt);
        else if (dt == COMM_I32) ((int32_t *)dst)[i] = input_i32(r, i);
        else if (dt == COMM_F16) ((uint16_t *)dst)[i] = f32_to_f16(input_value(r, i, dt));
        else ((uint16_t *)dst)[i] = f32_to_bf16(input_value(r, i, dt));
    }
}

/* The rank-order sum comm.h promises, in dt's bits. */
static void expected_sum(void *dst, int world, size_t count, comm_dtype dt) {
    for (size_t i = 0; i < count; i++) {
        if (dt == COMM_I32) {
            uint32_t acc = (uint32_t)input_i32(0, i);
            for (int r = 1; r < world; r++) acc += (uint32_t)input_i32(r, i);
            ((uint32_t *)dst)[i] = acc;
            continue;
        }
        float acc = input_value(0, i, dt);
        for (int r = 1; r < world; r++) acc = acc + input_value(r, i, dt);
        if (dt == COMM_F32) ((float *)dst)[i] = acc;
        else if (dt == COMM_F16) ((uint16_t *)dst)[i] = f32_to_f16(acc);
        else ((uint16_t *)dst)[i] = f32_to_bf16(acc);
    }
}

/* Compare bits; report the first mismatches. */
static int same_bits(const void *got, const void *want, size_t count, size_t es, const char *what) {
    if (!memcmp(got, want, count * es)) return 1;
    int shown = 0;
    for (size_t i = 0; i < count && shown < 4; i++)
        if (memcmp((const char *)got + i * es, (const char *)want + i * es, es)) {
            uint32_t g = 0, w = 0;
            memcpy(&g, (const char *)got + i * es, es);
            memcpy(&w, (const char *)want + i * es, es);
            fprintf(stderr, "rank %d: %s: element %zu of %zu: got 0x%x, want 0x%x\n", g_rank, what, i, count, g, w);
            shown++;
        }
    return 0;
}

/* ------------------------------------------------------------ a group of forked ranks */

typedef struct rank_ctx {
    int rank, world;
    llmq_backend *be;
    llmq_comm *host; /* the shared-memory group the engine starts with */
    llmq_comm *nccl; /* be_ops.group_comm's */
    const void *arg;
} rank_ctx;

typedef void (*rank_fn)(rank_ctx *x);

typedef struct group_opts {
    int world;
    const char *dtype; /* LLMQ_CUDA_DTYPE */
    int timeout_ms;    /* the host communicator's, which the NCCL one takes */
    int expect_killed; /* this rank ends by SIGKILL (-1: none) */
    int late_ms;       /* > 0: the last rank forms the NCCL group this much later (slow loading), and every
                        * rank forms it with comm_nccl_group_create's start-up deadline */
} group_opts;

static int g_group_no;

/* A page shared by the parent and every rank (mapped before the forks): ranks that must stay away
 * from a collective wait on a flag here instead of sleeping for a worst-case time. */
static volatile int *g_flags;

/* Wait until g_flags[i] is set (limit_ms at most); returns 1 when it was. */
static int wait_flag(int i, int limit_ms) {
    for (int t = 0; t < limit_ms; t += 5) {
        if (__atomic_load_n(&g_flags[i], __ATOMIC_ACQUIRE)) return 1;
        sleep_ms(5);
    }
    return 0;
}

static void set_flag(int i) { __atomic_store_n(&g_flags[i], 1, __ATOMIC_RELEASE); }

/* In the child: form the group the way the engine does, run fn, exit with the failure count. */
static void child_main(const group_opts *o, int rank, const char *shm_name, rank_fn fn, const void *arg) {
    g_rank = rank;
    g_fails = 0;
    char dev[16];
    const char *base = getenv("LLMQ_CUDA_DEVICE");
    snprintf(dev, sizeof dev, "%d", (base && *base ? atoi(base) : 0) + rank);
    setenv("LLMQ_CUDA_DEVICE", dev, 1);
    setenv("LLMQ_CUDA_DTYPE", o->dtype, 1);
    /* the host group first, as worker/engine/tp.c forms it before loading: a rank without a device
     * then leaves a formed group, which its peers see at once */
    llmq_err err = {0};
    comm_shm_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.name = shm_name;
    cfg.rank = rank;
    cfg.world = o->world;
    cfg.generation = 1;
    cfg.timeout_ms = o->timeout_ms;
    cfg.join_timeout_ms = 30000;
    cfg.spin_us = -1;
    llmq_comm *host = comm_shm_create(&cfg, &err);
    if (!host) {
        fprintf(stderr, "rank %d: shm group: %s\n", rank, err.msg);
        _exit(1);
    }
    llmq_backend *be = llmq_backend_create("cuda", &err);
    if (!be) {
        fprintf(stderr, "rank %d: no cuda backend: %s\n", rank, err.msg);
        _exit(strstr(err.msg, "no CUDA device") || strstr(err.msg, "device(s) are visible") ? SKIP_STATUS : 1);
    }
    if (o->late_ms > 0 && rank == o->world - 1) sleep_ms(o->late_ms);
    llmq_comm *nccl = o->late_ms > 0 ? comm_nccl_group_create(host, cuda_backend_stream(be), 0, &err)
                                     : be->ops->group_comm(be, host, 0, &err);
    if (!nccl) {
        fprintf(stderr, "rank %d: group_comm: %s\n", rank, err.msg);
        _exit(1);
    }
    CHECK(nccl->device_mem == 1 && nccl->rank == rank && nccl->world == o->world, "the NCCL communicator's shape");
    CHECK(!strcmp(nccl->ops->name, "nccl"), "name %s", nccl->ops->name);
    CHECK(host->timeout_ms == o->timeout_ms && nccl->timeout_ms == o->timeout_ms,
          "the collectives' deadline (host %d ms, nccl %d ms, want %d)", host->timeout_ms, nccl->timeout_ms,
          o->timeout_ms);
    rank_ctx x = {rank, o->world, be, host, nccl, arg};
    fn(&x);
    comm_destroy(nccl);
    comm_destroy(host);
    llmq_backend_destroy(be);
    fflush(stderr);
    _exit(g_fails > 250 ? 250 : g_fails);
}

/* Fork the ranks and wait for them (GROUP_LIMIT_S at most).  Returns the number of ranks that
 * failed; skips the test when a rank had no device. */
static int run_group(const group_opts *o, rank_fn fn, const void *arg) {
    char shm_name[64];
    snprintf(shm_name, sizeof shm_name, "/llmq-test-nccl-%d-%d", (int)getpid(), g_group_no++);
    pid_t pids[8];
    memset((void *)g_flags, 0, 4096);
    fflush(stdout);
    fflush(stderr);
    for (int r = 0; r < o->world; r++) {
        pids[r] = fork();
        assert_true(pids[r] >= 0);
        if (pids[r] == 0) child_main(o, r, shm_name, fn, arg);
    }
    int failed = 0, skipped = 0, left = o->world;
    int status[8] = {0}, done[8] = {0};
    const double limit = now_ms() + GROUP_LIMIT_S * 1e3;
    while (left > 0) {
        for (int r = 0; r < o->world; r++) {
            if (done[r]) continue;
            pid_t p = waitpid(pids[r], &status[r], WNOHANG);
            if (p == pids[r]) done[r] = 1, left--;
        }
        if (left > 0 && now_ms() > limit) {
            for (int r = 0; r < o->world; r++)
                if (!done[r]) {
                    print_message("# rank %d of %d hung: killed\n", r, o->world);
                    kill(pids[r], SIGKILL);
                    waitpid(pids[r], &status[r], 0);
                    done[r] = 1;
                    failed++;
                }
            left = 0;
        }
        if (left > 0) sleep_ms(5);
    }
    for (int r = 0; r < o->world; r++) {
        if (r == o->expect_killed) {
            if (!(WIFSIGNALED(status[r]) && WTERMSIG(status[r]) == SIGKILL)) failed++;
            continue;
        }
        if (WIFEXITED(status[r]) && WEXITSTATUS(status[r]) == SKIP_STATUS) skipped++;
        else if (!(WIFEXITED(status[r]) && WEXITSTATUS(status[r]) == 0)) {
            print_message("# rank %d of %d: exit status 0x%x\n", r, o->world, status[r]);
            failed++;
        }
    }
    if (skipped) {
        print_message("# skipped: a rank of %d had no CUDA device\n", o->world);
        skip();
    }
    return failed;
}

/* ------------------------------------------------------------ results */

static const size_t COUNTS[] = {1, 2, 3, 7, 1000, 4099, 65537};
#define N_COUNTS (sizeof COUNTS / sizeof COUNTS[0])
#define BIG_BYTES (((size_t)2 << 20) + 4) /* the all-reduce of a few MiB (not divisible by 3 or 4 elements) */

static size_t dt_size(comm_dtype dt) { return comm_dtype_size(dt); }

/* download_f32 of a buffer of the backend's activation type, back into dt's bits. */
static void read_device(rank_ctx *x, void *dst, const void *dev, size_t count, comm_dtype dt) {
    float *f = malloc(count * sizeof *f);
    x->be->ops->download_f32(x->be, f, dev, count);
    for (size_t i = 0; i < count; i++) {
        if (dt == COMM_F32 || dt == COMM_I32) memcpy((char *)dst + 4 * i, &f[i], 4); /* F32 download: a copy */
        else if (dt == COMM_F16) ((uint16_t *)dst)[i] = f32_to_f16(f[i]);              /* exact: widened */
        else ((uint16_t *)dst)[i] = f32_to_bf16(f[i]);
    }
    free(f);
    llmq_err err = {0};
    CHECK(x->be->ops->sync(x->be, &err) == LLMQ_OK, "sync: %s", err.msg);
}

static void check_all_reduce(rank_ctx *x, size_t count, comm_dtype dt) {
    const size_t es = dt_size(dt), bytes = count * es;
    char what[96];
    void *in = malloc(bytes), *want = malloc(bytes), *got = malloc(bytes);
    fill_input(in, x->rank, count, dt);
    expected_sum(want, x->world, count, dt);
    /* device buffer (the engine's activations) */
    void *d = x->be->ops->alloc(x->be, bytes);
    CHECK(d != NULL, "alloc of %zu B", bytes);
    if (d) {
        x->be->ops->upload(x->be, d, in, bytes);
        llmq_status st = comm_all_reduce_sum(x->nccl, d, count, dt);
        CHECK(st == LLMQ_OK, "all_reduce_sum %s x %zu: %s", comm_dtype_name(dt), count, x->nccl->err.msg);
        read_device(x, got, d, count, dt);
        snprintf(what, sizeof what, "all_reduce_sum %s x %zu, device, world %d", comm_dtype_name(dt), count, x->world);
        CHECK(same_bits(got, want, count, es, what), "%s", what);
        x->be->ops->free(x->be, d);
    }
    /* host buffer (staged; the result comes back into pageable memory) */
    memcpy(got, in, bytes);
    llmq_status st = comm_all_reduce_sum(x->nccl, got, count, dt);
    CHECK(st == LLMQ_OK, "all_reduce_sum %s x %zu (host): %s", comm_dtype_name(dt), count, x->nccl->err.msg);
    snprintf(what, sizeof what, "all_reduce_sum %s x %zu, host, world %d", comm_dtype_name(dt), count, x->world);
    CHECK(same_bits(got, want, count, es, what), "%s", what);
    free(in), free(want), free(got);
}

static void check_all_gather(rank_ctx *x, size_t count, comm_dtype dt) {
    const size_t es = dt_size(dt), bytes = count * es, W = (size_t)x->world;
    char *in = malloc(bytes), *want = malloc(bytes * W), *got = malloc(bytes * W);
    for (int r = 0; r < x->world; r++) fill_input(want + (size_t)r * bytes, r, count, dt);
    fill_input(in, x->rank, count, dt);
    char what[96];
    /* device, separate buffers */
    void *ds = x->be->ops->alloc(x->be, bytes), *dr = x->be->ops->alloc(x->be, bytes * W);
    x->be->ops->upload(x->be, ds, in, bytes);
    CHECK(comm_all_gather(x->nccl, dr, ds, count, dt) == LLMQ_OK, "all_gather: %s", x->nccl->err.msg);
    read_device(x, got, dr, count * W, dt);
    snprintf(what, sizeof what, "all_gather %s x %zu, device, world %d", comm_dtype_name(dt), count, x->world);
    CHECK(same_bits(got, want, count * W, es, what), "%s", what);
    /* device, in place: send is this rank's slot of recv */
    x->be->ops->free(x->be, dr);
    dr = x->be->ops->alloc(x->be, bytes * W);
    x->be->ops->upload(x->be, (char *)dr + (size_t)x->rank * bytes, in, bytes);
    CHECK(comm_all_gather(x->nccl, dr, (char *)dr + (size_t)x->rank * bytes, count, dt) == LLMQ_OK,
          "all_gather in place: %s", x->nccl->err.msg);
    read_device(x, got, dr, count * W, dt);
    CHECK(same_bits(got, want, count * W, es, "all_gather in place"), "all_gather in place, %zu", count);
    /* host memory on both sides */
    memset(got, 0x5a, bytes * W);
    CHECK(comm_all_gather(x->nccl, got, in, count, dt) == LLMQ_OK, "all_gather host: %s", x->nccl->err.msg);
    CHECK(same_bits(got, want, count * W, es, "all_gather host"), "all_gather host, %zu", count);
    x->be->ops->free(x->be, ds);
    x->be->ops->free(x->be, dr);
    free(in), free(want), free(got);
}

static void check_broadcast(rank_ctx *x, size_t count, comm_dtype dt) {
    const size_t es = dt_size(dt), bytes = count * es;
    char *want = malloc(bytes), *got = malloc(bytes);
    void *d = x->be->ops->alloc(x->be, bytes);
    for (int root = 0; root < x->world; root++) {
        fill_input(want, 100 + root, count, dt);
        /* device */
        if (x->rank == root) x->be->ops->upload(x->be, d, want, bytes);
        else fill_input(got, x->rank, count, dt), x->be->ops->upload(x->be, d, got, bytes);
        CHECK(comm_broadcast(x->nccl, d, bytes, root) == LLMQ_OK, "broadcast from %d: %s", root, x->nccl->err.msg);
        read_device(x, got, d, count, dt);
        CHECK(same_bits(got, want, count, es, "broadcast device"), "broadcast device from %d, %zu", root, count);
        /* host */
        if (x->rank == root) memcpy(got, want, bytes);
        else memset(got, 0xa5, bytes);
        CHECK(comm_broadcast(x->nccl, got, bytes, root) == LLMQ_OK, "broadcast host from %d: %s", root,
              x->nccl->err.msg);
        CHECK(same_bits(got, want, count, es, "broadcast host"), "broadcast host from %d, %zu", root, count);
    }
    x->be->ops->free(x->be, d);
    free(want), free(got);
}

typedef struct results_arg {
    comm_dtype dt; /* the activation type of the group's backends; i32 rides on the f32 backend */
    int big;       /* 1: also the all-reduce of a few MiB (seconds on the emulated device) */
} results_arg;

static void rank_results(rank_ctx *x) {
    const results_arg *a = x->arg;
    const comm_dtype dt = a->dt, dts[2] = {dt, COMM_I32};
    for (int k = 0; k < (dt == COMM_F32 ? 2 : 1); k++)
        for (size_t i = 0; i < N_COUNTS; i++) check_all_reduce(x, COUNTS[i], dts[k]);
    if (a->big) {
        /* sized at creation (comm_nccl_reserve), the large all-reduce allocates no device memory */
        const size_t big = BIG_BYTES / dt_size(dt);
        CHECK(comm_nccl_reserve(x->nccl, big, dt, big * dt_size(dt)) == LLMQ_OK, "reserve: %s", x->nccl->err.msg);
        size_t free0 = 0, free1 = 0, total = 0;
        x->be->ops->mem_info(x->be, &free0, &total);
        check_all_reduce(x, big, dt);
        x->be->ops->mem_info(x->be, &free1, &total);
        CHECK(free1 == free0, "the reserved all-reduce allocated %zd B", (ssize_t)(free0 - free1));
    }
    for (size_t i = 0; i < N_COUNTS; i++) {
        check_all_gather(x, COUNTS[i], dt);
        check_broadcast(x, COUNTS[i], dt);
    }
    CHECK(comm_barrier(x->nccl) == LLMQ_OK, "barrier: %s", x->nccl->err.msg);
    /* the communicator keeps working after all that */
    check_all_reduce(x, 5, dt);
}

static void results(int world, const char *dtype, comm_dtype dt, int big) {
    group_opts o = {world, dtype, 20000, -1, 0};
    results_arg a = {dt, big};
    assert_int_equal(run_group(&o, rank_results, &a), 0);
}

/* The large all-reduce once per world and per 16-bit type: the suite's time budget. */
static void test_results_w2(void **st) {
    (void)st;
    results(2, "f32", COMM_F32, 1);
    results(2, "f16", COMM_F16, 1);
    results(2, "bf16", COMM_BF16, 1);
}

static void test_results_w3(void **st) {
    (void)st;
    results(3, "f32", COMM_F32, 1);
    results(3, "bf16", COMM_BF16, 0);
}

static void test_results_w4(void **st) {
    (void)st;
    results(4, "f32", COMM_F32, 1);
    results(4, "f16", COMM_F16, 0);
}

/* ------------------------------------------------------------ failures */

#define FAIL_TIMEOUT_MS 4000 /* the deadline of the failure cases */
#define SLACK_MS 2500        /* past the deadline, on a loaded 2-core machine */

static void *kill_self_later(void *p) {
    sleep_ms(*(const int *)p);
    raise(SIGKILL);
    return NULL;
}

/* Rank 1 dies (SIGKILL) inside a collective, which the others enter after its death: each of them
 * fails within its deadline, and, on the emulated device, at once and naming rank 1. */
static void rank_killed(rank_ctx *x) {
    const size_t n = (size_t)1 << 18;
    float *d = x->be->ops->alloc(x->be, n * sizeof *d);
    CHECK(comm_all_reduce_sum(x->nccl, d, 1000, COMM_F32) == LLMQ_OK, "first all-reduce: %s", x->nccl->err.msg);
    if (x->rank == 1) {
        static const int after_ms = 200;
        pthread_t th;
        pthread_create(&th, NULL, kill_self_later, (void *)&after_ms);
        comm_all_reduce_sum(x->nccl, d, n, COMM_F32); /* waits for the others: dies in it */
        sleep_ms(60000);
        CHECK(0, "rank 1 outlived its SIGKILL");
        return;
    }
    sleep_ms(500);
    const double t0 = now_ms();
    llmq_status st = LLMQ_OK;
    for (int i = 0; i < 100 && st == LLMQ_OK; i++) st = comm_all_reduce_sum(x->nccl, d, n, COMM_F32);
    const double ms = now_ms() - t0;
    fprintf(stderr, "rank %d: after rank 1's death: %s (%.0f ms): %s\n", x->rank, llmq_status_name(st), ms,
            x->nccl->err.msg);
    CHECK(st != LLMQ_OK, "the collectives went on without rank 1");
    CHECK(ms < FAIL_TIMEOUT_MS + SLACK_MS, "failed after %.0f ms (deadline %d ms)", ms, FAIL_TIMEOUT_MS);
#ifdef LLMQ_CUDA_EMU
    CHECK(strstr(x->nccl->err.msg, "rank 1") != NULL, "the message names the dead rank: %s", x->nccl->err.msg);
    CHECK(ms < FAIL_TIMEOUT_MS, "the emulated NCCL sees a dead rank before the deadline (%.0f ms)", ms);
#endif
    /* failure is final */
    CHECK(comm_barrier(x->nccl) != LLMQ_OK, "barrier after the failure");
    x->be->ops->free(x->be, d);
}

static void test_rank_killed(void **st) {
    (void)st;
    for (int world = 2; world <= 3; world++) {
        group_opts o = {world, "f32", FAIL_TIMEOUT_MS, 1, 0};
        assert_int_equal(run_group(&o, rank_killed, NULL), 0);
    }
}

#define ABORT_TIMEOUT_MS 20000 /* far beyond the abort, so that only the abort can end the wait */

typedef struct abort_arg {
    llmq_comm *c;
    int after_ms;
} abort_arg;

static void *abort_later(void *p) {
    abort_arg *a = p;
    sleep_ms(a->after_ms);
    comm_abort(a->c, "test abort from another thread");
    return NULL;
}

/* Rank 0 waits in a collective that rank 1 joins only much later; another thread of rank 0 aborts
 * the communicator: the collective returns promptly, with the reason.  arg: 1 = the result goes to
 * host memory (the path whose copy blocked behind the collective). */
static void rank_abort(rank_ctx *x) {
    const int host = *(const int *)x->arg;
    const size_t n = 4099;
    float *hbuf = calloc(n, sizeof *hbuf);
    float *d = x->be->ops->alloc(x->be, n * sizeof *d);
    if (x->rank == 0) {
        pthread_t th;
        abort_arg a = {x->nccl, 300};
        pthread_create(&th, NULL, abort_later, &a);
        const double t0 = now_ms();
        llmq_status st = host ? comm_all_reduce_sum(x->nccl, hbuf, n, COMM_F32)
                              : comm_all_reduce_sum(x->nccl, d, n, COMM_F32);
        const double ms = now_ms() - t0;
        pthread_join(th, NULL);
        fprintf(stderr, "rank 0: aborted %s collective: %s after %.0f ms: %s\n", host ? "host" : "device",
                llmq_status_name(st), ms, x->nccl->err.msg);
        CHECK(st == LLMQ_ERR_IO, "aborted collective: %s", llmq_status_name(st));
        CHECK(strstr(x->nccl->err.msg, "test abort from another thread") != NULL, "reason: %s", x->nccl->err.msg);
        CHECK(ms < 300 + 1500, "the abort released the collective after %.0f ms", ms);
        CHECK(comm_barrier(x->nccl) == LLMQ_ERR_IO, "an op after the abort");
        set_flag(0);
    } else {
        CHECK(wait_flag(0, 10000), "rank 0 never finished"); /* past rank 0's abort, before the deadline */
        const double t0 = now_ms();
        llmq_status st = comm_all_reduce_sum(x->nccl, d, n, COMM_F32);
        const double ms = now_ms() - t0;
        CHECK(st != LLMQ_OK, "a collective with the aborted rank 0 succeeded");
        CHECK(ms < ABORT_TIMEOUT_MS + SLACK_MS, "failed after %.0f ms (deadline %d ms)", ms, ABORT_TIMEOUT_MS);
#ifdef LLMQ_CUDA_EMU
        CHECK(st == LLMQ_ERR_IO && strstr(x->nccl->err.msg, "rank 0") != NULL && ms < 1000,
              "the group learns of rank 0's abort at once: %s after %.0f ms: %s", llmq_status_name(st), ms,
              x->nccl->err.msg);
#endif
    }
    x->be->ops->free(x->be, d);
    free(hbuf);
}

static void test_abort_from_another_thread(void **st) {
    (void)st;
    for (int host = 0; host <= 1; host++) {
        group_opts o = {2, "f32", ABORT_TIMEOUT_MS, -1, 0};
        assert_int_equal(run_group(&o, rank_abort, &host), 0);
    }
}

/* Rank 0's collective has no peer for longer than its deadline: LLMQ_ERR_TIMEOUT at the deadline,
 * also when the result goes to host memory (which used to wait for the peer past the deadline). */
static void rank_absent(rank_ctx *x) {
    const int host = *(const int *)x->arg;
    const size_t n = 1000;
    float *hbuf = calloc(n, sizeof *hbuf);
    float *d = x->be->ops->alloc(x->be, n * sizeof *d);
    if (x->rank == 0) {
        const double t0 = now_ms();
        llmq_status st = host ? comm_all_reduce_sum(x->nccl, hbuf, n, COMM_F32)
                              : comm_all_reduce_sum(x->nccl, d, n, COMM_F32);
        const double ms = now_ms() - t0;
        fprintf(stderr, "rank 0: lone %s collective: %s after %.0f ms: %s\n", host ? "host" : "device",
                llmq_status_name(st), ms, x->nccl->err.msg);
        CHECK(st == LLMQ_ERR_TIMEOUT, "lone collective: %s: %s", llmq_status_name(st), x->nccl->err.msg);
        CHECK(ms >= 1000 - 50 && ms < 1000 + SLACK_MS, "timed out after %.0f ms (deadline 1000)", ms);
        set_flag(0);
    } else {
        /* absent and alive until rank 0 is done (the old code returned only when this rank left) */
        CHECK(wait_flag(0, 1000 + SLACK_MS + 5000), "rank 0 never finished");
    }
    x->be->ops->free(x->be, d);
    free(hbuf);
}

static void test_deadline_without_peer(void **st) {
    (void)st;
    for (int host = 0; host <= 1; host++) {
        group_opts o = {2, "f32", 1000, -1, 0};
        assert_int_equal(run_group(&o, rank_absent, &host), 0);
    }
}

/* Ranks that call different collectives (or counts) fail, within the deadline, saying so. */
static void rank_mismatch(rank_ctx *x) {
    const int kind = *(const int *)x->arg;
    float *d = x->be->ops->alloc(x->be, 4096 * sizeof *d);
    const double t0 = now_ms();
    llmq_status st;
    if (kind == 0) /* broadcast against all_gather */
        st = x->rank == 0 ? comm_broadcast(x->nccl, d, 64, 0) : comm_all_gather(x->nccl, d, d + 2048, 16, COMM_F32);
    else /* all_reduce_sum of 1000 against 1001 elements */
        st = comm_all_reduce_sum(x->nccl, d, x->rank == 0 ? 1000 : 1001, COMM_F32);
    /* a rank whose part could complete alone learns of the mismatch at its next collective */
    if (st == LLMQ_OK) st = comm_barrier(x->nccl);
    const double ms = now_ms() - t0;
    fprintf(stderr, "rank %d: mismatch %d: %s after %.0f ms: %s\n", x->rank, kind, llmq_status_name(st), ms,
            x->nccl->err.msg);
    CHECK(st != LLMQ_OK, "mismatched collectives succeeded");
    CHECK(ms < FAIL_TIMEOUT_MS + SLACK_MS, "failed after %.0f ms (deadline %d ms)", ms, FAIL_TIMEOUT_MS);
#ifdef LLMQ_CUDA_EMU
    CHECK(strstr(x->nccl->err.msg, "different collectives") != NULL, "the message says what happened: %s",
          x->nccl->err.msg);
#endif
    x->be->ops->free(x->be, d);
}

static void test_mismatched_collectives(void **st) {
    (void)st;
#ifndef LLMQ_CUDA_EMU
    skip(); /* a GPU's NCCL may complete mismatched calls with garbage: only the emulator checks */
#endif
    for (int kind = 0; kind <= 1; kind++) {
        group_opts o = {2, "f32", FAIL_TIMEOUT_MS, -1, 0};
        assert_int_equal(run_group(&o, rank_mismatch, &kind), 0);
    }
}

/* An op that fails inside its NCCL group (rank 1 aborted the communicator, so the ncclSend is
 * refused) must still close the group: a group left open on the thread swallows every later call,
 * so a new communicator formed on it would never send.  Both ranks then form a new one and sum. */
static void rank_group_closed(rank_ctx *x) {
    const size_t n = 1001;
    float *d = x->be->ops->alloc(x->be, n * sizeof *d);
    /* every rank's NCCL init has returned (else rank 0 could see the abort as a failed init) */
    CHECK(comm_barrier(x->host) == LLMQ_OK, "host barrier: %s", x->host->err.msg);
    if (x->rank == 1) {
        comm_abort(x->nccl, "rank 1 leaves");
        CHECK(comm_barrier(x->nccl) == LLMQ_ERR_IO, "barrier after the abort");
    }
    CHECK(comm_barrier(x->host) == LLMQ_OK, "host barrier: %s", x->host->err.msg);
    if (x->rank == 0) {
        llmq_status st = comm_all_reduce_sum(x->nccl, d, n, COMM_F32);
        CHECK(st != LLMQ_OK, "all_reduce_sum with an aborted peer succeeded");
    }
    CHECK(comm_barrier(x->host) == LLMQ_OK, "host barrier: %s", x->host->err.msg);
    llmq_err err = {0};
    llmq_comm *again = x->be->ops->group_comm(x->be, x->host, 0, &err);
    CHECK(again != NULL, "a new NCCL group: %s", err.msg);
    if (!again) return;
    float *in = malloc(n * sizeof *in), *want = malloc(n * sizeof *want);
    fill_input(in, x->rank, n, COMM_F32);
    expected_sum(want, x->world, n, COMM_F32);
    CHECK(comm_all_reduce_sum(again, in, n, COMM_F32) == LLMQ_OK, "all_reduce_sum on the new group: %s",
          again->err.msg);
    CHECK(same_bits(in, want, n, 4, "new group"), "the new group's sum");
    comm_destroy(again);
    x->be->ops->free(x->be, d);
    free(in), free(want);
}

static void test_group_closed_after_error(void **st) {
    (void)st;
    group_opts o = {2, "f32", FAIL_TIMEOUT_MS, -1, 0};
    assert_int_equal(run_group(&o, rank_group_closed, NULL), 0);
}

/* The last rank forms the group 2 s after the others, with a 1 s per-collective deadline (ranks
 * that finish loading apart): the start-up deadline holds the group together; the collectives
 * then have their own. */
static void rank_late(rank_ctx *x) {
    const size_t n = 4099;
    float *in = malloc(n * sizeof *in), *want = malloc(n * sizeof *want);
    fill_input(in, x->rank, n, COMM_F32);
    expected_sum(want, x->world, n, COMM_F32);
    CHECK(comm_all_reduce_sum(x->nccl, in, n, COMM_F32) == LLMQ_OK, "all_reduce_sum: %s", x->nccl->err.msg);
    CHECK(same_bits(in, want, n, 4, "late group"), "the late group's sum");
    free(in), free(want);
}

static void test_late_rank_joins(void **st) {
    (void)st;
    group_opts o = {3, "f32", 1000, -1, 2000};
    assert_int_equal(run_group(&o, rank_late, NULL), 0);
}

#ifdef LLMQ_CUDA_EMU
long llmq_emu_report_count(void); /* kernels/cuda/emu/emu.h (C++) */

/* An all_gather into a device buffer one rank's share too small: the emulated NCCL reports the
 * out-of-bounds write (a GPU would fault) and the op fails. */
static void rank_oob(rank_ctx *x) {
    const size_t n = 256;
    float *send = x->be->ops->alloc(x->be, n * sizeof *send);
    float *recv = x->be->ops->alloc(x->be, (size_t)(x->world - 1) * n * sizeof *recv);
    setenv("LLMQ_EMU_FATAL", "0", 1); /* this report is the point */
    const long before = llmq_emu_report_count();
    llmq_status st = comm_all_gather(x->nccl, recv, send, n, COMM_F32);
    fprintf(stderr, "rank %d: all_gather into a short buffer: %s: %s\n", x->rank, llmq_status_name(st),
            x->nccl->err.msg);
    CHECK(st != LLMQ_OK, "all_gather into a short buffer succeeded");
    /* the rank that got there first reports; a later one may be refused by its abort, which says why */
    const int reported = llmq_emu_report_count() > before;
    if (reported) set_flag(1);
    CHECK(reported || strstr(x->nccl->err.msg, "past the end"), "neither a report nor the peer's: %s",
          x->nccl->err.msg);
    /* the device has faulted (a sticky error, as on a GPU): nothing more runs on it */
}

static void test_out_of_bounds_buffer(void **st) {
    (void)st;
    group_opts o = {2, "f32", FAIL_TIMEOUT_MS, -1, 0};
    assert_int_equal(run_group(&o, rank_oob, NULL), 0);
    assert_true(g_flags[1]); /* some rank reported it */
}
#endif

int main(void) {
    g_flags = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(g_flags != MAP_FAILED);
    /* bf16 needs sm_80+: the emulated A10G (the default T4 profile has none) */
    setenv("LLMQ_EMU_DEVICE", getenv("LLMQ_EMU_DEVICE") ? getenv("LLMQ_EMU_DEVICE") : "a10g", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_results_w2),
        cmocka_unit_test(test_results_w3),
        cmocka_unit_test(test_results_w4),
        cmocka_unit_test(test_rank_killed),
        cmocka_unit_test(test_abort_from_another_thread),
        cmocka_unit_test(test_deadline_without_peer),
        cmocka_unit_test(test_mismatched_collectives),
        cmocka_unit_test(test_group_closed_after_error),
        cmocka_unit_test(test_late_rank_joins),
#ifdef LLMQ_CUDA_EMU
        cmocka_unit_test(test_out_of_bounds_buffer),
#endif
    };
    return cmocka_run_group_tests_name("emu_nccl", tests, NULL, NULL);
}
