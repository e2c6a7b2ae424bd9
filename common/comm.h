/*
 * comm.h — the communicator of a tensor-parallel worker group: the
 * collectives the engine needs between its ranks (one process per rank,
 * docs/architecture.md "Tensor parallelism"), behind one small table of
 * operations.
 *
 * Implementations (ops->name)
 *   "single"  world 1 (worker/comm/comm_single.c): nothing moves between
 *             ranks; all_gather copies send to recv unless in place.
 *   "shm"     CPU ranks on one host, separate processes, POSIX shared
 *             memory (worker/comm/comm_shm.c).
 *   "tcp"     ranks on several hosts (a group started rank by rank,
 *             `--rank R --group G`): a TCP connection from every peer to
 *             the leader (worker/comm/comm_tcp.c).
 *   "nccl"    the activations of GPU ranks (kernels/cuda/comm_nccl.cu, built
 *             by `make cuda`), formed over one of the above by the CUDA
 *             backend's be_ops.group_comm; its limits are in comm_nccl.h
 *             (a dead rank is seen at the deadline, unnamed; abort is local).
 * The CPU communicators share their abort record, their error messages and
 * their rank-order sum (worker/comm/comm_util.h).
 *
 * Conventions every implementation keeps
 *  - Collective: every rank calls the same ops in the same order with the
 *    same count / dtype / root.  A rank that calls something else gets an
 *    error (shm, tcp: LLMQ_ERR_INTERNAL naming both calls), never silent
 *    garbage.
 *  - Memory: CPU communicators take host pointers.  The NCCL communicator
 *    takes *device* pointers (host pointers are staged through device
 *    memory) and enqueues on c->stream (a cudaStream_t set by its creator),
 *    polling ncclCommGetAsyncError against the deadline, then
 *    ncclCommAbort.  Every op returns when the result is in place.  Check
 *    c->device_mem against the backend before passing buffers.
 *  - Results are deterministic and bitwise identical on every rank:
 *    all_reduce_sum adds in rank order 0..world-1 for every element
 *    ((x0 + x1) + x2 ...), whatever the arrival order or the algorithm.
 *  - Timeouts: no rank waits longer than c->timeout_ms for its peers at any
 *    point of a collective (0 = no limit; dead ranks are still detected).
 *    Past it the op returns LLMQ_ERR_TIMEOUT with a message naming the
 *    rank(s) that did not arrive.  A rank that died (even an unreaped
 *    zombie) or left the group is reported as LLMQ_ERR_IO naming it.
 *  - Failure is final and shared: the first rank that sees a timeout or a
 *    dead peer aborts the whole group, so every other rank wakes at once
 *    with the same cause ("group aborted by rank R: ...", same code).
 *    After any error every op of this communicator fails immediately; the
 *    group is rebuilt with a new generation, never repaired.
 *  - Errors are returned and recorded in c->err (code + message); nothing
 *    here exits or logs on the hot path.
 *
 * Threads: one thread runs the collectives of a communicator.  comm_abort
 * may be called from any other thread of the process at any time (a
 * watchdog, a shutdown path) and wakes that thread too.
 */
#ifndef LLMQ_COMM_H
#define LLMQ_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef enum comm_dtype {
    COMM_F32 = 0, /* float: all_reduce_sum, all_gather */
    COMM_I32,     /* int32_t: sums wrap modulo 2^32 (no UB), all_gather */
    COMM_U8,      /* raw bytes: all_gather only */
    COMM_F16,     /* IEEE half: all_reduce_sum on device communicators (NCCL) only */
    COMM_BF16,    /* bfloat16: likewise; sums accumulate in f32 and round once */
} comm_dtype;

/* Bytes of one element (0 for an unknown dtype). */
static inline size_t comm_dtype_size(comm_dtype dt) {
    return dt == COMM_F32 || dt == COMM_I32 ? 4 : dt == COMM_F16 || dt == COMM_BF16 ? 2 : dt == COMM_U8 ? 1 : 0;
}
static inline const char *comm_dtype_name(comm_dtype dt) {
    return dt == COMM_F32    ? "f32"
           : dt == COMM_I32  ? "i32"
           : dt == COMM_U8   ? "u8"
           : dt == COMM_F16  ? "f16"
           : dt == COMM_BF16 ? "bf16"
                             : "?";
}

