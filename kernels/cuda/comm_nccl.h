/*
 * comm_nccl.h — the communicator of GPU ranks (common/comm.h) over NCCL.
 * Built by `make cuda` only (kernels/cuda/comm_nccl.cu).
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
 * Limits (NCCL): a rank that dies or stops is seen by its peers only
 * through their deadlines (NCCL does not tell which rank is missing, so
 * the message cannot name it), and comm_abort aborts this rank's
 * communicator only; the peers fail at their own deadline.
 */
#ifndef LLMQ_KERNELS_CUDA_COMM_NCCL_H
#define LLMQ_KERNELS_CUDA_COMM_NCCL_H

#ifdef __cplusplus
extern "C" {
#endif

#include "common/status.h"
#include "common/comm.h"

#define COMM_NCCL_ID_BYTES 128

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

#ifdef __cplusplus
}
#endif

#endif
