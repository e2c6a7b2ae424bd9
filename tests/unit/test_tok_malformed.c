/*
 * test_tok_malformed.c — broken tokenizer folders get clear errors, never crashes.
 *
 * Each case starts from a valid small tokenizer.json (the bl-roberta fixture),
 * breaks one thing (truncation, a wrong JSON type, an unknown component type, a
 * merge that names a missing token, a bad regex, a broken tokenizer_config.json
 * or generation_config.json), and checks the status code and that the message
 * names the file and the offending type or field.  Run under SANITIZER=address
 * to prove the error paths free what they allocated.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "tests/unit/testutil.h"
#include "worker/tokenizer/tokenizer.h"

static char *tmpdir;
static json_t *base;

static int setup(void **state) {
    (void)state;
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/tokenizers/bl-roberta/tokenizer.json", tu_root());
    base = json_load_file(path, 0, NULL);
    tmpdir = tu_mkdtemp();
    return base && tmpdir ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    json_decref(base);
    tu_rmtree(tmpdir);
    free(tmpdir);
    return 0;
}

static void write_file(const char *name, const char *data, size_t len) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    assert_int_equal(tu_write_file(p, data, len), 0);
}

static void write_str(const char *name, const char *s) {
    write_file(name, s, strlen(s));
}

static void remove_file(const char *name) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    remove(p);
}

static void write_json(const char *name, json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT);
    assert_non_null(s);
    write_file(name, s, strlen(s));
    free(s);
}

/* Load tmpdir, expect failure with code and every needle in the message. */
static void expect_error(llmq_status code, const char *file, const char *n1, const char *n2) {
    llmq_err err = {0};
    tokenizer *t = tok_load(tmpdir, &err);
    if (t || err.code != code || !strstr(err.msg, file) || (n1 && !strstr(err.msg, n1)) ||
        (n2 && !strstr(err.msg, n2)))
        fprintf(stderr, "  want %s with '%s' '%s' '%s'; got %s: %s\n", llmq_status_name(code), file,
                n1 ? n1 : "", n2 ? n2 : "", t ? "a tokenizer" : llmq_status_name(err.code), err.msg);
    assert_null(t);
    assert_int_equal(err.code, code);
    assert_non_null(strstr(err.msg, file));
    if (n1) assert_non_null(strstr(err.msg, n1));
    if (n2) assert_non_null(strstr(err.msg, n2));
}

/* A copy of the base tokenizer with path (dotted, no arrays) set to v (stolen). */
static void with(const char *key1, const char *key2, json_t *v) {
    json_t *j = json_deep_copy(base);
    json_t *o = key2 ? json_object_get(j, key1) : j;
    json_object_set_new(o, key2 ? key2 : key1, v);
    write_json("tokenizer.json", j);
    json_decref(j);
}

static void test_io_and_syntax(void **state) {
    (void)state;
    llmq_err err = {0};
    assert_null(tok_load("/nonexistent/llmq-model", &err));
    assert_int_equal(err.code, LLMQ_ERR_IO);
    assert_non_null(strstr(err.msg, "/nonexistent/llmq-model/tokenizer.json"));
    assert_null(tok_load(NULL, NULL)); /* NULL err is allowed */

    char *s = json_dumps(base, JSON_COMPACT);
    size_t n = strlen(s);
    write_file("tokenizer.json", s, n / 2); /* truncated mid-file */
    expect_error(LLMQ_ERR_FORMAT, "tokenizer.json", "invalid JSON", NULL);
    write_file("tokenizer.json", s, 0); /* empty */
    expect_error(LLMQ_ERR_FORMAT, "tokenizer.json", "invalid JSON", NULL);
    free(s);
    write_file("tokenizer.json", "[1, 2]", 6);
    expect_error(LLMQ_ERR_FORMAT, "tokenizer.json", "object", NULL);
}

