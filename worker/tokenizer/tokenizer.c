/*
 * tokenizer.c — loading a Hugging Face tokenizer folder and encoding text.
 *
 * Load: tokenizer.json (model, added_tokens, normalizer, pre_tokenizer,
 * post_processor, decoder), then the optional tokenizer_config.json (special
 * token strings, add_bos_token/add_eos_token, chat_template) and
 * generation_config.json (bos/eos ids).  Every problem is an error that names the
 * file and the field; an unsupported component names its type.
 *
 * Encode, as Hugging Face's Tokenizer::encode:
 *   1. split the text on non-normalized added tokens (original text);
 *   2. normalize each remaining piece, split it on normalized added tokens;
 *   3. pre-tokenize the remaining pieces into words;
 *   4. BPE each word; added-token pieces are their id;
 *   5. with add_special, wrap in the post-processor's ids (BOS/EOS).
 * Per-call scratch only; the tokenizer itself is read-only (but for the BPE
 * cache, which has its own lock).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "worker/tokenizer/tok_internal.h"

/* ================================================================ post-processor */

static llmq_status ids_push(int32_t **v, size_t *n, int32_t id) {
    int32_t *p = realloc(*v, (*n + 1) * sizeof *p);
    if (!p) return LLMQ_ERR_NOMEM;
    p[(*n)++] = id;
    *v = p;
    return LLMQ_OK;
}

/* Parse one post-processor and wrap what we have so far: pre = its pre + pre,
 * post = post + its post (a Sequence applies its processors in order). */
static llmq_status post_parse(tokenizer *t, const tok_jctx *c, json_t *j, const char *where) {
    const char *type;
    llmq_status st = tok_jtype(c, j, where, &type);
    if (st) return st;
    int32_t *pre = NULL, *post = NULL;
    size_t npre = 0, npost = 0;
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(j, "processors");
        if (!json_is_array(arr))
            return tok_jfail(c, LLMQ_ERR_FORMAT, where, "Sequence needs an array \"processors\"");
        for (size_t i = 0; i < json_array_size(arr); i++) {
            char sub[256];
            snprintf(sub, sizeof sub, "%s.processors[%zu]", where, i);
            if ((st = post_parse(t, c, json_array_get(arr, i), sub))) return st;
        }
        return LLMQ_OK;
    } else if (!strcmp(type, "ByteLevel")) {
        return LLMQ_OK; /* offsets only */
    } else if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
        json_t *cls = json_object_get(j, "cls"), *sep = json_object_get(j, "sep");
        if (!json_is_array(cls) || !json_is_integer(json_array_get(cls, 1)) || !json_is_array(sep) ||
            !json_is_integer(json_array_get(sep, 1)))
            return tok_jfail(c, LLMQ_ERR_FORMAT, where, "%s needs \"cls\" and \"sep\" as [token, id]", type);
        if (ids_push(&pre, &npre, (int32_t)json_integer_value(json_array_get(cls, 1))) ||
            ids_push(&post, &npost, (int32_t)json_integer_value(json_array_get(sep, 1))))
            st = LLMQ_ERR_NOMEM;
    } else if (!strcmp(type, "TemplateProcessing")) {
        json_t *single = json_object_get(j, "single"), *specials = json_object_get(j, "special_tokens");
        if (!json_is_array(single))
            return tok_jfail(c, LLMQ_ERR_FORMAT, where, "TemplateProcessing needs an array \"single\"");
        int seen_a = 0;
        for (size_t i = 0; i < json_array_size(single) && !st; i++) {
            json_t *it = json_array_get(single, i);
            json_t *sp = json_object_get(it, "SpecialToken"), *sq = json_object_get(it, "Sequence");
            if (json_is_object(sq)) {
                if (seen_a++) st = tok_jfail(c, LLMQ_ERR_UNSUPPORTED, where, "template repeats the sequence");
                continue;
            }
            const char *name = json_string_value(json_object_get(sp, "id"));
            if (!name) {
                st = tok_jfail(c, LLMQ_ERR_FORMAT, where, "single[%zu] must be {\"SpecialToken\": {\"id\": ...}} or {\"Sequence\": ...}", i);
                break;
            }
            json_t *ids = json_object_get(json_object_get(specials, name), "ids");
            if (!json_is_array(ids)) {
                st = tok_jfail(c, LLMQ_ERR_FORMAT, where, "special token '%s' of the template has no \"ids\" in \"special_tokens\"", name);
                break;
            }
            for (size_t k = 0; k < json_array_size(ids) && !st; k++) {
                json_t *id = json_array_get(ids, k);
                if (!json_is_integer(id)) st = tok_jfail(c, LLMQ_ERR_FORMAT, where, "ids of '%s' must be integers", name);
                else st = seen_a ? ids_push(&post, &npost, (int32_t)json_integer_value(id))
                                 : ids_push(&pre, &npre, (int32_t)json_integer_value(id));
            }
        }
        if (!st && !seen_a) st = tok_jfail(c, LLMQ_ERR_FORMAT, where, "template \"single\" has no $A sequence");
    } else {
        return tok_jfail(c, LLMQ_ERR_UNSUPPORTED, where, "unsupported post_processor type '%s'", type);
    }
    if (!st) { /* wrap: new pre before old pre, old post before new post */
        for (size_t i = 0; i < t->n_post_pre && !st; i++) st = ids_push(&pre, &npre, t->post_pre[i]);
        for (size_t i = 0; i < npost && !st; i++) st = ids_push(&t->post_post, &t->n_post_post, post[i]);
        if (!st) {
            free(t->post_pre);
            t->post_pre = pre;
            t->n_post_pre = npre;
            pre = NULL;
        }
    }
    free(pre);
    free(post);
    return st;
}

