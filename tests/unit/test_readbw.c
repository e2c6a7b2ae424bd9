/* test_readbw.c — the bandwidth probe (kernels/cpu/readbw.c) reads every
 * byte it times: each loop of each instruction-set path this processor runs
 * sums a buffer of ones to its exact length (a loop that skipped part of it
 * would report a bandwidth it never read), and a small measurement reports
 * its buffer, threads and loop. */
#include <omp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kernels/cpu/readbw.h"

typedef double (*sum_fn)(const float *, size_t, int);

static void test_every_loop_reads_everything(void **state) {
    static const size_t sizes[] = {512, 1024, 512 * 7, 512 * 64 + 512};
    float *p = aligned_alloc(64, sizes[3] * sizeof(float));
    assert_non_null(p);
    for (size_t i = 0; i < sizes[3]; i++) p[i] = 1.0f;
    const struct {
        cpu_isa isa;
        sum_fn fn;
    } paths[] = {{CPU_ISA_GENERIC, cpu_readbw_sum_generic},
                 {CPU_ISA_AVX2, cpu_readbw_sum_avx2},
                 {CPU_ISA_AVX512, cpu_readbw_sum_avx512}};
    for (size_t k = 0; k < sizeof paths / sizeof paths[0]; k++) {
        if (!cpu_isa_supported(paths[k].isa)) continue;
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
            for (int loop = 0; loop < 2; loop++)
                if (paths[k].fn(p, sizes[s], loop) != (double)sizes[s])
                    fail_msg("%s loop %d over %zu floats: %.0f", cpu_isa_name(paths[k].isa), loop, sizes[s],
                             paths[k].fn(p, sizes[s], loop));
    }
    free(p);
}

static void test_measure(void **state) {
    cpu_readbw r;
    llmq_err err = {0};
    memset(&r, 0, sizeof r);
    assert_int_equal(cpu_readbw_measure(&r, cpu_isa_best(), 3 << 20, 2, &err), LLMQ_OK);
    assert_true(r.gbs > 0);
    assert_int_equal(r.bytes, 4 << 20); /* whole 2 MiB pages */
    assert_int_equal(r.threads, omp_get_max_threads());
    assert_int_equal(r.passes, 2);
    assert_true(!strcmp(r.loop, "1 stream") || !strcmp(r.loop, "4 streams + prefetch"));
    assert_string_equal(r.isa, cpu_isa_name(cpu_isa_best()));
    assert_true(cpu_readbw_default_bytes() >= (size_t)1 << 30);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_loop_reads_everything),
        cmocka_unit_test(test_measure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
