/*
 * tok_norm.c — normalizers: rewrite a piece of text before pre-tokenization.
 *
 * Supported: Sequence (flattened at load), NFC, NFD, NFKC, NFKD (utf8proc),
 * Lowercase (utf8proc simple mapping plus the one unconditional special casing,
 * U+0130 -> "i\u0307", that Rust's char::to_lowercase applies), Strip (Unicode
 * White_Space), Replace (literal or regex pattern), Prepend (only for non-empty
 * text, as HF).  Offsets/alignments are not tracked: llmq needs ids, not spans.
 */
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "worker/tokenizer/tok_internal.h"

static llmq_status norm_push(tok_norm **v, size_t *n, tok_norm x) {
    tok_norm *p = realloc(*v, (*n + 1) * sizeof *p);
    if (!p) return LLMQ_ERR_NOMEM;
    p[*n] = x;
    *v = p;
    (*n)++;
    return LLMQ_OK;
}

static void norm_free_one(tok_norm *x) {
    free(x->pattern);
    free(x->content);
    if (x->re) tok_regex_free(x->re);
}

void tok_norm_free(tok_norm *v, size_t n) {
    for (size_t i = 0; i < n; i++) norm_free_one(&v[i]);
    free(v);
}

/* Parse {"String": s} | {"Regex": r} into x (pattern or re). */
static llmq_status parse_pattern(tok_norm *x, const tok_jctx *c, json_t *j, const char *where) {
    json_t *p = json_object_get(j, "pattern");
    json_t *s = p ? json_object_get(p, "String") : NULL;
    json_t *r = p ? json_object_get(p, "Regex") : NULL;
    if (!json_is_object(p) || (!json_is_string(s) && !json_is_string(r)))
        return tok_jfail(c, LLMQ_ERR_FORMAT, where,
                         "field \"pattern\" must be {\"String\": ...} or {\"Regex\": ...}");
    if (json_is_string(s)) {
        if (json_string_length(s) == 0)
            return tok_jfail(c, LLMQ_ERR_UNSUPPORTED, where, "empty Replace pattern");
        x->pattern = tok_strndup(json_string_value(s), json_string_length(s));
        x->pattern_len = json_string_length(s);
        return x->pattern ? LLMQ_OK : LLMQ_ERR_NOMEM;
    }
    x->re = tok_regex_compile(json_string_value(r), json_string_length(r), c, where);
    return x->re ? LLMQ_OK : c->err->code;
}

llmq_status tok_norm_parse(tok_norm **v, size_t *n, const tok_jctx *c, json_t *j, const char *where) {
    const char *type;
    llmq_status st = tok_jtype(c, j, where, &type);
    if (st) return st;
    char sub[256];
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(j, "normalizers");
        if (!json_is_array(arr))
            return tok_jfail(c, LLMQ_ERR_FORMAT, where, "Sequence needs an array \"normalizers\"");
        for (size_t i = 0; i < json_array_size(arr); i++) {
            snprintf(sub, sizeof sub, "%s.normalizers[%zu]", where, i);
            if ((st = tok_norm_parse(v, n, c, json_array_get(arr, i), sub))) return st;
        }
        return LLMQ_OK;
    }
    tok_norm x = {0};
    if (!strcmp(type, "NFC")) x.kind = TOK_NORM_NFC;
    else if (!strcmp(type, "NFD")) x.kind = TOK_NORM_NFD;
    else if (!strcmp(type, "NFKC")) x.kind = TOK_NORM_NFKC;
    else if (!strcmp(type, "NFKD")) x.kind = TOK_NORM_NFKD;
    else if (!strcmp(type, "Lowercase")) x.kind = TOK_NORM_LOWERCASE;
    else if (!strcmp(type, "Strip")) {
        x.kind = TOK_NORM_STRIP;
        x.strip_left = x.strip_right = 1;
        if ((st = tok_jbool(c, j, "strip_left", where, &x.strip_left)) ||
            (st = tok_jbool(c, j, "strip_right", where, &x.strip_right)))
            return st;
    } else if (!strcmp(type, "Replace")) {
        x.kind = TOK_NORM_REPLACE;
        const char *content = NULL;
        size_t clen = 0;
        if ((st = tok_jstr(c, j, "content", where, &content, &clen))) return st;
        if (!content) return tok_jfail(c, LLMQ_ERR_FORMAT, where, "Replace needs a string \"content\"");
        if ((st = parse_pattern(&x, c, j, where))) { norm_free_one(&x); return st; }
        if (!(x.content = tok_strndup(content, clen))) { norm_free_one(&x); return LLMQ_ERR_NOMEM; }
        x.content_len = clen;
    } else if (!strcmp(type, "Prepend")) {
        x.kind = TOK_NORM_PREPEND;
        const char *p = NULL;
        size_t plen = 0;
        if ((st = tok_jstr(c, j, "prepend", where, &p, &plen))) return st;
        if (!p) return tok_jfail(c, LLMQ_ERR_FORMAT, where, "Prepend needs a string \"prepend\"");
        if (!(x.content = tok_strndup(p, plen))) return LLMQ_ERR_NOMEM;
        x.content_len = plen;
    } else {
        return tok_jfail(c, LLMQ_ERR_UNSUPPORTED, where, "unsupported normalizer type '%s'", type);
    }
    if (norm_push(v, n, x)) { norm_free_one(&x); return LLMQ_ERR_NOMEM; }
    return LLMQ_OK;
}