/* ================================================================ loading */

static json_t *load_json(const char *path, int optional, llmq_err *err, int *absent) {
    struct stat sb;
    if (absent) *absent = 0;
    if (stat(path, &sb) != 0) {
        if (optional) { *absent = 1; return NULL; }
        llmq_err_set(err, LLMQ_ERR_IO, "%s: cannot open: no such file", path);
        return NULL;
    }
    /* Read it whole: jansson parses a buffer several times faster than a FILE. */
    FILE *f = fopen(path, "rb");
    char *data = f && sb.st_size >= 0 ? malloc((size_t)sb.st_size + 1) : NULL;
    size_t got = data ? fread(data, 1, (size_t)sb.st_size, f) : 0;
    if (f) fclose(f);
    if (!data || got != (size_t)sb.st_size) {
        free(data);
        llmq_err_set(err, LLMQ_ERR_IO, "%s: cannot read", path);
        return NULL;
    }
    json_error_t je;
    json_t *j = json_loadb(data, got, JSON_ALLOW_NUL, &je);
    free(data);
    if (!j) {
        llmq_err_set(err, LLMQ_ERR_FORMAT, "%s:%d:%d: invalid JSON: %s", path, je.line, je.column, je.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: the top level must be a JSON object", path);
        return NULL;
    }
    return j;
}

static int32_t token_id(const tokenizer *t, const char *s) {
    if (!s || !*s) return -1;
    return tok_token_to_id(t, s, strlen(s));
}

/* A special-token field of tokenizer_config.json: "<s>" or {"content": "<s>", ...}. */
static llmq_status config_token(const tok_jctx *c, json_t *cfg, const char *key, char **out) {
    json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v)) return LLMQ_OK;
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (!json_is_string(v))
        return tok_jfail(c, LLMQ_ERR_FORMAT, key, "must be a string or {\"content\": string}");
    *out = tok_strndup(json_string_value(v), json_string_length(v));
    return *out ? LLMQ_OK : LLMQ_ERR_NOMEM;
}

