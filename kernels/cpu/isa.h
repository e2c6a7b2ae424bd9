/*
 * isa.h — which instruction-set path the CPU kernels take, chosen at run
 * time (CPUID), not at build time.
 *
 * A kernel with ISA variants keeps each in its own file, <op>_<isa>.c, which
 * the Makefile compiles with that ISA's flags whatever ARCH the rest of the
 * build uses, so one binary carries every path and runs on any x86-64 with
 * AVX2 (docs/architecture.md "CPU kernels").  The backend picks the widest
 * path the processor and the OS support; LLMQ_CPU_ISA=NAME forces one (an
 * unknown name, or one this processor lacks, is an error at backend
 * creation, never a silent fallback).
 *
 * Paths, narrowest first:
 *   generic     the portable C of the base files (compiled for ARCH)
 *   avx2        AVX2 + FMA + F16C, 256-bit
 *   avx512      AVX-512 F/BW/DQ/VL, 512-bit
 *   avx512bf16  avx512 + AVX512-BF16 (vdpbf16ps for BF16 weights)
 * Each path is batch invariant on its own (backend.h); two paths may differ
 * from each other in the last bits.
 */
#ifndef LLMQ_KERNELS_CPU_ISA_H
#define LLMQ_KERNELS_CPU_ISA_H

#include "common/status.h"

typedef enum {
    CPU_ISA_GENERIC = 0,
    CPU_ISA_AVX2,
    CPU_ISA_AVX512,
    CPU_ISA_AVX512BF16,
    CPU_ISA_COUNT
} cpu_isa;

/* "generic", "avx2", "avx512", "avx512bf16". */
const char *cpu_isa_name(cpu_isa isa);

/* 1 when this processor (and OS: the register state is saved) runs isa. */
int cpu_isa_supported(cpu_isa isa);

/* The widest supported path. */
cpu_isa cpu_isa_best(void);

/* The path the backend takes: LLMQ_CPU_ISA when set (checked), else the best.
 * LLMQ_OK, or LLMQ_ERR_INVALID / LLMQ_ERR_UNSUPPORTED with a message. */
llmq_status cpu_isa_select(cpu_isa *out, llmq_err *err);

/* Every supported path, narrowest first, into out[CPU_ISA_COUNT]; the count. */
int cpu_isa_list(cpu_isa *out);

#endif
