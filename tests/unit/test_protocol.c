/*
 * test_protocol.c — msgpack requests and chunks (common/protocol.c):
 * round trips, defaults, wrong types naming the field, truncated and
 * garbage input, unknown keys, version check, range validation.
 */
#include <math.h>
#include <msgpack.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/protocol.h"

/* msgpack-c allocates a container's element table from the count its header
 * declares, before reading any element: a 6-byte message can declare 2^32-1
 * elements (~100 GB).  Outside ASan that malloc fails (or reserves untouched
 * address space) and the decoder reports a format error; under ASan a failed
 * malloc aborts unless the allocator may return NULL, which is what this
 * test checks. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1"; }

/* ---------------------------------------------------------------- helpers */

static int sb_write(void *data, const char *p, size_t n) {
    return proto_buf_append(data, p, n) == LLMQ_OK ? 0 : -1;
}

static void pk_str(msgpack_packer *pk, const char *s) {
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

/* A map {model: "m", prompt: "hi", <key>: <value packed by fn>}. */
typedef void (*pack_fn)(msgpack_packer *pk);
static void build_req_with(proto_buf *b, const char *key, pack_fn fn) {
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, sb_write);
    msgpack_pack_map(&pk, 3);
    pk_str(&pk, "model");
    pk_str(&pk, "m");
    pk_str(&pk, "prompt");
    pk_str(&pk, "hi");
    pk_str(&pk, key);
    fn(&pk);
}

static void pack_string(msgpack_packer *pk) { pk_str(pk, "oops"); }
static void pack_float(msgpack_packer *pk) { msgpack_pack_double(pk, 0.5); }
static void pack_int(msgpack_packer *pk) { msgpack_pack_int64(pk, 7); }
static void pack_nil(msgpack_packer *pk) { msgpack_pack_nil(pk); }
static void pack_map(msgpack_packer *pk) { msgpack_pack_map(pk, 0); }
static void pack_str_array(msgpack_packer *pk) {
    msgpack_pack_array(pk, 2);
    pk_str(pk, "a");
    pk_str(pk, "b");
}
static void pack_bad_messages(msgpack_packer *pk) {
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 2);
    pk_str(pk, "role");
    pk_str(pk, "user");
    pk_str(pk, "content");
    msgpack_pack_int64(pk, 3);
}

static proto_request full_request(void) {
    static proto_message msgs[2] = {{(char *)"system", (char *)"be brief", NULL}, {(char *)"user", (char *)"héllo", NULL}};
    static char *stops[2] = {(char *)"\n\n", (char *)"END"};
    static int32_t stop_ids[3] = {2, 0, 32000};
    proto_request r;
    proto_request_init(&r);
    r.id = (char *)"abc123";
    r.model = (char *)"stories260K";
    r.kind = PROTO_PROMPT_MESSAGES;
    r.messages = msgs;
    r.n_messages = 2;
    r.max_tokens = 48;
    r.temperature = 0.7;
    r.top_p = 0.9;
    r.top_k = 40;
    r.min_p = 0.05;
    r.has_seed = true;
    r.seed = UINT64_MAX - 3;
    r.stop = stops;
    r.n_stop = 2;
    r.stop_token_ids = stop_ids;
    r.n_stop_token_ids = 3;
    r.ignore_eos = true;
    r.repetition_penalty = 1.1;
    r.presence_penalty = -0.5;
    r.frequency_penalty = 0.25;
    r.logprobs = 3;
    r.deadline_ms = 1790000000123LL;
    r.priority = -2;
    return r;
}

/* ---------------------------------------------------------------- requests */

static void test_request_roundtrip_full(void **state) {
    (void)state;
    proto_request in = full_request();
    proto_buf b;
    proto_buf_init(&b);
    llmq_err err;
    assert_int_equal(proto_request_encode(&in, &b, &err), LLMQ_OK);
    proto_request out;
    assert_int_equal(proto_request_decode(&out, b.data, b.len, &err), LLMQ_OK);
    assert_int_equal(out.v, 1);
    assert_string_equal(out.id, "abc123");
    assert_string_equal(out.model, "stories260K");
    assert_int_equal(out.kind, PROTO_PROMPT_MESSAGES);
    assert_int_equal(out.n_messages, 2);
    assert_string_equal(out.messages[0].role, "system");
    assert_string_equal(out.messages[1].content, "héllo");
    assert_int_equal(out.max_tokens, 48);
    assert_true(out.temperature == 0.7);
    assert_true(out.top_p == 0.9);
    assert_int_equal(out.top_k, 40);
    assert_true(out.min_p == 0.05);
    assert_true(out.has_seed);
    assert_true(out.seed == UINT64_MAX - 3);
    assert_int_equal(out.n_stop, 2);
    assert_string_equal(out.stop[0], "\n\n");
    assert_string_equal(out.stop[1], "END");
    assert_int_equal(out.n_stop_token_ids, 3);
    assert_int_equal(out.stop_token_ids[2], 32000);
    assert_true(out.ignore_eos);
    assert_true(out.repetition_penalty == 1.1);
    assert_true(out.presence_penalty == -0.5);
    assert_true(out.frequency_penalty == 0.25);
    assert_int_equal(out.logprobs, 3);
    assert_true(out.deadline_ms == 1790000000123LL);
    assert_int_equal(out.priority, -2);
    assert_int_equal(proto_request_validate(&out, &err), LLMQ_OK);
    proto_request_deinit(&out);
    proto_request_deinit(&out); /* twice is harmless */
    proto_buf_deinit(&b);
}

