/*
 * sched.c — continuous batching with chunked prefill and preemption by
 * recompute (see sched.h for the policy).
 *
 * Invariants:
 *  - running[] holds RUNNING sequences in admission order (oldest first);
 *    each has n_computed < n_tokens (at least one token pending).
 *  - the waiting list is ordered by priority, highest first, and FIFO
 *    within a priority, except that preempted sequences go back to the
 *    front of their priority (oldest first) so they resume before newer
 *    work of the same priority.
 *  - a sequence's blocks cover positions [0, n_blocks * 16); a block is
 *    referenced by the block tables that hold it (shared when taken from
 *    the prefix cache) or free in the pool (prefix_cache.h);
 *  - a sequence's first n_published blocks are full, computed and
 *    published (or taken from the cache); blocks it shares are never
 *    written: it writes only at positions >= n_computed, and a cache hit
 *    leaves n_computed at the end of the shared run.
 */
#include "worker/engine/sched.h"

#include <stdlib.h>
#include <string.h>

struct sched {
    engine *eng;
    const model_config *cfg;
    sched_opts opts;
    sched_callbacks cb;
    sampler *smp;
    prefix_cache *pc;     /* the KV block pool (and its prefix cache) */
    int n_total;
    uint64_t pc_queries, pc_hits, pc_pre_queries, pc_pre_hits; /* sched_cache_stats */
    sched_logits_fn logits_fn;    /* sched_set_logits_hook */
    void *logits_ud;
    seq **running;        /* [max_seqs] oldest first */
    int n_running;
    seq *wait_head, *wait_tail;
    int n_waiting;
    uint64_t next_order;
    uint64_t preemptions;
    /* per-step scratch, sized at creation */
    seq **plan;           /* [max_seqs] */
    int n_plan;
    eng_seq *eseqs;       /* [max_seqs] */
    float *logits;        /* [max_seqs * vocab] */
    float *raw;           /* [vocab] a row before the sampler's penalties change it
                             (only copied for sequences that asked for logprobs) */
    uint32_t *mask;       /* [guide_mask_words(vocab)] a constrained sequence's allowed ids */
};

const char *finish_reason_name(finish_reason r) {
    switch (r) {
    case FINISH_NONE: return "none";
    case FINISH_STOP: return "stop";
    case FINISH_LENGTH: return "length";
    case FINISH_CANCELLED: return "cancelled";
    case FINISH_DEADLINE: return "deadline";
    case FINISH_ERROR: return "error";
    }
    return "?";
}

/* ---------------------------------------------------------------- seq */

int seq_init(seq *s, const int32_t *prompt, int n_prompt, int max_tokens, const sampling_params *sp) {
    memset(s, 0, sizeof *s);
    s->cap = n_prompt + (max_tokens > 0 ? max_tokens : 0) + 1;
    s->tokens = malloc((size_t)s->cap * sizeof *s->tokens);
    if (!s->tokens) return -1;
    if (n_prompt > 0) memcpy(s->tokens, prompt, (size_t)n_prompt * sizeof *prompt);
    s->n_prompt = s->n_tokens = n_prompt;
    s->max_tokens = max_tokens;
    s->logprobs = -1;
    if (sp) s->sp = *sp;
    else sampling_params_default(&s->sp);
    return 0;
}

void seq_deinit(seq *s) {
    if (!s) return;
    free(s->tokens);
    guide_matcher_destroy(s->guide);
    s->guide = NULL;
    free(s->blocks);
    free(s->bhash);
    s->tokens = NULL;
    s->blocks = NULL;
    s->bhash = NULL;
}

int seq_n_generated(const seq *s) { return s->n_tokens - s->n_prompt; }

/* ---------------------------------------------------------------- lifecycle */

