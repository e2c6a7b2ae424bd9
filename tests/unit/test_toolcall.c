/*
 * test_toolcall.c — model tool-call texts to OpenAI tool_calls (common/toolcall.c).
 *
 * Texts as each family writes its calls (Hermes/Qwen <tool_call>, Mistral
 * [TOOL_CALLS], Llama 3.1 JSON with "parameters"), with content before the
 * calls, several calls, and texts that are not calls (prose, a call cut off
 * by max_tokens, JSON without a name, a function that is none of the tools).
 * Expected values are written here.  Streamed (toolcall_stream_feed), every
 * text is fed cut at each byte and byte by byte: the content and the calls'
 * deltas must add up to what the whole text gives.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "common/protocol.h"
#include "common/toolcall.h"

static json_t *tools; /* TOOLS' OpenAI array (NULL: any name) */
static int max_calls;

/* text fed in pieces (cut at `cut`, or byte by byte when cut is SIZE_MAX):
 * the content sent, and the calls as an OpenAI client puts their deltas
 * together ([{"id", "name", "arguments"}]). */
static json_t *streamed(const char *text, size_t len, size_t cut, char **content) {
    toolcall_stream *s = toolcall_stream_new(tools, max_calls);
    assert_non_null(s);
    json_t *calls = json_array();
    size_t clen = 0;
    *content = calloc(1, len + 1);
    size_t at = 0;
    while (at <= len) {
        size_t n = cut == SIZE_MAX ? (at < len ? 1 : 0) : at < cut ? cut : len - at;
        int final = at + n == len && (cut == SIZE_MAX ? n == 0 : 1);
        toolcall_delta d;
        assert_int_equal(toolcall_stream_feed(s, text + at, n, final, &d), 0);
        memcpy(*content + clen, d.content ? d.content : "", d.content_len);
        clen += d.content_len;
        size_t i;
        json_t *e;
        json_array_foreach(d.tool_calls, i, e) {
            size_t idx = (size_t)json_integer_value(json_object_get(e, "index"));
            json_t *fn = json_object_get(e, "function");
            const char *frag = json_string_value(json_object_get(fn, "arguments"));
            assert_non_null(frag);
            if (idx == json_array_size(calls)) { /* a call's first delta: id, type, name */
                assert_string_equal(json_string_value(json_object_get(e, "type")), "function");
                assert_non_null(json_string_value(json_object_get(fn, "name")));
                json_array_append_new(calls, json_pack("{s:O, s:O, s:s}", "id", json_object_get(e, "id"), "name",
                                                       json_object_get(fn, "name"), "arguments", ""));
            } else {
                assert_int_equal(idx + 1, json_array_size(calls)); /* the last call's arguments go on */
                assert_null(json_object_get(e, "id"));
                assert_null(json_object_get(fn, "name"));
            }
            json_t *c = json_array_get(calls, idx);
            char *a = NULL;
            assert_true(asprintf(&a, "%s%s", json_string_value(json_object_get(c, "arguments")), frag) > 0);
            json_object_set_new(c, "arguments", json_string(a));
            free(a);
        }
        toolcall_delta_clear(&d);
        at += n;
        if (final) break;
    }
    toolcall_stream_free(s);
    return calls;
}

/* Streamed, cut anywhere, text gives what toolcall_parse gives. */
static void stream_equal(const char *text) {
    const size_t len = strlen(text);
    size_t cl = 0;
    json_t *whole = toolcall_parse(text, len, tools, max_calls, &cl);
    for (size_t cut = 0; cut <= len + 1; cut++) {
        char *content;
        json_t *calls = streamed(text, len, cut == len + 1 ? SIZE_MAX : cut, &content);
        if (!whole) {
            assert_string_equal(content, text);
            assert_int_equal(json_array_size(calls), 0);
        } else {
            assert_int_equal(strlen(content), cl);
            assert_memory_equal(content, text, cl);
            assert_int_equal(json_array_size(calls), json_array_size(whole));
            for (size_t i = 0; i < json_array_size(whole); i++) {
                json_t *w = json_object_get(json_array_get(whole, i), "function"), *c = json_array_get(calls, i);
                assert_string_equal(json_string_value(json_object_get(c, "name")),
                                    json_string_value(json_object_get(w, "name")));
                assert_string_equal(json_string_value(json_object_get(c, "arguments")),
                                    json_string_value(json_object_get(w, "arguments")));
                const char *id = json_string_value(json_object_get(c, "id"));
                assert_int_equal(strlen(id), 5 + 24);
                assert_memory_equal(id, "call_", 5);
            }
        }
        free(content);
        json_decref(calls);
    }
    json_decref(whole);
}

/* calls of text, checked against names[] and args[] (compact JSON); content_len. */
static json_t *tools_of(const char *const *names) {
    json_t *t = json_array();
    for (size_t i = 0; names && names[i]; i++)
        json_array_append_new(t, json_pack("{s:s, s:{s:s}}", "type", "function", "function", "name", names[i]));
    return t;
}

static const char *const TOOLS[] = {"get_weather", "now", NULL};

