/*
 * tok_decoder.c — decoders and tok_decode(): ids back to text.
 *
 * As Hugging Face's Tokenizer::decode: ids become their token strings (added
 * tokens first, unknown ids dropped, special tokens dropped when asked), the
 * decoder chain maps the list of strings to a new list, and the result is the
 * concatenation; with no decoder the tokens are joined with " ".
 *
 * Supported decoders, each with HF's exact rules:
 *   ByteLevel     every token whose chars are all byte-level chars becomes those
 *                 bytes, any other token its own UTF-8; all bytes are then decoded
 *                 lossily into ONE string (a maximal invalid subpart -> U+FFFD)
 *   ByteFallback  a run of "<0xNN>" tokens becomes its bytes if they are valid
 *                 UTF-8, else one U+FFFD per byte
 *   Replace       per token, literal or regex pattern
 *   Fuse          all tokens into one
 *   Strip         per token, up to start/stop copies of one char at each end
 *   Metaspace     per token, the replacement char becomes ' ', except in the
 *                 first token where it is dropped (unless prepend_scheme never)
 *
 * For streaming, tok_decode_ex() also reports whether further ids could change the
 * end of the text: a truncated UTF-8 sequence (ByteLevel bytes or a ByteFallback
 * run), or any open ByteFallback run (one more byte can make the whole run invalid).
 */
#include <stdlib.h>
#include <string.h>

#include "worker/tokenizer/tok_internal.h"

static const char fffd[] = "\xEF\xBF\xBD";

static void dec_free_one(tok_dec *d) {
    free(d->pattern);
    free(d->content);
    if (d->re) tok_regex_free(d->re);
}

void tok_dec_free(tok_dec *v, size_t n) {
    for (size_t i = 0; i < n; i++) dec_free_one(&v[i]);
    free(v);
}

static llmq_status dec_push(tok_dec **v, size_t *n, tok_dec x) {
    tok_dec *p = realloc(*v, (*n + 1) * sizeof *p);
    if (!p) return LLMQ_ERR_NOMEM;
    p[*n] = x;
    *v = p;
    (*n)++;
    return LLMQ_OK;
}

/* One char of a string field, as a code point. */
static llmq_status one_char(const tok_jctx *c, json_t *j, const char *key, const char *where, int32_t *cp) {
    const char *s = NULL;
    size_t len = 0, l = 0;
    llmq_status st = tok_jstr(c, j, key, where, &s, &len);
    if (st) return st;
    if (!s || len == 0 || llmq_utf8_valid_prefix(s, len) != len || (llmq_utf8_decode(s, &l), l != len))
        return tok_jfail(c, LLMQ_ERR_FORMAT, where, "field \"%s\" must be one character", key);
    *cp = llmq_utf8_decode(s, &l);
    return LLMQ_OK;
}

