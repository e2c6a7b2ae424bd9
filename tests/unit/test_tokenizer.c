/*
 * test_tokenizer.c — llmq's tokenizer against Hugging Face `tokenizers`.
 *
 * Golden data, all made by Hugging Face code, never by ours:
 *   tests/fixtures/tokenizers/<name>/ + <name>.expect.json   (tools/tok_fixtures.py)
 *       ids with and without special tokens, decodings (keep/skip specials) of 405
 *       corpus strings, and decodings of random id sequences, for six trained
 *       tokenizers and for ../shared/models/stories260K;
 *   ../shared/tokenizers/{llama-spm,gpt-2}/cases.{inp,out}   46 cases each.
 * Every check must match 100%.  Streaming detokenization is checked against our
 * one-shot decode (itself checked against HF): fed id by id, with and without a
 * prompt as context, the deltas must concatenate to decode(all) - decode(prompt).
 * Mismatches print the first few cases in full before the test fails.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "tests/unit/testutil.h"
#include "worker/tokenizer/tokenizer.h"

#define SHOW_MAX 5 /* mismatches printed per check */

/* ---------------------------------------------------------------- helpers */

static void print_escaped(const char *label, const char *s, size_t n) {
    fprintf(stderr, "    %s \"", label);
    for (size_t i = 0; i < n && i < 300; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') fputs("\\n", stderr);
        else if (c == '\t') fputs("\\t", stderr);
        else if (c < 0x20) fprintf(stderr, "\\x%02x", c);
        else fputc(c, stderr);
    }
    fputs(n > 300 ? "...\"\n" : "\"\n", stderr);
}

static void print_ids(const char *label, const int32_t *ids, size_t n) {
    fprintf(stderr, "    %s [", label);
    for (size_t i = 0; i < n && i < 64; i++) fprintf(stderr, i ? " %d" : "%d", ids[i]);
    fputs(n > 64 ? " ...]\n" : "]\n", stderr);
}

/* json array of ints -> malloc'd int32 array */
static int32_t *json_ids(json_t *a, size_t *n) {
    *n = json_array_size(a);
    int32_t *v = malloc((*n ? *n : 1) * sizeof *v);
    for (size_t i = 0; i < *n; i++) v[i] = (int32_t)json_integer_value(json_array_get(a, i));
    return v;
}

static int ids_equal(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    return na == nb && (na == 0 || !memcmp(a, b, na * sizeof *a));
}

static int text_equal(const tok_text *t, json_t *s) {
    size_t n = json_string_length(s);
    return t->len == n && (n == 0 || !memcmp(t->data, json_string_value(s), n));
}

static tokenizer *load_or_fail(const char *dir) {
    llmq_err err = {0};
    tokenizer *t = tok_load(dir, &err);
    if (!t) fprintf(stderr, "tok_load(%s): %s\n", dir, err.msg);
    assert_non_null(t);
    return t;
}

/* Stream ids[k..n) after context ids[0..k); compare with our one-shot decodes:
 * the deltas must be decode(all) minus the context's text.  When the context ends
 * mid-character (an id boundary inside a character: decode(context) ends in
 * U+FFFD that decode(all) replaces), the context's text is the part decode(all)
 * agrees with, and the stream must emit the completed character.  Returns 1 when
 * equal. */