static void test_request_roundtrip_defaults(void **state) {
    (void)state;
    proto_request in;
    proto_request_init(&in);
    in.model = (char *)"m";
    in.kind = PROTO_PROMPT_IDS;
    int32_t ids[4] = {1, 15043, 0, 2};
    in.prompt_ids = ids;
    in.n_prompt_ids = 4;
    proto_buf b;
    proto_buf_init(&b);
    llmq_err err;
    assert_int_equal(proto_request_encode(&in, &b, &err), LLMQ_OK);
    proto_request out;
    assert_int_equal(proto_request_decode(&out, b.data, b.len, &err), LLMQ_OK);
    assert_null(out.id);
    assert_int_equal(out.kind, PROTO_PROMPT_IDS);
    assert_int_equal(out.n_prompt_ids, 4);
    assert_int_equal(out.prompt_ids[1], 15043);
    assert_int_equal(out.max_tokens, PROTO_UNSET);
    assert_true(isnan(out.temperature) && isnan(out.top_p) && isnan(out.min_p));
    assert_true(isnan(out.repetition_penalty) && isnan(out.presence_penalty) && isnan(out.frequency_penalty));
    assert_int_equal(out.top_k, PROTO_UNSET);
    assert_int_equal(out.logprobs, PROTO_UNSET);
    assert_false(out.has_seed);
    assert_false(out.ignore_eos);
    assert_int_equal(out.n_stop, 0);
    assert_true(out.deadline_ms == 0);
    assert_int_equal(out.priority, 0);
    proto_request_deinit(&out);
    /* Reuse the buffer: reset keeps the allocation, a second encode is identical. */
    size_t first = b.len;
    char *copy = malloc(first);
    memcpy(copy, b.data, first);
    proto_buf_reset(&b);
    assert_int_equal(proto_request_encode(&in, &b, &err), LLMQ_OK);
    assert_int_equal(b.len, first);
    assert_memory_equal(b.data, copy, first);
    free(copy);
    proto_buf_deinit(&b);
}

static void expect_field_error(const char *key, pack_fn fn, llmq_status want, const char *needle) {
    proto_buf b;
    proto_buf_init(&b);
    build_req_with(&b, key, fn);
    proto_request r;
    llmq_err err;
    llmq_err_clear(&err);
    llmq_status st = proto_request_decode(&r, b.data, b.len, &err);
    if (st != want || !strstr(err.msg, needle))
        fail_msg("key %s: status %d (want %d), message '%s' lacks '%s'", key, st, want, err.msg, needle);
    /* the struct is left empty */
    assert_null(r.model);
    assert_null(r.prompt);
    proto_buf_deinit(&b);
}

static void test_request_wrong_types_name_field(void **state) {
    (void)state;
    expect_field_error("temperature", pack_string, LLMQ_ERR_INVALID, "field 'temperature': expected a number, got a string");
    expect_field_error("max_tokens", pack_float, LLMQ_ERR_INVALID, "field 'max_tokens': expected an integer, got a float");
    expect_field_error("top_k", pack_string, LLMQ_ERR_INVALID, "'top_k'");
    expect_field_error("seed", pack_float, LLMQ_ERR_INVALID, "'seed'");
    expect_field_error("ignore_eos", pack_int, LLMQ_ERR_INVALID, "field 'ignore_eos': expected a boolean");
    expect_field_error("stop", pack_int, LLMQ_ERR_INVALID, "field 'stop'");
    expect_field_error("stop_token_ids", pack_string, LLMQ_ERR_INVALID, "field 'stop_token_ids'");
    expect_field_error("deadline_ms", pack_string, LLMQ_ERR_INVALID, "'deadline_ms'");
    expect_field_error("model", pack_int, LLMQ_ERR_INVALID, "field 'model': expected a string, got an integer");
    expect_field_error("id", pack_map, LLMQ_ERR_INVALID, "field 'id'");
    expect_field_error("v", pack_string, LLMQ_ERR_INVALID, "field 'v'");
    expect_field_error("logprobs", pack_string, LLMQ_ERR_INVALID, "'logprobs'");
    expect_field_error("presence_penalty", pack_map, LLMQ_ERR_INVALID, "'presence_penalty'");
}

static void test_request_prompt_forms(void **state) {
    (void)state;
    /* two prompt forms */
    expect_field_error("messages", pack_str_array, LLMQ_ERR_INVALID, "entry 0");
    proto_buf b;
    proto_buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, sb_write);
    msgpack_pack_map(&pk, 3);
    pk_str(&pk, "model");
    pk_str(&pk, "m");
    pk_str(&pk, "prompt");
    pk_str(&pk, "a");
    pk_str(&pk, "prompt_ids");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_int64(&pk, 5);
    proto_request r;
    llmq_err err;
    assert_int_equal(proto_request_decode(&r, b.data, b.len, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "more than one"));
    /* no prompt at all */
    proto_buf_reset(&b);
    msgpack_pack_map(&pk, 1);
    pk_str(&pk, "model");
    pk_str(&pk, "m");
    assert_int_equal(proto_request_decode(&r, b.data, b.len, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "none of"));
    /* message content of the wrong type names the entry */
    proto_buf_reset(&b);
    build_req_with(&b, "x", pack_nil);
    proto_buf_reset(&b);
    msgpack_pack_map(&pk, 2);
    pk_str(&pk, "model");
    pk_str(&pk, "m");
    pk_str(&pk, "messages");
    pack_bad_messages(&pk);
    assert_int_equal(proto_request_decode(&r, b.data, b.len, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "entry 0: field 'messages.content': expected a string"));
    /* negative prompt id */
    proto_buf_reset(&b);
    msgpack_pack_map(&pk, 1);
    pk_str(&pk, "prompt_ids");
    msgpack_pack_array(&pk, 2);
    msgpack_pack_int64(&pk, 5);
    msgpack_pack_int64(&pk, -1);
    assert_int_equal(proto_request_decode(&r, b.data, b.len, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "prompt_ids"));
    proto_buf_deinit(&b);
}

