/*
 * chat.c — the built-in chat template families (see chat.h for the formats).
 *
 * Each renderer is the C transcription of its reference Jinja template; where a
 * template trims content (`| trim`, `.strip()`) the trim is Python's str.strip(),
 * whose white space is Unicode White_Space plus U+001C..U+001F.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>
#include <utf8proc.h>

#include "worker/tokenizer/chat.h"

static const struct {
    const char *name;
    chat_family f;
} names[] = {
    {"llama-2", CHAT_LLAMA2}, {"llama2", CHAT_LLAMA2}, {"llama-3", CHAT_LLAMA3}, {"llama3", CHAT_LLAMA3},
    {"mistral", CHAT_MISTRAL}, {"chatml", CHAT_CHATML}, {"zephyr", CHAT_ZEPHYR},
    {"llama-3.1", CHAT_LLAMA31}, {"llama3.1", CHAT_LLAMA31}, {"mistral-v3", CHAT_MISTRAL3},
};

chat_family chat_family_by_name(const char *name) {
    for (size_t i = 0; name && i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(name, names[i].name)) return names[i].f;
    return CHAT_UNKNOWN;
}

const char *chat_family_name(chat_family f) {
    switch (f) {
    case CHAT_LLAMA2: return "llama-2";
    case CHAT_LLAMA3: return "llama-3";
    case CHAT_MISTRAL: return "mistral";
    case CHAT_CHATML: return "chatml";
    case CHAT_ZEPHYR: return "zephyr";
    case CHAT_LLAMA31: return "llama-3.1";
    case CHAT_MISTRAL3: return "mistral-v3";
    case CHAT_UNKNOWN: break;
    }
    return "unknown";
}

const char *chat_family_names(void) {
    return "llama-2, llama-3, llama-3.1, mistral, mistral-v3, chatml, zephyr";
}

chat_family chat_family_detect(const char *j) {
    if (!j) return CHAT_UNKNOWN;
    /* the later revisions first: they keep their predecessors' markers */
    if (strstr(j, "<|start_header_id|>") && strstr(j, "<|eot_id|>") && strstr(j, "Cutting Knowledge Date"))
        return CHAT_LLAMA31;
    if (strstr(j, "<|start_header_id|>") && strstr(j, "<|eot_id|>")) return CHAT_LLAMA3;
    if (strstr(j, "[INST]") && strstr(j, "[AVAILABLE_TOOLS]")) return CHAT_MISTRAL3;
    if (strstr(j, "<|im_start|>") && strstr(j, "<|im_end|>")) return CHAT_CHATML;
    if (strstr(j, "<|user|>") && strstr(j, "<|assistant|>")) return CHAT_ZEPHYR;
    if (strstr(j, "[INST]") && strstr(j, "<<SYS>>")) return CHAT_LLAMA2;
    if (strstr(j, "[INST]") && strstr(j, "[/INST]")) return CHAT_MISTRAL;
    return CHAT_UNKNOWN;
}

static char *dup_or_empty(const char *s) {
    return strdup(s ? s : "");
}

llmq_status chat_template_init(chat_template *ct, chat_family f, const char *bos, const char *eos,
                               const char *default_system) {
    memset(ct, 0, sizeof *ct);
    ct->family = f;
    ct->bos = dup_or_empty(bos);
    ct->eos = dup_or_empty(eos);
    ct->default_system = default_system ? strdup(default_system) : NULL;
    if (!ct->bos || !ct->eos || (default_system && !ct->default_system)) {
        chat_template_deinit(ct);
        return LLMQ_ERR_NOMEM;
    }
    return LLMQ_OK;
}

void chat_template_deinit(chat_template *ct) {
    if (!ct) return;
    free(ct->bos);
    free(ct->eos);
    free(ct->default_system);
    memset(ct, 0, sizeof *ct);
}

/* A chatml template's built-in system message, as Qwen2's
 * {{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }} written
 * for when messages[0] is not a system message ("\n" may be a real newline or a
 * Jinja escape, depending on how the JSON was written).  NULL when there is none. */
