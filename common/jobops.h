/*
 * jobops.h — the Redis commands that create and change a job, written once
 * and sent by whoever needs them: the gateway (hiredis async), libllmq
 * (hiredis blocking) and the worker.  docs/protocol.md describes the same
 * commands in prose; this file is their only implementation.
 *
 * Each builder fills an rcmd (see rcmd.h: it borrows the caller's strings,
 * so keep them alive until the command is sent).  None of them talks to
 * Redis.  Job state transitions that must not race (cancel of a queued job
 * vs. a worker admitting it) are Lua scripts, so each runs atomically on the
 * job hash; both keys a script touches carry the same {id} hash tag.
 */
#ifndef LLMQ_JOBOPS_H
#define LLMQ_JOBOPS_H

#include <stdint.h>

#include "common/keys.h"
#include "common/protocol.h"
#include "common/rcmd.h"

/* Buffers for the key names a builder formats (it keeps pointers into them). */
typedef struct jobops_keys {
    char job[KEYS_MAX];       /* <P>job:{id} */
    char out[KEYS_MAX];       /* <P>job:{id}:out */
    char chan[KEYS_MAX];      /* <P>out:{id} */
    char req[KEYS_MAX];       /* <P>req:<model> */
    char cancel[KEYS_MAX];    /* <P>cancel */
} jobops_keys;

/*
 * Submission: the job hash first, then the stream entry, sent by the caller
 * inside MULTI ... EXEC (so a worker that reads the entry finds the hash):
 *   HSET <P>job:{id} state queued model <model> created <now_ms> attempts 0
 *   XADD <P>req:<model> * id <id> p <request msgpack>
 * Never trims the stream: queued jobs are not dropped to bound it.
 */
void jobops_submit(rcmd *hset, rcmd *xadd, jobops_keys *kb, const llmq_keys *k, const char *id, const char *model,
                   const void *payload, size_t payload_len, int64_t now_ms);

/* XGROUP CREATE <P>req:<model> workers 0 MKSTREAM  (BUSYGROUP error = exists). */
void jobops_group_create(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *model);

/*
 * Cancel (an EVAL), atomically on the job hash:
 *   no hash               → returns 0 (no such job)
 *   state queued          → state cancelled, finish_reason cancelled, finished,
 *                           cancel 1; XADD the final chunk (seq 0, finish
 *                           "cancelled", zero usage) to the output stream and
 *                           PUBLISH it; TTL result_ttl_s on both keys; → 2
 *   state running         → HSET cancel 1 (the worker ends it between steps) → 1
 *   any final state       → nothing → 3
 * In states 1 and 2 the id is also PUBLISHed on <P>cancel.  final_chunk is
 * the msgpack of the chunk to append (jobops_cancel_chunk builds it).
 */
void jobops_cancel(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *id, int64_t now_ms, int64_t result_ttl_s,
                   const void *final_chunk, size_t final_chunk_len);

/* The final chunk a cancel of a queued job appends (encoded into out). */
llmq_status jobops_cancel_chunk(proto_buf *out, llmq_err *err);

/* Results of the cancel script. */
enum { JOBOPS_CANCEL_NOT_FOUND = 0, JOBOPS_CANCEL_REQUESTED = 1, JOBOPS_CANCEL_DONE = 2, JOBOPS_CANCEL_FINAL = 3 };

/*
 * Admission by a worker (an EVAL), atomically on the job hash; returns an
 * array {code, attempts, seed}:
 *   code 0: the job is already final (e.g. cancelled while queued): XACK the
 *           entry and drop it, write nothing;
 *   code 1: run it; state is now running, worker set, attempts incremented,
 *           started set on the first attempt;
 *   code 2: run nothing, finish it at once as "cancelled" (cancel flag set).
 * A missing hash (a client that only XADDed) is created with model/created.
 * seed is stored only when the hash has none yet (the request's seed, else
 * one drawn by the worker), and the stored one is returned: a resumed job
 * keeps the seed of its first attempt.
 */
void jobops_admit(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *id, const char *model, const char *worker,
                  int64_t now_ms, uint64_t seed);

#endif
