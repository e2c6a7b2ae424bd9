/*
 * dist.h — the random numbers of llmq-loadtest: a seeded generator, the
 * request length distributions (--prompt-tokens / --output-tokens) and the
 * inter-arrival times of the open loop.
 *
 * Invariants
 *  - Everything is a pure function of the seed: the same --seed gives the
 *    same lengths, prompts and arrival times (xoshiro256** seeded through
 *    splitmix64; no libc rand, no global state).
 *  - A length distribution only yields values in [1, LT_DIST_MAX].
 */
#ifndef LLMQ_LT_DIST_H
#define LLMQ_LT_DIST_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

#define LT_DIST_MAX 1000000  /* largest token count a distribution may give */
#define LT_DIST_FILE_MAX 10000000 /* entries of a length file */

/* xoshiro256**: 256 bits of state, period 2^256 - 1. */
typedef struct lt_rng {
    uint64_t s[4];
} lt_rng;

/* Seed from (seed, stream): independent streams for independent uses, so
 * that e.g. changing the arrival process leaves the lengths unchanged. */
void lt_rng_seed(lt_rng *g, uint64_t seed, uint64_t stream);
uint64_t lt_rng_next(lt_rng *g);
double lt_rng_unit(lt_rng *g);                    /* uniform in [0, 1) */
int64_t lt_rng_range(lt_rng *g, int64_t lo, int64_t hi); /* uniform in [lo, hi], lo <= hi */
double lt_rng_normal(lt_rng *g);                  /* standard normal */
/* Gamma(shape k > 0, scale theta > 0): mean k*theta, variance k*theta^2. */
double lt_rng_gamma(lt_rng *g, double shape, double scale);

typedef enum lt_dist_kind {
    LT_DIST_FIXED = 0,  /* "128" */
    LT_DIST_UNIFORM,    /* "uniform:64-512", both ends included */
    LT_DIST_FILE,       /* "file:PATH" or a path: one length per line, drawn at random */
} lt_dist_kind;

typedef struct lt_dist {
    lt_dist_kind kind;
    int lo, hi;          /* FIXED: lo == hi; UNIFORM: the range; FILE: min and max of the file */
    int *vals;           /* FILE: n_vals lengths (owned) */
    size_t n_vals;
    char desc[64];       /* "128", "uniform:64-512", "file:<name> (n=300)" for reports */
} lt_dist;

/* Parse spec (see lt_dist_kind); reads the file for FILE.  LLMQ_ERR_INVALID
 * (bad syntax, a value outside [1, LT_DIST_MAX]) or LLMQ_ERR_IO with err
 * naming the problem.  d is deinit'ed on failure. */
llmq_status lt_dist_parse(lt_dist *d, const char *spec, llmq_err *err);
void lt_dist_deinit(lt_dist *d);   /* d may be NULL; deinit twice is harmless */
int lt_dist_sample(const lt_dist *d, lt_rng *g);

/*
 * The time to the next arrival of the open loop, in seconds: gamma with
 * shape `burstiness` and mean 1/rate (vLLM's definition: burstiness 1 is a
 * Poisson process, lower is burstier, higher is more regular).  0 when the
 * rate is infinite (every request at once).
 */
double lt_arrival_gap(lt_rng *g, double rate, double burstiness);

#endif
