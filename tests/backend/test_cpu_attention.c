/*
 * test_cpu_attention.c — the CPU attention and its KV cache in F32, F16 and
 * BF16 (be->kv_dt, --kv-dtype), on every ISA path this processor supports
 * (LLMQ_CPU_ISA set before each backend is created):
 *  - kv_store rounds to the nearest representable value, ties to even
 *    (checked against the neighbours of the result, not a second rounding);
 *  - attention equals the reference (double scores, textbook softmax) over
 *    the same cache, for MHA, GQA (a group wider than a tile too), sliding
 *    windows, head sizes with vector tails and contexts of several chunks;
 *  - batch invariance (backend.h), within one path: each query's output is
 *    bitwise the same computed alone (decode), in one whole prefill, in
 *    chunked prefill (chunks of 37, and of 1..33 in turn: tiles of every
 *    height) and in a batch beside other sequences.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/cpu/isa.h"
#include "kernels/dtype.h"

#define BS 16

static const llmq_dtype kv_types[] = {LLMQ_F32, LLMQ_F16, LLMQ_BF16};

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double urand(void) { /* [0, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

static llmq_backend *make_backend(const char *name, cpu_isa isa, llmq_dtype kv) {
    setenv("LLMQ_CPU_ISA", cpu_isa_name(isa), 1);
    llmq_err err = {0};
    llmq_backend *be = llmq_backend_create(name, &err);
    unsetenv("LLMQ_CPU_ISA");
    if (!be) fail_msg("backend %s (%s): %s", name, cpu_isa_name(isa), err.msg);
    assert_true(be->ops->kv_dtypes & (1u << kv));
    be->kv_dt = kv; /* what the engine does for --kv-dtype */
    return be;
}

static double widen(uint16_t h, llmq_dtype dt) { return dt == LLMQ_BF16 ? bf16_to_f32(h) : f16_to_f32(h); }

/* h is the rounding of x to dt: no neighbour of h (in magnitude order) is
 * nearer, and on a tie h is the even one.  Infinity beyond the last finite
 * value's half step. */
static void check_rounding(float x, uint16_t h, llmq_dtype dt) {
    const int mbits = dt == LLMQ_BF16 ? 7 : 10;
    const uint16_t inf = dt == LLMQ_BF16 ? 0x7f80 : 0x7c00, sign = (uint16_t)(signbit(x) ? 0x8000 : 0);
    const double ax = fabs((double)x);
    if ((h & 0x8000) != sign && ax != 0) fail_msg("%s: %.9g -> 0x%04x has the wrong sign", llmq_dtype_name(dt), x, h);
    const uint16_t mag = h & 0x7fff;
    const double maxf = widen(inf - 1, dt), ulp_top = maxf - widen(inf - 2, dt);
    if (ax >= maxf + ulp_top / 2) {
        if (mag != inf && !(ax == maxf + ulp_top / 2 && !(((inf - 1) & 1))))
            fail_msg("%s: %.9g should round to infinity, got 0x%04x", llmq_dtype_name(dt), x, h);
        return;
    }
    if (mag >= inf) fail_msg("%s: %.9g -> 0x%04x, not finite", llmq_dtype_name(dt), x, h);
    const double v = widen(mag, dt), d = fabs(ax - v);
    const uint16_t nb[2] = {(uint16_t)(mag ? mag - 1 : 0), (uint16_t)(mag + 1)};
    for (int i = 0; i < 2; i++) {
        if (nb[i] == mag || nb[i] >= inf) continue;
        const double dn = fabs(ax - widen(nb[i], dt));
        if (dn < d || (dn == d && (mag & 1)))
            fail_msg("%s: %.9g -> 0x%04x (%.9g), but 0x%04x (%.9g) is nearer or the even one of a tie",
                     llmq_dtype_name(dt), x, h, v, nb[i], widen(nb[i], dt));
    }
    (void)mbits;
}

