/*
 * test_utf8.c — common/utf8.c against the Unicode standard (chapter 3).
 *
 * The expectations come from the standard, not from llmq's output:
 *  - D92 / Table 3-7: a byte sequence is well-formed UTF-8 exactly when it is
 *    the shortest encoding (Table 3-6's bit distribution) of a scalar value
 *    (D76: 0..D7FF, E000..10FFFF).  The test writes its own encoder from
 *    Table 3-6 and checks every scalar value, every surrogate, the first
 *    values past U+10FFFF, every overlong form of every value, and every
 *    1-, 2- and 3-byte string against a decoder written from that definition;
 *  - §3.9 "U+FFFD Substitution of Maximal Subparts": the worked examples of
 *    the standard (non-shortest forms, surrogates, other ill-formed and
 *    truncated sequences, and the "61 F1 80 80 E1 80 C2 62 80 63 80 BF 64"
 *    example) decoded unit by unit;
 *  - the boundaries of each row of Table 3-7, named one by one;
 *  - a truncated tail is a prefix of some well-formed sequence, nothing else.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/utf8.h"

/* -------------------------------------------------------- the definitions */

/* Table 3-6: the bits of cp spread over 1..4 bytes.  `len` may be longer
 * than the shortest form (an overlong encoding) or cp may be no scalar
 * value (a surrogate, or above U+10FFFF): the bytes are still what the
 * bit distribution gives, which is what an ill-formed input looks like. */
static size_t ref_encode_len(uint32_t cp, size_t len, unsigned char *o) {
    switch (len) {
    case 1: o[0] = (unsigned char)cp; break;
    case 2:
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        break;
    case 3:
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        break;
    default:
        o[0] = (unsigned char)(0xF0 | (cp >> 18));
        o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[3] = (unsigned char)(0x80 | (cp & 0x3F));
        break;
    }
    return len;
}

static size_t shortest_len(uint32_t cp) { return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4; }

static int is_scalar(uint32_t cp) { return cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF); }

/* D92 read backwards: the length of s[0..n) when s starts with the
 * shortest encoding of a scalar value, else 0.  Reads the lead's bit
 * pattern and the continuation bits, then asks the two questions the
 * definition asks (is it a scalar value, is this its shortest form). */
static size_t ref_seq(const unsigned char *s, size_t n) {
    size_t len;
    uint32_t cp;
    if (s[0] < 0x80) return 1;
    if ((s[0] & 0xE0) == 0xC0) len = 2, cp = s[0] & 0x1F;
    else if ((s[0] & 0xF0) == 0xE0) len = 3, cp = s[0] & 0x0F;
    else if ((s[0] & 0xF8) == 0xF0) len = 4, cp = s[0] & 0x07;
    else return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    return is_scalar(cp) && shortest_len(cp) == len ? len : 0;
}

/* ----------------------------------------------------------- the tests */

static void test_every_scalar_value(void **st) {
    (void)st;
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        if (!is_scalar(cp)) continue;
        unsigned char want[4];
        char got[4];
        size_t n = ref_encode_len(cp, shortest_len(cp), want);
        size_t m = llmq_utf8_encode((int32_t)cp, got);
        if (m != n || memcmp(got, want, n)) fail_msg("llmq_utf8_encode(U+%04X) is not Table 3-6's encoding", cp);
        if (llmq_utf8_seq(got, n) != n) fail_msg("U+%04X: llmq_utf8_seq refuses its encoding", cp);
        if (llmq_utf8_valid_prefix(got, n) != n) fail_msg("U+%04X: llmq_utf8_valid_prefix refuses its encoding", cp);
        if (llmq_utf8_unit(got, n) != n) fail_msg("U+%04X: llmq_utf8_unit is not the whole sequence", cp);
        if (llmq_utf8_lead_len((unsigned char)got[0]) != n) fail_msg("U+%04X: llmq_utf8_lead_len", cp);
        size_t len = 0;
        if ((uint32_t)llmq_utf8_decode(got, &len) != cp || len != n) fail_msg("llmq_utf8_decode(U+%04X)", cp);
        /* every proper prefix is a truncated sequence, held back whole */
        for (size_t k = 1; k < n; k++) {
            if (llmq_utf8_seq(got, k)) fail_msg("U+%04X: the first %zu bytes taken as a sequence", cp, k);
            if (llmq_utf8_incomplete_tail(got, k) != k) fail_msg("U+%04X: a %zu-byte start is not held back", cp, k);
            if (llmq_utf8_unit(got, k) != k) fail_msg("U+%04X: a %zu-byte start is not one maximal subpart", cp, k);
        }
        if (llmq_utf8_incomplete_tail(got, n)) fail_msg("U+%04X: a complete sequence held back", cp);
    }
}

