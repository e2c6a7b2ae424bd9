/*
 * run.c — the load of llmq-loadtest: when requests start, what they ask
 * for, their timeouts, the progress line, and the end of the run (see lt.h).
 *
 * Open loop: request i+1 starts a gamma-distributed gap after request i
 * (vLLM's arrival process), whatever the server does; a late loop catches up
 * by issuing every request that is due.  Closed loop: an ev_prepare watcher
 * tops the in-flight count up to C before every poll, so a finished request
 * is replaced within the same loop iteration, and a request that fails at
 * once never recurses into issuing the next one.
 *
 * Warm-up: --num-warmups requests first, C at a time (all at once in open
 * loop), drawn from their own RNG stream; the measured run (t0, the
 * arrivals, the duration) begins when the last one finished, and not at all
 * if one failed.
 *
 * The run ends when no more requests may be issued (count reached, duration
 * over, aborted) and none is in flight.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "loadtest/lt.h"

#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* RNG streams: independent, so that e.g. a different rate keeps the lengths. */
enum { STREAM_ARRIVAL = 1, STREAM_LEN = 2, STREAM_TOK = 3, STREAM_WARM = 4, STREAM_ORDER = 5 };

double lt_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void check_end(lt_run *run);

/* ---------------------------------------------------------------- requests */

static void on_req_timeout(struct ev_loop *loop, ev_timer *w, int revents) {
    lt_req *r = container_of(w, lt_req, timeout);
    lt_run *run = r->run;
    if (r->state != LT_REQ_INFLIGHT) return;
    /* libev counts from the loop's cached time, which may be a little older
     * than t_start: never end a request before its full timeout */
    double left = r->t_start + run->cfg->timeout_s - lt_now();
    if (left > 0) {
        ev_timer_set(w, left, 0.);
        ev_timer_start(loop, w);
        return;
    }
    run->target->ops->cancel(run->target, r);
    lt_req_finish(r, lt_now(), "timeout", "no complete answer within %g s", run->cfg->timeout_s);
}

static int push_req(lt_req ***arr, size_t *n, size_t *cap, lt_req *r) {
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 1024;
        lt_req **nr = realloc(*arr, nc * sizeof *nr);
        if (!nr) return -1;
        *arr = nr;
        *cap = nc;
    }
    (*arr)[(*n)++] = r;
    return 0;
}

/* Issue one request planned for t_sched (monotonic s); a warm-up request
 * while warming. */
static void issue(lt_run *run, double t_sched) {
    const lt_config *cfg = run->cfg;
    int warm = run->warming;
    lt_req *r = calloc(1, sizeof *r);
    if (!r || (warm ? push_req(&run->warm, &run->n_warm, &run->cap_warm, r)
                    : push_req(&run->reqs, &run->n_reqs, &run->cap_reqs, r))) {
        free(r);
        lt_run_abort(run, "nomem", "out of memory for request records");
        return;
    }
    lt_rng *len = warm ? &run->rng_warm : &run->rng_len, *tok = warm ? &run->rng_warm : &run->rng_tok;
    size_t k = warm ? run->n_warm - 1 : run->n_reqs - 1;
    r->run = run;
    r->warmup = warm;
    r->index = (uint32_t)k;
    r->usage_prompt = r->usage_completion = -1;
    r->max_tokens = lt_dist_sample(&cfg->output, len);
    char *text = NULL;
    if (cfg->dataset.n) {
        r->prompt_index = (int32_t)run->order[k % cfg->dataset.n];
        r->prompt_tokens = -1;
    } else {
        r->prompt_index = -1;
        r->prompt_tokens = lt_dist_sample(&cfg->prompt, len);
        for (int32_t i = 0; i < r->prompt_tokens; i++)
            run->prompt_buf[i] = (int32_t)lt_rng_range(tok, cfg->token_lo, cfg->token_hi);
        /* a chat message is text: the drawn ids become words */
        if (cfg->chat && !(text = lt_random_text(run->prompt_buf, r->prompt_tokens))) {
            free(r);
            if (warm) run->n_warm--;
            else run->n_reqs--;
            lt_run_abort(run, "nomem", "out of memory for a prompt");
            return;
        }
    }
    r->state = LT_REQ_INFLIGHT;
    if (warm) {
        run->warm_inflight++;
        if ((long)run->n_warm >= cfg->warmups) run->issuing = 0;
    } else {
        run->inflight++;
        if (run->inflight > run->max_inflight) run->max_inflight = run->inflight;
        if (cfg->requests > 0 && (long)run->n_reqs >= cfg->requests) run->issuing = 0;
    }
    ev_timer_init(&r->timeout, on_req_timeout, cfg->timeout_s, 0.);
    ev_timer_start(run->loop, &r->timeout);
    r->t_start = lt_now();
    r->t_sched = t_sched > 0 ? t_sched : r->t_start;
    run->target->ops->send(run->target, r, run->prompt_buf,
                           r->prompt_index >= 0 ? cfg->dataset.prompts[r->prompt_index] : text);
    free(text);
}

