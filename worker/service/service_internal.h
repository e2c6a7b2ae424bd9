/*
 * service_internal.h — what the files of the worker service share (not an
 * API: only the .c files of worker/service/ include it).  service.h is the public side.
 *
 *   service.c    the loop, connect/reconnect, claims, cancels, deadlines
 *   admission.c  entries pulled from the request stream -> admitted jobs
 *   job.c        a running job: tokens -> chunk ids, text, logprobs
 *   publish.c    the pipeline to Redis: chunks, finals, failed jobs
 *   health.c     heartbeat, metrics, what the /metrics, /readyz listener says
 *   metrics_http.c  that listener, in its own thread
 *
 * One thread runs all of it (health.c's listener aside, see there): no
 * field of `service` is locked.
 */
#ifndef LLMQ_SERVICE_INTERNAL_H
#define LLMQ_SERVICE_INTERNAL_H

#include <hiredis/hiredis.h>
#include <stdint.h>
#include <time.h>

#include "common/jobops.h"
#include "common/keys.h"
#include "common/metrics.h"
#include "common/protocol.h"
#include "common/rcmd.h"
#include "common/url.h"
#include "kernels/backend.h"
#include "worker/engine/engine.h"
#include "worker/engine/runtime.h"
#include "worker/engine/sched.h"
#include "worker/model/model.h"
#include "worker/service/service.h"
#include "worker/tokenizer/chat.h"
#include "worker/tokenizer/stopstr.h"
#include "worker/tokenizer/tokenizer.h"

/* What a pipelined reply is about, so pipe_flush can act on it. */
enum { TAG_NONE, TAG_CHUNK, TAG_FINAL, TAG_CANCEL_FLAG, TAG_ADMIT };
typedef struct pipe_tag {
    int kind;                        /* TAG_* */
    char id[PROTO_MAX_ID_LEN + 1];   /* the job it concerns ("" for TAG_NONE) */
    struct job *admit;               /* TAG_ADMIT: the job under admission, which takes the reply */
} pipe_tag;

typedef struct job {
    char id[PROTO_MAX_ID_LEN + 1];
    char entry[64];          /* request stream entry id (XACK / XCLAIM) */
    proto_request req;       /* decoded request (owns its strings) */
    seq s;                   /* the scheduler's sequence; s.user = this */
    tok_stream ts;           /* streaming detokenizer (when a tokenizer is loaded) */
    int has_ts;
    stop_matcher sm;         /* stop strings: holds back what may start one */
    int has_sm;
    tok_text delta;          /* scratch: the detokenizer's output for one id */
    tok_text pending;        /* final text not yet published */
    size_t skip;             /* resume: bytes of text already published, still to drop */
    int32_t *step_ids;       /* ids generated since the last chunk */
    int n_step_ids, cap_step_ids;
    int want_lp;             /* the request asked for logprobs: every chunk carries `lp` */
    proto_lp *step_lp;       /* with want_lp: [cap_step_ids] logprobs of step_ids */
    proto_token_lp *step_top;/* with want_lp: [cap_step_ids * s.logprobs] their alternatives;
                                step_lp[i].top is pointed at row i when a chunk is encoded */
    int64_t next_seq;        /* seq of the next chunk */
    long long attempt;       /* the job hash's attempts after our admission: fences our writes */
    int64_t admitted_ms;     /* when this worker took it */
    int64_t first_token_ms;  /* 0 until the first token */
    int64_t last_token_ms;
    int stop_hit;            /* a stop string matched: finish "stop" */
    int done;                /* the scheduler finished it (s.finish says why) */
    const char *error;       /* set while running (static text): the job cannot go on and ends
                                failed with this reason at the next publish */
    const char *error_code;  /* static text or NULL: the final chunk's `code` (with an error) */
    int64_t max_model_len;   /* 0, or the final chunk's `max_model_len` (a tokenize answer) */
    uint64_t seed;           /* during admission: the seed offered to the admit script */
    redisReply *admit_reply; /* during admission: the admit script's reply (owned), NULL on error */
    struct job *next;
} job;

_Static_assert(PROTO_MAX_LOGPROBS == SAMPLER_MAX_LOGPROBS, "a request's logprobs must fit the sampler's");

/* The text piece of every id (tok_id_bytes), built once at start: the `lp`
 * of chunks points into it, so logprobs decode and allocate nothing per token. */
typedef struct piece_table {
    tok_text text;           /* all pieces back to back */
    uint32_t *off, *len;     /* [n] where id's piece is in text, and its bytes */
    int n;                   /* ids covered (the model's vocab); 0 without a tokenizer */
} piece_table;

