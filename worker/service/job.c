/*
 * job.c — a job while it runs: the scheduler's callbacks (svc_on_token,
 * svc_on_finish) collect each step's ids and logprobs, and the ids go
 * through the streaming detokenizer and the stop-string holdback into the
 * text of the next chunk.  Also the table of token pieces that `lp` points
 * into.
 *
 * Invariants
 *  - j->pending holds exactly the text that is final (no half character,
 *    nothing a stop string may still claim).
 *  - The step arrays keep their capacity between steps: once a step's worth
 *    fits, nothing is allocated per token.
 */
#include "worker/service/service_internal.h"

#include <stdlib.h>
#include <string.h>
#include "common/log.h"
#include "common/metrics.h"

job *svc_job_find(service *sv, const char *id) {
    for (job *j = sv->jobs; j; j = j->next)
        if (!strcmp(j->id, id)) return j;
    return NULL;
}

/* ------------------------------------------------------------ pieces */

void svc_pieces_deinit(piece_table *p) {
    tok_text_deinit(&p->text);
    free(p->off);
    free(p->len);
    memset(p, 0, sizeof *p);
}

llmq_status svc_pieces_build(piece_table *p, const tokenizer *tok, int n, llmq_err *err) {
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
        svc_pieces_deinit(p);
        return llmq_err_set(err, st, "token pieces for logprobs: out of memory");
    }
    p->n = n;
    return LLMQ_OK;
}

/* ------------------------------------------------------------ callbacks */

/* The token ends the sequence (EOS or a stop id): its text is not output. */
static int ends_sequence(const service *sv, const job *j, int32_t tok) {
    if (!j->s.ignore_eos && model_config_is_eos(&sv->rt->m->cfg, tok)) return 1;
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
void svc_job_text_push(service *sv, job *j, int32_t tok) {
    if (!j->has_ts || ends_sequence(sv, j, tok)) return;
    j->delta.len = 0;
    tok_stream_push(&j->ts, tok, &j->delta);
    job_text_feed(j, 0);
}

/* The sequence ended: release whatever the detokenizer and the stop
 * matcher still hold. */
void svc_job_text_finish(job *j) {
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

int64_t svc_job_arrival_ms(const job *j) { return strtoll(j->entry, NULL, 10); /* "<ms>-<seq>" */ }

void svc_on_token(seq *s, int32_t tok, void *ud) {
    service *sv = ud;
    job *j = s->user;
    int64_t t = now_ms();
    if (!j->first_token_ms) {
        j->first_token_ms = t;
        /* from arrival, as vLLM counts it: the time in the queue is part of
         * what the client waited (Redis' clock against ours: never below 0).
         * A resumed job (chunks already out, next_seq > 0) had its first
         * token under an earlier attempt. */
        int64_t ttft = t - svc_job_arrival_ms(j);
        if (j->next_seq == 0) metric_observe(sv->m_ttft, (ttft > 0 ? ttft : 0) / 1e3);
    } else {
        metric_observe(sv->m_itl, (t - j->last_token_ms) / 1e3);
    }
    j->last_token_ms = t;
    j->n_tokens_here++;
    metric_inc(sv->m_gen_tok, 1);
    if (j->error) return; /* ends at the next publish */
    if (j->n_step_ids == j->cap_step_ids && step_grow(j)) {
        /* a chunk without this id would shorten the output that a resume
         * replays: the job fails instead (svc_publish ends it) */
        j->error = "out of memory: the worker cannot hold the job's generated ids";
        return;
    }
    if (j->want_lp) {
        const sampler_logprobs *lp = &s->lp;
        proto_lp *e = &j->step_lp[j->n_step_ids];
        proto_token_lp *top = j->step_top ? j->step_top + (size_t)j->n_step_ids * s->logprobs : NULL;
        lp_token_set(sv, &e->tok, tok, lp->logprob);
        e->n_top = (size_t)lp->n_top;
        for (int k = 0; k < lp->n_top; k++) lp_token_set(sv, &top[k], lp->top_ids[k], lp->top_logprobs[k]);
    }
    j->step_ids[j->n_step_ids++] = tok;
    svc_job_text_push(sv, j, tok);
}

void svc_on_finish(seq *s, void *ud) {
    (void)ud;
    job *j = s->user;
    j->done = 1;
    /* the scheduler ended it because its matcher failed (guide.h): say so */
    if (s->finish == FINISH_ERROR && !j->error && s->guide && guide_matcher_error(s->guide)[0]) {
        log_warn("job %s: constraint: %s", j->id, guide_matcher_error(s->guide));
        j->error = "the output's constraint failed (llguidance's matcher; the worker's log has its message)";
    }
}

void svc_job_free(job *j) {
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
    freeReplyObject(j->admit_reply);
    free(j);
}

