/*
 * emu_device.h — the device side of a kernel on the emulated device
 * (emu_exec.cc runs it).  Included by emu.h after CUDA's own headers, which
 * under a host compiler already make __global__/__device__/__host__/
 * __shared__ nothing and give __forceinline__, __align__ and __noinline__
 * GNU meanings; g++ knows __restrict__.  What is left is here:
 *
 *  - threadIdx, blockIdx, blockDim, gridDim: macros calling functions that
 *    return the running thread's values.  They are `const` functions: the
 *    values never change during one kernel thread's life (one fiber runs one
 *    thread of one block), so the compiler may hoist them out of loops, and
 *    they are no memory accesses (the detectors see none).
 *  - __syncthreads (a macro: the barrier's file and line identify it, so that
 *    threads waiting at different barriers are seen), __syncwarp, shuffles,
 *    votes: calls into emu_exec.cc, where the block's fibers meet.
 *  - atomics and fences: GCC's __atomic builtins, inline.  In kernel files
 *    -fsanitize=thread turns them into calls that the detectors implement
 *    (they record an atomic, which never races with an atomic).
 *  - math intrinsics: host versions.  glibc declares __expf, __logf, ...
 *    itself (internal aliases), so those are macros.
 *  - half math CUDA declares only for the device (hexp, hsqrt, ...): via
 *    float, rounded once to the half type.
 */
#ifndef LLMQ_KERNELS_CUDA_EMU_DEVICE_H
#define LLMQ_KERNELS_CUDA_EMU_DEVICE_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------ qualifiers */

/* Only nvcc defines __launch_bounds__ (host_defines.h). */
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#ifndef __grid_constant__
#define __grid_constant__
#endif

/* A built-in variable in CUDA; a constant here (not a macro: cudaDeviceProp has a warpSize field). */
static constexpr int warpSize = 32;

/* ------------------------------------------------------------ indices (emu_exec.cc) */

uint3 emu_thread_idx(void) __attribute__((const));
uint3 emu_block_idx(void) __attribute__((const));
dim3 emu_block_dim(void) __attribute__((const));
dim3 emu_grid_dim(void) __attribute__((const));
#define threadIdx (emu_thread_idx())
#define blockIdx (emu_block_idx())
#define blockDim (emu_block_dim())
#define gridDim (emu_grid_dim())

/* ------------------------------------------------------------ barriers, warp ops (emu_exec.cc) */

void emu_syncthreads(const char *file, int line);
/* op: 0 count, 1 and, 2 or, of pred over the block. */
int emu_syncthreads_op(int pred, int op, const char *file, int line);
#define __syncthreads() emu_syncthreads(__FILE__, __LINE__)
#define __syncthreads_count(pred) emu_syncthreads_op((pred), 0, __FILE__, __LINE__)
#define __syncthreads_and(pred) emu_syncthreads_op((pred), 1, __FILE__, __LINE__)
#define __syncthreads_or(pred) emu_syncthreads_op((pred), 2, __FILE__, __LINE__)

void emu_syncwarp(unsigned mask);
/* The lanes of mask meet; each gets the bits its partner published (mode: EMU_SHFL_*, arg: the
 * source lane, delta or xor mask; width: a power of two <= 32), or its own bits when the partner is
 * outside its width segment as CUDA defines it. */
enum { EMU_SHFL_IDX, EMU_SHFL_UP, EMU_SHFL_DOWN, EMU_SHFL_XOR };
unsigned long long emu_shfl(unsigned mask, unsigned long long bits, int mode, int arg, int width);
/* The lanes of mask meet; returns the ballot of pred over them. */
unsigned emu_vote(unsigned mask, int pred);
unsigned emu_activemask(void);

static inline void __syncwarp(unsigned mask = 0xffffffffu) { emu_syncwarp(mask); }

/* Any type of at most 8 bytes (CUDA: the integer and floating types, __half(2), __nv_bfloat16(2)). */
template <typename T> static inline T emu_shfl_t(unsigned mask, T var, int mode, int arg, int width) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    unsigned long long b = 0;
    __builtin_memcpy((void *)&b, (const void *)&var, sizeof(T));
    b = emu_shfl(mask, b, mode, arg, width);
    T r;
    __builtin_memcpy((void *)&r, (const void *)&b, sizeof(T));
    return r;
}
template <typename T> static inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
    return emu_shfl_t(mask, var, EMU_SHFL_IDX, src_lane, width);
}
template <typename T> static inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return emu_shfl_t(mask, var, EMU_SHFL_UP, (int)delta, width);
}
template <typename T> static inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return emu_shfl_t(mask, var, EMU_SHFL_DOWN, (int)delta, width);
}
template <typename T> static inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
    return emu_shfl_t(mask, var, EMU_SHFL_XOR, lane_mask, width);
}

