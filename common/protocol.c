/*
 * protocol.c — msgpack encode/decode of requests and output chunks (see
 * protocol.h for the contract, docs/protocol.md for the format).
 *
 * Decoding goes through msgpack-c's object unpacker (one zone per call, freed
 * before returning), then walks the top-level map with one small typed
 * reader per field kind.  Each reader names the field in its error, so the
 * message that ends up in a failed job's hash tells the client what to fix.
 * Nil is accepted for every optional field and means "not given" (JSON null
 * from the OpenAI API arrives that way).
 *
 * Hostile input: msgpack-c allocates a container's element table from the
 * count its header declares, before it reads an element, so 6 bytes can
 * declare 2^32-1 elements (~100 GB).  That malloc fails (or, with
 * overcommit, reserves address space that is never touched), msgpack-c
 * reports NOMEM, and we report a format error: no crash, no real memory.
 * (msgpack-c 4.0 has no limits API to refuse the count before allocating.)
 * Nesting is bounded by msgpack-c's own stack limit, and the message itself
 * by PROTO_MAX_MESSAGE_BYTES before msgpack-c sees it: the element tables of
 * a message that does hold its elements cost at most 32 bytes per byte.
 */
#include "common/protocol.h"

#include <math.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

/* ================================================================ buffers */

void proto_buf_init(proto_buf *b) { memset(b, 0, sizeof *b); }

void proto_buf_reset(proto_buf *b) { b->len = 0; }

void proto_buf_deinit(proto_buf *b) {
    if (!b) return;
    free(b->data);
    memset(b, 0, sizeof *b);
}

llmq_status proto_buf_append(proto_buf *b, const void *p, size_t n) {
    if (n == 0) return LLMQ_OK;
    if (b->len + n < b->len) return LLMQ_ERR_NOMEM;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) {
            if (cap > SIZE_MAX / 2) return LLMQ_ERR_NOMEM;
            cap *= 2;
        }
        char *d = realloc(b->data, cap);
        if (!d) return LLMQ_ERR_NOMEM;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return LLMQ_OK;
}

/* msgpack_packer write callback: 0 on success, as msgpack-c expects. */
static int buf_write(void *data, const char *p, size_t n) {
    return proto_buf_append(data, p, n) == LLMQ_OK ? 0 : -1;
}

/* ================================================================ decoding helpers */

static const char *type_name(msgpack_object_type t) {
    switch (t) {
    case MSGPACK_OBJECT_NIL: return "nil";
    case MSGPACK_OBJECT_BOOLEAN: return "a boolean";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "an integer";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return "a float";
    case MSGPACK_OBJECT_STR: return "a string";
    case MSGPACK_OBJECT_ARRAY: return "an array";
    case MSGPACK_OBJECT_MAP: return "a map";
    case MSGPACK_OBJECT_BIN: return "binary data";
    case MSGPACK_OBJECT_EXT: return "an extension";
    }
    return "an unknown type";
}

static llmq_status wrong_type(llmq_err *err, const char *field, const char *want, const msgpack_object *o) {
    return llmq_err_set(err, LLMQ_ERR_INVALID, "field '%s': expected %s, got %s", field, want, type_name(o->type));
}

static int key_is(const msgpack_object *k, const char *name) {
    size_t n = strlen(name);
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n && memcmp(k->via.str.ptr, name, n) == 0;
}

/* Copy a string object into a fresh NUL-terminated buffer.  no_nul: refuse
 * embedded NUL bytes (ids and names become Redis keys and C strings). */
static llmq_status read_str(const msgpack_object *o, const char *field, size_t max, int no_nul, char **out,
                            size_t *out_len, llmq_err *err) {
    if (o->type != MSGPACK_OBJECT_STR) return wrong_type(err, field, "a string", o);
    size_t n = o->via.str.size;
    if (max && n > max) return llmq_err_set(err, LLMQ_ERR_INVALID, "field '%s': longer than %zu bytes", field, max);
    if (no_nul && memchr(o->via.str.ptr, '\0', n))
        return llmq_err_set(err, LLMQ_ERR_INVALID, "field '%s': contains a NUL byte", field);
    char *s = malloc(n + 1);
    if (!s) return llmq_err_set(err, LLMQ_ERR_NOMEM, "field '%s': out of memory", field);
    if (n) memcpy(s, o->via.str.ptr, n);
    s[n] = '\0';
    free(*out);
    *out = s;
    if (out_len) *out_len = n;
    return LLMQ_OK;
}

static llmq_status read_int(const msgpack_object *o, const char *field, int64_t lo, int64_t hi, int64_t *out,
                            llmq_err *err) {
    int64_t v;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->via.u64 > (uint64_t)INT64_MAX) goto range;
        v = (int64_t)o->via.u64;
    } else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        v = o->via.i64;
    } else {
        return wrong_type(err, field, "an integer", o);
    }
    if (v < lo || v > hi) goto range;
    *out = v;
    return LLMQ_OK;
range:
    return llmq_err_set(err, LLMQ_ERR_INVALID, "field '%s': integer out of range [%lld, %lld]", field, (long long)lo,
                        (long long)hi);
}

static llmq_status read_num(const msgpack_object *o, const char *field, double *out, llmq_err *err) {
    switch (o->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: *out = o->via.f64; break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: *out = (double)o->via.u64; break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: *out = (double)o->via.i64; break;
    default: return wrong_type(err, field, "a number", o);
    }
    if (!isfinite(*out)) return llmq_err_set(err, LLMQ_ERR_INVALID, "field '%s': not a finite number", field);
    return LLMQ_OK;
}

static llmq_status read_bool(const msgpack_object *o, const char *field, bool *out, llmq_err *err) {
    if (o->type != MSGPACK_OBJECT_BOOLEAN) return wrong_type(err, field, "a boolean", o);
    *out = o->via.boolean;
    return LLMQ_OK;
}

/* An array of token ids (each in [lo, INT32_MAX]). */
static llmq_status read_ids(const msgpack_object *o, const char *field, size_t max, int32_t lo, int32_t **out,
                            size_t *n_out, llmq_err *err) {
    if (o->type != MSGPACK_OBJECT_ARRAY) return wrong_type(err, field, "an array of integers", o);
    size_t n = o->via.array.size;
    if (n > max) return llmq_err_set(err, LLMQ_ERR_INVALID, "field '%s': more than %zu entries", field, max);
    int32_t *ids = n ? malloc(n * sizeof *ids) : NULL;
    if (n && !ids) return llmq_err_set(err, LLMQ_ERR_NOMEM, "field '%s': out of memory", field);
    for (size_t i = 0; i < n; i++) {
        const msgpack_object *e = &o->via.array.ptr[i];
        int64_t v = 0;
        if (e->type != MSGPACK_OBJECT_POSITIVE_INTEGER && e->type != MSGPACK_OBJECT_NEGATIVE_INTEGER) {
            free(ids);
            return llmq_err_set(err, LLMQ_ERR_INVALID, "field '%s': entry %zu: expected an integer, got %s", field,
                                i, type_name(e->type));
        }
        if (read_int(e, field, lo, INT32_MAX, &v, err) != LLMQ_OK) {
            free(ids);
            return llmq_err_set(err, LLMQ_ERR_INVALID, "field '%s': entry %zu out of range [%d, %d]", field, i,
                                (int)lo, INT32_MAX);
        }
        ids[i] = (int32_t)v;
    }
    free(*out);
    *out = ids;
    *n_out = n;
    return LLMQ_OK;
}