static char *chatml_default_system(const char *j) {
    static const char head[] = "'<|im_start|>system";
    if (!strstr(j, "!= 'system'") && !strstr(j, "!= \"system\"")) return NULL;
    const char *p = strstr(j, head);
    if (!p) return NULL;
    p += sizeof head - 1;
    if (*p == '\n') p++;                    /* a newline in the JSON string */
    else if (p[0] == '\\' && p[1] == 'n') p += 2; /* or an escape in the Jinja literal */
    else return NULL;
    const char *end = strstr(p, "<|im_end|>");
    if (!end) return NULL;
    char *out = malloc((size_t)(end - p) + 1);
    if (!out) return NULL;
    size_t k = 0;
    for (const char *s = p; s < end; s++) {
        if (*s == '{' || *s == '\'') { free(out); return NULL; } /* not a plain literal */
        if (*s == '\\' && s + 1 < end) {
            s++;
            out[k++] = *s == 'n' ? '\n' : *s == 't' ? '\t' : *s;
        } else {
            out[k++] = *s;
        }
    }
    out[k] = '\0';
    return out;
}

/* A Jinja template file's text (malloc'd), or NULL when path is not a
 * readable regular file of at most 1 MiB. */
static char *read_template_file(const char *path) {
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size > (1 << 20)) return NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *s = malloc((size_t)sb.st_size + 1);
    size_t n = s ? fread(s, 1, (size_t)sb.st_size, f) : 0;
    fclose(f);
    if (s) s[n] = '\0';
    return s;
}

llmq_status chat_template_from_tokenizer(chat_template *ct, const tokenizer *t, const char *force,
                                         llmq_err *err) {
    const char *jinja = tok_chat_template(t);
    char *file_text = NULL;
    chat_family f;
    chat_source src = CHAT_SRC_MODEL;
    if (force && *force) {
        src = CHAT_SRC_NAME;
        f = chat_family_by_name(force);
        if (f == CHAT_UNKNOWN && (file_text = read_template_file(force))) {
            src = CHAT_SRC_FILE;
            jinja = file_text;
        } else if (f == CHAT_UNKNOWN && (strstr(force, "{%") || strstr(force, "{{"))) {
            src = CHAT_SRC_TEXT;
            jinja = force;
        } else if (f == CHAT_UNKNOWN) {
            return llmq_err_set(err, LLMQ_ERR_INVALID,
                                "unknown chat template '%s': neither a template name (%s) nor a readable file",
                                force, chat_family_names());
        }
        if (src != CHAT_SRC_NAME && (f = chat_family_detect(jinja)) == CHAT_UNKNOWN) {
            free(file_text);
            return llmq_err_set(err, LLMQ_ERR_UNSUPPORTED,
                                "the chat template given is not one llmq knows; choose one of %s "
                                "(--chat-template NAME)", chat_family_names());
        }
    } else if (!jinja) {
        src = CHAT_SRC_DEFAULT;
        f = CHAT_DEFAULT_FAMILY;
    } else if ((f = chat_family_detect(jinja)) == CHAT_UNKNOWN) {
        return llmq_err_set(err, LLMQ_ERR_UNSUPPORTED,
                            "the model's chat_template (tokenizer_config.json) is not one llmq knows; "
                            "the worker needs --chat-template NAME, one of %s", chat_family_names());
    }
    char *sys = f == CHAT_CHATML && jinja ? chatml_default_system(jinja) : NULL;
    llmq_status st = chat_template_init(ct, f, tok_bos_token(t), tok_eos_token(t), sys);
    free(sys);
    free(file_text);
    if (st) return llmq_err_set(err, st, "out of memory");
    ct->source = src;
    return LLMQ_OK;
}

void chat_template_describe(const chat_template *ct, const char *force, char *buf, size_t cap) {
    const char *name = chat_family_name(ct->family);
    switch (ct->source) {
    case CHAT_SRC_MODEL: snprintf(buf, cap, "%s (the model's, from tokenizer_config.json)", name); break;
    case CHAT_SRC_NAME: snprintf(buf, cap, "%s (--chat-template %s)", name, force ? force : name); break;
    case CHAT_SRC_FILE: snprintf(buf, cap, "%s (detected in the file --chat-template %s)", name, force ? force : "?"); break;
    case CHAT_SRC_TEXT: snprintf(buf, cap, "%s (detected in the --chat-template text)", name); break;
    case CHAT_SRC_DEFAULT:
        snprintf(buf, cap, "%s (the default: the model has no chat template; --chat-template NAME or FILE "
                 "chooses another)", name);
        break;
    }
}

