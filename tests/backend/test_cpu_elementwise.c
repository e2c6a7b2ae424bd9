/*
 * test_cpu_elementwise.c — the CPU backend's elementwise and per-row ops
 * (rmsnorm, add_rmsnorm, rope, swiglu, add, gelu, layernorm, embed) on
 * every instruction-set path this processor supports (kernels/cpu/isa.h,
 * LLMQ_CPU_ISA at creation), against the cpu-ref backend (plain double
 * loops, the oracle):
 *  - widths that are not a multiple of the vector lanes (1, 7, 13, 100,
 *    2048 + 5), so every vector tail is met;
 *  - swiglu and gelu over the range where exp under- or overflows in F32
 *    and with NaN inputs (a NaN gives a NaN, never a number);
 *  - results independent of the batch: a row alone is bitwise that row in
 *    a batch (rmsnorm, rope, layernorm), an element of swiglu / gelu
 *    bitwise the same whatever the length of the call (the threaded chunks
 *    and the vector tail).
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
#include "tests/unit/testutil.h"

static llmq_backend *fasts[CPU_ISA_COUNT], *ref;
static int n_isa;

static int setup(void **st) {
    (void)st;
    cpu_isa isas[CPU_ISA_COUNT];
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

static void compare(const float *got, const float *want, size_t n, double atol, double rtol, const char *what) {
    int wrong = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(want[i]) && isnan(got[i])) continue;
        double d = fabs((double)got[i] - want[i]);
        if (!(d <= atol + rtol * fabs(want[i]))) {
            if (wrong < 5) print_message("%s[%zu]: got %.9g want %.9g\n", what, i, got[i], want[i]);
            wrong++;
        }
    }
    if (wrong) fail_msg("%s: %d of %zu elements out of tolerance", what, wrong, n);
}

static void same_bits(const float *a, const float *b, size_t n, const char *what) {
    if (memcmp(a, b, n * sizeof(float))) fail_msg("%s: not the same bits", what);
}

static const int dims[] = {1, 7, 13, 100, 2053};

static void test_rmsnorm(void **st) {
    (void)st;
    uint64_t rs = 11;
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
        const int dim = dims[d], n = 6;
        const size_t sz = (size_t)n * dim;
        float *x = malloc(sz * 4), *x2 = malloc(sz * 4), *x3 = malloc(sz * 4), *delta = malloc(sz * 4);
        float *w = malloc((size_t)dim * 4), *o1 = malloc(sz * 4), *o2 = malloc(sz * 4), *one = malloc((size_t)dim * 4);
        tu_fill_random(x, sz, &rs, 3.0f);
        tu_fill_random(delta, sz, &rs, 1.0f);
        tu_fill_random(w, (size_t)dim, &rs, 1.0f);
        ref->ops->rmsnorm(ref, o2, x, w, n, dim, 1e-5f);
        for (int p = 0; p < n_isa; p++) {
            llmq_backend *f = fasts[p];
            char what[96];
            snprintf(what, sizeof what, "%s rmsnorm dim %d", f->isa, dim);
            f->ops->rmsnorm(f, o1, x, w, n, dim, 1e-5f);
            compare(o1, o2, sz, 1e-6, 1e-5, what);
            f->ops->rmsnorm(f, one, x + (size_t)(n - 1) * dim, w, 1, dim, 1e-5f);
            same_bits(one, o1 + (size_t)(n - 1) * dim, (size_t)dim, what);
            /* the fused form: x += delta then the norm, the residual exact */
            memcpy(x2, x, sz * 4);
            memcpy(x3, x, sz * 4);
            f->ops->add_rmsnorm(f, o1, x2, delta, w, n, dim, 1e-5f);
            float *o3 = malloc(sz * 4);
            ref->ops->add_rmsnorm(ref, o3, x3, delta, w, n, dim, 1e-5f);
            snprintf(what, sizeof what, "%s add_rmsnorm dim %d", f->isa, dim);
            compare(o1, o3, sz, 1e-6, 1e-5, what);
            same_bits(x2, x3, sz, what);
            free(o3);
        }
        free(x);
        free(x2);
        free(x3);
        free(delta);
        free(w);
        free(o1);
        free(o2);
        free(one);
    }
}

