/*
 * service.c — the worker's leader loop (see service.h and docs/protocol.md):
 * setup, the loop that alternates Redis and engine steps, the Redis
 * connections and their loss, claim refreshes, cancels and deadlines.  The
 * other concerns are in their own files (service_internal.h lists them).
 *
 * A job's life here:
 *   entry pulled (XREADGROUP / XAUTOCLAIM) -> decoded -> admitted (jobops
 *   admit script: state running, attempts+1, seed fixed on first attempt)
 *   -> tokenized -> resumed from its output stream when it was claimed again
 *   -> scheduled -> per step: ids go through the streaming detokenizer and
 *   the stop-string holdback into one chunk per step -> final chunk + job
 *   hash + XACK + TTLs in one script.
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
 *  - The loop never blocks on Redis while it has sequences to run: a step's
 *    writes are sent before the next step and their replies read after it.
 */
#include "worker/service/service_internal.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/rconn.h"

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
    o->lane_burst = 4;
    o->affinity = 1;
    o->affinity_wait_ms = 2000;
    o->affinity_ttl_s = 600;
    o->affinity_slack = 2;
    o->metrics_addr = SERVICE_METRICS_ADDR;
}

int service_default_kv_blocks(const model_config *cfg, int max_num_seqs) {
    /* every sequence slot can hold a full context */
    return max_num_seqs * ((cfg->max_position_embeddings + ENG_BLOCK_SIZE - 1) / ENG_BLOCK_SIZE);
}

/* ------------------------------------------------------------ cancel, deadlines, claims */

static void cancel_id(service *sv, const char *id, size_t len) {
    for (job *j = sv->jobs; j; j = j->next)
        if (strlen(j->id) == len && !memcmp(j->id, id, len) && !j->done) {
            log_info("job %s: cancelled", j->id);
            sched_finish(sv->rt->sch, &j->s, FINISH_CANCELLED);
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
    for (int l = 0; l < KEYS_LANES; l++) /* each lane's entries on its own stream */
        for (job *j = sv->jobs; j;) {
            rcmd_init(&c);
            rcmd_str(&c, "XCLAIM");
            rcmd_str(&c, sv->lane_keys[l]);
            rcmd_str(&c, PROTO_GROUP);
            rcmd_str(&c, sv->o.consumer);
            rcmd_str(&c, "0");
            int k = 0;
            for (; j && k < RCMD_MAX_ARGS - 7; j = j->next)
                if (j->lane == l) {
                    rcmd_str(&c, j->entry);
                    k++;
                }
            rcmd_str(&c, "JUSTID");
            if (k) svc_pipe_add(sv, &c);
        }
    for (job *j = sv->jobs; j; j = j->next) {
        char key[KEYS_MAX];
        keys_job(&sv->keys, j->id, key, sizeof key);
        rcmd_init(&c);
        rcmd_str(&c, "HGET");
        rcmd_str(&c, key);
        rcmd_str(&c, "cancel");
        svc_pipe_add_tagged(sv, &c, TAG_CANCEL_FLAG, j->id);
    }
    return svc_pipe_flush(sv, err);
}

static void check_deadlines(service *sv) {
    int64_t t = now_ms();
    for (job *j = sv->jobs; j; j = j->next)
        if (!j->done && j->req.deadline_ms > 0 && t > j->req.deadline_ms) sched_finish(sv->rt->sch, &j->s, FINISH_DEADLINE);
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
    svc_health_ready(sv, 0); /* /readyz answers 503 until connect_all succeeds again */
    sv->pipe_pending = sv->pipe_head = sv->chunks_in_flight = 0;
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
        if (!j->done) sched_finish(sv->rt->sch, &j->s, FINISH_ERROR);
        svc_job_free(j);
    }
    sv->n_jobs = 0;
    disconnect(sv);
    int delay = 100;
    for (;;) {
        if (*stop) return LLMQ_OK; /* nothing left to drain: the loop exits */
        llmq_err e = {0};
        if (connect_all(sv, &e) == LLMQ_OK) {
            log_info("redis: reconnected");
            svc_health_ready(sv, 1);
            sv->reclaim_own = 1;
            llmq_err_clear(err);
            return LLMQ_OK;
        }
        disconnect(sv);
        log_warn("redis: %s; retrying in %d ms", e.msg, delay);
        for (int waited = 0; waited < delay && !*stop; waited += 50) {
            usleep(50000);
        }
        /* behind Sentinel a new primary is usually there within seconds: ask
         * again sooner (the gateway caps its backoff the same way) */
        int cap = sv->url.n_sentinels > 0 ? 500 : 5000;
        delay = delay * 2 > cap ? cap : delay * 2;
    }
}

