/*
 * tok_pretok.c — pre-tokenizers: split normalized pieces into words for the model.
 *
 * Supported: Sequence (flattened), Split (String or Regex pattern, the five
 * behaviors, invert), ByteLevel (add_prefix_space, GPT-2 regex when use_regex,
 * then every byte becomes its byte-level char), Metaspace (replacement,
 * prepend_scheme always/first/never, split), Digits (ASCII digits, individually
 * or in runs), Punctuation (Falcon), Whitespace and WhitespaceSplit.  The last
 * three are Splits on a character class, written as PCRE2 patterns with the
 * Unicode classes HF's Rust code uses:
 *   Punctuation      ASCII punctuation or general category P*, each char a match
 *   Whitespace       keep runs of \w (Rust regex: Alphabetic, M, Nd, Pc, ZWJ/ZWNJ)
 *                    and runs of non-\w non-space; drop white space
 *   WhitespaceSplit  drop White_Space chars, keep what is between
 * Semantics follow Hugging Face's NormalizedString::split: a pattern yields a
 * cover of the piece by matched / unmatched ranges, the behavior regroups
 * them, empty pieces are dropped.  Added-token pieces pass through.
 */
#include <stdlib.h>
#include <string.h>

#include "worker/tokenizer/tok_internal.h"

/* GPT-2's pattern, what ByteLevel(use_regex=true) applies internally. */
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char punct_pattern[] = "[\\p{P}!-/:-@\\[-`{-~]";
static const char ws_word_pattern[] =
    "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]+"
    "|[^\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}\\t-\\r\\x{85}\\p{Z}]+";
static const char ws_split_pattern[] = "[\\t-\\r\\x{85}\\p{Z}]";

/* A Split on one of the patterns above. */
static llmq_status builtin_split(tok_pretok *x, const tok_jctx *c, const char *where, const char *pat,
                                 tok_split_behavior b, int invert) {
    x->kind = TOK_PT_SPLIT;
    x->behavior = b;
    x->invert = invert;
    x->re = tok_regex_compile(pat, strlen(pat), c, where);
    return x->re ? LLMQ_OK : c->err->code;
}

static llmq_status parse_behavior(const tok_jctx *c, json_t *j, const char *where, tok_split_behavior *b) {
    const char *beh = NULL;
    llmq_status st = tok_jstr(c, j, "behavior", where, &beh, NULL);
    if (st || !beh) return st;
    if (!strcmp(beh, "Removed")) *b = TOK_SPLIT_REMOVED;
    else if (!strcmp(beh, "Isolated")) *b = TOK_SPLIT_ISOLATED;
    else if (!strcmp(beh, "MergedWithPrevious")) *b = TOK_SPLIT_MERGED_PREV;
    else if (!strcmp(beh, "MergedWithNext")) *b = TOK_SPLIT_MERGED_NEXT;
    else if (!strcmp(beh, "Contiguous")) *b = TOK_SPLIT_CONTIGUOUS;
    else return tok_jfail(c, LLMQ_ERR_UNSUPPORTED, where, "unknown Split behavior '%s'", beh);
    return LLMQ_OK;
}

static void pt_free_one(tok_pretok *x) {
    if (x->re) tok_regex_free(x->re);
    free(x->literal);
}

void tok_pretok_free(tok_pretok *v, size_t n) {
    for (size_t i = 0; i < n; i++) pt_free_one(&v[i]);
    free(v);
}

void tok_pt_scratch_free(tok_pt_scratch *s) {
    tok_pieces_free(&s->tmp);
    free(s->spans.v);
    s->spans.v = NULL;
    s->spans.n = s->spans.cap = 0;
}

static llmq_status pt_push(tok_pretok **v, size_t *n, tok_pretok x) {
    tok_pretok *p = realloc(*v, (*n + 1) * sizeof *p);
    if (!p) return LLMQ_ERR_NOMEM;
    p[*n] = x;
    *v = p;
    (*n)++;
    return LLMQ_OK;
}

