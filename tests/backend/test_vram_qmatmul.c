/*
 * test_vram_qmatmul.c — weight-only quantization (kernels/quant.h) and the
 * CPU kernels that read it (kernels/cpu/qmatmul.c):
 *
 *  - quantization error: every dequantized element within half a step of
 *    the original (Q8: scale/2 per row; Q4: scale/2 per group, 0 exact);
 *  - the fast and the reference backend against an F32 matmul of the
 *    dequantized matrix (the independent oracle: cpu-ref over plain F32),
 *    on many shapes (k not a multiple of 8 or of the group, odd columns,
 *    F16/BF16 sources), outputs guarded by sentinels;
 *  - batch invariance: a row computed alone is bitwise the row computed in
 *    a batch, across the register and the scratch routes (generic: n <= 4
 *    in registers; avx2: n <= 8, Q4 n <= 4; avx512: n <= 32), and the last
 *    n - 1 rows as a batch of their own;
 *  - the packing documented in quant.h, checked on a hand-made row.
 * The fast backend's checks run once per instruction-set path this
 * processor supports (kernels/cpu/isa.h, LLMQ_CPU_ISA at creation): each
 * path against the oracle and invariant on its own; k not a multiple of
 * 8 / 16 / 32 or of the group, Q4 groups of 8 mod 16 (a 16-lane step then
 * straddles two groups).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/cpu/isa.h"
#include "kernels/quant.h"
#include "tests/unit/testutil.h"

#define SENTINEL 12345.678f
#define GUARD 16

/* fasts[p]: the fast backend on the p-th supported path (isas[p]) */
static llmq_backend *fasts[CPU_ISA_COUNT], *ref;
static cpu_isa isas[CPU_ISA_COUNT];
static int n_isa;

static int setup(void **st) {
    (void)st;
    n_isa = cpu_isa_list(isas);
    for (int p = 0; p < n_isa; p++) {
        setenv("LLMQ_CPU_ISA", cpu_isa_name(isas[p]), 1);
        fasts[p] = llmq_backend_create("cpu", NULL);
        if (!fasts[p] || strcmp(fasts[p]->isa, cpu_isa_name(isas[p]))) return -1;
    }
    unsetenv("LLMQ_CPU_ISA");
    ref = llmq_backend_create("cpu-ref", NULL);
    return n_isa > 0 && ref ? 0 : -1;
}

static int teardown(void **st) {
    (void)st;
    for (int p = 0; p < n_isa; p++) llmq_backend_destroy(fasts[p]);
    llmq_backend_destroy(ref);
    return 0;
}

static float *guarded(size_t n) {
    float *p = malloc((n + 2 * GUARD) * sizeof(float));
    for (size_t i = 0; i < n + 2 * GUARD; i++) p[i] = SENTINEL;
    return p + GUARD;
}

static void guarded_check_free(float *p, size_t n, const char *what) {
    for (int i = 1; i <= GUARD; i++)
        if (p[-i] != SENTINEL || p[n + (size_t)i - 1] != SENTINEL) fail_msg("%s: write outside the output", what);
    free(p - GUARD);
}

static void compare(const float *got, const float *want, size_t n, double atol, double rtol, const char *what) {
    int wrong = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) fail_msg("%s: element %zu is %f", what, i, got[i]);
        double d = fabs((double)got[i] - want[i]);
        if (d > atol + rtol * fabs(want[i])) {
            if (wrong < 5) print_message("%s[%zu]: got %.8g want %.8g\n", what, i, got[i], want[i]);
            wrong++;
        }
    }
    if (wrong) fail_msg("%s: %d of %zu elements out of tolerance", what, wrong, n);
}

/* Round-to-nearest-even F32 -> BF16 (exact enough for test inputs). */
static void to_bf16(uint16_t *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &src[i], 4);
        dst[i] = (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
    }
}