static void test_kv_store_rounds(void **st) {
    (void)st;
    enum { N = 4096, KD = 8 };
    float *k = malloc(sizeof(float) * N * KD), *v = malloc(sizeof(float) * N * KD);
    int32_t *slots = malloc(sizeof(int32_t) * N);
    for (int i = 0; i < N * KD; i++) {
        /* magnitudes from far below F16's subnormals to beyond its range */
        const double e = -30 + 48 * urand();
        k[i] = (float)((urand() < 0.5 ? -1 : 1) * pow(2.0, e));
        v[i] = (float)((urand() - 0.5) * 8);
    }
    /* exact ties and edges: halfway between representable values, the
     * largest finite values and their halfway points, zeros, subnormals */
    const float special[] = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, 65536.0f, 1e30f, -1e30f,
                             1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048, 1.0f + 1.0f / 256, 1.0f + 3.0f / 256,
                             5.9604645e-8f, 2.9802322e-8f, 2.98023259e-8f, 8.940697e-8f, 6.097555e-5f,
                             3.3961514e38f, 3.3961516e38f, 1.17549435e-38f};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) k[i] = special[i];
    for (int i = 0; i < N; i++) slots[i] = (i * 7) % N; /* a permutation */
    for (int t = 1; t < 3; t++) {
        const llmq_dtype dt = kv_types[t];
        llmq_backend *be = make_backend("cpu", CPU_ISA_GENERIC, dt);
        uint16_t *kc = calloc((size_t)N * KD, 2), *vc = calloc((size_t)N * KD, 2);
        be->ops->kv_store(be, kc, vc, k, v, slots, N, KD);
        for (int i = 0; i < N; i++)
            for (int j = 0; j < KD; j++) {
                check_rounding(k[i * KD + j], kc[(size_t)slots[i] * KD + j], dt);
                check_rounding(v[i * KD + j], vc[(size_t)slots[i] * KD + j], dt);
            }
        free(kc);
        free(vc);
        llmq_backend_destroy(be);
    }
    free(k);
    free(v);
    free(slots);
}

/* A paged cache of n_blocks blocks holding nseq sequences of ctx positions
 * each, its block tables a shuffled assignment of blocks. */
typedef struct cache {
    int nkv, hd, kv_dim, ctx, nseq, max_blocks;
    void *k, *v;
    int32_t *bt; /* [nseq * max_blocks] */
} cache;

static void cache_fill(cache *c, llmq_backend *be, int nseq, int ctx, int nkv, int hd) {
    c->nkv = nkv;
    c->hd = hd;
    c->kv_dim = nkv * hd;
    c->ctx = ctx;
    c->nseq = nseq;
    c->max_blocks = (ctx + BS - 1) / BS;
    const int nb = nseq * c->max_blocks;
    const size_t es = llmq_dtype_size(be->kv_dt), rows = (size_t)nb * BS;
    c->k = calloc(rows * c->kv_dim, es);
    c->v = calloc(rows * c->kv_dim, es);
    c->bt = malloc(sizeof(int32_t) * nb);
    for (int i = 0; i < nb; i++) c->bt[i] = i;
    for (int i = nb - 1; i > 0; i--) {
        const int j = (int)(urand() * (i + 1));
        const int32_t x = c->bt[i];
        c->bt[i] = c->bt[j];
        c->bt[j] = x;
    }
    float *k = malloc(sizeof(float) * ctx * c->kv_dim), *v = malloc(sizeof(float) * ctx * c->kv_dim);
    int32_t *slots = malloc(sizeof(int32_t) * ctx);
    for (int s = 0; s < nseq; s++) {
        for (int i = 0; i < ctx * c->kv_dim; i++) {
            k[i] = (float)(urand() * 2 - 1);
            v[i] = (float)(urand() * 2 - 1);
        }
        for (int p = 0; p < ctx; p++) slots[p] = c->bt[s * c->max_blocks + p / BS] * BS + p % BS;
        be->ops->kv_store(be, c->k, c->v, k, v, slots, ctx, c->kv_dim);
    }
    free(k);
    free(v);
    free(slots);
}

static void cache_free(cache *c) {
    free(c->k);
    free(c->v);
    free(c->bt);
}

/* One step: sequences seqs[i] running positions [start[i], start[i] + len[i]). */
typedef struct step {
    int n_seqs, n_tokens;
    int32_t tok_start[65];
    int32_t *positions;
    int32_t *bt;
} step;

static void step_make(step *sp, const cache *c, const int *seqs, const int *start, const int *len, int n) {
    sp->n_seqs = n;
    sp->n_tokens = 0;
    for (int i = 0; i < n; i++) sp->n_tokens += len[i];
    sp->positions = malloc(sizeof(int32_t) * sp->n_tokens);
    sp->bt = malloc(sizeof(int32_t) * n * c->max_blocks);
    int t = 0;
    for (int i = 0; i < n; i++) {
        sp->tok_start[i] = t;
        for (int j = 0; j < len[i]; j++) sp->positions[t++] = start[i] + j;
        memcpy(sp->bt + (size_t)i * c->max_blocks, c->bt + (size_t)seqs[i] * c->max_blocks,
               sizeof(int32_t) * c->max_blocks);
    }
    sp->tok_start[n] = t;
}

