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
    char req[KEYS_MAX];       /* <P>req:<model>[#lane]: the lane a command is about */
    char lanes[KEYS_LANES][KEYS_MAX]; /* every lane's stream, highest first (keys.h) */
    char cancel[KEYS_MAX];    /* <P>cancel */
    char dead[KEYS_MAX];      /* <P>dead:<model> */
    char idem[KEYS_MAX];      /* <P>idem:{key} */
} jobops_keys;

/*
 * Submission: the job hash first, then the stream entry, sent by the caller
 * inside MULTI ... EXEC (so a worker that reads the entry finds the hash):
 *   HSET <P>job:{id} state queued model <model> created <now_ms> attempts 0
 *   XADD <P>req:<model>[#lane] * id <id> p <request msgpack>
 * The stream is the lane of the request's priority (keys_lane_of; the
 * payload carries the same priority).  Never trims the stream: queued jobs
 * are not dropped to bound it.
 */
void jobops_submit(rcmd *hset, rcmd *xadd, jobops_keys *kb, const llmq_keys *k, const char *id, const char *model,
                   int32_t priority, const void *payload, size_t payload_len, int64_t now_ms);

/*
 * Submission under a queue bound (an EVAL): the same HSET + XADD, done only
 * when fewer than max_queue jobs wait, checked in the same atomic step (a
 * check sent ahead of a MULTI lets every submission of a burst see the
 * queue before the others were added, and a burst then overshoots the bound
 * by its whole size).  Waiting = the sum over the model's lanes of the `lag`
 * of the consumer group `workers` (XINFO GROUPS), or of XLEN where Redis
 * cannot compute the lag: the bound counts every lane.  Returns
 * {1, waiting} when submitted, {0, waiting} when refused (nothing written).
 * max_queue <= 0 means no bound.  One script (submit_lua) serves this and
 * jobops_submit_idem.
 */
void jobops_submit_bounded(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *id, const char *model,
                           int32_t priority, const void *payload, size_t payload_len, int64_t now_ms,
                           long long max_queue);

/*
 * Idempotent submission (an EVAL): as jobops_submit_bounded (max_queue 0 =
 * no bound), keyed by a client's Idempotency-Key.  The first submission of a
 * key records {id, body} in <P>idem:{key} (TTL ttl_s, 0 = none) with the
 * job; a later one with the same key submits nothing and returns
 *   {2, first id}   when its body hash equals the first one's (a retry),
 *   {3, first id}   when it differs (the key was reused for another job);
 * otherwise {1, waiting} submitted, {0, waiting} refused by the bound.
 */
void jobops_submit_idem(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *id, const char *model,
                        int32_t priority, const void *payload, size_t payload_len, int64_t now_ms, long long max_queue,
                        const char *idem_key, const char *body_hash, int64_t ttl_s);
enum { JOBOPS_SUBMIT_REFUSED = 0, JOBOPS_SUBMIT_DONE = 1, JOBOPS_SUBMIT_REPLAY = 2, JOBOPS_SUBMIT_KEY_REUSED = 3,
       JOBOPS_SUBMIT_TENANT_FULL = 4, JOBOPS_SUBMIT_TENANT_TOKENS = 5 };

/* Who submits a job, and under which key (jobops_submit_as). */
typedef struct jobops_owner {
    const char *tenant;          /* the submitting API key's identity (a hash, never the key);
                                  * NULL or "" = none */
    long long max_jobs;          /* the tenant's limit of unfinished (queued or running) jobs; 0 = none */
    long long tokens_per_minute; /* the tenant's budget of tokens (prompt + completion of the jobs that
                                  * ended) over the last minute; 0 = none */
    const char *idem_key;        /* the client's Idempotency-Key; NULL = none */
    const char *body_hash;       /* with idem_key: what tells a retry from a reuse */
    int64_t idem_ttl_s;          /* with idem_key: the record's TTL until its job ends (0 = none) */
    const char *affinity;        /* the entry's field `a` (common/affinity.h); NULL or "" = none */
} jobops_owner;