void lt_req_tokens(lt_req *r, double t, uint32_t n_tokens) {
    if (r->state != LT_REQ_INFLIGHT || n_tokens == 0) return;
    if (r->n_chunks == r->cap_chunks) {
        /* the expected count first, so a normal request allocates once */
        uint32_t nc = r->cap_chunks ? r->cap_chunks * 2 : (uint32_t)(r->max_tokens < 65536 ? r->max_tokens : 65536) + 1;
        lt_chunk *c = realloc(r->chunks, (size_t)nc * sizeof *c);
        if (!c) return; /* the figures of this request lose a chunk; nothing else breaks */
        r->chunks = c;
        r->cap_chunks = nc;
    }
    r->chunks[r->n_chunks].t = t;
    r->chunks[r->n_chunks].n_tokens = n_tokens;
    r->n_chunks++;
    r->counted_tokens += n_tokens;
    if (!r->warmup) r->run->tokens_in += n_tokens;
}

lt_req_fig lt_req_figures(const lt_req *r, int itl_valid) {
    lt_req_fig f = {NAN, NAN, NAN};
    if (r->t_end > 0) f.e2e_ms = (r->t_end - r->t_start) * 1e3;
    if (r->n_chunks) f.ttft_ms = (r->chunks[0].t - r->t_start) * 1e3;
    int64_t out = lt_req_out_tokens(r);
    if (itl_valid && r->ok && r->n_chunks && out > 1) f.tpot_ms = (f.e2e_ms - f.ttft_ms) / (double)(out - 1);
    return f;
}

void lt_req_usage(lt_req *r, int64_t prompt_tokens, int64_t completion_tokens) {
    if (r->state != LT_REQ_INFLIGHT) return;
    if (prompt_tokens >= 0) r->usage_prompt = prompt_tokens;
    if (completion_tokens >= 0) r->usage_completion = completion_tokens;
}

void lt_req_finish(lt_req *r, double t, const char *kind, const char *fmt, ...) {
    if (r->state != LT_REQ_INFLIGHT) return;
    lt_run *run = r->run;
    r->state = LT_REQ_DONE;
    r->t_end = t;
    ev_timer_stop(run->loop, &r->timeout);
    if (kind) {
        snprintf(r->err_kind, sizeof r->err_kind, "%s", kind);
        if (fmt) {
            char msg[LLMQ_ERRSTR_LEN];
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(msg, sizeof msg, fmt, ap);
            va_end(ap);
            r->err_msg = strdup(msg);
        }
        if (r->warmup) run->warm_failed++;
        else run->failed++;
    } else {
        r->ok = 1;
        if (!r->warmup) run->ok++;
    }
    if (r->warmup) {
        run->warm_inflight--;
        run->warm_done++;
    } else {
        run->inflight--;
        run->done++;
        if (t > run->t_last_end) run->t_last_end = t;
    }
    check_end(run);
}

/* ---------------------------------------------------------------- issuing */

static void on_arrival(struct ev_loop *loop, ev_timer *w, int revents) {
    lt_run *run = container_of(w, lt_run, arrival);
    const lt_config *cfg = run->cfg;
    double now = lt_now();
    /* 0.1 ms early is on time: libev timers may fire that much before */
    while (run->issuing && run->t0 + run->next_arrival <= now + 1e-4) {
        if (cfg->duration_s > 0 && run->next_arrival >= cfg->duration_s) {
            run->issuing = 0;
            break;
        }
        issue(run, run->t0 + run->next_arrival);
        run->next_arrival += lt_arrival_gap(&run->rng_arrival, cfg->rate, cfg->burstiness);
        now = lt_now();
    }
    if (run->issuing) {
        double wait = run->t0 + run->next_arrival - now;
        ev_timer_set(&run->arrival, wait > 0 ? wait : 0., 0.);
        ev_timer_start(loop, &run->arrival);
    }
    check_end(run);
}

static void on_refill(struct ev_loop *loop, ev_prepare *w, int revents) {
    lt_run *run = container_of(w, lt_run, refill);
    const lt_config *cfg = run->cfg;
    if (run->warming) {
        long c = cfg->concurrency > 0 ? cfg->concurrency : cfg->warmups;
        while (run->issuing && run->warm_inflight < c) issue(run, 0);
        check_end(run);
        return;
    }
    while (run->issuing && run->inflight < cfg->concurrency) {
        if (cfg->duration_s > 0 && lt_now() - run->t0 >= cfg->duration_s) {
            run->issuing = 0;
            break;
        }
        issue(run, 0);
    }
    check_end(run);
}

