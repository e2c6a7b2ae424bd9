/*
 * test_emu_exec.cu — kernel execution on the emulated device (kernels/cuda/emu/emu_exec.cc and
 * emu_device.h): thread and block indices over 1D/2D/3D grids and blocks, __syncthreads ordering
 * and its count/and/or forms, common.cuh's warp_sum/warp_max/block_sum against double-precision
 * sums, every shuffle with every width, votes with partial masks and partial warps, atomics from
 * many blocks (on several OS threads), static and dynamic shared memory (poisoned at every block
 * start, one address per declaration for the whole block, private to the block), and that lanes
 * of a warp are NOT run in lockstep: a kernel relying on it gives a different result here.
 * Faults run in children (this binary again, --child=<what>) since they leave a sticky error: a
 * barrier not reached by every thread, threads at different barriers, a shuffle naming an exited
 * lane, a warp op deadlock, too much shared memory; each must be reported and must not hang.
 *
 * Built by `make cuda-emu` like a kernel file (emu.mk: tests/gpu/test_emu_*.cu).  Expected values
 * come from the host: CUDA's documented semantics written out as plain loops, sums in double.
 * `test_emu_exec --bench[=case]` prints the cost of barriers and shuffles (not a test).
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

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <vector>

extern char **environ;

#define CU(stmt) assert_int_equal((int)(stmt), (int)cudaSuccess)

/* ------------------------------------------------------------ helpers */

