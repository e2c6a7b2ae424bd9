/*
 * admission.c — entries in: pull what the scheduler can take from the
 * request stream (our own pending entries after a reconnect, entries idle
 * past --claim-idle-ms, new entries), decode and validate each, admit it
 * with the jobops admit script, and hand it to the scheduler, resumed from
 * its output stream when an earlier attempt wrote some of it.
 *
 * Invariants
 *  - An entry that cannot run ends its job with a reason (svc_fail_early)
 *    or is left pending to be claimed again; it is never dropped silently.
 *  - A resumed job numbers its chunks from one past the last in its stream
 *    and skips exactly the text bytes already published.
 */
#include "worker/service/service_internal.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/log.h"

/* ------------------------------------------------------------ admission */

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
    redisReply *r = svc_call(sv, &c, err);
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
        svc_fail_early(sv, id ? id : "", eid, 0, "stream entry without a valid job id", 400, 1);
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
        svc_fail_early(sv, id, eid, 0, msg, 400, 1);
        svc_job_free(j);
        return;
    }
    if (proto_request_validate(&j->req, &e)) {
        svc_fail_early(sv, id, eid, 0, e.msg, 400, 0);
        svc_job_free(j);
        return;
    }
    if (j->req.model && strcmp(j->req.model, sv->o.model_name)) {
        snprintf(msg, sizeof msg, "request for model '%s' reached the worker of '%s'", j->req.model,
                 sv->o.model_name);
        svc_fail_early(sv, id, eid, 0, msg, 400, 0);
        svc_job_free(j);
        return;
    }
    /* admit: state running, attempts + 1, the job's seed */
    uint64_t seed = j->req.has_seed ? j->req.seed : ((uint64_t)now_ms() * 0x9e3779b97f4a7c15ull) ^ (uint64_t)rand();
    rcmd c;
    jobops_keys kb;
    jobops_admit(&c, &kb, &sv->keys, id, sv->o.model_name, sv->o.consumer, now_ms(), seed);
    redisReply *r = svc_call(sv, &c, &e);
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 3) {
        log_error("job %s: admit failed: %s", id, r ? "unexpected reply" : e.msg);
        freeReplyObject(r);
        svc_job_free(j);
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
        svc_pipe_add(sv, &c);
        svc_job_free(j);
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
            svc_pipe_add(sv, &c);
        }
        free(prev);
        svc_job_free(j);
        return;
    }
    if (code == 2) {
        svc_add_final_cmds(sv, j, eid, "", 0, "cancelled", NULL, 0);
        free(prev);
        svc_job_free(j);
        return;
    }
    /* Past its deadline before it (re)starts.  Checked after the admission,
     * whose attempt fences out a worker that may still hold the job. */
    if (j->req.deadline_ms > 0 && now_ms() > j->req.deadline_ms) {
        svc_add_final_cmds(sv, j, eid, "", 0, "deadline", NULL, 0);
        free(prev);
        svc_job_free(j);
        return;
    }
    if (attempts > sv->o.max_attempts) {
        snprintf(msg, sizeof msg, "delivered %lld times (max %d): giving up", attempts, sv->o.max_attempts);
        svc_fail_early(sv, id, eid, attempts, msg, 500, 1);
        free(prev);
        svc_job_free(j);
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
        svc_job_text_push(sv, j, prev[k]);
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
        svc_fail_early(sv, id, eid, attempts, why, 400, 0);
        svc_job_free(j);
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
            svc_pipe_add(sv, &c);
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

llmq_status svc_pull(service *sv, int block, llmq_err *err) {
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
        redisReply *r = svc_call(sv, &c, err);
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
        redisReply *r = svc_call(sv, &c, err);
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
    redisReply *r = svc_call(sv, &c, err);
    if (!r) {
        if (strstr(err->msg, "NOGROUP")) { /* the group was deleted under us: make it again */
            jobops_keys kb;
            jobops_group_create(&c, &kb, &sv->keys, sv->o.model_name);
            freeReplyObject(svc_call(sv, &c, err));
            return LLMQ_OK;
        }
        return err->code;
    }
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 0 && r->element[0]->elements >= 2)
        admit_entries(sv, r->element[0]->element[1]);
    freeReplyObject(r);
    return LLMQ_OK;
}