/* Unpack exactly one msgpack object spanning the whole buffer. */
static llmq_status unpack_whole(msgpack_unpacked *res, const void *buf, size_t len, const char *what,
                                llmq_err *err) {
    if (!buf || len == 0) return llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: empty message", what);
    if (len > PROTO_MAX_MESSAGE_BYTES)
        return llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: %zu bytes, more than the %d a message may have", what, len,
                            PROTO_MAX_MESSAGE_BYTES);
    size_t off = 0;
    msgpack_unpack_return rc = msgpack_unpack_next(res, buf, len, &off);
    switch (rc) {
    case MSGPACK_UNPACK_SUCCESS:
    case MSGPACK_UNPACK_EXTRA_BYTES: break;
    case MSGPACK_UNPACK_CONTINUE: return llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: truncated msgpack", what);
    case MSGPACK_UNPACK_NOMEM_ERROR:
        return llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: msgpack declares more elements than fit in memory", what);
    default: return llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: not valid msgpack", what);
    }
    if (off != len)
        return llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: %zu trailing bytes after the msgpack map", what, len - off);
    if (res->data.type != MSGPACK_OBJECT_MAP)
        return llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: expected a msgpack map, got %s", what,
                            type_name(res->data.type));
    return LLMQ_OK;
}

/* ================================================================ requests */

void proto_request_init(proto_request *r) {
    memset(r, 0, sizeof *r);
    r->v = PROTO_VERSION;
    r->kind = PROTO_PROMPT_NONE;
    r->max_tokens = PROTO_UNSET;
    r->temperature = NAN;
    r->top_p = NAN;
    r->top_k = PROTO_UNSET;
    r->min_p = NAN;
    r->repetition_penalty = NAN;
    r->presence_penalty = NAN;
    r->frequency_penalty = NAN;
    r->logprobs = PROTO_UNSET;
    r->op = PROTO_OP_GENERATE;
    r->add_special_tokens = PROTO_UNSET;
}

static const char *const op_names[] = {
    [PROTO_OP_GENERATE] = "generate", [PROTO_OP_TOKENIZE] = "tokenize", [PROTO_OP_DETOKENIZE] = "detokenize"};

const char *proto_op_name(proto_op op) {
    if ((unsigned)op >= sizeof op_names / sizeof op_names[0]) return op_names[PROTO_OP_GENERATE];
    return op_names[op];
}

/* `op`: one of op_names.  An unknown operation is an error rather than a
 * generation: a client that asked for something else must not get text. */
static llmq_status read_op(const msgpack_object *v, proto_op *op, llmq_err *err) {
    if (v->type != MSGPACK_OBJECT_STR) return wrong_type(err, "op", "a string", v);
    for (size_t i = 0; i < sizeof op_names / sizeof op_names[0]; i++)
        if (strlen(op_names[i]) == v->via.str.size && !memcmp(op_names[i], v->via.str.ptr, v->via.str.size)) {
            *op = (proto_op)i;
            return LLMQ_OK;
        }
    return llmq_err_set(err, LLMQ_ERR_INVALID, "field 'op': unknown operation '%.*s' (generate, tokenize, detokenize)",
                        v->via.str.size > 32 ? 32 : (int)v->via.str.size, v->via.str.ptr);
}

static const char *const guide_names[] = {
    [PROTO_GUIDE_NONE] = "none", [PROTO_GUIDE_JSON_SCHEMA] = "json_schema", [PROTO_GUIDE_REGEX] = "regex",
    [PROTO_GUIDE_LARK] = "lark"};

const char *proto_guide_type_name(proto_guide_type t) {
    if ((unsigned)t >= sizeof guide_names / sizeof guide_names[0]) return guide_names[PROTO_GUIDE_NONE];
    return guide_names[t];
}

/* `guide`: {type, data}, both required.  An unknown type is an error: a
 * client that asked for a constraint must not get unconstrained text. */
static llmq_status read_guide(proto_request *r, const msgpack_object *o, llmq_err *err) {
    if (o->type != MSGPACK_OBJECT_MAP) return wrong_type(err, "guide", "a map {type, data}", o);
    proto_guide_type t = PROTO_GUIDE_NONE;
    char *data = NULL;
    llmq_status st = LLMQ_OK;
    for (uint32_t i = 0; i < o->via.map.size && st == LLMQ_OK; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
        if (key_is(k, "type")) {
            if (v->type != MSGPACK_OBJECT_STR) {
                st = wrong_type(err, "guide.type", "a string", v);
                break;
            }
            t = PROTO_GUIDE_NONE;
            for (size_t j = 1; j < sizeof guide_names / sizeof guide_names[0]; j++)
                if (strlen(guide_names[j]) == v->via.str.size &&
                    !memcmp(guide_names[j], v->via.str.ptr, v->via.str.size))
                    t = (proto_guide_type)j;
            if (t == PROTO_GUIDE_NONE)
                st = llmq_err_set(err, LLMQ_ERR_INVALID,
                                  "field 'guide.type': unknown constraint '%.*s' (json_schema, regex, lark)",
                                  v->via.str.size > 32 ? 32 : (int)v->via.str.size, v->via.str.ptr);
        } else if (key_is(k, "data")) {
            st = read_str(v, "guide.data", PROTO_MAX_GUIDE_BYTES, 1, &data, NULL, err);
        }
    }
    if (st == LLMQ_OK && (t == PROTO_GUIDE_NONE || !data))
        st = llmq_err_set(err, LLMQ_ERR_INVALID, "field 'guide': needs 'type' and 'data'");
    if (st != LLMQ_OK) {
        free(data);
        return st;
    }
    r->guide_type = t;
    r->guide = data;
    return LLMQ_OK;
}

static void free_messages(proto_message *m, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(m[i].role);
        free(m[i].content);
        free(m[i].tool_calls);
    }
    free(m);
}