typedef struct service {
    service_opts o;
    llmq_keys keys;
    char req_key[KEYS_MAX], dead_key[KEYS_MAX], workers_key[KEYS_MAX], cancel_chan[KEYS_MAX];
    redis_url url;
    redisContext *rc;        /* commands */
    redisContext *sub;       /* SUBSCRIBE <prefix>cancel */
    int pipe_pending;        /* replies still to read from rc */
    pipe_tag *tags;          /* what each pending reply is about, in order (pipe_pending of them) */
    int cap_tags;
    runtime *rt;             /* backend, model, engine, scheduler and tokenizer (NULL until built;
                                rt->tok NULL when the model directory has no tokenizer.json) */
    piece_table pieces;      /* with tok: every id's text piece, for logprobs */
    chat_template ct;        /* the model's chat template family */
    int has_ct;
    char ct_error[LLMQ_ERRSTR_LEN]; /* why chat requests cannot run, when !has_ct */
    job *jobs;               /* active jobs */
    int n_jobs;
    proto_buf buf;           /* scratch for one encoding */
    int64_t last_refresh_ms, last_autoclaim_ms, last_heartbeat_ms;
    struct metrics_http *hs; /* the /metrics, /readyz listener (metrics_http.h), NULL when off */
    int64_t last_snapshot_ms;/* when the loop last rendered the metrics for it (monotonic) */
    metrics *mx;
    metric *m_running, *m_waiting, *m_kv_used, *m_kv_free, *m_prompt_tok, *m_gen_tok, *m_preempt;
    metric_family *f_success;
    metric *m_step, *m_batch, *m_ttft, *m_itl, *m_queue;
    uint64_t preempt_seen;
    int finals;              /* finals queued since the last metrics snapshot (forces one) */
    int reclaim_own;         /* after a reconnect: re-admit our own pending entries */
} service;


static inline int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- publish.c: the pipeline to Redis ---- */

/* Queue a command; its reply is read by svc_pipe_flush, which acts on it
 * according to kind (TAG_*) for job id.  Returns 0, or -1 when the command
 * could not be queued (out of memory, logged): nothing was sent. */
int svc_pipe_add_tagged(service *sv, const rcmd *c, int kind, const char *id);
int svc_pipe_add(service *sv, const rcmd *c);
/* The admit script of j: its reply goes to j->admit_reply at the flush. */
int svc_pipe_add_admit(service *sv, const rcmd *c, job *j);
/* Read every queued reply and act on it (sending first what is not sent
 * yet).  LLMQ_ERR_IO: the connection is gone. */
llmq_status svc_pipe_flush(service *sv, llmq_err *err);
/* Write out every queued command without waiting for the replies, which
 * the next svc_pipe_flush (or svc_call) reads. */
llmq_status svc_pipe_send(service *sv, llmq_err *err);
/* One command and its reply (caller frees), after flushing the pipeline;
 * NULL with err on failure. */
redisReply *svc_call(service *sv, const rcmd *c, llmq_err *err);
/* The end of a job in one script (jobops_finish), queued: final chunk (j's
 * step ids, text), job hash, XACK of entry, TTLs, and with dead the
 * dead-stream record; fenced on j->attempt (0: an entry never admitted).
 * error/error_status: the reason and 400/500 when finish is "error".
 * Returns -1 when it cannot be built (out of memory, logged): nothing is
 * written and the entry, pending, is claimed again after --claim-idle-ms. */
int svc_add_final(service *sv, const job *j, const char *entry, const char *text, size_t len, const char *finish,
                  const char *error, int error_status, int dead);
/* A job that fails before it runs: its final (finish "error", the reason,
 * status 400 when the request is at fault, 500 when we are; zero usage)
 * with seq next_seq (0, or one past the chunks of earlier attempts).  attempt: our
 * admission, 0 when the entry was never admitted.  dead: also recorded in
 * the dead stream (poison entries, exhausted jobs).  An id that is not a
 * valid job id leaves no job to end: only the XACK and the dead record. */
void svc_fail_early(service *sv, const char *id, const char *entry, long long attempt, int64_t next_seq, const char *why,
                    int status, int dead);
/* After a step: chunks of running jobs, finals of finished ones (then freed). */
void svc_publish(service *sv);

/* ---- job.c: a running job ---- */

job *svc_job_find(service *sv, const char *id);
void svc_job_free(job *j); /* NULL: no-op */
void svc_job_text_push(service *sv, job *j, int32_t tok);
void svc_job_text_finish(job *j);
void svc_on_token(seq *s, int32_t tok, void *ud);
void svc_on_finish(seq *s, void *ud);
llmq_status svc_pieces_build(piece_table *p, const tokenizer *tok, int n, llmq_err *err);
void svc_pieces_deinit(piece_table *p);

/* ---- admission.c: entries in ---- */

/* Pull what the scheduler can take (claimed, then new entries) and admit it.
 * block: wait up to o.block_ms for new entries (nothing runs). */
llmq_status svc_pull(service *sv, int block, llmq_err *err);

/* ---- health.c ---- */

struct metrics_http;

void svc_metrics_init(service *sv);
/* Queue the heartbeat (every 2 s). */
void svc_heartbeat(service *sv);
/* Listen on o.metrics_addr:o.metrics_port and serve from a thread. */
llmq_status svc_health_start(service *sv, llmq_err *err);
void svc_health_stop(service *sv); /* no listener: no-op */
/* The loop's side: Redis connected or not (/readyz), and the metrics text
 * /metrics answers with, rendered at most every 100 ms unless force. */
void svc_health_ready(service *sv, int ready);
void svc_health_snapshot(service *sv, int force);

#endif
