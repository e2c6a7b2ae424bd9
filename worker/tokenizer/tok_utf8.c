/*
 * tok_utf8.c — UTF-8 for the tokenizer: validation, code points, lossy decoding
 * with Rust's exact U+FFFD rules, and the two Unicode predicates Hugging Face's
 * added-token matching uses.  Unicode data comes from utf8proc and PCRE2; no
 * tables are written here.
 *
 * Validity follows the Unicode standard (and Rust's str): no overlong forms, no
 * surrogates (ED A0..BF), nothing above U+10FFFF.
 */
#include <pthread.h>
#include <string.h>

#include <utf8proc.h>

#include "worker/tokenizer/tok_internal.h"

/* Valid range of the second byte of a sequence starting with lead b. */
static int second_ok(unsigned char lead, unsigned char b) {
    switch (lead) {
    case 0xE0: return b >= 0xA0 && b <= 0xBF;
    case 0xED: return b >= 0x80 && b <= 0x9F;
    case 0xF0: return b >= 0x90 && b <= 0xBF;
    case 0xF4: return b >= 0x80 && b <= 0x8F;
    default: return b >= 0x80 && b <= 0xBF;
    }
}

/* Bytes a sequence with this lead needs, 0 if it cannot start a sequence. */
static size_t need(unsigned char lead) {
    if (lead < 0x80) return 1;
    if (lead >= 0xC2 && lead <= 0xDF) return 2;
    if (lead >= 0xE0 && lead <= 0xEF) return 3;
    if (lead >= 0xF0 && lead <= 0xF4) return 4;
    return 0;
}

/* How many bytes from s[0] form a valid prefix of one sequence (>= 1 when the
 * lead is valid), capped by n; sets *full when the whole sequence is there. */
static size_t valid_run(const unsigned char *s, size_t n, int *full) {
    size_t k = need(s[0]);
    *full = 0;
    if (k == 0) return 0;
    if (k == 1) { *full = 1; return 1; }
    size_t i = 1;
    if (i < n && second_ok(s[0], s[1])) {
        i++;
        while (i < k && i < n && (s[i] & 0xC0) == 0x80) i++;
    }
    *full = (i == k);
    return i;
}

size_t tok_utf8_valid_prefix(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) { i++; continue; }
        int full;
        size_t r = valid_run(s + i, n - i, &full);
        if (!full) break;
        i += r;
    }
    return i;
}

int32_t tok_utf8_decode(const char *str, size_t *len) {
    const unsigned char *s = (const unsigned char *)str;
    if (s[0] < 0x80) { *len = 1; return s[0]; }
    if (s[0] < 0xE0) { *len = 2; return ((s[0] & 0x1F) << 6) | (s[1] & 0x3F); }
    if (s[0] < 0xF0) {
        *len = 3;
        return ((s[0] & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    }
    *len = 4;
    return ((s[0] & 0x07) << 18) | ((s[1] & 0x3F) << 12) | ((s[2] & 0x3F) << 6) | (s[3] & 0x3F);
}

size_t tok_utf8_encode(int32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) { o[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

size_t tok_utf8_incomplete_tail(const unsigned char *b, size_t n) {
    /* A truncated sequence is a valid lead plus fewer continuation bytes than it
     * needs, all in range: at most 3 bytes, starting at the last lead byte. */
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = b[n - back];
        if ((c & 0xC0) == 0x80) continue; /* continuation: look further back */
        size_t k = need(c);
        if (k <= back) return 0;          /* ASCII, invalid lead, or complete */
        int full;
        size_t r = valid_run(b + n - back, back, &full);
        return r == back ? back : 0;
    }
    return 0;
}

llmq_status tok_utf8_lossy_append(tok_text *out, const unsigned char *b, size_t n,
                                  size_t *tail_pending) {
    static const char fffd[] = "\xEF\xBF\xBD";
    size_t pend = tail_pending ? tok_utf8_incomplete_tail(b, n) : 0;
    size_t end = n - pend, i = 0;
    while (i < end) {
        size_t start = i;
        while (i < end) { /* copy the longest valid stretch in one go */
            if (b[i] < 0x80) { i++; continue; }
            int full;
            size_t r = valid_run(b + i, end - i, &full);
            if (!full) break;
            i += r;
        }
        if (i > start && tok_text_append(out, (const char *)b + start, i - start)) return LLMQ_ERR_NOMEM;
        if (i < end) { /* one maximal invalid subpart -> one U+FFFD */
            int full;
            size_t r = valid_run(b + i, end - i, &full);
            i += r ? r : 1;
            if (tok_text_append(out, fffd, 3)) return LLMQ_ERR_NOMEM;
        }
    }
    if (tail_pending) *tail_pending = pend;
    return LLMQ_OK;
}

/* ---------------------------------------------------------------- predicates */

int tok_cp_is_space(int32_t cp) {
    if (cp >= 0x09 && cp <= 0x0D) return 1;
    if (cp == 0x20 || cp == 0x85) return 1;
    if (cp < 0x80) return 0;
    utf8proc_category_t c = utf8proc_category(cp);
    return c == UTF8PROC_CATEGORY_ZS || c == UTF8PROC_CATEGORY_ZL || c == UTF8PROC_CATEGORY_ZP;
}

/* Rust's char::is_alphanumeric is Alphabetic || Numeric; Alphabetic includes
 * Other_Alphabetic marks that no general category gives, so ask PCRE2. */
static pcre2_code *word_re;
static pthread_once_t word_once = PTHREAD_ONCE_INIT;

static void word_init(void) {
    int e;
    PCRE2_SIZE o;
    word_re = pcre2_compile((PCRE2_SPTR) "[\\p{Alphabetic}\\p{N}_]", PCRE2_ZERO_TERMINATED,
                            PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED, &e, &o, NULL);
}

int tok_cp_is_word(int32_t cp) {
    if (cp < 0x80)
        return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') ||
               cp == '_';
    pthread_once(&word_once, word_init);
    if (!word_re) return 0;
    char buf[4];
    size_t n = tok_utf8_encode(cp, buf);
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md) return 0;
    int rc = pcre2_match(word_re, (PCRE2_SPTR)buf, n, 0, PCRE2_NO_UTF_CHECK, md, NULL);
    pcre2_match_data_free(md);
    return rc > 0;
}