void proto_request_deinit(proto_request *r) {
    if (!r) return;
    free(r->id);
    free(r->model);
    free(r->prompt);
    free_messages(r->messages, r->n_messages);
    free(r->prompt_ids);
    for (size_t i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->stop);
    free(r->stop_token_ids);
    free(r->guide);
    free(r->cache_salt);
    free(r->tools);
    free(r->tool_choice);
    free(r->tool_name);
    proto_request_init(r);
}

static llmq_status read_messages(proto_request *r, const msgpack_object *o, llmq_err *err) {
    if (o->type != MSGPACK_OBJECT_ARRAY) return wrong_type(err, "messages", "an array of maps", o);
    size_t n = o->via.array.size;
    if (n == 0) return llmq_err_set(err, LLMQ_ERR_INVALID, "field 'messages': empty");
    if (n > PROTO_MAX_MESSAGES)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "field 'messages': more than %d entries", PROTO_MAX_MESSAGES);
    proto_message *m = calloc(n, sizeof *m);
    if (!m) return llmq_err_set(err, LLMQ_ERR_NOMEM, "field 'messages': out of memory");
    for (size_t i = 0; i < n; i++) {
        const msgpack_object *e = &o->via.array.ptr[i];
        if (e->type != MSGPACK_OBJECT_MAP) {
            free_messages(m, n);
            return llmq_err_set(err, LLMQ_ERR_INVALID, "field 'messages': entry %zu: expected a map, got %s", i,
                                type_name(e->type));
        }
        for (uint32_t j = 0; j < e->via.map.size; j++) {
            const msgpack_object *k = &e->via.map.ptr[j].key, *v = &e->via.map.ptr[j].val;
            llmq_status st = LLMQ_OK;
            if (key_is(k, "role")) st = read_str(v, "messages.role", PROTO_MAX_ROLE_LEN, 1, &m[i].role, NULL, err);
            else if (key_is(k, "content"))
                st = read_str(v, "messages.content", PROTO_MAX_PROMPT_BYTES, 0, &m[i].content, NULL, err);
            else if (key_is(k, "tool_calls") && !m[i].tool_calls)
                st = read_str(v, "messages.tool_calls", PROTO_MAX_GUIDE_BYTES, 1, &m[i].tool_calls, NULL, err);
            if (st != LLMQ_OK) {
                llmq_err_prefix(err, "entry %zu: ", i);
                free_messages(m, n);
                return st;
            }
        }
        if (!m[i].role || !m[i].content) {
            free_messages(m, n);
            return llmq_err_set(err, LLMQ_ERR_INVALID, "field 'messages': entry %zu: needs 'role' and 'content'",
                                i);
        }
    }
    r->messages = m;
    r->n_messages = n;
    return LLMQ_OK;
}

static llmq_status read_stop(proto_request *r, const msgpack_object *o, llmq_err *err) {
    const msgpack_object *items = o;
    size_t n = 1;
    if (o->type == MSGPACK_OBJECT_ARRAY) {
        items = o->via.array.ptr;
        n = o->via.array.size;
    } else if (o->type != MSGPACK_OBJECT_STR) {
        return wrong_type(err, "stop", "a string or an array of strings", o);
    }
    if (n > PROTO_MAX_STOP)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "field 'stop': more than %d entries", PROTO_MAX_STOP);
    char **s = n ? calloc(n, sizeof *s) : NULL;
    if (n && !s) return llmq_err_set(err, LLMQ_ERR_NOMEM, "field 'stop': out of memory");
    for (size_t i = 0; i < n; i++) {
        size_t len = 0;
        llmq_status st = read_str(&items[i], "stop", PROTO_MAX_STOP_LEN, 0, &s[i], &len, err);
        if (st == LLMQ_OK && len == 0) st = llmq_err_set(err, LLMQ_ERR_INVALID, "field 'stop': empty string");
        if (st != LLMQ_OK) {
            for (size_t j = 0; j < n; j++) free(s[j]);
            free(s);
            return st;
        }
    }
    r->stop = s;
    r->n_stop = n;
    return LLMQ_OK;
}

