/*
 * tok_util.c — small helpers shared by the tokenizer files: the growable text
 * buffer, piece lists, and typed access to JSON fields with error messages that
 * name the file and the field ("<file>: <where>: <message>").
 *
 * Invariant: a tok_text with data != NULL is always NUL-terminated, so its bytes
 * can be handed to C string functions and to PCRE2 alike.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/tokenizer/tok_internal.h"

/* ---------------------------------------------------------------- tok_text */

void tok_text_deinit(tok_text *t) {
    if (!t) return;
    free(t->data);
    t->data = NULL;
    t->len = t->cap = 0;
}

llmq_status tok_text_reserve(tok_text *t, size_t n) {
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 64;
        while (cap < t->len + n + 1) cap *= 2;
        char *p = realloc(t->data, cap);
        if (!p) return LLMQ_ERR_NOMEM;
        t->data = p;
        t->cap = cap;
    }
    return LLMQ_OK;
}

llmq_status tok_text_append(tok_text *t, const char *s, size_t n) {
    if (tok_text_reserve(t, n)) return LLMQ_ERR_NOMEM;
    if (n) memcpy(t->data + t->len, s, n);
    t->len += n;
    t->data[t->len] = '\0';
    return LLMQ_OK;
}

char *tok_strndup(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (!p) return NULL;
    if (n) memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* ---------------------------------------------------------------- pieces */

llmq_status tok_pieces_push(tok_pieces *p, size_t off, size_t len, int32_t id, uint32_t first) {
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 16;
        tok_piece *v = realloc(p->v, cap * sizeof *v);
        if (!v) return LLMQ_ERR_NOMEM;
        p->v = v;
        p->cap = cap;
    }
    p->v[p->n++] = (tok_piece){.off = off, .len = len, .id = id, .first = first};
    return LLMQ_OK;
}

void tok_pieces_free(tok_pieces *p) {
    free(p->v);
    p->v = NULL;
    p->n = p->cap = 0;
}

/* ---------------------------------------------------------------- JSON fields */

llmq_status tok_jfail(const tok_jctx *c, llmq_status code, const char *where, const char *fmt, ...) {
    char msg[LLMQ_ERRSTR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return llmq_err_set(c->err, code, "%s: %s: %s", c->file, where, msg);
}

static const char *jtype_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE: case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

llmq_status tok_jbool(const tok_jctx *c, json_t *obj, const char *key, const char *where, int *out) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return LLMQ_OK;
    if (!json_is_boolean(v))
        return tok_jfail(c, LLMQ_ERR_FORMAT, where, "field \"%s\" must be a boolean, got %s", key,
                         jtype_name(v));
    *out = json_is_true(v);
    return LLMQ_OK;
}

llmq_status tok_jstr(const tok_jctx *c, json_t *obj, const char *key, const char *where,
                     const char **out, size_t *len) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return LLMQ_OK;
    if (!json_is_string(v))
        return tok_jfail(c, LLMQ_ERR_FORMAT, where, "field \"%s\" must be a string, got %s", key,
                         jtype_name(v));
    *out = json_string_value(v);
    if (len) *len = json_string_length(v);
    return LLMQ_OK;
}

llmq_status tok_jint(const tok_jctx *c, json_t *obj, const char *key, const char *where, long long *out) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return LLMQ_OK;
    if (!json_is_integer(v))
        return tok_jfail(c, LLMQ_ERR_FORMAT, where, "field \"%s\" must be an integer, got %s", key,
                         jtype_name(v));
    *out = json_integer_value(v);
    return LLMQ_OK;
}

llmq_status tok_jtype(const tok_jctx *c, json_t *obj, const char *where, const char **type) {
    if (!json_is_object(obj))
        return tok_jfail(c, LLMQ_ERR_FORMAT, where, "must be an object, got %s", jtype_name(obj));
    json_t *v = json_object_get(obj, "type");
    if (!v) return tok_jfail(c, LLMQ_ERR_FORMAT, where, "missing field \"type\"");
    if (!json_is_string(v))
        return tok_jfail(c, LLMQ_ERR_FORMAT, where, "field \"type\" must be a string, got %s",
                         jtype_name(v));
    *type = json_string_value(v);
    return LLMQ_OK;
}
