/*
 * submit.c — JSON bodies to requests, requests to Redis (see submit.h).
 *
 * Parsing is strict about types (a string where a number belongs is a 400
 * naming the field, like OpenAI's API) and lenient about unknown fields
 * (ignored, so clients written for newer API versions keep working).  JSON
 * null means "not given" everywhere.
 */
#include "gateway/submit.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/affinity.h"
#include "common/jobops.h"
#include "common/log.h"


static int bad_set(gw_bad *bad, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int bad_set(gw_bad *bad, int status, const char *param, const char *fmt, ...) {
    bad->status = status;
    bad->type = "invalid_request_error";
    bad->code = NULL;
    snprintf(bad->param, sizeof bad->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(bad->msg, sizeof bad->msg, fmt, ap);
    va_end(ap);
    return -1;
}

/* The last refusal of gw_parse_request for a model not in the table, so that
 * gw_reply_bad can tell it from other refusals (routes fill gw_bad their own
 * way too) without a field the other routes would have to set.  One thread,
 * one loop: set and used within one call chain from gw_route. */
static struct {
    const gw_bad *bad;
    gw *g;
} model_miss;

void gw_reply_bad(http_conn *c, const gw_bad *bad) {
    if (bad == model_miss.bad && model_miss.g && bad->code && !strcmp(bad->code, "model_not_found")) {
        gw *g = model_miss.g;
        model_miss.bad = NULL;
        model_miss.g = NULL;
        if (gw_models_retry(g, c)) return;
    }
    gw_reply_error(c, bad->status, bad->type, bad->param[0] ? bad->param : NULL, bad->code, "%s", bad->msg);
}

static const char *jtype(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "something else";
}

/* Field getters: 0 = absent/null (out untouched), 1 = set, -1 = wrong type (bad set). */
static const json_t *field(const json_t *o, const char *k) {
    const json_t *v = json_object_get(o, k);
    return v && !json_is_null(v) ? v : NULL;
}

static int get_num(const json_t *o, const char *k, double *out, gw_bad *bad) {
    const json_t *v = field(o, k);
    if (!v) return 0;
    if (!json_is_number(v)) return bad_set(bad, 400, k, "'%s' must be a number, not %s", k, jtype(v));
    *out = json_number_value(v);
    return 1;
}

static int get_int(const json_t *o, const char *k, long long lo, long long hi, long long *out, gw_bad *bad) {
    const json_t *v = field(o, k);
    if (!v) return 0;
    if (!json_is_integer(v)) return bad_set(bad, 400, k, "'%s' must be an integer, not %s", k, jtype(v));
    long long x = json_integer_value(v);
    if (x < lo || x > hi) return bad_set(bad, 400, k, "'%s' must be between %lld and %lld", k, lo, hi);
    *out = x;
    return 1;
}

static int get_bool(const json_t *o, const char *k, int *out, gw_bad *bad) {
    const json_t *v = field(o, k);
    if (!v) return 0;
    if (!json_is_boolean(v)) return bad_set(bad, 400, k, "'%s' must be a boolean, not %s", k, jtype(v));
    *out = json_is_true(v);
    return 1;
}

static int set_str(char **dst, const char *s, gw_bad *bad) {
    free(*dst);
    *dst = strdup(s);
    return *dst ? 0 : bad_set(bad, 500, NULL, "out of memory");
}

/* An array of token ids. */
static int get_ids(const json_t *v, const char *k, int32_t **out, size_t *n_out, size_t max, gw_bad *bad) {
    if (!json_is_array(v)) return bad_set(bad, 400, k, "'%s' must be an array of integers, not %s", k, jtype(v));
    size_t n = json_array_size(v);
    if (n > max) return bad_set(bad, 400, k, "'%s' has more than %zu entries", k, max);
    int32_t *ids = n ? malloc(n * sizeof *ids) : NULL;
    if (n && !ids) return bad_set(bad, 500, NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_array_get(v, i);
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > INT32_MAX) {
            free(ids);
            return bad_set(bad, 400, k, "'%s' must hold token ids (integers >= 0); entry %zu is not one", k, i);
        }
        ids[i] = (int32_t)json_integer_value(e);
    }
    free(*out);
    *out = ids;
    *n_out = n;
    return 1;
}

/* ---------------------------------------------------------------- prompts */

/* A text prompt, within PROTO_MAX_PROMPT_BYTES. */
static int set_prompt_text(const json_t *v, proto_request *r, gw_bad *bad) {
    if (json_string_length(v) > PROTO_MAX_PROMPT_BYTES)
        return bad_set(bad, 400, "prompt", "'prompt' is longer than %d bytes", PROTO_MAX_PROMPT_BYTES);
    r->kind = PROTO_PROMPT_TEXT;
    return set_str(&r->prompt, json_string_value(v), bad);
}

/* OpenAI completions `prompt`: a string, [string], [int...] or [[int...]]. */
static int parse_prompt(const json_t *v, proto_request *r, gw_bad *bad) {
    if (json_is_string(v)) return set_prompt_text(v, r, bad);
    if (!json_is_array(v)) return bad_set(bad, 400, "prompt", "'prompt' must be a string or an array, not %s", jtype(v));
    size_t n = json_array_size(v);
    if (n == 0) return bad_set(bad, 400, "prompt", "'prompt' must not be empty");
    const json_t *first = json_array_get(v, 0);
    if (json_is_integer(first)) {
        r->kind = PROTO_PROMPT_IDS;
        return get_ids(v, "prompt", &r->prompt_ids, &r->n_prompt_ids, PROTO_MAX_PROMPT_IDS, bad) < 0 ? -1 : 0;
    }
    if (n > 1)
        return bad_set(bad, 400, "prompt", "batched prompts are not supported: send one prompt per request");
    if (json_is_string(first)) return set_prompt_text(first, r, bad);
    if (json_is_array(first)) {
        r->kind = PROTO_PROMPT_IDS;
        return get_ids(first, "prompt", &r->prompt_ids, &r->n_prompt_ids, PROTO_MAX_PROMPT_IDS, bad) < 0 ? -1 : 0;
    }
    return bad_set(bad, 400, "prompt", "'prompt' entries must be strings or token ids, not %s", jtype(first));
}

/* Chat `messages`: [{role, content}] where content is a string, null, or an
 * array of {"type":"text","text":...} parts (concatenated).  Roles within
 * PROTO_MAX_ROLE_LEN, all contents together within PROTO_MAX_PROMPT_BYTES. */
static int parse_messages(const json_t *v, proto_request *r, gw_bad *bad) {
    if (!json_is_array(v)) return bad_set(bad, 400, "messages", "'messages' must be an array, not %s", jtype(v));
    size_t n = json_array_size(v);
    if (n == 0) return bad_set(bad, 400, "messages", "'messages' must not be empty");
    if (n > PROTO_MAX_MESSAGES) return bad_set(bad, 400, "messages", "'messages' has more than %d entries", PROTO_MAX_MESSAGES);
    r->messages = calloc(n, sizeof *r->messages);
    if (!r->messages) return bad_set(bad, 500, NULL, "out of memory");
    r->n_messages = n;
    r->kind = PROTO_PROMPT_MESSAGES;
    size_t total = 0; /* bytes of all contents so far */
    for (size_t i = 0; i < n; i++) {
        const json_t *m = json_array_get(v, i);
        if (!json_is_object(m)) return bad_set(bad, 400, "messages", "messages[%zu] must be an object, not %s", i, jtype(m));
        const json_t *role = field(m, "role"), *content = field(m, "content");
        if (!role || !json_is_string(role))
            return bad_set(bad, 400, "messages", "messages[%zu].role must be a string", i);
        if (json_string_length(role) > PROTO_MAX_ROLE_LEN)
            return bad_set(bad, 400, "messages", "messages[%zu].role is longer than %d bytes", i, PROTO_MAX_ROLE_LEN);
        if (set_str(&r->messages[i].role, json_string_value(role), bad)) return -1;
        if (!content) {
            if (set_str(&r->messages[i].content, "", bad)) return -1;
        } else if (json_is_string(content)) {
            if (set_str(&r->messages[i].content, json_string_value(content), bad)) return -1;
        } else if (json_is_array(content)) {
            proto_buf b;
            proto_buf_init(&b);
            int oom = 0;
            for (size_t j = 0; j < json_array_size(content); j++) {
                const json_t *part = json_array_get(content, j);
                const json_t *type = json_is_object(part) ? field(part, "type") : NULL;
                const json_t *text = json_is_object(part) ? field(part, "text") : NULL;
                if (!type || !json_is_string(type) || strcmp(json_string_value(type), "text") != 0 || !text ||
                    !json_is_string(text)) {
                    proto_buf_deinit(&b);
                    return bad_set(bad, 400, "messages",
                                   "messages[%zu].content[%zu]: only {\"type\":\"text\",\"text\":...} parts are supported",
                                   i, j);
                }
                oom |= proto_buf_append(&b, json_string_value(text), json_string_length(text)) != LLMQ_OK;
                if (b.len > PROTO_MAX_PROMPT_BYTES) break; /* refused below */
            }
            oom |= proto_buf_append(&b, "", 1) != LLMQ_OK;
            if (oom) {
                proto_buf_deinit(&b);
                return bad_set(bad, 500, NULL, "out of memory");
            }
            r->messages[i].content = b.data; /* NUL terminated above; ownership moves */
        } else {
            return bad_set(bad, 400, "messages", "messages[%zu].content must be a string, not %s", i, jtype(content));
        }
        /* an assistant turn's calls, for the chat template (OpenAI's shape, checked by the worker) */
        const json_t *calls = field(m, "tool_calls");
        if (calls && !json_is_array(calls))
            return bad_set(bad, 400, "messages", "messages[%zu].tool_calls must be an array, not %s", i, jtype(calls));
        if (calls && json_array_size(calls) && !(r->messages[i].tool_calls = json_dumps(calls, JSON_COMPACT)))
            return bad_set(bad, 500, NULL, "out of memory");
        total += strlen(r->messages[i].content);
        if (total > PROTO_MAX_PROMPT_BYTES)
            return bad_set(bad, 400, "messages", "the contents of 'messages' are longer than %d bytes",
                           PROTO_MAX_PROMPT_BYTES);
    }
    return 0;
}

static int parse_stop(const json_t *v, proto_request *r, gw_bad *bad) {
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    if (!json_is_string(v) && !json_is_array(v))
        return bad_set(bad, 400, "stop", "'stop' must be a string or an array of strings, not %s", jtype(v));
    if (n > PROTO_MAX_STOP) return bad_set(bad, 400, "stop", "'stop' has more than %d entries", PROTO_MAX_STOP);
    if (n == 0) return 0;
    r->stop = calloc(n, sizeof *r->stop);
    if (!r->stop) return bad_set(bad, 500, NULL, "out of memory");
    r->n_stop = n;
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_string(e) || json_string_length(e) == 0)
            return bad_set(bad, 400, "stop", "'stop' entries must be non-empty strings");
        if (json_string_length(e) > PROTO_MAX_STOP_LEN)
            return bad_set(bad, 400, "stop", "'stop' entries must be at most %d bytes", PROTO_MAX_STOP_LEN);
        if (set_str(&r->stop[i], json_string_value(e), bad)) return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- structured output */

/* The constraint of a body, as the request's `guide` (docs/protocol.md):
 * OpenAI's `response_format` or one of vLLM's `guided_json`, `guided_regex`,
 * `guided_choice`, `guided_grammar`, at most one.  The gateway checks shapes
 * only; the syntax of a schema, regex or grammar is llguidance's, which the
 * worker asks at admission (a refusal is a 400 with code invalid_constraint). */

/* Take ownership of data as r's guide of type t (data NULL: out of memory). */
static int set_guide(proto_request *r, proto_guide_type t, char *data, const char *param, gw_bad *bad) {
    if (!data) return bad_set(bad, 500, NULL, "out of memory");
    if (strlen(data) > PROTO_MAX_GUIDE_BYTES) {
        free(data);
        return bad_set(bad, 400, param, "'%s' is longer than %d bytes", param, PROTO_MAX_GUIDE_BYTES);
    }
    r->guide_type = t;
    r->guide = data;
    return 0;
}

/* A JSON Schema (an object, or a boolean: `true` allows anything) or a
 * string holding one, as compact JSON text for the worker.  what: how the
 * error names it.
 *
 * llguidance lets JSON have any whitespace between its tokens by default,
 * and a model that is not sure what to write next fills it with spaces and
 * newlines up to max_tokens (the shared test model did, every time).  So an
 * object schema without llguidance options of its own (`x-guidance`, read at
 * the top level only) gets {"whitespace_flexible": false}: JSON without
 * whitespace, as OpenAI's structured outputs read.  A schema that sets
 * `x-guidance` is passed as it is. */
static int set_schema(proto_request *r, const json_t *v, const char *what, const char *param, gw_bad *bad) {
    json_t *owned = NULL;
    if (json_is_string(v)) {
        json_error_t je;
        owned = json_loadb(json_string_value(v), json_string_length(v), JSON_DECODE_ANY, &je);
        if (!owned) return bad_set(bad, 400, param, "'%s' is not valid JSON: %s", what, je.text);
        v = owned;
    }
    if (!json_is_object(v) && !json_is_boolean(v)) {
        bad_set(bad, 400, param, "'%s' must be a JSON Schema (an object), not %s", what, jtype(v));
        json_decref(owned); /* after jtype(v): v may be it */
        return -1;
    }
    if (json_is_object(v) && !json_object_get(v, "x-guidance")) {
        json_t *copy = json_copy((json_t *)v); /* shallow: the body is not ours to change */
        if (!copy || json_object_set_new(copy, "x-guidance", json_pack("{s:b}", "whitespace_flexible", 0))) {
            json_decref(copy);
            json_decref(owned);
            return bad_set(bad, 500, NULL, "out of memory");
        }
        json_decref(owned);
        v = owned = copy;
    }
    int rc = set_guide(r, PROTO_GUIDE_JSON_SCHEMA, json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY), param, bad);
    json_decref(owned);
    return rc;
}

