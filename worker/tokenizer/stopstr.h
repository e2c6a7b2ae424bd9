/*
 * stopstr.h — stop strings over streamed text.
 *
 * Text arrives in deltas (from tok_stream_push); a stop string may straddle any
 * number of them.  The matcher releases only text that cannot be the start of a
 * stop string, holds back the longest tail that still could be, and when a stop
 * string completes it releases the text before it and nothing after: the stop
 * string itself is never emitted (OpenAI / vLLM semantics).
 *
 * Invariants: held is always shorter than the longest stop string and is a
 * proper prefix of at least one of them; once stopped, feeds are ignored.
 * Stop strings and text are UTF-8, so released text never ends inside a
 * character (a held tail starts with a stop string's first byte, a lead byte).
 */
#ifndef LLMQ_STOPSTR_H
#define LLMQ_STOPSTR_H

#include <stddef.h>

#include "common/status.h"
#include "worker/tokenizer/tokenizer.h"

typedef struct stop_matcher {
    char **stops;    /* owned copies, non-empty */
    size_t *lens;    /* bytes of each */
    size_t n;        /* stop strings */
    size_t max_len;  /* longest stop string, bytes */
    tok_text held;   /* text received, not yet released */
    int stopped;     /* a stop string matched */
    int which;       /* index (in the caller's list) of the stop that matched, -1 */
    int *index;      /* caller's index of each kept stop string */
} stop_matcher;

/* Copy the n stop strings (empty or NULL ones are ignored). */
llmq_status stop_init(stop_matcher *m, const char *const *stops, size_t n);
void stop_deinit(stop_matcher *m); /* NULL ok */

/* Feed a delta; append what is final to out.  *hit (optional) becomes 1 when a
 * stop string completed in this call (out then holds the text up to it). */
llmq_status stop_feed(stop_matcher *m, const char *text, size_t len, tok_text *out, int *hit);
/* The sequence ended without a stop string: release what is held. */
llmq_status stop_flush(stop_matcher *m, tok_text *out);

#endif
