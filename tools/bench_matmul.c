/*
 * bench_matmul.c — the CPU matmul per instruction-set path (isa.h), as the
 * 110M shape's matmuls see it: out[n, m] = x[n, k] . W[m, k]^T over the
 * layer's shapes (768x768 q/k/v/o, 2048x768 gate/up, 768x2048 down) for n =
 * 1, 8, 32, 512, F32 and BF16 weights.  Paths run interleaved (A B C A B C
 * ...) and each keeps its best of N rounds, so a machine shared with other
 * work disturbs the ratios least; one thread is timed by its CPU time.  Prints, per (dtype, n, threads, path): the
 * best ms per layer's matmuls, GFLOP/s and GB/s of weights read.
 *
 *   tools/bench_matmul.sh [rounds]     (builds against $BUILD's libraries)
 */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <immintrin.h>

#include "kernels/backend.h"
#include "kernels/cpu/isa.h"

/* Wall time; with one thread its CPU time instead (the machine may be shared:
 * time slices lost to other processes do not count). */
static double now(int thr) {
    struct timespec t;
    clock_gettime(thr == 1 ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* The peak: a loop of independent FMAs (vfmadd231ps zmm, 16 lanes x 2 flops)
 * or vdpbf16ps (16 lanes x 2 pairs x 2 flops) on registers only, 12 chains
 * (more than latency x throughput on current cores), timed like the rest:
 * what one core can issue, the ceiling of the matmul on that path. */
#define PEAK_ITERS 4000000L
__attribute__((target("avx512f"))) static double peak_fma(void) {
    __m512 a[12], b = _mm512_set1_ps(1.0f), c = _mm512_set1_ps(1e-9f);
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < PEAK_ITERS; it++)
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], b, c);
    float s = 0;
    for (int i = 0; i < 12; i++) s += _mm512_reduce_add_ps(a[i]);
    return s;
}
__attribute__((target("avx512f,avx512bf16"))) static double peak_dpbf16(void) {
    __m512 a[12];
    __m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80), c = (__m512bh)_mm512_set1_epi16(0x3000);
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < PEAK_ITERS; it++)
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = _mm512_dpbf16_ps(a[i], b, c);
    float s = 0;
    for (int i = 0; i < 12; i++) s += _mm512_reduce_add_ps(a[i]);
    return s;
}

static const int shapes[][2] = {{768, 768}, {768, 768}, {768, 768}, {768, 768}, {2048, 768}, {2048, 768}, {768, 2048}};
#define NSHAPES 7
#define LAYERS 12 /* distinct weights per round, so decode reads memory, not cache */