/* OpenAI's response_format: {"type": "text" | "json_object" | "json_schema",
 * "json_schema": {"name", "schema", "strict", "description"}}.  json_object
 * is any JSON object, the schema {"type":"object"} (as vLLM asks llguidance,
 * here without free whitespace, see set_schema). */
static int parse_response_format(const json_t *v, proto_request *r, gw_bad *bad) {
    const char *P = "response_format";
    if (!json_is_object(v)) return bad_set(bad, 400, P, "'response_format' must be an object, not %s", jtype(v));
    const json_t *type = field(v, "type");
    if (!type || !json_is_string(type))
        return bad_set(bad, 400, P, "'response_format.type' must be one of 'text', 'json_object', 'json_schema'");
    const char *t = json_string_value(type);
    if (!strcmp(t, "text")) return 0;
    if (!strcmp(t, "json_object")) {
        json_t *any = json_pack("{s:s}", "type", "object");
        int rc = any ? set_schema(r, any, "response_format", P, bad) : bad_set(bad, 500, NULL, "out of memory");
        json_decref(any);
        return rc;
    }
    if (strcmp(t, "json_schema") != 0)
        return bad_set(bad, 400, P,
                       "'response_format.type' must be one of 'text', 'json_object', 'json_schema', not '%.64s'", t);
    const json_t *js = field(v, "json_schema");
    if (!js || !json_is_object(js))
        return bad_set(bad, 400, P, "'response_format.json_schema' must be an object {name, schema, strict}");
    const json_t *name = field(js, "name"), *strict = field(js, "strict"), *schema = field(js, "schema");
    if (name && !json_is_string(name))
        return bad_set(bad, 400, P, "'response_format.json_schema.name' must be a string, not %s", jtype(name));
    if (strict && !json_is_boolean(strict))
        return bad_set(bad, 400, P, "'response_format.json_schema.strict' must be a boolean, not %s", jtype(strict));
    if (!schema) return bad_set(bad, 400, P, "'response_format.json_schema.schema' is required");
    if (json_is_string(schema)) /* OpenAI's is an object; a string is not read as JSON text here */
        return bad_set(bad, 400, P, "'response_format.json_schema.schema' must be an object, not a string");
    return set_schema(r, schema, "response_format.json_schema.schema", P, bad);
}

