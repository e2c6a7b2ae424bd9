/*
 * service.c — the worker's leader loop (see service.h and docs/protocol.md).
 *
 * A job's life here:
 *   entry pulled (XREADGROUP / XAUTOCLAIM) -> decoded -> admitted (jobops
 *   admit script: state running, attempts+1, seed fixed on first attempt)
 *   -> tokenized -> resumed from its output stream when it was claimed again
 *   -> scheduled -> per step: ids go through the streaming detokenizer and
 *   the stop-string holdback into one chunk per step -> final chunk + job
 *   hash + XACK + TTLs in one MULTI.
 *
 * Invariants
 *  - A job's chunks carry seq 0, 1, 2, ... with no gap and no repeat, also
 *    across a resume: the next seq is one past the last chunk in the stream,
 *    and the resumed text skips exactly the bytes already published.
 *  - Nothing is written for a job after its final chunk.
 *  - Every write of a job's output is fenced on the admission that this
 *    worker made (jobops.h, "Fencing"): when another worker took the job
 *    over meanwhile (this one stalled past --claim-idle-ms), the write is
 *    refused and the job dropped here, so a job never has two writers.
 *  - The loop never blocks on Redis while it has sequences to run.
 */
#include "worker/service/service.h"

#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/jobops.h"
#include "common/keys.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/protocol.h"
#include "common/rconn.h"
#include "common/url.h"
#include "kernels/backend.h"
#include "worker/engine/engine.h"
#include "worker/engine/runtime.h"
#include "worker/model/model.h"
#include "worker/tokenizer/chat.h"
#include "worker/engine/sched.h"
#include "worker/tokenizer/stopstr.h"
#include "worker/tokenizer/tokenizer.h"

/* ------------------------------------------------------------------ types */

/* What a pipelined reply is about, so pipe_flush can act on it. */
enum { TAG_NONE, TAG_CHUNK, TAG_FINAL, TAG_CANCEL_FLAG };
typedef struct pipe_tag {
    int kind;                        /* TAG_* */
    char id[PROTO_MAX_ID_LEN + 1];   /* the job it concerns ("" for TAG_NONE) */
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
    runtime *rt;             /* owns the five below (worker/engine/runtime.h) */
    llmq_backend *be;
    model *m;
    engine *eng;
    sched *sch;
    tokenizer *tok;          /* NULL when the model directory has no tokenizer.json */
    piece_table pieces;      /* with tok: every id's text piece, for logprobs */
    chat_template ct;        /* the model's chat template family */
    int has_ct;
    char ct_error[LLMQ_ERRSTR_LEN]; /* why chat requests cannot run, when !has_ct */
    job *jobs;               /* active jobs */
    int n_jobs;
    proto_buf buf;           /* scratch for one encoding */
    int64_t last_refresh_ms, last_autoclaim_ms, last_heartbeat_ms;
    int listen_fd;           /* metrics/readiness listener, -1 when off */
    metrics *mx;
    metric *m_running, *m_waiting, *m_kv_used, *m_kv_free, *m_prompt_tok, *m_gen_tok, *m_preempt;
    metric_family *f_success;
    metric *m_step, *m_batch, *m_ttft, *m_itl, *m_queue;
    uint64_t preempt_seen;
    int reclaim_own;         /* after a reconnect: re-admit our own pending entries */
} service;

void service_opts_default(service_opts *o) {
    memset(o, 0, sizeof *o);
    o->redis_url = "redis://127.0.0.1:6379/0";
    o->prefix = KEYS_DEFAULT_PREFIX;
    o->backend = "cpu";
    o->max_num_seqs = 32;
    o->max_batched_tokens = 512;
    o->claim_idle_ms = 30000;
    o->max_attempts = 3;
    o->result_ttl_s = 3600;
    o->drain_timeout_s = 30;
    o->block_ms = 200;
}

