/*
 * test_tok_chat.c — chat templates (worker/tokenizer/chat.c) against Jinja2.
 *
 * tests/fixtures/tokenizers/chat.expect.json holds the reference templates of
 * five families rendered by Jinja2 the way transformers' apply_chat_template
 * does (tools/tok_fixtures.py), for conversations with system messages, several
 * turns, padded and non-ASCII content, empty content, and turn orders the
 * templates refuse.  Each must be recognised as its family and rendered byte for
 * byte, or refused where Jinja raised.
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
#include "worker/tokenizer/chat.h"

static chat_family family_of(const char *template_name) {
    if (!strncmp(template_name, "chatml", 6)) return CHAT_CHATML;
    return chat_family_by_name(template_name);
}

static const char *default_system_of(const char *name) {
    return !strcmp(name, "chatml-qwen2") ? "You are a helpful assistant." : NULL;
}

static void test_against_jinja(void **state) {
    (void)state;
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/tokenizers/chat.expect.json", tu_root());
    json_error_t je;
    json_t *all = json_load_file(path, 0, &je);
    assert_non_null(all);
    size_t bad = 0, n = json_array_size(all), refused = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_array_get(all, i);
        const char *name = json_string_value(json_object_get(c, "template_name"));
        const char *tpl = json_string_value(json_object_get(c, "template"));
        chat_family f = family_of(name);
        assert_int_not_equal(f, CHAT_UNKNOWN);
        assert_int_equal(chat_family_detect(tpl), f);
        chat_template ct;
        assert_int_equal(chat_template_init(&ct, f, json_string_value(json_object_get(c, "bos")),
                                            json_string_value(json_object_get(c, "eos")), default_system_of(name)),
                         LLMQ_OK);
        json_t *ms = json_object_get(c, "messages");
        size_t nm = json_array_size(ms);
        chat_msg msgs[16] = {{0}};
        for (size_t k = 0; k < nm; k++) {
            msgs[k].role = json_string_value(json_object_get(json_array_get(ms, k), "role"));
            msgs[k].content = json_string_value(json_object_get(json_array_get(ms, k), "content"));
        }
        char *out = NULL;
        size_t len;
        llmq_err err = {0};
        int gen = json_is_true(json_object_get(c, "add_generation_prompt"));
        llmq_status st = chat_render(&ct, msgs, nm, gen, &out, &len, &err);
        json_t *want = json_object_get(c, "text");
        int ok;
        if (!want) {
            /* Jinja raised: llmq refuses too, except mistral's system message, which
             * llmq folds into the first user turn (chat.h). */
            int mistral_system = f == CHAT_MISTRAL && nm && !strcmp(msgs[0].role, "system");
            ok = mistral_system ? st == LLMQ_OK : st == LLMQ_ERR_INVALID && strstr(err.msg, "alternate");
            refused += !mistral_system;
        } else {
            ok = st == LLMQ_OK && len == json_string_length(want) && !memcmp(out, json_string_value(want), len);
        }
        if (!ok && bad++ < 5) {
            fprintf(stderr, "  %s case %zu (generation prompt %d): status %s %s\n", name, i, gen,
                    llmq_status_name(st), err.msg);
            fprintf(stderr, "    want: %s\n    got:  %s\n", want ? json_string_value(want) : "(an error)",
                    out ? out : "(none)");
        }
        free(out);
        chat_template_deinit(&ct);
    }
    fprintf(stderr, "  %zu renderings, %zu refused as Jinja does, %zu bad\n", n, refused, bad);
    assert_true(n >= 100);
    assert_true(refused > 0);
    assert_int_equal(bad, 0);
    json_decref(all);
}