static llmq_status load_config(tokenizer *t, const char *dir, llmq_err *err) {
    char path[4096 + 32];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    int absent;
    json_t *cfg = load_json(path, 1, err, &absent);
    if (absent) return LLMQ_OK;
    if (!cfg) return err->code;
    tok_jctx c = {path, err};
    llmq_status st;
    int add_bos = -1, add_eos = -1;
    const char *cls = NULL;
    if ((st = config_token(&c, cfg, "bos_token", &t->bos_token)) ||
        (st = config_token(&c, cfg, "eos_token", &t->eos_token)) ||
        (st = tok_jbool(&c, cfg, "add_bos_token", "add_bos_token", &add_bos)) ||
        (st = tok_jbool(&c, cfg, "add_eos_token", "add_eos_token", &add_eos)) ||
        (st = tok_jstr(&c, cfg, "tokenizer_class", "tokenizer_class", &cls, NULL)))
        goto out;
    json_t *tpl = json_object_get(cfg, "chat_template");
    if (json_is_array(tpl)) { /* [{"name": "default", "template": ...}, ...] */
        json_t *pick = NULL;
        for (size_t i = 0; i < json_array_size(tpl); i++) {
            json_t *e = json_array_get(tpl, i);
            const char *name = json_string_value(json_object_get(e, "name"));
            if (!pick || (name && !strcmp(name, "default"))) pick = e;
        }
        tpl = pick ? json_object_get(pick, "template") : NULL;
    }
    if (tpl && !json_is_null(tpl)) {
        if (!json_is_string(tpl)) {
            st = tok_jfail(&c, LLMQ_ERR_FORMAT, "chat_template", "must be a string or a list of {name, template}");
            goto out;
        }
        if (!(t->chat_template = tok_strndup(json_string_value(tpl), json_string_length(tpl)))) {
            st = LLMQ_ERR_NOMEM;
            goto out;
        }
    }
    /* transformers' Llama/Gemma fast tokenizers rebuild the post-processor from
     * add_bos_token/add_eos_token; with no post-processor any class honours them. */
    static const char *const rebuild[] = {"LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer",
                                          "CodeLlamaTokenizerFast", "GemmaTokenizer", "GemmaTokenizerFast"};
    int class_rebuilds = 0;
    for (size_t i = 0; cls && i < sizeof rebuild / sizeof rebuild[0]; i++)
        if (!strcmp(cls, rebuild[i])) class_rebuilds = 1;
    int none = t->n_post_pre == 0 && t->n_post_post == 0;
    if ((add_bos >= 0 || add_eos >= 0) && (class_rebuilds || none)) {
        if (add_bos < 0) add_bos = class_rebuilds; /* LlamaTokenizerFast defaults */
        if (add_eos < 0) add_eos = 0;
        int32_t bos = token_id(t, t->bos_token), eos = token_id(t, t->eos_token);
        if ((add_bos && bos < 0) || (add_eos && eos < 0)) {
            st = tok_jfail(&c, LLMQ_ERR_FORMAT, add_bos && bos < 0 ? "bos_token" : "eos_token",
                           "add_%s_token is set but the token is not in the vocabulary", add_bos && bos < 0 ? "bos" : "eos");
            goto out;
        }
        free(t->post_pre), free(t->post_post);
        t->post_pre = t->post_post = NULL;
        t->n_post_pre = t->n_post_post = 0;
        if ((add_bos && ids_push(&t->post_pre, &t->n_post_pre, bos)) ||
            (add_eos && ids_push(&t->post_post, &t->n_post_post, eos)))
            st = LLMQ_ERR_NOMEM;
    }
out:
    json_decref(cfg);
    return st;
}

static llmq_status add_eos(tokenizer *t, int32_t id) {
    if (id < 0) return LLMQ_OK;
    for (size_t i = 0; i < t->n_eos; i++)
        if (t->eos_ids[i] == id) return LLMQ_OK;
    return ids_push(&t->eos_ids, &t->n_eos, id);
}

static llmq_status load_generation_config(tokenizer *t, const char *dir, llmq_err *err) {
    char path[4096 + 32];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    int absent;
    json_t *g = load_json(path, 1, err, &absent);
    if (absent) return LLMQ_OK;
    if (!g) return err->code;
    llmq_status st = LLMQ_OK;
    json_t *e = json_object_get(g, "eos_token_id");
    if (json_is_integer(e)) st = add_eos(t, (int32_t)json_integer_value(e));
    else if (json_is_array(e))
        for (size_t i = 0; i < json_array_size(e) && !st; i++) {
            json_t *x = json_array_get(e, i);
            if (!json_is_integer(x)) {
                st = llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: eos_token_id: must be an integer or a list of integers", path);
                break;
            }
            st = add_eos(t, (int32_t)json_integer_value(x));
        }
    else if (e && !json_is_null(e))
        st = llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: eos_token_id: must be an integer or a list of integers", path);
    json_t *b = json_object_get(g, "bos_token_id");
    if (!st && t->bos_id < 0 && json_is_integer(b)) t->bos_id = (int32_t)json_integer_value(b);
    json_decref(g);
    return st;
}

