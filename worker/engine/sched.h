/*
 * sched.h — continuous batching over the paged KV cache.
 *
 * The scheduler owns the KV block pool and a list of sequences.  Each call
 * of sched_step() plans one engine step under the per-step token budget:
 *   1. every running sequence in decode gets its one token;
 *   2. sequences still in prefill get chunks of their pending tokens, oldest
 *      first, as long as the budget lasts (chunked prefill);
 *   3. waiting sequences are admitted, highest priority first and oldest
 *      first within a priority, while there are free sequence slots, budget
 *      and KV blocks;
 * When a running sequence needs a block and none is free, the lowest
 * priority running sequence (the newest of those) is preempted: its blocks
 * are freed and it goes back to the front of its priority in the waiting
 * queue, to be recomputed from its prompt + generated tokens (recompute,
 * not swap).  Batch-invariant kernels (backend.h) make the
 * recomputed sequence continue exactly as it would have.
 *
 * Prefix caching (on unless sched_set_prefix_caching turns it off): the pool is a
 * prefix_cache (prefix_cache.h).  Each full block a sequence has computed
 * is published under the chained hash of its tokens (rooted at the
 * sequence's cache_salt); when a waiting sequence starts (new or resumed
 * after a preemption) it takes the longest run of cached blocks matching
 * its tokens and computes only the rest.  At least its last token is always
 * computed (the logits come from it), so a cached block is never written:
 * only whole blocks before the last token are taken.  Freed blocks stay
 * findable until they are reused, least recently freed first.
 *
 * After the forward pass every sequence whose pending tokens are all
 * computed samples its next token (under its constraint's mask, if it has
 * one); the scheduler finishes sequences on EOS, stop token ids, a complete
 * constraint, max_tokens or the context limit, frees their blocks and
 * reports them through the callbacks.  Sequences are owned by the caller.
 */
#ifndef LLMQ_SCHED_H
#define LLMQ_SCHED_H

#include <stdint.h>

#include "common/status.h"
#include "worker/engine/engine.h"
#include "worker/engine/guide.h"
#include "worker/engine/prefix_cache.h"
#include "worker/engine/sampler.h"

typedef enum seq_state { SEQ_WAITING = 0, SEQ_RUNNING, SEQ_FINISHED } seq_state;

typedef enum finish_reason {
    FINISH_NONE = 0,
    FINISH_STOP,      /* EOS, a stop token id or a stop string */
    FINISH_LENGTH,    /* max_tokens or the context limit */
    FINISH_CANCELLED, /* set by the caller through sched_finish() */
    FINISH_DEADLINE,
    FINISH_ERROR,
} finish_reason;

const char *finish_reason_name(finish_reason r);

#define SEQ_MAX_STOP_IDS 16

typedef struct seq {
    /* set by the caller before sched_add */
    int32_t *tokens;            /* [cap] prompt then generated ids; owned by the seq */
    int n_prompt;               /* prompt tokens */
    int n_tokens;               /* prompt + generated */
    int cap;
    int max_tokens;             /* generated tokens at most */
    int ignore_eos;
    int n_stop_ids;
    int32_t stop_ids[SEQ_MAX_STOP_IDS];
    sampling_params sp;
    int logprobs;               /* -1 (seq_init's default): none; n in 0..SAMPLER_MAX_LOGPROBS:
                                   fill lp for every sampled token, with the top n */
    int32_t priority;           /* higher is admitted first (the request's; seq_init: 0) */
    const char *cache_salt;     /* NULL, or a NUL-terminated salt that keys its prefix-cache
                                   blocks (only sequences with the same salt share them);
                                   borrowed: read by sched_add only */
    guide_matcher *guide;       /* NULL, or the constraint on the generated ids (guide.h), in step
                                   with them: each step samples under its mask and it consumes
                                   the token; its completion finishes the sequence ("stop").
                                   Owned by the seq (seq_deinit destroys it) */
    void *user;                 /* caller's context */
    /* scheduler state */
    seq_state state;
    finish_reason finish;
    int n_computed;             /* tokens whose K/V are in the cache */
    int32_t *blocks;            /* [blocks_cap] KV block table */
    int n_blocks, blocks_cap;
    uint64_t order;             /* admission order (preemption picks the largest) */
    int n_preempted;            /* times this sequence was preempted */
    int step_tokens;            /* tokens scheduled in the current step */
    int n_cached;               /* prompt tokens found in the prefix cache when it first
                                   started (usage.prompt_tokens_details.cached_tokens) */
    int started;                /* it has started once (n_cached is final) */
    pc_hash root;               /* its chain's start (pc_root of cache_salt) */
    pc_hash *bhash;             /* [cap / ENG_BLOCK_SIZE] chained hashes of its full blocks */
    int n_hashed;               /* entries of bhash computed */
    int n_published;            /* blocks of its table published or taken from the cache */
    sampler_logprobs lp;        /* with logprobs >= 0: those of the token just sampled,
                                   valid during on_token (from the raw logits) */
    struct seq *next;           /* intrusive list link (waiting / running) */
} seq;

