/*
 * engine.h — the forward pass: one call runs one step of a batch of
 * sequences (prefill chunks and decodes mixed) over a paged KV cache.
 *
 * The engine owns the KV cache (n_blocks blocks of BLOCK_SIZE tokens, every
 * layer) and the activation buffers, sized once at creation for at most
 * max_tokens tokens and max_seqs sequences per step: nothing is allocated
 * per step.  It knows nothing of scheduling: the caller (worker/engine/sched.c)
 * decides which tokens run, and hands each sequence's block table.
 */
#ifndef LLMQ_ENGINE_H
#define LLMQ_ENGINE_H

#include <stdint.h>

#include "kernels/backend.h"
#include "common/comm.h"
#include "worker/model/model.h"

#define ENG_BLOCK_SIZE 16

typedef struct engine engine;

/* One sequence's share of a step. */
typedef struct eng_seq {
    const int32_t *tokens;      /* [n_tokens] token ids to run */
    int n_tokens;               /* >= 1 */
    int start_pos;              /* position of tokens[0]; earlier positions are cached */
    const int32_t *block_table; /* block ids covering positions [0, start_pos + n_tokens) */
    int n_blocks;               /* entries in block_table */
    int want_logits;            /* 1: return logits of the last token */
} eng_seq;

typedef struct eng_opts {
    int n_blocks;     /* KV blocks in the pool */
    int max_tokens;   /* tokens per step at most */
    int max_seqs;     /* sequences per step at most */
    llmq_comm *comm;  /* tensor-parallel group (not owned); NULL = one rank.
                         Its world/rank must match the model's shard. */
    double mem_util;  /* n_blocks <= 0: as many blocks as fit in this fraction
                         (0, 1] of the device's memory, counting what is in
                         use once the weights and the step buffers are
                         allocated (be_ops.mem_info; the smallest over the
                         ranks of a group).  eng_n_blocks says how many. */
    int pad_tables;   /* 1: decode steps pad their block tables to a power
                         of two, as they do anyway on a backend with step
                         graphs (be_ops.graph_begin); the results are the same
                         bits (tests check that on the CPU) */
    const char *kv_dtype; /* the KV cache's element type (--kv-dtype): "auto"
                         (or NULL), "f32", "f16", "bf16"; see eng_kv_dtype */
} eng_opts;

llmq_status eng_create(engine **out, const model *m, const eng_opts *opts, llmq_err *err);
void eng_destroy(engine *e);

/* Bytes of KV cache one token takes across all layers (what a block costs / 16),
 * for a cache of element type kv_dt (the backend's be->kv_dt). */
size_t eng_kv_bytes_per_token(const model_config *cfg, llmq_dtype kv_dt);

/* The KV cache's element type for --kv-dtype `name` ("auto" or NULL, "f32",
 * "f16", "bf16").  kv16: the backend takes 16-bit KV beside its activation
 * type (be_ops.kv_dtypes: the CPU backends).  auto there is the type the
 * model's weights are stored in (`weights`): BF16 or F16, and F32 for an F32
 * checkpoint; on a backend without (CUDA) it is the activation type act_dt,
 * and any other choice is refused.  LLMQ_ERR_INVALID for an unknown name, LLMQ_ERR_UNSUPPORTED for
 * one the backend lacks. */
llmq_status eng_kv_dtype(const char *name, int kv16, llmq_dtype act_dt, llmq_dtype weights, llmq_dtype *out,
                         llmq_err *err);

/*
 * Run one step.  logits receives, for each sequence with want_logits (in
 * order), vocab_size floats (host memory).  Returns LLMQ_ERR_INVALID when the
 * step breaks a limit (too many tokens, a block table too short, a block id
 * out of range); nothing is written to the cache in that case.
 */
llmq_status eng_step(engine *e, const eng_seq *seqs, int n_seqs, float *logits, llmq_err *err);

/* The limits eng_step checks (also the synthetic engine's): at most
 * o->max_seqs sequences and o->max_tokens tokens, positions within the
 * context and max_bt blocks, block ids below o->n_blocks, token ids in the
 * vocabulary.  Sets the step's tokens and its longest block table. */
llmq_status eng_step_check(const model_config *c, const eng_opts *o, int max_bt, const eng_seq *seqs, int n_seqs,
                           int *total_tokens, int *max_blocks, llmq_err *err);

/*
 * Tensor parallelism.  The leader (rank 0) calls eng_step as above: it first
 * broadcasts the step plan (token ids, positions, block tables, sequence
 * boundaries) to its peers, then every rank runs the same step on its
 * shard; row-parallel outputs are all-reduced, logits all-gathered.  Peers
 * call eng_serve, which loops on plans until the leader's eng_stop_peers
 * (returns LLMQ_OK) or a collective fails (the leader died or stalled:
 * returns the communicator's error, naming the rank).
 */
llmq_status eng_serve(engine *e, llmq_err *err);
/* Leader: tell the peers to return from eng_serve. */
llmq_status eng_stop_peers(engine *e, llmq_err *err);

const model *eng_model(const engine *e);
int eng_n_blocks(const engine *e);

#endif