static void step_free(step *sp) {
    free(sp->positions);
    free(sp->bt);
}

/* out [n_tokens, nh * hd] of attention for the step; q rows gathered from
 * qall [nseq][ctx][nh * hd] by sequence and position. */
static float *run(llmq_backend *be, const cache *c, const step *sp, const int *seqs, const float *qall, int nh,
                  int window) {
    const int qd = nh * c->hd;
    float *q = malloc(sizeof(float) * sp->n_tokens * qd), *out = malloc(sizeof(float) * sp->n_tokens * qd);
    for (int i = 0; i < sp->n_seqs; i++)
        for (int t = sp->tok_start[i]; t < sp->tok_start[i + 1]; t++)
            memcpy(q + (size_t)t * qd, qall + ((size_t)seqs[i] * c->ctx + sp->positions[t]) * qd, sizeof(float) * qd);
    const be_attn_step st = {sp->n_seqs, sp->n_tokens, sp->tok_start, sp->positions, sp->bt, c->max_blocks, BS};
    const be_attn_shape sh = {nh, c->nkv, c->hd, window, 1.0f / sqrtf((float)c->hd)};
    for (int i = 0; i < sp->n_tokens * qd; i++) out[i] = NAN;
    be->ops->attention(be, out, q, c->k, c->v, &st, &sh);
    assert_int_equal(be->err.code, LLMQ_OK);
    free(q);
    return out;
}

typedef struct shape {
    int nh, nkv, hd, window, ctx;
} shape;

static const shape shapes[] = {
    {4, 4, 8, 0, 200},     /* stories260K's heads: 8 wide, all tail */
    {3, 3, 44, 0, 150},    /* MHA, full vectors and a tail on every path */
    {8, 2, 64, 0, 300},    /* GQA, several chunks */
    {6, 3, 80, 100, 260},  /* a window, a head size with a tail on every path */
    {40, 1, 16, 0, 150},   /* MQA, a group wider than a tile */
    {2, 1, 128, 0, 520},   /* a long context (9 chunks), Llama's head size */
    {4, 2, 136, 0, 140},   /* head size past 8 vectors, a tail in the second block of them (avx512's P.V) */
};

/* Every supported path and KV type against the reference, on a step that
 * mixes a whole prefill, a chunk of prefill and decodes. */
static void test_fast_vs_ref(void **st) {
    (void)st;
    cpu_isa isas[CPU_ISA_COUNT];
    const int n_isa = cpu_isa_list(isas);
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const shape *S = &shapes[si];
        for (int ti = 0; ti < 3; ti++) {
            const llmq_dtype dt = kv_types[ti];
            llmq_backend *ref = make_backend("cpu-ref", CPU_ISA_GENERIC, dt);
            cache c;
            cache_fill(&c, ref, 4, S->ctx, S->nkv, S->hd);
            const int qd = S->nh * S->hd;
            float *qall = malloc(sizeof(float) * 4 * S->ctx * qd);
            for (int i = 0; i < 4 * S->ctx * qd; i++) qall[i] = (float)(urand() * 4 - 2);
            /* seq 0: prefill of the first 70; seq 1: a chunk of 45 from 93; seqs 2, 3: decodes at the end */
            const int seqs[] = {0, 1, 2, 3}, start[] = {0, 93, S->ctx - 1, S->ctx / 2}, len[] = {70, 45, 1, 1};
            step sp;
            step_make(&sp, &c, seqs, start, len, 4);
            float *want = run(ref, &c, &sp, seqs, qall, S->nh, S->window);
            for (int ii = 0; ii < n_isa; ii++) {
                llmq_backend *fast = make_backend("cpu", isas[ii], dt);
                float *got = run(fast, &c, &sp, seqs, qall, S->nh, S->window);
                for (int i = 0; i < sp.n_tokens * qd; i++) {
                    const double d = fabs((double)got[i] - want[i]);
                    if (!isfinite(got[i]) || d > 2e-6 + 2e-5 * fabs(want[i]))
                        fail_msg("%s kv %s shape %zu: element %d (token %d) %.9g, reference %.9g",
                                 cpu_isa_name(isas[ii]), llmq_dtype_name(dt), si, i, i / qd, got[i], want[i]);
                }
                free(got);
                llmq_backend_destroy(fast);
            }
            free(want);
            step_free(&sp);
            free(qall);
            cache_free(&c);
            llmq_backend_destroy(ref);
        }
    }
}