static int stream_matches(const tokenizer *t, const int32_t *ids, size_t n, size_t k, int skip,
                          tok_text *got, tok_text *want) {
    tok_stream s;
    got->len = want->len = 0;
    tok_text pre = {0};
    assert_int_equal(tok_decode_append(t, ids, k, skip, &pre), LLMQ_OK);
    assert_int_equal(tok_decode_append(t, ids, n, skip, want), LLMQ_OK);
    assert_int_equal(tok_stream_init(&s, t, ids, k, skip), LLMQ_OK);
    for (size_t i = k; i < n; i++) assert_int_equal(tok_stream_push(&s, ids[i], got), LLMQ_OK);
    assert_int_equal(tok_stream_finish(&s, got), LLMQ_OK);
    tok_stream_deinit(&s);
    /* The context's text: decode(context) when decode(all) extends it, else the
     * part before the U+FFFDs that stand for its truncated character.  When
     * decode(context) ends in U+FFFD that decode(all) also has, either reading holds. */
    static const char fffd[] = "\xEF\xBF\xBD";
    size_t cand[2], nc = 0, l = pre.len;
    int extends = want->len >= pre.len && (pre.len == 0 || !memcmp(want->data, pre.data, pre.len));
    if (extends) cand[nc++] = pre.len;
    while (l >= 3 && !memcmp(pre.data + l - 3, fffd, 3)) l -= 3;
    if (l < pre.len) {
        size_t lcp = 0;
        while (lcp < l && lcp < want->len && pre.data[lcp] == want->data[lcp]) lcp++;
        if (lcp == l) cand[nc++] = l;
    }
    int ok = 0;
    for (size_t c = 0; c < nc; c++)
        if (got->len == want->len - cand[c] && (got->len == 0 || !memcmp(got->data, want->data + cand[c], got->len)))
            ok = 1;
    if (!ok) {
        fprintf(stderr, "  stream mismatch (context %zu ids, skip_special %d)\n", k, skip);
        print_ids("ids", ids, n);
        print_escaped("decode(all)   ", want->data ? want->data : "", want->len);
        print_escaped("decode(prompt)", pre.data ? pre.data : "", pre.len);
        print_escaped("streamed      ", got->data ? got->data : "", got->len);
    }
    tok_text_deinit(&pre);
    return ok;
}

static int is_byte_token(const tokenizer *t, int32_t id) {
    size_t l = 0;
    const char *s = tok_id_to_token(t, id, &l);
    return s && l == 6 && !memcmp(s, "<0x", 3) && s[5] == '>';
}

/* Is ids[0..k) | ids[k..n) a cut inside a byte run (ids that skip_special drops
 * do not end a run)? */
static int cut_in_byte_run(const tokenizer *t, const int32_t *ids, size_t n, size_t k, int skip) {
    size_t a = k, b = k;
    while (a > 0 && skip && tok_is_special(t, ids[a - 1])) a--;
    while (b < n && skip && tok_is_special(t, ids[b])) b++;
    return a > 0 && b < n && is_byte_token(t, ids[a - 1]) && is_byte_token(t, ids[b]);
}

/* ---------------------------------------------------------------- fixtures */

typedef struct fixture_stats {
    size_t cases, bad_ids, bad_ids_special, bad_dec, bad_dec_special, bad_dec_skip;
    size_t decodes, bad_rand, streams, bad_stream;
} fixture_stats;

