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

/*
 * Script calls by SHA1.  An EVAL carries the script's whole text on every
 * call, which Redis reads and hashes each time; EVALSHA carries only its
 * SHA1, which Redis knows once the script was loaded (SCRIPT LOAD, or any
 * EVAL of it).  A restart, a failover or SCRIPT FLUSH empties that cache:
 * EVALSHA then answers a NOSCRIPT error having run nothing, and the caller
 * sends the same call again as EVAL (which loads it again).
 *
 * rcmd_shas remembers the SHA1 that Redis's SCRIPT LOAD returned for each
 * script, keyed by the address of its text: only for texts that live as
 * long as the table (jobops' static scripts).  A SHA1 does not depend on
 * the server, so it stays right across reconnections.
 */
#define RCMD_SHAS 16
#define RCMD_SHA_LEN 40
typedef struct rcmd_shas {
    int n;
    const char *text[RCMD_SHAS];      /* the scripts asked about */
    char sha[RCMD_SHAS][RCMD_SHA_LEN + 1]; /* their SHA1s in hex; "" = Redis refused to load it */
} rcmd_shas;

/* The SHA1 of script text; NULL when not asked yet (*known = 0), or when
 * Redis refused to load it (*known = 1: send EVAL). */
const char *rcmd_shas_get(const rcmd_shas *t, const char *text, int *known);
/* Record what SCRIPT LOAD of text answered: its SHA1 (len bytes of hex),
 * or sha NULL when it was refused. */
void rcmd_shas_put(rcmd_shas *t, const char *text, const char *sha, size_t len);
/* Whether c is an EVAL (its script is c->argv[1]). */
int rcmd_is_eval(const rcmd *c);
/* The EVAL c as EVALSHA sha, into e: e borrows c's arguments (and sha), so
 * c must be neither moved nor changed before e is sent. */
void rcmd_evalsha(rcmd *e, const rcmd *c, const char *sha);
/* Whether an error reply's message is NOSCRIPT (an EVALSHA of a script
 * Redis does not hold). */
int rcmd_noscript(const char *msg);

#endif