typedef struct llmq_comm llmq_comm;

typedef struct comm_ops {
    const char *name; /* "single", "shm", "tcp", "nccl" */

    /* buf[0..count) = sum over ranks of every rank's buf[0..count), in place.
     * dt is COMM_F32 or COMM_I32; COMM_F16/COMM_BF16 on device communicators
     * (NCCL) only; otherwise LLMQ_ERR_UNSUPPORTED. */
    llmq_status (*all_reduce_sum)(llmq_comm *c, void *buf, size_t count, comm_dtype dt);
    /* recv[world * count] = rank 0's send[count], rank 1's send[count], ...
     * In place when send == recv + rank * count elements; any other
     * overlap of send and recv is undefined. */
    llmq_status (*all_gather)(llmq_comm *c, void *recv, const void *send, size_t count,
                              comm_dtype dt);
    /* buf[0..bytes) of rank `root` is copied into buf of every other rank. */
    llmq_status (*broadcast)(llmq_comm *c, void *buf, size_t bytes, int root);
    /* Returns once every rank has entered the barrier. */
    llmq_status (*barrier)(llmq_comm *c);
    /* Abort the group: every rank blocked in (or later entering) a
     * collective fails with LLMQ_ERR_IO and "aborted by rank R: reason".
     * Idempotent; callable from any thread; the first reason wins. */
    void (*abort)(llmq_comm *c, const char *reason);
    /* Detach and free.  The leader (rank 0) of a shm group also unlinks the
     * segment.  Does not abort the others: destroy after the last
     * collective; a rank still waiting on one that left gets LLMQ_ERR_IO. */
    void (*destroy)(llmq_comm *c);
} comm_ops;

struct llmq_comm {
    const comm_ops *ops;
    int rank;        /* 0..world-1; rank 0 is the leader */
    int world;       /* number of ranks, >= 1 */
    int timeout_ms;  /* longest wait for peers inside one collective; 0 = none.  The
                      * caller may change it between collectives, e.g. peers waiting
                      * for the leader's next step plan while it idles on Redis. */
    int device_mem;  /* 1: buffers are device pointers (NCCL); 0: host memory */
    void *stream;    /* NCCL: the cudaStream_t ops are enqueued on; NULL for CPU comms */
    void *impl;      /* implementation state */
    llmq_err err;    /* first error; once set, every op returns err.code */
};

/* Thin dispatchers, so that callers read comm_all_reduce_sum(c, ...). */
static inline llmq_status comm_all_reduce_sum(llmq_comm *c, void *buf, size_t count,
                                              comm_dtype dt) {
    return c->ops->all_reduce_sum(c, buf, count, dt);
}
static inline llmq_status comm_all_gather(llmq_comm *c, void *recv, const void *send,
                                          size_t count, comm_dtype dt) {
    return c->ops->all_gather(c, recv, send, count, dt);
}
static inline llmq_status comm_broadcast(llmq_comm *c, void *buf, size_t bytes, int root) {
    return c->ops->broadcast(c, buf, bytes, root);
}
static inline llmq_status comm_barrier(llmq_comm *c) { return c->ops->barrier(c); }
static inline void comm_abort(llmq_comm *c, const char *reason) {
    if (c) c->ops->abort(c, reason);
}
/* NULL is a no-op. */
static inline void comm_destroy(llmq_comm *c) {
    if (c) c->ops->destroy(c);
}

/* ------------------------------------------------------------ single rank */

/* A communicator of world 1 (rank 0): all_reduce_sum and broadcast leave
 * the buffer alone, all_gather copies send to recv unless in place, barrier
 * returns.  Returns NULL only when out of memory.  Caller destroys it. */
llmq_comm *comm_single_create(llmq_err *err);

/* ---------------------------------------------------------- shared memory */

#define COMM_SHM_DEFAULT_SLOT ((size_t)256 << 10)