/* id -> string table; added tokens override the model's strings. */
static llmq_status build_id_table(tokenizer *t) {
    int32_t max = t->bpe.max_id;
    for (size_t i = 0; i < t->added.n; i++)
        if (t->added.tok[i].id > max) max = t->added.tok[i].id;
    t->n_ids = max + 1;
    size_t n = (size_t)(t->n_ids > 0 ? t->n_ids : 1);
    t->id_off = malloc(n * sizeof *t->id_off);
    t->id_len = malloc(n * sizeof *t->id_len);
    t->id_special = calloc(n, 1);
    t->id_byte = calloc(n, 1);
    if (!t->id_off || !t->id_len || !t->id_special || !t->id_byte) return LLMQ_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) t->id_len[i] = UINT32_MAX;
    const tok_strmap *v = &t->bpe.vocab;
    for (size_t i = 0; i < v->n; i++) {
        int32_t id = v->ent[i].val;
        t->id_off[id] = (uint32_t)t->id_text.len;
        t->id_len[id] = v->ent[i].len;
        if (tok_text_append(&t->id_text, v->keys.data + v->ent[i].off, v->ent[i].len)) return LLMQ_ERR_NOMEM;
    }
    tok_strmap specials = {0};
    llmq_status st = LLMQ_OK;
    for (size_t i = 0; i < t->added.n && !st; i++) {
        const tok_added_tok *a = &t->added.tok[i];
        t->id_off[a->id] = (uint32_t)t->id_text.len;
        t->id_len[a->id] = (uint32_t)a->len;
        st = tok_text_append(&t->id_text, a->content, a->len);
        if (!st && a->special) st = tok_strmap_put(&specials, a->content, a->len, 1);
    }
    /* HF skips by token string: any id whose string is a special token's. */
    for (int32_t id = 0; id < t->n_ids && !st; id++) {
        if (t->id_len[id] == UINT32_MAX) continue;
        const char *s = t->id_text.data + t->id_off[id];
        size_t len = t->id_len[id];
        if (specials.n && tok_strmap_get(&specials, s, len, 0)) t->id_special[id] = 1;
        if (len == 6 && !memcmp(s, "<0x", 3) && s[5] == '>') t->id_byte[id] |= 1;
        if (len) {
            size_t l;
            int b = tok_cp_byte(llmq_utf8_decode(s, &l));
            if (b >= 0x80 && b <= 0xBF) t->id_byte[id] |= 2;
        }
    }
    tok_strmap_free(&specials);
    return st;
}

static llmq_status load_tokenizer_json(tokenizer *t, json_t *root, const tok_jctx *c) {
    llmq_status st;
    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model)) return tok_jfail(c, LLMQ_ERR_FORMAT, "model", "missing or not an object");
    json_t *mt = json_object_get(model, "type");
    if (mt && !json_is_string(mt))
        return tok_jfail(c, LLMQ_ERR_FORMAT, "model", "field \"type\" must be a string");
    if (mt && strcmp(json_string_value(mt), "BPE"))
        return tok_jfail(c, LLMQ_ERR_UNSUPPORTED, "model", "unsupported model type '%s' (llmq implements BPE)",
                         json_string_value(mt));
    if (!mt && !json_object_get(model, "merges"))
        return tok_jfail(c, LLMQ_ERR_UNSUPPORTED, "model", "model has no \"type\" and is not BPE");
    if ((st = tok_bpe_parse(&t->bpe, c, model))) return st;
    if ((st = tok_added_parse(&t->added, c, json_object_get(root, "added_tokens")))) return st;
    json_t *j;
    if ((j = json_object_get(root, "normalizer")) && !json_is_null(j) &&
        (st = tok_norm_parse(&t->norm, &t->n_norm, c, j, "normalizer")))
        return st;
    if ((j = json_object_get(root, "pre_tokenizer")) && !json_is_null(j) &&
        (st = tok_pretok_parse(&t->pt, &t->n_pt, c, j, "pre_tokenizer")))
        return st;
    if ((j = json_object_get(root, "decoder")) && !json_is_null(j)) {
        t->has_decoder = 1;
        if ((st = tok_dec_parse(&t->dec, &t->n_dec, c, j, "decoder"))) return st;
    }
    if ((j = json_object_get(root, "post_processor")) && !json_is_null(j) &&
        (st = post_parse(t, c, j, "post_processor")))
        return st;
    for (size_t i = 0; i < t->n_dec; i++) {
        if (t->dec[i].kind == TOK_DEC_BYTELEVEL) t->has_bytelevel_dec = 1;
        if (t->dec[i].kind == TOK_DEC_BYTEFALLBACK) t->has_bytefallback_dec = 1;
    }
    if ((st = tok_added_index(&t->added, t->norm, t->n_norm, c->err))) return st;
    return build_id_table(t);
}