/* Dispatch one key of the request map.  Unknown keys are ignored. */
static llmq_status request_field(proto_request *r, const msgpack_object *k, const msgpack_object *v, int *n_prompts,
                                 llmq_err *err) {
    int64_t i64;
    if (v->type == MSGPACK_OBJECT_NIL) return LLMQ_OK; /* nil = not given */
    if (key_is(k, "v")) {
        llmq_status st = read_int(v, "v", 0, INT32_MAX, &i64, err);
        if (st == LLMQ_OK) r->v = (int)i64;
        return st;
    }
    if (key_is(k, "id")) return read_str(v, "id", PROTO_MAX_ID_LEN, 1, &r->id, NULL, err);
    if (key_is(k, "model")) return read_str(v, "model", PROTO_MAX_MODEL_LEN, 1, &r->model, NULL, err);
    if (key_is(k, "prompt")) {
        ++*n_prompts;
        r->kind = PROTO_PROMPT_TEXT;
        return read_str(v, "prompt", PROTO_MAX_PROMPT_BYTES, 0, &r->prompt, NULL, err);
    }
    if (key_is(k, "messages")) {
        ++*n_prompts;
        r->kind = PROTO_PROMPT_MESSAGES;
        if (r->messages) return LLMQ_OK; /* duplicate key: counted as a second prompt above */
        return read_messages(r, v, err);
    }
    if (key_is(k, "prompt_ids")) {
        ++*n_prompts;
        r->kind = PROTO_PROMPT_IDS;
        return read_ids(v, "prompt_ids", PROTO_MAX_PROMPT_IDS, 0, &r->prompt_ids, &r->n_prompt_ids, err);
    }
#define INT_FIELD(name, lo, hi)                                                                                   \
    if (key_is(k, #name)) {                                                                                       \
        llmq_status st = read_int(v, #name, lo, hi, &i64, err);                                                   \
        if (st == LLMQ_OK) r->name = (int32_t)i64;                                                                \
        return st;                                                                                                \
    }
#define NUM_FIELD(name)                                                                                           \
    if (key_is(k, #name)) return read_num(v, #name, &r->name, err);
    INT_FIELD(max_tokens, INT32_MIN, INT32_MAX)
    INT_FIELD(top_k, INT32_MIN, INT32_MAX)
    INT_FIELD(logprobs, INT32_MIN, INT32_MAX)
    INT_FIELD(priority, INT32_MIN, INT32_MAX)
    NUM_FIELD(temperature)
    NUM_FIELD(top_p)
    NUM_FIELD(min_p)
    NUM_FIELD(repetition_penalty)
    NUM_FIELD(presence_penalty)
    NUM_FIELD(frequency_penalty)
#undef INT_FIELD
#undef NUM_FIELD
    if (key_is(k, "seed")) {
        if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
            r->seed = v->via.u64;
            r->has_seed = true;
            return LLMQ_OK;
        }
        if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) /* two's complement, like OpenAI's int64 seeds */
        {
            r->seed = (uint64_t)v->via.i64;
            r->has_seed = true;
            return LLMQ_OK;
        }
        return wrong_type(err, "seed", "an integer", v);
    }
    if (key_is(k, "deadline_ms")) return read_int(v, "deadline_ms", 0, INT64_MAX, &r->deadline_ms, err);
    if (key_is(k, "ignore_eos")) return read_bool(v, "ignore_eos", &r->ignore_eos, err);
    if (key_is(k, "op")) return read_op(v, &r->op, err);
    if (key_is(k, "add_special_tokens")) {
        bool b = false;
        llmq_status st = read_bool(v, "add_special_tokens", &b, err);
        if (st == LLMQ_OK) r->add_special_tokens = b;
        return st;
    }
    if (key_is(k, "stop")) {
        if (r->stop) return llmq_err_set(err, LLMQ_ERR_INVALID, "field 'stop': given twice");
        return read_stop(r, v, err);
    }
    if (key_is(k, "stop_token_ids"))
        return read_ids(v, "stop_token_ids", PROTO_MAX_STOP_IDS, 0, &r->stop_token_ids, &r->n_stop_token_ids, err);
    if (key_is(k, "guide")) {
        if (r->guide) return llmq_err_set(err, LLMQ_ERR_INVALID, "field 'guide': given twice");
        return read_guide(r, v, err);
    }
    if (key_is(k, "cache_salt")) {
        if (r->cache_salt) return llmq_err_set(err, LLMQ_ERR_INVALID, "field 'cache_salt': given twice");
        return read_str(v, "cache_salt", PROTO_MAX_CACHE_SALT, 1, &r->cache_salt, NULL, err);
    }
    if (key_is(k, "tools")) {
        if (r->tools) return llmq_err_set(err, LLMQ_ERR_INVALID, "field 'tools': given twice");
        return read_str(v, "tools", PROTO_MAX_GUIDE_BYTES, 1, &r->tools, NULL, err);
    }
    if (key_is(k, "tool_choice")) {
        if (r->tool_choice) return llmq_err_set(err, LLMQ_ERR_INVALID, "field 'tool_choice': given twice");
        llmq_status st = read_str(v, "tool_choice", 16, 1, &r->tool_choice, NULL, err);
        if (!st && strcmp(r->tool_choice, "auto") && strcmp(r->tool_choice, "required"))
            st = llmq_err_set(err, LLMQ_ERR_INVALID, "field 'tool_choice': must be auto or required");
        return st;
    }
    if (key_is(k, "tool_name")) {
        if (r->tool_name) return llmq_err_set(err, LLMQ_ERR_INVALID, "field 'tool_name': given twice");
        return read_str(v, "tool_name", PROTO_MAX_ROLE_LEN, 1, &r->tool_name, NULL, err);
    }
    return LLMQ_OK;
}

llmq_status proto_request_decode(proto_request *r, const void *buf, size_t len, llmq_err *err) {
    proto_request_init(r);
    msgpack_unpacked res;
    msgpack_unpacked_init(&res);
    llmq_status st = unpack_whole(&res, buf, len, "request", err);
    int n_prompts = 0;
    if (st == LLMQ_OK) {
        const msgpack_object_map *m = &res.data.via.map;
        for (uint32_t i = 0; i < m->size && st == LLMQ_OK; i++)
            st = request_field(r, &m->ptr[i].key, &m->ptr[i].val, &n_prompts, err);
    }
    msgpack_unpacked_destroy(&res);
    if (st == LLMQ_OK && r->v != PROTO_VERSION)
        st = llmq_err_set(err, LLMQ_ERR_UNSUPPORTED, "field 'v': protocol version %d is not supported (this is %d)",
                          r->v, PROTO_VERSION);
    if (st == LLMQ_OK && n_prompts == 0)
        st = llmq_err_set(err, LLMQ_ERR_INVALID, "request has none of 'prompt', 'messages', 'prompt_ids'");
    if (st == LLMQ_OK && n_prompts > 1)
        st = llmq_err_set(err, LLMQ_ERR_INVALID, "request has more than one of 'prompt', 'messages', 'prompt_ids'");
    if (st != LLMQ_OK) proto_request_deinit(r);
    return st;
}

llmq_status proto_request_validate(const proto_request *r, llmq_err *err) {
#define BAD(...) return llmq_err_set(err, LLMQ_ERR_INVALID, __VA_ARGS__)
    if (r->v != PROTO_VERSION) BAD("v must be %d", PROTO_VERSION);
    if (!r->model || !r->model[0]) BAD("model is required");
    if (strlen(r->model) > PROTO_MAX_MODEL_LEN) BAD("model must be at most %d bytes", PROTO_MAX_MODEL_LEN);
    if (r->id && strlen(r->id) > PROTO_MAX_ID_LEN) BAD("id must be at most %d bytes", PROTO_MAX_ID_LEN);
    size_t text = 0;
    switch (r->kind) {
    case PROTO_PROMPT_TEXT:
        if (!r->prompt) BAD("prompt is required");
        if (strlen(r->prompt) > PROTO_MAX_PROMPT_BYTES) BAD("prompt is longer than %d bytes", PROTO_MAX_PROMPT_BYTES);
        break;
    case PROTO_PROMPT_MESSAGES:
        if (r->n_messages == 0) BAD("messages must not be empty");
        if (r->n_messages > PROTO_MAX_MESSAGES) BAD("messages has more than %d entries", PROTO_MAX_MESSAGES);
        for (size_t i = 0; i < r->n_messages; i++) {
            if (!r->messages[i].role || !r->messages[i].content) BAD("messages need a role and a content");
            if (strlen(r->messages[i].role) > PROTO_MAX_ROLE_LEN)
                BAD("messages roles must be at most %d bytes", PROTO_MAX_ROLE_LEN);
            text += strlen(r->messages[i].content);
        }
        if (text > PROTO_MAX_PROMPT_BYTES) BAD("messages contents are longer than %d bytes", PROTO_MAX_PROMPT_BYTES);
        break;
    case PROTO_PROMPT_IDS:
        if (r->n_prompt_ids == 0 && r->op != PROTO_OP_DETOKENIZE) BAD("prompt_ids must not be empty");
        if (r->n_prompt_ids > PROTO_MAX_PROMPT_IDS) BAD("prompt_ids has more than %d entries", PROTO_MAX_PROMPT_IDS);
        break;
    default: BAD("one of prompt, messages, prompt_ids is required");
    }
    if (r->max_tokens != PROTO_UNSET && r->max_tokens < 1) BAD("max_tokens must be at least 1");
    if (!isnan(r->temperature) && (r->temperature < 0 || r->temperature > 2))
        BAD("temperature must be between 0 and 2");
    if (!isnan(r->top_p) && (r->top_p <= 0 || r->top_p > 1)) BAD("top_p must be in (0, 1]");
    if (r->top_k != PROTO_UNSET && r->top_k < 0) BAD("top_k must be >= 0 (0 disables it)");
    if (!isnan(r->min_p) && (r->min_p < 0 || r->min_p > 1)) BAD("min_p must be between 0 and 1");
    if (!isnan(r->repetition_penalty) && (r->repetition_penalty <= 0 || r->repetition_penalty > 10))
        BAD("repetition_penalty must be in (0, 10]");
    if (!isnan(r->presence_penalty) && (r->presence_penalty < -2 || r->presence_penalty > 2))
        BAD("presence_penalty must be between -2 and 2");
    if (!isnan(r->frequency_penalty) && (r->frequency_penalty < -2 || r->frequency_penalty > 2))
        BAD("frequency_penalty must be between -2 and 2");
    if (r->logprobs != PROTO_UNSET && (r->logprobs < 0 || r->logprobs > PROTO_MAX_LOGPROBS))
        BAD("logprobs must be between 0 and %d", PROTO_MAX_LOGPROBS);
    if (r->n_stop > PROTO_MAX_STOP) BAD("stop has more than %d entries", PROTO_MAX_STOP);
    for (size_t i = 0; i < r->n_stop; i++) {
        if (!r->stop[i] || !r->stop[i][0]) BAD("stop entries must be non-empty strings");
        if (strlen(r->stop[i]) > PROTO_MAX_STOP_LEN) BAD("stop entries must be at most %d bytes", PROTO_MAX_STOP_LEN);
    }
    if (r->n_stop_token_ids > PROTO_MAX_STOP_IDS) BAD("stop_token_ids has more than %d entries", PROTO_MAX_STOP_IDS);
    for (size_t i = 0; i < r->n_stop_token_ids; i++)
        if (r->stop_token_ids[i] < 0) BAD("stop_token_ids must be >= 0");
    for (size_t i = 0; i < r->n_prompt_ids; i++)
        if (r->prompt_ids[i] < 0) BAD("prompt_ids must be >= 0");
    if (r->deadline_ms < 0) BAD("deadline_ms must be a Unix time in milliseconds");
    if ((unsigned)r->op > PROTO_OP_DETOKENIZE) BAD("op must be generate, tokenize or detokenize");
    if (r->op == PROTO_OP_TOKENIZE && r->kind == PROTO_PROMPT_IDS) BAD("op tokenize takes prompt or messages");
    if (r->op == PROTO_OP_DETOKENIZE && r->kind != PROTO_PROMPT_IDS) BAD("op detokenize takes prompt_ids");
    if (r->add_special_tokens != PROTO_UNSET && r->add_special_tokens != 0 && r->add_special_tokens != 1)
        BAD("add_special_tokens must be a boolean");
    if (r->guide_type != PROTO_GUIDE_NONE) {
        if ((unsigned)r->guide_type > PROTO_GUIDE_LARK) BAD("guide type must be json_schema, regex or lark");
        if (!r->guide) BAD("guide needs its data");
        if (strlen(r->guide) > PROTO_MAX_GUIDE_BYTES) BAD("guide data is longer than %d bytes", PROTO_MAX_GUIDE_BYTES);
        if (r->op != PROTO_OP_GENERATE) BAD("guide is only for op generate");
    }
    if (r->cache_salt && strlen(r->cache_salt) > PROTO_MAX_CACHE_SALT)
        BAD("cache_salt is longer than %d bytes", PROTO_MAX_CACHE_SALT);
    if (r->tools && strlen(r->tools) > PROTO_MAX_GUIDE_BYTES) BAD("tools is longer than %d bytes", PROTO_MAX_GUIDE_BYTES);
    if ((r->tool_choice || r->tool_name) && !r->tools) BAD("tool_choice and tool_name need tools");
    if (r->tools && r->kind != PROTO_PROMPT_MESSAGES) BAD("tools are only for messages");
    return LLMQ_OK;
#undef BAD
}

/* ================================================================ encoding */

static int pack_cstr(msgpack_packer *pk, const char *s) {
    size_t n = strlen(s);
    return msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, s, n);
}

static int pack_strn(msgpack_packer *pk, const char *s, size_t n) {
    return msgpack_pack_str(pk, n) || (n && msgpack_pack_str_body(pk, s, n));
}

static int pack_ids(msgpack_packer *pk, const int32_t *ids, size_t n) {
    if (msgpack_pack_array(pk, n)) return -1;
    for (size_t i = 0; i < n; i++)
        if (msgpack_pack_int64(pk, ids[i])) return -1;
    return 0;
}

llmq_status proto_request_encode(const proto_request *r, proto_buf *out, llmq_err *err) {
    if (r->kind == PROTO_PROMPT_NONE)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "request has none of 'prompt', 'messages', 'prompt_ids'");
    size_t n = 2; /* v + the prompt */
    n += !!r->id + !!r->model;
    n += r->max_tokens != PROTO_UNSET;
    n += !isnan(r->temperature) + !isnan(r->top_p) + !isnan(r->min_p);
    n += r->top_k != PROTO_UNSET;
    n += r->has_seed;
    n += r->n_stop > 0;
    n += r->n_stop_token_ids > 0;
    n += r->ignore_eos;
    n += !isnan(r->repetition_penalty) + !isnan(r->presence_penalty) + !isnan(r->frequency_penalty);
    n += r->logprobs != PROTO_UNSET;
    n += r->deadline_ms > 0;
    n += r->priority != 0;
    n += r->op != PROTO_OP_GENERATE;
    n += r->add_special_tokens != PROTO_UNSET;
    n += r->guide_type != PROTO_GUIDE_NONE;
    n += !!r->cache_salt;
    n += !!r->tools + !!r->tool_choice + !!r->tool_name;

    size_t start = out->len;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    int e = msgpack_pack_map(&pk, n);
    e = e || pack_cstr(&pk, "v") || msgpack_pack_int64(&pk, r->v);
    if (r->id) e = e || pack_cstr(&pk, "id") || pack_cstr(&pk, r->id);
    if (r->model) e = e || pack_cstr(&pk, "model") || pack_cstr(&pk, r->model);
    switch (r->kind) {
    case PROTO_PROMPT_TEXT: e = e || pack_cstr(&pk, "prompt") || pack_cstr(&pk, r->prompt ? r->prompt : ""); break;
    case PROTO_PROMPT_MESSAGES:
        e = e || pack_cstr(&pk, "messages") || msgpack_pack_array(&pk, r->n_messages);
        for (size_t i = 0; i < r->n_messages && !e; i++)
            e = msgpack_pack_map(&pk, 2 + !!r->messages[i].tool_calls) || pack_cstr(&pk, "role") ||
                pack_cstr(&pk, r->messages[i].role ? r->messages[i].role : "user") || pack_cstr(&pk, "content") ||
                pack_cstr(&pk, r->messages[i].content ? r->messages[i].content : "") ||
                (r->messages[i].tool_calls &&
                 (pack_cstr(&pk, "tool_calls") || pack_cstr(&pk, r->messages[i].tool_calls)));
        break;
    case PROTO_PROMPT_IDS:
        e = e || pack_cstr(&pk, "prompt_ids") || pack_ids(&pk, r->prompt_ids, r->n_prompt_ids);
        break;
    default: break;
    }
    if (r->max_tokens != PROTO_UNSET) e = e || pack_cstr(&pk, "max_tokens") || msgpack_pack_int64(&pk, r->max_tokens);
    if (!isnan(r->temperature)) e = e || pack_cstr(&pk, "temperature") || msgpack_pack_double(&pk, r->temperature);
    if (!isnan(r->top_p)) e = e || pack_cstr(&pk, "top_p") || msgpack_pack_double(&pk, r->top_p);
    if (r->top_k != PROTO_UNSET) e = e || pack_cstr(&pk, "top_k") || msgpack_pack_int64(&pk, r->top_k);
    if (!isnan(r->min_p)) e = e || pack_cstr(&pk, "min_p") || msgpack_pack_double(&pk, r->min_p);
    if (r->has_seed) e = e || pack_cstr(&pk, "seed") || msgpack_pack_uint64(&pk, r->seed);
    if (r->n_stop) {
        e = e || pack_cstr(&pk, "stop") || msgpack_pack_array(&pk, r->n_stop);
        for (size_t i = 0; i < r->n_stop && !e; i++) e = pack_cstr(&pk, r->stop[i] ? r->stop[i] : "");
    }
    if (r->n_stop_token_ids)
        e = e || pack_cstr(&pk, "stop_token_ids") || pack_ids(&pk, r->stop_token_ids, r->n_stop_token_ids);
    if (r->ignore_eos) e = e || pack_cstr(&pk, "ignore_eos") || msgpack_pack_true(&pk);
    if (!isnan(r->repetition_penalty))
        e = e || pack_cstr(&pk, "repetition_penalty") || msgpack_pack_double(&pk, r->repetition_penalty);
    if (!isnan(r->presence_penalty))
        e = e || pack_cstr(&pk, "presence_penalty") || msgpack_pack_double(&pk, r->presence_penalty);
    if (!isnan(r->frequency_penalty))
        e = e || pack_cstr(&pk, "frequency_penalty") || msgpack_pack_double(&pk, r->frequency_penalty);
    if (r->logprobs != PROTO_UNSET) e = e || pack_cstr(&pk, "logprobs") || msgpack_pack_int64(&pk, r->logprobs);
    if (r->deadline_ms > 0) e = e || pack_cstr(&pk, "deadline_ms") || msgpack_pack_int64(&pk, r->deadline_ms);
    if (r->priority != 0) e = e || pack_cstr(&pk, "priority") || msgpack_pack_int64(&pk, r->priority);
    if (r->op != PROTO_OP_GENERATE) e = e || pack_cstr(&pk, "op") || pack_cstr(&pk, proto_op_name(r->op));
    if (r->add_special_tokens != PROTO_UNSET)
        e = e || pack_cstr(&pk, "add_special_tokens") ||
            (r->add_special_tokens ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk));
    if (r->guide_type != PROTO_GUIDE_NONE)
        e = e || pack_cstr(&pk, "guide") || msgpack_pack_map(&pk, 2) || pack_cstr(&pk, "type") ||
            pack_cstr(&pk, proto_guide_type_name(r->guide_type)) || pack_cstr(&pk, "data") ||
            pack_cstr(&pk, r->guide ? r->guide : "");
    if (r->cache_salt) e = e || pack_cstr(&pk, "cache_salt") || pack_cstr(&pk, r->cache_salt);
    if (r->tools) e = e || pack_cstr(&pk, "tools") || pack_cstr(&pk, r->tools);
    if (r->tool_choice) e = e || pack_cstr(&pk, "tool_choice") || pack_cstr(&pk, r->tool_choice);
    if (r->tool_name) e = e || pack_cstr(&pk, "tool_name") || pack_cstr(&pk, r->tool_name);
    if (e) {
        out->len = start;
        return llmq_err_set(err, LLMQ_ERR_NOMEM, "encoding request: out of memory");
    }
    return LLMQ_OK;
}

