# emu.mk — `make cuda-emu`, included by the top Makefile: the CUDA backend
# compiled as host C++ and run on the emulated device (kernels/cuda/emu/).
#
# kernels/cuda/*.cu are compiled by $(CXX) with kernels/cuda/emu/emu.h
# force-included and -DLLMQ_CUDA_EMU; kernels/cuda/emu/*.cc implement the
# cudart, cuBLAS(Lt) and NCCL subsets the backend calls, so nothing links
# against NVIDIA's libraries and no GPU is needed.  CUDA's headers are still
# used (types and the host paths of __half/__nv_bfloat16): CUDA_HOME must
# hold them (/usr/local/cuda, or nvcc's folder).
#
# Outputs in $(EMU_BUILD) (build-emu/, build-emu-<sanitizer>/): llmq,
# llmq-worker, the C tests, tests/gpu/test_cuda_ops and tests/gpu/test_emu_*.
# The kernel files are compiled with -fsanitize=thread's instrumentation
# only (the emulator supplies the callbacks, emu_check.cc: the detectors),
# except under SANITIZER=address|thread, which own those hooks.

ifeq ($(origin CUDA_HOME),undefined)
CUDA_HOME := $(patsubst %/bin/nvcc,%,$(firstword $(wildcard /usr/local/cuda/bin/nvcc) $(shell command -v nvcc 2>/dev/null)))
endif
ifeq ($(SANITIZER),)
EMU_BUILD ?= build-emu
else
EMU_BUILD ?= build-emu-$(SANITIZER)
endif
CXX ?= g++

.PHONY: cuda-emu cuda-emu-all

cuda-emu:
ifeq ($(wildcard $(CUDA_HOME)/include/cuda_runtime.h),)
	@echo "make cuda-emu: no CUDA headers (CUDA_HOME=$(CUDA_HOME)): skipping the emulated CUDA build"
else
	@$(MAKE) --no-print-directory WITH_CUDA_EMU=1 BUILD=$(EMU_BUILD) CUDA_HOME=$(CUDA_HOME) cuda-emu-all
endif

ifeq ($(WITH_CUDA_EMU),1)
EMU_CUDA_SRC  := $(wildcard kernels/cuda/*.cu)
EMU_IMPL_SRC  := $(wildcard kernels/cuda/emu/*.cc)
EMU_OBJ       := $(patsubst %.cu,$(BUILD)/obj/%.o,$(EMU_CUDA_SRC)) $(patsubst %.cc,$(BUILD)/obj/%.o,$(EMU_IMPL_SRC))
EMU_TEST_SRC  := $(wildcard tests/gpu/test_*.c)
# Test programs with kernels of their own (planted defects, ...): compiled like kernel files.
EMU_KTEST_SRC := $(wildcard tests/gpu/test_emu_*.cu)
EMU_TEST_BINS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(EMU_TEST_SRC)) \
                 $(patsubst tests/%.cu,$(BUILD)/tests/%,$(EMU_KTEST_SRC))

EMU_CXXFLAGS := -std=gnu++17 $(OPT) -g -Wall -Wextra -Werror -Wno-unused-parameter -Wno-unknown-pragmas -D_GNU_SOURCE -pthread \
                -march=$(ARCH) -I. -isystem $(CUDA_HOME)/include -DLLMQ_WITH_CUDA -DLLMQ_CUDA_EMU -MMD -MP \
                $(EXTRA_CXXFLAGS)
ifneq ($(SANITIZER),)
EMU_CXXFLAGS += -fsanitize=$(SANITIZER) -fno-omit-frame-pointer -fno-sanitize-recover=all
EMU_CHECK    ?= 0
else
EMU_CHECK    ?= 1
endif
# The detectors see every load and store of the kernel files through
# -fsanitize=thread's callbacks (emu_check.cc defines them; libtsan is never linked).
ifeq ($(EMU_CHECK),1)
EMU_KFLAGS := -fsanitize=thread -Wno-tsan -DLLMQ_EMU_CHECK
endif

CFLAGS     += -DLLMQ_WITH_CUDA -DLLMQ_CUDA_EMU
LIB_COMMON += -lboost_context -lstdc++ -lrt -ldl

$(BUILD)/obj/kernels/cuda/%.o: kernels/cuda/%.cu
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) $(EMU_KFLAGS) -x c++ -include kernels/cuda/emu/emu.h -c $< -o $@

$(BUILD)/obj/kernels/cuda/emu/%.o: kernels/cuda/emu/%.cc
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -c $< -o $@

$(BUILD)/obj/tests/gpu/%.o: tests/gpu/%.cu
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) $(EMU_KFLAGS) -x c++ -include kernels/cuda/emu/emu.h -c $< -o $@

$(A_KERNELS): $(EMU_OBJ)

# BF16 needs sm_80: test_cuda_ops again on an emulated H100, BF16 only (the
# default T4 profile runs F32 and F16 and proves the no-BF16 path).  The
# detectors are off there (LLMQ_EMU_CHECK=0): they ran on the same kernels
# in F32 and F16, and cost 3-4x.  Not under a sanitizer (CI's time).
$(BUILD)/tests/gpu/test_cuda_ops_bf16: $(BUILD)/tests/gpu/test_cuda_ops
	@printf '#!/bin/sh\n# test_cuda_ops on an emulated H100, BF16 activations only (emu.mk)\nLLMQ_EMU_DEVICE=h100 LLMQ_TEST_CUDA_DTYPES=bf16 LLMQ_EMU_CHECK=0 exec "$$(dirname "$$0")/test_cuda_ops" "$$@"\n' >$@
	@chmod +x $@
ifeq ($(SANITIZER),)
EMU_BF16 := $(BUILD)/tests/gpu/test_cuda_ops_bf16
endif

cuda-emu-all: $(BUILD)/llmq $(BUILD)/llmq-worker $(EMU_TEST_BINS) $(EMU_BF16)
	@echo "make cuda-emu: $(BUILD)/ holds llmq, llmq-worker and $(notdir $(EMU_TEST_BINS)) on the emulated device"
endif