/* ---------------------------------------------------------------- apply */

static llmq_status apply_unicode(const tok_norm *x, const char *s, size_t len, tok_text *out) {
    int opt = UTF8PROC_STABLE;
    switch (x->kind) {
    case TOK_NORM_NFC: opt |= UTF8PROC_COMPOSE; break;
    case TOK_NORM_NFD: opt |= UTF8PROC_DECOMPOSE; break;
    case TOK_NORM_NFKC: opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    default: opt |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
    }
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &dst,
                                      (utf8proc_option_t)opt);
    if (r < 0) {
        free(dst);
        return r == UTF8PROC_ERROR_NOMEM ? LLMQ_ERR_NOMEM : LLMQ_ERR_INVALID;
    }
    llmq_status st = tok_text_append(out, (const char *)dst, (size_t)r);
    free(dst);
    return st;
}

static llmq_status apply_lower(const char *s, size_t len, tok_text *out) {
    size_t i = 0;
    while (i < len) {
        size_t start = i;
        while (i < len && !((unsigned char)s[i] >= 'A' && (unsigned char)s[i] <= 'Z') &&
               (unsigned char)s[i] < 0x80)
            i++;
        if (i > start && tok_text_append(out, s + start, i - start)) return LLMQ_ERR_NOMEM;
        if (i >= len) break;
        size_t l;
        int32_t cp = llmq_utf8_decode(s + i, &l);
        char buf[8];
        size_t bl;
        if (cp == 0x130) { /* SpecialCasing: I WITH DOT ABOVE -> i + COMBINING DOT ABOVE */
            memcpy(buf, "i\xCC\x87", 3);
            bl = 3;
        } else {
            bl = llmq_utf8_encode(utf8proc_tolower(cp), buf);
        }
        if (tok_text_append(out, buf, bl)) return LLMQ_ERR_NOMEM;
        i += l;
    }
    return LLMQ_OK;
}

static llmq_status apply_strip(const tok_norm *x, const char *s, size_t len, tok_text *out) {
    size_t a = 0, b = len;
    if (x->strip_left) {
        while (a < b) {
            size_t l;
            int32_t cp = llmq_utf8_decode(s + a, &l);
            if (!tok_cp_is_space(cp)) break;
            a += l;
        }
    }
    if (x->strip_right) {
        while (b > a) {
            size_t k = b - 1;
            while (k > a && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
            size_t l;
            int32_t cp = llmq_utf8_decode(s + k, &l);
            if (!tok_cp_is_space(cp)) break;
            b = k;
        }
    }
    return tok_text_append(out, s + a, b - a);
}

static llmq_status apply_replace(const tok_norm *x, const char *s, size_t len, tok_text *out) {
    if (x->pattern) {
        size_t i = 0;
        while (i < len) {
            const char *m = memmem(s + i, len - i, x->pattern, x->pattern_len);
            size_t at = m ? (size_t)(m - s) : len;
            if (tok_text_append(out, s + i, at - i)) return LLMQ_ERR_NOMEM;
            if (!m) break;
            if (tok_text_append(out, x->content, x->content_len)) return LLMQ_ERR_NOMEM;
            i = at + x->pattern_len;
        }
        return LLMQ_OK;
    }
    tok_spans sp = {0};
    llmq_status st = tok_regex_find(x->re, s, len, &sp);
    for (size_t i = 0; !st && i < sp.n; i++) {
        if (sp.v[i].match) st = tok_text_append(out, x->content, x->content_len);
        else st = tok_text_append(out, s + sp.v[i].start, sp.v[i].end - sp.v[i].start);
    }
    free(sp.v);
    return st;
}

static llmq_status apply_one(const tok_norm *x, const char *s, size_t len, tok_text *out) {
    switch (x->kind) {
    case TOK_NORM_NFC: case TOK_NORM_NFD: case TOK_NORM_NFKC: case TOK_NORM_NFKD:
        return len ? apply_unicode(x, s, len, out) : LLMQ_OK;
    case TOK_NORM_LOWERCASE: return apply_lower(s, len, out);
    case TOK_NORM_STRIP: return apply_strip(x, s, len, out);
    case TOK_NORM_REPLACE: return apply_replace(x, s, len, out);
    case TOK_NORM_PREPEND:
        if (len && tok_text_append(out, x->content, x->content_len)) return LLMQ_ERR_NOMEM;
        return tok_text_append(out, s, len);
    }
    return LLMQ_ERR_INTERNAL;
}

llmq_status tok_norm_apply(const tok_norm *v, size_t n, const char *s, size_t len, tok_text *out) {
    if (n == 0) return tok_text_append(out, s, len);
    if (n == 1) return apply_one(&v[0], s, len, out);
    tok_text a = {0}, b = {0};
    llmq_status st = apply_one(&v[0], s, len, &a);
    for (size_t i = 1; !st && i + 1 < n; i++) {
        b.len = 0;
        st = apply_one(&v[i], a.data ? a.data : "", a.len, &b);
        tok_text t = a;
        a = b;
        b = t;
    }
    if (!st) st = apply_one(&v[n - 1], a.data ? a.data : "", a.len, out);
    tok_text_deinit(&a);
    tok_text_deinit(&b);
    return st;
}
