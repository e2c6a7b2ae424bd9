/*
 * publish.c — the pipeline to Redis: every command the loop sends without
 * waiting is queued here with a tag saying what its reply is about, and read
 * back in one flush per loop iteration (svc_pipe_flush), or as it arrives
 * (svc_pipe_poll).  Builds the chunks of running jobs (all of a step in one
 * script call, jobops_chunks), the final script of ended ones and the
 * failure of jobs that never ran.
 *
 * Coalescing (--chunk-interval-ms B > 0): a step's chunks go out at once
 * while Redis keeps up, i.e. when the previous step's chunk call was
 * answered by the end of this step, or within a step's time when the loop
 * had to wait for it (a pull reads every reply first); while it was not
 * (Redis is busy), the new ids wait in their job and go with the next
 * step's, so one chunk then carries several tokens, and Redis' cost per
 * token falls as its load rises.  A job's ids never wait longer than B ms; a job that ends (or must
 * be written for another reason) waits for nothing: the loop then reads the
 * answer it needs and writes every job's ids.
 *
 * Invariants
 *  - A job's chunks carry seq 0, 1, 2, ... with no gap and no repeat: a chunk
 *    that Redis refused (fenced, or an error reply) drops the job here
 *    without XACK rather than let a later chunk skip its seq.  Hence at most
 *    one chunk call is in flight: the next one is built only after this
 *    one's reply was read.
 *  - Nothing is written for a job after its final chunk: svc_publish frees
 *    a job in the same pass that queues its final script.
 *  - The per-step scripts (the chunk call, the lane read) go as EVALSHA
 *    once their SHA1 is known (rcmd.h "Script calls by SHA1"); a NOSCRIPT
 *    answer (Redis restarted, failed over, or its scripts were flushed)
 *    ran nothing, and the same call goes again as EVAL: a chunk call at the
 *    end of the pipeline, still the only one in flight, its reply read
 *    before any later chunk is built, so seqs and fencing are as above.
 */
#include "worker/service/service_internal.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/log.h"
#include "common/rconn.h"

/* ------------------------------------------------------------ the pipeline */

void svc_step_begins(service *sv) { sv->step_start_ms = now_ms(); }

static int pipe_add_argv(service *sv, int argc, const char **argv, const size_t *argvlen, int kind, const char *id,
                         job *admit) {
    if (sv->pipe_pending == sv->cap_tags) {
        int cap = sv->cap_tags ? 2 * sv->cap_tags : 64;
        pipe_tag *t = realloc(sv->tags, (size_t)cap * sizeof *t);
        if (!t) {
            log_error("out of memory: a Redis command was not sent");
            return -1;
        }
        sv->tags = t;
        sv->cap_tags = cap;
    }
    if (redisAppendCommandArgv(sv->rc, argc, argv, argvlen) != REDIS_OK) {
        log_error("out of memory: a Redis command was not sent");
        return -1;
    }
    pipe_tag *t = &sv->tags[sv->pipe_pending++];
    t->kind = kind;
    t->admit = admit;
    snprintf(t->id, sizeof t->id, "%s", id ? id : "");
    if (kind == TAG_CHUNKS) {
        sv->chunks_in_flight++;
        sv->chunks_sent_ms = now_ms();
    }
    return 0;
}

static int send_chunks(service *sv, const char *sha);

static int pipe_add(service *sv, const rcmd *c, int kind, const char *id, job *admit) {
    if (!rcmd_ok(c)) {
        log_error("internal: a Redis command overflowed its argument table");
        return -1;
    }
    return pipe_add_argv(sv, c->argc, (const char **)c->argv, c->argvlen, kind, id, admit);
}

int svc_pipe_add_tagged(service *sv, const rcmd *c, int kind, const char *id) {
    return pipe_add(sv, c, kind, id, NULL);
}

int svc_pipe_add(service *sv, const rcmd *c) { return pipe_add(sv, c, TAG_NONE, NULL, NULL); }

