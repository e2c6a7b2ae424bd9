/*
 * runtime.h — the pieces a process needs to run a model, assembled in one
 * place: backend -> model (this rank's shard) -> engine -> scheduler, and
 * the tokenizer beside them.  The worker service, `llmq generate`, `llmq
 * bench` and the peer ranks of a tensor-parallel group all build theirs
 * here, each asking only for what it uses (a peer has no scheduler and no
 * tokenizer; bench drives the engine itself).
 *
 * Ownership: runtime_create returns a heap object that owns every piece it
 * built; runtime_destroy frees them in reverse order (scheduler, engine,
 * model, tokenizer, backend).  The communicator, the options' strings and
 * the callbacks' context stay the caller's.
 */
#ifndef LLMQ_RUNTIME_H
#define LLMQ_RUNTIME_H

#include "common/comm.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "worker/engine/engine.h"
#include "worker/engine/sched.h"
#include "worker/model/model.h"
#include "worker/tokenizer/tokenizer.h"

typedef enum runtime_tok {
    RUNTIME_TOK_NONE = 0,   /* no tokenizer (token ids only) */
    RUNTIME_TOK_IF_PRESENT, /* load <model_dir>/tokenizer.json when there is one; rt->tok NULL otherwise */
} runtime_tok;

typedef struct runtime_opts {
    const char *backend;    /* "cpu", "cpu-ref", "cuda" (llmq_backend_create), or "synthetic[:RATE]":
                               the synthetic engine, config.json only (worker/engine/synth.h) */
    const char *model_dir;  /* Hugging Face model directory */
    llmq_comm *comm;        /* tensor-parallel group (not owned); NULL = one rank.  The model
                               loads shard comm->rank of comm->world and the engine joins it
                               (eng.comm is overridden with this). */
    model_load_opts load;   /* how the weights are held (all zeros: as stored) */
    eng_opts eng;           /* KV pool and step limits */
    int with_sched;         /* 1: a scheduler over the engine (a group's leader only) */
    sched_opts sched;       /* with_sched: its limits */
    sched_callbacks cb;     /* with_sched: its callbacks (cb.ud not owned) */
    runtime_tok tok;        /* whether to load the tokenizer */
} runtime_opts;

typedef struct runtime {
    llmq_backend *be;       /* the compute backend */
    model *m;               /* this rank's shard of the model, on be */
    engine *eng;            /* forward pass and KV cache over m */
    sched *sch;             /* continuous batching over eng; NULL without with_sched */
    tokenizer *tok;         /* NULL without one (see runtime_tok) */
} runtime;

/* Build everything o asks for.  On failure nothing is left allocated and
 * err says which piece failed and why ("model: ...", "engine: ..."). */
llmq_status runtime_create(runtime **out, const runtime_opts *o, llmq_err *err);
/* NULL is a no-op. */
void runtime_destroy(runtime *rt);

#endif