/* Surrogates (D76: no scalar values), values past U+10FFFF, and every
 * overlong form of every value: ill-formed, and never held back whole. */
static void test_no_surrogates_overlongs_or_beyond(void **st) {
    (void)st;
    unsigned char b[4];
    for (uint32_t cp = 0xD800; cp <= 0xDFFF; cp++) {
        ref_encode_len(cp, 3, b);
        if (llmq_utf8_seq((char *)b, 3) || llmq_utf8_valid_prefix((char *)b, 3))
            fail_msg("surrogate U+%04X accepted", cp);
        if (llmq_utf8_incomplete_tail((char *)b, 2)) fail_msg("surrogate U+%04X: start held back", cp);
    }
    for (uint32_t cp = 0x110000; cp <= 0x1FFFFF; cp++) {
        ref_encode_len(cp, 4, b);
        if (llmq_utf8_seq((char *)b, 4) || llmq_utf8_valid_prefix((char *)b, 4)) fail_msg("U+%X accepted", cp);
        if (llmq_utf8_incomplete_tail((char *)b, 3) || llmq_utf8_incomplete_tail((char *)b, 2))
            fail_msg("U+%X: start held back", cp);
    }
    for (uint32_t cp = 0; cp < 0x10000; cp++)
        for (size_t len = shortest_len(cp) + 1; len <= 4; len++) {
            ref_encode_len(cp, len, b);
            if (llmq_utf8_seq((char *)b, len) || llmq_utf8_valid_prefix((char *)b, len))
                fail_msg("overlong %zu-byte form of U+%04X accepted", len, cp);
            if (len > 2 && llmq_utf8_incomplete_tail((char *)b, len - 1))
                fail_msg("overlong %zu-byte form of U+%04X: start held back", len, cp);
        }
}

/* Every string of 1, 2 and 3 bytes, and the 4-byte strings of every lead
 * and second byte with the continuation bytes' edge values. */
static void test_all_short_strings(void **st) {
    (void)st;
    unsigned char s[4];
    for (uint32_t v = 0; v < (1u << 24); v++) {
        s[0] = (unsigned char)(v >> 16);
        s[1] = (unsigned char)(v >> 8);
        s[2] = (unsigned char)v;
        /* 3 bytes always; the last 2 and the last 1 while they are new */
        for (size_t n = 3; n >= 1 && (n == 3 || v < (1u << (8 * n))); n--) {
            const unsigned char *p = s + 3 - n;
            size_t got = llmq_utf8_seq((const char *)p, n), want = ref_seq(p, n);
            if (got != want)
                fail_msg("%zu bytes from %02X: llmq_utf8_seq %zu, want %zu", n, p[0], got, want);
        }
    }
    static const unsigned char edge[] = {0x00, 0x3F, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xFF};
    for (unsigned lead = 0; lead < 256; lead++)
        for (unsigned b1 = 0; b1 < 256; b1++)
            for (size_t i = 0; i < sizeof edge; i++)
                for (size_t j = 0; j < sizeof edge; j++) {
                    s[0] = (unsigned char)lead;
                    s[1] = (unsigned char)b1;
                    s[2] = edge[i];
                    s[3] = edge[j];
                    if (llmq_utf8_seq((const char *)s, 4) != ref_seq(s, 4))
                        fail_msg("%02X %02X %02X %02X: llmq_utf8_seq %zu, want %zu", s[0], s[1], s[2], s[3],
                                 llmq_utf8_seq((const char *)s, 4), ref_seq(s, 4));
                }
}