llmq_status sched_create(sched **out, engine *e, const sched_opts *o, const sched_callbacks *cb, llmq_err *err) {
    if (o->max_seqs <= 0 || o->max_tokens < o->max_seqs)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "scheduler: need 0 < max_seqs (%d) <= max_tokens (%d)",
                            o->max_seqs, o->max_tokens);
    sched *s = calloc(1, sizeof *s);
    if (!s) return llmq_err_set(err, LLMQ_ERR_NOMEM, "scheduler: out of memory");
    s->eng = e;
    s->cfg = &eng_model(e)->cfg;
    s->opts = *o;
    if (cb) s->cb = *cb;
    s->n_total = eng_n_blocks(e);
    s->pc = pc_create(s->n_total, 1);
    s->running = calloc((size_t)o->max_seqs, sizeof *s->running);
    s->plan = calloc((size_t)o->max_seqs, sizeof *s->plan);
    s->eseqs = calloc((size_t)o->max_seqs, sizeof *s->eseqs);
    s->logits = malloc((size_t)o->max_seqs * s->cfg->vocab_size * sizeof *s->logits);
    s->raw = malloc((size_t)s->cfg->vocab_size * sizeof *s->raw);
    s->mask = malloc(guide_mask_words(s->cfg->vocab_size) * sizeof *s->mask);
    s->smp = sampler_create(s->cfg->vocab_size);
    if (!s->pc || !s->running || !s->plan || !s->eseqs || !s->logits || !s->raw || !s->smp || !s->mask) {
        sched_destroy(s);
        return llmq_err_set(err, LLMQ_ERR_NOMEM, "scheduler: out of memory");
    }
    *out = s;
    return LLMQ_OK;
}

void sched_destroy(sched *s) {
    if (!s) return;
    pc_destroy(s->pc);
    free(s->running);
    free(s->plan);
    free(s->eseqs);
    free(s->logits);
    free(s->raw);
    free(s->mask);
    sampler_destroy(s->smp);
    free(s);
}

int sched_n_running(const sched *s) { return s->n_running; }
int sched_n_waiting(const sched *s) { return s->n_waiting; }
int sched_free_blocks(const sched *s) { return pc_n_free(s->pc); }
int sched_total_blocks(const sched *s) { return s->n_total; }
uint64_t sched_n_preemptions(const sched *s) { return s->preemptions; }

void sched_set_prefix_caching(sched *s, int on) { pc_set_caching(s->pc, on); }

void sched_set_logits_hook(sched *s, sched_logits_fn fn, void *ud) {
    s->logits_fn = fn;
    s->logits_ud = ud;
}

void sched_cache_stats_get(const sched *s, sched_cache_stats *out) {
    out->queries = s->pc_queries;
    out->hits = s->pc_hits;
    out->preempted_queries = s->pc_pre_queries;
    out->preempted_hits = s->pc_pre_hits;
    out->cached_blocks = pc_n_cached(s->pc);
}

static int blocks_for(int tokens) { return (tokens + ENG_BLOCK_SIZE - 1) / ENG_BLOCK_SIZE; }

int sched_admit_capacity(const sched *s, int prompt_len) {
    int slots = s->opts.max_seqs - s->n_running - s->n_waiting;
    if (slots <= 0) return 0;
    int by_blocks = pc_n_free(s->pc) / blocks_for(prompt_len + 1);
    return by_blocks < slots ? by_blocks : slots;
}

/* ---------------------------------------------------------------- lists */

/* Insert q before the first waiting sequence that `before` says it goes
 * ahead of (at the tail when none). */
static void wait_insert(sched *s, seq *q, int (*before)(const seq *q, const seq *w)) {
    seq **pp = &s->wait_head;
    while (*pp && !before(q, *pp)) pp = &(*pp)->next;
    q->next = *pp;
    if (!*pp) s->wait_tail = q;
    *pp = q;
    s->n_waiting++;
}

static int ahead_as_new(const seq *q, const seq *w) { return q->priority > w->priority; }
static int ahead_as_preempted(const seq *q, const seq *w) { return q->priority >= w->priority; }

/* A new sequence: after every waiting one of its priority or higher. */
static void wait_push_back(sched *s, seq *q) { wait_insert(s, q, ahead_as_new); }

/* A preempted one (or one that could not start): the front of its priority. */
static void wait_push_front(sched *s, seq *q) { wait_insert(s, q, ahead_as_preempted); }

static seq *wait_pop_front(sched *s) {
    seq *q = s->wait_head;
    if (!q) return NULL;
    s->wait_head = q->next;
    if (!s->wait_head) s->wait_tail = NULL;
    q->next = NULL;
    s->n_waiting--;
    return q;
}

static void wait_remove(sched *s, seq *q) {
    seq **pp = &s->wait_head, *prev = NULL;
    while (*pp && *pp != q) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp) return;
    *pp = q->next;
    if (s->wait_tail == q) s->wait_tail = prev;
    q->next = NULL;
    s->n_waiting--;
}

static void running_remove(sched *s, seq *q) {
    for (int i = 0; i < s->n_running; i++)
        if (s->running[i] == q) {
            memmove(&s->running[i], &s->running[i + 1], (size_t)(s->n_running - i - 1) * sizeof *s->running);
            s->n_running--;
            return;
        }
}

