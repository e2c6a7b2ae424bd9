/*
 * tok_bpe.c — the BPE model: one pre-token (word) in, ids out.
 *
 * The merge loop is Hugging Face's Word::merge_all, step for step, because BPE
 * output depends on tie-breaking: symbols form a linked list; a min-heap holds
 * candidate merges ordered by (rank, position); a popped candidate is applied only
 * if the pair at its position still merges into the same id; each merge pushes
 * the new pairs with its neighbours.  Initial symbols are the word's characters
 * (with continuing_subword_prefix / end_of_word_suffix), else their <0xNN> byte
 * tokens (byte_fallback), else unk (fused when fuse_unk), else nothing.
 *
 * Words shorter than TOK_BPE_CACHE_MAXLEN bytes are cached: a direct-mapped table
 * keyed by XXH3 of the word, guarded by a mutex so one tokenizer serves threads.
 */
#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "worker/tokenizer/tok_internal.h"

typedef struct tok_sym {
    int32_t id;
    int32_t prev, next; /* indices, -1 none */
    uint32_t len;       /* bytes of the word covered; 0 = merged away */
} tok_sym;

typedef struct tok_merge {
    uint64_t key;   /* rank << 32 | position: the heap order, lowest first */
    int32_t new_id;
} tok_merge;

#define MERGE(rank, pos, id) ((tok_merge){((uint64_t)(rank) << 32) | (uint32_t)(pos), (id)})
#define MERGE_POS(m) ((uint32_t)(m).key)

#define ASCII_TABLE 0x800 /* code points with a direct vocab lookup */

/* ---------------------------------------------------------------- loading */

static llmq_status vocab_get(const tok_bpe *m, const char *s, size_t len, int32_t *id) {
    *id = tok_strmap_get(&m->vocab, s, len, -1);
    return *id >= 0 ? LLMQ_OK : LLMQ_ERR_FORMAT;
}

static llmq_status parse_merges(tok_bpe *m, const tok_jctx *c, json_t *merges) {
    if (!json_is_array(merges))
        return tok_jfail(c, LLMQ_ERR_FORMAT, "model.merges", "must be an array");
    size_t n = json_array_size(merges);
    uint32_t rank = 0;
    tok_text nt = {0};
    llmq_status st = LLMQ_OK;
    for (size_t i = 0; i < n && !st; i++) {
        json_t *e = json_array_get(merges, i);
        const char *a, *b;
        size_t al, bl;
        if (json_is_string(e)) {
            const char *s = json_string_value(e);
            size_t sl = json_string_length(e);
            if (sl >= 8 && !memcmp(s, "#version", 8)) continue;
            const char *sp = memchr(s, ' ', sl);
            if (!sp || memchr(sp + 1, ' ', sl - (size_t)(sp + 1 - s))) {
                st = tok_jfail(c, LLMQ_ERR_FORMAT, "model.merges",
                               "merge %zu \"%.*s\" is not two tokens separated by one space", i,
                               (int)(sl > 80 ? 80 : sl), s);
                break;
            }
            a = s, al = (size_t)(sp - s), b = sp + 1, bl = sl - al - 1;
        } else if (json_is_array(e) && json_array_size(e) == 2 && json_is_string(json_array_get(e, 0)) &&
                   json_is_string(json_array_get(e, 1))) {
            a = json_string_value(json_array_get(e, 0)), al = json_string_length(json_array_get(e, 0));
            b = json_string_value(json_array_get(e, 1)), bl = json_string_length(json_array_get(e, 1));
        } else {
            st = tok_jfail(c, LLMQ_ERR_FORMAT, "model.merges",
                           "merge %zu must be a string \"a b\" or a pair [\"a\", \"b\"]", i);
            break;
        }
        int32_t ia, ib, in;
        if (vocab_get(m, a, al, &ia) || vocab_get(m, b, bl, &ib)) {
            st = tok_jfail(c, LLMQ_ERR_FORMAT, "model.merges",
                           "merge %zu (\"%.*s\" \"%.*s\") uses a token that is not in the vocab", i,
                           (int)(al > 60 ? 60 : al), a, (int)(bl > 60 ? 60 : bl), b);
            break;
        }
        size_t skip = m->prefix_len <= bl ? m->prefix_len : bl;
        nt.len = 0;
        if (tok_text_append(&nt, a, al) || tok_text_append(&nt, b + skip, bl - skip)) {
            st = LLMQ_ERR_NOMEM;
            break;
        }
        if (vocab_get(m, nt.data, nt.len, &in)) {
            st = tok_jfail(c, LLMQ_ERR_FORMAT, "model.merges",
                           "merge %zu makes \"%.*s\", which is not in the vocab", i,
                           (int)(nt.len > 60 ? 60 : nt.len), nt.data);
            break;
        }
        st = tok_pairmap_put(&m->merges, ia, ib, rank++, in);
    }
    tok_text_deinit(&nt);
    return st;
}