static void test_rope(void **st) {
    (void)st;
    static const int hds[] = {2, 14, 64, 128};
    uint64_t rs = 12;
    for (size_t h = 0; h < sizeof hds / sizeof hds[0]; h++) {
        const int hd = hds[h], nh = 3, nkv = 1, n = 7;
        const size_t qs = (size_t)n * nh * hd, ks = (size_t)n * nkv * hd;
        float *q = malloc(qs * 4), *k = malloc(ks * 4), *q1 = malloc(qs * 4), *k1 = malloc(ks * 4);
        float *q2 = malloc(qs * 4), *k2 = malloc(ks * 4), *inv = malloc((size_t)hd / 2 * 4);
        int32_t pos[7] = {0, 1, 5, 100, 4095, 30000, 7};
        for (int i = 0; i < hd / 2; i++) inv[i] = powf(10000.0f, -2.0f * i / hd);
        tu_fill_random(q, qs, &rs, 1.0f);
        tu_fill_random(k, ks, &rs, 1.0f);
        memcpy(q2, q, qs * 4);
        memcpy(k2, k, ks * 4);
        ref->ops->rope(ref, q2, k2, pos, n, nh, nkv, hd, inv);
        for (int p = 0; p < n_isa; p++) {
            llmq_backend *f = fasts[p];
            char what[96];
            snprintf(what, sizeof what, "%s rope head_dim %d", f->isa, hd);
            memcpy(q1, q, qs * 4);
            memcpy(k1, k, ks * 4);
            f->ops->rope(f, q1, k1, pos, n, nh, nkv, hd, inv);
            compare(q1, q2, qs, 1e-6, 1e-6, what);
            compare(k1, k2, ks, 1e-6, 1e-6, what);
            /* token 3 alone */
            float *qa = malloc((size_t)nh * hd * 4), *ka = malloc((size_t)nkv * hd * 4);
            memcpy(qa, q + (size_t)3 * nh * hd, (size_t)nh * hd * 4);
            memcpy(ka, k + (size_t)3 * nkv * hd, (size_t)nkv * hd * 4);
            f->ops->rope(f, qa, ka, pos + 3, 1, nh, nkv, hd, inv);
            same_bits(qa, q1 + (size_t)3 * nh * hd, (size_t)nh * hd, what);
            same_bits(ka, k1 + (size_t)3 * nkv * hd, (size_t)nkv * hd, what);
            free(qa);
            free(ka);
        }
        free(q);
        free(k);
        free(q1);
        free(k1);
        free(q2);
        free(k2);
        free(inv);
    }
}

/* swiglu and gelu: elementwise, so every element of a long call must be the
 * bits of the same element in a short one (threaded chunks, vector tails). */
static void test_swiglu_gelu(void **st) {
    (void)st;
    const size_t big = 3 * 16384 + 13; /* threaded in chunks, with a tail */
    uint64_t rs = 13;
    float *g = malloc(big * 4), *u = malloc(big * 4), *o1 = malloc(big * 4), *o2 = malloc(big * 4);
    float *o3 = malloc(big * 4);
    tu_fill_random(g, big, &rs, 12.0f);
    tu_fill_random(u, big, &rs, 2.0f);
    /* where exp leaves the F32 range, and specials */
    static const float special[] = {-200.0f, -104.0f, -88.8f, -87.5f, -87.0f, -20.0f, -1e-30f, 0.0f, -0.0f,
                                    1e-30f,  3.0f,    80.0f,  87.0f,  88.5f,  89.0f,  104.0f, 200.0f};
    const size_t ns = sizeof special / sizeof special[0];
    for (size_t i = 0; i < ns; i++) g[i] = special[i];
    g[ns] = NAN;
    for (int p = 0; p < n_isa; p++) {
        llmq_backend *f = fasts[p];
        char what[96];
        for (int pass = 0; pass < 2; pass++) {
            const int dim = pass ? (int)big : 2053; /* one long row, or one row of a width with a tail */
            const size_t sz = pass ? big : 2053;
            snprintf(what, sizeof what, "%s swiglu n %zu", f->isa, sz);
            f->ops->swiglu(f, o1, g, u, 1, dim);
            ref->ops->swiglu(ref, o2, g, u, 1, dim);
            compare(o1, o2, sz, 1e-30, 2e-6, what);
            if (!isnan(o1[ns])) fail_msg("%s: a NaN gate gives %g", what, o1[ns]);
        }
        /* element i of the long call is the element of a call of 1..17 from i */
        for (size_t i = 0; i + 17 < big; i += 977) {
            const int len = 1 + (int)(i % 17);
            f->ops->swiglu(f, o3, g + i, u + i, 1, len);
            same_bits(o3, o1 + i, (size_t)len, "swiglu element alone");
        }
        snprintf(what, sizeof what, "%s gelu", f->isa);
        f->ops->gelu(f, o1, g, big); /* the wide range, the specials, a NaN */
        ref->ops->gelu(ref, o2, g, big);
        compare(o1, o2, big, 1e-7, 2e-6, what);
        if (!isnan(o1[ns])) fail_msg("%s: gelu of NaN gives %g", what, o1[ns]);
        f->ops->gelu(f, o1, u, big);
        ref->ops->gelu(ref, o2, u, big);
        compare(o1, o2, big, 1e-7, 2e-6, what);
        for (size_t i = 0; i + 17 < big; i += 977) {
            const size_t len = 1 + i % 17;
            f->ops->gelu(f, o3, u + i, len);
            same_bits(o3, o1 + i, len, "gelu element alone");
        }
        /* in place, as the engine calls it (out = gate) */
        float *gi = malloc(big * 4);
        memcpy(gi, g, big * 4);
        f->ops->swiglu(f, o1, g, u, 1, (int)big);
        f->ops->swiglu(f, gi, gi, u, 1, (int)big);
        same_bits(gi, o1, big, "swiglu in place");
        free(gi);
    }
    free(g);
    free(u);
    free(o1);
    free(o2);
    free(o3);
}

