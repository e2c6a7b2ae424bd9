/*
 * comm_nccl.cu — the communicator of GPU ranks over NCCL (see comm_nccl.h
 * for the contract, common/comm.h for the conventions).
 *
 * The NCCL communicator is non-blocking (config.blocking = 0), so no NCCL
 * call can hang the thread: a call that answers ncclInProgress is polled
 * with ncclCommGetAsyncError until it settles, against the deadline.
 * Waiting for a collective is the same loop over a CUDA event recorded
 * after it.  Any failure — timeout, asynchronous NCCL error, comm_abort —
 * calls ncclCommAbort (which releases the kernels stuck on a missing peer)
 * and is final: c->err keeps the first cause and every later op returns it.
 *
 * Threads: one thread runs the collectives; abort may come from any thread
 * and only publishes a reason (0 -> 1 writing -> 2 published), which the
 * op thread acts on at its next poll.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <nccl.h>
#include <sched.h>
#include <stdarg.h>

#include <atomic>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cuda/comm_nccl.h"
#include "kernels/cuda/common.cuh"

typedef struct nccl_comm {
    llmq_comm c;               /* public part; c.impl points back here */
    ncclComm_t comm;
    cudaStream_t stream;       /* c.stream */
    int own_stream;            /* 1: created here, destroyed with the communicator */
    cudaEvent_t done;          /* recorded after each op, polled */
    void *scratch;             /* device: receive slices + gathered result of all_reduce */
    size_t scratch_bytes;
    void *stage;               /* device: copies of host buffers */
    size_t stage_bytes;
    int nccl_aborted;          /* ncclCommAbort was called */
    std::atomic<int> aborted;  /* 0, 1 (writing reason), 2 (published) */
    char reason[256];
} nccl_comm;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Deadline of an op starting now (0 = none). */
static double deadline_of(const llmq_comm *c) { return c->timeout_ms > 0 ? now_ms() + c->timeout_ms : 0; }

/* Spin briefly, then sleep 50 us per poll: short collectives finish in tens
 * of microseconds, long waits should not burn a core. */
static void poll_pause(int *spins) {
    if (++*spins < 2000) {
        sched_yield();
        return;
    }
    struct timespec ts = {0, 50000};
    nanosleep(&ts, NULL);
}

static void hard_abort(nccl_comm *s) {
    if (!s->nccl_aborted && s->comm) {
        s->nccl_aborted = 1;
        ncclCommAbort(s->comm);
    }
}