template <typename T> static T *dev_alloc(size_t n) {
    void *p = nullptr;
    CU(cudaMalloc(&p, n * sizeof(T)));
    return (T *)p;
}
template <typename T> static T *dev_from(const std::vector<T> &h) {
    T *d = dev_alloc<T>(h.size());
    CU(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}
template <typename T> static std::vector<T> host_from(const T *d, size_t n) {
    std::vector<T> h(n);
    CU(cudaDeviceSynchronize());
    CU(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}
static uint32_t rng_state = 12345;
static float frand(void) { /* uniform in [-1, 1) */
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)((rng_state >> 8) & 0xffffff) / (float)(1 << 23) - 1.0f;
}

/* ------------------------------------------------------------ indices */

struct idx_rec {
    unsigned t[3], b[3], bd[3], gd[3];
};

__global__ void k_indices(idx_rec *out) {
    const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned nt = blockDim.x * blockDim.y * blockDim.z;
    idx_rec r = {{threadIdx.x, threadIdx.y, threadIdx.z},
                 {blockIdx.x, blockIdx.y, blockIdx.z},
                 {blockDim.x, blockDim.y, blockDim.z},
                 {gridDim.x, gridDim.y, gridDim.z}};
    out[(size_t)b * nt + t] = r;
}

static void test_indices(void **state) {
    (void)state;
    const dim3 grids[] = {dim3(3), dim3(2, 3), dim3(2, 2, 3), dim3(1)};
    const dim3 blocks[] = {dim3(64), dim3(8, 4), dim3(4, 3, 2), dim3(48)}; /* 48: a partial warp */
    for (int c = 0; c < 4; c++) {
        const dim3 g = grids[c], bd = blocks[c];
        const size_t nb = g.x * g.y * g.z, nt = bd.x * bd.y * bd.z;
        idx_rec *d = dev_alloc<idx_rec>(nb * nt);
        CU(cudaMemset(d, 0xff, nb * nt * sizeof(idx_rec)));
        llmq_launch(k_indices, g, bd, 0, 0, d);
        CU(cudaGetLastError());
        std::vector<idx_rec> h = host_from(d, nb * nt);
        for (size_t b = 0; b < nb; b++)
            for (size_t t = 0; t < nt; t++) {
                const idx_rec &r = h[b * nt + t];
                const unsigned want_t[3] = {(unsigned)(t % bd.x), (unsigned)(t / bd.x % bd.y),
                                            (unsigned)(t / (bd.x * bd.y))};
                const unsigned want_b[3] = {(unsigned)(b % g.x), (unsigned)(b / g.x % g.y),
                                            (unsigned)(b / (g.x * g.y))};
                for (int i = 0; i < 3; i++) {
                    assert_int_equal(r.t[i], want_t[i]);
                    assert_int_equal(r.b[i], want_b[i]);
                }
                assert_int_equal(r.bd[0], bd.x), assert_int_equal(r.bd[1], bd.y), assert_int_equal(r.bd[2], bd.z);
                assert_int_equal(r.gd[0], g.x), assert_int_equal(r.gd[1], g.y), assert_int_equal(r.gd[2], g.z);
            }
        CU(cudaFree(d));
    }
}

/* ------------------------------------------------------------ __syncthreads */

/* Each round every thread writes its slot, then reads another thread's: right only if the barrier
 * orders all writes before all reads, and the second barrier all reads before the next writes. */
__global__ void k_barrier_rounds(int *out, int rounds) {
    LLMQ_SHARED(int, s, [1024]);
    const int t = threadIdx.x, n = blockDim.x;
    int acc = 0;
    for (int r = 0; r < rounds; r++) {
        s[t] = t * 7 + r + (int)blockIdx.x;
        __syncthreads();
        acc += s[(t + r + 1) % n];
        __syncthreads();
    }
    out[blockIdx.x * n + t] = acc;
}

__global__ void k_sync_ops(int *out) {
    const int t = threadIdx.x, n = blockDim.x;
    int *o = out + t * 5;
    o[0] = __syncthreads_count(t % 3 == 0);
    o[1] = __syncthreads_and(t < n);
    o[2] = __syncthreads_and(t != 5);
    o[3] = __syncthreads_or(t == n - 1);
    o[4] = __syncthreads_or(0);
}

static void test_syncthreads(void **state) {
    (void)state;
    const int sizes[] = {32, 96, 512, 1024}, rounds = 5, nb = 3;
    for (int n : sizes) {
        int *d = dev_alloc<int>((size_t)nb * n);
        llmq_launch(k_barrier_rounds, dim3(nb), dim3(n), 0, 0, d, rounds);
        std::vector<int> h = host_from(d, (size_t)nb * n);
        for (int b = 0; b < nb; b++)
            for (int t = 0; t < n; t++) {
                int want = 0;
                for (int r = 0; r < rounds; r++) want += ((t + r + 1) % n) * 7 + r + b;
                assert_int_equal(h[(size_t)b * n + t], want);
            }
        CU(cudaFree(d));

        int *o = dev_alloc<int>((size_t)n * 5);
        llmq_launch(k_sync_ops, dim3(1), dim3(n), 0, 0, o);
        std::vector<int> ho = host_from(o, (size_t)n * 5);
        int count = 0;
        for (int t = 0; t < n; t++) count += t % 3 == 0;
        for (int t = 0; t < n; t++) {
            assert_int_equal(ho[t * 5 + 0], count);
            assert_int_equal(ho[t * 5 + 1], 1);
            assert_int_equal(ho[t * 5 + 2], 0);
            assert_int_equal(ho[t * 5 + 3], 1);
            assert_int_equal(ho[t * 5 + 4], 0);
        }
        CU(cudaFree(o));
    }
}

/* ------------------------------------------------------------ common.cuh's reductions */

__global__ void k_block_sum(float *out, const float *x, int per_block) {
    LLMQ_SHARED(float, scratch, [32]);
    const float *xb = x + (size_t)blockIdx.x * per_block;
    float v = 0.0f;
    for (int i = threadIdx.x; i < per_block; i += blockDim.x) v += xb[i];
    float s = block_sum(v, scratch);
    /* twice: the first barrier of block_sum protects scratch from the previous call's readers */
    float s2 = block_sum(v * 2.0f, scratch);
    out[2 * (blockIdx.x * blockDim.x + threadIdx.x)] = s;
    out[2 * (blockIdx.x * blockDim.x + threadIdx.x) + 1] = s2;
}

__global__ void k_warp_reduce(float *out, const float *x) {
    const size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    out[2 * g] = warp_sum(x[g]);
    out[2 * g + 1] = warp_max(x[g]);
}

static void test_reductions(void **state) {
    (void)state;
    const int threads[] = {32, 64, 256, 512, 1024};
    for (int n : threads) {
        const int nb = 4, per = 3 * n + 17;
        std::vector<float> x((size_t)nb * per);
        for (float &v : x) v = frand();
        float *dx = dev_from(x), *dout = dev_alloc<float>((size_t)nb * n * 2);
        llmq_launch(k_block_sum, dim3(nb), dim3(n), 0, 0, dout, (const float *)dx, per);
        std::vector<float> h = host_from(dout, (size_t)nb * n * 2);
        for (int b = 0; b < nb; b++) {
            double want = 0, mag = 0;
            for (int i = 0; i < per; i++) want += x[(size_t)b * per + i], mag += fabs(x[(size_t)b * per + i]);
            const float got = h[(size_t)b * n * 2];
            assert_true(fabs(got - want) <= 1e-6 * mag + 1e-6);
            assert_true(fabs(h[(size_t)b * n * 2 + 1] - 2 * want) <= 2e-6 * mag + 1e-6);
            for (int t = 0; t < n; t++) { /* every thread gets the same bits */
                assert_memory_equal(&h[((size_t)b * n + t) * 2], &got, sizeof got);
                assert_memory_equal(&h[((size_t)b * n + t) * 2 + 1], &h[(size_t)b * n * 2 + 1], sizeof got);
            }
        }
        CU(cudaFree(dx));
        CU(cudaFree(dout));
    }

    const int n = 256, nb = 3;
    std::vector<float> x((size_t)nb * n);
    for (float &v : x) v = frand();
    float *dx = dev_from(x), *dout = dev_alloc<float>((size_t)nb * n * 2);
    llmq_launch(k_warp_reduce, dim3(nb), dim3(n), 0, 0, dout, (const float *)dx);
    std::vector<float> h = host_from(dout, (size_t)nb * n * 2);
    for (size_t w = 0; w < (size_t)nb * n / 32; w++) {
        double want = 0, mag = 0;
        float mx = -INFINITY;
        for (int l = 0; l < 32; l++) want += x[w * 32 + l], mag += fabs(x[w * 32 + l]), mx = fmaxf(mx, x[w * 32 + l]);
        for (int l = 0; l < 32; l++) {
            assert_true(fabs(h[(w * 32 + l) * 2] - want) <= 1e-6 * mag);
            assert_memory_equal(&h[(w * 32 + l) * 2], &h[w * 32 * 2], sizeof(float));
            assert_true(h[(w * 32 + l) * 2 + 1] == mx);
        }
    }
    CU(cudaFree(dx));
    CU(cudaFree(dout));
}

/* ------------------------------------------------------------ shuffles */

template <typename T> __global__ void k_shfl(T *out, const T *in, int mode, int arg, int width) {
    const size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const T v = in[g];
    T r;
    switch (mode) {
    case 0: r = __shfl_sync(FULL_MASK, v, arg, width); break;
    case 1: r = __shfl_up_sync(FULL_MASK, v, (unsigned)arg, width); break;
    case 2: r = __shfl_down_sync(FULL_MASK, v, (unsigned)arg, width); break;
    case 3: r = __shfl_xor_sync(FULL_MASK, v, arg, width); break;
    default: r = __shfl_xor_sync(FULL_MASK, v, arg); break; /* the default width */
    }
    out[g] = r;
}

/* The source lane CUDA's programming guide defines for lane l, or -1 for "its own value". */
static int shfl_src(int mode, int l, int arg, int w) {
    const int seg = l / w * w;
    switch (mode) {
    case 0: return seg + arg % w;
    case 1: return l - seg >= arg ? l - arg : -1;
    case 2: return l - seg + arg < w ? l + arg : -1;
    default: return (l ^ arg) < seg + w ? (l ^ arg) : -1;
    }
}

template <typename T> static void shfl_case(int mode, int arg, int width, T (*make)(int)) {
    const int n = 64, nb = 2; /* two warps per block, two blocks */
    std::vector<T> in((size_t)n * nb);
    for (size_t i = 0; i < in.size(); i++) in[i] = make((int)i);
    T *din = dev_from(in), *dout = dev_alloc<T>(in.size());
    llmq_launch(k_shfl<T>, dim3(nb), dim3(n), 0, 0, dout, (const T *)din, mode, arg, width);
    std::vector<T> h = host_from(dout, in.size());
    for (size_t i = 0; i < in.size(); i++) {
        const int l = (int)(i % 32), src = shfl_src(mode == 4 ? 3 : mode, l, arg, mode == 4 ? 32 : width);
        const T want = src < 0 ? in[i] : in[i - l + src];
        if (memcmp(&h[i], &want, sizeof(T)) != 0)
            fail_msg("shuffle mode %d arg %d width %d: element %zu (lane %d) wrong", mode, arg, width, i, l);
    }
    CU(cudaFree(din));
    CU(cudaFree(dout));
}

static int make_int(int i) { return i * 37 - 1000; }
static float make_float(int i) { return (float)i * 0.25f - 3.0f; }
static double make_double(int i) { return 1e10 + i * 1.5; }
static long long make_ll(int i) { return (long long)i << 40 | i; }
static __half make_half(int i) { return __float2half_rn((float)i * 0.5f); }

static void test_shuffles(void **state) {
    (void)state;
    const int widths[] = {1, 2, 4, 8, 16, 32};
    const int args[] = {0, 1, 3, 5, 16, 31, 37};
    for (int mode = 0; mode < 4; mode++)
        for (int w : widths)
            for (int a : args) {
                if ((mode == 1 || mode == 2) && a > 31) continue; /* delta beyond the warp: nothing new */
                shfl_case<int>(mode, a, w, make_int);
                shfl_case<float>(mode, a, w, make_float);
            }
    for (int a : args) shfl_case<float>(4, a, 32, make_float);
    /* 8- and 2-byte types move whole */
    for (int mode = 0; mode < 4; mode++) {
        shfl_case<double>(mode, 3, 16, make_double);
        shfl_case<long long>(mode, 5, 32, make_ll);
        shfl_case<__half>(mode, 1, 8, make_half);
    }
}

/* ------------------------------------------------------------ votes, partial masks and warps */

/* out per thread: ballot over its half (even or odd lanes), any, all, full-warp ballot, activemask,
 * then a down-shuffle among lanes 0..15 only (lanes 16..31 do not take part) */
__global__ void k_votes(unsigned *out) {
    const unsigned t = threadIdx.x, lane = t & 31, warp = t >> 5;
    const unsigned half = (lane & 1) ? 0xaaaaaaaau : 0x55555555u;
    const unsigned exists = blockDim.x - warp * 32 >= 32 ? 0xffffffffu : (1u << (blockDim.x - warp * 32)) - 1;
    const unsigned mask = half & exists;
    unsigned *o = out + t * 6;
    /* Before the warp's last op no lane can have exited (each waits for all at every op); after it,
     * lanes that finish first are no longer active for the others. */
    o[4] = __activemask();
    o[0] = __ballot_sync(mask, (lane % 3 == 0) ^ (warp & 1));
    o[1] = __any_sync(mask, lane >= 29);
    o[2] = __all_sync(mask, lane != 30);
    o[3] = __ballot_sync(__activemask(), lane < 5);
    o[5] = 0xdeadu;
    if (lane < 16) o[5] = __shfl_down_sync(exists & 0xffffu, lane * 10u, 2u, 16);
}

static void test_votes(void **state) {
    (void)state;
    const int sizes[] = {64, 48}; /* 48: the second warp has lanes 0..15 only */
    for (int n : sizes) {
        unsigned *d = dev_alloc<unsigned>((size_t)n * 6);
        llmq_launch(k_votes, dim3(1), dim3(n), 0, 0, d);
        std::vector<unsigned> h = host_from(d, (size_t)n * 6);
        for (int t = 0; t < n; t++) {
            const int lane = t & 31, warp = t >> 5, lanes = n - warp * 32 < 32 ? n - warp * 32 : 32;
            unsigned ballot = 0, full = 0, exists = 0;
            int any = 0, all = 1;
            for (int l = 0; l < lanes; l++) {
                exists |= 1u << l;
                if (l < 5) full |= 1u << l;
                if ((l & 1) != (lane & 1)) continue;
                if ((l % 3 == 0) ^ (warp & 1)) ballot |= 1u << l;
                any |= l >= 29;
                all &= l != 30;
            }
            const unsigned *o = &h[(size_t)t * 6];
            assert_int_equal(o[0], ballot);
            assert_int_equal(o[1] != 0, any);
            assert_int_equal(o[2] != 0, all);
            assert_int_equal(o[3], full);
            assert_int_equal(o[4], exists);
            if (lane < 16) assert_int_equal(o[5], (unsigned)(lane + 2 < 16 ? lane + 2 : lane) * 10u);
            else assert_int_equal(o[5], 0xdeadu);
        }
        CU(cudaFree(d));
    }
}

/* ------------------------------------------------------------ atomics */

struct counters {
    int i_add, i_max, i_min, cas_count, exch;
    unsigned u_add, u_max, u_min, inc;
    unsigned long long ull_add, exch_sum;
    float f_add;
    double d_add;
};

__global__ void k_atomics(counters *c) {
    const int g = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    atomicAdd(&c->i_add, 1);
    atomicSub(&c->i_add, 3);
    atomicMax(&c->i_max, g * 3 - 5000);
    atomicMin(&c->i_min, g * 3 - 5000);
    atomicAdd(&c->u_add, 2u);
    atomicMax(&c->u_max, (unsigned)g * 5u);
    atomicMin(&c->u_min, (unsigned)g + 7u);
    atomicInc(&c->inc, 999u); /* wraps to 0 after 999 */
    atomicAdd(&c->ull_add, (unsigned long long)g << 20);
    atomicAdd(&c->f_add, 1.0f);
    atomicAdd(&c->d_add, 0.5);
    int old = atomicCAS(&c->cas_count, 0, 0); /* a compare-and-swap increment loop */
    for (;;) {
        const int prev = atomicCAS(&c->cas_count, old, old + 1);
        if (prev == old) break;
        old = prev;
    }
    /* every value put in by exchange is taken out once: the sum of what came out + what stays */
    atomicAdd(&c->exch_sum, (unsigned long long)atomicExch(&c->exch, g));
}

static void test_atomics(void **state) {
    (void)state;
    const int nb = 64, nt = 256, n = nb * nt;
    counters h0;
    memset(&h0, 0, sizeof h0);
    h0.i_max = -1000000, h0.i_min = 1000000, h0.u_min = 0xffffffffu, h0.exch = 0;
    counters *d = dev_alloc<counters>(1);
    CU(cudaMemcpy(d, &h0, sizeof h0, cudaMemcpyHostToDevice));
    llmq_launch(k_atomics, dim3(nb), dim3(nt), 0, 0, d);
    counters h = host_from(d, 1)[0];
    unsigned long long ull = 0, gsum = 0;
    for (int g = 0; g < n; g++) ull += (unsigned long long)g << 20, gsum += (unsigned long long)g;
    assert_int_equal(h.i_add, -2 * n);
    assert_int_equal(h.i_max, (n - 1) * 3 - 5000);
    assert_int_equal(h.i_min, -5000);
    assert_int_equal(h.u_add, 2u * n);
    assert_int_equal(h.u_max, (unsigned)(n - 1) * 5u);
    assert_int_equal(h.u_min, 7u);
    assert_int_equal(h.inc, (unsigned)(n % 1000));
    assert_true(h.ull_add == ull);
    assert_true(h.f_add == (float)n);
    assert_true(h.d_add == 0.5 * n);
    assert_int_equal(h.cas_count, n);
    assert_true(h.exch_sum + (unsigned long long)h.exch == gsum);
    CU(cudaFree(d));
}

/* ------------------------------------------------------------ shared memory */

/* True when [p, p + n) holds the poison (0xff bytes).  Not instrumented: reading never-written
 * shared memory on purpose must not be reported by the detectors. */
__attribute__((noinline, no_sanitize("thread"))) static bool poisoned(const void *p, size_t n) {
    const volatile unsigned char *c = (const volatile unsigned char *)p;
    for (size_t i = 0; i < n; i++)
        if (c[i] != 0xff) return false;
    return true;
}

/* out per thread: [0] poison seen at block start (thread 0 only), [1..3] the addresses of the three
 * arrays, [4] what the thread read back from the arrays after the barrier, as a checksum. */
__global__ void k_shared(unsigned long long *out, int n_dyn) {
    LLMQ_SHARED(unsigned, a, [256]);
    LLMQ_SHARED(double, b, [33]);
    LLMQ_DYN_SHARED(unsigned, d);
    const unsigned t = threadIdx.x, n = blockDim.x, blk = blockIdx.x;
    unsigned long long *o = out + ((size_t)blk * n + t) * 5;
    o[0] = t == 0 ? (poisoned(a, sizeof a) && poisoned(b, sizeof b) && poisoned(d, n_dyn * sizeof(unsigned))) : 1;
    o[1] = (uintptr_t)a, o[2] = (uintptr_t)b, o[3] = (uintptr_t)d;
    __syncthreads(); /* thread 0 has looked at the poison before anyone writes */
    a[t] = blk * 1000 + t;
    if (t < 33) b[t] = blk + t * 0.5;
    for (int i = (int)t; i < n_dyn; i += (int)n) d[i] = blk * 7 + (unsigned)i;
    __syncthreads();
    unsigned long long sum = a[(t + 1) % n] + (unsigned long long)(b[t % 33] * 2.0);
    for (int i = (int)t; i < n_dyn; i += (int)n) sum += d[n_dyn - 1 - i];
    o[4] = sum;
}

static void test_shared_memory(void **state) {
    (void)state;
    const int n = 256, nb = 12, n_dyn = 3000;
    unsigned long long *d = dev_alloc<unsigned long long>((size_t)nb * n * 5);
    for (int rep = 0; rep < 2; rep++) { /* the second launch reuses arenas that the first dirtied */
        llmq_launch(k_shared, dim3(nb), dim3(n), n_dyn * sizeof(unsigned), 0, d, n_dyn);
        CU(cudaGetLastError());
        std::vector<unsigned long long> h = host_from(d, (size_t)nb * n * 5);
        for (int blk = 0; blk < nb; blk++) {
            const unsigned long long *o0 = &h[(size_t)blk * n * 5];
            assert_int_equal(o0[0], 1); /* poisoned at the block's start */
            /* three distinct arrays, no overlap, 16-byte aligned */
            const unsigned long long a = o0[1], b = o0[2], dy = o0[3];
            assert_true(a % 16 == 0 && b % 16 == 0 && dy % 16 == 0);
            assert_true(a + 256 * 4 <= b || b + 33 * 8 <= a);
            assert_true(dy + n_dyn * 4 <= a || a + 256 * 4 <= dy);
            assert_true(dy + n_dyn * 4 <= b || b + 33 * 8 <= dy);
            for (int t = 0; t < n; t++) {
                const unsigned long long *o = &h[((size_t)blk * n + t) * 5];
                assert_true(o[1] == a && o[2] == b && o[3] == dy); /* one address for the whole block */
                unsigned long long want = (unsigned long long)blk * 1000 + (t + 1) % n +
                                          (unsigned long long)((blk + (t % 33) * 0.5) * 2.0);
                for (int i = t; i < n_dyn; i += n) want += (unsigned long long)blk * 7 + (unsigned)(n_dyn - 1 - i);
                assert_true(o[4] == want);
            }
        }
    }
    CU(cudaFree(d));
}

/* ------------------------------------------------------------ no implicit warp lockstep */

/* Warp-synchronous code of the pre-Volta kind: each lane writes its slot, then reads its
 * neighbour's with no __syncwarp.  In lockstep every lane reads the neighbour's new value; here
 * lanes run one after another, so early lanes read what was there before (the poison). */
__global__ void k_lockstep(float *out, int with_syncwarp) {
    LLMQ_SHARED(float, s, [32]);
    const int lane = threadIdx.x;
    s[lane] = lane + 1.0f;
    if (with_syncwarp) __syncwarp();
    out[lane] = s[lane ^ 1];
}

static void test_no_lockstep(void **state) {
    (void)state;
    float *d = dev_alloc<float>(32);
    const long reports0 = llmq_emu_report_count();
    llmq_launch(k_lockstep, dim3(1), dim3(32), 0, 0, d, 0);
    std::vector<float> h = host_from(d, 32);
    int wrong = 0;
    for (int l = 0; l < 32; l++) wrong += !(h[l] == (float)((l ^ 1) + 1));
    const long reports = llmq_emu_report_count() - reports0;
    print_message("# lockstep-reliant kernel: %d of 32 lanes differ from lockstep, %ld detector reports\n", wrong,
                  reports);
    assert_true(wrong > 0); /* the emulation must not hide the missing __syncwarp */

    /* the same with __syncwarp is right */
    llmq_launch(k_lockstep, dim3(1), dim3(32), 0, 0, d, 1);
    h = host_from(d, 32);
    for (int l = 0; l < 32; l++) assert_true(h[l] == (float)((l ^ 1) + 1));
    CU(cudaFree(d));
}

/* ------------------------------------------------------------ faults (children) */

__global__ void k_early_exit(int *out) {
    LLMQ_SHARED(int, s, [64]);
    const int t = threadIdx.x;
    if (t == 3) return; /* thread 3 never reaches the barrier */
    s[t] = t;
    __syncthreads();
    out[blockIdx.x * 64 + t] = s[(t + 1) % 64];
}

__global__ void k_two_barriers(int *out) {
    const int t = threadIdx.x;
    if (t < 32) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[t] = t;
}

__global__ void k_shfl_exited(float *out) {
    const int t = threadIdx.x;
    if (t == 5) return;
    out[t] = warp_sum((float)t);
}

__global__ void k_warp_masks(int *out) {
    const int t = threadIdx.x;
    out[t] = t < 16 ? __shfl_sync(0xffffu, t, 0) : __shfl_sync(FULL_MASK, t, 0);
}

__global__ void k_barrier_vs_warp(int *out) {
    const int t = threadIdx.x;
    if (t == 0) __syncthreads();
    else out[t] = __shfl_xor_sync(FULL_MASK, t, 1);
}

__global__ void k_smem_total(int *out) {
    LLMQ_SHARED(int, big, [40 << 8]); /* 40 KiB static */
    LLMQ_DYN_SHARED(int, dyn);        /* + 40 KiB dynamic: over the T4's 64 KiB */
    big[threadIdx.x] = 1;
    dyn[threadIdx.x] = 2;
    __syncthreads();
    out[blockIdx.x * 32 + threadIdx.x] = big[threadIdx.x] + dyn[threadIdx.x];
}

__global__ void k_smem_static(int *out) {
    LLMQ_SHARED(int, big, [50 << 8]); /* 50 KiB static: over the 48 KiB static limit */
    big[threadIdx.x] = 1;
    __syncthreads();
    out[blockIdx.x * 32 + threadIdx.x] = big[threadIdx.x];
}

/* In the child: launch one faulty kernel on the legacy stream, print what the sync said. */
static int child_run(const char *what) {
    int *d = nullptr;
    if (cudaMalloc((void **)&d, 4096) != cudaSuccess) return 3;
    if (!strcmp(what, "early-exit")) llmq_launch(k_early_exit, dim3(2), dim3(64), 0, 0, d);
    else if (!strcmp(what, "two-barriers")) llmq_launch(k_two_barriers, dim3(1), dim3(64), 0, 0, d);
    else if (!strcmp(what, "shfl-exited")) llmq_launch(k_shfl_exited, dim3(1), dim3(32), 0, 0, (float *)d);
    else if (!strcmp(what, "warp-masks")) llmq_launch(k_warp_masks, dim3(1), dim3(32), 0, 0, d);
    else if (!strcmp(what, "barrier-vs-warp")) llmq_launch(k_barrier_vs_warp, dim3(1), dim3(32), 0, 0, d);
    else if (!strcmp(what, "smem-total")) llmq_launch(k_smem_total, dim3(4), dim3(32), 40 << 10, 0, d);
    else if (!strcmp(what, "smem-static")) llmq_launch(k_smem_static, dim3(4), dim3(32), 0, 0, d);
    else return 2;
    const cudaError_t launch = cudaGetLastError();
    const cudaError_t sync = cudaDeviceSynchronize();
    printf("launch=%s sync=%s reports=%ld\n", cudaGetErrorName(launch), cudaGetErrorName(sync),
           llmq_emu_report_count());
    fflush(stdout);
    return 0;
}

/* Runs this binary with --child=<what>; returns its exit status (-1: killed after 30 s) and its
 * stdout + stderr in out. */
static int run_child(const char *what, char *out, size_t cap) {
    char arg[64];
    snprintf(arg, sizeof arg, "--child=%s", what);
    char *const argv[] = {(char *)"test_emu_exec", arg, nullptr};
    int fds[2];
    if (pipe(fds) != 0) return -2;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    pid_t pid;
    const int rc = posix_spawn(&pid, "/proc/self/exe", &fa, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    if (rc != 0) {
        close(fds[0]);
        return -2;
    }
    size_t len = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        struct pollfd p = {fds[0], POLLIN, 0};
        int r = poll(&p, 1, 1000);
        if (r > 0) {
            char buf[4096];
            ssize_t n = read(fds[0], buf, sizeof buf);
            if (n <= 0) break;
            size_t k = (size_t)n < cap - 1 - len ? (size_t)n : cap - 1 - len;
            memcpy(out + len, buf, k);
            len += k;
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (t1.tv_sec - t0.tv_sec > 30) {
            kill(pid, SIGKILL);
            waitpid(pid, nullptr, 0);
            close(fds[0]);
            out[len] = 0;
            return -1;
        }
    }
    out[len] = 0;
    close(fds[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void expect_fault(const char *what, const char *report_kind, const char *sync_error) {
    static char out[1 << 16];
    const int rc = run_child(what, out, sizeof out);
    if (rc != 0) fail_msg("child %s: exit %d (-1: hung, killed), said:\n%s", what, rc, out);
    char want[64], want_sync[96];
    snprintf(want, sizeof want, "llmq-emu: %s: ", report_kind);
    snprintf(want_sync, sizeof want_sync, "sync=%s ", sync_error);
    if (!strstr(out, want) || !strstr(out, want_sync))
        fail_msg("child %s: wanted a '%s' report and %s; it said:\n%s", what, report_kind, want_sync, out);
}

static void test_barrier_faults(void **state) {
    (void)state;
    expect_fault("early-exit", "barrier", "cudaErrorLaunchFailure");
    expect_fault("two-barriers", "barrier", "cudaErrorLaunchFailure");
    expect_fault("shfl-exited", "barrier", "cudaErrorLaunchFailure");
    expect_fault("warp-masks", "barrier", "cudaErrorLaunchFailure");
    expect_fault("barrier-vs-warp", "barrier", "cudaErrorLaunchFailure");
}

static void test_shared_memory_limits(void **state) {
    (void)state;
    expect_fault("smem-total", "launch", "cudaErrorInvalidValue");
    expect_fault("smem-static", "launch", "cudaErrorInvalidValue");
}

/* ------------------------------------------------------------ --bench */

__global__ void k_bench_block_sum(float *out, int reps) {
    LLMQ_SHARED(float, scratch, [32]);
    float v = (float)threadIdx.x, acc = 0.0f;
    for (int r = 0; r < reps; r++) acc += block_sum(v, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = acc;
}
__global__ void k_bench_barrier(float *out, int reps) {
    for (int r = 0; r < reps; r++) __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = 1.0f;
}
__global__ void k_bench_shfl(float *out, int reps) {
    float v = (float)threadIdx.x;
    for (int r = 0; r < reps; r++) v = __shfl_xor_sync(FULL_MASK, v, 1);
    if (threadIdx.x == 0) out[blockIdx.x] = v;
}

__global__ void k_bench_empty(float *out, int reps) {
    if (threadIdx.x == 0 && reps < 0) out[blockIdx.x] = 1.0f;
}

static double cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* Grids run by emu::run_grid on this thread alone (LLMQ_EMU_THREADS=1), timed in this thread's CPU
 * time, so that other load on the machine does not count. */
static int bench(const char *only) {
    float *d = nullptr;
    if (cudaMalloc((void **)&d, 4096) != cudaSuccess) return 1;
    const int nt = 512, nb = 8, reps = 200;
    struct {
        const char *what;
        void (*k)(float *, int);
        double per; /* sync points per thread per rep */
        const char *unit;
        int blocks;
    } cases[] = {
        {"no sync (a thread's start and exit), 512 threads", k_bench_empty, 1.0 / reps, "thread", nb * 100},
        {"__syncthreads, 512 threads", k_bench_barrier, 1, "thread-barrier", nb},
        {"__shfl_xor_sync, 512 threads", k_bench_shfl, 1, "lane-shuffle", nb},
        {"block_sum (2 barriers + 10 shuffles), 512 threads", k_bench_block_sum, 12, "thread-sync point", nb},
    };
    for (auto &c : cases) {
        if (only && !strstr(c.what, only)) continue;
        auto k = c.k;
        double t = 1e300;
        for (int i = 0; i < 7; i++) { /* the best of 7: other load on the machine only adds */
            const double t0 = cpu_ns();
            emu::run_grid("bench", dim3(c.blocks), dim3(nt), 0, [=] { k(d, reps); });
            t = fmin(t, cpu_ns() - t0);
        }
        const double per_thread = t / ((double)c.blocks * nt * reps);
        printf("%-52s %7.1f ns per thread per rep, %5.1f ns per %s\n", c.what, per_thread, per_thread / c.per, c.unit);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strncmp(argv[1], "--child=", 8)) {
        unsetenv("LLMQ_EMU_FATAL");
        return child_run(argv[1] + 8);
    }
    if (argc > 1 && !strncmp(argv[1], "--bench", 7)) { /* --bench[=substring of the cases to run] */
        setenv("LLMQ_EMU_THREADS", "1", 1);
        return bench(argv[1][7] == '=' ? argv[1] + 8 : nullptr);
    }
    unsetenv("LLMQ_EMU_FATAL"); /* the lockstep kernel's reports are expected; faults run in children */
    setenv("LLMQ_EMU_DEVICE", "t4", 1);  /* the limits the shared-memory cases are written for */
    setenv("LLMQ_EMU_MEM_MB", "256", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_indices),
        cmocka_unit_test(test_syncthreads),
        cmocka_unit_test(test_reductions),
        cmocka_unit_test(test_shuffles),
        cmocka_unit_test(test_votes),
        cmocka_unit_test(test_atomics),
        cmocka_unit_test(test_shared_memory),
        cmocka_unit_test(test_no_lockstep),
        cmocka_unit_test(test_barrier_faults),
        cmocka_unit_test(test_shared_memory_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
