/* status.c — status names and the error record helpers (see status.h). */
#include "common/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *llmq_status_name(llmq_status s) {
    switch (s) {
    case LLMQ_OK: return "ok";
    case LLMQ_ERR_IO: return "io";
    case LLMQ_ERR_FORMAT: return "format";
    case LLMQ_ERR_UNSUPPORTED: return "unsupported";
    case LLMQ_ERR_INVALID: return "invalid";
    case LLMQ_ERR_NOMEM: return "nomem";
    case LLMQ_ERR_TIMEOUT: return "timeout";
    case LLMQ_ERR_REDIS: return "redis";
    case LLMQ_ERR_BACKEND: return "backend";
    case LLMQ_ERR_INTERNAL: return "internal";
    }
    return "unknown";
}

llmq_status llmq_err_set(llmq_err *err, llmq_status code, const char *fmt, ...) {
    if (!err) return code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    err->code = code;
    return code;
}

void llmq_err_prefix(llmq_err *err, const char *fmt, ...) {
    if (!err) return;
    char prefix[LLMQ_ERRSTR_LEN];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    size_t plen = strlen(prefix), olen = strlen(err->msg);
    if (plen >= sizeof err->msg) plen = sizeof err->msg - 1;
    if (plen + olen >= sizeof err->msg) olen = sizeof err->msg - 1 - plen;
    memmove(err->msg + plen, err->msg, olen);
    memcpy(err->msg, prefix, plen);
    err->msg[plen + olen] = '\0';
}
