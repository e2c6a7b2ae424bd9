/*
 * toolcall.c — tool-call text to OpenAI tool_calls, whole or streamed (see toolcall.h).
 *
 * A push parser: the text is kept whole (a first call that turns out not to be
 * one gives it all back as content), and read once, byte by byte from where
 * the last feed stopped, so a long output costs what its length does.
 */
#include "common/toolcall.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

static const char HERMES[] = "<tool_call>", MISTRAL[] = "[TOOL_CALLS]", PYTAG[] = "<|python_tag|>";

typedef struct tbuf {
    char *p;
    size_t len, cap;
    int oom;
} tbuf;

static void tb_put(tbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
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

static void tb_char(tbuf *b, char c) { tb_put(b, &c, 1); }

static int is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

enum { TC_CONTENT, TC_CALLS, TC_PLAIN, TC_DONE };       /* the stream's mode */
enum { FMT_HERMES, FMT_MISTRAL, FMT_LLAMA };            /* the calls' format */
enum { FS_SEEK, FS_OPEN, FS_OBJ, FS_SEP };              /* between calls */
enum { OB_START, OB_KEY_START, OB_KEY, OB_COLON, OB_VAL_START, OB_VAL, OB_AFTER_VAL }; /* in a call's object */
enum { K_OTHER, K_NAME, K_ARGS };                       /* whose value is being read */

struct toolcall_stream {
    const json_t *tools;
    int max_calls;
    tbuf text;           /* all of it so far */
    size_t sent;         /* content mode: text[0..sent) went out as content */
    size_t pos;          /* calls mode: text[0..pos) was read */
    int mode, fmt, fs;
    int llama_off;       /* the text is not a Llama call (something else came first) */
    size_t content_end;  /* with calls: the content is text[0..content_end) */
    json_t *calls;       /* the complete calls, in the message's shape */
    json_t *out;         /* the feed's delta entries */
    /* the call being read */
    int os, kind, depth, in_str, esc, scalar;
    tbuf key, name, args;  /* name: the raw JSON string, quotes included */
    int has_name, args_begun, has_args, args_str;
    int begun;           /* its first delta went out */
    size_t args_sent;    /* args[0..args_sent) went out */
    char id[5 + 24 + 1];
};

/* "call_" and 24 random letters and digits, as OpenAI's ids look. */
static void call_id(char *id) {
    static const char al[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    unsigned char r[24];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) /* cannot fail for 24 bytes once booted; never all equal */
        for (size_t i = 0; i < sizeof r; i++) r[i] = (unsigned char)(i * 37u + 11u);
    memcpy(id, "call_", 5);
    for (size_t i = 0; i < sizeof r; i++) id[5 + i] = al[r[i] % (sizeof al - 1)];
    id[5 + sizeof r] = 0;
}

toolcall_stream *toolcall_stream_new(const json_t *tools, int max_calls) {
    toolcall_stream *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->tools = tools;
    s->max_calls = max_calls;
    if (!(s->calls = json_array())) {
        free(s);
        return NULL;
    }
    return s;
}

void toolcall_stream_free(toolcall_stream *s) {
    if (!s) return;
    free(s->text.p);
    free(s->key.p);
    free(s->name.p);
    free(s->args.p);
    json_decref(s->calls);
    json_decref(s->out);
    free(s);
}

size_t toolcall_stream_calls(const toolcall_stream *s) {
    return json_array_size(s->calls);
}

void toolcall_delta_clear(toolcall_delta *d) {
    free(d->content);
    json_decref(d->tool_calls);
    memset(d, 0, sizeof *d);
}

/* n less the bytes of a UTF-8 sequence cut at its end (they go out with the rest of it). */
static size_t utf8_whole(const char *p, size_t n) {
    size_t k = 0;
    while (k < n && k < 4 && ((unsigned char)p[n - 1 - k] & 0xC0) == 0x80) k++;
    if (k == n) return n;
    unsigned char lead = (unsigned char)p[n - 1 - k];
    size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    return need > k + 1 ? n - 1 - k : n;
}

static int add_entry(toolcall_stream *s, json_t *e) {
    if (!e || (!s->out && !(s->out = json_array()))) {
        json_decref(e);
        return -1;
    }
    return json_array_append_new(s->out, e);
}

/* The current call's arguments read since the last delta go out (its name went first). */
static int flush_args(toolcall_stream *s) {
    if (!s->begun || s->args_str) return 0;
    size_t end = utf8_whole(s->args.p, s->args.len);
    if (end <= s->args_sent) return 0;
    json_t *frag = json_stringn(s->args.p + s->args_sent, end - s->args_sent);
    if (!frag) return -1;
    s->args_sent = end;
    size_t n = s->out ? json_array_size(s->out) : 0;
    json_t *last = n ? json_array_get(s->out, n - 1) : NULL;
    const json_t *idx = json_object_get(last, "index");
    if (last && json_integer_value(idx) == (json_int_t)json_array_size(s->calls)) { /* this call's: add to it */
        json_t *fn = json_object_get(last, "function");
        const json_t *prev = json_object_get(fn, "arguments");
        tbuf b = {0};
        tb_put(&b, json_string_value(prev), json_string_length(prev));
        tb_put(&b, json_string_value(frag), json_string_length(frag));
        json_decref(frag);
        int rc = b.oom ? -1 : json_object_set_new(fn, "arguments", json_stringn(b.p, b.len));
        free(b.p);
        return rc;
    }
    return add_entry(s, json_pack("{s:I, s:{s:o}}", "index", (json_int_t)json_array_size(s->calls), "function",
                                  "arguments", frag));
}

/* The call's name, decoded; NULL when it is not a JSON string. */
static json_t *decoded_name(const toolcall_stream *s) {
    json_t *n = json_loadb(s->name.p, s->name.len, JSON_DECODE_ANY, NULL);
    if (json_is_string(n) && json_string_length(n)) return n;
    json_decref(n);
    return NULL;
}

static int tool_known(const toolcall_stream *s, const char *name) {
    if (!s->tools) return 1;
    size_t i;
    const json_t *t;
    json_array_foreach(s->tools, i, t) {
        const char *n = json_string_value(json_object_get(json_object_get(t, "function"), "name"));
        if (n && !strcmp(n, name)) return 1;
    }
    return 0;
}

/* The call's first delta, once it has a name and its arguments began. */
static int begin_call(toolcall_stream *s) {
    if (s->begun || !s->has_name || !s->args_begun || s->args_str) return 0;
    json_t *name = decoded_name(s);
    if (!name) return -1;
    s->begun = 1;
    call_id(s->id);
    return add_entry(s, json_pack("{s:I, s:s, s:s, s:{s:o, s:s}}", "index", (json_int_t)json_array_size(s->calls),
                                  "id", s->id, "type", "function", "function", "name", name, "arguments", ""));
}

static void reset_call(toolcall_stream *s) {
    s->os = OB_START;
    s->key.len = s->name.len = s->args.len = 0;
    s->has_name = s->args_begun = s->has_args = s->args_str = s->begun = 0;
    s->args_sent = 0;
    s->depth = s->in_str = s->esc = s->scalar = 0;
}

/* The call's object ended: it is a call when it had a name and arguments (JSON,
 * or a JSON string).  0, or -1 when it is not one. */
static int end_call(toolcall_stream *s) {
    if (!s->has_name || !s->has_args) return -1;
    json_t *args = NULL;
    if (s->args_str) { /* a JSON string: the text it holds */
        json_t *v = json_loadb(s->args.p, s->args.len, JSON_DECODE_ANY, NULL);
        if (!json_is_string(v)) {
            json_decref(v);
            return -1;
        }
        args = v;
        s->args_str = 0;
        if (begin_call(s)) {
            json_decref(args);
            return -1;
        }
        /* the whole string is the call's one fragment */
        s->args.len = 0;
        tb_put(&s->args, json_string_value(args), json_string_length(args));
    } else {
        json_t *v = json_loadb(s->args.p, s->args.len, JSON_DECODE_ANY, NULL);
        if (!v) return -1;
        json_decref(v);
        args = json_stringn(s->args.p, s->args.len);
    }
    json_t *name = decoded_name(s);
    if (!name || !args || s->args.oom || flush_args(s)) {
        json_decref(name);
        json_decref(args);
        return -1;
    }
    json_decref(args);
    json_t *c = json_pack("{s:s, s:s, s:{s:o, s:s%}}", "id", s->id, "type", "function", "function", "name", name,
                          "arguments", s->args.p ? s->args.p : "", s->args.len);
    if (!c || json_array_append_new(s->calls, c)) return -1;
    reset_call(s);
    return 0;
}

/* A call that is not one: the first gives the whole text back as content
 * (unless its first delta went out: a stream cannot take it back), a later
 * one ends the calls. */
static void fail_call(toolcall_stream *s) {
    s->mode = !json_array_size(s->calls) && !s->begun ? TC_PLAIN : TC_DONE;
}

/* One byte of a call's object; 1 when the byte is to be read again (it ended
 * a number or literal), 2 when the object ended, -1 when it is not a call. */
static int obj_byte(toolcall_stream *s, char c) {
    switch (s->os) {
    case OB_START:
        if (is_space(c)) return 0;
        if (c != '{') return -1;
        s->os = OB_KEY_START;
        return 0;
    case OB_KEY_START:
        if (is_space(c)) return 0;
        if (c != '"') return -1;
        s->key.len = 0;
        s->os = OB_KEY;
        return 0;
    case OB_KEY:
        if (s->esc) s->esc = 0;
        else if (c == '\\') s->esc = 1;
        else if (c == '"') {
            s->os = OB_COLON;
            return 0;
        }
        tb_char(&s->key, c);
        return 0;
    case OB_COLON:
        if (is_space(c)) return 0;
        if (c != ':') return -1;
        s->os = OB_VAL_START;
        s->kind = K_OTHER;
        if (s->key.len == 4 && !memcmp(s->key.p, "name", 4) && !s->has_name) s->kind = K_NAME;
        else if (!s->args_begun && ((s->key.len == 9 && !memcmp(s->key.p, "arguments", 9)) ||
                                    (s->key.len == 10 && !memcmp(s->key.p, "parameters", 10))))
            s->kind = K_ARGS;
        return 0;
    case OB_VAL_START:
        if (is_space(c)) return 0;
        if (s->kind == K_NAME && c != '"') return -1;
        s->os = OB_VAL;
        s->depth = s->in_str = s->esc = s->scalar = 0;
        if (s->kind == K_ARGS) {
            s->args_begun = 1;
            s->args_str = c == '"';
        }
        if (c == '"') s->in_str = 1;
        else if (c == '{' || c == '[') s->depth = 1;
        else if (c == '}' || c == ']' || c == ',' || c == ':') return -1;
        else s->scalar = 1;
        if (s->kind == K_NAME) tb_char(&s->name, c);
        if (s->kind == K_ARGS) {
            tb_char(&s->args, c);
            if (begin_call(s)) return -1;
        }
        return 0;
    case OB_VAL: {
        int ended = 0, keep = 1;
        if (s->in_str) {
            if (s->esc) s->esc = 0;
            else if (c == '\\') s->esc = 1;
            else if (c == '"') {
                s->in_str = 0;
                ended = s->depth == 0;
            }
        } else if (s->scalar) {
            if (is_space(c) || c == ',' || c == '}' || c == ']') {
                s->scalar = 0;
                s->os = OB_AFTER_VAL;
                if (s->kind == K_ARGS) s->has_args = 1;
                return 1;
            }
        } else if (is_space(c)) {
            keep = 0; /* outside strings: dropped */
        } else if (c == '"') {
            s->in_str = 1;
        } else if (c == '{' || c == '[') {
            s->depth++;
        } else if (c == '}' || c == ']') {
            ended = --s->depth == 0;
        }
        if (keep && s->kind == K_NAME) tb_char(&s->name, c);
        if (keep && s->kind == K_ARGS) tb_char(&s->args, c);
        if (ended) {
            s->os = OB_AFTER_VAL;
            if (s->kind == K_NAME) {
                s->has_name = 1;
                json_t *n = decoded_name(s);
                int known = n && tool_known(s, json_string_value(n));
                json_decref(n);
                if (!known || begin_call(s)) return -1;
            }
            if (s->kind == K_ARGS) s->has_args = 1;
        }
        return 0;
    }
    case OB_AFTER_VAL:
        if (is_space(c)) return 0;
        if (c == ',') {
            s->os = OB_KEY_START;
            return 0;
        }
        return c == '}' ? 2 : -1;
    }
    return -1;
}

/* Read text[pos..) in calls mode. */
static void read_calls(toolcall_stream *s) {
    const char *t = s->text.p;
    while (s->mode == TC_CALLS && s->pos < s->text.len) {
        if (s->fs == FS_SEEK) { /* Hermes, between calls: the next <tool_call>, what is between ignored */
            const char *m = memmem(t + s->pos, s->text.len - s->pos, HERMES, sizeof HERMES - 1);
            if (!m) {
                if (s->text.len - s->pos >= sizeof HERMES) s->pos = s->text.len - (sizeof HERMES - 2);
                return;
            }
            s->pos = (size_t)(m - t) + sizeof HERMES - 1;
            s->fs = FS_OBJ;
            continue;
        }
        char c = t[s->pos];
        if (s->fs == FS_OPEN || s->fs == FS_SEP) { /* Mistral's array */
            s->pos++;
            if (is_space(c)) continue;
            if (s->fs == FS_OPEN ? c == '[' : c == ',') s->fs = FS_OBJ;
            else if (s->fs == FS_SEP && c == ']') s->mode = TC_DONE;
            else fail_call(s);
            continue;
        }
        int rc = obj_byte(s, c);
        if (rc == 1) continue;
        s->pos++;
        if (rc < 0 || (rc == 2 && end_call(s))) {
            fail_call(s);
        } else if (rc == 2) {
            if (s->max_calls && json_array_size(s->calls) >= (size_t)s->max_calls) s->mode = TC_DONE;
            else if (s->fmt == FMT_HERMES) s->fs = FS_SEEK;
            else if (s->fmt == FMT_MISTRAL) s->fs = FS_SEP;
            else s->mode = TC_DONE;
        }
    }
}

/* Does text[at..len) begin with a proper prefix of m (the whole rest of it)? */
static int prefix_of(const char *t, size_t at, size_t len, const char *m) {
    size_t n = len - at, ml = strlen(m);
    return n < ml && !memcmp(t + at, m, n);
}

static void send_content(toolcall_stream *s, tbuf *out, size_t end) {
    if (end > s->sent) tb_put(out, s->text.p + s->sent, end - s->sent);
    if (end > s->sent) s->sent = end;
}

static void start_calls(toolcall_stream *s, int fmt, size_t content_end, size_t pos) {
    s->mode = TC_CALLS;
    s->fmt = fmt;
    s->fs = fmt == FMT_MISTRAL ? FS_OPEN : FS_OBJ;
    s->content_end = content_end;
    s->pos = pos;
    reset_call(s);
}

/* Content mode: what can go out, and where calls begin. */
static void read_content(toolcall_stream *s, tbuf *out, int final) {
    const char *t = s->text.p;
    const size_t len = s->text.len;
    if (!s->llama_off) { /* a Llama call, or Mistral's calls without their marker, are the whole text:
                          * hold all until it cannot be one */
        size_t p = 0;
        while (p < len && is_space(t[p])) p++;
        if (p == len || prefix_of(t, p, len, PYTAG) || prefix_of(t, p, len, MISTRAL)) {
            if (final) send_content(s, out, len);
            return;
        }
        if (t[p] == '{') return start_calls(s, FMT_LLAMA, 0, p);
        /* [TOOL_CALLS] is a special token of Mistral's v3 tokenizer, which a worker's text leaves out */
        if (t[p] == '[' && (len - p < strlen(MISTRAL) || memcmp(t + p, MISTRAL, strlen(MISTRAL))))
            return start_calls(s, FMT_MISTRAL, 0, p);
        if (len - p >= strlen(PYTAG) && !memcmp(t + p, PYTAG, strlen(PYTAG)))
            return start_calls(s, FMT_LLAMA, 0, p + strlen(PYTAG));
        s->llama_off = 1;
    }
    const char *h = memmem(t + s->sent, len - s->sent, HERMES, sizeof HERMES - 1);
    const char *m = memmem(t + s->sent, len - s->sent, MISTRAL, sizeof MISTRAL - 1);
    if (h || m) {
        const char *at = h && (!m || h < m) ? h : m;
        size_t end = (size_t)(at - t);
        while (end > s->sent && is_space(t[end - 1])) end--;
        send_content(s, out, end); /* what was sent never ends in white space: end is the whole text's */
        return start_calls(s, at == h ? FMT_HERMES : FMT_MISTRAL, end,
                           (size_t)(at - t) + (at == h ? sizeof HERMES : sizeof MISTRAL) - 1);
    }
    if (final) return send_content(s, out, len);
    size_t end = len;
    for (size_t k = len > sizeof MISTRAL ? len - sizeof MISTRAL : s->sent; k < len; k++)
        if (k >= s->sent && (prefix_of(t, k, len, HERMES) || prefix_of(t, k, len, MISTRAL))) {
            end = k;
            break;
        }
    while (end > s->sent && is_space(t[end - 1])) end--;
    send_content(s, out, end);
}

int toolcall_stream_feed(toolcall_stream *s, const char *text, size_t len, int final, toolcall_delta *d) {
    memset(d, 0, sizeof *d);
    tb_put(&s->text, len ? text : "", len);
    if (s->text.oom) return -1;
    tbuf content = {0};
    if (s->mode == TC_CONTENT) read_content(s, &content, final);
    read_calls(s);
    if (s->mode == TC_CALLS && final) fail_call(s); /* ended inside a call */
    if (s->mode == TC_CALLS && flush_args(s)) s->mode = TC_DONE;
    if (s->mode == TC_PLAIN) send_content(s, &content, s->text.len); /* the first call was none */
    if (content.oom) {
        free(content.p);
        return -1;
    }
    d->content = content.p;
    d->content_len = content.len;
    d->tool_calls = s->out;
    s->out = NULL;
    return 0;
}

json_t *toolcall_parse(const char *text, size_t len, const json_t *tools, int max_calls, size_t *content_len) {
    toolcall_stream *s = toolcall_stream_new(tools, max_calls);
    toolcall_delta d;
    json_t *calls = NULL;
    if (s && !toolcall_stream_feed(s, text, len, 1, &d) && json_array_size(s->calls)) {
        calls = json_incref(s->calls);
        *content_len = s->content_end;
    }
    if (s) toolcall_delta_clear(&d);
    toolcall_stream_free(s);
    return calls;
}
