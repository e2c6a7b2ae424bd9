/*
 * synth.h — the synthetic engine: a worker with every part real but the
 * forward pass, for scale tests of the coordination layer (issue 25,
 * tools/fleet_sim.py, docs/benchmarks.md "Coordination ceiling").
 *
 * `llmq-worker --backend synthetic --synthetic-rate R` (or the backend name
 * "synthetic:R" anywhere a backend is named: runtime_opts.backend, `llmq
 * generate --backend`) builds the runtime as usual (worker/engine/runtime.h)
 * except that the model directory gives only config.json (and the tokenizer
 * beside it): no weights are read, no activation or KV buffers exist, and
 * eng_step runs synth_step instead of the forward pass.  Admission, the
 * scheduler (batching, prefill chunks, KV blocks, preemption), the sampler,
 * the detokenizer and all of the Redis traffic stay the real ones, so many
 * worker groups fit on one machine against one Redis.
 *
 * A step sleeps 1/R seconds, whatever its size: every running sequence gets
 * R tokens a second at most, the batch is --max-num-seqs as usual, and what
 * the worker's own loop adds (its Redis round trip) comes on top, as it does
 * after a GPU's step.
 *
 * Tokens are a function of the sequence's ids alone, so that any text
 * decodes, the same prompt gives the same answer on any worker, and a job
 * resumed after kill -9 (recomputed from prompt + the ids already out)
 * continues with exactly the tokens it would have had.  With mix() the
 * splitmix64 finalizer
 *     mix(z) = z ^= z >> 30, z *= 0xbf58476d1ce4e5b9, z ^= z >> 27,
 *              z *= 0x94d049bb133111eb, z ^ (z >> 31)
 * position p holding id t gets the prefix hash
 *     h(-1) = 0,  h(p) = mix(h(p-1) ^ (t << 32 | p) + 0x9e3779b97f4a7c15)
 * (unsigned 64-bit arithmetic), and the token after position p is
 *     ids[h(p) mod n]
 * where ids are, in increasing order, the n ids below vocab_size that are
 * neither an EOS id of config.json (a sequence runs to max_tokens) nor a
 * special token, and whose bytes alone (tok_id_bytes) are non-empty valid
 * UTF-8 without control characters (below 0x20, 0x7f): every token is then
 * text of its own, so each step's chunk reaches the client as one event and
 * inter-token latencies measure steps, not bytes held for a character's
 * rest.  Without a tokenizer.json in the model directory, ids are every id
 * but the EOS ones.  The hashes
 * are the synthetic "KV cache": one per cached position, held in the KV
 * block's slots, so they follow the scheduler's block tables (preemption,
 * shared prefixes) as real K/V rows do.  The logits row of a sequence is 0
 * at that token and -1e9 elsewhere: the sampler chooses it whatever the
 * sampling parameters (penalties, temperature, seed), and logprobs say 0.
 * Writing that row and the sampler's pass over it are the CPU a token
 * costs here (vocab_size floats each): a small-vocabulary model directory
 * (stories260K, 512 ids) keeps a worker's share of the machine small when
 * many share one.
 */
#ifndef LLMQ_SYNTH_H
#define LLMQ_SYNTH_H

#include "common/status.h"
#include "kernels/backend.h"
#include "worker/engine/engine.h"
#include "worker/model/model.h"
#include "worker/tokenizer/tokenizer.h"

#define SYNTH_BACKEND "synthetic"
#define SYNTH_DEFAULT_RATE 50.0 /* tokens per second per sequence without ":R" */

/* Whether name is the synthetic backend: returns 1 and sets *rate for
 * "synthetic" (SYNTH_DEFAULT_RATE) or "synthetic:R" (R > 0 tokens/s per
 * sequence), 0 for any other name, -1 (err set) for "synthetic:" with a
 * bad rate. */
int synth_backend_parse(const char *name, double *rate, llmq_err *err);

/* The runtime's backend for a synthetic engine of rate tokens/s per
 * sequence: it computes nothing and has only memory ops (alloc, free,
 * upload, download, sync) and destroy; its name is "synthetic", act_dt F32.
 * An engine created over a model on it is a synthetic one (eng_create asks
 * synth_backend_rate).  Caller destroys it (llmq_backend_destroy). */
llmq_backend *synth_backend_create(double rate, llmq_err *err);
/* be's rate when it is a synthetic backend, else 0 (NULL too). */
double synth_backend_rate(const llmq_backend *be);
/* Choose the ids the synthetic engine emits (see above) for cfg and tok
 * (NULL: no tokenizer): runtime_create calls it once the tokenizer is in,
 * before any step.  LLMQ_ERR_NOMEM only. */
llmq_status synth_backend_set_vocab(llmq_backend *be, const model_config *cfg, const tokenizer *tok, llmq_err *err);

/* A model of dir's config.json with no weights (weight_bytes 0), the whole
 * model on one rank, on be.  model_destroy frees it. */
llmq_status synth_model_load(model **out, const char *dir, llmq_backend *be, llmq_err *err);

typedef struct synth synth;

/* For an engine of o's limits (n_blocks > 0: --memory-utilization does not
 * apply) over m (not owned; it must outlive the synth), on a synthetic
 * backend (m->be): its rate and ids. */
llmq_status synth_create(synth **out, const model *m, const eng_opts *o, llmq_err *err);
/* NULL is a no-op. */
void synth_destroy(synth *y);

/* eng_step's contract (engine.h), limits checked the same way: logits gets
 * a row for each sequence with want_logits, in order. */
llmq_status synth_step(synth *y, const eng_seq *seqs, int n_seqs, float *logits, llmq_err *err);

#endif