int service_default_kv_blocks(const model_config *cfg, int max_num_seqs) {
    /* every sequence slot can hold a full context */
    return max_num_seqs * ((cfg->max_position_embeddings + ENG_BLOCK_SIZE - 1) / ENG_BLOCK_SIZE);
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------ redis I/O */

/* Queue a command on the pipeline; its reply is read by pipe_flush, which
 * acts on it according to kind (TAG_*) for job id. */
static void pipe_add_tagged(service *sv, const rcmd *c, int kind, const char *id) {
    if (!rcmd_ok(c)) {
        log_error("internal: a Redis command overflowed its argument table");
        return;
    }
    if (sv->pipe_pending == sv->cap_tags) {
        int cap = sv->cap_tags ? 2 * sv->cap_tags : 64;
        pipe_tag *t = realloc(sv->tags, (size_t)cap * sizeof *t);
        if (!t) {
            log_error("out of memory: a Redis command was not sent");
            return;
        }
        sv->tags = t;
        sv->cap_tags = cap;
    }
    if (redisAppendCommandArgv(sv->rc, c->argc, (const char **)c->argv, c->argvlen) != REDIS_OK) return;
    pipe_tag *t = &sv->tags[sv->pipe_pending++];
    t->kind = kind;
    snprintf(t->id, sizeof t->id, "%s", id ? id : "");
}

static void pipe_add(service *sv, const rcmd *c) { pipe_add_tagged(sv, c, TAG_NONE, NULL); }

static job *job_find(service *sv, const char *id) {
    for (job *j = sv->jobs; j; j = j->next)
        if (!strcmp(j->id, id)) return j;
    return NULL;
}

static void job_free(job *j);

/* Stop running a job here without writing anything more, and without XACK:
 * another worker admitted it after us (or ended it), so its entry is theirs
 * now; or a chunk of ours was not written, and going on would leave a gap in
 * its seqs, so the entry, no longer refreshed, is claimed again after
 * --claim-idle-ms and the job resumed from what its stream holds. */
static void job_drop(service *sv, const char *id, const char *why) {
    for (job **pp = &sv->jobs; *pp; pp = &(*pp)->next) {
        job *j = *pp;
        if (strcmp(j->id, id)) continue;
        if (why) log_warn("job %s: a chunk was not written (%s): dropped here, to be resumed", id, why);
        else log_warn("job %s: taken over by another worker (attempt %lld of ours is superseded): dropped here", id,
                      j->attempt);
        *pp = j->next;
        sv->n_jobs--;
        if (!j->done) sched_finish(sv->sch, &j->s, FINISH_ERROR);
        job_free(j);
        return;
    }
}

/* Act on one reply of the pipeline. */
static void pipe_reply(service *sv, const pipe_tag *t, const redisReply *r) {
    if (!r) return;
    if (r->type == REDIS_REPLY_ERROR) {
        if (t->kind == TAG_CHUNK) job_drop(sv, t->id, r->str);
        else if (t->id[0]) log_warn("redis: %s (job %s)", r->str, t->id);
        else log_warn("redis: %s", r->str);
        return;
    }
    switch (t->kind) {
    case TAG_CHUNK:
        if (r->type == REDIS_REPLY_INTEGER && r->integer == JOBOPS_FENCED) job_drop(sv, t->id, NULL);
        break;
    case TAG_FINAL:
        if (r->type == REDIS_REPLY_INTEGER && r->integer == JOBOPS_FENCED)
            log_warn("job %s: not ended here: another worker took it over or ended it", t->id);
        break;
    case TAG_CANCEL_FLAG:
        if (r->type == REDIS_REPLY_STRING && !strcmp(r->str, "1")) {
            job *j = job_find(sv, t->id);
            if (j && !j->done) {
                log_info("job %s: cancelled", j->id);
                sched_finish(sv->sch, &j->s, FINISH_CANCELLED);
            }
        }
        break;
    default:
        break;
    }
}

/* Read every queued reply and act on it (pipe_reply).  Error replies are
 * logged; a later step retries what matters (claims are refreshed again);
 * a chunk that was not written drops its job here (job_drop). */
static llmq_status pipe_flush(service *sv, llmq_err *err) {
    for (int i = 0; i < sv->pipe_pending; i++) {
        redisReply *r = NULL;
        if (redisGetReply(sv->rc, (void **)&r) != REDIS_OK) {
            sv->pipe_pending = 0;
            return llmq_err_set(err, LLMQ_ERR_IO, "redis: %s", sv->rc->errstr);
        }
        pipe_reply(sv, &sv->tags[i], r);
        freeReplyObject(r);
    }
    sv->pipe_pending = 0;
    return LLMQ_OK;
}

/* One command, its reply (caller frees); NULL with err on failure. */
static redisReply *call(service *sv, const rcmd *c, llmq_err *err) {
    if (pipe_flush(sv, err)) return NULL;
    return rconn_call(sv->rc, c, err);
}

/* ------------------------------------------------------------ pieces */

static void pieces_deinit(piece_table *p) {
    tok_text_deinit(&p->text);
    free(p->off);
    free(p->len);
    memset(p, 0, sizeof *p);
}

static llmq_status pieces_build(piece_table *p, const tokenizer *tok, int n, llmq_err *err) {
    memset(p, 0, sizeof *p);
    p->off = malloc((size_t)n * sizeof *p->off);
    p->len = malloc((size_t)n * sizeof *p->len);
    llmq_status st = p->off && p->len ? LLMQ_OK : LLMQ_ERR_NOMEM;
    for (int id = 0; id < n && !st; id++) {
        size_t at = p->text.len;
        if ((st = tok_id_bytes(tok, id, &p->text))) break;
        if (p->text.len > UINT32_MAX) st = LLMQ_ERR_NOMEM;
        p->off[id] = (uint32_t)at;
        p->len[id] = (uint32_t)(p->text.len - at);
    }
    if (st) {
        pieces_deinit(p);
        return llmq_err_set(err, st, "token pieces for logprobs: out of memory");
    }
    p->n = n;
    return LLMQ_OK;
}

/* ------------------------------------------------------------ chunks */

/* Encode a chunk into sv->buf. */
static llmq_status encode_chunk(service *sv, const job *j, const char *text, size_t len, const char *finish,
                                const char *error, int error_status) {
    proto_chunk c;
    proto_chunk_init(&c);
    c.seq = j->next_seq;
    c.text = (char *)text;
    c.text_len = len;
    c.ids = j->step_ids;
    c.n_ids = (size_t)j->n_step_ids;
    if (j->want_lp) {
        c.has_lp = 1;
        c.lp = j->step_lp;
        for (int i = 0; i < j->n_step_ids; i++)
            j->step_lp[i].top = j->step_top ? j->step_top + (size_t)i * j->s.logprobs : NULL;
    }
    c.finish = (char *)finish;
    if (finish) {
        c.has_usage = 1;
        c.usage.prompt_tokens = j->s.n_prompt;
        c.usage.completion_tokens = j->s.tokens ? seq_n_generated(&j->s) : 0;
        c.error = (char *)error;
        if (error) c.error_status = error_status;
    }
    proto_buf_reset(&sv->buf);
    return proto_chunk_encode(&c, &sv->buf, NULL);
}

/* The chunk in sv->buf: appended and published, fenced on our admission. */
static void add_chunk_cmds(service *sv, const job *j) {
    rcmd c;
    jobops_keys kb;
    jobops_chunk(&c, &kb, &sv->keys, j->id, j->attempt, sv->buf.data, sv->buf.len);
    pipe_add_tagged(sv, &c, TAG_CHUNK, j->id);
}

static const char *state_for(const char *finish) {
    if (!strcmp(finish, "stop") || !strcmp(finish, "length")) return "done";
    if (!strcmp(finish, "cancelled")) return "cancelled";
    if (!strcmp(finish, "deadline")) return "expired";
    return "failed";
}

/* The end of a job in one script (jobops_finish): final chunk, job hash,
 * XACK of entry, TTLs, and with dead the dead-stream record; fenced on
 * j->attempt (0: an entry never admitted). */
static void add_final(service *sv, const job *j, const char *entry, const char *text, size_t len, const char *finish,
                      const char *error, int error_status, int dead) {
    if (encode_chunk(sv, j, text, len, finish, error, error_status)) {
        log_error("job %s: cannot encode its final chunk", j->id);
        return;
    }
    jobops_final f = {state_for(finish), finish, now_ms(), j->s.n_prompt, j->s.tokens ? seq_n_generated(&j->s) : 0,
                      error, dead};
    rcmd c;
    jobops_keys kb;
    jobops_finish(&c, &kb, &sv->keys, j->id, sv->o.model_name, entry, j->attempt, &f, sv->o.result_ttl_s,
                  sv->buf.data, sv->buf.len);
    pipe_add_tagged(sv, &c, TAG_FINAL, j->id);
    metric_inc(metric_get(sv->f_success, finish), 1);
}

static void add_final_cmds(service *sv, const job *j, const char *entry, const char *text, size_t len,
                           const char *finish, const char *error, int error_status) {
    add_final(sv, j, entry, text, len, finish, error, error_status, 0);
}

/* A job that fails before it runs.  attempt: our admission (0 when the
 * entry was never admitted).  status 400: the request was at fault (bad
 * type, too long, ...); 500: ours (attempts exhausted, ...).  dead: also
 * record it in the dead stream (poison entries, exhausted jobs). */
static void fail_early(service *sv, const char *id, const char *entry, long long attempt, const char *why, int status,
                       int dead) {
    log_warn("job %s failed: %s", id, why);
    if (keys_id_valid(id)) {
        job tmp;
        memset(&tmp, 0, sizeof tmp);
        snprintf(tmp.id, sizeof tmp.id, "%s", id);
        tmp.attempt = attempt;
        add_final(sv, &tmp, entry, "", 0, "error", why, status, dead);
        return;
    }
    /* no usable id: no job to end, only the entry to ack and record */
    rcmd c;
    if (entry) {
        rcmd_init(&c);
        rcmd_str(&c, "XACK");
        rcmd_str(&c, sv->req_key);
        rcmd_str(&c, PROTO_GROUP);
        rcmd_str(&c, entry);
        pipe_add(sv, &c);
    }
    if (dead) {
        rcmd_init(&c);
        rcmd_str(&c, "XADD");
        rcmd_str(&c, sv->dead_key);
        rcmd_str(&c, "*");
        rcmd_str(&c, "id");
        rcmd_str(&c, id);
        rcmd_str(&c, "entry");
        rcmd_str(&c, entry ? entry : "");
        rcmd_str(&c, "reason");
        rcmd_str(&c, why);
        pipe_add(sv, &c);
    }
}

/* ------------------------------------------------------------ callbacks */

/* The token ends the sequence (EOS or a stop id): its text is not output. */
static int ends_sequence(const service *sv, const job *j, int32_t tok) {
    if (!j->s.ignore_eos && model_config_is_eos(&sv->m->cfg, tok)) return 1;
    for (int i = 0; i < j->s.n_stop_ids; i++)
        if (j->s.stop_ids[i] == tok) return 1;
    return 0;
}

/* Pass j->delta (fresh detokenized text) through the stop strings: what is
 * final goes to j->pending.  At the end of the sequence, release the rest. */
static void job_text_feed(job *j, int at_end) {
    const char *d = j->delta.data ? j->delta.data : "";
    if (!j->has_sm) {
        tok_text_append(&j->pending, d, j->delta.len);
        return;
    }
    int hit = 0;
    stop_feed(&j->sm, d, j->delta.len, &j->pending, &hit);
    if (hit) j->stop_hit = 1;
    else if (at_end) stop_flush(&j->sm, &j->pending);
}

/* Text of one generated id (nothing for EOS and stop ids). */
static void job_text_push(service *sv, job *j, int32_t tok) {
    if (!j->has_ts || ends_sequence(sv, j, tok)) return;
    j->delta.len = 0;
    tok_stream_push(&j->ts, tok, &j->delta);
    job_text_feed(j, 0);
}

/* The sequence ended: release whatever the detokenizer and the stop
 * matcher still hold. */
static void job_text_finish(job *j) {
    if (!j->has_ts || j->stop_hit) return;
    j->delta.len = 0;
    tok_stream_finish(&j->ts, &j->delta);
    job_text_feed(j, 1);
}

/* Room for more ids in the step arrays (and their logprobs).  The arrays
 * are kept between steps, so they stop growing once a step's worth fits. */
static int step_grow(job *j) {
    const int cap = j->cap_step_ids ? 2 * j->cap_step_ids : 16;
    int32_t *ids = realloc(j->step_ids, (size_t)cap * sizeof *ids);
    if (!ids) return -1;
    j->step_ids = ids;
    if (j->want_lp) {
        proto_lp *lp = realloc(j->step_lp, (size_t)cap * sizeof *lp);
        if (!lp) return -1;
        j->step_lp = lp;
        if (j->s.logprobs > 0) {
            proto_token_lp *top = realloc(j->step_top, (size_t)cap * j->s.logprobs * sizeof *top);
            if (!top) return -1;
            j->step_top = top;
        }
    }
    j->cap_step_ids = cap; /* only once every array has it */
    return 0;
}

/* One token of `lp`: its logprob and its text piece (unknown without a tokenizer). */
static void lp_token_set(const service *sv, proto_token_lp *t, int32_t id, double logprob) {
    t->id = id;
    t->logprob = logprob;
    t->bytes = NULL;
    t->n_bytes = 0;
    if (id >= 0 && id < sv->pieces.n) {
        t->n_bytes = sv->pieces.len[id];
        t->bytes = t->n_bytes ? sv->pieces.text.data + sv->pieces.off[id] : "";
    }
}

static void on_token(seq *s, int32_t tok, void *ud) {
    service *sv = ud;
    job *j = s->user;
    int64_t t = now_ms();
    if (!j->first_token_ms) {
        j->first_token_ms = t;
        metric_observe(sv->m_ttft, (t - j->admitted_ms) / 1e3);
    } else {
        metric_observe(sv->m_itl, (t - j->last_token_ms) / 1e3);
    }
    j->last_token_ms = t;
    metric_inc(sv->m_gen_tok, 1);
    if (j->n_step_ids == j->cap_step_ids && step_grow(j))
        return; /* the chunk loses an id; the token itself is in s->tokens */
    if (j->want_lp) {
        const sampler_logprobs *lp = &s->lp;
        proto_lp *e = &j->step_lp[j->n_step_ids];
        proto_token_lp *top = j->step_top ? j->step_top + (size_t)j->n_step_ids * s->logprobs : NULL;
        lp_token_set(sv, &e->tok, tok, lp->logprob);
        e->n_top = (size_t)lp->n_top;
        for (int k = 0; k < lp->n_top; k++) lp_token_set(sv, &top[k], lp->top_ids[k], lp->top_logprobs[k]);
    }
    j->step_ids[j->n_step_ids++] = tok;
    job_text_push(sv, j, tok);
}

static void on_finish(seq *s, void *ud) {
    (void)ud;
    job *j = s->user;
    j->done = 1;
}

/* ------------------------------------------------------------ admission */

static void job_free(job *j) {
    if (!j) return;
    proto_request_deinit(&j->req);
    seq_deinit(&j->s);
    if (j->has_ts) tok_stream_deinit(&j->ts);
    if (j->has_sm) stop_deinit(&j->sm);
    tok_text_deinit(&j->delta);
    tok_text_deinit(&j->pending);
    free(j->step_ids);
    free(j->step_lp);
    free(j->step_top);
    free(j);
}

static const char *field(const redisReply *fields, const char *name, size_t *len) {
    if (!fields || fields->type != REDIS_REPLY_ARRAY) return NULL;
    for (size_t i = 0; i + 1 < fields->elements; i += 2)
        if (fields->element[i]->type == REDIS_REPLY_STRING && !strcmp(fields->element[i]->str, name)) {
            if (len) *len = fields->element[i + 1]->len;
            return fields->element[i + 1]->str;
        }
    return NULL;
}

/* Read the job's output stream: previously generated ids, published text
 * bytes, next seq.  Returns 1 when a final chunk is already there. */
static int read_previous(service *sv, job *j, int32_t **ids, int *n_ids, size_t *text_bytes, llmq_err *err) {
    char out[KEYS_MAX];
    keys_job_out(&sv->keys, j->id, out, sizeof out);
    rcmd c;
    rcmd_init(&c);
    rcmd_str(&c, "XRANGE");
    rcmd_str(&c, out);
    rcmd_str(&c, "-");
    rcmd_str(&c, "+");
    redisReply *r = call(sv, &c, err);
    if (!r) return -1;
    int final = 0, cap = 0;
    *n_ids = 0;
    *text_bytes = 0;
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        size_t len = 0;
        const char *p = field(r->element[i]->element[1], PROTO_FIELD_CHUNK, &len);
        proto_chunk ch;
        proto_chunk_init(&ch);
        if (!p || proto_chunk_decode(&ch, p, len, NULL)) continue;
        if (ch.seq + 1 > j->next_seq) j->next_seq = ch.seq + 1;
        *text_bytes += ch.text_len;
        if (ch.finish) final = 1;
        for (size_t k = 0; k < ch.n_ids; k++) {
            if (*n_ids == cap) {
                cap = cap ? 2 * cap : 64;
                int32_t *g = realloc(*ids, (size_t)cap * sizeof *g);
                if (!g) break;
                *ids = g;
            }
            (*ids)[(*n_ids)++] = ch.ids[k];
        }
        proto_chunk_deinit(&ch);
    }
    freeReplyObject(r);
    return final;
}