llmq_status tok_dec_parse(tok_dec **v, size_t *n, const tok_jctx *c, json_t *j, const char *where) {
    const char *type;
    llmq_status st = tok_jtype(c, j, where, &type);
    if (st) return st;
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(j, "decoders");
        if (!json_is_array(arr))
            return tok_jfail(c, LLMQ_ERR_FORMAT, where, "Sequence needs an array \"decoders\"");
        for (size_t i = 0; i < json_array_size(arr); i++) {
            char sub[256];
            snprintf(sub, sizeof sub, "%s.decoders[%zu]", where, i);
            if ((st = tok_dec_parse(v, n, c, json_array_get(arr, i), sub))) return st;
        }
        return LLMQ_OK;
    }
    tok_dec d = {0};
    if (!strcmp(type, "ByteLevel")) d.kind = TOK_DEC_BYTELEVEL;
    else if (!strcmp(type, "ByteFallback")) d.kind = TOK_DEC_BYTEFALLBACK;
    else if (!strcmp(type, "Fuse")) d.kind = TOK_DEC_FUSE;
    else if (!strcmp(type, "Strip")) {
        d.kind = TOK_DEC_STRIP;
        long long start = 0, stop = 0;
        if ((st = one_char(c, j, "content", where, &d.strip_cp)) ||
            (st = tok_jint(c, j, "start", where, &start)) || (st = tok_jint(c, j, "stop", where, &stop)))
            return st;
        if (start < 0 || stop < 0)
            return tok_jfail(c, LLMQ_ERR_FORMAT, where, "Strip start/stop must be >= 0");
        d.start = (size_t)start;
        d.stop = (size_t)stop;
    } else if (!strcmp(type, "Metaspace")) {
        d.kind = TOK_DEC_METASPACE;
        if ((st = tok_metaspace_fields(c, j, where, &d.repl_cp, &d.prepend))) return st;
    } else if (!strcmp(type, "Replace")) {
        d.kind = TOK_DEC_REPLACE;
        const char *content = NULL;
        size_t clen = 0;
        if ((st = tok_jstr(c, j, "content", where, &content, &clen))) return st;
        json_t *p = json_object_get(j, "pattern");
        json_t *ps = p ? json_object_get(p, "String") : NULL;
        json_t *pr = p ? json_object_get(p, "Regex") : NULL;
        if (!content || !json_is_object(p) || (!json_is_string(ps) && !json_is_string(pr)))
            return tok_jfail(c, LLMQ_ERR_FORMAT, where,
                             "Replace needs \"pattern\" ({\"String\"|\"Regex\": ...}) and a string \"content\"");
        if (json_is_string(ps)) {
            if (!json_string_length(ps))
                return tok_jfail(c, LLMQ_ERR_UNSUPPORTED, where, "empty Replace pattern");
            d.pattern = tok_strndup(json_string_value(ps), json_string_length(ps));
            d.pattern_len = json_string_length(ps);
            if (!d.pattern) return LLMQ_ERR_NOMEM;
        } else if (!(d.re = tok_regex_compile(json_string_value(pr), json_string_length(pr), c, where))) {
            return c->err->code;
        }
        d.content = tok_strndup(content, clen);
        d.content_len = clen;
        if (!d.content) { dec_free_one(&d); return LLMQ_ERR_NOMEM; }
    } else {
        return tok_jfail(c, LLMQ_ERR_UNSUPPORTED, where, "unsupported decoder type '%s'", type);
    }
    if (dec_push(v, n, d)) { dec_free_one(&d); return LLMQ_ERR_NOMEM; }
    return LLMQ_OK;
}

/* ---------------------------------------------------------------- stages */

typedef struct dec_list {
    tok_text buf;
    tok_pieces p;
} dec_list;

static llmq_status list_add(dec_list *l, const char *s, size_t n) {
    size_t off = l->buf.len;
    if (tok_text_append(&l->buf, s, n)) return LLMQ_ERR_NOMEM;
    return tok_pieces_push(&l->p, off, n, -1, 0);
}

/* Extend the last item of l with s (the item must be the last bytes of buf). */
static llmq_status list_extend(dec_list *l, const char *s, size_t n) {
    if (tok_text_append(&l->buf, s, n)) return LLMQ_ERR_NOMEM;
    l->p.v[l->p.n - 1].len += n;
    return LLMQ_OK;
}

/* Piece i of list l.  A list whose buffer was never allocated holds only
 * empty pieces, and NULL + 0 is undefined: those read as "". */
#define ITEM(l, i) ((l)->buf.data ? (const char *)(l)->buf.data + (l)->p.v[i].off : "")
#define ITEM_LEN(l, i) ((l)->p.v[i].len)

/* Byte of a "<0xNN>" token (Rust u8::from_str_radix on the two chars), -1 if not one. */
static int byte_token(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return -1;
    int d[2];
    for (int k = 0; k < 2; k++) {
        char ch = s[3 + k];
        d[k] = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
             : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
    }
    if (s[3] == '+' && d[1] >= 0) return d[1];
    return d[0] < 0 || d[1] < 0 ? -1 : d[0] * 16 + d[1];
}

