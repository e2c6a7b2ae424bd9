/*
 * test_heartbeat.c — the worker heartbeat's JSON (common/heartbeat.c): what
 * the worker writes reads back field for field, a heartbeat of an older
 * worker (no max_model_len) still names its model, junk is refused, and
 * liveness is the age of `ts` either way of the reader's clock.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/heartbeat.h"

static void test_round_trip(void **state) {
    (void)state;
    hb_info hb = {.capacity = 8, .running = 3, .waiting = 1, .kv_free = 100, .kv_total = 256,
                  .max_model_len = 4096, .ts_ms = 1796670000123};
    strcpy(hb.model, "meta-llama/Llama-3-8B");
    strcpy(hb.consumer, "host-\"7\""); /* a quote must not break the object */
    char buf[512];
    int n = hb_format(&hb, buf, sizeof buf);
    assert_true(n > 0 && (size_t)n == strlen(buf));
    hb_info back;
    llmq_err err;
    assert_int_equal(hb_parse(&back, buf, (size_t)n, &err), LLMQ_OK);
    assert_string_equal(back.model, "meta-llama/Llama-3-8B");
    assert_string_equal(back.consumer, "host-\"7\"");
    assert_int_equal(back.capacity, 8);
    assert_int_equal(back.running, 3);
    assert_int_equal(back.waiting, 1);
    assert_int_equal(back.kv_free, 100);
    assert_int_equal(back.kv_total, 256);
    assert_int_equal(back.max_model_len, 4096);
    assert_true(back.ts_ms == 1796670000123);
    assert_int_equal(hb_format(&hb, buf, 20), -1); /* does not fit */
}

static void test_older_worker_and_junk(void **state) {
    (void)state;
    hb_info hb;
    llmq_err err;
    /* what workers wrote before max_model_len: the model is served, its context unknown */
    const char *old = "{\"model\":\"stories\",\"consumer\":\"h-1\",\"capacity\":4,\"running\":0,\"waiting\":0,"
                      "\"kv_free\":10,\"kv_total\":10,\"ts\":1700000000000}";
    assert_int_equal(hb_parse(&hb, old, strlen(old), &err), LLMQ_OK);
    assert_string_equal(hb.model, "stories");
    assert_int_equal(hb.max_model_len, 0);
    static const char *junk[] = {
        "", "not json", "[]", "{\"ts\":1}",                      /* no model */
        "{\"model\":\"m\"}",                                      /* no ts */
        "{\"model\":\"bad name\",\"ts\":1}",                      /* not a model name */
        "{\"model\":7,\"ts\":1}", "{\"model\":\"m\",\"ts\":\"1\"}",
    };
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++)
        assert_int_equal(hb_parse(&hb, junk[i], strlen(junk[i]), &err), LLMQ_ERR_INVALID);
    /* a field of another type reads as 0 (a negative context too) */
    const char *odd = "{\"model\":\"m\",\"ts\":5,\"max_model_len\":\"512\",\"capacity\":-3}";
    assert_int_equal(hb_parse(&hb, odd, strlen(odd), &err), LLMQ_OK);
    assert_int_equal(hb.max_model_len, 0);
    assert_int_equal(hb.capacity, 0);
}

static void test_liveness(void **state) {
    (void)state;
    const int64_t now = 1796670000000;
    assert_true(hb_live(now, now));
    assert_true(hb_live(now - HB_LIVE_MS, now));
    assert_false(hb_live(now - HB_LIVE_MS - 1, now)); /* a dead worker's last beat */
    assert_true(hb_live(now + HB_LIVE_MS, now));      /* a worker whose clock runs ahead */
    assert_false(hb_live(now + HB_LIVE_MS + 1, now));
    assert_true(HB_LIVE_MS >= 3 * HB_INTERVAL_MS);    /* a missed beat or two is not death */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_older_worker_and_junk),
        cmocka_unit_test(test_liveness),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
