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
 *    Poison that no re-delivery can fix (job keys of another type) is
 *    dead-lettered at once (jobops_reject), never left pending.
 *  - A resumed job numbers its chunks from one past the last in its stream
 *    and skips exactly the text bytes already published.
 */
#include "worker/service/service_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/log.h"

#define OOM_PROMPT "out of memory: the worker cannot build the prompt"
#define CODE_CONTEXT "context_length_exceeded" /* OpenAI's code for a prompt + max_tokens past the context */
#define CODE_CONSTRAINT "invalid_constraint"    /* a `guide` llguidance refuses (its message) */
#define CODE_NO_GUIDE "structured_output_unavailable" /* a `guide` on a worker without llguidance */

/* ------------------------------------------------------------ entries */

static void answer_op(service *sv, job *j);

static const char *field(const redisReply *fields, const char *name, size_t *len) {
    if (!fields || fields->type != REDIS_REPLY_ARRAY) return NULL;
    for (size_t i = 0; i + 1 < fields->elements; i += 2)
        if (fields->element[i]->type == REDIS_REPLY_STRING && !strcmp(fields->element[i]->str, name)) {
            if (len) *len = fields->element[i + 1]->len;
            return fields->element[i + 1]->str;
        }
    return NULL;
}

/* One entry (new or claimed) decoded and checked into a job that waits for
 * its admit script.  Returns NULL when the entry goes no further here: it
 * ended its job with the reason (svc_fail_early: no id, undecodable,
 * invalid, another model's), it is ours already (a late claim refresh:
 * keep running it once), or there was no memory for the job.  That last
 * one is left pending, logged, and claimed again after --claim-idle-ms:
 * failing the job needs its admission (an entry never admitted may only
 * end a queued job, see jobops_finish), and the admission needs the job. */
static job *entry_decode(service *sv, const redisReply *entry, int lane) {
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements < 2 || entry->element[0]->type != REDIS_REPLY_STRING) {
        log_error("internal: a stream entry of an unexpected shape was skipped");
        return NULL;
    }
    const char *eid = entry->element[0]->str;
    const redisReply *fields = entry->element[1];
    size_t plen = 0;
    const char *id = field(fields, PROTO_FIELD_ID, NULL);
    const char *payload = field(fields, PROTO_FIELD_REQ, &plen);
    char msg[LLMQ_ERRSTR_LEN + 64];
    if (!id || !keys_id_valid(id)) {
        svc_fail_early(sv, id ? id : "", lane, eid, 0, 0, "stream entry without a valid job id", 400, 1);
        return NULL;
    }
    for (const job *a = sv->jobs; a; a = a->next)
        if (!strcmp(a->entry, eid)) return NULL;
    job *j = calloc(1, sizeof *j);
    if (!j) {
        log_error("job %s: out of memory before its admission: entry %s left pending, to be claimed again", id, eid);
        return NULL;
    }
    snprintf(j->id, sizeof j->id, "%s", id);
    snprintf(j->entry, sizeof j->entry, "%s", eid);
    j->lane = lane;
    /* the lane it came from, not its priority, says where it is acked (a
     * client may XADD any priority into any lane); the scheduler orders by
     * the request's priority */
    proto_request_init(&j->req);
    llmq_err e = {0};
    const char *why = NULL;
    int dead = 0;
    if (!payload || proto_request_decode(&j->req, payload, plen, &e)) {
        snprintf(msg, sizeof msg, "cannot decode the request: %s", payload ? e.msg : "no 'p' field");
        why = msg;
        dead = 1;
    } else if (proto_request_validate(&j->req, &e)) {
        why = e.msg;
    } else if (j->req.model && strcmp(j->req.model, sv->o.model_name)) {
        snprintf(msg, sizeof msg, "request for model '%s' reached the worker of '%s'", j->req.model,
                 sv->o.model_name);
        why = msg;
    }
    if (why) {
        svc_fail_early(sv, id, lane, eid, 0, 0, why, 400, dead);
        svc_job_free(j);
        return NULL;
    }
    if (j->req.op != PROTO_OP_GENERATE) {
        answer_op(sv, j);
        svc_job_free(j);
        return NULL;
    }
    return j;
}

/* ------------------------------------------------------------ resume */