static void test_names_and_detection(void **state) {
    (void)state;
    assert_int_equal(chat_family_by_name("llama-3"), CHAT_LLAMA3);
    assert_int_equal(chat_family_by_name("llama2"), CHAT_LLAMA2);
    assert_int_equal(chat_family_by_name("vicuna"), CHAT_UNKNOWN);
    assert_int_equal(chat_family_by_name(NULL), CHAT_UNKNOWN);
    assert_string_equal(chat_family_name(CHAT_ZEPHYR), "zephyr");
    assert_int_equal(chat_family_detect("{{ messages }} USER: ASSISTANT:"), CHAT_UNKNOWN);
    assert_int_equal(chat_family_detect(NULL), CHAT_UNKNOWN);
    /* mistral with a system message: folded into the first user turn */
    chat_template ct;
    assert_int_equal(chat_template_init(&ct, CHAT_MISTRAL, "<s>", "</s>", NULL), LLMQ_OK);
    chat_msg m[] = {{"system", "Be brief.", NULL}, {"user", "Hi", NULL}, {"assistant", "Hello", NULL}, {"user", "Bye", NULL}};
    char *out;
    size_t len;
    llmq_err err = {0};
    assert_int_equal(chat_render(&ct, m, 4, 1, &out, &len, &err), LLMQ_OK);
    assert_string_equal(out, "<s>[INST] Be brief.\n\nHi [/INST]Hello</s>[INST] Bye [/INST]");
    free(out);
    chat_msg bad[] = {{"user", NULL, NULL}};
    assert_int_equal(chat_render(&ct, bad, 1, 1, &out, &len, &err), LLMQ_ERR_INVALID);
    chat_template_deinit(&ct);
    chat_template_deinit(NULL);
}

