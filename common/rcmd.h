/*
 * rcmd.h — a Redis command as an argv vector, built without heap allocation,
 * that can be sent by hiredis' blocking API (redisCommandArgv) or its async
 * API (redisAsyncCommandArgv) alike.  This is how common/jobops.c shares the
 * exact commands of the protocol between the gateway (async) and libllmq
 * (blocking).
 *
 * Invariants: arguments added with rcmd_arg/rcmd_str are BORROWED (they must
 * outlive the send); rcmd_fmt copies into the struct's own scratch space, so
 * a built rcmd must not be moved or copied before it is sent.  Overflowing
 * the argument table or the scratch space sets `overflow`, and the command
 * must then not be sent (rcmd_ok says so).
 */
#ifndef LLMQ_RCMD_H
#define LLMQ_RCMD_H

#include <stddef.h>

#define RCMD_MAX_ARGS 40
#define RCMD_SCRATCH 1024

typedef struct rcmd {
    int argc;                          /* arguments used */
    const char *argv[RCMD_MAX_ARGS];   /* argument pointers (borrowed or into scratch) */
    size_t argvlen[RCMD_MAX_ARGS];     /* argument lengths in bytes (binary safe) */
    char scratch[RCMD_SCRATCH];        /* storage for rcmd_fmt arguments */
    size_t used;                       /* bytes of scratch used */
    int overflow;                      /* 1 when an argument did not fit */
} rcmd;

void rcmd_init(rcmd *c);
void rcmd_arg(rcmd *c, const void *p, size_t n);  /* borrowed bytes */
void rcmd_str(rcmd *c, const char *s);            /* borrowed NUL-terminated string */
void rcmd_fmt(rcmd *c, const char *fmt, ...) __attribute__((format(printf, 2, 3))); /* copied */
static inline int rcmd_ok(const rcmd *c) { return !c->overflow && c->argc > 0; }

#endif
