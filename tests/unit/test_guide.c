/*
 * test_guide.c — llguidance through dlopen (worker/engine/guide.h) on the
 * GPT-2 tokenizer of ../shared/tokenizers, and the sampler's mask.
 *
 * Expected values never come from llguidance: the allowed set of a regex is
 * recomputed from the token bytes (our tokenizer's tok_id_bytes), and a
 * walk under a JSON schema is checked by parsing its text with jansson.
 * The library is the one `make deps` puts in .venv (found under
 * $LLMQ_ROOT/.venv); without it the tests that need it skip, saying so.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <glob.h>
#include <jansson.h>
#include <math.h>

#include "tests/unit/testutil.h"
#include "worker/engine/guide.h"
#include "worker/engine/sampler.h"
#include "worker/tokenizer/tokenizer.h"

static char lib_dir[4096];
static tokenizer *gpt2;
static guide_lib *lib;
static int vocab;

static int allowed(const uint32_t *mask, int id) { return (int)(mask[id >> 5] >> (id & 31) & 1u); }

static int setup(void **st) {
    (void)st;
    char pat[4200];
    snprintf(pat, sizeof pat, "%s/.venv/lib/python3*/site-packages/llguidance", tu_root());
    glob_t gl;
    if (glob(pat, 0, NULL, &gl) == 0 && gl.gl_pathc > 0) snprintf(lib_dir, sizeof lib_dir, "%s", gl.gl_pathv[0]);
    globfree(&gl);
    const char *sh = tu_shared();
    if (sh) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/tokenizers/gpt-2", sh);
        llmq_err e = {0};
        gpt2 = tok_load(dir, &e);
        if (!gpt2) fprintf(stderr, "gpt-2 tokenizer: %s\n", e.msg);
    }
    if (gpt2 && lib_dir[0]) {
        vocab = tok_vocab_size(gpt2);
        size_t n_eos = 0;
        const int32_t *eos = tok_eos_ids(gpt2, &n_eos);
        llmq_err e = {0};
        if (guide_lib_load(&lib, lib_dir, gpt2, vocab, eos, (int)n_eos, &e))
            fprintf(stderr, "guide_lib_load(%s): %s\n", lib_dir, e.msg);
    }
    return 0;
}

static int teardown(void **st) {
    (void)st;
    guide_lib_destroy(lib);
    tok_destroy(gpt2);
    return 0;
}

#define NEED_LIB()                                                                                     \
    do {                                                                                               \
        if (!gpt2) {                                                                                   \
            fprintf(stderr, "# no ../shared/tokenizers/gpt-2\n");                                       \
            skip();                                                                                    \
        }                                                                                              \
        if (!lib_dir[0]) {                                                                             \
            fprintf(stderr, "# llguidance is not in .venv (make deps installs it)\n");                  \
            skip();                                                                                    \
        }                                                                                              \
        assert_non_null(lib);                                                                          \
    } while (0)

/* The library loads from a folder, says its version, and covers the vocab. */
static void test_load_version(void **st) {
    (void)st;
    NEED_LIB();
    assert_non_null(strstr(guide_lib_version(lib), "llguidance@"));
    assert_non_null(strstr(guide_lib_path(lib), "_lib"));
    assert_int_equal(guide_lib_vocab(lib), vocab);
}

/* Absent: a clear error naming what was tried, nothing loaded. */
static void test_absent(void **st) {
    (void)st;
    if (!gpt2) skip();
    guide_lib *g = (guide_lib *)1;
    llmq_err e = {0};
    assert_int_not_equal(guide_lib_load(&g, "/nonexistent/llguidance", gpt2, 100, NULL, 0, &e), LLMQ_OK);
    assert_null(g);
    assert_non_null(strstr(e.msg, "/nonexistent/llguidance"));
    setenv(GUIDE_ENV, "/nonexistent/env", 1);
    memset(&e, 0, sizeof e);
    assert_int_not_equal(guide_lib_load(&g, NULL, gpt2, 100, NULL, 0, &e), LLMQ_OK);
    assert_non_null(strstr(e.msg, GUIDE_ENV));
    unsetenv(GUIDE_ENV);
}