/* From tokenizer folders: detection from tokenizer_config.json, forcing, errors. */
static void test_from_tokenizer(void **state) {
    (void)state;
    char dir[4096];
    llmq_err err = {0};
    chat_template ct;
    snprintf(dir, sizeof dir, "%s/tests/fixtures/tokenizers/bl-llama3", tu_root());
    tokenizer *t = tok_load(dir, &err);
    assert_non_null(t);
    assert_int_equal(chat_template_from_tokenizer(&ct, t, NULL, &err), LLMQ_OK);
    assert_int_equal(ct.family, CHAT_LLAMA3);
    chat_msg m[] = {{"user", " Hi ", NULL}};
    char *out;
    size_t len;
    assert_int_equal(chat_render(&ct, m, 1, 1, &out, &len, &err), LLMQ_OK);
    assert_string_equal(out, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                             "<|start_header_id|>assistant<|end_header_id|>\n\n");
    /* the rendered prompt encodes with add_special = 0 to exactly one BOS */
    int32_t *ids;
    size_t n;
    assert_int_equal(tok_encode(t, out, len, 0, &ids, &n, &err), LLMQ_OK);
    assert_int_equal(ids[0], tok_bos_id(t));
    assert_int_not_equal(ids[1], tok_bos_id(t));
    free(ids);
    free(out);
    chat_template_deinit(&ct);
    assert_int_equal(chat_template_from_tokenizer(&ct, t, "zephyr", &err), LLMQ_OK);
    assert_int_equal(ct.family, CHAT_ZEPHYR);
    chat_template_deinit(&ct);
    assert_int_equal(chat_template_from_tokenizer(&ct, t, "nonsense", &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "nonsense"));
    tok_destroy(t);

    /* misc-meta's config carries a chatml template; spm-bf's llama-2 */
    snprintf(dir, sizeof dir, "%s/tests/fixtures/tokenizers/misc-meta", tu_root());
    t = tok_load(dir, &err);
    assert_non_null(t);
    assert_int_equal(chat_template_from_tokenizer(&ct, t, NULL, &err), LLMQ_OK);
    assert_int_equal(ct.family, CHAT_CHATML);
    assert_null(ct.default_system);
    chat_template_deinit(&ct);
    tok_destroy(t);
    snprintf(dir, sizeof dir, "%s/tests/fixtures/tokenizers/spm-bf", tu_root());
    t = tok_load(dir, &err);
    assert_non_null(t);
    assert_int_equal(chat_template_from_tokenizer(&ct, t, NULL, &err), LLMQ_OK);
    assert_int_equal(ct.family, CHAT_LLAMA2);
    assert_string_equal(ct.bos, "<s>");
    chat_template_deinit(&ct);
    tok_destroy(t);

    /* a model without a chat template: the documented default, chatml as
     * transformers' old class default rendered it (no system message) */
    snprintf(dir, sizeof dir, "%s/tests/fixtures/tokenizers/bl-roberta", tu_root());
    t = tok_load(dir, &err);
    assert_non_null(t);
    assert_int_equal(chat_template_from_tokenizer(&ct, t, NULL, &err), LLMQ_OK);
    assert_int_equal(ct.family, CHAT_CHATML);
    assert_int_equal(ct.source, CHAT_SRC_DEFAULT);
    assert_null(ct.default_system);
    chat_msg hi[] = {{"user", "Hi", NULL}};
    assert_int_equal(chat_render(&ct, hi, 1, 1, &out, &len, &err), LLMQ_OK);
    assert_string_equal(out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    free(out);
    char line[256];
    chat_template_describe(&ct, NULL, line, sizeof line);
    assert_non_null(strstr(line, "the default"));
    chat_template_deinit(&ct);

    /* --chat-template FILE: the family detected in the file; a file of an
     * unknown family and a name that is neither are errors naming no path */
    char *tmp = tu_mkdtemp();
    char file[4200];
    snprintf(file, sizeof file, "%s/t.jinja", tmp);
    const char *l3 = "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>{{ m['content'] }}"
                     "<|eot_id|>{% endfor %}";
    assert_int_equal(tu_write_file(file, l3, strlen(l3)), 0);
    assert_int_equal(chat_template_from_tokenizer(&ct, t, file, &err), LLMQ_OK);
    assert_int_equal(ct.family, CHAT_LLAMA3);
    assert_int_equal(ct.source, CHAT_SRC_FILE);
    chat_template_describe(&ct, file, line, sizeof line);
    assert_non_null(strstr(line, "t.jinja"));
    chat_template_deinit(&ct);
    assert_int_equal(chat_template_from_tokenizer(&ct, t, l3, &err), LLMQ_OK); /* inline text */
    assert_int_equal(ct.family, CHAT_LLAMA3);
    assert_int_equal(ct.source, CHAT_SRC_TEXT);
    chat_template_deinit(&ct);
    assert_int_equal(tu_write_file(file, "{{ messages }} USER: ASSISTANT:", 31), 0);
    assert_int_equal(chat_template_from_tokenizer(&ct, t, file, &err), LLMQ_ERR_UNSUPPORTED);
    assert_null(strstr(err.msg, tmp));
    assert_non_null(strstr(err.msg, "llama-3"));
    tu_rmtree(tmp);
    free(tmp);
    tok_destroy(t);
}

/* Qwen2's chatml template carries a default system message; it is found and used. */
static void test_chatml_default_system(void **state) {
    (void)state;
    char path[4096], dst[4200];
    snprintf(path, sizeof path, "%s/tests/fixtures/tokenizers/chat.expect.json", tu_root());
    json_t *all = json_load_file(path, 0, NULL);
    assert_non_null(all);
    const char *qwen = NULL;
    for (size_t i = 0; i < json_array_size(all) && !qwen; i++)
        if (!strcmp(json_string_value(json_object_get(json_array_get(all, i), "template_name")), "chatml-qwen2"))
            qwen = json_string_value(json_object_get(json_array_get(all, i), "template"));
    assert_non_null(qwen);
    char *dir = tu_mkdtemp();
    snprintf(path, sizeof path, "%s/tests/fixtures/tokenizers/bl-roberta/tokenizer.json", tu_root());
    size_t len;
    char *data = tu_read_file(path, &len);
    assert_non_null(data);
    snprintf(dst, sizeof dst, "%s/tokenizer.json", dir);
    assert_int_equal(tu_write_file(dst, data, len), 0);
    free(data);
    json_t *cfg = json_pack("{s:s, s:s}", "chat_template", qwen, "eos_token", "<|im_end|>");
    snprintf(dst, sizeof dst, "%s/tokenizer_config.json", dir);
    assert_int_equal(json_dump_file(cfg, dst, 0), 0);
    json_decref(cfg);
    llmq_err err = {0};
    tokenizer *t = tok_load(dir, &err);
    assert_non_null(t);
    chat_template ct;
    assert_int_equal(chat_template_from_tokenizer(&ct, t, NULL, &err), LLMQ_OK);
    assert_int_equal(ct.family, CHAT_CHATML);
    assert_non_null(ct.default_system);
    assert_string_equal(ct.default_system, "You are a helpful assistant.");
    chat_template_deinit(&ct);
    tok_destroy(t);
    /* a template of no known family: the error (which reaches clients) names no path */
    cfg = json_pack("{s:s}", "chat_template", "{{ messages }} USER: ASSISTANT:");
    assert_int_equal(json_dump_file(cfg, dst, 0), 0);
    json_decref(cfg);
    t = tok_load(dir, &err);
    assert_non_null(t);
    assert_int_equal(chat_template_from_tokenizer(&ct, t, NULL, &err), LLMQ_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "--chat-template"));
    assert_null(strstr(err.msg, "/"));
    tok_destroy(t);
    json_decref(all);
    tu_rmtree(dir);
    free(dir);
}