static void test_model(void **state) {
    (void)state;
    with("model", NULL, json_string("BPE"));
    expect_error(LLMQ_ERR_FORMAT, "tokenizer.json", "model", "object");
    with("model", "type", json_string("WordPiece"));
    expect_error(LLMQ_ERR_UNSUPPORTED, "tokenizer.json", "model type 'WordPiece'", NULL);
    with("model", "type", json_string("Unigram"));
    expect_error(LLMQ_ERR_UNSUPPORTED, "tokenizer.json", "'Unigram'", NULL);
    with("model", "type", json_integer(3));
    expect_error(LLMQ_ERR_FORMAT, "tokenizer.json", "\"type\"", "string");
    with("model", "vocab", json_pack("[s]", "a"));
    expect_error(LLMQ_ERR_FORMAT, "tokenizer.json", "model.vocab", NULL);
    with("model", "vocab", json_pack("{s:s}", "a", "1"));
    expect_error(LLMQ_ERR_FORMAT, "tokenizer.json", "model.vocab", "\"a\"");
    with("model", "merges", json_pack("[i]", 7));
    expect_error(LLMQ_ERR_FORMAT, "tokenizer.json", "model.merges", "merge 0");
    with("model", "merges", json_pack("[s]", "\xC4\xA0 t h")); /* three parts */
    expect_error(LLMQ_ERR_FORMAT, "tokenizer.json", "model.merges", "one space");
    with("model", "merges", json_pack("[[s,s]]", "zz-not-a-token", "t"));
    expect_error(LLMQ_ERR_FORMAT, "tokenizer.json", "not in the vocab", "zz-not-a-token");
    with("model", "merges", json_pack("{}"));
    expect_error(LLMQ_ERR_FORMAT, "tokenizer.json", "model.merges", "array");
    with("model", "dropout", json_real(0.1));
    expect_error(LLMQ_ERR_UNSUPPORTED, "tokenizer.json", "dropout", NULL);
    with("model", "byte_fallback", json_string("yes"));
    expect_error(LLMQ_ERR_FORMAT, "tokenizer.json", "byte_fallback", "boolean");
    with("model", "unk_token", json_integer(0));
    expect_error(LLMQ_ERR_FORMAT, "tokenizer.json", "unk_token", "string");
}

static void test_components(void **state) {
    (void)state;
    with("normalizer", NULL, json_pack("{s:s}", "type", "BertNormalizer"));
    expect_error(LLMQ_ERR_UNSUPPORTED, "tokenizer.json", "normalizer", "'BertNormalizer'");
    with("normalizer", NULL, json_pack("{s:s, s:[{s:s},{s:s}]}", "type", "Sequence", "normalizers", "type", "NFC",
                                       "type", "Precompiled"));
    expect_error(LLMQ_ERR_UNSUPPORTED, "tokenizer.json", "normalizer.normalizers[1]", "'Precompiled'");
    with("normalizer", NULL, json_pack("{s:s}", "typo", "NFC"));
    expect_error(LLMQ_ERR_FORMAT, "tokenizer.json", "normalizer", "missing field \"type\"");
    with("normalizer", NULL, json_pack("{s:i}", "type", 5));
    expect_error(LLMQ_ERR_FORMAT, "tokenizer.json", "normalizer", "must be a string");
    with("normalizer", NULL, json_pack("{s:s, s:{s:s}}", "type", "Replace", "pattern", "String", "x"));
    expect_error(LLMQ_ERR_FORMAT, "tokenizer.json", "normalizer", "content");
    with("normalizer", NULL, json_pack("{s:s, s:s}", "type", "Sequence", "normalizers", "NFC"));
    expect_error(LLMQ_ERR_FORMAT, "tokenizer.json", "normalizer", "normalizers");
    with("pre_tokenizer", NULL, json_pack("{s:s}", "type", "UnicodeScripts"));
    expect_error(LLMQ_ERR_UNSUPPORTED, "tokenizer.json", "pre_tokenizer", "'UnicodeScripts'");
    with("pre_tokenizer", NULL, json_pack("{s:s, s:{s:s}, s:s}", "type", "Split", "pattern", "Regex", "(unclosed",
                                          "behavior", "Isolated"));
    expect_error(LLMQ_ERR_UNSUPPORTED, "tokenizer.json", "pre_tokenizer", "does not compile");
    with("pre_tokenizer", NULL, json_pack("{s:s, s:{s:s}, s:s}", "type", "Split", "pattern", "String", " ",
                                          "behavior", "Sideways"));
    expect_error(LLMQ_ERR_UNSUPPORTED, "tokenizer.json", "pre_tokenizer", "'Sideways'");
    with("pre_tokenizer", NULL, json_pack("{s:s, s:i}", "type", "Metaspace", "replacement", 1));
    expect_error(LLMQ_ERR_FORMAT, "tokenizer.json", "pre_tokenizer", "replacement");
    with("decoder", NULL, json_pack("{s:s}", "type", "WordPiece"));
    expect_error(LLMQ_ERR_UNSUPPORTED, "tokenizer.json", "decoder", "'WordPiece'");
    with("decoder", NULL, json_pack("{s:s, s:s, s:i, s:i}", "type", "Strip", "content", "ab", "start", 1, "stop", 0));
    expect_error(LLMQ_ERR_FORMAT, "tokenizer.json", "decoder", "one character");
    with("decoder", NULL, json_pack("{s:s, s:[{s:s},{s:s}]}", "type", "Sequence", "decoders", "type", "Fuse", "type",
                                    "CTC"));
    expect_error(LLMQ_ERR_UNSUPPORTED, "tokenizer.json", "decoder.decoders[1]", "'CTC'");
    with("post_processor", NULL, json_pack("{s:s}", "type", "Frobnicate"));
    expect_error(LLMQ_ERR_UNSUPPORTED, "tokenizer.json", "post_processor", "'Frobnicate'");
    with("post_processor", NULL, json_pack("{s:s, s:[{s:{s:s}},{s:{s:s}}], s:{}}", "type", "TemplateProcessing",
                                           "single", "SpecialToken", "id", "<bos>", "Sequence", "id", "A",
                                           "special_tokens"));
    expect_error(LLMQ_ERR_FORMAT, "tokenizer.json", "post_processor", "'<bos>'");
    with("added_tokens", NULL, json_pack("{s:i}", "id", 1));
    expect_error(LLMQ_ERR_FORMAT, "tokenizer.json", "added_tokens", "array");
    with("added_tokens", NULL, json_pack("[{s:s, s:s}]", "id", "0", "content", "<s>"));
    expect_error(LLMQ_ERR_FORMAT, "tokenizer.json", "added_tokens[0]", "\"id\"");
    with("added_tokens", NULL, json_pack("[{s:i}]", "id", 0));
    expect_error(LLMQ_ERR_FORMAT, "tokenizer.json", "added_tokens[0]", "content");
}