/* Turn the request into prompt ids.  Returns a message on failure. */
static const char *build_prompt(service *sv, job *j, int32_t **ids, size_t *n, char *msg, size_t cap) {
    const proto_request *r = &j->req;
    const int V = sv->m->cfg.vocab_size;
    if (r->kind == PROTO_PROMPT_IDS) {
        *ids = malloc((r->n_prompt_ids ? r->n_prompt_ids : 1) * sizeof **ids);
        if (!*ids) return "out of memory";
        for (size_t i = 0; i < r->n_prompt_ids; i++) {
            if (r->prompt_ids[i] >= V) {
                snprintf(msg, cap, "prompt_ids[%zu] = %d is outside the vocabulary (%d)", i, r->prompt_ids[i], V);
                return msg;
            }
            (*ids)[i] = r->prompt_ids[i];
        }
        *n = r->n_prompt_ids;
        return NULL;
    }
    if (!sv->tok) return "this model has no tokenizer.json: send prompt_ids";
    llmq_err e = {0};
    if (r->kind == PROTO_PROMPT_MESSAGES) {
        if (!sv->has_ct) return sv->ct_error;
        chat_msg *msgs = calloc(r->n_messages ? r->n_messages : 1, sizeof *msgs);
        if (!msgs) return "out of memory";
        for (size_t i = 0; i < r->n_messages; i++) msgs[i] = (chat_msg){r->messages[i].role, r->messages[i].content};
        char *text = NULL;
        size_t len = 0;
        llmq_status st = chat_render(&sv->ct, msgs, r->n_messages, 1, &text, &len, &e);
        free(msgs);
        if (!st) st = tok_encode(sv->tok, text, len, 0, ids, n, &e); /* the template holds BOS */
        free(text);
        if (st) {
            snprintf(msg, cap, "chat messages: %s", e.msg);
            return msg;
        }
        return NULL;
    }
    if (tok_encode(sv->tok, r->prompt, strlen(r->prompt), 1, ids, n, &e)) {
        snprintf(msg, cap, "cannot tokenize the prompt: %s", e.msg);
        return msg;
    }
    return NULL;
}

