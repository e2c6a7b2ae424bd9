/*
 * readbw.h — the machine's memory read bandwidth, measured so that it is a
 * ceiling for what a decode step can read (llmq bench's roofline).
 *
 * A decode step streams every weight once, by all OpenMP threads of the
 * kernels' pool, each over its own static share.  The probe does the same
 * over a buffer many times the last-level cache (so no pass is served from
 * it), with the widest loads the processor has (the instruction-set path of
 * isa.h), and takes the best pass of two loops interleaved: one sequential
 * stream per thread (what the hardware prefetchers track best) and four
 * independent streams per thread with software prefetch (more misses in
 * flight, what a core needs to saturate memory on its own).  Best of N
 * passes, because a shared machine is never quieter than its best moment.
 */
#ifndef LLMQ_KERNELS_CPU_READBW_H
#define LLMQ_KERNELS_CPU_READBW_H

#include <stddef.h>

#include "common/status.h"
#include "kernels/cpu/isa.h"

typedef struct cpu_readbw {
    double gbs;          /* best pass, GB/s (1e9 bytes) */
    size_t bytes;        /* buffer read by each pass */
    int threads;         /* OpenMP threads that read it */
    int passes;          /* passes of each loop */
    const char *loop;    /* the loop of the best pass: "1 stream" or "4 streams + prefetch" */
    const char *isa;     /* its instruction-set path */
} cpu_readbw;

/* The default buffer: 1 GiB, or 8 times the last-level cache when larger. */
size_t cpu_readbw_default_bytes(void);

/* Measure with `bytes` (0: the default) read `passes` times by each loop,
 * with the loads of `isa`. */
llmq_status cpu_readbw_measure(cpu_readbw *out, cpu_isa isa, size_t bytes, int passes, llmq_err *err);

/* ---- per-ISA loops (readbw_<isa>.c): sum n floats of p, p 64-byte aligned,
 * n a multiple of 512; loop 0 = one stream, 1 = four streams + prefetch. */
double cpu_readbw_sum_generic(const float *p, size_t n, int loop);
double cpu_readbw_sum_avx2(const float *p, size_t n, int loop);
double cpu_readbw_sum_avx512(const float *p, size_t n, int loop);

#endif
