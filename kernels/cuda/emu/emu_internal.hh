/*
 * emu_internal.hh — the contract between the parts of the emulated CUDA
 * device (`make cuda-emu`).  C++ only; never included by kernel sources
 * (they see emu.h, force-included by the build).
 *
 * The parts, one owner each:
 *   emu_exec.cc     (+ emu_device.h) kernel execution: a grid's blocks one at a time per OS
 *                   thread, a block's threads as Boost.Context fibers;
 *                   barriers, warp ops, shared memory (static and dynamic)
 *   emu_check.cc    detectors: shared-memory races, reads of never-written
 *                   shared or device memory, out-of-bounds device accesses,
 *                   barriers not reached by the whole block (fed by the
 *                   -fsanitize=thread instrumentation of the kernel files)
 *   emu_runtime.cc  (+ emu_host.h) the cudart subset: device profile, device memory,
 *                   streams (one worker thread each), events, errors,
 *                   stream capture and graphs, launch validation
 *   emu_cublas.cc   the cuBLAS / cuBLASLt subset, by a reference GEMM
 *   emu_nccl.cc     the NCCL subset, across processes
 *
 * Everything a part offers another is declared here; nothing else crosses.
 */
#ifndef LLMQ_KERNELS_CUDA_EMU_INTERNAL_HH
#define LLMQ_KERNELS_CUDA_EMU_INTERNAL_HH

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include <functional>

namespace emu {

/* ------------------------------------------------------------ device profile (emu_runtime.cc) */

/* The GPU being emulated, chosen once per process by LLMQ_EMU_DEVICE=t4|a10g|h100 (default t4, the
 * smallest: its limits catch the most).  LLMQ_EMU_MEM_MB overrides mem_bytes (tests keep it small:
 * the memory is real host memory once touched). */
struct profile {
    const char *key;              /* "t4", "a10g", "h100" */
    char name[256];               /* cudaDeviceProp.name, says it is emulated */
    int major, minor;             /* compute capability */
    int n_sms;
    size_t mem_bytes;             /* cudaMemGetInfo total */
    size_t smem_per_block;        /* default dynamic + static limit (48 KiB) */
    size_t smem_per_block_optin;  /* cudaFuncAttributeMaxDynamicSharedMemorySize may raise it to this */
    int max_threads_per_block;    /* 1024 */
    int warp_size;                /* 32 */
    double bw_gbs;                /* nominal DRAM bandwidth, for the bench's roofline only */
};
const profile &device_profile();

/* ------------------------------------------------------------ reports (emu_check.cc) */

/* A defect found by the emulator that a GPU would not report, or would report without saying
 * where: printed to stderr as "llmq-emu: <kind>: <text>" and counted.  LLMQ_EMU_FATAL=1 aborts
 * at the first one (the tests that run binaries set it).  kind: "race", "uninitialized",
 * "out-of-bounds", "barrier", "launch". */
void report(const char *kind, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
long report_count();
/* Kernels' device stores are seen (the kernel files were instrumented and LLMQ_EMU_CHECK is not 0):
 * only then may a reader outside kernels (cuBLAS, NCCL) report memory as never written. */
bool writes_tracked();

/* ------------------------------------------------------------ device memory (emu_runtime.cc) */

/* Device allocations live in one reserved address range, each followed by an inaccessible gap. */
bool is_device(const void *p);
/* [p, p + n) lies inside one live device allocation.  On false, *why (if given) says what is
 * there instead ("freed allocation of 4096 B at ...", "7 B past the end of ...", "host memory"). */
bool device_range_ok(const void *p, size_t n, const char **why);
/* Device bytes written by something other than an instrumented kernel store (a copy, a memset,
 * cuBLAS, NCCL): the uninitialised-read detector then knows them. */
void device_mark_written(const void *p, size_t n);
/* 1 when every byte of [p, p + n) has been written since its allocation. */
bool device_written(const void *p, size_t n);

/* ------------------------------------------------------------ streams (emu_runtime.cc) */

/* Enqueue op on stream s (0 = the legacy default stream).  Ops of one stream run in order on that
 * stream's own worker thread, asynchronously to the caller, as on a GPU.  While s is capturing, op
 * is appended to the capture's graph instead and runs at each launch of the instantiated graph.
 * An op that fails calls async_error; the op's name appears in messages.
 * Returns cudaSuccess, or the error that refused the enqueue (invalid stream, capture invalidated). */
cudaError_t enqueue(cudaStream_t s, const char *name, std::function<void()> op);
/* Called by an op running on a stream worker: records a sticky, asynchronous error (a kernel fault,
 * an out-of-bounds access, a failed collective), returned by later sync calls and cudaGetLastError
 * as on a GPU, with the message printed once. */
void async_error(cudaError_t e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The stream whose op the calling thread is running (nullptr outside stream workers). */
cudaStream_t current_stream();
/* While a stream worker blocks inside an op (a collective waiting for its peer), it calls this now
 * and then; true means the op should give up (process exiting or the stream destroyed). */
bool op_should_stop();

/* ------------------------------------------------------------ kernel launch (emu_exec.cc) */

/* Run a whole grid on the calling thread (the stream worker, via the op that emu_launch enqueued).
 * body runs once per thread of each block, as a fiber, with threadIdx/blockIdx/... set; dyn_smem
 * bytes of dynamic shared memory per block.  The configuration was validated at launch. */
void run_grid(const char *name, dim3 grid, dim3 block, size_t dyn_smem, const std::function<void()> &body);

/* The kernel running on the calling OS thread (nullptr outside kernels): used by the detectors. */
struct kernel_ctx;
kernel_ctx *current_kernel();
/* Inside a kernel: the running thread's linear index in its block, its block's linear index, the
 * kernel's name, the block's shared memory [base, base + size), and the barrier epoch (bumped by
 * every completed __syncthreads of the block). */
unsigned cur_thread();
unsigned cur_block();
const char *cur_kernel_name();
void cur_shared(unsigned char **base, size_t *size);
uint64_t cur_epoch();

/* ------------------------------------------------------------ detectors' hooks (emu_check.cc) */

void check_block_begin(unsigned char *shared, size_t size, unsigned n_threads); /* shared is poisoned */
void check_block_end();
void check_thread_exit(unsigned thread); /* a thread left the kernel (barrier detector) */

} // namespace emu

#endif