static void test_side_files(void **state) {
    (void)state;
    write_json("tokenizer.json", base);
    write_str("tokenizer_config.json", "{\"bos_token\": "); /* truncated */
    expect_error(LLMQ_ERR_FORMAT, "tokenizer_config.json", "invalid JSON", NULL);
    write_str("tokenizer_config.json", "{\"bos_token\": 1}");
    expect_error(LLMQ_ERR_FORMAT, "tokenizer_config.json", "bos_token", NULL);
    write_str("tokenizer_config.json", "{\"add_bos_token\": \"yes\"}");
    expect_error(LLMQ_ERR_FORMAT, "tokenizer_config.json", "add_bos_token", "boolean");
    write_str("tokenizer_config.json", "{\"chat_template\": 3}");
    expect_error(LLMQ_ERR_FORMAT, "tokenizer_config.json", "chat_template", NULL);
    write_str("tokenizer_config.json",
              "{\"tokenizer_class\": \"LlamaTokenizer\", \"add_bos_token\": true, \"bos_token\": \"<nope>\"}");
    expect_error(LLMQ_ERR_FORMAT, "tokenizer_config.json", "bos_token", "not in the vocabulary");
    remove_file("tokenizer_config.json");
    write_str("generation_config.json", "{\"eos_token_id\": \"2\"}");
    expect_error(LLMQ_ERR_FORMAT, "generation_config.json", "eos_token_id", NULL);
    write_str("generation_config.json", "{\"eos_token_id\": [2, 3], \"bos_token_id\": 0}");
    llmq_err err = {0};
    tokenizer *t = tok_load(tmpdir, &err);
    if (!t) fprintf(stderr, "  %s\n", err.msg);
    assert_non_null(t);
    size_t n;
    const int32_t *e = tok_eos_ids(t, &n);
    assert_int_equal(n, 2);
    assert_int_equal(e[0], 2);
    assert_int_equal(e[1], 3);
    assert_int_equal(tok_bos_id(t), 0);
    tok_destroy(t);
    remove_file("generation_config.json");
}

/* Bad input text to a good tokenizer. */
static void test_bad_text(void **state) {
    (void)state;
    write_json("tokenizer.json", base);
    llmq_err err = {0};
    tokenizer *t = tok_load(tmpdir, &err);
    if (!t) fprintf(stderr, "  %s\n", err.msg);
    assert_non_null(t);
    int32_t *ids;
    size_t n;
    static const char *bad[] = {"\xFF", "a\xC0\x80", "\xED\xA0\x80", "\xF4\x90\x80\x80", "abc\xE2\x82"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(tok_encode(t, bad[i], strlen(bad[i]), 1, &ids, &n, &err), LLMQ_ERR_INVALID);
        assert_null(ids);
    }
    assert_int_equal(tok_encode(t, NULL, 0, 0, &ids, &n, &err), LLMQ_OK); /* empty is fine */
    assert_int_equal(n, 0);
    free(ids);
    tok_destroy(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_io_and_syntax),
        cmocka_unit_test(test_model),
        cmocka_unit_test(test_components),
        cmocka_unit_test(test_side_files),
        cmocka_unit_test(test_bad_text),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