/* Bad constraints are LLMQ_ERR_INVALID with the library's message. */
static void test_invalid(void **st) {
    (void)st;
    NEED_LIB();
    static const char *const bad[][2] = {
        {"regex", "(unclosed"},
        {"json_schema", "{\"type\": \"object\""},
        {"json_schema", "{\"type\": \"no-such-type\"}"},
        {"lark", "start: undefined_rule"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        guide_matcher *m = (guide_matcher *)1;
        llmq_err e = {0};
        assert_int_equal(guide_matcher_create(&m, lib, bad[i][0], bad[i][1], &e), LLMQ_ERR_INVALID);
        assert_null(m);
        assert_true(strlen(e.msg) > strlen("invalid  constraint: ") + strlen(bad[i][0]));
    }
}

/* ids whose bytes are 1..maxlen ASCII digits: the tokens a regex [0-9]{3} allows first. */
static int digits_only(int id, size_t maxlen) {
    tok_text t = {0};
    assert_int_equal(tok_id_bytes(gpt2, id, &t), LLMQ_OK);
    int ok = t.len >= 1 && t.len <= maxlen && !tok_is_special(gpt2, id);
    for (size_t k = 0; ok && k < t.len; k++) ok = t.data[k] >= '0' && t.data[k] <= '9';
    tok_text_deinit(&t);
    return ok;
}

/* The mask of a regex is exactly the token set computed from the bytes;
 * once the regex is complete only EOS is left and the matcher stops. */
static void test_regex_mask(void **st) {
    (void)st;
    NEED_LIB();
    guide_matcher *m = NULL;
    llmq_err e = {0};
    assert_int_equal(guide_matcher_create(&m, lib, "regex", "[0-9]{3}", &e), LLMQ_OK);
    uint32_t *mask = calloc(guide_mask_words(vocab), sizeof *mask);
    const int n = guide_matcher_mask(m, mask);
    int want = 0, wrong = 0;
    for (int id = 0; id < vocab; id++) {
        const int w = digits_only(id, 3);
        want += w;
        if (w != allowed(mask, id) && wrong++ < 5) fprintf(stderr, "id %d: want %d\n", id, w);
    }
    assert_int_equal(wrong, 0);
    assert_int_equal(n, want);
    assert_true(want >= 10);
    assert_false(guide_matcher_is_stopped(m));
    /* "12" then "3": complete */
    int32_t *ids = NULL;
    size_t n_ids = 0;
    assert_int_equal(tok_encode(gpt2, "12", 2, 0, &ids, &n_ids, &e), LLMQ_OK);
    assert_int_equal(guide_matcher_consume_all(m, ids, (int)n_ids), 0);
    free(ids);
    assert_int_equal(guide_matcher_mask(m, mask), 10); /* one more digit */
    assert_int_equal(tok_encode(gpt2, "3", 1, 0, &ids, &n_ids, &e), LLMQ_OK);
    assert_int_equal(guide_matcher_consume(m, ids[0]), 0);
    free(ids);
    assert_true(guide_matcher_is_stopped(m));
    assert_int_equal(guide_matcher_mask(m, mask), 1);
    assert_true(allowed(mask, tok_eos_id(gpt2)));
    /* a token the mask refused is refused on consume too */
    guide_matcher *m2 = NULL;
    assert_int_equal(guide_matcher_create(&m2, lib, "regex", "[0-9]{3}", &e), LLMQ_OK);
    assert_int_equal(tok_encode(gpt2, "a", 1, 0, &ids, &n_ids, &e), LLMQ_OK);
    assert_int_equal(guide_matcher_consume(m2, ids[0]), -1);
    assert_true(strlen(guide_matcher_error(m2)) > 0);
    free(ids);
    guide_matcher_destroy(m2);
    guide_matcher_destroy(m);
    free(mask);
}

/* Walk a nested schema, taking the most likely allowed id of made-up
 * logits through the sampler's mask each step: the text parses and has
 * the schema's shape. */
static void test_schema_walk(void **st) {
    (void)st;
    NEED_LIB();
    const char *schema =
        "{\"type\":\"object\",\"properties\":{"
        "\"name\":{\"type\":\"string\",\"maxLength\":8},"
        "\"age\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":120},"
        "\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"x\",\"y\"]},\"maxItems\":2},"
        "\"pos\":{\"type\":\"object\",\"properties\":{\"lat\":{\"type\":\"number\",\"minimum\":-90,\"maximum\":90}},\"required\":[\"lat\"],"
        "\"additionalProperties\":false}},"
        "\"required\":[\"name\",\"age\",\"tags\",\"pos\"],\"additionalProperties\":false}";
    guide_matcher *m = NULL;
    llmq_err e = {0};
    assert_int_equal(guide_matcher_create(&m, lib, "json_schema", schema, &e), LLMQ_OK);
    sampler *smp = sampler_create(vocab);
    sampling_params sp;
    sampling_params_default(&sp);
    sp.seed = 7;
    uint32_t *mask = calloc(guide_mask_words(vocab), sizeof *mask);
    float *logits = malloc((size_t)vocab * sizeof *logits);
    int32_t out[400];
    int n = 0;
    uint64_t rng = 42;
    const int eos = tok_eos_id(gpt2);
    while (n < 400) {
        const int allowed_n = guide_matcher_mask(m, mask);
        assert_true(allowed_n > 0);
        tu_fill_random(logits, (size_t)vocab, &rng, 4.0f);
        logits[eos] = -2.0f; /* ends when the schema allows, not at once */
        const int32_t t = sampler_sample_masked(smp, &sp, logits, mask, out, n, 0, (uint64_t)n);
        assert_true(allowed(mask, t));
        assert_int_equal(guide_matcher_consume(m, t), 0);
        if (t == eos) break;
        out[n++] = t;
        if (guide_matcher_is_stopped(m)) break;
    }
    assert_true(guide_matcher_is_stopped(m));
    char *text = tok_decode(gpt2, out, (size_t)n, 1);
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    if (!j) fprintf(stderr, "not JSON: %s (%s)\n", text, je.text);
    assert_non_null(j);
    assert_true(json_is_string(json_object_get(j, "name")));
    assert_true(strlen(json_string_value(json_object_get(j, "name"))) <= 8);
    const json_t *age = json_object_get(j, "age");
    assert_true(json_is_integer(age) && json_integer_value(age) >= 0 && json_integer_value(age) <= 120);
    const json_t *tags = json_object_get(j, "tags");
    assert_true(json_is_array(tags) && json_array_size(tags) <= 2);
    const json_t *lat = json_object_get(json_object_get(j, "pos"), "lat");
    assert_true(json_is_number(lat) && json_number_value(lat) >= -90 && json_number_value(lat) <= 90);
    assert_int_equal(json_object_size(j), 4);
    json_decref(j);
    free(text);
    free(logits);
    free(mask);
    sampler_destroy(smp);
    guide_matcher_destroy(m);
}

