/*
 * emu.h — what kernel sources see when `make cuda-emu` compiles
 * the .cu files of kernels/cuda as host C++ (g++ -x c++ -include kernels/cuda/emu/emu.h
 * -DLLMQ_CUDA_EMU).  Under nvcc this file is never included.
 *
 * CUDA's own headers declare the runtime API, the vector types and
 * __half/__nv_bfloat16 (their host paths); this file adds the device side a
 * kernel uses: threadIdx/blockIdx/blockDim/gridDim, __syncthreads,
 * __syncwarp, shuffles, votes, atomics, the math intrinsics the kernels call,
 * shared memory (LLMQ_SHARED / LLMQ_DYN_SHARED of common.cuh), and
 * emu_launch, which llmq_launch (common.cuh) calls instead of <<<>>>.
 */
#ifndef LLMQ_KERNELS_CUDA_EMU_H
#define LLMQ_KERNELS_CUDA_EMU_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <functional>

/* Validate the launch against the device profile (threads, shared memory, the kernel's
 * cudaFuncSetAttribute) and enqueue the grid on stream s.  func identifies the kernel (its
 * address), name is for messages.  A bad configuration is reported as CUDA does: the launch does
 * nothing and cudaGetLastError returns the error (cudaErrorInvalidConfiguration, ...).
 * Implemented in emu_runtime.cc. */
void emu_launch(const void *func, const char *name, dim3 grid, dim3 block, size_t dyn_smem, cudaStream_t s,
                std::function<void()> body);

/* Shared memory of the running block (common.cuh's LLMQ_SHARED / LLMQ_DYN_SHARED expand to these).
 * emu_shared_static: the array declared at `site` (one address per declaration and template
 * instantiation), the same for every thread of a block, carved from the block's arena on first use
 * and counted against the profile's limit with the dynamic bytes; emu_shared_dynamic: the launch's
 * dynamic shared memory.  Both poisoned (NaN bytes) at block start.  Implemented in emu_exec.cc. */
void *emu_shared_static(const void *site, size_t bytes, size_t align);
void *emu_shared_dynamic(void);

extern "C" {
/* Detector reports so far in this process (emu::report_count), for tests. */
long llmq_emu_report_count(void);
}

/* The host API CUDA's headers declare only under nvcc (the template cudaFuncSetAttribute, ...):
 * emu_host.h, with emu_runtime.cc.  The device side (threadIdx, __syncthreads, shuffles, atomics,
 * intrinsics): emu_device.h, with emu_exec.cc. */
#include "kernels/cuda/emu/emu_host.h"
#include "kernels/cuda/emu/emu_device.h"

#endif
