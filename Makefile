# llmq — one top-level Makefile.  `make help` lists the targets.
#
# Layout of the outputs (all under $(BUILD), default build/), one static
# library per folder; a folder links (and includes) only the ones below it:
#   libllmq-common.a     common/            wire protocol, keys, jobops, logging, errors, comm.h
#   libllmq-kernels.a    kernels/           backend interface + CPU backend (+ cuda/ in make cuda)
#   libllmq-comm.a       worker/comm/       shm, TCP and single-rank communicators
#   libllmq-tokenizer.a  worker/tokenizer/  tokenizer.json BPE, chat templates, stop strings
#   libllmq-model.a      worker/model/      config, safetensors, shard plan, weight loading
#   libllmq-engine.a     worker/engine/     forward pass, scheduler, sampler, memory estimator, TP ranks
#   libllmq-service.a    worker/service/    the Redis service loop, rendezvous (main.c is llmq-worker)
#   libllmq.a            client/            C client of the Redis protocol
#   libllmq-cli.a        client/cli/        the llmq command's verbs (llmq.c is its main)
#   llmq, llmq-worker, llmq-gateway, llmq-loadtest   the binaries
#   tests/               one executable per C test file
# tools/check_layers.sh checks the include arrows on every build (docs/architecture.md).
#
# SANITIZER=address|undefined|thread builds everything instrumented into
# build-<sanitizer>/ so that it never mixes objects with the plain build.

SANITIZER ?=
ifeq ($(SANITIZER),)
BUILD     ?= build
else
BUILD     ?= build-$(SANITIZER)
endif

CC        ?= cc
# The base -march.  x86-64: AVX2 (x86-64-v3), the floor this project runs on;
# the CPU kernels add their AVX-512 paths per file and choose at run time
# (kernels/cpu/isa.h), so the binary does not depend on the build machine.
ifeq ($(shell $(CC) -dumpmachine | grep -c '^x86_64'),1)
ARCH      ?= x86-64-v3
else
ARCH      ?= native
endif
ifeq ($(SANITIZER),)
OPT       ?= -O2
else
OPT       ?= -O1
endif
PYTHON    ?= $(CURDIR)/.venv/bin/python

WARN      := -Wall -Wextra -Werror -Wshadow -Wpointer-arith -Wstrict-prototypes \
             -Wmissing-prototypes -Wno-unused-parameter -Wvla -Wformat=2
CFLAGS    := -std=c11 $(OPT) -g $(WARN) -D_GNU_SOURCE -fopenmp -pthread \
             -march=$(ARCH) -I. -MMD -MP $(EXTRA_CFLAGS)
LDFLAGS   := -fopenmp -pthread $(EXTRA_LDFLAGS)

ifneq ($(SANITIZER),)
CFLAGS    += -fsanitize=$(SANITIZER) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS   += -fsanitize=$(SANITIZER)
endif

# Libraries (Debian packages, see README.md "Layout", tools/deps.sh and `make deps`).
LIB_COMMON  := -ljansson -lmsgpackc -lhiredis -lm
LIB_ENGINE  := -lpcre2-8 -lutf8proc -lxxhash -ldl
LIB_GATEWAY := -lev -lhttp_parser -lcrypto
LIB_TEST    := -lcmocka

