/*
 * test_toolcall.c — model tool-call texts to OpenAI tool_calls (common/toolcall.c).
 *
 * Texts as each family writes its calls (Hermes/Qwen <tool_call>, Mistral
 * [TOOL_CALLS], Llama 3.1 JSON with "parameters"), with content before the
 * calls, several calls, and texts that are not calls (prose, a call cut off
 * by max_tokens, JSON without a name).  Expected values are written here.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "common/protocol.h"
#include "common/toolcall.h"

/* calls of text, checked against names[] and args[] (compact JSON); content_len. */
static void expect(const char *text, size_t n, const char *const *names, const char *const *args, size_t content_len) {
    size_t cl = 12345;
    json_t *calls = toolcall_parse(text, strlen(text), &cl);
    assert_non_null(calls);
    assert_int_equal(json_array_size(calls), n);
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_array_get(calls, i);
        const char *id = json_string_value(json_object_get(c, "id"));
        assert_non_null(id);
        assert_int_equal(strlen(id), 5 + 24);
        assert_memory_equal(id, "call_", 5);
        assert_string_equal(json_string_value(json_object_get(c, "type")), "function");
        json_t *fn = json_object_get(c, "function");
        assert_string_equal(json_string_value(json_object_get(fn, "name")), names[i]);
        assert_string_equal(json_string_value(json_object_get(fn, "arguments")), args[i]);
    }
    if (n > 1) /* ids differ */
        assert_string_not_equal(json_string_value(json_object_get(json_array_get(calls, 0), "id")),
                                json_string_value(json_object_get(json_array_get(calls, 1), "id")));
    assert_int_equal(cl, content_len);
    json_decref(calls);
}

static void none(const char *text) {
    size_t cl = 0;
    json_t *calls = toolcall_parse(text, strlen(text), &cl);
    if (calls) fprintf(stderr, "  parsed as a call: %s\n", text);
    assert_null(calls);
}

static void test_hermes(void **state) {
    (void)state;
    const char *w[] = {"get_weather", "now"};
    const char *a1[] = {"{\"city\":\"Zürich\",\"days\":2}", "{}"};
    expect("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\", \"days\": 2}}\n</tool_call>", 1,
           w, a1, 0);
    expect("Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\", \"days\": 2}}\n"
           "</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>",
           2, w, a1, strlen("Let me look."));
    /* the last call's end tag cut by a stop: still a call, as vLLM's parser */
    expect("<tool_call>{\"name\": \"now\", \"arguments\": {}}", 1, (const char *[]){"now"}, (const char *[]){"{}"}, 0);
    /* arguments already a JSON string */
    expect("<tool_call>{\"name\": \"now\", \"arguments\": \"{\\\"a\\\": 1}\"}</tool_call>", 1, (const char *[]){"now"},
           (const char *[]){"{\"a\": 1}"}, 0);
    none("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zü");  /* cut by max_tokens */
    none("<tool_call>{\"arguments\": {}}</tool_call>");                           /* no name */
    none("<tool_call>{\"name\": \"f\"}</tool_call>");                             /* no arguments */
}

static void test_mistral(void **state) {
    (void)state;
    const char *n[] = {"get_weather", "now"};
    const char *a[] = {"{\"city\":\"Paris\"}", "{}"};
    expect("[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"now\", "
           "\"arguments\": {}}]",
           2, n, a, 0);
    expect("Sure. [TOOL_CALLS] [{\"name\": \"now\", \"arguments\": {}}]", 1, (const char *[]){"now"},
           (const char *[]){"{}"}, strlen("Sure."));
    none("[TOOL_CALLS][]");
    none("[TOOL_CALLS][{\"name\": \"now\"");
}

static void test_llama31(void **state) {
    (void)state;
    expect("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\", \"unit\": \"celsius\"}}", 1,
           (const char *[]){"get_weather"}, (const char *[]){"{\"city\":\"Oslo\",\"unit\":\"celsius\"}"}, 0);
    expect("<|python_tag|>{\"name\": \"now\", \"parameters\": {}}", 1, (const char *[]){"now"},
           (const char *[]){"{}"}, 0);
    expect("  \n{\"name\": \"now\", \"arguments\": {\"x\": [1, 2.5, null]}}\n", 1, (const char *[]){"now"},
           (const char *[]){"{\"x\":[1,2.5,null]}"}, 0);
    none("{\"city\": \"Oslo\"}");                        /* JSON, but no call */
    none("The answer is {\"name\": \"now\", \"parameters\": {}}"); /* not the whole text */
}

static void test_prose(void **state) {
    (void)state;
    none("");
    none("Once upon a time, there was a little girl named Lily.");
    none("She said \"<tool\" and ran.");
}

/* The request keys that carry tools to the worker (docs/protocol.md) survive
 * encode and decode; tool_choice takes auto or required only. */
static void test_protocol_keys(void **state) {
    (void)state;
    proto_message m[2] = {{(char *)"user", (char *)"hi", NULL},
                          {(char *)"assistant", (char *)"", (char *)"[{\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]"}};
    proto_request r;
    proto_request_init(&r);
    r.model = (char *)"m";
    r.kind = PROTO_PROMPT_MESSAGES;
    r.messages = m;
    r.n_messages = 2;
    r.tools = (char *)"[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]";
    r.tool_choice = (char *)"required";
    r.tool_name = (char *)"f";
    llmq_err err = {0};
    assert_int_equal(proto_request_validate(&r, &err), LLMQ_OK);
    proto_buf b;
    proto_buf_init(&b);
    assert_int_equal(proto_request_encode(&r, &b, &err), LLMQ_OK);
    proto_request d;
    assert_int_equal(proto_request_decode(&d, b.data, b.len, &err), LLMQ_OK);
    assert_string_equal(d.tools, r.tools);
    assert_string_equal(d.tool_choice, "required");
    assert_string_equal(d.tool_name, "f");
    assert_null(d.messages[0].tool_calls);
    assert_string_equal(d.messages[1].tool_calls, m[1].tool_calls);
    proto_request_deinit(&d);
    r.tool_choice = (char *)"sometimes";
    proto_buf_deinit(&b);
    proto_buf_init(&b);
    assert_int_equal(proto_request_encode(&r, &b, &err), LLMQ_OK);
    assert_int_equal(proto_request_decode(&d, b.data, b.len, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "tool_choice"));
    proto_request_deinit(&d);
    proto_buf_deinit(&b);
    r.tools = NULL;
    assert_int_equal(proto_request_validate(&r, &err), LLMQ_ERR_INVALID); /* tool_choice without tools */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hermes),
        cmocka_unit_test(test_mistral),
        cmocka_unit_test(test_llama31),
        cmocka_unit_test(test_prose),
        cmocka_unit_test(test_protocol_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