/*
 * Submission by a tenant (an EVAL of the same script): as jobops_submit_idem
 * when o->idem_key is set (else as jobops_submit_bounded), and
 *  - the job hash records `tenant` (what scopes GET/DELETE to its owner) and
 *    the job joins the set <P>tenant:{<tenant>}:jobs; the script that ends
 *    the job (finish, cancel) takes it out again;
 *  - with o->max_jobs > 0, a tenant that has that many unfinished jobs is
 *    refused: {4, unfinished}.  Members whose job ended without leaving the
 *    set (its hash expired or was deleted) are pruned then (at most every
 *    10 s per tenant), so a lost job never holds a slot for good;
 *  - with o->tokens_per_minute > 0, a tenant whose jobs that ended over the
 *    last minute used that many tokens is refused: {5, used, wait_ms}, wait_ms
 *    the time until the count falls below the budget (no job of the tenant
 *    ending meanwhile), on Redis's clock.  A sliding
 *    window: this minute's count plus the last minute's, weighted by the
 *    part of it still inside the window.  Tokens are counted when a job
 *    ends (the finish script), so jobs running meanwhile may overshoot
 *    the budget by what they use: --key-max-jobs bounds that;
 *  - the Idempotency-Key record is <P>idem:{<tenant>:<key>}: keys are
 *    namespaced per tenant.  The record names its job in the job hash
 *    (field `idem`) and gets the job's TTL when the job ends; a record whose
 *    job is gone no longer replays: the submission is a fresh one.
 */
void jobops_submit_as(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *id, const char *model,
                      int32_t priority, const void *payload, size_t payload_len, int64_t now_ms, long long max_queue,
                      const jobops_owner *o);

/* The consumer group `workers` on every lane of a model (an EVAL of
 * XGROUP CREATE <lane stream> workers 0 MKSTREAM for each lane): returns the
 * number of groups created, or a BUSYGROUP error when all existed already,
 * as a single XGROUP CREATE answers; another error is returned as it is. */
void jobops_group_create(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *model);

/* Append the field `a` (common/affinity.h) to the XADD jobops_submit
 * built; nothing when keys is NULL or "". */
void jobops_submit_affinity(rcmd *xadd, const char *keys);

/*
 * The pull of a group that routes by prefix affinity (docs/protocol.md
 * "Affinity"): as jobops_read_lanes, with the same reply, plus two
 * elements: the id of each lane's newest entry (what jobops_wait_lanes
 * waits past), and four integers counting this call's entries {parked for
 * another group (3. below), taken over (2.), claimed from its own parking
 * (1.), new entries kept whose keys named this group} for /metrics.
 * Lane by lane, highest first, it takes
 *   1. the entries other groups parked for this one (pending under the
 *      consumer "@<consumer>", claimed with min-idle 0);
 *   2. with takeover set, the entries parked for another group that have
 *      waited there for wait_ms or longer;
 *   3. new entries: each whose keys (field `a`, looked up from the last)
 *      name another group that is alive with room for it, and not much
 *      busier than this one (its free slots + slack >= the slots this pull
 *      has left), is parked for that group (XCLAIM to "@<group>", JUSTID)
 *      instead.
 * The keys of every entry it returns (those at positions 1, 2, 4, 8, ...
 * and the last two) are set to name this group, with a TTL of ttl_s: the
 * group that ran a prefix is where the next one goes.
 * It also records this group's free slots (count) and the time in the
 * hash <P>aff:<model>#groups (liveness and room for the others).
 */
typedef struct jobops_affinity {
    int wait_ms;   /* the bound a parked entry waits for its group */
    int ttl_s;     /* how long a key names the group that last ran it */
    int slack;     /* free slots by which this group may have more than the owner and still park */
    int takeover;  /* look at the other groups' parked entries this time */
} jobops_affinity;
void jobops_read_lanes_affinity(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *model,
                                const char *consumer, int count, int first_lane, const jobops_affinity *a);

