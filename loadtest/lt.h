/*
 * lt.h — llmq-loadtest's shared types: the configuration, the record of one
 * request, the run that issues requests, and the interface of a target (an
 * HTTP server speaking OpenAI completions, or Redis speaking the llmq
 * protocol).
 *
 * One thread, one libev loop.  The run decides WHEN a request starts (open
 * loop: a gamma/Poisson arrival process; closed loop: C requests in flight)
 * and WHAT it asks for (prompt and output lengths, prompt token ids or a
 * dataset's prompt text); the target sends it and reports what comes back
 * through lt_req_tokens, lt_req_usage and, exactly once, lt_req_finish.
 * Warm-up requests (--num-warmups) go first and are kept out of every
 * figure.
 *
 * Times: every timestamp is CLOCK_MONOTONIC seconds (lt_now), taken when the
 * bytes were read from the socket, not when they were processed.
 *
 * Ownership: the run owns every lt_req from issue to the end of the run
 * (records are never freed while the loop runs, so a target may keep a
 * pointer to one in a callback's private data until it is told to cancel
 * it).  A target owns its own per-request state.
 */
#ifndef LLMQ_LT_H
#define LLMQ_LT_H

#include <ev.h>
#include <stdint.h>

#include "common/status.h"
#include "loadtest/dataset.h"
#include "loadtest/dist.h"

struct json_t;

#define LT_ERR_KIND_MAX 32

typedef enum lt_target_kind { LT_TARGET_HTTP = 0, LT_TARGET_REDIS } lt_target_kind;

/* The metrics of --percentile-metrics (vLLM's names ttft, tpot, itl, e2el). */
enum { LT_M_TTFT = 1, LT_M_TPOT = 2, LT_M_ITL = 4, LT_M_E2E = 8 };

/* Service-level objectives for goodput (vLLM's --goodput); <= 0: not set. */
typedef struct lt_slo {
    double ttft_ms;
    double tpot_ms;
    double e2e_ms;
} lt_slo;

typedef struct lt_config {
    const char *target;          /* the URL as given */
    lt_target_kind kind;
    char url[2048];              /* HTTP: the target's URL with the endpoint appended */
    const char *endpoint;        /* HTTP: path, default /v1/completions */
    int chat;                    /* HTTP: the endpoint ends in /chat/completions: a messages body */
    int insecure;                /* HTTPS: no certificate or host name verification */
    const char *cacert;          /* HTTPS: CA bundle to verify with (NULL = the system's) */
    const char *dataset_name;    /* "random" (token ids) or a dataset layout (dataset.h) */
    const char *dataset_path;
    lt_dataset dataset;          /* its prompts (empty for random) */
    long warmups;                /* requests sent and waited for before the measured run */
    unsigned pct_metrics;        /* LT_M_* bits: the flat vLLM keys of these metrics */
    double pcts[16];             /* --metric-percentiles, each in (0, 100] */
    int n_pcts;
    const char *prefix;          /* Redis: key prefix, NULL = llmq: */
    const char *model;
    double rate;                 /* open loop: requests/s (INFINITY = all at once); 0 = closed loop */
    double burstiness;           /* gamma shape of the inter-arrival times; 1 = Poisson */
    int concurrency;             /* closed loop: requests in flight; 0 = open loop */
    long requests;               /* requests to issue; 0 = issue until duration_s */
    double duration_s;           /* issue for this long; 0 = until `requests` issued */
    lt_dist prompt;              /* prompt lengths, tokens */
    lt_dist output;              /* output lengths, tokens (max_tokens + ignore_eos) */
    int stream;                  /* HTTP: stream (SSE); Redis always streams */
    const char *api_key;         /* HTTP: Authorization: Bearer <key> */
    uint64_t seed;
    lt_slo slo;
    int has_slo;
    const char *json_path;       /* NULL = no JSON */
    const char *svg_path;        /* NULL = no SVG */
    double timeout_s;            /* a request still open after this long fails ("timeout") */
    int token_lo, token_hi;      /* prompt ids are drawn uniformly from [lo, hi] */
    int progress;                /* 0: no progress line */
} lt_config;

/* One token-carrying chunk (an SSE event with text, a protocol chunk with ids).
 * Its time is the raw clock value, like t_start and t_end: every figure is a
 * difference of these doubles, rounded only when printed, so that e.g. TTFT
 * can never exceed E2E through rounding. */
typedef struct lt_chunk {
    double t;                    /* arrival, monotonic s */
    uint32_t n_tokens;           /* tokens it carried (1 per SSE event) */
} lt_chunk;

typedef enum lt_req_state { LT_REQ_INFLIGHT = 1, LT_REQ_DONE } lt_req_state;

typedef struct lt_run lt_run;

typedef struct lt_req {
    lt_run *run;
    uint32_t index;              /* 0-based issue order */
    int32_t prompt_tokens;       /* prompt ids sent; -1 for a text prompt (count unknown here) */
    int32_t prompt_index;        /* the dataset prompt sent, -1 = random ids */
    int warmup;                  /* a warm-up request: in no figure */
    int32_t max_tokens;          /* output tokens asked for */
    lt_req_state state;
    double t_sched;              /* planned start (open loop), monotonic s; = t_start in closed loop */
    double t_start;              /* sent, monotonic s */
    double t_end;                /* finished, monotonic s (0 while in flight) */
    lt_chunk *chunks;            /* token-carrying chunks in arrival order (owned) */
    uint32_t n_chunks, cap_chunks;
    int64_t counted_tokens;      /* sum of n_tokens over chunks */
    int64_t usage_prompt;        /* usage reported by the server; -1 = none */
    int64_t usage_completion;
    int ok;                      /* finished successfully */
    char err_kind[LT_ERR_KIND_MAX]; /* "" on success, else e.g. "http_429", "timeout" */
    char *err_msg;               /* first failure message (owned) or NULL */
    ev_timer timeout;            /* fires timeout_s after the start */
    void *tstate;                /* the target's per-request state */
} lt_req;