static inline unsigned __ballot_sync(unsigned mask, int pred) { return emu_vote(mask, pred); }
static inline int __any_sync(unsigned mask, int pred) { return emu_vote(mask, pred) != 0; }
static inline int __all_sync(unsigned mask, int pred) { return emu_vote(mask, pred) == mask; }
static inline unsigned __activemask(void) { return emu_activemask(); }

/* ------------------------------------------------------------ atomics and fences */

/* Sequentially consistent: stronger than a GPU's relaxed atomics, never weaker. */
#define EMU_SC __ATOMIC_SEQ_CST
#define EMU_ATOMIC_INT(T)                                                                                      \
    static inline T atomicAdd(T *p, T v) { return __atomic_fetch_add(p, v, EMU_SC); }                          \
    static inline T atomicSub(T *p, T v) { return __atomic_fetch_sub(p, v, EMU_SC); }                          \
    static inline T atomicExch(T *p, T v) { return __atomic_exchange_n(p, v, EMU_SC); }                        \
    static inline T atomicAnd(T *p, T v) { return __atomic_fetch_and(p, v, EMU_SC); }                          \
    static inline T atomicOr(T *p, T v) { return __atomic_fetch_or(p, v, EMU_SC); }                            \
    static inline T atomicXor(T *p, T v) { return __atomic_fetch_xor(p, v, EMU_SC); }                          \
    static inline T atomicCAS(T *p, T cmp, T v) {                                                              \
        __atomic_compare_exchange_n(p, &cmp, v, false, EMU_SC, EMU_SC);                                        \
        return cmp;                                                                                            \
    }                                                                                                          \
    static inline T atomicMax(T *p, T v) {                                                                     \
        T old = __atomic_load_n(p, EMU_SC);                                                                    \
        while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, EMU_SC, EMU_SC)) {                    \
        }                                                                                                      \
        return old;                                                                                            \
    }                                                                                                          \
    static inline T atomicMin(T *p, T v) {                                                                     \
        T old = __atomic_load_n(p, EMU_SC);                                                                    \
        while (old > v && !__atomic_compare_exchange_n(p, &old, v, true, EMU_SC, EMU_SC)) {                    \
        }                                                                                                      \
        return old;                                                                                            \
    }
EMU_ATOMIC_INT(int)
EMU_ATOMIC_INT(unsigned int)
EMU_ATOMIC_INT(unsigned long long int)
EMU_ATOMIC_INT(long long int)
#undef EMU_ATOMIC_INT

/* Floating point: compare-and-swap on the bits, as CUDA's own fallbacks do. */
#define EMU_ATOMIC_FLOAT(T, U)                                                                                 \
    static inline T atomicAdd(T *p, T v) {                                                                     \
        U *u = (U *)(void *)p, old = __atomic_load_n(u, EMU_SC), nw;                                           \
        T f;                                                                                                   \
        do {                                                                                                   \
            __builtin_memcpy(&f, &old, sizeof f);                                                              \
            f += v;                                                                                            \
            __builtin_memcpy(&nw, &f, sizeof f);                                                               \
        } while (!__atomic_compare_exchange_n(u, &old, nw, true, EMU_SC, EMU_SC));                             \
        __builtin_memcpy(&f, &old, sizeof f);                                                                  \
        return f;                                                                                              \
    }                                                                                                          \
    static inline T atomicExch(T *p, T v) {                                                                    \
        U nw, old;                                                                                             \
        __builtin_memcpy(&nw, &v, sizeof v);                                                                   \
        old = __atomic_exchange_n((U *)(void *)p, nw, EMU_SC);                                                 \
        T f;                                                                                                   \
        __builtin_memcpy(&f, &old, sizeof f);                                                                  \
        return f;                                                                                              \
    }
EMU_ATOMIC_FLOAT(float, unsigned int)
EMU_ATOMIC_FLOAT(double, unsigned long long int)
#undef EMU_ATOMIC_FLOAT

