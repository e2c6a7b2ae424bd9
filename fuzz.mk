# fuzz.mk — fuzz targets of tests/fuzz/, included by the top Makefile.
#
# Each tests/fuzz/fuzz_<name>.c defines LLVMFuzzerTestOneInput and is built
# twice (see tests/fuzz/README.md):
#
#   make (all)      $(BUILD)/tests/fuzz/test_fuzz_<name>: the target linked
#                   with tests/fuzz/replay.c by the normal compiler; it replays
#                   tests/fuzz/corpus/<name>/ and tests/fuzz/regressions/<name>/
#                   as a cmocka test, so `make test` (and SANITIZER=...) runs
#                   every committed input without clang.
#   make fuzz       $(FUZZ_OUT)/fuzz_<name>: clang with
#                   -fsanitize=fuzzer,address,undefined, from its own objects
#                   of the library sources; tests/fuzz/run.sh then runs each
#                   target for FUZZ_SECONDS on a copy of its corpus and fails
#                   if any crashed (crash files in $(FUZZ_OUT)/artifacts/).
#
# Variables: FUZZ_SECONDS (default 30) per target, FUZZ_TARGETS (default all),
# FUZZ_CC (default clang), FUZZ_OUT (default build-fuzz/libfuzzer).

FUZZ_SECONDS ?= 30
FUZZ_CC      ?= clang
FUZZ_OUT     ?= build-fuzz/libfuzzer
FUZZ_ALL     := $(patsubst tests/fuzz/fuzz_%.c,%,$(filter-out tests/fuzz/fuzz_util.c,$(wildcard tests/fuzz/fuzz_*.c)))
FUZZ_TARGETS ?= $(FUZZ_ALL)

# What the targets link besides their own file: the gateway without its main,
# the parsers of the worker (tokenizer, chat templates, safetensors, config).
FUZZ_GW_SRC     := $(filter-out gateway/main.c,$(GATEWAY_SRC))
FUZZ_ENGINE_SRC := $(TOK_SRC) $(filter worker/model/safetensors.c worker/model/config.c,$(MODEL_SRC))
FUZZ_HELPER_SRC := tests/fuzz/fuzz_util.c

# ---------------------------------------------------------------- replays (make all)
A_GATEWAY   := $(BUILD)/libllmq-gateway.a
FUZZ_REPLAY := $(patsubst %,$(BUILD)/tests/fuzz/test_fuzz_%,$(FUZZ_ALL))

$(A_GATEWAY): $(call obj,$(FUZZ_GW_SRC))

$(FUZZ_REPLAY): $(BUILD)/tests/fuzz/test_fuzz_%: $(BUILD)/obj/tests/fuzz/replay.o $(BUILD)/obj/tests/fuzz/fuzz_%.o \
                $(call obj,$(FUZZ_HELPER_SRC)) $(A_GATEWAY) $(ENGINE_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIB_TEST) $(LIB_ENGINE) $(LIB_GATEWAY) $(LIB_COMMON)

all: $(FUZZ_REPLAY)

# ---------------------------------------------------------------- libFuzzer (make fuzz)
FUZZ_SAN    := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_CFLAGS := -std=c11 -O1 -g $(WARN) -D_GNU_SOURCE -fopenmp -pthread -I. -MMD -MP \
               -fsanitize=fuzzer-no-link $(FUZZ_SAN)
fuzz_obj     = $(patsubst %.c,$(FUZZ_OUT)/obj/%.o,$(1))
FUZZ_LIBOBJ := $(call fuzz_obj,$(COMMON_SRC) $(FUZZ_ENGINE_SRC) $(FUZZ_GW_SRC) $(FUZZ_HELPER_SRC))
FUZZ_LIB    := $(FUZZ_OUT)/libfuzz-llmq.a
FUZZ_BINS   := $(patsubst %,$(FUZZ_OUT)/fuzz_%,$(FUZZ_TARGETS))

$(FUZZ_OUT)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

$(FUZZ_LIB): $(FUZZ_LIBOBJ)
	@rm -f $@
	ar rcs $@ $^

$(FUZZ_OUT)/fuzz_%: $(FUZZ_OUT)/obj/tests/fuzz/fuzz_%.o $(FUZZ_LIB)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -fopenmp -pthread -o $@ $^ $(LIB_ENGINE) $(LIB_GATEWAY) $(LIB_COMMON)

-include $(shell find $(FUZZ_OUT)/obj -name '*.d' 2>/dev/null)

.PHONY: fuzz fuzz-build
fuzz-build: $(FUZZ_BINS)

fuzz: fuzz-build
	@FUZZ_OUT=$(FUZZ_OUT) FUZZ_SECONDS=$(FUZZ_SECONDS) bash tests/fuzz/run.sh $(FUZZ_TARGETS)