static void test_request_nil_and_unknown_keys(void **state) {
    (void)state;
    proto_buf b;
    proto_buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, sb_write);
    msgpack_pack_map(&pk, 6);
    pk_str(&pk, "model");
    pk_str(&pk, "m");
    pk_str(&pk, "prompt");
    pk_str(&pk, "once upon");
    pk_str(&pk, "temperature");
    msgpack_pack_nil(&pk); /* null = not given */
    pk_str(&pk, "future_knob");
    msgpack_pack_map(&pk, 1);
    pk_str(&pk, "x");
    msgpack_pack_array(&pk, 0);
    msgpack_pack_int64(&pk, 42); /* a non-string key: ignored */
    msgpack_pack_true(&pk);
    pk_str(&pk, "stop");
    pk_str(&pk, "\n"); /* a single string is one stop string */
    proto_request r;
    llmq_err err;
    assert_int_equal(proto_request_decode(&r, b.data, b.len, &err), LLMQ_OK);
    assert_true(isnan(r.temperature));
    assert_string_equal(r.prompt, "once upon");
    assert_int_equal(r.n_stop, 1);
    assert_string_equal(r.stop[0], "\n");
    proto_request_deinit(&r);
    proto_buf_deinit(&b);
}

static void test_request_version(void **state) {
    (void)state;
    proto_buf b;
    proto_buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, sb_write);
    msgpack_pack_map(&pk, 2);
    pk_str(&pk, "v");
    msgpack_pack_int64(&pk, 2);
    pk_str(&pk, "prompt");
    pk_str(&pk, "x");
    proto_request r;
    llmq_err err;
    assert_int_equal(proto_request_decode(&r, b.data, b.len, &err), LLMQ_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "version 2"));
    proto_buf_deinit(&b);
}

static void test_request_truncated_and_garbage(void **state) {
    (void)state;
    proto_request in = full_request();
    proto_buf b;
    proto_buf_init(&b);
    llmq_err err;
    assert_int_equal(proto_request_encode(&in, &b, &err), LLMQ_OK);
    proto_request r;
    /* every strict prefix is refused as a format error, never a crash */
    for (size_t n = 0; n < b.len; n++) {
        llmq_status st = proto_request_decode(&r, b.data, n, &err);
        if (st != LLMQ_ERR_FORMAT) fail_msg("prefix %zu/%zu: status %d (%s)", n, b.len, st, err.msg);
    }
    /* trailing bytes */
    proto_buf_append(&b, "\xc0", 1);
    assert_int_equal(proto_request_decode(&r, b.data, b.len, &err), LLMQ_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "trailing"));
    /* not a map */
    assert_int_equal(proto_request_decode(&r, "\x93\x01\x02\x03", 4, &err), LLMQ_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "expected a msgpack map"));
    /* invalid first byte */
    assert_int_equal(proto_request_decode(&r, "\xc1", 1, &err), LLMQ_ERR_FORMAT);
    /* JSON is not msgpack */
    const char *json = "{\"prompt\":\"x\"}";
    assert_int_equal(proto_request_decode(&r, json, strlen(json), &err), LLMQ_ERR_FORMAT);
    /* an array header that lies about its length (2^32-1 elements in 6 bytes) */
    assert_int_equal(proto_request_decode(&r, "\x81\xa1p\xdd\xff\xff\xff\xff", 8, &err), LLMQ_ERR_FORMAT);
    /* pseudo-random garbage of many lengths */
    unsigned s = 12345;
    char junk[512];
    for (int t = 0; t < 2000; t++) {
        size_t n = (size_t)(t % 511) + 1;
        for (size_t i = 0; i < n; i++) {
            s = s * 1103515245u + 12345u;
            junk[i] = (char)(s >> 16);
            /* arrays and maps with a 32-bit count (0xdd, 0xdf) become their
             * 16-bit forms: msgpack-c allocates the claimed count before it
             * finds the bytes missing, and under ASan each multi-GB claim
             * took seconds (146 s of CI); the lying 32-bit header is checked
             * once above */
            if ((unsigned char)junk[i] == 0xdd || (unsigned char)junk[i] == 0xdf) junk[i] = (char)(junk[i] - 1);
        }
        if (t % 3 == 0) junk[0] = (char)0x8f; /* start as a map, to get deeper */
        llmq_status st = proto_request_decode(&r, junk, n, &err);
        if (st == LLMQ_OK) proto_request_deinit(&r);
        proto_chunk c;
        if (proto_chunk_decode(&c, junk, n, &err) == LLMQ_OK) proto_chunk_deinit(&c);
    }
    proto_buf_deinit(&b);
}

static void test_request_validate_ranges(void **state) {
    (void)state;
    proto_request r = full_request();
    llmq_err err;
    assert_int_equal(proto_request_validate(&r, &err), LLMQ_OK);
    r.temperature = 2.5;
    assert_int_equal(proto_request_validate(&r, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "temperature"));
    r = full_request();
    r.top_p = 0;
    assert_int_equal(proto_request_validate(&r, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "top_p"));
    r = full_request();
    r.max_tokens = 0;
    assert_int_equal(proto_request_validate(&r, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "max_tokens"));
    r = full_request();
    r.model = NULL;
    assert_int_equal(proto_request_validate(&r, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "model"));
    r = full_request();
    r.frequency_penalty = -3;
    assert_int_equal(proto_request_validate(&r, &err), LLMQ_ERR_INVALID);
    r = full_request();
    r.kind = PROTO_PROMPT_NONE;
    assert_int_equal(proto_request_validate(&r, &err), LLMQ_ERR_INVALID);
    proto_buf b;
    proto_buf_init(&b);
    assert_int_equal(proto_request_encode(&r, &b, &err), LLMQ_ERR_INVALID);
    assert_int_equal(b.len, 0);
    proto_buf_deinit(&b);
}

