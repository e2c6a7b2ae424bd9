/*
 * bench_guide.c — per-step cost of a constraint (worker/engine/guide.h):
 * llguidance's token mask, the sampler's masking of the row, and the
 * consume of the chosen token, over walks through a nested JSON schema.
 * Built and run by tools/bench_guide.py.
 *
 *   bench_guide TOKENIZER_DIR LLGUIDANCE_PATH SCHEMA_FILE WALKS
 *
 * Each walk starts a matcher and samples (seeded random logits, temperature
 * 1) under its mask until the schema is complete, as the scheduler does.
 * Prints one JSON line: vocab, walks, steps, load_ms, create_ms (a matcher,
 * mean), and per step in microseconds: mask_us_mean, mask_us_p50,
 * mask_us_p99, apply_us_mean (sampling under the mask minus sampling without it),
 * consume_us_mean.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker/engine/guide.h"
#include "worker/engine/sampler.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s TOKENIZER_DIR LLGUIDANCE_PATH SCHEMA_FILE WALKS\n", argv[0]);
        return 2;
    }
    llmq_err e = {0};
    tokenizer *tok = tok_load(argv[1], &e);
    if (!tok) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    FILE *f = fopen(argv[3], "rb");
    if (!f) {
        perror(argv[3]);
        return 1;
    }
    static char schema[1 << 16];
    size_t n = fread(schema, 1, sizeof schema - 1, f);
    fclose(f);
    schema[n] = 0;
    const int walks = atoi(argv[4]);
    const int V = tok_vocab_size(tok);
    size_t n_eos = 0;
    const int32_t *eos = tok_eos_ids(tok, &n_eos);
    double t0 = now();
    guide_lib *g = NULL;
    if (guide_lib_load(&g, argv[2], tok, V, eos, (int)n_eos, &e)) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    const double load_ms = (now() - t0) * 1e3;
    sampler *smp = sampler_create(V);
    sampling_params sp;
    sampling_params_default(&sp);
    uint32_t *mask = malloc(guide_mask_words(V) * sizeof *mask);
    float *logits = malloc((size_t)V * sizeof *logits);
    enum { MAX_STEPS = 4096 };
    int32_t *hist = malloc(MAX_STEPS * sizeof *hist);
    double *mask_us = malloc((size_t)walks * MAX_STEPS * sizeof *mask_us);
    double create_s = 0, apply_s = 0, consume_s = 0;
    long steps = 0;
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    for (int w = 0; w < walks; w++) {
        guide_matcher *m = NULL;
        t0 = now();
        if (guide_matcher_create(&m, g, "json_schema", schema, &e)) {
            fprintf(stderr, "%s\n", e.msg);
            return 1;
        }
        create_s += now() - t0;
        sp.seed = (uint64_t)w;
        for (int k = 0; k < MAX_STEPS; k++) {
            t0 = now();
            const int allowed = guide_matcher_mask(m, mask);
            mask_us[steps] = (now() - t0) * 1e6;
            if (allowed <= 0) {
                fprintf(stderr, "walk %d step %d: nothing allowed: %s\n", w, k, guide_matcher_error(m));
                return 1;
            }
            for (int i = 0; i < V; i++) { /* xorshift logits in [-4, 4), EOS held back so walks get long */
                rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
                logits[i] = (float)((rng >> 40) * (8.0 / 16777216.0) - 4.0);
            }
            for (size_t q = 0; q < n_eos; q++) logits[eos[q]] = -2.0f;
            /* the mask's share of sampling: the same draw with and without
             * it, the faster of 3 each (the sampler changes its row in place) */
            float *copy = malloc((size_t)V * sizeof *copy);
            double plain = 1e9, masked = 1e9;
            int32_t t = -1;
            for (int rep = 0; rep < 3; rep++) {
                memcpy(copy, logits, (size_t)V * sizeof *copy);
                double a = now();
                sampler_sample(smp, &sp, copy, hist, k, 0, (uint64_t)k);
                if (now() - a < plain) plain = now() - a;
                memcpy(copy, logits, (size_t)V * sizeof *copy);
                a = now();
                t = sampler_sample_masked(smp, &sp, copy, mask, hist, k, 0, (uint64_t)k);
                if (now() - a < masked) masked = now() - a;
            }
            apply_s += masked - plain;
            free(copy);
            t0 = now();
            if (guide_matcher_consume(m, t)) {
                fprintf(stderr, "consume refused: %s\n", guide_matcher_error(m));
                return 1;
            }
            consume_s += now() - t0;
            hist[k] = t;
            steps++;
            if (guide_matcher_is_stopped(m)) break;
        }
        guide_matcher_destroy(m);
    }
    double sum = 0;
    for (long i = 0; i < steps; i++) sum += mask_us[i];
    qsort(mask_us, (size_t)steps, sizeof *mask_us, cmp_double);
    printf("{\"vocab\": %d, \"walks\": %d, \"steps\": %ld, \"load_ms\": %.1f, \"create_ms\": %.3f, "
           "\"mask_us_mean\": %.1f, \"mask_us_p50\": %.1f, \"mask_us_p99\": %.1f, \"apply_us_mean\": %.1f, "
           "\"consume_us_mean\": %.1f}\n",
           V, walks, steps, load_ms, create_s * 1e3 / walks, sum / (double)steps, mask_us[steps / 2],
           mask_us[(long)((double)steps * 0.99)], apply_s * 1e6 / (double)steps, consume_s * 1e6 / (double)steps);
    free(mask_us);
    free(hist);
    free(logits);
    free(mask);
    sampler_destroy(smp);
    guide_lib_destroy(g);
    tok_destroy(tok);
    return 0;
}
