/*
 * tok_added.c — added tokens (tokenizer.json "added_tokens"): parsing, and
 * finding them in text before the model sees it.
 *
 * As Hugging Face's AddedVocabulary: tokens with normalized == false are searched
 * in the original text, the others in each normalized piece (their own content is
 * normalized first); matches are leftmost-longest and non-overlapping; a
 * single_word token must not touch a word character on either side; lstrip/rstrip
 * make the match swallow adjacent white space.  Search is a scan with the tokens
 * bucketed by first byte, longest first, so most bytes cost one table lookup.
 */
#include <stdlib.h>
#include <string.h>

#include "worker/tokenizer/tok_internal.h"

void tok_added_free(tok_added *a) {
    for (size_t i = 0; i < a->n; i++) {
        if (a->tok[i].match != a->tok[i].content) free(a->tok[i].match);
        free(a->tok[i].content);
    }
    free(a->tok);
    free(a->raw.order);
    free(a->norm.order);
    memset(a, 0, sizeof *a);
}

llmq_status tok_added_parse(tok_added *a, const tok_jctx *c, json_t *arr) {
    if (!arr || json_is_null(arr)) return LLMQ_OK;
    if (!json_is_array(arr))
        return tok_jfail(c, LLMQ_ERR_FORMAT, "added_tokens", "must be an array");
    size_t n = json_array_size(arr);
    a->tok = calloc(n ? n : 1, sizeof *a->tok);
    if (!a->tok) return LLMQ_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        char where[64];
        snprintf(where, sizeof where, "added_tokens[%zu]", i);
        json_t *j = json_array_get(arr, i);
        if (!json_is_object(j)) return tok_jfail(c, LLMQ_ERR_FORMAT, where, "must be an object");
        long long id = -1;
        const char *content = NULL;
        size_t len = 0;
        int special = 0, lstrip = 0, rstrip = 0, single_word = 0, normalized = -1;
        llmq_status st;
        if ((st = tok_jint(c, j, "id", where, &id)) || (st = tok_jstr(c, j, "content", where, &content, &len)) ||
            (st = tok_jbool(c, j, "special", where, &special)) ||
            (st = tok_jbool(c, j, "lstrip", where, &lstrip)) ||
            (st = tok_jbool(c, j, "rstrip", where, &rstrip)) ||
            (st = tok_jbool(c, j, "single_word", where, &single_word)) ||
            (st = tok_jbool(c, j, "normalized", where, &normalized)))
            return st;
        if (id < 0 || id > INT32_MAX - 1)
            return tok_jfail(c, LLMQ_ERR_FORMAT, where, "needs a non-negative integer \"id\"");
        if (!content) return tok_jfail(c, LLMQ_ERR_FORMAT, where, "needs a string \"content\"");
        if (normalized < 0) normalized = !special; /* HF's default */
        tok_added_tok *t = &a->tok[a->n++];
        t->id = (int32_t)id;
        if (!(t->content = tok_strndup(content, len))) return LLMQ_ERR_NOMEM;
        t->len = len;
        t->match = t->content;
        t->match_len = len;
        t->special = (uint8_t)special;
        t->lstrip = (uint8_t)lstrip;
        t->rstrip = (uint8_t)rstrip;
        t->single_word = (uint8_t)single_word;
        t->normalized = (uint8_t)normalized;
    }
    return LLMQ_OK;
}

static int by_first_then_longest(const void *x, const void *y, void *ctx) {
    const tok_added *set = ctx;
    const tok_added_tok *a = &set->tok[*(const uint32_t *)x];
    const tok_added_tok *b = &set->tok[*(const uint32_t *)y];
    unsigned char fa = (unsigned char)a->match[0], fb = (unsigned char)b->match[0];
    if (fa != fb) return fa < fb ? -1 : 1;
    if (a->match_len != b->match_len) return a->match_len > b->match_len ? -1 : 1;
    uint32_t ia = *(const uint32_t *)x, ib = *(const uint32_t *)y;
    return ia < ib ? -1 : ia > ib;
}

