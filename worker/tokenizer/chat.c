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

#include <utf8proc.h>

#include "worker/tokenizer/chat.h"

static const struct {
    const char *name;
    chat_family f;
} names[] = {
    {"llama-2", CHAT_LLAMA2}, {"llama2", CHAT_LLAMA2}, {"llama-3", CHAT_LLAMA3}, {"llama3", CHAT_LLAMA3},
    {"mistral", CHAT_MISTRAL}, {"chatml", CHAT_CHATML}, {"zephyr", CHAT_ZEPHYR},
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
    case CHAT_UNKNOWN: break;
    }
    return "unknown";
}

const char *chat_family_names(void) {
    return "llama-2, llama-3, mistral, chatml, zephyr";
}

chat_family chat_family_detect(const char *j) {
    if (!j) return CHAT_UNKNOWN;
    if (strstr(j, "<|start_header_id|>") && strstr(j, "<|eot_id|>")) return CHAT_LLAMA3;
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
    case CHAT_UNKNOWN:
        st = llmq_err_set(err, LLMQ_ERR_UNSUPPORTED, "no chat template (choose one of %s)", chat_family_names());
        break;
    }
    if (!st && b.oom) st = llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory rendering a chat prompt");
    if (st) {
        free(b.p);
        return st;
    }
    *out = b.p;
    if (len) *len = b.len;
    return LLMQ_OK;
}
