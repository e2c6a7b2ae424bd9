/*
 * test_sched.c — the scheduler's order among waiting sequences
 * (worker/engine/sched.h): higher priority is admitted first, FIFO within
 * a priority, and the KV pool's victim is the lowest priority running
 * sequence.  Runs the real engine on the tiny random fixture
 * tests/fixtures/hf/llama_mha; the expected orders are written out by hand
 * from the policy, not taken from the scheduler.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "tests/unit/testutil.h"
#include "worker/engine/runtime.h"
#include "worker/engine/sched.h"

#define MAX_SEQS 8

typedef struct order {
    int finished[MAX_SEQS]; /* seq indices in the order they finished */
    int n;
    seq *base;              /* the test's seqs: index = pointer - base */
} order;

static void on_finish(seq *s, void *ud) {
    order *o = ud;
    o->finished[o->n++] = (int)(s - o->base);
}

/* A runtime over the fixture with max_seqs running at most and n_blocks
 * KV blocks of 16 tokens. */
static runtime *open_rt(order *o, int max_seqs, int n_blocks) {
    static char dir[4200];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/hf/llama_mha", tu_root());
    runtime_opts ro;
    memset(&ro, 0, sizeof ro);
    ro.backend = "cpu";
    ro.model_dir = dir;
    ro.eng = (eng_opts){n_blocks, 64, max_seqs, NULL, 0, 0, NULL};
    ro.with_sched = 1;
    ro.sched = (sched_opts){max_seqs, 64};
    ro.cb = (sched_callbacks){NULL, on_finish, o};
    ro.tok = RUNTIME_TOK_NONE;
    runtime *rt = NULL;
    llmq_err err = {0};
    if (runtime_create(&rt, &ro, &err)) fail_msg("runtime: %s", err.msg);
    return rt;
}

static void run_all(runtime *rt) {
    llmq_err err = {0};
    int did = 1;
    for (int k = 0; did && k < 10000; k++)
        if (sched_step(rt->sch, &did, &err)) fail_msg("step: %s", err.msg);
}

/* One slot: sequences run one at a time, in the order the waiting list
 * admits them.  Priorities, in the order added: 0 5 0 -1 5 2 → admitted
 * 5(1) 5(4) 2(5) 0(0) 0(2) -1(3). */
static void test_priority_then_fifo(void **st) {
    (void)st;
    order o = {0};
    seq s[6];
    o.base = s;
    runtime *rt = open_rt(&o, 1, 16);
    const int32_t prio[6] = {0, 5, 0, -1, 5, 2};
    const int32_t prompt[3] = {1, 2, 3};
    sampling_params sp;
    sampling_params_default(&sp);
    llmq_err err = {0};
    for (int i = 0; i < 6; i++) {
        assert_int_equal(seq_init(&s[i], prompt, 3, 2, &sp), 0);
        s[i].ignore_eos = 1;
        s[i].priority = prio[i];
        assert_int_equal(sched_add(rt->sch, &s[i], &err), LLMQ_OK);
    }
    run_all(rt);
    const int want[6] = {1, 4, 5, 0, 2, 3};
    assert_int_equal(o.n, 6);
    assert_memory_equal(o.finished, want, sizeof want);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(s[i].finish, FINISH_LENGTH);
        seq_deinit(&s[i]);
    }
    runtime_destroy(rt);
}

/* Without priorities (all 0) the order is the order of arrival, as before. */
static void test_equal_priorities_are_fifo(void **st) {
    (void)st;
    order o = {0};
    seq s[4];
    o.base = s;
    runtime *rt = open_rt(&o, 1, 16);
    const int32_t prompt[2] = {4, 5};
    llmq_err err = {0};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(seq_init(&s[i], prompt, 2, 1, NULL), 0);
        s[i].ignore_eos = 1;
        assert_int_equal(sched_add(rt->sch, &s[i], &err), LLMQ_OK);
    }
    run_all(rt);
    const int want[4] = {0, 1, 2, 3};
    assert_int_equal(o.n, 4);
    assert_memory_equal(o.finished, want, sizeof want);
    for (int i = 0; i < 4; i++) seq_deinit(&s[i]);
    runtime_destroy(rt);
}

/* The pool runs dry with two running sequences: the low priority one is
 * preempted (though it is the older), the high one runs to its end first.
 * 3 blocks of 16: each prompt of 15 takes one block, and each needs a
 * second block at its 2nd generated token; only one can have it. */
static void test_preempts_lowest_priority(void **st) {
    (void)st;
    order o = {0};
    seq s[2];
    o.base = s;
    runtime *rt = open_rt(&o, 2, 3);
    int32_t prompt[15];
    for (int i = 0; i < 15; i++) prompt[i] = 1 + i;
    llmq_err err = {0};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(seq_init(&s[i], prompt, 15, 20, NULL), 0);
        s[i].ignore_eos = 1;
        s[i].priority = i == 0 ? -1 : 1; /* the older one is the less urgent */
        assert_int_equal(sched_add(rt->sch, &s[i], &err), LLMQ_OK);
    }
    run_all(rt);
    assert_int_equal(o.n, 2);
    assert_int_equal(o.finished[0], 1);
    assert_int_equal(o.finished[1], 0);
    assert_true(s[0].n_preempted > 0);
    assert_int_equal(s[1].n_preempted, 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(seq_n_generated(&s[i]), 20);
        seq_deinit(&s[i]);
    }
    runtime_destroy(rt);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_priority_then_fifo),
        cmocka_unit_test(test_equal_priorities_are_fifo),
        cmocka_unit_test(test_preempts_lowest_priority),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