tokenizer *tok_load(const char *model_dir, llmq_err *err) {
    llmq_err local;
    if (!err) err = &local;
    llmq_err_clear(err);
    char dir[4096], path[4096];
    struct stat sb;
    if (!model_dir || !*model_dir) {
        llmq_err_set(err, LLMQ_ERR_INVALID, "no tokenizer folder given");
        return NULL;
    }
    if (stat(model_dir, &sb) == 0 && S_ISREG(sb.st_mode)) {
        snprintf(path, sizeof path, "%s", model_dir);
        const char *slash = strrchr(model_dir, '/');
        snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - model_dir) : 1, slash ? model_dir : ".");
    } else {
        snprintf(dir, sizeof dir, "%s", model_dir);
        snprintf(path, sizeof path, "%s/tokenizer.json", model_dir);
    }
    tokenizer *t = calloc(1, sizeof *t);
    if (!t || !(t->path = tok_strndup(path, strlen(path)))) {
        free(t);
        llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory loading %s", path);
        return NULL;
    }
    t->bos_id = -1;
    json_t *root = load_json(path, 0, err, NULL);
    llmq_status st = root ? LLMQ_OK : err->code;
    if (!st) {
        tok_jctx c = {t->path, err};
        st = load_tokenizer_json(t, root, &c);
        json_decref(root);
    }
    if (!st) st = load_config(t, dir, err);
    if (!st) {
        t->bos_id = token_id(t, t->bos_token);
        st = add_eos(t, token_id(t, t->eos_token));
    }
    if (!st) st = load_generation_config(t, dir, err);
    if (!st && t->bos_id >= 0)
        for (size_t i = 0; i < t->n_post_pre; i++)
            if (t->post_pre[i] == t->bos_id) t->adds_bos = 1;
    if (st) {
        if (err->code == LLMQ_OK) llmq_err_set(err, st, "%s: %s while loading", path, llmq_status_name(st));
        tok_destroy(t);
        return NULL;
    }
    return t;
}

void tok_destroy(tokenizer *t) {
    if (!t) return;
    tok_bpe_free(&t->bpe);
    tok_added_free(&t->added);
    tok_norm_free(t->norm, t->n_norm);
    tok_pretok_free(t->pt, t->n_pt);
    tok_dec_free(t->dec, t->n_dec);
    free(t->post_pre);
    free(t->post_post);
    free(t->id_off);
    free(t->id_len);
    free(t->id_special);
    free(t->id_byte);
    tok_text_deinit(&t->id_text);
    free(t->eos_ids);
    free(t->chat_template);
    free(t->bos_token);
    free(t->eos_token);
    free(t->path);
    free(t);
}

/* ================================================================ encoding */

/* How many leading bytes of the normalized piece `norm` still align with the
 * original first char c[0..clen) (what HF's alignments would say): the
 * normalization of that char alone when it is a prefix of the whole, else the
 * first normalized char (composition merged it with what followed). */
static llmq_status normalized_first(const tokenizer *t, const char *c, size_t clen, const tok_text *norm,
                                    uint32_t *first) {
    tok_text g = {0};
    llmq_status st = tok_norm_apply(t->norm, t->n_norm, c, clen, &g);
    if (!st) {
        if (norm->len == 0) *first = 0;
        else if (g.len <= norm->len && (g.len == 0 || !memcmp(g.data, norm->data, g.len))) *first = (uint32_t)g.len;
        else *first = (uint32_t)llmq_utf8_lead_len((unsigned char)norm->data[0]);
    }
    tok_text_deinit(&g);
    return st;
}