/* ---------------------------------------------------------------- progress */

static void print_progress(lt_run *run, int final) {
    double now = lt_now(), dt = now - run->prog_t;
    double el = now - run->t0;
    double rps = dt > 0 ? (double)(run->done - run->prog_done) / dt : 0;
    double tps = dt > 0 ? (double)(run->tokens_in - run->prog_tokens) / dt : 0;
    const lt_config *cfg = run->cfg;
    char line[320], total[32] = "", eta[48] = "";
    if (run->warming) {
        snprintf(line, sizeof line, "[warm-up] done %ld/%ld (failed %ld), in flight %ld", run->warm_done, cfg->warmups,
                 run->warm_failed, run->warm_inflight);
    } else {
        /* ETA: by the count, at the mean pace so far; by the clock, the issuing time left */
        if (cfg->requests > 0) {
            snprintf(total, sizeof total, "/%ld", cfg->requests);
            if (run->done > 0 && run->done < cfg->requests)
                snprintf(eta, sizeof eta, " | ETA %.0fs", el / (double)run->done * (double)(cfg->requests - run->done));
        } else if (cfg->duration_s > el) {
            snprintf(eta, sizeof eta, " | ETA %.0fs + in flight", cfg->duration_s - el);
        }
        snprintf(line, sizeof line, "[%7.1fs] done %ld%s (ok %ld, failed %ld), in flight %ld | %.1f req/s, %.0f tok/s%s",
                 el, run->done, total, run->ok, run->failed, run->inflight, rps, tps, eta);
    }
    if (run->prog_tty) fprintf(stderr, "\r\033[K%s%s", line, final ? "\n" : "");
    else fprintf(stderr, "%s\n", line);
    run->prog_t = now;
    run->prog_done = run->done;
    run->prog_tokens = run->tokens_in;
}

static void start_measured(lt_run *run);

static void on_progress(struct ev_loop *loop, ev_timer *w, int revents) {
    print_progress(container_of(w, lt_run, progress), 0);
}

/* ---------------------------------------------------------------- start / end */

static void stop_all(lt_run *run) {
    ev_timer_stop(run->loop, &run->arrival);
    ev_prepare_stop(run->loop, &run->refill);
    ev_timer_stop(run->loop, &run->progress);
    ev_signal_stop(run->loop, &run->sigint);
    ev_signal_stop(run->loop, &run->sigterm);
}

static void check_end(lt_run *run) {
    if (run->warming && !run->stopped && !run->abort_msg[0] && !run->issuing && run->warm_inflight == 0) {
        if (run->warm_failed) {
            const lt_req *bad = NULL;
            for (size_t i = 0; i < run->n_warm && !bad; i++)
                if (!run->warm[i]->ok) bad = run->warm[i];
            lt_run_abort(run, "warmup", "warm-up failed (%ld of %ld requests): %s: %s", run->warm_failed, run->n_warm,
                         bad->err_kind, bad->err_msg ? bad->err_msg : "");
            return;
        }
        start_measured(run);
        return;
    }
    if (run->stopped || run->issuing || run->inflight > 0 || run->warm_inflight > 0) return;
    if (!run->started && !run->abort_msg[0]) return;
    run->stopped = 1;
    stop_all(run);
    if (run->started && run->cfg->progress) print_progress(run, 1);
    ev_break(run->loop, EVBREAK_ALL);
}

/* The measured run begins (after the warm-up, if any). */
static void start_measured(lt_run *run) {
    const lt_config *cfg = run->cfg;
    run->warming = 0;
    run->issuing = 1;
    run->t0 = run->prog_t = lt_now();
    if (cfg->concurrency > 0) {
        ev_prepare_start(run->loop, &run->refill);
        on_refill(run->loop, &run->refill, 0);
    } else {
        ev_prepare_stop(run->loop, &run->refill); /* the warm-up's */
        run->next_arrival = 0; /* the first request goes out at once */
        on_arrival(run->loop, &run->arrival, 0);
    }
}

void lt_run_ready(lt_run *run) {
    if (run->started || run->abort_msg[0]) return;
    const lt_config *cfg = run->cfg;
    run->started = 1;
    run->prog_t = lt_now();
    if (cfg->progress) {
        double every = run->prog_tty ? 0.5 : 2.0;
        ev_timer_set(&run->progress, every, every);
        ev_timer_start(run->loop, &run->progress);
    }
    if (cfg->warmups > 0) {
        run->warming = 1;
        run->issuing = 1;
        ev_prepare_start(run->loop, &run->refill);
        on_refill(run->loop, &run->refill, 0);
        return;
    }
    start_measured(run);
}