/* Admit one stream entry (new or claimed). */
static void admit_entry(service *sv, const redisReply *entry) {
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements < 2 || entry->element[0]->type != REDIS_REPLY_STRING)
        return;
    const char *eid = entry->element[0]->str;
    const redisReply *fields = entry->element[1];
    size_t plen = 0;
    const char *id = field(fields, PROTO_FIELD_ID, NULL);
    const char *payload = field(fields, PROTO_FIELD_REQ, &plen);
    char msg[LLMQ_ERRSTR_LEN + 64];
    if (!id || !keys_id_valid(id)) {
        fail_early(sv, id ? id : "", eid, 0, "stream entry without a valid job id", 400, 1);
        return;
    }
    for (const job *a = sv->jobs; a; a = a->next)
        if (!strcmp(a->entry, eid)) return; /* ours already (a late claim refresh): keep running it once */
    job *j = calloc(1, sizeof *j);
    if (!j) return;
    snprintf(j->id, sizeof j->id, "%s", id);
    snprintf(j->entry, sizeof j->entry, "%s", eid);
    proto_request_init(&j->req);
    llmq_err e = {0};
    if (!payload || proto_request_decode(&j->req, payload, plen, &e)) {
        snprintf(msg, sizeof msg, "cannot decode the request: %s", payload ? e.msg : "no 'p' field");
        fail_early(sv, id, eid, 0, msg, 400, 1);
        job_free(j);
        return;
    }
    if (proto_request_validate(&j->req, &e)) {
        fail_early(sv, id, eid, 0, e.msg, 400, 0);
        job_free(j);
        return;
    }
    if (j->req.model && strcmp(j->req.model, sv->o.model_name)) {
        snprintf(msg, sizeof msg, "request for model '%s' reached the worker of '%s'", j->req.model,
                 sv->o.model_name);
        fail_early(sv, id, eid, 0, msg, 400, 0);
        job_free(j);
        return;
    }
    /* admit: state running, attempts + 1, the job's seed */
    uint64_t seed = j->req.has_seed ? j->req.seed : ((uint64_t)now_ms() * 0x9e3779b97f4a7c15ull) ^ (uint64_t)rand();
    rcmd c;
    jobops_keys kb;
    jobops_admit(&c, &kb, &sv->keys, id, sv->o.model_name, sv->o.consumer, now_ms(), seed);
    redisReply *r = call(sv, &c, &e);
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 3) {
        log_error("job %s: admit failed: %s", id, r ? "unexpected reply" : e.msg);
        freeReplyObject(r);
        job_free(j);
        return; /* left pending: retried after claim_idle_ms */
    }
    long long code = r->element[0]->integer, attempts = r->element[1]->integer;
    const redisReply *rs = r->element[2];
    if (rs->type == REDIS_REPLY_STRING) seed = strtoull(rs->str, NULL, 10);
    else if (rs->type == REDIS_REPLY_INTEGER) seed = (uint64_t)rs->integer;
    freeReplyObject(r);
    j->attempt = attempts; /* from here on our writes are fenced on it (jobops.h) */
    if (code == 0) { /* already final */
        rcmd_init(&c);
        rcmd_str(&c, "XACK");
        rcmd_str(&c, sv->req_key);
        rcmd_str(&c, PROTO_GROUP);
        rcmd_str(&c, eid);
        pipe_add(sv, &c);
        job_free(j);
        return;
    }
    int32_t *prev = NULL;
    int n_prev = 0;
    size_t published = 0;
    int final = read_previous(sv, j, &prev, &n_prev, &published, &e);
    if (final != 0) {
        if (final < 0) log_error("job %s: cannot read its output: %s", id, e.msg);
        else { /* a final chunk exists: only the ack was lost */
            rcmd_init(&c);
            rcmd_str(&c, "XACK");
            rcmd_str(&c, sv->req_key);
            rcmd_str(&c, PROTO_GROUP);
            rcmd_str(&c, eid);
            pipe_add(sv, &c);
        }
        free(prev);
        job_free(j);
        return;
    }
    if (code == 2) {
        add_final_cmds(sv, j, eid, "", 0, "cancelled", NULL, 0);
        free(prev);
        job_free(j);
        return;
    }
    /* Past its deadline before it (re)starts.  Checked after the admission,
     * whose attempt fences out a worker that may still hold the job. */
    if (j->req.deadline_ms > 0 && now_ms() > j->req.deadline_ms) {
        add_final_cmds(sv, j, eid, "", 0, "deadline", NULL, 0);
        free(prev);
        job_free(j);
        return;
    }
    if (attempts > sv->o.max_attempts) {
        snprintf(msg, sizeof msg, "delivered %lld times (max %d): giving up", attempts, sv->o.max_attempts);
        fail_early(sv, id, eid, attempts, msg, 500, 1);
        free(prev);
        job_free(j);
        return;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    const char *why = build_prompt(sv, j, &ids, &n, msg, sizeof msg);
    const int ctx = sv->m->cfg.max_position_embeddings;
    if (!why && n == 0) why = "the prompt is empty";
    if (!why && (int)n >= ctx) {
        snprintf(msg, sizeof msg, "the prompt has %zu tokens; the model's context is %d", n, ctx);
        why = msg;
    }
    int max_new = ctx - (int)n;
    if (!why && j->req.max_tokens != PROTO_UNSET && j->req.max_tokens < max_new) max_new = j->req.max_tokens;
    sampling_params sp;
    sampling_params_default(&sp);
    const proto_request *q = &j->req;
    if (!isnan(q->temperature)) sp.temperature = (float)q->temperature;
    if (!isnan(q->top_p)) sp.top_p = (float)q->top_p;
    if (q->top_k != PROTO_UNSET) sp.top_k = q->top_k;
    if (!isnan(q->min_p)) sp.min_p = (float)q->min_p;
    if (!isnan(q->repetition_penalty)) sp.repetition_penalty = (float)q->repetition_penalty;
    if (!isnan(q->presence_penalty)) sp.presence_penalty = (float)q->presence_penalty;
    if (!isnan(q->frequency_penalty)) sp.frequency_penalty = (float)q->frequency_penalty;
    sp.seed = seed;
    if (!why && seq_init(&j->s, ids, (int)n, max_new, &sp)) why = "out of memory";
    free(ids);
    if (!why) {
        j->s.user = j;
        j->s.ignore_eos = q->ignore_eos;
        if (q->logprobs != PROTO_UNSET) { /* validated: 0..PROTO_MAX_LOGPROBS (= SAMPLER_MAX_LOGPROBS) */
            j->s.logprobs = q->logprobs;
            j->want_lp = 1;
        }
        for (size_t k = 0; k < q->n_stop_token_ids && k < SEQ_MAX_STOP_IDS; k++)
            j->s.stop_ids[j->s.n_stop_ids++] = q->stop_token_ids[k];
        if (sv->tok) {
            if (tok_stream_init(&j->ts, sv->tok, j->s.tokens, (size_t)j->s.n_prompt, 1)) why = "out of memory";
            else j->has_ts = 1;
        }
        if (!why && q->n_stop > 0) {
            if (stop_init(&j->sm, (const char *const *)q->stop, q->n_stop)) why = "out of memory";
            else j->has_sm = 1;
        }
    }
    /* resume: replay the previous ids through the detokenizer and the stop
     * holdback, then drop the bytes that were already published */
    for (int k = 0; !why && k < n_prev && j->s.n_tokens < j->s.cap - 1; k++) {
        j->s.tokens[j->s.n_tokens++] = prev[k];
        job_text_push(sv, j, prev[k]);
    }
    free(prev);
    if (!why && n_prev > 0) {
        j->skip = published;
        log_info("job %s: resuming after %d tokens (attempt %lld, next seq %" PRId64 ")", id, n_prev, attempts,
                 j->next_seq);
    }
    if (!why && seq_n_generated(&j->s) >= j->s.max_tokens) why = "nothing left to generate";
    if (!why && sched_add(sv->sch, &j->s, &e)) {
        snprintf(msg, sizeof msg, "%s", e.msg);
        why = msg;
    }
    if (why) {
        fail_early(sv, id, eid, attempts, why, 400, 0);
        job_free(j);
        return;
    }
    j->admitted_ms = now_ms();
    metric_inc(sv->m_prompt_tok, j->s.n_prompt);
    metric_observe(sv->m_queue, (j->admitted_ms - strtoll(eid, NULL, 10)) / 1e3); /* entry ids start with ms */
    j->next = sv->jobs;
    sv->jobs = j;
    sv->n_jobs++;
}

