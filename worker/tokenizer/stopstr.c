/*
 * stopstr.c — stop-string matching with hold-back (see stopstr.h).
 *
 * Each feed works on held + delta, which is short: the held part is below the
 * longest stop string.  The earliest occurrence of any stop string wins (the
 * longest on a tie); otherwise the longest suffix that is a proper prefix of some
 * stop string is held and the rest released.
 */
#include <stdlib.h>
#include <string.h>

#include "worker/tokenizer/stopstr.h"

llmq_status stop_init(stop_matcher *m, const char *const *stops, size_t n) {
    memset(m, 0, sizeof *m);
    m->which = -1;
    if (n == 0) return LLMQ_OK;
    m->stops = calloc(n, sizeof *m->stops);
    m->lens = calloc(n, sizeof *m->lens);
    m->index = calloc(n, sizeof *m->index);
    if (!m->stops || !m->lens || !m->index) goto oom;
    for (size_t i = 0; i < n; i++) {
        if (!stops[i] || !*stops[i]) continue;
        size_t l = strlen(stops[i]);
        if (!(m->stops[m->n] = strdup(stops[i]))) goto oom;
        m->lens[m->n] = l;
        m->index[m->n] = (int)i;
        m->n++;
        if (l > m->max_len) m->max_len = l;
    }
    return LLMQ_OK;
oom:
    stop_deinit(m);
    return LLMQ_ERR_NOMEM;
}

void stop_deinit(stop_matcher *m) {
    if (!m) return;
    for (size_t i = 0; m->stops && i < m->n; i++) free(m->stops[i]);
    free(m->stops);
    free(m->lens);
    free(m->index);
    tok_text_deinit(&m->held);
    memset(m, 0, sizeof *m);
    m->which = -1;
}

/* Longest k < len(stop) such that the last k bytes of s are a prefix of a stop. */
static size_t partial_tail(const stop_matcher *m, const char *s, size_t len) {
    size_t best = 0;
    for (size_t i = 0; i < m->n; i++) {
        size_t k = m->lens[i] - 1 < len ? m->lens[i] - 1 : len;
        for (; k > best; k--)
            if (!memcmp(s + len - k, m->stops[i], k)) {
                best = k;
                break;
            }
    }
    return best;
}

llmq_status stop_feed(stop_matcher *m, const char *text, size_t len, tok_text *out, int *hit) {
    if (hit) *hit = 0;
    if (m->stopped) return LLMQ_OK;
    if (m->n == 0) return len ? tok_text_append(out, text, len) : LLMQ_OK;
    if (len && tok_text_append(&m->held, text, len)) return LLMQ_ERR_NOMEM;
    const char *s = m->held.data ? m->held.data : "";
    size_t n = m->held.len, at = n, which = 0, wlen = 0;
    for (size_t i = 0; i < m->n; i++) {
        const char *p = memmem(s, n, m->stops[i], m->lens[i]);
        if (!p) continue;
        size_t pos = (size_t)(p - s);
        if (pos < at || (pos == at && m->lens[i] > wlen)) at = pos, which = i, wlen = m->lens[i];
    }
    if (at < n) {
        llmq_status st = at ? tok_text_append(out, s, at) : LLMQ_OK;
        m->stopped = 1;
        m->which = m->index[which];
        m->held.len = 0;
        if (hit) *hit = 1;
        return st;
    }
    size_t keep = partial_tail(m, s, n);
    if (n > keep && tok_text_append(out, s, n - keep)) return LLMQ_ERR_NOMEM;
    if (m->held.data) {
        memmove(m->held.data, s + n - keep, keep);
        m->held.len = keep;
        m->held.data[keep] = '\0';
    }
    return LLMQ_OK;
}

llmq_status stop_flush(stop_matcher *m, tok_text *out) {
    if (m->stopped || m->held.len == 0) return LLMQ_OK;
    llmq_status st = tok_text_append(out, m->held.data, m->held.len);
    m->held.len = 0;
    return st;
}
