/*
 * test_tok_stop.c — stop strings over streamed text (worker/tokenizer/stopstr.c).
 *
 * Checked against a brute-force reference: for text T split into deltas at every
 * possible place, feeding the deltas must release exactly T up to the earliest
 * stop string (or all of T), never any byte of the stop string, and never more
 * than is safe at any point (every released prefix must also be a prefix of the
 * final answer).  Then the same through a real tokenizer: deltas are what the
 * streaming detokenizer produces for each id.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tests/unit/testutil.h"
#include "worker/tokenizer/stopstr.h"
#include "worker/tokenizer/tokenizer.h"

/* The answer: text up to the earliest stop (longest on ties), and whether one hit. */
static size_t reference(const char *t, const char *const *stops, size_t ns, int *hit) {
    size_t n = strlen(t);
    for (size_t pos = 0; pos < n; pos++)
        for (size_t i = 0; i < ns; i++)
            if (*stops[i] && !strncmp(t + pos, stops[i], strlen(stops[i]))) {
                *hit = 1;
                return pos;
            }
    *hit = 0;
    return n;
}

/* Feed t in pieces cut at the positions in cuts[]; check against the reference. */
static void feed_cut(const char *t, const char *const *stops, size_t ns, const size_t *cuts, size_t nc) {
    int want_hit;
    size_t want = reference(t, stops, ns, &want_hit);
    stop_matcher m;
    assert_int_equal(stop_init(&m, stops, ns), LLMQ_OK);
    tok_text out = {0};
    size_t prev = 0;
    int hit = 0, h;
    for (size_t k = 0; k <= nc; k++) {
        size_t end = k < nc ? cuts[k] : strlen(t);
        assert_int_equal(stop_feed(&m, t + prev, end - prev, &out, &h), LLMQ_OK);
        hit |= h;
        /* never ahead of the answer */
        assert_true(out.len <= want);
        if (out.len) assert_memory_equal(out.data, t, out.len);
        prev = end;
    }
    assert_int_equal(stop_flush(&m, &out), LLMQ_OK);
    assert_int_equal(hit, want_hit);
    assert_int_equal(m.stopped, want_hit);
    assert_int_equal(out.len, want);
    if (want) assert_memory_equal(out.data, t, want);
    tok_text_deinit(&out);
    stop_deinit(&m);
}

static void all_splits(const char *t, const char *const *stops, size_t ns) {
    size_t n = strlen(t);
    feed_cut(t, stops, ns, NULL, 0);
    for (size_t a = 0; a <= n; a++) { /* every single cut and every pair of cuts */
        feed_cut(t, stops, ns, &a, 1);
        for (size_t b = a; b <= n; b++) {
            size_t c[2] = {a, b};
            feed_cut(t, stops, ns, c, 2);
        }
    }
    /* byte by byte */
    size_t *c = malloc((n + 1) * sizeof *c);
    for (size_t i = 0; i < n; i++) c[i] = i + 1;
    feed_cut(t, stops, ns, c, n);
    free(c);
}

static void test_straddling(void **state) {
    (void)state;
    const char *s1[] = {"world. The"};
    all_splits("Hello world. The end.", s1, 1);
    const char *s2[] = {"\n\nUser:", "###"};
    all_splits("Answer: 42\n\nUser: next", s2, 2);
    all_splits("a ## b ### c", s2, 2);
    const char *s3[] = {"ab", "abc", "b"}; /* overlapping stops: earliest start, then longest */
    all_splits("xxabcx", s3, 3);
    all_splits("xxbab", s3, 3);
    const char *s4[] = {"😀", "é"};
    all_splits("smile 😀 please", s4, 2);
    all_splits("caf\xC3\xA9", s4, 2);
}

static void test_partial_not_stop(void **state) {
    (void)state;
    /* Prefixes of the stop appear and are released once they turn out not to be one. */
    const char *s[] = {"wonderful"};
    all_splits("wonder wonders wonderfu wonderfully", s, 1);
    all_splits("wonder wonders wonderfu", s, 1);
    const char *t[] = {"aaab"};
    all_splits("aaaaaaaaab", t, 1);
    all_splits("aaaaaaaa", t, 1);
    /* a held partial match is released at the end */
    stop_matcher m;
    tok_text out = {0};
    int hit;
    assert_int_equal(stop_init(&m, s, 1), LLMQ_OK);
    assert_int_equal(stop_feed(&m, "It was wonder", 13, &out, &hit), LLMQ_OK);
    assert_string_equal(out.data, "It was ");
    assert_int_equal(stop_feed(&m, "f", 1, &out, &hit), LLMQ_OK);
    assert_string_equal(out.data, "It was ");
    assert_int_equal(stop_flush(&m, &out), LLMQ_OK);
    assert_string_equal(out.data, "It was wonderf");
    assert_int_equal(hit, 0);
    stop_deinit(&m);
    tok_text_deinit(&out);
}