static void plan_remove(sched *s, seq *q) {
    for (int i = 0; i < s->n_plan; i++)
        if (s->plan[i] == q) {
            memmove(&s->plan[i], &s->plan[i + 1], (size_t)(s->n_plan - i - 1) * sizeof *s->plan);
            s->n_plan--;
            return;
        }
}

/* Back to the pool, last block first: the pool reuses the least recently
 * freed first, so a sequence's tail goes before its (more shareable) head. */
static void release_blocks(sched *s, seq *q) {
    for (int i = q->n_blocks - 1; i >= 0; i--) pc_release(s->pc, q->blocks[i]);
    q->n_blocks = 0;
    q->n_computed = 0;
    q->n_published = 0;
}

/* Room in q's block table for n blocks; -1 when out of memory. */
static int grow_table(seq *q, int n) {
    if (n <= q->blocks_cap) return 0;
    int cap = n > 2 * q->blocks_cap ? n : 2 * q->blocks_cap;
    int32_t *nb = realloc(q->blocks, (size_t)cap * sizeof *nb);
    if (!nb) return -1;
    q->blocks = nb;
    q->blocks_cap = cap;
    return 0;
}

/* ---------------------------------------------------------------- prefix cache */

/* The chained hash of q's full block i (each computed once: the tokens of
 * a full block never change). */
static const pc_hash *block_hash(sched *s, seq *q, int i) {
    for (; q->n_hashed <= i; q->n_hashed++) {
        const int k = q->n_hashed;
        q->bhash[k] = pc_block_hash(s->pc, k ? &q->bhash[k - 1] : &q->root, q->tokens + (size_t)k * ENG_BLOCK_SIZE);
    }
    return &q->bhash[i];
}

/* A starting sequence (no blocks) takes the longest run of cached blocks
 * that match its tokens, up to the block before its last token (which
 * must run for the logits, and whose block it writes), and starts
 * computing after them.  Returns the blocks taken. */
static int take_cached(sched *s, seq *q) {
    if (!pc_caching(s->pc) || q->n_blocks) return 0;
    const int max = (q->n_tokens - 1) / ENG_BLOCK_SIZE;
    if (max <= 0 || grow_table(q, max)) return 0;
    int i = 0;
    for (; i < max; i++) {
        const pc_hash *h = block_hash(s, q, i);
        const int32_t b = pc_take(s->pc, h, i ? &q->bhash[i - 1] : &q->root, q->tokens + (size_t)i * ENG_BLOCK_SIZE);
        if (b < 0) break;
        q->blocks[q->n_blocks++] = b;
    }
    q->n_published = i;
    q->n_computed = i * ENG_BLOCK_SIZE;
    return i;
}

/* Publish the blocks of q that a step has just filled and computed. */
static void publish_computed(sched *s, seq *q) {
    if (!pc_caching(s->pc)) return;
    const int full = q->n_computed / ENG_BLOCK_SIZE;
    for (int i = q->n_published; i < full; i++)
        pc_publish(s->pc, q->blocks[i], block_hash(s, q, i), i ? &q->bhash[i - 1] : &q->root,
                   q->tokens + (size_t)i * ENG_BLOCK_SIZE);
    if (full > q->n_published) q->n_published = full;
}

/* ---------------------------------------------------------------- policy */

llmq_status sched_add(sched *s, seq *q, llmq_err *err) {
    const int ctx = s->cfg->max_position_embeddings;
    if (q->n_prompt <= 0) return llmq_err_set(err, LLMQ_ERR_INVALID, "the prompt is empty");
    if (q->n_prompt >= ctx)
        return llmq_err_set(err, LLMQ_ERR_INVALID,
                            "the prompt has %d tokens; the model's context is %d, which leaves no room to generate",
                            q->n_prompt, ctx);
    if (blocks_for(q->n_prompt + 1) > s->n_total)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "the prompt has %d tokens; the KV cache holds only %d",
                            q->n_prompt, s->n_total * ENG_BLOCK_SIZE);
    if (pc_caching(s->pc)) {
        pc_hash *h = realloc(q->bhash, ((size_t)q->cap / ENG_BLOCK_SIZE + 1) * sizeof *h);
        if (!h) return llmq_err_set(err, LLMQ_ERR_NOMEM, "scheduler: out of memory");
        q->bhash = h;
        q->root = pc_root(s->pc, q->cache_salt, q->cache_salt ? strlen(q->cache_salt) : 0);
    }
    q->n_hashed = q->n_published = 0;
    q->n_cached = q->started = 0;
    q->state = SEQ_WAITING;
    q->finish = FINISH_NONE;
    q->n_computed = 0;
    q->order = s->next_order++;
    wait_push_back(s, q);
    return LLMQ_OK;
}

