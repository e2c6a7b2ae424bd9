/* stats.c — serving metrics of a finished run (see stats.h). */
#include "loadtest/stats.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

double lt_percentile(const double *v, size_t n, double p) {
    if (n == 0) return 0;
    double pos = p / 100.0 * (double)(n - 1);
    size_t lo = (size_t)floor(pos);
    if (lo >= n - 1) return v[n - 1];
    double frac = pos - (double)lo;
    return v[lo] + (v[lo + 1] - v[lo]) * frac;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Sort the samples in st->sorted[0..n) and fill the figures. */
static void finish_stat(lt_stat *st) {
    size_t n = st->n;
    if (n == 0) return;
    qsort(st->sorted, n, sizeof *st->sorted, cmp_double);
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += st->sorted[i];
    st->mean = sum / (double)n;
    double var = 0;
    for (size_t i = 0; i < n; i++) var += (st->sorted[i] - st->mean) * (st->sorted[i] - st->mean);
    st->std = sqrt(var / (double)n);
    st->min = st->sorted[0];
    st->max = st->sorted[n - 1];
    st->p50 = lt_percentile(st->sorted, n, 50);
    st->p90 = lt_percentile(st->sorted, n, 90);
    st->p95 = lt_percentile(st->sorted, n, 95);
    st->p99 = lt_percentile(st->sorted, n, 99);
}

static int cmp_err(const void *a, const void *b) {
    const lt_errkind *x = a, *y = b;
    if (x->count != y->count) return x->count > y->count ? -1 : 1;
    return strcmp(x->kind, y->kind);
}

static llmq_status count_error(lt_summary *s, const lt_req *r, size_t *cap) {
    for (size_t i = 0; i < s->n_errors; i++)
        if (!strcmp(s->errors[i].kind, r->err_kind)) {
            s->errors[i].count++;
            return LLMQ_OK;
        }
    if (s->n_errors == *cap) {
        size_t nc = *cap ? *cap * 2 : 8;
        lt_errkind *ne = realloc(s->errors, nc * sizeof *ne);
        if (!ne) return LLMQ_ERR_NOMEM;
        s->errors = ne;
        *cap = nc;
    }
    lt_errkind *e = &s->errors[s->n_errors++];
    memcpy(e->kind, r->err_kind, sizeof e->kind);
    e->count = 1;
    e->example = r->err_msg;
    return LLMQ_OK;
}

/* Per-second (or coarser) timeline: tokens and completions by arrival time,
 * in-flight time by overlap with each bucket. */
static llmq_status timeline(lt_summary *s, const lt_run *run) {
    double span = s->duration_s > 0 ? s->duration_s : 1e-3;
    s->bucket_s = span <= 120 ? 1.0 : ceil(span / 120.0);
    if (span < 10) s->bucket_s = span / 20.0 < 0.1 ? 0.1 : span / 20.0;
    s->n_buckets = (size_t)ceil(span / s->bucket_s);
    if (s->n_buckets == 0) s->n_buckets = 1;
    s->timeline = calloc(s->n_buckets, sizeof *s->timeline);
    if (!s->timeline) return LLMQ_ERR_NOMEM;
    double bs = s->bucket_s;
    size_t nb = s->n_buckets;
    for (size_t i = 0; i < run->n_reqs; i++) {
        const lt_req *r = run->reqs[i];
        double st = r->t_start - run->t0, en = (r->t_end > 0 ? r->t_end : run->t_last_end) - run->t0;
        size_t eb = en / bs < (double)nb ? (size_t)(en / bs) : nb - 1;
        if (r->ok) s->timeline[eb].completed++;
        else s->timeline[eb].failed++;
        if (r->ok)
            for (uint32_t c = 0; c < r->n_chunks; c++) {
                double t = r->chunks[c].t - run->t0;
                size_t b = t > 0 && t / bs < (double)nb ? (size_t)(t / bs) : (t <= 0 ? 0 : nb - 1);
                s->timeline[b].output_tokens += r->chunks[c].n_tokens;
            }
        /* in-flight: the share of each bucket this request overlaps */
        for (size_t b = st > 0 ? (size_t)(st / bs) : 0; b < nb && (double)b * bs < en; b++) {
            double lo = (double)b * bs, hi = lo + bs;
            double ov = (en < hi ? en : hi) - (st > lo ? st : lo);
            if (ov > 0) s->timeline[b].inflight += ov / bs;
        }
    }
    for (size_t b = 0; b < nb; b++) s->timeline[b].output_tokens /= bs;
    return LLMQ_OK;
}

llmq_status lt_summary_compute(lt_summary *s, const lt_run *run, llmq_err *err) {
    memset(s, 0, sizeof *s);
    const lt_config *cfg = run->cfg;
    size_t n = run->n_reqs, n_itl = 0, err_cap = 0;
    s->itl_valid = cfg->kind == LT_TARGET_REDIS || cfg->stream;
    for (size_t i = 0; i < n; i++)
        if (run->reqs[i]->ok && run->reqs[i]->n_chunks > 1) n_itl += run->reqs[i]->n_chunks - 1;
    s->ttft.sorted = malloc((n ? n : 1) * sizeof(double));
    s->tpot.sorted = malloc((n ? n : 1) * sizeof(double));
    s->e2e.sorted = malloc((n ? n : 1) * sizeof(double));
    s->itl.sorted = malloc((n_itl ? n_itl : 1) * sizeof(double));
    if (!s->ttft.sorted || !s->tpot.sorted || !s->e2e.sorted || !s->itl.sorted) goto nomem;

    s->issued = (long)n;
    double end = run->t_last_end > run->t0 ? run->t_last_end : run->t0;
    s->duration_s = end - run->t0;
    for (size_t i = 0; i < n; i++) {
        const lt_req *r = run->reqs[i];
        if (!r->ok) {
            s->failed++;
            if (count_error(s, r, &err_cap) != LLMQ_OK) goto nomem;
            continue;
        }
        s->completed++;
        int64_t out = lt_req_out_tokens(r);
        s->total_input_tokens += lt_req_in_tokens(r);
        s->total_output_tokens += out;
        if (out != r->max_tokens) s->token_mismatches++;
        lt_req_fig fig = lt_req_figures(r, s->itl_valid);
        double e2e = fig.e2e_ms, ttft = fig.ttft_ms, tpot = fig.tpot_ms;
        s->e2e.sorted[s->e2e.n++] = e2e;
        if (!isnan(ttft)) s->ttft.sorted[s->ttft.n++] = ttft;
        if (!isnan(tpot)) s->tpot.sorted[s->tpot.n++] = tpot;
        if (s->itl_valid)
            for (uint32_t c = 1; c < r->n_chunks; c++)
                s->itl.sorted[s->itl.n++] = (r->chunks[c].t - r->chunks[c - 1].t) * 1e3;
        if (cfg->has_slo) {
            int good = 1;
            if (cfg->slo.ttft_ms > 0 && !(ttft <= cfg->slo.ttft_ms)) good = 0; /* NAN: no token, not good */
            if (cfg->slo.tpot_ms > 0 && tpot > cfg->slo.tpot_ms) good = 0; /* NAN compares false: no TPOT, no limit */
            if (cfg->slo.e2e_ms > 0 && e2e > cfg->slo.e2e_ms) good = 0;
            s->good += good;
        }
    }
    finish_stat(&s->ttft);
    finish_stat(&s->tpot);
    finish_stat(&s->itl);
    finish_stat(&s->e2e);
    if (s->duration_s > 0) {
        s->request_throughput = (double)s->completed / s->duration_s;
        s->output_throughput = (double)s->total_output_tokens / s->duration_s;
        s->total_token_throughput = (double)(s->total_input_tokens + s->total_output_tokens) / s->duration_s;
        s->request_goodput = (double)s->good / s->duration_s;
    }
    s->has_goodput = cfg->has_slo;
    if (s->n_errors) qsort(s->errors, s->n_errors, sizeof *s->errors, cmp_err);
    if (timeline(s, run) != LLMQ_OK) goto nomem;
    return LLMQ_OK;
nomem:
    lt_summary_deinit(s);
    return llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory computing the summary");
}

void lt_summary_deinit(lt_summary *s) {
    if (!s) return;
    free(s->ttft.sorted);
    free(s->tpot.sorted);
    free(s->itl.sorted);
    free(s->e2e.sorted);
    free(s->errors);
    free(s->timeline);
    memset(s, 0, sizeof *s);
}