/* A string of n copies of c (malloc'd). */
static char *filled(size_t n, char c) {
    char *s = malloc(n + 1);
    assert_non_null(s);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* The PROTO_MAX_* bounds: at the bound is valid, one past is not, in
 * validate (what the gateway and libllmq check) and in decode (the worker). */
static void test_request_limits(void **state) {
    (void)state;
    llmq_err err;
    proto_request r = full_request();
    char *stop_ok = filled(PROTO_MAX_STOP_LEN, 's'), *stop_long = filled(PROTO_MAX_STOP_LEN + 1, 's');
    char *stops[1] = {stop_ok};
    r.stop = stops;
    r.n_stop = 1;
    assert_int_equal(proto_request_validate(&r, &err), LLMQ_OK);
    stops[0] = stop_long;
    assert_int_equal(proto_request_validate(&r, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "stop"));

    r = full_request();
    char *role_ok = filled(PROTO_MAX_ROLE_LEN, 'r'), *role_long = filled(PROTO_MAX_ROLE_LEN + 1, 'r');
    proto_message m[1] = {{role_ok, (char *)"x", NULL}};
    r.messages = m;
    r.n_messages = 1;
    assert_int_equal(proto_request_validate(&r, &err), LLMQ_OK);
    m[0].role = role_long;
    assert_int_equal(proto_request_validate(&r, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "role"));

    r = full_request();
    char *big = filled(PROTO_MAX_PROMPT_BYTES + 1, 'p');
    r.kind = PROTO_PROMPT_TEXT;
    r.prompt = big;
    assert_int_equal(proto_request_validate(&r, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "prompt"));
    big[PROTO_MAX_PROMPT_BYTES] = '\0';
    assert_int_equal(proto_request_validate(&r, &err), LLMQ_OK);

    /* decode: a stop string past the bound, and a message past its size bound */
    r = full_request();
    stops[0] = stop_long;
    r.stop = stops;
    r.n_stop = 1;
    proto_buf b;
    proto_buf_init(&b);
    assert_int_equal(proto_request_encode(&r, &b, &err), LLMQ_OK);
    proto_request d;
    assert_int_equal(proto_request_decode(&d, b.data, b.len, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "stop"));
    proto_buf_reset(&b);
    r = full_request();
    r.kind = PROTO_PROMPT_TEXT;
    r.prompt = big; /* PROTO_MAX_PROMPT_BYTES: valid */
    assert_int_equal(proto_request_encode(&r, &b, &err), LLMQ_OK);
    assert_int_equal(proto_request_decode(&d, b.data, b.len, &err), LLMQ_OK);
    proto_request_deinit(&d);
    char *huge = filled(PROTO_MAX_MESSAGE_BYTES + 1, '\xc0');
    assert_int_equal(proto_request_decode(&d, huge, PROTO_MAX_MESSAGE_BYTES + 1, &err), LLMQ_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "more than"));
    proto_chunk c;
    assert_int_equal(proto_chunk_decode(&c, huge, PROTO_MAX_MESSAGE_BYTES + 1, &err), LLMQ_ERR_FORMAT);
    free(huge);
    proto_buf_deinit(&b);
    free(big);
    free(role_ok);
    free(role_long);
    free(stop_ok);
    free(stop_long);
}

/* `op` and `add_special_tokens` (the /tokenize and /detokenize jobs): absent
 * means generate and the worker's default; packed by hand as a client that
 * is not libllmq would; an unknown operation is refused, never generated. */
static void pack_op_bogus(msgpack_packer *pk) { pk_str(pk, "embed"); }
static void pack_op_tokenize(msgpack_packer *pk) { pk_str(pk, "tokenize"); }
static void pack_true(msgpack_packer *pk) { msgpack_pack_true(pk); }

static void test_request_op(void **state) {
    (void)state;
    proto_request r;
    llmq_err err;
    proto_buf b;
    proto_buf_init(&b);
    build_req_with(&b, "op", pack_op_tokenize);
    assert_int_equal(proto_request_decode(&r, b.data, b.len, &err), LLMQ_OK);
    assert_int_equal(r.op, PROTO_OP_TOKENIZE);
    assert_int_equal(r.add_special_tokens, PROTO_UNSET);
    assert_int_equal(proto_request_validate(&r, &err), LLMQ_OK);
    proto_request_deinit(&r);
    assert_int_equal(r.op, PROTO_OP_GENERATE); /* deinit resets to the default */
    proto_buf_reset(&b);
    build_req_with(&b, "add_special_tokens", pack_true);
    assert_int_equal(proto_request_decode(&r, b.data, b.len, &err), LLMQ_OK);
    assert_int_equal(r.op, PROTO_OP_GENERATE);
    assert_int_equal(r.add_special_tokens, 1);
    proto_request_deinit(&r);
    proto_buf_deinit(&b);
    expect_field_error("op", pack_op_bogus, LLMQ_ERR_INVALID, "field 'op': unknown operation 'embed'");
    expect_field_error("op", pack_int, LLMQ_ERR_INVALID, "field 'op': expected a string");
    expect_field_error("add_special_tokens", pack_int, LLMQ_ERR_INVALID, "field 'add_special_tokens': expected a boolean");

    /* round trip; detokenize of no ids is valid (it gives ""), tokenize of ids is not */
    proto_request in;
    proto_request_init(&in);
    in.model = (char *)"m";
    in.kind = PROTO_PROMPT_IDS;
    in.op = PROTO_OP_DETOKENIZE;
    in.add_special_tokens = 0;
    assert_int_equal(proto_request_validate(&in, &err), LLMQ_OK);
    proto_buf_init(&b);
    assert_int_equal(proto_request_encode(&in, &b, &err), LLMQ_OK);
    assert_int_equal(proto_request_decode(&r, b.data, b.len, &err), LLMQ_OK);
    assert_int_equal(r.op, PROTO_OP_DETOKENIZE);
    assert_int_equal(r.add_special_tokens, 0);
    assert_int_equal(r.n_prompt_ids, 0);
    assert_int_equal(proto_request_validate(&r, &err), LLMQ_OK);
    proto_request_deinit(&r);
    in.op = PROTO_OP_GENERATE;
    assert_int_equal(proto_request_validate(&in, &err), LLMQ_ERR_INVALID); /* empty prompt_ids */
    int32_t one = 1;
    in.prompt_ids = &one;
    in.n_prompt_ids = 1;
    in.op = PROTO_OP_TOKENIZE;
    assert_int_equal(proto_request_validate(&in, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "tokenize takes prompt or messages"));
    in.op = PROTO_OP_DETOKENIZE;
    in.kind = PROTO_PROMPT_TEXT;
    in.prompt = (char *)"hi";
    assert_int_equal(proto_request_validate(&in, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "detokenize takes prompt_ids"));
    assert_string_equal(proto_op_name(PROTO_OP_TOKENIZE), "tokenize");
    proto_buf_deinit(&b);
}