/* raw (tok_id_bytes): the bytes as they are, even when not valid UTF-8 on
 * their own, instead of decoding them lossily. */
static llmq_status stage_bytelevel(const dec_list *in, dec_list *out, int *pending, int raw) {
    tok_text bytes = {0};
    llmq_status st = LLMQ_OK;
    for (size_t i = 0; i < in->p.n && !st; i++) {
        const char *s = ITEM(in, i);
        size_t n = ITEM_LEN(in, i), k = 0, mark = bytes.len;
        while (k < n) {
            size_t l;
            int b = tok_cp_byte(llmq_utf8_decode(s + k, &l));
            if (b < 0) break;
            char c = (char)b;
            if ((st = tok_text_append(&bytes, &c, 1))) break;
            k += l;
        }
        if (!st && k < n) { /* not all byte-level chars: the token's own bytes */
            bytes.len = mark;
            st = tok_text_append(&bytes, s, n);
        }
    }
    size_t off = out->buf.len;
    if (!st && raw) {
        st = tok_text_append(&out->buf, bytes.data ? bytes.data : "", bytes.len);
    } else if (!st) {
        const unsigned char *b = (const unsigned char *)(bytes.data ? bytes.data : "");
        size_t held = 0;
        st = tok_utf8_lossy_append(&out->buf, b, bytes.len, pending ? &held : NULL);
        if (held) *pending |= TOK_PENDING_INCOMPLETE;
    }
    if (!st) st = tok_pieces_push(&out->p, off, out->buf.len - off, -1, 0);
    tok_text_deinit(&bytes);
    return st;
}

static llmq_status flush_run(dec_list *out, const unsigned char *run, size_t n, int last, int *pending) {
    if (n == 0) return LLMQ_OK;
    if (llmq_utf8_valid_prefix((const char *)run, n) == n) return list_add(out, (const char *)run, n);
    if (last && pending) {
        size_t t = llmq_utf8_incomplete_tail((const char *)run, n);
        if (t && llmq_utf8_valid_prefix((const char *)run, n - t) == n - t) *pending |= TOK_PENDING_RUN_TRUNCATED;
    }
    for (size_t i = 0; i < n; i++)
        if (list_add(out, fffd, 3)) return LLMQ_ERR_NOMEM;
    return LLMQ_OK;
}

/* raw (tok_id_bytes): a byte token is its byte, valid UTF-8 or not. */
static llmq_status stage_bytefallback(const dec_list *in, dec_list *out, int *pending, int raw) {
    unsigned char *run = malloc(in->p.n + 1);
    if (!run) return LLMQ_ERR_NOMEM;
    size_t rn = 0;
    llmq_status st = LLMQ_OK;
    for (size_t i = 0; i < in->p.n && !st; i++) {
        int b = byte_token(ITEM(in, i), ITEM_LEN(in, i));
        if (b >= 0 && raw) {
            char c = (char)b;
            st = list_add(out, &c, 1);
            continue;
        }
        if (b >= 0) {
            run[rn++] = (unsigned char)b;
            continue;
        }
        st = flush_run(out, run, rn, 0, pending);
        rn = 0;
        if (!st) st = list_add(out, ITEM(in, i), ITEM_LEN(in, i));
    }
    if (!st && rn && pending) *pending |= TOK_PENDING_OPEN_RUN;
    if (!st) st = flush_run(out, run, rn, 1, pending);
    free(run);
    return st;
}

static llmq_status stage_replace(const tok_dec *d, const dec_list *in, dec_list *out) {
    tok_spans sp = {0};
    llmq_status st = LLMQ_OK;
    for (size_t i = 0; i < in->p.n && !st; i++) {
        const char *s = ITEM(in, i);
        size_t n = ITEM_LEN(in, i);
        if ((st = list_add(out, "", 0))) break;
        if (d->re) {
            sp.n = 0;
            st = tok_regex_find(d->re, s, n, &sp);
            for (size_t k = 0; k < sp.n && !st; k++)
                st = sp.v[k].match ? list_extend(out, d->content, d->content_len)
                                   : list_extend(out, s + sp.v[k].start, sp.v[k].end - sp.v[k].start);
            continue;
        }
        size_t k = 0;
        while (k < n && !st) {
            const char *m = memmem(s + k, n - k, d->pattern, d->pattern_len);
            size_t at = m ? (size_t)(m - s) : n;
            st = list_extend(out, s + k, at - k);
            if (!m || st) break;
            st = list_extend(out, d->content, d->content_len);
            k = at + d->pattern_len;
        }
    }
    free(sp.v);
    return st;
}