/* vLLM's guided_choice: the output is exactly one of the strings, as the Lark
 * grammar `start: "a" | "b"` whose literals are JSON strings (llguidance's
 * own rendering of a choice). */
static int parse_choice(const json_t *v, proto_request *r, gw_bad *bad) {
    const char *P = "guided_choice";
    if (!json_is_array(v) || json_array_size(v) == 0)
        return bad_set(bad, 400, P, "'guided_choice' must be a non-empty array of strings");
    proto_buf b;
    proto_buf_init(&b);
    int oom = proto_buf_append(&b, "start: ", 7) != LLMQ_OK;
    for (size_t i = 0; i < json_array_size(v) && !oom; i++) {
        const json_t *e = json_array_get(v, i);
        if (!json_is_string(e)) {
            proto_buf_deinit(&b);
            return bad_set(bad, 400, P, "'guided_choice' must be an array of strings; entry %zu is %s", i, jtype(e));
        }
        char *lit = json_dumps(e, JSON_ENCODE_ANY);
        oom = !lit || (i && proto_buf_append(&b, " | ", 3) != LLMQ_OK) ||
              proto_buf_append(&b, lit, strlen(lit)) != LLMQ_OK;
        free(lit);
        if (b.len > PROTO_MAX_GUIDE_BYTES) break; /* refused by set_guide */
    }
    oom = oom || proto_buf_append(&b, "", 1) != LLMQ_OK;
    if (oom) {
        proto_buf_deinit(&b);
        return bad_set(bad, 500, NULL, "out of memory");
    }
    return set_guide(r, PROTO_GUIDE_LARK, b.data, P, bad); /* NUL terminated above; ownership moves */
}

