/* report.c — table, JSON and SVG of a run (see report.h). */
#include "loadtest/report.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/url.h"
#include "loadtest/svg.h"

#define CDF_POINTS 800  /* points drawn per CDF at most */

static void describe_load(const lt_config *cfg, char *buf, size_t cap) {
    if (cfg->concurrency > 0) snprintf(buf, cap, "closed loop, concurrency %d", cfg->concurrency);
    else if (isinf(cfg->rate)) snprintf(buf, cap, "open loop, all at once");
    else snprintf(buf, cap, "open loop, %.2f req/s, burstiness %.2f", cfg->rate, cfg->burstiness);
}

/* ---------------------------------------------------------------- table */

static void stat_row(FILE *f, const char *name, const lt_stat *st) {
    if (st->n == 0) {
        fprintf(f, "%-6s %10s %10s %10s %10s %10s %10s %10s %8s\n", name, "-", "-", "-", "-", "-", "-", "-", "0");
        return;
    }
    fprintf(f, "%-6s %10.2f %10.2f %10.2f %10.2f %10.2f %10.2f %10.2f %8zu\n", name, st->mean, st->p50, st->p90, st->p95,
            st->p99, st->min, st->max, st->n);
}

void lt_report_table(FILE *f, const lt_run *run, const lt_summary *s) {
    const lt_config *cfg = run->cfg;
    char load[128];
    describe_load(cfg, load, sizeof load);
    char target[512]; /* a Redis target's password never reaches a report */
    redis_url_redact(cfg->target, target, sizeof target);
    fprintf(f, "============================ llmq-loadtest ============================\n");
    fprintf(f, "%-26s %s%s%s%s\n", "target", target, cfg->kind == LT_TARGET_HTTP ? " " : "",
            cfg->kind == LT_TARGET_HTTP ? cfg->endpoint : "", cfg->kind == LT_TARGET_HTTP && cfg->insecure ? " (TLS not verified)" : "");
    fprintf(f, "%-26s %s\n", "model", cfg->model);
    fprintf(f, "%-26s %s%s\n", "load", load,
            cfg->kind == LT_TARGET_HTTP ? (cfg->stream ? ", streaming" : ", not streaming") : ", redis protocol");
    if (cfg->dataset.n)
        fprintf(f, "%-26s %s dataset %s (%zu prompts), output %s tokens\n", "prompts", cfg->dataset_name,
                cfg->dataset_path, cfg->dataset.n, cfg->output.desc);
    else
        fprintf(f, "%-26s prompt %s, output %s tokens\n", "lengths", cfg->prompt.desc, cfg->output.desc);
    if (cfg->warmups > 0) fprintf(f, "%-26s %ld requests, in no figure below\n", "warm-up", cfg->warmups);
    fprintf(f, "%-26s %ld issued, %ld completed, %ld failed\n", "requests", s->issued, s->completed, s->failed);
    fprintf(f, "%-26s %.3f\n", "duration (s)", s->duration_s);
    fprintf(f, "%-26s %lld\n", "total input tokens", (long long)s->total_input_tokens);
    fprintf(f, "%-26s %lld\n", "total output tokens", (long long)s->total_output_tokens);
    fprintf(f, "%-26s %.2f\n", "request throughput (req/s)", s->request_throughput);
    fprintf(f, "%-26s %.2f\n", "output throughput (tok/s)", s->output_throughput);
    fprintf(f, "%-26s %.2f\n", "total throughput (tok/s)", s->total_token_throughput);
    if (s->has_goodput) {
        char slo[128] = "", *p = slo;
        size_t left = sizeof slo;
        int n;
        if (cfg->slo.ttft_ms > 0 && (n = snprintf(p, left, " ttft<=%gms", cfg->slo.ttft_ms)) > 0) p += n, left -= (size_t)n;
        if (cfg->slo.tpot_ms > 0 && (n = snprintf(p, left, " tpot<=%gms", cfg->slo.tpot_ms)) > 0) p += n, left -= (size_t)n;
        if (cfg->slo.e2e_ms > 0) snprintf(p, left, " e2e<=%gms", cfg->slo.e2e_ms);
        fprintf(f, "%-26s %.2f (%ld good;%s)\n", "goodput (req/s)", s->request_goodput, s->good, slo);
    }
    fprintf(f, "%-26s %ld\n", "max in flight", run->max_inflight);
    if (s->token_mismatches)
        fprintf(f, "%-26s %ld requests got another number of tokens than asked\n", "WARNING", s->token_mismatches);
    fprintf(f, "-----------------------------------------------------------------------\n");
    fprintf(f, "%-6s %10s %10s %10s %10s %10s %10s %10s %8s\n", "(ms)", "mean", "p50", "p90", "p95", "p99", "min", "max",
            "n");
    stat_row(f, "TTFT", &s->ttft);
    stat_row(f, "TPOT", &s->tpot);
    stat_row(f, "ITL", &s->itl);
    stat_row(f, "E2E", &s->e2e);
    if (!s->itl_valid) fprintf(f, "(not streaming: TTFT = E2E, no TPOT or ITL)\n");
    if (s->n_errors) {
        fprintf(f, "-----------------------------------------------------------------------\n");
        fprintf(f, "errors by kind\n");
        for (size_t i = 0; i < s->n_errors; i++)
            fprintf(f, "  %-22s %8ld  %.90s\n", s->errors[i].kind, s->errors[i].count,
                    s->errors[i].example ? s->errors[i].example : "");
    }
    if (run->abort_msg[0]) fprintf(f, "run aborted: %s\n", run->abort_msg);
    fprintf(f, "=======================================================================\n");
}