/* Check tokenizer `dir` against <name>.expect.json over the corpus. */
static void check_fixture(const char *dir, const char *name) {
    char path[4096];
    json_error_t je;
    snprintf(path, sizeof path, "%s/tests/fixtures/tokenizers/corpus.json", tu_root());
    json_t *corpus = json_load_file(path, JSON_ALLOW_NUL, &je);
    snprintf(path, sizeof path, "%s/tests/fixtures/tokenizers/%s.expect.json", tu_root(), name);
    json_t *exp = json_load_file(path, JSON_ALLOW_NUL, &je);
    if (!corpus || !exp) fprintf(stderr, "cannot read fixtures: %s\n", je.text);
    assert_non_null(corpus);
    assert_non_null(exp);
    json_t *cases = json_object_get(exp, "cases");
    assert_int_equal(json_array_size(cases), json_array_size(corpus));
    assert_true(json_array_size(corpus) >= 300);
    tokenizer *t = load_or_fail(dir);
    fixture_stats st = {0};
    size_t shown = 0;
    tok_text got = {0}, want = {0};
    for (size_t i = 0; i < json_array_size(corpus); i++) {
        json_t *txt = json_array_get(corpus, i), *c = json_array_get(cases, i);
        size_t ne, nes;
        int32_t *e = json_ids(json_object_get(c, "ids"), &ne);
        json_t *jes = json_object_get(c, "ids_special"); /* absent: same as "ids" */
        int32_t *es = json_ids(jes ? jes : json_object_get(c, "ids"), &nes);
        for (int special = 0; special < 2; special++) {
            int32_t *ids;
            size_t n;
            llmq_err err = {0};
            assert_int_equal(tok_encode(t, json_string_value(txt), json_string_length(txt), special, &ids, &n, &err),
                             LLMQ_OK);
            int ok = special ? ids_equal(ids, n, es, nes) : ids_equal(ids, n, e, ne);
            if (!ok) {
                special ? st.bad_ids_special++ : st.bad_ids++;
                if (shown++ < SHOW_MAX) {
                    fprintf(stderr, "  %s case %zu: ids differ (add_special %d)\n", name, i, special);
                    print_escaped("text", json_string_value(txt), json_string_length(txt));
                    print_ids("want", special ? es : e, special ? nes : ne);
                    print_ids("got ", ids, n);
                }
            }
            free(ids);
        }
        struct { const int32_t *ids; size_t n; int skip; const char *key; size_t *bad; } d[] = {
            {e, ne, 0, "decoded", &st.bad_dec},
            {es, nes, 0, "decoded_special", &st.bad_dec_special},
            {es, nes, 1, "decoded_skip", &st.bad_dec_skip},
        };
        for (size_t k = 0; k < 3; k++) {
            got.len = 0;
            assert_int_equal(tok_decode_append(t, d[k].ids, d[k].n, d[k].skip, &got), LLMQ_OK);
            json_t *w = json_object_get(c, d[k].key);
            if (!w) w = json_object_get(c, "decoded"); /* absent: same as "decoded" */
            if (!text_equal(&got, w)) {
                (*d[k].bad)++;
                if (shown++ < SHOW_MAX) {
                    fprintf(stderr, "  %s case %zu: %s differs\n", name, i, d[k].key);
                    print_ids("ids ", d[k].ids, d[k].n);
                    print_escaped("want", json_string_value(w), json_string_length(w));
                    print_escaped("got ", got.data, got.len);
                }
            }
        }
        /* Streaming: no context, half the ids as context, all but one. */
        size_t ctxs[] = {0, nes / 2, nes ? nes - 1 : 0};
        for (size_t k = 0; k < 3; k++)
            for (int skip = 0; skip < 2; skip++) {
                st.streams++;
                if (!stream_matches(t, es, nes, ctxs[k], skip, &got, &want)) st.bad_stream++;
            }
        free(e);
        free(es);
        st.cases++;
    }
    json_t *decs = json_object_get(exp, "decodes");
    tok_text want2 = {0};
    for (size_t i = 0; i < json_array_size(decs); i++) {
        json_t *c = json_array_get(decs, i);
        size_t n;
        int32_t *ids = json_ids(json_object_get(c, "ids"), &n);
        for (int skip = 0; skip < 2; skip++) {
            json_t *w = json_object_get(c, skip ? "decoded_skip" : "decoded");
            got.len = 0;
            assert_int_equal(tok_decode_append(t, ids, n, skip, &got), LLMQ_OK);
            st.decodes++;
            /* Streams hold on random ids too (truncated characters, broken byte runs).
             * A context cut inside a "<0xNN>" run is left out: its text is not
             * defined (HF may turn the whole run into U+FFFDs once it continues). */
            size_t ctxs[] = {0, n / 2};
            for (size_t k = 0; k < 2; k++) {
                if (k && cut_in_byte_run(t, ids, n, n / 2, skip)) continue;
                st.streams++;
                if (!stream_matches(t, ids, n, ctxs[k], skip, &want, &want2)) st.bad_stream++;
            }
            if (!text_equal(&got, w)) {
                st.bad_rand++;
                if (shown++ < SHOW_MAX) {
                    fprintf(stderr, "  %s random decode %zu (skip %d) differs\n", name, i, skip);
                    print_ids("ids ", ids, n);
                    print_escaped("want", json_string_value(w), json_string_length(w));
                    print_escaped("got ", got.data, got.len);
                }
            }
        }
        free(ids);
    }
    fprintf(stderr,
            "  %s: %zu cases: ids %zu bad, ids+special %zu bad, decode %zu/%zu/%zu bad; "
            "%zu random decodes %zu bad; %zu streams %zu bad\n",
            name, st.cases, st.bad_ids, st.bad_ids_special, st.bad_dec, st.bad_dec_special, st.bad_dec_skip,
            st.decodes, st.bad_rand, st.streams, st.bad_stream);
    tok_text_deinit(&got);
    tok_text_deinit(&want);
    tok_text_deinit(&want2);
    tok_destroy(t);
    json_decref(corpus);
    json_decref(exp);
    assert_int_equal(st.bad_ids + st.bad_ids_special + st.bad_dec + st.bad_dec_special + st.bad_dec_skip +
                         st.bad_rand + st.bad_stream,
                     0);
}