/* `guide` (structured output): a map {type, data} that round-trips; a wrong
 * shape is an error naming the field, never an unconstrained job. */
static void pack_guide_regex(msgpack_packer *pk) {
    msgpack_pack_map(pk, 2);
    pk_str(pk, "type");
    pk_str(pk, "regex");
    pk_str(pk, "data");
    pk_str(pk, "[a-z]+");
}
static void pack_guide_bad_type(msgpack_packer *pk) {
    msgpack_pack_map(pk, 2);
    pk_str(pk, "type");
    pk_str(pk, "xml");
    pk_str(pk, "data");
    pk_str(pk, "x");
}
static void pack_guide_no_data(msgpack_packer *pk) {
    msgpack_pack_map(pk, 1);
    pk_str(pk, "type");
    pk_str(pk, "lark");
}
static void pack_guide_int_data(msgpack_packer *pk) {
    msgpack_pack_map(pk, 2);
    pk_str(pk, "type");
    pk_str(pk, "json_schema");
    pk_str(pk, "data");
    msgpack_pack_int64(pk, 1);
}
static void pack_guide_nul(msgpack_packer *pk) {
    msgpack_pack_map(pk, 2);
    pk_str(pk, "type");
    pk_str(pk, "regex");
    pk_str(pk, "data");
    msgpack_pack_str(pk, 3);
    msgpack_pack_str_body(pk, "a\0b", 3);
}
static void pack_guide_huge(msgpack_packer *pk) {
    size_t n = PROTO_MAX_GUIDE_BYTES + 1;
    char *s = malloc(n);
    memset(s, 'a', n);
    msgpack_pack_map(pk, 2);
    pk_str(pk, "type");
    pk_str(pk, "regex");
    pk_str(pk, "data");
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
    free(s);
}

/* cache_salt (prefix-cache tenant key) round trips; a wrong type or a NUL
 * is refused naming the field; the chunk's usage.cached_tokens round trips
 * and is left out at 0 (the encoding of older chunks stays as it was). */
static void test_cache_salt_and_cached_tokens(void **state) {
    (void)state;
    proto_request in, r;
    proto_request_init(&in);
    in.model = (char *)"m";
    in.kind = PROTO_PROMPT_TEXT;
    in.prompt = (char *)"hi";
    in.cache_salt = (char *)"tenant-7";
    llmq_err err;
    assert_int_equal(proto_request_validate(&in, &err), LLMQ_OK);
    proto_buf b;
    proto_buf_init(&b);
    assert_int_equal(proto_request_encode(&in, &b, &err), LLMQ_OK);
    assert_int_equal(proto_request_decode(&r, b.data, b.len, &err), LLMQ_OK);
    assert_string_equal(r.cache_salt, "tenant-7");
    proto_request_deinit(&r);
    assert_null(r.cache_salt);
    proto_buf_deinit(&b);
    expect_field_error("cache_salt", pack_int, LLMQ_ERR_INVALID, "field 'cache_salt': expected a string, got an integer");

    proto_chunk c, d;
    proto_chunk_init(&c);
    c.finish = (char *)"stop";
    c.has_usage = true;
    c.usage = (proto_usage){.prompt_tokens = 70, .completion_tokens = 2, .cached_tokens = 64};
    proto_buf_init(&b);
    assert_int_equal(proto_chunk_encode(&c, &b, &err), LLMQ_OK);
    assert_int_equal(proto_chunk_decode(&d, b.data, b.len, &err), LLMQ_OK);
    assert_int_equal(d.usage.cached_tokens, 64);
    assert_int_equal(d.usage.prompt_tokens, 70);
    proto_chunk_deinit(&d);
    const size_t with = b.len;
    c.usage.cached_tokens = 0;
    proto_buf_reset(&b);
    assert_int_equal(proto_chunk_encode(&c, &b, &err), LLMQ_OK);
    assert_int_equal(with - b.len, 1 + 13 + 1); /* the key "cached_tokens" and 64 are gone */
    assert_int_equal(proto_chunk_decode(&d, b.data, b.len, &err), LLMQ_OK);
    assert_int_equal(d.usage.cached_tokens, 0);
    proto_chunk_deinit(&d);
    proto_buf_deinit(&b);
}

