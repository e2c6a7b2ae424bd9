/*
 * attention_isa.h — the instruction-set variants of the CPU attention
 * (attention.c dispatches on cpu_impl.isa, isa.h), and the rounding of K/V
 * rows to the KV cache's element type (llmq_backend.kv_dt).
 *
 * Each variant is the same kernel (attention_tmpl.h) over that ISA's
 * vector helpers, compiled in its own file for its ISA (attention_<isa>.c,
 * Makefile); call one only when cpu_isa_supported() says so.
 */
#ifndef LLMQ_KERNELS_CPU_ATTENTION_ISA_H
#define LLMQ_KERNELS_CPU_ATTENTION_ISA_H

#include <stdint.h>
#include <string.h>

#include "kernels/backend.h"

/* Positions per online-softmax chunk.  Chunks sit at absolute positions
 * (multiples of ATTN_CHUNK), so a query's sums never depend on the tile or
 * the step it is computed in (backend.h's invariance). */
#define ATTN_CHUNK 64
/* Query rows (tokens x the query heads of one KV head) per tile: K/V of a
 * chunk are read (and widened) once per tile. */
#define ATTN_TILE_ROWS 32

typedef void attention_fn(llmq_backend *be, void *out, const void *q, const void *k_cache, const void *v_cache,
                          const be_attn_step *step, const be_attn_shape *shape);

attention_fn cpu_attention_generic; /* attention.c: portable C, one accumulator per dot */
attention_fn cpu_attention_avx2;    /* attention_avx2.c: 8-lane FMA, F16C */
attention_fn cpu_attention_avx512;  /* attention_avx512.c: 16-lane FMA, masked tails (also "avx512bf16") */

/* F32 -> BF16, round to nearest even; a NaN stays a (quiet) NaN. */
static inline uint16_t attn_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

/* F32 -> F16 (IEEE binary16), round to nearest even, subnormals kept,
 * beyond the largest finite value (65504) an infinity. */
static inline uint16_t attn_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00;  /* NaN */
    if (a >= 0x477ff000u) return sign | 0x7c00; /* >= 65520 rounds to infinity */
    if (a >= 0x38800000u) {                     /* normal: rebias, round 13 bits away */
        uint32_t r = a - 0x38000000u;
        r += 0xfffu + ((r >> 13) & 1);
        return (uint16_t)(sign | (r >> 13));
    }
    if (a <= 0x33000000u) return sign; /* <= 2^-25: rounds to zero (2^-25 is a tie, to even) */
    /* subnormal: the value in units of 2^-24, rounded to nearest even */
    const int shift = 126 - (int)(a >> 23); /* 14 .. 24 */
    const uint32_t m = (a & 0x7fffffu) | 0x800000u, half = 1u << (shift - 1);
    const uint32_t rem = m & ((1u << shift) - 1);
    uint32_t qv = m >> shift;
    if (rem > half || (rem == half && (qv & 1))) qv++;
    return (uint16_t)(sign | qv);
}

#endif