/* Admit the entries of an XREADGROUP / XAUTOCLAIM entry list. */
static void admit_entries(service *sv, const redisReply *list) {
    for (size_t i = 0; list && list->type == REDIS_REPLY_ARRAY && i < list->elements; i++) {
        const redisReply *e = list->element[i];
        if (e->type == REDIS_REPLY_ARRAY && e->elements >= 2 && e->element[1]->type == REDIS_REPLY_NIL) {
            /* claimed an entry that was deleted: nothing to run */
            rcmd c;
            rcmd_init(&c);
            rcmd_str(&c, "XACK");
            rcmd_str(&c, sv->req_key);
            rcmd_str(&c, PROTO_GROUP);
            rcmd_str(&c, e->element[0]->str);
            pipe_add(sv, &c);
            continue;
        }
        admit_entry(sv, e);
    }
}

static int capacity(service *sv) {
    int free_slots = sv->o.max_num_seqs - sched_n_running(sv->sch) - sched_n_waiting(sv->sch);
    int by_blocks = sched_free_blocks(sv->sch) / 2; /* a new job needs at least its first blocks */
    int c = free_slots < by_blocks ? free_slots : by_blocks;
    return c > 0 ? c : 0;
}

static llmq_status pull(service *sv, int block, llmq_err *err) {
    int n = capacity(sv);
    if (n <= 0) return LLMQ_OK;
    if (sv->reclaim_own) { /* entries we held before Redis went away: ours again, resumed */
        rcmd c;
        rcmd_init(&c);
        rcmd_str(&c, "XREADGROUP");
        rcmd_str(&c, "GROUP");
        rcmd_str(&c, PROTO_GROUP);
        rcmd_str(&c, sv->o.consumer);
        rcmd_str(&c, "STREAMS"); /* all of them at once: the scheduler queues what it cannot run yet */
        rcmd_str(&c, sv->req_key);
        rcmd_str(&c, "0");
        redisReply *r = call(sv, &c, err);
        if (!r) return err->code;
        if (r->type == REDIS_REPLY_ARRAY && r->elements > 0 && r->element[0]->elements >= 2) {
            size_t k = r->element[0]->element[1]->elements;
            if (k) log_info("resuming %zu jobs this worker held before the reconnect", k);
            admit_entries(sv, r->element[0]->element[1]);
        }
        sv->reclaim_own = 0;
        freeReplyObject(r);
        return LLMQ_OK;
    }
    int64_t t = now_ms();
    if (t - sv->last_autoclaim_ms >= sv->o.claim_idle_ms / 2) {
        sv->last_autoclaim_ms = t;
        rcmd c;
        rcmd_init(&c);
        rcmd_str(&c, "XAUTOCLAIM");
        rcmd_str(&c, sv->req_key);
        rcmd_str(&c, PROTO_GROUP);
        rcmd_str(&c, sv->o.consumer);
        rcmd_fmt(&c, "%d", sv->o.claim_idle_ms);
        rcmd_str(&c, "0-0");
        rcmd_str(&c, "COUNT");
        rcmd_fmt(&c, "%d", n);
        redisReply *r = call(sv, &c, err);
        if (!r) return err->code;
        if (r->type == REDIS_REPLY_ARRAY && r->elements >= 2 && r->element[1]->elements > 0) {
            log_info("claimed %zu entries idle for more than %d ms", r->element[1]->elements, sv->o.claim_idle_ms);
            admit_entries(sv, r->element[1]);
        }
        freeReplyObject(r);
        n = capacity(sv);
        if (n <= 0) return LLMQ_OK;
    }
    rcmd c;
    rcmd_init(&c);
    rcmd_str(&c, "XREADGROUP");
    rcmd_str(&c, "GROUP");
    rcmd_str(&c, PROTO_GROUP);
    rcmd_str(&c, sv->o.consumer);
    rcmd_str(&c, "COUNT");
    rcmd_fmt(&c, "%d", n);
    if (block) {
        rcmd_str(&c, "BLOCK");
        rcmd_fmt(&c, "%d", sv->o.block_ms);
    }
    rcmd_str(&c, "STREAMS");
    rcmd_str(&c, sv->req_key);
    rcmd_str(&c, ">");
    redisReply *r = call(sv, &c, err);
    if (!r) {
        if (strstr(err->msg, "NOGROUP")) { /* the group was deleted under us: make it again */
            jobops_keys kb;
            jobops_group_create(&c, &kb, &sv->keys, sv->o.model_name);
            freeReplyObject(call(sv, &c, err));
            return LLMQ_OK;
        }
        return err->code;
    }
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 0 && r->element[0]->elements >= 2)
        admit_entries(sv, r->element[0]->element[1]);
    freeReplyObject(r);
    return LLMQ_OK;
}

