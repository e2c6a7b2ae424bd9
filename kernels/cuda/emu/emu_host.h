/*
 * emu_host.h — the host API that CUDA's headers declare only under nvcc (inside `#if defined
 * __CUDACC__` in cuda_runtime.h), for kernel sources compiled as host C++ (`make cuda-emu`).
 * Each forwards to the C function that emu_runtime.cc implements, as cuda_runtime.h's own
 * templates do under nvcc.  Included by emu.h.
 */
#ifndef LLMQ_KERNELS_CUDA_EMU_HOST_H
#define LLMQ_KERNELS_CUDA_EMU_HOST_H

#include <cuda_runtime.h>

/* cudaFuncSetAttribute(kernel, attr, value) with a kernel (a function, maybe a template
 * instantiation) instead of its address as const void *: the key emu_launch looks the attribute up
 * by is the same address. */
template <class T> static inline cudaError_t cudaFuncSetAttribute(T *entry, enum cudaFuncAttribute attr, int value) {
    return ::cudaFuncSetAttribute((const void *)entry, attr, value);
}

#endif