static void fixture_dir(const char *name) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/tokenizers/%s", tu_root(), name);
    check_fixture(dir, name);
}

static void test_bl_llama3(void **state) { (void)state; fixture_dir("bl-llama3"); }
static void test_spm_bf(void **state) { (void)state; fixture_dir("spm-bf"); }
static void test_misc_meta(void **state) { (void)state; fixture_dir("misc-meta"); }
static void test_bl_roberta(void **state) { (void)state; fixture_dir("bl-roberta"); }
static void test_falcon_like(void **state) { (void)state; fixture_dir("falcon-like"); }
static void test_ws_suffix(void **state) { (void)state; fixture_dir("ws-suffix"); }

static void test_stories260k(void **state) {
    (void)state;
    const char *sh = tu_shared();
    if (!sh) {
        print_message("../shared is absent: stories260K tokenizer check skipped\n");
        skip();
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/models/stories260K", sh);
    check_fixture(dir, "stories260K");
}

/* ---------------------------------------------------------------- shared cases */

/* The 46 llama.cpp cases with Hugging Face ids; see ../shared/tokenizers/README.md. */
static void check_shared(const char *name, int roundtrip_exact) {
    const char *sh = tu_shared();
    if (!sh) {
        print_message("../shared is absent: %s cases skipped\n", name);
        skip();
    }
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s/tokenizers/%s", sh, name);
    snprintf(path, sizeof path, "%s/cases.inp", dir);
    char *inp = tu_read_file(path, NULL);
    snprintf(path, sizeof path, "%s/cases.out", dir);
    char *out = tu_read_file(path, NULL);
    assert_non_null(inp);
    assert_non_null(out);
    tokenizer *t = load_or_fail(dir);
    static const char sep[] = "\n__ggml_vocab_test__\n";
    size_t ncase = 0, bad = 0, bad_rt = 0, bad_stream = 0;
    char *p = inp, *line = out;
    tok_text got = {0}, want = {0};
    for (char *q; (q = strstr(p, sep)); p = q + sizeof sep - 1) {
        size_t len = (size_t)(q - p);
        char *eol = strchr(line, '\n');
        assert_non_null(eol);
        *eol = '\0';
        int32_t exp[512];
        size_t ne = 0;
        for (char *s = line, *end; *s; s = end) {
            long v = strtol(s, &end, 10);
            if (end == s) break;
            exp[ne++] = (int32_t)v;
        }
        line = eol + 1;
        int32_t *ids;
        size_t n;
        llmq_err err = {0};
        assert_int_equal(tok_encode(t, p, len, 0, &ids, &n, &err), LLMQ_OK);
        if (!ids_equal(ids, n, exp, ne)) {
            bad++;
            fprintf(stderr, "  %s case %zu differs\n", name, ncase);
            print_escaped("text", p, len);
            print_ids("want", exp, ne);
            print_ids("got ", ids, n);
        }
        /* decode(encode(x)) == x: exact for byte-level; for SentencePiece-style
         * too unless the text holds '▁' or special-token text (README). */
        got.len = 0;
        assert_int_equal(tok_decode_append(t, ids, n, 0, &got), LLMQ_OK);
        int exempt = !roundtrip_exact && (memmem(p, len, "\xE2\x96\x81", 3) || memmem(p, len, "<", 1));
        if (!exempt && (got.len != len || memcmp(got.data, p, len))) {
            bad_rt++;
            fprintf(stderr, "  %s case %zu: decode(encode(x)) != x\n", name, ncase);
            print_escaped("text", p, len);
            print_escaped("got ", got.data, got.len);
        }
        for (size_t k = 0; k <= n; k += n / 3 + 1)
            if (!stream_matches(t, ids, n, k, 0, &got, &want)) bad_stream++;
        free(ids);
        ncase++;
    }
    fprintf(stderr, "  %s: %zu cases, %zu bad ids, %zu bad round trips, %zu bad streams\n", name, ncase, bad,
            bad_rt, bad_stream);
    assert_int_equal(ncase, 46);
    assert_int_equal(bad + bad_rt + bad_stream, 0);
    tok_text_deinit(&got);
    tok_text_deinit(&want);
    tok_destroy(t);
    free(inp);
    free(out);
}

static void test_shared_llama_spm(void **state) { (void)state; check_shared("llama-spm", 0); }
static void test_shared_gpt2(void **state) { (void)state; check_shared("gpt-2", 1); }

/* ---------------------------------------------------------------- behaviour */

/* Facts the shared READMEs state, spelled out so a regression reads plainly. */
static void test_shared_specifics(void **state) {
    (void)state;
    const char *sh = tu_shared();
    if (!sh) {
        print_message("../shared is absent: shared tokenizer specifics skipped\n");
        skip();
    }
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/tokenizers/llama-spm", sh);
    tokenizer *t = load_or_fail(dir);
    int32_t *ids;
    size_t n;
    llmq_err err = {0};
    assert_int_equal(tok_bos_id(t), 1);
    assert_int_equal(tok_eos_id(t), 2);
    assert_true(tok_adds_bos(t));
    assert_int_equal(tok_vocab_size(t), 32000);
    assert_int_equal(tok_encode(t, "<s>Hello</s>", 12, 0, &ids, &n, &err), LLMQ_OK);
    int32_t e1[] = {1, 15043, 2};
    assert_true(ids_equal(ids, n, e1, 3));
    free(ids);
    assert_int_equal(tok_encode(t, "a</s> b", 7, 1, &ids, &n, &err), LLMQ_OK);
    int32_t e2[] = {1, 263, 2, 29871, 289};
    assert_true(ids_equal(ids, n, e2, 5));
    free(ids);
    assert_int_equal(tok_encode(t, "", 0, 1, &ids, &n, &err), LLMQ_OK); /* HF: [BOS] */
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 1);
    free(ids);
    /* Invalid UTF-8 is refused, not guessed at. */
    assert_int_equal(tok_encode(t, "a\xC3(", 3, 0, &ids, &n, &err), LLMQ_ERR_INVALID);
    assert_non_null(strstr(err.msg, "UTF-8"));
    /* The first generated token keeps its space after a prompt. */
    tok_stream s;
    tok_text out = {0};
    int32_t prompt[] = {1, 9038, 2501, 263, 931}; /* <s> Once upon a time */
    assert_int_equal(tok_stream_init(&s, t, prompt, 5, 1), LLMQ_OK);
    assert_int_equal(tok_stream_push(&s, 15043, &out), LLMQ_OK); /* ▁Hello */
    assert_string_equal(out.data, " Hello");
    /* Byte tokens appear only when a non-byte token closes their run. */
    assert_int_equal(tok_stream_push(&s, 3 + 0xE2, &out), LLMQ_OK);
    assert_int_equal(tok_stream_push(&s, 3 + 0x82, &out), LLMQ_OK);
    assert_int_equal(tok_stream_push(&s, 3 + 0xAC, &out), LLMQ_OK);
    assert_string_equal(out.data, " Hello");
    assert_int_equal(tok_stream_push(&s, 3186, &out), LLMQ_OK); /* ▁world */
    assert_string_equal(out.data, " Hello\xE2\x82\xAC world");
    /* A run left invalid at the end: one U+FFFD per byte, as one-shot decoding. */
    assert_int_equal(tok_stream_push(&s, 3 + 0xC3, &out), LLMQ_OK);
    assert_int_equal(tok_stream_push(&s, 3 + 0xE2, &out), LLMQ_OK);
    assert_int_equal(tok_stream_finish(&s, &out), LLMQ_OK);
    assert_string_equal(out.data, " Hello\xE2\x82\xAC world\xEF\xBF\xBD\xEF\xBF\xBD");
    tok_stream_deinit(&s);
    tok_text_deinit(&out);
    tok_destroy(t);

    snprintf(dir, sizeof dir, "%s/tokenizers/gpt-2", sh);
    t = load_or_fail(dir);
    assert_int_equal(tok_encode(t, "Hello<|endoftext|>world", 23, 1, &ids, &n, &err), LLMQ_OK);
    int32_t e3[] = {15496, 50256, 6894};
    assert_true(ids_equal(ids, n, e3, 3));
    free(ids);
    assert_false(tok_adds_bos(t));
    size_t tl;
    const char *tok = tok_id_to_token(t, 18435, &tl);
    assert_non_null(tok);
    assert_int_equal(tl, strlen("ĠHello"));
    assert_memory_equal(tok, "ĠHello", tl);
    assert_null(tok_id_to_token(t, 60000, NULL));
    assert_int_equal(tok_token_to_id(t, "<|endoftext|>", 13), 50256);
    assert_true(tok_is_special(t, 50256));
    /* Unknown ids are dropped by decode, as HF. */
    int32_t odd[] = {15496, 99999, 995};
    char *txt = tok_decode(t, odd, 3, 0);
    assert_string_equal(txt, "Hello world");
    free(txt);
    tok_destroy(t);
}