static void preempt(sched *s, seq *v) {
    plan_remove(s, v);
    running_remove(s, v);
    release_blocks(s, v);
    v->state = SEQ_WAITING;
    v->step_tokens = 0;
    v->n_preempted++;
    s->preemptions++;
    wait_push_front(s, v);
}

/* The running sequence to preempt: the lowest priority, the newest of
 * those (the least work lost to the recompute among the least urgent). */
static seq *preempt_victim(const sched *s) {
    seq *v = NULL;
    for (int i = 0; i < s->n_running; i++)
        if (!v || s->running[i]->priority <= v->priority) v = s->running[i];
    return v;
}

/* Give q blocks for positions [0, upto). Preempts running sequences
 * (preempt_victim) when the pool is dry; returns 0 on success, -1 when q
 * itself had to go (it was the victim) or nothing could be freed. */
static int ensure_blocks(sched *s, seq *q, int upto, int may_preempt) {
    const int need = blocks_for(upto);
    if (grow_table(q, need)) return -1;
    while (q->n_blocks < need) {
        if (pc_n_free(s->pc) == 0) {
            if (!may_preempt) return -1;
            seq *victim = preempt_victim(s);
            if (!victim) return -1;
            if (victim == q) {
                preempt(s, q);
                return -1;
            }
            preempt(s, victim);
            continue;
        }
        q->blocks[q->n_blocks++] = pc_alloc(s->pc);
    }
    return 0;
}

static void finish_seq(sched *s, seq *q, finish_reason why) {
    if (q->state == SEQ_RUNNING) running_remove(s, q);
    else if (q->state == SEQ_WAITING) wait_remove(s, q);
    release_blocks(s, q);
    q->state = SEQ_FINISHED;
    q->finish = why;
    if (s->cb.on_finish) s->cb.on_finish(q, s->cb.ud);
}

void sched_finish(sched *s, seq *q, finish_reason why) {
    if (q->state == SEQ_FINISHED) return;
    finish_seq(s, q, why);
}

/* Plan the step into s->plan (sets step_tokens). */
static void plan_step(sched *s) {
    int budget = s->opts.max_tokens;
    s->n_plan = 0;
    for (int i = 0; i < s->n_running; i++) s->running[i]->step_tokens = 0;

    /* 1. decodes, oldest first */
    for (int i = 0; i < s->n_running && budget > 0; i++) {
        seq *q = s->running[i];
        if (q->n_tokens - q->n_computed != 1) continue;
        const int was_running = s->n_running;
        const int failed = ensure_blocks(s, q, q->n_computed + 1, 1);
        if (failed && q->state == SEQ_RUNNING) continue; /* out of memory for its table: skip a step */
        if (failed || s->n_running != was_running) {
            /* the running list changed (q or a victim before or after it
             * left): rescan (planned ones are skipped) */
            i = -1;
            budget = s->opts.max_tokens;
            for (int k = 0; k < s->n_plan; k++) budget -= s->plan[k]->step_tokens;
            continue;
        }
        if (q->step_tokens) continue;
        q->step_tokens = 1;
        s->plan[s->n_plan++] = q;
        budget--;
    }
    /* 2. prefill chunks of running sequences, oldest first */
    for (int i = 0; i < s->n_running && budget > 0; i++) {
        seq *q = s->running[i];
        int pending = q->n_tokens - q->n_computed;
        if (pending <= 1 || q->step_tokens) continue;
        int chunk = pending < budget ? pending : budget;
        const int was_running = s->n_running;
        const int failed = ensure_blocks(s, q, q->n_computed + chunk, 1);
        if (failed && q->state == SEQ_RUNNING) continue;
        if (failed || s->n_running != was_running) { /* as above: rescan */
            budget = s->opts.max_tokens;
            for (int k = 0; k < s->n_plan; k++) budget -= s->plan[k]->step_tokens;
            i = -1;
            continue;
        }
        q->step_tokens = chunk;
        s->plan[s->n_plan++] = q;
        budget -= chunk;
    }
    /* 3. admit waiting sequences while slots, budget and free blocks allow
     *    (after the blocks the prefix cache already holds for them) */
    while (s->wait_head && budget > 0 && s->n_running < s->opts.max_seqs) {
        seq *q = s->wait_head;
        const int hit = take_cached(s, q);
        int pending = q->n_tokens - q->n_computed;
        int chunk = pending < budget ? pending : budget;
        if (blocks_for(q->n_computed + chunk) - q->n_blocks > pc_n_free(s->pc)) {
            release_blocks(s, q); /* the cached ones stay findable; it tries again next step */
            break;
        }
        wait_pop_front(s);
        if (ensure_blocks(s, q, q->n_computed + chunk, 0)) { /* allocation failure: retry later */
            release_blocks(s, q);
            wait_push_front(s, q);
            break;
        }
        if (!q->started) { /* hit rate and usage count a sequence's first start only */
            q->started = 1;
            q->n_cached = hit * ENG_BLOCK_SIZE < q->n_prompt ? hit * ENG_BLOCK_SIZE : q->n_prompt;
            s->pc_queries += (uint64_t)q->n_prompt;
            s->pc_hits += (uint64_t)q->n_cached;
        } else { /* a restart after preemption: counted apart, as vLLM does, so that a sequence
                  * finding its own blocks again does not raise the hit rate */
            s->pc_pre_queries += (uint64_t)q->n_tokens;
            s->pc_pre_hits += (uint64_t)hit * ENG_BLOCK_SIZE;
        }
        q->state = SEQ_RUNNING;
        s->running[s->n_running++] = q;
        q->step_tokens = chunk;
        s->plan[s->n_plan++] = q;
        budget -= chunk;
    }
}

