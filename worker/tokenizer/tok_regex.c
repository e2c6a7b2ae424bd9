/*
 * tok_regex.c — the regexes of tokenizer.json (Split pre-tokenizers, Replace
 * normalizers, ByteLevel's built-in GPT-2 pattern) run by PCRE2.
 *
 * Hugging Face compiles these with Oniguruma (Ruby syntax).  PCRE2 with
 * PCRE2_UTF|PCRE2_UCP reads the same patterns (\p{L}, (?i:...), lookahead) but
 * four shorthand classes mean slightly different things, so they are rewritten to
 * Oniguruma's meaning before compiling:
 *   \s  Oniguruma: White_Space   PCRE2 adds U+180E          -> [\t-\r\x{85}\p{Z}]
 *   \w  Oniguruma: L, M, N, Pc   PCRE2: L, N and '_'        -> [\p{L}\p{M}\p{N}\p{Pc}]
 *   \h  Oniguruma: a hex digit   PCRE2: horizontal space    -> [0-9a-fA-F]
 *   \S, \W, \H  their complements (outside brackets; inside a class they are kept).
 * Matching mirrors the `onig` crate's find_iter, including how it steps over an
 * empty match that immediately follows the previous match.
 */
#include <stdlib.h>
#include <string.h>

#include "worker/tokenizer/tok_internal.h"

static const struct {
    char esc;
    const char *in_class;  /* replacement inside [...] */
    const char *outside;   /* replacement outside */
} shorthand[] = {
    {'s', "\\t-\\r\\x{85}\\p{Z}", "[\\t-\\r\\x{85}\\p{Z}]"},
    {'S', NULL, "[^\\t-\\r\\x{85}\\p{Z}]"},
    {'w', "\\p{L}\\p{M}\\p{N}\\p{Pc}", "[\\p{L}\\p{M}\\p{N}\\p{Pc}]"},
    {'W', NULL, "[^\\p{L}\\p{M}\\p{N}\\p{Pc}]"},
    {'h', "0-9a-fA-F", "[0-9a-fA-F]"},
    {'H', NULL, "[^0-9a-fA-F]"},
};

/* Rewrite pat as described at the top; NULL when out of memory. */
static char *translate(const char *pat, size_t len, size_t *out_len) {
    tok_text o = {0};
    int in_class = 0;   /* inside [...] */
    int class_start = 0; /* just after '[' or '[^': a ']' here is literal */
    for (size_t i = 0; i < len; i++) {
        char c = pat[i];
        if (c == '\\' && i + 1 < len) {
            char e = pat[i + 1];
            const char *rep = NULL;
            for (size_t k = 0; k < sizeof shorthand / sizeof shorthand[0]; k++)
                if (shorthand[k].esc == e) rep = in_class ? shorthand[k].in_class : shorthand[k].outside;
            if (rep) {
                if (tok_text_append(&o, rep, strlen(rep))) goto oom;
            } else if (tok_text_append(&o, pat + i, 2)) {
                goto oom;
            }
            i++;
            class_start = 0;
            continue;
        }
        if (in_class) {
            if (c == '[' && i + 1 < len && pat[i + 1] == ':') { /* POSIX [:alpha:] */
                const char *end = memchr(pat + i + 2, ']', len - i - 2);
                size_t n = end ? (size_t)(end - (pat + i)) + 1 : 1;
                if (tok_text_append(&o, pat + i, n)) goto oom;
                i += n - 1;
                continue;
            }
            if (c == ']' && !class_start) in_class = 0;
            class_start = (class_start && c == '^' && pat[i - 1] == '[');
        } else if (c == '[') {
            in_class = 1;
            class_start = 1;
        }
        if (tok_text_append(&o, &c, 1)) goto oom;
    }
    if (tok_text_append(&o, "", 0)) goto oom;
    *out_len = o.len;
    return o.data;
oom:
    tok_text_deinit(&o);
    return NULL;
}

pcre2_code *tok_regex_compile(const char *pat, size_t len, const tok_jctx *c, const char *where) {
    size_t tlen;
    char *t = translate(pat, len, &tlen);
    if (!t) {
        tok_jfail(c, LLMQ_ERR_NOMEM, where, "out of memory compiling a regex");
        return NULL;
    }
    int ecode;
    PCRE2_SIZE eoff;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)t, tlen, PCRE2_UTF | PCRE2_UCP, &ecode, &eoff, NULL);
    free(t);
    if (!re) {
        char msg[256];
        pcre2_get_error_message(ecode, (PCRE2_UCHAR *)msg, sizeof msg);
        tok_jfail(c, LLMQ_ERR_UNSUPPORTED, where, "regex /%.*s/ does not compile with PCRE2: %s",
                  (int)(len > 200 ? 200 : len), pat, msg);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* best effort: the interpreter works too */
    return re;
}

void tok_regex_free(pcre2_code *re) {
    pcre2_code_free(re);
}

llmq_status tok_spans_push(tok_spans *o, size_t s, size_t e, int m) {
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 32;
        tok_span *v = realloc(o->v, cap * sizeof *v);
        if (!v) return LLMQ_ERR_NOMEM;
        o->v = v;
        o->cap = cap;
    }
    o->v[o->n++] = (tok_span){s, e, m};
    return LLMQ_OK;
}

llmq_status tok_regex_find(const pcre2_code *re, const char *s, size_t len, tok_spans *out) {
    if (len == 0) return tok_spans_push(out, 0, 0, 0);
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md) return LLMQ_ERR_NOMEM;
    llmq_status st = LLMQ_OK;
    size_t prev = 0, last_end = 0;
    long long last_match = -1;
    while (last_end <= len) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, len, last_end, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) { st = LLMQ_ERR_INTERNAL; break; }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (ms == me && last_match == (long long)me) { /* onig: step over it */
            last_end += last_end < len ? llmq_utf8_lead_len((unsigned char)s[last_end]) : 1;
            continue;
        }
        last_end = me;
        last_match = (long long)me;
        if (prev != ms && (st = tok_spans_push(out, prev, ms, 0))) break;
        if ((st = tok_spans_push(out, ms, me, 1))) break;
        prev = me;
    }
    pcre2_match_data_free(md);
    if (!st && prev != len) st = tok_spans_push(out, prev, len, 0);
    return st;
}
