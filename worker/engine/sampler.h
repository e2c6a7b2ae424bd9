/*
 * sampler.h — turn a row of logits into the next token.
 *
 * Order of operations (as vLLM applies them):
 *   1. repetition_penalty over prompt + output tokens (logit > 0: divided,
 *      else multiplied), presence/frequency penalties over output tokens;
 *      then a constraint's mask (sampler_sample_masked): disallowed ids -inf;
 *   2. temperature 0 (or top_k 1): argmax, lowest id on ties; done;
 *   3. softmax(logits / temperature);
 *   4. top_k, then top_p (smallest set of most likely tokens whose mass
 *      reaches top_p), then min_p (drop tokens below min_p * max prob);
 *   5. draw one token from what is left, renormalised, with a uniform
 *      number from a counter-based generator keyed by (seed, position).
 * Because the draw depends only on (logits, params, seed, position) the same
 * request gives the same tokens whatever else is in the batch, and a resumed
 * job draws exactly what it would have drawn (docs/architecture.md,
 * "Invariants that make the system exact").
 */
#ifndef LLMQ_SAMPLER_H
#define LLMQ_SAMPLER_H

#include <stdint.h>

#include "common/protocol.h"

typedef struct sampling_params {
    float temperature;        /* 0 = greedy */
    int top_k;                /* 0 = off */
    float top_p;              /* 1 = off */
    float min_p;              /* 0 = off */
    float repetition_penalty; /* 1 = off */
    float presence_penalty;   /* 0 = off */
    float frequency_penalty;  /* 0 = off */
    uint64_t seed;
} sampling_params;

void sampling_params_default(sampling_params *p);

/* The sampling parameters of a request that proto_request_validate
 * accepted (common/protocol.h): what it leaves unset keeps
 * sampling_params_default's value; seed is the job's (the request's own,
 * else one from sampler_seed_draw).  Every front end that turns requests
 * into sequences (the worker, `llmq generate`) maps them here. */
void sampling_params_from_request(sampling_params *p, const proto_request *r, uint64_t seed);

/* A seed for a request that gives none, as the worker draws one at a job's
 * first admission: the wall clock in ms times 2^64/phi, xor rand() (which
 * the process seeds with its pid). */
uint64_t sampler_seed_draw(void);

/* Uniform double in [0, 1) from the counter-based generator. */
double sampler_uniform(uint64_t seed, uint64_t position);

typedef struct sampler sampler;

/* Scratch for one vocabulary size; one sampler serves any number of
 * sequences, one at a time. NULL on allocation failure. */
sampler *sampler_create(int vocab);
void sampler_destroy(sampler *s);

/*
 * Choose the token at `position` (its absolute position in the sequence).
 * logits [vocab] is modified in place.  history = prompt then output ids;
 * n_prompt of them are prompt.
 */
int32_t sampler_sample(sampler *s, const sampling_params *p, float *logits, const int32_t *history, int n_history,
                       int n_prompt, uint64_t position);

/*
 * The same under a constraint: allow [vocab / 32 rounded up] has bit (id %
 * 32) of word (id / 32) set for each id that may come next (guide.h).  The
 * others get -inf after the penalties, before temperature and the
 * filters, so that what is left is drawn as sampler_sample draws (the same
 * uniform at the same position).  allow NULL: sampler_sample.  At least one
 * id must be allowed.
 */
int32_t sampler_sample_masked(sampler *s, const sampling_params *p, float *logits, const uint32_t *allow,
                              const int32_t *history, int n_history, int n_prompt, uint64_t position);

/* ------------------------------------------------------------ logprobs */

#define SAMPLER_MAX_LOGPROBS 20  /* alternatives per token at most (OpenAI's bound) */

/* Log-probabilities of one generated token (OpenAI `logprobs`). */
typedef struct sampler_logprobs {
    double logprob;                              /* of the sampled token */
    int n_top;                                   /* entries of top_ids / top_logprobs */
    int32_t top_ids[SAMPLER_MAX_LOGPROBS];       /* the n_top most likely ids, most likely
                                                    first; equal logits: lower id first */
    double top_logprobs[SAMPLER_MAX_LOGPROBS];
} sampler_logprobs;

/*
 * log_softmax of a row of RAW logits [vocab] (as the model gave them: before
 * penalties and temperature, which is what vLLM returns by default and what
 * says how likely the model found a token), for `token` and the n_top (<=
 * SAMPLER_MAX_LOGPROBS) most likely ids.  Stable: the max is subtracted before
 * exponentiating and the sum is accumulated in double.  One pass over the row
 * plus a window of n_top for the selection; nothing is allocated.
 */
void sampler_logprobs_compute(const float *logits, int vocab, int32_t token, int n_top, sampler_logprobs *out);

#endif
