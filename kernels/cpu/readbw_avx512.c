/* readbw_avx512.c — the bandwidth probe's loops with 512-bit loads (readbw.h),
 * compiled with the Makefile's AVX-512 flags. */
#include "kernels/cpu/readbw.h"

#if defined(__x86_64__)
typedef float rb_v __attribute__((vector_size(64)));
#define RB_FN(name) name##_avx512
#include "kernels/cpu/readbw_tmpl.h"
#else
double cpu_readbw_sum_avx512(const float *p, size_t n, int loop) { return cpu_readbw_sum_generic(p, n, loop); }
#endif
