/*
 * llmq.c — the `llmq` command: a thin dispatcher over verbs.
 *
 * Offline verbs (generate, tokenize, ...) link the worker's engine library;
 * queue verbs speak the Redis protocol through libllmq.  Nothing here knows
 * how a verb works.
 */
#include <stdio.h>
#include <string.h>

#include "client/cli/cli.h"

typedef struct verb {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} verb;

static const verb verbs[] = {
    {"generate", cmd_generate, "run a local model on prompts (offline, no Redis)"},
    {"bench", cmd_bench, "engine throughput and memory roofline on one model"},
    {"roofline", cmd_roofline, "bytes and FLOPs per kernel of a step, counted, and its time at a GPU's roofline"},
    {"vram", cmd_vram, "memory per GPU for a model (weights, KV cache, overheads): will it fit, on how many GPUs"},
    {"comm-bench", cmd_commbench, "shared-memory all-reduce/all-gather bandwidth between N local ranks"},
    {"tokenize", cmd_tokenize, "text to token ids with a model's tokenizer (offline)"},
    {"detokenize", cmd_detokenize, "token ids to text with a model's tokenizer (offline)"},
    {"submit", cmd_submit, "submit a job to the Redis queue (--wait / --stream for its output)"},
    {"get", cmd_get, "a job's state, text so far and usage, as JSON"},
    {"stream", cmd_stream, "print a job's output as it is generated"},
    {"cancel", cmd_cancel, "cancel a queued or running job"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: llmq <verb> [options]   (llmq <verb> --help for its options)\n\nverbs:\n");
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
        fprintf(f, "  %-12s %s\n", verbs[i].name, verbs[i].summary);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
        if (!strcmp(argv[1], verbs[i].name)) return verbs[i].run(argc - 1, argv + 1);
    fprintf(stderr, "llmq: unknown verb '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
