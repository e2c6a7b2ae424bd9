/*
 * comm_nccl.h — the communicator of GPU ranks (common/comm.h) over NCCL.
 * Built by `make cuda`, and by `make cuda-emu` for the emulated device.
 *
 * Buffers are device pointers (c->device_mem = 1) and the collectives run
 * on c->stream — pass the backend's stream (cuda_backend_stream) so that
 * they are ordered after the kernels that produce their inputs.  Host
 * pointers are accepted too (the engine's step plan and logits): they are
 * staged through device memory, which costs two copies.
 *
 * Every op returns once its result is in place: it waits for the stream,
 * polling ncclCommGetAsyncError, comm_abort and the deadline
 * (c->timeout_ms; 0 = none) in turn, and on a timeout or an asynchronous
 * error calls ncclCommAbort and fails the communicator for good.
 *
 * all_reduce_sum keeps comm.h's promise of rank-order sums ((x0 + x1) + x2
 * ...): each rank receives its slice of every rank's buffer (grouped
 * ncclSend/ncclRecv), adds them in rank order, and the slices are
 * all-gathered — the traffic of a ring all-reduce, and bits that do not
 * depend on NCCL's algorithm choice.
 *
 * Host buffers that receive a result are written only after the collective
 * has completed (waited for within the deadline): a copy into pageable
 * memory returns only when done, so issued behind the collective it would
 * block on a missing peer beyond any deadline or abort.
 *
 * Limits (NCCL): a rank that dies or stops is seen by its peers only
 * through their deadlines (NCCL does not tell which rank is missing, so
 * the message cannot name it), and comm_abort aborts this rank's
 * communicator only; the peers fail at their own deadline.  The emulated
 * device's NCCL (make cuda-emu, kernels/cuda/emu/emu_nccl.cc) does better:
 * a dead or departed peer, an abort and mismatched collectives reach every
 * rank at once, named, through ncclCommGetAsyncError.
 */
#ifndef LLMQ_KERNELS_CUDA_COMM_NCCL_H
#define LLMQ_KERNELS_CUDA_COMM_NCCL_H

#ifdef __cplusplus
extern "C" {
#endif

#include "common/status.h"
#include "common/comm.h"

#define COMM_NCCL_ID_BYTES 128

/* Start-up deadline of comm_nccl_group_create: the ranks reach it once each
 * has loaded its weights, which may be minutes apart on a large model (the
 * per-collective 10 s default failed such groups).  A rank that dies
 * meanwhile is still seen at once by the host communicator. */
#define COMM_NCCL_JOIN_TIMEOUT_MS (10 * 60 * 1000)

/* A new group id (rank 0 makes it and hands it to the others through the
 * rendezvous).  out128 receives COMM_NCCL_ID_BYTES bytes. */
llmq_status comm_nccl_unique_id(void *out128, llmq_err *err);

/* Join the group `unique_id128` as `rank` of `world` on the current CUDA
 * device; returns once every rank has joined, or NULL with err filled
 * (LLMQ_ERR_TIMEOUT when the group did not form within timeout_ms; 0 = wait
 * forever).  stream: the cudaStream_t to run on (NULL: the communicator
 * creates its own).  Caller destroys it with comm_destroy(). */
llmq_comm *comm_nccl_create(const void *unique_id128, int rank, int world, int timeout_ms, void *stream,
                            llmq_err *err);

/* The group's NCCL communicator, formed over the host communicator of its
 * ranks (shm or tcp; every rank calls this, as be_ops.group_comm does): rank
 * 0 makes the id and broadcasts it, then every rank joins.  The exchange and
 * the join wait up to join_timeout_ms (0 = COMM_NCCL_JOIN_TIMEOUT_MS, or no
 * limit when host->timeout_ms is 0; never less than host->timeout_ms); the
 * collectives then wait host->timeout_ms.
 * host->timeout_ms is unchanged on return.  NULL with err on failure. */
llmq_comm *comm_nccl_group_create(llmq_comm *host, void *stream, int join_timeout_ms, llmq_err *err);

/* Allocate now the device memory that later ops would allocate on first
 * use: all_reduce_sum of up to max_count elements of dt on device buffers,
 * and stage_bytes of staging for host buffers (all_reduce_sum: its bytes;
 * all_gather: world * count bytes; broadcast: its bytes; 0 = none).  Call
 * it before sizing the KV pool from the free memory, so that the first
 * large step cannot run out.  Fails (and fails the communicator) when out
 * of memory. */
llmq_status comm_nccl_reserve(llmq_comm *c, size_t max_count, comm_dtype dt, size_t stage_bytes);

#ifdef __cplusplus
}
#endif

#endif