void lt_run_abort(lt_run *run, const char *kind, const char *fmt, ...) {
    if (!run->abort_msg[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(run->abort_msg, sizeof run->abort_msg, fmt, ap);
        va_end(ap);
        if (!run->abort_msg[0]) snprintf(run->abort_msg, sizeof run->abort_msg, "%s", kind);
    }
    run->issuing = 0;
    for (size_t i = 0; i < run->n_warm + run->n_reqs; i++) {
        lt_req *r = i < run->n_warm ? run->warm[i] : run->reqs[i - run->n_warm];
        if (r->state != LT_REQ_INFLIGHT) continue;
        run->target->ops->cancel(run->target, r);
        lt_req_finish(r, lt_now(), kind, "%s", run->abort_msg);
    }
    check_end(run);
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents) {
    lt_run *run = w->data;
    run->interrupted = 1;
    lt_run_abort(run, "interrupted", "interrupted by signal %d", w->signum);
}

llmq_status lt_run_init(lt_run *run, struct ev_loop *loop, const lt_config *cfg, llmq_err *err) {
    memset(run, 0, sizeof *run);
    run->loop = loop;
    run->cfg = cfg;
    lt_rng_seed(&run->rng_arrival, cfg->seed, STREAM_ARRIVAL);
    lt_rng_seed(&run->rng_len, cfg->seed, STREAM_LEN);
    lt_rng_seed(&run->rng_tok, cfg->seed, STREAM_TOK);
    lt_rng_seed(&run->rng_warm, cfg->seed, STREAM_WARM);
    run->prompt_buf = malloc((size_t)(cfg->prompt.hi > 0 ? cfg->prompt.hi : 1) * sizeof *run->prompt_buf);
    if (!run->prompt_buf) return llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory");
    if (cfg->dataset.n) { /* a seeded shuffle, as vLLM samples its datasets */
        lt_rng g;
        lt_rng_seed(&g, cfg->seed, STREAM_ORDER);
        if (!(run->order = malloc(cfg->dataset.n * sizeof *run->order))) {
            free(run->prompt_buf);
            return llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory");
        }
        for (size_t i = 0; i < cfg->dataset.n; i++) run->order[i] = i;
        for (size_t i = cfg->dataset.n - 1; i > 0; i--) {
            size_t j = (size_t)lt_rng_range(&g, 0, (int64_t)i), x = run->order[i];
            run->order[i] = run->order[j];
            run->order[j] = x;
        }
    }
    ev_init(&run->arrival, on_arrival);
    ev_prepare_init(&run->refill, on_refill);
    ev_init(&run->progress, on_progress);
    ev_signal_init(&run->sigint, on_signal, SIGINT);
    ev_signal_init(&run->sigterm, on_signal, SIGTERM);
    run->sigint.data = run->sigterm.data = run;
    run->prog_tty = isatty(2);
    return LLMQ_OK;
}

llmq_status lt_run_go(lt_run *run, llmq_err *err) {
    const lt_config *cfg = run->cfg;
    run->target = cfg->kind == LT_TARGET_HTTP ? lt_target_http_create(run, cfg, err)
                                              : lt_target_redis_create(run, cfg, err);
    if (!run->target) return err ? err->code : LLMQ_ERR_INVALID;
    ev_signal_start(run->loop, &run->sigint);
    ev_signal_start(run->loop, &run->sigterm);
    if (run->target->ops->start(run->target, err)) {
        stop_all(run);
        return err ? err->code : LLMQ_ERR_IO;
    }
    ev_run(run->loop, 0);
    stop_all(run);
    if (!run->started) return llmq_err_set(err, LLMQ_ERR_IO, "%s", run->abort_msg[0] ? run->abort_msg : "not started");
    return LLMQ_OK;
}

void lt_run_deinit(lt_run *run) {
    if (run->target) run->target->ops->destroy(run->target);
    run->target = NULL;
    for (size_t i = 0; i < run->n_warm + run->n_reqs; i++) {
        lt_req *r = i < run->n_warm ? run->warm[i] : run->reqs[i - run->n_warm];
        ev_timer_stop(run->loop, &r->timeout);
        free(r->chunks);
        free(r->err_msg);
        free(r);
    }
    free(run->warm);
    free(run->reqs);
    free(run->order);
    free(run->prompt_buf);
    memset(run, 0, sizeof *run);
}