/* ---------------------------------------------------------------- rendering */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { b->oom = 1; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void puts_(sbuf *b, const char *s) {
    put(b, s, strlen(s));
}

/* Python str.isspace() for one code point. */
static int py_space(int32_t c) {
    if ((c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85) return 1;
    if (c < 0x80) return 0;
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_ZS || k == UTF8PROC_CATEGORY_ZL || k == UTF8PROC_CATEGORY_ZP;
}

/* Append s with Python str.strip() applied. */
static void put_stripped(sbuf *b, const char *s) {
    const utf8proc_uint8_t *u = (const utf8proc_uint8_t *)s;
    utf8proc_ssize_t n = (utf8proc_ssize_t)strlen(s), a = 0, e = n, last_end = 0;
    utf8proc_int32_t c;
    int started = 0;
    for (utf8proc_ssize_t i = 0; i < n;) {
        utf8proc_ssize_t l = utf8proc_iterate(u + i, n - i, &c);
        if (l <= 0) { l = 1; c = 0xFFFD; } /* not UTF-8: keep the byte */
        if (!py_space(c)) {
            if (!started) { a = i; started = 1; }
            last_end = i + l;
        }
        i += l;
    }
    e = started ? last_end : a;
    put(b, s + a, (size_t)(e - a));
}

static int is_role(const chat_msg *m, const char *r) {
    return m->role && !strcmp(m->role, r);
}

/* llama-2 and mistral: turns must go user, assistant, user, ... */
static llmq_status check_alternation(const chat_msg *m, size_t n, llmq_err *err) {
    for (size_t i = 0; i < n; i++)
        if (is_role(&m[i], "user") != (i % 2 == 0))
            return llmq_err_set(err, LLMQ_ERR_INVALID,
                                "Conversation roles must alternate user/assistant/user/assistant/... (message %zu is '%s')",
                                i, m[i].role ? m[i].role : "(null)");
    return LLMQ_OK;
}

/* The end of a rendering: the text to the caller, or the error (out of
 * memory when the buffer failed) with the buffer freed. */
static llmq_status render_done(sbuf *b, llmq_status st, char **out, size_t *len, llmq_err *err) {
    if (!st && b->oom) st = llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory rendering a chat prompt");
    if (st) {
        free(b->p);
        return st;
    }
    *out = b->p;
    if (len) *len = b->len;
    return LLMQ_OK;
}

static llmq_status render_llama2(const chat_template *ct, const chat_msg *m, size_t n, sbuf *b, llmq_err *err) {
    const char *sys = NULL;
    if (n && is_role(&m[0], "system")) sys = m[0].content, m++, n--;
    llmq_status st = check_alternation(m, n, err);
    if (st) return st;
    for (size_t i = 0; i < n; i++) {
        if (is_role(&m[i], "user")) {
            puts_(b, ct->bos);
            puts_(b, "[INST] ");
            if (i == 0 && sys) {
                sbuf c = {0};
                puts_(&c, "<<SYS>>\n");
                puts_(&c, sys);
                puts_(&c, "\n<</SYS>>\n\n");
                puts_(&c, m[i].content);
                if (c.oom) { free(c.p); return LLMQ_ERR_NOMEM; }
                put_stripped(b, c.p);
                free(c.p);
            } else {
                put_stripped(b, m[i].content);
            }
            puts_(b, " [/INST]");
        } else {
            puts_(b, " ");
            put_stripped(b, m[i].content);
            puts_(b, " ");
            puts_(b, ct->eos);
        }
    }
    return LLMQ_OK;
}

static llmq_status render_mistral(const chat_template *ct, const chat_msg *m, size_t n, sbuf *b, llmq_err *err) {
    const char *sys = NULL;
    if (n && is_role(&m[0], "system")) sys = m[0].content, m++, n--;
    llmq_status st = check_alternation(m, n, err);
    if (st) return st;
    puts_(b, ct->bos);
    for (size_t i = 0; i < n; i++) {
        if (is_role(&m[i], "user")) {
            puts_(b, "[INST] ");
            if (i == 0 && sys) {
                puts_(b, sys);
                puts_(b, "\n\n");
            }
            puts_(b, m[i].content);
            puts_(b, " [/INST]");
        } else {
            puts_(b, m[i].content);
            puts_(b, ct->eos);
        }
    }
    return LLMQ_OK;
}

static void render_llama3(const chat_template *ct, const chat_msg *m, size_t n, int gen, sbuf *b) {
    for (size_t i = 0; i < n; i++) {
        if (i == 0) puts_(b, ct->bos);
        puts_(b, "<|start_header_id|>");
        puts_(b, m[i].role);
        puts_(b, "<|end_header_id|>\n\n");
        put_stripped(b, m[i].content);
        puts_(b, "<|eot_id|>");
    }
    if (gen) puts_(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static void render_chatml(const chat_template *ct, const chat_msg *m, size_t n, int gen, sbuf *b) {
    for (size_t i = 0; i < n; i++) {
        if (i == 0 && ct->default_system && !is_role(&m[0], "system")) {
            puts_(b, "<|im_start|>system\n");
            puts_(b, ct->default_system);
            puts_(b, "<|im_end|>\n");
        }
        puts_(b, "<|im_start|>");
        puts_(b, m[i].role);
        puts_(b, "\n");
        puts_(b, m[i].content);
        puts_(b, "<|im_end|>\n");
    }
    if (gen) puts_(b, "<|im_start|>assistant\n");
}

static void render_zephyr(const chat_template *ct, const chat_msg *m, size_t n, int gen, sbuf *b) {
    for (size_t i = 0; i < n; i++) {
        const char *tag = is_role(&m[i], "user") ? "<|user|>\n"
                        : is_role(&m[i], "system") ? "<|system|>\n"
                        : is_role(&m[i], "assistant") ? "<|assistant|>\n" : NULL;
        if (tag) {
            puts_(b, tag);
            puts_(b, m[i].content);
            puts_(b, ct->eos);
            puts_(b, "\n");
        }
        if (i + 1 == n && gen) puts_(b, "<|assistant|>\n");
    }
}

/* Jinja's `x | tojson` as transformers defines it: json.dumps(x,
 * ensure_ascii=False), whose separators are ", " and ": " as jansson's
 * without JSON_COMPACT. */
static void put_json(sbuf *b, const json_t *v) {
    char *s = json_dumps(v, JSON_ENCODE_ANY);
    if (!s) { b->oom = 1; return; }
    puts_(b, s);
    free(s);
}

static const char QWEN_TOOLS_HEAD[] =
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
static const char QWEN_TOOLS_TAIL[] =
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call><|im_end|>\n";

/* An assistant turn's tool_calls as Qwen2.5's template writes them.  An
 * OpenAI call's `arguments` is JSON text: parsed first (as vLLM does before
 * rendering), so that the template's tojson writes the object. */
static llmq_status put_qwen_calls(sbuf *b, const char *calls_json, size_t i, llmq_err *err) {
    json_t *calls = json_loads(calls_json, JSON_DECODE_ANY, NULL);
    if (!json_is_array(calls)) {
        json_decref(calls);
        return llmq_err_set(err, LLMQ_ERR_INVALID, "message %zu: tool_calls must be an array", i);
    }
    size_t k;
    json_t *c;
    json_array_foreach(calls, k, c) {
        json_t *fn = json_object_get(c, "function");
        if (fn) c = fn;
        const char *name = json_string_value(json_object_get(c, "name"));
        json_t *args = json_object_get(c, "arguments");
        if (!name || !args) {
            json_decref(calls);
            return llmq_err_set(err, LLMQ_ERR_INVALID, "message %zu: tool_calls[%zu] needs a name and arguments", i, k);
        }
        json_t *parsed = json_is_string(args) ? json_loads(json_string_value(args), JSON_DECODE_ANY, NULL) : NULL;
        puts_(b, "\n<tool_call>\n{\"name\": \"");
        puts_(b, name);
        puts_(b, "\", \"arguments\": ");
        put_json(b, parsed ? parsed : args);
        puts_(b, "}\n</tool_call>");
        json_decref(parsed);
    }
    json_decref(calls);
    return LLMQ_OK;
}

/* chatml with tools: Qwen2.5's template (chat.h). */
static llmq_status render_chatml_tools(const chat_template *ct, const chat_msg *m, size_t n, const json_t *tools,
                                       int gen, sbuf *b, llmq_err *err) {
    const char *sys = n && is_role(&m[0], "system") ? m[0].content : ct->default_system;
    puts_(b, "<|im_start|>system\n");
    if (sys) {
        puts_(b, sys);
        puts_(b, "\n\n");
    }
    puts_(b, QWEN_TOOLS_HEAD);
    size_t k;
    json_t *t;
    json_array_foreach(tools, k, t) {
        puts_(b, "\n");
        put_json(b, t);
    }
    puts_(b, QWEN_TOOLS_TAIL);
    for (size_t i = 0; i < n; i++) {
        const int calls = m[i].tool_calls && is_role(&m[i], "assistant");
        if (is_role(&m[i], "user") || (is_role(&m[i], "system") && i) || (is_role(&m[i], "assistant") && !calls)) {
            puts_(b, "<|im_start|>");
            puts_(b, m[i].role);
            puts_(b, "\n");
            puts_(b, m[i].content);
            puts_(b, "<|im_end|>\n");
        } else if (calls) {
            puts_(b, "<|im_start|>assistant");
            if (*m[i].content) {
                puts_(b, "\n");
                puts_(b, m[i].content);
            }
            llmq_status st = put_qwen_calls(b, m[i].tool_calls, i, err);
            if (st) return st;
            puts_(b, "<|im_end|>\n");
        } else if (is_role(&m[i], "tool")) {
            if (i == 0 || !is_role(&m[i - 1], "tool")) puts_(b, "<|im_start|>user");
            puts_(b, "\n<tool_response>\n");
            puts_(b, m[i].content);
            puts_(b, "\n</tool_response>");
            if (i + 1 == n || !is_role(&m[i + 1], "tool")) puts_(b, "<|im_end|>\n");
        }
    }
    if (gen) puts_(b, "<|im_start|>assistant\n");
    return LLMQ_OK;
}

/* An OpenAI call's `function` with its `arguments` JSON text parsed (as vLLM
 * does before the template), for the template's tojson; a new reference. */
static json_t *call_function(const json_t *c) {
    const json_t *fn = json_object_get(c, "function");
    json_t *f = json_copy((json_t *)(fn ? fn : c));
    const json_t *args = json_object_get(f, "arguments");
    json_t *parsed = json_is_string(args) ? json_loads(json_string_value(args), JSON_DECODE_ANY, NULL) : NULL;
    if (parsed) json_object_set_new(f, "arguments", parsed);
    return f;
}

/* Message i's tool_calls: *out a new array. */
static llmq_status load_calls(const char *calls_json, size_t i, json_t **out, llmq_err *err) {
    *out = json_loads(calls_json, JSON_DECODE_ANY, NULL);
    if (json_is_array(*out)) return LLMQ_OK;
    json_decref(*out);
    *out = NULL;
    return llmq_err_set(err, LLMQ_ERR_INVALID, "message %zu: tool_calls must be an array", i);
}

static const char LLAMA31_HEAD[] = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n";
static const char LLAMA31_TOOLS[] =
    "Given the following functions, please respond with a JSON for a function call with its proper arguments "
    "that best answers the given prompt.\n\nRespond in the format {\"name\": function name, \"parameters\": "
    "dictionary of argument name and its value}.Do not use variables.\n\n";

static void llama_header(sbuf *b, const char *role) {
    puts_(b, "<|start_header_id|>");
    puts_(b, role);
    puts_(b, "<|end_header_id|>\n\n");
}

/* Llama 3.1's template (chat.h), tools NULL for none. */
static llmq_status render_llama31(const chat_template *ct, const chat_msg *m, size_t n, const json_t *tools, int gen,
                                  sbuf *b, llmq_err *err) {
    size_t i = 0;
    puts_(b, ct->bos);
    llama_header(b, "system");
    if (tools) puts_(b, "Environment: ipython\n");
    puts_(b, LLAMA31_HEAD);
    if (n && is_role(&m[0], "system")) put_stripped(b, m[i++].content);
    puts_(b, "<|eot_id|>");
    if (tools) { /* in the first turn after the system one, whatever its role */
        if (i == n)
            return llmq_err_set(err, LLMQ_ERR_INVALID,
                                "Cannot put tools in the first user message when there's no first user message!");
        llama_header(b, "user");
        puts_(b, LLAMA31_TOOLS);
        size_t k;
        json_t *t;
        json_array_foreach(tools, k, t) {
            char *s = json_dumps(t, JSON_ENCODE_ANY | JSON_INDENT(4));
            if (!s) return llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory rendering a chat prompt");
            puts_(b, s);
            free(s);
            puts_(b, "\n\n");
        }
        put_stripped(b, m[i++].content);
        puts_(b, "<|eot_id|>");
    }
    for (; i < n; i++) {
        if (m[i].tool_calls) {
            json_t *calls;
            llmq_status st = load_calls(m[i].tool_calls, i, &calls, err);
            if (st) return st;
            if (json_array_size(calls) != 1) {
                json_decref(calls);
                return llmq_err_set(err, LLMQ_ERR_INVALID, "This model only supports single tool-calls at once!");
            }
            json_t *f = call_function(json_array_get(calls, 0));
            const char *name = json_string_value(json_object_get(f, "name"));
            const json_t *args = json_object_get(f, "arguments");
            if (!name || !args) {
                json_decref(f);
                json_decref(calls);
                return llmq_err_set(err, LLMQ_ERR_INVALID, "message %zu: tool_calls[0] needs a name and arguments", i);
            }
            llama_header(b, "assistant");
            puts_(b, "{\"name\": \"");
            puts_(b, name);
            puts_(b, "\", \"parameters\": ");
            put_json(b, args);
            puts_(b, "}<|eot_id|>");
            json_decref(f);
            json_decref(calls);
        } else if (is_role(&m[i], "tool") || is_role(&m[i], "ipython")) {
            /* the template writes a string result with tojson: quoted */
            llama_header(b, "ipython");
            json_t *c = json_string(m[i].content);
            if (!c) return llmq_err_set(err, LLMQ_ERR_INVALID, "message %zu: content is not UTF-8", i);
            put_json(b, c);
            json_decref(c);
            puts_(b, "<|eot_id|>");
        } else {
            llama_header(b, m[i].role);
            put_stripped(b, m[i].content);
            puts_(b, "<|eot_id|>");
        }
    }
    if (gen) llama_header(b, "assistant");
    return LLMQ_OK;
}

static const char MISTRAL_ID_ERR[] = "Tool call IDs should be alphanumeric strings with length 9!";

/* Mistral's [AVAILABLE_TOOLS] block: each function's keys in their order but
 * "return", strings written raw, other values as json.dumps writes them. */
static void put_mistral_tools(sbuf *b, const json_t *tools) {
    size_t k;
    json_t *t;
    puts_(b, "[AVAILABLE_TOOLS] [");
    json_array_foreach(tools, k, t) {
        puts_(b, k ? ", {\"type\": \"function\", \"function\": {" : "{\"type\": \"function\", \"function\": {");
        const char *key;
        json_t *v;
        int first = 1;
        json_object_foreach(json_object_get(t, "function"), key, v) {
            if (!strcmp(key, "return")) continue;
            puts_(b, first ? "\"" : ", \"");
            first = 0;
            puts_(b, key);
            if (json_is_string(v)) {
                puts_(b, "\": \"");
                puts_(b, json_string_value(v));
                puts_(b, "\"");
            } else {
                puts_(b, "\": ");
                put_json(b, v);
            }
        }
        puts_(b, "}}");
    }
    puts_(b, "][/AVAILABLE_TOOLS]");
}

/* A call id as Mistral's template wants it: its last 9 characters; NULL when shorter. */
static const char *mistral_id(const json_t *c) {
    const char *id = json_string_value(json_object_get(c, "id"));
    size_t l = id ? strlen(id) : 0;
    return l >= 9 ? id + l - 9 : NULL;
}

/* Mistral v0.3's template (chat.h), tools NULL for none. */
static llmq_status render_mistral3(const chat_template *ct, const chat_msg *m, size_t n, const json_t *tools, sbuf *b,
                                   llmq_err *err) {
    const char *sys = NULL, *last_user = NULL;
    size_t i0 = 0, turn = 0;
    if (n && is_role(&m[0], "system")) sys = m[i0++].content;
    for (size_t i = i0; i < n; i++) {
        if (is_role(&m[i], "user")) last_user = m[i].content;
        if (is_role(&m[i], "tool") || is_role(&m[i], "tool_results") || m[i].tool_calls) continue;
        if (is_role(&m[i], "user") != (turn++ % 2 == 0))
            return llmq_err_set(err, LLMQ_ERR_INVALID, "After the optional system message, conversation roles must "
                                                       "alternate user/assistant/user/assistant/...");
    }
    puts_(b, ct->bos);
    json_t *answered = NULL; /* the calls the tool turns answer, in order */
    size_t next = 0;
    llmq_status st = LLMQ_OK;
    for (size_t i = i0; i < n && !st; i++) {
        const int tool = is_role(&m[i], "tool") || is_role(&m[i], "tool_results");
        if (is_role(&m[i], "user")) {
            /* the template compares messages: a user turn equal to the last gets the tools too */
            if (tools && !strcmp(m[i].content, last_user)) put_mistral_tools(b, tools);
            puts_(b, "[INST] ");
            if (i + 1 == n && sys) {
                puts_(b, sys);
                puts_(b, "\n\n");
            }
            puts_(b, m[i].content);
            puts_(b, "[/INST]");
        } else if (m[i].tool_calls) {
            json_decref(answered);
            if ((st = load_calls(m[i].tool_calls, i, &answered, err))) return st;
            next = 0;
            puts_(b, "[TOOL_CALLS] [");
            size_t k;
            json_t *c;
            json_array_foreach(answered, k, c) {
                const char *id = mistral_id(c);
                json_t *f = call_function(c);
                char *s = json_dumps(f, JSON_ENCODE_ANY);
                json_decref(f);
                if (!s || !id) {
                    free(s);
                    st = id ? llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory rendering a chat prompt")
                            : llmq_err_set(err, LLMQ_ERR_INVALID, "%s", MISTRAL_ID_ERR);
                    break;
                }
                put(b, s, strlen(s) - 1); /* the object without its "}" */
                free(s);
                puts_(b, ", \"id\": \"");
                puts_(b, id);
                puts_(b, k + 1 < json_array_size(answered) ? "\"}, " : "\"}]");
            }
            if (!json_array_size(answered)) puts_(b, "]"); /* cannot be: the gateway drops empty tool_calls */
            puts_(b, ct->eos);
            continue;
        } else if (is_role(&m[i], "assistant")) {
            puts_(b, " ");
            put_stripped(b, m[i].content);
            puts_(b, ct->eos);
        } else if (tool) {
            const char *id = next < json_array_size(answered) ? mistral_id(json_array_get(answered, next++)) : NULL;
            if (!id) {
                st = llmq_err_set(err, LLMQ_ERR_INVALID, "%s", MISTRAL_ID_ERR);
                break;
            }
            puts_(b, "[TOOL_RESULTS] {\"content\": ");
            puts_(b, m[i].content);
            puts_(b, ", \"call_id\": \"");
            puts_(b, id);
            puts_(b, "\"}[/TOOL_RESULTS]");
            continue;
        } else {
            st = llmq_err_set(err, LLMQ_ERR_INVALID, "Only user and assistant roles are supported, with the exception "
                                                     "of an initial optional system message!");
        }
        json_decref(answered); /* a turn that is neither calls nor results: nothing left to answer */
        answered = NULL;
        next = 0;
    }
    json_decref(answered);
    return st;
}

/* The tools of a request: NULL when there are none; -1 when not an array. */
static int load_tools(const char *text, json_t **out) {
    *out = NULL;
    if (!text) return 0;
    json_t *t = json_loads(text, JSON_DECODE_ANY, NULL);
    if (!json_is_array(t)) {
        json_decref(t);
        return -1;
    }
    if (json_array_size(t)) *out = t;
    else json_decref(t);
    return 0;
}

llmq_status chat_render_tools(const chat_template *ct, const chat_msg *msgs, size_t n, const char *tools,
                              int add_generation_prompt, char **out, size_t *len, llmq_err *err) {
    json_t *t;
    if (load_tools(tools, &t)) return llmq_err_set(err, LLMQ_ERR_INVALID, "tools must be a JSON array");
    if (!t) return chat_render(ct, msgs, n, add_generation_prompt, out, len, err);
    *out = NULL;
    if (len) *len = 0;
    if (ct->family != CHAT_CHATML && ct->family != CHAT_LLAMA31 && ct->family != CHAT_MISTRAL3) {
        json_decref(t);
        return llmq_err_set(err, LLMQ_ERR_UNSUPPORTED,
                            "tools are rendered only by chatml (Hermes/Qwen), llama-3.1 and mistral-v3 chat "
                            "templates, not %s",
                            chat_family_name(ct->family));
    }
    for (size_t i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content) {
            json_decref(t);
            return llmq_err_set(err, LLMQ_ERR_INVALID, "message %zu needs a role and a content", i);
        }
    sbuf b = {0};
    puts_(&b, "");
    llmq_status st = ct->family == CHAT_LLAMA31  ? render_llama31(ct, msgs, n, t, add_generation_prompt, &b, err)
                   : ct->family == CHAT_MISTRAL3 ? render_mistral3(ct, msgs, n, t, &b, err)
                                                 : render_chatml_tools(ct, msgs, n, t, add_generation_prompt, &b, err);
    json_decref(t);
    return render_done(&b, st, out, len, err);
}

/* One alternative of the call grammar: the call of `fn` in family f's
 * syntax, its arguments rule a<k>. */
static void put_lark_call(sbuf *g, sbuf *rules, chat_family f, const json_t *fn, size_t k) {
    char rule[32];
    snprintf(rule, sizeof rule, "a%zu", k);
    puts_(g, k ? "\n     | " : "");
    /* Hermes: in <tool_call> tags; Llama 3.1: the JSON with "parameters" (its
     * template's); Mistral: an object of the [TOOL_CALLS] array (the rule `start`) */
    puts_(g, f == CHAT_CHATML ? "\"<tool_call>\\n{\\\"name\\\": \\\"" : "\"{\\\"name\\\": \\\"");
    puts_(g, json_string_value(json_object_get(fn, "name")));
    puts_(g, f == CHAT_LLAMA31 ? "\\\", \\\"parameters\\\": \" " : "\\\", \\\"arguments\\\": \" ");
    puts_(g, rule);
    puts_(g, f == CHAT_CHATML ? " \"}\\n</tool_call>\"" : " \"}\"");
    /* without llguidance options of its own, no free white space: JSON as the
     * template's example (and Python's json.dumps) writes it, a model cannot
     * pad its call with newlines until max_tokens */
    const json_t *params = json_object_get(fn, "parameters");
    json_t *s = json_is_object(params) ? json_copy((json_t *)params) : json_pack("{s:s}", "type", "object");
    if (s && !json_object_get(s, "x-guidance"))
        json_object_set_new(s, "x-guidance", json_pack("{s:b, s:s, s:s}", "whitespace_flexible", 0, "item_separator",
                                                       ", ", "key_separator", ": "));
    char *schema = s ? json_dumps(s, JSON_COMPACT) : NULL;
    json_decref(s);
    if (!schema) { rules->oom = 1; return; }
    puts_(rules, "\n");
    puts_(rules, rule);
    puts_(rules, ": %json ");
    puts_(rules, schema);
    free(schema);
}

llmq_status chat_tools_grammar(chat_family f, const char *tools, const char *name, char **out, llmq_err *err) {
    *out = NULL;
    if (f != CHAT_CHATML && f != CHAT_LLAMA31 && f != CHAT_MISTRAL3)
        return llmq_err_set(err, LLMQ_ERR_UNSUPPORTED,
                            "tool calls are constrained only for chatml (Hermes/Qwen), llama-3.1 and mistral-v3");
    json_t *t;
    if (load_tools(tools, &t) || !t) return llmq_err_set(err, LLMQ_ERR_INVALID, "tools must be a non-empty JSON array");
    sbuf g = {0}, rules = {0};
    /* Mistral: one call, in its array (the text of the [TOOL_CALLS] token, as the gateway reads it) */
    puts_(&g, f == CHAT_MISTRAL3 ? "start: \"[TOOL_CALLS] [\" call \"]\"\ncall: " : "start: ");
    size_t k, alts = 0;
    json_t *tool;
    llmq_status st = LLMQ_OK;
    json_array_foreach(t, k, tool) {
        const json_t *fn = json_object_get(tool, "function");
        const char *fname = json_string_value(json_object_get(fn, "name"));
        if (!fname) {
            st = llmq_err_set(err, LLMQ_ERR_INVALID, "tools[%zu] has no function name", k);
            break;
        }
        /* the name goes into a Lark string: OpenAI's names are [a-zA-Z0-9_-] */
        if (strspn(fname, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") != strlen(fname)) {
            st = llmq_err_set(err, LLMQ_ERR_INVALID, "tools[%zu]: function names are letters, digits, _ and -", k);
            break;
        }
        if (name && strcmp(name, fname)) continue;
        put_lark_call(&g, &rules, f, fn, alts++);
    }
    json_decref(t);
    if (!st && !alts) st = llmq_err_set(err, LLMQ_ERR_INVALID, "tool_choice names '%s', which is none of the tools", name);
    if (!st) puts_(&g, rules.p ? rules.p : "");
    free(rules.p);
    if (!st && (g.oom || rules.oom)) st = llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory building a tool grammar");
    if (st) {
        free(g.p);
        return st;
    }
    puts_(&g, "\n");
    *out = g.p;
    return LLMQ_OK;
}

llmq_status chat_render(const chat_template *ct, const chat_msg *msgs, size_t n, int add_generation_prompt,
                        char **out, size_t *len, llmq_err *err) {
    *out = NULL;
    if (len) *len = 0;
    for (size_t i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content)
            return llmq_err_set(err, LLMQ_ERR_INVALID, "message %zu needs a role and a content", i);
    sbuf b = {0};
    llmq_status st = LLMQ_OK;
    puts_(&b, "");
    switch (ct->family) {
    case CHAT_LLAMA2: st = render_llama2(ct, msgs, n, &b, err); break;
    case CHAT_MISTRAL: st = render_mistral(ct, msgs, n, &b, err); break;
    case CHAT_LLAMA3: render_llama3(ct, msgs, n, add_generation_prompt, &b); break;
    case CHAT_CHATML: render_chatml(ct, msgs, n, add_generation_prompt, &b); break;
    case CHAT_ZEPHYR: render_zephyr(ct, msgs, n, add_generation_prompt, &b); break;
    case CHAT_LLAMA31: st = render_llama31(ct, msgs, n, NULL, add_generation_prompt, &b, err); break;
    case CHAT_MISTRAL3: st = render_mistral3(ct, msgs, n, NULL, &b, err); break;
    case CHAT_UNKNOWN:
        st = llmq_err_set(err, LLMQ_ERR_UNSUPPORTED, "no chat template (choose one of %s)", chat_family_names());
        break;
    }
    return render_done(&b, st, out, len, err);
}