/* The rows of Table 3-7 at their edges, by name. */
static void test_table_3_7_edges(void **st) {
    (void)st;
    static const struct {
        const char *s;
        size_t n, want;
        int32_t cp; /* when want > 0 */
    } cases[] = {
        {"\x00", 1, 1, 0x0},
        {"\x7F", 1, 1, 0x7F},
        {"\xC2\x80", 2, 2, 0x80},
        {"\xDF\xBF", 2, 2, 0x7FF},
        {"\xE0\xA0\x80", 3, 3, 0x800},
        {"\xE1\x80\x80", 3, 3, 0x1000},
        {"\xEC\xBF\xBF", 3, 3, 0xCFFF},
        {"\xED\x80\x80", 3, 3, 0xD000},
        {"\xED\x9F\xBF", 3, 3, 0xD7FF},
        {"\xEE\x80\x80", 3, 3, 0xE000},
        {"\xEF\xBF\xBF", 3, 3, 0xFFFF},
        {"\xF0\x90\x80\x80", 4, 4, 0x10000},
        {"\xF3\xBF\xBF\xBF", 4, 4, 0xFFFFF},
        {"\xF4\x80\x80\x80", 4, 4, 0x100000},
        {"\xF4\x8F\xBF\xBF", 4, 4, 0x10FFFF},
        {"\xC2\x80\xFF", 3, 2, 0x80}, /* only the first sequence counts */
        /* overlong */
        {"\xC0\x80", 2, 0, 0},
        {"\xC1\xBF", 2, 0, 0},
        {"\xE0\x80\x80", 3, 0, 0},
        {"\xE0\x9F\xBF", 3, 0, 0},
        {"\xF0\x80\x80\x80", 4, 0, 0},
        {"\xF0\x8F\xBF\xBF", 4, 0, 0},
        /* surrogates */
        {"\xED\xA0\x80", 3, 0, 0},
        {"\xED\xAD\xBF", 3, 0, 0},
        {"\xED\xBF\xBF", 3, 0, 0},
        /* above U+10FFFF, and the old 5- and 6-byte forms */
        {"\xF4\x90\x80\x80", 4, 0, 0},
        {"\xF5\x80\x80\x80", 4, 0, 0},
        {"\xF7\xBF\xBF\xBF", 4, 0, 0},
        {"\xF8\x88\x80\x80\x80", 5, 0, 0},
        {"\xFC\x84\x80\x80\x80\x80", 6, 0, 0},
        {"\xFE", 1, 0, 0},
        {"\xFF", 1, 0, 0},
        /* continuation bytes alone, a lead without its continuation */
        {"\x80", 1, 0, 0},
        {"\xBF", 1, 0, 0},
        {"\xC2\x41", 2, 0, 0},
        {"\xE1\x80\x41", 3, 0, 0},
        /* truncated */
        {"\xC2", 1, 0, 0},
        {"\xE0\xA0", 2, 0, 0},
        {"\xF0\x90\x80", 3, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t got = llmq_utf8_seq(cases[i].s, cases[i].n);
        if (got != cases[i].want) fail_msg("case %zu: llmq_utf8_seq %zu, want %zu", i, got, cases[i].want);
        if (!cases[i].want) continue;
        size_t len = 0;
        assert_int_equal(llmq_utf8_decode(cases[i].s, &len), cases[i].cp);
        assert_int_equal(len, cases[i].want);
    }
}

/* Decode s[0..n) as §3.9 recommends: a well-formed sequence is copied, each
 * maximal subpart of an ill-formed one becomes one U+FFFD. */
static void lossy(const char *s, size_t n, char *out, size_t cap) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t k = llmq_utf8_seq(s + i, n - i);
        const char *piece = k ? s + i : "\xEF\xBF\xBD";
        size_t plen = k ? k : 3;
        if (!k) k = llmq_utf8_unit(s + i, n - i);
        assert_true(k >= 1 && k <= n - i);
        assert_true(o + plen < cap);
        memcpy(out + o, piece, plen);
        o += plen;
        i += k;
    }
    out[o] = '\0';
}