# ---------------------------------------------------------------- sources
COMMON_SRC  := $(wildcard common/*.c)
KERNELS_SRC := $(wildcard kernels/*.c kernels/cpu/*.c)
COMM_SRC    := $(wildcard worker/comm/*.c)
TOK_SRC     := $(wildcard worker/tokenizer/*.c)
MODEL_SRC   := $(wildcard worker/model/*.c)
ENGINE_SRC  := $(wildcard worker/engine/*.c)
WORKER_MAIN := $(wildcard worker/service/main.c)
SERVICE_SRC := $(filter-out $(WORKER_MAIN),$(wildcard worker/service/*.c))
CLIENT_LIB  := $(wildcard client/*.c)
CLI_MAIN    := client/cli/llmq.c
CLI_SRC     := $(filter-out $(CLI_MAIN),$(wildcard client/cli/*.c))
GATEWAY_SRC := $(wildcard gateway/*.c)
LOADTEST_SRC:= $(wildcard loadtest/*.c)
TEST_SRC    := $(wildcard tests/unit/test_*.c tests/backend/test_*.c)
TEST_HELPER := $(wildcard tests/unit/testutil.c)

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))

A_COMMON    := $(BUILD)/libllmq-common.a
A_KERNELS   := $(BUILD)/libllmq-kernels.a
A_COMM      := $(BUILD)/libllmq-comm.a
A_TOKENIZER := $(BUILD)/libllmq-tokenizer.a
A_MODEL     := $(BUILD)/libllmq-model.a
A_ENGINE    := $(BUILD)/libllmq-engine.a
A_SERVICE   := $(BUILD)/libllmq-service.a
A_CLIENT    := $(BUILD)/libllmq.a
A_CLI       := $(BUILD)/libllmq-cli.a

BINS := $(BUILD)/llmq
ifneq ($(WORKER_MAIN),)
BINS += $(BUILD)/llmq-worker
endif
ifneq ($(GATEWAY_SRC),)
BINS += $(BUILD)/llmq-gateway
endif
ifneq ($(LOADTEST_SRC),)
BINS += $(BUILD)/llmq-loadtest
endif
TEST_BINS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(filter-out $(TEST_HELPER),$(TEST_SRC)))

.PHONY: all help test deps demo bench bench-serving cuda cuda-emu clean fixtures layers
all: layers $(BINS) $(TEST_BINS)

# A lower folder never includes a higher one (common <- kernels <- worker/comm,
# tokenizer, model <- worker/engine <- worker/service, client/cli).
layers:
	@bash tools/check_layers.sh

help:
	@echo "llmq make targets:"
	@echo "  make              build the CPU binaries and tests into $(BUILD)/"
	@echo "  make test         build and run every test; ends with 'N passed, N failed, N skipped'"
	@echo "  make deps         install Debian packages (apt-get) and the test venv (.venv/)"
	@echo "  make demo         the quickstart demo (see README)"
	@echo "  make bench        CPU engine benchmark (110M shape, F32 and BF16)"
	@echo "  make bench-serving  local stack (redis, worker, gateway) under llmq-loadtest, 110M shape"
	@echo "  make cuda         CUDA build into build-cuda/ (+ build-cuda/bundle/) when nvcc is found; see cuda.mk"
	@echo "  make cuda-emu     the CUDA backend on the emulated device (no GPU) into build-emu/; see emu.mk"
	@echo "  make fixtures     regenerate transformers fixtures (needs torch; not used by CI)"
	@echo "  make fuzz         libFuzzer targets (clang) into build-fuzz/libfuzzer/, each run FUZZ_SECONDS=30; see fuzz.mk"
	@echo "  make clean        remove build outputs"
	@echo "variables: SANITIZER=address|undefined|thread  ARCH=native|x86-64-v3  OPT=-O2"

# ---------------------------------------------------------------- rules
$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(A_COMMON): $(call obj,$(COMMON_SRC))
$(A_KERNELS): $(call obj,$(KERNELS_SRC))
$(A_COMM): $(call obj,$(COMM_SRC))
$(A_TOKENIZER): $(call obj,$(TOK_SRC))
$(A_MODEL): $(call obj,$(MODEL_SRC))
$(A_ENGINE): $(call obj,$(ENGINE_SRC))
$(A_SERVICE): $(call obj,$(SERVICE_SRC))
$(A_CLIENT): $(call obj,$(CLIENT_LIB))
$(A_CLI): $(call obj,$(CLI_SRC))
$(BUILD)/%.a:
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^

# Highest first, so that each library's references are resolved by the ones after it.
ENGINE_LIBS := $(A_ENGINE) $(A_MODEL) $(A_TOKENIZER) $(A_KERNELS) $(A_COMM) $(A_COMMON)

$(BUILD)/llmq: $(call obj,$(CLI_MAIN)) $(A_CLI) $(A_CLIENT) $(ENGINE_LIBS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIB_ENGINE) $(LIB_COMMON)

$(BUILD)/llmq-worker: $(call obj,$(WORKER_MAIN)) $(A_SERVICE) $(ENGINE_LIBS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIB_ENGINE) $(LIB_COMMON)

$(BUILD)/llmq-gateway: $(call obj,$(GATEWAY_SRC)) $(A_COMMON)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIB_GATEWAY) $(LIB_COMMON)

$(BUILD)/llmq-loadtest: $(call obj,$(LOADTEST_SRC)) $(A_CLIENT) $(A_COMMON)
	$(CC) $(LDFLAGS) -o $@ $^ -lcurl $(LIB_GATEWAY) $(LIB_COMMON)

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(call obj,$(TEST_HELPER)) $(A_SERVICE) $(A_CLIENT) $(ENGINE_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIB_TEST) $(LIB_ENGINE) $(LIB_GATEWAY) $(LIB_COMMON)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

# ---------------------------------------------------------------- workflows
# test, demo and bench install what they need first (quietly when present),
# so that each is one command on a fresh machine.
# Builds run on every core unless make was given -j itself.
PAR_BUILD = $(if $(or $(filter -j%,$(MAKEFLAGS)),$(findstring j,$(firstword $(filter-out -%,$(MAKEFLAGS))))),,-j$$(nproc))

test:
	@bash tools/deps.sh
	@$(MAKE) --no-print-directory $(PAR_BUILD) all
	@$(MAKE) --no-print-directory $(PAR_BUILD) cuda-emu
	@BUILD=$(BUILD) EMU_BUILD=$(EMU_BUILD) PYTHON=$(PYTHON) SANITIZER=$(SANITIZER) bash tests/run.sh

deps:
	@bash tools/deps.sh

demo:
	@bash tools/deps.sh
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) PYTHON=$(PYTHON) bash tools/demo.sh

bench:
	@bash tools/deps.sh
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) PYTHON=$(PYTHON) bash tools/bench.sh

bench-serving:
	@bash tools/deps.sh
	@$(MAKE) --no-print-directory $(BUILD)/llmq-worker $(BUILD)/llmq-gateway $(BUILD)/llmq-loadtest
	@BUILD=$(BUILD) PYTHON=$(PYTHON) bash loadtest/bench_serving.sh

fixtures:
	@bash tools/make_fixtures.sh

clean:
	rm -rf build build-*

# Kernels are hot loops: let the compiler vectorize them fully.
$(BUILD)/obj/kernels/%.o: CFLAGS += -O3

# ISA variants of a CPU kernel (kernels/cpu/isa.h): <op>_<isa>.c is compiled
# for that ISA whatever ARCH is (a later -march wins), and the backend picks
# one at run time; so one binary carries every path.  x86-64 only: elsewhere
# the files compile to nothing (they test __x86_64__).
ifeq ($(shell $(CC) -dumpmachine | grep -c '^x86_64'),1)
ISA_AVX2       := -march=x86-64-v3
ISA_AVX512     := -march=x86-64-v4 -mprefer-vector-width=512
ISA_AVX512BF16 := $(ISA_AVX512) -mavx512bf16
$(BUILD)/obj/kernels/cpu/%_avx2.o: CFLAGS += $(ISA_AVX2)
$(BUILD)/obj/kernels/cpu/%_avx512.o: CFLAGS += $(ISA_AVX512)
$(BUILD)/obj/kernels/cpu/%_avx512bf16.o: CFLAGS += $(ISA_AVX512BF16)
endif

# Keep objects of test programs between runs.
.SECONDARY:

# `make cuda` (never part of `make`): see cuda.mk.
include cuda.mk
include emu.mk

# `make fuzz` and the fuzz replays of `make test`: see fuzz.mk.
include fuzz.mk
