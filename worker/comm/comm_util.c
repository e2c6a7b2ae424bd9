/*
 * comm_util.c — the abort record, collective errors and rank-order sums the
 * communicators share (see comm_util.h).
 */
#include "worker/comm/comm_util.h"

#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------ abort */

int comm_abort_rec_set(comm_abort_rec *a, int rank, llmq_status code, const char *msg) {
    uint32_t expect = 0;
    if (!atomic_compare_exchange_strong(&a->state, &expect, 1)) return 0;
    a->rank = rank;
    a->code = (int32_t)(code ? code : LLMQ_ERR_IO);
    if (!msg || !*msg) msg = "abort";
    size_t i = 0;
    for (; msg[i] && i + 1 < sizeof a->msg; i++) a->msg[i] = msg[i];
    a->msg[i] = '\0';
    atomic_store(&a->state, 2);
    return 1;
}

int comm_abort_rec_wait(comm_abort_rec *a) {
    if (atomic_load(&a->state) == 2) return 1;
    uint64_t until = comm_now_ns() + 1000000000ull;
    while (atomic_load(&a->state) == 1 && comm_now_ns() < until) sched_yield();
    return atomic_load(&a->state) == 2;
}

llmq_status comm_fail_from_abort(llmq_err *err, comm_abort_rec *a, int rank, const char *what) {
    if (!comm_abort_rec_wait(a))
        return llmq_err_set(err, LLMQ_ERR_IO, "comm rank %d: %s: group aborted (no reason recorded)", rank, what);
    llmq_status code = a->code ? (llmq_status)a->code : LLMQ_ERR_IO;
    return llmq_err_set(err, code, "comm rank %d: %s: group aborted by rank %d: %s", rank, what, (int)a->rank,
                        a->msg);
}

llmq_status comm_fail_record(llmq_err *err, comm_abort_rec *a, int rank, const char *what, size_t reason_max,
                             llmq_status code, const char *fmt, va_list ap) {
    char cause[320], rec[COMM_ABORT_MSG];
    vsnprintf(cause, sizeof cause, fmt, ap);
    if (reason_max > sizeof rec) reason_max = sizeof rec;
    size_t suffix = strlen(what) + 3; /* " (" what ")" */
    int keep = reason_max > suffix + 1 ? (int)(reason_max - 1 - suffix) : 0;
    snprintf(rec, reason_max, "%.*s (%s)", keep, cause, what);
    llmq_err_set(err, code, "comm rank %d: %s: %s", rank, what, cause);
    comm_abort_rec_set(a, rank, code, rec);
    return code;
}

/* ------------------------------------------------------------------- sums */

#define SUM_BLOCK 512

/* Blocks of SUM_BLOCK elements, so that a block of dst stays in L1 while
 * the ranks' inputs stream past it: dst = src0 + src1, then dst += src_p
 * for each further rank.  The loops run along i, so SIMD (`omp simd`: -O2
 * alone does not vectorize them) keeps the rank order of every element;
 * dst may be src[0] itself (each element is read before it is written). */
static void sum_f32(float *dst, float *dst2, const float *const *src, int nsrc, size_t n) {
    for (size_t i0 = 0; i0 < n; i0 += SUM_BLOCK) {
        size_t m = n - i0 < SUM_BLOCK ? n - i0 : SUM_BLOCK;
        float *d = dst + i0;
        const float *s0 = src[0] + i0;
        if (nsrc == 1) {
            if (d != s0) memcpy(d, s0, m * sizeof *d);
        } else {
            const float *s1 = src[1] + i0;
#pragma omp simd
            for (size_t j = 0; j < m; j++) d[j] = s0[j] + s1[j];
            for (int p = 2; p < nsrc; p++) {
                const float *sp = src[p] + i0;
#pragma omp simd
                for (size_t j = 0; j < m; j++) d[j] += sp[j];
            }
        }
        if (dst2) memcpy(dst2 + i0, d, m * sizeof *d);
    }
}

/* Same for int32, in uint32 so that overflow wraps instead of being UB. */
static void sum_i32(uint32_t *dst, uint32_t *dst2, const uint32_t *const *src, int nsrc, size_t n) {
    for (size_t i0 = 0; i0 < n; i0 += SUM_BLOCK) {
        size_t m = n - i0 < SUM_BLOCK ? n - i0 : SUM_BLOCK;
        uint32_t *d = dst + i0;
        const uint32_t *s0 = src[0] + i0;
        if (nsrc == 1) {
            if (d != s0) memcpy(d, s0, m * sizeof *d);
        } else {
            const uint32_t *s1 = src[1] + i0;
#pragma omp simd
            for (size_t j = 0; j < m; j++) d[j] = s0[j] + s1[j];
            for (int p = 2; p < nsrc; p++) {
                const uint32_t *sp = src[p] + i0;
#pragma omp simd
                for (size_t j = 0; j < m; j++) d[j] += sp[j];
            }
        }
        if (dst2) memcpy(dst2 + i0, d, m * sizeof *d);
    }
}

void comm_sum_rank_order(comm_dtype dt, void *dst, void *dst2, const void *const *src, int nsrc, size_t n) {
    if (dt == COMM_F32)
        sum_f32(dst, dst2, (const float *const *)src, nsrc, n);
    else
        sum_i32(dst, dst2, (const uint32_t *const *)src, nsrc, n);
}
