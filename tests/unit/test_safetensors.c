/*
 * test_safetensors.c — malformed model directories get a clear error that
 * names the file, the tensor and the problem; never a crash (run under
 * SANITIZER=address too).  Each case starts from a valid fixture
 * (tests/fixtures/hf/llama_mha) and breaks one thing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/testutil.h"
#include "worker/model/model.h"
#include "worker/model/safetensors.h"

static char src_dir[4096];
static char *tmp;

static int setup(void **st) {
    (void)st;
    snprintf(src_dir, sizeof src_dir, "%s/tests/fixtures/hf/llama_mha", tu_root());
    return 0;
}

static int each_setup(void **st) {
    (void)st;
    tmp = tu_mkdtemp();
    char from[4200], to[4200];
    snprintf(from, sizeof from, "%s/config.json", src_dir);
    snprintf(to, sizeof to, "%s/config.json", tmp);
    size_t n;
    char *cfg = tu_read_file(from, &n);
    if (!cfg || tu_write_file(to, cfg, n)) return -1;
    free(cfg);
    return 0;
}

static int each_teardown(void **st) {
    (void)st;
    tu_rmtree(tmp);
    free(tmp);
    return 0;
}

/* Write tmp/model.safetensors from a header and data. */
static void write_st(const char *header, const void *data, size_t data_len) {
    size_t hl = strlen(header);
    size_t total = 8 + hl + data_len;
    unsigned char *buf = malloc(total);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, header, hl);
    if (data_len) memcpy(buf + 8 + hl, data, data_len);
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", tmp);
    assert_int_equal(tu_write_file(path, buf, total), 0);
    free(buf);
}

/* Copy the fixture's safetensors into tmp with its header changed by fn. */
static void rewrite_fixture(void (*fn)(json_t *hdr)) {
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", src_dir);
    size_t n;
    unsigned char *raw = (unsigned char *)tu_read_file(path, &n);
    assert_non_null(raw);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | raw[i];
    json_t *hdr = json_loadb((const char *)raw + 8, hl, 0, NULL);
    assert_non_null(hdr);
    fn(hdr);
    char *text = json_dumps(hdr, JSON_COMPACT);
    write_st(text, raw + 8 + hl, n - 8 - hl);
    free(text);
    json_decref(hdr);
    free(raw);
}

/* Load tmp as a model; expect failure with every needle in the message. */
static void expect_error(llmq_status code, const char *needle1, const char *needle2) {
    llmq_backend *be = llmq_backend_create("cpu", NULL);
    model *m = NULL;
    llmq_err err = {0};
    llmq_status st = model_load(&m, tmp, be, NULL, &err);
    print_message("error: %s\n", err.msg);
    if (st == LLMQ_OK) fail_msg("a malformed model loaded without error");
    assert_null(m);
    assert_int_equal(st, code);
    if (needle1 && !strstr(err.msg, needle1)) fail_msg("'%s' not in: %s", needle1, err.msg);
    if (needle2 && !strstr(err.msg, needle2)) fail_msg("'%s' not in: %s", needle2, err.msg);
    llmq_backend_destroy(be);
}

static void test_too_short(void **st) {
    (void)st;
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", tmp);
    tu_write_file(path, "abc", 3);
    expect_error(LLMQ_ERR_FORMAT, "model.safetensors", "too short");
}

static void test_header_length_past_end(void **st) {
    (void)st;
    unsigned char buf[16] = {0xff, 0xff, 0xff, 0, 0, 0, 0, 0, '{', '}'};
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", tmp);
    tu_write_file(path, buf, sizeof buf);
    expect_error(LLMQ_ERR_FORMAT, "model.safetensors", "header length");
}

static void test_header_not_json(void **st) {
    (void)st;
    write_st("{\"a\": [1, 2", NULL, 0);
    expect_error(LLMQ_ERR_FORMAT, "model.safetensors", "not valid JSON");
}

static void test_offsets_outside(void **st) {
    (void)st;
    write_st("{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", "12345678", 8);
    expect_error(LLMQ_ERR_FORMAT, "\"x\"", "outside the data section");
}

static void test_size_mismatch(void **st) {
    (void)st;
    write_st("{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", "1234567812345678", 16);
    expect_error(LLMQ_ERR_FORMAT, "\"x\"", "needs 12");
}

static void test_overlap(void **st) {
    (void)st;
    write_st("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
             "123456781234", 12);
    expect_error(LLMQ_ERR_FORMAT, "overlap", "\"a\"");
}

static void test_bad_types(void **st) {
    (void)st;
    write_st("{\"a\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", "12345678", 8);
    expect_error(LLMQ_ERR_FORMAT, "\"a\"", "dtype");
    write_st("{\"a\":{\"dtype\":\"F32\",\"shape\":\"2\",\"data_offsets\":[0,8]}}", "12345678", 8);
    expect_error(LLMQ_ERR_FORMAT, "\"a\"", "shape");
    write_st("{\"a\":{\"dtype\":\"Q9\",\"shape\":[2],\"data_offsets\":[0,8]}}", "12345678", 8);
    expect_error(LLMQ_ERR_FORMAT, "unknown dtype", "Q9");
    write_st("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", "12345678", 8);
    expect_error(LLMQ_ERR_FORMAT, "\"a\"", "shape[0]");
}

static void drop_o_proj(json_t *h) { json_object_del(h, "model.layers.1.self_attn.o_proj.weight"); }
static void test_missing_tensor(void **st) {
    (void)st;
    rewrite_fixture(drop_o_proj);
    expect_error(LLMQ_ERR_FORMAT, "model.layers.1.self_attn.o_proj.weight", "missing");
}