/* ------------------------------------------------------------ cancel, deadlines, claims */

static void cancel_id(service *sv, const char *id, size_t len) {
    for (job *j = sv->jobs; j; j = j->next)
        if (strlen(j->id) == len && !memcmp(j->id, id, len) && !j->done) {
            log_info("job %s: cancelled", j->id);
            sched_finish(sv->sch, &j->s, FINISH_CANCELLED);
        }
}

/* Drain the subscriber connection without blocking. */
static void read_cancels(service *sv) {
    if (!sv->sub) return;
    struct pollfd p = {sv->sub->fd, POLLIN, 0};
    while (poll(&p, 1, 0) > 0 && (p.revents & POLLIN)) {
        if (redisBufferRead(sv->sub) != REDIS_OK) {
            log_warn("cancel subscriber lost: %s (cancels still arrive through the job hash)", sv->sub->errstr);
            redisFree(sv->sub);
            sv->sub = NULL;
            return;
        }
        void *reply;
        while (redisGetReplyFromReader(sv->sub, &reply) == REDIS_OK && reply) {
            redisReply *r = reply;
            if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 && r->element[2]->type == REDIS_REPLY_STRING)
                cancel_id(sv, r->element[2]->str, r->element[2]->len);
            freeReplyObject(r);
        }
    }
}

/* Every claim_idle/3: reset the idle time of our in-flight entries (so no
 * one claims them while we run them) and re-read cancel flags (the durable
 * truth, in case a PUBLISH was missed).  XCLAIM with min-idle 0 takes an
 * entry back even from a worker that claimed it while we stalled; that is
 * harmless, because that worker's admission already fenced our writes: the
 * next chunk we try is refused and the job dropped here (pipe_reply). */
static llmq_status refresh(service *sv, llmq_err *err) {
    int64_t t = now_ms();
    if (!sv->jobs || t - sv->last_refresh_ms < sv->o.claim_idle_ms / 3) return LLMQ_OK;
    sv->last_refresh_ms = t;
    rcmd c;
    for (job *j = sv->jobs; j;) {
        rcmd_init(&c);
        rcmd_str(&c, "XCLAIM");
        rcmd_str(&c, sv->req_key);
        rcmd_str(&c, PROTO_GROUP);
        rcmd_str(&c, sv->o.consumer);
        rcmd_str(&c, "0");
        int k = 0;
        for (; j && k < RCMD_MAX_ARGS - 7; j = j->next, k++) rcmd_str(&c, j->entry);
        rcmd_str(&c, "JUSTID");
        pipe_add(sv, &c);
    }
    for (job *j = sv->jobs; j; j = j->next) {
        char key[KEYS_MAX];
        keys_job(&sv->keys, j->id, key, sizeof key);
        rcmd_init(&c);
        rcmd_str(&c, "HGET");
        rcmd_str(&c, key);
        rcmd_str(&c, "cancel");
        pipe_add_tagged(sv, &c, TAG_CANCEL_FLAG, j->id);
    }
    return pipe_flush(sv, err);
}

static void check_deadlines(service *sv) {
    int64_t t = now_ms();
    for (job *j = sv->jobs; j; j = j->next)
        if (!j->done && j->req.deadline_ms > 0 && t > j->req.deadline_ms) sched_finish(sv->sch, &j->s, FINISH_DEADLINE);
}

/* ------------------------------------------------------------ publishing */

/* After a step: one chunk per job that produced ids; the final MULTI for
 * each finished job (which is then freed).  j->pending holds exactly the
 * text that is final; a resumed job first drops the bytes an earlier
 * attempt already published. */
static void publish(service *sv) {
    job **pp = &sv->jobs;
    while (*pp) {
        job *j = *pp;
        if (!j->done && j->n_step_ids == 0) {
            pp = &j->next;
            continue;
        }
        if (j->stop_hit && !j->done) sched_finish(sv->sch, &j->s, FINISH_STOP); /* sets done */
        if (j->done) job_text_finish(j);
        const size_t skip = j->skip < j->pending.len ? j->skip : j->pending.len;
        j->skip -= skip;
        const char *text = (j->pending.data ? j->pending.data : "") + skip;
        const size_t len = j->pending.len - skip;
        if (j->done) {
            const char *fin = j->stop_hit ? "stop" : finish_reason_name(j->s.finish);
            add_final_cmds(sv, j, j->entry, text, len, fin, NULL, 0);
            *pp = j->next;
            sv->n_jobs--;
            job_free(j);
            continue;
        }
        if (!encode_chunk(sv, j, text, len, NULL, NULL, 0)) {
            add_chunk_cmds(sv, j);
            j->next_seq++;
        }
        j->n_step_ids = 0;
        j->pending.len = 0;
        pp = &j->next;
    }
}

/* ------------------------------------------------------------ metrics + heartbeat */