/* Tools (chat_render_tools) against Qwen2.5's, Llama 3.1's and Mistral
 * v0.3's templates rendered by Jinja2 (tools/chat_tools_fixtures.py): tools
 * listed as json.dumps writes them, assistant tool_calls (arguments given as
 * OpenAI's JSON text), runs of tool turns, with and without a default system
 * message (chatml), with and without tools (llama-3.1, mistral-v3: both
 * ways through chat_render_tools, without also through chat_render); where
 * the template raises, LLMQ_ERR_INVALID with its message. */
static void test_tools_against_jinja(void **state) {
    (void)state;
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/tokenizers/chat_tools.expect.json", tu_root());
    json_error_t je;
    json_t *all = json_load_file(path, 0, &je);
    assert_non_null(all);
    size_t bad = 0, n = json_array_size(all);
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_array_get(all, i);
        const char *name = json_string_value(json_object_get(c, "template_name"));
        chat_family f = chat_family_by_name(name);
        if (f == CHAT_UNKNOWN) f = CHAT_CHATML; /* qwen2.5, qwen3-head */
        const char *bos = json_string_value(json_object_get(c, "bos")), *eos = json_string_value(json_object_get(c, "eos"));
        chat_template ct;
        assert_int_equal(chat_template_init(&ct, f, bos ? bos : "", eos ? eos : "<|im_end|>",
                                            json_string_value(json_object_get(c, "default_system"))),
                         LLMQ_OK);
        json_t *ms = json_object_get(c, "messages");
        size_t nm = json_array_size(ms);
        chat_msg msgs[16] = {{0}};
        char *calls[16] = {0};
        for (size_t k = 0; k < nm; k++) {
            json_t *m = json_array_get(ms, k);
            msgs[k].role = json_string_value(json_object_get(m, "role"));
            const char *content = json_string_value(json_object_get(m, "content"));
            msgs[k].content = content ? content : ""; /* null: "", as the gateway sends it */
            if (json_object_get(m, "tool_calls")) msgs[k].tool_calls = calls[k] = json_dumps(json_object_get(m, "tool_calls"), 0);
        }
        json_t *tj = json_object_get(c, "tools");
        char *tools = json_is_array(tj) ? json_dumps(tj, JSON_COMPACT) : NULL;
        const int gen = json_is_true(json_object_get(c, "add_generation_prompt"));
        for (int way = 0; way < (tools ? 1 : 2); way++) {
            char *out = NULL;
            size_t len = 0;
            llmq_err err = {0};
            llmq_status st = way ? chat_render(&ct, msgs, nm, gen, &out, &len, &err)
                                 : chat_render_tools(&ct, msgs, nm, tools, gen, &out, &len, &err);
            const char *want = json_string_value(json_object_get(c, "text"));
            const char *raised = json_string_value(json_object_get(c, "error"));
            int ok = want ? !st && len == strlen(want) && !memcmp(out, want, len)
                          : st == LLMQ_ERR_INVALID && !strcmp(err.msg, raised);
            if (!ok && bad++ < 3)
                fprintf(stderr, "  case %zu (%s): status %s %s\n    want: %s\n    got:  %s\n", i, name,
                        llmq_status_name(st), err.msg, want ? want : raised, out ? out : "(none)");
            free(out);
        }
        free(tools);
        for (size_t k = 0; k < nm; k++) free(calls[k]);
        chat_template_deinit(&ct);
    }
    fprintf(stderr, "  %zu renderings with tools, %zu bad\n", n, bad);
    assert_true(n >= 160);
    assert_int_equal(bad, 0);
    json_decref(all);
}