static int parse_guide(const json_t *o, gw_parsed *p, gw_bad *bad) {
    static const char *const keys[] = {"response_format", "guided_json", "guided_regex", "guided_choice",
                                       "guided_grammar"};
    proto_request *r = &p->r;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const json_t *v = field(o, keys[i]);
        if (!v) continue;
        if (r->guide_type != PROTO_GUIDE_NONE) /* one constraint is all a job has */
            return bad_set(bad, 400, keys[i],
                           "give only one of 'response_format' (json_object, json_schema), 'guided_json', "
                           "'guided_regex', 'guided_choice', 'guided_grammar': '%s' and '%s' were both given",
                           p->guide_param, keys[i]);
        int rc;
        if (i == 0) rc = parse_response_format(v, r, bad);
        else if (i == 1) rc = set_schema(r, v, "guided_json", keys[i], bad);
        else if (i == 3) rc = parse_choice(v, r, bad);
        else if (!json_is_string(v))
            rc = bad_set(bad, 400, keys[i], "'%s' must be a string, not %s", keys[i], jtype(v));
        else if (memchr(json_string_value(v), '\0', json_string_length(v)))
            rc = bad_set(bad, 400, keys[i], "'%s' contains a NUL character", keys[i]);
        else
            rc = set_guide(r, i == 2 ? PROTO_GUIDE_REGEX : PROTO_GUIDE_LARK, strdup(json_string_value(v)), keys[i],
                           bad);
        if (rc) return -1;
        if (r->guide_type != PROTO_GUIDE_NONE) p->guide_param = keys[i];
    }
    return 0;
}

/* ---------------------------------------------------------------- tools */

/* OpenAI function names, which the worker's call grammar quotes as they are. */
static int tool_name_ok(const char *s) {
    size_t n = strlen(s);
    return n >= 1 && n <= 64 &&
           strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") == n;
}

/* Chat `tools` ([{"type":"function","function":{"name","description"?,"parameters"?}}])
 * and `tool_choice` ("none" | "auto" | "required" | {"type":"function","function":{"name"}})
 * to the request's tools, tool_choice and tool_name (docs/protocol.md "Tool
 * calls").  "none" sends no tools: not rendered, not parsed, as OpenAI. */
static int parse_tools(gw_api api, const json_t *o, gw_parsed *p, gw_bad *bad) {
    proto_request *r = &p->r;
    const json_t *tools = field(o, "tools"), *choice = field(o, "tool_choice");
    int parallel = 1;
    if (get_bool(o, "parallel_tool_calls", &parallel, bad) < 0) return -1;
    p->max_tool_calls = parallel ? 0 : 1;
    /* the job API gives the text as it is, calls unparsed: a limit on them would be ignored */
    if (api == GW_API_JOBS && field(o, "parallel_tool_calls"))
        return bad_set(bad, 400, "parallel_tool_calls",
                       "'parallel_tool_calls' is only for /v1/chat/completions (a job's text is not parsed into calls)");
    if (tools && !json_is_array(tools)) return bad_set(bad, 400, "tools", "'tools' must be an array, not %s", jtype(tools));
    if (!tools || !json_array_size(tools)) {
        if (choice && !(json_is_string(choice) && !strcmp(json_string_value(choice), "none")))
            return bad_set(bad, 400, "tool_choice", "'tool_choice' needs 'tools'");
        return 0;
    }
    /* the job API takes them with messages: rendered and constrained alike, the text as it is */
    if (api == GW_API_COMPLETIONS || r->kind != PROTO_PROMPT_MESSAGES)
        return bad_set(bad, 400, "tools", "'tools' need 'messages' (/v1/chat/completions, or /v1/jobs with messages)");
    for (size_t i = 0; i < json_array_size(tools); i++) {
        const json_t *t = json_array_get(tools, i);
        const json_t *type = json_is_object(t) ? field(t, "type") : NULL;
        const json_t *fn = json_is_object(t) ? field(t, "function") : NULL;
        if (!json_is_string(type) || strcmp(json_string_value(type), "function") || !json_is_object(fn))
            return bad_set(bad, 400, "tools", "tools[%zu] must be {\"type\": \"function\", \"function\": {...}}", i);
        const json_t *name = field(fn, "name"), *desc = field(fn, "description"), *params = field(fn, "parameters");
        if (!json_is_string(name) || !tool_name_ok(json_string_value(name)))
            return bad_set(bad, 400, "tools",
                           "tools[%zu].function.name must be 1 to 64 letters, digits, underscores or dashes", i);
        if (desc && !json_is_string(desc))
            return bad_set(bad, 400, "tools", "tools[%zu].function.description must be a string", i);
        if (params && !json_is_object(params))
            return bad_set(bad, 400, "tools", "tools[%zu].function.parameters must be a JSON Schema object", i);
    }
    const char *mode = "auto", *named = NULL;
    if (json_is_string(choice)) {
        mode = json_string_value(choice);
        if (strcmp(mode, "none") && strcmp(mode, "auto") && strcmp(mode, "required"))
            return bad_set(bad, 400, "tool_choice", "'tool_choice' must be none, auto, required or a named function");
    } else if (choice) {
        const json_t *fn = json_is_object(choice) ? field(choice, "function") : NULL;
        const json_t *name = json_is_object(fn) ? field(fn, "name") : NULL;
        if (!json_is_string(name))
            return bad_set(bad, 400, "tool_choice",
                           "'tool_choice' must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}");
        named = json_string_value(name);
        int found = 0;
        for (size_t i = 0; i < json_array_size(tools) && !found; i++)
            found = !strcmp(named, json_string_value(field(field(json_array_get(tools, i), "function"), "name")));
        if (!found) return bad_set(bad, 400, "tool_choice", "'tool_choice' names '%.64s', which is none of the tools", named);
    }
    if (!strcmp(mode, "none")) return 0;
    /* a forced call is a constraint, and a job has one */
    if ((named || !strcmp(mode, "required")) && r->guide_type != PROTO_GUIDE_NONE)
        return bad_set(bad, 400, "tool_choice", "'tool_choice' %s cannot be combined with '%s'",
                       named ? "naming a function" : "required", p->guide_param ? p->guide_param : "response_format");
    if (!(r->tools = json_dumps(tools, JSON_COMPACT))) return bad_set(bad, 500, NULL, "out of memory");
    if (strlen(r->tools) > PROTO_MAX_GUIDE_BYTES)
        return bad_set(bad, 400, "tools", "'tools' is longer than %d bytes", PROTO_MAX_GUIDE_BYTES);
    if (named) return set_str(&r->tool_name, named, bad);
    return strcmp(mode, "required") ? 0 : set_str(&r->tool_choice, "required", bad);
}