/* ---------------------------------------------------------------- JSON */

static json_t *num(double v) { return isfinite(v) ? json_real(v) : json_null(); }

static json_t *stat_json(const lt_stat *st) {
    return json_pack("{s:I, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "n", (json_int_t)st->n, "mean", num(st->mean),
                     "std", num(st->std), "min", num(st->min), "max", num(st->max), "p50", num(st->p50), "p90",
                     num(st->p90), "p95", num(st->p95), "p99", num(st->p99));
}

/* vLLM's flat keys of one metric: mean_X_ms, median_X_ms, std_X_ms and
 * pP_X_ms for each --metric-percentiles P (P written as Python's str() of
 * the number: 99, 99.9).  Null when the metric has no sample. */
static void flat_keys(json_t *o, const lt_config *cfg, const char *name, const lt_stat *st) {
    char key[64];
    snprintf(key, sizeof key, "mean_%s_ms", name);
    json_object_set_new(o, key, st->n ? num(st->mean) : json_null());
    snprintf(key, sizeof key, "median_%s_ms", name);
    json_object_set_new(o, key, st->n ? num(lt_percentile(st->sorted, st->n, 50)) : json_null());
    snprintf(key, sizeof key, "std_%s_ms", name);
    json_object_set_new(o, key, st->n ? num(st->std) : json_null());
    for (int i = 0; i < cfg->n_pcts; i++) {
        double p = cfg->pcts[i];
        if (p == floor(p)) snprintf(key, sizeof key, "p%d_%s_ms", (int)p, name);
        else snprintf(key, sizeof key, "p%.15g_%s_ms", p, name);
        json_object_set_new(o, key, st->n ? num(lt_percentile(st->sorted, st->n, p)) : json_null());
    }
}

static json_t *config_json(const lt_config *cfg) {
    char target[512];
    redis_url_redact(cfg->target, target, sizeof target);
    json_t *c = json_pack("{s:s, s:s, s:s, s:s?, s:s, s:b, s:I, s:f, s:i, s:i}", "target", target, "kind",
                          cfg->kind == LT_TARGET_HTTP ? "http" : "redis", "model", cfg->model, "prompt_tokens",
                          cfg->dataset.n ? NULL : cfg->prompt.desc, "output_tokens", cfg->output.desc, "stream",
                          cfg->kind == LT_TARGET_REDIS || cfg->stream, "seed", (json_int_t)cfg->seed, "timeout_s",
                          cfg->timeout_s, "token_lo", cfg->token_lo, "token_hi", cfg->token_hi);
    if (!c) return json_null();
    json_object_set_new(c, "mode", json_string(cfg->concurrency > 0 ? "closed" : "open"));
    json_object_set_new(c, "concurrency", cfg->concurrency > 0 ? json_integer(cfg->concurrency) : json_null());
    json_object_set_new(c, "rate", cfg->concurrency > 0 ? json_null() : isinf(cfg->rate) ? json_string("inf") : num(cfg->rate));
    json_object_set_new(c, "burstiness", cfg->concurrency > 0 ? json_null() : num(cfg->burstiness));
    json_object_set_new(c, "requests", cfg->requests > 0 ? json_integer(cfg->requests) : json_null());
    json_object_set_new(c, "duration_s", cfg->duration_s > 0 ? num(cfg->duration_s) : json_null());
    if (cfg->kind == LT_TARGET_HTTP) {
        json_object_set_new(c, "endpoint", json_string(cfg->endpoint));
        json_object_set_new(c, "api", json_string(cfg->chat ? "chat" : "completions"));
        json_object_set_new(c, "tls_verify", json_boolean(!cfg->insecure));
    }
    json_object_set_new(c, "dataset_name", json_string(cfg->dataset_name));
    json_object_set_new(c, "dataset_path", cfg->dataset_path ? json_string(cfg->dataset_path) : json_null());
    json_object_set_new(c, "dataset_prompts", cfg->dataset.n ? json_integer((json_int_t)cfg->dataset.n) : json_null());
    json_object_set_new(c, "num_warmups", json_integer(cfg->warmups));
    if (cfg->has_slo) {
        json_object_set_new(c, "slo", json_pack("{s:o, s:o, s:o}", "ttft_ms", cfg->slo.ttft_ms > 0 ? num(cfg->slo.ttft_ms) : json_null(),
                                                "tpot_ms", cfg->slo.tpot_ms > 0 ? num(cfg->slo.tpot_ms) : json_null(),
                                                "e2e_ms", cfg->slo.e2e_ms > 0 ? num(cfg->slo.e2e_ms) : json_null()));
    }
    return c;
}

