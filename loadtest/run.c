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
enum { STREAM_ARRIVAL = 1, STREAM_LEN = 2, STREAM_TOK = 3 };

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

static int push_req(lt_run *run, lt_req *r) {
    if (run->n_reqs == run->cap_reqs) {
        size_t nc = run->cap_reqs ? run->cap_reqs * 2 : 1024;
        lt_req **nr = realloc(run->reqs, nc * sizeof *nr);
        if (!nr) return -1;
        run->reqs = nr;
        run->cap_reqs = nc;
    }
    run->reqs[run->n_reqs++] = r;
    return 0;
}

/* Issue one request planned for t_sched (monotonic s). */
static void issue(lt_run *run, double t_sched) {
    const lt_config *cfg = run->cfg;
    lt_req *r = calloc(1, sizeof *r);
    if (!r || push_req(run, r)) {
        free(r);
        lt_run_abort(run, "nomem", "out of memory for request records");
        return;
    }
    r->run = run;
    r->index = (uint32_t)(run->n_reqs - 1);
    r->prompt_tokens = lt_dist_sample(&cfg->prompt, &run->rng_len);
    r->max_tokens = lt_dist_sample(&cfg->output, &run->rng_len);
    r->usage_prompt = r->usage_completion = -1;
    for (int32_t i = 0; i < r->prompt_tokens; i++)
        run->prompt_buf[i] = (int32_t)lt_rng_range(&run->rng_tok, cfg->token_lo, cfg->token_hi);
    r->state = LT_REQ_INFLIGHT;
    run->inflight++;
    if (run->inflight > run->max_inflight) run->max_inflight = run->inflight;
    if (cfg->requests > 0 && (long)run->n_reqs >= cfg->requests) run->issuing = 0;
    ev_timer_init(&r->timeout, on_req_timeout, cfg->timeout_s, 0.);
    ev_timer_start(run->loop, &r->timeout);
    r->t_start = lt_now();
    r->t_sched = t_sched > 0 ? t_sched : r->t_start;
    run->target->ops->send(run->target, r, run->prompt_buf);
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
    r->run->tokens_in += n_tokens;
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
        run->failed++;
    } else {
        r->ok = 1;
        run->ok++;
    }
    run->inflight--;
    run->done++;
    if (t > run->t_last_end) run->t_last_end = t;
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
    char line[256];
    snprintf(line, sizeof line, "[%7.1fs] done %ld (ok %ld, failed %ld), in flight %ld | %.1f req/s, %.0f tok/s", el,
             run->done, run->ok, run->failed, run->inflight, rps, tps);
    if (run->prog_tty) fprintf(stderr, "\r\033[K%s%s", line, final ? "\n" : "");
    else fprintf(stderr, "%s\n", line);
    run->prog_t = now;
    run->prog_done = run->done;
    run->prog_tokens = run->tokens_in;
}

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
    if (run->stopped || run->issuing || run->inflight > 0) return;
    if (!run->started && !run->abort_msg[0]) return;
    run->stopped = 1;
    stop_all(run);
    if (run->started && run->cfg->progress) print_progress(run, 1);
    ev_break(run->loop, EVBREAK_ALL);
}

void lt_run_ready(lt_run *run) {
    if (run->started || run->abort_msg[0]) return;
    const lt_config *cfg = run->cfg;
    run->started = 1;
    run->issuing = 1;
    run->t0 = run->prog_t = lt_now();
    if (cfg->progress) {
        double every = run->prog_tty ? 0.5 : 2.0;
        ev_timer_set(&run->progress, every, every);
        ev_timer_start(run->loop, &run->progress);
    }
    if (cfg->concurrency > 0) {
        ev_prepare_start(run->loop, &run->refill);
        on_refill(run->loop, &run->refill, 0);
    } else {
        run->next_arrival = 0; /* the first request goes out at once */
        on_arrival(run->loop, &run->arrival, 0);
    }
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
    for (size_t i = 0; i < run->n_reqs; i++) {
        lt_req *r = run->reqs[i];
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
    run->prompt_buf = malloc((size_t)cfg->prompt.hi * sizeof *run->prompt_buf);
    if (!run->prompt_buf) return llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory");
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
    for (size_t i = 0; i < run->n_reqs; i++) {
        lt_req *r = run->reqs[i];
        ev_timer_stop(run->loop, &r->timeout);
        free(r->chunks);
        free(r->err_msg);
        free(r);
    }
    free(run->reqs);
    free(run->prompt_buf);
    memset(run, 0, sizeof *run);
}
