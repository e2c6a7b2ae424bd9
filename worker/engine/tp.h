/*
 * tp.h — starting a tensor-parallel group of ranks on one host.
 *
 * `llmq generate --tp N` and `llmq-worker --tp N` call tp_group_start()
 * before they load anything: it forks N-1 peer processes, and every process
 * (leader and peers) returns from it as its own rank, joined to one
 * shared-memory communicator.  A peer then loads its shard and serves step
 * plans (eng_serve); the leader schedules and calls tp_group_stop() at the
 * end.  Peers die with the leader (PR_SET_PDEATHSIG) and the leader learns
 * of a dead peer from the first collective that fails.
 *
 * LLMQ_TP_TRANSPORT=tcp: the local group talks over loopback TCP
 * (comm_tcp, the communicator of groups started rank by rank across hosts)
 * instead of shared memory; for tests and benchmarks.
 *
 * GPU ranks: rank r uses CUDA device LLMQ_CUDA_DEVICE + r (device r when it
 * is unset); the engine forms an NCCL group over the shared-memory
 * communicator (be_ops.group_comm) for the all-reduces of activations,
 * while step plans keep going through shared memory.
 */
#ifndef LLMQ_TP_H
#define LLMQ_TP_H

#include <sys/types.h>

#include "common/status.h"
#include "common/comm.h"

#define TP_MAX_WORLD 64

typedef struct tp_group {
    int rank, world;
    llmq_comm *comm;             /* joined communicator (single when world 1) */
    pid_t peers[TP_MAX_WORLD];   /* leader: pid of each peer rank (index = rank) */
    char shm_name[64];
} tp_group;

/* Fork world-1 peers and join the group.  Returns in every process with
 * g->rank set.  timeout_ms bounds each collective.  On failure the leader
 * kills the peers it started; a peer that fails to join exits(1). */
llmq_status tp_group_start(tp_group *g, int world, int timeout_ms, llmq_err *err);

/* Leader: wait for the peers to exit (after eng_stop_peers), or kill them
 * when `kill_peers`.  Every rank: destroy the communicator.  Returns the
 * number of peers that exited non-zero. */
int tp_group_stop(tp_group *g, int kill_peers);

/* A peer's whole life after tp_group_start: load this rank's shard of dir
 * with the leader's load options (lo, NULL: as stored), create the engine
 * with the same limits as the leader (eo->comm is set here), serve step
 * plans until the leader stops the group or fails, free everything.
 * Returns the error that ended it, LLMQ_OK after a clean stop. */
struct eng_opts;
struct model_load_opts;
llmq_status tp_peer_run(tp_group *g, const char *dir, const char *backend, const struct model_load_opts *lo,
                        const struct eng_opts *eo, llmq_err *err);

/* Threads each rank should use so the group shares the CPUs the process may
 * use (kernels/cpu/threads.h), at least 1. */
int tp_threads_per_rank(int world);

#endif