static json_t *request_json(const lt_run *run, const lt_req *r, int itl_valid) {
    int64_t out = lt_req_out_tokens(r);
    lt_req_fig fig = lt_req_figures(r, itl_valid);
    json_t *o = json_pack("{s:I, s:o, s:o, s:i, s:i, s:I, s:o, s:I, s:o, s:o, s:o, s:b}", "index", (json_int_t)r->index,
                          "sched_s", num(r->t_sched - run->t0), "start_s", num(r->t_start - run->t0), "prompt_tokens",
                          (int)lt_req_in_tokens(r), "max_tokens", r->max_tokens, "output_tokens", (json_int_t)out,
                          "usage_completion_tokens",
                          r->usage_completion >= 0 ? json_integer((json_int_t)r->usage_completion) : json_null(),
                          "chunks", (json_int_t)r->n_chunks, "ttft_ms", num(fig.ttft_ms), "tpot_ms", num(fig.tpot_ms),
                          "e2e_ms", num(fig.e2e_ms), "ok", r->ok);
    if (!o) return json_null();
    json_object_set_new(o, "error", r->ok ? json_null() : json_string(r->err_kind));
    if (!r->ok && r->err_msg) json_object_set_new(o, "error_message", json_string(r->err_msg));
    if (r->prompt_index >= 0) json_object_set_new(o, "dataset_index", json_integer(r->prompt_index));
    return o;
}