static llmq_status parse_prepend(const tok_jctx *c, json_t *j, const char *where, tok_prepend *out) {
    const char *s = NULL;
    llmq_status st = tok_jstr(c, j, "prepend_scheme", where, &s, NULL);
    if (st) return st;
    if (!s) {
        int aps = 1; /* older files: add_prefix_space */
        if ((st = tok_jbool(c, j, "add_prefix_space", where, &aps))) return st;
        *out = aps ? TOK_PREPEND_ALWAYS : TOK_PREPEND_NEVER;
        return LLMQ_OK;
    }
    if (!strcmp(s, "always")) *out = TOK_PREPEND_ALWAYS;
    else if (!strcmp(s, "never")) *out = TOK_PREPEND_NEVER;
    else if (!strcmp(s, "first")) *out = TOK_PREPEND_FIRST;
    else return tok_jfail(c, LLMQ_ERR_UNSUPPORTED, where, "unknown prepend_scheme '%s'", s);
    return LLMQ_OK;
}

/* The Metaspace replacement: one character ("replacement", older "str_rep"). */
static llmq_status parse_replacement(const tok_jctx *c, json_t *j, const char *where, char *out,
                                     size_t *out_len, int32_t *cp) {
    const char *s = NULL;
    size_t len = 0;
    llmq_status st = tok_jstr(c, j, "replacement", where, &s, &len);
    if (!st && !s) st = tok_jstr(c, j, "str_rep", where, &s, &len);
    if (st) return st;
    if (!s) { s = "\xE2\x96\x81"; len = 3; } /* U+2581 */
    size_t l = 0;
    if (len == 0 || len > 4 || llmq_utf8_valid_prefix(s, len) != len || (llmq_utf8_decode(s, &l), l != len))
        return tok_jfail(c, LLMQ_ERR_FORMAT, where, "Metaspace replacement must be one character");
    memcpy(out, s, len);
    out[len] = '\0';
    *out_len = len;
    if (cp) *cp = llmq_utf8_decode(s, &l);
    return LLMQ_OK;
}

llmq_status tok_metaspace_fields(const tok_jctx *c, json_t *j, const char *where, int32_t *cp,
                                 tok_prepend *prepend) {
    char buf[8];
    size_t len;
    llmq_status st = parse_replacement(c, j, where, buf, &len, cp);
    return st ? st : parse_prepend(c, j, where, prepend);
}