/* ================================================================ chunks */

void proto_chunk_init(proto_chunk *c) { memset(c, 0, sizeof *c); }

void proto_chunk_deinit(proto_chunk *c) {
    if (!c) return;
    free(c->text);
    free(c->ids);
    free(c->finish);
    free(c->error);
    free(c->code);
    free(c->lp);
    free(c->lp_top_pool);
    free(c->lp_bytes_pool);
    proto_chunk_init(c);
}

/* ---------------------------------------------------------------- lp */

/* A logprob: any number but NaN (-inf is a token the model gives no chance). */
static int lp_number(const msgpack_object *o, double *out) {
    switch (o->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: *out = o->via.f64; break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: *out = (double)o->via.u64; break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: *out = (double)o->via.i64; break;
    default: return -1;
    }
    return isnan(*out) ? -1 : 0;
}

/* A text piece: bin (the usual), str, or nil (unknown).  Its size, or -1. */
static int64_t lp_bytes_len(const msgpack_object *o) {
    if (o->type == MSGPACK_OBJECT_NIL) return 0;
    if (o->type == MSGPACK_OBJECT_BIN) return o->via.bin.size;
    if (o->type == MSGPACK_OBJECT_STR) return o->via.str.size;
    return -1;
}

/* Fill t from an [id, logprob, bytes] triple (id < 0: the sampled token's
 * [logprob, bytes, top], whose id is the chunk's ids[i], filled in once both
 * keys are read), copying the bytes to *pool.  The shape was checked by
 * lp_check. */