/* atomicInc/atomicDec wrap as CUDA defines them. */
static inline unsigned int atomicInc(unsigned int *p, unsigned int limit) {
    unsigned int old = __atomic_load_n(p, EMU_SC);
    while (!__atomic_compare_exchange_n(p, &old, old >= limit ? 0u : old + 1u, true, EMU_SC, EMU_SC)) {
    }
    return old;
}
static inline unsigned int atomicDec(unsigned int *p, unsigned int limit) {
    unsigned int old = __atomic_load_n(p, EMU_SC);
    while (!__atomic_compare_exchange_n(p, &old, (old == 0u || old > limit) ? limit : old - 1u, true, EMU_SC,
                                        EMU_SC)) {
    }
    return old;
}
#undef EMU_SC

static inline void __threadfence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_system(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/* ------------------------------------------------------------ loads */

template <typename T> static inline T __ldg(const T *p) { return *p; }
template <typename T> static inline T __ldcg(const T *p) { return *p; }
template <typename T> static inline T __ldcs(const T *p) { return *p; }
template <typename T> static inline T __ldlu(const T *p) { return *p; }
template <typename T> static inline void __stcg(T *p, T v) { *p = v; }
template <typename T> static inline void __stcs(T *p, T v) { *p = v; }
template <typename T> static inline void __stwt(T *p, T v) { *p = v; }

/* ------------------------------------------------------------ float intrinsics */

/* The fast intrinsics are computed exactly here (a GPU's are within a few ulp): tolerances cover it. */
static inline float emu_expf(float x) { return expf(x); }
static inline float emu_exp10f(float x) { return exp10f(x); }
static inline float emu_logf(float x) { return logf(x); }
static inline float emu_log2f(float x) { return log2f(x); }
static inline float emu_log10f(float x) { return log10f(x); }
static inline float emu_sinf(float x) { return sinf(x); }
static inline float emu_cosf(float x) { return cosf(x); }
static inline float emu_tanf(float x) { return tanf(x); }
static inline float emu_powf(float x, float y) { return powf(x, y); }
static inline void emu_sincosf(float x, float *s, float *c) { sincosf(x, s, c); }
#define __expf(x) emu_expf(x)
#define __exp10f(x) emu_exp10f(x)
#define __logf(x) emu_logf(x)
#define __log2f(x) emu_log2f(x)
#define __log10f(x) emu_log10f(x)
#define __sinf(x) emu_sinf(x)
#define __cosf(x) emu_cosf(x)
#define __tanf(x) emu_tanf(x)
#define __powf(x, y) emu_powf(x, y)
#define __sincosf(x, s, c) emu_sincosf(x, s, c)

/* glibc has no rsqrt. */
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
static inline float __fdividef(float x, float y) { return x / y; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
static inline float __fadd_rn(float x, float y) { return x + y; }
static inline float __fsub_rn(float x, float y) { return x - y; }
static inline float __fmul_rn(float x, float y) { return x * y; }
static inline float __fdiv_rn(float x, float y) { return x / y; }
static inline float __fmaf_rn(float x, float y, float z) { return fmaf(x, y, z); }
static inline double __dadd_rn(double x, double y) { return x + y; }
static inline double __dmul_rn(double x, double y) { return x * y; }
static inline double __fma_rn(double x, double y, double z) { return fma(x, y, z); }
/* Clamp to [0, 1]; NaN gives 0 (CUDA). */
static inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }

static inline int __float_as_int(float x) {
    int i;
    memcpy(&i, &x, sizeof i);
    return i;
}
static inline unsigned int __float_as_uint(float x) {
    unsigned int i;
    memcpy(&i, &x, sizeof i);
    return i;
}
static inline float __int_as_float(int i) {
    float x;
    memcpy(&x, &i, sizeof x);
    return x;
}
static inline float __uint_as_float(unsigned int i) {
    float x;
    memcpy(&x, &i, sizeof x);
    return x;
}
static inline long long __double_as_longlong(double x) {
    long long i;
    memcpy(&i, &x, sizeof i);
    return i;
}
static inline double __longlong_as_double(long long i) {
    double x;
    memcpy(&x, &i, sizeof x);
    return x;
}

/* ------------------------------------------------------------ integer intrinsics */

static inline int __popc(unsigned int x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
static inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline unsigned int __brev(unsigned int x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(x);
}
static inline int __mulhi(int x, int y) { return (int)(((long long)x * y) >> 32); }
static inline unsigned int __umulhi(unsigned int x, unsigned int y) {
    return (unsigned int)(((unsigned long long)x * y) >> 32);
}
static inline int __mul24(int x, int y) { return (int)((long long)(x << 8 >> 8) * (y << 8 >> 8)); }
static inline unsigned int __umul24(unsigned int x, unsigned int y) { return (x & 0xffffffu) * (y & 0xffffffu); }

/* CUDA's device min/max overloads (its host headers give them only under nvcc). */
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
static inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
static inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
static inline long min(long a, long b) { return a < b ? a : b; }
static inline long max(long a, long b) { return a > b ? a : b; }
static inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
static inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
/* Mixed signedness compares as unsigned, as C does and CUDA's overloads do. */
static inline unsigned int min(int a, unsigned int b) { return min((unsigned int)a, b); }
static inline unsigned int max(int a, unsigned int b) { return max((unsigned int)a, b); }
static inline unsigned int min(unsigned int a, int b) { return min(a, (unsigned int)b); }
static inline unsigned int max(unsigned int a, int b) { return max(a, (unsigned int)b); }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }

/* ------------------------------------------------------------ half math (device-only in CUDA's headers) */

#define EMU_HALF_FN(T, name, expr, from)                                                                       \
    static inline T name(const T a) {                                                                          \
        const float x = emu_to_float(a);                                                                       \
        return from(expr);                                                                                     \
    }
static inline float emu_to_float(__half a) { return __half2float(a); }
static inline float emu_to_float(__nv_bfloat16 a) { return __bfloat162float(a); }
EMU_HALF_FN(__half, hexp, expf(x), __float2half_rn)
EMU_HALF_FN(__half, hexp2, exp2f(x), __float2half_rn)
EMU_HALF_FN(__half, hlog, logf(x), __float2half_rn)
EMU_HALF_FN(__half, hlog2, log2f(x), __float2half_rn)
EMU_HALF_FN(__half, hsqrt, sqrtf(x), __float2half_rn)
EMU_HALF_FN(__half, hrsqrt, 1.0f / sqrtf(x), __float2half_rn)
EMU_HALF_FN(__half, hrcp, 1.0f / x, __float2half_rn)
EMU_HALF_FN(__half, hsin, sinf(x), __float2half_rn)
EMU_HALF_FN(__half, hcos, cosf(x), __float2half_rn)
EMU_HALF_FN(__half, htanh, tanhf(x), __float2half_rn)
EMU_HALF_FN(__nv_bfloat16, hexp, expf(x), __float2bfloat16_rn)
EMU_HALF_FN(__nv_bfloat16, hexp2, exp2f(x), __float2bfloat16_rn)
EMU_HALF_FN(__nv_bfloat16, hlog, logf(x), __float2bfloat16_rn)
EMU_HALF_FN(__nv_bfloat16, hlog2, log2f(x), __float2bfloat16_rn)
EMU_HALF_FN(__nv_bfloat16, hsqrt, sqrtf(x), __float2bfloat16_rn)
EMU_HALF_FN(__nv_bfloat16, hrsqrt, 1.0f / sqrtf(x), __float2bfloat16_rn)
EMU_HALF_FN(__nv_bfloat16, hrcp, 1.0f / x, __float2bfloat16_rn)
EMU_HALF_FN(__nv_bfloat16, hsin, sinf(x), __float2bfloat16_rn)
EMU_HALF_FN(__nv_bfloat16, hcos, cosf(x), __float2bfloat16_rn)
EMU_HALF_FN(__nv_bfloat16, htanh, tanhf(x), __float2bfloat16_rn)
#undef EMU_HALF_FN
#define EMU_HALF2_FN(T2, name, fn)                                                                             \
    static inline T2 name(const T2 a) {                                                                        \
        T2 r;                                                                                                  \
        r.x = fn(a.x);                                                                                         \
        r.y = fn(a.y);                                                                                         \
        return r;                                                                                              \
    }
EMU_HALF2_FN(__half2, h2exp, hexp)
EMU_HALF2_FN(__half2, h2exp2, hexp2)
EMU_HALF2_FN(__half2, h2log, hlog)
EMU_HALF2_FN(__half2, h2sqrt, hsqrt)
EMU_HALF2_FN(__half2, h2rsqrt, hrsqrt)
EMU_HALF2_FN(__half2, h2rcp, hrcp)
EMU_HALF2_FN(__nv_bfloat162, h2exp, hexp)
EMU_HALF2_FN(__nv_bfloat162, h2exp2, hexp2)
EMU_HALF2_FN(__nv_bfloat162, h2log, hlog)
EMU_HALF2_FN(__nv_bfloat162, h2sqrt, hsqrt)
EMU_HALF2_FN(__nv_bfloat162, h2rsqrt, hrsqrt)
EMU_HALF2_FN(__nv_bfloat162, h2rcp, hrcp)
#undef EMU_HALF2_FN

#endif