static void test_edges(void **state) {
    (void)state;
    stop_matcher m;
    tok_text out = {0};
    int hit;
    /* no stops (or only empty ones): everything passes straight through */
    const char *none[] = {"", NULL};
    assert_int_equal(stop_init(&m, none, 2), LLMQ_OK);
    assert_int_equal(stop_feed(&m, "abc", 3, &out, &hit), LLMQ_OK);
    assert_string_equal(out.data, "abc");
    stop_deinit(&m);
    stop_deinit(NULL);
    /* a stop at the very start emits nothing; later feeds are ignored */
    const char *s[] = {"x", "STOP"};
    out.len = 0;
    assert_int_equal(stop_init(&m, s, 2), LLMQ_OK);
    assert_int_equal(stop_feed(&m, "STOP and more", 13, &out, &hit), LLMQ_OK);
    assert_int_equal(hit, 1);
    assert_int_equal(out.len, 0);
    assert_int_equal(m.which, 1);
    assert_int_equal(stop_feed(&m, "more", 4, &out, &hit), LLMQ_OK);
    assert_int_equal(hit, 0);
    assert_int_equal(stop_flush(&m, &out), LLMQ_OK);
    assert_int_equal(out.len, 0);
    stop_deinit(&m);
    tok_text_deinit(&out);
}

/* Stops over real token deltas: the tokenizer splits "Paris" and "\n\n" apart. */
static void test_with_tokenizer(void **state) {
    (void)state;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/tokenizers/bl-llama3", tu_root());
    llmq_err err = {0};
    tokenizer *t = tok_load(dir, &err);
    assert_non_null(t);
    const char *text = "The capital of France is Paris.\n\nQuestion: and of Spain? 😀 Madrid";
    const char *cases[][2] = {
        {"Paris.\n\nQuestion", "The capital of France is "},
        {"is Par", "The capital of France "},
        {"\n\n", "The capital of France is Paris."},
        {"😀", "The capital of France is Paris.\n\nQuestion: and of Spain? "},
        {"Parisian", "The capital of France is Paris.\n\nQuestion: and of Spain? 😀 Madrid"},
        {"Madrid!", "The capital of France is Paris.\n\nQuestion: and of Spain? 😀 Madrid"},
    };
    int32_t *ids;
    size_t n;
    assert_int_equal(tok_encode(t, text, strlen(text), 0, &ids, &n, &err), LLMQ_OK);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        stop_matcher m;
        const char *stops[] = {cases[c][0]};
        assert_int_equal(stop_init(&m, stops, 1), LLMQ_OK);
        tok_stream s;
        assert_int_equal(tok_stream_init(&s, t, NULL, 0, 1), LLMQ_OK);
        tok_text delta = {0}, out = {0};
        int hit = 0;
        for (size_t i = 0; i < n && !hit; i++) {
            delta.len = 0;
            assert_int_equal(tok_stream_push(&s, ids[i], &delta), LLMQ_OK);
            assert_int_equal(stop_feed(&m, delta.data ? delta.data : "", delta.len, &out, &hit), LLMQ_OK);
        }
        if (!hit) {
            delta.len = 0;
            assert_int_equal(tok_stream_finish(&s, &delta), LLMQ_OK);
            assert_int_equal(stop_feed(&m, delta.data ? delta.data : "", delta.len, &out, &hit), LLMQ_OK);
            assert_int_equal(stop_flush(&m, &out), LLMQ_OK);
        }
        assert_string_equal(out.data ? out.data : "", cases[c][1]);
        tok_stream_deinit(&s);
        stop_deinit(&m);
        tok_text_deinit(&delta);
        tok_text_deinit(&out);
    }
    free(ids);
    tok_destroy(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_straddling),
        cmocka_unit_test(test_partial_not_stop),
        cmocka_unit_test(test_edges),
        cmocka_unit_test(test_with_tokenizer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