static void test_quantization_error_bounds(void **st) {
    (void)st;
    uint64_t rs = 3;
    static const int shapes[][2] = {{1, 1}, {3, 7}, {5, 64}, {4, 100}, {17, 300}, {8, 257}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int m = shapes[s][0], k = shapes[s][1];
        float *wf = malloc(sizeof(float) * (size_t)m * k), *row = malloc(sizeof(float) * (size_t)k);
        tu_fill_random(wf, (size_t)m * k, &rs, 0.7f);
        wf[0] = 0.0f; /* zeros stay exact */
        be_weight in = {wf, LLMQ_F32, m, k, k};
        for (int q = LLMQ_QUANT_INT8; q <= LLMQ_QUANT_INT4; q++)
            for (int group = 8; group <= 128; group *= 4) {
                be_weight w;
                void *mem = NULL;
                llmq_err err = {0};
                if (llmq_quantize(&w, &mem, &in, (llmq_quant)q, group, &err)) fail_msg("quantize: %s", err.msg);
                const be_qweight *qw = w.data;
                assert_int_equal(w.dt, q == LLMQ_QUANT_INT8 ? LLMQ_Q8 : LLMQ_Q4);
                for (int r = 0; r < m; r++) {
                    llmq_dequantize_row(row, &w, r);
                    for (int i = 0; i < k; i++) {
                        const float step = q == LLMQ_QUANT_INT8 ? qw->scales[r]
                                                                : qw->scales[(size_t)r * llmq_quant_groups(&w) + i / group];
                        const float orig = wf[(size_t)r * k + i];
                        if (fabsf(row[i] - orig) > 0.5f * step * (1 + 1e-5f) + 1e-7f)
                            fail_msg("%s group %d [%d,%d] r%d i%d: %g dequantizes to %g (step %g)",
                                     llmq_quant_name((llmq_quant)q), group, m, k, r, i, orig, row[i], step);
                        if (orig == 0.0f && row[i] != 0.0f) fail_msg("0 dequantizes to %g", row[i]);
                    }
                }
                free(mem);
                if (q == LLMQ_QUANT_INT8) break; /* group is an INT4 matter */
            }
        free(wf);
        free(row);
    }
}

static void test_q4_packing(void **st) {
    (void)st;
    /* one row of 10 inputs, group 8: values chosen so that scale = 1 and the
     * zero point is 8 in the first group */
    float w[10] = {-8, -7, -1, 0, 1, 2, 6, 7, 0.75f, 0};
    be_weight in = {w, LLMQ_F32, 1, 10, 10}, q;
    void *mem = NULL;
    assert_int_equal(llmq_quantize(&q, &mem, &in, LLMQ_QUANT_INT4, 8, NULL), LLMQ_OK);
    const be_qweight *qw = q.data;
    const uint8_t *b = qw->q;
    assert_int_equal(qw->group, 8);
    assert_true(fabsf(qw->scales[0] - 1.0f) < 1e-6f);
    assert_int_equal(qw->zeros[0], 8);
    /* blocks of 16 in 8 bytes: element o in byte o%8, low nibble for o < 8,
     * high for o >= 8 (here 8, 9 in the high nibbles of bytes 0, 1); q = w + 8 */
    assert_int_equal(qw->zeros[1], 0); /* group 1 = {0.75, 0}: scale 0.05, zero point 0 */
    assert_int_equal(b[0], (uint8_t)(0 | 15 << 4));
    assert_int_equal(b[1], (uint8_t)(1 | 0 << 4));
    assert_int_equal(b[2], 7);
    assert_int_equal(b[3], 8);
    assert_int_equal(b[4], 9);
    assert_int_equal(b[5], 10);
    assert_int_equal(b[6], 14);
    assert_int_equal(b[7], 15);
    assert_int_equal(llmq_quant_row_bytes(&q), 8);
    assert_int_equal(llmq_quant_groups(&q), 2);
    assert_int_equal(llmq_quant_bytes(LLMQ_QUANT_INT4, 1, 10, 8), 8 + 2 * 5);
    assert_int_equal(llmq_quant_bytes(LLMQ_QUANT_INT4, 2, 256, 128), 2 * 128 + 2 * 2 * 5);
    assert_int_equal(llmq_quant_bytes(LLMQ_QUANT_INT8, 3, 10, 0), 30 + 12);
    free(mem);
    llmq_quant qq;
    assert_int_equal(llmq_quant_parse("int4", &qq, NULL), LLMQ_OK);
    assert_int_equal(qq, LLMQ_QUANT_INT4);
    llmq_err err = {0};
    assert_int_equal(llmq_quant_parse("fp8", &qq, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "int8"));
    assert_int_equal(llmq_quantize(&q, &mem, &in, LLMQ_QUANT_INT4, 12, &err), LLMQ_ERR_INVALID);
}

