/*
 * sse.h — an incremental parser of Server-Sent Events (the WHATWG "event
 * stream" format) for the response bodies of streaming completions.  It does
 * no I/O: feed it the body bytes as they arrive, in pieces of any size, and it
 * calls back once per dispatched event with the event's data.
 *
 * What it implements of the format: lines end in CRLF, LF or CR (a CRLF split
 * across two feeds counts once); `data:` lines of one event are joined with
 * "\n"; one space after the colon is dropped; comment lines (":...") and the
 * fields event/id/retry are read and ignored; a blank line dispatches the
 * event if it has data.  A line or an event longer than `max` bytes is an
 * error (the stream is not trusted to be bounded).
 *
 * Ownership: the parser owns its buffers (sse_deinit frees them); the data
 * passed to the callback is valid during the call only.
 */
#ifndef LLMQ_LT_SSE_H
#define LLMQ_LT_SSE_H

#include <stddef.h>

#define SSE_DEFAULT_MAX (1 << 20)

/* One event: data (len bytes, NUL terminated).  Return nonzero to stop: the
 * rest of the current feed is not parsed and sse_feed returns 1. */
typedef int (*sse_event_fn)(void *ud, const char *data, size_t len);

typedef struct sse_parser {
    char *line;        /* the current, unfinished line (owned) */
    size_t line_len;   /* bytes in line */
    size_t line_cap;
    char *data;        /* data of the event being assembled (owned) */
    size_t data_len;
    size_t data_cap;
    int has_data;      /* a data: field was seen since the last dispatch */
    int after_cr;      /* the last byte fed was CR: skip one LF */
    size_t max;        /* bound on a line and on an event's data, bytes */
    size_t events;     /* events dispatched so far */
} sse_parser;

void sse_init(sse_parser *p, size_t max);  /* max 0 = SSE_DEFAULT_MAX */
void sse_deinit(sse_parser *p);            /* frees; p may be NULL */

/* Feed n bytes.  Returns 0 (all consumed), 1 (the callback stopped it) or
 * -1 (a line or event exceeded max, or out of memory; the parser is then
 * unusable until sse_deinit/sse_init). */
int sse_feed(sse_parser *p, const char *buf, size_t n, sse_event_fn fn, void *ud);

#endif
