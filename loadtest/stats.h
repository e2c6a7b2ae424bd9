/*
 * stats.h — the serving metrics of a finished run, with the definitions of
 * vLLM's serving benchmark (benchmarks/benchmark_serving.py), so figures can
 * be compared with published ones:
 *
 *   TTFT  time from sending a request to its first token-carrying chunk
 *   TPOT  (E2E - TTFT) / (output tokens - 1), per request with > 1 token
 *   ITL   every gap between two consecutive token-carrying chunks, pooled
 *         over all requests (a chunk of k tokens is one gap, not k)
 *   E2E   time from sending a request to its last byte
 *
 * Only successful requests count in the latencies and token totals.  The
 * duration runs from the first request sent to the last one finished;
 * request / output / total token throughput divide by it, and goodput is
 * the number of successful requests that meet every given SLO (TTFT, TPOT,
 * E2E, each <=) divided by it.  Percentiles interpolate linearly between
 * the closest ranks (numpy's default).  Warm-up requests are in no figure.
 */
#ifndef LLMQ_LT_STATS_H
#define LLMQ_LT_STATS_H

#include <stddef.h>
#include <stdint.h>

#include "loadtest/lt.h"

typedef struct lt_stat {
    size_t n;                    /* samples */
    double mean, std, min, max;  /* ms; all 0 when n == 0 */
    double p50, p90, p95, p99;
    double *sorted;              /* the n samples ascending (owned), for CDFs */
} lt_stat;

typedef struct lt_errkind {
    char kind[LT_ERR_KIND_MAX];
    long count;
    const char *example;         /* the first message (borrowed from a request) */
} lt_errkind;

/* One bucket of the timeline. */
typedef struct lt_bucket {
    double output_tokens;        /* tokens received in the bucket */
    long completed;              /* requests finished successfully in the bucket */
    long failed;
    double inflight;             /* requests in flight, averaged over the bucket */
} lt_bucket;

typedef struct lt_summary {
    long issued, completed, failed;
    double duration_s;
    int64_t total_input_tokens;  /* prompt tokens of successful requests */
    int64_t total_output_tokens; /* output tokens of successful requests */
    double request_throughput;   /* req/s */
    double output_throughput;    /* tok/s */
    double total_token_throughput; /* (input + output) tok/s */
    int has_goodput;
    long good;                   /* successful requests within every SLO */
    double request_goodput;      /* good / duration, req/s */
    long token_mismatches;       /* successful requests whose output tokens != max_tokens asked */
    int itl_valid;               /* streaming: TPOT and ITL mean something */
    lt_stat ttft, tpot, itl, e2e;
    lt_errkind *errors;          /* n_errors kinds, most frequent first (owned) */
    size_t n_errors;
    lt_bucket *timeline;         /* n_buckets of bucket_s each from the start (owned) */
    size_t n_buckets;
    double bucket_s;
} lt_summary;

/* Compute everything from a finished run.  LLMQ_ERR_NOMEM on allocation
 * failure (s is then deinit'ed). */
llmq_status lt_summary_compute(lt_summary *s, const lt_run *run, llmq_err *err);
void lt_summary_deinit(lt_summary *s);

/* Percentile p in [0, 100] of n ascending values (linear interpolation). */
double lt_percentile(const double *sorted, size_t n, double p);

#endif
