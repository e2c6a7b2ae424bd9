/*
 * toolcall.c — tool-call text to OpenAI tool_calls (see toolcall.h).
 */
#include "common/toolcall.h"

#include <string.h>
#include <sys/random.h>

static int is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* "call_" and 24 random letters and digits, as OpenAI's ids look. */
static json_t *call_id(void) {
    static const char al[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    unsigned char r[24];
    char id[5 + sizeof r + 1] = "call_";
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) /* cannot fail for 24 bytes once booted; never all equal */
        for (size_t i = 0; i < sizeof r; i++) r[i] = (unsigned char)(i * 37u + 11u);
    for (size_t i = 0; i < sizeof r; i++) id[5 + i] = al[r[i] % (sizeof al - 1)];
    id[5 + sizeof r] = 0;
    return json_string(id);
}

/* One call object {"name", "arguments" | "parameters"} to OpenAI's shape
 * appended to calls; -1 when it is not one. */
static int add_call(json_t *calls, const json_t *o) {
    const json_t *name = json_object_get(o, "name");
    const json_t *args = json_object_get(o, "arguments");
    if (!args) args = json_object_get(o, "parameters");
    if (!json_is_string(name) || !json_string_length(name) || !args) return -1;
    /* arguments travel as JSON text; a model that wrote a string already gave the text */
    char *a = json_is_string(args) ? strdup(json_string_value(args)) : json_dumps(args, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!a) return -1;
    json_t *c = json_pack("{s:o, s:s, s:{s:O, s:s}}", "id", call_id(), "type", "function", "function", "name", name,
                          "arguments", a);
    free(a);
    return c ? json_array_append_new(calls, c) : -1;
}

static const char *find(const char *s, size_t n, const char *what) {
    return memmem(s, n, what, strlen(what));
}

/* Hermes: each <tool_call>JSON</tool_call> (the last may lack its end). */
static int parse_hermes(json_t *calls, const char *s, const char *end) {
    static const char OPEN[] = "<tool_call>", CLOSE[] = "</tool_call>";
    while ((s = find(s, (size_t)(end - s), OPEN))) {
        s += sizeof OPEN - 1;
        const char *e = find(s, (size_t)(end - s), CLOSE);
        if (!e) e = end;
        json_t *o = json_loadb(s, (size_t)(e - s), 0, NULL);
        int rc = json_is_object(o) ? add_call(calls, o) : -1;
        json_decref(o);
        if (rc) return -1;
        s = e < end ? e + sizeof CLOSE - 1 : end;
    }
    return 0;
}

/* Mistral: [TOOL_CALLS] then a JSON array of calls. */
static int parse_mistral(json_t *calls, const char *s, const char *end) {
    json_t *a = json_loadb(s, (size_t)(end - s), 0, NULL);
    int rc = json_is_array(a) && json_array_size(a) ? 0 : -1;
    size_t i;
    json_t *o;
    json_array_foreach(a, i, o) if (!rc) rc = json_is_object(o) ? add_call(calls, o) : -1;
    json_decref(a);
    return rc;
}

json_t *toolcall_parse(const char *text, size_t len, size_t *content_len) {
    const char *end = text + len, *at;
    json_t *calls = json_array();
    if (!calls) return NULL;
    int rc = -1;
    if ((at = find(text, len, "<tool_call>"))) {
        rc = parse_hermes(calls, at, end);
    } else if ((at = find(text, len, "[TOOL_CALLS]"))) {
        rc = parse_mistral(calls, at + strlen("[TOOL_CALLS]"), end);
    } else { /* Llama 3.1: the whole output is one call */
        at = text;
        while (at < end && is_space(*at)) at++;
        const char *body = at;
        if ((size_t)(end - body) >= strlen("<|python_tag|>") && !memcmp(body, "<|python_tag|>", strlen("<|python_tag|>")))
            body += strlen("<|python_tag|>");
        json_t *o = json_loadb(body, (size_t)(end - body), 0, NULL);
        if (json_is_object(o) && json_object_get(o, "name") &&
            (json_object_get(o, "parameters") || json_object_get(o, "arguments")))
            rc = add_call(calls, o);
        json_decref(o);
    }
    if (rc || !json_array_size(calls)) {
        json_decref(calls);
        return NULL;
    }
    while (at > text && is_space(at[-1])) at--;
    *content_len = (size_t)(at - text);
    return calls;
}