/* XREAD BLOCK block_ms STREAMS <every lane> <last[l]>: the idle wait of a
 * group that routes by affinity; it reads nothing for the group (the next
 * jobops_read_lanes_affinity does, so every new entry passes its keys). */
void jobops_wait_lanes(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *model,
                       char last[KEYS_LANES][48], int block_ms);

/*
 * A worker's pull across the lanes (an EVAL, so it is one round trip and
 * reads exactly `count` entries at most): XREADGROUP GROUP workers
 * <consumer> of new entries ('>') from the lanes highest first until count
 * entries are read.  first_lane >= 0 (the starvation guard, see
 * docs/protocol.md "Lanes") first takes ONE entry from that lane, then
 * goes on highest first.  Returns an array of KEYS_LANES + 1 elements:
 * element l (a lane, keys.h numbering) is the XREADGROUP entry list read
 * from lane l ({id, {field, value, ...}} each, maybe empty); the last is
 * an array of KEYS_LANES integers, 1 where that lane still has unread
 * entries after the pull.  A missing group is a NOGROUP error.
 */
void jobops_read_lanes(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *model, const char *consumer,
                       int count, int first_lane);

/*
 * XREADGROUP GROUP workers <consumer> COUNT <count> [BLOCK <block_ms>]
 * STREAMS <every lane, highest first> <id for each>: with id ">" and a
 * block, the idle wait for new entries on any lane (it returns those of the
 * lane that got one first); with id "0" and no block (block_ms < 0, count
 * <= 0: no COUNT), this consumer's own pending entries of every lane.  The
 * reply names each stream (jobops_lane_of_key maps a name to its lane).
 */
void jobops_read_all(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *model, const char *consumer,
                     int count, int block_ms, const char *id);
/* The lane whose stream name (len bytes) kb->lanes holds, or -1. */
int jobops_lane_of_key(const jobops_keys *kb, const char *name, size_t len);

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

/* As jobops_cancel, by a tenant (NULL or "" = anyone, as jobops_cancel):
 * a job whose hash records another tenant is JOBOPS_CANCEL_NOT_FOUND, and
 * nothing is written. */
void jobops_cancel_as(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *id, int64_t now_ms,
                      int64_t result_ttl_s, const void *final_chunk, size_t final_chunk_len, const char *tenant);

/* The final chunk a cancel of a queued job appends (encoded into out). */
llmq_status jobops_cancel_chunk(proto_buf *out, llmq_err *err);

/* Results of the cancel script. */
enum { JOBOPS_CANCEL_NOT_FOUND = 0, JOBOPS_CANCEL_REQUESTED = 1, JOBOPS_CANCEL_DONE = 2, JOBOPS_CANCEL_FINAL = 3 };

/*
 * Admission by a worker (an EVAL), atomically on the job hash; returns an
 * array {code, attempts, seed, chunk...}:
 *   code 0: the job is already final (e.g. cancelled while queued): XACK the
 *           entry and drop it, write nothing;
 *   code 1: run it; state is now running, worker set, attempts incremented,
 *           started set on the first attempt;
 *   code 2: run nothing, finish it at once as "cancelled" (cancel flag set);
 *   code 3: poison: the job hash or the output stream holds another type,
 *           or `attempts` is not a count.  Nothing was written; element 3
 *           is the reason.  The worker dead-letters the entry
 *           (jobops_reject): re-delivering it could never succeed.
 * A missing hash (a client that only XADDed) is created with model/created.
 * seed is stored only when the hash has none yet (the request's seed, else
 * one drawn by the worker), and the stored one is returned: a resumed job
 * keeps the seed of its first attempt.  With codes 1 and 2 the rest of the
 * array is the job's output so far: the `c` field of every entry of
 * <P>job:{id}:out, in order (an XRANGE read in the same script, so a
 * resume costs no second round trip: both keys share the job's slot).
 */
