/*
 * test_sampler.c — the sampler's contract (worker/engine/sampler.h): filtered
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
#include <stdlib.h>
#include <string.h>

#include "worker/engine/sampler.h"

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

/* Logprobs: log_softmax against a long double reference, the order of the
 * top n (ties: lower id first) against a full sort, stability with huge
 * logits, and the bounds of n. */
static void ref_log_softmax(const float *l, int n, long double *out) {
    long double mx = l[0], z = 0;
    for (int i = 1; i < n; i++)
        if (l[i] > mx) mx = l[i];
    for (int i = 0; i < n; i++) z += expl((long double)l[i] - mx);
    for (int i = 0; i < n; i++) out[i] = (long double)l[i] - mx - logl(z);
}

static const float *g_row;
static int by_logit_then_id(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (g_row[x] != g_row[y]) return g_row[x] > g_row[y] ? -1 : 1;
    return x < y ? -1 : 1;
}

static void test_logprobs(void **st) {
    (void)st;
    sampler_logprobs lp;
    long double ref[V];
    ref_log_softmax(base, V, ref);
    sampler_logprobs_compute(base, V, 3, 5, &lp);
    assert_float_equal(lp.logprob, (double)ref[3], 1e-6);
    assert_int_equal(lp.n_top, 5);
    for (int k = 0; k < 5; k++) {
        assert_int_equal(lp.top_ids[k], k); /* base is decreasing */
        assert_float_equal(lp.top_logprobs[k], (double)ref[k], 1e-6);
    }
    /* all of them: probabilities that sum to 1 */
    sampler_logprobs_compute(base, V, 0, SAMPLER_MAX_LOGPROBS, &lp);
    assert_int_equal(lp.n_top, V);
    double z = 0;
    for (int k = 0; k < V; k++) z += exp(lp.top_logprobs[k]);
    assert_float_equal(z, 1.0, 1e-6);
    sampler_logprobs_compute(base, V, 7, 0, &lp);
    assert_int_equal(lp.n_top, 0);
    assert_float_equal(lp.logprob, (double)ref[7], 1e-6);
    /* ties: lower id first */
    const float tie[V] = {1, 3, 3, 0, 3, 0, 0, 0};
    sampler_logprobs_compute(tie, V, 4, 4, &lp);
    assert_int_equal(lp.top_ids[0], 1);
    assert_int_equal(lp.top_ids[1], 2);
    assert_int_equal(lp.top_ids[2], 4);
    assert_int_equal(lp.top_ids[3], 0);
    assert_float_equal(lp.top_logprobs[0], lp.logprob, 0);
    /* huge logits: no overflow, exact values */
    const float huge[V] = {1000, 999, -1000, -1000, -1000, -1000, -1000, -1000};
    sampler_logprobs_compute(huge, V, 1, 2, &lp);
    assert_float_equal(lp.top_logprobs[0], -log1p(exp(-1.0)), 1e-6);
    assert_float_equal(lp.logprob, -1 - log1p(exp(-1.0)), 1e-6);
    assert_true(lp.top_logprobs[1] == lp.logprob);
    /* a real vocabulary with many ties against a full sort */
    enum { N = 32000 };
    static float row[N];
    static int32_t order[N];
    static long double big_ref[N];
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < N; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        row[i] = (float)(x % 64) * 0.25f - 8.0f; /* 64 distinct values: ties everywhere */
        order[i] = i;
    }
    g_row = row;
    qsort(order, N, sizeof *order, by_logit_then_id);
    ref_log_softmax(row, N, big_ref);
    sampler_logprobs_compute(row, N, 12345, SAMPLER_MAX_LOGPROBS, &lp);
    assert_int_equal(lp.n_top, SAMPLER_MAX_LOGPROBS);
    for (int k = 0; k < SAMPLER_MAX_LOGPROBS; k++) {
        assert_int_equal(lp.top_ids[k], order[k]);
        assert_float_equal(lp.top_logprobs[k], (double)big_ref[order[k]], 1e-6);
    }
    assert_float_equal(lp.logprob, (double)big_ref[12345], 1e-6);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_support_of_filters),
        cmocka_unit_test(test_temperature_matches_softmax),
        cmocka_unit_test(test_same_seed_same_tokens),
        cmocka_unit_test(test_greedy_and_penalties),
        cmocka_unit_test(test_logprobs),
    };
    return cmocka_run_group_tests_name("sampler", tests, NULL, NULL);
}