/* The output of earlier attempts, from the admit reply's chunks (elements
 * 3..): every id (a resume replays them), the text bytes already published,
 * and j->next_seq one past the last seq.  *final: a final chunk is there.
 * Returns NULL, or why the job cannot resume: an output it cannot read
 * whole is never replayed short. */
static const char *resume_read(service *sv, job *j, const redisReply *r, int32_t **ids, int *n_ids,
                               size_t *published, int *final) {
    const int V = sv->rt->m->cfg.vocab_size;
    const char *why = NULL;
    int cap = 0;
    *n_ids = 0;
    *published = 0;
    *final = 0;
    /* the next seq is past every chunk, also one that cannot be read */
    if ((int64_t)(r->elements - 3) > j->next_seq) j->next_seq = (int64_t)(r->elements - 3);
    for (size_t i = 3; i < r->elements; i++) {
        const redisReply *c = r->element[i];
        proto_chunk ch;
        proto_chunk_init(&ch);
        if (c->type != REDIS_REPLY_STRING || proto_chunk_decode(&ch, c->str, c->len, NULL)) {
            if (!why) why = "its output stream holds a chunk that cannot be decoded";
            continue;
        }
        if (ch.seq + 1 > j->next_seq) j->next_seq = ch.seq + 1;
        *published += ch.text_len;
        if (ch.finish) *final = 1;
        for (size_t k = 0; k < ch.n_ids && !why; k++) {
            if (ch.ids[k] < 0 || ch.ids[k] >= V) {
                why = "its output stream holds a token id outside the vocabulary";
                break;
            }
            if (*n_ids == cap) {
                cap = cap ? 2 * cap : 64;
                int32_t *g = realloc(*ids, (size_t)cap * sizeof *g);
                if (!g) {
                    why = "out of memory: the worker cannot read the job's output so far";
                    break;
                }
                *ids = g;
            }
            (*ids)[(*n_ids)++] = ch.ids[k];
        }
        proto_chunk_deinit(&ch);
    }
    return why;
}

/* ------------------------------------------------------------ the job's setup */

/* Turn the request into prompt ids: `prompt` encoded with the special
 * tokens (BOS) unless add_special_tokens is false, `messages` through the
 * chat template (which holds BOS) without them unless it is true, as vLLM
 * does.  Returns a message on failure; none names a file (clients read them). */
