/*
 * test_emu_runtime.cu — the emulated device's cudart subset (kernels/cuda/emu/emu_runtime.cc):
 * device profiles, guarded device memory (alignment, accounting, overruns and uses after free that
 * fault, the "written" shadow), streams that really run asynchronously and in order, the legacy
 * stream's implicit synchronisation, events, launch configuration errors (not sticky) against
 * asynchronous errors (sticky), and stream capture: recorded ops replayed with new data, graphs
 * launched several times, and the calls CUDA refuses during a capture.
 *
 * Built by `make cuda-emu` like a kernel file (emu.mk: tests/gpu/test_emu_*.cu).  Expected values
 * come from the host (the NVIDIA data sheets for the profiles, plain loops for the data).  What a
 * process can do only once (a sticky error, the profile choice, exit with busy streams) runs in a
 * child: this binary again with --child=<what>.  Faults are provoked in forked children.
 */
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/emu/emu_internal.hh"

extern "C" {
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
}

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <condition_variable>
#include <mutex>
#include <thread>

extern char **environ;

#define MEM_MB 256 /* this process's device memory (LLMQ_EMU_MEM_MB, set in main) */

#define CU(stmt) assert_int_equal((int)(stmt), (int)cudaSuccess)

/* ------------------------------------------------------------ helpers */

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* An op that holds its stream until the host opens it: while it waits, everything after it on the
 * stream is pending, so a test can see what ran and what did not. */
struct gate {
    std::mutex m;
    std::condition_variable cv;
    bool open = false;
};

static void gate_close_on(gate *g, cudaStream_t s) {
    assert_int_equal(emu::enqueue(s, "test gate", [g] {
                         std::unique_lock<std::mutex> lk(g->m);
                         g->cv.wait(lk, [g] { return g->open; });
                     }),
                     cudaSuccess);
}

static void gate_open(gate *g) {
    std::lock_guard<std::mutex> lk(g->m);
    g->open = true;
    g->cv.notify_all();
}

/* 1 when writing from p to a pipe fails with EFAULT: the page is inaccessible (no signal needed,
 * so it also works under ASan). */
static int inaccessible(const void *p) {
    int fd[2];
    if (pipe(fd)) return -1;
    const ssize_t n = write(fd[1], p, 1);
    const int e = errno;
    close(fd[0]);
    close(fd[1]);
    return n < 0 && e == EFAULT;
}

/* Touches p in a forked child; returns 1 when the child died of the fault (under ASan: ASan's SEGV
 * report ends it with exit code 1), 0 when it survived the access. */
static int access_faults(volatile unsigned char *p, int write_it) {
    fflush(NULL);
    const pid_t pid = fork();
    assert_true(pid >= 0);
    if (!pid) {
        const int null = open("/dev/null", O_WRONLY);
        if (null >= 0) dup2(null, 2); /* ASan's report is expected noise */
        signal(SIGSEGV, SIG_DFL);      /* cmocka's handler would carry on with the tests in the child */
        signal(SIGBUS, SIG_DFL);
        if (write_it) p[0] = 1;
        else (void)p[0];
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (WIFSIGNALED(status)) return WTERMSIG(status) == SIGSEGV || WTERMSIG(status) == SIGBUS;
#ifdef __SANITIZE_ADDRESS__
    return WIFEXITED(status) && WEXITSTATUS(status) != 0;
#else
    return 0;
#endif
}

typedef struct {
    char text[16384];
} captured;

static const char *self_path;

/* Runs this binary with --child=<what> and the environment changed by set ("NAME=value") and unset
 * (names), its stderr into c; returns the wait status. */
static int run_child(const char *what, const char *const *set, const char *const *unset, captured *c) {
    char arg[64];
    snprintf(arg, sizeof arg, "--child=%s", what);
    char *argv[] = {(char *)self_path, arg, NULL};
    char *envp[512];
    int n = 0;
    for (char **e = environ; *e && n < 400; e++) {
        int drop = 0;
        for (const char *const *u = unset; u && *u; u++)
            if (!strncmp(*e, *u, strlen(*u)) && (*e)[strlen(*u)] == '=') drop = 1;
        for (const char *const *s = set; s && *s; s++)
            if (!strncmp(*e, *s, (size_t)(strchr(*s, '=') - *s + 1))) drop = 1;
        if (!drop) envp[n++] = *e;
    }
    for (const char *const *s = set; s && *s; s++) envp[n++] = (char *)*s;
    envp[n] = NULL;
    FILE *f = tmpfile();
    assert_non_null(f);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fileno(f), 2);
    pid_t pid;
    const int rc = posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    assert_int_equal(rc, 0);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    rewind(f);
    const size_t got = fread(c->text, 1, sizeof c->text - 1, f);
    c->text[got] = 0;
    fclose(f);
    if (got) fprintf(stderr, "# child %s said:\n%s", what, c->text);
    return status;
}

static int count_of(const char *hay, const char *needle) {
    int k = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle)) k++;
    return k;
}

/* ------------------------------------------------------------ kernels */

__global__ void fill_kernel(float *out, float v, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = v;
}

__global__ void scale_kernel(float *out, const float *in, float s, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i] * s + (float)i;
}

__global__ void add_one_kernel(float *x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += 1.0f;
}

/* ------------------------------------------------------------ profiles (children) */