static void lp_token(proto_token_lp *t, int32_t id, const msgpack_object *logprob, const msgpack_object *bytes,
                     char **pool) {
    t->id = id;
    lp_number(logprob, &t->logprob);
    t->bytes = NULL;
    t->n_bytes = 0;
    if (bytes->type == MSGPACK_OBJECT_NIL) return;
    const char *p = bytes->type == MSGPACK_OBJECT_BIN ? bytes->via.bin.ptr : bytes->via.str.ptr;
    uint32_t n = bytes->type == MSGPACK_OBJECT_BIN ? bytes->via.bin.size : bytes->via.str.size;
    if (n == 0) { /* known to be empty, which is not unknown (NULL) */
        t->bytes = "";
        return;
    }
    memcpy(*pool, p, n);
    t->bytes = *pool;
    t->n_bytes = n;
    *pool += n;
}

/* Check the shape of `lp` before allocating anything: totals of alternatives
 * and piece bytes, or an error naming the first bad entry. */
static llmq_status lp_check(const msgpack_object *o, size_t *n_top, size_t *n_bytes, llmq_err *err) {
#define LP_BAD(...) return llmq_err_set(err, LLMQ_ERR_INVALID, "field 'lp': " __VA_ARGS__)
    if (o->type != MSGPACK_OBJECT_ARRAY) return wrong_type(err, "lp", "an array", o);
    *n_top = *n_bytes = 0;
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        const msgpack_object *e = &o->via.array.ptr[i];
        double x;
        int64_t nb;
        if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 3)
            LP_BAD("entry %u: expected [logprob, bytes, top], got %s", i,
                   e->type == MSGPACK_OBJECT_ARRAY ? "an array of another length" : type_name(e->type));
        const msgpack_object *f = e->via.array.ptr;
        if (lp_number(&f[0], &x)) LP_BAD("entry %u: logprob: expected a number, got %s", i, type_name(f[0].type));
        if ((nb = lp_bytes_len(&f[1])) < 0)
            LP_BAD("entry %u: bytes: expected binary data or nil, got %s", i, type_name(f[1].type));
        if (f[2].type != MSGPACK_OBJECT_ARRAY)
            LP_BAD("entry %u: top: expected an array, got %s", i, type_name(f[2].type));
        if (f[2].via.array.size > PROTO_MAX_LOGPROBS)
            LP_BAD("entry %u: top: more than %d alternatives", i, PROTO_MAX_LOGPROBS);
        *n_bytes += (size_t)nb;
        for (uint32_t k = 0; k < f[2].via.array.size; k++) {
            const msgpack_object *a = &f[2].via.array.ptr[k];
            int64_t id;
            llmq_err ignore;
            if (a->type != MSGPACK_OBJECT_ARRAY || a->via.array.size != 3)
                LP_BAD("entry %u: top %u: expected [id, logprob, bytes], got %s", i, k,
                       a->type == MSGPACK_OBJECT_ARRAY ? "an array of another length" : type_name(a->type));
            const msgpack_object *g = a->via.array.ptr;
            if (read_int(&g[0], "lp", 0, INT32_MAX, &id, &ignore))
                LP_BAD("entry %u: top %u: id: expected an integer in [0, %d]", i, k, INT32_MAX);
            if (lp_number(&g[1], &x))
                LP_BAD("entry %u: top %u: logprob: expected a number, got %s", i, k, type_name(g[1].type));
            if ((nb = lp_bytes_len(&g[2])) < 0)
                LP_BAD("entry %u: top %u: bytes: expected binary data or nil, got %s", i, k, type_name(g[2].type));
            *n_bytes += (size_t)nb;
        }
        *n_top += f[2].via.array.size;
    }
    return LLMQ_OK;