static llmq_status opt_string(const tok_jctx *c, json_t *model, const char *key, char **out, size_t *len) {
    const char *s = NULL;
    size_t l = 0;
    llmq_status st = tok_jstr(c, model, key, "model", &s, &l);
    if (st || !s) return st;
    if (!(*out = tok_strndup(s, l))) return LLMQ_ERR_NOMEM;
    *len = l;
    return LLMQ_OK;
}

llmq_status tok_bpe_parse(tok_bpe *m, const tok_jctx *c, json_t *model) {
    llmq_status st;
    m->unk_id = -1;
    m->max_id = -1;
    for (int b = 0; b < 256; b++) m->byte_id[b] = -1;
    if (pthread_mutex_init(&m->cache_lock, NULL)) return LLMQ_ERR_INTERNAL;
    m->cache = calloc(TOK_BPE_CACHE_SLOTS, sizeof *m->cache);
    if (!m->cache) return LLMQ_ERR_NOMEM;

    json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout) && !(json_is_number(dropout) && json_number_value(dropout) == 0.0))
        return tok_jfail(c, LLMQ_ERR_UNSUPPORTED, "model", "BPE dropout is not supported (inference tokenizers have none)");
    char *unk = NULL;
    size_t unk_len = 0;
    if ((st = tok_jbool(c, model, "fuse_unk", "model", &m->fuse_unk)) ||
        (st = tok_jbool(c, model, "byte_fallback", "model", &m->byte_fallback)) ||
        (st = tok_jbool(c, model, "ignore_merges", "model", &m->ignore_merges)) ||
        (st = opt_string(c, model, "continuing_subword_prefix", &m->prefix, &m->prefix_len)) ||
        (st = opt_string(c, model, "end_of_word_suffix", &m->suffix, &m->suffix_len)) ||
        (st = opt_string(c, model, "unk_token", &unk, &unk_len)))
        return st;
    if (m->prefix && !m->prefix_len) { free(m->prefix); m->prefix = NULL; }
    if (m->suffix && !m->suffix_len) { free(m->suffix); m->suffix = NULL; }

    json_t *vocab = json_object_get(model, "vocab");
    if (!json_is_object(vocab)) {
        free(unk);
        return tok_jfail(c, LLMQ_ERR_FORMAT, "model.vocab", "must be an object {token: id}");
    }
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX - 1) {
            free(unk);
            return tok_jfail(c, LLMQ_ERR_FORMAT, "model.vocab", "id of \"%.60s\" must be a non-negative integer", key);
        }
        int32_t id = (int32_t)json_integer_value(v);
        if ((st = tok_strmap_put(&m->vocab, key, strlen(key), id))) { free(unk); return st; }
        if (id > m->max_id) m->max_id = id;
    }
    if (unk) {
        m->unk_id = tok_strmap_get(&m->vocab, unk, unk_len, -1);
        m->unk_missing = m->unk_id < 0;
        free(unk);
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        m->byte_id[b] = tok_strmap_get(&m->vocab, name, 6, -1);
    }
    if (!m->prefix && !m->suffix) {
        m->ascii_id = malloc(ASCII_TABLE * sizeof *m->ascii_id);
        if (!m->ascii_id) return LLMQ_ERR_NOMEM;
        for (int32_t cp = 0; cp < ASCII_TABLE; cp++) {
            char buf[4];
            size_t l = llmq_utf8_encode(cp, buf);
            m->ascii_id[cp] = tok_strmap_get(&m->vocab, buf, l, -1);
        }
    }
    json_t *merges = json_object_get(model, "merges");
    if (!merges) merges = json_array(); else json_incref(merges);
    st = parse_merges(m, c, merges);
    json_decref(merges);
    return st;
}

void tok_bpe_free(tok_bpe *m) {
    if (m->cache) {
        for (size_t i = 0; i < TOK_BPE_CACHE_SLOTS; i++) free(m->cache[i].blob);
        free(m->cache);
        pthread_mutex_destroy(&m->cache_lock);
    }
    tok_strmap_free(&m->vocab);
    tok_pairmap_free(&m->merges);
    free(m->ascii_id);
    free(m->prefix);
    free(m->suffix);
    memset(m, 0, sizeof *m);
}

void tok_bpe_scratch_free(tok_bpe_scratch *s) {
    free(s->sym);
    free(s->heap);
    memset(s, 0, sizeof *s);
}

/* ---------------------------------------------------------------- merging */

static inline int merge_before(const tok_merge *a, const tok_merge *b) {
    return a->key < b->key;
}

static void heap_push(tok_merge *h, size_t *n, tok_merge x) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!merge_before(&x, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = x;
}