static void wrong_shape(json_t *h) {
    json_t *t = json_object_get(h, "model.layers.0.mlp.up_proj.weight");
    json_t *shape = json_object_get(t, "shape");
    /* same element count, transposed: 96 x 64 -> 64 x 96 */
    json_array_set_new(shape, 0, json_integer(64));
    json_array_set_new(shape, 1, json_integer(96));
}
static void test_wrong_shape(void **st) {
    (void)st;
    rewrite_fixture(wrong_shape);
    expect_error(LLMQ_ERR_FORMAT, "model.layers.0.mlp.up_proj.weight", "expected [96, 64]");
}

static void int_dtype(json_t *h) {
    json_t *t = json_object_get(h, "model.norm.weight");
    json_object_set_new(t, "dtype", json_string("I32"));
}
static void test_unsupported_dtype(void **st) {
    (void)st;
    rewrite_fixture(int_dtype);
    expect_error(LLMQ_ERR_UNSUPPORTED, "model.norm.weight", "dtype I32");
}

static void test_unsupported_architecture(void **st) {
    (void)st;
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", tmp);
    const char *cfg = "{\"architectures\":[\"GPTNeoXForCausalLM\"],\"hidden_size\":64}";
    tu_write_file(path, cfg, strlen(cfg));
    expect_error(LLMQ_ERR_UNSUPPORTED, "GPTNeoXForCausalLM", "not supported");
    /* Falcon: rotary only; its own activation; heads that divide */
    const char *alibi = "{\"architectures\":[\"FalconForCausalLM\"],\"hidden_size\":64,\"num_attention_heads\":4,"
                        "\"num_hidden_layers\":1,\"vocab_size\":9,\"alibi\":true}";
    tu_write_file(path, alibi, strlen(alibi));
    expect_error(LLMQ_ERR_UNSUPPORTED, "ALiBi", "rotary only");
    const char *act = "{\"architectures\":[\"FalconForCausalLM\"],\"hidden_size\":64,\"num_attention_heads\":4,"
                      "\"num_hidden_layers\":1,\"vocab_size\":9,\"activation\":\"relu\"}";
    tu_write_file(path, act, strlen(act));
    expect_error(LLMQ_ERR_UNSUPPORTED, "relu", "only gelu");
    const char *kv = "{\"architectures\":[\"FalconForCausalLM\"],\"hidden_size\":64,\"num_attention_heads\":4,"
                     "\"num_hidden_layers\":1,\"vocab_size\":9,\"new_decoder_architecture\":true,\"num_kv_heads\":3}";
    tu_write_file(path, kv, strlen(kv));
    expect_error(LLMQ_ERR_FORMAT, "4 attention heads", "3 KV heads");
}

static void test_bad_config(void **st) {
    (void)st;
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", tmp);
    tu_write_file(path, "{\"architectures\": [\"LlamaForCausalLM\"", 37);
    expect_error(LLMQ_ERR_FORMAT, "config.json", "invalid JSON");
    const char *neg = "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":\"64\"}";
    tu_write_file(path, neg, strlen(neg));
    expect_error(LLMQ_ERR_FORMAT, "config.json", "hidden_size");
    const char *heads = "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":8,"
                        "\"num_hidden_layers\":1,\"num_attention_heads\":6,\"num_key_value_heads\":4,\"vocab_size\":9}";
    tu_write_file(path, heads, strlen(heads));
    expect_error(LLMQ_ERR_FORMAT, "num_attention_heads (6)", "num_key_value_heads (4)");
    const char *act = "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":8,"
                      "\"num_hidden_layers\":1,\"num_attention_heads\":4,\"vocab_size\":9,\"hidden_act\":\"gelu\"}";
    tu_write_file(path, act, strlen(act));
    expect_error(LLMQ_ERR_UNSUPPORTED, "hidden_act", "gelu");
}

static void test_no_weights_and_bad_index(void **st) {
    (void)st;
    expect_error(LLMQ_ERR_IO, "no model.safetensors", NULL);
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", tmp);
    const char *idx = "{\"weight_map\":{\"model.norm.weight\":\"model-00001-of-00002.safetensors\"}}";
    tu_write_file(path, idx, strlen(idx));
    expect_error(LLMQ_ERR_IO, "model-00001-of-00002.safetensors", "cannot open");
    tu_write_file(path, "[1,2", 4);
    expect_error(LLMQ_ERR_FORMAT, "model.safetensors.index.json", "invalid JSON");
}

static void test_valid_fixture_loads(void **st) {
    (void)st;
    st_set *s = NULL;
    llmq_err err = {0};
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", src_dir);
    assert_int_equal(st_open_file(&s, path, &err), LLMQ_OK);
    const st_tensor *t = st_find(s, "model.embed_tokens.weight");
    assert_non_null(t);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 256);
    assert_int_equal(t->shape[1], 64);
    assert_int_equal(t->nbytes, 256 * 64 * 4);
    assert_null(st_find(s, "lm_head.bias"));
    st_close(s);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, each_setup, each_teardown)
    const struct CMUnitTest tests[] = {
        T(test_too_short),          T(test_header_length_past_end), T(test_header_not_json),
        T(test_offsets_outside),    T(test_size_mismatch),          T(test_overlap),
        T(test_bad_types),          T(test_missing_tensor),         T(test_wrong_shape),
        T(test_unsupported_dtype),  T(test_unsupported_architecture), T(test_bad_config),
        T(test_no_weights_and_bad_index), T(test_valid_fixture_loads),
    };
    return cmocka_run_group_tests_name("safetensors", tests, setup, NULL);
}