void jobops_admit(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *id, const char *model, const char *worker,
                  int64_t now_ms, uint64_t seed);
enum { JOBOPS_ADMIT_FINAL = 0, JOBOPS_ADMIT_RUN = 1, JOBOPS_ADMIT_CANCELLED = 2, JOBOPS_ADMIT_POISON = 3 };

/* XACK <P>req:<model>[#lane] workers <entry>, then XDEL of the entry (an
 * EVAL): the entry is done with, whatever became of its job (see also
 * jobops_finish, which acks in its script).  lane: the lane whose stream
 * the entry was read from.
 * Why delete: a stream keeps acked entries forever, and a request entry
 * holds the whole prompt (up to 8 MiB), so Redis would grow until
 * maxmemory.  Only an entry whose job is final is ever acked, so the
 * deleted entry can no longer be needed for a resume; the group's lag
 * stays right since only delivered entries are deleted (Redis may report
 * it as nil for an instant, see docs/protocol.md "Request entries"). */
void jobops_ack(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *model, int lane, const char *entry);

/*
 * A poison entry whose job cannot be ended by the finish script (the
 * admit script's code 3: its job hash or its output stream has another
 * type), in one EVAL: XACK + XDEL of the entry on its lane's stream, the
 * dead-stream record {id, entry, reason}, and, when the job hash is a hash
 * whose job is not final, state failed, finish_reason error, error
 * <reason>, finished, with the TTL result_ttl_s (0 = none).  Returns 1, or
 * 2 when the job hash was left alone.
 */
void jobops_reject(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *id, const char *model, int lane,
                   const char *entry, const char *reason, int64_t now_ms, int64_t result_ttl_s);

/* XADD <P>dead:<model> * id <id> entry <entry> reason <reason>: the record
 * of a poison or exhausted entry, for an entry without a job to end
 * (jobops_finish writes the same record for one with a job). */
void jobops_dead(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *model, const char *id, const char *entry,
                 const char *reason);

/*
 * Fencing.  Delivery is at-least-once: a worker that stalls for longer than
 * --claim-idle-ms (a long step, a paused VM, CPU starvation) has its entries
 * claimed by another worker, which admits the job again (attempts + 1) and
 * resumes it from the output stream, while the first one, once it runs
 * again, still holds the job in memory.  Every write of a worker's output is
 * therefore a script that first checks, atomically, that the job hash still
 * says state `running` with `attempts` equal to the attempt the writer was
 * admitted with.  A superseded writer gets 0, writes nothing, and must drop
 * the job (without XACK: the entry belongs to the new owner).  So a job's
 * output has one writer at a time, and readers see one stream without
 * repeated seqs and one final chunk, however workers stall.
 */

/*
 * Chunks of running jobs, any number of jobs in ONE EVAL (a worker sends one
 * per step for its whole batch: Redis then pays one script call per step,
 * not one per job per token).  KEYS = job hash, output stream of each job in
 * turn; ARGV = attempt, output channel, chunk of each job in turn.  For each
 * job, on its own: XADD <P>job:{id}:out * c <chunk> and PUBLISH <P>out:{id}
 * <chunk> when its fence holds.  Returns an array with one element per job,
 * in order: 1 written, 0 fenced (nothing written for that job), or an error
 * (e.g. WRONGTYPE, OOM: nothing written for that job).  A job whose write
 * was refused never affects the others of the call.
 * (Redis Cluster: the jobs' keys are in several slots; see docs/protocol.md
 * "Not yet".)
 */
