/*
 * test_sampler.c — the sampler's contract (worker/sampler.h): filtered
 * modes never emit outside their support, temperature sampling follows the
 * softmax distribution (chi-square), draws depend only on (seed, position),
 * greedy breaks ties to the lowest id, and the penalties move logits as
 * vLLM's do.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <string.h>

#include "worker/sampler.h"

#define V 8
static const float base[V] = {2.0f, 1.5f, 1.0f, 0.5f, 0.0f, -0.5f, -1.0f, -3.0f};

static int32_t draw(sampler *s, const sampling_params *p, uint64_t pos) {
    float l[V];
    memcpy(l, base, sizeof l);
    return sampler_sample(s, p, l, NULL, 0, 0, pos);
}

static void probs_of(float temp, double *pr) {
    double z = 0;
    for (int i = 0; i < V; i++) z += (pr[i] = exp(base[i] / temp));
    for (int i = 0; i < V; i++) pr[i] /= z;
}

static void test_support_of_filters(void **st) {
    (void)st;
    sampler *s = sampler_create(V);
    sampling_params p;
    sampling_params_default(&p);
    p.seed = 1;
    p.top_k = 3;
    for (uint64_t i = 0; i < 4000; i++) assert_true(draw(s, &p, i) < 3);
    /* top_p: probs at T=1 are ~[.39 .24 .14 .09 .05 .03 .02 .002]: 0.7 keeps 0..2 */
    sampling_params_default(&p);
    p.seed = 2;
    p.top_p = 0.7f;
    int seen[V] = {0};
    for (uint64_t i = 0; i < 4000; i++) seen[draw(s, &p, i)]++;
    for (int i = 3; i < V; i++) assert_int_equal(seen[i], 0);
    assert_true(seen[0] && seen[1] && seen[2]);
    /* min_p 0.3: keeps p >= 0.3 * p_max: exp(-0.5)=.61, exp(-1)=.37, exp(-1.5)=.22 -> ids 0,1,2 */
    sampling_params_default(&p);
    p.seed = 3;
    p.min_p = 0.3f;
    memset(seen, 0, sizeof seen);
    for (uint64_t i = 0; i < 4000; i++) seen[draw(s, &p, i)]++;
    for (int i = 3; i < V; i++) assert_int_equal(seen[i], 0);
    assert_true(seen[2] > 0);
    sampler_destroy(s);
}

static void test_temperature_matches_softmax(void **st) {
    (void)st;
    static const float temps[] = {1.0f, 0.5f, 2.0f};
    sampler *s = sampler_create(V);
    for (int t = 0; t < 3; t++) {
        sampling_params p;
        sampling_params_default(&p);
        p.temperature = temps[t];
        p.seed = 1234 + (uint64_t)t;
        const int N = 40000;
        int cnt[V] = {0};
        for (int i = 0; i < N; i++) cnt[draw(s, &p, (uint64_t)i)]++;
        double pr[V], chi2 = 0;
        probs_of(temps[t], pr);
        int df = -1;
        for (int i = 0; i < V; i++) {
            double e = pr[i] * N;
            if (e < 5) continue; /* chi-square needs expected counts >= 5 */
            chi2 += (cnt[i] - e) * (cnt[i] - e) / e;
            df++;
        }
        /* critical value at p = 0.001 for df <= 7 is at most 24.32 */
        print_message("T=%.1f chi2=%.2f df=%d\n", temps[t], chi2, df);
        assert_true(df >= 4);
        assert_true(chi2 < 24.32);
    }
    sampler_destroy(s);
}

static void test_same_seed_same_tokens(void **st) {
    (void)st;
    sampler *a = sampler_create(V), *b = sampler_create(V);
    sampling_params p;
    sampling_params_default(&p);
    p.seed = 77;
    p.top_p = 0.9f;
    int differ = 0;
    for (uint64_t i = 0; i < 500; i++) {
        assert_int_equal(draw(a, &p, i), draw(b, &p, i));
        sampling_params q = p;
        q.seed = 78;
        differ += draw(a, &p, i) != draw(b, &q, i);
    }
    assert_true(differ > 50); /* another seed is another stream */
    /* the generator itself is uniform in [0, 1) */
    double sum = 0;
    for (uint64_t i = 0; i < 100000; i++) {
        double u = sampler_uniform(5, i);
        assert_true(u >= 0.0 && u < 1.0);
        sum += u;
    }
    assert_true(fabs(sum / 100000 - 0.5) < 0.005);
    sampler_destroy(a);
    sampler_destroy(b);
}

static void test_greedy_and_penalties(void **st) {
    (void)st;
    sampler *s = sampler_create(V);
    sampling_params p;
    sampling_params_default(&p);
    p.temperature = 0;
    float l[V] = {1, 3, 3, 0, 0, 0, 0, 0};
    assert_int_equal(sampler_sample(s, &p, l, NULL, 0, 0, 0), 1); /* tie: lowest id */
    /* repetition penalty over prompt+output: 3/2 = 1.5 < 2 */
    float l2[V] = {2, 3, 0, 0, 0, 0, 0, 0};
    int32_t hist[3] = {1, 5, 1};
    p.repetition_penalty = 2.0f;
    assert_int_equal(sampler_sample(s, &p, l2, hist, 3, 1, 3), 0);
    assert_float_equal(l2[1], 1.5f, 1e-6);
    assert_float_equal(l2[5], 0.0f, 1e-6); /* 0 * 2 */
    /* frequency/presence over output tokens only: id 1 once in output (hist[2]) */
    float l3[V] = {2, 3, 0, 0, 0, 0, 0, 0};
    sampling_params_default(&p);
    p.temperature = 0;
    p.frequency_penalty = 0.6f;
    p.presence_penalty = 0.5f;
    assert_int_equal(sampler_sample(s, &p, l3, hist, 3, 2, 3), 0);
    assert_float_equal(l3[1], 3 - 0.6f - 0.5f, 1e-6);
    assert_float_equal(l3[5], 0.0f, 1e-6); /* id 5 is prompt only */
    sampler_destroy(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_support_of_filters),
        cmocka_unit_test(test_temperature_matches_softmax),
        cmocka_unit_test(test_same_seed_same_tokens),
        cmocka_unit_test(test_greedy_and_penalties),
    };
    return cmocka_run_group_tests_name("sampler", tests, NULL, NULL);
}