#undef LP_BAD
}

/* Decode `lp` into c: three allocations (entries, alternatives, bytes)
 * whatever the number of tokens. */
static llmq_status read_lp(proto_chunk *c, const msgpack_object *o, size_t *n_lp, llmq_err *err) {
    size_t n_top, n_bytes;
    llmq_status st = lp_check(o, &n_top, &n_bytes, err);
    if (st != LLMQ_OK) return st;
    const size_t n = o->via.array.size;
    free(c->lp);
    free(c->lp_top_pool);
    free(c->lp_bytes_pool);
    c->lp = n ? calloc(n, sizeof *c->lp) : NULL;
    c->lp_top_pool = n_top ? calloc(n_top, sizeof *c->lp_top_pool) : NULL;
    c->lp_bytes_pool = n_bytes ? malloc(n_bytes) : NULL;
    if ((n && !c->lp) || (n_top && !c->lp_top_pool) || (n_bytes && !c->lp_bytes_pool))
        return llmq_err_set(err, LLMQ_ERR_NOMEM, "field 'lp': out of memory");
    proto_token_lp *top = c->lp_top_pool;
    char *bytes = c->lp_bytes_pool;
    for (size_t i = 0; i < n; i++) {
        const msgpack_object *f = o->via.array.ptr[i].via.array.ptr;
        lp_token(&c->lp[i].tok, -1, &f[0], &f[1], &bytes);
        c->lp[i].top = f[2].via.array.size ? top : NULL;
        c->lp[i].n_top = f[2].via.array.size;
        for (uint32_t k = 0; k < f[2].via.array.size; k++) {
            const msgpack_object *g = f[2].via.array.ptr[k].via.array.ptr;
            lp_token(top++, (int32_t)g[0].via.u64, &g[1], &g[2], &bytes);
        }
    }
    c->has_lp = true;
    *n_lp = n;
    return LLMQ_OK;
}

static llmq_status read_usage(proto_chunk *c, const msgpack_object *o, llmq_err *err) {
    if (o->type != MSGPACK_OBJECT_MAP) return wrong_type(err, "usage", "a map", o);
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
        llmq_status st = LLMQ_OK;
        if (key_is(k, "prompt_tokens")) st = read_int(v, "usage.prompt_tokens", 0, INT64_MAX, &c->usage.prompt_tokens, err);
        else if (key_is(k, "completion_tokens"))
            st = read_int(v, "usage.completion_tokens", 0, INT64_MAX, &c->usage.completion_tokens, err);
        else if (key_is(k, "cached_tokens"))
            st = read_int(v, "usage.cached_tokens", 0, INT64_MAX, &c->usage.cached_tokens, err);
        if (st != LLMQ_OK) return st;
    }
    c->has_usage = true;
    return LLMQ_OK;
}