/* ---------------------------------------------------------------- the body */

static int parse_fields(gw *g, gw_api api, const json_t *o, gw_parsed *p, gw_bad *bad) {
    proto_request *r = &p->r;
    long long x = 0;
    int b = 0, rc;

    /* model */
    const json_t *model = field(o, "model");
    if (!model) return bad_set(bad, 400, "model", "'model' is required");
    if (!json_is_string(model)) return bad_set(bad, 400, "model", "'model' must be a string, not %s", jtype(model));
    const char *name = json_string_value(model);
    if (!keys_model_valid(name))
        return bad_set(bad, 400, "model", "'model' must be 1-128 characters of [A-Za-z0-9._:/@+-]");
    const int inst = gw_inst_for_model(g, name); /* its instance lost: a 503 that names it, not a 404 */
    if (g->n_inst > 1 && !g->inst[inst].redis.cmd_ready) {
        bad_set(bad, 503, "model", "the Redis instance %s that holds model '%s' is unreachable; retry shortly "
                "(models on other instances are served)", g->inst[inst].name, name);
        bad->type = "service_unavailable";
        bad->code = "redis_unavailable";
        return -1;
    }
    const int mi = gw_model_lookup(g, name);
    if (mi < 0) {
        bad_set(bad, 404, "model", "The model '%s' does not exist", name);
        bad->code = "model_not_found";
        model_miss.bad = bad;
        model_miss.g = g;
        return -1;
    }
    const int ctx = g->models[mi].max_model_len;
    if (set_str(&r->model, name, bad)) return -1;

    /* prompt */
    const json_t *prompt = field(o, "prompt"), *messages = field(o, "messages"), *ids = field(o, "prompt_ids");
    if (api == GW_API_COMPLETIONS) {
        if (!prompt) return bad_set(bad, 400, "prompt", "'prompt' is required");
        if (parse_prompt(prompt, r, bad)) return -1;
    } else if (api == GW_API_CHAT) {
        if (!messages) return bad_set(bad, 400, "messages", "'messages' is required");
        if (parse_messages(messages, r, bad)) return -1;
    } else {
        if (!!prompt + !!messages + !!ids != 1)
            return bad_set(bad, 400, "prompt", "give exactly one of 'prompt', 'messages', 'prompt_ids'");
        if (prompt && !json_is_string(prompt))
            return bad_set(bad, 400, "prompt", "'prompt' must be a string, not %s", jtype(prompt));
        if (prompt && parse_prompt(prompt, r, bad)) return -1;
        if (messages && parse_messages(messages, r, bad)) return -1;
        if (ids) {
            r->kind = PROTO_PROMPT_IDS;
            if (get_ids(ids, "prompt_ids", &r->prompt_ids, &r->n_prompt_ids, PROTO_MAX_PROMPT_IDS, bad) < 0) return -1;
        }
    }

    /* unsupported OpenAI features: refuse rather than silently ignore */
    /* n and best_of: each choice is a job of its own (routes_openai.c); a job is one */
    const int max_n = api == GW_API_JOBS ? 1 : GW_MAX_CHOICES;
    if ((rc = get_int(o, "n", 1, max_n, &x, bad)) < 0)
        return bad_set(bad, 400, "n", "'n' must be an integer from 1 to %d", max_n);
    p->n = rc > 0 ? (int)x : 1;
    const int max_best = api == GW_API_COMPLETIONS ? GW_MAX_CHOICES : 1;
    if ((rc = get_int(o, "best_of", 1, max_best, &x, bad)) < 0)
        return max_best == 1 ? bad_set(bad, 400, "best_of", "'best_of' is only supported by /v1/completions")
                             : bad_set(bad, 400, "best_of", "'best_of' must be an integer from 1 to %d", max_best);
    p->best_of = rc > 0 ? (int)x : p->n;
    if (p->best_of < p->n) return bad_set(bad, 400, "best_of", "'best_of' must be at least 'n' (%d)", p->n);
    if (get_bool(o, "echo", &b, bad) < 0) return -1;
    if (api == GW_API_COMPLETIONS && field(o, "echo") && b) return bad_set(bad, 400, "echo", "'echo' is not supported");
    if (field(o, "suffix")) return bad_set(bad, 400, "suffix", "'suffix' is not supported");
    const json_t *lb = field(o, "logit_bias");
    if (lb && (!json_is_object(lb) || json_object_size(lb) > 0))
        return bad_set(bad, 400, "logit_bias", "'logit_bias' is not supported");
    if (parse_guide(o, p, bad)) return -1;
    if (parse_tools(api, o, p, bad)) return -1;

    /* sampling */
    long long maxcap = g->cfg.max_tokens_limit > 0 ? g->cfg.max_tokens_limit : INT32_MAX;
    const char *mt_key = (api == GW_API_CHAT && field(o, "max_completion_tokens")) ? "max_completion_tokens" : "max_tokens";
    if ((rc = get_int(o, mt_key, 1, INT32_MAX, &x, bad)) < 0) return -1;
    if (rc > 0) {
        if (x > maxcap) return bad_set(bad, 400, mt_key, "'%s' must be at most %lld", mt_key, maxcap);
        /* as vLLM: refused before queueing rather than cut short at the context
         * (the prompt's share is the worker's to check: it alone tokenizes) */
        if (ctx > 0 && x > ctx) {
            bad_set(bad, 400, mt_key,
                    "This model's maximum context length is %d tokens. However, you requested %lld tokens in "
                    "the completion ('%s'). Please reduce the length of the completion.",
                    ctx, x, mt_key);
            bad->code = "context_length_exceeded";
            return -1;
        }
        r->max_tokens = (int32_t)x;
    } else if (api == GW_API_COMPLETIONS) {
        r->max_tokens = maxcap < 16 ? (int32_t)maxcap : 16; /* OpenAI's default for completions */
    } /* chat, jobs: absent = up to the context, as vLLM (the worker refuses a max_tokens that does not fit) */
    if (get_num(o, "temperature", &r->temperature, bad) < 0) return -1;
    if (get_num(o, "top_p", &r->top_p, bad) < 0) return -1;
    if (get_num(o, "min_p", &r->min_p, bad) < 0) return -1;
    if (get_num(o, "presence_penalty", &r->presence_penalty, bad) < 0) return -1;
    if (get_num(o, "frequency_penalty", &r->frequency_penalty, bad) < 0) return -1;
    if (get_num(o, "repetition_penalty", &r->repetition_penalty, bad) < 0) return -1;
    if ((rc = get_int(o, "top_k", -1, INT32_MAX, &x, bad)) < 0) return -1;
    if (rc > 0) r->top_k = x < 0 ? 0 : (int32_t)x; /* vLLM: -1 = off */
    if ((rc = get_int(o, "seed", INT64_MIN, INT64_MAX, &x, bad)) < 0) return -1;
    if (rc > 0) {
        r->has_seed = true;
        r->seed = (uint64_t)x;
    }
    const json_t *stop = field(o, "stop");
    if (stop && parse_stop(stop, r, bad)) return -1;
    const json_t *stop_ids = field(o, "stop_token_ids");
    if (stop_ids && get_ids(stop_ids, "stop_token_ids", &r->stop_token_ids, &r->n_stop_token_ids, PROTO_MAX_STOP_IDS, bad) < 0)
        return -1;
    if (get_bool(o, "ignore_eos", &b, bad) < 0) return -1;
    if (field(o, "ignore_eos")) r->ignore_eos = b;
    /* vLLM's extra parameter on completions and chat: absent, the worker's
     * default (BOS for a prompt, none for messages, whose template holds it) */
    if ((rc = get_bool(o, "add_special_tokens", &b, bad)) < 0) return -1;
    if (rc > 0) r->add_special_tokens = b;
    /* vLLM's cache_salt: only requests with the same salt share prefix-cache blocks */
    const json_t *salt = field(o, "cache_salt");
    if (salt) {
        if (!json_is_string(salt) || json_string_length(salt) > PROTO_MAX_CACHE_SALT ||
            memchr(json_string_value(salt), '\0', json_string_length(salt)))
            return bad_set(bad, 400, "cache_salt", "'cache_salt' must be a string of at most %d bytes",
                           PROTO_MAX_CACHE_SALT);
        if (set_str(&r->cache_salt, json_string_value(salt), bad)) return -1;
    }
    /* prefix_key (docs/protocol.md "Affinity"): a conversation pinned to the
     * group that ran it last; read again at the submission (prefix_key_of) */
    const json_t *pk = field(o, "prefix_key");
    if (pk && (!json_is_string(pk) || json_string_length(pk) > AFFINITY_MAX_PREFIX_KEY ||
               memchr(json_string_value(pk), '\0', json_string_length(pk))))
        return bad_set(bad, 400, "prefix_key", "'prefix_key' must be a string of at most %d bytes",
                       AFFINITY_MAX_PREFIX_KEY);
    /* priority within --priority-range, except for admin keys (auth.h): the
     * lanes and the scheduler trust it, so a client may not buy its way
     * ahead of every other with INT32_MAX */
    gw_tenant who;
    gw_auth_identify(&g->auth, g->dispatching_req ? g->dispatching_req->authorization : NULL, &who);
    long long plo = who.admin ? INT32_MIN : g->auth.prio_lo, phi = who.admin ? INT32_MAX : g->auth.prio_hi;
    if ((rc = get_int(o, "priority", plo, phi, &x, bad)) < 0) return -1;
    if (rc > 0) r->priority = (int32_t)x;

    /* logprobs: completions int, chat bool + top_logprobs, jobs int.  As at
     * OpenAI and vLLM, a chat top_logprobs > 0 without logprobs: true is
     * refused rather than silently ignored; top_logprobs is range-checked
     * either way. */
    if (api == GW_API_CHAT) {
        int want = 0;
        if (get_bool(o, "logprobs", &want, bad) < 0) return -1;
        if ((rc = get_int(o, "top_logprobs", 0, PROTO_MAX_LOGPROBS, &x, bad)) < 0) return -1;
        if (rc > 0 && x > 0 && !want)
            return bad_set(bad, 400, "top_logprobs", "'top_logprobs' requires 'logprobs': true");
        if (want) r->logprobs = rc > 0 ? (int32_t)x : 0;
    } else {
        if ((rc = get_int(o, "logprobs", 0, PROTO_MAX_LOGPROBS, &x, bad)) < 0) return -1;
        if (rc > 0) r->logprobs = (int32_t)x;
    }

    /* job API: an absolute deadline, or a relative timeout */
    if (api == GW_API_JOBS) {
        if ((rc = get_int(o, "deadline_ms", 0, INT64_MAX, &x, bad)) < 0) return -1;
        if (rc > 0) r->deadline_ms = x;
        if ((rc = get_int(o, "timeout_ms", 1, INT64_MAX / 2, &x, bad)) < 0) return -1;
        if (rc > 0) r->deadline_ms = gw_now_ms() + x;
    }

    /* streaming */
    if (api != GW_API_JOBS) {
        if (get_bool(o, "stream", &p->stream, bad) < 0) return -1;
        const json_t *so = field(o, "stream_options");
        if (so) {
            if (!json_is_object(so)) return bad_set(bad, 400, "stream_options", "'stream_options' must be an object");
            if (get_bool(so, "include_usage", &p->include_usage, bad) < 0) return -1;
        }
        /* as OpenAI: the choices not returned cannot have been streamed */
        if (p->stream && p->best_of > p->n)
            return bad_set(bad, 400, "best_of", "'best_of' greater than 'n' cannot be streamed");
    }

    llmq_err err;
    if (proto_request_validate(r, &err) != LLMQ_OK) {
        char param[64];
        size_t n = strcspn(err.msg, " ");
        if (n >= sizeof param) n = sizeof param - 1;
        memcpy(param, err.msg, n);
        param[n] = '\0';
        return bad_set(bad, 400, param, "%s", err.msg);
    }
    return 0;
}

