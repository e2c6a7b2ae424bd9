/*
 * test_cpu_isa.c — the run-time choice of the CPU kernels' path
 * (kernels/cpu/isa.h): the best supported path by default, LLMQ_CPU_ISA
 * forcing any supported one, and a clear error (no backend) for an unknown
 * name or a path this processor lacks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/cpu/isa.h"

static void test_default_is_best(void **st) {
    (void)st;
    unsetenv("LLMQ_CPU_ISA");
    llmq_err err = {0};
    llmq_backend *be = llmq_backend_create("cpu", &err);
    assert_non_null(be);
    assert_string_equal(be->isa, cpu_isa_name(cpu_isa_best()));
    llmq_backend_destroy(be);
    /* the reference backend has one path, whatever LLMQ_CPU_ISA says */
    setenv("LLMQ_CPU_ISA", "no-such-isa", 1);
    be = llmq_backend_create("cpu-ref", &err);
    assert_non_null(be);
    assert_string_equal(be->isa, "scalar");
    llmq_backend_destroy(be);
    unsetenv("LLMQ_CPU_ISA");
}

static void test_forced(void **st) {
    (void)st;
    cpu_isa list[CPU_ISA_COUNT];
    const int n = cpu_isa_list(list);
    assert_true(n >= 1);
    assert_int_equal(list[0], CPU_ISA_GENERIC);
#if defined(__x86_64__)
    assert_true(n >= 2); /* every x86-64 this project runs on has AVX2 */
#endif
    for (int i = 0; i < CPU_ISA_COUNT; i++) {
        llmq_err err = {0};
        setenv("LLMQ_CPU_ISA", cpu_isa_name((cpu_isa)i), 1);
        llmq_backend *be = llmq_backend_create("cpu", &err);
        if (cpu_isa_supported((cpu_isa)i)) {
            assert_non_null(be);
            assert_string_equal(be->isa, cpu_isa_name((cpu_isa)i));
            llmq_backend_destroy(be);
        } else {
            assert_null(be);
            assert_int_equal(err.code, LLMQ_ERR_UNSUPPORTED);
            assert_non_null(strstr(err.msg, "does not support"));
        }
    }
    llmq_err err = {0};
    setenv("LLMQ_CPU_ISA", "avx1024", 1);
    assert_null(llmq_backend_create("cpu", &err));
    assert_int_equal(err.code, LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "avx1024"));
    unsetenv("LLMQ_CPU_ISA");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_is_best),
        cmocka_unit_test(test_forced),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
