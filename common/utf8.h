/*
 * utf8.h — UTF-8 as the Unicode standard defines it, for the gateway and the
 * tokenizer: one implementation of well-formedness, code points and the
 * units a lossy decoder replaces.  No allocation, no Unicode data (the
 * tokenizer's Unicode predicates use utf8proc; its lossy append, which
 * writes into its own text buffer, stays there too).
 *
 * Well-formed (Unicode chapter 3, D92 and Table 3-7): a sequence is the
 * shortest encoding of a scalar value, so there are no overlong forms (C0,
 * C1, E0 80..9F, F0 80..8F), no surrogates (ED A0..BF: U+D800..DFFF) and
 * nothing above U+10FFFF (F4 90..BF, F5..FF).  Rust's str, Python's
 * bytes.decode and jansson agree with this.
 *
 * Text is `const char *` plus a length: NUL is a character like any other.
 * The prefix is llmq_utf8_ because jansson's static library exports
 * utf8_encode, utf8_iterate, ... (the CUDA bundle links it statically).
 */
#ifndef LLMQ_UTF8_H
#define LLMQ_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Length (1..4) of the well-formed sequence at s[0..n), n >= 1, or 0 when
 * s does not start with one (an ill-formed or a truncated sequence). */
size_t llmq_utf8_seq(const char *s, size_t n);

/* Length of the longest well-formed prefix of s[0..n) (n when all of it is). */
size_t llmq_utf8_valid_prefix(const char *s, size_t n);

/* What a lossy decoder takes from s[0..n) (n >= 1) as one unit: the
 * well-formed sequence there (llmq_utf8_seq), or else the maximal subpart of the
 * ill-formed one — the longest start of a well-formed sequence, at least 1
 * byte — which becomes one U+FFFD (Unicode §3.9, "U+FFFD Substitution of
 * Maximal Subparts", the practice of Rust's from_utf8_lossy and the WHATWG
 * decoder). */
size_t llmq_utf8_unit(const char *s, size_t n);

/* Length (0..3) of a sequence at the end of s[0..n) that is truncated but
 * well-formed so far: the bytes a streaming decoder holds back until more
 * arrive.  0 when the text ends on a complete or an ill-formed sequence. */
size_t llmq_utf8_incomplete_tail(const char *s, size_t n);

/* The code point of the well-formed sequence at s (not checked: call it on
 * text llmq_utf8_valid_prefix accepted); *len gets its length. */
int32_t llmq_utf8_decode(const char *s, size_t *len);

/* Write the UTF-8 of cp (a scalar value: 0..0x10FFFF, not a surrogate) to
 * out (room for 4 bytes); returns its length. */
size_t llmq_utf8_encode(int32_t cp, char *out);

/* Length (1..4) of the sequence a lead byte b announces, read from its high
 * bits alone; only meaningful on well-formed text (a continuation byte
 * gives 2, F8..FF give 4).  For stepping over characters already checked. */
static inline size_t llmq_utf8_lead_len(unsigned char b) { return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4; }

#endif
