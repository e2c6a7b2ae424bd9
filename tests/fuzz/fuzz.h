/*
 * fuzz.h — what every fuzz target of tests/fuzz/ shares.
 *
 * A target is one file fuzz_<name>.c that defines LLVMFuzzerTestOneInput
 * (and, when it needs one-time setup, LLVMFuzzerInitialize).  The same file
 * is linked two ways:
 *   - with clang -fsanitize=fuzzer,address,undefined by `make fuzz`
 *     (fuzz.mk): libFuzzer's own main explores inputs;
 *   - with the normal compiler by `make` into $(BUILD)/tests/fuzz/
 *     test_fuzz_<name>, whose main (replay.c) runs every committed corpus and
 *     regression file through it once, as a cmocka test.
 * A target must therefore be deterministic, keep no state between inputs
 * besides what its init built, free everything it allocated, and report a
 * broken invariant with fuzz_fail (abort), never with a return value.
 */
#ifndef LLMQ_FUZZ_H
#define LLMQ_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A broken invariant: say which and abort, so both libFuzzer and the replay
 * driver count it as a crash. */
#define fuzz_fail(...)                                                          \
    do {                                                                        \
        fprintf(stderr, "%s:%d: fuzz invariant broken: ", __FILE__, __LINE__);  \
        fprintf(stderr, __VA_ARGS__);                                           \
        fputc('\n', stderr);                                                    \
        abort();                                                                \
    } while (0)

#define fuzz_check(cond, ...)                                                   \
    do {                                                                        \
        if (!(cond)) fuzz_fail(__VA_ARGS__);                                    \
    } while (0)

/* The repository root: $LLMQ_ROOT (tests/run.sh sets it), else ".", so the
 * fuzzers work when started from the root as `make fuzz` does. */
static inline const char *fuzz_root(void) {
    const char *r = getenv("LLMQ_ROOT");
    return r && *r ? r : ".";
}

/* A file descriptor (memfd) holding data[0..size), and "/proc/self/fd/N" for
 * APIs that take a path.  Returns the fd (close it after use) or -1. */
int fuzz_memfd(const uint8_t *data, size_t size, char *path, size_t cap);

#endif