static void same_bits(const float *a, const float *b, size_t n, const char *what, const char *isa, llmq_dtype dt) {
    if (memcmp(a, b, n * sizeof(float)))
        for (size_t i = 0; i < n; i++)
            if (memcmp(&a[i], &b[i], sizeof(float)))
                fail_msg("%s, %s kv %s: element %zu %.9g vs %.9g", what, isa, llmq_dtype_name(dt), i, a[i], b[i]);
}

/* Within one path: whole prefill == chunked prefill == one token at a time
 * == in a batch with other sequences, bitwise. */
static void test_invariance(void **st) {
    (void)st;
    cpu_isa isas[CPU_ISA_COUNT];
    const int n_isa = cpu_isa_list(isas);
    /* the MHA cases decode one row at a time, which reads 16-bit K/V in place
     * (att_dot_h) where tiles widen them first: the same bits either way */
    const shape cases[] = {{8, 2, 64, 0, 200}, {6, 3, 80, 100, 230}, {40, 1, 16, 0, 140}, {4, 4, 8, 0, 200},
                           {3, 3, 44, 0, 150}, {4, 2, 136, 0, 120}};
    for (size_t si = 0; si < sizeof cases / sizeof cases[0]; si++) {
        const shape *S = &cases[si];
        const int qd = S->nh * S->hd, L = S->ctx;
        for (int ti = 0; ti < 3; ti++) {
            const llmq_dtype dt = kv_types[ti];
            for (int ii = 0; ii < n_isa; ii++) {
                llmq_backend *be = make_backend("cpu", isas[ii], dt);
                const char *isa = cpu_isa_name(isas[ii]);
                cache c;
                cache_fill(&c, be, 3, L, S->nkv, S->hd);
                float *qall = malloc(sizeof(float) * 3 * L * qd);
                for (int i = 0; i < 3 * L * qd; i++) qall[i] = (float)(urand() * 4 - 2);
                /* whole prefill of sequence 0 */
                const int s0[] = {0}, z[] = {0}, whole_len[] = {L};
                step sp;
                step_make(&sp, &c, s0, z, whole_len, 1);
                float *whole = run(be, &c, &sp, s0, qall, S->nh, S->window);
                step_free(&sp);
                /* chunks of 37 (not a multiple of anything the kernel uses) */
                for (int p0 = 0; p0 < L; p0 += 37) {
                    const int st0[] = {p0}, ln[] = {p0 + 37 <= L ? 37 : L - p0};
                    step_make(&sp, &c, s0, st0, ln, 1);
                    float *part = run(be, &c, &sp, s0, qall, S->nh, S->window);
                    same_bits(part, whole + (size_t)p0 * qd, (size_t)ln[0] * qd, "chunked prefill", isa, dt);
                    free(part);
                    step_free(&sp);
                }
                /* chunks of 1, 2, ..., 33 tokens in turn: tiles of every height, a
                 * query's first and last positions at every offset of a chunk
                 * and of a group of keys */
                for (int p0 = 0, n = 1; p0 < L; p0 += n, n = n % 33 + 1) {
                    const int st0[] = {p0}, ln[] = {p0 + n <= L ? n : L - p0};
                    step_make(&sp, &c, s0, st0, ln, 1);
                    float *part = run(be, &c, &sp, s0, qall, S->nh, S->window);
                    same_bits(part, whole + (size_t)p0 * qd, (size_t)ln[0] * qd, "prefill in chunks of 1..33", isa, dt);
                    free(part);
                    step_free(&sp);
                }
                /* decodes, alone and in a batch beside the other sequences' prefill chunks */
                for (int p = 0; p < L; p += 29) {
                    const int st0[] = {p}, one[] = {1};
                    step_make(&sp, &c, s0, st0, one, 1);
                    float *alone = run(be, &c, &sp, s0, qall, S->nh, S->window);
                    same_bits(alone, whole + (size_t)p * qd, qd, "decode", isa, dt);
                    free(alone);
                    step_free(&sp);
                    const int sb[] = {1, 0, 2}, stb[] = {L / 3, p, 0}, lnb[] = {L - L / 3, 1, 29};
                    step_make(&sp, &c, sb, stb, lnb, 3);
                    float *batch = run(be, &c, &sp, sb, qall, S->nh, S->window);
                    same_bits(batch + (size_t)lnb[0] * qd, whole + (size_t)p * qd, qd, "decode in a batch", isa, dt);
                    free(batch);
                    step_free(&sp);
                }
                free(whole);
                free(qall);
                cache_free(&c);
                llmq_backend_destroy(be);
            }
        }
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv_store_rounds),
        cmocka_unit_test(test_fast_vs_ref),
        cmocka_unit_test(test_invariance),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