static llmq_status build_set(tok_added *a, tok_added_set *set, int normalized) {
    size_t k = 0;
    set->order = malloc((a->n ? a->n : 1) * sizeof *set->order);
    if (!set->order) return LLMQ_ERR_NOMEM;
    for (size_t i = 0; i < a->n; i++)
        if (a->tok[i].normalized == normalized && a->tok[i].match_len > 0) set->order[k++] = (uint32_t)i;
    qsort_r(set->order, k, sizeof *set->order, by_first_then_longest, a);
    size_t j = 0;
    for (unsigned b = 0; b < 256; b++) {
        set->first[b] = (uint32_t)j;
        while (j < k && (unsigned char)a->tok[set->order[j]].match[0] == b) j++;
    }
    set->first[256] = (uint32_t)k;
    return LLMQ_OK;
}

llmq_status tok_added_index(tok_added *a, const tok_norm *norm, size_t n_norm, llmq_err *err) {
    for (size_t i = 0; i < a->n; i++) {
        tok_added_tok *t = &a->tok[i];
        if (!t->normalized || n_norm == 0) continue;
        tok_text o = {0};
        llmq_status st = tok_norm_apply(norm, n_norm, t->content, t->len, &o);
        if (st) {
            tok_text_deinit(&o);
            return llmq_err_set(err, st, "normalizing added token '%s' failed", t->content);
        }
        t->match = o.data ? o.data : tok_strndup("", 0);
        t->match_len = o.len;
        if (!t->match) return LLMQ_ERR_NOMEM;
    }
    if (build_set(a, &a->raw, 0) || build_set(a, &a->norm, 1))
        return llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory indexing added tokens");
    return LLMQ_OK;
}

/* ---------------------------------------------------------------- matching */

static int32_t last_cp(const char *s, size_t end) {
    size_t k = end - 1;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
    size_t l;
    return llmq_utf8_decode(s + k, &l);
}

/* Index just after the last non-space char of s[0..end), 0 if all space. */
static size_t space_leftmost_at_end(const char *s, size_t end) {
    while (end > 0) {
        size_t k = end - 1;
        while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
        size_t l;
        if (!tok_cp_is_space(llmq_utf8_decode(s + k, &l))) return end;
        end = k;
    }
    return 0;
}

/* Bytes of white space at the start of s[0..n). */
static size_t space_rightmost_at_start(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        size_t l;
        if (!tok_cp_is_space(llmq_utf8_decode(s + i, &l))) break;
        i += l;
    }
    return i;
}

llmq_status tok_added_split(const tok_added *a, const tok_added_set *set, const tok_text *buf,
                            const tok_piece *in, tok_pieces *out) {
    const char *s = buf->data + in->off;
    size_t len = in->len, start_offset = 0, pos = 0;
    if (len == 0) return LLMQ_OK;
    if (set->first[256] == 0) return tok_pieces_push(out, in->off, len, -1, in->first);
    while (pos < len) {
        unsigned char b = (unsigned char)s[pos];
        const tok_added_tok *hit = NULL;
        for (uint32_t k = set->first[b]; k < set->first[b + 1]; k++) {
            const tok_added_tok *t = &a->tok[set->order[k]];
            if (t->match_len <= len - pos && !memcmp(s + pos, t->match, t->match_len)) {
                hit = t;
                break;
            }
        }
        if (!hit) {
            pos++;
            continue;
        }
        size_t start = pos, stop = pos + hit->match_len;
        pos = stop; /* the search resumes after the match itself, whatever strip does */
        if (hit->single_word) {
            size_t l;
            int start_space = start == 0 || !tok_cp_is_word(last_cp(s, start));
            int stop_space = stop == len || !tok_cp_is_word(llmq_utf8_decode(s + stop, &l));
            if (!start_space || !stop_space) continue;
        }
        if (hit->lstrip) {
            size_t ns = space_leftmost_at_end(s, start);
            start = ns > start_offset ? ns : start_offset;
        }
        if (hit->rstrip) stop += space_rightmost_at_start(s + stop, len - stop);
        llmq_status st;
        if (start_offset < start &&
            (st = tok_pieces_push(out, in->off + start_offset, start - start_offset, -1,
                                  tok_first_at(in->first, start_offset))))
            return st;
        if ((st = tok_pieces_push(out, in->off + start, stop - start, hit->id, 0))) return st;
        start_offset = stop;
    }
    if (start_offset < len)
        return tok_pieces_push(out, in->off + start_offset, len - start_offset, -1,
                               tok_first_at(in->first, start_offset));
    return LLMQ_OK;
}