static llmq_status stage_fuse(const dec_list *in, dec_list *out) {
    llmq_status st = list_add(out, "", 0);
    for (size_t i = 0; i < in->p.n && !st; i++) st = list_extend(out, ITEM(in, i), ITEM_LEN(in, i));
    return st;
}

static llmq_status stage_strip(const tok_dec *d, const dec_list *in, dec_list *out) {
    for (size_t i = 0; i < in->p.n; i++) {
        const char *s = ITEM(in, i);
        size_t n = ITEM_LEN(in, i), a = 0, b = n, l;
        for (size_t k = 0; k < d->start && a < n; k++) {
            if (llmq_utf8_decode(s + a, &l) != d->strip_cp) break;
            a += l;
        }
        for (size_t k = 0; k < d->stop && b > 0; k++) {
            size_t j = b - 1;
            while (j > 0 && ((unsigned char)s[j] & 0xC0) == 0x80) j--;
            if (llmq_utf8_decode(s + j, &l) != d->strip_cp) break;
            b = j;
        }
        if (list_add(out, s + a, a < b ? b - a : 0)) return LLMQ_ERR_NOMEM;
    }
    return LLMQ_OK;
}

/* mid (tok_id_bytes): no token is the text's first, so every replacement
 * char is a space. */
static llmq_status stage_metaspace(const tok_dec *d, const dec_list *in, dec_list *out, int mid) {
    for (size_t i = 0; i < in->p.n; i++) {
        const char *s = ITEM(in, i);
        size_t n = ITEM_LEN(in, i), k = 0;
        if (list_add(out, "", 0)) return LLMQ_ERR_NOMEM;
        while (k < n) {
            size_t l;
            int32_t cp = llmq_utf8_decode(s + k, &l);
            llmq_status st;
            if (cp != d->repl_cp) st = list_extend(out, s + k, l);
            else if (i == 0 && !mid && d->prepend != TOK_PREPEND_NEVER) st = LLMQ_OK;
            else st = list_extend(out, " ", 1);
            if (st) return st;
            k += l;
        }
    }
    return LLMQ_OK;
}

/* piece: decoding one id as a piece of the middle of a text (tok_id_bytes). */
static llmq_status run_stage(const tok_dec *d, const dec_list *in, dec_list *out, int *pending, int piece) {
    switch (d->kind) {
    case TOK_DEC_BYTELEVEL: return stage_bytelevel(in, out, pending, piece);
    case TOK_DEC_BYTEFALLBACK: return stage_bytefallback(in, out, pending, piece);
    case TOK_DEC_REPLACE: return stage_replace(d, in, out);
    case TOK_DEC_FUSE: return stage_fuse(in, out);
    case TOK_DEC_STRIP: return stage_strip(d, in, out);
    case TOK_DEC_METASPACE: return stage_metaspace(d, in, out, piece);
    }
    return LLMQ_ERR_INTERNAL;
}

/* The decoder chain over *a, stage by stage through *b; the result ends in
 * *a.  piece: one id in the middle of a text (tok_id_bytes), where a Strip
 * after a Fuse is left out, since it trims only the whole text's start. */
