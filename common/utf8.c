/*
 * utf8.c — well-formed UTF-8, code points and maximal subparts (see utf8.h).
 *
 * Everything reads a sequence with one helper, run(): how far the bytes at
 * s follow one row of Table 3-7 of the Unicode standard.  The table's rows
 * differ only in the lead byte's length and the range of the second byte;
 * every later byte is 80..BF.
 */
#include "common/utf8.h"

/* Bytes a sequence with this lead needs, 0 if the lead cannot start one. */
static size_t need(unsigned char lead) {
    if (lead < 0x80) return 1;
    if (lead >= 0xC2 && lead <= 0xDF) return 2;
    if (lead >= 0xE0 && lead <= 0xEF) return 3;
    if (lead >= 0xF0 && lead <= 0xF4) return 4;
    return 0;
}

/* Whether b may follow lead as the second byte (Table 3-7): E0 and F0 rule
 * out the overlong forms, ED the surrogates, F4 what lies above U+10FFFF. */
static int second_ok(unsigned char lead, unsigned char b) {
    switch (lead) {
    case 0xE0: return b >= 0xA0 && b <= 0xBF;
    case 0xED: return b >= 0x80 && b <= 0x9F;
    case 0xF0: return b >= 0x90 && b <= 0xBF;
    case 0xF4: return b >= 0x80 && b <= 0x8F;
    default: return b >= 0x80 && b <= 0xBF;
    }
}

/* How many bytes of s[0..n) (n >= 1) start a well-formed sequence: its whole
 * length when it is complete (*full = 1), else the longest start of one
 * (>= 1 when the lead is valid), 0 when s[0] cannot lead. */
static size_t run(const unsigned char *s, size_t n, int *full) {
    size_t k = need(s[0]);
    *full = 0;
    if (k == 0) return 0;
    if (k == 1) {
        *full = 1;
        return 1;
    }
    size_t i = 1;
    if (i < n && second_ok(s[0], s[1])) {
        i++;
        while (i < k && i < n && (s[i] & 0xC0) == 0x80) i++;
    }
    *full = (i == k);
    return i;
}

size_t llmq_utf8_seq(const char *str, size_t n) {
    int full;
    size_t r = run((const unsigned char *)str, n, &full);
    return full ? r : 0;
}

size_t llmq_utf8_valid_prefix(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int full;
        size_t r = run(s + i, n - i, &full);
        if (!full) break;
        i += r;
    }
    return i;
}

size_t llmq_utf8_unit(const char *str, size_t n) {
    int full;
    size_t r = run((const unsigned char *)str, n, &full);
    return r ? r : 1;
}

size_t llmq_utf8_incomplete_tail(const char *str, size_t n) {
    const unsigned char *b = (const unsigned char *)str;
    /* A truncated sequence is a valid lead plus fewer continuation bytes than it
     * needs, all in range: at most 3 bytes, starting at the last lead byte. */
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = b[n - back];
        if ((c & 0xC0) == 0x80) continue; /* continuation: look further back */
        size_t k = need(c);
        if (k <= back) return 0; /* ASCII, invalid lead, or complete */
        int full;
        size_t r = run(b + n - back, back, &full);
        return r == back ? back : 0;
    }
    return 0;
}

int32_t llmq_utf8_decode(const char *str, size_t *len) {
    const unsigned char *s = (const unsigned char *)str;
    if (s[0] < 0x80) {
        *len = 1;
        return s[0];
    }
    if (s[0] < 0xE0) {
        *len = 2;
        return ((s[0] & 0x1F) << 6) | (s[1] & 0x3F);
    }
    if (s[0] < 0xF0) {
        *len = 3;
        return ((s[0] & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    }
    *len = 4;
    return ((s[0] & 0x07) << 18) | ((s[1] & 0x3F) << 12) | ((s[2] & 0x3F) << 6) | (s[3] & 0x3F);
}

size_t llmq_utf8_encode(int32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
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