llmq_status lt_report_json(const char *path, const lt_run *run, const lt_summary *s, llmq_err *err) {
    const lt_config *cfg = run->cfg;
    json_t *o = json_object();
    json_object_set_new(o, "issued", json_integer(s->issued));
    json_object_set_new(o, "completed", json_integer(s->completed));
    json_object_set_new(o, "failed", json_integer(s->failed));
    json_object_set_new(o, "duration_s", num(s->duration_s));
    json_object_set_new(o, "total_input_tokens", json_integer(s->total_input_tokens));
    json_object_set_new(o, "total_output_tokens", json_integer(s->total_output_tokens));
    json_object_set_new(o, "request_throughput", num(s->request_throughput));
    json_object_set_new(o, "output_throughput", num(s->output_throughput));
    json_object_set_new(o, "total_token_throughput", num(s->total_token_throughput));
    json_object_set_new(o, "request_goodput", s->has_goodput ? num(s->request_goodput) : json_null());
    json_object_set_new(o, "good_requests", s->has_goodput ? json_integer(s->good) : json_null());
    json_object_set_new(o, "max_inflight", json_integer(run->max_inflight));
    json_object_set_new(o, "token_mismatches", json_integer(s->token_mismatches));
    json_object_set_new(o, "ttft_ms", stat_json(&s->ttft));
    json_object_set_new(o, "tpot_ms", stat_json(&s->tpot));
    json_object_set_new(o, "itl_ms", stat_json(&s->itl));
    json_object_set_new(o, "e2e_ms", stat_json(&s->e2e));
    /* the keys of vLLM's `bench serve` result, so its tooling reads this file */
    json_object_set_new(o, "duration", num(s->duration_s));
    json_object_set_new(o, "num_prompts", json_integer(s->issued));
    json_object_set_new(o, "request_rate", cfg->concurrency > 0 || isinf(cfg->rate) ? json_string("inf") : num(cfg->rate));
    json_object_set_new(o, "burstiness", num(cfg->burstiness));
    json_object_set_new(o, "max_concurrency", cfg->concurrency > 0 ? json_integer(cfg->concurrency) : json_null());
    json_object_set_new(o, "model_id", json_string(cfg->model));
    if (cfg->pct_metrics & LT_M_TTFT) flat_keys(o, cfg, "ttft", &s->ttft);
    if (cfg->pct_metrics & LT_M_TPOT) flat_keys(o, cfg, "tpot", &s->tpot);
    if (cfg->pct_metrics & LT_M_ITL) flat_keys(o, cfg, "itl", &s->itl);
    if (cfg->pct_metrics & LT_M_E2E) flat_keys(o, cfg, "e2el", &s->e2e);
    json_t *errs = json_object(), *ex = json_object();
    for (size_t i = 0; i < s->n_errors; i++) {
        json_object_set_new(errs, s->errors[i].kind, json_integer(s->errors[i].count));
        if (s->errors[i].example) json_object_set_new(ex, s->errors[i].kind, json_string(s->errors[i].example));
    }
    json_object_set_new(o, "errors", errs);
    json_object_set_new(o, "error_examples", ex);
    json_object_set_new(o, "aborted", run->abort_msg[0] ? json_string(run->abort_msg) : json_null());
    json_object_set_new(o, "config", config_json(cfg));
    json_t *tg = json_object();
    if (run->target && run->target->ops->stats) run->target->ops->stats(run->target, tg);
    json_object_set_new(o, "target", tg);
    json_t *tl = json_object(), *tok = json_array(), *cmp = json_array(), *fl = json_array(), *inf = json_array();
    for (size_t b = 0; b < s->n_buckets; b++) {
        json_array_append_new(tok, num(s->timeline[b].output_tokens));
        json_array_append_new(cmp, json_integer(s->timeline[b].completed));
        json_array_append_new(fl, json_integer(s->timeline[b].failed));
        json_array_append_new(inf, num(s->timeline[b].inflight));
    }
    json_object_set_new(tl, "bucket_s", num(s->bucket_s));
    json_object_set_new(tl, "output_tok_s", tok);
    json_object_set_new(tl, "completed", cmp);
    json_object_set_new(tl, "failed", fl);
    json_object_set_new(tl, "inflight", inf);
    json_object_set_new(o, "timeline", tl);
    json_t *reqs = json_array();
    for (size_t i = 0; i < run->n_reqs; i++) json_array_append_new(reqs, request_json(run, run->reqs[i], s->itl_valid));
    json_object_set_new(o, "requests", reqs);

    int rc;
    if (!strcmp(path, "-")) {
        rc = json_dumpf(o, stdout, JSON_INDENT(1) | JSON_REAL_PRECISION(10));
        fputc('\n', stdout);
    } else {
        rc = json_dump_file(o, path, JSON_INDENT(1) | JSON_REAL_PRECISION(10));
    }
    json_decref(o);
    if (rc != 0) return llmq_err_set(err, LLMQ_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    return LLMQ_OK;
}

/* ---------------------------------------------------------------- SVG */

/* A CDF of st's sorted samples (ms, drawn divided by div): at most
 * CDF_POINTS (value, fraction) points. */
static void cdf_series(FILE *f, svg_chart *c, const lt_stat *st, double div, const char *color, const char *label) {
    double xs[CDF_POINTS], ys[CDF_POINTS];
    size_t m = st->n < CDF_POINTS ? st->n : CDF_POINTS;
    for (size_t i = 0; i < m; i++) {
        size_t k = m == st->n ? i : (size_t)((double)i * (double)(st->n - 1) / (double)(m - 1));
        xs[i] = st->sorted[k] / div;
        ys[i] = (double)(k + 1) / (double)st->n;
    }
    char lab[96];
    snprintf(lab, sizeof lab, "%s (p50 %.1f %s)", label, st->p50 / div, c->xlabel);
    svg_chart_series(f, c, xs, ys, m, color, lab, 1);
}

static void cdf_chart(FILE *f, double x, double y, double w, double h, const char *title, const lt_stat *a,
                      const char *la, const lt_stat *b, const char *lb) {
    double max = a->n ? a->max : 0;
    if (b->n && b->max > max) max = b->max;
    double div = max > 20000 ? 1000 : 1; /* long latencies read better in seconds */
    svg_chart c = {.x = x, .y = y, .w = w, .h = h, .title = title, .xlabel = div > 1 ? "s" : "ms",
                   .ylabel = "fraction of requests", .legend_left = 1};
    c.x0 = 0;
    c.x1 = max / div;
    c.y0 = 0;
    c.y1 = 1;
    svg_chart_axes(f, &c);
    if (!a->n && !b->n) {
        svg_chart_note(f, &c, "no data");
        return;
    }
    if (a->n) cdf_series(f, &c, a, div, "#1f77b4", la);
    if (b->n) cdf_series(f, &c, b, div, "#ff7f0e", lb);
}

llmq_status lt_report_svg(const char *path, const lt_run *run, const lt_summary *s, llmq_err *err) {
    FILE *f = fopen(path, "w");
    if (!f) return llmq_err_set(err, LLMQ_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    const lt_config *cfg = run->cfg;
    const int W = 1200, H = 820;
    svg_begin(f, W, H);
    char head[512], load[128];
    describe_load(cfg, load, sizeof load);
    char target[512];
    redis_url_redact(cfg->target, target, sizeof target);
    snprintf(head, sizeof head, "llmq-loadtest  %.200s  model %s  |  %s  |  prompt %s, output %s", target, cfg->model,
             load, cfg->dataset.n ? cfg->dataset_name : cfg->prompt.desc, cfg->output.desc);
    svg_text(f, 20, 24, 14, "start", head);
    snprintf(head, sizeof head,
             "%ld completed, %ld failed in %.1f s  |  %.2f req/s  |  %.1f output tok/s  |  TTFT p50 %.1f ms  |  "
             "TPOT p50 %.1f ms",
             s->completed, s->failed, s->duration_s, s->request_throughput, s->output_throughput, s->ttft.p50,
             s->tpot.p50);
    svg_text(f, 20, 44, 13, "start", head);

    double top = 56, cw = W / 2.0, ch = (H - top) / 2.0;
    cdf_chart(f, 0, top, cw, ch, "TTFT and E2E latency (CDF)", &s->ttft, "TTFT", &s->e2e, "E2E");
    cdf_chart(f, cw, top, cw, ch, "TPOT and ITL (CDF)", &s->tpot, "TPOT", &s->itl, "ITL");

    size_t nb = s->n_buckets;
    double *xs = malloc((nb + 1) * sizeof *xs), *y1 = malloc((nb + 1) * sizeof *y1), *y2 = malloc((nb + 1) * sizeof *y2);
    if (xs && y1 && y2) {
        double tmax = 0, rmax = 0;
        for (size_t b = 0; b < nb; b++) {
            xs[b] = (double)b * s->bucket_s;
            y1[b] = s->timeline[b].output_tokens;
            if (y1[b] > tmax) tmax = y1[b];
        }
        xs[nb] = (double)nb * s->bucket_s;
        y1[nb] = nb ? y1[nb - 1] : 0;
        svg_chart c = {.x = 0, .y = top + ch, .w = cw, .h = ch, .title = "Output throughput over time",
                       .xlabel = "s since start", .ylabel = "tokens/s", .x0 = 0, .x1 = xs[nb], .y0 = 0, .y1 = tmax};
        svg_chart_axes(f, &c);
        char lab[96];
        snprintf(lab, sizeof lab, "output tok/s (mean %.1f)", s->output_throughput);
        svg_chart_series(f, &c, xs, y1, nb + 1, "#2ca02c", lab, 1);

        for (size_t b = 0; b < nb; b++) {
            y1[b] = s->timeline[b].inflight;
            y2[b] = (double)s->timeline[b].completed / s->bucket_s;
            if (y1[b] > rmax) rmax = y1[b];
            if (y2[b] > rmax) rmax = y2[b];
        }
        y1[nb] = nb ? y1[nb - 1] : 0;
        y2[nb] = nb ? y2[nb - 1] : 0;
        svg_chart r = {.x = cw, .y = top + ch, .w = cw, .h = ch, .title = "Requests over time",
                       .xlabel = "s since start", .ylabel = "requests", .x0 = 0, .x1 = xs[nb], .y0 = 0, .y1 = rmax};
        svg_chart_axes(f, &r);
        svg_chart_series(f, &r, xs, y1, nb + 1, "#9467bd", "in flight (mean)", 1);
        snprintf(lab, sizeof lab, "completed/s (mean %.2f)", s->request_throughput);
        svg_chart_series(f, &r, xs, y2, nb + 1, "#d62728", lab, 1);
    }
    free(xs);
    free(y1);
    free(y2);
    svg_end(f);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) return llmq_err_set(err, LLMQ_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    return LLMQ_OK;
}