llmq_status tok_encode(const tokenizer *t, const char *text, size_t len, int add_special,
                       int32_t **ids_out, size_t *n_out, llmq_err *err) {
    *ids_out = NULL;
    *n_out = 0;
    if (len && !text) return llmq_err_set(err, LLMQ_ERR_INVALID, "tok_encode: NULL text");
    size_t valid = llmq_utf8_valid_prefix(text, len);
    if (valid != len)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "text is not valid UTF-8 (byte %zu of %zu)", valid, len);
    tok_text buf = {0}, norm = {0};
    tok_pieces a = {0}, b = {0};
    tok_pt_scratch pts = {0};
    tok_bpe_scratch bs = {0};
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    llmq_status st = tok_text_append(&buf, text, len);

    /* 1. added tokens matched on the original text */
    tok_piece whole = {.off = 0, .len = len, .id = -1,
                       .first = len ? (uint32_t)llmq_utf8_lead_len((unsigned char)text[0]) : 0};
    if (!st) st = tok_added_split(&t->added, &t->added.raw, &buf, &whole, &a);
    /* 2. normalize, then added tokens matched on the normalized text */
    if (!st && (t->n_norm || t->added.norm.first[256])) {
        for (size_t i = 0; i < a.n && !st; i++) {
            tok_piece p = a.v[i];
            if (p.id >= 0) { st = tok_pieces_push(&b, p.off, p.len, p.id, p.first); continue; }
            if (t->n_norm) {
                norm.len = 0;
                if ((st = tok_norm_apply(t->norm, t->n_norm, buf.data + p.off, p.len, &norm))) break;
                if (p.first && (st = normalized_first(t, buf.data + p.off, p.first, &norm, &p.first))) break;
                p.off = buf.len;
                p.len = norm.len;
                if ((st = tok_text_append(&buf, norm.data ? norm.data : "", norm.len))) break;
            }
            st = tok_added_split(&t->added, &t->added.norm, &buf, &p, &b);
        }
        tok_pieces tmp = a;
        a = b;
        b = tmp;
    }
    /* 3. pre-tokenize */
    if (!st && t->n_pt) st = tok_pretok_apply(t->pt, t->n_pt, &buf, &a, &pts);
    /* 4. model */
    if (!st && add_special)
        for (size_t i = 0; i < t->n_post_pre && !st; i++) st = ids_push(&ids, &n, t->post_pre[i]);
    cap = n;
    for (size_t i = 0; i < a.n && !st; i++) {
        const tok_piece *p = &a.v[i];
        if (p->id >= 0) {
            if (n == cap) {
                size_t c2 = cap ? cap * 2 : 64;
                int32_t *q = realloc(ids, c2 * sizeof *q);
                if (!q) { st = LLMQ_ERR_NOMEM; break; }
                ids = q, cap = c2;
            }
            ids[n++] = p->id;
        } else {
            st = tok_bpe_word(&t->bpe, buf.data + p->off, p->len, &bs, &ids, &n, &cap, err);
        }
    }
    /* 5. post-processor */
    if (!st && add_special) {
        int32_t *q = realloc(ids, (n + t->n_post_post + 1) * sizeof *q);
        if (!q) st = LLMQ_ERR_NOMEM;
        else {
            ids = q;
            for (size_t i = 0; i < t->n_post_post; i++) ids[n++] = t->post_post[i];
        }
    }
    if (!st && !ids && !(ids = malloc(sizeof *ids))) st = LLMQ_ERR_NOMEM;
    tok_text_deinit(&buf);
    tok_text_deinit(&norm);
    tok_pieces_free(&a);
    tok_pieces_free(&b);
    tok_pt_scratch_free(&pts);
    tok_bpe_scratch_free(&bs);
    if (st) {
        free(ids);
        if (!err || err->code == LLMQ_OK) llmq_err_set(err, st, "encoding failed: %s", llmq_status_name(st));
        return st;
    }
    *ids_out = ids;
    *n_out = n;
    return LLMQ_OK;
}

/* ================================================================ accessors */

int tok_vocab_size(const tokenizer *t) { return t->n_ids; }
int tok_bos_id(const tokenizer *t) { return t->bos_id; }
int tok_eos_id(const tokenizer *t) { return t->n_eos ? t->eos_ids[0] : -1; }
int tok_adds_bos(const tokenizer *t) { return t->adds_bos; }
const char *tok_chat_template(const tokenizer *t) { return t->chat_template; }
const char *tok_bos_token(const tokenizer *t) { return t->bos_token ? t->bos_token : ""; }
const char *tok_eos_token(const tokenizer *t) { return t->eos_token ? t->eos_token : ""; }
const char *tok_path(const tokenizer *t) { return t->path; }

const int32_t *tok_eos_ids(const tokenizer *t, size_t *n) {
    *n = t->n_eos;
    return t->eos_ids;
}

const char *tok_id_to_token(const tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_ids || t->id_len[id] == UINT32_MAX) return NULL;
    if (len) *len = t->id_len[id];
    return t->id_text.data + t->id_off[id];
}

int32_t tok_token_to_id(const tokenizer *t, const char *s, size_t len) {
    for (size_t i = 0; i < t->added.n; i++)
        if (t->added.tok[i].len == len && !memcmp(t->added.tok[i].content, s, len)) return t->added.tok[i].id;
    return tok_strmap_get(&t->bpe.vocab, s, len, -1);
}

int tok_is_special(const tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_ids && t->id_special[id];
}
