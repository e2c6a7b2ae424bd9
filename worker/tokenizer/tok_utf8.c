/*
 * tok_utf8.c — UTF-8 for the tokenizer beyond common/utf8.h: lossy decoding
 * into a tok_text with Rust's exact U+FFFD rules, and the two Unicode
 * predicates Hugging Face's added-token matching uses.  Unicode data comes
 * from utf8proc and PCRE2; no tables are written here.
 */
#include <pthread.h>
#include <string.h>

#include <utf8proc.h>

#include "worker/tokenizer/tok_internal.h"

llmq_status tok_utf8_lossy_append(tok_text *out, const unsigned char *b, size_t n,
                                  size_t *tail_pending) {
    static const char fffd[] = "\xEF\xBF\xBD";
    size_t pend = tail_pending ? llmq_utf8_incomplete_tail((const char *)b, n) : 0;
    size_t end = n - pend, i = 0;
    while (i < end) {
        size_t start = i;
        while (i < end) { /* copy the longest valid stretch in one go */
            if (b[i] < 0x80) { i++; continue; }
            size_t r = llmq_utf8_seq((const char *)b + i, end - i);
            if (!r) break;
            i += r;
        }
        if (i > start && tok_text_append(out, (const char *)b + start, i - start)) return LLMQ_ERR_NOMEM;
        if (i < end) { /* one maximal invalid subpart -> one U+FFFD */
            i += llmq_utf8_unit((const char *)b + i, end - i);
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
    size_t n = llmq_utf8_encode(cp, buf);
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md) return 0;
    int rc = pcre2_match(word_re, (PCRE2_SPTR)buf, n, 0, PCRE2_NO_UTF_CHECK, md, NULL);
    pcre2_match_data_free(md);
    return rc > 0;
}