/* llguidance for structured output: an explicit --llguidance must load;
 * found otherwise (or not), it is optional and its absence is logged. */
static llmq_status guide_start(service *sv, const model_config *cfg, llmq_err *err) {
    llmq_err ge = {0};
    if (!sv->rt->tok) {
        snprintf(sv->guide_error, sizeof sv->guide_error, "this model has no tokenizer.json");
    } else if (guide_lib_load(&sv->guide, sv->o.llguidance, sv->rt->tok, cfg->vocab_size, cfg->eos_token_ids,
                              cfg->n_eos, &ge) == LLMQ_OK) {
        log_info("structured output: %s (%s)", guide_lib_version(sv->guide), guide_lib_path(sv->guide));
        return LLMQ_OK;
    } else {
        if (sv->o.llguidance) return llmq_err_set(err, ge.code, "--llguidance: %s", ge.msg);
        snprintf(sv->guide_error, sizeof sv->guide_error, "%s", ge.msg);
    }
    log_info("structured output unavailable (%s); to enable it, %s", sv->guide_error, GUIDE_HOW_TO_ENABLE);
    return LLMQ_OK;
}

static void service_free(service *sv) {
    while (sv->jobs) {
        job *j = sv->jobs;
        sv->jobs = j->next;
        svc_job_free(j);
    }
    if (sv->has_ct) chat_template_deinit(&sv->ct);
    svc_pieces_deinit(&sv->pieces);
    guide_lib_destroy(sv->guide); /* after the jobs (their matchers), before the tokenizer */
    runtime_destroy(sv->rt);
    svc_health_stop(sv);
    disconnect(sv);
    metrics_destroy(sv->mx);
    proto_buf_deinit(&sv->buf);
    jobops_chunks_deinit(&sv->chunks);
    free(sv->tags);
}

