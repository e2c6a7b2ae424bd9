/*
 * report.h — what llmq-loadtest writes about a run: the table on stdout,
 * the full record as JSON (--json), and the charts as SVG (--svg).
 *
 * JSON (top level): issued, completed, failed, duration_s,
 * total_input_tokens, total_output_tokens, request_throughput,
 * output_throughput, total_token_throughput, request_goodput (null without
 * --slo), good_requests, max_inflight, token_mismatches, ttft_ms, tpot_ms,
 * itl_ms, e2e_ms (each {n, mean, std, min, max, p50, p90, p95, p99}),
 * vLLM's flat keys (duration, num_prompts, request_rate, burstiness,
 * max_concurrency, model_id, and mean_/median_/std_/pP_ X_ms for each metric
 * X of --percentile-metrics and P of --metric-percentiles), errors {kind:
 * count}, error_examples {kind: message}, config {...}, target {...},
 * timeline {bucket_s, output_tok_s[], completed[], failed[], inflight[]},
 * and requests[] with one record per measured request in issue order (index,
 * sched_s, start_s, prompt_tokens, max_tokens, output_tokens,
 * usage_completion_tokens, chunks, ttft_ms, tpot_ms, e2e_ms, ok, error,
 * dataset_index).  Warm-up requests appear nowhere.
 */
#ifndef LLMQ_LT_REPORT_H
#define LLMQ_LT_REPORT_H

#include <stdio.h>

#include "loadtest/lt.h"
#include "loadtest/stats.h"

void lt_report_table(FILE *f, const lt_run *run, const lt_summary *s);
/* Write the JSON record to path ("-" = stdout).  LLMQ_ERR_IO on failure. */
llmq_status lt_report_json(const char *path, const lt_run *run, const lt_summary *s, llmq_err *err);
/* Write the SVG charts to path.  LLMQ_ERR_IO on failure. */
llmq_status lt_report_svg(const char *path, const lt_run *run, const lt_summary *s, llmq_err *err);

#endif