/* Record the first error, abort the NCCL communicator, return the code. */
static llmq_status fail(nccl_comm *s, llmq_status code, const char *op, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static llmq_status fail(nccl_comm *s, llmq_status code, const char *op, const char *fmt, ...) {
    if (s->c.err.code == LLMQ_OK) {
        char why[400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, sizeof why, fmt, ap);
        va_end(ap);
        llmq_err_set(&s->c.err, code, "nccl rank %d: %s: %s", s->c.rank, op, why);
    }
    hard_abort(s);
    return s->c.err.code;
}

/* Fail when aborted or already failed. */
static llmq_status enter(nccl_comm *s, const char *op) {
    if (s->c.err.code) return s->c.err.code;
    if (s->aborted.load() == 2)
        return fail(s, LLMQ_ERR_IO, op, "aborted by rank %d: %s", s->c.rank, s->reason);
    return LLMQ_OK;
}

/* One check of the asynchronous state; returns non-zero (and fails) on an
 * NCCL error, an abort or a passed deadline. */
static llmq_status check_async(nccl_comm *s, const char *op, double deadline) {
    ncclResult_t ar = ncclSuccess;
    if (ncclCommGetAsyncError(s->comm, &ar) != ncclSuccess) ar = ncclInternalError;
    if (ar != ncclSuccess && ar != ncclInProgress)
        return fail(s, LLMQ_ERR_IO, op, "%s (%s)", ncclGetErrorString(ar), ncclGetLastError(s->comm));
    if (s->aborted.load() == 2)
        return fail(s, LLMQ_ERR_IO, op, "aborted by rank %d: %s", s->c.rank, s->reason);
    if (deadline > 0 && now_ms() > deadline)
        return fail(s, LLMQ_ERR_TIMEOUT, op,
                    "no completion within %d ms: a peer of the group of %d did not arrive (NCCL does not say which)",
                    s->c.timeout_ms, s->c.world);
    return LLMQ_OK;
}

/* Settle the answer of an NCCL call on the non-blocking communicator. */
static llmq_status settle(nccl_comm *s, ncclResult_t r, const char *op, const char *call, double deadline) {
    int spins = 0;
    while (r == ncclInProgress) {
        if (check_async(s, op, deadline)) return s->c.err.code;
        if (ncclCommGetAsyncError(s->comm, &r) != ncclSuccess) r = ncclInternalError;
        if (r == ncclInProgress) poll_pause(&spins);
    }
    if (r != ncclSuccess)
        return fail(s, LLMQ_ERR_IO, op, "%s: %s (%s)", call, ncclGetErrorString(r), ncclGetLastError(s->comm));
    return LLMQ_OK;
}

#define NCCL_TRY(s, op, stmt, deadline)                                                                        \
    do {                                                                                                       \
        if (settle((s), (stmt), (op), #stmt " at " __FILE__ ":" LLMQ_STR(__LINE__), (deadline)))               \
            return (s)->c.err.code;                                                                            \
    } while (0)
#define LLMQ_STR2(x) #x
#define LLMQ_STR(x) LLMQ_STR2(x)

#define CUDA_TRY_COMM(s, op, stmt)                                                                             \
    do {                                                                                                       \
        cudaError_t e_ = (stmt);                                                                               \
        if (e_ != cudaSuccess)                                                                                 \
            return fail((s), LLMQ_ERR_BACKEND, (op), "CUDA error %s in `%s` at %s:%d", cudaGetErrorString(e_), \
                        #stmt, __FILE__, __LINE__);                                                            \
    } while (0)

/* Wait until everything enqueued so far on the stream has run. */
static llmq_status wait_done(nccl_comm *s, const char *op, double deadline) {
    CUDA_TRY_COMM(s, op, cudaEventRecord(s->done, s->stream));
    int spins = 0;
    for (;;) {
        cudaError_t q = cudaEventQuery(s->done);
        /* the stream can run past a collective that failed (its kernels exit on an error): the
         * communicator's asynchronous error decides, also once the event completed */
        if (q == cudaSuccess) return check_async(s, op, 0);
        if (q != cudaErrorNotReady)
            return fail(s, LLMQ_ERR_BACKEND, op, "CUDA error %s while waiting", cudaGetErrorString(q));
        if (check_async(s, op, deadline)) return s->c.err.code;
        poll_pause(&spins);
    }
}

/* The result of the op just enqueued, from device memory into host memory (pageable: the
 * engine's buffers).  A copy into pageable memory returns only once it is done, so issued behind
 * the collective it would wait for the peers with no deadline and no abort (a dead peer hung the
 * rank): wait for the collective within the deadline first, then copy from an idle stream. */
static llmq_status copy_out(nccl_comm *s, const char *op, double deadline, void *host, const void *dev, size_t bytes) {
    llmq_status st = wait_done(s, op, deadline);
    if (st) return st;
    CUDA_TRY_COMM(s, op, cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, s->stream));
    return wait_done(s, op, deadline);
}

/* Grow a device buffer (never shrinks; the first large op allocates). */
static llmq_status reserve(nccl_comm *s, void **buf, size_t *cap, size_t bytes, const char *op) {
    if (bytes <= *cap) return LLMQ_OK;
    if (*buf) CUDA_TRY_COMM(s, op, cudaFree(*buf));
    *buf = NULL;
    *cap = 0;
    CUDA_TRY_COMM(s, op, cudaMalloc(buf, bytes));
    *cap = bytes;
    return LLMQ_OK;
}

static int is_device_ptr(const void *p) {
    cudaPointerAttributes at;
    if (cudaPointerGetAttributes(&at, p) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return at.type == cudaMemoryTypeDevice || at.type == cudaMemoryTypeManaged;
}

/* ------------------------------------------------------------ all_reduce_sum */

__global__ void ordered_sum_f32(float *dst, const float *slices, size_t slice, int world, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float acc = slices[i];
        for (int r = 1; r < world; r++) acc = acc + slices[(size_t)r * slice + i];
        dst[i] = acc;
    }
}

__global__ void ordered_sum_i32(uint32_t *dst, const uint32_t *slices, size_t slice, int world, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t acc = slices[i]; /* unsigned: wraps modulo 2^32, as comm.h says */
        for (int r = 1; r < world; r++) acc += slices[(size_t)r * slice + i];
        dst[i] = acc;
    }
}

/* Half types: widen every slice to f32, add in rank order, round once. */
__device__ inline float widen(__half x) { return __half2float(x); }
__device__ inline float widen(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ inline void narrow(__half *d, float x) { *d = __float2half_rn(x); }
__device__ inline void narrow(__nv_bfloat16 *d, float x) { *d = __float2bfloat16_rn(x); }

template <typename T>
__global__ void ordered_sum_half(T *dst, const T *slices, size_t slice, int world, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float acc = widen(slices[i]);
        for (int r = 1; r < world; r++) acc = acc + widen(slices[(size_t)r * slice + i]);
        narrow(&dst[i], acc);
    }
}

static llmq_status nccl_all_reduce_sum(llmq_comm *c, void *buf, size_t count, comm_dtype dt) {
    nccl_comm *s = (nccl_comm *)c->impl;
    const char *op = "all_reduce_sum";
    llmq_status st = enter(s, op);
    if (st) return st;
    if (dt != COMM_F32 && dt != COMM_I32 && dt != COMM_F16 && dt != COMM_BF16)
        return llmq_err_set(&c->err, LLMQ_ERR_UNSUPPORTED, "nccl rank %d: all_reduce_sum of %s", c->rank,
                            comm_dtype_name(dt));
    if (count && !buf) return llmq_err_set(&c->err, LLMQ_ERR_INVALID, "nccl rank %d: all_reduce_sum: NULL buffer", c->rank);
    if (!count || c->world == 1) return LLMQ_OK;
    const double deadline = deadline_of(c);
    const size_t es = comm_dtype_size(dt), W = (size_t)c->world, slice = (count + W - 1) / W;
    const size_t bytes = count * es;
    /* scratch: [W][slice] received slices, then [W][slice] gathered result */
    if ((st = reserve(s, &s->scratch, &s->scratch_bytes, 2 * W * slice * es, op))) return st;
    char *recv = (char *)s->scratch, *res = recv + W * slice * es;
    char *data = (char *)buf;
    if (!is_device_ptr(buf)) {
        if ((st = reserve(s, &s->stage, &s->stage_bytes, bytes, op))) return st;
        CUDA_TRY_COMM(s, op, cudaMemcpyAsync(s->stage, buf, bytes, cudaMemcpyHostToDevice, s->stream));
        data = (char *)s->stage;
    }
    const size_t my0 = (size_t)c->rank * slice;
    const size_t my_len = my0 >= count ? 0 : (count - my0 < slice ? count - my0 : slice);
    CUDA_TRY_COMM(s, op, cudaMemsetAsync(res + my0 * es, 0, slice * es, s->stream)); /* the padding */
    /* Every call of the group is made (until one fails) and the group is always closed: an early
     * return would leave this thread's group open, and NCCL would hold back its next calls. */
    const char *call = "ncclGroupStart";
    ncclResult_t gr = ncclGroupStart();
    if (gr == ncclSuccess) {
        for (int r = 0; r < c->world && (gr == ncclSuccess || gr == ncclInProgress); r++) {
            const size_t r0 = (size_t)r * slice;
            const size_t r_len = r0 >= count ? 0 : (count - r0 < slice ? count - r0 : slice);
            call = "ncclSend";
            gr = ncclSend(data + r0 * es, r_len * es, ncclChar, r, s->comm, s->stream);
            if (gr != ncclSuccess && gr != ncclInProgress) break;
            call = "ncclRecv";
            gr = ncclRecv(recv + r0 * es, my_len * es, ncclChar, r, s->comm, s->stream);
        }
        const ncclResult_t er = ncclGroupEnd();
        if (gr == ncclSuccess || gr == ncclInProgress) {
            call = "ncclGroupEnd";
            gr = er;
        }
    }
    if (settle(s, gr, op, call, deadline)) return s->c.err.code;
    if (my_len) {
        const unsigned grid = (unsigned)((my_len + 255) / 256 < 4096 ? (my_len + 255) / 256 : 4096);
        if (dt == COMM_F32)
            llmq_launch(ordered_sum_f32, grid, 256, 0, s->stream, (float *)(res + my0 * es), (const float *)recv,
                        slice, c->world, my_len);
        else if (dt == COMM_F16)
            llmq_launch(ordered_sum_half<__half>, grid, 256, 0, s->stream, (__half *)(res + my0 * es),
                        (const __half *)recv, slice, c->world, my_len);
        else if (dt == COMM_BF16)
            llmq_launch(ordered_sum_half<__nv_bfloat16>, grid, 256, 0, s->stream, (__nv_bfloat16 *)(res + my0 * es),
                        (const __nv_bfloat16 *)recv, slice, c->world, my_len);
        else
            llmq_launch(ordered_sum_i32, grid, 256, 0, s->stream, (uint32_t *)(res + my0 * es),
                        (const uint32_t *)recv, slice, c->world, my_len);
        CUDA_TRY_COMM(s, op, cudaGetLastError());
    }
    NCCL_TRY(s, op, ncclAllGather(res + my0 * es, res, slice * es, ncclChar, s->comm, s->stream), deadline);
    if (data != (char *)buf) return copy_out(s, op, deadline, buf, res, bytes);
    CUDA_TRY_COMM(s, op, cudaMemcpyAsync(buf, res, bytes, cudaMemcpyDeviceToDevice, s->stream));
    return wait_done(s, op, deadline);
}

/* ------------------------------------------------------------ all_gather */

static llmq_status nccl_all_gather(llmq_comm *c, void *recv, const void *send, size_t count, comm_dtype dt) {
    nccl_comm *s = (nccl_comm *)c->impl;
    const char *op = "all_gather";
    llmq_status st = enter(s, op);
    if (st) return st;
    const size_t es = comm_dtype_size(dt);
    if (!es) return llmq_err_set(&c->err, LLMQ_ERR_INVALID, "nccl rank %d: all_gather: unknown dtype %d", c->rank, (int)dt);
    if (count && (!recv || !send))
        return llmq_err_set(&c->err, LLMQ_ERR_INVALID, "nccl rank %d: all_gather: NULL buffer", c->rank);
    if (!count) return LLMQ_OK;
    const double deadline = deadline_of(c);
    const size_t bytes = count * es, total = bytes * (size_t)c->world;
    const int dev_recv = is_device_ptr(recv), dev_send = is_device_ptr(send);
    if (dev_recv && dev_send) {
        NCCL_TRY(s, op, ncclAllGather(send, recv, bytes, ncclChar, s->comm, s->stream), deadline);
        return wait_done(s, op, deadline);
    }
    /* host memory on either side: gather in place in the staging buffer */
    if ((st = reserve(s, &s->stage, &s->stage_bytes, total, op))) return st;
    char *g = (char *)s->stage, *mine = g + (size_t)c->rank * bytes;
    CUDA_TRY_COMM(s, op, cudaMemcpyAsync(mine, send, bytes, cudaMemcpyDefault, s->stream));
    NCCL_TRY(s, op, ncclAllGather(mine, g, bytes, ncclChar, s->comm, s->stream), deadline);
    if (!dev_recv) return copy_out(s, op, deadline, recv, g, total);
    CUDA_TRY_COMM(s, op, cudaMemcpyAsync(recv, g, total, cudaMemcpyDeviceToDevice, s->stream));
    return wait_done(s, op, deadline);
}

/* ------------------------------------------------------------ broadcast, barrier */

static llmq_status nccl_broadcast(llmq_comm *c, void *buf, size_t bytes, int root) {
    nccl_comm *s = (nccl_comm *)c->impl;
    const char *op = "broadcast";
    llmq_status st = enter(s, op);
    if (st) return st;
    if (root < 0 || root >= c->world)
        return llmq_err_set(&c->err, LLMQ_ERR_INVALID, "nccl rank %d: broadcast: root %d of world %d", c->rank, root,
                            c->world);
    if (bytes && !buf) return llmq_err_set(&c->err, LLMQ_ERR_INVALID, "nccl rank %d: broadcast: NULL buffer", c->rank);
    if (!bytes || c->world == 1) return LLMQ_OK;
    const double deadline = deadline_of(c);
    if (is_device_ptr(buf)) {
        NCCL_TRY(s, op, ncclBroadcast(buf, buf, bytes, ncclChar, root, s->comm, s->stream), deadline);
        return wait_done(s, op, deadline);
    }
    if ((st = reserve(s, &s->stage, &s->stage_bytes, bytes, op))) return st;
    if (c->rank == root)
        CUDA_TRY_COMM(s, op, cudaMemcpyAsync(s->stage, buf, bytes, cudaMemcpyHostToDevice, s->stream));
    NCCL_TRY(s, op, ncclBroadcast(s->stage, s->stage, bytes, ncclChar, root, s->comm, s->stream), deadline);
    if (c->rank != root) return copy_out(s, op, deadline, buf, s->stage, bytes);
    return wait_done(s, op, deadline);
}

static llmq_status nccl_barrier(llmq_comm *c) {
    nccl_comm *s = (nccl_comm *)c->impl;
    const char *op = "barrier";
    llmq_status st = enter(s, op);
    if (st || c->world == 1) return st;
    const double deadline = deadline_of(c);
    if ((st = reserve(s, &s->scratch, &s->scratch_bytes, 4, op))) return st;
    CUDA_TRY_COMM(s, op, cudaMemsetAsync(s->scratch, 0, 4, s->stream)); /* defined bytes on the wire */
    NCCL_TRY(s, op, ncclAllReduce(s->scratch, s->scratch, 1, ncclInt32, ncclSum, s->comm, s->stream), deadline);
    return wait_done(s, op, deadline);
}

static void nccl_abort(llmq_comm *c, const char *reason) {
    nccl_comm *s = (nccl_comm *)c->impl;
    int expect = 0;
    if (!s->aborted.compare_exchange_strong(expect, 1)) return;
    size_t i = 0;
    for (const char *r = reason && *reason ? reason : "abort"; r[i] && i + 1 < sizeof s->reason; i++)
        s->reason[i] = r[i];
    s->reason[i] = '\0';
    s->aborted.store(2);
}

static void nccl_destroy(llmq_comm *c) {
    if (!c) return;
    nccl_comm *s = (nccl_comm *)c->impl;
    if (s->comm) {
        if (s->c.err.code || s->aborted.load()) {
            hard_abort(s);
        } else {
            /* flush, bounded by the timeout (or 10 s), then free */
            double deadline = now_ms() + (c->timeout_ms > 0 ? c->timeout_ms : 10000);
            ncclResult_t r = ncclCommFinalize(s->comm), ar = r;
            int spins = 0;
            while (r == ncclSuccess || r == ncclInProgress) {
                if (ncclCommGetAsyncError(s->comm, &ar) != ncclSuccess || ar != ncclInProgress) break;
                if (now_ms() > deadline) break;
                poll_pause(&spins);
            }
            if (ar == ncclSuccess) ncclCommDestroy(s->comm);
            else hard_abort(s);
        }
    }
    if (s->stream) cudaStreamSynchronize(s->stream);
    cudaFree(s->scratch);
    cudaFree(s->stage);
    if (s->done) cudaEventDestroy(s->done);
    if (s->own_stream && s->stream) cudaStreamDestroy(s->stream);
    free(s);
}

static const comm_ops nccl_ops = {
    /* .name = */ "nccl",
    /* .all_reduce_sum = */ nccl_all_reduce_sum,
    /* .all_gather = */ nccl_all_gather,
    /* .broadcast = */ nccl_broadcast,
    /* .barrier = */ nccl_barrier,
    /* .abort = */ nccl_abort,
    /* .destroy = */ nccl_destroy,
};

/* ------------------------------------------------------------ sizing */

extern "C" llmq_status comm_nccl_reserve(llmq_comm *c, size_t max_count, comm_dtype dt, size_t stage_bytes) {
    nccl_comm *s = (nccl_comm *)c->impl;
    const char *op = "reserve";
    llmq_status st = enter(s, op);
    if (st) return st;
    const size_t es = comm_dtype_size(dt), W = (size_t)c->world, slice = (max_count + W - 1) / W;
    if (!es) return llmq_err_set(&c->err, LLMQ_ERR_INVALID, "nccl rank %d: reserve: unknown dtype %d", c->rank, (int)dt);
    /* all_reduce_sum's scratch ([W][slice] received + [W][slice] gathered); barrier's 4 bytes */
    const size_t scratch = 2 * W * slice * es > 4 ? 2 * W * slice * es : 4;
    if ((st = reserve(s, &s->scratch, &s->scratch_bytes, scratch, op))) return st;
    return reserve(s, &s->stage, &s->stage_bytes, stage_bytes, op);
}

/* ------------------------------------------------------------ create */

extern "C" llmq_status comm_nccl_unique_id(void *out128, llmq_err *err) {
    ncclUniqueId id;
    ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess)
        return llmq_err_set(err, LLMQ_ERR_IO, "nccl: ncclGetUniqueId: %s (%s)", ncclGetErrorString(r),
                            ncclGetLastError(NULL));
    memcpy(out128, &id, sizeof id < COMM_NCCL_ID_BYTES ? sizeof id : COMM_NCCL_ID_BYTES);
    return LLMQ_OK;
}

/* Join as comm_nccl_create does; the group must form within join_timeout_ms (0 = forever), the
 * collectives then wait timeout_ms. */
static llmq_comm *create(const void *unique_id128, int rank, int world, int timeout_ms, int join_timeout_ms,
                         void *stream, llmq_err *err) {
    if (world < 1 || rank < 0 || rank >= world || !unique_id128 || timeout_ms < 0 || join_timeout_ms < 0) {
        llmq_err_set(err, LLMQ_ERR_INVALID, "nccl: rank %d of a group of %d (timeout %d ms, join %d ms)", rank, world,
                     timeout_ms, join_timeout_ms);
        return NULL;
    }
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        (void)cudaGetLastError();
        llmq_err_set(err, LLMQ_ERR_UNSUPPORTED, "no CUDA device: %s",
                     e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount found none");
        return NULL;
    }
    nccl_comm *s = (nccl_comm *)calloc(1, sizeof *s);
    if (!s) {
        llmq_err_set(err, LLMQ_ERR_NOMEM, "nccl: out of memory");
        return NULL;
    }
    s->c.ops = &nccl_ops;
    s->c.rank = rank;
    s->c.world = world;
    s->c.timeout_ms = timeout_ms;
    s->c.device_mem = 1;
    s->c.impl = s;
    s->aborted.store(0);
    if (stream) {
        s->stream = (cudaStream_t)stream;
    } else {
        e = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking);
        s->own_stream = e == cudaSuccess;
    }
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming);
    if (e != cudaSuccess) {
        llmq_err_set(err, LLMQ_ERR_BACKEND, "nccl rank %d: CUDA stream/event: %s", rank, cudaGetErrorString(e));
        nccl_destroy(&s->c);
        return NULL;
    }
    s->c.stream = (void *)s->stream;

    ncclUniqueId id;
    memcpy(&id, unique_id128, sizeof id);
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    const double deadline = join_timeout_ms > 0 ? now_ms() + join_timeout_ms : 0;
    ncclResult_t r = ncclCommInitRankConfig(&s->comm, world, id, rank, &cfg);
    int spins = 0;
    while (r == ncclInProgress) {
        if (ncclCommGetAsyncError(s->comm, &r) != ncclSuccess) r = ncclInternalError;
        if (r != ncclInProgress) break;
        if (deadline > 0 && now_ms() > deadline) {
            llmq_err_set(err, LLMQ_ERR_TIMEOUT,
                         "nccl rank %d: the group of %d did not form within %d ms (a peer did not join)", rank, world,
                         join_timeout_ms);
            hard_abort(s);
            s->comm = NULL;
            nccl_destroy(&s->c);
            return NULL;
        }
        poll_pause(&spins);
    }
    if (r != ncclSuccess) {
        llmq_err_set(err, LLMQ_ERR_IO, "nccl rank %d: ncclCommInitRankConfig: %s (%s)", rank, ncclGetErrorString(r),
                     ncclGetLastError(s->comm));
        hard_abort(s);
        s->comm = NULL;
        nccl_destroy(&s->c);
        return NULL;
    }
    return &s->c;
}