static int is_stop_id(const seq *q, int32_t tok) {
    for (int i = 0; i < q->n_stop_ids; i++)
        if (q->stop_ids[i] == tok) return 1;
    return 0;
}

llmq_status sched_step(sched *s, int *did_work, llmq_err *err) {
    *did_work = 0;
    if (!s->n_running && !s->wait_head) return LLMQ_OK;
    plan_step(s);
    if (s->n_plan == 0) return LLMQ_OK;
    *did_work = 1;

    for (int i = 0; i < s->n_plan; i++) {
        seq *q = s->plan[i];
        eng_seq *e = &s->eseqs[i];
        e->tokens = q->tokens + q->n_computed;
        e->n_tokens = q->step_tokens;
        e->start_pos = q->n_computed;
        e->block_table = q->blocks;
        e->n_blocks = q->n_blocks;
        e->want_logits = q->n_computed + q->step_tokens == q->n_tokens;
    }
    llmq_status st = eng_step(s->eng, s->eseqs, s->n_plan, s->logits, err);
    if (st) return st;

    const int V = s->cfg->vocab_size, ctx = s->cfg->max_position_embeddings;
    int row = 0;
    for (int i = 0; i < s->n_plan; i++) {
        seq *q = s->plan[i];
        q->n_computed += q->step_tokens;
        publish_computed(s, q);
        if (q->n_computed < q->n_tokens) continue;
        float *lg = s->logits + (size_t)row++ * V;
        if (s->logits_fn) s->logits_fn(q, lg, V, s->logits_ud);
        /* logprobs come from the model's raw distribution, and the sampler
         * applies penalties in place: keep the row first (only when asked). */
        if (q->logprobs >= 0) memcpy(s->raw, lg, (size_t)V * sizeof *lg);
        const uint32_t *allow = NULL;
        if (q->guide) { /* a matcher that allows nothing (or fails) ends the sequence, never a forced draw */
            if (guide_matcher_mask(q->guide, s->mask) <= 0) {
                finish_seq(s, q, FINISH_ERROR);
                continue;
            }
            allow = s->mask;
        }
        int32_t tok = sampler_sample_masked(s->smp, &q->sp, lg, allow, q->tokens, q->n_tokens, q->n_prompt,
                                            (uint64_t)q->n_tokens);
        if (q->logprobs >= 0) sampler_logprobs_compute(s->raw, V, tok, q->logprobs, &q->lp);
        if (q->n_tokens == q->cap) { /* cannot happen with cap = prompt + max_tokens + 1, but stay safe */
            finish_seq(s, q, FINISH_LENGTH);
            continue;
        }
        q->tokens[q->n_tokens++] = tok;
        const int guide_failed = q->guide && guide_matcher_consume(q->guide, tok);
        if (s->cb.on_token) s->cb.on_token(q, tok, s->cb.ud);
        if (guide_failed)
            finish_seq(s, q, FINISH_ERROR);
        else if ((!q->ignore_eos && model_config_is_eos(s->cfg, tok)) || is_stop_id(q, tok) ||
                 (q->guide && guide_matcher_is_stopped(q->guide)))
            finish_seq(s, q, FINISH_STOP);
        else if (seq_n_generated(q) >= q->max_tokens || q->n_tokens >= ctx)
            finish_seq(s, q, FINISH_LENGTH);
    }
    return LLMQ_OK;
}