typedef struct jobops_chunks {
    int n;                      /* chunks added since the last reset */
    /* private: */
    int cap;                    /* room in at[] */
    struct jobops_chunk_at *at; /* [cap] where each chunk's arguments lie in bytes */
    char *bytes;                /* ids, keys, attempts and chunks back to back (offsets: bytes may move) */
    size_t len, cap_bytes;
    const char **argv;          /* the EVAL, built by jobops_chunks_argv */
    size_t *argvlen;
    int cap_argv;
    char nkeys[16];             /* the EVAL's number of keys, 2 n */
} jobops_chunks;

/* init: empty; deinit frees (the buffers are kept across resets, so once a
 * step's worth fits nothing more is allocated). */
void jobops_chunks_init(jobops_chunks *b);
void jobops_chunks_deinit(jobops_chunks *b);
void jobops_chunks_reset(jobops_chunks *b);
/* Add job id's chunk (the bytes are copied) fenced on attempt (the
 * `attempts` value admission returned).  Returns 0, or -1 when out of memory
 * (nothing added). */
int jobops_chunks_add(jobops_chunks *b, const llmq_keys *k, const char *id, long long attempt, const void *chunk,
                      size_t chunk_len);
/* The id of chunk i (0 <= i < n), the job element i of the reply is about. */
const char *jobops_chunks_id(const jobops_chunks *b, int i);
/* The EVAL of the chunks added (n >= 1), as an argv for hiredis, or with
 * sha (the script's SHA1, rcmd.h "Script calls by SHA1") its EVALSHA:
 * returns argc (3 + 5 n) and points *argv / *argvlen into b (valid until
 * the next add, reset or deinit), or -1 when out of memory. */
int jobops_chunks_argv(jobops_chunks *b, const char *sha, const char ***argv, const size_t **argvlen);
/* The chunk script's text (what SCRIPT LOAD is given to learn its SHA1). */
const char *jobops_chunks_script(void);
/* Whether text is (the address of) one of the scripts of this file: those
 * live as long as the process, so their SHA1 may be remembered by address
 * (rcmd_shas). */
int jobops_is_script(const char *text);

/* One chunk as the same script with one job (the reply is a one-element
 * array). */
void jobops_chunk(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *id, long long attempt, const void *chunk,
                  size_t chunk_len);

/* The end of a job as jobops_finish writes it. */
typedef struct jobops_final {
    const char *state;          /* done | failed | cancelled | expired */
    const char *finish_reason;  /* stop | length | cancelled | deadline | error */
    int64_t finished_ms;        /* Unix ms */
    long long prompt_tokens, completion_tokens;
    const char *error;          /* the reason when failed, else NULL */
    int dead;                   /* also XADD <P>dead:<model> * id <id> entry <entry> reason <error> */
    long long cached_tokens;    /* of prompt_tokens, those this attempt found in its prefix cache
                                   (written only when > 0) */
} jobops_final;

/*
 * The end of a job (an EVAL), all or nothing: the final chunk (XADD +
 * PUBLISH), HSET of the job hash (state, finish_reason, finished,
 * prompt_tokens, completion_tokens[, cached_tokens][, error]), XACK and XDEL of the request
 * entry (when entry is not NULL/empty) on its lane's stream (see
 * jobops_ack for why it is deleted), EXPIRE result_ttl_s of the hash and the
 * output stream, and with f->dead the dead-stream record.  Returns:
 *   1  written;
 *   0  attempt > 0 and the fence does not hold: nothing written (the job
 *      belongs to a newer attempt, or someone else ended it);
 *   2  attempt == 0 (an entry the worker never admitted: undecodable,
 *      invalid) and the job is not queued (already final, or running under
 *      another entry with the same id): only the XACK and the dead record,
 *      the job itself is left alone.
 */
void jobops_finish(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *id, const char *model, int lane,
                   const char *entry, long long attempt, const jobops_final *f, int64_t result_ttl_s, const void *chunk,
                   size_t chunk_len);

/* Results of the chunk and finish scripts. */
enum { JOBOPS_FENCED = 0, JOBOPS_WRITTEN = 1, JOBOPS_NOT_OURS = 2 };

#endif