static void test_add_layernorm_embed(void **st) {
    (void)st;
    uint64_t rs = 14;
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
        const int dim = dims[d], n = 5;
        const size_t sz = (size_t)n * dim;
        float *x = malloc(sz * 4), *y = malloc(sz * 4), *a1 = malloc(sz * 4), *a2 = malloc(sz * 4);
        float *w = malloc((size_t)dim * 4), *b = malloc((size_t)dim * 4), *one = malloc((size_t)dim * 4);
        tu_fill_random(x, sz, &rs, 2.0f);
        tu_fill_random(y, sz, &rs, 2.0f);
        tu_fill_random(w, (size_t)dim, &rs, 1.0f);
        tu_fill_random(b, (size_t)dim, &rs, 1.0f);
        for (size_t i = 0; i < sz; i++) x[i] += 0.5f; /* a mean away from 0 */
        memcpy(a2, x, sz * 4);
        ref->ops->add(ref, a2, y, sz);
        float *l2 = malloc(sz * 4);
        ref->ops->layernorm(ref, l2, x, w, b, n, dim, 1e-5f);
        for (int p = 0; p < n_isa; p++) {
            llmq_backend *f = fasts[p];
            char what[96];
            snprintf(what, sizeof what, "%s add dim %d", f->isa, dim);
            memcpy(a1, x, sz * 4);
            f->ops->add(f, a1, y, sz);
            same_bits(a1, a2, sz, what); /* one F32 addition each */
            snprintf(what, sizeof what, "%s layernorm dim %d", f->isa, dim);
            f->ops->layernorm(f, a1, x, w, b, n, dim, 1e-5f);
            compare(a1, l2, sz, 2e-5, 1e-4, what);
            f->ops->layernorm(f, one, x + (size_t)2 * dim, w, b, 1, dim, 1e-5f);
            same_bits(one, a1 + (size_t)2 * dim, (size_t)dim, what);
        }
        free(l2);
        free(x);
        free(y);
        free(a1);
        free(a2);
        free(w);
        free(b);
        free(one);
    }
    /* embed: rows of a BF16 / F16 / F32 table widened exactly; ids out of
     * range give a zero row */
    const int rows = 9, dim = 37;
    uint16_t *t16 = malloc((size_t)rows * dim * 2);
    for (int i = 0; i < rows * dim; i++) t16[i] = (uint16_t)(0x3c00 + i * 37 % 2048);
    int32_t ids[5] = {0, 8, 3, -1, 9};
    float *e1 = malloc(5 * (size_t)dim * 4), *e2 = malloc(5 * (size_t)dim * 4);
    for (int dt = 0; dt < 2; dt++) {
        be_weight tab = {t16, dt ? LLMQ_F16 : LLMQ_BF16, rows, dim, dim};
        /* the expected values decoded here: BF16 is the top half of an F32;
         * these F16 are normal, (1 + m / 1024) 2^(e - 15) */
        for (int i = 0; i < 5; i++)
            for (int c = 0; c < dim; c++) {
                float v = 0.0f;
                if (ids[i] >= 0 && ids[i] < rows) {
                    const uint16_t h = t16[ids[i] * dim + c];
                    if (dt) {
                        v = ldexpf(1.0f + (float)(h & 1023) / 1024.0f, (h >> 10 & 31) - 15);
                    } else {
                        const uint32_t bits = (uint32_t)h << 16;
                        memcpy(&v, &bits, 4);
                    }
                }
                e2[i * dim + c] = v;
            }
        for (int p = 0; p < n_isa + 1; p++) { /* every path and cpu-ref */
            llmq_backend *f = p < n_isa ? fasts[p] : ref;
            f->ops->embed(f, e1, &tab, ids, 5);
            same_bits(e1, e2, 5 * (size_t)dim, dt ? "embed F16" : "embed BF16");
        }
    }
    free(t16);
    free(e1);
    free(e2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_swiglu_gelu),
        cmocka_unit_test(test_add_layernorm_embed),
    };
    return cmocka_run_group_tests_name("cpu_elementwise", tests, setup, teardown);
}