llmq_status tok_pretok_parse(tok_pretok **v, size_t *n, const tok_jctx *c, json_t *j,
                             const char *where) {
    const char *type;
    llmq_status st = tok_jtype(c, j, where, &type);
    if (st) return st;
    char sub[256];
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(j, "pretokenizers");
        if (!json_is_array(arr))
            return tok_jfail(c, LLMQ_ERR_FORMAT, where, "Sequence needs an array \"pretokenizers\"");
        for (size_t i = 0; i < json_array_size(arr); i++) {
            snprintf(sub, sizeof sub, "%s.pretokenizers[%zu]", where, i);
            if ((st = tok_pretok_parse(v, n, c, json_array_get(arr, i), sub))) return st;
        }
        return LLMQ_OK;
    }
    tok_pretok x = {0};
    if (!strcmp(type, "Split")) {
        x.kind = TOK_PT_SPLIT;
        json_t *p = json_object_get(j, "pattern");
        json_t *ps = p ? json_object_get(p, "String") : NULL;
        json_t *pr = p ? json_object_get(p, "Regex") : NULL;
        if (!json_is_object(p) || (!json_is_string(ps) && !json_is_string(pr)))
            return tok_jfail(c, LLMQ_ERR_FORMAT, where,
                             "field \"pattern\" must be {\"String\": ...} or {\"Regex\": ...}");
        x.behavior = (tok_split_behavior)-1;
        if ((st = parse_behavior(c, j, where, &x.behavior)) ||
            (st = tok_jbool(c, j, "invert", where, &x.invert)))
            return st;
        if ((int)x.behavior < 0) return tok_jfail(c, LLMQ_ERR_FORMAT, where, "Split needs a string \"behavior\"");
        if (json_is_string(ps)) {
            if (json_string_length(ps) == 0)
                return tok_jfail(c, LLMQ_ERR_UNSUPPORTED, where, "empty Split pattern");
            x.literal = tok_strndup(json_string_value(ps), json_string_length(ps));
            x.literal_len = json_string_length(ps);
            if (!x.literal) return LLMQ_ERR_NOMEM;
        } else {
            x.re = tok_regex_compile(json_string_value(pr), json_string_length(pr), c, where);
            if (!x.re) return c->err->code;
        }
    } else if (!strcmp(type, "ByteLevel")) {
        x.kind = TOK_PT_BYTELEVEL;
        x.add_prefix_space = 1;
        int use_regex = 1;
        if ((st = tok_jbool(c, j, "add_prefix_space", where, &x.add_prefix_space)) ||
            (st = tok_jbool(c, j, "use_regex", where, &use_regex)))
            return st;
        if (use_regex) {
            x.re = tok_regex_compile(gpt2_pattern, sizeof gpt2_pattern - 1, c, where);
            if (!x.re) return c->err->code;
        }
    } else if (!strcmp(type, "Metaspace")) {
        x.kind = TOK_PT_METASPACE;
        x.split = 1;
        if ((st = parse_replacement(c, j, where, x.repl, &x.repl_len, NULL)) ||
            (st = parse_prepend(c, j, where, &x.prepend)) ||
            (st = tok_jbool(c, j, "split", where, &x.split)))
            return st;
    } else if (!strcmp(type, "Punctuation")) {
        tok_split_behavior b = TOK_SPLIT_ISOLATED;
        if ((st = parse_behavior(c, j, where, &b)) || (st = builtin_split(&x, c, where, punct_pattern, b, 0)))
            return st;
    } else if (!strcmp(type, "Whitespace")) {
        if ((st = builtin_split(&x, c, where, ws_word_pattern, TOK_SPLIT_REMOVED, 1))) return st;
    } else if (!strcmp(type, "WhitespaceSplit")) {
        if ((st = builtin_split(&x, c, where, ws_split_pattern, TOK_SPLIT_REMOVED, 0))) return st;
    } else if (!strcmp(type, "Digits")) {
        x.kind = TOK_PT_DIGITS;
        if ((st = tok_jbool(c, j, "individual_digits", where, &x.individual_digits))) return st;
    } else {
        return tok_jfail(c, LLMQ_ERR_UNSUPPORTED, where, "unsupported pre_tokenizer type '%s'", type);
    }
    if (pt_push(v, n, x)) { pt_free_one(&x); return LLMQ_ERR_NOMEM; }
    return LLMQ_OK;
}

/* ---------------------------------------------------------------- splitting */

/* Cover s by literal matches of pat (non-overlapping, leftmost). */
static llmq_status find_literal(const char *s, size_t len, const char *pat, size_t plen, tok_spans *o) {
    if (len == 0) return tok_spans_push(o, 0, 0, 0);
    size_t prev = 0, i = 0;
    while (i + plen <= len) {
        const char *m = memmem(s + i, len - i, pat, plen);
        if (!m) break;
        size_t at = (size_t)(m - s);
        if (prev != at && tok_spans_push(o, prev, at, 0)) return LLMQ_ERR_NOMEM;
        if (tok_spans_push(o, at, at + plen, 1)) return LLMQ_ERR_NOMEM;
        prev = i = at + plen;
    }
    if (prev != len) return tok_spans_push(o, prev, len, 0);
    return LLMQ_OK;
}

/* Cover s by ASCII-digit chars, each a match of its own (HF char patterns). */
static llmq_status find_digits(const char *s, size_t len, tok_spans *o) {
    if (len == 0) return tok_spans_push(o, 0, 0, 0);
    size_t prev = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') continue;
        if (prev != i && tok_spans_push(o, prev, i, 0)) return LLMQ_ERR_NOMEM;
        if (tok_spans_push(o, i, i + 1, 1)) return LLMQ_ERR_NOMEM;
        prev = i + 1;
    }
    if (prev != len) return tok_spans_push(o, prev, len, 0);
    return LLMQ_OK;
}

/* Regroup the cover sp (in place) by behavior, as HF NormalizedString::split;
 * after it, sp->v[0..n) are the pieces to keep (empty ones still included). */