static void test_qmatmul_vs_dequantized(void **st) {
    (void)st;
    static const int ns[] = {1, 2, 3, 4, 5, 7, 13, 33};
    static const int ks[] = {1, 7, 8, 40, 100, 136, 296, 768};
    static const int ms[] = {1, 3, 4, 17, 64};
    /* 24 and 8: groups of 8 mod 16 (a 16-lane step straddles two groups) */
    static const int groups[] = {32, 24, 128, 8};
    uint64_t rs = 99;
    int cases = 0;
    for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++)
        for (size_t b = 0; b < sizeof ks / sizeof ks[0]; b++)
            for (size_t c = 0; c < sizeof ms / sizeof ms[0]; c++)
                for (int q = LLMQ_QUANT_INT8; q <= LLMQ_QUANT_INT4; q++) {
                    const int n = ns[a], k = ks[b], m = ms[c], group = groups[(a + b + c) % 4];
                    const int bf16 = (b + c) % 2; /* quantize from BF16 or F32 sources */
                    float *x = malloc(sizeof(float) * (size_t)n * k), *wf = malloc(sizeof(float) * (size_t)m * k);
                    float *bias = malloc(sizeof(float) * (size_t)m), *deq = malloc(sizeof(float) * (size_t)m * k);
                    uint16_t *wb = malloc(sizeof(uint16_t) * (size_t)m * k);
                    tu_fill_random(x, (size_t)n * k, &rs, 1.0f);
                    tu_fill_random(wf, (size_t)m * k, &rs, 0.5f);
                    tu_fill_random(bias, (size_t)m, &rs, 0.5f);
                    to_bf16(wb, wf, (size_t)m * k);
                    be_weight src = {bf16 ? (const void *)wb : wf, bf16 ? LLMQ_BF16 : LLMQ_F32, m, k, k}, w;
                    void *mem = NULL;
                    llmq_err err = {0};
                    if (llmq_quantize(&w, &mem, &src, (llmq_quant)q, group, &err)) fail_msg("%s", err.msg);
                    for (int r = 0; r < m; r++) llmq_dequantize_row(deq + (size_t)r * k, &w, r);
                    be_weight plain = {deq, LLMQ_F32, m, k, k};
                    const float *bb = (c % 2) ? bias : NULL;
                    float *o_ref = guarded((size_t)n * m), *o_oracle = guarded((size_t)n * m);
                    ref->ops->matmul(ref, o_ref, x, &w, bb, n);
                    ref->ops->matmul(ref, o_oracle, x, &plain, bb, n);
                    char what[160];
                    snprintf(what, sizeof what, "%s g%d n=%d k=%d m=%d", llmq_dtype_name(w.dt), group, n, k, m);
                    compare(o_ref, o_oracle, (size_t)n * m, 1e-6, 1e-6, what); /* same values, same double sum */
                    for (int p = 0; p < n_isa; p++) {
                        llmq_backend *fast = fasts[p];
                        snprintf(what, sizeof what, "%s %s g%d n=%d k=%d m=%d", fast->isa, llmq_dtype_name(w.dt),
                                 group, n, k, m);
                        float *o_fast = guarded((size_t)n * m);
                        fast->ops->matmul(fast, o_fast, x, &w, bb, n);
                        assert_int_equal(fast->err.code, LLMQ_OK);
                        compare(o_fast, o_oracle, (size_t)n * m, 1e-5 * sqrt(k), 1e-5, what);
                        /* each row alone (the register path) and the last n - 1
                         * as a batch of their own: the same bits */
                        float *one = guarded((size_t)m), *rest = guarded((size_t)n * m);
                        for (int r = 0; r < n; r++) {
                            fast->ops->matmul(fast, one, x + (size_t)r * k, &w, bb, 1);
                            if (memcmp(one, o_fast + (size_t)r * m, sizeof(float) * m))
                                fail_msg("%s: row %d alone differs from the batch", what, r);
                        }
                        if (n > 1) {
                            fast->ops->matmul(fast, rest, x + k, &w, bb, n - 1);
                            if (memcmp(rest, o_fast + m, sizeof(float) * (size_t)(n - 1) * m))
                                fail_msg("%s: rows 1.. as a batch of %d differ from the batch", what, n - 1);
                        }
                        guarded_check_free(one, (size_t)m, what);
                        guarded_check_free(rest, (size_t)n * m, what);
                        guarded_check_free(o_fast, (size_t)n * m, what);
                    }
                    guarded_check_free(o_ref, (size_t)n * m, what);
                    guarded_check_free(o_oracle, (size_t)n * m, what);
                    free(mem);
                    free(x);
                    free(wf);
                    free(wb);
                    free(bias);
                    free(deq);
                    cases++;
                }
    assert_int_equal(cases, 8 * 8 * 5 * 2);
}