/* From NVIDIA's data sheets: what a program sees on the real card. */
struct profile_want {
    const char *key;
    const char *gpu; /* part of the name */
    int major, minor, sms;
    size_t mem_mib;
    size_t smem_optin;
    double bw_gbs;
};
static const profile_want k_want[] = {
    {"t4", "T4", 7, 5, 40, 15360, 64 * 1024, 320.0},
    {"a10g", "A10G", 8, 6, 80, 23028, 99 * 1024, 600.0},
    {"h100", "H100", 9, 0, 132, 81559, 227 * 1024, 3350.0},
};

#define CHILD_CHECK(cond)                                                                                      \
    do {                                                                                                       \
        if (!(cond)) {                                                                                         \
            fprintf(stderr, "child check failed at line %d: %s\n", __LINE__, #cond);                           \
            return 1;                                                                                          \
        }                                                                                                      \
    } while (0)

static int child_profile(void) {
    const char *key = getenv("LLMQ_EMU_DEVICE");
    const profile_want *w = NULL;
    for (const profile_want &x : k_want)
        if (key && !strcmp(x.key, key)) w = &x;
    CHILD_CHECK(w);
    int count = 0;
    CHILD_CHECK(cudaGetDeviceCount(&count) == cudaSuccess && count == 8); /* an 8-GPU node by default */
    CHILD_CHECK(cudaSetDevice(8) == cudaErrorInvalidDevice);
    CHILD_CHECK(cudaGetLastError() == cudaErrorInvalidDevice && cudaGetLastError() == cudaSuccess);
    CHILD_CHECK(cudaSetDevice(7) == cudaSuccess);
    cudaDeviceProp p;
    CHILD_CHECK(cudaGetDeviceProperties(&p, 7) == cudaSuccess);
    CHILD_CHECK(strstr(p.name, "Emulated") && strstr(p.name, "llmq-emu") && strstr(p.name, w->gpu));
    CHILD_CHECK(p.major == w->major && p.minor == w->minor && p.multiProcessorCount == w->sms);
    CHILD_CHECK(p.totalGlobalMem == w->mem_mib << 20);
    CHILD_CHECK(p.sharedMemPerBlock == 48 * 1024 && p.sharedMemPerBlockOptin == w->smem_optin);
    CHILD_CHECK(p.maxThreadsPerBlock == 1024 && p.warpSize == 32);
    int v = 0;
    CHILD_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, 7) == cudaSuccess &&
                (size_t)v == w->smem_optin);
    int clock_khz = 0, bus = 0;
    CHILD_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, 7) == cudaSuccess);
    CHILD_CHECK(cudaDeviceGetAttribute(&bus, cudaDevAttrGlobalMemoryBusWidth, 7) == cudaSuccess);
    const double bw = 2.0 * clock_khz * 1e3 * (bus / 8.0) / 1e9; /* as backend_cuda.cu computes it */
    CHILD_CHECK(bw > w->bw_gbs * 0.99 && bw < w->bw_gbs * 1.01);
    size_t fr = 0, tot = 0;
    CHILD_CHECK(cudaMemGetInfo(&fr, &tot) == cudaSuccess && tot == w->mem_mib << 20 && fr == tot);
    int rt = 0, drv = 0;
    CHILD_CHECK(cudaRuntimeGetVersion(&rt) == cudaSuccess && rt >= 13000);
    CHILD_CHECK(cudaDriverGetVersion(&drv) == cudaSuccess && drv >= rt);
    return 0;
}

static int child_devices(void) {
    int count = 0;
    CHILD_CHECK(cudaGetDeviceCount(&count) == cudaSuccess && count == 2);
    CHILD_CHECK(cudaSetDevice(2) == cudaErrorInvalidDevice);
    return 0;
}