int gw_parse_request(gw *g, gw_api api, const char *body, size_t len, gw_parsed *p, gw_bad *bad) {
    model_miss.bad = NULL;
    model_miss.g = NULL;
    memset(p, 0, sizeof *p);
    proto_request_init(&p->r);
    if (!body || len == 0) return bad_set(bad, 400, NULL, "the request body is empty; send a JSON object");
    json_error_t je;
    json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!o) return bad_set(bad, 400, NULL, "invalid JSON body: %s (line %d, column %d)", je.text, je.line, je.column);
    int rc;
    if (!json_is_object(o)) rc = bad_set(bad, 400, NULL, "the request body must be a JSON object, not %s", jtype(o));
    else rc = parse_fields(g, api, o, p, bad);
    json_decref(o);
    return rc;
}

/* ---------------------------------------------------------------- submission */

static void submitted(gw_call *call, int status, const char *msg) {
    proto_buf_deinit(&call->payload);
    if (status == 500) status = gw_redis_error_status(call->g, call->inst, msg); /* Redis full: 503 + Retry-After (gw.h) */
    if (!call->done && call->submitted) call->submitted(call, status, msg);
}

static void on_exec(redisAsyncContext *ac, void *reply, void *priv) {
    gw_call *call = priv;
    redisReply *r = reply;
    if (!r) submitted(call, 503, "Redis connection lost while submitting");
    else if (r->type == REDIS_REPLY_ERROR) submitted(call, 500, r->str);
    else if (r->type != REDIS_REPLY_ARRAY || r->elements < 2) submitted(call, 500, "transaction aborted");
    else if (r->element[0]->type == REDIS_REPLY_ERROR) submitted(call, 500, r->element[0]->str);
    else if (r->element[1]->type == REDIS_REPLY_ERROR) submitted(call, 500, r->element[1]->str);
    else {
        metric_inc(metric_get(call->g->m.submitted, call->model), 1);
        submitted(call, 0, NULL);
    }
    gw_call_unref(call);
}