/* The sampler's mask: only allowed ids come out, greedy and sampled, and
 * with every id allowed it draws exactly what sampler_sample draws. */
static void test_sampler_mask(void **st) {
    (void)st;
    enum { N = 70 };
    sampler *s = sampler_create(N);
    uint32_t mask[3] = {0}, all[3] = {~0u, ~0u, ~0u};
    mask[0] = 1u << 5;
    mask[2] = 1u << 3; /* ids 5 and 67 */
    sampling_params p;
    sampling_params_default(&p);
    p.seed = 3;
    p.repetition_penalty = 1.3f;
    uint64_t rng = 1;
    float l[N], l2[N];
    const int32_t hist[2] = {5, 9};
    for (uint64_t pos = 0; pos < 300; pos++) {
        tu_fill_random(l, N, &rng, 3.0f);
        memcpy(l2, l, sizeof l);
        const int32_t t = sampler_sample_masked(s, &p, l, mask, hist, 2, 1, pos);
        assert_true(t == 5 || t == 67);
        tu_fill_random(l, N, &rng, 3.0f);
        memcpy(l2, l, sizeof l);
        assert_int_equal(sampler_sample_masked(s, &p, l, all, hist, 2, 1, pos), sampler_sample(s, &p, l2, hist, 2, 1, pos));
    }
    p.temperature = 0;
    for (int i = 0; i < N; i++) l[i] = (float)i; /* greedy wants 69: masked, so 67 */
    assert_int_equal(sampler_sample_masked(s, &p, l, mask, NULL, 0, 0, 0), 67);
    sampler_destroy(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_version), cmocka_unit_test(test_absent),      cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_regex_mask),   cmocka_unit_test(test_schema_walk), cmocka_unit_test(test_sampler_mask),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
