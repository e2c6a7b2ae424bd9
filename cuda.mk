# cuda.mk — `make cuda`, included by the top Makefile.
#
# `make cuda` looks for nvcc (NVCC=..., else /usr/local/cuda/bin/nvcc, else
# PATH), says which one it chose, and builds into $(CUDA_BUILD) (build-cuda/):
#   llmq, llmq-worker            with the CUDA backend (-DLLMQ_WITH_CUDA)
#   tests/...                    the C test programs, plus tests/gpu/test_cuda_ops
#   bundle/                      the binaries and test_cuda_ops, self-contained
#                                for a GPU machine without Debian's -dev
#                                packages: hiredis, libev, jansson, msgpack,
#                                pcre2, utf8proc, xxhash and http_parser linked
#                                statically; libgomp and libcmocka copied next to
#                                them ($ORIGIN rpath); cudart, cuBLAS(Lt) and NCCL
#                                stay dynamic (the GPU machine's own)
# Without nvcc it prints so and succeeds: the CPU build never needs CUDA, and
# plain `make` never builds any of this.
#
# Variables: CUDA_ARCHS (default 75 80 86 89 90: T4, A100, A10G, L4, H100/H200;
# PTX of the last one is embedded too, for newer GPUs), CUDA_HOST_ARCH (-march
# of the host code, default x86-64-v3 so the bundle runs on other machines).

ifeq ($(origin NVCC),undefined)
NVCC := $(firstword $(wildcard /usr/local/cuda/bin/nvcc) $(shell command -v nvcc 2>/dev/null))
endif
CUDA_HOME      ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_BUILD     ?= build-cuda
CUDA_ARCHS     ?= 75 80 86 89 90
CUDA_HOST_ARCH ?= x86-64-v3
cuda_space     := $() $()

.PHONY: cuda cuda-all cuda-bundle

cuda:
ifeq ($(NVCC),)
	@echo "make cuda: no nvcc found (NVCC unset, no /usr/local/cuda/bin/nvcc, none on PATH): skipping the CUDA build"
else
	@echo "make cuda: using $(NVCC) ($$($(NVCC) --version | grep -o 'release [0-9.]*')), CUDA_HOME $(CUDA_HOME), sm_$(subst $(cuda_space),/sm_,$(strip $(CUDA_ARCHS))) -> $(CUDA_BUILD)/"
	@$(MAKE) --no-print-directory WITH_CUDA=1 BUILD=$(CUDA_BUILD) SANITIZER= ARCH=$(CUDA_HOST_ARCH) \
		NVCC=$(NVCC) CUDA_HOME=$(CUDA_HOME) cuda-all
endif

ifeq ($(WITH_CUDA),1)
CUDA_SRC  := $(wildcard kernels/cuda/*.cu)
CUDA_OBJ  := $(patsubst %.cu,$(BUILD)/obj/%.o,$(CUDA_SRC))
GPU_TEST_SRC  := $(wildcard tests/gpu/test_*.c)
GPU_TEST_BINS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(GPU_TEST_SRC))

CUDA_GENCODE := $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
                -gencode arch=compute_$(lastword $(CUDA_ARCHS)),code=compute_$(lastword $(CUDA_ARCHS))
# --compress-mode=size: the fatbins of 5 architectures shrink ~7x (the bundle
# travels to the GPU machine); add -lineinfo through EXTRA_NVCCFLAGS to profile.
NVCCFLAGS := -std=c++17 -O3 -g --compress-mode=size -I. -DLLMQ_WITH_CUDA $(CUDA_GENCODE) \
             -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror,-Wno-unused-parameter,-march=$(ARCH) \
             $(EXTRA_NVCCFLAGS)

CFLAGS  += -DLLMQ_WITH_CUDA
LDFLAGS += -Wl,-rpath,'$$ORIGIN' -Wl,-rpath,$(CUDA_HOME)/lib64

# Static where Debian ships the .a (the bundle must run without the -dev packages).
LIB_CUDA    := -L$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lnccl -lcudart -lstdc++ -ldl -lrt
LIB_COMMON  := -Wl,-Bstatic -ljansson -lmsgpackc -lhiredis -Wl,-Bdynamic $(LIB_CUDA) -lm
LIB_ENGINE  := -Wl,-Bstatic -lpcre2-8 -lutf8proc -lxxhash -Wl,-Bdynamic
LIB_GATEWAY := -Wl,-Bstatic -lev -lhttp_parser -Wl,-Bdynamic -lm

$(BUILD)/obj/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -MF $(@:.o=.d) -c $< -o $@

$(A_KERNELS): $(CUDA_OBJ)

CUDA_BUNDLE := $(BUILD)/bundle
BUNDLE_LIBS := libgomp.so.1 libcmocka.so.0

cuda-all: $(BUILD)/llmq $(BUILD)/llmq-worker $(TEST_BINS) $(GPU_TEST_BINS)
	@rm -rf $(CUDA_BUNDLE) && mkdir -p $(CUDA_BUNDLE)
	cp $(BUILD)/llmq $(BUILD)/llmq-worker $(GPU_TEST_BINS) $(CUDA_BUNDLE)/
	strip --strip-debug $(CUDA_BUNDLE)/*
	@for l in $(BUNDLE_LIBS); do \
		p=$$($(CC) -print-file-name=$$l); \
		[ -f "$$p" ] || p=$$(ldconfig -p | awk -v l=$$l '$$1 == l { print $$NF; exit }'); \
		if [ -f "$$p" ]; then cp -L "$$p" $(CUDA_BUNDLE)/$$l; else echo "make cuda: warning: $$l not found, not bundled"; fi; \
	done
	@echo "make cuda: $(CUDA_BUNDLE)/ holds $$(ls $(CUDA_BUNDLE) | tr '\n' ' ')($$(du -sh $(CUDA_BUNDLE) | cut -f1)); needs libcudart.so.13, libcublas(Lt).so.13, libnccl.so.2 at run time"
endif