static void apply_behavior(tok_spans *sp, tok_split_behavior b, int invert) {
    tok_span *v = sp->v;
    size_t n = sp->n, k = 0;
    if (invert)
        for (size_t i = 0; i < n; i++) v[i].match = !v[i].match;
    switch (b) {
    case TOK_SPLIT_ISOLATED:
        return;
    case TOK_SPLIT_REMOVED:
        for (size_t i = 0; i < n; i++)
            if (!v[i].match) v[k++] = v[i];
        break;
    case TOK_SPLIT_MERGED_PREV: {
        int prev_match = 0;
        for (size_t i = 0; i < n; i++) {
            if (v[i].match && !prev_match && k > 0) v[k - 1].end = v[i].end;
            else v[k++] = v[i];
            prev_match = v[i].match;
        }
        break;
    }
    case TOK_SPLIT_MERGED_NEXT: {
        /* Walk backwards, merging a match into the piece that follows it. */
        int prev_match = 0;
        size_t w = n; /* v[w..n) hold the result, in order */
        for (size_t i = n; i-- > 0;) {
            tok_span cur = v[i];
            if (cur.match && !prev_match && w < n) v[w].start = cur.start;
            else v[--w] = cur;
            prev_match = cur.match;
        }
        memmove(v, v + w, (n - w) * sizeof *v);
        k = n - w;
        break;
    }
    case TOK_SPLIT_CONTIGUOUS: {
        int prev_match = 0;
        for (size_t i = 0; i < n; i++) {
            if (v[i].match == prev_match && k > 0) v[k - 1].end = v[i].end;
            else v[k++] = v[i];
            prev_match = v[i].match;
        }
        break;
    }
    }
    sp->n = k;
}

/* Push the kept spans of piece in (text at buf offset base) to out. */
static llmq_status push_spans(const tok_spans *sp, size_t base, uint32_t first, tok_pieces *out) {
    for (size_t i = 0; i < sp->n; i++) {
        const tok_span *s = &sp->v[i];
        if (s->end <= s->start) continue;
        llmq_status st = tok_pieces_push(out, base + s->start, s->end - s->start, -1,
                                         tok_first_at(first, s->start));
        if (st) return st;
    }
    return LLMQ_OK;
}

/* Append the byte-level form of buf[off..off+len) to buf as a new piece. */
static llmq_status bytelevel_piece(tok_text *buf, size_t off, size_t len, uint32_t first,
                                   tok_pieces *out) {
    if (tok_text_reserve(buf, 2 * len)) return LLMQ_ERR_NOMEM; /* no realloc below */
    const unsigned char *s = (const unsigned char *)buf->data + off;
    unsigned char *o = (unsigned char *)buf->data + buf->len, *o0 = o;
    uint32_t first_out = 0;
    for (size_t i = 0; i < len; i++) {
        if (i == first) first_out = (uint32_t)(o - o0);
        int32_t cp = tok_byte_cp(s[i]);
        if (cp < 0x80) {
            *o++ = (unsigned char)cp;
        } else {
            *o++ = (unsigned char)(0xC0 | (cp >> 6));
            *o++ = (unsigned char)(0x80 | (cp & 0x3F));
        }
    }
    size_t start = buf->len, n = (size_t)(o - o0);
    if (first >= len) first_out = (uint32_t)n;
    buf->len += n;
    buf->data[buf->len] = '\0';
    return tok_pieces_push(out, start, n, -1, first_out);
}

static llmq_status run_bytelevel(const tok_pretok *x, tok_text *buf, const tok_piece *in,
                                 tok_pieces *out, tok_pt_scratch *sc) {
    size_t off = in->off, len = in->len;
    uint32_t first = in->first;
    if (x->add_prefix_space && buf->data[off] != ' ') {
        if (first) first++; /* the space aligns with the first char */
        size_t start = buf->len;
        if (tok_text_reserve(buf, len + 1)) return LLMQ_ERR_NOMEM; /* source stays put */
        tok_text_append(buf, " ", 1);
        tok_text_append(buf, buf->data + off, len);
        off = start;
        len++;
    }
    if (!x->re) return bytelevel_piece(buf, off, len, first, out);
    sc->spans.n = 0;
    llmq_status st = tok_regex_find(x->re, buf->data + off, len, &sc->spans);
    if (st) return st;
    for (size_t i = 0; i < sc->spans.n; i++) {
        tok_span s = sc->spans.v[i];
        if (s.end <= s.start) continue;
        if ((st = bytelevel_piece(buf, off + s.start, s.end - s.start,
                                  tok_first_at(first, s.start), out)))
            return st;
    }
    return LLMQ_OK;
}