/* The body's prefix_key (validated by parse_fields) into out ("" = none).
 * Parsed again here rather than carried through every route's own state;
 * only bodies that hold the name at all are parsed. */
static void prefix_key_of(const gw_call *call, char out[AFFINITY_MAX_PREFIX_KEY + 1]) {
    out[0] = '\0';
    const http_request *req = call->req;
    if (!req || !req->body || !memmem(req->body, req->body_len, "\"prefix_key\"", 12)) return;
    json_t *o = json_loadb(req->body, req->body_len, 0, NULL);
    const json_t *pk = o ? json_object_get(o, "prefix_key") : NULL;
    if (json_is_string(pk) && json_string_length(pk) <= AFFINITY_MAX_PREFIX_KEY)
        snprintf(out, AFFINITY_MAX_PREFIX_KEY + 1, "%s", json_string_value(pk));
    json_decref(o);
}

/* MULTI; HSET job; XADD req; EXEC — only EXEC's reply is looked at. */
static int send_submission(gw_call *call, const char *affinity) {
    gw *g = call->g;
    jobops_keys kb;
    rcmd multi, hset, xadd, exec;
    rcmd_init(&multi);
    rcmd_str(&multi, "MULTI");
    rcmd_init(&exec);
    rcmd_str(&exec, "EXEC");
    jobops_submit(&hset, &xadd, &kb, &g->keys, call->id, call->model, call->priority, call->payload.data, call->payload.len,
                  gw_now_ms());
    jobops_submit_affinity(&xadd, affinity);
    if (!rcmd_ok(&hset) || !rcmd_ok(&xadd)) return -1;
    gw_redis *rd = &g->inst[call->inst].redis;
    if (gw_redis_send(rd, &multi, NULL, NULL) || gw_redis_send(rd, &hset, NULL, NULL) ||
        gw_redis_send(rd, &xadd, NULL, NULL))
        return -1;
    return gw_call_send(call, &exec, on_exec);
}

/* The reply of the submission script (jobops_submit_as): {1, waiting}
 * submitted, {0, waiting} past --max-queue, {4, unfinished} past the key's
 * --key-max-jobs, {5, tokens, wait ms} past its --key-tokens-per-minute,
 * {2 | 3, first id} an Idempotency-Key seen before.  A 429 leaves its code
 * and Retry-After in the call (gw_reply_refused). */
