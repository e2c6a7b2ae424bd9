/* emu_host.h — host-side CUDA API that CUDA's headers declare only under nvcc (emu_runtime.cc). */
#ifndef LLMQ_KERNELS_CUDA_EMU_HOST_H
#define LLMQ_KERNELS_CUDA_EMU_HOST_H
#endif