static void serve_metrics(service *sv) {
    if (sv->listen_fd < 0) return;
    for (;;) {
        int fd = accept4(sv->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) return;
        char req[1024];
        struct pollfd p = {fd, POLLIN, 0};
        ssize_t n = poll(&p, 1, 100) > 0 ? read(fd, req, sizeof req - 1) : 0;
        req[n > 0 ? n : 0] = '\0';
        char head[256];
        const char *body = "ok\n";
        char *text = NULL;
        size_t blen = 3;
        int code = 200;
        if (!strncmp(req, "GET /metrics", 12)) {
            metric_set(sv->m_running, sched_n_running(sv->sch));
            metric_set(sv->m_waiting, sched_n_waiting(sv->sch));
            metric_set(sv->m_kv_free, sched_free_blocks(sv->sch));
            metric_set(sv->m_kv_used, sched_total_blocks(sv->sch) - sched_free_blocks(sv->sch));
            text = metrics_render(sv->mx, &blen);
            body = text ? text : "";
        } else if (!strncmp(req, "GET /readyz", 11) || !strncmp(req, "GET /healthz", 12)) {
            if (!sv->rc || sv->rc->err) {
                code = 503;
                body = "redis unreachable\n";
                blen = strlen(body);
            }
        } else {
            code = 404;
            body = "not found\n";
            blen = strlen(body);
        }
        int hl = snprintf(head, sizeof head,
                          "HTTP/1.1 %d %s\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: %zu\r\n"
                          "Connection: close\r\n\r\n",
                          code, code == 200 ? "OK" : code == 404 ? "Not Found" : "Service Unavailable", blen);
        if (write(fd, head, (size_t)hl) == hl && blen) {
            ssize_t w = write(fd, body, blen);
            (void)w;
        }
        free(text);
        close(fd);
    }
}

static void heartbeat(service *sv) {
    int64_t t = now_ms();
    if (t - sv->last_heartbeat_ms < 2000) return;
    sv->last_heartbeat_ms = t;
    char v[512];
    snprintf(v, sizeof v,
             "{\"model\":\"%s\",\"consumer\":\"%s\",\"capacity\":%d,\"running\":%d,\"waiting\":%d,"
             "\"kv_free\":%d,\"kv_total\":%d,\"ts\":%" PRId64 "}",
             sv->o.model_name, sv->o.consumer, sv->o.max_num_seqs, sched_n_running(sv->sch),
             sched_n_waiting(sv->sch), sched_free_blocks(sv->sch), sched_total_blocks(sv->sch), t);
    rcmd c;
    rcmd_init(&c);
    rcmd_str(&c, "HSET");
    rcmd_str(&c, sv->workers_key);
    rcmd_str(&c, sv->o.consumer);
    rcmd_str(&c, v);
    pipe_add(sv, &c);
}

static void metrics_init(service *sv) {
    static const double lat[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
    static const double sizes[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048};
    metrics *m = sv->mx = metrics_create();
    if (!m) return;
    sv->m_running = metric_get(metrics_gauge(m, "llmq:num_requests_running", "Sequences in the running batch", NULL));
    sv->m_waiting = metric_get(metrics_gauge(m, "llmq:num_requests_waiting", "Sequences admitted, waiting for KV blocks", NULL));
    sv->m_kv_used = metric_get(metrics_gauge(m, "llmq:kv_blocks_used", "KV cache blocks in use", NULL));
    sv->m_kv_free = metric_get(metrics_gauge(m, "llmq:kv_blocks_free", "KV cache blocks free", NULL));
    sv->m_prompt_tok = metric_get(metrics_counter(m, "llmq:prompt_tokens_total", "Prompt tokens admitted", NULL));
    sv->m_gen_tok = metric_get(metrics_counter(m, "llmq:generation_tokens_total", "Tokens generated", NULL));
    sv->m_preempt = metric_get(metrics_counter(m, "llmq:num_preemptions_total", "Sequences preempted", NULL));
    sv->f_success = metrics_counter(m, "llmq:request_success_total", "Finished jobs by finish reason", "finished_reason");
    sv->m_step = metric_get(metrics_histogram(m, "llmq:step_seconds", "Time of one engine step", NULL, lat, 14));
    sv->m_batch = metric_get(metrics_histogram(m, "llmq:batch_size", "Sequences per step", NULL, sizes, 12));
    sv->m_ttft = metric_get(metrics_histogram(m, "llmq:time_to_first_token_seconds", "Admission to first token", NULL, lat, 14));
    sv->m_itl = metric_get(metrics_histogram(m, "llmq:inter_token_latency_seconds", "Time between tokens", NULL, lat, 14));
    sv->m_queue = metric_get(metrics_histogram(m, "llmq:request_queue_time_seconds", "Submission to admission", NULL, lat, 14));
}

static int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 16)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* ------------------------------------------------------------ setup + loop */

static llmq_status connect_all(service *sv, llmq_err *err) {
    sv->rc = rconn_connect(&sv->url, 5000, err);
    if (!sv->rc) return err->code;
    sv->sub = rconn_connect(&sv->url, 5000, err);
    if (!sv->sub) return err->code;
    redisReply *r = redisCommand(sv->sub, "SUBSCRIBE %s", sv->cancel_chan);
    if (!r) return llmq_err_set(err, LLMQ_ERR_IO, "redis: SUBSCRIBE failed: %s", sv->sub->errstr);
    freeReplyObject(r);
    rcmd c;
    jobops_keys kb;
    jobops_group_create(&c, &kb, &sv->keys, sv->o.model_name);
    llmq_err e2 = {0};
    redisReply *g = rconn_call(sv->rc, &c, &e2);
    if (!g && !strstr(e2.msg, "BUSYGROUP")) return llmq_err_set(err, LLMQ_ERR_REDIS, "%s", e2.msg);
    freeReplyObject(g);
    return LLMQ_OK;
}

static void disconnect(service *sv) {
    if (sv->rc) redisFree(sv->rc);
    if (sv->sub) redisFree(sv->sub);
    sv->rc = sv->sub = NULL;
    sv->pipe_pending = 0;
}

/* Redis went away: whatever was not written is lost, so drop every job
 * (their entries stay pending) and, once reconnected, take our pending
 * entries back and resume them from their output streams — the same path
 * as a claim after a crash, so outputs stay exact and seq has no gap. */
static llmq_status reconnect(service *sv, volatile sig_atomic_t *stop, llmq_err *err) {
    log_warn("redis connection lost (%s): dropping %d in-flight jobs to resume them after reconnecting", err->msg,
             sv->n_jobs);
    while (sv->jobs) {
        job *j = sv->jobs;
        sv->jobs = j->next;
        if (!j->done) sched_finish(sv->sch, &j->s, FINISH_ERROR);
        job_free(j);
    }
    sv->n_jobs = 0;
    disconnect(sv);
    int delay = 100;
    for (;;) {
        if (*stop) return LLMQ_OK; /* nothing left to drain: the loop exits */
        llmq_err e = {0};
        if (connect_all(sv, &e) == LLMQ_OK) {
            log_info("redis: reconnected");
            sv->reclaim_own = 1;
            llmq_err_clear(err);
            return LLMQ_OK;
        }
        disconnect(sv);
        log_warn("redis: %s; retrying in %d ms", e.msg, delay);
        for (int waited = 0; waited < delay && !*stop; waited += 50) {
            serve_metrics(sv); /* /readyz answers 503 meanwhile */
            usleep(50000);
        }
        delay = delay * 2 > 5000 ? 5000 : delay * 2;
    }
}