int svc_pipe_add_admit(service *sv, const rcmd *c, job *j) { return pipe_add(sv, c, TAG_ADMIT, j->id, j); }

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
        if (!j->done) sched_finish(sv->rt->sch, &j->s, FINISH_ERROR);
        svc_job_free(j);
        return;
    }
}

/* The reply to a step's chunk call (jobops_chunks): one element per job of
 * sv->chunks, 1 when written.  A job whose chunk was not written (fenced,
 * an error element, or an error or short reply for the whole call) is
 * dropped; the others go on. */
static void chunks_reply(service *sv, const redisReply *r) {
    const jobops_chunks *b = &sv->chunks;
    const int whole = r->type != REDIS_REPLY_ARRAY || r->elements != (size_t)b->n;
    if (whole) log_warn("redis: the chunk call failed (%s): its %d jobs are dropped here",
                        r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply", b->n);
    for (int i = 0; i < b->n; i++) {
        const redisReply *e = whole ? NULL : r->element[i];
        if (!e) job_drop(sv, jobops_chunks_id(b, i), r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        else if (e->type == REDIS_REPLY_ERROR) job_drop(sv, jobops_chunks_id(b, i), e->str);
        else if (e->type != REDIS_REPLY_INTEGER || e->integer != JOBOPS_WRITTEN) job_drop(sv, jobops_chunks_id(b, i), NULL);
    }
}

/* Act on one reply of the pipeline.  Returns 1 when it kept r (an admit
 * reply, handed to its job), 0 when the caller frees it. */
static int pipe_reply(service *sv, const pipe_tag *t, redisReply *r) {
    if (!r) return 0;
    if (t->kind == TAG_ADMIT) { /* admission.c reads it, errors included */
        t->admit->admit_reply = r;
        return 1;
    }
    if (t->kind == TAG_BACKLOG) { /* health.c reads it, errors included */
        svc_health_backlog_reply(sv, r);
        return 0;
    }
    if (t->kind == TAG_CHUNKS) { /* (t is not used past a send: the tags may move) */
        if (r->type == REDIS_REPLY_ERROR && rcmd_noscript(r->str)) {
            log_info("redis: the chunk script is not in Redis's cache (a restart, a failover or SCRIPT FLUSH): "
                     "the step's chunks go again as EVAL");
            send_chunks(sv, NULL);
        } else {
            chunks_reply(sv, r);
        }
        return 0;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        if (t->id[0]) log_warn("redis: %s (job %s)", r->str, t->id);
        else log_warn("redis: %s", r->str);
        return 0;
    }
    switch (t->kind) {
    case TAG_FINAL:
        if (r->type == REDIS_REPLY_INTEGER && r->integer == JOBOPS_FENCED)
            log_warn("job %s: not ended here: another worker took it over or ended it", t->id);
        break;
    case TAG_CANCEL_FLAG:
        if (r->type == REDIS_REPLY_STRING && !strcmp(r->str, "1")) {
            job *j = svc_job_find(sv, t->id);
            if (j && !j->done) {
                log_info("job %s: cancelled", j->id);
                sched_finish(sv->rt->sch, &j->s, FINISH_CANCELLED);
            }
        }
        break;
    default:
        break;
    }
    return 0;
}

/* The next reply is in: act on it.  waited: the loop had to wait for it.
 * A chunk call's reply that was waited for longer than a step takes tells
 * that Redis is behind (coalescing, see the top). */
static void pipe_took(service *sv, redisReply *r, int waited) {
    const pipe_tag *t = &sv->tags[sv->pipe_head++];
    if (t->kind == TAG_CHUNKS) {
        sv->chunks_in_flight--;
        sv->chunks_late = waited && now_ms() - sv->chunks_sent_ms > sv->last_step_ms;
    }
    if (!pipe_reply(sv, t, r)) freeReplyObject(r);
    if (sv->pipe_head == sv->pipe_pending) sv->pipe_head = sv->pipe_pending = 0;
}

static llmq_status pipe_lost(service *sv, llmq_err *err) {
    sv->pipe_head = sv->pipe_pending = 0;
    sv->chunks_in_flight = 0;
    return llmq_err_set(err, LLMQ_ERR_IO, "redis: %s", sv->rc->errstr);
}

/* Read every queued reply and act on it (pipe_reply).  Error replies are
 * logged; a later step retries what matters (claims are refreshed again);
 * a chunk that was not written drops its job here (job_drop). */
llmq_status svc_pipe_flush(service *sv, llmq_err *err) {
    llmq_status st = svc_pipe_poll(sv, err); /* first what is here: not waited for */
    while (!st && sv->pipe_head < sv->pipe_pending) {
        redisReply *r = NULL;
        if (redisGetReply(sv->rc, (void **)&r) != REDIS_OK) return pipe_lost(sv, err);
        pipe_took(sv, r, 1);
    }
    return st;
}

/* As svc_pipe_flush, but only the replies already here: never waits. */
llmq_status svc_pipe_poll(service *sv, llmq_err *err) {
    while (sv->pipe_head < sv->pipe_pending) {
        void *r = NULL;
        if (redisGetReplyFromReader(sv->rc, &r) != REDIS_OK) return pipe_lost(sv, err);
        if (r) {
            pipe_took(sv, r, 0);
            continue;
        }
        struct pollfd p = {sv->rc->fd, POLLIN, 0};
        if (poll(&p, 1, 0) <= 0 || !(p.revents & (POLLIN | POLLHUP | POLLERR))) return LLMQ_OK;
        if (redisBufferRead(sv->rc) != REDIS_OK) return pipe_lost(sv, err);
    }
    return LLMQ_OK;
}

llmq_status svc_pipe_send(service *sv, llmq_err *err) {
    int done = 0;
    while (!done)
        if (redisBufferWrite(sv->rc, &done) != REDIS_OK)
            return llmq_err_set(err, LLMQ_ERR_IO, "redis: %s", sv->rc->errstr);
    return LLMQ_OK;
}

/* The SHA1s of jobops' scripts, as Redis's SCRIPT LOAD returned them: one
 * table for the process, since a script's SHA1 is the same on any server. */
static rcmd_shas shas;

/* *sha = text's SHA1 (NULL: send EVAL), asked of Redis the first time.
 * Only with nothing in the pipeline.  Fails only when the connection does. */
static llmq_status script_sha(service *sv, const char *text, const char **sha, llmq_err *err) {
    int known;
    *sha = rcmd_shas_get(&shas, text, &known);
    if (known) return LLMQ_OK;
    rcmd c;
    rcmd_init(&c);
    rcmd_str(&c, "SCRIPT");
    rcmd_str(&c, "LOAD");
    rcmd_str(&c, text);
    llmq_err e = {0};
    redisReply *r = rconn_call(sv->rc, &c, &e);
    if (!r && e.code == LLMQ_ERR_IO) {
        *err = e;
        return e.code;
    }
    if (!r) log_warn("%s: scripts go as EVAL", e.msg); /* e.g. an ACL without SCRIPT */
    rcmd_shas_put(&shas, text, r && r->type == REDIS_REPLY_STRING ? r->str : NULL, r ? r->len : 0);
    freeReplyObject(r);
    *sha = rcmd_shas_get(&shas, text, &known);
    return LLMQ_OK;
}

/* One command, its reply (caller frees); NULL with err on failure.  A
 * script of jobops' goes as EVALSHA, and again as EVAL on NOSCRIPT. */
redisReply *svc_call(service *sv, const rcmd *c, llmq_err *err) {
    if (svc_pipe_flush(sv, err)) return NULL;
    if (!rcmd_is_eval(c) || !jobops_is_script(c->argv[1])) return rconn_call(sv->rc, c, err);
    const char *sha;
    /* the chunk script's too, while the pipeline is empty (a step's chunk
     * call is pipelined: it cannot wait for a SCRIPT LOAD) */
    if (script_sha(sv, jobops_chunks_script(), &sha, err) || script_sha(sv, c->argv[1], &sha, err)) return NULL;
    if (!sha) return rconn_call(sv->rc, c, err);
    rcmd e;
    rcmd_evalsha(&e, c, sha);
    redisReply *r = rconn_call(sv->rc, &e, err);
    if (r || !rcmd_noscript(err->msg)) return r;
    llmq_err_clear(err); /* Redis lost its scripts: EVAL loads this one again */
    return rconn_call(sv->rc, c, err);
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
        c.usage.cached_tokens = j->s.n_cached; /* this attempt's prefix-cache hit (sched.h) */
        c.error = (char *)error;
        if (error) c.error_status = error_status;
        if (error) c.code = (char *)j->error_code;
        c.max_model_len = j->max_model_len;
    }
    proto_buf_reset(&sv->buf);
    return proto_chunk_encode(&c, &sv->buf, NULL);
}

/* The chunk in sv->buf joins this step's chunk call, fenced on our admission. */
static int add_chunk(service *sv, const job *j) {
    return jobops_chunks_add(&sv->chunks, &sv->keys, j->id, j->attempt, sv->buf.data, sv->buf.len);
}

/* Queue the step's chunk call (when it has chunks): EVALSHA sha, or EVAL
 * when sha is NULL.  Returns -1 when it cannot be sent (out of memory,
 * logged): its jobs are then dropped, to be resumed, since their seqs went
 * on. */
static int send_chunks(service *sv, const char *sha) {
    if (!sv->chunks.n) return 0;
    const char **argv;
    const size_t *argvlen;
    const int argc = jobops_chunks_argv(&sv->chunks, sha, &argv, &argvlen);
    if (argc > 0 && !pipe_add_argv(sv, argc, argv, argvlen, TAG_CHUNKS, NULL, NULL)) return 0;
    if (argc < 0) log_error("out of memory: a step's chunks were not sent");
    for (int i = 0; i < sv->chunks.n; i++) job_drop(sv, jobops_chunks_id(&sv->chunks, i), "out of memory");
    jobops_chunks_reset(&sv->chunks);
    return -1;
}

static const char *state_for(const char *finish) {
    if (!strcmp(finish, "stop") || !strcmp(finish, "length")) return "done";
    if (!strcmp(finish, "cancelled")) return "cancelled";
    if (!strcmp(finish, "deadline")) return "expired";
    return "failed";
}

int svc_add_final(service *sv, const job *j, const char *entry, const char *text, size_t len, const char *finish,
                  const char *error, int error_status, int dead) {
    rcmd c;
    jobops_keys kb;
    if (encode_chunk(sv, j, text, len, finish, error, error_status)) {
        log_error("job %s: cannot encode its final chunk (out of memory): its entry stays pending, to be claimed "
                  "again", j->id);
        return -1;
    }
    jobops_final f = {state_for(finish), finish, now_ms(), j->s.n_prompt, j->s.tokens ? seq_n_generated(&j->s) : 0,
                      error, dead, j->s.n_cached};
    jobops_finish(&c, &kb, &sv->keys, j->id, sv->o.model_name, j->lane, entry, j->attempt, &f, sv->o.result_ttl_s,
                  sv->buf.data, sv->buf.len);
    if (svc_pipe_add_tagged(sv, &c, TAG_FINAL, j->id)) return -1;
    metric_inc(metric_get(sv->f_success, finish, sv->o.model_name), 1);
    sv->finals++;
    return 0;
}

void svc_fail_early(service *sv, const char *id, int lane, const char *entry, long long attempt, int64_t next_seq,
                    const char *why, int status, int dead) {
    log_warn("job %s failed: %s", id, why);
    if (keys_id_valid(id)) {
        job tmp;
        memset(&tmp, 0, sizeof tmp);
        snprintf(tmp.id, sizeof tmp.id, "%s", id);
        tmp.lane = lane;
        tmp.attempt = attempt;
        tmp.next_seq = next_seq;
        svc_add_final(sv, &tmp, entry, "", 0, "error", why, status, dead);
        return;
    }
    /* no usable id: no job to end, only the entry to ack and record */
    rcmd c;
    jobops_keys kb;
    if (entry) {
        jobops_ack(&c, &kb, &sv->keys, sv->o.model_name, lane, entry);
        svc_pipe_add(sv, &c);
    }
    if (dead) {
        jobops_dead(&c, &kb, &sv->keys, sv->o.model_name, id, entry, why);
        svc_pipe_add(sv, &c);
    }
}

/* ------------------------------------------------------------ publishing */

/* After a step: one chunk per job that produced ids, all in one call; the
 * final script for each finished job (which is then freed).  j->pending
 * holds exactly the text that is final; a resumed job first drops the bytes
 * an earlier attempt already published.  A job that cannot go on
 * (j->error, or a chunk that cannot be built) ends failed with the reason,
 * its last ids in the final chunk: a chunk is never sent short, nor its seq
 * skipped.  Called only with no chunk call in flight (see the top). */
void svc_publish(service *sv) {
    jobops_chunks_reset(&sv->chunks);
    job **pp = &sv->jobs;
    while (*pp) {
        job *j = *pp;
        if (!j->done && j->n_step_ids == 0 && !j->error) {
            pp = &j->next;
            continue;
        }
        if (j->error && !j->done) sched_finish(sv->rt->sch, &j->s, FINISH_ERROR); /* sets done */
        if (j->stop_hit && !j->done) sched_finish(sv->rt->sch, &j->s, FINISH_STOP);
        if (j->done) svc_job_text_finish(j);
        const size_t skip = j->skip < j->pending.len ? j->skip : j->pending.len;
        j->skip -= skip;
        const char *text = (j->pending.data ? j->pending.data : "") + skip;
        const size_t len = j->pending.len - skip;
        if (!j->done) {
            if (!encode_chunk(sv, j, text, len, NULL, NULL, 0) && !add_chunk(sv, j)) {
                j->next_seq++;
                j->n_step_ids = 0;
                j->pending.len = 0;
                j->held_ms = 0;
                pp = &j->next;
                continue;
            }
            j->error = "out of memory: the worker cannot build the job's next chunk";
            sched_finish(sv->rt->sch, &j->s, FINISH_ERROR);
        }
        const char *fin = j->error ? "error" : j->stop_hit ? "stop" : finish_reason_name(j->s.finish);
        if (j->error) log_warn("job %s failed: %s", j->id, j->error);
        svc_metrics_job_end(sv, j);
        svc_add_final(sv, j, j->entry, text, len, fin, j->error, 500, 0);
        *pp = j->next;
        sv->n_jobs--;
        svc_job_free(j);
    }
    int known;
    send_chunks(sv, rcmd_shas_get(&shas, jobops_chunks_script(), &known));
}

/* With coalescing on and Redis behind (a chunk call in flight, or the last
 * one answered late): may every job's ids wait for the next step?  Not a job that ended or must end (its final goes out
 * now), nor one whose oldest waiting id is chunk_interval_ms old. */
static int may_hold(service *sv) {
    const int64_t t = now_ms();
    for (job *j = sv->jobs; j; j = j->next) {
        if (j->done || j->error || j->stop_hit) return 0;
        if (j->n_step_ids == 0) continue;
        if (!j->held_ms) j->held_ms = t; /* its ids came with the step that just ran */
        if (t - j->held_ms >= sv->o.chunk_interval_ms) return 0;
    }
    return 1;
}

llmq_status svc_publish_step(service *sv, llmq_err *err) {
    llmq_status st;
    sv->last_step_ms = now_ms() - sv->step_start_ms;
    if (sv->o.chunk_interval_ms > 0) {
        if ((st = svc_pipe_poll(sv, err))) return st;
        if ((sv->chunks_in_flight || sv->chunks_late) && may_hold(sv)) return LLMQ_OK; /* Redis is behind */
    }
    /* the replies to what the last iteration sent, which Redis handled
     * while this step ran; read before this step's chunks go out, so a
     * job whose chunk was refused sends no later one */
    if ((st = svc_pipe_flush(sv, err))) return st;
    svc_publish(sv);
    return LLMQ_OK;
}