static void test_request_guide(void **state) {
    (void)state;
    proto_request r;
    llmq_err err;
    proto_buf b;
    proto_buf_init(&b);
    build_req_with(&b, "guide", pack_guide_regex);
    assert_int_equal(proto_request_decode(&r, b.data, b.len, &err), LLMQ_OK);
    assert_int_equal(r.guide_type, PROTO_GUIDE_REGEX);
    assert_string_equal(r.guide, "[a-z]+");
    assert_int_equal(proto_request_validate(&r, &err), LLMQ_OK);
    proto_request_deinit(&r);
    assert_int_equal(r.guide_type, PROTO_GUIDE_NONE);
    assert_null(r.guide);
    proto_buf_reset(&b);
    build_req_with(&b, "guide", pack_nil); /* nil = none */
    assert_int_equal(proto_request_decode(&r, b.data, b.len, &err), LLMQ_OK);
    assert_int_equal(r.guide_type, PROTO_GUIDE_NONE);
    proto_request_deinit(&r);
    proto_buf_deinit(&b);
    expect_field_error("guide", pack_string, LLMQ_ERR_INVALID, "field 'guide': expected a map {type, data}, got a string");
    expect_field_error("guide", pack_guide_bad_type, LLMQ_ERR_INVALID, "field 'guide.type': unknown constraint 'xml'");
    expect_field_error("guide", pack_guide_no_data, LLMQ_ERR_INVALID, "field 'guide': needs 'type' and 'data'");
    expect_field_error("guide", pack_map, LLMQ_ERR_INVALID, "field 'guide': needs 'type' and 'data'");
    expect_field_error("guide", pack_guide_int_data, LLMQ_ERR_INVALID, "field 'guide.data': expected a string, got an integer");
    expect_field_error("guide", pack_guide_nul, LLMQ_ERR_INVALID, "field 'guide.data': contains a NUL byte");
    expect_field_error("guide", pack_guide_huge, LLMQ_ERR_INVALID, "field 'guide.data': longer than 1048576 bytes");

    /* round trip of each type, by hand as the gateway fills it */
    static const char *const data[] = {"", "{\"type\":\"object\"}", "yes|no", "start: \"a\"+"};
    for (int t = PROTO_GUIDE_JSON_SCHEMA; t <= PROTO_GUIDE_LARK; t++) {
        proto_request in;
        proto_request_init(&in);
        in.model = (char *)"m";
        in.kind = PROTO_PROMPT_TEXT;
        in.prompt = (char *)"hi";
        in.guide_type = (proto_guide_type)t;
        in.guide = (char *)data[t];
        assert_int_equal(proto_request_validate(&in, &err), LLMQ_OK);
        proto_buf_init(&b);
        assert_int_equal(proto_request_encode(&in, &b, &err), LLMQ_OK);
        assert_int_equal(proto_request_decode(&r, b.data, b.len, &err), LLMQ_OK);
        assert_int_equal(r.guide_type, t);
        assert_string_equal(r.guide, data[t]);
        proto_request_deinit(&r);
        proto_buf_deinit(&b);
        in.op = PROTO_OP_TOKENIZE;
        assert_int_equal(proto_request_validate(&in, &err), LLMQ_ERR_INVALID);
        assert_non_null(strstr(err.msg, "guide is only for op generate"));
        in.op = PROTO_OP_GENERATE;
        in.guide = NULL;
        assert_int_equal(proto_request_validate(&in, &err), LLMQ_ERR_INVALID);
    }
    assert_string_equal(proto_guide_type_name(PROTO_GUIDE_JSON_SCHEMA), "json_schema");
    assert_string_equal(proto_guide_type_name(PROTO_GUIDE_LARK), "lark");
}

/* ---------------------------------------------------------------- chunks */

static void test_chunk_roundtrip(void **state) {
    (void)state;
    int32_t ids[3] = {7, 8, 9};
    proto_chunk in;
    proto_chunk_init(&in);
    in.seq = 41;
    in.text = (char *)"a\0b"; /* binary-safe text */
    in.text_len = 3;
    in.ids = ids;
    in.n_ids = 3;
    proto_buf b;
    proto_buf_init(&b);
    llmq_err err;
    assert_int_equal(proto_chunk_encode(&in, &b, &err), LLMQ_OK);
    proto_chunk out;
    assert_int_equal(proto_chunk_decode(&out, b.data, b.len, &err), LLMQ_OK);
    assert_int_equal(out.seq, 41);
    assert_int_equal(out.text_len, 3);
    assert_memory_equal(out.text, "a\0b", 3);
    assert_int_equal(out.n_ids, 3);
    assert_int_equal(out.ids[2], 9);
    assert_null(out.finish);
    assert_false(out.has_usage);
    assert_null(out.error);
    proto_chunk_deinit(&out);

    /* final chunk with usage and error */
    proto_chunk_init(&in);
    in.seq = 42;
    in.finish = (char *)"error";
    in.has_usage = true;
    in.usage.prompt_tokens = 12;
    in.usage.completion_tokens = 3;
    in.error = (char *)"prompt longer than the context (600 > 512 tokens)";
    in.error_status = 400;
    proto_buf_reset(&b);
    assert_int_equal(proto_chunk_encode(&in, &b, &err), LLMQ_OK);
    assert_int_equal(proto_chunk_decode(&out, b.data, b.len, &err), LLMQ_OK);
    assert_int_equal(out.seq, 42);
    assert_int_equal(out.text_len, 0);
    assert_int_equal(out.n_ids, 0);
    assert_string_equal(out.finish, "error");
    assert_true(out.has_usage);
    assert_int_equal(out.usage.prompt_tokens, 12);
    assert_int_equal(out.usage.completion_tokens, 3);
    assert_string_equal(out.error, "prompt longer than the context (600 > 512 tokens)");
    assert_int_equal(out.error_status, 400);
    assert_null(out.code);
    assert_int_equal(out.max_model_len, 0);
    proto_chunk_deinit(&out);

    /* the error's code, and a tokenize answer's max_model_len */
    in.code = (char *)"context_length_exceeded";
    in.max_model_len = 512;
    proto_buf_reset(&b);
    assert_int_equal(proto_chunk_encode(&in, &b, &err), LLMQ_OK);
    assert_int_equal(proto_chunk_decode(&out, b.data, b.len, &err), LLMQ_OK);
    assert_string_equal(out.code, "context_length_exceeded");
    assert_int_equal(out.max_model_len, 512);
    assert_int_equal(out.error_status, 400);
    proto_chunk_deinit(&out);
    assert_null(out.code);

    for (size_t n = 0; n < b.len; n++) assert_int_equal(proto_chunk_decode(&out, b.data, n, &err), LLMQ_ERR_FORMAT);
    proto_buf_deinit(&b);
}

static void test_chunk_errors(void **state) {
    (void)state;
    proto_buf b;
    proto_buf_init(&b);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, sb_write);
    msgpack_pack_map(&pk, 1);
    pk_str(&pk, "text");
    pk_str(&pk, "x");
    proto_chunk c;
    llmq_err err;
    assert_int_equal(proto_chunk_decode(&c, b.data, b.len, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "seq"));
    proto_buf_reset(&b);
    msgpack_pack_map(&pk, 2);
    pk_str(&pk, "seq");
    msgpack_pack_int64(&pk, 0);
    pk_str(&pk, "ids");
    pk_str(&pk, "1,2");
    assert_int_equal(proto_chunk_decode(&c, b.data, b.len, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "field 'ids'"));
    proto_buf_reset(&b);
    msgpack_pack_map(&pk, 2);
    pk_str(&pk, "seq");
    msgpack_pack_int64(&pk, -1);
    pk_str(&pk, "ids");
    msgpack_pack_array(&pk, 0);
    assert_int_equal(proto_chunk_decode(&c, b.data, b.len, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "seq"));
    proto_buf_deinit(&b);
}

