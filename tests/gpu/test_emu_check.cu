/*
 * test_emu_check.cu — the emulated device's detectors (kernels/cuda/emu/emu_check.cc), each
 * proven by a small kernel with a planted defect that must be reported, and by its twin without
 * the defect that must report nothing (and compute the right answer).
 *
 * Built by `make cuda-emu` like a kernel file (emu.mk: tests/gpu/test_emu_*.cu), so its kernels are
 * instrumented as the backend's are.  Reports are read from stderr: each case redirects fd 2 to a
 * temporary file around its launch and synchronisation, then looks for "llmq-emu: <kind>:" and the
 * kernel's name.  The out-of-bounds case, LLMQ_EMU_FATAL and LLMQ_EMU_CHECK=0 run in a child process
 * (this binary again, with --child=...): an illegal address is sticky for the rest of a process, as on
 * a GPU, and LLMQ_EMU_CHECK is read once per process.
 *
 * tests/run.sh sets LLMQ_EMU_FATAL=1 for the emulated suites; reports are what this test wants,
 * so it unsets it for itself.  Built without the detectors (SANITIZER=..., EMU_CHECK=0), every
 * case is skipped.
 */
#include "kernels/cuda/common.cuh"

extern "C" {
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
}

#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define N_THREADS 128 /* 4 warps: block_sum's two levels both run */

/* ------------------------------------------------------------ kernels */

/* Each thread publishes its value in shared memory and reads its left neighbour's.  planted: no
 * __syncthreads between the write and the neighbour's read (a race even when the fibers happen
 * to run in an order that gives the right answer). */
__global__ void neighbour_kernel(const float *in, float *out, int planted) {
    LLMQ_SHARED(float, s, [N_THREADS]);
    const int t = threadIdx.x;
    s[t] = in[t];
    if (!planted) __syncthreads();
    out[t] = s[t > 0 ? t - 1 : 0];
}

/* Every thread stores to the same shared word (planted), or only thread 0 does. */
__global__ void same_word_kernel(float *out, int planted) {
    LLMQ_SHARED(float, s, [1]);
    if (planted || threadIdx.x == 0) s[0] = (float)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = s[0];
}

/* common.cuh's block_sum with one of its two barriers removed (which = 1 or 2; 0: both kept). */
__device__ float block_sum_without(float v, float *scratch, int which) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    if (which != 1) __syncthreads(); /* scratch may still be read from a previous call */
    if (lane == 0) scratch[warp] = v;
    if (which != 2) __syncthreads();
    v = lane < nw ? scratch[lane] : 0.0f;
    v = warp_sum(v);
    return v;
}

/* Two block sums in a row through the same scratch, as the norms do: the first barrier exists for
 * the second call (its writes must wait for the first call's reads). */
__global__ void block_sum_kernel(const float *in, float *out, int which) {
    LLMQ_SHARED(float, scratch, [32]);
    const float x = in[blockIdx.x * blockDim.x + threadIdx.x];
    const float a = block_sum_without(x, scratch, which);
    const float b = block_sum_without(x * x, scratch, which);
    if (threadIdx.x == 0) out[2 * blockIdx.x] = a, out[2 * blockIdx.x + 1] = b;
}

/* Reads in[n - 1 + past]: past = 1 is one element beyond the allocation. */
__global__ void past_end_kernel(const float *in, float *out, int n, int past) {
    if (threadIdx.x == 0) out[0] = in[n - 1 + past];
}

/* out[i] = in[i] over the block: in may be only partly written. */
__global__ void copy_kernel(const float *in, float *out) { out[threadIdx.x] = in[threadIdx.x]; }

/* Reads a shared array that (planted) no thread of the block wrote. */
__global__ void unwritten_shared_kernel(float *out, int planted) {
    LLMQ_SHARED(float, s, [N_THREADS]);
    if (!planted) s[threadIdx.x] = 2.0f * threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x];
}

/* ------------------------------------------------------------ helpers */

/* What the detectors printed during one case. */
typedef struct captured {
    char text[16384];
    long n_reports;
} captured;

static int cap_saved = -1;
static FILE *cap_file;
static long cap_count0;

static void capture_begin(void) {
    fflush(stderr);
    cap_file = tmpfile();
    assert_non_null(cap_file);
    cap_saved = dup(2);
    assert_true(cap_saved >= 0);
    assert_true(dup2(fileno(cap_file), 2) >= 0);
    cap_count0 = llmq_emu_report_count();
}

/* Waits for the device (reports come from the stream's thread), restores stderr, and echoes what
 * was captured so that the log shows it. */
