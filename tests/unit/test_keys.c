/*
 * test_keys.c — the Redis key layout (common/keys.c), argv commands
 * (common/rcmd.c) and the job command builders (common/jobops.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/jobops.h"
#include "common/keys.h"
#include "common/rcmd.h"

static void test_default_layout(void **state) {
    (void)state;
    llmq_keys k;
    llmq_err err;
    assert_int_equal(keys_init(&k, NULL, &err), LLMQ_OK);
    char b[KEYS_MAX];
    keys_req_stream(&k, "meta-llama/Llama-3-8B", b, sizeof b);
    assert_string_equal(b, "llmq:req:meta-llama/Llama-3-8B");
    keys_job(&k, "abc", b, sizeof b);
    assert_string_equal(b, "llmq:job:{abc}");
    keys_job_out(&k, "abc", b, sizeof b);
    assert_string_equal(b, "llmq:job:{abc}:out");
    keys_out_channel(&k, "abc", b, sizeof b);
    assert_string_equal(b, "llmq:out:{abc}");
    keys_dead_stream(&k, "m", b, sizeof b);
    assert_string_equal(b, "llmq:dead:m");
    keys_cancel_channel(&k, b, sizeof b);
    assert_string_equal(b, "llmq:cancel");
    keys_group_rdv(&k, "g0", b, sizeof b);
    assert_string_equal(b, "llmq:group:{g0}:rdv");
    keys_workers(&k, b, sizeof b);
    assert_string_equal(b, "llmq:workers");
    keys_idem(&k, "order-17:a", b, sizeof b);
    assert_string_equal(b, "llmq:idem:{order-17:a}");
}

/* Priority lanes: the default lane keeps the stream of a model without
 * lanes; the others end in '#' + name, which no model name can hold. */
static void test_lanes(void **state) {
    (void)state;
    llmq_keys k;
    keys_init(&k, NULL, NULL);
    char b[KEYS_MAX];
    keys_req_lane(&k, "org/m:v1", KEYS_LANE_DEFAULT, b, sizeof b);
    assert_string_equal(b, "llmq:req:org/m:v1");
    keys_req_lane(&k, "org/m:v1", KEYS_LANE_HIGH, b, sizeof b);
    assert_string_equal(b, "llmq:req:org/m:v1#high");
    keys_req_lane(&k, "org/m:v1", KEYS_LANE_LOW, b, sizeof b);
    assert_string_equal(b, "llmq:req:org/m:v1#low");
    assert_false(keys_model_valid("org/m:v1#high"));
    assert_int_equal(keys_lane_of(1), KEYS_LANE_HIGH);
    assert_int_equal(keys_lane_of(2147483647), KEYS_LANE_HIGH);
    assert_int_equal(keys_lane_of(0), KEYS_LANE_DEFAULT);
    assert_int_equal(keys_lane_of(-1), KEYS_LANE_LOW);
    assert_string_equal(keys_lane_name(KEYS_LANE_HIGH), "high");
    assert_string_equal(keys_lane_name(KEYS_LANE_LOW), "low");
    assert_string_equal(keys_lane_name(7), "?");
    assert_true(KEYS_LANE_HIGH < KEYS_LANE_DEFAULT && KEYS_LANE_DEFAULT < KEYS_LANE_LOW); /* read in this order */
}