static tok_merge heap_pop(tok_merge *h, size_t *n) {
    tok_merge top = h[0], x = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const tok_merge *best = &x;
        if (l < *n && merge_before(&h[l], best)) m = l, best = &h[l];
        if (r < *n && merge_before(&h[r], best)) m = r;
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    if (*n) h[i] = x;
    return top;
}

static llmq_status push_id(int32_t **ids, size_t *n, size_t *cap, int32_t id) {
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        int32_t *p = realloc(*ids, c * sizeof *p);
        if (!p) return LLMQ_ERR_NOMEM;
        *ids = p;
        *cap = c;
    }
    (*ids)[(*n)++] = id;
    return LLMQ_OK;
}

/* Append symbol (id, byte_len) to the word, as HF Word::add. */
static void sym_add(tok_sym *sym, size_t *n, int32_t id, uint32_t len) {
    int32_t k = (int32_t)*n;
    if (k > 0) sym[k - 1].next = k;
    sym[k] = (tok_sym){.id = id, .prev = k - 1, .next = -1, .len = len};
    (*n)++;
}

/* Initial symbols of the word (HF BPE::merge_word before merge_all). */
static llmq_status initial_symbols(const tok_bpe *m, const char *s, size_t len, tok_sym *sym,
                                   size_t *nsym, llmq_err *err) {
    int32_t unk_id = -1;
    uint32_t unk_len = 0;
    int have_unk = 0;
    char tmp_small[64];
    for (size_t i = 0; i < len;) {
        size_t cl = llmq_utf8_lead_len((unsigned char)s[i]);
        int first = i == 0, last = i + cl >= len;
        int32_t id = -1;
        const char *piece = s + i;
        size_t plen = cl;
        char *heap_buf = NULL;
        if (m->ascii_id) {
            size_t l;
            int32_t cp = llmq_utf8_decode(s + i, &l);
            id = cp < ASCII_TABLE ? m->ascii_id[cp] : tok_strmap_get(&m->vocab, s + i, cl, -1);
        } else {
            size_t need = cl + (first ? 0 : m->prefix_len) + (last ? m->suffix_len : 0);
            char *b = need <= sizeof tmp_small ? tmp_small : (heap_buf = malloc(need));
            if (!b) return LLMQ_ERR_NOMEM;
            size_t o = 0;
            if (!first && m->prefix) memcpy(b, m->prefix, m->prefix_len), o += m->prefix_len;
            memcpy(b + o, s + i, cl), o += cl;
            if (last && m->suffix) memcpy(b + o, m->suffix, m->suffix_len), o += m->suffix_len;
            piece = b, plen = o;
            id = tok_strmap_get(&m->vocab, b, o, -1);
        }
        if (id >= 0) {
            if (have_unk) sym_add(sym, nsym, unk_id, unk_len), have_unk = 0;
            sym_add(sym, nsym, id, (uint32_t)cl);
        } else {
            int done = 0;
            if (m->byte_fallback) {
                size_t k = 0;
                while (k < plen && m->byte_id[(unsigned char)piece[k]] >= 0) k++;
                if (k == plen) {
                    for (k = 0; k < plen; k++) sym_add(sym, nsym, m->byte_id[(unsigned char)piece[k]], 1);
                    done = 1;
                }
            }
            if (!done && (m->unk_id >= 0 || m->unk_missing)) {
                if (m->unk_missing) {
                    free(heap_buf);
                    return llmq_err_set(err, LLMQ_ERR_FORMAT,
                                        "BPE unk_token is not in the vocabulary and the text needs it");
                }
                if (have_unk && m->fuse_unk) {
                    unk_len += (uint32_t)cl;
                } else {
                    if (have_unk) sym_add(sym, nsym, unk_id, unk_len);
                    unk_id = m->unk_id, unk_len = (uint32_t)cl, have_unk = 1;
                }
            }
        }
        free(heap_buf);
        i += cl;
    }
    if (have_unk) sym_add(sym, nsym, unk_id, unk_len);
    return LLMQ_OK;
}