static llmq_status run_metaspace(const tok_pretok *x, tok_text *buf, const tok_piece *in,
                                 tok_pieces *out, tok_pt_scratch *sc) {
    size_t start = buf->len, off = in->off, len = in->len;
    /* Replace every ' ' by the replacement, then maybe prepend one. */
    tok_text tmp = {0};
    llmq_status st = LLMQ_OK;
    uint32_t first = 0;
    for (size_t i = 0; i < len && !st; i++) {
        if (i == in->first) first = (uint32_t)tmp.len;
        char ch = buf->data[off + i];
        st = ch == ' ' ? tok_text_append(&tmp, x->repl, x->repl_len) : tok_text_append(&tmp, &ch, 1);
    }
    if (in->first >= len) first = (uint32_t)tmp.len;
    if (!st && len) {
        int starts = tmp.len >= x->repl_len && !memcmp(tmp.data, x->repl, x->repl_len);
        int prepend = !starts && (x->prepend == TOK_PREPEND_ALWAYS ||
                                  (x->prepend == TOK_PREPEND_FIRST && in->first));
        if (prepend) st = tok_text_append(buf, x->repl, x->repl_len);
        if (prepend && first) first += (uint32_t)x->repl_len;
        if (!st) st = tok_text_append(buf, tmp.data, tmp.len);
    }
    tok_text_deinit(&tmp);
    if (st) return st;
    size_t n = buf->len - start;
    if (!x->split) return n ? tok_pieces_push(out, start, n, -1, first) : LLMQ_OK;
    sc->spans.n = 0;
    if ((st = find_literal(buf->data + start, n, x->repl, x->repl_len, &sc->spans))) return st;
    apply_behavior(&sc->spans, TOK_SPLIT_MERGED_NEXT, 0);
    return push_spans(&sc->spans, start, first, out);
}

static llmq_status run_one(const tok_pretok *x, tok_text *buf, const tok_piece *in, tok_pieces *out,
                           tok_pt_scratch *sc) {
    llmq_status st;
    switch (x->kind) {
    case TOK_PT_BYTELEVEL: return run_bytelevel(x, buf, in, out, sc);
    case TOK_PT_METASPACE: return run_metaspace(x, buf, in, out, sc);
    case TOK_PT_SPLIT:
        sc->spans.n = 0;
        st = x->re ? tok_regex_find(x->re, buf->data + in->off, in->len, &sc->spans)
                   : find_literal(buf->data + in->off, in->len, x->literal, x->literal_len, &sc->spans);
        if (st) return st;
        apply_behavior(&sc->spans, x->behavior, x->invert);
        return push_spans(&sc->spans, in->off, in->first, out);
    case TOK_PT_DIGITS:
        sc->spans.n = 0;
        if ((st = find_digits(buf->data + in->off, in->len, &sc->spans))) return st;
        apply_behavior(&sc->spans, x->individual_digits ? TOK_SPLIT_ISOLATED : TOK_SPLIT_CONTIGUOUS, 0);
        return push_spans(&sc->spans, in->off, in->first, out);
    }
    return LLMQ_ERR_INTERNAL;
}

llmq_status tok_pretok_apply(const tok_pretok *v, size_t n, tok_text *buf, tok_pieces *p,
                             tok_pt_scratch *sc) {
    for (size_t k = 0; k < n; k++) {
        sc->tmp.n = 0;
        for (size_t i = 0; i < p->n; i++) {
            const tok_piece in = p->v[i];
            llmq_status st = in.id >= 0 ? tok_pieces_push(&sc->tmp, in.off, in.len, in.id, in.first)
                                        : in.len ? run_one(&v[k], buf, &in, &sc->tmp, sc) : LLMQ_OK;
            if (st) return st;
        }
        tok_pieces t = *p;
        *p = sc->tmp;
        sc->tmp = t;
    }
    return LLMQ_OK;
}