/* tok_id_bytes: one id's piece of a text, as logprobs show it.  Checked by
 * hand on known ids, and as a whole: the pieces of encode(x) concatenate to
 * x (GPT-2: byte-level, exact) or to " " + x (Llama 2: the normalizer's
 * prepended "▁" is a space in the middle of a text), for every shared case
 * that round-trips. */
static void piece_is(const tokenizer *t, int32_t id, const char *want, size_t want_len) {
    tok_text got = {0};
    assert_int_equal(tok_id_bytes(t, id, &got), LLMQ_OK);
    if (got.len != want_len || memcmp(got.data, want, want_len)) {
        fprintf(stderr, "  piece of id %d:\n", id);
        print_escaped("want", want, want_len);
        print_escaped("got ", got.data, got.len);
        fail();
    }
    tok_text_deinit(&got);
}

static void check_pieces(const char *name, const char *prefix) {
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s/tokenizers/%s", tu_shared(), name);
    snprintf(path, sizeof path, "%s/cases.inp", dir);
    char *inp = tu_read_file(path, NULL);
    assert_non_null(inp);
    tokenizer *t = load_or_fail(dir);
    static const char sep[] = "\n__ggml_vocab_test__\n";
    size_t ncase = 0, checked = 0, bad = 0;
    tok_text got = {0}, want = {0};
    for (char *p = inp, *q; (q = strstr(p, sep)); p = q + sizeof sep - 1, ncase++) {
        size_t len = (size_t)(q - p);
        int32_t *ids;
        size_t n;
        llmq_err err = {0};
        assert_int_equal(tok_encode(t, p, len, 0, &ids, &n, &err), LLMQ_OK);
        want.len = got.len = 0;
        assert_int_equal(tok_decode_append(t, ids, n, 0, &want), LLMQ_OK);
        int exact = want.len == len && !memcmp(want.data, p, len); /* see check_shared */
        if (exact && len) {
            want.len = 0;
            tok_text_append(&want, prefix, strlen(prefix));
            tok_text_append(&want, p, len);
            for (size_t i = 0; i < n; i++) assert_int_equal(tok_id_bytes(t, ids[i], &got), LLMQ_OK);
            checked++;
            if (got.len != want.len || memcmp(got.data, want.data, want.len)) {
                if (++bad <= SHOW_MAX) {
                    fprintf(stderr, "  %s case %zu: pieces differ from the text\n", name, ncase);
                    print_escaped("want", want.data, want.len);
                    print_escaped("got ", got.data, got.len);
                }
            }
        }
        free(ids);
    }
    fprintf(stderr, "  %s: pieces of %zu of %zu cases checked, %zu bad\n", name, checked, ncase, bad);
    assert_true(checked >= 30);
    assert_int_equal(bad, 0);
    tok_text_deinit(&got);
    tok_text_deinit(&want);
    tok_destroy(t);
    free(inp);
}

