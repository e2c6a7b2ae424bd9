/*
 * matmul_isa.h — the instruction-set variants of the F32/F16/BF16 matmul
 * (matmul.c dispatches on cpu_impl.isa, isa.h).  Each variant is compiled in
 * its own file for its ISA (matmul_<isa>.c, Makefile); call one only when
 * cpu_isa_supported() says so.
 */
#ifndef LLMQ_KERNELS_CPU_MATMUL_ISA_H
#define LLMQ_KERNELS_CPU_MATMUL_ISA_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"

/* One row tile: out[j * ldo + r] = w[r, :k] . x[j, :k] (+ bias[r]) for rows
 * [0, rows) of w (dtype dt, row stride ld elements) and inputs j in [0, n)
 * (x row stride k).  pf_end: the end of the whole weight matrix, so the
 * prefetch of the next rows never reads past it; NULL: no prefetch.  Every
 * result is the same bits whatever rows, n or the tile (matmul_tmpl.h). */
typedef void matmul_tile_fn(const void *w, llmq_dtype dt, int rows, int k, size_t ld, const float *x, int n,
                            float *out, int ldo, const float *bias, const char *pf_end);

matmul_tile_fn cpu_matmul_tile_generic; /* matmul.c: portable C vectors */
matmul_tile_fn cpu_matmul_tile_avx2;    /* matmul_avx2.c: 8-lane FMA, F16C */
matmul_tile_fn cpu_matmul_tile_avx512;  /* matmul_avx512.c: 16-lane FMA, masked k tail */

/* AVX512-BF16 (matmul_avx512bf16.c): BF16 weights only, against inputs
 * already rounded to BF16 (xb, row stride kx >= k elements, see
 * cpu_matmul_round_bf16): vdpbf16ps, FP32 accumulation, one accumulator per
 * dot product fed pairs of k in order, the last k % 32 elements as one
 * masked step; the same bits for every n. */
void cpu_matmul_tile_bf16dp_avx512bf16(const uint16_t *w, int rows, int k, size_t ld, const uint16_t *xb,
                                       size_t kx, int n, float *out, int ldo, const float *bias,
                                       const char *pf_end);

/* x[n, k] F32 -> xb[n, kx] BF16, round to nearest even (NaN kept a NaN),
 * the kx - k padding zeroed. */
void cpu_matmul_round_bf16_avx512bf16(uint16_t *xb, size_t kx, const float *x, int n, int k);

#endif