static void capture_end(captured *c) {
    cudaError_t e = cudaDeviceSynchronize();
    fflush(stderr);
    dup2(cap_saved, 2);
    close(cap_saved);
    c->n_reports = llmq_emu_report_count() - cap_count0;
    rewind(cap_file);
    size_t n = fread(c->text, 1, sizeof c->text - 1, cap_file);
    c->text[n] = 0;
    fclose(cap_file);
    if (n) fprintf(stderr, "# captured:\n%s", c->text);
    assert_int_equal(e, cudaSuccess);
}

/* A report line of this kind that names this kernel (and the test file as its location). */
static int has_report(const captured *c, const char *kind, const char *kernel) {
    char head[64];
    snprintf(head, sizeof head, "llmq-emu: %s:", kind);
    for (const char *p = strstr(c->text, head); p; p = strstr(p + 1, head)) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        char line[4096];
        snprintf(line, sizeof line, "%.*s", (int)len, p);
        if (strstr(line, kernel) && strstr(line, "test_emu_check.cu")) return 1;
    }
    return 0;
}

static float *dev_upload(const float *h, int n) {
    float *d = NULL;
    assert_int_equal(cudaMalloc((void **)&d, n * sizeof(float)), cudaSuccess);
    if (h) assert_int_equal(cudaMemcpy(d, h, n * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
    return d;
}

static void dev_download(float *h, const float *d, int n) {
    assert_int_equal(cudaMemcpy(h, d, n * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
}

static int detectors_built(void) {
#ifdef LLMQ_EMU_CHECK
    return 1;
#else
    return 0;
#endif
}

#define NEED_DETECTORS()                                                                                       \
    do {                                                                                                       \
        if (!detectors_built()) {                                                                              \
            print_message("# built without the detectors (EMU_CHECK=0): skipped\n");                            \
            skip();                                                                                            \
        }                                                                                                      \
    } while (0)

/* ------------------------------------------------------------ shared-memory races */

static void run_neighbour(int planted, captured *c) {
    float h_in[N_THREADS], h_out[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) h_in[i] = (float)(i * 3 + 1);
    float *in = dev_upload(h_in, N_THREADS), *out = dev_upload(NULL, N_THREADS);
    capture_begin();
    llmq_launch(neighbour_kernel, dim3(2), dim3(N_THREADS), 0, 0, (const float *)in, out, planted);
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    capture_end(c);
    dev_download(h_out, out, N_THREADS);
    if (!planted)
        for (int i = 0; i < N_THREADS; i++) assert_true(h_out[i] == h_in[i > 0 ? i - 1 : 0]);
    cudaFree(in);
    cudaFree(out);
}

static void test_race_missing_barrier(void **st) {
    (void)st;
    NEED_DETECTORS();
    captured c;
    run_neighbour(1, &c);
    assert_true(c.n_reports >= 1);
    assert_true(has_report(&c, "race", "neighbour_kernel"));
    assert_non_null(strstr(c.text, "shared memory offset"));
}

static void test_race_missing_barrier_twin(void **st) {
    (void)st;
    NEED_DETECTORS();
    captured c;
    run_neighbour(0, &c);
    assert_int_equal(c.n_reports, 0);
}

static void run_same_word(int planted, captured *c) {
    float h_out[N_THREADS];
    float *out = dev_upload(NULL, N_THREADS);
    capture_begin();
    llmq_launch(same_word_kernel, dim3(1), dim3(N_THREADS), 0, 0, out, planted);
    capture_end(c);
    dev_download(h_out, out, N_THREADS);
    if (!planted)
        for (int i = 0; i < N_THREADS; i++) assert_true(h_out[i] == 0.0f);
    cudaFree(out);
}

static void test_race_write_write(void **st) {
    (void)st;
    NEED_DETECTORS();
    captured c;
    run_same_word(1, &c);
    assert_true(has_report(&c, "race", "same_word_kernel"));
    assert_non_null(strstr(c.text, "write by thread"));
    assert_non_null(strstr(c.text, "and write by thread"));
}

static void test_race_write_write_twin(void **st) {
    (void)st;
    NEED_DETECTORS();
    captured c;
    run_same_word(0, &c);
    assert_int_equal(c.n_reports, 0);
}

/* block_sum twice per block over 3 blocks; which barrier is removed (0: none).  The sums of x and
 * x^2 are checked against a double-precision loop when nothing was removed. */
static void run_block_sum(int which, captured *c) {
    const int nb = 3, n = nb * N_THREADS;
    float h_in[nb * N_THREADS], h_out[2 * nb];
    for (int i = 0; i < n; i++) h_in[i] = (float)((i * 37) % 101) / 16.0f - 3.0f;
    float *in = dev_upload(h_in, n), *out = dev_upload(NULL, 2 * nb);
    capture_begin();
    llmq_launch(block_sum_kernel, dim3(nb), dim3(N_THREADS), 0, 0, (const float *)in, out, which);
    capture_end(c);
    dev_download(h_out, out, 2 * nb);
    if (!which) {
        for (int b = 0; b < nb; b++) {
            double s = 0, s2 = 0;
            for (int i = 0; i < N_THREADS; i++) {
                double x = h_in[b * N_THREADS + i];
                s += x, s2 += x * x;
            }
            assert_true(fabs(h_out[2 * b] - s) <= 1e-4 * (1 + fabs(s)));
            assert_true(fabs(h_out[2 * b + 1] - s2) <= 1e-4 * (1 + fabs(s2)));
        }
    }
    cudaFree(in);
    cudaFree(out);
}

static void test_block_sum_first_barrier_removed(void **st) {
    (void)st;
    NEED_DETECTORS();
    captured c;
    run_block_sum(1, &c);
    assert_true(has_report(&c, "race", "block_sum_kernel"));
}

static void test_block_sum_second_barrier_removed(void **st) {
    (void)st;
    NEED_DETECTORS();
    captured c;
    run_block_sum(2, &c);
    assert_true(has_report(&c, "race", "block_sum_kernel"));
}

static void test_block_sum_twin(void **st) {
    (void)st;
    NEED_DETECTORS();
    captured c;
    run_block_sum(0, &c);
    assert_int_equal(c.n_reports, 0);
}

/* ------------------------------------------------------------ never-written memory */

static void run_unwritten_shared(int planted, captured *c) {
    float h_out[N_THREADS];
    float *out = dev_upload(NULL, N_THREADS);
    capture_begin();
    llmq_launch(unwritten_shared_kernel, dim3(2), dim3(N_THREADS), 0, 0, out, planted);
    capture_end(c);
    dev_download(h_out, out, N_THREADS);
    if (!planted)
        for (int i = 0; i < N_THREADS; i++) assert_true(h_out[i] == 2.0f * i);
    cudaFree(out);
}

static void test_unwritten_shared(void **st) {
    (void)st;
    NEED_DETECTORS();
    captured c;
    run_unwritten_shared(1, &c);
    assert_true(has_report(&c, "uninitialized", "unwritten_shared_kernel"));
    assert_non_null(strstr(c.text, "shared memory offset"));
}

static void test_unwritten_shared_twin(void **st) {
    (void)st;
    NEED_DETECTORS();
    captured c;
    run_unwritten_shared(0, &c);
    assert_int_equal(c.n_reports, 0);
}

/* in: N_THREADS floats of which the first `written` were copied from the host. */
static void run_unwritten_device(int written, captured *c) {
    float h_in[N_THREADS], h_out[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) h_in[i] = 0.5f * i;
    float *in = dev_upload(NULL, N_THREADS), *out = dev_upload(NULL, N_THREADS);
    assert_int_equal(cudaMemcpy(in, h_in, written * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
    capture_begin();
    llmq_launch(copy_kernel, dim3(1), dim3(N_THREADS), 0, 0, (const float *)in, out);
    capture_end(c);
    dev_download(h_out, out, N_THREADS);
    for (int i = 0; i < written; i++) assert_true(h_out[i] == h_in[i]);
    cudaFree(in);
    cudaFree(out);
}

static void test_unwritten_device(void **st) {
    (void)st;
    NEED_DETECTORS();
    captured c;
    run_unwritten_device(N_THREADS / 2, &c);
    assert_true(has_report(&c, "uninitialized", "copy_kernel"));
    assert_non_null(strstr(c.text, "device memory never written"));
}

static void test_unwritten_device_twin(void **st) {
    (void)st;
    NEED_DETECTORS();
    captured c;
    run_unwritten_device(N_THREADS, &c);
    assert_int_equal(c.n_reports, 0);
}

/* ------------------------------------------------------------ out of bounds (child processes) */

#define OOB_N 1000 /* floats: not a multiple of any allocation granule */

/* In the child: read one element past a cudaMalloc'd buffer (past = 1) or the last one (0).
 * Exit status: 0 when the device ended as a GPU's would (cudaErrorIllegalAddress at the next
 * synchronisation when past, success when not), 1 otherwise. */
static int child_past_end(int past) {
    float h[OOB_N];
    for (int i = 0; i < OOB_N; i++) h[i] = (float)i;
    float *in = NULL, *out = NULL;
    if (cudaMalloc((void **)&in, sizeof h) != cudaSuccess || cudaMalloc((void **)&out, sizeof(float)) != cudaSuccess)
        return 1;
    if (cudaMemcpy(in, h, sizeof h, cudaMemcpyHostToDevice) != cudaSuccess) return 1;
    llmq_launch(past_end_kernel, dim3(1), dim3(32), 0, 0, (const float *)in, out, OOB_N, past);
    cudaError_t e = cudaDeviceSynchronize();
    printf("cudaDeviceSynchronize: %s\n", cudaGetErrorName(e));
    if (!past) {
        float got = -1;
        if (cudaMemcpy(&got, out, sizeof got, cudaMemcpyDeviceToHost) != cudaSuccess) return 1;
        return e == cudaSuccess && got == (float)(OOB_N - 1) ? 0 : 1;
    }
    return e == cudaErrorIllegalAddress ? 0 : 1;
}

/* In the child, with LLMQ_EMU_FATAL=1: the missing-barrier kernel must abort the process (and with
 * LLMQ_EMU_CHECK=0 it must not: the checks are off). */
static int child_fatal(void) {
    float h_in[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) h_in[i] = (float)i;
    float *in = dev_upload(h_in, N_THREADS), *out = dev_upload(NULL, N_THREADS);
    llmq_launch(neighbour_kernel, dim3(1), dim3(N_THREADS), 0, 0, (const float *)in, out, 1);
    cudaDeviceSynchronize();
    return 0; /* not reached when the report aborted */
}

static const char *self_path;

/* Runs this binary with --child=<what>, its stderr into c->text; returns the wait status. */
static int run_child(const char *what, int fatal, int checks_off, captured *c) {
    char arg[64];
    snprintf(arg, sizeof arg, "--child=%s", what);
    char *argv[] = {(char *)self_path, arg, NULL};
    if (fatal) setenv("LLMQ_EMU_FATAL", "1", 1);
    if (checks_off) setenv("LLMQ_EMU_CHECK", "0", 1);
    FILE *f = tmpfile();
    assert_non_null(f);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fileno(f), 2);
    /* The fatal child aborts: no core file (the limit is inherited, then restored here). */
    struct rlimit core, no_core = {0, 0};
    getrlimit(RLIMIT_CORE, &core);
    no_core.rlim_max = core.rlim_max;
    setrlimit(RLIMIT_CORE, &no_core);
    pid_t pid;
    int rc = posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    setrlimit(RLIMIT_CORE, &core);
    unsetenv("LLMQ_EMU_FATAL");
    unsetenv("LLMQ_EMU_CHECK");
    assert_int_equal(rc, 0);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    rewind(f);
    size_t n = fread(c->text, 1, sizeof c->text - 1, f);
    c->text[n] = 0;
    fclose(f);
    if (n) fprintf(stderr, "# child %s said:\n%s", what, c->text);
    return status;
}

static void test_out_of_bounds(void **st) {
    (void)st;
    NEED_DETECTORS();
    captured c;
    int status = run_child("past-end", 0, 0, &c);
    assert_true(has_report(&c, "out-of-bounds", "past_end_kernel"));
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0); /* cudaErrorIllegalAddress at the synchronisation */
}

static void test_out_of_bounds_twin(void **st) {
    (void)st;
    NEED_DETECTORS();
    captured c;
    int status = run_child("last", 0, 0, &c);
    assert_null(strstr(c.text, "llmq-emu:"));
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_fatal_aborts(void **st) {
    (void)st;
    NEED_DETECTORS();
    captured c;
    int status = run_child("fatal", 1, 0, &c);
    assert_true(has_report(&c, "race", "neighbour_kernel"));
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGABRT);
}

/* LLMQ_EMU_CHECK=0: the same fatal run ends normally, with nothing reported. */
static void test_checks_off(void **st) {
    (void)st;
    NEED_DETECTORS();
    captured c;
    int status = run_child("fatal", 1, 1, &c);
    assert_null(strstr(c.text, "llmq-emu:"));
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

int main(int argc, char **argv) {
    self_path = argv[0];
    if (argc > 1 && !strncmp(argv[1], "--child=", 8)) {
        const char *what = argv[1] + 8;
        if (!strcmp(what, "past-end")) return child_past_end(1);
        if (!strcmp(what, "last")) return child_past_end(0);
        if (!strcmp(what, "fatal")) return child_fatal();
        return 2;
    }
    unsetenv("LLMQ_EMU_FATAL"); /* reports are what this test looks for (see top) */
    unsetenv("LLMQ_EMU_CHECK");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_race_missing_barrier),
        cmocka_unit_test(test_race_missing_barrier_twin),
        cmocka_unit_test(test_race_write_write),
        cmocka_unit_test(test_race_write_write_twin),
        cmocka_unit_test(test_block_sum_first_barrier_removed),
        cmocka_unit_test(test_block_sum_second_barrier_removed),
        cmocka_unit_test(test_block_sum_twin),
        cmocka_unit_test(test_unwritten_shared),
        cmocka_unit_test(test_unwritten_shared_twin),
        cmocka_unit_test(test_unwritten_device),
        cmocka_unit_test(test_unwritten_device_twin),
        cmocka_unit_test(test_out_of_bounds),
        cmocka_unit_test(test_out_of_bounds_twin),
        cmocka_unit_test(test_fatal_aborts),
        cmocka_unit_test(test_checks_off),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