static void test_id_bytes(void **state) {
    (void)state;
    const char *sh = tu_shared();
    if (!sh) {
        print_message("../shared is absent: token piece checks skipped\n");
        skip();
    }
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/tokenizers/llama-spm", sh);
    tokenizer *t = load_or_fail(dir);
    piece_is(t, 15043, " Hello", 6);          /* ▁Hello keeps its space, even alone */
    piece_is(t, 3 + 0xE2, "\xE2", 1);         /* <0xE2>: its raw byte, half a character */
    piece_is(t, 2, "</s>", 4);                /* specials: their content */
    piece_is(t, 99999, "", 0);                /* unknown: nothing */
    tok_destroy(t);
    snprintf(dir, sizeof dir, "%s/tokenizers/gpt-2", sh);
    t = load_or_fail(dir);
    piece_is(t, 18435, " Hello", 6);          /* ĠHello */
    piece_is(t, 50256, "<|endoftext|>", 13);
    /* All 50257 pieces: cheap enough to build at a worker's start. */
    tok_text all = {0};
    for (int32_t id = 0; id < tok_vocab_size(t); id++) assert_int_equal(tok_id_bytes(t, id, &all), LLMQ_OK);
    assert_true(all.len > 50257);
    tok_text_deinit(&all);
    tok_destroy(t);
    check_pieces("gpt-2", "");
    check_pieces("llama-spm", " ");
}