/* A big matrix on the threaded path: every tile, every thread. */
static void test_qmatmul_large(void **st) {
    (void)st;
    const int m = 1000, k = 768;
    uint64_t rs = 5;
    float *wf = malloc(sizeof(float) * (size_t)m * k), *x = malloc(sizeof(float) * 9 * k);
    float *deq = malloc(sizeof(float) * (size_t)m * k);
    tu_fill_random(wf, (size_t)m * k, &rs, 0.1f);
    tu_fill_random(x, 9 * (size_t)k, &rs, 1.0f);
    be_weight src = {wf, LLMQ_F32, m, k, k};
    for (int q = LLMQ_QUANT_INT8; q <= LLMQ_QUANT_INT4; q++) {
        be_weight w;
        void *mem = NULL;
        assert_int_equal(llmq_quantize(&w, &mem, &src, (llmq_quant)q, 128, NULL), LLMQ_OK);
        for (int r = 0; r < m; r++) llmq_dequantize_row(deq + (size_t)r * k, &w, r);
        be_weight plain = {deq, LLMQ_F32, m, k, k};
        for (int n = 1; n <= 9; n += 8) {
            float *want = guarded((size_t)n * m);
            ref->ops->matmul(ref, want, x, &plain, NULL, n);
            for (int p = 0; p < n_isa; p++) {
                float *o = guarded((size_t)n * m);
                fasts[p]->ops->matmul(fasts[p], o, x, &w, NULL, n);
                compare(o, want, (size_t)n * m, 1e-4, 1e-5, fasts[p]->isa);
                guarded_check_free(o, (size_t)n * m, "large");
            }
            guarded_check_free(want, (size_t)n * m, "large");
        }
        free(mem);
    }
    free(wf);
    free(x);
    free(deq);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quantization_error_bounds),
        cmocka_unit_test(test_q4_packing),
        cmocka_unit_test(test_qmatmul_vs_dequantized),
        cmocka_unit_test(test_qmatmul_large),
    };
    return cmocka_run_group_tests_name("vram_qmatmul", tests, setup, teardown);
}
