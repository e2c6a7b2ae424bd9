/* test_metrics.c — the Prometheus registry (common/metrics.c): exposition text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/metrics.h"

static void test_counter_gauge_render(void **state) {
    (void)state;
    metrics *m = metrics_create();
    metric_family *req = metrics_counter(m, "llmq_http_requests_total", "HTTP requests.", "route,code");
    metric_family *up = metrics_gauge(m, "llmq:redis_up", "1 when Redis is reachable.", NULL);
    assert_non_null(req);
    assert_non_null(up);
    metric *a = metric_get(req, "/v1/completions", "200");
    metric_inc(a, 1);
    metric_inc(a, 2);
    metric_inc(a, -5); /* counters never go down */
    assert_ptr_equal(metric_get(req, "/v1/completions", "200"), a);
    metric_inc(metric_get(req, "weird\"route\\\n", "429"), 1);
    metric_set(metric_get(up), 1);
    metric_inc(metric_get(up), -1);
    size_t len;
    char *txt = metrics_render(m, &len);
    assert_non_null(txt);
    assert_int_equal(strlen(txt), len);
    assert_non_null(strstr(txt, "# HELP llmq_http_requests_total HTTP requests.\n# TYPE llmq_http_requests_total counter\n"));
    assert_non_null(strstr(txt, "llmq_http_requests_total{route=\"/v1/completions\",code=\"200\"} 3\n"));
    assert_non_null(strstr(txt, "llmq_http_requests_total{route=\"weird\\\"route\\\\\\n\",code=\"429\"} 1\n"));
    assert_non_null(strstr(txt, "# TYPE llmq:redis_up gauge\nllmq:redis_up 0\n"));
    free(txt);
    metrics_destroy(m);
}

static void test_histogram(void **state) {
    (void)state;
    metrics *m = metrics_create();
    const double b[3] = {0.1, 1, 10};
    metric_family *h = metrics_histogram(m, "lat_seconds", "Latency.", "model", b, 3);
    metric *s = metric_get(h, "m1");
    metric_observe(s, 0.05);
    metric_observe(s, 0.1); /* le is inclusive */
    metric_observe(s, 5);
    metric_observe(s, 100);
    assert_true(metric_value(s) == 4);
    char *txt = metrics_render(m, NULL);
    assert_non_null(strstr(txt, "lat_seconds_bucket{model=\"m1\",le=\"0.1\"} 2\n"));
    assert_non_null(strstr(txt, "lat_seconds_bucket{model=\"m1\",le=\"1\"} 2\n"));
    assert_non_null(strstr(txt, "lat_seconds_bucket{model=\"m1\",le=\"10\"} 3\n"));
    assert_non_null(strstr(txt, "lat_seconds_bucket{model=\"m1\",le=\"+Inf\"} 4\n"));
    assert_non_null(strstr(txt, "lat_seconds_sum{model=\"m1\"} 105.15\n"));
    assert_non_null(strstr(txt, "lat_seconds_count{model=\"m1\"} 4\n"));
    free(txt);
    metrics_destroy(m);
}

/* Bucket bounds and values print as the shortest text that reads back as
 * the same double, as Prometheus' own clients write them: a rule or a
 * dashboard that matches le="0.1" must find the bucket.  The expected texts
 * are Python's repr() of the same doubles. */
static void test_shortest_numbers(void **state) {
    (void)state;
    metrics *m = metrics_create();
    const double b[] = {1e-7, 0.001, 0.0025, 0.1, 0.3, 0.1 + 0.2, 2.5, 123456789012345678.0};
    metric *s = metric_get(metrics_histogram(m, "h_seconds", "", NULL, b, sizeof b / sizeof b[0]));
    metric *g = metric_get(metrics_gauge(m, "g", "", NULL));
    metric_set(g, 1.0 / 3);
    metric_observe(s, 0.1);
    metric_observe(s, 0.2);
    char *txt = metrics_render(m, NULL);
    assert_non_null(txt);
    static const char *const want[] = {
        "h_seconds_bucket{le=\"0.001\"} 0\n", "h_seconds_bucket{le=\"0.0025\"} 0\n",
        "h_seconds_bucket{le=\"0.1\"} 1\n", "h_seconds_bucket{le=\"0.3\"} 2\n",
        "h_seconds_bucket{le=\"2.5\"} 2\n", "h_seconds_bucket{le=\"1e-07\"} 0\n",
        "h_seconds_bucket{le=\"1.2345678901234568e+17\"} 2\n",
        "h_seconds_bucket{le=\"0.30000000000000004\"} 2\n", /* 0.1 + 0.2 is not 0.3 */
        "h_seconds_sum 0.30000000000000004\n", "g 0.3333333333333333\n"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(txt, want[i])) fail_msg("missing %s in:\n%s", want[i], txt);
    free(txt);
    metrics_destroy(m);
}

static void test_bad_registrations(void **state) {
    (void)state;
    metrics *m = metrics_create();
    assert_non_null(metrics_counter(m, "x_total", "", NULL));
    assert_null(metrics_counter(m, "x_total", "dup", NULL));
    assert_null(metrics_counter(m, "1bad", "", NULL));
    assert_null(metrics_counter(m, "sp ace", "", NULL));
    assert_null(metrics_counter(m, "ok", "", "bad label"));
    assert_null(metrics_histogram(m, "h", "", "le", metrics_latency_buckets, metrics_latency_nbuckets));
    const double dec[2] = {2, 1};
    assert_null(metrics_histogram(m, "h2", "", NULL, dec, 2));
    /* NULL everywhere is harmless */
    metric_inc(metric_get(NULL), 1);
    metric_observe(NULL, 1);
    metrics_destroy(NULL);
    metrics_destroy(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counter_gauge_render),
        cmocka_unit_test(test_histogram),
        cmocka_unit_test(test_shortest_numbers),
        cmocka_unit_test(test_bad_registrations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