#define FFFD "\xEF\xBF\xBD"

static void test_maximal_subparts(void **st) {
    (void)st;
    static const struct {
        const char *name, *in, *want;
    } cases[] = {
        {"the example of §3.9", "\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64",
         "a" FFFD FFFD FFFD "b" FFFD "c" FFFD FFFD "d"},
        {"non-shortest forms", "\xC0\xAF\xE0\x80\xBF\xF0\x81\x82\x41",
         FFFD FFFD FFFD FFFD FFFD FFFD FFFD FFFD "A"},
        {"surrogates", "\xED\xA0\x80\xED\xBF\xBF\xED\xAF\x41", FFFD FFFD FFFD FFFD FFFD FFFD FFFD FFFD "A"},
        {"other ill-formed sequences", "\xF4\x91\x92\x93\xFF\x41\x80\xBF\x42",
         FFFD FFFD FFFD FFFD FFFD "A" FFFD FFFD "B"},
        {"truncated sequences", "\xE1\x80\xE2\xF0\x91\x92\xF1\xBF\x41", FFFD FFFD FFFD FFFD "A"},
        {"well-formed text", "a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80", "a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80"},
    };
    char out[128];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lossy(cases[i].in, strlen(cases[i].in), out, sizeof out);
        if (strcmp(out, cases[i].want)) fail_msg("%s: wrong U+FFFD substitution", cases[i].name);
    }
}

static void test_valid_prefix(void **st) {
    (void)st;
    assert_int_equal(llmq_utf8_valid_prefix("", 0), 0);
    assert_int_equal(llmq_utf8_valid_prefix("ab\xE2\x82\xAC", 5), 5);
    assert_int_equal(llmq_utf8_valid_prefix("ab\xE2\x82", 4), 2);    /* truncated at the end */
    assert_int_equal(llmq_utf8_valid_prefix("a\xC0\x80" "b", 4), 1); /* overlong NUL */
    assert_int_equal(llmq_utf8_valid_prefix("a\0b", 3), 3);          /* NUL is a character */
    assert_int_equal(llmq_utf8_valid_prefix("\xF0\x9F\x98\x80x\xED\xA0\x80", 8), 5);
}

static void test_incomplete_tail(void **st) {
    (void)st;
    static const struct {
        const char *s;
        size_t n, want;
    } cases[] = {
        {"", 0, 0},
        {"a", 1, 0},
        {"\xE2\x82", 2, 2},
        {"x\xE2", 2, 1},
        {"\xF0\x9F\x98", 3, 3},
        {"\xF4\x8F\xBF", 3, 3},
        {"\xE2\x82\xAC", 3, 0},         /* complete */
        {"\xF0\x9F\x98\x80\xF0", 5, 1}, /* a complete one, then a lead */
        {"\xC2\x80\xC2", 3, 1},
        {"\xED\xA0", 2, 0},  /* a surrogate's start: no well-formed sequence begins so */
        {"\xE0\x9F", 2, 0},  /* an overlong's start */
        {"\xF4\x90", 2, 0},  /* past U+10FFFF */
        {"\xC0", 1, 0},      /* never a lead */
        {"\xF5", 1, 0},
        {"\x80", 1, 0},      /* a continuation without a lead */
        {"\x80\x80\x80", 3, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t got = llmq_utf8_incomplete_tail(cases[i].s, cases[i].n);
        if (got != cases[i].want) fail_msg("case %zu: incomplete tail %zu, want %zu", i, got, cases[i].want);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_3_7_edges),
        cmocka_unit_test(test_every_scalar_value),
        cmocka_unit_test(test_no_surrogates_overlongs_or_beyond),
        cmocka_unit_test(test_all_short_strings),
        cmocka_unit_test(test_maximal_subparts),
        cmocka_unit_test(test_valid_prefix),
        cmocka_unit_test(test_incomplete_tail),
    };
    return cmocka_run_group_tests_name("utf8", tests, NULL, NULL);
}