/* Tools elsewhere: "[]" renders as without tools; families without a tools
 * renderer say so; the grammar of a forced call. */
static void test_tools_edges(void **state) {
    (void)state;
    chat_template ct;
    assert_int_equal(chat_template_init(&ct, CHAT_CHATML, "", "", NULL), LLMQ_OK);
    chat_msg m[] = {{"user", "Hi", NULL}};
    char *a = NULL, *b = NULL;
    size_t la, lb;
    llmq_err err = {0};
    assert_int_equal(chat_render_tools(&ct, m, 1, "[]", 1, &a, &la, &err), LLMQ_OK);
    assert_int_equal(chat_render(&ct, m, 1, 1, &b, &lb, &err), LLMQ_OK);
    assert_string_equal(a, b);
    free(a);
    free(b);
    assert_int_equal(chat_render_tools(&ct, m, 1, "{}", 1, &a, &la, &err), LLMQ_ERR_INVALID);
    chat_template_deinit(&ct);
    assert_int_equal(chat_template_init(&ct, CHAT_LLAMA3, "<|begin_of_text|>", "<|eot_id|>", NULL), LLMQ_OK);
    const char *tools = "[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]";
    assert_int_equal(chat_render_tools(&ct, m, 1, tools, 1, &a, &la, &err), LLMQ_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "llama-3"));
    chat_template_deinit(&ct);
    char *g = NULL;
    assert_int_equal(chat_tools_grammar(CHAT_CHATML, tools, NULL, &g, &err), LLMQ_OK);
    assert_non_null(strstr(g, "start: \"<tool_call>\\n{\\\"name\\\": \\\"f\\\", \\\"arguments\\\": \" a0 \"}\\n</tool_call>\""));
    assert_non_null(strstr(g, "a0: %json {\"type\":\"object\""));
    free(g);
    assert_int_equal(chat_tools_grammar(CHAT_CHATML, tools, "g", &g, &err), LLMQ_ERR_INVALID);
    assert_int_equal(chat_tools_grammar(CHAT_CHATML, "[{\"type\":\"function\",\"function\":{\"name\":\"a\\\"b\"}}]", NULL,
                                        &g, &err), LLMQ_ERR_INVALID);
    assert_int_equal(chat_tools_grammar(CHAT_MISTRAL, tools, NULL, &g, &err), LLMQ_ERR_UNSUPPORTED);
    /* the syntax each template writes an assistant's call in */
    assert_int_equal(chat_tools_grammar(CHAT_LLAMA31, tools, "f", &g, &err), LLMQ_OK);
    assert_non_null(strstr(g, "start: \"{\\\"name\\\": \\\"f\\\", \\\"parameters\\\": \" a0 \"}\"\n"));
    free(g);
    assert_int_equal(chat_tools_grammar(CHAT_MISTRAL3, tools, NULL, &g, &err), LLMQ_OK);
    assert_non_null(strstr(g, "start: \"[TOOL_CALLS] [\" call \"]\"\ncall: \"{\\\"name\\\": \\\"f\\\", "
                              "\\\"arguments\\\": \" a0 \"}\"\n"));
    free(g);
    /* the revisions with tools are told from their predecessors */
    assert_int_equal(chat_family_detect("<|start_header_id|> <|eot_id|> Cutting Knowledge Date: December 2023"),
                     CHAT_LLAMA31);
    assert_int_equal(chat_family_detect("[INST] [/INST] [AVAILABLE_TOOLS]"), CHAT_MISTRAL3);
    assert_int_equal(chat_family_detect("[INST] [/INST]"), CHAT_MISTRAL);
    assert_int_equal(chat_family_by_name("llama-3.1"), CHAT_LLAMA31);
    assert_string_equal(chat_family_name(CHAT_MISTRAL3), "mistral-v3");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_jinja),
        cmocka_unit_test(test_names_and_detection),
        cmocka_unit_test(test_from_tokenizer),
        cmocka_unit_test(test_chatml_default_system),
        cmocka_unit_test(test_tools_against_jinja),
        cmocka_unit_test(test_tools_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
