/*
 * sse.c — incremental Server-Sent Events parser (see sse.h).
 *
 * Bytes are copied into `line` until a line ending; each complete line is
 * then interpreted at once, so the parser holds at most one partial line and
 * one partial event.
 */
#include "loadtest/sse.h"

#include <stdlib.h>
#include <string.h>

void sse_init(sse_parser *p, size_t max) {
    memset(p, 0, sizeof *p);
    p->max = max ? max : SSE_DEFAULT_MAX;
}

void sse_deinit(sse_parser *p) {
    if (!p) return;
    free(p->line);
    free(p->data);
    memset(p, 0, sizeof *p);
}

/* Make room for need more bytes (+1 for a NUL) in *buf, bounded by max. */
static int reserve(char **buf, size_t *cap, size_t len, size_t need, size_t max) {
    if (len + need > max) return -1;
    if (len + need + 1 <= *cap) return 0;
    size_t nc = *cap ? *cap : 256;
    while (nc < len + need + 1) nc *= 2;
    char *nb = realloc(*buf, nc);
    if (!nb) return -1;
    *buf = nb;
    *cap = nc;
    return 0;
}

/* Interpret one complete line (without its ending).  Returns 0, 1 (stopped by
 * the callback) or -1. */
static int on_line(sse_parser *p, const char *s, size_t n, sse_event_fn fn, void *ud) {
    if (n == 0) { /* blank line: dispatch */
        if (!p->has_data) return 0;
        p->has_data = 0;
        size_t len = p->data_len;
        p->data_len = 0;
        if (!p->data && reserve(&p->data, &p->data_cap, 0, 0, p->max)) return -1;
        p->data[len] = '\0';
        p->events++;
        return fn(ud, p->data, len) ? 1 : 0;
    }
    if (s[0] == ':') return 0; /* comment */
    const char *colon = memchr(s, ':', n);
    size_t name_len = colon ? (size_t)(colon - s) : n;
    if (name_len != 4 || memcmp(s, "data", 4) != 0) return 0; /* event, id, retry, unknown */
    const char *v = colon ? colon + 1 : s + n;
    size_t vn = (size_t)(s + n - v);
    if (vn && v[0] == ' ') {
        v++;
        vn--;
    }
    size_t sep = p->has_data ? 1 : 0;
    if (reserve(&p->data, &p->data_cap, p->data_len, vn + sep, p->max)) return -1;
    if (sep) p->data[p->data_len++] = '\n';
    memcpy(p->data + p->data_len, v, vn);
    p->data_len += vn;
    p->has_data = 1;
    return 0;
}

int sse_feed(sse_parser *p, const char *buf, size_t n, sse_event_fn fn, void *ud) {
    size_t i = 0;
    if (p->after_cr && n > 0) {
        p->after_cr = 0;
        if (buf[0] == '\n') i = 1;
    }
    while (i < n) {
        /* the end of this line, if it is in buf */
        size_t j = i;
        while (j < n && buf[j] != '\n' && buf[j] != '\r') j++;
        if (j == n) { /* partial line: keep it */
            if (reserve(&p->line, &p->line_cap, p->line_len, n - i, p->max)) return -1;
            memcpy(p->line + p->line_len, buf + i, n - i);
            p->line_len += n - i;
            return 0;
        }
        int rc;
        if (p->line_len) {
            if (reserve(&p->line, &p->line_cap, p->line_len, j - i, p->max)) return -1;
            memcpy(p->line + p->line_len, buf + i, j - i);
            size_t ll = p->line_len + (j - i);
            p->line_len = 0;
            rc = on_line(p, p->line, ll, fn, ud);
        } else {
            if (j - i > p->max) return -1;
            rc = on_line(p, buf + i, j - i, fn, ud);
        }
        /* consume the ending: CRLF counts once, also when split across feeds */
        if (buf[j] == '\r') {
            if (j + 1 < n) {
                if (buf[j + 1] == '\n') j++;
            } else {
                p->after_cr = 1;
            }
        }
        i = j + 1;
        if (rc) return rc;
    }
    return 0;
}