static void test_prefix(void **state) {
    (void)state;
    llmq_keys k;
    llmq_err err;
    assert_int_equal(keys_init(&k, "staging:llmq:", &err), LLMQ_OK);
    char b[KEYS_MAX];
    keys_job_out(&k, "x1", b, sizeof b);
    assert_string_equal(b, "staging:llmq:job:{x1}:out");
    size_t n;
    keys_out_channel(&k, "x1", b, sizeof b);
    const char *id = keys_channel_job_id(&k, b, strlen(b), &n);
    assert_non_null(id);
    assert_int_equal(n, 2);
    assert_memory_equal(id, "x1", 2);
    assert_null(keys_channel_job_id(&k, "llmq:out:{x1}", 13, &n));
    assert_null(keys_channel_job_id(&k, "staging:llmq:out:{x1", 20, &n));
    assert_int_equal(keys_init(&k, "bad{prefix", &err), LLMQ_ERR_INVALID);
    assert_int_equal(keys_init(&k, "has space", &err), LLMQ_ERR_INVALID);
    char longp[100];
    memset(longp, 'a', sizeof longp - 1);
    longp[99] = 0;
    assert_int_equal(keys_init(&k, longp, &err), LLMQ_ERR_INVALID);
    /* truncation is reported like snprintf */
    assert_int_equal(keys_init(&k, NULL, &err), LLMQ_OK);
    char small[8];
    assert_true(keys_job(&k, "abcdef", small, sizeof small) >= sizeof small);
    assert_int_equal(strlen(small), 7);
}

static void test_validity_and_ids(void **state) {
    (void)state;
    assert_true(keys_id_valid("a1b2-c3_d4.e5:f6"));
    assert_false(keys_id_valid(""));
    assert_false(keys_id_valid("with{brace}"));
    assert_false(keys_id_valid("sp ace"));
    assert_false(keys_id_valid(NULL));
    char longid[200];
    memset(longid, 'a', sizeof longid - 1);
    longid[199] = 0;
    assert_false(keys_id_valid(longid));
    assert_true(keys_model_valid("Qwen/Qwen2-0.5B-Instruct"));
    assert_true(keys_model_valid("stories260K"));
    assert_false(keys_model_valid("bad model"));
    assert_false(keys_model_valid("a{b}"));
    char a[33], b[33];
    llmq_err err;
    assert_int_equal(keys_new_id(a, &err), LLMQ_OK);
    assert_int_equal(keys_new_id(b, &err), LLMQ_OK);
    assert_int_equal(strlen(a), 32);
    assert_true(keys_id_valid(a));
    assert_string_not_equal(a, b);
}

static void test_rcmd(void **state) {
    (void)state;
    rcmd c;
    rcmd_init(&c);
    assert_false(rcmd_ok(&c));
    rcmd_str(&c, "SET");
    rcmd_fmt(&c, "k%d", 7);
    rcmd_arg(&c, "a\0b", 3);
    assert_true(rcmd_ok(&c));
    assert_int_equal(c.argc, 3);
    assert_string_equal(c.argv[1], "k7");
    assert_int_equal(c.argvlen[2], 3);
    for (int i = 0; i < RCMD_MAX_ARGS; i++) rcmd_str(&c, "x");
    assert_true(c.overflow);
    assert_false(rcmd_ok(&c));
    rcmd_init(&c);
    char big[RCMD_SCRATCH + 10];
    memset(big, 'z', sizeof big - 1);
    big[sizeof big - 1] = 0;
    rcmd_fmt(&c, "%s", big);
    assert_false(rcmd_ok(&c));
}