static void test_profiles(void **st) {
    (void)st;
    static const char *const unset[] = {"LLMQ_EMU_MEM_MB", "LLMQ_EMU_DEVICES", NULL};
    for (const profile_want &w : k_want) {
        char dev[64];
        snprintf(dev, sizeof dev, "LLMQ_EMU_DEVICE=%s", w.key);
        const char *set[] = {dev, NULL};
        captured c;
        const int status = run_child("profile", set, unset, &c);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
    }
    static const char *const set2[] = {"LLMQ_EMU_DEVICES=2", NULL};
    captured c;
    const int status = run_child("devices", set2, NULL, &c);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* ------------------------------------------------------------ device memory */

static void test_alloc_accounting(void **st) {
    (void)st;
    size_t free0 = 0, total = 0;
    CU(cudaMemGetInfo(&free0, &total));
    assert_true(total == (size_t)MEM_MB << 20);
    const size_t sizes[] = {1, 255, 256, 1000, 4096, 5000, 1 << 20};
    void *p[7];
    size_t fr_prev = free0;
    for (int i = 0; i < 7; i++) {
        CU(cudaMalloc(&p[i], sizes[i]));
        assert_non_null(p[i]);
        assert_int_equal((uintptr_t)p[i] % 256, 0);
        assert_true(emu::is_device(p[i]));
        assert_true(emu::device_range_ok(p[i], sizes[i], NULL));
        size_t fr = 0;
        CU(cudaMemGetInfo(&fr, &total));
        assert_true(fr + sizes[i] <= fr_prev); /* at least the bytes asked for are counted */
        fr_prev = fr;
        for (int j = 0; j < i; j++) { /* disjoint from every earlier allocation */
            const uintptr_t a = (uintptr_t)p[i], b = (uintptr_t)p[j];
            assert_true(a + sizes[i] <= b || b + sizes[j] <= a);
        }
    }
    for (int i = 0; i < 7; i++) CU(cudaFree(p[i]));
    size_t fr = 0;
    CU(cudaMemGetInfo(&fr, &total));
    assert_true(fr == free0);

    /* Out of memory: the error is reported once, not sticky; the next allocation succeeds. */
    void *big = (void *)1;
    assert_int_equal(cudaMalloc(&big, total + 1), cudaErrorMemoryAllocation);
    assert_null(big);
    assert_int_equal(cudaGetLastError(), cudaErrorMemoryAllocation);
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    void *chunks[8];
    int n = 0;
    while (n < 8 && cudaMalloc(&chunks[n], (size_t)64 << 20) == cudaSuccess) n++;
    assert_int_equal(n, MEM_MB / 64); /* the memory is counted, not the address space */
    assert_int_equal(cudaGetLastError(), cudaErrorMemoryAllocation);
    for (int i = 0; i < n; i++) CU(cudaFree(chunks[i]));
    void *q = NULL;
    CU(cudaMalloc(&q, 1024));
    CU(cudaFree(q));
    assert_int_equal(cudaMalloc(&q, 0), cudaSuccess); /* as CUDA: no allocation, NULL */
    assert_null(q);
}

static void test_overrun_faults(void **st) {
    (void)st;
    unsigned char *p = NULL;
    CU(cudaMalloc((void **)&p, 1000));
    const char *why = NULL;
    assert_true(emu::device_range_ok(p, 1000, &why));
    assert_false(emu::device_range_ok(p, 1001, &why));
    assert_non_null(strstr(why, "past the end"));
    assert_false(emu::device_range_ok(p + 1000, 4, &why));
    /* The allocation ends at its 256-byte rounding, where the inaccessible gap page begins. */
    assert_int_equal(inaccessible(p + 999), 0);
    assert_int_equal(inaccessible(p + 1024), 1);
    assert_int_equal(access_faults(p + 1023, 1), 0); /* the control: the last rounded byte is fine */
    assert_int_equal(access_faults(p + 1024, 1), 1);
    assert_int_equal(access_faults(p + 1024, 0), 1);
    assert_false(emu::device_range_ok((const void *)&why, 1, &why)); /* host memory */
    assert_non_null(strstr(why, "host"));
    CU(cudaFree(p));
}

static void test_use_after_free(void **st) {
    (void)st;
    unsigned char *p = NULL, *q = NULL;
    CU(cudaMalloc((void **)&p, 8192));
    CU(cudaMemset(p, 7, 8192));
    assert_int_equal(access_faults(p, 0), 0);
    CU(cudaFree(p));
    const char *why = NULL;
    assert_false(emu::device_range_ok(p, 1, &why));
    assert_non_null(strstr(why, "freed"));
    assert_int_equal(inaccessible(p), 1);
    assert_int_equal(access_faults(p, 0), 1);
    assert_int_equal(access_faults(p + 4096, 1), 1);
    CU(cudaMalloc((void **)&q, 8192)); /* quarantine: the freed addresses are not handed out again */
    assert_true(q + 8192 <= p || p + 8192 <= q);
    assert_int_equal(cudaFree(p), cudaErrorInvalidValue); /* a double free, not sticky */
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidValue);
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    assert_int_equal(cudaFree(q + 256), cudaErrorInvalidValue); /* not the start of an allocation */
    (void)cudaGetLastError();
    CU(cudaFree(q));
}

static void test_written_shadow_and_poison(void **st) {
    (void)st;
    unsigned char *p = NULL, *q = NULL;
    CU(cudaMalloc((void **)&p, 4096));
    CU(cudaMalloc((void **)&q, 4096));
    unsigned char h[4096];
    CU(cudaMemcpy(h, p, 4096, cudaMemcpyDeviceToHost));
    for (int i = 0; i < 4096; i++) assert_int_equal(h[i], 0xff); /* poison: NaN in every float type */
    assert_false(emu::device_written(p, 1));
    for (int i = 0; i < 1024; i++) h[i] = (unsigned char)i;
    CU(cudaMemcpy(p, h, 1024, cudaMemcpyHostToDevice));
    CU(cudaMemset(p + 2048, 0, 1024));
    assert_true(emu::device_written(p, 1024));
    assert_false(emu::device_written(p + 1024, 1));
    assert_false(emu::device_written(p + 1000, 100)); /* straddles the written end */
    assert_true(emu::device_written(p + 2048, 1024));
    assert_false(emu::device_written(p + 3072, 1024));
    /* A device-to-device copy carries the source's state: unwritten bytes stay unwritten. */
    CU(cudaMemcpy(q, p, 4096, cudaMemcpyDeviceToDevice));
    assert_true(emu::device_written(q, 1024));
    assert_false(emu::device_written(q + 1024, 1));
    assert_true(emu::device_written(q + 2048, 1024));
    emu::device_mark_written(p + 1024, 1024);
    assert_true(emu::device_written(p, 3072));
    CU(cudaFree(p));
    CU(cudaFree(q));
    /* A new allocation starts unwritten, wherever it lands. */
    CU(cudaMalloc((void **)&p, 4096));
    assert_false(emu::device_written(p, 1));
    CU(cudaFree(p));
}

/* ------------------------------------------------------------ streams and events */