static void service_free(service *sv) {
    while (sv->jobs) {
        job *j = sv->jobs;
        sv->jobs = j->next;
        job_free(j);
    }
    if (sv->has_ct) chat_template_deinit(&sv->ct);
    pieces_deinit(&sv->pieces);
    runtime_destroy(sv->rt);
    disconnect(sv);
    if (sv->listen_fd >= 0) close(sv->listen_fd);
    metrics_destroy(sv->mx);
    proto_buf_deinit(&sv->buf);
    free(sv->tags);
}

llmq_status service_run(const service_opts *o, volatile sig_atomic_t *stop, llmq_err *err) {
    service svs, *sv = &svs;
    memset(sv, 0, sizeof *sv);
    sv->o = *o;
    sv->listen_fd = -1;
    llmq_status st;
    if ((st = keys_init(&sv->keys, o->prefix, err)) || (st = redis_url_resolve(&sv->url, o->redis_url, err))) return st;
    if (!keys_model_valid(o->model_name))
        return llmq_err_set(err, LLMQ_ERR_INVALID, "invalid --model-name '%s'", o->model_name);
    keys_req_stream(&sv->keys, o->model_name, sv->req_key, sizeof sv->req_key);
    keys_dead_stream(&sv->keys, o->model_name, sv->dead_key, sizeof sv->dead_key);
    keys_workers(&sv->keys, sv->workers_key, sizeof sv->workers_key);
    keys_cancel_channel(&sv->keys, sv->cancel_chan, sizeof sv->cancel_chan);
    proto_buf_init(&sv->buf);
    metrics_init(sv);

    const int world = o->comm ? o->comm->world : 1;
    model_config cfg0;
    int blocks = o->kv_blocks;
    if (blocks <= 0 && o->mem_util <= 0) {
        if ((st = model_config_load(&cfg0, o->model_dir, err))) goto out;
        blocks = service_default_kv_blocks(&cfg0, o->max_num_seqs);
    }
    runtime_opts ro;
    memset(&ro, 0, sizeof ro);
    ro.backend = o->backend;
    ro.model_dir = o->model_dir;
    ro.comm = o->comm;
    ro.load = o->load;
    ro.eng = (eng_opts){blocks, o->max_batched_tokens, o->max_num_seqs, o->comm, o->mem_util, 0};
    ro.with_sched = 1;
    ro.sched = (sched_opts){o->max_num_seqs, o->max_batched_tokens};
    ro.cb = (sched_callbacks){on_token, on_finish, sv};
    ro.tok = RUNTIME_TOK_IF_PRESENT;
    if ((st = runtime_create(&sv->rt, &ro, err))) goto out;
    sv->be = sv->rt->be;
    sv->m = sv->rt->m;
    sv->eng = sv->rt->eng;
    sv->sch = sv->rt->sch;
    sv->tok = sv->rt->tok;
    if (sv->tok) {
        llmq_err ce = {0};
        if (chat_template_from_tokenizer(&sv->ct, sv->tok, o->chat_template, &ce) == LLMQ_OK) {
            sv->has_ct = 1;
            log_info("chat template: %s", chat_family_name(sv->ct.family));
        } else {
            snprintf(sv->ct_error, sizeof sv->ct_error, "%s", ce.msg);
            if (o->chat_template) {
                st = llmq_err_set(err, ce.code, "%s", ce.msg);
                goto out;
            }
            log_warn("chat requests will fail: %s", ce.msg);
        }
    } else {
        log_warn("%s has no tokenizer.json: only prompt_ids requests can run", o->model_dir);
        snprintf(sv->ct_error, sizeof sv->ct_error, "this model has no tokenizer.json: send prompt_ids");
    }
    const model_config *cfg = &sv->m->cfg;
    if (sv->tok && (st = pieces_build(&sv->pieces, sv->tok, cfg->vocab_size, err))) goto out;
    blocks = eng_n_blocks(sv->eng);
    log_info("model %s loaded from %s: %s, %d layers, %.1f MB of weights on rank 0 of %d; KV cache %d blocks "
             "(%.1f MiB)", o->model_name, o->model_dir, cfg->arch_name, cfg->n_layers, sv->m->weight_bytes / 1e6, world,
             blocks,
             (double)blocks * ENG_BLOCK_SIZE * eng_kv_bytes_per_token(cfg, sv->be->act_dt) / 1048576.0);
    if ((st = connect_all(sv, err))) goto out;
    if (o->metrics_port > 0 && (sv->listen_fd = listen_on(o->metrics_port)) < 0) {
        st = llmq_err_set(err, LLMQ_ERR_IO, "cannot listen on metrics port %d: %s", o->metrics_port, strerror(errno));
        goto out;
    }
    char where[300];
    log_info("serving %s on %s as consumer %s (stream %s)", o->model_name,
             redis_url_describe(&sv->url, where, sizeof where), o->consumer, sv->req_key);

    int64_t drain_deadline = 0;
    for (;;) {
        if (*stop && !drain_deadline) {
            drain_deadline = now_ms() + (int64_t)o->drain_timeout_s * 1000;
            log_info("SIGTERM: draining %d jobs (up to %d s); no new jobs", sv->n_jobs, o->drain_timeout_s);
        }
        if (drain_deadline && (!sv->jobs || now_ms() > drain_deadline)) {
            if (sv->jobs)
                log_warn("drain timeout: leaving %d jobs to be resumed by another worker", sv->n_jobs);
            break;
        }
        const int idle = sched_n_running(sv->sch) == 0 && sched_n_waiting(sv->sch) == 0;
        if ((!drain_deadline && (st = pull(sv, idle, err))) || (st = refresh(sv, err))) {
            if (st == LLMQ_ERR_REDIS) { /* an error reply (e.g. LOADING after a restart): try again */
                log_warn("%s", err->msg);
                st = LLMQ_OK;
                usleep(100000);
                continue;
            }
            if (st != LLMQ_ERR_IO) break;
            if ((st = reconnect(sv, stop, err))) break;
            continue;
        }
        if (drain_deadline && idle) usleep(10000);
        read_cancels(sv);
        check_deadlines(sv);
        int worked = 0;
        int64_t t0 = now_ms();
        int batch = sched_n_running(sv->sch);
        if ((st = sched_step(sv->sch, &worked, err))) break;
        if (worked) {
            metric_observe(sv->m_step, (now_ms() - t0) / 1e3);
            metric_observe(sv->m_batch, batch);
        }
        uint64_t pre = sched_n_preemptions(sv->sch);
        if (pre > sv->preempt_seen) metric_inc(sv->m_preempt, (double)(pre - sv->preempt_seen));
        sv->preempt_seen = pre;
        publish(sv);
        heartbeat(sv);
        if ((st = pipe_flush(sv, err))) {
            if (st != LLMQ_ERR_IO || (st = reconnect(sv, stop, err))) break;
        }
        serve_metrics(sv);
    }
    if (!st && sv->eng && eng_stop_peers(sv->eng, err)) st = err->code;
out:
    service_free(sv);
    return st;
}
