/*
 * comm_util.h — what the communicators of worker/comm/ share: the group's
 * abort record, the error of a failed collective, and the rank-order sum.
 * Internal to worker/comm/; the contract they serve is common/comm.h's.
 *
 * Failure is final and shared (comm.h).  A group has one abort record: the
 * first rank (or thread) that writes it wins, and every rank builds its
 * error from it — "comm rank R: <op>: group aborted by rank A: <cause>",
 * with A's code — so all ranks fail with the same cause.  The shm
 * communicator keeps the record in its shared segment, TCP and single in
 * process memory (TCP carries it to the other ranks in an abort frame).
 * Writing it takes no lock and no allocation (state 0 -> 1 -> 2), so it may
 * live in shared memory and be written by any thread at any time.
 *
 * Determinism (comm.h).  comm_sum_rank_order is the only place where a
 * communicator adds ranks' values: element i is ((x_0 + x_1) + x_2) + ...,
 * one rounding per add in rank order, whatever the algorithm around it.
 */
#ifndef LLMQ_WORKER_COMM_UTIL_H
#define LLMQ_WORKER_COMM_UTIL_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "common/comm.h"

/* CLOCK_MONOTONIC in ns: the clock of every deadline and liveness check. */
static inline uint64_t comm_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define COMM_ABORT_MSG 384 /* bytes of a record's cause, NUL included */

/* A group's abort record.  Its layout is part of the shm segment (version 1). */
typedef struct comm_abort_rec {
    _Atomic uint32_t state;    /* 0 none, 1 being written, 2 published */
    int32_t rank;              /* the rank that aborted; valid when state == 2 */
    int32_t code;              /* llmq_status of the cause, never LLMQ_OK */
    char msg[COMM_ABORT_MSG];  /* the cause, NUL-terminated */
} comm_abort_rec;

/* Write the record unless a writer came first: rank, code (LLMQ_OK becomes
 * LLMQ_ERR_IO) and msg (NULL or "" becomes "abort"; cut to fit).  Returns
 * 1 when this call wrote it.  No lock, no allocation, no stdio. */
int comm_abort_rec_set(comm_abort_rec *a, int rank, llmq_status code, const char *msg);

/* 1 once a writer has claimed the record (it may still be copying). */
static inline int comm_abort_rec_claimed(comm_abort_rec *a) { return atomic_load(&a->state) != 0; }

/* Wait until a claimed record is published: 1, or 0 when it was not within
 * a second (the writer died while copying: a rank of a shm group).  The
 * writer only copies a string, so the wait is short; yielding lets a
 * writer that shares this CPU finish. */
int comm_abort_rec_wait(comm_abort_rec *a);

/* This rank's error from the group's (claimed) record, into err:
 * "comm rank <rank>: <what>: group aborted by rank A: <cause>" with the
 * record's code, or LLMQ_ERR_IO "... group aborted (no reason recorded)"
 * when it never got published.  Returns the code. */
llmq_status comm_fail_from_abort(llmq_err *err, comm_abort_rec *a, int rank, const char *what);

/* A failure this rank saw itself in collective `what`: err gets
 * "comm rank <rank>: <what>: <cause>", and the record (unless claimed
 * already) "<cause> (<what>)", cut to reason_max - 1 bytes (the longest
 * reason the group's transport carries) by shortening the cause, never
 * the "(<what>)".  Returns code.  The caller then wakes its group. */
__attribute__((format(printf, 7, 0))) llmq_status comm_fail_record(llmq_err *err, comm_abort_rec *a, int rank,
                                                                   const char *what, size_t reason_max,
                                                                   llmq_status code, const char *fmt, va_list ap);

/* dst[i] (and dst2[i] when dst2 is not NULL) = ((src[0][i] + src[1][i]) +
 * src[2][i]) + ... + src[nsrc-1][i] for i < n, nsrc >= 1: floats for
 * COMM_F32, int32 for COMM_I32 (wrapping modulo 2^32).  dst may be src[0]
 * itself (the TCP leader adds into its own buffer); no other overlap. */
void comm_sum_rank_order(comm_dtype dt, void *dst, void *dst2, const void *const *src, int nsrc, size_t n);

#endif