extern "C" llmq_comm *comm_nccl_create(const void *unique_id128, int rank, int world, int timeout_ms, void *stream,
                                       llmq_err *err) {
    return create(unique_id128, rank, world, timeout_ms, timeout_ms, stream, err);
}

extern "C" llmq_comm *comm_nccl_group_create(llmq_comm *host, void *stream, int join_timeout_ms, llmq_err *err) {
    if (!host) {
        llmq_err_set(err, LLMQ_ERR_INVALID, "nccl: no host communicator");
        return NULL;
    }
    if (join_timeout_ms <= 0) join_timeout_ms = host->timeout_ms == 0 ? 0 : COMM_NCCL_JOIN_TIMEOUT_MS;
    if (join_timeout_ms > 0 && host->timeout_ms > join_timeout_ms) join_timeout_ms = host->timeout_ms;
    unsigned char msg[1 + COMM_NCCL_ID_BYTES]; /* ok flag, then the id */
    memset(msg, 0, sizeof msg);
    if (host->rank == 0 && comm_nccl_unique_id(msg + 1, err) == LLMQ_OK) msg[0] = 1;
    /* Rank 0 broadcasts after a failure too, so that no rank waits for it.  The ranks arrive here
     * when each has loaded its weights, which may be minutes apart: the exchange waits the
     * start-up deadline, not the per-collective one (comm.h lets the caller change it between
     * collectives). */
    const int coll_timeout = host->timeout_ms;
    host->timeout_ms = join_timeout_ms;
    const llmq_status st = comm_broadcast(host, msg, sizeof msg, 0);
    host->timeout_ms = coll_timeout;
    if (st) {
        llmq_err_set(err, host->err.code, "%s", host->err.msg);
        return NULL;
    }
    if (!msg[0]) {
        if (host->rank != 0) llmq_err_set(err, LLMQ_ERR_BACKEND, "rank 0 could not create the NCCL group id");
        return NULL;
    }
    return create(msg + 1, host->rank, host->world, coll_timeout, join_timeout_ms, stream, err);
}