static const char *build_prompt(service *sv, const proto_request *r, int32_t **ids, size_t *n, char *msg,
                                size_t cap) {
    const int V = sv->rt->m->cfg.vocab_size;
    if (r->kind == PROTO_PROMPT_IDS) {
        *ids = malloc((r->n_prompt_ids ? r->n_prompt_ids : 1) * sizeof **ids);
        if (!*ids) return OOM_PROMPT;
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
    if (!sv->rt->tok) return "this model has no tokenizer.json: send prompt_ids";
    llmq_err e = {0};
    if (r->kind == PROTO_PROMPT_MESSAGES) {
        if (!sv->has_ct) return sv->ct_error;
        chat_msg *msgs = calloc(r->n_messages ? r->n_messages : 1, sizeof *msgs);
        if (!msgs) return OOM_PROMPT;
        for (size_t i = 0; i < r->n_messages; i++) msgs[i] = (chat_msg){r->messages[i].role, r->messages[i].content, r->messages[i].tool_calls};
        char *text = NULL;
        size_t len = 0;
        llmq_status st = chat_render_tools(&sv->ct, msgs, r->n_messages, r->tools, 1, &text, &len, &e);
        free(msgs);
        if (!st) st = tok_encode(sv->rt->tok, text, len, r->add_special_tokens == 1, ids, n, &e);
        free(text);
        if (st) {
            snprintf(msg, cap, "chat messages: %s", e.msg);
            return msg;
        }
        return NULL;
    }
    if (tok_encode(sv->rt->tok, r->prompt, strlen(r->prompt), r->add_special_tokens != 0, ids, n, &e)) {
        snprintf(msg, cap, "cannot tokenize the prompt: %s", e.msg);
        return msg;
    }
    return NULL;
}

/* A tokenize or detokenize job (request `op`), answered at once with its
 * final chunk: no admission, no KV cache, no generation.  Like an early
 * failure it is written with attempt 0, which the finish script accepts
 * only while the job is queued (so a cancelled one stays cancelled).
 * tokenize: ids = the prompt's tokens (chat template applied to messages),
 * usage.prompt_tokens = their count, max_model_len = the context.
 * detokenize: text = the ids decoded (special tokens kept, as vLLM's
 * /detokenize), usage.prompt_tokens = the count of ids.  Takes nothing:
 * the caller frees j. */
static void answer_op(service *sv, job *j) {
    const proto_request *r = &j->req;
    char msg[LLMQ_ERRSTR_LEN + 64];
    const char *why = NULL;
    if (!sv->rt->tok) {
        why = "this model has no tokenizer.json: it cannot tokenize or detokenize";
    } else if (r->op == PROTO_OP_TOKENIZE) {
        int32_t *ids = NULL;
        size_t n = 0;
        why = build_prompt(sv, r, &ids, &n, msg, sizeof msg);
        if (!why && n > PROTO_MAX_PROMPT_IDS) {
            snprintf(msg, sizeof msg, "the prompt has %zu tokens, more than the %d one answer can carry", n,
                     PROTO_MAX_PROMPT_IDS);
            why = msg;
        }
        if (!why) {
            j->step_ids = ids; /* freed with j */
            j->n_step_ids = (int)n;
            j->s.n_prompt = (int)n;
            j->max_model_len = sv->rt->m->cfg.max_position_embeddings;
            svc_add_final(sv, j, j->entry, "", 0, "stop", NULL, 0, 0);
            return;
        }
        free(ids);
    } else {
        const int V = sv->rt->m->cfg.vocab_size;
        for (size_t i = 0; i < r->n_prompt_ids && !why; i++)
            if (r->prompt_ids[i] >= V) {
                snprintf(msg, sizeof msg, "prompt_ids[%zu] = %d is outside the vocabulary (%d)", i, r->prompt_ids[i], V);
                why = msg;
            }
        char *text = why ? NULL : tok_decode(sv->rt->tok, r->prompt_ids, r->n_prompt_ids, 0);
        if (!why && !text) {
            log_error("job %s: out of memory decoding its ids: entry %s left pending, to be claimed again", j->id,
                      j->entry);
            return;
        }
        if (text) {
            j->s.n_prompt = (int)r->n_prompt_ids;
            svc_add_final(sv, j, j->entry, text, strlen(text), "stop", NULL, 0, 0);
            free(text);
            return;
        }
    }
    svc_fail_early(sv, j->id, j->lane, j->entry, 0, 0, why, why == (const char *)OOM_PROMPT ? 500 : 400, 0);
}

/* A constrained job's matcher (the seq owns it).  Returns NULL, or why not,
 * with its code: the worker has no llguidance, or the constraint is
 * invalid (400 both), or no memory (500). */
static const char *guide_setup(service *sv, job *j, char *msg, size_t cap, int *status) {
    const proto_request *q = &j->req;
    *status = 400;
    if (!sv->guide) {
        snprintf(msg, cap, "structured output is unavailable on this worker (%.200s); to enable it, %s", sv->guide_error,
                 GUIDE_HOW_TO_ENABLE);
        j->error_code = CODE_NO_GUIDE;
        return msg;
    }
    llmq_err e = {0};
    llmq_status st = LLMQ_OK;
    if (q->guide_type != PROTO_GUIDE_NONE) {
        st = guide_matcher_create(&j->s.guide, sv->guide, proto_guide_type_name(q->guide_type), q->guide, &e);
    } else { /* tool_choice required or named: one call in the family's syntax (chat_tools_grammar) */
        char *lark = NULL;
        st = chat_tools_grammar(sv->ct.family, q->tools, q->tool_name, &lark, &e);
        if (!st) st = guide_matcher_create(&j->s.guide, sv->guide, "lark", lark, &e);
        free(lark);
    }
    if (st == LLMQ_OK) return NULL;
    snprintf(msg, cap, "%s", e.msg);
    if (st == LLMQ_ERR_INVALID) j->error_code = CODE_CONSTRAINT;
    else *status = 500;
    return msg;
}

/* An admitted job's sequence: prompt ids, token limit, sampling, logprobs,
 * stop ids, detokenizer and stop strings.  Returns NULL, or why it cannot
 * run with *status 400 (the request: too long, unknown ids, ...) or 500
 * (out of memory). */
static const char *job_setup(service *sv, job *j, uint64_t seed, char *msg, size_t cap, int *status) {
    const proto_request *q = &j->req;
    int32_t *ids = NULL;
    size_t n = 0;
    *status = 400;
    const char *why = build_prompt(sv, q, &ids, &n, msg, cap);
    const int ctx = sv->rt->m->cfg.max_position_embeddings;
    if (!why && n == 0) why = "the prompt is empty";
    /* vLLM's words, so that clients which recognise them (and OpenAI's
     * code) work unchanged: a prompt with no room for one token, or a
     * max_tokens that does not fit beside it, is refused, never cut short */
    if (!why && n + 1 > (size_t)ctx) {
        snprintf(msg, cap,
                 "This model's maximum context length is %d tokens. However, you requested %zu tokens in the "
                 "messages, Please reduce the length of the messages.", ctx, n);
        why = msg;
        j->error_code = CODE_CONTEXT;
    } else if (!why && q->max_tokens != PROTO_UNSET && n + (size_t)q->max_tokens > (size_t)ctx) {
        snprintf(msg, cap,
                 "This model's maximum context length is %d tokens. However, you requested %zu tokens (%zu in the "
                 "messages, %d in the completion). Please reduce the length of the messages or completion.",
                 ctx, n + (size_t)q->max_tokens, n, q->max_tokens);
        why = msg;
        j->error_code = CODE_CONTEXT;
    }
    int max_new = ctx - (int)n;
    if (!why && q->max_tokens != PROTO_UNSET && q->max_tokens < max_new) max_new = q->max_tokens;
    sampling_params sp;
    sampling_params_from_request(&sp, q, seed);
    if (!why && seq_init(&j->s, ids, (int)n, max_new, &sp)) why = "out of memory: the worker cannot hold the sequence";
    free(ids);
    if (why) {
        if (why == (const char *)OOM_PROMPT || !strncmp(why, "out of memory", 13)) *status = 500;
        return why;
    }
    j->s.user = j;
    j->s.cache_salt = q->cache_salt; /* the request outlives the sequence's sched_add */
    j->s.ignore_eos = q->ignore_eos;
    if (q->logprobs != PROTO_UNSET) { /* validated: 0..PROTO_MAX_LOGPROBS (= SAMPLER_MAX_LOGPROBS) */
        j->s.logprobs = q->logprobs;
        j->want_lp = 1;
    }
    for (size_t k = 0; k < q->n_stop_token_ids && k < SEQ_MAX_STOP_IDS; k++)
        j->s.stop_ids[j->s.n_stop_ids++] = q->stop_token_ids[k];
    const int tool_call = q->tools && (q->tool_name || (q->tool_choice && !strcmp(q->tool_choice, "required")));
    if ((q->guide_type != PROTO_GUIDE_NONE || tool_call) && (why = guide_setup(sv, j, msg, cap, status))) return why;
    *status = 500;
    if (sv->rt->tok) {
        if (tok_stream_init(&j->ts, sv->rt->tok, j->s.tokens, (size_t)j->s.n_prompt, 1))
            return "out of memory: the worker cannot start the detokenizer";
        j->has_ts = 1;
    }
    if (q->n_stop > 0) {
        if (stop_init(&j->sm, (const char *const *)q->stop, q->n_stop))
            return "out of memory: the worker cannot hold the stop strings";
        j->has_sm = 1;
    }
    return NULL;
}

/* Resume: replay the ids of earlier attempts through the detokenizer and
 * the stop holdback, then drop the bytes that were already published.
 * Returns NULL, or why not (all of them must fit the sequence). */
static const char *job_resume(service *sv, job *j, const int32_t *prev, int n_prev, size_t published) {
    if (n_prev > j->s.cap - 1 - j->s.n_tokens) return "its output stream holds more ids than its context";
    for (int k = 0; k < n_prev; k++) {
        j->s.tokens[j->s.n_tokens++] = prev[k];
        svc_job_text_push(sv, j, prev[k]);
    }
    /* the constraint follows the ids: the same matcher state, so the same masks */
    if (j->s.guide && guide_matcher_consume_all(j->s.guide, prev, n_prev))
        return "its constraint refuses the ids an earlier attempt generated";
    if (n_prev > 0) {
        j->skip = published;
        log_info("job %s: resuming after %d tokens (attempt %lld, next seq %" PRId64 ")", j->id, n_prev, j->attempt,
                 j->next_seq);
    }
    return NULL;
}

/* ------------------------------------------------------------ admission */

/* Act on j's admit reply (j->admit_reply): run the job, end it, or leave
 * its entry pending.  Takes j: it is either on sv->jobs afterwards or
 * freed. */
static void entry_admit(service *sv, job *j, uint64_t seed) {
    const redisReply *r = j->admit_reply;
    const char *eid = j->entry;
    char msg[LLMQ_ERRSTR_LEN + 64];
    rcmd c;
    jobops_keys kb;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 3 || r->element[0]->type != REDIS_REPLY_INTEGER ||
        r->element[1]->type != REDIS_REPLY_INTEGER) {
        log_error("job %s: admit failed: %s", j->id, r && r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        svc_job_free(j);
        return; /* left pending: retried after claim_idle_ms */
    }
    const long long code = r->element[0]->integer, attempts = r->element[1]->integer;
    if (code == JOBOPS_ADMIT_POISON) { /* keys of another type: no delivery can fix it, so never re-claim it */
        const redisReply *w = r->elements > 3 ? r->element[3] : NULL;
        snprintf(msg, sizeof msg, "poison: %s", w && w->type == REDIS_REPLY_STRING ? w->str : "unusable job keys");
        log_warn("job %s: %s: dead-lettered", j->id, msg);
        jobops_reject(&c, &kb, &sv->keys, j->id, sv->o.model_name, j->lane, eid, msg, now_ms(), sv->o.result_ttl_s);
        svc_pipe_add(sv, &c);
        svc_job_free(j);
        return;
    }
    const redisReply *rs = r->element[2];
    if (rs->type == REDIS_REPLY_STRING) seed = strtoull(rs->str, NULL, 10);
    else if (rs->type == REDIS_REPLY_INTEGER) seed = (uint64_t)rs->integer;
    j->attempt = attempts; /* from here on our writes are fenced on it (jobops.h) */
    if (code == JOBOPS_ADMIT_FINAL) {
        jobops_ack(&c, &kb, &sv->keys, sv->o.model_name, j->lane, eid);
        svc_pipe_add(sv, &c);
        svc_job_free(j);
        return;
    }
    int32_t *prev = NULL;
    int n_prev = 0, final = 0, status = 500;
    size_t published = 0;
    const char *why = resume_read(sv, j, r, &prev, &n_prev, &published, &final);
    if (final) { /* a final chunk exists: only the ack was lost */
        jobops_ack(&c, &kb, &sv->keys, sv->o.model_name, j->lane, eid);
        svc_pipe_add(sv, &c);
    } else if (!why && code == JOBOPS_ADMIT_CANCELLED) {
        svc_add_final(sv, j, eid, "", 0, "cancelled", NULL, 0, 0);
    } else if (!why && j->req.deadline_ms > 0 && now_ms() > j->req.deadline_ms) {
        /* past its deadline before it (re)starts; checked after the
         * admission, whose attempt fences out a worker that may still hold
         * the job */
        svc_add_final(sv, j, eid, "", 0, "deadline", NULL, 0, 0);
    } else if (!why && attempts > sv->o.max_attempts) {
        snprintf(msg, sizeof msg, "delivered %lld times (max %d): giving up", attempts, sv->o.max_attempts);
        svc_fail_early(sv, j->id, j->lane, eid, attempts, j->next_seq, msg, 500, 1);
    } else {
        llmq_err e = {0};
        if (!why) why = job_setup(sv, j, seed, msg, sizeof msg, &status);
        if (!why) why = job_resume(sv, j, prev, n_prev, published);
        if (!why && seq_n_generated(&j->s) >= j->s.max_tokens) {
            why = "nothing left to generate";
            status = 400;
        }
        if (!why) j->s.priority = j->req.priority; /* the scheduler admits higher first */
        if (!why && sched_add(sv->rt->sch, &j->s, &e)) {
            snprintf(msg, sizeof msg, "%s", e.msg);
            why = msg;
            status = 400;
        }
        if (!why) {
            free(prev);
            freeReplyObject(j->admit_reply);
            j->admit_reply = NULL;
            j->admitted_ms = now_ms();
            metric_inc(sv->m_prompt_tok, j->s.n_prompt);
            metric_observe(sv->m_queue, (j->admitted_ms - strtoll(eid, NULL, 10)) / 1e3); /* ids start with ms */
            j->next = sv->jobs;
            sv->jobs = j;
            sv->n_jobs++;
            return;
        }
        if (j->error_code) { /* svc_fail_early's final, with the code */
            log_warn("job %s failed: %s", j->id, why);
            svc_add_final(sv, j, eid, "", 0, "error", why, status, 0);
        } else {
            svc_fail_early(sv, j->id, j->lane, eid, attempts, j->next_seq, why, status, 0);
        }
    }
    free(prev);
    svc_job_free(j);
}

/* Admit the entries of an XREADGROUP / XAUTOCLAIM entry list, read from
 * the stream of lane: decode each, send the admit scripts of all in one
 * pipelined round trip, then act on each reply in entry order.
 * LLMQ_ERR_IO: the connection is gone (every job of the batch freed; their
 * entries stay pending). */
static llmq_status admit_entries(service *sv, const redisReply *list, int lane, llmq_err *err) {
    job *head = NULL, **tail = &head;
    for (size_t i = 0; list && list->type == REDIS_REPLY_ARRAY && i < list->elements; i++) {
        const redisReply *e = list->element[i];
        rcmd c;
        jobops_keys kb;
        if (e->type == REDIS_REPLY_ARRAY && e->elements >= 2 && e->element[1]->type == REDIS_REPLY_NIL) {
            /* claimed an entry that was deleted: nothing to run */
            jobops_ack(&c, &kb, &sv->keys, sv->o.model_name, lane, e->element[0]->str);
            svc_pipe_add(sv, &c);
            continue;
        }
        job *j = entry_decode(sv, e, lane);
        if (!j) continue;
        /* the seed a first attempt stores: the request's, else one drawn */
        uint64_t seed = j->req.has_seed ? j->req.seed : sampler_seed_draw();
        j->seed = seed;
        jobops_admit(&c, &kb, &sv->keys, j->id, sv->o.model_name, sv->o.consumer, now_ms(), seed);
        if (svc_pipe_add_admit(sv, &c, j)) {
            log_error("job %s: admit not sent: entry %s left pending, to be claimed again", j->id, j->entry);
            svc_job_free(j);
            continue;
        }
        *tail = j;
        tail = &j->next;
    }
    llmq_status st = svc_pipe_flush(sv, err);
    while (head) {
        job *j = head;
        head = j->next;
        j->next = NULL;
        if (st) svc_job_free(j);
        else entry_admit(sv, j, j->seed);
    }
    return st;
}

/* Entries to pull now.  Their prompts are unknown before the pull: each is
 * counted as a prompt of one block (a new job then needs two: the prompt's
 * and its first generated token's), under the free sequence slots. */
static int capacity(service *sv) { return sched_admit_capacity(sv->rt->sch, ENG_BLOCK_SIZE); }

/* The entries of an XREADGROUP reply that names its streams ({stream,
 * entries} each), admitted lane by lane, highest first. */
static llmq_status admit_streams(service *sv, const redisReply *r, llmq_err *err) {
    jobops_keys kb;
    rcmd c;
    jobops_read_all(&c, &kb, &sv->keys, sv->o.model_name, sv->o.consumer, 0, -1, "0"); /* fills kb.lanes */
    for (int l = 0; l < KEYS_LANES; l++)
        for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
            const redisReply *s = r->element[i];
            if (s->type != REDIS_REPLY_ARRAY || s->elements < 2 || s->element[0]->type != REDIS_REPLY_STRING ||
                jobops_lane_of_key(&kb, s->element[0]->str, s->element[0]->len) != l)
                continue;
            llmq_status st = admit_entries(sv, s->element[1], l, err);
            if (st) return st;
        }
    return LLMQ_OK;
}