static void on_script(redisAsyncContext *ac, void *reply, void *priv) {
    gw_call *call = priv;
    redisReply *r = reply;
    if (!r) submitted(call, 503, "Redis connection lost while submitting");
    else if (r->type == REDIS_REPLY_ERROR) submitted(call, 500, r->str);
    else if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 || r->element[0]->type != REDIS_REPLY_INTEGER)
        submitted(call, 500, "unexpected reply to the submission");
    else if (r->element[0]->integer == JOBOPS_SUBMIT_REFUSED) {
        metric_inc(metric_get(call->g->m.rejected, call->model), 1);
        call->refused_code = "queue_full";
        call->retry_after_s = 1;
        char msg[320];
        snprintf(msg, sizeof msg, "%lld jobs are waiting for model '%s' (limit %lld)",
                 r->element[1]->type == REDIS_REPLY_INTEGER ? r->element[1]->integer : -1LL, call->model,
                 call->g->cfg.max_queue);
        submitted(call, 429, msg);
    } else if (r->element[0]->integer == JOBOPS_SUBMIT_TENANT_FULL) {
        metric_inc(metric_get(call->g->m.rejected, call->model), 1);
        call->refused_code = "key_limit";
        call->retry_after_s = 1; /* a slot frees when one of its jobs ends: no telling when */
        char msg[320];
        snprintf(msg, sizeof msg, "this API key has %lld unfinished jobs (limit %lld)",
                 r->element[1]->type == REDIS_REPLY_INTEGER ? r->element[1]->integer : -1LL,
                 call->g->auth.key_max_jobs);
        submitted(call, 429, msg);
    } else if (r->element[0]->integer == JOBOPS_SUBMIT_TENANT_TOKENS) {
        metric_inc(metric_get(call->g->m.rejected, call->model), 1);
        call->refused_code = "key_limit";
        /* whole seconds past the script's wait, so that a retry on time is
         * accepted (the wait is where the count is still at the budget) */
        long long wait_ms = r->elements > 2 && r->element[2]->type == REDIS_REPLY_INTEGER ? r->element[2]->integer : 0;
        call->retry_after_s = wait_ms >= 0 && wait_ms < 120000 ? (int)(wait_ms / 1000) + 1 : 1;
        char msg[320];
        snprintf(msg, sizeof msg, "this API key's jobs used %lld tokens over the last minute (limit %lld per minute)",
                 r->element[1]->type == REDIS_REPLY_INTEGER ? r->element[1]->integer : -1LL, call->g->auth.key_tpm);
        submitted(call, 429, msg);
    } else if (r->element[0]->integer == JOBOPS_SUBMIT_DONE) {
        metric_inc(metric_get(call->g->m.submitted, call->model), 1);
        submitted(call, 0, NULL);
    } else if (r->element[1]->type == REDIS_REPLY_STRING && keys_id_valid(r->element[1]->str)) {
        snprintf(call->id, sizeof call->id, "%s", r->element[1]->str); /* the job the key names */
        if (r->element[0]->integer == JOBOPS_SUBMIT_REPLAY) {
            call->replayed = 1;
            submitted(call, 0, NULL);
        } else {
            char msg[320];
            snprintf(msg, sizeof msg, "Idempotency-Key '%s' was used for job %s with another body", call->idem,
                     call->id);
            submitted(call, 409, msg);
        }
    } else {
        submitted(call, 500, "unexpected reply to the submission");
    }
    gw_call_unref(call);
}

void gw_reply_refused(gw_call *call, const char *msg) {
    const char *code = call->refused_code ? call->refused_code : "queue_full";
    if (!strcmp(code, "queue_full"))
        gw_reply_error_after(call->conn, 429, call->retry_after_s, "rate_limit_error", NULL, code,
                             "queue full: %s; retry later", msg);
    else
        gw_reply_error_after(call->conn, 429, call->retry_after_s, "rate_limit_error", NULL, code,
                             "%s; retry in %d s", msg, call->retry_after_s > 0 ? call->retry_after_s : 1);
}

int gw_submit(gw_call *call, const proto_request *r, void (*done)(gw_call *, int status, const char *msg)) {
    gw *g = call->g;
    llmq_err err;
    snprintf(call->model, sizeof call->model, "%s", r->model);
    call->inst = gw_inst_for_model(g, r->model);
    call->priority = r->priority;
    call->submitted = done;
    proto_buf_reset(&call->payload);
    if (proto_request_encode(r, &call->payload, &err) != LLMQ_OK) {
        log_error("encoding request: %s", err.msg);
        return -1;
    }
    gw_ensure_groups(g);
    char pk[AFFINITY_MAX_PREFIX_KEY + 1], aff[AFFINITY_FIELD_MAX];
    prefix_key_of(call, pk);
    affinity_keys(r, pk, aff);
    gw_tenant who; /* the job is the submitting key's (auth.h "Tenants") */
    gw_auth_identify(&g->auth, call->req ? call->req->authorization : NULL, &who);
    if (call->idem[0] || g->cfg.max_queue > 0 || who.id[0]) {
        /* one script: the key's record, the bounds and the submission, so a
         * burst cannot overshoot a bound */
        rcmd c;
        jobops_keys kb;
        jobops_owner o = {.tenant = who.id,
                          .max_jobs = who.admin ? 0 : g->auth.key_max_jobs,
                          .tokens_per_minute = who.admin ? 0 : g->auth.key_tpm,
                          .idem_key = call->idem[0] ? call->idem : NULL,
                          .body_hash = call->body_hash,
                          .idem_ttl_s = g->cfg.result_ttl_s,
                          .affinity = aff};
        jobops_submit_as(&c, &kb, &g->keys, call->id, call->model, call->priority, call->payload.data,
                         call->payload.len, gw_now_ms(), g->cfg.max_queue, &o);
        return rcmd_ok(&c) ? gw_call_send(call, &c, on_script) : -1;
    }
    return send_submission(call, aff);
}