int main(int argc, char **argv) {
    const int rounds = argc > 1 ? atoi(argv[1]) : 5;
    cpu_isa isas[CPU_ISA_COUNT];
    const int nisa = cpu_isa_list(isas);
    llmq_backend *be[CPU_ISA_COUNT];
    for (int i = 0; i < nisa; i++) {
        setenv("LLMQ_CPU_ISA", cpu_isa_name(isas[i]), 1);
        llmq_err err = {0};
        if (!(be[i] = llmq_backend_create("cpu", &err))) return fprintf(stderr, "%s\n", err.msg), 1;
    }
    const int ns[] = {1, 8, 32, 512};
    const llmq_dtype dts[] = {LLMQ_F32, LLMQ_BF16};
    const int maxt = omp_get_max_threads();
    float *x = malloc(sizeof(float) * 512 * 2048), *out = malloc(sizeof(float) * 512 * 2048);
    for (int i = 0; i < 512 * 2048; i++) x[i] = (float)((i * 7919u) % 2001u) * 1e-3f - 1.0f;
    if (cpu_isa_supported(CPU_ISA_AVX512)) {
        double tf = 1e30, tb = 1e30, chk = 0;
        const int bf16 = cpu_isa_supported(CPU_ISA_AVX512BF16);
        for (int r = 0; r < 2 * rounds; r++) { /* best of several, interleaved */
            double t0 = now(1);
            chk += peak_fma();
            double t = now(1) - t0;
            if (t < tf) tf = t;
            if (!bf16) continue;
            t0 = now(1);
            chk += peak_dpbf16();
            t = now(1) - t0;
            if (t < tb) tb = t;
        }
        printf("peak (one core, CPU time): F32 FMA zmm %.1f GFLOP/s", 12.0 * PEAK_ITERS * 32 / tf / 1e9);
        if (bf16) printf(", vdpbf16ps zmm %.1f GFLOP/s", 12.0 * PEAK_ITERS * 64 / tb / 1e9);
        printf("%s\n", chk == 42.0 ? " " : "");
    }
    printf("path        dtype  n    thr   ms/layer(1 thr: cpu)  GFLOP/s  GB/s(weights)\n");
    for (int d = 0; d < 2; d++) {
        const size_t es = dts[d] == LLMQ_F32 ? 4 : 2;
        be_weight w[LAYERS][NSHAPES];
        double bytes = 0, flop1 = 0;
        for (int l = 0; l < LAYERS; l++)
            for (int s = 0; s < NSHAPES; s++) {
                const size_t cnt = (size_t)shapes[s][0] * shapes[s][1];
                void *p = malloc(cnt * es);
                for (size_t i = 0; i < cnt; i++) {
                    float v = (float)((i * 2654435761u) % 1999 - 999) * 1e-4f;
                    uint32_t u;
                    memcpy(&u, &v, 4);
                    if (es == 4) ((float *)p)[i] = v;
                    else ((uint16_t *)p)[i] = (uint16_t)(u >> 16);
                }
                w[l][s] = (be_weight){p, dts[d], shapes[s][0], shapes[s][1], 0};
                if (l == 0) bytes += (double)cnt * es, flop1 += 2.0 * (double)cnt;
            }
        for (int ni = 0; ni < 4; ni++)
            for (int thr = 1; thr <= maxt; thr *= 2) {
                omp_set_num_threads(thr);
                const int n = ns[ni], layers = n >= 32 ? 2 : LAYERS;
                double best[CPU_ISA_COUNT];
                for (int i = 0; i < nisa; i++) best[i] = 1e30;
                for (int r = 0; r < rounds; r++)
                    for (int i = 0; i < nisa; i++) {
                        double t0 = now(thr);
                        for (int l = 0; l < layers; l++)
                            for (int s = 0; s < NSHAPES; s++) be[i]->ops->matmul(be[i], out, x, &w[l][s], NULL, n);
                        double t = (now(thr) - t0) / layers;
                        if (t < best[i]) best[i] = t;
                    }
                /* the paths agree (last layer's down matmul, path 0 as the yardstick) */
                float *o0 = malloc(sizeof(float) * (size_t)n * 768);
                be[0]->ops->matmul(be[0], o0, x, &w[0][NSHAPES - 1], NULL, n);
                for (int i = 0; i < nisa; i++) {
                    be[i]->ops->matmul(be[i], out, x, &w[0][NSHAPES - 1], NULL, n);
                    double e = 0, a = 0;
                    for (int q = 0; q < n * 768; q++) {
                        double dq = (double)out[q] - o0[q];
                        e += dq * dq, a += (double)o0[q] * o0[q];
                    }
                    if (be[i]->err.code || !(e <= 1e-4 * a))
                        return fprintf(stderr, "%s: wrong results (%s)\n", cpu_isa_name(isas[i]), be[i]->err.msg), 1;
                }
                free(o0);
                for (int i = 0; i < nisa; i++)
                    printf("%-11s %-6s %-4d %-4d %9.3f %8.1f %8.1f\n", cpu_isa_name(isas[i]), llmq_dtype_name(dts[d]),
                           n, thr, best[i] * 1e3, flop1 * n / best[i] / 1e9, bytes / best[i] / 1e9);
                fflush(stdout);
            }
        for (int l = 0; l < LAYERS; l++)
            for (int s = 0; s < NSHAPES; s++) free((void *)w[l][s].data);
    }
    for (int i = 0; i < nisa; i++) llmq_backend_destroy(be[i]);
    free(x);
    free(out);
    return 0;
}