static void test_stream_order(void **st) {
    (void)st;
    enum { N = 4096 };
    cudaStream_t s;
    CU(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    float *d = NULL, *e = NULL;
    CU(cudaMalloc((void **)&d, N * sizeof(float)));
    CU(cudaMalloc((void **)&e, N * sizeof(float)));
    static float in[N], out[N], want[N];
    for (int i = 0; i < N; i++) in[i] = (float)i * 0.5f;
    CU(cudaMemcpyAsync(d, in, sizeof in, cudaMemcpyHostToDevice, s));
    CU(cudaMemsetAsync(d + 100, 0, 100 * sizeof(float), s));
    CU(cudaMemcpyAsync(e, d, sizeof in, cudaMemcpyDeviceToDevice, s));
    CU(cudaMemcpy2DAsync(e + 1000, 8 * sizeof(float), in, 16 * sizeof(float), 4 * sizeof(float), 10,
                         cudaMemcpyHostToDevice, s));
    CU(cudaMemcpyAsync(out, e, sizeof out, cudaMemcpyDeviceToHost, s));
    CU(cudaStreamSynchronize(s));
    for (int i = 0; i < N; i++) want[i] = (float)i * 0.5f;
    for (int i = 100; i < 200; i++) want[i] = 0.0f;
    for (int r = 0; r < 10; r++)
        for (int c = 0; c < 4; c++) want[1000 + r * 8 + c] = in[r * 16 + c];
    assert_memory_equal(out, want, sizeof want);
    CU(cudaFree(d));
    CU(cudaFree(e));
    CU(cudaStreamDestroy(s));
}

/* Ops run asynchronously: while a gate holds the stream, what follows it is pending (the event and
 * the stream say so), and a pageable source may be reused at once. */
static void test_async_really(void **st) {
    (void)st;
    cudaStream_t s;
    CU(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudaEvent_t ev;
    CU(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    assert_int_equal(cudaEventQuery(ev), cudaSuccess); /* never recorded: complete */
    int *d = NULL;
    CU(cudaMalloc((void **)&d, 64 * sizeof(int)));
    int buf[64], out[64];
    for (int i = 0; i < 64; i++) buf[i] = i * 3;
    gate g;
    gate_close_on(&g, s);
    CU(cudaMemcpyAsync(d, buf, sizeof buf, cudaMemcpyHostToDevice, s));
    for (int i = 0; i < 64; i++) buf[i] = -1; /* the copy took its source at the call */
    CU(cudaEventRecord(ev, s));
    usleep(20000);
    assert_int_equal(cudaEventQuery(ev), cudaErrorNotReady);
    assert_int_equal(cudaStreamQuery(s), cudaErrorNotReady);
    assert_int_equal(cudaGetLastError(), cudaSuccess); /* not-ready is a status, not an error */
    gate_open(&g);
    CU(cudaEventSynchronize(ev));
    assert_int_equal(cudaEventQuery(ev), cudaSuccess);
    CU(cudaMemcpyAsync(out, d, sizeof out, cudaMemcpyDeviceToHost, s));
    for (int i = 0; i < 64; i++) assert_int_equal(out[i], i * 3);
    CU(cudaStreamSynchronize(s));
    assert_int_equal(cudaStreamQuery(s), cudaSuccess);
    CU(cudaEventDestroy(ev));
    CU(cudaFree(d));
    CU(cudaStreamDestroy(s));
}

/* cudaStreamDestroy returns at once; the stream's work still completes, and the device's
 * synchronisation waits for it. */
static void test_destroy_busy_stream(void **st) {
    (void)st;
    cudaStream_t s;
    CU(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    unsigned char *d = NULL;
    CU(cudaMalloc((void **)&d, 256));
    gate g;
    gate_close_on(&g, s);
    CU(cudaMemsetAsync(d, 0x42, 256, s));
    CU(cudaStreamDestroy(s));
    assert_int_equal(cudaStreamQuery(s), cudaErrorInvalidResourceHandle);
    (void)cudaGetLastError();
    std::thread opener([&g] {
        usleep(30000);
        gate_open(&g);
    });
    CU(cudaDeviceSynchronize());
    unsigned char h[256]; /* stream 0 does not wait for a non-blocking stream: the memset is done */
    CU(cudaMemcpy(h, d, 256, cudaMemcpyDeviceToHost));
    opener.join();
    for (int i = 0; i < 256; i++) assert_int_equal(h[i], 0x42);
    CU(cudaFree(d));
}

/* A copy to pageable host memory returns only once done, with no synchronisation (CUDA documents it). */
static void test_d2h_pageable_waits(void **st) {
    (void)st;
    cudaStream_t s;
    CU(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    int *d = NULL;
    CU(cudaMalloc((void **)&d, 16 * sizeof(int)));
    CU(cudaMemsetAsync(d, 0x11, 16 * sizeof(int), s));
    gate g;
    gate_close_on(&g, s);
    std::thread opener([&g] {
        usleep(60000);
        gate_open(&g);
    });
    int out[16] = {0};
    const double t0 = now_ms();
    CU(cudaMemcpyAsync(out, d, sizeof out, cudaMemcpyDeviceToHost, s));
    const double waited = now_ms() - t0;
    for (int i = 0; i < 16; i++) assert_int_equal(out[i], 0x11111111);
    assert_true(waited >= 50.0);
    opener.join();
    CU(cudaFree(d));
    CU(cudaStreamDestroy(s));
}

static void test_events_elapsed(void **st) {
    (void)st;
    cudaStream_t s;
    CU(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudaEvent_t a, b, nt;
    CU(cudaEventCreate(&a));
    CU(cudaEventCreate(&b));
    CU(cudaEventCreateWithFlags(&nt, cudaEventDisableTiming));
    float ms = -1.0f;
    assert_int_equal(cudaEventElapsedTime(&ms, a, b), cudaErrorInvalidResourceHandle); /* never recorded */
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidResourceHandle);
    CU(cudaEventRecord(a, s));
    CU(emu::enqueue(s, "sleep 40 ms", [] { usleep(40000); }));
    CU(cudaEventRecord(b, s));
    CU(cudaEventRecord(nt, s));
    CU(cudaEventSynchronize(b));
    CU(cudaEventElapsedTime(&ms, a, b));
    assert_true(ms >= 35.0f && ms < 5000.0f);
    CU(cudaEventElapsedTime(&ms, b, a));
    assert_true(ms <= -35.0f);
    CU(cudaEventSynchronize(nt));
    assert_int_equal(cudaEventElapsedTime(&ms, a, nt), cudaErrorInvalidResourceHandle);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidResourceHandle);
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    CU(cudaEventDestroy(a));
    CU(cudaEventDestroy(b));
    CU(cudaEventDestroy(nt));
    assert_int_equal(cudaEventDestroy(a), cudaErrorInvalidResourceHandle);
    (void)cudaGetLastError();
    CU(cudaStreamDestroy(s));
}

/* Polls an event for up to ms milliseconds; returns its last status. */
static cudaError_t event_within(cudaEvent_t ev, double ms) {
    const double t0 = now_ms();
    cudaError_t e;
    while ((e = cudaEventQuery(ev)) == cudaErrorNotReady && now_ms() - t0 < ms) usleep(1000);
    return e;
}

/* The legacy stream 0 and a blocking stream wait for each other's earlier work; a non-blocking
 * stream waits for neither. */
static void test_legacy_stream(void **st) {
    (void)st;
    cudaStream_t blocking, nonblocking;
    CU(cudaStreamCreate(&blocking));
    CU(cudaStreamCreateWithFlags(&nonblocking, cudaStreamNonBlocking));
    cudaEvent_t eb, en, e0;
    CU(cudaEventCreate(&eb));
    CU(cudaEventCreate(&en));
    CU(cudaEventCreate(&e0));

    gate g0;
    gate_close_on(&g0, 0);
    CU(cudaEventRecord(eb, blocking));
    CU(cudaEventRecord(en, nonblocking));
    assert_int_equal(event_within(en, 2000), cudaSuccess);
    usleep(20000);
    assert_int_equal(cudaEventQuery(eb), cudaErrorNotReady); /* behind stream 0's gate */
    gate_open(&g0);
    assert_int_equal(event_within(eb, 2000), cudaSuccess);

    gate gb;
    gate_close_on(&gb, blocking);
    CU(cudaEventRecord(e0, 0));
    CU(cudaEventRecord(en, nonblocking));
    assert_int_equal(event_within(en, 2000), cudaSuccess);
    usleep(20000);
    assert_int_equal(cudaEventQuery(e0), cudaErrorNotReady); /* stream 0 waits for the blocking stream */
    gate_open(&gb);
    assert_int_equal(event_within(e0, 2000), cudaSuccess);

    CU(cudaDeviceSynchronize());
    CU(cudaEventDestroy(eb));
    CU(cudaEventDestroy(en));
    CU(cudaEventDestroy(e0));
    CU(cudaStreamDestroy(blocking));
    CU(cudaStreamDestroy(nonblocking));
}

/* ------------------------------------------------------------ launches and errors */

static void test_launch_config_errors(void **st) {
    (void)st;
    enum { N = 300 };
    cudaStream_t s;
    CU(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    float *d = NULL;
    CU(cudaMalloc((void **)&d, N * sizeof(float)));
    CU(cudaMemsetAsync(d, 0, N * sizeof(float), s));
    const long reports0 = llmq_emu_report_count();
    struct {
        dim3 grid, block;
        size_t smem;
        cudaError_t want;
    } bad[] = {
        {dim3(1), dim3(2048), 0, cudaErrorInvalidConfiguration},
        {dim3(1), dim3(32, 32, 2), 0, cudaErrorInvalidConfiguration},
        {dim3(1), dim3(1, 1, 65), 0, cudaErrorInvalidConfiguration},
        {dim3(0), dim3(128), 0, cudaErrorInvalidConfiguration},
        {dim3(1, 65536), dim3(128), 0, cudaErrorInvalidConfiguration},
        {dim3(3), dim3(128), 48 * 1024 + 1, cudaErrorInvalidValue}, /* over 48 KiB without the attribute */
    };
    for (auto &b : bad) {
        llmq_launch(fill_kernel, b.grid, b.block, b.smem, s, d, 1.0f, N);
        assert_int_equal(cudaGetLastError(), b.want);
        assert_int_equal(cudaGetLastError(), cudaSuccess); /* not sticky */
    }
    assert_true(llmq_emu_report_count() >= reports0 + 6); /* each reported as "launch" */
    const size_t optin = emu::device_profile().smem_per_block_optin;
    assert_int_equal(cudaFuncSetAttribute(fill_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)optin + 1),
                     cudaErrorInvalidValue);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidValue);
    CU(cudaFuncSetAttribute(fill_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)optin));
    llmq_launch(fill_kernel, dim3(3), dim3(128), optin + 1, s, d, 1.0f, N);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidValue);
    float out[N];
    CU(cudaMemcpyAsync(out, d, sizeof out, cudaMemcpyDeviceToHost, s));
    for (int i = 0; i < N; i++) assert_true(out[i] == 0.0f); /* the refused launches did nothing */
    llmq_launch(fill_kernel, dim3(3), dim3(128), optin, s, d, 2.0f, N); /* allowed now */
    CU(cudaGetLastError());
    CU(cudaMemcpyAsync(out, d, sizeof out, cudaMemcpyDeviceToHost, s));
    for (int i = 0; i < N; i++) assert_true(out[i] == 2.0f);
    CU(cudaFree(d));
    CU(cudaStreamDestroy(s));
}

/* An error raised while an op runs is sticky: every later call returns it, its message printed once. */
static int child_sticky(void) {
    cudaStream_t s;
    CHILD_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
    float *d = NULL;
    CHILD_CHECK(cudaMalloc((void **)&d, 1024) == cudaSuccess);
    CHILD_CHECK(emu::enqueue(s, "planted fault", [] {
                    emu::async_error(cudaErrorIllegalAddress, "planted by test_emu_runtime");
                    emu::async_error(cudaErrorLaunchFailure, "a second fault, not printed");
                }) == cudaSuccess);
    CHILD_CHECK(cudaStreamSynchronize(s) == cudaErrorIllegalAddress);
    CHILD_CHECK(cudaGetLastError() == cudaErrorIllegalAddress);
    CHILD_CHECK(cudaGetLastError() == cudaErrorIllegalAddress); /* not cleared */
    CHILD_CHECK(cudaPeekAtLastError() == cudaErrorIllegalAddress);
    void *p = NULL;
    CHILD_CHECK(cudaMalloc(&p, 16) == cudaErrorIllegalAddress);
    float h[4] = {0};
    CHILD_CHECK(cudaMemcpy(d, h, sizeof h, cudaMemcpyHostToDevice) == cudaErrorIllegalAddress);
    CHILD_CHECK(cudaMemsetAsync(d, 0, 16, s) == cudaErrorIllegalAddress);
    llmq_launch(fill_kernel, dim3(1), dim3(32), 0, s, d, 1.0f, 32);
    CHILD_CHECK(cudaGetLastError() == cudaErrorIllegalAddress);
    CHILD_CHECK(cudaDeviceSynchronize() == cudaErrorIllegalAddress);
    return 0;
}

static void test_sticky_async_error(void **st) {
    (void)st;
    captured c;
    const int status = run_child("sticky", NULL, NULL, &c);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(count_of(c.text, "llmq-emu:"), 1);
    assert_non_null(strstr(c.text, "planted by test_emu_runtime"));
    assert_non_null(strstr(c.text, "cudaErrorIllegalAddress"));
}

/* Process exit with an op still running (one that polls op_should_stop, as a collective does) and
 * ops still queued behind it: the process ends at once and cleanly. */
static int child_exit_busy(void) {
    cudaStream_t s;
    CHILD_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
    CHILD_CHECK(emu::enqueue(s, "blocked collective", [] {
                    while (!emu::op_should_stop()) usleep(1000);
                }) == cudaSuccess);
    gate *g = new gate(); /* never opened */
    CHILD_CHECK(emu::enqueue(0, "stream 0 gate", [g] {
                    std::unique_lock<std::mutex> lk(g->m);
                    g->cv.wait_for(lk, std::chrono::seconds(60), [g] { return g->open; });
                }) == cudaSuccess);
    float *d = NULL;
    CHILD_CHECK(cudaMalloc((void **)&d, 1024) == cudaSuccess);
    CHILD_CHECK(cudaMemsetAsync(d, 0, 1024, s) == cudaSuccess);
    usleep(20000);
    return 0;
}

static void test_exit_with_busy_streams(void **st) {
    (void)st;
    captured c;
    const double t0 = now_ms();
    const int status = run_child("exit-busy", NULL, NULL, &c);
    const double took = now_ms() - t0;
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_true(took < 10000.0); /* the stream 0 gate is not waited for 60 s */
}

/* ------------------------------------------------------------ capture and graphs */

/* Recorded ops are not run at capture; each launch of the instantiated graph runs them in order with
 * the arguments of record time, on the buffers' contents of launch time. */
static void test_capture_replay(void **st) {
    (void)st;
    enum { N = 200 };
    cudaStream_t s;
    CU(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    float *din = NULL, *dout = NULL, *dx = NULL;
    CU(cudaMalloc((void **)&din, N * sizeof(float)));
    CU(cudaMalloc((void **)&dout, N * sizeof(float)));
    CU(cudaMalloc((void **)&dx, N * sizeof(float)));
    static float hin[N], hout[N];
    for (int i = 0; i < N; i++) hout[i] = -7.0f;

    CU(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    cudaStreamCaptureStatus cs;
    CU(cudaStreamIsCapturing(s, &cs));
    assert_int_equal(cs, cudaStreamCaptureStatusActive);
    float scale = 3.0f;
    CU(cudaMemcpyAsync(din, hin, sizeof hin, cudaMemcpyHostToDevice, s));
    llmq_launch(scale_kernel, dim3((N + 63) / 64), dim3(64), 0, s, dout, (const float *)din, scale, N);
    CU(cudaGetLastError());
    scale = 100.0f; /* the launch's arguments were copied when it was recorded */
    CU(cudaMemcpyAsync(hout, dout, sizeof hout, cudaMemcpyDeviceToHost, s));
    cudaGraph_t graph = NULL;
    CU(cudaStreamEndCapture(s, &graph));
    assert_non_null(graph);
    CU(cudaStreamIsCapturing(s, &cs));
    assert_int_equal(cs, cudaStreamCaptureStatusNone);
    cudaGraphExec_t exec = NULL;
    CU(cudaGraphInstantiate(&exec, graph, 0));
    CU(cudaGraphDestroy(graph)); /* the instance keeps the ops */
    CU(cudaStreamSynchronize(s));
    for (int i = 0; i < N; i++) assert_true(hout[i] == -7.0f); /* nothing ran at capture */
    assert_false(emu::device_written(dout, sizeof(float)));

    for (int rep = 0; rep < 3; rep++) {
        for (int i = 0; i < N; i++) hin[i] = (float)(rep * 1000 + i) * 0.25f;
        CU(cudaGraphLaunch(exec, s));
        CU(cudaStreamSynchronize(s));
        for (int i = 0; i < N; i++) {
            const double want = (double)hin[i] * 3.0 + i;
            assert_true(hout[i] == (float)want);
        }
    }

    /* Several launches in a row, no synchronisation between: they run in order. */
    CU(cudaMemsetAsync(dx, 0, N * sizeof(float), s));
    CU(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    llmq_launch(add_one_kernel, dim3((N + 127) / 128), dim3(128), 0, s, dx, N);
    cudaGraph_t g2 = NULL;
    CU(cudaStreamEndCapture(s, &g2));
    cudaGraphExec_t x2 = NULL;
    CU(cudaGraphInstantiate(&x2, g2, 0));
    for (int i = 0; i < 5; i++) CU(cudaGraphLaunch(x2, s));
    CU(cudaMemcpyAsync(hout, dx, sizeof hout, cudaMemcpyDeviceToHost, s));
    for (int i = 0; i < N; i++) assert_true(hout[i] == 5.0f);
    CU(cudaGraphExecDestroy(x2));
    CU(cudaGraphDestroy(g2));
    CU(cudaGraphExecDestroy(exec));
    assert_int_equal(cudaGraphExecDestroy(exec), cudaErrorInvalidResourceHandle);
    (void)cudaGetLastError();
    CU(cudaFree(din));
    CU(cudaFree(dout));
    CU(cudaFree(dx));
    CU(cudaStreamDestroy(s));
}

enum refusal {
    R_MALLOC,
    R_MEMCPY_SYNC,
    R_MEMSET_SYNC,
    R_STREAM_SYNC,
    R_STREAM_QUERY,
    R_EVENT_QUERY,
    R_EVENT_SYNC,
    R_DEVICE_SYNC,
    R_LEGACY_WORK,
};

/* Makes the refused call; returns its result. */
static cudaError_t refused_call(enum refusal r, cudaStream_t s, float *d, cudaEvent_t ev) {
    static float h[16];
    void *p = NULL;
    switch (r) {
    case R_MALLOC: return cudaMalloc(&p, 256);
    case R_MEMCPY_SYNC: return cudaMemcpy(d, h, sizeof h, cudaMemcpyHostToDevice);
    case R_MEMSET_SYNC: return cudaMemset(d, 0, sizeof h);
    case R_STREAM_SYNC: return cudaStreamSynchronize(s);
    case R_STREAM_QUERY: return cudaStreamQuery(s);
    case R_EVENT_QUERY: CU(cudaEventRecord(ev, s)); return cudaEventQuery(ev);
    case R_EVENT_SYNC: CU(cudaEventRecord(ev, s)); return cudaEventSynchronize(ev);
    case R_DEVICE_SYNC: return cudaDeviceSynchronize();
    case R_LEGACY_WORK: return cudaMemsetAsync(d, 0, sizeof h, 0);
    }
    return cudaSuccess;
}

static void test_capture_refusals(void **st) {
    (void)st;
    struct {
        enum refusal r;
        cudaStreamCaptureMode mode;
        unsigned stream_flags;
        cudaError_t want;
    } cases[] = {
        {R_MALLOC, cudaStreamCaptureModeGlobal, cudaStreamNonBlocking, cudaErrorStreamCaptureUnsupported},
        {R_MALLOC, cudaStreamCaptureModeThreadLocal, cudaStreamNonBlocking, cudaErrorStreamCaptureUnsupported},
        {R_MEMCPY_SYNC, cudaStreamCaptureModeGlobal, cudaStreamNonBlocking, cudaErrorStreamCaptureUnsupported},
        {R_MEMSET_SYNC, cudaStreamCaptureModeGlobal, cudaStreamNonBlocking, cudaErrorStreamCaptureUnsupported},
        {R_STREAM_SYNC, cudaStreamCaptureModeRelaxed, cudaStreamNonBlocking, cudaErrorStreamCaptureUnsupported},
        {R_STREAM_QUERY, cudaStreamCaptureModeRelaxed, cudaStreamNonBlocking, cudaErrorStreamCaptureUnsupported},
        {R_EVENT_QUERY, cudaStreamCaptureModeRelaxed, cudaStreamNonBlocking, cudaErrorStreamCaptureUnsupported},
        {R_EVENT_SYNC, cudaStreamCaptureModeRelaxed, cudaStreamNonBlocking, cudaErrorStreamCaptureUnsupported},
        {R_DEVICE_SYNC, cudaStreamCaptureModeRelaxed, cudaStreamNonBlocking, cudaErrorStreamCaptureUnsupported},
        {R_LEGACY_WORK, cudaStreamCaptureModeRelaxed, cudaStreamDefault, cudaErrorStreamCaptureImplicit},
    };
    float *d = NULL;
    CU(cudaMalloc((void **)&d, 4096));
    cudaEvent_t ev;
    CU(cudaEventCreate(&ev));
    for (auto &c : cases) {
        cudaStream_t s;
        CU(cudaStreamCreateWithFlags(&s, c.stream_flags));
        CU(cudaStreamBeginCapture(s, c.mode));
        CU(cudaMemsetAsync(d, 0, 64, s)); /* something recorded before the refusal */
        const cudaError_t e = refused_call(c.r, s, d, ev);
        print_message("# refusal %d: %s\n", (int)c.r, cudaGetErrorName(e));
        assert_int_equal(e, c.want);
        assert_int_equal(cudaGetLastError(), c.want);
        assert_int_equal(cudaGetLastError(), cudaSuccess); /* not sticky */
        cudaStreamCaptureStatus cs;
        CU(cudaStreamIsCapturing(s, &cs));
        assert_int_equal(cs, cudaStreamCaptureStatusInvalidated);
        assert_int_equal(cudaMemsetAsync(d, 0, 64, s), cudaErrorStreamCaptureInvalidated);
        cudaGraph_t g = (cudaGraph_t)1;
        assert_int_equal(cudaStreamEndCapture(s, &g), cudaErrorStreamCaptureInvalidated);
        assert_null(g);
        (void)cudaGetLastError();
        /* The stream works normally afterwards. */
        CU(cudaMemsetAsync(d, 0x3c, 64, s));
        unsigned char h[64];
        CU(cudaMemcpyAsync(h, d, 64, cudaMemcpyDeviceToHost, s));
        for (int i = 0; i < 64; i++) assert_int_equal(h[i], 0x3c);
        CU(cudaStreamDestroy(s));
    }

    /* What is allowed: cudaMalloc under a relaxed capture, or from another thread than a thread-local
     * capture's; legacy work while a non-blocking stream captures. */
    cudaStream_t s;
    CU(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CU(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
    void *p = NULL;
    CU(cudaMalloc(&p, 256));
    CU(cudaMemsetAsync(d, 0, 64, 0));
    cudaGraph_t g = NULL;
    CU(cudaStreamEndCapture(s, &g));
    assert_non_null(g);
    CU(cudaGraphDestroy(g));
    CU(cudaFree(p));
    CU(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    cudaError_t other = cudaErrorUnknown;
    std::thread t([&other] {
        void *q = NULL;
        other = cudaMalloc(&q, 256);
        if (other == cudaSuccess) other = cudaFree(q);
    });
    t.join();
    CU(other);
    g = NULL;
    CU(cudaStreamEndCapture(s, &g));
    CU(cudaGraphDestroy(g));
    assert_int_equal(cudaStreamBeginCapture(0, cudaStreamCaptureModeGlobal), cudaErrorStreamCaptureUnsupported);
    (void)cudaGetLastError();
    assert_int_equal(cudaStreamEndCapture(s, &g), cudaErrorIllegalState); /* not capturing */
    (void)cudaGetLastError();
    CU(cudaStreamDestroy(s));
    CU(cudaEventDestroy(ev));
    CU(cudaFree(d));
}

static void test_error_names(void **st) {
    (void)st;
    assert_string_equal(cudaGetErrorName(cudaSuccess), "cudaSuccess");
    assert_string_equal(cudaGetErrorName(cudaErrorMemoryAllocation), "cudaErrorMemoryAllocation");
    assert_string_equal(cudaGetErrorString(cudaErrorMemoryAllocation), "out of memory");
    assert_string_equal(cudaGetErrorName(cudaErrorStreamCaptureInvalidated), "cudaErrorStreamCaptureInvalidated");
    assert_string_equal(cudaGetErrorString(cudaErrorInvalidValue), "invalid argument");
    cudaPointerAttributes at;
    float *d = NULL;
    CU(cudaMalloc((void **)&d, 64));
    CU(cudaPointerGetAttributes(&at, d + 3));
    assert_int_equal(at.type, cudaMemoryTypeDevice);
    CU(cudaPointerGetAttributes(&at, &at));
    assert_int_equal(at.type, cudaMemoryTypeUnregistered);
    CU(cudaFree(d));
}

int main(int argc, char **argv) {
    self_path = argv[0];
    if (argc > 1 && !strncmp(argv[1], "--child=", 8)) {
        const char *what = argv[1] + 8;
        if (!strcmp(what, "profile")) return child_profile();
        if (!strcmp(what, "devices")) return child_devices();
        if (!strcmp(what, "sticky")) return child_sticky();
        if (!strcmp(what, "exit-busy")) return child_exit_busy();
        return 2;
    }
    unsetenv("LLMQ_EMU_FATAL"); /* the launch errors are reported on purpose */
    char mem[32];
    snprintf(mem, sizeof mem, "%d", MEM_MB);
    setenv("LLMQ_EMU_MEM_MB", mem, 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_profiles),
        cmocka_unit_test(test_alloc_accounting),
        cmocka_unit_test(test_overrun_faults),
        cmocka_unit_test(test_use_after_free),
        cmocka_unit_test(test_written_shadow_and_poison),
        cmocka_unit_test(test_stream_order),
        cmocka_unit_test(test_async_really),
        cmocka_unit_test(test_destroy_busy_stream),
        cmocka_unit_test(test_d2h_pageable_waits),
        cmocka_unit_test(test_events_elapsed),
        cmocka_unit_test(test_legacy_stream),
        cmocka_unit_test(test_launch_config_errors),
        cmocka_unit_test(test_sticky_async_error),
        cmocka_unit_test(test_exit_with_busy_streams),
        cmocka_unit_test(test_capture_replay),
        cmocka_unit_test(test_capture_refusals),
        cmocka_unit_test(test_error_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
