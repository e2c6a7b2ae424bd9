/* emu_device.h — the device side of a kernel on the emulated device (emu_exec.cc). */
#ifndef LLMQ_KERNELS_CUDA_EMU_DEVICE_H
#define LLMQ_KERNELS_CUDA_EMU_DEVICE_H
#endif
