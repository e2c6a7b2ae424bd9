/*
 * bench_qmatmul.c — the CPU backend's Q8/Q4 matmul and its elementwise ops
 * per instruction-set path (kernels/cpu/isa.h), on the 110M shape (dim 768,
 * MLP 2048, 12 layers, 12 heads of 64, vocabulary 32000):
 *   - a decode step's quantized matmuls (12 layers of distinct weights and
 *     the lm_head, so decode reads memory) at n = 1, 8, 32 inputs, and one
 *     layer's at n = 512 (prefill);
 *   - a step's rmsnorm (2 add_rmsnorm a layer), rope and swiglu, and apart
 *     (Falcon's) 2 layernorm and a gelu a layer.
 * Paths interleaved, best of the rounds, timed by the process's CPU time
 * (run it with one OpenMP thread on a shared machine: descheduled time is
 * then not counted).  Usage: bench_qmatmul [rounds]  (tools/bench_qmatmul.sh)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/backend.h"
#include "kernels/cpu/isa.h"
#include "kernels/quant.h"

static double cpu_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static unsigned rnd_state = 1;
static float rnd(void) {
    rnd_state = rnd_state * 1664525u + 1013904223u;
    return (float)(rnd_state >> 8) / 16777216.0f - 0.5f;
}

int main(int argc, char **argv) {
    const int rounds = argc > 1 ? atoi(argv[1]) : 9;
    cpu_isa isas[CPU_ISA_COUNT];
    const int np = cpu_isa_list(isas);
    llmq_backend *be[CPU_ISA_COUNT];
    for (int p = 0; p < np; p++) {
        setenv("LLMQ_CPU_ISA", cpu_isa_name(isas[p]), 1);
        be[p] = llmq_backend_create("cpu", NULL);
        if (!be[p]) return 1;
    }
    enum { D = 768, I = 2048, L = 12, H = 12, HD = 64, V = 32000, NMAX = 512 };
    static const int shp[8][2] = {{D, D}, {D, D}, {D, D}, {D, D}, {I, D}, {I, D}, {D, I}, {V, D}};
    const int nw = L * 7 + 1;
    float *wf = malloc(sizeof(float) * V * D), *x = malloc(sizeof(float) * NMAX * I);
    float *o = malloc(sizeof(float) * NMAX * V);
    be_weight *w = calloc((size_t)nw, sizeof *w);
    void **mem = calloc((size_t)nw, sizeof *mem);
    if (!wf || !x || !o || !w || !mem) return 1;
    for (size_t i = 0; i < (size_t)V * D; i++) wf[i] = 0.1f * rnd();
    for (size_t i = 0; i < (size_t)NMAX * I; i++) x[i] = rnd();
    static const int ns[] = {1, 8, 32, 512};
    for (int q = LLMQ_QUANT_INT8; q <= LLMQ_QUANT_INT4; q++) {
        for (int i = 0; i < nw; i++) {
            const int t = i == nw - 1 ? 7 : i % 7;
            be_weight src = {wf, LLMQ_F32, shp[t][0], shp[t][1], shp[t][1]};
            free(mem[i]);
            if (llmq_quantize(&w[i], &mem[i], &src, (llmq_quant)q, LLMQ_Q4_GROUP, NULL)) return 1;
        }
        for (int a = 0; a < 4; a++) {
            const int n = ns[a], hi = n == NMAX ? 7 : nw; /* prefill: one layer, no lm_head */
            double best[CPU_ISA_COUNT], flop = 0;
            for (int i = 0; i < hi; i++) flop += 2.0 * w[i].rows * w[i].cols * n;
            for (int p = 0; p < np; p++) best[p] = 1e30;
            for (int r = 0; r < rounds; r++)
                for (int p = 0; p < np; p++) {
                    const double t0 = cpu_s();
                    for (int i = 0; i < hi; i++) be[p]->ops->matmul(be[p], o, x, &w[i], NULL, n);
                    const double t = cpu_s() - t0;
                    if (t < best[p]) best[p] = t;
                }
            printf("%s %s n=%-3d", llmq_quant_name((llmq_quant)q), n == NMAX ? "1 layer" : "step   ", n);
            for (int p = 0; p < np; p++)
                printf("  %s %7.2f ms %4.0f GFLOP/s", cpu_isa_name(isas[p]), best[p] * 1e3, flop / best[p] * 1e-9);
            printf("\n");
        }
    }
    /* elementwise ops of a step: 2 add_rmsnorm, rope, swiglu a layer */
    float *a = malloc(sizeof(float) * NMAX * I), *b = malloc(sizeof(float) * NMAX * I);
    float *c = malloc(sizeof(float) * NMAX * I), *nw_ = malloc(sizeof(float) * D), *inv = malloc(sizeof(float) * HD);
    int32_t *pos = malloc(sizeof(int32_t) * NMAX);
    if (!a || !b || !c || !nw_ || !inv || !pos) return 1;
    for (int i = 0; i < D; i++) nw_[i] = 1.0f + 0.01f * rnd();
    for (int i = 0; i < HD / 2; i++) inv[i] = powf(10000.0f, -2.0f * i / HD);
    for (int i = 0; i < NMAX; i++) pos[i] = 100 + i;
    static const char *names[] = {"add_rmsnorm x2", "rope", "swiglu", "layernorm x2", "gelu"};
    for (int s = 0; s < 4; s++) {
        const int n = ns[s];
        double tot[CPU_ISA_COUNT] = {0};
        for (int op = 0; op < 5; op++) {
            double best[CPU_ISA_COUNT];
            for (int p = 0; p < np; p++) best[p] = 1e30;
            for (int r = 0; r < rounds; r++)
                for (int p = 0; p < np; p++) {
                    for (size_t i = 0; i < (size_t)n * I; i++) { /* the same inputs every time */
                        a[i] = 2.0f * rnd();
                        b[i] = rnd();
                        c[i] = 0.01f * rnd();
                    }
                    llmq_backend *e = be[p];
                    const double t0 = cpu_s();
                    for (int l = 0; l < L; l++) {
                        if (op == 0) {
                            e->ops->add_rmsnorm(e, b, a, c, nw_, n, D, 1e-5f);
                            e->ops->add_rmsnorm(e, b, a, c, nw_, n, D, 1e-5f);
                        } else if (op == 1) {
                            e->ops->rope(e, a, b, pos, n, H, H, HD, inv);
                        } else if (op == 2) {
                            e->ops->swiglu(e, c, a, b, n, I);
                        } else if (op == 3) {
                            e->ops->layernorm(e, b, a, nw_, nw_, n, D, 1e-5f);
                            e->ops->layernorm(e, b, a, nw_, nw_, n, D, 1e-5f);
                        } else {
                            e->ops->gelu(e, c, a, (size_t)n * I);
                        }
                    }
                    const double t = cpu_s() - t0;
                    if (t < best[p]) best[p] = t;
                }
            printf("elementwise n=%-3d %-15s", n, names[op]);
            for (int p = 0; p < np; p++) {
                printf("  %s %8.1f us", cpu_isa_name(isas[p]), best[p] * 1e6);
                if (op < 3) tot[p] += best[p];
            }
            printf("\n");
        }
        printf("elementwise n=%-3d %-15s", n, "llama step");
        for (int p = 0; p < np; p++) printf("  %s %8.1f us", cpu_isa_name(isas[p]), tot[p] * 1e6);
        printf("\n");
    }
    return 0;
}