typedef struct comm_shm_config {
    const char *name;     /* POSIX shm name, "/llmq-<group>-<gen>" (leading '/', no other '/') */
    int rank;             /* this process's rank, 0..world-1 */
    int world;            /* ranks in the group, 1..COMM_SHM_MAX_WORLD */
    uint64_t generation;  /* group generation from the rendezvous; must match the segment */
    size_t slot_bytes;    /* rank 0 only: staging bytes per rank and buffer (the largest
                           * piece moved per round; bigger messages are chunked);
                           * 0 = COMM_SHM_DEFAULT_SLOT.  Segment ~ world * 2 * slot. */
    int timeout_ms;       /* per collective wait, see above; 0 = none */
    int join_timeout_ms;  /* create: how long to wait for the segment / every rank; 0 = timeout_ms */
    int spin_us;          /* poll this long before sleeping on a futex (pause for
                           * 3 us, then sched_yield between polls); <0 = default 50 us */
    size_t oneshot_max;   /* all_reduce_sum up to this many bytes: one round in which
                           * every rank sums all inputs; above: reduce-scatter +
                           * all-gather.  0 = default (32 KiB); SIZE_MAX = always one-shot
                           * when it fits a slot.  Same bits either way.  Rank 0 only. */
} comm_shm_config;

#define COMM_SHM_MAX_WORLD 64

/* Create (rank 0) or join (rank > 0) the shared-memory group, and return
 * once all `world` ranks have joined (so rank 0 starts its peers first, or
 * concurrently: they wait for the segment to appear).
 *  - rank 0 removes any leftover segment of that name, creates it sized
 *    for (world, slot_bytes) and stamps it with the generation;
 *  - other ranks retry until the segment appears; one of a newer
 *    generation refuses them at once (LLMQ_ERR_INVALID, "stale
 *    generation"); one of an older generation (a crashed leader's
 *    leftover) is waited past until the deadline;
 *  - ranks missing at join_timeout_ms are named (LLMQ_ERR_TIMEOUT).
 * Once everyone has joined the leader unlinks the name, so a group killed
 * after its join leaves nothing in /dev/shm (before it, the next leader of
 * that name removes the leftover).  All ranks must share one PID namespace (the
 * dead-rank check uses their pids).  Returns NULL and fills err on failure.
 * Caller destroys it. */
llmq_comm *comm_shm_create(const comm_shm_config *cfg, llmq_err *err);

/* ------------------------------------------------------------------- TCP */

#define COMM_TCP_MAX_WORLD 64
#define COMM_TCP_TOKEN_MAX 64

typedef struct comm_tcp_config {
    int rank, world;      /* as above */
    uint64_t generation;  /* of the rendezvous: a peer of another generation is refused */
    const char *token;    /* the generation's secret from the rendezvous (<= 64 chars; NULL = "") */
    int listen_fd;        /* rank 0: a listening socket from comm_tcp_listen, taken over
                           * (closed once the group is complete or failed) */
    const char *leader;   /* rank > 0: "host:port" of rank 0 ("[v6addr]:port" too) */
    int timeout_ms;       /* per collective, see above; 0 = none.  Peers wait for the
                           * leader 25% longer (at most 2 s more): its verdict comes first */
    int join_timeout_ms;  /* create: how long to wait for every rank / for the leader
                           * (peers retry a refused connection meanwhile); 0 = timeout_ms */
} comm_tcp_config;

/* Listen on host:port (host NULL or "" = every interface, port 0 = any free
 * one); *bound_port receives the port.  Returns the socket, or -1 with err. */
int comm_tcp_listen(const char *host, int port, int *bound_port, llmq_err *err);

/* Form the group: rank 0 accepts world-1 peers (refusing with a message a
 * stale or future generation, a wrong token or world, a rank twice) and
 * answers them all once complete; a peer connects, retrying until the
 * leader listens, and returns once the leader answered.  LLMQ_ERR_TIMEOUT
 * naming the missing ranks at join_timeout_ms; a refusal is the leader's
 * message (LLMQ_ERR_INVALID).  NULL and err on failure.  Caller destroys. */
llmq_comm *comm_tcp_create(const comm_tcp_config *cfg, llmq_err *err);

#endif