static void merge_all(const tok_bpe *m, tok_sym *sym, size_t nsym, tok_merge *heap) {
    size_t hn = 0;
    uint32_t rank;
    int32_t nid;
    for (size_t i = 0; i + 1 < nsym; i++)
        if (tok_pairmap_get(&m->merges, sym[i].id, sym[i + 1].id, &rank, &nid))
            heap_push(heap, &hn, MERGE(rank, i, nid));
    while (hn) {
        tok_merge top = heap_pop(heap, &hn);
        uint32_t pos = MERGE_POS(top);
        tok_sym *cur = &sym[pos];
        if (cur->len == 0 || cur->next < 0) continue;
        tok_sym right = sym[cur->next];
        if (!tok_pairmap_get(&m->merges, cur->id, right.id, &rank, &nid) || nid != top.new_id) continue;
        int32_t next_pos = cur->next;
        cur->id = top.new_id;
        cur->len += right.len;
        cur->next = right.next;
        sym[next_pos].len = 0;
        if (right.next >= 0 && (size_t)right.next < nsym) sym[right.next].prev = (int32_t)pos;
        if (cur->prev >= 0 && tok_pairmap_get(&m->merges, sym[cur->prev].id, cur->id, &rank, &nid))
            heap_push(heap, &hn, MERGE(rank, cur->prev, nid));
        if (cur->next >= 0 && tok_pairmap_get(&m->merges, cur->id, sym[cur->next].id, &rank, &nid))
            heap_push(heap, &hn, MERGE(rank, pos, nid));
    }
}

/* ---------------------------------------------------------------- cache */

static int cache_get(const tok_bpe *m, uint64_t h, const char *s, size_t len, int32_t **ids,
                     size_t *n, size_t *cap, llmq_status *st) {
    tok_bpe_cache_ent *e = &m->cache[h & (TOK_BPE_CACHE_SLOTS - 1)];
    int hit = 0;
    pthread_mutex_lock((pthread_mutex_t *)&m->cache_lock);
    if (e->blob && e->hash == h && e->key_len == len && !memcmp(e->blob, s, len)) {
        hit = 1;
        const int32_t *v = (const int32_t *)(e->blob + ((len + 3) & ~(size_t)3));
        *st = LLMQ_OK;
        for (uint32_t i = 0; i < e->n_ids && !*st; i++) *st = push_id(ids, n, cap, v[i]);
    }
    pthread_mutex_unlock((pthread_mutex_t *)&m->cache_lock);
    return hit;
}

static void cache_put(const tok_bpe *m, uint64_t h, const char *s, size_t len, const int32_t *v, size_t k) {
    size_t koff = (len + 3) & ~(size_t)3;
    char *blob = malloc(koff + k * sizeof(int32_t));
    if (!blob) return; /* a cache miss next time, nothing worse */
    memcpy(blob, s, len);
    if (k) memcpy(blob + koff, v, k * sizeof(int32_t)); /* v may be NULL when k == 0 */
    tok_bpe_cache_ent *e = &m->cache[h & (TOK_BPE_CACHE_SLOTS - 1)];
    pthread_mutex_lock((pthread_mutex_t *)&m->cache_lock);
    free(e->blob);
    e->blob = blob;
    e->hash = h;
    e->key_len = (uint32_t)len;
    e->n_ids = (uint32_t)k;
    pthread_mutex_unlock((pthread_mutex_t *)&m->cache_lock);
}

/* ---------------------------------------------------------------- entry point */

llmq_status tok_bpe_word(const tok_bpe *m, const char *s, size_t len, tok_bpe_scratch *sc,
                         int32_t **ids, size_t *n, size_t *cap, llmq_err *err) {
    if (len == 0) return LLMQ_OK;
    if (m->ignore_merges) {
        int32_t id = tok_strmap_get(&m->vocab, s, len, -1);
        if (id >= 0) return push_id(ids, n, cap, id);
    }
    uint64_t h = 0;
    int cacheable = len < TOK_BPE_CACHE_MAXLEN;
    llmq_status st;
    if (cacheable) {
        h = XXH3_64bits(s, len);
        if (cache_get(m, h, s, len, ids, n, cap, &st)) return st;
    }
    /* A symbol per byte at most, counting the prefix/suffix bytes byte_fallback
     * may spell out for each char. */
    size_t scap = len * (1 + m->prefix_len) + m->suffix_len + 1;
    if (sc->sym_cap < scap) {
        tok_sym *p = realloc(sc->sym, scap * sizeof *p);
        if (!p) return LLMQ_ERR_NOMEM;
        sc->sym = p;
        sc->sym_cap = scap;
    }
    size_t nsym = 0;
    if ((st = initial_symbols(m, s, len, sc->sym, &nsym, err))) return st;
    /* Every symbol merges at most once, and each merge pushes two candidates. */
    size_t hcap = 3 * nsym + 1;
    if (sc->heap_cap < hcap) {
        tok_merge *p = realloc(sc->heap, hcap * sizeof *p);
        if (!p) return LLMQ_ERR_NOMEM;
        sc->heap = p;
        sc->heap_cap = hcap;
    }
    merge_all(m, sc->sym, nsym, sc->heap);
    size_t n0 = *n;
    for (size_t i = 0; i < nsym; i++)
        if (sc->sym[i].len && (st = push_id(ids, n, cap, sc->sym[i].id))) return st;
    if (cacheable) cache_put(m, h, s, len, *n > n0 ? *ids + n0 : NULL, *n - n0);
    return LLMQ_OK;
}
