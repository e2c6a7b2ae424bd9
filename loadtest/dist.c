/*
 * dist.c — seeded random numbers, length distributions and arrival gaps
 * (see dist.h).
 */
#include "loadtest/dist.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- generator */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void lt_rng_seed(lt_rng *g, uint64_t seed, uint64_t stream) {
    uint64_t x = seed ^ (stream * 0xd1342543de82ef95ULL);
    for (int i = 0; i < 4; i++) g->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t lt_rng_next(lt_rng *g) {
    uint64_t *s = g->s;
    uint64_t r = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

double lt_rng_unit(lt_rng *g) { return (double)(lt_rng_next(g) >> 11) * 0x1.0p-53; }

int64_t lt_rng_range(lt_rng *g, int64_t lo, int64_t hi) {
    uint64_t span = (uint64_t)(hi - lo) + 1;
    if (span == 0) return (int64_t)lt_rng_next(g); /* the full 64-bit range */
    /* rejection keeps every value equally likely */
    uint64_t limit = UINT64_MAX - UINT64_MAX % span;
    uint64_t x;
    do x = lt_rng_next(g);
    while (x >= limit);
    return lo + (int64_t)(x % span);
}

double lt_rng_normal(lt_rng *g) {
    /* Marsaglia's polar method; the second value is dropped to keep no state */
    double u, v, s;
    do {
        u = 2.0 * lt_rng_unit(g) - 1.0;
        v = 2.0 * lt_rng_unit(g) - 1.0;
        s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    return u * sqrt(-2.0 * log(s) / s);
}

/*
 * Marsaglia & Tsang (2000), "A simple method for generating gamma
 * variables".  For shape < 1 it draws Gamma(shape + 1) and scales by
 * U^(1/shape), which is exact.
 */
double lt_rng_gamma(lt_rng *g, double shape, double scale) {
    if (shape < 1.0) {
        double u;
        do u = lt_rng_unit(g);
        while (u == 0.0);
        return lt_rng_gamma(g, shape + 1.0, scale) * pow(u, 1.0 / shape);
    }
    double d = shape - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x, v;
        do {
            x = lt_rng_normal(g);
            v = 1.0 + c * x;
        } while (v <= 0.0);
        v = v * v * v;
        double u = lt_rng_unit(g);
        if (u < 1.0 - 0.0331 * x * x * x * x) return d * v * scale;
        if (u > 0.0 && log(u) < 0.5 * x * x + d * (1.0 - v + log(v))) return d * v * scale;
    }
}

double lt_arrival_gap(lt_rng *g, double rate, double burstiness) {
    if (isinf(rate)) return 0.0;
    return lt_rng_gamma(g, burstiness, 1.0 / (rate * burstiness));
}

/* ---------------------------------------------------------------- distributions */

/* A whole decimal number in [1, LT_DIST_MAX] from s[0..n). */
static int parse_len(const char *s, size_t n, int *out) {
    if (n == 0 || n > 7) return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v < 1 || v > LT_DIST_MAX) return -1;
    *out = (int)v;
    return 0;
}

static llmq_status load_file(lt_dist *d, const char *path, llmq_err *err) {
    FILE *f = fopen(path, "r");
    if (!f) return llmq_err_set(err, LLMQ_ERR_IO, "length file %s: %s", path, strerror(errno));
    size_t cap = 0, lineno = 0;
    char line[256];
    llmq_status st = LLMQ_OK;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        size_t n = strlen(line);
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ' || line[n - 1] == '\t')) n--;
        size_t b = 0;
        while (b < n && (line[b] == ' ' || line[b] == '\t')) b++;
        if (b == n || line[b] == '#') continue; /* blank lines and comments */
        int v;
        if (parse_len(line + b, n - b, &v)) {
            st = llmq_err_set(err, LLMQ_ERR_INVALID, "length file %s line %zu: expected a whole number 1..%d",
                              path, lineno, LT_DIST_MAX);
            break;
        }
        if (d->n_vals == cap) {
            if (cap >= LT_DIST_FILE_MAX) {
                st = llmq_err_set(err, LLMQ_ERR_INVALID, "length file %s: more than %d entries", path,
                                  LT_DIST_FILE_MAX);
                break;
            }
            size_t nc = cap ? cap * 2 : 256;
            int *nv = realloc(d->vals, nc * sizeof *nv);
            if (!nv) {
                st = llmq_err_set(err, LLMQ_ERR_NOMEM, "length file %s: out of memory", path);
                break;
            }
            d->vals = nv;
            cap = nc;
        }
        d->vals[d->n_vals++] = v;
    }
    fclose(f);
    if (st == LLMQ_OK && d->n_vals == 0)
        st = llmq_err_set(err, LLMQ_ERR_INVALID, "length file %s holds no length", path);
    if (st != LLMQ_OK) return st;
    d->lo = d->hi = d->vals[0];
    for (size_t i = 1; i < d->n_vals; i++) {
        if (d->vals[i] < d->lo) d->lo = d->vals[i];
        if (d->vals[i] > d->hi) d->hi = d->vals[i];
    }
    const char *base = strrchr(path, '/');
    snprintf(d->desc, sizeof d->desc, "file:%.32s (n=%zu)", base ? base + 1 : path, d->n_vals);
    return LLMQ_OK;
}

llmq_status lt_dist_parse(lt_dist *d, const char *spec, llmq_err *err) {
    memset(d, 0, sizeof *d);
    size_t n = strlen(spec);
    llmq_status st = LLMQ_OK;
    if (n && spec[0] >= '0' && spec[0] <= '9' && strspn(spec, "0123456789") == n) {
        d->kind = LT_DIST_FIXED;
        if (parse_len(spec, n, &d->lo))
            return llmq_err_set(err, LLMQ_ERR_INVALID, "'%s': a fixed length must be 1..%d", spec, LT_DIST_MAX);
        d->hi = d->lo;
        snprintf(d->desc, sizeof d->desc, "%d", d->lo);
    } else if (!strncmp(spec, "uniform:", 8)) {
        const char *r = spec + 8, *dash = strchr(r, '-');
        d->kind = LT_DIST_UNIFORM;
        if (!dash || parse_len(r, (size_t)(dash - r), &d->lo) || parse_len(dash + 1, strlen(dash + 1), &d->hi) ||
            d->lo > d->hi)
            return llmq_err_set(err, LLMQ_ERR_INVALID, "'%s': expected uniform:A-B with 1 <= A <= B <= %d", spec,
                                LT_DIST_MAX);
        snprintf(d->desc, sizeof d->desc, "uniform:%d-%d", d->lo, d->hi);
    } else if (n) {
        d->kind = LT_DIST_FILE;
        st = load_file(d, !strncmp(spec, "file:", 5) ? spec + 5 : spec, err);
    } else {
        st = llmq_err_set(err, LLMQ_ERR_INVALID, "empty length distribution");
    }
    if (st != LLMQ_OK) lt_dist_deinit(d);
    return st;
}

void lt_dist_deinit(lt_dist *d) {
    if (!d) return;
    free(d->vals);
    memset(d, 0, sizeof *d);
}

int lt_dist_sample(const lt_dist *d, lt_rng *g) {
    switch (d->kind) {
    case LT_DIST_FIXED: return d->lo;
    case LT_DIST_UNIFORM: return (int)lt_rng_range(g, d->lo, d->hi);
    case LT_DIST_FILE: return d->vals[lt_rng_range(g, 0, (int64_t)d->n_vals - 1)];
    }
    return d->lo;
}