/*
 * The starvation guard.  Lanes are read highest first, so a steady flow of
 * high-priority jobs would hold the lower lanes back forever.  Each lower
 * lane counts the entries this worker took from the lanes above it while
 * it had entries waiting (lane_skips); once that count reaches
 * --lane-burst, the next pull takes one entry from it before any other
 * (the highest such lane first), and its count starts again from 0.  So a
 * worker passes over a waiting lane at most lane_burst times in a row
 * (plus the rest of the pull that reached the count).  Returns the lane to
 * take one entry from first, or -1.
 */
static int starved_lane(const service *sv) {
    if (sv->o.lane_burst <= 0) return -1; /* 0: strict priority */
    for (int l = 1; l < KEYS_LANES; l++)
        if (sv->lane_skips[l] >= sv->o.lane_burst) return l;
    return -1;
}

/* Count what a pull took (got[l] entries from lane l; more[l]: entries
 * still wait there) into lane_skips. */
static void count_skips(service *sv, const size_t got[KEYS_LANES], const int more[KEYS_LANES]) {
    size_t above = 0;
    for (int l = 0; l < KEYS_LANES; l++) {
        if (got[l] || !more[l]) sv->lane_skips[l] = 0; /* served, or nothing waits */
        else sv->lane_skips[l] += (int)above;
        above += got[l];
    }
}