llmq_status proto_chunk_decode(proto_chunk *c, const void *buf, size_t len, llmq_err *err) {
    proto_chunk_init(c);
    msgpack_unpacked res;
    msgpack_unpacked_init(&res);
    llmq_status st = unpack_whole(&res, buf, len, "chunk", err);
    int have_seq = 0;
    size_t n_lp = 0;
    if (st == LLMQ_OK) {
        const msgpack_object_map *m = &res.data.via.map;
        for (uint32_t i = 0; i < m->size && st == LLMQ_OK; i++) {
            const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
            if (v->type == MSGPACK_OBJECT_NIL) continue;
            if (key_is(k, "seq")) {
                st = read_int(v, "seq", 0, INT64_MAX, &c->seq, err);
                have_seq = 1;
            } else if (key_is(k, "text")) {
                st = read_str(v, "text", 0, 0, &c->text, &c->text_len, err);
            } else if (key_is(k, "ids")) {
                st = read_ids(v, "ids", UINT32_MAX, 0, &c->ids, &c->n_ids, err);
            } else if (key_is(k, "finish")) {
                st = read_str(v, "finish", 32, 1, &c->finish, NULL, err);
            } else if (key_is(k, "usage")) {
                st = read_usage(c, v, err);
            } else if (key_is(k, "error")) {
                st = read_str(v, "error", 4096, 0, &c->error, NULL, err);
            } else if (key_is(k, "status")) {
                int64_t x = 0;
                st = read_int(v, "status", 0, 999, &x, err);
                c->error_status = (int32_t)x;
            } else if (key_is(k, "code")) {
                st = read_str(v, "code", 64, 1, &c->code, NULL, err);
            } else if (key_is(k, "max_model_len")) {
                st = read_int(v, "max_model_len", 0, INT64_MAX, &c->max_model_len, err);
            } else if (key_is(k, "lp")) {
                st = read_lp(c, v, &n_lp, err);
            }
        }
    }
    msgpack_unpacked_destroy(&res);
    if (st == LLMQ_OK && !have_seq) st = llmq_err_set(err, LLMQ_ERR_INVALID, "chunk has no 'seq'");
    if (st == LLMQ_OK && c->has_lp && n_lp != c->n_ids)
        st = llmq_err_set(err, LLMQ_ERR_INVALID, "field 'lp': %zu entries for %zu ids (one per id)", n_lp, c->n_ids);
    for (size_t i = 0; st == LLMQ_OK && c->has_lp && i < n_lp; i++) c->lp[i].tok.id = c->ids[i]; /* keys in any order */
    if (st != LLMQ_OK) proto_chunk_deinit(c);
    return st;
}

static int pack_lp_bytes(msgpack_packer *pk, const proto_token_lp *t) {
    if (!t->bytes) return msgpack_pack_nil(pk);
    return msgpack_pack_bin(pk, t->n_bytes) || (t->n_bytes && msgpack_pack_bin_body(pk, t->bytes, t->n_bytes));
}

/* `lp`: [[logprob, bytes, [[id, logprob, bytes], ...]], ...], one per id. */
static int pack_lp(msgpack_packer *pk, const proto_lp *lp, size_t n) {
    if (msgpack_pack_array(pk, n)) return -1;
    for (size_t i = 0; i < n; i++) {
        const proto_lp *e = &lp[i];
        if (msgpack_pack_array(pk, 3) || msgpack_pack_double(pk, e->tok.logprob) || pack_lp_bytes(pk, &e->tok) ||
            msgpack_pack_array(pk, e->n_top))
            return -1;
        for (size_t k = 0; k < e->n_top; k++)
            if (msgpack_pack_array(pk, 3) || msgpack_pack_int64(pk, e->top[k].id) ||
                msgpack_pack_double(pk, e->top[k].logprob) || pack_lp_bytes(pk, &e->top[k]))
                return -1;
    }
    return 0;
}

llmq_status proto_chunk_encode(const proto_chunk *c, proto_buf *out, llmq_err *err) {
    if (c->has_lp && c->n_ids && !c->lp)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "encoding chunk: 'lp' needs one entry per id");
    for (size_t i = 0; c->has_lp && i < c->n_ids; i++)
        if (c->lp[i].n_top > PROTO_MAX_LOGPROBS)
            return llmq_err_set(err, LLMQ_ERR_INVALID, "encoding chunk: 'lp' entry %zu has more than %d alternatives",
                                i, PROTO_MAX_LOGPROBS);
    size_t n = 3 + !!c->finish + c->has_usage + !!c->error + (c->error_status != 0) + !!c->code +
               (c->max_model_len > 0) + c->has_lp;
    size_t start = out->len;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    int e = msgpack_pack_map(&pk, n);
    e = e || pack_cstr(&pk, "seq") || msgpack_pack_int64(&pk, c->seq);
    e = e || pack_cstr(&pk, "text") || pack_strn(&pk, c->text ? c->text : "", c->text ? c->text_len : 0);
    e = e || pack_cstr(&pk, "ids") || pack_ids(&pk, c->ids, c->n_ids);
    if (c->finish) e = e || pack_cstr(&pk, "finish") || pack_cstr(&pk, c->finish);
    if (c->has_usage)
        e = e || pack_cstr(&pk, "usage") || msgpack_pack_map(&pk, c->usage.cached_tokens > 0 ? 3 : 2) ||
            pack_cstr(&pk, "prompt_tokens") || msgpack_pack_int64(&pk, c->usage.prompt_tokens) ||
            pack_cstr(&pk, "completion_tokens") || msgpack_pack_int64(&pk, c->usage.completion_tokens) ||
            (c->usage.cached_tokens > 0 &&
             (pack_cstr(&pk, "cached_tokens") || msgpack_pack_int64(&pk, c->usage.cached_tokens)));
    if (c->error) e = e || pack_cstr(&pk, "error") || pack_cstr(&pk, c->error);
    if (c->error_status) e = e || pack_cstr(&pk, "status") || msgpack_pack_int64(&pk, c->error_status);
    if (c->code) e = e || pack_cstr(&pk, "code") || pack_cstr(&pk, c->code);
    if (c->max_model_len > 0) e = e || pack_cstr(&pk, "max_model_len") || msgpack_pack_int64(&pk, c->max_model_len);
    if (c->has_lp) e = e || pack_cstr(&pk, "lp") || pack_lp(&pk, c->lp, c->n_ids);
    if (e) {
        out->len = start;
        return llmq_err_set(err, LLMQ_ERR_NOMEM, "encoding chunk: out of memory");
    }
    return LLMQ_OK;
}

/* ================================================================ job states */

static const char *const state_names[] = {
    [PROTO_STATE_UNKNOWN] = "unknown",     [PROTO_STATE_QUEUED] = "queued",
    [PROTO_STATE_RUNNING] = "running",     [PROTO_STATE_DONE] = "done",
    [PROTO_STATE_FAILED] = "failed",       [PROTO_STATE_CANCELLED] = "cancelled",
    [PROTO_STATE_EXPIRED] = "expired",
};

const char *proto_job_state_name(proto_job_state s) {
    if ((unsigned)s >= sizeof state_names / sizeof state_names[0]) return "unknown";
    return state_names[s];
}

proto_job_state proto_job_state_parse(const char *s, size_t len) {
    if (!s) return PROTO_STATE_UNKNOWN;
    for (size_t i = 1; i < sizeof state_names / sizeof state_names[0]; i++)
        if (strlen(state_names[i]) == len && memcmp(state_names[i], s, len) == 0) return (proto_job_state)i;
    return PROTO_STATE_UNKNOWN;
}

int proto_job_state_is_final(proto_job_state s) {
    return s == PROTO_STATE_DONE || s == PROTO_STATE_FAILED || s == PROTO_STATE_CANCELLED ||
           s == PROTO_STATE_EXPIRED;
}