/* `lp`: a chunk of three tokens whose logprobs cover every shape a piece can
 * take (text, a lone byte of a character, empty, unknown, a NUL byte) and a
 * -inf logprob. */
static void test_chunk_logprobs_roundtrip(void **state) {
    (void)state;
    int32_t ids[3] = {403, 3 + 0xE2, 2};
    proto_token_lp top0[2] = {{403, -0.25, " Once", 5}, {261, -1.75, "\0x", 2}};
    proto_token_lp top2[1] = {{2, -0.5, NULL, 0}};
    proto_lp lp[3] = {
        {{403, -0.25, " Once", 5}, top0, 2},
        {{3 + 0xE2, -INFINITY, "\xE2", 1}, NULL, 0},
        {{2, -0.5, "", 0}, top2, 1},
    };
    proto_chunk in;
    proto_chunk_init(&in);
    in.seq = 7;
    in.text = (char *)" Once";
    in.text_len = 5;
    in.ids = ids;
    in.n_ids = 3;
    in.has_lp = true;
    in.lp = lp;
    proto_buf b;
    proto_buf_init(&b);
    llmq_err err;
    assert_int_equal(proto_chunk_encode(&in, &b, &err), LLMQ_OK);
    proto_chunk out;
    assert_int_equal(proto_chunk_decode(&out, b.data, b.len, &err), LLMQ_OK);
    assert_true(out.has_lp);
    assert_int_equal(out.n_ids, 3);
    assert_non_null(out.lp);
    assert_int_equal(out.lp[0].tok.id, 403);
    assert_int_equal(out.lp[1].tok.id, 3 + 0xE2);
    assert_float_equal(out.lp[0].tok.logprob, -0.25, 0);
    assert_int_equal(out.lp[0].tok.n_bytes, 5);
    assert_memory_equal(out.lp[0].tok.bytes, " Once", 5);
    assert_int_equal(out.lp[0].n_top, 2);
    assert_int_equal(out.lp[0].top[1].id, 261);
    assert_float_equal(out.lp[0].top[1].logprob, -1.75, 0);
    assert_int_equal(out.lp[0].top[1].n_bytes, 2);
    assert_memory_equal(out.lp[0].top[1].bytes, "\0x", 2);
    assert_true(isinf(out.lp[1].tok.logprob) && out.lp[1].tok.logprob < 0);
    assert_int_equal(out.lp[1].tok.n_bytes, 1);
    assert_int_equal((unsigned char)out.lp[1].tok.bytes[0], 0xE2);
    assert_int_equal(out.lp[1].n_top, 0);
    assert_non_null(out.lp[2].tok.bytes); /* empty is known, not unknown */
    assert_int_equal(out.lp[2].tok.n_bytes, 0);
    assert_null(out.lp[2].top[0].bytes);  /* unknown (a worker without a tokenizer) */
    assert_int_equal(out.lp[2].top[0].id, 2);
    proto_chunk_deinit(&out);
    proto_chunk_deinit(&out); /* twice is harmless */
    for (size_t n = 0; n < b.len; n++) assert_int_equal(proto_chunk_decode(&out, b.data, n, &err), LLMQ_ERR_FORMAT);

    /* Requested but no ids in this chunk: an empty `lp`, still present. */
    proto_chunk_init(&in);
    in.seq = 8;
    in.has_lp = true;
    proto_buf_reset(&b);
    assert_int_equal(proto_chunk_encode(&in, &b, &err), LLMQ_OK);
    assert_int_equal(proto_chunk_decode(&out, b.data, b.len, &err), LLMQ_OK);
    assert_true(out.has_lp);
    assert_int_equal(out.n_ids, 0);
    proto_chunk_deinit(&out);
    /* Not requested: no `lp` key at all, so older readers see what they knew. */
    in.has_lp = false;
    proto_buf_reset(&b);
    assert_int_equal(proto_chunk_encode(&in, &b, &err), LLMQ_OK);
    assert_null(memmem(b.data, b.len, "\xa2lp", 3));
    assert_int_equal(proto_chunk_decode(&out, b.data, b.len, &err), LLMQ_OK);
    assert_false(out.has_lp);
    assert_null(out.lp);
    proto_chunk_deinit(&out);
    /* More alternatives than a request may ask for cannot be encoded. */
    proto_token_lp many[PROTO_MAX_LOGPROBS + 1];
    memset(many, 0, sizeof many);
    proto_lp big = {{1, -1.0, "", 0}, many, PROTO_MAX_LOGPROBS + 1};
    in.ids = ids;
    in.n_ids = 1;
    in.has_lp = true;
    in.lp = &big;
    assert_int_equal(proto_chunk_encode(&in, &b, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "alternatives"));
    proto_buf_deinit(&b);
}

/* A chunk {seq: 0, ids: [5, 6][:n_ids], lp: <packed by fn>}. */
static void build_lp_chunk(proto_buf *b, int n_ids, pack_fn fn) {
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, sb_write);
    msgpack_pack_map(&pk, 3);
    pk_str(&pk, "lp");
    fn(&pk);
    pk_str(&pk, "seq");
    msgpack_pack_int64(&pk, 0);
    pk_str(&pk, "ids");
    msgpack_pack_array(&pk, (size_t)n_ids);
    for (int i = 0; i < n_ids; i++) msgpack_pack_int64(&pk, 5 + i);
}