llmq_status service_run(const service_opts *o, volatile sig_atomic_t *stop, llmq_err *err) {
    service svs, *sv = &svs;
    memset(sv, 0, sizeof *sv);
    sv->o = *o;
    llmq_status st;
    if ((st = keys_init(&sv->keys, o->prefix, err)) || (st = redis_url_resolve(&sv->url, o->redis_url, err))) return st;
    if (!keys_model_valid(o->model_name))
        return llmq_err_set(err, LLMQ_ERR_INVALID, "invalid --model-name '%s'", o->model_name);
    keys_req_stream(&sv->keys, o->model_name, sv->req_key, sizeof sv->req_key);
    for (int l = 0; l < KEYS_LANES; l++)
        keys_req_lane(&sv->keys, o->model_name, l, sv->lane_keys[l], sizeof sv->lane_keys[l]);
    keys_dead_stream(&sv->keys, o->model_name, sv->dead_key, sizeof sv->dead_key);
    keys_workers(&sv->keys, sv->workers_key, sizeof sv->workers_key);
    keys_cancel_channel(&sv->keys, sv->cancel_chan, sizeof sv->cancel_chan);
    proto_buf_init(&sv->buf);
    jobops_chunks_init(&sv->chunks);
    svc_metrics_init(sv);

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
    ro.eng = (eng_opts){blocks, o->max_batched_tokens, o->max_num_seqs, o->comm, o->mem_util, 0, o->kv_dtype};
    ro.with_sched = 1;
    ro.sched = (sched_opts){o->max_num_seqs, o->max_batched_tokens};
    ro.cb = (sched_callbacks){svc_on_token, svc_on_finish, sv};
    ro.tok = RUNTIME_TOK_IF_PRESENT;
    if ((st = runtime_create(&sv->rt, &ro, err))) goto out;
    if (o->no_prefix_caching) sched_set_prefix_caching(sv->rt->sch, 0);
    if (sv->rt->tok) {
        llmq_err ce = {0};
        if (chat_template_from_tokenizer(&sv->ct, sv->rt->tok, o->chat_template, &ce) == LLMQ_OK) {
            sv->has_ct = 1;
            char how[512];
            chat_template_describe(&sv->ct, o->chat_template, how, sizeof how);
            log_info("chat template: %s", how);
        } else {
            snprintf(sv->ct_error, sizeof sv->ct_error, "%s", ce.msg);
            if (o->chat_template) {
                st = llmq_err_set(err, ce.code, "%s", ce.msg);
                goto out;
            }
            log_warn("%s: chat requests will fail: %s", o->model_dir, ce.msg);
        }
    } else {
        log_warn("%s has no tokenizer.json: only prompt_ids requests can run", o->model_dir);
        snprintf(sv->ct_error, sizeof sv->ct_error, "this model has no tokenizer.json: send prompt_ids");
    }
    const model_config *cfg = &sv->rt->m->cfg;
    if (sv->rt->tok && (st = svc_pieces_build(&sv->pieces, sv->rt->tok, cfg->vocab_size, err))) goto out;
    if ((st = guide_start(sv, cfg, err))) goto out;
    blocks = eng_n_blocks(sv->rt->eng);
    log_info("model %s loaded from %s: %s, %d layers, %.1f MB of weights on rank 0 of %d (backend %s%s%s); KV "
             "cache %d blocks of %s (%.1f MiB)", o->model_name, o->model_dir, cfg->arch_name, cfg->n_layers,
             sv->rt->m->weight_bytes / 1e6, world, sv->rt->be->ops->name, sv->rt->be->isa ? ", kernels " : "",
             sv->rt->be->isa ? sv->rt->be->isa : "", blocks, llmq_dtype_name(sv->rt->be->kv_dt),
             (double)blocks * ENG_BLOCK_SIZE * eng_kv_bytes_per_token(cfg, sv->rt->be->kv_dt) / 1048576.0);
    if ((st = connect_all(sv, err))) goto out;
    if (o->metrics_port > 0 && (st = svc_health_start(sv, err))) goto out;
    char where[300];
    log_info("serving %s on %s as consumer %s (streams %s, %s, %s: lanes read highest first, a lower lane's "
             "entry after %d from higher ones)", o->model_name, redis_url_describe(&sv->url, where, sizeof where),
             o->consumer, sv->lane_keys[KEYS_LANE_HIGH], sv->lane_keys[KEYS_LANE_DEFAULT], sv->lane_keys[KEYS_LANE_LOW],
             o->lane_burst);

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
        const int idle = sched_n_running(sv->rt->sch) == 0 && sched_n_waiting(sv->rt->sch) == 0;
        if ((!drain_deadline && (st = svc_pull(sv, idle, err))) || (st = refresh(sv, err))) {
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
        svc_step_begins(sv);
        int batch = sched_n_running(sv->rt->sch);
        if ((st = sched_step(sv->rt->sch, &worked, err))) break;
        if (worked) {
            metric_observe(sv->m_step, (now_ms() - t0) / 1e3);
            metric_observe(sv->m_batch, batch);
        }
        uint64_t pre = sched_n_preemptions(sv->rt->sch);
        if (pre > sv->preempt_seen) metric_inc(sv->m_preempt, (double)(pre - sv->preempt_seen));
        sv->preempt_seen = pre;
        /* the replies to what the last iteration sent, then this step's chunks */
        if ((st = svc_publish_step(sv, err))) {
            if (st != LLMQ_ERR_IO || (st = reconnect(sv, stop, err))) break;
            continue;
        }
        svc_heartbeat(sv);
        svc_health_snapshot(sv, sv->finals > 0); /* before the finals reach Redis: a reader that saw
                                                    the job end finds it counted */
        sv->finals = 0;
        if ((st = svc_pipe_send(sv, err))) {
            if (st != LLMQ_ERR_IO || (st = reconnect(sv, stop, err))) break;
        }
    }
    if (!st && sv->rc) st = svc_pipe_flush(sv, err); /* the last replies: all that was sent is written */
    if (!st && sv->rt->eng && eng_stop_peers(sv->rt->eng, err)) st = err->code;
out:
    service_free(sv);
    return st;
}

