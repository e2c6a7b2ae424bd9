/*
 * bench_tokenizer.c — encode throughput of llmq's tokenizer, single thread.
 * Built and run by tools/bench_tokenizer.py, which times Hugging Face
 * `tokenizers` on the same chunks and prints the comparison.
 *
 *   bench_tokenizer MODEL_DIR CHUNKS_FILE REPEATS
 *
 * CHUNKS_FILE holds the texts to encode, each followed by a NUL byte.  Every
 * repeat encodes all chunks once (add_special = 0); the best repeat is reported
 * as one JSON line: {"bytes", "tokens", "checksum", "seconds", "mb_per_s",
 * "load_seconds"}, checksum = fold of all ids in order (h = h * 31 + id mod 2^64).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker/tokenizer/tokenizer.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL_DIR CHUNKS_FILE REPEATS\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[2], "rb");
    if (!f) { perror(argv[2]); return 1; }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = malloc((size_t)size + 1);
    if (!data || fread(data, 1, (size_t)size, f) != (size_t)size) { fclose(f); return 1; }
    fclose(f);
    size_t nchunks = 0;
    for (long i = 0; i < size; i++) nchunks += data[i] == '\0';
    char **chunk = malloc(nchunks * sizeof *chunk);
    size_t *len = malloc(nchunks * sizeof *len), k = 0, total = 0;
    for (char *p = data; p < data + size; p += len[k - 1] + 1) {
        chunk[k] = p;
        len[k++] = strlen(p);
        total += len[k - 1];
    }
    double t0 = now();
    llmq_err err = {0};
    tokenizer *t = tok_load(argv[1], &err);
    if (!t) { fprintf(stderr, "%s\n", err.msg); return 1; }
    double load = now() - t0, best = 1e30;
    size_t tokens = 0;
    unsigned long long sum = 0; /* checksum of all ids in order: h = h * 31 + id */
    int repeats = atoi(argv[3]);
    for (int r = 0; r < repeats + 1; r++) { /* the first run warms the word cache, as HF's */
        tokens = 0;
        sum = 0;
        double s = now();
        for (size_t i = 0; i < nchunks; i++) {
            int32_t *ids;
            size_t n;
            if (tok_encode(t, chunk[i], len[i], 0, &ids, &n, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
            tokens += n;
            for (size_t j = 0; j < n; j++) sum = sum * 31 + (unsigned long long)ids[j];
            free(ids);
        }
        double e = now() - s;
        if (r > 0 && e < best) best = e;
    }
    printf("{\"bytes\": %zu, \"tokens\": %zu, \"checksum\": %llu, \"seconds\": %.6f, \"mb_per_s\": %.3f, "
           "\"load_seconds\": %.4f}\n",
           total, tokens, sum, best, total / best / 1e6, load);
    tok_destroy(t);
    free(chunk);
    free(len);
    free(data);
    return 0;
}