/* Loading a folder with only tokenizer.json works, and NULL is safe to destroy. */
static void test_minimal_folder(void **state) {
    (void)state;
    tok_destroy(NULL);
    tok_stream_deinit(NULL);
    tok_text_deinit(NULL);
    char *dir = tu_mkdtemp();
    assert_non_null(dir);
    char src[4096], dst[4200];
    snprintf(src, sizeof src, "%s/tests/fixtures/tokenizers/bl-llama3/tokenizer.json", tu_root());
    size_t len;
    char *data = tu_read_file(src, &len);
    assert_non_null(data);
    snprintf(dst, sizeof dst, "%s/tokenizer.json", dir);
    assert_int_equal(tu_write_file(dst, data, len), 0);
    free(data);
    llmq_err err = {0};
    tokenizer *t = tok_load(dir, &err);
    assert_non_null(t);
    assert_null(tok_chat_template(t));
    assert_string_equal(tok_bos_token(t), "");
    int32_t *ids;
    size_t n;
    assert_int_equal(tok_encode(t, "hi", 2, 1, &ids, &n, &err), LLMQ_OK);
    assert_int_equal(ids[0], 0); /* the template's <|begin_of_text|> */
    free(ids);
    tok_destroy(t);
    /* The file itself may be named too. */
    t = tok_load(dst, &err);
    assert_non_null(t);
    tok_destroy(t);
    tu_rmtree(dir);
    free(dir);
}

/* One tokenizer shared by threads (the BPE word cache is the only mutable part). */
typedef struct thread_job {
    const tokenizer *t;
    json_t *corpus;
    size_t bad;
    unsigned seed;
} thread_job;

static void *encode_all(void *arg) {
    thread_job *j = arg;
    for (size_t r = 0; r < 3; r++)
        for (size_t k = 0; k < json_array_size(j->corpus); k++) {
            size_t i = (k * 7 + j->seed) % json_array_size(j->corpus);
            json_t *s = json_array_get(j->corpus, i);
            int32_t *a, *b;
            size_t na, nb;
            llmq_err err = {0};
            if (tok_encode(j->t, json_string_value(s), json_string_length(s), 1, &a, &na, &err)) { j->bad++; continue; }
            if (tok_encode(j->t, json_string_value(s), json_string_length(s), 1, &b, &nb, &err)) { j->bad++; free(a); continue; }
            j->bad += !ids_equal(a, na, b, nb);
            free(a);
            free(b);
        }
    return NULL;
}

static void test_threads(void **state) {
    (void)state;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/tokenizers/bl-llama3", tu_root());
    tokenizer *t = load_or_fail(dir);
    snprintf(dir, sizeof dir, "%s/tests/fixtures/tokenizers/corpus.json", tu_root());
    json_t *corpus = json_load_file(dir, JSON_ALLOW_NUL, NULL);
    assert_non_null(corpus);
    pthread_t th[4];
    thread_job jobs[4];
    for (unsigned i = 0; i < 4; i++) {
        jobs[i] = (thread_job){t, corpus, 0, i * 13};
        assert_int_equal(pthread_create(&th[i], NULL, encode_all, &jobs[i]), 0);
    }
    size_t bad = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        bad += jobs[i].bad;
    }
    assert_int_equal(bad, 0);
    json_decref(corpus);
    tok_destroy(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bl_llama3),
        cmocka_unit_test(test_spm_bf),
        cmocka_unit_test(test_misc_meta),
        cmocka_unit_test(test_bl_roberta),
        cmocka_unit_test(test_falcon_like),
        cmocka_unit_test(test_ws_suffix),
        cmocka_unit_test(test_stories260k),
        cmocka_unit_test(test_shared_llama_spm),
        cmocka_unit_test(test_shared_gpt2),
        cmocka_unit_test(test_shared_specifics),
        cmocka_unit_test(test_id_bytes),
        cmocka_unit_test(test_minimal_folder),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