static void test_jobops_builders(void **state) {
    (void)state;
    llmq_keys k;
    keys_init(&k, NULL, NULL);
    jobops_keys kb;
    rcmd h, x;
    jobops_submit(&h, &x, &kb, &k, "id1", "m1", 0, "\x81\xa1v\x01", 4, 1700000000000LL);
    assert_true(rcmd_ok(&h) && rcmd_ok(&x));
    assert_string_equal(h.argv[0], "HSET");
    assert_string_equal(h.argv[1], "llmq:job:{id1}");
    assert_string_equal(h.argv[3], "queued");
    assert_string_equal(h.argv[7], "1700000000000");
    assert_string_equal(x.argv[0], "XADD");
    assert_string_equal(x.argv[1], "llmq:req:m1");
    assert_string_equal(x.argv[4], "id1");
    assert_string_equal(x.argv[5], "p");
    assert_int_equal(x.argvlen[6], 4);
    jobops_submit(&h, &x, &kb, &k, "id1", "m1", 3, "\x81\xa1v\x01", 4, 1700000000000LL);
    assert_string_equal(x.argv[1], "llmq:req:m1#high");
    jobops_submit(&h, &x, &kb, &k, "id1", "m1", -3, "\x81\xa1v\x01", 4, 1700000000000LL);
    assert_string_equal(x.argv[1], "llmq:req:m1#low");
    rcmd g; /* one script creates the group on every lane */
    jobops_group_create(&g, &kb, &k, "m1");
    assert_true(rcmd_ok(&g));
    assert_string_equal(g.argv[0], "EVAL");
    assert_string_equal(g.argv[2], "3");
    assert_string_equal(g.argv[3], "llmq:req:m1#high");
    assert_string_equal(g.argv[4], "llmq:req:m1");
    assert_string_equal(g.argv[5], "llmq:req:m1#low");
    assert_string_equal(g.argv[6], "workers");
    jobops_read_lanes(&g, &kb, &k, "m1", "w0", 5, KEYS_LANE_LOW);
    assert_true(rcmd_ok(&g));
    assert_string_equal(g.argv[3], "llmq:req:m1#high");
    assert_string_equal(g.argv[g.argc - 2], "5");
    assert_string_equal(g.argv[g.argc - 1], "3"); /* 1-based in the script */
    jobops_read_all(&g, &kb, &k, "m1", "w0", 2, 100, ">");
    assert_true(rcmd_ok(&g));
    assert_int_equal(g.argc, 15);
    assert_string_equal(g.argv[7], "100");
    assert_string_equal(g.argv[9], "llmq:req:m1#high");
    assert_string_equal(g.argv[14], ">");
    assert_int_equal(jobops_lane_of_key(&kb, "llmq:req:m1#low", 15), KEYS_LANE_LOW);
    assert_int_equal(jobops_lane_of_key(&kb, "llmq:req:m1", 11), KEYS_LANE_DEFAULT);
    assert_int_equal(jobops_lane_of_key(&kb, "llmq:req:m2", 11), -1);
    proto_buf b;
    proto_buf_init(&b);
    assert_int_equal(jobops_cancel_chunk(&b, NULL), LLMQ_OK);
    proto_chunk ch;
    assert_int_equal(proto_chunk_decode(&ch, b.data, b.len, NULL), LLMQ_OK);
    assert_string_equal(ch.finish, "cancelled");
    assert_int_equal(ch.seq, 0);
    assert_true(ch.has_usage);
    proto_chunk_deinit(&ch);
    rcmd c;
    jobops_cancel(&c, &kb, &k, "id1", 5, 60, b.data, b.len);
    assert_true(rcmd_ok(&c));
    assert_string_equal(c.argv[0], "EVAL");
    assert_string_equal(c.argv[2], "2");
    assert_string_equal(c.argv[3], "llmq:job:{id1}");
    assert_string_equal(c.argv[4], "llmq:job:{id1}:out");
    assert_string_equal(c.argv[5], "llmq:out:{id1}");
    assert_string_equal(c.argv[6], "llmq:cancel");
    proto_buf_deinit(&b);
    jobops_admit(&c, &kb, &k, "id1", "m1", "w0", 9, UINT64_MAX);
    assert_true(rcmd_ok(&c));
    assert_string_equal(c.argv[2], "2"); /* job hash and output stream: one slot */
    assert_string_equal(c.argv[3], "llmq:job:{id1}");
    assert_string_equal(c.argv[4], "llmq:job:{id1}:out");
    assert_string_equal(c.argv[c.argc - 1], "18446744073709551615");

    /* the entry's ack and the dead-stream record, each built once */
    jobops_ack(&c, &kb, &k, "m1", KEYS_LANE_DEFAULT, "5-1");
    assert_true(rcmd_ok(&c));
    assert_int_equal(c.argc, 6); /* EVAL script 1 stream | group entry: XACK + XDEL */
    assert_string_equal(c.argv[0], "EVAL");
    assert_string_equal(c.argv[2], "1");
    assert_string_equal(c.argv[3], "llmq:req:m1");
    assert_string_equal(c.argv[4], "workers");
    assert_string_equal(c.argv[5], "5-1");
    jobops_ack(&c, &kb, &k, "m1", KEYS_LANE_HIGH, "5-1");
    assert_string_equal(c.argv[3], "llmq:req:m1#high");
    jobops_dead(&c, &kb, &k, "m1", "", "5-2", "no id");
    assert_true(rcmd_ok(&c));
    assert_int_equal(c.argc, 9);
    assert_string_equal(c.argv[0], "XADD");
    assert_string_equal(c.argv[1], "llmq:dead:m1");
    assert_string_equal(c.argv[3], "id");
    assert_string_equal(c.argv[4], "");
    assert_string_equal(c.argv[6], "5-2");
    assert_string_equal(c.argv[8], "no id");

    /* fenced chunk: EVAL script 2 job out | attempt channel chunk */
    jobops_chunk(&c, &kb, &k, "id1", 3, "\x81\xa3seq\x00", 6);
    assert_true(rcmd_ok(&c));
    assert_int_equal(c.argc, 8);
    assert_string_equal(c.argv[2], "2");
    assert_string_equal(c.argv[3], "llmq:job:{id1}");
    assert_string_equal(c.argv[4], "llmq:job:{id1}:out");
    assert_string_equal(c.argv[5], "3");
    assert_string_equal(c.argv[6], "llmq:out:{id1}");
    assert_int_equal(c.argvlen[7], 6);

    /* fenced end: 3 keys, or 4 with the dead stream; binary chunk kept whole */
    jobops_final f = {"failed", "error", 1234, 5, 0, "bad request", 0, 0};
    jobops_finish(&c, &kb, &k, "id1", "m1", KEYS_LANE_DEFAULT, "7-1", 0, &f, 60, "\x00\x01", 2);
    assert_true(rcmd_ok(&c));
    assert_string_equal(c.argv[2], "3");
    assert_string_equal(c.argv[5], "llmq:req:m1");
    assert_string_equal(c.argv[6], "0");
    assert_int_equal(c.argvlen[8], 2);
    assert_string_equal(c.argv[10], "7-1");
    assert_string_equal(c.argv[12], "failed");
    assert_string_equal(c.argv[c.argc - 3], "bad request");
    assert_string_equal(c.argv[c.argc - 2], "id1");
    assert_string_equal(c.argv[c.argc - 1], "0"); /* cached_tokens: none */
    f.dead = 1;
    f.error = NULL;
    f.cached_tokens = 48;
    jobops_finish(&c, &kb, &k, "id1", "m1", KEYS_LANE_LOW, NULL, 2, &f, 60, "x", 1);
    assert_true(rcmd_ok(&c));
    assert_string_equal(c.argv[2], "4");
    assert_string_equal(c.argv[5], "llmq:req:m1#low"); /* acked on its lane */
    assert_string_equal(c.argv[6], "llmq:dead:m1");
    assert_string_equal(c.argv[7], "2");
    assert_string_equal(c.argv[11], "");
    assert_string_equal(c.argv[c.argc - 3], "");
    assert_string_equal(c.argv[c.argc - 1], "48");

    /* bounded submission: the request's lane, then every lane (the bound
     * counts them all); the payload is passed whole, the bound last but one */
    jobops_submit_bounded(&c, &kb, &k, "id1", "m1", 1, "\x00p", 2, 77, 10);
    assert_true(rcmd_ok(&c));
    assert_string_equal(c.argv[2], "5");
    assert_string_equal(c.argv[3], "llmq:job:{id1}");
    assert_string_equal(c.argv[4], "llmq:req:m1#high");
    assert_string_equal(c.argv[5], "llmq:req:m1#high");
    assert_string_equal(c.argv[6], "llmq:req:m1");
    assert_string_equal(c.argv[7], "llmq:req:m1#low");
    assert_int_equal(c.argvlen[11], 2);
    assert_string_equal(c.argv[12], "10");
    assert_string_equal(c.argv[13], "workers");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_layout),  cmocka_unit_test(test_prefix), cmocka_unit_test(test_lanes),
        cmocka_unit_test(test_validity_and_ids), cmocka_unit_test(test_rcmd),
        cmocka_unit_test(test_jobops_builders),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