/* Output tokens of a finished request: the server's usage when it gave one,
 * else what was counted from the chunks. */
static inline int64_t lt_req_out_tokens(const lt_req *r) {
    return r->usage_completion >= 0 ? r->usage_completion : r->counted_tokens;
}

/* Input tokens of a finished request: the ids sent, else the server's usage. */
static inline int64_t lt_req_in_tokens(const lt_req *r) {
    return r->prompt_tokens >= 0 ? r->prompt_tokens : r->usage_prompt >= 0 ? r->usage_prompt : 0;
}

/* The per-request figures (ms) of a finished request, computed from its clock
 * values in one place for the summary and the JSON record alike.  NAN where
 * a figure does not exist: TTFT without a token-carrying chunk, TPOT unless
 * streaming (itl_valid) with more than one output token. */
typedef struct lt_req_fig {
    double ttft_ms, tpot_ms, e2e_ms;
} lt_req_fig;
lt_req_fig lt_req_figures(const lt_req *r, int itl_valid);

/* ---------------------------------------------------------------- targets */

typedef struct lt_target lt_target;

typedef struct lt_target_ops {
    const char *name;                                         /* "http", "redis" */
    /* Connect/prepare; call lt_run_ready (or lt_run_abort) when ready, from
     * here or later from the loop.  Nonzero = failed at once (err set). */
    int (*start)(lt_target *t, llmq_err *err);
    /* Send r with these prompt ids (r->prompt_tokens of them), or when text is
     * not NULL with that prompt text (both valid during the call only). */
    void (*send)(lt_target *t, lt_req *r, const int32_t *prompt_ids, const char *text);
    /* The run gives up on r (timeout, interrupt): stop reporting on it. */
    void (*cancel)(lt_target *t, lt_req *r);
    /* Add the target's own statistics (connections, ...) to the report's
     * JSON object `out`; may be NULL. */
    void (*stats)(lt_target *t, struct json_t *out);
    void (*destroy)(lt_target *t);
} lt_target_ops;

struct lt_target {
    const lt_target_ops *ops;
    lt_run *run;
};

lt_target *lt_target_http_create(lt_run *run, const lt_config *cfg, llmq_err *err);
lt_target *lt_target_redis_create(lt_run *run, const lt_config *cfg, llmq_err *err);

/* ---------------------------------------------------------------- the run */

/* Totals the progress line and the report read while the run goes on. */
struct lt_run {
    struct ev_loop *loop;
    const lt_config *cfg;
    lt_target *target;
    lt_rng rng_arrival;          /* inter-arrival gaps */
    lt_rng rng_len;              /* prompt and output lengths */
    lt_rng rng_tok;              /* prompt token ids */
    lt_rng rng_warm;             /* everything a warm-up request draws, so warm-ups change no measured draw */
    size_t *order;               /* dataset: the order its prompts are sent in (seeded shuffle) */
    lt_req **warm;               /* warm-up requests (owned) */
    size_t n_warm, cap_warm;
    long warm_inflight, warm_done, warm_failed;
    int warming;                 /* the warm-up runs; the measured run has not begun */
    int32_t *prompt_buf;         /* scratch for one prompt (cfg->prompt.hi ids) */
    lt_req **reqs;               /* every issued request, in issue order (owned) */
    size_t n_reqs, cap_reqs;
    long inflight, max_inflight;
    long done, ok, failed;
    int64_t tokens_in;           /* output tokens received so far (chunks) */
    double t0;                   /* start of the measured run (first issue), monotonic s */
    double t_last_end;           /* latest finish, monotonic s */
    double next_arrival;         /* open loop: next planned start, s after t0 */
    int started;                 /* the target is ready and requests go out */
    int issuing;                 /* more requests may still be issued */
    int stopped;                 /* ev_break was called */
    int interrupted;             /* SIGINT/SIGTERM */
    char abort_msg[LLMQ_ERRSTR_LEN]; /* why the run was aborted ("" = not) */
    ev_timer arrival;            /* open loop: next issue */
    ev_prepare refill;           /* closed loop: top up to C in flight */
    ev_timer progress;           /* progress line */
    ev_signal sigint, sigterm;
    double prog_t;               /* last progress line: time, done, tokens */
    long prog_done;
    int64_t prog_tokens;
    int prog_tty;                /* stderr is a terminal: rewrite one line */
};

/* Set up (nothing runs yet). */
llmq_status lt_run_init(lt_run *run, struct ev_loop *loop, const lt_config *cfg, llmq_err *err);
/* Start the target and run the loop until every issued request finished.
 * Returns LLMQ_OK, or the error that aborted the run (err set). */
llmq_status lt_run_go(lt_run *run, llmq_err *err);
void lt_run_deinit(lt_run *run);

/* From the target: ready to send / cannot go on (every in-flight request
 * fails with kind, the run stops issuing). */
void lt_run_ready(lt_run *run);
void lt_run_abort(lt_run *run, const char *kind, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* From the target, about one in-flight request (ignored after it finished). */
void lt_req_tokens(lt_req *r, double t, uint32_t n_tokens);
void lt_req_usage(lt_req *r, int64_t prompt_tokens, int64_t completion_tokens);
/* The end: kind NULL = success; else a failure of that kind with a message. */
void lt_req_finish(lt_req *r, double t, const char *kind, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

double lt_now(void);             /* CLOCK_MONOTONIC, s */

#endif