llmq_status svc_pull(service *sv, int block, llmq_err *err) {
    llmq_status st = LLMQ_OK;
    int n = capacity(sv);
    if (n <= 0) return LLMQ_OK;
    rcmd c;
    jobops_keys kb;
    if (sv->reclaim_own) { /* entries we held before Redis went away: ours again, resumed */
        /* all of them at once, from every lane: the scheduler queues what it cannot run yet */
        jobops_read_all(&c, &kb, &sv->keys, sv->o.model_name, sv->o.consumer, 0, -1, "0");
        redisReply *r = svc_call(sv, &c, err);
        if (!r) return err->code;
        size_t k = 0;
        for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++)
            if (r->element[i]->type == REDIS_REPLY_ARRAY && r->element[i]->elements >= 2)
                k += r->element[i]->element[1]->elements;
        if (k) log_info("resuming %zu jobs this worker held before the reconnect", k);
        st = admit_streams(sv, r, err);
        if (!st) sv->reclaim_own = 0;
        freeReplyObject(r);
        return st;
    }
    int64_t t = now_ms();
    if (t - sv->last_autoclaim_ms >= sv->o.claim_idle_ms / 2) {
        sv->last_autoclaim_ms = t;
        for (int l = 0; l < KEYS_LANES && n > 0; l++) { /* highest lane first */
            rcmd_init(&c);
            rcmd_str(&c, "XAUTOCLAIM");
            rcmd_str(&c, sv->lane_keys[l]);
            rcmd_str(&c, PROTO_GROUP);
            rcmd_str(&c, sv->o.consumer);
            rcmd_fmt(&c, "%d", sv->o.claim_idle_ms);
            rcmd_str(&c, "0-0");
            rcmd_str(&c, "COUNT");
            rcmd_fmt(&c, "%d", n);
            redisReply *r = svc_call(sv, &c, err);
            if (!r) {
                if (strstr(err->msg, "NOGROUP")) break; /* made again below, at the read */
                return err->code;
            }
            if (r->type == REDIS_REPLY_ARRAY && r->elements >= 2 && r->element[1]->elements > 0) {
                log_info("claimed %zu entries of lane %s idle for more than %d ms", r->element[1]->elements,
                         keys_lane_name(l), sv->o.claim_idle_ms);
                st = admit_entries(sv, r->element[1], l, err);
            }
            freeReplyObject(r);
            if (st) return st;
            n = capacity(sv);
        }
        if (n <= 0) return LLMQ_OK;
    }
    /* new entries: one script reads the lanes highest first, n at most */
    const int first = starved_lane(sv);
    const int aff = sv->o.affinity;
    if (aff) {
        /* the takeover of other groups' parked entries: a few times per bound */
        jobops_affinity a = {sv->o.affinity_wait_ms, sv->o.affinity_ttl_s, sv->o.affinity_slack, 0};
        if (t - sv->last_takeover_ms >= sv->o.affinity_wait_ms / 4) {
            sv->last_takeover_ms = t;
            a.takeover = 1;
        }
        jobops_read_lanes_affinity(&c, &kb, &sv->keys, sv->o.model_name, sv->o.consumer, n, first, &a);
    } else {
        jobops_read_lanes(&c, &kb, &sv->keys, sv->o.model_name, sv->o.consumer, n, first);
    }
    redisReply *r = svc_call(sv, &c, err);
    if (!r) {
        if (strstr(err->msg, "NOGROUP")) { /* a group was deleted under us: make them again */
            jobops_group_create(&c, &kb, &sv->keys, sv->o.model_name);
            freeReplyObject(svc_call(sv, &c, err));
            return LLMQ_OK;
        }
        return err->code;
    }
    size_t got[KEYS_LANES] = {0}, total = 0;
    int more[KEYS_LANES] = {0};
    if (r->type == REDIS_REPLY_ARRAY && r->elements == (size_t)KEYS_LANES + 1 + 2 * aff &&
        r->element[KEYS_LANES]->type == REDIS_REPLY_ARRAY && r->element[KEYS_LANES]->elements == KEYS_LANES) {
        for (int l = 0; l < KEYS_LANES; l++) {
            const redisReply *m = r->element[KEYS_LANES]->element[l];
            more[l] = m->type == REDIS_REPLY_INTEGER && m->integer > 0;
            got[l] = r->element[l]->type == REDIS_REPLY_ARRAY ? r->element[l]->elements : 0;
            total += got[l];
        }
        if (first >= 0 && got[first])
            log_debug("lane %s: one entry taken before the higher lanes (starvation guard, passed over %d times)",
                      keys_lane_name(first), sv->lane_skips[first]);
        count_skips(sv, got, more);
        if (aff) { /* the script's tally: {parked, taken over, claimed, hits} */
            const redisReply *y = r->element[KEYS_LANES + 2];
            metric *to[4] = {sv->m_aff_parked, sv->m_aff_takeovers, sv->m_aff_claimed, sv->m_aff_hits};
            for (size_t i = 0; y->type == REDIS_REPLY_ARRAY && i < 4 && i < y->elements; i++)
                if (y->element[i]->type == REDIS_REPLY_INTEGER && y->element[i]->integer > 0)
                    metric_inc(to[i], (double)y->element[i]->integer);
        }
        for (int l = 0; aff && l < KEYS_LANES; l++) {
            const redisReply *last = r->element[KEYS_LANES + 1];
            sv->lane_last[l][0] = '\0';
            if (last->type == REDIS_REPLY_ARRAY && last->elements == KEYS_LANES &&
                last->element[l]->type == REDIS_REPLY_STRING && last->element[l]->len < sizeof sv->lane_last[l])
                memcpy(sv->lane_last[l], last->element[l]->str, last->element[l]->len + 1);
        }
        for (int l = 0; l < KEYS_LANES && !st; l++)
            if (got[l]) st = admit_entries(sv, r->element[l], l, err);
    } else {
        log_error("internal: unexpected reply to the lane read: %s", r->type == REDIS_REPLY_ERROR ? r->str : "?");
    }
    freeReplyObject(r);
    if (st || total || !block) return st;
    if (aff) {
        /* wait for a new entry on any lane without reading it for the group:
         * the next pull passes it through the keys (and a parked one, which
         * wakes no reader, is seen at the latest after block_ms) */
        jobops_wait_lanes(&c, &kb, &sv->keys, sv->o.model_name, sv->lane_last, sv->o.block_ms);
        r = svc_call(sv, &c, err);
        if (!r) return err->code;
        int woke = r->type == REDIS_REPLY_ARRAY;
        freeReplyObject(r);
        return woke ? svc_pull(sv, 0, err) : LLMQ_OK;
    }
    /* nothing waits on any lane: block until one gets an entry (only that
     * lane's entries come back, so the lanes' order does not matter here) */
    jobops_read_all(&c, &kb, &sv->keys, sv->o.model_name, sv->o.consumer, n, sv->o.block_ms, ">");
    r = svc_call(sv, &c, err);
    if (!r) return strstr(err->msg, "NOGROUP") ? LLMQ_OK : err->code; /* made again at the next read */
    st = admit_streams(sv, r, err);
    freeReplyObject(r);
    return st;
}
