/*
 * status.h — the one status enum of llmq, and the error record that
 * long-lived objects carry.
 *
 * Every fallible function returns an llmq_status (LLMQ_OK == 0).  Objects that
 * outlive a call (a model, an engine, a tokenizer, a connection) embed an
 * llmq_err so the caller can print *what* went wrong: the message names the
 * file, the tensor, the field — whatever the user must fix.  Setting the
 * error never leaves the object half-changed.
 */
#ifndef LLMQ_STATUS_H
#define LLMQ_STATUS_H

#include <stddef.h>

typedef enum llmq_status {
    LLMQ_OK = 0,
    LLMQ_ERR_IO,          /* open/read/mmap/socket failed */
    LLMQ_ERR_FORMAT,      /* malformed input file or message */
    LLMQ_ERR_UNSUPPORTED, /* well-formed but not something llmq implements */
    LLMQ_ERR_INVALID,     /* bad argument or request parameter */
    LLMQ_ERR_NOMEM,       /* allocation failed or a pool is exhausted */
    LLMQ_ERR_TIMEOUT,     /* a deadline passed (collective, connection) */
    LLMQ_ERR_REDIS,       /* Redis answered with an error or went away */
    LLMQ_ERR_BACKEND,     /* the compute backend failed (CUDA error, ...) */
    LLMQ_ERR_INTERNAL,    /* a broken invariant: a bug in llmq */
} llmq_status;

#define LLMQ_ERRSTR_LEN 512

typedef struct llmq_err {
    llmq_status code;             /* LLMQ_OK when no error is recorded */
    char msg[LLMQ_ERRSTR_LEN];    /* human-readable, NUL-terminated */
} llmq_err;

/* Short name of a status ("format", "io", ...). Never NULL. */
const char *llmq_status_name(llmq_status s);

/* Record an error (printf-style) and return its code, so callers can write
 * `return llmq_err_set(err, LLMQ_ERR_FORMAT, "%s: ...", path);`.
 * err may be NULL, in which case only the code is returned. */
llmq_status llmq_err_set(llmq_err *err, llmq_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefix an already-recorded message with more context ("loading X: ..."). */
void llmq_err_prefix(llmq_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static inline void llmq_err_clear(llmq_err *err) {
    if (err) { err->code = LLMQ_OK; err->msg[0] = '\0'; }
}

#endif