/* Initialise a sequence for prompt ids; returns -1 on allocation failure. */
int seq_init(seq *s, const int32_t *prompt, int n_prompt, int max_tokens, const sampling_params *sp);
void seq_deinit(seq *s);
int seq_n_generated(const seq *s);

typedef struct sched_opts {
    int max_seqs;    /* running sequences at most */
    int max_tokens;  /* tokens per step (budget) */
} sched_opts;

typedef struct sched_callbacks {
    void (*on_token)(seq *s, int32_t token, void *ud);  /* a token was appended (s->lp holds its
                                                           logprobs when s->logprobs >= 0) */
    void (*on_finish)(seq *s, void *ud);                /* s->finish is set; s is out of the scheduler */
    void *ud;
} sched_callbacks;

typedef struct sched sched;

llmq_status sched_create(sched **out, engine *e, const sched_opts *opts, const sched_callbacks *cb, llmq_err *err);
void sched_destroy(sched *s);

/* Prefix caching is on from creation; off, every prompt is computed in
 * full (llmq-worker / llmq generate --no-prefix-caching).  Call before the
 * first sched_add. */
void sched_set_prefix_caching(sched *s, int on);

/* Tests: fn sees the raw logits of every row a token is sampled from,
 * before the sampler (NULL: none). */
typedef void (*sched_logits_fn)(seq *q, const float *logits, int vocab, void *ud);
void sched_set_logits_hook(sched *s, sched_logits_fn fn, void *ud);

/* Queue a sequence (state WAITING). Refuses a prompt that cannot fit the
 * context or the KV pool (LLMQ_ERR_INVALID with a message). */
llmq_status sched_add(sched *s, seq *q, llmq_err *err);

/* Take a sequence out (cancel, deadline): frees its blocks, sets finish,
 * calls on_finish. No-op for a finished sequence. */
void sched_finish(sched *s, seq *q, finish_reason why);

/* Run one step. Returns LLMQ_OK with *did_work = 0 when nothing is queued. */
llmq_status sched_step(sched *s, int *did_work, llmq_err *err);

int sched_n_running(const sched *s);
int sched_n_waiting(const sched *s);
int sched_free_blocks(const sched *s);
int sched_total_blocks(const sched *s);
/* How many new sequences of prompt length n the scheduler could start now. */
int sched_admit_capacity(const sched *s, int prompt_len);
uint64_t sched_n_preemptions(const sched *s);

/* Prefix cache counters since creation, in prompt tokens of sequences at
 * their first start: looked up (queries), found (hits); computed = queries -
 * hits.  Restarts after preemption apart, in tokens (prompt and generated)
 * to recompute: looked up, found.  And the blocks the cache holds now (free
 * or in use). */
typedef struct sched_cache_stats {
    uint64_t queries, hits;
    uint64_t preempted_queries, preempted_hits;
    int cached_blocks;
} sched_cache_stats;
void sched_cache_stats_get(const sched *s, sched_cache_stats *out);

#endif