static llmq_status run_chain(const tokenizer *t, dec_list *a, dec_list *b, int *pending, int piece) {
    llmq_status st = LLMQ_OK;
    int fused = 0;
    for (size_t k = 0; k < t->n_dec && !st; k++) {
        if (piece && t->dec[k].kind == TOK_DEC_STRIP && fused) continue;
        if (t->dec[k].kind == TOK_DEC_FUSE) fused = 1;
        b->buf.len = 0;
        b->p.n = 0;
        st = run_stage(&t->dec[k], a, b, pending, piece);
        const dec_list tmp = *a;
        *a = *b;
        *b = tmp;
    }
    return st;
}

/* ---------------------------------------------------------------- decode */

int tok_id_dropped(const tokenizer *t, int32_t id, int skip_special) {
    if (id < 0 || id >= t->n_ids || t->id_len[id] == UINT32_MAX) return 1;
    return skip_special && t->id_special[id];
}

int tok_id_is_byte_token(const tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_ids && (t->id_byte[id] & 1);
}

int tok_id_starts_mid_char(const tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_ids && (t->id_byte[id] & 2);
}

llmq_status tok_decode_ex(const tokenizer *t, const int32_t *ids, size_t n, int skip_special,
                          tok_text *out, int *pending) {
    dec_list a = {0}, b = {0};
    llmq_status st = LLMQ_OK;
    if (pending) *pending = 0;
    for (size_t i = 0; i < n && !st; i++) {
        if (tok_id_dropped(t, ids[i], skip_special)) continue;
        st = list_add(&a, t->id_text.data + t->id_off[ids[i]], t->id_len[ids[i]]);
    }
    if (!st && !t->has_decoder) {
        for (size_t i = 0; i < a.p.n && !st; i++) {
            if (i && (st = tok_text_append(out, " ", 1))) break;
            st = tok_text_append(out, ITEM(&a, i), ITEM_LEN(&a, i));
        }
        goto done;
    }
    if (!st) st = run_chain(t, &a, &b, pending, 0);
    for (size_t i = 0; i < a.p.n && !st; i++) st = tok_text_append(out, ITEM(&a, i), ITEM_LEN(&a, i));
done:
    if (!st && !out->data) st = tok_text_append(out, "", 0);
    tok_text_deinit(&a.buf);
    tok_text_deinit(&b.buf);
    tok_pieces_free(&a.p);
    tok_pieces_free(&b.p);
    return st;
}

/* The chain on one id, as a piece of the middle of a text: byte tokens stay
 * raw bytes and Metaspace's replacement is a space (run_stage's `piece`);
 * a Strip that follows a Fuse trims only the start of the whole text, so it
 * is left out; with no decoder, tokens are joined with " ", which this id
 * gets in front. */
llmq_status tok_id_bytes(const tokenizer *t, int32_t id, tok_text *out) {
    if (tok_id_dropped(t, id, 0)) return out->data ? LLMQ_OK : tok_text_append(out, "", 0);
    const char *s = t->id_text.data + t->id_off[id];
    const size_t n = t->id_len[id];
    if (!t->has_decoder) {
        llmq_status st = tok_text_append(out, " ", 1);
        return st ? st : tok_text_append(out, s, n);
    }
    dec_list a = {0}, b = {0};
    llmq_status st = list_add(&a, s, n);
    if (!st) st = run_chain(t, &a, &b, NULL, 1);
    for (size_t i = 0; i < a.p.n && !st; i++) st = tok_text_append(out, ITEM(&a, i), ITEM_LEN(&a, i));
    if (!st && !out->data) st = tok_text_append(out, "", 0);
    tok_text_deinit(&a.buf);
    tok_text_deinit(&b.buf);
    tok_pieces_free(&a.p);
    tok_pieces_free(&b.p);
    return st;
}

llmq_status tok_decode_append(const tokenizer *t, const int32_t *ids, size_t n, int skip_special,
                              tok_text *out) {
    return tok_decode_ex(t, ids, n, skip_special, out, NULL);
}

char *tok_decode(const tokenizer *t, const int32_t *ids, size_t n, int skip_special) {
    tok_text o = {0};
    if (tok_decode_ex(t, ids, n, skip_special, &o, NULL)) {
        tok_text_deinit(&o);
        return NULL;
    }
    return o.data;
}