static void expect(const char *text, size_t n, const char *const *names, const char *const *args, size_t content_len) {
    size_t cl = 12345;
    json_t *calls = toolcall_parse(text, strlen(text), tools, max_calls, &cl);
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
    stream_equal(text);
}

static void none(const char *text) {
    size_t cl = 0;
    json_t *calls = toolcall_parse(text, strlen(text), tools, max_calls, &cl);
    if (calls) fprintf(stderr, "  parsed as a call: %s\n", text);
    assert_null(calls);
    stream_equal(text);
}

/* A call cut off after its arguments began: no call in the whole text, but a
 * stream has sent its name and the arguments so far (toolcall.h). */
static void cut_off(const char *text, const char *name, const char *args) {
    size_t cl = 0;
    json_t *calls = toolcall_parse(text, strlen(text), tools, max_calls, &cl);
    assert_null(calls);
    char *content;
    calls = streamed(text, strlen(text), SIZE_MAX, &content);
    assert_string_equal(content, "");
    assert_int_equal(json_array_size(calls), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(calls, 0), "name")), name);
    assert_string_equal(json_string_value(json_object_get(json_array_get(calls, 0), "arguments")), args);
    free(content);
    json_decref(calls);
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
    cut_off("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zü", "get_weather",
            "{\"city\":\"Zü"); /* cut by max_tokens */
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
    /* the marker left out of the text (a special token): the array alone, from the start */
    expect(" [{\"name\": \"now\", \"arguments\": {}}]", 1, (const char *[]){"now"}, (const char *[]){"{}"}, 0);
    none("[1, 2]");
    none("[link](https://example.com) and [{\"name\": \"now\", \"arguments\": {}}]");
    none("So: [{\"name\": \"now\", \"arguments\": {}}]");
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

/* A call must name one of the tools (else it stays content, as vLLM's);
 * parallel_tool_calls false: the first call only; without tools any name. */
static void test_names_and_limits(void **state) {
    (void)state;
    const char *two = "<tool_call>{\"name\": \"now\", \"arguments\": {}}</tool_call>\n"
                      "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}</tool_call>";
    expect(two, 2, (const char *[]){"now", "get_weather"}, (const char *[]){"{}", "{\"city\":\"Oslo\"}"}, 0);
    none("Hm. <tool_call>{\"name\": \"rm_rf\", \"arguments\": {}}</tool_call>");
    none("[TOOL_CALLS][{\"arguments\": {}, \"name\": \"rm_rf\"}]");  /* arguments first, then the name */
    none("{\"name\": \"rm_rf\", \"parameters\": {}}");
    /* a later call naming no tool ends the calls */
    expect("[TOOL_CALLS][{\"name\": \"now\", \"arguments\": {}}, {\"name\": \"rm_rf\", \"arguments\": {}}]", 1,
           (const char *[]){"now"}, (const char *[]){"{}"}, 0);
    max_calls = 1;
    expect(two, 1, (const char *[]){"now"}, (const char *[]){"{}"}, 0);
    max_calls = 0;
    json_t *t = tools;
    tools = NULL;
    expect("<tool_call>{\"name\": \"rm_rf\", \"arguments\": {}}</tool_call>", 1, (const char *[]){"rm_rf"},
           (const char *[]){"{}"}, 0);
    tools = t;
}

/* What a stream holds back, and lets go: a tail that may begin a marker,
 * white space before one, a whole text that may be a Llama call; the name
 * written after the arguments; JSON content that is not a call. */
static void test_stream_edges(void **state) {
    (void)state;
    none("a <tool");
    none("a [TOOL_CALLS");
    none("<|python_tag|");
    none("  \n ");
    none("{\"city\": \"Oslo\", \"days\": [1, {\"x\": \"}\"}]} and more");
    none("Use <tool_call> tags, [TOOL_CALLS] too.");
    expect("Text  \n\n<tool_call>\n{\"arguments\": {\"city\": \"a\\\"b }\", \"days\": 3}, \"name\": \"get_weather\"}\n"
           "</tool_call>\nignored",
           1, (const char *[]){"get_weather"}, (const char *[]){"{\"city\":\"a\\\"b }\",\"days\":3}"}, strlen("Text"));
    expect("[TOOL_CALLS] [ {\"name\": \"now\", \"id\": \"abcdefghi\", \"arguments\": {\"n\": -1.5e3, \"b\": true}} ]", 1,
           (const char *[]){"now"}, (const char *[]){"{\"n\":-1.5e3,\"b\":true}"}, 0);
    expect("{\"name\": \"now\", \"parameters\": 7}", 1, (const char *[]){"now"}, (const char *[]){"7"}, 0);
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
    tools = tools_of(TOOLS);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hermes),
        cmocka_unit_test(test_mistral),
        cmocka_unit_test(test_llama31),
        cmocka_unit_test(test_prose),
        cmocka_unit_test(test_names_and_limits),
        cmocka_unit_test(test_stream_edges),
        cmocka_unit_test(test_protocol_keys),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    json_decref(tools);
    return rc;
}