static void pk_entry_head(msgpack_packer *pk, size_t n_top) {
    msgpack_pack_array(pk, 3);
    msgpack_pack_double(pk, -0.5);
    msgpack_pack_bin(pk, 1);
    msgpack_pack_bin_body(pk, "a", 1);
    msgpack_pack_array(pk, n_top);
}
static void lp_one(msgpack_packer *pk) {
    msgpack_pack_array(pk, 1);
    pk_entry_head(pk, 0);
}
static void lp_not_array(msgpack_packer *pk) { pk_str(pk, "-0.5"); }
static void lp_short_entry(msgpack_packer *pk) {
    msgpack_pack_array(pk, 1);
    msgpack_pack_array(pk, 2);
    msgpack_pack_double(pk, -0.5);
    msgpack_pack_nil(pk);
}
static void lp_str_logprob(msgpack_packer *pk) {
    msgpack_pack_array(pk, 1);
    msgpack_pack_array(pk, 3);
    pk_str(pk, "-0.5");
    msgpack_pack_nil(pk);
    msgpack_pack_array(pk, 0);
}
static void lp_nan_logprob(msgpack_packer *pk) {
    msgpack_pack_array(pk, 1);
    msgpack_pack_array(pk, 3);
    msgpack_pack_double(pk, NAN);
    msgpack_pack_nil(pk);
    msgpack_pack_array(pk, 0);
}
static void lp_int_bytes(msgpack_packer *pk) {
    msgpack_pack_array(pk, 1);
    msgpack_pack_array(pk, 3);
    msgpack_pack_double(pk, -0.5);
    msgpack_pack_int64(pk, 97);
    msgpack_pack_array(pk, 0);
}
static void lp_too_many_top(msgpack_packer *pk) {
    msgpack_pack_array(pk, 1);
    pk_entry_head(pk, PROTO_MAX_LOGPROBS + 1);
    for (int k = 0; k <= PROTO_MAX_LOGPROBS; k++) {
        msgpack_pack_array(pk, 3);
        msgpack_pack_int64(pk, k);
        msgpack_pack_double(pk, -1.0);
        msgpack_pack_nil(pk);
    }
}
static void lp_negative_top_id(msgpack_packer *pk) {
    msgpack_pack_array(pk, 1);
    pk_entry_head(pk, 1);
    msgpack_pack_array(pk, 3);
    msgpack_pack_int64(pk, -4);
    msgpack_pack_double(pk, -1.0);
    msgpack_pack_nil(pk);
}
static void lp_top_map(msgpack_packer *pk) {
    msgpack_pack_array(pk, 1);
    pk_entry_head(pk, 1);
    msgpack_pack_map(pk, 0);
}

static void expect_lp_error(int n_ids, pack_fn fn, const char *needle) {
    proto_buf b;
    proto_buf_init(&b);
    build_lp_chunk(&b, n_ids, fn);
    proto_chunk c;
    llmq_err err = {0};
    assert_int_equal(proto_chunk_decode(&c, b.data, b.len, &err), LLMQ_ERR_INVALID);
    if (!strstr(err.msg, needle)) fail_msg("error '%s' does not say '%s'", err.msg, needle);
    assert_non_null(strstr(err.msg, "field 'lp'"));
    assert_null(c.lp); /* left deinit'ed */
    assert_null(c.ids);
    proto_buf_deinit(&b);
}

static void test_chunk_logprobs_errors(void **state) {
    (void)state;
    expect_lp_error(2, lp_one, "1 entries for 2 ids");
    expect_lp_error(0, lp_one, "1 entries for 0 ids");
    expect_lp_error(1, lp_not_array, "expected an array, got a string");
    expect_lp_error(1, lp_short_entry, "entry 0: expected [logprob, bytes, top]");
    expect_lp_error(1, lp_str_logprob, "entry 0: logprob: expected a number, got a string");
    expect_lp_error(1, lp_nan_logprob, "entry 0: logprob");
    expect_lp_error(1, lp_int_bytes, "entry 0: bytes: expected binary data or nil, got an integer");
    expect_lp_error(1, lp_too_many_top, "more than 20 alternatives");
    expect_lp_error(1, lp_negative_top_id, "entry 0: top 0: id");
    expect_lp_error(1, lp_top_map, "entry 0: top 0: expected [id, logprob, bytes], got a map");
    /* the same chunk with matching ids decodes */
    proto_buf b;
    proto_buf_init(&b);
    build_lp_chunk(&b, 1, lp_one);
    proto_chunk c;
    llmq_err err;
    assert_int_equal(proto_chunk_decode(&c, b.data, b.len, &err), LLMQ_OK);
    assert_int_equal(c.n_ids, 1);
    assert_int_equal(c.lp[0].tok.id, 5); /* `lp` came before `ids` */
    assert_memory_equal(c.lp[0].tok.bytes, "a", 1);
    proto_chunk_deinit(&c);
    proto_buf_deinit(&b);
}

static void test_job_states(void **state) {
    (void)state;
    for (int s = PROTO_STATE_QUEUED; s <= PROTO_STATE_EXPIRED; s++) {
        const char *n = proto_job_state_name((proto_job_state)s);
        assert_int_equal(proto_job_state_parse(n, strlen(n)), s);
    }
    assert_int_equal(proto_job_state_parse("runnin", 6), PROTO_STATE_UNKNOWN);
    assert_int_equal(proto_job_state_parse("running!", 8), PROTO_STATE_UNKNOWN);
    assert_string_equal(proto_job_state_name((proto_job_state)99), "unknown");
    assert_true(proto_job_state_is_final(PROTO_STATE_CANCELLED));
    assert_false(proto_job_state_is_final(PROTO_STATE_RUNNING));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_roundtrip_full),
        cmocka_unit_test(test_request_roundtrip_defaults),
        cmocka_unit_test(test_request_wrong_types_name_field),
        cmocka_unit_test(test_request_prompt_forms),
        cmocka_unit_test(test_request_nil_and_unknown_keys),
        cmocka_unit_test(test_request_version),
        cmocka_unit_test(test_request_truncated_and_garbage),
        cmocka_unit_test(test_request_validate_ranges),
        cmocka_unit_test(test_request_limits),
        cmocka_unit_test(test_request_op),
        cmocka_unit_test(test_request_guide),
        cmocka_unit_test(test_cache_salt_and_cached_tokens),
        cmocka_unit_test(test_chunk_roundtrip),
        cmocka_unit_test(test_chunk_errors),
        cmocka_unit_test(test_chunk_logprobs_roundtrip),
        cmocka_unit_test(test_chunk_logprobs_errors),
        cmocka_unit_test(test_job_states),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
